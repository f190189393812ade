"""Prometheus metrics of the daemon (text exposition through prometheus_client)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pypioncouch.status import SyncStatus


def families(gauges: list[tuple], counters: list[tuple]):
    """Prometheus metric families of ``(name, help, value)`` gauges (None: no sample)
    and counters, for collectors that read live figures at scrape time."""
    for name, text, value in gauges:
        family = GaugeMetricFamily(name, text)
        if value is not None:
            family.add_metric([], value)
        yield family
    for name, text, value in counters:
        family = CounterMetricFamily(name, text)
        family.add_metric([], value)
        yield family


class _StatusCollector:
    """Reads the live figures at scrape time."""

    def __init__(self, status: SyncStatus, cache, replica=None):
        self.status = status
        self.cache = cache
        self.replica = replica  # a ReplicaLag on a --no-sync replica

    def collect(self):
        s = self.status
        gauges = list(self._replica_gauges()) + [
            ("pypioncouch_pypi_serial", "PyPI's last serial, as last seen", s.pypi_serial),
            ("pypioncouch_synced_serial", "The serial the checkpoint covers", s.our_serial),
            ("pypioncouch_lag_serials", "Serials behind PyPI", s.lag),
            ("pypioncouch_lag_seconds", "Seconds since the sync last held PyPI's serial "
             "(0 when it does)", s.lag_seconds()),
            ("pypioncouch_pending_projects", "Projects left for the next pass", s.pending),
            # (not *_total: that suffix is a counter's)
            ("pypioncouch_import_projects", "Projects in the full import", s.import_total),
            ("pypioncouch_import_done", "Projects done in the full import",
             s.import_done),
            ("pypioncouch_uptime_seconds", "Seconds since start", s.clock() - s.started),
            ("pypioncouch_couchdb_up", "1 when CouchDB answered the last check",
             None if s.couch_ok is None else int(s.couch_ok)),
            ("pypioncouch_consecutive_failed_passes", "Sync passes failed in a row",
             s.consecutive_failures),
            # (for alerts that /health's one status cannot tell apart; the lag figures
            # stand still while PyPI cannot be asked: the last good pass does not)
            ("pypioncouch_last_pass_success_timestamp_seconds",
             "When the last sync pass that did not fail ended (POSIX seconds)",
             s.last_pass_ok_at),
            ("pypioncouch_removals_held", "1 while removals past --max-removals are held",
             int(bool(s.removals_held))),
            ("pypioncouch_checkpoint_held",
             "1 while no pass trusts PyPI's listing enough to move the checkpoint",
             int(s.held_since is not None)),
            ("pypioncouch_writes_stuck", "1 while PyPI's changes all fail to be written",
             int(s.stuck_since is not None)),
            ("pypioncouch_opml_failing", "1 while the OPML watcher fails (and retries)",
             int(bool(s.opml_error))),
            ("pypioncouch_conflicts_failing",
             "1 while the conflict resolver fails (and retries)",
             int(bool(s.conflicts_error))),
            ("pypioncouch_backfill_missing_releases",
             "Releases without their own metadata, at the backfill's last count",
             s.backfill.missing),
            ("pypioncouch_cache_bytes", "Web cache: estimated bytes held", self.cache.bytes),
            ("pypioncouch_cache_max_bytes", "Web cache: the bound (--cache-mb)",
             self.cache.max_bytes),
            ("pypioncouch_cache_entries", "Web cache: projects held", len(self.cache)),
        ]
        counters = [
            ("pypioncouch_projects_written", "Project documents written",
             s.projects_written),
            ("pypioncouch_projects_deleted", "Projects removed", s.projects_deleted),
            ("pypioncouch_documents_written", "Documents written", s.documents_written),
            ("pypioncouch_opml_written", "OPML attachments written", s.opml_written),
            ("pypioncouch_conflicts_settled",
             "Conflicting revisions deleted (the newest serial kept)", s.conflicts_settled),
            ("pypioncouch_backfill_filled", "Releases' own metadata stored by the backfill",
             s.backfill.filled),
            ("pypioncouch_backfill_on_demand",
             "Releases' own metadata fetched by the web front on demand", s.backfill.on_demand),
            ("pypioncouch_cache_hits", "Web cache hits", self.cache.hits),
            ("pypioncouch_cache_misses", "Web cache misses", self.cache.misses),
            ("pypioncouch_cache_evictions", "Web cache entries dropped for room",
             self.cache.evictions),
        ]
        yield from families(gauges, counters)
        errors = CounterMetricFamily("pypioncouch_errors", "Errors by kind", labels=["kind"])
        for kind, count in sorted(s.errors_by_kind.items()):
            errors.add_metric([kind], count)
        yield errors

    def _replica_gauges(self):
        if self.replica is None:
            return
        r = self.replica.state  # as of the last check (/metrics checks before a scrape)
        yield ("pypioncouch_replica_serial", "The highest serial this replica holds",
               r.serial)
        yield ("pypioncouch_upstream_serial", "The highest serial upstream holds",
               r.upstream_serial)
        yield ("pypioncouch_replica_lag_serials", "Serials behind the upstream", r.lag)
        yield ("pypioncouch_replica_lag_seconds",
               "Seconds since the replica last held what upstream held", r.lag_seconds)


class Metrics:
    def __init__(self, status: SyncStatus, cache, replica=None):
        self.registry = CollectorRegistry()
        self.registry.register(_StatusCollector(status, cache, replica))
        self.responses = Counter("pypioncouch_http_responses", "HTTP responses",
                                 ["route", "status"], registry=self.registry)
        self.latency = Histogram("pypioncouch_http_request_seconds", "Time to answer",
                                 ["route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5,
                                          1, 2.5, 5))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.responses.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

"""The health policy: when ``/health`` answers 503, and why. Pure: it reads the sync's
status and a replica's serials, and says which reasons a person should see."""

from __future__ import annotations

from dataclasses import dataclass

from pypioncouch.status import SyncStatus


@dataclass
class HealthPolicy:
    """Unhealthy when CouchDB does not answer, or (syncing) when passes fail and none
    has succeeded for more than ``max_lag_seconds`` (then it may be that far behind
    PyPI: a blip of PyPI's is no reason to drop a node), while removals are held back, when
    PyPI named changes that no pass could write, or no pass could trust PyPI's listing
    to move the checkpoint, for more than ``max_lag_seconds``, until
    the first sync, or when more than ``max_lag_seconds`` behind PyPI; a replica, while
    it holds no project, or when more than ``max_lag_seconds`` behind its upstream (or
    unable to read it)."""

    status: SyncStatus
    syncing: bool = True
    max_lag_seconds: float = 600.0

    def reasons(self, couch_ok: bool, serials: dict | None = None) -> list[str]:
        """Why the service is unhealthy (empty: healthy). ``serials``: a replica's
        lag (:class:`pypioncouch.web.replica.ReplicaState` as a dict)."""
        reasons = [] if couch_ok else [self.status.couch_problem or "CouchDB is not answering"]
        if self.syncing:
            reasons += self.sync_reasons()
        elif serials:
            reasons += self.replica_reasons(serials)
        return reasons

    def sync_reasons(self) -> list[str]:
        s = self.status
        reasons = []
        failing = s.clock() - (s.last_pass_ok_at or s.started)
        if s.consecutive_failures and failing > self.max_lag_seconds:
            reasons.append(f"no sync pass has succeeded for {failing:.0f}s (the last "
                           f"{s.consecutive_failures} failed): {s.last_sync_error}")
        if s.removals_held:
            reasons.append(s.removals_held)
        stuck = None if s.stuck_since is None else s.clock() - s.stuck_since
        if stuck is not None and stuck > self.max_lag_seconds:
            reasons.append(f"no project written for {stuck:.0f}s, {s.pending} failing: "
                           f"{s.last_sync_error}")
        held = None if s.held_since is None else s.clock() - s.held_since
        if held is not None and held > self.max_lag_seconds:
            reasons.append(f"the checkpoint has not moved for {held:.0f}s: "
                           f"{s.held_reason}")
        if s.phase == "full import":
            reasons.append(f"full import in progress ({s.import_done}/{s.import_total})")
        elif s.our_serial is None:
            reasons.append("not synced yet")
        elif s.lag is None:
            # No serial from PyPI yet since the start (a first pass may prepare a view
            # for an hour first): behind since the checkpoint was saved, at least.
            behind = s.clock() - (s.caught_up_at or s.started)
            if behind > self.max_lag_seconds:
                since = "the checkpoint was saved" if s.caught_up_at else "it started"
                reasons.append(f"no serial read from PyPI since the start, and {since} "
                               f"{behind:.0f}s ago")
        else:
            lag_seconds = s.lag_seconds() or 0.0
            if lag_seconds > self.max_lag_seconds:
                reasons.append(f"{s.lag} serials ({lag_seconds:.0f}s) behind PyPI")
        return reasons

    def replica_reasons(self, serials: dict) -> list[str]:
        if serials.get("empty"):
            # (at once: a node put behind a load balancer would answer 404 for all)
            return ["it holds no project yet (replication not begun, or --db names "
                    "another database)"]
        lag_seconds = serials.get("lag_seconds") or 0.0
        if lag_seconds <= self.max_lag_seconds:
            return []
        if serials.get("lag") is None and serials.get("local_error"):
            return [f"its own highest serial unread for {lag_seconds:.0f}s: "
                    f"{serials['local_error']}"]
        if serials.get("lag") is None:  # the upstream could not be read for that long
            return [f"no word from the upstream {serials['upstream']} for "
                    f"{lag_seconds:.0f}s: {serials.get('upstream_error')}"]
        return [f"{serials['lag']} serials ({lag_seconds:.0f}s) behind the upstream "
                f"{serials['upstream']}"]

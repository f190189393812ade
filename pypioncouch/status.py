"""What the daemon knows about itself: figures the sync and the watcher update, and
the web front's /health, /status and /metrics read. One object, shared, no I/O."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

MAX_WARNINGS = 20  # distinct warnings kept; errors keep only the last one and counts


@dataclass
class BackfillProgress:
    """The backfill of releases' own metadata (pypioncouch/backfill.py)."""

    state: str = "off"  # off | waiting (for the first sync) | running | idle
    rate: float = 0.0  # requests per second, at most
    missing: int | None = None  # releases without their own info, at the last count
    filled: int = 0  # own info stored by the backfill since start
    on_demand: int = 0  # ... and by the web front, fetched on the spot
    not_found: int = 0  # releases PyPI's per-version API did not know
    errors: int = 0
    passes: int = 0  # complete passes over the releases without info
    last_error: str | None = None


@dataclass
class StatusSweepProgress:
    """The walk for projects' PEP 792 status (pypioncouch/status_sweep.py)."""

    state: str = "off"  # off | waiting (for the first sync) | running | idle
    rate: float = 0.0  # Simple pages a second, at most
    checked: int = 0  # projects asked about since start
    changed: int = 0  # ... whose status was written anew
    walks: int = 0  # walks ended (through every stored project)
    errors: int = 0
    last_error: str | None = None


@dataclass
class SyncStatus:
    """Live figures of one daemon. Times are POSIX seconds, read from ``clock`` (tests
    give a fake one)."""

    pypi_url: str = ""
    couch_url: str = ""  # redacted
    database: str = ""
    syncing: bool = True
    started: float | None = None  # (None: now, by ``clock``)
    # starting | preparing | full import | incremental | idle | retrying | mirror | stopped
    phase: str = "starting"
    changes_source: str = "xmlrpc"
    pypi_serial: int | None = None
    pypi_serial_at: float | None = None
    our_serial: int | None = None
    our_serial_at: float | None = None
    import_total: int = 0
    import_done: int = 0
    # An update pass's projects (its changelog pages' and retries', as they come).
    pass_total: int = 0
    pass_done: int = 0
    projects_written: int = 0
    projects_deleted: int = 0
    documents_written: int = 0
    pending: int = 0
    last_pass_at: float | None = None
    last_pass_ok: bool | None = None
    last_pass_ok_at: float | None = None  # (the daemon's last pass that did not fail)
    consecutive_failures: int = 0
    last_error: str | None = None  # any part's: the sync, the web front, files, OPML
    last_error_at: float | None = None
    last_sync_error: str | None = None  # the sync's own (what /health quotes about it)
    warnings: list[str] = field(default_factory=list)
    opml_seq: object = None
    opml_written: int = 0
    opml_error: str | None = None  # while the OPML watcher fails (and retries)
    conflicts_settled: int = 0  # conflicting revisions deleted (pypioncouch/conflicts.py)
    conflicts_error: str | None = None  # while the conflict resolver fails (and retries)
    couch_ok: bool | None = None
    couch_problem: str | None = None  # why CouchDB refuses us, when it answers that way
    couch_checked_at: float | None = None
    caught_up_at: float | None = None
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    removals_held: str | None = None  # why the last pass removed nothing (too many)
    stuck_since: float | None = None  # since when PyPI's changes have all failed to write
    held_since: float | None = None  # since when every pass has kept the checkpoint still
    held_reason: str | None = None  # why the last of them did
    backfill: BackfillProgress = field(default_factory=BackfillProgress)
    status_sweep: StatusSweepProgress = field(default_factory=StatusSweepProgress)
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    def note_error(self, message: str, kind: str = "sync") -> None:
        self.last_error, self.last_error_at = message, self.clock()
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    def note_sync_error(self, message: str, kind: str = "sync") -> None:
        """An error of the sync itself (a pass, a project): /health quotes these, not
        a web front's or the OPML watcher's that came after."""
        self.last_sync_error = message
        self.note_error(message, kind)

    def warn_once(self, message: str) -> None:
        """Show ``message`` on /status until restart (the latest ``MAX_WARNINGS``)."""
        if message not in self.warnings:
            self.warnings.append(message)
            del self.warnings[:-MAX_WARNINGS]

    def note_serials(self, pypi_serial: int | None = None, our_serial: int | None = None
                     ) -> None:
        now = self.clock()
        if pypi_serial is not None:
            self.pypi_serial, self.pypi_serial_at = pypi_serial, now
        if our_serial is not None:
            self.our_serial, self.our_serial_at = our_serial, now
        if self.lag == 0:
            # Caught up with PyPI as it was when its serial was read: not "now" (a
            # checkpoint loaded while PyPI cannot be asked says nothing new of it).
            self.caught_up_at = self.pypi_serial_at

    def note_pass(self, wrote: bool, pending: int, changed: int) -> None:
        """A pass ended: it wrote something, had nothing left to do, or had only old
        failures to try again (a project PyPI always answers badly is not a stuck
        sync); or PyPI named ``changed`` projects and it wrote none of them. The
        checkpoint moves on with failures kept pending, so the lag alone would not
        show a sync that writes nothing."""
        if wrote or not pending or not changed:
            self.stuck_since = None
        elif self.stuck_since is None:
            self.stuck_since = self.clock()

    def note_checkpoint(self, held_reason: str | None) -> None:
        """A pass ended that moved the checkpoint, or kept it still (``held_reason``)
        because the listing could not be trusted (older than the checkpoint, or hiding
        projects PyPI has): then PyPI's serial is not taken either, and the lag alone
        would stay 0."""
        self.held_reason = held_reason
        if held_reason is None:
            self.held_since = None
        elif self.held_since is None:
            self.held_since = self.clock()

    def lag_seconds(self, now: float | None = None) -> float | None:
        """How long we have been behind PyPI (0 when caught up)."""
        if self.lag is None:
            return None
        now = self.clock() if now is None else now
        if self.lag == 0:
            return 0.0
        return now - (self.caught_up_at or self.started)

    @property
    def lag(self) -> int | None:
        """Serials behind PyPI, when both are known."""
        if self.pypi_serial is None or self.our_serial is None:
            return None
        return max(0, self.pypi_serial - self.our_serial)

"""How far a ``--no-sync`` replica is behind the database it replicates from.

A replica does not talk to PyPI, and CouchDB's replicator state is not visible on
every server (pouchdb-server has no ``_scheduler``), so the lag is measured the way
that works everywhere: the highest ``last_serial`` stored here against the highest
one upstream (``--upstream``). Lag in seconds counts from the last time upstream held
no more than the replica holds now: a replica that trails a busy upstream by a moment,
never equal to it when looked at, is a moment behind, not behind since it started.
Checked at most every ``every`` seconds, so ``/health`` stays cheap.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pypioncouch import couchapp
from pypioncouch.couch import CouchError, Database, NotFound, NotTheServer
from pypioncouch.urls import one_segment_too_many

# Upstream serials remembered with when they were seen, to tell since when the replica
# has been behind (a day of checks every 5 s; past it the oldest go, which only makes
# the lag measured from a later one the replica passes).
UPSTREAM_SEEN_KEPT = 20_000


@dataclass
class ReplicaState:
    serial: int | None = None  # the highest serial stored here
    upstream: str | None = None  # the upstream database, password redacted
    upstream_serial: int | None = None
    lag: int | None = None  # serials behind the upstream
    lag_seconds: float | None = None  # since the replica last held what upstream held
    upstream_error: str | None = None  # why the upstream could not be read
    local_error: str | None = None  # why our own highest serial could not be read
    empty: bool = False  # it holds no project (yet)


class ReplicaLag:
    def __init__(self, local: Database, upstream: Database | None, reactor,
                 every: float = 5.0, timeout: float | None = None):
        self.local = local
        self.upstream = upstream
        self.reactor = reactor
        self.every = every
        self.timeout = timeout  # for each read (None: the client's own)
        self._checked_at: float | None = None
        self._caught_up_at: float | None = None
        self._upstream_seen: deque[tuple[float, int]] = deque(maxlen=UPSTREAM_SEEN_KEPT)
        self.state = ReplicaState(upstream=upstream.display_url if upstream else None)

    async def check(self) -> ReplicaState:
        now = self.reactor.seconds()
        if self._checked_at is not None and now - self._checked_at < self.every:
            return self.state
        self._checked_at = now
        state = ReplicaState(upstream=self.state.upstream)
        try:
            state.serial = await couchapp.max_serial(self.local, self.timeout)
            if state.serial is None:  # (none, or projects without serials)
                state.empty = not await couchapp.holds_projects(self.local, self.timeout)
        except CouchError as error:  # e.g. its view still building after an upgrade
            state.local_error = str(error)
        if self.upstream is not None:
            try:
                state.upstream_serial = await couchapp.max_serial(self.upstream, self.timeout)
            except CouchError as error:
                state.upstream_error = str(error)  # one line, URL redacted
                if isinstance(error, NotFound):
                    state.upstream_error = await self._not_found_why(error)
        if self._caught_up_at is None:
            self._caught_up_at = now  # behind (or unknown) when first seen: from here
        if state.upstream_serial is not None and state.serial is not None:
            state.lag = max(0, state.upstream_serial - state.serial)
            self._note_upstream(now, state.upstream_serial, state.serial)
            state.lag_seconds = round(now - self._caught_up_at, 1)
        elif self.upstream is None and not state.local_error:
            self._caught_up_at = now  # nothing to compare with: current as far as known
        elif (state.upstream_serial is not None or state.upstream_error
              or state.local_error):
            # Behind or unknown: the time since this replica was last known to be current.
            state.lag_seconds = round(now - self._caught_up_at, 1)
            if state.serial is None and not state.local_error and not state.upstream_error:
                state.lag = state.upstream_serial  # it holds nothing yet
        self.state = state
        return state

    async def _not_found_why(self, error: NotFound) -> str:
        """What to say of an upstream that answers 404: a document's URL given for the
        database's is said as such (its server's URL names the database)."""
        try:
            await self.upstream.server.info(timeout=self.timeout)
        except NotTheServer as wrong:
            return one_segment_too_many("--upstream", self.upstream.display_url,
                                        wrong.db_name)
        except CouchError:
            pass
        return str(error)

    def _note_upstream(self, now: float, upstream: int, held: int) -> None:
        """The replica holds ``held`` now: current as of the last time upstream was
        seen holding no more than that."""
        seen = self._upstream_seen
        while seen and seen[0][1] <= held:
            self._caught_up_at = seen.popleft()[0]
        if upstream <= held:
            seen.clear()
            self._caught_up_at = now
        else:
            seen.append((now, upstream))

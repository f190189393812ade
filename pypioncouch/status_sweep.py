"""The status sweep: which projects PyPI has archived (PEP 792), from their Simple pages.

PyPI's JSON API does not say a project's status, and archiving (or unarchiving) writes
no changelog row and moves no serial (reference §2, §4): each project's Simple page
alone says it. This service walks the stored projects in name order, asks for one
Simple page (PEP 691 JSON) at most every ``1 / rate`` seconds, and writes the new
status of a project whose status changed. At the daemon's default of one page a
second, a walk through PyPI's ~700,000 projects takes about eight days; the next walk
starts when one ends. Where a walk is is kept in ``_local/pypioncouch-status`` (a
restart goes on from there, not from the start).

Quarantine is the sync's (the changelog says it, and the JSON API answers 404): a
project stored as quarantined, or found quarantined, is left to it. A write changes
``status`` only, in the stored project document with the revision just read; on a
conflict the project waits for the next walk. The sync keeps a stored status when the
JSON API answers (it cannot tell), so neither undoes the other's work.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from pypioncouch import couchapp, model
from pypioncouch.backfill import Pacer
from pypioncouch.couch import Conflict, Database
from pypioncouch.pipeline import CoroutineService
from pypioncouch.pypi import PyPI, PyPIError
from pypioncouch.status import SyncStatus

log = Logger()

DEFAULT_RATE = 1.0  # Simple pages a second
POSITION = "pypioncouch-status"  # the _local document: where the walk is
PAGE = 100  # projects read from the catalog view at a time (the position saved after)
PAUSE_AFTER_ERROR = 60.0


class StatusSweep(CoroutineService):
    """Walks the stored projects for their PEP 792 status (module doc)."""

    name = "status-sweep"

    def __init__(self, db: Database, pypi: PyPI, status: SyncStatus, *,
                 rate: float = DEFAULT_RATE, ready: Callable[[], bool] = lambda: True,
                 reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.db = db
        self.pypi = pypi
        self.status = status
        self.pacer = Pacer(rate, reactor)
        self.ready = ready
        self.poll = 5.0  # seconds between looks at ``ready``
        self.reactor = reactor
        status.status_sweep.rate, status.status_sweep.state = rate, "waiting"

    def stopService(self):
        self.status.status_sweep.state = "off"
        return super().stopService()

    async def run(self) -> None:
        while not self.ready():  # (the first sync pass stores the projects)
            await task.deferLater(self.reactor, self.poll, lambda: None)
        while self.running:
            try:
                await self.walk()
            except defer.CancelledError:
                raise
            except Exception as error:  # CouchDB away: go on after a pause
                self._note_error(f"status sweep: {error}")
                log.error("status sweep failed: {error}", error=error)
                await task.deferLater(self.reactor, PAUSE_AFTER_ERROR, lambda: None)

    async def walk(self, limit: int | None = None) -> int:
        """Go on with the walk from where it is, to its end (or ``limit`` projects);
        returns how many projects changed status."""
        figures = self.status.status_sweep
        figures.state = "running"
        stored = await self.db.get_local(POSITION) or {}
        after = stored.get("after")
        changed = seen = 0
        while limit is None or seen < limit:
            rows = await self._page(after)
            for row in rows[:None if limit is None else limit - seen]:
                changed += await self._check(row["id"], row["value"][2])
                seen += 1
                after = row["id"]
            if len(rows) < PAGE or (limit is not None and seen >= limit):
                break
            stored = await self._save(stored, after)
        walked_through = limit is None or seen < limit
        stored = await self._save(stored, None if walked_through else after)
        if walked_through:
            figures.walks += 1
        figures.state = "idle"
        return changed

    async def _page(self, after: str | None) -> list[dict]:
        low, high = couchapp.facet_range("name")
        start = low if after is None else ["name", after]
        rows = await couchapp.query(self.db, startkey=start, endkey=high,
                                    limit=PAGE + (after is not None), reduce=False,
                                    timeout=3600)
        return [row for row in rows if row["id"] != after][:PAGE]

    async def _check(self, key: str, stored: str | None) -> int:
        """Ask PyPI about one project; 1 if its status was written anew."""
        if stored == "quarantined":
            return 0
        await self.pacer.wait()
        try:
            found = await self.pypi.simple_project(key)
        except PyPIError as error:
            self._note_error(str(error))
            self.pacer.hold(PAUSE_AFTER_ERROR)  # (PyPI failing: not a page a second)
            return 0
        self.status.status_sweep.checked += 1
        if found is None:
            return 0  # gone: the sync's to remove
        now = found[1]
        if now == (stored or "active") or now not in model.SWEPT_STATUSES:
            return 0
        doc = await self.db.get_or_none(key)
        if doc is None or doc.get("type") != model.PROJECT or \
                doc.get("status") in ("quarantined", now):
            return 0
        try:
            await self.db.put({**doc, "status": now})
        except Conflict:  # written meanwhile: the next walk
            return 0
        log.info("{key}: {status} on PyPI", key=key, status=now)
        self.status.status_sweep.changed += 1
        return 1

    async def _save(self, stored: dict, after: str | None) -> dict:
        doc = {"after": after}
        if stored.get("_rev"):
            doc["_rev"] = stored["_rev"]
        doc["_rev"] = await self.db.put_local(POSITION, doc)
        return doc

    def _note_error(self, message: str) -> None:
        self.status.status_sweep.errors += 1
        self.status.status_sweep.last_error = message
        self.status.note_error(message, "status")

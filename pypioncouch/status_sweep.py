"""The status sweep: which projects PyPI has archived (PEP 792), from their Simple pages.

PyPI's JSON API does not say a project's status, and archiving (or unarchiving) writes
no changelog row and moves no serial (reference §2, §4): each project's Simple page
alone says it. This service walks the stored projects in name order, asks for one
Simple page (PEP 691 JSON) at most every ``1 / rate`` seconds, and writes the new
status of a project whose status changed. At the daemon's default of one page a
second, a walk through PyPI's ~700,000 projects takes about eight days; the next walk
starts when one ends, an hour after the last began at the soonest (a small mirror's
pages are not read again and again). Where a walk is is kept in
``_local/pypioncouch-status``: a restart goes on from there, not from the start.

Quarantine is the sync's (the changelog says it, and the JSON API answers 404): a
project stored as quarantined, or found quarantined, is left to it. A write changes
``status`` only, and not in a project stored from an answer newer than the page
(:meth:`Store.set_status`). The sync keeps a stored status when the JSON API answers
(it cannot tell), and takes one written while it was rewriting the project
(:func:`store.keep_status`), but not over an upload since (PyPI takes none while a
project is archived), so neither undoes the other's work.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from pypioncouch import couchapp, model
from pypioncouch.backfill import Pacer
from pypioncouch.backoff import doubling
from pypioncouch.couch import CouchError, Database, Timeout, Unreachable
from pypioncouch.pipeline import CoroutineService
from pypioncouch.pypi import PyPI, PyPIError, Transient
from pypioncouch.status import SyncStatus
from pypioncouch.store import Store

log = Logger()

DEFAULT_RATE = 1.0  # Simple pages a second
POSITION = "pypioncouch-status"  # the _local document: where the walk is
PAGE = 100  # projects read from the catalog view at a time (the position saved after)
MIN_WALK_SECONDS = 3600.0  # from one walk's start to the next's, at the least
# PyPI failing (its client's retries spent): the same project is asked again after
# 60 s, doubling (or its Retry-After, an hour at most), then left for the next walk.
TRIES = 5
FIRST_HOLD = 60.0
MAX_HOLD = 3600.0


class StatusSweep(CoroutineService):
    """Walks the stored projects for their PEP 792 status (module doc)."""

    name = "status-sweep"

    def __init__(self, db: Database, pypi: PyPI, status: SyncStatus, *,
                 rate: float = DEFAULT_RATE, ready: Callable[[], bool] = lambda: True,
                 reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.db = db
        self.store = Store(db)
        self.pypi = pypi
        self.figures = status.status_sweep
        self.status = status
        self.pacer = Pacer(rate, reactor)
        self.ready = ready
        self.poll = 5.0  # seconds between looks at ``ready``
        self.reactor = reactor
        self.figures.rate, self.figures.state = rate, "waiting"

    def stopService(self):
        self.figures.state = "off"
        return super().stopService()

    async def run(self) -> None:
        failures = 0
        while self.running:
            # (the first sync pass stores the projects; a full import again, of a
            # database deleted meanwhile, would share CouchDB with us)
            while not self.ready():
                self.figures.state = "waiting"
                await task.deferLater(self.reactor, self.poll, lambda: None)
            began = self.reactor.seconds()
            try:
                ended = await self.walk()
            except defer.CancelledError:
                raise
            except Exception as error:  # CouchDB away: go on after a pause
                failures += 1
                self.figures.state = "waiting"
                self._note_error(f"status sweep: {error}")
                log.error("status sweep failed: {error}", error=error)
                wait = doubling(failures, FIRST_HOLD, MAX_HOLD)
            else:
                failures = 0
                wait = began + MIN_WALK_SECONDS - self.reactor.seconds() if ended else 0.0
            await task.deferLater(self.reactor, max(0.0, wait), lambda: None)

    async def walk(self, limit: int | None = None) -> bool:
        """Go on with the walk from where it is, to its end (or ``limit`` projects);
        returns whether it reached the end (then the next starts over). A ``limit``
        that stops on the last project leaves the end for the next call to find."""
        self.figures.state = "running"
        position = await self.db.get_local(POSITION) or {}
        after = position.get("after")
        seen, ended = 0, False
        while limit is None or seen < limit:
            page = await couchapp.project_statuses(
                self.db, after, PAGE if limit is None else min(PAGE, limit - seen))
            for key, stored in page:
                await self._check(key, stored)
                seen += 1
                after = key
            if not page or (limit is None and len(page) < PAGE):
                after, ended = None, True  # walked through: the next starts over
                self.figures.walks += 1
                break
            if limit is None or seen < limit:
                position = await self._save(position, after)
        await self._save(position, after)
        self.figures.state = "idle"
        return ended

    async def _check(self, key: str, stored: str | None) -> None:
        """Ask PyPI about one project; write its status if it changed."""
        if stored == "quarantined":
            return
        found = await self._ask(key)
        if found is None:
            return  # gone (the sync's to remove), or PyPI failing: the next walk
        serial, now, _ = found
        if now == (stored or "active") or now not in model.SWEPT_STATUSES:
            return
        try:
            written = await self.store.set_status(key, now, serial)
        except (Unreachable, Timeout):
            raise  # (CouchDB away: the walk stops, and goes on from here later)
        except CouchError as error:  # this document's (a validate function's 403...)
            self._note_error(f"{key}: {error}")
            return
        if written:
            log.info("{key}: {status} on PyPI", key=key, status=now)
            self.figures.changed += 1

    async def _ask(self, key: str) -> tuple | None:
        for tries in range(1, TRIES + 1):
            await self.pacer.wait()
            try:
                found = await self.pypi.simple_project(key)
            except Transient as error:  # (5xx, 429, unreachable: PyPI's, not the page's)
                self._note_error(str(error))
                asked = error.retry_after or 0.0
                self.pacer.hold(max(min(asked, MAX_HOLD),
                                    doubling(tries, FIRST_HOLD, MAX_HOLD)))
                continue
            except PyPIError as error:
                self._note_error(str(error))
                return None
            self.figures.checked += 1
            return found
        return None

    async def _save(self, position: dict, after: str | None) -> dict:
        doc = {"after": after}
        if position.get("_rev"):
            doc["_rev"] = position["_rev"]
        doc["_rev"] = await self.db.put_local(POSITION, doc)
        return doc

    def _note_error(self, message: str) -> None:
        self.figures.errors += 1
        self.figures.last_error = message
        self.status.note_error(message, "status")

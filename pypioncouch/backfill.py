"""The backfill: every release's own metadata, from PyPI's per-version JSON API.

PyPI's project answer (``/pypi/<p>/json``) carries the metadata of its latest release
only. The sync stores it with that release (``info_source: "latest"``); a release the
mirror never saw as the latest has its own metadata in one place alone,
``/pypi/<p>/<v>/json``. This service asks PyPI for those, one release at a time, at
most ``rate`` requests a second, and stores each answer in its release document
(``info_source: "version"``).

Its work list is the catalog view's ``needs-info`` facet (the releases stored without
``info``), walked in key order. It is resumable by construction: what is filled
leaves the list, so a restart starts over on what is left, with no checkpoint to keep.
A pass ends at the end of the list; the next starts ``pause`` seconds later, for the
releases published between two syncs (only the newest was the latest), and those that
failed or that PyPI did not know.

Writes go only into an existing release document, with the revision just read. On a
conflict it is read again, and a release that got its ``info`` meanwhile (the sync's,
as the latest) or is gone is left alone: the backfill never creates, resurrects or
overwrites a document the sync wrote. The web front uses :class:`OwnInfo` too, to
fetch a release's metadata on the spot while the backfill has not reached it; both
share one :class:`Pacer`, so PyPI sees at most ``rate`` per-version requests a second
from the daemon, however many clients the front serves.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from pypioncouch import couchapp, model
from pypioncouch.couch import Conflict, CouchError, Database
from pypioncouch.pipeline import CoroutineService
from pypioncouch.pypi import PyPI, PyPIError, StaleAnswer, Transient
from pypioncouch.status import BackfillProgress
from pypioncouch.store import Store, newer

log = Logger()

DEFAULT_RATE = 5.0  # requests a second: ~18,000 an hour, PyPI's "spread them out"
CONFLICT_ROUNDS = 3
# After PyPI failed a fill (its client's retries spent), every turn waits (the front's
# on-the-spot ones too): as long as PyPI's Retry-After said, else 30 s, doubling while
# it keeps failing, up to 10 minutes.
FIRST_HOLD = 30.0
MAX_HOLD = 600.0
MAX_RETRY_AFTER = 3600.0  # (a Retry-After of days is taken as an hour)
# A release PyPI does not know (404) or answers for with another's metadata is asked
# again an hour later, then after twice as long each time, up to a week: not at every
# pass (every 10 minutes) for ever. Kept in memory (a restart asks once more).
UNANSWERED_FIRST = 3600.0
UNANSWERED_MAX = 7 * 24 * 3600.0


def backfill_client(url: str, *, reactor=None, timeout: float = 30.0, **options) -> PyPI:
    """The backfill's PyPI client: a few connections, and no ``Retry-After`` waited
    inside it: PyPI's "later" is every turn's, the front's on-the-spot ones too, so it
    is held on the shared pacer (:meth:`OwnInfo._pypi_failed`)."""
    return PyPI(url, reactor=reactor, concurrency=4, timeout=timeout, max_retry_after=0.0,
                **options)


class Busy(Exception):
    """The pacer's next free turn is further away than the caller may wait."""

    def __init__(self, seconds: float):
        super().__init__(f"the next turn is {seconds:.1f}s away")
        self.seconds = seconds


class Pacer:
    """Spaces calls of :meth:`wait` at least ``1 / rate`` seconds apart (no bursts)."""

    def __init__(self, rate: float, reactor):
        if rate <= 0:
            raise ValueError("the rate is a positive number of requests a second")
        self.interval = 1.0 / rate
        self.reactor = reactor
        self._next: float | None = None
        self._held_until = 0.0

    async def wait(self, max_wait: float | None = None) -> float:
        """Wait for the next turn; raise :class:`Busy` (taking no turn) if it is more
        than ``max_wait`` seconds away. Returns the seconds waited."""
        now = self.reactor.seconds()
        at = now if self._next is None else max(now, self._next)
        if max_wait is not None and at - now > max_wait:
            raise Busy(at - now)
        self._next = at + self.interval
        if at > now:
            await task.deferLater(self.reactor, at - now, lambda: None)
        return at - now

    def hold(self, seconds: float) -> None:
        """No turn before ``seconds`` from now (PyPI asked us to wait, or is failing)."""
        self._held_until = self.reactor.seconds() + seconds
        self._next = self._held_until if self._next is None else max(self._next,
                                                                      self._held_until)

    def held(self) -> bool:
        """Whether a :meth:`hold` is on."""
        return self._held_until > self.reactor.seconds()


class OwnInfo:
    """Fetches a release's own ``info`` from PyPI's per-version JSON API and stores it
    in the release's document. Each request to PyPI, a retry too, waits its turn of
    ``pacer`` (at most ``max_wait`` seconds: :class:`Busy` past that)."""

    def __init__(self, db: Database, pypi: PyPI, pacer: Pacer | None = None,
                 max_wait: float | None = None, project_serials: bool = False):
        self.db = db
        self.pypi = pypi
        self.pacer = pacer
        self.max_wait = max_wait
        # Whether the stored project's serial, when :meth:`fill` is not given it, is
        # read from the catalog view (the backfill, which reads that view anyway; not
        # the web front, which gives the serial of the project it has read).
        self.project_serials = project_serials
        self._hold = 0.0  # the last hold PyPI's failures put on the pacer

    async def fill(self, key: str, version: str, project_serial: int | None = None
                   ) -> tuple[dict | None, bool]:
        """``(the release's document with its own info, whether this call stored
        it)``. The document is None when the release is not stored or PyPI does not
        know it (404). ``project_serial``: the stored project's, when the caller read
        it (the web front has its document). Raises :class:`PyPIError`
        (:class:`StaleAnswer` for an answer older than the stored release or
        project), :class:`model.BadPayload`, :class:`CouchError` or :class:`Busy`."""
        doc = await self._release(key, version)
        if doc is None or model.has_own_info(doc):
            return doc, False
        if self.pacer is not None and await self.pacer.wait(self.max_wait):
            doc = await self._release(key, version)  # filled while we waited (the backfill)?
            if doc is None or model.has_own_info(doc):
                return doc, False
        pace = None if self.pacer is None else (lambda: self.pacer.wait(self.max_wait))
        # PyPI's answer is at least as new as the stored release and its project (their
        # serials are the project's): a CDN's older copy may say a release without
        # files is not yanked (with changes from the Simple index, the sync leaves a
        # yank of one without its own metadata to this, and its document's serial may
        # be from before the yank).
        # (a release with files has its flags in its files: the project's answer says
        # them, and a caching proxy's older per-version copy holds nothing it needs)
        project = None
        if not doc.get("files"):
            project = project_serial if project_serial is not None or \
                not self.project_serials else await couchapp.project_serial(self.db, key)
        serial = max((s for s in (doc.get("last_serial"), project)
                      if isinstance(s, int) and not isinstance(s, bool)), default=None)
        try:
            payload = await self.pypi.release(
                key, version, before_retry=pace, min_serial=serial, missing_ok=True)
        except StaleAnswer:
            raise  # (PyPI answered: no hold)
        except Transient as error:  # (5xx, 429, unreachable: not one release's answer)
            self._pypi_failed(error)
            raise
        self._hold = 0.0  # PyPI answered
        if payload is None:
            return None, False
        info = model.check_release_info(payload, key, version)
        vulnerabilities = model.release_vulnerabilities(payload)
        own = model.with_own_info(doc, info, vulnerabilities)
        answered = payload.get("last_serial")
        for _ in range(CONFLICT_ROUNDS):
            try:
                await self.db.put(model.stored_form(own))
                return own, True
            except Conflict:
                asked_for, doc = doc, await self._release(key, version)
                if doc is None or model.has_own_info(doc):
                    return doc if doc is not None else own, False
                if model.is_another_upload(doc, asked_for) or newer(
                        doc.get("last_serial"), answered if isinstance(answered, int) else None):
                    # (uploaded again, or changed since: asked anew, a little later)
                    raise StaleAnswer(f"stale: {key} {version} changed since it was asked "
                                      "for")
                own = model.with_own_info(doc, info, vulnerabilities)
        return own, False  # kept changing: the next pass tries again

    def _pypi_failed(self, error: Transient) -> None:
        """Hold every turn after PyPI failed (said once per hold, not per release)."""
        if self.pacer is None or self.pacer.held():
            return  # (a request begun before the hold: the hold stands)
        later = getattr(error, "retry_after", None)
        self._hold = min(MAX_HOLD, self._hold * 2) if self._hold else FIRST_HOLD
        seconds = min(later, MAX_RETRY_AFTER) if later else self._hold
        self.pacer.hold(seconds)
        log.warn("PyPI's per-version JSON failed ({error}); asking again in {seconds:.0f}s",
                 error=error, seconds=seconds)

    async def _release(self, key: str, version: str) -> dict | None:
        """The stored release, whole (a description kept apart back in its info)."""
        doc = await Store(self.db).release(key, version)
        return doc if doc is not None and doc.get("type") == model.RELEASE else None


class Backfill(CoroutineService):
    """Fills in the own metadata of every release stored without it (module doc)."""

    name = "backfill"

    def __init__(self, db: Database, pypi: PyPI, progress: BackfillProgress, *,
                 rate: float = DEFAULT_RATE, pacer: Pacer | None = None, pause: float = 600.0,
                 page: int = 100, concurrency: int = 4,
                 ready: Callable[[], bool] = lambda: True, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.db = db
        self.pacer = pacer or Pacer(rate, reactor)  # the daemon shares it with the front
        self.own = OwnInfo(db, pypi, self.pacer, project_serials=True)
        self.progress = progress
        self.pause = pause
        self.page = page
        self.concurrency = concurrency
        self.ready = ready
        self.poll = 5.0  # seconds between looks at ``ready``
        self.reactor = reactor
        self._unanswered: dict[str, tuple[float, float]] = {}  # id -> (wait, next ask)
        progress.rate = rate

    def stopService(self):
        self.progress.state = "off"
        return super().stopService()

    async def run(self) -> None:
        while self.running:
            # (the first sync pass builds the view and the releases; a full import
            # again, of a database deleted meanwhile, would share CouchDB with us)
            while not self.ready():
                self.progress.state = "waiting"
                await task.deferLater(self.reactor, self.poll, lambda: None)
            try:
                await self.run_pass()
            except defer.CancelledError:
                raise
            except Exception as error:  # CouchDB away: try again after the pause
                self._note_error(f"backfill pass: {error}")
                log.error("backfill pass failed: {error}", error=error)
            self.progress.state = "idle"
            await task.deferLater(self.reactor, self.pause, lambda: None)

    async def run_pass(self, limit: int | None = None) -> int:
        """One walk over the releases without their own info (at most ``limit`` of
        them). Returns how many this pass filled."""
        progress = self.progress
        progress.state = "running"
        progress.missing = await couchapp.count(self.db, "needs-info", timeout=3600)
        filled_before = progress.filled
        after, seen = None, 0
        while limit is None or seen < limit:
            ids = await couchapp.releases_without_info(self.db, after, self.page)
            page = ids if limit is None else ids[:limit - seen]
            if not page:
                break
            now = self.reactor.seconds()
            await self._fill_page([doc_id for doc_id in page if self._unanswered.get(
                doc_id, (0.0, now))[1] <= now])
            seen += len(page)
            after = page[-1]
            if len(ids) < self.page:
                break
        progress.missing = await couchapp.count(self.db, "needs-info")
        if limit is None or seen < limit:
            progress.passes += 1
        progress.state = "idle"
        return progress.filled - filled_before

    async def _fill_page(self, ids: list[str]) -> None:
        slots = defer.DeferredSemaphore(self.concurrency)
        tasks: list[defer.Deferred] = []
        try:
            for doc_id in ids:  # (a fill that asks PyPI waits for the pacer)
                await slots.acquire()
                d = defer.ensureDeferred(self._fill_one(doc_id))
                d.addBoth(_release_slot, slots)
                tasks.append(d)
            await defer.gatherResults(tasks, consumeErrors=True)
        except defer.CancelledError:
            for d in tasks:  # (stopped: their cancellation is no error to report)
                d.addErrback(lambda failure: failure.trap(defer.CancelledError))
                d.cancel()
            raise

    async def _fill_one(self, doc_id: str) -> None:
        key, version = doc_id.split(":", 1)  # normalized names hold no colon
        progress = self.progress
        try:
            filled, stored = await self.own.fill(key, version)
        except (model.BadPayload, StaleAnswer) as error:
            # (another release's metadata; a CDN's stale copy: asked again later)
            self._later(doc_id)
            self._note_error(f"{key} {version}: {error}")
            log.warn("backfill {key} {version}: {error}", key=key, version=version,
                     error=error)
            return
        except (PyPIError, CouchError) as error:
            self._note_error(f"{key} {version}: {error}")
            log.warn("backfill {key} {version}: {error}", key=key, version=version,
                     error=error)
            return
        except defer.CancelledError:
            raise
        except Exception as error:  # a bug costs one release, not the pass
            self._note_error(f"{key} {version}: unexpected {type(error).__name__}: {error}")
            log.failure("backfill {key} {version}", key=key, version=version)
            return
        if filled is None:
            progress.not_found += 1
            self._later(doc_id)
            return
        self._unanswered.pop(doc_id, None)
        if stored:
            progress.filled += 1
            if progress.missing:
                progress.missing -= 1

    def _later(self, doc_id: str) -> None:
        """Ask about ``doc_id`` again later (see ``UNANSWERED_FIRST``)."""
        wait, _ = self._unanswered.get(doc_id, (UNANSWERED_FIRST / 2, 0.0))
        wait = min(UNANSWERED_MAX, wait * 2)
        self._unanswered[doc_id] = (wait, self.reactor.seconds() + wait)

    def _note_error(self, message: str) -> None:
        self.progress.errors += 1
        self.progress.last_error = message


def _release_slot(result, slots: defer.DeferredSemaphore):
    slots.release()
    return result

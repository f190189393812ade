"""Conflicting revisions: found in ``_changes`` and settled by ``last_serial``.

An Apache CouchDB cluster takes a write based on a revision one of its copies still
holds (a stale read, another writer, a write answered 202): the document then has two
live branches and CouchDB serves the one whose revision sorts higher (the longer
history, then the higher id), which may be the older data; a live leaf is served
even over a newer removal. The daemon reads ``_changes`` with ``style=all_docs`` (a
row lists every leaf revision), reads the leaves of a document that has several, and
keeps the one with the highest ``last_serial`` (a removal too: its tombstone says
when it happened; the choice is ``store.kept_leaf``). The other live leaves are
deleted, which makes the kept one what CouchDB serves without copying it
(attachments and all).

Resolution is idempotent: a document whose other leaves are deleted ones needs
nothing. The position in the feed is checkpointed in ``_local/pypioncouch-conflicts``
(not replicated), with the documents whose deletions CouchDB refused, tried again
every minute. An update of the one-shot commands (``--update``, ``update()``) reads
the feed to its end once after its pass (:meth:`ConflictResolver.settle_once`): a
cron-driven ``--update`` on a cluster has no daemon beside it to do it.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from pypioncouch.backoff import doubling, worth_saying
from pypioncouch.couch import Conflict, CouchError, Database, NotFound
from pypioncouch.pipeline import CoroutineService
from pypioncouch.status import SyncStatus
from pypioncouch.store import conflict_resolution, kept_leaf

log = Logger()

CHECKPOINT = "pypioncouch-conflicts"
PAGE = 2_000  # changes asked for at a time
PAUSE = 5.0  # seconds between looks once caught up
UNSETTLED_KEPT = 10_000  # documents to try again; past that the checkpoint waits
RETRY_SECONDS = 60.0  # between two tries of a document whose deletion was refused


class DeletionRefused(CouchError):
    """CouchDB refused to delete a conflicting revision (not for a conflict)."""


async def resolve(db: Database, docid: str) -> int:
    """Settle ``docid``'s conflicting revisions; returns how many were deleted. A
    deletion another writer beat is left (the change it made comes back); one refused
    otherwise (a validate function) raises :class:`DeletionRefused`."""
    found = await db.leaves(docid)
    deletions = conflict_resolution(found)
    if not deletions:
        return 0
    results = await db.bulk_docs(deletions)
    done = sum(1 for result in results if result.ok)
    kept = kept_leaf(found)
    if done:
        log.info("Conflict on {id} settled: kept {what} {rev} (serial {serial}), "
                 "{n} other revision(s) deleted", id=docid, rev=kept["_rev"],
                 what="the removal" if kept.get("_deleted") else "revision",
                 serial=kept.get("last_serial"), n=done)
    refused = [r for r in results if not r.ok and r.error != "conflict"]
    if refused:
        raise DeletionRefused(f"CouchDB refused to delete a conflicting revision of "
                              f"{docid}: {refused[0].error}: {refused[0].reason}",
                              url=db.display_url)
    return done


class ConflictResolver(CoroutineService):
    """Reads ``_changes`` (``style=all_docs``) from its checkpoint for ever, a page at
    a time, and settles the documents that have several leaves; caught up, it looks
    again every ``pause`` seconds (a normal feed: pouchdb-server ignores a longpoll's
    ``timeout``). A document whose deletion CouchDB refuses (a validate function) is
    kept to try again (in the checkpoint); any other failure is retried with backoff
    from the checkpoint. Both are said on /status."""

    def __init__(self, db: Database, status: SyncStatus | None = None, *, reactor=None,
                 max_backoff: float = 300.0, pause: float = PAUSE,
                 retry_seconds: float = RETRY_SECONDS, ready=lambda: True):
        if reactor is None:
            from twisted.internet import reactor
        self.db = db
        self.status = status or SyncStatus()
        self.reactor = reactor
        self.max_backoff = max_backoff
        self.pause = pause
        self.retry_seconds = retry_seconds
        self.ready = ready  # (the daemon: not during a full import, whose CPU it would share)
        self.since = None  # where the feed is read from; None: from the checkpoint
        self.unsettled: list[str] = []  # documents refused, to try again
        self._saved = self._rev = None
        self._saved_unsettled: list[str] = []
        self._started = self._caught_up = False
        self._retry_at = 0.0
        self._refusal: str | None = None  # the last refusal said

    async def run(self) -> None:
        failures = moved = 0
        while self.running:
            if not self.ready():
                await task.deferLater(self.reactor, self.pause, lambda: None)
                continue
            try:
                if self.since is None:
                    await self._load()
                caught_up = await self._page()
                failures = moved = 0
                self._say_unsettled()
                if caught_up:
                    await task.deferLater(self.reactor, self.pause, lambda: None)
                continue
            except Conflict as error:
                # The checkpoint moved (pouchdb-server says so; Apache CouchDB takes a
                # stale write of a _local document): a one-shot --update read the feed
                # too. Read on from where it is; past a few times in a row, a failure.
                self.since, moved = None, moved + 1
                if moved <= 3:
                    continue
                problem, loud = str(error), True
            except defer.CancelledError:
                if not self.running:
                    raise  # (stopped)
                problem, loud = "a request was cancelled", True  # (not by us: a failure)
            except CouchError as error:
                problem, loud = str(error), True
            except Exception as error:
                log.failure("Conflict resolver failed; it starts again from its checkpoint")
                problem, loud = f"{type(error).__name__}: {error}", False  # (said above)
            self.since = None  # (the checkpoint read again: its revision may have moved)
            failures += 1
            self._failed(f"conflict resolver waits: {problem}",
                         loud=loud and worth_saying(failures))
            await task.deferLater(self.reactor, doubling(failures, 1.0, self.max_backoff),
                                  lambda: None)

    async def settle_once(self, progress: Callable[[int, int], None] | None = None
                          ) -> SyncStatus:
        """Read the feed from the checkpoint to its end, settling what it finds, then
        try the documents refused before once more; returns the status (what was
        settled, ``conflicts_error`` while some are kept unsettled). A checkpoint
        another resolver (a daemon) moved meanwhile ends it quietly on pouchdb-server,
        which refuses the stale write: that one reads on. Apache CouchDB takes it, so
        both read on, each from its own position (a change is read twice, none missed:
        each checkpoint written is one resolver's, its refused documents with it).
        ``progress(read, read + pending)`` after each page, where CouchDB says how many
        changes are left (Apache CouchDB does)."""
        read = 0

        def counted(rows: int, pending: object) -> None:
            nonlocal read
            read += rows
            if progress is not None and isinstance(pending, int):
                progress(read, read + pending)

        try:
            await self._load()
            while not await self._page(counted):
                pass
            if self.unsettled:
                await self._page(counted)  # (caught up: the refused ones once more)
        except Conflict:
            log.info("The conflicts checkpoint of {db} moved under this pass: another "
                     "resolver (a daemon) reads the feed", db=self.db.display_url)
        self._say_unsettled()
        return self.status

    def _say_unsettled(self) -> None:
        """``conflicts_error`` while documents are kept unsettled (also those a
        checkpoint brings back, whose refusal was said by an earlier run)."""
        if not self.unsettled:
            self.status.conflicts_error = self._refusal = None
        else:
            self.status.conflicts_error = self._refusal or (
                f"{len(self.unsettled)} conflicted document(s) kept unsettled, "
                f"{self.unsettled[0]} first: CouchDB refused to delete their other "
                f"revisions")

    async def _load(self) -> None:
        """Read the checkpoint; a database deleted meanwhile is left for the sync to
        create (with its design document): waited for."""
        if not self._started:  # (the daemon's first moments: as the OPML watcher does)
            await self.db.ensure()
        elif not await self.db.exists():
            raise NotFound("the database is gone", url=self.db.display_url)
        self._started = True
        checkpoint = await self.db.get_local(CHECKPOINT) or {}
        self.since = self._saved = checkpoint.get("seq", 0)
        self._rev = checkpoint.get("_rev")
        self.unsettled = list(checkpoint.get("unsettled") or [])
        self._saved_unsettled = list(self.unsettled)
        self._say_unsettled()
        self._caught_up, self._retry_at = False, 0.0

    async def _page(self, counted: Callable[[int, object], None] = lambda *_: None
                    ) -> bool:
        """Settle one page of the feed (and, caught up, once a ``retry_seconds``, the
        unsettled documents again) and save the checkpoint. Returns whether the feed
        is read to its end. A CouchDB failure other than a refusal ends the page: its
        documents are read again from the checkpoint."""
        answer = await self.db.changes(since=self.since, style="all_docs", limit=PAGE)
        rows = answer.get("results") or []
        found = [row.get("id") or "" for row in rows if len(row.get("changes") or []) > 1]
        again = []
        if self._caught_up and self.reactor.seconds() >= self._retry_at:
            again, self.unsettled = self.unsettled, []
            self._retry_at = self.reactor.seconds() + self.retry_seconds
        for docid in dict.fromkeys(again + [d for d in found if not d.startswith("_")]):
            if docid in self.unsettled:
                continue  # (refused before: tried again in its turn)
            try:
                self.status.conflicts_settled += await resolve(self.db, docid)
            except DeletionRefused as error:
                self.unsettled.append(docid)
                if docid not in again:  # (said once)
                    self._refusal = str(error)
                    self._failed(self._refusal, loud=True)
        if len(self.unsettled) > UNSETTLED_KEPT:
            raise CouchError(f"{len(self.unsettled)} conflicted documents could not be "
                             f"settled", url=self.db.display_url)  # (the feed waits)
        if answer["last_seq"] != self._saved or self.unsettled != self._saved_unsettled:
            self._rev = await self.db.put_local(CHECKPOINT, {
                "seq": answer["last_seq"], "unsettled": self.unsettled,
                **({"_rev": self._rev} if self._rev else {})})
            self._saved, self._saved_unsettled = answer["last_seq"], list(self.unsettled)
        self.since = answer["last_seq"]
        self._caught_up = len(rows) < PAGE
        counted(len(rows), answer.get("pending"))
        return self._caught_up

    def _failed(self, message: str, loud: bool) -> None:
        self.status.conflicts_error = message
        self.status.note_error(message, "conflicts")
        if loud:
            log.warn("{message}", message=message)

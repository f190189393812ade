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
nothing. On a cluster the feed and the read may come from different copies of a
shard: leaves read that lack one the feed named (neither it nor a descendant) come
from a copy not yet in step, and are read again after a moment (settled on what that
copy shows, the conflict would stay, and the feed would not name the document
again). The position in the feed is checkpointed in ``_local/pypioncouch-conflicts``
(not replicated), with the documents whose deletions CouchDB refused (or whose copy
stayed behind), tried again every minute. An update of the one-shot commands
(``--update``, ``update()``) reads the feed to its end once after its pass
(:meth:`ConflictResolver.settle_once`): a cron-driven ``--update`` on a cluster has
no daemon beside it to do it.
"""

from __future__ import annotations

from typing import Callable, Iterable

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
BEHIND_WAITS = (0.2, 1.0, 3.0)  # seconds before reading a lagging copy's leaves again


class DeletionRefused(CouchError):
    """CouchDB refused to delete a conflicting revision (not for a conflict)."""


class CopyBehind(CouchError):
    """The leaves read lack a revision the changes feed named: read from a copy of a
    cluster's shard not yet in step with the one the feed came from."""


def unaccounted(named: Iterable[str], leaves: list[dict]) -> list[str]:
    """The revisions of ``named`` (a feed row's leaves) that none of ``leaves`` (read
    with their ``_revisions``) is or descends from."""
    seen = set()
    for leaf in leaves:
        seen.add(leaf.get("_rev"))
        history = leaf.get("_revisions") or {}
        start, ids = history.get("start"), history.get("ids")
        if isinstance(start, int) and isinstance(ids, list):
            seen.update(f"{start - back}-{rev_id}" for back, rev_id in enumerate(ids))
    return [rev for rev in named if rev not in seen]


async def resolve(db: Database, docid: str, named: Iterable[str] = ()) -> int:
    """Settle ``docid``'s conflicting revisions; returns how many were deleted. A
    deletion another writer beat is left (the change it made comes back); one refused
    otherwise (a validate function) raises :class:`DeletionRefused`. ``named``: the
    leaves the changes feed listed; leaves read that miss one of them raise
    :class:`CopyBehind`."""
    named = list(named)
    found = await db.leaves(docid)
    if unaccounted(named, found):  # (changed since the feed? its history tells)
        found = await db.leaves(docid, revs=True)
    behind = unaccounted(named, found)
    if behind:
        raise CopyBehind(f"the leaves of {docid} CouchDB read lack revision {behind[0]}, "
                         f"which its changes feed named (a cluster's copies not yet in "
                         f"step)", url=db.display_url)
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
    ``timeout``). A document whose deletion CouchDB refuses (a validate function), or
    whose leaves stay behind the feed's (:class:`CopyBehind`) past ``behind_waits``,
    is kept to try again (in the checkpoint, with the leaves the feed named); any other
    failure is retried with backoff from the checkpoint. Both are said on /status."""

    def __init__(self, db: Database, status: SyncStatus | None = None, *, reactor=None,
                 max_backoff: float = 300.0, pause: float = PAUSE,
                 retry_seconds: float = RETRY_SECONDS, ready=lambda: True,
                 behind_waits: tuple[float, ...] = BEHIND_WAITS):
        if reactor is None:
            from twisted.internet import reactor
        self.db = db
        self.status = status or SyncStatus()
        self.reactor = reactor
        self.max_backoff = max_backoff
        self.pause = pause
        self.retry_seconds = retry_seconds
        self.behind_waits = behind_waits
        self.ready = ready  # (the daemon: not during a full import, whose CPU it would share)
        self.since = None  # where the feed is read from; None: from the checkpoint
        self.unsettled: list[str] = []  # documents refused, to try again
        self.expected: dict[str, list[str]] = {}  # of those, the leaves the feed named
        self._saved = self._rev = None
        self._saved_unsettled: list[str] = []
        self._saved_expected: dict[str, list[str]] = {}
        self._started = self._caught_up = False
        self._retry_at = 0.0
        self._refusal: str | None = None  # the last refusal said
        self._recreated = False  # the database created again: its checkpoint is new

    def startService(self):
        self.db.on_created.append(self._database_created)
        super().startService()

    def stopService(self):
        if self._database_created in self.db.on_created:
            self.db.on_created.remove(self._database_created)
        return super().stopService()

    def _database_created(self) -> None:
        self._recreated = True

    async def run(self) -> None:
        failures = moved = 0
        while self.running:
            if not self.ready():
                await task.deferLater(self.reactor, self.pause, lambda: None)
                continue
            try:
                if self._recreated:  # (the old database's seq means nothing there)
                    self.since, self._recreated = None, False
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
        ``progress(done, total)`` after each page: changes read of those read and left,
        where CouchDB says how many are left (Apache CouchDB); else, where sequences
        are numbers (pouchdb-server), the feed's sequences read of those up to the
        database's ``update_seq`` when the read began."""
        read = 0
        numbered: tuple[int, int] | None = None  # (the first sequence, the last)

        def counted(rows: int, pending: object, last_seq: object) -> None:
            nonlocal read
            read += rows
            if progress is None:
                return
            if isinstance(pending, int):
                progress(read, read + pending)
            elif numbered is not None and isinstance(last_seq, int):
                first, end = numbered
                progress(last_seq - first, max(end, last_seq) - first)

        try:
            await self._load()
            if progress is not None and isinstance(self.since, int):
                try:
                    end = (await self.db.info()).get("update_seq")
                except CouchError:  # (only the progress display needs it)
                    end = None
                numbered = (self.since, end) if isinstance(end, int) else None
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
            first = self.unsettled[0]
            self.status.conflicts_error = self._refusal or (
                f"{len(self.unsettled)} conflicted document(s) kept unsettled, "
                f"{first} first: " + (
                    "its leaves CouchDB read lacked one its changes feed named"
                    if first in self.expected else
                    "CouchDB refused to delete their other revisions"))

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
        expected = checkpoint.get("expected")
        self.expected = dict(expected) if isinstance(expected, dict) else {}
        self._saved_unsettled = list(self.unsettled)
        self._saved_expected = dict(self.expected)
        self._say_unsettled()
        self._caught_up, self._retry_at = False, 0.0

    async def _page(self, counted: Callable[[int, object, object], None] = lambda *_: None
                    ) -> bool:
        """Settle one page of the feed (and, caught up, once a ``retry_seconds``, the
        unsettled documents again) and save the checkpoint. Returns whether the feed
        is read to its end. A CouchDB failure other than a refusal ends the page: its
        documents are read again from the checkpoint."""
        answer = await self.db.changes(since=self.since, style="all_docs", limit=PAGE)
        rows = answer.get("results") or []
        found = {row.get("id") or "": [change["rev"] for change in row["changes"]
                                       if isinstance(change, dict) and change.get("rev")]
                 for row in rows if len(row.get("changes") or []) > 1}
        for docid in found.keys() & self.expected.keys():
            self.expected[docid] = found[docid]  # (a newer row's leaves: the ones to find)
        again = []
        if self._caught_up and self.reactor.seconds() >= self._retry_at:
            again, self.unsettled = self.unsettled, []
            self._retry_at = self.reactor.seconds() + self.retry_seconds
        named = {docid: found.get(docid) or self.expected.get(docid) or []
                 for docid in dict.fromkeys(
                     again + [d for d in found if not d.startswith("_")])
                 if docid not in self.unsettled}  # (refused before: tried in its turn)
        await self._settle(named, again)
        self.expected = {d: revs for d, revs in self.expected.items()
                         if d in self.unsettled}
        if len(self.unsettled) > UNSETTLED_KEPT:
            raise CouchError(f"{len(self.unsettled)} conflicted documents could not be "
                             f"settled", url=self.db.display_url)  # (the feed waits)
        if self._recreated:  # (during this page: its seq is the old database's)
            return False
        if (answer["last_seq"] != self._saved or self.unsettled != self._saved_unsettled
                or self.expected != self._saved_expected):
            self._rev = await self.db.put_local(CHECKPOINT, {
                "seq": answer["last_seq"], "unsettled": self.unsettled,
                **({"expected": self.expected} if self.expected else {}),
                **({"_rev": self._rev} if self._rev else {})})
            self._saved, self._saved_unsettled = answer["last_seq"], list(self.unsettled)
            self._saved_expected = dict(self.expected)
        self.since = answer["last_seq"]
        self._caught_up = len(rows) < PAGE
        counted(len(rows), answer.get("pending"), answer["last_seq"])
        return self._caught_up

    async def _settle(self, named: dict[str, list[str]], again: list[str]) -> None:
        """Settle each document of ``named`` (``{id: the leaves the feed named}``);
        those whose leaves read stay behind the feed's are read again after each of
        ``behind_waits`` (a cluster's copies get in step in moments), then kept."""
        todo, waits = list(named), list(self.behind_waits)
        while True:
            behind: dict[str, CopyBehind] = {}
            for docid in todo:
                try:
                    self.status.conflicts_settled += await resolve(
                        self.db, docid, named[docid])
                except CopyBehind as error:
                    behind[docid] = error
                    continue
                except DeletionRefused as error:
                    self._keep(docid, error, said=docid in again)
                self.expected.pop(docid, None)
            if not behind or not waits:
                break
            await task.deferLater(self.reactor, waits.pop(0), lambda: None)
            todo = list(behind)
        for docid, error in behind.items():
            self.expected[docid] = named[docid]
            self._keep(docid, error, said=docid in again)

    def _keep(self, docid: str, error: CouchError, said: bool) -> None:
        """Keep ``docid`` to try again; say why, unless it was said before."""
        self.unsettled.append(docid)
        if not said:
            self._refusal = str(error)
            self._failed(self._refusal, loud=True)

    def _failed(self, message: str, loud: bool) -> None:
        self.status.conflicts_error = message
        self.status.note_error(message, "conflicts")
        if loud:
            log.warn("{message}", message=message)

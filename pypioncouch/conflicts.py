"""Conflicting revisions: found in ``_changes`` and settled by ``last_serial``.

An Apache CouchDB cluster takes a write based on a revision one of its copies still
holds (a stale read, another writer, a write answered 202): the document then has two
live branches and CouchDB serves the one whose revision sorts higher (the longer
history, then the higher id), which may be the older data; a live leaf is served
even over a newer removal. The daemon reads ``_changes`` with ``style=all_docs`` (a
row lists every leaf revision), reads the leaves of a document that has several, and
keeps the one with the highest ``last_serial`` (a removal too: its tombstone says
when it happened). The other live leaves are deleted, which makes the kept one what
CouchDB serves without copying it (attachments and all). A tie keeps the one CouchDB
serves (the same on every node).

Resolution is idempotent: a document whose other leaves are deleted ones needs
nothing (a removal's serial is the highest its deleted leaves say:
``Store.tombstone_serial``). The position in the feed is checkpointed in
``_local/pypioncouch-conflicts`` (not replicated).
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.logger import Logger

from pypioncouch.couch import CouchError, Database, NotFound
from pypioncouch.pipeline import CoroutineService
from pypioncouch.status import SyncStatus

log = Logger()

CHECKPOINT = "pypioncouch-conflicts"
PAGE = 2_000  # changes asked for at a time
PAUSE = 5.0  # seconds between looks once caught up


def _rank(leaf: dict) -> tuple:
    """Higher is kept: the newest serial; on a tie a live revision over a removal,
    then CouchDB's own order (revision position, then id)."""
    serial = leaf.get("last_serial")
    position, _, rev_id = leaf["_rev"].partition("-")
    return (serial if isinstance(serial, int) else -1, not leaf.get("_deleted"),
            int(position) if position.isdigit() else 0, rev_id)


def keeper(leaves: list[dict]) -> dict:
    """Which of a document's leaf revisions it keeps."""
    return max(leaves, key=_rank)


def resolution(leaves: list[dict]) -> list[dict]:
    """The deletions that leave ``keeper(leaves)`` (of every leaf revision of a
    document) as the only live one: none when it already is. A removal kept is carried
    by every deletion."""
    if len(leaves) < 2:
        return []
    kept = keeper(leaves)
    retired = [leaf for leaf in leaves if leaf is not kept and not leaf.get("_deleted")]
    carried = {"last_serial": kept.get("last_serial")} if kept.get("_deleted") else {}
    return [{"_id": leaf["_id"], "_rev": leaf["_rev"], "_deleted": True, **carried}
            for leaf in retired]


async def resolve(db: Database, docid: str,
                  status: SyncStatus | None = None) -> int:
    """Settle ``docid``'s conflicting revisions; returns how many were deleted. A
    deletion another writer beat is left (the change it made comes back); one refused
    otherwise (a validate function) is said on /status and in the log."""
    found = await db.leaves(docid)
    deletions = resolution(found)
    if not deletions:
        return 0
    results = await db.bulk_docs(deletions)
    done = sum(1 for result in results if result.ok)
    kept = keeper(found)
    if done:
        log.info("Conflict on {id} settled: kept {what} {rev} (serial {serial}), "
                 "{n} other revision(s) deleted", id=docid, rev=kept["_rev"],
                 what="the removal" if kept.get("_deleted") else "revision",
                 serial=kept.get("last_serial"), n=done)
    refused = [r for r in results if not r.ok and r.error != "conflict"]
    if refused:
        message = (f"CouchDB refused to delete a conflicting revision of {docid}: "
                   f"{refused[0].error}: {refused[0].reason}; it may serve {kept['_rev']}'s "
                   f"rival")
        log.warn("{message}", message=message)
        if status is not None:
            status.note_error(message, "conflicts")
    return done


class ConflictResolver(CoroutineService):
    """Reads ``_changes`` (``style=all_docs``) from its checkpoint for ever, a page at
    a time, and settles the documents that have several leaves; caught up, it looks
    again every ``pause`` seconds (a normal feed: pouchdb-server ignores a longpoll's
    ``timeout``). Failures are retried with backoff from the checkpoint (resolving
    again is harmless) and said on /status."""

    def __init__(self, db: Database, status: SyncStatus | None = None, *, reactor=None,
                 max_backoff: float = 300.0, pause: float = PAUSE):
        if reactor is None:
            from twisted.internet import reactor
        self.db = db
        self.status = status
        self.reactor = reactor
        self.max_backoff = max_backoff
        self.pause = pause
        self.first_since = None  # where the feed was first read from (for tests)

    async def run(self) -> None:
        since = saved = rev = None
        failures, started = 0, False
        while self.running:
            try:
                if since is None:
                    if not started:  # (the daemon's first moments: as the watcher does)
                        await self.db.ensure()
                    elif not await self.db.exists():  # (deleted: the sync recreates it)
                        raise NotFound("the database is gone", url=self.db.display_url)
                    started = True
                    checkpoint = await self.db.get_local(CHECKPOINT) or {}
                    since = saved = checkpoint.get("seq", 0)
                    rev = checkpoint.get("_rev")
                    if self.first_since is None:
                        self.first_since = since
                answer = await self.db.changes(since=since, style="all_docs", limit=PAGE)
                rows = answer.get("results") or []
                for row in rows:
                    docid = row.get("id") or ""
                    if len(row.get("changes") or []) > 1 and not docid.startswith("_"):
                        settled = await resolve(self.db, docid, self.status)
                        if self.status is not None:
                            self.status.conflicts_settled += settled
                if answer["last_seq"] != saved:
                    rev = await self.db.put_local(
                        CHECKPOINT, {"seq": answer["last_seq"], **({"_rev": rev} if rev else {})})
                    saved = answer["last_seq"]
                since = answer["last_seq"]
                failures = 0
                if self.status is not None:
                    self.status.conflicts_error = None
                if len(rows) < PAGE:
                    await task.deferLater(self.reactor, self.pause, lambda: None)
            except defer.CancelledError:
                raise  # (stopped)
            except Exception as error:
                if not isinstance(error, CouchError):
                    log.failure("Conflict resolver failed; it starts again from its "
                                "checkpoint")
                since = None  # (the checkpoint read again: its revision may have moved)
                failures += 1
                delay = min(self.max_backoff, 2.0 ** min(failures - 1, 16))
                message = f"conflict resolver waits: {error}"
                if self.status is not None:
                    self.status.conflicts_error = message
                    self.status.note_error(message, "conflicts")
                if failures & (failures - 1) == 0:  # said on the 1st, 2nd, 4th... try
                    log.warn("{message}; try {n} in {delay:g}s", message=message,
                             n=failures + 1, delay=delay)
                await task.deferLater(self.reactor, delay, lambda: None)

"""Conflicting revisions: found in ``_changes`` and settled by ``last_serial``.

An Apache CouchDB cluster takes a write based on a revision one of its copies still
holds (a stale read, another writer, a write answered 202): the document then has two
live branches and CouchDB serves the one whose revision id sorts higher, which may be
the older data. The daemon follows ``_changes`` with ``style=all_docs`` (a row lists
every leaf revision), reads the leaves of a document that has several, and keeps the
one with the highest ``last_serial`` (a removal too: its tombstone says when it
happened). The others are deleted, which makes the kept one the winner without
copying it (attachments and all). Ties keep the one CouchDB would: the same on every
node, and no write when it already is.

Resolution is idempotent: a document whose other leaves are deleted ones already
older than the kept one needs nothing. The position in the feed is checkpointed in
``_local/pypioncouch-conflicts`` (not replicated).
"""

from __future__ import annotations

from twisted.internet import task
from twisted.logger import Logger

from pypioncouch.couch import CouchError, Database, NotFound
from pypioncouch.pipeline import CoroutineService
from pypioncouch.status import SyncStatus

log = Logger()

CHECKPOINT = "pypioncouch-conflicts"
PAGE = 2_000  # changes asked for at a time
WAIT_MS = 30_000  # how long a caught-up longpoll waits for the next change


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
    document) as what CouchDB serves: none when it already is. A removal kept is
    carried by every deletion (whichever CouchDB then shows says its serial)."""
    if len(leaves) < 2:
        return []
    kept = keeper(leaves)
    retired = [leaf for leaf in leaves if leaf is not kept and not leaf.get("_deleted")]
    carried = {"last_serial": kept.get("last_serial")} if kept.get("_deleted") else {}
    return [{"_id": leaf["_id"], "_rev": leaf["_rev"], "_deleted": True, **carried}
            for leaf in retired]


async def leaves(db: Database, docid: str) -> list[dict]:
    """Every leaf revision of ``docid``, removals included (``open_revs=all``)."""
    answer = await db.get(docid, open_revs="all")
    return [row["ok"] for row in answer if isinstance(row, dict) and "ok" in row]


async def resolve(db: Database, docid: str) -> int:
    """Settle ``docid``'s conflicting revisions; returns how many were deleted (a
    deletion another writer beat is left: the change it made comes back)."""
    found = await leaves(db, docid)
    deletions = resolution(found)
    if not deletions:
        return 0
    done = sum(1 for result in await db.bulk_docs(deletions) if result.ok)
    if done:
        kept = keeper(found)
        log.info("Conflict on {id} settled: kept {what} {rev} (serial {serial}), "
                 "{n} other revision(s) deleted", id=docid, rev=kept["_rev"],
                 what="the removal" if kept.get("_deleted") else "revision",
                 serial=kept.get("last_serial"), n=done)
    return done


class ConflictResolver(CoroutineService):
    """Reads ``_changes`` (``style=all_docs``) from its checkpoint for ever and settles
    the documents that have several leaves. CouchDB errors are retried with backoff
    (said on /status); the checkpoint moves only past settled pages."""

    def __init__(self, db: Database, status: SyncStatus | None = None, *, reactor=None,
                 max_backoff: float = 300.0, wait_ms: int = WAIT_MS):
        if reactor is None:
            from twisted.internet import reactor
        self.db = db
        self.status = status
        self.reactor = reactor
        self.max_backoff = max_backoff
        self.wait_ms = wait_ms

    async def run(self) -> None:
        since, saved, rev, failures = None, None, None, 0
        while self.running:
            try:
                if since is None:  # (again after the database was deleted)
                    await self.db.ensure()
                    checkpoint = await self.db.get_local(CHECKPOINT) or {}
                    since = saved = checkpoint.get("seq", 0)
                    rev = checkpoint.get("_rev")
                answer = await self.db.changes(
                    since=since, style="all_docs", feed="longpoll", limit=PAGE,
                    timeout=self.wait_ms, request_timeout=self.wait_ms / 1000.0 + 30.0)
                for row in answer.get("results") or []:
                    docid = row.get("id") or ""
                    if len(row.get("changes") or []) > 1 and not docid.startswith("_"):
                        settled = await resolve(self.db, docid)
                        if settled and self.status is not None:
                            self.status.conflicts_settled += settled
                since = answer["last_seq"]
                if since != saved:
                    rev = await self.db.put_local(
                        CHECKPOINT, {"seq": since, **({"_rev": rev} if rev else {})})
                    saved = since
                failures = 0
                if self.status is not None:
                    self.status.conflicts_error = None
            except CouchError as error:
                if isinstance(error, NotFound):
                    since = None
                failures += 1
                delay = min(self.max_backoff, 2.0 ** min(failures - 1, 16))
                message = f"conflict resolver waits for CouchDB: {error}"
                if self.status is not None:
                    self.status.conflicts_error = message
                    self.status.note_error(message, "conflicts")
                if failures & (failures - 1) == 0:  # said on the 1st, 2nd, 4th... try
                    log.warn("{message}; try {n} in {delay:g}s", message=message,
                             n=failures + 1, delay=delay)
                await task.deferLater(self.reactor, delay, lambda: None)

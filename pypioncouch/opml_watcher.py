"""The OPML watcher: follows ``_changes`` and keeps each project's ``opml.xml``
attachment current (on the principal node; mirrors get it by replication).

- Starts from its checkpoint (``_local/pypioncouch-opml``, seq kept opaque), so a
  restart resumes instead of regenerating everything; with no checkpoint it starts
  from the beginning of the feed.
- Bursts are debounced per project: many changes to a project's documents become one
  regeneration.
- The attachment is written only when its bytes changed (the stored digest is
  compared), so the watcher's own writes — which are changes too — end there.
- The sync carries the attachment's stub when it rewrites a project document, so the
  OPML survives; the change it makes brings the watcher back to refresh the content.
- A broken feed reconnects with backoff from the last seq seen; the checkpoint only
  moves past changes whose projects were regenerated.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from pypioncouch import couchapp, model
from pypioncouch.couch import Conflict, CouchError, Database
from pypioncouch.follow import ChangesFollower
from pypioncouch.opml import ATTACHMENT, CONTENT_TYPE, project_opml
from pypioncouch.pipeline import run_together
from pypioncouch.status import SyncStatus

log = Logger()

CHECKPOINT = "pypioncouch-opml"


def attachment_digest(content: bytes) -> str:
    """CouchDB's (and PouchDB's) attachment digest: ``md5-<base64>``."""
    return "md5-" + base64.b64encode(hashlib.md5(content).digest()).decode("ascii")


async def regenerate(db: Database, key: str, status: SyncStatus | None = None) -> bool:
    """Bring ``key``'s ``opml.xml`` up to date. True if it was written."""
    for _ in range(3):
        project = await db.get_or_none(key)
        if project is None or project.get("type") != model.PROJECT:
            return False  # removed: the attachment went with the document
        start, end = model.release_id_range(key)
        rows = (await db.all_docs(startkey=start, endkey=end, include_docs=True))["rows"]
        content = project_opml(project, [row["doc"] for row in rows if row.get("doc")])
        stub = (project.get("_attachments") or {}).get(ATTACHMENT) or {}
        if stub.get("digest") == attachment_digest(content):
            return False
        try:
            await db.put_attachment(key, project["_rev"], ATTACHMENT, content, CONTENT_TYPE)
        except Conflict:
            continue  # the sync wrote meanwhile: read again
        if status is not None:
            status.opml_written += 1
        return True
    return False


async def regenerate_all(db: Database, concurrency: int = 4, status: SyncStatus | None = None,
                         progress=None) -> int:
    """Regenerate every project's OPML in one pass (``pypioncouch --opml``); then set
    the watcher's checkpoint to where the database was when the pass began."""
    since = (await db.info())["update_seq"]
    total = (await db.view(couchapp.NAME, "projects", limit=0))["total_rows"]
    written, done, startkey = 0, 0, None
    while True:
        params = {"limit": 500}
        if startkey is not None:
            params.update(startkey=startkey, skip=1)
        rows = (await db.view(couchapp.NAME, "projects", **params))["rows"]
        keys = [row["key"] for row in rows]
        for chunk_start in range(0, len(keys), concurrency):
            results = await run_together(*(regenerate(db, key, status)
                                           for key in keys[chunk_start:chunk_start + concurrency]))
            written += sum(results)
            done += len(results)
            if progress is not None:
                progress(done, total)
        if len(rows) < 500:
            break
        startkey = rows[-1]["key"]
    await _save_checkpoint(db, since)
    return written


async def _save_checkpoint(db: Database, seq: Any) -> None:
    current = await db.get_local(CHECKPOINT)
    doc = {"seq": seq}
    if current is not None:
        doc["_rev"] = current["_rev"]
    await db.put_local(CHECKPOINT, doc)


class OpmlWatcher(Service):
    name = "opml"

    def __init__(self, db: Database, status: SyncStatus | None = None, *,
                 debounce: float = 0.25, concurrency: int = 4, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.db = db
        self.status = status or SyncStatus()
        self.debounce = debounce
        self.concurrency = concurrency
        self.reactor = reactor
        self.dirty: set[str] = set()
        self.seen_seq: Any = None
        self.follower: ChangesFollower | None = None
        self._flush_call = None
        self._flushing: defer.Deferred | None = None
        self._start: defer.Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self._start = defer.ensureDeferred(self._begin())
        self._start.addErrback(lambda f: f.trap(defer.CancelledError))

    async def _begin(self) -> None:
        checkpoint = None
        while self.running and checkpoint is None:
            try:
                await self.db.ensure()
                checkpoint = await self.db.get_local(CHECKPOINT) or {"seq": 0}
            except CouchError as error:
                log.warn("OPML watcher waits for CouchDB: {error}", error=error)
                await task.deferLater(self.reactor, 5.0, lambda: None)
        if not self.running:
            return
        self.status.opml_seq = checkpoint["seq"]
        self.follower = ChangesFollower(self.db, self.on_change, since=checkpoint["seq"],
                                        reactor=self.reactor, name="OPML watcher")
        self.follower.startService()

    def stopService(self):
        super().stopService()
        waits = []
        if self._start is not None and not self._start.called:
            self._start.cancel()
        if self.follower is not None:
            waits.append(self.follower.stopService())
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        if self._flushing is not None:
            waits.append(self._flushing)
        return defer.DeferredList([d for d in waits if d is not None])

    def on_change(self, change: dict) -> None:
        docid = change.get("id", "")
        if not docid.startswith("_"):
            self.dirty.add(docid.split(":", 1)[0])
        self.seen_seq = change["seq"]
        self._schedule()

    def _schedule(self) -> None:
        if self._flushing is None and (self._flush_call is None or not self._flush_call.active()):
            self._flush_call = self.reactor.callLater(self.debounce, self._flush)

    def _flush(self) -> None:
        self._flushing = defer.ensureDeferred(self._flush_now())
        self._flushing.addErrback(lambda f: log.failure("OPML flush failed", f))
        self._flushing.addBoth(self._flushed)

    def _flushed(self, _):
        self._flushing = None
        if self.dirty and self.running:
            self._schedule()

    async def _flush_now(self) -> None:
        keys, seq = sorted(self.dirty), self.seen_seq
        self.dirty = set()
        try:
            for start in range(0, len(keys), self.concurrency):
                chunk = keys[start:start + self.concurrency]
                await run_together(*(regenerate(self.db, key, self.status) for key in chunk))
            await _save_checkpoint(self.db, seq)
            self.status.opml_seq = seq
        except CouchError as error:
            # Not lost: put them back and try again after the next debounce.
            self.dirty.update(keys)
            self.status.note_error(f"OPML: {error}", "opml")
            await task.deferLater(self.reactor, 1.0, lambda: None)

"""The OPML watcher: follows ``_changes`` and keeps each project's ``opml.xml``
attachment current (on the principal node; mirrors get it by replication).

- Starts from its checkpoint (``_local/pypioncouch-opml``, seq kept opaque), so a
  restart resumes instead of regenerating everything; with no checkpoint it starts
  from the beginning of the feed.
- Bursts are debounced per project: many changes to a project's documents become one
  regeneration; dirty projects are handled in batches (three requests a batch).
- The attachment is written only when its bytes changed, so the watcher's own
  writes — which are changes too — end there. The project document records the
  digest of what was written (``opml_digest``): the attachment stub's own digest
  cannot be compared, as Apache CouchDB gzips ``text/*`` attachments and digests the
  compressed bytes (pouchdb-server digests the plain ones).
- The sync carries the attachment's stub when it rewrites a project document, so the
  OPML survives; the change it makes brings the watcher back to refresh the content.
- A broken feed reconnects with backoff from the last seq seen; the checkpoint only
  moves past changes whose projects were regenerated. Writes that fail (CouchDB down,
  or refusing them: a validate function, permissions) are retried with backoff up to
  5 minutes, and the error shows on /status until a write succeeds.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from pypioncouch import couchapp
from pypioncouch.couch import CouchError, Database
from pypioncouch.follow import ChangesFollower
from pypioncouch.opml import ATTACHMENT, CONTENT_TYPE, project_opml
from pypioncouch.status import SyncStatus
from pypioncouch.store import OPML_DIGEST, Store

log = Logger()

CHECKPOINT = "pypioncouch-opml"


class OpmlRefused(CouchError):
    """CouchDB refused to store an ``opml.xml`` for another reason than a conflict."""


def opml_digest(content: bytes) -> str:
    """The digest a project document records of the ``opml.xml`` written with it."""
    return "sha256-" + hashlib.sha256(content).hexdigest()


async def regenerate_many(db: Database, keys: list[str], status: SyncStatus | None = None
                          ) -> tuple[list[str], list[str]]:
    """Bring the ``opml.xml`` of ``keys`` up to date in three requests: the project
    documents, all their releases (ids come from ``versions``), and one ``_bulk_docs``
    carrying the changed attachments inline. Returns ``(written keys, conflicted keys)``;
    a conflict means the sync wrote meanwhile (its change brings the key back). Any
    other refusal raises :class:`OpmlRefused`."""
    projects = await Store(db).projects(list(keys))
    updates = []
    for project, releases in projects:
        content = project_opml(project, releases)
        digest = opml_digest(content)
        has_attachment = ATTACHMENT in (project.get("_attachments") or {})
        if has_attachment and project.get(OPML_DIGEST) == digest:
            continue
        attachments = dict(project.get("_attachments") or {})
        attachments[ATTACHMENT] = {"content_type": CONTENT_TYPE,
                                   "data": base64.b64encode(content).decode("ascii")}
        updates.append({**project, "_attachments": attachments, OPML_DIGEST: digest})
    results = await db.bulk_docs(updates)
    written = [r.id for r in results if r.ok]
    if status is not None:
        status.opml_written += len(written)
    refused = [r for r in results if not r.ok and r.error != "conflict"]
    if refused:  # not a race that another try wins: a validate function, permissions
        first = refused[0]
        raise OpmlRefused(f"CouchDB refused the opml.xml of {len(refused)} project(s), "
                          f"{first.id} first: {first.error}: {first.reason}",
                          url=db.display_url)
    return written, [r.id for r in results if not r.ok]


async def regenerate(db: Database, key: str, status: SyncStatus | None = None) -> bool:
    """Bring one project's ``opml.xml`` up to date. True if it was written."""
    for _ in range(3):
        written, conflicted = await regenerate_many(db, [key], status)
        if not conflicted:
            return bool(written)
    return False


async def regenerate_all(db: Database, status: SyncStatus | None = None,
                         progress=None, batch: int = 200) -> int:
    """Regenerate every project's OPML in one pass (``pypioncouch --opml``); then set
    the watcher's checkpoint to where the database was when the pass began."""
    since = (await db.info())["update_seq"]
    total = await couchapp.count(db, "name", timeout=3600)  # may build the index
    written, done, keys = 0, 0, []

    async def regenerate_batch():
        nonlocal written, done
        wrote, conflicted = await regenerate_many(db, keys, status)
        written += len(wrote)
        for key in conflicted:  # written meanwhile: once more, one by one
            written += await regenerate(db, key, status)
        done += len(keys)
        if progress is not None:
            progress(done, total)
        keys.clear()

    async for row in couchapp.all_projects(db, batch=batch):
        keys.append(row["id"])
        if len(keys) >= batch:
            await regenerate_batch()
    if keys:
        await regenerate_batch()
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
                 debounce: float = 0.25, batch: int = 50, in_flight: int = 3,
                 max_backoff: float = 300.0, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.db = db
        self.status = status or SyncStatus()
        self.debounce = debounce
        self.batch = batch
        self.in_flight = in_flight
        self.max_backoff = max_backoff
        self.failures = 0  # flushes failed in a row
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

    def _schedule(self, delay: float | None = None) -> None:
        if self._flushing is None and (self._flush_call is None or not self._flush_call.active()):
            self._flush_call = self.reactor.callLater(
                self.debounce if delay is None else delay, self._flush)

    def _flush(self) -> None:
        self._flushing = defer.ensureDeferred(self._flush_now())
        self._flushing.addErrback(lambda f: log.failure("OPML flush failed", f))
        self._flushing.addBoth(self._flushed)

    def _flushed(self, _):
        self._flushing = None
        if self.dirty and self.running:
            self._schedule(self.retry_delay())

    def retry_delay(self) -> float:
        """After conflicts, the debounce; after failures, 1 s, 2 s, 4 s... up to
        ``max_backoff``: an error that does not go away is not hammered."""
        if not self.failures:
            return self.debounce
        return min(self.max_backoff, 2.0 ** (self.failures - 1))

    async def _regenerate_batches(self, batches: list[list[str]]) -> None:
        """Regenerate ``batches``, ``in_flight`` at a time; every one is waited for,
        then the first failure (if any) is raised."""
        limit = defer.DeferredSemaphore(self.in_flight)

        async def one(batch):
            _, conflicted = await regenerate_many(self.db, batch, self.status)
            self.dirty.update(conflicted)  # the sync wrote meanwhile: once more

        results = await defer.DeferredList(
            [limit.run(lambda b=batch: defer.ensureDeferred(one(b))) for batch in batches],
            consumeErrors=True)
        for ok, result in results:
            if not ok:
                result.raiseException()

    async def _flush_now(self) -> None:
        keys, seq = sorted(self.dirty), self.seen_seq
        self.dirty = set()
        try:
            # Small batches, a few at a time: the first projects of a burst are current
            # while CouchDB still reads the next ones.
            await self._regenerate_batches([keys[start:start + self.batch]
                                            for start in range(0, len(keys), self.batch)])
            await _save_checkpoint(self.db, seq)
            self.status.opml_seq = seq
        except Exception as error:
            # Not lost: put them back, and try again later and later.
            self.dirty.update(keys)
            self.failures += 1
            message = str(error) if isinstance(error, CouchError) else repr(error)
            self.status.note_error(f"OPML: {message}", "opml")
            self.status.opml_error = f"{message} (retry {self.failures} in " \
                                     f"{self.retry_delay():g}s)"
            if self.failures & (self.failures - 1) == 0:  # the 1st, 2nd, 4th, 8th...
                if isinstance(error, CouchError):
                    log.warn("OPML watcher: {error}; retry {n} in {delay:g}s",
                             error=message, n=self.failures, delay=self.retry_delay())
                else:
                    log.failure("OPML watcher failed; retry {n} in {delay:g}s",
                                n=self.failures, delay=self.retry_delay())
        else:
            if self.failures:
                log.info("OPML watcher: writing again after {n} failed tries",
                         n=self.failures)
            self.failures, self.status.opml_error = 0, None

"""The OPML watcher: follows ``_changes`` and keeps each project's ``opml.xml``
attachment current (on the principal node; mirrors get it by replication).

- Starts from its checkpoint (``_local/pypioncouch-opml``, seq kept opaque), so a
  restart resumes instead of regenerating everything; with no checkpoint it starts
  from the beginning of the feed.
- Bursts are debounced per project: many changes to a project's documents become one
  regeneration. Changed projects are handled oldest change first, in batches (three
  requests a batch), a few in flight: a new batch starts as soon as one ends, so a
  change arriving during a burst waits for a batch, not for the whole burst
  (:class:`Backlog` keeps the order and what the checkpoint may pass).
- The attachment is written only when its bytes changed, so the watcher's own
  writes — which are changes too — end there. The project document records the
  digest of what was written (``opml_digest``): the attachment stub's own digest
  cannot be compared, as Apache CouchDB gzips ``text/*`` attachments and digests the
  compressed bytes (pouchdb-server digests the plain ones).
- The sync carries the attachment's stub when it rewrites a project document, so the
  OPML survives; the change it makes brings the watcher back to refresh the content.
- On a cluster a read may come from copies still behind the change the watcher was
  woken for (a write answered 202, a node down), and the feed would not name that
  change again: the revision the feed last named of each document is kept until a
  read shows it, and a project read without it is read again after a moment.
- A broken feed reconnects with backoff from the last seq seen; the checkpoint only
  moves past changes whose projects were regenerated. Writes that fail (CouchDB down,
  or refusing them: a validate function, permissions) are retried with backoff up to
  5 minutes, and the error shows on /status until a write succeeds.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from pypioncouch import couchapp
from pypioncouch.backoff import doubling, worth_saying
from pypioncouch.copies import FeedRevisions
from pypioncouch.couch import BulkResult, CouchError, Database
from pypioncouch.follow import ChangesFollower
from pypioncouch.opml import ATTACHMENT, CONTENT_TYPE, project_opml
from pypioncouch.status import SyncStatus
from pypioncouch.store import OPML_DIGEST, Store, release_id

log = Logger()

CHECKPOINT = "pypioncouch-opml"


class OpmlRefused(CouchError):
    """CouchDB refused to store an ``opml.xml`` for another reason than a conflict."""


def refusal(refused: list[BulkResult], db: Database) -> OpmlRefused:
    first = refused[0]
    return OpmlRefused(f"CouchDB refused the opml.xml of {len(refused)} project(s), "
                       f"{first.id} first: {first.error}: {first.reason}",
                       url=db.display_url)


def say_refused_alone(result: BulkResult, status: SyncStatus | None,
                      loud: bool = True) -> None:
    """One project's ``opml.xml`` refused for itself (a validate function): noted on
    /status (and said in the log, if ``loud``), and left as it is."""
    message = (f"CouchDB refused the opml.xml of {result.id}: {result.error}: "
               f"{result.reason}; left as it is until the project changes")
    if loud:
        log.warn("OPML: {message}", message=message)
    if status is not None:
        status.note_error(message, "opml")
        status.warn_once(message)


def opml_digest(content: bytes) -> str:
    """The digest a project document records of the ``opml.xml`` written with it."""
    return "sha256-" + hashlib.sha256(content).hexdigest()


async def regenerate_many(db: Database, keys: list[str], status: SyncStatus | None = None,
                          big: set[str] | None = None, big_project: int = 0,
                          named: FeedRevisions | None = None, read_from: int = 0,
                          behind: set[str] | None = None
                          ) -> tuple[dict[str, str], list[str], list[BulkResult]]:
    """Bring the ``opml.xml`` of ``keys`` up to date in three requests: the project
    documents, all their releases (ids come from ``versions``), and one ``_bulk_docs``
    carrying the changed attachments inline (the last two once for each
    :data:`RELEASES_AT_ONCE` releases: a batch of big neighbours, a family of projects
    of hundreds of releases each, held them all at once). Returns ``(written: key -> the
    revision written, conflicted keys, refused)``: a conflict means the sync wrote
    meanwhile (its change brings the key back); a refusal is CouchDB's no for another
    reason (a validate function, or permissions: every write's), which the caller
    weighs. The keys of projects of ``big_project`` releases or more are added to
    ``big``. Those whose documents are read behind what the feed ``named`` before
    ``read_from`` (a cluster's copies not in step: :class:`FeedRevisions`) are left as
    they are and added to ``behind``."""
    behind = set() if behind is None else behind
    store = Store(db)
    found = await store.project_documents(list(keys))
    for key in keys:
        if named and key not in found and named.behind({key: None}, read_from):
            behind.add(key)  # (named, not read: a copy without the project yet)
    written: dict[str, str] = {}
    conflicted: list[str] = []
    refused: list[BulkResult] = []
    for part in _by_releases(list(found.values()), RELEASES_AT_ONCE):
        # (an OPML needs no release's own metadata: its descriptions would be most of it)
        projects = await store.releases_of(part, own_info=False)
        updates = _updates(projects, status, big, big_project, named, read_from, behind)
        results = await db.bulk_docs(updates)
        written.update((r.id, r.rev) for r in results if r.ok)
        conflicted += [r.id for r in results if r.error == "conflict"]
        refused += [r for r in results if not r.ok and r.error != "conflict"]
        del projects, updates  # (the next part's are read with these gone)
    if status is not None:
        status.opml_written += len(written)
    return written, conflicted, refused


# Releases read (and OPML made) at once by :func:`regenerate_many`: ~2 KB each parsed,
# with their files.
RELEASES_AT_ONCE = 5000


def _by_releases(projects: list[dict], most: int) -> Iterator[list[dict]]:
    """``projects`` in parts of at most ``most`` releases (by ``versions``), but for a
    project of more, alone."""
    part: list[dict] = []
    count = 0
    for project in projects:
        size = len(project.get("versions") or ())
        if part and count + size > most:
            yield part
            part, count = [], 0
        part.append(project)
        count += size
    if part:
        yield part


def _updates(projects: list[tuple[dict, list[dict]]], status: SyncStatus | None,
             big: set[str] | None, big_project: int, named: FeedRevisions | None,
             read_from: int, behind: set[str]) -> list[dict]:
    """The project documents of ``projects`` whose ``opml.xml`` is not current, with
    it inline (see :func:`regenerate_many`)."""
    updates = []
    for project, releases in projects:
        if big is not None and len(releases) >= big_project:
            big.add(project["_id"])
        if named:
            read = {release_id(project["_id"], v): None for v in project.get("versions") or []}
            read.update({doc["_id"]: doc.get("_rev") for doc in (project, *releases)})
            if named.behind(read, read_from) is not None:
                behind.add(project["_id"])
                continue
            named.settled(read, read_from)
        try:
            content = project_opml(project, releases)
        except Exception as error:  # a bug meeting odd data: not to hold back the others
            log.failure("OPML of {key} cannot be made; left as it is", key=project["_id"])
            if status is not None:
                status.note_error(f"the OPML of {project['_id']} cannot be made: "
                                  f"{type(error).__name__}", "opml")
            continue
        digest = opml_digest(content)
        has_attachment = ATTACHMENT in (project.get("_attachments") or {})
        if has_attachment and project.get(OPML_DIGEST) == digest:
            continue
        attachments = dict(project.get("_attachments") or {})
        attachments[ATTACHMENT] = {"content_type": CONTENT_TYPE,
                                   "data": base64.b64encode(content).decode("ascii")}
        updates.append({**project, "_attachments": attachments, OPML_DIGEST: digest})
    return updates


async def regenerate(db: Database, key: str, status: SyncStatus | None = None) -> bool:
    """Bring one project's ``opml.xml`` up to date. True if it was written; a refusal
    is said (:func:`say_refused_alone`), and leaves it as it is."""
    for _ in range(3):
        written, conflicted, refused = await regenerate_many(db, [key], status)
        for result in refused:
            say_refused_alone(result, status)
        if not conflicted:
            return bool(written)
    return False


SAID_REFUSALS = 20  # refusals ``--opml`` says one by one; the others are counted


async def regenerate_all(db: Database, status: SyncStatus | None = None,
                         progress=None, batch: int = 200) -> int:
    """Regenerate every project's OPML in one pass (``pypioncouch --opml``); then set
    the watcher's checkpoint to where the database was when the pass began. A project
    CouchDB refuses is left as it is (the first few said, all counted on ``status``):
    run by hand, the command goes through and says how many it left."""
    since = (await db.info())["update_seq"]
    total = await couchapp.count(db, "name", timeout=3600)  # may build the index
    written, done, keys, said = 0, 0, [], 0

    async def regenerate_batch():
        nonlocal written, done, said
        wrote, conflicted, refused = await regenerate_many(db, keys, status)
        for result in refused:
            said += 1
            say_refused_alone(result, status, loud=said <= SAID_REFUSALS)
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
    if said > SAID_REFUSALS:
        log.warn("OPML: {more} more refused, not said one by one", more=said - SAID_REFUSALS)
    await _save_checkpoint(db, since)
    return written


async def _save_checkpoint(db: Database, seq: Any) -> None:
    current = await db.get_local(CHECKPOINT)
    doc = {"seq": seq}
    if current is not None:
        doc["_rev"] = current["_rev"]
    await db.put_local(CHECKPOINT, doc)


class Backlog:
    """The projects whose ``opml.xml`` is due, oldest change first, and how far the
    checkpoint may move: never past a change whose project has not been regenerated by
    a run that began after it.

    Changes fall into epochs: the open one takes the changes that arrive, and is closed
    (made due) once its first change is ``debounce`` old, so that the documents a sync
    writes for one project make one regeneration. An epoch ends at the last seq seen
    before it closed (seqs are opaque, strings since CouchDB 2.0: only ever copied),
    and the checkpoint passes it once none of its projects is left. What is held per
    project is its key and its epoch's number (one object shared by the epoch): at a
    first start on all of PyPI, hundreds of thousands of projects are due at once."""

    def __init__(self, seq: Any = 0):
        self.due: dict[str, int] = {}  # key -> the epoch of its oldest change not done
        self.again: dict[str, int] = {}  # the same, put back: first in line
        self.running: dict[str, int] = {}  # the same, for keys in a batch in flight
        self.held: dict[int, int] = {}  # epoch -> how many keys of it are due or running
        self.ends: dict[int, Any] = {}  # closed epoch -> the last seq it took
        self.epoch = 0  # the open one
        self.oldest = 0  # no epoch before it holds anything
        self.opened_at: float | None = None  # when the open epoch took its first change
        self.last_seq = self.safe_seq = seq  # safe: every change up to it is done

    def __len__(self) -> int:
        return len(self.again) + len(self.due)

    def changed(self, key: str | None, seq: Any, now: float) -> None:
        """A change (of ``key``'s documents, or of no project: a design document)."""
        self.last_seq = seq
        if self.opened_at is None:
            self.opened_at = now
        if key is not None and key not in self.due and key not in self.again:
            self.due[key] = self.epoch
            self.held[self.epoch] = self.held.get(self.epoch, 0) + 1

    def close(self, now: float, debounce: float) -> float | None:
        """Close the open epoch if its first change is ``debounce`` old; else the
        seconds until it will be (None: nothing open)."""
        if self.opened_at is None:
            return None
        if now - self.opened_at < debounce:
            return self.opened_at + debounce - now
        self.ends[self.epoch] = self.last_seq
        self.epoch, self.opened_at = self.epoch + 1, None
        if len(self.ends) > 2 * len(self.held) + 8:
            self._compact()
        self._advance()
        return None

    def take(self, size: int, ready: Callable[[str], bool] = lambda key: True
             ) -> list[str]:
        """Up to ``size`` due keys of closed epochs, oldest first, none in a batch in
        flight (two writes of one project would conflict), none ``ready`` says must
        wait. They run until :meth:`finished` or :meth:`failed`."""
        taken = []
        for line in (self.again, self.due):
            for key, epoch in line.items():
                if len(taken) >= size or epoch == self.epoch:
                    break  # the open epoch: all after it are in it too
                if key not in self.running and ready(key):
                    taken.append((line, key))
        for line, key in taken:
            self.running[key] = line.pop(key)
        return [key for _, key in taken]

    def finished(self, keys: list[str], again: list[str] = ()) -> None:
        """A batch is written; ``again`` conflicted (the sync wrote meanwhile) and is
        due once more."""
        again = set(again)
        for key in keys:
            epoch = self.running.pop(key)
            if key in again:
                self._put_back(key, epoch)
            else:
                self._release(epoch)
        self._advance()

    def forget(self, key: str) -> None:
        """``key`` is not due after all (its only change was its own batch's write)."""
        epoch = self.due.pop(key, None)
        if epoch is not None:
            self._release(epoch)
            self._advance()

    def failed(self, keys: list[str]) -> None:
        for key in keys:
            self._put_back(key, self.running.pop(key))

    def _put_back(self, key: str, epoch: int) -> None:
        """First in line again, with the epoch of its older change (the checkpoint
        stays behind it)."""
        newer = self.due.pop(key, None)
        if newer is not None:  # changed again meanwhile: held once, by the older epoch
            self._release(newer)
        self.again[key] = epoch

    def _release(self, epoch: int) -> None:
        self.held[epoch] -= 1
        if not self.held[epoch]:
            del self.held[epoch]

    def _compact(self) -> None:
        """Drop the ends the checkpoint will never stop at: an epoch's, when the next
        is closed and holds nothing (it never will again: a closed epoch's count only
        falls), is passed with it. While an old project is held (retried for hours),
        one end an epoch (four a second) kept growing."""
        self.ends = {epoch: seq for epoch, seq in self.ends.items()
                     if epoch + 1 in self.held or epoch + 1 >= self.epoch}

    def _advance(self) -> None:
        while self.oldest < self.epoch and self.oldest not in self.held:
            self.safe_seq = self.ends.pop(self.oldest, self.safe_seq)
            self.oldest += 1


# A big project regenerated this recently whose only changes since are to release
# documents waits out the rest: the backfill fills one release's metadata after another
# (5 a second), and each made the project due again: a project of 2,000 releases was
# read whole (tens of MB) several times a second while its metadata was filled. A
# change of the project document (the sync writes it after its releases: an upload, a
# yank) never waits. (What the backfill fills shows in the OPML only for a release
# without files: its yank. Projects under BIG_PROJECT releases, cheap to read, and so
# nearly all, never wait.)
RELEASE_ONLY_COOLDOWN = 30.0
BIG_PROJECT = 100

# (projects a batch, batches in flight), measured at a burst of 1,000 changed projects
# (bench/RESULTS.md): Apache CouchDB answers requests in parallel, so smaller batches,
# more at once (p99 1.6 s); pouchdb-server answers in one thread, where every request
# costs, so fewer, bigger ones (p99 2.4 s, against 2.8-3.4 s with 25 x 6).
BATCH_SHAPES = {"apache": (25, 6), "pouchdb": (50, 3)}
LOST = object()  # saved_seq when the database was deleted: the next save writes

# Our writes whose change has not come back yet, remembered so that it is not taken for
# another's (a regeneration for nothing: half of a burst's work); bounded, as a first
# start on all of PyPI writes hundreds of thousands before the feed brings them back.
OWN_WRITES_KEPT = 20_000
# The revisions the feed named, kept until a read shows them (bounded the same way: the
# changes of a first start are long settled on every copy, and need no such check).
NAMED_KEPT = 20_000
# Seconds before a project read from copies behind the feed is read again: a cluster's
# copies get in step in moments; the read after the last wait is taken as it is.
BEHIND_WAITS = (0.2, 1.0, 3.0, 10.0, 30.0, 60.0)
FEED_FAILURES_SAID = 3  # the changes feed's failures in a row /status says


class OpmlWatcher(Service):
    """Regenerates the ``opml.xml`` of changed projects, oldest change first, in batches
    of ``batch`` with ``in_flight`` at a time: a batch starts as soon as one ends, so
    changes that arrive during a burst do not wait for the whole burst to be written.
    Unless given, both follow the server (:data:`BATCH_SHAPES`)."""

    name = "opml"

    def __init__(self, db: Database, status: SyncStatus | None = None, *,
                 debounce: float = 0.25, batch: int | None = None, in_flight: int | None = None,
                 max_backoff: float = 300.0, cooldown: float = RELEASE_ONLY_COOLDOWN,
                 big_project: int = BIG_PROJECT, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.db = db
        self.cooldown = cooldown
        # key -> when a batch last took it (only within ``cooldown``: oldest first), and
        # the keys whose project document changed since (they do not wait).
        self.taken_at: dict[str, float] = {}
        self.project_changed: set[str] = set()
        self.big_project = big_project
        self.big: set[str] = set()  # projects of big_project releases or more: may wait
        self.status = status or SyncStatus()
        self.debounce = debounce
        self.batch = batch
        self.in_flight = in_flight
        self.max_backoff = max_backoff
        self.failures = 0  # batches failed in a row
        self.feed_failing = False  # /status says the changes feed fails
        self.taken = 0  # batches taken since the start (each numbered: 1, 2, ...)
        self.last_writing = 0  # the number of the latest batch taken that wrote
        # Projects CouchDB refused with nothing written -> ``taken`` then: see _weigh.
        self.refused_since: dict[str, int] = {}
        self.reactor = reactor
        self.backlog = Backlog()
        # key -> the revision of its project document we wrote, until its change comes
        # back: our own writes, which need no regeneration (at most OWN_WRITES_KEPT).
        self.own_writes: dict[str, str] = {}
        # key -> the revision of a change of its project document that came while it
        # was being written, and alone made it due: ours, if the write answers with it.
        self.maybe_own: dict[str, str] = {}
        # The revisions the feed named, until a read shows them; and key -> (reads
        # behind them so far, when to read again).
        self.named = FeedRevisions(NAMED_KEPT)
        self.behind: dict[str, tuple[int, float]] = {}
        self.saved_seq: Any = None
        self.follower: ChangesFollower | None = None
        self.batches: set[defer.Deferred] = set()
        self.paused_until = 0.0
        self._pump_call = None
        self._saves = defer.DeferredLock()
        self._save_queued = False
        self._start: defer.Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self._start = defer.ensureDeferred(self._begin())
        self._start.addErrback(lambda f: f.trap(defer.CancelledError))

    async def _begin(self) -> None:
        checkpoint, tries = None, 0
        while self.running and checkpoint is None:
            try:
                await self.db.ensure()
                if self.batch is None or self.in_flight is None:
                    welcome = await self.db.server.info()
                    batch, in_flight = BATCH_SHAPES[
                        "pouchdb" if "express-pouchdb" in welcome else "apache"]
                    self.batch, self.in_flight = self.batch or batch, \
                        self.in_flight or in_flight
                checkpoint = await self.db.get_local(CHECKPOINT) or {"seq": 0}
                if not isinstance(checkpoint.get("seq"), (str, int)):
                    # (anyone may write a _local document: one without a seq stopped
                    # the watcher for good)
                    log.warn("OPML watcher: its checkpoint {doc} names no seq: starting "
                             "from the beginning", doc=f"_local/{CHECKPOINT}")
                    checkpoint = {"seq": 0}
            except CouchError as error:
                tries += 1
                delay = doubling(tries, 5.0, self.max_backoff)
                self.status.opml_error = f"waiting for CouchDB: {error}"
                if worth_saying(tries):
                    log.warn("OPML watcher waits for CouchDB: {error}; try {n} in "
                             "{delay:g}s", error=error, n=tries + 1, delay=delay)
                await task.deferLater(self.reactor, delay, lambda: None)
        self.status.opml_error = None
        if not self.running:
            return
        self.backlog = Backlog(checkpoint["seq"])
        self.saved_seq = self.status.opml_seq = checkpoint["seq"]
        self.follower = ChangesFollower(self.db, self.on_change, since=checkpoint["seq"],
                                        reactor=self.reactor, name="OPML watcher",
                                        after_loss=0, on_lost=self._lost,
                                        on_connected=self._connected,
                                        on_failed=self._feed_failed)
        self.follower.startService()

    def _lost(self) -> None:
        """The database was deleted (and perhaps created again): what was due in it,
        and its seqs, mean nothing now. The follower starts over from 0, and so does
        the backlog; batches in flight are let be (:meth:`_regenerate`). The new
        database's checkpoint is written anew once the feed is back: one saved from
        the old backlog meanwhile (an old seq, which pouchdb-server would take at a
        restart, skipping the new database's changes up to it) does not stay."""
        self.backlog = Backlog(0)
        for held in (self.own_writes, self.maybe_own, self.taken_at, self.refused_since,
                     self.named, self.behind):
            held.clear()
        self.project_changed.clear()
        self.big.clear()
        self.saved_seq = LOST
        self.status.opml_seq = 0
        # (the old database's failures: its batches' 404s must not pause the new one's)
        self.failures, self.paused_until, self.status.opml_error = 0, 0.0, None

    def _connected(self) -> None:
        if self.saved_seq is LOST:
            self._save_soon()
        if self.feed_failing:
            self.feed_failing, self.status.opml_error = False, None

    def _feed_failed(self, error: CouchError, failures: int) -> None:
        """Said on /status once the feed has failed a few times in a row (a CouchDB
        restart is a try or two): without its feed no opml.xml is kept current."""
        if failures >= FEED_FAILURES_SAID:
            self.feed_failing = True
            self.status.opml_error = (f"its _changes feed fails ({error}; try {failures}): "
                                      "no opml.xml is written meanwhile")

    def stopService(self):
        super().stopService()
        if self._start is not None and not self._start.called:
            self._start.cancel()
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.follower is not None:
            await defer.maybeDeferred(self.follower.stopService)
        await defer.DeferredList(list(self.batches))
        self.backlog.close(self.reactor.seconds(), 0.0)  # passes changes of no project
        await self._saves.run(lambda: defer.ensureDeferred(self._save()))

    def on_change(self, change: dict) -> None:
        docid = change.get("id", "")
        key = None if docid.startswith("_") else docid.split(":", 1)[0]
        if key is not None:
            revs = change.get("changes")
            rev = revs[0].get("rev") if isinstance(revs, list) and len(revs) == 1 \
                and isinstance(revs[0], dict) else None
            ours = self.own_writes.pop(key, None) if key == docid else None
            backlog = self.backlog
            if rev is not None and rev == ours:
                key = None  # our opml.xml coming back: its seq passes, nothing to redo
            elif (key == docid and rev is not None and key in backlog.running
                  and key not in backlog.due and key not in backlog.again):
                self.maybe_own[key] = rev  # (back before the write's answer?)
            else:
                self.maybe_own.pop(key, None)  # another's change: due whatever we wrote
            if key == docid:
                self.project_changed.add(key)
            if key is not None and rev is not None:
                self.named.saw(docid, rev, bool(change.get("deleted")))
        self.backlog.changed(key, change["seq"], self.reactor.seconds())
        self._schedule(self.debounce)

    def _wrote(self, keys: list[str], written: dict[str, str]) -> None:
        """Remember our writes, to know their changes when they come back; one that
        came back already, alone, makes its project due for nothing: not due."""
        for key in keys:
            came = self.maybe_own.pop(key, None)
            if key not in written:
                continue
            if came == written[key]:
                self.backlog.forget(key)
                self.named.forget(key)  # (ours)
                self.project_changed.discard(key)  # (that change was ours)
            else:
                self.own_writes[key] = written[key]
        while len(self.own_writes) > OWN_WRITES_KEPT:  # (then regenerated for nothing)
            del self.own_writes[next(iter(self.own_writes))]

    def _schedule(self, delay: float) -> None:
        """Pump in ``delay`` seconds, or sooner if already due sooner."""
        if self._pump_call is not None and self._pump_call.active():
            if self._pump_call.getTime() <= self.reactor.seconds() + delay:
                return
            self._pump_call.cancel()
        self._pump_call = self.reactor.callLater(delay, self._pump)

    def _pump(self) -> None:
        """Start batches while fewer than ``in_flight`` run and projects are due."""
        if not self.running:
            return
        now = self.reactor.seconds()
        wait = self.backlog.close(now, self.debounce)
        # (changes that needed no batch; a database lost: saved once its feed is back)
        if self.backlog.safe_seq != self.saved_seq and (
                self.saved_seq is not LOST or self.follower.live):
            self._save_soon()
        if wait is not None:  # changes too recent to be due: come back for them
            self._schedule(wait)
        if now < self.paused_until:  # backing off after a failure
            self._schedule(self.paused_until - now)
            return
        self._forget_cooled(now)
        # (a batch failing at once pauses the watcher: not taken again in this loop)
        while len(self.batches) < self.in_flight and now >= self.paused_until:
            keys = self.backlog.take(self.batch, lambda key: self._ready(key, now))
            if not keys:
                break  # none due, or the due ones are in a batch (its end pumps again)
            for key in keys:
                self.project_changed.discard(key)
                self.taken_at.pop(key, None)
                self.taken_at[key] = now
            self.taken += 1
            batch = defer.ensureDeferred(self._regenerate(keys, self.taken, self.backlog))
            self.batches.add(batch)
            batch.addBoth(lambda _, b=batch: self.batches.discard(b))

    def _ready(self, key: str, now: float) -> bool:
        _, read_again_at = self.behind.get(key, (0, 0.0))
        if now < read_again_at:
            self._schedule(read_again_at - now)
            return False
        taken = self.taken_at.get(key)
        if (key not in self.big or taken is None or key in self.project_changed
                or key in self.backlog.again  # (a retry: of any change)
                or not 0 <= now - taken < self.cooldown):  # (or the clock set back)
            return True
        self._schedule(taken + self.cooldown - now)  # (come back for it)
        return False

    def _forget_cooled(self, now: float) -> None:
        while self.taken_at:
            key, taken = next(iter(self.taken_at.items()))
            if 0 <= now - taken < self.cooldown:
                break
            del self.taken_at[key]

    def retry_delay(self) -> float:
        """The pause after ``failures`` failed batches in a row: 1 s, 2 s, 4 s... up to
        ``max_backoff`` (an error that does not go away is not hammered)."""
        return doubling(self.failures, 1.0, self.max_backoff)

    async def _regenerate(self, keys: list[str], number: int, backlog: Backlog) -> None:
        behind: set[str] = set()
        try:
            written, conflicted, refused = await regenerate_many(
                self.db, keys, self.status, self.big, self.big_project, self.named,
                self.named.count, behind)
        except Exception as error:
            if backlog is self.backlog:  # (else taken from a database deleted since)
                self._failed(keys, error)
        else:
            if backlog is self.backlog:
                self._read_again_later(keys, behind)
                done = [key for key in keys if key not in behind]
                if done:  # (none: nothing written, nothing to say of the writes)
                    self._done(done, number, written, conflicted, refused)
        if self.running:
            self._schedule(0)

    def _read_again_later(self, keys: list[str], behind: set[str]) -> None:
        """Those of ``keys`` read from copies ``behind`` the feed: first in line again,
        each after its wait (:data:`BEHIND_WAITS`), pausing no other. Past the last
        wait, the next read is taken as it is (and that said): no copy stays behind
        that long but a node's that is down, and what is read then is the most there
        is to read."""
        now = self.reactor.seconds()
        for key in keys:
            if key not in behind:
                self.behind.pop(key, None)
        for key in behind:
            self.maybe_own.pop(key, None)  # (nothing written: a change then was another's)
            tries = self.behind.get(key, (0, 0.0))[0] + 1
            self.behind[key] = (tries, now + BEHIND_WAITS[min(tries, len(BEHIND_WAITS)) - 1])
            if tries >= len(BEHIND_WAITS):
                self.named.forget_project(key)
                message = (f"OPML: CouchDB's copies of {key} stayed behind the change its "
                           f"feed named for {sum(BEHIND_WAITS[:-1]):g}s; its opml.xml is "
                           f"written from what CouchDB reads in {BEHIND_WAITS[-1]:g}s")
                log.warn("{message}", message=message)
                self.status.note_error(message, "opml")
        self.backlog.failed(list(behind))

    def _failed(self, keys: list[str], error: Exception) -> None:
        for key in keys:  # (written or not, unknown: what came stays due)
            self.maybe_own.pop(key, None)
        self.backlog.failed(keys)  # not lost: first in line once the pause is over
        self._note_failure(error)

    def _done(self, keys: list[str], number: int, written: dict[str, str],
              conflicted: list[str], refused: list[BulkResult]) -> None:
        self._wrote(keys, written)
        again = self._weigh(keys, number, written, refused)
        self.backlog.finished([key for key in keys if key not in again], conflicted)
        if again:  # the same: first in line once the pause is over
            self.backlog.failed(list(again))
            self._note_failure(refusal(list(again.values()), self.db))
        else:
            if self.failures:
                log.info("OPML watcher: writing again after {n} failed tries",
                         n=self.failures)
            self.failures, self.status.opml_error = 0, None
        self._save_soon()

    def _weigh(self, keys: list[str], number: int, written: dict[str, str],
               refused: list[BulkResult]) -> dict[str, BulkResult]:
        """The refused projects of batch ``number`` to try again. A project refused
        while other writes succeed (in its request, or in a batch taken after its
        refusal: batches in flight then may have been written before a change of
        rights) is refused for itself (a validate function refusing its content, or
        this user that document: ``forbidden``, ``unauthorized`` or any other): said,
        and left until it changes, so that it holds back no other and no checkpoint
        (tried again first in line, each batch had a refusal: the pause grew to its
        longest, for every project). Refusals with no write succeeding may be every
        write's (permissions; credentials): tried again, with backoff, holding the
        checkpoint."""
        if written:
            self.last_writing = max(self.last_writing, number)
        refused_ids = {result.id for result in refused}
        for key in keys:
            if key not in refused_ids:
                self.refused_since.pop(key, None)
        again = {}
        for result in refused:
            since = self.refused_since.get(result.id)
            if written or (since is not None and self.last_writing > since):
                say_refused_alone(result, self.status)
                self.refused_since.pop(result.id, None)
            else:
                self.refused_since.setdefault(result.id, self.taken)
                again[result.id] = result
        return again

    def _note_failure(self, error: Exception) -> None:
        self.failures += 1
        self.paused_until = self.reactor.seconds() + self.retry_delay()
        message = str(error) if isinstance(error, CouchError) else repr(error)
        self.status.note_error(f"OPML: {message}", "opml")
        self.status.opml_error = f"{message} (retry {self.failures} in " \
                                 f"{self.retry_delay():g}s)"
        if worth_saying(self.failures):
            if isinstance(error, CouchError):
                log.warn("OPML watcher: {error}; retry {n} in {delay:g}s",
                         error=message, n=self.failures, delay=self.retry_delay())
            else:
                log.failure("OPML watcher failed; retry {n} in {delay:g}s",
                            n=self.failures, delay=self.retry_delay(), failure=Failure(error))

    def _save_soon(self) -> None:
        """Save the checkpoint after the save under way (one at a time: they would
        conflict), unless one is queued already."""
        if self._save_queued:
            return
        self._save_queued = True
        self._saves.run(lambda: defer.ensureDeferred(self._save())).addErrback(
            lambda failure: log.failure("OPML watcher: saving the checkpoint", failure))

    async def _save(self) -> None:
        self._save_queued = False
        backlog = self.backlog
        seq = backlog.safe_seq
        if self.saved_seq is None or seq == self.saved_seq:
            return  # not started (the checkpoint not read yet), or nothing new
        try:
            await _save_checkpoint(self.db, seq)
        except Exception as error:  # the next batch's save tries again
            log.warn("OPML watcher could not save its checkpoint: {error}", error=error)
            return
        if backlog is self.backlog:  # (else the old database's: written again, LOST)
            self.saved_seq = self.status.opml_seq = seq

"""The sync engine: full import, incremental update, checkpoints.

Rules (reference §5, DESIGN.md "Quality bars"):

- *Full import*: note PyPI's serial S0 **before** listing the projects, import every
  project, then set the checkpoint to S0. A project whose stored ``last_serial`` is
  already at the listed serial is skipped, so an interrupted import resumes where it
  stopped and a re-run costs CouchDB reads, not PyPI requests.
- *Incremental*: ``changelog_since_serial(cursor)``, coalesced per project (highest
  serial), refetched and written; pages past the 50,000-row cap until caught up.
- The checkpoint (``_local/pypioncouch-sync``: serial + pending projects) is written
  only after every write it covers is acknowledged. A project that could not be
  fetched or written (stale CDN copy, bad payload, errors after retries) is kept in
  ``pending`` and retried on the next pass: nothing acknowledged is lost.
- Work flows through bounded queues: CouchDB reads in batches, ``concurrency``
  fetchers, one writer doing ``_bulk_docs`` in batches; memory stays bounded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator, NamedTuple

from twisted.internet import defer
from twisted.logger import Logger

from pypioncouch import couchapp, model
from pypioncouch.couch import Database
from pypioncouch.pipeline import BoundedQueue, run_together
from pypioncouch.pypi import (
    MethodGone, ProjectAnswer, PyPI, PyPIError, StaleAnswer)
from pypioncouch.status import SyncStatus

log = Logger()

CHECKPOINT = "pypioncouch-sync"
CONFLICT_ROUNDS = 3
WRITERS = 2


class Work(NamedTuple):
    """One project to bring up to date: at least as new as ``serial``."""

    key: str  # normalized name
    name: str  # as PyPI spelled it
    serial: int | None


@dataclass
class Summary:
    """What a pass did. ``str()`` is the one-line summary the command prints."""

    kind: str = "update"
    projects: int = 0  # project documents written
    releases: int = 0  # release documents written
    deleted: int = 0  # projects removed
    skipped: int = 0  # already up to date
    serial: int | None = None  # the checkpoint after the pass
    pending: int = 0  # projects left for the next pass
    errors: list[str] = field(default_factory=list)
    duration: float = 0.0

    def __str__(self) -> str:
        rate = self.projects / self.duration if self.duration else 0.0
        text = (f"{self.kind}: {self.projects} projects ({self.releases} releases) written, "
                f"{self.deleted} removed, {self.skipped} up to date, serial {self.serial}, "
                f"{self.duration:.1f}s ({rate:.0f} projects/s)")
        if self.pending:
            text += f"; {self.pending} pending for the next pass"
        return text


def group_changelog(rows: list[list]) -> dict[str, Work]:
    """Changelog rows -> one :class:`Work` per project, with its highest serial.
    Names that are not projects (``user:...``, empty) are skipped."""
    works: dict[str, Work] = {}
    for row in rows:
        name, serial = row[0], row[4]
        if not name or name.startswith("user:") or not model.is_valid_project_name(name):
            continue
        key = model.normalize(name)
        current = works.get(key)
        if current is None or serial >= (current.serial or 0):
            works[key] = Work(key, name, serial)
    return works


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class XmlRpcImporter:
    """Imports PyPI into a CouchDB database and keeps it current (the 2011 name, kept:
    the changelog still comes over XML-RPC; metadata comes from the JSON API unless
    ``source="xmlrpc"``)."""

    def __init__(self, db: Database, pypi: PyPI, *, status: SyncStatus | None = None,
                 concurrency: int = 10, batch_size: int = 100, source: str = "json",
                 changes: str = "xmlrpc",
                 progress: Callable[[SyncStatus], None] | None = None):
        if source not in ("json", "xmlrpc"):
            raise ValueError("source is 'json' or 'xmlrpc'")
        if changes not in ("xmlrpc", "simple"):
            raise ValueError("changes is 'xmlrpc' or 'simple'")
        self.db = db
        self.pypi = pypi
        self.status = status or SyncStatus(pypi_url=pypi.display_url,
                                           couch_url=db.display_url, database=db.name)
        self.status.changes_source = changes
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.source = source
        self.progress = progress or (lambda status: None)
        self._checkpoint_rev: str | None = None

    # -- checkpoint --------------------------------------------------------------------

    async def load_checkpoint(self) -> dict | None:
        checkpoint = await self.db.get_local(CHECKPOINT)
        if checkpoint is not None:
            self._checkpoint_rev = checkpoint.get("_rev")
            if checkpoint.get("pypi") not in (None, self.pypi.display_url):
                log.warn("this database was synced from {old}, now from {new}: "
                         "serials differ between indexes", old=checkpoint.get("pypi"),
                         new=self.pypi.display_url)
        return checkpoint

    async def save_checkpoint(self, serial: int, pending: dict[str, int | None]) -> None:
        doc = {"serial": serial, "pending": pending, "pypi": self.pypi.display_url,
               "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if self._checkpoint_rev is None:
            existing = await self.db.get_local(CHECKPOINT)
            self._checkpoint_rev = existing.get("_rev") if existing else None
        if self._checkpoint_rev:
            doc["_rev"] = self._checkpoint_rev
        self._checkpoint_rev = await self.db.put_local(CHECKPOINT, doc)
        self.status.note_serials(our_serial=serial)
        self.status.pending = len(pending)

    # -- passes ------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Create the database and install the design document if needed."""
        await self.db.ensure()
        await couchapp.push(self.db)

    async def full_import(self) -> Summary:
        """Import every project PyPI lists, then set the checkpoint (resumable)."""
        started = time.monotonic()
        summary = Summary(kind="full import")
        self.status.phase = "full import"
        if self.status.changes_source == "simple":
            baseline, listing = await self.pypi.simple_index()
        else:
            baseline = await self.pypi.changelog_last_serial()  # before listing: §5
            listing = await self.pypi.list_packages_with_serial()
        self.status.note_serials(pypi_serial=baseline)
        works = sorted((Work(model.normalize(name), name, serial)
                        for name, serial in listing.items()
                        if model.is_valid_project_name(name)), key=lambda w: w.key)
        del listing
        self.status.import_total, self.status.import_done = len(works), 0
        checkpoint = await self.load_checkpoint()
        pending = dict((checkpoint or {}).get("pending") or {})
        had_documents = (await self.db.info())["doc_count"] > 1  # more than the design doc
        failures = await self.sync(works, summary)
        listed = {w.key for w in works}
        del works
        # A project PyPI no longer lists is gone (reference §5), e.g. removed between
        # an interrupted import and this one, whose baseline is past the removal.
        # Into an empty database there is nothing to sweep (and no view to build).
        if had_documents:
            await self.sweep(listed, summary, failures)
        failures.update({k: s for k, s in pending.items() if k not in listed})
        await self.save_checkpoint(baseline, failures)
        return self._finish(summary, baseline, failures, started)

    async def update(self) -> Summary:
        """One incremental pass: everything PyPI changed since the checkpoint.
        With no checkpoint yet, this is a full import."""
        checkpoint = await self.load_checkpoint()
        if checkpoint is None:
            return await self.full_import()
        started = time.monotonic()
        summary = Summary(kind="update")
        self.status.phase = "incremental"
        serial = checkpoint["serial"]
        pending: dict = dict(checkpoint.get("pending") or {})
        while True:
            if self.status.changes_source == "xmlrpc":
                try:
                    rows, new_serial, more = await self._changelog_page(serial)
                except MethodGone as gone:
                    self._fall_back_to_simple(gone)
                    continue
                works = group_changelog(rows)
            else:
                works, new_serial = await self._simple_changes(serial, summary)
                more = False
            for key, wanted in pending.items():
                if key not in works:
                    works[key] = Work(key, key, wanted)
            failures = await self.sync(sorted(works.values()), summary)
            await self.save_checkpoint(new_serial, failures)
            serial, pending = new_serial, failures
            if not more:
                break
            await self.pypi.sleep(1.0)  # PyPI asks for about 1 s between XML-RPC calls
        return self._finish(summary, serial, pending, started)

    async def _changelog_page(self, serial: int) -> tuple[list, int, bool]:
        last = await self.pypi.changelog_last_serial()
        self.status.note_serials(pypi_serial=last)
        if last <= serial:
            return [], serial, False
        rows = await self.pypi.changelog_since_serial(serial)
        if not rows:
            return [], serial, False
        # PyPI caps an answer (50,000 rows): page on until its last serial is reached.
        return rows, rows[-1][4], rows[-1][4] < last

    async def _simple_changes(self, serial: int, summary: Summary
                              ) -> tuple[dict[str, Work], int]:
        current, index = await self.pypi.simple_index()
        self.status.note_serials(pypi_serial=current)
        works = {}
        for name, last in index.items():
            if last is not None and last > serial and model.is_valid_project_name(name):
                key = model.normalize(name)
                works[key] = Work(key, name, last)
        # The index has no removal rows: a project it no longer lists is gone.
        failures: dict = {}
        await self.sweep({model.normalize(name) for name in index}, summary, failures)
        works.update({k: Work(k, k, s) for k, s in failures.items()})
        return works, max(serial, current or serial)

    async def sweep(self, listed: set[str], summary: Summary, failures: dict) -> None:
        """Delete the stored projects that are not in ``listed`` (PyPI's listing)."""
        strays = [row["id"] async for row in couchapp.all_projects(self.db)
                  if row["id"] not in listed]
        for chunk in _chunks(strays, self.batch_size):
            stored = await self._stored_projects(chunk)
            await self._write([(Work(key, key, None), stored.get(key), ProjectAnswer(key, "gone"))
                               for key in chunk], failures, summary)

    def _fall_back_to_simple(self, gone: MethodGone) -> None:
        message = ("PyPI no longer serves the XML-RPC changelog "
                   f"({gone.text[:80]}); following the /simple/ index serials instead")
        log.warn(message)
        self.status.warn_once(message)
        self.status.changes_source = "simple"

    def _finish(self, summary: Summary, serial, pending: dict, started: float) -> Summary:
        summary.serial = serial
        summary.pending = len(pending)
        summary.duration = time.monotonic() - started
        self.status.last_pass_at = time.time()
        self.status.phase = "idle"
        return summary

    # -- the pipeline ----------------------------------------------------------------

    async def sync(self, works: Iterable[Work], summary: Summary) -> dict[str, int | None]:
        """Bring every project of ``works`` up to date. Returns the ones that failed
        (``{normalized name: serial}``), to be retried on the next pass."""
        failures: dict[str, int | None] = {}
        to_fetch = BoundedQueue(self.concurrency * 2)
        to_write = BoundedQueue(self.batch_size * 2)
        fetchers = self.concurrency

        async def read():
            for chunk in _chunks(works, self.batch_size):
                stored = await self._stored_projects([w.key for w in chunk])
                for work in chunk:
                    old = stored.get(work.key)
                    if (old is not None and work.serial is not None
                            and (old.get("last_serial") or -1) >= work.serial):
                        summary.skipped += 1
                        self._advance()
                        continue
                    await to_fetch.put((work, old))
            for _ in range(fetchers):
                await to_fetch.put(None)

        async def fetch():
            while (item := await to_fetch.get()) is not None:
                work, old = item
                try:
                    answer = await self._ask_pypi(work)
                except PyPIError as error:
                    kind = "stale" if isinstance(error, StaleAnswer) else "pypi"
                    self._failed(work, str(error), failures, summary, kind)
                    continue
                except defer.CancelledError:
                    raise
                except Exception as error:  # a bug must cost one project, not the pass
                    log.failure("{name}: unexpected error", name=work.key)
                    self._failed(work, f"unexpected {type(error).__name__}: {error}",
                                 failures, summary, "bug")
                    continue
                await to_write.put((work, old, answer))

        async def fetch_all():
            await run_together(*(fetch() for _ in range(fetchers)))
            for _ in range(WRITERS):
                await to_write.put(None)

        async def write():
            # Two writers: one prepares its batch while CouchDB takes the other's.
            done = False
            while not done:
                batch = []
                while len(batch) < self.batch_size and (not batch or len(to_write)):
                    item = await to_write.get()
                    if item is None:
                        done = True
                        break
                    batch.append(item)
                if batch:
                    await self._write(batch, failures, summary)

        await run_together(read(), fetch_all(), *(write() for _ in range(WRITERS)))
        return failures

    def _advance(self) -> None:
        self.status.import_done += 1
        self.progress(self.status)

    def _failed(self, work: Work, cause: str, failures: dict, summary: Summary,
                kind: str) -> None:
        log.warn("{name}: {cause}; will retry", name=work.key, cause=cause)
        failures[work.key] = work.serial
        summary.errors.append(f"{work.key}: {cause}")
        self.status.note_error(f"{work.key}: {cause}", kind)
        self._advance()

    async def _ask_pypi(self, work: Work) -> ProjectAnswer:
        if self.source == "xmlrpc":
            try:
                return await self.pypi.legacy_project(work.name, work.serial)
            except MethodGone as gone:
                message = (f"{self.pypi.display_url} no longer serves XML-RPC release data "
                           f"({gone.text[:60]}); using the JSON API")
                log.warn(message)
                self.status.warn_once(message)
                self.source = "json"
        return await self.pypi.project(work.name, work.serial)

    async def _stored_projects(self, keys: list[str]) -> dict[str, dict]:
        answer = await self.db.all_docs(keys=keys, include_docs=True)
        return {row["key"]: row["doc"] for row in answer["rows"] if row.get("doc")}

    async def _release_ids(self, key: str) -> list[str]:
        start, end = model.release_id_range(key)
        answer = await self.db.all_docs(startkey=start, endkey=end)
        return [row["id"] for row in answer["rows"]]

    async def _plan(self, work: Work, old: dict | None, answer: ProjectAnswer
                    ) -> tuple[list[dict], list[str], int]:
        """``(documents to write, release ids whose stored copy is needed, releases)``
        for one project. Raises :class:`model.BadPayload` for a malformed answer."""
        old_digests = (old or {}).get("release_digests") or {}
        if answer.kind == "gone":
            ids = await self._release_ids(work.key)
            deletions = [{"_id": i, "_deleted": True} for i in ids]
            if old is not None:
                deletions.append({"_id": work.key, "_rev": old["_rev"], "_deleted": True})
            return deletions, ids, 0
        if answer.kind == "empty":
            name = (old or {}).get("name") or work.name
            project = model.empty_project_document(name, answer.serial, answer.status)
            releases = []
        else:
            project, releases = model.project_documents(answer.payload)
            if project["_id"] != work.key:
                raise model.BadPayload(f"asked for {work.key}, PyPI answered "
                                       f"{project['_id']}")
        new_digests = project["release_digests"]  # computed once, by the model
        changed = [r for r in releases if model.release_needs_write(
            new_digests[r["version"]], old_digests.get(r["version"]))]
        project["release_digests"] = {
            version: model.merged_digests(digests, old_digests.get(version))
            for version, digests in new_digests.items()}
        new_versions = {r["version"] for r in releases}
        gone_ids = [model.release_id(work.key, v) for v in old_digests if v not in new_versions]
        if answer.kind == "empty" and old is not None:
            gone_ids = await self._release_ids(work.key)
        if old is not None:
            project["_rev"] = old["_rev"]
            if old.get("_attachments"):
                project["_attachments"] = old["_attachments"]
        deletions = [{"_id": i, "_deleted": True} for i in gone_ids]
        # Stored copies: for revisions, and for the info of releases no longer latest.
        needed = [r["_id"] for r in changed if r["version"] in old_digests] + gone_ids
        return changed + deletions + [project], needed, len(changed)

    async def _write(self, batch: list, failures: dict, summary: Summary) -> None:
        plans = []
        needed: list[str] = []
        for work, old, answer in batch:
            try:
                docs, wanted, releases = await self._plan(work, old, answer)
            except model.BadPayload as error:
                self._failed(work, f"malformed answer from PyPI: {error}", failures, summary,
                             "payload")
                continue
            plans.append((work, answer, docs, releases))
            needed += wanted
        stored = {}
        if needed:
            rows = (await self.db.all_docs(keys=needed, include_docs=True))["rows"]
            stored = {row["key"]: row["doc"] for row in rows if row.get("doc")}
        for _, _, plan_docs, _ in plans:
            for doc in plan_docs:
                previous = stored.get(doc["_id"])
                if previous is not None:
                    doc["_rev"] = previous["_rev"]
                    if doc.get("type") == model.RELEASE and "info" not in doc:
                        doc.update(model.own_info_of(previous))  # kept from earlier
        # Releases first, then the project documents of the projects whose releases
        # all landed: a stored project's last_serial always covers its releases.
        rejected = await self._bulk_write(
            [d for plan in plans for d in plan[2] if not _is_project_doc(d)])
        landed = []
        for work, answer, plan_docs, releases in plans:
            problems = [rejected[d["_id"]] for d in plan_docs if d["_id"] in rejected]
            if problems:
                self._failed(work, f"CouchDB refused a document: {problems[0]}",
                             failures, summary, "couchdb")
            else:
                landed.append((work, answer, plan_docs, releases))
        rejected = await self._bulk_write(
            [d for plan in landed for d in plan[2] if _is_project_doc(d)])
        for work, answer, plan_docs, releases in landed:
            if work.key in rejected:
                self._failed(work, f"CouchDB refused a document: {rejected[work.key]}",
                             failures, summary, "couchdb")
                continue
            if answer.kind == "gone":
                summary.deleted += 1 if plan_docs else 0
                self.status.projects_deleted += 1 if plan_docs else 0
            else:
                summary.projects += 1
                summary.releases += releases
                self.status.projects_written += 1
            self.status.documents_written += len(plan_docs)
            self._advance()

    async def _bulk_write(self, docs: list[dict]) -> dict[str, str]:
        """Write ``docs``, settling conflicts with the stored revision (we own these
        documents; a conflict means an interrupted earlier write or the OPML watcher's
        attachment). Returns ``{id: reason}`` for documents that could not be written."""
        rejected: dict[str, str] = {}
        pending = docs
        for _ in range(CONFLICT_ROUNDS):
            if not pending:
                break
            results = await self.db.bulk_docs(pending)
            conflicted = []
            for doc, result in zip(pending, results):
                if result.ok:
                    continue
                if result.error == "conflict":
                    conflicted.append(doc)
                else:
                    rejected[doc["_id"]] = f"{result.error}: {result.reason}"
            if not conflicted:
                return rejected
            rows = (await self.db.all_docs(keys=[d["_id"] for d in conflicted],
                                           include_docs=True))["rows"]
            current = {row["key"]: row for row in rows}
            pending = []
            for doc in conflicted:
                row = current.get(doc["_id"], {})
                rev = (row.get("value") or {}).get("rev")
                if row.get("doc") is None and doc.get("_deleted"):
                    continue  # already gone
                if rev:
                    doc["_rev"] = rev
                    if doc.get("type") == model.RELEASE and "info" not in doc:
                        # e.g. the backfill stored the release's own info meanwhile
                        doc.update(model.own_info_of(row.get("doc") or {}))
                    attachments = (row.get("doc") or {}).get("_attachments")
                    if doc.get("type") == model.PROJECT and attachments:
                        doc["_attachments"] = attachments
                pending.append(doc)
        for doc in pending:
            rejected[doc["_id"]] = "conflict"
        return rejected


def _is_project_doc(doc: dict) -> bool:
    return ":" not in doc["_id"]  # release ids are <project>:<version>


async def run_pass(importer: XmlRpcImporter, full: bool = False) -> Summary:
    """Check CouchDB, prepare the database and run one pass (the command, the API)."""
    await importer.db.server.info()
    await importer.prepare()
    return await (importer.full_import() if full else importer.update())

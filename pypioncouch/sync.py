"""The sync engine: full import and incremental passes through a bounded pipeline.

- *Full import*: note PyPI's serial S0 **before** listing the projects (reference
  pypi-api.md), import every project, then set the checkpoint to S0. A project whose
  stored ``last_serial`` is already at the listed serial is skipped, so an interrupted
  import resumes where it stopped and a re-run costs CouchDB reads, not PyPI requests.
- *Incremental*: ``changelog_since_serial(cursor)``, coalesced per project (highest
  serial), refetched and written; pages past the 50,000-row cap until caught up. Or,
  with ``changes="simple"``, the projects whose ``/simple/`` serial moved.
- Work flows through bounded queues: CouchDB reads in batches, ``concurrency``
  fetchers, two writers doing ``_bulk_docs`` in batches (one prepares while CouchDB
  takes the other's); memory stays bounded, and so does ``pending`` (:class:`Pending`).
- A project that could not be fetched or written (stale CDN copy, bad payload, errors
  after retries) stays pending for the next pass: nothing acknowledged is lost.

The rules live beside it: :mod:`pypioncouch.checkpoint` (saved only after the writes
it covers, never backwards), :mod:`pypioncouch.removals` (removals only on PyPI's
word, and not too many in one pass; stale listings), :mod:`pypioncouch.store` (the
document layout; writes never move backwards).
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable, Container, Iterable, Iterator, Mapping, NamedTuple

from twisted.internet import defer
from twisted.logger import Logger

from pypioncouch import couchapp, model, store, upgrade
from pypioncouch.checkpoint import Checkpoint
from pypioncouch.conflicts import ConflictResolver
from pypioncouch.couch import CouchError, Database
from pypioncouch.pipeline import BoundedQueue, run_together
from pypioncouch.pypi import (
    Listing, MethodGone, ProjectAnswer, PyPI, PyPIError, StaleAnswer)
from pypioncouch.removals import CONFIRM_HINT, removal_limit, stale_listing
from pypioncouch.status import SyncStatus
from pypioncouch.trace import OFF, Trace
from pypioncouch.urls import check_database_name

log = Logger()

CONFLICT_ROUNDS = store.CONFLICT_ROUNDS
MAX_PENDING = 10_000  # projects the checkpoint keeps to retry (~300 KB of JSON)
MAX_ERRORS = 100  # error messages a Summary keeps (the rest are counted)
WRITERS = 2


class Work(NamedTuple):
    """One project to bring up to date: at least as new as ``serial``."""

    key: str  # normalized name
    name: str  # as PyPI spelled it
    serial: int | None
    removed: bool = False  # the changelog says PyPI removed it (at ``serial``)
    # The versions its changelog rows name: one PyPI no longer has is removed even if
    # the stored project never listed it (see :meth:`XmlRpcImporter._plan`).
    versions: frozenset = frozenset()
    retry: bool = False  # pending from an earlier pass (which versions, unknown)
    # The versions its rows yanked or unyanked: a release without files shows that in
    # its own metadata only, asked for even when the project is stored as new as this.
    yanks: frozenset = frozenset()
    # The serial of its last row that created it or uploaded to it (None: none): not
    # archived then (PyPI takes no upload to an archived project), so an archive the
    # status sweep read before that serial is not kept.
    uploaded: int | None = None


class Pending(dict):
    """Projects to retry on the next pass, ``{normalized name: serial}``, at most
    ``limit`` of them; a failure past the limit is only counted in ``overflow``.

    When PyPI fails for many projects (an outage during a full import of 700,000),
    keeping every one would grow without bound, in memory and in the checkpoint
    document (CouchDB refuses documents over 8 MB: the checkpoint could no longer be
    saved at all). Yet none may be lost. So a pass whose failures overflow does not
    move the checkpoint: its serial and its pending list stay as they were, and the
    next pass finds every project of this one again (from the changelog since that
    serial, or from the listing: with no checkpoint yet, the next pass is a full
    import again). What this pass wrote is not redone: a project stored at the serial
    asked for is skipped for a CouchDB read. Storing the overflow compactly (ranges,
    attachments) would let the checkpoint move on, but costs a format to keep
    correct for a case where PyPI itself is failing; waiting it out is simpler.
    """

    def __init__(self, limit: int = MAX_PENDING, items=()):
        super().__init__()
        self.limit = limit
        self.overflow = 0  # failures not kept (a project failing twice counts twice)
        self.update(items)

    def __setitem__(self, key: str, serial: int | None) -> None:
        if key in self or len(self) < self.limit:
            super().__setitem__(key, serial)
        else:
            self.overflow += 1

    def update(self, other=(), **more) -> None:
        items = other.items() if hasattr(other, "items") else other
        for key, serial in [*items, *more.items()]:
            self[key] = serial
        self.overflow += getattr(other, "overflow", 0)

    @property
    def failed(self) -> int:
        """Projects that failed (as far as counted)."""
        return len(self) + self.overflow


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
    changed: int = 0  # projects PyPI named as changed (the changelog, the index), new work
    held: int = 0  # removals held back: more than a pass may remove
    held_reason: str | None = None
    stale: str | None = None  # why the listing was ignored (older than the checkpoint)
    overflow: str | None = None  # why the checkpoint did not move (too many failures)
    incomplete: str | None = None  # why it did not move: the listing hid projects PyPI has
    conflicts_settled: int = 0  # conflicting revisions deleted after the pass
    conflicts_problem: str | None = None  # why some conflicts were not settled
    errors: list[str] = field(default_factory=list)  # the first MAX_ERRORS
    more_errors: int = 0  # errors past those
    duration: float = 0.0

    def __str__(self) -> str:
        rate = self.projects / self.duration if self.duration else 0.0
        text = (f"{self.kind}: {self.projects} projects ({self.releases} releases) written, "
                f"{self.deleted} removed, {self.skipped} up to date, serial {self.serial}, "
                f"{self.duration:.1f}s ({rate:.0f} projects/s)")
        if self.pending:
            text += f"; {self.pending} pending for the next pass"
        if self.held_reason:
            text += f"; {self.held_reason}"
        if self.stale:
            text += f"; {self.stale}"
        if self.overflow:
            text += f"; {self.overflow}"
        if self.incomplete:
            text += f"; {self.incomplete}"
        if self.conflicts_settled:
            plural = "s" if self.conflicts_settled != 1 else ""
            text += f"; {self.conflicts_settled} conflicting revision{plural} settled"
        if self.conflicts_problem:
            text += f"; {self.conflicts_problem}"
        return text

    def note_error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)
        else:
            self.more_errors += 1


def held_key(name: str) -> str:
    """``name``'s normalized key, as the name's own string when they agree (most of
    PyPI's names): one string held, not two, for each of a listing's 700,000."""
    key = model.normalize(name)
    return name if key == name else key


class WorkList:
    """Every project of a listing (``{name: serial}``, PyPI's spelling) as :class:`Work`,
    in key order, and whether a key is among them. Held as columns — keys, names only
    where they differ from the key, serials in an array — and made into ``Work`` one
    at a time as the pipeline reads them: at PyPI's size (700,000 projects) a list of
    ``Work`` tuples costs ~110 MB more."""

    NO_SERIAL = Listing.NO_SERIAL

    def __init__(self, listing):
        if isinstance(listing, Listing):  # its columns, not copies of them
            names, serials = listing.names, listing.serials
        else:
            names = list(listing)
            serials = array("q", (s if isinstance(s, int) else self.NO_SERIAL
                                  for s in listing.values()))
        keys: list[str | None] = [
            held_key(name) if model.is_valid_project_name(name) else None for name in names]
        order = _key_order(keys)
        self.keys: list[str] = [keys[i] for i in order]
        del keys
        self.names = [None if names[i] is key else names[i]
                      for i, key in zip(order, self.keys)]
        self.serials = array("q", (serials[i] for i in order))
        self.retries: set[str] = set()  # keys pending from an earlier pass

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Work]:
        for key, name, serial in zip(self.keys, self.names, self.serials):
            yield Work(key, name or key, None if serial == self.NO_SERIAL else serial,
                       retry=key in self.retries)

    def __contains__(self, key: str) -> bool:
        at = bisect_left(self.keys, key)
        return at < len(self.keys) and self.keys[at] == key


def _key_order(keys: list[str | None]) -> array:
    """The positions of the keys that are not None, in key order. Sorted a bucket (the
    keys' first two letters) at a time: at PyPI's size the positions as Python ints,
    all at once, are ~25 MB more at the import's memory peak."""
    buckets: dict[str, array] = {}
    for at, key in enumerate(keys):
        if key is not None:
            bucket = buckets.get(key[:2])
            if bucket is None:
                bucket = buckets[key[:2]] = array("q")
            bucket.append(at)
    order = array("q")
    for prefix in sorted(buckets):  # a shorter key's prefix sorts before its longer ones
        order.extend(sorted(buckets.pop(prefix), key=keys.__getitem__))
    return order


def group_changelog(rows: list[list]) -> dict[str, Work]:
    """Changelog rows -> one :class:`Work` per project, with its highest serial.
    Names that are not projects (``user:...``, empty) are skipped."""
    works: dict[str, Work] = {}
    versions: dict[str, set[str]] = {}
    yanks: dict[str, set[str]] = {}
    uploaded: dict[str, int] = {}
    for row in rows:
        name, version, action, serial = row[0], row[1], row[3], row[4]
        if not name or name.startswith("user:") or not model.is_valid_project_name(name):
            continue
        key = model.normalize(name)
        if isinstance(version, str) and version:
            versions.setdefault(key, set()).add(version)
            if action in ("yank release", "unyank release"):
                yanks.setdefault(key, set()).add(version)
        if action in ("create", "new release") or (
                isinstance(action, str) and action.startswith("add ") and " file " in action):
            uploaded[key] = max(serial, uploaded.get(key, serial))
        current = works.get(key)
        if current is None or serial >= (current.serial or 0):
            # Warehouse's "remove project"; before 2018, "remove" without a version.
            removed = action == "remove project" or (action == "remove" and version is None)
            works[key] = Work(key, name, serial, removed)
    for key, named in versions.items():
        works[key] = works[key]._replace(versions=frozenset(named),
                                         yanks=frozenset(yanks.get(key, ())))
    for key, serial in uploaded.items():
        works[key] = works[key]._replace(uploaded=serial)
    return works


def replay_from(baseline: int | None, listing: Mapping[str, int | None]) -> int | None:
    """Where a full import leaves the checkpoint: ``baseline`` (PyPI's serial, read
    before listing), or the listing's newest serial if that is older. PyPI keeps the
    XML-RPC listing cached for up to an hour: a listing older than ``baseline`` says
    nothing of the changes in between, which the next pass then reads from the
    changelog (more replay, never a change skipped)."""
    newest = listing.newest_serial() if isinstance(listing, Listing) else max(
        (s for s in listing.values() if isinstance(s, int)), default=None)
    if baseline is None or newest is None:
        return baseline
    return min(baseline, newest)


def pending_work(key: str, wanted, unlisted: bool = False) -> Work:
    """The work a pending entry of the checkpoint stands for: the serial wanted, or
    ``{"removed": serial}`` for a removal from the changelog held back. A pending
    project the /simple/ index no longer lists (``unlisted``: the index has no
    removal rows) may be gone, which only a 404 asked without a serial says; any other
    is asked with its serial, so that a stale copy is not taken for it."""
    if isinstance(wanted, dict):
        return Work(key, key, wanted.get("removed"), removed=True, retry=True)
    return Work(key, key, None if unlisted else wanted, retry=True)


def stray_work(row: dict, pending: dict | None) -> Work:
    """The work of a stored project a listing lacks (a row of the ``all_projects``
    view), to ask about by name: as its pending entry says, if it has one."""
    key, name = row["id"], row["value"][0] or row["id"]
    if pending and key in pending:
        return pending_work(key, pending[key], unlisted=True)._replace(name=name)
    return Work(key, name, None)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# Tombstones of pending projects not stored read at once (see _stored_copies).
TOMBSTONE_READS = 8
# Seconds between two askings about the stored quarantined projects, by name, when
# following the Simple index (their removal shows nowhere else).
QUARANTINE_RECHECK = 3600.0
# Seconds between two askings whether the XML-RPC changelog answers again, once a
# pass fell back to the Simple index (a proxy's 404 for a while must not move a
# daemon to the heavier index for the rest of its life).
XMLRPC_RECHECK = 3600.0

# Parallel requests to PyPI a pass may make (the command's and the daemon's rule too).
MAX_CONCURRENCY = 100


class XmlRpcImporter:
    """Imports PyPI into a CouchDB database and keeps it current (the 2011 name, kept:
    the changelog still comes over XML-RPC; metadata comes from the JSON API unless
    ``source="xmlrpc"``)."""

    def __init__(self, db: Database, pypi: PyPI, *, status: SyncStatus | None = None,
                 concurrency: int = 10, batch_size: int = 100, source: str = "json",
                 changes: str = "xmlrpc", max_removals: int | None = None,
                 confirm_removals: bool = False, guard: bool = False,
                 max_pending: int = MAX_PENDING, writers: int = WRITERS,
                 trace: Trace | None = None,
                 progress: Callable[[SyncStatus], None] | None = None):
        if source not in ("json", "xmlrpc"):
            raise ValueError("source is 'json' or 'xmlrpc'")
        # (0 fetchers: the pass would wait for ever on its first queue)
        if type(concurrency) is not int or not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency is a number of parallel requests from 1 to "
                             f"{MAX_CONCURRENCY}, not {concurrency!r}")
        if changes not in ("xmlrpc", "simple"):
            raise ValueError("changes is 'xmlrpc' or 'simple'")
        if max_removals is not None and max_removals < 0:
            raise ValueError("max_removals is a number of projects (0 or more)")
        check_database_name(db.name)  # (the API's db= too: not _users or _replicator)
        self.db = db
        self.store = store.Store(db)
        self.pypi = pypi
        self.status = status or SyncStatus(pypi_url=pypi.display_url,
                                           couch_url=db.display_url, database=db.name)
        self.status.changes_source = changes
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.source = source
        self.max_removals = max_removals
        self.confirm_removals = confirm_removals
        self.guard = guard
        self.max_pending = max_pending
        self.writers = writers
        self.trace = trace or OFF
        self.progress = progress or (lambda status: None)
        self.checkpoint = Checkpoint(db, pypi.display_url, self.status)
        self.quarantine_asked_at: float | None = None  # (monotonic) see :meth:`sweep`
        self.fell_back_at: float | None = None  # (monotonic) see :meth:`_xmlrpc_again`

    async def load_checkpoint(self) -> dict | None:
        return await self.checkpoint.load()

    async def save_checkpoint(self, serial: int, pending: dict[str, int | None]
                              ) -> tuple[int, dict[str, int | None]]:
        """Save; returns what was saved (merged with another writer's checkpoint)."""
        return await self.checkpoint.save(serial, pending)

    # -- passes ------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Create the database and install the design document (and, with ``guard``,
        the write guard) if needed; bring documents an older version stored up to
        date (none in a database created here: its view query is not asked)."""
        self.status.phase = "preparing"  # (views may be built: an hour at PyPI's size)
        created = await self.db.ensure()
        if not created:
            # Known as synced from the start, while a new version's views are built (an
            # hour or more at PyPI's size): /health judges the checkpoint's age meanwhile,
            # not "not synced yet" at once.
            await self.load_checkpoint()
        await couchapp.push(self.db)
        if self.guard:
            await couchapp.push_guard(self.db)
        if not created:
            await upgrade.add_requirements(self.db)

    async def fetch_listing(self) -> tuple[int | None, Mapping[str, int | None]]:
        """``(PyPI's serial, {name: serial} of every project it lists)``, the serial
        asked for first (reference §5)."""
        if self.status.changes_source == "xmlrpc":
            try:
                baseline = await self.pypi.changelog_last_serial()  # before listing: §5
                return baseline, await self.pypi.list_packages_with_serial()
            except MethodGone as gone:
                self._fall_back_to_simple(gone)
        baseline, listing = await self.pypi.simple_index()
        if baseline is None:  # no serial header: the newest project's serial
            baseline = listing.newest_serial()
        if baseline is None:  # nothing to follow changes by, nor to checkpoint
            raise PyPIError("the /simple/ index gives no serials (X-PyPI-Last-Serial, "
                            "_last-serial): only an index that does can be followed",
                            self.pypi.display_url + "simple/")
        return baseline, listing

    async def full_import(self, listing: defer.Deferred | None = None) -> Summary:
        """Import every project PyPI lists, then set the checkpoint (resumable).
        ``listing`` is :meth:`fetch_listing` already under way, if it is."""
        started = time.monotonic()
        summary = Summary(kind="full import")
        self.status.phase = "full import"
        try:
            checkpoint = await self.load_checkpoint()
            if checkpoint is None:
                # (a database deleted under the daemon: the serial it had synced was the
                # old one's; /health and the background walks wait for this import)
                self.status.our_serial = None
                await self.checkpoint.mark_import()
        except BaseException:
            _drop(listing)
            raise
        baseline, listing = await (listing if listing is not None else self.fetch_listing())
        self.trace.mark("listed")
        pending = dict((checkpoint or {}).get("pending") or {})
        if self._is_stale(baseline, checkpoint, summary):
            return self._finish(summary, checkpoint["serial"], pending, started)
        self.status.note_serials(pypi_serial=baseline)
        cursor = replay_from(baseline, listing)
        works = WorkList(listing)
        works.retries = set(pending)  # (the versions their rows named: not known)
        del listing
        self.trace.mark("works ready")
        self.status.import_total, self.status.import_done = len(works), 0
        had_documents = await self.store.has_documents()
        if not works and not had_documents and baseline:
            # Nothing listed, though PyPI's journal has rows (a proxy answering {}): not
            # taken for an empty PyPI, which would leave this mirror without every
            # project that never changes again. No checkpoint: the next pass imports.
            reason = (f"PyPI's listing named no project, though its serial is {baseline}: "
                      "not taken as the truth; the next pass imports again")
            log.warn("{reason}", reason=reason)
            self.status.note_sync_error(reason, "listing")
            summary.incomplete = reason  # (--fullimport exits 3; /health says it in time)
            return self._finish(summary, None, pending, started)
        removals: list = []
        # Into a database that held no project, there is no stored copy to read first
        # (a copy written meanwhile by another writer is still found when writing).
        failures = await self.sync(works, summary, removals, stored=had_documents)
        listed = works  # what the listing named (by key)
        # A stored project the listing lacks may have been removed, e.g. between an
        # interrupted import and this one: ask PyPI about it by name (reference §5).
        # Into an empty database there is nothing to ask about (and no view to build).
        trusted = True
        if had_documents:
            trusted = await self.sweep(listed, summary, failures, removals, pending)
        await self.settle_removals(removals, summary, failures)
        # Pending before this import and not listed: asked by name next pass (their old
        # serial could make PyPI's 404 for a removed one look stale for ever).
        failures.update({k: s if isinstance(s, dict) else None
                         for k, s in pending.items() if k not in listed})
        if failures.overflow:
            # Not all failures are kept: the checkpoint (or its absence) stays.
            self._overflowed(summary, failures, (checkpoint or {}).get("serial"))
            return self._finish(summary, (checkpoint or {}).get("serial"), failures, started)
        if trusted:
            await self.save_checkpoint(cursor, failures)
            self.trace.mark("checkpoint saved")
            return self._finish(summary, cursor, failures, started)
        # The listing hid projects: the ones it hid may have changed unseen, so the
        # checkpoint does not move (with none yet, the next pass imports again).
        if checkpoint is not None:
            await self.save_checkpoint(checkpoint["serial"], failures)
        return self._finish(summary, (checkpoint or {}).get("serial"), failures, started)

    async def update(self) -> Summary:
        """One incremental pass: everything PyPI changed since the checkpoint.
        With no checkpoint yet, this is a full import (into a database prepared again:
        deleted under a running daemon, it is created anew, design document and all)."""
        checkpoint = await self.load_checkpoint()
        if checkpoint is None:
            await self.prepare()
            return await self.full_import()
        started = time.monotonic()
        summary = Summary(kind="update")
        self.status.phase = "incremental"
        self.status.pass_total = self.status.pass_done = 0
        await self._xmlrpc_again()
        serial = checkpoint["serial"]
        pending: dict = dict(checkpoint.get("pending") or {})
        while True:
            removals: list = []
            failures = Pending(self.max_pending)
            if self.status.changes_source == "xmlrpc":
                try:
                    rows, new_serial, more = await self._changelog_page(serial, summary)
                except MethodGone as gone:
                    self._fall_back_to_simple(gone)
                    continue
                works, listed = group_changelog(rows), None
            else:
                works, new_serial, listed = await self._simple_changes(
                    serial, summary, failures, removals, pending)
                more = False
            summary.changed += len(works)  # (before the pending ones join them)
            for key, wanted in pending.items():
                if key not in works:
                    works[key] = pending_work(
                        key, wanted, unlisted=listed is not None and key not in listed)
                else:  # (named again: which versions the rows then named is lost)
                    works[key] = works[key]._replace(retry=True)
            self.status.pass_total += len(works)
            failures.update(await self.sync(sorted(works.values()), summary, removals))
            await self.settle_removals(removals, summary, failures)
            if failures.overflow:
                # Not all failures are kept: the checkpoint stays, and the next pass
                # reads the changelog (or the index) from the same serial again.
                self._overflowed(summary, failures, serial)
                pending = failures
                break
            # (merged with another writer's: going on from where both are)
            serial, pending = await self.save_checkpoint(new_serial, failures)
            if not more:
                break
            await self.pypi.sleep(1.0)  # PyPI asks for about 1 s between XML-RPC calls
        return self._finish(summary, serial, pending, started)

    async def _changelog_page(self, serial: int, summary: Summary
                              ) -> tuple[list, int, bool]:
        last = await self.pypi.changelog_last_serial()
        # PyPI's serials only grow: a checkpoint ahead of them is another index's, or
        # was written by someone else (nothing would ever be read after it).
        if self._is_stale(last, {"serial": serial}, summary):
            return [], serial, False
        self.status.note_serials(pypi_serial=last)
        if last <= serial:
            return [], serial, False
        rows = await self.pypi.changelog_since_serial(serial)
        if not rows:
            return [], serial, False
        # PyPI caps an answer (50,000 rows): page on until its last serial is reached.
        return rows, rows[-1][4], rows[-1][4] < last

    async def _simple_changes(self, serial: int, summary: Summary, failures: dict,
                              removals: list, pending: dict
                              ) -> tuple[dict[str, Work], int, set | None]:
        """``(work, the serial to go on from, the keys the index lists)``; nothing, the
        same serial and None from a stale index. The pending projects the index lacks
        are asked about by the sweep (see :meth:`sweep`)."""
        current, index = await self.pypi.simple_index()
        if self._is_stale(current, {"serial": serial}, summary):
            return {}, serial, None
        self.status.note_serials(pypi_serial=current)
        works = {}
        for name, last in index.items():
            if last is not None and last > serial and model.is_valid_project_name(name):
                key = model.normalize(name)
                works[key] = Work(key, name, last)
        listed = {held_key(name) for name in index}
        del index
        # The index has no removal rows: ask about the stored projects it lacks.
        if not await self.sweep(listed, summary, failures, removals, pending):
            return works, serial, listed  # what it hid may have changed: stay before it
        return works, max(serial, current or serial), listed

    def _is_stale(self, listed_serial: int | None, checkpoint: dict | None,
                  summary: Summary) -> bool:
        """Whether a listing is older than the checkpoint (a stale copy): then nothing
        is written or removed from it."""
        summary.stale = stale_listing(listed_serial, (checkpoint or {}).get("serial"),
                                      self.pypi.display_url)
        if summary.stale is None:
            return False
        log.warn("{why}", why=summary.stale)
        self.status.note_sync_error(summary.stale, "stale")
        return True

    async def sweep(self, listed: Container[str], summary: Summary, failures: dict,
                    removals: list, pending: dict | None = None) -> bool:
        """Ask PyPI by name about every stored project missing from ``listed`` (PyPI's
        listing): those it says are gone join ``removals``, the others are refreshed.
        One of them pending from an earlier pass is asked about as its entry there
        says (a removal the changelog announced stays one), and taken out of
        ``pending``: asked once in a pass, counted once.

        A listing that lacks more stored projects than a pass may remove is not
        believed (cut short by a proxy, a broken CDN node, a bug upstream): nobody is
        asked, the removals are held (see :meth:`hold_removals`), and False is
        returned. False too when a project it lacks turns out to be alive (or cannot
        be asked about): the listing is incomplete, and what else it hid (a project
        new since the checkpoint, say) is unknown, so the checkpoint must not move
        past it."""
        total = await couchapp.count(self.db, "name", timeout=3600)
        limit = removal_limit(total, self.max_removals)
        strays: list[Work] = []
        quarantined: set[str] = set()
        missing = 0
        # PyPI's listings leave quarantined projects out: not missing, but asked about
        # (in a full import, and hourly after), as a removal (malware's usual end)
        # shows nowhere else without the changelog; a cleared quarantine has a serial.
        now = time.monotonic()
        ask_quarantined = self.status.phase == "full import" or \
            self.quarantine_asked_at is None or \
            now - self.quarantine_asked_at >= QUARANTINE_RECHECK
        async for row in couchapp.all_projects(self.db):
            if row["id"] in listed:
                continue
            if row["value"][2] == "quarantined":
                if ask_quarantined:
                    quarantined.add(row["id"])
                    strays.append(stray_work(row, pending))
                continue
            missing += 1
            if missing <= limit or self.confirm_removals:  # bounded: at most the limit
                strays.append(stray_work(row, pending))
        if missing > limit and not self.confirm_removals:
            self.hold_removals(summary, missing, (
                f"the listing from {self.pypi.display_url} lacks {missing} of the "
                f"{total} stored projects, more than the {limit} one pass may remove: "
                "removed nothing and asked about none of them; this clears when the "
                f"listing recovers, or {CONFIRM_HINT}"))
            return False
        if not strays:
            return True
        for work in strays:
            (pending or {}).pop(work.key, None)
        if len(strays) > len(quarantined):
            log.info("{count} stored projects are not in PyPI's listing: asking about "
                     "each by name", count=len(strays) - len(quarantined))
        if self.status.phase == "full import":  # (asked about as part of it)
            self.status.import_total += len(strays)
        else:
            self.status.pass_total += len(strays)
        already = len(removals)
        failed = await self.sync(strays, summary, removals)
        failures.update(failed)
        if ask_quarantined:
            self.quarantine_asked_at = now
        gone = {work.key for work, _ in removals[already:]}
        alive = [w.key for w in strays if w.key not in gone and w.key not in quarantined]
        if alive:  # (one quarantined since it was stored: left out of the index too)
            stored = await self.store.project_documents(alive)
            alive = [key for key in alive
                     if (stored.get(key) or {}).get("status") != "quarantined"]
        if alive:
            reason = (f"the listing from {self.pypi.display_url} lacks {len(alive)} "
                      f"projects PyPI still has (or did not answer for), {alive[0]} first: "
                      "it is incomplete, so the checkpoint stays until a listing is whole")
            log.warn("{reason}", reason=reason)
            self.status.note_sync_error(reason, "listing")
            summary.incomplete = reason
            return False
        return True

    async def settle_removals(self, removals: list, summary: Summary,
                              failures: dict) -> None:
        """Remove the projects PyPI said are gone in this pass, unless they are more
        than a pass may remove: then remove none, keep them pending (asked again on
        every pass) and say why."""
        if not removals:
            return
        wanted = len(removals) + summary.deleted
        limit = removal_limit(0, self.max_removals)
        if self.max_removals is None and wanted > limit:
            limit = removal_limit(await couchapp.count(self.db, "name", timeout=3600))
        if wanted > limit and not self.confirm_removals:
            self.hold_removals(summary, len(removals), (
                f"PyPI says {len(removals)} projects are gone, more than the {limit} one "
                f"pass may remove: removed nothing, kept them pending; {CONFIRM_HINT}"))
            for work, _ in removals:
                # The changelog's word is kept as such (asked again, a CDN's stale copy
                # could hide it); a 404 from PyPI is asked for again without a serial.
                failures[work.key] = {"removed": work.serial} if work.removed else None
                self._advance()
            return
        if wanted > limit:
            log.warn("removing {count} projects PyPI says are gone (confirmed)",
                     count=len(removals))
        for chunk in _chunks(removals, self.batch_size):
            await self._write([(work, old, ProjectAnswer(work.key, "gone", serial=work.serial))
                               for work, old in chunk], failures, summary)

    def hold_removals(self, summary: Summary, count: int, reason: str) -> None:
        summary.held += count
        summary.held_reason = reason
        self.status.removals_held = reason
        log.warn("{reason}", reason=reason)

    def _fall_back_to_simple(self, gone: MethodGone) -> None:
        message = ("PyPI no longer serves the XML-RPC changelog or listing "
                   f"({gone.text[:80]}); following the /simple/ index serials instead")
        log.warn("{message}", message=message)
        self.status.warn_once(message)
        self.status.changes_source = "simple"
        self.fell_back_at = time.monotonic()

    async def _xmlrpc_again(self) -> None:
        """Back to the changelog, an hour after falling back, if it answers again."""
        if self.fell_back_at is None or \
                time.monotonic() - self.fell_back_at < XMLRPC_RECHECK:
            return
        if not await self.pypi.xmlrpc_answers():
            self.fell_back_at = time.monotonic()
            return
        log.info("PyPI's XML-RPC changelog answers again: following it")
        self.status.changes_source, self.fell_back_at = "xmlrpc", None

    def _overflowed(self, summary: Summary, failures: Pending, serial: int | None) -> None:
        summary.overflow = (
            f"{failures.failed} projects failed, more than the {failures.limit} the "
            "checkpoint keeps to retry: it stays " + (
                f"at serial {serial}" if serial is not None else "unwritten") +
            ", and the next pass asks for all of them again")
        log.warn("{why}", why=summary.overflow)
        self.status.note_sync_error(summary.overflow, "overflow")
        self.status.pending = failures.failed

    def _finish(self, summary: Summary, serial, pending: dict, started: float) -> Summary:
        if not summary.stale:  # a pass that judged a listing, or PyPI's answers
            self.status.removals_held = summary.held_reason
        summary.serial = serial
        summary.pending = len(pending) + getattr(pending, "overflow", 0)
        summary.duration = time.monotonic() - started
        self.status.last_pass_at = time.time()
        self.status.phase = "idle"
        return summary

    # -- the pipeline ----------------------------------------------------------------

    async def sync(self, works: Iterable[Work], summary: Summary,
                   removals: list | None = None, stored: bool = True) -> Pending:
        """Bring every project of ``works`` up to date. Returns the ones that failed
        (``{normalized name: serial}``), to be retried on the next pass.

        Stored projects PyPI says are gone are appended to ``removals`` as
        ``(work, stored project)``, for :meth:`settle_removals` to remove once the
        whole pass is known (without ``removals``, they are settled here). With
        ``stored`` false (the database held no project when the pass began), the
        stored copies are not read."""
        failures = Pending(self.max_pending)
        settle_here = removals is None
        removals = [] if removals is None else removals
        to_fetch = BoundedQueue(self.concurrency * 2)
        to_write = BoundedQueue(self.batch_size * 2)
        fetchers = self.concurrency

        def read_ahead(chunks):
            chunk = next(chunks, None)
            if chunk is None:
                return None
            if not stored:
                return chunk, defer.succeed(({}, set()))
            return chunk, defer.ensureDeferred(self._stored_copies(chunk))

        async def read():
            # The next chunk's stored copies are read while this one's are being
            # fetched: the fetchers never wait for CouchDB to answer a read.
            chunks = _chunks(works, self.batch_size)
            ahead = read_ahead(chunks)
            try:
                while ahead is not None:
                    chunk, reading = ahead
                    with trace.timed("read"):
                        copies, removed_since = await reading
                    ahead = read_ahead(chunks)
                    await feed(chunk, copies, removed_since)
            finally:  # cancelled, or a read failed: the read ahead is not wanted
                if ahead is not None:
                    ahead[1].addErrback(lambda failure: None)
                    ahead[1].cancel()
            for _ in range(fetchers):
                await to_fetch.put(None)

        async def feed(chunk, copies, removed_since):
            for work in chunk:
                trace.begin(work.key)
                trace.event(work.key, "read")
                old = copies.get(work.key)
                # (a yank of a release without files shows in no project answer: work
                # naming one, or a retry, which cannot say whether it did, is done)
                if (old is not None and work.serial is not None
                        and (old.get("last_serial") or -1) >= work.serial
                        and not store.needs_repair(old) and not work.yanks
                        and not work.retry):
                    summary.skipped += 1
                    self._advance()
                    continue
                if old is None and work.key in removed_since:
                    summary.skipped += 1
                    self._advance()
                    continue
                trace.mark("first fetch")
                with trace.timed("read", "blocked"):
                    await to_fetch.put((work, old))

        async def fetch():
            while True:
                with trace.timed("fetch", "starved"):
                    item = await to_fetch.get()
                if item is None:
                    break
                work, old = item
                trace.event(work.key, "fetching")
                try:
                    if work.removed:  # the changelog's word: no need to ask
                        answer = ProjectAnswer(work.key, "gone", serial=work.serial)
                    else:
                        with trace.timed("fetch"):
                            answer = await self._ask_pypi(work)
                            answer.own = await self._own_answers(work, answer, old)
                except PyPIError as error:
                    kind = "stale" if isinstance(error, StaleAnswer) else "pypi"
                    self._failed(work, str(error), failures, summary, kind)
                    continue
                except (defer.CancelledError, CouchError):
                    raise  # CouchDB's trouble (reading stored releases) is the pass's
                except Exception as error:  # a bug must cost one project, not the pass
                    log.failure("{name}: unexpected error", name=work.key)
                    self._failed(work, f"unexpected {type(error).__name__}: {error}",
                                 failures, summary, "bug")
                    continue
                if answer.kind == "gone" and old is not None:
                    # Counted before any is removed; only what a removal needs is kept.
                    # (So no mark: a removal cut short between the release tombstones
                    # and the project's, then undone by PyPI with the same digests,
                    # would leave releases unwritten. PyPI never brings a removed
                    # project back as it was.)
                    removals.append((work, {k: old.get(k) for k in ("_id", "_rev",
                                                                    "last_serial")}))
                    continue
                trace.event(work.key, "fetched")
                trace.mark("first answer")
                with trace.timed("fetch", "blocked"):
                    await to_write.put((work, old, answer))
                trace.event(work.key, "queued")

        async def fetch_all():
            await run_together(*(fetch() for _ in range(fetchers)))
            for _ in range(self.writers):
                await to_write.put(None)

        async def write():
            # Two writers: while CouchDB takes one's batch, the other prepares and sends
            # the next (more were measured: no gain, bench/RESULTS.md); a batch takes
            # what is ready, never waiting for a slow project.
            done = False
            while not done:
                batch = []
                while len(batch) < self.batch_size and (not batch or len(to_write)):
                    with trace.timed("write", "starved"):
                        item = await to_write.get()
                    if item is None:
                        done = True
                        break
                    trace.event(item[0].key, "writing")
                    batch.append(item)
                if batch:
                    with trace.timed("write"):
                        await self._write(batch, failures, summary)

        trace = self.trace
        await run_together(read(), fetch_all(), *(write() for _ in range(self.writers)))
        if settle_here:
            await self.settle_removals(removals, summary, failures)
        return failures

    def _advance(self) -> None:
        if self.status.phase == "full import":
            self.status.import_done += 1
        else:
            self.status.pass_done += 1
        self.progress(self.status)

    def _failed(self, work: Work, cause: str, failures: dict, summary: Summary,
                kind: str) -> None:
        log.warn("{name}: {cause}; will retry", name=work.key, cause=cause)
        # A removal the changelog announced stays one (see :func:`pending_work`).
        failures[work.key] = {"removed": work.serial} if work.removed else work.serial
        summary.note_error(f"{work.key}: {cause}")
        self.status.note_sync_error(f"{work.key}: {cause}", kind)
        self._advance()

    async def _stored_copies(self, chunk: list[Work]) -> tuple[dict[str, dict], set[str]]:
        """The stored documents of ``chunk``'s projects, and the keys of its pending
        projects not stored that were removed at or after the serial their retry wants
        (by another writer on this database, whose checkpoint ours merged: the
        changelog row of the removal is behind us). Asked, PyPI's 404 for a serial
        wanted is taken for a CDN's stale copy: it would be asked for ever."""
        copies = await self.store.project_documents([w.key for w in chunk])
        retried = [w for w in chunk if w.key not in copies and w.retry and not w.removed
                   and w.serial is not None]
        # (a few at a time: after an outage, thousands may be pending)
        slots = defer.DeferredSemaphore(TOMBSTONE_READS)
        try:
            serials = await defer.gatherResults(
                [slots.run(lambda key=w.key: defer.ensureDeferred(
                    self.store.tombstone_serial(key))) for w in retried], consumeErrors=True)
        except defer.FirstError as error:  # (CouchDB's trouble, as itself: the pass's)
            error.subFailure.raiseException()
        return copies, {w.key for w, removed_at in zip(retried, serials)
                        if removed_at is not None and removed_at >= w.serial}

    def _superseded(self, work: Work, summary: Summary) -> None:
        log.info("{name}: the stored copy is as new or newer; ours is dropped",
                 name=work.key)
        summary.skipped += 1
        self._advance()

    async def _ask_pypi(self, work: Work) -> ProjectAnswer:
        if self.source == "xmlrpc":
            try:
                return await self.pypi.legacy_project(work.name, work.serial)
            except MethodGone as gone:
                message = (f"{self.pypi.display_url} no longer serves XML-RPC release data "
                           f"({gone.text[:60]}); using the JSON API")
                log.warn("{message}", message=message)
                self.status.warn_once(message)
                self.source = "json"
        return await self.pypi.project(work.name, work.serial)

    async def _own_answers(self, work: Work, answer: ProjectAnswer, old: dict | None
                           ) -> dict[str, dict]:
        """PyPI's per-version answers for the releases without files a change may have
        yanked or unyanked: only a release's own metadata says that (the project's
        answer lists no files to flag), and the backfill asks for it once. The
        releases the changelog names, but the latest (the project's answer is its);
        for a retried project, whose changelog rows are past, every such release. An
        answer older than the project's, or a 404 for a release the project lists, is
        a CDN's stale copy: asked again, then the project is retried.

        Changes read from the Simple index name no version: see :meth:`_unseen_yanks`
        (a role change asks, and rewrites nothing)."""
        payload = answer.payload if answer.kind == "project" else None
        if not isinstance(payload, dict) or self.source != "json" or not isinstance(
                payload.get("releases"), dict) or not isinstance(payload.get("info"), dict):
            return {}  # (a malformed answer is the model's to refuse)
        releases, latest = payload["releases"], payload["info"].get("version")
        fileless = sorted(v for v in releases if releases[v] == [] and v != latest)
        unnamed = not work.retry and self.status.changes_source != "xmlrpc"
        if unnamed and fileless and old is not None:
            return await self._unseen_yanks(work, answer, old, fileless)
        named = releases.keys() if work.retry else work.versions
        found = {}
        for version in (v for v in fileless if v in named):
            own = await self.pypi.release(work.name, version, min_serial=answer.serial)
            if own is not None:
                found[version] = own
        return found

    async def _unseen_yanks(self, work: Work, answer: ProjectAnswer, old: dict,
                            fileless: list[str]) -> dict[str, dict]:
        """The per-version answers of ``fileless`` releases of a stored project whose
        yanked flags or Requires-Python may have changed unseen (see
        :meth:`_own_answers`): those stored with their own metadata whose flags differ,
        when the project's answer shows no change of its releases; and, whatever it
        shows, those whose stored flags came from files they no longer have, or from
        their time as the latest (a yank of the latest shows only as another release
        becoming the latest)."""
        unchanged = not model.answer_changes_releases(answer.payload,
                                                      old.get("release_digests"))
        ids = [store.release_id(work.key, version) for version in fileless]
        # (only their flags, files and whether they have their own metadata are looked
        # at: a big answer's READMEs are dropped as it is read)
        stored = await self.store.db.bulk_get(ids, trim=_info_kept_empty)
        found = {}
        for version, docid in zip(fileless, ids):
            doc = stored.get(docid)
            if doc is None:
                continue  # (new: the backfill's to ask)
            borrowed = bool(doc.get("files")) or \
                doc.get("info_source") == model.INFO_FROM_LATEST
            if not borrowed and not (unchanged and "info" in doc):
                continue  # (nothing says it changed, or the backfill's to ask)
            own = await self.pypi.release(work.name, version, min_serial=answer.serial)
            if own is not None and (borrowed or model.own_flags_differ(doc, own)):
                found[version] = own
        return found

    async def _plan(self, work: Work, old: dict | None, answer: ProjectAnswer
                    ) -> tuple[list[dict], int] | None:
        """``(documents to write, releases written)`` for one project, or None when
        the stored copy is newer than the answer. Raises :class:`model.BadPayload` for
        a malformed answer."""
        serial = work.serial if answer.kind == "gone" else answer.serial
        if old is not None and store.newer(old.get("last_serial"), serial):
            return None
        if (answer.kind == "empty" and old is not None and not old.get("versions")
                and old.get("last_serial") == serial and old.get("status") == answer.status):
            return None  # e.g. a quarantined project, asked about again: nothing new
        old_digests = (old or {}).get("release_digests") or {}
        if answer.kind == "gone":
            deletions = [store.tombstone(i, serial) for i in await self.store.release_ids(work.key)]
            # Planned even when this pass read no copy: another writer (a daemon and a
            # cron --update on one database) may have stored one since. (Dropped if not.)
            project = store.tombstone(work.key, serial)
            if old is not None:
                project["_rev"] = old["_rev"]
            return deletions + [project], 0
        if answer.kind == "empty":  # (named as PyPI spells it now; a retry knows the key)
            spelled = not work.retry or work.name != work.key
            name = work.name if spelled else (old or {}).get("name") or work.name
            project = model.empty_project_document(name, answer.serial, answer.status)
            releases = []
        else:
            # The JSON API cannot say archived (PEP 792): the status sweep's word stays,
            # but for archived in a project created or uploaded to since (PyPI takes no
            # upload to an archived project). Since: after the serial the sweep read
            # it at (an archive right after an upload, the sync behind, stays).
            kept = (old or {}).get("status")
            swept_at = (old or {}).get(store.STATUS_SERIAL)
            archived_since = isinstance(swept_at, int) and isinstance(work.uploaded, int) \
                and swept_at >= work.uploaded
            if work.uploaded is not None and kept == "archived" and not archived_since:
                kept = None
            project, releases = model.project_documents(
                answer.payload, status=kept if kept in model.SWEPT_STATUSES else "active",
                serial=answer.serial)
            if kept is not None:
                store.carry_status_serial(project, old)
            if project["_id"] != work.key:
                raise model.BadPayload(f"asked for {work.key}, PyPI answered "
                                       f"{project['_id']}")
        new_digests = project["release_digests"]  # computed once, by the model
        releases, refreshed = _with_own_answers(
            work.key, releases, answer.own,
            lambda message: self.status.note_sync_error(message, "payload"))
        changed = [r for r in releases if r["version"] in refreshed or
                   model.release_needs_write(new_digests[r["version"]],
                                             old_digests.get(r["version"]))]
        project["release_digests"] = {
            version: model.merged_digests(digests, old_digests.get(version))
            for version, digests in new_digests.items()}
        new_versions = {r["version"] for r in releases}
        gone_ids = [store.release_id(work.key, v) for v in old_digests if v not in new_versions]
        # A release the changelog names, neither PyPI's now nor in the stored record,
        # may be stored all the same: written by a pass cut short before its project
        # (which never listed it), then removed on PyPI. (Dropped if not stored.)
        gone_ids += [store.release_id(work.key, v) for v in sorted(work.versions)
                     if v not in new_versions and v not in old_digests]
        if work.retry and answer.kind != "empty":  # (the versions named then: lost)
            keep = set(gone_ids) | {store.release_id(work.key, v) for v in new_versions}
            gone_ids += [i for i in await self.store.release_ids(work.key) if i not in keep]
        if answer.kind == "empty" and old is not None:
            gone_ids = await self.store.release_ids(work.key)
        if old is not None:
            project["_rev"] = old["_rev"]
            store.keep_attachments(project, old)
        deletions = [store.tombstone(i, answer.serial) for i in gone_ids]
        return changed + deletions + [project], len(changed)

    async def _write(self, batch: list, failures: dict, summary: Summary) -> None:
        plans = []
        lookup: list[str] = []
        for work, old, answer in batch:
            try:
                with self.trace.part("write: shape documents"):
                    planned = await self._plan(work, old, answer)
            except model.BadPayload as error:
                self._failed(work, f"malformed answer from PyPI: {error}", failures, summary,
                             "payload")
                continue
            except (defer.CancelledError, CouchError):
                raise  # CouchDB's trouble is the pass's, not this project's
            except Exception as error:  # a bug must cost one project, not the pass
                log.failure("{name}: unexpected error", name=work.key)
                self._failed(work, f"unexpected {type(error).__name__}: {error}",
                             failures, summary, "bug")
                continue
            if planned is None:
                self._superseded(work, summary)
                continue
            plans.append((work, old, answer, *planned))
            lookup += _ids_to_check(work.key, planned[0], old)
        # What is stored now (or the tombstone of what was removed) may be newer than
        # these answers: another writer may have been faster.
        with self.trace.part("write: read stored states"):
            states = await self.store.states(lookup)
            states.update(await self.store.states(
                [d["_id"] for work, old, _, docs, _ in plans
                 if old is None and work.key in states
                 for d in docs if d["_id"] not in states]))
        ready = []
        for work, old, answer, plan_docs, releases in plans:
            docs = await self.store.settle(plan_docs, states, old)
            if docs is None:
                self._superseded(work, summary)
            else:
                ready.append((work, old, answer, docs, releases))
        # A stored release about to change is first marked unknown in its project's
        # record: a pass cut short after the releases, before their project, leaves a
        # project whose record would otherwise say the old release is stored, and a
        # change PyPI reverts later (an unyank after a yank) would never be written.
        bases = {plan[0].key: plan[1] for plan in ready}
        with self.trace.part("write: mark changed releases"):
            ready = await self._mark_changed(ready, bases, failures, summary)
        # Releases first, then the project documents of the projects whose releases
        # all landed: a stored project's last_serial always covers its releases.
        with self.trace.part("write: releases"):
            rejected, superseded = await self.store.write(
                [d for plan in ready for d in plan[3] if not store.is_project_doc(d)])
        landed = []
        for work, old, answer, plan_docs, releases in ready:
            ids = {d["_id"] for d in plan_docs}
            problems = [rejected[i] for i in ids if i in rejected]
            if ids & superseded.keys():
                await self._repair(work, plan_docs, rejected, superseded, failures, summary)
            elif problems:
                self._failed(work, f"CouchDB refused a document: {problems[0]}",
                             failures, summary, "couchdb")
            else:
                self.trace.event(work.key, "releases")
                landed.append((work, old, answer, plan_docs, releases))
        with self.trace.part("write: projects"):
            rejected, superseded = await self.store.write(
                [d for plan in landed for d in plan[3] if store.is_project_doc(d)],
                bases={plan[0].key: bases[plan[0].key] for plan in landed},
                keeps_status=_status_from_stored(landed))
        for work, old, answer, plan_docs, releases in landed:
            if work.key in superseded:
                await self._repair(work, plan_docs, rejected, superseded, failures, summary)
                continue
            if work.key in rejected:
                self._failed(work, f"CouchDB refused a document: {rejected[work.key]}",
                             failures, summary, "couchdb")
                continue
            if answer.kind == "gone":
                removed = any(store.is_project_doc(d) for d in plan_docs)
                summary.deleted += removed
                self.status.projects_deleted += removed
            else:
                summary.projects += 1
                summary.releases += releases
                self.status.projects_written += 1
            self.status.documents_written += len(plan_docs)
            self.trace.event(work.key, "written")
            self.trace.mark("first project written")
            self._advance()

    async def _mark_changed(self, ready: list, bases: dict, failures: dict,
                            summary: Summary) -> list:
        """Write, for each stored project whose stored releases ``ready`` changes or
        removes, its stored document with those releases' digests unknown (``None``),
        so that :func:`store.needs_repair` holds until the new project document lands
        (releases removed from a project by a pass cut short, then back on PyPI — a
        quarantine cleared — must be written again). (A whole project's removal keeps
        no digests to mark: see the note at ``removals.append``.) Returns the plans to go on with; ``bases`` and the plans'
        project ``_rev`` follow the marked copies. A plan whose mark is refused waits
        for the next pass."""
        marks = {}
        for work, old, _, docs, _ in ready:
            recorded = (old or {}).get("release_digests") or {}
            changed = {version for d in docs if not store.is_project_doc(d)
                       for version in [model.release_version(d["_id"])]
                       if recorded.get(version) is not None}
            if changed:
                marks[work.key] = model.with_releases_unknown(old, changed)
        if not marks:
            return ready
        rejected, superseded = await self.store.write(list(marks.values()),
                                                      bases=dict(bases), keeps_status=marks)
        going = []
        for plan in ready:
            work, _, _, docs, _ = plan
            mark = marks.get(work.key)
            if mark is None:
                going.append(plan)
            elif work.key in superseded:
                # Newer than the copy the mark repeats, not necessarily than our answer:
                # planned against a copy that is gone, the plan is made again next pass.
                self._failed(work, "another writer stored it meanwhile", failures, summary,
                             "couchdb")
            elif work.key in rejected:
                self._failed(work, f"CouchDB refused a document: {rejected[work.key]}",
                             failures, summary, "couchdb")
            else:
                bases[work.key] = mark
                for doc in docs:
                    if store.is_project_doc(doc):
                        doc["_rev"] = mark["_rev"]
                        store.keep_attachments(doc, mark)
                going.append(plan)
        return going

    async def _repair(self, work: Work, docs: list[dict], rejected: dict, superseded: dict,
                      failures: dict, summary: Summary) -> None:
        """A newer copy was stored while this (older) one was being written. Releases of
        ours that landed anyway are not what the stored project describes: mark their
        digests unknown there (the next sync rewrites them) and fetch it again."""
        ours = [d for d in docs if not store.is_project_doc(d) and not d.get("_deleted")
                and d["_id"] not in rejected and d["_id"] not in superseded]
        for _ in range(CONFLICT_ROUNDS if ours else 0):
            current = await self.db.get_or_none(work.key)
            digests = (current or {}).get("release_digests") or {}
            orphans = [d for d in ours if d["version"] not in digests]
            if orphans:  # releases the newer copy does not have (or no project at all)
                refused, _ = await self.store.write(
                    [store.tombstone(d["_id"], d["last_serial"]) for d in orphans])
                if refused:  # left stored: the next pass plans against them again
                    failures[work.key] = work.serial
                ours = [d for d in ours if d not in orphans]
            if current is None:
                break
            marked = {d["version"] for d in ours if d["version"] in digests
                      and not model.is_recorded(d, digests[d["version"]])}
            if not marked:
                break
            current = model.with_releases_unknown(current, marked)
            results = await self.db.bulk_docs([current])
            if results[0].ok:
                log.warn("{name}: a newer copy was stored meanwhile; {count} releases "
                         "will be fetched again", name=work.key, count=len(marked))
                failures[work.key] = current.get("last_serial")
                break
        else:
            if ours:  # the newer copy kept changing: marked nothing, so ask again
                failures[work.key] = work.serial
        self._superseded(work, summary)


def _status_from_stored(plans: list) -> set[str]:
    """The projects of ``plans`` whose status is their stored copy's: PyPI's JSON API
    said none (a Simple page, or an upload since, says one: that one is written)."""
    return {work.key for work, _, answer, *_ in plans
            if answer.kind == "project" and work.uploaded is None}


def _with_own_answers(key: str, releases: list[dict], own: dict[str, dict],
                      said: Callable[[str], None] = lambda message: None
                      ) -> tuple[list[dict], set[str]]:
    """``releases`` with the own metadata of per-version answers (``own``, by version)
    and the versions that took it. (The project's record keeps their digests as the
    project's answer makes them, as for the backfill's writes.) An answer that is not
    the release's (PyPI matches versions canonically) is left out."""
    if not own:
        return releases, set()
    taken, refreshed = [], set()
    for release in releases:
        payload = own.get(release["version"])
        if payload is not None:
            try:
                info = model.check_release_info(payload, key, release["version"])
                release = model.with_own_info(release, info,
                                              model.release_vulnerabilities(payload))
            except (model.BadPayload, TypeError, ValueError) as error:
                # (the release keeps its stored metadata; the project is written)
                message = (f"{key} {release['version']}: malformed per-version answer "
                           f"({error}); its stored metadata kept")
                log.warn("{message}", message=message)
                said(message)  # (on /status)
            else:
                refreshed.add(release["version"])
        taken.append(release)
    return taken, refreshed


def _info_kept_empty(doc: dict) -> None:
    """A release document's own metadata emptied, its presence kept."""
    if "info" in doc:
        doc["info"] = {}


def _ids_to_check(key: str, docs: list[dict], old: dict | None) -> list[str]:
    """The documents of a plan whose stored state must be read before writing: the
    project, the releases it had (for their revisions) and those to remove. New
    releases of a project that was not stored are checked only if the project turns
    out to be stored (or removed) by now."""
    known = (old or {}).get("release_digests") or {}
    return [key] + [d["_id"] for d in docs if not store.is_project_doc(d)
                    and (d.get("_deleted") or d.get("version") in known)]


async def run_pass(importer: XmlRpcImporter, full: bool = False,
                   conflicts_progress: Callable[[int, int], None] | None = None) -> Summary:
    """Check CouchDB, prepare the database and run one pass (the command, the API).
    An update then settles the conflicting revisions the database holds (no daemon
    may be running beside a cron-driven one to do it); ``conflicts_progress(read,
    total)`` as the changes feed is read, where CouchDB says how long it is. A full
    import (and an update that is one: no checkpoint yet) leaves that to the next
    update or a daemon: reading the whole feed after it added ~14 % to a small import
    on pouchdb-server (1.3 s per 10,000 documents; bench/RESULTS.md)."""
    await importer.db.server.info()
    if not full:
        await importer.prepare()
        summary = await importer.update()
        if summary.kind == "update":
            await _settle_conflicts(importer.db, summary, conflicts_progress)
        return summary
    # PyPI's listing is asked for while the database is prepared: each can take
    # seconds (a listing of 700,000 projects; a design document's views to build).
    listing = defer.ensureDeferred(importer.fetch_listing())
    try:
        await importer.prepare()
    except BaseException:
        _drop(listing)
        raise
    return await importer.full_import(listing)


def _drop(listing: defer.Deferred | None) -> None:
    """Stop a listing under way that will not be used (its failure is no one's)."""
    if listing is not None:
        listing.addErrback(lambda failure: None)
        listing.cancel()


async def _settle_conflicts(db: Database, summary: Summary,
                            progress: Callable[[int, int], None] | None) -> None:
    """Settle what the feed holds after a pass (its time counted in the pass's); what
    fails here is said in the summary: the pass itself is done and its checkpoint
    saved."""
    started = time.monotonic()
    status = SyncStatus()
    try:
        await ConflictResolver(db, status).settle_once(progress)
    except CouchError as error:
        status.conflicts_error = str(error)
    except Exception as error:  # (a bug: the pass's work is still done)
        log.failure("Settling conflicting revisions failed")
        status.conflicts_error = f"{type(error).__name__}: {error}"
    summary.conflicts_settled = status.conflicts_settled
    if status.conflicts_error:
        summary.conflicts_problem = "conflicting revisions not settled: " + \
            status.conflicts_error
    summary.duration += time.monotonic() - started

"""Release files on local disk: where they live, how they get there whole, and what
is evicted when the disk budget is spent.

A folder, not CouchDB: PyPI's files are tens of terabytes. As attachments they would
travel with every replication, be copied again on each compaction, and go through
CouchDB's HTTP layer for every download; as plain files the kernel serves them,
`sendfile`-style tools (rsync, a CDN, nginx) can too, and a disk budget is a matter
of deleting files. What they cost there: replication does not carry them (each mirror
fills its own folder, from upstream or with ``pypioncouch --fetch-files``), and a
folder is one machine's: several web fronts share it over a network file system.

Layout, under ``DIR``::

    DIR/<normalized project>/<filename>             a release file, verified
    DIR/<normalized project>/<filename>.metadata    its PEP 658 metadata file
    DIR/.incoming/                                  downloads in progress (temp files)
    DIR/seeded.json                                 files seeded explicitly: never evicted
    DIR/.seeded.lock                                taken while seeded.json is rewritten

A file appears under its name only once its sha256 matched (temp file, fsync, rename),
so whatever is there is whole and right. Recency for the LRU budget is the file's
access time, set on every hit, so it survives restarts; its modification time stays
when it was stored (it is the ``Last-Modified`` a client revalidates against).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

from twisted.logger import Logger

log = Logger()

INCOMING = ".incoming"
MANIFEST = "seeded.json"
MANIFEST_LOCK = ".seeded.lock"  # held while the manifest is read and written again
METADATA_SUFFIX = ".metadata"
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!~-]*\Z")  # (\Z: "x.whl\n" is not)
_PROJECT = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")
MAX_FILENAME = 240  # characters of a release file's name
STALE_INCOMING = 3600.0  # seconds: a temp file older than this is a crash's leftover


class BadFileName(ValueError):
    """A project or file name that cannot name a file in the store."""


def is_safe_filename(filename: str) -> bool:
    """A release file's name that is one plain path segment (no ``/``, no leading dot),
    short enough for its ``.metadata`` file's name too (255 bytes at most)."""
    longest = MAX_FILENAME + len(".metadata") if filename.endswith(".metadata") else \
        MAX_FILENAME
    return len(filename) <= longest and bool(_FILENAME.match(filename)) and \
        ".." not in filename


def relative_path(project: str, filename: str) -> str:
    """``<project>/<filename>``: the store's key of a file (``project`` normalized)."""
    if not _PROJECT.match(project) or not is_safe_filename(filename):
        raise BadFileName(f"not a stored file's name: {project!r}/{filename!r}")
    return f"{project}/{filename}"


def local_url(project: str, filename: str) -> str:
    """The URL a Simple page (``/simple/<project>/``) gives for a file served here:
    relative, so it holds behind a proxy that mounts the daemon under a prefix."""
    return f"../../files/{project}/{quote(filename, safe='')}"


def local_simple_files(project: str, files: list[dict]) -> list[dict]:
    """PEP 691 file entries pointing at this daemon (``/files/...``) instead of
    upstream. Files without a sha256 cannot be checked, so they keep their upstream
    URL."""
    return [dict(f, url=local_url(project, f["filename"]))
            if f.get("hashes", {}).get("sha256") and is_safe_filename(f["filename"]) else f
            for f in files]


def held_releases(releases: dict[str, list[dict]], held: dict[str, int]
                   ) -> dict[str, list[dict]]:
    """``releases`` (version -> JSON API file entries) cut to the files in ``held`` (the
    names stored for the project, with their sizes on disk), for a mirror that cannot
    fetch the rest: a file listed but missing fails an install that would have taken
    an older version; so does one of another size than the release's (a copy cut
    short). A file whose metadata file is not held loses its metadata hash (pip would
    fetch it)."""
    no_metadata = {"core-metadata": False, "data-dist-info-metadata": False}
    return {version: [entry if entry["filename"] + METADATA_SUFFIX in held
                      else dict(entry, **no_metadata)
                      for entry in entries
                      if entry.get("filename") in held
                      and (entry.get("digests") or {}).get("sha256")
                      and entry.get("size") in (None, held[entry["filename"]])]
            for version, entries in releases.items()}


def holdings_tag(held: dict[str, int]) -> str:
    """A short digest of a project's stored files (names and sizes): pages rendered
    from them (and their ETags) change when a file comes, grows or goes."""
    return hashlib.sha256("\n".join(f"{name} {size}" for name, size in sorted(
        held.items())).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Wanted:
    """One file to have: where it comes from and what its bytes must hash to."""

    project: str  # normalized
    filename: str  # as served (``<dist filename>.metadata`` for a metadata file)
    url: str  # upstream
    sha256: str
    size: int | None = None

    @property
    def key(self) -> str:
        return relative_path(self.project, self.filename)


def metadata_sha256(entry: dict) -> str | None:
    """The sha256 of a file entry's PEP 658 metadata file, if it has one."""
    for name in ("core-metadata", "data-dist-info-metadata"):
        value = entry.get(name)
        if isinstance(value, dict) and value.get("sha256"):
            return value["sha256"]
    return None


def wanted_files(project: str, entry: dict) -> list[Wanted]:
    """A JSON API file entry as the files to store: the file, and its metadata file
    when it has one. Entries without a sha256 give nothing (they cannot be checked)."""
    sha256 = (entry.get("digests") or {}).get("sha256")
    filename, url = entry.get("filename"), entry.get("url")
    if not sha256 or not filename or not url or not is_safe_filename(filename):
        return []
    found = [Wanted(project, filename, url, sha256, entry.get("size"))]
    meta = metadata_sha256(entry)
    if meta:
        found.append(Wanted(project, filename + METADATA_SUFFIX, url + METADATA_SUFFIX, meta))
    return found


def find_wanted(project: str, releases: Iterable[dict], filename: str) -> Wanted | None:
    """The file (or metadata file) ``filename`` among a project's release documents."""
    base = filename[:-len(METADATA_SUFFIX)] if filename.endswith(METADATA_SUFFIX) else filename
    for release in releases:
        for entry in release.get("files") or ():
            if entry.get("filename") == base:
                return next((w for w in wanted_files(project, entry)
                             if w.filename == filename), None)
    return None


def file_identity(path) -> tuple | None:
    """Which file ``path`` is now (another process may put another in its place, or
    write over it: ``cp``, ``rsync --inplace``); None if there is none."""
    try:
        return _identity_of(os.stat(path))
    except OSError:
        return None


def _identity_of(stat: os.stat_result) -> tuple:
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class FileStats:
    """Counters of the store and its downloads, for /status and /metrics."""

    hits: int = 0  # answered from disk
    misses: int = 0  # not on disk when asked
    fetched: int = 0  # files stored from upstream
    fetched_bytes: int = 0
    upstream_errors: int = 0  # failed fetches (status, connection, timeout, digest)
    digest_mismatches: int = 0  # of which: bytes that did not match the sha256
    not_stored: int = 0  # asked for on a mirror that does not fetch (404)
    evicted: int = 0
    evicted_bytes: int = 0
    last_error: str | None = None
    last_error_at: float | None = None

    def note_error(self, message: str) -> None:
        self.upstream_errors += 1
        self.last_error, self.last_error_at = message, time.time()


@dataclass
class _Seeded:
    keys: set[str] = field(default_factory=set)
    mtime: float | None = None
    problem: str | None = None  # why the manifest cannot be read (keys: the last good)


class UnreadableManifest(ValueError):
    """``seeded.json`` is there but cannot be read: not to be written over."""


def _created_file_mode() -> int:
    """The mode a file created now gets, 0666 less the umask, as cp or rsync would give
    it. A temp file is made 0600: files seeded by root (umask 022) for a daemon of its
    own user were all unreadable to it. (Read once, at start: the umask is only read
    by setting it.)"""
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


class FileStore:
    """The folder of release files. ``max_bytes`` (None: no limit) is the budget:
    past it, the least recently used files that were not seeded are deleted."""

    # Free space never filled with files (at most a twentieth of the disk, so that a
    # small one still holds some): CouchDB on the same disk stops at a full one, and
    # without --files-max-gb nothing else bounds the folder.
    min_free_bytes = 1_000_000_000

    def __init__(self, root: Path | str, max_bytes: int | None = None):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.stats = FileStats()
        self.incoming = self.root / INCOMING
        self.file_mode = _created_file_mode()
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.incoming.mkdir(exist_ok=True)
        except OSError:  # a read-only folder: a mirror can still serve it
            pass
        self._lru: OrderedDict[str, int] = OrderedDict()  # key -> size, oldest first
        # Files this process has seen match their sha256 (it wrote them, or read them
        # whole): one found on disk otherwise (copied in, cut short, rotten) is read
        # once before it is first served.
        # key -> (the sha256 its bytes were checked against (another index may let a
        # file be uploaded again under its name: PyPI never does), the file checked:
        # another written in its place since is checked again)
        self._verified: dict[str, tuple[str, tuple | None]] = {}
        self._damaged: dict[str, int] = {}  # key -> mtime: wrong, and not removable
        self.bytes = 0
        self.reserved = 0  # bytes kept free for the downloads under way (open_incoming)
        self._seeded = _Seeded()
        self.warning: str | None = None  # why the budget cannot be kept
        self._clean_incoming()
        self._scan()
        self._load_seeded()

    # -- the index ----------------------------------------------------------------

    def _clean_incoming(self) -> None:
        """Remove the temp files of downloads a crash (or a kill) cut short: at start,
        and hourly after (those younger than an hour at a restart would stay until the
        next one, out of the budget's count)."""
        now = self._cleaned_at = time.time()
        if not self.incoming.is_dir():
            return
        for entry in os.scandir(self.incoming):
            try:
                if now - entry.stat().st_mtime > STALE_INCOMING:
                    os.unlink(entry.path)
            except OSError:
                pass

    def _scan(self) -> None:
        """Index what is on disk, oldest use first (one pass at start)."""
        found = []
        for project in os.scandir(self.root):
            if not project.is_dir() or project.name.startswith("."):
                continue
            for entry in os.scandir(project.path):
                if entry.is_file() and is_safe_filename(entry.name):
                    info = entry.stat()
                    found.append((info.st_atime, f"{project.name}/{entry.name}", info.st_size))
        for _, key, size in sorted(found):
            self._lru[key] = size
            self.bytes += size

    def _load_seeded(self) -> None:
        path = self.root / MANIFEST
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            self._seeded = _Seeded()
            return
        if mtime == self._seeded.mtime:
            return
        try:
            keys = json.loads(path.read_text("utf-8")).get("seeded", [])
            if not isinstance(keys, list):
                raise ValueError("its 'seeded' is not a list")
        except (OSError, ValueError, AttributeError) as error:
            # (an edit with a typo: the files stay seeded, and nothing is evicted if
            # which ones is not known yet)
            problem = f"{path} cannot be read ({error}): fix it; until then nothing " \
                      "is evicted and --fetch-files does not write it"
            log.warn("{problem}", problem=problem)
            self._seeded = _Seeded(self._seeded.keys, mtime, problem)
            return
        self._seeded = _Seeded({k for k in keys if isinstance(k, str)}, mtime)

    @property
    def seeded(self) -> set[str]:
        """The keys seeded explicitly (re-read when another process changed them)."""
        self._load_seeded()
        return self._seeded.keys

    def mark_seeded(self, keys: Iterable[str]) -> None:
        """Add ``keys`` to the manifest of seeded files (atomically replaced; read and
        written under a lock, so that two seeders at once lose none of each other's)."""
        with open(self.root / MANIFEST_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # (released as the file closes)
            self._seeded.mtime = None
            seeded = self.seeded
            if self._seeded.problem:
                raise UnreadableManifest(self._seeded.problem)
            merged = sorted(seeded | set(keys))
            self._write_atomically(self.root / MANIFEST,
                                   json.dumps({"seeded": merged}, indent=0).encode())
            self._seeded = _Seeded(set(merged), (self.root / MANIFEST).stat().st_mtime)

    # -- reading ------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Files stored (as far as this process knows)."""
        return len(self._lru)

    def path(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> Path | None:
        """The stored file of ``key``, marked as just used; None if not stored."""
        path = self.root / key
        try:
            info = path.stat()
        except OSError:
            self._forget(key)
            return None
        size = info.st_size
        try:  # recency for the budget, kept across restarts; the mtime stays
            os.utime(path, ns=(time.time_ns(), info.st_mtime_ns))
        except PermissionError:  # (explicit times need its owner): then the mtime moves
            try:
                checked = self._verified.get(key)
                os.utime(path)
                if checked is not None and checked[1] == _identity_of(info):
                    self._verified[key] = (checked[0], file_identity(path))  # (ours)
            except OSError:
                pass
        except OSError:  # a read-only folder: served all the same
            pass
        if key not in self._lru:  # stored by another process (--fetch-files)
            self.bytes += size
        else:
            self.bytes += size - self._lru[key]
        self._lru[key] = size
        self._lru.move_to_end(key)
        return path

    def held(self, project: str) -> dict[str, int]:
        """``{name: size}`` of the files stored for ``project`` (normalized), read from
        disk: files another process or rsync put there count as soon as they are
        there; those known not to match their digest do not."""
        held = {}
        try:
            with os.scandir(self.root / project) as entries:
                for entry in entries:
                    try:
                        if is_safe_filename(entry.name) and entry.is_file() and \
                                not self.is_damaged(f"{project}/{entry.name}"):
                            held[entry.name] = entry.stat().st_size
                    except OSError:  # (gone meanwhile: evicted, replaced)
                        continue
        except OSError:  # nothing stored for it (or not a project's name)
            pass
        return held

    def has(self, wanted: Wanted) -> bool:
        """Whether ``wanted`` is stored with the right digest (read and hashed)."""
        path = self.root / wanted.key
        before = file_identity(path)
        try:
            right = file_sha256(path) == wanted.sha256
        except OSError:
            return False
        if right:
            self._verified[wanted.key] = (wanted.sha256, before)
        return right

    def is_verified(self, wanted: Wanted) -> bool:
        """Whether the file stored now is one checked against ``wanted``'s digest (or
        one that was, gone since: evicted, it is not served)."""
        checked = self._verified.get(wanted.key)
        return checked is not None and checked[0] == wanted.sha256 and \
            file_identity(self.root / wanted.key) in (checked[1], None)

    def verified(self, wanted: Wanted, identity: tuple | None) -> None:
        """The file ``identity`` names was read whole and matched ``wanted``."""
        self._verified[wanted.key] = (wanted.sha256, identity)

    def remove_damaged(self, key: str, why: str) -> None:
        """Delete a stored file whose bytes are not the release's (never served). In a
        read-only folder it stays, known as damaged until it changes on disk."""
        done = "removed"
        try:
            os.unlink(self.root / key)
        except FileNotFoundError:
            pass
        except OSError as error:
            done = f"cannot be removed ({error.strerror}): not served"
            try:
                self._damaged[key] = os.stat(self.root / key).st_mtime_ns
            except OSError:
                pass
        self._forget(key)
        self.stats.note_error(f"{key}: {why}: {done}")
        log.warn("{key}: {why}: {done}", key=key, why=why, done=done)

    def is_damaged(self, key: str) -> bool:
        """A file known not to match its digest (and not changed since)."""
        seen = self._damaged.get(key)
        if seen is None:
            return False
        try:
            if os.stat(self.root / key).st_mtime_ns == seen:
                return True
        except OSError:
            pass
        del self._damaged[key]
        return False

    def _forget(self, key: str) -> None:
        self._verified.pop(key, None)
        size = self._lru.pop(key, None)
        if size is not None:
            self.bytes -= size

    # -- writing ------------------------------------------------------------------

    def open_incoming(self, size: int | None = None):
        """A new temp file (binary, for writing) in the store's file system, for a file
        of ``size`` bytes if known, which stay reserved until :meth:`unreserve`. Raises
        OSError (ENOSPC) when writing it, and what the downloads under way still
        expect, would leave the disk less than :attr:`min_free_bytes` free: a disk it
        shares with CouchDB is not filled by files anyone may ask for."""
        try:
            disk = os.statvfs(self.root)
        except OSError:  # (unknown: the write itself will tell)
            pass
        else:
            free = disk.f_bavail * disk.f_frsize
            floor = min(self.min_free_bytes, disk.f_blocks * disk.f_frsize // 20)
            if free - self.reserved - (size or 0) < floor:
                raise OSError(errno.ENOSPC, f"No space left on device: {free:,} bytes "
                                            f"free, {self.reserved:,} expected by downloads "
                                            f"under way, and this mirror leaves {floor:,} free")
        handle = self._temp_file()
        self.reserved += size or 0
        return handle

    def unreserve(self, size: int | None) -> None:
        """A download given ``size`` by :meth:`open_incoming` is over."""
        self.reserved = max(0, self.reserved - (size or 0))

    def _temp_file(self):
        try:
            return tempfile.NamedTemporaryFile(dir=self.incoming, prefix="part-",
                                               delete=False)
        except FileNotFoundError:  # (removed under us: an rsync --delete of DIR)
            self.incoming.mkdir(exist_ok=True)
            return tempfile.NamedTemporaryFile(dir=self.incoming, prefix="part-",
                                               delete=False)

    def commit(self, temp_path: str, wanted: Wanted) -> Path:
        """Move a complete temp file, verified as ``wanted``, to its key; returns its
        path."""
        key = wanted.key
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        self._place(temp_path, target)
        size = target.stat().st_size
        self._forget(key)
        self._verified[key] = (wanted.sha256, file_identity(target))  # (checked coming in)
        self._lru[key] = size
        self.bytes += size
        self.stats.fetched += 1
        self.stats.fetched_bytes += size
        self.keep_budget(keep=key)
        if time.time() - self._cleaned_at > STALE_INCOMING:
            self._clean_incoming()
        return target

    @staticmethod
    def discard(temp_path: str) -> None:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass

    def keep_budget(self, keep: str | None = None) -> None:
        """Delete least recently used files that were not seeded until the store is
        within its budget (``keep``: the file just stored, deleted last of all)."""
        if self.max_bytes is None or self.bytes <= self.max_bytes:
            return
        seeded = self.seeded
        if self._seeded.problem:
            self.warning = self._seeded.problem
            return
        for key in [k for k in self._lru if k not in seeded and k != keep] + (
                [keep] if keep and keep not in seeded else []):
            if self.bytes <= self.max_bytes:
                break
            size = self._lru.get(key, 0)
            try:
                os.unlink(self.root / key)
            except FileNotFoundError:
                pass
            except OSError as error:
                log.warn("cannot evict {key}: {error}", key=key, error=error)
                continue
            self._forget(key)
            self.stats.evicted += 1
            self.stats.evicted_bytes += size
        if self.bytes > self.max_bytes:
            self.warning = (f"the files stored ({self.bytes:,} bytes) exceed the budget "
                            f"({self.max_bytes:,} bytes): seeded files are never evicted")
            log.warn("{warning}", warning=self.warning)
        else:
            self.warning = None

    def _write_atomically(self, target: Path, data: bytes) -> None:
        with self._temp_file() as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        self._place(handle.name, target)

    def _place(self, temp_path: str, target: Path) -> None:
        os.chmod(temp_path, self.file_mode)  # (a temp file is 0600)
        os.replace(temp_path, target)
        _fsync_dir(target.parent)

    def summary(self) -> dict:
        """What /status shows."""
        return {"dir": str(self.root), "files": self.count, "bytes": self.bytes,
                "max_bytes": self.max_bytes, "seeded": len(self.seeded),
                "warning": self._seeded.problem or self.warning, **asdict(self.stats)}


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (where the system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

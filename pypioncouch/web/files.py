"""``/files/<project>/<filename>``: release files (and their PEP 658 ``.metadata``
files) from the local store, fetched once from upstream when missing.

A stored file is served by twisted.web's static ``File`` (HEAD, Range,
If-Modified-Since). A missing one is fetched (one download however many ask) and
streamed to the client as it arrives, read back from the temp file at the client's
pace; a HEAD or Range request for it waits until it is stored, then is answered from
disk. Without a fetcher (a ``--no-sync`` mirror: air-gapped), Simple pages list only
the stored files (``app.py``), and a missing file is a 404 that says so.
"""

from __future__ import annotations

from urllib.parse import quote

from klein import Klein
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.static import File

from pypioncouch import model
from pypioncouch.filefetch import CONNECTING, FAILED, STORED, Download, Fetcher, FetchError
from pypioncouch.files import (
    FileStore, Wanted, file_identity, file_sha256, find_wanted, is_safe_filename)
from pypioncouch.web.app import _cors, _not_modified, _plain, _redirect, observed, servable_name
from pypioncouch.web.metrics import families
from pypioncouch.web.streaming import PacedWriter, cut_short

log = Logger()

CHUNK = 64 * 1024
CACHE_CONTROL = "max-age=31536000, immutable"  # a file's bytes never change on PyPI
HEAD_WAIT = 5.0  # seconds a HEAD of a file not stored waits for upstream's answer


class FilePages:
    """The klein app under ``/files/``; ``fetcher`` None: serve only what is stored."""

    app = Klein()

    def __init__(self, store: FileStore, fetcher: Fetcher | None, *, status, metrics,
                 read_project):
        self.store = store
        self.fetcher = fetcher
        self.status = status  # (for @observed)
        self.metrics = metrics
        self.read_project = read_project  # key -> CachedProject or None (cached reads)
        self._verifying: dict[str, list[defer.Deferred]] = {}  # key -> who waits
        metrics.registry.register(FilesCollector(self))

    def summary(self) -> dict:
        return {**self.store.summary(), "fetches_upstream": self.fetcher is not None,
                "fetching": len(self.fetcher.in_flight) if self.fetcher else 0}

    @app.route("/<project>/<filename>", methods=["GET", "HEAD"])
    @observed("files")
    async def release_file(self, request, project, filename):
        _cors(request)  # (as files.pythonhosted.org: micropip fetches from a page)
        if not servable_name(project) or not is_safe_filename(filename):
            return _plain(request, 404, "404 Not Found")
        key = model.normalize(project)
        if key != project:
            return _redirect(request, f"/files/{key}/{quote(filename, safe='')}")
        entry = await self.read_project(key)
        if entry is None or entry.project.get("status") == "quarantined":
            return _plain(request, 404, "404 Not Found")
        wanted = _find(entry, key, filename)
        if wanted is None:
            return _plain(request, 404, f"404 Not Found: {key} has no file {filename}")
        etag = f'"{wanted.sha256}"'
        request.setHeader("ETag", etag)
        request.setHeader("Cache-Control", CACHE_CONTROL)
        if _not_modified(request, etag):
            return b""
        path = None if self.store.is_damaged(wanted.key) else self.store.lookup(wanted.key)
        if path is not None and not self.store.is_verified(wanted):
            right = await self._verified(wanted, path)
            if right is None:  # (unreadable now: too many open files, NFS, ...)
                request.setHeader("Retry-After", "5")
                return _unavailable(request, 503, f"503 Service Unavailable: {filename} "
                                                  "cannot be read on this mirror now")
            if not right:
                path = None
        if path is not None:
            self.store.stats.hits += 1
            return _static(path)
        self.store.stats.misses += 1
        if self.fetcher is None:
            self.store.stats.not_stored += 1
            return _unavailable(request, 404, (
                f"404 Not Found: this mirror does not fetch from upstream (--no-sync) and "
                f"has not stored {filename}; seed it with pypioncouch --fetch-files"))
        download = self.fetcher.download(wanted)
        if request.method == b"HEAD":
            if isinstance(wanted.size, int):
                # Said from the release once upstream answered (or after HEAD_WAIT, the
                # download queued behind others), as the download goes on: waiting for
                # it to end, a large file's HEAD outlasted the client's read timeout.
                # (Upstream's 404, a refusal: said as for a GET.)
                await _answered(download, HEAD_WAIT, self.fetcher.reactor)
                if download.state == FAILED:
                    return _failed(request, download)
                request.setHeader("Content-Type", "application/octet-stream")
                request.setHeader("Content-Length", str(wanted.size))
                request.setHeader("Cache-Control", "no-store")  # (upstream may fail it)
                return b""
            return await self._when_stored(request, download)
        # A range of a file not stored yet: the whole of it as it arrives, a 200 (HTTP
        # lets a server answer a range so), not after the whole download.
        return await self._stream(request, download)

    async def _verified(self, wanted: Wanted, path) -> bool | None:
        """Whether a file found on disk, not written by this process (or checked
        against another digest), holds the release's bytes: read once (in a thread: a
        file may be large) however many ask meanwhile (a crowd on a 2 GB wheel after a
        restart would read it once each); removed if not, unless it changed while it
        was read. None if it cannot be read now: kept."""
        waiter = defer.Deferred()
        waiters = self._verifying.get(wanted.key)
        if waiters is not None:
            waiters.append(waiter)
        else:
            self._verifying[wanted.key] = [waiter]
            d = threads.deferToThread(_digest_of, path)
            d.addBoth(self._verify_done, wanted, path)
        return await waiter

    def _verify_done(self, read, wanted: Wanted, path) -> None:
        """``read``: ``(sha256, the file's identity then)``, or a Failure: an OSError
        (unreadable: kept) or a bug (told to every waiter)."""
        right: bool | None | Failure = None
        try:
            if isinstance(read, Failure):
                if read.check(OSError):
                    log.warn("{key}: cannot be read to check it ({error}): kept",
                             key=wanted.key, error=read.value)
                else:
                    right = read
            elif read[0] == wanted.sha256:
                right = True
                self.store.verified(wanted, read[1])
            else:
                right = False
                if file_identity(path) == read[1]:  # (not replaced while it was read)
                    self.store.remove_damaged(wanted.key, "does not match its sha256")
        finally:
            for waiter in self._verifying.pop(wanted.key, []):
                if not waiter.called:
                    if isinstance(right, Failure):
                        waiter.errback(right)
                    else:
                        waiter.callback(right)

    async def _when_stored(self, request, download: Download):
        try:
            await download.finished()
        except FetchError:
            return _failed(request, download)
        path = self.store.lookup(download.wanted.key)
        if path is None:  # evicted at once: a budget smaller than the file
            return _bad_gateway(request, f"{download.wanted.filename}: fetched, but the "
                                         "disk budget left no room to keep it")
        return _static(path)

    async def _stream(self, request, download: Download):
        """The body as it arrives, at the client's pace; a failure half-way (or bytes
        that do not match the digest) cuts the connection before the last byte."""
        await download.started()
        if download.state == FAILED:
            return _failed(request, download)
        try:
            handle = download.open_for_reading()
        except OSError:  # stored and evicted in between (a tiny budget)
            return _bad_gateway(request, f"{download.wanted.filename}: not kept, try again")
        request.setHeader("Content-Type", "application/octet-stream")
        length = download.length if download.length is not None else download.wanted.size
        if isinstance(length, int):  # (upstream said none: the release says it)
            request.setHeader("Content-Length", str(length))
        writer = PacedWriter(request)
        try:
            whole = await _follow(download, handle, writer)
        finally:
            handle.close()
            writer.close()
        return b"" if whole else await cut_short(request)


async def _answered(download: Download, seconds: float, reactor) -> None:
    """Returns once upstream answered (or the download is over), or after ``seconds``."""
    deadline = reactor.seconds() + seconds
    while download.state == CONNECTING and reactor.seconds() < deadline:
        waiter = download.changed()
        timer = reactor.callLater(deadline - reactor.seconds(),
                                  lambda: waiter.called or waiter.callback(None))
        await waiter
        if timer.active():
            timer.cancel()


async def _follow(download: Download, handle, writer: PacedWriter) -> bool:
    """Copy the download's bytes to ``writer`` as they become readable; False when
    the download failed."""
    position = 0
    while True:
        readable = download.readable
        if position < readable:
            data = handle.read(min(CHUNK, readable - position))
            if not data:  # (cannot happen: every append is flushed) never spin
                return False
            position += len(data)
            await writer.write(data)
        elif download.state == STORED:
            return True
        elif download.state == FAILED:
            return False
        else:
            await download.changed()


def _failed(request, download: Download) -> bytes:
    """The answer to a download that failed: upstream's failure is a 502, its "no such
    file" a 404 (the release was listed with it: a file removed since); ours (the
    folder full or read-only) a 503 to come back to."""
    if download.gone:
        return _unavailable(request, 404, f"404 Not Found: {download.error}")
    if download.cannot_store:
        request.setHeader("Retry-After", "60")
        return _unavailable(request, 503, f"503 Service Unavailable: {download.error}")
    return _bad_gateway(request, download.error)


def _find(entry, key: str, filename: str) -> Wanted | None:
    """The file ``filename`` of a cached project, through an index of its file names
    built once per cached entry (a project may have thousands of releases)."""
    index = entry.file_index
    if index is None:
        index = {}
        listed = set(entry.project.get("versions") or [])  # (as the Simple page: a
        # removal's tombstone may lag on a replica, a takedown's too)
        for release in entry.releases:
            if release.get("version") not in listed:
                continue
            for file in release.get("files") or ():
                if isinstance(file, dict) and isinstance(file.get("filename"), str):
                    index[file["filename"]] = release
        entry.file_index = index  # (not a rendered answer: those are counted, evicted)
    base = filename.removesuffix(".metadata")
    release = index.get(base)
    return None if release is None else find_wanted(key, [release], filename)


def _digest_of(path) -> tuple[str, tuple | None]:
    """``(sha256 of the file at path, its identity before it was read)``."""
    before = file_identity(path)
    return file_sha256(path), before


class _StoredFile(File):
    """A stored file, served as found, or a 503 to ask again if the budget evicted it
    since it was looked up (not a 404 with a year's caching: it is the release's)."""

    def render_GET(self, request):
        self.restat(False)
        try:
            if self.exists():
                return super().render_GET(request)
        except FileNotFoundError:  # (evicted between the check and the open)
            pass
        request.setHeader("Retry-After", "1")
        return _unavailable(request, 503, f"503 Service Unavailable: {self.basename()} "
                                          "left this mirror's disk a moment ago; ask again")

    render_HEAD = render_GET  # (File's own is its render_GET)


def _static(path) -> File:
    resource = _StoredFile(str(path), defaultType="application/octet-stream")
    # No guessing from the name: a .tar.gz must not go out as Content-Encoding: gzip.
    resource.contentTypes, resource.contentEncodings = {}, {}
    return resource


def _unavailable(request, code: int, text: str) -> bytes:
    """An answer that may change soon (not the file's immutable caching)."""
    request.setHeader("Cache-Control", "no-store")
    request.responseHeaders.removeHeader(b"ETag")
    return _plain(request, code, text)


def _bad_gateway(request, message: str) -> bytes:
    return _unavailable(request, 502, f"502 Bad Gateway: {message}")


class FilesCollector:
    """The store's figures for /metrics, read at scrape time."""

    def __init__(self, pages: FilePages):
        self.pages = pages

    def collect(self):
        store = self.pages.store
        s = store.stats
        gauges = [
            ("pypioncouch_files_stored_bytes", "Bytes of release files stored", store.bytes),
            ("pypioncouch_files_stored", "Release files stored", store.count),
            ("pypioncouch_files_budget_bytes", "The disk budget for release files",
             store.max_bytes),
            ("pypioncouch_files_fetching", "Release files being fetched now",
             self.pages.summary()["fetching"]),
        ]
        counters = [
            ("pypioncouch_files_hits", "Release file requests answered from disk", s.hits),
            ("pypioncouch_files_misses", "Release file requests for files not stored",
             s.misses),
            ("pypioncouch_files_fetched", "Release files stored from upstream", s.fetched),
            ("pypioncouch_files_fetched_bytes", "Bytes stored from upstream", s.fetched_bytes),
            ("pypioncouch_files_upstream_errors", "Failed fetches of release files",
             s.upstream_errors),
            ("pypioncouch_files_digest_mismatches",
             "Fetched release files refused: sha256 mismatch", s.digest_mismatches),
            ("pypioncouch_files_not_stored", "Requests for files a mirror that does not "
             "fetch lacks (404)", s.not_stored),
            ("pypioncouch_files_evicted", "Release files evicted to keep the budget",
             s.evicted),
        ]
        yield from families(gauges, counters)

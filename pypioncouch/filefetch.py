"""Fetching release files from upstream into the store, once, while others read along.

A :class:`Download` writes the upstream body to a temp file as it arrives, hashing it
on the way; once the body is complete and its sha256 is the one the release document
gives, the temp file is renamed into place (:meth:`FileStore.commit`), else deleted.
Any number of readers follow the temp file as it grows (:meth:`Download.read_at`),
each at its own pace, so memory holds one chunk per reader, never a file. Readers are
never handed the last byte before the digest matched: a client can never receive a
complete body of wrong bytes under a 200.

:class:`Fetcher` keeps one download per file: concurrent requests for one file
share it.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Callable

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web import client
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from pypioncouch import __version__
from pypioncouch.files import METADATA_SUFFIX, FileStore, Wanted
from pypioncouch.http import _ascii, quiet_pool, reusing_agent, status_line
from pypioncouch.urls import basic_auth, redact, same_origin, split_credentials

log = Logger()

CONNECTING, RECEIVING, STORED, FAILED = "connecting", "receiving", "stored", "failed"
USER_AGENT = f"pypioncouch/{__version__} (release files)"


class FetchError(Exception):
    """A file could not be fetched whole and right; the message says why, in a line.
    ``gone``: upstream answered that it has no such file (404, 410)."""

    def __init__(self, message: str, gone: bool = False, wrong: bool = False):
        super().__init__(message)
        self.gone = gone
        self.wrong = wrong  # upstream sent bytes that are not the release's


class Download:
    """One file on its way from upstream into the store."""

    def __init__(self, wanted: Wanted, store: FileStore):
        self.wanted = wanted
        self.store = store
        self.state = CONNECTING
        self.error: str | None = None
        self.cannot_store = False  # failed here (the folder full or read-only), not upstream
        self.gone = False  # upstream has no such file (any more)
        self.length: int | None = None  # the upstream's Content-Length, when it gives one
        self.written = 0
        # Opened once upstream answers (a download waiting for its turn holds no file:
        # thousands asked at once would run out of file descriptors).
        self._handle = None
        self._reserved: int | None = None  # the bytes the store keeps free for it
        self.temp_path: str | None = None
        self._digest = hashlib.sha256()
        self._waiters: list[defer.Deferred] = []

    # -- for readers ------------------------------------------------------------------

    def changed(self) -> defer.Deferred:
        """Fires at the next change: more bytes, headers in, stored or failed."""
        waiter = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    async def started(self) -> None:
        """Returns once upstream answered 200 (or the download is over)."""
        while self.state == CONNECTING:
            await self.changed()

    async def finished(self) -> None:
        """Returns once the download is stored; raises :class:`FetchError` if it failed."""
        while self.state in (CONNECTING, RECEIVING):
            await self.changed()
        if self.state == FAILED:
            raise FetchError(self.error)

    @property
    def readable(self) -> int:
        """How many bytes readers may have: all once verified, all but one before."""
        return self.written if self.state == STORED else max(0, self.written - 1)

    def open_for_reading(self):
        """A handle on the bytes: the temp file while it grows (a handle opened on it
        stays readable after the rename), the stored file once stored."""
        return open(self.store.path(self.wanted.key) if self.state == STORED
                    else self.temp_path, "rb")

    # -- for the fetcher ------------------------------------------------------------

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:  # (a reader that left cancelled its own)
                waiter.callback(None)

    def _headers_in(self, length: int | None) -> None:
        expected = length if length is not None else self.wanted.size
        self._handle = self.store.open_incoming(expected)
        self._reserved = expected
        self.temp_path = self._handle.name
        self.length, self.state = length, RECEIVING
        self._notify()

    def _append(self, data: bytes) -> None:
        self._handle.write(data)
        self._handle.flush()  # readers read the file, not our buffer
        self._digest.update(data)
        self.written += len(data)
        self._notify()

    def _complete(self, maybe_cut: bool = False) -> None:
        """Check the whole body; store it or refuse it. A body that ended with its
        connection (``maybe_cut``) and does not match is not known to be wrong: it may
        be a network's cut, not remembered as a refusal."""
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        except OSError as error:  # (a full disk, a quota, a file system gone read-only)
            self.cannot_store = True
            raise FetchError(f"{self.wanted.filename}: cannot write to {self.store.root}: "
                             f"{error.strerror}") from None
        size = self.wanted.size
        if maybe_cut and isinstance(size, int) and self.written < size:
            raise FetchError(f"{self.wanted.filename}: cut short, {self.written:,} of the "
                             f"{size:,} bytes the release says (from {redact(self.wanted.url)})")
        got = self._digest.hexdigest()
        if got != self.wanted.sha256:
            self.store.stats.digest_mismatches += 1
            raise FetchError(f"{self.wanted.filename}: refused, its sha256 is {got}, the "
                             f"release says {self.wanted.sha256} (from {redact(self.wanted.url)})",
                             wrong=not maybe_cut)
        try:
            self.store.commit(self.temp_path, self.wanted)
        except OSError as error:
            self.cannot_store = True
            raise FetchError(f"{self.wanted.filename}: cannot store it in "
                             f"{self.store.root}: {error.strerror}") from None
        self.state = STORED
        self._unreserve()
        self._notify()

    def _unreserve(self) -> None:
        self.store.unreserve(self._reserved)
        self._reserved = None

    def _fail(self, message: str) -> None:
        self.state, self.error = FAILED, message
        self._unreserve()
        try:
            if self._handle is not None:
                self._handle.close()
        except OSError:  # a full disk refuses the buffered rest again (the file goes)
            pass
        try:
            if self.temp_path is not None:
                self.store.discard(self.temp_path)
        except OSError:  # (gone read-only: .incoming is emptied at the next start)
            pass
        finally:
            self.store.stats.note_error(message)
            self._notify()


class _ToDownload(Protocol):
    """Delivers a response body into a :class:`Download`; gives up after ``idle``
    seconds without a byte."""

    def __init__(self, download: Download, done: defer.Deferred, reactor, idle: float,
                 unsized_max: int):
        self.download = download
        self.unsized_max = unsized_max
        self.done = done
        self.reactor = reactor
        self.idle = idle
        self.problem: str | None = None
        self.wrong = False  # the problem is bytes that are not the release's
        self._timer = None

    def connectionMade(self) -> None:
        self._timer = self.reactor.callLater(self.idle, self._stalled)

    def _stalled(self) -> None:
        self.problem = f"no data for {self.idle:g} s"
        self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.problem:
            return
        expected = self.download.wanted.size
        if isinstance(expected, int) and self.download.written + len(data) > expected:
            # More than the release says the file holds: wrong whatever follows (an
            # endless body would fill the disk, streamed to every reader).
            self.problem = f"more than the {expected:,} bytes the release says"
            self.wrong = True
            self.transport.stopProducing()
            return
        if not isinstance(expected, int) and self.download.wanted.filename.endswith(
                METADATA_SUFFIX) and self.download.written + len(data) > self.unsized_max:
            # (a metadata file, whose size the release does not say: never that large)
            self.problem = f"more than {self.unsized_max:,} bytes"
            self.wrong = True
            self.transport.stopProducing()
            return
        try:
            self.download._append(data)
        except OSError as error:  # disk full, ...
            self.problem = f"cannot write to {self.download.store.root}: {error.strerror}"
            self.download.cannot_store = True
            self.transport.stopProducing()
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.idle)

    def connectionLost(self, reason) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.problem is None and reason.check(client.ResponseDone, PotentialDataLoss):
            # (a body of no stated length ends as the connection does: it may be cut)
            self.done.callback(reason.check(PotentialDataLoss) is not None)
        else:
            self.done.errback(FetchError(self.problem or _reason(reason.value),
                                         wrong=self.wrong))


def _reason(error: BaseException) -> str:
    """One line for a transport error (Twisted wraps the cause in a list of reasons)."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        error = reasons[0].value
    return str(error) or type(error).__name__


class Fetcher:
    """Fetches files into a store, one download per file however many ask for it, at
    most ``concurrency`` at a time (and as many metadata files). ``timeout``: seconds
    to wait for an answer, and for each next byte of it. ``upstream``: the index's
    URL; if it carries credentials (a private index), they go with every file request
    to its origin, and to no other."""

    # A .metadata file (whose size its release does not say: a wheel's METADATA,
    # description included) is refused past this, not left to fill the disk.
    unsized_max = 64 * 1024 * 1024
    # Seconds a file whose bytes upstream sent wrong is answered with that refusal
    # (a 502) before upstream is asked again: every pip retry of a large file would
    # fetch it whole, and be cut before its last byte.
    refuse_for = 600.0
    refused_kept = 10_000  # refusals remembered at most

    def __init__(self, store: FileStore, reactor=None, *, concurrency: int = 8,
                 timeout: float = 60.0, agent=None, on_error: Callable[[str], None] = None,
                 upstream: str | None = None):
        if reactor is None:
            from twisted.internet import reactor
        self.store = store
        self._upstream, auth = split_credentials(upstream) if upstream else (None, None)
        self._auth = None if auth is None else basic_auth(auth).encode("latin-1")
        self.reactor = reactor
        self.timeout = timeout
        self.on_error = on_error
        self._pool = None
        if agent is None:
            self._pool = quiet_pool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = concurrency
            agent = client.RedirectAgent(reusing_agent(reactor, self._pool, timeout))
        self.agent = agent
        self.slots = defer.DeferredSemaphore(concurrency)
        # PEP 658 metadata files (kilobytes, what installers resolve with) have slots of
        # their own: never queued behind big wheels that hold every slot for minutes.
        self.metadata_slots = defer.DeferredSemaphore(concurrency)
        self.in_flight: dict[str, Download] = {}
        # key -> (when upstream's bytes were refused, the failed download), oldest first
        self.refused: OrderedDict[str, tuple[float, Download]] = OrderedDict()

    def close(self):
        """Close the pooled connections (the daemon does on stop)."""
        return self._pool.closeCachedConnections() if self._pool else None

    def download(self, wanted: Wanted) -> Download:
        """The download of ``wanted``: the one in flight, or a new one."""
        key = wanted.key
        running = self.in_flight.get(key)
        if running is not None:
            return running
        refused = self.refused.get(key)
        if refused is not None:
            since, failed = refused
            if self.reactor.seconds() - since < self.refuse_for and failed.wanted == wanted:
                return failed
            del self.refused[key]
        download = Download(wanted, self.store)
        self.in_flight[key] = download
        defer.ensureDeferred(self._run(download))
        return download

    async def _run(self, download: Download) -> None:
        url = download.wanted.url
        slots = self.metadata_slots if download.wanted.filename.endswith(".metadata") \
            else self.slots
        try:
            await slots.acquire()
            try:
                await self._get(download)
            finally:
                slots.release()
        except FetchError as error:
            download.gone = error.gone
            self._failed(download, str(error))
            if error.wrong:
                self._refused(download)
        except Exception as error:  # a bug must not leave readers waiting for ever
            log.failure("fetching {url}", url=redact(url))
            self._failed(download, f"{download.wanted.filename}: {error}")
        finally:
            self.in_flight.pop(download.wanted.key, None)

    def _refused(self, download: Download) -> None:
        key = download.wanted.key
        self.refused.pop(key, None)
        self.refused[key] = (self.reactor.seconds(), download)
        while len(self.refused) > self.refused_kept:
            self.refused.popitem(last=False)

    def _failed(self, download: Download, message: str) -> None:
        log.warn("release file: {message}", message=message)
        download._fail(message)
        if self.on_error is not None:
            self.on_error(message)

    async def _get(self, download: Download) -> None:
        url = download.wanted.url
        shown = redact(url)
        headers = Headers({b"User-Agent": [USER_AGENT.encode()],
                           b"Accept-Encoding": [b"identity"]})
        if self._auth is not None and same_origin(url, self._upstream):
            headers.setRawHeaders(b"Authorization", [self._auth])  # (dropped on redirects
            # to another origin by Twisted's RedirectAgent)
        request = self.agent.request(b"GET", _ascii(url), headers)
        request.addTimeout(self.timeout, self.reactor)
        try:
            response = await request
        except defer.TimeoutError:
            raise FetchError(f"{download.wanted.filename}: no answer from {shown} in "
                             f"{self.timeout:g} s") from None
        except Exception as error:
            raise FetchError(f"{download.wanted.filename}: {shown}: "
                             f"{_reason(error)}") from None
        if response.code != 200:
            response.deliverBody(_Discard())
            raise FetchError(f"{download.wanted.filename}: {shown} answered "
                             f"{status_line(response.code)}", gone=response.code in (404, 410))
        length = None if response.length is UNKNOWN_LENGTH else response.length
        try:
            download._headers_in(length)
        except OSError as error:  # no temp file: the folder is full or read-only
            response.deliverBody(_Abort())
            download.cannot_store = True
            raise FetchError(f"{download.wanted.filename}: cannot write to "
                             f"{self.store.root}: {error.strerror}") from None
        done = defer.Deferred()
        response.deliverBody(_ToDownload(download, done, self.reactor, self.timeout,
                                         self.unsized_max))
        try:
            maybe_cut = await done
        except FetchError as error:
            raise FetchError(f"{download.wanted.filename}: {shown}: {error}",
                             wrong=error.wrong) from None
        download._complete(maybe_cut)


class _Discard(Protocol):
    def connectionLost(self, reason) -> None:
        pass


class _Abort(_Discard):
    """Closes the connection instead of reading a body that cannot be kept."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()

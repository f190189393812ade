"""Our PyPI client: the changelog and serials over XML-RPC, per-project metadata from
the JSON API (reference: ../shared/reference/pypi-api.md).

- XML-RPC is a POST on a kept-alive connection of our own HTTP client (the standard
  library's ``xmlrpc.client`` writes and reads the XML); ``changelog_since_serial``,
  ``changelog_last_serial`` and ``list_packages_with_serial`` are the methods PyPI
  still supports.
- A project costs one JSON API request (``/pypi/<name>/json``); only when that
  answers 404 does a second one (``/simple/<name>/``, PEP 691 JSON) tell a project
  with no release (or quarantined) from one that is gone. A release's own metadata,
  when it is not the latest, costs one more (``/pypi/<name>/<version>/json``).
- ``legacy_project`` rebuilds the same answer from ``package_releases`` /
  ``release_data`` / ``release_urls`` for indexes that still serve them; PyPI answers
  them with a Fault since 2024-09, which raises :class:`MethodGone`; so does an
  endpoint taken away whole (:class:`EndpointGone`: 404, 405, 410 or 501), and the
  sync then follows the ``/simple/`` index's serials instead.
- Every call has a timeout; 5xx, 429 (``Retry-After`` honoured), timeouts, resets and
  malformed bodies are retried with exponential backoff and jitter; the XML-RPC rate
  limit Fault is waited out. A JSON answer older than the serial that made us ask is
  a stale CDN copy: retried, then reported as :class:`StaleAnswer`, never returned.
"""

from __future__ import annotations

import math
import random
import re
import reprlib
import xmlrpc.client as xmlrpc_client
from array import array
from collections.abc import Mapping
from datetime import datetime
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import quote

import ijson
from twisted.internet import defer, task
from twisted.internet import error as ierror
from twisted.logger import Logger

from pypioncouch import __version__, jsonio
from pypioncouch.http import (
    TLS_REFUSED, LeanClient, is_cancellation, is_tls_refusal, status_line)
from pypioncouch.model import normalize
from pypioncouch.simple import V1_JSON
from pypioncouch.urls import basic_auth, check_index_url, redact, split_credentials

log = Logger()

USER_AGENT = f"pypioncouch/{__version__} (+https://github.com/pypioncouch/pypioncouch)"
RPC_HEADERS = {"Content-Type": "text/xml", "User-Agent": USER_AGENT}
PYPI_URL = "https://pypi.org/"


class PyPIError(Exception):
    """A PyPI request failed for good. ``str()`` is one line naming the URL."""

    def __init__(self, message: str, url: str = ""):
        self.message, self.url = message, url
        super().__init__(f"{message} ({url})" if url else message)


class Transient(PyPIError):
    """Worth trying again: 5xx, 429, timeouts, resets, malformed or truncated bodies."""

    retry_after: float | None = None


class NotPep691(PyPIError):
    """A Simple page that is not PEP 691 JSON (an older index: HTML, or a 406)."""


class RateLimited(Transient):
    """PyPI's XML-RPC rate limit (a Fault, not a 429)."""

    def __init__(self, message: str, url: str, retry_after: float):
        super().__init__(message, url)
        self.retry_after = retry_after


class StaleAnswer(Transient):
    """The answer's serial is older than the one the changelog promised (CDN copy)."""


class RPCFault(PyPIError):
    def __init__(self, code: int, text: str, url: str):
        self.code, self.text = code, text
        super().__init__(f"XML-RPC Fault {code}: {text}", url)


class MethodGone(RPCFault):
    """PyPI no longer serves this XML-RPC method."""


class EndpointGone(MethodGone, Transient):
    """PyPI no longer serves XML-RPC at all: its endpoint answers 404, 405, 410 or 501
    (the methods going one by one answer a Fault, :class:`MethodGone`). Asked again
    first, as a transient error: a proxy's or a CDN's passing 404 must not move a
    daemon to the /simple/ index for the rest of its life."""

    def __init__(self, status: int, url: str):
        self.code, self.text = status, status_line(status)
        PyPIError.__init__(self, f"the XML-RPC endpoint answered {self.text}", url)


# What an endpoint taken away answers (a redirect is left an error: it is what a
# mistyped --pypi URL gets too, e.g. http:// for https://).
ENDPOINT_GONE = (404, 405, 410, 501)

_GONE_MARKERS = ("no longer supports", "has been deprecated", "has been removed",
                 "API has been removed")


def classify_fault(fault: xmlrpc_client.Fault, url: str) -> PyPIError:
    code, text = fault.faultCode, str(fault.faultString)
    if code == -32601 or (code == -32500 and any(m in text for m in _GONE_MARKERS)):
        return MethodGone(code, text, url)
    if "TooManyRequests" in text:
        match = re.search(r"reset in (\d+) seconds", text)
        return RateLimited(f"XML-RPC rate limit: {text}", url,
                           float(match.group(1)) if match else 60.0)
    if code == -32500:
        error = Transient(f"XML-RPC Fault {code}: {text}", url)
        return error
    return RPCFault(code, text, url)


@dataclass
class ProjectAnswer:
    """What PyPI says of one project.

    ``kind`` is ``"project"`` (``payload`` is the JSON API answer), ``"empty"`` (PyPI
    knows it but shows no release: new, or quarantined — see ``status``) or
    ``"gone"`` (neither the JSON API nor the Simple API knows it).
    """

    name: str
    kind: str
    payload: dict | None = None
    serial: int | None = None
    status: str = "active"
    # Per-version answers (``/pypi/<p>/<v>/json``) by version, of releases without
    # files whose own metadata may have changed (a yank: see sync.py, ``_own_answers``).
    own: dict[str, dict] = field(default_factory=dict)


class Listing(Mapping):
    """A listing of every project, ``{name as PyPI spells it: serial}`` (from
    ``list_packages_with_serial`` or the ``/simple/`` index), held as two columns: at
    PyPI's size (700,000 projects) a dict costs half as much again, and the listing is
    mostly walked once, in order. Looking a name up builds the dict on first use. An
    entry without a serial (the index's) is :data:`NO_SERIAL` in ``serials``, None to
    a reader."""

    NO_SERIAL = -1

    def __init__(self, names: list[str], serials: array):
        self.names, self.serials = names, serials
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def items(self):
        no_serial = self.NO_SERIAL
        return ((name, None if serial == no_serial else serial)
                for name, serial in zip(self.names, self.serials))

    def __getitem__(self, name: str) -> int | None:
        if self._index is None:
            self._index = {n: i for i, n in enumerate(self.names)}
        serial = self.serials[self._index[name]]
        return None if serial == self.NO_SERIAL else serial

    def newest_serial(self) -> int | None:
        return max((s for s in self.serials if s != self.NO_SERIAL), default=None)


class _IndexReader:
    """The ``/simple/`` index's JSON (PEP 691) read as it arrives, by a push parser:
    each project's name and serial go straight into a :class:`Listing`'s columns, and
    the answer is never held (at PyPI's size, 700,000 projects in 43 MB, read at every
    pass that follows the index: held whole, then as text, then as a dict an entry, it
    cost ~370 MB). Feed it the body's chunks, then :meth:`listing`."""

    def __init__(self):
        self._events = ijson.sendable_list()
        self._parser = ijson.parse_coro(self._events)
        self._head: bytes | None = b""  # (None once the first three bytes are sent)
        self.names: list[str | None] = []  # (None: an entry without a name)
        self.serials = array("q")
        self.serial: int | None = None  # the index's own (``meta._last-serial``)
        self.has_projects = False
        self._name: str | None = None
        self._entry_serial: int | None = None

    def feed(self, chunk: bytes) -> None:
        """Raises ValueError (ijson's errors, bad UTF-8) if it is not JSON."""
        if self._head is not None:  # (a byte order mark, which the parser refuses,
            # however the first chunks cut it)
            self._head += chunk
            if len(self._head) < 3:
                return
            chunk, self._head = self._head.removeprefix(b"\xef\xbb\xbf"), None
        if chunk:  # (an empty chunk would end the parser's input)
            self._parser.send(chunk)
            self._take()

    def listing(self) -> Listing:
        """The listing, once the whole answer is fed (ValueError if it ended early)."""
        if self._head:  # (an answer of fewer than three bytes)
            self._parser.send(self._head.removeprefix(b"\xef\xbb\xbf") or b" ")
        self._parser.close()
        self._take()
        return Listing(self.names, self.serials)

    def _take(self) -> None:
        for prefix, event, value in self._events:
            if prefix == "projects.item":  # (an entry's own events, not nested ones)
                if event == "start_map":
                    self._name = self._entry_serial = None
                elif event == "end_map":
                    self._add(self._name, self._entry_serial)
                elif event not in ("map_key", "end_array"):  # (not a map: no name)
                    self._add(None, None)
            elif prefix == "projects.item.name":
                self._name = value if event == "string" else None
            elif prefix == "projects.item._last-serial":
                self._entry_serial = _int_or_none(value)
            elif prefix == "projects" and event == "start_array":
                self.has_projects = True
            elif prefix == "meta._last-serial":
                self.serial = _int_or_none(value)
        del self._events[:]

    def _add(self, name: str | None, serial: int | None) -> None:
        self.names.append(name)
        in_column = serial is not None and -2**63 <= serial < 2**63 and \
            serial != Listing.NO_SERIAL
        self.serials.append(serial if in_column else Listing.NO_SERIAL)


class _ListingUnmarshaller(xmlrpc_client.Unmarshaller):
    """Parses ``list_packages_with_serial`` straight into a :class:`Listing`: each member
    of the answer's struct leaves the parser's stack as soon as it is read (the
    standard unmarshaller holds them all, then builds a dict beside them)."""

    def __init__(self):
        super().__init__(use_builtin_types=True)
        self.names: list[str] = []
        self.serials = array("q")
        self._in_fault = False

    def start(self, tag, attrs):
        if tag == "fault":
            self._in_fault = True
        super().start(tag, attrs)

    def end_member(self, data):
        if self._in_fault or len(self._marks) != 1 or len(self._stack) < 2:
            return  # a Fault's own struct, or something nested: left to the standard way
        name, serial = self._stack[-2:]
        if not isinstance(name, str) or not isinstance(serial, int) or \
                isinstance(serial, bool):
            raise xmlrpc_client.ResponseError(f"a listing entry {name!r}: {serial!r}")
        del self._stack[-2:]
        self.names.append(name)
        self.serials.append(serial)

    dispatch = dict(xmlrpc_client.Unmarshaller.dispatch)
    dispatch["member"] = end_member

    def listing(self):
        answer = self.close()  # raises the Fault of a Fault answer
        if len(answer) != 1 or answer[0] != {}:
            return answer[0] if answer else None  # not a struct: the caller says so
        return Listing(self.names, self.serials)


class PyPI:
    """PyPI (or anything that speaks its APIs) at ``url``. ``http`` answers
    ``await http.get(url, headers, on_data=...) -> (status, headers, body)``,
    ``rpc_http`` the XML-RPC POSTs (``request``, with ``on_data`` too, and ``stream``):
    :class:`LeanClient` unless a test gives others (``on_data()`` is to be called as
    the body arrives: the timeout counts from the last bytes). XML-RPC follows no redirect: a moved endpoint is an error that says where."""

    def __init__(self, url: str = PYPI_URL, *, http=None, rpc_http=None, reactor=None,
                 concurrency: int = 10, timeout: float = 30.0, retries: int = 5,
                 backoff: float = 0.5, stale_retries: int = 3,
                 max_retry_after: float = 300.0, rng: random.Random | None = None):
        if reactor is None:
            from twisted.internet import reactor
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
                not math.isfinite(timeout) or timeout <= 0:
            # (0 failed every request, after the retries: ~20 s to say nothing useful)
            raise ValueError(f"timeout is a positive number of seconds, not {timeout!r}")
        # user:password@ in the URL (a private index) is sent as Basic auth, never
        # in the request line.
        self.url, auth = split_credentials(check_index_url(url))
        self.display_url = redact(url if url.endswith("/") else url + "/")
        self._auth = {} if auth is None else {"Authorization": basic_auth(auth)}
        self.xmlrpc_url = self.url + "pypi"
        self._reactor = reactor
        self._http = http if http is not None else LeanClient(
            reactor, max(2, concurrency), gzip=True, follow_redirects=True)
        self._limit = defer.DeferredSemaphore(max(1, concurrency))
        self._rpc_http = rpc_http if rpc_http is not None else LeanClient(reactor, 1, gzip=True)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.stale_retries = stale_retries
        # A server asking to come back later than this is not waited for: the error
        # (with its retry_after) goes to the caller, e.g. a web client waiting.
        self.max_retry_after = max_retry_after
        self._rng = rng or random.Random()
        self.requests = 0
        self.retried = 0
        # --source xmlrpc: whether the index serves PEP 691 Simple pages (an older one
        # may not), where the yanks XML-RPC never said are read
        self.simple_json = True

    def __repr__(self) -> str:
        return f"<PyPI {self.display_url}>"

    def close(self):
        """Close the pooled connections (the daemon does on stop)."""
        return defer.gatherResults([defer.maybeDeferred(self._http.close),
                                    defer.maybeDeferred(self._rpc_http.close)])

    def sleep(self, seconds: float) -> defer.Deferred:
        return task.deferLater(self._reactor, seconds, lambda: None)

    async def _retrying(self, attempt: Callable[[], Awaitable[Any]],
                        before_retry: Callable[[], Awaitable[Any]] | None = None) -> Any:
        """Run ``attempt`` until it does not raise :class:`Transient`, with backoff
        (then ``before_retry``, if given)."""
        for number in range(self.retries + 1):
            try:
                return await attempt()
            except Transient as error:
                if number == self.retries or (error.retry_after or 0) > self.max_retry_after:
                    raise
                self.retried += 1
                delay = error.retry_after
                if delay is None:
                    delay = min(30.0, self.backoff * 2 ** number) * (0.5 + self._rng.random())
                log.debug("retrying in {delay:.1f}s: {error}", delay=delay, error=error)
                await self.sleep(delay)
                if before_retry is not None:
                    await before_retry()

    # -- XML-RPC ---------------------------------------------------------------------

    async def call(self, method: str, *args) -> Any:
        """One XML-RPC call, retried while transient."""
        return await self._retrying(lambda: self._call_once(method, *args))

    async def _call_once(self, method: str, *args) -> Any:
        where = f"{self.display_url}pypi {method}"
        request = xmlrpc_client.dumps(args, method, allow_none=True).encode("utf-8")
        self.requests += 1
        status, headers, body = await self._within_timeout(
            lambda alive: self._rpc_http.request("POST", self.xmlrpc_url,
                                                 {**RPC_HEADERS, **self._auth}, request,
                                                 on_data=alive),
            where)
        if status != 200:
            raise _rpc_status_error(status, headers, where)
        try:
            return xmlrpc_client.loads(body)[0][0]
        except xmlrpc_client.Fault as fault:
            raise classify_fault(fault, where) from None
        except Exception as error:  # not XML, or no value in it
            raise Transient(f"bad answer ({type(error).__name__})", where) from None

    async def _within_timeout(self, send: Callable[[Callable[[], None]], Awaitable[tuple]],
                              where: str) -> tuple[int, dict[str, str], bytes]:
        """``send(alive)``'s answer, given up once the timeout passes with nothing
        received (:class:`Transient`, as is no answer at all). ``send`` calls
        ``alive()`` as the body arrives: the timeout is for an answer that stops, not
        for one that takes long to stream (PyPI's listing is 57 MB of XML, its Simple
        index 30 MB of JSON). A caller's cancel stays a cancel, not to be retried."""
        timed_out = []

        def on_timeout():
            timed_out.append(True)
            d.cancel()

        def alive():
            if timer.active():
                timer.reset(self.timeout)

        timer = self._reactor.callLater(self.timeout, on_timeout)
        d = defer.ensureDeferred(send(alive))
        try:
            return await d
        except PyPIError:
            raise  # (the listing's parser: a bad answer)
        except Exception as error:
            if timed_out:
                raise Transient(f"nothing received for {self.timeout:g}s", where) from None
            if is_cancellation(error):
                # The caller gave up (a web client left): not PyPI's doing, and
                # not to be retried.
                raise defer.CancelledError() from None
            if isinstance(error, (ierror.ConnectionRefusedError, ierror.DNSLookupError)):
                raise Transient(_unreachable(error), where) from None
            if is_tls_refusal(error):
                raise PyPIError(f"PyPI's {TLS_REFUSED}", where) from None
            # resets, truncated bodies
            raise Transient(f"connection failed ({type(error).__name__})", where) from None
        finally:
            if timer.active():
                timer.cancel()

    async def _listing_once(self) -> Any:
        """``list_packages_with_serial``, its XML parsed as it arrives: at PyPI's size
        (700,000 projects, ~57 MB of XML) the answer is never held whole, and the
        parsing overlaps the transfer."""
        where = f"{self.display_url}pypi list_packages_with_serial"
        unmarshaller = _ListingUnmarshaller()
        parser = xmlrpc_client.ExpatParser(unmarshaller)
        request = xmlrpc_client.dumps((), "list_packages_with_serial").encode("utf-8")
        self.requests += 1

        def parse(chunk: bytes, alive: Callable[[], None]) -> None:
            alive()
            try:
                parser.feed(chunk)
            except Exception as error:  # not XML, or not a listing (a Fault shows at close)
                raise Transient(f"bad answer ({type(error).__name__})", where) from None

        status, headers, _ = await self._within_timeout(
            lambda alive: self._rpc_http.stream(
                "POST", self.xmlrpc_url, {**RPC_HEADERS, **self._auth}, request,
                lambda chunk: parse(chunk, alive)),
            where)
        if status != 200:
            raise _rpc_status_error(status, headers, where)
        try:
            parser.close()
            return unmarshaller.listing()
        except xmlrpc_client.Fault as fault:
            raise classify_fault(fault, where) from None
        except Exception as error:  # not XML, or cut short
            raise Transient(f"bad answer ({type(error).__name__})", where) from None

    async def xmlrpc_answers(self) -> bool:
        """Whether the XML-RPC changelog answers again (one call, not retried)."""
        try:
            await self._call_once("changelog_last_serial")
        except PyPIError:
            return False
        return True

    async def changelog_last_serial(self) -> int:
        serial = await self.call("changelog_last_serial")
        if serial is None:
            return 0
        if not isinstance(serial, int):
            raise PyPIError(f"changelog_last_serial answered {type(serial).__name__}",
                            self.xmlrpc_url)
        return serial

    async def changelog_since_serial(self, serial: int) -> list[list]:
        rows = await self.call("changelog_since_serial", serial)
        if not isinstance(rows, list):
            raise PyPIError("changelog_since_serial did not answer a list", self.xmlrpc_url)
        bad = next((row for row in rows if not _is_changelog_row(row, serial)), None)
        if bad is not None:  # (its serial would be the next checkpoint)
            raise PyPIError(f"changelog_since_serial answered a malformed row: "
                            f"{reprlib.repr(bad)}", self.xmlrpc_url)
        return rows

    async def list_packages_with_serial(self) -> Listing:
        listing = await self._retrying(self._listing_once)
        if not isinstance(listing, Listing):
            raise PyPIError("list_packages_with_serial did not answer a struct",
                            self.xmlrpc_url)
        return listing

    # -- HTTP (JSON and Simple APIs) -------------------------------------------------

    async def _get(self, path: str, accept: str = "application/json"
                   ) -> tuple[int, dict[str, str], bytes]:
        url = self.url + path
        shown = self.display_url + path
        async with self._limit:
            self.requests += 1
            status, headers, body = await self._within_timeout(
                lambda alive: self._fetch(url, accept, alive), shown)
        if status == 429 or status >= 500:
            raise _status_error(status, headers, shown)
        return status, headers, body

    async def _fetch(self, url: str, accept: str, alive: Callable[[], None]):
        return await self._http.get(url, {"Accept": accept, "User-Agent": USER_AGENT,
                                          **self._auth}, on_data=alive)

    @staticmethod
    def _parse_json(body: bytes, where: str) -> Any:
        try:
            return jsonio.loads(body)
        except ValueError:
            raise Transient("malformed JSON", where) from None

    async def simple_project(self, name: str) -> tuple[int | None, str, int] | None:
        """``(serial, status, number of files)`` from ``/simple/<name>/`` (PEP 691),
        None if 404."""
        found = await self.simple_page(name)
        return None if found is None else (found[0], found[1], len(found[2]))

    async def simple_page(self, name: str) -> tuple[int | None, str, list[dict]] | None:
        """``(serial, status, files)`` from ``/simple/<name>/`` (PEP 691), None if 404."""
        path = f"simple/{normalize(name)}/"

        async def attempt():
            status, headers, body = await self._get(path, V1_JSON)
            if status == 404:
                return None
            if status == 406 or status == 200 and "json" not in headers.get(
                    "content-type", "json"):
                raise NotPep691(f"not PEP 691 JSON ({headers.get('content-type')})"
                                if status == 200 else status_line(status),
                                self.display_url + path)
            if status != 200:
                raise PyPIError(status_line(status), self.display_url + path)
            page = self._parse_json(body, self.display_url + path)
            if not isinstance(page, dict):
                raise Transient("malformed Simple page", self.display_url + path)
            serial = _serial(headers, _meta_serial(page))
            files = page.get("files")
            marker = page.get("project-status") or {}  # (PEP 792: none means active)
            if not isinstance(marker, dict) or not isinstance(
                    marker.get("status", "active"), str):
                raise Transient("malformed Simple page (project-status)",
                                self.display_url + path)
            if not isinstance(files, list):  # (PEP 691 requires it: not "no files",
                # which would remove every stored release)
                raise Transient("malformed Simple page (files)", self.display_url + path)
            files = [f for f in files if isinstance(f, dict)]
            return serial, marker.get("status", "active"), files

        return await self._retrying(attempt)

    async def simple_index(self) -> tuple[int | None, Listing]:
        """``(global serial, Listing of {display name: last serial})`` from the PEP 691
        index, parsed as it arrives (:class:`_IndexReader`)."""
        where = self.display_url + "simple/"
        headers = {"Accept": V1_JSON, "User-Agent": USER_AGENT, **self._auth}

        async def attempt():
            reader = _IndexReader()

            def read(chunk: bytes, alive: Callable[[], None]) -> None:
                alive()
                try:
                    reader.feed(chunk)
                except (ijson.JSONError, ValueError):  # (bad UTF-8: UnicodeDecodeError)
                    raise Transient("malformed JSON", where) from None

            async with self._limit:
                self.requests += 1
                status, found, _ = await self._within_timeout(
                    lambda alive: self._http.stream(
                        "GET", self.url + "simple/", headers, None,
                        lambda chunk: read(chunk, alive)),
                    where)
            if status == 429 or status >= 500:
                raise _status_error(status, found, where)
            if status != 200:
                raise PyPIError(status_line(status), where)
            try:
                listing = reader.listing()
            except (ijson.JSONError, ValueError):
                raise Transient("malformed JSON", where) from None
            if not reader.has_projects:
                raise Transient("malformed Simple index", where)
            if not all(isinstance(name, str) for name in listing.names):
                raise Transient("malformed Simple index: an entry without a name", where)
            return _serial(found, reader.serial), listing

        return await self._retrying(attempt)

    async def project(self, name: str, min_serial: int | None = None) -> ProjectAnswer:
        """What PyPI says of ``name`` now, at least as new as ``min_serial``."""
        key = normalize(name)
        path = f"pypi/{key}/json"
        where = self.display_url + path

        async def attempt():
            status, headers, body = await self._get(path)
            return status, headers, self._parse_json(body, where) if status == 200 else None

        async def ask() -> ProjectAnswer | None:
            status, headers, payload = await self._retrying(attempt)
            if status == 404:
                return await self._project_without_json(name, key)
            if status != 200:
                raise PyPIError(status_line(status), where)
            serial = _serial(headers, payload.get("last_serial")
                             if isinstance(payload, dict) else None)
            return ProjectAnswer(key, "project", payload, serial)

        def fresh(answer: ProjectAnswer | None) -> bool:
            # A 404 for a project the changelog says changed at ``min_serial`` is a
            # CDN's cached "not found" of a project new since (a removal comes as its
            # own changelog row, and is never asked about): stale too.
            return answer is not None and (min_serial is None or (
                answer.kind != "gone" and (
                    answer.serial is None or answer.serial >= min_serial)))

        answer = await self._until_fresh(ask, fresh)
        if fresh(answer):
            return answer
        if answer is None:
            raise StaleAnswer("stale: the JSON API answers 404 while the Simple page lists "
                              f"files, after {self.stale_retries} retries", where)
        seen = "404" if answer.kind == "gone" else f"serial {answer.serial}"
        raise StaleAnswer(f"stale: {seen} where the changelog has serial {min_serial}, "
                          f"after {self.stale_retries} retries", where)

    async def release(self, name: str, version: str,
                      before_retry: Callable[[], Awaitable[Any]] | None = None,
                      min_serial: int | None = None, missing_ok: bool = False
                      ) -> dict | None:
        """PyPI's per-version JSON API answer (``/pypi/<name>/<version>/json``): the
        only place a release that is not the latest shows its own metadata. None when
        PyPI does not know the release (404). ``before_retry`` is awaited before each
        attempt after the first (a pace every request keeps). With ``min_serial`` (the
        project's answer lists the release), an answer older than that, or a 404 (unless
        ``missing_ok``: listed a while ago, it may be removed since), is a CDN's stale
        copy: asked again, then :class:`StaleAnswer`."""
        path = f"pypi/{normalize(name)}/{quote(version, safe='!+')}/json"
        where = self.display_url + path

        async def attempt():
            status, headers, body = await self._get(path)
            if status == 404:
                return None, None
            if status != 200:
                raise PyPIError(status_line(status), where)
            payload = self._parse_json(body, where)
            if not isinstance(payload, dict):
                raise Transient("malformed JSON API answer", where)
            return payload, _serial(headers, payload.get("last_serial"))

        def fresh(answer: tuple[dict | None, int | None]) -> bool:
            payload, serial = answer
            if min_serial is None or payload is None:
                return min_serial is None or missing_ok
            return serial is None or serial >= min_serial

        payload, serial = answer = await self._until_fresh(
            lambda: self._retrying(attempt, before_retry), fresh)
        if fresh(answer):
            return payload
        seen = "404" if payload is None else f"serial {serial}"
        raise StaleAnswer(f"stale: {seen} where the project's answer has serial "
                          f"{min_serial}, after {self.stale_retries} retries", where)

    async def _until_fresh(self, ask: Callable[[], Awaitable[Any]],
                           fresh: Callable[[Any], bool]) -> Any:
        """``await ask()`` until ``fresh`` holds of its answer, at most
        ``stale_retries`` more times, a growing pause between (a CDN's stale copy is
        refreshed in moments, not at once); the last answer, fresh or not."""
        for stale_try in range(self.stale_retries + 1):
            if stale_try:
                await self.sleep(1.0 * stale_try)
            answer = await ask()
            if fresh(answer):
                break
        return answer

    async def _project_without_json(self, name: str, key: str) -> ProjectAnswer | None:
        """What a 404 from the JSON API means: gone (the Simple page is 404 too), or a
        project without releases (its Simple page lists no file). None when the Simple
        page lists files: the 404 was a stale copy (a CDN's cached "not found")."""
        found = await self.simple_project(key)
        if found is None:
            return ProjectAnswer(key, "gone")
        serial, status, files = found
        if files:
            return None
        return ProjectAnswer(key, "empty", serial=serial, status=status,
                             payload={"name": name})

    async def legacy_project(self, name: str, min_serial: int | None = None) -> ProjectAnswer:
        """The same answer as :meth:`project`, from the pre-2024 XML-RPC methods.
        Those never said a release was yanked, nor whether a file's metadata is apart
        (PEP 658): its Simple page, read first, says both. Asked without a serial (a
        project missing from a listing, a retry), the serial is that page's too: never
        newer than the data read after it."""
        key = normalize(name)
        page = None
        if min_serial is None:
            page = await self.simple_page(key)
            min_serial = page[0] if page is not None else None
        elif self.simple_json:
            # The page says the yanks: one older than the changelog's serial (a CDN's
            # copy) would store a yank made since as not yanked, at that serial.
            try:
                page = await self._until_fresh(
                    lambda: self.simple_page(key),
                    lambda page: page is None or page[0] is None or page[0] >= min_serial)
            except NotPep691 as error:  # (then no page is asked for again)
                self.simple_json = False
                log.warn("{where} does not serve PEP 691 Simple pages ({error}): yanks "
                         "and PEP 658 metadata, which XML-RPC does not say, are not "
                         "mirrored", where=self.display_url, error=error)
            if page is not None and page[0] is not None and page[0] < min_serial:
                raise StaleAnswer(f"stale: the Simple page has serial {page[0]} where the "
                                  f"changelog has serial {min_serial}, after "
                                  f"{self.stale_retries} retries",
                                  f"{self.display_url}simple/{key}/")
        on_page = {f.get("filename"): f for f in (page[2] if page is not None else [])}
        versions = await self.call("package_releases", name, True)
        if not versions:
            answer = await self._project_without_json(name, key)
            if answer is None:
                raise StaleAnswer("package_releases lists none while the Simple page lists "
                                  "files", self.xmlrpc_url)
            if answer.kind == "gone" and min_serial is not None:
                # As for the JSON API's 404 (:meth:`project`): a removal comes as its
                # own changelog row, never asked about; this is a copy from before.
                raise StaleAnswer(f"stale: 404 where the changelog has serial "
                                  f"{min_serial}", self.display_url + f"simple/{key}/")
            return answer
        # Without show_hidden: the JSON API's latest (not yanked, final preferred), not
        # simply the newest (the first of ``versions``), which may be a pre-release.
        latest = (await self.call("package_releases", name) or versions)[0]
        releases, latest_data = {}, None
        for version in versions:
            data = await self.call("release_data", name, version)
            files = await self.call("release_urls", name, version)
            releases[version] = [_json_file(f, data.get("requires_python"),
                                            on_page.get(f.get("filename")) or {})
                                 for f in files]
            if version == latest or latest_data is None and latest not in versions:
                latest_data = data
        info = _json_info(latest_data)
        latest_files = releases.get(info["version"]) or []
        if latest_files and all(f["yanked"] for f in latest_files):
            info.update(yanked=True, yanked_reason=latest_files[0]["yanked_reason"])
        payload = {"info": info, "releases": releases, "urls": releases[info["version"]],
                   "last_serial": min_serial, "vulnerabilities": []}
        return ProjectAnswer(key, "project", payload, min_serial)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _meta_serial(page: dict) -> Any:
    meta = page.get("meta")
    return meta.get("_last-serial") if isinstance(meta, dict) else None


def _is_changelog_row(row: Any, after: int) -> bool:
    """``[name, version, timestamp, action, serial]`` (reference §2), the serial past
    the one asked after."""
    return (isinstance(row, (list, tuple)) and len(row) >= 5
            and isinstance(row[0], (str, type(None))) and isinstance(row[1], (str, type(None)))
            and isinstance(row[3], (str, type(None)))
            and _int_or_none(row[4]) is not None and row[4] > after)


def _serial(headers: dict[str, str], body_serial: Any) -> int | None:
    try:
        return int(headers.get("x-pypi-last-serial"))  # type: ignore[arg-type]
    except (TypeError, ValueError):  # none, or not a number ("12, 12": a proxy's merge)
        return body_serial if isinstance(body_serial, int) else None


def _rpc_status_error(status: int, headers: dict[str, str], where: str) -> PyPIError:
    """An XML-RPC call's answer that is not 200: the endpoint gone, or as any other."""
    if status in ENDPOINT_GONE:
        return EndpointGone(status, where)
    return _status_error(status, headers, where)


def _status_error(status: int, headers: dict[str, str], where: str) -> PyPIError:
    """An answer that is not the one asked for: 429 and 5xx are worth trying again
    (after ``Retry-After``, when given); a redirect says where to."""
    text = status_line(status)
    if 300 <= status < 400 and headers.get("location"):
        text += f", to {redact(headers['location'])}"
    if status != 429 and status < 500:
        return PyPIError(text, where)
    error = Transient(text, where)
    error.retry_after = _retry_after(headers.get("retry-after"))
    return error


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds, when it is a sane number of them (a day at most);
    None (our own backoff) for a date, garbage, or less."""
    try:
        seconds = float(value or "")
    except ValueError:
        return None
    return min(seconds, 86400.0) if math.isfinite(seconds) and seconds >= 0 else None


def _unreachable(error: Exception) -> str:
    if isinstance(error, ierror.DNSLookupError):
        return "PyPI's host name does not resolve"
    return "PyPI refused the connection"


def _json_info(data: dict) -> dict:
    """``release_data`` (XML-RPC) -> the JSON API's ``info``."""
    urls = {}
    if data.get("home_page"):
        urls["Homepage"] = data["home_page"]
    if data.get("download_url"):
        urls["Download"] = data["download_url"]
    for item in data.get("project_url") or []:
        label, _, link = item.partition(", ")
        urls[label] = link
    keys = ("author", "author_email", "classifiers", "description", "docs_url",
            "download_url", "home_page", "keywords", "license", "maintainer",
            "maintainer_email", "name", "package_url", "platform", "release_url",
            "requires_dist", "requires_python", "summary", "version", "bugtrack_url")
    info = {k: data.get(k) for k in keys}
    info.update(project_urls=urls or None, project_url=data.get("package_url"),
                yanked=False, yanked_reason=None, downloads=data.get("downloads"),
                description_content_type=None, license_expression=None,
                license_files=None, provides_extra=None, dynamic=None)
    return info


def _iso_z(text: str) -> str:
    """An XML-RPC dateTime's text as ``yyyy-mm-ddThh:mm:ssZ`` (the text as it is when
    it is in none of the forms servers write)."""
    for form in ("%Y%m%dT%H:%M:%S", "%Y%m%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S",
                 "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, form).strftime("%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            pass
    return text


def _json_file(entry: dict, requires_python: str | None, on_page: dict) -> dict:
    """One ``release_urls`` struct -> a JSON API file entry; what XML-RPC never said
    (yanked, PEP 658 metadata) from the file's entry on the Simple page (PEP 691)."""
    iso = entry.get("upload_time_iso_8601") or entry.get("upload_time") or ""
    if isinstance(iso, xmlrpc_client.DateTime):  # (an older server's dateTime.iso8601)
        iso = _iso_z(iso.value)
    iso = iso if isinstance(iso, str) else str(iso)
    yanked = on_page.get("yanked", False)
    metadata = on_page.get("core-metadata", on_page.get("data-dist-info-metadata", False))
    digests = dict(entry.get("digests") or {})
    digests.setdefault("md5", entry.get("md5_digest"))
    digests.setdefault("sha256", entry.get("sha256_digest"))
    return {
        "comment_text": entry.get("comment_text"), "digests": digests,
        "downloads": entry.get("downloads", -1), "filename": entry["filename"],
        "has_sig": entry.get("has_sig", False), "md5_digest": entry.get("md5_digest"),
        "packagetype": entry.get("packagetype"), "python_version": entry.get("python_version"),
        "requires_python": requires_python, "size": entry.get("size"),
        "upload_time": iso[:19] if iso else None, "upload_time_iso_8601": iso or None,
        "url": entry.get("url"), "yanked": yanked is True or isinstance(yanked, str),
        "yanked_reason": yanked or None if isinstance(yanked, str) else None,
        "core-metadata": metadata if isinstance(metadata, dict) else False,
    }

"""Our asynchronous CouchDB client, on treq.

Written to what Apache CouchDB 3.x and pouchdb-server both do (DESIGN.md, "CouchDB,
for real"):

- ``seq`` values are opaque: stored and passed back as they came, never compared;
- credentials come from the URL (``http://user:pw@host:5984/``) and go out as Basic
  auth; the password never appears in a ``repr``, a log line or an error;
- ``_bulk_docs`` answers per document: a conflict is a per-document result;
- every request has a timeout; failures are typed (:class:`NotFound`,
  :class:`Conflict`, :class:`Unauthorized`, :class:`Unreachable`, :class:`Timeout`,
  :class:`BadResponse`) and name the (redacted) URL and the status;
- the continuous ``_changes`` stream is read through an agent that does not ask for
  gzip: treq's decompressing agent would hold every line until the connection ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote, urlencode

import ijson
import treq
from twisted.internet import defer
from twisted.internet import error as ierror
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers

from pypioncouch import __version__
from pypioncouch.http import (
    TLS_REFUSED, LeanClient, is_cancellation, is_tls_refusal, quiet_pool)
from pypioncouch import jsonio
from pypioncouch.urls import basic_auth, redact_text, split_credentials

log = Logger()

# Connections kept open to CouchDB. Beyond them, each request opens and closes one of
# its own: the web front reads a project and its releases at once, so 32 readers make
# 64 requests, and a pool of 32 opened hundreds of connections a second (measured:
# 10-20 % more cold reads with 96, bench/RESULTS.md).
POOLED_CONNECTIONS = 96
DEFAULT_TIMEOUT = 30.0
USER_AGENT = f"pypioncouch/{__version__}"
# Answers of rows (``_all_docs``, views) up to this size are read whole and parsed at
# once (orjson, about 3.5 times as fast as parsing row by row); a larger one is parsed
# row by row as it arrives, so what the reader drops from each row is never held.
WHOLE_ANSWER_BYTES = 1024 * 1024
# Query parameters CouchDB wants as JSON values (keys may be strings, lists, ...).
_JSON_PARAMS = {"key", "keys", "startkey", "endkey", "start_key", "end_key"}


class CouchError(Exception):
    """A CouchDB request failed. ``str()`` is one line naming the redacted URL."""

    def __init__(self, message: str, *, url: str = "", status: int | None = None):
        self.message = message
        self.url = url
        self.status = status
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" ({self.status} from {self.url})" if self.status else (
            f" ({self.url})" if self.url else "")
        return f"{self.message}{where}"


class NotFound(CouchError):
    """404: no such database, document, attachment or view."""


class NoDatabase(CouchError):
    """The database is not there, where a 404 could also mean a document is not
    (pouchdb-server says "missing" of both): trouble, never "not stored"."""


class Conflict(CouchError):
    """409: the document changed since the revision we sent (or it exists)."""


class PreconditionFailed(CouchError):
    """412: e.g. the database already exists."""


class DocumentTooLarge(CouchError):
    """Apache CouchDB refused a request for one document over its ``max_document_size``
    (a ``_bulk_docs`` is refused whole for it): ``docid`` names it."""

    def __init__(self, message: str, *, docid: str, **kwargs):
        self.docid = docid
        super().__init__(message, **kwargs)


class Unauthorized(CouchError):
    """401/403: wrong or missing credentials, or not allowed."""


class LockedOut(Unauthorized):
    """403 from Apache CouchDB 3.4+'s ``[chttpd_auth_lockout]``: after a few failed
    logins, the user is refused for minutes, its right password too."""


class Unreachable(CouchError):
    """No connection: refused, no such host, or the connection was lost."""

    connection_lost = False  # True when a connection was made, then lost


class TLSRefused(Unreachable):
    """We broke off the TLS handshake: CouchDB's certificate is not trusted, or names
    another host."""


class Timeout(CouchError):
    """The server did not answer within the request's timeout."""


class BadResponse(CouchError):
    """The server answered, but not as CouchDB would (HTML, bad JSON, 5xx...)."""


class NotTheServer(BadResponse):
    """A server's URL that names the database ``db_name`` (one segment too many)."""

    def __init__(self, message: str, *, db_name: str, url: str = ""):
        self.db_name = db_name
        super().__init__(message, url=url)


@dataclass(frozen=True)
class BulkResult:
    """The outcome of one document of a ``_bulk_docs`` request."""

    id: str
    rev: str | None = None
    error: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def encode_params(params: dict[str, Any]) -> str:
    """CouchDB query string: keys as JSON, booleans as ``true``/``false``; seqs opaque."""
    pairs = []
    for name, value in params.items():
        if value is None:
            continue
        if name in _JSON_PARAMS:
            value = json.dumps(value, separators=(",", ":"))
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif not isinstance(value, str):
            value = json.dumps(value)
        pairs.append((name, value))
    return urlencode(pairs)


def doc_path(docid: str) -> str:
    """The URL path of a document id; ``_design/`` and ``_local/`` keep their slash."""
    for prefix in ("_design/", "_local/"):
        if docid.startswith(prefix):
            return prefix + quote(docid[len(prefix):], safe="")
    return quote(docid, safe="")


def revision_order(doc: dict) -> tuple:
    """How CouchDB orders a document's leaf revisions, the one it serves highest: a
    live one before a deleted one, then the longest history, then the greater id."""
    generation, _, rev_id = str(doc.get("_rev", "0-")).partition("-")
    return (not doc.get("_deleted"), int(generation) if generation.isdigit() else 0, rev_id)


def winning_revision(leaves: list[dict]) -> dict | None:
    """The revision a GET would answer among a document's leaf revisions (Apache
    CouchDB's ``_bulk_get`` answers every leaf of a conflicted document)."""
    return max(leaves, key=revision_order, default=None)


def found_revisions(entries: list) -> list[dict]:
    """The documents of an ``open_revs`` or ``_bulk_get`` answer's entries (``{"ok":
    doc}``; ``{"missing": rev}`` and errors left out)."""
    return [entry["ok"] for entry in entries or [] if isinstance(entry, dict) and "ok" in entry]


# Per-document errors of a _bulk_get answer that say the document is not there (Apache
# CouchDB: missing or deleted, or an id no document can have); pouchdb-server says {}.
NOT_THERE = ("not_found", "illegal_docid")


def read_error(entries: list) -> str | None:
    """The first error of a ``_bulk_get`` result's entries that does not say the
    document is not there (a cluster's shard that did not answer in time): such a
    document may be stored, and taken for missing it would be written anew, or its
    project's OPML left as it was. None when there is none."""
    for entry in entries or []:
        error = entry.get("error") if isinstance(entry, dict) else None
        if isinstance(error, dict) and error.get("error") not in NOT_THERE:
            return f"{error.get('error')}: {error.get('reason')}"
    return None


def refusal(user: str, database: str, status: int | None, *, writes: bool = True) -> str:
    """What a 401 or 403 from ``database`` means, for a person: 401 is who we are (no
    or wrong credentials), 403 what that user may do. One that ``writes`` (syncs:
    the design document too) must be an admin of the database; a reader, a member."""
    if status == 401:
        return (f"CouchDB does not accept {user}: wrong user name or password"
                if user != "an anonymous client" else
                "CouchDB asks who we are: give user:password@ in the CouchDB URL")
    role = "an admin of that database" if writes else "one of that database's members"
    return f"CouchDB {user} may not read the database {database!r}: make it {role} " \
        "(its _security)"


def _error_for_status(status: int) -> type[CouchError]:
    return {404: NotFound, 409: Conflict, 412: PreconditionFailed, 401: Unauthorized,
            403: Unauthorized}.get(status, BadResponse)


class CouchDB:
    """A CouchDB server. ``CouchDB("http://admin:secret@localhost:5984/")``.

    ``http`` is a :class:`~pypioncouch.http.LeanClient`-like object.
    """

    def __init__(self, url: str, *, http=None, reactor=None, timeout: float = DEFAULT_TIMEOUT):
        if reactor is None:
            from twisted.internet import reactor
        self.url, self._auth = split_credentials(url)
        self._reactor = reactor
        self._http = http if http is not None else LeanClient(reactor, POOLED_CONNECTIONS)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<CouchDB {self.display_url}>"

    @property
    def display_url(self) -> str:
        """The server URL as it may be shown: user kept, password hidden."""
        if self._auth is None:
            return self.url
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://{quote(self._auth[0], safe='')}:***@{rest}"

    @property
    def url_with_credentials(self) -> str:
        """For CouchDB itself (replication bodies); never log it."""
        if self._auth is None:
            return self.url
        scheme, rest = self.url.split("://", 1)
        user, password = (quote(part, safe="") for part in self._auth)
        return f"{scheme}://{user}:{password}@{rest}"

    @property
    def user(self) -> str:
        """Who we are to CouchDB, as error messages name it."""
        return f"user {self._auth[0]!r}" if self._auth else "an anonymous client"

    def close(self):
        """Close the pooled connections (the daemon does on stop)."""
        return self._http.close()

    def database(self, name: str) -> "Database":
        return Database(self, name)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self._auth is not None:
            headers["Authorization"] = basic_auth(self._auth)
        if extra:
            headers.update(extra)
        return headers

    async def request(self, method: str, path: str, *, read: bool | None = None,
                      **options) -> Any:
        """One request (see :meth:`_request_once`). A read that finds its pooled
        connection closed by the server (keep-alive race) is tried once more: a GET or
        HEAD, or a POST that only reads (``read=True``: ``keys`` too many for a URL)."""
        try:
            return await self._request_once(method, path, **options)
        except Unreachable as error:
            reads = method in ("GET", "HEAD") if read is None else read
            if not reads or not error.connection_lost:
                raise
            return await self._request_once(method, path, **options)

    async def _request_once(self, method: str, path: str, *, params: dict | None = None,
                      body: Any = None, data: bytes | None = None,
                      headers: dict[str, str] | None = None, timeout: float | None = None,
                      raw: bool = False, sink: Callable[[bytes], None] | None = None) -> Any:
        """One request. Returns parsed JSON (or ``(bytes, content type)`` with ``raw``).

        ``body`` is sent as JSON with ``Content-Type: application/json``. With ``sink``,
        a 2xx answer's body goes to it as it arrives (``raw`` then returns ``b""``).
        """
        query = "?" + encode_params(params) if params else ""
        url = self.url + path + query
        shown = self.display_url + path + query
        extra = dict(headers or {})
        if body is not None:
            data = jsonio.dumps_utf8(body)
            extra["Content-Type"] = "application/json"
        timed_out = []
        d = defer.ensureDeferred(self._send(method, url, data, self._headers(extra), sink))

        def on_timeout():
            timed_out.append(True)
            d.cancel()

        timer = self._reactor.callLater(timeout or self.timeout, on_timeout)
        try:
            status, content_type, content = await d
        except Exception as exc:
            if is_cancellation(exc) and not timed_out:
                # The caller gave up (a web client left): not CouchDB's doing, and
                # not to be retried.
                raise defer.CancelledError() from None
            if timed_out:
                raise Timeout(f"CouchDB did not answer {method} within "
                              f"{timeout or self.timeout:g}s", url=shown) from None
            raise _transport_error(exc, shown) from None
        finally:
            if timer.active():
                timer.cancel()
        return _interpret(method, shown, status, content_type, content, raw)

    async def _send(self, method, url, data, headers, sink=None):
        if sink is None:
            status, found, content = await self._http.request(method, url, headers, data)
        else:
            status, found, content = await self._http.stream(method, url, headers, data, sink)
        return status, found.get("content-type", ""), content

    async def info(self, timeout: float | None = None) -> dict:
        """``GET /``: the server's welcome (version, vendor). Proves it is CouchDB."""
        try:
            info = await self.request("GET", "", timeout=timeout)
        except NotFound:  # (a database's URL, of one not there: CouchDB's no_db_file)
            raise BadResponse("nothing answers at this URL: give the CouchDB "
                              "server's URL, such as http://localhost:5984/ (the "
                              "database is named apart, --db)", url=self.display_url,
                              status=404) from None
        if isinstance(info, dict) and isinstance(info.get("db_name"), str):
            raise NotTheServer(f"this URL names the database {info['db_name']!r}, not "
                               f"the server: give the server's URL (and --db "
                               f"{info['db_name']})", db_name=info["db_name"],
                               url=self.display_url)
        if not isinstance(info, dict) or not ({"couchdb", "express-pouchdb"} & set(info)):
            raise BadResponse("the server answered, but it is not CouchDB", url=self.display_url)
        return info

    async def is_admin(self) -> bool:
        """Whether our credentials make us a server admin (``GET /_session``)."""
        session = await self.request("GET", "_session")
        roles = ((session or {}).get("userCtx") or {}).get("roles") or []
        return "_admin" in roles

    async def all_dbs(self) -> list[str]:
        return await self.request("GET", "_all_dbs")

    async def replicate(self, source: str, target: str, *, continuous: bool = False,
                        create_target: bool = True, timeout: float = 24 * 3600) -> dict:
        """``POST /_replicate``. ``source``/``target`` are database URLs (credentials
        included, as CouchDB needs them); the answer is CouchDB's."""
        body = {"source": source, "target": target, "create_target": create_target}
        if continuous:
            body["continuous"] = True
        return await self.request("POST", "_replicate", body=body, timeout=timeout)

    def stream_agent(self) -> Agent:
        """An agent that does not ask for gzip (see the module docstring)."""
        return Agent(self._reactor, pool=quiet_pool(self._reactor, persistent=False))


def _transport_error(exc: Exception, url: str) -> CouchError:
    if isinstance(exc, CouchError):
        return exc
    if is_tls_refusal(exc):
        return TLSRefused(f"CouchDB's {TLS_REFUSED}", url=url)
    reasons = exc.reasons if isinstance(exc, ResponseFailed) else [Failure(exc)]
    for reason in reasons:
        if reason.check(ierror.ConnectionRefusedError):
            return Unreachable("CouchDB refused the connection: is it running?", url=url)
        if reason.check(ierror.DNSLookupError):
            return Unreachable("CouchDB's host name does not resolve", url=url)
        if reason.check(ierror.TimeoutError):
            return Timeout("connecting to CouchDB timed out", url=url)
    error = Unreachable(f"no answer from CouchDB ({type(exc).__name__})", url=url)
    error.connection_lost = True
    return error


def _interpret(method, url, status, content_type, content, raw):
    if 200 <= status < 300 and raw:
        return content, content_type
    parsed = None
    if "json" in content_type or content[:1] in (b"{", b"["):
        try:
            parsed = jsonio.loads(content)
        except ValueError:
            parsed = None
    if 200 <= status < 300:
        if parsed is None and content.strip():
            raise BadResponse(f"{method} answered {content_type or 'something'} that is "
                              "not JSON: is this CouchDB?", url=url, status=status)
        return parsed
    reason = ""
    if isinstance(parsed, dict):
        # (redacted: a replication's error may quote the URL it was given, password and all)
        reason = redact_text(": ".join(str(parsed[k]) for k in ("error", "reason")
                                       if parsed.get(k)))
    elif "html" in content_type:
        reason = "an HTML page (is this CouchDB?)"
    message = f"{method} failed" + (f": {reason}" if reason else "")
    if status == 413 and isinstance(parsed, dict) and parsed.get(
            "error") == "document_too_large" and isinstance(parsed.get("reason"), str):
        raise DocumentTooLarge(message, docid=parsed["reason"], url=url, status=status)
    if status == 403 and isinstance(parsed, dict) and "temporarily locked" in str(
            parsed.get("reason")):
        raise LockedOut("CouchDB refuses this user for a few minutes after failed logins "
                        "(a wrong password?): check the password in the URL, then wait "
                        "(Apache CouchDB's [chttpd_auth_lockout])", url=url, status=status)
    raise _error_for_status(status)(message, url=url, status=status)


class Database:
    """One database on a :class:`CouchDB` server."""

    def __init__(self, server: CouchDB, name: str):
        self.server = server
        self.name = name
        self.path = quote(name, safe="") + "/"
        # Called when :meth:`ensure` has created the database: a feed still open on a
        # deleted one (pouchdb-server keeps it) must start over on the new one.
        self.on_created: list[Callable[[], Any]] = []

    def __repr__(self) -> str:
        return f"<Database {self.server.display_url}{self.name}>"

    @property
    def display_url(self) -> str:
        return self.server.display_url + self.name

    @property
    def url_with_credentials(self) -> str:
        return self.server.url_with_credentials + quote(self.name, safe="")

    def _request(self, method, path="", **kwargs):
        return self.server.request(method, self.path + path, **kwargs)

    async def info(self, timeout: float | None = None) -> dict:
        return await self._request("GET", timeout=timeout)

    async def exists(self) -> bool:
        try:
            await self._request("HEAD")
        except NotFound:
            return False
        except Unauthorized as error:
            if error.status == 403:  # (a HEAD's answer has no body to say why)
                try:
                    await self._request("GET")  # a lockout is said as such
                except NotFound:
                    return False
            raise
        return True

    async def ensure(self) -> bool:
        """Create the database unless it exists. True if it was created.

        Apache CouchDB 3 lets only a server admin create a database, and by default
        only the database's admins use it: a user without those rights gets one line
        saying which right is missing."""
        try:
            if await self.exists():
                return False
        except LockedOut:
            raise
        except Unauthorized as error:
            raise Unauthorized(refusal(self.server.user, self.name, error.status),
                               url=error.url, status=error.status) from None
        cannot_create = Unauthorized(
            f"CouchDB {self.server.user} may not create the database {self.name!r}: "
            "create it as a server admin and make this user its admin (_security), "
            "or use a server admin", url=self.display_url)
        # Asked first: pouchdb-server leaves a non-admin's PUT /db unanswered.
        if not await self.server.is_admin():
            raise cannot_create
        try:
            await self._request("PUT")
        except PreconditionFailed:
            return False
        except Unauthorized:
            raise cannot_create from None
        for created in list(self.on_created):
            try:
                created()
            except Exception:  # (the database is created all the same)
                log.failure("after creating {db}", db=self.display_url)
        return True

    async def delete_database(self) -> None:
        await self.server.request("DELETE", self.path)

    async def get(self, docid: str, **params) -> dict:
        return await self._request("GET", doc_path(docid), params=params)

    async def leaves(self, docid: str, revs: bool = False) -> list[dict]:
        """Every leaf revision of ``docid``, deleted ones included (``open_revs=all``):
        more than one when it has conflicts; none when it was never stored. With
        ``revs``, each says its history (``_revisions``)."""
        try:
            answer = await self.get(docid, open_revs="all",
                                    **({"revs": "true"} if revs else {}))
        except NotFound:  # (a document never stored; or no database)
            return []
        return found_revisions(answer if isinstance(answer, list) else [])

    async def get_or_none(self, docid: str, **params) -> dict | None:
        try:
            return await self.get(docid, **params)
        except NotFound:
            return None

    async def get_sized(self, path: str, **params) -> tuple[Any, int]:
        """GET a JSON resource of this database (a document, ``_all_docs``, ...):
        ``(the parsed answer, the bytes of JSON read)``, for a cache that counts what
        it holds. Raises :class:`NotFound` and the like as :meth:`get` does."""
        content, _ = await self._request("GET", path, params=params, raw=True)
        try:
            return jsonio.loads(content), len(content)
        except ValueError:
            raise BadResponse("GET answered something that is not JSON: is this CouchDB?",
                              url=self.display_url + "/" + path) from None

    async def rows_sized(self, path: str, *, trim: Callable[[dict], int],
                         whole_below: int = WHOLE_ANSWER_BYTES, **params
                         ) -> tuple[list[dict], int]:
        """GET an answer of rows (``_all_docs``, a view): ``(its rows, the bytes of JSON
        they hold)``. An answer larger than ``whole_below`` is parsed row by row as it
        arrives, and each row is handed to ``trim`` as soon as it is made, which may drop
        parts of it and returns the bytes it dropped: a range of many large documents is
        never held whole. Smaller answers are kept as they are."""
        return await self._read_rows("GET", path, lambda: _RowReader(trim, whole_below),
                                     params=params)

    async def _read_rows(self, method: str, path: str, reader: Callable[[], "_RowReader"],
                         **options) -> tuple[list[dict], int]:
        """A read whose answer goes to a new ``reader()`` as it arrives: its rows."""
        shown = self.display_url + "/" + path
        for attempt in range(2):
            taking = reader()
            try:
                await self.server._request_once(method, self.path + path, raw=True,
                                                sink=taking.take, **options)
                return taking.finish(shown)
            except Unreachable as error:
                # (a pooled connection the server closed, as :meth:`CouchDB.request`
                # retries: only before any of the answer came)
                if attempt or not error.connection_lost or taking.size:
                    raise
        raise AssertionError("unreachable")

    async def put(self, doc: dict) -> str:
        """Write ``doc`` (its ``_rev`` if an update); returns the new revision."""
        result = await self._request("PUT", doc_path(doc["_id"]), body=doc)
        return self._new_rev(result, "PUT")

    async def delete(self, docid: str, rev: str) -> str:
        result = await self._request("DELETE", doc_path(docid), params={"rev": rev})
        return self._new_rev(result, "DELETE")

    def _new_rev(self, result: Any, method: str) -> str:
        """The revision a write's answer names (a proxy's ``200 {}`` is no write)."""
        if isinstance(result, dict) and isinstance(result.get("rev"), str):
            return result["rev"]
        raise BadResponse(f"{method} answered without the new revision: is this CouchDB?",
                          url=self.display_url)

    async def bulk_docs(self, docs: list[dict], timeout: float | None = None) -> list[BulkResult]:
        """``_bulk_docs``: one :class:`BulkResult` per document, errors included, in the
        order of ``docs`` (matched by id: pouchdb-server may answer in another order).
        A document the answer does not mention gets an ``error`` result."""
        by_id: dict[str, list[BulkResult]] = {}
        sending = docs
        while sending:
            try:
                answer = await self._request("POST", "_bulk_docs", body={"docs": sending},
                                             timeout=timeout)
                break
            except DocumentTooLarge as error:
                # Apache CouchDB refuses the whole request for one document over its
                # max_document_size, naming it: that one is refused, the rest sent again.
                kept = [doc for doc in sending if doc.get("_id") != error.docid]
                if len(kept) == len(sending):
                    raise
                by_id[error.docid] = [BulkResult(
                    id=error.docid, error="too_large",
                    reason="larger than CouchDB's max_document_size")]
                sending = kept
        else:
            answer = []
        if not isinstance(answer, list):
            raise BadResponse("_bulk_docs did not answer a list", url=self.display_url)
        for row in answer:
            by_id.setdefault(row.get("id", ""), []).append(BulkResult(
                id=row.get("id", ""), rev=row.get("rev"), error=row.get("error"),
                reason=row.get("reason")))
        results = []
        for doc in docs:
            found = by_id.get(doc.get("_id", ""))
            results.append(found.pop(0) if found else BulkResult(
                id=doc.get("_id", ""), error="missing", reason="not in the _bulk_docs answer"))
        return results

    async def bulk_get(self, ids: list[str], trim: Callable[[dict], Any] | None = None
                       ) -> dict[str, dict]:
        """``{id: document}`` of the live documents among ``ids``, in one ``_bulk_get``
        (what replication reads with: on both servers half the time of ``_all_docs``
        with ``keys`` and ``include_docs``, bench/RESULTS.md). Missing and deleted
        documents are left out: pouchdb-server answers both with ``{}``, so a
        tombstone's revision cannot be had here (:meth:`all_docs` gives it).

        With ``trim``, an answer over ``WHOLE_ANSWER_BYTES`` is parsed a document at a
        time as it arrives, and ``trim(document)`` may drop parts of each at once: what
        is not needed (a release's descriptions) is never held for all of them."""
        if not ids:
            return {}
        unique = list(dict.fromkeys(ids))  # pouchdb-server answers a repeated id once
        body = {"docs": [{"id": docid} for docid in unique]}
        if trim is None:
            answer = await self._request("POST", "_bulk_get", body=body, read=True)
            results = answer.get("results") if isinstance(answer, dict) else None
        else:
            results, _ = await self._read_rows(
                "POST", "_bulk_get", lambda: _RowReader(
                    _each_document(trim), WHOLE_ANSWER_BYTES, "results"), body=body)
            if len(results) != len(unique):  # (parsed as it came: a list that was not)
                results = None
        if not isinstance(results, list):
            raise BadResponse("_bulk_get did not answer results: is this CouchDB >= 2?",
                              url=self.display_url)
        found = {}
        for result in results:
            failed = read_error(result.get("docs"))
            if failed is not None:
                raise BadResponse(f"_bulk_get could not read {result.get('id')!r}: "
                                  f"{failed}", url=self.display_url)
            doc = winning_revision(found_revisions(result.get("docs")))
            if doc is not None and not doc.get("_deleted"):
                found[doc["_id"]] = doc
        return found

    async def all_docs(self, keys: list[str] | None = None, **params) -> dict:
        """``_all_docs``; with ``keys``, a POST (any number of ids)."""
        if keys is not None:
            return await self._request("POST", "_all_docs", params=params, body={"keys": keys},
                                       read=True)
        return await self._request("GET", "_all_docs", params=params)

    async def view(self, ddoc: str, view: str, keys: list | None = None,
                   timeout: float | None = None, **params) -> dict:
        """Query ``_design/<ddoc>/_view/<view>`` with CouchDB's options as keywords."""
        path = f"_design/{quote(ddoc, safe='')}/_view/{quote(view, safe='')}"
        if keys is not None:
            return await self._request("POST", path, params=params, body={"keys": keys},
                                       timeout=timeout, read=True)
        return await self._request("GET", path, params=params, timeout=timeout)

    async def put_attachment(self, docid: str, rev: str, name: str, content: bytes,
                             content_type: str) -> str:
        result = await self._request(
            "PUT", f"{doc_path(docid)}/{quote(name, safe='')}", params={"rev": rev},
            data=content, headers={"Content-Type": content_type})
        return self._new_rev(result, "PUT")

    async def get_attachment(self, docid: str, name: str, rev: str | None = None
                             ) -> tuple[bytes, str]:
        """``(content, content type)`` of an attachment (of revision ``rev``)."""
        return await self._request("GET", f"{doc_path(docid)}/{quote(name, safe='')}",
                                   params={"rev": rev} if rev else None, raw=True)

    async def get_local(self, name: str) -> dict | None:
        """A ``_local/`` document (not replicated), or None."""
        return await self.get_or_none("_local/" + name)

    async def put_local(self, name: str, doc: dict) -> str:
        return await self.put({**doc, "_id": "_local/" + name})

    async def changes(self, **params) -> dict:
        """One ``_changes`` answer (normal or longpoll feed). ``since`` is opaque."""
        return await self._request("GET", "_changes", params=_changes_params(params))

    def follow(self, on_change: Callable[[dict], Any], *, since: Any = "now",
               include_docs: bool = False, heartbeat_ms: int = 10_000,
               filter: str | None = None, on_started: Callable[[], Any] | None = None,
               **params) -> "ChangesStream":
        """Start a continuous ``_changes`` stream; see :class:`ChangesStream`."""
        params = _changes_params({
            "feed": "continuous", "since": since, "include_docs": include_docs,
            "heartbeat": heartbeat_ms, "filter": filter, **params})
        url = self.server.url + self.path + "_changes?" + encode_params(params)
        stream = ChangesStream(self, url, self.display_url + "/_changes", on_change,
                               heartbeat_ms / 1000.0, on_started)
        stream.start()
        return stream


def _each_document(trim: Callable[[dict], Any]) -> Callable[[dict], int]:
    """``trim`` for every document a ``_bulk_get`` result holds."""
    def trim_result(result: dict) -> int:
        for found in result.get("docs") or []:
            doc = found.get("ok") if isinstance(found, dict) else None
            if isinstance(doc, dict):
                trim(doc)
        return 0
    return trim_result


class _RowReader:
    """An answer's body, chunk by chunk: held as bytes up to ``whole_below``, then
    parsed row by row (the items of ``rows``, or of another list ``key``), each row
    trimmed as it is made."""

    def __init__(self, trim: Callable[[dict], int], whole_below: int, key: str = "rows"):
        self.trim = trim
        self.whole_below = whole_below
        self.key = key
        self.size = 0  # bytes received
        self.dropped = 0  # bytes trim dropped
        self.rows: list[dict] = []
        self._chunks: list[bytes] = []
        self._made: list | None = None  # rows made by the parser, not yet trimmed
        self._parser = None
        self._error: str | None = None  # the parser's (the rest is not read)

    def take(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._error is not None:
            return
        if self._parser is not None:
            self._feed(chunk)
            return
        self._chunks.append(chunk)
        if self.size > self.whole_below:
            self._made = ijson.sendable_list()
            self._parser = ijson.items_coro(self._made, self.key + ".item", use_float=True)
            held, self._chunks = self._chunks, []
            for part in held:
                self._feed(part)

    def _feed(self, chunk: bytes) -> None:
        try:
            self._parser.send(chunk)
        except (ijson.JSONError, ValueError) as error:  # (bad UTF-8: UnicodeDecodeError)
            self._error = str(error) or "malformed"
            return
        self._take_rows()

    def _take_rows(self) -> None:
        for row in self._made:
            if isinstance(row, dict):
                self.dropped += self.trim(row)
            self.rows.append(row)
        del self._made[:]

    def finish(self, shown: str) -> tuple[list[dict], int]:
        try:
            if self._parser is None:
                answer = jsonio.loads(b"".join(self._chunks))
                rows = answer.get(self.key) if isinstance(answer, dict) else None
                if not isinstance(rows, list):
                    raise ValueError(f"no {self.key}")
                return rows, self.size
            if self._error is not None:
                raise ValueError(self._error)
            try:
                self._parser.close()  # (raises if the answer ended before its end)
            except (ijson.JSONError, ValueError) as error:
                raise ValueError(str(error)) from None
            self._take_rows()
            return self.rows, self.size - self.dropped
        except ValueError:
            raise BadResponse(f"the answer is not JSON {self.key}: is this CouchDB?",
                              url=shown) from None


def _changes_params(params: dict) -> dict:
    # ``since`` is opaque: a string goes as is, anything else as its JSON text.
    since = params.get("since")
    if since is not None and not isinstance(since, str):
        params = {**params, "since": json.dumps(since)}
    return params


class _LineReceiver(Protocol):
    def __init__(self, stream: "ChangesStream"):
        self.stream = stream
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.stream._alive()
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self.stream._line(line)

    def connectionLost(self, reason=None) -> None:
        self.stream._ended(reason)


class ChangesStream:
    """A continuous ``_changes`` feed that calls ``on_change(change)`` per change as it
    arrives. ``last_seq`` is the seq of the last change delivered (opaque).
    ``done`` fires with ``last_seq`` when the stream ends by :meth:`stop` or by the
    server, and fails with :class:`CouchError` when the connection breaks or goes
    silent for three heartbeats. ``on_started()`` runs when CouchDB has accepted the
    feed (its 200), before any change is delivered.
    """

    def __init__(self, db: Database, url: str, shown_url: str, on_change, heartbeat: float,
                 on_started: Callable[[], Any] | None = None):
        self.db = db
        self.url = url
        self.shown_url = shown_url
        self.on_change = on_change
        self.on_started = on_started
        self.heartbeat = heartbeat
        self.last_seq: Any = None
        self.done: defer.Deferred = defer.Deferred()
        self._stopped = False
        self._receiver = None
        self._request_d = None
        self._watchdog = None
        self._reactor = db.server._reactor

    def start(self) -> None:
        headers = Headers({k: [v] for k, v in self.db.server._headers().items()})
        agent = self.db.server.stream_agent()
        self._request_d = agent.request(b"GET", self.url.encode("ascii"), headers)
        self._alive()
        self._request_d.addCallbacks(self._got_response, self._failed)

    def _got_response(self, response) -> None:
        self._request_d = None
        if response.code != 200:
            error = _error_for_status(response.code)(
                "the _changes feed was refused", url=self.shown_url, status=response.code)
            treq.content(response).addBoth(lambda _: self._failed(Failure(error)))
            return
        if self.on_started is not None:
            try:
                self.on_started()
            except Exception:
                log.failure("a _changes consumer failed as the feed started")
        self._receiver = _LineReceiver(self)
        response.deliverBody(self._receiver)

    def _alive(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(self.heartbeat * 3)
        elif not self._stopped:
            self._watchdog = self._reactor.callLater(self.heartbeat * 3, self._silent)

    def _silent(self) -> None:
        self._watchdog = None
        self._finish(Failure(Timeout("the _changes feed went silent",
                                     url=self.shown_url)))

    def _line(self, line: bytes) -> None:
        if self._stopped:
            return
        try:
            change = jsonio.loads(line)
        except ValueError:
            self._finish(Failure(BadResponse("the _changes feed sent a line that is not JSON",
                                             url=self.shown_url)))
            return
        if "last_seq" in change and "id" not in change:
            self.last_seq = change["last_seq"]
            return
        if "seq" not in change:
            if isinstance(change, dict) and change.get("error"):
                # (a cluster writes an error into a feed begun: a node down, ...)
                reason = ": ".join(str(change[k]) for k in ("error", "reason")
                                   if change.get(k))
                self._finish(Failure(BadResponse(f"the _changes feed sent an error: "
                                                 f"{reason}", url=self.shown_url)))
            return
        self.last_seq = change["seq"]
        try:
            self.on_change(change)
        except Exception:
            log.failure("a _changes consumer failed on {id}", id=change.get("id"))

    def _failed(self, failure: Failure) -> None:
        self._request_d = None
        if not self._stopped:
            self._finish(Failure(_transport_error(failure.value, self.shown_url))
                         if not failure.check(CouchError) else failure)

    def _ended(self, reason) -> None:
        if self._stopped or reason is None or reason.check(ResponseDone):
            self._finish(None)
        else:
            self._finish(Failure(Unreachable("the _changes feed broke off",
                                             url=self.shown_url)))

    def _finish(self, failure: Failure | None) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        if self.done.called:
            return
        self._stopped = True
        if self._receiver is not None and self._receiver.transport is not None:
            self._receiver.transport.stopProducing()  # closes the connection
        if self._request_d is not None:
            self._request_d.cancel()
        if failure is None:
            self.done.callback(self.last_seq)
        else:
            self.done.errback(failure)

    def stop(self) -> defer.Deferred:
        """Stop the stream; returns ``done``."""
        self._finish(None)
        return self.done

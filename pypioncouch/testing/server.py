"""The simulator's web server: PyPI's XML-RPC, JSON API, Simple API and files, plus a
control endpoint for mutations and fault injection. Twisted only.

Routes (as on pypi.org, reference §1, §3, §4):

- ``POST /pypi``, ``/pypi/``, ``/RPC2``: XML-RPC;
- ``GET /pypi/<project>/json``, ``/pypi/<project>/<version>/json`` (301 to the
  normalized name);
- ``GET /simple/``, ``/simple/<project>/`` (PEP 503 HTML / PEP 691 JSON by ``Accept``);
- ``GET /packages/<aa>/<bb>/<rest>/<filename>`` (and ``<filename>.metadata``);
- ``GET /_control/state``; ``POST /_control/<mutation>`` with a JSON object of keyword
  arguments (``publish``, ``yank``, ``remove_project``, ... :class:`PackageIndex`'s
  methods), ``/_control/faults`` (``rate``, ``kinds``, ``seed``),
  ``/_control/latency`` (``ms``), ``/_control/stale`` (``seconds``),
  ``/_control/xmlrpc`` (``gone``: methods to remove, ``changelog_limit``, ``legacy``,
  ``endpoint_status``: the HTTP status every XML-RPC call then gets, the endpoint gone,
  or the next ``endpoint_calls`` only),
  ``/_control/listing`` (``keep``, ``start``, ``frozen``: listings cut short or stale,
  see :class:`ListingFault`), ``/_control/files`` (``corrupt``, ``hold``, ``padded``,
  ``gone``, ``unsized``: files served with wrong bytes, held half-way, too long, not at
  all, or without a length, see
  :class:`FileFaults`), ``/_control/auth``
  (``user``, ``password``: a private index that answers 401 without them; ``{}``
  opens it again).
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import xmlrpc.client as xmlrpc_client
from collections import Counter, deque
from html import escape

from twisted.internet import defer, task
from twisted.internet import reactor as default_reactor
from twisted.internet.address import IPv4Address
from twisted.logger import Logger
from twisted.web import xmlrpc
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pypioncouch.testing import simple_pages
from pypioncouch.testing.index import CHANGELOG_LIMIT, IndexError_, PackageIndex, normalize

log = Logger()

FAULT_KINDS = ("500", "502", "503", "429", "timeout", "reset", "xmlrpc-fault",
               "truncated", "stalled", "malformed")
# Not a failure, so not among the kinds drawn by default: the whole answer, sent in
# ten pieces over the plan's ``slow_seconds`` (a slow link, or PyPI's 57 MB listing).
SLOW = "slow"
XMLRPC_PATHS = ("/pypi", "/pypi/", "/RPC2")
MUTATIONS = ("create_project", "publish", "add_file", "remove_file", "yank", "unyank",
             "remove_release", "remove_project", "quarantine", "clear_quarantine",
             "quarantine_release", "clear_release_quarantine", "archive", "unarchive",
             "add_role", "remove_role")
_DISABLED = {
    "list_packages": "RuntimeError: PyPI no longer supports the XMLRPC list_packages method. "
                     "Use Simple API instead. See https://warehouse.pypa.io/api-reference/"
                     "xml-rpc.html#deprecated-methods for more information.",
    "package_releases": "RuntimeError: PyPI no longer supports the XMLRPC package_releases "
                        "method. Use JSON or Simple API instead. See https://warehouse.pypa"
                        ".io/api-reference/xml-rpc.html#deprecated-methods for more "
                        "information.",
    "release_urls": "RuntimeError: PyPI no longer supports the XMLRPC release_urls method. "
                    "Use JSON or Simple API instead. See https://warehouse.pypa.io/"
                    "api-reference/xml-rpc.html#deprecated-methods for more information.",
    "release_data": "RuntimeError: PyPI no longer supports the XMLRPC release_data method. "
                    "Use JSON or Simple API instead. See https://warehouse.pypa.io/"
                    "api-reference/xml-rpc.html#deprecated-methods for more information.",
    "search": "RuntimeError: PyPI no longer supports 'pip search' (or XML-RPC search). "
              "Please use https://pypi.org/search (via a browser) instead. See "
              "https://warehouse.pypa.io/api-reference/xml-rpc.html#deprecated-methods "
              "for more information.",
    "changelog": "ValueError: The changelog method has been deprecated, use "
                 "changelog_since_serial instead.",
    "top_packages": "RuntimeError: This API has been removed. Use BigQuery instead. See "
                    "https://warehouse.pypa.io/api-reference/xml-rpc.html#deprecated-methods "
                    "for more information.",
    "package_data": "RuntimeError: This API has been deprecated. See https://warehouse."
                    "pypa.io/api-reference/xml-rpc.html#deprecated-methods for more "
                    "information.",
    "package_urls": "RuntimeError: This API has been deprecated. See https://warehouse."
                    "pypa.io/api-reference/xml-rpc.html#deprecated-methods for more "
                    "information.",
    "system.multicall": "ValueError: MultiCall requests have been deprecated, use "
                        "individual requests instead.",
}
_LEGACY = ("list_packages", "package_releases", "release_urls", "release_data", "changelog")


class FaultPlan:
    """Which requests fail, and how: each request fails with probability ``rate``,
    with a kind drawn from ``kinds``; ``seed`` makes the sequence repeatable."""

    def __init__(self, rate: float = 0.0, kinds=FAULT_KINDS, seed: int = 0,
                 timeout_seconds: float = 20.0, slow_seconds: float = 2.0,
                 retry_after: int = 1):
        unknown = set(kinds) - set(FAULT_KINDS) - {SLOW}
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; "
                             f"know {FAULT_KINDS + (SLOW,)}")
        self.rate = rate
        self.kinds = tuple(kinds)
        self.timeout_seconds = timeout_seconds
        self.slow_seconds = slow_seconds
        self.retry_after = retry_after  # what a 429 says
        self._rng = random.Random(seed)
        self.injected: Counter = Counter()
        self.requests = 0
        self.dropped = 0  # "timeout" and "stalled" answers the client gave up on

    def draw(self) -> str | None:
        self.requests += 1
        if self.rate <= 0 or self._rng.random() >= self.rate:
            return None
        kind = self._rng.choice(self.kinds)
        self.injected[kind] += 1
        return kind


class ListingFault:
    """What can go wrong with the two listings of every project (XML-RPC
    ``list_packages_with_serial`` and the ``/simple/`` index) while the answer still
    parses: a broken CDN node, a proxy or a bug upstream.

    - ``keep`` < 1 cuts the listing short: only the entries from ``start`` to
      ``start + keep`` (fractions of the whole, by normalized name, wrapping around)
      are listed, and the answer still claims PyPI's latest serial;
    - ``frozen`` serves the listing as it was when it was frozen, with that moment's
      serial (a stale copy, like PyPI's one-hour XML-RPC cache or a CDN's copy).
    """

    def __init__(self, keep: float = 1.0, start: float = 0.0):
        self.configure(keep=keep, start=start)
        self.snapshot: tuple[int, list[tuple[str, str, int]]] | None = None

    def configure(self, keep: float | None = None, start: float | None = None) -> None:
        if keep is not None:
            if not 0.0 <= float(keep) <= 1.0:
                raise ValueError("keep is a fraction between 0 and 1")
            self.keep = float(keep)
        if start is not None:
            if not 0.0 <= float(start) < 1.0:
                raise ValueError("start is a fraction between 0 (included) and 1")
            self.start = float(start)

    def freeze(self, index: PackageIndex | None) -> None:
        """Serve ``index``'s listing as it is now from now on (None: the live one)."""
        self.snapshot = None if index is None else (index.last_serial, _live_listing(index))

    def listing(self, index: PackageIndex) -> tuple[int, list[tuple[str, str, int]]]:
        """``(global serial, [(normalized, display, last serial)])`` as served."""
        serial, rows = self.snapshot or (index.last_serial, _live_listing(index))
        if self.keep >= 1.0:
            return serial, rows
        first, count = int(self.start * len(rows)), int(round(self.keep * len(rows)))
        kept = (rows[first:] + rows[:first])[:count]
        return serial, sorted(kept)

    def state(self) -> dict:
        return {"keep": self.keep, "start": self.start, "frozen": self.snapshot is not None}


class FileFaults:
    """What can go wrong with release files (``/packages/...``), on cue:

    - ``corrupt``: file names (``"*"``: every file) served with one byte changed, same
      length: bytes that do not match the sha256 the JSON and Simple APIs give;
    - ``hold``: each file answer (or those of the file names listed) sends its headers
      and the first half of its bytes, then waits until ``hold`` is set to false (a
      slow upstream, for tests of streaming and of concurrent requests);
    - ``padded``: file names served with a megabyte of zeros after their bytes (a
      body longer than the size the JSON API gives, as a broken proxy may send);
    - ``gone``: file names answered 404 though the APIs still list them (a file
      removed, the listings not yet refreshed);
    - ``unsized``: file names answered without a Content-Length (chunked, as some
      servers and proxies send).

    ``hits`` counts the requests for each file name (``.metadata`` files included).
    """

    def __init__(self):
        self.corrupt: set[str] = set()
        self.padded: set[str] = set()
        self.gone: set[str] = set()
        self.unsized: set[str] = set()
        self.hold: bool | set[str] = False
        self.held: list[tuple[object, bytes]] = []  # (request, the rest of its body)
        self.hits: Counter = Counter()

    def configure(self, corrupt=None, hold=None, padded=None, gone=None,
                  unsized=None) -> None:
        for name, names in (("padded", padded), ("gone", gone), ("unsized", unsized)):
            if names is not None:
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise ValueError(f"{name} is a list of file names")
                setattr(self, name, set(names))
        if corrupt is not None:
            if isinstance(corrupt, bool):
                corrupt = ["*"] if corrupt else []
            if not isinstance(corrupt, list) or not all(isinstance(n, str) for n in corrupt):
                raise ValueError("corrupt is a list of file names, or true/false")
            self.corrupt = set(corrupt)
        if hold is not None:
            if isinstance(hold, list):
                if not all(isinstance(n, str) for n in hold):
                    raise ValueError("hold is a list of file names, or true/false")
                hold = set(hold)
            self.hold = hold if isinstance(hold, set) else bool(hold)
            if not self.hold:
                self.release()

    def serve(self, request, filename: str, content: bytes):
        """The body to answer with now (or NOT_DONE_YET while held)."""
        self.hits[filename] += 1
        if filename in self.gone:
            request.setResponseCode(404)
            request.setHeader("Content-Type", "text/plain")
            return b"404 Not Found"
        if "*" in self.corrupt or filename in self.corrupt:
            middle = len(content) // 2
            content = content[:middle] + bytes([content[middle] ^ 0xFF]) + content[middle + 1:]
        if filename in self.padded:
            content += bytes(1 << 20)
        held = self.hold and not (isinstance(self.hold, set) and filename not in self.hold)
        if not held and filename not in self.unsized:
            return content
        if filename not in self.unsized:
            request.setHeader("Content-Length", str(len(content)))
        if not held:
            request.write(content)  # (written before finishing: chunked)
            request.finish()
            return NOT_DONE_YET
        half = len(content) // 2
        request.write(content[:half])
        self.held.append((request, content[half:]))
        return NOT_DONE_YET

    def release(self) -> None:
        held, self.held = self.held, []
        for request, rest in held:
            if not request.finished and request.channel is not None:
                request.write(rest)
                request.finish()

    def state(self) -> dict:
        return {"corrupt": sorted(self.corrupt), "padded": sorted(self.padded),
                "gone": sorted(self.gone), "unsized": sorted(self.unsized),
                "held": len(self.held),
                "hold": sorted(self.hold) if isinstance(self.hold, set) else self.hold,
                "hits": dict(self.hits)}


def _live_listing(index: PackageIndex) -> list[tuple[str, str, int]]:
    return [(key, display, index.last_serial_of(key)) for key, display in index.listing()]


def _check_args(args, spec) -> None:
    """Warehouse's (pydantic's) argument checks: Fault -32602 on a mismatch."""
    for position, value in enumerate(args):
        if position >= len(spec):
            raise xmlrpc.Fault(-32602, f"client error; {position}: Unexpected positional "
                                       "argument")
        name, kind, _ = spec[position]
        if kind is int and (type(value) is not int):
            raise xmlrpc.Fault(-32602, f"client error; {name}: Input should be a valid "
                                       "integer")
        if kind is str and not isinstance(value, str):
            raise xmlrpc.Fault(-32602, f"client error; {name}: Input should be a valid string")
        if kind is list and not (isinstance(value, list)
                                 and all(isinstance(v, str) for v in value)):
            raise xmlrpc.Fault(-32602, f"client error; {name}: Input should be a valid list")
        if kind is bool and not isinstance(value, bool):
            raise xmlrpc.Fault(-32602, f"client error; {name}: Input should be a valid boolean")
    for name, _, required in spec[len(args):]:
        if required:
            raise xmlrpc.Fault(-32602, f"client error; {name}: Missing required argument")


class PyPIXMLRPC(xmlrpc.XMLRPC):
    """PyPI's XML-RPC methods (reference §1.1), the disabled ones answering with their
    Faults (§1.2), or with ``legacy=True`` as before 2024 (§1.3)."""

    def __init__(self, index: PackageIndex, *, legacy: bool = False,
                 rate_limit_per_hour: int | None = None, rate_window: float = 3600.0,
                 clock=None, listing: ListingFault | None = None):
        super().__init__(allowNone=True)
        self.index = index
        self.listing = listing or ListingFault()
        self.legacy = legacy
        self.rate_limit = rate_limit_per_hour
        self.rate_window = rate_window
        self.changelog_limit = CHANGELOG_LIMIT
        self.gone: set[str] = set()  # methods removed at run time (-32601)
        # The whole endpoint taken away: every POST answers this HTTP status (404,
        # 410..), or only the next ``endpoint_calls`` of them (a proxy's passing 404).
        self.endpoint_status: int | None = None
        self.endpoint_calls: int | None = None
        self.clock = clock or default_reactor.seconds
        self._calls: dict[str, deque] = {}
        self.calls: Counter = Counter()

    def _rate_limited(self, client: str) -> int | None:
        """Seconds until the limit resets if ``client`` is over it (every call counts)."""
        if not self.rate_limit:
            return None
        now = self.clock()
        window = self._calls.setdefault(client, deque())
        while window and window[0] <= now - self.rate_window:
            window.popleft()
        if len(window) >= self.rate_limit:
            return max(1, int(window[0] + self.rate_window - now + 0.999))
        window.append(now)
        return None

    def render_POST(self, request):
        self._client = request.getClientAddress().host
        return super().render_POST(request)

    def lookupProcedure(self, procedurePath):
        self.calls[procedurePath] += 1
        wait = self._rate_limited(getattr(self, "_client", "?"))
        if wait is not None:
            raise xmlrpc.Fault(-32500, "HTTPTooManyRequests: The action could not be "
                               "performed because there were too many requests by the "
                               f"client. Limit may reset in {wait} seconds.")
        method = getattr(self, "rpc_" + procedurePath.replace(".", "_"), None)
        if method is None or procedurePath in self.gone:
            raise xmlrpc.Fault(-32601, "server error; requested method not found")
        return method

    # -- supported -------------------------------------------------------------------

    def rpc_changelog_last_serial(self, *args):
        _check_args(args, [])
        return self.index.last_serial

    def rpc_changelog_since_serial(self, *args):
        _check_args(args, [("since_serial", int, True)])
        return self.index.changelog_since(args[0], self.changelog_limit)

    def rpc_list_packages_with_serial(self, *args):
        _check_args(args, [])
        _, rows = self.listing.listing(self.index)
        return {display: serial for _, display, serial in rows}

    def rpc_package_roles(self, *args):
        _check_args(args, [("package_name", str, True)])
        project = self.index.get(args[0])
        if project is None:
            return []
        return [list(r) for r in sorted(project.roles, key=lambda r: (r[0] != "Owner", r[1]))]

    def rpc_user_packages(self, *args):
        _check_args(args, [("username", str, True)])
        rows = []
        for key, _ in self.index.listing():
            project = self.index.get(key)
            rows += [[role, project.name] for role, user in project.roles if user == args[0]]
        return sorted(rows, key=lambda r: (r[0] != "Owner", r[1]))

    def rpc_browse(self, *args):
        _check_args(args, [("classifiers", list, True)])
        wanted = set(args[0])
        rows = []
        for key, _ in self.index.listing():
            project = self.index.get(key)
            for version, release in project.releases.items():
                if wanted <= set(release.metadata.get("classifiers") or []):
                    rows.append([project.name, version])
        return sorted(rows, key=lambda r: (r[0], simple_pages.version_order(r[1])))

    # -- disabled, or legacy -------------------------------------------------------

    def _disabled(name, spec):
        def method(self, *args):
            _check_args(args, spec)
            if self.legacy and name in _LEGACY:
                return getattr(self, "legacy_" + name)(*args)
            raise xmlrpc.Fault(-32500, _DISABLED[name])
        return method

    rpc_list_packages = _disabled("list_packages", [])
    rpc_package_releases = _disabled("package_releases", [("package_name", str, True),
                                                          ("show_hidden", bool, False)])
    rpc_release_urls = _disabled("release_urls", [("package_name", str, True),
                                                  ("version", str, True)])
    rpc_release_data = _disabled("release_data", [("package_name", str, True),
                                                  ("version", str, True)])
    rpc_search = _disabled("search", [("spec", dict, True), ("operator", str, False)])
    rpc_changelog = _disabled("changelog", [("since", int, True), ("with_ids", bool, False)])
    rpc_top_packages = _disabled("top_packages", [("num", int, False)])
    rpc_package_data = _disabled("package_data", [("package_name", str, True),
                                                  ("version", str, True)])
    rpc_package_urls = _disabled("package_urls", [("package_name", str, True),
                                                  ("version", str, True)])
    rpc_system_multicall = _disabled("system.multicall", [("calls", object, False)])
    del _disabled

    def legacy_list_packages(self):
        return [display for _, display in self.index.listing()]

    def legacy_package_releases(self, name, show_hidden=False):
        project = self.index.get(name)
        if project is None or not project.releases:
            return []
        if show_hidden:
            return sorted(project.releases, key=simple_pages.version_order, reverse=True)
        latest = self.index.latest(project)
        return [latest.version] if latest else []

    def legacy_release_data(self, name, version):
        project = self.index.get(name)
        release = project and project.releases.get(version)
        if release is None:
            return {}
        info = self.index.info(project, release)
        data = {k: info.get(k) for k in (
            "name", "version", "summary", "description", "license", "platform", "keywords",
            "home_page", "download_url", "docs_url", "package_url", "release_url", "author",
            "author_email", "maintainer", "maintainer_email", "requires_python",
            "classifiers", "requires_dist")}
        data.update(
            project_url=[f"{k}, {v}" for k, v in (info.get("project_urls") or {}).items()],
            requires=[], provides=[], provides_dist=[], obsoletes=[], obsoletes_dist=[],
            requires_external=[], requires_dist=info.get("requires_dist") or [],
            _pypi_ordering=sorted(project.releases,
                                  key=simple_pages.version_order).index(version),
            downloads={"last_day": -1, "last_month": -1, "last_week": -1},
            stable_version=None, bugtrack_url=None, cheesecake_code_kwalitee_id=None,
            cheesecake_documentation_id=None, cheesecake_installability_id=None)
        return data

    def legacy_release_urls(self, name, version):
        project = self.index.get(name)
        release = project and project.releases.get(version)
        if release is None:
            return []
        rows = []
        for file in release.files:
            entry = self.index.file_entry(project, release, file)
            rows.append({k: entry[k] for k in (
                "filename", "packagetype", "python_version", "size", "md5_digest", "url",
                "comment_text", "downloads", "has_sig")}
                | {"sha256_digest": entry["digests"]["sha256"],
                   "digests": {"md5": entry["digests"]["md5"],
                               "sha256": entry["digests"]["sha256"]},
                   "upload_time": entry["upload_time_iso_8601"],
                   "upload_time_iso_8601": entry["upload_time_iso_8601"],
                   "path": entry["url"].split("/packages/", 1)[1]})
        return rows

    def legacy_changelog(self, since, with_ids=False):
        rows = [r for r in self.index.changelog_since(0) if r[2] > since][:CHANGELOG_LIMIT]
        return rows if with_ids else [r[:4] for r in rows]


class SimulatorResource(Resource):
    """The whole simulated PyPI as one resource, with latency and faults in front."""

    isLeaf = True

    def __init__(self, index: PackageIndex, *, faults: FaultPlan | None = None,
                 latency_ms: float = 0.0, legacy_xmlrpc: bool = False,
                 xmlrpc_rate_limit: int | None = None, listing: ListingFault | None = None,
                 prerender: bool = False, keep_answers: bool = False, reactor=None):
        super().__init__()
        self.index = index
        self.faults = faults or FaultPlan()
        self.listing = listing or ListingFault()
        self.latency_ms = latency_ms
        self.reactor = reactor or default_reactor
        self.xmlrpc = PyPIXMLRPC(index, legacy=legacy_xmlrpc,
                                 rate_limit_per_hour=xmlrpc_rate_limit,
                                 clock=self.reactor.seconds, listing=self.listing)
        self.hits: Counter = Counter()
        self.files = FileFaults()
        # A private index: with ``/_control/auth`` set, every request (but control
        # ones) needs Basic auth with these credentials, else 401.
        self.credentials: bytes | None = None
        self.unauthorized = 0
        self._churn: task.LoopingCall | None = None
        # With ``keep_answers``, JSON API, Simple and listing answers are rendered once
        # and then served as bytes (a PyPI that costs its client's benchmark little
        # CPU); ``prerender`` also renders every project's ahead of time
        # (:meth:`render_ahead`, once the index knows its URL).
        self.prerender = prerender
        self.rendered: RenderedAnswers | None = \
            RenderedAnswers(index) if prerender or keep_answers else None

    def render_ahead(self) -> None:
        if self.rendered is not None and self.prerender:
            self.rendered.clear()
            self.rendered.fill(self._dispatch_rendering)

    def start_churn(self, seconds: float, seed: int = 0) -> None:
        """Make a random change every ``seconds`` (the demo's PyPI that keeps moving)."""
        rng = random.Random(seed)
        self._churn = task.LoopingCall(churn, self.index, rng)
        self._churn.clock = self.reactor
        self._churn.start(seconds, now=False)

    def stop_churn(self) -> None:
        if self._churn is not None and self._churn.running:
            self._churn.stop()
        self._churn = None

    def render(self, request):
        path = request.path.decode("utf-8", "replace")
        if path.startswith("/_control/"):
            return self._control(request, path[len("/_control/"):])
        if self.credentials is not None and \
                request.getHeader("authorization") != "Basic " + self.credentials.decode():
            self.unauthorized += 1
            request.setHeader("WWW-Authenticate", 'Basic realm="simulated private index"')
            return self._plain(request, 401, "401 Unauthorized")
        self.hits[path.split("/")[1] if "/" in path else path] += 1
        fault = self.faults.draw()
        delay = self.latency_ms / 1000.0
        if fault is None and not delay:
            return self._dispatch(request, path)
        gone = []
        request.notifyFinish().addBoth(gone.append)
        self.reactor.callLater(delay, self._answer_later, request, path, fault, gone)
        return NOT_DONE_YET

    def _answer_later(self, request, path, fault, gone):
        if gone:  # the client went away while we waited
            return
        if fault is None:
            body = self._dispatch(request, path)
            if body is not NOT_DONE_YET:
                request.write(body)
                request.finish()
            return
        self._fault(request, path, fault)

    def _fault(self, request, path, kind):
        is_rpc = request.method == b"POST"
        if kind in ("500", "502", "503"):
            request.setResponseCode(int(kind))
            request.setHeader("Content-Type", "text/plain")
            request.write(f"{kind} simulated failure".encode())
            request.finish()
        elif kind == "429":
            request.setResponseCode(429)
            request.setHeader("Retry-After", str(self.faults.retry_after))
            request.write(b"429 Too Many Requests")
            request.finish()
        elif kind == "timeout":
            self._hold(request)
        elif kind == SLOW:
            self._trickle(request)
            body = self._dispatch(request, path)
            if body is not NOT_DONE_YET:
                request.write(body)
                request.finish()
        elif kind == "stalled":  # half an answer, then nothing: a stuck CDN node
            if is_rpc:  # (XML-RPC answers on its own: the start of an answer instead)
                body = b"<?xml version='1.0'?><methodResponse><params><param><value>"
                request.setHeader("Content-Type", "text/xml")
                request.setHeader("Content-Length", "4096")
                request.write(body)
            else:
                body = self._dispatch(request, path)
                if body is NOT_DONE_YET:  # (a file held by FileFaults: cut it instead)
                    request.transport.abortConnection()
                    return
                request.setHeader("Content-Length", str(len(body)))
                request.write(body[: len(body) // 2])
            self._hold(request)
        elif kind == "reset":
            request.transport.abortConnection()
        elif kind == "xmlrpc-fault" and is_rpc:
            request.setHeader("Content-Type", "text/xml")
            request.write(xmlrpc_client.dumps(xmlrpc.Fault(-32500, "application error"),
                                              methodresponse=True).encode())
            request.finish()
        elif kind == "truncated":
            body = self._dispatch(request, path)
            if body is NOT_DONE_YET:  # XML-RPC answers on its own; break it instead
                request.transport.abortConnection()
                return
            request.setHeader("Content-Length", str(len(body) + 100))
            request.write(body[: len(body) // 2])
            request.transport.loseConnection()
        else:  # malformed (and xmlrpc-fault on a GET)
            request.setHeader("Content-Type", "text/xml" if is_rpc else "application/json")
            request.write(b"<?xml version='1.0'?><methodResponse><params>" if is_rpc
                          else b'{"info": {"name": ')
            request.finish()

    def _trickle(self, request) -> None:
        """Send what ``request`` is answered, once it is whole, in ten pieces over
        the plan's ``slow_seconds``."""
        write, finish, pieces, gone = request.write, request.finish, [], []
        request.notifyFinish().addErrback(gone.append)

        def send(body: bytes, start: int, step: int) -> None:
            if gone:
                return
            if start >= len(body):
                finish()
                return
            write(body[start:start + step])
            self.reactor.callLater(self.faults.slow_seconds / 10, send, body, start + step, step)

        def finish_slowly() -> None:
            body = b"".join(pieces)
            send(body, 0, max(1, -(-len(body) // 10)))

        request.write, request.finish = pieces.append, finish_slowly

    def _hold(self, request) -> None:
        """Keep ``request`` unanswered for the plan's ``timeout_seconds``, then drop it;
        a client that drops it first is counted (``faults.dropped``)."""
        request.notifyFinish().addErrback(lambda _: setattr(
            self.faults, "dropped", self.faults.dropped + 1))
        self.reactor.callLater(self.faults.timeout_seconds,
                               lambda: request.finished or request.transport.abortConnection())

    def _dispatch(self, request, path):
        if path in XMLRPC_PATHS and request.method == b"POST" and \
                self.xmlrpc.endpoint_status is not None and self.xmlrpc.endpoint_calls != 0:
            if self.xmlrpc.endpoint_calls is not None:
                self.xmlrpc.endpoint_calls -= 1
            request.setResponseCode(self.xmlrpc.endpoint_status)
            request.setHeader("Content-Type", "text/html; charset=utf-8")
            return b"<html><body><h1>This API has been retired</h1></body></html>"
        if self.rendered is not None and request.method == b"GET":
            return self.rendered.serve(request, path, self._dispatch_rendering)
        if self.rendered is not None and path in XMLRPC_PATHS and \
                self.xmlrpc.rate_limit is None:  # with a limit, every call must count
            body = self.rendered.serve_listing(request, path, self._dispatch_rendering,
                                               self.xmlrpc.calls)
            if body is not None:
                return body
        return self._dispatch_rendering(request, path)

    def _dispatch_rendering(self, request, path):
        if path in XMLRPC_PATHS and request.method == b"POST":
            return self.xmlrpc.render(request)
        parts = path.strip("/").split("/")
        if parts[0] == "pypi" and len(parts) in (3, 4) and parts[-1] == "json":
            return self._json_api(request, parts[1], parts[2] if len(parts) == 4 else None)
        if parts[0] == "simple":
            return self._simple(request, path, parts[1:])
        if parts[0] == "packages" and len(parts) == 5:
            return self._file(request, parts[4])
        return self._plain(request, 404, "404 Not Found")

    @staticmethod
    def _plain(request, status, text):
        request.setResponseCode(status)
        request.setHeader("Content-Type", "text/plain; charset=utf-8")
        return text.encode()

    @staticmethod
    def _redirect(request, location):
        request.setResponseCode(301)
        request.setHeader("Location", location)
        return b""

    def _json_api(self, request, name, version):
        key = normalize(name)
        if key != name:
            rest = f"{version}/json" if version else "json"
            return self._redirect(request, f"/pypi/{key}/{rest}")
        status, body, serial = self.index.json_api(key, version)
        request.setResponseCode(status)
        request.setHeader("Content-Type", "application/json")
        if serial is not None:
            request.setHeader("X-PyPI-Last-Serial", str(serial))
            request.setHeader("Access-Control-Allow-Origin", "*")
            request.setHeader("Cache-Control", "max-age=900, public")
        return body

    def _simple(self, request, path, parts):
        parts = [p for p in parts if p]
        chosen = simple_pages.choose_content_type(request.getHeader("accept"))
        request.setHeader("Vary", "Accept")
        if not parts:
            if not path.endswith("/"):
                return self._redirect(request, "/simple/")
            serial, rows = self.listing.listing(self.index)
            request.setHeader("X-PyPI-Last-Serial", str(serial))
            request.setHeader("Content-Type", simple_pages.header_for(chosen))
            rows = [row for row in rows if not self.index.is_quarantined(row[0])]
            if chosen == simple_pages.V1_JSON:
                return simple_pages.index_json(rows, serial)
            return simple_pages.index_html(rows)
        name = parts[0]
        key = normalize(name)
        if key != name or not path.endswith("/") or len(parts) > 1:
            return self._redirect(request, f"/simple/{key}/")
        found = self.index.simple_project(key)
        if found is None:
            return self._plain(request, 404, "404 Not Found")
        versions, files, serial, status = found
        request.setHeader("X-PyPI-Last-Serial", str(serial))
        request.setHeader("Content-Type", simple_pages.header_for(chosen))
        if chosen == simple_pages.V1_JSON:
            return simple_pages.detail_json(key, versions, files, serial, status)
        return simple_pages.detail_html(key, files, serial, status)

    def _file(self, request, filename):
        found = self.index.find_file(filename)
        if found is None:
            return self._plain(request, 404, "404 Not Found")
        content, content_type = found
        request.setHeader("Content-Type", content_type)
        return self.files.serve(request, filename, content)

    def _control(self, request, operation):
        request.setHeader("Content-Type", "application/json")
        try:
            args = json.loads(request.content.read() or b"{}")
            if not isinstance(args, dict):
                raise ValueError("the body must be a JSON object of keyword arguments")
            result = self.control(operation, args)
        except (IndexError_, ValueError, TypeError) as error:
            request.setResponseCode(400)
            result = {"error": str(error)}
        except KeyError:
            request.setResponseCode(404)
            result = {"error": f"no control operation {escape(operation)!r}",
                      "operations": list(MUTATIONS) + ["faults", "latency", "stale", "state",
                                                        "xmlrpc", "churn", "listing", "files",
                                                        "auth"]}
        return json.dumps(result).encode()

    def control(self, operation: str, args: dict) -> dict:
        """Run a control operation (also used from Python through the HTTP endpoint)."""
        if self.rendered is not None and operation != "state":
            self.rendered.clear()  # a mutation, or a listing fault, changes answers
        if operation == "state":
            return {"last_serial": self.index.last_serial, "projects": len(self.index.listing()),
                    "faults_injected": dict(self.faults.injected),
                    "requests": self.faults.requests, "xmlrpc_calls": dict(self.xmlrpc.calls),
                    "listing": self.listing.state(), "files": self.files.state()}
        if operation == "faults":
            self.faults = FaultPlan(args.get("rate", 0.0), args.get("kinds", FAULT_KINDS),
                                    args.get("seed", 0), args.get("timeout_seconds", 20.0))
            return {"ok": True}
        if operation == "churn":
            self.stop_churn()
            if float(args.get("seconds", 0)) > 0:
                self.start_churn(float(args["seconds"]), int(args.get("seed", 0)))
            return {"ok": True}
        if operation == "xmlrpc":
            if "gone" in args:
                self.xmlrpc.gone = set(args["gone"])
            if "changelog_limit" in args:
                self.xmlrpc.changelog_limit = int(args["changelog_limit"])
            if "legacy" in args:
                self.xmlrpc.legacy = bool(args["legacy"])
            if "endpoint_status" in args:
                self.xmlrpc.endpoint_status = args["endpoint_status"]
                self.xmlrpc.endpoint_calls = args.get("endpoint_calls")
            return {"ok": True}
        if operation == "listing":
            self.listing.configure(args.get("keep"), args.get("start"))
            if "frozen" in args:
                self.listing.freeze(self.index if args["frozen"] else None)
            return {"ok": True, **self.listing.state()}
        if operation == "files":
            self.files.configure(args.get("corrupt"), args.get("hold"), args.get("padded"),
                                 args.get("gone"), args.get("unsized"))
            return {"ok": True, **self.files.state()}
        if operation == "auth":
            self.credentials = None if not args else base64.b64encode(
                f"{args['user']}:{args['password']}".encode())
            return {"ok": True}
        if operation == "latency":
            self.latency_ms = float(args.get("ms", 0))
            return {"ok": True}
        if operation == "stale":
            self.index.stale_seconds = float(args.get("seconds", 0))
            return {"ok": True}
        if operation not in MUTATIONS:
            raise KeyError(operation)
        serial = getattr(self.index, operation)(**args)
        return {"serial": serial if serial is not None else self.index.last_serial}


class _Capture:
    """Just enough of a request to render an answer ahead of time."""

    method = b"GET"

    def __init__(self, accept: str | None):
        self.accept = accept
        self.code = 200
        self.headers: dict[bytes, bytes] = {}

    def getHeader(self, name):
        return self.accept if name.lower() == "accept" else None

    def setHeader(self, name, value):
        self.headers[name.encode() if isinstance(name, str) else name] = \
            value.encode() if isinstance(value, str) else value

    def setResponseCode(self, code):
        self.code = code


class _CallCapture(_Capture):
    """Just enough of a request to render an XML-RPC answer ahead of time (Twisted's
    XML-RPC resource answers a method that returns at once before it returns)."""

    method = b"POST"

    def __init__(self, body: bytes):
        super().__init__(None)
        self.content = io.BytesIO(body)
        self.written: list[bytes] = []
        self.finished = False

    def getClientAddress(self):
        return IPv4Address("TCP", "127.0.0.1", 0)

    def notifyFinish(self):
        return defer.Deferred()

    def write(self, data):
        self.written.append(data)

    def finish(self):
        self.finished = True


class RenderedAnswers:
    """JSON API and Simple answers, and the XML-RPC listing, rendered once and served
    as bytes until the index changes (any mutation or control operation clears them;
    so does a new serial). Not for stale copies (``stale_seconds``): those change with
    time alone."""

    ACCEPTS = (simple_pages.V1_JSON, "text/html")

    def __init__(self, index: PackageIndex):
        self.index = index
        self.answers: dict[tuple[str, str], tuple[int, dict, bytes]] = {}
        self.serial = index.last_serial

    def clear(self) -> None:
        self.answers.clear()
        self.serial = self.index.last_serial

    def fill(self, render) -> None:
        """Render every project's ``/pypi/<p>/json`` and ``/simple/<p>/`` (both types)."""
        for key, _ in self.index.listing():
            for path, accepts in ((f"/pypi/{key}/json", (None,)),
                                  (f"/simple/{key}/", self.ACCEPTS)):
                for accept in accepts:
                    self._render(path, accept, render)

    def _key(self, path: str, accept: str | None) -> tuple[str, str] | None:
        if path.startswith("/pypi/"):
            return path, ""
        if path.startswith("/simple/") and path != "/simple/":
            return path, simple_pages.choose_content_type(accept)
        return None  # files (faults apply), XML-RPC, the index (listing faults)

    def _render(self, path, accept, render):
        capture = _Capture(accept)
        body = render(capture, path)
        answer = (capture.code, capture.headers, body)
        self.answers[self._key(path, accept)] = answer
        return answer

    def serve(self, request, path, render):
        key = self._key(path, request.getHeader("accept"))
        if key is None or self.index.stale_seconds:  # stale copies change with time
            return render(request, path)
        if self.index.last_serial != self.serial:
            self.clear()
        answer = self.answers.get(key) or self._render(path, request.getHeader("accept"),
                                                       render)
        return self._send(request, answer)

    def serve_listing(self, request, path, render, calls: Counter) -> bytes | None:
        """The answer to an XML-RPC ``list_packages_with_serial`` call as bytes, rendered
        when first asked (at PyPI's size, 57 MB that take seconds to render) and
        counted in ``calls`` when served again; None for any other call."""
        body = request.content.read()
        request.content.seek(0)
        try:
            params, method = xmlrpc_client.loads(body)
        except Exception:
            return None
        if method != "list_packages_with_serial" or params:
            return None
        if self.index.last_serial != self.serial:
            self.clear()
        key = ("xmlrpc", method)
        answer = self.answers.get(key)
        if answer is not None:
            calls[method] += 1
        else:
            capture = _CallCapture(body)
            render(capture, path)
            if not capture.finished:
                return None
            answer = self.answers[key] = (capture.code, capture.headers,
                                          b"".join(capture.written))
        return self._send(request, answer)

    @staticmethod
    def _send(request, answer) -> bytes:
        code, headers, body = answer
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


def churn(index: PackageIndex, rng: random.Random) -> None:
    """One random change, as PyPI sees many every minute (for the demo)."""
    listing = index.listing()
    if not listing:
        return
    key, _ = listing[rng.randrange(len(listing))]
    project = index.get(key)
    roll = rng.random()
    try:
        if roll < 0.55 or not project.releases:
            last = list(project.releases)[-1] if project.releases else "0.0.0"
            digits = [int(x) for x in re.findall(r"\d+", last)[:3]] + [0, 0, 0]
            version = f"{digits[0]}.{digits[1]}.{digits[2] + 1}"
            while version in project.releases:
                digits[2] += 1
                version = f"{digits[0]}.{digits[1]}.{digits[2] + 1}"
            index.publish(key, version)
        elif roll < 0.7:
            index.yank(key, rng.choice(list(project.releases)), "demo: yanked at random")
        elif roll < 0.8:
            index.unyank(key, rng.choice(list(project.releases)))
        elif roll < 0.88:
            index.remove_release(key, rng.choice(list(project.releases)))
        elif roll < 0.94:
            index.publish(f"demo-new-{rng.randrange(10**9)}", "0.1.0")
        else:
            index.remove_project(key)
    except IndexError_:
        pass

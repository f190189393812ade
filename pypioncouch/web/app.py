"""The web front (klein): ``/health``, ``/status``, ``/metrics``, the Simple API and the
JSON API, all read from CouchDB, so any replica (``--no-sync``) serves the same.

Read-only. Errors from CouchDB become a plain 503 (details go to the log, never to
the client); names and versions from URLs are validated before they reach CouchDB.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from jinja2.filters import do_urlencode
from klein import Klein
from packaging.utils import canonicalize_version
from packaging.version import InvalidVersion
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from pypioncouch import __version__, couchapp, model, simple
from pypioncouch.backfill import Busy, OwnInfo, Pacer
from pypioncouch.couch import (
    CouchError, Database, LockedOut, NoDatabase, NotFound, NotTheServer, Timeout, TLSRefused,
    Unauthorized, Unreachable, refusal)
from pypioncouch.filefetch import Fetcher
from pypioncouch.files import FileStore, held_releases, holdings_tag, local_simple_files
from pypioncouch.follow import ChangesFollower
from pypioncouch.pypi import PyPI, PyPIError
from pypioncouch.status import SyncStatus
from pypioncouch.store import Store
from pypioncouch.web.cache import CachedProject, ProjectCache
from pypioncouch.web.health import HealthPolicy
from pypioncouch.web.metrics import Metrics
from pypioncouch.web.refresh import Refreshed
from pypioncouch.web.replica import ReplicaLag
from pypioncouch.web.streaming import PacedWriter, cut_short

log = Logger()

INDEX_PAGE = 5000
ON_THE_SPOT_WAIT = 5.0  # seconds a client may wait for its turn to ask PyPI (see OwnInfo)
# A replica asked for an older release's own metadata it has not got: the syncing
# daemon's backfill fetches it at its pace, and replication brings it.
REPLICA_RETRY_AFTER = 60
# Seconds /health, /status and /metrics wait for CouchDB: a hung CouchDB must show as
# unhealthy before a load balancer or Prometheus (10 s) gives up on the page itself.
PROBE_TIMEOUT = 5.0
STYLE = (Path(__file__).parent / "static" / "style.css").read_bytes()
JSON = "application/json"


PAGE_TYPES = ("text/html", JSON)


class NotAcceptable(Exception):
    """The client accepts none of the types a resource is offered as (RFC 9110: 406)."""

    def __init__(self, offers: tuple[str, ...]):
        super().__init__(", ".join(offers))
        self.offers = offers


def choose(request, offers: tuple[str, ...], fallback: str | None = None) -> str:
    """The type to answer in, by the request's ``Accept``; if it accepts none,
    ``fallback`` or :class:`NotAcceptable`."""
    request.setHeader("Vary", "Accept")
    chosen = simple.negotiate(request.getHeader("accept"), offers) or fallback
    if chosen is None:
        raise NotAcceptable(offers)
    return chosen


def wants_json(request, strict: bool = True) -> bool:
    """Whether a page goes out as JSON rather than HTML. Not ``strict`` (for error
    pages, which go out whatever the client accepts): HTML unless JSON is preferred."""
    if strict:
        return choose(request, PAGE_TYPES) == JSON
    return simple.negotiate(request.getHeader("accept"), PAGE_TYPES) == JSON


def not_acceptable(request, error: NotAcceptable) -> bytes:
    request.setHeader("Vary", "Accept")
    return _plain(request, 406, "406 Not Acceptable: offered as " + ", ".join(error.offers))


def observed(route: str):
    """Count and time a handler for /metrics; turn CouchDB trouble into a bare 503."""
    def decorate(handler):
        @functools.wraps(handler)
        async def wrapper(self, request, *args, **kwargs):
            started = time.perf_counter()
            try:
                return await handler(self, request, *args, **kwargs)
            except NotAcceptable as error:
                return not_acceptable(request, error)
            except CouchError as error:
                log.warn("{route}: CouchDB: {error}", route=route, error=error)
                self.status.note_error(f"web {route}: {error}", "couchdb")
                if request.startedWriting:  # a 200 is on its way: fail the transfer
                    return await cut_short(request)
                request.setResponseCode(503)
                request.setHeader("Content-Type", "text/plain; charset=utf-8")
                request.setHeader("Retry-After", "5")
                if isinstance(error, NoDatabase):
                    return b"503 Service Unavailable: the database is not there\n"
                return b"503 Service Unavailable: the database is not answering\n"
            finally:
                self.metrics.observe(route, request.code, time.perf_counter() - started)
        return wrapper
    return decorate


# Longer than any name PyPI holds (under 100 characters), and short enough for the
# CouchDB request it becomes (a name longer than ~8,000 characters made pouchdb-server
# refuse its headers: a 503 said, and noted on /status as CouchDB's trouble).
MAX_NAME = 500


def servable_name(name: str) -> bool:
    """Whether ``name`` (from a URL) may name a project: else a 404, CouchDB not asked."""
    return len(name) <= MAX_NAME and model.is_valid_project_name(name)


def _plain(request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader("Content-Type", "text/plain; charset=utf-8")
    return (text + "\n").encode()


def _urlencode(value):
    """Jinja's ``urlencode``, a lone surrogate (which CouchDB may hold, and UTF-8 cannot
    say) made "?" first instead of failing the page."""
    if isinstance(value, str):
        value = value.encode("utf-8", "replace").decode("utf-8")
    return do_urlencode(value)


def _redirect(request, location: str) -> bytes:
    request.setResponseCode(301)
    request.setHeader("Location", location)
    return b""


def _not_modified(request, etag: str) -> bool:
    """Sets the ETag; a 304 when If-None-Match names it (RFC 9110's weak comparison:
    a proxy that compresses the body may have made it ``W/"..."``) or is ``*``."""
    request.setHeader("ETag", etag)
    match = request.getHeader("if-none-match")
    tags = [tag.strip().removeprefix("W/") for tag in (match or "").split(",")]
    if match and (etag in tags or match.strip() == "*"):
        request.setResponseCode(304)
        return True
    return False


class WebFront:
    """The klein application. ``resource()`` is what a twisted.web ``Site`` serves."""

    app = Klein()

    def __init__(self, db: Database, status: SyncStatus, *, syncing: bool = True,
                 max_lag_seconds: float = 600.0,
                 upstream: Database | None = None, pypi: PyPI | None = None,
                 files: FileStore | None = None, fetcher: Fetcher | None = None,
                 cache_bytes: int | None = None, pacer: Pacer | None = None,
                 on_the_spot_wait: float = ON_THE_SPOT_WAIT,
                 probe_timeout: float = PROBE_TIMEOUT, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.db = db
        self.store = Store(db)
        self.status = status
        self.syncing = syncing
        self.health = HealthPolicy(status, syncing, max_lag_seconds)
        self.reactor = reactor
        # A replica measures its lag against the database it replicates from.
        self.probe_timeout = probe_timeout
        self.replica = None if syncing else ReplicaLag(db, upstream, reactor,
                                                       timeout=probe_timeout)
        # A release's own metadata not stored yet is fetched from PyPI on the spot
        # (and stored) when we sync, in turn with the backfill (``pacer``, shared): a
        # client waits its turn a few seconds at most, then is told when to come back.
        # A replica says it has none yet.
        self.own_info = OwnInfo(db, pypi, pacer, on_the_spot_wait) \
            if syncing and pypi is not None else None
        self.cache = ProjectCache() if cache_bytes is None else ProjectCache(cache_bytes)
        # Misses on one project while it is being read share that read: a crawler's 32
        # connections on a 3,000-release project hold one copy of it, not 32. (By key,
        # with the cache ticket it began at; other shared reads by a token: _shared.)
        self._reading: dict[Any, tuple[int | None, list[defer.Deferred]]] = {}
        self.metrics = Metrics(status, self.cache, self.replica)
        self.templates = Environment(loader=PackageLoader("pypioncouch.web"),
                                     autoescape=select_autoescape(default=True))
        self.templates.filters["urlencode"] = _urlencode
        self._couch_check: tuple[float, bool] | None = None  # (when, whether it answered)
        self._couch_checking: list[defer.Deferred] | None = None  # those awaiting a first
        # Counting projects reduces a whole facet: seconds on pouchdb-server at 100,000.
        self.stored_counts = Refreshed(self._count_stored, reactor, min_age=30.0,
                                       name="stored counts")
        from pypioncouch.web.browse import MAX_ARG, BrowsePages, safe_link
        self.templates.globals["max_search"] = MAX_ARG
        self.templates.filters["link"] = lambda url: safe_link(url) or "#"
        self.browse_pages = BrowsePages(db, reactor=reactor, render=self.render,
                                        read_project=self.project)
        # Release files (--files): the Simple API points at /files/, served from the
        # store, fetched from upstream by ``fetcher`` (None: serve what is stored).
        self.file_pages = None
        if files is not None:
            from pypioncouch.web.files import FilePages
            self.file_pages = FilePages(files, fetcher, status=status, metrics=self.metrics,
                                         read_project=self.project)

    def resource(self):
        return self.app.resource()

    def changes_follower(self) -> ChangesFollower:
        """The follower that keeps the cache exact (a service for the service tree)."""
        return ChangesFollower(self.db, self.cache.on_change, since="now",
                               on_connected=self.cache.connected,
                               on_disconnected=self.cache.disconnected,
                               reactor=self.reactor, name="web cache")

    # -- health, status, metrics -------------------------------------------------------

    async def couch_ok(self) -> bool:
        """Whether CouchDB answers within ``probe_timeout``: checked at most once a
        second, one check at a time (the others take the last result; before the
        first one's, they wait for it: a request as the daemon starts was a 503)."""
        now = self.reactor.seconds()
        if self._couch_check is not None:
            checked_at, ok = self._couch_check
            if now - checked_at < 1.0 or self._couch_checking is not None:
                return ok
        if self._couch_checking is None:
            self._couch_checking = []
            # (no request owns the check: one whose client leaves cancels its own wait,
            # not the check, whose result the others wait for)
            defer.ensureDeferred(self._check_couch(now))
        if self._couch_checking is None:  # (checked at once: a scripted CouchDB's)
            return self._couch_check[1]
        answer = defer.Deferred()
        self._couch_checking.append(answer)
        return await answer

    async def _check_couch(self, now: float) -> None:
        """Ask CouchDB once; what it answered goes to every request waiting for it,
        and to /status (``couch_problem``: what a person should know of a refusal)."""
        ok = False
        try:
            await self.db.info(timeout=self.probe_timeout)
            ok, self.status.couch_problem = True, None
        except LockedOut as error:
            self.status.couch_problem = str(error)
        except Unauthorized as error:  # it answers, but not to us
            self.status.couch_problem = refusal(self.db.server.user, self.db.name,
                                                error.status, writes=self.syncing)
        except NotFound:
            self.status.couch_problem = await self._no_database()
        except TLSRefused as error:  # (the one line that says what to do)
            self.status.couch_problem = str(error)
        except (Unreachable, Timeout):
            self.status.couch_problem = None  # "not answering"
        except CouchError as error:  # it answers, but not as it should
            self.status.couch_problem = f"CouchDB answers: {error}"
        except Exception:  # (a bug: said, and taken as no answer)
            log.failure("checking CouchDB")
        finally:
            self._couch_check = (now, ok)
            self.status.couch_ok, self.status.couch_checked_at = ok, time.time()
            waiting, self._couch_checking = self._couch_checking, None
            for answer in waiting:
                if not answer.called:  # (a request that left cancelled its own)
                    answer.callback(ok)

    async def _no_database(self) -> str:
        """Why the database is not found: not there, or a database's URL given for the
        server's (PYPIONCOUCH_COUCH set as PYPIONCOUCH_UPSTREAM is, say)."""
        try:
            await self.db.server.info(timeout=self.probe_timeout)
        except NotTheServer as error:
            return str(error)
        except Exception:  # (not answering now: the first answer stands)
            pass
        return f"CouchDB has no database '{self.db.name}'"

    def health_reasons(self, couch_ok: bool) -> list[str]:
        """The sync's reasons to be unhealthy (see :class:`HealthPolicy`)."""
        return self.health.reasons(couch_ok)

    async def serials(self) -> dict:
        """Our serial and the lag: behind PyPI when syncing, behind ``--upstream`` on a
        replica."""
        if self.replica is None:
            s = self.status
            return {"pypi_serial": s.pypi_serial, "serial": s.our_serial, "lag": s.lag,
                    "lag_seconds": s.lag_seconds()}
        return dataclasses.asdict(await self.replica.check())

    async def check(self) -> tuple[bool, dict, list[str]]:
        """``(CouchDB answers, serials and lag, reasons to be unhealthy)``."""
        couch_ok = await self.couch_ok()
        serials = await self.serials() if couch_ok else {}
        return couch_ok, serials, self.health.reasons(couch_ok, serials)

    @app.route("/health", methods=["GET", "HEAD"])
    @observed("health")
    async def health(self, request):
        _, serials, reasons = await self.check()
        body = {"status": "unhealthy" if reasons else "ok", "reasons": reasons,
                "syncing": self.syncing, "phase": self.status.phase, **serials}
        request.setResponseCode(503 if reasons else 200)
        request.setHeader("Content-Type", JSON)
        request.setHeader("Cache-Control", "no-store")
        return json.dumps(body).encode()

    async def _count_stored(self) -> dict:
        info = await self.db.info()
        unparsable = advised = None
        try:
            projects = await couchapp.count(self.db, "name")
            # Requires-Dist entries that do not parse: skipped from the dependents.
            unparsable = await couchapp.count(self.db, "unparsable-requirement")
            advised = await couchapp.count(self.db, "advisory")
        except CouchError:  # no design document (yet): documents only
            projects = None
        releases = None if projects is None else (
            info["doc_count"] - projects - await self.store.design_count())
        return {"documents": info["doc_count"], "projects": projects, "releases": releases,
                "requirements_unparsable": unparsable, "projects_with_advisories": advised,
                "counted_at": time.time()}

    async def status_data(self) -> dict:
        s = self.status
        couch_ok, serials, reasons = await self.check()
        # (counting builds the view after an upgrade: the page does not wait for it)
        counts = await self.stored_counts.get_within(self.probe_timeout, {}) \
            if couch_ok else {}
        uptime = s.clock() - s.started
        return {
            "version": __version__, "uptime_seconds": round(uptime), "syncing": self.syncing,
            "phase": s.phase, "healthy": not reasons, "health_reasons": reasons,
            "pypi": s.pypi_url, "couchdb": s.couch_url, "database": s.database,
            "changes_source": s.changes_source, "pypi_serial": None, "serial": None,
            "lag": None, "lag_seconds": None, **serials,
            "import": {"done": s.import_done, "total": s.import_total},
            "stored": counts, "projects_written": s.projects_written,
            "projects_deleted": s.projects_deleted, "documents_written": s.documents_written,
            "write_rate": round(s.documents_written / uptime, 1) if uptime > 0 else 0.0,
            "pending": s.pending, "last_error": s.last_error,
            "last_error_at": s.last_error_at, "warnings": list(s.warnings),
            "removals_held": s.removals_held, "checkpoint_held": s.held_reason,
            "opml": {"seq": s.opml_seq, "written": s.opml_written, "error": s.opml_error},
            "conflicts": {"settled": s.conflicts_settled, "error": s.conflicts_error},
            "backfill": dataclasses.asdict(s.backfill),
            "status_sweep": dataclasses.asdict(s.status_sweep),
            "files": self.file_pages.summary() if self.file_pages else None,
            "couchdb_up": couch_ok, "cache": self.cache_figures(),
        }

    def cache_figures(self) -> dict:
        c = self.cache
        return {"bytes": c.bytes, "max_bytes": c.max_bytes, "entries": len(c),
                "hits": c.hits, "misses": c.misses, "evictions": c.evictions}

    @app.route("/status", methods=["GET", "HEAD"])
    @observed("status")
    async def status_page(self, request):
        as_json = wants_json(request)
        data = await self.status_data()
        if as_json:
            request.setHeader("Content-Type", JSON)
            return json.dumps(data).encode()
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        return self.render("status.html", data=data,
                           last_error_time=_when(data["last_error_at"]),
                           counted_time=_when(data["stored"].get("counted_at")),
                           uptime=_duration(data["uptime_seconds"]),
                           lag_time=_duration(data["lag_seconds"]))

    @app.route("/metrics")
    @observed("metrics")
    async def metrics_page(self, request):
        if await self.couch_ok() and self.replica is not None:
            await self.replica.check()
        request.setHeader("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        return self.metrics.exposition()

    @app.route("/browse/", branch=True)
    def browse(self, request):
        return self.browse_pages.app.resource()

    @app.route("/files/", branch=True)
    def files(self, request):
        if self.file_pages is None:
            return _plain(request, 404, "404 Not Found: this daemon serves no release "
                                        "files (see --files)")
        return self.file_pages.app.resource()

    @app.route("/")
    def home(self, request):
        return _redirect(request, "/browse/")

    @app.route("/static/style.css")
    def style(self, request):
        request.setHeader("Content-Type", "text/css; charset=utf-8")
        request.setHeader("Cache-Control", "max-age=3600")
        return STYLE

    def render(self, template: str, **context) -> bytes:
        return self.templates.get_template(template).render(
            version=__version__, **context).encode("utf-8", "replace")  # (see below)

    # -- reading projects ------------------------------------------------------------

    async def project(self, key: str) -> CachedProject | None:
        """A project's documents, from the cache or CouchDB; None if unknown."""
        entry = self.cache.get(key)
        if entry is not None:
            return entry
        reading = self._reading.get(key)
        start = reading is None or not self.cache.unchanged(key, reading[0])
        if start:  # none yet, or one that began before a change of this project
            reading = (self.cache.ticket(), [])
            self._reading[key] = reading
        waiter = defer.Deferred()  # a client that leaves cancels its wait, not the read
        reading[1].append(waiter)
        if start:
            defer.ensureDeferred(self._read_project(key, reading[0])).addBoth(
                self._share_read, key, reading)
        return await waiter

    def _share_read(self, result, key: str, reading: tuple) -> None:
        if self._reading.get(key) is reading:
            del self._reading[key]
        for waiter in reading[1]:
            if waiter.called:  # cancelled: its client left
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _read_project(self, key: str, ticket: int) -> CachedProject | None:
        read = await self.store.project_read(key)
        if read.project is None:
            return None
        project, releases = read.project, read.releases
        entry = CachedProject(project, releases, json_bytes=read.size, elided=read.elided)
        # Releases other than those the project records (a copy behind on a cluster,
        # or a write between the two) are served, not kept: their change may have
        # come through the feed before the read, and none would come after it.
        if self.cache.may_keep(entry) and model.releases_as_recorded(project, releases):
            self.cache.put(key, entry, ticket)
        return entry

    # -- Simple API --------------------------------------------------------------------

    async def _index_rows(self):
        """Every (normalized, [display, serial, status, ...]) by name, a page at a time."""
        async for row in couchapp.all_projects(self.db, batch=INDEX_PAGE, timeout=None):
            yield row["id"], row["value"]

    async def index_serial(self) -> int | None:
        """The index's serial. Syncing: PyPI's serial the sync has caught up with (a
        removal moves it on, it never goes back, and a pass half-way has written
        projects past it while others below it are still to come: the highest stored
        would let a peer following this index skip those), None before the first
        checkpoint. On a replica, whose checkpoint does not replicate: the highest
        stored (a removal of the newest project there lowers it)."""
        if self.syncing:
            return self.status.our_serial
        return await couchapp.max_serial(self.db)

    @app.route("/simple", methods=["GET", "HEAD"])
    @observed("simple_redirect")
    async def simple_index_no_slash(self, request):
        _cors(request)
        return _redirect(request, "/simple/")  # (PyPI: a 301; werkzeug's would be a 308)

    @app.route("/simple/", methods=["GET", "HEAD"])
    @observed("simple_index")
    async def simple_index(self, request):
        _cors(request)
        chosen = choose(request, simple.OFFERS, fallback=simple.HTML)  # PyPI: never 406
        serial = await self.index_serial()
        request.setHeader("Content-Type", simple.content_type(chosen))
        _serial_header(request, serial)
        # Streamed a page at a time, at the pace the client reads: the index of 500,000
        # names is never in memory. A CouchDB failure half-way cuts the connection.
        as_json = chosen == simple.V1_JSON
        writer = PacedWriter(request)
        try:
            await writer.write(simple.index_json_head(serial) if as_json
                               else simple.index_html_head())
            first = True
            page: list[tuple[str, list]] = []
            async for key, value in self._index_rows():
                if value[2] != "quarantined":
                    page.append((key, value))
                if len(page) >= INDEX_PAGE:
                    await writer.write(_index_items(page, as_json, first, serial))
                    first, page = False, []
            await writer.write(_index_items(page, as_json, first, serial))
        finally:
            writer.close()
        return simple.INDEX_JSON_TAIL if as_json else simple.INDEX_HTML_TAIL

    @app.route("/simple/<name>", methods=["GET", "HEAD"])
    @observed("simple_redirect")
    async def simple_no_slash(self, request, name):
        _cors(request)
        if not servable_name(name):
            return _plain(request, 404, "404 Not Found")
        return _redirect(request, f"/simple/{model.normalize(name)}/")

    @app.route("/simple/<name>/", methods=["GET", "HEAD"])
    @observed("simple_project")
    async def simple_project(self, request, name):
        _cors(request)
        if not servable_name(name):
            return _plain(request, 404, "404 Not Found")
        key = model.normalize(name)
        if key != name:
            return _redirect(request, f"/simple/{key}/")
        chosen = choose(request, simple.OFFERS, fallback=simple.HTML)  # PyPI: never 406
        entry = await self.project(key)
        if entry is None:
            return _plain(request, 404, "404 Not Found")
        serial = entry.project.get("last_serial")
        request.setHeader("Content-Type", simple.content_type(chosen))
        _serial_header(request, serial)
        variant = "json" if chosen == simple.V1_JSON else "html"
        held = None
        if self.file_pages is not None:
            variant += "-files"  # (links to /files/: not the page a daemon without has)
        if self.file_pages is not None and self.file_pages.fetcher is None:
            # A mirror that cannot fetch lists what it holds (a cached page or an ETag
            # holds only while that stays the same).
            held = self.file_pages.store.held(key)
            variant += "-" + holdings_tag(held)
        # (text/html and v1+html are the same bytes, but not the same representation)
        tag = variant + ("-v1" if chosen == simple.V1_HTML else "")
        if _not_modified(request, f'"{entry.etag_base}-{tag}"'):
            return b""
        body = self.cache.rendered(entry, variant, lambda: render_simple(
            entry, variant.startswith("json"), local_files=self.file_pages is not None,
            held=held))
        if body is None:  # (as the JSON API's: a page without it would pass for whole)
            return _not_here_yet(request, key, model.missing_releases(
                entry.project, entry.releases)[0], as_json=False)
        return body

    # -- JSON API ----------------------------------------------------------------------

    @app.route("/pypi/<name>/json", methods=["GET", "HEAD"])
    @app.route("/pypi/<name>/json/", methods=["GET", "HEAD"])
    @observed("json_project")
    async def json_project(self, request, name):
        return await self._json_api(request, name, None)

    @app.route("/pypi/<name>/<version>/json", methods=["GET", "HEAD"])
    @app.route("/pypi/<name>/<version>/json/", methods=["GET", "HEAD"])
    @observed("json_release")
    async def json_release(self, request, name, version):
        return await self._json_api(request, name, version)

    async def _json_api(self, request, name: str, version: str | None) -> bytes:
        not_found = b'{"message": "Not Found"}'
        _cors(request)
        request.setHeader("Content-Type", JSON)
        if not servable_name(name) or (version is not None and (
                version.startswith("_") or len(version) > 200)):
            request.setResponseCode(404)
            return not_found
        key = model.normalize(name)
        if key != name:
            rest = f"{quote(version, safe='')}/json" if version else "json"
            return _redirect(request, f"/pypi/{key}/{rest}")
        entry = await self.project(key)
        if entry is not None and version is not None:
            version = _find_version(entry.project.get("versions") or [], version)
        payload_key = "json-project" if version is None else f"json:{version}"
        if entry is None or version == "" or not model.has_json_api(entry.project):
            # (before any ETag: an If-None-Match of "*" matches no answer here)
            request.setResponseCode(404)
            return not_found
        release = _release(entry, version)
        if model.lacks_own_info(entry.project, release, version):
            return await self._own_info_on_the_spot(request, entry, release)
        # (etag_base covers the releases: one changes apart from its project, by the
        # backfill, or by a replication that brings it after its project)
        _json_api_headers(request, entry)  # (a 304 carries them too)
        if _not_modified(request, f'"{entry.etag_base}-{payload_key}"'):
            return b""
        shown = entry.project.get("latest_version") if version is None else version
        try:
            if shown in entry.elided and payload_key not in entry.rendered:
                body = await self._json_api_of_elided(entry, shown, version, payload_key)
            else:
                body = self.cache.rendered(entry, payload_key,
                                           lambda: _json_api_body(entry, version))
        except model.MissingInfo:
            # Read whole, the release was another upload than the entry's, its own
            # metadata not stored yet: the feed is evicting the entry (asked again, it
            # is read anew, and fetched on the spot).
            for header in (b"ETag", b"X-PyPI-Last-Serial"):
                request.responseHeaders.removeHeader(header)
            request.setHeader("Retry-After", "1")
            return _json_message(request, 503, f"{key} {shown} changed as it was read: "
                                               "ask again")
        if body is None:
            # The project names a release whose document is not here: a replication
            # that brought the project first (it copies in no set order), or a removal
            # as it was read. A 404 would say the project is gone: a mirror following
            # this one (bandersnatch's verify) would delete it.
            missing = version is None and model.missing_releases(entry.project,
                                                                 entry.releases)
            return _not_here_yet(request, key, missing[0] if missing else shown,
                                 as_json=True)
        return body

    async def _json_api_of_elided(self, entry: CachedProject, shown: str,
                                  version: str | None, payload_key: str) -> bytes | None:
        """The JSON API answer showing release ``shown``, read without its description:
        read whole now, kept with the entry if it is the revision the entry holds."""
        release = _release(entry, shown)
        whole = await self._shared(("whole", entry.project["_id"], shown, release.get("_rev")),
                                   lambda: self.store.release(entry.project["_id"], shown,
                                                              release.get("_rev")))
        if whole is None:
            return None  # (removed since)
        if whole.get("_rev") != release.get("_rev"):
            # (changed since: the feed is evicting the entry)
            return _json_api_body(entry, version, whole)
        return self.cache.rendered(entry, payload_key,
                                   lambda: _json_api_body(entry, version, whole))

    async def _shared(self, token: tuple, read):
        """``await read()``, one at a time per ``token``: requests arriving meanwhile
        share its answer (a crowd asking for one large release reads it once)."""
        waiter = defer.Deferred()
        reading = self._reading.get(token)
        if reading is not None:
            reading[1].append(waiter)
        else:
            reading = (None, [waiter])  # (before the read: it may end at once)
            self._reading[token] = reading
            defer.ensureDeferred(read()).addBoth(self._share_read, token, reading)
        return await waiter

    async def _own_info_on_the_spot(self, request, entry: CachedProject, release: dict
                                    ) -> bytes:
        """``/pypi/<p>/<v>/json`` for a release whose own metadata is not stored yet:
        never another release's. Syncing, it is fetched from PyPI's per-version API now
        (and stored); a replica answers 503 and says why (a 404 would say the release
        is not PyPI's)."""
        key, version = entry.project["_id"], release["version"]
        if self.own_info is None:
            request.setHeader("Retry-After", str(REPLICA_RETRY_AFTER))
            return _json_message(request, 503, (
                f"this mirror has not stored the metadata of {key} {version} yet (PyPI's "
                "project JSON carries the latest release's only; the syncing daemon's "
                "backfill fetches the others, and replication brings them here)"))
        try:
            filled, stored = await self.own_info.fill(
                key, version, project_serial=entry.project.get("last_serial"))
        except Busy as busy:
            wait = max(1, math.ceil(busy.seconds))
            request.setHeader("Retry-After", str(wait))
            rate = 1.0 / self.own_info.pacer.interval
            why = ("PyPI failed a moment ago (or asked to wait), and this mirror waits "
                   "before asking it again") if self.own_info.pacer.held() else (
                f"this mirror asks PyPI for such metadata at a pace of {rate:g} a second "
                "(--backfill-rate)")
            return _json_message(request, 503, (
                f"the metadata of {key} {version} is not stored yet, and {why}: "
                f"try again in {wait}s"))
        except (PyPIError, model.BadPayload) as error:
            log.warn("{key} {version}: per-version JSON from PyPI: {error}", key=key,
                     version=version, error=error)
            self.status.note_error(f"web {key} {version}: {error}", "pypi")
            later = getattr(error, "retry_after", None)  # PyPI's own word, if it said
            request.setHeader("Retry-After", str(max(1, math.ceil(later or 30))))
            return _json_message(request, 503, (
                f"the metadata of {key} {version} is not stored yet, and PyPI's answer "
                f"failed: {error}"))
        if filled is None:
            return _json_message(request, 404, f"Not Found: PyPI does not know {key} "
                                               f"{version} (any more)")
        if stored:
            self.status.backfill.on_demand += 1
        releases = [filled if doc is release else doc for doc in entry.releases]
        payload = model.json_api_payload(entry.project, releases, version)
        if payload is None:
            return _json_message(request, 404, "Not Found")
        _json_api_headers(request, entry)
        return model.dump_json_api(payload)


def _json_api_body(entry: CachedProject, version: str | None, whole: dict | None = None
                   ) -> bytes | None:
    """The JSON API answer from ``entry`` (``whole``: the release of ``version`` read
    whole, when the entry's copy lacks its description)."""
    releases = entry.releases
    if whole is not None:
        releases = [whole if doc["version"] == whole["version"] else doc for doc in releases]
    elif (version or entry.project.get("latest_version")) in entry.elided:
        raise AssertionError(f"{version}: its description was not read")
    payload = model.json_api_payload(entry.project, releases, version)
    return None if payload is None else model.dump_json_api(payload)


def _serial_header(request, serial) -> None:
    """``X-PyPI-Last-Serial``, left out while it is not known (a syncing daemon before
    its first checkpoint): a client reads it as a number."""
    if type(serial) is int:  # (not a bool)
        request.setHeader("X-PyPI-Last-Serial", str(serial))


def _json_api_headers(request, entry: CachedProject) -> None:
    _serial_header(request, entry.project.get("last_serial"))


def _cors(request) -> None:
    """Any page may read the Simple and JSON APIs (as PyPI's, on every answer of theirs:
    a browser's installer, micropip, tells a 404 or a redirect from a network error)."""
    request.setHeader("Access-Control-Allow-Origin", "*")
    request.setHeader("Access-Control-Expose-Headers", "X-PyPI-Last-Serial")


def _json_message(request, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    return json.dumps({"message": message}, ensure_ascii=False).encode("utf-8", "replace")


def _release(entry: CachedProject, version: str | None) -> dict | None:
    """The stored release document of ``version`` (None on the project route)."""
    if version is None:
        return None
    return next((doc for doc in entry.releases if doc["version"] == version), None)


def _index_items(page: list[tuple[str, list]], as_json: bool, first: bool,
                 serial: int | None) -> bytes:
    """A page of the index's items. In JSON, a project stored without a serial (from an
    index that gave none) shows the index's own, else 0: a ``null`` stops a follower
    that compares serials (bandersnatch), and the index's makes it ask about it."""
    if as_json:
        return simple.index_json_items(
            [(value[0], value[1] if value[1] is not None else serial or 0)
             for _, value in page], first)
    return simple.index_html_items([(key, value[0]) for key, value in page])


def _find_version(versions: list[str], wanted: str) -> str:
    """The stored version ``wanted`` names (exactly, else canonically), or ``""``."""
    if wanted in versions:
        return wanted
    try:
        canonical = canonicalize_version(wanted)
        matches = [v for v in versions if canonicalize_version(v) == canonical]
    except InvalidVersion:
        return ""
    return matches[0] if len(matches) == 1 else ""


def _not_here_yet(request, key: str, version: str, as_json: bool) -> bytes:
    """A 503 for a project page that would lack release ``version`` (not in this
    database yet): without the serial and ETag the whole page carries."""
    for header in (b"ETag", b"X-PyPI-Last-Serial"):
        request.responseHeaders.removeHeader(header)
    request.setHeader("Retry-After", "5")
    message = (f"{key} {version} is not in this database yet (a replication under "
               "way?): ask again")
    if as_json:
        return _json_message(request, 503, message)
    return _plain(request, 503, message)


def render_simple(entry: CachedProject, as_json: bool, local_files: bool = False,
                  held: dict[str, int] | None = None) -> bytes | None:
    """A project's Simple page from its stored documents; ``local_files``: with file
    URLs pointing at this daemon's ``/files/``; ``held``: listing only these files.
    None: a release the project names is not among them (see ``missing_releases``)."""
    project = entry.project
    status = project.get("status") or "active"
    if status != "quarantined" and model.missing_releases(project, entry.releases):
        return None
    listed = set(project.get("versions") or [])  # (a removal's tombstone may lag on a
    # replica: a release the project no longer names is not listed)
    releases = {} if status == "quarantined" else {
        doc["version"]: doc["files"] for doc in entry.releases if doc["version"] in listed}
    if held is not None:
        releases = held_releases(releases, held)
    versions, files = simple.simple_files(releases)
    if local_files:
        files = local_simple_files(project["_id"], files)
    serial = project.get("last_serial")
    if as_json:
        return simple.project_json(project["_id"], versions, files, serial, status)
    return simple.project_html(project["_id"], files, serial, status)


def _duration(seconds) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours}h {rest // 60}m {rest % 60}s"
    return f"{days}d {text}" if days else text


def _when(timestamp) -> str:
    if not timestamp:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))

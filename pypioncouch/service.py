"""The twistd service: ``twistd -n pypioncouch --couch URL`` (or ``twist pypioncouch``).

One reactor runs the sync (full import, then the changelog every ``--interval``),
the backfill of older releases' own metadata (``--backfill-rate``, ``--no-backfill``),
the walk for archived projects (``--status-rate``),
the web front on ``--listen`` (with ``--files DIR``, release files too), and the
``_changes`` followers. Every option can also
come from the environment as ``PYPIONCOUCH_<OPTION>`` (``PYPIONCOUCH_COUCH``, ...), so a
systemd unit keeps the CouchDB password out of the command line.
"""

from __future__ import annotations

import math
import os
import sys

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet import defer, endpoints, task
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from pypioncouch import __version__
from pypioncouch.backfill import DEFAULT_RATE, Backfill, Pacer, backfill_client
from pypioncouch.backoff import doubling
from pypioncouch.conflicts import ConflictResolver
from pypioncouch.couch import CouchDB, NotFound
from pypioncouch.filefetch import Fetcher
from pypioncouch.files import FileStore
from pypioncouch.opml_watcher import OpmlWatcher
from pypioncouch.pipeline import CoroutineService
from pypioncouch.pypi import PYPI_URL, PyPI
from pypioncouch.status import SyncStatus
from pypioncouch.status_sweep import DEFAULT_RATE as STATUS_RATE, StatusSweep
from pypioncouch.sync import MAX_CONCURRENCY, XmlRpcImporter
from pypioncouch.urls import (BadURL, check_database_name, check_index_url, option_given,
                              redact, redact_text, split_credentials, split_database_url)
from pypioncouch.web.cache import DEFAULT_MB as DEFAULT_CACHE_MB, MB

log = Logger()


class Options(usage.Options):
    synopsis = "--couch URL [options]"
    longdesc = ("Keep a CouchDB copy of PyPI's metadata current and serve it: health, "
                "status, metrics, a Simple API and the JSON API; with --files DIR, the "
                "release files too (pip and uv then install with PyPI away). Options may "
                "also be given as PYPIONCOUCH_<OPTION> environment variables, dashes "
                "as underscores (PYPIONCOUCH_MAX_LAG=600; a flag: PYPIONCOUCH_NO_SYNC=1, "
                "true or yes).")
    optParameters = [
        ["couch", None, None, "CouchDB server URL; may carry user:password@"],
        ["db", None, "pypi", "database name"],
        ["pypi", None, PYPI_URL, "the package index to mirror: its root, not its /simple/"],
        ["listen", None, "tcp:8080:interface=127.0.0.1",
         "where the web front listens (a Twisted endpoint string)"],
        ["interval", None, 60.0, "seconds between polls of the change feed", float],
        ["concurrency", None, 10, "parallel requests to PyPI", int],
        ["changes", None, "xmlrpc", "change feed: xmlrpc (changelog) or simple (index serials)"],
        ["source", None, "json", "project metadata from: json (JSON API) or xmlrpc"],
        ["timeout", None, 30.0, "seconds PyPI may send nothing before a request is retried", float],
        ["max-lag", None, 600.0, "seconds behind PyPI (or --upstream) before /health "
         "answers 503", float],
        ["max-removals", None, None, "remove at most this many projects in one pass "
         "(default: 1% of the stored projects or 100, whichever is larger); a pass that "
         "would remove more removes nothing and /health answers 503 until the listing "
         "recovers or --confirm-removals", int],
        ["upstream", None, None, "with --no-sync: the CouchDB database URL this replica "
         "replicates from (with credentials: in PYPIONCOUCH_UPSTREAM, off the command "
         "line); /health and /status report the lag behind it"],
        ["cache-mb", None, DEFAULT_CACHE_MB, "megabytes of memory the web front's cache "
         "of projects and rendered pages may hold (estimated; 0: no cache)", float],
        ["backfill-rate", None, DEFAULT_RATE, "at most this many requests a second to "
         "PyPI's per-version JSON API, to fetch the metadata of older releases (in the "
         "background and, on the spot, for the web front: one budget)", float],
        ["status-rate", None, STATUS_RATE, "at most this many Simple pages a second, "
         "read in the background for each project's PEP 792 status (archived: PyPI's "
         "JSON API and changelog do not say it); 0: never asked", float],
        ["files", None, None, "serve release files from this folder: the Simple API points "
         "at /files/..., a file missing there is fetched once from upstream, checked "
         "against its sha256 and kept (with --no-sync nothing is fetched: the mirror "
         "serves what the folder holds, 404 for the rest; fill it with pypioncouch "
         "--fetch-files). A folder, not CouchDB: PyPI's files are tens of TB"],
        ["files-max-gb", None, None, "with --files: the disk budget in GB (10^9 bytes); "
         "past it, the least recently used files not seeded with --fetch-files are "
         "deleted", float],
    ]
    optFlags = [
        ["no-sync", None, "serve a replica: do not talk to PyPI"],
        ["confirm-removals", None, "remove what PyPI says is gone even past "
         "--max-removals, in the first pass (start with it once, after checking "
         "/status)"],
        ["no-backfill", None, "do not fetch the metadata of older releases in the "
         "background (the web front still fetches one when asked for it)"],
        ["guard", None, "also install the write guard _design/pypioncouch-guard, so "
         "CouchDB checks every document's shape (slower writes; for databases that "
         "take writes from elsewhere)"],
    ]

    environment_error: str | None = None  # a PYPIONCOUCH_* value that does not parse

    def __init__(self):
        super().__init__()
        for name, _, _, _, *coerce in self.optParameters:
            # (usage.Options has no public way to reach an option's parser; _dispatch
            # has been there since Twisted 1.x)
            handler = self._dispatch.get(name)
            if coerce and isinstance(handler, usage.CoerceParameter):
                handler.coerce = _naming(name, coerce[0])
        self.environment_errors: dict[str, str] = {}  # by option (given, its value wins)
        for name, _, default, _, *coerce in self.optParameters:
            variable = "PYPIONCOUCH_" + name.upper().replace("-", "_")
            value = os.environ.get(variable)
            if value is not None:
                try:
                    self[name] = coerce[0](value) if coerce else value
                except ValueError:  # said by postOptions, as a usage error
                    self.environment_errors[name] = f"{variable}={value!r} is not a number"
        for name, *_ in self.optFlags:
            variable = "PYPIONCOUCH_" + name.upper().replace("-", "_")
            value = os.environ.get(variable, "")
            if value.strip().lower() in ("1", "true", "yes"):
                self[name] = True
            elif value.strip().lower() not in ("", "0", "false", "no"):
                # (systemd keeps "1  # a comment" whole: a flag must not be dropped)
                self.environment_errors[name] = (f"{variable}={value!r} is neither "
                                                 "1/true/yes nor 0/false/no")

    def parseOptions(self, options=None) -> None:
        """As usage.Options does; under twistd or twist (``parent`` set), a usage error
        is said in one line: they print their whole help before it, some seventy lines
        over the one that matters in the journal."""
        # (twistd passes the plugin's own arguments; alone, they are the process's)
        given = sys.argv[1:] if options is None else options
        self.exposed = _credentials_given(given)
        self.environment_error = next((said for name, said in self.environment_errors.items()
                                       if not option_given(given, f"--{name}")), None)
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            said = redact_text(str(error))  # (it quotes what was typed: maybe a URL)
            if getattr(self, "parent", None) is None:
                raise usage.UsageError(said) from None
            sys.stderr.write(f"pypioncouch: {said} (see --help)\n")
            raise SystemExit(1) from None

    def postOptions(self) -> None:
        if not self["couch"]:
            raise usage.UsageError("--couch URL is required (or PYPIONCOUCH_COUCH)")
        for option in ("couch", "pypi"):
            try:
                split_credentials(self[option])
                if option == "pypi":
                    check_index_url(self[option])
            except BadURL as error:
                raise usage.UsageError(f"--{option}: {error}") from None
        if self.environment_error:
            raise usage.UsageError(self.environment_error)
        if self["guard"] and self["no-sync"]:
            raise usage.UsageError("--guard is for the daemon that writes: a --no-sync "
                                   "replica receives the guard by replication")
        if self["upstream"]:
            if not self["no-sync"]:
                raise usage.UsageError("--upstream is for a replica: use it with --no-sync")
            try:
                split_database_url(self["upstream"], self["db"])
            except BadURL as error:
                raise usage.UsageError(f"--upstream: {error}") from None
        if self["files-max-gb"] is not None:
            if not self["files"]:
                raise usage.UsageError("--files-max-gb goes with --files DIR")
            if not (math.isfinite(self["files-max-gb"]) and self["files-max-gb"] > 0):
                raise usage.UsageError("--files-max-gb must be a positive number of GB")
        if self["files"]:
            try:
                os.makedirs(self["files"], exist_ok=True)
            except OSError as error:
                raise usage.UsageError(f"--files {self['files']}: {error.strerror}") from None
            # A mirror that neither fetches nor evicts may serve a read-only folder.
            writes = not self["no-sync"] or self["files-max-gb"] is not None
            if writes and not os.access(self["files"], os.W_OK | os.X_OK):
                raise usage.UsageError(f"--files {self['files']}: not writable by this user")
        for name in ("interval", "timeout", "max-lag"):
            if not (math.isfinite(self[name]) and self[name] > 0):
                raise usage.UsageError(f"--{name} must be a positive number of seconds")
        if not 0 < self["backfill-rate"] <= 100:
            raise usage.UsageError("--backfill-rate must be a number of requests a second "
                                   "above 0, at most 100")
        if not 0 <= self["status-rate"] <= 100:
            raise usage.UsageError("--status-rate must be a number of pages a second from "
                                   "0 (never asked) to 100")
        if not 0 <= self["cache-mb"] <= 1024 * 1024:
            raise usage.UsageError("--cache-mb must be a number of megabytes, 0 or more")
        if not 1 <= self["concurrency"] <= MAX_CONCURRENCY:
            raise usage.UsageError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
        if self["max-removals"] is not None and self["max-removals"] < 0:
            raise usage.UsageError("--max-removals is a number of projects (0 or more)")
        if self["changes"] not in ("xmlrpc", "simple"):
            raise usage.UsageError("--changes is xmlrpc or simple")
        if self["source"] not in ("json", "xmlrpc"):
            raise usage.UsageError("--source is json or xmlrpc")
        try:
            check_database_name(self["db"])
        except BadURL as error:
            raise usage.UsageError(f"--db: {error}") from None
        try:
            from twisted.internet import reactor
            endpoints.serverFromString(reactor, self["listen"])
        except OSError as error:  # (a TLS key or certificate file it cannot read)
            raise usage.UsageError(f"--listen {self['listen']!r}: {_os_cause(error)}") \
                from None
        except Exception as error:  # (each endpoint's parser fails its own way)
            raise usage.UsageError(f"--listen {self['listen']!r} is not an endpoint "
                                   f"string such as tcp:8080:interface=127.0.0.1 ({error})")


class SyncService(CoroutineService):
    """Runs the importer: prepare, full import if there is no checkpoint, then one
    update every ``interval`` seconds for ever. Each failure is logged once, counted
    on /status and retried with backoff; stopping cancels the pass in flight (the
    checkpoint only ever covers acknowledged writes, so nothing is lost)."""

    name = "sync"

    def __init__(self, importer: XmlRpcImporter, interval: float, reactor=None,
                 max_backoff: float = 300.0):
        if reactor is None:
            from twisted.internet import reactor
        self.importer = importer
        self.interval = interval
        self.reactor = reactor
        self.max_backoff = max_backoff
        self.status = importer.status

    def stopService(self):
        self.status.phase = "stopped"
        return super().stopService()

    async def run(self) -> None:
        prepared = False
        while self.running:
            started = self.reactor.seconds()
            try:
                if not prepared:
                    await self.importer.db.server.info()
                    await self.importer.prepare()
                    prepared = True
                summary = await self.importer.update()
                if summary.projects or summary.deleted or summary.pending:
                    log.info("{summary}", summary=str(summary))
                # (removals are written without asking PyPI: they do not show a
                # sync that can write what PyPI answers)
                self.status.note_pass(bool(summary.projects), summary.pending,
                                      summary.changed)
                self.status.note_checkpoint(summary.stale or summary.incomplete)
                self.status.consecutive_failures = 0
                self.status.last_pass_ok = True
                self.status.last_pass_ok_at = self.status.clock()
                if self.importer.confirm_removals and not summary.stale:
                    self._disarm_confirmation(summary)
                wait = max(0.0, self.interval - (self.reactor.seconds() - started))
            except defer.CancelledError:
                raise
            except Exception as error:  # one failed pass never stops the loop
                if isinstance(error, NotFound):
                    # The database deleted under us (or its design document): the next
                    # pass creates them again, as at start, and imports anew.
                    prepared = False
                self.status.consecutive_failures += 1
                self.status.last_pass_ok = False
                self.status.phase = "retrying"
                self.status.note_sync_error(str(error), "pass")
                log.error("sync pass failed: {error}", error=error)
                wait = doubling(self.status.consecutive_failures, min(self.interval, 10.0),
                                self.max_backoff)
                asked = getattr(error, "retry_after", None)  # (PyPI's rate limit: an hour)
                if isinstance(asked, (int, float)) and asked > wait:
                    wait = min(float(asked), MOST_ASKED_WAIT)
                    log.info("next pass in {wait:.0f}s, when PyPI said to ask again",
                             wait=wait)
            await task.deferLater(self.reactor, wait, lambda: None)

    def _disarm_confirmation(self, summary) -> None:
        """``--confirm-removals`` confirms what was held when the daemon started: the
        first pass that judged PyPI's answers. Left on (in the unit, or its environment
        file), it would let a broken PyPI's answers remove any number of projects for
        as long as the daemon runs."""
        self.importer.confirm_removals = False
        left = (f"; {summary.pending} projects are left to retry: removals among them "
                "are held again, past --max-removals (start with it once more)"
                ) if summary.pending else ""
        log.warn("--confirm-removals confirmed this pass ({removed} projects removed); "
                 "later passes hold removals past --max-removals again (take it out of "
                 "the daemon's options: it confirms the first pass after every start)"
                 "{left}", removed=summary.deleted, left=left)


def imported(status: SyncStatus) -> bool:
    """Whether the background walks over what is stored (backfill, status sweep) may
    run: a first import has been done, and none is running again (a database deleted
    under the daemon), nor a new version's views being built (before the first pass),
    which they would slow, reading views that are being filled."""
    return status.our_serial is not None and status.phase not in ("full import",
                                                                  "preparing")


# The longest a failed pass waits when PyPI says when to ask again (its XML-RPC rate
# limit resets within the hour; a Retry-After past that is not believed).
MOST_ASKED_WAIT = 3600.0


class ClosesConnections(Service):
    """Closes the HTTP clients' pooled connections when the daemon stops."""

    name = "connections"

    def __init__(self, clients: list):
        self.clients = clients

    def stopService(self):
        super().stopService()
        return defer.gatherResults([defer.maybeDeferred(c.close) for c in self.clients])


class WebListener(MultiService):
    """The web front's listening port: if ``--listen`` cannot be had (in use, not
    allowed), the daemon stops with one line. (A plain StreamServerEndpointService
    logs a traceback and the daemon goes on syncing with no web front.)"""

    def __init__(self, listen: str):
        super().__init__()
        self.listen = listen

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()  # strports' service listens here, or raises
        except _CANNOT_LISTEN as error:
            self._cannot_listen(error)

    def startService(self) -> None:
        try:
            super().startService()  # (``twist`` listens here: no privileged start)
        except _CANNOT_LISTEN as error:
            self._cannot_listen(error)

    def _cannot_listen(self, error: Exception) -> None:
        if isinstance(error, CannotListenError):
            cause = getattr(error.socketError, "strerror", None) or error.socketError
        elif isinstance(error, OSError):  # (a unix socket's folder missing, say)
            cause = _os_cause(error)
        else:  # (a port out of range; a systemd socket not passed)
            cause = f"{type(error).__name__}: {error}"
        raise SystemExit(f"pypioncouch: --listen {self.listen}: {cause}") from None


def _naming(option: str, coerce):
    """``coerce`` (int, float) refusing a value in a line that names the option
    (Twisted's says "Parameter type enforcement failed: invalid literal for int()")."""
    def parse(value: str):
        try:
            return coerce(value)
        except ValueError:
            kind = "a whole number" if coerce is int else "a number"
            raise usage.UsageError(redact_text(f"--{option} {value!r} is not {kind}")) \
                from None
    return parse


# What listening on an endpoint string that parsed may still raise.
_CANNOT_LISTEN = (CannotListenError, OSError, OverflowError, IndexError, ValueError)


def _os_cause(error: OSError) -> str:
    """An OSError in a few words: what, and on which file."""
    cause = error.strerror or str(error)
    return f"{cause}: {error.filename}" if error.filename else cause


def _credentials_given(args: list[str]) -> list[str]:
    """The URL options given with credentials in ``args``: a command line any user of
    the machine reads (``ps``), for as long as the daemon runs."""
    found = []
    for at, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if name not in ("--couch", "--upstream", "--pypi"):
            continue
        if not equals:
            value = args[at + 1] if at + 1 < len(args) else ""
        try:
            _, credentials = split_credentials(value)
        except BadURL:
            credentials = None  # (postOptions says what is wrong with it)
        if credentials:
            found.append(name)
    return found


def makeService(options: Options, reactor=None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    for option in getattr(options, "exposed", ()):
        log.warn("the credentials in {option} are on the command line, which any user of "
                 "this machine can read (ps): give that URL in {variable} instead (the "
                 "systemd unit's environment file)", option=option,
                 variable="PYPIONCOUCH_" + option[2:].upper())
    from pypioncouch.web.app import ON_THE_SPOT_WAIT, WebFront

    couch = CouchDB(options["couch"], reactor=reactor)
    db = couch.database(options["db"])
    syncing = not options["no-sync"]
    pypi_url = redact(options["pypi"].rstrip("/") + "/")
    status = SyncStatus(pypi_url=pypi_url if syncing else "",
                        couch_url=couch.display_url, database=db.name, syncing=syncing,
                        phase="starting" if syncing else "mirror")
    top = MultiService()
    clients: list = [couch]  # their pooled connections close when the daemon stops
    ClosesConnections(clients).setServiceParent(top)  # first in, so stopped last
    # PyPI's per-version API is asked by the backfill and by the web front on the spot,
    # in turns of one pacer: --backfill-rate is the daemon's rate, not each one's.
    per_version = Pacer(options["backfill-rate"], reactor)
    if syncing:
        pypi = PyPI(options["pypi"], reactor=reactor, concurrency=options["concurrency"],
                    timeout=options["timeout"])
        clients.append(pypi)
        importer = XmlRpcImporter(db, pypi, status=status, concurrency=options["concurrency"],
                                  source=options["source"], changes=options["changes"],
                                  max_removals=options["max-removals"],
                                  confirm_removals=bool(options["confirm-removals"]),
                                  guard=bool(options["guard"]))
        SyncService(importer, options["interval"], reactor).setServiceParent(top)
        OpmlWatcher(db, status, reactor=reactor).setServiceParent(top)
        # Reads the whole feed once a full import is over: while it runs, the two would
        # share CouchDB (~5 % of the import's time, bench/RESULTS.md).
        ConflictResolver(db, status, reactor=reactor,
                         ready=lambda: status.phase != "full import").setServiceParent(top)
        if not options["no-backfill"]:
            backfill_pypi = backfill_client(options["pypi"], reactor=reactor,
                                            timeout=options["timeout"])
            clients.append(backfill_pypi)
            Backfill(db, backfill_pypi, status.backfill, rate=options["backfill-rate"],
                     pacer=per_version, ready=lambda: imported(status),
                     reactor=reactor).setServiceParent(top)
        if options["status-rate"] > 0:
            status_pypi = PyPI(options["pypi"], reactor=reactor, concurrency=1,
                               timeout=options["timeout"])
            clients.append(status_pypi)
            StatusSweep(db, status_pypi, status, rate=options["status-rate"],
                        ready=lambda: imported(status),
                        reactor=reactor).setServiceParent(top)
    upstream = None
    if options["upstream"]:
        server, name = split_database_url(options["upstream"], options["db"])
        upstream = CouchDB(server, reactor=reactor).database(name)
        clients.append(upstream.server)
    # The web front asks PyPI for a release's own metadata while a client waits:
    # a few connections, a short timeout, one retry, and no long Retry-After wait.
    front_pypi = PyPI(options["pypi"], reactor=reactor, concurrency=4, retries=1,
                      timeout=min(10.0, options["timeout"]),
                      max_retry_after=ON_THE_SPOT_WAIT) if syncing else None
    if front_pypi is not None:
        clients.append(front_pypi)
    files = fetcher = None
    if options["files"]:
        budget = options["files-max-gb"]
        files = FileStore(options["files"],
                          max_bytes=None if budget is None else int(budget * 1e9))
        if syncing:  # a --no-sync mirror is air-gapped: it never fetches files
            fetcher = Fetcher(files, reactor, concurrency=options["concurrency"],
                              timeout=options["timeout"], upstream=options["pypi"],
                              on_error=lambda message: status.note_error(message, "files"))
            clients.append(fetcher)
        log.info("release files in {dir} ({bytes:,} bytes in {count} files){fetching}",
                 dir=files.root, bytes=files.bytes, count=files.count,
                 fetching=", fetched from upstream when missing" if syncing else "")
    front = WebFront(db, status, syncing=syncing, max_lag_seconds=options["max-lag"],
                     upstream=upstream, pypi=front_pypi, files=files, fetcher=fetcher,
                     cache_bytes=int(options["cache-mb"] * MB), pacer=per_version,
                     reactor=reactor)
    front.changes_follower().setServiceParent(top)
    site = Site(front.resource())
    site.noisy = False
    web = WebListener(options["listen"])
    strports.service(options["listen"], site, reactor=reactor).setServiceParent(web)
    web.setServiceParent(top)
    log.info("pypioncouch {version}: CouchDB {couch}, database {db}, web on {listen}",
             version=__version__, couch=couch.display_url, db=db.name,
             listen=options["listen"])
    return top

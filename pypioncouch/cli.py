"""The ``pypioncouch`` command (the 2011 original's interface, kept)::

    pypioncouch --fullimport http://localhost:5984/
    pypioncouch --update http://admin:pw@localhost:5984/ [--pypi URL] [--db pypi]
    pypioncouch --replicate http://a:5984/pypi http://b:5984/pypi [--continuous]
    pypioncouch --fetch-files http://localhost:5984/ twisted 'treq>=24' [-r reqs.txt] \
        --files /srv/pypi-files [--with-deps] [--files-max-gb 500]

Exit status 0 on success; otherwise non-zero with a one-line cause on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import traceback

from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner,
    textFileLogObserver)

from pypioncouch import __version__, couchapp
from pypioncouch.couch import CouchDB, CouchError, NotTheServer
from pypioncouch.opml_watcher import regenerate_all
from pypioncouch.progress import FollowingProgress, Progress
from pypioncouch.pypi import PYPI_URL, PyPI, PyPIError
from pypioncouch.status import SyncStatus
from pypioncouch.sync import MAX_CONCURRENCY, XmlRpcImporter, run_pass
from pypioncouch.trace import Trace
from pypioncouch.urls import (
    BadURL, check_database_name, check_index_url, one_segment_too_many, option_given,
    redact_text, split_credentials, split_database_url)


ENV_COUCH = "PYPIONCOUCH_COUCH"  # the URL of commands given none (as for the daemon)
# Options the command shares with the daemon take their defaults from the same
# PYPIONCOUCH_<OPTION> variables: a pass run by hand with the daemon's environment file
# loaded works on the daemon's database and index. (Flags are said on the command line.)
ENV_OPTIONS = ("db", "pypi", "concurrency", "source", "changes", "timeout",
               "max_removals", "files", "files_max_gb")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors show no password: they quote what was typed,
    and a URL may be typed where a number or a name goes."""

    def error(self, message: str):
        super().error(redact_text(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pypioncouch",
        description="Mirror PyPI's project and release metadata into CouchDB.")
    action = parser.add_mutually_exclusive_group(required=True)
    # URL left out: taken from PYPIONCOUCH_COUCH (a command line is visible to ps).
    action.add_argument("--fullimport", metavar="URL", nargs="?", const="",
                        help="import every project into the CouchDB server at URL "
                             f"(or ${ENV_COUCH})")
    action.add_argument("--update", metavar="URL", nargs="?", const="",
                        help="apply PyPI's changes since the last import or update")
    action.add_argument("--replicate", nargs=2, metavar=("SOURCE", "TARGET"),
                        help="replicate the database SOURCE to TARGET (database URLs)")
    action.add_argument("--opml", metavar="URL", nargs="?", const="",
                        help="regenerate every project's opml.xml in one pass")
    action.add_argument("--push-design", metavar="URL", nargs="?", const="",
                        help="install or update the design document _design/pypioncouch")
    action.add_argument("--fetch-files", metavar="URL", nargs="?", const="",
                        help="seed the release file store (--files DIR) with the files of "
                             "the projects named (PROJECT, PROJECT==VERSION, any "
                             "requirement), as the mirror's database at URL describes "
                             "them; files already stored right are skipped (a first "
                             f"word that is not a URL is a project: the URL is ${ENV_COUCH})")
    parser.add_argument("requirements", nargs="*", metavar="PROJECT[==VERSION]",
                        help="with --fetch-files: what to fetch (the newest release a "
                             "requirement allows, all its files)")
    parser.add_argument("-r", "--requirement", action="append", default=[], metavar="FILE",
                        help="with --fetch-files: requirements from a pip requirements file")
    parser.add_argument("--files", metavar="DIR",
                        help="with --fetch-files: the release file store (the daemon's --files)")
    parser.add_argument("--with-deps", action="store_true",
                        help="with --fetch-files: also fetch the dependencies (the mirror's "
                             "Requires-Dist, markers as for this Python), recursively")
    parser.add_argument("--files-max-gb", type=_gigabytes, default=None, metavar="GB",
                        help="with --fetch-files: the store's disk budget; files not seeded "
                             "are evicted, least recently used first, to make room")
    parser.add_argument("--pypi", type=_index, default=PYPI_URL,
                        help=f"the index, its root, not its /simple/ (default {PYPI_URL})")
    parser.add_argument("--db", type=_database, default="pypi",
                        help="database name (default pypi)")
    parser.add_argument("--concurrency", type=_workers, default=10,
                        help="parallel requests to PyPI (default 10, at most 100)")
    parser.add_argument("--source", choices=("json", "xmlrpc"), default="json",
                        help="per-project metadata from the JSON API (default) or the "
                             "pre-2024 XML-RPC methods")
    parser.add_argument("--changes", choices=("xmlrpc", "simple"), default="xmlrpc",
                        help="change feed: the XML-RPC changelog (default) or the "
                             "/simple/ index serials")
    parser.add_argument("--max-removals", type=_count, default=None, metavar="N",
                        help="remove at most N projects in one pass (default: 1%% of the "
                             "stored projects or 100, whichever is larger); a pass that "
                             "would remove more removes nothing")
    parser.add_argument("--confirm-removals", action="store_true",
                        help="remove what PyPI says is gone even past --max-removals")
    parser.add_argument("--guard", action="store_true",
                        help="with --fullimport, --update or --push-design: also install "
                             "the write guard _design/pypioncouch-guard "
                             "(CouchDB then checks every document's shape; slower writes; "
                             "for databases that take writes from elsewhere)")
    parser.add_argument("--timeout", type=_seconds, default=30.0,
                        help="seconds PyPI may send nothing before the request is "
                             "given up and retried (default 30; a long answer that keeps "
                             "coming is waited for)")
    parser.add_argument("--continuous", action="store_true",
                        help="with --replicate: replicate continuously (CouchDB goes "
                             "on until it restarts); on a terminal the command stays to "
                             "show progress (Ctrl-C only stops watching), otherwise and "
                             "with --quiet it ends once CouchDB has taken the job")
    parser.add_argument("--trace", metavar="FILE",
                        help="with --fullimport/--update: write where the pass spent its "
                             "time to FILE (JSON: each stage busy, starved, blocked; the "
                             "way of a sample of projects, with timestamps)")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument("--version", action="version", version=f"pypioncouch {__version__}")
    parser.epilog = (f"A URL left out (--fullimport, --update, --opml, --push-design) is "
                     f"${ENV_COUCH}. Options shared with the daemon (--db, --pypi, "
                     "--concurrency, --source, --changes, --timeout, --max-removals, "
                     "--files, --files-max-gb) default to its PYPIONCOUCH_<OPTION> "
                     "environment variables (PYPIONCOUCH_MAX_REMOVALS, ...).")
    return parser


def defaults_from_environment(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """``PYPIONCOUCH_<OPTION>`` as the default of each of :data:`ENV_OPTIONS`, checked as
    the option would be. Returns what is wrong, ``(option, said with the variable's
    name)`` (after the command line is read: ``--help`` still helps, and the option
    given there wins)."""
    wrong = []
    actions = {action.dest: action for action in parser._actions}  # (argparse has no
    # public way to look an option up; _actions has been there since Python 2.7)
    for dest in ENV_OPTIONS:
        variable = "PYPIONCOUCH_" + dest.upper()
        text = os.environ.get(variable)
        if text is None:
            continue
        action = actions[dest]
        try:
            value = action.type(text) if action.type else text
        except argparse.ArgumentTypeError as error:
            wrong.append((action.option_strings[0], f"{variable}={text!r}: {error}"))
            continue
        if action.choices and value not in action.choices:
            wrong.append((action.option_strings[0], f"{variable}={text!r}: choose from "
                          f"{', '.join(action.choices)}"))
            continue
        parser.set_defaults(**{dest: value})
    return wrong


def _number(kind, allowed, what: str):
    """An argparse type: ``kind`` of the text when ``allowed``, else one line saying
    what was wanted."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not allowed(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


_count = _number(int, lambda n: n >= 0, "a number of projects")
_gigabytes = _number(float, lambda gb: math.isfinite(gb) and gb > 0,
                     "a positive number of gigabytes")
_seconds = _number(float, lambda s: math.isfinite(s) and s > 0, "a positive number of seconds")
_workers = _number(int, lambda n: 1 <= n <= MAX_CONCURRENCY,
                   f"a number from 1 to {MAX_CONCURRENCY}")


def _database(text: str) -> str:
    try:
        return check_database_name(text)
    except BadURL as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _index(text: str) -> str:
    """--pypi's type (PYPIONCOUCH_PYPI's too: a mistake there is said by its name)."""
    try:
        split_credentials(text)
        return check_index_url(text)
    except BadURL as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _log_warnings_to_stderr() -> None:
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr),
                                    [LogLevelFilterPredicate(LogLevel.warn)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


async def sync_command(reactor, args) -> int:
    url = args.fullimport or args.update
    db = CouchDB(url, reactor=reactor).database(args.db)
    pypi = PyPI(args.pypi, reactor=reactor, concurrency=args.concurrency, timeout=args.timeout)
    progress = None if args.quiet else Progress()

    def show(status):
        if progress is None:
            return
        if status.phase == "full import" and status.import_total:
            progress.update(status.import_done, status.import_total)
        elif status.pass_total:  # (an update: its total grows with each changelog page)
            progress.update(status.pass_done, status.pass_total)

    trace = Trace() if args.trace else None
    importer = XmlRpcImporter(db, pypi, concurrency=args.concurrency, source=args.source,
                              changes=args.changes, max_removals=args.max_removals,
                              confirm_removals=args.confirm_removals, guard=args.guard,
                              trace=trace, progress=show)
    written: list[bool] = []

    def write_trace(interrupted: bool = False) -> None:
        if not written:
            written.append(True)
            _write_trace(args.trace, trace, interrupted)

    if trace is not None:  # an interrupted pass (Ctrl-C, SIGTERM) writes it on the way out
        trigger = reactor.addSystemEventTrigger("before", "shutdown", write_trace, True)
    # (an update reads the changes feed after its pass: conflicts, pypioncouch/conflicts.py)
    conflicts_progress = None if progress is None else FollowingProgress(progress, "changes")
    try:
        summary = await run_pass(importer, full=bool(args.fullimport), conflicts_progress=(
            conflicts_progress.update if conflicts_progress else None))
    finally:
        for shown in (progress, conflicts_progress):
            if shown is not None:
                shown.close()
        if trace is not None and not written:
            reactor.removeSystemEventTrigger(trigger)
            write_trace()
    print(summary)
    if summary.held:  # removals held back: an operator has to look (the reason is above)
        return 4
    return 0 if not (summary.pending or summary.stale or summary.incomplete
                     or summary.conflicts_problem) else 3


def _write_trace(path: str, trace: Trace, interrupted: bool = False) -> None:
    if interrupted:
        trace.mark("interrupted")
    try:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(trace.report(), out, indent=1)
    except OSError as error:
        print(f"pypioncouch: warning: --trace {path}: {error.strerror}", file=sys.stderr)
        return
    print(f"pypioncouch: {trace.summary_line()}; the whole trace is in {path}",
          file=sys.stderr)


async def replicate_command(reactor, args) -> int:
    source_server, source_db = split_database_url(args.replicate[0], args.db)
    target_server, target_db = split_database_url(args.replicate[1], args.db)
    source = CouchDB(source_server, reactor=reactor).database(source_db)
    target_couch = CouchDB(target_server, reactor=reactor, timeout=30)
    target = target_couch.database(target_db)
    # Both servers' welcomes first: a URL one segment too long (a document's, or a
    # database's as the server behind a proxy's path) is said as such.
    welcomes = []
    for url, server in zip(args.replicate, (source.server, target_couch)):
        try:
            welcomes.append(await server.info())
        except NotTheServer as error:
            raise BadURL(one_segment_too_many("--replicate", url, error.db_name)) from None
    source_welcome = welcomes[0]
    total = (await source.info())["doc_count"]
    progress = None if args.quiet else Progress(unit="docs")
    # Pull replication, run by the target: the usual way to fill a mirror. Except from
    # pouchdb-server: it answers Apache CouchDB's multipart open_revs reads in plain
    # text, which fails the pull, so there the source pushes.
    runner = target_couch
    if "express-pouchdb" in source_welcome:
        runner = source.server
    running = defer.ensureDeferred(runner.replicate(
        source.url_with_credentials, target.url_with_credentials,
        continuous=args.continuous))

    async def show_progress():
        try:
            done = (await target.info())["doc_count"] if await target.exists() else 0
        except CouchError:  # (only the display: the replication's own end says)
            done = None
        if progress is not None and done is not None:
            progress.update(done, max(total, done))
        await task.deferLater(reactor, 1.0, lambda: None)

    if args.continuous:
        await running
        if progress is None or not sys.stderr.isatty():  # (a script: the job is CouchDB's)
            print(f"continuous replication {source.display_url} -> {target.display_url} "
                  "started (CouchDB goes on replicating until it restarts: a _replicator "
                  "document lasts)", flush=True)
            return 0
        print(f"continuous replication {source.display_url} -> {target.display_url} "
              "started; Ctrl-C stops watching (CouchDB goes on replicating until it "
              "restarts: a _replicator document lasts)", flush=True)
        args.watching = ("stopped watching; CouchDB goes on replicating "
                         f"{source.display_url} -> {target.display_url}")
        while True:
            await show_progress()
    while not running.called:
        await show_progress()
    answer = await running
    if progress is not None:
        progress.update((await target.info())["doc_count"], total, force=True)
        progress.close()
    if (answer or {}).get("no_changes"):  # (its history is an earlier run's)
        print(f"replicated {source.display_url} -> {target.display_url}: nothing new")
        return 0
    # (Apache CouchDB counts in the history; pouchdb-server may answer without one)
    counts = {**(answer or {}), **((answer or {}).get("history") or [{}])[0]}
    written, refused = counts.get("docs_written"), counts.get("doc_write_failures") or 0
    print(f"replicated {source.display_url} -> {target.display_url}: "
          + (f"{written} documents written" if written is not None else "done")
          + (f", {refused} refused by the target (its validate_doc_update or rights)"
             if refused else ""))
    return 3 if refused else 0


async def opml_command(reactor, args) -> int:
    db = CouchDB(args.opml, reactor=reactor).database(args.db)
    await db.server.info()
    await couchapp.push(db)
    progress = None if args.quiet else Progress()
    status = SyncStatus()  # counts the projects left as they were (each said in the log)
    try:
        written = await regenerate_all(db, status, progress.update if progress else None)
    finally:
        if progress is not None:
            progress.close()
    left = status.errors_by_kind.get("opml", 0)
    print(f"opml.xml: {written} attachments written in {db.display_url}"
          + (f"; {left} project(s) left as they were (said above)" if left else ""))
    return 3 if left else 0


async def push_design_command(reactor, args) -> int:
    db = CouchDB(args.push_design, reactor=reactor).database(args.db)
    await db.server.info()
    await db.ensure()
    written = await couchapp.push(db)
    print(f"{couchapp.DESIGN_ID} {'written' if written else 'unchanged'} in {db.display_url}")
    if args.guard:
        written = await couchapp.push_guard(db)
        print(f"{couchapp.GUARD_ID} {'written' if written else 'unchanged'} in "
              f"{db.display_url}")
    return 0


async def fetch_files_command(reactor, args) -> int:
    from pathlib import Path

    from pypioncouch.filefetch import Fetcher
    from pypioncouch.files import FileStore
    from pypioncouch.seed import Seeder, parse_requirement, read_requirements

    requirements = [parse_requirement(text) for text in args.requirements]
    for path in args.requirement:
        requirements += read_requirements(path)
    db = CouchDB(args.fetch_files, reactor=reactor).database(args.db)
    await db.server.info()  # (a database's URL given: said as such, not as a 404)
    await db.info()
    try:
        store = FileStore(Path(args.files), max_bytes=None if args.files_max_gb is None
                          else int(args.files_max_gb * 1e9))
    except OSError as error:
        raise ValueError(f"--files {args.files}: {error.strerror}") from None
    fetcher = Fetcher(store, reactor, concurrency=args.concurrency, timeout=args.timeout,
                      upstream=args.pypi)  # (a private index: its credentials)
    progress = None if args.quiet else Progress(unit="files")
    seeder = Seeder(db, store, fetcher, with_deps=args.with_deps,
                    concurrency=args.concurrency,
                    progress=progress.update if progress else None)
    plan = await seeder.plan(requirements)
    for warning in plan.warnings:
        print(f"pypioncouch: warning: {warning}", file=sys.stderr)
    try:
        summary = await seeder.fetch(plan)
    except OSError as error:  # (the folder's manifest: DIR read-only, say)
        raise ValueError(f"--files {args.files}: cannot write there: "
                         f"{error.strerror or error}") from None
    finally:
        if progress is not None:
            progress.close()
    for failure in summary.failed:
        print(f"pypioncouch: failed: {failure}", file=sys.stderr)
    print(f"{summary}; in {store.root}")
    return 3 if summary.failed else 0


def url_from_environment(parser: argparse.ArgumentParser, args) -> None:
    """``--update`` (and the like) without a URL: the URL is ``$PYPIONCOUCH_COUCH``.
    ``--fetch-files`` followed by a project, not a URL, took the project for it."""
    if args.fetch_files and not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", args.fetch_files):
        args.requirements.insert(0, args.fetch_files)
        args.fetch_files = ""
    for option in ("fullimport", "update", "opml", "push_design", "fetch_files"):
        if getattr(args, option) == "":
            url = os.environ.get(ENV_COUCH)
            if not url:
                parser.error(f"--{option.replace('_', '-')} without a URL takes it from "
                             f"{ENV_COUCH}, which is not set")
            setattr(args, option, url)


def check_arguments(parser: argparse.ArgumentParser, args) -> None:
    # A server's URL may have a path (a proxy's prefix), as the daemon's --couch may; a
    # database's names one database. A command line it cannot read: exit status 2.
    servers = [(f"--{option.replace('_', '-')}", getattr(args, option))
               for option in ("fullimport", "update", "opml", "push_design", "fetch_files")]
    for option, url in servers:
        if url:
            try:
                split_credentials(url)
            except BadURL as error:
                parser.error(f"{option}: {error}")
    for url in args.replicate or ():
        try:
            split_database_url(url, args.db)
        except BadURL as error:
            parser.error(f"--replicate: {error}")
    if args.fetch_files:
        if not args.files:
            parser.error("--fetch-files needs --files DIR (where the files go)")
        if not args.requirements and not args.requirement:
            parser.error("--fetch-files needs projects to fetch (PROJECT[==VERSION]... "
                         "or -r FILE)")
    elif args.trace and not (args.fullimport or args.update):
        parser.error("--trace goes with --fullimport or --update")
    elif args.requirements or args.requirement or args.with_deps or any(
            getattr(args, dest) != parser.get_default(dest)  # (the daemon's are defaults)
            for dest in ("files", "files_max_gb")):
        parser.error("projects, -r, --files, --with-deps and --files-max-gb go with "
                     "--fetch-files")
    if args.trace:  # said now, not after an import of hours
        existed = os.path.exists(args.trace)
        try:
            with open(args.trace, "a", encoding="utf-8"):
                pass
        except OSError as error:
            parser.error(f"--trace {args.trace}: {error.strerror}")
        if not existed:
            os.remove(args.trace)


def _one_line(error: Exception) -> str:
    """An error's message on one line, without a password: it may quote what was
    typed (a requirement by URL) or a server's reason (CouchDB's may span lines)."""
    return re.sub(r"\s*\n\s*", " ", redact_text(str(error))).strip()


def main(argv=None) -> None:
    parser = build_parser()
    wrong = defaults_from_environment(parser)
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    wrong = [said for option, said in wrong if not option_given(given, option)]
    if wrong:
        parser.error(wrong[0])
    url_from_environment(parser, args)
    check_arguments(parser, args)
    _log_warnings_to_stderr()

    finished: list[bool] = []

    async def run(reactor):
        reactor.addSystemEventTrigger("before", "shutdown", say_interrupted, finished, args)
        try:
            if args.replicate:
                code = await replicate_command(reactor, args)
            elif args.opml:
                code = await opml_command(reactor, args)
            elif args.push_design:
                code = await push_design_command(reactor, args)
            elif args.fetch_files:
                code = await fetch_files_command(reactor, args)
            else:
                code = await sync_command(reactor, args)
        except (CouchError, PyPIError, BadURL, ValueError) as error:
            print(f"pypioncouch: error: {_one_line(error)}", file=sys.stderr)
            code = 1
        except Exception as error:  # a bug, or an answer nothing above foresaw
            print(f"pypioncouch: unexpected error: {type(error).__name__}: "
                  f"{_one_line(error)} "
                  "(what was written is kept; with PYPIONCOUCH_TRACEBACK=1 in the "
                  "environment the traceback is shown, for a bug report)", file=sys.stderr)
            if os.environ.get("PYPIONCOUCH_TRACEBACK"):
                traceback.print_exc()
            code = 1
        finished.append(True)
        if code:
            raise SystemExit(code)

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as leaving:
        if not finished and not leaving.code:
            raise SystemExit(INTERRUPTED) from None  # stopped by a signal: not a success
        raise


INTERRUPTED = 130  # as a shell reports a command stopped by Ctrl-C


def say_interrupted(finished: list, args) -> None:
    if finished:
        return
    if getattr(args, "watching", None):  # (stopping is what Ctrl-C is for there)
        print(f"\npypioncouch: {args.watching}", file=sys.stderr)
        finished.append(True)
        return
    print("pypioncouch: interrupted; what was written is kept, and the same command "
          "goes on from there", file=sys.stderr)

"""The blocking Python API (the 2011 original's interface, kept)::

    from pypioncouch import import_all, update
    summary = import_all("http://admin:pw@localhost:5984/", pypi="https://pypi.org/")

No reactor in sight for the caller: the first call starts Twisted's reactor in a
background thread and every call waits for its result there.
"""

from __future__ import annotations

import threading

from twisted.internet import defer

from pypioncouch.couch import CouchDB
from pypioncouch.pypi import PYPI_URL, PyPI
from pypioncouch.sync import Summary, XmlRpcImporter, run_pass

__all__ = ["XmlRpcImporter", "import_all", "update"]

_started = threading.Lock()
_thread: threading.Thread | None = None


def _reactor():
    global _thread
    from twisted.internet import reactor

    with _started:
        if _thread is None and not reactor.running:
            _thread = threading.Thread(target=reactor.run,
                                       kwargs={"installSignalHandlers": False},
                                       name="pypioncouch-reactor", daemon=True)
            _thread.start()
    return reactor


def _blocking(coroutine_function, *args, **kwargs):
    from twisted.internet.threads import blockingCallFromThread
    from twisted.python.threadable import isInIOThread

    reactor = _reactor()
    if reactor.running and isInIOThread():  # (it would wait for itself: for ever)
        raise RuntimeError("import_all() and update() block, and cannot be called from "
                           "the reactor's thread: inside a Twisted program, use "
                           "XmlRpcImporter (see README)")
    return blockingCallFromThread(
        reactor, lambda: defer.ensureDeferred(coroutine_function(*args, **kwargs)))


def _importer(couch: str, pypi: str, db: str, concurrency: int, timeout: float,
              **options) -> XmlRpcImporter:
    database = CouchDB(couch).database(db)
    return XmlRpcImporter(database, PyPI(pypi, concurrency=concurrency, timeout=timeout),
                          concurrency=concurrency, **options)


def import_all(couch: str, *, pypi: str = PYPI_URL, db: str = "pypi", concurrency: int = 10,
               source: str = "json", changes: str = "xmlrpc", max_removals: int | None = None,
               confirm_removals: bool = False, timeout: float = 30.0,
               guard: bool = False) -> Summary:
    """Import all of PyPI into ``couch`` (a CouchDB URL, may carry user:password@).
    The keywords are the command's options (``--timeout``, ``--guard``, ...).

    A pass removes at most ``max_removals`` projects (default: 1 % of those stored or
    100, whichever is larger); past that it removes none (``summary.held``, and
    ``summary.held_reason`` says why) unless ``confirm_removals``."""
    async def run():
        return await run_pass(_importer(couch, pypi, db, concurrency, timeout, source=source,
                                        changes=changes, max_removals=max_removals,
                                        confirm_removals=confirm_removals, guard=guard),
                              full=True)
    return _blocking(run)


def update(couch: str, *, pypi: str = PYPI_URL, db: str = "pypi", concurrency: int = 10,
           source: str = "json", changes: str = "xmlrpc", max_removals: int | None = None,
           confirm_removals: bool = False, timeout: float = 30.0,
           guard: bool = False) -> Summary:
    """Apply everything PyPI changed since the last import or update (one pass; with
    none yet, a full import); removals and keywords as for :func:`import_all`. Then
    settle the conflicting revisions the database holds (a cluster's branches; the
    first update after an import reads the whole changes feed once):
    ``summary.conflicts_settled`` counts them, ``summary.conflicts_problem`` says why
    some were not."""
    async def run():
        return await run_pass(_importer(couch, pypi, db, concurrency, timeout, source=source,
                                        changes=changes, max_removals=max_removals,
                                        confirm_removals=confirm_removals, guard=guard))
    return _blocking(run)

"""Helpers shared by the tests (the sync, OPML, web, progress and trace tests)."""

from contextlib import contextmanager

from twisted.internet import defer, reactor, task

from pypioncouch import model
from pypioncouch.couch import CouchDB
from pypioncouch.pypi import PyPI
from pypioncouch.store import Store
from pypioncouch.sync import XmlRpcImporter
from pypioncouch.testing.pypi import listen, make_simulator


@contextmanager
def logged():
    """The log events emitted within, as a list."""
    from twisted.logger import globalLogPublisher

    said = []
    globalLogPublisher.addObserver(said.append)
    try:
        yield said
    finally:
        globalLogPublisher.removeObserver(said.append)


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class ManualClock:
    """A ``time.monotonic`` stand-in: ``now`` moves when a test moves it."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def stored_project(db, key):
    """``(project doc, [release docs])`` as stored, or ``(None, [])``."""
    return await Store(db).project(key)


async def stored_json_api(db, key, version=None):
    project, releases = await stored_project(db, key)
    if project is None:
        return None
    payload = model.json_api_payload(project, releases, version)
    return None if payload is None else model.dump_json_api(payload)


async def assert_matches_simulator(db, index):
    """Every project of the simulator is in CouchDB exactly as its JSON API says, and
    CouchDB holds no project the simulator does not."""
    truth = {key for key, _ in index.listing()}
    for key in sorted(truth):
        status, body, _ = index.json_api(key)
        if status == 200:
            assert await stored_json_api(db, key) == body, key
        else:
            project = await db.get(key)
            assert project["versions"] == [] and project["info"] is None, key
    assert await Store(db).project_ids() == truth


class World:
    """A simulator in this reactor, a fresh database, and an importer between them."""

    def __init__(self, couch_url, db_name, projects=40, seed=5, read_url=None,
                 **simulator_options):
        self.resource = make_simulator(projects, seed, **simulator_options)
        self.index = self.resource.index
        self.port, self.url = listen(self.resource)
        self.couch = CouchDB(couch_url, timeout=30)
        self.db = self.couch.database(db_name)
        # On a cluster, checks read through another node than the one written to.
        self.read_db = CouchDB(read_url or couch_url, timeout=30).database(db_name)

    async def settled(self, seconds: float = 30.0) -> None:
        """Wait until the node read through holds what was written: every document at
        the revision written, and the views over them (a cluster copies writes to the
        other nodes a moment after it acknowledges them)."""
        from pypioncouch import couchapp

        async def revisions(db):
            rows = (await db.all_docs())["rows"]
            return {row["id"]: row["value"]["rev"] for row in rows}

        for _ in range(int(seconds / 0.2)):
            if await revisions(self.read_db) == await revisions(self.db) and \
                    await couchapp.count(self.read_db, "name") == \
                    await couchapp.count(self.db, "name"):
                return
            await sleep(0.2)
        raise AssertionError(f"{self.read_db!r} did not catch up within {seconds:g}s")

    def importer(self, url=None, **options):
        """An importer from this simulator (at ``url``, credentials and all, if given)."""
        pypi_options = {k: options.pop(k) for k in ("timeout", "retries", "backoff",
                                                      "stale_retries") if k in options}
        pypi = PyPI(url or self.url, concurrency=options.get("concurrency", 8),
                    **{"backoff": 0.05, **pypi_options})
        return XmlRpcImporter(self.db, pypi, **options)

    def close(self):
        return self.port.stopListening()


def requires_command(command: str, package: str):
    """A test that needs ``command`` from Debian's ``package``: without it the test
    fails saying how to install it (tests/conftest.py), never skips."""
    import pytest

    return pytest.mark.requires_command(command, package)


class CouchProxy:
    """A TCP proxy on loopback in front of a real CouchDB, for failures a real server
    does not make on cue. It records the request line of every request it forwards;
    after ``cut_after`` requests it cuts every connection and refuses new ones (CouchDB
    "goes away"); it holds back each request that contains a key of ``hold`` for as
    many seconds as the key says (``{b"feed=continuous": 2.0}``: a slow feed)."""

    def __init__(self, couch_url: str, cut_after: int | None = None,
                 hold: dict[bytes, float] | None = None):
        import re
        from urllib.parse import urlsplit

        from twisted.protocols import portforward

        proxy = self
        target = urlsplit(couch_url)
        self.requests: list[bytes] = []
        self.cut_after = cut_after
        self.connections: set = set()
        self.cut_off = False
        request_line = re.compile(rb"^[A-Z]+ \S+ HTTP/1\.[01]\r$", re.M)

        class Server(portforward.ProxyServer):
            def connectionMade(self):
                proxy.connections.add(self)
                super().connectionMade()

            def connectionLost(self, reason):
                proxy.connections.discard(self)
                super().connectionLost(reason)

            def dataReceived(self, data):
                lines = request_line.findall(data)
                if proxy.cut_after is not None and \
                        len(proxy.requests) + len(lines) > proxy.cut_after:
                    proxy.cut()
                    return
                proxy.requests += [line.strip() for line in lines]
                delay = max((seconds for part, seconds in proxy.hold.items()
                             if part in data), default=0.0)
                if delay:
                    reactor.callLater(delay, self._forward, data)
                else:
                    self._forward(data)

            def _forward(self, data):
                if self.peer is not None and self.peer.transport is not None:
                    self.peer.transport.write(data)

        class ClientFactory(portforward.ProxyClientFactory):
            noisy = False

        class ServerFactory(portforward.ProxyFactory):
            noisy = False
            protocol = Server

        Server.clientProtocolFactory = ClientFactory
        self.hold = hold or {}
        self._port = reactor.listenTCP(0, ServerFactory(target.hostname, target.port),
                                       interface="127.0.0.1")
        port = self._port.getHost().port
        self.url = couch_url.replace(f":{target.port}/", f":{port}/", 1)

    def cut(self) -> None:
        """Cut every connection now, and refuse new ones."""
        self.cut_off = True
        self._port.stopListening()
        for server in list(self.connections):
            server.transport.abortConnection()
            if server.peer is not None and server.peer.transport is not None:
                server.peer.transport.abortConnection()

    def close(self):
        return None if self.cut_off else self._port.stopListening()


class ScriptedHTTP:
    """An ``http=`` object for the CouchDB and PyPI clients that answers from a script,
    in memory: each request takes the next answer, a ``(status, headers, body)`` tuple,
    an exception to fail with, a Deferred the test fires (an answer that takes a while),
    or ``HANG`` (no answer until cancelled, which then fails
    as Twisted's Agent does). Records every request (and when, by ``clock``) and every
    cancellation."""

    HANG = object()

    def __init__(self, *answers, clock=None):
        self.answers = list(answers)
        self.clock = clock
        self.requests: list[tuple] = []
        self.times: list[float] = []
        self.cancelled = 0

    def _cancel(self, d):
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseNeverReceived

        self.cancelled += 1
        d.errback(Failure(ResponseNeverReceived([Failure(defer.CancelledError())])))

    def request(self, method, url, headers, data=None, on_data=None):
        self.requests.append((method, url, dict(headers), data))
        if self.clock is not None:
            self.times.append(self.clock.seconds())
        assert self.answers, f"no answer scripted for request {len(self.requests)}: {url}"
        answer = self.answers.pop(0)
        if answer is self.HANG:
            return defer.Deferred(self._cancel)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        if isinstance(answer, defer.Deferred):
            return answer
        return defer.succeed(answer)

    def get(self, url, headers, on_data=None):
        return self.request("GET", url, headers)

    def stream(self, method, url, headers, data, sink):
        """As the client streams: a 200 answer's body goes to ``sink`` (whose error
        fails the request), ``b""`` is returned for it."""
        def deliver(answer):
            status, found, body = answer
            if status != 200:
                return answer
            sink(body)
            return status, found, b""

        return self.request(method, url, headers, data).addCallback(deliver)

    @property
    def urls(self) -> list[str]:
        return [request[1] for request in self.requests]

"""The streamed ``/simple/`` index: a failure half-way is a failed transfer, never a
short 200; a slow reader slows the daemon down instead of filling its memory."""

import http.client
import socket

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, threads
from twisted.web.client import ResponseFailed
from twisted.web.server import Site

from pypioncouch import couchapp
from pypioncouch.couch import CouchDB
from pypioncouch.simple import V1_JSON
from pypioncouch.status import SyncStatus
from pypioncouch.web import app
from pypioncouch.web.app import WebFront

from .helpers import CouchProxy, sleep
from .test_web import serve

PROJECTS = 1200
PAGE = 10  # names per page of the index (and per CouchDB request)


def name(i: int) -> str:
    # Long names make a big index out of few documents.
    return f"project-{i:04d}-" + "x" * 100


@pytest.fixture(scope="module")
def index_db(couch_server):
    """A database of PROJECTS projects, its view built."""
    db = CouchDB(couch_server.url, timeout=60).database("web-streaming")

    async def fill():
        await db.ensure()
        await couchapp.push(db)
        await db.bulk_docs([{"_id": name(i), "type": "project", "name": name(i),
                             "versions": [], "release_digests": {}, "last_serial": i}
                            for i in range(PROJECTS)])
        assert await couchapp.count(db, "name", timeout=120) == PROJECTS

    pytest_twisted.blockon(defer.ensureDeferred(fill()))
    return db


@pytest.fixture
def small_pages(monkeypatch):
    monkeypatch.setattr(app, "INDEX_PAGE", PAGE)


@pytest.mark.parametrize("accept", ["text/html", V1_JSON])
@pytest_twisted.ensureDeferred
async def test_couchdb_going_away_mid_index_is_a_failed_transfer(
        couch_server, index_db, small_pages, accept):
    # The proxy lets the serial and three pages through, then CouchDB is gone.
    proxy = CouchProxy(couch_server.url, cut_after=4)
    db = CouchDB(proxy.url, timeout=5).database(index_db.name)
    front, port, url = serve(db, syncing=False)
    try:
        answer = await treq.get(f"{url}/simple/", headers={"Accept": accept})
        assert answer.code == 200  # the index had begun
        received = []
        with pytest.raises(ResponseFailed):
            await treq.collect(answer, received.append)
        body = b"".join(received)
        assert name(PROJECTS - 1).encode() not in body
        assert len(proxy.requests) == 4 and proxy.cut_off
        assert "web simple_index" in front.status.last_error
    finally:
        await port.stopListening()
        proxy.close()


async def settled(count, quiet=0.5, timeout=10.0):
    """``count()`` once it has not changed for ``quiet`` seconds."""
    last, still = count(), 0.0
    while still < quiet and timeout > 0:
        await sleep(0.1)
        timeout -= 0.1
        still = still + 0.1 if count() == last else 0.0
        last = count()
    return last


class ThinLineSite(Site):
    """A site whose connections have a small kernel send buffer, as on a slow link
    (loopback would otherwise grow it to megabytes and hide any pacing)."""

    noisy = False

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        make_connection = channel.makeConnection

        def thin(transport):
            transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            make_connection(transport)
        channel.makeConnection = thin
        return channel


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_read_pauses_the_index(
        couch_server, index_db, small_pages):
    proxy = CouchProxy(couch_server.url)
    db = CouchDB(proxy.url, timeout=5).database(index_db.name)
    port = reactor.listenTCP(0, ThinLineSite(WebFront(db, SyncStatus(), syncing=False)
                                             .resource()), interface="127.0.0.1")
    client = socket.socket()
    try:
        # A client on a thin line: a small receive window, and it does not read yet.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port.getHost().port))
        connection = http.client.HTTPConnection("127.0.0.1", port.getHost().port)
        connection.sock = client
        connection.request("GET", "/simple/")
        answer = await threads.deferToThread(connection.getresponse)
        assert answer.status == 200
        pages = await settled(lambda: len(proxy.requests) - 1)
        # The daemon stopped asking CouchDB for more: it waits for the client.
        assert pages < PROJECTS // PAGE // 2
        body = await threads.deferToThread(answer.read)  # now it reads: all of it
        assert body.count(b"<a href=") == PROJECTS
        assert body.endswith(b"</html>\n")
        assert len(proxy.requests) - 1 == PROJECTS // PAGE + 1
    finally:
        client.close()
        await port.stopListening()
        proxy.close()


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_mid_index_stops_it_quietly(
        couch_server, index_db, small_pages):
    proxy = CouchProxy(couch_server.url)
    db = CouchDB(proxy.url, timeout=5).database(index_db.name)
    status = SyncStatus()
    port = reactor.listenTCP(0, ThinLineSite(WebFront(db, status, syncing=False)
                                             .resource()), interface="127.0.0.1")
    client = socket.socket()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port.getHost().port))
        client.sendall(b"GET /simple/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        pages = await settled(lambda: len(proxy.requests) - 1)
        client.close()  # gone half-way
        assert await settled(lambda: len(proxy.requests) - 1) == pages < PROJECTS // PAGE
        assert status.last_error is None  # the client's leaving is not CouchDB trouble
    finally:
        client.close()
        await port.stopListening()
        proxy.close()


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_while_a_page_is_read_is_no_couchdb_error(
        couch_server, index_db, small_pages):
    # Pages after the first ask for one row more (the last one seen, again).
    proxy = CouchProxy(couch_server.url, hold={f"limit={PAGE + 1}&".encode(): 1.0})
    db = CouchDB(proxy.url, timeout=5).database(index_db.name)
    front, port, url = serve(db, syncing=False)
    client = socket.socket()
    try:
        client.connect(("127.0.0.1", port.getHost().port))
        client.sendall(b"GET /simple/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        client.setblocking(False)  # (a blocking read here would stop the front too)
        received = b""
        for _ in range(200):  # until the first page has come
            await sleep(0.05)
            try:
                received += client.recv(65536)
            except BlockingIOError:
                continue
            if received:
                break
        assert received.startswith(b"HTTP/1.1 200 OK")
        for _ in range(200):  # until the second page is asked for (held by the proxy)
            if len(proxy.requests) == 3:
                break
            await sleep(0.02)
        client.close()  # while the second page is being read from CouchDB
        await sleep(2.5)
        # That read is given up, not retried, and no page is read after it.
        assert len(proxy.requests) == 3  # the serial, two pages
        assert front.status.last_error is None
    finally:
        client.close()
        await port.stopListening()
        proxy.close()

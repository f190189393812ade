"""Shared fixtures: real CouchDB servers for the whole session, fresh databases.

Every test that takes ``couch_server`` (or ``couch``) runs once per server, and its id
names it: ``[pouchdb]`` (the embedded pouchdb-server) and ``[apache]`` (Apache CouchDB
3.5, one node, from ../shared/couchdb). Tests marked ``cluster`` (end to end: import,
update, OPML, web, browse, design document, replication) also run on ``[cluster]``, a
3-node Apache CouchDB cluster, writing through one node and reading through another
(``couch_server.read_url``).

``PYPIONCOUCH_TEST_COUCH=http://admin:pw@host:5984/`` runs them against that server
instead of the Apache ones (id ``[external]``). Without ../shared the Apache runs fail
saying what is missing (``-k 'not apache] and not cluster]'`` leaves them out); so does a
test needing a Debian command that is not installed (``make test`` installs them as
root).
"""

import itertools
import os
import uuid

import pytest

from pypioncouch.testing.apache import ApacheCluster, ApacheCouchServer, apache_available
from pypioncouch.testing.couchserver import CouchServer

ADMIN = ("admin", "s3cret-Pa55")
EXTERNAL = os.environ.get("PYPIONCOUCH_TEST_COUCH")


def server_kinds(cluster: bool) -> list[str]:
    if EXTERNAL:
        return ["pouchdb", "external"]
    return ["pouchdb", "apache"] + (["cluster"] if cluster else [])


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: an end-to-end test that also runs on a "
                                       "3-node Apache CouchDB cluster")
    config.addinivalue_line("markers", "requires_command(command, package): the test "
                                       "needs a command from a Debian package")
    config.addinivalue_line("markers", "apache_only: about Apache CouchDB's own behaviour "
                                       "(users and rights): not run on pouchdb-server")


def pytest_runtest_setup(item):
    import shutil

    for mark in item.iter_markers("requires_command"):
        command, package = mark.args
        if shutil.which(command) is None:
            pytest.fail(f"{command} is missing: it comes with Debian's {package} "
                        f"(sudo apt-get install {package}; `make test` installs it as "
                        "root)", pytrace=False)


def pytest_generate_tests(metafunc):
    if "couch_server" in metafunc.fixturenames:
        kinds = server_kinds(metafunc.definition.get_closest_marker("cluster") is not None)
        if metafunc.definition.get_closest_marker("apache_only") is not None:
            kinds = [kind for kind in kinds if kind != "pouchdb"]
        metafunc.parametrize("couch_server", kinds, indirect=True, scope="session")


class ExternalServer:
    """A server someone else runs (``PYPIONCOUCH_TEST_COUCH``); never stopped here."""

    kind = "external"

    def __init__(self, url: str):
        from pypioncouch.urls import split_credentials

        from urllib.parse import urlsplit

        split_credentials(url)  # a bad URL fails here, in one line
        self.url = self.read_url = url if url.endswith("/") else url + "/"
        parts = urlsplit(self.url)
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.anonymous_url = f"{parts.scheme}://{parts.hostname}:{self.port}/"

    def cleanup(self) -> None:
        pass


class Servers:
    """Each kind of server, started on first use and stopped at the end."""

    def __init__(self):
        self.started: dict = {}

    def get(self, kind: str):
        if kind not in self.started:
            self.started[kind] = self._start(kind)
        return self.started[kind]

    @staticmethod
    def _start(kind: str):
        if kind == "pouchdb":
            return CouchServer(admin=ADMIN).start()
        if kind == "external":
            return ExternalServer(EXTERNAL)
        unavailable = apache_available()
        if unavailable:
            pytest.fail(f"[{kind}] {unavailable}", pytrace=False)
        server = ApacheCouchServer(admin=ADMIN) if kind == "apache" else ApacheCluster(admin=ADMIN)
        return server.start()

    def cleanup(self) -> None:
        for server in self.started.values():
            server.cleanup()


@pytest.fixture(scope="session")
def servers():
    registry = Servers()
    yield registry
    registry.cleanup()


@pytest.fixture(scope="session")
def couch_server(request, servers):
    """A running server of the kind the test id names (``pouchdb``, ``apache``, ...)."""
    return servers.get(request.param)


@pytest.fixture
def private_couch_server(couch_server, tmp_path):
    """A server of the same kind as ``couch_server`` that this test alone uses, so it
    may stop and start it (one node: stopping a cluster rebuilds it). Not started."""
    if couch_server.kind == "pouchdb":
        server = CouchServer(tmp_path / "couch", admin=ADMIN)
    elif couch_server.kind in ("apache", "cluster"):
        server = ApacheCouchServer(tmp_path / "couch", admin=ADMIN)
    else:
        pytest.skip("a server this test can stop: not with PYPIONCOUCH_TEST_COUCH")
    yield server
    server.cleanup()


_names = itertools.count()


@pytest.fixture
def db_name():
    return f"test-{next(_names)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def world(couch_server, db_name):
    """``world(projects=..., seed=..., **simulator options)``: a simulator, a fresh
    database and an importer between them (tests/helpers.py), closed afterwards."""
    from .helpers import World

    worlds = []

    def make(**options):
        worlds.append(World(couch_server.url, db_name, read_url=couch_server.read_url,
                            **options))
        return worlds[-1]

    yield make
    for made in worlds:
        made.close()


@pytest.fixture
def couch(couch_server):
    from pypioncouch.couch import CouchDB

    return CouchDB(couch_server.url, timeout=10)

"""Shared fixtures: a real pouchdb-server for the whole session, fresh databases."""

import itertools
import uuid

import pytest

from pypioncouch.testing.couchserver import CouchServer

ADMIN = ("admin", "s3cret-Pa55")


@pytest.fixture(scope="session")
def couch_server():
    """A real pouchdb-server on a free loopback port, with an admin (as CouchDB 3 has)."""
    server = CouchServer(admin=ADMIN).start()
    yield server
    server.cleanup()


_names = itertools.count()


@pytest.fixture
def db_name():
    return f"test-{next(_names)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def couch(couch_server):
    from pypioncouch.couch import CouchDB

    return CouchDB(couch_server.url, timeout=10)

"""Helpers shared by the sync, OPML and web tests."""

from twisted.internet import reactor, task

from pypioncouch import model
from pypioncouch.couch import CouchDB
from pypioncouch.pypi import PyPI
from pypioncouch.sync import XmlRpcImporter
from pypioncouch.testing.pypi import listen, make_simulator


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


async def stored_project(db, key):
    """``(project doc, [release docs])`` as stored, or ``(None, [])``."""
    project = await db.get_or_none(key)
    start, end = model.release_id_range(key)
    rows = (await db.all_docs(startkey=start, endkey=end, include_docs=True))["rows"]
    return project, [row["doc"] for row in rows]


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
    rows = (await db.all_docs())["rows"]
    stored = {row["id"] for row in rows if ":" not in row["id"] and not row["id"].startswith("_")}
    assert stored == truth


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
        """Wait until the node read through holds what was written (a cluster copies
        writes to every node a moment after it acknowledges them)."""
        from pypioncouch import couchapp

        for _ in range(int(seconds / 0.2)):
            written = (await self.db.info())["doc_count"]
            if (await self.read_db.info())["doc_count"] == written and \
                    await couchapp.count(self.read_db, "name") == \
                    await couchapp.count(self.db, "name"):
                return
            await sleep(0.2)
        raise AssertionError(f"{self.read_db!r} did not catch up within {seconds:g}s")

    def importer(self, **options):
        pypi_options = {k: options.pop(k) for k in ("timeout", "retries", "backoff",
                                                      "stale_retries") if k in options}
        pypi = PyPI(self.url, concurrency=options.get("concurrency", 8),
                    **{"backoff": 0.05, **pypi_options})
        return XmlRpcImporter(self.db, pypi, **options)

    def close(self):
        return self.port.stopListening()


def requires_command(command: str, package: str):
    """Skip on a developer's machine without Debian's ``package``; never in CI, where
    .ci/run installs it (there, a missing command fails the test)."""
    import os
    import shutil

    import pytest

    return pytest.mark.skipif(shutil.which(command) is None and not os.environ.get("CI"),
                              reason=f"{command} comes with Debian's {package} "
                                     "(.ci/run installs it)")

"""Conflicting revisions (an Apache CouchDB cluster takes writes based on a stale
copy): the resolver keeps the leaf with the newest serial. Conflicts are made here
as replication makes them, with ``new_edits: false``."""

import pytest
import pytest_twisted

from pypioncouch.conflicts import CHECKPOINT, ConflictResolver, resolution
from pypioncouch.status import SyncStatus

from .helpers import sleep

pytestmark = pytest.mark.cluster  # where conflicts come from: also on a 3-node cluster

HIGH = "f" * 32  # revision ids: CouchDB serves the higher one of a tie in position
LOW = "0" * 32


def test_the_newest_serial_is_kept_whichever_revision_couchdb_serves():
    leaves = [{"_id": "a", "_rev": f"2-{HIGH}", "last_serial": 5},
              {"_id": "a", "_rev": f"2-{LOW}", "last_serial": 9}]
    assert resolution(leaves) == [{"_id": "a", "_rev": f"2-{HIGH}", "_deleted": True}]


def test_a_newer_removal_deletes_every_live_revision_and_says_its_serial():
    leaves = [{"_id": "a:1.0", "_rev": f"3-{HIGH}", "last_serial": 5},
              {"_id": "a:1.0", "_rev": f"2-{LOW}", "last_serial": 9, "_deleted": True},
              {"_id": "a:1.0", "_rev": f"2-{HIGH}", "last_serial": 4}]
    assert resolution(leaves) == [
        {"_id": "a:1.0", "_rev": f"3-{HIGH}", "_deleted": True, "last_serial": 9},
        {"_id": "a:1.0", "_rev": f"2-{HIGH}", "_deleted": True, "last_serial": 9}]


def test_a_tie_keeps_what_couchdb_serves_and_an_older_removal_needs_nothing():
    tie = [{"_id": "a", "_rev": f"2-{LOW}", "last_serial": 7},
           {"_id": "a", "_rev": f"2-{HIGH}", "last_serial": 7},
           {"_id": "a", "_rev": f"3-{LOW}", "last_serial": 7, "_deleted": True}]
    assert resolution(tie) == [{"_id": "a", "_rev": f"2-{LOW}", "_deleted": True}]
    settled = [{"_id": "a", "_rev": f"2-{HIGH}", "last_serial": 7},
               {"_id": "a", "_rev": f"3-{LOW}", "_deleted": True}]  # (a loser deleted)
    assert resolution(settled) == []
    assert resolution([{"_id": "a", "_rev": f"1-{LOW}", "last_serial": 1}]) == []


async def add_leaves(couch, db_name, docs):
    """Store ``docs`` as they are, revisions and all (a replicator's write)."""
    answer = await couch.request("POST", f"{db_name}/_bulk_docs",
                                 body={"docs": docs, "new_edits": False})
    assert not [row for row in answer if "error" in row], answer


async def served(db, docid):
    """What CouchDB serves for ``docid`` (None if removed), with its conflicts."""
    return await db.get_or_none(docid, conflicts="true")


async def settled(checks, seconds=30.0):
    for _ in range(int(seconds / 0.1)):
        if all([await check() for check in checks]):
            return True
        await sleep(0.1)
    return False


@pytest_twisted.ensureDeferred
async def test_the_resolver_serves_the_newest_copy_and_resumes_from_its_checkpoint(
        couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    project = {"_id": "alpha", "name": "alpha", "versions": ["1.0"]}
    await add_leaves(couch, db_name, [
        {**project, "_rev": f"2-{HIGH}", "last_serial": 5, "summary": "stale"},
        {**project, "_rev": f"2-{LOW}", "last_serial": 9, "summary": "new"},
        {"_id": "alpha:1.0", "_rev": f"2-{HIGH}", "last_serial": 5, "version": "1.0"},
        {"_id": "alpha:1.0", "_rev": f"2-{LOW}", "last_serial": 9, "_deleted": True},
        {"_id": "beta", "_rev": f"1-{LOW}", "last_serial": 3, "summary": "one"},
        {"_id": "beta", "_rev": f"1-{HIGH}", "last_serial": 3, "summary": "other"}])
    assert (await served(db, "alpha"))["summary"] == "stale"  # (what CouchDB would serve)
    status = SyncStatus()
    resolver = ConflictResolver(db, status, wait_ms=500)
    resolver.startService()
    try:
        async def alpha_is_new():
            doc = await served(db, "alpha")
            return doc["summary"] == "new" and "_conflicts" not in doc

        async def release_is_removed():
            return await served(db, "alpha:1.0") is None

        async def beta_is_alone():
            return "_conflicts" not in await served(db, "beta")

        assert await settled([alpha_is_new, release_is_removed, beta_is_alone])
        assert (await served(db, "beta"))["summary"] == "other"
        leaves = await db.get("alpha:1.0", open_revs="all")
        assert all(leaf["ok"]["_deleted"] for leaf in leaves)
        assert all(leaf["ok"]["last_serial"] == 9 for leaf in leaves)  # (any one shown)
        assert status.conflicts_settled == 3
    finally:
        await resolver.stopService()
    assert await db.get_local(CHECKPOINT)

    await add_leaves(couch, db_name, [
        {"_id": "gamma", "_rev": f"1-{HIGH}", "last_serial": 1, "summary": "stale"},
        {"_id": "gamma", "_rev": f"1-{LOW}", "last_serial": 2, "summary": "new"}])
    again = SyncStatus()
    resolver = ConflictResolver(db, again, wait_ms=500)
    resolver.startService()
    try:
        async def gamma_is_new():
            return (await served(db, "gamma"))["summary"] == "new"

        assert await settled([gamma_is_new])
        await sleep(0.5)  # (what it settled before is not counted again)
        assert again.conflicts_settled == 1
    finally:
        await resolver.stopService()

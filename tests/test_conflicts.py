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
    resolver = ConflictResolver(db, status, pause=0.1)
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
    saved = (await db.get_local(CHECKPOINT))["seq"]

    await add_leaves(couch, db_name, [
        {"_id": "gamma", "_rev": f"1-{HIGH}", "last_serial": 1, "summary": "stale"},
        {"_id": "gamma", "_rev": f"1-{LOW}", "last_serial": 2, "summary": "new"}])
    again = SyncStatus()
    resolver = ConflictResolver(db, again, pause=0.1)
    resolver.startService()
    try:
        async def gamma_is_new():
            return (await served(db, "gamma"))["summary"] == "new"

        assert await settled([gamma_is_new])
        assert again.conflicts_settled == 1
        assert resolver.first_since == saved  # (not the whole feed again)
    finally:
        await resolver.stopService()


@pytest_twisted.ensureDeferred
async def test_a_removal_settled_after_a_conflict_still_holds_against_older_data(
        couch, db_name):
    """A tombstone CouchDB shows may be a deleted loser's, saying no serial (a longer
    history wins among tombstones): the removal's serial is still found."""
    from pypioncouch import model
    from pypioncouch.store import Store

    db = couch.database(db_name)
    await db.ensure()
    await add_leaves(couch, db_name, [
        {"_id": "rel:1.0", "_rev": f"4-{LOW}", "_deleted": True, "last_serial": 12},
        {"_id": "rel:1.0", "_rev": f"5-{HIGH}", "_deleted": True}])
    store = Store(db)
    older = model.release_document("rel", "Rel", "1.0", [], {"name": "Rel"}, serial=10)
    newer = model.release_document("rel", "Rel", "1.0", [], {"name": "Rel"}, serial=13)
    states = await store.states(["rel:1.0"])
    assert states["rel:1.0"][1] is None  # (removed)
    assert await store.settle([older], states, None) is None
    assert await store.settle([newer], states, None) == [newer]


@pytest_twisted.ensureDeferred
async def test_a_database_deleted_under_the_resolver_is_left_to_the_sync_to_create(
        couch, db_name):
    """The resolver waits for it (the sync creates it with its design document) and
    then settles what the new one holds from its beginning."""
    db = couch.database(db_name)
    await db.ensure()
    status = SyncStatus()
    resolver = ConflictResolver(db, status, pause=0.1, max_backoff=0.2)
    resolver.startService()
    try:
        for _ in range(100):  # (it has read its checkpoint: it is past its first look)
            if resolver.first_since is not None:
                break
            await sleep(0.05)
        await db.delete_database()
        await sleep(1.5)
        assert not await db.exists()
        assert "conflict resolver waits" in status.conflicts_error
        await db.ensure()
        await add_leaves(couch, db_name, [
            {"_id": "delta", "_rev": f"1-{HIGH}", "last_serial": 1, "summary": "stale"},
            {"_id": "delta", "_rev": f"1-{LOW}", "last_serial": 2, "summary": "new"}])

        async def delta_is_new():
            return (await served(db, "delta"))["summary"] == "new"

        assert await settled([delta_is_new])
    finally:
        await resolver.stopService()

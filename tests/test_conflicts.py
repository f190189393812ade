"""Conflicting revisions (an Apache CouchDB cluster takes writes based on a stale
copy): the resolver keeps the leaf with the newest serial. Conflicts are made here
as replication makes them, with ``new_edits: false``."""

import os
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import utils

from pypioncouch import conflicts, model
from pypioncouch.conflicts import CHECKPOINT, ConflictResolver, unaccounted
from pypioncouch.status import SyncStatus
from pypioncouch.store import Store, conflict_resolution
from pypioncouch.sync import run_pass
from pypioncouch.testing.dataset import Dataset, normalize
from pypioncouch.testing.pypi import SimulatorProcess

from .helpers import sleep

pytestmark = pytest.mark.cluster  # where conflicts come from: also on a 3-node cluster

HIGH = "f" * 32  # revision ids: CouchDB serves the higher one of a tie in position
LOW = "0" * 32


def test_the_newest_serial_is_kept_whichever_revision_couchdb_serves():
    leaves = [{"_id": "a", "_rev": f"2-{HIGH}", "last_serial": 5},
              {"_id": "a", "_rev": f"2-{LOW}", "last_serial": 9}]
    assert conflict_resolution(leaves) == [
        {"_id": "a", "_rev": f"2-{HIGH}", "_deleted": True, "last_serial": None}]


def test_a_newer_removal_deletes_every_live_revision_and_says_its_serial():
    leaves = [{"_id": "a:1.0", "_rev": f"3-{HIGH}", "last_serial": 5},
              {"_id": "a:1.0", "_rev": f"2-{LOW}", "last_serial": 9, "_deleted": True},
              {"_id": "a:1.0", "_rev": f"2-{HIGH}", "last_serial": 4}]
    assert conflict_resolution(leaves) == [
        {"_id": "a:1.0", "_rev": f"3-{HIGH}", "_deleted": True, "last_serial": 9},
        {"_id": "a:1.0", "_rev": f"2-{HIGH}", "_deleted": True, "last_serial": 9}]


def test_a_removal_without_a_serial_cannot_win_over_a_live_revision():
    leaves = [{"_id": "a", "_rev": f"3-{LOW}", "_deleted": True, "last_serial": None},
              {"_id": "a", "_rev": f"2-{LOW}", "last_serial": 4}]
    assert conflict_resolution(leaves) == []


def test_a_tie_keeps_what_couchdb_serves_and_an_older_removal_needs_nothing():
    tie = [{"_id": "a", "_rev": f"2-{LOW}", "last_serial": 7},
           {"_id": "a", "_rev": f"2-{HIGH}", "last_serial": 7},
           {"_id": "a", "_rev": f"3-{LOW}", "last_serial": 7, "_deleted": True}]
    assert conflict_resolution(tie) == [
        {"_id": "a", "_rev": f"2-{LOW}", "_deleted": True, "last_serial": None}]
    settled = [{"_id": "a", "_rev": f"2-{HIGH}", "last_serial": 7},
               {"_id": "a", "_rev": f"3-{LOW}", "_deleted": True}]  # (a loser deleted)
    assert conflict_resolution(settled) == []
    assert conflict_resolution([{"_id": "a", "_rev": f"1-{LOW}", "last_serial": 1}]) == []


def test_a_tie_keeps_the_status_the_sweep_read_last():
    """The sweep's write changes no serial: a branch of the OPML watcher's at the same
    serial, served by CouchDB, took its "archived" away until its next walk (days)."""
    leaves = [{"_id": "a", "_rev": f"3-{HIGH}", "last_serial": 7, "status": "active",
               "_attachments": {"opml.xml": {"stub": True}}},
              {"_id": "a", "_rev": f"3-{LOW}", "last_serial": 7, "status": "archived",
               "status_serial": 7}]
    assert conflict_resolution(leaves) == [
        {"_id": "a", "_rev": f"3-{HIGH}", "_deleted": True, "last_serial": None}]
    older = [{**leaves[0], "status": "deprecated", "status_serial": 5}, leaves[1]]
    assert conflict_resolution(older) == conflict_resolution(leaves)
    newer = [{**leaves[0], "last_serial": 8}, leaves[1]]  # (the serial first)
    assert conflict_resolution(newer) == [
        {"_id": "a", "_rev": f"3-{LOW}", "_deleted": True, "last_serial": None}]


def test_a_leaf_the_feed_named_is_accounted_for_by_itself_or_a_descendant():
    leaves = [
        {"_id": "a", "_rev": "3-c", "_revisions": {"start": 3, "ids": ["c", "b", "a"]}},
        {"_id": "a", "_rev": "1-x", "_revisions": {"start": 1, "ids": ["x"]}}]
    assert unaccounted(["2-b", "1-x", "3-c", "1-a"], leaves) == []
    assert unaccounted(["1-y", "2-b", "4-d"], leaves) == ["1-y", "4-d"]
    assert unaccounted(["1-x"], [{"_id": "a", "_rev": "1-x"}]) == []  # (no history read)


async def add_leaves(couch, db_name, docs):
    """Store ``docs`` as they are, revisions and all (a replicator's write)."""
    answer = await couch.request("POST", f"{db_name}/_bulk_docs",
                                 body={"docs": docs, "new_edits": False})
    assert not [row for row in answer if "error" in row], answer


async def served(db, docid):
    """What CouchDB serves for ``docid`` (None if removed), with its conflicts."""
    return await db.get_or_none(docid, conflicts="true")


async def eventually(*checks, seconds=30.0):
    """Whether every check (a coroutine function) holds, within ``seconds``."""
    for _ in range(int(seconds / 0.1)):
        if all([await check() for check in checks]):
            return True
        await sleep(0.1)
    return False


def conflict(docid, stale="stale", new="new"):
    """Two live leaves of ``docid``: CouchDB serves the older one."""
    return [{"_id": docid, "_rev": f"1-{HIGH}", "last_serial": 1, "summary": stale},
            {"_id": docid, "_rev": f"1-{LOW}", "last_serial": 2, "summary": new}]


def checkpoint_keeps(db, unsettled):
    """Whether the resolver's checkpoint is saved, keeping ``unsettled`` (a resolver
    counts what it settled before it saves)."""
    async def check():
        return ((await db.get_local(CHECKPOINT)) or {}).get("unsettled") == unsettled
    return check


def serves_the_new(db, docid):
    async def check():
        doc = await served(db, docid)
        return doc is not None and doc["summary"] == "new" and "_conflicts" not in doc
    return check


REFUSE_EPS = {"_id": "_design/no-deletions", "validate_doc_update":
              "function (doc) { if (doc._deleted && (doc._id === 'eps' || "
              "doc._id.indexOf('eps-probe-') === 0)) { throw({forbidden: 'keep eps'}); } }"}


async def guard_eps(db) -> str:
    """Put REFUSE_EPS and return its revision once it is in effect: a cluster's node
    may take writes a moment longer without a design document written a moment ago
    (the refusal a test waits for never came). Judged on eps's own shard (each shard
    of an Apache CouchDB database loads the validate functions apart)."""
    from pypioncouch.couch import Unauthorized  # (403: CouchDB's refusal)

    rev = await db.put(REFUSE_EPS)
    async for probe in probes_beside(db, "eps"):
        try:
            await delete_probe(db, probe)
        except Unauthorized:
            return rev
    raise AssertionError("the guard never took effect")


async def guard_lifted(db, guard_rev: str) -> None:
    """Delete REFUSE_EPS and return once eps's shard takes deletions again."""
    from pypioncouch.couch import Unauthorized

    await db.delete(REFUSE_EPS["_id"], guard_rev)
    async for probe in probes_beside(db, "eps"):
        try:
            if await delete_probe(db, probe):
                return
        except Unauthorized:
            pass
    raise AssertionError("the guard still refuses deletions")


async def delete_probe(db, probe: str) -> bool:
    """Write ``probe`` and delete it: whether the deletion was taken (False: a
    cluster's copy behind the write a moment ago answered a conflict)."""
    from pypioncouch.couch import Conflict

    try:
        await db.delete(probe, await db.put({"_id": probe}))
        return True
    except Conflict:
        return False


async def probes_beside(db, docid, tries=100):
    """Ids the guard refuses to delete (``eps-probe-N``) in ``docid``'s shard, where
    the server has shards (``_shards/{docid}``, Apache CouchDB); a tenth of a second
    apart."""
    from pypioncouch.couch import NotFound

    async def shard(name):
        try:
            return (await db.server.request("GET", f"{db.path}_shards/{name}"))["range"]
        except NotFound:  # (pouchdb-server: one database file)
            return None

    wanted, candidates = await shard(docid), (f"eps-probe-{n}" for n in range(10 ** 4))
    for _ in range(tries):
        probe = next(candidates)
        while await shard(probe) != wanted:
            probe = next(candidates)
        yield probe
        await sleep(0.1)


def spy_on_changes(db):
    """The ``since`` of every ``_changes`` read of ``db``."""
    seen, read = [], db.changes

    async def changes(**params):
        seen.append(params.get("since"))
        return await read(**params)
    db.changes = changes
    return seen


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
        async def release_is_removed():
            return await served(db, "alpha:1.0") is None

        async def beta_is_alone():
            return "_conflicts" not in await served(db, "beta")

        async def all_counted_and_well():
            return status.conflicts_settled == 3 and status.conflicts_error is None

        assert await eventually(serves_the_new(db, "alpha"), release_is_removed,
                                beta_is_alone, all_counted_and_well,
                                checkpoint_keeps(db, []))
        assert (await served(db, "beta"))["summary"] == "other"
        leaves = await db.leaves("alpha:1.0")
        assert len(leaves) == 2
        assert all(leaf["_deleted"] and leaf["last_serial"] == 9 for leaf in leaves)
    finally:
        await resolver.stopService()
    saved = (await db.get_local(CHECKPOINT))["seq"]

    await add_leaves(couch, db_name, conflict("gamma"))
    again = SyncStatus()
    resolver = ConflictResolver(db, again, pause=0.1)
    seen = spy_on_changes(db)
    resolver.startService()
    try:
        async def one_counted():
            return again.conflicts_settled == 1

        assert await eventually(serves_the_new(db, "gamma"), one_counted)
        assert seen[0] == saved  # (not the whole feed again)
    finally:
        await resolver.stopService()


@pytest_twisted.ensureDeferred
async def test_a_document_it_cannot_settle_is_tried_again_after_a_restart(
        couch, db_name):
    """A validate function refuses the deletion: said on /status, kept in the
    checkpoint while the feed goes on, and settled once it is allowed."""
    db = couch.database(db_name)
    await db.ensure()
    guard = {**REFUSE_EPS, "_rev": await guard_eps(db)}
    await add_leaves(couch, db_name, conflict("eps") + conflict("zeta"))
    status = SyncStatus()
    resolver = ConflictResolver(db, status, pause=0.1)
    resolver.startService()
    try:
        eps_is_kept = checkpoint_keeps(db, ["eps"])
        assert await eventually(serves_the_new(db, "zeta"), eps_is_kept), (
            status.conflicts_error, await served(db, "eps"),
            await db.get_local(CHECKPOINT))
        assert "keep eps" in status.conflicts_error
        assert (await served(db, "eps"))["summary"] == "stale"
    finally:
        await resolver.stopService()
    restarted = SyncStatus()  # (still refused: said after a restart too)
    resolver = ConflictResolver(db, restarted, pause=0.1)
    resolver.startService()
    try:
        async def said():
            return "1 conflicted document(s) kept unsettled, eps first" in (
                restarted.conflicts_error or "")

        assert await eventually(said)
    finally:
        await resolver.stopService()
    await guard_lifted(db, guard["_rev"])
    resolver = ConflictResolver(db, SyncStatus(), pause=0.1)
    resolver.startService()
    try:
        assert await eventually(serves_the_new(db, "eps"), checkpoint_keeps(db, []))
    finally:
        await resolver.stopService()


def lagging(db, docid, reads):
    """The next ``reads["left"]`` reads of ``docid``'s leaves answer as a cluster's
    copy would that has not yet got the newer leaf of :func:`conflict` (which the
    changes feed, read from another copy, names)."""
    read = db.leaves

    async def leaves(wanted, revs=False):
        found = await read(wanted, revs=revs)
        if wanted == docid and reads["left"] > 0:
            reads["left"] -= 1
            return [leaf for leaf in found if leaf["_rev"] != f"1-{LOW}"]
        return found
    db.leaves = leaves


@pytest_twisted.ensureDeferred
async def test_leaves_read_from_a_copy_behind_the_feed_are_read_again(couch, db_name):
    """Settled on what such a copy shows (one leaf: nothing to do), the conflict would
    stay, served the older data, and the feed would not name the document again."""
    db = couch.database(db_name)
    await db.ensure()
    await add_leaves(couch, db_name, conflict("eps"))
    reads = {"left": 2}
    lagging(db, "eps", reads)
    status = SyncStatus()
    resolver = ConflictResolver(db, status, pause=0.1, behind_waits=(0.05, 0.05, 0.05))
    resolver.startService()
    try:
        async def settled():
            return status.conflicts_settled == 1

        assert await eventually(serves_the_new(db, "eps"), settled,
                                checkpoint_keeps(db, []))
        assert reads["left"] == 0 and status.conflicts_error is None
    finally:
        await resolver.stopService()


@pytest_twisted.ensureDeferred
async def test_a_document_changed_since_the_feed_named_its_leaves_is_not_behind(
        couch, db_name):
    """A leaf the feed named and another writer has since written over is found in
    the history of the leaf that replaced it (and a removal's tombstone keeps its
    history): settled, nothing kept."""
    db = couch.database(db_name)
    await db.ensure()
    await add_leaves(couch, db_name, conflict("eps"))
    read = db.leaves

    async def both_readable():  # (a cluster's copies: before writing over one)
        return len(await read("eps")) == 2

    assert await eventually(both_readable)
    written = []

    async def leaves(wanted, revs=False):
        if wanted == "eps" and not written:  # (between the feed's read and this one)
            written.append(await db.put({"_id": "eps", "_rev": f"1-{LOW}",
                                         "last_serial": 3, "summary": "new"}))
            written.append(await db.delete("eps", f"1-{HIGH}"))
        return await read(wanted, revs=revs)
    db.leaves = leaves
    status = SyncStatus()
    resolver = ConflictResolver(db, status, pause=0.1, behind_waits=(0.05,))
    resolver.startService()
    try:
        async def read_past_it():
            checkpoint = await db.get_local(CHECKPOINT) or {}
            return bool(written) and checkpoint.get("seq") and not checkpoint["unsettled"]

        assert await eventually(serves_the_new(db, "eps"), read_past_it)
        assert status.conflicts_error is None and status.last_error is None  # (never)
        tombstones = [leaf for leaf in await read("eps", revs=True) if leaf.get("_deleted")]
        assert tombstones and tombstones[0]["_revisions"]["ids"][-1] == HIGH
    finally:
        await resolver.stopService()


@pytest_twisted.ensureDeferred
async def test_a_copy_that_stays_behind_keeps_the_document_with_the_leaves_named(
        couch, db_name):
    """Past the waits the document is kept in the checkpoint with the leaves the feed
    named (tried again after a restart: the feed will not name it again), said on
    /status, and settled once the copy has them."""
    db = couch.database(db_name)
    await db.ensure()
    await add_leaves(couch, db_name, conflict("eps") + conflict("zeta"))
    reads = {"left": 10 ** 6}
    lagging(db, "eps", reads)
    status = SyncStatus()
    resolver = ConflictResolver(db, status, pause=0.1, behind_waits=(0.05,))
    resolver.startService()
    try:
        async def eps_is_kept():
            checkpoint = (await db.get_local(CHECKPOINT)) or {}
            return (checkpoint.get("unsettled") == ["eps"] and
                    sorted(checkpoint.get("expected", {}).get("eps", [])) ==
                    [f"1-{LOW}", f"1-{HIGH}"])

        assert await eventually(serves_the_new(db, "zeta"), eps_is_kept)
        assert f"lack revision 1-{LOW}" in status.conflicts_error
        assert (await served(db, "eps"))["summary"] == "stale"
    finally:
        await resolver.stopService()
    restarted = SyncStatus()
    resolver = ConflictResolver(db, restarted, pause=0.1, behind_waits=(0.05,),
                                retry_seconds=0.1)
    resolver.startService()
    try:
        async def said():
            return ("1 conflicted document(s) kept unsettled, eps first: its leaves "
                    "CouchDB read lacked one its changes feed named") in (
                restarted.conflicts_error or "")

        assert await eventually(said)
        assert (await served(db, "eps"))["summary"] == "stale"  # (still behind: kept)
        reads["left"] = 0  # (the copy got the leaf)

        async def none_kept():
            checkpoint = await db.get_local(CHECKPOINT)
            return checkpoint["unsettled"] == [] and "expected" not in checkpoint

        assert await eventually(serves_the_new(db, "eps"), none_kept)
        assert restarted.conflicts_error is None
    finally:
        await resolver.stopService()


@pytest_twisted.ensureDeferred
async def test_past_the_bound_of_unsettled_documents_the_feed_waits(couch, db_name,
                                                                    monkeypatch):
    """More refused documents than it keeps: the checkpoint does not move past them."""
    monkeypatch.setattr(conflicts, "UNSETTLED_KEPT", 0)
    db = couch.database(db_name)
    await db.ensure()
    await guard_eps(db)
    await add_leaves(couch, db_name, conflict("eps"))
    status = SyncStatus()
    resolver = ConflictResolver(db, status, pause=0.1, max_backoff=0.2)
    resolver.startService()
    try:
        async def held():
            return "1 conflicted documents could not be settled" in (
                status.conflicts_error or "")

        assert await eventually(held)
        # None saved, or one before eps (a cluster's feed may give the guard's change
        # in a batch of its own): eps is still in the feed after it.
        saved = await db.get_local(CHECKPOINT)
        after = (await db.changes(since=saved["seq"]))["results"] if saved else []
        assert saved is None or "eps" in [change["id"] for change in after], saved
    finally:
        await resolver.stopService()


@pytest_twisted.ensureDeferred
async def test_a_removal_settled_after_a_conflict_still_holds_against_older_data(
        couch, db_name):
    """A tombstone CouchDB shows may be a deleted loser's, saying no serial (a longer
    history wins among tombstones): the removal's serial is still found."""
    db = couch.database(db_name)
    await db.ensure()
    await add_leaves(couch, db_name, [
        {"_id": "rel:1.0", "_rev": f"4-{LOW}", "_deleted": True, "last_serial": 12},
        {"_id": "rel:1.0", "_rev": f"5-{HIGH}", "_deleted": True}])
    store = Store(db)
    older = model.release_document("rel", "Rel", "1.0", [], {"name": "Rel"}, serial=10)
    newer = model.release_document("rel", "Rel", "1.0", [], {"name": "Rel"}, serial=13)
    states = {}

    async def read():  # (a cluster's _all_docs may answer from a copy not there yet)
        states.update(await store.states(["rel:1.0"]))
        return "rel:1.0" in states

    assert await eventually(read)
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
    seen = spy_on_changes(db)
    resolver.startService()
    try:
        async def looking():
            return bool(seen)

        async def waiting():
            return "conflict resolver waits" in (status.conflicts_error or "")

        assert await eventually(looking)
        await db.delete_database()
        assert await eventually(waiting)
        await sleep(0.5)  # (a few more tries)
        assert not await db.exists()
        await db.ensure()
        await add_leaves(couch, db_name, conflict("delta"))
        assert await eventually(serves_the_new(db, "delta"))
    finally:
        await resolver.stopService()


@pytest_twisted.ensureDeferred
async def test_a_database_the_sync_creates_again_is_read_from_its_own_beginning(
        couch, db_name):
    """Deleted and created again between two of the resolver's pages (the daemon's
    sync does it, through the same client): the resolver reads the new database's
    feed from its start, not from the old one's seq (on pouchdb-server past every
    change the new one has: its conflicts would never be found)."""
    db = couch.database(db_name)
    await db.ensure()
    await add_leaves(couch, db_name, [{"_id": f"old-{n}", "_rev": f"1-{LOW}"}
                                      for n in range(20)] + conflict("kappa"))
    held = [False]
    resolver = ConflictResolver(db, SyncStatus(), pause=0.1, ready=lambda: not held[0])
    resolver.startService()
    try:
        async def saved():
            return await db.get_local(CHECKPOINT) is not None

        assert await eventually(serves_the_new(db, "kappa"), saved)
        held[0] = True
        await sleep(0.5)  # (a page in flight is done: the resolver waits to be ready)
        await db.delete_database()
        await db.ensure()  # (as the sync's next pass does: the resolver is told)
        await add_leaves(couch, db_name, conflict("lambda"))
        held[0] = False
        assert await eventually(serves_the_new(db, "lambda"))
    finally:
        await resolver.stopService()


@pytest_twisted.ensureDeferred
async def test_the_resolver_waits_while_the_daemon_is_not_ready(couch, db_name):
    """The daemon holds it during a full import (which it would slow by sharing
    CouchDB); it then reads the feed from where it was."""
    db = couch.database(db_name)
    await db.ensure()
    await add_leaves(couch, db_name, conflict("eta"))
    importing = [True]
    resolver = ConflictResolver(db, SyncStatus(), pause=0.1, ready=lambda: not importing[0])
    seen = spy_on_changes(db)
    resolver.startService()
    try:
        await sleep(0.5)
        assert seen == [] and (await served(db, "eta"))["summary"] == "stale"
        importing[0] = False
        assert await eventually(serves_the_new(db, "eta"))
    finally:
        await resolver.stopService()


async def stale_branch(couch, db, key):
    """A live branch of ``key`` one serial older that CouchDB serves (its revision
    sorts higher), as a cluster keeps a write based on a stale copy."""
    doc = await db.get(key)
    position = doc["_rev"].split("-")[0]
    await add_leaves(couch, db.name, [{
        **{k: v for k, v in doc.items() if k != "_attachments"},
        "_rev": f"{position}-{HIGH}", "last_serial": doc["last_serial"] - 1,
        "summary": "a stale branch"}])
    assert (await served(db, key))["summary"] == "a stale branch"
    return doc


async def in_the_feed(db, *docids):
    """Wait until the feed shows every one of ``docids`` with several leaves (on a
    cluster, ``_changes`` reads one copy of each shard, which a write may reach a
    moment after it is acknowledged)."""
    async def shown():
        rows = (await db.changes(style="all_docs"))["results"]
        return set(docids) <= {row["id"] for row in rows if len(row["changes"]) > 1} \
            and all([len(await db.leaves(docid)) > 1 for docid in docids])
    assert await eventually(shown)


@pytest_twisted.ensureDeferred
async def test_a_one_shot_update_settles_the_conflicts_it_finds(world, couch, monkeypatch):
    """No daemon beside a cron-driven ``--update``: the pass reads the feed to its end
    afterwards, says what it settled and, at every pass, what it could not (kept in
    the checkpoint)."""
    w = world(projects=6, seed=41)
    await run_pass(w.importer(), full=True)
    key = normalize(w.index.dataset.name(2))
    newest = await stale_branch(couch, w.db, key)
    guard = {**REFUSE_EPS, "_rev": await guard_eps(w.db)}
    await add_leaves(couch, w.db.name, conflict("eps"))
    await in_the_feed(w.db, key, "eps")

    monkeypatch.setattr(conflicts, "PAGE", 2)  # (three changes: two pages)
    shown = []
    summary = await run_pass(w.importer(), conflicts_progress=lambda *p: shown.append(p))
    assert summary.conflicts_settled == 1
    # (Apache CouchDB says how many changes are left; pouchdb-server's sequences count)
    assert shown[0][0] < shown[0][1] and shown[-1][0] == shown[-1][1] >= 3, shown
    assert "1 conflicting revision settled" in str(summary)
    assert "conflicting revisions not settled" in summary.conflicts_problem
    assert "keep eps" in summary.conflicts_problem
    async def newest_kept():
        kept = await served(w.db, key)
        return "_conflicts" not in kept and kept["_rev"] == newest["_rev"]
    assert await eventually(newest_kept)
    assert (await served(w.db, key))["last_serial"] == newest["last_serial"]
    assert (await w.db.get_local(CHECKPOINT))["unsettled"] == ["eps"]

    summary = await run_pass(w.importer())  # (still refused: said again)
    assert summary.conflicts_settled == 0
    assert "1 conflicted document(s) kept unsettled, eps first" in summary.conflicts_problem

    await w.db.delete(guard["_id"], guard["_rev"])
    settled = 0
    for _ in range(50):  # (a cluster's nodes may still hold the guard a moment)
        summary = await run_pass(w.importer())
        settled += summary.conflicts_settled
        if summary.conflicts_problem is None:
            break
        await sleep(0.1)
    assert (settled, summary.conflicts_problem) == (1, None)
    assert await eventually(serves_the_new(w.db, "eps"))  # (a cluster: a write answered 202)
    assert (await w.db.get_local(CHECKPOINT))["unsettled"] == []


@pytest_twisted.ensureDeferred
async def test_a_full_import_leaves_the_feed_to_the_next_update(world, couch):
    """Reading the whole feed would add ~14 % to an import (bench/RESULTS.md); so
    would an update that is one (no checkpoint yet)."""
    w = world(projects=4, seed=43)
    await w.db.ensure()
    await add_leaves(couch, w.db.name, conflict("kappa"))
    for full in (False, True):  # (the first: no checkpoint, an import)
        summary = await run_pass(w.importer(), full=full)
        assert summary.conflicts_settled == 0 and summary.kind == "full import"
    assert await w.db.get_local(CHECKPOINT) is None
    summary = await run_pass(w.importer())
    assert summary.conflicts_settled == 1


def checkpoint_moved_once(db):
    """The first checkpoint write finds it moved by another resolver (a daemon, a
    one-shot pass) since it was read."""
    write, moved = db.put_local, []

    async def put_local(name, doc):
        if not moved:
            moved.append(True)
            current = await db.get_local(name) or {}
            await write(name, {**current, "seq": current.get("seq", 0)})
        return await write(name, doc)
    db.put_local = put_local
    return moved


@pytest_twisted.ensureDeferred
async def test_two_resolvers_on_one_checkpoint_each_go_on_from_the_other(
        couch, couch_server, db_name):
    """pouchdb-server refuses a stale write of the checkpoint: a one-shot pass whose
    checkpoint moved stops there quietly (the daemon reads on), and the daemon reads
    on from it without saying a failure. Apache CouchDB takes the write (a _local
    document takes any revision): each goes on from its own position."""
    db = couch.database(db_name)
    await db.ensure()
    await add_leaves(couch, db_name, conflict("theta"))
    await in_the_feed(db, "theta")
    moved = checkpoint_moved_once(db)
    status = await ConflictResolver(db).settle_once()
    assert moved and status.conflicts_error is None
    assert await eventually(serves_the_new(db, "theta"))  # (settled before that write)
    refused = couch_server.kind == "pouchdb"
    assert ((await db.get_local(CHECKPOINT))["seq"] == 0) == refused

    await add_leaves(couch, db_name, conflict("iota"))
    moved = checkpoint_moved_once(db)
    daemon_status = SyncStatus()
    resolver = ConflictResolver(db, daemon_status, pause=0.1)
    resolver.startService()
    try:
        async def read_on():
            checkpoint = await db.get_local(CHECKPOINT)
            return bool(moved) and checkpoint["seq"] != 0 and \
                daemon_status.conflicts_settled == 1

        assert await eventually(serves_the_new(db, "iota"), read_on)
        assert daemon_status.conflicts_error is None and not daemon_status.errors_by_kind
    finally:
        await resolver.stopService()


@pytest_twisted.ensureDeferred
async def test_the_command_says_what_it_settled_and_exits_3_for_what_it_could_not(
        couch_server, couch, db_name):
    async def run(sim, action):
        out, err, code = await utils.getProcessOutputAndValue(
            str(Path(sys.executable).parent / "pypioncouch"),
            [action, couch_server.url, "--pypi", sim.url, "--db", db_name, "--quiet"],
            env=dict(os.environ))
        return code, (out + err).decode()

    with SimulatorProcess("--projects", "8", "--seed", "42") as sim:
        code, out = await run(sim, "--fullimport")
        assert code == 0 and "conflicting" not in out, out
        db = couch.database(db_name)
        key = normalize(Dataset(8, 42).name(3))
        await stale_branch(couch, db, key)
        await guard_eps(db)
        await add_leaves(couch, db_name, conflict("eps"))
        await in_the_feed(db, key, "eps")
        code, out = await run(sim, "--update")
    assert code == 3, out
    assert "1 conflicting revision settled" in out
    assert "conflicting revisions not settled: CouchDB refused to delete a " \
           "conflicting revision of eps: forbidden: keep eps" in out

"""The sync engine against the simulator and a real pouchdb-server."""

import pytest
import pytest_twisted
from packaging.version import Version
from twisted.internet import defer

from pypioncouch import store as store_module
from pypioncouch.checkpoint import CHECKPOINT
from pypioncouch.pypi import PyPIError
from pypioncouch.store import Store
from pypioncouch.sync import Work, group_changelog, run_pass
from pypioncouch.testing.dataset import normalize

from .helpers import World, assert_matches_simulator, sleep, stored_project

pytestmark = pytest.mark.cluster  # end to end: also on a 3-node cluster


@pytest.fixture
def world(couch_server, db_name):
    world = World(couch_server.url, db_name, projects=60, seed=5,
                  read_url=couch_server.read_url)
    yield world
    world.close()


@pytest_twisted.ensureDeferred
async def test_full_import_equals_the_simulator_document_by_document(world):
    summary = await run_pass(world.importer(), full=True)
    assert summary.projects == 60 and summary.pending == 0, summary
    assert summary.serial == world.index.last_serial
    await world.settled()
    await assert_matches_simulator(world.read_db, world.index)
    checkpoint = await world.db.get_local(CHECKPOINT)
    assert checkpoint["serial"] == world.index.last_serial and checkpoint["pending"] == {}


@pytest_twisted.ensureDeferred
async def test_documents_keep_the_normalized_forms(world):
    for version in ("2.0", "10.0", "1.0rc1", "1.0", "1.0.post1", "1.0.dev1"):  # uploaded
        world.index.publish("Order.Test", version)                         # out of order
    await run_pass(world.importer(), full=True)
    name = world.index.dataset.name(1)  # the unicode showcase
    key = normalize(name)
    await world.settled()
    project, releases = await stored_project(world.read_db, key)
    assert project["name"] == name and project["_id"] == key
    assert project["keywords"] == ["données", "データ", "🐍"]
    assert all(len(r["upload_time"]) == 6 for r in releases if r["files"])
    assert project["versions"] == sorted(world.index.get(name).releases, key=Version)
    scrambled, _ = await stored_project(world.read_db, "order-test")
    assert scrambled["versions"] == ["1.0.dev1", "1.0rc1", "1.0", "1.0.post1", "2.0", "10.0"]
    assert "description" not in project["info"]
    latest = next(r for r in releases if r["version"] == project["latest_version"])
    assert latest["info"]["description"] is not None


@pytest_twisted.ensureDeferred
async def test_a_second_full_import_fetches_nothing_it_has(world):
    await run_pass(world.importer(), full=True)
    importer = world.importer()
    summary = await run_pass(importer, full=True)
    assert summary.projects == 0 and summary.skipped == 60
    assert importer.pypi.requests == 2  # the serial and the listing, no project


@pytest_twisted.ensureDeferred
async def test_every_changelog_action_converges_to_the_truth(world):
    await run_pass(world.importer(), full=True)
    index = world.index
    # (keys[4] has releases to spare: 15 has eight, 14 only one)
    names = [index.dataset.name(i) for i in (10, 11, 12, 13, 15, 14, 16, 17, 18, 19)]
    keys = [normalize(n) for n in names]
    first = lambda k: list(index.get(k).releases)[0]  # noqa: E731
    index.publish(keys[0], "77.0", files=2)
    index.yank(keys[1], first(keys[1]), "bad <b>build</b>")
    index.publish(keys[2], "5.0")
    index.unyank(keys[2], "5.0")
    index.remove_file(keys[3], first(keys[3]), index.get(keys[3]).releases[first(keys[3])]
                      .files[0].filename)
    assert len(index.get(keys[4]).releases) > 1
    index.remove_release(keys[4], first(keys[4]))
    index.remove_project(keys[5])
    index.quarantine(keys[6])
    index.add_role(keys[7], "Maintainer", "glyph")
    index.create_project("Fresh_Project.Name")
    index.publish("Another.New", "0.1a1")
    index.quarantine(keys[8])
    index.clear_quarantine(keys[8])
    index.archive(keys[9])  # no journal row: the status sweep's (test_status_sweep.py)
    summary = await run_pass(world.importer())
    assert summary.pending == 0, summary.errors
    assert summary.deleted == 1
    await world.settled()
    await assert_matches_simulator(world.read_db, index)
    quarantined = await world.db.get(keys[6])
    assert quarantined["status"] == "quarantined" and quarantined["versions"] == []
    fresh = await world.db.get("fresh-project-name")
    assert fresh["name"] == "Fresh_Project.Name" and fresh["info"] is None
    assert (await world.db.get_local(CHECKPOINT))["serial"] == index.last_serial


@pytest_twisted.ensureDeferred
async def test_a_project_without_releases_takes_its_new_spelling(world):
    """Removed, then created again spelled otherwise, still without a release: the
    index and the pages name it as PyPI does now."""
    w = world
    w.index.create_project("Fresh_Project.Name")
    await run_pass(w.importer(), full=True)
    assert (await w.db.get("fresh-project-name"))["name"] == "Fresh_Project.Name"
    w.index.remove_project("fresh-project-name")
    w.index.create_project("fresh.project-name")
    summary = await run_pass(w.importer())
    assert summary.pending == 0, summary.errors
    await w.settled()
    stored = await w.read_db.get("fresh-project-name")
    assert (stored["name"], stored["versions"]) == ("fresh.project-name", [])


@pytest_twisted.ensureDeferred
async def test_unchanged_releases_are_not_rewritten(world):
    await run_pass(world.importer(), full=True)
    key = normalize(world.index.dataset.name(2))
    await world.settled()
    _, before = await stored_project(world.read_db, key)
    world.index.yank(key, "1.0.0", "oops")
    summary = await run_pass(world.importer())
    assert summary.releases == 1
    await world.settled()
    _, after = await stored_project(world.read_db, key)
    revs = {d["version"]: d["_rev"] for d in before}
    changed = [d["version"] for d in after if d["_rev"] != revs[d["version"]]]
    assert changed == ["1.0.0"]


@pytest_twisted.ensureDeferred
async def test_an_older_release_keeps_the_info_it_had_as_the_latest(world):
    await run_pass(world.importer(), full=True)
    key = normalize(world.index.dataset.name(5))  # versions 0.9, 1.0, 1.1
    world.index.publish(key, "2.0", summary="the new one")
    await run_pass(world.importer())
    await world.settled()
    _, releases = await stored_project(world.read_db, key)
    by_version = {d["version"]: d for d in releases}
    assert by_version["2.0"]["info"]["summary"] == "the new one"
    assert by_version["2.0"]["info_source"] == "latest"
    assert by_version["1.1"]["info"]["version"] == "1.1"  # kept from the first import
    assert by_version["1.1"]["info_source"] == "latest"
    assert "info" not in by_version["1.0"] and "info_source" not in by_version["1.0"]


@pytest_twisted.ensureDeferred
async def test_a_release_removed_and_uploaded_again_does_not_keep_the_old_uploads_info(world):
    """Removed on PyPI and uploaded again (other files: PyPI never takes a filename
    twice), a release that is not the latest may carry other metadata: what the old
    upload said must not be served as its own for ever (the backfill asks anew)."""
    key = "again"
    world.index.publish(key, "1.0", files=2, summary="the first upload")
    await run_pass(world.importer(), full=True)
    first = world.index.get(key).releases["1.0"].files
    world.index.remove_file(key, "1.0", first[0].filename)  # (kept: the other wheel)
    world.index.publish(key, "2.0")
    await run_pass(world.importer())
    await world.settled()
    kept = await world.read_db.get(f"{key}:1.0")
    assert kept["info"]["summary"] == "the first upload"  # (kept, not the latest now)
    world.index.remove_release(key, "1.0")
    world.index.publish(key, "1.0", files=1, summary="the second upload")
    assert {f.filename for f in world.index.get(key).releases["1.0"].files}.isdisjoint(
        f["filename"] for f in kept["files"])
    await run_pass(world.importer())
    await world.settled()
    again = await world.read_db.get(f"{key}:1.0")
    assert [f["filename"] for f in again["files"]] == [first[0].filename]
    assert "info" not in again  # (no metadata rather than another upload's)


@pytest_twisted.ensureDeferred
async def test_a_full_import_removes_what_pypi_no_longer_lists(world):
    """An import interrupted, then a project removed, then a new full import whose
    baseline is past the removal: the project must still go."""
    await run_pass(world.importer(), full=True)
    gone = normalize(world.index.dataset.name(8))
    world.index.remove_project(gone)
    summary = await run_pass(world.importer(), full=True)
    assert summary.deleted == 1
    assert await world.db.get_or_none(gone) is None
    await world.settled()
    await assert_matches_simulator(world.read_db, world.index)


@pytest_twisted.ensureDeferred
async def test_removals_newer_than_pypis_answers_hold_in_a_database_of_tombstones(world):
    """A database whose every project was removed lists none (``_all_docs`` shows no
    tombstone), yet it is not a new one: a full import still checks what it writes
    against the removals, and one newer than PyPI's answer wins."""
    store = Store(world.db)
    await run_pass(world.importer(), full=True)
    await world.settled()  # (a cluster's _all_docs may give a revision written over)
    rows = (await world.db.all_docs())["rows"]
    future = world.index.last_serial + 1000  # removed after everything PyPI says now
    results = await world.db.bulk_docs([{**store_module.tombstone(r["id"], future),
                                         "_rev": r["value"]["rev"]}
                                        for r in rows if not r["id"].startswith("_design/")])
    assert all(result.ok for result in results)
    await world.settled()
    assert not await store.has_documents()
    summary = await run_pass(world.importer(), full=True)
    assert summary.projects == 0 and summary.skipped == 60, summary
    assert not await store.has_documents()


@pytest_twisted.ensureDeferred
async def test_a_rewrite_that_conflicts_carries_the_description_stored_now(couch, db_name):
    """A release rewritten without its info (a yank) carries its stored description,
    kept apart as an attachment. Another writer stores a new one meanwhile: the write
    conflicts, and its next round carries the new one (the attachment stub of the copy
    first read names a revision gone: Apache CouchDB refuses the whole _bulk_docs)."""
    from pypioncouch import model

    db = couch.database(db_name)
    await db.ensure()
    store = Store(db)
    file = {"filename": "Big-1.0.tar.gz", "yanked": False, "yanked_reason": None}
    base = model.release_document("big", "Big", "1.0", [file], {
        "name": "Big", "version": "1.0", "description": "old " * 1_100_000}, serial=10)
    assert not (await store.write([dict(base)]))[0]
    stored = await db.get("big:1.0")
    yank = {**model.release_document("big", "Big", "1.0", [dict(file, yanked=True)], None,
                                     serial=11), "_rev": stored["_rev"]}
    store_module.keep_info(yank, stored)  # (as the sync's settle does)
    newer = {**base, "_rev": stored["_rev"], "last_serial": 11,
             "info": {**base["info"], "description": "new " * 1_100_000}}
    # The other writer, first; on a cluster, acknowledged by every copy (w=3): a copy
    # still at the first revision would take the yank as a branch, not a conflict
    # (tests/test_conflicts.py settles those). Reading with r=3 first left it to the
    # read's repair, which now and then came after the yank.
    [written] = await couch.request("POST", f"{db_name}/_bulk_docs", params={"w": "3"},
                                    body={"docs": [model.stored_form(newer)]})
    assert written.get("ok"), written
    assert await store.write([yank]) == ({}, {})
    for _ in range(100):  # (a cluster's copies agree a moment after the write)
        whole = await store.release("big", "1.0")
        if whole["_rev"].startswith("3-"):
            break
        await sleep(0.05)
    assert whole["yanked"] is True
    assert whole["info"]["description"] == "new " * 1_100_000


@pytest_twisted.ensureDeferred
async def test_two_first_imports_at_once_into_a_new_database_lose_nothing(world):
    """Both find the database empty, so neither reads stored copies first: each meets
    the other's documents when it writes and settles them by the same rules. What one
    could not settle waits for the next pass; after it, the database is PyPI's truth."""
    first, second = await defer.gatherResults([
        defer.ensureDeferred(run_pass(world.importer(), full=True)) for _ in range(2)])
    assert first.projects + second.projects >= 60
    assert not first.errors or all("another writer" in e for e in first.errors), first
    assert not second.errors or all("another writer" in e for e in second.errors), second
    if first.pending or second.pending:
        await run_pass(world.importer())
    await world.settled()
    await assert_matches_simulator(world.read_db, world.index)


@pytest_twisted.ensureDeferred
async def test_a_checkpoint_gone_since_it_was_read_is_not_saved_again(couch, db_name):
    """Its database deleted under a running pass and created again (pouchdb-server
    creates it at the next write): saving would have the new database claim all the
    old one held. The pass fails; the next one finds no checkpoint and imports."""
    from pypioncouch.checkpoint import Checkpoint
    from pypioncouch.couch import NotFound
    from pypioncouch.status import SyncStatus

    db = couch.database(db_name)
    await db.ensure()
    checkpoint = Checkpoint(db, "https://pypi.org/", SyncStatus())
    assert await checkpoint.load() is None
    assert await checkpoint.save(10, {}) == (10, {})
    await db.delete_database()
    await db.ensure()
    with pytest.raises(NotFound, match="the checkpoint is gone since this pass read it"):
        await checkpoint.save(12, {"a": 11})
    assert await db.get_local(CHECKPOINT) is None
    assert await checkpoint.load() is None  # (the next pass: a first import)
    assert await checkpoint.save(12, {}) == (12, {})


@pytest_twisted.ensureDeferred
async def test_a_database_deleted_during_a_first_import_gets_no_checkpoint(couch, db_name):
    """No checkpoint was read to miss at the end, and pouchdb-server creates a deleted
    database again at the next write: the import's end would have had the new database
    claim every project the deleted one held (missing until they change on PyPI). A
    mark written as the import begins tells."""
    from pypioncouch.checkpoint import IMPORT_MARK, Checkpoint
    from pypioncouch.couch import NotFound
    from pypioncouch.status import SyncStatus

    db = couch.database(db_name)
    await db.ensure()
    checkpoint = Checkpoint(db, "https://pypi.org/", SyncStatus())
    assert await checkpoint.load() is None
    await checkpoint.mark_import()
    await db.delete_database()
    await db.ensure()
    with pytest.raises(NotFound, match="the database was deleted during this import"):
        await checkpoint.save(12, {})
    assert await db.get_local(CHECKPOINT) is None
    assert await checkpoint.load() is None  # (the next pass: an import again)
    await checkpoint.mark_import()
    await checkpoint.mark_import()  # (a second import's: written over)
    assert await checkpoint.save(12, {}) == (12, {})
    assert await db.get_local(IMPORT_MARK) is not None


def test_two_writers_pending_one_project_keep_the_serial_asked_most():
    """A retry asks for its serial (an older copy, a CDN's, is not taken for it): the
    lower of two would let the checkpoint cover a change never fetched."""
    from pypioncouch.checkpoint import _merged

    theirs = {"serial": 300, "pending": {"p": 250, "q": 10, "r": None, "s": {"removed": 90}}}
    assert _merged(200, {"p": 150, "q": 20, "r": 5, "s": 80, "t": 7}, theirs) == (
        300, {"p": 250, "q": 20, "r": None, "s": {"removed": 90}, "t": 7})
    assert _merged(400, {}, {"serial": None, "pending": {"p": 1}}) == (400, {"p": 1})


@pytest_twisted.ensureDeferred
async def test_a_daemon_started_after_days_down_is_not_healthy_while_days_behind(couch,
                                                                               db_name):
    """Behind PyPI since its checkpoint was saved, at least: not "just started, so
    not behind for long" (a load balancer took it back for --max-lag seconds)."""
    from datetime import datetime, timedelta, timezone

    from pypioncouch.checkpoint import Checkpoint
    from pypioncouch.status import SyncStatus
    from pypioncouch.web.health import HealthPolicy

    db = couch.database(db_name)
    await db.ensure()
    saved = datetime.now(timezone.utc) - timedelta(days=2)
    await db.put_local(CHECKPOINT, {"serial": 500, "pending": {"a": 480, "b": None},
                                    "updated": saved.isoformat(timespec="seconds")})
    status = SyncStatus()
    await Checkpoint(db, "https://pypi.org/", status).load()
    assert status.pending == 2  # (what /status shows from the start)
    # Before its first pass asks PyPI (which may wait an hour for a view an upgrade
    # builds): its data is two days old all the same.
    [reason] = HealthPolicy(status, syncing=True).reasons(True)
    assert reason.startswith("no serial read from PyPI since the start, and the "
                             "checkpoint was saved 172") and reason.endswith("s ago"), reason
    status.note_serials(pypi_serial=900)  # (the first pass asks PyPI)
    assert 2 * 86400 - 60 < status.lag_seconds() < 2 * 86400 + 60
    [reason] = HealthPolicy(status, syncing=True).reasons(True)
    assert reason.startswith("400 serials (") and reason.endswith("s) behind PyPI")
    # A checkpoint saved by a daemon a moment ago: behind for a moment only.
    fresh = SyncStatus()
    await db.put_local(CHECKPOINT, {**await db.get_local(CHECKPOINT), "updated":
                                    datetime.now(timezone.utc).isoformat()})
    await Checkpoint(db, "https://pypi.org/", fresh).load()
    assert HealthPolicy(fresh).reasons(True) == []
    fresh.note_serials(pypi_serial=900)
    assert fresh.lag_seconds() < 60 and HealthPolicy(fresh).reasons(True) == []


@pytest_twisted.ensureDeferred
async def test_two_writers_that_found_no_checkpoint_merge_theirs(couch, db_name):
    """Both loaded none (two first imports at once): the second to save keeps the
    higher serial and the first's projects to retry, on Apache CouchDB too, whose local
    documents take a stale revision without a conflict."""
    from pypioncouch.checkpoint import Checkpoint
    from pypioncouch.status import SyncStatus

    db = couch.database(db_name)
    await db.ensure()
    first, second = (Checkpoint(db, "https://pypi.org/", SyncStatus()) for _ in range(2))
    assert await first.load() is None and await second.load() is None
    assert await first.save(10, {"a": 5}) == (10, {"a": 5})
    # What was saved is returned: a pass goes on from there (its next page's save
    # would otherwise put back its own serial and pending list over the merged ones).
    assert await second.save(8, {"b": 7}) == (10, {"a": 5, "b": 7})
    saved = await db.get_local(CHECKPOINT)
    assert (saved["serial"], saved["pending"]) == (10, {"a": 5, "b": 7})
    assert await first.save(12, {}) == (12, {"a": 5, "b": 7})  # (the second's kept)
    # A checkpoint an older version saved (no token) after ours: merged too.
    saved = await db.get_local(CHECKPOINT)
    await db.put_local(CHECKPOINT, {"serial": 20, "pending": {"c": 1}, "_rev": saved["_rev"]})
    assert await first.save(15, {}) == (20, {"c": 1})
    assert await first.save(21, {}) == (21, {})  # (its own: nothing more to merge)
    # One loaded without a token, then written over by an older version's writer.
    third = Checkpoint(db, "https://pypi.org/", SyncStatus())
    rev = (await db.get_local(CHECKPOINT))["_rev"]
    await db.put_local(CHECKPOINT, {"serial": 30, "pending": {"d": 2}, "_rev": rev})
    assert (await third.load())["serial"] == 30
    rev = (await db.get_local(CHECKPOINT))["_rev"]
    await db.put_local(CHECKPOINT, {"serial": 31, "pending": {"e": 3}, "_rev": rev})
    assert await third.save(25, {}) == (31, {"e": 3})


@pytest_twisted.ensureDeferred
async def test_an_unexpected_error_costs_one_project_not_the_pass(world):
    importer = world.importer()
    real = importer.pypi.project
    victim = normalize(world.index.dataset.name(9))

    async def project(name, min_serial=None):
        if normalize(name) == victim:
            raise KeyError("a bug")
        return await real(name, min_serial)

    importer.pypi.project = project
    summary = await run_pass(importer, full=True)
    assert summary.pending == 1 and summary.projects == 59
    assert "unexpected KeyError" in summary.errors[0]
    assert victim in (await world.db.get_local(CHECKPOINT))["pending"]
    await run_pass(world.importer())  # the next pass retries it
    await world.settled()
    await assert_matches_simulator(world.read_db, world.index)


@pytest_twisted.ensureDeferred
async def test_a_malformed_field_or_a_bug_in_shaping_costs_one_project(world):
    """An answer whose field has the wrong type, or a bug met while planning the
    writes: that project waits in the checkpoint, the others are written."""
    importer = world.importer()
    real_project, real_plan = importer.pypi.project, importer._plan
    malformed, buggy = (normalize(world.index.dataset.name(n)) for n in (9, 12))

    async def project(name, min_serial=None):
        answer = await real_project(name, min_serial)
        if normalize(name) == malformed:
            answer.payload["info"]["keywords"] = 42
        return answer

    async def plan(work, old, answer):
        if work.key == buggy:
            raise KeyError("a bug")
        return await real_plan(work, old, answer)

    importer.pypi.project, importer._plan = project, plan
    summary = await run_pass(importer, full=True)
    assert summary.pending == 2 and summary.projects == 58
    errors = "\n".join(summary.errors)
    assert f"{malformed}: malformed answer from PyPI: a field of the JSON API answer" in errors
    assert f"{buggy}: unexpected KeyError" in errors
    assert {malformed, buggy} <= set((await world.db.get_local(CHECKPOINT))["pending"])
    await run_pass(world.importer())  # the next pass retries them
    await world.settled()
    await assert_matches_simulator(world.read_db, world.index)


@pytest_twisted.ensureDeferred
async def test_a_restarted_daemon_knows_its_serial_from_the_checkpoint(couch, db_name):
    """/health and the backfill need not wait for a first pass after a restart."""
    from pypioncouch.checkpoint import Checkpoint
    from pypioncouch.status import SyncStatus

    db = couch.database(db_name)
    await db.ensure()
    await db.put_local(CHECKPOINT, {"serial": 4242, "pending": {}})
    status = SyncStatus()
    await Checkpoint(db, "http://pypi.test/", status).load()
    assert status.our_serial == 4242


@pytest_twisted.ensureDeferred
async def test_what_was_removed_in_one_pass_comes_back_in_a_later_one(world):
    """Written again over the tombstones of its removal: a quarantine cleared, a
    project removed and published anew (Apache CouchDB refuses a tombstone's revision
    as the parent of the new one)."""
    await run_pass(world.importer(), full=True)
    quarantined, removed = (normalize(world.index.dataset.name(n)) for n in (7, 8))
    world.index.quarantine(quarantined)
    world.index.remove_project(removed)
    await run_pass(world.importer())
    assert (await world.db.get(quarantined))["versions"] == []
    assert await world.db.get_or_none(removed) is None
    world.index.clear_quarantine(quarantined)
    world.index.publish(removed, "7.0")
    summary = await run_pass(world.importer())
    assert summary.pending == 0, summary.errors
    await world.settled()
    await assert_matches_simulator(world.read_db, world.index)


@pytest_twisted.ensureDeferred
async def test_a_project_another_writer_stores_while_a_pass_removes_it_goes(world):
    """A daemon and a cron ``--update`` on one database: this pass reads the project
    as not stored, PyPI says it is gone, and the other writer (a step behind) stores
    it before this pass writes. The removal still takes it away: PyPI's changelog
    will not name it again."""
    import json

    from pypioncouch import model

    await run_pass(world.importer(), full=True)
    world.index.publish("Racer", "1.0")
    status, body, _ = world.index.json_api("racer")
    assert status == 200
    project, releases = model.project_documents(json.loads(body))  # the other's copy
    world.index.remove_project("racer")
    importer = world.importer()
    plan = importer._plan

    async def the_other_writer_first(work, old, answer):
        if work.key == "racer":
            assert old is None and answer.kind == "gone"
            assert await Store(world.db).write(releases + [project]) == ({}, {})
        return await plan(work, old, answer)

    importer._plan = the_other_writer_first
    summary = await run_pass(importer)
    assert summary.pending == 0 and summary.deleted == 1, summary
    await world.settled()
    assert await world.read_db.get_or_none("racer") is None
    await assert_matches_simulator(world.read_db, world.index)


@pytest_twisted.ensureDeferred
async def test_a_project_another_writer_removes_while_a_pass_writes_it_is_asked_again(
        world):
    """The other writer (a CDN's 404 in hand) removes the project and every release
    stored, those this pass wrote a moment before too: this pass does not write the
    project back over the removal, listing releases that are gone. Its next pass
    asks PyPI again."""
    await run_pass(world.importer(), full=True)
    key = normalize(world.index.dataset.name(3))
    world.index.publish(key, "77.0")
    importer = world.importer()
    write = importer.store.write
    removed = []

    async def the_other_writer_between(docs, **options):
        if not removed and any(d["_id"] == key for d in docs):
            other = Store(world.db)
            for _ in range(50):  # (a cluster's range read: a copy a moment behind)
                ids = await other.release_ids(key) + [key]
                if f"{key}:77.0" in ids:
                    break
                await sleep(0.1)
            assert f"{key}:77.0" in ids  # (this pass's, written)
            states = await other.states(ids)
            assert await other.write([{**store_module.tombstone(i, None),
                                       "_rev": states[i][0]} for i in ids]) == ({}, {})
            removed.append(key)
        return await write(docs, **options)

    importer.store.write = the_other_writer_between
    summary = await run_pass(importer)
    assert removed and summary.pending == 1, summary
    assert "another writer" in summary.errors[0], summary.errors
    assert await world.db.get_or_none(key) is None
    summary = await run_pass(world.importer())
    assert summary.pending == 0, summary.errors
    await world.settled()
    await assert_matches_simulator(world.read_db, world.index)


@pytest_twisted.ensureDeferred
async def test_a_quarantined_project_removed_leaves_a_mirror_following_the_index(world):
    """Quarantine, then removal: malware's usual end on PyPI. The Simple index lists
    neither state and has no removal rows: the stored quarantined projects are asked
    about by name, and one still quarantined does not hold the checkpoint."""
    await run_pass(world.importer(), full=True)
    removed, kept = (normalize(world.index.dataset.name(n)) for n in (7, 9))
    world.index.quarantine(removed)
    world.index.quarantine(kept)
    await run_pass(world.importer())
    assert (await world.db.get(removed))["status"] == "quarantined"
    world.index.remove_project(removed)
    importer = world.importer(changes="simple")
    summary = await run_pass(importer)
    assert await world.db.get_or_none(removed) is None
    assert (await world.db.get(kept))["status"] == "quarantined"
    assert summary.incomplete is None and summary.pending == 0, summary.errors
    assert (await world.db.get_local(CHECKPOINT))["serial"] == world.index.last_serial
    await world.settled()
    await assert_matches_simulator(world.read_db, world.index)
    # Asked about hourly, not on every pass: the next pass asks for the index alone.
    asked = importer.pypi.requests
    await run_pass(importer)
    assert importer.pypi.requests == asked + 1
    importer.quarantine_asked_at -= 3600
    await run_pass(importer)
    assert importer.pypi.requests == asked + 1 + 3  # the index; kept's JSON and Simple


@pytest.mark.parametrize("change, revert", [
    (lambda index, key, version: index.yank(key, version, "cut short"),
     lambda index, key, version: index.unyank(key, version)),
    # (every release removed, then the same releases back)
    (lambda index, key, version: index.quarantine(key),
     lambda index, key, version: index.clear_quarantine(key)),
], ids=["yank", "quarantine"])
@pytest_twisted.ensureDeferred
async def test_a_change_reverted_after_a_write_cut_short_is_written_again(world, change,
                                                                          revert):
    """A pass killed between a project's releases and its project document leaves
    releases other than what the project records of them (rewritten, or removed). If
    PyPI then reverts that change, those releases must still be written again."""
    class Killed(Exception):
        pass

    await run_pass(world.importer(), full=True)
    key, version = next((k, v) for k, _ in world.index.listing()
                        for v in list(world.index.get(k).releases)[:1])
    change(world.index, key, version)
    # The pass is cut short (killed) after the releases, before their project.
    importer = world.importer()
    write = importer.store.write

    async def cut_short(docs, bases=None, **options):
        if any(d["_id"] == key and None not in d["release_digests"].values() for d in docs):
            raise Killed()
        return await write(docs, bases, **options)

    importer.store.write = cut_short
    with pytest.raises(Killed):
        await run_pass(importer)
    # The change landed (a cluster's reads may answer from a copy a moment behind).
    for _ in range(100):
        _, releases = await stored_project(world.read_db, key)
        if not any(r["version"] == version and not r["yanked"] for r in releases):
            break
        await sleep(0.1)
    assert not any(r["version"] == version and not r["yanked"] for r in releases)
    revert(world.index, key, version)
    await run_pass(world.importer())
    await world.settled()
    await assert_matches_simulator(world.read_db, world.index)


def test_changelog_rows_make_one_work_per_project_naming_every_version():
    rows = [["Foo_Bar", "1.0", 1700000000, "new release", 10],
            ["Foo_Bar", "1.0", 1700000001, "add py3 file foo_bar-1.0-py3-none-any.whl", 11],
            ["foo-bar", "1.1", 1700000002, "new release", 12],
            ["foo-bar", "1.1", 1700000003, "remove release", 13],
            ["Other", None, 1700000004, "create", 14],
            ["user:someone", None, 1700000005, "add Owner x", 15],
            ["Third", "0.9", 1700000006, "yank release", 16],
            ["Third", None, 1700000007, "add Maintainer y", 17]]
    assert group_changelog(rows) == {
        "foo-bar": Work("foo-bar", "foo-bar", 13, False, frozenset({"1.0", "1.1"}),
                        uploaded=12),  # (its last upload row's serial)
        "other": Work("other", "Other", 14, uploaded=14),
        "third": Work("third", "Third", 17, versions=frozenset({"0.9"}),
                      yanks=frozenset({"0.9"}))}


@pytest.mark.parametrize("stored_before", [True, False], ids=["stored", "new project"])
@pytest_twisted.ensureDeferred
async def test_a_release_written_by_a_pass_cut_short_then_removed_on_pypi_goes(
        world, stored_before):
    """A pass killed between a new release and its project leaves the release stored
    though its project never listed it; if PyPI then removes it, the next pass removes
    it too (its changelog rows name it), not only what the project listed."""
    await run_pass(world.importer(), full=True)
    key = normalize(world.index.dataset.name(3)) if stored_before else "brand-new"
    world.index.publish(key, "98.0")
    world.index.publish(key, "99.0")
    await _a_pass_killed_before_the_project(world, key)
    for _ in range(100):  # (a cluster's reads may answer from a copy a moment behind)
        if await world.read_db.get_or_none(f"{key}:99.0") is not None:
            break
        await sleep(0.1)
    assert await world.read_db.get_or_none(f"{key}:99.0") is not None
    world.index.remove_release(key, "99.0")
    await run_pass(world.importer())
    await world.settled()
    assert await world.read_db.get_or_none(f"{key}:99.0") is None
    await assert_matches_simulator(world.read_db, world.index)


@pytest_twisted.ensureDeferred
async def test_such_a_release_goes_too_when_its_project_is_retried_from_pending(world):
    """The same, but the pass after the removal gets a stale copy from the CDN: the
    project waits in the checkpoint's pending list, which keeps no versions, and the
    changelog has moved on; its retry reads which releases are stored."""
    from twisted.internet import reactor

    await run_pass(world.importer(), full=True)
    key = normalize(world.index.dataset.name(5))
    world.index.publish(key, "99.0")
    await _a_pass_killed_before_the_project(world, key)
    world.index.clock = reactor.seconds
    world.index.stale_seconds = 600
    world.index.remove_release(key, "99.0")  # and the CDN keeps the copy before it
    summary = await run_pass(world.importer(stale_retries=0))
    assert summary.pending == 1, summary
    world.index.stale_seconds = 0
    world.index._stale.clear()  # (the CDN catches up)
    summary = await run_pass(world.importer())
    assert summary.pending == 0, summary
    await world.settled()
    assert await world.read_db.get_or_none(f"{key}:99.0") is None
    await assert_matches_simulator(world.read_db, world.index)


async def _a_pass_killed_before_the_project(world, key):
    """A pass killed (as by SIGKILL) once it wrote ``key``'s releases, before its
    project document."""
    class Killed(Exception):
        pass

    importer = world.importer()
    write = importer.store.write

    async def cut_short(docs, bases=None, **options):
        if any(d["_id"] == key for d in docs):
            raise Killed()
        return await write(docs, bases, **options)

    importer.store.write = cut_short
    with pytest.raises(Killed):
        await run_pass(importer)


@pytest_twisted.ensureDeferred
async def test_a_copy_another_writer_stores_while_ours_is_planned_does_not_drop_ours(world):
    """Another writer stores the project (at a serial between the copy we read and our
    answer's) just before our pass writes: ours is planned again, not dropped."""
    await run_pass(world.importer(), full=True)
    key, version = next((k, v) for k, _ in world.index.listing()
                        for v in list(world.index.get(k).releases)[:1])
    world.index.yank(key, version, "planned against a copy that changed")
    importer = world.importer()
    write = importer.store.write

    async def another_writer_first(docs, bases=None, **options):
        if any(d["_id"] == key and None in d["release_digests"].values() for d in docs):
            stored = await world.db.get(key)
            await world.db.put({**stored, "last_serial": stored["last_serial"] + 1})
        return await write(docs, bases, **options)

    importer.store.write = another_writer_first
    summary = await run_pass(importer)
    assert (await world.db.get_local(CHECKPOINT))["pending"] == {
        key: world.index.last_serial}, summary
    await run_pass(world.importer())
    await world.settled()
    await assert_matches_simulator(world.read_db, world.index)


@pytest_twisted.ensureDeferred
async def test_a_private_index_is_mirrored_with_the_credentials_in_its_url(world):
    world.resource.control("auth", {"user": "mirror", "password": "s3cret:/@"})
    with pytest.raises(PyPIError, match="HTTP 401 Unauthorized") as refused:
        await run_pass(world.importer(retries=0), full=True)
    assert "s3cret" not in str(refused.value)
    host = world.url.split("//")[1]
    summary = await run_pass(world.importer(url=f"http://mirror:s3cret%3A%2F%40@{host}/"),
                             full=True)
    assert summary.pending == 0, summary.errors
    await world.settled()
    await assert_matches_simulator(world.read_db, world.index)


@pytest_twisted.ensureDeferred
async def test_the_full_import_figures_stop_with_the_full_import(world):
    importer = world.importer()  # one, as the daemon keeps
    await run_pass(importer, full=True)
    assert (importer.status.import_done, importer.status.import_total) == (60, 60)
    world.index.publish(normalize(world.index.dataset.name(3)), "9.0")
    summary = await run_pass(importer)
    assert summary.projects == 1
    assert (importer.status.import_done, importer.status.import_total) == (60, 60)


@pytest_twisted.ensureDeferred
async def test_quarantined_releases_leave_the_mirror_and_come_back(world):
    """PyPI hides a quarantined release from its JSON and Simple APIs (reference §2);
    a project whose only release it is answers 404 and shows no files."""
    await run_pass(world.importer(), full=True)
    several = normalize(world.index.dataset.name(10))  # twenty releases
    alone = normalize(world.index.dataset.name(12))  # one release
    hidden = list(world.index.get(several).releases)[0]
    only = list(world.index.get(alone).releases)[0]

    async def mirrored():  # one pass, then the mirror is PyPI as it is now
        summary = await run_pass(world.importer())
        assert summary.pending == 0, summary.errors
        await world.settled()
        await assert_matches_simulator(world.read_db, world.index)

    world.index.quarantine_release(several, hidden)
    world.index.quarantine_release(alone, only)
    await mirrored()
    project, releases = await stored_project(world.read_db, several)
    assert hidden not in project["versions"] + [r["version"] for r in releases]
    project, releases = await stored_project(world.read_db, alone)
    assert (project["versions"], releases) == ([], [])
    world.index.clear_release_quarantine(several, hidden)
    world.index.clear_release_quarantine(alone, only)
    await mirrored()
    assert hidden in (await stored_project(world.read_db, several))[0]["versions"]
    assert (await stored_project(world.read_db, alone))[0]["versions"] == [only]


def test_a_malformed_per_version_answer_keeps_the_stored_metadata_and_is_said():
    """PyPI matches versions canonically: asked for 1.0, it may answer with 1.0.0's
    metadata. That answer is not taken, and the reason reaches /status."""
    from pypioncouch.sync import _with_own_answers

    release = {"_id": "foo:1.0", "version": "1.0", "files": [], "yanked": False}
    said = []
    taken, refreshed = _with_own_answers(
        "foo", [release], {"1.0": {"info": {"name": "foo", "version": "1.0.0"}}},
        said.append)
    assert (taken, refreshed) == ([release], set())
    assert len(said) == 1 and said[0].startswith("foo 1.0: malformed per-version answer (")
    assert said[0].endswith("); its stored metadata kept")

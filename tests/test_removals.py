"""Removals happen only on PyPI's word about a project, never because a listing lacks
it; a pass that would remove too much removes nothing and says why (issue 11, item 1)."""

import pytest
import pytest_twisted
import treq

from pypioncouch.store import Store
from pypioncouch.checkpoint import CHECKPOINT
from pypioncouch.sync import run_pass
from pypioncouch.testing.dataset import normalize

from .helpers import assert_matches_simulator, stored_project
from .test_web import serve


async def project_ids(db):
    return await Store(db).project_ids()


async def health(url):
    answer = await treq.get(f"{url}/health")
    return answer.code, await answer.json()


@pytest_twisted.ensureDeferred
async def test_listings_cut_short_remove_only_what_pypi_says_is_gone(world):
    """The incident: a full import whose listing held a tenth of the projects, then a
    /simple/ pass whose index held another tenth, emptied the database."""
    w = world(projects=60, seed=31)
    await run_pass(w.importer(), full=True)
    removed = normalize(w.index.dataset.name(40))
    w.index.remove_project(removed)  # one real removal among the missing ones
    w.resource.listing.configure(keep=0.1, start=0.5)
    importer = w.importer()
    summary = await run_pass(importer, full=True)
    assert summary.deleted == 1 and summary.pending == 0, summary
    assert len(await project_ids(w.db)) == 59
    # (the ones asked about by name count in the import's progress: 6 listed, 54 not)
    assert (importer.status.import_done, importer.status.import_total) == (60, 60)
    # A different tenth; meanwhile a project missing from it changed: asking by name
    # brings that change in too.
    w.resource.listing.configure(keep=0.1, start=0.0)
    changed = normalize(w.index.dataset.name(45))
    w.index.publish(changed, "77.0")
    summary = await run_pass(w.importer(changes="simple"))
    assert summary.deleted == 0 and summary.pending == 0, summary
    assert "77.0" in (await w.db.get(changed))["versions"]
    await assert_matches_simulator(w.db, w.index)


@pytest_twisted.ensureDeferred
async def test_a_listing_missing_too_many_projects_removes_nothing_until_it_recovers(world):
    w = world(projects=60, seed=32)
    await run_pass(w.importer(), full=True)
    checkpoint = await w.db.get_local(CHECKPOINT)
    w.resource.listing.configure(keep=0.1)
    importer = w.importer(max_removals=5)
    front, port, url = serve(w.db, status=importer.status)
    try:
        summary = await run_pass(importer, full=True)
        assert summary.deleted == 0 and summary.held == 54, summary
        assert "removed nothing" in str(summary)
        assert importer.pypi.requests == 2  # nobody asked by name: the listing is suspect
        assert len(await project_ids(w.db)) == 60
        # The listing's 6 projects are current; the other 54 may not be: no checkpoint.
        assert (await w.db.get_local(CHECKPOINT))["serial"] == checkpoint["serial"]
        code, body = await health(url)
        assert code == 503
        assert any("lacks 54 of the 60 stored projects" in r and "--confirm-removals" in r
                   for r in body["reasons"]), body
        status = await (await treq.get(f"{url}/status",
                                       headers={"Accept": "application/json"})).json()
        assert status["removals_held"].startswith("the listing from ")
        # The listing recovers: the next pass clears the alarm.
        w.resource.listing.configure(keep=1.0)
        summary = await run_pass(importer, full=True)
        assert summary.held == 0 and importer.status.removals_held is None
        code, body = await health(url)
        assert code == 200, body
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_many_removals_wait_for_an_operator_to_confirm(world):
    w = world(projects=60, seed=33)
    await run_pass(w.importer(), full=True)
    gone = [normalize(w.index.dataset.name(i)) for i in range(20, 30)]
    for key in gone:
        w.index.remove_project(key)
    importer = w.importer(max_removals=5)
    summary = await run_pass(importer)
    assert summary.deleted == 0 and summary.held == 10, summary
    assert "10 projects" in importer.status.removals_held
    assert set(gone) <= await project_ids(w.db)
    pending = (await w.db.get_local(CHECKPOINT))["pending"]
    assert set(pending) == set(gone)  # asked again on every pass until confirmed
    summary = await run_pass(w.importer(max_removals=5))
    assert summary.deleted == 0 and summary.held == 10
    importer = w.importer(max_removals=5, confirm_removals=True)
    summary = await run_pass(importer)
    assert summary.deleted == 10 and summary.held == 0 and summary.pending == 0
    assert importer.status.removals_held is None
    await assert_matches_simulator(w.db, w.index)


def test_the_default_limit_is_a_hundred_or_one_percent():
    from pypioncouch.removals import removal_limit

    assert removal_limit(50, None) == 100
    assert removal_limit(10_000, None) == 100
    assert removal_limit(700_000, None) == 7_000
    assert removal_limit(700_000, 5) == 5
    assert removal_limit(700_000, 0) == 0


@pytest_twisted.ensureDeferred
async def test_a_removal_row_in_the_changelog_removes_behind_a_stale_cdn(world):
    """The changelog's word is enough, even while the CDN still serves the old copy."""
    from twisted.internet import reactor

    w = world(projects=20, seed=34, stale_seconds=600)
    w.index.clock = reactor.seconds
    await run_pass(w.importer(), full=True)
    key = normalize(w.index.dataset.name(7))
    w.index.remove_project(key)
    assert w.index.json_api(key)[0] == 200  # the CDN has not noticed
    summary = await run_pass(w.importer(stale_retries=0))
    assert summary.deleted == 1 and summary.pending == 0, summary.errors
    assert await stored_project(w.db, key) == (None, [])


@pytest_twisted.ensureDeferred
async def test_a_stale_listing_writes_and_removes_nothing(world):
    w = world(projects=30, seed=35)
    await run_pass(w.importer(), full=True)
    w.resource.listing.freeze(w.index)  # a CDN keeps this copy of /simple/
    new = "Published.After"
    w.index.publish(new, "1.0")
    await run_pass(w.importer())  # the changelog is current
    serial = (await w.db.get_local(CHECKPOINT))["serial"]
    assert serial == w.index.last_serial
    for full in (False, True):
        importer = w.importer(changes="simple")
        summary = await run_pass(importer, full=full)
        assert (summary.projects, summary.deleted) == (0, 0), summary
        assert importer.pypi.requests == 1  # the index, and nothing asked from it
        assert (await w.db.get_local(CHECKPOINT))["serial"] == serial
        assert await w.db.get_or_none("published-after") is not None
        assert "older than" in importer.status.last_error
    await assert_matches_simulator(w.db, w.index)


def test_the_command_holds_removals_and_an_operator_confirms(couch_server, db_name):
    import subprocess
    import sys
    from pathlib import Path

    from pypioncouch.testing.dataset import Dataset
    from pypioncouch.testing.pypi import SimulatorProcess

    def run(sim, action, *args):
        done = subprocess.run(
            [str(Path(sys.executable).parent / "pypioncouch"), action, couch_server.url,
             *args, "--pypi", sim.url, "--db", db_name, "--quiet"],
            capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr

    with SimulatorProcess("--projects", "20", "--seed", "36") as sim:
        assert run(sim, "--fullimport")[0] == 0
        for index in (3, 4, 5):
            sim.control("remove_project", name=Dataset(20, 36).name(index))
        code, out = run(sim, "--update", "--max-removals", "2")
        assert code == 4, out
        assert "PyPI says 3 projects are gone, more than the 2 one pass may remove" in out
        code, out = run(sim, "--update", "--max-removals", "2", "--confirm-removals")
        assert code == 0 and ", 3 removed," in out, out
        code, out = run(sim, "--update", "--max-removals", "-1")
        assert code == 2 and "not a number of projects" in out


def test_the_daemon_takes_the_removal_options(monkeypatch):
    from twisted.python import usage

    from pypioncouch.service import Options, makeService

    options = Options()
    options.parseOptions(["--couch", "http://127.0.0.1:9/", "--max-removals", "7",
                          "--listen", "tcp:0:interface=127.0.0.1"])
    sync = makeService(options).getServiceNamed("sync")
    assert (sync.importer.max_removals, sync.importer.confirm_removals) == (7, False)
    monkeypatch.setenv("PYPIONCOUCH_CONFIRM_REMOVALS", "yes")
    options = Options()
    options.parseOptions(["--couch", "http://127.0.0.1:9/"])
    assert options["confirm-removals"] and options["max-removals"] is None
    with pytest.raises(usage.UsageError, match="number of projects"):
        Options().parseOptions(["--couch", "http://127.0.0.1:9/", "--max-removals", "-3"])


@pytest_twisted.ensureDeferred
async def test_quarantined_projects_missing_from_the_index_are_kept_as_they_are(world):
    """PyPI's /simple/ index leaves quarantined projects out: not removals, and not
    counted against the removal limit (PyPI holds more quarantined projects than one
    pass may remove, and the sync would stall behind them)."""
    w = world(projects=20, seed=37)
    await run_pass(w.importer(), full=True)
    keys = [normalize(w.index.dataset.name(n)) for n in (9, 10)]
    for key in keys:
        w.index.quarantine(key)
    await run_pass(w.importer())
    before = [await w.db.get(key) for key in keys]
    assert [doc["status"] for doc in before] == ["quarantined"] * 2
    for number in range(2):
        w.index.publish("Published.Meanwhile", f"1.{number}")
        summary = await run_pass(w.importer(changes="simple", max_removals=1))
        assert (summary.deleted, summary.projects, summary.held) == (0, 1, 0), summary
    assert [(await w.db.get(key))["_rev"] for key in keys] == [d["_rev"] for d in before]
    assert (await w.db.get_local(CHECKPOINT))["serial"] == w.index.last_serial
    await assert_matches_simulator(w.db, w.index)


@pytest_twisted.ensureDeferred
async def test_a_project_quarantined_since_it_was_stored_leaves_the_index_whole(world):
    """Followed from the /simple/ index, a project quarantined since it was stored
    leaves the index: asked by name, it is stored as quarantined, and the listing is
    not taken for an incomplete one (which held the checkpoint back)."""
    w = world(projects=20, seed=37)
    await run_pass(w.importer(), full=True)
    key = normalize(w.index.dataset.name(9))
    w.index.quarantine(key)
    summary = await run_pass(w.importer(changes="simple"))
    assert summary.incomplete is None and summary.deleted == 0, summary
    assert (await w.db.get(key))["status"] == "quarantined"
    assert (await w.db.get_local(CHECKPOINT))["serial"] == w.index.last_serial
    await assert_matches_simulator(w.db, w.index)


@pytest_twisted.ensureDeferred
async def test_a_pending_project_the_index_lacks_is_asked_about_once(world):
    """Followed from the /simple/ index, a project pending from an earlier pass (a
    CDN's stale copy) and removed since is missing from the index: asked about by
    name once, and counted as one removal (it was asked again as pending, and
    counted twice, against --max-removals too)."""
    from twisted.internet import reactor

    w = world(projects=20, seed=37)
    await run_pass(w.importer(), full=True)
    key = normalize(w.index.dataset.name(9))
    w.index.clock = reactor.seconds
    w.index.stale_seconds = 600
    w.index.publish(key, "9.9")  # (and the CDN keeps the copy before it)
    summary = await run_pass(w.importer(stale_retries=0))
    assert summary.pending == 1, summary
    w.index.stale_seconds = 0
    w.index._stale.clear()  # (the CDN catches up)
    w.index.remove_project(key)
    importer = w.importer(changes="simple", max_removals=1)
    asked, ask = [], importer.pypi.project

    async def project(name, *args, **options):
        asked.append(normalize(name))
        return await ask(name, *args, **options)
    importer.pypi.project = project
    summary = await run_pass(importer)
    assert (summary.deleted, summary.held, summary.pending) == (1, 0, 0), summary
    assert asked == [key]
    assert await w.db.get_or_none(key) is None
    assert (await w.db.get_local(CHECKPOINT))["serial"] == w.index.last_serial
    await assert_matches_simulator(w.db, w.index)


@pytest_twisted.ensureDeferred
async def test_a_listing_that_hides_live_projects_does_not_move_the_checkpoint(world):
    """A cut /simple/ index hides stored projects (asked about: alive) and, unseen, a
    project new since the checkpoint: passing it would lose that project for good."""
    w = world(projects=30, seed=41)
    await run_pass(w.importer(), full=True)
    before = (await w.db.get_local(CHECKPOINT))["serial"]
    w.index.publish("zzz-hidden-new", "1.0")  # sorts last: outside the kept slice
    w.resource.listing.configure(keep=0.5, start=0.0)
    summary = await run_pass(w.importer(changes="simple"))
    assert summary.deleted == 0 and await w.db.get_or_none("zzz-hidden-new") is None
    assert (await w.db.get_local(CHECKPOINT))["serial"] == before
    assert "it is incomplete, so the checkpoint stays until a listing is whole" in \
        summary.incomplete and summary.incomplete in str(summary)
    w.resource.listing.configure(keep=1.0)
    await run_pass(w.importer(changes="simple"))
    assert (await w.db.get("zzz-hidden-new"))["versions"] == ["1.0"]
    await assert_matches_simulator(w.db, w.index)


@pytest_twisted.ensureDeferred
async def test_the_daemon_notes_passes_that_keep_the_checkpoint_still(world):
    """(what /health judges a sync by when no pass can trust the listing)"""
    from pypioncouch.service import SyncService

    from .helpers import sleep

    async def until(condition):
        for _ in range(200):
            if condition():
                return True
            await sleep(0.05)
        return False

    w = world(projects=30, seed=41)
    await run_pass(w.importer(), full=True)
    w.resource.listing.configure(keep=0.5, start=0.0)
    importer = w.importer(changes="simple")
    service = SyncService(importer, interval=0.2)
    _, port, url = serve(w.db, status=importer.status)
    service.startService()
    try:
        assert await until(lambda: importer.status.held_since is not None)
        status = await (await treq.get(f"{url}/status",
                                       headers={"Accept": "application/json"})).json()
        assert "it is incomplete, so the checkpoint stays" in status["checkpoint_held"]
        assert "Checkpoint held" in await (await treq.get(f"{url}/status")).text()
        w.resource.listing.configure(keep=1.0)
        assert await until(lambda: importer.status.held_since is None)
    finally:
        await service.stopService()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_daemons_confirmation_confirms_its_first_pass_only(world):
    """Left in the unit (or PYPIONCOUCH_CONFIRM_REMOVALS in its environment file), the
    flag would let any number of removals through for as long as the daemon runs."""
    from twisted.logger import formatEvent

    from pypioncouch.service import SyncService

    from .helpers import logged, sleep

    w = world(projects=30, seed=42)
    await run_pass(w.importer(), full=True)
    first = [normalize(w.index.dataset.name(i)) for i in range(3, 6)]
    for key in first:
        w.index.remove_project(key)
    assert (await run_pass(w.importer(max_removals=2))).held == 3
    importer = w.importer(max_removals=2, confirm_removals=True)
    service = SyncService(importer, interval=0.2)
    with logged() as events:
        service.startService()
        try:
            for _ in range(200):
                if not importer.confirm_removals:
                    break
                await sleep(0.05)
            assert not set(first) & await project_ids(w.db)
            assert any("--confirm-removals confirmed this pass (3 projects removed); "
                       "later passes hold removals past --max-removals again" in line
                       for line in map(formatEvent, events))
            later = [normalize(w.index.dataset.name(i)) for i in range(10, 13)]
            for key in later:
                w.index.remove_project(key)
            for _ in range(200):
                if importer.status.removals_held:
                    break
                await sleep(0.05)
            assert "PyPI says 3 projects are gone" in importer.status.removals_held
            assert set(later) <= await project_ids(w.db)
        finally:
            await service.stopService()


def test_a_commands_couchdb_url_may_come_from_the_environment(couch_server, db_name):
    """Off the command line, which ps shows to every user (as for the daemon)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from pypioncouch.testing.pypi import SimulatorProcess

    command = [str(Path(sys.executable).parent / "pypioncouch"), "--fullimport"]
    with SimulatorProcess("--projects", "3", "--seed", "36") as sim:
        options = ["--pypi", sim.url, "--db", db_name, "--quiet"]
        bare = {k: v for k, v in os.environ.items() if k != "PYPIONCOUCH_COUCH"}
        done = subprocess.run(command + options, capture_output=True, text=True,
                              timeout=120, env=bare)
        assert done.returncode == 2
        assert done.stderr.splitlines()[-1].endswith(
            "error: --fullimport without a URL takes it from PYPIONCOUCH_COUCH, which is "
            "not set")
        done = subprocess.run(command + options, capture_output=True, text=True, timeout=120,
                              env={**bare, "PYPIONCOUCH_COUCH": couch_server.url})
        assert done.returncode == 0, done.stderr
        assert "3 projects" in done.stdout, done.stdout
        # With the daemon's environment file loaded, its database and index too: an
        # update run by hand must not go to pypi.org and a database named pypi.
        daemons = {**bare, "PYPIONCOUCH_COUCH": couch_server.url, "PYPIONCOUCH_DB": db_name,
                   "PYPIONCOUCH_PYPI": sim.url}
        update = [command[0], "--update", "--quiet"]
        done = subprocess.run(update, capture_output=True, text=True, timeout=120,
                              env=daemons)
        assert done.returncode == 0, done.stderr
        # (in the database the import filled: an update, nothing to write; another
        # database would have been a full import of the three)
        assert done.stdout.startswith("update: 0 projects (0 releases) written"), done.stdout
        done = subprocess.run(update, capture_output=True, text=True, timeout=120,
                              env={**daemons, "PYPIONCOUCH_SOURCE": "html"})
        assert done.returncode == 2
        assert done.stderr.splitlines()[-1].endswith(
            "error: PYPIONCOUCH_SOURCE='html': choose from json, xmlrpc")


@pytest_twisted.ensureDeferred
async def test_an_empty_listing_is_not_taken_for_an_empty_pypi_on_a_first_import(world):
    """A proxy answering the listing with nothing, the serial PyPI's: a first import
    that believed it would set the checkpoint, and the mirror would never hold the
    projects that do not change again."""
    w = world(projects=12, seed=33)
    w.resource.listing.configure(keep=0.0)
    importer = w.importer()
    summary = await run_pass(importer)
    assert await w.db.get_local(CHECKPOINT) is None
    assert summary.incomplete == importer.status.last_sync_error == (
        f"PyPI's listing named no project, though its serial is {w.index.last_serial}: "
        "not taken as the truth; the next pass imports again")
    w.resource.listing.configure(keep=1.0)
    await run_pass(w.importer())
    assert (await w.db.get_local(CHECKPOINT))["serial"] == w.index.last_serial
    await assert_matches_simulator(w.db, w.index)

"""The status sweep: archived projects (PEP 792), which only their Simple pages say."""

import pytest
import pytest_twisted
import treq

from pypioncouch import couchapp
from pypioncouch.status import SyncStatus
from pypioncouch.status_sweep import POSITION, StatusSweep
from pypioncouch.sync import run_pass
from pypioncouch.testing.dataset import normalize

from .helpers import sleep
from .test_web import serve

pytestmark = pytest.mark.cluster


def sweep_of(world, status=None):
    return StatusSweep(world.db, world.importer().pypi, status or SyncStatus(), rate=100.0)


async def written_by_a_walk(world) -> int:
    """Walk through every stored project; how many statuses it wrote."""
    status = SyncStatus()
    assert await sweep_of(world, status).walk()
    return status.status_sweep.changed


async def view_shows(world, statuses):
    """Wait until the catalog view (what a walk reads) says ``{key: status}``: on a
    cluster, a copy may answer before a write reached it."""
    for _ in range(200):
        rows = dict(await couchapp.project_statuses(world.db, None, 1000))
        if all(rows.get(key) == status for key, status in statuses.items()):
            return
        await sleep(0.05)
    raise AssertionError(f"the view says {rows}, not {statuses}")


async def served_status(url, key):
    """The status our Simple API says, in JSON and in HTML."""
    page = await (await treq.get(f"{url}/simple/{key}/", headers={
        "Accept": "application/vnd.pypi.simple.v1+json"})).json()
    html = await (await treq.get(f"{url}/simple/{key}/")).text()
    return page["project-status"]["status"], html.split(
        '<meta name="pypi:project-status" content="')[1].split('"')[0]


@pytest_twisted.ensureDeferred
async def test_an_archived_project_is_served_as_archived_and_the_sync_keeps_it(world):
    w = world(projects=12, seed=3)
    await run_pass(w.importer(), full=True)
    key = normalize(w.index.dataset.name(2))
    w.index.archive(key)  # (no changelog row, no serial: the sync cannot know)
    await run_pass(w.importer())
    await w.settled()
    await view_shows(w, {key: "active"})
    status = SyncStatus()
    assert await sweep_of(w, status).walk()  # (to the end)
    assert (status.status_sweep.changed, status.status_sweep.walks) == (1, 1)
    assert status.status_sweep.checked == 12
    _, port, url = serve(w.db, status=status)
    try:
        page = await (await treq.get(f"{url}/status")).text()
        assert "12 Simple pages read, 1 projects' statuses written anew, 1 walks done" in page
    finally:
        await port.stopListening()
    _, port, url = serve(w.db, syncing=False)
    try:
        await w.settled()
        assert await served_status(url, key) == ("archived", "archived")
        # A change the changelog names (a role): the JSON API's answer says no status,
        # the one stored stays.
        w.index.add_role(key, "Maintainer", "glyph")
        assert (await run_pass(w.importer())).projects == 1
        await w.settled()
        assert (await w.db.get(key))["status"] == "archived"
        w.index.unarchive(key)
        await view_shows(w, {key: "archived"})
        assert await written_by_a_walk(w) == 1
        await w.settled()
        assert await served_status(url, key) == ("active", "active")
        await view_shows(w, {key: "active"})
        assert await written_by_a_walk(w) == 0  # (nothing new: nothing written)
        # Archived again; an upload after (PyPI takes none while archived) says it
        # is not: the sync does not keep the status the walk wrote.
        w.index.archive(key)
        await view_shows(w, {key: "active"})
        assert await written_by_a_walk(w) == 1
        w.index.unarchive(key)
        w.index.publish(key, "77.0")
        await run_pass(w.importer())
        await w.settled()
        assert await served_status(url, key) == ("active", "active")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_archive_right_after_an_upload_survives_a_sync_that_was_behind(world):
    """The maintainer uploads a last release, then archives; the sweep reads the
    project archived before the sync gets to the upload (behind, catching up). The
    upload is not after the archive: the sync kept "active" for ~8 days at PyPI's size,
    until the sweep came back."""
    w = world(projects=8, seed=5)
    await run_pass(w.importer(), full=True)
    key = normalize(w.index.dataset.name(3))
    w.index.publish(key, "99.0")
    w.index.archive(key)
    assert await written_by_a_walk(w) == 1  # (the sweep first: the sync is behind)
    await w.settled()
    assert (await w.db.get(key))["status"] == "archived"
    w.index.add_role(key, "Maintainer", "someone")  # (a later row, no upload)
    assert (await run_pass(w.importer())).projects == 1  # (the upload, the role)
    await w.settled()
    stored = await w.db.get(key)
    assert (stored["status"], stored["versions"][-1]) == ("archived", "99.0")
    # Unarchived, and an upload after what the sweep read: no longer archived.
    w.index.unarchive(key)
    w.index.publish(key, "100.0")
    await run_pass(w.importer())
    await w.settled()
    assert (await w.db.get(key))["status"] == "active"


@pytest_twisted.ensureDeferred
async def test_a_walk_goes_on_where_the_last_stopped_and_leaves_quarantine_alone(world):
    w = world(projects=10, seed=4)
    await run_pass(w.importer(), full=True)
    keys = sorted(normalize(w.index.dataset.name(i)) for i in range(10))
    w.index.quarantine(keys[1])
    await run_pass(w.importer())
    await w.settled()
    await view_shows(w, {keys[1]: "quarantined"})
    for key in keys:
        if key != keys[1]:
            w.index.archive(key)
    first = SyncStatus()
    assert not await sweep_of(w, first).walk(limit=4)  # (not to the end)
    assert (first.status_sweep.checked, first.status_sweep.changed) == (3, 3)  # (not
    assert first.status_sweep.walks == 0  # the quarantined one)
    assert (await w.db.get_local(POSITION))["after"] == keys[3]
    # A restart: the next walk goes on after keys[3], to the end, then starts over.
    then = SyncStatus()
    assert await sweep_of(w, then).walk()
    assert (then.status_sweep.checked, then.status_sweep.changed) == (6, 6)
    assert then.status_sweep.walks == 1
    assert (await w.db.get_local(POSITION))["after"] is None
    await w.settled()
    stored = {key: (await w.db.get(key))["status"] for key in keys}
    assert stored == {key: "quarantined" if key == keys[1] else "archived" for key in keys}


def test_the_daemon_walks_for_statuses_unless_told_not_to():
    from twisted.python import usage

    from pypioncouch.service import Options, makeService

    def services(*args):
        options = Options()
        options.parseOptions(["--couch", "http://127.0.0.1:5984/", *args])
        return {service.name for service in makeService(options)}

    assert "status-sweep" in services()
    assert "status-sweep" not in services("--status-rate", "0")
    assert "status-sweep" not in services("--no-sync")
    with pytest.raises(usage.UsageError, match="--status-rate must be"):
        Options().parseOptions(["--couch", "http://127.0.0.1:5984/", "--status-rate", "-1"])


def test_a_status_the_walk_wrote_meanwhile_is_no_conflict_for_the_sync():
    """The sync rewrites a project it read as active; the walk wrote archived since:
    the same copy but for that, so the sync's write goes on, and keeps archived."""
    from pypioncouch.store import keep_status, same_project

    base = {"last_serial": 7, "release_digests": {"1.0": ["a", "b"]}, "versions": ["1.0"],
            "status": "active"}
    stored = {**base, "status": "archived", "_rev": "3-x"}
    assert same_project(stored, base)
    assert not same_project({**stored, "status": "quarantined"}, base)
    assert not same_project({**stored, "last_serial": 8}, base)
    rewritten = {**base, "summary": "new"}
    keep_status(rewritten, stored, base)
    assert rewritten["status"] == "archived"
    chosen = {**base, "status": "quarantined"}  # (the plan's own change: kept)
    keep_status(chosen, stored, base)
    assert chosen["status"] == "quarantined"


def test_only_a_status_the_json_api_could_not_say_is_taken_from_the_stored_copy():
    """An upload says the project is not archived; an empty project's status is its
    Simple page's: those are written as they are, not the one stored meanwhile."""
    from pypioncouch.pypi import ProjectAnswer
    from pypioncouch.sync import Work, _status_from_stored

    plans = [(Work("a", "A", 5), None, ProjectAnswer("a", "project")),
             (Work("b", "B", 5, uploaded=5), None, ProjectAnswer("b", "project")),
             (Work("c", "C", 5), None, ProjectAnswer("c", "empty", status="archived"))]
    assert _status_from_stored([(*plan, [], 0) for plan in plans]) == {"a"}

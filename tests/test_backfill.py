"""Per-version JSON (``/pypi/<p>/<v>/json``): each release's own metadata, never
another's. The oracle is the simulator's own per-version answer."""

import json

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, task
from twisted.python import usage

from pypioncouch import couchapp, model
from pypioncouch.backfill import Backfill, Busy, Pacer, backfill_client
from pypioncouch.couch import BadResponse
from pypioncouch.pypi import PyPI, StaleAnswer
from pypioncouch.status import BackfillProgress, SyncStatus
from pypioncouch.sync import run_pass
from pypioncouch.testing.dataset import normalize

from .helpers import World, sleep, stored_project
from .test_web import serve, serve_cached


@pytest.fixture
def world(couch_server, db_name):
    world = World(couch_server.url, db_name, projects=120, seed=21)
    yield world
    world.close()


@pytest.fixture
def small_world(couch_server, db_name):
    world = World(couch_server.url, db_name, projects=30, seed=21)
    yield world
    world.close()


async def each(items, check, parallel=8):
    """``await check(item)`` for every item, ``parallel`` at a time."""
    slots = defer.DeferredSemaphore(parallel)
    await defer.gatherResults([slots.run(lambda i=item: defer.ensureDeferred(check(i)))
                               for item in items], consumeErrors=True)


def releases_of(index):
    """``[(key, version, is the latest)]`` of every release the simulator shows."""
    found = []
    for key, _ in index.listing():
        project = index.get(key)
        latest = index.latest(project)
        for version in index.visible_releases(project):
            found.append((key, version, version == latest.version))
    return found


async def oracle(world, key, version):
    answer = await treq.get(f"{world.url}/pypi/{key}/{version}/json")
    assert answer.code == 200
    return await answer.content()


async def ours(url, key, version):
    answer = await treq.get(f"{url}/pypi/{key}/{version}/json")
    return answer.code, await answer.content()


def backfill_of(world, progress=None, **options):
    pypi = PyPI(world.url, backoff=0.05)
    return Backfill(world.db, pypi, progress or BackfillProgress(),
                    **{"rate": 1000.0, **options})


@pytest_twisted.ensureDeferred
async def test_a_mirror_says_why_it_has_no_answer_until_the_backfill_fills_it(world):
    await run_pass(world.importer(), full=True)
    releases = releases_of(world.index)
    older = [(k, v) for k, v, latest in releases if not latest]
    assert len(older) > 300  # the simulator's releases tell their metadata apart
    _, port, url = serve(world.db, syncing=False)
    try:
        async def before(release):
            key, version, latest = release
            code, body = await ours(url, key, version)
            if latest:  # stored when it was PyPI's latest
                assert (code, body) == (200, await oracle(world, key, version)), (key, version)
            else:
                assert code == 503, (key, version, body[:300])
                message = json.loads(body)["message"]
                assert message.startswith(f"this mirror has not stored the "
                                          f"metadata of {key} {version} yet"), message

        async def after(release):
            key, version, _ = release
            assert await ours(url, key, version) == (200, await oracle(world, key, version)), \
                (key, version)

        await each(releases, before)
        backfill = backfill_of(world)
        filled = await backfill.run_pass()
        assert filled == len(older)
        assert backfill.progress.missing == 0 and backfill.progress.passes == 1
        await each(releases, after)
    finally:
        await port.stopListening()
    _, stored = await stored_project(world.db, older[0][0])
    by_version = {doc["version"]: doc for doc in stored}
    assert by_version[older[0][1]]["info_source"] == "version"


@pytest_twisted.ensureDeferred
async def test_a_syncing_front_fetches_a_releases_own_metadata_on_the_spot(small_world):
    world = small_world
    await run_pass(world.importer(), full=True)
    older = [(k, v) for k, v, latest in releases_of(world.index) if not latest]
    status = SyncStatus()
    pypi = PyPI(world.url, backoff=0.05)
    _, port, url = serve(world.db, status=status, pypi=pypi)
    try:
        for key, version in older[:60]:
            assert await ours(url, key, version) == (200, await oracle(world, key, version)), \
                (key, version)
        assert status.backfill.on_demand == 60
        asked = pypi.requests
        for key, version in older[:60]:  # stored: PyPI is not asked again
            assert await ours(url, key, version) == (200, await oracle(world, key, version))
        assert pypi.requests == asked
        _, stored = await stored_project(world.db, older[0][0])
        doc = next(d for d in stored if d["version"] == older[0][1])
        truth = json.loads(await oracle(world, *older[0]))["info"]
        assert doc["info"] == truth and doc["info_source"] == "version"
        # The backfill takes the rest, not those; /status shows how far it got.
        assert await backfill_of(world, status.backfill).run_pass() == len(older) - 60
        # A release PyPI removed meanwhile: PyPI's word, not another release's metadata.
        key, version = older[-1]
        gone = next((k, v) for k, v in reversed(older) if k != key or v != version)
        await _forget_info(world.db, *gone)
        world.index.remove_release(gone[0], gone[1])
        code, body = await ours(url, *gone)
        assert code == 404
        assert json.loads(body)["message"] == \
            f"Not Found: PyPI does not know {gone[0]} {gone[1]} (any more)"
        data = await (await treq.get(f"{url}/status", headers={"Accept": "application/json"})
                      ).json()
        progress = data["backfill"]
        assert (progress["state"], progress["missing"], progress["filled"],
                progress["on_demand"], progress["passes"], progress["errors"]) == \
            ("idle", 0, len(older) - 60, 60, 1, 0)
        page = await (await treq.get(f"{url}/status")).text()
        assert (f"backfill idle:\n  0 releases without their own metadata, "
                f"{len(older) - 60} filled") in page
        assert "60 fetched on demand" in page
    finally:
        await port.stopListening()
    # PyPI does not answer: a clear 503, never a made-up answer.
    await _forget_info(world.db, *older[0])
    _, port, url = serve(world.db, pypi=PyPI("http://127.0.0.1:9/", retries=0))
    try:
        code, body = await ours(url, *older[0])
        assert code == 503
        message = json.loads(body)["message"]
        assert message.startswith(f"the metadata of {older[0][0]} {older[0][1]} is not "
                                  "stored yet, and PyPI's answer failed: "), message
    finally:
        await port.stopListening()
    # PyPI asks to come back later than a client would wait: the client is told when.
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class SlowDown(Resource):
        isLeaf = True

        def render(self, request):
            request.setResponseCode(429)
            request.setHeader("Retry-After", "120")
            return b"slow down"

    busy = reactor.listenTCP(0, Site(SlowDown()), interface="127.0.0.1")
    pypi = PyPI(f"http://127.0.0.1:{busy.getHost().port}/", retries=1, max_retry_after=5.0)
    _, port, url = serve(world.db, pypi=pypi)
    try:
        answer = await treq.get(f"{url}/pypi/{older[0][0]}/{older[0][1]}/json")
        assert answer.code == 503 and answer.headers.getRawHeaders("Retry-After") == ["120"]
        assert "HTTP 429 Too Many Requests" in (await answer.json())["message"]
        assert pypi.requests == 1  # not asked again after two minutes
    finally:
        await port.stopListening()
        await busy.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_front_holds_the_latest_description_only_and_answers_every_release(
        small_world):
    """Once every release carries its own description, a front reading a project of
    many large ones holds the latest's only (not 40 x 60 KB, times three parsed), and
    still answers each release's JSON with its own, byte for byte, then from its cache."""
    world = small_world
    for n in range(40):
        world.index.publish("Wordy", f"1.{n}", description=f"{n} " + "wordy text " * 6000,
                            license=f"{n} " + "licence text " * 500)
    await run_pass(world.importer(), full=True)
    await backfill_of(world).run_pass()
    front, port, url, follower = await serve_cached(world.db, syncing=False)
    whole_reads = []
    read_whole = front.store.release

    def counted(*args):
        whole_reads.append(args)
        return read_whole(*args)

    front.store.release = counted
    try:
        for path in ("pypi/wordy/json", "simple/wordy/", "pypi/wordy/1.3/json",
                     "pypi/wordy/1.39/json", "pypi/wordy/1.0/json", "pypi/wordy/1.3/json"):
            mine = await treq.get(f"{url}/{path}")
            theirs = await treq.get(f"{world.url}/{path}")
            assert (mine.code, await mine.content()) == (200, await theirs.content()), path
        entry = front.cache.get("wordy")
        assert entry is not None and len(entry.releases) == 40
        assert entry.json_bytes < 400_000  # (the releases hold 2.8 MB of long texts)
        assert front.cache.hits >= 2 + 1  # the Simple page and 1.3's second answer
        assert len(whole_reads) == 3  # 1.3 (once), 1.39 (the latest: read with the
        # project) and 1.0
        crowd = await defer.gatherResults([defer.ensureDeferred(ours(url, "wordy", "1.7"))
                                           for _ in range(6)])
        assert set(crowd) == {(200, await oracle(world, "wordy", "1.7"))}
        assert len(whole_reads) == 4  # a crowd asking for one release reads it once
        page = await treq.get(f"{url}/browse/project/wordy")
        assert "39 wordy text" in (await page.text())  # the latest's, rendered
    finally:
        await follower.stopService()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_metadata_found_stored_is_given_whole_with_a_description_kept_apart(couch,
                                                                                   db_name):
    """The front asks for a release's own metadata and finds it stored meanwhile (the
    backfill was faster): the answer carries its description, kept apart as an
    attachment, not the info without it."""
    from pypioncouch.backfill import OwnInfo
    from pypioncouch.store import Store

    db = couch.database(db_name)
    await db.ensure()
    text = "long " * 1_000_000
    await Store(db).write([model.release_document(
        "big", "Big", "1.0", [], {"name": "Big", "version": "1.0", "description": text})])
    found, stored = await OwnInfo(db, PyPI("http://127.0.0.1:9/")).fill("big", "1.0")
    assert stored is False and found["info"]["description"] == text


@pytest.mark.parametrize("kind, retry_after, held", [
    ("429", 3600, 3600), ("429", 60, 60), ("503", 1, 30)])
@pytest_twisted.ensureDeferred
async def test_pypi_failing_holds_the_backfill_instead_of_asking_release_after_release(
        small_world, kind, retry_after, held):
    """PyPI says to come back in an hour or a minute (or fails on): the backfill, and
    the front's on-the-spot requests with it, wait that long (30 s, doubling, for
    failures without a word), and say so; they do not go on asking release after
    release, nor wait a short Retry-After inside the client while the front asks."""
    from pypioncouch.testing.server import FaultPlan

    world = small_world
    await run_pass(world.importer(), full=True)
    older = [(k, v) for k, v, latest in releases_of(world.index) if not latest]
    world.resource.faults = FaultPlan(1.0, kinds=(kind,), retry_after=retry_after)
    progress = BackfillProgress()
    pypi = backfill_client(world.url, backoff=0.01, retries=2)
    backfill = Backfill(world.db, pypi, progress, rate=50.0)
    running = defer.ensureDeferred(backfill.run_pass())
    running.addErrback(lambda failure: failure.trap(defer.CancelledError))
    _, port, url = serve(world.db, status=SyncStatus(), pypi=pypi, pacer=backfill.pacer)
    try:
        for _ in range(200):
            if progress.errors:
                break
            await sleep(0.05)
        await sleep(0.5)  # (fills begun before the hold end)
        asked = world.resource.faults.requests
        assert 1 <= asked <= backfill.concurrency * 3  # (the fills begun, and their tries)
        left = backfill.pacer._held_until - reactor.seconds()
        assert held - 5 <= left <= held
        answer = await treq.get(f"{url}/pypi/{older[0][0]}/{older[0][1]}/json")
        assert answer.code == 503
        assert held - 5 <= int(answer.headers.getRawHeaders("retry-after")[0]) <= held
        assert "PyPI failed a moment ago" in (await answer.json())["message"]
        await sleep(1.0)
        assert world.resource.faults.requests == asked  # nothing more
    finally:
        running.cancel()
        await port.stopListening()
    world.resource.faults = FaultPlan(0.0)
    backfill.pacer._next, backfill.pacer._held_until = None, 0.0  # (an hour later)
    assert await backfill.run_pass() > 0 and backfill.own._hold == 0


@pytest_twisted.ensureDeferred
async def test_a_release_pypi_does_not_know_is_not_asked_about_at_every_pass(small_world):
    """(Every 10 minutes for ever, for each such release.) An hour later, then after
    twice as long each time."""
    world = small_world
    await run_pass(world.importer(), full=True)
    older = [(k, v) for k, v, latest in releases_of(world.index) if not latest]
    backfill = backfill_of(world)
    await backfill.run_pass()
    key, version = older[0]
    await _forget_info(world.db, key, version)
    world.index.remove_release(key, version)  # (the sync has not seen it yet)
    asked = world.resource.faults.requests
    assert await backfill.run_pass() == 0 and backfill.progress.not_found == 1
    assert world.resource.faults.requests == asked + 1
    await backfill.run_pass()
    assert world.resource.faults.requests == asked + 1  # not again in this hour
    backfill._unanswered[f"{key}:{version}"] = (3600.0, 0.0)  # (an hour later)
    await backfill.run_pass()
    assert world.resource.faults.requests == asked + 2
    assert backfill._unanswered[f"{key}:{version}"][0] == 7200.0


async def _forget_info(db, key, version):
    doc = await db.get(model.release_id(key, version))
    for field in ("info", "info_source", "requires_dist"):
        doc.pop(field, None)
    await db.put(doc)


@pytest_twisted.ensureDeferred
async def test_the_backfill_resumes_where_it_stopped(small_world):
    world = small_world
    await run_pass(world.importer(), full=True)
    missing = await couchapp.count(world.db, "needs-info")
    first = backfill_of(world, page=7)
    assert await first.run_pass(limit=25) == 25
    assert first.progress.missing == missing - 25 and first.progress.passes == 0
    second = backfill_of(world, page=7)
    assert await second.run_pass() == missing - 25 > 25
    assert second.own.pypi.requests == missing - 25  # nothing filled is asked again
    assert await couchapp.count(world.db, "needs-info") == 0


@pytest_twisted.ensureDeferred
async def test_releases_published_together_and_later_changes_keep_their_own_metadata(
        small_world):
    world = small_world
    await run_pass(world.importer(), full=True)
    await backfill_of(world).run_pass()
    key = normalize(world.index.dataset.name(12))
    world.index.publish(key, "50.0", summary="fifty", requires_dist=["attrs"])
    world.index.publish(key, "51.0", summary="fifty-one")
    await run_pass(world.importer())
    _, stored = await stored_project(world.db, key)
    by_version = {doc["version"]: doc for doc in stored}
    assert by_version["51.0"]["info_source"] == "latest"  # PyPI's latest when synced
    assert "info" not in by_version["50.0"]  # never the latest while we looked
    assert await backfill_of(world).run_pass() == 1
    # A yank rewrites an older release's document: its own metadata stays, and the
    # answer carries the yank.
    older = next(v for v in world.index.get(key).releases if v not in ("50.0", "51.0"))
    world.index.yank(key, older, "broken")
    world.index.yank(key, "50.0")
    await run_pass(world.importer())
    _, port, url = serve(world.db, syncing=False)
    try:
        for version in (older, "50.0", "51.0"):
            assert await ours(url, key, version) == (200, await oracle(world, key, version))
    finally:
        await port.stopListening()
    _, stored = await stored_project(world.db, key)
    by_version = {doc["version"]: doc for doc in stored}
    assert by_version["50.0"]["info"]["summary"] == "fifty"
    assert by_version["50.0"]["info_source"] == "version"


def asked_per_version(importer):
    """The versions the importer's sync asks PyPI's per-version answers of."""
    asked, ask = [], importer.pypi.release

    async def release(name, version, **options):
        asked.append(version)
        return await ask(name, version, **options)
    importer.pypi.release = release
    return asked


@pytest_twisted.ensureDeferred
async def test_a_yank_of_a_release_without_files_is_read_with_changes_from_the_simple_index(
        small_world):
    """The Simple index says a project changed, not which release, and the project's
    answer shows nothing for a release without files: such a release stayed "not
    yanked" for good (the backfill asks only for releases without their own
    metadata). When the answer shows no other change, those stored releases are asked
    about, and only one whose flags changed is written; a change the answer shows
    asks nothing."""
    world = small_world
    await run_pass(world.importer(), full=True)
    await backfill_of(world).run_pass()
    key = normalize(world.index.dataset.name(2))  # (the "versions" showcase)
    project = world.index.get(key)
    fileless = sorted(v for v, r in project.releases.items() if not r.files
                      and v != world.index.latest(project).version)
    assert "2.0.0.dev1" in fileless

    async def stored_releases():
        _, stored = await stored_project(world.db, key)
        return {d["version"]: d for d in stored}

    before = await stored_releases()
    assert before["2.0.0.dev1"]["yanked"] is False
    world.index.yank(key, "2.0.0.dev1", "never meant to be")
    importer = world.importer(changes="simple")
    asked = asked_per_version(importer)
    summary = await run_pass(importer)
    assert summary.projects == 1 and summary.pending == 0, summary.errors
    assert sorted(asked) == fileless
    after = await stored_releases()
    assert (after["2.0.0.dev1"]["yanked"], after["2.0.0.dev1"]["yanked_reason"]) == \
        (True, "never meant to be")
    assert {v: d["_rev"] for v, d in after.items() if v != "2.0.0.dev1"} == \
        {v: d["_rev"] for v, d in before.items() if v != "2.0.0.dev1"}  # (only it written)

    world.index.add_role(key, "Maintainer", "someone")  # (a change no release shows)
    importer = world.importer(changes="simple")
    asked = asked_per_version(importer)
    summary = await run_pass(importer)
    assert summary.projects == 1 and sorted(asked) == fileless
    assert {v: d["_rev"] for v, d in (await stored_releases()).items()} == \
        {v: d["_rev"] for v, d in after.items()}  # (nothing to write)

    world.index.unyank(key, "2.0.0.dev1")
    importer = world.importer(changes="simple")
    read = importer.store.db.bulk_get

    async def unreadable(ids, **options):  # (a cluster's shard that did not answer)
        if any(":" in docid for docid in ids):
            raise BadResponse("_bulk_get could not read it: timeout", url="")
        return await read(ids, **options)
    importer.store.db.bulk_get = unreadable
    try:
        with pytest.raises(BadResponse):  # (the pass's trouble, not a project's bug)
            await run_pass(importer)
    finally:
        importer.store.db.bulk_get = read  # (world.db: every importer's)
    assert (await stored_releases())["2.0.0.dev1"]["yanked"] is True
    await run_pass(world.importer(changes="simple"))
    assert (await stored_releases())["2.0.0.dev1"]["yanked"] is False

    world.index.publish(key, "9.0")  # (a change the answer shows: nothing asked)
    importer = world.importer(changes="simple")
    asked = asked_per_version(importer)
    summary = await run_pass(importer)
    assert summary.projects == 1 and asked == []
    assert "9.0" in await stored_releases()


@pytest_twisted.ensureDeferred
async def test_a_yank_that_shows_in_the_answer_still_reaches_a_release_without_files(
        small_world):
    """With changes from the Simple index, a change the project's answer shows asks
    no release's own answer: but a yank can show there. The latest release, without
    files, yanked: PyPI's latest is another one now, and the yanked one's flags came
    from its time as the latest (the new latest's info shows as a change). A
    release that lost its last file: its flags came
    from its files. Both are asked about, and stored as PyPI says them."""
    world = small_world
    await run_pass(world.importer(), full=True)
    key = normalize(world.index.dataset.name(4))
    world.index.publish(key, "39.0", files=1)  # (never the latest as stored)
    world.index.publish(key, "40.0", files=0)
    await run_pass(world.importer(changes="simple"))
    world.index.yank(key, "40.0", "not this one")
    summary = await run_pass(world.importer(changes="simple"))
    assert summary.projects == 1 and summary.pending == 0, summary.errors

    async def stored_releases():
        _, stored = await stored_project(world.db, key)
        return {d["version"]: d for d in stored}

    release = (await stored_releases())["40.0"]
    assert (release["yanked"], release["yanked_reason"]) == (True, "not this one")
    assert release["info"]["yanked"] is True

    world.index.publish(key, "41.0", files=1)
    await run_pass(world.importer(changes="simple"))
    await backfill_of(world).run_pass()  # (its own metadata stored: not yanked)
    world.index.publish(key, "42.0", files=1)
    world.index.yank(key, "41.0", "broken wheel")
    await run_pass(world.importer(changes="simple"))
    (only,) = world.index.get(key).releases["41.0"].files
    world.index.remove_file(key, "41.0", only.filename)
    summary = await run_pass(world.importer(changes="simple"))
    assert summary.projects == 1 and summary.pending == 0, summary.errors
    release = (await stored_releases())["41.0"]
    assert (release["files"], release["yanked"], release["yanked_reason"]) == \
        ([], True, "broken wheel")
    _, port, url = serve(world.db, syncing=False)
    try:
        for version in ("40.0", "41.0"):
            assert await ours(url, key, version) == (200, await oracle(world, key, version))
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_backfill_takes_no_answer_older_than_the_stored_project(small_world):
    """With changes from the Simple index, a yank of a release without files whose own
    metadata is not stored yet is left to the backfill, and its document keeps the
    serial from before the yank: a CDN's copy from then passed for fresh, and "not
    yanked" was stored for good (the backfill asks once)."""
    world = small_world
    await run_pass(world.importer(), full=True)
    key = normalize(world.index.dataset.name(2))  # (the "versions" showcase)
    fileless = "2.0.0.dev1"
    world.index.cdn_hold(key, fileless)
    world.index.yank(key, fileless, "never meant to be")
    await run_pass(world.importer(changes="simple"))
    backfill = backfill_of(world)
    await backfill.run_pass()

    async def stored_release():
        _, stored = await stored_project(world.db, key)
        return {d["version"]: d for d in stored}[fileless]

    assert "info" not in await stored_release()  # (the CDN's copy refused: asked again later)
    # Nor does the web front take it, asked for that release on the spot.
    _, port, url = serve(world.db, pypi=PyPI(world.url, backoff=0.05, stale_retries=1))
    try:
        code, body = await ours(url, key, fileless)
        assert code == 503 and "stale: serial" in json.loads(body)["message"], body
        assert "info" not in await stored_release()
        world.index.cdn_release(key, fileless)
        code, body = await ours(url, key, fileless)
        assert code == 200 and json.loads(body)["info"]["yanked"] is True
    finally:
        await port.stopListening()
    await backfill_of(world).run_pass()
    release = await stored_release()
    assert (release["yanked"], release["yanked_reason"]) == (True, "never meant to be")


@pytest_twisted.ensureDeferred
async def test_an_answer_is_not_stored_on_a_release_uploaded_again_meanwhile(small_world):
    """The backfill's write conflicts: the release was removed and uploaded again while
    its answer was on its way (the sync wrote the new upload without metadata). The old
    upload's metadata was stored on the new one, for good (it has some: never asked)."""
    from pypioncouch.backfill import OwnInfo

    world = small_world
    await run_pass(world.importer(), full=True)
    key = normalize(world.index.dataset.name(2))
    project = world.index.get(key)
    version = next(v for v, r in project.releases.items()
                   if r.files and v != world.index.latest(project).version)
    docid = f"{key}:{version}"
    real_put, swapped = world.db.put, []

    async def put(doc, *args, **options):
        if doc["_id"] == docid and not swapped:
            swapped.append(True)  # (the sync writes the new upload first)
            current = await world.db.get(docid)
            again = dict(current["files"][0], filename="reuploaded-" + version + ".whl")
            await real_put({**current, "files": [again]})
        return await real_put(doc, *args, **options)

    world.db.put = put
    try:
        with pytest.raises(StaleAnswer, match="changed since it was asked for"):
            await OwnInfo(world.db, PyPI(world.url, backoff=0.05)).fill(key, version)
    finally:
        world.db.put = real_put
    assert swapped
    current = await world.db.get(docid)
    assert current["files"][0]["filename"].startswith("reuploaded-")
    assert "info" not in current  # (asked anew by the next pass)


@pytest_twisted.ensureDeferred
async def test_a_yank_of_a_release_without_files_reaches_its_own_answer(small_world):
    """Only PyPI's per-version answer tells a release without files is yanked (the
    project's lists no files to flag): the sync asks for it when a change names the
    release, checked against the project's serial (a CDN may hold the old one)."""
    world = small_world
    await run_pass(world.importer(), full=True)
    await backfill_of(world).run_pass()
    key = normalize(world.index.dataset.name(2))  # (the "versions" showcase)
    project = world.index.get(key)
    fileless = "2.0.0.dev1"
    assert not project.releases[fileless].files and \
        world.index.latest(project).version != fileless

    async def stored_release():
        _, stored = await stored_project(world.db, key)
        return {d["version"]: d for d in stored}[fileless]

    async def served_as_pypi():  # (by a replica's front: nothing asked on the spot)
        _, port, url = serve(world.db, syncing=False)
        try:
            return await ours(url, key, fileless) == (200, await oracle(world, key, fileless))
        finally:
            await port.stopListening()

    assert (await stored_release())["yanked"] is False
    world.index.yank(key, fileless, "never meant to be")
    summary = await run_pass(world.importer())
    assert summary.pending == 0, summary.errors
    release = await stored_release()
    assert (release["yanked"], release["yanked_reason"]) == (True, "never meant to be")
    assert release["info"]["yanked"] is True and release["info_source"] == "version"
    assert await served_as_pypi()
    assert await backfill_of(world).run_pass() == 0  # (nothing left to fill)

    # Unyanked, while a CDN still serves the per-version answer of the yank (it
    # caches each URL apart): asked again, then the project is retried.
    world.index.cdn_hold(key, fileless)
    world.index.unyank(key, fileless)
    summary = await run_pass(world.importer(stale_retries=1))
    assert summary.pending == 1 and "stale: serial" in summary.errors[0], summary.errors
    assert (await stored_release())["yanked"] is True  # (not written: asked again)
    # The project changes again before its retry: the versions named then are not
    # known any more, so every release without files is asked about.
    world.index.cdn_release(key, fileless)
    world.index.publish(key, "3.0")
    summary = await run_pass(world.importer())
    assert summary.pending == 0, summary.errors
    assert (await stored_release())["yanked"] is False
    assert await served_as_pypi()


@pytest_twisted.ensureDeferred
async def test_the_backfill_takes_no_answer_older_than_the_stored_release(small_world):
    """A release without files yanked before a first import: the project's answer
    cannot say it, so the backfill asks. A CDN still serving the per-version answer
    from before the yank must not have the mirror say "not yanked" for ever: asked
    again, then later."""
    world = small_world
    key = normalize(world.index.dataset.name(2))  # (the "versions" showcase)
    fileless = "2.0.0.dev1"
    world.index.cdn_hold(key, fileless)
    world.index.yank(key, fileless, "never meant to be")
    await run_pass(world.importer(), full=True)
    pypi = PyPI(world.url, backoff=0.05, stale_retries=1)
    backfill = Backfill(world.db, pypi, BackfillProgress(), rate=1000.0)
    await backfill.run_pass()
    assert backfill.progress.errors == 1, backfill.progress.last_error
    assert f"{key} {fileless}: stale: serial" in backfill.progress.last_error
    _, stored = await stored_project(world.db, key)
    release = {d["version"]: d for d in stored}[fileless]
    assert release.get("info") is None and release["yanked"] is False  # (not known yet)
    assert f"{key}:{fileless}" in backfill._unanswered  # (asked again later)
    world.index.cdn_release(key, fileless)
    await backfill_of(world).run_pass()
    _, stored = await stored_project(world.db, key)
    release = {d["version"]: d for d in stored}[fileless]
    assert (release["yanked"], release["yanked_reason"]) == (True, "never meant to be")
    _, port, url = serve(world.db, syncing=False)
    try:
        assert await ours(url, key, fileless) == (200, await oracle(world, key, fileless))
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_yank_row_reaches_a_release_without_files_stored_as_new_already(small_world):
    """The project was fetched (for an earlier row) after the yank: stored at the yank's
    serial, its answer showing no files to flag. The yank's own row, on the next page
    of the changelog, still asks for the release's own answer."""
    world = small_world
    await run_pass(world.importer(), full=True)
    await backfill_of(world).run_pass()
    key = normalize(world.index.dataset.name(2))  # (the "versions" showcase)
    fileless = "2.0.0.dev1"
    world.index.publish(key, "3.0")
    yanked_at = world.index.yank(key, fileless, "never meant to be")
    world.resource.xmlrpc.changelog_limit = 1  # (a page a row)
    summary = await run_pass(world.importer())
    assert summary.pending == 0, summary.errors
    project, stored = await stored_project(world.db, key)
    assert project["last_serial"] == yanked_at
    release = {d["version"]: d for d in stored}[fileless]
    assert (release["yanked"], release["yanked_reason"]) == (True, "never meant to be")
    assert release["info"]["yanked"] is True


@pytest_twisted.ensureDeferred
async def test_a_yank_row_retried_asks_again_though_the_project_is_stored_at_its_serial(
        small_world):
    """As above, but the release's own answer is stale when the yank's row is read (a
    CDN): the project is kept to retry at the yank's serial, at which it is stored
    already. The retry still asks (taken as current, the yank was lost for good)."""
    world = small_world
    await run_pass(world.importer(), full=True)
    await backfill_of(world).run_pass()
    key = normalize(world.index.dataset.name(2))  # (the "versions" showcase)
    fileless = "2.0.0.dev1"
    world.index.cdn_hold(key, fileless)
    world.index.publish(key, "3.0")
    yanked_at = world.index.yank(key, fileless, "never meant to be")
    world.resource.xmlrpc.changelog_limit = 1  # (a page a row)
    summary = await run_pass(world.importer(stale_retries=1))
    assert summary.pending == 1 and "stale: serial" in summary.errors[0], summary.errors
    project, stored = await stored_project(world.db, key)
    assert project["last_serial"] == yanked_at
    assert {d["version"]: d for d in stored}[fileless]["yanked"] is False
    world.index.cdn_release(key, fileless)
    summary = await run_pass(world.importer())
    assert summary.pending == 0, summary.errors
    _, stored = await stored_project(world.db, key)
    release = {d["version"]: d for d in stored}[fileless]
    assert (release["yanked"], release["yanked_reason"]) == (True, "never meant to be")


@pytest_twisted.ensureDeferred
async def test_a_release_without_files_keeps_its_flags_once_not_the_latest(small_world):
    """Its Requires-Python came from its info while it was the latest; when a newer
    release comes, the project's answer says nothing of it any more."""
    world = small_world
    await run_pass(world.importer(), full=True)
    key = normalize(world.index.dataset.name(4))
    world.index.publish(key, "40.0", files=0, requires_python=">=3.12")
    await run_pass(world.importer())
    world.index.publish(key, "41.0", requires_python=">=3.8")
    await run_pass(world.importer())
    _, stored = await stored_project(world.db, key)
    release = {d["version"]: d for d in stored}["40.0"]
    assert (release["requires_python"], release["info"]["requires_python"]) == \
        (">=3.12", ">=3.12")
    _, port, url = serve(world.db, syncing=False)
    try:
        assert await ours(url, key, "40.0") == (200, await oracle(world, key, "40.0"))
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_service_waits_for_the_sync_then_passes_until_stopped(small_world):
    world = small_world
    await run_pass(world.importer(), full=True)
    from pypioncouch.service import imported

    status = SyncStatus()
    backfill = backfill_of(world, status.backfill, pause=0.05,
                           ready=lambda: imported(status))  # (as the daemon's)
    backfill.poll = 0.05

    async def passes(at_least):
        for _ in range(600):
            if status.backfill.passes >= at_least:
                break
            await sleep(0.05)
        return status.backfill.passes

    backfill.startService()
    try:
        await sleep(0.3)
        assert status.backfill.state == "waiting" and backfill.own.pypi.requests == 0
        status.note_serials(our_serial=world.index.last_serial)  # the first sync pass
        assert await passes(2) >= 2 and status.backfill.missing == 0
        assert status.backfill.filled > 0 and status.backfill.errors == 0
        # A full import again (the database deleted under the daemon): the backfill
        # waits for its end, its views not read meanwhile.
        status.phase = "full import"
        await sleep(0.3)
        held = status.backfill.passes
        await sleep(0.3)
        assert status.backfill.passes == held and status.backfill.state == "waiting"
        status.phase = "idle"
        assert await passes(held + 1) > held
    finally:
        await backfill.stopService()
    assert status.backfill.state == "off"


def test_the_pacer_spaces_requests_by_the_rate():
    clock = task.Clock()
    pacer = Pacer(2.0, clock)
    done = []
    for _ in range(3):
        defer.ensureDeferred(pacer.wait()).addCallback(lambda _: done.append(clock.seconds()))
    assert done == [0.0]
    clock.advance(0.5)
    assert done == [0.0, 0.5]
    clock.advance(0.4)
    assert done == [0.0, 0.5]
    clock.advance(0.1)
    assert done == [0.0, 0.5, 1.0]


def test_a_turn_too_far_away_is_refused_and_not_taken():
    clock = task.Clock()
    pacer = Pacer(2.0, clock)  # a turn every 0.5 s
    for _ in range(3):
        defer.ensureDeferred(pacer.wait(max_wait=1.0))  # turns at 0.0, 0.5, 1.0
    refused = []
    defer.ensureDeferred(pacer.wait(max_wait=1.0)).addErrback(refused.append)
    assert refused[0].check(Busy) and refused[0].value.seconds == 1.5
    clock.advance(0.5)  # one turn past: the next is 1.0 s away again, and may be taken
    taken = []
    defer.ensureDeferred(pacer.wait(max_wait=1.0)).addCallback(
        lambda _: taken.append(clock.seconds()))
    clock.advance(1.0)
    assert taken == [1.5]


@pytest_twisted.ensureDeferred
async def test_the_front_asks_pypi_on_the_spot_in_turns_and_says_when_to_come_back(
        small_world):
    """--backfill-rate bounds what PyPI sees from the daemon: clients asking for many
    releases at once wait their turn a few seconds, then are told when to come back."""
    from twisted.internet import reactor

    world = small_world
    await run_pass(world.importer(), full=True)
    older = [(k, v) for k, v, latest in releases_of(world.index) if not latest][:8]
    pypi = PyPI(world.url, backoff=0.05)
    # A turn a second; a client waits 2.2 s at most: the turns at 0, 1 and 2 s are
    # taken (by requests arriving within 0.8 s of the first), the rest refused.
    pacer = Pacer(1.0, reactor)
    _, port, url = serve(world.db, pypi=pypi, pacer=pacer, on_the_spot_wait=2.2)
    try:
        answers = await defer.gatherResults([
            defer.ensureDeferred(treq.get(f"{url}/pypi/{k}/{v}/json")) for k, v in older])
        codes = [a.code for a in answers]
        assert codes.count(200) == 3 and codes.count(503) == 5, codes
        assert pypi.requests == 3
        refused = next(i for i, a in enumerate(answers) if a.code == 503)
        assert answers[refused].headers.getRawHeaders("Retry-After") == ["3"]
        key, version = older[refused]
        message = (await answers[refused].json())["message"]
        assert message == (f"the metadata of {key} {version} is not stored yet, and this "
                           "mirror asks PyPI for such metadata at a pace of 1 a second "
                           "(--backfill-rate): try again in 3s")
        for answer in answers:
            if answer.code == 200:
                await answer.content()
        assert await ours(url, key, version) == (200, await oracle(world, key, version))
        assert pypi.requests == 4
    finally:
        await port.stopListening()


def test_the_daemon_backfills_unless_told_not_to():
    from pypioncouch.service import Options, makeService

    def services(*args):
        options = Options()
        options.parseOptions(["--couch", "http://127.0.0.1:5984/", *args])
        return {service.name for service in makeService(options)}

    assert "backfill" in services()
    assert "backfill" in services("--backfill-rate", "0.5")
    assert "backfill" not in services("--no-backfill")
    assert "backfill" not in services("--no-sync")
    with pytest.raises(usage.UsageError, match="--backfill-rate must be"):
        Options().parseOptions(["--couch", "http://127.0.0.1:5984/", "--backfill-rate", "0"])
    # The backfill and the status sweep wait for the first import, and for a full
    # import again (a database deleted under the daemon)
    options = Options()
    options.parseOptions(["--couch", "http://127.0.0.1:5984/"])
    top = makeService(options)
    status = top.getServiceNamed("sync").importer.status
    walks = [top.getServiceNamed(name) for name in ("backfill", "status-sweep")]
    assert not any(walk.ready() for walk in walks)
    status.note_serials(our_serial=5)
    status.phase = "full import"
    assert not any(walk.ready() for walk in walks)
    status.phase = "idle"
    assert all(walk.ready() for walk in walks)


def test_another_releases_answer_is_never_taken_for_this_ones():
    """PyPI matches versions canonically: asked for 1.0, it may answer 1.0.0's."""
    answer = {"info": {"name": "Foo.Bar", "version": "1.0.0", "summary": "1.0.0's"}}
    assert model.check_release_info(answer, "foo-bar", "1.0.0")["summary"] == "1.0.0's"
    with pytest.raises(model.BadPayload, match="answered version '1.0.0'"):
        model.check_release_info(answer, "foo-bar", "1.0")
    with pytest.raises(model.BadPayload, match="PyPI answered 'Foo.Bar'"):
        model.check_release_info(answer, "foo-baz", "1.0.0")

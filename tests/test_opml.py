"""OPML: pure rendering, and the watcher that keeps opml.xml current."""

import re
import xml.etree.ElementTree as ET

import listparser
import pytest
import pytest_twisted
from twisted.internet import defer

from pypioncouch import opml
from pypioncouch.couch import CouchDB, NotFound
from pypioncouch.copies import FeedRevisions
from pypioncouch.opml_watcher import CHECKPOINT, Backlog, OpmlWatcher, regenerate_all
from pypioncouch.status import SyncStatus
from pypioncouch.sync import run_pass
from pypioncouch.testing.dataset import HOSTILE, normalize

from .helpers import World, sleep, stored_project

pytestmark = pytest.mark.cluster  # end to end: also on a 3-node cluster


def sample(summary="A <b>bold</b> & \x01 summary ☃"):
    project = {"_id": "foo-bar", "name": "Foo_Bar", "summary": summary,
               "info": {"package_url": "https://pypi.org/project/foo-bar/"}}
    releases = [
        {"version": "1.0", "upload_time": [2020, 1, 2, 3, 4, 5], "yanked": False,
         "files": [{"filename": "foo_bar-1.0.whl", "url": "https://f/x.whl?a=1&b=2",
                    "size": 10, "digests": {"sha256": "ab" * 32}}]},
        {"version": "10.0rc1", "upload_time": [2021, 1, 1, 0, 0, 0], "yanked": True,
         "yanked_reason": HOSTILE[0], "files": []},
        {"version": "2.0", "upload_time": [2020, 6, 1, 0, 0, 0], "files": []},
    ]
    return project, releases


def test_opml_is_valid_xml_for_hostile_strings_and_lists_releases_newest_first():
    project, releases = sample()
    content = opml.project_opml(project, releases)
    root = ET.fromstring(content)
    assert root.tag == "opml" and root.get("version") == "2.0"
    assert root.find("head/dateCreated").text == "Thu, 02 Jan 2020 03:04:05 GMT"
    assert root.find("head/dateModified").text == "Fri, 01 Jan 2021 00:00:00 GMT"
    outlines = root.find("body").findall("outline")
    feed = outlines[0]
    assert feed.get("type") == "rss"
    assert feed.get("xmlUrl") == "https://pypi.org/rss/project/foo-bar/releases.xml"
    assert feed.get("description") == "A <b>bold</b> &  summary ☃"  # escaped, round-trips
    assert [o.get("text") for o in outlines[1:]] == ["10.0rc1", "2.0", "1.0"]
    assert outlines[1].get("yankedReason") == HOSTILE[0]
    link = outlines[3].find("outline")
    assert link.get("url") == "https://f/x.whl?a=1&b=2" and link.get("size") == "10"


def test_opml_is_deterministic():
    assert opml.project_opml(*sample()) == opml.project_opml(*sample())
    assert opml.project_opml(*sample()) != opml.project_opml(*sample(summary="other"))


def test_the_backlog_hands_out_the_oldest_changes_first_and_none_twice_at_once():
    backlog = Backlog("s0")
    backlog.changed("b", "s1", now=1.0)
    backlog.changed("a", "s2", now=1.1)
    backlog.changed("b", "s3", now=1.2)  # b again: it keeps its place
    assert backlog.take(10) == []  # the open epoch is not due
    assert backlog.close(now=1.2, debounce=0.25) == pytest.approx(0.05)  # not yet
    assert backlog.close(now=1.25, debounce=0.25) is None
    backlog.changed("c", "s4", now=1.3)  # a new epoch
    assert backlog.take(1) == ["b"]
    backlog.changed("b", "s5", now=1.4)  # while its batch runs
    assert backlog.close(now=2.0, debounce=0.25) is None
    assert backlog.take(10) == ["a", "c"]  # b waits for its batch
    backlog.finished(["b"])
    assert backlog.take(10) == ["b"] and len(backlog) == 0


def test_the_checkpoint_never_passes_a_change_whose_project_is_not_done():
    backlog = Backlog("s0")
    for key, seq in [("a", "s1"), ("b", "s2"), ("c", "s3"), (None, "s4")]:
        backlog.changed(key, seq, now=0.0)
    backlog.close(now=1.0, debounce=0.25)  # epoch 0 ends at s4
    first, second = backlog.take(1), backlog.take(2)
    assert (first, second) == (["a"], ["b", "c"])
    backlog.finished(second)
    assert backlog.safe_seq == "s0"  # a (s1) is still being written
    backlog.failed(first)
    backlog.changed("d", "s5", now=5.0)
    backlog.close(now=6.0, debounce=0.25)  # epoch 1 ends at s5
    assert backlog.take(1) == ["a"]  # first in line again
    backlog.finished(["a"], again=["a"])  # a conflict: once more
    assert backlog.safe_seq == "s0"
    assert backlog.take(1) == ["a"]
    backlog.changed("a", "s6", now=7.0)  # while it is written: epoch 2
    backlog.finished(["a"])
    assert backlog.safe_seq == "s4"  # d (s5) is not done
    backlog.changed(None, "s7", now=7.5)  # a design document
    backlog.close(now=8.0, debounce=0.25)  # epoch 2 ends at s7
    assert backlog.take(5) == ["d", "a"]
    backlog.finished(["d"])
    assert backlog.safe_seq == "s5"  # a's newer change (s6) is not done
    backlog.finished(["a"])
    assert backlog.safe_seq == "s7"
    backlog.changed(None, "s8", now=9.0)  # no project: passed once its epoch closes
    backlog.close(now=9.0, debounce=0.0)
    assert backlog.safe_seq == "s8"


def test_the_backlog_stays_small_while_an_old_project_is_held():
    """A project retried for hours holds the checkpoint: every epoch closed meanwhile
    (four a second) kept its end, ~100 MB a day."""
    backlog = Backlog("s0")
    backlog.changed("stuck", "s1", now=0.0)
    backlog.close(now=1.0, debounce=0.25)
    assert backlog.take(1) == ["stuck"]
    for n in range(2, 10_002):
        key = None if n % 10 else f"p{n}"  # (a design document's change, or a project)
        backlog.changed(key, f"s{n}", now=float(n))
        backlog.close(now=n + 1.0, debounce=0.25)
        if key:
            assert backlog.take(5) == [key]
            backlog.finished([key])
    assert backlog.safe_seq == "s0" and len(backlog.ends) <= 10, len(backlog.ends)
    backlog.failed(["stuck"])
    backlog.changed("p-last", "s10002", now=20_000.0)  # (not closed: not passed)
    assert backlog.take(5) == ["stuck"]
    backlog.finished(["stuck"])
    assert backlog.safe_seq == "s10001"


def test_the_backlogs_checkpoint_is_the_same_with_its_ends_dropped():
    """Random changes, batches, conflicts and failures: the checkpoint moves exactly as
    it did when every epoch kept its end."""
    import random

    class Keeping(Backlog):
        def _compact(self):
            pass

    for seed in range(200):
        rng = random.Random(seed)
        ours, keeping = Backlog("s0"), Keeping("s0")
        now, running = 0.0, []
        for step in range(300):
            now += rng.random()
            action = rng.random()
            key = rng.choice([None, "a", "b", "c", "d", "e", "f"])
            for backlog in (ours, keeping):
                if action < 0.5:
                    backlog.changed(key, f"s{step + 1}", now)
                elif action < 0.7:
                    backlog.close(now, debounce=0.25)
            if 0.7 <= action < 0.85:
                taken = ours.take(rng.randint(1, 3))
                assert keeping.take(len(taken)) == taken
                running.extend(taken)
            elif action >= 0.85 and running:
                batch = running[:rng.randint(1, len(running))]
                del running[:len(batch)]
                verdict = rng.random()
                for backlog in (ours, keeping):
                    if verdict < 0.2:
                        backlog.failed(batch)
                    else:
                        backlog.finished(batch, again=batch[:1] if verdict < 0.4 else ())
            assert ours.safe_seq == keeping.safe_seq, (seed, step)
        assert len(ours.ends) <= 2 * len(ours.held) + 9


def test_an_opml_watcher_stopped_before_it_read_its_checkpoint_writes_none():
    """Stopped while CouchDB has not answered yet, the watcher must not write a
    checkpoint of its own (it would send the next start back to the beginning)."""
    from .test_clients import HANG, couch_with, outcome, started

    db, http, clock = couch_with(HANG)
    watcher = OpmlWatcher(db, reactor=clock)
    watcher.startService()
    _, results = started(watcher.stopService())
    outcome(results)
    assert [method for method, *_ in http.requests] == ["HEAD"] and http.cancelled == 1


def test_an_opml_watcher_waiting_for_couchdb_backs_off_and_says_so_less_and_less():
    """A wrong password does not go away by itself: not a warning every 5 s for ever."""
    from twisted.logger import formatEvent, globalLogPublisher

    from .test_clients import couch_json, couch_with

    refused = couch_json(401, b'{"error":"unauthorized","reason":"Name or password is incorrect."}')
    db, http, clock = couch_with(*[refused] * 20)
    status = SyncStatus()
    watcher = OpmlWatcher(db, status, reactor=clock, max_backoff=60.0)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        watcher.startService()
        clock.pump([1.0] * 300)
    finally:
        globalLogPublisher.removeObserver(events.append)
        watcher.running = False
    tried = http.times
    assert tried == [0.0, 5.0, 15.0, 35.0, 75.0, 135.0, 195.0, 255.0]  # 5, 10... 60 s apart
    said = [formatEvent(e) for e in events if "OPML watcher waits" in formatEvent(e)]
    assert len(said) == 4 and said[0].endswith("; try 2 in 5s")  # tries 1, 2, 4 and 8
    assert status.opml_error.startswith("waiting for CouchDB: CouchDB does not accept user")


def test_an_opml_watcher_waiting_for_couchdb_for_days_still_waits():
    """The 1,025th try's delay overflowed a float: the watcher stopped for good."""
    from .test_clients import couch_json, couch_with

    refused = couch_json(401, b'{"error":"unauthorized","reason":"Name or password is incorrect."}')
    db, http, clock = couch_with(*[refused] * 1100)
    watcher = OpmlWatcher(db, reactor=clock)
    watcher.startService()
    try:
        for _ in range(1050):
            clock.advance(300.0)
        assert len(http.requests) == 1051 and not watcher._start.called  # (and at 0 s)
    finally:
        watcher.running = False


def test_a_real_opml_parser_reads_it():
    parsed = listparser.parse(opml.project_opml(*sample()).decode("utf-8"))
    assert not parsed.bozo, parsed.bozo_exception
    assert parsed.feeds[0].url == "https://pypi.org/rss/project/foo-bar/releases.xml"


@pytest.mark.parametrize("package_url", ["http://[x", "javascript:alert(1)//x", 7, None])
def test_an_index_url_that_is_not_a_web_address_links_to_pypi(package_url):
    project = {"_id": "x-y", "name": "X-Y", "info": {"package_url": package_url}}
    content = opml.project_opml(project, [{"version": "1.0 beta#2", "files": []}]).decode()
    assert 'xmlUrl="https://pypi.org/rss/project/x-y/releases.xml"' in content
    assert 'htmlUrl="https://pypi.org/project/x-y/1.0%20beta%232/"' in content


def test_hostile_strings_and_characters_xml_cannot_carry():
    """Markup is escaped, control characters, non-characters and lone surrogates (which
    XML 1.0 cannot carry at all) are dropped: the bytes, written out by hand."""
    project = {"_id": "x-y", "name": 'X<"y">&',
               "summary": "a\x00b\x1fc\ud800d\ufffee\t☃ ]]> 'q'",
               "info": {"package_url": "https://pypi.example/project/x-y/"}}
    releases = [
        {"version": "0.1", "upload_time": None, "files": []},
        {"version": "1.0", "upload_time": [2020, 1, 2, 3, 4, 5], "yanked": True,
         "yanked_reason": '<script>alert("x")</script>\x0b',
         "files": [{"filename": "x&y.whl", "url": "https://f/x?a=1&b=<2>", "size": 10,
                    "digests": {"sha256": "ab"}}]},
    ]
    content = opml.project_opml(project, releases)
    assert content == (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<opml version="2.0">\n'
        '  <head>\n'
        '    <title>X&lt;"y"&gt;&amp; releases</title>\n'
        '    <dateCreated>Thu, 02 Jan 2020 03:04:05 GMT</dateCreated>\n'
        '    <dateModified>Thu, 02 Jan 2020 03:04:05 GMT</dateModified>\n'
        '    <docs>http://opml.org/spec2.opml</docs>\n'
        '  </head>\n'
        '  <body>\n'
        '''    <outline type="rss" text='X&lt;"y"&gt;&amp; releases' '''
        '''title='X&lt;"y"&gt;&amp; releases' '''
        'xmlUrl="https://pypi.example/rss/project/x-y/releases.xml" '
        'htmlUrl="https://pypi.example/project/x-y/" '
        '''description="abcde&#9;☃ ]]&gt; 'q'"/>\n'''
        '    <outline text="1.0" type="release" created="Thu, 02 Jan 2020 03:04:05 GMT" '
        'htmlUrl="https://pypi.example/project/x-y/1.0/" yanked="true" '
        '''yankedReason='&lt;script&gt;alert("x")&lt;/script&gt;'>\n'''
        '      <outline text="x&amp;y.whl" type="link" url="https://f/x?a=1&amp;b=&lt;2&gt;" '
        'size="10" sha256="ab"/>\n'
        '    </outline>\n'
        '    <outline text="0.1" type="release" htmlUrl="https://pypi.example/project/x-y/0.1/"/>\n'
        '  </body>\n'
        '</opml>\n').encode("utf-8")
    root = ET.fromstring(content)  # and an XML parser reads back what was meant
    assert root.find("body/outline").get("description") == "abcde\t☃ ]]> 'q'"


@pytest.fixture
def world(couch_server, db_name):
    world = World(couch_server.url, db_name, projects=25, seed=17,
                  read_url=couch_server.read_url)
    yield world
    world.close()


async def opml_of(db, key):
    content, content_type = await db.get_attachment(key, opml.ATTACHMENT)
    assert content_type.startswith("text/x-opml")
    return content


async def wait_for(predicate, timeout=15.0):
    for _ in range(int(timeout / 0.1)):
        if await predicate():
            return True
        await sleep(0.1)
    return False


@pytest_twisted.ensureDeferred
async def test_a_published_release_reaches_opml_within_seconds(world):
    await run_pass(world.importer(), full=True)
    watcher = OpmlWatcher(world.db, debounce=0.05)
    watcher.startService()
    try:
        key = normalize(world.index.dataset.name(9))

        async def has_opml():
            doc = await world.db.get(key)
            return "opml.xml" in (doc.get("_attachments") or {})

        assert await wait_for(has_opml)
        # Batches shaped for the server (one thread, or answering in parallel).
        one_thread = "express-pouchdb" in await world.couch.info()  # pouchdb-server
        assert (watcher.batch, watcher.in_flight) == ((50, 3) if one_thread else (25, 6))
        world.index.publish(key, "42.0")
        await run_pass(world.importer())

        async def names_new_version():
            return b'text="42.0"' in await opml_of(world.read_db, key)

        assert await wait_for(names_new_version)
        parsed = listparser.parse((await opml_of(world.read_db, key)).decode())
        assert not parsed.bozo
        project, releases = await stored_project(world.read_db, key)
        content = (await opml_of(world.read_db, key)).decode()
        assert all(f'text="{r["version"]}"' in content for r in releases)
        # The watcher's own writes cause no further revisions.
        await sleep(1.0)
        rev = (await world.db.get(key))["_rev"]
        written = watcher.status.opml_written
        await sleep(1.5)
        assert (await world.db.get(key))["_rev"] == rev
        assert watcher.status.opml_written == written
        # The sync's rewrite of the project document keeps the attachment.
        world.index.yank(key, "42.0", "oops")
        await run_pass(world.importer())
        doc = await world.db.get(key)
        assert "opml.xml" in doc["_attachments"]
        assert await wait_for(lambda: _contains(world.read_db, key, b'yankedReason="oops"'))
    finally:
        await watcher.stopService()


@pytest_twisted.ensureDeferred
async def test_a_project_whose_releases_carry_long_readmes_lists_them_all(world,
                                                                         monkeypatch):
    """The watcher reads releases without their own metadata (a README each: 3,000
    releases of one project would be held at once); what the OPML says is all there."""
    from pypioncouch import couch
    from pypioncouch.opml_watcher import regenerate

    from .test_backfill import backfill_of

    for n in range(6):  # (1.5 MB of descriptions: read a release at a time)
        world.index.publish("Long.Readmes", f"{n}.0", description=f"{n}" * 250_000)
    world.index.yank("long-readmes", "2.0", "bad <b>build</b>")
    await run_pass(world.importer(), full=True)
    await backfill_of(world).run_pass()  # (every release's own README stored)
    trimmed = []
    each_document = couch._each_document

    def counted(trim):
        def trim_result(result):
            trimmed.append(result.get("id"))
            return each_document(trim)(result)
        return trim_result

    monkeypatch.setattr(couch, "_each_document", counted)
    assert await regenerate(world.db, "long-readmes") is True
    assert len(trimmed) == 6  # (dropped as they were parsed, one at a time)
    content = await opml_of(world.db, "long-readmes")
    root = ET.fromstring(content)
    releases = [o for o in root.iter("outline") if o.get("type") == "release"]
    assert [r.get("text") for r in releases] == ["5.0", "4.0", "3.0", "2.0", "1.0", "0.0"]
    assert releases[3].get("yankedReason") == "bad <b>build</b>"
    assert all(r.find("outline").get("text").startswith("long_readmes-") for r in releases)
    assert len(content) < 20_000  # (no README in it)


async def _contains(db, key, needle):
    return needle in await opml_of(db, key)


@pytest_twisted.ensureDeferred
async def test_a_restart_resumes_from_the_checkpoint(world):
    await run_pass(world.importer(), full=True)
    first = OpmlWatcher(world.db, debounce=0.05)
    first.startService()
    assert await wait_for(lambda: _all_have_opml(world))
    await sleep(0.5)
    await first.stopService()
    assert (await world.db.get_local(CHECKPOINT))["seq"] is not None
    second = OpmlWatcher(world.db, debounce=0.05)
    regenerated = []
    original = second.on_change
    second.on_change = lambda change: (regenerated.append(change["id"]), original(change))
    second.startService()
    try:
        await sleep(1.5)
        assert regenerated == [] and second.status.opml_written == 0
        world.index.publish(normalize(world.index.dataset.name(3)), "1.0")
        await run_pass(world.importer())

        async def written():
            return second.status.opml_written >= 1

        assert await wait_for(written)
        await sleep(0.5)  # and that one only
        assert second.status.opml_written == 1
    finally:
        await second.stopService()


@pytest_twisted.ensureDeferred
async def test_a_checkpoint_without_a_seq_starts_the_watcher_from_the_beginning(world):
    """Anyone may write a ``_local`` document: one naming no seq stopped the watcher
    for good (a KeyError, said once)."""
    await run_pass(world.importer(), full=True)
    await world.db.put_local(CHECKPOINT, {"note": "written by hand"})
    watcher = OpmlWatcher(world.db, debounce=0.05)
    watcher.startService()
    try:
        assert await wait_for(lambda: _all_have_opml(world))
    finally:
        await watcher.stopService()


async def _all_have_opml(world):
    rows = (await world.db.all_docs(include_docs=True))["rows"]
    projects = [r["doc"] for r in rows if r["doc"].get("type") == "project"]
    return projects and all("opml.xml" in (p.get("_attachments") or {}) for p in projects)


@pytest_twisted.ensureDeferred
async def test_a_batch_of_big_projects_is_read_a_part_at_a_time(world, monkeypatch):
    """A family of big neighbours in one batch held every release of all of them at
    once: the releases are read (and the OPML made) a few thousand at a time, a
    project bigger than that alone."""
    from pypioncouch import opml_watcher

    await run_pass(world.importer(), full=True)
    monkeypatch.setattr(opml_watcher, "RELEASES_AT_ONCE", 4)
    read, bulk_get = [], world.db.bulk_get

    async def counting(ids, **options):
        if any(":" in docid for docid in ids):
            read.append(len(ids))
        return await bulk_get(ids, **options)
    world.db.bulk_get = counting
    projects = [row["doc"] for row in (await world.db.all_docs(include_docs=True))["rows"]
                if row["doc"].get("type") == "project"]
    biggest = max(len(p["versions"]) for p in projects)
    assert await regenerate_all(world.db) == 25 and await _all_have_opml(world)
    assert len(read) > 1 and max(read) <= max(4, biggest) and sum(read) == sum(
        len(p["versions"]) for p in projects), read
    for project in projects:  # (each with its own releases, all of them)
        content = (await opml_of(world.db, project["_id"])).decode()
        releases = re.findall(r'<outline text="([^"]*)" type="release"', content)
        assert sorted(releases) == sorted(project["versions"]), project["_id"]


@pytest_twisted.ensureDeferred
async def test_a_removed_project_leaves_no_opml(world):
    await run_pass(world.importer(), full=True)
    written = await regenerate_all(world.db)
    assert written == 25
    key = normalize(world.index.dataset.name(4))
    world.index.remove_project(key)
    await run_pass(world.importer())
    assert await world.db.get_or_none(key) is None
    rows = (await world.db.all_docs(keys=[key]))["rows"]
    assert rows[0]["value"]["deleted"] is True
    assert await regenerate_all(world.db) == 0  # nothing stale to rewrite either


@pytest_twisted.ensureDeferred
async def test_a_project_whose_opml_cannot_be_made_holds_back_no_other(world, monkeypatch):
    from pypioncouch import opml_watcher

    await run_pass(world.importer(), full=True)
    broken = normalize(world.index.dataset.name(4))
    real = opml_watcher.project_opml

    def render(project, releases):
        if project["_id"] == broken:
            raise ValueError("a bug meeting odd data")
        return real(project, releases)

    monkeypatch.setattr(opml_watcher, "project_opml", render)
    watcher = OpmlWatcher(world.db, debounce=0.05, batch=200)
    watcher.startService()
    try:
        assert await wait_for(lambda: _all_but_have_opml(world, broken))
        assert "opml.xml" not in ((await world.db.get(broken)).get("_attachments") or {})
        assert watcher.status.last_error.startswith(f"the OPML of {broken} cannot be made")
        assert await wait_for(lambda: _checkpoint_saved(world))
    finally:
        await watcher.stopService()


async def _all_but_have_opml(world, broken):
    rows = (await world.db.all_docs(include_docs=True))["rows"]
    return all("opml.xml" in (r["doc"].get("_attachments") or {}) for r in rows
               if r["doc"].get("type") == "project" and r["id"] != broken)


async def _checkpoint_saved(world):
    return ((await world.db.get_local(CHECKPOINT)) or {}).get("seq") is not None


@pytest_twisted.ensureDeferred
async def test_couchdb_restarting_mid_stream_loses_no_update(private_couch_server):
    server = private_couch_server.start()
    world = World(server.url, "pypi", projects=10, seed=2)
    try:
        world.couch = CouchDB(server.url, timeout=3)
        world.db = world.couch.database("pypi")
        await run_pass(world.importer(), full=True)
        watcher = OpmlWatcher(world.db, debounce=0.05)
        watcher.startService()
        try:
            assert await wait_for(lambda: _all_have_opml(world))
            server.stop()
            await sleep(0.5)
            server.start()
            key = normalize(world.index.dataset.name(5))
            world.index.publish(key, "77.0")
            await run_pass(world.importer())
            assert await wait_for(lambda: _contains(world.read_db, key, b'text="77.0"'), 40)
        finally:
            await watcher.stopService()
    finally:
        world.close()
        server.stop()


REFUSE_ATTACHMENTS = """function (newDoc) {
  if (newDoc._attachments && !newDoc._deleted) {
    throw({forbidden: 'attachments are not accepted here'});
  }
}"""


@pytest_twisted.ensureDeferred
async def test_a_refused_write_backs_off_and_shows_on_status(couch_server, db_name):
    import treq

    from pypioncouch.status import SyncStatus

    from .helpers import CouchProxy
    from .test_web import serve

    world = World(couch_server.url, db_name, projects=5, seed=17)
    await run_pass(world.importer(), full=True)
    await world.db.put({"_id": "_design/refuse", "validate_doc_update": REFUSE_ATTACHMENTS})
    proxy = CouchProxy(couch_server.url)
    status = SyncStatus()
    watcher = OpmlWatcher(CouchDB(proxy.url).database(db_name), status, debounce=0.05)
    front, port, url = serve(world.db, status=status, syncing=False)
    watcher.startService()
    try:
        await sleep(2.5)
        writes = [r for r in proxy.requests if b"/_bulk_docs" in r]
        # Retried after 1 s, then 2 s, ...: not every debounce (0.05 s).
        assert 1 <= len(writes) <= 3, len(writes)
        data = await (await treq.get(f"{url}/status", headers={"Accept": "application/json"})
                      ).json()
        assert "attachments are not accepted here" in data["opml"]["error"]
        page = await (await treq.get(f"{url}/status")).text()
        assert "attachments are not accepted here" in page
    finally:
        await watcher.stopService()
        await port.stopListening()
        proxy.close()
        world.close()


REFUSE_ONE = """function (newDoc) {
  if (newDoc._id === '%s' && newDoc._attachments && !newDoc._deleted) {
    throw({forbidden: 'not <this> one'});
  }
}"""


@pytest_twisted.ensureDeferred
async def test_a_project_refused_for_itself_holds_back_no_other_nor_the_checkpoint(world):
    """A validate function refusing one project's opml.xml: while other writes succeed
    it is said on /status and left until that project changes, and the others and the
    checkpoint go on; refused with nothing else written (it might be every write's),
    it is tried again, holding the checkpoint, until another write succeeds."""
    await run_pass(world.importer(), full=True)
    broken = normalize(world.index.dataset.name(3))
    other = normalize(world.index.dataset.name(7))
    await world.db.put({"_id": "_design/refuse", "validate_doc_update": REFUSE_ONE % broken})
    said = (f"CouchDB refused the opml.xml of {broken}: forbidden: not <this> one; "
            "left as it is until the project changes")

    def idle(watcher):
        async def check():
            backlog = watcher.backlog
            return (not backlog and not backlog.running and
                    backlog.safe_seq == backlog.last_seq == watcher.saved_seq)
        return check

    watcher = OpmlWatcher(world.db, debounce=0.05, max_backoff=1.0)
    watcher.startService()
    try:
        assert await wait_for(lambda: _all_but_have_opml(world, broken))
        world.index.publish(other, "77.0")  # another write succeeds, if none did after
        await run_pass(world.importer())
        assert await wait_for(lambda: _contains(world.db, other, b'text="77.0"'))
        assert await wait_for(idle(watcher))
        assert watcher.failures == 0 and watcher.status.opml_error is None
        assert said in watcher.status.warnings
        assert "opml.xml" not in ((await world.db.get(broken)).get("_attachments") or {})
    finally:
        await watcher.stopService()

    world.index.publish(broken, "78.0")
    await run_pass(world.importer())
    watcher = OpmlWatcher(world.db, debounce=0.05, max_backoff=1.0)
    watcher.startService()
    try:  # refused alone: tried again, the checkpoint held
        assert await wait_for(lambda: defer.succeed(watcher.failures >= 1))
        assert "not <this> one" in watcher.status.opml_error
        assert said not in watcher.status.warnings
        held = watcher.saved_seq
        await sleep(1.5)
        assert watcher.saved_seq == held
        assert broken in watcher.backlog.again or broken in watcher.backlog.running
        world.index.publish(other, "79.0")  # another write succeeds: refused for itself
        await run_pass(world.importer())
        assert await wait_for(lambda: _contains(world.db, other, b'text="79.0"'))
        assert await wait_for(idle(watcher))
        assert watcher.saved_seq != held and watcher.status.opml_error is None
        assert said in watcher.status.warnings

        # Once the guard is gone, its next change is written.
        design = await world.db.get("_design/refuse")
        await world.db.delete("_design/refuse", design["_rev"])
        world.index.publish(broken, "80.0")
        await run_pass(world.importer())

        async def written():
            doc = await world.db.get(broken)
            return "opml.xml" in (doc.get("_attachments") or {}) and \
                await _contains(world.db, broken, b'text="80.0"')
        assert await wait_for(written)
    finally:
        await watcher.stopService()


@pytest_twisted.ensureDeferred
async def test_opml_command_writes_the_others_and_says_which_it_left(world):
    """``pypioncouch --opml`` over a project CouchDB forbids: the others are written,
    the refusal said, the count left in its last line, exit status 3; no password."""
    import sys
    from pathlib import Path

    from twisted.internet import utils

    from .conftest import ADMIN

    await run_pass(world.importer(), full=True)
    broken = normalize(world.index.dataset.name(3))
    await world.db.put({"_id": "_design/refuse", "validate_doc_update": REFUSE_ONE % broken})
    out, err, code = await utils.getProcessOutputAndValue(
        str(Path(sys.executable).parent / "pypioncouch"),
        ["--opml", world.db.server.url_with_credentials, "--db", world.db.name, "--quiet"])
    said, logged = out.decode(), err.decode()
    assert code == 3, (said, logged)
    assert said.endswith(": 24 attachments written in "
                         f"{world.db.display_url}; 1 project(s) left as they were "
                         "(said above)\n"), said
    assert (f"CouchDB refused the opml.xml of {broken}: forbidden: not <this> one; "
            "left as it is until the project changes") in logged
    assert ADMIN[1] not in said + logged
    assert await wait_for(lambda: _all_but_have_opml(world, broken))  # (a cluster: a copy behind)
    # Again, with nothing else to write: the same, not a failure.
    out, err, code = await utils.getProcessOutputAndValue(
        str(Path(sys.executable).parent / "pypioncouch"),
        ["--opml", world.db.server.url_with_credentials, "--db", world.db.name, "--quiet"])
    said = out.decode()
    assert code == 3, (said, err.decode())
    assert said.endswith(": 0 attachments written in "
                         f"{world.db.display_url}; 1 project(s) left as they were "
                         "(said above)\n"), said


def test_a_refusal_is_one_projects_only_once_a_batch_taken_after_it_writes():
    """Batches in flight when a refusal comes back may have been written before a
    change of rights: only a write by a batch taken after it says the refusal was the
    project's own (not every write's), whatever the refusal."""
    from pypioncouch.couch import BulkResult

    watcher = OpmlWatcher(None)
    forbidden = BulkResult("b", error="forbidden", reason="read-only now")
    watcher.taken = 2  # batches 1 and 2 in flight
    assert list(watcher._weigh(["b"], 2, {}, [forbidden])) == ["b"]  # nothing written
    assert not watcher._weigh(["a"], 1, {"a": "2-x"}, [])  # batch 1, sent before
    watcher.taken = 3
    assert list(watcher._weigh(["b"], 3, {}, [forbidden])) == ["b"]  # still held
    watcher.taken = 5
    assert not watcher._weigh(["c"], 4, {"c": "2-y"}, [])  # batch 4, taken after
    assert not watcher._weigh(["b"], 5, {}, [forbidden])  # its own: given up
    assert watcher.status.warnings == [
        "CouchDB refused the opml.xml of b: forbidden: read-only now; left as it is "
        "until the project changes"]
    # Refused for this user, where another write of its request was not (a validate
    # function's {unauthorized: ...} for some documents): its own too. (Tried again
    # first in line, it made every batch a failed one: the pause grew to 300 s.)
    unauthorized = BulkResult("d", error="unauthorized", reason="admins only")
    assert not watcher._weigh(["d", "e"], 6, {"e": "3-z"}, [unauthorized])
    assert watcher.status.warnings[-1] == (
        "CouchDB refused the opml.xml of d: unauthorized: admins only; left as it is "
        "until the project changes")
    watcher.taken = 8  # (batches 7 and 8 in flight: nothing of 8 written)
    assert list(watcher._weigh(["f"], 8, {}, [BulkResult("f", error="unauthorized", reason="admins only")])) == ["f"]


@pytest_twisted.ensureDeferred
async def test_the_watcher_does_not_regenerate_for_its_own_writes(world, monkeypatch):
    """Its opml.xml coming back as a change is not taken for another's (that was half
    of a burst's work): after a burst of changed projects, none is read and rendered
    again at the revision the watcher wrote, and the checkpoint passes those changes."""
    from pypioncouch import opml_watcher

    await run_pass(world.importer(), full=True)
    rendered, wrote = [], set()
    real_render, real_regenerate = opml_watcher.project_opml, opml_watcher.regenerate_many

    def render(project, releases):
        rendered.append((project["_id"], project["_rev"]))
        return real_render(project, releases)

    async def regenerate_many(db, keys, *args):
        written, conflicted, refused = await real_regenerate(db, keys, *args)
        wrote.update(written.items())
        return written, conflicted, refused

    monkeypatch.setattr(opml_watcher, "project_opml", render)
    monkeypatch.setattr(opml_watcher, "regenerate_many", regenerate_many)
    watcher = OpmlWatcher(world.db, debounce=0.05)

    async def idle():
        backlog = watcher.backlog
        return (not backlog and not backlog.running and
                backlog.safe_seq == backlog.last_seq == watcher.saved_seq)

    watcher.startService()
    try:
        assert await wait_for(lambda: _all_have_opml(world))
        assert await wait_for(idle)
        rows = (await world.db.all_docs(include_docs=True))["rows"]
        burst = [r["doc"] for r in rows if r["doc"].get("type") == "project"][:20]
        for doc in burst:
            doc["summary"] = "a burst"
        rendered.clear()
        await world.db.bulk_docs(burst)

        async def all_current():
            return all([await _contains(world.db, doc["_id"], b'description="a burst"')
                        for doc in burst])
        assert await wait_for(all_current)
        assert await wait_for(idle)  # its own changes came back, the checkpoint past them
        assert len(rendered) >= len(burst)
        echoes = [pair for pair in rendered if pair in wrote]
        assert len(echoes) <= 2, echoes  # (a change may come back before the write's answer)
    finally:
        await watcher.stopService()


@pytest_twisted.ensureDeferred
async def test_a_release_document_of_another_shape_holds_back_no_other_project(world):
    """A release written by another program without its "project" field (no guard
    installed): the batch it is in was failed whole, again at each retry."""
    await run_pass(world.importer(), full=True)
    odd = normalize(world.index.dataset.name(4))
    project = await world.db.get(odd)
    release = await world.db.get(f"{odd}:{project['versions'][0]}")
    del release["project"]
    await world.db.put(release)
    written = await regenerate_all(world.db, SyncStatus())
    assert written == 25
    assert await wait_for(lambda: _all_but_have_opml(world, None))  # (a cluster: a copy behind)


@pytest_twisted.ensureDeferred
async def test_release_only_changes_of_a_project_just_regenerated_wait_out_a_cooldown(
        world, monkeypatch):
    """The backfill fills one release after another (5 a second); each change made the
    project due, and its every release was read again, several times a second. Now
    such a project waits out ``cooldown``; a change of its project document (an upload)
    does not wait."""
    from pypioncouch.store import Store

    read: list[str] = []
    reading = Store.projects

    async def counted(self, keys, **options):
        read.extend(keys)
        return await reading(self, keys, **options)

    monkeypatch.setattr(Store, "projects", counted)
    await run_pass(world.importer(), full=True)
    key = normalize(world.index.dataset.name(6))
    project = await world.db.get(key)
    versions = project["versions"]
    # (the dataset's projects are small: this one counts as big here)
    watcher = OpmlWatcher(world.db, debounce=0.05, cooldown=10.0, big_project=len(versions))
    watcher.startService()
    try:
        async def idle():
            return "opml.xml" in ((await world.db.get(key)).get("_attachments") or {}) \
                and not watcher.backlog and not watcher.backlog.running

        assert await wait_for(idle)
        assert key in watcher.big and watcher.big != set(read)  # (the smaller are not)
        before = read.count(key)
        for turn in range(10):  # as the backfill writes: release documents only
            release = await world.db.get(f"{key}:{versions[turn % len(versions)]}")
            release["yanked"], release["yanked_reason"] = True, "quiet"
            await world.db.put(release)
            await sleep(0.1)
        assert read.count(key) - before <= 1  # (without: one read a change, or near)
        # The cooldown over, the changes are in its OPML (later: nothing lost).
        assert await wait_for(lambda: _contains(world.db, key, b'yankedReason="quiet"'),
                              timeout=20)
        # An upload writes the project document: regenerated at once, cooldown or not.
        world.index.publish(key, "77.0")
        await run_pass(world.importer())
        assert await wait_for(lambda: _contains(world.db, key, b'text="77.0"'), timeout=2.5)
    finally:
        await watcher.stopService()


@pytest.mark.parametrize("lag", ["an older project", "no project", "no new release"])
@pytest_twisted.ensureDeferred
async def test_a_project_read_from_copies_behind_its_change_is_read_again(world, monkeypatch,
                                                                         lag):
    """On a cluster the watcher's read may come from copies that lack the change it was
    woken for (a write answered 202, a node down): the project's older revision, no
    project yet (a new one), or not its new release. Rendered from that (or skipped),
    the opml.xml stayed stale or missing for good: the feed never named the change
    again. It is read again after a moment."""
    from pypioncouch import opml_watcher
    from pypioncouch.store import Store

    await run_pass(world.importer(), full=True)
    key = normalize(world.index.dataset.name(5) if lag != "no project" else "brand-new")
    changed, reads, lagging = [], [], {"left": 2}

    class FromACopyBehind(Store):  # (the watcher's reads only: not the sync's)
        behind = False

        async def project_documents(self, keys):
            found = await super().project_documents(keys)
            if key not in keys or not changed:
                return found
            reads.append(key)
            if lagging["left"] == 0:
                return found
            lagging["left"] -= 1
            if lag == "no project":
                return {k: doc for k, doc in found.items() if k != key}
            if lag == "no new release":
                self.behind = True
                return found
            return {k: changed[0] if k == key else doc for k, doc in found.items()}

        async def releases_of(self, projects, **options):
            found = await super().releases_of(projects, **options)
            if not self.behind:
                return found
            return [(p, [d for d in r if d["version"] != "77.0"]) for p, r in found]

    monkeypatch.setattr(opml_watcher, "Store", FromACopyBehind)
    watcher = OpmlWatcher(world.db, debounce=0.05)
    watcher.startService()
    try:
        assert await wait_for(lambda: _all_have_opml(world))
        if lag == "an older project":
            changed.append(await world.db.get(key))  # (as it is now, its OPML written)
            await world.db.put({**changed[0], "summary": "after the change"})
            expected = b"after the change"
        else:
            changed.append(True)
            world.index.publish(key, "77.0")
            await run_pass(world.importer())
            expected = b'text="77.0"'
        assert await wait_for(lambda: _opml_contains(world.db, key, expected))
        assert len(reads) >= 3 and lagging["left"] == 0  # (read twice behind, then in step)
        assert watcher.behind == {}
    finally:
        await watcher.stopService()


@pytest_twisted.ensureDeferred
async def test_copies_that_stay_behind_are_read_as_they_are_past_the_last_wait(
        world, monkeypatch):
    """No copy stays behind that long but a down node's: past the last wait the read is
    taken as it is, said on /status, and the project holds back nothing for good."""
    from pypioncouch import opml_watcher
    from pypioncouch.store import Store

    monkeypatch.setattr(opml_watcher, "BEHIND_WAITS", (0.05, 0.1))
    await run_pass(world.importer(), full=True)
    key = normalize(world.index.dataset.name(5))
    stale, reads = [], []

    class AlwaysBehind(Store):  # (the watcher's reads only: not the sync's)
        async def project_documents(self, keys):
            found = await super().project_documents(keys)
            if key in keys and stale:
                reads.append(key)
                return {k: stale[0] if k == key else doc for k, doc in found.items()}
            return found

    monkeypatch.setattr(opml_watcher, "Store", AlwaysBehind)
    watcher = OpmlWatcher(world.db, debounce=0.05)
    watcher.startService()
    try:
        assert await wait_for(lambda: _all_have_opml(world))
        stale.append(await world.db.get(key))
        await world.db.put({**stale[0], "summary": "never read"})

        async def idle():
            backlog = watcher.backlog
            return (len(reads) >= 3 and not backlog and not backlog.running
                    and backlog.safe_seq == backlog.last_seq)
        assert await wait_for(idle)
        assert len(reads) == 3 and watcher.behind == {}
        assert f"copies of {key} stayed behind" in watcher.status.last_error
    finally:
        await watcher.stopService()


async def _opml_contains(db, key, needle):
    try:
        return await _contains(db, key, needle)
    except NotFound:
        return False


def test_a_read_is_behind_the_feed_when_a_document_is_older_or_missing():
    named = FeedRevisions(kept=3)
    named.saw("a", "2-x")
    named.saw("a:1.0", "3-y")
    named.saw("a:2.0", "1-z", deleted=True)
    mark = named.count
    assert named.behind({"a": "2-x", "a:1.0": "3-y", "a:3.0": "1-w"}, mark) is None
    assert named.behind({"a": "2-x", "a:1.0": "2-v"}, mark) == "a:1.0"  # (older)
    assert named.behind({"a": "2-q"}, mark) == "a"  # (a sibling of the same generation)
    assert named.behind({"a": "3-n"}, mark) is None  # (newer: its change is on the way)
    assert named.behind({"a": None}, mark) == "a"  # (named live, not found)
    assert named.behind({"a:2.0": None}, mark) is None  # (named removed, not found)
    assert named.behind({"a:2.0": "1-old"}, mark) == "a:2.0"  # (named removed, found)
    named.saw("a", "3-m")  # (named after the read began: not this read's to show)
    assert named.behind({"a": "2-x"}, mark) is None
    named.saw("b", "1-b")  # (a fourth document: the oldest named is forgotten)
    assert named.behind({"a:1.0": "1-old"}, named.count) is None
    named.settled(["a", "b"], named.count)
    assert len(named) == 1
    named.forget_project("a")
    assert len(named) == 0


@pytest_twisted.ensureDeferred
async def test_a_database_deleted_and_created_again_keeps_no_checkpoint_of_the_old_one(
        world, monkeypatch):
    """An operator starts over under a running daemon: the database deleted with
    batches in flight, then created again. What the old database's batches finish is
    let be; the new database's checkpoint is never a seq of the old one (a restart
    would resume from it: on pouchdb-server, past the new database's changes); and
    every project imported into the new database gets its opml.xml."""
    from pypioncouch import follow, opml_watcher

    monkeypatch.setattr(follow, "PROBE_SECONDS", 0.5)  # (pouchdb-server: how soon it sees)
    await run_pass(world.importer(), full=True)
    release = defer.Deferred()
    real_regenerate = opml_watcher.regenerate_many

    async def held(db, keys, *args):
        if not release.called:
            await release
        return await real_regenerate(db, keys, *args)

    monkeypatch.setattr(opml_watcher, "regenerate_many", held)
    watcher = OpmlWatcher(world.db, debounce=0.05)
    watcher.startService()
    try:
        async def in_flight():  # (all taken, but the due ones a held batch holds, or as
            backlog = watcher.backlog  # many batches as may run)
            waiting = [key for key in (*backlog.again, *backlog.due)
                       if key not in backlog.running]
            return bool(watcher.batches) and (
                not waiting or len(watcher.batches) >= watcher.in_flight)
        assert await wait_for(in_flight)
        assert watcher.backlog.last_seq not in (0, None)
        await world.db.delete_database()

        async def noticed():  # (the follower starts the new database over from 0)
            return watcher.follower.since == 0 and not watcher.follower.live
        assert await wait_for(noticed)  # (the old batches still in flight)
        await world.db.ensure()
        release.callback(None)

        async def settled():
            return not watcher.batches
        assert await wait_for(settled)
        async def following():
            return watcher.follower.live
        assert await wait_for(following, timeout=40.0)  # (the new database, from 0)
        await sleep(0.5)  # (a save of the old seq, if any, has landed; then 0)
        assert (await world.db.get_local(CHECKPOINT))["seq"] == 0  # written anew
        assert watcher.status.opml_error is None  # (the old batches' 404s are not said)

        await run_pass(world.importer(), full=True)
        assert await wait_for(lambda: _all_have_opml(world))

        async def idle():  # every change of the new database passed, and saved
            backlog = watcher.backlog
            return (not backlog and not backlog.running and
                    backlog.safe_seq == backlog.last_seq == watcher.saved_seq)
        assert await wait_for(idle)
        assert (await world.db.get_local(CHECKPOINT))["seq"] == watcher.saved_seq
    finally:
        if not release.called:
            release.callback(None)  # (the held batches, or stopping waits for ever)
        await watcher.stopService()

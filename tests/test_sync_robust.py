"""The sync engine under faults, crashes, big projects, old and new PyPI APIs."""

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq

from pypioncouch.testing.dataset import normalize
from pypioncouch.couch import CouchDB, CouchError
from pypioncouch.store import Store
from pypioncouch.checkpoint import CHECKPOINT
from pypioncouch.sync import run_pass
from pypioncouch.testing.pypi import SimulatorProcess
from pypioncouch.testing.server import FAULT_KINDS

from .helpers import assert_matches_simulator, sleep, stored_json_api, stored_project
from .test_web import serve

BIN = Path(sys.executable).parent


@pytest_twisted.ensureDeferred
async def test_faults_of_every_kind_change_nothing(world):
    w = world(projects=80, seed=21)
    w.resource.faults.__init__(0.20, FAULT_KINDS, seed=3, timeout_seconds=3)
    importer = w.importer(timeout=1.0, retries=8, backoff=0.02)
    summary = await run_pass(importer, full=True)
    for name in ("Faulty_One", "Faulty_Two"):
        w.index.publish(name, "1.0")
    w.index.yank(normalize(w.index.dataset.name(30)),
                 list(w.index.get(w.index.dataset.name(30)).releases)[0], "x")
    summary2 = await run_pass(w.importer(timeout=1.0, retries=8, backoff=0.02))
    # The faults were there (counted before the plan is reset below): ~20 expected at
    # this rate, of most kinds (nine of the ten with this seed; a few may be missing by chance).
    injected = dict(w.resource.faults.injected)
    assert sum(injected.values()) >= 10 and len(injected) >= 6, injected
    # a project may be left pending by bad luck; a pass without faults finishes it
    w.resource.faults.__init__(0.0)
    await run_pass(w.importer())
    await assert_matches_simulator(w.db, w.index)
    assert summary.projects + summary2.projects >= 80
    assert importer.pypi.retried > 0


@pytest_twisted.ensureDeferred
async def test_a_huge_project_stays_under_the_document_limit(world):
    w = world(projects=8, seed=2, heavy=True)  # index 6: 3,000 releases; 7: 5 MB description
    summary = await run_pass(w.importer(), full=True)
    assert summary.pending == 0, summary.errors
    for index in (6, 7):
        key = normalize(w.index.dataset.name(index))
        doc = await w.db.get(key)
        assert len(json.dumps(doc).encode()) < 8 * 1024 * 1024
        assert await stored_json_api(w.db, key) == w.index.json_api(key)[1]
    many = await w.db.get(normalize(w.index.dataset.name(6)))
    assert len(many["versions"]) == 3000


@pytest_twisted.ensureDeferred
async def test_a_description_too_large_for_a_document_is_kept_whole_and_holds_back_nothing(
        world):
    """A release whose description alone passes CouchDB's 8 MB document limit (Apache
    CouchDB refuses a whole _bulk_docs for one such document): the description is kept
    whole beside its document, the JSON API answers it byte for byte, every other
    project lands, and the next pass does not write it again."""
    w = world(projects=12, seed=9)
    text = "A description longer than one CouchDB document may be. \u2603\n" * 160_000
    w.index.publish("Verbose", "1.0", description=text)  # (about 9.6 MB as UTF-8)
    summary = await run_pass(w.importer(), full=True)
    assert summary.pending == 0, summary.errors
    await assert_matches_simulator(w.db, w.index)
    stored = await w.db.get("verbose:1.0")
    assert len(json.dumps(stored).encode()) < 1024 * 1024  # (the text is apart)
    # A newer release, then a yank of the older one (its document is written again
    # without info): it keeps its own metadata, text and all.
    w.index.publish("Verbose", "2.0", description="Short now.")
    w.index.yank("Verbose", "1.0", "too wordy")
    assert (await run_pass(w.importer())).projects == 1
    await assert_matches_simulator(w.db, w.index)
    _, releases = await stored_project(w.db, "verbose")
    assert releases[0]["yanked_reason"] == "too wordy"
    assert releases[0]["info"]["description"] == text
    assert (await run_pass(w.importer(), full=True)).projects == 0
    front, port, url = serve(w.db, syncing=False)
    try:
        for path in ("pypi/verbose/1.0/json", "pypi/verbose/json", "simple/verbose/"):
            ours = await treq.get(f"{url}/{path}")
            theirs = await treq.get(f"{w.url}/{path}")
            assert (ours.code, await ours.content()) == (200, await theirs.content()), path
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_changelog_paging_past_the_cap(world):
    w = world(projects=30, seed=4)
    await run_pass(w.importer(), full=True)
    w.resource.xmlrpc.changelog_limit = 7
    for n in range(20):
        w.index.publish("Paged.Project", f"1.{n}")
    summary = await run_pass(w.importer())
    assert (await w.db.get_local(CHECKPOINT))["serial"] == w.index.last_serial
    assert len((await w.db.get("paged-project"))["versions"]) == 20
    assert summary.pending == 0


def test_pypis_words_in_a_log_line_are_its_text_not_a_format(world):
    from twisted.logger import formatEvent, globalLogPublisher

    from pypioncouch.pypi import MethodGone

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        importer = world(projects=1).importer()
        importer._fall_back_to_simple(MethodGone(-32601, "gone {project} {0}", "http://x/"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = [formatEvent(event) for event in events]
    assert "PyPI no longer serves the XML-RPC changelog or listing (gone {project} {0}); " \
        "following " \
        "the /simple/ index serials instead" in said, said


@pytest_twisted.ensureDeferred
async def test_falls_back_to_the_simple_index_when_the_changelog_is_gone(world):
    w = world(projects=20, seed=6)
    await run_pass(w.importer(), full=True)
    w.resource.xmlrpc.gone = {"changelog_since_serial", "changelog_last_serial"}
    w.index.publish("After.The-Change", "2.0")
    key = normalize(w.index.dataset.name(5))
    w.index.publish(key, "9.0")
    w.index.remove_project(normalize(w.index.dataset.name(6)))  # no row to tell
    importer = w.importer()
    summary = await run_pass(importer)
    assert importer.status.changes_source == "simple"
    assert any("no longer serves the XML-RPC changelog" in m for m in importer.status.warnings)
    assert summary.pending == 0
    await assert_matches_simulator(w.db, w.index)


@pytest.mark.parametrize("status", [404, 410])
@pytest_twisted.ensureDeferred
async def test_falls_back_to_the_simple_index_when_the_xmlrpc_endpoint_is_gone(world, status):
    """The day PyPI takes the endpoint itself away (not a Fault per method: an HTTP
    error for every call), a mirror keeps syncing, and a new one can start."""
    w = world(projects=15, seed=6)
    await run_pass(w.importer(), full=True)
    w.resource.xmlrpc.endpoint_status = status
    w.index.publish(normalize(w.index.dataset.name(5)), "9.0")
    w.index.remove_project(normalize(w.index.dataset.name(6)))  # no row to tell
    importer = w.importer()
    summary = await run_pass(importer)
    assert importer.status.changes_source == "simple" and summary.pending == 0
    said = [m for m in importer.status.warnings if "no longer serves the XML-RPC" in m]
    assert said and f"(HTTP {status} " in said[0], said
    await assert_matches_simulator(w.db, w.index)
    # Asked again an hour later (not before): still gone, then answering again.
    from pypioncouch.sync import XMLRPC_RECHECK

    importer.fell_back_at -= XMLRPC_RECHECK + 1
    await run_pass(importer)
    assert importer.status.changes_source == "simple"
    w.resource.xmlrpc.endpoint_status = None
    await run_pass(importer)
    assert importer.status.changes_source == "simple"
    importer.fell_back_at -= XMLRPC_RECHECK + 1
    w.index.publish(normalize(w.index.dataset.name(7)), "9.1")
    assert (await run_pass(importer)).projects == 1
    assert importer.status.changes_source == "xmlrpc"
    await assert_matches_simulator(w.db, w.index)


@pytest_twisted.ensureDeferred
async def test_a_passing_404_from_the_xmlrpc_endpoint_is_asked_again(world):
    """A proxy's or a CDN's 404 for a moment does not move a daemon to the /simple/
    index for the rest of its life."""
    w = world(projects=6, seed=6)
    await run_pass(w.importer(), full=True)
    w.resource.xmlrpc.endpoint_status, w.resource.xmlrpc.endpoint_calls = 404, 2
    w.index.publish(normalize(w.index.dataset.name(2)), "9.0")
    importer = w.importer()
    summary = await run_pass(importer)
    assert importer.status.changes_source == "xmlrpc" and summary.projects == 1
    assert importer.pypi.retried == 2


@pytest_twisted.ensureDeferred
async def test_a_first_import_starts_when_the_xmlrpc_endpoint_is_gone(world):
    w = world(projects=6, seed=7)
    w.resource.xmlrpc.endpoint_status = 404
    importer = w.importer()
    assert (await run_pass(importer, full=True)).projects == 6
    assert importer.status.changes_source == "simple"
    await assert_matches_simulator(w.db, w.index)


@pytest_twisted.ensureDeferred
async def test_a_first_import_without_xmlrpc_lists_from_the_simple_index(world):
    """A new mirror the day XML-RPC goes: the listing comes from /simple/, and the
    passes after it follow the index's serials."""
    w = world(projects=15, seed=6)
    w.resource.xmlrpc.gone = {"changelog_since_serial", "changelog_last_serial",
                              "list_packages_with_serial"}
    importer = w.importer()
    summary = await run_pass(importer)
    assert importer.status.changes_source == "simple" and summary.projects == 15
    assert any("no longer serves the XML-RPC changelog or listing" in m
               for m in importer.status.warnings)
    await assert_matches_simulator(w.db, w.index)
    w.index.publish(normalize(w.index.dataset.name(3)), "9.0")
    await run_pass(w.importer())
    await assert_matches_simulator(w.db, w.index)


@pytest_twisted.ensureDeferred
async def test_an_index_without_serials_is_refused_in_one_line(world):
    """Nothing to follow changes by: said, instead of a checkpoint without a serial
    that every later pass would trip on."""
    from array import array

    from pypioncouch.pypi import Listing, PyPIError

    w = world(projects=3, seed=6)
    w.resource.xmlrpc.gone = {"changelog_last_serial"}
    importer = w.importer()

    async def index_without_serials():
        names = w.index.dataset.names()
        return None, Listing(names, array("q", [Listing.NO_SERIAL] * len(names)))

    importer.pypi.simple_index = index_without_serials
    with pytest.raises(PyPIError) as error:
        await run_pass(importer)
    assert str(error.value) == (
        "the /simple/ index gives no serials (X-PyPI-Last-Serial, _last-serial): only an "
        f"index that does can be followed ({w.url.rstrip('/')}/simple/)")
    assert await w.db.get_local(CHECKPOINT) is None


@pytest_twisted.ensureDeferred
async def test_legacy_xmlrpc_source_and_its_automatic_retirement(world):
    w = world(projects=12, seed=8, legacy_xmlrpc=True)
    key = normalize(w.index.dataset.name(2))
    yanked = next(v for v, r in w.index.get(key).releases.items() if r.files)
    w.index.yank(key, yanked, "broken <build>")
    importer = w.importer(source="xmlrpc")
    summary = await run_pass(importer, full=True)
    assert summary.projects == 12 and importer.source == "xmlrpc"
    stored = json.loads(await stored_json_api(w.db, key))
    truth = json.loads(w.index.json_api(key)[1])
    assert stored["info"]["summary"] == truth["info"]["summary"]

    def files_of(answer, *fields):
        return {v: [[f["digests"]["sha256"], *(f.get(name) for name in fields)]
                    for f in files] for v, files in answer["releases"].items()}

    # What XML-RPC never said, from the Simple page: a yank (pip must not take the
    # release) and PEP 658 metadata.
    assert files_of(stored, "yanked", "yanked_reason", "core-metadata") == \
        files_of(truth, "yanked", "yanked_reason", "core-metadata")
    assert stored["releases"][yanked][0]["yanked_reason"] == "broken <build>"
    # Asked without a serial (missing from a listing, a retry): its own, from its
    # Simple page, never null (a null serial is older than any, written over by any).
    answer = await importer.pypi.legacy_project(w.index.dataset.name(2))
    assert answer.serial == answer.payload["last_serial"] == w.index.get(key).last_serial
    # Today's PyPI answers those methods with a Fault: say so once, use the JSON API.
    w.resource.xmlrpc.legacy = False
    w.index.publish(key, "3.0")
    importer = w.importer(source="xmlrpc")
    await run_pass(importer)
    assert importer.source == "json"
    assert any("no longer serves XML-RPC release data" in m for m in importer.status.warnings)
    assert "3.0" in (await w.db.get(key))["versions"]


@pytest_twisted.ensureDeferred
async def test_legacy_xmlrpc_source_takes_no_yank_from_a_stale_simple_page(world):
    """The Simple page says the yanks XML-RPC does not: one older than the changelog's
    serial stored a yank made since as not yanked, and at that serial, for good."""
    from twisted.internet import reactor

    w = world(projects=12, seed=8, legacy_xmlrpc=True, stale_seconds=600)
    w.index.clock = reactor.seconds
    await run_pass(w.importer(source="xmlrpc"), full=True)
    w.index.stale_simple = True
    key = normalize(w.index.dataset.name(2))
    yanked = next(v for v, r in w.index.get(key).releases.items() if r.files)
    w.index.yank(key, yanked, "broken")
    summary = await run_pass(w.importer(source="xmlrpc", stale_retries=1))
    assert summary.pending == 1 and "stale: the Simple page has serial" in summary.errors[0]
    w.index.stale_seconds = 0
    w.index._stale.clear()
    summary = await run_pass(w.importer(source="xmlrpc"))
    assert summary.pending == 0, summary.errors
    stored = json.loads(await stored_json_api(w.db, key))
    assert stored["releases"][yanked][0]["yanked_reason"] == "broken"
    assert (await w.db.get(key))["last_serial"] == w.index.get(key).last_serial


async def imported_behind_a_stale_cdn(world, stale_seconds):
    """A world imported in full whose JSON API then serves copies ``stale_seconds``
    old; returns it and the key of a project to change."""
    from twisted.internet import reactor

    w = world(projects=10, seed=3, stale_seconds=stale_seconds)
    w.index.clock = reactor.seconds
    await run_pass(w.importer(), full=True)
    return w, normalize(w.index.dataset.name(4))


@pytest_twisted.ensureDeferred
async def test_a_stale_cdn_copy_is_retried_not_stored(world):
    w, key = await imported_behind_a_stale_cdn(world, 1.5)
    serial = w.index.publish(key, "8.0")
    summary = await run_pass(w.importer(stale_retries=3))
    stored = await w.db.get(key)
    assert stored["last_serial"] == serial and "8.0" in stored["versions"]
    assert summary.pending == 0


@pytest_twisted.ensureDeferred
async def test_a_stale_copy_that_stays_stale_is_kept_pending(world):
    w, key = await imported_behind_a_stale_cdn(world, 600)
    w.index.publish(key, "8.0")
    summary = await run_pass(w.importer(stale_retries=1))
    assert summary.pending == 1 and "stale" in summary.errors[0]
    checkpoint = await w.db.get_local(CHECKPOINT)
    assert key in checkpoint["pending"]
    w.index.stale_seconds = 0
    w.index._stale.clear()
    summary = await run_pass(w.importer())
    assert summary.pending == 0 and "8.0" in (await w.db.get(key))["versions"]


@pytest_twisted.ensureDeferred
async def test_a_pending_project_another_writer_removed_since_is_not_asked_for_ever(world):
    """Two writers on one database: one keeps a project pending at a serial (a stale
    copy), the other removes the project past it and saves its checkpoint, which the
    first's save merges. The removal's changelog row is then behind both; asked, PyPI's
    404 for the serial wanted looked like a CDN's stale copy at every pass."""
    w = world(projects=10, seed=3)
    await run_pass(w.importer(), full=True)
    key = normalize(w.index.dataset.name(4))
    wanted = w.index.publish(key, "8.0")
    removed_at = w.index.remove_project(key)
    await run_pass(w.importer())  # (the other writer: removes it)
    checkpoint = await w.db.get_local(CHECKPOINT)
    assert checkpoint["serial"] >= removed_at and checkpoint["pending"] == {}
    await w.db.put_local(CHECKPOINT, {**checkpoint, "pending": {key: wanted}})
    summary = await run_pass(w.importer(stale_retries=1))
    assert summary.errors == [] and summary.pending == 0, summary
    assert (await w.db.get_local(CHECKPOINT))["pending"] == {}
    # A project created again after the removal is still asked for its serial.
    recreated = w.index.publish(key, "9.0")
    checkpoint = await w.db.get_local(CHECKPOINT)
    await w.db.put_local(CHECKPOINT, {**checkpoint, "serial": recreated,
                                      "pending": {key: recreated}})
    summary = await run_pass(w.importer(stale_retries=1))
    assert summary.pending == 0 and "9.0" in (await w.db.get(key))["versions"]


@pytest_twisted.ensureDeferred
async def test_a_full_import_from_a_cached_listing_loses_no_change_made_since(world):
    """PyPI keeps the XML-RPC listing for up to an hour (reference §5): a change made
    after the copy it serves is not in it, though the serial read before listing is
    newer. The next pass must still bring it."""
    w = world(projects=20, seed=12)
    await run_pass(w.importer(), full=True)
    w.resource.listing.freeze(w.index)  # the cached copy
    changed = normalize(w.index.dataset.name(3))
    w.index.publish(changed, "9.0")
    w.index.publish("Created.Since", "1.0")
    summary = await run_pass(w.importer(), full=True)  # (a --fullimport run again)
    assert summary.projects == 0, summary  # the listing showed nothing new
    w.resource.listing.freeze(None)
    await run_pass(w.importer())
    assert "9.0" in (await w.db.get(changed))["versions"]
    await assert_matches_simulator(w.db, w.index)


@pytest_twisted.ensureDeferred
async def test_following_the_simple_index_a_stale_copy_stays_pending_until_fresh(world):
    """Past the pass that saw the change, the index no longer names the project (its
    serial is behind the checkpoint): only the pending entry remembers it, and it must
    keep refusing the stale copy."""
    w, key = await imported_behind_a_stale_cdn(world, 600)
    serial = w.index.publish(key, "8.0")
    for _ in range(2):
        summary = await run_pass(w.importer(changes="simple", stale_retries=1))
        assert summary.pending == 1 and "stale" in summary.errors[0], summary
        assert (await w.db.get_local(CHECKPOINT))["pending"] == {key: serial}
    w.index.stale_seconds = 0
    w.index._stale.clear()
    summary = await run_pass(w.importer(changes="simple"))
    assert summary.pending == 0 and "8.0" in (await w.db.get(key))["versions"]


@pytest_twisted.ensureDeferred
async def test_a_checkpoint_ahead_of_pypi_is_said_not_followed_in_silence(world):
    """PyPI's serials only grow: a checkpoint past PyPI's last serial is another
    index's, or someone else's write (a _local document takes anyone's writes on a
    database without members); nothing would ever be read after it."""
    w = world(projects=10, seed=3)
    await run_pass(w.importer(), full=True)
    ahead = w.index.last_serial + 1000
    doc = await w.db.get_local(CHECKPOINT)
    await w.db.put_local(CHECKPOINT, {**doc, "serial": ahead})
    w.index.publish(normalize(w.index.dataset.name(2)), "9.0")
    summary = await run_pass(w.importer())
    assert summary.stale == (
        f"the listing from {w.url}/ is older than our checkpoint (serial "
        f"{w.index.last_serial} < {ahead}): nothing written or removed from it"), summary


@pytest_twisted.ensureDeferred
async def test_a_stale_simple_page_without_files_is_not_taken_for_an_empty_project(world):
    """A project's first release, behind a CDN that still serves the JSON API's 404 and
    the Simple page of before (no files, an older serial): a stale answer to ask again,
    not "a project without releases" (which removes the releases stored)."""
    from twisted.internet import reactor

    w = world(projects=10, seed=3)
    w.index.clock = reactor.seconds
    w.index.create_project("Empty.Then.Not")
    await run_pass(w.importer(), full=True)
    w.index.stale_seconds, w.index.stale_simple = 600, True
    w.index.publish("Empty.Then.Not", "1.0")
    summary = await run_pass(w.importer(stale_retries=1))
    assert summary.pending == 1 and "stale" in summary.errors[0], summary
    assert "empty-then-not" in (await w.db.get_local(CHECKPOINT))["pending"]
    heal(w)
    summary = await run_pass(w.importer())
    assert summary.pending == 0 and (await w.db.get("empty-then-not"))["versions"] == ["1.0"]


@pytest_twisted.ensureDeferred
async def test_a_new_project_behind_a_stale_cdn_404_is_not_stored_empty_or_skipped(world):
    """A CDN's cached 404 for a project new since: the changelog says it exists, its
    Simple page lists its file. Neither "gone" nor "a project without releases"."""
    w, _ = await imported_behind_a_stale_cdn(world, 600)
    w.index.publish("Brand.New", "1.0")
    summary = await run_pass(w.importer(stale_retries=1))
    assert summary.pending == 1 and "stale" in summary.errors[0], summary
    assert await w.db.get_or_none("brand-new") is None
    assert "brand-new" in (await w.db.get_local(CHECKPOINT))["pending"]
    w.index.stale_seconds = 0
    w.index._stale.clear()
    summary = await run_pass(w.importer())
    assert summary.pending == 0 and (await w.db.get("brand-new"))["versions"] == ["1.0"]


@pytest_twisted.ensureDeferred
async def test_the_xmlrpc_rate_limit_fault_is_waited_out(world):
    w = world(projects=5, seed=1, xmlrpc_rate_limit=2)
    w.resource.xmlrpc.rate_window = 2.0
    importer = w.importer()
    await run_pass(importer, full=True)  # 2 calls: serial + listing
    summary = await run_pass(importer)  # over the limit: waits ~2 s, then goes on
    assert summary.serial == w.index.last_serial
    assert importer.pypi.retried >= 1


@pytest_twisted.ensureDeferred
async def test_the_daemon_waits_for_the_xmlrpc_rate_limit_to_reset(world):
    """Every XML-RPC call counts against PyPI's limit: a daemon whose pass failed on it
    asks again when PyPI said the limit resets, not on its own backoff's first beats."""
    from pypioncouch.service import SyncService

    from .helpers import sleep

    import re

    w = world(projects=4, seed=1, xmlrpc_rate_limit=2)
    w.resource.xmlrpc.rate_window = 6.0
    await run_pass(w.importer(), full=True)  # 2 calls: serial + listing
    importer = w.importer()
    # (as for a limit longer than the daemon's client waits inside a pass, 300 s)
    importer.pypi.max_retry_after = 0.0
    calls = w.resource.xmlrpc.calls.copy()
    service = SyncService(importer, interval=0.1)
    service.startService()
    try:
        await sleep(1.5)  # failed at once, then waits (backoff alone: 0.1, 0.2, 0.4 s...)
        assert sum((w.resource.xmlrpc.calls - calls).values()) == 1
        assert re.search(r"Limit may reset in [1-6] seconds",
                         importer.status.last_sync_error), importer.status.last_sync_error
        await a_pass_succeeded(importer.status)
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_removal_does_not_hide_a_daemon_that_writes_nothing_pypi_answers(world):
    """A removal row is written without asking PyPI: a pass whose every fetched
    project failed (here, stale copies from the CDN) but which removed one is still
    a pass that wrote nothing PyPI answered (/health says so past --max-lag)."""
    from twisted.internet import reactor

    from pypioncouch.service import SyncService

    w = world(projects=6, seed=3)
    await run_pass(w.importer(), full=True)
    changed, removed = (normalize(w.index.dataset.name(n)) for n in (1, 2))
    w.index.clock = reactor.seconds
    w.index.stale_seconds = 600  # (the CDN serves the copy before the change)
    w.index.publish(changed, "77.0")
    w.index.remove_project(removed)
    importer = w.importer(stale_retries=0)
    service = SyncService(importer, interval=3600)
    service.startService()
    try:
        await a_pass_succeeded(importer.status)
    finally:
        await service.stopService()
    assert importer.status.projects_deleted == 1 and importer.status.pending == 1
    assert importer.status.stuck_since is not None


@pytest_twisted.ensureDeferred
async def test_a_full_import_that_cannot_read_its_checkpoint_stops_its_listing(world):
    """(PyPI's listing of 700,000 names, asked for while the database is prepared, is
    not left running, nor its failure unheard.)"""
    from twisted.internet import defer

    from pypioncouch.couch import Unauthorized

    w = world(projects=2, seed=3)
    importer = w.importer()
    listing = defer.Deferred()

    async def listing_under_way():
        return await listing

    async def unreadable():
        raise Unauthorized("you are not a server admin")

    importer.fetch_listing = listing_under_way
    importer.load_checkpoint = unreadable
    with pytest.raises(Unauthorized):
        await run_pass(importer, full=True)
    assert listing.called  # (cancelled)
    listing.addErrback(lambda failure: failure.trap(defer.CancelledError))


@pytest_twisted.ensureDeferred
async def test_a_database_deleted_under_the_daemon_is_created_and_filled_again(world):
    """As at its start: the database, its design document, a full import (before,
    Apache CouchDB's daemon asked PyPI for its whole listing and failed, at every
    pass; pouchdb-server's imported into a database without its design document)."""
    from pypioncouch import couchapp
    from pypioncouch.service import SyncService

    w = world(projects=6, seed=3)
    importer = w.importer()
    service = SyncService(importer, interval=0.2)

    async def until(check, what):
        for _ in range(300):
            try:
                if await check():
                    return
            except CouchError:  # (Apache CouchDB: a 500 while the database is deleted)
                pass
            await sleep(0.1)
        raise AssertionError(f"{what}: {importer.status.last_sync_error}")

    async def imported():
        return importer.status.last_pass_ok and \
            await w.db.get_or_none(couchapp.DESIGN_ID) is not None and \
            len(await Store(w.db).project_ids()) == 6

    service.startService()
    try:
        await until(imported, "the first import")
        listed = w.resource.xmlrpc.calls["list_packages_with_serial"]
        await w.db.delete_database()
        await until(lambda: w.db.exists(), "the database created again")
        await until(imported, "imported again")
        assert w.resource.xmlrpc.calls["list_packages_with_serial"] == listed + 1
    finally:
        await service.stopService()
    await w.settled()
    await assert_matches_simulator(w.read_db, w.index)


@pytest_twisted.ensureDeferred
async def test_an_import_again_that_fails_is_not_synced_yet(world):
    """The database deleted under the daemon, its import again failing (PyPI away):
    the serial synced was the old database's, and /health said 200 ("retrying") for a
    database half empty."""
    from pypioncouch.pypi import PyPIError
    from pypioncouch.web.health import HealthPolicy

    w = world(projects=6, seed=3)
    importer = w.importer()
    await run_pass(importer, full=True)
    assert importer.status.our_serial == w.index.last_serial
    await w.db.delete_database()
    w.resource.control("xmlrpc", {"endpoint_status": 503})
    with pytest.raises(PyPIError):
        await importer.update()
    importer.status.phase = "retrying"  # (as the daemon's loop says it)
    assert importer.status.our_serial is None
    assert "not synced yet" in HealthPolicy(importer.status).reasons(True)


@pytest_twisted.ensureDeferred
async def test_a_daemon_preparing_a_new_versions_views_is_known_as_synced(world):
    """A new version's views take an hour or more to build at PyPI's size, before the
    first pass: /health said "not synced yet" at once, a load balancer dropping a
    primary whose data was a minute old."""
    from pypioncouch.web.health import HealthPolicy

    w = world(projects=6, seed=3)
    await run_pass(w.importer(), full=True)
    from pypioncouch.service import imported

    restarted = w.importer()  # (a new status: as after a restart)
    await restarted.prepare()
    assert restarted.status.our_serial == w.index.last_serial
    assert HealthPolicy(restarted.status).reasons(True) == []
    # (the backfill and the status sweep wait for the first pass all the same)
    assert restarted.status.phase == "preparing" and not imported(restarted.status)


async def a_pass_succeeded(status, seconds: float = 15.0) -> None:
    """Wait until the daemon's last pass did not fail."""
    for _ in range(int(seconds / 0.05)):
        if status.last_pass_ok:
            return
        await sleep(0.05)
    raise AssertionError(f"no pass succeeded: {status.last_sync_error}")


def test_the_blocking_python_api_from_a_plain_script(couch_server, db_name, tmp_path):
    with SimulatorProcess("--projects", "15", "--seed", "9") as sim:
        script = tmp_path / "mirror.py"
        script.write_text(f"""
from pypioncouch import import_all, update, XmlRpcImporter
s = import_all({couch_server.url!r}, pypi={sim.url!r}, db={db_name!r}, concurrency=4)
print("import", s.projects, s.serial, s.errors)
u = update({couch_server.url!r}, pypi={sim.url!r}, db={db_name!r}, timeout=5.0, guard=True)
print("update", u.projects, u.serial)
print(XmlRpcImporter.__name__)
import base64, urllib.request
from pypioncouch.urls import split_credentials
base, credentials = split_credentials({couch_server.url!r})
request = urllib.request.Request(base + {db_name!r} + "/_design/pypioncouch-guard")
if credentials:
    token = base64.b64encode(":".join(credentials).encode()).decode()
    request.add_header("Authorization", "Basic " + token)
print("guard", "validate_doc_update" in urllib.request.urlopen(request).read().decode())
for options in ({{"concurrency": 0}}, {{"concurrency": 101}}, {{"db": "_users"}},
                {{"timeout": 0}}, {{"timeout": float("nan")}}):
    try:  # (concurrency=0 waited for ever, on a database it had created)
        update({couch_server.url!r}, pypi={sim.url!r}, **options)
    except ValueError as error:
        print("refused", str(error).split(":")[0].split(" from ")[0])
from twisted.internet import reactor
from twisted.internet.threads import blockingCallFromThread
def from_the_reactor():  # (it waited for itself, for ever)
    try:
        update({couch_server.url!r}, pypi={sim.url!r})
    except RuntimeError as error:
        return str(error)
print(blockingCallFromThread(reactor, from_the_reactor))
""")
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=120, check=True).stdout.split("\n")
        assert out[0].startswith("import 15 ") and out[0].endswith(" []")
        assert out[1].startswith("update 0 ")
        assert out[2] == "XmlRpcImporter"
        assert out[3] == "guard True"  # (guard=True, as --guard)
        assert out[4:9] == ["refused concurrency is a number of parallel requests"] * 2 + [
            "refused '_users' is not a database name"] + [
            "refused timeout is a positive number of seconds, not 0",
            "refused timeout is a positive number of seconds, not nan"]
        assert out[9] == ("import_all() and update() block, and cannot be called from "
                          "the reactor's thread: inside a Twisted program, use "
                          "XmlRpcImporter (see README)")


def _kill_at_random_moments(command, rng, rounds, low, high):
    for _ in range(rounds):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=rng.uniform(low, high))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()


async def _matches(db, sim_url):
    listing = await (await treq.get(f"{sim_url}/simple/",
                                    headers={"Accept": "application/vnd.pypi.simple.v1+json"})
                     ).json()
    keys = sorted(normalize(p["name"]) for p in listing["projects"])
    for key in keys:
        answer = await treq.get(f"{sim_url}/pypi/{key}/json")
        body = await answer.content()
        if answer.code == 200:
            assert await stored_json_api(db, key) == body, key
    stored = await Store(db).project_ids()
    assert stored - set(keys) == set(), "stored, not on PyPI"
    assert set(keys) - stored == set(), "on PyPI, not stored"
    return True


@pytest_twisted.ensureDeferred
async def test_a_full_import_killed_at_random_moments_ends_like_a_clean_one(couch_server, db_name):
    rng = random.Random(7)
    with SimulatorProcess("--projects", "300", "--seed", "12", "--latency-ms", "10") as sim:
        command = [str(BIN / "pypioncouch"), "--fullimport", couch_server.url,
                   "--pypi", sim.url, "--db", db_name, "--concurrency", "8", "--quiet"]
        from twisted.internet import threads
        await threads.deferToThread(_kill_at_random_moments, command, rng, 4, 0.8, 2.5)
        code = await threads.deferToThread(subprocess.call, command,
                                           stdout=subprocess.DEVNULL)
        assert code == 0
        db = CouchDB(couch_server.url).database(db_name)
        assert await _matches(db, sim.url)
        assert (await db.get_local(CHECKPOINT))["pending"] == {}


@pytest_twisted.ensureDeferred
async def test_the_daemon_killed_during_updates_converges(couch_server, db_name, tmp_path):
    from twisted.internet import threads

    rng = random.Random(11)
    with SimulatorProcess("--projects", "60", "--seed", "13", "--latency-ms", "5") as sim:
        command = [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile",
                   str(tmp_path / "daemon.log"), "pypioncouch", "--couch", couch_server.url,
                   "--pypi", sim.url + "/", "--db", db_name, "--interval", "0.2",
                   "--listen", "tcp:0:interface=127.0.0.1"]
        sim.control("churn", seconds=0.02, seed=5)  # PyPI changes all the time
        await threads.deferToThread(_kill_at_random_moments, command, rng, 6, 1.0, 3.0)
        sim.control("churn", seconds=0)
        serial = sim.control("state")["last_serial"]
        assert serial > 200  # the churn really happened while the daemon died
        daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            db = CouchDB(couch_server.url).database(db_name)
            for _ in range(150):
                checkpoint = await db.get_local(CHECKPOINT)
                if checkpoint and checkpoint["serial"] >= serial and not checkpoint["pending"]:
                    break
                await sleep(0.2)
            assert checkpoint["serial"] == serial and checkpoint["pending"] == {}
            assert await _matches(db, sim.url)
        finally:
            daemon.send_signal(signal.SIGTERM)
            # twistd stops its services, then reports the signal as its exit status
            assert daemon.wait(15) == -signal.SIGTERM
            assert "Main loop terminated" in (tmp_path / "daemon.log").read_text()


@pytest_twisted.ensureDeferred
async def test_an_http_error_from_the_xmlrpc_endpoint_is_named():
    """What a proxy or a wrong URL answers (here 426) is a clear, one-line cause."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from pypioncouch.pypi import PyPI, PyPIError

    class Refusing(Resource):
        isLeaf = True

        def render(self, request):
            request.setResponseCode(426, b"Upgrade Required")
            return b"no"

    port = reactor.listenTCP(0, Site(Refusing()), interface="127.0.0.1")
    try:
        pypi = PyPI(f"http://127.0.0.1:{port.getHost().port}/", retries=1, backoff=0.01)
        with pytest.raises(PyPIError) as error:
            await pypi.changelog_last_serial()
        assert str(error.value).startswith("HTTP 426 Upgrade Required (http://127.0.0.1:")
        assert "\n" not in str(error.value)
        with pytest.raises(PyPIError) as error:
            await pypi.list_packages_with_serial()
        assert str(error.value).startswith("HTTP 426 Upgrade Required (http://127.0.0.1:")
        assert "list_packages_with_serial" in str(error.value)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_listing_is_read_whole_through_faults_mid_answer():
    """The listing is parsed as it arrives: an answer cut off, malformed, a Fault or a
    5xx is retried, and only a whole listing is returned."""
    from twisted.internet import reactor

    from pypioncouch.pypi import PyPI
    from pypioncouch.testing.pypi import listen, make_simulator

    resource = make_simulator(60, seed=4)
    port, url = listen(resource)
    try:
        expected = {display: resource.index.last_serial_of(key)
                    for key, display in resource.index.listing()}
        for kind in ("truncated", "malformed", "xmlrpc-fault", "503", "reset"):
            resource.control("faults", {"rate": 0.6, "kinds": [kind], "seed": 3})
            pypi = PyPI(url + "/", reactor=reactor, retries=12, backoff=0.001)
            assert await pypi.list_packages_with_serial() == expected, kind
            assert resource.faults.injected[kind] > 0
            await pypi.close()
    finally:
        await port.stopListening()


async def two_writers_on_one_database(world):
    """A world imported in full; then PyPI changes one project twice. Returns the
    world, the project's key, the answer PyPI gave in between (older than the one it
    gives now), and a version that answer has but PyPI since removed."""
    from pypioncouch.pypi import PyPI

    w = world(projects=12, seed=14)
    await run_pass(w.importer(), full=True)
    key = normalize(w.index.dataset.name(5))  # versions 0.9, 1.0, 1.1
    w.index.yank(key, "1.0", "broken")
    older = await PyPI(w.url).project(key)
    w.index.remove_release(key, "0.9")
    w.index.unyank(key, "1.0")
    w.index.publish(key, "2.0")
    assert older.serial < w.index.last_serial
    return w, key, older, "0.9"


def fed(importer, key, answer, gate=None, asked=None):
    """``importer`` gets ``answer`` when it asks PyPI about ``key`` (after ``gate``);
    ``asked`` fires when it asks (it has read the stored project by then)."""
    real = importer.pypi.project

    async def project(name, min_serial=None):
        if normalize(name) != key:
            return await real(name, min_serial)
        if asked is not None and not asked.called:
            asked.callback(None)
        if gate is not None:
            await gate
        return answer

    importer.pypi.project = project
    return importer


async def assert_current(w, key, removed_version):
    project, releases = await stored_project(w.db, key)
    assert project["last_serial"] == w.index.last_serial
    assert removed_version not in {r["version"] for r in releases}
    assert await stored_json_api(w.db, key) == w.index.json_api(key)[1]
    await assert_matches_simulator(w.db, w.index)


@pytest_twisted.ensureDeferred
async def test_an_older_answer_written_after_a_newer_one_changes_nothing(world):
    """Two importers on one database; the slow one's answer is older and arrives
    after the other stored the newer one (it read the database before that)."""
    from twisted.internet import defer

    w, key, older, removed_version = await two_writers_on_one_database(world)
    gate, asked = defer.Deferred(), defer.Deferred()
    slow = defer.ensureDeferred(run_pass(fed(w.importer(), key, older, gate, asked)))
    await asked  # the slow one has read the stored project and waits for PyPI
    fresh = await run_pass(w.importer())
    assert fresh.projects == 1
    gate.callback(None)
    await slow
    await assert_current(w, key, removed_version)


@pytest_twisted.ensureDeferred
async def test_an_older_answer_never_replaces_a_newer_stored_project(world):
    from pypioncouch.sync import Summary, Work

    w, key, older, removed_version = await two_writers_on_one_database(world)
    await run_pass(w.importer())
    late = fed(w.importer(), key, older)
    summary = Summary()
    failures = await late.sync([Work(key, key, None)], summary)  # no serial to skip on
    assert (failures, summary.projects, summary.skipped) == ({}, 0, 1)
    await assert_current(w, key, removed_version)


@pytest_twisted.ensureDeferred
async def test_a_serial_said_in_the_header_only_is_the_one_stored(world):
    """Another index's JSON API may leave ``last_serial`` out of the body: the project
    was stored without a serial, and then any older copy (a CDN's, behind) passed for
    newer and replaced it."""
    from pypioncouch.pypi import PyPI
    from pypioncouch.sync import Summary, Work

    w = world(projects=8, seed=3)
    w.index.body_serial = False
    await run_pass(w.importer(), full=True)
    key = normalize(w.index.dataset.name(4))
    older = await PyPI(w.url).project(key)
    serial = w.index.publish(key, "8.0")
    await run_pass(w.importer())
    stored = await w.db.get(key)
    assert stored["last_serial"] == serial and "8.0" in stored["versions"]
    assert "last_serial" not in stored["pypi"]  # (the body as it came)
    assert (await w.db.get(f"{key}:8.0"))["last_serial"] == serial
    summary = Summary()
    await fed(w.importer(), key, older).sync([Work(key, key, None)], summary)
    assert (summary.projects, summary.skipped) == (0, 1)
    assert "8.0" in (await w.db.get(key))["versions"]


@pytest_twisted.ensureDeferred
async def test_a_release_written_by_an_older_writer_is_repaired(world):
    """The older writer's release landed before the newer writer stored the project
    (whose record says that release is unchanged): it is fetched and written again."""
    from pypioncouch.sync import Summary, Work

    w, key, older, _ = await two_writers_on_one_database(world)
    newer = await w.importer().pypi.project(key)
    # The older writer gets as far as its releases, then the newer one stores all.
    slow = fed(w.importer(), key, older)
    real_bulk = slow.store.write

    async def bulk_write(docs, bases=None, **options):
        # The project documents (not the marks before the releases, whose record of
        # the releases about to change is unknown): the newer writer goes first.
        if bases is not None and all(None not in d["release_digests"].values()
                                     for d in docs):
            await fed(w.importer(), key, newer).sync([Work(key, key, None)], Summary())
        return await real_bulk(docs, bases, **options)

    slow.store.write = bulk_write
    summary = Summary()
    failures = await slow.sync([Work(key, key, None)], summary)
    assert summary.projects == 0 and key in failures
    project = await w.db.get(key)
    assert project["release_digests"]["1.0"] is None  # the older "1.0" is marked
    await run_pass(w.importer())  # the next pass fetches it again
    await assert_current(w, key, "0.9")


def served_stale(w, keys, version):
    """Publish ``version`` of each of ``keys``; PyPI's JSON API serves the copies of
    before for ten minutes (every one of them fails as stale). Returns the serials."""
    w.index.stale_seconds = 600
    return [w.index.publish(key, version) for key in keys]


async def all_have(w, keys, version):
    return all([version in (await w.db.get(key))["versions"] for key in keys])


def heal(w):
    w.index.stale_seconds = 0
    w.index._stale.clear()


@pytest_twisted.ensureDeferred
async def test_more_failures_than_pending_holds_keep_the_checkpoint_and_lose_none(world):
    w = world(projects=20, seed=3)
    keys = [normalize(w.index.dataset.name(i)) for i in range(8, 16)]
    served_stale(w, keys, "8.0")  # before the first import
    summary = await run_pass(w.importer(max_pending=5, stale_retries=0), full=True)
    assert summary.pending == 8 and summary.serial is None
    assert "8 projects failed, more than the 5 the checkpoint keeps to retry: it stays " \
           "unwritten" in str(summary)
    assert await w.db.get_local(CHECKPOINT) is None  # the next pass imports again
    heal(w)
    summary = await run_pass(w.importer(max_pending=5))
    checkpoint = await w.db.get_local(CHECKPOINT)
    assert summary.pending == 0 and checkpoint["pending"] == {}
    assert await all_have(w, keys, "8.0")
    serial = checkpoint["serial"]

    serials = served_stale(w, keys, "9.0")  # an update pass, over a checkpoint
    summary = await run_pass(w.importer(max_pending=5, stale_retries=0))
    assert summary.pending == 8 and summary.serial == serial
    checkpoint = await w.db.get_local(CHECKPOINT)
    assert (checkpoint["serial"], checkpoint["pending"]) == (serial, {})
    heal(w)
    summary = await run_pass(w.importer(max_pending=5))
    assert summary.pending == 0 and summary.serial == serials[-1]
    assert await all_have(w, keys, "9.0")

    serials = served_stale(w, keys[:5], "10.0")  # as many as it keeps: it moves on
    summary = await run_pass(w.importer(max_pending=5, stale_retries=0))
    checkpoint = await w.db.get_local(CHECKPOINT)
    assert checkpoint["serial"] == serials[-1]
    assert sorted(checkpoint["pending"]) == sorted(keys[:5])
    heal(w)
    await run_pass(w.importer(max_pending=5))
    await assert_matches_simulator(w.db, w.index)


@pytest_twisted.ensureDeferred
async def test_a_pass_keeps_the_first_hundred_error_messages_and_counts_the_rest(world):
    w = world(projects=130, seed=3)
    keys = [normalize(name) for name in w.index.dataset.names()[10:130]]
    served_stale(w, keys, "8.0")
    summary = await run_pass(w.importer(stale_retries=0), full=True)
    assert summary.pending == 120
    assert (len(summary.errors), summary.more_errors) == (100, 20)
    assert all("stale" in error for error in summary.errors)


def test_status_keeps_the_latest_twenty_warnings():
    from pypioncouch.status import SyncStatus

    status = SyncStatus()
    for n in range(30):
        status.warn_once(f"warning {n}")
        status.warn_once(f"warning {n}")  # once
    assert status.warnings == [f"warning {n}" for n in range(10, 30)]

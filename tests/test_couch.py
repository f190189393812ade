"""The CouchDB client against a real pouchdb-server."""

import json
import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from pypioncouch.couch import (
    BadResponse, Conflict, CouchDB, CouchError, NotFound, Timeout, Unauthorized, Unreachable,
    encode_params, winning_revision)
from pypioncouch.testing.couchserver import free_port

from .conftest import ADMIN


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_server_info_proves_it_is_couchdb(couch):
    info = await couch.info()  # its welcome, as Apache CouchDB or pouchdb-server says it
    assert info.get("couchdb") == "Welcome" or info.get("express-pouchdb") == "Welcome!", info
    assert info["version"]


@pytest_twisted.ensureDeferred
async def test_ensure_database_is_idempotent(couch, db_name):
    db = couch.database(db_name)
    assert await db.ensure() is True
    assert await db.ensure() is False
    assert (await db.info())["db_name"] == db_name
    assert db_name in await couch.all_dbs()


@pytest_twisted.ensureDeferred
async def test_document_put_get_delete_and_typed_errors(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    rev = await db.put({"_id": "twisted", "summary": "<b>event</b>-driven ☃"})
    doc = await db.get("twisted")
    assert doc["summary"] == "<b>event</b>-driven ☃" and doc["_rev"] == rev
    with pytest.raises(Conflict) as conflict:
        await db.put({"_id": "twisted", "summary": "stale"})
    assert "409" in str(conflict.value)
    await db.delete("twisted", rev)
    with pytest.raises(NotFound):
        await db.get("twisted")
    assert await db.get_or_none("twisted") is None


@pytest_twisted.ensureDeferred
async def test_ids_with_slashes_and_unicode_round_trip(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    for docid in ("a/b?c#d", "zope.interface:5.0+local", "ünï"):
        await db.put({"_id": docid})
        assert (await db.get(docid))["_id"] == docid


@pytest_twisted.ensureDeferred
async def test_bulk_docs_reports_a_conflict_per_document(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    await db.put({"_id": "b"})
    results = await db.bulk_docs([{"_id": "a"}, {"_id": "b"}, {"_id": "c"}])
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].id == "b" and results[1].error == "conflict"
    assert (await db.get("c"))["_rev"] == results[2].rev


@pytest_twisted.ensureDeferred
async def test_bulk_results_follow_the_request_order_under_concurrency(couch, db_name):
    """pouchdb-server answers concurrent _bulk_docs out of order; the client realigns."""
    import random

    db = couch.database(db_name)
    await db.ensure()
    await db.bulk_docs([{"_id": f"d{i:03d}"} for i in range(0, 200, 3)])  # some conflicts
    for round_ in range(10):
        ids = [f"d{i:03d}" for i in range(200)]
        random.Random(round_).shuffle(ids)
        chunks = [ids[k:k + 50] for k in range(0, 200, 50)]
        answers = await defer.gatherResults([defer.ensureDeferred(
            db.bulk_docs([{"_id": i, "round": round_} for i in chunk])) for chunk in chunks])
        for chunk, results in zip(chunks, answers):
            assert [r.id for r in results] == chunk
            for docid, result in zip(chunk, results):
                if result.ok:
                    assert int(result.rev.split("-")[0]) >= 1
                else:
                    assert result.error == "conflict"


@pytest_twisted.ensureDeferred
async def test_all_docs_with_keys_and_ranges(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    await db.bulk_docs([{"_id": name} for name in ("foo", "foo:1.0", "foo:2.0", "foo-bar")])
    answer = await db.all_docs(keys=["foo", "missing"])
    assert answer["rows"][0]["id"] == "foo"
    assert answer["rows"][1]["error"] == "not_found"
    ranged = await db.all_docs(startkey="foo:", endkey="foo:\ufff0")
    assert [row["id"] for row in ranged["rows"]] == ["foo:1.0", "foo:2.0"]


@pytest_twisted.ensureDeferred
async def test_bulk_get_answers_what_a_get_answers(couch, db_name):
    """Live documents as a GET gives them, conflicted ones too (Apache CouchDB's
    _bulk_get answers every leaf); deleted and missing ones left out."""
    db = couch.database(db_name)
    await db.ensure()
    gone = await db.put({"_id": "gone"})
    await db.delete("gone", gone)
    await db.put({"_id": "live", "summary": "kept"})
    await db._request("POST", "_bulk_docs", body={"new_edits": False, "docs": [
        {"_id": "split", "_rev": "1-aaa", "side": "a"},
        {"_id": "split", "_rev": "1-bbb", "side": "b"},
        {"_id": "undead", "_rev": "1-aaa", "side": "live"},
        {"_id": "undead", "_rev": "2-zzz", "_deleted": True,
         "_revisions": {"start": 2, "ids": ["zzz", "yyy"]}}]})
    found = await db.bulk_get(["live", "gone", "missing", "split", "undead", "live"])
    assert sorted(found) == ["live", "split", "undead"]
    assert found["live"]["summary"] == "kept"
    for docid in ("split", "undead"):
        assert found[docid]["_rev"] == (await db.get(docid))["_rev"]
    assert found["split"]["side"] == "b" and found["undead"]["side"] == "live"
    assert await db.bulk_get([]) == {}


@pytest_twisted.ensureDeferred
async def test_a_document_bulk_get_could_not_read_is_not_taken_for_missing():
    """A cluster's _bulk_get may answer an error for one document (a shard's copies
    that did not answer in time): taken for missing, the sync would write the project
    anew over the stored one, and the OPML watcher would leave it as it was. A
    CouchDB stand-in answers as Apache CouchDB 3.5 does (its not_found is missing)."""
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    answers = {"results": [
        {"id": "live", "docs": [{"ok": {"_id": "live", "_rev": "1-a"}}]},
        {"id": "missing", "docs": [{"error": {"id": "missing", "rev": "undefined",
                                              "error": "not_found", "reason": "missing"}}]},
        {"id": "slow", "docs": [{"error": {"id": "slow", "rev": "undefined",
                                           "error": "timeout", "reason": "shard timeout"}}]}]}

    class BulkGet(Resource):
        isLeaf = True

        def render_POST(self, request):
            asked = [d["id"] for d in json.loads(request.content.read())["docs"]]
            request.setHeader("Content-Type", "application/json")
            return json.dumps({"results": [r for r in answers["results"]
                                           if r["id"] in asked]}).encode()

    site = Site(BulkGet())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    db = CouchDB(f"http://u:pw@127.0.0.1:{port.getHost().port}/").database("pypi")
    try:
        assert list(await db.bulk_get(["live", "missing"])) == ["live"]
        with pytest.raises(BadResponse) as error:
            await db.bulk_get(["live", "slow", "missing"])
        assert str(error.value) == ("_bulk_get could not read 'slow': timeout: shard timeout "
                                    f"(http://u:***@127.0.0.1:{port.getHost().port}/pypi)")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_bulk_get_trims_each_document_of_a_large_answer_as_it_comes(couch, db_name):
    """Past 1 MB, each document is handed to ``trim`` as soon as it is parsed (the OPML
    watcher drops 3,000 releases' READMEs so), and the answer is the same otherwise:
    the winning leaf, no deleted or missing documents."""
    db = couch.database(db_name)
    await db.ensure()
    readme = "x" * 300_000
    await db.bulk_docs([{"_id": f"r{n}", "version": f"{n}.0", "info": {"description": readme}}
                        for n in range(6)])  # (1.8 MB of answer)
    await db._request("POST", "_bulk_docs", body={"new_edits": False, "docs": [
        {"_id": "split", "_rev": "1-aaa", "side": "a", "info": {"description": readme}},
        {"_id": "split", "_rev": "1-bbb", "side": "b", "info": {"description": readme}}]})
    trimmed = []

    def trim(doc):
        trimmed.append(doc["_id"])
        doc.pop("info")

    ids = [f"r{n}" for n in range(6)] + ["missing", "split"]
    found = await db.bulk_get(ids, trim=trim)
    assert sorted(found) == ["r0", "r1", "r2", "r3", "r4", "r5", "split"]
    assert found["r3"]["version"] == "3.0" and "info" not in found["r3"]
    assert found["split"]["side"] == "b" and "info" not in found["split"]
    assert {"r0", "r5", "split"} <= set(trimmed)
    small = await db.bulk_get(["r1"], trim=trim)  # (under 1 MB: read whole, as it is)
    assert small["r1"]["info"] == {"description": readme}


@pytest_twisted.ensureDeferred
async def test_a_large_answer_is_read_row_by_row_and_trimmed_as_it_comes(couch, db_name):
    """Rows read whole (small answers) or parsed as they arrive (past ``whole_below``)
    are the same rows; only the latter go through ``trim``, whose dropped bytes are not
    counted as held."""
    db = couch.database(db_name)
    await db.ensure()
    docs = [{"_id": f"foo:{n}", "n": n, "text": "ü" * 3000, "big": 1 << 40, "x": 0.5}
            for n in range(30)]
    await db.bulk_docs(docs)
    trimmed = []

    def trim(row):
        trimmed.append(row["id"])
        return len(row["doc"].pop("text"))

    options = {"startkey": "foo:", "endkey": "foo:\ufff0", "include_docs": True}
    whole, whole_size = await db.rows_sized("_all_docs", trim=trim, **options)
    assert trimmed == [] and [row["doc"]["text"] for row in whole] == ["ü" * 3000] * 30
    streamed, streamed_size = await db.rows_sized("_all_docs", trim=trim, whole_below=1000,
                                                  **options)
    assert trimmed == [f"foo:{n}" for n in sorted(range(30), key=str)]
    assert [row["id"] for row in streamed] == [row["id"] for row in whole]
    assert [{k: v for k, v in row["doc"].items() if k != "text"} for row in whole] == \
        [row["doc"] for row in streamed]
    assert streamed[0]["doc"]["big"] == 1 << 40 and streamed[0]["doc"]["x"] == 0.5
    assert streamed_size == whole_size - 30 * 3000
    none, _ = await db.rows_sized("_all_docs", trim=trim, whole_below=0, startkey="bar:",
                                  endkey="bar:\ufff0")
    assert none == []


@pytest.mark.parametrize("body", [b'{"total_rows": 2, "rows": [{"id": "a"}, {"id"',
                                  b'{"rows": [{"id": "a"} {"id": "b"}]}', b"<html>",
                                  b'{"rows": [{"id": "\xff"}]}'])
@pytest_twisted.ensureDeferred
async def test_an_answer_of_rows_cut_short_or_malformed_is_a_bad_response(body):
    from .helpers import ScriptedHTTP

    for whole_below in (0, 1 << 20):
        http = ScriptedHTTP((200, {"content-type": "application/json"}, body))
        db = CouchDB("http://couch.test:5984/", http=http).database("pypi")
        with pytest.raises(BadResponse, match="not JSON rows"):
            await db.rows_sized("_all_docs", trim=lambda row: 0, whole_below=whole_below)


@pytest_twisted.ensureDeferred
async def test_a_document_over_the_size_limit_is_refused_alone(couch, db_name):
    """Apache CouchDB answers a whole _bulk_docs 413 for one document over its 8 MB
    max_document_size: that document is refused (too_large), the others written.
    (pouchdb-server has no such limit: it writes both.)"""
    db = couch.database(db_name)
    await db.ensure()
    apache = "express-pouchdb" not in await couch.info()
    big = {"_id": "big", "text": "x" * 9_000_000}
    results = await db.bulk_docs([{"_id": "before"}, big, {"_id": "after"}])
    assert [r.id for r in results] == ["before", "big", "after"]
    assert results[0].ok and results[2].ok
    if apache:
        assert (results[1].error, await db.get_or_none("big")) == ("too_large", None)
    else:
        assert results[1].ok
    assert (await db.get("after"))["_id"] == "after"


def test_winning_revision_is_couchdbs_choice():
    assert winning_revision([{"_rev": "1-bbb"}, {"_rev": "1-aaa"}]) == {"_rev": "1-bbb"}
    assert winning_revision([{"_rev": "2-aaa"}, {"_rev": "10-aaa"}]) == {"_rev": "10-aaa"}
    assert winning_revision([{"_rev": "1-aaa"}, {"_rev": "3-zzz", "_deleted": True}]) \
        == {"_rev": "1-aaa"}
    assert winning_revision([{"_rev": "2-b", "_deleted": True}, {"_rev": "3-a", "_deleted": True}]) \
        == {"_rev": "3-a", "_deleted": True}
    assert winning_revision([]) is None


@pytest_twisted.ensureDeferred
async def test_view_query_with_options_and_keys(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    await db.put({"_id": "_design/t", "views": {"by_author": {
        "map": "function (doc) { if (doc.author) emit(doc.author.toLowerCase(), 1); }",
        "reduce": "_count"}}})
    await db.bulk_docs([{"_id": "a", "author": "Glyph"}, {"_id": "b", "author": "glyph"},
                        {"_id": "c", "author": "Amber"}])
    grouped = await db.view("t", "by_author", group=True)
    assert grouped["rows"] == [{"key": "amber", "value": 1}, {"key": "glyph", "value": 2}]
    rows = (await db.view("t", "by_author", keys=["glyph"], reduce=False))["rows"]
    assert sorted(row["id"] for row in rows) == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_attachment_kept_across_update_with_its_stub(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    rev = await db.put({"_id": "p", "v": 1})
    rev = await db.put_attachment("p", rev, "opml.xml", b"<opml/>", "text/x-opml")
    doc = await db.get("p")
    assert doc["_attachments"]["opml.xml"]["stub"] is True
    doc["v"] = 2
    await db.put(doc)  # carries the stub
    content, content_type = await db.get_attachment("p", "opml.xml")
    assert content == b"<opml/>" and content_type.startswith("text/x-opml")


@pytest_twisted.ensureDeferred
async def test_local_documents(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    assert await db.get_local("sync") is None
    await db.put_local("sync", {"serial": 42})
    local = await db.get_local("sync")
    assert local["serial"] == 42
    await db.put_local("sync", {**local, "serial": 43})
    assert (await db.get_local("sync"))["serial"] == 43
    # local documents are not in _changes or _all_docs
    assert (await db.all_docs())["rows"] == []


@pytest_twisted.ensureDeferred
async def test_changes_stream_receives_a_change_written_after_it_started(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    await db.put({"_id": "before"})
    seen = []
    arrived = defer.Deferred()

    def on_change(change):
        seen.append(change)
        if change["id"] == "after" and not arrived.called:
            arrived.callback(None)

    first = await db.changes()
    stream = db.follow(on_change, since=first["last_seq"], include_docs=True,
                       heartbeat_ms=1000)
    await sleep(0.3)
    await db.put({"_id": "after", "n": 7})
    arrived.addTimeout(10, reactor)
    await arrived
    assert [c["id"] for c in seen] == ["after"]
    assert seen[0]["doc"]["n"] == 7
    last = await stream.stop()
    assert last == seen[-1]["seq"]
    # resuming from the opaque seq gives nothing new
    assert (await db.changes(since=last))["results"] == []


@pytest.mark.parametrize("pause", [1.5, 0.0])
@pytest_twisted.ensureDeferred
async def test_a_follower_sees_a_database_deleted_and_created_again(couch, db_name, pause):
    """pouchdb-server keeps a feed on a deleted database open; Apache CouchDB ends it.
    Either way the follower notices a database another program deletes and creates
    again, and follows the new database from its start (its old seqs mean nothing
    there). On pouchdb-server: at its next look, if the database is still gone then
    (an operator starting over: a full import creates it again); created again between
    two looks, by its seq, behind the follower's."""
    from pypioncouch.follow import ChangesFollower

    db = couch.database(db_name)
    await db.ensure()
    seen = []
    follower = ChangesFollower(db, lambda change: seen.append(change["id"]), since=0,
                               after_loss=0, probe_seconds=0.5, max_backoff=1.0)
    follower.startService()
    try:
        old = [f"old-{n}" for n in range(5)]
        await db.bulk_docs([{"_id": docid} for docid in old])
        await until_seen(seen, "old-4")
        other = couch.database(db_name)  # (another program: not through this client)
        await other.delete_database()
        await sleep(pause)
        await other.ensure()
        await other.put({"_id": "new"})
        await until_seen(seen, "new", 10.0)
        assert sorted(seen[:-1]) == old and seen[-1] == "new"  # (each once, in feed order)
    finally:
        await follower.stopService()


def test_a_seq_that_went_back_is_a_database_created_again():
    from pypioncouch.follow import seq_went_back

    assert seq_went_back(7, 2) and not seq_went_back(7, 7) and not seq_went_back(7, 9)
    assert not seq_went_back("7-g1AAAA", "2-g1AAAA")  # (Apache CouchDB: opaque)
    assert not seq_went_back("now", 3) and not seq_went_back(0, 0)


async def until_seen(seen: list, docid: str, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if docid in seen:
            return
        await sleep(0.05)


@pytest_twisted.ensureDeferred
async def test_a_follower_starts_over_at_once_when_its_database_is_created_again(
        couch, db_name):
    """The daemon's sync creates a deleted database again at its next pass, seconds
    later: a follower on the same database starts over on the new one then, not at its
    next look (a minute; pouchdb-server's feed on the old one would have stayed open,
    and the OPML watcher and the web cache would have followed nothing for good)."""
    from pypioncouch.follow import ChangesFollower

    db = couch.database(db_name)
    await db.ensure()
    seen, lost = [], []
    follower = ChangesFollower(db, lambda change: seen.append(change["id"]), since=0,
                               after_loss=0, on_lost=lambda: lost.append(True),
                               probe_seconds=3600, max_backoff=1.0)
    follower.startService()
    try:
        await db.put({"_id": "old"})
        await until_seen(seen, "old")
        await db.delete_database()
        assert await db.ensure() is True
        await db.put({"_id": "new"})
        await until_seen(seen, "new")
        assert seen == ["old", "new"] and lost
    finally:
        await follower.stopService()
    assert db.on_created == []  # (a stopped follower is not called again)


@pytest_twisted.ensureDeferred
async def test_an_error_written_into_a_changes_feed_breaks_it():
    """A cluster writes an error into a feed it began (a node down): the feed is broken
    and says why, not taken as a line to skip while nothing more ever comes."""
    from twisted.web import resource, server

    class Feed(resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader("Content-Type", "application/json")
            request.write(b'{"seq":"1-a","id":"x","changes":[]}\n')
            request.write(b'{"error":"nodedown","reason":"progress not possible"}\n')
            return server.NOT_DONE_YET  # (and stays open, heartbeat or not)

    site = server.Site(Feed())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        db = CouchDB(f"http://127.0.0.1:{port.getHost().port}/").database("pypi")
        seen = []
        stream = db.follow(seen.append, since=0, include_docs=False, heartbeat_ms=60000)
        with pytest.raises(BadResponse, match="the _changes feed sent an error: nodedown: "
                                              "progress not possible"):
            await stream.done.addTimeout(10, reactor)
        assert [change["id"] for change in seen] == ["x"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_connections_leave_no_starting_factory_lines_in_the_log(couch, db_name):
    from twisted.logger import formatEvent, globalLogPublisher

    lines = []

    def observe(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        db = couch.database(db_name)
        await db.ensure()
        for attempt in range(2):  # (a feed reconnects: each connection logged twice)
            changes = []
            stream = db.follow(changes.append, since=0)
            await db.put({"_id": f"doc-{attempt}"})
            for _ in range(50):
                if changes:
                    break
                await sleep(0.05)
            await stream.stop()
        await sleep(0.2)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert changes
    # Every connection made here logs "Starting" first; a "Stopping" alone is another
    # test's idle connection that the server closed meanwhile (Apache CouchDB does).
    assert [line for line in lines if "starting factory" in line.lower()] == []


@pytest_twisted.ensureDeferred
async def test_replicate_copies_all_documents(couch, db_name):
    source = couch.database(db_name)
    await source.ensure()
    await source.bulk_docs([{"_id": f"doc{i}", "i": i} for i in range(20)])
    target = couch.database(db_name + "-copy")
    answer = await couch.replicate(source.url_with_credentials, target.url_with_credentials)
    assert answer["ok"] is True
    assert (await target.info())["doc_count"] == 20


@pytest_twisted.ensureDeferred
async def test_replicate_says_when_the_target_refused_documents(couch, couch_server, db_name):
    import sys

    from twisted.internet import utils

    source = couch.database(db_name)
    await source.ensure()
    await source.bulk_docs([{"_id": f"{kind}{i}"} for kind in ("ok", "bad") for i in range(3)])
    target = couch.database(db_name + "-picky")
    await target.ensure()
    await target.put({"_id": "_design/picky", "validate_doc_update": (
        "function (doc) { if (doc._id.indexOf('bad') === 0) "
        "{ throw({forbidden: 'not here'}); } }")})
    out, err, code = await utils.getProcessOutputAndValue(
        str(Path(sys.executable).parent / "pypioncouch"),
        ["--replicate", source.url_with_credentials, target.url_with_credentials, "--quiet"])
    said = out.decode()
    assert code == 3, (said, err.decode())
    assert said.endswith(": 3 documents written, 3 refused by the target (its "
                         "validate_doc_update or rights)\n"), said
    assert ADMIN[1] not in said
    # Again: nothing new (Apache CouchDB answers with the last run's history then).
    out, err, code = await utils.getProcessOutputAndValue(
        str(Path(sys.executable).parent / "pypioncouch"),
        ["--replicate", source.url_with_credentials, target.url_with_credentials, "--quiet"])
    assert code == 0 and "refused" not in out.decode(), (out.decode(), err.decode())


@pytest_twisted.ensureDeferred
async def test_replicate_given_a_documents_url_says_so(couch, db_name):
    """The last segment of a database URL is the database, any before it a proxy's path
    to the server: a document's URL names a database on a "server" that is one."""
    import sys

    from twisted.internet import utils

    source = couch.database(db_name)
    await source.ensure()
    await source.put({"_id": "doc0"})
    out, err, code = await utils.getProcessOutputAndValue(
        str(Path(sys.executable).parent / "pypioncouch"),
        ["--replicate", source.url_with_credentials + "/doc0",
         couch.database(db_name + "-copy").url_with_credentials, "--quiet"])
    said = out.decode() + err.decode()
    assert code == 1, said
    assert said.strip().splitlines()[-1] == (
        f"pypioncouch: error: --replicate {source.display_url}/doc0 names something inside "
        f"the database {db_name!r} (a document?): give the database's URL, ending with "
        f"/{db_name}"), said
    assert ADMIN[1] not in said
    assert not await couch.database(db_name + "-copy").exists()


async def assert_replication_goes_on(source, target):
    """A document written to ``source`` now arrives at ``target``."""
    await source.put({"_id": "later"})
    for _ in range(300):
        if await target.exists() and await target.get_or_none("later"):
            break
        await sleep(0.1)
    assert await target.get_or_none("later") is not None


async def cancel_replication(couch, source, urls):
    body = {"source": urls[0], "target": urls[1], "create_target": True,
            "continuous": True, "cancel": True}
    try:
        await couch.request("POST", "_replicate", body=body)
    except CouchError:  # (the job stops with its source too)
        pass
    await source.delete_database()


@pytest_twisted.ensureDeferred
async def test_a_continuous_replication_started_from_a_script_leaves_it_to_couchdb(
        couch, db_name):
    """Without a terminal (``... --continuous && twistd ...``) the command ends once
    CouchDB has the job; the job goes on: a document written later arrives."""
    import sys

    from twisted.internet import utils

    source = couch.database(db_name)
    await source.ensure()
    await source.bulk_docs([{"_id": f"doc{i}"} for i in range(5)])
    target = couch.database(db_name + "-follows")
    urls = [source.url_with_credentials, target.url_with_credentials]
    out, err, code = await utils.getProcessOutputAndValue(
        str(Path(sys.executable).parent / "pypioncouch"), ["--replicate", *urls, "--continuous"])
    try:
        assert code == 0, (out.decode(), err.decode())
        assert "continuous replication" in out.decode() and "started" in out.decode()
        assert ADMIN[1] not in out.decode() + err.decode()
        await assert_replication_goes_on(source, target)
    finally:
        await cancel_replication(couch, source, urls)


@pytest_twisted.ensureDeferred
async def test_ctrl_c_while_watching_a_continuous_replication_stops_the_watching_only(
        couch, db_name):
    """On a terminal the command shows the replication's progress until Ctrl-C, which
    ends it with status 0 (it said "interrupted" and exited 130, as if the
    replication had been cut short)."""
    import os
    import pty
    import signal
    import subprocess
    import sys
    import time

    from twisted.internet import threads

    source = couch.database(db_name)
    await source.ensure()
    await source.bulk_docs([{"_id": f"doc{i}"} for i in range(5)])
    target = couch.database(db_name + "-watched")
    urls = [source.url_with_credentials, target.url_with_credentials]

    def watch_then_interrupt():
        leader, follower = pty.openpty()
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "pypioncouch"), "--replicate", *urls,
             "--continuous"], stdout=subprocess.PIPE, stderr=follower)
        os.close(follower)
        said = process.stdout.readline().decode()
        time.sleep(1.5)  # (a progress line or two)
        process.send_signal(signal.SIGINT)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # (the command ended)
                break
            if not chunk:
                break
            shown += chunk
        os.close(leader)
        return said, process.wait(30), shown.decode()

    try:
        said, code, shown = await threads.deferToThread(watch_then_interrupt)
        assert "started; Ctrl-C stops watching" in said
        assert code == 0, shown
        assert shown.rstrip().endswith("pypioncouch: stopped watching; CouchDB goes on "
                                       f"replicating {source.display_url} -> "
                                       f"{target.display_url}"), shown
        assert "interrupted" not in shown and ADMIN[1] not in said + shown
        await assert_replication_goes_on(source, target)
    finally:
        await cancel_replication(couch, source, urls)


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_a_typed_error_without_the_password(couch_server):
    wrong = CouchDB(f"http://{ADMIN[0]}:not-the-Pa55word@127.0.0.1:{couch_server.port}/")
    with pytest.raises(Unauthorized) as error:
        await wrong.database("anything").ensure()
    message = str(error.value)
    assert "not-the-Pa55word" not in message and "not-the-Pa55word" not in repr(wrong)
    assert "401" in message and "***" in message
    assert message.startswith(
        f"CouchDB does not accept user '{ADMIN[0]}': wrong user name or password")


@pytest.mark.apache_only  # (CouchDB 3.4+'s [chttpd_auth_lockout])
@pytest_twisted.ensureDeferred
async def test_a_user_locked_out_after_failed_logins_is_told_so_not_to_fix_rights(
        couch, couch_server, db_name):
    """Five wrong passwords (a typo, and the web front's probes), and CouchDB refuses
    the user for minutes, its right password too, with a 403: that was said as a
    missing right ("make it an admin of that database (its _security)")."""
    from pypioncouch.couch import LockedOut

    user, password = f"locked-{db_name}", "Pa55-right"
    await couch.request("PUT", f"_users/org.couchdb.user:{user}", body={
        "_id": f"org.couchdb.user:{user}", "name": user, "password": password,
        "roles": [], "type": "user"})
    await couch.database(db_name).ensure()

    def as_user(secret):
        return CouchDB(f"http://{user}:{secret}@127.0.0.1:{couch_server.port}/",
                       timeout=10).database(db_name)

    for _ in range(6):
        with pytest.raises(Unauthorized):
            await as_user("Pa55-wrong").info()
    with pytest.raises(LockedOut) as refused:
        await as_user(password).ensure()
    message = str(refused.value)
    assert message.startswith("CouchDB refuses this user for a few minutes after failed "
                              "logins (a wrong password?): check the password in the URL, "
                              "then wait"), message
    assert "_security" not in message and password not in message


@pytest_twisted.ensureDeferred
async def test_a_user_without_rights_is_told_which_right_is_missing(couch, couch_server,
                                                                   db_name):
    """CouchDB 3: only a server admin creates databases, only a database's admins write
    its design documents, and by default only they read it."""
    from pypioncouch import couchapp

    user, password = f"reader-{db_name}", "Pa55-of-a-reader"
    await couch.request("PUT", f"_users/org.couchdb.user:{user}", body={
        "_id": f"org.couchdb.user:{user}", "name": user, "password": password,
        "roles": [], "type": "user"})
    url = couch_server.url.replace(f"{ADMIN[0]}:{ADMIN[1]}@", f"{user}:{password}@")
    mine = CouchDB(url).database(db_name)
    with pytest.raises(Unauthorized) as error:
        await mine.ensure()
    message = str(error.value)
    assert f"user '{user}' may not create the database '{db_name}'" in message
    assert password not in message and "\n" not in message
    db = couch.database(db_name)
    await db.ensure()
    await couch.request("PUT", f"{db_name}/_security", body={
        "admins": {"names": [], "roles": []}, "members": {"names": [user], "roles": []}})
    assert await mine.ensure() is False  # exists, and a member may read it
    with pytest.raises(Unauthorized) as error:
        await couchapp.push(mine)
    assert f"user '{user}' may not write the design document" in str(error.value)
    await couch.request("PUT", f"{db_name}/_security", body={
        "admins": {"names": [user], "roles": []}, "members": {"names": [], "roles": []}})
    assert await couchapp.push(mine) is True  # a database admin is enough to run


@pytest.mark.apache_only  # (pouchdb-server's validate functions see no database admins)
@pytest_twisted.ensureDeferred
async def test_a_database_anyone_may_read_takes_writes_from_its_admins_only(
        couch, couch_server, db_name):
    """README, "A database anyone may read": no members (so anonymous reads), and the
    shipped etc/couchdb-read-only.json, without which CouchDB takes anyone's writes."""
    import json

    from pypioncouch.sync import run_pass

    from .helpers import World

    user, password = f"writer-{db_name}", "Pa55-of-the-writer"
    await couch.request("PUT", f"_users/org.couchdb.user:{user}", body={
        "_id": f"org.couchdb.user:{user}", "name": user, "password": password,
        "roles": [], "type": "user"})
    await couch.database(db_name).ensure()
    await couch.request("PUT", f"{db_name}/_security", body={
        "admins": {"names": [user], "roles": []}, "members": {"names": [], "roles": []}})
    anonymous = CouchDB(couch_server.anonymous_url).database(db_name)
    stranger = await anonymous.put({"_id": "a-stranger-was-here", "type": "project"})
    await couch.database(db_name).delete("a-stranger-was-here", stranger)  # (the hole)
    read_only = json.loads((Path(__file__).parents[1] / "etc" / "couchdb-read-only.json")
                           .read_text())
    await couch.request("PUT", f"{db_name}/{read_only['_id']}", body=read_only)
    for attempt in range(100):  # (CouchDB's design document cache takes a moment)
        try:
            probe = f"probe-{attempt}"
            await couch.database(db_name).delete(probe, await anonymous.put({"_id": probe}))
        except Unauthorized:
            break
        await sleep(0.1)
    with pytest.raises(Unauthorized) as refused:
        await anonymous.put({"_id": "evil", "type": "project", "name": "evil"})
    assert "read-only" in str(refused.value)
    url = couch_server.url.replace(f"{ADMIN[0]}:{ADMIN[1]}@", f"{user}:{password}@")
    world = World(url, db_name, projects=5)
    try:
        summary = await run_pass(world.importer(), full=True)  # as its admin: all written
        assert summary.pending == 0 and summary.projects == 5, summary.errors
        key, display = world.index.listing()[0]
        assert (await anonymous.get(key))["name"] == display  # and anyone reads it
    finally:
        world.close()


@pytest_twisted.ensureDeferred
async def test_unreachable_port_is_a_clear_error_quickly():
    couch = CouchDB(f"http://u:pw@127.0.0.1:{free_port()}/", timeout=5)
    started = reactor.seconds()
    with pytest.raises(Unreachable) as error:
        await couch.info()
    assert reactor.seconds() - started < 5
    assert "refused" in str(error.value) and "pw@" not in str(error.value)


@pytest_twisted.ensureDeferred
async def test_a_server_that_never_answers_times_out():
    from twisted.internet.protocol import Factory, Protocol

    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        couch = CouchDB(f"http://127.0.0.1:{port.getHost().port}/", timeout=0.5)
        with pytest.raises(Timeout) as error:
            await couch.info()
        assert "0.5s" in str(error.value)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_web_server_that_is_not_couchdb_is_named_as_such():
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class SomeWebSite(Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setResponseCode(200 if request.path == b"/" else 404)
            request.setHeader("Content-Type", "text/html")
            return b"<html>hello</html>"

    port = reactor.listenTCP(0, Site(SomeWebSite()), interface="127.0.0.1")
    try:
        couch = CouchDB(f"http://127.0.0.1:{port.getHost().port}/")
        with pytest.raises(BadResponse) as error:
            await couch.info()
        assert "CouchDB" in str(error.value)
        with pytest.raises(NotFound) as missing:
            await couch.database("pypi").get("x")
        assert "HTML" in str(missing.value)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_json_server_that_is_not_couchdb_gets_one_line_not_a_traceback():
    import sys

    from twisted.internet import utils
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class SomeJsonApi(Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader("Content-Type", "application/json")
            return b'{"service": "something else", "version": "1.0"}'

    site = Site(SomeJsonApi())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    url = f"http://u:pw@127.0.0.1:{port.getHost().port}/"
    try:
        with pytest.raises(BadResponse) as error:
            await CouchDB(url).info()
        assert str(error.value) == ("the server answered, but it is not CouchDB "
                                    f"(http://u:***@127.0.0.1:{port.getHost().port}/)")
        out, err, code = await utils.getProcessOutputAndValue(
            str(Path(sys.executable).parent / "pypioncouch"),
            ["--update", url, "--pypi", "http://127.0.0.1:9/"], env=dict(os.environ))
        assert code == 1
        assert err.decode().splitlines() == [
            "pypioncouch: error: the server answered, but it is not CouchDB "
            f"(http://u:***@127.0.0.1:{port.getHost().port}/)"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_url_naming_the_database_is_said_to_be_one(couch_server, db_name):
    """--replicate and --upstream take database URLs; --update and --couch do not."""
    import sys

    from twisted.internet import utils

    await CouchDB(couch_server.url).database(db_name).ensure()
    url = couch_server.url + db_name
    with pytest.raises(BadResponse) as error:
        await CouchDB(url).info()
    shown = CouchDB(url).display_url
    assert str(error.value) == (f"this URL names the database '{db_name}', not the server: "
                                f"give the server's URL (and --db {db_name}) ({shown})")
    out, err, code = await utils.getProcessOutputAndValue(
        str(Path(sys.executable).parent / "pypioncouch"),
        ["--update", url, "--pypi", "http://127.0.0.1:9/"], env=dict(os.environ))
    assert (code, err.decode().splitlines()) == (1, [f"pypioncouch: error: {error.value}"])


@pytest_twisted.ensureDeferred
async def test_a_url_naming_a_database_not_there_says_to_give_the_servers(couch_server):
    """(was "GET failed: not_found: no_db_file", which says nothing of what to fix)"""
    import sys

    from twisted.internet import utils

    url = couch_server.url + "mydb"
    out, err, code = await utils.getProcessOutputAndValue(
        str(Path(sys.executable).parent / "pypioncouch"),
        ["--update", url, "--pypi", "http://127.0.0.1:9/"], env=dict(os.environ))
    shown = CouchDB(url).display_url
    assert (code, err.decode().splitlines()) == (1, [
        "pypioncouch: error: nothing answers at this URL: give the CouchDB server's "
        "URL, such as http://localhost:5984/ (the database is named apart, --db) "
        f"(404 from {shown})"])
    assert "mydb" not in await CouchDB(couch_server.url).all_dbs()


@pytest_twisted.ensureDeferred
async def test_an_answer_nothing_foresaw_is_one_line_and_not_an_interruption():
    """A CouchDB look-alike whose every other answer is a JSON list: one line naming
    the error (the traceback on request), exit 1, and not "interrupted"."""
    import sys

    from twisted.internet import utils
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class LookAlike(Resource):
        isLeaf = True

        def render(self, request):
            request.setHeader("Content-Type", "application/json")
            return b'{"couchdb": "Welcome", "version": "3.5.0"}' if request.path == b"/" \
                else b"[1, 2, 3]"

    site = Site(LookAlike())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    url = f"http://u:pw@127.0.0.1:{port.getHost().port}/"
    try:
        for traceback_wanted in (False, True):
            env = dict(os.environ)
            env.pop("PYPIONCOUCH_TRACEBACK", None)
            if traceback_wanted:
                env["PYPIONCOUCH_TRACEBACK"] = "1"
            out, err, code = await utils.getProcessOutputAndValue(
                str(Path(sys.executable).parent / "pypioncouch"),
                ["--update", url, "--pypi", "http://127.0.0.1:9/", "--quiet"], env=env)
            lines = err.decode().splitlines()
            assert code == 1 and "interrupted" not in err.decode()
            assert lines[0].startswith("pypioncouch: unexpected error: "), lines
            assert "pw" not in err.decode()
            assert (len(lines) > 1 and lines[1].startswith("Traceback")) == traceback_wanted
    finally:
        await port.stopListening()


def test_query_parameters_are_couchdb_json():
    query = encode_params({"startkey": ["a", 1], "include_docs": True, "limit": 5,
                           "since": "12-g1AAAA", "skip": None})
    assert query == ("startkey=%5B%22a%22%2C1%5D&include_docs=true&limit=5"
                     "&since=12-g1AAAA")


def test_repr_and_display_url_hide_the_password():
    couch = CouchDB("http://admin:hunter2@db.example:5984/")
    assert "hunter2" not in repr(couch) and "hunter2" not in couch.display_url
    assert couch.display_url == "http://admin:***@db.example:5984/"
    assert "hunter2" in couch.url_with_credentials

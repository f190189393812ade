"""The web front: Simple API, JSON API, health, status, metrics, mirrors."""

import json
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, utils
from twisted.web.server import Site

from pypioncouch.couch import CouchDB
from pypioncouch.status import SyncStatus
from pypioncouch.sync import run_pass
from pypioncouch.web.app import WebFront
from pypioncouch.testing.dataset import normalize

from .helpers import CouchProxy, World, sleep

V1_JSON = "application/vnd.pypi.simple.v1+json"  # PEP 691, as the reference names it

BIN = Path(sys.executable).parent
PIP_ACCEPT = ("application/vnd.pypi.simple.v1+json, "
              "application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01")

pytestmark = pytest.mark.cluster  # end to end: also on a 3-node cluster


def serve(db, **options):
    from twisted.internet import reactor

    front = WebFront(db, options.pop("status", None) or SyncStatus(), **options)
    site = Site(front.resource())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return front, port, f"http://127.0.0.1:{port.getHost().port}"


async def serve_cached(db, **options):
    """``serve``, with the front's cache follower started and the cache live (it keeps
    nothing before): ``(front, port, url, follower)``."""
    front, port, url = serve(db, **options)
    follower = front.changes_follower()
    follower.startService()
    for _ in range(100):
        if front.cache.live:
            break
        await sleep(0.05)
    return front, port, url, follower


@pytest.fixture(scope="module")
def imported(couch_server):
    """A simulator of 40 projects imported once for the whole module."""
    world = World(couch_server.url, "web-module", projects=40, seed=11,
                  read_url=couch_server.read_url)
    pytest_twisted.blockon(defer.ensureDeferred(run_pass(world.importer(), full=True)))
    pytest_twisted.blockon(defer.ensureDeferred(world.settled()))
    front, port, url = serve(world.read_db, syncing=False)
    yield world, front, url
    port.stopListening()
    world.close()


@pytest_twisted.ensureDeferred
async def test_simple_pages_equal_the_simulators_byte_for_byte(imported):
    world, front, url = imported
    for key, _ in world.index.listing():
        for accept in (None, PIP_ACCEPT, "application/vnd.pypi.simple.v1+html"):
            headers = {"Accept": accept} if accept else {}
            ours = await treq.get(f"{url}/simple/{key}/", headers=headers)
            theirs = await treq.get(f"{world.url}/simple/{key}/", headers=headers)
            assert ours.code == theirs.code == 200
            assert ours.headers.getRawHeaders("content-type") == \
                theirs.headers.getRawHeaders("content-type")
            assert await ours.content() == await theirs.content(), (key, accept)
            assert ours.headers.getRawHeaders("x-pypi-last-serial") == \
                theirs.headers.getRawHeaders("x-pypi-last-serial")


@pytest_twisted.ensureDeferred
async def test_json_api_equals_the_simulators(imported):
    world, front, url = imported
    key = normalize(world.index.dataset.name(2))
    for path in (f"pypi/{key}/json", f"pypi/{key}/1.1.0.post1/json"):
        ours = await treq.get(f"{url}/{path}")
        theirs = await treq.get(f"{world.url}/{path}")
        assert await ours.content() == await theirs.content(), path
    # A release the mirror never saw as the latest: this front does not sync, so it
    # says it has not stored that release's own metadata yet (tests/test_backfill.py):
    # not a 404, which says there is no such release.
    answer = await treq.get(f"{url}/pypi/{key}/1.2.0/json")
    assert answer.code == 503 and answer.headers.getRawHeaders("retry-after") == ["60"]
    assert (await answer.json())["message"].startswith(
        f"this mirror has not stored the metadata of {key} 1.2.0 yet")
    assert (await treq.get(f"{url}/pypi/{key}/1.1.0.post1/json")).code == 200
    assert (await treq.get(f"{url}/pypi/{key}/1.1.0.POST1/json")).code == 200  # canonical
    assert (await treq.get(f"{url}/pypi/{key}/9.9/json")).code == 404
    upper = await treq.get(f"{url}/pypi/{key.upper()}/json", allow_redirects=False)
    assert upper.code == 301
    assert upper.headers.getRawHeaders("location") == [f"/pypi/{key}/json"]
    odd = await treq.get(f"{url}/pypi/{key.upper()}/1.0%3Fx%23y/json", allow_redirects=False)
    assert odd.headers.getRawHeaders("location") == [f"/pypi/{key}/1.0%3Fx%23y/json"]
    for path, location in (("simple", "/simple/"), (f"simple/{key}", f"/simple/{key}/")):
        bare = await treq.get(f"{url}/{path}", allow_redirects=False)
        assert (bare.code, bare.headers.getRawHeaders("location")) == (301, [location])


@pytest_twisted.ensureDeferred
async def test_names_are_validated_before_they_reach_couchdb(imported):
    world, front, url = imported
    for path in ("simple/_design/", "simple/..%2F_all_docs/", "pypi/_all_docs/json",
                 "pypi/x/_design/json", "simple/%3Cscript%3E/", "simple/no-such-project/"):
        answer = await treq.get(f"{url}/{path}", allow_redirects=False)
        assert answer.code == 404, path
        assert b"couch" not in (await answer.content()).lower()


@pytest_twisted.ensureDeferred
async def test_the_index_lists_every_project_in_both_formats(imported):
    world, front, url = imported
    html = await (await treq.get(f"{url}/simple/")).text()
    data = await (await treq.get(f"{url}/simple/", headers={"Accept": V1_JSON})).json()
    names = [display for _, display in world.index.listing()]
    assert [p["name"] for p in data["projects"]] == names
    assert all(f'/simple/{normalize(n)}/' in html for n in names)
    assert data["meta"]["_last-serial"] == world.index.last_serial


@pytest_twisted.ensureDeferred
async def test_the_index_serial_does_not_go_back_when_the_newest_project_goes(world):
    """PyPI's index serial is its journal's highest (reference §4): a removal moves it
    on. The highest serial stored fell back instead, and a peer following this index
    took it for a stale copy."""
    w = world(projects=8, seed=11)
    importer = w.importer()
    await run_pass(importer, full=True)
    newest = max(w.index.listing(), key=lambda row: w.index.last_serial_of(row[0]))[0]
    w.index.remove_project(newest)
    await run_pass(importer)
    front, port, url = serve(w.db, status=importer.status)
    try:
        answer = await treq.get(f"{url}/simple/", headers={"Accept": V1_JSON})
        assert (await answer.json())["meta"]["_last-serial"] == w.index.last_serial
        assert answer.headers.getRawHeaders("x-pypi-last-serial") == [str(w.index.last_serial)]
    finally:
        await port.stopListening()
    # Half-way through a pass, projects past the checkpoint are stored while others
    # below it are still to come: the index says the checkpoint, not the highest.
    behind = SyncStatus()
    behind.note_serials(our_serial=3)
    front, port, url = serve(w.db, status=behind)
    try:
        answer = await treq.get(f"{url}/simple/", headers={"Accept": V1_JSON})
        assert (await answer.json())["meta"]["_last-serial"] == 3
    finally:
        await port.stopListening()
    # Before its first checkpoint a syncing daemon knows no serial: none is given (a
    # client reads the header as a number; it said "None").
    front, port, url = serve(w.db, status=SyncStatus())
    try:
        for accept in (V1_JSON, "text/html"):
            answer = await treq.get(f"{url}/simple/", headers={"Accept": accept})
            assert answer.code == 200
            assert answer.headers.getRawHeaders("x-pypi-last-serial") is None
            body = await answer.content()
        answer = await treq.get(f"{url}/simple/", headers={"Accept": V1_JSON})
        assert (await answer.json())["meta"] == {"api-version": "1.4"}
        assert body.endswith(b"</html>\n")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_project_stored_without_a_serial_is_listed_with_the_indexs(world):
    """(stored from an index that gave none): a null ``_last-serial`` stops a peer that
    compares serials, bandersnatch's incremental sync; the index's makes it ask."""
    from pypioncouch.model import empty_project_document

    w = world(projects=5, seed=12)
    await run_pass(w.importer(), full=True)
    await w.db.put(empty_project_document("Serial-Less", None, "active"))
    front, port, url = serve(w.db, syncing=False)
    try:
        for _ in range(40):  # (a cluster's view read may answer from a copy behind)
            data = await (await treq.get(f"{url}/simple/", headers={"Accept": V1_JSON})).json()
            listed = {p["name"]: p["_last-serial"] for p in data["projects"]}
            if "Serial-Less" in listed:
                break
            await sleep(0.05)
        assert listed["Serial-Less"] == data["meta"]["_last-serial"] == w.index.last_serial
        assert all(isinstance(serial, int) for serial in listed.values()), listed
    finally:
        await port.stopListening()


V1_HTML = "application/vnd.pypi.simple.v1+html"
UV_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
             "text/html;q=0.01")
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
CHROME = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
          "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7")
# (who sends it, Accept, type of a Simple API answer, type of /status and /browse/);
# None: 406 (the Simple API never answers 406: PyPI gives text/html, reference §4).
# Offers (PEP 691): text/html, v1+html, v1+json; pages: text/html, JSON.
NEGOTIATION = [
    ("no header", None, "text/html", "text/html"),
    ("pip", PIP_ACCEPT, V1_JSON, "text/html"),
    ("uv", UV_ACCEPT, V1_JSON, "text/html"),
    ("pip < 22.2", "text/html", "text/html", "text/html"),
    ("Firefox", FIREFOX, "text/html", "text/html"),
    ("Chrome", CHROME, "text/html", "text/html"),
    ("curl", "*/*", "text/html", "text/html"),
    ("HTTPie", "application/json, */*;q=0.5", "text/html", "application/json"),
    ("PEP 691 HTML", V1_HTML, V1_HTML, None),
    ("PEP 691 JSON", V1_JSON, V1_JSON, None),
    ("q=0 text/html", "text/html;q=0, */*", V1_HTML, "application/json"),
    ("q=0 v1+html", "application/vnd.pypi.simple.v1+html;q=0, */*", "text/html", "text/html"),
    ("q=0 v1+json", "application/vnd.pypi.simple.v1+json;q=0, application/*", V1_HTML, "application/json"),
    ("q=0 json", "application/json;q=0, */*", "text/html", "text/html"),
    ("pip, json refused", "application/vnd.pypi.simple.v1+json;q=0, "
     "application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01", V1_HTML, "text/html"),
    ("uv, html refused", UV_ACCEPT.replace("text/html;q=0.01", "text/html;q=0"), V1_JSON, None),
    ("all refused", "text/html;q=0, application/vnd.pypi.simple.v1+html;q=0, "
     "application/vnd.pypi.simple.v1+json;q=0, application/json;q=0, */*", "text/html", None),
    ("only html, refused", "text/html;q=0", "text/html", None),
    ("plain JSON", "application/json", "text/html", "application/json"),
    ("PEP 691 latest", "application/vnd.pypi.simple.latest+json", "text/html", None),
    ("a tie: the earlier offer", "text/*, application/vnd.pypi.simple.v1+json", "text/html",
     "text/html"),
    ("a tie of ranges", "application/*, text/*;q=1", "text/html", "text/html"),
    ("specific beats wildcard", "*/*;q=0, application/vnd.pypi.simple.v1+json", V1_JSON, None),
    ("specific q beats range q=0", "text/*;q=0, text/html;q=0.5", "text/html", "text/html"),
    ("case-insensitive", "TEXT/HTML;Q=0, */*", V1_HTML, "application/json"),
]


@pytest.mark.parametrize("who, accept, simple_type, page_type", NEGOTIATION,
                         ids=[row[0] for row in NEGOTIATION])
@pytest_twisted.ensureDeferred
async def test_content_negotiation_is_warehouses(imported, who, accept, simple_type,
                                                    page_type):
    world, front, url = imported
    key = normalize(world.index.dataset.name(2))
    headers = {"Accept": accept} if accept else {}
    for path, expected in (("simple/", simple_type), (f"simple/{key}/", simple_type),
                           ("status", page_type), ("browse/", page_type)):
        answer = await treq.get(f"{url}/{path}", headers=headers)
        body = await answer.content()
        assert answer.headers.getRawHeaders("vary") == ["Accept"], path
        if expected is None:
            offered = ("text/html, application/vnd.pypi.simple.v1+html, "
                       "application/vnd.pypi.simple.v1+json") if path.startswith("simple") \
                else "text/html, application/json"
            assert (answer.code, body) == (
                406, f"406 Not Acceptable: offered as {offered}\n".encode()), path
        else:
            assert answer.code == 200, path
            assert answer.headers.getRawHeaders("content-type")[0].split(";")[0] == \
                expected, path


@pytest_twisted.ensureDeferred
async def test_etag_gives_304(imported):
    world, front, url = imported
    key = normalize(world.index.dataset.name(4))
    first = await treq.get(f"{url}/simple/{key}/")
    etag = first.headers.getRawHeaders("etag")[0]
    again = await treq.get(f"{url}/simple/{key}/", headers={"If-None-Match": etag})
    assert again.code == 304 and await again.content() == b""
    # RFC 9110's weak comparison: a proxy that gzips the page sends W/"..." back.
    for match in (f'"x", W/{etag}', "*"):
        again = await treq.get(f"{url}/simple/{key}/", headers={"If-None-Match": match})
        assert again.code == 304 and await again.content() == b"", match
    assert (await treq.get(f"{url}/simple/{key}/",
                           headers={"If-None-Match": 'W/"x"'})).code == 200
    # Each type is a representation of its own (RFC 9110 8.8.3): a cache holding the
    # text/html page must not be told its copy is the v1+html one.
    etags = {etag}
    for accept in (V1_HTML, V1_JSON):
        other = await treq.get(f"{url}/simple/{key}/",
                               headers={"Accept": accept, "If-None-Match": etag})
        assert other.code == 200 and await other.content(), accept
        etags.add(other.headers.getRawHeaders("etag")[0])
    assert len(etags) == 3


@pytest_twisted.ensureDeferred
async def test_a_json_api_304_carries_the_serial_and_cors_headers(imported):
    world, front, url = imported
    key = normalize(world.index.dataset.name(4))
    first = await treq.get(f"{url}/pypi/{key}/json")
    again = await treq.get(f"{url}/pypi/{key}/json",
                           headers={"If-None-Match": first.headers.getRawHeaders("etag")[0]})
    assert again.code == 304
    for header in ("x-pypi-last-serial", "access-control-allow-origin",
                   "access-control-expose-headers"):
        assert again.headers.getRawHeaders(header) == first.headers.getRawHeaders(header)


@pytest_twisted.ensureDeferred
async def test_every_simple_and_json_api_answer_may_be_read_by_any_page(imported):
    """CORS on every answer of both APIs, as PyPI's: 200s, 304s, redirects and 404s (a
    browser's installer, micropip, otherwise sees a network error, not a 404)."""
    world, front, url = imported
    key = normalize(world.index.dataset.name(4))
    etag = (await treq.get(f"{url}/simple/{key}/")).headers.getRawHeaders("etag")[0]
    answers = [(await treq.get(f"{url}{path}", headers=headers, allow_redirects=False), code)
               for path, headers, code in [
        ("/simple/", {}, 200), (f"/simple/{key}/", {"Accept": V1_JSON}, 200),
        (f"/simple/{key}/", {"If-None-Match": etag}, 304), ("/simple", {}, 301),
        (f"/simple/{key.upper()}/", {}, 301), (f"/simple/{key}", {}, 301),
        ("/simple/no-such-project/", {}, 404), (f"/pypi/{key}/json", {}, 200),
        (f"/pypi/{key.upper()}/json", {}, 301), ("/pypi/no-such-project/json", {}, 404),
        (f"/pypi/{key}/0.0.0.0.404/json", {}, 404)]]
    for answer, code in answers:
        assert answer.code == code, (answer.request.absoluteURI, answer.code)
        await answer.content()
        assert answer.headers.getRawHeaders("access-control-allow-origin") == ["*"]
        assert answer.headers.getRawHeaders("access-control-expose-headers") == \
            ["X-PyPI-Last-Serial"]


@pytest_twisted.ensureDeferred
async def test_a_release_named_none_is_not_the_project(world):
    """Before PEP 440 a version was any string: ``None`` is one (the project's answer
    and that release's were kept under one name)."""
    w = world(projects=3, seed=11)
    key = "only-none"
    w.index.publish(key, "None")  # (its only release: its own metadata is stored with it)
    await run_pass(w.importer(), full=True)
    for order in (("None", None), (None, "None")):
        front, port, url = serve(w.db)  # (a cache of its own)
        try:
            answers = {}
            for version in order:
                path = f"/pypi/{key}/json" if version is None else f"/pypi/{key}/None/json"
                answers[version] = await treq.get(url + path)
            project, release = (await answers[None].json(), await answers["None"].json())
            assert "releases" in project and "releases" not in release
            assert answers[None].headers.getRawHeaders("etag") != \
                answers["None"].headers.getRawHeaders("etag")
        finally:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_simple_html_says_its_charset(world):
    """A browser reads HTML without a charset as windows-1252: a yank reason in
    another script came out garbled. PEP 691's own types go bare, as on PyPI."""
    w = world(projects=6, seed=4)
    key = normalize(w.index.dataset.name(2))  # (a project with files)
    await run_pass(w.importer(), full=True)
    front, port, url = serve(w.db)  # (no cache: each read is a fresh one)
    try:
        first = await treq.get(f"{url}/simple/{key}/", headers={"Accept": V1_JSON})
        version = (await first.json())["versions"][-1]  # (one with files)
        w.index.yank(key, version, "Сломано: ünïcode <b>")
        await run_pass(w.importer())
        types = {}
        for accept in ("text/html", V1_HTML, V1_JSON):
            answer = await treq.get(f"{url}/simple/{key}/", headers={"Accept": accept})
            types[accept] = answer.headers.getRawHeaders("content-type")
            body = await answer.content()
            if accept == "text/html":
                page = body.decode(answer.headers.getRawHeaders("content-type")[0]
                                   .split("charset=")[1])
                assert 'data-yanked="Сломано: ünïcode &lt;b&gt;"' in page
        index = await treq.get(f"{url}/simple/")
        types["index"] = index.headers.getRawHeaders("content-type")
        await index.content()
        assert types == {"text/html": ["text/html; charset=utf-8"], V1_HTML: [V1_HTML],
                         V1_JSON: [V1_JSON], "index": ["text/html; charset=utf-8"]}
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_replica_whose_releases_land_after_their_project_serves_no_stale_page(world):
    """CouchDB's replicator keeps no order: a project's new revision can land before
    its releases' (a yank), or before a removed release's tombstone."""
    w = world(projects=12, seed=11)
    await run_pass(w.importer(), full=True)
    key = normalize(w.index.dataset.name(5))
    project = await w.db.get(key)
    kept, dropped = project["versions"][-1], project["versions"][0]
    assert kept != dropped
    front, port, url = serve(w.db, syncing=False)
    try:
        # The project lands first (its new serial, and a release it no longer names).
        await w.db.put({**project, "last_serial": project["last_serial"] + 1,
                        "versions": project["versions"][1:]})
        first = await treq.get(f"{url}/simple/{key}/", headers={"Accept": V1_JSON})
        page = await first.json()
        assert dropped not in page["versions"]
        assert not any(f"-{dropped}" in f["filename"] for f in page["files"])
        etag = first.headers.getRawHeaders("etag")[0]
        # Then the release it changed (a yank).
        release = await w.db.get(f"{key}:{kept}")
        await w.db.put({**release, "yanked": True, "yanked_reason": "late", "files": [
            dict(f, yanked=True, yanked_reason="late") for f in release["files"]]})
        for _ in range(40):  # (a cluster's range read may answer from a copy behind)
            again = await treq.get(f"{url}/simple/{key}/",
                                   headers={"Accept": V1_JSON, "If-None-Match": etag})
            if again.code != 304:
                break
            await again.content()
            await sleep(0.05)
        assert again.code == 200
        files = [f for f in (await again.json())["files"] if f"-{kept}" in f["filename"]]
        assert files and all(f["yanked"] == "late" for f in files)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_replica_whose_new_release_has_not_landed_says_to_ask_again(world):
    """The project's new revision names a latest release whose document the replication
    has not brought yet: a 404 would say the project is gone (bandersnatch's verify,
    mirroring this one, deletes what answers 404)."""
    w = world(projects=12, seed=11)
    await run_pass(w.importer(), full=True)
    key = normalize(w.index.dataset.name(6))
    project = await w.db.get(key)
    latest = await w.db.get(f"{key}:{project['latest_version']}")
    await w.db.delete(latest["_id"], latest["_rev"])
    front, port, url = serve(w.db, syncing=False)
    try:
        for path in (f"pypi/{key}/json", f"pypi/{key}/{project['latest_version']}/json"):
            answer = await treq.get(f"{url}/{path}")
            message = (await answer.json())["message"]
            assert (answer.code, answer.headers.getRawHeaders("retry-after")) == \
                (503, ["5"]), (path, message)
            assert message == (f"{key} {project['latest_version']} is not in this "
                               "database yet (a replication under way?): ask again")
            assert answer.headers.getRawHeaders("etag") is None
        await w.db.put({k: v for k, v in latest.items() if k != "_rev"})  # (it lands)
        answer = await treq.get(f"{url}/pypi/{key}/json")
        assert answer.code == 200
        assert (await answer.json())["info"]["version"] == project["latest_version"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_replica_lacking_an_older_release_says_to_ask_again_on_both_apis(world):
    """An older release the replication has not brought yet: a page without it would
    pass for the whole project at its serial (bandersnatch, or a pypioncouch following
    this one, would delete it downstream); the latest release's own answer is whole."""
    w = world(projects=12, seed=11)
    await run_pass(w.importer(), full=True)
    key = normalize(w.index.dataset.name(6))
    project = await w.db.get(key)
    older = next(v for v in project["versions"] if v != project["latest_version"])
    release = await w.db.get(f"{key}:{older}")
    assert release["files"], older  # (its files would be missing from the Simple page)
    await w.db.delete(release["_id"], release["_rev"])
    front, port, url = serve(w.db, syncing=False)
    said = f"{key} {older} is not in this database yet (a replication under way?): ask again"

    async def get(path, accept="text/html", until=None):
        """(a cluster: the front reads through another node, a moment behind)"""
        for _ in range(50):
            answer = await treq.get(f"{url}/{path}", headers={"Accept": accept})
            body = (await answer.content()).decode()
            if answer.code == until:
                break
            await sleep(0.1)
        return answer, body

    try:
        for path, accept in ((f"pypi/{key}/json", "application/json"),
                             (f"simple/{key}/", "text/html"),
                             (f"simple/{key}/", "application/vnd.pypi.simple.v1+json")):
            answer, body = await get(path, accept, until=503)
            assert (answer.code, answer.headers.getRawHeaders("retry-after")) == \
                (503, ["5"]), (path, accept, body)
            assert said in body
            for header in ("etag", "x-pypi-last-serial"):
                assert answer.headers.getRawHeaders(header) is None, (path, header)
        latest = await treq.get(f"{url}/pypi/{key}/{project['latest_version']}/json")
        assert latest.code == 200
        await latest.content()
        await w.db.put({k: v for k, v in release.items() if k != "_rev"})  # (it lands)
        answer, body = await get(f"pypi/{key}/json", until=200)
        assert answer.code == 200 and older in json.loads(body)["releases"]
        answer, page = await get(f"simple/{key}/", until=200)
        assert answer.code == 200 and release["files"][0]["filename"] in page
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_name_or_search_too_long_for_couchdb_is_a_404_or_400_not_its_trouble(
        imported):
    """Some 16,000 characters of name made the CouchDB request too long for
    pouchdb-server's headers: a 503 "the database is not answering", noted on /status
    as CouchDB's trouble, for anyone to cause."""
    world, front, url = imported
    name = "a" * 16100
    for path, code in ((f"/simple/{name}/", 404), (f"/pypi/{name}/json", 404),
                       (f"/pypi/{name}/1.0/json", 404), (f"/files/{name}/x-1.whl", 404),
                       (f"/browse/project/{name}", 404), (f"/browse/dependents/{name}", 404),
                       (f"/browse/?q={name[:8000]}", 400),
                       (f"/browse/author/?name={'é' * 2000}", 400),
                       (f"/browse/keyword/{'k' * 9000}", 400),
                       (f"/browse/classifiers/?c={'c' * 9000}", 400)):
        answer = await treq.get(url + path)
        assert answer.code == code, (path[:40], answer.code)
        await answer.content()
    assert front.status.last_error is None


@pytest_twisted.ensureDeferred
async def test_the_json_api_404_of_a_stored_project_says_nothing_more(couch_server,
                                                                     db_name):
    """A quarantined project is stored, and PyPI's JSON API answers 404 for it: the
    bare 404, no ETag to revalidate it with, no serial (as PyPI's)."""
    world = World(couch_server.url, db_name, projects=3, seed=2,
                  read_url=couch_server.read_url)
    key = normalize(world.index.dataset.name(1))
    world.index.quarantine(key)
    await run_pass(world.importer(), full=True)
    await world.settled()
    assert (await world.read_db.get(key))["status"] == "quarantined"
    front, port, url = serve(world.read_db, syncing=False)
    try:
        for path in (f"/pypi/{key}/json", f"/pypi/{key}/json"):  # (then from the cache)
            answer = await treq.get(url + path)
            assert (answer.code, await answer.content()) == (404, b'{"message": "Not Found"}')
            assert answer.headers.getRawHeaders("etag") is None
            assert answer.headers.getRawHeaders("x-pypi-last-serial") is None
        # "*" matches an answer there is (RFC 9110 13.1.2): there is none, a 404.
        answer = await treq.get(f"{url}/pypi/{key}/json", headers={"If-None-Match": "*"})
        assert (answer.code, await answer.content()) == (404, b'{"message": "Not Found"}')
    finally:
        await port.stopListening()
        world.close()


@pytest_twisted.ensureDeferred
async def test_a_database_not_there_is_trouble_not_projects_pypi_removed(couch, db_name):
    """CouchDB answers 404 for a document of a database not there (pouchdb-server in
    the same words as for a missing document): taken for "not stored", every project
    was a 404, which a mirror of this one takes for a removal (reference §5)."""
    db = couch.database(db_name)
    front, port, url = serve(db, syncing=False)
    paths = ("/simple/foo/", "/pypi/foo/json", "/pypi/foo/1.0/json")
    try:
        for path in paths:
            answer = await treq.get(url + path)
            assert (answer.code, await answer.content()) == (
                503, b"503 Service Unavailable: the database is not there\n"), path
        await db.ensure()
        for path in paths:
            answer = await treq.get(url + path)
            assert answer.code == 404, path
            await answer.content()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_replica_holding_no_project_is_not_healthy(imported, couch, db_name):
    """Put behind a load balancer, it would answer 404 for every project."""
    import json

    from pypioncouch import couchapp

    _, _, url = imported  # (a replica of 40 projects, no upstream)
    answer = await treq.get(url + "/health")
    assert answer.code == 200, await answer.content()
    await answer.content()
    db = couch.database(db_name)
    await db.ensure()
    await couchapp.push(db)
    front, port, url = serve(db, syncing=False)
    try:
        answer = await treq.get(url + "/health")
        assert (answer.code, json.loads(await answer.content())["reasons"]) == (503, [
            "it holds no project yet (replication not begun, or --db names another "
            "database)"])
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_release_uploaded_again_as_its_long_description_is_read_is_a_503(
        couch_server, db_name):
    """A project read without an older release's long description reads that release
    whole when asked for it. Uploaded again meanwhile (its old revision compacted
    away, its own metadata not fetched yet: a race a stand-in for the whole read
    plays), the release has no answer of its own: "ask again", not a 500."""
    world = World(couch_server.url, db_name, projects=2, seed=2,
                  read_url=couch_server.read_url)
    world.index.publish("Long.Text", "1.0", description="words " * 200_000)
    await run_pass(world.importer(), full=True)
    world.index.publish("Long.Text", "2.0")
    await run_pass(world.importer())
    await world.settled()
    front, port, url = serve(world.read_db, syncing=False)
    read_whole = front.store.release
    try:
        answer = await treq.get(f"{url}/pypi/long-text/1.0/json")
        assert answer.code == 200 and (await answer.json())["info"]["version"] == "1.0"

        async def uploaded_again(key, version, rev=None):
            doc = await read_whole(key, version, rev)
            return {**{k: v for k, v in doc.items() if k != "info"}, "_rev": "9-again"}

        front.store.release = uploaded_again
        answer = await treq.get(f"{url}/pypi/long-text/1.0/json")
        assert (answer.code, answer.headers.getRawHeaders("retry-after"),
                answer.headers.getRawHeaders("etag")) == (503, ["1"], None)
        assert (await answer.json())["message"] == "long-text 1.0 changed as it was read: " \
            "ask again"
    finally:
        await port.stopListening()
        world.close()


@pytest_twisted.ensureDeferred
async def test_hostile_strings_come_out_escaped(imported):
    world, front, url = imported
    hostile = '<script>alert("x")</script>'
    front.status.note_error(f"{hostile}: malformed answer from PyPI")
    front.status.warn_once("<img src=x onerror=alert(1)>")
    page = await (await treq.get(f"{url}/status")).text()
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    front.status.last_error = None
    front.status.warnings.clear()


async def pip(*args):
    out, err, code = await utils.getProcessOutputAndValue(sys.executable, ["-m", "pip", *args])
    assert code == 0, err.decode()[-2000:]
    return out.decode()


async def uv(*args):
    out, err, code = await utils.getProcessOutputAndValue(str(BIN / "uv"), list(args))
    assert code == 0, err.decode()[-2000:]
    return err.decode() + out.decode()


@pytest_twisted.ensureDeferred
async def test_pip_and_uv_install_through_the_front_and_respect_yanks(imported, tmp_path):
    world, front, url = imported
    name = world.index.dataset.name(2)  # 1.2.0 yanked, 2.0.0.dev1 has no files
    dist = normalize(name).replace("-", "_")
    await pip("install", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
              "--target", str(tmp_path / "pip"), "--index-url", f"{url}/simple/", name)
    assert (tmp_path / "pip" / f"{dist}-1.1.0.post1.dist-info").is_dir()
    await pip("install", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
              "--target", str(tmp_path / "pinned"), "--index-url", f"{url}/simple/",
              f"{name}==1.2.0")
    assert (tmp_path / "pinned" / f"{dist}-1.2.0.dist-info").is_dir()
    await uv("pip", "install", "--no-cache", "--python", sys.executable, "--target",
             str(tmp_path / "uv"), "--index-url", f"{url}/simple/", name)
    assert (tmp_path / "uv" / f"{dist}-1.1.0.post1.dist-info").is_dir()
    said = await uv("pip", "install", "--no-cache", "--python", sys.executable, "--target",
                    str(tmp_path / "uvpinned"), "--index-url", f"{url}/simple/",
                    f"{name}==1.2.0")
    assert (tmp_path / "uvpinned" / f"{dist}-1.2.0.dist-info").is_dir()
    assert "yanked" in said and "broken build" in said


@pytest_twisted.ensureDeferred
async def test_status_page_and_json_and_metrics(imported):
    world, front, url = imported
    data = await (await treq.get(f"{url}/status", headers={"Accept": "application/json"})).json()
    assert data["stored"]["projects"] == 40 and data["syncing"] is False
    html = await (await treq.get(f"{url}/status")).text()
    assert "serving a replica" in html and "40 projects" in html
    metrics = await (await treq.get(f"{url}/metrics")).text()
    assert 'pypioncouch_http_responses_total{route="status",status="200"}' in metrics
    assert "pypioncouch_couchdb_up 1.0" in metrics


@pytest_twisted.ensureDeferred
async def test_health_follows_couchdb_down_and_up(private_couch_server):
    server = private_couch_server.start()
    try:
        db = CouchDB(server.url, timeout=2).database("pypi")
        await db.ensure()
        front, port, url = serve(db, syncing=False)
        try:
            assert (await treq.get(f"{url}/health")).code == 200
            server.stop()
            await sleep(1.1)
            down = await treq.get(f"{url}/health")
            assert down.code == 503
            assert "CouchDB is not answering" in (await down.json())["reasons"]
            server.start()
            await sleep(1.1)
            assert (await treq.get(f"{url}/health")).code == 200
        finally:
            await port.stopListening()
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_health_reports_sync_trouble():
    status = SyncStatus()
    front = WebFront(CouchDB("http://127.0.0.1:9/").database("x"), status)
    assert front.health_reasons(True) == ["not synced yet"]
    status.note_serials(pypi_serial=100, our_serial=100)
    assert front.health_reasons(True) == []
    status.consecutive_failures = 3
    status.note_sync_error("PyPI refused the connection")
    assert front.health_reasons(True) == []  # (the last pass that did not fail: recent)
    status.started -= 700  # (and none since start)
    assert "no sync pass has succeeded for 70" in front.health_reasons(True)[0]
    status.consecutive_failures = 0
    status.note_serials(pypi_serial=200)
    status.caught_up_at -= 3600
    assert front.health_reasons(True) == ["100 serials (3600s) behind PyPI"]


@pytest_twisted.ensureDeferred
async def test_a_replica_serves_byte_identical_pages(imported, couch_server, servers, db_name):
    """Replicated to the other kind of server (pouchdb-server -> Apache CouchDB, Apache
    CouchDB and the cluster -> pouchdb-server), a mirror serves the same bytes."""
    world, front, url = imported
    mirror = servers.get("apache" if couch_server.kind == "pouchdb" else "pouchdb")
    out, err, code = await utils.getProcessOutputAndValue(
        str(BIN / "pypioncouch"),
        ["--replicate", world.db.url_with_credentials, mirror.url + db_name, "--quiet"])
    assert code == 0, err.decode()
    assert b"replicated" in out
    replica = CouchDB(mirror.read_url).database(db_name)
    _, port, mirror_url = serve(replica, syncing=False)
    try:
        for path in ["simple/"] + [f"simple/{k}/" for k, _ in world.index.listing()]:
            for accept in (None, V1_JSON):
                headers = {"Accept": accept} if accept else {}
                a = await (await treq.get(f"{url}/{path}", headers=headers)).content()
                b = await (await treq.get(f"{mirror_url}/{path}", headers=headers)).content()
                assert a == b, path
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_replica_reports_its_lag_behind_the_upstream(couch, db_name):
    from pypioncouch import couchapp

    source, replica = couch.database(db_name), couch.database(db_name + "-replica")
    await source.ensure()
    await couchapp.push(source)
    project = {"type": "project", "versions": [], "release_digests": {}}
    await source.bulk_docs([{**project, "_id": "a", "name": "a", "last_serial": 5}])

    async def replicate():
        await couch.replicate(source.url_with_credentials, replica.url_with_credentials)

    async def health(url):
        answer = await treq.get(f"{url}/health")
        return answer.code, await answer.json()

    async def health_when(url, predicate, seconds=10.0):
        for _ in range(int(seconds / 0.05)):
            code, body = await health(url)
            if predicate(body):
                break
            await sleep(0.05)
        return code, body

    await replicate()
    front, port, url = serve(replica, syncing=False, upstream=source, max_lag_seconds=0.2)
    front.replica.every = 0.0  # no caching between the checks of this test
    try:
        code, body = await health(url)
        assert (code, body["serial"], body["upstream_serial"], body["lag"]) == (200, 5, 5, 0)
        await source.bulk_docs([{**project, "_id": "b", "name": "b", "last_serial": 9}])
        # A cluster's view may answer from a copy the write reaches a moment later.
        code, body = await health_when(url, lambda body: body["lag"] != 0)
        assert code == 200 and body["lag"] == 4  # behind, but not for long yet
        await sleep(0.4)
        code, body = await health(url)
        assert code == 503 and body["reasons"][0].startswith("4 serials (")
        assert "behind the upstream" in body["reasons"][0]
        metrics = await (await treq.get(f"{url}/metrics")).text()
        assert "pypioncouch_replica_lag_serials 4.0" in metrics
        assert "pypioncouch_upstream_serial 9.0" in metrics
        await replicate()
        code, body = await health_when(url, lambda body: body["lag"] != 4)
        assert (code, body["serial"], body["lag"]) == (200, 9, 0)
    finally:
        await port.stopListening()
    # --upstream given a document's URL (one segment too many): said as such.
    document = couch.database("a")
    document.server = CouchDB(source.url_with_credentials + "/", timeout=10)
    front, port, url = serve(replica, syncing=False, upstream=document,
                             max_lag_seconds=0.2)
    front.replica.every = 0.0
    try:
        await health(url)  # (the first look: unheard of from now)
        await sleep(0.3)
        code, body = await health(url)
        assert code == 503 and body["reasons"] == [
            f"no word from the upstream {document.display_url} for "
            f"{body['lag_seconds']:.0f}s: --upstream {document.display_url} names "
            f"something inside the database {db_name!r} (a document?): give the "
            f"database's URL, ending with /{db_name}"], body
    finally:
        await port.stopListening()
    # An upstream that does not answer is reported (without its password), not fatal.
    gone = CouchDB("http://admin:s3cret@127.0.0.1:9/").database("pypi")
    front, port, url = serve(replica, syncing=False, upstream=gone, max_lag_seconds=0.2)
    front.replica.every = 0.0
    try:
        code, body = await health(url)
        assert code == 200 and body["serial"] == 9 and body["lag"] is None
        assert "127.0.0.1:9" in body["upstream_error"] and "s3cret" not in body["upstream_error"]
        page = await (await treq.get(f"{url}/status")).text()
        assert "admin:***@127.0.0.1:9/pypi" in page and "s3cret" not in page
        await sleep(0.4)  # unknown for longer than the lag budget: unhealthy
        code, body = await health(url)
        assert code == 503 and body["reasons"][0].startswith(
            "no word from the upstream http://admin:***@127.0.0.1:9/pypi for "), body
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_health_says_couchdb_refuses_our_password_not_that_it_is_silent(couch_server,
                                                                             db_name):
    from .conftest import ADMIN

    wrong = couch_server.url.replace(f":{ADMIN[1]}@", ":not-the-password@")
    assert wrong != couch_server.url
    front, port, url = serve(CouchDB(wrong).database(db_name), syncing=False)
    try:
        answer = await treq.get(f"{url}/health")
        body = await answer.json()
        assert answer.code == 503 and body["reasons"] == [
            f"CouchDB does not accept user '{ADMIN[0]}': wrong user name or password"]
    finally:
        await port.stopListening()


def test_upstream_is_for_replicas_only():
    import subprocess

    result = subprocess.run([str(BIN / "twistd"), "-n", "pypioncouch", "--couch",
                             "http://127.0.0.1:5984/", "--upstream", "http://h:5984/pypi"],
                            capture_output=True, text=True, cwd="/")
    assert result.returncode != 0
    assert "--upstream is for a replica: use it with --no-sync" in result.stdout + result.stderr


@pytest_twisted.ensureDeferred
async def test_releases_other_than_their_project_records_are_served_not_kept(
        couch_server, db_name):
    """A cluster's range read answers from one copy of a shard, which can lag: a
    release older (or newer) than its project's record is served as read but not
    cached, so the next request reads again, instead of an old yank state kept until
    the project next changes."""
    world = World(couch_server.url, db_name, projects=6, seed=3)
    await run_pass(world.importer(), full=True)
    key = next(k for k, _ in world.index.listing()
               if world.index.latest(world.index.get(k)) is not None)
    project = await world.db.get(key)
    release = await world.db.get(f"{key}:{project['versions'][-1]}")
    headers = {"Accept": V1_JSON}

    async def reads_of_two_requests():
        """(the pages of two requests to a new front, how many came from its cache)"""
        front, port, url, follower = await serve_cached(world.db, syncing=False)
        try:
            pages = [await (await treq.get(f"{url}/simple/{key}/", headers=headers)).json()
                     for _ in range(2)]
            return pages, front.cache.hits
        finally:
            await follower.stopService()
            await port.stopListening()

    assert (await reads_of_two_requests())[1] == 1  # as recorded: kept
    # A copy of the release its project does not record (as a lagging copy is).
    await world.db.put({**release, "yanked": True, "yanked_reason": "lagging", "files": [
        dict(f, yanked=True, yanked_reason="lagging") for f in release["files"]]})
    pages, hits = await reads_of_two_requests()
    assert all(any(f["yanked"] == "lagging" for f in page["files"]) for page in pages)
    assert hits == 0  # served as read, and read again


@pytest_twisted.ensureDeferred
async def test_the_cache_serves_a_new_release_as_soon_as_it_is_stored(couch_server, db_name):
    world = World(couch_server.url, db_name, projects=6, seed=3)
    await run_pass(world.importer(), full=True)
    front, port, url, follower = await serve_cached(world.db, syncing=False)
    headers = {"Accept": V1_JSON}
    try:
        key, display = next((k, d) for k, d in world.index.listing()
                            if world.index.latest(world.index.get(k)) is not None)
        before = await (await treq.get(f"{url}/simple/{key}/", headers=headers)).json()
        hits = front.cache.hits
        await (await treq.get(f"{url}/simple/{key}/", headers=headers)).json()
        assert front.cache.hits == hits + 1  # the second read came from the cache
        world.index.publish(display, "99.0")
        await run_pass(world.importer())
        for _ in range(100):  # the feed evicts the entry within moments of the write
            after = await (await treq.get(f"{url}/simple/{key}/", headers=headers)).json()
            if "99.0" in after["versions"]:
                break
            await sleep(0.05)
        assert after["versions"] == before["versions"] + ["99.0"]
    finally:
        await follower.stopService()
        await port.stopListening()
        world.close()


@pytest_twisted.ensureDeferred
async def test_a_write_while_the_cache_feed_connects_is_not_missed(couch_server, db_name):
    # The feed's request reaches CouchDB late (held 2 s by a proxy). A page read and a
    # release written meanwhile must not leave the old page in the cache for good.
    world = World(couch_server.url, db_name, projects=6, seed=3)
    await run_pass(world.importer(), full=True)
    proxy = CouchProxy(couch_server.url, hold={b"feed=continuous": 2.0})
    front, port, url = serve(CouchDB(proxy.url).database(db_name), syncing=False)
    follower = front.changes_follower()
    follower.startService()
    headers = {"Accept": V1_JSON}
    try:
        key, display = next((k, d) for k, d in world.index.listing()
                            if world.index.latest(world.index.get(k)) is not None)
        await sleep(0.2)
        before = await (await treq.get(f"{url}/simple/{key}/", headers=headers)).json()
        world.index.publish(display, "99.0")
        await run_pass(world.importer())
        for _ in range(100):
            if front.cache.live:
                break
            await sleep(0.05)
        assert front.cache.live
        for _ in range(40):  # the feed brings the write, or the page was never cached
            after = await (await treq.get(f"{url}/simple/{key}/", headers=headers)).json()
            if "99.0" in after["versions"]:
                break
            await sleep(0.05)
        assert after["versions"] == before["versions"] + ["99.0"]
        hits = front.cache.hits
        await treq.get(f"{url}/simple/{key}/", headers=headers)
        assert front.cache.hits == hits + 1  # and the cache is in use
    finally:
        await follower.stopService()
        await port.stopListening()
        proxy.close()
        world.close()


def release_reads(proxy):
    """The reads of a project's release documents that went through ``proxy``."""
    return [line for line in proxy.requests
            if b"_all_docs?" in line and b"include_docs=true" in line]


@pytest_twisted.ensureDeferred
async def test_concurrent_misses_share_one_read_and_status_shows_the_cache(couch_server,
                                                                        db_name):
    # Ten clients ask for one project at once while its releases are slow to read
    # (held 0.5 s by a proxy): CouchDB is read once, not ten times (ten copies).
    world = World(couch_server.url, db_name, projects=6, seed=3)
    await run_pass(world.importer(), full=True)
    proxy = CouchProxy(couch_server.url, hold={b"_all_docs?": 0.5})
    front, port, url, follower = await serve_cached(
        CouchDB(proxy.url).database(db_name), syncing=False, cache_bytes=5_000_000)
    try:
        key = next(k for k, _ in world.index.listing()
                   if world.index.latest(world.index.get(k)) is not None)
        answers = await defer.gatherResults([
            treq.get(f"{url}/simple/{key}/", headers={"Accept": V1_JSON})
            for _ in range(10)])
        assert [a.code for a in answers] == [200] * 10
        bodies = [await a.content() for a in answers]
        assert len(set(bodies)) == 1
        reads = release_reads(proxy)
        assert len(reads) == 1
        status = await (await treq.get(f"{url}/status",
                                       headers={"Accept": "application/json"})).json()
        cache = status["cache"]
        assert (cache["entries"], cache["max_bytes"]) == (1, 5_000_000)
        assert 0 < cache["bytes"] < 5_000_000
        metrics = (await (await treq.get(f"{url}/metrics")).content()).decode()
        assert "pypioncouch_cache_entries 1.0\n" in metrics
        assert "pypioncouch_cache_max_bytes 5e+06\n" in metrics
        assert f"pypioncouch_cache_bytes {float(cache['bytes'])}\n" in metrics
        page = await (await treq.get(f"{url}/status")).text()
        assert "Web cache</th><td>1 projects," in page
        # A client that leaves while the read runs does not fail the others' answers.
        other = next(k for k, _ in world.index.listing()
                     if k != key and world.index.latest(world.index.get(k)) is not None)
        leaving = treq.get(f"{url}/simple/{other}/", headers={"Accept": V1_JSON})
        staying = treq.get(f"{url}/simple/{other}/", headers={"Accept": V1_JSON})
        for _ in range(250):  # until the shared read has begun
            if len(release_reads(proxy)) == 2:
                break
            await sleep(0.02)
        leaving.cancel()
        leaving.addErrback(lambda _: None)  # (its own answer never comes)
        assert (await staying).code == 200
        assert len(release_reads(proxy)) == 2
    finally:
        await follower.stopService()
        await port.stopListening()
        proxy.close()
        world.close()


@pytest_twisted.ensureDeferred
async def test_versions_pep_440_cannot_parse_come_in_pypis_legacy_order(world):
    """PyPI lists versions PEP 440 cannot parse first, numbers compared as numbers
    (1.9-x before 1.10-x), then the others in PEP 440 order; files follow."""
    w = world(projects=2, seed=5)
    for version in ("2.0", "1.10-x", "0.9", "1.9-x", "not a version"):
        w.index.publish("Legacy-Order", version)
    await run_pass(w.importer(), full=True)
    front, port, url = serve(w.db)
    try:
        ours = await treq.get(f"{url}/simple/legacy-order/", headers={"Accept": V1_JSON})
        page = await ours.json()
        assert page["versions"] == ["not a version", "1.9-x", "1.10-x", "0.9", "2.0"]
        assert [f["filename"].split("-")[1] for f in page["files"]][:3] == [
            "not a version", "1.9", "1.10"]
        for accept in (V1_JSON, "text/html"):
            ours = await treq.get(f"{url}/simple/legacy-order/", headers={"Accept": accept})
            theirs = await treq.get(f"{w.url}/simple/legacy-order/",
                                    headers={"Accept": accept})
            assert await ours.content() == await theirs.content(), accept
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_in_metadata_is_stored_as_u_fffd_and_fails_no_page(world):
    """PyPI's JSON can carry a lone surrogate (a \\ud800 escape), which UTF-8 cannot say.
    Apache CouchDB refuses a request holding one (the whole batch, at every retry): it
    is written as U+FFFD, on both servers. One another program wrote (pouchdb-server
    keeps it) goes out as "?": a 500 on a list page would hide every page after it."""
    import json

    from .conftest import ADMIN

    w = world(projects=4, seed=8)
    w.index.publish("Half-Pair", "1.0", files=0, summary="half \ud800 a pair",
                    author="Ann \udc80 Author")  # (no file: the simulator's wheels are UTF-8)
    summary = await run_pass(w.importer(), full=True)
    assert (summary.projects, summary.pending) == (5, 0), str(summary)
    stored = await w.db.get("half-pair")
    assert (stored["summary"], stored["author"]) == ("half \ufffd a pair", "Ann \ufffd Author")
    pages = ("browse/", "browse/project/half-pair", "browse/recent/", "browse/author/",
             "simple/half-pair/", "pypi/half-pair/json")
    front, port, url = serve(w.db, syncing=False)
    try:
        for path in pages:
            answer = await treq.get(f"{url}/{path}")
            body = (await answer.content()).decode("utf-8")
            assert answer.code == 200, (path, body[:300])
        assert "half \ufffd a pair" in body  # (the JSON API)
        # Written raw by another program: pouchdb-server keeps it; Apache CouchDB not.
        stored["summary"] = "half \ud800 a pair"
        raw = await treq.put(f"{w.db.server.url}{w.db.path}half-pair",
                             json.dumps(stored).encode("ascii"),
                             headers={"Content-Type": "application/json"}, auth=ADMIN)
        said = await raw.content()
        if raw.code == 400:
            assert b"invalid UTF-8 JSON" in said
            return
        assert raw.code == 201, said
        for path in pages[:2]:
            for accept in ("text/html", "application/json"):
                answer = await treq.get(f"{url}/{path}", headers={"Accept": accept})
                body = (await answer.content()).decode("utf-8")
                assert answer.code == 200, (path, accept, body[:300])
                assert "half ? a pair" in body, (path, accept)
    finally:
        await port.stopListening()

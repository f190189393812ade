"""Browse pages against a pouchdb-server holding data imported from the simulator."""

import json
import random
import shutil
from collections import defaultdict
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from twisted.internet import defer, threads

from pypioncouch import model
from pypioncouch.sync import run_pass
from pypioncouch.web import browse

from .helpers import World, requires_command
from .test_web import serve

JSON = {"Accept": "application/json"}
VERSIONS = ["0.9", "1.0", "1.0.1", "1.1rc1", "1.1", "1.2.dev3", "2.0a1", "2.0", "2.0.post1",
            "2.1", "3.0b2", "10.0"]

pytestmark = pytest.mark.cluster  # end to end: also on a 3-node cluster


@pytest.fixture(scope="module")
def site(couch_server):
    world = World(couch_server.url, "browse-module", projects=120, seed=23,
                  read_url=couch_server.read_url)
    for version in VERSIONS:
        world.index.publish("Spec.Test", version)
    pytest_twisted.blockon(defer.ensureDeferred(run_pass(world.importer(), full=True)))
    pytest_twisted.blockon(defer.ensureDeferred(world.settled()))
    front, port, url = serve(world.read_db, syncing=False)
    browse.PAGE, saved = 25, browse.PAGE
    yield world, url
    browse.PAGE = saved
    port.stopListening()
    world.close()


async def get_json(url):
    answer = await treq.get(url, headers=JSON)
    assert answer.code == 200, (url, answer.code, await answer.text())
    return await answer.json()


def projects(world):
    return [world.index.get(key) for key, _ in world.index.listing()]


async def every_page(url, rows="projects"):
    """The rows of every page of a list, following its "next" links."""
    base, link, found = url.split("/browse/")[0], url, []
    while link:
        data = await get_json(link)
        found += data[rows]
        link = base + data["next"] if data["next"] else None
    return found


def keywords_of(text):
    """The keywords of PyPI's one keywords string, by the reference's rule (§3: commas,
    or else spaces), written apart from the product's model.split_keywords."""
    if not text:
        return set()
    parts = text.split(",") if "," in text else text.split()
    return {" ".join(part.split()).lower() for part in parts if part.strip()}


@pytest_twisted.ensureDeferred
async def test_paging_forward_and_back_is_exact(site):
    world, url = site
    pages, link = [], f"{url}/browse/"
    while link:
        data = await get_json(link)
        pages.append([p["key"] for p in data["projects"]])
        link = url + data["next"] if data["next"] else None
    assert [k for page in pages for k in page] == [k for k, _ in world.index.listing()]
    assert all(len(page) == 25 for page in pages[:-1])
    # Back from the last page reproduces every page exactly.
    last = json.dumps(["name", pages[-2][-1]])
    data = await get_json(link := f"{url}/browse/?after={quote(last)}")
    back = []
    while data["prev"]:
        data = await get_json(url + data["prev"])
        back.append([p["key"] for p in data["projects"]])
    assert back == pages[-2::-1]
    # A cursor that is not one of this list's keys is the asker's mistake, not a 503.
    for cursor in (["author", "x"], "name", ["name", 1]):
        bad = await treq.get(f"{url}/browse/?q=a&after={quote(json.dumps(cursor))}",
                             headers=JSON)
        assert bad.code == 400, (cursor, bad.code)
    # Nor is a cursor nested too deep for a parser, or too long for a URL to CouchDB.
    for raw in ("[" * 3000, "[" * 2000 + "]" * 2000, json.dumps(["name", "a" * 5000]),
                json.dumps(["name", [["a"]]]), json.dumps(["name", {"a": 1}])):
        for path in ("/browse/", "/browse/recent/", "/browse/author/x",
                     "/browse/classifiers/?c=Programming%20Language%20%3A%3A%20Python&"):
            sep = "&" if "?" in path else "?"
            bad = await treq.get(f"{url}{path}{sep}after={quote(raw)}", headers=JSON)
            assert bad.code == 400, (path, raw[:20], bad.code)
            assert (await bad.json())["error"] == \
                "after/before must be a key as this site's own links give it"


@pytest_twisted.ensureDeferred
async def test_name_search_and_python_filter(site):
    world, url = site
    for query, prefix in (("Cache_", "cache-"), ("C", "c"), ("Pa", "pa")):
        found = await every_page(f"{url}/browse/?q={query}")
        expected = [k for k, _ in world.index.listing() if k.startswith(prefix)]
        assert [p["key"] for p in found] == expected, query
    assert expected  # (the data set has names to find)
    # Every project that runs on 2.7 is listed, and no other (from the simulator's data).
    runs_on_27 = []
    for project in projects(world):
        latest = world.index.latest(project)
        requires = latest.requires_python if latest else None
        if not requires or SpecifierSet(requires).contains("2.7", prereleases=True):
            runs_on_27.append(project.normalized)
    assert 25 < len(runs_on_27) < len(world.index.listing())
    found = await every_page(f"{url}/browse/?python=2.7")
    assert [p["key"] for p in found] == runs_on_27
    bad = await treq.get(f"{url}/browse/?python=three", headers=JSON)
    assert bad.code == 400 and "not a version" in (await bad.json())["error"]


@pytest_twisted.ensureDeferred
async def test_by_author_maintainer_and_keyword(site):
    world, url = site
    by_author, by_keyword = defaultdict(set), defaultdict(set)
    for project in projects(world):
        latest = world.index.latest(project)
        if latest is None:
            continue
        if latest.metadata.get("author"):
            by_author[latest.metadata["author"].lower()].add(project.normalized)
        for word in keywords_of(latest.metadata.get("keywords")):
            by_keyword[word].add(project.normalized)
    author = max(by_author, key=lambda a: len(by_author[a]))
    found = await every_page(f"{url}/browse/author/{quote(author.upper())}")
    assert [p["key"] for p in found] == sorted(by_author[author])
    word = max(by_keyword, key=lambda w: len(by_keyword[w]))
    assert len(by_keyword[word]) > 5
    found = await every_page(f"{url}/browse/keyword/{quote(word)}")
    assert [p["key"] for p in found] == sorted(by_keyword[word])
    # A keyword of several words, with markup, as the hostile showcase has it.
    found = await every_page(f"{url}/browse/keyword/{quote('<b>bold</b>')}")
    assert [p["key"] for p in found] == [model.normalize(world.index.dataset.name(0))]


@pytest_twisted.ensureDeferred
async def test_classifiers_counts_combinations_and_parents(site):
    world, url = site
    per_classifier = defaultdict(set)
    for project in projects(world):
        latest = world.index.latest(project)
        for c in (latest.metadata.get("classifiers") or []) if latest else []:
            per_classifier[c].add(project.normalized)
    data = await get_json(f"{url}/browse/classifiers/")
    counts = {}

    def walk(nodes):
        for node in nodes:
            if node["count"] is not None:
                counts[node["path"]] = node["count"]
            walk(node["children"])
    walk(data["tree"])
    # Every node counts the projects it selects: itself and its children (PyPI's prefix).
    under = defaultdict(set)
    for c, ids in per_classifier.items():
        parts = c.split(" :: ")
        for depth in range(1, len(parts) + 1):
            under[" :: ".join(parts[:depth])] |= ids
    assert counts == {c: len(ids) for c, ids in under.items()}
    parent = "Programming Language :: Python"
    paged, link = [], f"{url}/browse/classifiers/?c={quote(parent)}"
    while link:
        data = await get_json(link)
        assert data["total"] == len(under[parent])
        paged += [p["key"] for p in data["projects"]]
        link = url + data["next"] if data["next"] else None
    assert paged == sorted(under[parent])
    other = "Intended Audience :: Developers"
    both = sorted(under[parent] & under[other])
    data = await get_json(f"{url}/browse/classifiers/?c={quote(parent)}&c={quote(other)}")
    assert data["total"] is None  # not counted for a combination
    assert [p["key"] for p in data["projects"]] == both[:25]
    if len(both) > 25:
        data = await get_json(url + data["next"])
        assert [p["key"] for p in data["projects"]] == both[25:50]
        back = await get_json(url + data["prev"])
        assert [p["key"] for p in back["projects"]] == both[:25]
    # A sparse combination whose matches lie beyond one page's scan limit: the pages
    # may be short, but following "next" lists exactly the intersection.
    rare = min((c for c in under if c != parent and under[c] & under[parent]
                and browse.PAGE + 1 < len(under[c]) <= len(under[parent])),
               key=lambda c: len(under[c] & under[parent]), default=None)
    assert rare is not None
    expected = sorted(under[rare] & under[parent])
    browse.SCAN_LIMIT, saved = browse.PAGE + 1, browse.SCAN_LIMIT
    try:
        paged, link = [], f"{url}/browse/classifiers/?c={quote(parent)}&c={quote(rare)}"
        while link:
            data = await get_json(link)
            paged += [p["key"] for p in data["projects"]]
            link = url + data["next"] if data["next"] else None
    finally:
        browse.SCAN_LIMIT = saved
    assert paged == expected
    unknown = await get_json(f"{url}/browse/classifiers/?c=No+Such+Classifier")
    assert unknown["projects"] == [] and unknown["total"] == 0


@pytest_twisted.ensureDeferred
async def test_the_specifier_filter_selects_exactly_what_packaging_selects(site):
    world, url = site
    rng = random.Random(5)
    operators = ["==", "!=", ">=", "<=", ">", "<", "~="]
    specifiers = [">=20,<23", "~=1.0", "==1.*", "!=2.0", "", "==2.0a1", "<2"]
    for _ in range(25):
        parts = [f"{rng.choice(operators)}{rng.choice(VERSIONS)}" for _ in range(rng.randint(1, 2))]
        specifiers.append(",".join(p for p in parts if not (p.startswith("~=") and "." not in p)))
    for spec in specifiers:
        for pre in (False, True):
            query = f"req={quote('spec-test' + spec)}" + ("&pre=1" if pre else "")
            data = await get_json(f"{url}/browse/specifier/?{query}")
            got = [r["version"] for r in data["releases"]]
            wanted = list(SpecifierSet(spec).filter(VERSIONS, prereleases=True if pre else None))
            assert got == sorted(wanted, key=Version, reverse=True), (spec, pre)
    bad = await treq.get(f"{url}/browse/specifier/?req={quote('twisted>=>2')}", headers=JSON)
    assert bad.code == 400


@pytest_twisted.ensureDeferred
async def test_project_page_and_hostile_metadata_as_text(site):
    world, url = site
    key = model.normalize(world.index.dataset.name(0))  # the hostile showcase
    html = await (await treq.get(f"{url}/browse/project/{key}")).text()
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html
    assert 'href="javascript:' not in html
    data = await get_json(f"{url}/browse/project/{key}")
    versions = [r["version"] for r in data["releases"]]
    assert versions == sorted(world.index.get(key).releases, key=Version, reverse=True)
    assert data["links"]["simple"] == f"/simple/{key}/"
    redirect = await treq.get(f"{url}/browse/project/{key.upper()}", allow_redirects=False)
    assert redirect.code == 301


@pytest_twisted.ensureDeferred
async def test_recent_releases_newest_first(site):
    world, url = site
    data = await get_json(f"{url}/browse/recent/")
    times = [r["uploaded"] for r in data["releases"]]
    assert times == sorted(times, reverse=True) and len(times) == 25
    second = await get_json(url + data["next"])
    assert second["releases"][0]["uploaded"] <= times[-1]


def browse_in_chromium(url, key):
    """Drive Debian's chromium through the pages; return what a person would see."""
    from playwright.sync_api import sync_playwright

    seen = {"dialogs": [], "errors": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        page = browser.new_page()
        page.on("dialog", lambda dialog: (seen["dialogs"].append(dialog.message),
                                          dialog.dismiss()))
        page.on("pageerror", lambda error: seen["errors"].append(str(error)))
        page.goto(f"{url}/browse/")
        seen["title"] = page.title()
        page.fill("#q", key[:6])
        with page.expect_navigation():
            page.keyboard.press("Enter")
        seen["search_url"] = page.url
        seen["search_hits"] = page.locator("tbody tr a").count()
        page.goto(f"{url}/browse/project/{key}")
        seen["summary"] = page.locator("main > p").first.inner_text()
        with page.expect_navigation():
            page.locator("main a", has_text="Simple API").click()
        seen["simple_title"] = page.title()
        page.goto(f"{url}/browse/project/{key}")
        keyword = page.locator("a[href^='/browse/keyword/']").first
        with page.expect_navigation():
            keyword.click()
        seen["keyword_page"] = page.locator("h1").inner_text()
        page.goto(f"{url}/browse/classifiers/")
        page.locator("input[name=c]").first.check()
        with page.expect_navigation():
            page.locator("button[type=submit]").first.click()
        seen["classifier_rows"] = page.locator("tbody tr").count()
        page.goto(f"{url}/status")
        seen["status"] = page.locator("h1").inner_text()
        browser.close()
    return seen


@requires_command("chromium", "chromium")
@pytest_twisted.ensureDeferred
async def test_a_real_browser_follows_the_pages_and_runs_no_script_from_metadata(site):
    world, url = site
    key = model.normalize(world.index.dataset.name(0))
    seen = await threads.deferToThread(browse_in_chromium, url, key)
    assert seen["dialogs"] == [] and seen["errors"] == []
    assert seen["title"] == "All projects — pypioncouch"
    assert "q=" in seen["search_url"] and seen["search_hits"] >= 1
    assert seen["summary"] == '<script>alert("pwned")</script>'  # shown as text
    assert seen["simple_title"] == f"Links for {key}"
    assert seen["keyword_page"].startswith("Projects with keyword")
    assert seen["classifier_rows"] >= 1
    assert seen["status"] == "Status"

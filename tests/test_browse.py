"""Browse pages against a pouchdb-server holding data imported from the simulator."""

import json
import random
import re
import shutil
from collections import defaultdict
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from twisted.internet import defer, threads

from pypioncouch.sync import run_pass
from pypioncouch.web import browse
from pypioncouch.testing.dataset import normalize

from .helpers import World, requires_command
from .test_web import serve

JSON = {"Accept": "application/json"}
VERSIONS = ["0.9", "1.0", "1.0.1", "1.1rc1", "1.1", "1.2.dev3", "2.0a1", "2.0", "2.0.post1",
            "2.1", "3.0b2", "10.0"]

# Descriptions as uploaders write them, hostile ones included; their Requires-Dist
# name Spec.Test in spellings PEP 503 makes equal.
READMES = {
    "Readme.Markdown": ("text/markdown", "# Title\n\nSome *emphasis*, [a link](https://example.org/x), "
                        "[bad](javascript:alert(1)), <a href=\"javascript:alert(2)\">raw</a>, "
                        "<img src=x onerror=alert(3)>, <b onclick=\"alert(4)\">b</b>\n\n"
                        "<script>alert(5)</script>\n",
                        ["SPEC_test>=1.0; python_version >= '3.8'", "spec.test[extra]"]),
    "Readme_Rst": ("text/x-rst", "Title\n=====\n\nA `link <javascript:alert(6)>`_ and **bold**.\n",
                   ["Spec-Test (>=2.0)"]),
    "readme-raw-rst": (None, "Title\n=====\n\n.. raw:: html\n\n   <script>alert(7)</script>\n",
                       ["spec_test ; extra == 'docs'", "spec-test >= = 1", "readme-raw-rst[all]"]),
    "Readme.Plain": ("text/plain", "<b>not bold</b>\nline two", []),
}

pytestmark = pytest.mark.cluster  # end to end: also on a 3-node cluster


@pytest.fixture(scope="module")
def site(couch_server):
    world = World(couch_server.url, "browse-module", projects=120, seed=23,
                  read_url=couch_server.read_url)
    for version in VERSIONS:
        world.index.publish("Spec.Test", version, requires_dist=None)
    world.index.publish("Micro.Bound", "1.0", requires_python=">=3.8.1,<4")
    for name, (content_type, text, requires) in READMES.items():
        world.index.publish(name, "1.0", description=text, requires_dist=requires,
                            description_content_type=content_type)
    pytest_twisted.blockon(defer.ensureDeferred(run_pass(world.importer(), full=True)))
    pytest_twisted.blockon(defer.ensureDeferred(world.settled()))
    front, port, url = serve(world.read_db, syncing=False)
    world.front = front
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


async def walk_pages(link):
    """``(rows of every page of a list, pages, the last page)``, following "next"."""
    base, rows, pages = link.split("/browse/")[0], [], 0
    while link:
        data = await get_json(link)
        rows += data["projects"]
        pages += 1
        link = base + data["next"] if data["next"] else None
    return rows, pages, data


async def every_page(url):
    """The rows of every page of a list."""
    return (await walk_pages(url))[0]


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
    # The end of the list, where an empty page's "Previous" leads (a page the scan
    # limit left empty, at the end of a sparse filter): the list's last rows.
    end = await get_json(f"{url}/browse/?before={quote(json.dumps(['name', {}]))}")
    assert [p["key"] for p in end["projects"]] == [k for k, _ in world.index.listing()][-25:]


@pytest_twisted.ensureDeferred
async def test_name_search_and_python_filter(site):
    world, url = site
    # (the query is normalized as names are: "Data.._D" finds data-data-16)
    for query, prefix in (("Crypto_", "crypto-"), ("Data.._D", "data-d"), ("C", "c"),
                          ("Pa", "pa")):
        found = await every_page(f"{url}/browse/?q={quote(query)}")
        expected = [k for k, _ in world.index.listing() if k.startswith(prefix)]
        assert expected, prefix  # (the data set has names to find)
        assert [p["key"] for p in found] == expected, query
    # Every project that runs on 2.7 (some 2.7.z: a user on 2.7.18 installs what wants
    # >=2.7.9) is listed, and no other (from the simulator's data).
    def runs_on(python):
        found = []
        for project in projects(world):
            latest = world.index.latest(project)
            if latest is None:  # (no release yet: nothing of it runs anywhere)
                continue
            requires = latest.requires_python
            if not requires or any(SpecifierSet(requires).contains(one, prereleases=True)
                                   for one in python):
                found.append(project.normalized)
        return found
    runs_on_27 = runs_on([f"2.7.{micro}" for micro in range(40)])
    assert 25 < len(runs_on_27) < len(world.index.listing())
    found = await every_page(f"{url}/browse/?python=2.7")
    assert [p["key"] for p in found] == runs_on_27
    # A series, or one release of it.
    on_38 = [p["key"] for p in await every_page(f"{url}/browse/?python=3.8")]
    assert "micro-bound" in on_38 and on_38 == runs_on([f"3.8.{m}" for m in range(40)])
    on_380 = [p["key"] for p in await every_page(f"{url}/browse/?python=3.8.0")]
    assert "micro-bound" not in on_380 and on_380 == runs_on(["3.8.0"])
    bad = await treq.get(f"{url}/browse/?python=three", headers=JSON)
    assert bad.code == 400 and "not a version" in (await bad.json())["error"]


@pytest_twisted.ensureDeferred
async def test_by_author_maintainer_and_keyword(site):
    world, url = site
    by_author, by_maintainer, by_keyword = defaultdict(set), defaultdict(set), defaultdict(set)
    for project in projects(world):
        latest = world.index.latest(project)
        if latest is None:
            continue
        if latest.metadata.get("author"):
            by_author[latest.metadata["author"].lower()].add(project.normalized)
        if latest.metadata.get("maintainer"):
            by_maintainer[latest.metadata["maintainer"].lower()].add(project.normalized)
        for word in keywords_of(latest.metadata.get("keywords")):
            by_keyword[word].add(project.normalized)
    author = max(by_author, key=lambda a: len(by_author[a]))
    found = await every_page(f"{url}/browse/author/{quote(author.upper())}")
    assert [p["key"] for p in found] == sorted(by_author[author])
    maintainer = max(by_maintainer, key=lambda m: len(by_maintainer[m]))
    assert len(by_maintainer[maintainer]) > 1
    found = await every_page(f"{url}/browse/maintainer/{quote(maintainer.title())}")
    assert [p["key"] for p in found] == sorted(by_maintainer[maintainer])
    word = max(by_keyword, key=lambda w: len(by_keyword[w]))
    assert len(by_keyword[word]) > 5
    found = await every_page(f"{url}/browse/keyword/{quote(word)}")
    assert [p["key"] for p in found] == sorted(by_keyword[word])
    # A keyword of several words, with markup, as the hostile showcase has it.
    found = await every_page(f"{url}/browse/keyword/{quote('<b>bold</b>')}")
    assert [p["key"] for p in found] == [normalize(world.index.dataset.name(0))]


@pytest_twisted.ensureDeferred
async def test_links_to_an_author_maintainer_or_keyword_of_any_text_lead_to_its_list(
        couch_server, db_name):
    """Text a path would lose ("//", "..", a newline, a leading "/") goes in the query."""
    import html

    world = World(couch_server.url, db_name, projects=3, seed=2,
                  read_url=couch_server.read_url)
    world.index.publish("Odd.Names", "1.0", author="Ann//Bo\nCo", maintainer="..",
                        keywords="/lead,a&b=c #d,tail/")
    long_author = "Ann Author, " * 50  # (600 characters: too long to search by)
    world.index.publish("Long.Author", "1.0", author=long_author, keywords="short")
    await run_pass(world.importer(), full=True)
    await world.settled()
    front, port, url = serve(world.read_db, syncing=False)
    try:
        page = await (await treq.get(f"{url}/browse/project/odd-names")).text()
        links = [html.unescape(link) for link in
                 re.findall(r'href="(/browse/(?:author|maintainer|keyword)/[^"]*)"', page)]
        assert len(links) == 5, links
        for link in links:
            found = await every_page(url + link)
            assert [p["key"] for p in found] == ["odd-names"], link
        # Shown, not linked to a search this site would refuse (a 400).
        page = await (await treq.get(f"{url}/browse/project/long-author")).text()
        assert long_author.strip() in page and "/browse/author/" not in page
        assert '/browse/keyword/?name=short"' in page
    finally:
        await port.stopListening()
        world.close()


@pytest_twisted.ensureDeferred
async def test_authors_named_in_their_email_field_are_listed_quarantined_projects_not(
        couch_server, db_name):
    """PEP 621 metadata (hatch, flit, setuptools' pyproject) leaves the author empty
    and writes "Jane Doe <jane@x.org>" in author_email: PyPI shows Jane Doe, and her
    list must hold the project. A quarantined project is in no list (PyPI's index and
    search leave it out); its own page says its status."""
    world = World(couch_server.url, db_name, projects=2, seed=2,
                  read_url=couch_server.read_url)
    world.index.publish("Modern.Build", "1.0", author=None, keywords="pep621",
                        author_email='Jane Doe <jane@x.org>, "Roe, Rick" <rick@x.org>')
    world.index.publish("Held.Back", "1.0", author="Jane Doe", keywords="pep621")
    world.index.quarantine("Held.Back")
    # (another index's odd types: a page, not a 500)
    world.index.publish("Odd.Types", "1.0", author=42, author_email=["a@x.org"],
                        maintainer=["Ann"], maintainer_email=7)
    await run_pass(world.importer(), full=True)
    await world.settled()
    front, port, url = serve(world.read_db, syncing=False)
    try:
        for name in ("jane doe", "Roe, Rick"):
            found = await every_page(f"{url}/browse/author/?name={quote(name)}")
            assert [p["key"] for p in found] == ["modern-build"], name
        page = await (await treq.get(f"{url}/browse/project/modern-build")).text()
        assert '<a href="/browse/author/?name=Jane%20Doe">Jane Doe</a>, ' \
            '<a href="/browse/author/?name=Roe%2C%20Rick">Roe, Rick</a>' in page
        for listed in ("/browse/", "/browse/?q=held", "/browse/keyword/?name=pep621"):
            keys = [p["key"] for p in await every_page(url + listed)]
            assert "held-back" not in keys and (listed == "/browse/?q=held" or
                                                "modern-build" in keys), (listed, keys)
        page = await (await treq.get(f"{url}/browse/project/held-back")).text()
        assert "Status: quarantined" in page
        answer = await treq.get(f"{url}/browse/project/odd-types")
        assert answer.code == 200 and "/browse/author/" not in await answer.text()
    finally:
        await port.stopListening()
        world.close()


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
    assert both and [p["key"] for p in data["projects"]] == both
    assert data["next"] is None
    # A combination longer than a page (the data set has one: with the parent's own
    # parent), paged forward and back.
    wider = "Programming Language"
    both = sorted(under[parent] & under[wider])
    assert len(both) > browse.PAGE
    data = await get_json(f"{url}/browse/classifiers/?c={quote(parent)}&c={quote(wider)}")
    assert [p["key"] for p in data["projects"]] == both[:browse.PAGE]
    data = await get_json(url + data["next"])
    assert [p["key"] for p in data["projects"]] == both[browse.PAGE:2 * browse.PAGE]
    back = await get_json(url + data["prev"])
    assert [p["key"] for p in back["projects"]] == both[:browse.PAGE]
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
    key = normalize(world.index.dataset.name(0))  # the hostile showcase
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
    # A release's time is its first file's, to the second, as PyPI's JSON API says.
    uploaded = {(key, version): min(f.upload_time for f in release.files)
                .strftime("%Y-%m-%d %H:%M:%S UTC")
                for key, _ in world.index.listing()
                for version, release in world.index.get(key).releases.items()
                if release.files and world.index.get(key).status != "quarantined"}
    assert times == sorted(uploaded.values(), reverse=True)[:25]
    assert all(uploaded[r["key"], r["version"]] == r["uploaded"] for r in data["releases"])
    second = await get_json(url + data["next"])
    assert second["releases"][0]["uploaded"] <= times[-1]


def browse_in_chromium(url, key, advised):
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
        # From an advisory to who is exposed: one click.
        page.goto(f"{url}/browse/")
        with page.expect_navigation():
            page.locator("header a", has_text="Advisories").click()
        seen["advisories_title"] = page.locator("h1").inner_text()
        row = page.locator("tbody tr", has=page.locator(f"a[href='/browse/project/{advised}']"))
        seen["advised"] = row.locator("td:first-child a").inner_text()
        with page.expect_navigation():
            row.locator("a.dependents").click()
        seen["dependents_url"] = page.url
        seen["dependents_title"] = page.locator("h1").inner_text()
        seen["warning"] = page.locator(".warning strong").first.inner_text()
        seen["exposed"] = sorted(page.locator("tbody tr td:first-child a").all_inner_texts())
        # A rendered description; and "required by" leads to the dependents.
        page.goto(f"{url}/browse/project/readme-markdown")
        seen["description_h1"] = page.locator("div.description h1").inner_text()
        seen["description_links"] = page.locator("div.description a[href]").evaluate_all(
            "links => links.map(a => a.getAttribute('href'))")
        page.goto(f"{url}/browse/project/spec-test")
        with page.expect_navigation():
            page.locator("a.required-by").click()
        seen["spec_dependents"] = sorted(
            page.locator("tbody tr td:first-child a").all_inner_texts())
        browser.close()
    return seen


@requires_command("chromium", "chromium")
@pytest_twisted.ensureDeferred
async def test_a_real_browser_follows_the_pages_and_runs_no_script_from_metadata(site):
    world, url = site
    key = normalize(world.index.dataset.name(0))
    answers = simulator_answers(world)
    exposed, _ = dependents_oracle(answers)
    advised = max(open_advisories_oracle(answers), key=lambda k: len(exposed.get(k, {})))
    assert len(exposed[advised]) > browse.PAGE // 2
    seen = await threads.deferToThread(browse_in_chromium, url, key, advised)
    assert seen["dialogs"] == [] and seen["errors"] == []
    assert seen["title"] == "All projects — pypioncouch"
    assert "q=" in seen["search_url"] and seen["search_hits"] >= 1
    assert seen["summary"] == '<script>alert("pwned")</script>'  # shown as text
    assert seen["simple_title"] == f"Links for {key}"
    assert seen["keyword_page"].startswith("Projects with keyword")
    assert seen["classifier_rows"] >= 1
    assert seen["status"] == "Status"
    assert seen["advisories_title"] == "Projects with open advisories"
    assert seen["advised"] == answers[advised]["info"]["name"]
    assert seen["dependents_url"] == f"{url}/browse/dependents/{advised}"
    assert seen["dependents_title"] == f"Projects that require {seen['advised']}"
    assert "open advisor" in seen["warning"]
    assert seen["exposed"] == sorted(answers[k]["info"]["name"]
                                     for k in sorted(exposed[advised])[:browse.PAGE])
    assert seen["description_h1"] == "Title"
    assert all(link.startswith(("https://", "#")) for link in seen["description_links"])
    assert seen["spec_dependents"] == ["Readme.Markdown", "Readme_Rst", "readme-raw-rst"]


def pep503(name):
    """The oracle's own normalization (PEP 503's rule, not the product's code)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def simulator_answers(world):
    """``{key: the simulator's JSON API answer}`` of every project it serves."""
    answers = {}
    for key, _ in world.index.listing():
        status, body, _ = world.index.json_api(key)
        if status == 200:
            answers[key] = json.loads(body)
    return answers


def dependents_oracle(answers):
    """``({required: {dependent: [requirement, ...]}}, unparsable count)`` from the
    simulator's answers: the latest release's Requires-Dist, a project's requirement
    on itself left out."""
    found, unparsable = defaultdict(dict), 0
    for key, answer in answers.items():
        for text in answer["info"]["requires_dist"] or []:
            try:
                required = pep503(Requirement(text).name)
            except InvalidRequirement:
                unparsable += 1
                continue
            if required != key:
                found[required].setdefault(key, []).append(text)
    return found, unparsable


@pytest_twisted.ensureDeferred
async def test_dependents_are_exactly_the_projects_whose_latest_release_requires_it(site):
    world, url = site
    answers = simulator_answers(world)
    expected, unparsable = dependents_oracle(answers)
    assert expected["spec-test"] == {  # spelled four ways, one of them a self-extra
        "readme-markdown": ["SPEC_test>=1.0; python_version >= '3.8'", "spec.test[extra]"],
        "readme-rst": ["Spec-Test (>=2.0)"],
        "readme-raw-rst": ["spec_test ; extra == 'docs'"]}
    popular = max(expected, key=lambda k: len(expected[k]) if k in answers else 0)
    assert len(expected[popular]) > browse.PAGE  # paged, more than one page
    spelled_otherwise = [t for deps in expected.values() for texts in deps.values()
                         for t in texts if not t.startswith(tuple(expected))]
    assert len(spelled_otherwise) > 10  # non-normalized names count for the normalized
    listed = {key for key, _ in world.index.listing()}
    # Every project of the simulator (and names outside it, such as attrs).
    for key in sorted(listed | set(expected)):
        rows, pages, last = await walk_pages(f"{url}/browse/dependents/{key}")
        got = {row["key"]: row["requirements"] for row in rows}
        assert got == expected.get(key, {}), key
        assert [row["key"] for row in rows] == sorted(got)
        assert all(row["requirement"] == row["requirements"][0] and row["name"]
                   for row in rows)
        assert last["total"] == len(got) and last["stored"] == (key in listed)
        if key == popular:
            assert pages > 1
    # The project page counts them and links to the list; a name as written redirects.
    page = await get_json(f"{url}/browse/project/{popular}")
    assert page["required_by"] == len(expected[popular])
    html = await (await treq.get(f"{url}/browse/project/{popular}")).text()
    assert (f'href="/browse/dependents/{popular}" class="required-by">required by '
            f'{len(expected[popular])} projects</a>') in html
    moved = await treq.get(f"{url}/browse/dependents/SPEC_Test?python=3.12",
                           allow_redirects=False)
    assert moved.code == 301
    assert moved.headers.getRawHeaders("location") == ["/browse/dependents/spec-test?python=3.12"]
    # The count is of them all; narrowed to a Python, the page says the list is not.
    html = await (await treq.get(f"{url}/browse/dependents/{popular}?python=3.12")).text()
    assert f"{len(expected[popular])} projects whose latest release requires" in html
    assert "listed below, those that run on Python 3.12." in html
    # Requirements that do not parse are left out, and counted on /status.
    assert unparsable >= 2
    status = await get_json(f"{url}/status")
    assert status["stored"]["requirements_unparsable"] == unparsable


def open_advisories_oracle(answers):
    return {key: [{"id": v["id"], "aliases": v["aliases"], "fixed_in": v["fixed_in"]}
                  for v in answer["vulnerabilities"] if not v["withdrawn"]]
            for key, answer in answers.items()
            if any(not v["withdrawn"] for v in answer["vulnerabilities"])}


@pytest_twisted.ensureDeferred
async def test_advisories_open_fixed_and_withdrawn(site):
    world, url = site
    answers = simulator_answers(world)
    expected = open_advisories_oracle(answers)
    dataset = world.index.dataset
    hostile, withdrawn, fixed, several = (pep503(dataset.name(i)) for i in (0, 1, 2, 5))
    assert {hostile, several} <= set(expected) and len(expected) > 5
    browse.PAGE, saved = 4, browse.PAGE
    try:
        rows, pages, last = await walk_pages(f"{url}/browse/advisories/")
    finally:
        browse.PAGE = saved
    got = {row["key"]: [{k: a[k] for k in ("id", "aliases", "fixed_in")}
                        for a in row["advisories"]] for row in rows}
    assert got == expected and pages > 1 and last["total"] == len(expected)
    assert got[several] == [
        {"id": "PYSEC-2025-105", "aliases": ["CVE-2025-3105", "GHSA-0005-abcd-efgh"],
         "fixed_in": []},
        {"id": "PYSEC-2025-905", "aliases": ["CVE-2025-905"], "fixed_in": ["2.0"]}]
    # Withdrawn: not open, but listed as withdrawn on the project page.
    assert withdrawn not in got
    page = await get_json(f"{url}/browse/project/{withdrawn}")
    assert page["advisories"]["open"] == []
    assert [a["withdrawn"] for a in page["advisories"]["withdrawn"]] == ["2024-03-01T12:00:00Z"]
    # Fixed in the latest release: the older releases had it, the latest has not.
    assert fixed not in got
    older = json.loads(world.index.json_api(fixed, "1.0.0")[1])
    assert [v["fixed_in"] for v in older["vulnerabilities"]] == [["1.1.0.post1"]]
    # Open: the project page lists them; its dependents page warns.
    page = await get_json(f"{url}/browse/project/{several}")
    assert [a["id"] for a in page["advisories"]["open"]] == ["PYSEC-2025-105", "PYSEC-2025-905"]
    dependents = await get_json(f"{url}/browse/dependents/{several}")
    assert [a["id"] for a in dependents["advisories"]] == ["PYSEC-2025-105", "PYSEC-2025-905"]
    html = await (await treq.get(f"{url}/browse/dependents/{several}")).text()
    assert "has 2 open advisories" in html


@pytest_twisted.ensureDeferred
async def test_hostile_advisories_are_shown_as_text(site):
    world, url = site
    key = pep503(world.index.dataset.name(0))
    for path in (f"/browse/project/{key}", f"/browse/dependents/{key}", "/browse/advisories/"):
        answer = await treq.get(url + path)
        html = await answer.text()
        assert "PYSEC-2020-&lt;script&gt;alert(9)&lt;/script&gt;" in html, path
        assert "<script>" not in html and "<svg" not in html and "<img src=x" not in html
        assert 'href="javascript:' not in html
        assert "script-src 'none'" in answer.headers.getRawHeaders("content-security-policy")[0]
    data = await get_json(f"{url}/browse/project/{key}")
    assert data["advisories"]["open"][0]["link"] is None  # a javascript: link is no link
    assert data["advisories"]["open"][0]["summary"] == '<script>alert("pwned")</script>'


@pytest_twisted.ensureDeferred
async def test_descriptions_render_as_pypi_renders_them_once_and_inert(site):
    world, url = site
    front = world.front

    async def description(key):
        html = await (await treq.get(f"{url}/browse/project/{key}")).text()
        start = html.index("<h2>Description</h2>")
        return html[start:html.index("</main>")]

    markdown = await description("readme-markdown")
    assert '<div class="description project-description"><h1 id="user-content-title">Title' \
        in markdown
    assert "<em>emphasis</em>" in markdown
    assert '<a href="https://example.org/x" rel="nofollow">a link</a>' in markdown
    assert "&lt;script&gt;alert(5)&lt;/script&gt;" in markdown  # GFM's tag filter
    for inert in ("javascript:", "onerror", "onclick", "<script"):
        assert inert not in markdown, inert
    rst = await description("readme-rst")
    assert "<strong>bold</strong>" in rst and "<h1>Title" in rst and "javascript:" not in rst
    # A raw HTML directive does not render on PyPI: shown as plain text, escaped.
    raw = await description("readme-raw-rst")
    assert ".. raw:: html" in raw and "&lt;script&gt;alert(7)&lt;/script&gt;" in raw
    assert "<script" not in raw
    plain = await description("readme-plain")
    assert "<pre>&lt;b&gt;not bold&lt;/b&gt;<br>line two</pre>" in plain  # (PyPI's <pre>)
    assert "<pre>" not in raw  # (a fallback to plain text is not preformatted on PyPI)
    data = await get_json(f"{url}/browse/project/readme-markdown")
    assert data["description_rendered_as"] == "text/markdown"
    assert data["description_html"].startswith('<h1 id="user-content-title">Title')
    assert (await get_json(f"{url}/browse/project/readme-raw-rst"))[
        "description_rendered_as"] == "text/plain"
    # Rendered once per release, not per request.
    before = front.browse_pages.descriptions.renders
    for _ in range(3):
        await description("readme-markdown")
    assert front.browse_pages.descriptions.renders == before


class ViewStandIn:
    """The catalog view's rows in memory, answering ``couchapp.query`` as CouchDB's
    keyed range reads do (for the paging arithmetic alone; every page is also walked
    on the real servers above). Counts the queries."""

    def __init__(self, keys):
        self.keys = sorted(keys, key=self.collated)
        self.order = [self.collated(k) for k in self.keys]
        self.queries = 0

    @staticmethod
    def collated(key):
        """CouchDB's order for these keys: strings, then objects ({} ends a range)."""
        return tuple((0, part) if isinstance(part, str) else (1, "") for part in key)

    async def query(self, db, *, startkey, endkey, descending, limit, reduce):
        from bisect import bisect_left, bisect_right

        self.queries += 1
        start, end = self.collated(startkey), self.collated(endkey)
        if descending:
            high, low = bisect_right(self.order, start), bisect_left(self.order, end)
            rows = self.keys[max(low, high - limit):high][::-1]
        else:
            low, high = bisect_left(self.order, start), bisect_right(self.order, end)
            rows = self.keys[low:min(high, low + limit)]
        return [{"key": k, "id": k[-1]} for k in rows]


@pytest.mark.parametrize("limit", [1, 2, 5])
@pytest.mark.parametrize("kept", [
    {"p00010", "p04500"}, {"p00010", "p04500", "p04501"}, {"p04500"}, {"p00010"}])
@pytest_twisted.ensureDeferred
async def test_pages_the_scan_limit_leaves_empty_link_on_without_losing_a_row(
        monkeypatch, kept, limit):
    """A sparse filter: 2,000 rows read a page and none kept. Every such page links
    both ways, and each row kept is reached walking forward, then walking back from
    the end (it had only "Next"; then "Next" of an emptied backward page skipped the
    row it came from)."""
    view = ViewStandIn([["f", f"p{i:05d}"] for i in range(8000)])
    monkeypatch.setattr(browse.couchapp, "query", view.query)

    async def keep(rows):
        return [row for row in rows if row["id"] in kept]

    async def page(**cursor):
        return await browse.keyset_page(None, low=["f"], high=["f", {}], keep=keep,
                                        limit=limit, **cursor)

    seen, current, pages = [], await page(), []
    while True:
        pages.append(current)
        seen += [r["id"] for r in current.rows]
        if current.next is None:
            break
        current = await page(after=current.next)
    assert seen == sorted(kept)
    assert all(p.prev is not None for p in pages[1:])  # (each links back)
    # Back from the end, then Next from every page on the way: nothing is lost.
    last_rows = [r["id"] for r in pages[-1].rows]
    current, back_seen = pages[-1], []
    while current.prev is not None:
        current = await page(before=current.prev)
        back_seen = [r["id"] for r in current.rows] + back_seen
        if not current.rows and back_seen + last_rows:  # Next, on to a page with rows:
            onward = current  # the first row after it
            while not onward.rows:
                assert onward.next is not None
                onward = await page(after=onward.next)
            assert onward.rows[0]["id"] == (back_seen + last_rows)[0]
    assert back_seen + last_rows == sorted(kept)


@pytest_twisted.ensureDeferred
async def test_a_page_after_a_cursor_is_one_query(monkeypatch):
    view = ViewStandIn([["f", f"p{i:03d}"] for i in range(100)])
    monkeypatch.setattr(browse.couchapp, "query", view.query)
    first = await browse.keyset_page(None, low=["f"], high=["f", {}], limit=10)
    view.queries = 0
    second = await browse.keyset_page(None, low=["f"], high=["f", {}], limit=10,
                                      after=first.next)
    assert [r["id"] for r in second.rows] == [f"p{i:03d}" for i in range(10, 20)]
    assert view.queries == 1 and second.next == ["f", "p019"]


@pytest.mark.parametrize("requires_python, python, runs", [
    (">3.8", "3.8", True), ("!=3.8", "3.8", True), ("<3.8", "3.8", False),
    ("!=3.8.*", "3.8", False), (">=3.8.1,<4", "3.8", True), (">3.8.20", "3.8", True),
    ("==3.7.*", "3.8", False), (">3.8", "3.8.0", False), (">3.8", "3.9", True)])
def test_a_series_runs_what_one_of_its_releases_runs(requires_python, python, runs):
    """?python=3.8: a user on 3.8.1 or later installs what wants >3.8 (pip does)."""
    assert browse.python_matches(requires_python, python) is runs


@pytest.mark.parametrize("requires_python", [3, 3.9, ["3"]])
def test_a_requires_python_that_is_not_text_hides_nothing(requires_python):
    assert browse.python_matches(requires_python, "3.12") is True


@pytest.mark.parametrize("url, link", [
    ("https://github.com/x", "https://github.com/x"),
    ("HTTPS://github.com/x", "HTTPS://github.com/x"),  # (as some projects give them)
    (" Http://example.org/docs ", "Http://example.org/docs"),
    ("javascript:alert(1)", None), ("JAVASCRIPT:alert(1)", None),
    (" javascript:alert(1)", None), ("https:javascript:alert(1)", None),
    ("data:text/html,<script>", None), ("//evil.example/", None), ("https://[x", None),
    ("ftp://example.org/", None), ("", None), (None, None), (7, None)])
def test_a_link_from_metadata_is_to_an_http_host_only(url, link):
    assert browse.safe_link(url) == link


def test_a_project_page_takes_odd_links_as_text():
    """Another index may give project_urls as a list, a null URL, a home page number."""
    for urls, home in (([["Docs", "https://d"]], 5), ({"Docs": None, "Src": "https://s"}, None)):
        data = browse.project_page_data(
            {"_id": "x", "name": "X", "project_urls": urls, "home_page": home}, [])
        assert data["home_page"] is None
        assert data["project_urls"] == ({} if isinstance(urls, list) else {"Src": "https://s"})


@pytest_twisted.ensureDeferred
async def test_an_author_in_two_unicode_spellings_pages_through_and_filters(
        couch_server, db_name, monkeypatch):
    """Apache CouchDB collates "José" and "Jose\\u0301" as one string: a page ending on
    either goes on (it answered 400). The "Runs on Python" form keeps the name."""
    import html
    import unicodedata

    monkeypatch.setattr(browse, "PAGE", 10)
    nfc = "José García"
    nfd = unicodedata.normalize("NFD", nfc)
    world = World(couch_server.url, db_name, projects=2, seed=2,
                  read_url=couch_server.read_url)
    for number in range(30):
        world.index.publish(f"Spelled-{number:02d}", "1.0", author=nfd if number % 2 else nfc,
                            requires_python=">=3.10" if number % 3 else "<3")
    await run_pass(world.importer(), full=True)
    await world.settled()
    front, port, url = serve(world.read_db, syncing=False)
    try:
        # Apache CouchDB's collation (ICU) takes both spellings as the name; pouchdb-server
        # compares code points, so only the NFC ones are under it there.
        both = couch_server.kind != "pouchdb"
        expected = [f"spelled-{number:02d}" for number in range(30)
                    if both or number % 2 == 0]
        found = await every_page(f"{url}/browse/author/?name={quote(nfc)}")
        assert [p["key"] for p in found] == expected
        page = await (await treq.get(f"{url}/browse/author/?name={quote(nfc)}")).text()
        assert f'<input type="hidden" name="name" value="{html.escape(nfc)}">' in page
        found = await every_page(f"{url}/browse/author/?name={quote(nfc)}&python=3.12")
        assert [p["key"] for p in found] == [
            key for key in expected if int(key.rsplit("-", 1)[1]) % 3]
    finally:
        await port.stopListening()
        world.close()


@pytest_twisted.ensureDeferred
async def test_a_classifier_first_seen_since_the_counts_lists_its_projects(
        couch_server, db_name):
    """The counts are kept up to a minute: a classifier new since then still lists
    its projects (it said "0 projects")."""
    world = World(couch_server.url, db_name, projects=4, seed=2,
                  read_url=couch_server.read_url)
    await run_pass(world.importer(), full=True)
    await world.settled()
    front, port, url = serve(world.read_db, syncing=False)
    try:
        await get_json(f"{url}/browse/classifiers/")  # the counts, taken now
        new = "Topic :: Brand :: New"
        world.index.publish("Fresh.Thing", "1.0", classifiers=[new])
        await run_pass(world.importer())
        await world.settled()
        data = await get_json(f"{url}/browse/classifiers/?c={quote(new)}")
        assert ([p["key"] for p in data["projects"]], data["total"]) == (["fresh-thing"], 1)
    finally:
        await port.stopListening()
        world.close()

"""The PyPI simulator speaks PyPI's APIs as the reference describes them."""

import json
import subprocess
import sys
import urllib.request
import xmlrpc.client
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.web.xmlrpc import Proxy

from pypioncouch.testing.dataset import Dataset, normalize
from pypioncouch.testing.index import PackageIndex
from pypioncouch.testing.pypi import SimulatorProcess, listen, make_simulator

VENV_BIN = Path(sys.executable).parent
V1_JSON_LITERAL = "application/vnd.pypi.simple.v1+json"


@pytest.fixture(scope="module")
def simulator_process():
    with SimulatorProcess("--projects", "30", "--seed", "3") as process:
        yield process


@pytest.fixture
def sim():
    """An in-process simulator of 30 projects; yields (resource, url)."""
    resource = make_simulator(30, seed=3)
    port, url = listen(resource)
    yield resource, url
    port.stopListening()


def versions_project(index):
    return index.get(index.dataset.name(2))  # the showcase with yanks and pre-releases


def test_pip_installs_from_the_simulator_and_skips_the_yanked_release(simulator_process, tmp_path):
    name = Dataset(30, 3).name(2)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir",
                    "--disable-pip-version-check", "--target", str(tmp_path),
                    "--index-url", simulator_process.url + "/simple/", name],
                   check=True, capture_output=True)
    installed = [p.name for p in tmp_path.iterdir() if p.name.endswith(".dist-info")]
    # 1.2.0 is yanked and 2.0.0.dev1 has no files: pip takes 1.1.0.post1
    assert installed == [f"{normalize(name).replace('-', '_')}-1.1.0.post1.dist-info"]


def test_uv_installs_a_pinned_yanked_release(simulator_process, tmp_path):
    name = Dataset(30, 3).name(2)
    subprocess.run([str(VENV_BIN / "uv"), "pip", "install", "--no-cache", "--target",
                    str(tmp_path), "--python", sys.executable, "--index-url",
                    simulator_process.url + "/simple/", f"{name}==1.2.0"],
                   check=True, capture_output=True)
    assert any(p.name.endswith("-1.2.0.dist-info") for p in tmp_path.iterdir())


def test_xmlrpc_shapes_through_xmlrpc_client(simulator_process):
    proxy = xmlrpc.client.ServerProxy(simulator_process.url + "/pypi", allow_none=True)
    last = proxy.changelog_last_serial()
    rows = proxy.changelog_since_serial(0)
    assert rows[-1][4] == last and len(rows) == 30
    name, version, timestamp, action, serial = rows[0]
    assert (version, action) == (None, "create") and isinstance(timestamp, int)
    assert [r[4] for r in rows] == sorted(r[4] for r in rows)
    listing = proxy.list_packages_with_serial()
    assert len(listing) == 30 and all(isinstance(v, int) for v in listing.values())
    assert proxy.package_roles(name.upper())[0][0] == "Owner"
    assert proxy.package_roles("no-such-project") == []
    for method, args, code in [("package_releases", ("x",), -32500),
                               ("release_data", ("x", "1"), -32500),
                               ("changelog", (0,), -32500), ("search", ({},), -32500),
                               ("changelog_since_serial", (True,), -32602),
                               ("changelog_since_serial", ("1",), -32602),
                               ("changelog_last_serial", (1,), -32602),
                               ("updated_releases", (), -32601)]:
        with pytest.raises(xmlrpc.client.Fault) as fault:
            getattr(proxy, method)(*args)
        assert fault.value.faultCode == code, method
    with pytest.raises(xmlrpc.client.Fault) as multicall:
        multi = xmlrpc.client.MultiCall(proxy)
        multi.changelog_last_serial()
        multi()
    assert "MultiCall requests have been deprecated" in multicall.value.faultString


@pytest_twisted.ensureDeferred
async def test_xmlrpc_through_twisted_proxy(sim):
    resource, url = sim
    proxy = Proxy((url + "/pypi").encode(), allowNone=True)
    serial = await proxy.callRemote("changelog_last_serial")
    assert serial == resource.index.last_serial
    rows = await proxy.callRemote("changelog_since_serial", serial - 4)
    assert [r[4] for r in rows] == [serial - 2, serial]
    browse = await proxy.callRemote("browse", ["Framework :: Twisted"])
    assert browse == sorted(browse, key=lambda r: r[0])


@pytest_twisted.ensureDeferred
async def test_every_mutation_is_journaled_with_increasing_serials(sim):
    resource, url = sim
    index = resource.index
    start = index.last_serial
    name = index.dataset.name(6)
    key = normalize(name)
    version = list(index.get(key).releases)[-1]
    steps = [("publish", {"name": "Brand_New.pkg", "version": "1.0"}),
             ("add_file", {"name": "brand-new-pkg", "version": "1.0"}),
             ("yank", {"name": key, "version": version, "reason": "oops"}),
             ("unyank", {"name": key, "version": version}),
             ("publish", {"name": key, "version": "99.0"}),
             ("remove_file", {"name": key, "version": "99.0",
                              "filename": f"{key.replace('-', '_')}-99.0-py3-none-any.whl"}),
             ("remove_release", {"name": key, "version": "99.0"}),
             ("add_role", {"name": key, "role": "Maintainer", "user": "zoe"}),
             ("remove_role", {"name": key, "role": "Maintainer", "user": "zoe"}),
             ("quarantine", {"name": key}), ("clear_quarantine", {"name": key}),
             ("remove_project", {"name": "brand-new-pkg"})]
    for operation, args in steps:
        answer = await treq.post(f"{url}/_control/{operation}", json=args)
        assert answer.code == 200, (operation, await answer.text())
    proxy = Proxy((url + "/pypi").encode(), allowNone=True)
    rows = await proxy.callRemote("changelog_since_serial", start)
    actions = [(r[0], r[1], r[3]) for r in rows]
    assert actions == [
        ("Brand_New.pkg", None, "create"), ("Brand_New.pkg", None, "add Owner simulator"),
        ("Brand_New.pkg", "1.0", "new release"),
        ("Brand_New.pkg", "1.0", "add py3 file brand_new_pkg-1.0-py3-none-any.whl"),
        ("Brand_New.pkg", "1.0", "add py2.py3 file brand_new_pkg-1.0-py2.py3-none-any.whl"),
        (name, version, "yank release"), (name, version, "unyank release"),
        (name, "99.0", "new release"),
        (name, "99.0", f"add py3 file {key.replace('-', '_')}-99.0-py3-none-any.whl"),
        (name, "99.0", f"remove file {key.replace('-', '_')}-99.0-py3-none-any.whl"),
        (name, "99.0", "remove release"), (name, None, "add Maintainer zoe"),
        (name, None, "remove Maintainer zoe"), (name, None, "project quarantined"),
        (name, None, "project quarantine cleared"), ("Brand_New.pkg", None, "remove project")]
    serials = [r[4] for r in rows]
    assert serials == sorted(set(serials)) and serials[-1] == index.last_serial
    answer = await treq.get(f"{url}/pypi/brand-new-pkg/json")
    assert answer.code == 404
    bad = await treq.post(f"{url}/_control/yank", json={"name": "nope", "version": "1"})
    assert bad.code == 400 and "nope" in (await bad.json())["error"]


@pytest_twisted.ensureDeferred
async def test_json_api_shape_redirect_and_404s(sim):
    resource, url = sim
    index = resource.index
    name = index.dataset.name(2)
    key = normalize(name)
    answer = await treq.get(f"{url}/pypi/{name.upper()}/json", allow_redirects=False)
    assert answer.code == 301 and answer.headers.getRawHeaders("location") == [f"/pypi/{key}/json"]
    answer = await treq.get(f"{url}/pypi/{key}/json")
    body = await answer.content()
    assert body.endswith(b"}\n")
    data = json.loads(body)
    assert list(data) == sorted(data)
    assert answer.headers.getRawHeaders("x-pypi-last-serial") == [str(data["last_serial"])]
    assert data["info"]["version"] == "1.1.0.post1"  # 1.2.0 is yanked, 2.0.0.dev1 is a pre
    assert data["releases"]["2.0.0.dev1"] == []
    yanked = data["releases"]["1.2.0"][0]
    assert yanked["yanked"] is True and yanked["yanked_reason"] == "broken build"
    assert set(data["info"]) >= {"summary", "description", "keywords", "classifiers",
                                 "project_urls", "requires_dist", "yanked_reason"}
    one = await (await treq.get(f"{url}/pypi/{key}/1.2/json")).json()
    assert one["info"]["version"] == "1.2.0" and "releases" not in one
    no_releases = normalize(index.dataset.name(3))
    assert (await treq.get(f"{url}/pypi/{no_releases}/json")).code == 404
    simple_page = await treq.get(f"{url}/simple/{no_releases}/", headers={"Accept": V1_JSON_LITERAL})
    assert simple_page.code == 200 and (await simple_page.json())["files"] == []
    assert (await treq.get(f"{url}/simple/no-such-thing/")).code == 404


@pytest_twisted.ensureDeferred
async def test_files_have_the_digests_the_listing_promises(sim):
    import hashlib

    resource, url = sim
    key = normalize(resource.index.dataset.name(0))
    data = await (await treq.get(f"{url}/pypi/{key}/json")).json()
    for files in data["releases"].values():
        for entry in files:
            content = await (await treq.get(entry["url"])).content()
            assert len(content) == entry["size"]
            assert hashlib.sha256(content).hexdigest() == entry["digests"]["sha256"]
            assert hashlib.md5(content).hexdigest() == entry["md5_digest"]
            assert hashlib.blake2b(content, digest_size=32).hexdigest() == \
                entry["digests"]["blake2b_256"]
            metadata = await (await treq.get(entry["url"] + ".metadata")).content()
            assert hashlib.sha256(metadata).hexdigest() == entry["core-metadata"]["sha256"]


@pytest_twisted.ensureDeferred
async def test_simple_api_negotiates_like_warehouse(sim):
    resource, url = sim
    key = normalize(resource.index.dataset.name(2))
    pip_accept = ("application/vnd.pypi.simple.v1+json, "
                  "application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01")
    page = await treq.get(f"{url}/simple/{key}/", headers={"Accept": pip_accept})
    assert page.headers.getRawHeaders("content-type") == [V1_JSON_LITERAL]
    data = await page.json()
    assert data["versions"] == ["1.0.0", "1.1.0a1", "1.1.0", "1.1.0.post1", "1.2.0"]
    assert {f["yanked"] for f in data["files"]} == {False, True, "broken build"}
    assert list(data["files"][0]) == [  # PyPI's keys, in PyPI's order (reference §4.2)
        "filename", "url", "hashes", "requires-python", "size", "upload-time", "yanked",
        "core-metadata", "data-dist-info-metadata", "provenance"]
    assert data["files"][0]["provenance"] is None
    html = await treq.get(f"{url}/simple/{key}/")
    assert html.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    assert b'data-yanked="broken build"' in await html.content()
    redirect = await treq.get(f"{url}/simple/{key.upper()}", allow_redirects=False)
    assert redirect.headers.getRawHeaders("location") == [f"/simple/{key}/"]


def test_the_simulator_runs_without_importing_the_product(tmp_path):
    """The simulator is the oracle the mirror is checked against: it must not render or
    order anything with the product's code. Run it as a process (``-X importtime`` logs
    every module it imports, also the ones imported lazily), ask every kind of
    question, and list the ``pypioncouch`` modules it loaded."""
    log = tmp_path / "imports.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "pypioncouch.testing.pypi",
             "--port", "0", "--projects", "10", "--seed", "3"],
            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, text=True)
        try:
            url = process.stdout.readline().split(" on ", 1)[1].split("/ ", 1)[0]
            key = normalize(Dataset(10, 3).name(2))

            def get(path, accept=None):
                request = urllib.request.Request(url + path, headers={"Accept": accept}
                                                 if accept else {})
                with urllib.request.urlopen(request, timeout=30) as answer:
                    return answer.read()
            for accept in (None, V1_JSON_LITERAL):
                get("/simple/", accept)
                get(f"/simple/{key}/", accept)
            data = json.loads(get(f"/pypi/{key}/json"))
            get(f"/pypi/{key}/1.0.0/json")
            get(data["urls"][0]["url"][len(url):])
            get(data["urls"][0]["url"][len(url):] + ".metadata")
            proxy = xmlrpc.client.ServerProxy(url + "/pypi", allow_none=True)
            proxy.changelog_since_serial(0)
            proxy.list_packages_with_serial()
            proxy.browse(["Typing :: Typed"])
            with pytest.raises(xmlrpc.client.Fault):
                proxy.package_releases(key)
            urllib.request.urlopen(urllib.request.Request(
                url + "/_control/publish", data=b'{"name": "x", "version": "1"}'), timeout=30)
        finally:
            process.terminate()
            process.wait(10)
    imported = {line.rsplit("|", 1)[1].strip() for line in log.read_text().splitlines()
                if line.startswith("import time:") and "|" in line}
    ours = {m for m in imported if m.split(".")[0] == "pypioncouch"}
    assert "pypioncouch.testing.simple_pages" in ours  # (the log is read right)
    assert {m for m in ours if m.split(".")[:2] != ["pypioncouch", "testing"]} == \
        {"pypioncouch"}  # the package itself (its __init__ imports nothing)


WAREHOUSE_NEGOTIATION = [
    (None, "text/html"),
    ("", "text/html"),
    ("*/*", "text/html"),
    ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
     "text/html; q=0.01", V1_JSON_LITERAL),
    ("application/vnd.pypi.simple.v1+html", "application/vnd.pypi.simple.v1+html"),
    ("application/json", "text/html"),  # nothing acceptable: HTML, never a 406
    ("text/html;q=0", "text/html"),
    ("text/html;q=0, */*", "application/vnd.pypi.simple.v1+html"),
    ("application/*;q=0.5, text/html;q=0.4", "application/vnd.pypi.simple.v1+html"),
    ("*/*;q=0.1, application/vnd.pypi.simple.v1+json;q=0.1", "text/html"),  # tie: first
    ("*/*;q=0, application/vnd.pypi.simple.v1+json", V1_JSON_LITERAL),
    ("not a media range", "text/html"),
]


@pytest.mark.parametrize("accept, chosen", WAREHOUSE_NEGOTIATION)
def test_the_simulator_negotiates_as_warehouse_does(accept, chosen):
    from pypioncouch.testing.simple_pages import choose_content_type

    assert choose_content_type(accept) == chosen


def test_the_same_seed_gives_the_same_data_set():
    first, second, other = (PackageIndex(Dataset(50, seed)) for seed in (7, 7, 8))
    assert first.listing() == second.listing() != other.listing()
    for key, _ in first.listing()[:10]:
        assert first.json_api(key) == second.json_api(key)


def test_data_sets_hold_the_hard_cases():
    dataset = Dataset(300, 1, heavy=True)
    projects = [dataset.project(i) for i in range(300)]
    names = [p.name for p in projects]
    assert any(n != normalize(n) for n in names) and any(n.lower() != n for n in names)
    metadata = [r.metadata for p in projects for r in p.releases.values()]
    assert any("<script>" in (m["summary"] or "") for m in metadata)
    assert any(m["summary"] is None for m in metadata) and any(m["summary"] == "" for m in metadata)
    assert any("," in (m["keywords"] or "") for m in metadata)
    assert any(m["keywords"] and "," not in m["keywords"] and " " in m["keywords"] for m in metadata)
    assert any(not m["author"].isascii() for m in metadata if m["author"])
    assert any(p.releases and any(not r.files for r in p.releases.values()) for p in projects)
    assert any("<" in (m["requires_python"] or "") for m in metadata)
    assert len(projects[6].releases) == 3000
    assert len(next(iter(projects[7].releases.values())).metadata["description"]) > 4_000_000
    assert not projects[3].releases


def test_a_big_data_set_is_lazy():
    index = PackageIndex(Dataset(500_000, 2))
    assert index.last_serial == 999_999
    key = normalize(index.dataset.name(123_456))
    assert index.get(key).name == index.dataset.name(123_456)
    assert index.get("not-in-there-123456") is None
    assert len(index.changelog_since(999_000)) == 500


@pytest_twisted.ensureDeferred
async def test_faults_appear_at_the_asked_rate(sim):
    resource, url = sim
    key = normalize(resource.index.dataset.name(5))
    await treq.post(f"{url}/_control/faults",
                    json={"rate": 0.3, "kinds": ["500", "503", "429", "malformed"], "seed": 1})
    codes = []
    for _ in range(200):
        answer = await treq.get(f"{url}/pypi/{key}/json")
        body = await answer.content()
        ok = answer.code == 200 and body.endswith(b"\n")
        codes.append(ok)
        if answer.code == 429:
            assert answer.headers.getRawHeaders("retry-after") == ["1"]
    failed = codes.count(False)
    assert 40 <= failed <= 80, failed  # 30% of 200, give or take
    state = await (await treq.post(f"{url}/_control/state", json={})).json()
    assert sum(state["faults_injected"].values()) == failed


@pytest_twisted.ensureDeferred
async def test_stale_copies_carry_the_older_serial():
    from twisted.internet import reactor

    resource = make_simulator(10, seed=1, stale_seconds=60)
    resource.index.clock = reactor.seconds
    port, url = listen(resource)
    try:
        key = normalize(resource.index.dataset.name(2))
        before = (await (await treq.get(f"{url}/pypi/{key}/json")).json())["last_serial"]
        serial = resource.index.publish(key, "3.0")
        stale = await treq.get(f"{url}/pypi/{key}/json")
        assert stale.headers.getRawHeaders("x-pypi-last-serial") == [str(before)]
        resource.index.stale_seconds = 0
        resource.index._stale.clear()
        fresh = await (await treq.get(f"{url}/pypi/{key}/json")).json()
        assert fresh["last_serial"] == serial and "3.0" in fresh["releases"]
    finally:
        port.stopListening()


@pytest_twisted.ensureDeferred
async def test_legacy_xmlrpc_and_the_rate_limit():
    resource = make_simulator(10, seed=1, legacy_xmlrpc=True, xmlrpc_rate_limit=5)
    port, url = listen(resource)
    try:
        proxy = Proxy((url + "/pypi").encode(), allowNone=True)
        key = normalize(resource.index.dataset.name(2))
        assert await proxy.callRemote("package_releases", key) == ["1.1.0.post1"]
        data = await proxy.callRemote("release_data", key, "1.2.0")
        assert data["version"] == "1.2.0" and isinstance(data["keywords"], (str, type(None)))
        urls = await proxy.callRemote("release_urls", key, "1.2.0")
        assert urls[0]["upload_time"].endswith("Z") and urls[0]["sha256_digest"]
        await proxy.callRemote("changelog_last_serial")
        await proxy.callRemote("changelog_last_serial")
        with pytest.raises(Exception) as fault:
            await proxy.callRemote("changelog_last_serial")
        assert fault.value.faultCode == -32500
        assert "Limit may reset in" in fault.value.faultString
    finally:
        port.stopListening()


@pytest_twisted.ensureDeferred
async def test_listings_cut_short_or_frozen_on_request(sim):
    resource, url = sim
    proxy = Proxy((url + "/pypi").encode(), allowNone=True)

    async def both():
        xmlrpc_listing = await proxy.callRemote("list_packages_with_serial")
        answer = await treq.get(f"{url}/simple/", headers={"Accept": V1_JSON_LITERAL})
        page = await answer.json()
        index = {p["name"]: p["_last-serial"] for p in page["projects"]}
        return xmlrpc_listing, index, page["meta"]["_last-serial"]

    full, index, serial = await both()
    assert len(full) == len(index) == 30 and serial == resource.index.last_serial
    answer = await treq.post(f"{url}/_control/listing", json={"keep": 0.1, "start": 0.5})
    assert (await answer.json())["keep"] == 0.1
    cut, cut_index, cut_serial = await both()
    assert len(cut) == len(cut_index) == 3 and set(cut) == set(cut_index) < set(full)
    assert cut_serial == serial  # a cut-off answer still claims the latest serial
    await treq.post(f"{url}/_control/listing", json={"start": 0.0})
    other, _, _ = await both()
    assert len(other) == 3 and not set(other) & set(cut)  # a different tenth
    # Frozen: the listing as it was, with that moment's serial, while PyPI moves on.
    await treq.post(f"{url}/_control/listing", json={"keep": 1.0, "frozen": True})
    resource.index.publish("Brand.New", "1.0")
    frozen, frozen_index, frozen_serial = await both()
    assert frozen == full and frozen_index == index and frozen_serial == serial
    state = await (await treq.post(f"{url}/_control/state", json={})).json()
    assert state["listing"] == {"keep": 1.0, "start": 0.0, "frozen": True}
    await treq.post(f"{url}/_control/listing", json={"frozen": False})
    live, _, live_serial = await both()
    assert "Brand.New" in live and live_serial > serial
    bad = await treq.post(f"{url}/_control/listing", json={"keep": 2})
    assert bad.code == 400


def test_each_release_answers_with_its_own_metadata():
    """PyPI's per-version JSON API shows what each release said of itself; only the
    latest release's metadata is in the project's answer."""
    index = PackageIndex(Dataset(40, 11))
    key = normalize(index.dataset.name(2))  # the "versions" showcase: 1.1.0.post1 is latest
    project = json.loads(index.json_api(key)[1])
    latest = json.loads(index.json_api(key, "1.1.0.post1")[1])
    older = json.loads(index.json_api(key, "1.0.0")[1])
    assert latest["info"] == project["info"]
    assert older["info"]["version"] == "1.0.0"
    assert older["info"]["summary"] == project["info"]["summary"] + " (as of 1.0.0)"
    assert older["info"]["requires_dist"][-1] == "packaging>=1.0.0"
    assert older["info"]["description"].endswith("Release notes of 1.0.0.")
    assert older["info"]["classifiers"] == project["info"]["classifiers"]


@pytest_twisted.ensureDeferred
async def test_a_kept_listing_is_the_rendered_one_until_something_changes(sim):
    """``--keep-answers`` renders the XML-RPC listing once (57 MB at PyPI's size) and
    serves those bytes again, until a change: then the new listing."""
    plain, plain_url = sim
    resource = make_simulator(30, seed=3, keep_answers=True)
    port, url = listen(resource)
    listing_call = xmlrpc.client.dumps((), "list_packages_with_serial").encode()

    async def call(base, body=listing_call):
        answer = await treq.post(base + "/pypi", body, headers={"Content-Type": "text/xml"})
        return answer.headers.getRawHeaders("content-type"), await answer.content()

    try:
        assert resource.rendered.answers == {}  # nothing rendered ahead
        first = await call(url)
        assert first == await call(plain_url)
        assert first == await call(url)
        assert resource.xmlrpc.calls["list_packages_with_serial"] == 2
        key = resource.index.listing()[0][0]
        resource.index.publish(key, "99.0")  # from Python: no control request
        plain.index.publish(key, "99.0")
        (listing,), _ = xmlrpc.client.loads((await call(url))[1])
        assert listing[resource.index.get(key).name] == resource.index.last_serial
        assert await call(url) == await call(plain_url)
        resource.control("listing", {"keep": "0.5"})  # cut short: the cut one
        (listing,), _ = xmlrpc.client.loads((await call(url))[1])
        assert len(listing) == 15
        serial_call = xmlrpc.client.dumps((), "changelog_last_serial").encode()
        (serial,), _ = xmlrpc.client.loads((await call(url, serial_call))[1])
        assert serial == resource.index.last_serial  # other calls are answered as ever
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_prerendered_simulator_answers_as_a_rendering_one(sim):
    """``--prerender`` (the benchmarks' cheap PyPI) serves the same bytes and headers,
    and a change is served at once, not the answer rendered before it."""
    plain, plain_url = sim
    resource = make_simulator(30, seed=3, prerender=True)
    port, url = listen(resource)
    try:
        assert len(resource.rendered.answers) == 3 * len(resource.index.listing())
        keys = [key for key, _ in resource.index.listing()]
        paths = [f"/pypi/{k}/json" for k in keys] + [f"/simple/{k}/" for k in keys] + [
            "/pypi/no-such-thing/json", f"/pypi/{keys[0].upper()}/json"]
        for path in paths:
            for accept in (V1_JSON_LITERAL, "text/html"):
                ours = await treq.get(url + path, headers={"Accept": accept},
                                      allow_redirects=False)
                theirs = await treq.get(plain_url + path, headers={"Accept": accept},
                                        allow_redirects=False)
                assert ours.code == theirs.code, path
                assert (await ours.content()).replace(url.encode(), b"URL") == \
                    (await theirs.content()).replace(plain_url.encode(), b"URL"), path
                for header in ("content-type", "x-pypi-last-serial", "location"):
                    assert ours.headers.getRawHeaders(header) == \
                        theirs.headers.getRawHeaders(header), (path, header)
        key = keys[0]
        resource.index.publish(key, "99.0")  # from Python: no control request
        data = await (await treq.get(f"{url}/pypi/{key}/json")).json()
        assert data["info"]["version"] == "99.0"
        resource.control("archive", {"name": key})  # no journal row, a new answer
        page = await (await treq.get(f"{url}/simple/{key}/",
                                     headers={"Accept": V1_JSON_LITERAL})).json()
        assert page["project-status"]["status"] == "archived"
    finally:
        await port.stopListening()

"""Release files (``--files DIR``): pull-through from upstream, checked against their
sha256, seeded with ``pypioncouch --fetch-files``, installed with PyPI away."""

import hashlib
import json
import os
import stat
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, utils
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from pypioncouch.filefetch import FAILED, Fetcher
from pypioncouch.files import FileStore, file_sha256
from pypioncouch.status import SyncStatus
from pypioncouch.sync import run_pass
from pypioncouch.testing.server import FaultPlan
from pypioncouch.web.app import WebFront

from .helpers import World, sleep

BIN = Path(sys.executable).parent
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"
# files-app 1.0 needs files-lib (1.1 is newest), which needs files-util>=2.
INSTALLED = {"files_app-1.0.dist-info", "files_lib-1.1.dist-info", "files_util-2.0.dist-info"}
APP_WHEEL = "files_app-1.0-py3-none-any.whl"




class RawClient:
    """Requests with Twisted's plain Agent: headers as sent (treq always asks for gzip,
    and its decoder adds an empty Content-Encoding to answers that have none)."""

    def __init__(self):
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    def request(self, method, url, headers=None):
        return self.agent.request(method, url.encode(), Headers(
            {k.encode(): [v.encode()] for k, v in (headers or {}).items()}))

    def get(self, url, headers=None, unbuffered=True):
        return self.request(b"GET", url, headers)

    def head(self, url, headers=None):
        return self.request(b"HEAD", url, headers)


http = RawClient()


def header(response, name):
    values = response.headers.getRawHeaders(name.encode())
    return None if values is None else [v.decode() for v in values]


def publish_family(index) -> None:
    """Projects whose wheels require one another (Requires-Dist in their METADATA)."""
    for name, version, needs in (
            ("files-util", "1.0", []), ("files-util", "2.0", []),
            ("files-lib", "1.0", []), ("files-lib", "1.1", ["files-util>=2"]),
            ("Files_App", "1.0", ["files-lib>=1.0", "files-never; python_version < '3'",
                                  "files-extra; extra == 'fast'"])):
        index.publish(name, version, requires_dist=needs, requires_python=None,
                      summary=f"{name} for the release files tests")


@pytest.fixture
def world(couch_server, db_name):
    world = World(couch_server.url, db_name, projects=6, seed=21)
    publish_family(world.index)
    pytest_twisted.blockon(defer.ensureDeferred(run_pass(world.importer(), full=True)))
    yield world
    world.close()


def serve(db, store, fetcher, syncing=True):
    front = WebFront(db, SyncStatus(syncing=syncing), syncing=syncing, files=store,
                     fetcher=fetcher)
    site = Site(front.resource())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return front, port, f"http://127.0.0.1:{port.getHost().port}"


def stop_pypi(world) -> None:
    """PyPI goes away: no new connections, and any kept-alive one answers 500."""
    world.close()
    world.resource.faults = FaultPlan(1.0, ["500"])


async def run(command, *args, env=None):
    out, err, code = await utils.getProcessOutputAndValue(
        command, list(args), env=env if env is not None else {})
    return code, out.decode() + err.decode()


async def pip_install(url, target, *names):
    code, said = await run(sys.executable, "-m", "pip", "install", "--no-cache-dir",
                           "--disable-pip-version-check", "--target", str(target),
                           "--index-url", f"{url}/simple/", *names)
    assert code == 0, said[-2000:]
    return {p.name for p in Path(target).iterdir() if p.name.endswith(".dist-info")}


async def uv_install(url, target, *names):
    code, said = await run(str(BIN / "uv"), "pip", "install", "--no-cache", "--python",
                           sys.executable, "--target", str(target), "--index-url",
                           f"{url}/simple/", *names, env={"UV_NO_CACHE": "1"})
    assert code == 0, said[-2000:]
    return {p.name for p in Path(target).iterdir() if p.name.endswith(".dist-info")}


async def status_of(url) -> dict:
    answer = await treq.get(f"{url}/status", headers={"Accept": "application/json"})
    return (await answer.json())["files"]


async def until(condition, seconds=10.0):
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await sleep(0.02)
    raise AssertionError("the condition did not come true in time")


def upstream_bytes(world, filename):
    return world.index.find_file(filename)[0]


@pytest_twisted.ensureDeferred
async def test_pip_and_uv_install_with_dependencies_then_again_with_pypi_gone(
        world, tmp_path):
    store = FileStore(tmp_path / "files")
    front, port, url = serve(world.db, store, Fetcher(store))
    try:
        page = await (await treq.get(f"{url}/simple/files-app/")).text()
        sha = hashlib.sha256(upstream_bytes(world, APP_WHEEL)).hexdigest()
        assert f'href="../../files/files-app/{APP_WHEEL}#sha256={sha}"' in page
        data = await (await treq.get(f"{url}/simple/files-app/",
                                     headers={"Accept": JSON_ACCEPT})).json()
        assert data["files"][0]["url"] == f"../../files/files-app/{APP_WHEEL}"
        assert data["files"][0]["hashes"] == {"sha256": sha}

        assert await pip_install(url, tmp_path / "pip1", "files-app") == INSTALLED
        assert await uv_install(url, tmp_path / "uv1", "files-app") == INSTALLED
        stored = {p.name for p in (tmp_path / "files" / "files-util").iterdir()}
        assert stored == {"files_util-2.0-py3-none-any.whl",
                          "files_util-2.0-py3-none-any.whl.metadata"}
        fetched = sum(world.resource.files.hits.values())
        assert fetched == 6  # three wheels and their metadata files, each fetched once

        stop_pypi(world)
        assert await pip_install(url, tmp_path / "pip2", "files-app") == INSTALLED
        assert await uv_install(url, tmp_path / "uv2", "files-app") == INSTALLED
        assert sum(world.resource.files.hits.values()) == fetched
        figures = await status_of(url)
        assert figures["files"] == 6 and figures["fetched"] == 6
        assert figures["upstream_errors"] == 0 and figures["hits"] >= 12
        assert figures["bytes"] == sum(p.stat().st_size for p in
                                       (tmp_path / "files").glob("*/*"))
        page = await (await treq.get(f"{url}/status")).text()
        assert f"6 files, {figures['bytes']:,} bytes in <code>{tmp_path}/files</code>" in page
        metrics = await (await treq.get(f"{url}/metrics")).text()
        assert "pypioncouch_files_fetched_total 6.0" in metrics
        assert f"pypioncouch_files_stored_bytes {float(figures['bytes'])}" in metrics
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_bytes_that_do_not_match_the_sha256_are_refused_and_not_kept(world, tmp_path):
    """The transfer under way is cut before its last byte; those asking after it, for
    a while, get a 502 that says why, upstream not asked again (each pip retry of a
    large file fetched it whole, to be cut again)."""
    store = FileStore(tmp_path / "files")
    fetcher = Fetcher(store)
    front, port, url = serve(world.db, store, fetcher)
    try:
        world.resource.control("files", {"corrupt": [APP_WHEEL]})
        address = f"{url}/files/files-app/{APP_WHEEL}"
        with pytest.raises(ResponseFailed):  # the transfer fails before the last byte
            await treq.content(await http.get(address))
        for method in (http.head, http.get):
            answer = await method(address)
            assert answer.code == 502 and header(answer, "etag") is None
            said = (await treq.content(answer)).decode()
            assert method == http.head or said.startswith(
                f"502 Bad Gateway: {APP_WHEEL}: refused, its sha256 is ")
        assert not (tmp_path / "files" / "files-app").exists()
        assert list((tmp_path / "files" / ".incoming").iterdir()) == []
        figures = await status_of(url)
        assert (figures["digest_mismatches"], figures["upstream_errors"], figures["files"]) \
            == (1, 1, 0)
        assert store.reserved == 0  # (the room it kept free, given back)
        assert figures["last_error"].startswith(f"{APP_WHEEL}: refused, its sha256 is ")
        # Upstream mended: past the refusal's time, the right bytes are served, kept.
        world.resource.control("files", {"corrupt": []})
        fetcher.refuse_for = 0.0  # (ten minutes later)
        answer = await treq.get(address)
        assert await answer.content() == upstream_bytes(world, APP_WHEEL)
        assert (tmp_path / "files" / "files-app" / APP_WHEEL).read_bytes() == \
            upstream_bytes(world, APP_WHEEL)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_folder_that_cannot_take_a_file_is_a_503_to_come_back_to(world, tmp_path,
                                                                         monkeypatch):
    """Not upstream's failure (a 502): ours, said as such, with when to try again. A
    disk left with less than the store's floor free counts as full (CouchDB on it
    stops at a full one, and anyone may ask for files)."""
    import types

    from pypioncouch import files

    store = FileStore(tmp_path / "files")
    real = os.statvfs(tmp_path)
    size = len(upstream_bytes(world, APP_WHEEL))
    free = store.min_free_bytes + size - 1  # (a full disk cannot be had here)
    monkeypatch.setattr(files.os, "statvfs", lambda path: types.SimpleNamespace(
        f_bavail=free, f_frsize=1, f_blocks=max(real.f_blocks * real.f_frsize,
                                                20 * store.min_free_bytes)))
    front, port, url = serve(world.db, store, Fetcher(store))
    try:
        for answer in (await http.get(f"{url}/files/files-app/{APP_WHEEL}"),
                       await http.head(f"{url}/files/files-app/{APP_WHEEL}")):
            assert answer.code == 503
            assert header(answer, "retry-after") == ["60"]
        body = await treq.content(await http.get(f"{url}/files/files-app/{APP_WHEEL}"))
        assert body.decode().startswith(f"503 Service Unavailable: {APP_WHEEL}: cannot "
                                        f"write to {tmp_path / 'files'}: No space left")
        assert f"No space left on device: {free:,} bytes free, 0 expected by downloads " \
            f"under way, and this mirror leaves {store.min_free_bytes:,} free" in \
            (await status_of(url))["last_error"]
        assert list((tmp_path / "files" / ".incoming").iterdir()) == []
        # Room again, and the temp folder gone (an rsync --delete of the folder).
        monkeypatch.undo()
        (tmp_path / "files" / ".incoming").rmdir()
        answer = await http.get(f"{url}/files/files-app/{APP_WHEEL}")
        assert (answer.code, await treq.content(answer)) == (
            200, upstream_bytes(world, APP_WHEEL))
        assert store.reserved == 0
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_release_its_project_no_longer_lists_has_no_files_served(world, tmp_path):
    """A replica given the project before the release's removal (a takedown): its
    Simple page no longer lists the release, nor may /files/ serve its files to one
    who kept their URLs (a lock file)."""
    store = FileStore(tmp_path / "files")
    front, port, url = serve(world.db, store, Fetcher(store), syncing=False)
    old_lib = "files_lib-1.0-py3-none-any.whl"
    try:
        project = await world.db.get("files-lib")
        assert "1.0" in project["versions"]
        await world.db.put({**project, "versions": [v for v in project["versions"]
                                                    if v != "1.0"]})
        answer = await http.get(f"{url}/files/files-lib/{old_lib}")
        assert (answer.code, await treq.content(answer)) == (
            404, f"404 Not Found: files-lib has no file {old_lib}\n".encode())
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_file_upstream_no_longer_has_is_a_404_not_a_gateway_failure(world, tmp_path):
    """Listed in the release, answered 404 by upstream (removed since): a 404 that says
    so, not kept, not cached; asked again once upstream has it."""
    store = FileStore(tmp_path / "files")
    front, port, url = serve(world.db, store, Fetcher(store))
    address = f"{url}/files/files-app/{APP_WHEEL}"
    try:
        world.resource.control("files", {"gone": [APP_WHEEL]})
        for answer in (await http.get(address), await http.head(address)):
            assert answer.code == 404
            assert header(answer, "cache-control") == ["no-store"]
        said = (await treq.content(await http.get(address))).decode()
        assert said.startswith(f"404 Not Found: {APP_WHEEL}: http://") and \
            said.endswith(f"/{APP_WHEEL} answered HTTP 404 Not Found\n"), said
        assert not (tmp_path / "files" / "files-app").exists()
        world.resource.control("files", {"gone": []})
        assert await treq.content(await http.get(address)) == upstream_bytes(world, APP_WHEEL)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_copy_in_the_folder_that_is_not_the_releases_is_never_served(world, tmp_path):
    """A file put there by hand (a copy cut short) is read once before it is served."""
    expected = upstream_bytes(world, APP_WHEEL)
    damaged = tmp_path / "files" / "files-app" / APP_WHEEL
    damaged.parent.mkdir(parents=True)
    right = tmp_path / "files" / "files-lib" / "files_lib-1.1-py3-none-any.whl"
    right.parent.mkdir()
    right.write_bytes(upstream_bytes(world, right.name))
    for fetcher in (None, True):  # an air-gapped mirror, then one that fetches
        damaged.write_bytes(expected[:len(expected) // 2])
        store = FileStore(tmp_path / "files")  # (a daemon starting on that folder)
        _, port, url = serve(world.db, store, fetcher and Fetcher(store),
                             syncing=bool(fetcher))
        try:
            answer = await http.get(f"{url}/files/files-app/{APP_WHEEL}")
            body = await treq.content(answer)
            if fetcher:  # fetched again, and kept right
                assert (answer.code, body) == (200, expected)
                assert damaged.read_bytes() == expected
            else:
                assert answer.code == 404 and not damaged.exists()
            assert (await status_of(url))["last_error"] == (
                f"files-app/{APP_WHEEL}: does not match its sha256: removed")
            kept = await http.get(f"{url}/files/files-lib/{right.name}")
            assert await treq.content(kept) == right.read_bytes()
        finally:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_crowd_asking_for_a_file_found_on_disk_reads_it_once(world, tmp_path,
                                                                      monkeypatch):
    """After a restart, the files on disk are read once before they are served: once
    however many ask at the same moment (a CI farm on a 2 GB wheel)."""
    import time

    from pypioncouch.web import files as web_files

    reads = []

    def slow_read(path):  # (in a thread: a 2 GB wheel takes seconds)
        reads.append(path)
        time.sleep(0.5)
        return file_sha256(path)

    monkeypatch.setattr(web_files, "file_sha256", slow_read)
    wheel = tmp_path / "files" / "files-lib" / "files_lib-1.1-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(upstream_bytes(world, wheel.name))
    store = FileStore(tmp_path / "files")
    _, port, url = serve(world.db, store, None, syncing=False)
    try:
        answers = await defer.gatherResults([
            http.get(f"{url}/files/files-lib/{wheel.name}") for _ in range(8)])
        bodies = await defer.gatherResults([treq.content(a) for a in answers])
        assert set(bodies) == {wheel.read_bytes()} and len(reads) == 1
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_page_with_links_to_files_is_not_revalidated_by_a_daemon_without(world,
                                                                                 tmp_path):
    store = FileStore(tmp_path / "files")
    _, with_files, with_url = serve(world.db, store, Fetcher(store))
    _, without_files, without_url = serve(world.db, None, None)
    try:
        first = await http.get(f"{with_url}/simple/files-app/")
        assert b"../../files/files-app/" in await treq.content(first)
        etag = header(first, "etag")[0]
        again = await http.get(f"{without_url}/simple/files-app/", {"If-None-Match": etag})
        assert again.code == 200
        assert b"../../files/" not in await treq.content(again)
    finally:
        await with_files.stopListening()
        await without_files.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_body_longer_than_the_release_says_is_cut_and_not_kept(world, tmp_path):
    store = FileStore(tmp_path / "files")
    front, port, url = serve(world.db, store, Fetcher(store))
    try:
        world.resource.control("files", {"padded": [APP_WHEEL]})
        size = len(upstream_bytes(world, APP_WHEEL))
        with pytest.raises(ResponseFailed):  # the transfer fails before its end
            await treq.content(await http.get(f"{url}/files/files-app/{APP_WHEEL}"))
        figures = await status_of(url)
        said = figures["last_error"]
        assert said.startswith(f"{APP_WHEEL}: {world.url}/packages/") and said.endswith(
            f": more than the {size:,} bytes the release says"), said
        answer = await treq.get(f"{url}/files/files-app/{APP_WHEEL}")  # (not asked again)
        assert (answer.code, await answer.content()) == (
            502, f"502 Bad Gateway: {said}\n".encode())
        assert figures["files"] == 0
        assert not (tmp_path / "files" / "files-app").exists()
        assert list((tmp_path / "files" / ".incoming").iterdir()) == []
    finally:
        world.resource.control("files", {"padded": []})
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_private_index_gets_its_credentials_with_each_file_request_no_one_else_does(
        world, tmp_path):
    host = world.url.split("//")[1]
    world.resource.control("auth", {"user": "mirror", "password": "pässwörd"})
    store = FileStore(tmp_path / "files")
    own = Fetcher(store, upstream=f"http://mirror:p%C3%A4ssw%C3%B6rd@{host}/simple")
    elsewhere = Fetcher(store, upstream="http://mirror:p%C3%A4ssw%C3%B6rd@127.0.0.1:9/")
    _, with_elsewhere, elsewhere_url = serve(world.db, store, elsewhere)
    _, with_own, own_url = serve(world.db, store, own)
    address = f"/files/files-app/{APP_WHEEL}"
    try:
        refused = await http.get(elsewhere_url + address)
        said = (await treq.content(refused)).decode()
        assert refused.code == 502 and said.endswith("answered HTTP 401 Unauthorized\n"), said
        assert "pässwörd" not in said and "p%C3%A4ssw%C3%B6rd" not in said
        answer = await http.get(own_url + address)
        assert answer.code == 200
        assert await treq.content(answer) == upstream_bytes(world, APP_WHEEL)
        assert world.resource.unauthorized == 1  # the request meant for another host
    finally:
        await with_elsewhere.stopListening()
        await with_own.stopListening()


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_fetch_once_while_the_first_streams(world, tmp_path):
    store = FileStore(tmp_path / "files")
    front, port, url = serve(world.db, store, Fetcher(store))
    expected = upstream_bytes(world, APP_WHEEL)
    address = f"{url}/files/files-app/{APP_WHEEL}"
    try:
        world.resource.control("files", {"hold": True})  # upstream sends half, then waits
        first = await http.get(address, unbuffered=True)
        assert first.code == 200
        assert first.length == len(expected)  # (Twisted's client keeps Content-Length there)
        chunks = []
        done = treq.collect(first, chunks.append)
        await until(lambda: chunks)
        # The client has bytes while upstream is still sending (never the last one).
        assert 0 < sum(map(len, chunks)) < len(expected) and not done.called
        others = [http.get(address) for _ in range(4)]
        head = http.head(address)
        ranged = http.get(address, headers={"Range": "bytes=10-19"})
        await until(lambda: store.stats.misses == 7)  # all seven asked
        assert world.resource.files.hits[APP_WHEEL] == 1
        assert not (tmp_path / "files" / "files-app" / APP_WHEEL).exists()
        # HEAD is answered from the release at once (waiting for the whole download,
        # a large file's HEAD outlasted the client's read timeout).
        head = await head
        assert (head.code, await treq.content(head)) == (200, b"")
        assert header(head, "content-length") == [str(len(expected))]
        assert header(head, "cache-control") == ["no-store"]  # (upstream may fail it)
        ranged = await ranged  # (a range of a file not stored: all of it, as it comes)
        assert ranged.code == 200 and header(ranged, "content-range") is None
        world.resource.control("files", {"hold": False})
        await done
        assert b"".join(chunks) == expected
        for answer in others:
            assert await treq.content(await answer) == expected
        assert await treq.content(ranged) == expected
        assert world.resource.files.hits[APP_WHEEL] == 1
        figures = await status_of(url)
        assert (figures["fetched"], figures["misses"], figures["hits"]) == (1, 7, 0)
    finally:
        world.resource.control("files", {"hold": False})
        await port.stopListening()


@asynccontextmanager
async def the_one_slot_held(world, url):
    """The wheel of files-app asked for, on a front whose fetcher has one download
    slot, held half-way by upstream while the block runs; then all of it arrives."""
    world.resource.control("files", {"hold": [APP_WHEEL]})
    try:
        wheel = await http.get(f"{url}/files/files-app/{APP_WHEEL}", unbuffered=True)
        assert wheel.code == 200
        yield
        world.resource.control("files", {"hold": False})
        assert await treq.content(wheel) == upstream_bytes(world, APP_WHEEL)
    finally:
        world.resource.control("files", {"hold": False})


@pytest_twisted.ensureDeferred
async def test_a_head_queued_behind_other_downloads_is_answered_from_the_release(
        world, tmp_path, monkeypatch):
    """Every download slot taken by large wheels: a HEAD of another file waited for a
    slot, past the client's read timeout; after a moment it is said from the release."""
    from pypioncouch.web import files as file_pages

    monkeypatch.setattr(file_pages, "HEAD_WAIT", 0.5)
    store = FileStore(tmp_path / "files")
    front, port, url = serve(world.db, store, Fetcher(store, concurrency=1))
    lib = "files_lib-1.1-py3-none-any.whl"
    try:
        async with the_one_slot_held(world, url):
            head = await http.head(f"{url}/files/files-lib/{lib}")
            assert (head.code, await treq.content(head)) == (200, b"")
            assert header(head, "content-length") == [str(len(upstream_bytes(world, lib)))]
            assert header(head, "cache-control") == ["no-store"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_file_upstream_sends_without_a_length_is_streamed_with_the_releases(
        world, tmp_path):
    """(a body without Content-Length ends as its connection does: over an HTTP/1.0
    hop, a proxy's, a cut looked like the end of the file)"""
    store = FileStore(tmp_path / "files")
    front, port, url = serve(world.db, store, Fetcher(store))
    expected = upstream_bytes(world, APP_WHEEL)
    try:
        world.resource.control("files", {"hold": True, "unsized": [APP_WHEEL]})
        first = await http.get(f"{url}/files/files-app/{APP_WHEEL}", unbuffered=True)
        assert first.code == 200 and first.length == len(expected)
        world.resource.control("files", {"hold": False})
        assert await treq.content(first) == expected
    finally:
        world.resource.control("files", {"hold": False, "unsized": []})
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_metadata_file_is_not_queued_behind_wheels_that_take_every_slot(
        world, tmp_path):
    """Installers resolve with the metadata files (kilobytes), then fetch the wheels:
    wheels still coming (minutes, for big ones) do not keep the next install's
    metadata waiting until its client times out."""
    store = FileStore(tmp_path / "files")
    front, port, url = serve(world.db, store, Fetcher(store, concurrency=1))
    address = f"{url}/files/files-app/{APP_WHEEL}"
    try:
        async with the_one_slot_held(world, url):
            metadata = await http.get(address + ".metadata")
            assert metadata.code == 200
            assert b"Name: Files_App" in await treq.content(metadata)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_stored_file_answers_head_range_and_conditional_requests(world, tmp_path):
    store = FileStore(tmp_path / "files")
    front, port, url = serve(world.db, store, Fetcher(store))
    expected = upstream_bytes(world, APP_WHEEL)
    address = f"{url}/files/files-app/{APP_WHEEL}"
    try:
        assert await (await treq.get(address)).content() == expected
        stop_pypi(world)
        head = await http.head(address)
        assert (head.code, await treq.content(head)) == (200, b"")
        assert header(head, "content-length") == [str(len(expected))]
        assert header(head, "accept-ranges") == ["bytes"]
        assert header(head, "content-encoding") is None
        ranged = await treq.get(address, headers={"Range": "bytes=-5"})
        assert ranged.code == 206 and await ranged.content() == expected[-5:]
        etag = header(head, "etag")[0]
        assert etag == f'"{hashlib.sha256(expected).hexdigest()}"'
        again = await treq.get(address, headers={"If-None-Match": etag})
        assert again.code == 304
        metadata = await treq.get(address + ".metadata")  # fetched before PyPI went
        assert metadata.code == 502  # ... it was not: PyPI is gone, and says so
        assert b"502 Bad Gateway: " in await metadata.content()
        for path in ("files-app/nope-1.0-py3-none-any.whl", "no-such-project/x-1.whl",
                     "files-app/..%2Fseeded.json", "files-app/.incoming"):
            assert (await treq.get(f"{url}/files/{path}")).code == 404, path
        moved = await treq.get(f"{url}/files/Files_App/{APP_WHEEL}", allow_redirects=False)
        assert moved.code == 301
        assert moved.headers.getRawHeaders("location") == [f"/files/files-app/{APP_WHEEL}"]
        # Any page may fetch them, as from files.pythonhosted.org (micropip does), and
        # tell a 404 or a 502 from a network error.
        for answer in (head, ranged, again, metadata, moved,
                       await treq.get(f"{url}/files/no-such-project/x-1.whl")):
            assert header(answer, "access-control-allow-origin") == ["*"], answer.code
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_file_evicted_as_it_is_served_is_a_503_to_ask_again(world, tmp_path):
    """The budget removed it between its lookup and its answer: pip retries a 503; a
    404 with a year's immutable caching would fail the install, and stay in caches."""
    store = FileStore(tmp_path / "files")
    front, port, url = serve(world.db, store, Fetcher(store))
    address = f"{url}/files/files-app/{APP_WHEEL}"
    found = store.lookup

    def evicted_at_once(key):
        path = found(key)
        if path is not None:
            os.unlink(path)
        return path

    try:
        for method in (treq.get, http.head):
            store.lookup = found
            stored = await treq.get(address)  # (fetched, stored)
            assert stored.code == 200
            await treq.content(stored)
            store.lookup = evicted_at_once
            answer = await method(address)
            assert answer.code == 503, (answer.code, await treq.content(answer))
            assert header(answer, "cache-control") == ["no-store"]
            assert header(answer, "etag") is None and header(answer, "retry-after") == ["1"]
            await treq.content(answer)
        store.lookup = found
        assert await (await treq.get(address)).content() == upstream_bytes(world, APP_WHEEL)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_file_stored_with_other_bytes_under_its_name_is_checked_again(world,
                                                                              tmp_path):
    """Another index may take a file again under its name (PyPI never does): bytes
    this daemon stored and checked before are checked against the digest the release
    says now, not served as the new file's."""
    from pypioncouch.files import Wanted

    store = FileStore(tmp_path / "files")
    old = b"the upload before"
    with store.open_incoming() as handle:
        handle.write(old)
    store.commit(handle.name, Wanted("files-app", APP_WHEEL, "https://files.test/old",
                                     hashlib.sha256(old).hexdigest(), len(old)))
    front, port, url = serve(world.db, store, Fetcher(store))
    try:
        answer = await treq.get(f"{url}/files/files-app/{APP_WHEEL}")
        assert await answer.content() == upstream_bytes(world, APP_WHEEL)
        assert "does not match its sha256" in (await status_of(url))["last_error"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_checked_file_written_over_on_disk_is_checked_again(world, tmp_path):
    """``cp`` over a stored file, an ``rsync --inplace`` cut short: the bytes checked
    before are not these, which must not go out under the release's sha256 with a
    year's caching."""
    store = FileStore(tmp_path / "files")
    front, port, url = serve(world.db, store, Fetcher(store))
    address = f"{url}/files/files-app/{APP_WHEEL}"
    right = upstream_bytes(world, APP_WHEEL)
    stored = tmp_path / "files" / "files-app" / APP_WHEEL
    try:
        assert await (await treq.get(address)).content() == right  # (fetched, checked)
        assert await (await treq.get(address)).content() == right  # (a hit)
        for wrong in (b"x" * len(right), right[:len(right) // 2]):
            before = os.stat(stored)
            with open(stored, "r+b") as handle:  # (the same file, written over)
                handle.write(wrong)
                handle.truncate()
            os.utime(stored, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
            answer = await treq.get(address)
            assert (answer.code, await answer.content()) == (200, right)
            assert "does not match its sha256" in (await status_of(url))["last_error"]
            assert stored.read_bytes() == right  # (fetched again)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_stored_file_that_cannot_be_read_now_is_kept_and_a_503(world, tmp_path,
                                                                      monkeypatch):
    """Too many open files, a network file system's hiccup: not a file that does not
    match its digest (removed, an air-gapped mirror's for good)."""
    import errno

    from pypioncouch.web import files as file_pages

    store = FileStore(tmp_path / "files")
    front, port, url = serve(world.db, store, Fetcher(store))
    address = f"{url}/files/files-app/{APP_WHEEL}"
    try:
        assert (await treq.get(address)).code == 200  # (fetched, stored)
    finally:
        await port.stopListening()
    restarted = FileStore(tmp_path / "files")  # (a restart: to be checked again)

    def too_many_open_files(path):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(file_pages, "file_sha256", too_many_open_files)
    front, port, url = serve(world.db, restarted, None)
    address = f"{url}/files/files-app/{APP_WHEEL}"
    try:
        answer = await treq.get(address)
        assert answer.code == 503 and header(answer, "retry-after") == ["5"]
        assert b"cannot be read on this mirror now" in await answer.content()
        assert (tmp_path / "files" / "files-app" / APP_WHEEL).exists()
        monkeypatch.undo()
        answer = await treq.get(address)
        assert await answer.content() == upstream_bytes(world, APP_WHEEL)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_seeded_files_install_from_an_air_gapped_mirror(world, couch_server, db_name,
                                                              tmp_path):
    files = tmp_path / "files"
    command = [str(BIN / "pypioncouch"), "--fetch-files", couch_server.url, "--db", db_name,
               "files-app", "--with-deps", "--files", str(files), "--quiet"]
    code, said = await run(command[0], *command[1:], env=dict(os.environ))
    assert code == 0, said
    assert "6 files of 3 releases: 6 fetched" in said
    manifest = json.loads((files / "seeded.json").read_text())
    assert sorted(manifest["seeded"]) == sorted(
        f"{project}/{wheel}{suffix}" for project, wheel in (
            ("files-app", APP_WHEEL), ("files-lib", "files_lib-1.1-py3-none-any.whl"),
            ("files-util", "files_util-2.0-py3-none-any.whl"))
        for suffix in ("", ".metadata"))
    # Resumable: what is stored right is not fetched again; what is wrong is.
    (files / "files-lib" / "files_lib-1.1-py3-none-any.whl").write_bytes(b"damaged")
    code, said = await run(command[0], *command[1:], env=dict(os.environ))
    assert code == 0, said
    assert "6 files of 3 releases: 1 fetched" in said and "5 already stored" in said

    stop_pypi(world)
    store = FileStore(files)
    front, port, url = serve(world.db, store, None, syncing=False)
    try:
        assert await pip_install(url, tmp_path / "pip", "files-app") == INSTALLED
        assert await uv_install(url, tmp_path / "uv", "files-app") == INSTALLED
        # What it lacks, it says it lacks.
        lacking = await treq.get(f"{url}/files/files-lib/files_lib-1.0-py3-none-any.whl")
        assert lacking.code == 404
        assert lacking.headers.getRawHeaders("cache-control") == ["no-store"]
        assert (await lacking.text()).startswith(
            "404 Not Found: this mirror does not fetch from upstream (--no-sync) and has "
            "not stored files_lib-1.0-py3-none-any.whl")
        figures = await status_of(url)
        assert figures["fetches_upstream"] is False and figures["not_stored"] == 1
        assert figures["seeded"] == 6
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_air_gapped_mirror_lists_only_the_files_it_holds(world, tmp_path):
    store = FileStore(tmp_path / "files")
    _, syncing_port, syncing = serve(world.db, store, Fetcher(store))  # fills the folder
    _, gapped_port, gapped = serve(world.db, store, None, syncing=False)
    old_lib, new_lib = "files_lib-1.0-py3-none-any.whl", "files_lib-1.1-py3-none-any.whl"
    util = "files_util-2.0-py3-none-any.whl"

    async def fill(project, filename):
        answer = await http.get(f"{syncing}/files/{project}/{filename}")
        assert answer.code == 200
        await treq.content(answer)

    async def page(project, headers=None):
        answer = await http.get(f"{gapped}/simple/{project}/",
                                {"Accept": JSON_ACCEPT, **(headers or {})})
        body = await treq.content(answer)
        return answer.code, header(answer, "etag"), body and json.loads(body)

    try:
        for project, filename in (("files-lib", old_lib), ("files-util", util),
                                  ("files-util", util + ".metadata")):
            await fill(project, filename)
        _, etag, lib = await page("files-lib")
        assert [f["filename"] for f in lib["files"]] == [old_lib]
        assert lib["versions"] == ["1.0"]
        assert lib["files"][0]["url"] == f"../../files/files-lib/{old_lib}"
        assert lib["files"][0]["core-metadata"] is False  # its .metadata is not held
        _, _, utils = await page("files-util")
        assert [f["filename"] for f in utils["files"]] == [util]
        assert utils["files"][0]["core-metadata"] == {
            "sha256": hashlib.sha256(upstream_bytes(world, util + ".metadata")).hexdigest()}
        html = await treq.content(await http.get(f"{gapped}/simple/files-lib/"))
        assert old_lib.encode() in html and new_lib.encode() not in html
        assert b"data-core-metadata" not in html
        # pip takes the newest release the mirror holds instead of failing on 1.1.
        assert await pip_install(gapped, tmp_path / "pip", "files-lib") == \
            {"files_lib-1.0.dist-info"}
        # A copy cut short (an interrupted cp) is not listed: pip would take it, and fail.
        cut = tmp_path / "files" / "files-lib" / new_lib
        cut.write_bytes(upstream_bytes(world, new_lib)[:10])
        assert [f["filename"] for f in (await page("files-lib"))[2]["files"]] == [old_lib]
        cut.unlink()
        # A file that arrives is listed at once; the page's old ETag no longer holds.
        await fill("files-lib", new_lib)
        code, new_etag, lib = await page("files-lib", {"If-None-Match": etag[0]})
        assert code == 200 and new_etag != etag
        assert [f["filename"] for f in lib["files"]] == [old_lib, new_lib]
        assert (await page("files-lib", {"If-None-Match": new_etag[0]}))[0] == 304
    finally:
        await syncing_port.stopListening()
        await gapped_port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_seed_command_says_what_it_cannot_do(world, couch_server, db_name, tmp_path):
    base = [str(BIN / "pypioncouch"), "--fetch-files", couch_server.url, "--db", db_name,
            "--files", str(tmp_path / "files"), "--quiet"]
    code, said = await run(base[0], *base[1:], "no-such-project", env=dict(os.environ))
    assert code == 1 and "has no project 'no-such-project'" in said, said
    code, said = await run(base[0], *base[1:], "files-lib>5", env=dict(os.environ))
    assert code == 1 and "no release of files-lib with files matches 'files-lib>5'" in said
    # A release its project no longer lists (a replica given the project before the
    # release's removal) is not taken.
    leftover = {**(await world.db.get("files-lib:1.1")), "version": "9.0"}
    del leftover["_rev"]
    await world.db.put({**leftover, "_id": "files-lib:9.0"})
    code, said = await run(base[0], *base[1:], "files-lib>5", env=dict(os.environ))
    assert code == 1 and "no release of files-lib with files matches 'files-lib>5'" in said
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pinned\nfiles-lib==1.0  # the old one\n--index-url x\n")
    code, said = await run(base[0], *base[1:], "-r", str(requirements), env=dict(os.environ))
    assert code == 0 and "2 files of 1 releases: 2 fetched" in said, said
    code, said = await run(base[0], "--fetch-files", couch_server.url, "files-lib",
                           env=dict(os.environ))
    assert code == 2 and "--fetch-files needs --files DIR" in said
    # The database's URL given for the server's (as --upstream takes it).
    code, said = await run(base[0], "--fetch-files", couch_server.url + db_name,
                           *base[5:], "files-lib==1.0", env=dict(os.environ))
    assert code == 1 and said.strip().splitlines()[-1].startswith(
        f"pypioncouch: error: this URL names the database '{db_name}', not the server: "
        f"give the server's URL (and --db {db_name})"), said
    # A requirement by URL, its password in it (a deploy token): refused, unprinted.
    requirements.write_text("files-lib==1.0\n"
                            "foo @ https://deploy:s3cr3tTOKEN@127.0.0.1:9/foo-1.0.whl\n")
    code, said = await run(base[0], *base[1:], "-r", str(requirements), env=dict(os.environ))
    assert code == 1 and "s3cr3tTOKEN" not in said, said
    assert said.strip().splitlines()[-1] == (
        f"pypioncouch: error: {requirements}, line 2: 'foo @ https://deploy:***@127.0.0.1:9/"
        "foo-1.0.whl': only names and version specifiers can be seeded"), said
    # A folder it cannot write its manifest in (read-only; here the lock file's name
    # taken by a folder, which root cannot write either): one line, not "a bug".
    lock = tmp_path / "files" / ".seeded.lock"
    lock.unlink()
    lock.mkdir()
    code, said = await run(base[0], *base[1:], "files-lib==1.0", env=dict(os.environ))
    assert code == 1 and said.strip().splitlines()[-1] == (
        f"pypioncouch: error: --files {tmp_path / 'files'}: cannot write there: "
        "Is a directory"), said
    lock.rmdir()
    code, said = await run(base[0], *base[1:], "files-lib>=bad", env=dict(os.environ))
    assert code == 1 and "^" not in said  # (packaging's caret diagram: lines more)
    assert said.strip().splitlines()[-1].startswith(
        "pypioncouch: error: 'files-lib>=bad' is not a requirement: ")
    # The daemon's environment file loaded: no password on the command line, and the
    # first word, not a URL, is a project.
    env = {**os.environ, "PYPIONCOUCH_COUCH": couch_server.url, "PYPIONCOUCH_DB": db_name,
           "PYPIONCOUCH_FILES": str(tmp_path / "files")}
    code, said = await run(base[0], "--fetch-files", "files-lib==1.0", "--quiet", env=env)
    assert code == 0 and "2 files of 1 releases" in said and "2 already stored" in said, said
    # A file stored without a sha256 cannot be checked: not fetched, and said so.
    lib = await world.db.get("files-lib:1.1")
    await world.db.put({**lib, "files": [{**f, "digests": {}} for f in lib["files"]]})
    code, said = await run(base[0], *base[1:], "files-lib==1.1", env=dict(os.environ))
    assert code == 0 and "0 files of 1 releases" in said, said
    assert "pypioncouch: warning: files-lib 1.1: skipped 'files_lib-1.1-py3-none-any.whl': " \
        "without a sha256, a URL or a plain file name, it cannot be fetched, checked or stored" \
        in said, said


def put(store, key, size):
    from pypioncouch.files import Wanted

    with store.open_incoming() as handle:
        handle.write(b"x" * size)
    project, filename = key.split("/")
    store.commit(handle.name, Wanted(project, filename, f"https://files.test/{key}",
                                     hashlib.sha256(b"x" * size).hexdigest(), size))


def test_a_seed_takes_the_newest_release_it_allows_and_every_spelling_of_it():
    from packaging.requirements import Requirement

    from pypioncouch.seed import pick_releases

    wheel = [{"filename": "x.whl"}]
    releases = [{"version": "1.0", "files": wheel}, {"version": "1.0.0", "files": wheel},
                {"version": "0.9", "files": wheel}, {"version": "1.5", "files": wheel,
                                                     "yanked": True},
                {"version": "2.0rc1", "files": wheel}, {"version": "3.0", "files": []},
                {"version": "not a version", "files": wheel}]

    def picked(text):
        return [r["version"] for r in pick_releases(releases, Requirement(text))]

    assert picked("x") == ["1.0", "1.0.0"]  # (pip takes the files of both)
    assert picked("x==1.0") == ["1.0", "1.0.0"]
    assert picked("x===1.0.0") == ["1.0.0"]  # (arbitrary equality: as spelled)
    assert picked("x<1") == ["0.9"]
    assert picked("x==1.5") == ["1.5"]  # (yanked: only when pinned)
    assert picked("x>=2.0rc1") == ["2.0rc1"]  # (a pre-release, when nothing else matches)
    assert picked("x>=3") == []  # (no files)


def test_temp_files_a_crash_left_are_removed_while_the_daemon_runs(tmp_path):
    """A restart during big downloads: their parts, younger than an hour then, are
    not left until the next restart (out of the budget's count)."""
    store = FileStore(tmp_path / "files")
    with store.open_incoming() as left:
        left.write(b"x" * 1000)
    with store.open_incoming() as writing:
        writing.write(b"y" * 1000)
    two_hours_ago = time.time() - 7200
    os.utime(left.name, (two_hours_ago, two_hours_ago))
    put(store, "a/a-1.whl", 10)
    assert os.path.exists(left.name)  # (cleaned at start, not at every file)
    store._cleaned_at = two_hours_ago
    put(store, "a/a-2.whl", 10)
    assert not os.path.exists(left.name) and os.path.exists(writing.name)


def test_a_stored_file_has_the_mode_of_a_file_created_now_not_of_a_temp_file(tmp_path):
    """A temp file is 0600: files seeded as root for a daemon of its own user could not
    be read by it. A stored file gets 0666 less the umask, as cp would give it."""
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        before = os.umask(umask)
        try:
            store = FileStore(tmp_path / oct(umask))
        finally:
            os.umask(before)
        put(store, "p/p-1.0.tar.gz", 3)
        store.mark_seeded(["p/p-1.0.tar.gz"])
        for written in ("p/p-1.0.tar.gz", "seeded.json"):
            assert stat.S_IMODE((tmp_path / oct(umask) / written).stat().st_mode) == mode


def stored(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).glob("*/*"))


def test_a_disk_that_fills_mid_download_fails_it_for_every_reader_and_keeps_nothing(
        tmp_path):
    """The disk fills while a file arrives (a small write is buffered, its flush
    refused, and closing the file is refused again): every reader is told, the error
    shows, the half-written file goes. (A full disk cannot be had on a test machine:
    the temp file's writes go to /dev/full; upstream is a scripted agent.)"""
    from twisted.internet import task
    from twisted.python.failure import Failure

    from pypioncouch.filefetch import FetchError
    from pypioncouch.files import Wanted

    body = b"x" * 100_000

    class Transport:
        def stopProducing(self):
            self.protocol.connectionLost(Failure(Exception("connection closed")))

    class Response:
        code, length = 200, len(body)

        def deliverBody(self, protocol):
            transport = Transport()
            transport.protocol = protocol
            protocol.makeConnection(transport)
            protocol.dataReceived(body[:4000])

    class Upstream:
        def request(self, *args, **kwargs):
            return defer.succeed(Response())

    store = FileStore(tmp_path / "files")
    opened = store.open_incoming

    def on_a_full_disk(size=None):
        handle = opened(size)
        handle.file.close()
        handle.file = handle._closer.file = open("/dev/full", "wb")
        return handle

    store.open_incoming = on_a_full_disk
    clock = task.Clock()
    fetcher = Fetcher(store, clock, agent=Upstream(), timeout=60)
    download = fetcher.download(Wanted("p", "p-1.tar.gz", "http://up.test/p-1.tar.gz",
                                       hashlib.sha256(body).hexdigest(), len(body)))
    readers = [defer.ensureDeferred(download.finished()) for _ in range(3)]
    failures = []
    for reader in readers:
        reader.addErrback(lambda failure: failures.append(failure.trap(FetchError)))
    assert len(failures) == 3 and "No space left on device" in download.error
    assert fetcher.in_flight == {} and os.listdir(store.incoming) == []
    assert "No space left on device" in store.stats.last_error


class WholeBody:
    """A scripted upstream answering ``body`` whole (a response the Agent would give);
    with ``stated=False``, without a Content-Length: it ends as its connection does
    (PotentialDataLoss), cut short or not."""

    def __init__(self, body: bytes, stated: bool = True):
        self.body = body
        self.stated = stated

    def request(self, *args, **kwargs):
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseDone
        from twisted.web.http import PotentialDataLoss
        from twisted.web.iweb import UNKNOWN_LENGTH

        body, stated = self.body, self.stated

        class Response:
            code, length = 200, len(body) if stated else UNKNOWN_LENGTH

            def deliverBody(self, protocol):
                protocol.makeConnection(self)
                protocol.dataReceived(body)
                protocol.connectionLost(Failure(ResponseDone() if stated
                                                else PotentialDataLoss()))

            def stopProducing(self):
                pass

        return defer.succeed(Response())


@pytest.mark.parametrize("sized", [True, False])
def test_a_body_cut_as_its_connection_ends_is_asked_again_not_refused(tmp_path, sized):
    """Without a Content-Length, a body ends as its connection does: cut short by a
    network, its bytes do not match, yet they are not known to be wrong, and the next
    one asking must not get a refusal for ten minutes. Bytes upstream sent whole and
    wrong are refused for that while."""
    from twisted.internet import task

    from pypioncouch.files import Wanted

    body = b"wheel bytes" * 100
    name = "p-1.whl" if sized else "p-1.whl.metadata"  # (a metadata file: no size)
    wanted = Wanted("p", name, f"http://up.test/{name}", hashlib.sha256(body).hexdigest(),
                    len(body) if sized else None)
    fetcher = Fetcher(FileStore(tmp_path / "files"), task.Clock(),
                      agent=WholeBody(body[:500], stated=False), timeout=60)
    cut = fetcher.download(wanted)
    assert cut.state == FAILED
    assert ("cut short, 500 of the 1,100 bytes the release says" if sized
            else "refused, its sha256 is") in cut.error, cut.error
    assert fetcher.download(wanted) is not cut  # (asked again)
    fetcher = Fetcher(FileStore(tmp_path / "other"), task.Clock(),
                      agent=WholeBody(b"x" * len(body)), timeout=60)
    wrong = fetcher.download(wanted)
    assert wrong.state == FAILED and "refused, its sha256 is" in wrong.error
    assert fetcher.download(wanted) is wrong  # (the refusal, for a while)


@pytest.mark.parametrize("step", ["fsync", "commit"])
def test_a_store_that_fails_as_the_file_completes_is_our_failure_and_tells_every_reader(
        tmp_path, monkeypatch, step):
    """The disk fills (or goes read-only) as the last bytes are made safe, or the
    temp file cannot be removed then: every reader is told, and it is said as the
    store's failure (a 503 to come back to), not upstream's."""
    import errno

    from twisted.internet import task

    from pypioncouch import filefetch
    from pypioncouch.filefetch import FetchError
    from pypioncouch.files import Wanted

    body = b"wheel bytes" * 100
    store = FileStore(tmp_path / "files")

    def refused(*args):
        raise OSError(errno.EROFS, "Read-only file system")

    if step == "fsync":
        monkeypatch.setattr(filefetch.os, "fsync", refused)
    else:
        monkeypatch.setattr(store, "commit", refused)
    monkeypatch.setattr(store, "discard", refused)  # (and the temp file stays)
    fetcher = Fetcher(store, task.Clock(), agent=WholeBody(body), timeout=60)
    download = fetcher.download(Wanted("p", "p-1.whl", "http://up.test/p-1.whl",
                                       hashlib.sha256(body).hexdigest(), len(body)))
    failures = []
    defer.ensureDeferred(download.finished()).addErrback(
        lambda failure: failures.append(failure.trap(FetchError)))
    assert failures and download.cannot_store
    assert "Read-only file system" in download.error


def test_downloads_under_way_keep_the_room_they_expect(tmp_path, monkeypatch):
    """Each fits the free space alone; two at once would eat into the floor (fetches
    run eight at a time, and metadata files beside them)."""
    import types

    from pypioncouch import files

    store = FileStore(tmp_path)
    free = store.min_free_bytes + 1000
    monkeypatch.setattr(files.os, "statvfs", lambda path: types.SimpleNamespace(
        f_bavail=free, f_frsize=1, f_blocks=20 * store.min_free_bytes))
    first = store.open_incoming(600)
    with pytest.raises(OSError, match="600 expected by downloads under way"):
        store.open_incoming(600)
    store.unreserve(600)  # (the first is over)
    store.open_incoming(600).close()
    first.close()


def test_only_a_metadata_file_is_capped_when_its_size_is_not_stated(tmp_path):
    """(An upstream stating no file sizes: a wheel over the .metadata cap is taken.)"""
    from twisted.internet import task

    from pypioncouch.files import Wanted

    body = b"x" * 200_000
    store = FileStore(tmp_path / "files")
    fetcher = Fetcher(store, task.Clock(), agent=WholeBody(body), timeout=60)
    fetcher.unsized_max = 100_000
    download = fetcher.download(Wanted("p", "p-1.whl", "http://up.test/p-1.whl",
                                       hashlib.sha256(body).hexdigest(), None))
    assert download.state == "stored", download.error
    assert (tmp_path / "files" / "p" / "p-1.whl").read_bytes() == body


def test_a_file_of_no_stated_size_held_by_an_air_gapped_mirror_is_listed():
    from pypioncouch.files import held_releases

    entry = {"filename": "p-1.whl", "digests": {"sha256": "ab" * 32}, "size": None}
    cut = dict(entry, size=20)
    assert held_releases({"1": [entry, cut]}, {"p-1.whl": 10}) == {"1": [
        dict(entry, **{"core-metadata": False, "data-dist-info-metadata": False})]}


def test_a_file_of_no_stated_size_is_refused_past_the_cap_not_left_to_fill_the_disk(
        tmp_path):
    """A .metadata file (its release states no size) from an upstream that does not
    stop: refused at the cap, nothing kept."""
    from twisted.internet import task
    from twisted.python.failure import Failure

    from pypioncouch.filefetch import FetchError
    from pypioncouch.files import Wanted

    class Endless:
        code, length = 200, None

        def deliverBody(self, protocol):
            self.protocol, self.going = protocol, True
            protocol.makeConnection(self)
            while self.going:
                protocol.dataReceived(b"Metadata-Version: 2.1\n" * 100)

        def stopProducing(self):
            self.going = False
            self.protocol.connectionLost(Failure(Exception("connection closed")))

    class Upstream:
        def request(self, *args, **kwargs):
            return defer.succeed(Endless())

    store = FileStore(tmp_path / "files")
    fetcher = Fetcher(store, task.Clock(), agent=Upstream(), timeout=60)
    fetcher.unsized_max = 100_000
    download = fetcher.download(Wanted("p", "p-1.whl.metadata", "http://up.test/p.metadata",
                                       "0" * 64, None))
    failures = []
    defer.ensureDeferred(download.finished()).addErrback(
        lambda failure: failures.append(failure.trap(FetchError)))
    assert failures and "more than 100,000 bytes" in download.error
    assert download.written <= 100_000 and os.listdir(store.incoming) == []


def test_a_hit_is_remembered_across_a_restart_and_leaves_last_modified_alone(tmp_path):
    store = FileStore(tmp_path, max_bytes=250)
    put(store, "a/a-1.whl", 100)
    put(store, "b/b-1.whl", 100)
    os.utime(tmp_path / "a" / "a-1.whl", ns=(1_000_000_000, 1_000_000_000))  # stored first
    os.utime(tmp_path / "b" / "b-1.whl", ns=(2_000_000_000, 2_000_000_000))
    store.lookup("a/a-1.whl")  # used since: b is now the least recently used
    assert os.stat(tmp_path / "a" / "a-1.whl").st_mtime_ns == 1_000_000_000
    again = FileStore(tmp_path, max_bytes=250)
    put(again, "c/c-1.whl", 100)
    assert stored(tmp_path) == ["a/a-1.whl", "c/c-1.whl"]


def test_a_hit_on_a_file_of_another_owner_is_still_remembered(tmp_path, monkeypatch):
    """(and the file is still known as checked: its mtime moved by our hand, not by
    another file written over it, which is checked again)"""
    from pypioncouch import files

    store = FileStore(tmp_path)
    put(store, "a/a-1.whl", 10)
    wanted = files.Wanted("a", "a-1.whl", "https://files.test/a/a-1.whl",
                          hashlib.sha256(b"x" * 10).hexdigest(), 10)
    os.utime(tmp_path / "a" / "a-1.whl", ns=(1_000_000_000, 1_000_000_000))
    assert not store.is_verified(wanted)  # (touched by another hand)
    store.verified(wanted, files.file_identity(tmp_path / "a" / "a-1.whl"))
    real = os.utime

    def utime(path, times=None, *, ns=None):
        if ns is not None:  # explicit times: only the owner may set them
            raise PermissionError(1, "Operation not permitted")
        return real(path, times)

    monkeypatch.setattr(files.os, "utime", utime)
    assert store.lookup("a/a-1.whl") is not None
    assert os.stat(tmp_path / "a" / "a-1.whl").st_atime_ns > 1_000_000_000
    assert store.is_verified(wanted)


def test_the_budget_evicts_the_least_recently_used_files_never_seeded_ones(tmp_path):
    store = FileStore(tmp_path, max_bytes=350)
    for name in "abc":
        put(store, f"{name}/{name}-1.whl", 100)
    store.lookup("a/a-1.whl")  # a is used: b is now the least recently used
    put(store, "d/d-1.whl", 100)
    assert stored(tmp_path) == ["a/a-1.whl", "c/c-1.whl", "d/d-1.whl"]
    store.mark_seeded(["c/c-1.whl", "a/a-1.whl"])
    put(store, "e/e-1.whl", 100)  # c and a are seeded: d goes
    assert stored(tmp_path) == ["a/a-1.whl", "c/c-1.whl", "e/e-1.whl"]
    assert (store.summary()["evicted"], store.summary()["bytes"]) == (2, 300)
    # A restart knows the same files, recency and seeds (mtimes and seeded.json).
    again = FileStore(tmp_path, max_bytes=250)
    assert (again.count, again.bytes, again.seeded) == (3, 300, {"a/a-1.whl", "c/c-1.whl"})
    put(again, "f/f-1.whl", 100)  # e then f itself: only seeded files are left
    assert stored(tmp_path) == ["a/a-1.whl", "c/c-1.whl"]
    again.mark_seeded(["g/g-1.whl"])  # (as --fetch-files does: seeded, then fetched)
    put(again, "g/g-1.whl", 100)
    assert stored(tmp_path) == ["a/a-1.whl", "c/c-1.whl", "g/g-1.whl"]
    assert again.summary()["warning"] == ("the files stored (300 bytes) exceed the budget "
                                          "(250 bytes): seeded files are never evicted")
    assert list((tmp_path / ".incoming").iterdir()) == []


def test_a_manifest_edited_with_a_typo_keeps_its_seeds_and_is_not_written_over(tmp_path):
    from pypioncouch.files import UnreadableManifest

    store = FileStore(tmp_path, max_bytes=150)
    put(store, "a/a-1.whl", 100)
    store.mark_seeded(["a/a-1.whl"])
    manifest = tmp_path / "seeded.json"
    manifest.write_text('{"seeded": ["a/a-1.whl",]}')  # an edit: a trailing comma
    for running in (store, FileStore(tmp_path, max_bytes=150)):  # read again, or at start
        put(running, "b/b-1.whl", 100)  # over the budget: which files are seeded?
        assert stored(tmp_path) == ["a/a-1.whl", "b/b-1.whl"]  # none evicted
        assert running.summary()["warning"].startswith(
            f"{manifest} cannot be read (Expecting value: line 1 column 25 (char 24)): "
            "fix it; until then nothing is evicted")
        with pytest.raises(UnreadableManifest):
            running.mark_seeded(["b/b-1.whl"])
        assert manifest.read_text() == '{"seeded": ["a/a-1.whl",]}'
    unbounded = FileStore(tmp_path)  # /status says so without a budget too
    assert unbounded.summary()["warning"].startswith(f"{manifest} cannot be read")
    manifest.write_text('{"seeded": ["a/a-1.whl"]}')  # mended
    put(store, "c/c-1.whl", 10)
    assert stored(tmp_path) == ["a/a-1.whl", "c/c-1.whl"]  # b, unseeded and older, goes


@pytest_twisted.ensureDeferred
async def test_a_seed_hashes_what_is_stored_outside_the_reactor(tmp_path, monkeypatch):
    """Gigabytes already stored, hashed in the reactor, held the other downloads back
    until their stall timers fired ("no data for 30 s", exit 3)."""
    import threading

    from pypioncouch.files import Wanted
    from pypioncouch.seed import Plan, Seeder

    store = FileStore(tmp_path)
    keys = [f"a/a-{number}.whl" for number in range(3)]
    for key in keys:
        put(store, key, 10)
    hashed_in = []
    has = store.has
    monkeypatch.setattr(store, "has", lambda wanted: (
        hashed_in.append(threading.current_thread() is threading.main_thread()),
        has(wanted))[1])
    plan = Plan(files={key: Wanted(*key.split("/"), f"https://files.test/{key}",
                                   hashlib.sha256(b"x" * 10).hexdigest(), 10)
                       for key in keys}, releases=["a 1"])
    summary = await Seeder(None, store, None, concurrency=2).fetch(plan)
    assert (summary.present, summary.fetched, summary.failed) == (3, 0, [])
    assert hashed_in == [False] * 3


def test_two_seeders_at_once_lose_none_of_each_others_seeds(tmp_path):
    """Two ``--fetch-files`` into one folder (two processes marking files seeded one at
    a time): every file either marked is in the manifest, never evicted."""
    import subprocess

    mark = ("import sys\nfrom pypioncouch.files import FileStore\n"
            "store = FileStore(sys.argv[1])\n"
            "for i in range(150):\n"
            "    store.mark_seeded([f'{sys.argv[2]}/{sys.argv[2]}-{i}.whl'])\n")
    seeders = [subprocess.Popen([sys.executable, "-c", mark, str(tmp_path), tag])
               for tag in ("a", "b")]
    assert [seeder.wait(120) for seeder in seeders] == [0, 0]
    seeded = set(json.loads((tmp_path / "seeded.json").read_text())["seeded"])
    assert seeded == {f"{tag}/{tag}-{i}.whl" for tag in ("a", "b") for i in range(150)}


def test_a_damaged_file_a_read_only_folder_keeps_is_not_served_until_it_changes(
        tmp_path, monkeypatch):
    import errno

    from pypioncouch import files

    store = FileStore(tmp_path)
    put(store, "a/a-1.whl", 10)
    # (as root, permissions cannot make the folder read-only: unlink says it is)
    monkeypatch.setattr(files.os, "unlink", lambda path: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")))
    assert store.held("a") == {"a-1.whl": 10}
    store.remove_damaged("a/a-1.whl", "does not match its sha256")
    assert store.is_damaged("a/a-1.whl")
    assert store.held("a") == {}  # (not listed on an air-gapped mirror's pages)
    assert store.summary()["last_error"] == ("a/a-1.whl: does not match its sha256: cannot "
                                             "be removed (Read-only file system): not served")
    os.utime(tmp_path / "a" / "a-1.whl", ns=(1, 1))  # replaced (rsync): read again
    assert not store.is_damaged("a/a-1.whl")


def test_the_daemon_takes_the_files_options(tmp_path, monkeypatch):
    from twisted.python import usage

    from pypioncouch.service import Options, makeService

    base = ["--couch", "http://127.0.0.1:9/", "--listen", "tcp:0:interface=127.0.0.1"]
    monkeypatch.setenv("PYPIONCOUCH_FILES", str(tmp_path / "files"))
    options = Options()
    options.parseOptions(base + ["--files-max-gb", "0.5", "--no-sync"])
    assert (options["files"], options["files-max-gb"]) == (str(tmp_path / "files"), 0.5)
    makeService(options)
    assert (tmp_path / "files" / ".incoming").is_dir()
    monkeypatch.delenv("PYPIONCOUCH_FILES")
    options = Options()
    options.parseOptions(base + ["--files", str(tmp_path / "synced")])
    makeService(options)  # syncing: with a fetcher
    assert (tmp_path / "synced" / ".incoming").is_dir()
    with pytest.raises(usage.UsageError, match="--files-max-gb goes with --files DIR"):
        Options().parseOptions(base + ["--files-max-gb", "1"])
    with pytest.raises(usage.UsageError, match="--files-max-gb must be a positive"):
        Options().parseOptions(base + ["--files", str(tmp_path), "--files-max-gb", "0"])
    (tmp_path / "a-file").write_text("")
    with pytest.raises(usage.UsageError, match=f"--files {tmp_path}/a-file: "):
        Options().parseOptions(base + ["--files", str(tmp_path / "a-file")])


@pytest.mark.parametrize("filename, safe", [
    ("pkg-1.0-py3-none-any.whl", True), ("pkg-1.0.tar.gz", True), (".hidden.whl", False),
    ("a/b.whl", False), ("x..whl", False), ("pkg-1.0.whl\n", False), ("", False),
    ("p" * 236 + ".whl", True), ("p" * 237 + ".whl", False),  # (240 characters at most,
    ("p" * 236 + ".whl.metadata", True)])                      # and its metadata's too)
def test_only_a_plain_path_segment_names_a_stored_file(filename, safe):
    from pypioncouch.files import BadFileName, is_safe_filename, relative_path

    assert is_safe_filename(filename) is safe
    if safe:
        assert relative_path("pkg", filename) == f"pkg/{filename}"
    with pytest.raises(BadFileName):
        relative_path("pkg\n", "pkg-1.0.tar.gz")


def test_a_requirements_file_that_is_not_text_is_said_by_its_name(tmp_path):
    from pypioncouch.seed import SeedError, read_requirements

    wheel = tmp_path / "files_lib-1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xb7\xac")
    with pytest.raises(SeedError) as refused:
        read_requirements(wheel)
    assert str(refused.value) == f"{wheel} is not a requirements file: not UTF-8 text (byte 10)"

"""The product as users get it: the wheel and the sdist built from this tree, the wheel
installed into a fresh venv (not editable) and ``twistd -n pypioncouch`` run from it the
way the systemd unit runs it, with a read-only site-packages.

Dependencies come from the wheelhouse ``make`` fills at set-up
(``.venv/wheelhouse``): a test never reaches PyPI.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest
import pytest_twisted
import treq

from pypioncouch.testing.couchserver import free_port
from pypioncouch.testing.pypi import listen, make_simulator

from .helpers import sleep
from .test_web import serve

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = Path(sys.prefix) / "wheelhouse"
PLUGIN = "twisted/plugins/pypioncouch_plugin.py"


def shipped_files() -> set[str]:
    """Every file of the package as the tree has it (modules, templates, static files,
    the design document's JavaScript), relative to the repository."""
    found = {PLUGIN}
    for path in (REPO / "pypioncouch").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            found.add(str(path.relative_to(REPO)))
    return found


def build(kind: str, into: Path) -> Path:
    """Build the wheel or the sdist with setuptools' PEP 517 hooks (no network)."""
    hook = f"build_{kind}"
    result = subprocess.run(
        [sys.executable, "-c",
         f"from setuptools import build_meta; print(build_meta.{hook}({str(into)!r}))"],
        cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return into / result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def wheel(dist):
    return build("wheel", dist)


def test_the_wheel_holds_every_module_and_data_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = shipped_files() - names
    assert not missing, f"not in the wheel: {sorted(missing)}"


def test_the_sdist_holds_every_module_data_file_and_the_deploy_files(dist):
    sdist = build("sdist", dist)
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    wanted = shipped_files() | {"etc/pypioncouch.service", "etc/pypioncouch.env",
                                "etc/couchdb-read-only.json",
                                "README.md", "docs/schema.md", "setup.py", "pyproject.toml"}
    missing = wanted - names
    assert not missing, f"not in {top}: {sorted(missing)}"


@pytest.fixture(scope="module")
def installed(wheel):
    """A fresh venv with the wheel installed as the README says."""
    if not WHEELHOUSE.is_dir():
        pytest.fail(f"no wheelhouse at {WHEELHOUSE}: run `make setup` (it builds one)",
                    pytrace=False)
    root = Path(tempfile.mkdtemp(prefix="pypioncouch-installed-"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check",
           "install", "--quiet", "--no-index", "--find-links", str(WHEELHOUSE)]
    result = subprocess.run(pip + [str(wheel)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    # The README's step that writes Twisted's plugin cache while site-packages is writable.
    subprocess.run([str(venv / "bin" / "twistd"), "--help"], check=True,
                   capture_output=True, cwd=root)
    yield venv
    shutil.rmtree(root, ignore_errors=True)


def read_only(site_packages: Path, command: list[str]) -> list[str]:
    """``command`` run with ``site_packages`` read-only, as under the unit's
    ``ProtectSystem=strict``: a read-only bind mount in a mount namespace of its own
    when we are root (root writes through file modes), else the files' write bits
    are taken away by the caller. Exits 97 if the folder can still be written."""
    if os.geteuid() != 0:
        return command
    script = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" || exit 96; '
              'touch "$0/.probe" 2>/dev/null && exit 97; exec "$@"')
    return ["unshare", "--mount", "sh", "-c", script, str(site_packages), *command]


async def settles_a_stale_branch(url, db, key):
    """A branch of ``key`` one serial older, served as a cluster may serve a stale
    copy written over (its revision sorts higher): the daemon serves the newest
    again and says so on /status."""
    doc = await db.get(key)
    position = doc["_rev"].split("-")[0]
    stale = {**{k: v for k, v in doc.items() if k != "_attachments"},
             "_rev": f"{position}-{'f' * 32}", "last_serial": doc["last_serial"] - 1,
             "summary": "a stale branch"}
    await db.server.request("POST", f"{db.name}/_bulk_docs",
                            body={"docs": [stale], "new_edits": False})
    for _ in range(300):
        served = await db.get(key, conflicts="true")
        status = await (await treq.get(f"{url}/status",
                                       headers={"Accept": "application/json"})).json()
        if "_conflicts" not in served and status["conflicts"]["settled"] and \
                status["conflicts"]["error"] is None:
            break
        await sleep(0.1)
    assert served["summary"] != "a stale branch" and "_conflicts" not in served, served
    assert served["last_serial"] == doc["last_serial"]
    assert status["conflicts"] == {"settled": 1, "error": None}


@pytest_twisted.ensureDeferred
async def test_the_installed_daemon_serves_what_the_tree_serves(installed, couch_server,
                                                                db_name):
    venv = installed
    site_packages = next((venv / "lib").glob("python*/site-packages"))
    assert not (site_packages / "pypioncouch" / "web" / "app.py").is_symlink()
    simulator = make_simulator(12, seed=4)
    sim_port, sim_url = listen(simulator)
    workdir = venv.parent / f"work-{db_name}"
    workdir.mkdir()
    by_modes = os.geteuid() != 0
    if by_modes:
        subprocess.run(["chmod", "-R", "a-w", str(site_packages)], check=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYPIONCOUCH_COUCH=couch_server.url, PYPIONCOUCH_DB=db_name)
    log_path = workdir / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            read_only(site_packages, [
                str(venv / "bin" / "twistd"), "--nodaemon", "--pidfile=", "pypioncouch",
                "--pypi", sim_url, "--listen", f"tcp:{port}:interface=127.0.0.1",
                "--interval", "1"]),
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        health = None
        for _ in range(300):
            await sleep(0.2)
            assert daemon.poll() is None, log_path.read_text()[-3000:]
            try:
                health = await treq.get(f"{url}/health")
            except Exception:
                continue
            if health.code == 200:
                break
        assert health is not None and health.code == 200, log_path.read_text()[-3000:]
        from pypioncouch.couch import CouchDB

        _, tree_port, tree_url = serve(CouchDB(couch_server.read_url).database(db_name),
                                       syncing=False)
        try:
            key = simulator.index.listing()[3][0]
            for path in ("simple/", f"simple/{key}/", f"pypi/{key}/json"):
                ours = await treq.get(f"{url}/{path}")
                tree = await treq.get(f"{tree_url}/{path}")
                assert ours.code == tree.code == 200, path
                assert await ours.content() == await tree.content(), path
            for path in ("browse/", f"browse/project/{key}", "status", "metrics"):
                answer = await treq.get(f"{url}/{path}")
                assert answer.code == 200, (path, await answer.text())
            await settles_a_stale_branch(url, CouchDB(couch_server.url).database(db_name), key)
        finally:
            await tree_port.stopListening()
    finally:
        daemon.terminate()
        daemon.wait(30)
        await sim_port.stopListening()
        if by_modes:
            subprocess.run(["chmod", "-R", "u+w", str(site_packages)], check=True)
    log_text = log_path.read_text()
    assert "Unable to write to plugin cache" not in log_text
    assert "Traceback" not in log_text, log_text[-3000:]
    assert couch_server.url.split("@")[0].rsplit(":", 1)[1] not in log_text  # no password

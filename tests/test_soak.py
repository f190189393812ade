"""Soak: the daemon against a PyPI that misbehaves in every way at once, a CouchDB that
goes away and comes back, and two ``kill -9``s, then PyPI settles: the database must
equal PyPI's truth, and nothing PyPI still has may have been removed on the way.

Bounded: about a minute of trouble, then up to a minute to converge.
"""

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet import threads

from pypioncouch.couch import CouchDB
from pypioncouch.checkpoint import CHECKPOINT
from pypioncouch.testing.pypi import SimulatorProcess
from pypioncouch.testing.server import FAULT_KINDS

from .helpers import sleep
from .test_sync_robust import _matches

BIN = Path(sys.executable).parent


def simple_listing_keys(sim) -> set[str]:
    import json
    import urllib.request

    from packaging.utils import canonicalize_name

    request = urllib.request.Request(f"{sim.url}/simple/", headers={
        "Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return {canonicalize_name(p["name"]) for p in json.load(answer)["projects"]}


class Daemon:
    """``twistd -n pypioncouch`` in a subprocess, logging to a file."""

    def __init__(self, couch_url: str, sim_url: str, db: str, log: Path):
        self.base = [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(log),
                     "pypioncouch", "--couch", couch_url, "--pypi", sim_url + "/",
                     "--db", db, "--interval", "0.3", "--timeout", "2",
                     "--listen", "tcp:0:interface=127.0.0.1"]
        self.process: subprocess.Popen | None = None

    def start(self, changes: str) -> None:
        self.process = subprocess.Popen(self.base + ["--changes", changes],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest_twisted.ensureDeferred
async def test_faults_outages_and_kills_converge_to_pypi_and_remove_nothing_alive(
        private_couch_server, db_name, tmp_path):
    rng = random.Random(2026)
    couch = private_couch_server.start()
    db = CouchDB(couch.url, timeout=10).database(db_name)
    with SimulatorProcess("--projects", "80", "--seed", "31", "--latency-ms", "2") as sim:
        daemon = Daemon(couch.url, sim.url, db_name, tmp_path / "daemon.log")
        ever_listed = simple_listing_keys(sim)
        sim.control("faults", rate=0.10, kinds=list(FAULT_KINDS), seed=9,
                    timeout_seconds=3)
        sim.control("stale", seconds=1.0)  # CDN copies a second behind
        daemon.start("xmlrpc")
        await sleep(rng.uniform(4, 7))  # the full import under faults
        sim.control("churn", seconds=0.05, seed=4)  # PyPI changes all the time
        await sleep(rng.uniform(3, 5))
        await threads.deferToThread(couch.stop)  # CouchDB goes away ...
        await sleep(2)
        await threads.deferToThread(couch.start)  # ... and comes back
        await sleep(rng.uniform(2, 4))
        daemon.kill9()
        # Listings cut to a third (a broken CDN node), followed through /simple/.
        sim.control("listing", keep=0.3, start=0.2)
        daemon.start("simple")
        await sleep(rng.uniform(4, 7))
        daemon.kill9()
        sim.control("listing", keep=1.0, start=0.0)
        daemon.start("xmlrpc")
        await sleep(rng.uniform(3, 5))
        # PyPI settles: no more changes, faults or stale copies.
        sim.control("churn", seconds=0)
        sim.control("faults", rate=0.0)
        sim.control("stale", seconds=0)
        state = sim.control("state")
        assert state["last_serial"] > 300  # the churn happened while all this went on
        try:
            checkpoint = None
            for _ in range(300):
                checkpoint = await db.get_local(CHECKPOINT)
                if checkpoint and checkpoint["serial"] >= state["last_serial"] \
                        and not checkpoint["pending"]:
                    break
                await sleep(0.2)
            assert checkpoint["serial"] == state["last_serial"], checkpoint
            assert checkpoint["pending"] == {}
            assert await _matches(db, sim.url)
            # Nothing was removed that PyPI still has: every project PyPI listed at any
            # time and lists now is stored (``_matches`` checks the ones it lists now;
            # the removals came from the churn alone).
            still = simple_listing_keys(sim)
            rows = (await db.all_docs(keys=sorted(ever_listed & still)))["rows"]
            assert all("error" not in row and not (row.get("value") or {}).get("deleted")
                       for row in rows)
        finally:
            assert daemon.stop() == -signal.SIGTERM
    log = (tmp_path / "daemon.log").read_text()
    assert couch.admin[1] not in log  # no password in the log, whatever happened

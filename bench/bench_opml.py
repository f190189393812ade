"""OPML benchmark (issue 5): time from a project document change to its regenerated
opml.xml (median and p99 over a burst of changes), and attachments written per second
when regenerating everything after an import."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from bench.common import BIN, couch_server, SimulatorProcess


def run(projects: int = 2000, burst: int = 1000,
        kind: str = "pouchdb") -> dict:
    with couch_server(kind) as couch, \
            SimulatorProcess("--projects", str(projects), "--seed", "4") as sim:
        subprocess.run([str(BIN / "pypioncouch"), "--fullimport", couch.url, "--pypi", sim.url,
                        "--quiet"], check=True, capture_output=True)
        started = time.perf_counter()
        out = subprocess.run([str(BIN / "pypioncouch"), "--opml", couch.url, "--quiet"],
                             check=True, capture_output=True, text=True).stdout
        seconds = time.perf_counter() - started
        written = int(out.split("opml.xml: ")[1].split()[0])
        latency = json.loads(subprocess.run(
            [sys.executable, "-m", "bench.opml_latency", couch.url, str(burst)],
            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    return {"projects": projects,
            "regenerate_all": {"attachments": written, "seconds": round(seconds, 2),
                               "attachments_per_s": round(written / seconds, 1)},
            "change_to_opml": latency}

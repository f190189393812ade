"""A daemon's first full import, for an A/B of two trees: starts a CouchDB (pouchdb-server
or Apache CouchDB from ../shared/couchdb), the PyPI simulator (1,000 projects, 20 ms,
answers prerendered) and ``twistd pypioncouch`` from TREE, waits until /status says the
import is over, and prints one JSON line; the import's own time is in the daemon's log
(``--log``, "full import: ... N s").

    python bench/daemon_import.py TREE pouchdb|apache [--log FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
NODE = ROOT.parent / "shared" / "couchdb" / "couchdb-node"


def status(port: int) -> dict | None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/status",
                                     headers={"Accept": "application/json"})
    try:
        return json.load(urllib.request.urlopen(request, timeout=5))
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tree")
    parser.add_argument("kind", choices=["pouchdb", "apache"])
    parser.add_argument("--log", default="daemon-import.log")
    args = parser.parse_args()
    from pypioncouch.testing.couchserver import CouchServer, free_port

    workdir = tempfile.mkdtemp(prefix="bench-daemon-")
    couch = None
    if args.kind == "pouchdb":
        couch = CouchServer(admin=("admin", "pw")).start()
        url = couch.url
    else:
        port = free_port()
        subprocess.run([str(NODE), "start", workdir, str(port), "admin", "pw"],
                       check=True, capture_output=True)
        url = f"http://admin:pw@127.0.0.1:{port}/"
    simulator = subprocess.Popen(
        [str(BIN / "python"), "-m", "pypioncouch.testing.pypi", "--port", "0",
         "--projects", "1000", "--latency-ms", "20", "--prerender"],
        stdout=subprocess.PIPE, text=True)
    pypi = re.search(r"on (http://\S+?)/ ", simulator.stdout.readline()).group(1)
    web = free_port()
    started = time.monotonic()
    daemon = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", f"--logfile={args.log}", "pypioncouch",
         "--couch", url, "--db", "bench", "--pypi", pypi, "--interval", "1",
         "--no-backfill", "--listen", f"tcp:{web}:interface=127.0.0.1"],
        env=dict(os.environ, PYTHONPATH=args.tree), cwd=args.tree)
    try:
        while time.monotonic() - started < 300:
            time.sleep(0.2)
            found = status(web)
            if found and found["phase"] == "incremental" and found["import"]["total"]:
                break
        print(json.dumps({"tree": args.tree, "kind": args.kind,
                          "until_status_says_incremental_s":
                          round(time.monotonic() - started, 2)}))
    finally:
        daemon.terminate()
        daemon.wait(20)
        simulator.terminate()
        if couch is not None:
            couch.cleanup()
        else:
            subprocess.run([str(NODE), "stop", workdir], capture_output=True)


if __name__ == "__main__":
    main()

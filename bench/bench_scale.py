"""PyPI's scale (issue 14): a full import against a listing of 700,000 projects.

The simulator lists that many cheaply (names and serials; a project is generated only
when asked for), and serves its listing as bytes rendered when the bench first asks
for it (``--keep-answers``; PyPI serves it from a cache too): the figures are the
importer's, not the simulator's 57 MB rendering. The first ``stored`` projects, in
the importer's order, are already in CouchDB at their listed serial (a resumed or
repeated import: no work to do); the design document's view is built beforehand, as
on a database that has been running. Then ``pypioncouch --fullimport --trace`` runs
until ``new`` more projects are written, and is stopped (SIGTERM: the trace is
written on the way out).

With ``changes="simple"`` the importer lists from the ``/simple/`` index's JSON (43
MB at this size, as a daemon following the index reads it at every pass).

Figures: seconds to the listing, to the first project written; projects needing no
work passed per second (``stored`` over the time from the sorted listing to the first
fetch); peak RSS of the importer (VmHWM, read just before it is stopped).
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
import xmlrpc.client
from pathlib import Path

from bench.common import BIN, couch_server, http_json, SimulatorProcess
from pypioncouch import model


def seed(couch_url: str, db: str, entries: list[tuple[str, str, int]], batch: int = 5000
         ) -> float:
    """Store ``entries`` (key, name, serial) as current project documents; seconds."""
    started = time.perf_counter()
    for at in range(0, len(entries), batch):
        docs = [{"_id": key, "type": model.PROJECT, "name": name, "last_serial": serial,
                 "versions": [], "release_digests": {}, "status": "active"}
                for key, name, serial in entries[at:at + batch]]
        http_json(f"{couch_url}{db}/_bulk_docs", "POST", {"docs": docs})
    return time.perf_counter() - started


def vm_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(projects: int = 700_000, stored: int = 100_000, new: int = 300,
        kind: str = "pouchdb", deadline: float = 600.0, changes: str = "xmlrpc") -> dict:
    db = "scale"
    result: dict = {"projects_listed": projects, "stored_current": stored,
                    "changes": changes}
    with SimulatorProcess("--projects", str(projects), "--seed", "9", "--keep-answers") as sim, \
            couch_server(kind) as couch, tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        listing = xmlrpc.client.ServerProxy(f"{sim.url}/pypi").list_packages_with_serial()
        result["simulator_listing_seconds"] = round(time.perf_counter() - started, 1)
        entries = sorted((model.normalize(name), name, serial)
                         for name, serial in listing.items()
                         if model.is_valid_project_name(name))
        del listing
        http_json(f"{couch.url}{db}", "PUT")
        result["seed_seconds"] = round(seed(couch.url, db, entries[:stored]), 1)
        del entries
        subprocess.run([str(BIN / "pypioncouch"), "--push-design", couch.url, "--db", db],
                       check=True, capture_output=True)
        started = time.perf_counter()
        http_json(f"{couch.url}{db}/_design/pypioncouch/_view/catalog?limit=1&reduce=false",
                  timeout=3600)
        result["view_build_seconds"] = round(time.perf_counter() - started, 1)

        trace_file = Path(folder, "trace.json")
        process = subprocess.Popen(
            [str(BIN / "pypioncouch"), "--fullimport", couch.url, "--pypi", sim.url,
             "--db", db, "--changes", changes, "--quiet", "--trace", str(trace_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = time.perf_counter()
        peak = 0.0
        while process.poll() is None and time.perf_counter() - started < deadline:
            time.sleep(0.2)
            peak = max(peak, vm_peak_mb(process.pid))
            if http_json(f"{couch.url}{db}")["doc_count"] > stored + new:
                break
        peak = max(peak, vm_peak_mb(process.pid)) if process.poll() is None else peak
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
        trace = json.loads(trace_file.read_text())
    marks = trace["marks"]
    result.update({
        "importer_peak_rss_mb": round(peak, 1),
        "marks_seconds": marks,
        "first_project_written_seconds": marks.get("first project written"),
        "no_work_projects_per_s": round(
            stored / (marks["first fetch"] - marks["works ready"]), 1)
        if "first fetch" in marks else None,
        "stages": trace["stages"],
        "stderr_tail": errors.strip().splitlines()[-2:],
    })
    return result

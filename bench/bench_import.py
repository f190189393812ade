"""Full import benchmark (issue 4): projects/s against the latency bound, the write path
against a raw _bulk_docs load of the same documents, and peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from bench.common import (
    BIN, couch_server, CouchServer, http_json, peak_rss_of, SimulatorProcess)


def full_import(couch: CouchServer, projects: int, latency_ms: float, concurrency: int,
                db: str, seed: int = 1, ceiling: bool = False) -> dict:
    """``pypioncouch --fullimport`` from a simulated PyPI whose answers are rendered
    ahead of time (``--prerender``: its CPU is not the figure), traced; with
    ``ceiling``, first the fetch ceiling on the same simulator (bench/fetch_only.py)."""
    with SimulatorProcess("--projects", str(projects), "--seed", str(seed),
                          "--latency-ms", str(latency_ms), "--prerender") as sim, \
            tempfile.TemporaryDirectory() as folder:
        fetch_only = None
        if ceiling:
            fetch_only = json.loads(subprocess.run(
                [sys.executable, "-m", "bench.fetch_only", sim.url, str(concurrency)],
                capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        trace_file = Path(folder, "trace.json")
        seconds, peak_mb, out, cpu = peak_rss_of(
            [str(BIN / "pypioncouch"), "--fullimport", couch.url, "--pypi", sim.url,
             "--db", db, "--concurrency", str(concurrency), "--quiet",
             "--trace", str(trace_file)])
        trace = json.loads(trace_file.read_text())
    info = http_json(f"{couch.url}{db}")
    result = {"projects": projects, "latency_ms": latency_ms, "concurrency": concurrency,
              "seconds": round(seconds, 2), "projects_per_s": round(projects / seconds, 1),
              "docs": info["doc_count"], "docs_per_s": round(info["doc_count"] / seconds, 1),
              "peak_rss_mb": round(peak_mb, 1),
              "importer_cpu_seconds": round(cpu, 2),
              "importer_cpu_ms_per_project": round(1000 * cpu / projects, 2),
              "summary": out.strip(),
              "trace": {k: trace[k] for k in ("seconds", "marks", "stages", "busy_parts")},
              "fetch_median_s": trace["steps"].get("fetching -> fetched", {}).get("median")}
    if fetch_only is not None:
        result["fetch_ceiling"] = fetch_only
        result["ratio_to_fetch_ceiling"] = round(fetch_only["seconds"] / seconds, 3)
    return result


def raw_bulk_load(couch: CouchServer, source_db: str, target_db: str,
                  batch: int = 500, with_design: bool = True) -> dict:
    """Copy the same documents with plain _bulk_docs (no PyPI, no logic): the ceiling.
    ``with_design`` installs the same design document first (and so the same write
    guard, if it has one), so both loads pay the same per-write costs. Documents are
    read ahead, a batch at a time, into files (100,000 projects do not fit one
    answer); only the writes are timed."""
    http_json(f"{couch.url}{target_db}", "PUT")
    if with_design:
        from pypioncouch import couchapp

        design = {k: v for k, v in couchapp.design_document().items() if k != "_id"}
        http_json(f"{couch.url}{target_db}/{couchapp.DESIGN_ID}", "PUT", design)
    with tempfile.TemporaryFile("w+") as spool:
        total, startkey = 0, None
        while True:
            query = f"include_docs=true&limit={batch}"
            if startkey is not None:
                query += f"&skip=1&startkey={urllib.parse.quote(json.dumps(startkey))}"
            rows = http_json(f"{couch.url}{source_db}/_all_docs?{query}")["rows"]
            docs = []
            for row in rows:
                doc = row["doc"]
                if not doc["_id"].startswith("_design/"):
                    doc.pop("_rev", None)
                    doc.pop("_attachments", None)
                    docs.append(doc)
            spool.write(json.dumps({"docs": docs}) + "\n")
            total += len(docs)
            if len(rows) < batch:
                break
            startkey = rows[-1]["id"]
        spool.seek(0)
        started = time.perf_counter()
        for line in spool:
            http_json(f"{couch.url}{target_db}/_bulk_docs", "POST", json.loads(line))
        seconds = time.perf_counter() - started
    return {"docs": total, "seconds": round(seconds, 2),
            "docs_per_s": round(total / seconds, 1)}


def write_path(couch: CouchServer, projects: int, db: str, seed: int = 1) -> dict:
    """Documents/s of the import pipeline with PyPI's answers already in memory
    (bench/write_path.py, in its own process: a reactor runs once per process)."""
    out = subprocess.run([sys.executable, "-m", "bench.write_path", couch.url, db,
                          str(projects), str(seed)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(projects: int = 20_000, latency_ms: float = 50.0, concurrency: int = 10,
        kind: str = "pouchdb") -> dict:
    results = {}
    with couch_server(kind) as couch:
        slow = full_import(couch, projects, latency_ms, concurrency, "latency", ceiling=True)
        bound = concurrency / (latency_ms / 1000.0)
        slow["bound_projects_per_s"] = bound
        slow["ratio_to_bound"] = round(slow["projects_per_s"] / bound, 3)
        results["with_latency"] = slow
        results["end_to_end_no_latency"] = full_import(couch, projects, 0.0, concurrency,
                                                       "nolatency")
        writes = write_path(couch, projects, "writepath")
        raw = raw_bulk_load(couch, "writepath", "raw")
        bare = raw_bulk_load(couch, "writepath", "rawbare", with_design=False)
        writes["raw_bulk_docs_per_s"] = raw["docs_per_s"]
        writes["ratio_to_raw_bulk"] = round(writes["docs_per_s"] / raw["docs_per_s"], 3)
        writes["raw_bulk_into_a_bare_database_docs_per_s"] = bare["docs_per_s"]
        results["write_path"] = writes
    return results

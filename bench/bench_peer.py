"""Full import against a peer (DESIGN.md): pypioncouch --fullimport against
bandersnatch 6.8 in metadata-only mode (``json = true``, ``release-files = false``),
with the same number of workers, on the same simulated PyPI with the same latency.
bandersnatch reads the project list from the PEP 691 index (``api-method = simple``),
as today's PyPI wants; pypioncouch reads it the way it does by default. The simulator
renders its answers ahead of time (``--prerender``) for both: its CPU is neither's."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from bench.bench_import import full_import, raw_bulk_load
from bench.common import BIN, couch_server, SimulatorProcess

CONFIG = """\
[mirror]
directory = {directory}
master = {master}
allow-non-https = true
api-method = simple
json = true
release-files = false
workers = {workers}
timeout = 30
global-timeout = 18000
stop-on-error = false
storage-backend = filesystem
hash-index = false
"""


def bandersnatch(projects: int, latency_ms: float, workers: int, seed: int) -> dict:
    command = BIN / "bandersnatch"
    if not command.exists():
        return {"error": "not installed: pip install bandersnatch==6.8.0"}
    with tempfile.TemporaryDirectory() as folder, \
            SimulatorProcess("--projects", str(projects), "--seed", str(seed),
                             "--latency-ms", str(latency_ms), "--prerender") as sim:
        config = Path(folder, "bandersnatch.conf")
        config.write_text(CONFIG.format(directory=Path(folder, "mirror"),
                                        master=sim.url.rstrip("/"), workers=workers))
        started = time.perf_counter()
        result = subprocess.run([str(command), "--config", str(config), "mirror"],
                                capture_output=True, text=True)
        seconds = time.perf_counter() - started
        json_files = sum(1 for _ in Path(folder, "mirror", "web", "json").glob("*"))
        if result.returncode != 0:
            return {"error": result.stderr.strip().splitlines()[-1:], "seconds": seconds}
    return {"seconds": round(seconds, 2), "projects_per_s": round(projects / seconds, 1),
            "json_files": json_files}


def run(projects: int = 1000, latency_ms: float = 20.0, workers: int = 10,
        kind: str = "pouchdb") -> dict:
    peer = bandersnatch(projects, latency_ms, workers, seed=6)
    with couch_server(kind) as couch:
        ours = full_import(couch, projects, latency_ms, workers, "peer", seed=6)
        # bandersnatch writes files; we write documents: the server's own floor for
        # storing them, a raw _bulk_docs load of the same documents.
        raw = raw_bulk_load(couch, "peer", "peerraw")
    result = {"projects": projects, "latency_ms": latency_ms, "workers": workers,
              "bound_seconds": round(projects / (workers / (latency_ms / 1000.0)), 2),
              "bandersnatch": peer, "pypioncouch": {k: ours[k] for k in (
                  "seconds", "projects_per_s", "docs", "peak_rss_mb",
                  "importer_cpu_ms_per_project")},
              "raw_bulk_docs_seconds": raw["seconds"]}
    if "seconds" in peer and "error" not in peer:
        result["time_ratio_to_bandersnatch"] = round(ours["seconds"] / peer["seconds"], 3)
    return result

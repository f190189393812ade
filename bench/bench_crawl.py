"""The web front under a crawler (issue 11, bounded memory): peak RSS of a ``--no-sync``
front while 32 connections ask for every page of every project — the Simple page (HTML
and PEP 691 JSON), the JSON API, the browse page — and the JSON of every version,
the heaviest projects included (the simulator's 3,000-release project and the one with
a 5 MB description in every release, once the backfill stored each release's own).

The database is filled by the syncing daemon itself (full import, then the backfill of
every older release's own metadata at up to 100 requests a second), which is then
stopped; a fresh ``--no-sync`` front serves the crawl, so its RSS is the web front's.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import subprocess
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import SimulatorProcess, couch_server, daemon, http_json

CONNECTIONS = 32
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"


def rss_mb(pid: int) -> dict:
    """Current and peak RSS of a process, in MB (Linux /proc)."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = {key: int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) / 1024
             for key in ("VmRSS", "VmHWM")}
    return {"rss_mb": round(found["VmRSS"], 1), "peak_rss_mb": round(found["VmHWM"], 1)}


def wait_for_backfill(front: str, timeout: float = 3600) -> dict:
    """Wait until the syncing daemon imported everything and the backfill has nothing
    left to fill; returns its /status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(front + "/status",
                                             headers={"Accept": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                status = json.load(answer)
        except OSError:
            status = {}
        backfill = status.get("backfill") or {}
        if status.get("serial") is not None and backfill.get("missing") == 0 \
                and backfill.get("passes", 0) >= 1:
            return status
        time.sleep(2)
    raise RuntimeError("the backfill did not finish in time")


def crawl_paths(couch_url: str) -> list[tuple[str, str]]:
    """``(path, Accept)`` of every page of every project: project by project (in a
    random order), each project's pages then the JSON of each of its versions."""
    rows = http_json(f"{couch_url}pypi/_all_docs?include_docs=true&"
                     + urllib.parse.urlencode({"endkey": '"_"'}))["rows"]
    projects = [row["doc"] for row in rows if row.get("doc") and ":" not in row["id"]
                and row["doc"].get("type") == "project"]
    random.Random(1).shuffle(projects)
    paths = []
    for project in projects:
        key = project["_id"]
        paths += [(f"/simple/{key}/", "text/html"), (f"/simple/{key}/", JSON_ACCEPT),
                  (f"/pypi/{key}/json", "*/*"), (f"/browse/project/{key}", "text/html")]
        paths += [(f"/pypi/{key}/{urllib.parse.quote(v, safe='')}/json", "*/*")
                  for v in project.get("versions") or []]
    return paths


def crawl(front: str, paths: list[tuple[str, str]]) -> dict:
    """Every path once, ``CONNECTIONS`` at a time (one keep-alive connection each)."""
    host, port = urllib.parse.urlsplit(front).netloc.split(":")
    chunks = [paths[i::CONNECTIONS] for i in range(CONNECTIONS)]

    def one_connection(chunk):
        connection = http.client.HTTPConnection(host, int(port), timeout=300)
        codes: dict[int, int] = {}
        body_bytes = 0
        for path, accept in chunk:
            connection.request("GET", path, headers={"Accept": accept})
            answer = connection.getresponse()
            body_bytes += len(answer.read())
            codes[answer.status] = codes.get(answer.status, 0) + 1
        connection.close()
        return codes, body_bytes

    started = time.perf_counter()
    with ThreadPoolExecutor(CONNECTIONS) as pool:
        results = list(pool.map(one_connection, chunks))
    seconds = time.perf_counter() - started
    codes: dict[str, int] = {}
    for found, _ in results:
        for code, count in found.items():
            codes[str(code)] = codes.get(str(code), 0) + count
    return {"requests": len(paths), "seconds": round(seconds, 1),
            "requests_per_s": round(len(paths) / seconds, 1), "statuses": codes,
            "body_mb": round(sum(b for _, b in results) / 2**20, 1)}


def cache_figures(front: str) -> dict:
    """The cache's gauges on /metrics (absent before issue 11)."""
    with http.client.HTTPConnection(*urllib.parse.urlsplit(front).netloc.split(":")) as c:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    return {name: float(value) for name, value in re.findall(
        r"^(pypioncouch_cache_\w+?)(?:_total)? ([\d.e+]+)$", text, re.M)}


def run(projects: int = 1000, kind: str = "pouchdb", cache_mb: float | None = None) -> dict:
    extra = [] if cache_mb is None else ["--cache-mb", f"{cache_mb:g}"]
    with couch_server(kind) as couch, \
            SimulatorProcess("--projects", str(projects), "--seed", "3") as sim:
        started = time.perf_counter()
        with daemon(couch.url, "--pypi", sim.url, "--interval", "5",
                    "--backfill-rate", "100") as (syncing, _):
            status = wait_for_backfill(syncing)
        filled = time.perf_counter() - started
        paths = crawl_paths(couch.url)
        with daemon(couch.url, "--no-sync", *extra) as (front, process):
            before = rss_mb(process.pid)
            figures = crawl(front, paths)
            after = rss_mb(process.pid)
            cache = cache_figures(front)
        return {"projects": projects, "cache_mb": cache_mb if extra else "default",
                "import_and_backfill_s": round(filled, 1),
                "releases_filled": status["backfill"]["filled"],
                "crawl": figures, "front_rss_before_crawl_mb": before["rss_mb"],
                "front_rss_after_crawl_mb": after["rss_mb"],
                "front_peak_rss_mb": after["peak_rss_mb"], "cache": cache}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))

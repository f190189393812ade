"""The web front under a crawler (issue 11, bounded memory): peak RSS of a ``--no-sync``
front while 32 connections ask for every page of every project — the Simple page (HTML
and PEP 691 JSON), the JSON API, the browse page — and the JSON of every version,
the heaviest projects included (the simulator's 3,000-release project and the one with
a 5 MB description in every release, once the backfill stored each release's own).

The database is filled by a full import, then every older release's own metadata is
stored as the backfill would; a fresh ``--no-sync`` front serves the crawl, so its RSS
is the web front's alone.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import subprocess
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import BIN, SimulatorProcess, couch_server, daemon, http_json
from pypioncouch import model
from pypioncouch.testing.dataset import Dataset
from pypioncouch.testing.index import PackageIndex

CONNECTIONS = 32
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"


def rss_mb(pid: int) -> dict:
    """Current and peak RSS of a process, in MB (Linux /proc)."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = {key: int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) / 1024
             for key in ("VmRSS", "VmHWM")}
    return {"rss_mb": round(found["VmRSS"], 1), "peak_rss_mb": round(found["VmHWM"], 1)}


def fill_own_info(couch_url: str, sim_url: str, projects: int) -> int:
    """Store every older release's own metadata, as the daemon's backfill would (it
    asks the simulator for each, ~0.15 s apiece for the 3,000-release project: too slow
    for a bench); built here from the same deterministic data set. Returns how many."""
    index = PackageIndex(Dataset(projects, seed=3), base_url=sim_url)
    base = f"{couch_url}pypi/"
    after, filled = None, 0
    sims: dict = {}
    while True:
        params = {"include_docs": "true", "limit": 100, "startkey": json.dumps(
            after if after is not None else "")}
        if after is not None:
            params["skip"] = 1
        rows = http_json(base + "_all_docs?" + urllib.parse.urlencode(params))["rows"]
        if not rows:
            return filled
        after = rows[-1]["id"]
        batch = []
        for row in rows:
            doc = row.get("doc") or {}
            if doc.get("type") != model.RELEASE or model.has_own_info(doc):
                continue
            key = row["id"].split(":", 1)[0]
            if key not in sims:
                sims.clear()  # one project at a time: the generated one is kept
                sims[key] = index.get(key)
            release = sims[key].releases[doc["version"]]
            batch.append(model.with_own_info(doc, index.info(sims[key], release)))
        if batch:
            answer = http_json(base + "_bulk_docs", "POST", {"docs": batch})
            filled += sum(1 for result in answer if result.get("ok"))


def crawl_paths(couch_url: str) -> list[tuple[str, str]]:
    """``(path, Accept)`` of every page of every project: project by project (in a
    random order), each project's pages then the JSON of each of its versions."""
    keys = [row["id"] for row in http_json(
        f"{couch_url}pypi/_design/pypioncouch/_view/catalog?reduce=false&"
        + urllib.parse.urlencode({"startkey": '["name"]', "endkey": '["name",{}]'})
    )["rows"]]
    rows = http_json(f"{couch_url}pypi/_all_docs?include_docs=true", "POST",
                     {"keys": keys})["rows"]
    projects = [row["doc"] for row in rows if row.get("doc")]
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
    host, port = urllib.parse.urlsplit(front).netloc.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    return {name: float(value) for name, value in re.findall(
        r"^(pypioncouch_cache_\w+?)(?:_total)? ([\d.e+]+)$", text, re.M)}


def run(projects: int = 1000, kind: str = "pouchdb", cache_mb: float | None = None) -> dict:
    extra = [] if cache_mb is None else ["--cache-mb", f"{cache_mb:g}"]
    with couch_server(kind) as couch, \
            SimulatorProcess("--projects", str(projects), "--seed", "3") as sim:
        started = time.perf_counter()
        subprocess.run([str(BIN / "pypioncouch"), "--fullimport", couch.url, "--pypi",
                        sim.url, "--quiet"], check=True, capture_output=True)
        filled = fill_own_info(couch.url, sim.url, projects)
        prepared = time.perf_counter() - started
        paths = crawl_paths(couch.url)
        with daemon(couch.url, "--no-sync", *extra) as (front, process):
            before = rss_mb(process.pid)
            figures = crawl(front, paths)
            figures["projects_crawled"] = len({p.split("/")[2] for p, _ in paths
                                               if p.startswith("/simple/")})
            after = rss_mb(process.pid)
            cache = cache_figures(front)
        return {"projects": projects, "cache_mb": cache_mb if extra else "default",
                "import_and_fill_s": round(prepared, 1), "releases_filled": filled,
                "crawl": figures, "front_rss_before_crawl_mb": before["rss_mb"],
                "front_rss_after_crawl_mb": after["rss_mb"],
                "front_peak_rss_mb": after["peak_rss_mb"], "cache": cache}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))

"""Browse benchmark (issue 7): view build time after a full import against the raw
ingest time of the same documents, and page latency (median, p99) of the project list
at page 1 and a far page, a classifier page and a project page."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

from bench.bench_import import full_import, raw_bulk_load
from bench.bench_web import wrk
from bench.common import couch_server, http_json, mirror_front
from pypioncouch import couchapp
from pypioncouch.web.browse import PAGE


def build_views(couch_url: str, db: str) -> float:
    started = time.perf_counter()
    for view in couchapp.design_document()["views"]:
        reduce = "&reduce=false" if "reduce" in couchapp.design_document()["views"][view] else ""
        http_json(f"{couch_url}{db}/{couchapp.DESIGN_ID}/_view/{view}?limit=1{reduce}",
                  timeout=7200)
    return time.perf_counter() - started


def empty_view_pass(couch_url: str, db: str) -> float:
    """The server's floor: building a view whose map emits nothing (one pass over the
    database, no index rows)."""
    http_json(f"{couch_url}{db}/_design/floor", "PUT",
              {"views": {"nothing": {"map": "function (doc) {}"}}})
    started = time.perf_counter()
    http_json(f"{couch_url}{db}/_design/floor/_view/nothing?limit=1", timeout=7200)
    seconds = time.perf_counter() - started
    http_json(f"{couch_url}{db}/_design/floor?rev="
              + http_json(f"{couch_url}{db}/_design/floor")["_rev"], "DELETE")
    return seconds


def median_and_p99(base: str, path: str, seconds: float) -> dict:
    """Steady state: one request first (it may compute counts the page reuses), timed
    on its own, then wrk."""
    started = time.perf_counter()
    urllib.request.urlopen(urllib.request.Request(base + path, headers={"Accept": "text/html"}),
                           timeout=3600).read()
    first = time.perf_counter() - started
    figures = wrk(base, [path], seconds, "text/html", connections=4)
    return {"path": path, "first_request_ms": round(first * 1000, 1), **figures}


def run(projects: int = 100_000, seconds: float = 5.0, ceilings: bool = True,
        kind: str = "pouchdb") -> dict:
    """Import ``projects`` from the simulator (peak RSS recorded), build the views
    (against the raw ingest of the same documents and an empty view's pass, unless
    ``ceilings`` is false), then measure the pages with wrk (4 connections)."""
    with couch_server(kind) as couch:
        # The real importer against the simulator: the same run gives the import's
        # peak RSS at this size (DESIGN.md's memory target is set at 100,000 projects).
        writes = full_import(couch, projects, 0.0, 10, "pypi")
        views_seconds = build_views(couch.url, "pypi")
        figures = {"projects": projects, "documents": writes["docs"],
                   "import_seconds": writes["seconds"],
                   "import_projects_per_s": writes["projects_per_s"],
                   "import_peak_rss_mb": writes["peak_rss_mb"],
                   "view_build_seconds": round(views_seconds, 1)}
        if ceilings:
            floor_seconds = empty_view_pass(couch.url, "pypi")
            raw = raw_bulk_load(couch, "pypi", "rawcopy", with_design=False)
            figures.update(
                raw_bulk_seconds=raw["seconds"],
                view_build_ratio_to_raw_ingest=round(views_seconds / raw["seconds"], 2),
                empty_view_pass_seconds=round(floor_seconds, 1),
                view_build_ratio_to_empty_pass=round(views_seconds / floor_seconds, 2))
        last_page = projects // PAGE  # the last full page: keyset paging makes it cost page 1
        view = f"{couch.url}pypi/{couchapp.DESIGN_ID}/_view/{couchapp.VIEW}"
        names = urllib.parse.urlencode({"startkey": '["name"]', "endkey": '["name",{}]'})
        key = http_json(f"{view}?{names}&reduce=false&limit=1"  # skip: here only, once
                        f"&skip={(last_page - 1) * PAGE - 1}")["rows"][0]["key"]
        classifiers = urllib.parse.urlencode({"startkey": '["classifier"]',
                                              "endkey": '["classifier",{}]'})
        counts = http_json(f"{view}?{classifiers}&group_level=2")["rows"]
        parent = max((row for row in counts if " :: " not in row["key"][1]),
                     key=lambda row: row["value"])["key"][1]
        leaf = max((row for row in counts if row["key"][1].count(" :: ") >= 2),
                   key=lambda row: row["value"])["key"][1]
        with mirror_front(couch.url) as front:
            pages = {
                "list_page_1": "/browse/",
                f"list_page_{last_page}": "/browse/?after=" + urllib.parse.quote(json.dumps(key)),
                "classifier_parent": "/browse/classifiers/?c=" + urllib.parse.quote(parent),
                "classifier_two": "/browse/classifiers/?" + urllib.parse.urlencode(
                    [("c", parent), ("c", leaf)]),
                "project": f"/browse/project/{key[1]}",
            }
            latency = {name: median_and_p99(front, path, seconds) for name, path in pages.items()}
    return {**figures, "pages": latency}

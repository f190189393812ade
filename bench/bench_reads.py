"""Read paths of many documents by id (issue 14: the OPML watcher and the sync read
every release of a batch of projects): ``_all_docs`` with ``keys`` and
``include_docs``, ``_bulk_get`` (what replication reads with), one ``_all_docs`` range
over them all, and a range per project; each with release-like documents carrying a
4.6 KB ``info.description`` and without it (what the bytes of descriptions cost), and
for ids that are not stored (a first import's reads).

    python -m bench.run reads [--projects 200]   # 6 releases a project, 300 ids a request
"""

from __future__ import annotations

import json
import time
import urllib.request

from bench.common import auth_header, couch_server, http_json

PER_PROJECT = 6
PER_REQUEST = 300
ROUNDS = 3


def release(project: int, version: int, description: bool) -> dict:
    files = [{"filename": f"p{project}-{version}.0-py3-none-any.whl",
              "url": f"https://files.example/p{project}/p-{version}.whl", "size": 1234,
              "digests": {"sha256": "a" * 64, "md5": "b" * 32, "blake2b_256": "c" * 64},
              "upload_time_iso_8601": "2024-01-01T00:00:00.000000Z", "yanked": False,
              "requires_python": ">=3.8"}] * 2
    return {"_id": f"p{project:05d}:{version}.0", "type": "release",
            "project": f"p{project:05d}", "version": f"{version}.0",
            "upload_time": [2024, 1, 1, 0, 0, 0], "yanked": False, "files": files,
            "info": {"summary": "s" * 60,
                     "description": ("d" * 70 + "\n") * (65 if description else 0),
                     "classifiers": ["Programming Language :: Python :: 3"] * 8,
                     "requires_dist": ["x>=1"] * 5}}


def _post(url: str, body: dict) -> bytes:
    scheme, rest = url.split("://", 1)
    clean = f"{scheme}://{rest.split('@', 1)[-1]}"
    request = urllib.request.Request(clean, json.dumps(body).encode(), {
        "Content-Type": "application/json", **auth_header(url)})
    with urllib.request.urlopen(request, timeout=600) as answer:
        return answer.read()


def _get(url: str) -> bytes:
    scheme, rest = url.split("://", 1)
    clean = f"{scheme}://{rest.split('@', 1)[-1]}"
    with urllib.request.urlopen(urllib.request.Request(clean, headers=auth_header(url)),
                                timeout=600) as answer:
        return answer.read()


def _timed(read) -> float:
    """The best of ``ROUNDS`` runs of ``read()`` (seconds)."""
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        read()
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def _in_requests(ids: list[str], ask) -> None:
    for start in range(0, len(ids), PER_REQUEST):
        ask(ids[start:start + PER_REQUEST])


def run(projects: int = 200, kind: str = "pouchdb") -> dict:
    result = {"documents": projects * PER_PROJECT, "ids_a_request": PER_REQUEST}
    with couch_server(kind) as couch:
        base = couch.url.rstrip("/")
        for name, description in (("with_descriptions", True), ("without", False)):
            db = f"{base}/reads-{name.replace('_', '-')}"
            http_json(db, "PUT")
            docs = [release(p, v, description)
                    for p in range(projects) for v in range(PER_PROJECT)]
            http_json(f"{db}/_bulk_docs", "POST", {"docs": docs})
            ids = [doc["_id"] for doc in docs]
            result[name] = {
                "all_docs_keys_s": _timed(lambda: _in_requests(ids, lambda chunk: _post(
                    f"{db}/_all_docs?include_docs=true", {"keys": chunk}))),
                "bulk_get_s": _timed(lambda: _in_requests(ids, lambda chunk: _post(
                    f"{db}/_bulk_get", {"docs": [{"id": i} for i in chunk]}))),
                "one_range_s": _timed(lambda: _get(f"{db}/_all_docs?include_docs=true")),
                "range_a_project_s": _timed(lambda: [_get(
                    f'{db}/_all_docs?include_docs=true&startkey="p{p:05d}:"'
                    f'&endkey="p{p:05d}:%EF%BF%B0"') for p in range(projects)]),
            }
        missing = [f"missing-{i}" for i in range(projects * PER_PROJECT)]
        db = f"{base}/reads-without"
        result["ids_not_stored"] = {
            "all_docs_keys_s": _timed(lambda: _in_requests(missing, lambda chunk: _post(
                f"{db}/_all_docs?include_docs=true", {"keys": chunk}))),
            "bulk_get_s": _timed(lambda: _in_requests(missing, lambda chunk: _post(
                f"{db}/_bulk_get", {"docs": [{"id": i} for i in chunk]}))),
        }
    return result

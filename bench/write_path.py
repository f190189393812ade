"""The write path alone: the import pipeline fed from memory (no HTTP to PyPI), so
model, planning and _bulk_docs are timed against CouchDB alone.

    python -m bench.write_path COUCH_URL DB PROJECTS [SEED]   # prints one JSON line
"""

import json
import os
import sys
import time

from twisted.internet import defer, task

from bench.common import http_json
from pypioncouch.couch import CouchDB
from pypioncouch.model import normalize
from pypioncouch.pypi import ProjectAnswer
from pypioncouch.sync import XmlRpcImporter, run_pass
from pypioncouch.testing.dataset import Dataset
from pypioncouch.testing.index import PackageIndex


class MemoryPyPI:
    """PyPI's answers, taken from the simulator beforehand and held in memory."""

    display_url = "memory://pypi/"

    def __init__(self, index: PackageIndex):
        self.listing = {display: index.last_serial_of(key) for key, display in index.listing()}
        self.serial = index.last_serial
        self.answers = {}
        for key, _ in index.listing():
            status, body, serial = index.json_api(key)
            self.answers[key] = (ProjectAnswer(key, "project", json.loads(body), serial)
                                 if status == 200 else
                                 ProjectAnswer(key, "empty", {"name": key}, serial))

    async def changelog_last_serial(self):
        return self.serial

    async def list_packages_with_serial(self):
        return self.listing

    async def project(self, name, min_serial=None):
        return self.answers[normalize(name)]


def main(couch_url: str, db: str, projects: int, seed: int = 1) -> None:
    pypi = MemoryPyPI(PackageIndex(Dataset(projects, seed)))
    result = {}

    async def run(reactor):
        importer = XmlRpcImporter(CouchDB(couch_url, reactor=reactor).database(db), pypi,
                                  batch_size=int(os.environ.get("BATCH", 100)))
        started, cpu = time.perf_counter(), time.process_time()
        summary = await run_pass(importer, full=True)
        result.update(seconds=time.perf_counter() - started, summary=str(summary),
                      cpu=time.process_time() - cpu)

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit:
        pass
    docs = http_json(f"{couch_url}{db}")["doc_count"] - 1  # less the design document
    print(json.dumps({"projects": projects, "docs": docs, "seconds": round(result["seconds"], 2),
                      "docs_per_s": round(docs / result["seconds"], 1),
                      "cpu_seconds": round(result["cpu"], 2),
                      "summary": result["summary"]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 1)

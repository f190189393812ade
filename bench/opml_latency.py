"""Change ``burst`` project documents and time how long each takes to get its new
opml.xml from an OpmlWatcher running here. Prints one JSON line.

    python -m bench.opml_latency COUCH_URL BURST
"""

import json
import sys
import time

from twisted.internet import defer, task

from bench.common import percentile
from pypioncouch import couchapp
from pypioncouch.couch import CouchDB
from pypioncouch.opml_watcher import OpmlWatcher


async def measure(reactor, couch_url: str, burst: int) -> dict:
    db = CouchDB(couch_url, reactor=reactor).database("pypi")
    watcher = OpmlWatcher(db, reactor=reactor, debounce=0.05)
    keys = []
    async for row in couchapp.all_projects(db, batch=burst):
        keys.append(row["id"])
        if len(keys) == burst:
            break
    changed_at: dict[str, float] = {}
    done_at: dict[str, float] = {}
    from pypioncouch import opml_watcher
    real_regenerate = opml_watcher.regenerate_many

    async def timed_regenerate(db_, keys, *args):
        written, conflicted, refused = await real_regenerate(db_, keys, *args)
        now = time.perf_counter()
        for key in written:
            if key in changed_at and key not in done_at:
                done_at[key] = now
        return written, conflicted, refused

    opml_watcher.regenerate_many = timed_regenerate
    watcher.startService()
    await task.deferLater(reactor, 1.0, lambda: None)
    docs = (await db.all_docs(keys=keys, include_docs=True))["rows"]
    for start in range(0, len(docs), 50):
        chunk = [row["doc"] for row in docs[start:start + 50]]
        for doc in chunk:
            doc["summary"] = f"changed at {time.time()}"  # what a sync would write
        await db.bulk_docs(chunk)
        now = time.perf_counter()
        for doc in chunk:
            changed_at[doc["_id"]] = now
    for _ in range(600):
        if len(done_at) >= len(changed_at):
            break
        await task.deferLater(reactor, 0.1, lambda: None)
    await watcher.stopService()
    waits = [done_at[k] - changed_at[k] for k in done_at]
    return {"changes": len(changed_at), "regenerated": len(done_at),
            "median_s": round(percentile(waits, 50), 3), "p99_s": round(percentile(waits, 99), 3)}


def main():
    result = {}

    async def run(reactor):
        result.update(await measure(reactor, sys.argv[1], int(sys.argv[2])))

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit:
        pass
    print(json.dumps(result))


if __name__ == "__main__":
    main()

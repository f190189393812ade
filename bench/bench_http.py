"""What the lean HTTP client (pypioncouch/http.py: Agent on a pool, no URL parsing per
request) buys over treq's HTTPClient on the same kind of pool, in one run: GETs of one
CouchDB document, 32 in flight, for a fixed number of requests each way.

    python -m bench.run http
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from bench.common import auth_header, couch_server, http_json

REQUESTS = 20_000
IN_FLIGHT = 32


async def measure(reactor, doc_url: str, headers: dict, kind: str) -> float:
    """Requests per second of ``kind`` (``lean`` or ``treq``)."""
    import treq
    from twisted.internet import defer
    from twisted.web.client import Agent, HTTPConnectionPool

    from pypioncouch.http import LeanClient

    if kind == "lean":
        client = LeanClient(reactor, IN_FLIGHT)

        async def get():
            status, _, _ = await client.get(doc_url, headers)
            assert status == 200
    else:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = IN_FLIGHT
        http = treq.client.HTTPClient(Agent(reactor, pool=pool))

        async def get():
            response = await http.get(doc_url, headers=headers)
            assert response.code == 200
            await response.content()

    async def worker(count):
        for _ in range(count):
            await get()

    await get()  # connected and warm
    started = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(worker(REQUESTS // IN_FLIGHT))
                               for _ in range(IN_FLIGHT)])
    return REQUESTS / (time.perf_counter() - started)



def run(kind: str = "pouchdb") -> dict:
    with couch_server(kind) as couch:
        http_json(f"{couch.url}bench", "PUT")
        http_json(f"{couch.url}bench/doc", "PUT", {"name": "x" * 1000})
        figures = {}
        for client in ("treq", "lean", "treq", "lean"):  # alternated, best of two
            out = subprocess.run(
                [sys.executable, "-m", "bench.bench_http", couch.url, client],
                capture_output=True, text=True)
            rate = json.loads(out.stdout.strip().splitlines()[-1])["requests_per_s"]
            figures[client] = max(figures.get(client, 0.0), rate)
        return {"requests": REQUESTS, "in_flight": IN_FLIGHT,
                "treq_requests_per_s": figures["treq"], "lean_requests_per_s": figures["lean"],
                "ratio_lean_to_treq": round(figures["lean"] / figures["treq"], 2)}


if __name__ == "__main__":
    from twisted.internet import defer, task

    couch_url, client = sys.argv[1], sys.argv[2]
    host = couch_url.split("@")[-1] if "@" in couch_url else couch_url.split("://")[1]
    headers = {"Accept": "application/json", **auth_header(couch_url)}

    async def main(reactor):
        rate = await measure(reactor, f"http://{host}bench/doc", headers, client)
        print(json.dumps({"requests_per_s": round(rate, 1)}), flush=True)

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))

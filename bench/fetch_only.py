"""The fetch ceiling: every project's JSON API answer read with pypioncouch's PyPI
client, ``concurrency`` in flight, and nothing else (no CouchDB, no shaping). What an
import can at best reach on the same simulated PyPI, measured in the same run.

    python -m bench.fetch_only PYPI_URL CONCURRENCY   # prints one JSON line
"""

import json
import sys
import time

from twisted.internet import defer, task

from pypioncouch.pypi import PyPI


async def fetch_all(reactor, url: str, concurrency: int) -> dict:
    pypi = PyPI(url, reactor=reactor, concurrency=concurrency)
    started = time.perf_counter()
    names = sorted(await pypi.list_packages_with_serial())
    queue = list(reversed(names))
    seconds: list[float] = []

    async def worker():
        while queue:
            name = queue.pop()
            began = time.perf_counter()
            await pypi.project(name)
            seconds.append(time.perf_counter() - began)

    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(concurrency)])
    total = time.perf_counter() - started
    await pypi.close()
    seconds.sort()
    return {"projects": len(names), "seconds": round(total, 2),
            "projects_per_s": round(len(names) / total, 1),
            "fetch_median_ms": round(1000 * seconds[len(seconds) // 2], 1),
            "fetch_p90_ms": round(1000 * seconds[int(0.9 * len(seconds))], 1)}


def main() -> None:
    url, concurrency = sys.argv[1], int(sys.argv[2])

    async def run(reactor):
        print(json.dumps(await fetch_all(reactor, url, concurrency)), flush=True)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()

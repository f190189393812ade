"""The PyPI simulator: a stand-in PyPI for tests, benchmarks and the offline demo.

Run it::

    python -m pypioncouch.testing.pypi --port 8000 --projects 2000 --seed 1 \\
        [--latency-ms 50] [--fault-rate 0.1] [--legacy-xmlrpc] [--churn 3]

What it models (reference: ../shared/reference/pypi-api.md):

- XML-RPC at ``/pypi`` and ``/RPC2``: ``changelog_last_serial``,
  ``changelog_since_serial`` (at most 50,000 rows a call), ``list_packages_with_serial``,
  ``package_roles``, ``user_packages``, ``browse``; the methods PyPI disabled answer with
  today's Faults, or as before 2024 with ``--legacy-xmlrpc``; argument type checks
  (-32602), unknown methods (-32601) and, with ``--xmlrpc-rate-limit``, the per-IP
  limit Fault (-32500 ``HTTPTooManyRequests ... Limit may reset in N seconds.``).
- The JSON API (``/pypi/<p>/json``, ``/pypi/<p>/<v>/json``) with Warehouse's keys, key
  order, ``X-PyPI-Last-Serial``, 301 to the normalized name, 404 for unknown,
  release-less and quarantined projects; ``--stale-seconds`` serves the previous copy
  of a changed project for that long (a CDN's stale copy, with the older serial).
- The Simple API (PEP 503 HTML / PEP 691 JSON by ``Accept``, 301s, 404s, quarantine),
  rendered by ``simple_pages.py``: the simulator imports nothing from ``pypioncouch``
  outside ``pypioncouch.testing``, so the mirror's pages are compared with an
  independent rendering.
- Files: real tiny wheels and their PEP 658 ``.metadata`` files, deterministic, with
  right sizes and md5/sha256/blake2b_256 digests; pip and uv install them (with their
  dependencies, for releases published with ``requires_dist=``).
- Data sets of any size, deterministic by ``--seed`` and generated lazily (see
  ``dataset.py`` for the hard cases they hold).
- Mutations (from Python: :class:`~pypioncouch.testing.index.PackageIndex`; over HTTP:
  ``POST /_control/<mutation>``) writing journal rows with Warehouse's action strings
  and serials (with gaps).
- Faults with a rate and a seed: 500/502/503, 429 with ``Retry-After``, timeouts,
  connection resets, XML-RPC Faults, truncated and malformed bodies; fixed latency;
  listings (``list_packages_with_serial``, ``/simple/``) cut short or frozen stale
  (``--listing-keep``, ``POST /_control/listing``); files served with wrong bytes or
  held half-way (``POST /_control/files`` with ``corrupt``, ``hold``).

What it does not model: uploads through the upload API, sdists, user accounts and
organizations (roles are plain names), vulnerability records added at run time, PEP 740
provenance (always absent), archiving writes no journal row (as on PyPI), HTTP caching
headers beyond ``Cache-Control`` and ``X-PyPI-Last-Serial``, and the 1-hour cache of
``list_packages_with_serial`` (answers are current unless the listing is frozen).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

from twisted.logger import Logger
from twisted.web.server import Site

from pypioncouch.testing.dataset import Dataset
from pypioncouch.testing.index import PackageIndex
from pypioncouch.testing.server import (
    FAULT_KINDS, FaultPlan, ListingFault, SimulatorResource)

log = Logger()


def make_simulator(projects: int = 100, seed: int = 0, *, heavy: bool | None = None,
                   latency_ms: float = 0.0, fault_rate: float = 0.0,
                   fault_kinds=FAULT_KINDS, fault_seed: int = 0, legacy_xmlrpc: bool = False,
                   stale_seconds: float = 0.0, xmlrpc_rate_limit: int | None = None,
                   listing_keep: float = 1.0, listing_start: float = 0.0,
                   prerender: bool = False, keep_answers: bool = False,
                   reactor=None) -> SimulatorResource:
    index = PackageIndex(Dataset(projects, seed, heavy), stale_seconds=stale_seconds)
    return SimulatorResource(index, faults=FaultPlan(fault_rate, fault_kinds, fault_seed),
                             latency_ms=latency_ms, legacy_xmlrpc=legacy_xmlrpc,
                             xmlrpc_rate_limit=xmlrpc_rate_limit,
                             listing=ListingFault(listing_keep, listing_start),
                             prerender=prerender, keep_answers=keep_answers,
                             reactor=reactor)


def listen(resource: SimulatorResource, port: int = 0, interface: str = "127.0.0.1",
           reactor=None):
    """Serve ``resource`` in this process's reactor; returns ``(listening port, url)``."""
    if reactor is None:
        from twisted.internet import reactor
    site = Site(resource)
    site.noisy = False
    listening = reactor.listenTCP(port, site, interface=interface)
    url = f"http://{interface}:{listening.getHost().port}"
    resource.index.base_url = url
    resource.render_ahead()
    return listening, url


class SimulatorProcess:
    """The simulator in a subprocess (for real clients such as pip and the daemon)."""

    def __init__(self, *args: str):
        self.args = list(args)
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> "SimulatorProcess":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pypioncouch.testing.pypi", "--port", "0", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            text=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the simulator exited with {self.process.wait()}")
            match = re.search(r"on (http://\S+?)/? ", line)
            if match:
                self.url = match.group(1)
                return self
        raise RuntimeError("the simulator did not start")

    def control(self, operation: str, **args) -> dict:
        request = urllib.request.Request(f"{self.url}/_control/{operation}",
                                         data=json.dumps(args).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
        self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pypioncouch.testing.pypi",
                                     description="A simulated PyPI on loopback.")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--projects", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heavy", action="store_true", default=None,
                        help="include the 3,000-release and 5 MB-description projects "
                             "(default: from 1,000 projects)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-kinds", default=",".join(FAULT_KINDS))
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--legacy-xmlrpc", action="store_true",
                        help="serve package_releases/release_data/... as before 2024")
    parser.add_argument("--stale-seconds", type=float, default=0.0)
    parser.add_argument("--xmlrpc-rate-limit", type=int, default=None,
                        help="XML-RPC calls per hour per client IP")
    parser.add_argument("--listing-keep", type=float, default=1.0,
                        help="list only this fraction of the projects in "
                             "list_packages_with_serial and /simple/ (a listing cut short)")
    parser.add_argument("--listing-start", type=float, default=0.0,
                        help="with --listing-keep: where the kept part starts (a fraction)")
    parser.add_argument("--prerender", action="store_true",
                        help="render every project's JSON API and Simple answers at start "
                             "and serve them as bytes (a cheap PyPI for benchmarks); "
                             "implies --keep-answers")
    parser.add_argument("--keep-answers", action="store_true",
                        help="serve each JSON API, Simple and XML-RPC listing answer "
                             "rendered once, as bytes, until something changes (a cheap "
                             "PyPI at any size)")
    parser.add_argument("--churn", type=float, default=0.0,
                        help="make a random change every this many seconds")
    args = parser.parse_args(argv)
    if not 0 <= args.fault_rate <= 1:
        parser.error("--fault-rate is a probability between 0 and 1")
    if not 0 <= args.listing_keep <= 1 or not 0 <= args.listing_start < 1:
        parser.error("--listing-keep and --listing-start are fractions between 0 and 1")
    from twisted.internet import reactor

    resource = make_simulator(
        args.projects, args.seed, heavy=args.heavy, latency_ms=args.latency_ms,
        fault_rate=args.fault_rate, fault_kinds=args.fault_kinds.split(","),
        fault_seed=args.fault_seed, legacy_xmlrpc=args.legacy_xmlrpc,
        stale_seconds=args.stale_seconds, xmlrpc_rate_limit=args.xmlrpc_rate_limit,
        listing_keep=args.listing_keep, listing_start=args.listing_start,
        prerender=args.prerender, keep_answers=args.keep_answers)
    _, url = listen(resource, args.port, args.interface)
    if args.churn > 0:
        resource.start_churn(args.churn, args.seed)
    print(f"PyPI simulator on {url}/ ({args.projects} projects, seed {args.seed}); "
          f"XML-RPC at {url}/pypi", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()

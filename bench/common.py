"""Shared helpers for the benchmarks: servers on loopback, timing, RSS."""

from __future__ import annotations

import json
import signal
import resource
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from pypioncouch.testing.apache import ApacheCouchServer
from pypioncouch.testing.couchserver import CouchServer
from pypioncouch.testing.pypi import SimulatorProcess
from pypioncouch.urls import split_credentials

BIN = Path(sys.executable).parent
SERVERS = ("pouchdb", "apache")


def couch_server(kind: str):
    """A fresh server of ``kind`` (a context manager): the embedded pouchdb-server or
    Apache CouchDB 3.5 from ../shared/couchdb (with an admin, as CouchDB 3 needs)."""
    if kind == "pouchdb":
        return CouchServer()
    if kind == "apache":
        return WarmApacheCouchServer()
    raise ValueError(f"no server kind {kind!r} (pouchdb, apache)")


class WarmApacheCouchServer(ApacheCouchServer):
    """Apache CouchDB, asked once with its admin's credentials before anything is
    timed: its first authenticated request hashes the password (PBKDF2, 0.24 s on
    this machine; later ones are answered from its cache), which a server in service
    did long before. Without it, whichever figure came first paid for it."""

    def start(self) -> "WarmApacheCouchServer":
        super().start()
        try:
            http_json(self.url)
        except BaseException:
            self.cleanup()  # (``with`` does not stop a server whose start failed)
            raise
        return self


def auth_header(url: str) -> dict[str, str]:
    """The Basic auth header for the credentials in ``url`` (urllib and wrk ignore them)."""
    from base64 import b64encode

    _, auth = split_credentials(url.split("?")[0])
    if auth is None:
        return {}
    return {"Authorization": "Basic " + b64encode(":".join(auth).encode()).decode()}


def http_json(url: str, method: str = "GET", body=None, timeout: float = 600):
    data = json.dumps(body).encode() if body is not None else None
    clean = url
    if "@" in url.split("/")[2]:
        scheme, rest = url.split("://", 1)
        clean = f"{scheme}://{rest.split('@', 1)[1]}"
    request = urllib.request.Request(clean, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **auth_header(url)})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.load(answer)


def run_measured(command: list[str]) -> tuple[float, int, str]:
    """Run ``command``; return (seconds, peak RSS in MB of it and its children, stdout)."""
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if result.returncode not in (0, 3):
        raise RuntimeError(f"{command[0]} failed: {result.stderr[-2000:]}")
    return seconds, max(peak, before) // 1024, result.stdout


def peak_rss_of(command: list[str]) -> tuple[float, float, str, float]:
    """(seconds, peak RSS MB of this one command, stdout, CPU seconds it used), the
    peak via /usr/bin/time if present."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = usage.ru_utime + usage.ru_stime
    if Path("/usr/bin/time").exists():
        started = time.perf_counter()
        result = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True,
                                text=True)
        seconds = time.perf_counter() - started
        if result.returncode not in (0, 3):
            raise RuntimeError(result.stderr[-2000:])
        peak = int(result.stderr.strip().splitlines()[-1]) / 1024
        out = result.stdout
    else:
        seconds, peak_int, out = run_measured(command)
        peak = float(peak_int)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, peak, out, usage.ru_utime + usage.ru_stime - cpu_before


@contextmanager
def mirror_front(couch_url: str, *options: str):
    """The daemon serving ``couch_url`` with ``--no-sync`` (and ``options``); yields its
    base URL."""
    with daemon(couch_url, "--no-sync", *options) as (front, _):
        yield front


@contextmanager
def daemon(couch_url: str, *options: str):
    """The daemon on ``couch_url`` with ``options``, listening on a free port; yields
    ``(its base URL, its process)`` once /health answers (whatever it says)."""
    from pypioncouch.testing.couchserver import free_port

    port = free_port()
    process = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=/dev/null",
                                "pypioncouch", "--couch", couch_url, *options, "--listen",
                                f"tcp:{port}:interface=127.0.0.1"])
    front = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(front + "/health", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # a 503 is an answer
            except OSError:
                time.sleep(0.2)
        yield front, process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))
    return ordered[index]


__all__ = ["CouchServer", "SimulatorProcess", "couch_server", "auth_header", "SERVERS",
           "http_json", "run_measured", "peak_rss_of",
           "percentile", "BIN", "mirror_front", "daemon"]

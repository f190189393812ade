"""The embedded CouchDB-compatible server: pouchdb-server from npm, on loopback.

Used by the tests, ``make run`` and ``make demo``. It is installed with ``npm ci`` in
the repository (pinned by package-lock.json). Run it by hand with::

    python -m pypioncouch.testing.couchserver --port 5984 --dir var/couchdb

Known traps (DESIGN.md): it must run with ``--unhandled-rejections=warn``; it has no
``/_up``, so readiness is ``GET /``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pouchdb_server_bin() -> str:
    """Where pouchdb-server is: $POUCHDB_SERVER, ./node_modules, or the PATH."""
    candidates = [os.environ.get("POUCHDB_SERVER"),
                  str(REPO / "node_modules" / ".bin" / "pouchdb-server"),
                  str(Path.cwd() / "node_modules" / ".bin" / "pouchdb-server"),
                  shutil.which("pouchdb-server")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    raise FileNotFoundError(
        "pouchdb-server is not installed: run `npm ci` in the repository "
        "(or set POUCHDB_SERVER to its path)")


class PortTaken(RuntimeError):
    """The port asked for is already listened on (another CouchDB?)."""


class CouchServer:
    """A pouchdb-server process with its own data folder.

    ``admin=("user", "password")`` configures an admin (then anonymous writes fail,
    as on CouchDB 3).
    """

    kind = "pouchdb"

    def __init__(self, datadir: str | Path | None = None, port: int | None = None,
                 admin: tuple[str, str] | None = None, log_file: str | Path | None = None):
        self._tmp = None
        if datadir is None:
            self._tmp = tempfile.mkdtemp(prefix="pypioncouch-couch-")
            datadir = self._tmp
        self.datadir = Path(datadir)
        self.port = port or free_port()
        self.admin = admin
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The server URL, with the admin's credentials when one is configured."""
        if self.admin:
            return f"http://{self.admin[0]}:{self.admin[1]}@127.0.0.1:{self.port}/"
        return self.anonymous_url

    @property
    def anonymous_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def read_url(self) -> str:
        """Where to read (the same server: a cluster reads through another node)."""
        return self.url

    def start(self, timeout: float = 30.0) -> "CouchServer":
        # Else the readiness check below would take whatever answers there (a CouchDB
        # the developer runs on 5984) for the server started here.
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                raise PortTaken(f"port {self.port} on 127.0.0.1 is taken (another "
                                "CouchDB?): pouchdb-server cannot listen there")
        self.datadir.mkdir(parents=True, exist_ok=True)
        config = self.datadir / "config.json"
        if not config.exists():
            config.write_text(json.dumps({"log": {"file": str(self.datadir / "log.txt")}}))
        node = shutil.which("node") or "node"
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [node, "--unhandled-rejections=warn", pouchdb_server_bin(),
             "--host", "127.0.0.1", "--port", str(self.port), "--dir", str(self.datadir),
             "--config", str(config), "--no-stdout-logs"],
            cwd=self.datadir, stdout=output, stderr=output, stdin=subprocess.DEVNULL,
            start_new_session=True)
        self._wait_until_up(timeout)
        if self.admin:
            self._ensure_admin()
        return self

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pouchdb-server exited with {self.process.returncode} "
                                   f"(data in {self.datadir})")
            try:
                with urllib.request.urlopen(self.anonymous_url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pouchdb-server did not answer on port {self.port} "
                                   f"within {timeout:g}s")
            time.sleep(0.1)

    def _ensure_admin(self) -> None:
        user, password = self.admin
        request = urllib.request.Request(
            f"{self.anonymous_url}_config/admins/{user}", method="PUT",
            data=json.dumps(password).encode(), headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as error:
            if error.code != 401:  # 401: an admin exists already (restart)
                raise
        # Prove the credentials work before anyone relies on them.
        token = b64encode(f"{user}:{password}".encode()).decode()
        check = urllib.request.Request(f"{self.anonymous_url}_session",
                                       headers={"Authorization": f"Basic {token}"})
        urllib.request.urlopen(check, timeout=10).close()

    def stop(self) -> None:
        """Stop the server (keeps the data folder, so it can be started again)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        """Stop, and remove the data folder if we made it."""
        self.stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "CouchServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Run the embedded pouchdb-server.")
    parser.add_argument("--port", type=int, default=5984)
    parser.add_argument("--dir", default="var/couchdb", help="data folder")
    args = parser.parse_args(argv)
    server = CouchServer(args.dir, args.port).start()
    print(f"pouchdb-server on {server.url} (data in {args.dir}); Ctrl-C stops it", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()

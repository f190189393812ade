"""Apache CouchDB 3.x for tests and benchmarks: one node or a 3-node cluster on loopback.

Users run Apache CouchDB; the suite runs against it as well as pouchdb-server. The
release and the scripts that start it live outside the repository, in
``../shared/couchdb`` (``couchdb-node``, ``couchdb-cluster``; its README says what
CouchDB 3.5 does differently); ``$PYPIONCOUCH_COUCHDB_DIR`` points elsewhere.

Both classes have the interface of :class:`~pypioncouch.testing.couchserver.CouchServer`
(``url``, ``anonymous_url``, ``port``, ``start()``, ``stop()``, ``cleanup()``) plus
``read_url``: the URL to read through, a node other than the written one on a cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pypioncouch.testing.couchserver import REPO, free_port

ADMIN = ("admin", "s3cret-Pa55")


def couchdb_dir() -> Path:
    """Where the Apache CouchDB release and its start scripts are."""
    return Path(os.environ.get("PYPIONCOUCH_COUCHDB_DIR") or REPO.parent / "shared" / "couchdb")


def apache_available() -> str | None:
    """None when Apache CouchDB can be started here, else why not (one line)."""
    where = couchdb_dir()
    if not (where / "couchdb-node").exists() or not (where / "couchdb-cluster").exists():
        return (f"no Apache CouchDB release in {where} (check out ../shared beside the "
                "repository, or set PYPIONCOUCH_COUCHDB_DIR or PYPIONCOUCH_TEST_COUCH)")
    # Its start scripts need these; without them they fail only after their timeout.
    missing = [command for command in ("curl", "pgrep") if shutil.which(command) is None]
    if missing:
        return (f"Apache CouchDB's start scripts need {' and '.join(missing)}: "
                "sudo apt-get install curl procps")
    return None


def _run(command: list[str], timeout: float) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{Path(command[0]).name} {command[1]} failed: {' / '.join(tail)}")
    return result.stdout


class _Apache:
    kind = "apache"

    def __init__(self, workdir: str | Path | None = None, admin: tuple[str, str] = ADMIN):
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.mkdtemp(prefix=f"pypioncouch-{self.kind}-")
            workdir = self._tmp
        self.workdir = Path(workdir)
        self.admin = admin
        self.ports: list[int] = []

    @property
    def port(self) -> int:
        return self.ports[0]

    def _url(self, port: int, with_admin: bool = True) -> str:
        credentials = f"{self.admin[0]}:{self.admin[1]}@" if with_admin else ""
        return f"http://{credentials}127.0.0.1:{port}/"

    @property
    def url(self) -> str:
        """Where to write (the first node), with the admin's credentials."""
        return self._url(self.ports[0])

    @property
    def read_url(self) -> str:
        """Where to read: the last node (the first one on a single node)."""
        return self._url(self.ports[-1])

    @property
    def anonymous_url(self) -> str:
        return self._url(self.ports[0], with_admin=False)

    def cleanup(self) -> None:
        self.stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


class ApacheCouchServer(_Apache):
    """One Apache CouchDB node (``couchdb-node``); ``stop()`` keeps the data, so
    ``start()`` brings the same databases back."""

    def __init__(self, workdir=None, port: int | None = None, admin=ADMIN):
        super().__init__(workdir, admin)
        self.ports = [port or free_port()]

    def start(self) -> "ApacheCouchServer":
        _run([str(couchdb_dir() / "couchdb-node"), "start", str(self.workdir),
              str(self.port), *self.admin], timeout=120)
        return self

    def stop(self) -> None:
        if (self.workdir / "pid").exists():
            _run([str(couchdb_dir() / "couchdb-node"), "stop", str(self.workdir)], timeout=60)


class ApacheCluster(_Apache):
    """Three Apache CouchDB nodes joined into one cluster (``couchdb-cluster``: n=3,
    q=2). ``url`` is node 1, ``read_url`` node 3. ``start()`` builds a fresh cluster."""

    kind = "cluster"

    def __init__(self, workdir=None, admin=ADMIN):
        super().__init__(workdir, admin)
        self.base = _free_block(8)
        self.ports = [self.base + n for n in (1, 2, 3)]

    def start(self) -> "ApacheCluster":
        where = couchdb_dir()
        for attempt in range(2):
            try:
                _run([str(where / "couchdb-cluster"), "start",
                      str(where / "apache-couchdb-3.5.0.tar.gz"), str(self.workdir / "cluster"),
                      str(self.base), *self.admin], timeout=300)
                return self
            except RuntimeError as error:
                # (seen once in many starts: the nodes never joined within the script's
                # wait, on a machine whose two cores were busy; the script stops them)
                if attempt:
                    raise
                print(f"{error}; starting it once more on other ports", file=sys.stderr)
                shutil.rmtree(self.workdir / "cluster", ignore_errors=True)
                self.base = _free_block(8)
                self.ports = [self.base + n for n in (1, 2, 3)]
        return self

    def stop(self) -> None:
        if (self.workdir / "cluster" / "cluster.env").exists():
            _run([str(couchdb_dir() / "couchdb-cluster"), "stop",
                  str(self.workdir / "cluster")], timeout=120)


def _free_block(size: int) -> int:
    """A base port such that base+1 .. base+size-1 are free right now."""
    for _ in range(50):
        base = free_port()
        if base + size >= 65535:
            continue
        try:
            for offset in range(1, size):
                _check_free(base + offset)
        except OSError:
            continue
        return base
    raise RuntimeError(f"no block of {size} free ports on 127.0.0.1")


def _check_free(port: int) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))

"""``make run`` and ``make demo``: the embedded CouchDB (unless ``COUCH`` names one), the
PyPI simulator for the demo, and the daemon in the foreground. Ctrl-C stops all.

    python -m pypioncouch.testing.devrun run   # PyPI itself (needs the internet)
    python -m pypioncouch.testing.devrun demo  # the simulator, offline
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from pypioncouch.testing.couchserver import CouchServer, PortTaken
from pypioncouch.testing.pypi import SimulatorProcess
from pypioncouch.urls import redact


DEMO_DB = "pypi-demo"  # the demo's database in a CouchDB of your own (COUCH)


def _whole_number(variable: str, default: int, most: int | None = None) -> int:
    """The environment's ``variable`` (make's: ``make demo PROJECTS=500``) as a whole
    number from 1 (to ``most``), else ``default``; a wrong one stops in one line."""
    value = os.environ.get(variable)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1 or most is not None and number > most:
        bound = f" to {most}" if most is not None else ""
        raise SystemExit(f"{variable}={value!r} is not a whole number from 1{bound}")
    return number


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("run", "demo"))
    parser.add_argument("--var", default=os.environ.get("VAR", "var"),
                        help="folder for the embedded CouchDB's data")
    parser.add_argument("--listen", default=os.environ.get("LISTEN", "tcp:8080:interface=127.0.0.1"))
    parser.add_argument("--couch-port", type=int,
                        default=_whole_number("COUCH_PORT", 5984, most=65535))
    parser.add_argument("--projects", type=int, default=_whole_number("PROJECTS", 2000))
    args, extra = parser.parse_known_args(argv)
    # Stopped by a signal (make killed, terminal closed): clean up as on Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.default_int_handler)

    couch_url = os.environ.get("COUCH")
    couch = simulator = None
    try:
        if not couch_url:
            data = Path(args.var) / ("couchdb-demo" if args.mode == "demo" else "couchdb")
            try:
                couch = CouchServer(data, port=args.couch_port,
                                    log_file=Path(args.var) / "pouchdb-server.log").start()
            except PortTaken as error:
                print(f"{error}; set COUCH_PORT to another port, or COUCH to that "
                      "server's URL to use it", file=sys.stderr)
                return 1
            couch_url = couch.url
        # The CouchDB URL (a password in it) goes in the environment: a command line
        # is visible to `ps`.
        daemon = [str(Path(sys.executable).parent / "twistd"), "--nodaemon", "--pidfile=",
                  "pypioncouch", "--listen", args.listen]
        environment = {**os.environ, "PYPIONCOUCH_COUCH": couch_url}
        if args.mode == "demo":
            simulator = SimulatorProcess("--projects", str(args.projects), "--seed", "1",
                                         "--churn", "3").start()
            daemon += ["--pypi", simulator.url + "/", "--interval", "5"]
            if couch is None and not any(a.split("=")[0] == "--db" for a in extra):
                # (your CouchDB's own "pypi" is left alone: simulated projects, a
                # simulator's serials, would be taken for PyPI's)
                daemon += ["--db", DEMO_DB]
        daemon += extra
        port = args.listen.split(":")[1] if args.listen.startswith("tcp:") else "?"
        print(f"CouchDB:   {redact(couch_url)}{'' if couch is None else ' (embedded pouchdb-server, data in ' + str(couch.datadir) + ')'}")
        if DEMO_DB in daemon:
            print(f"Database:  {DEMO_DB} (a demo's own)")
        if simulator:
            print(f"PyPI:      {simulator.url}/ (simulator: {args.projects} projects, "
                  "a change every 3 s)")
        print(f"Status:    http://127.0.0.1:{port}/status")
        print(f"Browse:    http://127.0.0.1:{port}/browse/")
        print(f"Simple:    http://127.0.0.1:{port}/simple/  "
              f"(pip install --index-url http://127.0.0.1:{port}/simple/ NAME)")
        print("Ctrl-C stops everything.", flush=True)
        process = subprocess.Popen(daemon, env=environment)
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGTERM)
            return process.wait()
    finally:
        if simulator is not None:
            simulator.stop()
        if couch is not None:
            couch.stop()


if __name__ == "__main__":
    sys.exit(main())

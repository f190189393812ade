"""Web front benchmark (issue 6): req/s and p99 of /simple/<p>/ and /pypi/<p>/json
with 32 connections, warm (one project, cached) and cold (every project in turn, from
a front without a cache: every read a miss), against a direct
CouchDB GET of the same documents in the same run, and against pypiserver (with
waitress) serving a directory holding the same projects' files. Uses wrk (Debian's
package)."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from bench.common import (
    BIN, SimulatorProcess, auth_header, couch_server, http_json, mirror_front)
from pypioncouch.testing.couchserver import free_port

# Each wrk thread starts at its own place in the list: two threads walking it in step
# would ask for every path twice at once, and the front answers such twins with one
# read (a cold figure would count half its misses).
LUA = """
paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
threads = 0
setup = function(thread)
  thread:set("offset", threads)
  threads = threads + 1
end
init = function(args)
  counter = math.floor(offset * #paths / %d)
end
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1], {["Accept"] = "%s"%s})
end
"""


def wrk(base: str, paths: list[str], seconds: float, accept: str = "*/*",
        connections: int = 32, authorization: str = "") -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("the web benchmark needs wrk: apt-get install wrk")
    with tempfile.TemporaryDirectory() as folder:
        listing = Path(folder, "paths")
        listing.write_text("\n".join(paths) + "\n")
        script = Path(folder, "paths.lua")
        extra = f', ["Authorization"] = "{authorization}"' if authorization else ""
        threads = min(2, connections)
        script.write_text(LUA % (listing, threads, accept, extra))
        out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s",
                              "--latency",
                              "-s", str(script), base], capture_output=True, text=True,
                             check=True).stdout
    answered = int(re.search(r"(\d+) requests in", out).group(1))

    def percentile(p):
        if not answered:
            return None  # nothing answered: no latency to report
        found = re.search(rf"{p}%\s+([\d.]+)(us|ms|s)", out)
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
        return round(float(found.group(1)) * scale, 2)

    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    timeouts = re.search(r"timeout (\d+)", out)  # no answer within wrk's 2 s
    return {"requests_per_s": rate, "median_ms": percentile(50), "p99_ms": percentile(99),
            "non_2xx": int(errors.group(1)) if errors else 0,
            "timeouts": int(timeouts.group(1)) if timeouts else 0}


def run(projects: int = 2000, seconds: float = 10.0,
        kind: str = "pouchdb") -> dict:
    with couch_server(kind) as couch, \
            SimulatorProcess("--projects", str(projects), "--seed", "3") as sim:
        couch_auth = auth_header(couch.url).get("Authorization", "")
        subprocess.run([str(BIN / "pypioncouch"), "--fullimport", couch.url, "--pypi", sim.url,
                        "--quiet"], check=True, capture_output=True)
        with mirror_front(couch.url) as front:
            keys = [row["id"] for row in http_json(
                f"{couch.url}pypi/_design/pypioncouch/_view/catalog?reduce=false&"
                + urllib.parse.urlencode({"startkey": '["name"]', "endkey": '["name",{}]'})
            )["rows"]]
            keys = [k for k in keys if http_json(f"{couch.url}pypi/{k}").get("versions")]
            random.Random(1).shuffle(keys)
            hot = keys[1]
            json_accept = "application/vnd.pypi.simple.v1+json"
            result = {"projects": projects, "seconds_per_run": seconds, "connections": 32}
            result["couchdb_get_one_doc"] = wrk(couch.anonymous_url, [f"/pypi/{hot}"], seconds,
                                                 authorization=couch_auth)
            result["couchdb_get_many_docs"] = wrk(couch.anonymous_url,
                                                  [f"/pypi/{k}" for k in keys], seconds,
                                                  authorization=couch_auth)
            for name, template, accept in (("simple_json", "/simple/{}/", json_accept),
                                           ("simple_html", "/simple/{}/", "text/html"),
                                           ("json_api", "/pypi/{}/json", "*/*")):
                result[f"{name}_warm"] = wrk(front, [template.format(hot)], seconds, accept)
                # No cache: every read misses (with one, the run's later rounds through
                # the projects would be warm reads).
                with mirror_front(couch.url, "--cache-mb", "0") as fresh:
                    result[f"{name}_cold"] = wrk(fresh, [template.format(k) for k in keys],
                                                 seconds, accept)
            result.update(pypiserver_figures(couch.url, keys, hot, seconds))
            base = result["couchdb_get_one_doc"]["requests_per_s"]
            for key, value in list(result.items()):
                if isinstance(value, dict) and key.endswith(("_warm", "_cold")) \
                        and "requests_per_s" in value:
                    value["ratio_to_couchdb_get"] = round(value["requests_per_s"] / base, 2)
            return result


def pypiserver_figures(couch_url: str, keys: list[str], hot: str, seconds: float) -> dict:
    """pypiserver's /simple/<p>/ (HTML: what it serves) over the same projects' files,
    fetched from the simulator into a directory."""
    if not all(importlib.util.find_spec(name) for name in ("pypiserver", "waitress",
                                                            "watchdog")):
        return {"pypiserver": "not installed: pip install 'pypiserver[cache]>=2' waitress"}
    with tempfile.TemporaryDirectory() as folder:
        for key in keys:
            rows = http_json(f"{couch_url}pypi/_all_docs?include_docs=true&" + urllib.parse.urlencode(
                {"startkey": json.dumps(key + ":"), "endkey": json.dumps(key + ":\ufff0")}))["rows"]
            for row in rows:
                for file in row["doc"].get("files") or []:
                    with urllib.request.urlopen(file["url"], timeout=60) as answer:
                        Path(folder, file["filename"]).write_bytes(answer.read())
        port = free_port()
        server = subprocess.Popen([str(BIN / "pypi-server"), "run", "-p", str(port),
                                   "-i", "127.0.0.1", "--server", "auto",  # waitress
                                   "--backend", "cached-dir", folder],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"{base}/simple/", timeout=5).read()
                    break
                except OSError:
                    if server.poll() is not None:
                        return {"pypiserver": f"pypi-server exited with {server.returncode}"}
                    time.sleep(0.1)
            return {"pypiserver_files": len(list(Path(folder).iterdir())),
                    "pypiserver_simple_html_warm": wrk(base, [f"/simple/{hot}/"], seconds,
                                                       "text/html"),
                    "pypiserver_simple_html_cold": wrk(base, [f"/simple/{k}/" for k in keys],
                                                       seconds, "text/html")}
        finally:
            server.terminate()
            server.wait(30)

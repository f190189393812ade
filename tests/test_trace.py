"""Where a pass spends its time: the stage clocks and the sampled ways of projects
(``pypioncouch --fullimport URL --trace FILE``)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet import threads

from pypioncouch.testing.pypi import SimulatorProcess
from pypioncouch.trace import OFF, Trace

from .helpers import ManualClock

BIN = Path(sys.executable).parent


def test_stage_clocks_and_one_projects_way():
    clock = ManualClock()
    trace = Trace(clock=clock)
    trace.begin("twisted")
    trace.event("twisted", "read")
    with trace.timed("fetch", "starved"):
        clock.now += 0.5
    trace.event("twisted", "fetching")
    with trace.timed("fetch"):
        clock.now += 2.0
    trace.event("twisted", "fetched")
    with trace.timed("write"), trace.part("write: releases"):
        clock.now += 0.25
    trace.event("twisted", "written")
    trace.mark("checkpoint saved")
    report = trace.report()
    assert report["stages"]["fetch"] == {"busy": 2.0, "starved": 0.5, "blocked": 0.0}
    assert report["stages"]["write"]["busy"] == 0.25
    assert report["busy_parts"] == {"write: releases": 0.25}
    assert report["steps"]["read -> fetching"]["median"] == 0.5
    assert report["steps"]["fetching -> fetched"]["max"] == 2.0
    assert report["steps"]["fetched -> written"]["count"] == 1
    assert report["marks"] == {"checkpoint saved": 2.75}
    assert report["slowest_ways"]["twisted"]["written"] == 2.75
    assert report["first_last"]["written"] == [2.75, 2.75]
    assert "fetch 2.0/0.5/0.0" in trace.summary_line()


def test_a_long_pass_keeps_a_bounded_sample():
    trace = Trace(sample=50, clock=ManualClock())
    for number in range(10_000):
        trace.begin(f"p{number}")
        trace.event(f"p{number}", "read")
    report = trace.report()
    assert report["projects_seen"] == 10_000 and report["ways_sampled"] == 50
    # A reservoir: the late projects are as likely to be kept as the early ones.
    assert sum(int(key[1:]) >= 5_000 for key in trace.ways) > 10


def test_no_trace_records_nothing():
    OFF.begin("twisted")
    OFF.event("twisted", "read")
    with OFF.timed("fetch"), OFF.part("write: releases"):
        pass
    assert OFF.ways == {} and OFF.report()["stages"]["fetch"]["busy"] == 0


@pytest_twisted.ensureDeferred
async def test_a_traced_import_says_where_each_project_waited(couch_server, db_name, tmp_path):
    out = tmp_path / "trace.json"
    with SimulatorProcess("--projects", "40", "--seed", "5", "--latency-ms", "20") as sim:
        result = await threads.deferToThread(subprocess.run, [
            str(BIN / "pypioncouch"), "--fullimport", couch_server.url, "--pypi", sim.url,
            "--db", db_name, "--concurrency", "4", "--quiet", "--trace", str(out)],
            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = int(result.stdout.split("full import: ")[1].split(" projects")[0])
    report = json.loads(out.read_text())
    assert report["ways_written"] == written > 30
    # Every project waited at least the simulated latency for PyPI.
    assert report["steps"]["fetching -> fetched"]["median"] >= 0.02
    assert report["stages"]["fetch"]["busy"] >= written * 0.02
    assert report["marks"]["listed"] < report["first_last"]["fetching"][0]
    assert report["first_last"]["written"][1] <= report["marks"]["checkpoint saved"]
    assert "trace (busy/starved/blocked seconds" in result.stderr
    assert str(out) in result.stderr


def test_trace_goes_with_an_import():
    result = subprocess.run([str(BIN / "pypioncouch"), "--opml", "http://127.0.0.1:9/",
                             "--trace", "x.json"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "--trace goes with --fullimport or --update" in result.stderr


def test_a_project_asked_about_twice_is_one_way():
    trace = Trace(sample=2, clock=ManualClock())
    for key in ("a", "b", "a", "c", "d", "a", "e"):
        trace.begin(key)
    assert len(trace.ways) == 2 and trace.report()["projects_seen"] == 7


def _interrupted_then_resumed(couch_url, db_name, trace_file):
    import signal
    import time

    # (50 ms a request, 4 at a time: at least 5 s of import, so that the interrupt,
    # sent once 50 documents are written, lands in it on a busy machine too)
    with SimulatorProcess("--projects", "400", "--seed", "5", "--latency-ms", "50") as sim:
        command = [str(BIN / "pypioncouch"), "--fullimport", couch_url, "--pypi", sim.url,
                   "--db", db_name, "--concurrency", "4", "--quiet"]
        process = subprocess.Popen([*command, "--trace", str(trace_file)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not trace_file.exists():
            # stopped once some projects are written (the trace is not written before)
            time.sleep(0.1)
            if _written(couch_url, db_name) > 50:
                break
        assert process.poll() is None, "the import ended before it was interrupted"
        process.send_signal(signal.SIGINT)
        out, errors = process.communicate(timeout=60)
        again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    return process.returncode, out, errors, again


def _written(couch_url, db_name):
    import urllib.request

    from pypioncouch.urls import split_credentials
    from base64 import b64encode

    url, auth = split_credentials(f"{couch_url}{db_name}")
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization",
                           "Basic " + b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)["doc_count"]
    except OSError:
        return 0


@pytest_twisted.ensureDeferred
async def test_an_interrupted_import_says_so_keeps_its_trace_and_resumes(
        couch_server, db_name, tmp_path):
    trace_file = tmp_path / "trace.json"
    code, out, errors, again = await threads.deferToThread(
        _interrupted_then_resumed, couch_server.url, db_name, trace_file)
    assert code == 130 and out == ""  # not a success, and no summary of a pass not done
    assert "pypioncouch: interrupted" in errors and "Traceback" not in errors
    report = json.loads(trace_file.read_text())
    assert "interrupted" in report["marks"] and report["ways_written"] > 0
    assert again.returncode == 0, again.stderr
    up_to_date = int(again.stdout.split(" removed, ")[1].split(" up to date")[0])
    assert up_to_date >= report["ways_written"]  # what was written is not fetched again

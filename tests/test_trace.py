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

BIN = Path(sys.executable).parent


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_stage_clocks_and_one_projects_way():
    clock = Clock()
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
    trace = Trace(sample=50, clock=Clock())
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

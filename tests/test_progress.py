"""Progress of long work: a bar on a terminal, log lines otherwise."""

import io

from pypioncouch.progress import FollowingProgress, Progress

from .helpers import ManualClock


def test_a_terminal_gets_one_bar_redrawn_with_rate_and_eta():
    out, clock = io.StringIO(), ManualClock()
    progress = Progress(out, clock, tty=True)
    clock.now += 10
    progress.update(500, 2000)
    clock.now += 0.1
    progress.update(600, 2000)  # (within 0.2 s of the last: not drawn)
    assert out.getvalue() == (
        "\r[#######.......................] 500/2,000  25%  50 projects/s  ETA 0:00:30")
    progress.close()  # (the bar ends at the last figures given)
    assert out.getvalue().split("\r")[2] == (
        "[#########.....................] 600/2,000  30%  59 projects/s  ETA 0:00:23\n")


def test_the_step_after_a_pass_has_its_own_rate_and_its_last_figures_drawn():
    """Read after a ten-minute pass, the changes feed's bar starts on a line of its
    own once it has lasted a moment, at its own pace, and ends at all done even when
    drawn a moment before."""
    out, clock = io.StringIO(), ManualClock()
    before = Progress(out, clock, tty=True)
    clock.now += 600
    before.update(1000, 1000)
    after = FollowingProgress(before, "changes")
    clock.now += 5
    assert out.getvalue().count("\r") == 1  # (nothing drawn until the step begins)
    after.update(1000, 4000)
    clock.now += 0.1
    after.update(1500, 4000)  # (not drawn: the step has not lasted an interval)
    clock.now += 0.9
    after.update(2000, 4000)
    clock.now += 0.05
    after.update(4000, 4000)
    after.close()
    before.close()
    lines = out.getvalue().split("\n")
    assert lines[0].endswith("1,000/1,000 100%  2 projects/s  ETA 0:00:00")
    assert lines[1] == ("\r[###############...............] 2,000/4,000  50%  "
                        "2,000 changes/s  ETA 0:00:01"
                        "\r[##############################] 4,000/4,000 100%  "
                        "3,810 changes/s  ETA 0:00:00")
    assert lines[2:] == [""]


def test_a_step_after_a_pass_done_at_once_draws_no_bar():
    """(a second bar at "74,835,207 changes/s", or "0/0 100%  0 changes/s", ended
    every --update with little to read)"""
    out, clock = io.StringIO(), ManualClock()
    before = Progress(out, clock, tty=True)
    clock.now += 3
    before.update(40, 40)
    for done, total in ((0, 0), (193, 193)):
        after = FollowingProgress(before, "changes")
        after.update(done, total)
        clock.now += 0.001
        after.close()
    before.close()
    assert out.getvalue().split("\n") == [
        "\r[##############################] 40/40 100%  13 projects/s  ETA 0:00:00", ""]


def test_without_a_terminal_it_writes_log_lines():
    out, clock = io.StringIO(), ManualClock()
    progress = Progress(out, clock, tty=False)
    clock.now += 20
    progress.update(100, 400)
    clock.now += 5
    progress.update(200, 400)  # (within 10 s: not written)
    assert out.getvalue() == "100/400  25%  5 projects/s  ETA 0:01:00\n"


def test_without_a_terminal_short_work_writes_nothing():
    """A cron job's update that takes seconds: no line, not even its forced last."""
    out, clock = io.StringIO(), ManualClock()
    progress = Progress(out, clock, tty=False)
    progress.update(1, 400)
    clock.now += 3
    progress.update(400, 400, force=True)
    assert out.getvalue() == ""
    clock.now += 20  # long work: a line, then its last figures
    progress.update(500, 1000)
    clock.now += 1
    progress.update(1000, 1000, force=True)
    assert out.getvalue() == ("500/1,000  50%  22 projects/s  ETA 0:00:23\n"
                              "1,000/1,000 100%  42 projects/s  ETA 0:00:00\n")


def _command(couch_server, db_name, sim, action, stderr):
    """``pypioncouch <action>``: its exit status, stdout, and what ``stderr`` got."""
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.Popen(
        [str(Path(sys.executable).parent / "pypioncouch"), action, couch_server.url,
         "--pypi", sim.url, "--db", db_name], stdout=subprocess.PIPE, stderr=stderr)


def test_an_update_shows_its_bar_on_a_terminal_and_nothing_in_a_short_cron_job(
        couch_server, db_name):
    """A bar with rate and ETA, as the full import's; without a terminal, a pass of
    seconds writes its summary line only (cron mails whatever a job writes)."""
    import os
    import pty
    import subprocess

    from pypioncouch.testing.dataset import Dataset
    from pypioncouch.testing.pypi import SimulatorProcess

    with SimulatorProcess("--projects", "12", "--seed", "8") as sim:
        done = _command(couch_server, db_name, sim, "--fullimport", subprocess.PIPE)
        assert done.wait(120) == 0, done.stderr.read()
        for index in range(6):
            sim.control("publish", name=Dataset(12, 8).name(index), version="90.0")
        leader, follower = pty.openpty()
        running = _command(couch_server, db_name, sim, "--update", follower)
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # (the terminal's other end closed: the command ended)
                break
            if not chunk:
                break
            shown += chunk
        os.close(leader)
        assert running.wait(120) == 0, shown
        bar = [drawn for drawn in shown.decode().split("\r") if "projects/s" in drawn][-1]
        assert bar.startswith("[##############################] 6/6 100%") and \
            "projects/s  ETA 0:00:00" in bar, shown
        for index in range(6, 8):
            sim.control("publish", name=Dataset(12, 8).name(index), version="91.0")
        quiet = _command(couch_server, db_name, sim, "--update", subprocess.PIPE)
        assert quiet.wait(120) == 0
        assert quiet.stderr.read() == b""
        assert quiet.stdout.read().decode().startswith("update: 2 projects")

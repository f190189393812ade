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
    progress.close()
    assert out.getvalue() == (
        "\r[#######.......................] 500/2,000  25%  50 projects/s  ETA 0:00:30\n")


def test_the_step_after_a_pass_has_its_own_rate_and_its_last_figures_drawn():
    """Read after a ten-minute pass, the changes feed's bar starts on a line of its
    own, at its own pace, and ends at all done even when drawn a moment before."""
    out, clock = io.StringIO(), ManualClock()
    before = Progress(out, clock, tty=True)
    clock.now += 600
    before.update(1000, 1000)
    after = FollowingProgress(before, "changes")
    clock.now += 5
    assert out.getvalue().count("\r") == 1  # (nothing drawn until the step begins)
    after.update(2000, 4000)
    clock.now += 0.05
    after.update(4000, 4000)
    after.close()
    before.close()
    lines = out.getvalue().split("\n")
    assert lines[0].endswith("1,000/1,000 100%  2 projects/s  ETA 0:00:00")
    assert lines[1] == ("\r[###############...............] 2,000/4,000  50%  "
                        "0 changes/s  ETA 0:00:00"
                        "\r[##############################] 4,000/4,000 100%  "
                        "80,000 changes/s  ETA 0:00:00")
    assert lines[2:] == [""]


def test_without_a_terminal_it_writes_log_lines():
    out, clock = io.StringIO(), ManualClock()
    progress = Progress(out, clock, tty=False)
    clock.now += 20
    progress.update(100, 400)
    clock.now += 5
    progress.update(200, 400)  # (within 10 s: not written)
    assert out.getvalue() == "100/400  25%  5 projects/s  ETA 0:01:00\n"

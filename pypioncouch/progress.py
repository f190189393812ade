"""Progress of long work: a bar with rate and ETA on a terminal, log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def progress_line(done: int, total: int, elapsed: float, width: int = 30,
                  unit: str = "projects") -> str:
    """``[#####.....] 1,234/20,000  6%  512 projects/s  ETA 0:00:32``."""
    fraction = done / total if total else 1.0
    filled = int(width * min(1.0, fraction))
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else 0.0
    return (f"[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} "
            f"{fraction:4.0%}  {rate:,.0f} {unit}/s  ETA {format_duration(eta)}")


class Progress:
    """Call with ``(done, total)`` as often as you like; it redraws at most every
    ``interval`` (0.2 s on a terminal, 10 s as log lines). Log lines are for long
    work: the first comes ``interval`` after the start (a cron job's short pass writes
    none), and ``force`` (all done) writes one only after others."""

    def __init__(self, stream: TextIO = sys.stderr, clock=time.monotonic,
                 tty: bool | None = None, unit: str = "projects", quiet_start: bool = False):
        self.stream = stream
        self.clock = clock
        self.tty = stream.isatty() if tty is None else tty
        self.interval = 0.2 if self.tty else 10.0
        self.unit = unit
        self.started = clock()
        # (quiet_start: a terminal's bar too waits an interval, and work done by then
        # draws none: a rate over a few microseconds says nothing)
        self.quiet_start = quiet_start
        self._last = -1e9 if self.tty and not quiet_start else self.started
        self._drawn = False
        self._wrote = False
        self._latest: tuple[int, int] | None = None  # (figures given, not yet shown)

    def update(self, done: int, total: int, force: bool = False) -> None:
        now = self.clock()
        self._latest = (done, total)
        forced = force and (self._wrote or (self.tty and not self.quiet_start))
        if now - self._last < self.interval and not forced:
            return
        self._last, self._wrote, self._latest = now, True, None
        line = progress_line(done, total, now - self.started, unit=self.unit)
        if self.tty:
            self.stream.write("\r" + line)
            self._drawn = True
        else:
            self.stream.write(line.split("] ", 1)[1] + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar (or the log lines) at the last figures given."""
        if self._latest is not None and self._wrote:
            self.update(*self._latest, force=True)
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


class FollowingProgress:
    """The progress of a step that follows ``before``'s (the changes feed read after
    a pass): it begins at its first figures, closing ``before``'s bar, so that its
    rate and ETA are its own. It is drawn once it has lasted an interval (a step
    done at once draws nothing), and then ends at its last figures (all done)."""

    def __init__(self, before: Progress, unit: str):
        self.before = before
        self.unit = unit
        self.progress: Progress | None = None

    def update(self, done: int, total: int) -> None:
        if self.progress is None:
            self.before.close()
            self.progress = Progress(self.before.stream, self.before.clock,
                                     tty=self.before.tty, unit=self.unit, quiet_start=True)
        self.progress.update(done, total, force=done >= total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()

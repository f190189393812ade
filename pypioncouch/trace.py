"""Where a pass spends its time (``pypioncouch --fullimport URL --trace FILE``).

Two views of the same pipeline (:meth:`pypioncouch.sync.XmlRpcImporter.sync`):

- per stage (read, fetch, write), the seconds its workers spent *busy* (waiting on
  CouchDB or PyPI, or computing), *starved* (nothing to do: the stage before had
  nothing ready) and *blocked* (done, but no room downstream). A stage that is mostly
  starved is not the bottleneck; the one the others starve for is;
- one project's way, with timestamps (seconds since the pass began), for a sample of
  projects (reservoir sampling, so a 700,000-project pass keeps as few as a small
  one): ``read`` (its stored copy read), ``fetching``, ``fetched`` (PyPI answered),
  ``queued`` (handed to a writer), ``writing`` (taken into a batch), ``releases``
  (its releases acknowledged), ``written`` (its project document acknowledged); the
  report gives the median, p90 and max of each step, and the slowest ways whole.

Tracing costs a clock read per event; without ``--trace`` nothing is recorded
(:data:`OFF`).
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from typing import Callable, Iterator

STAGES = ("read", "fetch", "write")
STATES = ("busy", "starved", "blocked")
EVENTS = ("read", "fetching", "fetched", "queued", "writing", "releases", "written")


class Trace:
    """Stage clocks and sampled ways of projects (see the module docstring)."""

    enabled = True

    def __init__(self, *, sample: int = 2000, clock: Callable[[], float] = time.monotonic,
                 seed: int = 0):
        self.clock = clock
        self.started = clock()
        self.sample = sample
        self.seconds = {stage: dict.fromkeys(STATES, 0.0) for stage in STAGES}
        self.busy_parts: dict[str, float] = {}  # e.g. write: states, releases, projects
        self.marks: dict[str, float] = {}  # pass-wide moments: listed, checkpoint, ...
        self.ways: dict[str, dict[str, float]] = {}
        self._seen = 0
        self._slots: list[str] = []  # the sampled keys, for replacing one at random
        self._rng = random.Random(seed)

    def now(self) -> float:
        return self.clock() - self.started

    @contextmanager
    def timed(self, stage: str, state: str = "busy") -> Iterator[None]:
        began = self.clock()
        try:
            yield
        finally:
            self.seconds[stage][state] += self.clock() - began

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Time a part of a stage's busy time (the write's CouchDB requests, say)."""
        began = self.clock()
        try:
            yield
        finally:
            self.busy_parts[name] = self.busy_parts.get(name, 0.0) + self.clock() - began

    def mark(self, moment: str) -> None:
        """A pass-wide moment (the listing arrived, the checkpoint was saved)."""
        self.marks.setdefault(moment, round(self.now(), 4))

    def begin(self, key: str) -> None:
        """``key`` enters the pipeline: keep its way if it falls in the sample."""
        self._seen += 1
        if key in self.ways:  # asked again in the same pass (a sweep): a new way
            self.ways[key] = {}
            return
        if len(self._slots) < self.sample:
            self._slots.append(key)
            self.ways[key] = {}
            return
        slot = self._rng.randrange(self._seen)
        if slot < self.sample:  # replaces a random one: every project equally likely
            del self.ways[self._slots[slot]]
            self._slots[slot] = key
            self.ways[key] = {}

    def event(self, key: str, event: str) -> None:
        way = self.ways.get(key)
        if way is not None:
            way[event] = self.now()

    def report(self) -> dict:
        total = self.now()
        steps: dict[str, list[float]] = {}
        complete = [way for way in self.ways.values() if "written" in way]
        for way in complete:
            events = [e for e in EVENTS if e in way]
            for before, after in zip(events, events[1:]):
                steps.setdefault(f"{before} -> {after}", []).append(way[after] - way[before])
        slowest = sorted(self.ways.items(),
                         key=lambda item: _span(item[1]), reverse=True)[:3]
        return {
            "seconds": round(total, 3),
            "marks": self.marks,
            "stages": {stage: {state: round(value, 3) for state, value in states.items()}
                       for stage, states in self.seconds.items()},
            "busy_parts": {part: round(value, 3) for part, value in self.busy_parts.items()},
            "projects_seen": self._seen,
            "ways_sampled": len(self.ways),
            "ways_written": len(complete),
            "steps": {step: _spread(values) for step, values in steps.items()},
            # When the sampled projects first and last reached each event: the head
            # and the tail of the pass (how long before the first fetch, after the last).
            "first_last": {e: [round(min(times), 4), round(max(times), 4)]
                           for e in EVENTS
                           if (times := [w[e] for w in self.ways.values() if e in w])},
            "slowest_ways": {key: {e: round(t, 4) for e, t in way.items()}
                             for key, way in slowest},
        }

    def summary_line(self) -> str:
        """One line for the log: each stage's busy / starved / blocked seconds."""
        parts = [f"{stage} " + "/".join(f"{self.seconds[stage][s]:.1f}" for s in STATES)
                 for stage in STAGES]
        return ("trace (busy/starved/blocked seconds, summed over a stage's workers): "
                + ", ".join(parts))


def _span(way: dict[str, float]) -> float:
    return max(way.values()) - min(way.values()) if way else 0.0


def _spread(values: list[float]) -> dict:
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 4)

    return {"median": at(0.5), "p90": at(0.9), "max": round(ordered[-1], 4),
            "count": len(ordered)}


class _Off(Trace):
    """No tracing: every call does nothing."""

    enabled = False

    def __init__(self):
        super().__init__(sample=0)

    @contextmanager
    def timed(self, stage, state="busy"):
        yield

    part = timed

    def mark(self, moment):
        pass

    def begin(self, key):
        pass

    def event(self, key, event):
        pass


OFF = _Off()

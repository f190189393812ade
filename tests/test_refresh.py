"""Costly figures: computed once for concurrent callers, then refreshed behind."""

import pytest
import pytest_twisted
from twisted.internet import defer, task

from pypioncouch.web.refresh import Refreshed


class Counter:
    """A computation that takes ``seconds`` of reactor time and counts its runs."""

    def __init__(self, clock, seconds=2.0):
        self.clock, self.seconds, self.runs, self.fail = clock, seconds, 0, False

    async def __call__(self):
        self.runs += 1
        await task.deferLater(self.clock, self.seconds, lambda: None)
        if self.fail:
            raise RuntimeError("the database is not answering")
        return self.runs


@pytest_twisted.ensureDeferred
async def test_concurrent_first_callers_share_one_computation():
    clock = task.Clock()
    compute = Counter(clock)
    figure = Refreshed(compute, clock, min_age=60)
    first = defer.ensureDeferred(figure.get())
    second = defer.ensureDeferred(figure.get())
    clock.advance(2)
    assert (await first, await second, compute.runs) == (1, 1, 1)


@pytest_twisted.ensureDeferred
async def test_a_stale_value_is_served_while_it_is_refreshed():
    clock = task.Clock()
    compute = Counter(clock, seconds=10.0)
    figure = Refreshed(compute, clock, min_age=60)
    first = defer.ensureDeferred(figure.get())
    clock.advance(10)
    assert await first == 1
    clock.advance(61)  # older than min_age, but not 10 x 10 s: still fresh
    assert await figure.get() == 1 and compute.runs == 1
    clock.advance(40)
    assert await figure.get() == 1  # stale: served at once, refreshed behind
    assert compute.runs == 2
    clock.advance(10)
    assert await figure.get() == 2


@pytest_twisted.ensureDeferred
async def test_a_failed_refresh_keeps_the_last_value_and_a_failed_first_raises():
    clock = task.Clock()
    compute = Counter(clock)
    figure = Refreshed(compute, clock, min_age=1)
    compute.fail = True
    first = defer.ensureDeferred(figure.get())
    clock.advance(2)
    with pytest.raises(RuntimeError):
        await first
    compute.fail = False
    again = defer.ensureDeferred(figure.get())
    clock.advance(2)
    assert await again == 2
    clock.advance(30)
    compute.fail = True
    assert await figure.get() == 2
    clock.advance(2)
    assert await figure.get() == 2  # the refresh failed: the last value stays


@pytest_twisted.ensureDeferred
async def test_a_computation_that_ends_at_once_still_answers_its_first_caller():
    """Its end came before the caller was listed as waiting: the caller got an
    AttributeError instead of the value or the error."""
    async def fails_at_once():
        raise RuntimeError("no database here")

    async def answers_at_once():
        return 42

    with pytest.raises(RuntimeError, match="no database here"):
        await Refreshed(fails_at_once, task.Clock()).get()
    assert await Refreshed(answers_at_once, task.Clock()).get() == 42



@pytest_twisted.ensureDeferred
async def test_a_first_caller_in_a_hurry_gets_the_default_and_the_next_the_value():
    """/status does not wait for a count that builds a view: it says none yet."""
    clock = task.Clock()
    compute = Counter(clock, seconds=10.0)
    figure = Refreshed(compute, clock, min_age=60)
    hurried = defer.ensureDeferred(figure.get_within(5.0, {}))
    patient = defer.ensureDeferred(figure.get())
    clock.advance(5.0)
    assert await hurried == {} and not patient.called
    clock.advance(5.0)
    assert await patient == 1 and compute.runs == 1
    assert await figure.get_within(5.0, {}) == 1  # known now: at once


@pytest_twisted.ensureDeferred
async def test_callers_after_the_first_wait_only_what_is_left_of_its_time():
    """A first count that takes long (a view catching up with an import): one /status
    waits for it ``seconds`` at most, the ones after it no longer than that first one."""
    clock = task.Clock()
    compute = Counter(clock, seconds=30.0)
    figure = Refreshed(compute, clock, min_age=60)
    first = defer.ensureDeferred(figure.get_within(5.0, {}))
    clock.advance(3.0)
    second = defer.ensureDeferred(figure.get_within(5.0, {}))
    clock.advance(2.0)
    assert first.called and second.called  # (no hang if not: the test fails)
    assert await first == {} and await second == {}
    later = defer.ensureDeferred(figure.get_within(5.0, {}))
    assert later.called and await later == {}  # (at once: the count is still running)
    clock.advance(25.0)
    assert await figure.get_within(5.0, {}) == 1 and compute.runs == 1

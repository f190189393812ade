"""Waiting after failures in a row."""

from pypioncouch.backoff import doubling, worth_saying


def test_the_pause_doubles_from_the_first_up_to_the_longest():
    assert [doubling(n, 5.0, 60.0) for n in range(1, 7)] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert doubling(0, 1.0, 300.0) == 1.0  # (no failure yet: the first pause)
    assert doubling(10_000, 1.0, 300.0) == 300.0  # (a failure that lasts for days)


def test_only_the_1st_2nd_4th_8th_failures_are_said():
    assert [n for n in range(0, 70) if worth_saying(n)] == [1, 2, 4, 8, 16, 32, 64]

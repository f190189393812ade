"""Waiting after failures in a row: a pause that doubles, and which failures are said.

A loop that retries (the sync's passes, the OPML watcher, the conflict resolver, a
``_changes`` follower) waits longer after each failure, so that a CouchDB or PyPI in
trouble is not hammered, and says only some of them, so that a failure that lasts
for days does not fill the log.
"""

from __future__ import annotations


def doubling(tries: int, first: float, most: float) -> float:
    """The pause after ``tries`` failures in a row (1, 2, ...): ``first``, then twice
    as long each time, ``most`` at the longest."""
    return min(most, first * 2.0 ** min(max(tries, 1) - 1, 60))


def worth_saying(tries: int) -> bool:
    """Whether the ``tries``-th failure in a row is said: the 1st, 2nd, 4th, 8th..."""
    return tries > 0 and tries & (tries - 1) == 0

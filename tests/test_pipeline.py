"""The bounded queue and run_together, without servers."""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from pypioncouch.pipeline import BoundedQueue, run_together


@pytest_twisted.ensureDeferred
async def test_the_queue_bounds_what_a_fast_producer_holds():
    queue, held = BoundedQueue(3), []

    async def produce():
        for n in range(20):
            await queue.put(n)
            held.append(len(queue))
        await queue.put(None)

    async def consume():
        got = []
        while (item := await queue.get()) is not None:
            got.append(item)
            await task.deferLater(reactor, 0.001, lambda: None)
        return got

    _, got = await run_together(produce(), consume())
    assert got == list(range(20)) and max(held) <= 3


@pytest_twisted.ensureDeferred
async def test_a_consumer_failing_inside_the_producers_put_does_not_hang():
    """Shaped like the sync: a reader doing I/O then feeding fetchers (nested), which
    feed writers. A fetcher's failure surfaces while the reader runs (the queue's
    hand-over resumes the fetcher inside ``put``); every part must still stop."""
    to_fetch, to_write = BoundedQueue(4), BoundedQueue(4)

    async def read():
        for chunk in range(5):
            await task.deferLater(reactor, 0, lambda: None)  # a CouchDB read
            for n in range(10):
                await to_fetch.put(n)

    async def fetch():
        while True:
            await to_fetch.get()
            raise KeyError("a fetcher's bug")

    async def fetch_all():
        await run_together(*(fetch() for _ in range(4)))

    async def write():
        while True:
            await to_write.get()

    def hung(result, timeout):
        raise AssertionError(f"still running after {timeout}s: the pipeline hung")

    work = defer.ensureDeferred(run_together(read(), fetch_all(), write(), write()))
    work.addTimeout(5, reactor, onTimeoutCancel=hung)
    with pytest.raises(KeyError):
        await work

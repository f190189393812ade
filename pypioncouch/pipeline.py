"""Small asynchronous building blocks for bounded pipelines on Twisted."""

from __future__ import annotations

from collections import deque
from typing import Any, Coroutine

from twisted.application.service import Service
from twisted.internet import defer


class BoundedQueue:
    """A FIFO whose ``put`` waits while it holds ``maxsize`` items (back-pressure), so
    a fast producer never holds more than ``maxsize`` items in memory."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: deque = deque()
        self._getters: deque[defer.Deferred] = deque()
        self._putters: deque[defer.Deferred] = deque()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: Any) -> None:
        while len(self._items) >= self.maxsize:
            waiter = defer.Deferred()
            self._putters.append(waiter)
            await waiter
        if self._getters:
            self._getters.popleft().callback(item)
        else:
            self._items.append(item)

    async def get(self) -> Any:
        if self._items:
            item = self._items.popleft()
            if self._putters:
                self._putters.popleft().callback(None)
            return item
        waiter = defer.Deferred()
        self._getters.append(waiter)
        return await waiter


async def run_together(*coroutines: Coroutine, reactor=None) -> list:
    """Run coroutines concurrently; if one fails, cancel the others and raise its error.

    The cancelling waits for the current call stack to unwind: a failure can surface
    while another of the coroutines is running (a queue hand-over resumes a consumer
    inside its producer's ``put``), and a running coroutine cannot be cancelled.
    """
    if reactor is None:
        from twisted.internet import reactor
    deferreds = [defer.ensureDeferred(c) for c in coroutines]
    failed: list = []

    def cancel_others(index):
        for other, d in enumerate(deferreds):
            if other != index and not d.called:
                d.cancel()

    def on_failure(failure, index):
        if not failed:
            failed.append(failure)
            reactor.callLater(0, cancel_others, index)
        return None

    for index, d in enumerate(deferreds):
        d.addErrback(on_failure, index)
    results = await defer.gatherResults(deferreds)
    if failed:
        failed[0].raiseException()
    return results


class CoroutineService(Service):
    """A service whose work is one coroutine, :meth:`run`: started with the service,
    cancelled when it stops (``stopService`` waits for it to end)."""

    _task: defer.Deferred | None = None

    async def run(self) -> None:
        raise NotImplementedError

    def startService(self) -> None:
        super().startService()
        self._task = defer.ensureDeferred(self.run())
        self._task.addErrback(lambda failure: failure.trap(defer.CancelledError))

    def stopService(self):
        super().stopService()
        if self._task is not None and not self._task.called:
            self._task.cancel()
        return self._task

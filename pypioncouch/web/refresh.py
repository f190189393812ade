"""Figures that are costly to compute and may be a little old: counts reduced over a
whole facet of the catalog view. Apache CouchDB keeps reductions in its index and
answers at once; pouchdb-server reduces at query time (seconds at 100,000 projects).
So a figure is computed once (callers arriving meanwhile share that computation) and
then recomputed in the background when it is older than ``min_age`` or ten times
what the last computation took, whichever is longer, while the last value is served.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.internet import defer
from twisted.logger import Logger

log = Logger()


class Refreshed:
    def __init__(self, compute: Callable[[], Awaitable[Any]], reactor, *,
                 min_age: float = 60.0, name: str = "figure"):
        self.compute = compute
        self.reactor = reactor
        self.min_age = min_age
        self.name = name
        self.value: Any = None
        self.as_of: float | None = None  # reactor time of the value
        self._took = 0.0
        self._waiters: list[defer.Deferred] | None = None  # set while computing
        self._since = 0.0  # (reactor time) when the computation running began

    def stale(self) -> bool:
        return self.as_of is None or \
            self.reactor.seconds() - self.as_of > max(self.min_age, 10 * self._took)

    async def get(self) -> Any:
        """The value; the first call (and any call while it runs) waits for it."""
        if self.as_of is None:
            waiter = defer.Deferred()
            self._start(waiter)
            return await waiter
        if self.stale():
            self._start()
        return self.value

    async def get_within(self, seconds: float, default: Any = None) -> Any:
        """:meth:`get`, but until there is a value a caller waits no longer than
        ``seconds`` from the start of the computation, then answers ``default`` (the
        computation goes on): a first count that takes minutes keeps no caller waiting
        after the first one gave up."""
        if self.as_of is not None:
            return await self.get()
        running = self._waiters is not None
        left = seconds - (self.reactor.seconds() - self._since if running else 0.0)
        if left <= 0:  # (it runs, past the time any caller waits)
            return default
        waiter = defer.Deferred()
        self._start(waiter)
        timer = self.reactor.callLater(
            left, lambda: waiter.called or waiter.callback(default))
        try:
            return await waiter
        finally:
            if timer.active():
                timer.cancel()

    def _start(self, waiter: defer.Deferred | None = None) -> None:
        """Run ``compute`` unless it runs; ``waiter`` fires with what it ends with
        (taken first: a compute that fails at once ends before this returns)."""
        starting = self._waiters is None
        if starting:
            self._waiters = []
        if waiter is not None:
            self._waiters.append(waiter)
        if starting:
            defer.ensureDeferred(self._run())

    async def _run(self) -> None:
        started = self._since = self.reactor.seconds()
        try:
            value = await self.compute()
        except Exception as error:
            waiters, self._waiters = self._waiters, None
            if all(waiter.called for waiter in waiters):  # (none left to tell)
                log.warn("{name}: {error} (keeping the value of before)", name=self.name,
                         error=error)
            for waiter in waiters:
                if not waiter.called:  # (given its default already)
                    waiter.errback(error)
            return
        self.value, self.as_of = value, self.reactor.seconds()
        self._took = self.as_of - started
        waiters, self._waiters = self._waiters, None
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(value)

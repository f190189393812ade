"""Rendered descriptions, once per release: a cache keyed by the release document's
id and revision (a changed release is a new key, so an entry is never stale), bounded
by the characters it holds. Rendering runs in the reactor's thread pool (docutils
takes half a second on a 1 MB reStructuredText), and a release being rendered is
rendered once however many pages ask for it meanwhile."""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet import defer, threads

from pypioncouch import description

Rendered = tuple[str | None, str]  # (sanitized HTML or None, how), description.render's


class DescriptionCache:
    def __init__(self, reactor, max_chars: int = 32_000_000):
        self.reactor = reactor
        self.max_chars = max_chars
        self.renders = 0  # how many times a description was rendered (for tests, metrics)
        self._entries: OrderedDict[tuple[str, str], Rendered] = OrderedDict()
        self._chars = 0
        self._pending: dict[tuple[str, str], list[defer.Deferred]] = {}

    async def rendered(self, release: dict) -> Rendered:
        """The release's own description, rendered as PyPI renders it."""
        info = release.get("info") or {}
        key = (release.get("_id", ""), release.get("_rev", ""))
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        if key in self._pending:
            waiter: defer.Deferred = defer.Deferred()
            self._pending[key].append(waiter)
            return await waiter
        self._pending[key] = []
        try:
            result = await self._render(info.get("description"),
                                        info.get("description_content_type"))
        except BaseException as error:
            for waiter in self._pending.pop(key):
                waiter.errback(error)
            raise
        self.renders += 1
        self._store(key, result)
        for waiter in self._pending.pop(key):
            waiter.callback(result)
        return result

    def _render(self, text, content_type) -> defer.Deferred:
        pool = getattr(self.reactor, "getThreadPool", None)
        if pool is None:  # a test reactor without threads
            return defer.succeed(description.render(text, content_type))
        return threads.deferToThreadPool(self.reactor, pool(), description.render, text,
                                         content_type)

    def _store(self, key, result: Rendered) -> None:
        size = len(result[0] or "")
        if size > self.max_chars // 4:
            return  # a huge page is rendered again rather than crowding out the rest
        self._entries[key] = result
        self._chars += size
        while self._chars > self.max_chars:
            _, (html, _) = self._entries.popitem(last=False)
            self._chars -= len(html or "")

"""Per-project cache of what the web front renders, kept exact by ``_changes``.

A cached entry is used only while the changes follower is live — its feed accepted by
CouchDB, from a seq read before (so a write made while it connected is delivered
too): every change to a project's documents evicts its entry, and a broken feed
empties the whole cache, so a hit never serves anything older than CouchDB's own state.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class CachedProject:
    project: dict
    releases: list[dict]
    rendered: dict = field(default_factory=dict)  # variant -> bytes

    @property
    def etag_base(self) -> str:
        return self.project["_rev"]


class ProjectCache:
    """Entries by project key, least recently used out first.

    A read races the feed: a change can arrive while the documents are being read,
    before the entry is stored. So a reader takes a ``ticket()`` before reading, and
    ``put`` refuses the entry if its project changed since (or if the cache cannot
    tell: the feed reconnected, or the change is older than those it remembers).
    """

    def __init__(self, size: int = 5000, remembered: int = 10000):
        self.size = size
        self.remembered = remembered
        self.live = False
        self._entries: OrderedDict[str, CachedProject] = OrderedDict()
        self._clock = 0  # counts changes and reconnections
        self._changed: OrderedDict[str, int] = OrderedDict()  # key -> clock of its last change
        self._floor = 0  # tickets older than this are refused
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> CachedProject | None:
        entry = self._entries.get(key) if self.live else None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def ticket(self) -> int:
        """Take one before reading a project's documents; give it to ``put``."""
        return self._clock

    def put(self, key: str, entry: CachedProject, ticket: int) -> None:
        if not self.live or ticket < self._floor or self._changed.get(key, -1) > ticket:
            return  # changed (or perhaps changed) while it was being read
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def on_change(self, change: dict) -> None:
        """A ``_changes`` row: evict the project the document belongs to."""
        key = change.get("id", "").split(":", 1)[0]
        self._clock += 1
        self._entries.pop(key, None)
        self._changed[key] = self._clock
        self._changed.move_to_end(key)
        while len(self._changed) > self.remembered:
            _, forgotten = self._changed.popitem(last=False)
            self._floor = max(self._floor, forgotten)

    def _reset(self) -> None:
        self._entries.clear()
        self._changed.clear()
        self._clock += 1
        self._floor = self._clock

    def connected(self) -> None:
        self._reset()  # changes may have been missed while we were away
        self.live = True

    def disconnected(self) -> None:
        self.live = False
        self._reset()

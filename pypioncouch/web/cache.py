"""Per-project cache of what the web front renders, kept exact by ``_changes``.

A cached entry is used only while the changes follower is live: every change to a
project's documents evicts its entry, and a broken feed empties the whole cache, so a
hit never serves anything older than CouchDB's own state.
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
    def __init__(self, size: int = 5000):
        self.size = size
        self.live = False
        self._entries: OrderedDict[str, CachedProject] = OrderedDict()
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

    def put(self, key: str, entry: CachedProject) -> None:
        if not self.live:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def on_change(self, change: dict) -> None:
        """A ``_changes`` row: evict the project the document belongs to."""
        self._entries.pop(change.get("id", "").split(":", 1)[0], None)

    def connected(self) -> None:
        self._entries.clear()  # changes may have been missed while we were away
        self.live = True

    def disconnected(self) -> None:
        self.live = False
        self._entries.clear()

"""Per-project cache of what the web front renders, kept exact by ``_changes``.

A cached entry is used only while the changes follower is live — its feed accepted by
CouchDB, from a seq read before (so a write made while it connected is delivered
too): every change to a project's documents evicts its entry, and a broken feed
empties the whole cache, so a hit never serves anything older than CouchDB's own state.

The cache is bounded in bytes (``--cache-mb``), not in entries: one project of 3,000
releases weighs as much as ten thousand small ones. An entry's weight is estimated
from what it holds, without walking it: the bytes of JSON read from CouchDB for it,
times what CPython spends on the parsed objects per byte of JSON, plus the bytes of
the answers rendered from it. An entry keeps at most ``variants`` rendered answers
(a crawler asking for each of 3,000 versions' JSON would otherwise hang all of them
on one entry). From a project read row by row (``Store.project_read``: over 1 MB of
releases), long descriptions other than the latest's are not held (``elided``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from pypioncouch import __version__

MB = 1024 * 1024
DEFAULT_MB = 64.0
DEFAULT_VARIANTS = 8
# Parsed JSON in CPython per byte of JSON read (tracemalloc, the simulator's documents):
# ~3 for ordinary releases, 1.8 for a 5 MB description, 6.5 for a project document of
# 3,000 releases (its short keys and digests). 3 is the common case.
PARSED_PER_JSON_BYTE = 3
ENTRY_OVERHEAD = 1024  # the entry, its dicts and bookkeeping
VARIANT_OVERHEAD = 100  # a bytes object and its key


@dataclass
class CachedProject:
    """A project's documents as read from CouchDB, and answers rendered from them."""

    project: dict
    releases: list[dict]
    json_bytes: int = 0  # the JSON read from CouchDB for these documents
    rendered: OrderedDict[str, bytes | None] = field(default_factory=OrderedDict)
    rendered_bytes: int = 0
    file_index: dict | None = None  # file name -> release (the /files/ route's lookups)
    # Versions whose info lacks its description (Store.project_read left it out: read
    # the release whole to answer with it).
    elided: frozenset[str] = frozenset()

    @cached_property
    def etag_base(self) -> str:
        """The revisions of every document an answer is made from, digested. Not the
        project's alone: on a replica a release can land after its project (the
        replicator keeps no order), and a page made before it must not stay valid. With
        the version of pypioncouch: another may render the same documents otherwise."""
        revisions = sorted(f"{doc['_id']}@{doc.get('_rev')}" for doc in self.releases)
        digest = hashlib.sha256("\n".join([__version__, self.project["_rev"],
                                           *revisions]).encode())
        return digest.hexdigest()[:32]

    @property
    def size(self) -> int:
        """Estimated bytes of memory this entry holds."""
        return ENTRY_OVERHEAD + PARSED_PER_JSON_BYTE * self.json_bytes + self.rendered_bytes


def _variant_size(body: bytes | None) -> int:
    return VARIANT_OVERHEAD + len(body or b"")


class ProjectCache:
    """Entries by project key, least recently used out first once their estimated
    sizes add up to more than ``max_bytes`` (an entry larger than that is not kept).

    A read races the feed: a change can arrive while the documents are being read,
    before the entry is stored. So a reader takes a ``ticket()`` before reading, and
    ``put`` refuses the entry if its project changed since (or if the cache cannot
    tell: the feed reconnected, or the change is older than those it remembers).
    """

    def __init__(self, max_bytes: int = int(DEFAULT_MB * MB), *,
                 variants: int = DEFAULT_VARIANTS, remembered: int = 10000):
        if max_bytes < 0 or variants < 1:
            raise ValueError("max_bytes is 0 or more, variants 1 or more")
        self.max_bytes = max_bytes
        self.variants = variants
        self.remembered = remembered
        self.live = False
        self.bytes = 0  # estimated, of the entries held
        self._entries: OrderedDict[str, CachedProject] = OrderedDict()
        self._clock = 0  # counts changes and reconnections
        self._changed: OrderedDict[str, int] = OrderedDict()  # key -> clock of its last change
        # key -> {document id: the revision the feed last said}: a cluster's read may
        # come from a copy still behind a change already seen (a release's own
        # metadata, which its project's record does not tell apart)
        self._revisions: dict[str, dict[str, str]] = {}
        self._floor = 0  # tickets older than this are refused
        self.hits = 0
        self.misses = 0
        self.evictions = 0  # entries dropped for room (not for a change)

    def __len__(self) -> int:
        return len(self._entries)

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

    def unchanged(self, key: str, ticket: int) -> bool:
        """Whether ``key`` is known not to have changed since ``ticket`` was taken."""
        return self.live and ticket >= self._floor and self._changed.get(key, -1) <= ticket

    def may_keep(self, entry: CachedProject) -> bool:
        """Whether ``entry`` is small enough to be kept (checking more is then worth it)."""
        return entry.size <= self.max_bytes

    def put(self, key: str, entry: CachedProject, ticket: int) -> None:
        if not self.unchanged(key, ticket):
            return  # changed (or perhaps changed) while it was being read
        said = self._revisions.get(key)
        if said and any(said.get(doc["_id"], doc.get("_rev")) != doc.get("_rev")
                        for doc in (entry.project, *entry.releases)):
            return  # read from a copy behind a change the feed told (served, not kept)
        if entry.size > self.max_bytes:
            return  # it would push out everything else, and still not fit
        self._drop(key)
        self._entries[key] = entry
        self.bytes += entry.size
        self._make_room()

    def rendered(self, entry: CachedProject, variant: str,
                 render: Callable[[], bytes | None]) -> bytes | None:
        """``entry``'s answer ``variant``, rendered by ``render()`` the first time and
        kept (at most ``variants`` an entry, the least recently used out first)."""
        if variant in entry.rendered:
            entry.rendered.move_to_end(variant)
            return entry.rendered[variant]
        body = render()
        held = self._entries.get(entry.project["_id"]) is entry
        before = entry.size
        entry.rendered[variant] = body
        entry.rendered_bytes += _variant_size(body)
        while len(entry.rendered) > self.variants:
            _, dropped = entry.rendered.popitem(last=False)
            entry.rendered_bytes -= _variant_size(dropped)
        if held:
            self.bytes += entry.size - before
            self._make_room()
        return body

    def on_change(self, change: dict) -> None:
        """A ``_changes`` row: evict the project the document belongs to."""
        docid = change.get("id", "")
        key = docid.split(":", 1)[0]
        self._clock += 1
        self._drop(key)
        self._changed[key] = self._clock
        self._changed.move_to_end(key)
        revisions = change.get("changes") or [{}]
        rev = revisions[0].get("rev") if isinstance(revisions[0], dict) else None
        if isinstance(rev, str):  # (a removal's too: a read of a copy behind has the
            self._revisions.setdefault(key, {})[docid] = rev  # document still, at another)
        while len(self._changed) > self.remembered:
            forgotten_key, forgotten = self._changed.popitem(last=False)
            self._revisions.pop(forgotten_key, None)
            self._floor = max(self._floor, forgotten)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    def _make_room(self) -> None:
        while self.bytes > self.max_bytes and self._entries:
            _, entry = self._entries.popitem(last=False)
            self.bytes -= entry.size
            self.evictions += 1

    def _reset(self) -> None:
        self._entries.clear()
        self.bytes = 0
        self._changed.clear()
        self._revisions.clear()
        self._clock += 1
        self._floor = self._clock

    def connected(self) -> None:
        self._reset()  # changes may have been missed while we were away
        self.live = True

    def disconnected(self) -> None:
        self.live = False
        self._reset()

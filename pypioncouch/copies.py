"""Reads from a cluster's copies behind the changes feed.

On an Apache CouchDB cluster, a read may come from copies of a shard that lack a
change the feed (read from another copy) already named: a write answered 202, a node
down. A follower that renders from such a read and finishes would never be told again:
the feed named that change once. :class:`FeedRevisions` keeps the revision the feed
last named of each document until a read shows it, and tells a read that is behind.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, NamedTuple


class Named(NamedTuple):
    rev: str
    deleted: bool
    number: int  # the change's place in the feed, as counted here


def generation(rev: str | None) -> int:
    """The ``N`` of a revision ``N-hash`` (0 when there is none)."""
    try:
        return int((rev or "").split("-", 1)[0])
    except ValueError:
        return 0


def read_is_behind(named: Named, read_rev: str | None) -> bool:
    """Whether a document read at ``read_rev`` (None: not found) is behind what the
    feed ``named``: not there though named live, or at an older or another revision of
    the same generation. A newer one is not behind: its change is on the way."""
    if read_rev is None:
        return not named.deleted
    if read_rev == named.rev:
        return False
    return generation(read_rev) <= generation(named.rev)


class FeedRevisions:
    """The revisions the feed named, each until a read shows it; at most ``kept`` (the
    oldest forgotten first: the changes of a first start on all of PyPI are long
    settled on every copy)."""

    def __init__(self, kept: int):
        self.kept = kept
        self.named: OrderedDict[str, Named] = OrderedDict()
        self.count = 0  # changes seen

    def __len__(self) -> int:
        return len(self.named)

    def saw(self, docid: str, rev: str, deleted: bool = False) -> None:
        self.count += 1
        self.named.pop(docid, None)
        self.named[docid] = Named(rev, deleted, self.count)
        while len(self.named) > self.kept:
            self.named.popitem(last=False)

    def forget(self, docid: str) -> None:
        self.named.pop(docid, None)

    def forget_project(self, key: str) -> None:
        """Forget what was named of ``key``'s documents (its reads are taken as they are)."""
        for docid in [d for d in self.named if d == key or d.startswith(key + ":")]:
            del self.named[docid]

    def clear(self) -> None:
        self.named.clear()

    def behind(self, read: dict[str, str | None], before: int) -> str | None:
        """The first document of ``read`` (``{id: the revision read, or None when not
        found}``) that is behind what the feed named of it before the read began (a
        mark taken then: ``count``); None when none is. A change named since is not
        asked of this read: it makes its project due again."""
        for docid, rev in read.items():
            named = self.named.get(docid)
            if named is not None and named.number <= before and read_is_behind(named, rev):
                return docid
        return None

    def settled(self, ids: Iterable[str], before: int) -> None:
        """Forget what was named before ``before`` of ``ids``, read in step."""
        for docid in ids:
            named = self.named.get(docid)
            if named is not None and named.number <= before:
                del self.named[docid]

"""The sync checkpoint: how far PyPI's changes are in CouchDB, and what is left to do.

Kept in ``_local/pypioncouch-sync`` (local documents do not replicate: a mirror has no
checkpoint of its own): ``serial`` is PyPI's serial every acknowledged write covers,
``pending`` the projects (``{normalized name: serial wanted}``) to retry on the next
pass. It is saved only after the writes it covers are acknowledged, and never moves
backwards: two writers on one database merge theirs (the higher serial, both pending
lists), told apart by a token each save carries.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from twisted.logger import Logger

from pypioncouch.couch import Conflict, Database, NotFound
from pypioncouch.status import SyncStatus

log = Logger()

CHECKPOINT = "pypioncouch-sync"
# Written as a full import into a database without a checkpoint begins: gone at its
# end, the database was deleted (and created again) under the import.
IMPORT_MARK = "pypioncouch-import"
SAVE_ROUNDS = 3


class Checkpoint:
    """The checkpoint of ``db`` synced from ``pypi_url``; saves show on ``status``.

    Each save carries a token of its own; a save that finds another stored (or another
    revision of a checkpoint without one: an older version's, or where it loaded none)
    merges that other writer's first, and returns what it saved: the writer goes on
    from there. Apache CouchDB's local documents take any revision (a stale one
    overwrites, no 409), so a conflict alone would not tell (pouchdb-server's do answer
    409: retried the same way). Between the read and the write, one round trip, another
    writer's save can still be lost there: nothing in CouchDB rejects it."""

    def __init__(self, db: Database, pypi_url: str, status: SyncStatus):
        self.db = db
        self.pypi_url = pypi_url
        self.status = status
        # The token and revision of the checkpoint loaded, then of our last save.
        self._token: str | None = None
        self._rev: str | None = None
        self._marked = False  # a full import's mark written (see :meth:`mark_import`)

    async def load(self) -> dict | None:
        checkpoint = await self.db.get_local(CHECKPOINT)
        self._token, self._rev, self._marked = None, None, False
        if checkpoint is not None:
            self._token, self._rev = checkpoint.get("token"), checkpoint.get("_rev")
            if self.status.caught_up_at is None:
                # At a start: behind PyPI since the last save at least (a daemon down
                # for days is not "just started, not behind for long").
                self.status.caught_up_at = _time_of(checkpoint.get("updated"),
                                                    self.status.clock())
            # Known as synced from the start (health, the backfill), not after a pass;
            # what is left to retry too (/status said 0 until the first save).
            self.status.note_serials(our_serial=checkpoint.get("serial"))
            self.status.pending = len(checkpoint.get("pending") or {})
            if checkpoint.get("pypi") not in (None, self.pypi_url):
                log.warn("this database was synced from {old}, now from {new}: "
                         "serials differ between indexes", old=checkpoint.get("pypi"),
                         new=self.pypi_url)
        return checkpoint

    async def mark_import(self) -> None:
        """A full import into a database without a checkpoint begins: leave a mark
        that :meth:`save` looks for, as no checkpoint can tell the database was
        deleted under the import (pouchdb-server creates it again at the next write:
        saved, the new one would claim every project the old one held)."""
        mark = await self.db.get_local(IMPORT_MARK)
        try:
            await self.db.put_local(IMPORT_MARK, {
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **({"_rev": mark["_rev"]} if mark else {})})
        except Conflict:
            pass  # (another writer's import marked it a moment ago: there it is)
        self._marked = True

    async def save(self, serial: int, pending: dict[str, int | None]
                   ) -> tuple[int, dict[str, int | None]]:
        """Save, merged with another writer's; returns the serial and pending saved."""
        for _ in range(SAVE_ROUNDS):
            current = await self.db.get_local(CHECKPOINT)
            if current is None and self._rev is not None:
                # Loaded or saved, now gone: the database was deleted (pouchdb-server
                # creates it again at the next write), or the checkpoint. What it
                # covered may be gone too: the next pass starts over.
                raise NotFound("the checkpoint is gone since this pass read it (the "
                               "database deleted?): the next pass imports anew")
            if current is None and self._marked and \
                    await self.db.get_local(IMPORT_MARK) is None:
                raise NotFound("the database was deleted during this import (its mark "
                               "is gone): the next pass imports anew")
            if current is not None and (current.get("token"), current.get("_rev")) != (
                    self._token, self._rev):
                # Another writer on this database saved since we loaded or saved: never
                # move its serial backwards, and keep what either of us has still to do.
                serial, pending = _merged(serial, pending, current)
            token = uuid.uuid4().hex
            doc = {"serial": serial, "pending": pending, "pypi": self.pypi_url,
                   "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "token": token}
            if current is not None:
                doc["_rev"] = current["_rev"]
            try:
                self._rev = await self.db.put_local(CHECKPOINT, doc)
            except Conflict:  # saved meanwhile: read again, merge
                continue
            self._token = token
            break
        else:
            raise Conflict("the checkpoint kept changing under us (other writers)")
        self.status.note_serials(our_serial=serial)
        self.status.pending = len(pending)
        return serial, pending


def _time_of(saved: object, now: float) -> float | None:
    """The time a checkpoint says it was saved at (ISO 8601), if it says one that is
    not in the future."""
    try:
        seen = datetime.fromisoformat(saved).timestamp()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return seen if seen <= now else None


def _merged(serial: int, pending: dict, theirs: dict) -> tuple[int, dict]:
    """Ours and another writer's checkpoint: the higher serial, what either of us has
    still to do; a project both have still to do, at the higher serial either wants
    (a retry asks for it, so that an older copy is not taken for it)."""
    merged = dict(theirs.get("pending") or {})
    for key, wanted in pending.items():
        if key not in merged or _wanted_rank(wanted) >= _wanted_rank(merged[key]):
            merged[key] = wanted
    return max(serial, theirs.get("serial") or serial), merged


def _wanted_rank(entry: object) -> float:
    """How much a pending entry asks: its serial (a removal's ``{"removed": n}`` too);
    ``None`` most (asked by name, with no serial: a project the listing no longer
    names, whose 404 an old serial would make look stale for ever)."""
    if entry is None:
        return float("inf")
    if isinstance(entry, dict):
        entry = entry.get("removed")
    return entry if isinstance(entry, int) and not isinstance(entry, bool) else -1

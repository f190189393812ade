"""The sync checkpoint: how far PyPI's changes are in CouchDB, and what is left to do.

Kept in ``_local/pypioncouch-sync`` (local documents do not replicate: a mirror has no
checkpoint of its own): ``serial`` is PyPI's serial every acknowledged write covers,
``pending`` the projects (``{normalized name: serial wanted}``) to retry on the next
pass. It is saved only after the writes it covers are acknowledged, and never moves
backwards: two writers on one database merge theirs (the higher serial, both pending
lists).
"""

from __future__ import annotations

from datetime import datetime, timezone

from twisted.logger import Logger

from pypioncouch.couch import Conflict, Database
from pypioncouch.status import SyncStatus

log = Logger()

CHECKPOINT = "pypioncouch-sync"
SAVE_ROUNDS = 3


class Checkpoint:
    """The checkpoint of ``db`` synced from ``pypi_url``; saves show on ``status``."""

    def __init__(self, db: Database, pypi_url: str, status: SyncStatus):
        self.db = db
        self.pypi_url = pypi_url
        self.status = status
        self._rev: str | None = None

    async def load(self) -> dict | None:
        checkpoint = await self.db.get_local(CHECKPOINT)
        if checkpoint is not None:
            self._rev = checkpoint.get("_rev")
            # Known as synced from the start (health, the backfill), not after a pass.
            self.status.note_serials(our_serial=checkpoint.get("serial"))
            if checkpoint.get("pypi") not in (None, self.pypi_url):
                log.warn("this database was synced from {old}, now from {new}: "
                         "serials differ between indexes", old=checkpoint.get("pypi"),
                         new=self.pypi_url)
        return checkpoint

    async def save(self, serial: int, pending: dict[str, int | None]) -> None:
        if self._rev is None:
            existing = await self.db.get_local(CHECKPOINT)
            self._rev = existing.get("_rev") if existing else None
        for _ in range(SAVE_ROUNDS):
            doc = {"serial": serial, "pending": pending, "pypi": self.pypi_url,
                   "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            if self._rev:
                doc["_rev"] = self._rev
            try:
                self._rev = await self.db.put_local(CHECKPOINT, doc)
                break
            except Conflict:
                # Another writer on this database saved meanwhile: never move its
                # serial backwards, and keep what either of us has still to do.
                theirs = await self.db.get_local(CHECKPOINT) or {}
                self._rev = theirs.get("_rev")
                serial = max(serial, theirs.get("serial") or serial)
                pending = {**(theirs.get("pending") or {}), **pending}
        else:
            raise Conflict("the checkpoint kept changing under us (other writers)")
        self.status.note_serials(our_serial=serial)
        self.status.pending = len(pending)

"""Bring documents an older version stored up to the current schema, from what they
hold: no request to PyPI.

Project documents written before ``requires`` existed (docs/schema.md) are the
catalog view's ``["needs-requires", project]`` rows; each gets ``requires`` and
``requires_unparsable`` from its own ``info.requires_dist`` and is written back with
the revision it was read at. A conflict means someone wrote it meanwhile (the sync,
whose copy has the fields; the OPML watcher, whose copy is read again next round).
Resumable without a checkpoint: what is filled leaves the view.
"""

from __future__ import annotations

from twisted.logger import Logger

from pypioncouch import couchapp, model
from pypioncouch.couch import Database

log = Logger()


async def add_requirements(db: Database, batch: int = 500, timeout: float = 3600) -> int:
    """Fill in ``requires`` on every project document without it; how many were."""
    low, high = couchapp.facet_range("needs-requires")
    written = 0
    while True:
        rows = await couchapp.query(db, startkey=low, endkey=high, limit=batch,
                                    reduce=False, include_docs=True, timeout=timeout)
        docs = [with_requirements(row["doc"]) for row in rows
                if row.get("doc") and "requires" not in row["doc"]]
        done = sum(result.ok for result in await db.bulk_docs(docs)) if docs else 0
        written += done
        if len(rows) < batch or not done:
            break
    if written:
        log.info("upgrade: {n} project documents got their required names", n=written)
    return written


def with_requirements(project: dict) -> dict:
    requires, unparsable = model.requirements_by_name(
        (project.get("info") or {}).get("requires_dist"), project["_id"])
    return {**project, "requires": requires, "requires_unparsable": unparsable}

"""The design document ``_design/pypioncouch``, built from the files beside this module:
``views/<name>/map.js`` (+ ``reduce.js``, a built-in such as ``_count``). It
replicates with the data, so every mirror can serve the browse pages from its own
views.

The write guard (``validate_doc_update.js``) lives in a design document of its own,
``_design/pypioncouch-guard``, installed only on request (``--guard``): Apache
CouchDB runs a JavaScript ``validate_doc_update`` for every document written, which
made every write 2.7 times slower (bench/RESULTS.md), and our own writer checks the
same rules in Python before it writes (:func:`pypioncouch.model.shape_problem`). The
guard is for databases that take writes from elsewhere.

One view, ``catalog``, answers every list (docs/schema.md): its keys start with a
facet (``["name", project]``, ``["author", folded, project]``, ...). The helpers
below are how the rest of the code reads it.

:func:`push` is idempotent: an unchanged design document is not rewritten (its
indexes are not rebuilt for nothing). A changed one is first written under a scratch
id and its views are queried until built; only then is the live document replaced, so
readers never wait on a cold index (CouchDB keys an index by its views' code, so the
live document picks up the indexes the scratch one built).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

from twisted.logger import Logger

from pypioncouch.couch import Conflict, Database, LockedOut, NotFound, Unauthorized

log = Logger()

NAME = "pypioncouch"
DESIGN_ID = f"_design/{NAME}"
SCRATCH_ID = f"_design/{NAME}-next"
GUARD_ID = f"_design/{NAME}-guard"
HERE = Path(__file__).parent
VIEW = "catalog"
# One more whenever the views change (tests/test_couchapp.py keeps count): a
# pypioncouch never replaces the design document of a newer one, whose views an older
# --update or daemon would otherwise silently take away.
GENERATION = 4
LAST = {}  # collates after every string, number and list: the end of a key range


def facet_range(facet: str, *prefix: Any) -> tuple[list, list]:
    """The (startkey, endkey) of the rows of ``facet`` whose key begins with ``prefix``."""
    return [facet, *prefix], [facet, *prefix, LAST]


async def query(db: Database, **params) -> list[dict]:
    """Rows of the catalog view (CouchDB's view options as keywords)."""
    return (await db.view(NAME, VIEW, **params))["rows"]


async def all_projects(db: Database, batch: int = 5000,
                       timeout: float = 3600) -> AsyncIterator[dict]:
    """Every ``["name", project]`` row, by name, ``batch`` rows per request. The first
    request may build the index over the whole database: it gets a long timeout.
    A page goes on from the last key seen, that row dropped if it is still there (not
    ``skip=1``: with that row removed meanwhile, the next project would be skipped)."""
    low, high = facet_range("name")
    startkey, last = low, None
    while True:
        limit = batch if last is None else batch + 1  # (the last row seen, again)
        rows = (await db.view(NAME, VIEW, startkey=startkey, endkey=high, limit=limit,
                              reduce=False, timeout=timeout))["rows"]
        for row in rows:
            if row["key"] != last:
                yield row
        if len(rows) < limit:
            return
        startkey = last = rows[-1]["key"]


async def project_statuses(db: Database, after: str | None, limit: int,
                           timeout: float = 3600) -> list[tuple[str, str | None]]:
    """``(project, its PEP 792 status)`` by name, the first ``limit`` after ``after``
    (from the start when None)."""
    low, high = facet_range("name")
    rows = await query(db, startkey=low if after is None else ["name", after], endkey=high,
                       limit=limit + (after is not None), reduce=False, timeout=timeout)
    return [(row["id"], row["value"][2]) for row in rows if row["id"] != after][:limit]


async def count(db: Database, facet: str, *prefix: Any, timeout: float | None = None
                ) -> int:
    """How many rows ``facet`` (under ``prefix``) has: for "name", the projects."""
    low, high = facet_range(facet, *prefix)
    rows = await query(db, startkey=low, endkey=high, reduce=True, timeout=timeout)
    return rows[0]["value"] if rows else 0


async def max_serial(db: Database, timeout: float | None = None) -> int | None:
    """The highest ``last_serial`` stored (None in an empty database)."""
    low, high = facet_range("serial")
    rows = await query(db, startkey=high, endkey=low, descending=True, limit=1,
                       reduce=False, timeout=timeout)
    return rows[0]["key"][1] if rows else None


async def holds_projects(db: Database, timeout: float | None = None) -> bool:
    """Whether any project is stored (its name row: one without a serial, from an
    index that gives none, counts too)."""
    low, high = facet_range("name")
    return bool(await query(db, startkey=low, endkey=high, limit=1, reduce=False,
                            timeout=timeout))


async def project_serial(db: Database, key: str, timeout: float | None = None) -> int | None:
    """The ``last_serial`` the catalog holds of project ``key`` (None: none), read from
    its ``["name", key]`` row: a project document may be large (its record of every
    release), this row is not."""
    rows = await query(db, key=["name", key], reduce=False, limit=1, timeout=timeout)
    serial = rows[0]["value"][1] if rows and isinstance(rows[0].get("value"), list) \
        and len(rows[0]["value"]) > 1 else None
    return serial if isinstance(serial, int) and not isinstance(serial, bool) else None


async def releases_without_info(db: Database, after: str | None = None, limit: int = 100,
                                timeout: float | None = 3600) -> list[str]:
    """Ids of release documents without their own ``info``, by id, after ``after``
    (which may be filled meanwhile: no ``skip``, its row is dropped if still there)."""
    low, high = facet_range("needs-info")
    startkey = low if after is None else ["needs-info", after]
    rows = (await db.view(NAME, VIEW, startkey=startkey, endkey=high, limit=limit + 1,
                          reduce=False, timeout=timeout))["rows"]
    return [row["id"] for row in rows if row["id"] != after][:limit]


def design_document() -> dict:
    """The design document, from the files (without ``_rev``)."""
    views = {}
    for folder in sorted((HERE / "views").iterdir()):
        if not (folder / "map.js").exists():
            continue
        view = {"map": (folder / "map.js").read_text().strip()}
        if (folder / "reduce.js").exists():
            view["reduce"] = (folder / "reduce.js").read_text().strip()
        views[folder.name] = view
    return {"_id": DESIGN_ID, "language": "javascript", "views": views,
            "pypioncouch": {"generation": GENERATION}}


class NewerDesign(Conflict):
    """The database holds the design document of a newer pypioncouch."""


def generation(design: dict | None) -> int:
    """The generation a stored design document says it is (0: from before they were
    counted)."""
    found = ((design or {}).get("pypioncouch") or {}).get("generation")
    return found if isinstance(found, int) else 0


def guard_document() -> dict:
    """The optional write guard: the shape rules, enforced by CouchDB on every write."""
    return {"_id": GUARD_ID, "language": "javascript",
            "validate_doc_update": (HERE / "validate_doc_update.js").read_text().strip()}


async def push_guard(db: Database) -> bool:
    """Install or update the write guard. True if it was written."""
    wanted = guard_document()
    current = await db.get_or_none(GUARD_ID)
    if current is not None and _same(current, wanted):
        return False
    if not await _install(db, wanted, current):
        return False
    log.info("write guard {id} written", id=GUARD_ID)
    return True


def _same(stored: dict, wanted: dict) -> bool:
    return {k: v for k, v in stored.items() if not k.startswith("_")} == \
        {k: v for k, v in wanted.items() if not k.startswith("_")}


async def push(db: Database, *, build_timeout: float = 3600.0, scratch_above: int = 1000,
               wanted: dict | None = None) -> bool:
    """Install or update the design document (``wanted``, default: the files here).
    True if it was written. A database of more than ``scratch_above`` documents gets
    the new views built under a scratch id first."""
    wanted = dict(wanted or design_document())
    current = await db.get_or_none(DESIGN_ID)
    if current is not None and _same(current, wanted):
        await _drop_stale_scratch(db, current)
        return False
    if generation(current) > generation(wanted):
        raise NewerDesign(f"{db.name!r} holds the design document of a newer pypioncouch "
                          f"(generation {generation(current)}, this one has "
                          f"{generation(wanted)}): upgrade this pypioncouch",
                          url=db.display_url)
    if current is not None and (await db.info()).get("doc_count", 0) > scratch_above:
        await _build_under_scratch(db, wanted, build_timeout)
    if not await _install(db, wanted, current):
        return False
    log.info("design document {id} written", id=DESIGN_ID)
    return True


async def _install(db: Database, wanted: dict, current: dict | None) -> bool:
    """Write ``wanted`` over ``current`` (the stored copy, or None). False if another
    writer installed the same meanwhile: a daemon and an import started together on
    a new database both write it, and the second meets a conflict, not an error. A
    different copy written meanwhile is not overwritten: that is another version."""
    for _ in range(2):  # once more if the stored copy was deleted meanwhile
        doc = dict(wanted)
        if current is not None:
            doc["_rev"] = current["_rev"]
        try:
            await _put_design(db, doc)
            return True
        except Conflict:
            current = await db.get_or_none(wanted["_id"])
            if current is not None and _same(current, wanted):
                return False
            if current is not None:
                break
    raise Conflict(f"{wanted['_id']} was changed by another writer while this one "
                   "installed its own: is a pypioncouch of another version running on "
                   "this database?", url=db.display_url)


async def _put_design(db: Database, doc: dict) -> None:
    try:
        await db.put(doc)
    except LockedOut:
        raise
    except Unauthorized as error:
        raise Unauthorized(
            f"CouchDB {db.server.user} may not write the design document {doc['_id']} of "
            f"{db.name!r}: make it an admin of that database (its _security), or use a "
            "server admin", url=error.url, status=error.status) from None


async def _drop_stale_scratch(db: Database, current: dict) -> None:
    """Delete the scratch design document an upgrade left (stopped before it switched,
    or gone back from): Apache CouchDB keeps every design document's index current as
    documents are written, and mirrors receive it. Not a newer version's, which may be
    building its views there now."""
    scratch = await db.get_or_none(SCRATCH_ID)
    if scratch is None or generation(scratch) > generation(current):
        return
    try:
        await db.delete(SCRATCH_ID, scratch["_rev"])
        log.info("{id} deleted: the design document it was to become is installed, or "
                 "an older one's", id=SCRATCH_ID)
    except (NotFound, Conflict):  # (another daemon did, or wrote it again)
        pass
    except Unauthorized:  # (a user who may not write design documents: left as it is)
        log.info("{id} is left from an upgrade; a database admin may delete it",
                 id=SCRATCH_ID)


async def _build_under_scratch(db: Database, wanted: dict, timeout: float) -> None:
    scratch = {**wanted, "_id": SCRATCH_ID}
    existing = await db.get_or_none(SCRATCH_ID)
    if existing is not None:
        scratch["_rev"] = existing["_rev"]
    rev = await db.put(scratch)
    log.info("building the new views under {id} before switching", id=SCRATCH_ID)
    for view in wanted["views"]:
        params = {"limit": 1}
        if "reduce" in wanted["views"][view]:
            params["reduce"] = False
        await db.view(f"{NAME}-next", view, timeout=timeout, **params)
    try:
        await db.delete(SCRATCH_ID, rev)
    except NotFound:
        pass

"""pypioncouch's documents in a CouchDB database: the one place that knows their layout
and the rules of writing them (docs/schema.md).

- A project is its project document (``_id`` = the normalized name) and one release
  document per release (``<project>:<version>``): :func:`release_id`,
  :func:`release_range`, :func:`is_project_id`; :meth:`Store.project` reads a project
  and its releases, :meth:`Store.projects` many at once.
- Writes never move backwards: a document replaces a stored one only when its
  ``last_serial`` is at least the stored one's, and a removal leaves a tombstone that
  says when it happened (:func:`tombstone`), so older data cannot bring it back
  (:meth:`Store.settle`, :meth:`Store.write`).
- A conflict is settled with the stored revision, carrying what others wrote into the
  same document: the OPML watcher's attachment stubs and digest
  (:func:`keep_attachments`), a release's own metadata stored by the backfill
  (:func:`keep_info`).
- Documents are checked against the shape rules before they are written
  (:func:`pypioncouch.model.shape_problem`; the optional guard design document holds
  the same rules for CouchDB).

Whether a project may be removed at all (only on PyPI's word, and not too many in one
pass) is the sync's policy (:mod:`pypioncouch.removals`); how it is removed is here.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from twisted.internet import defer

from pypioncouch import model
from pypioncouch.couch import (
    WHOLE_ANSWER_BYTES, Conflict, Database, NoDatabase, NotFound, doc_path, revision_order)

CONFLICT_ROUNDS = 3
# From a large read of a project's releases (over couch.WHOLE_ANSWER_BYTES), the texts of
# a release's own info longer than this (its description; a licence's full text) are
# left out: once the backfill has stored every release's own metadata, 2,000 releases
# with 100 KB descriptions would hold 200 MB (600 MB parsed) for pages that show one
# of them at most.
KEPT_INFO_CHARS = 4096
OPML_DIGEST = "opml_digest"  # what the OPML watcher records of the opml.xml it wrote
STATUS_SERIAL = "status_serial"  # the project's serial the status sweep read its status at
release_id = model.release_id
release_range = model.release_id_range


def is_project_id(docid: str) -> bool:
    """Whether ``docid`` names a project document (not a release, design or local one)."""
    return ":" not in docid and not docid.startswith("_")


def is_project_doc(doc: dict) -> bool:
    return ":" not in doc["_id"]  # release ids are <project>:<version>


def newer(stored_serial: int | None, serial: int | None) -> bool:
    """Whether data stored at ``stored_serial`` is newer than data at ``serial``
    (unknown serials compare as not newer: documents written before serials were)."""
    return stored_serial is not None and serial is not None and stored_serial > serial


def tombstone(docid: str, serial: int | None) -> dict:
    """A removal that says when it happened, so older data cannot bring it back."""
    return {"_id": docid, "_deleted": True, "last_serial": serial}


def kept_leaf(leaves: list[dict]) -> dict:
    """Which of a document's conflicting leaf revisions it keeps: the newest serial;
    on a tie, the status the status sweep read last (its write changes no serial: the
    OPML watcher's, at the same serial, took it away, for a walk of days), then the one
    CouchDB serves (a removal without a serial, PyPI's 404, cannot tell it is newer:
    it loses to a live one)."""
    def rank(leaf: dict) -> tuple:
        serial, swept = leaf.get("last_serial"), leaf.get(STATUS_SERIAL)
        return (serial if isinstance(serial, int) else -1,
                swept if isinstance(swept, int) else -1, *revision_order(leaf))
    return max(leaves, key=rank)


def conflict_resolution(leaves: list[dict]) -> list[dict]:
    """The deletions that leave ``kept_leaf(leaves)`` (of every leaf revision of a
    document) as the only live one: none when it already is. A removal kept is
    carried by every deletion."""
    if len(leaves) < 2:
        return []
    kept = kept_leaf(leaves)
    serial = kept.get("last_serial") if kept.get("_deleted") else None
    return [{**tombstone(leaf["_id"], serial), "_rev": leaf["_rev"]} for leaf in leaves
            if leaf is not kept and not leaf.get("_deleted")]


def keep_attachments(project: dict, stored: dict | None) -> None:
    """Carry the stored project's attachments (as stubs, so CouchDB keeps them) and the
    digest the OPML watcher recorded of them onto a rewritten ``project``."""
    if stored and stored.get("_attachments"):
        project["_attachments"] = stored["_attachments"]
        if OPML_DIGEST in stored:
            project[OPML_DIGEST] = stored[OPML_DIGEST]


def keep_info(doc: dict, stored: dict) -> None:
    """A release written without ``info`` (no longer PyPI's latest) keeps its own
    metadata stored earlier: as the latest, or by the backfill (even a moment ago).
    Without files, it keeps the flags that metadata gave it too (yanked,
    Requires-Python): its project's answer has nothing to say them. Not a release
    uploaded again since (its metadata is asked for anew: the backfill)."""
    if doc.get("type") == model.RELEASE and "info" not in doc and \
            not model.is_another_upload(doc, stored):
        doc.update(model.own_info_of(stored))
        if not doc.get("files") and isinstance(doc.get("info"), dict):
            doc.update(model.own_flags(doc["info"]))


def same_project(stored: dict, base: dict | None) -> bool:
    """Whether ``stored`` is the copy a plan was made against, but for attachments
    (the OPML watcher's) and a status the status sweep wrote (see :func:`keep_status`)."""
    return base is not None and all(stored.get(k) == base.get(k) for k in (
        "last_serial", "release_digests", "versions")) and (
        stored.get("status") == base.get("status") or
        _swept(stored.get("status")) and _swept(base.get("status")))


def keep_status(project: dict, stored: dict, base: dict | None) -> None:
    """A project whose status is its stored copy's (``base``), rewritten over a copy
    whose status the status sweep changed meanwhile (archived, say), takes that one."""
    if base is not None and project.get("status") == base.get("status") and \
            _swept(project.get("status")) and _swept(stored.get("status")):
        project["status"] = stored["status"]
        carry_status_serial(project, stored)


def carry_status_serial(project: dict, stored: dict | None) -> None:
    """A project keeping its stored status keeps the serial the sweep read it at."""
    project.pop(STATUS_SERIAL, None)
    if stored is not None and STATUS_SERIAL in stored:
        project[STATUS_SERIAL] = stored[STATUS_SERIAL]


def _swept(status: str | None) -> bool:
    return status in model.SWEPT_STATUSES


def needs_repair(project: dict) -> bool:
    """Whether a concurrent writer left releases whose stored copy is unknown."""
    return any(d is None for d in (project.get("release_digests") or {}).values())


class Store:
    """The documents of one database (see the module docstring)."""

    def __init__(self, db: Database):
        self.db = db

    # -- reading -----------------------------------------------------------------------

    async def project_documents(self, keys: list[str]) -> dict[str, dict]:
        """``{key: project document}`` of the stored ones among ``keys``."""
        found = await self.db.bulk_get(keys)
        return {key: found[key] for key in keys
                if key in found and found[key].get("type") == model.PROJECT}

    async def project(self, key: str) -> tuple[dict | None, list[dict]]:
        """``(project document, its release documents in id order, each whole)``, or
        ``(None, [])`` for a project not stored."""
        read = await self.project_read(key, whole_below=None)
        releases = [await self.release(key, doc["version"], doc.get("_rev"))
                    if doc.get("version") in read.elided else doc for doc in read.releases]
        return read.project, [doc for doc in releases if doc is not None]

    async def project_read(self, key: str, whole_below: int | None = WHOLE_ANSWER_BYTES
                           ) -> "ProjectRead":
        """A project and its releases as a web front reads them, and the bytes of JSON
        held (a cache counts them). From releases over ``whole_below`` bytes of JSON
        (None: never), info texts over ``KEPT_INFO_CHARS`` are left out but the latest
        release's (the pages show it); :attr:`ProjectRead.elided` names them.

        The project and its releases are read at once (a web front's miss waits one
        round trip, not two). A project's releases are written before it, so a release
        its ``versions`` name but the read lacks was written meanwhile: the releases
        are read again, after the project, as the writer's order guarantees."""
        project_read = defer.ensureDeferred(self.db.get_sized(doc_path(key)))
        releases_read = defer.ensureDeferred(self._releases_sized(key, whole_below))
        (read_project, project), (read_releases, releases) = await defer.DeferredList(
            [project_read, releases_read], consumeErrors=True)
        if not read_project:
            if project.check(NotFound):
                if not read_releases and releases.check(NotFound):
                    # (a range of _all_docs is never a 404 in a database there)
                    raise NoDatabase(f"the database {self.db.name!r} does not exist",
                                     url=self.db.display_url)
                return ProjectRead(None, [], 0)
            project.raiseException()
        project, size = project
        if project.get("type") != model.PROJECT:
            return ProjectRead(None, [], 0)
        if not read_releases:
            releases.raiseException()
        releases, more, elided = releases
        found = {doc.get("version") for doc in releases}
        if any(version not in found for version in project.get("versions") or []):
            releases, more, elided = await self._releases_sized(key, whole_below)
        latest = project.get("latest_version")
        if latest in elided:
            at = next(i for i, doc in enumerate(releases) if doc.get("version") == latest)
            whole = await self.release(key, latest, releases[at].get("_rev"))
            if whole is not None:
                more += sum(len(v) for v in (whole.get("info") or {}).values()
                            if isinstance(v, str))
                releases[at] = whole
                elided = elided - {latest}
        return ProjectRead(project, releases, size + more, frozenset(elided))

    async def _releases_sized(self, key: str, whole_below: int | None
                              ) -> tuple[list[dict], int, set[str]]:
        elided: set[str] = set()

        def trim(row: dict) -> int:
            doc = row.get("doc")
            info = doc.get("info") if isinstance(doc, dict) else None
            if not isinstance(info, dict):
                return 0
            long = [k for k, v in info.items()
                    if isinstance(v, str) and len(v) > KEPT_INFO_CHARS]
            if not long:
                return 0
            elided.add(doc.get("version"))
            return sum(len(info.pop(k)) for k in long)

        start, end = release_range(key)
        rows, size = await self.db.rows_sized(
            "_all_docs", trim=trim, whole_below=whole_below if whole_below is not None
            else float("inf"), startkey=start, endkey=end, include_docs=True)
        docs = [row["doc"] for row in rows if row.get("doc")]
        elided.update(doc.get("version") for doc in docs if model.is_description_apart(doc))
        return docs, size, elided

    async def release(self, key: str, version: str, rev: str | None = None) -> dict | None:
        """One release document, whole (at ``rev`` while CouchDB has it; a description
        kept apart back in its ``info``), or None."""
        docid = release_id(key, version)
        found = await self.db.get_or_none(docid, rev=rev) if rev else None
        found = found or await self.db.get_or_none(docid)
        if found is None or not model.is_description_apart(found):
            return found
        text, _ = await self.db.get_attachment(docid, model.DESCRIPTION_ATTACHMENT,
                                               rev=found["_rev"])
        return model.whole_form(found, text)

    async def projects(self, keys: list[str], own_info: bool = True
                       ) -> list[tuple[dict, list[dict]]]:
        """``[(project, releases)]`` of the stored ones among ``keys``, in two requests
        (the release ids come from each project's ``versions``). Without ``own_info``,
        the releases come without their own metadata (``model.drop_own_info``), never
        all held at once: a project of thousands of releases, each with its README."""
        projects = list((await self.project_documents(keys)).values())
        return await self.releases_of(projects, own_info)

    async def releases_of(self, projects: list[dict], own_info: bool = True
                          ) -> list[tuple[dict, list[dict]]]:
        """``[(project, releases)]`` of project documents read, in one request (see
        :meth:`projects`)."""
        owners = {release_id(p["_id"], v): p["_id"]
                  for p in projects for v in p.get("versions") or []}
        releases: dict[str, list[dict]] = {}
        found = await self.db.bulk_get(list(owners),
                                       trim=None if own_info else model.drop_own_info)
        for docid, doc in found.items():
            if not own_info:
                model.drop_own_info(doc)  # (an answer small enough came whole)
            # (by its id: a document another program wrote without "project" must not
            # fail the whole batch, again at each retry)
            if isinstance(doc, dict) and doc.get("type") == model.RELEASE:
                releases.setdefault(owners[docid], []).append(doc)
        return [(p, releases.get(p["_id"], [])) for p in projects]

    async def set_status(self, key: str, status: str, serial: int | None) -> bool:
        """Write a project's PEP 792 ``status`` as PyPI said it at ``serial`` (the
        status sweep's), and nothing else, with the revision just read, read again on a
        conflict. False when not written: not a stored project, quarantined (the
        sync's to change), already so, stored from a newer answer (an upload since),
        or changed by others at every try."""
        for _ in range(CONFLICT_ROUNDS):
            doc = await self.db.get_or_none(key)
            if doc is None or not is_project_doc(doc) or \
                    doc.get("status") in ("quarantined", status) or \
                    newer(doc.get("last_serial"), serial):
                return False
            try:  # (and when PyPI said it: an upload after it only clears an archive)
                await self.db.put({**doc, "status": status, STATUS_SERIAL: serial})
                return True
            except Conflict:
                continue
        return False

    async def release_ids(self, key: str) -> list[str]:
        """The ids of every release document stored for ``key`` (whatever ``versions``
        says: an interrupted write may have left more)."""
        start, end = release_range(key)
        answer = await self.db.all_docs(startkey=start, endkey=end)
        return [row["id"] for row in answer["rows"]]

    async def has_documents(self) -> bool:
        """Whether any project or release is stored (design documents do not count)."""
        before = await self.db.all_docs(endkey="_", limit=1)  # ids sort by code point
        after = await self.db.all_docs(startkey="_\ufff0", limit=1)
        return bool(before["rows"] or after["rows"])

    async def design_count(self) -> int:
        """How many design documents the database holds (the view, the optional guard)."""
        return len((await self.db.all_docs(startkey="_design/",
                                           endkey="_design/\ufff0"))["rows"])

    async def project_ids(self) -> set[str]:
        """Every stored project id (reads ``_all_docs`` whole: for tests and tools)."""
        rows = (await self.db.all_docs())["rows"]
        return {row["id"] for row in rows if is_project_id(row["id"])}

    async def states(self, ids: list[str]) -> dict[str, tuple[str, dict | None]]:
        """``{id: (rev, document, or None for a tombstone)}`` of the stored ``ids``."""
        if not ids:
            return {}
        rows = (await self.db.all_docs(keys=ids, include_docs=True))["rows"]
        return {row["key"]: (row["value"]["rev"], row.get("doc")) for row in rows
                if (row.get("value") or {}).get("rev")}

    async def tombstone_serial(self, docid: str) -> int | None:
        """The serial a removal was written at (None if it did not say): the highest
        one its deleted leaves say. (A document had conflicts once: the tombstone
        CouchDB shows may be one of the losers', which says none.)"""
        serials = [leaf.get("last_serial") for leaf in await self.db.leaves(docid)
                   if leaf.get("_deleted")]
        return max((s for s in serials if isinstance(s, int)), default=None)

    # -- writing -----------------------------------------------------------------------

    async def settle(self, docs: list[dict], states: dict, old: dict | None
                     ) -> list[dict] | None:
        """``docs`` (one project's) with the revisions they replace, or None if anything
        stored (or removed) is newer than them. Removals of what is not stored are
        dropped. ``states`` come from :meth:`states`; ``old`` is the stored project the
        documents were planned against."""
        settled = []
        for doc in docs:
            state = states.get(doc["_id"])
            if is_project_doc(doc) and old is not None:
                # Planned against ``old`` (its _rev is set): a write since then
                # conflicts, unless what is stored now is newer.
                if state is not None and state[1] is not None and newer(
                        state[1].get("last_serial"), doc.get("last_serial")):
                    return None
                if state is not None and state[1] is None and not doc.get("_deleted") and \
                        newer(await self.tombstone_serial(doc["_id"]),
                              doc.get("last_serial")):
                    return None
                settled.append(doc)
                continue
            if state is None:
                if not doc.get("_deleted"):
                    settled.append(doc)
                continue
            rev, stored = state
            if stored is None:  # a tombstone: the removal may be newer than our data
                if doc.get("_deleted"):
                    continue
                if newer(await self.tombstone_serial(doc["_id"]), doc["last_serial"]):
                    return None
                # Written again without a revision: Apache CouchDB refuses the
                # tombstone's as a parent ("conflict"), pouchdb-server takes either.
                doc.pop("_rev", None)
            elif newer(stored.get("last_serial"), doc.get("last_serial")):
                return None
            elif not is_project_doc(doc):  # a release stored by an earlier plan: replace it
                doc["_rev"] = rev
                keep_info(doc, stored)
            settled.append(doc)
        return settled

    async def write(self, docs: list[dict], bases: dict | None = None,
                    keeps_status: Container[str] = ()
                    ) -> tuple[dict[str, str], dict[str, dict | None]]:
        """Write ``docs``, settling conflicts with the stored revision (we own these
        documents; a conflict means an interrupted earlier write, the OPML watcher's
        attachment, or another writer). A document never replaces a newer one.

        ``bases`` gives, for project documents, the stored copy they were planned
        against; those in ``keeps_status`` took their status from it (PyPI did not say
        one), and take the one stored meanwhile (:func:`keep_status`). Returns ``({id: reason} not written, {id: newer stored copy or None
        for a newer removal} dropped as older)``; each document written carries its new
        ``_rev``."""
        rejected: dict[str, str] = {}
        superseded: dict[str, dict | None] = {}
        bases = bases or {}
        pending = []
        for doc in docs:  # what the optional guard would refuse, refused here for free
            problem = model.shape_problem(doc)
            if problem:
                rejected[doc["_id"]] = f"forbidden: {problem}"
            else:
                pending.append(doc)
        for _ in range(CONFLICT_ROUNDS):
            if not pending:
                break
            results = await self.db.bulk_docs([model.stored_form(doc) for doc in pending])
            conflicted = []
            for doc, result in zip(pending, results):
                if result.ok:
                    if result.rev:
                        doc["_rev"] = result.rev
                    continue
                if result.error == "conflict":
                    conflicted.append(doc)
                else:
                    rejected[doc["_id"]] = f"{result.error}: {result.reason}"
            pending = []
            states = await self.states([d["_id"] for d in conflicted])
            for doc in conflicted:
                rev, stored = states.get(doc["_id"], (None, None))
                serial = doc.get("last_serial")
                if stored is None:  # removed meanwhile (or never stored)
                    if doc.get("_deleted"):
                        continue  # already gone
                    if rev and newer(await self.tombstone_serial(doc["_id"]), serial):
                        superseded[doc["_id"]] = None
                        continue
                    if rev and is_project_doc(doc) and bases.get(doc["_id"]) is not None:
                        # Removed by another writer since the plan was made (with the
                        # releases this plan wrote, perhaps): not listed over them.
                        rejected[doc["_id"]] = "conflict: removed by another writer meanwhile"
                        continue
                elif newer(stored.get("last_serial"), serial):
                    superseded[doc["_id"]] = stored
                    continue
                elif doc.get("_deleted") and serial is None:
                    # A removal without a serial (PyPI's 404) cannot tell whether the
                    # copy written meanwhile is newer: asked again next pass.
                    rejected[doc["_id"]] = "conflict: written by another writer meanwhile"
                    continue
                elif (is_project_doc(doc) and not doc.get("_deleted")
                      and not same_project(stored, bases.get(doc["_id"]))):
                    # Another writer stored an older or equal copy meanwhile: its
                    # releases may differ from what this plan assumed. Next pass.
                    rejected[doc["_id"]] = "conflict: written by another writer meanwhile"
                    continue
                if not is_project_doc(doc) and "_attachments" in doc:
                    # Own metadata carried from the copy an earlier round read (its
                    # attachment stubs name that copy's): carried anew from this one.
                    model.drop_own_info(doc)
                if rev and stored is not None:
                    doc["_rev"] = rev
                else:  # (never stored, or removed: see settle)
                    doc.pop("_rev", None)
                if stored is not None and not doc.get("_deleted"):
                    if is_project_doc(doc):
                        keep_attachments(doc, stored)
                        if doc["_id"] in keeps_status:
                            keep_status(doc, stored, bases.get(doc["_id"]))
                    keep_info(doc, stored)
                pending.append(doc)
        for doc in pending:
            rejected[doc["_id"]] = "conflict"
        return rejected, superseded


@dataclass
class ProjectRead:
    """What :meth:`Store.project_read` read: the project document (None if not
    stored), its release documents in id order, the bytes of JSON they hold, and the
    versions whose ``info`` lacks its description (left out: read the release whole,
    :meth:`Store.release`, to show it)."""

    project: dict | None
    releases: list[dict]
    size: int
    elided: frozenset[str] = frozenset()

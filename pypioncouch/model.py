"""PyPI payloads to CouchDB documents, and back. Pure: no I/O.

A project is stored as one project document plus one document per release, so that a
project with thousands of releases and a multi-MB description stays far below
CouchDB's 8 MB ``max_document_size`` (docs/schema.md has the full schema):

- ``<normalized>``: ``type: "project"`` — the display name, PyPI's serial, the latest
  release's ``info`` *without* its description, the fields people query in normalized
  form (``keywords`` as a list, ``classifiers``, ``upload_time`` as
  ``[Y, M, D, h, m, s]``), the versions in PEP 440 order, and a digest per release so
  a sync rewrites only the releases that changed;
- ``<normalized>:<version>``: ``type: "release"`` — the release's files exactly as
  PyPI's JSON API gave them, its yanked flags, ``upload_time`` as a list, and its
  own ``info`` (with the description) once known, with ``info_source`` saying where
  it came from: ``"latest"`` (the project's answer, while this release was PyPI's
  latest) or ``"version"`` (PyPI's per-version answer, fetched by the backfill, on
  demand, or by the sync for a release without files a change names: its yank is
  there alone). A release without its own ``info`` has neither key, and its per-version
  JSON is not made up from another release's (:class:`MissingInfo`).

Everything PyPI says is kept verbatim (null stays null, empty stays empty), so the
JSON and Simple APIs are re-served from CouchDB alone.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging_legacy import version as legacy_version

from pypioncouch import jsonio

PROJECT = "project"
RELEASE = "release"
SCHEMA_VERSION = 1
# The top-level keys of a JSON API answer that live in their own places.
_SPLIT_KEYS = ("info", "releases", "urls")
_QUERY_FIELDS = ("summary", "author", "author_email", "maintainer", "maintainer_email",
                 "license", "license_expression", "home_page", "download_url",
                 "project_urls", "requires_python")
# ASCII only, to the very end: IGNORECASE alone takes the Kelvin sign for a k, and
# ``$`` a trailing newline.
_VALID_NAME = re.compile(r"([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])\Z",
                         re.IGNORECASE | re.ASCII)


# The PEP 792 statuses only a project's Simple page says, which the status sweep
# writes and the sync keeps (pypioncouch/status_sweep.py); quarantine is the sync's.
SWEPT_STATUSES = ("active", "archived", "deprecated")

# Where a release document's ``info`` came from (docs/schema.md).
INFO_FROM_LATEST = "latest"  # the project's JSON API answer, while it was the latest
INFO_FROM_VERSION = "version"  # PyPI's per-version JSON API answer
# A release's own description over this many bytes (as JSON) is stored as the
# attachment ``description`` of its document, not in ``info``: Apache CouchDB refuses
# a document over 8 MB (max_document_size), which attachments do not count towards.
DESCRIPTION_APART_BYTES = 4_000_000
DESCRIPTION_ATTACHMENT = "description"
DESCRIPTION_APART = "description_apart"  # true: the description is that attachment
# Keys of a release document that hold its own metadata (not its files).
_OWN_INFO_KEYS = ("info", "info_source", "requires_dist", "vulnerabilities",
                  DESCRIPTION_APART, "_attachments")


class BadPayload(ValueError):
    """PyPI answered with something that is not a project as the JSON API shapes it."""


class MissingInfo(LookupError):
    """The release is stored, but not its own metadata (PyPI's JSON API gives it for
    the latest release only; the backfill fetches the others)."""

    def __init__(self, project: str, version: str):
        self.project, self.version = project, version
        super().__init__(f"the metadata of {project} {version} is not stored yet")


def normalize(name: str) -> str:
    """PEP 503 normalization (``Foo_Bar.baz`` -> ``foo-bar-baz``)."""
    return canonicalize_name(name)


def is_valid_project_name(name: str) -> bool:
    """A name PyPI could hold (PEP 508): letters, digits, ``._-``, alnum at both ends."""
    return bool(_VALID_NAME.match(name or ""))


def release_id(normalized: str, version: str) -> str:
    return f"{normalized}:{version}"


def release_version(release_id: str) -> str:
    """The version a release document's id names (``<normalized>:<version>``)."""
    return release_id.partition(":")[2]


def release_id_range(normalized: str) -> tuple[str, str]:
    """``(startkey, endkey)`` of a project's release documents in ``_all_docs``."""
    return f"{normalized}:", f"{normalized}:\ufff0"


def version_sort_key(version: str):
    """PyPI's order (Warehouse sorts by packaging_legacy's parse): PEP 440 order, and
    versions PEP 440 cannot parse before all others, in setuptools' old order (1.9-x
    before 1.10-x); equal versions ("1.0", "1.0.0") by their text."""
    return legacy_version.parse(version), version


def upload_time_list(value: str | None) -> list[int] | None:
    """``"2015-06-14T14:38:05[.875222][Z]"`` -> ``[2015, 6, 14, 14, 38, 5]``."""
    if not value:
        return None
    match = re.match(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)", value)
    return [int(part) for part in match.groups()] if match else None


def split_keywords(value: Any) -> list[str]:
    """PyPI's one keywords string (commas or spaces, or empty) as a clean list."""
    if not value:
        return []
    if isinstance(value, list):
        parts = value
    elif "," in value:
        parts = value.split(",")
    else:
        parts = value.split()
    seen: dict[str, None] = {}
    for part in parts:
        word = " ".join(str(part).split())
        if word and word.lower() not in (k.lower() for k in seen):
            seen[word] = None
    return list(seen)


# The addresses of an RFC 822 list (commas inside quotes are a name's), and one with a
# display name, ``Jane Doe <jane@x.org>``. Both match in linear time: a field from
# another index may be any text. (The catalog view's map.js reads names the same way.)
_ADDRESSES = re.compile(r'(?:"[^"]*"|[^,"])+')
_NAMED_ADDRESS = re.compile(r"([^<>]*)<[^<>]*>")
_BLANKS = " \t\r\n"  # (JavaScript's trim and Python's strip differ past these)


def person_names(name: Any, email: Any) -> list[str]:
    """Who an author (or maintainer) field names: the name, then the display names of
    its email field's addresses (PEP 621 metadata leaves the name empty and writes
    ``Jane Doe <jane@x.org>`` there, which PyPI shows as Jane Doe), each once."""
    candidates = [name] if isinstance(name, str) else []
    if isinstance(email, str):
        for part in _ADDRESSES.findall(email):
            named = _NAMED_ADDRESS.fullmatch(part.strip(_BLANKS))
            if named:
                candidates.append(named.group(1).strip(_BLANKS).strip('"'))
    found: list[str] = []
    for candidate in candidates:
        candidate = candidate.strip(_BLANKS)
        if candidate and candidate.lower() not in (f.lower() for f in found):
            found.append(candidate)
    return found


def _digest(value: Any) -> str:
    return hashlib.sha1(jsonio.dumps_sorted(value)).hexdigest()[:16]


def _earliest_upload(files: list[dict]) -> str | None:
    times = [f.get("upload_time_iso_8601") or f.get("upload_time") for f in files]
    times = [t for t in times if t]
    return min(times) if times else None


def _is_file_entry(entry: Any) -> bool:
    """Whether ``entry`` has what every page made from it needs of a file."""
    return (isinstance(entry, dict) and isinstance(entry.get("filename"), str)
            and isinstance(entry.get("url"), str)
            and isinstance(entry.get("digests", {}), dict))


def _check_payload(payload: Any) -> None:
    if not isinstance(payload, dict):
        raise BadPayload("the JSON API answer is not an object")
    info = payload.get("info")
    if not isinstance(info, dict) or not isinstance(info.get("name"), str):
        raise BadPayload("the JSON API answer has no info.name")
    if not isinstance(info.get("version"), str):
        raise BadPayload("the JSON API answer has no info.version")
    # (without ``releases``, every stored release but the latest would look removed)
    if "releases" not in payload:
        raise BadPayload("the JSON API answer has no releases")
    releases = payload["releases"]
    if not isinstance(releases, dict) or not all(
            isinstance(files, list) and all(_is_file_entry(f) for f in files)
            for files in releases.values()):
        raise BadPayload("the JSON API answer's releases are not lists of files")
    if not all(_is_file_entry(f) for f in payload.get("urls") or []):
        raise BadPayload("the JSON API answer's urls are not files")
    if not isinstance(payload.get("last_serial", 0), int):
        raise BadPayload("the JSON API answer's last_serial is not an integer")
    _check_lists(info, "the JSON API answer")


# Fields of ``info`` stored as lists (a text would be stored a character an item: one-
# letter classifiers on the browse pages).
_LIST_FIELDS = ("classifiers", "requires_dist")


def _check_lists(info: dict, answer: str) -> None:
    for field in _LIST_FIELDS:
        value = info.get(field)
        if value is not None and not (isinstance(value, list) and
                                      all(isinstance(item, str) for item in value)):
            raise BadPayload(f"{answer}'s info.{field} is not a list of texts")


def release_document(normalized: str, name: str, version: str, files: list[dict],
                     info: dict | None, serial: int | None = None,
                     vulnerabilities: list | None = None) -> dict:
    """One release's document (without ``_rev``); ``serial`` is the project's serial
    in the answer it comes from (a stored release is never replaced by older data);
    ``vulnerabilities`` those PyPI listed with ``info`` (they are the release's own)."""
    first = files[0] if files else {}
    uploaded = _earliest_upload(files)
    doc = {
        "_id": release_id(normalized, version),
        "type": RELEASE,
        "project": normalized,
        "name": name,
        "version": version,
        "files": files,
        "yanked": bool(first.get("yanked")) if files else bool((info or {}).get("yanked")),
        "yanked_reason": first.get("yanked_reason") if files else (info or {}).get(
            "yanked_reason"),
        "requires_python": first.get("requires_python") if files else (info or {}).get(
            "requires_python"),
        "upload_time": upload_time_list(uploaded),
        "upload_time_iso_8601": uploaded,
        "last_serial": serial,
    }
    if info is not None:
        doc["info"] = info
        doc["info_source"] = INFO_FROM_LATEST
        doc["requires_dist"] = list(info.get("requires_dist") or [])
        if vulnerabilities is not None:
            doc["vulnerabilities"] = vulnerabilities
    return doc


def has_own_info(release: dict) -> bool:
    return release.get("info") is not None


def stored_form(doc: dict) -> dict:
    """``doc`` as written to CouchDB: a release's description over
    ``DESCRIPTION_APART_BYTES`` goes into its attachment (any other is ``doc``)."""
    info = doc.get("info")
    text = info.get("description") if isinstance(info, dict) else None
    if not isinstance(text, str) or len(text) * 6 <= DESCRIPTION_APART_BYTES:
        return doc  # (the common case, without encoding it: 6 bytes a character at most)
    if len(jsonio.dumps(text)) <= DESCRIPTION_APART_BYTES:  # (as CouchDB counts it)
        return doc
    encoded = text.encode("utf-8", "surrogatepass")
    return {**doc, "info": {k: v for k, v in info.items() if k != "description"},
            DESCRIPTION_APART: True, "_attachments": {DESCRIPTION_ATTACHMENT: {
                "content_type": "text/plain; charset=utf-8",
                "data": base64.b64encode(encoded).decode("ascii")}}}


def is_description_apart(doc: dict) -> bool:
    """Whether a stored release's description is its attachment (``stored_form``)."""
    return doc.get(DESCRIPTION_APART) is True and isinstance(doc.get("info"), dict)


def whole_form(doc: dict, description: bytes) -> dict:
    """A stored release whose description is apart, with ``description`` (its
    attachment's bytes) back in its ``info``: the document as PyPI's data made it."""
    whole = {k: v for k, v in doc.items() if k not in (DESCRIPTION_APART, "_attachments")}
    whole["info"] = {**doc["info"],
                     "description": description.decode("utf-8", "surrogatepass")}
    return whole


def lacks_own_info(project: dict, release: dict | None, version: str | None) -> bool:
    """Whether ``/pypi/<p>/<version>/json`` has no answer of its own in the store: the
    release is stored, it is not the latest, and its own ``info`` is not stored."""
    return (version is not None and release is not None
            and version != project.get("latest_version") and not has_own_info(release))


def drop_own_info(doc: dict) -> None:
    """Take a release document's own metadata out of it (to carry another copy's)."""
    for key in _OWN_INFO_KEYS:
        doc.pop(key, None)


def is_another_upload(release: dict, stored: dict) -> bool:
    """Whether ``release`` is another upload of its version than ``stored``: removed on
    PyPI and uploaded again, perhaps with other metadata. PyPI never takes a filename
    twice, so the two share no file. (With no files on either side, it cannot tell.)"""
    def names(doc: dict) -> set:
        return {f.get("filename") for f in doc.get("files") or [] if isinstance(f, dict)}
    new, old = names(release), names(stored)
    return bool(new) and bool(old) and new.isdisjoint(old)


def own_info_of(previous: dict) -> dict:
    """The own-metadata keys of a stored release document (to carry them over)."""
    kept = {k: previous[k] for k in _OWN_INFO_KEYS if k in previous}
    if "info" in kept:
        kept.setdefault("info_source", INFO_FROM_LATEST)  # stored before info_source
    return kept


def check_release_info(payload: Any, normalized: str, version: str) -> dict:
    """The ``info`` of a per-version JSON API answer (``/pypi/<p>/<v>/json``), checked
    to be this very release's: PyPI matches versions canonically, so ``1.0`` may
    answer for ``1.0.0``; another release's metadata is refused, never stored."""
    if not isinstance(payload, dict) or not isinstance(payload.get("info"), dict):
        raise BadPayload("the per-version JSON API answer has no info")
    info = payload["info"]
    if not isinstance(info.get("name"), str) or normalize(info["name"]) != normalized:
        raise BadPayload(f"asked for {normalized}, PyPI answered {info.get('name')!r}")
    if info.get("version") != version:
        raise BadPayload(f"asked for {normalized} {version}, PyPI answered version "
                         f"{info.get('version')!r}")
    _check_lists(info, "the per-version JSON API answer")
    return info


def release_vulnerabilities(payload: dict) -> list | None:
    """The ``vulnerabilities`` of a JSON API answer: the answered release's own (PyPI
    lists those of the release in ``info``); None when the answer has none."""
    found = payload.get("vulnerabilities")
    return found if isinstance(found, list) else None


def with_own_info(release: dict, info: dict, vulnerabilities: list | None = None) -> dict:
    """The release document with its own ``info`` (and ``vulnerabilities``) from
    PyPI's per-version answer. A release without files takes its yanked flags and
    Requires-Python from it."""
    doc = dict(release, info=info, info_source=INFO_FROM_VERSION,
               requires_dist=list(info.get("requires_dist") or []))
    if vulnerabilities is not None:
        doc["vulnerabilities"] = vulnerabilities
    if not release.get("files"):
        doc.update(own_flags(info))
    return doc


def own_flags(info: dict) -> dict:
    """A release without files' yanked flags and Requires-Python: only its own
    metadata (``info``) says them."""
    return {"yanked": bool(info.get("yanked")), "yanked_reason": info.get("yanked_reason"),
            "requires_python": info.get("requires_python")}


def own_flags_differ(stored: dict, payload: Any) -> bool:
    """Whether a release without files' per-version answer (``payload``) says other
    yanked flags or Requires-Python than its ``stored`` document has. (A malformed
    answer differs: taken, it is refused and said where it is used.)"""
    info = payload.get("info") if isinstance(payload, dict) else None
    if not isinstance(info, dict):
        return True
    return own_flags(info) != {key: stored.get(key) for key in own_flags({})}


def answer_changes_releases(payload: Any, recorded: Any) -> bool:
    """Whether a JSON API answer's releases differ from a project's record of them
    (``release_digests``): one added or removed, or its files or metadata changed. A
    malformed answer, or a record unknown in part, counts as a change."""
    if not isinstance(recorded, dict):
        return True
    try:
        project, _ = project_documents(payload)
    except BadPayload:
        return True
    digests = project["release_digests"]
    return digests.keys() != recorded.keys() or any(
        release_needs_write(new, recorded.get(version)) for version, new in digests.items())


def project_documents(payload: dict, *, status: str = "active",
                      serial: int | None = None) -> tuple[dict, list[dict]]:
    """A JSON API answer (``/pypi/<p>/json``) -> ``(project document, release documents)``.

    The documents' ``last_serial`` is ``serial``, the answer's as its freshness was
    checked (its ``X-PyPI-Last-Serial``), else the body's: an index that leaves
    ``last_serial`` out of the body must not store a project without one (any older
    copy would then pass for newer).

    Raises :class:`BadPayload` when the answer is not shaped like the JSON API's,
    down to a field of the wrong type (``"keywords": 42``): one malformed answer costs
    its project, not the pass.
    """
    _check_payload(payload)
    try:
        return _shape(payload, status,
                      serial if serial is not None else payload.get("last_serial"))
    except (TypeError, ValueError, AttributeError, KeyError, UnicodeError) as error:
        raise BadPayload(f"a field of the JSON API answer has an unexpected type or value "
                         f"({type(error).__name__}: {str(error)[:120]})") from None


def _shape(payload: dict, status: str, serial: int | None) -> tuple[dict, list[dict]]:
    info = payload["info"]
    name = info["name"]
    normalized = normalize(name)
    latest = info["version"]
    releases: dict[str, list[dict]] = dict(payload.get("releases") or {})
    if latest not in releases:  # PyPI hid it: keep what we have
        releases[latest] = list(payload.get("urls") or [])
    latest_vulnerabilities = release_vulnerabilities(payload)
    release_docs = [release_document(normalized, name, version, files,
                                     info if version == latest else None, serial,
                                     latest_vulnerabilities if version == latest else None)
                    for version, files in releases.items()]
    requires, unparsable = requirements_by_name(info.get("requires_dist"), normalized)
    versions = sorted(releases, key=version_sort_key)
    info_without_description = {k: v for k, v in info.items() if k != "description"}
    latest_doc = next(d for d in release_docs if d["version"] == latest)
    project = {
        "_id": normalized,
        "type": PROJECT,
        "schema": SCHEMA_VERSION,
        "name": name,
        "status": status,
        "last_serial": serial,
        "latest_version": latest,
        "versions": versions,
        **{field: info.get(field) for field in _QUERY_FIELDS},
        "keywords": split_keywords(info.get("keywords")),
        "classifiers": list(info.get("classifiers") or []),
        "upload_time": latest_doc["upload_time"],
        "description_length": len(info.get("description") or ""),
        "requires": requires,
        "requires_unparsable": unparsable,
        "info": info_without_description,
        "pypi": {k: v for k, v in payload.items() if k not in _SPLIT_KEYS},
        "release_digests": {d["version"]: release_digests(d) for d in release_docs},
    }
    return project, release_docs


@functools.lru_cache(maxsize=16384)
def _required_name(text: str) -> str | None:
    """The normalized name a requirement string names, None if it does not parse.
    (Kept: the same few thousand strings recur across PyPI, and parsing one is the
    costliest step of shaping a project.)"""
    try:
        return normalize(Requirement(text).name)
    except InvalidRequirement:
        return None


def requirements_by_name(requires_dist: Any, own: str) -> tuple[dict[str, list[str]],
                                                               list[str]]:
    """A release's ``requires_dist`` as ``({normalized name: [requirement as written,
    ...]}, [requirements that do not parse])``; a project's requirement on itself
    (``foo[extra]`` in foo's own extras) is not a dependency."""
    required: dict[str, list[str]] = {}
    unparsable: list[str] = []
    for text in requires_dist if isinstance(requires_dist, list) else []:
        name = _required_name(text) if isinstance(text, str) else None
        if name is None:
            unparsable.append(text if isinstance(text, str) else json.dumps(text))
            continue
        if name != own:
            required.setdefault(name, []).append(text)
    return required, unparsable


def open_advisories(vulnerabilities: Any) -> list[dict]:
    """The advisories of a release (PyPI's ``vulnerabilities``, OSV) not withdrawn."""
    return [v for v in vulnerabilities if isinstance(v, dict) and not v.get("withdrawn")] \
        if isinstance(vulnerabilities, list) else []


def release_digests(doc: dict) -> list[str | None]:
    """``[digest of the files part, digest of info or None]`` of a release document."""
    if "info" not in doc:
        return [files_digest(doc), None]
    # (advisories only when there are some: digests stored before them stay valid)
    own = [doc["info"], doc["vulnerabilities"]] if doc.get("vulnerabilities") else doc["info"]
    return [files_digest(doc), _digest(own)]


def is_recorded(doc: dict, recorded: Any) -> bool:
    """Whether a release document is the copy ``recorded`` (its project's
    ``release_digests`` entry) describes. A document whose description is kept apart
    carries its info without it (so its info digest cannot be taken): by its files."""
    digests = release_digests(doc)
    if is_description_apart(doc):
        return isinstance(recorded, list) and recorded[:1] == digests[:1]
    return recorded == digests


def files_digest(doc: dict) -> str:
    """The digest of a release document's files part: all but its own metadata."""
    # Not the serial: a release PyPI did not change is not rewritten for a new serial.
    return _digest({k: v for k, v in doc.items()
                    if k not in ("_id", "_rev", "last_serial") + _OWN_INFO_KEYS})


def missing_releases(project: dict, releases: list[dict]) -> list[str]:
    """The versions ``project`` names whose documents are not among ``releases``: a
    replica whose replication brought the project first (it copies in no set order),
    or a cluster's copy behind. An answer without them would pass for the whole
    project at its serial (a mirror following this one would delete them)."""
    read = {release.get("version") for release in releases}
    return [version for version in project.get("versions") or [] if version not in read]


def releases_as_recorded(project: dict, releases: list[dict]) -> bool:
    """Whether ``releases`` are the copies ``project`` records (by their files part;
    a release recorded as unknown passes, as does one without files, whose yanked
    flags and Requires-Python the backfill sets from its own metadata): read apart
    from their project (a cluster's range read answers from one copy, which may lag),
    they can be older or newer. A record of another shape is not as recorded."""
    recorded = project.get("release_digests")
    if not isinstance(recorded, dict):
        return not releases
    if missing_releases(project, releases):
        return False  # (one it names, not read)
    for release in releases:
        version = release.get("version")
        digests = recorded.get(version) if isinstance(version, str) else None
        if digests is None or (isinstance(digests, list) and digests and digests[0] is None):
            continue  # not recorded, or recorded as unknown
        if not isinstance(digests, list) or not digests:
            return False
        if digests[0] != files_digest(release) and (release.get("files") or digests[0] != (
                files_digest({**release, **_FILELESS_AS_SYNCED}))):
            return False
    return True


# What the sync writes for a release without files that is not the latest (its own
# metadata, from the backfill or the sync's per-version ask, then sets these).
_FILELESS_AS_SYNCED = {"yanked": False, "yanked_reason": None, "requires_python": None}


def with_releases_unknown(project: dict, versions: set[str]) -> dict:
    """``project`` with the digests of ``versions`` unknown (None): whatever is stored
    for those releases is written again by the next sync."""
    recorded = project.get("release_digests") or {}
    return {**project, "release_digests": {
        version: None if version in versions else digests
        for version, digests in recorded.items()}}


def release_needs_write(new_digests: list, old_digests: list | None) -> bool:
    """Whether a release differs from its stored copy, by their digests
    (``release_digests`` of the new document, and the project document's record;
    None there means unknown: a concurrent writer's copy may be stored)."""
    if old_digests is None:
        return True
    if new_digests[0] != old_digests[0]:
        return True
    return new_digests[1] is not None and new_digests[1] != old_digests[1]


def merged_digests(new_digests: list, old_digests: list | None) -> list[str | None]:
    """The digests recorded for a release after a sync: an ``info`` PyPI no longer gives
    (the release is not the latest any more) is kept, so its digest is too."""
    if new_digests[1] is None and old_digests is not None:
        return [new_digests[0], old_digests[1]]
    return list(new_digests)


def shape_problem(doc: dict) -> str | None:
    """Why ``doc`` is not a project or release document as the views and the web front
    rely on (None if it is): the rules of the optional write guard
    (``couchapp/validate_doc_update.js``), checked by our writer before it writes."""
    if doc.get("_deleted") or doc["_id"].startswith("_design/"):
        return None
    required = {PROJECT: ("name", "versions", "release_digests"),
                RELEASE: ("project", "version", "files")}.get(doc.get("type"))
    if required is None:
        return "documents here are of type project or release"
    missing = [name for name in required if name not in doc]
    if missing:
        return f"missing field {missing[0]}"
    if doc["type"] == PROJECT and ":" in doc["_id"]:
        return "a project id is a normalized name (no colon)"
    if doc["type"] == RELEASE and doc["_id"] != release_id(doc["project"], doc["version"]):
        return "a release id is <project>:<version>"
    return None


def empty_project_document(name: str, serial: int | None, status: str) -> dict:
    """A project PyPI knows but shows no release of: new with no upload yet, or
    quarantined (its JSON API answers 404, its Simple page 200 with no files)."""
    normalized = normalize(name)
    return {
        "_id": normalized, "type": PROJECT, "schema": SCHEMA_VERSION, "name": name,
        "status": status, "last_serial": serial, "latest_version": None, "versions": [],
        **{field: None for field in _QUERY_FIELDS},
        "keywords": [], "classifiers": [], "upload_time": None, "description_length": 0,
        "requires": {}, "requires_unparsable": [], "info": None, "pypi": {"last_serial": serial}, "release_digests": {},
    }


def has_json_api(project: dict) -> bool:
    """Whether PyPI's JSON API answers for the project at all: not quarantined, and
    with metadata (a project without releases has none)."""
    return project.get("info") is not None and project.get("status") != "quarantined"


def json_api_payload(project: dict, releases: list[dict], version: str | None = None
                     ) -> dict | None:
    """The JSON API answer re-built from stored documents (``/pypi/<p>/json`` when
    ``version`` is None, else ``/pypi/<p>/<version>/json``); None: the release shown,
    or for the project's answer one it names, is not among ``releases``.

    Raises :class:`MissingInfo` for a stored release whose own ``info`` is not: an
    answer with another release's metadata would be made up.
    """
    if not has_json_api(project):
        return None
    by_version = {doc["version"]: doc for doc in releases}
    chosen = project["latest_version"] if version is None else version
    if chosen not in by_version or (version is None and missing_releases(project, releases)):
        return None
    release = by_version[chosen]
    if lacks_own_info(project, release, version):
        raise MissingInfo(project["_id"], chosen)
    info = dict(release.get("info") or project["info"])
    if release["files"] and "yanked" in info:
        # Yanking changes a release's files, not the info stored when it was fetched.
        info.update(yanked=release["yanked"], yanked_reason=release["yanked_reason"])
    payload = dict(project.get("pypi") or {})
    if chosen != project["latest_version"] and "vulnerabilities" in payload:
        # The project's are the latest release's; an older one's are its own (none
        # known: none, never the latest's).
        payload["vulnerabilities"] = release.get("vulnerabilities") or []
    payload["info"] = info
    payload["urls"] = release["files"]
    if version is None:
        payload["releases"] = {v: by_version[v]["files"] for v in project["versions"]}
    return payload


def dump_json_api(payload: dict) -> bytes:
    """Bytes as PyPI's JSON API writes them: compact, keys sorted, trailing newline."""
    return jsonio.dumps_sorted(payload) + b"\n"

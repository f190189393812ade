"""The PyPI Simple API, pure: PEP 503 HTML and PEP 691 JSON from file entries.

Used by the web front, which renders from the JSON API file entries it stored. (The
PyPI simulator renders its own pages, apart from this module, so tests compare the two.)
Follows Warehouse (reference §4): PEP 592 yanked,
PEP 700 versions/size/upload-time, PEP 658/714 ``core-metadata`` (and Warehouse's
``data-dist-info-metadata``, as PyPI writes it; never the ``dist-info-metadata``
spelling that crashes pip 22.3-23.1), PEP 740 ``provenance`` (null when unknown, as
PyPI keeps it), PEP 792 status.
"""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any, Iterable

from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from pypioncouch import jsonio
from pypioncouch.model import version_sort_key

API_VERSION = "1.4"
HTML = "text/html"
V1_HTML = "application/vnd.pypi.simple.v1+html"
V1_JSON = "application/vnd.pypi.simple.v1+json"
OFFERS = (HTML, V1_HTML, V1_JSON)


def normalize(name: str) -> str:
    """PEP 503 normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


def content_type(chosen: str) -> str:
    """The ``Content-Type`` of an answer of type ``chosen``: HTML says its charset (a
    browser would read it as windows-1252; PyPI's says UTF-8 too), the PEP 691 types
    go bare, as PyPI sends them."""
    return chosen + "; charset=utf-8" if chosen == HTML else chosen


def negotiate(accept: str | None, offers: tuple[str, ...] = OFFERS) -> str | None:
    """The offer ``accept`` prefers as Warehouse picks it (reference §4, WebOb's
    ``acceptable_offers``), or None when it accepts none of them.

    Each offer takes the q of the most specific media range that matches it; q=0 means
    "not this"; the highest q wins, a tie goes to the earlier offer. No header (or one
    without a single valid media range) accepts anything: the first offer. werkzeug
    parses the header.
    """
    ranges = [(media.split(";")[0].strip().lower(), q)
              for media, q in parse_accept_header(accept, MIMEAccept)]
    if not any("/" in media for media, _ in ranges):
        return offers[0]
    best, best_q = None, 0.0
    for offer in offers:  # (a later offer must beat an earlier one to win)
        q = _quality(offer, ranges)
        if q > best_q:
            best, best_q = offer, q
    return best


def _quality(offer: str, ranges: list[tuple[str, float]]) -> float:
    kind = offer.split("/")[0]
    found = None  # (specificity, q)
    for media, q in ranges:
        specificity = (2 if media == offer else 1 if media == f"{kind}/*"
                       else 0 if media == "*/*" else None)
        if specificity is not None and (found is None or specificity > found[0]):
            found = (specificity, q)
    return 0.0 if found is None else found[1]


def upload_time_z(entry: dict) -> str | None:
    """``yyyy-mm-ddThh:mm:ss[.ffffff]Z`` from a JSON API file entry."""
    iso = _text(entry.get("upload_time_iso_8601"))
    if iso:
        return iso
    plain = _text(entry.get("upload_time"))
    return plain + "Z" if plain else None


def _text(value: Any) -> str | None:
    """A string PyPI gives, or None: another index may store a number where PyPI has
    text (a Requires-Python of 3), and a page made from it failed with a 500."""
    return value if isinstance(value, str) and value else None


def simple_files(releases: dict[str, list[dict]]) -> tuple[list[str], list[dict]]:
    """PEP 700 ``versions`` (those with files) and PEP 691 ``files`` from the JSON API's
    ``releases`` mapping, ordered by version, then filename."""
    versions = sorted((v for v, files in releases.items() if files), key=version_sort_key)
    files = []
    for version in versions:
        for entry in sorted(releases[version], key=lambda e: e.get("filename", "")):
            files.append(simple_file(entry))
    return versions, files


def simple_file(entry: dict) -> dict:
    """One PEP 691 file from one JSON API file entry, with PyPI's keys in PyPI's order
    (reference §4.2): an empty Requires-Python is null, the metadata hash also under
    Warehouse's ``data-dist-info-metadata``, and ``provenance`` null when unknown."""
    digests = entry.get("digests") or {}
    hashes = {k: digests[k] for k in ("sha256",) if _text(digests.get(k))}
    yanked = bool(entry.get("yanked"))
    if yanked and _text(entry.get("yanked_reason")):
        yanked = entry["yanked_reason"]
    metadata = entry.get("core-metadata") or entry.get("data-dist-info-metadata") or False
    metadata = metadata if isinstance(metadata, dict) and all(
        isinstance(v, str) for v in metadata.values()) else False
    return {
        "filename": entry["filename"],
        "url": entry["url"],
        "hashes": hashes,
        "requires-python": _text(entry.get("requires_python")),
        "size": entry.get("size"),
        "upload-time": upload_time_z(entry),
        "yanked": yanked,
        "core-metadata": metadata,
        "data-dist-info-metadata": metadata,
        "provenance": _text(entry.get("provenance")),
    }


def project_json(name: str, versions: list[str], files: list[dict], serial: int | None,
                 status: str = "active") -> bytes:
    """The PEP 691 project page."""
    meta = {"api-version": API_VERSION} if serial is None else \
        {"_last-serial": serial, "api-version": API_VERSION}
    page = {"meta": meta,
            "name": normalize(name), "project-status": {"status": status},
            "versions": versions, "files": files}
    return jsonio.dumps(page)


def _anchor(file: dict) -> str:
    href = file["url"]
    if file["hashes"].get("sha256"):
        href += "#sha256=" + file["hashes"]["sha256"]
    attributes = [f'href="{escape(href)}"']
    if file.get("requires-python"):
        attributes.append(f'data-requires-python="{escape(file["requires-python"])}"')
    if file.get("yanked") is not False and file.get("yanked") is not None:
        reason = file["yanked"] if isinstance(file["yanked"], str) else ""
        attributes.append(f'data-yanked="{escape(reason)}"')
    metadata = file.get("core-metadata")
    if isinstance(metadata, dict) and metadata.get("sha256"):
        value = escape("sha256=" + metadata["sha256"])
        attributes.append(f'data-dist-info-metadata="{value}" data-core-metadata="{value}"')
    if file.get("provenance"):
        attributes.append(f'data-provenance="{escape(file["provenance"])}"')
    return f'    <a {" ".join(attributes)}>{escape(file["filename"])}</a><br />'


def project_html(name: str, files: list[dict], serial: int | None,
                 status: str = "active") -> bytes:
    """The PEP 503 project page, as Warehouse writes it."""
    title = escape(normalize(name))
    lines = ["<!DOCTYPE html>", "<html>", "  <head>",
             f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
             f'    <meta name="pypi:project-status" content="{escape(status)}">',
             f"    <title>Links for {title}</title>", "  </head>", "  <body>",
             f"    <h1>Links for {title}</h1>"]
    lines += [_anchor(file) for file in files]
    lines += ["  </body>", "</html>"] + ([] if serial is None else [f"<!--SERIAL {serial}-->"])
    return ("\n".join(lines) + "\n").encode("utf-8", "replace")  # (a lone surrogate: "?")


def index_html_head() -> bytes:
    return (f'<!DOCTYPE html>\n<html>\n  <head>\n'
            f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
            f'    <title>Simple index</title>\n  </head>\n  <body>\n').encode()


def index_html_items(projects: Iterable[tuple[str, str]]) -> bytes:
    """Anchors of the PEP 503 index: ``projects`` yields ``(normalized, display)``."""
    return "".join(f'    <a href="/simple/{escape(normalized)}/">{escape(display)}</a>\n'
                   for normalized, display in projects).encode("utf-8", "replace")


INDEX_HTML_TAIL = b"  </body>\n</html>\n"


def index_html(projects: Iterable[tuple[str, str]]) -> bytes:
    return index_html_head() + index_html_items(projects) + INDEX_HTML_TAIL


def index_json_head(serial: int | None) -> bytes:
    known = b"" if serial is None else b'"_last-serial":' + json.dumps(serial).encode() + b","
    return (b'{"meta":{' + known + b'"api-version":"' + API_VERSION.encode()
            + b'"},"projects":[')


def index_json_items(projects: Iterable[tuple[str, int | None]], first: bool) -> bytes:
    """Items of the PEP 691 index: ``projects`` yields ``(display, last_serial)``;
    ``first`` says whether nothing was written before them (no leading comma)."""
    items = [jsonio.dumps({"_last-serial": serial, "name": display})
             for display, serial in projects]
    if not items:
        return b""
    return (b"" if first else b",") + b",".join(items)


INDEX_JSON_TAIL = b"]}"


def index_json(projects: Iterable[tuple[str, int | None]], serial: int | None) -> bytes:
    return index_json_head(serial) + index_json_items(projects, True) + INDEX_JSON_TAIL

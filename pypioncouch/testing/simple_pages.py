"""The simulator's Simple API pages (PEP 503 HTML, PEP 691 JSON), as PyPI renders them.

Written from the reference (../shared/reference/pypi-api.md §4), apart from the
product's ``pypioncouch.simple``: tests compare the mirror's pages with these byte for
byte, so a rendering bug in the product cannot hide by showing on both sides. Nothing
here imports from ``pypioncouch`` outside ``pypioncouch.testing``.

What PyPI does and this copies:

- content negotiation: the offers ``text/html``, ``v1+html``, ``v1+json`` in that order;
  each takes the q of the most specific media range naming it, q=0 refuses it, the
  highest q wins and a tie goes to the earlier offer; no header, or nothing acceptable,
  gives ``text/html`` (never a 406);
- versions in PEP 440 order (``packaging``), versions PEP 440 cannot parse first, in
  setuptools' old order (Warehouse's legacy versions; written out below, not taken
  from the library the product uses), and only versions with files; files by
  version, then filename;
- a file carries ``filename``, ``url``, ``hashes``, ``requires-python`` (null when the
  release has none, also for an empty one), ``size``, ``upload-time``, ``yanked``
  (false, true or the reason), ``core-metadata`` and Warehouse's misnamed
  ``data-dist-info-metadata`` (both the same), and ``provenance`` (null when absent);
- HTML anchors with ``#sha256=``, ``data-requires-python``, ``data-yanked`` (the
  reason, or empty), both metadata attributes, ``data-provenance``, every value
  HTML-escaped; ``<!--SERIAL n-->`` after ``</html>``.
"""

from __future__ import annotations

import json
import re
from html import escape

from packaging.version import InvalidVersion, Version

API_VERSION = "1.4"
HTML = "text/html"
V1_HTML = "application/vnd.pypi.simple.v1+html"
V1_JSON = "application/vnd.pypi.simple.v1+json"
OFFERS = (HTML, V1_HTML, V1_JSON)


def version_order(version: str) -> tuple:
    """Sort key: PEP 440 order, versions it cannot parse before all others."""
    try:
        return (1, Version(version), (), version)
    except InvalidVersion:
        return (0, None, _setuptools_parts(version), version)


def _setuptools_parts(version: str) -> tuple[str, ...]:
    """setuptools' order before PEP 440 (pkg_resources.parse_version): numbers compare
    as numbers, trailing zeros of a number series drop, words compare as text below
    numbers, ``pre``/``preview``/``rc`` mean ``c``, ``dev`` sorts below every word and
    a ``-`` starts a post-release part."""
    words = {"pre": "c", "preview": "c", "rc": "c", "dev": "@", "-": "final-"}
    parts: list[str] = []
    for piece in re.findall(r"\d+|[a-z]+|-|[^\da-z.-]+", version.lower()) + ["final"]:
        piece = words.get(piece, piece)
        part = piece.zfill(8) if piece[0] in "0123456789" else "*" + piece
        if part.startswith("*"):
            if part < "*final":
                while parts and parts[-1] == "*final-":
                    parts.pop()
            while parts and parts[-1] == "00000000":
                parts.pop()
        parts.append(part)
    return tuple(parts)


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    """``[(type, subtype, q)]`` of an Accept header; malformed parts are skipped."""
    found = []
    for part in accept.split(","):
        media, *params = [piece.strip() for piece in part.split(";")]
        kind, slash, sub = media.lower().partition("/")
        if not slash or not kind or not sub:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        found.append((kind, sub, q))
    return found


def header_for(content_type: str) -> str:
    """The ``Content-Type`` header PyPI sends with a page of that type: Pyramid adds
    ``charset=utf-8`` to ``text/*`` types (Warehouse's docs show
    ``text/html; charset=utf-8``), not to the PEP 691 ones."""
    return f"{content_type}; charset=utf-8" if content_type.startswith("text/") \
        else content_type


def choose_content_type(accept: str | None) -> str:
    """The content type PyPI answers a request with this Accept header."""
    ranges = _ranges(accept or "")
    if not ranges:
        return HTML
    scored = []
    for position, offer in enumerate(OFFERS):
        kind, _, sub = offer.partition("/")
        best = None  # (specificity, q)
        for range_kind, range_sub, q in ranges:
            if (range_kind, range_sub) == (kind, sub):
                specificity = 2
            elif range_kind == kind and range_sub == "*":
                specificity = 1
            elif (range_kind, range_sub) == ("*", "*"):
                specificity = 0
            else:
                continue
            if best is None or specificity > best[0]:
                best = (specificity, q)
        if best is not None and best[1] > 0:
            scored.append((-best[1], position, offer))
    return min(scored)[2] if scored else HTML


def _dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def detail_json(name: str, versions: list[str], files: list[dict], serial: int,
                status: str) -> bytes:
    """``/simple/<name>/`` as PEP 691 JSON; ``files`` as :func:`pep691_file` makes them."""
    return _dumps({"meta": {"_last-serial": serial, "api-version": API_VERSION},
                   "name": name, "project-status": {"status": status},
                   "versions": versions, "files": files})


def pep691_file(*, filename: str, url: str, sha256: str, requires_python: str | None,
                size: int, upload_time: str, yanked: bool, yanked_reason: str | None,
                metadata_sha256: str | None, provenance: str | None = None) -> dict:
    """One file of a PEP 691 project page, with PyPI's keys in PyPI's order."""
    metadata = {"sha256": metadata_sha256} if metadata_sha256 else False
    return {"filename": filename, "url": url, "hashes": {"sha256": sha256},
            "requires-python": requires_python or None, "size": size,
            "upload-time": upload_time,
            "yanked": yanked_reason if yanked and yanked_reason else bool(yanked),
            "core-metadata": metadata, "data-dist-info-metadata": metadata,
            "provenance": provenance}


def _attributes(file: dict) -> str:
    pairs = [("href", f"{file['url']}#sha256={file['hashes']['sha256']}")]
    if file["requires-python"]:
        pairs.append(("data-requires-python", file["requires-python"]))
    if file["yanked"] is not False:
        pairs.append(("data-yanked", file["yanked"] if isinstance(file["yanked"], str)
                      else ""))
    if file["core-metadata"]:
        value = f"sha256={file['core-metadata']['sha256']}"
        pairs += [("data-dist-info-metadata", value), ("data-core-metadata", value)]
    if file["provenance"]:
        pairs.append(("data-provenance", file["provenance"]))
    return " ".join(f'{name}="{escape(value, quote=True)}"' for name, value in pairs)


def detail_html(name: str, files: list[dict], serial: int, status: str) -> bytes:
    """``/simple/<name>/`` as PEP 503 HTML."""
    lines = ["<!DOCTYPE html>", "<html>", "  <head>",
             f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
             f'    <meta name="pypi:project-status" content="{escape(status)}">',
             f"    <title>Links for {escape(name)}</title>", "  </head>", "  <body>",
             f"    <h1>Links for {escape(name)}</h1>"]
    lines += [f"    <a {_attributes(file)}>{escape(file['filename'])}</a><br />"
              for file in files]
    lines += ["  </body>", "</html>", f"<!--SERIAL {serial}-->"]
    return ("\n".join(lines) + "\n").encode("utf-8")


def index_json(rows: list[tuple[str, str, int]], serial: int) -> bytes:
    """``/simple/`` as PEP 691 JSON; ``rows`` are ``(normalized, display, serial)``."""
    return _dumps({"meta": {"_last-serial": serial, "api-version": API_VERSION},
                   "projects": [{"_last-serial": last, "name": display}
                                for _, display, last in rows]})


def index_html(rows: list[tuple[str, str, int]]) -> bytes:
    """``/simple/`` as PEP 503 HTML."""
    lines = ["<!DOCTYPE html>", "<html>", "  <head>",
             f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
             "    <title>Simple index</title>", "  </head>", "  <body>"]
    lines += [f'    <a href="/simple/{escape(key)}/">{escape(display)}</a>'
              for key, display, _ in rows]
    lines += ["  </body>", "</html>"]
    return ("\n".join(lines) + "\n").encode("utf-8")

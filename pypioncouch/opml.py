"""A project's documents -> its OPML 2.0 outline (``opml.xml``). Pure: no I/O.

The head names the project and dates it from the data (RFC 822); the body holds an
``rss`` outline for the project's release feed (``xmlUrl``/``htmlUrl``, so feed
readers can subscribe), then one outline per release, newest first in PEP 440 order,
each with its files as ``link`` outlines (url, size, sha256). The same documents
always give the same bytes: there is no wall clock in the output, so the watcher can
skip a rewrite when nothing changed.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape, quoteattr

from pypioncouch.model import version_sort_key

CONTENT_TYPE = "text/x-opml; charset=utf-8"
ATTACHMENT = "opml.xml"
# Characters XML 1.0 cannot carry at all (control characters but tab, CR, LF).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
# Those, and what an attribute escapes: absent from most values (versions, file
# names, digests, URLs), which then go as they are (a third of rendering's time).
_NOT_PLAIN = re.compile("[\x00-\x1f\ufffe\uffff\ud800-\udfff&<>\"']")


def _text(value) -> str:
    return _NOT_XML.sub("", "" if value is None else str(value))


def _attr(value) -> str:
    text = "" if value is None else str(value)
    if _NOT_PLAIN.search(text) is None:
        return f'"{text}"'  # what quoteattr gives for it
    return quoteattr(_text(text))


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc822(parts: list[int] | None) -> str | None:
    """``[Y, M, D, h, m, s]`` (UTC) -> ``Fri, 17 May 2024 09:30:12 GMT`` (as
    ``email.utils.format_datetime`` writes it, without its cost)."""
    if not parts or len(parts) < 6:
        return None
    try:
        t = datetime(*parts[:6], tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return None
    return (f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} "
            f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT")


def _index_host(project: dict) -> str:
    """``https://pypi.org`` from the project's own URLs (the simulator's host in tests)."""
    info = project.get("info") or {}
    for url in (info.get("package_url"), info.get("project_url")):
        if isinstance(url, str):
            try:
                parts = urlsplit(url)
            except ValueError:  # "http://[x": not a URL
                continue
            if parts.scheme in ("http", "https") and parts.netloc:
                return f"{parts.scheme}://{parts.netloc}"
    return "https://pypi.org"


def project_opml(project: dict, releases: list[dict]) -> bytes:
    """The OPML 2.0 document of one project."""
    key = project["_id"]
    name = project.get("name") or key
    host = _index_host(project)
    ordered = sorted(releases, key=lambda r: version_sort_key(r["version"]), reverse=True)
    times = [r.get("upload_time") for r in releases if r.get("upload_time")]
    created = rfc822(min(times)) if times else None
    modified = rfc822(max(times)) if times else None
    lines = ['<?xml version="1.0" encoding="utf-8"?>', '<opml version="2.0">', "  <head>",
             f"    <title>{escape(_text(name))} releases</title>"]
    if created:
        lines.append(f"    <dateCreated>{created}</dateCreated>")
    if modified:
        lines.append(f"    <dateModified>{modified}</dateModified>")
    lines += ["    <docs>http://opml.org/spec2.opml</docs>", "  </head>", "  <body>",
              f"    <outline type=\"rss\" text={_attr(f'{name} releases')} "
              f"title={_attr(f'{name} releases')} "
              f"xmlUrl={_attr(f'{host}/rss/project/{key}/releases.xml')} "
              f"htmlUrl={_attr(f'{host}/project/{key}/')}"
              + (f" description={_attr(project.get('summary'))}" if project.get("summary")
                 else "") + "/>"]
    for release in ordered:
        version = release["version"]
        attributes = [f"text={_attr(version)}", 'type="release"']
        when = rfc822(release.get("upload_time"))
        if when:
            attributes.append(f"created={_attr(when)}")
        page = f"{host}/project/{key}/{quote(version, safe='+!')}/"
        attributes.append(f"htmlUrl={_attr(page)}")
        if release.get("yanked"):
            attributes.append('yanked="true"')
            if release.get("yanked_reason"):
                attributes.append(f"yankedReason={_attr(release['yanked_reason'])}")
        files = release.get("files") or []
        if not files:
            lines.append(f"    <outline {' '.join(attributes)}/>")
            continue
        lines.append(f"    <outline {' '.join(attributes)}>")
        for file in files:
            sha256 = (file.get("digests") or {}).get("sha256")
            parts = [f"text={_attr(file.get('filename'))}", 'type="link"',
                     f"url={_attr(file.get('url'))}"]
            if file.get("size") is not None:
                parts.append(f"size={_attr(file['size'])}")
            if sha256:
                parts.append(f"sha256={_attr(sha256)}")
            lines.append(f"      <outline {' '.join(parts)}/>")
        lines.append("    </outline>")
    lines += ["  </body>", "</opml>"]
    return ("\n".join(lines) + "\n").encode("utf-8")

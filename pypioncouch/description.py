"""A project's description as PyPI shows it. Pure: text in, sanitized HTML out.

PyPI (Warehouse, ``warehouse/utils/readme.py``) renders a description with
``readme_renderer`` by its ``description_content_type``: ``text/markdown`` (GFM, or
``variant=CommonMark``), ``text/x-rst`` or no type at all as reStructuredText,
``text/plain`` (kept preformatted) and anything else as plain text; markup that does
not render falls back to plain text. ``readme_renderer`` sanitizes what it renders (``nh3``: no
``<script>``, no event handlers, links only to http, https and mailto).

The web front renders once per release and caches the result
(:mod:`pypioncouch.web.descriptions`); nothing rendered is stored in CouchDB, so a
fix in the renderer or its sanitizer applies to every page at once.
"""

from __future__ import annotations

import email.message
import warnings

MARKUP_LIMIT = 1_000_000  # characters; longer descriptions are shown as plain text

PLAIN = "text/plain"
MARKDOWN = "text/markdown"
RST = "text/x-rst"


def content_type_of(value: str | None) -> tuple[str, dict[str, str]]:
    """``description_content_type`` as ``(type, parameters)``; no type means RST,
    as on PyPI."""
    if not value or not value.strip():
        return RST, {}
    message = email.message.EmailMessage()
    message["content-type"] = value
    header = message["content-type"]
    params = {k.lower(): str(v) for k, v in header.params.items()}
    return message.get_content_type(), params


def render(text: str | None, content_type: str | None) -> tuple[str | None, str]:
    """``(sanitized HTML or None, how)``: ``how`` is the content type rendered
    (``text/markdown``, ``text/x-rst``, ``text/plain``), or ``"raw"`` with None when
    even plain text did not render (the page then shows the text, escaped)."""
    if not text:
        return None, "raw"
    try:
        kind, params = content_type_of(content_type)
    except Exception:  # a header email cannot parse: plain text, as for unknown types
        kind, params = PLAIN, {}
    declared = kind
    if len(text) > MARKUP_LIMIT:
        kind = PLAIN
    html = None
    if kind in (MARKDOWN, RST):
        html = _markup(text, kind, params)
    if html is not None:
        return html, kind
    html, how = _plain(text)
    if html is not None and declared == PLAIN:
        html = f"<pre>{html}</pre>"  # (as PyPI keeps a declared text/plain's layout)
    return html, how


def _markup(text: str, kind: str, params: dict[str, str]) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if kind == MARKDOWN:
                from readme_renderer import markdown

                return markdown.render(text, variant=params.get("variant", "GFM"))
            from readme_renderer import rst

            return rst.render(text)
        except Exception:  # the renderers' own failures: fall back to plain text
            return None


def _plain(text: str) -> tuple[str | None, str]:
    from readme_renderer import txt

    try:
        html = txt.render(text)
    except Exception:
        html = None
    return (html, PLAIN) if html is not None else (None, "raw")

"""JSON on the hot paths (PyPI's answers, CouchDB's documents, release digests, pages).

orjson does the work: the standard library's encoder and decoder were a third of the
importer's CPU. Where orjson refuses what the standard library takes (lone surrogates;
``NaN`` or a byte order mark in what is read; integers past 64 bits in what is
written), the standard library answers as it always did. Two differences: a ``NaN``
read from a PyPI answer is written to CouchDB as ``null`` (CouchDB refused the whole
batch holding it); and an integer past 64 bits is read as a float. PyPI's integers
(sizes, serials) are database integers, within 64 bits; catching wider ones would mean
scanning every answer's text, ten times the cost of parsing it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """Parsed JSON; raises ``ValueError`` (``json.JSONDecodeError``) if it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes, for a request body."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode("utf-8")


def dumps_utf8(value: Any) -> bytes:
    """:func:`dumps` for CouchDB: valid UTF-8 throughout, a lone surrogate (which PyPI's
    JSON can carry as a ``\\ud800`` escape) written as U+FFFD. Apache CouchDB refuses a
    request holding one ("invalid UTF-8 JSON"): a whole batch, again at every retry;
    pouchdb-server takes it, and a replica on Apache CouchDB would then refuse it. A
    ``NaN`` or an infinity is written as ``null`` here too (CouchDB refuses ``NaN``)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        clean = _for_couchdb(value)
    try:
        return orjson.dumps(clean)
    except TypeError:  # an integer past 64 bits
        return json.dumps(clean, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _for_couchdb(value: Any) -> Any:
    """``value`` with lone surrogates as U+FFFD and non-finite floats as None."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_for_couchdb(key): _for_couchdb(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_for_couchdb(item) for item in value]
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps_sorted(value: Any) -> bytes:
    """Compact JSON with keys sorted, non-ASCII as UTF-8: what PyPI's JSON API writes,
    and what a digest is taken of (the same bytes as ``json.dumps(sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)``, but for ``NaN`` written as ``null``
    and the spelling of a few floats such as ``1e-05``: PyPI's metadata carries
    neither)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: UTF-8 cannot carry it, \u can
            return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("ascii")

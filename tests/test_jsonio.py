"""pypioncouch.jsonio: orjson's speed, the standard library's answers where orjson
refuses (every expected value a literal)."""

import json
import math

import pytest

from pypioncouch import jsonio


def test_reads_what_json_is():
    assert jsonio.loads(b'{"name":"Zo\\u00eb","n":[1,2.5,null,true]}') == {
        "name": "Zoë", "n": [1, 2.5, None, True]}
    assert jsonio.loads('{"a": "é"}') == {"a": "é"}


@pytest.mark.parametrize("text, expected", [
    (b'["\\ud800"]', ["\ud800"]),  # a lone surrogate, as PyPI's metadata can hold
    (b'\xef\xbb\xbf{"a": 1}', {"a": 1}),  # a UTF-8 byte order mark
])
def test_reads_what_the_standard_library_took_and_orjson_refuses(text, expected):
    assert jsonio.loads(text) == expected


def test_reads_64_bit_integers_exactly():
    # (PyPI's sizes and serials are database integers: within 64 bits)
    value = jsonio.loads(b'[9223372036854775807, -9223372036854775808, 18446744073709551615]')
    assert value == [9223372036854775807, -9223372036854775808, 18446744073709551615]
    assert all(type(n) is int for n in value)


def test_reads_nan_as_the_standard_library_did():
    assert math.isnan(jsonio.loads(b'{"x": NaN}')["x"])


@pytest.mark.parametrize("text", [b"", b"{", b"<html>", b'{"a": 1} x'])
def test_what_is_not_json_raises_value_error(text):
    with pytest.raises(ValueError):
        jsonio.loads(text)


def test_writes_compact_utf8():
    assert jsonio.dumps({"b": "Zoë <b>", "a": [1, None]}) == \
        '{"b":"Zoë <b>","a":[1,null]}'.encode("utf-8")


def test_writes_big_integers_and_lone_surrogates_as_the_standard_library_did():
    assert jsonio.dumps({"n": 2 ** 64}) == b'{"n":18446744073709551616}'
    assert jsonio.dumps(["\ud800"]) == b'["\\ud800"]'


def test_writes_a_lone_surrogate_as_u_fffd_for_couchdb_which_refuses_it():
    assert jsonio.dumps_utf8({"s": "half \ud800 a pair", "n": 2 ** 64}) == \
        '{"s":"half \ufffd a pair","n":18446744073709551616}'.encode("utf-8")
    assert jsonio.dumps_utf8({"s": "Zoë"}) == '{"s":"Zoë"}'.encode("utf-8")


def test_for_couchdb_a_nan_beside_a_lone_surrogate_is_still_null():
    """The surrogate sends the writer off orjson's path; CouchDB refuses ``NaN``."""
    body = jsonio.dumps_utf8({"a": [float("nan"), float("inf")], "\udc80k": "x\ud800"})
    assert body == '{"a":[null,null],"\ufffdk":"x\ufffd"}'.encode("utf-8")
    assert json.loads(body) == {"a": [None, None], "\ufffdk": "x\ufffd"}


def test_writes_nan_as_null_which_couchdb_takes():
    assert jsonio.dumps({"x": float("nan")}) == b'{"x":null}'


def test_sorted_writes_keys_in_order_and_escapes_as_pypi_does():
    assert jsonio.dumps_sorted({"é": 1, "b": {"z": 1, "a": "\x00\n\"\\/\u2028"}, "a": 2}) == \
        '{"a":2,"b":{"a":"\\u0000\\n\\"\\\\/\u2028","z":1},"é":1}'.encode("utf-8")
    assert jsonio.dumps_sorted({"n": 2 ** 64}) == b'{"n":18446744073709551616}'

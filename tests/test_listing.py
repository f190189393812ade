"""PyPI's listing of every project, at PyPI's size: parsed as it arrives into columns
(pypi.Listing), walked in key order without a Work per project held (sync.WorkList)."""

import xmlrpc.client

import pytest

from pypioncouch.pypi import Listing, _ListingUnmarshaller
from pypioncouch.sync import Work, WorkList


def parse(xml: str, chunk: int = 7):
    unmarshaller = _ListingUnmarshaller()
    parser = xmlrpc.client.ExpatParser(unmarshaller)
    data = xml.encode()
    for at in range(0, len(data), chunk):  # as it arrives, in small pieces
        parser.feed(data[at:at + chunk])
    parser.close()
    return unmarshaller.listing()


ANSWER = """<?xml version='1.0'?>
<methodResponse><params><param><value><struct>
<member><name>Twisted</name><value><int>12</int></value></member>
<member><name>zope.interface</name><value><i4>7</i4></value></member>
<member><name>Caf&#233;_Menu</name><value><int>30</int></value></member>
</struct></value></param></params></methodResponse>"""


def test_the_listing_is_parsed_into_columns_as_it_arrives():
    listing = parse(ANSWER)
    assert isinstance(listing, Listing)
    assert listing.names == ["Twisted", "zope.interface", "Café_Menu"]
    assert list(listing.serials) == [12, 7, 30]
    assert dict(listing.items()) == {"Twisted": 12, "zope.interface": 7, "Café_Menu": 30}
    assert listing["zope.interface"] == 7 and len(listing) == 3
    assert listing == {"Twisted": 12, "zope.interface": 7, "Café_Menu": 30}


def test_an_empty_listing_and_a_fault():
    empty = ("<?xml version='1.0'?><methodResponse><params><param><value><struct>"
             "</struct></value></param></params></methodResponse>")
    assert len(parse(empty)) == 0
    fault = xmlrpc.client.dumps(xmlrpc.client.Fault(-32500, "RuntimeError: busy"),
                                methodresponse=True)
    with pytest.raises(xmlrpc.client.Fault) as raised:
        parse(fault)
    assert raised.value.faultCode == -32500 and raised.value.faultString == "RuntimeError: busy"


def test_a_listing_entry_that_is_not_a_serial_is_refused():
    bad = ANSWER.replace("<int>12</int>", "<string>12</string>")
    with pytest.raises(xmlrpc.client.ResponseError):
        parse(bad)


def test_works_come_in_key_order_with_pypis_spelling():
    works = WorkList({"Zope.Interface": 3, "requests": 7, "Foo_Bar": 5, "not a name!": 9,
                      "foo-baz": 1})
    assert list(works) == [Work("foo-bar", "Foo_Bar", 5), Work("foo-baz", "foo-baz", 1),
                           Work("requests", "requests", 7),
                           Work("zope-interface", "Zope.Interface", 3)]
    assert len(works) == 4
    assert "foo-bar" in works and "zope-interface" in works
    assert "Foo_Bar" not in works and "not-a-name" not in works and "zzz" not in works


def test_a_simple_index_without_serials_gives_works_without_them():
    works = WorkList({"b": None, "a": 4})
    assert list(works) == [Work("a", "a", 4), Work("b", "b", None)]


def test_short_keys_and_shared_prefixes_keep_the_key_order():
    works = WorkList({"ab": 1, "a": 2, "A-B": 3, "a0": 4, "b": 5, "aa": 6, "a.a": 7,
                      "Ab-C": 8})
    assert [w.key for w in works] == ["a", "a-a", "a-b", "a0", "aa", "ab", "ab-c", "b"]
    assert [w.serial for w in works] == [2, 7, 3, 4, 6, 1, 8, 5]


def read_index(data: bytes, chunk: int):
    from pypioncouch.pypi import _IndexReader

    reader = _IndexReader()
    for at in range(0, len(data), chunk):  # as it arrives, in pieces of any size
        reader.feed(data[at:at + chunk])
    return reader.serial, dict(reader.listing().items())


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1000])
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_the_simple_index_is_read_as_it_arrives_however_it_is_cut(chunk, bom):
    data = bom + '{"meta": {"_last-serial": 9, "api-version": "1.1"}, "projects": [' \
        '{"name": "Zope.Interface", "_last-serial": 7, "x": [{"name": "no"}]}, ' \
        '{"_last-serial": 8, "name": "données"}, {"name": "b"}]}'.encode()
    assert read_index(data, chunk) == (9, {"Zope.Interface": 7, "données": 8, "b": None})


def test_a_full_import_from_an_index_whose_projects_have_no_serials_keeps_its_own():
    """(the listing's "no serial" is -1 in its column: the checkpoint went to -1, and
    the XML-RPC changelog, back an hour later, was read from its start)"""
    from array import array

    from pypioncouch.sync import replay_from

    unserialled = Listing(["a", "b"], array("q", [Listing.NO_SERIAL] * 2))
    assert replay_from(500, unserialled) == 500
    assert replay_from(500, Listing(["a", "b"], array("q", [Listing.NO_SERIAL, 420]))) == 420

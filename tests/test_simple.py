"""The Simple API rendering (pypioncouch/simple.py), table-tested.

Every expected value is a literal written from the reference (pypi-api.md §3 for the
JSON API file entries that come in, §4 for the PEP 503/691 pages that go out), not
computed with the product's code.
"""

import pytest

from pypioncouch import simple

SHA = "a" * 64
META = "b" * 64
URL = "https://files.example/packages/aa/bb/cc/foo_bar-1.0-py3-none-any.whl"


def entry(**changes):
    """A JSON API file entry as PyPI gives it (reference §3)."""
    base = {
        "comment_text": None, "core-metadata": {"sha256": META},
        "digests": {"blake2b_256": "c" * 64, "md5": "d" * 32, "sha256": SHA},
        "downloads": -1, "filename": "foo_bar-1.0-py3-none-any.whl", "has_sig": False,
        "md5_digest": "d" * 32, "packagetype": "bdist_wheel", "python_version": "py3",
        "requires_python": ">=3.8", "size": 1234, "upload_time": "2024-01-17T16:53:12",
        "upload_time_iso_8601": "2024-01-17T16:53:12.779164Z", "url": URL,
        "yanked": False, "yanked_reason": None,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def pep691(**changes):
    """The PEP 691 file PyPI shows for :func:`entry` (reference §4.2)."""
    base = {"filename": "foo_bar-1.0-py3-none-any.whl", "url": URL,
            "hashes": {"sha256": SHA}, "requires-python": ">=3.8", "size": 1234,
            "upload-time": "2024-01-17T16:53:12.779164Z", "yanked": False,
            "core-metadata": {"sha256": META},
            "data-dist-info-metadata": {"sha256": META}, "provenance": None}
    base.update(changes)
    return base


FILES = [
    ("plain", entry(), pep691()),
    ("yanked with a reason", entry(yanked=True, yanked_reason="broken build"),
     pep691(yanked="broken build")),
    ("yanked without a reason", entry(yanked=True, yanked_reason=None), pep691(yanked=True)),
    ("yanked, empty reason", entry(yanked=True, yanked_reason=""), pep691(yanked=True)),
    ("no metadata file", entry(**{"core-metadata": False}),
     pep691(**{"core-metadata": False, "data-dist-info-metadata": False})),
    ("metadata under the old key only", entry(**{"core-metadata": DROP,
                                                "data-dist-info-metadata": {"sha256": META}}),
     pep691()),
    ("no Requires-Python", entry(requires_python=None), pep691(**{"requires-python": None})),
    ("empty Requires-Python", entry(requires_python=""), pep691(**{"requires-python": None})),
    ("whole seconds", entry(upload_time="2015-06-14T14:38:05",
                            upload_time_iso_8601="2015-06-14T14:38:05Z"),
     pep691(**{"upload-time": "2015-06-14T14:38:05Z"})),
    ("no ISO time (an old mirror)", entry(upload_time="2015-06-14T14:38:05",
                                          upload_time_iso_8601=DROP),
     pep691(**{"upload-time": "2015-06-14T14:38:05Z"})),
    ("provenance", entry(provenance="https://pypi.example/integrity/foo/1.0/f/provenance"),
     pep691(provenance="https://pypi.example/integrity/foo/1.0/f/provenance")),
]


@pytest.mark.parametrize("case, given, expected", FILES, ids=[row[0] for row in FILES])
def test_a_json_api_file_becomes_the_pep_691_file_pypi_shows(case, given, expected):
    assert simple.simple_file(given) == expected
    assert list(simple.simple_file(given)) == list(expected)  # PyPI's key order


def test_versions_with_files_in_pep_440_order_then_files_by_name():
    def named(filename):
        return entry(filename=filename)
    releases = {
        "10.0": [named("z-10.0.whl")], "2.0": [named("z-2.0.whl")],
        "1.0": [named("z-1.0-py3.whl"), named("z-1.0-cp312.whl")],
        "1.0rc1": [named("z-1.0rc1.whl")], "1.0.post1": [named("z-1.0.post1.whl")],
        "1.0.dev2": [named("z-1.0.dev2.whl")], "0.9": [], "2.0a1": [named("z-2.0a1.whl")],
    }
    versions, files = simple.simple_files(releases)
    assert versions == ["1.0.dev2", "1.0rc1", "1.0", "1.0.post1", "2.0a1", "2.0", "10.0"]
    assert [f["filename"] for f in files] == [
        "z-1.0.dev2.whl", "z-1.0rc1.whl", "z-1.0-cp312.whl", "z-1.0-py3.whl",
        "z-1.0.post1.whl", "z-2.0a1.whl", "z-2.0.whl", "z-10.0.whl"]


def test_the_pep_503_project_page_escapes_and_carries_every_attribute():
    files = [
        pep691(url="https://files.example/a?x=1&y=2", filename="a<b>.whl",
               **{"requires-python": ">=3.8,<4", "yanked": 'bad <b>metadata</b> "quoted"',
                  "provenance": "https://pypi.example/integrity/a/1/a.whl/provenance"}),
        pep691(filename="b.whl", yanked=True, hashes={},
               **{"requires-python": None, "core-metadata": False,
                  "data-dist-info-metadata": False}),
    ]
    page = simple.project_html("Foo_Bar.baz", files, 42, "archived")
    assert page == (
        '<!DOCTYPE html>\n<html>\n  <head>\n'
        '    <meta name="pypi:repository-version" content="1.4">\n'
        '    <meta name="pypi:project-status" content="archived">\n'
        '    <title>Links for foo-bar-baz</title>\n  </head>\n  <body>\n'
        '    <h1>Links for foo-bar-baz</h1>\n'
        f'    <a href="https://files.example/a?x=1&amp;y=2#sha256={SHA}" '
        'data-requires-python="&gt;=3.8,&lt;4" '
        'data-yanked="bad &lt;b&gt;metadata&lt;/b&gt; &quot;quoted&quot;" '
        f'data-dist-info-metadata="sha256={META}" data-core-metadata="sha256={META}" '
        'data-provenance="https://pypi.example/integrity/a/1/a.whl/provenance"'
        '>a&lt;b&gt;.whl</a><br />\n'
        f'    <a href="{URL}" data-yanked="">b.whl</a><br />\n'
        '  </body>\n</html>\n<!--SERIAL 42-->\n').encode()


def test_the_pep_691_project_page_keeps_null_and_the_normalized_name():
    page = simple.project_json("Foo_Bar.baz", ["1.0"], [pep691(yanked=True)], 42, "active")
    assert page == (
        '{"meta":{"_last-serial":42,"api-version":"1.4"},"name":"foo-bar-baz",'
        '"project-status":{"status":"active"},"versions":["1.0"],'
        f'"files":[{{"filename":"foo_bar-1.0-py3-none-any.whl","url":"{URL}",'
        f'"hashes":{{"sha256":"{SHA}"}},"requires-python":">=3.8","size":1234,'
        '"upload-time":"2024-01-17T16:53:12.779164Z","yanked":true,'
        f'"core-metadata":{{"sha256":"{META}"}},'
        f'"data-dist-info-metadata":{{"sha256":"{META}"}},"provenance":null}}]}}').encode()


def test_a_quarantined_project_page_lists_nothing():
    assert simple.project_json("Q", [], [], 7, "quarantined") == (
        b'{"meta":{"_last-serial":7,"api-version":"1.4"},"name":"q",'
        b'"project-status":{"status":"quarantined"},"versions":[],"files":[]}')


INDEX = [("foo-bar", "Foo_Bar", 3), ("x-y", 'X<"y">', 5), ("zoe", "Zoë", 9)]


def test_the_index_in_both_formats_and_streamed_in_parts():
    html = simple.index_html([(key, display) for key, display, _ in INDEX])
    assert html == (
        '<!DOCTYPE html>\n<html>\n  <head>\n'
        '    <meta name="pypi:repository-version" content="1.4">\n'
        '    <title>Simple index</title>\n  </head>\n  <body>\n'
        '    <a href="/simple/foo-bar/">Foo_Bar</a>\n'
        '    <a href="/simple/x-y/">X&lt;&quot;y&quot;&gt;</a>\n'
        '    <a href="/simple/zoe/">Zoë</a>\n'
        '  </body>\n</html>\n').encode()
    data = simple.index_json([(display, serial) for _, display, serial in INDEX], 10)
    assert data == ('{"meta":{"_last-serial":10,"api-version":"1.4"},"projects":['
                    '{"_last-serial":3,"name":"Foo_Bar"},{"_last-serial":5,"name":"X<\\"y\\">"},'
                    '{"_last-serial":9,"name":"Zoë"}]}').encode()
    # The web front streams the index page by page: the parts join to the same bytes.
    streamed = (simple.index_json_head(10)
                + simple.index_json_items([("Foo_Bar", 3)], True)
                + simple.index_json_items([], False)
                + simple.index_json_items([('X<"y">', 5), ("Zoë", 9)], False)
                + simple.INDEX_JSON_TAIL)
    assert streamed == data


NAMES = [("Foo_Bar.baz", "foo-bar-baz"), ("FOO__bar..9", "foo-bar-9"), ("a-_.b", "a-b"),
         ("Django", "django"), ("zope.interface", "zope-interface"), ("x", "x")]


@pytest.mark.parametrize("name, normalized", NAMES)
def test_pep_503_normalization(name, normalized):
    assert simple.normalize(name) == normalized


def test_a_file_of_another_index_with_numbers_for_texts_makes_a_page_not_a_500():
    """Another index (``--pypi``) may store a number where PyPI has text: the pages
    made from it failed for every request. What is not text is left out, as unknown."""
    entry = {"filename": "odd-1.0.tar.gz", "url": "https://files.example/odd-1.0.tar.gz",
             "digests": {"sha256": 7}, "requires_python": 3, "size": 10,
             "upload_time": 1700000000, "yanked": True, "yanked_reason": 5,
             "core-metadata": {"sha256": 8}, "provenance": 9}
    file = simple.simple_file(entry)
    assert file == {"filename": "odd-1.0.tar.gz",
                    "url": "https://files.example/odd-1.0.tar.gz", "hashes": {},
                    "requires-python": None, "size": 10, "upload-time": None,
                    "yanked": True, "core-metadata": False,
                    "data-dist-info-metadata": False, "provenance": None}
    assert simple.project_html("odd", [file], 1) == (
        '<!DOCTYPE html>\n<html>\n  <head>\n'
        '    <meta name="pypi:repository-version" content="1.4">\n'
        '    <meta name="pypi:project-status" content="active">\n'
        '    <title>Links for odd</title>\n  </head>\n  <body>\n'
        '    <h1>Links for odd</h1>\n'
        '    <a href="https://files.example/odd-1.0.tar.gz" data-yanked="">'
        'odd-1.0.tar.gz</a><br />\n'
        '  </body>\n</html>\n<!--SERIAL 1-->\n').encode()

"""PyPI payloads -> CouchDB documents and back (pypioncouch/model.py), table-tested.

The JSON API answers here are small literals shaped as the reference (pypi-api.md §3)
says PyPI writes them; every expected value is a literal too.
"""

import copy
import json

import pytest

from pypioncouch import model

FILE_10 = {
    "comment_text": None, "core-metadata": {"sha256": "b" * 64},
    "digests": {"blake2b_256": "c" * 64, "md5": "d" * 32, "sha256": "a" * 64},
    "downloads": -1, "filename": "foo_bar-1.0-py3-none-any.whl", "has_sig": False,
    "md5_digest": "d" * 32, "packagetype": "bdist_wheel", "python_version": "py3",
    "requires_python": ">=3.8", "size": 1234, "upload_time": "2024-01-17T16:53:12",
    "upload_time_iso_8601": "2024-01-17T16:53:12.779164Z",
    "url": "https://files.example/packages/aa/bb/cc/foo_bar-1.0-py3-none-any.whl",
    "yanked": False, "yanked_reason": None,
}
FILE_20 = dict(FILE_10, filename="foo_bar-2.0rc1-py3-none-any.whl", requires_python=None,
               upload_time="2024-03-01T08:00:00", upload_time_iso_8601="2024-03-01T08:00:00Z",
               url="https://files.example/packages/ee/ff/gg/foo_bar-2.0rc1-py3-none-any.whl",
               yanked=True, yanked_reason="oops")
INFO = {
    "author": "Zoë Núñez", "author_email": None, "bugtrack_url": None,
    "classifiers": ["Framework :: Twisted", "Typing :: Typed"],
    "description": "# Foo\n\nLong <script>text</script>", "description_content_type": "text/markdown",
    "docs_url": None, "download_url": None,
    "downloads": {"last_day": -1, "last_month": -1, "last_week": -1}, "dynamic": None,
    "home_page": "https://example.org/foo", "keywords": "web, json,, Web ", "license": None,
    "license_expression": "MIT", "license_files": None, "maintainer": "",
    "maintainer_email": None, "name": "Foo_Bar", "package_url": "https://pypi.example/project/foo-bar/",
    "platform": None, "project_url": "https://pypi.example/project/foo-bar/",
    "project_urls": {"Homepage": "https://example.org/foo"}, "provides_extra": None,
    "release_url": "https://pypi.example/project/foo-bar/1.0/", "requires_dist": ["attrs>=20"],
    "requires_python": ">=3.8", "summary": "A <b>thing</b>", "version": "1.0", "yanked": False,
    "yanked_reason": None,
}
OWNERSHIP = {"organization": None, "roles": [{"role": "Owner", "user": "zoe"}]}
# /pypi/Foo_Bar/json: the latest is 1.0 (the others are pre-releases); 0.9 and 10.0.dev1
# have no files; keys sorted as strings, as PyPI writes them.
ANSWER = {"info": INFO, "last_serial": 1234, "ownership": OWNERSHIP,
          "releases": {"0.9": [], "1.0": [FILE_10], "10.0.dev1": [], "2.0rc1": [FILE_20]},
          "urls": [FILE_10], "vulnerabilities": []}


def documents():
    return model.project_documents(copy.deepcopy(ANSWER))


def test_a_project_answer_becomes_one_project_document():
    project, _ = documents()
    digests = project.pop("release_digests")
    assert project == {
        "_id": "foo-bar", "type": "project", "schema": 1, "name": "Foo_Bar",
        "status": "active", "last_serial": 1234, "latest_version": "1.0",
        "versions": ["0.9", "1.0", "2.0rc1", "10.0.dev1"],
        "summary": "A <b>thing</b>", "author": "Zoë Núñez", "author_email": None,
        "maintainer": "", "maintainer_email": None, "license": None,
        "license_expression": "MIT", "home_page": "https://example.org/foo",
        "download_url": None, "project_urls": {"Homepage": "https://example.org/foo"},
        "requires_python": ">=3.8", "keywords": ["web", "json"],
        "classifiers": ["Framework :: Twisted", "Typing :: Typed"],
        "upload_time": [2024, 1, 17, 16, 53, 12], "description_length": 33,
        "info": {k: v for k, v in INFO.items() if k != "description"},
        "pypi": {"last_serial": 1234, "ownership": OWNERSHIP, "vulnerabilities": []},
        "requires": {"attrs": ["attrs>=20"]}, "requires_unparsable": [],
    }
    assert sorted(digests) == ["0.9", "1.0", "10.0.dev1", "2.0rc1"]
    assert digests["0.9"][1] is None and digests["2.0rc1"][1] is None  # no info of their own
    assert digests["1.0"][1] is not None


def test_release_digests_are_those_the_stored_documents_carry():
    # Taken by pypioncouch before its JSON went through orjson: an upgrade must find
    # every stored release unchanged, not rewrite all of PyPI once.
    project, _ = documents()
    assert project["release_digests"] == {
        "0.9": ["95c9519c617b573d", None],
        "1.0": ["d74900b2904fce15", "0a719304bd5d528e"],
        "10.0.dev1": ["58a0ea35654c6db3", None],
        "2.0rc1": ["324d560943803bf6", None]}


def test_each_release_becomes_a_document_with_its_files_verbatim():
    _, releases = documents()
    assert releases == [
        {"_id": "foo-bar:0.9", "type": "release", "project": "foo-bar", "name": "Foo_Bar",
         "version": "0.9", "files": [], "yanked": False, "yanked_reason": None,
         "requires_python": None, "upload_time": None, "upload_time_iso_8601": None,
         "last_serial": 1234},
        {"_id": "foo-bar:1.0", "type": "release", "project": "foo-bar", "name": "Foo_Bar",
         "version": "1.0", "files": [FILE_10], "yanked": False, "yanked_reason": None,
         "requires_python": ">=3.8", "upload_time": [2024, 1, 17, 16, 53, 12],
         "upload_time_iso_8601": "2024-01-17T16:53:12.779164Z", "last_serial": 1234,
         "info": INFO, "info_source": "latest", "requires_dist": ["attrs>=20"],
         "vulnerabilities": []},
        {"_id": "foo-bar:10.0.dev1", "type": "release", "project": "foo-bar",
         "name": "Foo_Bar", "version": "10.0.dev1", "files": [], "yanked": False,
         "yanked_reason": None, "requires_python": None, "upload_time": None,
         "upload_time_iso_8601": None, "last_serial": 1234},
        {"_id": "foo-bar:2.0rc1", "type": "release", "project": "foo-bar", "name": "Foo_Bar",
         "version": "2.0rc1", "files": [FILE_20], "yanked": True, "yanked_reason": "oops",
         "requires_python": None, "upload_time": [2024, 3, 1, 8, 0, 0],
         "upload_time_iso_8601": "2024-03-01T08:00:00Z", "last_serial": 1234},
    ]


def test_the_json_api_is_rebuilt_as_pypi_said_it():
    project, releases = documents()
    assert model.json_api_payload(project, releases) == ANSWER
    assert model.json_api_payload(project, releases, "1.0") == {
        "info": INFO, "last_serial": 1234, "ownership": OWNERSHIP, "urls": [FILE_10],
        "vulnerabilities": []}
    assert model.json_api_payload(project, releases, "3.0") is None
    with pytest.raises(model.MissingInfo) as missing:  # never another release's info
        model.json_api_payload(project, releases, "2.0rc1")
    assert str(missing.value) == "the metadata of foo-bar 2.0rc1 is not stored yet"
    own = dict(INFO, version="2.0rc1", summary="Older", yanked=True, yanked_reason="oops")
    releases[3] = model.with_own_info(releases[3], own)
    assert model.json_api_payload(project, releases, "2.0rc1")["info"] == own


def test_an_older_release_never_shows_the_latest_releases_advisories():
    project, releases = documents()
    advisory = {"id": "PYSEC-2024-1", "source": "osv", "link": "https://osv.dev/PYSEC-2024-1",
                "aliases": [], "details": "x", "summary": None, "fixed_in": ["1.1"],
                "withdrawn": None}
    project["pypi"]["vulnerabilities"] = [advisory]
    own = dict(INFO, version="2.0rc1", yanked=True, yanked_reason="oops")
    releases[3] = model.with_own_info(releases[3], own)  # an answer without advisories
    assert model.json_api_payload(project, releases, "2.0rc1")["vulnerabilities"] == []
    assert model.json_api_payload(project, releases, "1.0")["vulnerabilities"] == [advisory]
    releases[3] = model.with_own_info(releases[3], own, [advisory])
    assert model.json_api_payload(project, releases, "2.0rc1")["vulnerabilities"] == [advisory]


def test_a_yank_after_the_info_was_stored_shows_in_the_info():
    project, releases = documents()
    releases[1]["files"] = [dict(FILE_10, yanked=True, yanked_reason="bad")]
    releases[1].update(yanked=True, yanked_reason="bad")
    info = model.json_api_payload(project, releases)["info"]
    assert (info["yanked"], info["yanked_reason"]) == (True, "bad")


def test_quarantined_and_release_less_projects_have_no_json_api_answer():
    project, releases = documents()
    assert model.json_api_payload(dict(project, status="quarantined"), releases) is None
    empty = model.empty_project_document("Foo_Bar", 99, "active")
    assert model.json_api_payload(empty, []) is None


def test_the_json_api_bytes_are_compact_sorted_and_keep_unicode():
    assert model.dump_json_api({"b": None, "a": ["Zoë", ""], "c": {"z": 1, "y": {}}}) == \
        '{"a":["Zoë",""],"b":null,"c":{"y":{},"z":1}}\n'.encode()


BAD = [
    ("not an object", [], "the JSON API answer is not an object"),
    ("no info", {"releases": {}}, "the JSON API answer has no info.name"),
    ("no version", {"info": {"name": "x"}}, "the JSON API answer has no info.version"),
    ("releases not lists", {"info": {"name": "x", "version": "1"}, "releases": {"1": {}}},
     "the JSON API answer's releases are not lists of files"),
    ("no releases", {"info": {"name": "x", "version": "1"}, "urls": []},
     "the JSON API answer has no releases"),
    ("a file without url", {"info": {"name": "x", "version": "1"},
                            "releases": {"1": [{"filename": "x-1.tar.gz"}]}},
     "the JSON API answer's releases are not lists of files"),
    ("digests not an object", {"info": {"name": "x", "version": "1"}, "releases": {"1": [
        {"filename": "x-1.tar.gz", "url": "https://x/x-1.tar.gz", "digests": "ab"}]}},
     "the JSON API answer's releases are not lists of files"),
    ("urls not files", {"info": {"name": "x", "version": "1"}, "releases": {},
                        "urls": [{"filename": 7}]},
     "the JSON API answer's urls are not files"),
    ("serial not an int", {"info": {"name": "x", "version": "1"}, "releases": {},
                           "last_serial": "7"},
     "the JSON API answer's last_serial is not an integer"),
    # (a text would be stored a character an item: one-letter classifiers)
    ("classifiers a text", {"info": {"name": "x", "version": "1",
                                     "classifiers": "Framework :: Django"}, "releases": {}},
     "the JSON API answer's info.classifiers is not a list of texts"),
    ("classifiers a number", {"info": {"name": "x", "version": "1", "classifiers": 7},
                              "releases": {}},
     "the JSON API answer's info.classifiers is not a list of texts"),
    ("requires_dist an object", {"info": {"name": "x", "version": "1",
                                          "requires_dist": {"a": 1}}, "releases": {}},
     "the JSON API answer's info.requires_dist is not a list of texts"),
    ("requires_dist holding a number", {"info": {"name": "x", "version": "1",
                                                 "requires_dist": ["a", 3]}, "releases": {}},
     "the JSON API answer's info.requires_dist is not a list of texts"),
]


@pytest.mark.parametrize("case, payload, message", BAD, ids=[row[0] for row in BAD])
def test_a_malformed_answer_is_refused_with_one_line(case, payload, message):
    with pytest.raises(model.BadPayload) as error:
        model.project_documents(payload)
    assert str(error.value) == message


@pytest.mark.parametrize("field, value", [
    ("keywords", 42), ("description", 5)])
def test_a_field_of_the_wrong_type_is_a_malformed_answer(field, value):
    payload = {"info": {"name": "x", "version": "1", field: value}, "releases": {"1": []},
               "urls": [], "last_serial": 7}
    with pytest.raises(model.BadPayload) as error:
        model.project_documents(payload)
    assert str(error.value).startswith(
        "a field of the JSON API answer has an unexpected type or value (TypeError: ")
    assert "\n" not in str(error.value)


def test_a_per_version_answer_whose_requirements_are_a_text_is_refused():
    payload = {"info": {"name": "x", "version": "1", "requires_dist": "numpy>=1"}}
    with pytest.raises(model.BadPayload) as error:
        model.check_release_info(payload, "x", "1")
    assert str(error.value) == \
        "the per-version JSON API answer's info.requires_dist is not a list of texts"
    payload["info"]["requires_dist"] = None  # (PyPI's, for a release that names none)
    assert model.check_release_info(payload, "x", "1") is payload["info"]


def test_a_lone_surrogate_in_metadata_is_kept_and_digested():
    payload = {"info": {"name": "x", "version": "1", "summary": "half \ud800 a pair"},
               "releases": {"1": []}, "urls": [], "last_serial": 7}
    project, releases = model.project_documents(payload)
    assert project["summary"] == "half \ud800 a pair"
    assert project["release_digests"]["1"]


KEYWORDS = [
    (None, []),
    ("", []),
    ("   ", []),
    ("web json", ["web", "json"]),
    ("web  json\tcli\n", ["web", "json", "cli"]),
    ("web, json", ["web", "json"]),
    ("web,json,", ["web", "json"]),
    ("Web, web, WEB", ["Web"]),
    ("machine learning, data  science", ["machine learning", "data science"]),
    ("données, データ, 🐍", ["données", "データ", "🐍"]),
    ("<b>bold</b>, a&b", ["<b>bold</b>", "a&b"]),
    (["already", "a list", ""], ["already", "a list"]),
]


@pytest.mark.parametrize("value, words", KEYWORDS)
def test_keywords_split_on_commas_else_on_spaces(value, words):
    assert model.split_keywords(value) == words


UPLOAD_TIMES = [
    ("2015-06-14T14:38:05.875222Z", [2015, 6, 14, 14, 38, 5]),
    ("2015-06-14T14:38:05Z", [2015, 6, 14, 14, 38, 5]),
    ("2015-06-14T14:38:05", [2015, 6, 14, 14, 38, 5]),
    ("2015-06-14 14:38:05", [2015, 6, 14, 14, 38, 5]),
    ("2024-01-01T00:00:00", [2024, 1, 1, 0, 0, 0]),
    ("", None),
    (None, None),
    ("yesterday", None),
]


@pytest.mark.parametrize("value, parts", UPLOAD_TIMES)
def test_upload_time_as_a_list_of_ints(value, parts):
    assert model.upload_time_list(value) == parts


def test_versions_sort_in_pep_440_order_unparsable_first_in_legacy_order():
    # The reference: Simple API versions come "in legacy-version order" (Warehouse's
    # packaging_legacy): numbers in a version PEP 440 cannot parse compare as numbers.
    shuffled = ["1.0.post1", "10.0", "1.0", "not a version", "1.0rc1", "1!0.1", "1.0.dev3",
                "2.0a1", "0.9", "1.10-x", "1.0a2", "1.0.0.1", "1.0+local", "1.9-x",
                "0.1dev-r123", "1.0.0"]
    assert sorted(shuffled, key=model.version_sort_key) == [
        "not a version", "0.1dev-r123", "1.9-x", "1.10-x", "0.9", "1.0.dev3", "1.0a2",
        "1.0rc1", "1.0", "1.0.0", "1.0+local", "1.0.post1", "1.0.0.1", "2.0a1", "10.0",
        "1!0.1"]


NAMES = [("Foo_Bar.baz", True), ("x", True), ("a-", False), ("-a", False), ("", False),
         ("a b", False), ("zoë", False), ("A.B_C-D", True), ("_design", False),
         ("foo\n", False), ("\u212aafka", False), ("\u017fix", False), ("\u0130nfo", False)]


@pytest.mark.parametrize("name, valid", NAMES)
def test_names_pypi_could_hold(name, valid):
    assert model.is_valid_project_name(name) is valid


def test_a_release_is_rewritten_only_when_it_changed():
    _, releases = documents()
    same = model.release_digests(copy.deepcopy(releases[1]))
    assert model.release_digests(releases[1]) == same
    assert not model.release_needs_write(same, same)
    newer = dict(releases[1], last_serial=9999)  # a new serial alone changes nothing
    assert not model.release_needs_write(model.release_digests(newer), same)
    yanked = dict(releases[1], files=[dict(FILE_10, yanked=True)])
    assert model.release_needs_write(model.release_digests(yanked), same)
    assert json.loads(json.dumps(same)) == same  # plain JSON, kept in the project document


def test_an_answer_changes_releases_unless_each_is_as_recorded():
    recorded = {"0.9": ["95c9519c617b573d", None],  # (the literals above)
                "1.0": ["d74900b2904fce15", "0a719304bd5d528e"],
                "10.0.dev1": ["58a0ea35654c6db3", None],
                "2.0rc1": ["324d560943803bf6", None]}
    assert not model.answer_changes_releases(copy.deepcopy(ANSWER), recorded)
    assert not model.answer_changes_releases(dict(ANSWER, last_serial=1300), recorded)
    unyanked = dict(ANSWER, releases=dict(ANSWER["releases"],
                                          **{"2.0rc1": [dict(FILE_20, yanked=False)]}))
    assert model.answer_changes_releases(unyanked, recorded)
    assert model.answer_changes_releases(copy.deepcopy(ANSWER),
                                         {k: v for k, v in recorded.items() if k != "0.9"})
    assert model.answer_changes_releases(copy.deepcopy(ANSWER), dict(recorded, **{"0.9": None}))
    assert model.answer_changes_releases({"info": {}}, recorded)  # (malformed)
    assert model.answer_changes_releases(copy.deepcopy(ANSWER), None)


def test_a_release_without_files_flags_differ_from_its_own_answer():
    stored = {"yanked": True, "yanked_reason": "oops", "requires_python": ">=3.8"}
    said = {"info": dict(INFO, yanked=True, yanked_reason="oops")}
    assert not model.own_flags_differ(stored, said)
    assert model.own_flags_differ(stored, {"info": dict(INFO, yanked=False)})
    assert model.own_flags_differ(stored, {"info": dict(INFO, yanked=True, yanked_reason="x")})
    assert model.own_flags_differ(dict(stored, requires_python=None), said)
    assert model.own_flags_differ(stored, {"info": "?"})


def test_requirements_group_by_project_and_keep_what_does_not_parse():
    requires_dist = ["attrs>=20", "not a requirement!!", 5, "Foo-Bar[x]; extra == 'x'",
                     "ATTRS<30 ; python_version < '3.9'", None, "not a requirement!!"]
    for _ in range(2):  # the second time from what was kept of the first
        assert model.requirements_by_name(requires_dist, "foo-bar") == (
            {"attrs": ["attrs>=20", "ATTRS<30 ; python_version < '3.9'"]},
            ["not a requirement!!", "5", "null", "not a requirement!!"])


def test_releases_as_their_project_records_them():
    """The web front keeps a project's pages only if its releases are the copies the
    project records (a cluster's range read can answer from a lagging copy)."""
    payload = {"info": {"name": "x", "version": "2"}, "last_serial": 7, "urls": [],
               "releases": {"1": [], "2": [{"filename": "x-2.whl", "url": "https://f/x-2.whl",
                                            "digests": {"sha256": "ab" * 32}, "yanked": False,
                                            "upload_time_iso_8601": "2024-01-01T00:00:00Z"}]}}
    project, releases = model.project_documents(payload)
    assert model.releases_as_recorded(project, releases)
    with_files = next(r for r in releases if r["files"])
    yanked = {**with_files, "yanked": True, "files": [dict(with_files["files"][0], yanked=True)]}
    others = [r for r in releases if r is not with_files]
    assert not model.releases_as_recorded(project, others + [yanked])
    # A release recorded as unknown passes (its write is under way).
    unknown = {**project, "release_digests": {**project["release_digests"], "2": None}}
    assert model.releases_as_recorded(unknown, others + [yanked])
    # The backfill sets a release without files' flags from its own metadata.
    fileless = next(r for r in releases if not r["files"])
    filled = model.with_own_info(fileless, {"name": "x", "version": "1", "yanked": True,
                                            "requires_python": ">=3.6"})
    assert model.releases_as_recorded(project, [filled, with_files])
    # A stale copy of a release without files, while the project records its files.
    stale = {**with_files, "files": []}
    assert not model.releases_as_recorded(project, others + [stale])
    # A release the project names, not read (its copy not there yet).
    assert not model.releases_as_recorded(project, [with_files])
    # Records of another shape: not as recorded, and no error.
    for odd in ([], {"2": {"files": "x"}}, {"2": 7}, {"2": []}):
        assert not model.releases_as_recorded({**project, "release_digests": odd}, releases)


def test_a_description_over_four_million_bytes_is_stored_apart_and_read_back_whole():
    import base64

    release = {"_id": "foo:1.0", "type": "release", "version": "1.0", "files": [],
               "info": {"name": "foo", "description": "x" * 3_999_998, "summary": "s"}}
    assert model.stored_form(release) is release  # (4,000,000 bytes as JSON: kept)
    snowmen = dict(release, info={"description": "\u2603" * 1_333_332})  # 3,999,996 bytes
    assert model.stored_form(snowmen) is snowmen
    one_more = dict(release, info={"description": "x" * 3_999_999})
    assert model.stored_form(one_more)["description_apart"] is True
    quotes = dict(release, info={"description": '"' * 2_000_000})  # escaped: 4,000,002
    assert model.stored_form(quotes)["description_apart"] is True
    text = "\u2603" * 1_333_334  # 4,000,002 bytes
    wordy = dict(release, info={"name": "foo", "description": text, "summary": "s"})
    stored = model.stored_form(wordy)
    assert stored["info"] == {"name": "foo", "summary": "s"}
    assert stored["description_apart"] is True and model.is_description_apart(stored)
    attachment = stored["_attachments"]["description"]
    assert attachment["content_type"] == "text/plain; charset=utf-8"
    assert base64.b64decode(attachment["data"]) == text.encode("utf-8")
    assert wordy["info"]["description"] == text  # (the document given is left as it was)
    read = {**stored, "_rev": "1-a", "_attachments": {"description": {"stub": True}}}
    assert model.whole_form(read, text.encode("utf-8")) == {**wordy, "_rev": "1-a"}
    assert model.files_digest(read) == model.files_digest(wordy)
    # (as its project records it: by its files, its info digest being the whole one's)
    assert model.is_recorded(read, model.release_digests(wordy))
    assert not model.is_recorded(dict(read, yanked=True), model.release_digests(wordy))


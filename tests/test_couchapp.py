"""The design document: idempotent push, build-before-switch, validation."""

import copy

import pytest
import pytest_twisted

from pypioncouch import couchapp


@pytest_twisted.ensureDeferred
async def test_push_is_idempotent(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    assert await couchapp.push(db) is True
    rev = (await db.get(couchapp.DESIGN_ID))["_rev"]
    assert await couchapp.push(db) is False
    assert (await db.get(couchapp.DESIGN_ID))["_rev"] == rev


@pytest_twisted.ensureDeferred
async def test_two_pushes_at_once_install_one_design_and_neither_fails(couch, db_name):
    """A daemon and an import started together on a new database both install the
    design document and the guard: the one that comes second finds them installed."""
    from twisted.internet import defer

    db = couch.database(db_name)
    await db.ensure()
    for push in (couchapp.push, couchapp.push_guard):
        written = await defer.gatherResults([defer.ensureDeferred(push(db)),
                                             defer.ensureDeferred(push(db))])
        assert sorted(written) == [False, True]
    stored = await db.get(couchapp.DESIGN_ID)
    assert stored["views"] == couchapp.design_document()["views"]
    assert stored["_rev"].startswith("1-")
    assert (await db.get(couchapp.GUARD_ID))["_rev"].startswith("1-")


@pytest_twisted.ensureDeferred
async def test_a_changed_design_is_built_under_a_scratch_id_before_the_switch(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    await couchapp.push(db)
    await db.bulk_docs([{"_id": f"p{i}", "type": "project", "name": f"P{i}", "versions": [],
                         "release_digests": {}, "last_serial": i} for i in range(30)])
    changed = copy.deepcopy(couchapp.design_document())
    changed["views"]["serials_twice"] = {
        "map": "function (doc) { if (doc.type === 'project') emit(doc.last_serial * 2, null); }"}
    built = []
    real_view = db.view

    async def watching_view(ddoc, view, **params):
        built.append((ddoc, view))
        return await real_view(ddoc, view, **params)

    db.view = watching_view
    assert await couchapp.push(db, scratch_above=10, wanted=changed) is True
    assert (f"{couchapp.NAME}-next", "serials_twice") in built  # queried before the switch
    assert await db.get_or_none(couchapp.SCRATCH_ID) is None  # and cleaned up
    live = await db.get(couchapp.DESIGN_ID)
    assert "serials_twice" in live["views"]
    rows = (await real_view(couchapp.NAME, "serials_twice", limit=1, descending=True))["rows"]
    assert rows[0]["key"] == 58


@pytest_twisted.ensureDeferred
async def test_a_scratch_design_an_upgrade_left_is_deleted_not_a_newer_ones(couch, db_name):
    """An upgrade stopped before its switch (or gone back from) left its views under
    the scratch id: CouchDB kept that index current at every write, and mirrors got
    it. A newer version's, maybe building there now, is left alone."""
    db = couch.database(db_name)
    await db.ensure()
    await couchapp.push(db)
    views = {"views": {"other": {"map": "function (doc) { emit(doc._id, null); }"}}}
    older = {**couchapp.design_document(), **views, "_id": couchapp.SCRATCH_ID}
    await db.put(older)
    assert await couchapp.push(db) is False  # (the design document is as wanted)
    assert await db.get_or_none(couchapp.SCRATCH_ID) is None
    newer = {**older, "pypioncouch": {"generation": couchapp.GENERATION + 1}}
    await db.put(newer)
    assert await couchapp.push(db) is False
    assert await db.get_or_none(couchapp.SCRATCH_ID) is not None


@pytest_twisted.ensureDeferred
async def test_the_design_document_leaves_writes_unchecked_and_the_guard_checks_them(
        couch, db_name):
    """Without the guard CouchDB runs no JavaScript per write (the hot path); with it,
    foreign writes out of shape are refused, each with its own ``forbidden``."""
    db = couch.database(db_name)
    await db.ensure()
    await couchapp.push(db)
    assert "validate_doc_update" not in await db.get(couchapp.DESIGN_ID)
    assert [r.error for r in await db.bulk_docs([{"_id": "y", "type": "other"}])] == [None]
    assert await couchapp.push_guard(db) is True
    assert await couchapp.push_guard(db) is False
    await guard_in_force(db)
    results = await db.bulk_docs([
        {"_id": "x", "type": "something else"},
        {"_id": "foo:1.0", "type": "release", "project": "bar", "version": "1.0", "files": []},
        {"_id": "foo", "type": "project", "name": "foo"},
        {"_id": "ok", "type": "project", "name": "OK", "versions": [], "release_digests": {}},
    ])
    assert [r.error for r in results] == ["forbidden", "forbidden", "forbidden", None]


SHAPES = [  # (document, why the guard and our writer refuse it)
    ({"_id": "x", "type": "something else"}, "documents here are of type project or release"),
    ({"_id": "x"}, "documents here are of type project or release"),
    ({"_id": "foo", "type": "project", "name": "foo"}, "missing field versions"),
    ({"_id": "foo:1", "type": "project", "name": "F", "versions": [], "release_digests": {}},
     "a project id is a normalized name (no colon)"),
    ({"_id": "foo:1.0", "type": "release", "project": "bar", "version": "1.0", "files": []},
     "a release id is <project>:<version>"),
    ({"_id": "foo:1.1", "type": "release", "project": "foo", "version": "1.1"},
     "missing field files"),
    ({"_id": "ok", "type": "project", "name": "OK", "versions": [], "release_digests": {}},
     None),
    ({"_id": "ok:2", "type": "release", "project": "ok", "version": "2", "files": []}, None),
    ({"_id": "gone", "_deleted": True}, None),
]


async def guard_in_force(db, seconds=10.0):
    """Apache CouchDB loads a new validate function into each shard a moment after the
    design document is written: until a probe is refused, writes may pass unchecked."""
    from twisted.internet import reactor, task

    for attempt in range(int(seconds / 0.1)):
        probe = {"_id": f"probe-{attempt}", "type": "not a project"}
        if (await db.bulk_docs([probe]))[0].error == "forbidden":
            return
        await task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"the guard was not in force after {seconds:g}s")


@pytest.mark.parametrize("doc, problem", SHAPES)
def test_the_writer_checks_the_guards_rules(doc, problem):
    from pypioncouch import model

    assert model.shape_problem(doc) == problem


@pytest_twisted.ensureDeferred
async def test_the_guard_and_the_writer_agree(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    await couchapp.push_guard(db)
    await guard_in_force(db)
    results = await db.bulk_docs([dict(doc, _id=f"{doc['_id']}-{i}" if ":" not in doc["_id"]
                                       else doc["_id"]) for i, (doc, _) in enumerate(SHAPES)
                                  if not doc.get("_deleted")])
    refused = [r.reason for r in results]
    assert refused == [p for doc, p in SHAPES if not doc.get("_deleted")]


@pytest_twisted.ensureDeferred
async def test_the_catalog_view_counts_projects_per_facet(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    await couchapp.push(db)
    base = {"type": "project", "versions": ["1.0"], "release_digests": {},
            "latest_version": "1.0"}
    await db.bulk_docs([
        {**base, "_id": "a", "name": "A", "last_serial": 7, "author": "Glyph",
         "keywords": ["Web", "web", "async"], "requires_python": ">=3.9",
         "classifiers": ["Framework :: Twisted", "Framework :: Twisted :: 24",
                         "License :: OSI Approved :: MIT License"]},
        {**base, "_id": "b", "name": "B", "last_serial": 9, "author": "glyph",
         "classifiers": ["Framework :: Django"]},
        {"_id": "a:1.0", "type": "release", "project": "a", "name": "A", "version": "1.0",
         "files": [], "upload_time": [2024, 1, 2, 3, 4, 5]},
    ])
    grouped = await couchapp.query(db, group_level=2)
    counts = {tuple(row["key"]): row["value"] for row in grouped}
    assert counts[("classifier", "Framework")] == 2  # a project once per prefix
    assert counts[("classifier", "Framework :: Twisted")] == 1
    assert counts[("classifier", "License :: OSI Approved")] == 1
    assert counts[("keyword", "web")] == 1 and counts[("author", "glyph")] == 2
    assert await couchapp.count(db, "name") == 2
    assert await couchapp.max_serial(db) == 9
    assert [row["id"] async for row in couchapp.all_projects(db, batch=1)] == ["a", "b"]
    low, high = couchapp.facet_range("released")
    rows = await couchapp.query(db, startkey=low, endkey=high, reduce=False)
    assert rows[0]["value"] == ["a", "A", "1.0", None]


@pytest_twisted.ensureDeferred
async def test_paging_through_every_project_skips_none_when_one_goes_meanwhile(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    await couchapp.push(db)
    keys = ["a", "b", "c", "d", "e"]
    results = await db.bulk_docs([{"_id": key, "type": "project", "name": key.upper(),
                                   "versions": [], "release_digests": {}, "last_serial": 1}
                                  for key in keys])
    revs = dict(zip(keys, (r.rev for r in results)))
    seen = []
    async for row in couchapp.all_projects(db, batch=2):
        seen.append(row["id"])
        if row["id"] == "b":  # the last of the first page, removed before the next
            await db.delete("b", revs["b"])
    assert seen == keys


@pytest_twisted.ensureDeferred
async def test_odd_fields_and_keywords_named_like_object_members_are_indexed(couch, db_name):
    """Fields as another index may send them (a number for an author, a null among the
    classifiers) cost the project none of its rows; "constructor" is a keyword like any
    other (JavaScript objects have a member of that name)."""
    db = couch.database(db_name)
    await db.ensure()
    await couchapp.push(db)
    await db.bulk_docs([{
        "_id": "odd", "type": "project", "name": "Odd", "versions": [],
        "release_digests": {}, "last_serial": 3, "author": 5, "maintainer": ["x"],
        "keywords": ["constructor", "__proto__", 7, "Web"],
        "classifiers": [None, "constructor :: x", "__proto__"]}])
    rows = await couchapp.query(db, reduce=False)
    assert sorted(tuple(row["key"]) for row in rows) == [
        ("classifier", "__proto__", "odd"), ("classifier", "constructor", "odd"),
        ("classifier", "constructor :: x", "odd"),
        ("keyword", "__proto__", "odd"), ("keyword", "constructor", "odd"),
        ("keyword", "web", "odd"), ("name", "odd"), ("serial", 3, "odd")]


@pytest_twisted.ensureDeferred
async def test_authors_named_only_in_their_email_field_are_listed_quarantined_ones_not(
        couch, db_name):
    """PEP 621 metadata leaves the author empty and writes "Jane Doe <jane@x.org>" in
    author_email, which PyPI shows as Jane Doe. The view finds the names as the pages
    do (model.person_names). A quarantined project is in no list but the names."""
    from pypioncouch.model import person_names

    db = couch.database(db_name)
    await db.ensure()
    await couchapp.push(db)
    people = {"author": None,
              "author_email": 'Jane Doe <jane@x.org>, "Doe, John" <john@x.org>, b@x.org',
              "maintainer": " Ann ", "maintainer_email": "ann <a@x.org>, Zoë <z@x.org>"}
    # (read in linear time: a pattern that backtracks took minutes over such a field,
    # and a map call past CouchDB's timeout fails the whole view)
    hostile = " " * 20000 + "x, " + '"' * 20000 + "y <a@x.org>, " + "<" * 20000
    await db.bulk_docs([
        {"_id": "modern", "type": "project", "name": "Modern", "versions": [],
         "release_digests": {}, "last_serial": 4, **people},
        {"_id": "odd", "type": "project", "name": "Odd", "versions": [],
         "release_digests": {}, "last_serial": 6, "author_email": hostile},
        {"_id": "held", "type": "project", "name": "Held", "versions": ["1.0"],
         "latest_version": "1.0", "release_digests": {}, "last_serial": 5,
         "status": "quarantined", "author": "Q", "keywords": ["k"],
         "classifiers": ["Framework :: X"]}])
    rows = await couchapp.query(db, reduce=False)
    assert sorted(tuple(row["key"]) + (row["value"],) for row in rows) == [
        ("author", "doe, john", "modern", "Doe, John"),
        ("author", "jane doe", "modern", "Jane Doe"),
        ("author", "y", "odd", "y"),
        ("maintainer", "ann", "modern", "Ann"), ("maintainer", "zoë", "modern", "Zoë"),
        ("name", "held", ["Held", 5, "quarantined", None, "1.0", None]),
        ("name", "modern", ["Modern", 4, None, None, None, None]),
        ("name", "odd", ["Odd", 6, None, None, None, None]),
        ("serial", 4, "modern", None), ("serial", 5, "held", None),
        ("serial", 6, "odd", None)]
    assert person_names(people["author"], people["author_email"]) == ["Jane Doe", "Doe, John"]
    assert person_names(people["maintainer"], people["maintainer_email"]) == ["Ann", "Zoë"]
    assert person_names(None, hostile) == ["y"]


# The views' digest of each generation. Never change an entry: a change to the views
# is a new generation, added here (two different views of one generation flipped back
# and forth between an older and a newer pypioncouch, each rebuilding the index).
GENERATIONS = {2: "ebe104ec57a724db", 3: "5b4a482de148f350", 4: "ce239dfbcb36b007"}


def test_a_change_to_the_views_comes_with_a_new_generation():
    """Change a view, and this fails: raise couchapp.GENERATION, then add its digest."""
    import hashlib
    import json

    views = json.dumps(couchapp.design_document()["views"], sort_keys=True).encode()
    assert (couchapp.GENERATION, hashlib.sha256(views).hexdigest()[:16]) == \
        max(GENERATIONS.items())
    assert len(set(GENERATIONS.values())) == len(GENERATIONS)  # (each its own views)


@pytest_twisted.ensureDeferred
async def test_the_design_document_of_a_newer_version_is_never_replaced(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    older = {**couchapp.design_document(), "views": {"old": {"map": "function (d) {}"}}}
    del older["pypioncouch"]  # written before generations were counted
    await db.put(older)
    assert await couchapp.push(db) is True  # an older one is replaced
    newer = await db.get(couchapp.DESIGN_ID)
    newer.update(views={"new": {"map": "function (d) {}"}},
                 pypioncouch={"generation": couchapp.GENERATION + 1})
    await db.put(newer)
    with pytest.raises(couchapp.NewerDesign) as refused:
        await couchapp.push(db)
    assert str(refused.value).startswith(
        f"{db_name!r} holds the design document of a newer pypioncouch (generation "
        f"{couchapp.GENERATION + 1}, this one has {couchapp.GENERATION}): upgrade this "
        "pypioncouch")
    assert "new" in (await db.get(couchapp.DESIGN_ID))["views"]

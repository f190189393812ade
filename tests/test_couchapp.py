"""The design document: idempotent push, build-before-switch, validation."""

import copy

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
async def test_foreign_writes_out_of_shape_are_refused(couch, db_name):
    db = couch.database(db_name)
    await db.ensure()
    await couchapp.push(db)
    results = await db.bulk_docs([
        {"_id": "x", "type": "something else"},
        {"_id": "foo:1.0", "type": "release", "project": "bar", "version": "1.0", "files": []},
        {"_id": "foo", "type": "project", "name": "foo"},
        {"_id": "ok", "type": "project", "name": "OK", "versions": [], "release_digests": {}},
    ])
    assert [r.error for r in results] == ["forbidden", "forbidden", "forbidden", None]

"""A database written by an older version is brought up to the current schema from
what it holds, without asking PyPI."""

import pytest_twisted

from pypioncouch import couchapp
from pypioncouch.sync import run_pass

from .helpers import World


@pytest_twisted.ensureDeferred
async def test_projects_stored_before_requires_get_their_dependents(couch_server, db_name):
    world = World(couch_server.url, db_name, projects=40, seed=7)
    try:
        world.index.publish("Old.Timer", "1.0", requires_dist=[
            "Needed_Lib>=2; python_version >= '3.8'", "needed.lib[x]", "broken >= = 1"])
        await run_pass(world.importer(), full=True)
        # As an older version stored them: no "requires", no "requires_unparsable".
        rows = (await world.db.all_docs(include_docs=True))["rows"]
        old = [{k: v for k, v in row["doc"].items()
                if k not in ("requires", "requires_unparsable")}
               for row in rows if row["doc"].get("type") == "project"]
        results = await world.db.bulk_docs(old)
        assert all(result.ok for result in results)
        assert await couchapp.count(world.db, "requires", "needed-lib") == 0
        assert await couchapp.count(world.db, "needs-requires") == len(
            [d for d in old if d.get("info")])
        asked = world.resource.faults.requests
        await world.importer().prepare()  # what every start of the daemon does
        rows = await couchapp.query(world.db, reduce=False,
                                    startkey=["requires", "needed-lib"],
                                    endkey=["requires", "needed-lib", {}])
        assert [(row["id"], row["value"]) for row in rows] == [
            ("old-timer", ["Needed_Lib>=2; python_version >= '3.8'", "needed.lib[x]"])]
        assert await couchapp.count(world.db, "needs-requires") == 0
        doc = await world.db.get("old-timer")
        assert doc["requires_unparsable"] == ["broken >= = 1"]
        assert world.resource.faults.requests == asked  # PyPI was not asked
    finally:
        world.close()

"""The web front's per-project cache never keeps what changed while it was read."""

from pypioncouch.web.cache import CachedProject, ProjectCache


def entry(rev="1-a"):
    return CachedProject({"_id": "foo", "_rev": rev}, [])


def live_cache(**options):
    cache = ProjectCache(**options)
    cache.connected()
    return cache


def test_a_change_during_the_read_keeps_the_entry_out():
    cache = live_cache()
    ticket = cache.ticket()
    cache.on_change({"id": "foo:2.0"})  # a release of foo, written while we read
    cache.put("foo", entry(), ticket)
    assert cache.get("foo") is None
    cache.put("foo", entry("2-b"), cache.ticket())  # read again after the change
    assert cache.get("foo").project["_rev"] == "2-b"


def test_a_read_from_a_copy_behind_a_change_already_told_is_not_kept():
    """A cluster answers a read from any copy: one may not have the change the feed
    already told (a release's own metadata stored by the backfill, which its
    project's record does not show). Kept, it would be served until the project's
    next change; read again from a copy that has it, it is kept."""
    cache = live_cache()
    cache.on_change({"id": "foo:1.0", "changes": [{"rev": "2-own"}]})
    cache.on_change({"id": "foo:0.9", "changes": [{"rev": "3-gone"}], "deleted": True})
    ticket = cache.ticket()  # (after the changes: the ticket alone would keep it)
    behind = CachedProject({"_id": "foo", "_rev": "1-a"},
                           [{"_id": "foo:1.0", "_rev": "1-x"}])
    cache.put("foo", behind, ticket)
    assert cache.get("foo") is None
    removed_behind = CachedProject({"_id": "foo", "_rev": "1-a"},
                                   [{"_id": "foo:0.9", "_rev": "2-old"},
                                    {"_id": "foo:1.0", "_rev": "2-own"}])
    cache.put("foo", removed_behind, ticket)
    assert cache.get("foo") is None
    current = CachedProject({"_id": "foo", "_rev": "1-a"},
                            [{"_id": "foo:1.0", "_rev": "2-own"}])
    cache.put("foo", current, ticket)
    assert cache.get("foo") is current


def test_changes_to_other_projects_do_not_matter():
    cache = live_cache()
    ticket = cache.ticket()
    cache.on_change({"id": "bar"})
    cache.put("foo", entry(), ticket)
    assert cache.get("foo") is not None
    cache.on_change({"id": "foo"})
    assert cache.get("foo") is None  # evicted by its own change


def test_when_it_cannot_tell_it_does_not_cache():
    cache = live_cache(remembered=2)
    ticket = cache.ticket()
    for key in ("foo", "a", "b"):  # foo's change is forgotten, not ignored
        cache.on_change({"id": key})
    cache.put("foo", entry(), ticket)
    assert cache.get("foo") is None
    ticket = cache.ticket()
    cache.disconnected()
    cache.connected()  # the feed reconnected while we read: changes may be lost
    cache.put("foo", entry(), ticket)
    assert cache.get("foo") is None
    cache.disconnected()
    cache.put("foo", entry(), cache.ticket())  # no live feed: nothing is cached
    assert cache.get("foo") is None


# -- bounded in bytes ------------------------------------------------------------------
# An entry's estimated size: 1,024 bytes of bookkeeping + 3 per byte of JSON read from
# CouchDB (what CPython spends on the parsed documents) + 100 + the length of each
# answer rendered from it.

def sized(key, json_bytes):
    return CachedProject({"_id": key, "_rev": "1-a"}, [], json_bytes=json_bytes)


def test_the_cache_evicts_the_least_recently_used_by_bytes():
    cache = live_cache(max_bytes=10_000)
    for key in ("a", "b"):
        cache.put(key, sized(key, 1000), cache.ticket())  # 4,024 bytes each
    assert (len(cache), cache.bytes) == (2, 8048)
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", sized("c", 1000), cache.ticket())  # 12,072 > 10,000: b goes
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert (len(cache), cache.bytes, cache.evictions) == (2, 8048, 1)
    cache.put("big", sized("big", 2000), cache.ticket())  # 7,024: a and c go
    assert (len(cache), cache.bytes, cache.evictions) == (1, 7024, 3)


def test_an_entry_larger_than_the_budget_is_not_kept():
    cache = live_cache(max_bytes=10_000)
    cache.put("a", sized("a", 1000), cache.ticket())
    cache.put("huge", sized("huge", 5000), cache.ticket())  # 16,024 bytes
    assert cache.get("huge") is None
    assert cache.get("a") is not None and cache.bytes == 4024  # nothing pushed out
    empty = live_cache(max_bytes=0)  # --cache-mb 0: no cache
    empty.put("a", sized("a", 0), empty.ticket())
    assert empty.get("a") is None


def test_rendered_answers_count_and_are_capped_per_entry():
    cache = live_cache(max_bytes=10_000, variants=3)
    entry = sized("a", 1000)
    cache.put("a", entry, cache.ticket())
    renders = []
    for version in ("1", "2", "3", "4", "5"):
        body = cache.rendered(entry, f"json:{version}",
                              lambda: renders.append(version) or b"x" * 400)
        assert body == b"x" * 400
    assert list(entry.rendered) == ["json:3", "json:4", "json:5"]  # the last three
    assert cache.bytes == 4024 + 3 * 500
    cache.rendered(entry, "json:3", lambda: b"not rendered again")
    assert renders == ["1", "2", "3", "4", "5"]
    cache.rendered(entry, "json:6", lambda: b"y" * 400)  # json:4 is now the oldest
    assert list(entry.rendered) == ["json:5", "json:3", "json:6"]
    assert cache.bytes == 5524
    cache.on_change({"id": "a:1"})  # evicted: its bytes leave the count
    assert (len(cache), cache.bytes) == (0, 0)


def test_rendering_into_an_entry_can_push_out_others():
    cache = live_cache(max_bytes=10_000)
    first, second = sized("a", 1000), sized("b", 1000)
    cache.put("a", first, cache.ticket())
    cache.put("b", second, cache.ticket())
    cache.rendered(second, "html", lambda: b"z" * 2000)  # 8,048 + 2,100 > 10,000
    assert cache.get("a") is None and cache.get("b") is second
    assert cache.bytes == 6124
    loose = sized("c", 1000)  # not held (refused, or evicted): nothing is counted
    assert cache.rendered(loose, "html", lambda: b"w" * 100) == b"w" * 100
    assert cache.bytes == 6124


def test_the_daemon_takes_its_cache_size_in_megabytes(monkeypatch):
    import pytest
    from twisted.python import usage

    from pypioncouch.service import Options, WebListener, makeService

    def front(*args):
        options = Options()
        options.parseOptions(["--couch", "http://127.0.0.1:5984/", "--no-sync", *args])
        listener = next(s for s in makeService(options) if isinstance(s, WebListener))
        web = next(iter(listener))
        return web.factory.resource._app._instance  # the WebFront behind the site

    assert front().cache.max_bytes == 67_108_864  # 64 MB
    assert front("--cache-mb", "1.5").cache.max_bytes == 1_572_864
    monkeypatch.setenv("PYPIONCOUCH_CACHE_MB", "0")
    assert front().cache.max_bytes == 0
    with pytest.raises(usage.UsageError, match="--cache-mb must be a number of megabytes"):
        front("--cache-mb", "-1")


def test_the_etag_changes_with_the_version_of_pypioncouch(monkeypatch):
    """A page another version renders otherwise: not a 304 for the old one."""
    from pypioncouch.web import cache

    before = CachedProject({"_id": "foo", "_rev": "1-a"}, []).etag_base
    monkeypatch.setattr(cache, "__version__", "99.0")
    assert CachedProject({"_id": "foo", "_rev": "1-a"}, []).etag_base != before

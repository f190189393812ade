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
    assert cache.get("foo").etag_base == "2-b"


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

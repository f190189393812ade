"""The _changes follower's reconnections, on a clock: a feed that worked and broke is
reconnected at once (not after the backoff of earlier outages); one that never comes
up backs off."""

from twisted.internet import defer
from twisted.internet.task import Clock

from pypioncouch.couch import NotFound, Unreachable
from pypioncouch.follow import ChangesFollower

from .helpers import logged


class Stream:
    def __init__(self, on_started):
        self.on_started = on_started
        self.done = defer.Deferred()

    def stop(self):
        pass


class Database:
    """Hands out streams the test drives: started (CouchDB accepted the feed) or not,
    then broken."""

    display_url = "http://couch.test:5984/pypi"

    def __init__(self):
        self.streams = []
        self.since = []  # where each stream was asked to start
        self.on_created = []
        self.deleted = False

    async def info(self, timeout=None):
        if self.deleted:
            raise NotFound("no_db_file", url=self.display_url)
        return {"update_seq": "7-opaque"}

    def follow(self, on_change, *, since, include_docs, heartbeat_ms, on_started):
        self.since.append(since)
        self.streams.append(Stream(on_started))
        return self.streams[-1]


def broken(stream, live, ended=False):
    if live:
        stream.on_started()
    if ended:  # (the response ended as HTTP allows: a continuous feed never should)
        stream.done.callback("9-opaque")
    else:
        stream.done.errback(Unreachable("CouchDB went away"))


def test_a_feed_that_was_live_is_reconnected_within_a_second_however_often_it_breaks():
    clock, db = Clock(), Database()
    follower = ChangesFollower(db, lambda change: None, reactor=clock)
    follower.startService()
    try:
        for number in range(1, 8):
            assert len(db.streams) == number
            db.streams[-1].on_started()
            clock.advance(60.0)  # changes flow for a minute
            broken(db.streams[-1], live=False)
            assert not follower.live
            clock.advance(1.0)
        assert len(db.streams) == 8
    finally:
        follower.stopService()


def waits_after_breaks(breaks: int, live: bool, ended: bool = False) -> list[float]:
    """The seconds before each reconnection of a feed that breaks ``breaks`` times in
    a row at once (accepted first, if ``live``)."""
    clock, db = Clock(), Database()
    follower = ChangesFollower(db, lambda change: None, reactor=clock, max_backoff=30.0)
    follower.startService()
    try:
        waited = []
        for _ in range(breaks):
            streams = len(db.streams)
            broken(db.streams[-1], live=live, ended=ended)
            seconds = 0.0
            while len(db.streams) == streams:
                clock.advance(0.5)
                seconds += 0.5
            waited.append(seconds)
        return waited
    finally:
        follower.stopService()


def test_a_feed_dropped_as_soon_as_accepted_backs_off():
    assert waits_after_breaks(6, live=True) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]


def test_a_feed_that_never_comes_up_backs_off_up_to_the_limit():
    assert waits_after_breaks(8, live=False) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_feed_that_ends_as_soon_as_accepted_backs_off_as_a_broken_one():
    """(Not every 0.5 s for ever, resetting the web cache each time, without a word.)"""
    assert waits_after_breaks(6, live=True, ended=True) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]



def test_stopping_a_live_feed_is_no_loss_to_report():
    class Stoppable(Stream):
        def stop(self):
            self.done.callback("9-opaque")  # (the stream ends at once, as ours does)

    class Db(Database):
        def follow(self, on_change, *, since, include_docs, heartbeat_ms, on_started):
            self.streams.append(Stoppable(on_started))
            return self.streams[-1]

    with logged() as said:
        clock, db = Clock(), Db()
        follower = ChangesFollower(db, lambda change: None, reactor=clock)
        follower.startService()
        db.streams[-1].on_started()
        follower.stopService()
        clock.advance(60.0)
    assert len(db.streams) == 1
    assert not [e for e in said if "feed lost" in str(e.get("log_format", ""))]


def test_a_database_not_there_yet_is_waited_for_without_a_warning():
    """(every first start of the daemon warned "_changes feed lost": the web front's
    feed asks for the database before the sync creates it) A database deleted while
    followed is still said."""
    from twisted.logger import LogLevel

    with logged() as said:
        clock, db = Clock(), Database()
        db.deleted = True  # (not there yet: "now" cannot be read)
        follower = ChangesFollower(db, lambda change: None, reactor=clock)
        follower.startService()
        clock.advance(1.0)
        warnings = [e for e in said if e.get("log_level") == LogLevel.warn]
        assert warnings == [] and db.streams == []
        assert any("not there yet" in str(e.get("log_format")) for e in said)
        db.deleted = False  # (the sync created it)
        clock.advance(2.0)
        assert len(db.streams) == 1
        db.streams[-1].on_started()
        clock.advance(60.0)
        db.deleted = True
        db.streams[-1].done.errback(NotFound("no_db_file", url=db.display_url))
        clock.advance(2.0)  # (a look a moment later finds it gone too)
        follower.stopService()
    assert [e for e in said if e.get("log_level") == LogLevel.warn
            and "feed lost" in str(e.get("log_format"))]


def following_from(since):
    """A follower from ``since`` that starts over from 0 after a loss, and the list of
    the losses it said: ``(clock, db, follower, lost)``."""
    clock, db, lost = Clock(), Database(), []
    follower = ChangesFollower(db, lambda change: None, since=since, after_loss=0,
                               on_lost=lambda: lost.append(True), reactor=clock)
    return clock, db, follower, lost


def test_a_database_created_again_through_its_client_starts_the_feed_over():
    """Whether a feed is open (pouchdb-server keeps one on the deleted database) or
    the follower is waiting to reconnect with the old database's seq: it starts over
    from ``after_loss`` on the new one, and says the loss."""
    clock, db, follower, lost = following_from("5-old")
    follower.startService()
    try:
        db.streams[-1].on_started()
        stopped = []
        db.streams[-1].stop = lambda: (stopped.append(True),
                                       db.streams[0].done.callback("5-old"))
        for created in db.on_created:
            created()
        assert stopped and lost == [True] and not follower.live
        clock.advance(1.0)
        assert db.since == ["5-old", 0]
        db.streams[-1].on_started()
        broken(db.streams[-1], live=True)  # (it breaks: waiting to reconnect at "0")
        for created in db.on_created:
            created()  # (created again meanwhile)
        for _ in range(60):
            clock.advance(1.0)
        assert db.since == ["5-old", 0, 0] and lost == [True, True]
    finally:
        follower.stopService()
    assert db.on_created == []


def test_changes_delivered_while_a_look_is_answered_are_no_database_created_again():
    """pouchdb-server reads update_seq, then measures the database's size before it
    answers: changes written meanwhile reach the feed first. Taken for a database
    created again, the OPML watcher would start over from 0 at every busy look; one
    whose seq is behind what the feed had before asking is."""
    class Db(Database):
        def __init__(self):
            super().__init__()
            self.looks, self.deliver = [], None

        def info(self, timeout=None):
            self.looks.append(defer.Deferred())
            return self.looks[-1]

        def follow(self, on_change, *, since, include_docs, heartbeat_ms, on_started):
            self.deliver = on_change
            return super().follow(on_change, since=since, include_docs=include_docs,
                                  heartbeat_ms=heartbeat_ms, on_started=on_started)

    clock, db = Clock(), Db()
    follower = ChangesFollower(db, lambda change: None, since=10, reactor=clock,
                               probe_seconds=60.0)
    follower.startService()
    try:
        db.streams[-1].on_started()
        stopped = []
        db.streams[-1].stop = lambda: stopped.append(True)
        clock.advance(60.0)  # (a look: its answer on its way)
        db.deliver({"seq": 11, "id": "a"})
        db.deliver({"seq": 12, "id": "b"})
        db.looks[-1].callback({"update_seq": 10})  # (read before those two were written)
        assert not stopped and follower.since == 12
        clock.advance(60.0)
        db.looks[-1].callback({"update_seq": 3})  # (behind 12: created again)
        assert stopped
    finally:
        follower.stopService()


def test_a_404_in_passing_is_no_loss_of_the_database():
    """A proxy with no backend a moment, or a cluster node without the database's shard
    map yet, answers 404: the OPML watcher started over from 0 (hours of reads at
    PyPI's size). A look a moment later finds the database: followed on from its seq.
    One that finds it gone (or a probe finding it gone twice) starts over."""
    from twisted.logger import LogLevel

    clock, db, follower, lost = following_from("5-old")
    with logged() as said:
        follower.startService()
        try:
            db.streams[-1].on_started()
            follower._deliver({"seq": "6-seen", "id": "x"})
            clock.advance(60.0)
            db.streams[-1].done.errback(NotFound("no_db_file", url=db.display_url))
            assert not follower.live  # (at once: nothing is missed while it looks)
            clock.advance(2.0)
            clock.advance(1.0)
            assert db.since == ["5-old", "6-seen"] and lost == []
            assert any("answers again: taken for a fault in passing" in
                       str(e.get("log_format")) for e in said
                       if e.get("log_level") == LogLevel.warn)
            db.streams[-1].on_started()
            clock.advance(60.0)
            db.deleted = True
            db.streams[-1].done.errback(NotFound("no_db_file", url=db.display_url))
            clock.advance(2.0)
            assert lost == [True]
            db.deleted = False  # (created again)
            clock.advance(1.0)
            assert db.since == ["5-old", "6-seen", 0]
        finally:
            follower.stopService()


def test_a_feed_that_keeps_failing_is_said_on_status_by_the_opml_watcher():
    """(it was logged, on the 1st, 10th and every 100th failure, and /status showed no
    error while every opml.xml went stale)"""
    from pypioncouch.opml_watcher import OpmlWatcher

    clock, db = Clock(), Database()
    watcher = OpmlWatcher(db, reactor=clock)
    follower = ChangesFollower(db, lambda change: None, reactor=clock,
                               on_failed=watcher._feed_failed,
                               on_connected=watcher._connected)
    follower.startService()
    try:
        for number in range(1, 4):
            broken(db.streams[-1], live=False)
            assert watcher.status.opml_error is None if number < 3 else \
                watcher.status.opml_error == (
                    "its _changes feed fails (CouchDB went away; try 3): no opml.xml is "
                    "written meanwhile"), number
            clock.advance(30.0)
        db.streams[-1].on_started()
        assert watcher.status.opml_error is None
    finally:
        follower.stopService()


def test_a_fault_of_ours_in_the_feed_is_said_and_the_feed_goes_on():
    """(anything but a CouchError ended the follower without a word: the web cache and
    the OPML watcher dead until a restart)"""
    clock, db = Clock(), Database()
    follower = ChangesFollower(db, lambda change: None, reactor=clock)
    with logged() as said:
        follower.startService()
        try:
            db.streams[-1].on_started()
            db.streams[-1].done.errback(KeyError("seq"))
            clock.advance(1.0)
            assert len(db.streams) == 2 and follower.running
        finally:
            follower.stopService()
    assert any("_changes feed failed; reconnecting" in str(e.get("log_format"))
               and e.get("log_failure") is not None for e in said)


def test_a_404_in_passing_on_the_first_feed_from_a_checkpoint_is_looked_at_twice_too():
    """The OPML watcher starts from its checkpoint, read from the database a moment
    before: a 404 on its first feed was taken for the database's loss at once (0)."""
    clock, db, follower, lost = following_from("5-saved")
    follower.startService()
    try:
        db.streams[-1].done.errback(NotFound("no_db_file", url=db.display_url))
        clock.advance(2.0)
        clock.advance(1.0)
        assert db.since == ["5-saved", "5-saved"] and lost == []
    finally:
        follower.stopService()


def test_a_failing_hook_does_not_end_the_feed():
    clock, db = Clock(), Database()

    def on_failed(error, failures):
        raise RuntimeError("a bug in the hook")

    follower = ChangesFollower(db, lambda change: None, reactor=clock, on_failed=on_failed)
    with logged() as said:
        follower.startService()
        try:
            broken(db.streams[-1], live=False)
            clock.advance(1.0)
            assert len(db.streams) == 2 and follower.running
        finally:
            follower.stopService()
    assert any("after the feed's failure" in str(e.get("log_format")) for e in said)

"""Follow a database's ``_changes`` feed for ever: reconnect with backoff when CouchDB
goes away, resume from the last seq seen (opaque). Used by the web front's cache and
by the OPML watcher."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from pypioncouch.backoff import doubling
from pypioncouch.couch import CouchError, Database, NotFound, Unreachable
from pypioncouch.pipeline import CoroutineService

log = Logger()

LIVE_LONG_ENOUGH = 10.0  # seconds a feed must have lasted for its backoff to start over
# How often a live feed checks that its database is still there: pouchdb-server keeps
# a feed on a deleted database open (heartbeats and all), and one recreated under the
# same name is never followed.
PROBE_SECONDS = 60.0
# How long after a 404 the follower asks again whether its database is gone: a proxy
# with no backend for a moment, or a cluster node that has not got the database's
# shard map yet, answers 404 in passing, and the OPML watcher starting over from 0 is
# hours of reads at PyPI's size.
CONFIRM_LOSS_SECONDS = 2.0


def seq_went_back(since: Any, update_seq: Any) -> bool:
    """Whether a database's ``update_seq`` is behind a seq the follower had from it:
    created again meanwhile (pouchdb-server's seqs are numbers; Apache CouchDB's are
    opaque, and its feed on a deleted database ends)."""
    return (isinstance(since, int) and isinstance(update_seq, int)
            and not isinstance(since, bool) and update_seq < since)


class ChangesFollower(CoroutineService):
    """Calls ``on_change(change)`` for every change after ``since``.

    ``on_connected()`` runs each time the stream is (re)established — CouchDB has
    accepted it — before changes flow; ``on_disconnected()`` each time it breaks;
    ``on_failed(error, failures)`` after each failure, with how many in a row.
    ``since`` is where to start (``"now"``, or a seq that came from CouchDB);
    afterwards the follower resumes from the last seq it delivered.

    ``"now"`` is resolved to the database's ``update_seq``, read before the feed is
    requested: CouchDB's own ``since=now`` is the moment the feed's request arrives,
    and a write before that would never be delivered (a cache going live meanwhile
    would keep what that write replaced).

    A database deleted (and perhaps created again under its name) breaks the feed;
    once a look :data:`CONFIRM_LOSS_SECONDS` later finds it gone too (or its seq gone
    back), the follower starts over from ``after_loss`` (``"now"``, or ``0`` to see
    every document of the new database): seqs of the old one mean nothing there.
    ``on_lost()`` says so, after ``on_disconnected()``. The database created again
    through ``db`` (the daemon's sync does) is such a loss at once, not at the next
    probe: pouchdb-server keeps a feed on the deleted one open.
    """

    def __init__(self, db: Database, on_change: Callable[[dict], Any], *, since: Any = "now",
                 include_docs: bool = False, heartbeat_ms: int = 5000,
                 on_connected: Callable[[], Any] = lambda: None,
                 on_disconnected: Callable[[], Any] = lambda: None,
                 on_lost: Callable[[], Any] = lambda: None,
                 on_failed: Callable[[CouchError, int], Any] = lambda error, failures: None,
                 max_backoff: float = 30.0, reactor=None, name: str = "changes",
                 after_loss: Any = "now", probe_seconds: float | None = None):
        if reactor is None:
            from twisted.internet import reactor
        self.db = db
        self.on_change = on_change
        self.since = since
        self.include_docs = include_docs
        self.heartbeat_ms = heartbeat_ms
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.on_lost = on_lost
        self.on_failed = on_failed
        self.max_backoff = max_backoff
        self.reactor = reactor
        self.name = name
        self.after_loss = after_loss
        self.probe_seconds = PROBE_SECONDS if probe_seconds is None else probe_seconds
        self.live = False
        self._gone = False  # the probe found the database gone (or created again)
        self._recreated = False  # known created again: no need to look twice
        self._live_since = 0.0
        self._ever_live = False  # (a database not there before: not yet created)
        self._stream = None

    def startService(self):
        self.db.on_created.append(self._database_created)
        super().startService()

    def stopService(self):
        self.running = False  # (before the stream ends: its end is no break then)
        if self._database_created in self.db.on_created:
            self.db.on_created.remove(self._database_created)
        if self._stream is not None:
            self._stream.stop()
        return super().stopService()

    def _database_created(self) -> None:
        """The database was created again: whatever seq this follower holds is the
        old one's, and a feed still open is on the old one."""
        self._gone = self._recreated = True
        if self._stream is not None:
            self._stream.stop()

    async def run(self) -> None:
        failures = 0
        while self.running:
            try:
                await self._follow()
            except CouchError as error:
                try:
                    failures = await self._broken(error, failures)
                except defer.CancelledError:
                    raise
                except Exception:  # (a bug of ours: the feed must go on, said)
                    log.failure("{name}: after the _changes feed broke", name=self.name)
                    failures += 1
            except defer.CancelledError:
                raise
            except Exception:  # (a bug of ours: the feed must go on, said)
                log.failure("{name}: _changes feed failed; reconnecting", name=self.name)
                failures += 1
            finally:
                self._disconnected()
            if self.running:
                delay = doubling(failures + 1, 0.5, self.max_backoff)  # (1 s, 2 s...)
                await task.deferLater(self.reactor, delay, lambda: None)

    async def _follow(self) -> None:
        """One feed, until it breaks (a :class:`CouchError`) or the follower stops."""
        if self._gone:  # (created again while no feed was open)
            raise NotFound("the database is gone", url=self.db.display_url)
        if self.since == "now":
            self.since = (await self.db.info())["update_seq"]
        self._stream = self.db.follow(self._deliver, since=self.since,
                                      include_docs=self.include_docs,
                                      heartbeat_ms=self.heartbeat_ms,
                                      on_started=self._started)
        if self._gone:  # (created again while "now" was being read)
            self._stream.stop()
        probe = task.LoopingCall(
            lambda stream=self._stream: defer.ensureDeferred(self._probe(stream)))
        probe.clock = self.reactor
        probe.start(self.probe_seconds, now=False)
        try:
            await self._stream.done
        finally:
            if probe.running:  # (a probe that failed stopped its loop)
                probe.stop()
        if not self.running:
            return  # (stopped: the feed ended as asked)
        if self._gone:
            raise NotFound("the database is gone", url=self.db.display_url)
        # A continuous feed never ends well (a deleted database ends it on Apache
        # CouchDB): as a break, backed off and said.
        raise Unreachable("the _changes feed ended", url=self.db.display_url)

    async def _broken(self, error: CouchError, failures: int) -> int:
        """After a feed broke: whether its database is gone (then start over from
        ``after_loss``), said as it should be. Returns the failures in a row now."""
        # A feed live for a while starts its backoff over: a continuous feed never
        # ends well, and a restart an hour ago must not slow this one. (One dropped
        # as soon as accepted, a proxy's say, backs off further.)
        lasted = self.live and self.reactor.seconds() - self._live_since >= LIVE_LONG_ENOUGH
        self._disconnected()  # (before any look: the feed is down meanwhile)
        lost = isinstance(error, NotFound)  # (the database deleted?)
        # (a seq of this database's, read from it a moment ago (the OPML watcher's
        # checkpoint), or a feed it gave: a 404 is looked at twice)
        known = self._ever_live or self.since not in ("now", 0, None)
        if lost and known and not self._recreated:
            lost = not await self._answers_again(error) or self._recreated
        if lost:
            self.since = self.after_loss
            try:
                self.on_lost()
            except Exception:  # (the feed must go on)
                log.failure("{name}: after the database's loss", name=self.name)
        self._gone = self._recreated = False
        failures = 1 if lasted else failures + 1
        if lost and not self._ever_live and failures < 10:
            if failures == 1:  # (a first start: the sync creates it in a moment)
                log.info("{name}: the database is not there yet; its _changes "
                         "feed is asked for until it is", name=self.name)
        elif failures in (1, 10) or failures % 100 == 0:
            log.warn("{name}: _changes feed lost ({error}); reconnecting",
                     name=self.name, error=error)
        try:
            self.on_failed(error, failures)
        except Exception:  # (the feed must go on)
            log.failure("{name}: after the feed's failure", name=self.name)
        return failures

    def _disconnected(self) -> None:
        was_live, self.live, self._stream = self.live, False, None
        if was_live:
            self.on_disconnected()

    async def _answers_again(self, error: NotFound) -> bool:
        """Whether the database a 404 said gone answers a moment later, its seq not
        gone back: a fault in passing, the feed followed on from where it was."""
        await task.deferLater(self.reactor, CONFIRM_LOSS_SECONDS, lambda: None)
        try:
            info = await self.db.info(timeout=10.0)
        except NotFound:
            return False
        except CouchError:  # (CouchDB away now: the next feed's request says more)
            return True
        if seq_went_back(self.since, info.get("update_seq")):
            return False
        log.warn("{name}: CouchDB answered 404 for the database ({error}), which "
                 "answers again: taken for a fault in passing, followed on",
                 name=self.name, error=error)
        return True

    async def _probe(self, stream) -> None:
        """Whether the database is still the one followed: not gone, and not created
        again by another program between two looks (its seq went back)."""
        # (the seq had before asking: changes delivered while the answer is on its way
        # may be past the update_seq it says)
        since = self.since
        info = None
        try:
            info = await self.db.info(timeout=self.probe_seconds / 2)
        except NotFound:
            gone = True
        except CouchError:
            return  # (CouchDB away: the feed itself says so)
        else:
            gone = seq_went_back(since, info.get("update_seq"))
        if gone and stream is self._stream:  # (not a probe that outlived its feed)
            self._gone = True
            self._recreated = info is not None
            stream.stop()

    def _started(self) -> None:
        self.live, self._live_since, self._ever_live = True, self.reactor.seconds(), True
        self.on_connected()

    def _deliver(self, change: dict) -> None:
        self.since = change["seq"]
        self.on_change(change)

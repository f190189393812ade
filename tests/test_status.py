"""Lag, health and uptime with an injected clock: literal times, no waiting.

``SyncStatus(clock=...)`` reads the time from the test; the web front's ``/health`` is
asked in memory (klein's resource through ``treq.testing.StubTreq``), its CouchDB a
scripted ``http=`` object.
"""

from treq.testing import StubTreq
from twisted.internet import defer, task

from pypioncouch.couch import CouchDB
from pypioncouch.status import SyncStatus
from pypioncouch.web.app import WebFront

from .helpers import ScriptedHTTP


class FakeTime:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_lag_is_unknown_until_both_serials_are_known():
    status = SyncStatus(clock=FakeTime(1000.0))
    assert (status.started, status.lag, status.lag_seconds()) == (1000.0, None, None)
    status.note_serials(pypi_serial=100)
    assert (status.lag, status.lag_seconds()) == (None, None)


def test_lag_counts_from_the_moment_we_were_last_caught_up():
    now = FakeTime(1000.0)
    status = SyncStatus(clock=now)
    now.now = 1010.0
    status.note_serials(pypi_serial=100, our_serial=100)
    assert (status.lag, status.lag_seconds(), status.caught_up_at) == (0, 0.0, 1010.0)
    now.now = 1500.0
    status.note_serials(pypi_serial=120)
    assert (status.lag, status.pypi_serial_at, status.our_serial_at) == (20, 1500.0, 1010.0)
    now.now = 1700.0
    assert status.lag_seconds() == 690.0
    status.note_serials(our_serial=115)  # closer, not caught up: still counting
    assert (status.lag, status.lag_seconds()) == (5, 690.0)
    now.now = 1701.0
    status.note_serials(our_serial=120)  # caught up with PyPI as it was at 1500
    assert (status.lag, status.lag_seconds(), status.caught_up_at) == (0, 0.0, 1500.0)
    now.now = 1800.0
    status.note_serials(our_serial=120)  # (a checkpoint loaded, PyPI not asked since)
    assert status.caught_up_at == 1500.0


def test_never_caught_up_counts_from_the_start():
    now = FakeTime(500.0)
    status = SyncStatus(clock=now)
    now.now = 600.0
    status.note_serials(pypi_serial=10, our_serial=5)
    now.now = 800.0
    assert status.lag_seconds() == 300.0


def test_errors_are_stamped_and_counted_by_kind():
    now = FakeTime(42.0)
    status = SyncStatus(clock=now)
    status.note_error("PyPI refused the connection", "pypi")
    now.now = 43.5
    status.note_error("HTTP 503", "pypi")
    status.note_error("CouchDB did not answer", "couch")
    assert (status.last_error, status.last_error_at) == ("CouchDB did not answer", 43.5)
    assert status.errors_by_kind == {"pypi": 2, "couch": 1}


def front_with(status, couch_answers, **options):
    """A web front in memory: ``(StubTreq, reactor clock, scripted CouchDB)``."""
    clock = task.Clock()
    clock.advance(1000.0)  # (the CouchDB check is cached for a second of reactor time)
    http = ScriptedHTTP(*couch_answers, clock=clock)
    db = CouchDB("http://127.0.0.1:5984/", http=http, reactor=clock).database("pypi")
    front = WebFront(db, status, reactor=clock, **options)
    return StubTreq(front.resource()), clock, http, front


def health(stub, clock):
    clock.advance(2.0)  # a fresh CouchDB check for every request
    d = stub.get("http://front.test/health")
    stub.flush()
    results = []
    d.addBoth(results.append)
    response = results[0]
    d = stub.json_content(response)
    body = []
    d.addBoth(body.append)
    return response.code, body[0]


COUCH_UP = (200, {"content-type": "application/json"}, b'{"db_name":"pypi","doc_count":3}')
COUCH_DOWN = (500, {"content-type": "application/json"}, b'{"error":"unknown_error"}')
COUCH_MISSING = (404, {"content-type": "application/json"},
                 b'{"error":"not_found","reason":"Database does not exist."}')
COUCH_WELCOME = (200, {"content-type": "application/json"},
                 b'{"couchdb":"Welcome","version":"3.5.0"}')


def test_health_follows_the_lag_to_the_second():
    now = FakeTime(1000.0)
    status = SyncStatus(clock=now)
    stub, clock, http, _ = front_with(status, [COUCH_UP] * 6, max_lag_seconds=600.0)
    assert health(stub, clock) == (503, {
        "status": "unhealthy", "reasons": ["not synced yet"], "syncing": True,
        "phase": "starting", "pypi_serial": None, "serial": None, "lag": None,
        "lag_seconds": None})
    status.phase = "incremental"
    status.note_serials(pypi_serial=100, our_serial=100)
    assert health(stub, clock) == (200, {
        "status": "ok", "reasons": [], "syncing": True, "phase": "incremental",
        "pypi_serial": 100, "serial": 100, "lag": 0, "lag_seconds": 0.0})
    now.now = 1300.0
    status.note_serials(pypi_serial=120)
    now.now = 1600.0  # 600 s behind: at the limit, still healthy
    assert health(stub, clock)[0] == 200
    now.now = 1601.0
    assert health(stub, clock) == (503, {
        "status": "unhealthy", "reasons": ["20 serials (601s) behind PyPI"], "syncing": True,
        "phase": "incremental", "pypi_serial": 120, "serial": 100, "lag": 20,
        "lag_seconds": 601.0})
    status.note_serials(our_serial=120)
    assert health(stub, clock)[0] == 200
    assert http.urls == ["http://127.0.0.1:5984/pypi/"] * 5


def test_health_says_when_couchdb_or_the_passes_fail():
    status = SyncStatus(clock=FakeTime(1000.0), phase="incremental")
    status.note_serials(pypi_serial=100, our_serial=100)
    stub, clock, http, _ = front_with(status, [
        COUCH_DOWN, COUCH_MISSING, COUCH_WELCOME, COUCH_MISSING, COUCH_UP, COUCH_UP])
    code, body = health(stub, clock)
    assert (code, body["reasons"]) == (503, [
        "CouchDB answers: GET failed: unknown_error (500 from http://127.0.0.1:5984/pypi/)"])
    clock.advance(1.0)
    code, body = health(stub, clock)
    assert (code, body["reasons"]) == (503, ["CouchDB has no database 'pypi'"])
    # The database's URL given for the server's (as PYPIONCOUCH_UPSTREAM takes it):
    # its database is not found in itself, and the server's URL answers as a database.
    clock.advance(1.0)
    code, body = health(stub, clock)
    assert code == 503 and body["reasons"][0].startswith(
        "this URL names the database 'pypi', not the server: give the server's URL "
        "(and --db pypi)"), body
    clock.advance(1.0)
    status.consecutive_failures = 3
    status.note_sync_error("PyPI refused the connection (https://pypi.org/pypi)")
    status.clock.now += 601  # (no pass has succeeded since the start)
    code, body = health(stub, clock)
    assert (code, body["reasons"]) == (503, [
        "no sync pass has succeeded for 601s (the last 3 failed): PyPI refused the "
        "connection (https://pypi.org/pypi)"])


def test_uptime_is_read_from_the_status_clock():
    now = FakeTime(1000.0)
    status = SyncStatus(clock=now)
    _, _, _, front = front_with(status, [])
    now.now = 1250.0
    lines = front.metrics.exposition().decode().splitlines()
    assert "pypioncouch_uptime_seconds 250.0" in lines


def test_the_sync_lag_and_the_import_figures_are_exported():
    now = FakeTime(1000.0)
    status = SyncStatus(clock=now, phase="full import", import_done=3, import_total=40)
    status.note_serials(pypi_serial=100, our_serial=100)
    now.now = 1100.0
    status.note_serials(pypi_serial=120)
    now.now = 1400.0
    _, _, _, front = front_with(status, [])
    lines = front.metrics.exposition().decode().splitlines()
    for line in ("pypioncouch_lag_serials 20.0", "pypioncouch_lag_seconds 400.0",
                 "# TYPE pypioncouch_import_projects gauge", "pypioncouch_import_projects 40.0",
                 "pypioncouch_import_done 3.0"):
        assert line in lines, line
    assert not any(line.startswith("pypioncouch_import_total") for line in lines)


def test_what_an_alert_needs_is_exported():
    """The lag figures stand still while PyPI cannot be asked; held removals, a held
    checkpoint, writes that all fail, a failing OPML watcher or conflict resolver
    were on /status and /health's one answer only."""
    now = FakeTime(1000.0)
    status = SyncStatus(clock=now, phase="incremental")
    _, _, _, front = front_with(status, [])

    def lines():
        return front.metrics.exposition().decode().splitlines()

    flags = ("removals_held", "checkpoint_held", "writes_stuck", "opml_failing",
             "conflicts_failing")
    assert all(f"pypioncouch_{flag} 0.0" in lines() for flag in flags)
    assert "pypioncouch_last_pass_success_timestamp_seconds" not in "\n".join(
        line for line in lines() if not line.startswith("#"))
    status.last_pass_ok_at = 1500.0
    status.removals_held = "PyPI says 300 projects are gone, more than the 100 ..."
    status.note_checkpoint("the listing is incomplete")
    status.note_pass(False, 3, 5)
    status.opml_error = "its _changes feed fails"
    status.conflicts_error = "CouchDB away"
    assert "pypioncouch_last_pass_success_timestamp_seconds 1500.0" in lines()
    assert all(f"pypioncouch_{flag} 1.0" in lines() for flag in flags), lines()


def test_a_full_import_is_not_healthy_yet():
    status = SyncStatus(clock=FakeTime(0.0), phase="full import", import_done=3,
                        import_total=40)
    stub, clock, http, _ = front_with(status, [COUCH_UP])
    code, body = health(stub, clock)
    assert (code, body["reasons"]) == (503, ["full import in progress (3/40)"])


def started_get(stub, url):
    d = stub.get(url)
    results = []
    d.addBoth(results.append)
    return results


def test_a_hung_couchdb_is_unhealthy_within_the_probe_timeout():
    """Not after the client's 30 s: a load balancer's check or a Prometheus scrape
    (10 s) would give up on the page first. A request meanwhile does not pile another
    check on the hung one: before any result it waits for that one's (it said "not
    answering" before CouchDB was asked), after one it takes the last."""
    status = SyncStatus(clock=FakeTime(1000.0))
    status.note_serials(pypi_serial=100, our_serial=100)
    stub, clock, http, _ = front_with(status, [ScriptedHTTP.HANG, COUCH_UP,
                                               ScriptedHTTP.HANG])
    first = started_get(stub, "http://front.test/health")
    stub.flush()
    clock.advance(1.5)
    second = started_get(stub, "http://front.test/health")  # waits for the first check
    stub.flush()
    assert second == [] and len(http.requests) == 1
    clock.advance(3.499)
    stub.flush()
    assert first == [] and second == []
    clock.advance(0.001)
    stub.flush()
    assert first[0].code == 503 and second[0].code == 503 and http.cancelled == 1
    assert health(stub, clock)[0] == 200  # (CouchDB answers again)
    clock.advance(2.0)
    hung = started_get(stub, "http://front.test/health")
    stub.flush()
    clock.advance(0.5)
    metrics = started_get(stub, "http://front.test/metrics")  # takes the last result
    stub.flush()
    assert metrics and metrics[0].code == 200 and hung == [] and len(http.requests) == 3
    clock.advance(5.0)
    stub.flush()
    assert hung[0].code == 503
    body = []
    stub.json_content(first[0]).addBoth(body.append)
    assert body[0]["reasons"] == ["CouchDB is not answering"]


def test_a_client_leaving_during_the_check_does_not_make_couchdb_down_for_the_others():
    """(the check was the first request's: its client gone, the check was cancelled,
    and the requests waiting for it, and the next second's, were told "not answering")"""
    status = SyncStatus(clock=FakeTime(1000.0))
    answer = defer.Deferred()
    _, clock, http, front = front_with(status, [answer])
    first = defer.ensureDeferred(front.couch_ok())
    second = defer.ensureDeferred(front.couch_ok())
    first.cancel()
    left = []
    first.addErrback(lambda failure: left.append(failure.check(defer.CancelledError)))
    assert left == [defer.CancelledError] and not second.called
    answer.callback(COUCH_UP)
    assert second.result is True and status.couch_ok is True
    assert len(http.requests) == 1


def test_a_replicas_hung_upstream_is_said_within_the_probe_timeout():
    view = (200, {"content-type": "application/json"},
            b'{"rows":[{"key":["serial",7],"value":null}]}')
    upstream_http = ScriptedHTTP(ScriptedHTTP.HANG)
    stub, clock, http, front = front_with(
        SyncStatus(), [COUCH_UP, view],
        syncing=False, upstream=CouchDB("http://127.0.0.1:6984/", http=upstream_http,
                                        reactor=task.Clock()).database("pypi"))
    front.replica.reactor = clock
    front.replica.upstream.server._reactor = clock
    answer = started_get(stub, "http://front.test/health")
    stub.flush()
    clock.advance(4.999)
    stub.flush()
    assert answer == []
    clock.advance(0.001)
    stub.flush()
    assert answer and answer[0].code == 200  # (unhealthy once behind for --max-lag)
    body = []
    stub.json_content(answer[0]).addBoth(body.append)
    assert body[0]["upstream_error"].startswith("CouchDB did not answer GET within 5s")

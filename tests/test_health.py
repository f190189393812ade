"""The health policy on its own: literal states in, literal reasons out."""

from pypioncouch.status import SyncStatus
from pypioncouch.web.health import HealthPolicy

UPSTREAM = "http://mirror:***@primary:5984/pypi"


def test_a_replica_is_unhealthy_only_past_its_lag_budget():
    policy = HealthPolicy(SyncStatus(), syncing=False, max_lag_seconds=10.0)
    assert policy.reasons(True, {"lag": 4, "lag_seconds": 10.0, "upstream": UPSTREAM}) == []
    assert policy.reasons(True, {"lag": 4, "lag_seconds": 10.4, "upstream": UPSTREAM}) == [
        "4 serials (10s) behind the upstream http://mirror:***@primary:5984/pypi"]
    assert policy.reasons(False, {}) == ["CouchDB is not answering"]
    assert policy.reasons(True, {}) == []  # no upstream: nothing to compare with


def test_a_syncing_daemon_names_each_reason():
    now = [1000.0]
    status = SyncStatus(clock=lambda: now[0])
    policy = HealthPolicy(status, syncing=True, max_lag_seconds=600.0)
    assert policy.reasons(True) == ["not synced yet"]
    status.phase, status.import_done, status.import_total = "full import", 5, 9
    assert policy.reasons(False) == ["CouchDB is not answering",
                                     "full import in progress (5/9)"]
    status.phase = "idle"
    status.note_serials(pypi_serial=10, our_serial=10)
    status.last_pass_ok_at = 1000.0
    status.consecutive_failures = 2
    status.note_sync_error("PyPI refused the connection")
    status.note_error("web simple: CouchDB did not answer within 30s", "couchdb")  # not it
    assert policy.reasons(True) == []  # (a blip of PyPI's: the data is a minute old)
    now[0] = 1601.0
    status.removals_held = "PyPI says 300 projects are gone, more than the 100 ..."
    assert policy.reasons(True) == [
        "no sync pass has succeeded for 601s (the last 2 failed): PyPI refused the "
        "connection",
        "PyPI says 300 projects are gone, more than the 100 ..."]
    # One pass failing for an hour (PyPI's rate limit said when to come back) too.
    status.consecutive_failures, status.removals_held = 1, None
    assert policy.reasons(True) == [
        "no sync pass has succeeded for 601s (the last 1 failed): PyPI refused the "
        "connection"]


def test_a_replica_that_cannot_read_its_upstream_says_so_past_its_lag_budget():
    policy = HealthPolicy(SyncStatus(), syncing=False, max_lag_seconds=10.0)
    unknown = {"lag": None, "lag_seconds": 12.0, "upstream": UPSTREAM,
               "upstream_error": "CouchDB refused the connection: is it running?"}
    assert policy.reasons(True, unknown) == [
        "no word from the upstream http://mirror:***@primary:5984/pypi for 12s: "
        "CouchDB refused the connection: is it running?"]
    assert policy.reasons(True, dict(unknown, lag_seconds=9.0)) == []


def test_couchdb_refusing_our_credentials_is_not_called_silence():
    status = SyncStatus()
    policy = HealthPolicy(status, syncing=False)
    status.couch_problem = "CouchDB does not accept user 'admin': wrong user name or password"
    assert policy.reasons(False, {}) == [
        "CouchDB does not accept user 'admin': wrong user name or password"]


def test_a_refusal_names_the_right_a_reader_or_a_syncing_daemon_needs():
    from pypioncouch.couch import refusal

    assert refusal("user 'reader'", "pypi", 403, writes=False) == (
        "CouchDB user 'reader' may not read the database 'pypi': make it one of that "
        "database's members (its _security)")
    assert refusal("user 'sync'", "pypi", 403) == (
        "CouchDB user 'sync' may not read the database 'pypi': make it an admin of that "
        "database (its _security)")


def test_passes_that_write_nothing_but_failures_are_unhealthy_past_the_lag_budget():
    """Each pass keeps its failures pending and moves the checkpoint on: the lag stays 0
    while PyPI fails every project (a 503 for each JSON answer, say)."""
    now = [1000.0]
    status = SyncStatus(clock=lambda: now[0])
    policy = HealthPolicy(status, syncing=True, max_lag_seconds=600.0)
    status.phase = "idle"
    status.note_serials(pypi_serial=50, our_serial=50)
    status.pending = 3
    status.note_sync_error("numpy: HTTP 503 Service Unavailable", "pypi")
    status.note_pass(wrote=False, pending=3, changed=3)
    now[0] += 600.0
    status.note_pass(wrote=False, pending=3, changed=1)
    assert policy.reasons(True) == []
    now[0] += 1.0
    assert policy.reasons(True) == [
        "no project written for 601s, 3 failing: numpy: HTTP 503 Service Unavailable"]
    status.note_pass(wrote=True, pending=1, changed=2)  # some got through: not stuck
    assert policy.reasons(True) == []
    status.note_pass(wrote=False, pending=0, changed=0)  # nothing to do is not stuck
    now[0] += 700.0
    assert policy.reasons(True) == []
    # A quiet index, one project PyPI always answers badly: tried again, not stuck.
    for _ in range(3):
        status.note_pass(wrote=False, pending=1, changed=0)
        now[0] += 700.0
    assert policy.reasons(True) == []


def test_passes_that_never_trust_the_listing_are_unhealthy_past_the_lag_budget():
    """Every pass finds the listing older than the checkpoint (a stale CDN node) or
    hiding projects PyPI has: each ends without error, the checkpoint stays, and PyPI's
    serial is not taken either: the lag stays 0."""
    now = [1000.0]
    status = SyncStatus(clock=lambda: now[0])
    policy = HealthPolicy(status, syncing=True, max_lag_seconds=600.0)
    status.phase = "idle"
    status.note_serials(pypi_serial=50, our_serial=50)
    why = "the listing from https://pypi.org/ is older than the checkpoint"
    status.note_checkpoint(why)
    now[0] += 600.0
    status.note_checkpoint(why)
    status.note_sync_error("numpy: HTTP 503 Service Unavailable", "pypi")  # (not it)
    assert policy.reasons(True) == []
    now[0] += 1.0
    assert policy.reasons(True) == [
        "the checkpoint has not moved for 601s: the listing from https://pypi.org/ is older "
        "than the checkpoint"]
    status.note_checkpoint(None)
    assert policy.reasons(True) == []


def replica_lag(monkeypatch, answers, upstream=True):
    """A ReplicaLag whose reads of the highest serial answer from ``answers`` (by
    "local" or "upstream": a serial, None for an empty database, "named" for one of
    projects without serials, or an error)."""
    from twisted.internet import task

    from pypioncouch.web import replica

    class Db:
        def __init__(self, name):
            self.display_url = name

    async def max_serial(db, timeout=None):
        value = answers[db.display_url]
        if isinstance(value, Exception):
            raise value
        return None if value == "named" else value

    async def holds_projects(db, timeout=None):  # (a project without a serial: "named")
        return answers[db.display_url] == "named"

    monkeypatch.setattr(replica.couchapp, "max_serial", max_serial)
    monkeypatch.setattr(replica.couchapp, "holds_projects", holds_projects)
    clock = task.Clock()
    return replica.ReplicaLag(Db("local"), Db("upstream") if upstream else None, clock,
                              every=0), clock


def checked(lag):
    from twisted.internet import defer

    return defer.ensureDeferred(lag.check()).result.__dict__


def test_a_replica_that_cannot_read_its_own_serial_is_not_healthy_for_ever(monkeypatch):
    from pypioncouch.couch import Timeout

    building = Timeout("CouchDB did not answer within 30s", url="http://x:***@local/pypi")
    lag, clock = replica_lag(monkeypatch, {"local": building, "upstream": 5000})
    policy = HealthPolicy(SyncStatus(), syncing=False, max_lag_seconds=10.0)
    assert policy.reasons(True, checked(lag)) == []
    clock.advance(11)
    state = checked(lag)
    assert (state["serial"], state["lag"], state["lag_seconds"]) == (None, None, 11.0)
    assert policy.reasons(True, state) == [
        "its own highest serial unread for 11s: CouchDB did not answer within 30s "
        "(http://x:***@local/pypi)"]


def test_an_empty_replica_is_not_healthy_from_the_start(monkeypatch):
    """Put behind a load balancer at once, it would answer 404 for every project (with
    an upstream or without: replication not begun, or --db naming another database)."""
    empty = ["it holds no project yet (replication not begun, or --db names another "
             "database)"]
    answers = {"local": None, "upstream": 5000}
    lag, clock = replica_lag(monkeypatch, answers)
    policy = HealthPolicy(SyncStatus(), syncing=False, max_lag_seconds=10.0)
    state = checked(lag)
    assert (state["serial"], state["lag"]) == (None, 5000)
    assert policy.reasons(True, state) == empty
    answers["local"] = 1000  # (copying: within its lag budget for now)
    clock.advance(6)
    assert policy.reasons(True, checked(lag)) == []
    clock.advance(6)
    assert policy.reasons(True, checked(lag)) == [
        "4000 serials (12s) behind the upstream upstream"]
    lag, clock = replica_lag(monkeypatch, {"local": None}, upstream=False)
    assert policy.reasons(True, checked(lag)) == empty
    # Projects, none with a serial (from an index that gives none): not empty.
    lag, clock = replica_lag(monkeypatch, {"local": "named"}, upstream=False)
    assert policy.reasons(True, checked(lag)) == []


def test_a_replica_without_upstream_that_cannot_read_its_own_serial_says_so(monkeypatch):
    from pypioncouch.couch import Timeout

    answers = {"local": Timeout("CouchDB did not answer within 30s")}
    lag, clock = replica_lag(monkeypatch, answers, upstream=False)
    policy = HealthPolicy(SyncStatus(), syncing=False, max_lag_seconds=10.0)
    checked(lag)
    clock.advance(11)
    assert policy.reasons(True, checked(lag)) == [
        "its own highest serial unread for 11s: CouchDB did not answer within 30s"]
    answers["local"] = 42
    assert policy.reasons(True, checked(lag)) == []
    clock.advance(60)
    assert policy.reasons(True, checked(lag)) == []  # (nothing to be behind of)


def test_a_replica_trailing_a_busy_upstream_by_a_moment_is_a_moment_behind(monkeypatch):
    """Never equal to the upstream when looked at (PyPI changes every second), it was
    counted behind since it started: a 503 after --max-lag, though current."""
    answers = {"local": 95, "upstream": 100}
    lag, clock = replica_lag(monkeypatch, answers)
    policy = HealthPolicy(SyncStatus(), syncing=False, max_lag_seconds=10.0)
    checked(lag)
    for step in range(1, 60):  # a minute, 5 serials behind at every look
        clock.advance(1)
        answers.update(local=95 + 10 * step, upstream=100 + 10 * step)
        state = checked(lag)
        assert (state["lag"], state["lag_seconds"]) == (5, 1.0), step
    assert policy.reasons(True, state) == []
    # Its replication stops: behind since the last upstream serial it held.
    for _ in range(11):
        clock.advance(1)
        answers["upstream"] += 10
        state = checked(lag)
    assert state["lag_seconds"] == 12.0
    assert policy.reasons(True, state) == [
        f"{state['lag']} serials (12s) behind the upstream upstream"]
    answers["local"] = answers["upstream"]  # (caught up)
    clock.advance(1)
    assert checked(lag)["lag_seconds"] == 0.0

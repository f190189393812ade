"""The PyPI and CouchDB clients in memory: retries, backoff, timeouts and cancellation,
with a scripted ``http=`` object and a fake clock (``task.Clock``). No sockets, no
sleeps: time moves only when the test advances it, so every expected time is exact."""

import json
import random
import xmlrpc.client as xmlrpc_client

import pytest
from twisted.internet import defer, task
from twisted.internet import error as ierror
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

from pypioncouch.couch import (
    BadResponse, Conflict, CouchDB, NotFound, PreconditionFailed, Timeout, Unauthorized,
    Unreachable)
from pypioncouch.pypi import PyPI, PyPIError, StaleAnswer, Transient
from pypioncouch.store import Store

from .helpers import ScriptedHTTP

HANG = ScriptedHTTP.HANG
JSON_URL = "http://pypi.test/pypi/foo-bar/json"
V1_JSON = "application/vnd.pypi.simple.v1+json"
PROJECT = b'{"info": {"name": "Foo_Bar", "version": "1.0"}, "last_serial": 10, "releases": {}}'


class Midpoint(random.Random):
    """Jitter at its middle: a backoff of ``b`` waits exactly ``b`` seconds."""

    def random(self):
        return 0.5


def ok(body=PROJECT, serial="10", content_type="application/json"):
    return (200, {"content-type": content_type, "x-pypi-last-serial": serial}, body)


def pypi_with(*answers, url="http://pypi.test/", **options):
    clock = task.Clock()
    http = ScriptedHTTP(*answers, clock=clock)
    settings = dict(timeout=5.0, retries=3, backoff=1.0, rng=Midpoint())
    settings.update(options)
    return PyPI(url, http=http, reactor=clock, **settings), http, clock


def started(coroutine):
    """``(deferred, results)``: the coroutine running, and what it ends with."""
    d = defer.ensureDeferred(coroutine)
    results = []
    d.addBoth(results.append)
    return d, results


def outcome(results):
    """The value the coroutine returned, or the exception it raised."""
    assert len(results) == 1, f"not finished: {results}"
    result = results[0]
    return result.value if isinstance(result, Failure) else result


# -- PyPI ----------------------------------------------------------------------------


def test_a_5xx_is_retried_with_doubling_backoff():
    pypi, http, clock = pypi_with((503, {}, b""), (502, {}, b""), ok())
    _, results = started(pypi.project("Foo_Bar"))
    clock.advance(0.999)
    assert http.times == [0.0]
    clock.pump([0.001, 1.999, 0.001])
    assert http.times == [0.0, 1.0, 3.0]
    answer = outcome(results)
    assert (answer.kind, answer.serial, answer.payload["info"]["name"]) == ("project", 10, "Foo_Bar")
    assert http.urls == [JSON_URL] * 3
    assert pypi.retried == 2 and clock.getDelayedCalls() == []


@pytest.mark.parametrize("header", ["10, 10", "", "ten"])
def test_a_serial_header_that_is_no_number_leaves_the_body_to_say_it(header):
    """(a proxy merging two headers into "10, 10": an answer without a serial passed
    for fresh, and an older copy could replace what is stored)"""
    pypi, http, clock = pypi_with(ok(serial=header))
    _, results = started(pypi.project("Foo_Bar", 10))
    assert outcome(results).serial == 10


def test_a_429_waits_as_long_as_retry_after_says():
    pypi, http, clock = pypi_with((429, {"retry-after": "7"}, b""), ok())
    _, results = started(pypi.project("Foo_Bar"))
    clock.pump([6.999, 0.001])
    assert http.times == [0.0, 7.0]
    assert outcome(results).kind == "project"


@pytest.mark.parametrize("value, waited", [("-5", 1.0), ("nan", 1.0), ("inf", 1.0),
                                           ("Wed, 21 Oct 2026 07:28:00 GMT", 1.0),
                                           ("2.5", 2.5)])
def test_a_retry_after_that_makes_no_sense_is_not_obeyed(value, waited):
    pypi, http, clock = pypi_with((503, {"retry-after": value}, b""), ok())
    _, results = started(pypi.project("Foo_Bar"))
    clock.advance(waited - 0.001)
    assert results == []
    clock.advance(0.001)
    assert outcome(results).kind == "project" and http.times == [0.0, waited]


def test_a_retry_after_longer_than_the_caller_waits_is_its_error_at_once():
    """The web front's client waits a few seconds at most: PyPI's "come back in two
    minutes" goes to the front (which passes it on), not into a sleep."""
    pypi, http, clock = pypi_with((429, {"retry-after": "120"}, b""), ok(),
                                  max_retry_after=5.0)
    _, results = started(pypi.project("Foo_Bar"))
    error = outcome(results)
    assert isinstance(error, Transient) and error.retry_after == 120.0
    assert str(error) == f"HTTP 429 Too Many Requests ({JSON_URL})" and http.times == [0.0]


def test_each_retry_of_a_paced_request_waits_its_turn_too():
    """The backfill's pace (--backfill-rate) holds for retries: a retry asks PyPI only
    once ``before_retry`` lets it."""
    release = b'{"info": {"name": "Foo_Bar", "version": "1.0"}, "urls": []}'
    pypi, http, clock = pypi_with((503, {}, b""), ok(body=release))
    turns = []

    def turn():
        turns.append(clock.seconds())
        return task.deferLater(clock, 2.0, lambda: None)  # the next turn is 2 s away

    _, results = started(pypi.release("Foo_Bar", "1.0", before_retry=turn))
    clock.advance(1.0)  # the backoff
    assert turns == [1.0] and http.times == [0.0]
    clock.advance(2.0)
    assert http.times == [0.0, 3.0] and outcome(results)["info"]["version"] == "1.0"


def test_after_the_last_retry_the_error_names_the_url_without_the_password():
    pypi, http, clock = pypi_with(*[(500, {}, b"")] * 3, retries=2,
                                  url="http://mirror:s3cret@pypi.test/")
    _, results = started(pypi.project("Foo_Bar"))
    clock.pump([1.0, 2.0])
    error = outcome(results)
    assert isinstance(error, Transient)
    assert str(error) == ("HTTP 500 Internal Server Error "
                          "(http://mirror:***@pypi.test/pypi/foo-bar/json)")
    assert http.times == [0.0, 1.0, 3.0]
    # The credentials go as Basic auth (a private index), never in the request line.
    assert http.urls[0] == "http://pypi.test/pypi/foo-bar/json"
    assert http.requests[0][2] == {"Accept": "application/json",
                                   "User-Agent": http.requests[0][2]["User-Agent"],
                                   "Authorization": "Basic bWlycm9yOnMzY3JldA=="}
    assert http.requests[0][2]["User-Agent"].startswith("pypioncouch/")


def test_xmlrpc_calls_to_a_private_index_carry_its_credentials():
    clock = task.Clock()
    rpc = ScriptedHTTP(rpc_answer(7), clock=clock)
    pypi = PyPI("https://bob:pa%40ss@index.test/root/", http=ScriptedHTTP(), rpc_http=rpc,
                reactor=clock)
    _, results = started(pypi.changelog_last_serial())
    assert outcome(results) == 7
    method, url, headers, _ = rpc.requests[0]
    assert url == "https://index.test/root/pypi"
    assert headers["Authorization"] == "Basic Ym9iOnBhQHNz"  # bob:pa@ss
    assert pypi.display_url == "https://bob:***@index.test/root/"


def test_a_request_without_an_answer_times_out_and_is_tried_again():
    pypi, http, clock = pypi_with(HANG, ok())
    _, results = started(pypi.project("Foo_Bar"))
    clock.advance(4.999)
    assert (http.cancelled, results) == (0, [])
    clock.advance(0.001)
    assert http.cancelled == 1  # the request is given up, not left open
    clock.advance(1.0)
    assert http.times == [0.0, 6.0]
    assert outcome(results).kind == "project"


def test_no_answer_on_any_try_is_one_clear_error():
    pypi, http, clock = pypi_with(HANG, HANG, retries=1)
    _, results = started(pypi.project("Foo_Bar"))
    clock.pump([5.0, 1.0, 5.0])
    error = outcome(results)
    assert isinstance(error, Transient)
    assert str(error) == f"nothing received for 5s ({JSON_URL})"
    assert http.cancelled == 2 and clock.getDelayedCalls() == []


def test_a_cancelled_request_is_cancelled_not_retried():
    """A caller that gives up (a web client left while its page was fetched from
    PyPI) cancels the request; it is not a transient failure to retry."""
    pypi, http, clock = pypi_with(HANG, ok(), ok())
    d, results = started(pypi.project("Foo_Bar"))
    clock.advance(1.0)
    d.cancel()
    assert isinstance(outcome(results), defer.CancelledError)
    assert http.cancelled == 1
    clock.advance(60.0)
    assert len(http.requests) == 1 and clock.getDelayedCalls() == []


def test_a_cancel_while_waiting_to_retry_ends_the_wait():
    pypi, http, clock = pypi_with((503, {}, b""), ok())
    d, results = started(pypi.project("Foo_Bar"))
    clock.advance(0.5)
    d.cancel()
    assert isinstance(outcome(results), defer.CancelledError)
    clock.advance(60.0)
    assert len(http.requests) == 1 and clock.getDelayedCalls() == []


def rpc_with(*answers, **options):
    """A PyPI whose XML-RPC calls take ``answers`` in turn (its JSON API answers none)."""
    clock = task.Clock()
    rpc = ScriptedHTTP(*answers, clock=clock)
    settings = dict(timeout=5.0, retries=3, backoff=1.0, rng=Midpoint())
    settings.update(options)
    return PyPI("http://pypi.test/", http=ScriptedHTTP(), rpc_http=rpc, reactor=clock,
                **settings), rpc, clock


def rpc_answer(*values, fault=None):
    body = xmlrpc_client.dumps(fault or tuple(values), methodresponse=True, allow_none=True)
    return (200, {"content-type": "text/xml"}, body.encode())


def test_an_xmlrpc_call_is_one_post_of_the_call_as_xml():
    pypi, rpc, clock = rpc_with(rpc_answer([["foo", "1.0", 1700000000, "new release", 12]]))
    _, results = started(pypi.changelog_since_serial(11))
    assert outcome(results) == [["foo", "1.0", 1700000000, "new release", 12]]
    method, url, headers, body = rpc.requests[0]
    assert (method, url, headers["Content-Type"]) == ("POST", "http://pypi.test/pypi",
                                                      "text/xml")
    assert headers["User-Agent"].startswith("pypioncouch/")
    assert xmlrpc_client.loads(body) == ((11,), "changelog_since_serial")


@pytest.mark.parametrize("row, shown", [
    (["foo", "1.0", 1700000000, "new release"], "['foo', '1.0', 1700000000, 'new release']"),
    (["foo", None, 1700000000, "create", "12"], "['foo', None, 1700000000, 'create', '12']"),
    ([7, None, 1700000000, "create", 12], "[7, None, 1700000000, 'create', 12]"),
    (["foo", None, 1700000000, "create", 11], "['foo', None, 1700000000, 'create', 11]"),
    ("foo", "'foo'"),
])
def test_a_malformed_changelog_row_is_refused_in_one_line(row, shown):
    """Its serial would be the next checkpoint (a serial not past the one asked for,
    the same page for ever)."""
    pypi, rpc, clock = rpc_with(rpc_answer([["ok", None, 1700000000, "create", 12], row]))
    _, results = started(pypi.changelog_since_serial(11))
    error = outcome(results)
    assert isinstance(error, PyPIError)
    assert str(error) == ("changelog_since_serial answered a malformed row: "
                          f"{shown} (http://pypi.test/pypi)")


def test_a_cancelled_xmlrpc_call_is_not_retried():
    pypi, rpc, clock = rpc_with(HANG)
    d, results = started(pypi.changelog_last_serial())
    d.cancel()
    assert isinstance(outcome(results), defer.CancelledError)
    clock.advance(60.0)
    assert len(rpc.requests) == 1 and rpc.cancelled == 1 and pypi.retried == 0
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("call", ["changelog_last_serial", "project",
                                  "list_packages_with_serial"])
def test_a_request_cancelled_while_connecting_is_cancelled_not_retried(call):
    """Our own HTTP client, on a reactor where connections never complete: a caller
    who gives up while the connection is being made gets a cancel, and nothing more
    is tried."""
    reactor = MemoryReactorClock()
    pypi = PyPI("http://127.0.0.1:9/", reactor=reactor, timeout=5.0, retries=3,
                backoff=1.0, rng=Midpoint())
    d, results = started(pypi.project("foo") if call == "project"
                         else getattr(pypi, call)())
    assert len(reactor.tcpClients) == 1
    d.cancel()
    assert isinstance(outcome(results), defer.CancelledError)
    reactor.advance(60.0)
    assert len(reactor.tcpClients) == 1 and pypi.retried == 0


def test_an_unanswered_xmlrpc_call_times_out_and_is_retried():
    pypi, rpc, clock = rpc_with(HANG, HANG, retries=1)
    _, results = started(pypi.changelog_last_serial())
    clock.advance(5.0)
    assert results == [] and pypi.retried == 1 and rpc.cancelled == 1
    clock.advance(1.0)
    assert len(rpc.requests) == 2
    clock.advance(5.0)
    error = outcome(results)
    assert str(error) == "nothing received for 5s (http://pypi.test/pypi changelog_last_serial)"


def test_an_xmlrpc_503_waits_as_long_as_retry_after_says_then_a_fault_is_named():
    pypi, rpc, clock = rpc_with((503, {"retry-after": "7"}, b"busy"),
                                rpc_answer(fault=xmlrpc_client.Fault(1, "no such serial")))
    _, results = started(pypi.changelog_last_serial())
    clock.advance(7.0)
    error = outcome(results)
    assert rpc.times == [0.0, 7.0]
    assert str(error) == ("XML-RPC Fault 1: no such serial "
                          "(http://pypi.test/pypi changelog_last_serial)")


def test_an_xmlrpc_endpoint_that_moved_says_where_to_and_is_not_followed():
    pypi, rpc, clock = rpc_with((301, {"location": "https://pypi.test/pypi"}, b""))
    _, results = started(pypi.changelog_last_serial())
    error = outcome(results)
    assert type(error) is PyPIError and len(rpc.requests) == 1
    assert str(error) == ("HTTP 301 Moved Permanently, to https://pypi.test/pypi "
                          "(http://pypi.test/pypi changelog_last_serial)")


def test_a_listing_that_is_not_xml_is_retried_then_read_as_it_arrives():
    listing = xmlrpc_client.dumps(({"Foo.Bar": 5, "baz": 7},), methodresponse=True)
    pypi, rpc, clock = rpc_with((200, {}, b"<<< not xml"), (200, {}, listing.encode()))
    _, results = started(pypi.list_packages_with_serial())
    assert results == [] and pypi.retried == 1
    clock.advance(1.0)
    assert dict(outcome(results).items()) == {"Foo.Bar": 5, "baz": 7}
    assert xmlrpc_client.loads(rpc.requests[1][3]) == ((), "list_packages_with_serial")


def test_an_xmlrpc_answer_that_is_not_xml_is_retried():
    pypi, rpc, clock = rpc_with((200, {}, b"<html>oops"), rpc_answer(42))
    _, results = started(pypi.changelog_last_serial())
    clock.advance(1.0)
    assert outcome(results) == 42 and rpc.times == [0.0, 1.0]


def test_a_stale_copy_is_asked_again_then_reported():
    pypi, http, clock = pypi_with(*[ok(serial="9")] * 4)
    _, results = started(pypi.project("Foo_Bar", min_serial=10))
    clock.pump([1.0, 2.0, 3.0])
    error = outcome(results)
    assert isinstance(error, StaleAnswer)
    assert str(error) == ("stale: serial 9 where the changelog has serial 10, after 3 retries "
                          f"({JSON_URL})")
    assert http.times == [0.0, 1.0, 3.0, 6.0]


def test_a_fresh_copy_after_a_stale_one_is_taken():
    pypi, http, clock = pypi_with(ok(serial="9"), ok(serial="11"))
    _, results = started(pypi.project("Foo_Bar", min_serial=10))
    clock.advance(1.0)
    assert outcome(results).serial == 11


def test_a_release_answer_older_than_its_projects_or_a_404_is_asked_again():
    """A CDN caches each URL apart: right after a yank, the per-version answer may be
    the one from before (its serial older), or a "not found" of a release new since."""
    version_url = "http://pypi.test/pypi/foo-bar/1.0/json"
    not_found = (404, {"content-type": "application/json"}, b'{"message": "Not Found"}')
    pypi, http, clock = pypi_with(ok(serial="9"), not_found, ok(serial="12"))
    _, results = started(pypi.release("Foo_Bar", "1.0", min_serial=12))
    clock.pump([1.0, 2.0])
    assert outcome(results)["info"]["name"] == "Foo_Bar"
    assert http.times == [0.0, 1.0, 3.0]
    assert [request[1] for request in http.requests] == [version_url] * 3
    pypi, http, clock = pypi_with(*[not_found] * 4)
    _, results = started(pypi.release("Foo_Bar", "1.0", min_serial=12))
    clock.pump([1.0, 2.0, 3.0])
    error = outcome(results)
    assert isinstance(error, StaleAnswer)
    assert str(error) == ("stale: 404 where the project's answer has serial 12, after 3 "
                          f"retries ({version_url})")
    pypi, http, clock = pypi_with(not_found)  # (asked without a serial: PyPI's word)
    _, results = started(pypi.release("Foo_Bar", "1.0"))
    assert outcome(results) is None


def test_a_malformed_body_is_retried():
    pypi, http, clock = pypi_with(ok(body=b'{"info": {"na'), ok())
    _, results = started(pypi.project("Foo_Bar"))
    clock.advance(1.0)
    assert outcome(results).kind == "project" and http.times == [0.0, 1.0]


ABSENT = [
    ("gone", (404, {}, b'{"message": "Not Found"}'), ("gone", None, "active")),
    ("no release yet", (200, {"x-pypi-last-serial": "12"},
                        b'{"meta": {"_last-serial": 12}, "project-status": {"status": "active"},'
                        b' "files": []}'), ("empty", 12, "active")),
    ("quarantined", (200, {}, b'{"meta": {"_last-serial": 13}, "project-status": '
                              b'{"status": "quarantined"}, "files": []}'),
     ("empty", 13, "quarantined")),
]


@pytest.mark.parametrize("case, simple_answer, expected", ABSENT,
                         ids=[row[0] for row in ABSENT])
def test_a_404_from_the_json_api_asks_the_simple_api(case, simple_answer, expected):
    pypi, http, clock = pypi_with((404, {}, b'{"message": "Not Found"}'), simple_answer)
    _, results = started(pypi.project("Foo_Bar"))
    answer = outcome(results)
    assert (answer.kind, answer.serial, answer.status) == expected
    assert http.urls == [JSON_URL, "http://pypi.test/simple/foo-bar/"]
    assert http.requests[1][2]["Accept"] == V1_JSON


def test_a_simple_page_whose_status_marker_is_not_an_object_is_retried():
    """(a string there cost the status sweep its walk: it stopped on that project)"""
    page = (200, {}, b'{"meta": {"_last-serial": 13}, "project-status": "archived", '
                     b'"files": []}')
    good = (200, {}, b'{"meta": {"_last-serial": 13}, "project-status": '
                     b'{"status": "archived"}, "files": []}')
    pypi, http, clock = pypi_with(page, good)
    _, results = started(pypi.simple_project("Foo_Bar"))
    clock.advance(1.0)
    assert outcome(results) == (13, "archived", 0) and len(http.requests) == 2


@pytest.mark.parametrize("files", [b"", b', "files": null', b', "files": {}'])
def test_a_simple_page_without_a_list_of_files_is_retried_not_taken_as_none(files):
    """(taken as no files, the project's stored releases were all removed)"""
    page = (200, {}, b'{"meta": {"_last-serial": 13}, "project-status": '
                     b'{"status": "active"}' + files + b'}')
    good = (200, {}, b'{"meta": {"_last-serial": 13}, "project-status": '
                     b'{"status": "active"}, "files": []}')
    pypi, http, clock = pypi_with((404, {}, b'{"message": "Not Found"}'), page, good)
    _, results = started(pypi.project("Foo_Bar"))
    clock.advance(1.0)
    answer = outcome(results)
    assert (answer.kind, answer.serial) == ("empty", 13) and len(http.requests) == 3
    pypi, http, clock = pypi_with((404, {}, b'{"message": "Not Found"}'), *[page] * 9)
    _, results = started(pypi.project("Foo_Bar"))
    for _ in range(10):
        clock.advance(60.0)
    error = outcome(results)
    assert isinstance(error, PyPIError) and "malformed Simple page (files)" in str(error)


def test_an_answer_pypi_should_not_give_is_an_error_at_once():
    pypi, http, clock = pypi_with((403, {}, b"Forbidden"))
    _, results = started(pypi.project("Foo_Bar"))
    error = outcome(results)
    assert type(error) is PyPIError and str(error) == f"HTTP 403 Forbidden ({JSON_URL})"
    assert len(http.requests) == 1


# -- CouchDB --------------------------------------------------------------------------


def couch_with(*answers, url="http://admin:s3cret@127.0.0.1:5984/"):
    clock = task.Clock()
    http = ScriptedHTTP(*answers, clock=clock)
    return CouchDB(url, http=http, reactor=clock, timeout=5.0).database("db"), http, clock


def couch_json(status, body):
    return (status, {"content-type": "application/json"}, body)


def test_a_design_document_another_version_wrote_meanwhile_is_not_overwritten():
    from pypioncouch import couchapp

    wanted = couchapp.design_document()
    theirs = {**wanted, "_rev": "2-b", "views": {"other": {"map": "function(d){}"}}}
    db, http, clock = couch_with(
        couch_json(404, b'{"error": "not_found", "reason": "missing"}'),
        couch_json(409, b'{"error": "conflict", "reason": "Document update conflict."}'),
        couch_json(200, json.dumps(theirs).encode()))
    _, results = started(couchapp.push(db))
    error = outcome(results)
    assert isinstance(error, Conflict)
    assert str(error).startswith("_design/pypioncouch was changed by another writer while "
                                 "this one installed its own: is a pypioncouch of another "
                                 "version running on this database?")
    assert [r[0] for r in http.requests] == ["GET", "PUT", "GET"]


LOST = ResponseNeverReceived([Failure(ierror.ConnectionLost())])
DOC_URL = "http://admin:***@127.0.0.1:5984/db/x"


def test_couchdb_that_does_not_answer_times_out_and_the_request_is_given_up():
    db, http, clock = couch_with(HANG)
    _, results = started(db.get("x"))
    clock.advance(4.999)
    assert results == []
    clock.advance(0.001)
    error = outcome(results)
    assert isinstance(error, Timeout)
    assert str(error) == f"CouchDB did not answer GET within 5s ({DOC_URL})"
    assert http.cancelled == 1 and clock.getDelayedCalls() == []


def test_a_cancelled_couchdb_request_is_cancelled_not_retried():
    db, http, clock = couch_with(HANG, couch_json(200, b"{}"))
    d, results = started(db.get("x"))
    d.cancel()
    assert isinstance(outcome(results), defer.CancelledError)
    assert len(http.requests) == 1 and http.cancelled == 1
    assert clock.getDelayedCalls() == []


def test_a_read_on_a_connection_closed_under_it_is_tried_once_more():
    db, http, clock = couch_with(LOST, couch_json(200, b'{"_id": "x"}'))
    _, results = started(db.get("x"))
    assert outcome(results) == {"_id": "x"} and len(http.requests) == 2


def test_a_post_that_only_reads_on_a_connection_closed_under_it_is_tried_once_more():
    """(``_all_docs`` and a view with ``keys``, ``_bulk_get``: a proxy closing idle
    connections sooner than the pool failed the whole sync pass)"""
    rows, found = couch_json(200, b'{"rows": []}'), couch_json(200, b'{"results": []}')
    for read, answer in ((lambda db: db.all_docs(keys=["a"]), rows),
                         (lambda db: db.view("d", "v", keys=[1]), rows),
                         (lambda db: db.bulk_get(["a"]), found)):
        db, http, clock = couch_with(LOST, answer)
        _, results = started(read(db))
        assert not isinstance(outcome(results), Exception), outcome(results)
        assert [r[0] for r in http.requests] == ["POST", "POST"]


def test_a_write_answered_without_a_revision_is_no_write():
    """(a proxy's ``200 {}``: a KeyError, reported as a bug)"""
    for answer in (couch_json(200, b"{}"), couch_json(201, b'{"ok": true, "rev": 7}')):
        db, http, clock = couch_with(answer)
        _, results = started(db.put({"_id": "x"}))
        error = outcome(results)
        assert type(error) is BadResponse and str(error) == (
            "PUT answered without the new revision: is this CouchDB? "
            "(http://admin:***@127.0.0.1:5984/db)")


def test_an_error_that_quotes_a_url_with_its_password_is_said_without_it():
    body = (b'{"error":"db_not_found","reason":"could not open '
            b'http://mirror:Secret-9@primary:5984/pypi/"}')
    db, http, clock = couch_with(couch_json(404, body))
    _, results = started(db.get("x"))
    assert "Secret-9" not in str(outcome(results))
    assert "could not open http://mirror:***@primary:5984/pypi/" in str(outcome(results))


def test_a_connection_lost_twice_or_during_a_write_is_an_error():
    db, http, clock = couch_with(LOST, LOST)
    _, results = started(db.get("x"))
    error = outcome(results)
    assert type(error) is Unreachable
    assert str(error) == f"no answer from CouchDB (ResponseNeverReceived) ({DOC_URL})"
    db, http, clock = couch_with(LOST)
    _, results = started(db.put({"_id": "x"}))
    assert type(outcome(results)) is Unreachable and len(http.requests) == 1


def test_a_refused_connection_says_so():
    db, http, clock = couch_with(ierror.ConnectionRefusedError())
    _, results = started(db.get("x"))
    assert str(outcome(results)) == f"CouchDB refused the connection: is it running? ({DOC_URL})"


STATUSES = [
    (404, b'{"error":"not_found","reason":"missing"}', NotFound,
     f"GET failed: not_found: missing (404 from {DOC_URL})"),
    (409, b'{"error":"conflict","reason":"Document update conflict."}', Conflict,
     f"GET failed: conflict: Document update conflict. (409 from {DOC_URL})"),
    (412, b'{"error":"file_exists"}', PreconditionFailed,
     f"GET failed: file_exists (412 from {DOC_URL})"),
    (401, b'{"error":"unauthorized","reason":"Name or password is incorrect."}',
     Unauthorized,
     f"GET failed: unauthorized: Name or password is incorrect. (401 from {DOC_URL})"),
    (403, b'{"error":"forbidden"}', Unauthorized, f"GET failed: forbidden (403 from {DOC_URL})"),
    (500, b'{"error":"unknown_error"}', BadResponse,
     f"GET failed: unknown_error (500 from {DOC_URL})"),
]


@pytest.mark.parametrize("status, body, kind, message", STATUSES,
                         ids=[str(row[0]) for row in STATUSES])
def test_couchdb_errors_are_typed_and_one_line(status, body, kind, message):
    db, http, clock = couch_with(couch_json(status, body))
    _, results = started(db.get("x"))
    error = outcome(results)
    assert type(error) is kind and str(error) == message and "s3cret" not in message


def test_an_html_page_is_not_taken_for_couchdb():
    db, http, clock = couch_with((200, {"content-type": "text/html"}, b"<html>hi</html>"))
    _, results = started(db.get("x"))
    error = outcome(results)
    assert type(error) is BadResponse
    assert str(error) == ("GET answered text/html that is not JSON: is this CouchDB? "
                          f"(200 from {DOC_URL})")


def test_requests_carry_basic_auth_and_json_bodies_say_so():
    db, http, clock = couch_with(couch_json(201, b'{"ok":true,"id":"x","rev":"1-a"}'))
    _, results = started(db.put({"_id": "x", "summary": "☃"}))
    assert outcome(results) == "1-a"
    method, url, headers, data = http.requests[0]
    assert (method, url) == ("PUT", "http://127.0.0.1:5984/db/x")
    assert headers["Authorization"] == "Basic YWRtaW46czNjcmV0"  # admin:s3cret
    assert headers["Content-Type"] == "application/json"
    assert data == b'{"_id":"x","summary":"\xe2\x98\x83"}'  # JSON in UTF-8


def test_a_daemon_given_credentials_on_its_command_line_says_where_they_belong():
    """``ps`` shows them to every user for as long as it runs; the password itself is
    never in the warning."""
    from twisted.internet import reactor
    from twisted.logger import formatEvent, globalLogPublisher

    from pypioncouch.service import Options, makeService

    options = Options()
    options.parseOptions(["--couch=http://admin:s3cret@127.0.0.1:9/", "--pypi",
                          "https://T0KEN@private.example/", "--upstream",
                          "http://127.0.0.1:9/pypi", "--no-sync"])
    assert options.exposed == ["--couch", "--pypi"]
    said = []
    globalLogPublisher.addObserver(said.append)
    try:
        makeService(options, reactor)
    finally:
        globalLogPublisher.removeObserver(said.append)
    warnings = [formatEvent(e) for e in said if "command line" in formatEvent(e)]
    assert warnings == [
        "the credentials in --couch are on the command line, which any user of this "
        "machine can read (ps): give that URL in PYPIONCOUCH_COUCH instead (the systemd "
        "unit's environment file)",
        "the credentials in --pypi are on the command line, which any user of this "
        "machine can read (ps): give that URL in PYPIONCOUCH_PYPI instead (the systemd "
        "unit's environment file)"]
    quiet = Options()
    quiet.parseOptions(["--couch", "http://127.0.0.1:9/"])
    assert quiet.exposed == []


def test_the_daemon_closes_every_pooled_connection_when_it_stops():
    from twisted.internet import reactor

    from pypioncouch.service import Options, makeService

    options = Options()
    options.parseOptions(["--couch", "http://admin:pw@127.0.0.1:9/", "--pypi",
                          "http://127.0.0.1:9/", "--upstream", "http://127.0.0.1:9/pypi",
                          "--no-sync"])
    top = makeService(options, reactor)
    closer = top.getServiceNamed("connections")
    closed = []
    for client in closer.clients:
        client.close = lambda client=client: closed.append(client)
    assert len(closer.clients) == 2  # CouchDB, and the upstream of this replica
    closer.privilegedStartService()
    closer.startService()
    closer.stopService()
    assert closed == closer.clients


def _rows(*versions):
    rows = [{"id": f"p:{v}", "doc": {"_id": f"p:{v}", "type": "release", "project": "p",
                                     "version": v}} for v in versions]
    return couch_json(200, json.dumps({"rows": rows}).encode())


def test_a_project_read_with_its_releases_at_once_never_lacks_a_named_release():
    """The project and its release range are asked for together; a range read before
    a new release landed (its project names it) is read again, not served short."""
    project = couch_json(200, b'{"_id": "p", "type": "project", "versions": ["1.0", "2.0"]}')
    db, http, clock = couch_with(project, _rows("1.0"), _rows("1.0", "2.0"))
    _, results = started(Store(db).project("p"))
    stored, releases = outcome(results)
    assert stored["versions"] == ["1.0", "2.0"]
    assert [r["version"] for r in releases] == ["1.0", "2.0"]
    assert [url.split("/db/")[1].split("?")[0] for url in http.urls] == \
        ["p", "_all_docs", "_all_docs"]
    db, http, clock = couch_with(project, _rows("1.0", "2.0"))
    _, results = started(Store(db).project("p"))
    assert len(outcome(results)[1]) == 2 and len(http.requests) == 2  # one round trip
    missing = couch_json(404, b'{"error":"not_found","reason":"missing"}')
    db, http, clock = couch_with(missing, _rows())
    _, results = started(Store(db).project("p"))
    assert outcome(results) == (None, [])



def test_the_simple_index_without_meta_and_with_odd_serials():
    body = b'{"meta": null, "projects": [{"name": "Foo.Bar", "_last-serial": 5}, ' \
           b'{"name": "baz", "_last-serial": true}, {"name": "qux"}]}'
    pypi, http, clock = pypi_with(ok(body=body, serial="9"))
    _, results = started(pypi.simple_index())
    assert outcome(results) == (9, {"Foo.Bar": 5, "baz": None, "qux": None})


@pytest.mark.parametrize("body", [
    # An object with a name inside an entry is not a project of its own.
    b'{"projects": [{"name": "a", "_last-serial": 1, "x": {"name": "not-one"}}, '
    b'{"name": "b", "_last-serial": 2}], "meta": {"_last-serial": 9}}',
    "\ufeff{\"meta\": {\"_last-serial\": 9}, \"projects\": [{\"name\": \"a\", "
    "\"_last-serial\": 1}, {\"name\": \"b\", \"_last-serial\": 2}]}".encode("utf-8"),
], ids=["nested-name", "byte-order-mark"])
def test_the_simple_index_is_read_as_its_projects_whatever_else_it_holds(body):
    pypi, http, clock = pypi_with(ok(body=body, serial="no number"))
    _, results = started(pypi.simple_index())
    serial, listing = outcome(results)
    assert (serial, dict(listing.items())) == (9, {"a": 1, "b": 2})


@pytest.mark.parametrize("body, said", [
    (b'{"meta": {"_last-serial": 9}, "projects": [{"name": "a"}, {"name": "b", "_la',
     "malformed JSON"),  # (cut short)
    (b'{"meta": {"_last-serial": 9}, "projects": {"name": "a"}}', "malformed Simple index"),
    (b'{"meta": {"_last-serial": 9}, "projects": ["a"]}',
     "malformed Simple index: an entry without a name"),
])
def test_a_simple_index_that_is_not_one_is_said_so(body, said):
    pypi, http, clock = pypi_with(ok(body=body), retries=0)
    _, results = started(pypi.simple_index())
    error = outcome(results)
    assert isinstance(error, Transient) and str(error) == f"{said} (http://pypi.test/simple/)"


def test_a_simple_index_serial_past_64_bits_is_no_serial():
    body = b'{"projects": [{"name": "a", "_last-serial": 99999999999999999999999}]}'
    pypi, http, clock = pypi_with(ok(body=body, serial="9"))
    _, results = started(pypi.simple_index())
    assert outcome(results) == (9, {"a": None})


def test_a_simple_index_entry_without_a_name_is_malformed():
    body = b'{"meta": {"_last-serial": 9}, "projects": [{"name": "a"}, {"_last-serial": 5}]}'
    pypi, http, clock = pypi_with(ok(body=body), retries=0)
    _, results = started(pypi.simple_index())
    error = outcome(results)
    assert isinstance(error, Transient)
    assert str(error) == "malformed Simple index: an entry without a name " \
                         "(http://pypi.test/simple/)"


def test_an_xmlrpc_datetime_upload_time_is_served_in_the_json_apis_form():
    """An older server's release_urls gives dateTime.iso8601 values, not the strings
    PyPI gave; uv needs upload-time as yyyy-mm-ddThh:mm:ssZ (--exclude-newer)."""
    import xmlrpc.client

    from pypioncouch.pypi import _json_file

    entry = {"filename": "a-1.0.tar.gz",
             "upload_time": xmlrpc.client.DateTime("20150614T14:38:05")}
    shaped = _json_file(entry, None, {"yanked": "gone", "core-metadata": {"sha256": "ab"}})
    assert (shaped["upload_time"], shaped["upload_time_iso_8601"]) == (
        "2015-06-14T14:38:05", "2015-06-14T14:38:05Z")
    assert (shaped["yanked"], shaped["yanked_reason"], shaped["core-metadata"]) == (
        True, "gone", {"sha256": "ab"})
    shaped = _json_file({"filename": "a-1.0.tar.gz"}, None, {"yanked": True})
    assert (shaped["yanked"], shaped["yanked_reason"], shaped["core-metadata"]) == (
        True, None, False)


def test_an_index_without_pep_691_pages_still_mirrors_over_xmlrpc_and_says_so():
    """--source xmlrpc reads yanks from the Simple page (XML-RPC never said them); an
    older index answering it in HTML is said once, and its projects are mirrored."""
    from twisted.logger import globalLogPublisher

    clock = task.Clock()
    html = (200, {"content-type": "text/html; charset=utf-8"}, b"<html></html>")
    http = ScriptedHTTP(html, clock=clock)
    data = {"name": "Foo", "version": "1.0", "summary": "s", "requires_python": None}
    files = [{"filename": "foo-1.0.tar.gz", "url": "https://files.test/foo-1.0.tar.gz",
              "digests": {"md5": "a" * 32, "sha256": "b" * 64}, "size": 3,
              "upload_time": "2015-06-14T14:38:05"}]
    calls = [rpc_answer(["1.0"]), rpc_answer(["1.0"]), rpc_answer(data), rpc_answer(files)]
    rpc = ScriptedHTTP(*calls, *calls, clock=clock)
    pypi = PyPI("http://pypi.test/", http=http, rpc_http=rpc, reactor=clock, timeout=5.0,
                retries=3, backoff=1.0, rng=Midpoint())
    said = []
    globalLogPublisher.addObserver(said.append)
    try:
        for name in ("Foo", "Bar"):
            _, results = started(pypi.legacy_project(name, min_serial=12))
            answer = outcome(results)
            assert answer.kind == "project", answer
            entry = answer.payload["releases"]["1.0"][0]
            assert (entry["yanked"], entry["core-metadata"]) == (False, False)
    finally:
        globalLogPublisher.removeObserver(said.append)
    assert http.urls == ["http://pypi.test/simple/foo/"]  # once, not retried, not again
    assert [e for e in said if "does not serve PEP 691 Simple pages" in str(
        e.get("log_format"))]


def test_over_xmlrpc_a_project_the_changelog_names_answering_404_is_stale_not_gone():
    """As for the JSON API's 404 (a CDN's cached "not found" of a project new since):
    a removal comes as its own changelog row; "gone" here removed a project PyPI has."""
    clock = task.Clock()
    not_found = (404, {"content-type": "text/html"}, b"Not Found")
    http = ScriptedHTTP(not_found, not_found, clock=clock)
    rpc = ScriptedHTTP(rpc_answer([]), clock=clock)
    pypi = PyPI("http://pypi.test/", http=http, rpc_http=rpc, reactor=clock, timeout=5.0,
                retries=3, backoff=1.0, rng=Midpoint(), stale_retries=0)
    _, results = started(pypi.legacy_project("Foo", min_serial=12))
    error = outcome(results)
    assert isinstance(error, StaleAnswer) and "404 where the changelog has serial 12" in str(
        error), error
    http = ScriptedHTTP(not_found, not_found, clock=clock)  # asked by name: its word
    pypi = PyPI("http://pypi.test/", http=http, rpc_http=ScriptedHTTP(
        rpc_answer([]), clock=clock), reactor=clock, timeout=5.0, retries=3, backoff=1.0,
        rng=Midpoint(), stale_retries=0)
    _, results = started(pypi.legacy_project("Foo"))
    assert outcome(results).kind == "gone"

"""The HTTP plumbing on real loopback servers: one endpoint per origin, reused by every
request, and HTTPS still checking certificates through it."""

from datetime import datetime, timedelta, timezone

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, ssl
from twisted.web import resource, server
from twisted.web.client import BrowserLikePolicyForHTTPS, ResponseNeverReceived

from pypioncouch import http
from pypioncouch.http import LeanClient
from pypioncouch.pypi import PyPI, Transient
from pypioncouch.testing.pypi import listen as listen_simulator
from pypioncouch.testing.pypi import make_simulator
from pypioncouch.testing.server import FaultPlan

from .helpers import sleep


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello " + request.path


@pytest.fixture
def listen():
    ports = []

    def start(tls=None):
        site = server.Site(Hello())
        site.noisy = False
        port = (reactor.listenSSL(0, site, tls, interface="127.0.0.1") if tls
                else reactor.listenTCP(0, site, interface="127.0.0.1"))
        ports.append(port)
        return port.getHost().port

    yield start
    for port in ports:
        port.stopListening()


@pytest.fixture(scope="module")
def certificate():
    """``(root, server options)``: a certificate for ``localhost`` signed by a root of
    its own (made with ``cryptography``: Twisted's helpers cannot name a subjectAltName,
    which hostname checks read)."""
    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.now(timezone.utc)
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    root = (x509.CertificateBuilder().subject_name(name("pypioncouch test root"))
            .issuer_name(name("pypioncouch test root")).public_key(root_key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name("localhost"))
            .issuer_name(root.subject).public_key(key.public_key())
            .serial_number(2).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(root_key, hashes.SHA256()))
    options = ssl.CertificateOptions(privateKey=key, certificate=leaf)
    return ssl.Certificate.loadPEM(root.public_bytes(Encoding.PEM)), options


@pytest_twisted.ensureDeferred
async def test_requests_to_one_origin_build_one_endpoint(listen, monkeypatch):
    built = []
    real = http.HostnameEndpoint
    monkeypatch.setattr(http, "HostnameEndpoint",
                        lambda *args, **kw: built.append(args[1:3]) or real(*args, **kw))
    first, second = listen(), listen()
    lean = LeanClient(reactor, 4)
    try:
        for number in range(5):
            status, _, body = await lean.get(f"http://127.0.0.1:{first}/p{number}", {})
            assert (status, body) == (200, f"hello /p{number}".encode())
        status, _, body = await lean.get(f"http://127.0.0.1:{second}/other", {})
        assert (status, body) == (200, b"hello /other")
    finally:
        await lean.close()
    assert built == [("127.0.0.1", first), ("127.0.0.1", second)]


@pytest_twisted.ensureDeferred
async def test_https_answers_only_a_server_whose_certificate_is_trusted(listen, certificate):
    root, options = certificate
    port = listen(options)
    trusting = LeanClient(reactor, 2, tls=BrowserLikePolicyForHTTPS(trustRoot=root))
    doubting = LeanClient(reactor, 2)  # the platform's roots: ours is not among them
    try:
        status, _, body = await trusting.get(f"https://localhost:{port}/tls", {})
        assert (status, body) == (200, b"hello /tls")
        with pytest.raises(ResponseNeverReceived) as refused:
            await doubting.get(f"https://localhost:{port}/tls", {})
        assert "certificate verify failed" in str(refused.value.reasons[0].value)
        with pytest.raises(ResponseNeverReceived):  # the certificate names localhost
            await trusting.get(f"https://127.0.0.1:{port}/tls", {})
    finally:
        await trusting.close()
        await doubting.close()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"], ids=["untrusted", "other-name"])
@pytest_twisted.ensureDeferred
async def test_a_certificate_refused_is_said_as_such_and_not_retried(listen, certificate, host):
    """Not "no answer (ResponseNeverReceived)", and not asked twice: a private CA needs
    adding to the system's, a certificate for another name another URL."""
    from pypioncouch.couch import CouchDB, TLSRefused
    from pypioncouch.pypi import PyPIError
    from pypioncouch.status import SyncStatus
    from pypioncouch.web.app import WebFront

    root, options = certificate
    port = listen(options)
    couch = CouchDB(f"https://admin:s3cret@{host}:{port}/", timeout=5)
    pypi = PyPI(f"https://{host}:{port}/", reactor=reactor, timeout=5, retries=3, backoff=5)
    hint = ("TLS certificate is not trusted here, or does not name the host (a private "
            "CA: add it to the system's trusted CAs, e.g. with update-ca-certificates)")
    try:
        with pytest.raises(TLSRefused) as refused:
            await couch.info()
        assert str(refused.value) == f"CouchDB's {hint} (https://admin:***@{host}:{port}/)"
        assert not refused.value.connection_lost  # (so not tried again)
        status = SyncStatus()
        front = WebFront(couch.database("pypi"), status, reactor=reactor)
        assert await front.couch_ok() is False
        assert front.health_reasons(False)[0].startswith("CouchDB's TLS certificate is not")
        with pytest.raises(PyPIError) as refused:
            await pypi.changelog_last_serial()
        assert not isinstance(refused.value, Transient)
        assert str(refused.value) == f"PyPI's {hint} (https://{host}:{port}/pypi " \
                                     "changelog_last_serial)"
    finally:
        couch.close()
        await pypi.close()


@pytest.mark.parametrize("reason, refused", [
    ([("SSL routines", "", "certificate verify failed")], True),
    ([("SSL routines", "", "tlsv1 alert protocol version")], False),
    ([("SSL routines", "", "no shared cipher")], False),
])
def test_only_a_certificate_failure_is_a_refusal(reason, refused):
    """Other TLS failures (a protocol or a cipher not shared) are not the certificate's,
    nor said to be."""
    from OpenSSL import SSL
    from twisted.python.failure import Failure

    error = SSL.Error(reason)
    assert http.is_tls_refusal(error) is refused
    assert http.is_tls_refusal(ResponseNeverReceived([Failure(error)])) is refused


@pytest.mark.parametrize("ask", [
    pytest.param(lambda pypi: pypi.project("cli-yaml-0"), id="json"),
    pytest.param(lambda pypi: pypi.simple_index(), id="simple-index"),
    pytest.param(lambda pypi: pypi.list_packages_with_serial(), id="listing"),
])
@pytest_twisted.ensureDeferred
async def test_an_answer_that_keeps_coming_is_waited_for_past_the_timeout(ask):
    """The timeout is for an answer that stops, not for a big one on a slow link
    (PyPI's listing is 57 MB): here each answer takes 1.5 s, in pieces 0.15 s apart."""
    simulator = make_simulator(3, 1)
    simulator.faults = FaultPlan(1.0, ["slow"], slow_seconds=1.5)
    port, url = listen_simulator(simulator)
    pypi = PyPI(url, reactor=reactor, timeout=0.5, retries=0)
    started = reactor.seconds()
    try:
        answer = await ask(pypi)
        assert reactor.seconds() - started >= 1.3  # (so it did take longer than 0.5 s)
        assert simulator.faults.injected == {"slow": 1}
        if isinstance(answer, tuple):  # the Simple index: (serial, {name: serial})
            answer = answer[1]
        assert answer  # the whole answer, parsed
    finally:
        await pypi.close()
        await port.stopListening()


@pytest.mark.parametrize("ask", [
    pytest.param(lambda pypi: pypi.project("cli-yaml-0"), id="json"),
    pytest.param(lambda pypi: pypi.changelog_last_serial(), id="xmlrpc"),
    pytest.param(lambda pypi: pypi.list_packages_with_serial(), id="listing"),
])
@pytest_twisted.ensureDeferred
async def test_an_answer_that_stalls_halfway_is_given_up_and_its_connection_closed(ask):
    simulator = make_simulator(3, 1)
    simulator.faults = FaultPlan(1.0, ["stalled"], timeout_seconds=60)
    port, url = listen_simulator(simulator)
    pypi = PyPI(url, reactor=reactor, timeout=0.5, retries=0)
    try:
        with pytest.raises(Transient, match=r"nothing received for 0\.5s"):
            await ask(pypi)
        assert simulator.faults.injected == {"stalled": 1}
        for _ in range(50):  # closed now, not when the simulator drops it in a minute
            if simulator.faults.dropped:
                break
            await sleep(0.1)
        assert simulator.faults.dropped == 1
    finally:
        await pypi.close()
        await port.stopListening()

"""HTTP plumbing shared by the CouchDB and PyPI clients.

Requests go straight to Twisted's Agent on a persistent pool: treq's per-request URL
parsing (hyperlink, IDNA checks) cost about as much as the rest of a CouchDB read
together, and a full import or a busy mirror makes hundreds of thousands of them;
the Agent connects through one endpoint per origin (:class:`ReusedEndpoints`). URLs
given here are already quoted, so they are plain ASCII.
"""

from __future__ import annotations

from http import HTTPStatus
from io import BytesIO
from typing import Callable

from twisted.internet import defer, protocol
from twisted.internet import error as ierror
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.python.failure import Failure
from twisted.web import client
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer


# Twisted logs "Starting factory" and "Stopping factory" at info level for every
# client connection (``Factory.noisy``, a public class attribute, on by default); this
# process makes thousands a minute. Its factories are quiet unless one says otherwise.
protocol.Factory.noisy = False


def quiet_pool(reactor, persistent: bool) -> client.HTTPConnectionPool:
    """A connection pool (its connections log nothing at info level, see above)."""
    return client.HTTPConnectionPool(reactor, persistent=persistent)


@implementer(IAgentEndpointFactory)
class ReusedEndpoints:
    """Where an Agent connects, one endpoint per origin, reused: the Agent's own factory
    builds a new ``HostnameEndpoint`` (checking the host name's IDNA form) for every
    request, even one served from the pool, about a tenth of a pooled request's CPU.
    An endpoint connects as often as it is asked, so one per origin serves them all.
    HTTP over TCP, HTTPS over TLS with Twisted's browser-like certificate checks."""

    MAX_ORIGINS = 64  # redirects may lead anywhere: the cache stays small

    def __init__(self, reactor, connect_timeout: float | None = None, tls=None):
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._tls = tls or client.BrowserLikePolicyForHTTPS()  # tests give their own roots
        self._endpoints: dict[tuple[bytes, bytes, int], object] = {}

    def endpointForURI(self, uri):
        origin = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(origin)
        if endpoint is None:
            if len(self._endpoints) >= self.MAX_ORIGINS:
                self._endpoints.clear()
            endpoint = self._endpoints[origin] = self._endpoint(*origin)
        return endpoint

    def _endpoint(self, scheme: bytes, host: bytes, port: int):
        if scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"Unsupported scheme: {scheme!r}")
        options = {} if self._connect_timeout is None else {"timeout": self._connect_timeout}
        try:
            tcp = HostnameEndpoint(self._reactor, host.decode("ascii"), port, **options)
        except UnicodeDecodeError:
            raise ValueError(f"a host name that is not ASCII: {host!r}") from None
        if scheme == b"http":
            return tcp
        return wrapClientTLS(self._tls.creatorForNetloc(host, port), tcp)


def reusing_agent(reactor, pool: client.HTTPConnectionPool,
                  connect_timeout: float | None = None, tls=None) -> client.Agent:
    """Twisted's Agent on ``pool``, connecting through :class:`ReusedEndpoints`."""
    return client.Agent.usingEndpointFactory(
        reactor, ReusedEndpoints(reactor, connect_timeout, tls), pool=pool)


class LeanClient:
    """``await request(method, url, headers, data) -> (status, headers, body)``, the
    headers as ``{lower-case name: last value}``, the body read whole. ``gzip``
    accepts compressed answers; ``follow_redirects`` follows 301/302/307/308 for GETs;
    ``tls``, an ``IPolicyForHTTPS``, checks certificates (default: the platform's roots).
    (Twisted retries only idempotent requests on a stale pooled connection.)"""

    def __init__(self, reactor, max_per_host: int, *, gzip: bool = False,
                 follow_redirects: bool = False, tls=None):
        pool = quiet_pool(reactor, persistent=True)
        pool.maxPersistentPerHost = max_per_host
        agent = reusing_agent(reactor, pool, tls=tls)
        if follow_redirects:
            agent = client.RedirectAgent(agent)
        if gzip:
            agent = client.ContentDecoderAgent(agent, [(b"gzip", client.GzipDecoder)])
        self._agent = agent
        self._pool = pool

    def close(self) -> defer.Deferred:
        """Close the pooled connections (on stop: nothing is left half-open)."""
        return self._pool.closeCachedConnections()

    async def request(self, method: str, url: str, headers: dict[str, str],
                      data: bytes | None = None, *, on_data: Callable[[], None] | None = None
                      ) -> tuple[int, dict[str, str], bytes]:
        """The answer, whole; ``on_data()`` is called as its body's bytes arrive."""
        body = None if data is None else client.FileBodyProducer(BytesIO(data))
        response = await self._agent.request(
            method.encode("ascii"), _ascii(url),
            Headers({k.encode("ascii"): [v.encode("latin-1")] for k, v in headers.items()}),
            body)
        chunks: list[bytes] = []

        def take(chunk: bytes) -> None:
            chunks.append(chunk)
            if on_data is not None:
                on_data()

        await read_body(response, take)
        content = b"".join(chunks)
        found = {k.decode("latin-1").lower(): v[-1].decode("latin-1")
                 for k, v in response.headers.getAllRawHeaders()}
        return response.code, found, content

    async def get(self, url: str, headers: dict[str, str], *,
                  on_data: Callable[[], None] | None = None) -> tuple[int, dict[str, str], bytes]:
        return await self.request("GET", url, headers, on_data=on_data)

    async def stream(self, method: str, url: str, headers: dict[str, str],
                     data: bytes | None, sink) -> tuple[int, dict[str, str], bytes]:
        """Like :meth:`request`, but a 200 answer's body is handed to ``sink`` chunk by
        chunk as it arrives (never held whole) and ``b""`` is returned for it."""
        response = await self._agent.request(
            method.encode("ascii"), _ascii(url),
            Headers({k.encode("ascii"): [v.encode("latin-1")] for k, v in headers.items()}),
            None if data is None else client.FileBodyProducer(BytesIO(data)))
        found = {k.decode("latin-1").lower(): v[-1].decode("latin-1")
                 for k, v in response.headers.getAllRawHeaders()}
        if response.code != 200:
            chunks: list[bytes] = []
            await read_body(response, chunks.append)
            return response.code, found, b"".join(chunks)
        await read_body(response, sink)
        return response.code, found, b""


def read_body(response, sink) -> defer.Deferred:
    """Hand ``response``'s body to ``sink`` chunk by chunk; fires when it has all come.
    Cancelling (a timeout, a caller that left) closes the connection: treq's
    ``collect`` cannot be cancelled, and a body stalled halfway held its connection
    open, fed or not, for as long as the server kept it."""
    body = _Body(sink)
    response.deliverBody(body)
    return body.done


class _Body(protocol.Protocol):
    def __init__(self, sink):
        self._sink = sink
        self.done = defer.Deferred(self._stop)

    def _stop(self, _done) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # the connection is closed, not reused

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        try:
            self._sink(data)
        except BaseException:
            failure = Failure()
            self._stop(None)
            self.done.errback(failure)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(client.ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancelled request: cancelled while connecting
    (``ConnectingCancelledError``), or wrapped by the Agent (``ResponseFailed``,
    ``ResponseNeverReceived``, ``RequestTransmissionFailed``, ... carry ``reasons``)."""
    if isinstance(exc, (defer.CancelledError, ierror.ConnectingCancelledError)):
        return True
    reasons = getattr(exc, "reasons", None) if isinstance(exc, Exception) else None
    return isinstance(reasons, list) and any(
        isinstance(reason, Failure) and is_cancellation(reason.value) for reason in reasons)


TLS_REFUSED = ("TLS certificate is not trusted here, or does not name the host (a "
               "private CA: add it to the system's trusted CAs, e.g. with "
               "update-ca-certificates)")


def is_tls_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` (a request's failure) is a TLS handshake we broke off over the
    server's certificate: not trusted, or not naming the host. Not worth trying again
    (other TLS failures, a protocol or cipher not shared, are not this)."""
    from OpenSSL import SSL
    from service_identity import VerificationError

    if isinstance(exc, VerificationError):
        return True
    if isinstance(exc, SSL.Error):
        return "certificate verify failed" in str(exc)
    reasons = getattr(exc, "reasons", None) if isinstance(exc, Exception) else None
    return isinstance(reasons, list) and any(
        isinstance(reason, Failure) and is_tls_refusal(reason.value) for reason in reasons)


def status_line(status: int) -> str:
    """``HTTP 426 Upgrade Required``: the status with its standard reason phrase."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:  # a status HTTP does not define
        return f"HTTP {status}"


def _ascii(url: str) -> bytes:
    try:
        return url.encode("ascii")
    except UnicodeEncodeError:  # an internationalized host name: let hyperlink encode it
        from hyperlink import URL

        return URL.from_text(url).to_uri().to_text().encode("ascii")

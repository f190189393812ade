"""HTTP plumbing shared by the CouchDB and PyPI clients.

Requests go straight to Twisted's Agent on a persistent pool: treq's per-request URL
parsing (hyperlink, IDNA checks) cost about as much as the rest of a CouchDB read
together, and a full import or a busy mirror makes hundreds of thousands of them.
URLs given here are already quoted, so they are plain ASCII.
"""

from __future__ import annotations

from io import BytesIO

import treq
from twisted.internet import defer, protocol
from twisted.web import client
from twisted.web.http_headers import Headers


# Twisted logs "Starting factory" and "Stopping factory" at info level for every
# client connection (``Factory.noisy``, a public class attribute, on by default); this
# process makes thousands a minute. Its factories are quiet unless one says otherwise.
protocol.Factory.noisy = False


def quiet_pool(reactor, persistent: bool) -> client.HTTPConnectionPool:
    """A connection pool (its connections log nothing at info level, see above)."""
    return client.HTTPConnectionPool(reactor, persistent=persistent)


class LeanClient:
    """``await request(method, url, headers, data) -> (status, headers, body)``, the
    headers as ``{lower-case name: last value}``, the body read whole. ``gzip``
    accepts compressed answers; ``follow_redirects`` follows 301/302/307/308 for GETs.
    (Twisted retries only idempotent requests on a stale pooled connection.)"""

    def __init__(self, reactor, max_per_host: int, *, gzip: bool = False,
                 follow_redirects: bool = False):
        pool = quiet_pool(reactor, persistent=True)
        pool.maxPersistentPerHost = max_per_host
        agent = client.Agent(reactor, pool=pool)
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
                      data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        body = None if data is None else client.FileBodyProducer(BytesIO(data))
        response = await self._agent.request(
            method.encode("ascii"), _ascii(url),
            Headers({k.encode("ascii"): [v.encode("latin-1")] for k, v in headers.items()}),
            body)
        content = await treq.content(response)
        found = {k.decode("latin-1").lower(): v[-1].decode("latin-1")
                 for k, v in response.headers.getAllRawHeaders()}
        return response.code, found, content

    async def get(self, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        return await self.request("GET", url, headers)

    async def stream(self, method: str, url: str, headers: dict[str, str], data: bytes,
                     sink) -> tuple[int, dict[str, str], bytes]:
        """Like :meth:`request`, but a 200 answer's body is handed to ``sink`` chunk by
        chunk as it arrives (never held whole) and ``b""`` is returned for it."""
        response = await self._agent.request(
            method.encode("ascii"), _ascii(url),
            Headers({k.encode("ascii"): [v.encode("latin-1")] for k, v in headers.items()}),
            client.FileBodyProducer(BytesIO(data)))
        found = {k.decode("latin-1").lower(): v[-1].decode("latin-1")
                 for k, v in response.headers.getAllRawHeaders()}
        if response.code != 200:
            return response.code, found, await treq.content(response)
        await treq.collect(response, sink)
        return response.code, found, b""


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancelled request (the Agent wraps the cancellation in
    ``ResponseFailed``/``ResponseNeverReceived`` when it cancels a request)."""
    if isinstance(exc, client.ResponseFailed):
        return any(reason.check(defer.CancelledError) for reason in exc.reasons)
    return isinstance(exc, defer.CancelledError)


def _ascii(url: str) -> bytes:
    try:
        return url.encode("ascii")
    except UnicodeEncodeError:  # an internationalized host name: let hyperlink encode it
        from hyperlink import URL

        return URL.from_text(url).to_uri().to_text().encode("ascii")

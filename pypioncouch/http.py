"""HTTP plumbing shared by the CouchDB and PyPI clients."""

from __future__ import annotations

from treq.client import HTTPClient
import treq
from twisted.web import client
from twisted.web.http_headers import Headers


class _QuietFactory(client._HTTP11ClientFactory):
    noisy = False  # no "Starting factory" log line for every pooled connection


def http_client(reactor, max_per_host: int) -> HTTPClient:
    """A treq client on a persistent pool of ``max_per_host`` connections per host.
    (Twisted retries only idempotent requests on a stale pooled connection.)"""
    pool = client.HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_per_host
    pool._factory = _QuietFactory
    return HTTPClient(client.Agent(reactor, pool=pool))


class LeanGetter:
    """GETs without treq's per-request URL parsing (a full import makes ~700,000):
    Twisted's Agent on a persistent pool, gzip accepted, the body read whole."""

    def __init__(self, reactor, max_per_host: int):
        pool = client.HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = max_per_host
        pool._factory = _QuietFactory
        self._agent = client.ContentDecoderAgent(
            client.RedirectAgent(client.Agent(reactor, pool=pool)),
            [(b"gzip", client.GzipDecoder)])

    async def get(self, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """``(status, {lower-case header: last value}, body)``."""
        response = await self._agent.request(
            b"GET", url.encode("ascii"),
            Headers({k.encode("ascii"): [v.encode("latin-1")] for k, v in headers.items()}))
        body = await treq.content(response)
        found = {k.decode("latin-1").lower(): v[-1].decode("latin-1")
                 for k, v in response.headers.getAllRawHeaders()}
        return response.code, found, body

"""HTTP plumbing shared by the CouchDB and PyPI clients."""

from __future__ import annotations

from treq.client import HTTPClient
from twisted.web import client


class _QuietFactory(client._HTTP11ClientFactory):
    noisy = False  # no "Starting factory" log line for every pooled connection


def http_client(reactor, max_per_host: int) -> HTTPClient:
    """A treq client on a persistent pool of ``max_per_host`` connections per host.
    (Twisted retries only idempotent requests on a stale pooled connection.)"""
    pool = client.HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_per_host
    pool._factory = _QuietFactory
    return HTTPClient(client.Agent(reactor, pool=pool))

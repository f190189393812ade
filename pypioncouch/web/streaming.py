"""Long answers written at the pace the client reads them, and cut off visibly when
they cannot be completed.

A streamed answer's status line goes out with its first bytes, so a failure half-way
(CouchDB going away) can no longer become a 503. Ending the answer cleanly would hand
the client a short body under a 200; instead the connection is aborted, and the
client sees a failed transfer (a chunked body without its last chunk).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer


@implementer(IPushProducer)
class PacedWriter:
    """Writes a request's body no faster than the client reads it.

    Registered on the request as a streaming producer: twisted.web pauses it when the
    connection's send buffer is full and resumes it when the buffer drains, and
    ``await write(data)`` returns only when more may be written. A slow client makes
    the writer wait, so the daemon holds one chunk beyond the transport's buffer,
    never the whole answer. Call :meth:`close` when done (before the request ends).
    """

    def __init__(self, request):
        self.request = request
        self.paused = False
        self._resumed: Deferred | None = None
        request.registerProducer(self, True)

    async def write(self, data: bytes) -> None:
        self.request.write(data)
        while self.paused:
            self._resumed = Deferred()
            await self._resumed

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        # The connection is gone; klein cancels the handler, which ends the wait.
        pass

    def close(self) -> None:
        if self.request.channel is not None:  # (after a disconnection there is none)
            self.request.unregisterProducer()


async def cut_short(request):
    """Abort the connection of a request whose answer has begun but cannot be
    completed. Returns when the connection is gone (``NOT_DONE_YET``: nothing more is
    to be written)."""
    channel = request.channel
    if channel is None:  # the client left already
        return NOT_DONE_YET
    lost = request.notifyFinish()
    channel.transport.abortConnection()
    try:
        await lost
    except Exception:  # ConnectionAborted: what we asked for
        pass
    return NOT_DONE_YET

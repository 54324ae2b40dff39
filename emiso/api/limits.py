"""
A request that keeps no more than C{--max-body-size} bytes of its body.

Twisted reads a whole request body into memory or a temporary file before
it renders anything, so a size check in a route comes after the damage.
L{BodyLimitedRequest} stops storing the body once it is known to be too
large and marks the request; L{emiso.api.versioning.VersionedRoot} then
responds 413 before any route runs.
"""

import io
from typing import Any

from twisted.web.server import Request


class BodyLimitedRequest(Request):
    """
    A L{Request} that drops a body larger than C{max_body_size} bytes.

    @cvar max_body_size: the largest body kept, in bytes; set by
        L{body_limited_request}.
    @ivar body_too_large: C{None}, or the size of a dropped body in bytes
        (the declared C{Content-Length}, or the bytes received so far of a
        chunked body).
    """

    max_body_size: int = 256 * 1024 * 1024

    body_too_large: int | None = None
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is None or length <= self.max_body_size:
            super().gotLength(length)
            return
        self.content = io.BytesIO()
        self.body_too_large = length
        # Respond now rather than after the body: no 100 Continue, and the
        # channel takes the request as complete. The body bytes that still
        # arrive are not a next request, so the connection closes after the
        # response.
        self.requestHeaders.removeHeader(b"Expect")
        self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        channel = self.channel
        if channel is not None and hasattr(channel, "length"):
            channel.persistent = False
            channel.length = 0

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self.body_too_large is not None:
            if self._received > self.body_too_large:
                self.body_too_large = self._received
            return
        if self._received > self.max_body_size:
            # A chunked body: it has no declared length to check beforehand.
            self.body_too_large = self._received
            self.content.seek(0)
            self.content.truncate()
            self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            if self.channel is not None:
                self.channel.persistent = False
            return
        super().handleContentChunk(data)

    def too_large_message(self) -> str:
        return (
            f"request body of {self.body_too_large} bytes is larger than the "
            f"limit of {self.max_body_size} bytes"
        )


def body_limited_request(max_body_size: int) -> Any:
    """
    Return a request factory for a L{twisted.web.server.Site} whose
    requests keep at most C{max_body_size} bytes of body.
    """
    return type(
        "BodyLimitedRequest", (BodyLimitedRequest,), {"max_body_size": max_body_size}
    )

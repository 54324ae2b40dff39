"""Raw streams over an HTTP connection: Docker's C{Upgrade: tcp} hijack.

Docker clients ask C{POST /exec/{id}/start} and C{POST
/containers/{id}/attach} to upgrade the connection (C{Connection: Upgrade},
C{Upgrade: tcp}); the daemon answers C{101 UPGRADED} and the connection then
carries raw bytes both ways. Without those headers the stream is an ordinary
chunked response body and the client sends no input.

Twisted 26 has no public API to take over a connection from its HTTP
channel. L{hijack} does what C{twisted.web.websocket} does internally (it
calls the private C{HTTPChannel._protocolUpgradeForWebsockets}), with two
differences: it replaces the transport's C{protocol} instead of patching
the channel's methods, so that the new protocol provides
L{IHalfCloseableProtocol} (the docker CLI half-closes the connection as
soon as it has no more input, and the output must still go out), and it
replays the bytes the channel buffered after the request (a client may
send input right behind the request head). When the connection ends it
calls the original protocol's C{connectionLost}, so the channel and the
L{Request} clean up as for any lost connection: Klein then cancels the
route's Deferred and never writes a response of its own.
"""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from emiso.api.base import version_at_least
from emiso.engine.execs import IStream

log = Logger()

#: Seconds the first stream bytes wait after the 101 head. docker-py reads
#: the head through a buffered reader and the stream from the socket under
#: it, so bytes that arrive with the head are lost to it.
#: NOTE: a delay makes this unlikely, not impossible, on a loaded host;
#: dockerd has the same race but its exec processes take longer to start.
OUTPUT_DELAY = 0.05

RAW_STREAM = b"application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = b"application/vnd.docker.multiplexed-stream"


def stream_content_type(request: Any, tty: bool) -> bytes:
    """
    Return Docker's stream type: multiplexed for a non-TTY stream from API
    1.42 on, raw otherwise.
    """
    if not tty and version_at_least(request, (1, 42)):
        return MULTIPLEXED_STREAM
    return RAW_STREAM


def wants_upgrade(request: Any) -> bool:
    """Tell whether the request asks for Docker's C{Upgrade: tcp}."""
    upgrade = (request.getHeader(b"upgrade") or b"").lower()
    connection = (request.getHeader(b"connection") or b"").lower()
    return b"tcp" in upgrade and b"upgrade" in connection


@implementer(IStream, IHalfCloseableProtocol)
class HijackedConnection(Protocol):
    """
    The protocol of a hijacked connection: bytes from the client go to the
    receiver (an L{emiso.engine.execs.IStreamReceiver}).
    """

    def __init__(self, original: Any) -> None:
        self._original = original
        self._held: list[bytes] | None = []
        self._close_held = False
        self._receiver: Any = None
        self._pending: list[bytes] = []
        self._input_ended = False
        self._closed = False

    def set_receiver(self, receiver: Any) -> None:
        """Deliver client bytes to C{receiver} from now on, buffered ones first."""
        self._receiver = receiver
        pending, self._pending = self._pending, []
        for data in pending:
            receiver.data_received(data)
        if self._input_ended:
            receiver.input_ended()
        if self._closed:
            receiver.connection_lost()

    def release(self) -> None:
        """Send the bytes held since the head, and send later ones at once."""
        held, self._held = self._held, None
        if held is None or self._closed:
            return
        if held:
            self.transport.write(b"".join(held))
        if self._close_held:
            self.transport.loseConnection()

    # IStream

    def write(self, data: bytes) -> None:
        if self._closed or not data:
            return
        if self._held is not None:
            self._held.append(data)
        else:
            self.transport.write(data)

    def close(self) -> None:
        if self._held is not None:
            self._close_held = True
        elif not self._closed:
            self.transport.loseConnection()

    # IProtocol and IHalfCloseableProtocol

    def dataReceived(self, data: bytes) -> None:
        if self._receiver is None:
            self._pending.append(data)
        else:
            self._receiver.data_received(data)

    def readConnectionLost(self) -> None:
        self._input_ended = True
        if self._receiver is not None:
            self._receiver.input_ended()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self._closed = True
        if self._receiver is not None:
            self._receiver.connection_lost()
        self._original.connectionLost(reason)


def hijack(request: Any, content_type: bytes, clock: Any) -> HijackedConnection:
    """
    Answer C{101 UPGRADED} and take the connection over from the HTTP channel.

    @param clock: provides C{callLater}, to release the output held for
        L{OUTPUT_DELAY} seconds after the head.

    @return: the L{HijackedConnection}; its receiver is set by the caller.
    """
    channel = request.channel
    transport = channel.transport
    headers = [b"HTTP/1.1 101 UPGRADED"]
    for name, values in request.responseHeaders.getAllRawHeaders():
        if name.lower() in (b"content-type", b"connection", b"upgrade"):
            continue
        headers.extend(name + b": " + value for value in values)
    headers += [
        b"Content-Type: " + content_type,
        b"Connection: Upgrade",
        b"Upgrade: tcp",
    ]
    transport.write(b"\r\n".join(headers) + b"\r\n\r\n")
    connection = HijackedConnection(transport.protocol)
    transport.protocol = connection
    connection.makeConnection(transport)
    # Bytes the client sent after the request head wait in the channel's
    # buffer (private), and the channel may have paused reading because of
    # them.
    buffered = b"".join(getattr(channel, "_dataBuffer", []))
    channel._dataBuffer = []
    transport.resumeProducing()
    if buffered:
        connection.dataReceived(buffered)
    clock.callLater(OUTPUT_DELAY, connection.release)
    log.debug("Hijacked the connection of {method} {path}",
              method=request.method, path=request.path)
    return connection


@implementer(IStream)
class ResponseStream:
    """
    A stream written as an ordinary chunked response body, for clients that
    do not ask for an upgrade; they send no input.

    @ivar finished: fires when the stream is closed or the client went away.
    """

    def __init__(self, request: Any, content_type: bytes) -> None:
        self._request = request
        self._closed = False
        self.finished: Deferred = Deferred()
        request.setHeader(b"Content-Type", content_type)
        request.write(b"")
        request.notifyFinish().addBoth(self._client_gone)
        self._receiver: Any = None

    def set_receiver(self, receiver: Any) -> None:
        """Tell C{receiver} at once that no input will come."""
        self._receiver = receiver
        receiver.input_ended()

    def write(self, data: bytes) -> None:
        if not self._closed and data:
            self._request.write(data)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._request.finish()
            self.finished.callback(None)

    def _client_gone(self, _: Any) -> None:
        if not self._closed:
            self._closed = True
            if self._receiver is not None:
                self._receiver.connection_lost()
            self.finished.callback(None)

"""Tests for the raw serial console client against a real Unix socket."""

import os
import shutil
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from emiso.engine.console import (
    MAX_SOCKET_PATH,
    ConsoleClosed,
    connect_serial,
)
from emiso.errors import ConsoleUnavailable


class Recorder(Protocol):
    """Keeps what a client sends; fires C{received} at each carriage return."""

    def __init__(self, server: "SerialServer") -> None:
        self.server = server

    def connectionMade(self) -> None:
        self.server.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.server.data += data
        if b"\r" in data and not self.server.received.called:
            self.server.received.callback(self.server.data)
        # Output of the ME: the client reads and drops it.
        self.transport.write(b"echo\r\n")


class SerialServer(Factory):
    def __init__(self) -> None:
        self.data = b""
        self.received: Deferred = Deferred()
        self.connections: list[Recorder] = []

    def buildProtocol(self, addr) -> Recorder:
        return Recorder(self)


class ConnectSerialTests(TestCase):
    timeout = 10

    @inlineCallbacks
    def serve(self, path: str):
        server = SerialServer()
        port = yield UNIXServerEndpoint(reactor, path).listen(server)
        self.addCleanup(port.stopListening)
        return server

    def folder(self) -> str:
        folder = tempfile.mkdtemp(prefix="serial-")
        self.addCleanup(shutil.rmtree, folder)
        return folder

    @inlineCallbacks
    def connect(self, path: str):
        serial = yield connect_serial(reactor, path)
        self.addCleanup(lambda: serial.closed)
        self.addCleanup(serial.close)
        return serial

    @inlineCallbacks
    def test_send_ends_with_cr(self):
        path = os.path.join(self.folder(), "con.sock")
        server = yield self.serve(path)
        serial = yield self.connect(path)

        serial.send(b"count")
        data = yield server.received

        self.assertEqual(data, b"count\r")

    @inlineCallbacks
    def test_long_path(self):
        folder = self.folder()
        deep = os.path.join(folder, "d" * (MAX_SOCKET_PATH - len(folder)))
        os.mkdir(deep)
        path = os.path.join(deep, "con.sock")
        descriptor = os.open(deep, os.O_PATH)
        self.addCleanup(os.close, descriptor)
        server = yield self.serve(f"/proc/self/fd/{descriptor}/con.sock")
        serial = yield self.connect(path)

        serial.send(b"help")
        data = yield server.received

        self.assertGreater(len(os.fsencode(path)), MAX_SOCKET_PATH)
        self.assertEqual(data, b"help\r")

    @inlineCallbacks
    def test_send_after_close(self):
        path = os.path.join(self.folder(), "con.sock")
        yield self.serve(path)
        serial = yield self.connect(path)

        serial.close()
        yield serial.closed

        self.assertRaises(ConsoleClosed, serial.send, b"count")

    @inlineCallbacks
    def test_missing_socket(self):
        path = os.path.join(self.folder(), "absent.sock")

        failure = yield self.assertFailure(
            connect_serial(reactor, path), ConsoleUnavailable
        )

        self.assertIn(path, str(failure))

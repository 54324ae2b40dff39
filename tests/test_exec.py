"""
Unit tests of exec sessions, the exec manager and the HTTP upgrade hijack,
with a fake ME console and in-memory connections (no processes, no sockets).
"""

import struct

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.protocol import Protocol
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from emiso.api.hijack import OUTPUT_DELAY, HijackedConnection, hijack
from emiso.engine.console import ConsoleClosed
from emiso.engine.execs import (
    EXIT_CONSOLE_LOST,
    ExecInstance,
    ExecManager,
    ExecSession,
    IStream,
    IStreamReceiver,
    command_line,
)
from emiso.errors import Conflict, NoSuchExec, NotImplementedForSO3

PROMPT = "ME> "


class FakeConsole:
    """
    An ME console that answers each command line from a table at once.

    @ivar lines: the command lines received, in order.
    """

    def __init__(self, replies=None):
        self.prompt = PROMPT
        self.closed = Deferred()
        self.lines = []
        self.replies = replies or {}
        self.pending = None

    def run(self, line, output):
        self.lines.append(line)
        if line == "hang":
            self.pending = Deferred()
            return self.pending
        outputs, status = self.replies.get(line, ([("stdout", line.upper())], 0))
        for stream, text in outputs:
            output(stream, text)
        return succeed(status)

    def close(self):
        if self.closed.called:
            return
        self.closed.callback(None)
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.errback(ConsoleClosed("closed"))


@implementer(IStream)
class FakeStream:
    """A client stream that records what is written and whether it closed."""

    def __init__(self):
        self.data = b""
        self.closed = False

    def write(self, data):
        self.data += data

    def close(self):
        self.closed = True


def make_instance(cmd, tty=False):
    return ExecInstance(
        id="e" * 64,
        container_id="c" * 64,
        cmd=cmd,
        tty=tty,
        attach_stdin=True,
        attach_stdout=True,
        attach_stderr=True,
    )


def frames(data):
    result = []
    while data:
        stream, size = struct.unpack(">BxxxI", data[:8])
        result.append((stream, data[8 : 8 + size]))
        data = data[8 + size :]
    return result


class CommandLineTests(SynchronousTestCase):
    """Which exec commands are console lines and which open a session."""

    def test_command_lines(self):
        cases = [
            ([], None),
            (["sh"], None),
            (["/bin/bash"], None),
            (["bash", "-i"], None),
            (["sh", "-c", "status"], "status"),
            (["echo", "a", "b"], "echo a b"),
            (["sh", "help"], "help"),
        ]
        for cmd, expected in cases:
            self.assertEqual(command_line(cmd), expected, cmd)


class ExecSessionTests(SynchronousTestCase):
    """One-shot commands and interactive sessions over a fake console."""

    def start(self, cmd, tty=False, replies=None):
        self.console = FakeConsole(replies)
        self.stream = FakeStream()
        self.session = ExecSession(make_instance(cmd, tty), self.console)
        self.session.attach(self.stream)
        return self.session

    def test_receiver_interface(self):
        session = self.start(["sh"])

        self.assertTrue(verifyObject(IStreamReceiver, session))
        self.assertTrue(verifyObject(IStream, self.stream))

    def test_command_frames_and_exit(self):
        replies = {"bad": ([("stdout", "out"), ("stderr", "err")], 127)}

        session = self.start(["bad"], replies=replies)

        self.assertEqual(frames(self.stream.data), [(1, b"out\n"), (2, b"err\n")])
        self.assertEqual(session.instance.exit_code, 127)
        self.assertIs(session.instance.running, False)
        self.assertTrue(self.stream.closed)
        self.assertEqual(self.successResultOf(session.done), 127)

    def test_tty_session_echoes_input(self):
        session = self.start(["sh"], tty=True)

        session.data_received(b"ec")
        session.data_received(b"x\x7fho\r")

        self.assertEqual(self.console.lines, ["echo"])
        self.assertEqual(
            self.stream.data,
            b"ME> ecx\b \bho\r\nECHO\r\nME> ",
        )

    def test_tty_crlf_is_one_line(self):
        session = self.start(["sh"], tty=True)

        session.data_received(b"status\r")
        session.data_received(b"\n")

        self.assertEqual(self.console.lines, ["status"])

    def test_tty_ctrl_c_drops_line(self):
        session = self.start(["sh"], tty=True)

        session.data_received(b"reboot\x03uptime\r")

        self.assertEqual(self.console.lines, ["uptime"])
        self.assertIn(b"^C\r\nME> ", self.stream.data)

    def test_tty_escape_sequences_ignored(self):
        session = self.start(["sh"], tty=True)

        session.data_received(b"\x1b[Ahelp\x1b[1;5C\r")

        self.assertEqual(self.console.lines, ["help"])

    def test_exit_sets_code(self):
        session = self.start(["bash"], tty=True)

        session.data_received(b"exit 3\r")

        self.assertEqual(self.successResultOf(session.done), 3)
        self.assertEqual(session.instance.exit_code, 3)
        self.assertTrue(self.stream.closed)
        self.assertEqual(self.console.lines, [])

    def test_input_end_keeps_last_status(self):
        session = self.start(["sh"], replies={"bad": ([], 2)})

        session.data_received(b"bad\n")
        session.input_ended()

        self.assertEqual(self.successResultOf(session.done), 2)
        self.assertEqual(self.stream.data, b"")

    def test_unterminated_line_runs_at_end(self):
        session = self.start(["sh"])

        session.data_received(b"help")
        session.input_ended()

        self.assertEqual(self.console.lines, ["help"])
        self.assertEqual(frames(self.stream.data), [(1, b"HELP\n")])
        self.assertTrue(self.stream.closed)

    def test_console_lost_mid_command(self):
        session = self.start(["hang"])

        self.console.close()

        self.assertEqual(self.successResultOf(session.done), EXIT_CONSOLE_LOST)
        self.assertTrue(self.stream.closed)

    def test_console_lost_when_idle(self):
        session = self.start(["sh"], tty=True)

        self.console.close()

        self.assertEqual(session.instance.exit_code, EXIT_CONSOLE_LOST)


@attrs.define
class FakeContainer:
    id: str = "c" * 64
    state: str = "running"
    console: str | None = "/run/console"

    @property
    def short_id(self):
        return self.id[:12]


class FakeContainers:
    def __init__(self, container):
        self.container = container

    def get(self, name):
        from emiso.errors import NoSuchContainer

        if self.container is None or name not in ("demo", self.container.id):
            raise NoSuchContainer(name)
        return self.container


class ExecManagerTests(SynchronousTestCase):
    """Creating, finding and starting exec instances."""

    def setUp(self):
        self.container = FakeContainer()
        self.containers = FakeContainers(self.container)
        self.console = FakeConsole()
        self.connected = []

        def connect(reactor, path):
            self.connected.append(path)
            return succeed(self.console)

        self.manager = ExecManager(Clock(), self.containers, connect)

    def test_create_and_start(self):
        instance = self.manager.create("demo", {"Cmd": ["status"], "Tty": False})

        session = self.successResultOf(self.manager.start(instance.id))

        self.assertEqual(self.connected, ["/run/console"])
        self.assertIs(session.instance, instance)
        self.assertIs(instance.running, True)

    def test_start_twice_conflicts(self):
        instance = self.manager.create("demo", {"Cmd": ["status"]})
        self.manager.start(instance.id)

        self.failureResultOf(self.manager.start(instance.id), Conflict)

    def test_paused_container_conflicts(self):
        self.container.state = "paused"

        with self.assertRaises(Conflict) as raised:
            self.manager.create("demo", {"Cmd": ["status"]})

        self.assertIn("is paused", raised.exception.message)

    def test_no_console_is_not_implemented(self):
        self.container.console = None

        with self.assertRaises(NotImplementedForSO3) as raised:
            self.manager.create("demo", {"Cmd": ["status"]})

        self.assertEqual(raised.exception.status, 501)

    def test_removed_container_forgets_exec(self):
        instance = self.manager.create("demo", {"Cmd": ["status"]})
        self.containers.container = None

        self.assertRaises(NoSuchExec, self.manager.get, instance.id)


class _EchoReceiver:
    """Upper-cases the bytes it receives back to the client."""

    def __init__(self, connection):
        self.connection = connection
        self.ended = False
        self.lost = False

    def data_received(self, data):
        self.connection.write(data.upper())

    def input_ended(self):
        self.ended = True
        self.connection.write(b"bye")
        self.connection.close()

    def connection_lost(self):
        self.lost = True


class _UpgradeResource(Resource):
    isLeaf = True

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.receivers = []
        self.finished = []

    def render_POST(self, request):
        request.setHeader(b"Api-Version", b"1.44")
        connection = hijack(request, b"application/vnd.docker.raw-stream", self.clock)
        receiver = _EchoReceiver(connection)
        self.receivers.append(receiver)
        request.notifyFinish().addErrback(lambda f: self.finished.append(f))
        connection.set_receiver(receiver)
        return NOT_DONE_YET


class _RawClient(Protocol):
    def __init__(self):
        self.data = b""
        self.lost = False

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = True


class HijackTests(SynchronousTestCase):
    """The 101 upgrade over an in-memory connection to a real Site."""

    def connect(self):
        self.clock = Clock()
        self.resource = _UpgradeResource(self.clock)
        site = Site(self.resource)
        client, server, pump = iosim.connectedServerAndClient(
            lambda: site.buildProtocol(None), _RawClient
        )
        return client, server, pump

    def request(self, client, pump, trailing=b""):
        client.transport.write(
            b"POST /exec/abc/start HTTP/1.1\r\nHost: \r\n"
            b"Connection: Upgrade\r\nUpgrade: tcp\r\n"
            b"Content-Length: 2\r\n\r\n{}" + trailing
        )
        pump.flush()

    def test_head_and_raw_bytes(self):
        client, _server, pump = self.connect()

        self.request(client, pump)
        client.transport.write(b"abc")
        pump.flush()
        head_only = client.data
        self.clock.advance(OUTPUT_DELAY)
        pump.flush()

        head, _, body = client.data.partition(b"\r\n\r\n")
        self.assertEqual(head_only, head + b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 101 UPGRADED")
        self.assertIn(b"Content-Type: application/vnd.docker.raw-stream", lines)
        self.assertIn(b"Connection: Upgrade", lines)
        self.assertIn(b"Upgrade: tcp", lines)
        self.assertIn(b"Api-Version: 1.44", lines)
        self.assertEqual(body, b"ABC")

    def test_pipelined_bytes_replayed(self):
        client, _server, pump = self.connect()

        self.request(client, pump, trailing=b"early")
        self.clock.advance(OUTPUT_DELAY)
        pump.flush()

        self.assertTrue(client.data.endswith(b"\r\n\r\nEARLY"))

    def test_half_close_keeps_output(self):
        client, _server, pump = self.connect()
        self.request(client, pump)
        connection = self.resource.receivers[0].connection

        connection.readConnectionLost()
        self.clock.advance(OUTPUT_DELAY)
        pump.flush()

        self.assertIsInstance(connection, HijackedConnection)
        self.assertTrue(self.resource.receivers[0].ended)
        self.assertTrue(client.data.endswith(b"bye"))
        self.assertTrue(client.lost)

    def test_close_finishes_request(self):
        client, _server, pump = self.connect()
        self.request(client, pump)

        client.transport.loseConnection()
        pump.flush()

        self.assertTrue(self.resource.receivers[0].lost)
        self.assertEqual(len(self.resource.finished), 1)

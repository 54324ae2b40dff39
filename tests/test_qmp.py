"""Tests for the synchronous QMP client, over a fake transport."""

import json
import socket

from twisted.trial.unittest import SynchronousTestCase

from emiso.agency.qemu.qmp import QmpConnection, QmpError

GREETING = {"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}


class FakeTransport:
    """
    A socket stand-in: C{recv} hands out scripted chunks, C{sendall}
    records what the client sent.
    """

    def __init__(self, chunks):
        self.chunks = list(chunks)
        self.sent = []
        self.timeouts = []
        self.closed = False

    def sendall(self, data):
        self.sent.append(json.loads(data))

    def recv(self, size):
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if isinstance(chunk, Exception):
            raise chunk
        return chunk

    def settimeout(self, timeout):
        self.timeouts.append(timeout)

    def close(self):
        self.closed = True


def line(message):
    return json.dumps(message).encode() + b"\n"


def negotiated(*chunks):
    transport = FakeTransport(
        [line(GREETING), line({"return": {}, "id": "emiso-1"}), *chunks]
    )
    connection = QmpConnection(transport)
    connection.negotiate()
    return connection, transport


class QmpConnectionTests(SynchronousTestCase):
    def test_negotiate_sends_capabilities(self):
        connection, transport = negotiated()

        self.assertEqual(
            transport.sent, [{"execute": "qmp_capabilities", "id": "emiso-1"}]
        )

    def test_negotiate_keeps_greeting(self):
        connection, transport = negotiated()

        self.assertEqual(connection.greeting, GREETING)

    def test_negotiate_rejects_other_greeting(self):
        transport = FakeTransport([line({"hello": 1})])
        connection = QmpConnection(transport)

        error = self.assertRaises(QmpError, connection.negotiate)

        self.assertIn("expected a QMP greeting", str(error))

    def test_execute_returns_value(self):
        connection, transport = negotiated(
            line({"return": {"status": "running"}, "id": "emiso-2"})
        )

        result = connection.execute("query-status")

        self.assertEqual(result, {"status": "running"})

    def test_execute_sends_arguments(self):
        connection, transport = negotiated(line({"return": {}, "id": "emiso-2"}))

        connection.execute("migrate", {"uri": "exec:cat > /x"})

        self.assertEqual(
            transport.sent[-1],
            {
                "execute": "migrate",
                "id": "emiso-2",
                "arguments": {"uri": "exec:cat > /x"},
            },
        )

    def test_events_are_kept(self):
        event = {"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}
        connection, transport = negotiated(
            line(event), line({"return": {}, "id": "emiso-2"})
        )

        connection.execute("stop")

        self.assertEqual(connection.events, [event])

    def test_reply_split_across_reads(self):
        data = line({"return": 42, "id": "emiso-2"})
        connection, transport = negotiated(data[:5], data[5:17], data[17:])

        result = connection.execute("query-x")

        self.assertEqual(result, 42)

    def test_two_messages_in_one_read(self):
        data = line({"event": "RESUME"}) + line({"return": 7, "id": "emiso-2"})
        connection, transport = negotiated(data)

        result = connection.execute("cont")

        self.assertEqual(result, 7)

    def test_stale_reply_is_skipped(self):
        connection, transport = negotiated(
            line({"return": "old", "id": "emiso-1"}),
            line({"return": "new", "id": "emiso-2"}),
        )

        result = connection.execute("query-x")

        self.assertEqual(result, "new")

    def test_error_reply_raises(self):
        connection, transport = negotiated(
            line(
                {
                    "error": {"class": "GenericError", "desc": "no such thing"},
                    "id": "emiso-2",
                }
            )
        )

        error = self.assertRaises(QmpError, connection.execute, "bogus")

        self.assertEqual(
            (error.error_class, str(error)),
            ("GenericError", "QEMU rejected bogus: no such thing"),
        )

    def test_closed_socket_raises(self):
        connection, transport = negotiated()

        error = self.assertRaises(QmpError, connection.execute, "stop")

        self.assertEqual(str(error), "QEMU closed its QMP socket")

    def test_socket_timeout_raises(self):
        connection, transport = negotiated(socket.timeout("timed out"))

        error = self.assertRaises(QmpError, connection.execute, "stop")

        self.assertIn("timed out", str(error))

    def test_deadline_bounds_reads(self):
        times = iter([0.0, 0.0, 0.0, 0.0, 100.0, 200.0, 300.0])
        transport = FakeTransport(
            [line(GREETING), line({"return": {}, "id": "emiso-1"}), b"{", b'"a'] * 3
        )
        connection = QmpConnection(transport, clock=lambda: next(times))
        connection.negotiate()

        error = self.assertRaises(QmpError, connection.execute, "stop", timeout=5)

        self.assertIn("timed out", str(error))

    def test_non_json_line_raises(self):
        connection, transport = negotiated(b"garbage\n")

        error = self.assertRaises(QmpError, connection.execute, "stop")

        self.assertIn("not JSON", str(error))

    def test_close_closes_transport(self):
        connection, transport = negotiated()

        connection.close()

        self.assertTrue(transport.closed)

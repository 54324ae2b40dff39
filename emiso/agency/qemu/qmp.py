"""A small synchronous QMP client for the qemu agency driver.

QMP is QEMU's JSON control protocol: the server sends a greeting, the client
sends C{qmp_capabilities}, then each command gets one reply object with
C{return} or C{error}; asynchronous C{event} objects may arrive in between.
The agency driver is a plain Python process that runs one operation at a
time, so it speaks QMP over a blocking UNIX socket with a deadline on every
read instead of running a Twisted reactor. L{QmpConnection} takes any object
with C{sendall}, C{recv} and C{close}, so tests give it a fake transport.
"""

import json
import socket
import time
from typing import Any, Callable

# Seconds a QMP command may take when the caller gives no timeout.
DEFAULT_TIMEOUT = 10.0
# Bytes read from the socket at a time.
_READ_SIZE = 65536


class QmpError(Exception):
    """
    QEMU returned an error for a command, or the connection failed.

    @ivar error_class: QEMU's error class (for example C{GenericError}), or
        C{None} when the failure is not a QMP error reply.
    """

    def __init__(self, message: str, error_class: str | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class


class QmpConnection:
    """
    One negotiated QMP session.

    @param transport: a connected stream socket, or an object with the same
        C{sendall}, C{recv}, C{settimeout} and C{close} methods.
    @param clock: monotonic clock in seconds, for deadlines.
    """

    def __init__(self, transport, clock: Callable[[], float] = time.monotonic) -> None:
        self._transport = transport
        self._clock = clock
        self._buffer = b""
        self._next_id = 0
        self.greeting: dict | None = None
        #: Events received while waiting for replies, oldest first.
        self.events: list[dict] = []

    def negotiate(self, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """Read the greeting and leave capabilities negotiation mode."""
        deadline = self._clock() + timeout
        greeting = self._read_message(deadline)
        if "QMP" not in greeting:
            raise QmpError(f"expected a QMP greeting, got {_preview(greeting)}")
        self.greeting = greeting
        self._command("qmp_capabilities", None, deadline)
        return greeting

    def execute(
        self,
        command: str,
        arguments: dict | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Any:
        """
        Run one command and return the value of its C{return} member.

        @raise QmpError: QEMU returned an error, the connection closed or
            no reply came within C{timeout} seconds.
        """
        return self._command(command, arguments, self._clock() + timeout)

    def close(self) -> None:
        """Close the socket."""
        try:
            self._transport.close()
        except OSError:
            pass

    def _command(self, command: str, arguments: dict | None, deadline: float) -> Any:
        self._next_id += 1
        request_id = f"emiso-{self._next_id}"
        message: dict = {"execute": command, "id": request_id}
        if arguments:
            message["arguments"] = arguments
        try:
            self._transport.sendall(json.dumps(message).encode() + b"\n")
        except OSError as error:
            raise QmpError(f"cannot send {command} to QEMU: {error}") from None
        while True:
            reply = self._read_message(deadline)
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != request_id:
                # A reply to an earlier command that timed out; skip it.
                continue
            if "error" in reply:
                error = reply["error"] if isinstance(reply["error"], dict) else {}
                raise QmpError(
                    f"QEMU rejected {command}: {error.get('desc', reply['error'])}",
                    error.get("class"),
                )
            if "return" not in reply:
                raise QmpError(f"QEMU sent a reply without return: {_preview(reply)}")
            return reply["return"]

    def _read_message(self, deadline: float) -> dict:
        while b"\n" not in self._buffer:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise QmpError(
                    "QMP request timed out: QEMU sent no reply on its QMP socket"
                )
            try:
                self._transport.settimeout(remaining)
                chunk = self._transport.recv(_READ_SIZE)
            except socket.timeout:
                raise QmpError(
                    "QMP request timed out: QEMU sent no reply on its QMP socket"
                ) from None
            except OSError as error:
                raise QmpError(
                    f"reading from QEMU's QMP socket failed: {error}"
                ) from None
            if not chunk:
                raise QmpError("QEMU closed its QMP socket")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            raise QmpError(
                f"QEMU sent a line that is not JSON: {line[:80]!r}"
            ) from None
        if not isinstance(message, dict):
            raise QmpError(
                f"QEMU sent a JSON value that is not an object: {line[:80]!r}"
            )
        return message


def connect(path: str, timeout: float = DEFAULT_TIMEOUT) -> QmpConnection:
    """
    Connect to the QMP UNIX socket at C{path} and negotiate capabilities.

    @raise QmpError: the connection fails, or QEMU sends no greeting in time.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError as error:
        sock.close()
        raise QmpError(f"cannot connect to QMP socket {path}: {error}") from None
    connection = QmpConnection(sock)
    try:
        connection.negotiate(timeout)
    except QmpError:
        connection.close()
        raise
    return connection


def _preview(message: dict, limit: int = 80) -> str:
    text = json.dumps(message)
    return text if len(text) <= limit else text[:limit] + "..."

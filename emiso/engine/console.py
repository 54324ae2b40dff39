"""Client of an ME's interactive console socket.

An agency that gives its MEs console input reports a Unix socket path per
slot (C{console} in the C{inject} and C{list} results). The socket speaks
newline-delimited JSON: the ME greets with C{{"console": ..., "prompt":
...}}, each request C{{"id": ID, "line": TEXT}} gets one
C{{"id": ID, "stream": ..., "text": ...}} message per output line and a
final C{{"id": ID, "exit": STATUS}}. L{emiso.agency.sim.me} serves it.

An agency whose MEs have a plain serial console (the qemu backend) reports
its Unix socket as C{serial} instead: raw bytes in both directions, with
no prompt and no exit status. L{connect_serial} writes input lines to it;
the ME's output reaches the container's console log another way, so what
the socket sends back is read and dropped.
"""

import itertools
import json
import os
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.logger import Logger
from twisted.internet.protocol import Protocol
from twisted.protocols.basic import LineOnlyReceiver

from emiso.errors import ConsoleUnavailable

log = Logger()

#: Seconds to wait for the ME to accept a console connection and greet.
CONNECT_TIMEOUT = 5.0

#: Maximum length of a Unix socket path, in bytes (sun_path is 108 bytes
#: including the terminating NUL).
MAX_SOCKET_PATH = 107

OutputCallback = Callable[[str, str], None]
"""Called with C{(stream, text)} for each output line of a command."""


class ConsoleClosed(Exception):
    """The console connection ended before the command finished."""


class ConsoleProtocol(LineOnlyReceiver):
    """
    One connection to an ME console.

    @ivar ready: fires with this protocol once the ME's greeting arrived.
    @ivar closed: fires with None when the connection ends.
    @ivar prompt: the prompt the ME announced.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1024 * 1024

    def __init__(self) -> None:
        self.ready: Deferred = Deferred()
        self.closed: Deferred = Deferred()
        self.prompt = "> "
        self._greeted = False
        self._ids = itertools.count(1)
        self._commands: dict[int, tuple[OutputCallback, Deferred]] = {}

    def run(self, line: str, output: OutputCallback) -> Deferred:
        """
        Send one command line to the ME.

        @return: a Deferred that fires with the command's exit status, or
            fails with L{ConsoleClosed}.
        """
        if self.transport is None or self.closed.called:
            return fail(ConsoleClosed("the console connection is closed"))
        command_id = next(self._ids)
        done: Deferred = Deferred()
        self._commands[command_id] = (output, done)
        message = {"id": command_id, "line": line}
        self.sendLine(json.dumps(message).encode())
        return done

    def close(self) -> None:
        """Close the connection; running commands fail with L{ConsoleClosed}."""
        if self.transport is not None:
            self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            log.warn("Ignored a console line that is not JSON: {line!r}", line=line)
            return
        if not isinstance(message, dict):
            return
        if not self._greeted:
            self._greeted = True
            self.prompt = str(message.get("prompt", self.prompt))
            self.ready.callback(self)
            return
        entry = self._commands.get(message.get("id"))
        if entry is None:
            if "error" in message:
                log.warn("The ME console rejected a request: {error}", error=message)
            return
        output, done = entry
        if "exit" in message:
            del self._commands[message["id"]]
            status = message["exit"]
            done.callback(status if isinstance(status, int) else 1)
        else:
            output(str(message.get("stream", "stdout")), str(message.get("text", "")))

    def lineLengthExceeded(self, line: bytes) -> None:
        log.warn("The ME console sent a line longer than {limit} bytes", limit=self.MAX_LENGTH)
        self.close()

    def connectionLost(self, reason: Any = None) -> None:
        commands, self._commands = self._commands, {}
        for _output, done in commands.values():
            done.errback(ConsoleClosed("the ME console closed the connection"))
        if not self.ready.called:
            self.ready.errback(ConsoleClosed("the ME console closed before greeting"))
        if not self.closed.called:
            self.closed.callback(None)


def connectable_path(path: str) -> tuple[str, int | None]:
    """
    Return an address that C{connect()} accepts for the socket at C{path}.

    A path longer than L{MAX_SOCKET_PATH} bytes is reached through
    C{/proc/self/fd/N/NAME}, where N is an C{O_PATH} descriptor of its
    folder; the caller closes that descriptor after connecting.

    @return: the address and the descriptor to close, or None.
    """
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path, None
    directory, name = os.path.split(path)
    descriptor = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{descriptor}/{name}", descriptor


def connect_console(
    reactor: Any, path: str, timeout: float = CONNECT_TIMEOUT
) -> Deferred:
    """
    Connect to the console socket at C{path} and wait for the greeting.

    @return: a Deferred that fires with a ready L{ConsoleProtocol}, or fails
        with L{ConsoleUnavailable}.
    """
    try:
        address, descriptor = connectable_path(path)
    except OSError as error:
        return fail(ConsoleUnavailable(f"cannot open the ME console {path}: {error}"))
    protocol = ConsoleProtocol()
    endpoint = UNIXClientEndpoint(reactor, address, timeout=timeout)
    connecting = connectProtocol(endpoint, protocol)

    def close_descriptor(result: Any) -> Any:
        if descriptor is not None:
            os.close(descriptor)
        return result

    def greeted(_: Any) -> Deferred:
        protocol.ready.addTimeout(timeout, reactor)
        return protocol.ready

    def failed(failure: Any) -> None:
        # Connection refused, a missing socket file, a timeout or an ME
        # that closed before its greeting all mean the same to the caller.
        protocol.close()
        raise ConsoleUnavailable(
            f"cannot reach the ME console {path}: {failure.getErrorMessage()}"
        )

    connecting.addBoth(close_descriptor)
    connecting.addCallback(greeted)
    connecting.addErrback(failed)
    return connecting


class SerialProtocol(Protocol):
    """
    One connection to an ME's raw serial console.

    @ivar closed: fires with None when the connection ends.
    """

    #: Ends each input line: what a serial terminal sends for Enter.
    line_end = b"\r"

    def __init__(self) -> None:
        self.closed: Deferred = Deferred()

    def send(self, line: bytes) -> None:
        """
        Type one input line on the console, followed by L{line_end}.

        @raise ConsoleClosed: the connection is closed.
        """
        if self.transport is None or self.closed.called:
            raise ConsoleClosed("the serial console connection is closed")
        self.transport.write(line + self.line_end)

    def close(self) -> None:
        """Close the connection."""
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        # The same output reaches the console log through the agency.
        pass

    def connectionLost(self, reason: Any = None) -> None:
        if not self.closed.called:
            self.closed.callback(None)


def connect_serial(reactor: Any, path: str, timeout: float = CONNECT_TIMEOUT) -> Deferred:
    """
    Connect to the raw serial console socket at C{path}.

    A QEMU chardev socket serves one client at a time: a second connection
    waits, unread, until the first one ends.

    @return: a Deferred that fires with a connected L{SerialProtocol}, or
        fails with L{ConsoleUnavailable}.
    """
    # TODO: share one connection per socket between the attach and exec
    # sessions of a container, so they can type on the console at once.
    try:
        address, descriptor = connectable_path(path)
    except OSError as error:
        return fail(ConsoleUnavailable(f"cannot open the ME console {path}: {error}"))
    endpoint = UNIXClientEndpoint(reactor, address, timeout=timeout)
    connecting = connectProtocol(endpoint, SerialProtocol())

    def close_descriptor(result: Any) -> Any:
        if descriptor is not None:
            os.close(descriptor)
        return result

    def failed(failure: Any) -> None:
        raise ConsoleUnavailable(
            f"cannot reach the ME console {path}: {failure.getErrorMessage()}"
        )

    connecting.addBoth(close_descriptor)
    connecting.addErrback(failed)
    return connecting

"""Attach sessions: the console of an ME as a stream, with input to its console.

C{POST /containers/{id}/attach} streams the console log as C{docker logs
-f} frames it (optionally from the start, with C{logs=1}) until the
container's next exit, and sends each input line to the ME console, whose
replies then appear in the log like any console output. An ME with only a
raw serial console (C{serial}, the qemu backend) gets the line's bytes
followed by a carriage return, as typed on a serial terminal.
"""

from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from emiso.engine.console import ConsoleClosed, connect_console, connect_serial
from emiso.engine.execs import IStreamReceiver
from emiso.engine.logs import LogFollower, LogOptions, inline_reader
from emiso.errors import ConsoleUnavailable

log = Logger()

#: Seconds an attach stream goes on after its container stopped, so the
#: ME's last console lines reach the client (one more log poll).
ATTACH_GRACE = 0.5

#: Maximum length of an input line buffered for the console, in bytes.
MAX_INPUT_LINE = 64 * 1024


@attrs.frozen
class AttachOptions:
    """The query parameters of an attach request."""

    logs: bool = False
    stream: bool = True
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@implementer(IStreamReceiver)
class AttachSession:
    """
    One attach stream: console log frames out, input lines to the console.

    The stream ends at the container's next exit (plus L{ATTACH_GRACE}), or
    when the client goes away. L{done} fires then.

    @param containers: the L{emiso.engine.containers.ContainerManager}.
    @param reader: runs blocking log file reads (see L{emiso.engine.logs}).
    @param connect: connects to a console socket (L{connect_console}).
    @param connect_raw: connects to a serial socket (L{connect_serial}).
    """

    def __init__(
        self,
        reactor: Any,
        containers: Any,
        container: Any,
        options: AttachOptions,
        reader: Callable[..., Deferred] = inline_reader,
        connect: Callable[[Any, str], Deferred] = connect_console,
        connect_raw: Callable[[Any, str], Deferred] = connect_serial,
        poll_interval: float = 0.25,
    ) -> None:
        self.done: Deferred = Deferred()
        self._reactor = reactor
        self._containers = containers
        self._container = container
        self._options = options
        self._reader = reader
        self._connect = connect
        self._connect_raw = connect_raw
        self._poll_interval = poll_interval
        self._stream: Any = None
        self._follower: LogFollower | None = None
        self._exited: Deferred | None = None
        self._grace_call: Any = None
        self._console: Deferred | None = None
        self._line = bytearray()
        self._ended = False

    def attach(self, stream: Any) -> None:
        """Start streaming to C{stream} (an L{emiso.engine.execs.IStream})."""
        self._stream = stream
        options = self._options
        if not (options.stdout or options.stderr) or not (
            options.logs or options.stream
        ):
            self._end()
            return
        log_options = LogOptions(
            stdout=options.stdout,
            stderr=options.stderr,
            tail=None if options.logs else 0,
            follow=options.stream,
        )
        self._follower = LogFollower(
            self._container.log_path,
            log_options,
            self._reactor,
            stream.write,
            poll_interval=self._poll_interval,
            reader=self._reader,
        )
        self._follower.done.addCallback(lambda _: self._end())
        if options.stream:
            # Docker's attach ends when the container stops; one that does not
            # run yet (docker run attaches before it starts) ends at its first
            # exit.
            self._exited = self._containers.wait(self._container.id, "next-exit")
            self._exited.addCallbacks(self._container_exited, lambda _: None)
        started = self._follower.start()
        if not options.stream:
            started.addCallback(lambda _: self._follower.stop())

    # IStreamReceiver

    def data_received(self, data: bytes) -> None:
        if not self._options.stdin or self._ended:
            return
        self._line += data
        while True:
            end = self._line.find(b"\n")
            if end < 0:
                break
            line = bytes(self._line[:end]).rstrip(b"\r")
            del self._line[: end + 1]
            self._send_line(line.decode("utf-8", "replace"))
        if len(self._line) > MAX_INPUT_LINE:
            log.warn(
                "Dropped an attach input line of container {id} longer than "
                "{limit} bytes",
                id=self._container.short_id,
                limit=MAX_INPUT_LINE,
            )
            self._line.clear()

    def input_ended(self) -> None:
        # Docker keeps an attach stream open after the client's input ends
        # (the docker CLI half-closes at once when it has no input).
        if self._line:
            line, self._line = bytes(self._line), bytearray()
            self._send_line(line.decode("utf-8", "replace"))

    def connection_lost(self) -> None:
        self._stream = None
        self._end()

    # Internals

    def _send_line(self, line: str) -> None:
        path = getattr(self._container, "console", None)
        serial = getattr(self._container, "serial", None)
        if not path and not serial:
            log.info(
                "Ignored attach input for container {id}: its ME has no console",
                id=self._container.short_id,
            )
            return
        if self._console is None:
            if path:
                self._console = self._connect(self._reactor, path)
            else:
                self._console = self._connect_raw(self._reactor, serial)
            self._console.addErrback(self._console_failed)

        def send(console: Any) -> Any:
            # The replies reach the client through the console log.
            if console is None:
                return console
            if path:
                console.run(line, lambda stream, text: None).addErrback(
                    lambda _: None
                )
            else:
                try:
                    console.send(line.encode("utf-8"))
                except ConsoleClosed as error:
                    self._console_lost(error)
                    return None
            return console

        self._console.addCallback(send)

    def _console_failed(self, failure: Any) -> None:
        failure.trap(ConsoleUnavailable)
        self._console_lost(failure.value)
        return None

    def _console_lost(self, error: Exception) -> None:
        log.warn(
            "Attach input for container {id} is lost: {error}",
            id=self._container.short_id,
            error=error,
        )
        self._console = None

    def _container_exited(self, _: Any) -> None:
        self._exited = None
        self._grace_call = self._reactor.callLater(ATTACH_GRACE, self._end)

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._follower is not None:
            self._follower.stop()
        if self._exited is not None:
            self._exited.cancel()
        if self._grace_call is not None and self._grace_call.active():
            self._grace_call.cancel()
        if self._console is not None:
            self._console.addCallback(lambda console: console and console.close())
            self._console.addErrback(lambda _: None)
        if self._stream is not None:
            self._stream.close()
        self.done.callback(None)

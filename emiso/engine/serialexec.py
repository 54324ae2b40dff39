"""Exec on an ME whose console is a raw serial line (the qemu backend).

A serial console has no prompt, no command boundaries and no exit status:
the engine types bytes on it and reads what the ME prints from the
container's console log, where the agency copies the ME's output line by
line. So an exec on such an ME works this way:

 - an interactive exec (a shell, or an empty C{Cmd}, as Portainer's console
   sends) types each input line on the console and streams the console log
   until the client goes away or ends its input;
 - a one-shot exec types its command line, streams the console log that
   follows until L{QUIET} seconds pass without output (at most L{LIMIT}
   seconds), then ends with exit code 0.

NOTE: a raw serial console reports no exit status, so a one-shot exec
always ends with C{ExitCode} 0, whatever the ME made of the line; an exec
whose console connection dropped ends with 137 as on the other backends.

The ME echoes what it receives on its own, and that echo is what the client
sees: the session does not echo input itself, and the echo of a line shows
once the line is complete, because the console log holds whole lines.
"""

import codecs
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from emiso.engine.console import ConsoleClosed
from emiso.engine.execs import EXIT_CONSOLE_LOST, IStreamReceiver
from emiso.engine.logs import LogFollower, LogOptions, inline_reader

log = Logger()

#: Seconds without console output after which a one-shot exec ends.
QUIET = 1.0

#: Seconds after which a one-shot exec ends even if output goes on.
LIMIT = 5.0

#: Maximum length of an input line, in characters; longer input is cut into
#: lines of this size.
MAX_INPUT_LINE = 4096

_CTRL_C = "\x03"
_CTRL_D = "\x04"
_BACKSPACES = ("\x08", "\x7f")


@implementer(IStreamReceiver)
class SerialExecSession:
    """
    A started exec on a raw serial console (see the module docstring).

    @param instance: the L{emiso.engine.execs.ExecInstance}.
    @param serial: a connected L{emiso.engine.console.SerialProtocol}.
    @param log_path: the container's console log.
    @param reader: runs blocking log file reads (see L{emiso.engine.logs}).
    @ivar done: fires with the exit code when the exec ends.
    """

    def __init__(
        self,
        reactor: Any,
        instance: Any,
        serial: Any,
        log_path: str,
        reader: Callable[..., Deferred] = inline_reader,
        poll_interval: float = 0.25,
        quiet: float = QUIET,
        limit: float = LIMIT,
    ) -> None:
        self.instance = instance
        self.done: Deferred = Deferred()
        self._reactor = reactor
        self._serial = serial
        self._log_path = log_path
        self._reader = reader
        self._poll_interval = poll_interval
        self._quiet = quiet
        self._limit = limit
        self._stream: Any = None
        self._follower: LogFollower | None = None
        self._following = False
        self._pending: list[bytes] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = ""
        self._after_cr = False
        self._quiet_call: Any = None
        self._limit_call: Any = None
        self._finished = False

    def attach(self, stream: Any) -> None:
        """Begin the exec, writing its output to C{stream} (an L{IStream})."""
        self._stream = stream
        self._serial.closed.addCallback(lambda _: self._finish(EXIT_CONSOLE_LOST))
        instance = self.instance
        options = LogOptions(
            stdout=instance.attach_stdout,
            stderr=instance.attach_stderr,
            tail=0,
            follow=True,
            tty=instance.tty,
        )
        self._follower = LogFollower(
            self._log_path,
            options,
            self._reactor,
            self._output,
            poll_interval=self._poll_interval,
            reader=self._reader,
        )
        # Input waits until the follower knows where the log ends, so the
        # output of the first line is not skipped.
        started = self._follower.start()
        started.addCallback(self._following_started)
        started.addErrback(
            lambda failure: log.failure(
                "Cannot follow the console log of exec {exec_id}",
                failure,
                exec_id=instance.id[:12],
            )
        )

    # IStreamReceiver

    def data_received(self, data: bytes) -> None:
        if self._finished or self.instance.command_line is not None:
            return
        for character in self._decoder.decode(data):
            self._edit(character)
            if self._finished:
                return

    def input_ended(self) -> None:
        if self._finished or self.instance.command_line is not None:
            return
        if self._line:
            self._send(self._line)
            self._line = ""
        # The replies to the last lines are still on their way.
        self._wait_for_quiet()

    def connection_lost(self) -> None:
        self._stream = None
        self._finish(0)

    # Internals

    def _following_started(self, _: Any) -> None:
        self._following = True
        pending, self._pending = self._pending, []
        for line in pending:
            self._write_serial(line)
        line = self.instance.command_line
        if line is not None:
            self._send(line)
            self._wait_for_quiet()

    def _edit(self, character: str) -> None:
        after_cr, self._after_cr = self._after_cr, character == "\r"
        tty = self.instance.tty
        if character == "\n" and after_cr:
            return  # the LF of a CR LF pair
        if character in "\r\n":
            self._send(self._line)
            self._line = ""
        elif tty and character in _BACKSPACES:
            self._line = self._line[:-1]
        elif tty and character == _CTRL_C:
            self._line = ""
        elif tty and character == _CTRL_D:
            if not self._line:
                self.input_ended()
        elif character.isprintable() or character == "\t":
            self._line += character
            if len(self._line) >= MAX_INPUT_LINE:
                self._send(self._line)
                self._line = ""

    def _send(self, line: str) -> None:
        self._write_serial(line.encode("utf-8"))

    def _write_serial(self, data: bytes) -> None:
        if not self._following:
            self._pending.append(data)
            return
        try:
            self._serial.send(data)
        except ConsoleClosed:
            self._finish(EXIT_CONSOLE_LOST)

    def _output(self, data: bytes) -> None:
        if self._finished or self._stream is None:
            return
        if self.instance.tty:
            data = data.replace(b"\n", b"\r\n")
        self._stream.write(data)
        if self._quiet_call is not None and self._quiet_call.active():
            self._quiet_call.reset(self._quiet)

    def _wait_for_quiet(self) -> None:
        if self._finished or self._quiet_call is not None:
            return
        self._quiet_call = self._reactor.callLater(self._quiet, self._finish, 0)
        self._limit_call = self._reactor.callLater(self._limit, self._finish, 0)

    def _finish(self, status: int) -> None:
        if self._finished:
            return
        self._finished = True
        for call in (self._quiet_call, self._limit_call):
            if call is not None and call.active():
                call.cancel()
        if self._follower is not None:
            self._follower.stop()
        # The exit code is recorded before the stream ends: the docker CLI
        # inspects the exec as soon as it reads end of file.
        self.instance.running = False
        self.instance.exit_code = status
        self._serial.close()
        if self._stream is not None:
            self._stream.close()
        log.info(
            "Exec {exec_id} on a serial console ended with exit code {status}",
            exec_id=self.instance.id[:12],
            status=status,
        )
        self.done.callback(status)

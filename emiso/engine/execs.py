"""Exec instances: console commands and console sessions in a running ME.

An SO3 ME has no processes to start, so C{docker exec} runs console
commands. An exec whose command is a shell (C{sh}, C{bash}, ...) with no
command string is an interactive session: each input line goes to the ME
console and the output comes back, until the client ends its input or
types C{exit}. Any other command is one console command line (the words
of C{Cmd} joined by spaces); its output is the exec's output and its exit
status the exec's C{ExitCode}. C{sh -c LINE} runs LINE. An ME with only a
raw serial console runs execs as L{emiso.engine.serialexec} describes.
"""

import codecs
import os
import secrets
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from zope.interface import Interface, implementer

from emiso.engine.console import ConsoleClosed, connect_console, connect_serial
from emiso.engine.logs import frame, inline_reader
from emiso.errors import (
    Conflict,
    InvalidParameter,
    NoSuchContainer,
    NoSuchExec,
    NotImplementedForSO3,
)

log = Logger()

#: Program names whose exec without a command string opens a console session.
SHELLS = frozenset({"sh", "bash", "ash", "dash", "zsh", "ksh", "busybox"})

#: Exit code of an exec whose console went away under it: Docker reports
#: 128 + SIGKILL for an exec process killed with its container.
EXIT_CONSOLE_LOST = 137

#: Finished exec instances kept per container for inspection; older ones
#: are forgotten.
MAX_FINISHED_PER_CONTAINER = 32

# Control characters of the session's line editing (terminal mode only).
_CTRL_C = "\x03"
_CTRL_D = "\x04"
_BACKSPACES = ("\x08", "\x7f")
_ESCAPE = "\x1b"


class IStream(Interface):
    """The client side of an exec or attach stream, as the API provides it."""

    def write(data):
        """Send bytes to the client; ignored once the stream is closed."""

    def close():
        """End the stream (the client sees end of file)."""


class IStreamReceiver(Interface):
    """What a stream delivers from the client."""

    def data_received(data):
        """Handle bytes the client sent (its standard input)."""

    def input_ended():
        """Handle the end of the client's input (a half-close)."""

    def connection_lost():
        """Handle the client going away; nothing more can be written."""


@attrs.define(eq=False)
class ExecInstance:
    """One exec instance, created by C{POST /containers/{id}/exec}."""

    id: str
    container_id: str
    cmd: list[str]
    tty: bool = False
    attach_stdin: bool = False
    attach_stdout: bool = False
    attach_stderr: bool = False
    user: str = ""
    privileged: bool = False
    detach_keys: str = ""
    started: bool = False
    running: bool = False
    exit_code: int | None = None
    size: tuple[int, int] | None = None

    @property
    def command_line(self) -> str | None:
        """The console command to run, or None for an interactive session."""
        return command_line(self.cmd)


def command_line(cmd: list[str]) -> str | None:
    """
    Return the console command line of an exec C{Cmd}, or None when it asks
    for an interactive session (a shell alone, or with options only).
    """
    if not cmd:
        return None
    program = os.path.basename(cmd[0])
    if program not in SHELLS:
        return " ".join(cmd)
    arguments = cmd[1:]
    if len(arguments) >= 2 and arguments[0] == "-c":
        return arguments[1]
    if all(argument.startswith("-") for argument in arguments):
        return None
    return " ".join(arguments)


class ExecManager:
    """
    The exec instances of the engine, kept in memory as dockerd does.

    @param containers: the L{emiso.engine.containers.ContainerManager}.
    @param connect: connects to a console socket path and returns a
        Deferred firing with a L{emiso.engine.console.ConsoleProtocol}.
    @param connect_raw: connects to a raw serial socket path and returns a
        Deferred firing with a L{emiso.engine.console.SerialProtocol}.
    @param reader: runs blocking console log reads for serial execs.
    """

    def __init__(
        self,
        reactor: Any,
        containers: Any,
        connect: Callable[[Any, str], Deferred] = connect_console,
        connect_raw: Callable[[Any, str], Deferred] = connect_serial,
        reader: Callable[..., Deferred] = inline_reader,
    ) -> None:
        self._reactor = reactor
        self._containers = containers
        self._connect = connect
        self._connect_raw = connect_raw
        self._reader = reader
        self._instances: dict[str, ExecInstance] = {}

    def create(self, name_or_id: str, config: dict) -> ExecInstance:
        """
        Create an exec instance in a running container.

        @raise NoSuchContainer: no container matches.
        @raise Conflict: the container is paused or not running.
        @raise NotImplementedForSO3: the container's ME has no console input.
        @raise InvalidParameter: C{Cmd} is not a list of strings.
        """
        container = self._containers.get(name_or_id)
        check_can_exec(container)
        cmd = config.get("Cmd") or []
        if isinstance(cmd, str):
            cmd = [cmd]
        if not isinstance(cmd, list) or not all(isinstance(w, str) for w in cmd):
            raise InvalidParameter("Cmd must be an array of strings")
        instance = ExecInstance(
            id=secrets.token_hex(32),
            container_id=container.id,
            cmd=list(cmd),
            tty=bool(config.get("Tty")),
            attach_stdin=bool(config.get("AttachStdin")),
            attach_stdout=bool(config.get("AttachStdout")),
            attach_stderr=bool(config.get("AttachStderr")),
            user=str(config.get("User") or ""),
            privileged=bool(config.get("Privileged")),
            detach_keys=str(config.get("DetachKeys") or ""),
        )
        self._forget_old(container.id)
        self._instances[instance.id] = instance
        log.info(
            "Created exec {exec_id} in container {id}: {cmd}",
            exec_id=instance.id[:12],
            id=container.short_id,
            cmd=instance.cmd,
        )
        return instance

    def get(self, exec_id: str) -> ExecInstance:
        """
        Find an exec instance by id.

        @raise NoSuchExec: unknown id, or its container was removed.
        """
        instance = self._instances.get(exec_id)
        if instance is None:
            raise NoSuchExec(exec_id)
        try:
            self._containers.get(instance.container_id)
        except NoSuchContainer:
            del self._instances[exec_id]
            raise NoSuchExec(exec_id) from None
        return instance

    def running_ids(self, container_id: str) -> list[str]:
        """Return the ids of the running exec instances of a container."""
        return [
            i.id
            for i in self._instances.values()
            if i.container_id == container_id and i.running
        ]

    def resize(self, exec_id: str, height: int, width: int) -> None:
        """Record the client's terminal size (console lines are not wrapped)."""
        self.get(exec_id).size = (height, width)

    @inlineCallbacks
    def start(self, exec_id: str):
        """
        Start an exec instance: connect to its container's ME console.

        @return: a Deferred firing with an L{ExecSession} that runs once
            L{ExecSession.attach} gives it the client's stream.
        @raise Conflict: the exec was started before, or its container no
            longer runs.
        """
        instance = self.get(exec_id)
        if instance.started:
            raise Conflict(f"exec instance {exec_id} has already been started")
        container = self._containers.get(instance.container_id)
        check_can_exec(container)
        instance.started = True
        instance.running = True
        serial = not container.console
        try:
            if serial:
                console = yield self._connect_raw(self._reactor, container.serial)
            else:
                console = yield self._connect(self._reactor, container.console)
        except Exception:
            instance.running = False
            instance.exit_code = EXIT_CONSOLE_LOST
            raise
        if serial:
            # Imported here: emiso.engine.serialexec builds on this module.
            from emiso.engine.serialexec import SerialExecSession

            return SerialExecSession(
                self._reactor, instance, console, container.log_path, self._reader
            )
        return ExecSession(instance, console)

    def _forget_old(self, container_id: str) -> None:
        finished = [
            i
            for i in self._instances.values()
            if i.container_id == container_id and i.exit_code is not None
        ]
        for instance in finished[: max(0, len(finished) - MAX_FINISHED_PER_CONTAINER)]:
            del self._instances[instance.id]


def check_can_exec(container: Any) -> None:
    """
    Check that a container can run console commands now.

    @raise Conflict: it is paused or does not run (Docker's messages).
    @raise NotImplementedForSO3: its ME has neither a console nor a serial
        console.
    """
    if container.state == "paused":
        raise Conflict(
            f"Container {container.id} is paused, unpause the container before exec"
        )
    if container.state != "running":
        raise Conflict(f"Container {container.id} is not running")
    if not (getattr(container, "console", None) or getattr(container, "serial", None)):
        raise NotImplementedForSO3(
            f"exec is not available for container {container.id}: the agency "
            "gives its ME no console input"
        )


@implementer(IStreamReceiver)
class ExecSession:
    """
    A started exec: one console command, or an interactive console session.

    With C{Tty} set the session edits the input line as a terminal would
    (echo, backspace, Ctrl-C, Ctrl-D) and ends output lines with CR LF;
    without it, output lines are stdcopy frames and input is not echoed.

    @ivar done: fires with the exit code when the exec ends.
    """

    def __init__(self, instance: ExecInstance, console: Any) -> None:
        self.instance = instance
        self.done: Deferred = Deferred()
        self._console = console
        self._stream: Any = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = ""
        self._escape = False
        self._after_cr = False
        self._queue: list[str] = []
        self._busy = False
        self._input_ended = False
        self._last_status = 0
        self._finished = False

    def attach(self, stream: Any) -> None:
        """Begin the exec, writing its output to C{stream} (an L{IStream})."""
        self._stream = stream
        self._console.closed.addCallback(lambda _: self._console_closed())
        line = self.instance.command_line
        if line is not None:
            self._queue.append(line)
            self._input_ended = True
            self._next_command()
        elif self.instance.tty:
            self._write_raw(self._console.prompt)

    # IStreamReceiver

    def data_received(self, data: bytes) -> None:
        if self._finished or self.instance.command_line is not None:
            return
        for character in self._decoder.decode(data):
            self._edit(character)
            if self._finished:
                return
        self._next_command()

    def input_ended(self) -> None:
        if self._finished or self.instance.command_line is not None:
            return
        if self._line and not self.instance.tty:
            self._queue.append(self._line)
            self._line = ""
        self._input_ended = True
        self._next_command()

    def connection_lost(self) -> None:
        self._stream = None
        self.input_ended()

    # Line editing

    def _edit(self, character: str) -> None:
        after_cr, self._after_cr = self._after_cr, character == "\r"
        self._edit_character(character, after_cr)

    def _edit_character(self, character: str, after_cr: bool) -> None:
        tty = self.instance.tty
        if self._escape:
            # Skip a terminal escape sequence (arrow keys and the like): ESC,
            # an optional [ or O, then parameters up to a final letter.
            if character not in "[O;0123456789":
                self._escape = False
            return
        if tty and character == _ESCAPE:
            self._escape = True
        elif character == "\n" and after_cr:
            pass  # the LF of a CR LF pair
        elif character in "\r\n":
            if tty:
                self._write_raw("\r\n")
            self._queue.append(self._line)
            self._line = ""
        elif tty and character in _BACKSPACES:
            if self._line:
                self._line = self._line[:-1]
                self._write_raw("\b \b")
        elif tty and character == _CTRL_C:
            self._line = ""
            self._write_raw("^C\r\n" + self._console.prompt)
        elif tty and character == _CTRL_D:
            if not self._line:
                self._input_ended = True
        elif character.isprintable() or character == "\t":
            self._line += character
            if tty:
                self._write_raw(character)

    # Commands

    def _next_command(self) -> None:
        if self._busy or self._finished:
            return
        if not self._queue:
            if self._input_ended:
                self._finish(self._last_status)
            return
        line = self._queue.pop(0)
        words = line.split()
        if self.instance.command_line is None and words and words[0] == "exit":
            self._finish(_exit_status(words, self._last_status))
            return
        if not words and self.instance.command_line is None:
            self._prompt()
            self._next_command()
            return
        self._busy = True
        running = self._console.run(line, self._output)
        running.addCallbacks(self._command_done, self._command_failed)

    def _command_done(self, status: int) -> None:
        self._busy = False
        self._last_status = status
        self._prompt()
        self._next_command()

    def _command_failed(self, failure: Any) -> None:
        self._busy = False
        failure.trap(ConsoleClosed)
        self._finish(EXIT_CONSOLE_LOST)

    def _console_closed(self) -> None:
        if not self._finished and not self._busy:
            self._finish(EXIT_CONSOLE_LOST)

    def _prompt(self) -> None:
        if self.instance.tty and self.instance.command_line is None:
            if not (self._input_ended and not self._queue):
                self._write_raw(self._console.prompt)

    def _output(self, stream: str, text: str) -> None:
        wanted = (
            self.instance.attach_stderr
            if stream == "stderr"
            else self.instance.attach_stdout
        )
        if not wanted:
            return
        if self.instance.tty:
            self._write_raw(text + "\r\n")
        elif self._stream is not None:
            self._stream.write(frame(stream, text.encode() + b"\n"))

    def _write_raw(self, text: str) -> None:
        if self._stream is not None:
            self._stream.write(text.encode())

    def _finish(self, status: int) -> None:
        if self._finished:
            return
        self._finished = True
        # The exit code is recorded before the stream ends: the docker CLI
        # inspects the exec as soon as it reads end of file.
        self.instance.running = False
        self.instance.exit_code = status
        self._console.close()
        if self._stream is not None:
            self._stream.close()
        log.info(
            "Exec {exec_id} ended with exit code {status}",
            exec_id=self.instance.id[:12],
            status=status,
        )
        self.done.callback(status)


def _exit_status(words: list[str], default: int) -> int:
    if len(words) > 1 and words[1].lstrip("-").isdigit():
        return int(words[1]) & 0xFF
    return default

"""Simulated ME: a host process that plays an SO3 Mobile Entity for the sim agency.

The process stops itself (SIGSTOP) as soon as it starts, so an injected ME
is loaded but not running until the agency sends SIGCONT (finalize). It
then prints a boot banner to its console log, waits its boot delay and
prints C{heartbeat N} every period. It writes its state and heartbeat
counter to a status file after every change, so the agency can read them
while the process is frozen. SIGTERM shuts it down cleanly (exit status 0).

Exit statuses: 0 after a shutdown (SIGTERM or C{--exit-after-ms}), 1 after
a simulated kernel panic (C{--crash-after-ms}), 2 on bad arguments.
"""

import argparse
import errno
import json
import os
import select
import signal
import socket
import sys
import time

from emiso.agency.files import write_json_atomically

MIB = 1024 * 1024

# Seconds the ME's own clock may advance beyond a planned sleep. A process
# frozen by SIGSTOP measures a long gap between two clock readings, and this
# cap keeps all but this much of the pause out of the ME's running time.
_MAX_OVERSLEEP = 0.1

#: Console commands and their help text.
CONSOLE_COMMANDS = {
    "help": "list the console commands",
    "status": "show the ME name, SPID, slot, memory and heartbeat",
    "uptime": "show how long the ME has been living",
    "echo": "echo TEXT: print TEXT",
    "heartbeat": "heartbeat [on|off]: show or switch the heartbeat lines",
}

#: Exit statuses of console commands, as a shell reports them.
CONSOLE_USAGE_ERROR = 2
CONSOLE_UNKNOWN_COMMAND = 127

#: Maximum length of a console request line, in bytes. A client that sends
#: a longer line is disconnected.
MAX_CONSOLE_LINE = 64 * 1024

#: Maximum number of console clients served at once. Further connections
#: are closed.
MAX_CONSOLE_CLIENTS = 16

#: Seconds a console reply may wait for a client that does not read.
CONSOLE_SEND_TIMEOUT = 2.0


def format_console_line(stream: str, text: str, now_ns: int | None = None) -> str:
    """
    Format one console log line: a 30-character RFC 3339 UTC timestamp with
    nanoseconds, the stream name (C{stdout} or C{stderr}) and the text.
    """
    if now_ns is None:
        now_ns = time.time_ns()
    seconds, nanoseconds = divmod(now_ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{nanoseconds:09d}Z {stream} {text}\n"


class SimulatedME:
    """One simulated ME: its console, its status file and its main loop."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.counter = 0
        self.uptime = 0.0
        self.resumed = None
        if options.resume:
            with open(options.resume, encoding="utf-8") as stream:
                self.resumed = json.load(stream)
            self.counter = int(self.resumed["counter"])
            self.uptime = float(self.resumed["uptime"])
        self._terminate_requested = False
        self.heartbeat_output = True
        self.state = "booting"
        self.console = Console(self, options.console) if options.console else None
        self._wakeup_read, wakeup_write = os.pipe()
        os.set_blocking(self._wakeup_read, False)
        os.set_blocking(wakeup_write, False)
        signal.set_wakeup_fd(wakeup_write)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def print_line(self, text: str, stream: str = "stdout") -> None:
        """Append one line to the console log and flush it."""
        with open(self.options.log, "a", encoding="utf-8") as log:
            log.write(format_console_line(stream, text))
            log.flush()

    def write_status(self, state: str, **extra) -> None:
        """Record the ME state and heartbeat counter in the status file."""
        status = {
            "state": state,
            "counter": self.counter,
            "uptime": round(self.uptime, 3),
            "pid": os.getpid(),
        }
        status.update(extra)
        self.state = state
        write_json_atomically(self.options.status, status, durable=False)

    def run(self) -> int:
        """Run the ME until it shuts down or crashes; return the exit status."""
        self.write_status("migrating" if self.resumed else "booting")
        # Loaded but not running: the agency's finalize sends SIGCONT.
        os.kill(os.getpid(), signal.SIGSTOP)
        if self._terminate_requested:
            return self.shut_down("terminated by the agency before boot")
        if self.resumed:
            self.print_line(
                f"ME {self.options.name} resumed from snapshot in slot "
                f"{self.options.slot} at heartbeat {self.counter}"
            )
        else:
            self.boot()
            if self._terminate_requested:
                return self.shut_down("terminated by the agency during boot")
        self.write_status("living")
        self.print_line(f"ME is living, heartbeat every {self.options.heartbeat_ms} ms")
        return self.live()

    def boot(self) -> None:
        """Print the boot banner, then wait the boot delay (state preparing)."""
        options = self.options
        banner = [
            "SO3 Operating System -- EMISO simulated ME",
            "This ME is a host process simulated by the EMISO engine; "
            "it runs no SO3 code.",
            f"ME name: {options.name}",
            f"SPID: 0x{options.spid:016x}",
            f"Slot: {options.slot}",
            f"Memory: {options.size // MIB} MiB ({options.size} bytes)",
            f"Image: {options.image}",
        ]
        for line in banner:
            self.print_line(line)
        self.write_status("preparing")
        self.print_line(f"Booting, boot delay {options.boot_delay_ms} ms")
        self.sleep(options.boot_delay_ms / 1000.0)

    def live(self) -> int:
        """Print heartbeats until SIGTERM, the exit time or the crash time."""
        options = self.options
        period = options.heartbeat_ms / 1000.0
        lived = 0.0
        until_beat = period
        while True:
            deadlines = [until_beat]
            if options.crash_after_ms is not None:
                deadlines.append(options.crash_after_ms / 1000.0 - lived)
            if options.exit_after_ms is not None:
                deadlines.append(options.exit_after_ms / 1000.0 - lived)
            step = max(0.0, min(deadlines))
            slept = self.sleep(step)
            lived += slept
            self.uptime += slept
            until_beat -= slept
            if self._terminate_requested:
                return self.shut_down("terminated by the agency")
            if (
                options.crash_after_ms is not None
                and lived >= options.crash_after_ms / 1000.0
            ):
                return self.panic()
            if (
                options.exit_after_ms is not None
                and lived >= options.exit_after_ms / 1000.0
            ):
                return self.shut_down("shutting itself down")
            if until_beat <= 0:
                until_beat += period
                self.counter += 1
                # The status goes first: a snapshot taken between the two
                # writes then never repeats a heartbeat number after resume.
                self.write_status("living")
                if self.heartbeat_output:
                    self.print_line(f"heartbeat {self.counter}")

    def sleep(self, seconds: float) -> float:
        """
        Serve the console until C{seconds} pass or a signal arrives; return
        the ME time spent.

        At most L{_MAX_OVERSLEEP} seconds of a SIGSTOP pause are counted.
        """
        started = time.monotonic()
        deadline = started + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sources = [self._wakeup_read]
            if self.console is not None:
                sources += self.console.sockets()
            readable, _, _ = select.select(sources, [], [], remaining)
            if self._wakeup_read in readable:
                self._drain_wakeup()
                break
            if self.console is not None:
                self.console.serve(readable)
        elapsed = time.monotonic() - started
        return min(elapsed, seconds + _MAX_OVERSLEEP)

    def run_command(self, line: str, reply) -> int:
        """
        Run one console command line; return its exit status.

        @param reply: called with C{(stream, text)} for each output line,
            after the line went to the console log.
        """

        def output(text: str, stream: str = "stdout") -> None:
            self.print_line(text, stream)
            reply(stream, text)

        words = line.split()
        if not words:
            return 0
        command, arguments = words[0], words[1:]
        if command == "help":
            output("Commands of the EMISO simulated ME console:")
            for name, text in CONSOLE_COMMANDS.items():
                output(f"  {name:<10} {text}")
            return 0
        if command == "echo":
            output(" ".join(arguments))
            return 0
        if command == "uptime":
            output(
                f"up {format_duration(self.uptime)} ({self.uptime:.1f} s living), "
                f"heartbeat {self.counter}"
            )
            return 0
        if command == "status":
            options = self.options
            for text in (
                f"name: {options.name}",
                f"spid: 0x{options.spid:016x}",
                f"slot: {options.slot}",
                f"state: {self.state}",
                f"memory: {options.size // MIB} MiB ({options.size} bytes)",
                f"heartbeat: {self.counter}, every {options.heartbeat_ms} ms, "
                f"output {'on' if self.heartbeat_output else 'off'}",
                f"uptime: {self.uptime:.1f} s",
                f"image: {options.image}",
            ):
                output(text)
            return 0
        if command == "heartbeat":
            return self._heartbeat_command(arguments, output)
        output(f"so3: {command}: command not found", "stderr")
        return CONSOLE_UNKNOWN_COMMAND

    def _heartbeat_command(self, arguments: list[str], output) -> int:
        if arguments in (["on"], ["off"]):
            self.heartbeat_output = arguments[0] == "on"
        elif arguments:
            output(
                f"heartbeat: expected on or off, got {' '.join(arguments)!r}",
                "stderr",
            )
            return CONSOLE_USAGE_ERROR
        state = "on" if self.heartbeat_output else "off"
        output(f"heartbeat output {state}, counter {self.counter}")
        return 0

    def shut_down(self, reason: str) -> int:
        """Print the shutdown line, record state terminated; return status 0."""
        self.print_line(
            f"ME {self.options.name} in slot {self.options.slot}: {reason}, halting"
        )
        self.write_status("terminated", exit_status=0)
        return 0

    def panic(self) -> int:
        """Print a kernel panic line on stderr, record the crash; return status 1."""
        message = (
            f"Kernel panic - not syncing: simulated crash of ME {self.options.name} "
            f"after {self.options.crash_after_ms} ms"
        )
        self.print_line(message, stream="stderr")
        self.write_status("crashed", exit_status=1, reason=message)
        return 1

    def _on_sigterm(self, signum, frame) -> None:
        self._terminate_requested = True

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wakeup_read, 512):
                pass
        except BlockingIOError:
            pass


def format_duration(seconds: float) -> str:
    """Format a duration as C{H:MM:SS}."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class Console:
    """
    The console socket of an ME and its connected clients.

    All sockets are served from the ME's one thread: L{SimulatedME.sleep}
    selects on L{sockets} and passes the readable ones to L{serve}.
    """

    def __init__(self, me: SimulatedME, path: str) -> None:
        self.me = me
        self.path = path
        self.prompt = f"{me.options.name}> "
        self._clients: dict[socket.socket, bytearray] = {}
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A Unix socket address holds at most 107 bytes, but a name relative
        # to the working directory may sit in a folder of any path length.
        # The ME opens every other file by its absolute path.
        directory, name = os.path.split(path)
        os.chdir(directory)
        self._listener.bind(name)
        self._listener.listen(8)
        self._listener.setblocking(False)

    def sockets(self) -> list[socket.socket]:
        """Return the listening socket and the client sockets."""
        return [self._listener, *self._clients]

    def serve(self, readable: list) -> None:
        """Accept new clients and run the complete request lines received."""
        for sock in readable:
            if sock is self._listener:
                self._accept()
            elif sock in self._clients:
                self._receive(sock)

    def close(self) -> None:
        """Disconnect the clients and remove the socket file."""
        for sock in list(self._clients):
            self._drop(sock)
        self._listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(self._clients) >= MAX_CONSOLE_CLIENTS:
            sock.close()
            return
        sock.settimeout(CONSOLE_SEND_TIMEOUT)
        self._clients[sock] = bytearray()
        self._send(
            sock,
            {
                "console": "emiso-sim",
                "version": 1,
                "name": self.me.options.name,
                "slot": self.me.options.slot,
                "prompt": self.prompt,
            },
        )

    def _receive(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(4096)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EINTR):
                return
            data = b""
        if not data:
            self._drop(sock)
            return
        buffer = self._clients[sock]
        buffer += data
        while sock in self._clients:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_CONSOLE_LINE:
                    self._drop(sock)
                break
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            self._request(sock, line)

    def _request(self, sock: socket.socket, raw: bytes) -> None:
        try:
            request = json.loads(raw)
            line = request["line"]
            if not isinstance(line, str):
                raise TypeError("line must be a string")
        except (ValueError, KeyError, TypeError) as error:
            self._send(sock, {"error": f"invalid console request: {error}"})
            return
        request_id = request.get("id")
        line = line.replace("\r", "").strip()
        self.me.print_line(f"{self.prompt}{line}")

        def reply(stream: str, text: str) -> None:
            self._send(sock, {"id": request_id, "stream": stream, "text": text})

        status = self.me.run_command(line, reply)
        self._send(sock, {"id": request_id, "exit": status})

    def _send(self, sock: socket.socket, message: dict) -> None:
        if sock not in self._clients:
            return
        try:
            sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        self._clients.pop(sock, None)
        sock.close()


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """Parse the ME command line (the sim agency builds it)."""
    parser = argparse.ArgumentParser(
        prog="python -m emiso.agency.sim.me",
        description="Simulated SO3 Mobile Entity started by the EMISO sim agency.",
    )
    parser.add_argument("--slot", type=int, required=True, help="ME slot (2 to 6)")
    parser.add_argument("--image", required=True, help="path of the ME's FIT image")
    parser.add_argument("--log", required=True, help="console log file to append to")
    parser.add_argument("--status", required=True, help="JSON status file to write")
    parser.add_argument("--name", default="SOO.sim", help="ME name (me_name)")
    parser.add_argument("--spid", type=int, default=0, help="ME SPID")
    parser.add_argument("--size", type=int, default=0, help="ME memory size in bytes")
    parser.add_argument(
        "--boot-delay-ms", type=int, default=500, help="boot time in milliseconds"
    )
    parser.add_argument(
        "--heartbeat-ms",
        type=int,
        default=1000,
        help="heartbeat period in milliseconds",
    )
    parser.add_argument(
        "--crash-after-ms",
        type=int,
        default=None,
        help="panic (exit status 1) after this many milliseconds of living",
    )
    parser.add_argument(
        "--exit-after-ms",
        type=int,
        default=None,
        help="shut down (exit status 0) after this many milliseconds of living",
    )
    parser.add_argument(
        "--console",
        default=None,
        help="path of the Unix socket that serves the interactive console",
    )
    parser.add_argument(
        "--resume",
        default=None,
        help="JSON file with the saved context to resume from (counter, uptime)",
    )
    options = parser.parse_args(argv)
    if options.heartbeat_ms <= 0:
        parser.error(f"--heartbeat-ms must be positive, got {options.heartbeat_ms}")
    return options


def main(argv: list[str] | None = None) -> int:
    """Entry point of C{python -m emiso.agency.sim.me}."""
    options = parse_arguments(sys.argv[1:] if argv is None else argv)
    me = SimulatedME(options)
    try:
        return me.run()
    except Exception as error:
        # stdout and stderr are /dev/null: the console log is the only place
        # where an unexpected failure can be seen.
        me.print_line(f"simulated ME failed: {error!r}", stream="stderr")
        me.write_status("crashed", exit_status=3, reason=repr(error))
        return 3
    finally:
        if me.console is not None:
            me.console.close()


if __name__ == "__main__":
    sys.exit(main())

"""
The interactive command-line interface (C{-i}): commands read from standard
input call the engine directly, without the web server.

It works with a terminal (a prompt; the terminal's own line editing) and
with piped input, one command per line. Commands run one at a time, in
order. At the end of input, or after C{exit}, the engine stops.
"""

import os
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from emiso.engine.logs import LogOptions, read_log, thread_pool_reader
from emiso.engine.states import status_text
from emiso.errors import EngineError, NotModified

log = Logger()

PROMPT = b"emiso> "

HELP = """\
Commands:
  image info                   list the images: name, tag, id, size, date, architecture
  image rm NAME                remove an image (by NAME:TAG or id)
  image load FILE              add a .itb image (as NAME:latest) or a tar of .itb files
  container ls                 list all containers
  container create IMAGE [NAME]
                               create a container from an image
  container start ID           inject the ME into a free slot and boot it
  container stop ID            terminate the ME and free its slot
  container restart ID         stop, then start
  container pause ID           suspend the ME in its slot
  container unpause ID         resume a paused ME
  container kill ID            terminate the ME at once (exit code 137)
  container rm [-f] ID         remove a container (-f stops it first)
  container logs ID            print the ME's console output
  container update ID IMAGE    move the container to another image; a running
                               ME is replaced only once the new one stays up
  help                         show this list
  exit                         stop the engine and leave (end of input does the same)
ID is a container id, unique id prefix or name.
"""


class UsageProblem(Exception):
    """A command line that names no known command or lacks an argument."""


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """
    Format rows as left-aligned columns separated by three spaces, as the
    docker CLI prints its lists.
    """
    rows = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def human_size(size: int) -> str:
    """
    Format a byte count with decimal units, as the docker CLI does (C{16.8MB}).
    """
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            break
        value /= 1000
    if unit == "B":
        return f"{size}B"
    return f"{value:.3g}{unit}"


def format_date(epoch: float) -> str:
    """
    Format epoch seconds as C{YYYY-MM-DD HH:MM:SS} in UTC.
    """
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


class Commands:
    """
    The commands of the interactive CLI, on one engine.

    Each command returns a Deferred firing with the text to print.

    @param engine: a started L{emiso.engine.engine.Engine}.
    @param clock: returns the current epoch seconds.
    """

    def __init__(self, engine: Any, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock

    def run(self, line: str) -> Deferred:
        """
        Run one command line.

        @return: a Deferred firing with the output text; it fails with
            L{UsageProblem} or an L{EngineError}.
        """
        try:
            words = shlex.split(line)
        except ValueError as error:
            raise UsageProblem(f"cannot parse {line.strip()!r}: {error}")
        if not words:
            return succeed("")
        handler, arguments = self._dispatch(words)
        return handler(*arguments)

    def _dispatch(self, words: list[str]) -> tuple[Callable[..., Deferred], list[str]]:
        group = words[0]
        if group == "help":
            return (lambda: succeed(HELP)), []
        if group not in ("image", "container"):
            raise UsageProblem(
                f"unknown command {group!r}; type help for the list of commands"
            )
        if len(words) < 2:
            raise UsageProblem(f"{group} needs a subcommand; type help")
        name = f"{group}_{words[1]}"
        handler = getattr(self, name.replace("-", "_"), None)
        if handler is None or name not in _ARITY:
            raise UsageProblem(
                f"unknown command '{group} {words[1]}'; type help for the list "
                "of commands"
            )
        arguments = words[2:]
        minimum, maximum, synopsis = _ARITY[name]
        if not minimum <= len(arguments) <= maximum:
            raise UsageProblem(f"usage: {synopsis}")
        return handler, arguments

    # Images

    def image_info(self) -> Deferred:
        rows = []
        images = sorted(self._engine.images.list(), key=lambda i: i.created, reverse=True)
        for image in images:
            kernel = image.fit.kernel()
            arch = (kernel.arch if kernel else "") or "-"
            short_id = image.id.split(":", 1)[-1][:12]
            references = image.repo_tags or ("<none>:<none>",)
            for reference in references:
                name, _, tag = reference.rpartition(":")
                rows.append(
                    [
                        name,
                        tag,
                        short_id,
                        human_size(image.size),
                        format_date(image.created),
                        arch,
                    ]
                )
        headers = ["NAME", "TAG", "IMAGE ID", "SIZE", "CREATED", "ARCHITECTURE"]
        return succeed(format_table(headers, rows))

    @inlineCallbacks
    def image_rm(self, name: str):
        engine = self._engine
        image = engine.images.get(name)
        items = yield engine.images.remove(
            name, False, lambda image_id: engine.containers.uses_image(image_id) is not None
        )
        lines = []
        for item in items:
            if "Untagged" in item:
                engine.events.publish("image", "untag", image.id, {"name": item["Untagged"]})
                lines.append(f"Untagged: {item['Untagged']}")
            if "Deleted" in item:
                engine.events.publish("image", "delete", image.id, {"name": name})
                lines.append(f"Deleted: {item['Deleted']}")
        return "".join(f"{line}\n" for line in lines)

    @inlineCallbacks
    def image_load(self, path: str):
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(path):
            raise UsageProblem(f"{path} is not a file")
        engine = self._engine
        if path.endswith(".itb"):
            repo = os.path.basename(path)[: -len(".itb")]
            image = yield engine.images.import_image(path, repo, None)
            reference = f"{repo}:latest"
            engine.events.publish("image", "import", image.id, {"name": reference})
            return f"Loaded image: {reference}\n"
        images = yield engine.images.load_tar(path)
        lines = []
        for image in images:
            loaded = image.repo_tags[0] if image.repo_tags else image.id
            engine.events.publish("image", "load", image.id, {"name": loaded})
            lines.append(f"Loaded image: {loaded}\n")
        return "".join(lines)

    # Containers

    def container_ls(self) -> Deferred:
        now = self._clock()
        rows = []
        for container in self._engine.containers.list():
            status = status_text(
                container.state,
                container.me_state,
                container.started_at,
                container.finished_at,
                container.exit_code,
                now,
                removing=container.removing,
            )
            rows.append(
                [
                    container.short_id,
                    container.image_ref,
                    status,
                    str(container.slot) if container.slot is not None else "-",
                    container.me_name or "-",
                    format_date(container.created),
                    container.name,
                ]
            )
        headers = ["CONTAINER ID", "IMAGE", "STATUS", "SLOT", "ME", "CREATED", "NAME"]
        return succeed(format_table(headers, rows))

    @inlineCallbacks
    def container_create(self, image: str, name: str | None = None):
        container = yield self._engine.containers.create(name, image, {}, {}, {})
        return f"{container.id}\n"

    def container_start(self, name: str) -> Deferred:
        return self._lifecycle(self._engine.containers.start, name)

    def container_stop(self, name: str) -> Deferred:
        return self._lifecycle(self._engine.containers.stop, name)

    def container_restart(self, name: str) -> Deferred:
        return self._lifecycle(self._engine.containers.restart, name)

    def container_pause(self, name: str) -> Deferred:
        return self._lifecycle(self._engine.containers.pause, name)

    def container_unpause(self, name: str) -> Deferred:
        return self._lifecycle(self._engine.containers.unpause, name)

    def container_kill(self, name: str) -> Deferred:
        return self._lifecycle(self._engine.containers.kill, name)

    def container_rm(self, *arguments: str) -> Deferred:
        force = arguments[0] in ("-f", "--force")
        names = arguments[1:] if force else arguments
        if len(names) != 1 or names[0].startswith("-"):
            raise UsageProblem(f"usage: {_ARITY['container_rm'][2]}")
        return self._lifecycle(self._engine.containers.remove, names[0], force)

    @inlineCallbacks
    def container_logs(self, name: str):
        engine = self._engine
        container = engine.containers.get(name)
        options = LogOptions(stdout=True, stderr=True, tty=True)
        records = yield read_log(
            container.log_path,
            options,
            thread_pool_reader(engine.reactor, engine.threadpool),
        )
        return b"".join(records).decode("utf-8", "replace")

    @inlineCallbacks
    def container_update(self, name: str, image: str):
        result = yield self._engine.updates.update(name, image)
        return f"{name}: {result.previous_image_ref} -> {result.image_ref}\n"

    @inlineCallbacks
    def _lifecycle(self, operation: Callable[..., Deferred], name: str, *args: Any):
        try:
            yield operation(name, *args)
        except NotModified:
            # Docker prints the name for a start of a running container or a
            # stop of a stopped one, too.
            pass
        return f"{name}\n"


#: command: minimum and maximum argument counts, and the synopsis.
_ARITY = {
    "image_info": (0, 0, "image info"),
    "image_rm": (1, 1, "image rm NAME"),
    "image_load": (1, 1, "image load FILE"),
    "container_ls": (0, 0, "container ls"),
    "container_create": (1, 2, "container create IMAGE [NAME]"),
    "container_start": (1, 1, "container start ID"),
    "container_stop": (1, 1, "container stop ID"),
    "container_restart": (1, 1, "container restart ID"),
    "container_pause": (1, 1, "container pause ID"),
    "container_unpause": (1, 1, "container unpause ID"),
    "container_kill": (1, 1, "container kill ID"),
    "container_rm": (1, 2, "container rm [-f] ID"),
    "container_logs": (1, 1, "container logs ID"),
    "container_update": (2, 2, "container update ID IMAGE"),
}


@implementer(IHalfCloseableProtocol)
class CommandLineProtocol(LineReceiver):
    """
    Read commands line by line and write their output.

    @param commands: the L{Commands} to run.
    @param on_end: called once, after the last command finished, at the end
        of input or after C{exit}.
    @param interactive: print a prompt (standard input is a terminal).
    """

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024

    def __init__(
        self, commands: Commands, on_end: Callable[[], None], interactive: bool
    ) -> None:
        self._commands = commands
        self._on_end = on_end
        self._interactive = interactive
        self._pending: Deferred = succeed(None)
        self._finished = False

    def connectionMade(self) -> None:
        if self._interactive:
            self.transport.write(b"EMISO engine interactive mode; type help.\n")
            self.transport.write(PROMPT)

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip()
        self._pending.addCallback(lambda _: self._run(text))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._pending.addCallback(
            lambda _: self._write(
                f"Error: line longer than {self.MAX_LENGTH} bytes ignored\n"
            )
        )

    def readConnectionLost(self) -> None:
        # End of input: the commands read so far still run and print their
        # output, because standard output stays open.
        self._pending.addCallback(lambda _: self._end())

    def writeConnectionLost(self) -> None:
        # Nobody reads the output any more (a closed pipe): stop at once.
        if not self._finished:
            self._finished = True
            self._on_end()

    def connectionLost(self, reason: Any = None) -> None:
        if not self._finished:
            self._pending.addCallback(lambda _: self._end())

    def _run(self, text: str) -> Deferred | None:
        if self._finished:
            return None
        if text in ("exit", "quit"):
            self._end()
            return None
        try:
            d = self._commands.run(text)
        except (UsageProblem, EngineError) as error:
            d = fail(error)
        except Exception:
            d = fail()
        d.addCallbacks(self._write, self._failed)
        d.addCallback(lambda _: self._prompt())
        return d

    def _failed(self, failure: Any) -> None:
        if not failure.check(UsageProblem, EngineError):
            log.failure("Command failed", failure)
        self._write(f"Error: {failure.getErrorMessage()}\n")

    def _write(self, text: str) -> None:
        if text and not self._finished:
            self.transport.write(text.encode("utf-8"))

    def _prompt(self) -> None:
        if self._interactive and not self._finished:
            self.transport.write(PROMPT)

    def _end(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._interactive:
            self.transport.write(b"\n")
        self._on_end()

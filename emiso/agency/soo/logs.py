"""Copy ME console lines from the agency's syslog files into container logs.

On a smart object the MEs do not write the engine's console log files. Each
ME prints through the kernel, and the agency's syslog-ng writes the lines
to files under C{/var/log/soo}:

- capsule kernels: one file per ME, C{/var/log/soo/me_<id>.log};
- generation A: one shared file, C{/var/log/soo/me}, where each line of an
  ME carries the prefix C{[ME:<id>]}.

The SO3 side prefixes lines with its slot number, so C{<id>} is the slot.
A newer hypervisor stores a capsule id per ME, and its logs may use that
id instead, so the id is configurable.

The driver's monitor thread calls L{pump} for every occupied slot a few
times per second. It reads the complete lines added since the last call,
keeps the ones of that ME, and appends them to the container's console
log in the engine's format: a 30-character UTC timestamp, the stream
(always C{stdout}) and the text. The timestamp is the time the driver read
the line, because the syslog template of a board decides the layout of its
own time stamps and the engine cannot rely on it.
"""

import os
import re
import time

import attrs

from emiso.engine.timeutil import format_fixed_timestamp_ns

#: Layouts of the agency's syslog files by backend.
DEFAULT_SHARED_LOG = "/var/log/soo/me"
DEFAULT_PER_ME_LOG = "/var/log/soo/me_{id}.log"

#: Kinds of ME id in C{{id}} and in the C{[ME:<id>]} prefix.
LOG_ID_KINDS = ("slot", "capsule")

# Bytes read from a syslog file per call, so one huge file cannot stall the
# monitor thread; the rest is read by the next calls.
MAX_READ = 1 << 20


@attrs.frozen
class LogSource:
    """
    Where the console lines of one ME are found.

    @ivar path: the syslog file.
    @ivar prefix: the C{[ME:<id>]} marker of the ME's lines.
    @ivar shared: the file contains lines of all MEs, so only the lines with
        C{prefix} belong to this ME.
    """

    path: str
    prefix: str
    shared: bool


@attrs.frozen
class LogLayout:
    """
    The path template of the agency's ME log files.

    A template with C{{id}} names one file per ME; a template without it
    names one file shared by all MEs.

    @ivar template: for example C{/var/log/soo/me_{id}.log} or C{/var/log/soo/me}.
    @ivar id_kind: C{slot} or C{capsule}: the number that identifies an ME
        in file names and line prefixes.
    """

    template: str
    id_kind: str = "slot"

    def __attrs_post_init__(self) -> None:
        if self.id_kind not in LOG_ID_KINDS:
            raise ValueError(
                f"invalid ME log id {self.id_kind!r}; expected one of "
                f"{', '.join(LOG_ID_KINDS)}"
            )
        try:
            self.template.format(id=0)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"invalid ME log template {self.template!r}: only {{id}} may "
                f"appear in braces ({error})"
            ) from None

    def source(self, slot: int, capsule_id: int | None = None) -> LogSource:
        """Return the log source of the ME in C{slot} (with its capsule id)."""
        if self.id_kind == "capsule" and capsule_id is not None:
            me_id = capsule_id
        else:
            me_id = slot
        shared = "{id}" not in self.template
        return LogSource(
            path=self.template.format(id=me_id), prefix=f"[ME:{me_id}]", shared=shared
        )


def file_size(path: str) -> int:
    """Return the size of C{path}, or 0 when it does not exist yet."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def read_new_lines(path: str, offset: int) -> tuple[list[bytes], int]:
    """
    Read the complete lines of C{path} from byte C{offset}.

    A file shorter than C{offset} was truncated or rotated, so reading
    starts again at its beginning. A last line without its newline is left
    for the next call.

    @return: the lines without their newline, and the offset after them.
    """
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size < offset:
                offset = 0
            stream.seek(offset)
            data = stream.read(MAX_READ)
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    return data[:end].split(b"\n"), offset + end + 1


def me_text(line: bytes, source: LogSource) -> str | None:
    """
    Return the console text of one syslog line, or None when the line does
    not belong to the ME of C{source}.

    The text is what follows the C{[ME:<id>]} prefix. In a per-ME file a line
    without the prefix is kept whole.
    """
    text = line.decode("utf-8", "replace").rstrip("\r")
    position = text.find(source.prefix)
    if position < 0:
        return None if source.shared else text
    text = text[position + len(source.prefix) :]
    return text[1:] if text.startswith(" ") else text


# Control characters other than tab would break the engine's line format.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def format_console_lines(texts: list[str], now_ns: int) -> str:
    """Format console texts as engine log lines, all with the time C{now_ns}."""
    stamp = format_fixed_timestamp_ns(now_ns)
    return "".join(f"{stamp} stdout {_CONTROL.sub('', text)}\n" for text in texts)


def pump(source: LogSource, offset: int, console_log: str, now_ns: int | None = None
         ) -> int:
    """
    Append the ME's new syslog lines to its container's console log.

    @param offset: where the previous call stopped in C{source.path}.
    @param console_log: the container's log file, created when missing.
    @return: the offset to pass to the next call.
    """
    lines, offset = read_new_lines(source.path, offset)
    texts = [text for text in (me_text(line, source) for line in lines)
             if text is not None]
    if texts:
        if now_ns is None:
            now_ns = time.time_ns()
        os.makedirs(os.path.dirname(console_log), exist_ok=True)
        with open(console_log, "a", encoding="utf-8") as stream:
            stream.write(format_console_lines(texts, now_ns))
    return offset

"""Console pump: copies a VM's raw serial log into the container's console log.

QEMU writes every byte the VM sends to its UART to a raw log file (the
C{logfile} of the serial chardev), whether or not anything reads it. One
pump process per VM reads that file as it grows, splits it into lines,
stamps each line with the time it read it and appends it to the console
log in the engine's format. The pump is detached like the VM, so the
console keeps being recorded while the driver or the engine is down. It
records how far it has read in an offset file, so a replacement pump
carries on where it stopped. It exits once QEMU is gone and the raw log
is read to its end.

Run as C{python -m emiso.agency.qemu.pump --raw RAW --log LOG --offset-file
FILE --pid PID [--start-time TICKS]}.
"""

import argparse
import os
import sys
import time

from emiso.agency.sim.me import format_console_line

# Seconds between two reads of the raw log.
POLL_INTERVAL = 0.05
# Maximum line length in bytes; a longer run without a newline is split.
MAX_LINE = 16384


def split_lines(pending: bytes, chunk: bytes) -> tuple[list[str], bytes]:
    """
    Add C{chunk} to the C{pending} partial line and return the complete
    lines as text (without their line ends) and the new partial line.

    Carriage returns are dropped, so C{CR LF} ends a line like C{LF}.
    """
    data = pending + chunk
    lines = []
    while True:
        end = data.find(b"\n")
        if end < 0:
            break
        lines.append(_text(data[:end]))
        data = data[end + 1 :]
    while len(data) >= MAX_LINE:
        lines.append(_text(data[:MAX_LINE]))
        data = data[MAX_LINE:]
    return lines, data


def _text(raw: bytes) -> str:
    return raw.replace(b"\r", b"").decode("utf-8", errors="replace")


def process_alive(pid: int, start_time: int | None) -> bool:
    """Tell whether C{pid} runs and, when given, started at C{start_time}."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stream:
            text = stream.read()
    except OSError:
        return False
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return False
    return start_time is None or int(fields[19]) == start_time


def read_offset(path: str) -> int:
    """Return the offset recorded in C{path}, or 0."""
    try:
        with open(path, encoding="utf-8") as stream:
            return int(stream.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def write_offset(path: str, offset: int) -> None:
    """Record C{offset} in C{path} atomically."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(str(offset))
    os.replace(temporary, path)


class Pump:
    """Copy new raw log lines into the console log, one batch at a time."""

    def __init__(self, raw: str, log: str, offset_file: str) -> None:
        self.raw = raw
        self.log = log
        self.offset_file = offset_file
        self.offset = read_offset(offset_file)
        self.pending = b""

    def step(self, final: bool = False) -> int:
        """
        Copy what QEMU wrote since the last step; return the bytes read.

        With C{final}, a partial last line is written too.
        """
        try:
            with open(self.raw, "rb") as stream:
                stream.seek(self.offset)
                chunk = stream.read()
        except FileNotFoundError:
            chunk = b""
        lines, self.pending = split_lines(self.pending, chunk)
        if final and self.pending:
            lines.append(_text(self.pending))
            self.pending = b""
        if lines:
            with open(self.log, "a", encoding="utf-8") as stream:
                stream.write("".join(format_console_line("stdout", t) for t in lines))
        self.offset += len(chunk)
        if chunk or lines:
            # The offset covers complete lines only, so a replacement pump
            # reads a partial line again instead of losing it.
            write_offset(self.offset_file, self.offset - len(self.pending))
        return len(chunk)


def main(argv: list[str] | None = None) -> int:
    """Entry point; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m emiso.agency.qemu.pump")
    parser.add_argument("--raw", required=True, help="QEMU's raw serial log")
    parser.add_argument("--log", required=True, help="the container's console log")
    parser.add_argument("--offset-file", required=True, help="progress record")
    parser.add_argument("--pid", type=int, required=True, help="QEMU's pid")
    parser.add_argument("--start-time", type=int, default=None)
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(os.path.dirname(options.log), exist_ok=True)
    pump = Pump(options.raw, options.log, options.offset_file)
    while process_alive(options.pid, options.start_time):
        if not pump.step():
            time.sleep(POLL_INTERVAL)
    pump.step(final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

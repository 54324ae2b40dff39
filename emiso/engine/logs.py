"""Console log reading and Docker's multiplexed log framing.

An ME appends its console output to a log file, one line per console line:
C{<30-character UTC timestamp> <stream> <text>\\n}, with C{stdout} or
C{stderr} as stream.  This module turns that file into the frames of
C{GET /containers/{id}/logs}.  File reads run through an injected reader
(normally a thread pool) so that large logs do not block the reactor.
"""

from __future__ import annotations

import os
import struct
from typing import Any, BinaryIO, Callable, Iterable

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from emiso.engine.timeutil import (
    FIXED_TIMESTAMP_LENGTH,
    format_fixed_timestamp_ns,
    parse_docker_time_ns,
    parse_fixed_timestamp_ns,
)
from emiso.errors import InvalidParameter

log = Logger()

#: Stream ids of Docker's stdcopy frame header.
STREAM_IDS = {"stdin": 0, "stdout": 1, "stderr": 2, "system": 3}

#: Streams a console log line may name.
LOG_STREAMS = ("stdout", "stderr")

# Block size for reading a log backwards when a tail is requested.
TAIL_BLOCK_SIZE = 64 * 1024

# Maximum bytes a follower reads in one poll. The rest waits for the next poll.
FOLLOW_READ_LIMIT = 1024 * 1024

# Query values Docker's httputils.BoolValue treats as false.
_FALSE_VALUES = ("", "0", "no", "false", "none")

Reader = Callable[..., Deferred]
"""Callable that runs C{func(*args)}, possibly in a thread, and returns a Deferred."""


class MalformedLogLine(ValueError):
    """A console log line does not have the C{<timestamp> <stream> <text>} layout."""


@attrs.frozen
class LogLine:
    """One parsed console log line."""

    time_ns: int
    stream: str
    text: bytes


def parse_log_line(line: bytes) -> LogLine:
    """
    Parse one console log line, with or without its trailing newline.

    @raise MalformedLogLine: if the timestamp or the stream name is invalid.
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    stamp = line[:FIXED_TIMESTAMP_LENGTH]
    try:
        time_ns = parse_fixed_timestamp_ns(stamp)
    except (ValueError, UnicodeDecodeError):
        raise MalformedLogLine(f"invalid timestamp in log line: {line[:80]!r}")
    rest = line[FIXED_TIMESTAMP_LENGTH:]
    if not rest.startswith(b" "):
        raise MalformedLogLine(f"missing stream in log line: {line[:80]!r}")
    stream, _, text = rest[1:].partition(b" ")
    stream_name = stream.decode("ascii", "replace")
    if stream_name not in LOG_STREAMS:
        raise MalformedLogLine(f"unknown stream {stream_name!r} in log line")
    return LogLine(time_ns, stream_name, text)


def frame(stream: str, payload: bytes) -> bytes:
    """
    Prefix C{payload} with Docker's 8-byte stdcopy header.

    The header is the stream id (stdin 0, stdout 1, stderr 2, system error 3),
    three zero bytes and the payload size as a big-endian uint32.
    """
    return struct.pack(">BxxxI", STREAM_IDS[stream], len(payload)) + payload


def _query_value(args: dict[bytes, list[bytes]], name: str) -> str | None:
    # Go's Request.FormValue returns the first value of a repeated parameter.
    values = args.get(name.encode("ascii"))
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


def _query_bool(args: dict[bytes, list[bytes]], name: str) -> bool:
    value = _query_value(args, name)
    if value is None:
        return False
    return value.strip().lower() not in _FALSE_VALUES


def _parse_tail(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if text in ("", "all"):
        return None
    try:
        count = int(text, 10)
    except ValueError:
        raise InvalidParameter(
            f'invalid value for "tail": {value!r}. Use "all" or a non-negative'
            f" number of lines."
        ) from None
    if count < 0:
        return None
    return count


@attrs.frozen
class LogOptions:
    """
    Parameters of a logs request.

    @ivar since_ns: show lines from this time on (nanoseconds), C{None} for all.
    @ivar until_ns: show lines up to this time (nanoseconds), C{None} for all.
    @ivar tail: number of lines from the end of the log, C{None} for all.
    @ivar tty: the container has C{Config.Tty} set, so records are raw bytes
        without the stdcopy header, as Docker sends them.  The query has no
        such parameter; the caller sets it with C{attrs.evolve}.
    """

    stdout: bool = False
    stderr: bool = False
    since_ns: int | None = None
    until_ns: int | None = None
    timestamps: bool = False
    tail: int | None = None
    follow: bool = False
    tty: bool = False

    @classmethod
    def from_query(cls, args: dict[bytes, list[bytes]]) -> LogOptions:
        """
        Parse the query arguments of C{GET /containers/{id}/logs}.

        Booleans follow Docker: a missing parameter and the values C{""},
        C{0}, C{no}, C{false} and C{none} (any case) are false, anything
        else is true.  C{tail} is C{all}, empty or a line count, and a
        negative count means all lines as in Docker.  C{since} and C{until}
        take the forms of L{parse_docker_time_ns}; C{until=0} means no limit.

        @param args: a Twisted C{request.args} mapping.
        @raise InvalidParameter: if no stream is chosen or a value is invalid.
        """
        stdout = _query_bool(args, "stdout")
        stderr = _query_bool(args, "stderr")
        if not (stdout or stderr):
            raise InvalidParameter(
                "Bad parameters: you must choose at least one stream"
            )
        since = _query_value(args, "since")
        until = _query_value(args, "until")
        since_ns = None
        until_ns = None
        if since:
            since_ns = parse_docker_time_ns(since, "since")
        if until and until.strip() != "0":
            until_ns = parse_docker_time_ns(until, "until")
        return cls(
            stdout=stdout,
            stderr=stderr,
            since_ns=since_ns,
            until_ns=until_ns,
            timestamps=_query_bool(args, "timestamps"),
            tail=_parse_tail(_query_value(args, "tail")),
            follow=_query_bool(args, "follow"),
        )

    def wants(self, stream: str) -> bool:
        """Return whether lines of C{stream} are requested."""
        if stream == "stdout":
            return self.stdout
        return stream == "stderr" and self.stderr

    def record(self, line: LogLine) -> bytes:
        """Return the record of one line: optional timestamp, text and newline."""
        payload = line.text + b"\n"
        if self.timestamps:
            stamp = format_fixed_timestamp_ns(line.time_ns).encode("ascii")
            payload = stamp + b" " + payload
        if self.tty:
            return payload
        return frame(line.stream, payload)


class _LineFilter:
    """
    Time and stream filtering with Docker's semantics.

    As moby's log forwarder (daemon/logger/loggerutils/logfile.go) does,
    C{since} skips lines only until the first line at or after it, because
    timestamps need not be monotonic, and the first line after C{until} ends
    the log.
    """

    def __init__(self, options: LogOptions) -> None:
        self.options = options
        self.since_ns = options.since_ns
        self.ended = False

    def records(self, lines: Iterable[LogLine]) -> list[bytes]:
        """Filter lines and return their frames; a line after C{until} sets C{ended}."""
        records = []
        for line in lines:
            if self.ended:
                break
            if self.since_ns is not None:
                if line.time_ns < self.since_ns:
                    continue
                self.since_ns = None
            until = self.options.until_ns
            if until is not None and line.time_ns > until:
                self.ended = True
                break
            if self.options.wants(line.stream):
                records.append(self.options.record(line))
        return records


@attrs.define
class LogBatch:
    """
    Lines read from a log file.

    @ivar end_offset: file offset just after the last complete line read.
    @ivar malformed: number of lines skipped because they did not parse.
    """

    lines: list[LogLine]
    end_offset: int
    malformed: int = 0


def _parse_lines(raw_lines: Iterable[bytes], batch: LogBatch) -> None:
    for raw in raw_lines:
        try:
            batch.lines.append(parse_log_line(raw))
        except MalformedLogLine:
            batch.malformed += 1


def _complete_end(handle: BinaryIO, size: int) -> int:
    """Return the offset just after the last newline at or before C{size}."""
    position = size
    while position > 0:
        start = max(0, position - TAIL_BLOCK_SIZE)
        handle.seek(start)
        block = handle.read(position - start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def _read_tail(handle: BinaryIO, end: int, count: int) -> LogBatch:
    """
    Read the last C{count} well-formed lines before offset C{end}, backwards.

    Only the blocks holding those lines are read, so the cost depends on
    C{count}, not on the size of the file.
    """
    batch = LogBatch(lines=[], end_offset=end)
    newest_first: list[LogLine] = []
    position = end
    carry = b""
    while position > 0 and len(newest_first) < count:
        start = max(0, position - TAIL_BLOCK_SIZE)
        handle.seek(start)
        data = handle.read(position - start) + carry
        position = start
        if position > 0:
            # The bytes up to the first newline may continue an earlier line.
            cut = data.find(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            carry, data = data[:cut], data[cut:]
        else:
            carry = b""
        if not data:
            continue
        for raw in reversed(data[:-1].split(b"\n")):
            try:
                newest_first.append(parse_log_line(raw))
            except MalformedLogLine:
                batch.malformed += 1
                continue
            if len(newest_first) == count:
                break
    batch.lines = newest_first[::-1]
    return batch


def read_log_lines(path: str, tail: int | None) -> LogBatch:
    """
    Read the complete lines of a console log file (blocking).

    A missing file has no lines.  A last line without its newline is left
    out because the ME may still be writing it; L{LogFollower} picks it up
    once complete.

    @param tail: read only the last C{tail} well-formed lines; C{None} for all.
    """
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return LogBatch(lines=[], end_offset=0)
    with handle:
        size = os.fstat(handle.fileno()).st_size
        end = _complete_end(handle, size)
        if tail is not None:
            if tail == 0:
                return LogBatch(lines=[], end_offset=end)
            return _read_tail(handle, end, tail)
        batch = LogBatch(lines=[], end_offset=end)
        handle.seek(0)
        remaining = end
        pending = b""
        while remaining > 0:
            block = handle.read(min(remaining, TAIL_BLOCK_SIZE * 16))
            if not block:
                break
            remaining -= len(block)
            lines = (pending + block).split(b"\n")
            pending = lines.pop()
            _parse_lines(lines, batch)
        return batch


def _collect(
    path: str, options: LogOptions
) -> tuple[list[bytes], LogBatch, _LineFilter]:
    # Docker applies tail to the lines of the log file (both streams) and
    # filters since, until and streams afterwards, so a tail can yield fewer
    # lines than requested.
    batch = read_log_lines(path, options.tail)
    line_filter = _LineFilter(options)
    records = line_filter.records(batch.lines)
    return records, batch, line_filter


def _report_malformed(path: str, batch: LogBatch) -> None:
    if batch.malformed:
        log.warn(
            "Skipped {count} malformed lines in log file {path}",
            count=batch.malformed,
            path=path,
        )


def inline_reader(func: Callable[..., Any], *args: Any) -> Deferred:
    """Run C{func} in the calling thread; for small files and tests."""
    return maybeDeferred(func, *args)


def thread_pool_reader(reactor: Any, threadpool: Any) -> Reader:
    """Return a reader that runs file reads in C{threadpool}."""

    def read(func: Callable[..., Any], *args: Any) -> Deferred:
        return deferToThreadPool(reactor, threadpool, func, *args)

    return read


def read_log(path: str, options: LogOptions, reader: Reader) -> Deferred:
    """
    Read a console log and return the frames of a non-follow logs request.

    Each frame carries one line: the optional 30-character timestamp and a
    space, the text and a newline.  Lines are selected as Docker does: the
    last C{tail} lines of the file, then C{since}, C{until} and the
    requested streams.

    @param reader: runs the blocking read, see L{thread_pool_reader}.
    @return: a Deferred firing with the list of frames.
    """
    # NOTE: all selected records are held in memory, about twice the size of
    # the selected part of the log; a request without tail on a huge log is
    # costly.
    d = reader(_collect, path, options)

    def records_only(result: tuple[list[bytes], LogBatch, Any]) -> list[bytes]:
        records, batch, _ = result
        _report_malformed(path, batch)
        return records

    d.addCallback(records_only)
    return d


def _complete_size(path: str) -> int:
    """Return the offset just after the last complete line (blocking)."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return 0
    with handle:
        return _complete_end(handle, os.fstat(handle.fileno()).st_size)


def _read_frames(
    path: str, line_filter: _LineFilter, offset: int, end: int, limit: int
) -> tuple[bytes, int, int]:
    """
    Frame the complete lines after C{offset}, reading about C{limit} bytes
    and never past C{end}, which must follow a newline (blocking).

    @return: the frames, the offset after the last line read and the
        number of malformed lines skipped.
    """
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(min(limit, end - offset))
        cut = data.rfind(b"\n") + 1
        while cut == 0 and offset + len(data) < end:
            # A line longer than limit: read on to its newline.
            more = handle.read(min(limit, end - offset - len(data)))
            if not more:
                break
            newline = more.find(b"\n")
            data += more
            if newline >= 0:
                cut = len(data) - len(more) + newline + 1
    if cut == 0:
        return b"", end, 0
    batch = LogBatch(lines=[], end_offset=offset + cut)
    _parse_lines(data[: cut - 1].split(b"\n"), batch)
    return b"".join(line_filter.records(batch.lines)), offset + cut, batch.malformed


class LogStreamer:
    """
    Writes the frames of a log file up to its end at start time, one chunk
    of about C{chunk_size} bytes at a time, so that memory use does not grow
    with the file.  As a Twisted push producer it reads nothing while its
    consumer is paused.
    """

    def __init__(
        self,
        path: str,
        options: LogOptions,
        write: Callable[[bytes], None],
        reader: Reader,
        chunk_size: int | None = None,
    ) -> None:
        self.path = path
        self.line_filter = _LineFilter(options)
        self._write = write
        self._reader = reader
        self._chunk_size = chunk_size or FOLLOW_READ_LIMIT
        self._paused: Deferred | None = None
        self._stopped = False

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        self.resumeProducing()

    @inlineCallbacks
    def run(self):
        """
        Write the frames; the returned Deferred fires with the offset after
        the last line read once done or stopped.
        """
        end = yield self._reader(_complete_size, self.path)
        offset = 0
        malformed = 0
        while offset < end and not self._stopped and not self.line_filter.ended:
            if self._paused is not None:
                yield self._paused
                continue
            data, offset, skipped = yield self._reader(
                _read_frames, self.path, self.line_filter, offset, end, self._chunk_size
            )
            malformed += skipped
            if data and not self._stopped:
                self._write(data)
        _report_malformed(self.path, LogBatch([], offset, malformed))
        return offset


def _read_appended(path: str, offset: int, limit: int) -> tuple[bytes, int]:
    """Return up to C{limit} bytes after C{offset} and the file size (blocking)."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return b"", 0
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size <= offset:
            return b"", size
        handle.seek(offset)
        return handle.read(min(size - offset, limit)), size


class LogFollower:
    """
    Writes the frames of a follow logs request as the ME appends lines.

    L{start} writes the initial frames (tail, since and until applied), then
    polls the file every C{poll_interval} seconds from the offset where the
    initial read stopped, and writes a frame for each new complete line.  A
    partial last line waits until its newline arrives.  Following ends when
    a line after C{until} appears, when the reactor clock passes C{until},
    or when the caller calls L{stop} (container stopped, client gone).
    L{done} fires once it has ended.
    """

    def __init__(
        self,
        path: str,
        options: LogOptions,
        reactor: Any,
        write: Callable[[bytes], None],
        poll_interval: float = 0.25,
        reader: Reader | None = None,
    ) -> None:
        """
        @param reactor: provides C{callLater} and C{seconds}.
        @param write: called with each frame, in the reactor thread.
        @param reader: runs blocking file reads.  The default reads in the
            reactor thread, at most C{FOLLOW_READ_LIMIT} bytes per poll.
        """
        self.path = path
        self.options = options
        self.done: Deferred = Deferred()
        self._reactor = reactor
        self._write = write
        self._poll_interval = poll_interval
        self._reader = reader or inline_reader
        self._filter: _LineFilter | None = None
        self._offset = 0
        self._partial = b""
        self._poll_call = None
        self._until_call = None
        self._until_passed = False
        self._stopped = False
        self.streamer: LogStreamer | None = None

    def start(self) -> Deferred:
        """
        Write the initial frames and begin polling.

        @return: a Deferred firing when the initial frames are written.
        """
        until = self.options.until_ns
        if until is not None:
            delay = max(0.0, until / 1e9 - self._reactor.seconds())
            self._until_call = self._reactor.callLater(delay, self._reach_until)
        if self.options.tail is None:
            # The whole file is wanted: stream it in chunks from a worker
            # thread, so a large log neither fills memory nor holds the
            # reactor thread.
            self.streamer = LogStreamer(self.path, self.options, self._write_chunk, self._reader)
            d = self.streamer.run()
            d.addCallback(self._after_streamed)
        else:
            d = self._reader(_collect, self.path, self.options)
            d.addCallback(self._write_initial)
        d.addErrback(self._fail)
        return d

    def _write_chunk(self, data: bytes) -> None:
        if not self._stopped:
            self._send([data])

    def _after_streamed(self, offset: int) -> None:
        if self._stopped:
            return
        self._filter = self.streamer.line_filter
        self._offset = offset
        if self._filter.ended or self._until_passed:
            self.stop()
            return
        self._schedule(self._poll_interval)

    def stop(self) -> None:
        """Stop following. No frame is written after this call."""
        if self._stopped:
            return
        self._stopped = True
        if self.streamer is not None:
            self.streamer.stopProducing()
        for call in (self._poll_call, self._until_call):
            if call is not None and call.active():
                call.cancel()
        self._poll_call = None
        self._until_call = None
        self.done.callback(None)

    def _write_initial(self, result: tuple[list[bytes], LogBatch, _LineFilter]) -> None:
        records, batch, line_filter = result
        _report_malformed(self.path, batch)
        if self._stopped:
            return
        # Appended lines continue the filter state: once a line passed
        # since, later lines are not checked against it.
        self._filter = line_filter
        self._offset = batch.end_offset
        self._send(records)
        if line_filter.ended or self._until_passed:
            self.stop()
            return
        self._schedule(self._poll_interval)

    def _send(self, records: list[bytes]) -> None:
        # One write per batch: the frames keep their boundaries, and a
        # write per line would cost a transport call each.
        if self._stopped or not records:
            return
        try:
            self._write(b"".join(records))
        except Exception:
            log.failure("Writing a log frame for {path} failed", path=self.path)
            self.stop()

    def _schedule(self, delay: float) -> None:
        if not self._stopped:
            self._poll_call = self._reactor.callLater(delay, self._poll)

    def _poll(self) -> None:
        self._poll_call = None
        d = self._reader(_read_appended, self.path, self._offset, FOLLOW_READ_LIMIT)
        d.addCallback(self._handle_appended)
        d.addErrback(self._fail)

    def _handle_appended(self, result: tuple[bytes, int]) -> None:
        if self._stopped:
            return
        data, size = result
        if size < self._offset:
            log.info(
                "Log file {path} shrank from {offset} to {size} bytes, so it is"
                " read again from the start",
                path=self.path,
                offset=self._offset,
                size=size,
            )
            self._offset = 0
            self._partial = b""
            self._schedule(0)
            return
        self._offset += len(data)
        pending = self._partial + data
        raw_lines = pending.split(b"\n")
        self._partial = raw_lines.pop()
        batch = LogBatch(lines=[], end_offset=self._offset)
        _parse_lines(raw_lines, batch)
        _report_malformed(self.path, batch)
        self._send(self._filter.records(batch.lines))
        if self._filter.ended or self._until_passed:
            self.stop()
        elif self._offset < size:
            self._schedule(0)
        else:
            self._schedule(self._poll_interval)

    def _reach_until(self) -> None:
        # Read what was appended up to now, then end with that poll.
        self._until_call = None
        self._until_passed = True
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
            self._poll()

    def _fail(self, failure: Any) -> None:
        log.failure("Following log file {path} failed", failure, path=self.path)
        if not self._stopped and not self.options.tty:
            # The headers are out, so the error goes in-band: the docker CLI
            # and docker-py turn a frame on stream 3 into an error.
            message = f"error reading the log: {failure.getErrorMessage()}\n"
            try:
                self._write(frame("system", message.encode("utf-8", "replace")))
            except Exception:
                log.failure("Writing the log error frame for {path} failed",
                            path=self.path)
        self.stop()

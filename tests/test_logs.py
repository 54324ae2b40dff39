"""Tests for console log parsing, Docker framing, logs options and following."""

import io
import os
import struct

from twisted.internet import task
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from emiso.engine import logs, timeutil
from emiso.errors import InvalidParameter

BASE_NS = 1_796_398_991_000_000_000  # 2026-12-04T15:43:11Z
BASE = BASE_NS // 1_000_000_000


def log_line(offset_ns, stream, text):
    """Return one console log line at BASE_NS + offset_ns."""
    stamp = timeutil.format_fixed_timestamp_ns(BASE_NS + offset_ns)
    return f"{stamp} {stream} {text}\n".encode()


def unframe(records):
    """
    Split written bytes back into (stream id, payload) pairs, checking each
    header; a write may carry several whole frames but never a partial one.
    """
    result = []
    for record in records:
        while record:
            stream_id, size = struct.unpack(">BxxxI", record[:8])
            assert len(record) >= 8 + size, record
            result.append((stream_id, record[8 : 8 + size]))
            record = record[8 + size :]
    return result


def options(**kw):
    kw.setdefault("stdout", True)
    kw.setdefault("stderr", True)
    return logs.LogOptions(**kw)


class LogFileMixin:
    def make_log(self, content=b""):
        path = self.mktemp()
        with open(path, "wb") as handle:
            handle.write(content)
        return path

    def append(self, path, content):
        with open(path, "ab") as handle:
            handle.write(content)

    def read(self, path, opts):
        return self.successResultOf(logs.read_log(path, opts, logs.inline_reader))


class ParseLogLineTests(SynchronousTestCase):
    """parse_log_line."""

    def test_valid_line(self):
        line = logs.parse_log_line(
            b"2026-12-04T15:43:11.123456789Z stdout hello world\n"
        )

        self.assertEqual(
            line, logs.LogLine(BASE_NS + 123_456_789, "stdout", b"hello world")
        )

    def test_without_newline(self):
        line = logs.parse_log_line(b"2026-12-04T15:43:11.000000000Z stderr oops")

        self.assertEqual(line.stream, "stderr")
        self.assertEqual(line.text, b"oops")

    def test_empty_text(self):
        line = logs.parse_log_line(b"2026-12-04T15:43:11.000000000Z stdout \n")

        self.assertEqual(line.text, b"")

    def test_text_keeps_spaces(self):
        line = logs.parse_log_line(b"2026-12-04T15:43:11.000000000Z stdout  a  b \n")

        self.assertEqual(line.text, b" a  b ")

    def test_malformed_lines_rejected(self):
        bad = [
            b"",
            b"hello\n",
            b"2026-12-04 15:43:11.000000000Z stdout x\n",
            b"2026-13-04T15:43:11.000000000Z stdout x\n",
            b"2026-12-04T15:43:11.000000000Z stdin x\n",
            b"2026-12-04T15:43:11.000000000Zstdout x\n",
            b"2026-12-04T15:43:11.00000000xZ stdout x\n",
            b"\xff\xfe26-12-04T15:43:11.000000000Z stdout x\n",
        ]

        for raw in bad:
            self.assertRaises(logs.MalformedLogLine, logs.parse_log_line, raw)


class FrameTests(SynchronousTestCase):
    """Docker's stdcopy header."""

    def test_stdout_frame_bytes(self):
        self.assertEqual(
            logs.frame("stdout", b"hi\n"), b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n"
        )

    def test_stderr_frame_bytes(self):
        self.assertEqual(
            logs.frame("stderr", b"e"), b"\x02\x00\x00\x00\x00\x00\x00\x01e"
        )

    def test_system_frame_bytes(self):
        self.assertEqual(logs.frame("system", b""), b"\x03\x00\x00\x00\x00\x00\x00\x00")

    def test_size_is_big_endian(self):
        record = logs.frame("stdout", b"x" * 0x01_02_03)

        self.assertEqual(record[:8], b"\x01\x00\x00\x00\x00\x01\x02\x03")


class TimeParsingTests(SynchronousTestCase):
    """Fixed-width timestamps and since/until values."""

    def test_fixed_timestamp_round_trip(self):
        stamp = "2026-12-04T15:43:11.123456789Z"

        ns = timeutil.parse_fixed_timestamp_ns(stamp)

        self.assertEqual(ns, BASE_NS + 123_456_789)
        self.assertEqual(timeutil.format_fixed_timestamp_ns(ns), stamp)

    def test_fixed_timestamp_seconds(self):
        seconds = timeutil.parse_fixed_timestamp(b"2026-12-04T15:43:11.500000000Z")

        self.assertEqual(seconds, BASE + 0.5)

    def test_fixed_timestamp_rejects_short_fraction(self):
        self.assertRaises(
            ValueError, timeutil.parse_fixed_timestamp_ns, "2026-12-04T15:43:11.5Z"
        )

    def test_fixed_timestamp_rejects_hour_24(self):
        self.assertRaises(
            ValueError,
            timeutil.parse_fixed_timestamp_ns,
            "2026-12-04T24:00:00.000000000Z",
        )

    def test_docker_time_forms(self):
        cases = [
            ("1796398991", BASE_NS),
            ("1796398991.5", BASE_NS + 500_000_000),
            ("1796398991.000000001", BASE_NS + 1),
            ("1796398991.123456789", BASE_NS + 123_456_789),
            ("0", 0),
            ("2026-12-04T15:43:11Z", BASE_NS),
            ("2026-12-04T15:43:11.25Z", BASE_NS + 250_000_000),
            ("2026-12-04T17:43:11+02:00", BASE_NS),
            ("2026-12-04T13:43:11.000000007-02:00", BASE_NS + 7),
        ]

        for value, expected in cases:
            self.assertEqual(timeutil.parse_docker_time_ns(value), expected, value)

    def test_docker_time_float(self):
        self.assertEqual(timeutil.parse_docker_time("1796398991.25"), BASE + 0.25)

    def test_invalid_docker_time_named(self):
        error = self.assertRaises(
            InvalidParameter, timeutil.parse_docker_time, "yesterday", "since"
        )

        self.assertIn("'yesterday'", str(error))
        self.assertIn('"since"', str(error))

    def test_invalid_docker_time_forms(self):
        for value in ("", "1.", "1.1234567890", "10m", "2026-12-04", "1e9"):
            self.assertRaises(InvalidParameter, timeutil.parse_docker_time_ns, value)


class LogOptionsTests(SynchronousTestCase):
    """LogOptions.from_query."""

    def test_defaults_with_one_stream(self):
        opts = logs.LogOptions.from_query({b"stdout": [b"1"]})

        self.assertEqual(opts, logs.LogOptions(stdout=True))

    def test_docker_false_values(self):
        for value in (b"", b"0", b"no", b"false", b"none", b"FALSE", b" No "):
            opts = logs.LogOptions.from_query(
                {b"stdout": [b"1"], b"timestamps": [value]}
            )

            self.assertFalse(opts.timestamps, value)

    def test_docker_true_values(self):
        for value in (b"1", b"true", b"yes", b"True", b"2", b"anything"):
            opts = logs.LogOptions.from_query({b"stderr": [value], b"follow": [value]})

            self.assertTrue(opts.stderr, value)
            self.assertTrue(opts.follow, value)

    def test_first_value_used(self):
        opts = logs.LogOptions.from_query({b"stdout": [b"0", b"1"], b"stderr": [b"1"]})

        self.assertFalse(opts.stdout)

    def test_no_stream_rejected(self):
        error = self.assertRaises(
            InvalidParameter,
            logs.LogOptions.from_query,
            {b"stdout": [b"0"], b"follow": [b"1"]},
        )

        self.assertEqual(
            str(error), "Bad parameters: you must choose at least one stream"
        )

    def test_tail_values(self):
        cases = [
            (None, None),
            (b"all", None),
            (b"", None),
            (b"0", 0),
            (b"100", 100),
            (b"-1", None),
        ]

        for value, expected in cases:
            args = {b"stdout": [b"1"]}
            if value is not None:
                args[b"tail"] = [value]

            opts = logs.LogOptions.from_query(args)

            self.assertEqual(opts.tail, expected, value)

    def test_invalid_tail_named(self):
        error = self.assertRaises(
            InvalidParameter,
            logs.LogOptions.from_query,
            {b"stdout": [b"1"], b"tail": [b"ten"]},
        )

        self.assertIn('"tail"', str(error))
        self.assertIn("'ten'", str(error))

    def test_since_and_until(self):
        opts = logs.LogOptions.from_query(
            {
                b"stdout": [b"1"],
                b"since": [b"1796398991.5"],
                b"until": [b"1796398992"],
            }
        )

        self.assertEqual(opts.since_ns, BASE_NS + 500_000_000)
        self.assertEqual(opts.until_ns, BASE_NS + 1_000_000_000)

    def test_until_zero_means_none(self):
        opts = logs.LogOptions.from_query({b"stdout": [b"1"], b"until": [b"0"]})

        self.assertIsNone(opts.until_ns)

    def test_empty_since_means_none(self):
        opts = logs.LogOptions.from_query({b"stdout": [b"1"], b"since": [b""]})

        self.assertIsNone(opts.since_ns)

    def test_invalid_until_named(self):
        error = self.assertRaises(
            InvalidParameter,
            logs.LogOptions.from_query,
            {b"stdout": [b"1"], b"until": [b"soon"]},
        )

        self.assertIn('"until"', str(error))


SAMPLE = b"".join(
    [
        log_line(0, "stdout", "one"),
        log_line(250_000_000, "stderr", "two"),
        log_line(1_000_000_000, "stdout", "three"),
        log_line(1_500_000_000, "stderr", "four"),
        log_line(2_000_000_000, "stdout", "five"),
    ]
)


class ReadLogTests(LogFileMixin, SynchronousTestCase):
    """read_log on real files, with the inline reader."""

    def test_both_streams_framed(self):
        path = self.make_log(SAMPLE)

        records = self.read(path, options())

        self.assertEqual(
            unframe(records),
            [
                (1, b"one\n"),
                (2, b"two\n"),
                (1, b"three\n"),
                (2, b"four\n"),
                (1, b"five\n"),
            ],
        )

    def test_stdout_only(self):
        path = self.make_log(SAMPLE)

        records = self.read(path, options(stderr=False))

        self.assertEqual(
            unframe(records), [(1, b"one\n"), (1, b"three\n"), (1, b"five\n")]
        )

    def test_stderr_only(self):
        path = self.make_log(SAMPLE)

        records = self.read(path, options(stdout=False))

        self.assertEqual(unframe(records), [(2, b"two\n"), (2, b"four\n")])

    def test_tail_counts_file_lines(self):
        path = self.make_log(SAMPLE)

        records = self.read(path, options(tail=2))

        self.assertEqual(unframe(records), [(2, b"four\n"), (1, b"five\n")])

    def test_tail_before_stream_filter(self):
        # Docker takes the last lines of the file, then drops other streams.
        path = self.make_log(SAMPLE)

        records = self.read(path, options(stderr=False, tail=2))

        self.assertEqual(unframe(records), [(1, b"five\n")])

    def test_tail_zero(self):
        path = self.make_log(SAMPLE)

        records = self.read(path, options(tail=0))

        self.assertEqual(records, [])

    def test_tail_larger_than_log(self):
        path = self.make_log(SAMPLE)

        records = self.read(path, options(tail=100))

        self.assertEqual(len(records), 5)

    def test_tail_all(self):
        path = self.make_log(SAMPLE)

        records = self.read(path, options(tail=None))

        self.assertEqual(len(records), 5)

    def test_since_fractional(self):
        path = self.make_log(SAMPLE)

        records = self.read(path, options(since_ns=BASE_NS + 1_250_000_000))

        self.assertEqual(unframe(records), [(2, b"four\n"), (1, b"five\n")])

    def test_since_is_inclusive(self):
        path = self.make_log(SAMPLE)

        records = self.read(path, options(since_ns=BASE_NS + 1_500_000_000))

        self.assertEqual(unframe(records)[0], (2, b"four\n"))

    def test_until_fractional(self):
        path = self.make_log(SAMPLE)

        records = self.read(path, options(until_ns=BASE_NS + 250_000_000))

        self.assertEqual(unframe(records), [(1, b"one\n"), (2, b"two\n")])

    def test_since_and_until(self):
        path = self.make_log(SAMPLE)

        records = self.read(
            path,
            options(since_ns=BASE_NS + 1, until_ns=BASE_NS + 1_999_999_999),
        )

        self.assertEqual(
            unframe(records), [(2, b"two\n"), (1, b"three\n"), (2, b"four\n")]
        )

    def test_since_stops_at_first_match(self):
        # Docker checks since only until the first line at or after it.
        content = log_line(5_000_000_000, "stdout", "late") + log_line(
            1_000_000_000, "stdout", "early"
        )
        path = self.make_log(content)

        records = self.read(path, options(since_ns=BASE_NS + 2_000_000_000))

        self.assertEqual(unframe(records), [(1, b"late\n"), (1, b"early\n")])

    def test_timestamps_prefix(self):
        path = self.make_log(log_line(123_456_789, "stdout", "x"))

        records = self.read(path, options(timestamps=True))

        payload = unframe(records)[0][1]
        self.assertEqual(payload, b"2026-12-04T15:43:11.123456789Z x\n")
        self.assertEqual(payload[30:31], b" ")

    def test_tty_records_unframed(self):
        path = self.make_log(SAMPLE)

        records = self.read(path, options(tty=True, tail=2))

        self.assertEqual(records, [b"four\n", b"five\n"])

    def test_missing_file_is_empty(self):
        path = self.mktemp()

        records = self.read(path, options())

        self.assertEqual(records, [])

    def test_empty_file_with_tail(self):
        path = self.make_log(b"")

        records = self.read(path, options(tail=10))

        self.assertEqual(records, [])

    def test_malformed_lines_skipped(self):
        content = b"garbage\n" + log_line(0, "stdout", "ok") + b"\n" + b"x y z\n"
        path = self.make_log(content)

        records = self.read(path, options())

        self.assertEqual(unframe(records), [(1, b"ok\n")])

    def test_malformed_lines_counted(self):
        content = b"garbage\n" + log_line(0, "stdout", "ok") + b"\n"
        path = self.make_log(content)

        batch = logs.read_log_lines(path, None)

        self.assertEqual(batch.malformed, 2)

    def test_partial_last_line_left_out(self):
        path = self.make_log(SAMPLE + log_line(3_000_000_000, "stdout", "six")[:-3])

        records = self.read(path, options(tail=1))

        self.assertEqual(unframe(records), [(1, b"five\n")])

    def test_tail_with_small_blocks(self):
        self.patch(logs, "TAIL_BLOCK_SIZE", 7)
        lines = [log_line(i, "stdout", f"line {i}") for i in range(50)]
        path = self.make_log(b"".join(lines))

        records = self.read(path, options(tail=3))

        self.assertEqual(
            [payload for _, payload in unframe(records)],
            [b"line 47\n", b"line 48\n", b"line 49\n"],
        )

    def test_full_read_with_small_blocks(self):
        self.patch(logs, "TAIL_BLOCK_SIZE", 3)
        lines = [log_line(i, "stderr", f"line {i}") for i in range(40)]
        path = self.make_log(b"".join(lines))

        records = self.read(path, options())

        self.assertEqual(
            [payload for _, payload in unframe(records)],
            [f"line {i}\n".encode() for i in range(40)],
        )


class CountingFile(io.BytesIO):
    """An in-memory file that counts the bytes read from it."""

    bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


class TailReadCostTests(SynchronousTestCase):
    """A tail reads only the end of a large log."""

    def test_tail_reads_few_blocks(self):
        lines = [log_line(i, "stdout", "x" * 80) for i in range(100_000)]
        content = b"".join(lines)
        handle = CountingFile(content)

        batch = logs._read_tail(handle, len(content), 100)

        self.assertEqual(len(batch.lines), 100)
        self.assertEqual(batch.lines[-1].time_ns, BASE_NS + 99_999)
        self.assertLess(handle.bytes_read, 3 * logs.TAIL_BLOCK_SIZE)
        self.assertGreater(len(content), 100 * handle.bytes_read)


class ThreadPoolReadTests(LogFileMixin, TestCase):
    """read_log through a real thread pool."""

    def test_read_in_thread(self):
        from twisted.internet import reactor

        pool = ThreadPool(minthreads=1, maxthreads=1, name="test-logs")
        pool.start()
        self.addCleanup(pool.stop)
        path = self.make_log(SAMPLE)
        reader = logs.thread_pool_reader(reactor, pool)

        d = logs.read_log(path, options(tail=1), reader)

        d.addCallback(
            lambda records: self.assertEqual(unframe(records), [(1, b"five\n")])
        )
        return d


class LogStreamerTests(LogFileMixin, SynchronousTestCase):
    """LogStreamer with the inline reader and small chunks."""

    def stream(self, path, chunk_size=40, **kw):
        written = []
        streamer = logs.LogStreamer(
            path, options(**kw), written.append, logs.inline_reader, chunk_size
        )
        return streamer, written

    def test_same_frames_as_read_log(self):
        path = self.make_log(SAMPLE + b"not a log line\n" + log_line(3, "stderr", "six"))
        streamer, written = self.stream(path)

        end = self.successResultOf(streamer.run())

        self.assertEqual(b"".join(written), b"".join(self.read(path, options())))
        self.assertEqual(end, os.path.getsize(path))

    def test_several_chunks(self):
        path = self.make_log(SAMPLE)
        streamer, written = self.stream(path)

        self.successResultOf(streamer.run())

        self.assertGreater(len(written), 1)

    def test_line_longer_than_chunk(self):
        long_text = "y" * 200
        path = self.make_log(SAMPLE + log_line(3, "stdout", long_text))
        streamer, written = self.stream(path)

        self.successResultOf(streamer.run())

        self.assertTrue(b"".join(written).endswith(long_text.encode() + b"\n"))

    def test_partial_last_line_left(self):
        line = log_line(3, "stdout", "six")
        path = self.make_log(SAMPLE + line[:10])
        streamer, written = self.stream(path)

        end = self.successResultOf(streamer.run())

        self.assertEqual(end, len(SAMPLE))
        self.assertNotIn(b"six", b"".join(written))

    def test_paused_reads_nothing(self):
        path = self.make_log(SAMPLE)
        streamer, written = self.stream(path)
        streamer.pauseProducing()

        running = streamer.run()
        paused_writes = list(written)
        streamer.resumeProducing()

        self.assertEqual(paused_writes, [])
        self.assertEqual(b"".join(written), b"".join(self.read(path, options())))
        self.successResultOf(running)

    def test_stop_ends_early(self):
        path = self.make_log(SAMPLE)
        streamer, written = self.stream(path)
        streamer.pauseProducing()
        running = streamer.run()

        streamer.stopProducing()

        self.assertEqual(written, [])
        self.assertEqual(self.successResultOf(running), 0)

    def test_missing_file_empty(self):
        streamer, written = self.stream(self.mktemp())

        self.assertEqual(self.successResultOf(streamer.run()), 0)
        self.assertEqual(written, [])


class LogFollowerTests(LogFileMixin, SynchronousTestCase):
    """LogFollower with task.Clock and real files."""

    def follow(self, path, now=BASE + 10, **kw):
        clock = task.Clock()
        clock.advance(now)
        written = []
        follower = logs.LogFollower(
            path, options(**kw), clock, written.append, poll_interval=0.25
        )
        self.successResultOf(follower.start())
        return follower, clock, written

    def test_initial_records_written(self):
        path = self.make_log(SAMPLE)

        follower, clock, written = self.follow(path, tail=2)

        self.assertEqual(unframe(written), [(2, b"four\n"), (1, b"five\n")])
        follower.stop()

    def test_appended_lines_followed(self):
        path = self.make_log(SAMPLE)
        follower, clock, written = self.follow(path, tail=0)

        self.append(path, log_line(3_000_000_000, "stdout", "six"))
        self.append(path, log_line(3_100_000_000, "stderr", "seven"))
        clock.advance(0.25)

        self.assertEqual(unframe(written), [(1, b"six\n"), (2, b"seven\n")])
        follower.stop()

    def test_nothing_before_poll(self):
        path = self.make_log(SAMPLE)
        follower, clock, written = self.follow(path, tail=0)

        self.append(path, log_line(3_000_000_000, "stdout", "six"))
        clock.advance(0.2)

        self.assertEqual(written, [])
        follower.stop()

    def test_partial_line_waits(self):
        path = self.make_log(b"")
        follower, clock, written = self.follow(path)
        line = log_line(0, "stdout", "split line")

        self.append(path, line[:20])
        clock.advance(0.25)
        partial_written = list(written)
        self.append(path, line[20:])
        clock.advance(0.25)

        self.assertEqual(partial_written, [])
        self.assertEqual(unframe(written), [(1, b"split line\n")])
        follower.stop()

    def test_initial_partial_line_completed(self):
        line = log_line(3_000_000_000, "stdout", "six")
        path = self.make_log(SAMPLE + line[:10])
        follower, clock, written = self.follow(path, tail=1)

        self.append(path, line[10:])
        clock.advance(0.25)

        self.assertEqual(unframe(written), [(1, b"five\n"), (1, b"six\n")])
        follower.stop()

    def test_stream_filter_applies(self):
        path = self.make_log(b"")
        follower, clock, written = self.follow(path, stderr=False)

        self.append(path, log_line(0, "stderr", "err") + log_line(1, "stdout", "out"))
        clock.advance(0.25)

        self.assertEqual(unframe(written), [(1, b"out\n")])
        follower.stop()

    def test_timestamps_in_follow(self):
        path = self.make_log(b"")
        follower, clock, written = self.follow(path, timestamps=True)

        self.append(path, log_line(7, "stdout", "t"))
        clock.advance(0.25)

        self.assertEqual(unframe(written), [(1, b"2026-12-04T15:43:11.000000007Z t\n")])
        follower.stop()

    def test_missing_file_appears(self):
        path = self.mktemp()
        follower, clock, written = self.follow(path)

        clock.advance(0.25)
        self.make_log_at(path, log_line(0, "stdout", "hello"))
        clock.advance(0.25)

        self.assertEqual(unframe(written), [(1, b"hello\n")])
        follower.stop()

    def make_log_at(self, path, content):
        with open(path, "wb") as handle:
            handle.write(content)

    def test_truncated_file_read_again(self):
        path = self.make_log(SAMPLE)
        follower, clock, written = self.follow(path, tail=0)

        self.make_log_at(path, log_line(9, "stdout", "fresh"))
        clock.advance(0.25)
        clock.advance(0)

        self.assertEqual(unframe(written), [(1, b"fresh\n")])
        follower.stop()

    def test_stop_ends_writes(self):
        path = self.make_log(b"")
        follower, clock, written = self.follow(path)

        follower.stop()
        self.append(path, log_line(0, "stdout", "late"))
        clock.advance(1)

        self.assertEqual(written, [])
        self.assertIsNone(self.successResultOf(follower.done))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_twice(self):
        path = self.make_log(b"")
        follower, clock, written = self.follow(path)

        follower.stop()
        follower.stop()

        self.assertIsNone(self.successResultOf(follower.done))

    def test_until_clock_ends_follow(self):
        path = self.make_log(b"")
        follower, clock, written = self.follow(
            path, now=BASE, until_ns=BASE_NS + 1_000_000_000
        )

        self.append(path, log_line(500_000_000, "stdout", "in time"))
        clock.advance(1.0)

        self.assertEqual(unframe(written), [(1, b"in time\n")])
        self.assertIsNone(self.successResultOf(follower.done))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_line_after_until_ends_follow(self):
        path = self.make_log(b"")
        follower, clock, written = self.follow(
            path, now=BASE, until_ns=BASE_NS + 5_000_000_000
        )

        self.append(
            path,
            log_line(1_000_000_000, "stdout", "a")
            + log_line(6_000_000_000, "stdout", "b"),
        )
        clock.advance(0.25)

        self.assertEqual(unframe(written), [(1, b"a\n")])
        self.assertIsNone(self.successResultOf(follower.done))

    def test_until_in_past_ends_after_initial(self):
        path = self.make_log(SAMPLE)

        follower, clock, written = self.follow(
            path, now=BASE + 100, until_ns=BASE_NS + 1_000_000_000
        )

        self.assertEqual(len(unframe(written)), 3)
        self.assertIsNone(self.successResultOf(follower.done))

    def test_since_in_follow(self):
        path = self.make_log(b"")
        follower, clock, written = self.follow(path, since_ns=BASE_NS + 10)

        self.append(path, log_line(5, "stdout", "old") + log_line(10, "stdout", "new"))
        clock.advance(0.25)

        self.assertEqual(unframe(written), [(1, b"new\n")])
        follower.stop()

    def test_large_append_read_in_parts(self):
        self.patch(logs, "FOLLOW_READ_LIMIT", 100)
        path = self.make_log(b"")
        follower, clock, written = self.follow(path)
        lines = [log_line(i, "stdout", f"n{i}") for i in range(20)]

        self.append(path, b"".join(lines))
        clock.advance(0.25)
        for _ in range(20):
            clock.advance(0)

        self.assertEqual(len(unframe(written)), 20)
        self.assertGreater(len(written), 1)
        follower.stop()

    def test_initial_part_streamed_in_chunks(self):
        self.patch(logs, "FOLLOW_READ_LIMIT", 100)
        lines = [log_line(i, "stdout", f"n{i}") for i in range(20)]
        path = self.make_log(b"".join(lines))

        follower, clock, written = self.follow(path)

        self.assertEqual(len(unframe(written)), 20)
        self.assertGreater(len(written), 1)
        follower.stop()

    def test_write_failure_stops(self):
        path = self.make_log(SAMPLE)
        clock = task.Clock()

        def broken_write(record):
            raise OSError("connection lost")

        follower = logs.LogFollower(path, options(), clock, broken_write)
        self.successResultOf(follower.start())

        self.assertIsNone(self.successResultOf(follower.done))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

"""Tests for the console pump of the qemu agency."""

import os

from twisted.trial.unittest import SynchronousTestCase

from emiso.agency.qemu.pump import MAX_LINE, Pump, read_offset, split_lines
from emiso.engine.logs import parse_log_line


class SplitLinesTests(SynchronousTestCase):
    def test_complete_lines(self):
        lines, pending = split_lines(b"", b"one\r\ntwo\n")

        self.assertEqual((lines, pending), (["one", "two"], b""))

    def test_partial_line_is_pending(self):
        lines, pending = split_lines(b"", b"one\npar")

        self.assertEqual((lines, pending), (["one"], b"par"))

    def test_pending_is_continued(self):
        lines, pending = split_lines(b"par", b"tial\n")

        self.assertEqual((lines, pending), (["partial"], b""))

    def test_long_line_is_cut(self):
        lines, pending = split_lines(b"", b"x" * (MAX_LINE + 3))

        self.assertEqual(([len(text) for text in lines], pending), ([MAX_LINE], b"xxx"))

    def test_bad_utf8_is_replaced(self):
        lines, pending = split_lines(b"", b"a\xffb\n")

        self.assertEqual(lines, ["a\ufffdb"])


class PumpTests(SynchronousTestCase):
    def setUp(self):
        folder = self.mktemp()
        os.makedirs(folder)
        self.raw = os.path.join(folder, "console.raw")
        self.log = os.path.join(folder, "console.log")
        self.offset = os.path.join(folder, "pump.offset")

    def write_raw(self, data):
        with open(self.raw, "ab") as stream:
            stream.write(data)

    def logged(self):
        with open(self.log, "rb") as stream:
            return [parse_log_line(raw).text for raw in stream]

    def test_step_copies_lines(self):
        self.write_raw(b"SO3 banner\r\nheartbeat 1\r\n")
        pump = Pump(self.raw, self.log, self.offset)

        pump.step()

        self.assertEqual(self.logged(), [b"SO3 banner", b"heartbeat 1"])

    def test_offset_excludes_partial(self):
        self.write_raw(b"one\npart")
        pump = Pump(self.raw, self.log, self.offset)

        pump.step()

        self.assertEqual(read_offset(self.offset), 4)

    def test_new_pump_continues(self):
        self.write_raw(b"one\npart")
        Pump(self.raw, self.log, self.offset).step()
        self.write_raw(b"ial\n")

        Pump(self.raw, self.log, self.offset).step()

        self.assertEqual(self.logged(), [b"one", b"partial"])

    def test_final_step_flushes_partial(self):
        self.write_raw(b"prompt> ")
        pump = Pump(self.raw, self.log, self.offset)

        pump.step(final=True)

        self.assertEqual(self.logged(), [b"prompt> "])

    def test_missing_raw_log_reads_nothing(self):
        pump = Pump(self.raw, self.log, self.offset)

        count = pump.step()

        self.assertEqual(count, 0)

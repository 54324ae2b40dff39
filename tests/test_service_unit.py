"""
The systemd unit, the journal log format and the console script's
command line.
"""

import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from emiso.drain import EngineSite, InFlightRequests
from emiso.logoutput import plain_observer, stdout_is_journal
from emiso.script import JOURNAL_LOGGER, twistd_argv
from tests.engineprocess import PROJECT_ROOT

UNIT = PROJECT_ROOT / "conf" / "emiso.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def unit_settings() -> dict:
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


class UnitFileTests(SynchronousTestCase):
    def test_settings(self):
        settings = unit_settings()

        self.assertEqual(settings["Type"], "simple")
        self.assertEqual(settings["Restart"], "on-failure")
        self.assertEqual(settings["KillMode"], "process")
        self.assertEqual(settings["KillSignal"], "SIGTERM")
        self.assertEqual(
            settings["ExecStart"],
            "/usr/local/bin/emiso-engine --config /etc/emiso/emiso.toml",
        )


class VerifyTests(SynchronousTestCase):
    """
    C{systemd-analyze verify} on the unit, in a throw-away root that holds
    a copy of the system's units and an executable at the unit's
    C{ExecStart} path, because verify checks that the command exists.
    """

    def setUp(self):
        if SYSTEMD_ANALYZE is None:
            self.skipTest("systemd-analyze is not installed (apt-get install systemd)")
        if not SYSTEM_UNITS.is_dir():
            self.skipTest(f"{SYSTEM_UNITS} does not exist")
        self.root = Path(tempfile.mkdtemp(prefix="emiso-unit-"))
        self.addCleanup(shutil.rmtree, self.root, True)
        executable = self.root / "usr" / "local" / "bin" / "emiso-engine"
        executable.parent.mkdir(parents=True)
        executable.write_text("#!/bin/sh\n")
        executable.chmod(0o755)
        (self.root / "usr" / "lib" / "systemd").mkdir(parents=True)
        shutil.copytree(
            SYSTEM_UNITS, self.root / "usr/lib/systemd/system", symlinks=True
        )
        self.unit_folder = self.root / "etc" / "systemd" / "system"
        self.unit_folder.mkdir(parents=True)

    def verify(self, text: str) -> subprocess.CompletedProcess:
        path = self.unit_folder / "emiso.service"
        path.write_text(text)
        return subprocess.run(
            [SYSTEMD_ANALYZE, "verify", f"--root={self.root}", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_unitVerifies(self):
        result = self.verify(UNIT.read_text())

        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("emiso.service", result.stderr + result.stdout)

    def test_brokenUnitReported(self):
        # The check above can fail: verify reports a bad setting of a copy.
        broken = UNIT.read_text().replace("Type=simple", "Type=simplest")

        result = self.verify(broken)

        self.assertIn("emiso.service", result.stderr)


class JournalFormatTests(SynchronousTestCase):
    def test_noTimestamp(self):
        stream = io.StringIO()
        logger = Logger(namespace="emiso.test", observer=plain_observer(stream))

        logger.warn("Slot {slot} is dead", slot=3)

        self.assertEqual(stream.getvalue(), "<4>[emiso.test#warn] Slot 3 is dead\n")

    def test_tracebackLinesPrefixed(self):
        stream = io.StringIO()
        logger = Logger(namespace="emiso.test", observer=plain_observer(stream))

        try:
            1 / 0
        except ZeroDivisionError:
            logger.failure("Division failed")

        lines = stream.getvalue().splitlines()
        self.assertGreater(len(lines), 2)
        for line in lines:
            self.assertTrue(line.startswith("<2>"), line)

    def test_journalStreamDetected(self):
        with tempfile.TemporaryFile("w") as handle:
            status = os.fstat(handle.fileno())
            value = f"{status.st_dev}:{status.st_ino}"

            detected = stdout_is_journal({"JOURNAL_STREAM": value}, handle.fileno())
            other = stdout_is_journal({"JOURNAL_STREAM": "1:2"}, handle.fileno())

        self.assertTrue(detected)
        self.assertFalse(other)

    def test_noJournalStream(self):
        self.assertFalse(stdout_is_journal({}))


class ScriptTests(SynchronousTestCase):
    def test_foregroundCommand(self):
        argv = twistd_argv(["-s", "--listen", "tcp:2376"], journal=False)

        self.assertEqual(
            argv,
            ["emiso-engine", "--nodaemon", "--pidfile=", "emiso", "-s", "--listen",
             "tcp:2376"],
        )

    def test_journalLogger(self):
        argv = twistd_argv([], journal=True)

        self.assertIn(JOURNAL_LOGGER, argv)
        self.assertLess(argv.index(JOURNAL_LOGGER), argv.index("emiso"))


class _Request:
    """A request whose end the test decides."""

    def __init__(self):
        self.finished = Deferred()

    def notifyFinish(self):
        return self.finished


class InFlightRequestsTests(SynchronousTestCase):
    """
    A stopping engine waits for the requests in flight, up to a limit.
    """

    def test_idle(self):
        requests = InFlightRequests()

        d = requests.wait(Clock(), 5)

        self.assertIsNone(self.successResultOf(d))

    def test_waitsForRequest(self):
        requests = InFlightRequests()
        request = _Request()
        requests.begin(request)
        clock = Clock()

        d = requests.wait(clock, 5)
        clock.advance(4)
        self.assertNoResult(d)
        request.finished.callback(None)

        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_lostConnectionCounts(self):
        requests = InFlightRequests()
        request = _Request()
        requests.begin(request)

        request.finished.errback(ConnectionLost())

        self.assertEqual(requests.count, 0)

    def test_timeout(self):
        requests = InFlightRequests()
        requests.begin(_Request())
        clock = Clock()

        d = requests.wait(clock, 5)
        clock.advance(5)

        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(requests.count, 1)

    def test_noHTTP2Offered(self):
        site = EngineSite(Resource(), InFlightRequests())

        self.assertEqual(site.acceptableProtocols(), [b"http/1.1"])

"""
The interactive CLI: commands on an engine with a fake agency, and the
real C{twistd emiso -i} with piped input.
"""

import os
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from emiso.cli import CommandLineProtocol, Commands, format_table, human_size
from emiso.config import resolve
from emiso.engine.engine import Engine
from tests.engineprocess import PROJECT_ROOT, SAMPLES_DIR
from tests.fakeagency import FakeAgency

TWISTD = "import sys; from twisted.scripts.twistd import run; sys.exit(run())"


class FormatTests(SynchronousTestCase):
    def test_tableAligned(self):
        text = format_table(["A", "LONG HEADER"], [["wide value", "x"], ["b", "y"]])

        self.assertEqual(
            text.splitlines(),
            ["A            LONG HEADER", "wide value   x", "b            y"],
        )

    def test_sizes(self):
        cases = {0: "0B", 999: "999B", 2130: "2.13kB", 16_777_216: "16.8MB"}
        for size, expected in cases.items():
            self.assertEqual(human_size(size), expected, size)


class CommandLineTests(TestCase):
    """
    L{CommandLineProtocol} on a started engine with a fake agency.
    """

    @inlineCallbacks
    def setUp(self):
        data_dir = os.path.abspath(self.mktemp())
        config = resolve({"data_dir": data_dir, "config": None})
        self.engine = Engine(reactor, config, FakeAgency())
        yield self.engine.start()
        self.addCleanup(self.engine.stop)

    def session(self, *lines, interactive=False):
        """
        Feed the lines and the end of input; fire with the output once the
        protocol ends.
        """
        ended = Deferred()
        transport = StringTransport()
        protocol = CommandLineProtocol(
            Commands(self.engine), lambda: ended.callback(None), interactive
        )
        protocol.makeConnection(transport)
        protocol.dataReceived(b"".join(line.encode() + b"\n" for line in lines))
        protocol.readConnectionLost()
        ended.addCallback(lambda _: transport.value().decode())
        return ended

    @inlineCallbacks
    def test_imageInfo(self):
        output = yield self.session("image info")

        lines = output.splitlines()
        header = lines[0]
        self.assertEqual(
            header.split(),
            ["NAME", "TAG", "IMAGE", "ID", "SIZE", "CREATED", "ARCHITECTURE"],
        )
        names = sorted(line.split()[0] for line in lines[1:])
        self.assertEqual(names, ["blinky-sim", "refso3-sim"])
        for line in lines[1:]:
            self.assertEqual(line.index("latest"), header.index("TAG"))
            self.assertTrue(line.rstrip().endswith("arm64"), line)

    @inlineCallbacks
    def test_containerLifecycle(self):
        output = yield self.session(
            "container create refso3-sim demo",
            "container start demo",
            "container ls",
            "container stop demo",
            "container rm demo",
            "container ls",
        )

        lines = output.splitlines()
        container_id = lines[0]
        self.assertEqual(len(container_id), 64)
        self.assertEqual(lines[1], "demo")
        self.assertTrue(lines[2].startswith("CONTAINER ID"))
        self.assertTrue(lines[3].startswith(container_id[:12]))
        self.assertIn("Up ", lines[3])
        self.assertEqual(lines[4:6], ["demo", "demo"])
        self.assertTrue(lines[6].startswith("CONTAINER ID"))
        self.assertEqual(len(lines), 7)
        self.assertEqual(self.engine.containers.list(), [])

    @inlineCallbacks
    def test_containerUpdate(self):
        output = yield self.session(
            "container create refso3-sim demo",
            "container update demo blinky-sim",
            "container update demo no-such-image",
        )

        lines = output.splitlines()
        self.assertEqual(lines[1], "demo: refso3-sim -> blinky-sim")
        self.assertIn("No such image: no-such-image", lines[2])
        self.assertEqual(self.engine.containers.get("demo").image_ref, "blinky-sim")

    @inlineCallbacks
    def test_imageLoad(self):
        source = os.path.join(self.mktemp() + "-images", "extra.itb")
        os.makedirs(os.path.dirname(source))
        with open(SAMPLES_DIR / "blinky-sim.itb", "rb") as sample:
            with open(source, "wb") as copy:
                copy.write(sample.read())

        output = yield self.session(f"image load {source}", "image rm extra")

        self.assertEqual(
            output.splitlines(), ["Loaded image: extra:latest", "Untagged: extra:latest"]
        )

    @inlineCallbacks
    def test_errorsNameTheValue(self):
        output = yield self.session(
            "container start ghost",
            "image rm nothing:1.0",
            "fly away",
            "container start",
            "container create refso3-sim 'bad name!'",
            "image load /no/such/file.itb",
        )

        self.assertEqual(
            output.splitlines(),
            [
                "Error: No such container: ghost",
                "Error: No such image: nothing:1.0",
                "Error: unknown command 'fly'; type help for the list of commands",
                "Error: usage: container start ID",
                "Error: Invalid container name (bad name!), only "
                "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
                "Error: /no/such/file.itb is not a file",
            ],
        )

    @inlineCallbacks
    def test_exitStopsReading(self):
        output = yield self.session("help", "exit", "image info")

        self.assertIn("container logs ID", output)
        self.assertNotIn("ARCHITECTURE", output)

    @inlineCallbacks
    def test_prompt(self):
        output = yield self.session("container ls", interactive=True)

        self.assertTrue(output.startswith("EMISO engine interactive mode"))
        self.assertEqual(output.count("emiso> "), 2)


class PipedInputTests(SynchronousTestCase):
    """
    C{printf 'image info\\n' | twistd -n --pidfile= emiso -i}.
    """

    def run_cli(self, data_dir, text, *arguments):
        environment = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
        return subprocess.run(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", *arguments, "emiso",
             "-i", "--data-dir", data_dir],
            input=text,
            capture_output=True,
            text=True,
            env=environment,
            cwd=os.path.dirname(data_dir),
            timeout=60,
        )

    def test_imageInfo(self):
        data_dir = os.path.abspath(self.mktemp())

        result = self.run_cli(data_dir, "image info\n")

        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0].split()[:2], ["NAME", "TAG"])
        self.assertEqual(len(lines), 3, result.stdout)
        self.assertTrue(os.path.exists(os.path.join(data_dir, "interactive.log")))

    def test_logFileOption(self):
        data_dir = os.path.abspath(self.mktemp())
        log_file = data_dir + ".log"

        result = self.run_cli(data_dir, "container ls\n", f"--logfile={log_file}")

        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.splitlines()[0].split()[:2], ["CONTAINER", "ID"])
        with open(log_file) as handle:
            self.assertIn("Interactive command-line interface ready", handle.read())

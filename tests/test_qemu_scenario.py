"""End-to-end scenarios of the qemu agency: the docker CLI drives a real
engine whose MEs are QEMU machines booting the heartbeat64 sample.

Skipped where qemu-system-aarch64 or the docker CLI is missing.
"""

import atexit
import os
import re
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.engineprocess import EngineProcess, docker_cli_available, shared_engine
from tests.test_console_scenario import RawStream, split_frames
from tests.qemuhelpers import SKIP_REASON, kill_vms, qemu_available

IMAGE = "heartbeat64-qemu"
QEMU_ARGS = ["--agency", "qemu"]
_HEARTBEAT = re.compile(r"^heartbeat (\d+)$")


def heartbeats(text: str) -> list[int]:
    """Return the heartbeat counters of a console log, in order."""
    counters = []
    for line in text.splitlines():
        match = _HEARTBEAT.match(line.strip())
        if match:
            counters.append(int(match.group(1)))
    return counters


def require_tools() -> None:
    if not qemu_available():
        raise SkipTest(SKIP_REASON)
    if not docker_cli_available():
        raise SkipTest("the docker CLI is not installed (apt-get install docker-cli)")


def qemu_engine(key: str) -> EngineProcess:
    """Return the shared qemu engine; its VMs are killed when the tests end."""
    engine = shared_engine(key, QEMU_ARGS)
    atexit.register(kill_vms, os.path.join(engine.data_dir, "agency"))
    return engine


def logs(engine: EngineProcess, container: str) -> str:
    return engine.docker("logs", container).stdout


def wait_for_heartbeat(engine, container, minimum, timeout=20.0) -> str:
    """Wait until the log shows heartbeat C{minimum} or more; return the log."""
    deadline = time.monotonic() + timeout
    while True:
        text = logs(engine, container)
        if any(counter >= minimum for counter in heartbeats(text)):
            return text
        if time.monotonic() > deadline:
            raise engine.failure(f"no heartbeat {minimum} in {container}:\n{text}")
        time.sleep(0.1)


class QemuScenarioTests(SynchronousTestCase):
    """Lifecycle, logs, pause and checkpoints on one shared engine."""

    def setUp(self):
        require_tools()
        self.engine = qemu_engine(type(self).__name__)
        self.name = f"q-{self._testMethodName[5:]}".replace("_", "-")
        self.addCleanup(self.engine.docker, "rm", "-f", self.name, check=False)

    def status(self) -> str:
        result = self.engine.docker("inspect", "-f", "{{.State.Status}}", self.name)
        return result.stdout.strip()

    def test_sample_image_installed(self):
        result = self.engine.docker("images", "--format", "{{.Repository}}")

        self.assertEqual(result.stdout.split(), [IMAGE])

    def test_logs_show_uart_output(self):
        self.engine.docker("run", "-d", "--name", self.name, IMAGE)

        text = wait_for_heartbeat(self.engine, self.name, 2)

        self.assertIn("SO3-style boot banner", text)
        self.assertIn("Board: QEMU virt, PL011 UART at 0x09000000", text)
        self.assertEqual(heartbeats(text)[:2], [1, 2])

    def test_first_line_within_seconds(self):
        self.engine.docker("create", "--name", self.name, IMAGE)
        started = time.monotonic()

        self.engine.docker("start", self.name)
        deadline = started + 10.0
        while not logs(self.engine, self.name) and time.monotonic() < deadline:
            time.sleep(0.02)

        self.assertLess(time.monotonic() - started, 10.0)

    def test_pause_freezes_counter(self):
        self.engine.docker("run", "-d", "--name", self.name, IMAGE)
        wait_for_heartbeat(self.engine, self.name, 1)

        self.engine.docker("pause", self.name)
        time.sleep(0.3)
        frozen = heartbeats(logs(self.engine, self.name))
        time.sleep(1.5)

        self.assertEqual(self.status(), "paused")
        self.assertEqual(heartbeats(logs(self.engine, self.name)), frozen)

    def test_unpause_resumes_counter(self):
        self.engine.docker("run", "-d", "--name", self.name, IMAGE)
        wait_for_heartbeat(self.engine, self.name, 1)
        self.engine.docker("pause", self.name)
        time.sleep(0.3)
        last = heartbeats(logs(self.engine, self.name))[-1]

        self.engine.docker("unpause", self.name)

        text = wait_for_heartbeat(self.engine, self.name, last + 1)
        self.assertEqual(heartbeats(text)[-1], last + 1)

    def test_stop_exits_zero(self):
        self.engine.docker("run", "-d", "--name", self.name, IMAGE)

        self.engine.docker("stop", self.name)

        code = self.engine.docker("inspect", "-f", "{{.State.ExitCode}}", self.name)
        self.assertEqual((self.status(), code.stdout.strip()), ("exited", "0"))

    def test_checkpoint_restore_continues(self):
        self.engine.docker("run", "-d", "--name", self.name, IMAGE)
        wait_for_heartbeat(self.engine, self.name, 3)

        self.engine.docker("checkpoint", "create", self.name, "cp1")
        before = heartbeats(logs(self.engine, self.name))
        self.engine.docker("start", "--checkpoint", "cp1", self.name)
        text = wait_for_heartbeat(self.engine, self.name, before[-1] + 2)

        after = heartbeats(text)[len(before) :]
        self.assertEqual(after[:2], [before[-1] + 1, before[-1] + 2])
        self.assertEqual(text.count("SO3-style boot banner"), 1)


class QemuEngineCrashTests(SynchronousTestCase):
    """A VM outlives a kill -9 of the engine and is adopted by the next one."""

    def setUp(self):
        require_tools()
        self.engine = EngineProcess(QEMU_ARGS)
        self.addCleanup(self.engine.close)
        self.addCleanup(kill_vms, os.path.join(self.engine.data_dir, "agency"))
        self.engine.start()

    def test_vm_adopted_after_kill9(self):
        self.engine.docker("run", "-d", "--name", "survivor", IMAGE)
        wait_for_heartbeat(self.engine, "survivor", 1)
        before = heartbeats(logs(self.engine, "survivor"))[-1]

        self.engine.kill9()
        time.sleep(2.5)
        self.engine.start()
        state = self.engine.docker("inspect", "-f", "{{.State.Status}}", "survivor")
        text = wait_for_heartbeat(self.engine, "survivor", before + 3)
        self.engine.docker("pause", "survivor")
        paused = self.engine.docker("inspect", "-f", "{{.State.Status}}", "survivor")

        self.assertEqual(state.stdout.strip(), "running")
        counters = heartbeats(text)
        self.assertEqual(counters, list(range(1, counters[-1] + 1)))
        self.assertEqual(paused.stdout.strip(), "paused")


class QemuConsoleInputTests(SynchronousTestCase):
    """Exec and attach type on the VM's serial console."""

    def setUp(self):
        require_tools()
        self.engine = qemu_engine("QemuScenarioTests")
        self.name = f"q-{self._testMethodName[5:]}".replace("_", "-")
        self.addCleanup(self.engine.docker, "rm", "-f", self.name, check=False)
        self.engine.docker("run", "-d", "--name", self.name, IMAGE)
        wait_for_heartbeat(self.engine, self.name, 1)

    def test_exec_count(self):
        result = self.engine.docker("exec", self.name, "count")

        self.assertIn("count: heartbeat ", result.stdout)

    def test_exec_exit_code(self):
        exec_id = self.create_exec(["help"])
        stream = RawStream(self.engine.port, f"/v1.44/exec/{exec_id}/start", {})
        self.addCleanup(stream.close)

        payloads = [payload for _stream, payload in split_frames(stream.read_to_end())]
        status, body = self.engine.request_json("GET", f"/exec/{exec_id}/json")

        self.assertIn(b"commands: help (this text)", b"".join(payloads))
        self.assertEqual(status, 200)
        self.assertEqual(body["ExitCode"], 0)

    def test_interactive_exec(self):
        exec_id = self.create_exec(["sh"])
        stream = RawStream(self.engine.port, f"/v1.44/exec/{exec_id}/start", {})
        self.addCleanup(stream.close)

        stream.send(b"bogus\n")
        data = stream.read_until(b"unknown command: bogus")

        self.assertEqual(stream.status_line, "HTTP/1.1 101 UPGRADED")
        self.assertIn(b"bogus", data)

    def test_attach_input(self):
        stream = RawStream(
            self.engine.port,
            f"/containers/{self.name}/attach?stream=1&stdin=1&stdout=1&stderr=1",
            {},
        )
        self.addCleanup(stream.close)

        stream.send(b"reset\n")
        data = stream.read_until(b"counter reset to 0")

        self.assertEqual(stream.status_line, "HTTP/1.1 101 UPGRADED")
        payloads = [payload for _stream, payload in split_frames(data)]
        self.assertIn(b"reset\n", payloads)

    def create_exec(self, cmd: list) -> str:
        status, body = self.engine.request_json(
            "POST",
            f"/containers/{self.name}/exec",
            {"AttachStdin": True, "AttachStdout": True, "AttachStderr": True, "Cmd": cmd},
        )
        self.assertEqual(status, 201, body)
        return body["Id"]

"""End-to-end checkpoint scenarios with the real docker CLI on the simulated agency.

One engine saves and restores an ME in place; two engines on loopback,
each with its own data folder and simulated agency, move an ME from one to
the other through C{--checkpoint-dir}.
"""

import json
import os
import re
import shutil
import tempfile
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.engineprocess import EngineProcess, docker_cli_available, shared_engine

_HEARTBEAT = re.compile(r"^heartbeat (\d+)$")


def heartbeats(text: str) -> list[int]:
    """
    Return the heartbeat counters of a console log, in order.
    """
    counters = []
    for line in text.splitlines():
        match = _HEARTBEAT.match(line.strip())
        if match:
            counters.append(int(match.group(1)))
    return counters


def wait_for_heartbeat(engine: EngineProcess, container: str, minimum: int,
                       timeout: float = 15.0) -> str:
    """
    Wait until the container's log shows heartbeat C{minimum}; return the log.
    """
    deadline = time.monotonic() + timeout
    while True:
        logs = engine.docker("logs", container).stdout
        if any(counter >= minimum for counter in heartbeats(logs)):
            return logs
        if time.monotonic() > deadline:
            raise engine.failure(f"no heartbeat {minimum} in the log of {container}:\n{logs}")
        time.sleep(0.2)


def require_docker_cli() -> None:
    if not docker_cli_available():
        raise SkipTest("the docker CLI is not installed (apt-get install docker-cli)")


class CheckpointCLITests(SynchronousTestCase):
    """
    C{docker checkpoint create|ls|rm} and C{docker start --checkpoint}.
    """

    def setUp(self):
        require_docker_cli()
        self.engine = shared_engine(type(self).__name__)
        self.name = f"cp-{self._testMethodName[5:]}".replace("_", "-")
        self.addCleanup(self.engine.docker, "rm", "-f", self.name, check=False)

    def test_cli_lists_checkpoint_commands(self):
        result = self.engine.docker("checkpoint", "--help")

        self.assertIn("create", result.stdout)
        self.assertIn("ls", result.stdout)

    def test_create_list_remove(self):
        self.engine.docker("run", "-d", "--name", self.name, "refso3-sim")
        wait_for_heartbeat(self.engine, self.name, 2)

        created = self.engine.docker(
            "checkpoint", "create", "--leave-running", self.name, "cp1"
        )
        listed = self.engine.docker("checkpoint", "ls", self.name)
        removed = self.engine.docker("checkpoint", "rm", self.name, "cp1")
        after = self.engine.docker("checkpoint", "ls", self.name)

        self.assertEqual(created.stdout.strip(), "cp1")
        self.assertEqual(listed.stdout.split(), ["CHECKPOINT", "NAME", "cp1"])
        self.assertEqual(removed.returncode, 0)
        self.assertEqual(after.stdout.split(), ["CHECKPOINT", "NAME"])
        state = self.engine.docker("inspect", "-f", "{{.State.Status}}", self.name)
        self.assertEqual(state.stdout.strip(), "running")

    def test_restore_continues_counter(self):
        self.engine.docker("run", "-d", "--name", self.name, "refso3-sim")
        wait_for_heartbeat(self.engine, self.name, 3)

        self.engine.docker("checkpoint", "create", self.name, "cp1")
        stopped = self.engine.docker("inspect", "-f", "{{.State.Status}}", self.name)
        before = heartbeats(self.engine.docker("logs", self.name).stdout)
        self.engine.docker("start", "--checkpoint", "cp1", self.name)
        logs = wait_for_heartbeat(self.engine, self.name, before[-1] + 2)

        self.assertEqual(stopped.stdout.strip(), "exited")
        self.assertIn("resumed from snapshot", logs)
        after = heartbeats(logs)[len(before):]
        self.assertEqual(after[0], before[-1] + 1)
        self.assertEqual(logs.count("Booting"), 1)

    def test_restore_other_image_rejected(self):
        folder = tempfile.mkdtemp(prefix="emiso-cps-")
        self.addCleanup(shutil.rmtree, folder, True)
        other = self.name + "-other"
        self.addCleanup(self.engine.docker, "rm", "-f", other, check=False)
        self.engine.docker("run", "-d", "--name", self.name, "refso3-sim")
        wait_for_heartbeat(self.engine, self.name, 1)
        self.engine.docker(
            "checkpoint", "create", "--checkpoint-dir", folder, self.name, "cp1"
        )
        self.engine.docker("create", "--name", other, "blinky-sim")

        result = self.engine.docker(
            "start", "--checkpoint", "cp1", "--checkpoint-dir", folder, other,
            check=False,
        )

        self.assertEqual(result.returncode, 1)
        self.assertIn("was taken from image refso3-sim", result.stderr)
        state = self.engine.docker("inspect", "-f", "{{.State.Status}}", other)
        self.assertEqual(state.stdout.strip(), "created")


class TwoEngineMoveTests(SynchronousTestCase):
    """
    Move an ME from engine A to engine B with C{--checkpoint-dir}.
    """

    def setUp(self):
        require_docker_cli()
        self.first = EngineProcess()
        self.addCleanup(self.first.close)
        self.second = EngineProcess()
        self.addCleanup(self.second.close)
        self.first.start()
        self.second.start()
        self.folder = tempfile.mkdtemp(prefix="emiso-move-")
        self.addCleanup(shutil.rmtree, self.folder, True)

    def test_move_continues_counter(self):
        self.first.docker("run", "-d", "--name", "c1", "refso3-sim")
        wait_for_heartbeat(self.first, "c1", 3)

        self.first.docker(
            "checkpoint", "create", "--checkpoint-dir", self.folder, "c1", "cp1"
        )
        first_logs = self.first.docker("logs", "c1").stdout
        self.second.docker("create", "--name", "c1", "refso3-sim")
        listed = self.second.docker(
            "checkpoint", "ls", "--checkpoint-dir", self.folder, "c1"
        )
        self.second.docker(
            "start", "--checkpoint", "cp1", "--checkpoint-dir", self.folder, "c1"
        )
        last = heartbeats(first_logs)[-1]
        second_logs = wait_for_heartbeat(self.second, "c1", last + 2)

        self.assertEqual(listed.stdout.split(), ["CHECKPOINT", "NAME", "cp1"])
        self.assertNotIn("Booting", second_logs)
        self.assertIn("resumed from snapshot", second_logs)
        self.assertEqual(heartbeats(second_logs)[0], last + 1)
        slot_files = list((self.second.data_dir / "agency" / "slots").glob("*.json"))
        self.assertEqual(len(slot_files), 1)
        image = json.loads(slot_files[0].read_text())["image"]
        self.assertTrue(image.startswith(str(self.second.data_dir)), image)
        first_state = self.first.docker("inspect", "-f", "{{.State.Status}}", "c1")
        self.assertEqual(first_state.stdout.strip(), "exited")
        self.assertTrue(os.path.isfile(os.path.join(self.folder, "cp1", "snapshot.zip")))

    def test_checkpoint_survives_restart(self):
        self.first.docker("run", "-d", "--name", "c1", "refso3-sim")
        wait_for_heartbeat(self.first, "c1", 2)
        self.first.docker("checkpoint", "create", "c1", "cp1")
        last = heartbeats(self.first.docker("logs", "c1").stdout)[-1]

        self.first.restart()
        listed = self.first.docker("checkpoint", "ls", "c1")
        self.first.docker("start", "--checkpoint", "cp1", "c1")
        logs = wait_for_heartbeat(self.first, "c1", last + 1)

        self.assertEqual(listed.stdout.split(), ["CHECKPOINT", "NAME", "cp1"])
        counters = heartbeats(logs)
        self.assertEqual(counters[counters.index(last) + 1], last + 1)
        self.assertEqual(logs.count("Booting"), 1)

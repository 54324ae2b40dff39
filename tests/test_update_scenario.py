"""End-to-end update of a running container to a new image on the simulated agency.

The engine runs as a real process; images are added with the docker CLI and
the update goes through the engine's C{POST /containers/{id}/so3/update}
route, whose responses are checked like every other body.
"""

import os
import shutil
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.engineprocess import PROJECT_ROOT, EngineProcess
from tests.fitbuilder import build_fit, build_me_dtb
from tests.test_checkpoint_scenario import heartbeats, require_docker_cli

CRASHER = PROJECT_ROOT / "tests" / "images" / "crasher.itb"


def write_version_two(directory: str) -> str:
    """
    Write a working second version of the refso3-sim image and return its path.
    """
    me_dtb = build_me_dtb(
        me_name="SOO.refso3-sim",
        spid=0x0100000000000001,
        me_shortdesc="Reference SO3 ME, version 2",
    )
    path = os.path.join(directory, "refso3-v2.itb")
    with open(path, "wb") as stream:
        stream.write(
            build_fit(
                description="refso3-sim version 2",
                me_dtb=me_dtb,
                root_props={"emiso,sim-boot-delay-ms": 200},
            )
        )
    return path


class UpdateScenarioTests(SynchronousTestCase):
    """
    Update to a working image, and to one whose ME crashes after boot.
    """

    def setUp(self):
        require_docker_cli()
        self.engine = EngineProcess()
        self.addCleanup(self.engine.close)
        self.engine.start()
        self.engine.docker(
            "run", "-d", "--name", "c1", "--label", "team=blue", "refso3-sim"
        )
        self.wait_for_heartbeat(3)

    def wait_for_heartbeat(self, minimum: int, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            logs = self.engine.docker("logs", "c1").stdout
            if heartbeats(logs) and heartbeats(logs)[-1] >= minimum:
                return logs
            if time.monotonic() > deadline:
                raise self.engine.failure(f"no heartbeat {minimum}:\n{logs}")
            time.sleep(0.2)

    def inspect(self) -> dict:
        status, body = self.engine.request_json("GET", "/containers/c1/json")
        self.assertEqual(status, 200)
        return body

    def test_update_keeps_identity(self):
        directory = tempfile.mkdtemp(prefix="emiso-update-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.engine.docker("import", write_version_two(directory), "refso3-sim:v2")
        before = self.inspect()
        since = str(int(time.time()) - 1)

        status, body = self.engine.request_json(
            "POST", "/containers/c1/so3/update",
            {"Image": "refso3-sim:v2", "MinReadySeconds": 1},
        )
        events = self.engine.docker(
            "events", "--since", since, "--until", str(int(time.time()) + 1),
            "--filter", "event=update", "--format",
            '{{.Action}} {{index .Actor.Attributes "step"}}',
        )

        self.assertEqual(status, 200, body)
        after = self.inspect()
        self.assertEqual(after["Id"], before["Id"])
        self.assertEqual(after["Name"], "/c1")
        self.assertEqual(after["Config"]["Labels"]["team"], "blue")
        self.assertEqual(after["Config"]["Image"], "refso3-sim:v2")
        self.assertEqual(after["State"]["Status"], "running")
        self.assertEqual(body["PreviousImage"], before["Image"])
        self.assertEqual(body["Image"], after["Image"])
        logs = self.wait_for_heartbeat(1)
        self.assertEqual(logs.count("Booting"), 2)
        self.assertEqual(
            heartbeats(logs.split("Booting")[-1])[0], 1, "the new ME boots afresh"
        )
        slots = list((self.engine.data_dir / "agency" / "slots").glob("*.json"))
        self.assertEqual(len(slots), 1)
        self.assertEqual(
            events.stdout.splitlines(),
            [
                "update suspend-old",
                "update inject-new",
                "update start-new",
                "update terminate-old",
                "update done",
            ],
        )

    def test_crashing_image_rolls_back(self):
        self.engine.docker("import", str(CRASHER), "refso3-sim:crasher")
        before = self.inspect()
        counter = heartbeats(self.engine.docker("logs", "c1").stdout)[-1]
        since = str(int(time.time()) - 1)

        status, body = self.engine.request_json(
            "POST", "/containers/c1/so3/update",
            {"Image": "refso3-sim:crasher", "MinReadySeconds": 4},
        )
        events = self.engine.docker(
            "events", "--since", since, "--until", str(int(time.time()) + 1),
            "--filter", "event=update", "--format",
            '{{index .Actor.Attributes "step"}}',
        )

        self.assertEqual(status, 500)
        self.assertIn("rolled back", body["message"])
        after = self.inspect()
        self.assertEqual(after, before)
        logs = self.wait_for_heartbeat(counter + 2)
        old_part, crasher_part = logs.split("ME name: SOO.fault-sim")
        last_before = heartbeats(old_part)[-1]
        self.assertIn(last_before + 1, heartbeats(crasher_part))
        self.assertEqual(logs.count("Booting"), 2)
        slots = list((self.engine.data_dir / "agency" / "slots").glob("*.json"))
        self.assertEqual(len(slots), 1)
        self.assertEqual(
            events.stdout.split(),
            ["suspend-old", "inject-new", "start-new", "rollback", "rolled-back"],
        )

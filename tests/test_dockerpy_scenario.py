"""
End-to-end scenario: docker-py drives a real engine process with the
simulated agency and the sample SO3 images.
"""

import re
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.engineprocess import shared_engine

try:
    import docker
except ImportError:
    docker = None

CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")
WAIT_TIMEOUT = 20.0


class DockerPyScenarioTests(SynchronousTestCase):
    """
    docker-py's high-level client against one engine shared by the class.
    """

    def setUp(self):
        if docker is None:
            self.skipTest("docker-py is not installed")
        self.engine = shared_engine(type(self).__name__)
        self.client = docker.DockerClient(
            base_url=self.engine.base_url, version="auto", timeout=60
        )
        self.addCleanup(self.client.close)

    def create_container(self, name: str):
        self.addCleanup(self.remove_quietly, name)
        return self.client.containers.create("refso3-sim", name=name)

    def remove_quietly(self, name: str) -> None:
        try:
            self.client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass

    def wait_for_log(self, container, text: bytes) -> bytes:
        deadline = time.monotonic() + WAIT_TIMEOUT
        logs = container.logs()
        while text not in logs and time.monotonic() < deadline:
            time.sleep(0.2)
            logs = container.logs()
        return logs

    def test_ping(self):
        self.assertIs(self.client.ping(), True)

    def test_version_api(self):
        version = self.client.version()

        self.assertEqual(version["ApiVersion"], "1.44")
        self.assertEqual(self.client.api.api_version, "1.44")

    def test_info_counts(self):
        info = self.client.info()

        self.assertIsInstance(info["Containers"], int)
        self.assertIsInstance(info["Images"], int)

    def test_images_list_samples(self):
        tags = [tag for image in self.client.images.list() for tag in image.tags]

        self.assertIn("refso3-sim:latest", tags)
        self.assertIn("blinky-sim:latest", tags)

    def test_image_get_sample(self):
        image = self.client.images.get("refso3-sim")

        self.assertRegex(image.id, r"^sha256:[0-9a-f]{64}$")
        self.assertIn("refso3-sim:latest", image.tags)

    def test_container_lifecycle(self):
        container = self.create_container("py-demo")
        created_status = container.status

        container.start()
        container.reload()
        running_status = container.status
        listed = [item.name for item in self.client.containers.list()]
        logs = self.wait_for_log(container, b"heartbeat 1")
        container.stop(timeout=10)
        container.reload()
        stopped_state = container.attrs["State"]
        container.remove()

        self.assertRegex(container.id, CONTAINER_ID)
        self.assertEqual(created_status, "created")
        self.assertEqual(running_status, "running")
        self.assertIn("py-demo", listed)
        self.assertIn(b"SO3", logs)
        self.assertIn(b"heartbeat 1", logs)
        self.assertEqual(stopped_state["Status"], "exited")
        self.assertEqual(stopped_state["ExitCode"], 0)
        self.assertRaises(docker.errors.NotFound, self.client.containers.get, "py-demo")

    def test_get_by_id_prefix(self):
        container = self.create_container("py-prefix")

        found = self.client.containers.get(container.id[:12])

        self.assertEqual(found.id, container.id)
        self.assertEqual(found.name, "py-prefix")

    def test_list_all_includes_created(self):
        self.create_container("py-created")

        running = [item.name for item in self.client.containers.list()]
        everything = [item.name for item in self.client.containers.list(all=True)]

        self.assertNotIn("py-created", running)
        self.assertIn("py-created", everything)

    def test_get_unknown_container(self):
        self.assertRaises(docker.errors.NotFound, self.client.containers.get, "nosuch")

    def test_get_unknown_image(self):
        self.assertRaises(
            docker.errors.ImageNotFound, self.client.images.get, "nosuch"
        )

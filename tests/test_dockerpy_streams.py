"""
docker-py's streaming calls (logs, events, stats) and its error classes
against a real engine process with the simulated agency.
"""

import os
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.engineprocess import shared_engine

try:
    import docker
except ImportError:
    docker = None

DEMO = "py-stream-demo"
WAIT_TIMEOUT = 20.0


class DockerPyStreamTests(SynchronousTestCase):
    """
    docker-py configured from the environment, as C{docker.from_env()} is,
    against one engine shared by the class.
    """

    def setUp(self):
        if docker is None:
            self.skipTest("docker-py is not installed")
        self.engine = shared_engine(type(self).__name__)
        environment = dict(os.environ, DOCKER_HOST=self.engine.docker_host)
        environment.pop("DOCKER_TLS_VERIFY", None)
        environment.pop("DOCKER_CERT_PATH", None)
        self.client = docker.from_env(environment=environment, timeout=30)
        self.addCleanup(self.client.close)

    def running_demo(self):
        try:
            container = self.client.containers.get(DEMO)
        except docker.errors.NotFound:
            container = self.client.containers.create("refso3-sim", name=DEMO)
        if container.status != "running":
            container.start()
        deadline = time.monotonic() + WAIT_TIMEOUT
        while b"heartbeat 1" not in container.logs():
            if time.monotonic() > deadline:
                self.fail("the demo container printed no heartbeat")
            time.sleep(0.2)
        container.reload()
        return container

    def test_ping(self):
        self.assertIs(self.client.ping(), True)

    def test_containers_list(self):
        container = self.running_demo()

        listed = self.client.containers.list(filters={"name": DEMO})

        self.assertEqual([item.id for item in listed], [container.id])
        self.assertEqual(listed[0].status, "running")

    def test_logs_stream(self):
        container = self.running_demo()

        stream = container.logs(stream=True, follow=True, tail=2)
        lines = [next(stream) for _ in range(3)]
        stream.close()

        for line in lines:
            self.assertTrue(line.endswith(b"\n"))
        self.assertIn(b"heartbeat", lines[-1])

    def test_events_until(self):
        container = self.running_demo()
        since = int(time.time()) - 3600
        until = int(time.time()) + 1

        events = list(
            self.client.events(
                since=since,
                until=until,
                decode=True,
                filters={"type": "container", "container": DEMO},
            )
        )

        actions = [event["Action"] for event in events]
        self.assertIn("start", actions)
        for event in events:
            self.assertEqual(event["Actor"]["ID"], container.id)

    def test_stats_once(self):
        container = self.running_demo()

        stats = container.stats(stream=False)

        self.assertEqual(stats["id"], container.id)
        self.assertIn("total_usage", stats["precpu_stats"]["cpu_usage"])
        self.assertGreater(stats["memory_stats"]["limit"], 0)

    def test_top(self):
        container = self.running_demo()

        top = container.top()

        self.assertIn("PID", top["Titles"])
        self.assertEqual(len(top["Processes"]), 1)

    def test_rename(self):
        container = self.client.containers.create("blinky-sim", name="py-old-name")
        self.addCleanup(container.remove, force=True)

        container.rename("py-new-name")
        container.reload()

        self.assertEqual(container.name, "py-new-name")
        self.assertRaises(
            docker.errors.NotFound, self.client.containers.get, "py-old-name"
        )

    def test_stats_unknown_container(self):
        self.assertRaises(
            docker.errors.NotFound, self.client.api.stats, "nosuch", stream=False
        )

    def test_unknown_volume_network(self):
        self.assertRaises(docker.errors.NotFound, self.client.volumes.get, "nosuch")
        self.assertRaises(docker.errors.NotFound, self.client.networks.get, "nosuch")

    def test_swarm_api_error(self):
        with self.assertRaises(docker.errors.APIError) as caught:
            self.client.api.inspect_swarm()

        self.assertEqual(caught.exception.status_code, 503)

    def test_pull_image_not_found(self):
        self.assertRaises(
            docker.errors.ImageNotFound, self.client.images.pull, "busybox", "latest"
        )

"""Portainer's "Recreate" of a container, replayed against a real engine.

Portainer's backend recreates a container with the Docker Go client: it
inspects the container, stops it, renames it out of the way, creates a new
container with the old name and the inspected Config and HostConfig,
starts it and removes the old one. The result is a new container (new id)
with the old name and configuration.
"""

import json
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.engineprocess import shared_engine

#: The API version prefix of Portainer's Go client after negotiation.
PREFIX = "/v1.44"

WAIT_TIMEOUT = 15.0


class PortainerRecreateTests(SynchronousTestCase):
    """
    The request sequence of Portainer's container recreate, on SO3 containers.
    """

    def setUp(self):
        self.engine = shared_engine(type(self).__name__)

    def call(self, method: str, path: str, body=None, expected: int = 200):
        status, _, data = self.engine.request(method, PREFIX + path, body)
        self.assertEqual(status, expected, f"{method} {path}: {data!r}")
        return json.loads(data) if data.strip() else None

    def wait_for_log(self, name: str, text: bytes) -> bytes:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while True:
            _, _, data = self.engine.request(
                "GET", f"{PREFIX}/containers/{name}/logs?stdout=1&stderr=1"
            )
            if text in data:
                return data
            if time.monotonic() > deadline:
                raise self.engine.failure(f"{text!r} not in the log of {name}")
            time.sleep(0.2)

    def recreate(self, container_id: str) -> str:
        """
        Replay Portainer's recreate of C{container_id}; return the new id.
        """
        inspected = self.call("GET", f"/containers/{container_id}/json")
        name = inspected["Name"].lstrip("/")
        self.call("POST", f"/containers/{container_id}/stop", expected=204)
        self.call(
            "POST", f"/containers/{container_id}/rename?name={name}-old", expected=204
        )
        body = dict(inspected["Config"])
        body["HostConfig"] = inspected["HostConfig"]
        body["NetworkingConfig"] = {
            "EndpointsConfig": inspected["NetworkSettings"]["Networks"] or {}
        }
        created = self.call(
            "POST", f"/containers/create?name={name}", body, expected=201
        )
        self.call("POST", f"/containers/{created['Id']}/start", expected=204)
        self.call(
            "DELETE", f"/containers/{container_id}?v=0&force=true", expected=204
        )
        return created["Id"]

    def test_recreate_running_container(self):
        created = self.call(
            "POST",
            "/containers/create?name=recreated",
            {
                "Image": "refso3-sim",
                "Labels": {"team": "blue"},
                "HostConfig": {"RestartPolicy": {"Name": "unless-stopped"}},
            },
            expected=201,
        )
        old_id = created["Id"]
        self.addCleanup(
            self.engine.request, "DELETE", f"{PREFIX}/containers/recreated?force=1"
        )
        self.call("POST", f"/containers/{old_id}/start", expected=204)
        self.wait_for_log(old_id, b"heartbeat 1")
        before = self.call("GET", f"/containers/{old_id}/json")

        new_id = self.recreate(old_id)

        after = self.call("GET", "/containers/recreated/json")
        self.assertNotEqual(new_id, old_id)
        self.assertEqual(after["Id"], new_id)
        self.assertEqual(after["State"]["Status"], "running")
        self.assertEqual(after["Config"]["Labels"], before["Config"]["Labels"])
        self.assertEqual(after["Config"]["Image"], "refso3-sim")
        self.assertEqual(
            after["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped"
        )
        status, _, _ = self.engine.request("GET", f"{PREFIX}/containers/{old_id}/json")
        self.assertEqual(status, 404)
        listed = self.call("GET", "/containers/json?all=1")
        names = [item["Names"] for item in listed]
        self.assertNotIn(["/recreated-old"], names)
        self.assertIn(b"heartbeat 1", self.wait_for_log(new_id, b"heartbeat 1"))

"""
Replay of the requests Portainer sends for a "Docker Standalone" environment,
against a real engine process, with the checks Portainer's code applies to
the responses (types, the fields it dereferences, the status texts it parses).

Portainer's backend talks unversioned or at the negotiated 1.44; its browser
code prefixes raw calls with C{/v1.41}. Every JSON body is validated against
the Docker Engine API 1.44 specification by L{EngineProcess.request}.
"""

import io
import json
import math
import struct
import tarfile
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.engineprocess import SAMPLES_DIR, shared_engine

ZERO_TIME = "0001-01-01T00:00:00Z"
DEMO = "portainer-demo"
WAIT_TIMEOUT = 20.0

# Portainer's createStatus (app/react/docker/containers/utils.ts) reads the
# lower-cased Status text; anything without these words is "running".
STATUS_WORDS = ("paused", "dead", "created", "stopped", "exited")


def portainer_status(status_text: str) -> str:
    """
    Derive the state Portainer displays from Docker's C{Status} text.
    """
    text = status_text.lower()
    for word in STATUS_WORDS:
        if word in text:
            return word
    return "running"


def split_frames(data: bytes) -> list:
    """
    Split a multiplexed log body into C{(stream, payload)} pairs.
    """
    frames = []
    offset = 0
    while offset < len(data):
        stream, size = struct.unpack(">BxxxI", data[offset : offset + 8])
        frames.append((stream, data[offset + 8 : offset + 8 + size]))
        offset += 8 + size
    return frames


class PortainerReplayTests(SynchronousTestCase):
    """
    Portainer's snapshot, dashboard and container, image and events pages
    against one engine shared by the class.
    """

    def setUp(self):
        self.engine = shared_engine(type(self).__name__)

    def get(self, path: str):
        status, headers, data = self.engine.request("GET", path)
        self.assertEqual(status, 200, data)
        return headers, json.loads(data)

    def demo_container(self) -> dict:
        """
        Return the inspect body of a running container, started once for the
        class and kept running.
        """
        status, _, data = self.engine.request("GET", f"/containers/{DEMO}/json")
        if status == 404:
            self.engine.request(
                "POST", f"/containers/create?name={DEMO}", {"Image": "refso3-sim"}
            )
        if status == 404 or not json.loads(data)["State"]["Running"]:
            self.engine.request("POST", f"/containers/{DEMO}/start")
        self.wait_for_log(DEMO, b"heartbeat 1")
        return self.get(f"/containers/{DEMO}/json")[1]

    def wait_for_log(self, name: str, text: bytes) -> bytes:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while True:
            _, _, data = self.engine.request(
                "GET", f"/containers/{name}/logs?stdout=1&stderr=1"
            )
            if text in data or time.monotonic() > deadline:
                return data
            time.sleep(0.2)

    def created_container(self, name: str) -> str:
        self.addCleanup(self.engine.request, "DELETE", f"/containers/{name}?force=1")
        status, _, data = self.engine.request(
            "POST", f"/containers/create?name={name}", {"Image": "blinky-sim"}
        )
        self.assertEqual(status, 201, data)
        return json.loads(data)["Id"]

    def test_ping_headers(self):
        status, headers, _ = self.engine.request("HEAD", "/_ping")

        self.assertEqual(status, 200)
        self.assertEqual(headers["Api-Version"], "1.44")
        self.assertEqual(headers["Ostype"], "linux")
        self.assertEqual(headers["Swarm"], "inactive")

    def test_snapshot_info(self):
        _, first = self.get("/v1.44/info")
        _, second = self.get("/info")

        self.assertIsInstance(first["Plugins"], dict)
        self.assertIsInstance(first["Plugins"]["Volume"], list)
        self.assertEqual(first["Swarm"]["NodeID"], "")
        self.assertIs(first["Swarm"]["ControlAvailable"], False)
        self.assertNotIn("Cluster", first["Swarm"])
        self.assertEqual(first["ID"], second["ID"])
        self.assertTrue(first["ID"])
        self.assertNotIn(first["Architecture"], ("amd64", "arm64", "arm"))
        self.assertIsInstance(first["NCPU"], int)
        self.assertIsInstance(first["MemTotal"], int)

    def test_snapshot_containers(self):
        self.demo_container()

        _, containers = self.get("/containers/json?all=1")
        running = [c for c in containers if c["State"] == "running"]
        inspected = [self.get(f"/containers/{c['Id']}/json")[1] for c in running]

        self.assertTrue(running)
        for body in inspected:
            self.assertIn(body["HostConfig"]["DeviceRequests"], (None, []))

    def test_snapshot_images_volumes_networks(self):
        self.demo_container()

        _, images = self.get("/images/json")
        _, volumes = self.get("/volumes")
        _, networks = self.get("/networks")

        used = [i for i in images if "refso3-sim:latest" in i["RepoTags"]]
        self.assertEqual(len(used), 1)
        self.assertGreaterEqual(used[0]["Containers"], 1)
        self.assertIsInstance(used[0]["Created"], int)
        self.assertEqual(volumes["Volumes"], [])
        self.assertEqual(networks, [])

    def test_snapshot_version(self):
        _, version = self.get("/version")

        names = [component["Name"].lower() for component in version["Components"]]
        self.assertFalse([name for name in names if "podman" in name])
        self.assertEqual(version["ApiVersion"], "1.44")
        self.assertEqual(version["MinAPIVersion"], "1.24")

    def test_ui_prefix_1_41(self):
        headers, containers = self.get("/v1.41/containers/json?all=true")

        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertIsInstance(containers, list)

    def test_dashboard_sequence(self):
        self.demo_container()

        _, containers = self.get("/containers/json?all=1")
        _, images = self.get("/images/json")
        _, info = self.get("/info")
        _, volumes = self.get("/volumes")
        _, networks = self.get("/networks")

        self.assertEqual(info["Containers"], len(containers))
        self.assertEqual(info["Images"], len(images))
        self.assertGreaterEqual(info["ContainersRunning"], 1)
        self.assertIsInstance(volumes["Volumes"], list)
        self.assertIsInstance(networks, list)

    def test_container_list_status(self):
        self.demo_container()
        self.created_container("portainer-created")

        _, containers = self.get(
            '/v1.41/containers/json?all=true&filters={"name":["portainer-"]}'
        )
        by_name = {c["Names"][0]: c for c in containers}

        demo = by_name[f"/{DEMO}"]
        created = by_name["/portainer-created"]
        self.assertRegex(demo["Status"], r"^Up ")
        self.assertEqual(portainer_status(demo["Status"]), "running")
        self.assertEqual(created["Status"], "Created")
        self.assertEqual(portainer_status(created["Status"]), "created")
        self.assertIsInstance(demo["Created"], int)
        self.assertRegex(demo["ImageID"], r"^sha256:[0-9a-f]{64}$")

    def test_container_details(self):
        body = self.demo_container()

        labels = body["Config"]["Labels"]
        self.assertEqual(labels["org.soo.me.name"], "SOO.refso3-sim")
        self.assertIn("org.soo.me.slot", labels)
        self.assertEqual(labels["org.soo.me.state"], "living")
        self.assertIs(body["Config"]["Tty"], False)
        self.assertEqual(body["HostConfig"]["LogConfig"]["Type"], "json-file")
        self.assertIsNone(body["HostConfig"]["DeviceRequests"])
        self.assertEqual(body["HostConfig"]["RestartPolicy"]["Name"], "no")
        self.assertEqual(body["State"]["FinishedAt"], ZERO_TIME)
        self.assertIs(body["State"]["Running"], True)

    def test_logs_polling(self):
        container = self.demo_container()
        path = (
            f"/v1.41/containers/{container['Id']}/logs"
            "?since=0&stderr=1&stdout=1&tail=100&timestamps=1"
        )

        _, first_headers, first = self.engine.request("GET", path)
        time.sleep(3)
        _, _, second = self.engine.request("GET", path)

        first_frames = split_frames(first)
        second_frames = split_frames(second)
        self.assertEqual(
            first_headers["Content-Type"], "application/vnd.docker.raw-stream"
        )
        self.assertTrue(first_frames)
        self.assertLessEqual(len(second_frames), 100)
        self.assertGreater(len(second_frames), len(first_frames) - 1)
        self.assertNotEqual(first_frames[-1], second_frames[-1])
        for stream, payload in second_frames:
            self.assertEqual(stream, 1)
            self.assertRegex(payload[:31], rb"^\d{4}-\d\d-\d\dT[\d:]{8}\.\d{9}Z $")
            self.assertTrue(payload.endswith(b"\n"))

    def test_stats_polling(self):
        container = self.demo_container()
        path = f"/v1.41/containers/{container['Id']}/stats?stream=false"

        _, first = self.get(path)
        time.sleep(1)
        _, second = self.get(path)

        self.assertEqual(second["preread"], first["read"])
        self.assertEqual(
            second["precpu_stats"]["cpu_usage"]["total_usage"],
            first["cpu_stats"]["cpu_usage"]["total_usage"],
        )
        self.assertEqual(
            second["precpu_stats"]["system_cpu_usage"],
            first["cpu_stats"]["system_cpu_usage"],
        )
        self.assertGreater(
            second["cpu_stats"]["system_cpu_usage"],
            second["precpu_stats"]["system_cpu_usage"],
        )
        self.assertIsInstance(second["cpu_stats"]["online_cpus"], int)
        self.assertGreater(second["memory_stats"]["usage"], 0)
        self.assertEqual(second["memory_stats"]["limit"], 16 * 1024 * 1024)
        self.assertNotIn("stats", second["memory_stats"])
        self.assertEqual(second["name"], f"/{DEMO}")

    def test_stats_not_running(self):
        container_id = self.created_container("portainer-stats-idle")

        _, body = self.get(f"/containers/{container_id}/stats?stream=false")

        self.assertEqual(body["id"], container_id)
        self.assertEqual(body["read"], ZERO_TIME)
        self.assertEqual(body["cpu_stats"]["cpu_usage"]["total_usage"], 0)

    def test_top_not_running(self):
        self.created_container("portainer-top-idle")

        status, _, data = self.engine.request(
            "GET", "/containers/portainer-top-idle/top"
        )

        self.assertEqual(status, 409)
        self.assertIn("is not running", json.loads(data)["message"])

    def test_events_window(self):
        container = self.demo_container()
        now = math.ceil(time.time())

        status, headers, data = self.engine.request(
            "GET", f"/v1.41/events?since={now - 86400}&until={now}"
        )

        events = [json.loads(line) for line in data.splitlines()]
        mine = [e for e in events if e["Actor"]["ID"] == container["Id"]]
        self.assertEqual(status, 200)
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertIn("start", [e["Action"] for e in mine])
        for event in events:
            self.assertLessEqual(event["time"], now)
            for value in event["Actor"]["Attributes"].values():
                self.assertIsInstance(value, str)

    def test_image_import_load(self):
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(SAMPLES_DIR / "blinky-sim.itb", arcname="portainer-upload.itb")
        self.addCleanup(
            self.engine.request, "DELETE", "/images/portainer-upload:latest"
        )

        status, headers, data = self.engine.request(
            "POST",
            "/v1.41/images/load?quiet=1",
            archive.getvalue(),
            {"Content-Type": "application/x-tar"},
        )

        self.assertEqual(status, 200)
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(
            json.loads(data), {"stream": "Loaded image: portainer-upload:latest\n"}
        )

    def test_image_details_history(self):
        _, image = self.get("/v1.41/images/refso3-sim:latest/json")
        _, history = self.get("/v1.41/images/refso3-sim:latest/history")

        self.assertEqual(image["Os"], "linux")
        self.assertEqual(image["Config"]["Labels"]["org.soo.me.name"], "SOO.refso3-sim")
        self.assertEqual(history[0]["Id"], image["Id"])
        self.assertIsInstance(history[0]["Created"], int)

    def test_unknown_objects_404(self):
        paths = ["/volumes/nosuch", "/networks/nosuch", "/plugins/nosuch/json"]

        answers = [self.engine.request("GET", path) for path in paths]

        for status, headers, data in answers:
            self.assertEqual(status, 404)
            self.assertEqual(headers["Content-Type"], "application/json")
            self.assertEqual(headers["Api-Version"], "1.44")
            self.assertIn("nosuch", json.loads(data)["message"])

    def test_swarm_routes_503(self):
        status, _, data = self.engine.request("GET", "/services")

        self.assertEqual(status, 503)
        self.assertIn("not a swarm manager", json.loads(data)["message"])

    def test_create_volume_501(self):
        status, _, data = self.engine.request("POST", "/volumes/create", {"Name": "v"})

        self.assertEqual(status, 501)
        self.assertIn("volumes are not supported", json.loads(data)["message"])

    def test_image_tag_remove(self):
        status, headers, data = self.engine.request(
            "POST", "/v1.41/images/refso3-sim:latest/tag?repo=portainer-tag&tag=v1"
        )
        _, images = self.get("/images/json")
        removed_status, _, removed = self.engine.request(
            "DELETE", "/v1.41/images/portainer-tag:v1?force=true"
        )

        tags = [tag for image in images for tag in image["RepoTags"]]
        self.assertEqual(status, 201)
        self.assertEqual(data, b"")
        self.assertNotIn("Content-Type", headers)
        self.assertEqual(headers["Api-Version"], "1.44")
        self.assertIn("portainer-tag:v1", tags)
        self.assertEqual(removed_status, 200)
        self.assertEqual(json.loads(removed), [{"Untagged": "portainer-tag:v1"}])

    def test_container_actions(self):
        self.created_container("portainer-actions")
        base = "/v1.41/containers/portainer-actions"

        codes = [self.engine.request("POST", f"{base}/start")[0]]
        self.wait_for_log("portainer-actions", b"heartbeat 1")
        codes.append(self.engine.request("POST", f"{base}/pause")[0])
        _, paused = self.get(
            '/containers/json?all=1&filters={"name":["portainer-actions"]}'
        )
        codes.append(self.engine.request("POST", f"{base}/unpause")[0])
        codes.append(self.engine.request("POST", f"{base}/stop")[0])
        _, stopped = self.get(
            '/containers/json?all=1&filters={"name":["portainer-actions"]}'
        )

        self.assertEqual(codes, [204, 204, 204, 204])
        self.assertEqual(paused[0]["State"], "paused")
        self.assertRegex(paused[0]["Status"], r"^Up .* \(Paused\)$")
        self.assertEqual(portainer_status(paused[0]["Status"]), "paused")
        self.assertRegex(stopped[0]["Status"], r"^Exited \(0\) ")
        self.assertEqual(portainer_status(stopped[0]["Status"]), "exited")

    def test_events_until_only(self):
        container = self.demo_container()

        _, _, data = self.engine.request("GET", f"/events?until={time.time():.6f}")

        ids = [json.loads(line)["Actor"]["ID"] for line in data.splitlines()]
        self.assertIn(container["Id"], ids)

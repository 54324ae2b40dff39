"""
End-to-end scenarios: the real docker CLI drives a real engine process with
the simulated agency and the sample SO3 images.
"""

import json
import re
import shutil
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.engineprocess import (
    DOCKER_CLI,
    PROJECT_ROOT,
    SAMPLES_DIR,
    docker_cli_available,
    shared_engine,
)

CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")
LOG_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
HEARTBEAT = re.compile(r"heartbeat (\d+)")
SAMPLE_IMAGES = ("refso3-sim:latest", "blinky-sim:latest")
WAIT_TIMEOUT = 20.0


def wait_until(predicate, timeout: float = WAIT_TIMEOUT, interval: float = 0.2):
    """
    Call C{predicate} until it returns a true value or C{timeout} seconds
    pass.

    @return: the last value returned by C{predicate} (false on timeout).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class DockerCliScenarioTests(SynchronousTestCase):
    """
    The docker CLI against one engine shared by the whole class.

    Each test removes the containers and images it creates, because the
    simulated smart object has only five ME slots.
    """

    def setUp(self):
        if not docker_cli_available():
            self.skipTest(f"docker CLI not found at {DOCKER_CLI}")
        self.engine = shared_engine(type(self).__name__)

    def docker(self, *args, check=True, timeout=60):
        return self.engine.docker(*args, check=check, timeout=timeout)

    def inspect(self, name: str) -> dict:
        """
        Run C{docker inspect NAME} and return its only object.
        """
        output = self.docker("inspect", name).stdout
        objects = json.loads(output)
        self.assertEqual(len(objects), 1, output)
        return objects[0]

    def state(self, name: str) -> dict:
        return self.inspect(name)["State"]

    def remove_later(self, name: str) -> None:
        self.addCleanup(self.docker, "rm", "-f", name, check=False)

    def run_container(self, name: str, image: str = "refso3-sim") -> str:
        """
        Start a detached container and wait until its ME prints a heartbeat.

        @return: the container ID printed by C{docker run -d}.
        """
        self.remove_later(name)
        container_id = self.docker("run", "-d", "--name", name, image).stdout.strip()
        self.wait_for_heartbeats(name, 1)
        return container_id

    def heartbeats(self, name: str) -> list:
        output = self.docker("logs", name).stdout
        return [int(number) for number in HEARTBEAT.findall(output)]

    def wait_for_heartbeats(self, name: str, count: int) -> list:
        reached = wait_until(lambda: len(self.heartbeats(name)) >= count)
        if not reached:
            raise self.engine.failure(
                f"container {name} printed fewer than {count} heartbeats "
                f"within {WAIT_TIMEOUT} s; docker logs:\n"
                f"{self.docker('logs', name, check=False).stdout}"
            )
        return self.heartbeats(name)

    def ps_line(self, name: str, *options) -> str:
        """
        Return the C{docker ps} line of C{name} as C{state|status}, or
        C{""} when the container is not listed.
        """
        output = self.docker(
            "ps", *options, "--format", "{{.Names}}|{{.State}}|{{.Status}}"
        ).stdout
        for line in output.splitlines():
            listed_name, _, rest = line.partition("|")
            if listed_name == name:
                return rest
        return ""

    def image_tags(self) -> list:
        output = self.docker(
            "images", "--format", "{{.Repository}}:{{.Tag}}"
        ).stdout
        return output.split()

    def assert_no_such_container(self, *args) -> None:
        result = self.docker(*args, check=False)

        self.assertNotEqual(result.returncode, 0, f"docker {' '.join(args)}")
        self.assertIn("No such container: nosuch", result.stderr)

    def test_version_reports_api(self):
        result = self.docker("version")

        api_version = self.docker(
            "version", "--format", "{{.Server.APIVersion}}"
        ).stdout.strip()

        self.assertIn("Server:", result.stdout)
        self.assertEqual(api_version, "1.44")

    def test_info_succeeds(self):
        result = self.docker("info")

        self.assertIn("Containers:", result.stdout)
        self.assertNotIn("ERROR", result.stdout + result.stderr)

    def test_images_lists_samples(self):
        tags = self.image_tags()

        for sample in SAMPLE_IMAGES:
            self.assertIn(sample, tags)

    def test_import_tags_image(self):
        self.addCleanup(self.docker, "rmi", "blinky-imported:v1", check=False)

        result = self.docker(
            "import", str(SAMPLES_DIR / "blinky-sim.itb"), "blinky-imported:v1"
        )

        self.assertRegex(result.stdout.strip(), r"^sha256:[0-9a-f]{64}$")
        self.assertIn("blinky-imported:v1", self.image_tags())

    def test_load_tar_archive(self):
        archive_dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, archive_dir, True)
        archive = Path(archive_dir) / "blinky.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(SAMPLES_DIR / "blinky-sim.itb", arcname="blinky-sim.itb")

        result = self.docker("load", "-i", str(archive))

        self.assertIn("Loaded image", result.stdout)

    def test_create_then_start(self):
        self.remove_later("c1")

        container_id = self.docker("create", "--name", "c1", "refso3-sim").stdout
        created = self.ps_line("c1", "-a")
        started = self.docker("start", "c1").stdout

        self.assertRegex(container_id.strip(), CONTAINER_ID)
        self.assertEqual(created, "created|Created")
        self.assertEqual(started.strip(), "c1")
        self.assertEqual(self.state("c1")["Status"], "running")

    def test_run_prints_id(self):
        self.remove_later("demo")

        result = self.docker("run", "-d", "--name", "demo", "refso3-sim")

        self.assertRegex(result.stdout.strip(), CONTAINER_ID)

    def test_ps_shows_running(self):
        self.run_container("demo")

        line = self.ps_line("demo")

        self.assertRegex(line, r"^running\|Up ")

    def test_ps_all_shows_exited(self):
        self.run_container("demo")
        self.docker("stop", "demo")

        running_line = self.ps_line("demo")
        all_line = self.ps_line("demo", "-a")

        self.assertEqual(running_line, "")
        self.assertRegex(all_line, r"^exited\|Exited \(0\) ")

    def test_inspect_running_container(self):
        container_id = self.run_container("demo")

        details = self.inspect("demo")

        self.assertEqual(details["Id"], container_id)
        self.assertEqual(details["Name"], "/demo")
        self.assertEqual(details["State"]["Status"], "running")
        self.assertIs(details["State"]["Running"], True)
        self.assertIs(details["Config"]["Tty"], False)

    def test_logs_show_banner(self):
        self.run_container("demo")

        output = self.docker("logs", "demo").stdout

        self.assertIn("SO3", output)
        self.assertIn("heartbeat 1", output)

    def test_logs_tail_two(self):
        self.run_container("demo")
        self.wait_for_heartbeats("demo", 3)

        output = self.docker("logs", "--tail", "2", "demo").stdout

        self.assertEqual(len(output.splitlines()), 2, output)

    def test_logs_timestamps(self):
        self.run_container("demo")

        output = self.docker("logs", "-t", "demo").stdout

        lines = output.splitlines()
        self.assertTrue(lines)
        for line in lines:
            self.assertRegex(line[:30], LOG_TIMESTAMP)
            self.assertEqual(line[30:31], " ", line)

    def test_logs_follow_streams(self):
        self.run_container("demo")
        before = max(self.heartbeats("demo"))
        follower = self.engine.docker_popen("logs", "-f", "demo")
        self.addCleanup(follower.kill)
        chunks = []
        reader = threading.Thread(target=lambda: chunks.append(follower.stdout.read()))
        reader.start()

        time.sleep(3)
        still_following = follower.poll() is None
        follower.terminate()
        reader.join(timeout=10)
        follower.wait(timeout=10)

        numbers = [int(number) for number in HEARTBEAT.findall("".join(chunks))]
        self.assertTrue(still_following, "docker logs -f ended while running")
        self.assertIn("SO3", "".join(chunks))
        self.assertGreater(max(numbers, default=0), before)

    def test_pause_then_unpause(self):
        self.run_container("demo")

        self.docker("pause", "demo")
        paused_line = self.ps_line("demo")
        paused_state = self.state("demo")
        self.docker("unpause", "demo")
        unpaused_state = self.state("demo")

        self.assertRegex(paused_line, r"^paused\|Up .*\(Paused\)$")
        self.assertEqual(paused_state["Status"], "paused")
        self.assertIs(paused_state["Paused"], True)
        self.assertEqual(unpaused_state["Status"], "running")
        self.assertIs(unpaused_state["Paused"], False)

    def test_unpause_resumes_heartbeats(self):
        self.run_container("demo")
        self.docker("pause", "demo")
        before = max(self.heartbeats("demo"))

        self.docker("unpause", "demo")

        numbers = self.wait_for_heartbeats("demo", len(self.heartbeats("demo")) + 1)
        self.assertGreater(max(numbers), before)

    def test_stop_exits_zero(self):
        self.run_container("demo")

        result = self.docker("stop", "demo")

        state = self.state("demo")
        self.assertEqual(result.stdout.strip(), "demo")
        self.assertEqual(state["Status"], "exited")
        self.assertIs(state["Running"], False)
        self.assertEqual(state["ExitCode"], 0)

    def test_restart_runs_again(self):
        self.run_container("demo")
        first_start = self.state("demo")["StartedAt"]

        self.docker("restart", "demo")

        state = self.state("demo")
        self.assertEqual(state["Status"], "running")
        self.assertNotEqual(state["StartedAt"], first_start)

    def test_kill_exit_code(self):
        self.run_container("demo")

        self.docker("kill", "demo")

        state = self.state("demo")
        self.assertEqual(state["Status"], "exited")
        self.assertEqual(state["ExitCode"], 137)

    def test_wait_prints_exit_code(self):
        self.run_container("demo")
        waiter = self.engine.docker_popen("wait", "demo")
        self.addCleanup(waiter.kill)

        self.docker("kill", "demo")
        stdout, stderr = waiter.communicate(timeout=30)

        self.assertEqual(waiter.returncode, 0, stderr)
        self.assertEqual(stdout.strip(), "137")

    def test_wait_exited_container(self):
        self.run_container("demo")
        self.docker("stop", "demo")

        result = self.docker("wait", "demo")

        self.assertEqual(result.stdout.strip(), "0")

    def test_rm_removes_container(self):
        self.run_container("demo")
        self.docker("stop", "demo")

        result = self.docker("rm", "demo")

        self.assertEqual(result.stdout.strip(), "demo")
        self.assertEqual(self.ps_line("demo", "-a"), "")

    def test_rm_running_conflict(self):
        self.run_container("demo")

        result = self.docker("rm", "demo", check=False)

        self.assertNotEqual(result.returncode, 0)
        self.assertIn("running", result.stderr)
        self.assertEqual(self.state("demo")["Status"], "running")

    def test_rm_force_running(self):
        self.run_container("demo")

        result = self.docker("rm", "-f", "demo")

        self.assertEqual(result.stdout.strip(), "demo")
        self.assertEqual(self.ps_line("demo", "-a"), "")

    def test_rmi_removes_tag(self):
        self.docker("import", str(SAMPLES_DIR / "blinky-sim.itb"), "blinky-rmi:v1")
        self.addCleanup(self.docker, "rmi", "blinky-rmi:v1", check=False)

        result = self.docker("rmi", "blinky-rmi:v1")

        self.assertIn("Untagged: blinky-rmi:v1", result.stdout)
        self.assertNotIn("blinky-rmi:v1", self.image_tags())

    def test_tag_adds_reference(self):
        self.addCleanup(self.docker, "rmi", "blinky-tagged:x", check=False)

        self.docker("tag", "blinky-sim", "blinky-tagged:x")

        self.assertIn("blinky-tagged:x", self.image_tags())

    def test_run_rm_removes_container(self):
        self.remove_later("ephemeral")
        attached = self.engine.docker_popen("run", "--rm", "--name", "ephemeral", "refso3-sim")
        self.addCleanup(_end_process, attached)
        self.assertTrue(wait_until(lambda: self.ps_line("ephemeral") != ""))
        self.wait_for_heartbeats("ephemeral", 1)

        self.docker("stop", "ephemeral")

        self.assertEqual(attached.wait(timeout=30), 0, attached.stderr.read())
        self.assertTrue(wait_until(lambda: self.ps_line("ephemeral", "-a") == ""))

    def test_unknown_container_errors(self):
        commands = [
            ("start", "nosuch"),
            ("stop", "nosuch"),
            ("restart", "nosuch"),
            ("kill", "nosuch"),
            ("pause", "nosuch"),
            ("unpause", "nosuch"),
            ("wait", "nosuch"),
            ("rm", "nosuch"),
            ("logs", "nosuch"),
            ("container", "inspect", "nosuch"),
        ]

        for command in commands:
            self.assert_no_such_container(*command)

    def test_rm_force_unknown_succeeds(self):
        # docker CLI 28 ignores "not found" errors when removing with -f.
        result = self.docker("rm", "-f", "nosuch", check=False)

        self.assertEqual(result.returncode, 0, result.stderr)

    def test_inspect_unknown_object(self):
        result = self.docker("inspect", "nosuch", check=False)

        self.assertNotEqual(result.returncode, 0)
        self.assertIn("No such object: nosuch", result.stderr)

    def test_unknown_image_errors(self):
        rmi = self.docker("rmi", "nosuch", check=False)
        inspect = self.docker("image", "inspect", "nosuch", check=False)

        self.assertNotEqual(rmi.returncode, 0)
        self.assertIn("No such image: nosuch", rmi.stderr)
        self.assertNotEqual(inspect.returncode, 0)
        self.assertIn("No such image: nosuch", inspect.stderr)

    def test_create_unknown_image(self):
        self.remove_later("c-nosuch")

        result = self.docker("create", "--name", "c-nosuch", "nosuch", check=False)

        self.assertNotEqual(result.returncode, 0)
        self.assertIn("nosuch", result.stderr)
        self.assertEqual(self.ps_line("c-nosuch", "-a"), "")


class ApiBodiesScenarioTests(SynchronousTestCase):
    """
    The engine's JSON bodies in each container state, read with
    L{EngineProcess.request}, which checks them against the Docker API 1.44
    specification.
    """

    def setUp(self):
        if not docker_cli_available():
            self.skipTest(f"docker CLI not found at {DOCKER_CLI}")
        self.engine = shared_engine(DockerCliScenarioTests.__name__)

    def get_json(self, path: str, expected_status: int = 200):
        status, body = self.engine.request_json("GET", path)
        if status != expected_status:
            raise self.engine.failure(
                f"GET {path} returned {status}, expected {expected_status}: {body!r}"
            )
        return body

    def post(self, path: str, expected_status: int = 204):
        status, _headers, data = self.engine.request("POST", path)
        if status != expected_status:
            raise self.engine.failure(
                f"POST {path} returned {status}, expected {expected_status}: {data!r}"
            )

    def test_system_bodies(self):
        status, headers, data = self.engine.request("GET", "/_ping")

        version = self.get_json("/version")
        info = self.get_json("/v1.44/info")

        self.assertEqual((status, data), (200, b"OK"))
        self.assertEqual(headers["Api-Version"], "1.44")
        self.assertEqual(version["ApiVersion"], "1.44")
        self.assertEqual(info["Swarm"]["LocalNodeState"], "inactive")

    def test_image_bodies(self):
        images = self.get_json("/images/json")

        details = self.get_json("/images/refso3-sim:latest/json")
        history = self.get_json("/images/refso3-sim/history")

        self.assertIn(details["Id"], [image["Id"] for image in images])
        self.assertIsInstance(history, list)

    def test_container_bodies_each_state(self):
        self.engine.docker("create", "--name", "api-states", "refso3-sim")
        self.addCleanup(self.engine.docker, "rm", "-f", "api-states", check=False)
        statuses = []

        statuses.append(self.get_json("/containers/api-states/json")["State"]["Status"])
        self.post("/containers/api-states/start")
        statuses.append(self.get_json("/containers/api-states/json")["State"]["Status"])
        self.post("/containers/api-states/pause")
        statuses.append(self.get_json("/containers/api-states/json")["State"]["Status"])
        self.post("/containers/api-states/unpause")
        self.post("/containers/api-states/stop")
        statuses.append(self.get_json("/containers/api-states/json")["State"]["Status"])
        listed = self.get_json("/containers/json?all=1")

        self.assertEqual(statuses, ["created", "running", "paused", "exited"])
        self.assertIn(["/api-states"], [item["Names"] for item in listed])

    def test_repeated_start_not_modified(self):
        self.engine.docker("run", "-d", "--name", "api-twice", "refso3-sim")
        self.addCleanup(self.engine.docker, "rm", "-f", "api-twice", check=False)

        self.post("/containers/api-twice/start", expected_status=304)
        self.post("/containers/api-twice/stop")
        self.post("/containers/api-twice/stop", expected_status=304)

    def test_unknown_names_not_found(self):
        paths = [
            "/containers/nosuch/json",
            "/containers/nosuch/logs?stdout=1",
            "/images/nosuch/json",
        ]

        for path in paths:
            body = self.get_json(path, expected_status=404)
            self.assertIn("No such", body["message"])

    def test_force_delete_unknown(self):
        status, body = self.engine.request_json(
            "DELETE", "/containers/nosuch?force=1"
        )

        self.assertEqual(status, 404)
        self.assertEqual(body["message"], "No such container: nosuch")

    def test_wait_body_exit_code(self):
        self.engine.docker("run", "-d", "--name", "api-wait", "refso3-sim")
        self.addCleanup(self.engine.docker, "rm", "-f", "api-wait", check=False)
        self.post("/containers/api-wait/kill")

        status, body = self.engine.request_json("POST", "/containers/api-wait/wait")

        self.assertEqual(status, 200)
        self.assertEqual(body["StatusCode"], 137)

    def test_import_and_delete_bodies(self):
        data = (SAMPLES_DIR / "blinky-sim.itb").read_bytes()
        self.addCleanup(self.engine.docker, "rmi", "api-import:v1", check=False)

        import_status, _headers, _data = self.engine.request(
            "POST", "/images/create?fromSrc=-&repo=api-import&tag=v1", body=data
        )
        tag_status, _headers, _data = self.engine.request(
            "POST", "/images/api-import:v1/tag?repo=api-import&tag=v2"
        )
        delete_status, deleted = self.engine.request_json(
            "DELETE", "/images/api-import:v2"
        )

        self.assertEqual(import_status, 200)
        self.assertEqual(tag_status, 201)
        self.assertEqual(delete_status, 200)
        self.assertEqual(deleted, [{"Untagged": "api-import:v2"}])

    def test_create_unknown_image_body(self):
        status, body = self.engine.request_json(
            "POST", "/containers/create?name=api-nosuch", body={"Image": "nosuch"}
        )

        self.assertEqual(status, 404)
        self.assertIn("No such image: nosuch", body["message"])

    def test_create_name_conflict(self):
        self.engine.docker("create", "--name", "api-taken", "refso3-sim")
        self.addCleanup(self.engine.docker, "rm", "-f", "api-taken", check=False)

        status, body = self.engine.request_json(
            "POST", "/containers/create?name=api-taken", body={"Image": "refso3-sim"}
        )

        self.assertEqual(status, 409)
        self.assertIn("api-taken", body["message"])

    def test_logs_without_stream(self):
        self.engine.docker("create", "--name", "api-logs", "refso3-sim")
        self.addCleanup(self.engine.docker, "rm", "-f", "api-logs", check=False)

        status, body = self.engine.request_json("GET", "/containers/api-logs/logs")

        self.assertEqual(status, 400)
        self.assertIn("at least one stream", body["message"])

    def test_pause_twice_conflict(self):
        self.engine.docker("run", "-d", "--name", "api-pause", "refso3-sim")
        self.addCleanup(self.engine.docker, "rm", "-f", "api-pause", check=False)
        self.post("/containers/api-pause/pause")

        status, body = self.engine.request_json("POST", "/containers/api-pause/pause")

        self.assertEqual(status, 409)
        self.assertIn("paused", body["message"])

    def test_version_prefix_limits(self):
        cases = [
            ("/v1.24/containers/json", 200),
            ("/v1.45/version", 400),
            ("/v1.23/version", 400),
            ("/v1.44/no/such/route", 404),
        ]

        for path, expected_status in cases:
            status, _headers, _data = self.engine.request("GET", path)
            self.assertEqual(status, expected_status, path)


def _end_process(process) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate()

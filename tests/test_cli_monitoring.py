"""
The docker CLI's monitoring and housekeeping commands (ps filters, stats,
events, top, rename, update, system df, inspect) and restart policies,
against a real engine process with the simulated agency.
"""

import json
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.engineprocess import DOCKER_CLI, docker_cli_available, shared_engine
from tests.fitbuilder import build_fit, build_me_dtb

DEMO = "cli-mon-demo"
WAIT_TIMEOUT = 20.0


def wait_until(predicate, timeout: float = WAIT_TIMEOUT, interval: float = 0.1):
    """
    Call C{predicate} until it returns a true value or C{timeout} passes.

    @return: the last value returned by C{predicate}.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class CliTestCase(SynchronousTestCase):
    """
    Shared helpers: the docker CLI against the engine of the class.
    """

    engine_key = "DockerCliMonitoringTests"

    def setUp(self):
        if not docker_cli_available():
            self.skipTest(f"docker CLI not found at {DOCKER_CLI}")
        self.engine = shared_engine(self.engine_key)

    def docker(self, *args, check=True):
        return self.engine.docker(*args, check=check, timeout=30)

    def inspect(self, name: str) -> dict:
        return json.loads(self.docker("inspect", "--type", "container", name).stdout)[0]

    def remove_later(self, name: str) -> None:
        self.addCleanup(self.docker, "rm", "-f", name, check=False)


class DockerCliMonitoringTests(CliTestCase):
    """
    ps, stats, events, top, rename, update, system df and inspect.
    """

    def running_demo(self) -> str:
        """
        Start the class's demo container once and return its id.
        """
        result = self.docker("inspect", "--type", "container", DEMO, check=False)
        if result.returncode != 0:
            self.docker("create", "--name", DEMO, "refso3-sim")
        if not self.inspect(DEMO)["State"]["Running"]:
            self.docker("start", DEMO)
        logs = wait_until(lambda: "heartbeat 1" in self.docker("logs", DEMO).stdout)
        self.assertTrue(logs, "the demo container printed no heartbeat")
        return self.inspect(DEMO)["Id"]

    def test_ps_filters(self):
        self.running_demo()
        self.remove_later("cli-mon-idle")
        self.docker("create", "--name", "cli-mon-idle", "blinky-sim")

        running = self.docker(
            "ps",
            "--filter",
            "name=cli-mon",
            "--filter",
            "status=running",
            "--format",
            "{{.Names}}",
        ).stdout.split()
        blinky = self.docker(
            "ps", "-a", "--filter", "ancestor=blinky-sim", "--format", "{{.Names}}"
        ).stdout.split()
        labelled = self.docker(
            "ps",
            "--filter",
            "label=org.soo.me.name=SOO.refso3-sim",
            "--format",
            "{{.Names}}",
        ).stdout.split()

        self.assertEqual(running, [DEMO])
        self.assertEqual(blinky, ["cli-mon-idle"])
        self.assertIn(DEMO, labelled)

    def test_stats_no_stream(self):
        self.running_demo()

        output = self.docker(
            "stats",
            "--no-stream",
            "--format",
            "{{.Name}}|{{.MemUsage}}|{{.PIDs}}",
            DEMO,
        ).stdout

        name, memory, pids = output.strip().split("|")
        self.assertEqual(name, DEMO)
        self.assertTrue(memory.endswith("/ 16MiB"), memory)
        self.assertEqual(pids, "1")

    def test_stats_stream(self):
        self.running_demo()
        process = self.engine.docker_popen("stats", "--format", "{{.Name}}", DEMO)

        time.sleep(2.5)
        # docker stats keeps running after SIGTERM; only SIGKILL ends it.
        process.kill()
        output, _ = process.communicate(timeout=10)

        self.assertGreaterEqual(output.count(DEMO), 2, output)

    def test_events_since_until(self):
        container_id = self.running_demo()
        until = time.time()

        output = self.docker(
            "events",
            "--since",
            str(int(until) - 3600),
            "--until",
            f"{until:.6f}",
            "--filter",
            f"container={DEMO}",
            "--format",
            "{{json .}}",
        ).stdout

        events = [json.loads(line) for line in output.splitlines()]
        self.assertIn("start", [event["Action"] for event in events])
        for event in events:
            self.assertEqual(event["Actor"]["ID"], container_id)

    def test_top(self):
        self.running_demo()

        lines = self.docker("top", DEMO).stdout.splitlines()

        self.assertEqual(lines[0].split()[0], "PID")
        self.assertEqual(len(lines), 2)
        self.assertIn("SOO.refso3-sim", lines[1])

    def test_top_not_running(self):
        self.remove_later("cli-mon-top")
        self.docker("create", "--name", "cli-mon-top", "blinky-sim")

        result = self.docker("top", "cli-mon-top", check=False)

        self.assertEqual(result.returncode, 1)
        self.assertIn("is not running", result.stderr)

    def test_rename(self):
        self.remove_later("cli-mon-renamed")
        self.remove_later("cli-mon-rename")
        self.docker("create", "--name", "cli-mon-rename", "blinky-sim")

        self.docker("rename", "cli-mon-rename", "cli-mon-renamed")

        self.assertEqual(self.inspect("cli-mon-renamed")["Name"], "/cli-mon-renamed")
        missing = self.docker("inspect", "cli-mon-rename", check=False)
        self.assertEqual(missing.returncode, 1)

    def test_update_restart_policy(self):
        self.remove_later("cli-mon-update")
        self.docker("create", "--name", "cli-mon-update", "blinky-sim")

        self.docker("update", "--restart", "on-failure:3", "cli-mon-update")

        policy = self.inspect("cli-mon-update")["HostConfig"]["RestartPolicy"]
        self.assertEqual(policy, {"Name": "on-failure", "MaximumRetryCount": 3})

    def test_update_memory_rejected(self):
        self.remove_later("cli-mon-memory")
        self.docker("create", "--name", "cli-mon-memory", "blinky-sim")

        result = self.docker("update", "--memory", "64m", "cli-mon-memory", check=False)

        self.assertEqual(result.returncode, 1)
        self.assertIn("cannot update Memory", result.stderr)

    def test_system_df(self):
        self.running_demo()

        lines = self.docker("system", "df").stdout.splitlines()

        kinds = [line.split()[0] for line in lines[1:]]
        self.assertEqual(kinds, ["Images", "Containers", "Local", "Build"])

    def test_inspect_unknown(self):
        result = self.docker("inspect", "nosuchthing", check=False)

        self.assertEqual(result.returncode, 1)
        self.assertIn("No such object: nosuchthing", result.stderr)

    def test_pull_error(self):
        result = self.docker("pull", "busybox", check=False)

        self.assertEqual(result.returncode, 1)
        self.assertIn("cannot be pulled", result.stderr)

    def test_unsupported_commands(self):
        self.remove_later("cli-mon-files")
        self.docker("create", "--name", "cli-mon-files", "blinky-sim")
        commands = {
            ("export", "cli-mon-files"): "has no file system",
            ("commit", "cli-mon-files", "snapshot"): "docker commit is not supported",
            ("swarm", "init"): "swarm mode is not supported",
            ("service", "ls"): "This node is not a swarm manager",
            ("volume", "create", "data"): "volumes are not supported",
        }

        results = {args: self.docker(*args, check=False) for args in commands}

        for args, expected in commands.items():
            self.assertEqual(results[args].returncode, 1, args)
            self.assertIn(expected, results[args].stderr)

    def test_volume_network_ls(self):
        volumes = self.docker("volume", "ls", "-q").stdout
        networks = self.docker("network", "ls", "-q").stdout

        self.assertEqual(volumes, "")
        self.assertEqual(networks, "")


class RestartPolicyTests(CliTestCase):
    """
    Restart policies of containers whose ME crashes, and at engine start.
    """

    engine_key = "RestartPolicyTests"

    def import_crasher(self) -> None:
        """
        Import an image whose ME crashes 300 ms after it boots.
        """
        fit = build_fit(
            me_dtb=build_me_dtb(me_name="SOO.crasher"),
            root_props={
                "emiso,sim-crash-after-ms": 300,
                "emiso,sim-boot-delay-ms": 50,
            },
        )
        status, _, data = self.engine.request(
            "POST", "/images/create?fromSrc=-&repo=crasher&tag=latest", fit
        )
        self.assertEqual(status, 200, data)

    def test_on_failure_retries(self):
        self.import_crasher()
        self.remove_later("cli-crasher")
        self.docker(
            "run", "-d", "--name", "cli-crasher", "--restart", "on-failure:2", "crasher"
        )

        settled = wait_until(
            lambda: (lambda s: s["RestartCount"] == 2 and not s["State"]["Running"])(
                self.inspect("cli-crasher")
            )
        )
        time.sleep(1)
        final = self.inspect("cli-crasher")

        self.assertTrue(settled)
        self.assertEqual(final["RestartCount"], 2)
        self.assertFalse(final["State"]["Running"])
        self.assertEqual(final["State"]["ExitCode"], 255)

    def test_no_policy_stays_down(self):
        self.import_crasher()
        self.remove_later("cli-crasher-no")
        self.docker("run", "-d", "--name", "cli-crasher-no", "crasher")

        stopped = wait_until(
            lambda: not self.inspect("cli-crasher-no")["State"]["Running"]
        )
        time.sleep(0.5)
        final = self.inspect("cli-crasher-no")

        self.assertTrue(stopped)
        self.assertEqual(final["RestartCount"], 0)
        self.assertFalse(final["State"]["Running"])

    def test_engine_start_policies(self):
        self.remove_later("cli-always")
        self.remove_later("cli-unless")
        self.docker(
            "run", "-d", "--name", "cli-always", "--restart", "always", "blinky-sim"
        )
        self.docker(
            "run",
            "-d",
            "--name",
            "cli-unless",
            "--restart",
            "unless-stopped",
            "blinky-sim",
        )
        self.docker("stop", "cli-always", "cli-unless")
        stopped_always = self.inspect("cli-always")["State"]["Running"]

        self.engine.restart()
        started = wait_until(lambda: self.inspect("cli-always")["State"]["Running"])

        self.assertFalse(stopped_always)
        self.assertTrue(started)
        self.assertFalse(self.inspect("cli-unless")["State"]["Running"])

    def test_invalid_policy_rejected(self):
        # The docker CLI checks policies itself, so the request is sent raw.
        body = {
            "Image": "blinky-sim",
            "HostConfig": {"RestartPolicy": {"Name": "always", "MaximumRetryCount": 3}},
        }

        status, _, data = self.engine.request(
            "POST", "/containers/create?name=cli-bad-policy", body
        )

        self.assertEqual(status, 400)
        self.assertIn("maximum retry count", json.loads(data)["message"])
        missing = self.docker("inspect", "cli-bad-policy", check=False)
        self.assertEqual(missing.returncode, 1)

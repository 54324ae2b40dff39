"""Tests of the engine as a process: start-up failures, restarts, installs, users."""

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.engineprocess import PROJECT_ROOT, EngineProcess, free_loopback_port


def _run_twistd(args, cwd, env=None, timeout=30):
    command = [
        sys.executable,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
        *args,
    ]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _source_env():
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(PROJECT_ROOT)
    return environment


class StartupFailureTests(SynchronousTestCase):
    def test_busy_port_stops_startup(self):
        data_dir = tempfile.mkdtemp(prefix="emiso-busy-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]

        result = _run_twistd(
            ["-n", "--pidfile=", "emiso", "--data-dir", data_dir,
             "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=data_dir,
            env=_source_env(),
        )

        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        # twistd -n sends stderr to its log, which goes to stdout.
        self.assertIn(
            f"cannot listen on tcp:{port}:interface=127.0.0.1", result.stdout + result.stderr
        )

    def test_invalid_endpoint_rejected(self):
        data_dir = tempfile.mkdtemp(prefix="emiso-endpoint-")
        self.addCleanup(shutil.rmtree, data_dir, True)

        result = _run_twistd(
            ["-n", "--pidfile=", "emiso", "--data-dir", data_dir, "--listen", "nonsense:1"],
            cwd=data_dir,
            env=_source_env(),
        )

        self.assertNotEqual(result.returncode, 0)
        self.assertIn("invalid --listen endpoint 'nonsense:1'", result.stdout + result.stderr)

    def test_unknown_agency_rejected(self):
        data_dir = tempfile.mkdtemp(prefix="emiso-agency-")
        self.addCleanup(shutil.rmtree, data_dir, True)

        result = _run_twistd(
            ["-n", "--pidfile=", "emiso", "--data-dir", data_dir, "--agency", "warp"],
            cwd=data_dir,
            env=_source_env(),
        )

        self.assertNotEqual(result.returncode, 0)
        self.assertIn("unknown agency backend 'warp'", result.stdout + result.stderr)


class RestartTests(SynchronousTestCase):
    """
    Containers and MEs outlive a restart of the engine.
    """

    def setUp(self):
        self.engine = EngineProcess()
        self.addCleanup(self.engine.close)
        self.engine.start()

    def _inspect(self, name):
        status, body = self.engine.request_json("GET", f"/containers/{name}/json")
        self.assertEqual(status, 200, body)
        return body

    def test_running_container_survives_restart(self):
        self.engine.docker("run", "-d", "--name", "keeper", "refso3-sim")
        before = self._inspect("keeper")

        self.engine.restart()

        after = self._inspect("keeper")
        self.assertEqual(after["Id"], before["Id"])
        self.assertEqual(after["State"]["Status"], "running")
        self.assertEqual(after["State"]["StartedAt"], before["State"]["StartedAt"])

    def test_me_keeps_running_while_engine_down(self):
        self.engine.docker("run", "-d", "--name", "runner", "refso3-sim")
        log_path = self._inspect("runner")["LogPath"]
        self.engine.stop(kill_mes=False)
        size = os.path.getsize(log_path)

        deadline = time.monotonic() + 5
        while os.path.getsize(log_path) == size and time.monotonic() < deadline:
            time.sleep(0.2)

        self.assertGreater(os.path.getsize(log_path), size)
        self.engine.start()
        self.assertEqual(self._inspect("runner")["State"]["Status"], "running")

    def test_kill9_keeps_records(self):
        self.engine.docker("create", "--name", "made", "blinky-sim")
        self.engine.docker("run", "-d", "--name", "started", "blinky-sim")

        self.engine.kill9()
        self.engine.start()

        self.assertEqual(self._inspect("made")["State"]["Status"], "created")
        self.assertEqual(self._inspect("started")["State"]["Status"], "running")

    def test_me_gone_while_engine_down(self):
        self.engine.docker("run", "-d", "--name", "lost", "refso3-sim")
        self.engine.stop(kill_mes=True)

        self.engine.start()

        state = self._inspect("lost")["State"]
        self.assertIn(state["Status"], ("exited", "dead"))
        self.assertEqual(state["ExitCode"], 255)
        self.assertTrue(state["Error"])
        self.assertNotEqual(state["FinishedAt"], "0001-01-01T00:00:00Z")


class InstalledPluginTests(SynchronousTestCase):
    def test_twistd_lists_installed_plugin(self):
        installed = subprocess.run(
            [sys.executable, "-c", "import emiso, sys; print(emiso.__file__)"],
            cwd=tempfile.gettempdir(),
            capture_output=True,
            text=True,
        )
        if installed.returncode != 0:
            raise SkipTest("the emiso package is not installed (pip install .)")
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

        result = _run_twistd(["--help"], cwd=tempfile.gettempdir(), env=environment)

        self.assertIn("emiso", result.stdout)


class UnprivilegedUserTests(SynchronousTestCase):
    """
    The engine runs with no configuration as a user other than root, with
    its data in that user's home.

    The test interpreter and its packages may sit in root's home, out of
    reach of other users, so the test copies the engine and the packages
    it imports into a world-readable folder and runs Debian's
    C{/usr/bin/python3} (the same 3.11 ABI) as the user C{nobody}.
    """

    def setUp(self):
        if os.geteuid() != 0:
            raise SkipTest("needs root to switch to an unprivileged user")
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            raise SkipTest(f"{SYSTEM_PYTHON} is not installed")
        try:
            self.user = pwd.getpwnam("nobody")
        except KeyError:
            raise SkipTest("no 'nobody' user on this machine")
        self.root = tempfile.mkdtemp(prefix="emiso-nobody-")
        self.addCleanup(shutil.rmtree, self.root, True)
        os.chmod(self.root, 0o755)
        self.home = os.path.join(self.root, "home")
        os.mkdir(self.home)
        os.chown(self.home, self.user.pw_uid, self.user.pw_gid)
        self.code = os.path.join(self.root, "code")
        _copy_runtime(self.code)

    def test_defaults_for_non_root(self):
        port = free_loopback_port()
        environment = {
            "HOME": self.home,
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": self.code,
        }
        command = [
            SYSTEM_PYTHON,
            "-c",
            "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
            "-n", "--pidfile=", "emiso", "--listen", f"tcp:{port}:interface=127.0.0.1",
        ]
        process = subprocess.Popen(
            command,
            cwd=self.home,
            env=environment,
            user=self.user.pw_uid,
            group=self.user.pw_gid,
            extra_groups=[],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.addCleanup(_stop, process)

        answered = _wait_for_ping(port, process)

        self.assertTrue(answered, _output(process))
        data_dir = os.path.join(self.home, ".local", "share", "emiso")
        self.assertTrue(os.path.exists(os.path.join(data_dir, "emiso.db")))
        self.assertTrue(os.path.exists(os.path.join(data_dir, "images", "refso3-sim.itb")))
        self.assertEqual(os.stat(data_dir).st_uid, self.user.pw_uid)


SYSTEM_PYTHON = "/usr/bin/python3"

#: Packages of the test environment the engine does not import.
_NOT_NEEDED = {"pip", "hypothesis", "black", "blib2to3", "_pytest", "pytest", "pygments",
               "docker", "treq", "jsonschema", "yaml", "_yaml", "ruff", "setuptools"}


def _copy_runtime(target: str) -> None:
    """
    Copy the checkout's engine and this interpreter's site-packages into
    C{target}, readable by every user.
    """
    import site

    shutil.copytree(PROJECT_ROOT / "emiso", os.path.join(target, "emiso"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROJECT_ROOT / "twisted", os.path.join(target, "twisted"),
                    ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    for packages in site.getsitepackages():
        for name in os.listdir(packages):
            if name.split(".")[0].split("-")[0] in _NOT_NEEDED or name.startswith("emiso"):
                continue
            source = os.path.join(packages, name)
            destination = os.path.join(target, name)
            if os.path.isdir(source):
                shutil.copytree(source, destination, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, destination)
    for folder, directories, files in os.walk(target):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def _wait_for_ping(port: int, process: subprocess.Popen, timeout: float = 20) -> bool:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/_ping")
            if connection.getresponse().read() == b"OK":
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
    if process.stdout:
        process.stdout.close()


def _output(process: subprocess.Popen) -> str:
    if process.poll() is None:
        return "(engine still running)"
    return process.stdout.read().decode(errors="replace") if process.stdout else ""

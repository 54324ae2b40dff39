"""
The data-folder lock: a second engine on the same data folder refuses to
start and names the running one.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from emiso.lock import DataFolderBusy, DataFolderLock, docker_host
from tests.engineprocess import PROJECT_ROOT, EngineProcess


def _holder_script(data_dir: str) -> str:
    # A separate process holds the lock, because flock locks held by one
    # process through two descriptors still conflict, but the point of the
    # test is the message a second process prints.
    return textwrap.dedent(
        f"""
        import sys, time
        from emiso.lock import DataFolderLock
        lock = DataFolderLock.for_data_dir({data_dir!r})
        lock.acquire(["tcp:2399:interface=127.0.0.1"])
        print("locked", flush=True)
        sys.stdin.read()
        """
    )


class DataFolderLockTests(SynchronousTestCase):
    def setUp(self):
        self.data_dir = tempfile.mkdtemp(prefix="emiso-lock-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)

    def test_recordsPid(self):
        lock = DataFolderLock.for_data_dir(self.data_dir)

        lock.acquire(["tcp:2375:interface=127.0.0.1"])
        self.addCleanup(lock.release)

        with open(lock.path) as handle:
            lines = handle.read().splitlines()
        self.assertEqual(lines, [str(os.getpid()), "tcp:2375:interface=127.0.0.1"])

    def test_secondProcessRejected(self):
        holder = subprocess.Popen(
            [sys.executable, "-c", _holder_script(self.data_dir)],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(holder.wait, 10)
        self.addCleanup(holder.stdin.close)
        self.assertEqual(holder.stdout.readline(), "locked\n")
        lock = DataFolderLock.for_data_dir(self.data_dir)

        error = self.assertRaises(DataFolderBusy, lock.acquire, ["interactive"])

        self.assertEqual(error.pid, holder.pid)
        self.assertIn(f"process {holder.pid}", str(error))
        self.assertIn("docker -H tcp://127.0.0.1:2399 ps -a", str(error))

    def test_releasedOnExit(self):
        holder = subprocess.run(
            [sys.executable, "-c", _holder_script(self.data_dir)],
            cwd=PROJECT_ROOT,
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(holder.stdout, "locked\n")
        lock = DataFolderLock.for_data_dir(self.data_dir)

        lock.acquire(["interactive"])
        self.addCleanup(lock.release)

        self.assertIsNotNone(lock._descriptor)


class DockerHostTests(SynchronousTestCase):
    def test_conversions(self):
        cases = {
            "tcp:2375:interface=127.0.0.1": "tcp://127.0.0.1:2375",
            "tcp:2376": "tcp://127.0.0.1:2376",
            "tcp:port=2376:interface=0.0.0.0": "tcp://127.0.0.1:2376",
            "tls+tcp:2376": "tcp://127.0.0.1:2376 --tlsverify",
            "unix:/run/emiso.sock": "unix:///run/emiso.sock",
            "interactive": None,
            "ssl:443": None,
        }
        for endpoint, expected in cases.items():
            self.assertEqual(docker_host(endpoint), expected, endpoint)


class SecondEngineTests(SynchronousTestCase):
    """
    A real engine holds the lock; the interactive CLI on the same data
    folder exits with status 1 and names it.
    """

    def test_cliRejected(self):
        engine = EngineProcess()
        self.addCleanup(engine.close)
        engine.start()
        environment = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))

        result = subprocess.run(
            [
                sys.executable, "-c",
                "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
                "-n", "--pidfile=", "emiso", "-i", "--data-dir", str(engine.data_dir),
            ],
            input="image info\n",
            capture_output=True,
            text=True,
            env=environment,
            cwd=engine.temp_dir,
            timeout=60,
        )

        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(f"in use by process {engine.process.pid}", result.stderr)
        self.assertIn(f"docker -H tcp://127.0.0.1:{engine.port} ps -a", result.stderr)
        self.assertEqual(result.stdout, "")

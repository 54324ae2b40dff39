"""
The end-to-end scenarios of the sim backend, run against the soo and
capsule backends with the fake agency kernel.

Each engine is a real C{twistd emiso} process whose configuration file
selects the backend and the fake device (C{device = "fake:DIR"} in the
C{[agency]} section). The driver then builds L{tests.fakesoo.FakeSooDevice}
instead of opening C{/dev/soo/core}; everything else (ioctl packing, state
checks, the log pump, the monitor) is the code that runs on a board. The
image folder holds copies of the sample images, whose C{emiso,sim-*}
properties the fake kernel honours.
"""

import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.engineprocess import (
    DOCKER_CLI,
    PROJECT_ROOT,
    SAMPLES_DIR,
    EngineProcess,
    _shared_engines,
    docker_cli_available,
)
from tests import test_cli_scenario, test_dockerpy_scenario
from tests.fakesoo import FakeSooDevice

# The scenario classes are used through their modules, so that this module
# does not collect the sim backend's tests a second time.
docker = test_dockerpy_scenario.docker


def board_engine(backend: str) -> EngineProcess:
    """
    Return a running engine shared per backend, driving the fake kernel.
    """
    key = f"fake-{backend}"
    engine = _shared_engines.get(key)
    if engine is not None and engine.process.poll() is None:
        return engine
    if engine is not None:
        engine.close()
    work = tempfile.mkdtemp(prefix=f"emiso-{backend}-")
    engine = EngineProcess(["--config", write_board_config(work, backend)])
    engine.kernel_dir = os.path.join(work, "kernel")
    _shared_engines[key] = engine
    try:
        engine.start()
    except BaseException:
        del _shared_engines[key]
        engine.close()
        raise
    return engine


def write_board_config(work: str, backend: str) -> str:
    """Write the engine configuration of a fake board and its image folder."""
    images = os.path.join(work, "images")
    os.makedirs(images)
    for sample in SAMPLES_DIR.glob("*.itb"):
        shutil.copy(sample, images)
    kernel = os.path.join(work, "kernel")
    generation = "C" if backend == "capsule" else "A"
    template = FakeSooDevice(kernel, generation).log_template()
    path = os.path.join(work, "emiso.toml")
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(
            f'[engine]\nagency = "{backend}"\nimage-dir = "{images}"\n\n'
            f'[agency]\ndevice = "fake:{kernel}"\nme-log = "{template}"\n'
        )
    return path


class BoardCliMixin:
    backend = "soo"

    def setUp(self):
        if not docker_cli_available():
            self.skipTest(f"docker CLI not found at {DOCKER_CLI}")
        self.engine = board_engine(self.backend)
        self.addCleanup(self.check_no_kernel_bug)

    def check_no_kernel_bug(self):
        device = FakeSooDevice(self.engine.kernel_dir, "A")
        self.assertEqual(device.bugs(), [])


class SooCliScenarioTests(BoardCliMixin, test_cli_scenario.DockerCliScenarioTests):
    """The docker CLI scenarios on a generation-A kernel."""

    backend = "soo"


class CapsuleCliScenarioTests(BoardCliMixin, test_cli_scenario.DockerCliScenarioTests):
    """The docker CLI scenarios on a capsule kernel."""

    backend = "capsule"

    def test_unpause_resumes_heartbeats(self):
        # A capsule keeps running between its snapshot and its shutdown, so
        # the first heartbeat after unpause may repeat the last one printed
        # before the pause; the second one is new.
        self.run_container("demo")
        self.docker("pause", "demo")
        before = max(self.heartbeats("demo"))

        self.docker("unpause", "demo")

        numbers = self.wait_for_heartbeats("demo", len(self.heartbeats("demo")) + 2)
        self.assertGreater(max(numbers), before)


class SooApiBodiesTests(BoardCliMixin, test_cli_scenario.ApiBodiesScenarioTests):
    """The JSON bodies in each container state on a generation-A kernel."""

    backend = "soo"


class CapsuleApiBodiesTests(BoardCliMixin, test_cli_scenario.ApiBodiesScenarioTests):
    """The JSON bodies in each container state on a capsule kernel."""

    backend = "capsule"


class BoardDockerPyMixin:
    backend = "soo"

    def setUp(self):
        if docker is None:
            self.skipTest("docker-py is not installed")
        self.engine = board_engine(self.backend)
        self.client = docker.DockerClient(
            base_url=self.engine.base_url, version="auto", timeout=60
        )
        self.addCleanup(self.client.close)


class SooDockerPyTests(BoardDockerPyMixin, test_dockerpy_scenario.DockerPyScenarioTests):
    """docker-py on a generation-A kernel."""

    backend = "soo"


class CapsuleDockerPyTests(BoardDockerPyMixin, test_dockerpy_scenario.DockerPyScenarioTests):
    """docker-py on a capsule kernel."""

    backend = "capsule"


class MissingDeviceTests(SynchronousTestCase):
    """C{twistd emiso --agency soo} on a machine without the agency device."""

    def test_engine_names_device(self):
        if os.path.exists("/dev/soo/core"):
            self.skipTest("this machine has /dev/soo/core")
        data_dir = tempfile.mkdtemp(prefix="emiso-nodevice-")
        self.addCleanup(shutil.rmtree, data_dir, ignore_errors=True)
        environment = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))

        result = subprocess.run(
            [sys.executable, "-c",
             "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
             "-n", "--pidfile=", "emiso", "--agency", "soo", "--data-dir", data_dir],
            capture_output=True, text=True, timeout=60, cwd=data_dir, env=environment,
        )

        # twistd prints a usage error on stdout.
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("the agency device /dev/soo/core does not exist",
                      result.stdout + result.stderr)

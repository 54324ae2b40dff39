"""
End-to-end scenarios for exec and attach: the docker CLI, docker-py and a
raw socket client (doing Portainer's upgrade handshake) against a real
engine process whose simulated MEs serve their console.
"""

import json
import signal
import socket
import struct
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.engineprocess import (
    DOCKER_CLI,
    PROJECT_ROOT,
    docker_cli_available,
    shared_engine,
)

try:
    import docker
except ImportError:
    docker = None

EXITER_IMAGE = PROJECT_ROOT / "tests" / "images" / "exiter.itb"
READ_TIMEOUT = 15.0


def wait_until(predicate, timeout: float = READ_TIMEOUT, interval: float = 0.1):
    """Call C{predicate} until it returns a true value or C{timeout} passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class RawStream:
    """
    A socket client that sends one request with an empty C{Host} header,
    as Portainer's Go backend does, and then reads the raw stream.
    """

    def __init__(self, port: int, path: str, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        head = (
            f"POST {path} HTTP/1.1\r\n"
            "Host: \r\n"
            "User-Agent: Go-http-client/1.1\r\n"
            "Content-Type: application/json\r\n"
            "Connection: Upgrade\r\n"
            "Upgrade: tcp\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        self.socket.sendall(head + payload)
        self.buffer = b""
        self.status_line, self.headers = self._read_head()

    def _read_head(self):
        while b"\r\n\r\n" not in self.buffer:
            self._receive()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return lines[0], headers

    def _receive(self) -> bool:
        data = self.socket.recv(65536)
        if not data:
            return False
        self.buffer += data
        return True

    def read_until(self, text: bytes) -> bytes:
        """Read until C{text} arrived; return everything read so far."""
        deadline = time.monotonic() + READ_TIMEOUT
        while text not in self.buffer:
            if time.monotonic() > deadline or not self._receive():
                raise AssertionError(f"{text!r} not received; got {self.buffer!r}")
        return self.buffer

    def read_to_end(self) -> bytes:
        """Read until the engine closes the connection."""
        while self._receive():
            pass
        return self.buffer

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def close(self) -> None:
        self.socket.close()


def split_frames(data: bytes) -> list:
    """Split a multiplexed stream into C{(stream id, payload)} pairs."""
    frames = []
    while len(data) >= 8:
        stream, size = struct.unpack(">BxxxI", data[:8])
        frames.append((stream, data[8 : 8 + size]))
        data = data[8 + size :]
    return frames


class ConsoleScenarioTests(SynchronousTestCase):
    """
    Exec and attach on one engine shared by the class; each test removes
    the containers it creates.
    """

    def setUp(self):
        self.engine = shared_engine(type(self).__name__)

    def docker(self, *args, check=True, timeout=60):
        if not docker_cli_available():
            self.skipTest(f"docker CLI not found at {DOCKER_CLI}")
        return self.engine.docker(*args, check=check, timeout=timeout)

    def run_living(self, name: str) -> str:
        """Create and start a refso3-sim container over the API; return its id."""
        self.addCleanup(self.engine.request, "DELETE", f"/containers/{name}?force=1")
        status, body = self.engine.request_json(
            "POST", f"/containers/create?name={name}", {"Image": "refso3-sim"}
        )
        self.assertEqual(status, 201, body)
        status, _ = self.engine.request_json("POST", f"/containers/{name}/start")
        self.assertEqual(status, 204)
        return body["Id"]

    def create_exec(self, name: str, cmd: list, tty: bool = False) -> str:
        status, body = self.engine.request_json(
            "POST",
            f"/containers/{name}/exec",
            {
                "AttachStdin": True,
                "AttachStdout": True,
                "AttachStderr": True,
                "Tty": tty,
                "Cmd": cmd,
            },
        )
        self.assertEqual(status, 201, body)
        return body["Id"]

    def inspect_exec(self, exec_id: str) -> dict:
        status, body = self.engine.request_json("GET", f"/exec/{exec_id}/json")
        self.assertEqual(status, 200, body)
        return body

    # docker CLI

    def test_cli_exec_status(self):
        self.run_living("exec-status")

        completed = self.docker("exec", "exec-status", "status")

        self.assertIn("state: living", completed.stdout)
        self.assertIn("name: SOO.refso3-sim", completed.stdout)

    def test_cli_exec_exit_code(self):
        self.run_living("exec-code")

        completed = self.docker("exec", "exec-code", "reboot", check=False)

        self.assertEqual(completed.returncode, 127)
        self.assertIn("so3: reboot: command not found", completed.stderr)
        self.assertEqual(completed.stdout, "")

    def test_cli_exec_not_running(self):
        self.addCleanup(self.docker, "rm", "-f", "exec-created", check=False)
        self.docker("create", "--name", "exec-created", "refso3-sim")

        completed = self.docker("exec", "exec-created", "status", check=False)

        self.assertNotEqual(completed.returncode, 0)
        self.assertIn("is not running", completed.stderr)

    def test_cli_run_attached(self):
        self.docker("import", str(EXITER_IMAGE), "exiter-console")
        self.addCleanup(self.docker, "rmi", "-f", "exiter-console", check=False)
        self.addCleanup(self.docker, "rm", "-f", "run-attached", check=False)

        completed = self.docker(
            "run", "--name", "run-attached", "exiter-console", check=False, timeout=30
        )
        exit_code = self.docker(
            "inspect", "-f", "{{.State.ExitCode}}", "run-attached"
        ).stdout.strip()

        self.assertIn("SO3 Operating System", completed.stdout)
        self.assertIn("shutting itself down, halting", completed.stdout)
        self.assertEqual(str(completed.returncode), exit_code, completed.stderr)

    def attach_cli(self, name: str) -> subprocess.Popen:
        if not docker_cli_available():
            self.skipTest(f"docker CLI not found at {DOCKER_CLI}")
        attach = subprocess.Popen(
            [DOCKER_CLI, "attach", name],
            env=self.engine.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(attach.wait)
        self.addCleanup(attach.kill)
        return attach

    def test_cli_attach_signal_proxied(self):
        self.run_living("attach-term")
        attach = self.attach_cli("attach-term")

        line = attach.stdout.readline()
        attach.send_signal(signal.SIGTERM)
        returncode = attach.wait(timeout=15)
        state = self.docker(
            "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "attach-term"
        )

        self.assertIn(b"heartbeat", line)
        self.assertEqual(returncode, 143)
        self.assertEqual(state.stdout.strip(), "exited 143")

    def test_cli_attach_killed(self):
        self.run_living("attach-kill")
        attach = self.attach_cli("attach-kill")

        line = attach.stdout.readline()
        attach.kill()
        attach.wait(timeout=10)
        running = self.docker("inspect", "-f", "{{.State.Running}}", "attach-kill")
        exec_after = self.docker("exec", "attach-kill", "echo", "still", "here")

        self.assertIn(b"heartbeat", line)
        self.assertEqual(running.stdout.strip(), "true")
        self.assertEqual(exec_after.stdout, "still here\n")

    # docker-py

    def test_dockerpy_exec_run(self):
        if docker is None:
            self.skipTest("docker-py is not installed")
        self.run_living("exec-py")
        client = docker.DockerClient(base_url=self.engine.base_url, version="auto")
        self.addCleanup(client.close)
        container = client.containers.get("exec-py")

        echoed = container.exec_run(["echo", "from", "docker-py"])
        failed = container.exec_run("heartbeat maybe")
        shell = container.exec_run(["sh", "-c", "uptime"])

        self.assertEqual(echoed.exit_code, 0)
        self.assertEqual(echoed.output, b"from docker-py\n")
        self.assertEqual(failed.exit_code, 2)
        self.assertEqual(shell.exit_code, 0)
        self.assertIn(b"heartbeat", shell.output)

    # Raw socket, as Portainer's backend

    def test_raw_exec_session(self):
        self.run_living("exec-raw")
        exec_id = self.create_exec("exec-raw", ["/bin/sh"], tty=True)
        stream = RawStream(
            self.engine.port, f"/exec/{exec_id}/start", {"Tty": True, "Detach": False}
        )
        self.addCleanup(stream.close)

        stream.read_until(b"SOO.refso3-sim> ")
        while_running = self.inspect_exec(exec_id)
        stream.send(b"echo portainer\r")
        echoed = stream.read_until(b"portainer\r\nSOO.refso3-sim> ")
        stream.send(b"exit 3\r")
        stream.read_to_end()
        finished = self.inspect_exec(exec_id)

        self.assertEqual(stream.status_line, "HTTP/1.1 101 UPGRADED")
        self.assertEqual(
            stream.headers["content-type"], "application/vnd.docker.raw-stream"
        )
        self.assertEqual(stream.headers["upgrade"], "tcp")
        self.assertEqual(stream.headers["connection"], "Upgrade")
        self.assertIn(b"echo portainer\r\nportainer\r\n", echoed)
        self.assertIs(while_running["Running"], True)
        self.assertIsNone(while_running["ExitCode"])
        self.assertIs(finished["Running"], False)
        self.assertEqual(finished["ExitCode"], 3)
        self.assertEqual(finished["ProcessConfig"]["entrypoint"], "/bin/sh")

    def test_raw_exec_frames(self):
        self.run_living("exec-frames")
        exec_id = self.create_exec("exec-frames", ["help"])

        stream = RawStream(
            self.engine.port, f"/v1.44/exec/{exec_id}/start", {"Detach": False}
        )
        self.addCleanup(stream.close)
        frames = split_frames(stream.read_to_end())

        self.assertEqual(
            stream.headers["content-type"], "application/vnd.docker.multiplexed-stream"
        )
        self.assertEqual(
            frames[0], (1, b"Commands of the EMISO simulated ME console:\n")
        )
        self.assertEqual(self.inspect_exec(exec_id)["ExitCode"], 0)

    def test_raw_attach_input(self):
        container_id = self.run_living("attach-raw")
        stream = RawStream(
            self.engine.port,
            f"/containers/{container_id}/attach?stream=1&stdin=1&stdout=1&stderr=1",
            {},
        )
        self.addCleanup(stream.close)

        stream.send(b"echo attached-input\n")
        data = stream.read_until(b"attached-input\n\x01")

        self.assertEqual(stream.status_line, "HTTP/1.1 101 UPGRADED")
        payloads = [payload for _stream, payload in split_frames(data)]
        self.assertIn(b"SOO.refso3-sim> echo attached-input\n", payloads)
        self.assertIn(b"attached-input\n", payloads)

    def test_exec_errors(self):
        self.run_living("exec-errors")
        exec_id = self.create_exec("exec-errors", ["status"])

        missing = self.engine.request_json("GET", "/exec/nope/json")
        resized = self.engine.request("POST", f"/exec/{exec_id}/resize?h=24&w=80")
        bad_size = self.engine.request_json(
            "POST", f"/exec/{exec_id}/resize?h=tall&w=80"
        )
        container_resized = self.engine.request(
            "POST", "/containers/exec-errors/resize?h=24&w=80"
        )
        self.engine.request("POST", "/containers/exec-errors/pause")
        paused = self.engine.request_json(
            "POST", "/containers/exec-errors/exec", {"Cmd": ["status"]}
        )

        self.assertEqual(missing, (404, {"message": "No such exec instance: nope"}))
        self.assertEqual(resized[0], 200)
        self.assertEqual(bad_size[0], 400)
        self.assertEqual(container_resized[0], 200)
        self.assertEqual(paused[0], 409)
        self.assertIn("is paused", paused[1]["message"])

"""The two servers under test: the EMISO engine and Debian's dockerd.

Each server runs in a private temporary folder, listens on 127.0.0.1 (and
dockerd also on a unix socket in that folder), and is stopped by the pid
the benchmark recorded when it started it.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from bench.httpclient import Address, request_once
from tests.engineprocess import EngineProcess, free_loopback_port

#: Seconds between two pings while a server starts.
PING_INTERVAL = 0.005

#: Seconds a server has to answer its first ping.
START_TIMEOUT = 60.0

#: Where Debian's busybox-static package puts the static binary.
BUSYBOX = "/bin/busybox"

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_children(pid: int) -> list[int]:
    """Return the pids of the direct children of C{pid}."""
    children = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        children.extend(int(word) for word in text.split())
    return children


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def rss_bytes(pids: list[int]) -> int:
    """Sum the resident set sizes (VmRSS) of the processes."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def cpu_seconds(pids: list[int]) -> float:
    """Sum the user and system CPU seconds of the processes."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may contain spaces, so split after it.
        fields = text[text.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


class Server:
    """What the workloads need from a server under test."""

    name = ""
    address: Address

    def __init__(self) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix=f"emiso-bench-{self.name}-"))
        self.port = free_loopback_port()
        self.address = Address(port=self.port)
        self.process: subprocess.Popen | None = None
        self.startup_seconds = 0.0

    # Subclasses define these.

    def command(self) -> list[str]:
        raise NotImplementedError

    def create_body(self) -> dict:
        raise NotImplementedError

    def measured_pids(self) -> list[int]:
        raise NotImplementedError

    async def write_log(self, text_lines: bytes, line_count: int) -> str:
        raise NotImplementedError

    async def upload_image(self, size: int) -> float:
        raise NotImplementedError

    # Common parts.

    def environment(self) -> dict:
        return dict(os.environ)

    async def start(self) -> float:
        """Start the server; return the seconds until its first C{/_ping} OK."""
        log = open(self.temp_dir / "server.log", "ab")
        began = time.perf_counter()
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.temp_dir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = began + START_TIMEOUT
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.process.returncode}; "
                    f"see {self.temp_dir / 'server.log'}"
                )
            try:
                status, body = await request_once(self.address, "GET", "/_ping", timeout=2)
                if status == 200 and body == b"OK":
                    self.startup_seconds = time.perf_counter() - began
                    return self.startup_seconds
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(PING_INTERVAL)
        raise RuntimeError(f"{self.name} did not respond to /_ping in {START_TIMEOUT} s")

    async def call(self, method: str, path: str, body=None, expect=(200,)) -> bytes:
        data = None
        headers = {}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = (
                "application/x-tar" if isinstance(body, bytes) else "application/json"
            )
        status, reply = await request_once(self.address, method, path, data, headers)
        if status not in expect:
            raise RuntimeError(f"{self.name}: {method} {path} returned {status}: {reply[:300]!r}")
        return reply

    async def create(self) -> str:
        reply = await self.call("POST", "/containers/create", self.create_body(), (201,))
        return json.loads(reply)["Id"]

    async def start_container(self, container_id: str) -> None:
        await self.call("POST", f"/containers/{container_id}/start", expect=(204, 304))

    async def stop_container(self, container_id: str) -> None:
        await self.call("POST", f"/containers/{container_id}/stop?t=0", expect=(204, 304))

    async def remove_container(self, container_id: str) -> None:
        await self.call("DELETE", f"/containers/{container_id}?force=1", expect=(204,))

    async def container_ids(self) -> list[str]:
        reply = await self.call("GET", "/containers/json?all=1")
        return [item["Id"] for item in json.loads(reply)]

    async def running_ids(self) -> list[str]:
        reply = await self.call("GET", "/containers/json")
        return [item["Id"] for item in json.loads(reply)]

    async def remove_all(self) -> None:
        """Remove every container, so no ME, shim or C{sleep} outlives the run."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            for container_id in await self.container_ids():
                await self.remove_container(container_id)
        except (OSError, RuntimeError) as error:
            print(f"{self.name}: removing containers failed: {error}", file=sys.stderr)

    def rss(self) -> int:
        return rss_bytes(self.measured_pids())

    def cpu(self) -> float:
        return cpu_seconds(self.measured_pids())

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class EngineServer(Server):
    """The EMISO engine from this source tree, on the simulated agency."""

    name = "engine"

    def __init__(self) -> None:
        super().__init__()
        # EngineProcess builds the same command line as the integration tests.
        self.harness = EngineProcess()
        self.harness.port = self.port
        self.harness.data_dir = self.temp_dir / "data"
        self.harness.data_dir.mkdir()
        self.harness.log_path = self.temp_dir / "engine.log"
        shutil.rmtree(self.harness.temp_dir, ignore_errors=True)
        self.harness.temp_dir = self.temp_dir

    def command(self) -> list[str]:
        return self.harness.command()

    def environment(self) -> dict:
        environment = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        environment["PYTHONPATH"] = os.pathsep.join(
            [root, *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        return environment

    def create_body(self) -> dict:
        return {"Image": "refso3-sim"}

    def measured_pids(self) -> list[int]:
        if self.process is None:
            return []
        drivers = [
            pid
            for pid in process_children(self.process.pid)
            if "emiso.agency.driver" in command_line(pid)
        ]
        return [self.process.pid, *drivers]

    async def write_log(self, text_lines: bytes, line_count: int) -> str:
        """Create a container that never ran and give it a console log."""
        from emiso.engine.timeutil import format_fixed_timestamp_ns

        container_id = await self.create()
        path = self.harness.data_dir / "containers" / container_id / "console.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = format_fixed_timestamp_ns(time.time_ns()).encode() + b" stdout "
        line_length = len(text_lines) // line_count
        with open(path, "wb") as log:
            for start in range(0, len(text_lines), line_length):
                log.write(stamp + text_lines[start : start + line_length])
        return container_id

    async def upload_image(self, size: int) -> float:
        """Import a FIT image of about C{size} bytes; return the seconds."""
        from tests.fitbuilder import build_fit

        fit = build_fit(kernel_data=b"\0" * size)
        began = time.perf_counter()
        await self.call("POST", "/images/create?fromSrc=-&repo=bench-upload", fit)
        return time.perf_counter() - began

    def stop(self) -> None:
        super().stop()
        self.harness.process = self.process
        self.harness.kill_sim_mes()


class DockerServer(Server):
    """Debian's dockerd with private folders and listeners."""

    name = "dockerd"
    image = "bench-busybox:latest"

    def command(self) -> list[str]:
        folder = self.temp_dir
        return [
            shutil.which("dockerd") or "/usr/sbin/dockerd",
            "--storage-driver=vfs",
            "--iptables=false",
            "--bridge=none",
            "--host",
            f"unix://{folder}/docker.sock",
            "--host",
            f"tcp://127.0.0.1:{self.port}",
            "--data-root",
            f"{folder}/data",
            "--exec-root",
            f"{folder}/exec",
            "--pidfile",
            f"{folder}/docker.pid",
        ]

    @staticmethod
    def unavailable_reason() -> str | None:
        """Say why dockerd cannot run here, or return C{None}."""
        if not (shutil.which("dockerd") or os.path.exists("/usr/sbin/dockerd")):
            return "dockerd is not installed (apt-get install docker.io)"
        if os.geteuid() != 0:
            return "dockerd needs root and the benchmark does not run as root"
        if not os.path.exists(BUSYBOX):
            return f"{BUSYBOX} is missing (apt-get install busybox-static)"
        return None

    @staticmethod
    def version() -> str:
        completed = subprocess.run(
            [shutil.which("dockerd") or "/usr/sbin/dockerd", "--version"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return completed.stdout.strip()

    async def import_busybox(self) -> None:
        tar = busybox_tar(padding=0)
        await self.call("POST", "/images/create?fromSrc=-&repo=bench-busybox&tag=latest", tar)

    def create_body(self) -> dict:
        return {"Image": self.image, "Cmd": ["/bin/busybox", "sleep", "100000"]}

    def measured_pids(self) -> list[int]:
        if self.process is None:
            return []
        helpers = [
            pid
            for pid in process_children(self.process.pid)
            if "containerd" in command_line(pid) and "shim" not in command_line(pid)
        ]
        return [self.process.pid, *helpers]

    async def write_log(self, text_lines: bytes, line_count: int) -> str:
        """
        Run a container that exits at once, then replace its json-file log
        with the given lines.
        """
        body = {"Image": self.image, "Cmd": ["/bin/busybox", "true"]}
        reply = await self.call("POST", "/containers/create", body, (201,))
        container_id = json.loads(reply)["Id"]
        await self.start_container(container_id)
        await self.call("POST", f"/containers/{container_id}/wait")
        inspect = json.loads(await self.call("GET", f"/containers/{container_id}/json"))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        line_length = len(text_lines) // line_count
        with open(inspect["LogPath"], "wb") as log:
            for start in range(0, len(text_lines), line_length):
                text = text_lines[start : start + line_length].decode()
                record = {"log": text, "stream": "stdout", "time": stamp}
                log.write(json.dumps(record).encode() + b"\n")
        return container_id

    async def upload_image(self, size: int) -> float:
        tar = busybox_tar(padding=size)
        began = time.perf_counter()
        await self.call("POST", "/images/create?fromSrc=-&repo=bench-upload&tag=latest", tar)
        return time.perf_counter() - began



def busybox_tar(padding: int) -> bytes:
    """Build a root file system tar with the static busybox (and padding)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(BUSYBOX, arcname="bin/busybox")
        if padding:
            info = tarfile.TarInfo("padding")
            info.size = padding
            archive.addfile(info, io.BytesIO(b"\0" * padding))
    return buffer.getvalue()

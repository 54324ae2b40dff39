"""
A real engine process (C{twistd emiso}) for integration tests, with helpers to
call it over HTTP or with the docker CLI.

Every JSON body read through L{EngineProcess.request} is checked against the
Docker Engine API 1.44 specification (L{tests.schema}).
"""

import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.schema import ResponseValidationError, validate_json_body

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The folder containing C{emiso/} and C{tests/}."""

SAMPLES_DIR = PROJECT_ROOT / "emiso" / "samples"
"""Sample FIT images shipped with the engine."""

DOCKER_CLI = shutil.which("docker") or "/usr/local/bin/docker"
"""The docker CLI used by the scenarios (a client only, no daemon)."""

START_TIMEOUT = 20.0
"""Seconds to wait for C{GET /_ping} to return C{OK} after starting."""

STOP_TIMEOUT = 10.0
"""Seconds to wait after SIGTERM before the engine is killed with SIGKILL."""

_SIM_ME_MODULE = "emiso.agency.sim.me"
_LOG_TAIL_LINES = 60


def docker_cli_available() -> bool:
    """
    Tell whether the docker CLI binary exists and is executable.
    """
    return os.access(DOCKER_CLI, os.X_OK)


def free_loopback_port() -> int:
    """
    Pick a TCP port that is free on 127.0.0.1 right now.

    NOTE: another process may take the port between this call and the
    engine's bind; the engine then fails to start and the test reports it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EngineProcess:
    """
    An engine started with C{twistd -n emiso} on a loopback port,
    with its own data folder in a temporary directory.

    Blocking by design: the methods wait for the process and its HTTP
    responses, so they suit L{twisted.trial.unittest.SynchronousTestCase} and
    plain synchronous tests.

    @ivar data_dir: the engine's C{--data-dir}.
    @ivar log_path: the engine's C{--logfile}.
    @ivar port: the TCP port of the API listener.
    """

    def __init__(
        self, extra_args=(), start_timeout: float = START_TIMEOUT, tls_client_dir=None
    ):
        """
        @param extra_args: more command-line options for C{twistd emiso}, for
            example C{["--agency", "sim"]}.
        @param start_timeout: seconds to wait for C{/_ping} to succeed.
        @param tls_client_dir: for an engine in secure mode (C{-s} in
            C{extra_args}), a folder with the client's C{ca.pem},
            C{cert.pem} and C{key.pem}, as C{DOCKER_CERT_PATH} expects it.
            HTTP requests and the docker CLI then use TLS with that client
            certificate.
        """
        self.extra_args = list(extra_args)
        self.tls_client_dir = Path(tls_client_dir) if tls_client_dir else None
        self.start_timeout = start_timeout
        self.temp_dir = Path(tempfile.mkdtemp(prefix="emiso-engine-"))
        self.data_dir = self.temp_dir / "data"
        self.data_dir.mkdir()
        self.log_path = self.temp_dir / "engine.log"
        self.output_path = self.temp_dir / "engine.out"
        self.docker_config_dir = self.temp_dir / "docker-config"
        self.docker_config_dir.mkdir()
        self.port = free_loopback_port()
        self.process = None

    @property
    def base_url(self) -> str:
        """
        The URL of the API, for example C{http://127.0.0.1:40123}.
        """
        scheme = "https" if self.tls_client_dir else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def docker_host(self) -> str:
        """
        The C{DOCKER_HOST} value for the docker CLI.
        """
        return f"tcp://127.0.0.1:{self.port}"

    def command(self) -> list:
        """
        Build the command line that starts the engine.
        """
        # "python -m twisted" is the newer "twist" runner, which has no -n
        # or --pidfile, so twistd's entry point is called with -c instead.
        # sys.executable keeps the interpreter (and venv) of the tests.
        return [
            sys.executable,
            "-c",
            "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path}",
            "emiso",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]

    def start(self) -> None:
        """
        Start the engine and wait until C{GET /_ping} returns C{OK}.

        @raise AssertionError: the engine exited or did not become ready
            within C{start_timeout} seconds; the message contains its log.
        """
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"engine already running with pid {self.process.pid}")
        with open(self.output_path, "ab") as output:
            # PYTHONPATH puts this source tree first, so the engine under
            # test (and its twistd plugin) is the checkout's, installed or not.
            environment = dict(os.environ)
            environment["PYTHONPATH"] = os.pathsep.join(
                [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            )
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.temp_dir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()

    def env(self) -> dict:
        """
        Build the environment for the docker CLI: C{DOCKER_HOST} points at
        this engine and C{DOCKER_CONFIG} at an empty folder, so no user
        configuration, context or TLS setting applies.
        """
        environment = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("DOCKER_")
        }
        environment["DOCKER_HOST"] = self.docker_host
        environment["DOCKER_CONFIG"] = str(self.docker_config_dir)
        environment["DOCKER_CLI_HINTS"] = "false"
        if self.tls_client_dir:
            environment["DOCKER_TLS_VERIFY"] = "1"
            environment["DOCKER_CERT_PATH"] = str(self.tls_client_dir)
        return environment

    def tls_context(self) -> ssl.SSLContext:
        """
        Build the client TLS context of C{tls_client_dir}: trust its
        C{ca.pem}, present its C{cert.pem} and C{key.pem}.
        """
        context = ssl.create_default_context(cafile=str(self.tls_client_dir / "ca.pem"))
        context.load_cert_chain(
            str(self.tls_client_dir / "cert.pem"), str(self.tls_client_dir / "key.pem")
        )
        return context

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        """
        Open an HTTP connection to the engine, over TLS when
        C{tls_client_dir} is set.
        """
        if self.tls_client_dir:
            return http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=timeout, context=self.tls_context()
            )
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def docker(self, *args, check: bool = True, timeout: float = 60):
        """
        Run the docker CLI against this engine.

        @param args: the CLI arguments, for example C{("ps", "-a")}.
        @param check: raise when the CLI exits with a non-zero status.
        @param timeout: seconds before the CLI is killed.
        @return: the L{subprocess.CompletedProcess}, with text output.
        @raise AssertionError: C{check} is true and the exit status is not 0.
        """
        argv = [DOCKER_CLI, *args]
        completed = subprocess.run(
            argv,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and completed.returncode != 0:
            raise self.failure(
                f"{' '.join(argv[1:])!r} exited with status "
                f"{completed.returncode}\nstdout: {completed.stdout}\n"
                f"stderr: {completed.stderr}"
            )
        return completed

    def docker_popen(self, *args) -> subprocess.Popen:
        """
        Start the docker CLI without waiting, for commands that stream such
        as C{logs -f}; stdout and stderr are pipes in text mode.
        """
        return subprocess.Popen(
            [DOCKER_CLI, *args],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def request(self, method: str, path: str, body=None, headers=None, timeout=30):
        """
        Send one HTTP request and check the response against the
        specification.

        @param body: C{None}, C{bytes}, or a value sent as JSON.
        @param headers: extra request headers.
        @return: C{(status, headers, body_bytes)}, where C{headers} is an
            L{http.client.HTTPMessage}.
        @raise AssertionError: the response does not match the Docker API
            1.44 specification; the message contains the engine log.
        """
        request_headers = dict(headers or {})
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode("utf-8")
            request_headers.setdefault("Content-Type", "application/json")
        connection = self.connection(timeout)
        try:
            connection.request(method, path, body=body, headers=request_headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        content_type = response.headers.get("Content-Type", "")
        try:
            validate_json_body(method, path, response.status, content_type, data)
        except ResponseValidationError as error:
            raise self.failure(str(error)) from None
        return response.status, response.headers, data

    def request_json(self, method: str, path: str, body=None, headers=None):
        """
        Send one request and decode its JSON body (checked like L{request}).

        @return: C{(status, decoded_body)}; the body is C{None} when empty.
        """
        status, _headers, data = self.request(method, path, body, headers)
        if not data.strip():
            return status, None
        return status, json.loads(data)

    def stop(self, kill_mes: bool = True) -> None:
        """
        Stop the engine with SIGTERM, then SIGKILL after C{STOP_TIMEOUT}.

        @param kill_mes: also kill the simulated ME processes recorded in the
            agency's slot files. They are detached from the engine and would
            otherwise outlive the test.
        """
        if self.process is not None:
            self._signal_engine(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal_engine(signal.SIGKILL)
                self.process.wait()
            self._kill_process_group()
        if kill_mes:
            self.kill_sim_mes()

    def kill9(self) -> None:
        """
        Kill the engine with SIGKILL, as a crash would; its children and the
        MEs are left alone.
        """
        if self.process is None:
            return
        self._signal_engine(signal.SIGKILL)
        self.process.wait()

    def restart(self) -> None:
        """
        Stop the engine (the MEs keep running) and start it again on the
        same port and data folder.
        """
        self.stop(kill_mes=False)
        self.start()

    def close(self) -> None:
        """
        Stop the engine, kill leftover ME processes and remove the
        temporary directory.
        """
        self.stop(kill_mes=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def kill_sim_mes(self) -> list:
        """
        Kill the simulated ME processes listed in C{agency/slots/*.json}.

        A pid is only killed when C{/proc/<pid>/cmdline} shows the simulated
        ME module, which guards against pid reuse.

        @return: the pids that were killed.
        """
        killed = []
        for slot_file in sorted((self.data_dir / "agency" / "slots").glob("*.json")):
            try:
                pid = int(json.loads(slot_file.read_text())["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not _is_sim_me(pid):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pid)
        return killed

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """
        Read the last lines of the engine log and of its stdout/stderr.
        """
        parts = []
        for path in (self.log_path, self.output_path):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- {path.name} (last {lines} lines) ---\n{tail}")
        return "\n".join(parts)

    def failure(self, message: str) -> AssertionError:
        """
        Build an L{AssertionError} whose message ends with the engine log tail.
        """
        return AssertionError(f"{message}\n{self.log_tail()}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self.failure(
                    f"engine exited with status {self.process.returncode} "
                    f"during start-up: {' '.join(self.command())}"
                )
            try:
                if self._ping():
                    return
                last_error = "GET /_ping did not return 200 OK"
            except OSError as error:
                last_error = str(error)
            time.sleep(0.1)
        self.stop()
        raise self.failure(
            f"engine not ready after {self.start_timeout} s ({last_error}): "
            f"{' '.join(self.command())}"
        )

    def _ping(self) -> bool:
        connection = self.connection(timeout=1)
        try:
            connection.request("GET", "/_ping")
            response = connection.getresponse()
            return response.status == 200 and response.read() == b"OK"
        finally:
            connection.close()

    def _signal_engine(self, signum: int) -> None:
        try:
            self.process.send_signal(signum)
        except ProcessLookupError:
            pass

    def _kill_process_group(self) -> None:
        # The engine leads its own session (start_new_session), so its group
        # contains only processes it started, such as the agency driver.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


_shared_engines = {}


def shared_engine(key: str, extra_args=()) -> EngineProcess:
    """
    Return a running engine shared by the tests that pass the same C{key},
    starting it on first use.

    trial has no class-level set-up hook, so one engine per test class is
    kept here and closed when the test process exits. A shared engine
    that has died is replaced by a new one.

    @param key: a name for the group of tests, usually the class name.
    @param extra_args: command-line options for the first start.
    """
    engine = _shared_engines.get(key)
    if engine is not None and engine.process.poll() is None:
        return engine
    if engine is not None:
        engine.close()
    engine = EngineProcess(extra_args)
    _shared_engines[key] = engine
    try:
        engine.start()
    except BaseException:
        del _shared_engines[key]
        engine.close()
        raise
    return engine


@atexit.register
def _close_shared_engines() -> None:
    while _shared_engines:
        _key, engine = _shared_engines.popitem()
        engine.close()


def _is_sim_me(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return _SIM_ME_MODULE.encode("ascii") in cmdline

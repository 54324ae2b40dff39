"""Agency driver process: serves agency operations over newline-delimited JSON.

The engine's ME controller runs C{python -m emiso.agency.driver --backend sim
--state-dir DIR} and talks to it over stdin and stdout (see
L{emiso.agency.protocol}). Given an operation name after the options, the
driver runs that one operation, prints the reply and exits, which helps
when debugging on a board.
"""

import argparse
import inspect
import json
import os
import sys
import threading
from typing import BinaryIO, Callable

from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from emiso.agency.protocol import (
    OperationError,
    ProtocolError,
    decode_message,
    encode_message,
)

logger = Logger()

# Seconds between two checks of the ME processes by the monitor thread.
MONITOR_INTERVAL = 0.2

#: Prefix of C{--device} that selects the fake kernel of the test suite.
FAKE_DEVICE_PREFIX = "fake:"


def _make_sim_backend(options: argparse.Namespace):
    from emiso.agency.sim.agency import SimAgency
    from emiso.agency.sim.statelock import StateLocked, hold_state_lock

    if options.state_dir is None:
        raise BackendUnavailable("backend sim needs --state-dir DIR")
    try:
        # The descriptor stays open, and the lock held, until the process ends.
        hold_state_lock(options.state_dir, kill_stale=options.operation is None)
    except StateLocked as error:
        raise BackendUnavailable(str(error)) from None
    return SimAgency(options.state_dir)


def _make_qemu_backend(options: argparse.Namespace):
    from emiso.agency.qemu.agency import QemuAgency, QemuUnavailable, find_qemu

    if options.state_dir is None:
        raise BackendUnavailable("backend qemu needs --state-dir DIR")
    try:
        find_qemu()
    except QemuUnavailable as error:
        raise BackendUnavailable(str(error)) from None
    return QemuAgency(options.state_dir)


def _make_soo_backend(options: argparse.Namespace):
    from emiso.agency.soo.agency_a import GenerationABackend
    from emiso.agency.soo.agency_c import CapsuleBackend
    from emiso.agency.soo.device import DeviceError, SooDevice
    from emiso.agency.soo.logs import (
        DEFAULT_PER_ME_LOG,
        DEFAULT_SHARED_LOG,
        LogLayout,
    )

    from emiso.agency.sim.statelock import StateLocked, hold_state_lock

    if options.state_dir is None:
        raise BackendUnavailable(f"backend {options.backend} needs --state-dir DIR")
    try:
        # One driver at a time sends ioctls and writes the slot records; the
        # lock is held until the process ends.
        hold_state_lock(options.state_dir, kill_stale=options.operation is None)
    except StateLocked as error:
        raise BackendUnavailable(str(error)) from None
    capsule = options.backend == "capsule"
    template = options.me_log or (DEFAULT_PER_ME_LOG if capsule else DEFAULT_SHARED_LOG)
    try:
        layout = LogLayout(template, options.me_log_id)
    except ValueError as error:
        raise BackendUnavailable(str(error)) from None
    generation = "C" if capsule else "A"
    if options.device.startswith(FAKE_DEVICE_PREFIX):
        device = _fake_device(options.device[len(FAKE_DEVICE_PREFIX):], generation,
                              options.abi)
    else:
        device = SooDevice(options.device)
    backend_class = CapsuleBackend if capsule else GenerationABackend
    try:
        return backend_class(device, options.state_dir, options.abi, layout)
    except DeviceError as error:
        raise BackendUnavailable(str(error)) from None


def _fake_device(directory: str, generation: str, abi: str):
    # The fake kernel lives in the test suite; it is only found when the
    # driver runs from a source tree.
    try:
        from tests.fakesoo import FakeSooDevice
    except ImportError as error:
        raise BackendUnavailable(
            f"--device {FAKE_DEVICE_PREFIX}DIR needs the test suite's fake "
            f"kernel (tests/fakesoo.py): {error}"
        ) from None
    return FakeSooDevice(directory, generation, abi)


# Backend name -> factory taking the parsed options. A backend object has
# operations() -> {wire name: callable} and poll() -> list of event dicts.
BACKENDS: dict[str, Callable] = {
    "sim": _make_sim_backend,
    "qemu": _make_qemu_backend,
    "soo": _make_soo_backend,
    "capsule": _make_soo_backend,
}


class BackendUnavailable(Exception):
    """The requested backend cannot be started."""


class Driver:
    """
    Read requests, run them on the backend one at a time, write replies.

    Replies and monitor events share one output stream; every write holds
    C{self._write_lock}, so each message stays on one whole line.
    """

    def __init__(self, backend, output: BinaryIO) -> None:
        self.backend = backend
        self._operations = backend.operations()
        self._output = output
        self._write_lock = threading.Lock()
        self._stopping = threading.Event()

    def serve(self, requests: BinaryIO) -> None:
        """Handle request lines until end of file or a C{shutdown} request."""
        monitor = threading.Thread(target=self._monitor, name="me-monitor", daemon=True)
        monitor.start()
        try:
            for line in requests:
                if not line.strip():
                    continue
                reply, shutdown = self.handle_line(line)
                self.send(reply)
                if shutdown:
                    logger.info("Shutdown requested; driver exits, MEs keep running")
                    return
            logger.info("End of input; driver exits, MEs keep running")
        finally:
            self._stopping.set()
            monitor.join(timeout=5)

    def handle_line(self, line: bytes) -> tuple[dict, bool]:
        """Run the request on one line; return the reply and whether to stop."""
        try:
            request = decode_message(line)
        except ProtocolError as error:
            logger.warn("Rejected a broken request line: {error}", error=error)
            return _error_reply(None, "invalid", f"broken request: {error}"), False
        request_id = request.get("id")
        operation = request.get("op")
        arguments = request.get("args", {})
        if operation == "shutdown":
            return {"id": request_id, "result": {}}, True
        return self.run_operation(request_id, operation, arguments), False

    def run_operation(self, request_id, operation, arguments) -> dict:
        """Run one operation; any failure becomes an error reply."""
        if operation == "ping":
            return {"id": request_id, "result": {}}
        method = self._operations.get(operation) if isinstance(operation, str) else None
        if method is None:
            known = ", ".join(sorted([*self._operations, "ping", "shutdown"]))
            return _rejected_request(
                request_id, f"unknown operation {operation!r}; known: {known}"
            )
        if not isinstance(arguments, dict):
            return _rejected_request(
                request_id, f"args of {operation} must be a JSON object"
            )
        try:
            inspect.signature(method).bind(**arguments)
        except TypeError as error:
            return _rejected_request(
                request_id, f"invalid arguments for {operation}: {error}"
            )
        try:
            result = method(**arguments)
        except OperationError as error:
            logger.info(
                "Request {id} ({operation}) failed: {kind}: {message}",
                id=request_id,
                operation=operation,
                kind=error.kind,
                message=error.message,
            )
            return _error_reply(request_id, error.kind, error.message)
        except Exception as error:
            logger.failure(
                "Request {id} ({operation}) raised an unexpected error",
                id=request_id,
                operation=operation,
            )
            return _error_reply(
                request_id,
                "internal",
                f"{operation} failed: {type(error).__name__}: {error}",
            )
        return {"id": request_id, "result": result}

    def send(self, message: dict) -> None:
        """Write one message line and flush it."""
        data = encode_message(message)
        with self._write_lock:
            self._output.write(data)
            self._output.flush()

    def _monitor(self) -> None:
        while not self._stopping.wait(MONITOR_INTERVAL):
            try:
                events = self.backend.poll()
            except Exception:
                logger.failure("Checking the ME processes failed")
                continue
            for event in events:
                try:
                    self.send(event)
                except (BrokenPipeError, ValueError):
                    # The controller closed our stdout, so events cannot be delivered.
                    return


def _error_reply(request_id, kind: str, message: str) -> dict:
    return {"id": request_id, "error": {"kind": kind, "message": message}}


def _rejected_request(request_id, message: str) -> dict:
    logger.warn("Rejected request {id}: {message}", id=request_id, message=message)
    return _error_reply(request_id, "invalid", message)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """Parse the driver command line."""
    parser = argparse.ArgumentParser(
        prog="python -m emiso.agency.driver",
        description=(
            "EMISO agency driver. Without OPERATION, serves newline-delimited "
            "JSON requests on stdin and writes replies and events on stdout."
        ),
    )
    parser.add_argument(
        "--backend",
        default="sim",
        help=(
            "agency backend: sim (simulated smart object), qemu (QEMU virtual "
            "machines), soo (generation-A agency kernel) or capsule (capsule "
            "agency kernel); default sim"
        ),
    )
    parser.add_argument(
        "--state-dir", default=None, help="directory for the backend's slot files"
    )
    parser.add_argument(
        "--device",
        default="/dev/soo/core",
        help="agency device of the soo and capsule backends; default /dev/soo/core",
    )
    parser.add_argument(
        "--abi",
        choices=("arm64", "arm"),
        default="arm64",
        help="ABI of the agency kernel's ioctl structures; default arm64",
    )
    parser.add_argument(
        "--me-log",
        default=None,
        metavar="TEMPLATE",
        help=(
            "syslog file of the ME console lines; {id} stands for the ME's id, "
            "and a template without {id} names one file shared by all MEs. "
            "Default /var/log/soo/me (soo) or /var/log/soo/me_{id}.log (capsule)"
        ),
    )
    parser.add_argument(
        "--me-log-id",
        choices=("slot", "capsule"),
        default="slot",
        help="the id in ME log file names and [ME:<id>] prefixes; default slot",
    )
    parser.add_argument(
        "operation",
        nargs="?",
        help="run this one operation (for example list), print the reply and exit",
    )
    parser.add_argument(
        "arguments",
        nargs="*",
        metavar="NAME=VALUE",
        help="arguments of OPERATION; a VALUE that parses as JSON is used as JSON",
    )
    return parser.parse_args(argv)


def make_backend(options: argparse.Namespace):
    """
    Build the backend named by C{--backend}.

    @raise BackendUnavailable: unknown backend, missing options, or a
        missing agency device.
    """
    factory = BACKENDS.get(options.backend)
    if factory is not None:
        return factory(options)
    raise BackendUnavailable(
        f"unknown backend {options.backend!r}; available: {', '.join(sorted(BACKENDS))}"
    )


def parse_operation_arguments(pairs: list[str]) -> dict:
    """Turn C{NAME=VALUE} words into an argument dict."""
    arguments = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name:
            raise ValueError(f"argument {pair!r} is not NAME=VALUE")
        try:
            arguments[name] = json.loads(value)
        except ValueError:
            arguments[name] = value
    return arguments


def main(argv: list[str] | None = None) -> int:
    """Entry point of C{python -m emiso.agency.driver}; return the exit status."""
    options = parse_arguments(sys.argv[1:] if argv is None else argv)
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    try:
        backend = make_backend(options)
    except BackendUnavailable as error:
        print(f"emiso.agency.driver: error: {error}", file=sys.stderr)
        return 2
    output = sys.stdout.buffer
    driver = Driver(backend, output)
    if options.operation is not None:
        try:
            arguments = parse_operation_arguments(options.arguments)
        except ValueError as error:
            print(f"emiso.agency.driver: error: {error}", file=sys.stderr)
            return 2
        reply = driver.run_operation(None, options.operation, arguments)
        driver.send(reply)
        return 1 if "error" in reply else 0
    logger.info(
        "Driver {pid} serving backend {backend}",
        pid=os.getpid(),
        backend=options.backend,
    )
    try:
        driver.serve(sys.stdin.buffer)
    except BrokenPipeError:
        logger.warn("Output closed; driver exits")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ME controller: runs the agency driver process and exchanges JSON lines with it.

Requests go to the driver's stdin one at a time, and replies and unsolicited
events come back on its stdout. The controller enforces a timeout per request
and replaces a driver that hangs, writes invalid output or exits.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import attr
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from emiso.agency.interfaces import IAgency
from emiso.agency.protocol import ProtocolError, decode_message, encode_message
from emiso.errors import (
    AgencyError,
    AgencyTimeout,
    BadAgencyState,
    DriverDied,
    EngineError,
    InvalidImage,
    MigrationRefused,
    NoFreeSlot,
    NoMemory,
)

log = Logger()

#: Maximum length of a driver stdout line, in bytes without the newline.
MAX_LINE_LENGTH = 1024 * 1024

#: Maximum length of a stderr line logged as one entry, in bytes. Longer output
#: is logged in pieces.
MAX_STDERR_LINE_LENGTH = 64 * 1024

#: Seconds each operation may take before the driver is abandoned.
DEFAULT_TIMEOUTS: Mapping[str, float] = {
    "hello": 10.0,
    "list": 10.0,
    "inject": 30.0,
    "finalize": 60.0,
    "initialize": 30.0,
    "terminate": 30.0,
    "read_snapshot": 60.0,
    "write_snapshot": 60.0,
}

#: Restart delay after the first driver exit, in seconds. It doubles on each
#: further exit, up to MAX_RESTART_DELAY.
INITIAL_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0

#: A driver that ran at least this many seconds before it exited is restarted
#: after INITIAL_RESTART_DELAY again.
STABLE_UPTIME = 10.0

#: Seconds stop() waits for the driver to exit after "shutdown" before SIGKILL.
SHUTDOWN_GRACE = 5.0

#: Driver error kind -> engine exception. The kind "invalid" is handled by
#: error_for_reply because it maps to InvalidImage only for a rejected image.
ERROR_EXCEPTIONS: Mapping[str, type[EngineError]] = {
    "no_slot": NoFreeSlot,
    "no_memory": NoMemory,
    "refused": MigrationRefused,
    "bad_state": BadAgencyState,
    "not_found": AgencyError,
    "invalid": AgencyError,
    "internal": AgencyError,
}

_IMAGE_WORDS = re.compile(r"\b(image|fit|itb|dtb|fdt)\b|/ME\b", re.IGNORECASE)


@attr.s(auto_attribs=True, eq=False)
class _Request:
    """One driver operation, from call() until its Deferred fires."""

    op: str
    args: dict
    timeout: float
    deferred: Deferred = attr.ib(factory=Deferred)
    request_id: int | None = None
    timer: IDelayedCall | None = None

    def describe(self) -> str:
        """Return a phrase naming the operation and its slot, for messages."""
        slot = self.args.get("slot")
        if slot is None:
            return f"agency operation {self.op!r}"
        return f"agency operation {self.op!r} on slot {slot}"

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


def error_for_reply(op: str, args: dict, error: object) -> EngineError:
    """
    Build the engine exception for a driver error reply.

    C{invalid} becomes L{InvalidImage} when an C{inject} was rejected because
    of its image, that is when the message contains the image path or one of
    the words image, FIT, ITB, DTB, fdt or /ME. Any other C{invalid} is an
    engine bug and becomes L{AgencyError}, and so do unknown kinds.

    @param op: the operation that failed.
    @param args: the operation's arguments.
    @param error: the reply's C{error} member, normally
        C{{"kind": str, "message": str}}.
    @return: the exception, with the driver's kind in its C{kind} attribute.
    """
    if isinstance(error, dict):
        kind = str(error.get("kind", "internal"))
        message = str(error.get("message", ""))
    else:
        kind, message = "internal", repr(error)
    exception_class = ERROR_EXCEPTIONS.get(kind, AgencyError)
    if kind == "invalid" and _is_image_error(op, args, message):
        exception_class = InvalidImage
    slot = args.get("slot")
    where = f"agency operation {op!r}" + ("" if slot is None else f" on slot {slot}")
    detail = message or f"the driver returned error kind {kind!r}"
    exception = exception_class(f"{where} failed: {detail}")
    exception.kind = kind
    return exception


def _is_image_error(op: str, args: dict, message: str) -> bool:
    if op != "inject":
        return False
    image = args.get("image")
    if isinstance(image, str) and image and image in message:
        return True
    return _IMAGE_WORDS.search(message) is not None


def _describe_exit(reason: Failure) -> str:
    signal = getattr(reason.value, "signal", None)
    if signal is not None:
        return f"killed by signal {signal}"
    return f"exit status {getattr(reason.value, 'exitCode', None)}"


class DriverProtocol(ProcessProtocol):
    """
    The pipe ends of one driver process.

    Splits stdout into lines for the controller and logs stderr lines. Once
    the controller abandons this driver, all further output is dropped.

    @ivar pid: the driver's process id, kept after the process has exited.
    @ivar abandoned: True once the controller killed or gave up on the driver.
    """

    def __init__(self, controller: MEController) -> None:
        self._controller = controller
        self._stdout = bytearray()
        self._stderr = bytearray()
        self.pid: int | None = None
        self.abandoned = False
        self.last_stderr_line = ""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        self._stdout += data
        while not self.abandoned:
            end = self._stdout.find(b"\n")
            if end < 0:
                break
            line = bytes(self._stdout[:end])
            del self._stdout[: end + 1]
            if len(line) > MAX_LINE_LENGTH:
                self._stdout_too_long(len(line))
                return
            self._controller._line_received(self, line)
        if self.abandoned:
            self._stdout.clear()
        elif len(self._stdout) > MAX_LINE_LENGTH:
            self._stdout_too_long(len(self._stdout))

    def _stdout_too_long(self, length: int) -> None:
        self._stdout.clear()
        self._controller._driver_broken(
            self, f"a stdout line is longer than {MAX_LINE_LENGTH} bytes ({length})"
        )

    def errReceived(self, data: bytes) -> None:
        self._stderr += data
        while True:
            end = self._stderr.find(b"\n")
            if end < 0:
                break
            self._log_stderr(bytes(self._stderr[:end]))
            del self._stderr[: end + 1]
        if len(self._stderr) > MAX_STDERR_LINE_LENGTH:
            self._log_stderr(bytes(self._stderr))
            self._stderr.clear()

    def _log_stderr(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text.strip():
            # Kept for the error of a request the driver dies during, which
            # otherwise names only the exit status.
            self.last_stderr_line = text
        log.info("agency driver {pid}: {line}", pid=self.pid, line=text)

    def processEnded(self, reason: Failure) -> None:
        if self._stderr:
            self._log_stderr(bytes(self._stderr))
            self._stderr.clear()
        self._controller._driver_ended(self, reason)


@implementer(IAgency)
class MEController:
    """
    Runs one agency driver process and serialises the engine's calls to it.

    Calls are queued and sent one at a time. Each request has a timeout;
    when it expires, the request fails with L{AgencyTimeout}, the driver is
    killed with SIGKILL and replaced at once, and L{degraded} stays True
    until a C{list} succeeds. A driver that exits fails the request in flight
    with L{DriverDied} and is restarted after a delay that grows from 0.5 s
    to 30 s while drivers keep exiting within 10 s of their start. Queued
    requests wait for the new driver.

    @ivar degraded: True after an abandoned request until a C{list} succeeds.
    @ivar driver_info: the result of the last successful C{hello}, or None.
    """

    def __init__(
        self,
        reactor,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeouts: Mapping[str, float] | None = None,
        default_timeout: float = 30.0,
    ) -> None:
        """
        @param reactor: an L{IReactorProcess} and L{IReactorTime} provider.
        @param argv: the driver's command line; C{argv[0]} is the executable.
        @param env: the driver's environment; None passes the engine's own.
        @param timeouts: seconds per operation, overriding L{DEFAULT_TIMEOUTS}.
        @param default_timeout: seconds for operations not named in either.
        """
        if not argv:
            raise ValueError("argv must name the driver executable")
        self._reactor = reactor
        self._argv = list(argv)
        self._env = env
        self._timeouts = dict(DEFAULT_TIMEOUTS)
        self._timeouts.update(timeouts or {})
        self._default_timeout = default_timeout

        self._driver: DriverProtocol | None = None
        self._spawned_at = 0.0
        self._queue: deque[_Request] = deque()
        self._in_flight: _Request | None = None
        self._next_id = 1
        self._subscribers: list[Callable[[dict], None]] = []
        self._restart_delay = INITIAL_RESTART_DELAY
        self._restart_call: IDelayedCall | None = None

        self._started = False
        self._stopped = False
        self._stop_done = False
        self._stop_waiters: list[Deferred] = []
        self._shutdown_id: int | None = None
        self._kill_call: IDelayedCall | None = None

        self.degraded = False
        self.driver_info: dict | None = None

    @property
    def driver_pid(self) -> int | None:
        """Process id of the current driver, or None while none runs."""
        if self._driver is None:
            return None
        return self._driver.pid

    # Public API

    def start(self) -> Deferred:
        """
        Spawn the driver and send it C{hello}.

        @return: a Deferred that fires with the C{hello} result, or fails with
            L{AgencyError} if the driver cannot be spawned.
        """
        if self._stopped:
            return fail(AgencyError("agency controller is stopped"))
        if self._started:
            return fail(AgencyError("agency controller is already started"))
        try:
            self._spawn_driver()
        except OSError as error:
            log.error(
                "Failed to start agency driver {argv}: {error}",
                argv=self._argv,
                error=error,
            )
            return fail(
                AgencyError(f"failed to start agency driver {self._argv[0]}: {error}")
            )
        self._started = True
        return self.call("hello").addCallback(self._hello_succeeded)

    def stop(self) -> Deferred:
        """
        Send C{shutdown} to the driver and wait until it exits.

        Queued requests fail with L{AgencyError}. If the driver has not
        exited after L{SHUTDOWN_GRACE} seconds it is killed with SIGKILL.
        No driver is started after this call.

        @return: a Deferred that fires with None once the driver has exited
            or was killed.
        """
        if self._stopped:
            if self._stop_done:
                return succeed(None)
            waiter = Deferred()
            self._stop_waiters.append(waiter)
            return waiter
        self._stopped = True
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None

        queued = list(self._queue)
        self._queue.clear()
        for request in queued:
            self._fail(request, AgencyError("agency controller is stopped"))

        driver = self._driver
        if driver is None:
            self._finish_stop()
            return succeed(None)
        log.info("Stopping agency driver {pid}", pid=driver.pid)
        self._shutdown_id = self._take_id()
        try:
            driver.transport.write(
                encode_message({"id": self._shutdown_id, "op": "shutdown", "args": {}})
            )
            driver.transport.closeStdin()
        except OSError as error:
            log.warn(
                "Failed to send shutdown to agency driver {pid}: {error}",
                pid=driver.pid,
                error=error,
            )
        self._kill_call = self._reactor.callLater(
            SHUTDOWN_GRACE, self._kill_after_shutdown, driver
        )
        waiter = Deferred()
        self._stop_waiters.append(waiter)
        return waiter

    def call(self, op: str, **args) -> Deferred:
        """
        Queue one driver operation; it is sent once the previous one is done.

        Its timeout, from the C{timeouts} given to the constructor, starts
        when the request is written to the driver.

        @return: a Deferred that fires with the result dict, or fails with an
            L{AgencyError} subclass or L{InvalidImage}.
        """
        if self._stopped:
            return fail(AgencyError("agency controller is stopped"))
        if not self._started:
            return fail(AgencyError("agency controller is not started"))
        request = self._new_request(op, args)
        self._queue.append(request)
        self._send_next()
        return request.deferred

    def subscribe(self, callback: Callable[[dict], None]) -> None:
        """
        Register C{callback} for unsolicited driver events (dicts with C{event}).

        An exception raised by C{callback} is logged and otherwise ignored.
        """
        self._subscribers.append(callback)

    def list_slots(self) -> Deferred:
        """List slots 2 to 6: fires with C{{"slots": [...]}}."""
        return self.call("list")

    def inject(self, image: str, log: str, token: str) -> Deferred:
        """Load the ME in the FIT file C{image} into a free slot (booting)."""
        return self.call("inject", image=image, log=log, token=token)

    def finalize(self, slot: int) -> Deferred:
        """Bring the ME in C{slot} to living (boot, resume or restore)."""
        return self.call("finalize", slot=slot)

    def initialize(self, slot: int) -> Deferred:
        """Suspend the living ME in C{slot}."""
        return self.call("initialize", slot=slot)

    def terminate(self, slot: int) -> Deferred:
        """Force-terminate the ME in C{slot} and free the slot."""
        return self.call("terminate", slot=slot)

    def read_snapshot(self, slot: int, path: str) -> Deferred:
        """Write the snapshot of the suspended ME in C{slot} to C{path}."""
        return self.call("read_snapshot", slot=slot, path=path)

    def write_snapshot(
        self, path: str, log: str, token: str, image: str | None = None
    ) -> Deferred:
        """
        Restore the snapshot zip C{path} into a free slot (migrating).

        C{image}, when given, is the local image file the snapshot's ME runs
        from (the simulated agency needs it for a snapshot taken elsewhere).
        """
        args = {"path": path, "log": log, "token": token}
        if image is not None:
            args["image"] = image
        return self.call("write_snapshot", **args)

    # Requests

    def _take_id(self) -> int:
        request_id = self._next_id
        self._next_id += 1
        return request_id

    def _new_request(self, op: str, args: dict) -> _Request:
        timeout = self._timeouts.get(op, self._default_timeout)
        request = _Request(op=op, args=args, timeout=timeout)
        request.deferred = Deferred(lambda _: self._cancel(request))
        return request

    def _cancel(self, request: _Request) -> None:
        # A queued request is dropped. One in flight keeps running in the
        # driver, and its reply is ignored when it arrives.
        if request in self._queue:
            self._queue.remove(request)

    def _send_next(self) -> None:
        while self._in_flight is None and self._driver is not None and self._queue:
            request = self._queue.popleft()
            request.request_id = self._take_id()
            message = {"id": request.request_id, "op": request.op, "args": request.args}
            try:
                line = encode_message(message)
            except (TypeError, ValueError) as error:
                self._fail(
                    request,
                    AgencyError(
                        f"{request.describe()} has arguments that cannot be "
                        f"encoded as JSON: {error}"
                    ),
                )
                continue
            self._in_flight = request
            request.timer = self._reactor.callLater(
                request.timeout, self._request_timed_out, request
            )
            self._driver.transport.write(line)

    def _fail(self, request: _Request, error: Exception) -> None:
        request.cancel_timer()
        if not request.deferred.called:
            request.deferred.errback(Failure(error))

    def _take_in_flight(self) -> _Request | None:
        request, self._in_flight = self._in_flight, None
        if request is not None:
            request.cancel_timer()
        return request

    def _hello_succeeded(self, result: dict) -> dict:
        self.driver_info = result
        log.info(
            "Agency driver {pid} ready: backend {backend}, protocol version "
            "{version}",
            pid=self.driver_pid,
            backend=result.get("backend"),
            version=result.get("version"),
        )
        return result

    # Driver output

    def _line_received(self, driver: DriverProtocol, line: bytes) -> None:
        if driver is not self._driver or not line.strip():
            return
        try:
            message = decode_message(line)
        except ProtocolError as error:
            self._driver_broken(driver, str(error))
            return
        if message.get("id") is not None:
            self._reply_received(message)
        elif "event" in message:
            self._deliver_event(message)
        else:
            log.warn(
                "Ignoring agency driver {pid} message without id or event: "
                "{message!r}",
                pid=driver.pid,
                message=message,
            )

    def _reply_received(self, message: dict) -> None:
        request = self._in_flight
        reply_id = message.get("id")
        if request is None or reply_id != request.request_id:
            if reply_id != self._shutdown_id:
                log.warn(
                    "Ignoring agency driver reply with unexpected id {id}",
                    id=reply_id,
                )
            return
        self._take_in_flight()
        if "error" in message:
            error = error_for_reply(request.op, request.args, message["error"])
            self._fail(request, error)
        else:
            result = message.get("result")
            if result is None:
                result = {}
            if request.op == "list" and self.degraded:
                self.degraded = False
                log.info("Agency listed its slots again; no longer degraded")
            if not request.deferred.called:
                request.deferred.callback(result)
        self._send_next()

    def _deliver_event(self, event: dict) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.failure(
                    "Agency event subscriber {subscriber!r} raised on event {event!r}",
                    subscriber=subscriber,
                    event=event,
                )

    # Driver lifecycle

    def _spawn_driver(self) -> None:
        driver = DriverProtocol(self)
        env = dict(os.environ) if self._env is None else dict(self._env)
        transport = self._reactor.spawnProcess(
            driver, self._argv[0], self._argv, env=env
        )
        driver.pid = transport.pid
        self._driver = driver
        self._spawned_at = self._reactor.seconds()
        log.info("Started agency driver {pid}: {argv}", pid=driver.pid, argv=self._argv)

    def _restart_driver(self) -> None:
        self._restart_call = None
        if self._stopped:
            return
        try:
            self._spawn_driver()
        except OSError as error:
            log.error(
                "Failed to restart agency driver {argv}: {error}; retrying",
                argv=self._argv,
                error=error,
            )
            self._schedule_restart(uptime=0.0)
            return
        # The new driver gets hello before the queued requests.
        hello = self._new_request("hello", {})
        hello.deferred.addCallbacks(self._hello_succeeded, self._hello_failed)
        self._queue.appendleft(hello)
        self._send_next()

    def _hello_failed(self, reason: Failure) -> None:
        log.error(
            "Restarted agency driver failed hello: {error}",
            error=reason.getErrorMessage(),
        )

    def _schedule_restart(self, uptime: float) -> None:
        if self._stopped:
            return
        if uptime >= STABLE_UPTIME:
            self._restart_delay = INITIAL_RESTART_DELAY
        delay = self._restart_delay
        self._restart_delay = min(delay * 2, MAX_RESTART_DELAY)
        log.info("Restarting agency driver in {delay} s", delay=delay)
        self._restart_call = self._reactor.callLater(delay, self._restart_driver)

    def _abandon(self, driver: DriverProtocol) -> None:
        """Kill C{driver} with SIGKILL and forget it, so its later output is dropped."""
        driver.abandoned = True
        if self._driver is driver:
            self._driver = None
        try:
            driver.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        except OSError as error:
            log.error(
                "Failed to kill agency driver {pid}: {error}",
                pid=driver.pid,
                error=error,
            )
        if self._stopped:
            self._finish_stop()

    def _request_timed_out(self, request: _Request) -> None:
        if request is not self._in_flight or self._driver is None:
            return
        driver = self._driver
        self._in_flight = None
        request.timer = None
        self.degraded = True
        log.error(
            "{what} timed out after {timeout} s; abandoning agency driver {pid}",
            what=request.describe(),
            timeout=request.timeout,
            pid=driver.pid,
        )
        self._abandon(driver)
        if not self._stopped:
            self._restart_driver()
        self._fail(
            request,
            AgencyTimeout(
                f"{request.describe()} timed out after {request.timeout:g} s"
            ),
        )

    def _driver_broken(self, driver: DriverProtocol, problem: str) -> None:
        if driver is not self._driver:
            return
        uptime = self._reactor.seconds() - self._spawned_at
        log.error(
            "Agency driver {pid} sent an invalid line ({problem}); killing it",
            pid=driver.pid,
            problem=problem,
        )
        request = self._take_in_flight()
        self._abandon(driver)
        self._schedule_restart(uptime)
        if request is not None:
            self._fail(
                request,
                DriverDied(
                    f"agency driver {driver.pid} sent an invalid reply to "
                    f"{request.describe()}: {problem}"
                ),
            )

    def _driver_ended(self, driver: DriverProtocol, reason: Failure) -> None:
        if driver is not self._driver:
            log.info(
                "Abandoned agency driver {pid} ended: {status}",
                pid=driver.pid,
                status=_describe_exit(reason),
            )
            return
        self._driver = None
        status = _describe_exit(reason)
        uptime = self._reactor.seconds() - self._spawned_at
        request = self._take_in_flight()
        if self._stopped:
            log.info(
                "Agency driver {pid} exited: {status}", pid=driver.pid, status=status
            )
            self._finish_stop()
        else:
            log.error(
                "Agency driver {pid} exited after {uptime:.1f} s: {status}",
                pid=driver.pid,
                uptime=uptime,
                status=status,
            )
            self._schedule_restart(uptime)
        if request is not None:
            message = f"agency driver {driver.pid} exited ({status}) during {request.describe()}"
            if driver.last_stderr_line:
                message += f"; its last message: {driver.last_stderr_line.strip()}"
            self._fail(request, DriverDied(message))

    def _kill_after_shutdown(self, driver: DriverProtocol) -> None:
        self._kill_call = None
        if driver is not self._driver:
            return
        log.warn(
            "Agency driver {pid} did not exit within {grace} s of shutdown; "
            "killing it",
            pid=driver.pid,
            grace=SHUTDOWN_GRACE,
        )
        request = self._take_in_flight()
        self._abandon(driver)
        if request is not None:
            self._fail(
                request,
                DriverDied(
                    f"agency driver {driver.pid} was killed at stop during "
                    f"{request.describe()}"
                ),
            )

    def _finish_stop(self) -> None:
        if self._stop_done:
            return
        self._stop_done = True
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

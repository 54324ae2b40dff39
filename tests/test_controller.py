"""Tests for emiso.agency.controller: the MEController and its driver protocol.

Most tests drive the controller through the fake process reactor in
tests.fakes; one class runs it against the real sim driver process.
"""

import json
import os
import sys
from unittest import SkipTest

from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.interfaces import IProcessTransport, IReactorProcess, IReactorTime
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

import emiso
from emiso.agency.controller import MAX_LINE_LENGTH, MEController
from emiso.agency.interfaces import IAgency
from emiso.agency.protocol import encode_message
from emiso.errors import (
    AgencyError,
    AgencyTimeout,
    BadAgencyState,
    DriverDied,
    InvalidImage,
    MigrationRefused,
    NoFreeSlot,
    NoMemory,
)
from tests.fakes import ProcessMemoryReactor

ARGV = [
    "/usr/bin/python3",
    "-m",
    "emiso.agency.driver",
    "--backend",
    "sim",
    "--state-dir",
    "/data/agency",
]
ENV = {"PATH": "/usr/bin:/bin"}
HELLO = {"backend": "sim", "version": 1, "pid": 1000}


def sent_messages(process) -> list[dict]:
    """Return the JSON messages written to a fake process's stdin."""
    text = process.written_text()
    return [json.loads(line) for line in text.splitlines()]


def reply(process, request_id, result=None, error=None) -> None:
    """Simulate a driver reply on stdout."""
    message = {"id": request_id}
    if error is not None:
        message["error"] = error
    else:
        message["result"] = {} if result is None else result
    process.send_stdout(encode_message(message))


def reply_to_last(process, result=None, error=None) -> None:
    """Simulate the reply to the last request written to C{process}."""
    reply(process, sent_messages(process)[-1]["id"], result, error)


class ControllerTestMixin:
    """Build a controller on a fake reactor and start it."""

    def make_controller(self, **kwargs) -> MEController:
        self.reactor = ProcessMemoryReactor()
        kwargs.setdefault("env", ENV)
        self.controller = MEController(self.reactor, ARGV, **kwargs)
        return self.controller

    def start_controller(self, **kwargs):
        """Start a controller, reply to its hello and return the fake process."""
        controller = self.make_controller(**kwargs)
        started = controller.start()
        process = self.reactor.last_process
        reply_to_last(process, HELLO)
        self.successResultOf(started)
        return process


class FakeReactorTests(SynchronousTestCase):
    """The fakes provide the interfaces the controller relies on."""

    def test_reactor_provides_process_and_time(self):
        reactor = ProcessMemoryReactor()

        self.assertTrue(verifyObject(IReactorProcess, reactor))
        self.assertTrue(verifyObject(IReactorTime, reactor))

    def test_transport_provides_process_transport(self):
        reactor = ProcessMemoryReactor()
        controller = MEController(reactor, ARGV, env=ENV)

        controller.start()

        self.assertTrue(verifyObject(IProcessTransport, reactor.last_process))

    def test_controller_provides_iagency(self):
        controller = MEController(ProcessMemoryReactor(), ARGV)

        self.assertTrue(verifyObject(IAgency, controller))


class StartTests(ControllerTestMixin, SynchronousTestCase):
    """start() spawns the driver and sends hello."""

    def test_spawn_passes_argv(self):
        controller = self.make_controller()

        controller.start()

        process = self.reactor.last_process
        self.assertEqual(process.executable, ARGV[0])
        self.assertEqual(process.args, ARGV)
        self.assertEqual(process.env, ENV)

    def test_env_none_inherits_environment(self):
        controller = self.make_controller(env=None)

        controller.start()

        self.assertEqual(self.reactor.last_process.env, dict(os.environ))

    def test_start_sends_hello(self):
        controller = self.make_controller()

        controller.start()

        [message] = sent_messages(self.reactor.last_process)
        self.assertEqual(message["op"], "hello")
        self.assertEqual(message["args"], {})
        self.assertIsInstance(message["id"], int)

    def test_start_fires_with_hello_result(self):
        controller = self.make_controller()
        started = controller.start()

        reply_to_last(self.reactor.last_process, HELLO)

        self.assertEqual(self.successResultOf(started), HELLO)
        self.assertEqual(controller.driver_info, HELLO)

    def test_driver_pid_is_process_pid(self):
        process = self.start_controller()

        self.assertEqual(self.controller.driver_pid, process.pid)

    def test_start_twice_fails(self):
        self.start_controller()

        failure = self.failureResultOf(self.controller.start(), AgencyError)

        self.assertEqual(str(failure.value), "agency controller is already started")

    def test_spawn_error_fails_start(self):
        controller = self.make_controller()
        self.reactor.spawn_error = OSError("no such file")

        failure = self.failureResultOf(controller.start(), AgencyError)

        self.assertIn("no such file", str(failure.value))

    def test_call_before_start_fails(self):
        controller = self.make_controller()

        failure = self.failureResultOf(controller.call("list"), AgencyError)

        self.assertEqual(str(failure.value), "agency controller is not started")


class CallTests(ControllerTestMixin, SynchronousTestCase):
    """call() writes one JSON line and fires with the matching reply."""

    def test_call_writes_json_line(self):
        process = self.start_controller()

        self.controller.inject("/img/a.itb", "/c/console.log", "abc")

        self.assertTrue(process.written_text().endswith("\n"))
        self.assertEqual(
            sent_messages(process)[-1],
            {
                "id": 2,
                "op": "inject",
                "args": {
                    "image": "/img/a.itb",
                    "log": "/c/console.log",
                    "token": "abc",
                },
            },
        )

    def test_reply_fires_result(self):
        process = self.start_controller()
        result = self.controller.finalize(3)

        reply(process, 2, {"state": "living"})

        self.assertEqual(self.successResultOf(result), {"state": "living"})

    def test_reply_split_across_chunks(self):
        process = self.start_controller()
        result = self.controller.finalize(3)
        line = encode_message({"id": 2, "result": {"state": "living"}})

        process.send_stdout(line[:7])
        self.assertNoResult(result)
        process.send_stdout(line[7:])

        self.assertEqual(self.successResultOf(result), {"state": "living"})

    def test_two_replies_in_one_chunk(self):
        process = self.start_controller()
        first = self.controller.initialize(3)
        second = self.controller.initialize(4)

        process.send_stdout(
            encode_message({"id": 2, "result": {"state": "suspended"}})
            + encode_message({"id": 3, "result": {"state": "living"}})
        )

        self.assertEqual(self.successResultOf(first), {"state": "suspended"})
        self.assertEqual(self.successResultOf(second), {"state": "living"})

    def test_requests_sent_one_at_a_time(self):
        process = self.start_controller()
        self.controller.finalize(2)
        self.controller.terminate(3)
        self.controller.list_slots()

        self.assertEqual(len(sent_messages(process)), 2)
        reply_to_last(process, {"state": "living"})
        self.assertEqual(len(sent_messages(process)), 3)
        reply_to_last(process, {"state": "dead"})

        ops = [message["op"] for message in sent_messages(process)]
        self.assertEqual(ops, ["hello", "finalize", "terminate", "list"])

    def test_wrappers_send_op_and_args(self):
        cases = [
            (lambda c: c.list_slots(), "list", {}),
            (lambda c: c.finalize(2), "finalize", {"slot": 2}),
            (lambda c: c.initialize(3), "initialize", {"slot": 3}),
            (lambda c: c.terminate(4), "terminate", {"slot": 4}),
            (
                lambda c: c.read_snapshot(5, "/s/out.zip"),
                "read_snapshot",
                {"slot": 5, "path": "/s/out.zip"},
            ),
            (
                lambda c: c.write_snapshot("/s/in.zip", "/c/log", "tok"),
                "write_snapshot",
                {"path": "/s/in.zip", "log": "/c/log", "token": "tok"},
            ),
        ]
        for invoke, op, args in cases:
            process = self.start_controller()

            invoke(self.controller)

            message = sent_messages(process)[-1]
            self.assertEqual(message["op"], op)
            self.assertEqual(message["args"], args)

    def test_reply_with_unknown_id_ignored(self):
        process = self.start_controller()
        result = self.controller.finalize(3)

        reply(process, 99, {"state": "living"})
        self.assertNoResult(result)
        reply(process, 2, {"state": "living"})

        self.assertEqual(self.successResultOf(result), {"state": "living"})

    def test_cancel_queued_request(self):
        process = self.start_controller()
        self.controller.finalize(2)
        cancelled = self.controller.terminate(3)
        self.controller.list_slots()

        cancelled.cancel()
        reply_to_last(process, {"state": "living"})

        self.failureResultOf(cancelled, CancelledError)
        self.assertEqual(sent_messages(process)[-1]["op"], "list")

    def test_unencodable_args_fail_request(self):
        self.start_controller()

        result = self.controller.call("inject", image=object())

        self.failureResultOf(result, AgencyError)


class ErrorReplyTests(ControllerTestMixin, SynchronousTestCase):
    """Error replies fail the request with the engine exception for the kind."""

    def fail_with(self, kind, message="driver message", op="finalize", **args):
        process = self.start_controller()
        result = self.controller.call(op, **(args or {"slot": 3}))
        reply_to_last(process, error={"kind": kind, "message": message})
        return self.failureResultOf(result).value

    def test_kinds_map_to_exceptions(self):
        table = {
            "no_slot": NoFreeSlot,
            "no_memory": NoMemory,
            "refused": MigrationRefused,
            "bad_state": BadAgencyState,
            "not_found": AgencyError,
            "internal": AgencyError,
            "invalid": AgencyError,
            "unheard_of": AgencyError,
        }
        for kind, exception_class in table.items():
            error = self.fail_with(kind)

            self.assertIs(type(error), exception_class, kind)

    def test_invalid_image_is_invalid_image(self):
        error = self.fail_with(
            "invalid",
            "not a valid FIT image: /images is missing",
            op="inject",
            image="/img/x.itb",
            log="/c/log",
            token="t",
        )

        self.assertIsInstance(error, InvalidImage)

    def test_invalid_naming_image_path(self):
        error = self.fail_with(
            "invalid",
            "cannot read /img/x.itb: No such file or directory",
            op="inject",
            image="/img/x.itb",
            log="/c/log",
            token="t",
        )

        self.assertIsInstance(error, InvalidImage)

    def test_invalid_argument_is_agency_error(self):
        error = self.fail_with("invalid", "slot must be an integer from 2 to 6")

        self.assertIs(type(error), AgencyError)

    def test_message_names_op_and_slot(self):
        error = self.fail_with("bad_state", "slot 3 is dead")

        self.assertEqual(
            str(error), "agency operation 'finalize' on slot 3 failed: slot 3 is dead"
        )

    def test_error_keeps_kind(self):
        error = self.fail_with("no_slot")

        self.assertEqual(error.kind, "no_slot")

    def test_error_does_not_block_queue(self):
        process = self.start_controller()
        failed = self.controller.finalize(3)
        listed = self.controller.list_slots()

        reply_to_last(process, error={"kind": "not_found", "message": "empty"})
        reply_to_last(process, {"slots": []})

        self.failureResultOf(failed, AgencyError)
        self.assertEqual(self.successResultOf(listed), {"slots": []})


class TimeoutTests(ControllerTestMixin, SynchronousTestCase):
    """A request that exceeds its timeout abandons the driver."""

    def test_timeout_fails_with_agency_timeout(self):
        self.start_controller()
        result = self.controller.finalize(3)

        self.reactor.advance(59.9)
        self.assertNoResult(result)
        self.reactor.advance(0.1)

        failure = self.failureResultOf(result, AgencyTimeout)
        self.assertEqual(
            str(failure.value),
            "agency operation 'finalize' on slot 3 timed out after 60 s",
        )

    def test_timeout_kills_driver(self):
        process = self.start_controller()
        timed_out = self.controller.finalize(3)

        self.reactor.advance(60)

        self.assertEqual(process.signals, ["KILL"])
        self.failureResultOf(timed_out, AgencyTimeout)

    def test_timeout_spawns_new_driver(self):
        self.start_controller()
        timed_out = self.controller.finalize(3)

        self.reactor.advance(60)

        self.failureResultOf(timed_out, AgencyTimeout)
        self.assertEqual(len(self.reactor.processes), 2)
        new = self.reactor.last_process
        self.assertEqual(self.controller.driver_pid, new.pid)
        self.assertEqual(sent_messages(new)[0]["op"], "hello")

    def test_timeout_sets_degraded_until_list(self):
        self.start_controller()
        timed_out = self.controller.finalize(3)
        self.reactor.advance(60)
        self.failureResultOf(timed_out, AgencyTimeout)
        new = self.reactor.last_process
        reply_to_last(new, HELLO)
        self.assertTrue(self.controller.degraded)

        listed = self.controller.list_slots()
        reply_to_last(new, {"slots": []})

        self.successResultOf(listed)
        self.assertFalse(self.controller.degraded)

    def test_queued_request_goes_to_new_driver(self):
        self.start_controller()
        timed_out = self.controller.finalize(3)
        queued = self.controller.terminate(4)
        self.reactor.advance(60)
        self.failureResultOf(timed_out, AgencyTimeout)
        new = self.reactor.last_process

        reply_to_last(new, HELLO)
        reply_to_last(new, {"state": "dead"})

        self.assertEqual(self.successResultOf(queued), {"state": "dead"})
        ops = [message["op"] for message in sent_messages(new)]
        self.assertEqual(ops, ["hello", "terminate"])

    def test_late_reply_from_abandoned_driver_ignored(self):
        old = self.start_controller()
        timed_out = self.controller.finalize(3)
        self.reactor.advance(60)
        self.failureResultOf(timed_out, AgencyTimeout)
        new = self.reactor.last_process
        hello = sent_messages(new)[0]["id"]

        reply(old, hello, {"backend": "stale"})
        old.exit(signal=9)
        reply(new, hello, HELLO)

        self.assertEqual(self.controller.driver_info, HELLO)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_custom_timeout(self):
        self.start_controller(timeouts={"finalize": 5})
        result = self.controller.finalize(3)

        self.reactor.advance(5)

        failure = self.failureResultOf(result, AgencyTimeout)
        self.assertIn("timed out after 5 s", str(failure.value))

    def test_default_timeout_for_unknown_op(self):
        self.start_controller(default_timeout=7)
        result = self.controller.call("ping")

        self.reactor.advance(6.9)
        self.assertNoResult(result)
        self.reactor.advance(0.1)

        failure = self.failureResultOf(result, AgencyTimeout)
        self.assertEqual(
            str(failure.value), "agency operation 'ping' timed out after 7 s"
        )

    def test_timer_starts_when_sent(self):
        process = self.start_controller(timeouts={"finalize": 10, "terminate": 10})
        self.controller.finalize(2)
        second = self.controller.terminate(3)
        self.reactor.advance(8)
        reply_to_last(process, {"state": "living"})

        self.reactor.advance(8)

        self.assertNoResult(second)


class DriverExitTests(ControllerTestMixin, SynchronousTestCase):
    """A driver that exits is replaced, with a growing delay."""

    def test_exit_fails_in_flight_with_driver_died(self):
        process = self.start_controller()
        result = self.controller.finalize(3)

        process.exit(status=1)

        failure = self.failureResultOf(result, DriverDied)
        self.assertEqual(
            str(failure.value),
            "agency driver 1000 exited (exit status 1) during agency "
            "operation 'finalize' on slot 3",
        )

    def test_exit_error_names_last_stderr_line(self):
        process = self.start_controller()
        result = self.controller.finalize(3)
        process.send_stderr(b"qemu-system-aarch64 is not installed\n")

        process.exit(status=2)

        failure = self.failureResultOf(result, DriverDied)
        self.assertIn(
            "its last message: qemu-system-aarch64 is not installed", str(failure.value)
        )

    def test_exit_keeps_queued_requests(self):
        process = self.start_controller()
        in_flight = self.controller.finalize(3)
        queued = self.controller.list_slots()

        process.exit(status=1)
        self.failureResultOf(in_flight, DriverDied)
        self.reactor.advance(0.5)
        new = self.reactor.last_process
        reply_to_last(new, HELLO)
        reply_to_last(new, {"slots": []})

        self.assertEqual(self.successResultOf(queued), {"slots": []})

    def test_restart_delay_doubles(self):
        process = self.start_controller()

        for delay in (0.5, 1, 2, 4, 8):
            count = len(self.reactor.processes)
            process.exit(status=1)
            self.reactor.advance(delay - 0.01)
            self.assertEqual(len(self.reactor.processes), count, delay)
            self.reactor.advance(0.01)
            self.assertEqual(len(self.reactor.processes), count + 1, delay)
            process = self.reactor.last_process

    def test_restart_delay_capped(self):
        process = self.start_controller()
        for delay in (0.5, 1, 2, 4, 8, 16, 30):
            process.exit(status=1)
            self.reactor.advance(delay)
            process = self.reactor.last_process
        count = len(self.reactor.processes)

        process.exit(status=1)
        self.reactor.advance(29.99)
        self.assertEqual(len(self.reactor.processes), count)
        self.reactor.advance(0.01)

        self.assertEqual(len(self.reactor.processes), count + 1)

    def test_restart_delay_resets_after_stable_run(self):
        process = self.start_controller()
        for delay in (0.5, 1, 2):
            process.exit(status=1)
            self.reactor.advance(delay)
            process = self.reactor.last_process
        reply_to_last(process, HELLO)
        self.reactor.advance(10)
        count = len(self.reactor.processes)

        process.exit(status=1)
        self.reactor.advance(0.5)

        self.assertEqual(len(self.reactor.processes), count + 1)

    def test_restarted_driver_gets_hello(self):
        process = self.start_controller()

        process.exit(status=1)
        self.reactor.advance(0.5)

        [message] = sent_messages(self.reactor.last_process)
        self.assertEqual(message["op"], "hello")

    def test_no_driver_pid_while_waiting(self):
        process = self.start_controller()

        process.exit(status=1)

        self.assertIsNone(self.controller.driver_pid)

    def test_restart_logged(self):
        process = self.start_controller()

        with capturedLogs() as events:
            process.exit(status=1)
            self.reactor.advance(0.5)

        text = [formatEvent(event) for event in events]
        self.assertIn("Restarting agency driver in 0.5 s", text)
        self.assertIn(f"Started agency driver 1001: {ARGV}", text)

    def test_spawn_error_on_restart_retries(self):
        process = self.start_controller()
        process.exit(status=1)
        self.reactor.spawn_error = OSError("fork failed")

        self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.processes), 1)
        self.reactor.advance(1)

        self.assertEqual(len(self.reactor.processes), 2)


class BrokenDriverTests(ControllerTestMixin, SynchronousTestCase):
    """A driver that writes an invalid line is killed and replaced."""

    def test_non_json_line_fails_request(self):
        process = self.start_controller()
        result = self.controller.finalize(3)

        process.send_stdout(b"Traceback (most recent call last):\n")

        failure = self.failureResultOf(result, DriverDied)
        self.assertIn("sent an invalid reply", str(failure.value))

    def test_non_json_line_kills_driver(self):
        process = self.start_controller()

        process.send_stdout(b"not json\n")

        self.assertEqual(process.signals, ["KILL"])

    def test_non_json_line_restarts_driver(self):
        process = self.start_controller()
        process.send_stdout(b"not json\n")

        self.reactor.advance(0.5)

        self.assertEqual(len(self.reactor.processes), 2)

    def test_json_array_breaks_driver(self):
        process = self.start_controller()

        process.send_stdout(b"[1, 2]\n")

        self.assertEqual(process.signals, ["KILL"])

    def test_rest_of_chunk_dropped(self):
        process = self.start_controller()
        first = self.controller.finalize(3)
        second = self.controller.list_slots()

        process.send_stdout(b"garbage\n" + encode_message({"id": 3, "result": {}}))

        self.failureResultOf(first, DriverDied)
        self.assertNoResult(second)

    def test_line_over_limit_breaks_driver(self):
        process = self.start_controller()
        result = self.controller.finalize(3)

        process.send_stdout(b"x" * (MAX_LINE_LENGTH + 1))

        self.failureResultOf(result, DriverDied)
        self.assertEqual(process.signals, ["KILL"])

    def test_line_at_limit_accepted(self):
        process = self.start_controller()
        result = self.controller.finalize(3)
        line = b'{"id": 2, "result": {"state": "living"}}'

        process.send_stdout(line + b" " * (MAX_LINE_LENGTH - len(line)) + b"\n")

        self.assertEqual(self.successResultOf(result), {"state": "living"})

    def test_blank_line_ignored(self):
        process = self.start_controller()
        result = self.controller.finalize(3)

        process.send_stdout(b"\n")
        reply(process, 2, {"state": "living"})

        self.assertEqual(self.successResultOf(result), {"state": "living"})


class EventTests(ControllerTestMixin, SynchronousTestCase):
    """Unsolicited events reach every subscriber."""

    EVENT = {"event": "me_state", "slot": 3, "state": "dead", "previous": "living"}

    def test_event_reaches_subscribers(self):
        process = self.start_controller()
        first, second = [], []
        self.controller.subscribe(first.append)
        self.controller.subscribe(second.append)

        process.send_stdout(encode_message(self.EVENT))

        self.assertEqual(first, [self.EVENT])
        self.assertEqual(second, [self.EVENT])

    def test_raising_subscriber_is_logged(self):
        process = self.start_controller()
        received = []
        self.controller.subscribe(lambda event: 1 / 0)
        self.controller.subscribe(received.append)
        result = self.controller.finalize(3)

        process.send_stdout(
            encode_message(self.EVENT)
            + encode_message({"id": 2, "result": {"state": "living"}})
        )

        self.assertEqual(received, [self.EVENT])
        self.assertEqual(self.successResultOf(result), {"state": "living"})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_event_between_request_and_reply(self):
        process = self.start_controller()
        received = []
        self.controller.subscribe(received.append)
        result = self.controller.finalize(3)

        process.send_stdout(encode_message(self.EVENT))

        self.assertNoResult(result)
        self.assertEqual(received, [self.EVENT])


class StderrTests(ControllerTestMixin, SynchronousTestCase):
    """Driver stderr is logged line by line with the driver pid."""

    def test_stderr_lines_logged_with_pid(self):
        process = self.start_controller()

        with capturedLogs() as events:
            process.send_stderr(b"loading slot")
            process.send_stderr(b" files\nready\n")

        text = [formatEvent(event) for event in events]
        self.assertEqual(
            text,
            ["agency driver 1000: loading slot files", "agency driver 1000: ready"],
        )

    def test_partial_stderr_logged_at_exit(self):
        process = self.start_controller()

        with capturedLogs() as events:
            process.send_stderr(b"Killed")
            process.exit(signal=9)

        text = [formatEvent(event) for event in events]
        self.assertIn("agency driver 1000: Killed", text)


class StopTests(ControllerTestMixin, SynchronousTestCase):
    """stop() shuts the driver down and disables restarts."""

    def test_stop_sends_shutdown(self):
        process = self.start_controller()

        self.controller.stop()

        self.assertEqual(sent_messages(process)[-1]["op"], "shutdown")
        self.assertTrue(process.stdin_closed)

    def test_stop_fires_after_exit(self):
        process = self.start_controller()
        stopped = self.controller.stop()
        self.assertNoResult(stopped)

        process.exit(status=0)

        self.assertIsNone(self.successResultOf(stopped))

    def test_no_restart_after_stop(self):
        process = self.start_controller()
        self.controller.stop()

        process.exit(status=0)
        self.reactor.advance(60)

        self.assertEqual(len(self.reactor.processes), 1)

    def test_stop_kills_after_grace(self):
        process = self.start_controller()
        stopped = self.controller.stop()

        self.reactor.advance(4.9)
        self.assertEqual(process.signals, [])
        self.reactor.advance(0.1)

        self.assertEqual(process.signals, ["KILL"])
        self.assertIsNone(self.successResultOf(stopped))

    def test_calls_after_stop_fail(self):
        self.start_controller()
        self.controller.stop()

        failure = self.failureResultOf(self.controller.list_slots(), AgencyError)

        self.assertEqual(str(failure.value), "agency controller is stopped")

    def test_stop_fails_queued_requests(self):
        self.start_controller()
        self.controller.finalize(2)
        queued = self.controller.terminate(3)

        self.controller.stop()

        failure = self.failureResultOf(queued, AgencyError)
        self.assertEqual(str(failure.value), "agency controller is stopped")

    def test_in_flight_reply_during_stop(self):
        process = self.start_controller()
        in_flight = self.controller.finalize(2)
        self.controller.stop()

        reply(process, 2, {"state": "living"})

        self.assertEqual(self.successResultOf(in_flight), {"state": "living"})

    def test_stop_during_restart_delay(self):
        process = self.start_controller()
        process.exit(status=1)

        stopped = self.controller.stop()
        self.reactor.advance(60)

        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(len(self.reactor.processes), 1)

    def test_stop_twice_waits_for_exit(self):
        process = self.start_controller()
        self.controller.stop()

        again = self.controller.stop()
        self.assertNoResult(again)
        process.exit(status=0)

        self.assertIsNone(self.successResultOf(again))

    def test_start_after_stop_fails(self):
        self.start_controller()
        self.controller.stop()

        failure = self.failureResultOf(self.controller.start(), AgencyError)

        self.assertEqual(str(failure.value), "agency controller is stopped")


SAMPLE_IMAGE = os.path.join(
    os.path.dirname(emiso.__file__), "samples", "refso3-sim.itb"
)


class RealDriverTests(TestCase):
    """The controller against the real sim driver process, on the real reactor."""

    timeout = 60

    def setUp(self):
        try:
            import emiso.agency.driver  # noqa: F401
        except ImportError as error:
            raise SkipTest(f"emiso.agency.driver cannot be imported: {error}")
        from twisted.internet import reactor

        self.state_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.state_dir)
        repository = os.path.dirname(os.path.dirname(os.path.abspath(emiso.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [repository] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        argv = [
            sys.executable,
            "-m",
            "emiso.agency.driver",
            "--backend",
            "sim",
            "--state-dir",
            self.state_dir,
        ]
        self.controller = MEController(reactor, argv, env=env)
        self.addCleanup(self.stop_controller)

    @inlineCallbacks
    def stop_controller(self):
        # Terminate any ME this test left behind, because sim MEs outlive the
        # driver.
        if self.controller.driver_pid is not None:
            try:
                listed = yield self.controller.list_slots()
                for slot in listed["slots"]:
                    if slot.get("state") not in ("dead", None):
                        yield self.controller.terminate(slot["slot"])
            except AgencyError:
                pass
        yield self.controller.stop()

    @inlineCallbacks
    def test_inject_finalize_terminate(self):
        hello = yield self.controller.start()
        self.assertEqual(hello["backend"], "sim")
        self.assertEqual(hello["pid"], self.controller.driver_pid)

        listed = yield self.controller.list_slots()
        self.assertEqual([slot["slot"] for slot in listed["slots"]], [2, 3, 4, 5, 6])

        console = os.path.join(self.state_dir, "console.log")
        injected = yield self.controller.inject(SAMPLE_IMAGE, console, "test-token")
        self.assertEqual(injected["state"], "booting")
        slot = injected["slot"]

        finalized = yield self.controller.finalize(slot)
        self.assertEqual(finalized["state"], "living")

        listed = yield self.controller.list_slots()
        entry = [s for s in listed["slots"] if s["slot"] == slot][0]
        self.assertEqual(entry["token"], "test-token")

        terminated = yield self.controller.terminate(slot)
        self.assertEqual(terminated["state"], "dead")

    @inlineCallbacks
    def test_invalid_image_rejected(self):
        yield self.controller.start()
        image = os.path.join(self.state_dir, "not-a-fit.itb")
        with open(image, "wb") as file:
            file.write(b"plain text, not a device tree blob\n")
        console = os.path.join(self.state_dir, "console.log")

        with self.assertRaises(InvalidImage):
            yield self.controller.inject(image, console, "test-token")

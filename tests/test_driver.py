"""Tests for emiso.agency.driver: the real driver process over pipes."""

import json
import os
import queue
import subprocess
import sys
import threading

from twisted.trial.unittest import SynchronousTestCase

from emiso.agency.protocol import decode_message, encode_message
from emiso.agency.sim.agency import read_process_info
from tests.test_sim_agency import (
    kill_me_processes,
    process_is_gone,
    wait_for,
    write_image,
)

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_IMAGE = os.path.join(REPOSITORY, "emiso", "samples", "blinky-sim.itb")
# Seconds a test waits for one reply or event before it fails.
REPLY_TIMEOUT = 10.0


def driver_argv(state_dir, *extra):
    return [
        sys.executable,
        "-m",
        "emiso.agency.driver",
        "--backend",
        "sim",
        "--state-dir",
        state_dir,
        *extra,
    ]


def driver_environment():
    environment = dict(os.environ)
    existing = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = (
        REPOSITORY if not existing else REPOSITORY + os.pathsep + existing
    )
    return environment


class DriverProcess:
    """A driver child process with a thread that reads its stdout lines."""

    def __init__(self, state_dir, stderr_path):
        self._stderr = open(stderr_path, "wb")
        self.process = subprocess.Popen(
            driver_argv(state_dir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=driver_environment(),
        )
        self.replies = queue.Queue()
        self.events = queue.Queue()
        self.raw_lines = []
        self._next_id = 1
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()

    def _read_output(self):
        for line in self.process.stdout:
            self.raw_lines.append(line)
            message = decode_message(line)
            if "event" in message:
                self.events.put(message)
            else:
                self.replies.put(message)

    def send_line(self, data):
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def request(self, op, **args):
        """Send one request and return its reply."""
        request_id = self._next_id
        self._next_id += 1
        self.send_line(encode_message({"id": request_id, "op": op, "args": args}))
        reply = self.next_reply()
        if reply.get("id") != request_id:
            raise AssertionError(f"expected reply to {request_id}, got {reply}")
        return reply

    def next_reply(self):
        try:
            return self.replies.get(timeout=REPLY_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no reply within {REPLY_TIMEOUT} s") from None

    def next_event(self):
        try:
            return self.events.get(timeout=REPLY_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no event within {REPLY_TIMEOUT} s") from None

    def close_input(self):
        self.process.stdin.close()

    def wait(self):
        return self.process.wait(timeout=REPLY_TIMEOUT)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=REPLY_TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout):
            if not stream.closed:
                stream.close()
        self._stderr.close()


class DriverProcessTests(SynchronousTestCase):
    """The driver's request loop, run as a real process over pipes."""

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.state_dir = os.path.join(self.directory, "agency")
        self.image_dir = os.path.join(self.directory, "images")
        os.makedirs(self.image_dir)
        self.stderr_path = os.path.join(self.directory, "driver.stderr")
        self.addCleanup(kill_me_processes, self.state_dir)
        self.driver = DriverProcess(self.state_dir, self.stderr_path)
        self.addCleanup(self.driver.stop)

    def log_path(self, name="me"):
        return os.path.join(self.directory, "containers", name, "console.log")

    def inject_living(self, image, name="me"):
        reply = self.driver.request(
            "inject", image=image, log=self.log_path(name), token=name
        )
        slot = reply["result"]["slot"]
        self.driver.request("finalize", slot=slot)
        return slot

    def test_hello_reports_sim(self):
        reply = self.driver.request("hello")

        self.assertEqual(reply["result"]["backend"], "sim")
        self.assertEqual(reply["result"]["pid"], self.driver.process.pid)

    def test_list_returns_five_slots(self):
        reply = self.driver.request("list")

        self.assertEqual(
            reply["result"]["slots"],
            [{"slot": slot, "state": "dead"} for slot in range(2, 7)],
        )

    def test_inject_then_finalize(self):
        injected = self.driver.request(
            "inject", image=SAMPLE_IMAGE, log=self.log_path(), token="c1"
        )
        finalized = self.driver.request("finalize", slot=2)
        listed = self.driver.request("list")

        self.assertEqual(injected["result"]["slot"], 2)
        self.assertEqual(injected["result"]["state"], "booting")
        self.assertEqual(injected["result"]["size"], 8 * 1024 * 1024)
        self.assertTrue(injected["result"]["console"].endswith("/run/2.console"))
        self.assertEqual(finalized["result"], {"state": "living"})
        entry = listed["result"]["slots"][0]
        self.assertEqual(entry["state"], "living")
        self.assertEqual(entry["name"], "SOO.blinky-sim")
        self.assertEqual(entry["token"], "c1")

    def test_unknown_operation_is_invalid(self):
        reply = self.driver.request("explode")

        self.assertEqual(reply["error"]["kind"], "invalid")
        self.assertIn("explode", reply["error"]["message"])

    def test_bad_arguments_are_invalid(self):
        reply = self.driver.request("finalize", slot=2, speed="fast")

        self.assertEqual(reply["error"]["kind"], "invalid")
        self.assertIn("speed", reply["error"]["message"])

    def test_bad_state_error_reply(self):
        image = write_image(self.image_dir, "fast")
        slot = self.inject_living(image)

        reply = self.driver.request("finalize", slot=slot)

        self.assertEqual(reply["error"]["kind"], "bad_state")
        self.assertIn("living", reply["error"]["message"])

    def test_broken_line_then_loop_continues(self):
        self.driver.send_line(b"this is not json\n")
        broken_reply = self.driver.next_reply()

        hello = self.driver.request("hello")

        self.assertIsNone(broken_reply["id"])
        self.assertEqual(broken_reply["error"]["kind"], "invalid")
        self.assertEqual(hello["result"]["backend"], "sim")

    def test_end_of_input_leaves_me_running(self):
        image = write_image(self.image_dir, "survivor")
        slot = self.inject_living(image)
        pid = self.driver.request("list")["result"]["slots"][slot - 2]["pid"]

        self.driver.close_input()
        status = self.driver.wait()

        self.assertEqual(status, 0)
        self.assertFalse(process_is_gone(pid))
        self.assertIn(read_process_info(pid).state, ("S", "R"))

    def test_shutdown_exits_zero(self):
        reply = self.driver.request("shutdown")

        status = self.driver.wait()

        self.assertEqual(reply, {"id": 1, "result": {}})
        self.assertEqual(status, 0)

    def test_crash_emits_event(self):
        image = write_image(self.image_dir, "crasher", crash_after_ms=200)
        slot = self.inject_living(image, name="crashing")

        event = self.driver.next_event()

        self.assertEqual(event["event"], "me_state")
        self.assertEqual(event["slot"], slot)
        self.assertEqual(event["state"], "dead")
        self.assertEqual(event["previous"], "living")
        self.assertEqual(event["exit_status"], 1)
        self.assertEqual(event["token"], "crashing")

    def test_output_lines_are_json(self):
        self.driver.request("hello")
        self.driver.request("list")

        lines = list(self.driver.raw_lines)

        self.assertEqual(len(lines), 2)
        for line in lines:
            self.assertTrue(line.endswith(b"\n"))
            self.assertIsInstance(json.loads(line), dict)


class DriverCommandLineTests(SynchronousTestCase):
    """One-shot operations from a shell and backend selection."""

    def setUp(self):
        self.state_dir = os.path.join(os.path.abspath(self.mktemp()), "agency")
        self.addCleanup(kill_me_processes, self.state_dir)

    def run_driver(self, *argv):
        return subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=driver_environment(),
            timeout=REPLY_TIMEOUT,
        )

    def test_single_list_operation(self):
        result = self.run_driver(*driver_argv(self.state_dir, "list"))

        self.assertEqual(result.returncode, 0)
        reply = decode_message(result.stdout)
        self.assertEqual(len(reply["result"]["slots"]), 5)

    def test_single_operation_with_arguments(self):
        result = self.run_driver(*driver_argv(self.state_dir, "finalize", "slot=3"))

        self.assertEqual(result.returncode, 1)
        reply = decode_message(result.stdout)
        self.assertEqual(reply["error"]["kind"], "not_found")

    def test_soo_backend_missing_device(self):
        device = os.path.join(self.state_dir, "no-such-core")

        result = self.run_driver(
            sys.executable, "-m", "emiso.agency.driver", "--backend", "soo",
            "--state-dir", self.state_dir, "--device", device,
        )

        self.assertEqual(result.returncode, 2)
        self.assertIn(f"the agency device {device} does not exist".encode(),
                      result.stderr)
        self.assertEqual(result.stdout, b"")

    def test_unknown_backend_is_error(self):
        result = self.run_driver(
            sys.executable, "-m", "emiso.agency.driver", "--backend", "vmware"
        )

        self.assertEqual(result.returncode, 2)
        self.assertIn(b"unknown backend 'vmware'", result.stderr)


class DriverMonitorTimingTests(SynchronousTestCase):
    """The monitor keeps running while the main thread waits in an operation."""

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.state_dir = os.path.join(self.directory, "agency")
        self.image_dir = os.path.join(self.directory, "images")
        os.makedirs(self.image_dir)
        self.addCleanup(kill_me_processes, self.state_dir)
        self.driver = DriverProcess(
            self.state_dir, os.path.join(self.directory, "driver.stderr")
        )
        self.addCleanup(self.driver.stop)

    def test_event_during_slow_finalize(self):
        crasher = write_image(self.image_dir, "crasher", crash_after_ms=600)
        slow = write_image(self.image_dir, "slow", boot_delay_ms=2000)
        self.driver.request("inject", image=crasher, log=self.log_path("crasher"))
        self.driver.request("finalize", slot=2)
        self.driver.request("inject", image=slow, log=self.log_path("slow"))
        finalize_slow = {"id": 99, "op": "finalize", "args": {"slot": 3}}

        self.driver.send_line(encode_message(finalize_slow))
        event = self.driver.next_event()
        reply_before_event = not self.driver.replies.empty()
        reply = self.driver.next_reply()

        self.assertEqual(event["slot"], 2)
        self.assertFalse(reply_before_event)
        self.assertEqual(reply, {"id": 99, "result": {"state": "living"}})

    def log_path(self, name):
        return os.path.join(self.directory, "containers", name, "console.log")

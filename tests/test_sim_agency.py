"""Tests for emiso.agency.sim.agency: the simulated agency with real ME processes."""

import glob
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import zipfile

from twisted.trial.unittest import SynchronousTestCase

from emiso.agency.protocol import OperationError
from emiso.agency.sim.agency import (
    CHUNK_SIZE,
    SimAgency,
    chunk_count,
    read_process_info,
    spawn_detached,
)
from emiso.engine.console import connectable_path
from tests.fitbuilder import build_fit, build_me_dtb

MIB = 1024 * 1024
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIGMEM_IMAGE = os.path.join(REPOSITORY, "tests", "images", "bigmem.itb")
CONSOLE_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) .*$"
)


def write_image(directory, name, domain_size=16 * MIB, **faults):
    """
    Write a FIT image for a fast simulated ME and return its path.

    Keyword arguments name C{emiso,sim-*} properties with underscores, e.g.
    C{crash_after_ms=200}; boot delay and heartbeat default to 100 ms.
    """
    properties = {"boot_delay_ms": 100, "heartbeat_ms": 100}
    properties.update(faults)
    root_props = {
        "emiso,sim-" + key.replace("_", "-"): value for key, value in properties.items()
    }
    me_dtb = build_me_dtb(me_name=f"SOO.{name}", domain_size=domain_size)
    path = os.path.join(directory, f"{name}.itb")
    with open(path, "wb") as stream:
        stream.write(build_fit(me_dtb=me_dtb, root_props=root_props))
    return path


def wait_for(predicate, timeout=5.0, interval=0.02, what="condition"):
    """Poll C{predicate} until it returns a true value; fail after C{timeout} s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def read_log_lines(path):
    """Return the console log lines of an ME, or [] when there is no log yet."""
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read().splitlines()
    except FileNotFoundError:
        return []


def log_contains(path, text):
    """Return whether some console log line of C{path} contains C{text}."""
    return any(text in line for line in read_log_lines(path))


def read_json(path):
    """Return the JSON value stored in C{path}."""
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def read_counter(state_dir, slot):
    """Return the heartbeat counter from the status file of the ME in C{slot}."""
    path = os.path.join(state_dir, "run", f"{slot}.status.json")
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)["counter"]


def kill_me_processes(state_dir):
    """SIGKILL every ME process recorded in the slot files of C{state_dir}."""
    for path in glob.glob(os.path.join(state_dir, "slots", "*.json")):
        try:
            with open(path, encoding="utf-8") as stream:
                record = json.load(stream)
        except (OSError, ValueError):
            continue
        info = read_process_info(record["pid"])
        if info is None or info.start_time != record["start_time"]:
            continue
        try:
            os.kill(record["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


def process_is_gone(pid):
    """Return whether C{pid} no longer runs (absent or a zombie)."""
    info = read_process_info(pid)
    return info is None or info.state in ("Z", "X")


class SimAgencyTestMixin:
    """Temp state dir, image dir and a SimAgency whose MEs die at cleanup."""

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.state_dir = os.path.join(self.directory, "agency")
        self.image_dir = os.path.join(self.directory, "images")
        os.makedirs(self.image_dir)
        self.agency = SimAgency(self.state_dir)
        self.addCleanup(self.stop_all_mes)

    def stop_all_mes(self):
        kill_me_processes(self.state_dir)
        # poll() reaps the killed children and removes their slot files.
        wait_for(
            lambda: self.agency.poll() is not None
            and not glob.glob(os.path.join(self.state_dir, "slots", "*.json")),
            what="the ME processes to exit",
        )

    def log_path(self, name="me"):
        return os.path.join(self.directory, "containers", name, "console.log")

    def inject_living(self, name="beat", **faults):
        image = write_image(self.image_dir, name, **faults)
        log = self.log_path(name)
        reply = self.agency.inject(image=image, log=log, token=f"token-{name}")
        self.agency.finalize(reply["slot"])
        return reply["slot"], log

    def slot_entry(self, agency, slot):
        return agency.list_slots()["slots"][slot - 2]


class ChunkCountTests(SynchronousTestCase):
    """chunk_count rounds a domain size up to a power-of-two chunk count."""

    def test_rounds_up_to_power_of_two(self):
        cases = {
            1: 1,
            2 * MIB: 1,
            2 * MIB + 1: 2,
            5 * MIB: 4,
            16 * MIB: 8,
            300 * MIB: 256,
        }

        counts = {size: chunk_count(size) for size in cases}

        self.assertEqual(counts, cases)


class SimAgencyLifecycleTests(SimAgencyTestMixin, SynchronousTestCase):
    """inject, finalize, initialize, terminate and list on real ME processes."""

    def test_hello_describes_pool(self):
        result = self.agency.hello()

        self.assertEqual(result["backend"], "sim")
        self.assertEqual(result["pool_chunks"], 256)
        self.assertEqual(result["chunk_size"], CHUNK_SIZE)
        self.assertEqual(result["pid"], os.getpid())

    def test_inject_loads_stopped_me(self):
        image = write_image(self.image_dir, "loaded")

        reply = self.agency.inject(image=image, log=self.log_path(), token="c1")

        self.assertEqual(
            reply,
            {
                "slot": 2,
                "state": "booting",
                "size": 16 * MIB,
                "console": os.path.join(self.state_dir, "run", "2.console"),
            },
        )
        entry = self.slot_entry(self.agency, 2)
        self.assertEqual(entry["state"], "booting")
        self.assertEqual(read_process_info(entry["pid"]).state, "T")
        self.assertEqual(read_log_lines(self.log_path()), [])

    def test_finalize_boots_to_living(self):
        image = write_image(self.image_dir, "booter")
        slot = self.agency.inject(image=image, log=self.log_path(), token="c1")["slot"]

        reply = self.agency.finalize(slot)

        self.assertEqual(reply, {"state": "living"})
        self.assertEqual(self.slot_entry(self.agency, slot)["state"], "living")
        wait_for(
            lambda: log_contains(self.log_path(), "heartbeat 2"), what="heartbeat 2"
        )
        lines = read_log_lines(self.log_path())
        self.assertIn("SO3 Operating System", lines[0])
        self.assertTrue(log_contains(self.log_path(), "runs no SO3 code"))
        self.assertTrue(log_contains(self.log_path(), "ME name: SOO.booter"))
        self.assertTrue(log_contains(self.log_path(), "Slot: 2"))
        self.assertTrue(log_contains(self.log_path(), "Memory: 16 MiB"))
        for line in lines:
            self.assertRegex(line, CONSOLE_LINE)

    def test_list_reports_process_stats(self):
        slot, log = self.inject_living("listed")

        slots = self.agency.list_slots()["slots"]

        self.assertEqual([entry["slot"] for entry in slots], [2, 3, 4, 5, 6])
        entry = slots[0]
        self.assertEqual(entry["state"], "living")
        self.assertEqual(entry["name"], "SOO.listed")
        self.assertEqual(entry["token"], "token-listed")
        self.assertEqual(entry["log"], log)
        self.assertEqual(entry["size"], 16 * MIB)
        self.assertEqual(entry["image"], os.path.join(self.image_dir, "listed.itb"))
        self.assertIsInstance(entry["cpu_seconds"], float)
        self.assertGreater(entry["rss"], 0)
        self.assertIsNotNone(read_process_info(entry["pid"]))
        self.assertEqual(slots[1], {"slot": 3, "state": "dead"})

    def test_initialize_freezes_counter(self):
        slot, log = self.inject_living("frozen")
        wait_for(lambda: read_counter(self.state_dir, slot) >= 1, what="heartbeat 1")

        reply = self.agency.initialize(slot)
        frozen_counter = read_counter(self.state_dir, slot)
        time.sleep(0.5)

        self.assertEqual(reply, {"state": "suspended"})
        self.assertEqual(read_counter(self.state_dir, slot), frozen_counter)
        self.assertEqual(self.slot_entry(self.agency, slot)["state"], "suspended")

    def test_finalize_resumes_suspended(self):
        slot, log = self.inject_living("resumed")
        wait_for(lambda: read_counter(self.state_dir, slot) >= 1, what="heartbeat 1")
        self.agency.initialize(slot)
        frozen_counter = read_counter(self.state_dir, slot)

        reply = self.agency.finalize(slot)

        self.assertEqual(reply, {"state": "living"})
        wait_for(
            lambda: read_counter(self.state_dir, slot) > frozen_counter,
            what="the counter to grow after resume",
        )

    def test_terminate_frees_slot(self):
        slot, log = self.inject_living("stopped")
        pid = self.slot_entry(self.agency, slot)["pid"]

        reply = self.agency.terminate(slot)

        self.assertEqual(reply, {"state": "dead", "exit_status": 0})
        self.assertTrue(process_is_gone(pid))
        self.assertEqual(
            self.slot_entry(self.agency, slot), {"slot": slot, "state": "dead"}
        )
        self.assertTrue(log_contains(log, "terminated by the agency"))
        self.assertEqual(glob.glob(os.path.join(self.state_dir, "slots", "*.json")), [])
        self.assertEqual(self.agency.poll(), [])

    def test_terminate_suspended_me(self):
        slot, log = self.inject_living("paused")
        self.agency.initialize(slot)

        reply = self.agency.terminate(slot)

        self.assertEqual(reply, {"state": "dead", "exit_status": 0})

    def test_terminate_booting_me(self):
        image = write_image(self.image_dir, "unbooted")
        slot = self.agency.inject(image=image, log=self.log_path(), token="c1")["slot"]

        reply = self.agency.terminate(slot)

        self.assertEqual(reply, {"state": "dead", "exit_status": 0})
        self.assertTrue(log_contains(self.log_path(), "before boot"))

    def test_terminate_kills_stubborn_me(self):
        # This stand-in ME ignores SIGTERM, so terminate has to use SIGKILL.
        script = (
            "import os, signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "os.kill(os.getpid(), signal.SIGSTOP)\n"
            "while True:\n"
            "    time.sleep(1)\n"
        )

        def spawn_stubborn(argv, env):
            return spawn_detached([sys.executable, "-c", script], env)

        self.agency = SimAgency(self.state_dir, spawn=spawn_stubborn)
        image = write_image(self.image_dir, "stubborn")
        slot = self.agency.inject(image=image, log=self.log_path(), token="c1")["slot"]
        pid = self.slot_entry(self.agency, slot)["pid"]

        reply = self.agency.terminate(slot)

        self.assertEqual(reply, {"state": "dead", "exit_status": 128 + signal.SIGKILL})
        self.assertTrue(process_is_gone(pid))

    def test_inject_invalid_image(self):
        path = os.path.join(self.image_dir, "garbage.itb")
        with open(path, "wb") as stream:
            stream.write(b"not a device tree")

        error = self.assertRaises(
            OperationError, self.agency.inject, image=path, log=self.log_path()
        )

        self.assertEqual(error.kind, "invalid")
        self.assertIn(path, error.message)


class SimAgencyStateCheckTests(SimAgencyTestMixin, SynchronousTestCase):
    """Wrong-state calls are rejected and never performed."""

    def test_finalize_living_is_bad_state(self):
        slot, log = self.inject_living("living")

        error = self.assertRaises(OperationError, self.agency.finalize, slot)

        self.assertEqual(error.kind, "bad_state")
        self.assertIn("slot 2", error.message)
        self.assertIn("living", error.message)
        self.assertIn("finalize", error.message)

    def test_initialize_booting_is_bad_state(self):
        image = write_image(self.image_dir, "early")
        slot = self.agency.inject(image=image, log=self.log_path(), token="c1")["slot"]

        error = self.assertRaises(OperationError, self.agency.initialize, slot)

        self.assertEqual(error.kind, "bad_state")
        self.assertIn("booting", error.message)
        self.assertEqual(self.slot_entry(self.agency, slot)["state"], "booting")

    def test_read_snapshot_living_is_bad_state(self):
        slot, log = self.inject_living("unsuspended")
        path = os.path.join(self.directory, "snapshot.zip")

        error = self.assertRaises(
            OperationError, self.agency.read_snapshot, slot=slot, path=path
        )

        self.assertEqual(error.kind, "bad_state")
        self.assertFalse(os.path.exists(path))

    def test_empty_slot_is_not_found(self):
        error = self.assertRaises(OperationError, self.agency.terminate, 4)

        self.assertEqual(error.kind, "not_found")
        self.assertIn("slot 4", error.message)

    def test_slot_out_of_range_is_invalid(self):
        for slot in (1, 7, "2", None):
            error = self.assertRaises(OperationError, self.agency.finalize, slot)

            self.assertEqual(error.kind, "invalid", f"slot {slot!r}")

    def test_no_slot_after_five_mes(self):
        image = write_image(self.image_dir, "many", domain_size=2 * MIB)
        slots = [
            self.agency.inject(image=image, log=self.log_path(f"m{n}"))["slot"]
            for n in range(5)
        ]

        error = self.assertRaises(
            OperationError, self.agency.inject, image=image, log=self.log_path("m5")
        )

        self.assertEqual(slots, [2, 3, 4, 5, 6])
        self.assertEqual(error.kind, "no_slot")
        self.assertIn("2 to 6", error.message)

    def test_no_memory_for_oversized_me(self):
        image = write_image(self.image_dir, "huge", domain_size=1024 * MIB)

        error = self.assertRaises(
            OperationError, self.agency.inject, image=image, log=self.log_path()
        )

        self.assertEqual(error.kind, "no_memory")
        self.assertIn("1024 MiB", error.message)
        self.assertIn("512 MiB", error.message)

    def test_bigmem_fills_the_pool(self):
        small = write_image(self.image_dir, "small")
        big = self.agency.inject(image=BIGMEM_IMAGE, log=self.log_path("big"))

        error = self.assertRaises(
            OperationError, self.agency.inject, image=small, log=self.log_path("small")
        )

        self.assertEqual(big["size"], 512 * MIB)
        self.assertEqual(error.kind, "no_memory")
        self.assertIn("0 of 256 chunks", error.message)

    def test_refused_initialize_keeps_living(self):
        slot, log = self.inject_living("stubborn", refuse_migration=True)

        error = self.assertRaises(OperationError, self.agency.initialize, slot)

        self.assertEqual(error.kind, "refused")
        self.assertEqual(self.slot_entry(self.agency, slot)["state"], "living")

    def test_hang_image_calls_hang(self):
        hung = []

        class Hung(Exception):
            pass

        def hang(operation):
            hung.append(operation)
            raise Hung()

        self.agency = SimAgency(self.state_dir, hang=hang)
        image = write_image(self.image_dir, "hanger", hang="finalize")
        slot = self.agency.inject(image=image, log=self.log_path(), token="c1")["slot"]

        self.assertRaises(Hung, self.agency.finalize, slot)

        self.assertEqual(hung, ["finalize"])
        self.assertEqual(self.slot_entry(self.agency, slot)["state"], "booting")


class SimAgencyMonitorTests(SimAgencyTestMixin, SynchronousTestCase):
    """poll() reports MEs that exit on their own; state survives a new agency."""

    def test_crash_emits_dead_event(self):
        slot, log = self.inject_living("crasher", crash_after_ms=200)

        events = wait_for(self.agency.poll, what="the crash event")

        self.assertEqual(len(events), 1)
        event = events[0]
        self.assertEqual(event["event"], "me_state")
        self.assertEqual(event["slot"], slot)
        self.assertEqual(event["state"], "dead")
        self.assertEqual(event["previous"], "living")
        self.assertEqual(event["exit_status"], 1)
        self.assertEqual(event["token"], "token-crasher")
        self.assertIn("Kernel panic", event["reason"])
        self.assertTrue(
            any(" stderr Kernel panic" in line for line in read_log_lines(log))
        )
        self.assertEqual(
            self.slot_entry(self.agency, slot), {"slot": slot, "state": "dead"}
        )

    def test_self_exit_emits_terminated_then_dead(self):
        slot, log = self.inject_living("exiter", exit_after_ms=200)

        events = wait_for(self.agency.poll, what="the exit events")

        states = [(event["previous"], event["state"]) for event in events]
        self.assertEqual(states, [("living", "terminated"), ("terminated", "dead")])
        self.assertEqual(events[1]["exit_status"], 0)
        self.assertEqual(
            self.slot_entry(self.agency, slot), {"slot": slot, "state": "dead"}
        )

    def test_killed_me_reports_signal(self):
        slot, log = self.inject_living("victim")
        os.kill(self.slot_entry(self.agency, slot)["pid"], signal.SIGKILL)

        events = wait_for(self.agency.poll, what="the dead event")

        self.assertEqual(events[0]["exit_status"], 128 + signal.SIGKILL)
        self.assertIn("SIGKILL", events[0]["reason"])

    def test_new_agency_finds_living_me(self):
        slot, log = self.inject_living("persistent")
        first_entry = self.slot_entry(self.agency, slot)

        second = SimAgency(self.state_dir)

        entry = self.slot_entry(second, slot)
        self.assertEqual(entry["state"], "living")
        self.assertEqual(entry["pid"], first_entry["pid"])
        self.assertEqual(entry["token"], "token-persistent")
        self.assertEqual(second.poll(), [])

    def test_new_agency_terminates_found_me(self):
        slot, log = self.inject_living("adopted")
        second = SimAgency(self.state_dir)

        reply = second.terminate(slot)

        self.assertEqual(reply, {"state": "dead", "exit_status": 0})

    def test_new_agency_records_late_living(self):
        image = write_image(self.image_dir, "late", boot_delay_ms=500)
        slot = self.agency.inject(image=image, log=self.log_path(), token="c1")["slot"]
        finalizer = threading.Thread(target=self.agency.finalize, args=(slot,))
        finalizer.start()
        self.addCleanup(finalizer.join, 10)
        slot_file = os.path.join(self.state_dir, "slots", f"{slot}.json")
        wait_for(lambda: read_json(slot_file)["state"] == "preparing", what="preparing")
        second = SimAgency(self.state_dir)
        finalizer.join(10)

        events = second.poll()

        self.assertEqual(
            [(event["previous"], event["state"]) for event in events],
            [("preparing", "living")],
        )
        self.assertEqual(self.slot_entry(second, slot)["state"], "living")

    def test_new_agency_detects_vanished_me(self):
        slot, log = self.inject_living("vanished")
        pid = self.slot_entry(self.agency, slot)["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: process_is_gone(pid), what="the ME to die")

        second = SimAgency(self.state_dir)
        events = second.poll()

        self.assertEqual([event["state"] for event in events], ["dead"])
        self.assertEqual(self.slot_entry(second, slot), {"slot": slot, "state": "dead"})


class SimAgencySnapshotTests(SimAgencyTestMixin, SynchronousTestCase):
    """read_snapshot and write_snapshot keep the ME's heartbeat counter."""

    def take_snapshot(self, name="traveller", minimum_counter=3):
        slot, log = self.inject_living(name)
        wait_for(
            lambda: read_counter(self.state_dir, slot) >= minimum_counter,
            what=f"heartbeat {minimum_counter}",
        )
        self.agency.initialize(slot)
        path = os.path.join(self.directory, f"{name}.zip")
        self.agency.read_snapshot(slot=slot, path=path)
        return slot, path

    def test_snapshot_zip_has_one_entry(self):
        slot, path = self.take_snapshot()

        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            context = json.loads(archive.read("me"))

        self.assertEqual(names, ["me"])
        self.assertEqual(context["format"], "emiso-sim-snapshot")
        self.assertEqual(context["version"], 1)
        self.assertEqual(context["counter"], read_counter(self.state_dir, slot))
        self.assertEqual(context["name"], "SOO.traveller")
        self.assertEqual(len(context["image_sha256"]), 64)
        self.assertEqual(self.slot_entry(self.agency, slot)["state"], "suspended")

    def test_snapshot_round_trip_continues_counter(self):
        slot, path = self.take_snapshot()
        counter = read_counter(self.state_dir, slot)
        new_log = self.log_path("copy")

        written = self.agency.write_snapshot(path=path, log=new_log, token="copy")
        new_slot = written["slot"]
        finalized = self.agency.finalize(new_slot)

        self.assertEqual(
            written,
            {
                "slot": 3,
                "state": "migrating",
                "console": os.path.join(self.state_dir, "run", "3.console"),
            },
        )
        self.assertEqual(finalized, {"state": "living"})
        wait_for(
            lambda: log_contains(new_log, f"heartbeat {counter + 1}"),
            what=f"heartbeat {counter + 1} after restore",
        )
        self.assertTrue(log_contains(new_log, "resumed from snapshot"))
        self.assertNotIn(
            "heartbeat 1", [line.split(" ", 2)[2] for line in read_log_lines(new_log)]
        )
        self.assertEqual(self.slot_entry(self.agency, new_slot)["token"], "copy")

    def test_restore_with_local_image(self):
        slot, path = self.take_snapshot(minimum_counter=1)
        original = self.slot_entry(self.agency, slot)["image"]
        copy = os.path.join(self.directory, "elsewhere.itb")
        with open(original, "rb") as source, open(copy, "wb") as target:
            target.write(source.read())
        self.agency.terminate(slot)
        os.unlink(original)

        written = self.agency.write_snapshot(
            path=path, log=self.log_path("copy"), image=copy
        )

        self.assertEqual(self.slot_entry(self.agency, written["slot"])["image"], copy)

    def test_restore_rejects_other_local_image(self):
        slot, path = self.take_snapshot(minimum_counter=1)
        other = write_image(self.directory, "other", domain_size=32 * MIB)

        error = self.assertRaises(
            OperationError,
            self.agency.write_snapshot,
            path=path,
            log=self.log_path("copy"),
            image=other,
        )

        self.assertEqual(error.kind, "invalid")
        self.assertIn("sha256", str(error))

    def test_written_snapshot_waits_stopped(self):
        slot, path = self.take_snapshot(minimum_counter=1)

        written = self.agency.write_snapshot(path=path, log=self.log_path("copy"))

        entry = self.slot_entry(self.agency, written["slot"])
        self.assertEqual(entry["state"], "migrating")
        self.assertEqual(read_process_info(entry["pid"]).state, "T")

    def test_corrupt_snapshots_rejected(self):
        slot, good = self.take_snapshot(minimum_counter=1)
        with zipfile.ZipFile(good) as archive:
            context = json.loads(archive.read("me"))
        cases = {
            "not a zip": None,
            "two entries": {"me": json.dumps(context), "extra": "x"},
            "wrong entry name": {"context": json.dumps(context)},
            "not json": {"me": "{broken"},
            "wrong format": {"me": json.dumps(dict(context, format="other"))},
            "missing counter": {
                "me": json.dumps({k: v for k, v in context.items() if k != "counter"})
            },
            "other image digest": {
                "me": json.dumps(dict(context, image_sha256="0" * 64))
            },
            "missing image": {
                "me": json.dumps(dict(context, image="/nonexistent/x.itb"))
            },
        }

        for case, entries in cases.items():
            path = os.path.join(self.directory, "bad.zip")
            if entries is None:
                with open(path, "wb") as stream:
                    stream.write(b"PK but not really a zip file")
            else:
                with zipfile.ZipFile(path, "w") as archive:
                    for name, data in entries.items():
                        archive.writestr(name, data)

            error = self.assertRaises(
                OperationError,
                self.agency.write_snapshot,
                path=path,
                log=self.log_path("bad"),
            )

            self.assertEqual(error.kind, "invalid", case)
        self.assertEqual(self.slot_entry(self.agency, 3), {"slot": 3, "state": "dead"})


def console_command(path: str, line: str, timeout: float = 10.0) -> tuple[list, int]:
    """
    Run one command on an ME's console socket.

    @return: the C{(stream, text)} output pairs and the exit status.
    """
    address, descriptor = connectable_path(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        try:
            client.connect(address)
        finally:
            if descriptor is not None:
                os.close(descriptor)
        stream = client.makefile("rb")
        hello = json.loads(stream.readline())
        assert hello["console"] == "emiso-sim", hello
        client.sendall(json.dumps({"id": 7, "line": line}).encode() + b"\n")
        output = []
        while True:
            message = json.loads(stream.readline())
            assert message["id"] == 7, message
            if "exit" in message:
                return output, message["exit"]
            output.append((message["stream"], message["text"]))


class SimConsoleTests(SimAgencyTestMixin, SynchronousTestCase):
    """The interactive console socket of a simulated ME."""

    def console_path(self, slot):
        return self.slot_entry(self.agency, slot)["console"]

    def test_status_command(self):
        slot, log = self.inject_living("console")

        output, status = console_command(self.console_path(slot), "status")

        self.assertEqual(status, 0)
        self.assertIn(("stdout", f"slot: {slot}"), output)
        self.assertIn(("stdout", "state: living"), output)
        self.assertTrue(log_contains(log, "SOO.console> status"))
        self.assertTrue(log_contains(log, f"slot: {slot}"))

    def test_echo_command(self):
        slot, _log = self.inject_living("echo")

        output, status = console_command(self.console_path(slot), "echo hello  ME")

        self.assertEqual(output, [("stdout", "hello ME")])
        self.assertEqual(status, 0)

    def test_unknown_command_fails(self):
        slot, _log = self.inject_living("unknown")

        output, status = console_command(self.console_path(slot), "reboot now")

        self.assertEqual(output, [("stderr", "so3: reboot: command not found")])
        self.assertEqual(status, 127)

    def test_heartbeat_off_stops_lines(self):
        slot, log = self.inject_living("quiet", heartbeat_ms=50)
        wait_for(lambda: log_contains(log, "heartbeat 1"), what="a heartbeat")

        _output, status = console_command(self.console_path(slot), "heartbeat off")
        lines_after = len(read_log_lines(log))
        time.sleep(0.3)

        self.assertEqual(status, 0)
        self.assertEqual(len(read_log_lines(log)), lines_after)

    def test_bad_heartbeat_argument(self):
        slot, _log = self.inject_living("badbeat")

        output, status = console_command(self.console_path(slot), "heartbeat maybe")

        self.assertEqual(status, 2)
        self.assertEqual(output[0][0], "stderr")

    def test_console_survives_new_agency(self):
        slot, _log = self.inject_living("persist")
        new_agency = SimAgency(self.state_dir)

        path = self.slot_entry(new_agency, slot)["console"]
        _output, status = console_command(path, "uptime")

        self.assertEqual(status, 0)

    def test_terminate_removes_socket(self):
        slot, _log = self.inject_living("gone")
        path = self.console_path(slot)

        self.agency.terminate(slot)

        self.assertFalse(os.path.exists(path))

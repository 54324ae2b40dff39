"""
The soo and capsule backends of the driver against the fake agency kernel
(L{tests.fakesoo}), in process: the fake follows the user pointers of each
ioctl and records every call the real kernel would answer with C{BUG()}.
"""

import os
import shutil
import tempfile
import zipfile

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from emiso.agency.protocol import OperationError
from emiso.agency.soo import logs
from emiso.agency.soo.agency_a import GenerationABackend
from emiso.agency.soo.agency_c import CapsuleBackend
from emiso.agency.soo.device import DeviceError, IDevice, SooDevice
from tests.fakesoo import FakeSooDevice
from tests.fitbuilder import build_fit, build_me_dtb

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "emiso", "samples",
                      "refso3-sim.itb")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class BackendMixin:
    """Shared set-up: a fake kernel of C{generation} and its backend."""

    generation = "A"

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="emiso-soo-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.clock = FakeClock()
        self.device = FakeSooDevice(
            os.path.join(self.directory, "kernel"), self.generation,
            clock=self.clock, sleep=lambda seconds: None, ticker=False,
        )
        self.addCleanup(self.device.close)
        self.backend = self.make_backend()
        self.addCleanup(self.check_no_kernel_bug)

    def make_backend(self):
        backend_class = GenerationABackend if self.generation == "A" else CapsuleBackend
        return backend_class(
            self.device, os.path.join(self.directory, "state"), "arm64",
            logs.LogLayout(self.device.log_template()), clock=self.clock,
            poll_interval=0.0,
        )

    def check_no_kernel_bug(self):
        self.assertEqual(self.device.bugs(), [])

    def image(self, name="me", **root_props) -> str:
        path = os.path.join(self.directory, f"{name}.itb")
        with open(path, "wb") as stream:
            stream.write(build_fit(root_props=root_props or None))
        return path

    def console(self, token="c1") -> str:
        return os.path.join(self.directory, "containers", token, "console.log")

    def start(self, token="c1", image=SAMPLE) -> int:
        slot = self.backend.inject(image, self.console(token), token)["slot"]
        self.backend.finalize(slot)
        return slot

    def heartbeat(self, seconds=1.0) -> None:
        self.clock.now += seconds
        self.device.tick()
        self.backend.poll()

    def console_text(self, token="c1") -> str:
        with open(self.console(token), encoding="utf-8") as stream:
            return stream.read()

    def assert_error(self, kind, function, *args, **kwargs) -> OperationError:
        with self.assertRaises(OperationError) as caught:
            function(*args, **kwargs)
        self.assertEqual(caught.exception.kind, kind, caught.exception.message)
        return caught.exception


class CommonTests(BackendMixin):
    """Cases both generations pass."""

    def test_fake_provides_device(self):
        self.assertTrue(verifyObject(IDevice, self.device))

    def test_inject_reports_booting(self):
        result = self.backend.inject(SAMPLE, self.console(), "c1")

        self.assertEqual(result, {"slot": 2, "state": "booting", "size": 0x1000000})

    def test_finalize_makes_living(self):
        slot = self.backend.inject(SAMPLE, self.console(), "c1")["slot"]

        result = self.backend.finalize(slot)

        self.assertEqual(result["state"], "living")

    def test_list_shows_owner(self):
        self.start()

        entry = self.backend.list_slots()["slots"][0]

        self.assertEqual(entry["state"], "living")
        self.assertEqual(entry["token"], "c1")
        self.assertEqual(entry["name"], "SOO.refso3-sim")
        self.assertEqual(entry["log"], self.console())

    def test_list_empty_slots_dead(self):
        slots = self.backend.list_slots()["slots"]

        self.assertEqual([entry["state"] for entry in slots], ["dead"] * 5)
        self.assertEqual([entry["slot"] for entry in slots], [2, 3, 4, 5, 6])

    def test_no_free_slot(self):
        for index in range(5):
            self.start(f"c{index}")

        self.assert_error("no_slot", self.backend.inject, SAMPLE, self.console(), "x")

    def test_no_memory(self):
        image = os.path.join(self.directory, "huge.itb")
        with open(image, "wb") as stream:
            stream.write(build_fit(me_dtb=build_me_dtb(domain_size=0x40000000)))

        error = self.assert_error("no_memory", self.backend.inject, image,
                                  self.console(), "c1")

        self.assertIn("free slots: 2, 3, 4, 5, 6", error.message)

    def test_invalid_image(self):
        image = os.path.join(self.directory, "broken.itb")
        with open(image, "wb") as stream:
            stream.write(b"not a FIT")

        self.assert_error("invalid", self.backend.inject, image, self.console(), "c1")

    def test_console_lines_copied(self):
        self.start()

        self.heartbeat()
        self.heartbeat()

        text = self.console_text()
        self.assertIn("stdout SO3 Operating System", text)
        self.assertIn("stdout heartbeat 2\n", text)

    def test_console_line_format(self):
        self.start()

        self.heartbeat()

        for line in self.console_text().splitlines():
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stdout ")

    def test_console_skips_other_slot(self):
        self.start("c1")
        self.start("c2")

        self.heartbeat()

        self.assertEqual(self.console_text("c1").count("heartbeat 1\n"), 1)
        self.assertNotIn("[soo:core]", self.console_text("c1"))
        self.assertNotIn("slot 3", self.console_text("c1"))

    def test_terminate_frees_slot(self):
        slot = self.start()

        result = self.backend.terminate(slot)

        self.assertEqual(result["state"], "dead")
        self.assertIsNone(self.device.slot(slot))

    def test_terminate_empty_slot(self):
        self.assert_error("not_found", self.backend.terminate, 4)

    def test_terminate_booting(self):
        slot = self.backend.inject(SAMPLE, self.console(), "c1")["slot"]

        self.backend.terminate(slot)

        self.assertIsNone(self.device.slot(slot))

    def test_invalid_slot(self):
        self.assert_error("invalid", self.backend.finalize, 9)

    def test_crash_sends_event(self):
        slot = self.start()

        self.device.set_state(slot, "dead")
        events = self.backend.poll()

        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["token"], "c1")
        self.assertEqual(events[0]["state"], "dead")
        self.assertEqual(self.backend.list_slots()["slots"][0]["state"], "dead")

    def test_pause_unpause_continues(self):
        slot = self.start()
        self.heartbeat()

        paused = self.backend.initialize(slot)
        self.heartbeat(5)
        resumed = self.backend.finalize(slot)
        self.heartbeat()

        self.assertEqual(paused["state"], "suspended")
        self.assertEqual(resumed["state"], "living")
        self.assertIn("heartbeat 2\n", self.console_text())
        self.assertNotIn("heartbeat 3\n", self.console_text())

    def test_paused_listed_suspended(self):
        slot = self.start()
        self.backend.initialize(slot)

        entry = self.backend.list_slots()["slots"][0]

        self.assertEqual(entry["state"], "suspended")
        self.assertEqual(entry["token"], "c1")

    def test_terminate_paused(self):
        slot = self.start()
        self.backend.initialize(slot)

        self.backend.terminate(slot)

        self.assertEqual(self.backend.list_slots()["slots"][0]["state"], "dead")

    def test_records_survive_restart(self):
        slot = self.start()

        backend = self.make_backend()

        self.assertEqual(backend.list_slots()["slots"][slot - 2]["token"], "c1")

    def test_snapshot_round_trip(self):
        slot = self.start()
        self.heartbeat()
        if self.generation == "A":
            self.backend.initialize(slot)
        path = os.path.join(self.directory, "saved.zip")

        self.backend.read_snapshot(slot, path)
        self.backend.terminate(slot)
        restored = self.backend.write_snapshot(path, self.console("c2"), "c2")
        self.backend.finalize(restored["slot"])
        self.heartbeat()

        with zipfile.ZipFile(path) as archive:
            self.assertEqual(archive.namelist(), ["me"])
        self.assertIn("heartbeat 2\n", self.console_text("c2"))


class GenerationATests(CommonTests, SynchronousTestCase):
    """Generation A: the ME/migration ioctls."""

    generation = "A"

    def test_finalize_living_rejected(self):
        slot = self.start()

        error = self.assert_error("bad_state", self.backend.finalize, slot)

        self.assertIn("living", error.message)
        self.assertNotIn("FINAL_MIGRATION", self.device.calls[-1:])

    def test_initialize_booting_rejected(self):
        slot = self.backend.inject(SAMPLE, self.console(), "c1")["slot"]

        self.assert_error("bad_state", self.backend.initialize, slot)

    def test_refused_migration(self):
        slot = self.start(image=self.image(**{"emiso,sim-refuse-migration": True}))

        self.assert_error("refused", self.backend.initialize, slot)

        self.assertEqual(self.device.slot(slot)["state"], "living")

    def test_terminate_suspended_finalizes(self):
        slot = self.start()
        self.backend.initialize(slot)
        self.device.calls.clear()

        self.backend.terminate(slot)

        commands = [c for c in self.device.calls if not c.startswith("GET_ME_ID")]
        self.assertEqual(commands, ["FINAL_MIGRATION", "FORCE_TERMINATE"])

    def test_restored_is_migrating(self):
        slot = self.start()
        self.backend.initialize(slot)
        path = os.path.join(self.directory, "saved.zip")
        self.backend.read_snapshot(slot, path)

        restored = self.backend.write_snapshot(path, self.console("c2"), "c2")

        self.assertEqual(restored, {"slot": 3, "state": "migrating"})

    def test_read_snapshot_living_rejected(self):
        slot = self.start()

        self.assert_error("bad_state", self.backend.read_snapshot, slot,
                          os.path.join(self.directory, "x.zip"))


class CapsuleTests(CommonTests, SynchronousTestCase):
    """Capsule kernels: pause is a snapshot plus shutdown."""

    generation = "C"

    def test_pause_empties_slot(self):
        slot = self.start()

        self.backend.initialize(slot)

        self.assertIsNone(self.device.slot(slot))

    def test_inject_skips_reserved(self):
        slot = self.start()
        self.backend.initialize(slot)

        result = self.backend.inject(SAMPLE, self.console("c2"), "c2")

        self.assertEqual(result["slot"], slot + 1)

    def test_unpause_reports_slot(self):
        slot = self.start()
        self.backend.initialize(slot)

        result = self.backend.finalize(slot)

        self.assertEqual(result, {"state": "living", "slot": slot})

    def test_unpause_other_slot(self):
        slot = self.start()
        self.backend.initialize(slot)
        # A second driver, which knows nothing of the reservation, takes the
        # paused capsule's slot.
        foreign = FakeSooDevice(self.device.directory, "C", clock=self.clock,
                                sleep=lambda seconds: None, ticker=False)
        foreign_backend = CapsuleBackend(
            foreign, os.path.join(self.directory, "foreign"), "arm64",
            logs.LogLayout(foreign.log_template()),
        )
        self.addCleanup(foreign.close)
        taken = foreign_backend.inject(SAMPLE, self.console("f"), "f")["slot"]

        result = self.backend.finalize(slot)

        self.assertEqual(taken, slot)
        self.assertEqual(result["state"], "living")
        self.assertEqual(result["slot"], slot + 1)
        self.assertEqual(self.backend.list_slots()["slots"][result["slot"] - 2]["token"],
                         "c1")

    def test_stopped_reported_booting(self):
        self.backend.inject(SAMPLE, self.console(), "c1")

        entry = self.backend.list_slots()["slots"][0]

        self.assertEqual(entry["state"], "booting")
        self.assertEqual(entry["kernel_state"], "stopped")

    def test_terminate_paused_deletes_snapshot(self):
        slot = self.start()
        self.backend.initialize(slot)
        snapshot = self.backend.hibernated[slot].snapshot

        self.backend.terminate(slot)

        self.assertFalse(os.path.exists(snapshot))

    def test_start_living_is_harmless(self):
        slot = self.start()
        self.device.calls.clear()

        self.backend.finalize(slot)

        self.assertNotIn("START_CAPSULE", self.device.calls)


class DeviceTests(SynchronousTestCase):
    """The real device class, without a board."""

    def test_provides_device(self):
        self.assertTrue(verifyObject(IDevice, SooDevice("/dev/soo/core")))

    def test_missing_device_named(self):
        device = SooDevice("/nonexistent/soo/core")

        with self.assertRaises(DeviceError) as caught:
            device.open()

        self.assertIn("/nonexistent/soo/core does not exist", str(caught.exception))


class LogTests(SynchronousTestCase):
    """Reading the agency's syslog files."""

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="emiso-soo-logs-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "a", encoding="utf-8") as stream:
            stream.write(text)
        return path

    def test_shared_layout_prefix(self):
        source = logs.LogLayout("/var/log/soo/me").source(3)

        self.assertEqual(source, logs.LogSource("/var/log/soo/me", "[ME:3]", True))

    def test_per_me_capsule_id(self):
        source = logs.LogLayout("/var/log/soo/me_{id}.log", "capsule").source(3, 17)

        self.assertEqual(source.path, "/var/log/soo/me_17.log")
        self.assertFalse(source.shared)

    def test_bad_template_rejected(self):
        with self.assertRaises(ValueError):
            logs.LogLayout("/var/log/soo/me_{slot}.log")

    def test_shared_skips_prefix_collision(self):
        source = logs.LogSource("me", "[ME:2]", True)

        self.assertIsNone(logs.me_text(b"Jan 1 kernel: [ME:23] other", source))
        self.assertEqual(logs.me_text(b"Jan 1 kernel: [ME:2] mine", source), "mine")

    def test_per_me_keeps_plain_line(self):
        source = logs.LogSource("me_2.log", "[ME:2]", False)

        self.assertEqual(logs.me_text(b"no prefix here", source), "no prefix here")

    def test_partial_line_waits(self):
        path = self.write("me", "[ME:2] one\n[ME:2] tw")

        lines, offset = logs.read_new_lines(path, 0)

        self.assertEqual(lines, [b"[ME:2] one"])
        self.assertEqual(offset, len("[ME:2] one\n"))

    def test_truncated_file_restarts(self):
        path = self.write("me", "[ME:2] new\n")

        lines, offset = logs.read_new_lines(path, 1000)

        self.assertEqual(lines, [b"[ME:2] new"])

    def test_pump_appends_console(self):
        path = self.write("me", "x [ME:2] hello\ny [ME:4] other\n")
        console = os.path.join(self.directory, "c", "console.log")

        offset = logs.pump(logs.LogSource(path, "[ME:2]", True), 0, console,
                           now_ns=1_700_000_000_000_000_000)

        with open(console, encoding="utf-8") as stream:
            self.assertEqual(stream.read(),
                             "2023-11-14T22:13:20.000000000Z stdout hello\n")
        self.assertEqual(offset, os.path.getsize(path))

"""Tests for the qemu agency backend; the VM tests run real QEMU machines."""

import json
import os
import time
import zipfile

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from emiso.agency.protocol import OperationError
from emiso.agency.qemu.agency import (
    ARCHITECTURES,
    SNAPSHOT_ENTRY,
    QemuAgency,
    QemuUnavailable,
    boot_arguments,
    find_qemu,
)
from emiso.agency.qemu.pump import read_offset
from emiso.agency.sim.agency import read_process_info
from tests.fitbuilder import build_fit
from tests.qemuhelpers import (
    QEMU_SAMPLE,
    SKIP_REASON,
    heartbeats,
    kill_vms,
    qemu_available,
    wait_for,
)

ARM64 = ARCHITECTURES["arm64"]


class BootArgumentsTests(SynchronousTestCase):
    def test_no_addresses_uses_kernel(self):
        arguments = boot_arguments("/k", ARM64, None, None)

        self.assertEqual(arguments, ["-kernel", "/k"])

    def test_default_address_uses_kernel(self):
        arguments = boot_arguments("/k", ARM64, 0x40080000, 0x40080000)

        self.assertEqual(arguments, ["-kernel", "/k"])

    def test_other_address_uses_loader(self):
        arguments = boot_arguments("/a,b", ARM64, 0x40200000, 0x40200100)

        self.assertEqual(
            arguments,
            [
                "-device",
                "loader,file=/a,,b,addr=0x40200000,force-raw=on",
                "-device",
                "loader,addr=0x40200100,cpu-num=0",
            ],
        )

    def test_arm_default_offset(self):
        arguments = boot_arguments("/k", ARCHITECTURES["arm"], 0x40010000, None)

        self.assertEqual(arguments, ["-kernel", "/k"])

    def test_board_dtb_area_is_invalid(self):
        error = self.assertRaises(
            OperationError, boot_arguments, "/k", ARM64, 0x40001000, None
        )

        self.assertEqual(error.kind, "invalid")


class FindQemuTests(SynchronousTestCase):
    def test_missing_binary_names_package(self):
        error = self.assertRaises(
            QemuUnavailable, find_qemu, "qemu-system-emiso-missing"
        )

        self.assertIn("apt-get install qemu-system-arm", str(error))


class AgencyWithoutQemuTests(SynchronousTestCase):
    """Checks that fail before any QEMU starts."""

    def setUp(self):
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.agency = QemuAgency(os.path.join(self.folder, "agency"), which=self.which)
        self.found = {}

    def which(self, binary):
        return self.found.get(binary)

    def image(self, **kernel_props):
        path = os.path.join(self.folder, "test.itb")
        with open(path, "wb") as stream:
            stream.write(build_fit(kernel_props=kernel_props))
        return path

    def inject_error(self, image):
        log = os.path.join(self.folder, "console.log")
        return self.assertRaises(OperationError, self.agency.inject, image, log, "t")

    def test_missing_emulator_is_invalid(self):
        error = self.inject_error(self.image())

        self.assertIn("apt-get install qemu-system-arm", error.message)

    def test_unknown_arch_is_invalid(self):
        self.found["qemu-system-aarch64"] = "/usr/bin/true"

        error = self.inject_error(self.image(arch="mips"))

        self.assertIn("architecture 'mips'", error.message)

    def test_compressed_kernel_is_invalid(self):
        error = self.inject_error(self.image(compression="gzip"))

        self.assertIn("compressed", error.message)

    def test_failed_inject_leaves_slots_free(self):
        self.inject_error(self.image())

        slots = self.agency.list_slots()["slots"]

        self.assertEqual({slot["state"] for slot in slots}, {"dead"})

    def test_sim_snapshot_is_rejected(self):
        path = os.path.join(self.folder, "sim.zip")
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(SNAPSHOT_ENTRY, json.dumps({"format": "emiso-sim"}))
        log = os.path.join(self.folder, "console.log")

        error = self.assertRaises(
            OperationError, self.agency.write_snapshot, path, log, "t"
        )

        self.assertIn("not a emiso-qemu-snapshot", error.message)

    def test_snapshot_with_two_entries_is_rejected(self):
        path = os.path.join(self.folder, "two.zip")
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("me", b"")
            archive.writestr("other", b"")
        log = os.path.join(self.folder, "console.log")

        error = self.assertRaises(
            OperationError, self.agency.write_snapshot, path, log, "t"
        )

        self.assertIn("exactly one entry", error.message)


class QemuVmTests(SynchronousTestCase):
    """The agency operations on real QEMU machines booting the sample."""

    def setUp(self):
        if not qemu_available():
            raise SkipTest(SKIP_REASON)
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.state_dir = os.path.join(self.folder, "agency")
        self.addCleanup(kill_vms, self.state_dir)
        self.agency = QemuAgency(self.state_dir)

    def log_path(self, name="c1"):
        return os.path.join(self.folder, name, "console.log")

    def boot(self, name="c1"):
        injected = self.agency.inject(QEMU_SAMPLE, self.log_path(name), name)
        self.agency.finalize(injected["slot"])
        return injected["slot"]

    def wait_heartbeat(self, number, name="c1"):
        wait_for(lambda: number in heartbeats(self.log_path(name)))

    def settle(self, slot):
        """Wait until the console pump has copied all the VM printed."""
        record = self.agency._slots[slot]
        wait_for(
            lambda: os.path.exists(record.raw_log)
            and read_offset(record.offset_file) == os.path.getsize(record.raw_log)
        )

    def test_inject_leaves_vm_paused(self):
        injected = self.agency.inject(QEMU_SAMPLE, self.log_path(), "c1")

        slots = self.agency.list_slots()["slots"]

        self.assertEqual(
            (injected["state"], slots[0]["state"], slots[0]["size"]),
            ("booting", "booting", 64 * 1024 * 1024),
        )

    def test_finalize_shows_banner(self):
        self.boot()

        self.wait_heartbeat(1)

        with open(self.log_path(), encoding="utf-8") as stream:
            self.assertIn("SO3-style boot banner", stream.read())

    def test_initialize_freezes_counter(self):
        slot = self.boot()
        self.wait_heartbeat(1)

        self.agency.initialize(slot)
        self.settle(slot)
        frozen = heartbeats(self.log_path())
        time.sleep(1.5)

        self.assertEqual(heartbeats(self.log_path()), frozen)

    def test_finalize_resumes_counter(self):
        slot = self.boot()
        self.wait_heartbeat(1)
        self.agency.initialize(slot)
        self.settle(slot)
        last = heartbeats(self.log_path())[-1]

        self.agency.finalize(slot)

        self.wait_heartbeat(last + 1)

    def test_snapshot_restore_continues(self):
        slot = self.boot()
        self.wait_heartbeat(2)
        self.agency.initialize(slot)
        self.settle(slot)
        saved = heartbeats(self.log_path())[-1]
        snapshot = os.path.join(self.folder, "snapshot.zip")
        self.agency.read_snapshot(slot, snapshot)
        self.agency.terminate(slot)

        restored = self.agency.write_snapshot(snapshot, self.log_path("c2"), "c2")
        self.agency.finalize(restored["slot"])

        self.wait_heartbeat(saved + 1, "c2")
        self.assertEqual(heartbeats(self.log_path("c2"))[0], saved + 1)

    def test_snapshot_is_one_entry_zip(self):
        slot = self.boot()
        self.agency.initialize(slot)
        snapshot = os.path.join(self.folder, "snapshot.zip")

        self.agency.read_snapshot(slot, snapshot)

        with zipfile.ZipFile(snapshot) as archive:
            self.assertEqual(archive.namelist(), [SNAPSHOT_ENTRY])

    def test_read_snapshot_needs_suspended(self):
        slot = self.boot()

        error = self.assertRaises(
            OperationError,
            self.agency.read_snapshot,
            slot,
            os.path.join(self.folder, "s.zip"),
        )

        self.assertEqual(error.kind, "bad_state")

    def test_new_agency_adopts_vm(self):
        slot = self.boot()
        self.wait_heartbeat(1)

        adopted = QemuAgency(self.state_dir)
        adopted.initialize(slot)

        self.assertEqual(adopted.list_slots()["slots"][0]["state"], "suspended")

    def test_terminate_frees_slot(self):
        slot = self.boot()
        pid = self.agency._slots[slot].pid

        result = self.agency.terminate(slot)

        self.assertEqual(
            (result["state"], self.agency.list_slots()["slots"][0]["state"]),
            ("dead", "dead"),
        )
        self.assertIsNone(read_process_info(pid))

    def test_killed_vm_reports_dead(self):
        slot = self.boot()
        os.kill(self.agency._slots[slot].pid, 9)

        events = wait_for(self.agency.poll)

        self.assertEqual(
            [(event["state"], event["exit_status"]) for event in events],
            [("dead", 137)],
        )

    def test_killed_pump_is_replaced(self):
        slot = self.boot()
        self.wait_heartbeat(1)
        record = self.agency._slots[slot]
        killed = record.pump_pid
        os.kill(killed, 9)
        last = heartbeats(self.log_path())[-1]

        wait_for(lambda: self.agency.poll() == [] and record.pump_pid != killed)

        self.wait_heartbeat(last + 2)

    def test_restore_checks_image_digest(self):
        slot = self.boot()
        self.agency.initialize(slot)
        snapshot = os.path.join(self.folder, "snapshot.zip")
        self.agency.read_snapshot(slot, snapshot)
        other = os.path.join(self.folder, "other.itb")
        with open(other, "wb") as stream:
            stream.write(build_fit())

        error = self.assertRaises(
            OperationError,
            self.agency.write_snapshot,
            snapshot,
            self.log_path("c2"),
            "c2",
            image=other,
        )

        self.assertIn("sha256", error.message)

"""The C{capsule} backend: agency kernels with capsules (generation C).

The engine speaks the generation-A vocabulary, so this backend translates:

- inject: C{INJECT_CAPSULE}; the capsule is stopped, reported as booting.
- finalize: C{START_CAPSULE} for a stopped capsule (blocks until living),
  or, for a capsule that a pause saved to disk, C{WRITE_SNAPSHOT}, which
  restores and resumes it, possibly in another slot. The reply then
  carries the new slot.
- initialize (pause): the kernel has no suspend call, so the driver saves a
  snapshot with C{READ_SNAPSHOT} and shuts the capsule down with
  C{SHUTDOWN}. The slot stays reserved for the capsule, and C{list} reports
  it as suspended.
- terminate: C{SHUTDOWN} until the slot is empty, or deleting the saved
  snapshot of a paused capsule.
- read_snapshot / write_snapshot: C{READ_SNAPSHOT} (size, then data) and
  C{WRITE_SNAPSHOT}; a restored capsule runs at once.

Capsule states map to the generation-A names as stopped -> booting,
living, resuming and awakened -> living, suspended and hibernate ->
suspended, and killed, terminated and dead unchanged.
"""

import os
import struct

from twisted.logger import Logger

from emiso.agency.protocol import OperationError
from emiso.agency.soo.base import (
    SlotRecord,
    SooBackend,
    _load_records,
    read_snapshot_entry,
    require_absolute_path,
    require_string,
)
from emiso.agency.soo.device import UserBuffers
from emiso.agency.soo.structs import SLOTS

logger = Logger()

_WIRE_STATES = {
    "stopped": "booting",
    "living": "living",
    "suspended": "suspended",
    "hibernate": "suspended",
    "resuming": "living",
    "awakened": "living",
    "killed": "killed",
    "terminated": "terminated",
    "dead": "dead",
}

_MAX_SHUTDOWN_CALLS = 3

# A capsule snapshot starts with its payload size as a u32.
_SIZE = struct.Struct("<I")


class CapsuleBackend(SooBackend):
    """
    The backend for capsule kernels, named C{capsule} on the command line.
    """

    name = "capsule"

    def __init__(self, device, state_dir, abi, log_layout, **options) -> None:
        super().__init__(device, state_dir, "C", abi, log_layout, **options)
        self._hibernated_dir = os.path.join(self.state_dir, "soo", "hibernated")
        os.makedirs(self._hibernated_dir, exist_ok=True)
        self.hibernated: dict[int, SlotRecord] = _load_records(self._hibernated_dir)
        self._capsule_id_path = os.path.join(self.state_dir, "soo", "capsule-id")

    def wire_state(self, kernel_state: str) -> str:
        return _WIRE_STATES.get(kernel_state, kernel_state)

    def inject(self, image: str, log: str, token: str = "") -> dict:
        """Load a capsule into a free slot that no paused capsule reserves."""
        image = require_absolute_path(image, "image")
        log = require_absolute_path(log, "log")
        token = require_string(token, "token")
        data, fit = self.load_image(image)
        with self.device_lock:
            entries = self.me_ids()
            self.reconcile(entries)
            slot = self._free_slot(entries, "inject")
            capsule_id = self._next_capsule_id()
            offsets = self.log_offsets(capsule_id)
            with UserBuffers() as buffers:
                address = buffers.copy(data)
                reply = self.call("INJECT_CAPSULE", buffers, buffer=address,
                                  value=len(data), slot=slot, capsule_id=capsule_id)
            if reply["slotID"] == -1:
                raise self.free_slot_error(self.me_ids(), "inject", fit.me.domain_size)
            slot = reply["slotID"]
            self.add_record(
                self.new_record(
                    slot, token, log, "stopped", offsets, capsule_id=capsule_id,
                    image=image,
                    name=fit.me.me_name, spid=fit.me.spid, size=fit.me.domain_size,
                )
            )
        logger.info("Injected capsule {image} into slot {slot} (capsule id {id})",
                    image=image, slot=slot, id=capsule_id)
        return {"slot": slot, "state": "booting", "size": fit.me.domain_size}

    def finalize(self, slot: int) -> dict:
        """Start a stopped capsule, or restore one that a pause saved."""
        with self.device_lock:
            saved = self.hibernated.get(slot)
            if saved is not None:
                return self._resume_saved(saved)
            state = self.require_state(
                slot, "finalize", ("stopped", "living", "resuming", "awakened")
            )
            record = self.records.get(slot)
            if state == "stopped":
                with UserBuffers() as buffers:
                    self.call("START_CAPSULE", buffers, slot=slot)
                state = self.kernel_state(slot)
            if record is not None:
                if state == "dead":
                    self.drop_record(record)
                    raise OperationError(
                        "internal", f"finalize: the capsule in slot {slot} left its slot"
                    )
                self.set_state(record, state)
        return {"state": self.wire_state(state)}

    def initialize(self, slot: int) -> dict:
        """Pause: save the living capsule to disk, then shut it down."""
        with self.device_lock:
            self.require_state(slot, "initialize", ("living",))
            record = self.records.get(slot)
            if record is None:
                raise OperationError(
                    "bad_state",
                    f"initialize: the capsule in slot {slot} was not injected by "
                    "this engine, so the driver cannot restore it after a pause",
                )
            # The capsule keeps running after READ_SNAPSHOT, and what it
            # prints until SHUTDOWN is printed again after the restore, so
            # the shutdown comes at once and the zip is written afterwards.
            data = self._read_snapshot(slot)
            state = self._shut_down(slot, record)
            if state != "dead":
                raise OperationError(
                    "internal",
                    f"initialize: the capsule in slot {slot} is still {state} after "
                    "SHUTDOWN",
                )
            self.drop_record(record)
            snapshot = os.path.join(self._hibernated_dir, f"{slot}.zip")
            try:
                self.write_zip(snapshot, data)
            except OSError as error:
                self._restore_after_failed_save(record, data, error)
            record.state = "hibernate"
            record.snapshot = snapshot
            self.hibernated[slot] = record
            self.save_record(record, self._hibernated_dir)
        logger.info("Paused capsule {name} of slot {slot} to {path}",
                    name=record.name, slot=slot, path=snapshot)
        return {"state": "suspended"}

    def _restore_after_failed_save(self, record: SlotRecord, data: bytes,
                                   error: OSError) -> None:
        """Put a capsule whose snapshot could not be saved back into a slot."""
        logger.error("Cannot save the snapshot of slot {slot}: {error}; restoring "
                     "the capsule", slot=record.slot, error=error)
        offsets = self.log_offsets(record.capsule_id)
        slot, state = self._write_snapshot(data, record.slot)
        self.add_record(
            self.new_record(
                slot, record.token, record.log, state, offsets,
                capsule_id=record.capsule_id, image=record.image, name=record.name,
                spid=record.spid, size=record.size,
            )
        )
        raise OperationError(
            "internal",
            f"initialize: cannot save the snapshot of slot {record.slot} "
            f"({error}); the capsule was restored into slot {slot}",
        )

    def terminate(self, slot: int) -> dict:
        """Shut the capsule down and free its slot (or drop its saved snapshot)."""
        with self.device_lock:
            saved = self.hibernated.get(slot)
            if saved is not None:
                self._forget_saved(saved)
                return {"state": "dead", "exit_status": 0}
            self.require_state(
                slot,
                "terminate",
                ("stopped", "living", "suspended", "hibernate", "resuming",
                 "awakened", "terminated"),
            )
            record = self.records.get(slot)
            state = self._shut_down(slot, record)
            if state != "dead":
                raise OperationError(
                    "internal",
                    f"terminate: the capsule in slot {slot} is still {state} after "
                    "SHUTDOWN",
                )
            if record is not None:
                self.drop_record(record)
        logger.info("Shut down the capsule in slot {slot}", slot=slot)
        return {"state": "dead", "exit_status": 0}

    def read_snapshot(self, slot: int, path: str) -> dict:
        """Save a snapshot zip of a capsule; a living one keeps running."""
        path = require_absolute_path(path, "path")
        with self.device_lock:
            saved = self.hibernated.get(slot)
            if saved is not None:
                data = read_snapshot_entry(saved.snapshot)
            else:
                self.require_state(slot, "read_snapshot", ("living", "stopped"))
                data = self._read_snapshot(slot)
        return {"size": self.write_zip(path, data)}

    def write_snapshot(self, path: str, log: str, token: str = "",
                       image: str | None = None) -> dict:
        """Restore a snapshot zip into a free slot; the capsule runs at once."""
        path = require_absolute_path(path, "path")
        log = require_absolute_path(log, "log")
        token = require_string(token, "token")
        # The kernel snapshot contains the whole ME, so the image is only
        # recorded for the list.
        if image is not None:
            image = require_absolute_path(image, "image")
        data = _check_snapshot(read_snapshot_entry(path), path)
        with self.device_lock:
            entries = self.me_ids()
            self.reconcile(entries)
            wanted = self._free_slot(entries, "write_snapshot")
            capsule_id = self._next_capsule_id()
            offsets = self.log_offsets(capsule_id)
            slot, state = self._write_snapshot(data, wanted)
            record = self.new_record(slot, token, log, state, offsets,
                                     capsule_id=capsule_id, image=image or "")
            self.add_record(record)
        return {"slot": slot, "state": self.wire_state(state)}

    def describe(self, slot, entry, record):
        saved = self.hibernated.get(slot)
        if saved is not None and entry["state"] == "dead":
            return self._describe_saved(saved)
        return super().describe(slot, entry, record)

    def extra_list_entries(self, entries: dict[int, dict]) -> list[dict]:
        # A paused capsule whose reserved slot another ME took is listed
        # after the five slots, so that its container still finds it.
        return [
            self._describe_saved(saved)
            for slot, saved in sorted(self.hibernated.items())
            if entries[slot]["state"] != "dead"
        ]

    # Helpers; the caller holds device_lock

    def _describe_saved(self, saved: SlotRecord) -> dict:
        return {
            "slot": saved.slot,
            "state": "suspended",
            "kernel_state": "hibernate",
            "spid": saved.spid,
            "name": saved.name,
            "shortdesc": "",
            "size": saved.size,
            "image": saved.image,
            "token": saved.token,
            "log": saved.log,
            "snapshot": saved.snapshot,
        }

    def _free_slot(self, entries: dict[int, dict], operation: str) -> int:
        """Return the lowest empty slot that no paused capsule reserves."""
        for slot in SLOTS:
            if entries[slot]["state"] == "dead" and slot not in self.hibernated:
                return slot
        reserved = sorted(self.hibernated)
        detail = f" ({len(reserved)} reserved by paused capsules)" if reserved else ""
        raise OperationError("no_slot", f"{operation}: all ME slots are in use{detail}")

    def _read_snapshot(self, slot: int) -> bytes:
        with UserBuffers() as buffers:
            size = self.call("READ_SNAPSHOT", buffers, slot=slot, value=0)["value"]
            if size <= 0:
                raise OperationError(
                    "internal", f"the kernel reported snapshot size {size} for slot {slot}"
                )
            address, snapshot = buffers.allocate(size)
            reply = self.call("READ_SNAPSHOT", buffers, slot=slot, value=size,
                              buffer=address)
            if reply["value"] == -1:
                raise OperationError(
                    "internal", f"the kernel could not copy the snapshot of slot {slot}"
                )
            return snapshot.raw[:size]

    def _write_snapshot(self, data: bytes, wanted: int) -> tuple[int, str]:
        with UserBuffers() as buffers:
            address = buffers.copy(data)
            reply = self.call("WRITE_SNAPSHOT", buffers, buffer=address, slot=wanted)
        slot = reply["slotID"]
        if slot == -1:
            raise self.free_slot_error(self.me_ids(), "write_snapshot", len(data))
        return slot, self.kernel_state(slot)

    def _shut_down(self, slot: int, record: SlotRecord | None) -> str:
        state = self.kernel_state(slot)
        with UserBuffers() as buffers:
            for _ in range(_MAX_SHUTDOWN_CALLS):
                if state == "dead":
                    break
                self.call("SHUTDOWN", buffers, slot=slot)
                state = self.kernel_state(slot)
        if record is not None and state != "dead":
            self.set_state(record, state)
        return state

    def _resume_saved(self, saved: SlotRecord) -> dict:
        data = _check_snapshot(read_snapshot_entry(saved.snapshot), saved.snapshot)
        entries = self.me_ids()
        wanted = saved.slot if entries[saved.slot]["state"] == "dead" else -1
        offsets = self.log_offsets(saved.capsule_id)
        slot, state = self._write_snapshot(data, wanted)
        old_slot = saved.slot
        record = self.new_record(
            slot, saved.token, saved.log, state, offsets, capsule_id=saved.capsule_id,
            image=saved.image, name=saved.name, spid=saved.spid, size=saved.size,
        )
        self._forget_saved(saved)
        self.add_record(record)
        if slot != old_slot:
            self._move_reservation(slot, old_slot)
        logger.info("Resumed capsule {name} from {old} into slot {slot}",
                    name=record.name, old=old_slot, slot=slot)
        return {"state": self.wire_state(state), "slot": slot}

    def _move_reservation(self, taken: int, free: int) -> None:
        """Give a paused capsule whose reserved slot was just taken the slot
        that was freed, and tell the engine."""
        displaced = self.hibernated.pop(taken, None)
        if displaced is None:
            return
        self.forget_record(displaced, self._hibernated_dir)
        displaced.slot = free
        self.hibernated[free] = displaced
        self.save_record(displaced, self._hibernated_dir)
        self._pending_events.append(
            {
                "event": "me_state",
                "slot": free,
                "token": displaced.token,
                "state": "suspended",
                "previous": "suspended",
                "previous_slot": taken,
                "reason": f"the paused capsule now reserves slot {free}",
            }
        )

    def _forget_saved(self, saved: SlotRecord) -> None:
        self.hibernated.pop(saved.slot, None)
        self.forget_record(saved, self._hibernated_dir)
        if saved.snapshot:
            try:
                os.remove(saved.snapshot)
            except FileNotFoundError:
                pass

    def _next_capsule_id(self) -> int:
        try:
            with open(self._capsule_id_path, encoding="ascii") as stream:
                current = int(stream.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            current = 0
        temporary = f"{self._capsule_id_path}.tmp"
        with open(temporary, "w", encoding="ascii") as stream:
            stream.write(str(current + 1))
        os.replace(temporary, self._capsule_id_path)
        return current


def _check_snapshot(data: bytes, path: str) -> bytes:
    if len(data) < _SIZE.size:
        raise OperationError("invalid", f"snapshot {path} is too short")
    return data

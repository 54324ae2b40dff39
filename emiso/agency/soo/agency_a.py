"""The C{soo} backend: the generation-A agency kernel (ME/migration ioctls).

Operations map to the kernel like this:

- inject: C{INJECT_ME} with the ITB in user memory; the ME stays booting.
- finalize: C{FINAL_MIGRATION}; boots a booting ME, resumes a suspended
  one, or starts a restored snapshot (migrating). It blocks until then.
- initialize: C{INIT_MIGRATION}; suspends a living ME (a pause).
- terminate: C{FORCE_TERMINATE}, which acts only on living, dormant and
  terminated MEs. A suspended, booting or restored ME is finalized first,
  which for a booting ME means waiting for its boot.
- read_snapshot: C{READ_SNAPSHOT} of a suspended ME, then
  C{GET_ME_SNAPSHOT} into user memory, saved as a zip with one entry C{me}.
- write_snapshot: C{GET_ME_FREE_SLOT}, C{INIT_MIGRATION} (which only
  records the size of a migrating slot) and C{WRITE_SNAPSHOT}.
- list: C{GET_ME_ID_ARRAY}.

Before each call the driver reads the slot's state, because the kernel
responds with C{BUG()} to a call in a state it does not expect.
"""

import struct

from twisted.logger import Logger

from emiso.agency.protocol import OperationError
from emiso.agency.soo.base import (
    SooBackend,
    read_snapshot_entry,
    require_absolute_path,
    require_string,
)
from emiso.agency.soo.device import UserBuffers
from emiso.agency.soo.structs import SLOTS

logger = Logger()

# FORCE_TERMINATE moves a living ME to terminated and a terminated one to
# dead; a few calls are enough, more mean the ME does not react.
_MAX_TERMINATE_CALLS = 3

# A generation-A snapshot starts with {ME_size u32, size_mig_structure u32}.
_SNAPSHOT_HEADER = struct.Struct("<II")


class GenerationABackend(SooBackend):
    """
    The backend for generation-A kernels, named C{soo} on the command line.
    """

    name = "soo"

    def __init__(self, device, state_dir, abi, log_layout, **options) -> None:
        super().__init__(device, state_dir, "A", abi, log_layout, **options)

    def inject(self, image: str, log: str, token: str = "") -> dict:
        """Load the ME of a FIT image into the first free slot, booting."""
        image = require_absolute_path(image, "image")
        log = require_absolute_path(log, "log")
        token = require_string(token, "token")
        data, fit = self.load_image(image)
        with self.device_lock:
            entries = self.me_ids()
            self.reconcile(entries)
            if all(entries[slot]["state"] != "dead" for slot in SLOTS):
                raise OperationError("no_slot", "inject: all ME slots are in use")
            offsets = self.log_offsets()
            with UserBuffers() as buffers:
                address = buffers.copy(data)
                reply = self.call("INJECT_ME", buffers, buffer=address, value=len(data))
            slot = reply["slotID"]
            if slot == -1:
                raise self.free_slot_error(self.me_ids(), "inject", fit.me.domain_size)
            self.add_record(
                self.new_record(
                    slot, token, log, "booting", offsets, image=image,
                    name=fit.me.me_name, spid=fit.me.spid, size=fit.me.domain_size,
                )
            )
        logger.info("Injected {image} into slot {slot}", image=image, slot=slot)
        return {"slot": slot, "state": "booting", "size": fit.me.domain_size}

    def finalize(self, slot: int) -> dict:
        """Boot, resume or restore the ME in C{slot}; blocks until it is living."""
        with self.device_lock:
            self.require_state(slot, "finalize", ("booting", "suspended", "migrating"))
            record = self.records.get(slot)
            with UserBuffers() as buffers:
                self.call("FINAL_MIGRATION", buffers, slot=slot)
            state = self.kernel_state(slot)
            self._record_result(record, state, "finalize")
        return {"state": state}

    def initialize(self, slot: int) -> dict:
        """Suspend the living ME in C{slot}; the ME may refuse."""
        with self.device_lock:
            self.require_state(slot, "initialize", ("living", "dormant"))
            record = self.records.get(slot)
            with UserBuffers() as buffers:
                reply = self.call("INIT_MIGRATION", buffers, slot=slot)
            state = self.kernel_state(slot)
            if reply["value"] == -1:
                # value -1 means the ME's pre_propagate callback refused, or
                # killed the ME, which then left its slot.
                if record is not None:
                    if state == "dead":
                        self.drop_record(record)
                    else:
                        self.set_state(record, state)
                raise OperationError(
                    "refused",
                    f"the ME in slot {slot} refused to be suspended "
                    f"(it is now {state})",
                )
            self._record_result(record, state, "initialize")
        return {"state": state}

    def terminate(self, slot: int) -> dict:
        """Force-terminate the ME in C{slot} and free the slot."""
        with self.device_lock:
            state = self.require_state(
                slot,
                "terminate",
                ("living", "dormant", "terminated", "suspended", "migrating", "booting"),
            )
            record = self.records.get(slot)
            with UserBuffers() as buffers:
                if state in ("suspended", "migrating", "booting"):
                    # FORCE_TERMINATE ignores these states, so the ME is first
                    # brought to living.
                    logger.info("Finalizing the {state} ME in slot {slot} before "
                                "terminating it", state=state, slot=slot)
                    self.call("FINAL_MIGRATION", buffers, slot=slot)
                    state = self.kernel_state(slot)
                calls = 0
                while state in ("living", "dormant", "terminated"):
                    if calls == _MAX_TERMINATE_CALLS:
                        break
                    self.call("FORCE_TERMINATE", buffers, slot=slot)
                    calls += 1
                    state = self.kernel_state(slot)
            if state != "dead":
                if record is not None:
                    self.set_state(record, state)
                raise OperationError(
                    "internal",
                    f"terminate: the ME in slot {slot} is still {state} after "
                    f"{calls} FORCE_TERMINATE calls",
                )
            if record is not None:
                self.drop_record(record)
        logger.info("Terminated the ME in slot {slot}", slot=slot)
        return {"state": "dead", "exit_status": 0}

    def read_snapshot(self, slot: int, path: str) -> dict:
        """Save the snapshot of the suspended ME in C{slot} as a zip."""
        path = require_absolute_path(path, "path")
        with self.device_lock:
            self.require_state(slot, "read_snapshot", ("suspended",))
            with UserBuffers() as buffers:
                reply = self.call("READ_SNAPSHOT", buffers, slot=slot)
                kernel_address, size = reply["buffer"], reply["value"]
                if size <= 0 or kernel_address == 0:
                    raise OperationError(
                        "internal",
                        f"read_snapshot: the kernel returned no snapshot for slot "
                        f"{slot} (size {size})",
                    )
                address, snapshot = buffers.allocate(size)
                # GET_ME_SNAPSHOT takes the user destination in value, the
                # kernel buffer from READ_SNAPSHOT in buffer, the size in slotID.
                self.call("GET_ME_SNAPSHOT", buffers, buffer=kernel_address,
                          slot=size, value=address)
                data = snapshot.raw[:size]
        return {"size": self.write_zip(path, data)}

    def write_snapshot(self, path: str, log: str, token: str = "",
                       image: str | None = None) -> dict:
        """Restore a snapshot zip into a free slot, in state migrating."""
        path = require_absolute_path(path, "path")
        log = require_absolute_path(log, "log")
        token = require_string(token, "token")
        # The kernel snapshot holds the whole ME, so the image is only
        # recorded for the list.
        if image is not None:
            image = require_absolute_path(image, "image")
        data = read_snapshot_entry(path)
        if len(data) < _SNAPSHOT_HEADER.size:
            raise OperationError("invalid", f"snapshot {path} is too short")
        me_size, migration_size = _SNAPSHOT_HEADER.unpack_from(data)
        if me_size == 0 or len(data) < _SNAPSHOT_HEADER.size + migration_size:
            raise OperationError(
                "invalid",
                f"snapshot {path} has an invalid header (ME size {me_size}, "
                f"migration structure {migration_size} bytes, {len(data)} bytes "
                "in all)",
            )
        with self.device_lock:
            entries = self.me_ids()
            self.reconcile(entries)
            if all(entries[slot]["state"] != "dead" for slot in SLOTS):
                raise OperationError("no_slot", "write_snapshot: all ME slots are in use")
            offsets = self.log_offsets()
            with UserBuffers() as buffers:
                reply = self.call("GET_ME_FREE_SLOT", buffers, value=me_size)
                slot = reply["slotID"]
                if slot == -1:
                    raise self.free_slot_error(self.me_ids(), "write_snapshot", me_size)
                self.call("INIT_MIGRATION", buffers, slot=slot)
                address = buffers.copy(data)
                self.call("WRITE_SNAPSHOT", buffers, buffer=address, slot=slot)
            self.add_record(
                self.new_record(slot, token, log, "migrating", offsets, size=me_size,
                                image=image or "")
            )
        return {"slot": slot, "state": "migrating"}

    def _record_result(self, record, state: str, operation: str) -> None:
        if record is None:
            return
        if state == "dead":
            self.drop_record(record)
            raise OperationError(
                "internal",
                f"{operation}: the ME in slot {record.slot} left its slot "
                "(the kernel reports it dead)",
            )
        self.set_state(record, state)

"""Parts shared by the generation-A and capsule backends of the driver.

L{SooBackend} owns the device, the ioctl helper, the slot records the
kernel cannot store (which container owns a slot, its console log, how far
its syslog lines were copied), the monitor that turns state changes into
events, and the log pump.

Every ioctl runs with C{self.device_lock} held: the operations hold it for
their whole run on the driver's main thread, and the monitor thread skips
a round when an operation runs, so two ioctls never run at the same time.
"""

import json
import os
import threading
import time
import zipfile
from typing import Callable

import attrs
from twisted.logger import Logger

from emiso.agency.files import write_json_atomically
from emiso.agency.protocol import OperationError
from emiso.agency.soo import logs
from emiso.agency.soo.device import IDevice, UserBuffers
from emiso.agency.soo.structs import MAX_ME_DOMAINS, SLOTS, interface
from emiso.errors import InvalidImage

logger = Logger()

SNAPSHOT_ENTRY = "me"

#: Seconds between two reads of the slot states by the monitor.
DEFAULT_POLL_INTERVAL = 1.0


@attrs.define
class SlotRecord:
    """
    The driver's data about an ME beyond the kernel's C{ME_id_t}.

    Persisted as C{<state-dir>/soo/slots/<slot>.json} (capsules saved by a
    pause: C{<state-dir>/soo/hibernated/<slot>.json}).
    """

    slot: int
    token: str
    log: str
    state: str
    image: str = ""
    name: str = ""
    spid: int = 0
    size: int = 0
    capsule_id: int | None = None
    log_path: str = ""
    log_prefix: str = ""
    log_shared: bool = False
    log_offset: int = 0
    snapshot: str | None = None

    def log_source(self) -> logs.LogSource:
        return logs.LogSource(self.log_path, self.log_prefix, self.log_shared)


class SooBackend:
    """
    The common part of the SOO backends.

    @param device: an L{IDevice} provider; opened here.
    @param state_dir: the driver's state folder.
    @param generation: C{"A"} or C{"C"}.
    @param abi: C{arm64} or C{arm}.
    @param log_layout: where the agency's syslog writes the ME lines.
    @param read_fit: parses FIT bytes into an L{emiso.engine.fit.FitImage}.
    @param clock: wall clock in seconds, used to pace the monitor.
    """

    name = "soo"

    def __init__(
        self,
        device: IDevice,
        state_dir: str,
        generation: str,
        abi: str,
        log_layout: logs.LogLayout,
        read_fit: Callable | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        self.device = device
        self.interface = interface(generation, abi)
        self.log_layout = log_layout
        self.state_dir = os.path.abspath(state_dir)
        self._slots_dir = os.path.join(self.state_dir, "soo", "slots")
        os.makedirs(self._slots_dir, exist_ok=True)
        self._read_fit = read_fit or _parse_fit
        self._clock = clock
        self._poll_interval = poll_interval
        self._next_poll = 0.0
        self.device_lock = threading.Lock()
        self._records_lock = threading.RLock()
        self.records: dict[int, SlotRecord] = _load_records(self._slots_dir)
        self._pending_events: list[dict] = []
        device.open()

    def operations(self) -> dict[str, Callable[..., dict]]:
        """Return the driver operations, keyed by their wire name."""
        return {
            "hello": self.hello,
            "list": self.list_slots,
            "inject": self.inject,
            "finalize": self.finalize,
            "initialize": self.initialize,
            "terminate": self.terminate,
            "read_snapshot": self.read_snapshot,
            "write_snapshot": self.write_snapshot,
        }

    def hello(self) -> dict:
        """Describe the backend and the kernel interface it was configured for."""
        return {
            "backend": self.name,
            "version": 1,
            "pid": os.getpid(),
            "generation": self.interface.generation,
            "abi": self.interface.abi,
            "device": self.device.path,
        }

    # ioctl helpers; the caller holds device_lock

    def call(self, command: str, buffers: UserBuffers, *, buffer: int = 0,
             slot: int = 0, value: int = 0, capsule_id: int = 0) -> dict:
        """
        Send one ioctl and return the argument structure the kernel copied back.

        The kernel handler always returns 0, and reports failures only as
        C{slotID == -1} or C{value == -1}, so the caller checks those fields.
        """
        layout = self.interface.args
        fields = {"buffer": buffer, "slotID": slot, "value": value}
        if self.interface.generation == "C":
            fields["capsuleID"] = capsule_id
        argument = bytearray(layout.pack(**fields))
        logger.debug("ioctl {command} slot {slot} value {value}", command=command,
                     slot=slot, value=value)
        self.device.ioctl(self.interface.numbers[command], argument)
        return layout.unpack(bytes(argument))

    def me_ids(self) -> dict[int, dict]:
        """Read C{ME_id_t} of all slots with C{GET_ME_ID_ARRAY}, by slot."""
        layout = self.interface.me_id
        with UserBuffers() as buffers:
            address, array = buffers.allocate(layout.size * MAX_ME_DOMAINS)
            self.call("GET_ME_ID_ARRAY", buffers, buffer=address)
            raw = bytes(array)
        result = {}
        for index, slot in enumerate(SLOTS):
            entry = layout.unpack(raw, index * layout.size)
            entry["state"] = self.interface.state_name(entry["state"])
            result[slot] = entry
        return result

    def kernel_state(self, slot: int) -> str:
        """Return the kernel state of one slot (C{dead} when empty)."""
        layout = self.interface.me_id
        with UserBuffers() as buffers:
            address, buffer = buffers.allocate(layout.size)
            reply = self.call("GET_ME_ID", buffers, buffer=address, slot=slot)
            raw = bytes(buffer)
        if reply["value"] == -1:
            return "dead"
        return self.interface.state_name(layout.unpack(raw)["state"])

    # Mapping to the engine's vocabulary (generation-A state names)

    def wire_state(self, kernel_state: str) -> str:
        """Return the generation-A state name the engine expects."""
        return kernel_state

    # Records

    def save_record(self, record: SlotRecord, folder: str | None = None) -> None:
        folder = folder or self._slots_dir
        write_json_atomically(
            os.path.join(folder, f"{record.slot}.json"), attrs.asdict(record)
        )

    def forget_record(self, record: SlotRecord, folder: str | None = None) -> None:
        folder = folder or self._slots_dir
        try:
            os.remove(os.path.join(folder, f"{record.slot}.json"))
        except FileNotFoundError:
            pass

    def log_offsets(self, capsule_id: int | None = None) -> dict[int, int]:
        """
        Return the current end of each slot's syslog file.

        Taken before the ioctl that starts an ME, so that the copy of its
        console starts there: the lines of an earlier ME in the slot are
        skipped, and the first lines of the new one are kept.
        """
        return {
            slot: logs.file_size(self.log_layout.source(slot, capsule_id).path)
            for slot in SLOTS
        }

    def new_record(self, slot: int, token: str, log: str, state: str,
                   offsets: dict[int, int], capsule_id: int | None = None,
                   **fields) -> SlotRecord:
        """Build the record of a new ME; C{offsets} comes from L{log_offsets}."""
        source = self.log_layout.source(slot, capsule_id)
        return SlotRecord(
            slot=slot,
            token=token,
            log=log,
            state=state,
            capsule_id=capsule_id,
            log_path=source.path,
            log_prefix=source.prefix,
            log_shared=source.shared,
            log_offset=offsets[slot],
            **fields,
        )

    def add_record(self, record: SlotRecord) -> None:
        with self._records_lock:
            self.records[record.slot] = record
            self.save_record(record)

    def drop_record(self, record: SlotRecord) -> None:
        """Copy the last console lines of an ME that left its slot, then forget it."""
        with self._records_lock:
            self.pump_one(record)
            if self.records.get(record.slot) is record:
                del self.records[record.slot]
            self.forget_record(record)

    def set_state(self, record: SlotRecord, state: str) -> None:
        with self._records_lock:
            record.state = state
            self.save_record(record)

    # Shared operation steps

    def describe(self, slot: int, entry: dict, record: SlotRecord | None) -> dict:
        """Build the C{list} entry of one slot."""
        state = entry["state"]
        if state == "dead":
            return {"slot": slot, "state": "dead"}
        described = {
            "slot": slot,
            "state": self.wire_state(state),
            "kernel_state": state,
            "spid": entry["spid"],
            "name": entry["name"],
            "shortdesc": entry["shortdesc"],
        }
        if record is not None:
            described.update(
                token=record.token,
                log=record.log,
                image=record.image,
                size=record.size,
                name=entry["name"] or record.name,
                spid=entry["spid"] or record.spid,
            )
        return described

    def list_slots(self) -> dict:
        """Return the five slots as the kernel reports them, with their owners."""
        with self.device_lock:
            entries = self.me_ids()
            self.reconcile(entries)
            slots = [
                self.describe(slot, entries[slot], self.records.get(slot))
                for slot in SLOTS
            ]
        return {"slots": slots + self.extra_list_entries(entries)}

    def extra_list_entries(self, entries: dict[int, dict]) -> list[dict]:
        return []

    def reconcile(self, entries: dict[int, dict]) -> None:
        """
        Compare the records with the kernel's states. Queue an event for each
        ME whose state changed without a driver request, and drop the
        records of the slots that became empty.
        """
        with self._records_lock:
            for record in list(self.records.values()):
                state = entries[record.slot]["state"]
                if state == record.state:
                    continue
                event = {
                    "event": "me_state",
                    "slot": record.slot,
                    "token": record.token,
                    "state": self.wire_state(state),
                    "previous": self.wire_state(record.state),
                    "kernel_state": state,
                    "reason": f"the kernel reports the ME in slot {record.slot} "
                    f"as {state} (it was {record.state})",
                }
                logger.info(
                    "ME {name} in slot {slot} went from {previous} to {state}",
                    name=record.name,
                    slot=record.slot,
                    previous=record.state,
                    state=state,
                )
                self._pending_events.append(event)
                if state == "dead":
                    self.drop_record(record)
                else:
                    self.set_state(record, state)

    def require_state(self, slot: int, operation: str, allowed: tuple[str, ...]
                      ) -> str:
        """
        Read the slot's state and raise unless it is one of C{allowed}.

        This check is what keeps the kernel from a C{BUG()}: its handlers
        crash on a state they do not expect instead of returning an error.
        """
        _check_slot(slot)
        state = self.kernel_state(slot)
        if state == "dead":
            raise OperationError("not_found", f"{operation}: slot {slot} is empty")
        if state not in allowed:
            raise OperationError(
                "bad_state",
                f"{operation}: the ME in slot {slot} is {state}; the kernel accepts "
                f"{operation} only for {', '.join(allowed)} MEs, so the driver did "
                "not send it",
            )
        return state

    def load_image(self, image: str) -> tuple[bytes, object]:
        """Read and check a FIT image; the driver checks it because the
        kernel reports a bad image only as a failed injection."""
        try:
            with open(image, "rb") as stream:
                data = stream.read()
        except OSError as error:
            raise OperationError(
                "invalid", f"cannot read image {image}: {error.strerror}"
            ) from None
        try:
            fit = self._read_fit(data)
        except InvalidImage as error:
            raise OperationError("invalid", f"image {image}: {error}") from None
        if fit.me is None:
            raise OperationError("invalid", f"image {image} has no /ME node")
        return data, fit

    def free_slot_error(self, entries: dict[int, dict], operation: str,
                        size: int) -> OperationError:
        """Return the error for a C{slotID == -1} reply: the kernel uses
        it for both a full slot table and missing memory."""
        free = [slot for slot in SLOTS if entries[slot]["state"] == "dead"]
        if not free:
            return OperationError("no_slot", f"{operation}: all ME slots are in use")
        return OperationError(
            "no_memory",
            f"{operation}: the hypervisor has no memory for an ME of {size} bytes "
            f"(free slots: {', '.join(map(str, free))})",
        )

    def write_zip(self, path: str, data: bytes) -> int:
        """Write a snapshot zip with one entry C{me}, atomically; return its size."""
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise OperationError(
                "invalid", f"directory of snapshot path {path} does not exist"
            )
        temporary = f"{path}.{os.getpid()}.tmp"
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(SNAPSHOT_ENTRY, data)
        os.replace(temporary, path)
        return os.path.getsize(path)

    # Monitor

    def poll(self) -> list[dict]:
        """
        Copy new console lines, and every poll interval read the slot states.

        Runs on the driver's monitor thread. The state read is skipped
        while an operation holds the device.
        """
        self.pump_all()
        now = self._clock()
        if now >= self._next_poll and self.device_lock.acquire(blocking=False):
            try:
                self._next_poll = now + self._poll_interval
                self.reconcile(self.me_ids())
            finally:
                self.device_lock.release()
        with self._records_lock:
            events, self._pending_events = self._pending_events, []
        return events

    def pump_all(self) -> None:
        with self._records_lock:
            for record in list(self.records.values()):
                self.pump_one(record)

    def pump_one(self, record: SlotRecord) -> None:
        try:
            offset = logs.pump(record.log_source(), record.log_offset, record.log)
        except OSError as error:
            logger.warn(
                "Cannot copy the console lines of slot {slot} from {source}: {error}",
                slot=record.slot,
                source=record.log_path,
                error=error,
            )
            return
        if offset != record.log_offset:
            record.log_offset = offset
            self.save_record(record)


def read_snapshot_entry(path: str) -> bytes:
    """Return the C{me} entry of a snapshot zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if names != [SNAPSHOT_ENTRY]:
                raise OperationError(
                    "invalid",
                    f"snapshot {path} must contain exactly one entry named "
                    f"{SNAPSHOT_ENTRY!r}, found {names}",
                )
            return archive.read(SNAPSHOT_ENTRY)
    except (zipfile.BadZipFile, OSError) as error:
        raise OperationError("invalid", f"cannot read snapshot {path}: {error}") from None


def require_absolute_path(value, name: str) -> str:
    if not isinstance(value, str) or not os.path.isabs(value):
        raise OperationError("invalid", f"{name} must be an absolute path, got {value!r}")
    return value


def require_string(value, name: str) -> str:
    if not isinstance(value, str):
        raise OperationError("invalid", f"{name} must be a string, got {value!r}")
    return value


def _check_slot(slot) -> None:
    if isinstance(slot, bool) or not isinstance(slot, int) or slot not in SLOTS:
        raise OperationError(
            "invalid", f"slot must be an integer from {SLOTS[0]} to {SLOTS[-1]}, "
            f"got {slot!r}"
        )


def _parse_fit(data: bytes):
    from emiso.engine.fit import parse_fit

    return parse_fit(data)


def _load_records(folder: str) -> dict[int, SlotRecord]:
    records = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as stream:
                record = SlotRecord(**json.load(stream))
        except (OSError, ValueError, TypeError) as error:
            logger.warn("Ignoring the unreadable slot record {path}: {error}",
                        path=path, error=error)
            continue
        records[record.slot] = record
    return records



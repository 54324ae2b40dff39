"""A fake agency kernel behind the L{IDevice} interface, for tests without a board.

L{FakeSooDevice} decodes each ioctl like the SOO kernel: it reads the
C{agency_ioctl_args_t} structure, follows the user pointers in it with
C{ctypes} (so a buffer freed too early shows up as garbage), applies the
ME state machine of the configured generation and writes back what the
kernel writes back, including C{slotID == -1} and C{value == -1}. A call
to which the real kernel responds with C{BUG()} raises L{KernelBug} and is
recorded, so tests can check that the driver never sends one.

The slot states live in C{<directory>/kernel.json}, so a restarted driver
finds the MEs again. MEs print to syslog files under C{<directory>/log}, in
the layout of each generation: one shared file C{me} with C{[ME:<slot>]}
prefixes (generation A) or one file C{me_<slot>.log} per ME (capsules).
A ticker thread prints a C{heartbeat N} line per heartbeat period for
each living ME; the C{emiso,sim-*} properties of the image set the boot
delay, the heartbeat period, a refused migration and a crash.

Only the host's own 64-bit layout can be dereferenced, so the fake accepts
the C{arm64} ABI on a 64-bit host; the C{arm} layouts are covered by the
packing tests.
"""

import ctypes
import fcntl
import json
import os
import struct
import threading
import time
from contextlib import contextmanager

from zope.interface import implementer

from emiso.agency.soo.device import DeviceError, IDevice
from emiso.agency.soo.structs import SLOTS, interface
from emiso.engine.fit import parse_fit
from emiso.errors import InvalidImage

CHUNK_SIZE = 2 * 1024 * 1024
POOL_CHUNKS = 256
SIGNATURE = b"SooZ"
TICK_INTERVAL = 0.05
DEFAULT_BOOT_DELAY_MS = 300
DEFAULT_HEARTBEAT_MS = 1000

# Kernel virtual addresses handed out by generation-A READ_SNAPSHOT.
_KERNEL_BASE = 0xFFFF800010000000

_HEADER_A = struct.Struct("<II")
_SIZE_C = struct.Struct("<I")


class KernelBug(Exception):
    """The real kernel would have crashed (C{BUG()}) on this call."""


def chunk_count(size: int) -> int:
    needed = max(1, -(-size // CHUNK_SIZE))
    return 1 << (needed - 1).bit_length()


@implementer(IDevice)
class FakeSooDevice:
    """
    A fake C{/dev/soo/core} for one kernel generation.

    @param directory: state and syslog folder, created when missing.
    @param generation: C{"A"} or C{"C"}.
    @param clock: wall clock in seconds (heartbeats, crashes).
    @param sleep: called with seconds for the blocking boot of an ME.
    @param ticker: run the heartbeat thread while the device is open; tests
        that call L{tick} themselves pass C{False}.
    """

    def __init__(self, directory: str, generation: str, abi: str = "arm64",
                 clock=time.time, sleep=time.sleep, ticker: bool = True) -> None:
        self.directory = os.path.abspath(directory)
        self.path = f"fake:{self.directory}"
        self.generation = generation
        self.abi = abi
        self.interface = interface(generation, abi)
        self.log_dir = os.path.join(self.directory, "log")
        os.makedirs(self.log_dir, exist_ok=True)
        self._state_path = os.path.join(self.directory, "kernel.json")
        self._lock_path = os.path.join(self.directory, "kernel.lock")
        self._bugs_path = os.path.join(self.directory, "bugs.log")
        self._clock = clock
        self._sleep = sleep
        self._use_ticker = ticker
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = None
        self._kernel_buffers: dict[int, bytes] = {}
        self._commands = {number: name for name, number in
                          self.interface.numbers.items()}
        self.calls: list[str] = []
        self.opened = False

    # IDevice

    def open(self) -> None:
        if self.abi != "arm64" or ctypes.sizeof(ctypes.c_void_p) != 8:
            raise DeviceError(
                f"the fake kernel follows user pointers with the host's layout, "
                f"so it needs --abi arm64 on a 64-bit host, not {self.abi}"
            )
        self.opened = True
        if self._use_ticker and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run_ticker, daemon=True,
                                            name="fake-soo-ticker")
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.opened = False

    def ioctl(self, request: int, argument: bytearray) -> int:
        if not self.opened:
            raise DeviceError(f"{self.path} is not open")
        name = self._commands.get(request)
        if name is None:
            self._bug(f"unknown ioctl {request:#010x}")
        args = self.interface.args.unpack(bytes(argument))
        self.calls.append(name)
        handler = getattr(self, f"_{self.generation.lower()}_{name.lower()}", None)
        if handler is None:
            self._bug(f"ioctl {name} is not modelled by the fake kernel")
        handler(args)
        packed = self.interface.args.pack(**args)
        argument[:] = packed
        return 0

    # Test helpers

    def bugs(self) -> list[str]:
        """Return the C{BUG()} calls recorded so far (by any process)."""
        try:
            with open(self._bugs_path, encoding="utf-8") as stream:
                return stream.read().splitlines()
        except FileNotFoundError:
            return []

    def slot(self, slot: int) -> dict | None:
        """Return the kernel's record of a slot, or None when it is empty."""
        with self._kernel() as kernel:
            return kernel["slots"].get(str(slot))

    def set_state(self, slot: int, state: str) -> None:
        """Force a slot's state, as an ME or the hypervisor would."""
        with self._kernel(write=True) as kernel:
            if state == "dead":
                kernel["slots"].pop(str(slot), None)
            else:
                kernel["slots"][str(slot)]["state"] = state

    def log_path(self, slot: int) -> str:
        """Return the syslog file that contains the lines of the ME in C{slot}."""
        if self.generation == "A":
            return os.path.join(self.log_dir, "me")
        return os.path.join(self.log_dir, f"me_{slot}.log")

    def log_template(self) -> str:
        """Return the C{--me-log} template matching L{log_path}."""
        if self.generation == "A":
            return os.path.join(self.log_dir, "me")
        return os.path.join(self.log_dir, "me_{id}.log")

    def tick(self) -> None:
        """Print the heartbeats that are due and crash the MEs that should."""
        with self._kernel(write=True) as kernel:
            now = self._clock()
            for key, me in list(kernel["slots"].items()):
                if me["state"] != "living" or me.get("living_since") is None:
                    continue
                elapsed_ms = (now - me["living_since"]) * 1000
                crash = me.get("crash_after_ms")
                if crash is not None and elapsed_ms >= crash:
                    self._print(int(key), "Kernel panic: fake crash requested by "
                                "emiso,sim-crash-after-ms")
                    del kernel["slots"][key]
                    continue
                due = me["base_counter"] + int(elapsed_ms // me["heartbeat_ms"])
                while me["counter"] < due:
                    me["counter"] += 1
                    self._print(int(key), f"heartbeat {me['counter']}")

    # Generation A

    def _a_inject_me(self, args: dict) -> None:
        data = ctypes.string_at(args["buffer"], args["value"])
        with self._kernel(write=True) as kernel:
            args["slotID"] = self._load(kernel, data, -1, "booting")

    def _a_final_migration(self, args: dict) -> None:
        slot = args["slotID"]
        with self._kernel(write=True) as kernel:
            me = self._me(kernel, slot)
            state = me["state"] if me else "dead"
            if state == "booting":
                me["state"] = "preparing"
            elif state == "suspended":
                self._start_heartbeats(me)
                self._print(slot, "resumed after migration was cancelled")
                return
            elif state == "migrating" and me.get("restored"):
                me["restored"] = False
                self._start_heartbeats(me)
                self._print(slot, "resumed from a snapshot")
                return
            else:
                self._bug(f"FINAL_MIGRATION on slot {slot} in state {state}")
        self._boot(slot)

    def _a_init_migration(self, args: dict) -> None:
        slot = args["slotID"]
        with self._kernel(write=True) as kernel:
            me = self._me(kernel, slot)
            state = me["state"] if me else "dead"
            if state not in ("living", "dormant", "migrating"):
                self._bug(f"INIT_MIGRATION on slot {slot} in state {state}")
            args["value"] = 0
            if state == "living":
                if me["refuse_migration"]:
                    args["value"] = -1
                    return
                self._stop_heartbeats(me)
                me["state"] = "suspended"

    def _a_force_terminate(self, args: dict) -> None:
        slot = args["slotID"]
        with self._kernel(write=True) as kernel:
            me = self._me(kernel, slot)
            if me is None:
                return
            if me["state"] == "living":
                self._print(slot, "force-terminated")
                me["state"] = "terminated"
            if me["state"] in ("dormant", "terminated"):
                del kernel["slots"][str(slot)]

    def _a_get_me_id(self, args: dict) -> None:
        self._write_me_id(args)

    def _a_get_me_id_array(self, args: dict) -> None:
        self._write_me_id_array(args)

    def _a_read_snapshot(self, args: dict) -> None:
        slot = args["slotID"]
        with self._kernel() as kernel:
            me = self._me(kernel, slot)
            if me is None or me["state"] != "suspended":
                self._bug(f"READ_SNAPSHOT on slot {slot} in state "
                          f"{me['state'] if me else 'dead'}")
            context = json.dumps(dict(me, state="migrating")).encode()
        data = _HEADER_A.pack(me["size"], len(context)) + context + bytes(me["size"])
        address = _KERNEL_BASE + len(self._kernel_buffers) * 0x4000000
        self._kernel_buffers[address] = data
        args["buffer"] = address
        args["value"] = len(data)

    def _a_get_me_snapshot(self, args: dict) -> None:
        data = self._kernel_buffers.pop(args["buffer"], None)
        if data is None or args["slotID"] != len(data):
            self._bug(f"GET_ME_SNAPSHOT of unknown kernel buffer {args['buffer']:#x}")
        ctypes.memmove(args["value"], data, len(data))

    def _a_get_me_free_slot(self, args: dict) -> None:
        with self._kernel(write=True) as kernel:
            slot = self._allocate(kernel, args["value"], -1)
            if slot != -1:
                kernel["slots"][str(slot)] = self._new_me(
                    slot, args["value"], "migrating", {}
                )
            args["slotID"] = slot

    def _a_write_snapshot(self, args: dict) -> None:
        slot = args["slotID"]
        header = ctypes.string_at(args["buffer"], _HEADER_A.size)
        me_size, context_size = _HEADER_A.unpack(header)
        data = ctypes.string_at(args["buffer"], _HEADER_A.size + context_size + me_size)
        context = json.loads(data[_HEADER_A.size:_HEADER_A.size + context_size])
        with self._kernel(write=True) as kernel:
            me = self._me(kernel, slot)
            if me is None or me["state"] != "migrating":
                self._bug(f"WRITE_SNAPSHOT on slot {slot} in state "
                          f"{me['state'] if me else 'dead'}")
            me.update(context, slot=slot, state="migrating", restored=True,
                      living_since=None)

    # Generation C (capsules)

    def _c_inject_capsule(self, args: dict) -> None:
        data = ctypes.string_at(args["buffer"], args["value"])
        with self._kernel(write=True) as kernel:
            slot = self._load(kernel, data, args["slotID"], "stopped")
            if slot != -1:
                kernel["slots"][str(slot)]["capsule_id"] = args["capsuleID"]
            args["slotID"] = slot

    def _c_start_capsule(self, args: dict) -> None:
        slot = args["slotID"]
        with self._kernel() as kernel:
            me = self._me(kernel, slot)
            if me is None or me["state"] != "stopped":
                self._bug(f"START_CAPSULE on slot {slot} in state "
                          f"{me['state'] if me else 'dead'}")
        self._boot(slot)

    def _c_read_snapshot(self, args: dict) -> None:
        slot = args["slotID"]
        with self._kernel(write=True) as kernel:
            me = self._me(kernel, slot)
            if me is None or me["state"] not in ("living", "stopped"):
                args["value"] = -1
                return
            snapshot = self._capsule_snapshot(me)
            if args["value"] == 0:
                args["value"] = len(snapshot)
                return
            if args["value"] < len(snapshot):
                args["value"] = -1
                return
            ctypes.memmove(args["buffer"], snapshot, len(snapshot))

    def _c_write_snapshot(self, args: dict) -> None:
        (size,) = _SIZE_C.unpack(ctypes.string_at(args["buffer"], _SIZE_C.size))
        payload = ctypes.string_at(args["buffer"] + _SIZE_C.size, size)
        if not payload.startswith(SIGNATURE):
            self._bug("WRITE_SNAPSHOT of a snapshot without the SooZ signature")
        (context_size,) = _SIZE_C.unpack_from(payload, len(SIGNATURE))
        start = len(SIGNATURE) + _SIZE_C.size
        context = json.loads(payload[start:start + context_size])
        with self._kernel(write=True) as kernel:
            slot = self._allocate(kernel, context["size"], args["slotID"])
            args["slotID"] = slot
            if slot == -1:
                return
            me = dict(context, slot=slot, living_since=None)
            kernel["slots"][str(slot)] = me
            if me["state"] == "hibernate":
                self._start_heartbeats(me)
                self._print(slot, "awakened from a snapshot")
                return
            me["state"] = "stopped"
        self._boot(slot)

    def _c_shutdown(self, args: dict) -> None:
        slot = args["slotID"]
        with self._kernel(write=True) as kernel:
            me = self._me(kernel, slot)
            if me is None:
                return
            if me["state"] not in ("stopped", "terminated"):
                self._print(slot, "shut down")
                me["state"] = "terminated"
            else:
                del kernel["slots"][str(slot)]

    def _c_get_me_id(self, args: dict) -> None:
        self._write_me_id(args)

    def _c_get_me_id_array(self, args: dict) -> None:
        self._write_me_id_array(args)

    # Kernel model

    def _load(self, kernel: dict, data: bytes, wanted: int, state: str) -> int:
        try:
            fit = parse_fit(data)
        except InvalidImage:
            return -1
        slot = self._allocate(kernel, fit.me.domain_size, wanted)
        if slot == -1:
            return -1
        vendor = fit.vendor
        kernel["slots"][str(slot)] = self._new_me(slot, fit.me.domain_size, state, {
            "name": fit.me.me_name,
            "spid": fit.me.spid,
            "spadcaps": fit.me.spadcaps or 0,
            "shortdesc": fit.me.me_shortdesc,
            "boot_delay_ms": vendor.get("sim-boot-delay-ms", DEFAULT_BOOT_DELAY_MS),
            "heartbeat_ms": vendor.get("sim-heartbeat-ms", DEFAULT_HEARTBEAT_MS),
            "refuse_migration": "sim-refuse-migration" in vendor,
            "crash_after_ms": vendor.get("sim-crash-after-ms"),
        })
        self._print_agency(f"injected {fit.me.me_name} into slot {slot}")
        return slot

    def _new_me(self, slot: int, size: int, state: str, identity: dict) -> dict:
        me = {
            "slot": slot,
            "state": state,
            "size": chunk_count(size) * CHUNK_SIZE,
            "name": "",
            "spid": 0,
            "spadcaps": 0,
            "shortdesc": "",
            "identity": False,
            "boot_delay_ms": DEFAULT_BOOT_DELAY_MS,
            "heartbeat_ms": DEFAULT_HEARTBEAT_MS,
            "refuse_migration": False,
            "crash_after_ms": None,
            "counter": 0,
            "base_counter": 0,
            "living_since": None,
            "capsule_id": 0,
        }
        me.update(identity)
        return me

    def _allocate(self, kernel: dict, size: int, wanted: int) -> int:
        used = sum(chunk_count(me["size"]) for me in kernel["slots"].values())
        if used + chunk_count(size) > POOL_CHUNKS:
            return -1
        if wanted in SLOTS:
            return -1 if str(wanted) in kernel["slots"] else wanted
        for slot in SLOTS:
            if str(slot) not in kernel["slots"]:
                return slot
        return -1

    def _boot(self, slot: int) -> None:
        """Boot an ME: blocks for its boot delay, like the kernel's wait for
        the ME's frontends."""
        with self._kernel() as kernel:
            delay = self._me(kernel, slot)["boot_delay_ms"] / 1000
        self._sleep(delay)
        with self._kernel(write=True) as kernel:
            me = self._me(kernel, slot)
            if me is None:
                return
            me["identity"] = True
            self._print(slot, "SO3 Operating System -- fake SOO agency kernel")
            self._print(slot, f"ME {me['name']} (spid {me['spid']:#018x}) "
                        f"booted in slot {slot}, {me['size']} bytes")
            self._start_heartbeats(me)

    def _start_heartbeats(self, me: dict) -> None:
        me["state"] = "living"
        me["identity"] = True
        me["base_counter"] = me["counter"]
        me["living_since"] = self._clock()

    def _stop_heartbeats(self, me: dict) -> None:
        me["base_counter"] = me["counter"]
        me["living_since"] = None

    def _capsule_snapshot(self, me: dict) -> bytes:
        state = "hibernate" if me["state"] == "living" else "stopped"
        context = json.dumps(dict(me, state=state, living_since=None)).encode()
        payload = (SIGNATURE + _SIZE_C.pack(len(context)) + context
                   + bytes(me["size"]))
        return _SIZE_C.pack(len(payload)) + payload

    def _write_me_id(self, args: dict) -> None:
        slot = args["slotID"]
        with self._kernel() as kernel:
            me = self._me(kernel, slot)
            data = self._me_id(slot, me)
        ctypes.memmove(args["buffer"], data, len(data))
        args["value"] = 0 if me is not None else -1

    def _write_me_id_array(self, args: dict) -> None:
        with self._kernel() as kernel:
            data = b"".join(self._me_id(slot, self._me(kernel, slot)) for slot in SLOTS)
        ctypes.memmove(args["buffer"], data, len(data))

    def _me_id(self, slot: int, me: dict | None) -> bytes:
        layout = self.interface.me_id
        if me is None:
            return layout.pack(slotID=slot, state=self.interface.state_value("dead"))
        fields = {"slotID": slot, "state": self.interface.state_value(me["state"])}
        # The identity comes from vbstore entries that the ME writes while it
        # boots; before that only the state is valid.
        if me["identity"]:
            fields.update(spid=me["spid"], name=me["name"], shortdesc=me["shortdesc"])
            if self.generation == "A":
                fields["spadcaps"] = me["spadcaps"]
        return layout.pack(**fields)

    @staticmethod
    def _me(kernel: dict, slot: int) -> dict | None:
        return kernel["slots"].get(str(slot))

    def _bug(self, message: str) -> None:
        # A separate append-only file, because the caller may hold the
        # kernel state's lock.
        with open(self._bugs_path, "a", encoding="utf-8") as stream:
            stream.write(message + "\n")
        raise KernelBug(f"kernel BUG: {message}")

    def _print(self, slot: int, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self._clock()))
        if self.generation == "A":
            line = f"{stamp} soo kernel: [ME:{slot}] {text}\n"
        else:
            line = f"{stamp} soo [ME:{slot}] {text}\n"
        with open(self.log_path(slot), "a", encoding="utf-8") as stream:
            stream.write(line)

    def _print_agency(self, text: str) -> None:
        # Agency lines without an ME prefix, which the driver must skip in the
        # shared file of generation A.
        if self.generation == "A":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self._clock()))
            with open(self.log_path(0), "a", encoding="utf-8") as stream:
                stream.write(f"{stamp} soo kernel: [soo:core] {text}\n")

    @contextmanager
    def _kernel(self, write: bool = False):
        """Lock and load the kernel state; save it again when C{write}."""
        with self._lock, open(self._lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                try:
                    with open(self._state_path, encoding="utf-8") as stream:
                        kernel = json.load(stream)
                except FileNotFoundError:
                    kernel = {"slots": {}}
                yield kernel
                if write:
                    temporary = f"{self._state_path}.{os.getpid()}.tmp"
                    with open(temporary, "w", encoding="utf-8") as stream:
                        json.dump(kernel, stream)
                    os.replace(temporary, self._state_path)
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _run_ticker(self) -> None:
        while not self._stop.wait(TICK_INTERVAL):
            try:
                self.tick()
            except Exception as error:  # keep ticking; the test sees the log
                print(f"fake kernel ticker failed: {error!r}")

"""QEMU agency: the qemu backend of the agency driver.

Every ME is a QEMU virtual machine of the C{virt} board that boots the
kernel node of the ME's FIT image. Slots 2 to 6, the memory pool and the
generation-A ME states are those of the simulated agency:

 - C{inject} extracts the kernel and starts QEMU paused (C{-S}): booting.
 - C{finalize} sends QMP C{cont} and reports living once the VM has written
   to its console (or after L{FIRST_OUTPUT_WAIT} seconds of running).
 - C{initialize} is QMP C{stop} (suspended); C{finalize} then sends C{cont}.
 - C{terminate} is QMP C{quit}, with SIGKILL after L{TERMINATE_GRACE}.
 - C{read_snapshot} writes the VM's migration stream to a file and wraps it
   as the single entry C{me} of a zip whose comment contains the metadata.
 - C{write_snapshot} starts a new QEMU that takes the stream as incoming
   migration (state migrating); C{finalize} waits for it and sends C{cont}.

The serial console is a chardev socket whose C{logfile} is the raw console
log; C{inject}, C{write_snapshot} and C{list} report the socket as C{serial}
(raw bytes, for console input), not as C{console} (the sim backend's JSON
protocol). A detached pump process per VM
(L{emiso.agency.qemu.pump}) stamps its lines into the container's console
log. VMs and pumps are detached processes recorded in slot files, so they
outlive the driver and the engine, and a new driver adopts them by pid and
QMP socket. The driver speaks QMP synchronously (L{emiso.agency.qemu.qmp}).

Like the sim backend, C{terminate} accepts every occupied state.
"""

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from contextlib import contextmanager
from typing import Callable

import attrs
from twisted.logger import Logger

from emiso.agency.files import (
    require_absolute_path,
    require_string,
    write_json_atomically,
)
from emiso.agency.protocol import OperationError
from emiso.agency.qemu import qmp
from emiso.agency.sim.agency import (
    CHUNK_SIZE,
    FIRST_SLOT,
    LAST_SLOT,
    MIB,
    POOL_CHUNKS,
    SLOTS,
    chunk_count,
    read_process_info,
    read_process_rss,
)
from emiso.errors import InvalidImage

logger = Logger()

SNAPSHOT_FORMAT = "emiso-qemu-snapshot"
SNAPSHOT_VERSION = 1
SNAPSHOT_ENTRY = "me"

#: The RAM base of QEMU's virt board (32-bit and 64-bit ARM).
RAM_BASE = 0x40000000
#: Without -kernel, the virt board puts its device tree in this many bytes
#: at the RAM base, so a FIT load address there cannot be honoured.
BOARD_DTB_SPACE = 0x100000


@attrs.frozen
class Architecture:
    """QEMU settings for the kernels of one FIT C{arch}."""

    binary: str
    cpu: str
    #: Offset from the RAM base at which C{-kernel} loads a raw image.
    kernel_offset: int
    #: The Debian package that provides C{binary}.
    package: str = "qemu-system-arm"


ARCHITECTURES = {
    "arm64": Architecture("qemu-system-aarch64", "cortex-a53", 0x80000),
    "aarch64": Architecture("qemu-system-aarch64", "cortex-a53", 0x80000),
    "arm": Architecture("qemu-system-arm", "cortex-a15", 0x10000),
}

# Seconds QEMU may take to open its QMP socket after it starts.
LOAD_TIMEOUT = 10.0
# Seconds finalize waits for the first console output before it reports
# living anyway (a kernel may print nothing).
FIRST_OUTPUT_WAIT = 10.0
# Seconds QEMU gets to exit after QMP quit before it is killed.
TERMINATE_GRACE = 3.0
# Seconds the console pump gets to copy the last lines after QEMU exits.
PUMP_DRAIN = 2.0
# Seconds a migration to or from a file may take.
MIGRATION_TIMEOUT = 50.0
# Seconds a single QMP command may take.
QMP_TIMEOUT = 5.0
# Seconds between two checks while an operation waits for a VM.
WAIT_INTERVAL = 0.02
# Maximum UNIX socket path length used, below the 108-byte sun_path limit.
MAX_SOCKET_PATH = 100


class QemuUnavailable(Exception):
    """The QEMU binary the backend needs is not installed."""


def find_qemu(binary: str = "qemu-system-aarch64") -> str:
    """
    Return the path of a QEMU system emulator.

    @raise QemuUnavailable: it is not on C{PATH}.
    """
    path = shutil.which(binary)
    if path is None:
        raise QemuUnavailable(
            f"backend qemu needs {binary}, which is not on PATH; on Debian "
            "install it with: apt-get install qemu-system-arm"
        )
    return path


def boot_arguments(kernel: str, arch: Architecture, load, entry) -> list[str]:
    """
    Return the QEMU options that load the raw kernel file C{kernel}.

    Without load and entry addresses, or when they are where C{-kernel} puts
    a raw image, C{-kernel} boots it. Other addresses are honoured with two
    generic loader devices: one copies the file to C{load}, one sets the
    CPU's program counter to C{entry}.

    @raise OperationError: C{invalid} when C{load} falls in the board's
        device tree area.
    """
    default = RAM_BASE + arch.kernel_offset
    if load is None and entry is None:
        return ["-kernel", kernel]
    load = default if load is None else load
    entry = load if entry is None else entry
    if load == default and entry == default:
        return ["-kernel", kernel]
    if RAM_BASE <= load < RAM_BASE + BOARD_DTB_SPACE:
        raise OperationError(
            "invalid",
            f"load address 0x{load:x} is in the first MiB of RAM, where QEMU's "
            f"virt board keeps its device tree; use 0x{default:x} (where "
            f"-kernel loads a raw image) or an address from 0x"
            f"{RAM_BASE + BOARD_DTB_SPACE:x}",
        )
    return [
        "-device",
        f"loader,file={_option_value(kernel)},addr=0x{load:x},force-raw=on",
        "-device",
        f"loader,addr=0x{entry:x},cpu-num=0",
    ]


def machine_arguments(
    arch: Architecture, size: int, qmp_path: str, console_path: str, raw_log: str
) -> list[str]:
    """Return the QEMU options shared by a booting and an incoming VM."""
    return [
        "-M",
        "virt",
        "-cpu",
        arch.cpu,
        "-smp",
        "1",
        "-m",
        f"{size // MIB}M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-chardev",
        f"socket,id=con,path={_option_value(console_path)},server=on,wait=off,"
        f"logfile={_option_value(raw_log)}",
        "-serial",
        "chardev:con",
        "-qmp",
        f"unix:{_option_value(qmp_path)},server=on,wait=off",
    ]


def _option_value(value: str) -> str:
    """Escape a value inside a QEMU option list (commas are doubled)."""
    return value.replace(",", ",,")


@attrs.define
class VmRecord:
    """One occupied slot as persisted in C{<state-dir>/slots/<slot>.json}."""

    slot: int
    state: str
    token: str
    image: str
    image_sha256: str
    name: str
    spid: int
    shortdesc: str
    size: int
    chunks: int
    log: str
    arch: str
    run_dir: str
    socket_dir: str
    pid: int | None = None
    start_time: int | None = None
    pump_pid: int | None = None
    pump_start_time: int | None = None
    # In-memory only: an operation that waits for this VM owns its state.
    busy: bool = attrs.field(default=False, metadata={"persist": False})

    @property
    def qmp_path(self) -> str:
        return os.path.join(self.socket_dir, "qmp.sock")

    @property
    def console_path(self) -> str:
        return os.path.join(self.socket_dir, "console.sock")

    @property
    def raw_log(self) -> str:
        return os.path.join(self.run_dir, "console.raw")

    @property
    def offset_file(self) -> str:
        return os.path.join(self.run_dir, "pump.offset")

    @property
    def stderr_path(self) -> str:
        return os.path.join(self.run_dir, "qemu.stderr")

    def to_json(self) -> dict:
        """Return the persisted fields as a JSON-compatible dict."""
        return attrs.asdict(
            self, filter=lambda field, value: field.metadata.get("persist", True)
        )

    @classmethod
    def from_json(cls, value: dict) -> "VmRecord":
        """Build a record from a dict written by L{to_json}."""
        return cls(**value)


def spawn_detached(argv: list[str], stderr_path: str | None = None) -> subprocess.Popen:
    """Start C{argv} in a new session, its output to C{stderr_path} or nowhere."""
    if stderr_path is None:
        return subprocess.Popen(
            argv,
            env=_child_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    with open(stderr_path, "ab") as stderr:
        return subprocess.Popen(
            argv,
            env=_child_environment(),
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
            close_fds=True,
        )


class QemuAgency:
    """
    The qemu agency: slots, memory pool and one QEMU process per ME.

    Operations run one at a time on the driver's main thread; L{poll} runs
    on the monitor thread. Both take C{self._lock}; an operation that waits
    for a VM marks its record busy and releases the lock.

    @param state_dir: directory for the slot files and the VMs' run folders.
    @param which: finds an executable on C{PATH} (like L{shutil.which}).
    """

    def __init__(
        self,
        state_dir: str,
        which: Callable[[str], str | None] = shutil.which,
        clock: Callable[[], float] = time.monotonic,
        spawn: Callable[..., subprocess.Popen] = spawn_detached,
    ) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self._slots_dir = os.path.join(self.state_dir, "slots")
        self._run_root = os.path.join(self.state_dir, "run")
        os.makedirs(self._slots_dir, exist_ok=True)
        os.makedirs(self._run_root, exist_ok=True)
        self._which = which
        self._clock = clock
        self._spawn = spawn
        self._lock = threading.RLock()
        self._slots: dict[int, VmRecord] = {}
        self._children: dict[int, subprocess.Popen] = {}
        self._pending_events: list[dict] = []
        self._load_slots()

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

    # Operations

    def hello(self) -> dict:
        """Describe the backend, its memory pool and the QEMU binaries found."""
        return {
            "backend": "qemu",
            "version": 1,
            "pid": os.getpid(),
            "pool_chunks": POOL_CHUNKS,
            "chunk_size": CHUNK_SIZE,
            "emulators": {
                arch: self._which(spec.binary)
                for arch, spec in ARCHITECTURES.items()
                if arch != "aarch64"
            },
        }

    def list_slots(self) -> dict:
        """Return the five slots; occupied ones carry the ME and its VM."""
        with self._lock:
            self._reconcile()
            return {"slots": [self._describe_slot(slot) for slot in SLOTS]}

    def inject(self, image: str, log: str, token: str = "") -> dict:
        """
        Start the VM of a FIT image's kernel in the first free slot, paused.

        @raise OperationError: C{invalid} for a bad image, an unknown
            architecture or a missing QEMU binary; C{no_slot}; C{no_memory};
            C{internal} when QEMU fails to start.
        """
        image = require_absolute_path(image, "image")
        log = require_absolute_path(log, "log")
        token = require_string(token, "token")
        fit, data = self._load_image(image)
        node = fit.kernel()
        arch = self._architecture(image, node.arch)
        binary = self._binary(arch)
        chunks = chunk_count(fit.me.domain_size)
        with self._lock:
            self._reconcile()
            slot = self._allocate_slot(chunks, fit.me.domain_size)
            record = self._new_record(
                slot=slot,
                state="booting",
                token=token,
                image=image,
                image_sha256=hashlib.sha256(data).hexdigest(),
                name=fit.me.me_name,
                spid=fit.me.spid,
                shortdesc=fit.me.me_shortdesc,
                chunks=chunks,
                log=log,
                arch=node.arch.lower(),
            )
            try:
                kernel = os.path.join(record.run_dir, "kernel.bin")
                with open(kernel, "wb") as stream:
                    stream.write(_kernel_data(image, data, node))
                boot = boot_arguments(kernel, arch, node.load, node.entry)
                self._start_vm(record, binary, arch, boot + ["-S"])
            except BaseException:
                shutil.rmtree(record.run_dir, ignore_errors=True)
                shutil.rmtree(record.socket_dir, ignore_errors=True)
                raise
        logger.info(
            "Injected {image} into slot {slot} as {name}: QEMU pid {pid}, paused",
            image=image,
            slot=slot,
            name=record.name,
            pid=record.pid,
        )
        return {
            "slot": slot,
            "state": "booting",
            "size": record.size,
            "serial": record.console_path,
        }

    def finalize(self, slot: int) -> dict:
        """
        Bring an ME to living: boot its VM (booting, preparing), resume it
        (suspended) or resume it once its incoming migration is complete
        (migrating).
        """
        with self._lock:
            record = self._occupied_slot(
                slot, "finalize", ("booting", "preparing", "suspended", "migrating")
            )
            if record.state == "suspended":
                self._qmp(record, "cont")
                return self._set_state(record, "living")
            if record.state == "booting":
                self._set_state(record, "preparing")
            record.busy = True
        try:
            if record.state == "migrating":
                self._wait_incoming(record)
            self._qmp(record, "cont")
            if record.state == "preparing":
                self._wait_first_output(record)
        finally:
            record.busy = False
        with self._lock:
            self._require_current(record, "finalize")
            return self._set_state(record, "living")

    def initialize(self, slot: int) -> dict:
        """Suspend a living ME: its VM stops (QMP C{stop})."""
        with self._lock:
            record = self._occupied_slot(slot, "initialize", ("living",))
            self._qmp(record, "stop")
            return self._set_state(record, "suspended")

    def terminate(self, slot: int) -> dict:
        """
        Stop the VM of a slot and free the slot: QMP C{quit}, then SIGKILL
        after L{TERMINATE_GRACE} seconds.
        """
        with self._lock:
            record = self._occupied_slot(
                slot,
                "terminate",
                ("booting", "preparing", "living", "suspended", "migrating"),
            )
            record.busy = True
        try:
            self._qmp(record, "quit", timeout=TERMINATE_GRACE)
        except OperationError as error:
            logger.warn(
                "QMP quit failed for slot {slot}: {error}", slot=slot, error=error
            )
        exit_status = self._wait_for_exit(record, TERMINATE_GRACE)
        if exit_status is None:
            logger.warn(
                "QEMU of slot {slot} (pid {pid}) did not quit; killing it",
                slot=slot,
                pid=record.pid,
            )
            self._signal(record, signal.SIGKILL)
            exit_status = self._wait_for_exit(record, TERMINATE_GRACE)
        if exit_status is None:
            raise OperationError(
                "internal", f"QEMU process {record.pid} of slot {slot} survived SIGKILL"
            )
        self._wait_for_pump(record)
        with self._lock:
            self._free_slot(record)
        logger.info(
            "Terminated the VM in slot {slot}, exit status {status}",
            slot=slot,
            status=exit_status,
        )
        return {
            "state": "dead",
            "exit_status": exit_status if exit_status >= 0 else None,
        }

    def read_snapshot(self, slot: int, path: str) -> dict:
        """
        Save a suspended VM to a zip file: entry C{me} is QEMU's migration
        stream, the zip comment is JSON metadata. The VM stays suspended.
        """
        path = require_absolute_path(path, "path")
        if not os.path.isdir(os.path.dirname(path)):
            raise OperationError(
                "invalid", f"directory of snapshot path {path} does not exist"
            )
        with self._lock:
            record = self._occupied_slot(slot, "read_snapshot", ("suspended",))
            record.busy = True
        stream_path = os.path.join(record.run_dir, "outgoing.migration")
        try:
            self._migrate_to_file(record, stream_path)
            metadata = {
                "format": SNAPSHOT_FORMAT,
                "version": SNAPSHOT_VERSION,
                "arch": record.arch,
                "machine": "virt",
                "size": record.size,
                "image": record.image,
                "image_sha256": record.image_sha256,
                "name": record.name,
                "spid": record.spid,
                "shortdesc": record.shortdesc,
            }
            temporary = f"{path}.{os.getpid()}.tmp"
            with zipfile.ZipFile(
                temporary, "w", compression=zipfile.ZIP_DEFLATED
            ) as archive:
                archive.comment = json.dumps(metadata).encode()
                with archive.open(SNAPSHOT_ENTRY, "w", force_zip64=True) as entry:
                    with open(stream_path, "rb") as source:
                        shutil.copyfileobj(source, entry, 1 << 20)
            os.replace(temporary, path)
        finally:
            record.busy = False
            _unlink_quietly(stream_path)
        return {"size": os.path.getsize(path)}

    def write_snapshot(
        self, path: str, log: str, token: str = "", image: str | None = None
    ) -> dict:
        """
        Start a VM from a snapshot in the first free slot, in state
        migrating; finalize resumes it where the snapshot stopped.

        The migration stream contains the VM's whole memory, so the image is
        not read again; when C{image} is given (the engine's copy of it), its
        SHA-256 must be the one the snapshot records, and the slot names it.

        @raise OperationError: C{invalid} when the zip is not a qemu snapshot
            or C{image} does not match it, C{no_slot}, C{no_memory},
            C{internal} when QEMU fails to start.
        """
        path = require_absolute_path(path, "path")
        log = require_absolute_path(log, "log")
        token = require_string(token, "token")
        metadata = _read_snapshot_metadata(path)
        if image is not None:
            image = require_absolute_path(image, "image")
            digest = _sha256_file(image)
            if digest != metadata["image_sha256"]:
                raise OperationError(
                    "invalid",
                    f"snapshot {path} was taken from an image with sha256 "
                    f"{metadata['image_sha256']}, but {image} has sha256 {digest}",
                )
            metadata["image"] = image
        arch = self._architecture(path, metadata["arch"])
        binary = self._binary(arch)
        chunks = metadata["size"] // CHUNK_SIZE
        with self._lock:
            self._reconcile()
            slot = self._allocate_slot(chunks, metadata["size"])
            record = self._new_record(
                slot=slot,
                state="migrating",
                token=token,
                image=metadata["image"],
                image_sha256=metadata["image_sha256"],
                name=metadata["name"],
                spid=metadata["spid"],
                shortdesc=metadata.get("shortdesc", ""),
                chunks=chunks,
                log=log,
                arch=metadata["arch"],
            )
            incoming = os.path.join(record.run_dir, "incoming.migration")
            try:
                with zipfile.ZipFile(path) as archive:
                    with archive.open(SNAPSHOT_ENTRY) as source:
                        with open(incoming, "wb") as target:
                            shutil.copyfileobj(source, target, 1 << 20)
                extra = ["-S", "-incoming", f"exec:cat {shlex.quote(incoming)}"]
                self._start_vm(record, binary, arch, extra)
            except (zipfile.BadZipFile, OSError) as error:
                shutil.rmtree(record.run_dir, ignore_errors=True)
                shutil.rmtree(record.socket_dir, ignore_errors=True)
                raise OperationError(
                    "invalid", f"cannot read snapshot {path}: {error}"
                ) from None
            except BaseException:
                shutil.rmtree(record.run_dir, ignore_errors=True)
                shutil.rmtree(record.socket_dir, ignore_errors=True)
                raise
        logger.info(
            "Restoring snapshot {path} into slot {slot}: QEMU pid {pid}",
            path=path,
            slot=slot,
            pid=record.pid,
        )
        return {"slot": slot, "state": "migrating", "serial": record.console_path}

    def poll(self) -> list[dict]:
        """
        Check the VMs and their console pumps; return the C{me_state} events
        since the last call (VMs that exited without being asked).
        """
        with self._lock:
            self._reconcile()
            events, self._pending_events = self._pending_events, []
        return events

    # Images and records

    def _load_image(self, image: str):
        from emiso.engine.fit import parse_fit

        try:
            with open(image, "rb") as stream:
                data = stream.read()
            fit = parse_fit(data)
        except InvalidImage as error:
            raise OperationError("invalid", f"{image}: {error}") from None
        except OSError as error:
            raise OperationError(
                "invalid", f"cannot read image {image}: {error}"
            ) from None
        if fit.me is None:
            raise OperationError("invalid", f"{image}: the image has no /ME node")
        if fit.me.domain_size <= 0:
            raise OperationError(
                "invalid",
                f"{image}: domain-size must be positive, got {fit.me.domain_size}",
            )
        node = fit.kernel()
        if node is None:
            raise OperationError(
                "invalid", f"{image}: no image node of type kernel, ME or guest"
            )
        if node.compression.lower() not in ("", "none"):
            raise OperationError(
                "invalid",
                f"{image}: kernel node {node.name} is compressed "
                f"({node.compression}); the qemu agency boots uncompressed kernels",
            )
        return fit, data

    def _architecture(self, subject: str, name: str) -> Architecture:
        arch = ARCHITECTURES.get((name or "").lower())
        if arch is None:
            raise OperationError(
                "invalid",
                f"{subject}: architecture {name!r} cannot run on the qemu agency "
                f"(it runs {', '.join(sorted(ARCHITECTURES))})",
            )
        return arch

    def _binary(self, arch: Architecture) -> str:
        binary = self._which(arch.binary)
        if binary is None:
            raise OperationError(
                "invalid",
                f"{arch.binary} is not installed; on Debian install it with: "
                f"apt-get install {arch.package}",
            )
        return binary

    def _new_record(self, slot: int, chunks: int, **fields) -> VmRecord:
        instance = f"{slot}-{os.urandom(4).hex()}"
        run_dir = os.path.join(self._run_root, instance)
        socket_dir = run_dir
        if len(os.path.join(run_dir, "console.sock")) > MAX_SOCKET_PATH:
            digest = hashlib.sha256(self.state_dir.encode()).hexdigest()[:12]
            socket_dir = os.path.join(
                tempfile.gettempdir(), f"emiso-qemu-{os.getuid()}", digest, instance
            )
        os.makedirs(run_dir)
        os.makedirs(socket_dir, mode=0o700, exist_ok=True)
        return VmRecord(
            slot=slot,
            chunks=chunks,
            size=chunks * CHUNK_SIZE,
            run_dir=run_dir,
            socket_dir=socket_dir,
            **fields,
        )

    def _load_slots(self) -> None:
        for entry in sorted(os.listdir(self._slots_dir)):
            if not entry.endswith(".json"):
                continue
            path = os.path.join(self._slots_dir, entry)
            try:
                with open(path, encoding="utf-8") as stream:
                    record = VmRecord.from_json(json.load(stream))
            except (OSError, ValueError, TypeError) as error:
                logger.error(
                    "Ignoring unreadable slot file {path}: {error}",
                    path=path,
                    error=error,
                )
                continue
            self._slots[record.slot] = record
            logger.info(
                "Found {state} VM {name} in slot {slot} (QEMU pid {pid})",
                state=record.state,
                name=record.name,
                slot=record.slot,
                pid=record.pid,
            )
        in_use = {os.path.basename(record.run_dir) for record in self._slots.values()}
        for entry in os.listdir(self._run_root):
            if entry not in in_use:
                shutil.rmtree(os.path.join(self._run_root, entry), ignore_errors=True)

    def _save_slot(self, record: VmRecord) -> None:
        path = os.path.join(self._slots_dir, f"{record.slot}.json")
        write_json_atomically(path, record.to_json())

    def _set_state(self, record: VmRecord, state: str) -> dict:
        record.state = state
        self._save_slot(record)
        return {"state": state}

    def _free_slot(self, record: VmRecord) -> None:
        if self._slots.get(record.slot) is record:
            del self._slots[record.slot]
            _unlink_quietly(os.path.join(self._slots_dir, f"{record.slot}.json"))
        self._children.pop(record.pid, None)
        self._children.pop(record.pump_pid, None)
        shutil.rmtree(record.run_dir, ignore_errors=True)
        if record.socket_dir != record.run_dir:
            shutil.rmtree(record.socket_dir, ignore_errors=True)

    def _allocate_slot(self, chunks: int, requested_size: int) -> int:
        free_slots = [slot for slot in SLOTS if slot not in self._slots]
        if not free_slots:
            raise OperationError(
                "no_slot",
                f"all ME slots ({FIRST_SLOT} to {LAST_SLOT}) are occupied; "
                "terminate an ME to free one",
            )
        used = sum(record.chunks for record in self._slots.values())
        free = POOL_CHUNKS - used
        if chunks > free:
            raise OperationError(
                "no_memory",
                f"the ME needs {chunks * CHUNK_SIZE // MIB} MiB ({chunks} chunks of "
                f"2 MiB for a domain size of {requested_size} bytes), but only "
                f"{free * CHUNK_SIZE // MIB} MiB ({free} of {POOL_CHUNKS} chunks) "
                "are free",
            )
        return free_slots[0]

    def _occupied_slot(
        self, slot, operation: str, allowed: tuple[str, ...]
    ) -> VmRecord:
        if isinstance(slot, bool) or not isinstance(slot, int):
            raise OperationError("invalid", f"slot must be an integer, got {slot!r}")
        if slot not in SLOTS:
            raise OperationError(
                "invalid", f"slot {slot} is out of range ({FIRST_SLOT} to {LAST_SLOT})"
            )
        self._reconcile()
        record = self._slots.get(slot)
        if record is None:
            raise OperationError(
                "not_found", f"slot {slot} is empty (dead): no ME to {operation}"
            )
        if record.busy:
            raise OperationError(
                "bad_state", f"slot {slot} is busy with another operation"
            )
        if record.state not in allowed:
            raise OperationError(
                "bad_state",
                f"slot {slot} is {record.state}: cannot {operation} it "
                f"({operation} needs {' or '.join(allowed)})",
            )
        return record

    def _require_current(self, record: VmRecord, operation: str) -> None:
        self._reconcile()
        if self._slots.get(record.slot) is not record:
            raise OperationError(
                "internal",
                f"the VM of {record.name} in slot {record.slot} exited during "
                f"{operation}; {self._stderr_tail(record)}",
            )

    # QEMU processes

    def _start_vm(
        self, record: VmRecord, binary: str, arch: Architecture, extra: list[str]
    ) -> None:
        os.makedirs(os.path.dirname(record.log), exist_ok=True)
        argv = [binary, "-name", f"emiso-slot{record.slot}"]
        argv += machine_arguments(
            arch, record.size, record.qmp_path, record.console_path, record.raw_log
        )
        argv += extra
        process = self._spawn(argv, record.stderr_path)
        self._children[process.pid] = process
        record.pid = process.pid
        info = read_process_info(process.pid)
        record.start_time = info.start_time if info is not None else None
        try:
            self._wait_for_qmp(record)
        except OperationError:
            self._signal(record, signal.SIGKILL)
            self._wait_for_exit(record, TERMINATE_GRACE)
            self._children.pop(process.pid, None)
            raise
        self._slots[record.slot] = record
        self._start_pump(record)
        self._save_slot(record)

    def _start_pump(self, record: VmRecord) -> None:
        argv = [
            sys.executable,
            "-m",
            "emiso.agency.qemu.pump",
            "--raw",
            record.raw_log,
            "--log",
            record.log,
            "--offset-file",
            record.offset_file,
            "--pid",
            str(record.pid),
        ]
        if record.start_time is not None:
            argv += ["--start-time", str(record.start_time)]
        process = self._spawn(argv, None)
        self._children[process.pid] = process
        record.pump_pid = process.pid
        info = read_process_info(process.pid)
        record.pump_start_time = info.start_time if info is not None else None

    def _wait_for_qmp(self, record: VmRecord) -> None:
        deadline = self._clock() + LOAD_TIMEOUT
        while True:
            if _process_gone(self._children, record.pid, record.start_time):
                raise OperationError(
                    "internal",
                    f"QEMU for slot {record.slot} exited at start-up; "
                    f"{self._stderr_tail(record)}",
                )
            if os.path.exists(record.qmp_path):
                try:
                    connection = qmp.connect(record.qmp_path, QMP_TIMEOUT)
                except qmp.QmpError:
                    pass
                else:
                    connection.close()
                    return
            if self._clock() > deadline:
                raise OperationError(
                    "internal",
                    f"QEMU for slot {record.slot} did not open its QMP socket "
                    f"within {LOAD_TIMEOUT} s",
                )
            time.sleep(WAIT_INTERVAL)

    @contextmanager
    def _session(self, record: VmRecord, timeout: float = QMP_TIMEOUT):
        try:
            connection = qmp.connect(record.qmp_path, timeout)
        except qmp.QmpError as error:
            raise OperationError("internal", f"slot {record.slot}: {error}") from None
        try:
            yield connection
        except qmp.QmpError as error:
            raise OperationError("internal", f"slot {record.slot}: {error}") from None
        finally:
            connection.close()

    def _qmp(self, record: VmRecord, command: str, arguments=None, timeout=QMP_TIMEOUT):
        with self._session(record, timeout) as connection:
            return connection.execute(command, arguments, timeout)

    def _wait_first_output(self, record: VmRecord) -> None:
        deadline = self._clock() + FIRST_OUTPUT_WAIT
        while self._clock() < deadline:
            if _process_gone(self._children, record.pid, record.start_time):
                return
            try:
                if os.path.getsize(record.raw_log) > 0:
                    return
            except FileNotFoundError:
                pass
            time.sleep(WAIT_INTERVAL)
        logger.info(
            "VM in slot {slot} printed nothing in {seconds} s; reporting it living",
            slot=record.slot,
            seconds=FIRST_OUTPUT_WAIT,
        )

    def _wait_incoming(self, record: VmRecord) -> None:
        deadline = self._clock() + MIGRATION_TIMEOUT
        with self._session(record) as connection:
            while True:
                status = connection.execute("query-status")
                if status.get("status") != "inmigrate":
                    break
                if self._clock() > deadline:
                    raise OperationError(
                        "internal",
                        f"the incoming migration of slot {record.slot} did not "
                        f"finish within {MIGRATION_TIMEOUT} s",
                    )
                time.sleep(WAIT_INTERVAL)
        if status.get("status") not in ("paused", "prelaunch", "running"):
            raise OperationError(
                "internal",
                f"the incoming migration of slot {record.slot} ended in state "
                f"{status.get('status')!r}",
            )

    def _migrate_to_file(self, record: VmRecord, stream_path: str) -> None:
        deadline = self._clock() + MIGRATION_TIMEOUT
        uri = f"exec:cat > {shlex.quote(stream_path)}"
        with self._session(record) as connection:
            connection.execute("migrate", {"uri": uri})
            while True:
                info = connection.execute("query-migrate")
                status = info.get("status")
                if status == "completed":
                    return
                if status in ("failed", "cancelled"):
                    raise OperationError(
                        "internal",
                        f"saving the VM of slot {record.slot} failed: "
                        f"{info.get('error-desc', status)}",
                    )
                if self._clock() > deadline:
                    connection.execute("migrate_cancel")
                    raise OperationError(
                        "internal",
                        f"saving the VM of slot {record.slot} did not finish "
                        f"within {MIGRATION_TIMEOUT} s",
                    )
                time.sleep(WAIT_INTERVAL)

    def _wait_for_exit(self, record: VmRecord, timeout: float) -> int | None:
        deadline = self._clock() + timeout
        while True:
            status = _exit_status_if_gone(self._children, record.pid, record.start_time)
            if status is not None:
                return status
            if self._clock() > deadline:
                return None
            time.sleep(WAIT_INTERVAL)

    def _wait_for_pump(self, record: VmRecord) -> None:
        if record.pump_pid is None:
            return
        deadline = self._clock() + PUMP_DRAIN
        while not _process_gone(
            self._children, record.pump_pid, record.pump_start_time
        ):
            if self._clock() > deadline:
                logger.warn(
                    "Console pump {pid} of slot {slot} did not finish; killing it",
                    pid=record.pump_pid,
                    slot=record.slot,
                )
                _kill(record.pump_pid)
                return
            time.sleep(WAIT_INTERVAL)

    def _signal(self, record: VmRecord, signum: int) -> None:
        if not _process_gone(self._children, record.pid, record.start_time):
            _kill(record.pid, signum)

    def _stderr_tail(self, record: VmRecord) -> str:
        try:
            with open(record.stderr_path, "rb") as stream:
                stream.seek(0, os.SEEK_END)
                stream.seek(max(0, stream.tell() - 600))
                text = stream.read().decode("utf-8", errors="replace").strip()
        except OSError:
            text = ""
        return f"QEMU said: {text}" if text else "QEMU printed no error"

    # Monitor

    def _reconcile(self) -> None:
        """Free the slots whose VM exited, queue their events, restart pumps."""
        for record in list(self._slots.values()):
            if record.busy:
                continue
            exit_status = _exit_status_if_gone(
                self._children, record.pid, record.start_time
            )
            if exit_status is not None:
                self._record_exit(record, exit_status)
            elif _process_gone(self._children, record.pump_pid, record.pump_start_time):
                logger.warn(
                    "Console pump of slot {slot} is gone; starting a new one",
                    slot=record.slot,
                )
                self._children.pop(record.pump_pid, None)
                self._start_pump(record)
                self._save_slot(record)

    def _record_exit(self, record: VmRecord, exit_status: int) -> None:
        common = {"event": "me_state", "slot": record.slot, "token": record.token}
        reported = exit_status if exit_status >= 0 else None
        previous = record.state
        if exit_status == 0:
            reason = "the VM shut itself down (QEMU exited with status 0)"
            self._pending_events.append(
                dict(
                    common,
                    state="terminated",
                    previous=previous,
                    reason=reason,
                    exit_status=reported,
                )
            )
            previous = "terminated"
        else:
            reason = f"{_describe_exit(exit_status)}; {self._stderr_tail(record)}"
        self._pending_events.append(
            dict(
                common,
                state="dead",
                previous=previous,
                reason=reason,
                exit_status=reported,
            )
        )
        logger.info(
            "VM {name} in slot {slot} exited with status {status}: {reason}",
            name=record.name,
            slot=record.slot,
            status=exit_status,
            reason=reason,
        )
        self._free_slot(record)

    def _describe_slot(self, slot: int) -> dict:
        record = self._slots.get(slot)
        if record is None:
            return {"slot": slot, "state": "dead"}
        info = read_process_info(record.pid)
        return {
            "slot": slot,
            "state": record.state,
            "spid": record.spid,
            "name": record.name,
            "shortdesc": record.shortdesc,
            "size": record.size,
            "image": record.image,
            "token": record.token,
            "pid": record.pid,
            "log": record.log,
            # A raw UART socket, not the JSON console of emiso.engine.console.
            "serial": record.console_path,
            "cpu_seconds": info.cpu_seconds if info is not None else None,
            "rss": read_process_rss(record.pid),
        }


def _kernel_data(image: str, data: bytes, node) -> bytes:
    from emiso.engine.fit import image_data

    try:
        kernel = image_data(data, node.name)
    except InvalidImage as error:
        raise OperationError("invalid", f"{image}: {error}") from None
    if not kernel:
        raise OperationError("invalid", f"{image}: kernel node {node.name} is empty")
    return kernel


def _read_snapshot_metadata(path: str) -> dict:
    """Read and check the zip comment of a qemu snapshot."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            comment = archive.comment
    except (zipfile.BadZipFile, OSError) as error:
        raise OperationError(
            "invalid", f"cannot read snapshot {path}: {error}"
        ) from None
    if names != [SNAPSHOT_ENTRY]:
        raise OperationError(
            "invalid",
            f"snapshot {path} must contain exactly one entry named "
            f"{SNAPSHOT_ENTRY!r}, found {names}",
        )
    try:
        metadata = json.loads(comment.decode("utf-8")) if comment else None
    except ValueError:
        metadata = None
    if (
        not isinstance(metadata, dict)
        or metadata.get("format") != SNAPSHOT_FORMAT
        or metadata.get("version") != SNAPSHOT_VERSION
    ):
        raise OperationError(
            "invalid",
            f"snapshot {path} is not a {SNAPSHOT_FORMAT} version "
            f"{SNAPSHOT_VERSION} snapshot (it may come from another agency backend)",
        )
    expected_types = {
        "arch": str,
        "image": str,
        "image_sha256": str,
        "name": str,
        "spid": int,
        "size": int,
    }
    for key, expected in expected_types.items():
        value = metadata.get(key)
        if isinstance(value, bool) or not isinstance(value, expected):
            raise OperationError(
                "invalid",
                f"snapshot {path}: field {key!r} is missing or invalid: {value!r}",
            )
    size = metadata["size"]
    if size <= 0 or size % CHUNK_SIZE or chunk_count(size) != size // CHUNK_SIZE:
        raise OperationError(
            "invalid",
            f"snapshot {path}: size {size} is not a power-of-two number "
            "of 2 MiB chunks",
        )
    return metadata


def _exit_status_if_gone(children: dict, pid: int | None, start_time) -> int | None:
    """
    Return the exit status of C{pid} if it has exited, else None.

    A process started by another driver is not our child, so its status is
    unknown: -1.
    """
    if pid is None:
        return -1
    child = children.get(pid)
    if child is not None:
        returncode = child.poll()
        if returncode is None:
            return None
        return 128 - returncode if returncode < 0 else returncode
    info = read_process_info(pid)
    alive = (
        info is not None
        and info.state not in ("Z", "X")
        and (start_time is None or info.start_time == start_time)
    )
    return None if alive else -1


def _process_gone(children: dict, pid: int | None, start_time) -> bool:
    return _exit_status_if_gone(children, pid, start_time) is not None


def _kill(pid: int, signum: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe_exit(exit_status: int) -> str:
    if exit_status > 128:
        try:
            name = signal.Signals(exit_status - 128).name
        except ValueError:
            name = f"signal {exit_status - 128}"
        return f"QEMU was killed by {name}"
    if exit_status < 0:
        return "QEMU disappeared and its exit status is unknown"
    return f"QEMU exited with status {exit_status}"


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise OperationError("invalid", f"cannot read image {path}: {error}") from None
    return digest.hexdigest()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _child_environment() -> dict[str, str]:
    """Return the environment for a pump, with this package on C{PYTHONPATH}."""
    package_root = os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    )
    environment = dict(os.environ)
    existing = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = (
        package_root if not existing else package_root + os.pathsep + existing
    )
    return environment

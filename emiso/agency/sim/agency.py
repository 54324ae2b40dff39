"""Simulated smart object: the sim backend of the agency driver.

L{SimAgency} follows the generation-A ME state machine of the SOO agency
(booting, preparing, living, suspended, migrating, terminated, dead) for
slots 2 to 6 and a pool of 256 memory chunks of 2 MiB. Each ME is a
detached process (L{emiso.agency.sim.me}) that outlives the driver. The
slots are persisted as one JSON file per occupied slot, so a new driver
finds the running MEs again.

Each ME serves an interactive console on a Unix socket in
C{<state-dir>/run/<slot>.console} (see L{emiso.agency.sim.me}); C{inject},
C{write_snapshot} and C{list} return its path as C{console}.

Deviation from generation A: C{terminate} accepts every occupied state
(the kernel's force-terminate acts only on living and terminated MEs), so
the engine can always stop a container.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from typing import Callable

import attrs
from twisted.logger import Logger

from emiso.agency.files import (
    require_absolute_path,
    require_string,
    write_json_atomically,
)
from emiso.agency.protocol import OperationError
from emiso.errors import InvalidImage

logger = Logger()

MIB = 1024 * 1024
CHUNK_SIZE = 2 * MIB
POOL_CHUNKS = 256
FIRST_SLOT = 2
LAST_SLOT = 6
SLOTS = tuple(range(FIRST_SLOT, LAST_SLOT + 1))

SNAPSHOT_FORMAT = "emiso-sim-snapshot"
SNAPSHOT_VERSION = 1
SNAPSHOT_ENTRY = "me"

DEFAULT_BOOT_DELAY_MS = 500
DEFAULT_HEARTBEAT_MS = 1000
# Seconds the ME gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE = 2.0
# Seconds an ME process may take to start and stop itself (Python start-up).
LOAD_TIMEOUT = 10.0
# Seconds between two checks while an operation waits for an ME.
WAIT_INTERVAL = 0.01

_HANGABLE_OPERATIONS = ("finalize", "initialize", "terminate")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@attrs.define
class SlotRecord:
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
    status_path: str
    pid: int | None = None
    start_time: int | None = None
    resume_path: str | None = None
    console: str | None = None
    hang: str | None = None
    refuse_migration: bool = False
    # In-memory only: an operation that waits for this ME owns its state.
    busy: bool = attrs.field(default=False, metadata={"persist": False})

    def to_json(self) -> dict:
        """Return the persisted fields as a JSON-compatible dict."""
        return attrs.asdict(
            self, filter=lambda field, value: field.metadata.get("persist", True)
        )

    @classmethod
    def from_json(cls, value: dict) -> "SlotRecord":
        """Build a record from a dict written by L{to_json}."""
        return cls(**value)


@attrs.frozen
class ProcessInfo:
    """Fields of C{/proc/<pid>/stat} the agency needs."""

    state: str
    start_time: int
    cpu_seconds: float


@attrs.frozen
class _Faults:
    boot_delay_ms: int
    heartbeat_ms: int
    crash_after_ms: int | None
    exit_after_ms: int | None
    refuse_migration: bool
    hang: str | None


def chunk_count(domain_size: int) -> int:
    """
    Return the number of 2 MiB chunks an ME of C{domain_size} bytes gets.

    The size is rounded up to whole chunks, then up to a power of two, so
    an ME never gets less memory than its device tree requests.
    """
    needed = max(1, -(-domain_size // CHUNK_SIZE))
    return 1 << (needed - 1).bit_length()


def read_process_info(pid: int) -> ProcessInfo | None:
    """Read C{/proc/<pid>/stat}; return None when the process does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stream:
            text = stream.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return ProcessInfo(
        state=fields[0],
        start_time=int(fields[19]),
        cpu_seconds=(utime + stime) / _CLOCK_TICKS,
    )


def read_process_rss(pid: int) -> int | None:
    """Return the resident set size of C{pid} in bytes (VmRSS), or None."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def spawn_detached(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start C{argv} in a new session with its standard streams on /dev/null."""
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def block_forever(operation: str) -> None:
    """Block the calling thread forever, like a kernel call that never returns."""
    threading.Event().wait()


def _read_default_fit(path: str):
    from emiso.engine.fit import read_fit_file

    return read_fit_file(path)


class SimAgency:
    """
    The simulated agency: slots, memory pool and ME processes.

    Operations run one at a time on the driver's main thread; L{poll} runs
    on the monitor thread. Both take C{self._lock}, which operations release
    while they wait for an ME.

    @param state_dir: directory for the slot files and the ME status files.
    @param clock: monotonic clock in seconds, used for bounded waits.
    @param spawn: starts an ME process from C{(argv, env)} and returns an
        object with C{pid} and C{poll()} like L{subprocess.Popen}.
    @param read_fit: reads a FIT file into an L{emiso.engine.fit.FitImage}.
    @param hang: called with the operation name when an image requests
        that operation to hang (C{emiso,sim-hang}); the default never returns.
    """

    def __init__(
        self,
        state_dir: str,
        clock: Callable[[], float] = time.monotonic,
        spawn: Callable[[list[str], dict[str, str]], subprocess.Popen] = spawn_detached,
        read_fit: Callable = _read_default_fit,
        hang: Callable[[str], None] = block_forever,
    ) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self._slots_dir = os.path.join(self.state_dir, "slots")
        self._run_dir = os.path.join(self.state_dir, "run")
        os.makedirs(self._slots_dir, exist_ok=True)
        os.makedirs(self._run_dir, exist_ok=True)
        self._clock = clock
        self._spawn = spawn
        self._read_fit = read_fit
        self._hang = hang
        self._lock = threading.RLock()
        self._slots: dict[int, SlotRecord] = {}
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
        """Describe the backend and its memory pool."""
        return {
            "backend": "sim",
            "version": 1,
            "pid": os.getpid(),
            "pool_chunks": POOL_CHUNKS,
            "chunk_size": CHUNK_SIZE,
        }

    def list_slots(self) -> dict:
        """Return the five slots; occupied ones carry the ME and its process."""
        with self._lock:
            self._reconcile()
            return {"slots": [self._describe_slot(slot) for slot in SLOTS]}

    def inject(self, image: str, log: str, token: str = "") -> dict:
        """
        Load the ME of a FIT image into the first free slot, not running.

        @raise OperationError: C{invalid} for a bad image or path, C{no_slot},
            C{no_memory}, or C{internal} when the ME process fails to start.
        """
        image = require_absolute_path(image, "image")
        log = require_absolute_path(log, "log")
        token = require_string(token, "token")
        fit, faults, digest = self._load_image(image)
        chunks = chunk_count(fit.me.domain_size)
        with self._lock:
            self._reconcile()
            slot = self._allocate_slot(chunks, fit.me.domain_size)
            record = SlotRecord(
                slot=slot,
                state="booting",
                token=token,
                image=image,
                image_sha256=digest,
                name=fit.me.me_name,
                spid=fit.me.spid,
                shortdesc=fit.me.me_shortdesc,
                size=chunks * CHUNK_SIZE,
                chunks=chunks,
                log=log,
                status_path=os.path.join(self._run_dir, f"{slot}.status.json"),
                hang=faults.hang,
                refuse_migration=faults.refuse_migration,
            )
            self._start_me(record, faults)
        logger.info(
            "Injected {image} into slot {slot} as {name} (pid {pid})",
            image=image,
            slot=slot,
            name=record.name,
            pid=record.pid,
        )
        return {
            "slot": slot,
            "state": "booting",
            "size": record.size,
            "console": record.console,
        }

    def finalize(self, slot: int) -> dict:
        """
        Bring an ME to living: boot it (booting, preparing), resume it
        (suspended) or start it from its snapshot (migrating).

        Blocks until the ME reports living, like the kernel call.
        """
        with self._lock:
            record = self._occupied_slot(
                slot, "finalize", ("booting", "preparing", "suspended", "migrating")
            )
        self._maybe_hang(record, "finalize")
        with self._lock:
            self._require_current(record, "finalize")
            if record.state == "suspended":
                self._signal(record, signal.SIGCONT)
                record.state = "living"
                self._save_slot(record)
                return {"state": "living"}
            if record.state == "booting":
                record.state = "preparing"
                self._save_slot(record)
            record.busy = True
            self._signal(record, signal.SIGCONT)
        try:
            self._wait_until_living(record)
        finally:
            record.busy = False
        return {"state": "living"}

    def initialize(self, slot: int) -> dict:
        """
        Suspend a living ME: its process is frozen with SIGSTOP.

        @raise OperationError: C{refused} when the image refuses migration.
        """
        with self._lock:
            record = self._occupied_slot(slot, "initialize", ("living",))
        self._maybe_hang(record, "initialize")
        with self._lock:
            self._require_current(record, "initialize")
            if record.refuse_migration:
                raise OperationError(
                    "refused",
                    f"ME {record.name} in slot {slot} refused to be suspended "
                    "(its image sets emiso,sim-refuse-migration)",
                )
            self._signal(record, signal.SIGSTOP)
            self._wait_until_stopped(record)
            record.state = "suspended"
            self._save_slot(record)
        return {"state": "suspended"}

    def terminate(self, slot: int) -> dict:
        """
        Stop the ME of a slot and free the slot.

        The ME gets SIGTERM (and SIGCONT if frozen) and TERMINATE_GRACE
        seconds to exit, then SIGKILL.
        """
        with self._lock:
            record = self._occupied_slot(
                slot,
                "terminate",
                ("booting", "preparing", "living", "suspended", "migrating"),
            )
        self._maybe_hang(record, "terminate")
        with self._lock:
            self._require_current(record, "terminate")
            record.busy = True
            self._signal(record, signal.SIGTERM)
            self._signal(record, signal.SIGCONT)
        exit_status = self._wait_for_exit(record, TERMINATE_GRACE)
        if exit_status is None:
            logger.warn(
                "ME in slot {slot} (pid {pid}) ignored SIGTERM; killing it",
                slot=slot,
                pid=record.pid,
            )
            self._signal(record, signal.SIGKILL)
            exit_status = self._wait_for_exit(record, TERMINATE_GRACE)
        if exit_status is None:
            raise OperationError(
                "internal", f"ME process {record.pid} of slot {slot} survived SIGKILL"
            )
        with self._lock:
            self._free_slot(record)
        logger.info(
            "Terminated the ME in slot {slot}, exit status {status}",
            slot=slot,
            status=exit_status,
        )
        return {
            "state": "dead",
            "exit_status": exit_status if exit_status >= 0 else None,
        }

    def read_snapshot(self, slot: int, path: str) -> dict:
        """
        Save the context of a suspended ME to a zip file with one entry C{me}.

        The ME stays suspended; finalize resumes it.
        """
        path = require_absolute_path(path, "path")
        with self._lock:
            record = self._occupied_slot(slot, "read_snapshot", ("suspended",))
            status = self._read_status(record) or {}
            context = {
                "format": SNAPSHOT_FORMAT,
                "version": SNAPSHOT_VERSION,
                "image": record.image,
                "image_sha256": record.image_sha256,
                "name": record.name,
                "spid": record.spid,
                "shortdesc": record.shortdesc,
                "size": record.size,
                "counter": int(status.get("counter", 0)),
                "uptime": float(status.get("uptime", 0.0)),
            }
        if not os.path.isdir(os.path.dirname(path)):
            raise OperationError(
                "invalid", f"directory of snapshot path {path} does not exist"
            )
        temporary = f"{path}.{os.getpid()}.tmp"
        with zipfile.ZipFile(
            temporary, "w", compression=zipfile.ZIP_DEFLATED
        ) as archive:
            archive.writestr(SNAPSHOT_ENTRY, json.dumps(context))
        os.replace(temporary, path)
        return {"size": os.path.getsize(path)}

    def write_snapshot(
        self, path: str, log: str, token: str = "", image: str | None = None
    ) -> dict:
        """
        Restore a snapshot into the first free slot, in state migrating.

        The ME process starts frozen; finalize resumes it at the snapshot's
        heartbeat counter.

        @param image: the image file to run the restored ME from, for a
            snapshot taken on another smart object whose image path does not
            exist here. Its SHA-256 must be the one the snapshot records.
            Default: the image path recorded in the snapshot.
        @raise OperationError: C{invalid} when the zip, its context or the
            image is not usable; C{no_slot}; C{no_memory}.
        """
        path = require_absolute_path(path, "path")
        log = require_absolute_path(log, "log")
        token = require_string(token, "token")
        if image is not None:
            image = require_absolute_path(image, "image")
        context = _read_snapshot_context(path, check_image=image is None)
        if image is not None:
            context["image"] = image
        fit, faults, digest = self._load_image(context["image"])
        if digest != context["image_sha256"]:
            raise OperationError(
                "invalid",
                f"snapshot {path} was taken from an image with sha256 "
                f"{context['image_sha256']}, but {context['image']} has "
                f"sha256 {digest}",
            )
        chunks = context["size"] // CHUNK_SIZE
        with self._lock:
            self._reconcile()
            slot = self._allocate_slot(chunks, context["size"])
            record = SlotRecord(
                slot=slot,
                state="migrating",
                token=token,
                image=context["image"],
                image_sha256=digest,
                name=context["name"],
                spid=context["spid"],
                shortdesc=fit.me.me_shortdesc,
                size=context["size"],
                chunks=chunks,
                log=log,
                status_path=os.path.join(self._run_dir, f"{slot}.status.json"),
                resume_path=os.path.join(self._run_dir, f"{slot}.resume.json"),
                hang=faults.hang,
                refuse_migration=faults.refuse_migration,
            )
            write_json_atomically(record.resume_path, context)
            self._start_me(record, faults)
        logger.info(
            "Restored snapshot {path} into slot {slot} at heartbeat {counter}",
            path=path,
            slot=slot,
            counter=context["counter"],
        )
        return {"slot": slot, "state": "migrating", "console": record.console}

    def poll(self) -> list[dict]:
        """
        Check the ME processes and return the C{me_state} events since the
        last call (MEs that crashed or shut themselves down).
        """
        with self._lock:
            self._reconcile()
            events, self._pending_events = self._pending_events, []
        return events

    # Slots and images

    def _load_slots(self) -> None:
        for entry in sorted(os.listdir(self._slots_dir)):
            if not entry.endswith(".json"):
                continue
            path = os.path.join(self._slots_dir, entry)
            try:
                with open(path, encoding="utf-8") as stream:
                    record = SlotRecord.from_json(json.load(stream))
            except (OSError, ValueError, TypeError) as error:
                logger.error(
                    "Ignoring unreadable slot file {path}: {error}",
                    path=path,
                    error=error,
                )
                continue
            self._slots[record.slot] = record
            logger.info(
                "Found {state} ME {name} in slot {slot} (pid {pid})",
                state=record.state,
                name=record.name,
                slot=record.slot,
                pid=record.pid,
            )

    def _save_slot(self, record: SlotRecord) -> None:
        path = os.path.join(self._slots_dir, f"{record.slot}.json")
        write_json_atomically(path, record.to_json())

    def _free_slot(self, record: SlotRecord) -> None:
        if self._slots.get(record.slot) is record:
            del self._slots[record.slot]
        self._children.pop(record.pid, None)
        paths = [
            os.path.join(self._slots_dir, f"{record.slot}.json"),
            record.status_path,
            record.resume_path,
            record.console,
        ]
        for path in paths:
            if path is None:
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

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
    ) -> SlotRecord:
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
        if record.state not in allowed:
            raise OperationError(
                "bad_state",
                f"slot {slot} is {record.state}: cannot {operation} it "
                f"({operation} needs {' or '.join(allowed)})",
            )
        return record

    def _require_current(self, record: SlotRecord, operation: str) -> None:
        self._reconcile()
        if self._slots.get(record.slot) is not record:
            raise OperationError(
                "not_found",
                f"the ME {record.name} in slot {record.slot} exited before "
                f"{operation} could run",
            )

    def _load_image(self, image: str):
        try:
            fit = self._read_fit(image)
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
        faults = _read_faults(image, fit.vendor)
        return fit, faults, _sha256_file(image)

    # ME processes

    def _start_me(self, record: SlotRecord, faults: _Faults) -> None:
        os.makedirs(os.path.dirname(record.log), exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "emiso.agency.sim.me",
            "--slot",
            str(record.slot),
            "--image",
            record.image,
            "--log",
            record.log,
            "--status",
            record.status_path,
            "--name",
            record.name,
            "--spid",
            str(record.spid),
            "--size",
            str(record.size),
            "--boot-delay-ms",
            str(faults.boot_delay_ms),
            "--heartbeat-ms",
            str(faults.heartbeat_ms),
        ]
        if faults.crash_after_ms is not None:
            argv += ["--crash-after-ms", str(faults.crash_after_ms)]
        if faults.exit_after_ms is not None:
            argv += ["--exit-after-ms", str(faults.exit_after_ms)]
        if record.resume_path is not None:
            argv += ["--resume", record.resume_path]
        record.console = os.path.join(self._run_dir, f"{record.slot}.console")
        argv += ["--console", record.console]
        process = self._spawn(argv, _me_environment())
        self._children[process.pid] = process
        record.pid = process.pid
        try:
            self._wait_until_stopped(record)
        except OperationError:
            self._kill_quietly(record)
            self._children.pop(process.pid, None)
            raise
        record.start_time = read_process_info(process.pid).start_time
        self._slots[record.slot] = record
        self._save_slot(record)

    def _wait_until_stopped(self, record: SlotRecord) -> None:
        deadline = self._clock() + LOAD_TIMEOUT
        while True:
            exit_status = self._exit_status_if_gone(record)
            if exit_status is not None:
                raise OperationError(
                    "internal",
                    f"ME process {record.pid} for slot {record.slot} exited with "
                    f"status {exit_status} before it stopped; see its console log "
                    f"{record.log}",
                )
            info = read_process_info(record.pid)
            if info is not None and info.state in ("T", "t"):
                return
            if self._clock() > deadline:
                raise OperationError(
                    "internal",
                    f"ME process {record.pid} for slot {record.slot} did not stop "
                    f"within {LOAD_TIMEOUT} s",
                )
            time.sleep(WAIT_INTERVAL)

    def _wait_until_living(self, record: SlotRecord) -> None:
        # No deadline: like the kernel call, finalize blocks until the ME is
        # living or gone, and the controller's timeout bounds the wait.
        while True:
            with self._lock:
                self._reconcile(skip_busy=False)
                if self._slots.get(record.slot) is not record:
                    raise OperationError(
                        "internal",
                        f"ME {record.name} in slot {record.slot} died during "
                        f"finalize; see its console log {record.log}",
                    )
                status = self._read_status(record)
                if status is not None and status.get("state") == "living":
                    record.state = "living"
                    self._save_slot(record)
                    return
            time.sleep(WAIT_INTERVAL)

    def _wait_for_exit(self, record: SlotRecord, timeout: float) -> int | None:
        deadline = self._clock() + timeout
        while self._clock() <= deadline:
            exit_status = self._exit_status_if_gone(record)
            if exit_status is not None:
                return exit_status
            time.sleep(WAIT_INTERVAL)
        return None

    def _exit_status_if_gone(self, record: SlotRecord) -> int | None:
        """
        Return the ME's exit status if its process has exited, else None.

        An ME started by another driver is not our child: its status then
        comes from its status file, or is -1 when the file does not record one.
        """
        child = self._children.get(record.pid)
        if child is not None:
            returncode = child.poll()
            if returncode is None:
                return None
            return 128 - returncode if returncode < 0 else returncode
        info = read_process_info(record.pid)
        alive = (
            info is not None
            and info.state not in ("Z", "X")
            and (record.start_time is None or info.start_time == record.start_time)
        )
        if alive:
            return None
        status = self._read_status(record) or {}
        return int(status.get("exit_status", -1))

    def _signal(self, record: SlotRecord, signum: int) -> None:
        if self._exit_status_if_gone(record) is not None:
            return
        try:
            os.kill(record.pid, signum)
        except ProcessLookupError:
            pass

    def _kill_quietly(self, record: SlotRecord) -> None:
        self._signal(record, signal.SIGKILL)
        child = self._children.get(record.pid)
        if child is not None:
            child.wait(timeout=5)

    def _read_status(self, record: SlotRecord) -> dict | None:
        try:
            with open(record.status_path, encoding="utf-8") as stream:
                return json.load(stream)
        except (FileNotFoundError, ValueError):
            return None

    def _maybe_hang(self, record: SlotRecord, operation: str) -> None:
        if record.hang == operation:
            logger.warn(
                "ME {name} in slot {slot} makes {operation} hang (emiso,sim-hang)",
                name=record.name,
                slot=record.slot,
                operation=operation,
            )
            self._hang(operation)

    # Monitor

    def _reconcile(self, skip_busy: bool = True) -> None:
        """
        Free the slots whose ME process exited and queue their events.

        An ME that became living while no finalize waited for it (the driver
        that sent SIGCONT was replaced) is recorded as living.
        """
        for record in list(self._slots.values()):
            if record.busy and skip_busy:
                continue
            exit_status = self._exit_status_if_gone(record)
            if exit_status is not None:
                self._record_exit(record, exit_status)
            elif record.state in ("preparing", "migrating") and not record.busy:
                self._record_late_living(record)

    def _record_late_living(self, record: SlotRecord) -> None:
        status = self._read_status(record) or {}
        if status.get("state") != "living":
            return
        self._pending_events.append(
            {
                "event": "me_state",
                "slot": record.slot,
                "token": record.token,
                "state": "living",
                "previous": record.state,
                "reason": "the ME finished its finalize after a driver restart",
            }
        )
        record.state = "living"
        self._save_slot(record)

    def _record_exit(self, record: SlotRecord, exit_status: int) -> None:
        status = self._read_status(record) or {}
        common = {"event": "me_state", "slot": record.slot, "token": record.token}
        reported_status = exit_status if exit_status >= 0 else None
        if status.get("state") == "terminated":
            self._pending_events.append(
                dict(
                    common,
                    state="terminated",
                    previous=record.state,
                    reason="the ME shut itself down",
                    exit_status=reported_status,
                )
            )
            previous = "terminated"
            reason = "the ME shut itself down"
        else:
            previous = record.state
            reason = status.get("reason") or _describe_exit(exit_status)
        self._pending_events.append(
            dict(
                common,
                state="dead",
                previous=previous,
                reason=reason,
                exit_status=reported_status,
            )
        )
        logger.info(
            "ME {name} in slot {slot} exited with status {status}: {reason}",
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
            "console": record.console,
            "cpu_seconds": info.cpu_seconds if info is not None else None,
            "rss": read_process_rss(record.pid),
        }


def _read_faults(image: str, vendor: dict) -> _Faults:
    hang = vendor.get("sim-hang")
    if hang is not None and hang not in _HANGABLE_OPERATIONS:
        raise OperationError(
            "invalid",
            f"{image}: emiso,sim-hang must be one of "
            f"{', '.join(_HANGABLE_OPERATIONS)}, "
            f"got {hang!r}",
        )
    return _Faults(
        boot_delay_ms=_vendor_ms(
            image, vendor, "sim-boot-delay-ms", DEFAULT_BOOT_DELAY_MS
        ),
        heartbeat_ms=_vendor_ms(
            image, vendor, "sim-heartbeat-ms", DEFAULT_HEARTBEAT_MS
        ),
        crash_after_ms=_vendor_ms(image, vendor, "sim-crash-after-ms", None),
        exit_after_ms=_vendor_ms(image, vendor, "sim-exit-after-ms", None),
        refuse_migration="sim-refuse-migration" in vendor
        and vendor["sim-refuse-migration"] is not False,
        hang=hang,
    )


def _vendor_ms(image: str, vendor: dict, name: str, default: int | None) -> int | None:
    value = vendor.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OperationError(
            "invalid",
            f"{image}: emiso,{name} must be a u32 in milliseconds, got {value!r}",
        )
    if name == "sim-heartbeat-ms" and value == 0:
        raise OperationError("invalid", f"{image}: emiso,{name} must not be 0")
    return value


def _read_snapshot_context(path: str, check_image: bool = True) -> dict:
    """
    Read and check the C{me} entry of a sim snapshot zip.

    @param check_image: also require the image path recorded in the
        snapshot to exist.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if names != [SNAPSHOT_ENTRY]:
                raise OperationError(
                    "invalid",
                    f"snapshot {path} must contain exactly one entry named "
                    f"{SNAPSHOT_ENTRY!r}, found {names}",
                )
            raw = archive.read(SNAPSHOT_ENTRY)
    except (zipfile.BadZipFile, OSError) as error:
        raise OperationError(
            "invalid", f"cannot read snapshot {path}: {error}"
        ) from None
    try:
        context = json.loads(raw)
    except ValueError as error:
        raise OperationError(
            "invalid", f"snapshot {path}: entry {SNAPSHOT_ENTRY!r} is not JSON: {error}"
        ) from None
    if not isinstance(context, dict):
        raise OperationError(
            "invalid", f"snapshot {path}: context is not a JSON object"
        )
    if (
        context.get("format") != SNAPSHOT_FORMAT
        or context.get("version") != SNAPSHOT_VERSION
    ):
        raise OperationError(
            "invalid",
            f"snapshot {path} is not a {SNAPSHOT_FORMAT} version {SNAPSHOT_VERSION} "
            f"snapshot (format {context.get('format')!r}, "
            f"version {context.get('version')!r})",
        )
    expected_types = {
        "image": str,
        "image_sha256": str,
        "name": str,
        "spid": int,
        "size": int,
        "counter": int,
        "uptime": (int, float),
    }
    for key, expected in expected_types.items():
        value = context.get(key)
        if isinstance(value, bool) or not isinstance(value, expected):
            raise OperationError(
                "invalid",
                f"snapshot {path}: field {key!r} is missing or invalid: {value!r}",
            )
    size = context["size"]
    if size <= 0 or size % CHUNK_SIZE or chunk_count(size) != size // CHUNK_SIZE:
        raise OperationError(
            "invalid",
            f"snapshot {path}: size {size} is not a power-of-two number "
            "of 2 MiB chunks",
        )
    if check_image and (
        not os.path.isabs(context["image"]) or not os.path.isfile(context["image"])
    ):
        raise OperationError(
            "invalid",
            f"snapshot {path} names image {context['image']}, which does not exist",
        )
    return context


def _describe_exit(exit_status: int) -> str:
    if exit_status > 128:
        try:
            name = signal.Signals(exit_status - 128).name
        except ValueError:
            name = f"signal {exit_status - 128}"
        return f"the ME process was killed by {name}"
    if exit_status < 0:
        return "the ME process disappeared and its exit status is unknown"
    return f"the ME process exited with status {exit_status}"


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _me_environment() -> dict[str, str]:
    """Return the environment for an ME, with this package on C{PYTHONPATH}."""
    package_root = os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    )
    environment = dict(os.environ)
    existing = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = (
        package_root if not existing else package_root + os.pathsep + existing
    )
    return environment

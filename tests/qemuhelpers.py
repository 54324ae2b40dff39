"""Helpers for tests that run real QEMU virtual machines."""

import glob
import json
import os
import re
import shutil
import signal
import time

from tests.engineprocess import SAMPLES_DIR

QEMU_BINARY = "qemu-system-aarch64"

QEMU_SAMPLE = str(SAMPLES_DIR / "qemu" / "heartbeat64-qemu.itb")
"""The aarch64 sample image of the qemu agency."""

SKIP_REASON = (
    f"{QEMU_BINARY} is not installed (Debian: apt-get install qemu-system-arm)"
)

_HEARTBEAT = re.compile(r"heartbeat (\d+)$")


def qemu_available() -> bool:
    """Tell whether the QEMU binary of the aarch64 sample is on PATH."""
    return shutil.which(QEMU_BINARY) is not None


def heartbeats(log_path: str) -> list[int]:
    """Return the heartbeat counters in a console log, oldest first."""
    try:
        with open(log_path, encoding="utf-8") as stream:
            lines = stream.read().splitlines()
    except FileNotFoundError:
        return []
    counters = []
    for text in lines:
        match = _HEARTBEAT.search(text)
        if match:
            counters.append(int(match.group(1)))
    return counters


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):
    """Call C{predicate} until it returns a true value; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def kill_vms(state_dir: str) -> list[int]:
    """
    Kill the QEMU and console pump processes recorded in the slot files of
    a qemu agency state folder; return the pids killed.

    A pid is killed only when its command line shows QEMU or the pump, so
    a reused pid is left alone.
    """
    killed = []
    for path in glob.glob(os.path.join(state_dir, "slots", "*.json")):
        try:
            with open(path, encoding="utf-8") as stream:
                record = json.load(stream)
        except (OSError, ValueError):
            continue
        for pid in (record.get("pid"), record.get("pump_pid")):
            if pid and _is_ours(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(pid)
    return killed


def _is_ours(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            command = stream.read()
    except OSError:
        return False
    return b"qemu-system" in command or b"emiso.agency.qemu.pump" in command

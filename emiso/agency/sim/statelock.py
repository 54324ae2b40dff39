"""One driver at a time on a sim state folder: an exclusive lock on C{driver.lock}.

When the engine dies with C{kill -9}, its driver finishes the operation it
is running before it sees the end of its input. A new driver that loaded
the slot files meanwhile would miss the ME that operation injects, so a
serving driver waits for the lock first. A driver that still holds it
after L{STALE_AFTER} seconds is hung (an ME call that never returns) and is
killed, as the engine's controller would kill it.
"""

import fcntl
import os
import signal
import time

from twisted.logger import Logger

log = Logger()

#: Seconds a serving driver waits before it kills the driver holding the lock.
#: It stays below the engine's C{hello} timeout (10 s).
STALE_AFTER = 4.0

#: Seconds a one-shot operation waits for the lock before it gives up.
ONE_SHOT_WAIT = 30.0

#: Seconds to wait for the lock once the stale driver has been killed.
AFTER_KILL_WAIT = 3.0

_POLL_INTERVAL = 0.02
_DRIVER_MODULE = b"emiso.agency.driver"


class StateLocked(Exception):
    """Another driver holds the state folder."""


def hold_state_lock(state_dir: str, kill_stale: bool) -> int:
    """
    Take the exclusive lock of a sim state folder and return its file
    descriptor, which must stay open while the driver runs.

    @param kill_stale: kill a driver that holds the lock for longer than
        L{STALE_AFTER} seconds (serving drivers); one-shot operations only
        wait, for up to L{ONE_SHOT_WAIT} seconds.
    @raise StateLocked: the lock could not be taken.
    """
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, "driver.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not _wait_for_lock(fd, STALE_AFTER if kill_stale else ONE_SHOT_WAIT):
            holder = _read_holder(fd)
            if not kill_stale or holder is None or not _kill_driver(holder):
                raise StateLocked(
                    f"another agency driver (pid {holder}) uses {state_dir}"
                )
            if not _wait_for_lock(fd, AFTER_KILL_WAIT):
                raise StateLocked(
                    f"agency driver {holder} still has the lock on {path} after SIGKILL"
                )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _wait_for_lock(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL)


def _read_holder(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _kill_driver(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            cmdline = stream.read()
    except OSError:
        # Gone already: its lock is being released.
        return True
    if _DRIVER_MODULE not in cmdline:
        return False
    log.warn(
        "Agency driver {pid} still has the lock on the state folder; killing it", pid=pid
    )
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True

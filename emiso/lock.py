"""
The data-folder lock: one engine (service or interactive CLI) per data
folder, because two controllers must never drive one agency.

The lock is an exclusive C{flock} on C{DATA-DIR/engine.lock}. The kernel
releases it when the process exits, even after a crash, so a stale file
never blocks a start. The file holds the owner's pid on its first line and
the owner's C{--listen} endpoints (or C{interactive}) on the next lines, so
that a second engine can say which process runs and how to reach it.
"""

import fcntl
import os

import attrs

LOCK_FILE_NAME = "engine.lock"


class DataFolderBusy(Exception):
    """Another process holds the data-folder lock."""

    def __init__(self, path: str, pid: int | None, endpoints: list[str]) -> None:
        super().__init__(path, pid, endpoints)
        self.path = path
        self.pid = pid
        self.endpoints = endpoints

    def __str__(self) -> str:
        owner = f"process {self.pid}" if self.pid else "another process"
        folder = os.path.dirname(self.path)
        message = (
            f"the data folder {folder} is in use by {owner} (lock file "
            f"{self.path}); only one engine or interactive CLI may drive its "
            "agency at a time."
        )
        hosts = [docker_host(e) for e in self.endpoints]
        hosts = [h for h in hosts if h]
        if hosts:
            message += f" Use the docker CLI against it: docker -H {hosts[0]} ps -a"
        elif "interactive" in self.endpoints:
            message += " It is an interactive CLI: use that one, or exit it first."
        else:
            message += " Use the docker CLI against it (docker -H tcp://HOST:PORT ...)."
        return message


def docker_host(endpoint: str) -> str | None:
    """
    Convert a Twisted server endpoint description into a C{docker -H}
    address, or return C{None} for descriptions it cannot convert.

    C{tcp:2376} becomes C{tcp://127.0.0.1:2376}: the local address works
    for an engine that listens on all interfaces. A C{tls+} prefix, added
    by the engine in secure mode, adds C{--tlsverify}.
    """
    secure = endpoint.startswith("tls+")
    description = endpoint[len("tls+") :] if secure else endpoint
    parts = description.split(":")
    host = None
    if parts[0] == "tcp" and len(parts) > 1:
        port = next((p for p in parts[1:] if "=" not in p), None)
        port = port or _keyword(parts, "port")
        interface = _keyword(parts, "interface") or "127.0.0.1"
        if interface in ("0.0.0.0", "", "\\:\\:"):
            interface = "127.0.0.1"
        if port:
            host = f"tcp://{interface}:{port}"
    elif parts[0] == "unix" and len(parts) > 1:
        path = next((p for p in parts[1:] if "=" not in p), None)
        path = path or _keyword(parts, "address")
        if path:
            host = f"unix://{path}"
    if host and secure:
        return f"{host} --tlsverify"
    return host


def _keyword(parts: list[str], name: str) -> str | None:
    for part in parts:
        if part.startswith(f"{name}="):
            return part.split("=", 1)[1]
    return None


@attrs.define
class DataFolderLock:
    """
    The exclusive lock on C{DATA-DIR/engine.lock}.

    @ivar path: the lock file.
    """

    path: str
    _descriptor: int | None = None
    _endpoints: list[str] = attrs.Factory(list)

    @classmethod
    def for_data_dir(cls, data_dir: str) -> "DataFolderLock":
        """
        Return the (not yet acquired) lock of a data folder.
        """
        return cls(os.path.join(data_dir, LOCK_FILE_NAME))

    def acquire(self, endpoints: list[str]) -> None:
        """
        Take the lock and record this process and its endpoints in the file.

        @param endpoints: what a second engine should print to reach this
            one: endpoint descriptions, or C{["interactive"]}.
        @raise DataFolderBusy: another process holds the lock.
        @raise OSError: the folder or the file cannot be created.
        """
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # O_CLOEXEC (Python's default) keeps the descriptor out of the agency
        # driver and the MEs, which outlive the engine and would otherwise
        # hold the lock after it exits.
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, owner_endpoints = _read_owner(descriptor)
            os.close(descriptor)
            raise DataFolderBusy(self.path, pid, owner_endpoints)
        self._descriptor = descriptor
        self._endpoints = list(endpoints)
        self.record_owner()

    def record_owner(self) -> None:
        """
        Write the current pid and the endpoints into the lock file; call it
        again after a fork (twistd without C{-n}) to record the new pid.
        """
        if self._descriptor is None:
            raise RuntimeError(f"the lock {self.path} is not held")
        text = "\n".join([str(os.getpid()), *self._endpoints]) + "\n"
        os.ftruncate(self._descriptor, 0)
        os.pwrite(self._descriptor, text.encode("utf-8"), 0)

    def release(self) -> None:
        """
        Empty the lock file and release the lock.
        """
        if self._descriptor is None:
            return
        os.ftruncate(self._descriptor, 0)
        fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        os.close(self._descriptor)
        self._descriptor = None


def _read_owner(descriptor: int) -> tuple[int | None, list[str]]:
    try:
        text = os.pread(descriptor, 4096, 0).decode("utf-8", "replace")
    except OSError:
        return None, []
    lines = [line for line in text.splitlines() if line]
    if not lines or not lines[0].isdigit():
        return None, []
    return int(lines[0]), lines[1:]

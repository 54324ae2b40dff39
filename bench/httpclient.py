"""A small asyncio HTTP/1.1 client for load tests, over TCP or a unix socket.

It keeps one connection per simulated client and reads bodies framed by
Content-Length, chunked transfer coding or the end of the connection.  It
only talks to servers the benchmark started itself, on loopback or on a
unix socket in the benchmark's folder.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

#: Bytes read from the socket per call when a body is streamed.
READ_SIZE = 256 * 1024


@dataclass(frozen=True)
class Address:
    """The listening address of a server: a loopback TCP port or a unix socket path."""

    host: str = "127.0.0.1"
    port: int = 0
    unix_path: str = ""

    def describe(self) -> str:
        if self.unix_path:
            return f"unix:{self.unix_path}"
        return f"tcp:{self.host}:{self.port}"


class HTTPError(Exception):
    """A response that the benchmark did not expect."""


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        if self.address.unix_path:
            self.reader, self.writer = await asyncio.open_unix_connection(
                self.address.unix_path, limit=READ_SIZE
            )
        else:
            self.reader, self.writer = await asyncio.open_connection(
                self.address.host, self.address.port, limit=READ_SIZE
            )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        sink=None,
    ) -> tuple[int, bytes]:
        """
        Send one request and read its response.

        @param sink: when given, a callable that receives each body chunk;
            the body is then not kept and the returned body is empty.
        @return: the status code and the body.
        """
        if self.writer is None:
            await self.open()
        lines = [f"{method} {path} HTTP/1.1", "Host: docker"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.writer.write(head)
        if body:
            self.writer.write(body)
        await self.writer.drain()
        try:
            return await self._read_response(method, sink)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            raise

    async def _read_response(self, method: str, sink) -> tuple[int, bytes]:
        reader = self.reader
        status_line = await reader.readuntil(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HTTPError(f"invalid status line {status_line!r}")
        status = int(parts[1])
        headers = {}
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        chunks: list[bytes] = []
        keep = chunks.append if sink is None else sink
        if method == "HEAD" or status in (204, 304):
            pass
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            await self._read_chunked(keep)
        elif b"content-length" in headers:
            remaining = int(headers[b"content-length"])
            while remaining:
                data = await reader.read(min(remaining, READ_SIZE))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                keep(data)
        else:
            while data := await reader.read(READ_SIZE):
                keep(data)
            self.close()
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, b"".join(chunks)

    async def _read_chunked(self, keep) -> None:
        reader = self.reader
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return
            remaining = size
            while remaining:
                data = await reader.read(min(remaining, READ_SIZE))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                keep(data)
            await reader.readexactly(2)


async def request_once(
    address: Address, method: str, path: str, body: bytes | None = None,
    headers: dict[str, str] | None = None, timeout: float = 120.0,
) -> tuple[int, bytes]:
    """Send one request on a new connection and close it."""
    connection = Connection(address)
    try:
        return await asyncio.wait_for(
            connection.request(method, path, body, headers), timeout
        )
    finally:
        connection.close()


@dataclass
class LoadResult:
    """Latencies (seconds) of the successful requests of one load run."""

    latencies: list[float]
    elapsed: float
    errors: int

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


async def run_load(
    address: Address,
    path: str,
    clients: int,
    max_requests: int,
    max_seconds: float,
    expected_status: int = 200,
) -> LoadResult:
    """
    Send C{GET path} from C{clients} concurrent keep-alive connections
    until C{max_requests} requests completed or C{max_seconds} passed.
    """
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def client() -> None:
        nonlocal errors, issued
        connection = Connection(address)
        try:
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                began = time.perf_counter()
                try:
                    status, _body = await connection.request("GET", path)
                except (OSError, asyncio.IncompleteReadError, HTTPError):
                    errors += 1
                    connection.close()
                    continue
                if status == expected_status:
                    latencies.append(time.perf_counter() - began)
                else:
                    errors += 1
        finally:
            connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return LoadResult(latencies, time.perf_counter() - began, errors)

"""The benchmark workloads; each returns plain dicts for the results file."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.httpclient import Connection, LoadResult, run_load
from bench.servers import Server

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Container records created concurrently while a server is filled.
CREATE_CONCURRENCY = 8

#: MEs (and so running containers) a smart object holds.
SLOTS = 5

#: Bytes per console line in the log workloads, newline included.
LOG_LINE_BYTES = 100


def summarize(latencies: list[float]) -> dict:
    """Median and p99 (nearest rank) in milliseconds."""
    if not latencies:
        return {"count": 0, "median_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(latencies)
    p99_index = max(0, int(round(0.99 * len(ordered))) - 1)
    return {
        "count": len(ordered),
        "median_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[p99_index] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def load_figures(result: LoadResult, cpu: float) -> dict:
    figures = summarize(result.latencies)
    figures["requests_per_second"] = result.requests_per_second
    figures["errors"] = result.errors
    figures["cpu_seconds_per_1000"] = (
        cpu / len(result.latencies) * 1000 if result.latencies else None
    )
    return figures


async def fill(server: Server, target: int) -> float:
    """
    Bring the server to C{target} container records: the first five run,
    the others are created and never started. Return the seconds it took.
    """
    began = time.perf_counter()
    existing = await server.container_ids()
    running = await server.running_ids()
    missing = target - len(existing)
    created: list[str] = []

    async def creator(count: int) -> None:
        for _ in range(count):
            created.append(await server.create())

    share, rest = divmod(max(0, missing), CREATE_CONCURRENCY)
    await asyncio.gather(
        *(creator(share + (1 if i < rest else 0)) for i in range(CREATE_CONCURRENCY))
    )
    to_start = created[: max(0, SLOTS - len(running))]
    await asyncio.gather(*(server.start_container(c) for c in to_start))
    return time.perf_counter() - began


async def measure_load(
    server: Server, path: str, clients: int, max_requests: int, max_seconds: float
) -> dict:
    await run_load(server.address, path, min(clients, 5), 20, 2.0)
    cpu_before = server.cpu()
    result = await run_load(server.address, path, clients, max_requests, max_seconds)
    return load_figures(result, server.cpu() - cpu_before)


async def agency_cycle_seconds(rounds: int) -> list[float]:
    """
    Time inject, finalize and terminate of the simulated agency alone, by
    talking to its driver process as the engine's controller does.
    """
    state_dir = Path(tempfile.mkdtemp(prefix="emiso-bench-agency-"))
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(PROJECT_ROOT)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "emiso.agency.driver",
        "--backend",
        "sim",
        "--state-dir",
        str(state_dir),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=environment,
    )
    image = str(PROJECT_ROOT / "emiso" / "samples" / "refso3-sim.itb")
    counter = 0

    async def call(op: str, **args) -> dict:
        nonlocal counter
        counter += 1
        message = {"id": counter, "op": op, "args": args}
        process.stdin.write(json.dumps(message).encode() + b"\n")
        await process.stdin.drain()
        while True:
            reply = json.loads(await process.stdout.readline())
            if reply.get("id") == counter:
                if "error" in reply:
                    raise RuntimeError(f"agency {op} failed: {reply['error']}")
                return reply["result"]

    times = []
    try:
        for index in range(rounds):
            began = time.perf_counter()
            injected = await call(
                "inject", image=image, log=str(state_dir / f"{index}.log"), token=str(index)
            )
            await call("finalize", slot=injected["slot"])
            await call("terminate", slot=injected["slot"])
            times.append(time.perf_counter() - began)
        await call("shutdown")
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        shutil.rmtree(state_dir, ignore_errors=True)
    return times


async def lifecycle_seconds(server: Server, rounds: int) -> list[float]:
    """Time create, start, stop and remove of one container, C{rounds} times."""
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        container_id = await server.create()
        await server.start_container(container_id)
        await server.stop_container(container_id)
        await server.remove_container(container_id)
        times.append(time.perf_counter() - began)
    return times


def log_text(size: int) -> tuple[bytes, int]:
    """Build C{size} bytes of console text in lines of C{LOG_LINE_BYTES}."""
    count = max(1, size // LOG_LINE_BYTES)
    line = b"x" * (LOG_LINE_BYTES - 1) + b"\n"
    return line * count, count


async def read_logs(server: Server, container_id: str, follow: bool) -> tuple[float, int]:
    """Read a whole log; return the seconds and the bytes received."""
    received = 0

    def sink(data: bytes) -> None:
        nonlocal received
        received += len(data)

    path = f"/containers/{container_id}/logs?stdout=1&stderr=1"
    if follow:
        path += "&follow=1"
    connection = Connection(server.address)
    began = time.perf_counter()
    try:
        status, _ = await connection.request("GET", path, sink=sink)
    finally:
        connection.close()
    if status != 200:
        raise RuntimeError(f"{server.name}: logs returned {status}")
    return time.perf_counter() - began, received


async def loopback_copy_seconds(size: int) -> float:
    """Time a plain asyncio copy of C{size} bytes over a loopback TCP socket."""
    block = b"x" * (256 * 1024)

    async def send(reader, writer) -> None:
        remaining = size
        while remaining > 0:
            chunk = block[: min(remaining, len(block))]
            writer.write(chunk)
            remaining -= len(chunk)
            await writer.drain()
        writer.close()

    listener = await asyncio.start_server(send, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        began = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while await reader.read(256 * 1024):
            pass
        writer.close()
        return time.perf_counter() - began
    finally:
        listener.close()


async def busy_pings(
    server: Server, follow_ids: list[str], upload_size: int, minimum_seconds: float
) -> dict:
    """
    Ping the server once at a time while five containers start, two log
    streams are read as fast as possible and one image is uploaded.
    """
    pings: list[float] = []
    rss_samples: list[int] = []
    finished = asyncio.Event()
    connection = Connection(server.address)

    async def pinger() -> None:
        began = time.perf_counter()
        while not finished.is_set() or time.perf_counter() - began < minimum_seconds:
            start = time.perf_counter()
            status, _ = await connection.request("GET", "/_ping")
            if status == 200:
                pings.append(time.perf_counter() - start)
            rss_samples.append(server.rss())
            await asyncio.sleep(0.005)

    async def boot_one() -> str:
        container_id = await server.create()
        await server.start_container(container_id)
        return container_id

    async def background() -> dict:
        began = time.perf_counter()
        tasks = [boot_one() for _ in range(SLOTS)]
        tasks += [read_logs(server, c, follow=True) for c in follow_ids]
        tasks.append(server.upload_image(upload_size))
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        finished.set()
        failures = [repr(o) for o in outcomes if isinstance(o, BaseException)]
        return {"seconds": time.perf_counter() - began, "failures": failures}

    try:
        busy, _ = await asyncio.gather(background(), pinger())
    finally:
        connection.close()
    figures = summarize(pings)
    figures["busy_seconds"] = busy["seconds"]
    figures["failures"] = busy["failures"]
    figures["max_rss_bytes"] = max(rss_samples) if rss_samples else None
    return figures


"""Run every workload against the engine and dockerd and write the results.

Usage: C{bench/run [--quick] [--no-dockerd] [--output DIR]}.  The results
go to C{bench/results/results.json} and C{results.md}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from bench import report, workloads
from bench.servers import DockerServer, EngineServer, Server

RESULTS_DIR = Path(__file__).resolve().parent / "results"

API_PATHS = [
    ("GET /_ping", "/_ping"),
    ("GET /version", "/version"),
    ("GET /info", "/info"),
    ("GET /containers/json?all=1", "/containers/json?all=1"),
    ("GET /containers/{id}/json", None),
]


class Settings:
    """Sizes and bounds of one run; C{--quick} shrinks them."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.record_counts = (5, 100) if quick else (5, 100, 1000)
        self.clients = (1, 50)
        # (max requests, max seconds) per load run, for 1 and 50 clients.
        self.bounds = {1: (300, 1.0), 50: (1000, 1.5)} if quick else {
            1: (2000, 3.0),
            50: (5000, 4.0),
        }
        self.cycle_rounds = 3 if quick else 10
        self.log_sizes_mb = (1, 10) if quick else (1, 10, 100)
        self.busy_log_mb = 10 if quick else 100
        self.upload_bytes = 4 * 2**20 if quick else 16 * 2**20


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes and shorter runs (about 2 minutes)"
    )
    parser.add_argument(
        "--no-dockerd", action="store_true", help="benchmark the engine alone"
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS_DIR, help="folder for results.md and .json"
    )
    return parser.parse_args(argv)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def ordered(servers: list[Server], turn: int) -> list[Server]:
    """Alternate which server goes first from one workload to the next."""
    return servers if turn % 2 == 0 else servers[::-1]


class Run:
    def __init__(self, settings: Settings, servers: list[Server], results: dict) -> None:
        self.settings = settings
        self.servers = servers
        self.results = results
        self.turn = 0

    def next_order(self) -> list[Server]:
        self.turn += 1
        return ordered(self.servers, self.turn)

    async def startup(self) -> None:
        figures = {}
        for server in self.next_order():
            progress(f"starting {server.name}")
            figures[server.name] = {"seconds": await server.start()}
        self.results["startup"] = figures
        for server in self.servers:
            if isinstance(server, DockerServer):
                await server.import_busybox()
        await asyncio.sleep(2)
        self.results["rss_idle"] = {s.name: {"bytes": s.rss()} for s in self.servers}

    async def api(self) -> None:
        rows = []
        for count in self.settings.record_counts:
            for server in self.next_order():
                seconds = await workloads.fill(server, count)
                progress(f"{server.name}: {count} records ({seconds:.1f} s)")
            inspect_ids = {s.name: (await s.container_ids())[-1] for s in self.servers}
            for label, path in API_PATHS:
                for clients in self.settings.clients:
                    row = {"workload": label, "records": count, "clients": clients}
                    for server in self.next_order():
                        target = path or f"/containers/{inspect_ids[server.name]}/json"
                        max_requests, max_seconds = self.settings.bounds[clients]
                        row[server.name] = await workloads.measure_load(
                            server, target, clients, max_requests, max_seconds
                        )
                    progress(f"{label} records={count} clients={clients}: " + ", ".join(
                        f"{s.name} p50 {row[s.name]['median_ms']:.2f} ms"
                        for s in self.servers
                    ))
                    rows.append(row)
        self.results["api"] = rows
        self.results["rss_records"] = {
            "records": self.settings.record_counts[-1],
            **{s.name: {"bytes": s.rss()} for s in self.servers},
        }

    async def lifecycle(self) -> None:
        rounds = self.settings.cycle_rounds
        for server in self.servers:
            progress(f"{server.name}: removing all containers")
            await server.remove_all()
        figures = {}
        for server in self.next_order():
            times = await workloads.lifecycle_seconds(server, rounds)
            figures[server.name] = {"median_s": statistics.median(times), "rounds": rounds}
            progress(f"{server.name}: cycle median {figures[server.name]['median_s']:.3f} s")
        agency = await workloads.agency_cycle_seconds(rounds)
        figures["agency_median_s"] = statistics.median(agency)
        figures["engine"]["overhead_s"] = (
            figures["engine"]["median_s"] - figures["agency_median_s"]
        )
        self.results["lifecycle"] = figures

    async def logs(self) -> None:
        rows = []
        for size_mb in self.settings.log_sizes_mb:
            text, lines = workloads.log_text(size_mb * 2**20)
            ids = {s.name: await s.write_log(text, lines) for s in self.servers}
            for follow in (False, True):
                row = {"size_mb": size_mb, "follow": follow}
                for server in self.next_order():
                    seconds, received = await workloads.read_logs(
                        server, ids[server.name], follow
                    )
                    row[server.name] = {
                        "seconds": seconds,
                        "received_bytes": received,
                        "text_mb_per_s": len(text) / 2**20 / seconds,
                    }
                engine_bytes = row["engine"]["received_bytes"]
                copy = await workloads.loopback_copy_seconds(engine_bytes)
                row["loopback_copy"] = {
                    "seconds": copy,
                    "text_mb_per_s": len(text) / 2**20 / copy,
                }
                progress(f"logs {size_mb} MB follow={follow}: " + ", ".join(
                    f"{s.name} {row[s.name]['text_mb_per_s']:.1f} MB/s" for s in self.servers
                ))
                rows.append(row)
            for server in self.servers:
                await server.remove_container(ids[server.name])
        self.results["logs"] = rows

    async def busy(self) -> None:
        settings = self.settings
        text, lines = workloads.log_text(settings.busy_log_mb * 2**20)
        figures = {}
        for server in self.next_order():
            await server.remove_all()
            follow_ids = [await server.write_log(text, lines) for _ in range(2)]
            figures[server.name] = await workloads.busy_pings(
                server, follow_ids, settings.upload_bytes, minimum_seconds=2.0
            )
            result = await workloads.measure_load(server, "/containers/json?all=1", 1, 1000, 30)
            figures[server.name]["list_cpu_seconds_per_1000"] = result["cpu_seconds_per_1000"]
            progress(
                f"{server.name}: busy ping p99 {figures[server.name]['p99_ms']:.2f} ms, "
                f"failures {figures[server.name]['failures']}"
            )
        figures["log_mb"] = settings.busy_log_mb
        figures["upload_bytes"] = settings.upload_bytes
        self.results["busy"] = figures


async def run(options: argparse.Namespace) -> dict:
    settings = Settings(options.quick)
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": settings.quick,
    }
    servers: list[Server] = [EngineServer()]
    reason = "--no-dockerd was given" if options.no_dockerd else DockerServer.unavailable_reason()
    if reason is None:
        servers.append(DockerServer())
        results["dockerd_version"] = DockerServer.version()
    else:
        results["dockerd_missing"] = reason
        progress(f"dockerd is not benchmarked: {reason}")
    results["servers"] = [s.name for s in servers]
    benchmark = Run(settings, servers, results)
    began = time.perf_counter()
    try:
        await benchmark.startup()
        await benchmark.api()
        await benchmark.lifecycle()
        await benchmark.logs()
        await benchmark.busy()
    finally:
        for server in servers:
            await server.remove_all()
            server.close()
    results["run_seconds"] = time.perf_counter() - began
    return results


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(sys.argv[1:] if argv is None else argv)
    results = asyncio.run(run(options))
    options.output.mkdir(parents=True, exist_ok=True)
    (options.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (options.output / "results.md").write_text(report.markdown(results))
    progress(f"wrote {options.output / 'results.md'} and results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

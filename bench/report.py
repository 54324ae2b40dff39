"""Turn the results of one run into Markdown tables."""

from __future__ import annotations

MB = 2**20


def ratio(engine, dockerd) -> str:
    if engine is None or dockerd in (None, 0):
        return "–"
    return f"{engine / dockerd:.2f}"


def number(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}"


def triple(row: dict, key: str, digits: int = 2, scale: float = 1.0) -> str:
    """Format C{engine / dockerd (ratio)} for one figure of a row."""
    engine = row.get("engine", {}).get(key)
    dockerd = row.get("dockerd", {}).get(key) if "dockerd" in row else None
    if engine is not None:
        engine *= scale
    if dockerd is not None:
        dockerd *= scale
    if "dockerd" not in row:
        return number(engine, digits)
    return f"{number(engine, digits)} / {number(dockerd, digits)} ({ratio(engine, dockerd)})"


def markdown(results: dict) -> str:
    has_dockerd = "dockerd" in results["servers"]
    machine = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Run of {results['date']}, {'quick' if results['quick'] else 'full'} mode, "
        f"{results['run_seconds']:.0f} s.",
        "",
        f"Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_bytes'] / 2**30:.1f} GiB, Linux {machine['kernel']}, "
        f"Python {machine['python']}. Both servers and the load client share "
        "these CPUs.",
        "",
    ]
    if has_dockerd:
        lines += [
            f"Peer: {results['dockerd_version']} (vfs storage, no bridge, no "
            "iptables). Each cell reads `engine / dockerd (ratio)`; a ratio "
            "below 1 means the engine takes less time or memory, above 1 "
            "more requests or bytes per second.",
            "",
        ]
    else:
        lines += [f"dockerd was not benchmarked: {results['dockerd_missing']}.", ""]
    lines += api_table(results["api"])
    lines += resource_table(results, has_dockerd)
    lines += lifecycle_table(results["lifecycle"], has_dockerd)
    lines += logs_table(results["logs"], has_dockerd)
    lines += busy_table(results["busy"], has_dockerd)
    return "\n".join(lines) + "\n"


def api_table(rows: list[dict]) -> list[str]:
    lines = [
        "## API latency and throughput",
        "",
        "| Request | Records | Clients | Median ms | p99 ms | Requests/s | CPU s per 1000 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| `{row['workload']}` | {row['records']} | {row['clients']} | "
            f"{triple(row, 'median_ms')} | {triple(row, 'p99_ms')} | "
            f"{triple(row, 'requests_per_second', 0)} | "
            f"{triple(row, 'cpu_seconds_per_1000')} |"
        )
    return lines + [""]


def resource_table(results: dict, has_dockerd: bool) -> list[str]:
    busy = results["busy"]
    rows = [
        ("Start-up to first `/_ping`, s", {
            name: value["seconds"] for name, value in results["startup"].items()
        }, 2),
        ("Resident memory idle, MiB", {
            name: value["bytes"] / MB for name, value in results["rss_idle"].items()
        }, 1),
        (f"Resident memory with {results['rss_records']['records']} records, MiB", {
            name: results["rss_records"][name]["bytes"] / MB for name in results["servers"]
        }, 1),
        ("Resident memory under the busy load (max), MiB", {
            name: (busy[name]["max_rss_bytes"] or 0) / MB for name in results["servers"]
        }, 1),
    ]
    lines = ["## Start-up and memory", "", "| Figure | Engine | dockerd | Ratio |",
             "|---|---:|---:|---:|"]
    for label, values, digits in rows:
        engine = values.get("engine")
        dockerd = values.get("dockerd")
        lines.append(
            f"| {label} | {number(engine, digits)} | {number(dockerd, digits)} | "
            f"{ratio(engine, dockerd) if has_dockerd else '–'} |"
        )
    return lines + [""]


def lifecycle_table(figures: dict, has_dockerd: bool) -> list[str]:
    engine = figures["engine"]
    dockerd = figures.get("dockerd", {}).get("median_s")
    return [
        "## Create, start, stop and remove",
        "",
        f"Median of {engine['rounds']} cycles, in seconds.",
        "",
        "| Figure | Engine | dockerd | Ratio |",
        "|---|---:|---:|---:|",
        f"| Whole cycle | {number(engine['median_s'], 3)} | {number(dockerd, 3)} | "
        f"{ratio(engine['median_s'], dockerd)} |",
        f"| Simulated agency alone (inject, finalize, terminate) | "
        f"{number(figures['agency_median_s'], 3)} | – | – |",
        f"| Engine overhead (cycle minus agency) | {number(engine['overhead_s'], 3)} | "
        f"{number(dockerd, 3)} | {ratio(engine['overhead_s'], dockerd)} |",
        "",
    ]


def logs_table(rows: list[dict], has_dockerd: bool) -> list[str]:
    lines = [
        "## Logs",
        "",
        "Console text read through `GET /containers/{id}/logs?stdout=1&stderr=1` "
        "from a stopped container, in MB of text per second; the last column "
        "copies the engine's response size over a plain loopback socket.",
        "",
        "| Log MB | follow | MB/s | Seconds | Loopback copy MB/s |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['size_mb']} | {'yes' if row['follow'] else 'no'} | "
            f"{triple(row, 'text_mb_per_s', 1)} | {triple(row, 'seconds', 3)} | "
            f"{number(row['loopback_copy']['text_mb_per_s'], 1)} |"
        )
    return lines + [""]


def busy_table(figures: dict, has_dockerd: bool) -> list[str]:
    return [
        "## `/_ping` under load",
        "",
        f"One client pings without pause while 5 containers are created and "
        f"started, two follow requests read {figures['log_mb']} MB logs and "
        f"one {figures['upload_bytes'] // MB} MiB image is uploaded.",
        "",
        "| Figure | Engine / dockerd (ratio) |",
        "|---|---:|",
        f"| `/_ping` median ms | {triple(figures, 'median_ms')} |",
        f"| `/_ping` p99 ms | {triple(figures, 'p99_ms')} |",
        f"| `/_ping` max ms | {triple(figures, 'max_ms')} |",
        f"| Pings | {triple(figures, 'count', 0)} |",
        f"| Busy period, s | {triple(figures, 'busy_seconds')} |",
        f"| CPU s per 1000 `/containers/json?all=1` afterwards | "
        f"{triple(figures, 'list_cpu_seconds_per_1000', 3)} |",
        "",
        "Failures: " + "; ".join(
            f"{name}: {', '.join(figures[name]['failures']) or 'none'}"
            for name in ("engine", "dockerd") if name in figures
        ),
        "",
    ]

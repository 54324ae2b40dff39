"""Resource statistics of SO3 containers, in the shape of Docker's stats API.

A sample reads the agency's slot list: the simulated agency reports the CPU
time (C{cpu_seconds}) and resident memory (C{rss}) of each ME's process.
The host's total CPU time comes from C{/proc/stat}, as dockerd reads it, so
clients compute the CPU percentage from two samples with Docker's formula.
"""

import os
from typing import Any, Callable

import attrs
from twisted.internet.defer import inlineCallbacks

from emiso.engine.timeutil import ZERO_TIME, format_rfc3339_nano_ns

NS_PER_SECOND = 1_000_000_000


@attrs.frozen
class Sample:
    """
    One reading of a running container.

    @ivar read_ns: wall-clock time of the reading, in nanoseconds.
    @ivar cpu_ns: CPU time used by the ME, in nanoseconds; 0 when the
        agency does not report it.
    @ivar system_ns: CPU time of the whole host since boot, in nanoseconds.
    @ivar memory: memory used by the ME in bytes.
    @ivar pid: the ME's process id, or C{None} when the agency has none.
    """

    read_ns: int
    cpu_ns: int
    system_ns: int
    memory: int
    pid: int | None


def read_system_cpu_ns(path: str = "/proc/stat") -> int:
    """
    Return the host's total CPU time in nanoseconds: the sum of the first
    seven fields of the C{cpu} line of C{/proc/stat} (user to softirq), as
    dockerd computes C{system_cpu_usage}.

    Reading procfs does not wait for a disk, so it may run in the reactor
    thread.
    """
    try:
        with open(path, encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return 0
    if not fields or fields[0] != "cpu":
        return 0
    ticks = sum(int(value) for value in fields[1:8])
    return ticks * NS_PER_SECOND // os.sysconf("SC_CLK_TCK")


class StatsSampler:
    """
    Take samples of containers and keep the last one of each, which becomes
    C{precpu_stats} of the next C{stream=false} request.

    @param agency: an L{emiso.agency.interfaces.IAgency} provider.
    @param clock: returns the current time in seconds since the epoch.
    @param system_cpu: returns the host CPU time in nanoseconds.
    """

    def __init__(
        self,
        agency: Any,
        clock: Callable[[], float],
        system_cpu: Callable[[], int] = read_system_cpu_ns,
    ) -> None:
        self._agency = agency
        self._clock = clock
        self._system_cpu = system_cpu
        self._last: dict[str, Sample] = {}

    @inlineCallbacks
    def sample(self, container: Any):
        """
        Read the container's ME from the agency's slot list.

        @return: a Deferred firing with a L{Sample}, or C{None} when the
            container's ME is not in a slot.
        """
        slots = (yield self._agency.list_slots())["slots"]
        entry = find_slot(slots, container.id)
        if entry is None:
            return None
        cpu_seconds = entry.get("cpu_seconds")
        rss = entry.get("rss")
        # NOTE: a backend that does not report the ME's resident memory
        # shows the whole ME size as used.
        memory = rss if isinstance(rss, int) else container.me_size
        return Sample(
            read_ns=int(self._clock() * NS_PER_SECOND),
            cpu_ns=int((cpu_seconds or 0) * NS_PER_SECOND),
            system_ns=self._system_cpu(),
            memory=memory,
            pid=entry.get("pid"),
        )

    def previous(self, container_id: str, sample: Sample) -> Sample | None:
        """
        Return the last sample kept for the container when it belongs to the
        same ME process as C{sample}, and keep C{sample} instead.
        """
        last = self._last.get(container_id)
        self._last[container_id] = sample
        if last is None or last.pid != sample.pid or last.read_ns >= sample.read_ns:
            return None
        return last

    def forget(self, container_id: str) -> None:
        """
        Drop the kept sample of a container.
        """
        self._last.pop(container_id, None)


def stats_body(
    container: Any, sample: Sample, previous: Sample | None, ncpu: int
) -> dict:
    """
    Build one object of C{GET /containers/{id}/stats} for a running container.

    C{memory_stats} has no C{stats} member, so Portainer and the docker CLI
    take C{usage} as the memory in use; C{limit} is the ME size.
    """
    return {
        "read": format_rfc3339_nano_ns(sample.read_ns),
        "preread": format_rfc3339_nano_ns(previous.read_ns) if previous else ZERO_TIME,
        "name": "/" + container.name,
        "id": container.id,
        "pids_stats": {"current": 1 if sample.pid else 0},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": _cpu_stats(sample, ncpu),
        "precpu_stats": _cpu_stats(previous, ncpu) if previous else _zero_cpu_stats(),
        "memory_stats": {"usage": sample.memory, "limit": container.me_size},
        "blkio_stats": _empty_blkio_stats(),
    }


def empty_stats_body(container: Any) -> dict:
    """
    Build the zeroed stats object dockerd sends for a container that is not
    running.
    """
    return {
        "read": ZERO_TIME,
        "preread": ZERO_TIME,
        "name": "/" + container.name,
        "id": container.id,
        "pids_stats": {},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": _zero_cpu_stats(),
        "precpu_stats": _zero_cpu_stats(),
        "memory_stats": {},
        "blkio_stats": _empty_blkio_stats(),
    }


def _cpu_stats(sample: Sample, ncpu: int) -> dict:
    return {
        # NOTE: the agency reports user plus system time of the ME as one
        # figure, so the kernel and user mode split is left at 0.
        "cpu_usage": {
            "total_usage": sample.cpu_ns,
            "usage_in_kernelmode": 0,
            "usage_in_usermode": 0,
        },
        "system_cpu_usage": sample.system_ns,
        "online_cpus": ncpu,
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }


def _zero_cpu_stats() -> dict:
    return {
        "cpu_usage": {
            "total_usage": 0,
            "usage_in_kernelmode": 0,
            "usage_in_usermode": 0,
        },
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }


def _empty_blkio_stats() -> dict:
    # An ME has no block devices; dockerd on cgroup v2 sends these as null.
    keys = (
        "io_service_bytes_recursive",
        "io_serviced_recursive",
        "io_queue_recursive",
        "io_service_time_recursive",
        "io_wait_time_recursive",
        "io_merged_recursive",
        "io_time_recursive",
        "sectors_recursive",
    )
    return {key: None for key in keys}


def top_body(container: Any, entry: dict) -> dict:
    """
    Build the body of C{GET /containers/{id}/top}: one row for the ME, from
    its slot entry in the agency's list.
    """
    cpu_seconds = int(entry.get("cpu_seconds") or 0)
    hours, rest = divmod(cpu_seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    rss = entry.get("rss")
    description = entry.get("shortdesc") or ""
    command = entry.get("name") or container.me_name
    if description:
        command = f"{command} ({description})"
    return {
        "Titles": ["PID", "SLOT", "ME STATE", "TIME", "RSS", "CMD"],
        "Processes": [
            [
                str(entry.get("pid") or "-"),
                str(entry["slot"]),
                str(entry.get("state", "")),
                f"{hours:02d}:{minutes:02d}:{seconds:02d}",
                # ps shows the resident set size in KiB.
                str(rss // 1024) if isinstance(rss, int) else "-",
                command,
            ]
        ],
    }


def find_slot(slots: list[dict], container_id: str) -> dict | None:
    """
    Return the slot entry whose token is the container's id, or C{None}.
    """
    for entry in slots:
        if entry.get("token") == container_id and entry.get("state") != "dead":
            return entry
    return None

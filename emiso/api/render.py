"""Docker Engine API 1.44 bodies built from the engine's containers and images."""

import os
import platform
import time
from typing import Any

from emiso import __version__
from emiso.engine.states import state_flags, status_text
from emiso.engine.timeutil import format_rfc3339_nano

#: The newest and oldest Docker Engine API versions the engine serves.
API_VERSION = "1.44"
MIN_API_VERSION = "1.24"

#: The Docker release whose API the engine follows (Docker 25.0 is API 1.44).
DOCKER_COMPATIBLE_VERSION = "25.0.0"

_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm"}


def container_summary(container: Any, image: Any, now: float) -> dict:
    """
    Build one entry of C{GET /containers/json}.
    """
    return {
        "Id": container.id,
        "Names": ["/" + container.name],
        "Image": container.image_ref,
        "ImageID": container.image_id,
        "Command": _command_text(container),
        "Created": int(container.created),
        "Ports": [],
        "Labels": container_labels(container),
        "State": container.state,
        "Status": _status(container, now),
        "HostConfig": {"NetworkMode": "none"},
        "NetworkSettings": {"Networks": {}},
        "Mounts": [],
    }


def container_inspect(container: Any, image: Any, now: float) -> dict:
    """
    Build the body of C{GET /containers/{id}/json}.

    SO3 facts (slot, ME state, ME name, SPID, memory size) are in the
    container's C{org.soo.*} labels, which the engine keeps current.
    """
    flags = state_flags(container.state)
    image_config = image_container_config(image) if image is not None else {}
    return {
        "Id": container.id,
        "Created": format_rfc3339_nano(container.created),
        "Path": "/inject",
        "Args": [container.image_ref],
        "State": {
            "Status": container.state,
            **flags,
            "Pid": 0,
            "ExitCode": container.exit_code,
            "Error": container.error,
            "StartedAt": format_rfc3339_nano(container.started_at),
            "FinishedAt": format_rfc3339_nano(container.finished_at),
        },
        "Image": container.image_id,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": container.log_path,
        "Name": "/" + container.name,
        "RestartCount": container.restart_count,
        "Driver": "so3",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": _host_config(container),
        "GraphDriver": {"Name": "so3", "Data": {"Image": image.path if image else ""}},
        "Mounts": [],
        "Config": {
            "Hostname": container.id[:12],
            "Domainname": "",
            "User": "",
            "AttachStdin": bool(container.config.get("AttachStdin")),
            "AttachStdout": False,
            "AttachStderr": False,
            "Tty": False,
            "OpenStdin": bool(container.config.get("OpenStdin")),
            "StdinOnce": bool(container.config.get("StdinOnce")),
            "Env": list(container.config.get("Env") or []),
            "Cmd": list(container.config.get("Cmd") or []),
            "Image": container.image_ref,
            "Volumes": None,
            "WorkingDir": "",
            "Entrypoint": None,
            "OnBuild": None,
            "Labels": {**image_config.get("Labels", {}), **container_labels(container)},
            "StopSignal": "SIGTERM",
        },
        "NetworkSettings": {
            "Bridge": "",
            "SandboxID": "",
            "SandboxKey": "",
            "Ports": {},
            "HairpinMode": False,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None,
            "EndpointID": "",
            "Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "IPAddress": "",
            "IPPrefixLen": 0,
            "IPv6Gateway": "",
            "MacAddress": "",
            "Networks": {},
        },
    }


def container_labels(container: Any) -> dict[str, str]:
    """
    Return the container's labels with the current SO3 facts added: the
    slot and ME state while the ME is in a slot, the ME name, SPID and
    memory size.
    """
    labels = dict(container.labels)
    if container.me_name:
        labels["org.soo.me.name"] = container.me_name
    if container.spid:
        labels["org.soo.me.spid"] = f"0x{container.spid:016x}"
    if container.me_size:
        labels["org.soo.me.domain-size"] = str(container.me_size)
    if container.slot is not None:
        labels["org.soo.me.slot"] = str(container.slot)
    if container.me_state:
        labels["org.soo.me.state"] = container.me_state
    return labels


def image_summary(image: Any, containers: int) -> dict:
    """
    Build one entry of C{GET /images/json}.
    """
    return {
        "Id": image.id,
        "ParentId": "",
        "RepoTags": list(image.repo_tags),
        "RepoDigests": [],
        "Created": int(image.created),
        "Size": image.size,
        "SharedSize": -1,
        "Labels": dict(image.labels),
        "Containers": containers,
    }


def image_inspect(image: Any) -> dict:
    """
    Build the body of C{GET /images/{name}/json}.
    """
    kernel = image.fit.kernel()
    return {
        "Id": image.id,
        "RepoTags": list(image.repo_tags),
        "RepoDigests": [],
        "Parent": "",
        "Comment": image.fit.description,
        "Created": format_rfc3339_nano(image.created),
        "DockerVersion": "",
        "Author": "",
        "Config": image_container_config(image),
        "Architecture": _fit_arch(kernel.arch if kernel else ""),
        "Os": "linux",
        "Size": image.size,
        "VirtualSize": image.size,
        "GraphDriver": {"Name": "so3", "Data": {"Path": image.path}},
        "RootFS": {"Type": "layers", "Layers": []},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    }


def image_container_config(image: Any) -> dict:
    """
    Build the C{Config} object of an image: no command, no environment,
    the SO3 facts as labels.
    """
    return {
        "Hostname": "",
        "Domainname": "",
        "User": "",
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "Env": [],
        "Cmd": None,
        "Image": "",
        "Volumes": None,
        "WorkingDir": "",
        "Entrypoint": None,
        "OnBuild": None,
        "Labels": dict(image.labels),
    }


def version_body(kernel_version: str, experimental: bool) -> dict:
    """
    Build the body of C{GET /version}.
    """
    arch = _GOARCH.get(platform.machine(), platform.machine())
    details = {
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "Arch": arch,
        "Os": "linux",
        "GitCommit": "",
        "GoVersion": "",
        "KernelVersion": kernel_version,
        "BuildTime": "",
        "Experimental": "true" if experimental else "false",
    }
    return {
        "Platform": {"Name": "EMISO engine"},
        "Components": [
            {"Name": "Engine", "Version": __version__, "Details": details},
        ],
        "Version": __version__,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "python" + platform.python_version(),
        "Os": "linux",
        "Arch": arch,
        "KernelVersion": kernel_version,
        "Experimental": experimental,
        "BuildTime": "",
    }


def info_body(
    *,
    engine_id: str,
    counts: dict[str, int],
    images: int,
    data_dir: str,
    host: dict,
    agency: dict,
    experimental: bool,
) -> dict:
    """
    Build the body of C{GET /info}.

    @param counts: containers per Docker state.
    @param host: C{ncpu}, C{mem_total}, C{kernel}, C{os}, C{name}.
    @param agency: C{backend}, C{degraded}, C{slots_used}.
    """
    total = sum(counts.values())
    running = counts.get("running", 0)
    paused = counts.get("paused", 0)
    driver_status = [
        ["Agency backend", agency["backend"]],
        ["ME slots in use", f"{agency['slots_used']} of 5"],
        ["Agency degraded", "true" if agency["degraded"] else "false"],
    ]
    return {
        "ID": engine_id,
        "Containers": total,
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": total - running - paused,
        "Images": images,
        "Driver": "so3",
        "DriverStatus": driver_status,
        "DockerRootDir": data_dir,
        "Plugins": {
            "Volume": [],
            "Network": [],
            "Authorization": None,
            "Log": ["json-file"],
        },
        "MemoryLimit": False,
        "SwapLimit": False,
        "KernelMemoryTCP": False,
        "CpuCfsPeriod": False,
        "CpuCfsQuota": False,
        "CPUShares": False,
        "CPUSet": False,
        "PidsLimit": False,
        "OomKillDisable": False,
        "IPv4Forwarding": False,
        "BridgeNfIptables": False,
        "BridgeNfIp6tables": False,
        "Debug": False,
        "NFd": _count_fds(),
        "NGoroutines": 0,
        "SystemTime": format_rfc3339_nano(time.time()),
        "LoggingDriver": "json-file",
        "CgroupDriver": "none",
        "CgroupVersion": "2",
        "NEventsListener": 0,
        "KernelVersion": host["kernel"],
        "OperatingSystem": host["os"],
        "OSVersion": host.get("os_version", ""),
        "OSType": "linux",
        "Architecture": platform.machine(),
        "IndexServerAddress": "",
        "RegistryConfig": None,
        "NCPU": host["ncpu"],
        "MemTotal": host["mem_total"],
        "GenericResources": None,
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": host["name"],
        "Labels": [],
        "ExperimentalBuild": experimental,
        "ServerVersion": __version__,
        "Runtimes": {},
        "DefaultRuntime": "so3",
        "Swarm": {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "inactive",
            "ControlAvailable": False,
            "Error": "",
            "RemoteManagers": None,
        },
        "LiveRestoreEnabled": True,
        "Isolation": "",
        "InitBinary": "",
        "ContainerdCommit": {"ID": "", "Expected": ""},
        "RuncCommit": {"ID": "", "Expected": ""},
        "InitCommit": {"ID": "", "Expected": ""},
        "SecurityOptions": [],
        "Warnings": _agency_warnings(agency),
    }


def _agency_warnings(agency: dict) -> list[str] | None:
    if agency["degraded"]:
        return ["WARNING: the agency is degraded: a driver call was abandoned"]
    return None


def _count_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _status(container: Any, now: float) -> str:
    return status_text(
        container.state,
        container.me_state,
        container.started_at,
        container.finished_at,
        container.exit_code,
        now,
        removing=container.removing,
    )


def _command_text(container: Any) -> str:
    return "/inject " + container.image_ref


def _host_config(container: Any) -> dict:
    restart_policy = container.host_config.get("RestartPolicy") or {}
    return {
        "Binds": None,
        "ContainerIDFile": "",
        "LogConfig": {"Type": "json-file", "Config": {}},
        "NetworkMode": "none",
        "PortBindings": {},
        "RestartPolicy": {
            "Name": restart_policy.get("Name") or "no",
            "MaximumRetryCount": int(restart_policy.get("MaximumRetryCount") or 0),
        },
        "AutoRemove": bool(container.host_config.get("AutoRemove")),
        "VolumeDriver": "",
        "VolumesFrom": None,
        "CapAdd": None,
        "CapDrop": None,
        "Dns": None,
        "DnsOptions": None,
        "DnsSearch": None,
        "ExtraHosts": None,
        "GroupAdd": None,
        "IpcMode": "",
        "Cgroup": "",
        "Links": None,
        "OomScoreAdj": 0,
        "PidMode": "",
        "Privileged": False,
        "PublishAllPorts": False,
        "ReadonlyRootfs": False,
        "SecurityOpt": None,
        "UTSMode": "",
        "UsernsMode": "",
        "ShmSize": 0,
        "Runtime": "so3",
        "Isolation": "",
        "CpuShares": 0,
        "Memory": container.me_size,
        "NanoCpus": 0,
        "CgroupParent": "",
        "BlkioWeight": 0,
        "BlkioWeightDevice": None,
        "BlkioDeviceReadBps": None,
        "BlkioDeviceWriteBps": None,
        "BlkioDeviceReadIOps": None,
        "BlkioDeviceWriteIOps": None,
        "CpuPeriod": 0,
        "CpuQuota": 0,
        "CpuRealtimePeriod": 0,
        "CpuRealtimeRuntime": 0,
        "CpusetCpus": "",
        "CpusetMems": "",
        "Devices": None,
        "DeviceCgroupRules": None,
        "DeviceRequests": None,
        "MemoryReservation": 0,
        "MemorySwap": 0,
        "OomKillDisable": False,
        "PidsLimit": None,
        "Ulimits": None,
        "CpuCount": 0,
        "CpuPercent": 0,
        "IOMaximumIOps": 0,
        "IOMaximumBandwidth": 0,
        "MaskedPaths": None,
        "ReadonlyPaths": None,
    }


def _fit_arch(arch: str) -> str:
    # FIT names 64-bit ARM "arm64" and 32-bit ARM "arm", as Docker does.
    return arch or "arm64"

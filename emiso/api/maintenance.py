"""Container rename and update, container and image pruning, and C{/system/df}."""

import re
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks

from emiso.api import render
from emiso.api.base import (
    app,
    image_or_none,
    json_body,
    json_response,
    parse_filters,
    query_arg,
)
from emiso.api.images import publish_removal
from emiso.engine.restart import validate_restart_policy
from emiso.engine.timeutil import parse_docker_time
from emiso.errors import EngineError, InvalidParameter, NoSuchContainer, NoSuchImage

#: C{POST /containers/{id}/update} fields that SO3 containers cannot honour;
#: a zero or empty value (what the docker CLI sends for unset flags) is
#: accepted, anything else is rejected.
RESOURCE_FIELDS = (
    "BlkioWeight",
    "BlkioWeightDevice",
    "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps",
    "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps",
    "CgroupParent",
    "CpuCount",
    "CpuPercent",
    "CpuPeriod",
    "CpuQuota",
    "CpuRealtimePeriod",
    "CpuRealtimeRuntime",
    "CpuShares",
    "CpusetCpus",
    "CpusetMems",
    "DeviceCgroupRules",
    "DeviceRequests",
    "Devices",
    "IOMaximumBandwidth",
    "IOMaximumIOps",
    "KernelMemory",
    "KernelMemoryTCP",
    "Memory",
    "MemoryReservation",
    "MemorySwap",
    "MemorySwappiness",
    "NanoCpus",
    "OomKillDisable",
    "PidsLimit",
    "Ulimits",
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_GO_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

PRUNE_FILTER_KEYS = frozenset({"until", "label", "label!"})
IMAGE_PRUNE_FILTER_KEYS = frozenset({"dangling", "until", "label", "label!"})


class MaintenanceRoutes:
    """
    C{/containers/{id}/rename}, C{/containers/{id}/update},
    C{/containers/prune}, C{/images/prune} and C{/system/df}.
    """

    app = app

    @app.route("/containers/<name>/rename", methods=["POST"])
    @inlineCallbacks
    def rename_container(self, request: Any, name: str):
        yield self._engine.containers.rename(name, query_arg(request, "name"))
        request.setResponseCode(204)
        return b""

    @app.route("/containers/<name>/update", methods=["POST"])
    @inlineCallbacks
    def update_container(self, request: Any, name: str):
        body = json_body(request)
        self._engine.containers.get(name)
        for field in RESOURCE_FIELDS:
            if body.get(field):
                raise InvalidParameter(
                    f"cannot update {field}: SO3 containers take their resources "
                    "from the ME image; only RestartPolicy can be updated"
                )
        if "RestartPolicy" in body:
            policy = validate_restart_policy(body["RestartPolicy"])
            yield self._engine.containers.update_restart_policy(name, policy)
        return json_response(request, {"Warnings": []})

    @app.route("/containers/prune", methods=["POST"])
    @inlineCallbacks
    def prune_containers(self, request: Any):
        engine = self._engine
        filters = parse_filters(request, PRUNE_FILTER_KEYS)
        deleted = []
        for container in engine.containers.list():
            if container.running or not _prune_matches(
                container.created, container.labels, filters
            ):
                continue
            try:
                yield engine.containers.remove(container.id, False)
            except (NoSuchContainer, EngineError):
                # Started or removed meanwhile: dockerd skips it too.
                continue
            deleted.append(container.id)
        engine.events.publish("container", "prune", "", {"reclaimed": 0})
        return json_response(
            request, {"ContainersDeleted": deleted or None, "SpaceReclaimed": 0}
        )

    @app.route("/images/prune", methods=["POST"])
    @inlineCallbacks
    def prune_images(self, request: Any):
        engine = self._engine
        filters = parse_filters(request, IMAGE_PRUNE_FILTER_KEYS)
        dangling_values = filters.get("dangling", ["true"])
        only_dangling = dangling_values[-1].lower() not in ("false", "0")
        used = {c.image_id for c in engine.containers.list()}
        deleted: list[dict] = []
        reclaimed = 0
        for image in engine.images.list():
            if image.id in used or (only_dangling and image.repo_tags):
                continue
            if not _prune_matches(image.created, image.labels, filters):
                continue
            try:
                items = yield engine.images.remove(image.id, True, self._image_user)
            except NoSuchImage:
                continue
            publish_removal(engine.events, image.id, image.id, items)
            deleted.extend(items)
            if any("Deleted" in item for item in items):
                reclaimed += image.size
        engine.events.publish("image", "prune", "", {"reclaimed": reclaimed})
        return json_response(
            request, {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed}
        )

    @app.route("/system/df", methods=["GET"])
    def disk_usage(self, request: Any) -> bytes:
        engine = self._engine
        now = time.time()
        usage: dict[str, int] = {}
        containers = []
        for container in engine.containers.list():
            usage[container.image_id] = usage.get(container.image_id, 0) + 1
            image = image_or_none(engine, container.image_id)
            item = render.container_summary(container, image, now)
            item["SizeRw"] = 0
            item["SizeRootFs"] = image.size if image else 0
            containers.append(item)
        images = [
            render.image_summary(image, usage.get(image.id, 0))
            for image in sorted(
                engine.images.list(), key=lambda i: i.created, reverse=True
            )
        ]
        body = {
            "LayersSize": sum(image["Size"] for image in images),
            "Images": images,
            "Containers": containers,
            "Volumes": [],
            "BuildCache": [],
        }
        return json_response(request, body)


def _prune_matches(created: float, labels: dict, filters: dict[str, list[str]]) -> bool:
    for value in filters.get("until", []):
        if created >= _until_seconds(value):
            return False
    for value in filters.get("label", []):
        if not _has_label(labels, value):
            return False
    for value in filters.get("label!", []):
        if _has_label(labels, value):
            return False
    return True


def _until_seconds(value: str) -> float:
    # dockerd takes a Go duration such as "24h" or "1h30m" as that long ago.
    text = value.strip()
    if text and _GO_DURATION.fullmatch(text):
        seconds = sum(
            float(number) * _DURATION_UNITS[unit]
            for number, unit in _DURATION_PART.findall(text)
        )
        return time.time() - seconds
    return parse_docker_time(text, "until")


def _has_label(labels: dict, expected: str) -> bool:
    if "=" in expected:
        key, value = expected.split("=", 1)
        return labels.get(key) == value
    return expected in labels

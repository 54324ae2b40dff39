"""Container routes: list, create, inspect, lifecycle, wait and logs."""

import json
import time
from typing import Any

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from emiso.api import render
from emiso.api.base import (
    JSON,
    app,
    ignore_cancel,
    image_or_none,
    invalid_filter,
    json_body,
    json_response,
    label_matches,
    no_content,
    parse_filters,
    query_arg,
    query_bool,
    query_int,
    version_at_least,
)
from emiso.api.checkpoints import require_experimental
from emiso.engine.logs import (
    LogFollower,
    LogOptions,
    LogStreamer,
    frame,
    read_log,
    thread_pool_reader,
)
from emiso.engine.restart import validate_restart_policy
from emiso.engine.states import validate_status_filter
from emiso.errors import InvalidParameter

log = Logger()

#: Create-body fields the engine keeps in the container record.
CREATE_FIELDS_KEPT = ("Env", "Cmd", "OpenStdin", "AttachStdin", "StdinOnce")

#: HostConfig settings that have no meaning for an ME, with the value that
#: means "not set"; create answers a warning for any other value.
IGNORED_HOST_CONFIG = {
    "Memory": 0,
    "MemorySwap": 0,
    "MemoryReservation": 0,
    "NanoCpus": 0,
    "CpuShares": 0,
    "CpuQuota": 0,
    "CpuPeriod": 0,
    "CpusetCpus": "",
    "Binds": None,
    "Mounts": None,
    "PortBindings": None,
    "PublishAllPorts": False,
    "Privileged": False,
    "Devices": None,
    "CapAdd": None,
    "Dns": None,
    "ExtraHosts": None,
}

#: Seconds a follow stream goes on after its container stopped, so the
#: ME's last console lines reach the client.
FOLLOW_GRACE = 0.5


class ContainerRoutes:
    """
    The C{/containers} routes.
    """

    app = app

    @app.route("/containers/json", methods=["GET"])
    def list_containers(self, request: Any) -> bytes:
        engine = self._engine
        show_all = query_bool(request, "all")
        limit = query_int(request, "limit", -1)
        filters = container_filters(request, engine.containers)
        now = time.time()
        containers = engine.containers.list()
        if not show_all and limit <= 0:
            # dockerd lists restarting containers as running ones.
            containers = [
                c for c in containers if c.running or c.state == "restarting"
            ]
        containers = [c for c in containers if container_matches(c, filters)]
        if limit > 0:
            containers = containers[:limit]
        body = []
        for container in containers:
            image = image_or_none(engine, container.image_id)
            item = render.container_summary(container, image, now)
            if query_bool(request, "size"):
                item["SizeRw"] = 0
                item["SizeRootFs"] = image.size if image else 0
            body.append(item)
        return json_response(request, body)

    @app.route("/containers/create", methods=["POST"])
    @inlineCallbacks
    def create_container(self, request: Any):
        body = json_body(request, self._max_body_size)
        image, labels, config, restart = validate_create_body(body)
        host_config = {"RestartPolicy": restart} if restart["Name"] != "no" else {}
        if auto_remove(body):
            host_config["AutoRemove"] = True
        container = yield self._engine.containers.create(
            query_arg(request, "name") or None,
            image,
            labels,
            config,
            host_config,
        )
        request.setResponseCode(201)
        return json_response(
            request, {"Id": container.id, "Warnings": create_warnings(body)}
        )

    @app.route("/containers/<name>/json", methods=["GET"])
    def inspect_container(self, request: Any, name: str) -> bytes:
        engine = self._engine
        container = engine.containers.get(name)
        image = image_or_none(engine, container.image_id)
        body = render.container_inspect(container, image, time.time())
        if query_bool(request, "size"):
            body["SizeRw"] = 0
            body["SizeRootFs"] = image.size if image else 0
        return json_response(request, body)

    @app.route("/containers/<name>/start", methods=["POST"])
    def start_container(self, request: Any, name: str):
        checkpoint = query_arg(request, "checkpoint")
        if checkpoint:
            require_experimental(self._engine)
            starting = self._engine.checkpoints.start(
                name, checkpoint, query_arg(request, "checkpoint-dir")
            )
            return no_content(request, starting)
        return no_content(request, self._engine.containers.start(name))

    @app.route("/containers/<name>/stop", methods=["POST"])
    def stop_container(self, request: Any, name: str):
        query_int(request, "t", -1)
        return no_content(request, self._engine.containers.stop(name))

    @app.route("/containers/<name>/restart", methods=["POST"])
    def restart_container(self, request: Any, name: str):
        query_int(request, "t", -1)
        return no_content(request, self._engine.containers.restart(name))

    @app.route("/containers/<name>/kill", methods=["POST"])
    def kill_container(self, request: Any, name: str):
        signal_name = query_arg(request, "signal") or "SIGKILL"
        return no_content(request, self._engine.containers.kill(name, signal_name))

    @app.route("/containers/<name>/pause", methods=["POST"])
    def pause_container(self, request: Any, name: str):
        return no_content(request, self._engine.containers.pause(name))

    @app.route("/containers/<name>/unpause", methods=["POST"])
    def unpause_container(self, request: Any, name: str):
        return no_content(request, self._engine.containers.unpause(name))

    @app.route("/containers/<name>", methods=["DELETE"])
    def remove_container(self, request: Any, name: str):
        force = query_bool(request, "force")
        return no_content(request, self._engine.containers.remove(name, force))

    @app.route("/containers/<name>/wait", methods=["POST"])
    def wait_container(self, request: Any, name: str):
        condition = query_arg(request, "condition") or "not-running"
        waiting = self._engine.containers.wait(name, condition)
        # Docker sends the headers at once and the body when the wait ends,
        # so a client can start the container after its wait is in place.
        request.setHeader(b"Content-Type", JSON)
        request.write(b"")
        request.notifyFinish().addErrback(lambda _: waiting.cancel())
        waiting.addCallback(lambda body: json.dumps(body).encode() + b"\n")
        waiting.addErrback(ignore_cancel)
        return waiting

    @app.route("/containers/<name>/logs", methods=["GET"])
    def container_logs(self, request: Any, name: str):
        engine = self._engine
        container = engine.containers.get(name)
        options = LogOptions.from_query(request.args)
        reader = thread_pool_reader(engine.reactor, engine.threadpool)
        content_type = b"application/vnd.docker.raw-stream"
        if version_at_least(request, (1, 42)):
            content_type = b"application/vnd.docker.multiplexed-stream"
        request.setHeader(b"Content-Type", content_type)
        if options.follow:
            return self._follow(request, engine, container, options, reader)
        if options.tail is not None:
            d = read_log(container.log_path, options, reader)
            d.addCallback(b"".join)
            return d
        streamer = LogStreamer(container.log_path, options, request.write, reader)
        request.registerProducer(streamer, True)
        request.notifyFinish().addErrback(lambda _: streamer.stopProducing())
        d = streamer.run()
        d.addBoth(lambda result: (request.unregisterProducer(), result)[1])
        d.addCallback(lambda _: b"")
        d.addErrback(log_error_in_band, request, container.id)
        return d

    def _follow(self, request: Any, engine: Any, container: Any, options: Any,
                reader: Any) -> Deferred:
        """
        Stream the log until the container stops, C{until} passes or the
        client goes away.
        """
        # Docker flushes the headers before the first line.
        request.write(b"")
        follower = LogFollower(
            container.log_path, options, engine.reactor, request.write, reader=reader
        )
        request.notifyFinish().addBoth(lambda _: follower.stop())
        initial = follower.start()
        if follower.streamer is not None:
            # A slow client pauses the reading of the initial part.
            request.registerProducer(follower.streamer, True)
            initial.addBoth(lambda result: (request.unregisterProducer(), result)[1])
        # A container that is not running appends nothing, so its stream
        # ends once the initial frames are written.
        grace = FOLLOW_GRACE if container.running else 0
        exited = engine.containers.wait(container.id, "not-running")

        def stop_later(_: object) -> None:
            engine.reactor.callLater(grace, follower.stop)

        def container_stopped(_: object) -> None:
            # The grace period starts after the initial frames, so that a
            # long log is sent whole, and gives the follower one more poll
            # for the ME's last lines.
            initial.addCallback(stop_later)

        exited.addCallbacks(container_stopped, ignore_cancel)
        done = follower.done
        done.addBoth(lambda result: (exited.cancel(), None)[1])
        return done


def log_error_in_band(failure: Any, request: Any, container_id: str) -> Any:
    """
    Send a log read error that happens after the first frame as a frame on
    stream 3, which the docker CLI and docker-py raise as an error; before
    the first frame the error stays an HTTP error response.
    """
    if not request.startedWriting:
        return failure
    log.failure("Reading the log of container {id} failed", failure,
                id=container_id[:12])
    message = f"error reading the log: {failure.getErrorMessage()}\n"
    request.write(frame("system", message.encode("utf-8", "replace")))
    return b""


def validate_create_body(body: dict) -> tuple[str, dict, dict, dict]:
    """
    Check the fields of a create body that the engine reads or keeps.

    @return: the image name, the labels, the kept config fields and the
        restart policy.
    @raise InvalidParameter: a field has the wrong type or value; the
        message names the field and the value.
    """
    image = body.get("Image")
    if image is None or image == "":
        raise InvalidParameter(
            "Config cannot be empty in order to create a container: Image is missing"
        )
    if not isinstance(image, str):
        raise InvalidParameter(f"invalid Image {json.dumps(image)}: must be a string")
    labels = body.get("Labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(v, str) for v in labels.values()
    ):
        raise InvalidParameter(
            f"invalid Labels {json.dumps(labels)}: must be an object of string values"
        )
    env = body.get("Env")
    if env is not None and not _string_list(env):
        raise InvalidParameter(
            f"invalid Env {json.dumps(env)}: must be an array of strings"
        )
    cmd = body.get("Cmd")
    if cmd is not None and not isinstance(cmd, str) and not _string_list(cmd):
        raise InvalidParameter(
            f"invalid Cmd {json.dumps(cmd)}: must be a string or an array of strings"
        )
    for flag in ("OpenStdin", "AttachStdin", "StdinOnce", "Tty"):
        if flag in body and body[flag] is not None and not isinstance(body[flag], bool):
            raise InvalidParameter(
                f"invalid {flag} {json.dumps(body[flag])}: must be a boolean"
            )
    config = {key: body.get(key) for key in CREATE_FIELDS_KEPT if body.get(key)}
    if isinstance(config.get("Cmd"), str):
        config["Cmd"] = [config["Cmd"]]
    host_config = body.get("HostConfig") or {}
    if not isinstance(host_config, dict):
        raise InvalidParameter(
            f"invalid HostConfig {json.dumps(host_config)}: must be an object"
        )
    restart = validate_restart_policy(host_config.get("RestartPolicy"))
    return image, labels, config, restart


def auto_remove(body: dict) -> bool:
    """
    Read C{HostConfig.AutoRemove} (C{docker run --rm}).

    @raise InvalidParameter: the value is not a boolean.
    """
    value = (body.get("HostConfig") or {}).get("AutoRemove", False)
    if not isinstance(value, bool):
        raise InvalidParameter(
            f"invalid HostConfig.AutoRemove {json.dumps(value)}: must be a boolean"
        )
    if value and validate_restart_policy(
        (body.get("HostConfig") or {}).get("RestartPolicy")
    )["Name"] != "no":
        raise InvalidParameter(
            "conflicting options: cannot specify both a restart policy and AutoRemove"
        )
    return value


def create_warnings(body: dict) -> list[str]:
    """
    List the create settings an SO3 container ignores, one warning each.
    """
    host_config = body.get("HostConfig") or {}
    warnings = []
    for name, unset in IGNORED_HOST_CONFIG.items():
        value = host_config.get(name, unset)
        if value not in (unset, None, [], {}, "", 0, False):
            warnings.append(
                f"HostConfig.{name} is ignored: SO3 containers take their "
                "resources from the ME image and have no mounts, ports or devices"
            )
    if body.get("Tty"):
        warnings.append(
            "Tty is ignored: an ME console has no terminal, so the output is "
            "multiplexed (Config.Tty is false)"
        )
    return warnings


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


#: The container list's filter keys, as dockerd accepts them.
CONTAINER_FILTER_KEYS = {
    "ancestor", "before", "exited", "health", "id", "is-task", "isolation",
    "label", "name", "network", "since", "status", "volume",
}  # fmt: skip

#: C{health} filter values dockerd accepts.
HEALTH_VALUES = {"starting", "healthy", "unhealthy", "none"}


@attrs.frozen
class ContainerFilters:
    """
    The parsed C{filters} of C{GET /containers/json}.

    @ivar values: the filter values by key.
    @ivar before: list only containers created before this container.
    @ivar since: list only containers created after this container.
    @ivar exited: list only stopped containers that exited with one of
        these codes (no restriction when empty).
    """

    values: dict[str, list[str]]
    before: Any = None
    since: Any = None
    exited: tuple[int, ...] = ()


def container_filters(request: Any, containers: Any) -> ContainerFilters:
    """
    Parse and check the C{filters} parameter of the container list.

    @param containers: the container manager, which resolves C{before} and
        C{since} names.
    @raise NoSuchContainer: C{before} or C{since} names no container.
    """
    filters = parse_filters(request, CONTAINER_FILTER_KEYS)
    for value in filters.get("status", []):
        validate_status_filter(value)
    exited = []
    for value in filters.get("exited", []):
        try:
            exited.append(int(value))
        except ValueError:
            raise invalid_filter("exited", value)
    for value in filters.get("health", []):
        if value not in HEALTH_VALUES:
            raise invalid_filter("health", value)
    for value in filters.get("isolation", []):
        # Linux containers have the default isolation only.
        if value.lower() not in ("", "default"):
            raise invalid_filter("isolation", value)
    for value in filters.get("is-task", []):
        if value not in ("true", "false"):
            raise invalid_filter("is-task", value)
    # As in dockerd, the last value of before and since counts.
    before = since = None
    for value in filters.get("before", []):
        before = containers.get(value)
    for value in filters.get("since", []):
        since = containers.get(value)
    return ContainerFilters(filters, before, since, tuple(exited))


def container_matches(container: Any, filters: ContainerFilters) -> bool:
    checks = {
        "id": lambda v: container.id.startswith(v),
        "name": lambda v: v.lstrip("/") in container.name,
        "status": lambda v: container.state == v,
        "label": lambda v: label_matches(container.labels, v),
        "ancestor": lambda v: v in (container.image_ref, container.image_id)
        or container.image_ref == v + ":latest"
        or container.image_id.startswith("sha256:" + v),
        # SO3 containers have no health check: "none" is true of them all.
        "health": lambda v: v == "none",
        # MEs are attached to no Docker network and mount no volume.
        "network": lambda v: False,
        "volume": lambda v: False,
        "isolation": lambda v: True,
        # No container is a swarm task.
        "is-task": lambda v: v == "false",
    }
    for key, values in filters.values.items():
        check = checks.get(key)
        if check is None or not values:
            continue
        if key == "label":
            if not all(check(v) for v in values):
                return False
        elif not any(check(v) for v in values):
            return False
    if filters.before is not None and not container.created < filters.before.created:
        return False
    if filters.since is not None and not container.created > filters.since.created:
        return False
    if filters.exited:
        stopped = not container.running and container.state != "restarting"
        if not (
            stopped
            and container.started_at is not None
            and container.exit_code in filters.exited
        ):
            return False
    return True

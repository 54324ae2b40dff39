"""The Docker Engine API subset, as a Klein application over the engine."""

import json
import os
import shutil
import tempfile
import time
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.resource import IResource
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from emiso.api import render
from emiso.api.versioning import VersionedRoot
from emiso.engine.logs import LogFollower, LogOptions, read_log, thread_pool_reader
from emiso.engine.states import validate_status_filter
from emiso.errors import EngineError, InvalidParameter, NoSuchImage, PayloadTooLarge

log = Logger()

JSON = b"application/json"

#: Docker's booleans in query strings: these values are false, anything else true.
_FALSE_WORDS = {"", "0", "no", "false", "none"}

_CREATE_FIELDS_KEPT = ("Env", "Cmd")

#: Seconds a follow stream goes on after its container stopped, so the
#: ME's last console lines reach the client.
FOLLOW_GRACE = 0.5


class DockerAPI:
    """
    The routes of the Docker Engine API that SO3 containers support.

    @param engine: the L{emiso.engine.engine.Engine}.
    """

    app = Klein()

    def __init__(self, engine: Any, max_body_size: int = 256 * 1024 * 1024) -> None:
        self._engine = engine
        self._max_body_size = max_body_size

    def resource(self) -> IResource:
        """
        Return the web resource that serves the API with and without a
        version prefix.
        """
        return VersionedRoot(self.app.resource(), self._engine.config.experimental)

    # Errors

    @app.handle_errors(EngineError)
    def engine_error(self, request: Any, failure: Any) -> bytes:
        error = failure.value
        if error.status >= 500:
            log.error(
                "{method} {path} failed: {error}",
                method=request.method.decode(),
                path=request.path.decode(errors="replace"),
                error=error,
            )
        return _error(request, error.status, error.message)

    @app.handle_errors(RouteNotFound)
    def route_not_found(self, request: Any, failure: Any) -> bytes:
        return _error(request, 404, "page not found")

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: Any, failure: Any) -> bytes:
        return _error(request, 404, "page not found")

    # System

    @app.route("/_ping", methods=["GET", "HEAD"])
    def ping(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache, no-store, must-revalidate")
        request.setHeader(b"Pragma", b"no-cache")
        request.setHeader(b"Builder-Version", b"1")
        request.setHeader(b"Swarm", b"inactive")
        if request.method == b"HEAD":
            request.setHeader(b"Content-Length", b"0")
            return b""
        return b"OK"

    @app.route("/version", methods=["GET"])
    def version(self, request: Any) -> bytes:
        body = render.version_body(
            self._engine.host["kernel"], self._engine.config.experimental
        )
        return _json(request, body)

    @app.route("/info", methods=["GET"])
    def info(self, request: Any) -> bytes:
        engine = self._engine
        slots_used = sum(1 for c in engine.containers.list() if c.slot is not None)
        body = render.info_body(
            engine_id=engine.engine_id,
            counts=engine.containers.counts(),
            images=len(engine.images.list()),
            data_dir=engine.config.data_dir,
            host=engine.host,
            agency={
                "backend": engine.config.agency,
                "degraded": bool(getattr(engine.agency, "degraded", False)),
                "slots_used": slots_used,
            },
            experimental=engine.config.experimental,
        )
        return _json(request, body)

    # Images

    @app.route("/images/json", methods=["GET"])
    def list_images(self, request: Any) -> bytes:
        engine = self._engine
        usage: dict[str, int] = {}
        for container in engine.containers.list():
            usage[container.image_id] = usage.get(container.image_id, 0) + 1
        images = sorted(engine.images.list(), key=lambda i: i.created, reverse=True)
        body = [render.image_summary(i, usage.get(i.id, 0)) for i in images]
        return _json(request, body)

    @app.route("/images/<path:name>/json", methods=["GET"])
    def inspect_image(self, request: Any, name: str) -> bytes:
        image = self._engine.images.get(name)
        return _json(request, render.image_inspect(image))

    @app.route("/images/<path:name>/history", methods=["GET"])
    def image_history(self, request: Any, name: str) -> bytes:
        image = self._engine.images.get(name)
        body = [
            {
                "Id": image.id,
                "Created": int(image.created),
                "CreatedBy": "mkimage: " + image.fit.description,
                "Tags": list(image.repo_tags) or None,
                "Size": image.size,
                "Comment": "SO3 FIT image",
            }
        ]
        return _json(request, body)

    @app.route("/images/<path:name>", methods=["DELETE"])
    @inlineCallbacks
    def remove_image(self, request: Any, name: str):
        engine = self._engine
        force = _bool_arg(request, "force")
        image = engine.images.get(name)
        items = yield engine.images.remove(
            name, force, lambda image_id: engine.containers.uses_image(image_id) is not None
        )
        for item in items:
            if "Untagged" in item:
                engine.events.publish("image", "untag", image.id, {"name": item["Untagged"]})
            if "Deleted" in item:
                engine.events.publish("image", "delete", image.id, {"name": name})
        return _json(request, items)

    @app.route("/images/<path:name>/tag", methods=["POST"])
    @inlineCallbacks
    def tag_image(self, request: Any, name: str):
        repo = _arg(request, "repo")
        tag = _arg(request, "tag") or None
        if not repo:
            raise InvalidParameter("repository name must not be empty")
        repo, tag = _split_reference(repo, tag)
        image = yield self._engine.images.tag(name, repo, tag)
        self._engine.events.publish(
            "image", "tag", image.id, {"name": f"{repo}:{tag or 'latest'}"}
        )
        request.setResponseCode(201)
        return b""

    @app.route("/images/create", methods=["POST"])
    @inlineCallbacks
    def create_image(self, request: Any):
        from_src = _arg(request, "fromSrc")
        from_image = _arg(request, "fromImage")
        if from_src != "-":
            reference = from_image or from_src
            if from_image:
                tag = _arg(request, "tag")
                if tag and ":" not in from_image.rsplit("/", 1)[-1]:
                    reference = f"{from_image}:{tag}"
                raise NoSuchImage(
                    f"{reference}: SO3 images cannot be pulled from a registry; "
                    "import the .itb file with docker import or docker load"
                )
            raise InvalidParameter(
                f"fromSrc={from_src!r} is not supported: send the .itb file as the "
                "request body with fromSrc=-"
            )
        repo, tag = _split_reference(_arg(request, "repo"), _arg(request, "tag") or None)
        upload = yield self._spool_body(request)
        try:
            image = yield self._engine.images.import_image(upload, repo, tag)
        finally:
            _remove_quietly(upload)
        self._engine.events.publish(
            "image", "import", image.id, {"name": f"{repo}:{tag or 'latest'}" if repo else ""}
        )
        request.setHeader(b"Content-Type", JSON)
        return json.dumps({"status": image.id}).encode() + b"\r\n"

    @app.route("/images/load", methods=["POST"])
    @inlineCallbacks
    def load_images(self, request: Any):
        upload = yield self._spool_body(request)
        try:
            images = yield self._engine.images.load_tar(upload)
        finally:
            _remove_quietly(upload)
        request.setHeader(b"Content-Type", JSON)
        lines = []
        for image in images:
            loaded = image.repo_tags[0] if image.repo_tags else image.id
            self._engine.events.publish("image", "load", image.id, {"name": loaded})
            line = f"Loaded image: {loaded}\n" if image.repo_tags else (
                f"Loaded image ID: {image.id}\n"
            )
            lines.append(json.dumps({"stream": line}).encode() + b"\n")
        return b"".join(lines)

    # Containers

    @app.route("/containers/json", methods=["GET"])
    def list_containers(self, request: Any) -> bytes:
        engine = self._engine
        show_all = _bool_arg(request, "all")
        limit = _int_arg(request, "limit", -1)
        filters = _filters(request)
        now = time.time()
        containers = engine.containers.list()
        if not show_all and limit <= 0:
            containers = [c for c in containers if c.running]
        containers = [c for c in containers if _matches(c, filters)]
        if limit > 0:
            containers = containers[:limit]
        body = []
        for container in containers:
            image = _image_or_none(engine, container.image_id)
            item = render.container_summary(container, image, now)
            if _bool_arg(request, "size"):
                item["SizeRw"] = 0
                item["SizeRootFs"] = image.size if image else 0
            body.append(item)
        return _json(request, body)

    @app.route("/containers/create", methods=["POST"])
    @inlineCallbacks
    def create_container(self, request: Any):
        body = _json_body(request)
        image = body.get("Image")
        if not isinstance(image, str) or not image:
            raise InvalidParameter("Config cannot be empty in order to create a container")
        labels = body.get("Labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise InvalidParameter("Labels must be an object of string values")
        config = {key: body.get(key) for key in _CREATE_FIELDS_KEPT if body.get(key)}
        host_config = body.get("HostConfig") or {}
        if not isinstance(host_config, dict):
            raise InvalidParameter("HostConfig must be an object")
        restart = host_config.get("RestartPolicy") or {}
        container = yield self._engine.containers.create(
            _arg(request, "name") or None,
            image,
            labels,
            config,
            {"RestartPolicy": restart} if restart else {},
        )
        request.setResponseCode(201)
        return _json(request, {"Id": container.id, "Warnings": []})

    @app.route("/containers/<name>/json", methods=["GET"])
    def inspect_container(self, request: Any, name: str) -> bytes:
        engine = self._engine
        container = engine.containers.get(name)
        image = _image_or_none(engine, container.image_id)
        body = render.container_inspect(container, image, time.time())
        if _bool_arg(request, "size"):
            body["SizeRw"] = 0
            body["SizeRootFs"] = image.size if image else 0
        return _json(request, body)

    @app.route("/containers/<name>/start", methods=["POST"])
    def start_container(self, request: Any, name: str):
        return self._no_content(request, self._engine.containers.start(name))

    @app.route("/containers/<name>/stop", methods=["POST"])
    def stop_container(self, request: Any, name: str):
        _int_arg(request, "t", -1)
        return self._no_content(request, self._engine.containers.stop(name))

    @app.route("/containers/<name>/restart", methods=["POST"])
    def restart_container(self, request: Any, name: str):
        _int_arg(request, "t", -1)
        return self._no_content(request, self._engine.containers.restart(name))

    @app.route("/containers/<name>/kill", methods=["POST"])
    def kill_container(self, request: Any, name: str):
        signal_name = _arg(request, "signal") or "SIGKILL"
        return self._no_content(request, self._engine.containers.kill(name, signal_name))

    @app.route("/containers/<name>/pause", methods=["POST"])
    def pause_container(self, request: Any, name: str):
        return self._no_content(request, self._engine.containers.pause(name))

    @app.route("/containers/<name>/unpause", methods=["POST"])
    def unpause_container(self, request: Any, name: str):
        return self._no_content(request, self._engine.containers.unpause(name))

    @app.route("/containers/<name>", methods=["DELETE"])
    def remove_container(self, request: Any, name: str):
        force = _bool_arg(request, "force")
        return self._no_content(request, self._engine.containers.remove(name, force))

    @app.route("/containers/<name>/wait", methods=["POST"])
    def wait_container(self, request: Any, name: str):
        condition = _arg(request, "condition") or "not-running"
        waiting = self._engine.containers.wait(name, condition)
        # Docker sends the headers at once and the body when the wait ends,
        # so a client can start the container after its wait is in place.
        request.setHeader(b"Content-Type", JSON)
        request.write(b"")
        request.notifyFinish().addErrback(lambda _: waiting.cancel())
        waiting.addCallback(lambda body: json.dumps(body).encode() + b"\n")
        waiting.addErrback(_ignore_cancel)
        return waiting

    @app.route("/containers/<name>/logs", methods=["GET"])
    def container_logs(self, request: Any, name: str):
        engine = self._engine
        container = engine.containers.get(name)
        options = LogOptions.from_query(request.args)
        reader = thread_pool_reader(engine.reactor, engine.threadpool)
        content_type = b"application/vnd.docker.raw-stream"
        if _version_at_least(request, (1, 42)):
            content_type = b"application/vnd.docker.multiplexed-stream"
        request.setHeader(b"Content-Type", content_type)
        if not options.follow:
            d = read_log(container.log_path, options, reader)
            d.addCallback(b"".join)
            return d
        return self._follow(request, engine, container, options, reader)

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
        exited = engine.containers.wait(container.id, "not-running")

        def container_stopped(_: object) -> None:
            # Give the follower one more poll for the ME's last lines.
            engine.reactor.callLater(FOLLOW_GRACE, follower.stop)

        exited.addCallbacks(container_stopped, _ignore_cancel)
        request.notifyFinish().addBoth(lambda _: follower.stop())
        follower.start()
        done = follower.done
        done.addBoth(lambda result: (exited.cancel(), None)[1])
        return done

    # Helpers

    @inlineCallbacks
    def _no_content(self, request: Any, operation: Any):
        yield operation
        request.setResponseCode(204)
        return b""

    def _spool_body(self, request: Any):
        """
        Copy the request body into a temporary file in the image folder,
        in a worker thread; enforce the body size limit.
        """
        engine = self._engine
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body_size:
            raise PayloadTooLarge(
                f"request body of {int(length)} bytes is larger than the limit of "
                f"{self._max_body_size} bytes"
            )
        spool_dir = os.path.join(engine.config.image_dir, ".tmp")

        def copy() -> str:
            os.makedirs(spool_dir, exist_ok=True)
            request.content.seek(0)
            handle, path = tempfile.mkstemp(prefix="upload-", dir=spool_dir)
            with os.fdopen(handle, "wb") as upload:
                shutil.copyfileobj(request.content, upload, 1024 * 1024)
                size = upload.tell()
            if size > self._max_body_size:
                os.unlink(path)
                raise PayloadTooLarge(
                    f"request body of {size} bytes is larger than the limit of "
                    f"{self._max_body_size} bytes"
                )
            return path

        return deferToThreadPool(engine.reactor, engine.threadpool, copy)


def _json(request: Any, body: Any) -> bytes:
    request.setHeader(b"Content-Type", JSON)
    return json.dumps(body).encode() + b"\n"


def _error(request: Any, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    if status == 304:
        return b""
    return _json(request, {"message": message})


def _arg(request: Any, name: str) -> str:
    values = request.args.get(name.encode())
    if not values:
        return ""
    try:
        return values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidParameter(f"query parameter {name} is not valid UTF-8")


def _bool_arg(request: Any, name: str) -> bool:
    return _arg(request, name).strip().lower() not in _FALSE_WORDS


def _int_arg(request: Any, name: str, default: int) -> int:
    text = _arg(request, name)
    if text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidParameter(f"invalid value for {name}: {text!r} is not an integer")


def _json_body(request: Any) -> dict:
    request.content.seek(0)
    raw = request.content.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidParameter(f"invalid JSON body: {error}")
    if not isinstance(body, dict):
        raise InvalidParameter("invalid JSON body: expected an object")
    return body


def _filters(request: Any) -> dict[str, list[str]]:
    """
    Parse Docker's C{filters} parameter in both of its shapes:
    C{{"label": ["a=b"]}} and C{{"label": {"a=b": true}}}.
    """
    text = _arg(request, "filters")
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        raise InvalidParameter(f"invalid filter: {text}")
    if not isinstance(raw, dict):
        raise InvalidParameter(f"invalid filter: {text}")
    filters: dict[str, list[str]] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            filters[key] = [k for k, enabled in value.items() if enabled]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            filters[key] = list(value)
        else:
            raise InvalidParameter(f"invalid filter: {key}={value!r}")
    known = {"id", "name", "status", "label", "ancestor", "before", "since"}
    for key in filters:
        if key not in known:
            raise InvalidParameter(f"invalid filter '{key}'")
    for value in filters.get("status", []):
        validate_status_filter(value)
    return filters


def _matches(container: Any, filters: dict[str, list[str]]) -> bool:
    checks = {
        "id": lambda v: container.id.startswith(v),
        "name": lambda v: v.lstrip("/") in container.name,
        "status": lambda v: container.state == v,
        "label": lambda v: _label_matches(container.labels, v),
        "ancestor": lambda v: v in (container.image_ref, container.image_id)
        or container.image_ref == v + ":latest"
        or container.image_id.startswith("sha256:" + v),
    }
    for key, values in filters.items():
        check = checks.get(key)
        if check is None or not values:
            continue
        if key == "label":
            if not all(check(v) for v in values):
                return False
        elif not any(check(v) for v in values):
            return False
    return True


def _label_matches(labels: dict[str, str], wanted: str) -> bool:
    if "=" in wanted:
        key, value = wanted.split("=", 1)
        return labels.get(key) == value
    return wanted in labels


def _split_reference(repo: str, tag: str | None) -> tuple[str, str | None]:
    """
    Split C{NAME:TAG} as docker 28 sends it in C{repo}; a separate C{tag}
    wins when both are given.
    """
    if repo and ":" in repo.rsplit("/", 1)[-1]:
        name, _, embedded = repo.rpartition(":")
        return name, tag or embedded
    return repo, tag


def _image_or_none(engine: Any, image_id: str) -> Any:
    try:
        return engine.images.get(image_id)
    except NoSuchImage:
        return None


def _version_at_least(request: Any, wanted: tuple[int, int]) -> bool:
    major, minor = (int(part) for part in request.api_version.split("."))
    return (major, minor) >= wanted


def _ignore_cancel(failure: Any) -> None:
    failure.trap(CancelledError)
    return None


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

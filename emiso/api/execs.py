"""Exec, attach and resize routes: the ME console as Docker streams."""

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from emiso.api.base import (
    app,
    json_body,
    json_response,
    query_arg,
    query_bool,
)
from emiso.api.hijack import ResponseStream, hijack, stream_content_type, wants_upgrade
from emiso.engine.attach import AttachOptions, AttachSession
from emiso.engine.logs import thread_pool_reader
from emiso.errors import Conflict, InvalidParameter


class ExecRoutes:
    """
    The C{/containers/{id}/exec}, C{/exec/...}, C{/containers/{id}/attach}
    and C{/containers/{id}/resize} routes.
    """

    app = app

    @app.route("/containers/<name>/exec", methods=["POST"])
    def create_exec(self, request: Any, name: str) -> bytes:
        instance = self._engine.execs.create(name, json_body(request))
        request.setResponseCode(201)
        return json_response(request, {"Id": instance.id})

    @app.route("/exec/<exec_id>/json", methods=["GET"])
    def inspect_exec(self, request: Any, exec_id: str) -> bytes:
        instance = self._engine.execs.get(exec_id)
        body = {
            "ID": instance.id,
            "Running": instance.running,
            # None (null) until the exec has ended, as dockerd reports it.
            "ExitCode": instance.exit_code,
            "ProcessConfig": {
                "tty": instance.tty,
                "entrypoint": instance.cmd[0] if instance.cmd else "",
                "arguments": instance.cmd[1:],
                "privileged": instance.privileged,
                "user": instance.user,
            },
            "OpenStdin": instance.attach_stdin,
            "OpenStderr": instance.attach_stderr,
            "OpenStdout": instance.attach_stdout,
            "CanRemove": False,
            "ContainerID": instance.container_id,
            "DetachKeys": instance.detach_keys,
            # The command runs inside the ME, which has no host process id
            # of its own.
            "Pid": 0,
        }
        return json_response(request, body)

    @app.route("/exec/<exec_id>/resize", methods=["POST"])
    def resize_exec(self, request: Any, exec_id: str) -> bytes:
        height, width = terminal_size(request)
        self._engine.execs.resize(exec_id, height, width)
        return b""

    @app.route("/containers/<name>/resize", methods=["POST"])
    def resize_container(self, request: Any, name: str) -> bytes:
        terminal_size(request)
        container = self._engine.containers.get(name)
        if not container.running:
            raise Conflict(f"Container {container.id} is not running")
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b""

    @app.route("/exec/<exec_id>/start", methods=["POST"])
    @inlineCallbacks
    def start_exec(self, request: Any, exec_id: str):
        body = json_body(request)
        execs = self._engine.execs
        instance = execs.get(exec_id)
        session = yield execs.start(exec_id)
        if body.get("Detach"):
            # Output is discarded; the exec runs until its command ends.
            session.attach(_NullStream())
            session.input_ended()
            request.setResponseCode(200)
            return b""
        content_type = stream_content_type(request, instance.tty)
        if wants_upgrade(request):
            connection = hijack(request, content_type, self._engine.reactor)
            session.attach(connection)
            connection.set_receiver(session)
            return (yield _until_cancelled())
        stream = ResponseStream(request, content_type)
        session.attach(stream)
        stream.set_receiver(session)
        yield stream.finished
        return None

    @app.route("/containers/<name>/attach", methods=["POST"])
    def attach_container(self, request: Any, name: str):
        engine = self._engine
        container = engine.containers.get(name)
        if container.state == "paused":
            raise Conflict(
                f"container {container.id} is paused, unpause the container "
                "before attach"
            )
        options = AttachOptions(
            logs=query_bool(request, "logs"),
            stream=query_bool(request, "stream"),
            stdin=query_bool(request, "stdin"),
            stdout=query_bool(request, "stdout"),
            stderr=query_bool(request, "stderr"),
        )
        session = AttachSession(
            engine.reactor,
            engine.containers,
            container,
            options,
            reader=thread_pool_reader(engine.reactor, engine.threadpool),
        )
        # Config.Tty is always false for SO3 containers, so the console
        # lines go out as stdcopy frames.
        content_type = stream_content_type(request, False)
        if wants_upgrade(request):
            connection = hijack(request, content_type, self._engine.reactor)
            session.attach(connection)
            connection.set_receiver(session)
            return _until_cancelled()
        stream = ResponseStream(request, content_type)
        session.attach(stream)
        stream.set_receiver(session)
        return stream.finished.addCallback(lambda _: None)


def terminal_size(request: Any) -> tuple[int, int]:
    """
    Read the C{h} and C{w} query parameters of a resize request.

    @raise InvalidParameter: a value is missing or not a non-negative integer.
    """
    sizes = []
    for name in ("h", "w"):
        text = query_arg(request, name)
        if not text.isdigit():
            raise InvalidParameter(
                f"invalid value for {name}: {text!r} is not a non-negative integer"
            )
        sizes.append(int(text))
    return sizes[0], sizes[1]


def _until_cancelled() -> Deferred:
    """
    Return a Deferred for a hijacked request that never fires by itself.

    Klein cancels it when the connection ends; firing it earlier would make
    Klein write a response head on a connection that carries a raw stream.
    """
    return Deferred()


class _NullStream:
    """A stream that drops what is written to it (detached exec start)."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

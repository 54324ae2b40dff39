"""Container statistics (C{/containers/{id}/stats}) and the ME process row (C{/top})."""

import json
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger

from emiso.api.base import JSON, app, json_response, query_arg, query_bool
from emiso.engine.stats import (
    empty_stats_body,
    find_slot,
    stats_body,
    top_body,
)
from emiso.errors import Conflict, EngineError, InvalidParameter, NoSuchContainer

log = Logger()

#: Seconds between two objects of a C{stream=1} response, as in dockerd.
STREAM_INTERVAL = 1.0


class StatsRoutes:
    """
    C{GET /containers/{id}/stats} and C{GET /containers/{id}/top}.
    """

    app = app

    @app.route("/containers/<name>/stats", methods=["GET"])
    def container_stats(self, request: Any, name: str):
        container = self._engine.containers.get(name)
        # Docker streams unless stream is given and false.
        stream = query_arg(request, "stream") == "" or query_bool(request, "stream")
        one_shot = query_bool(request, "one-shot")
        if stream and one_shot:
            raise InvalidParameter("cannot have stream=true and one-shot=true")
        request.setHeader(b"Content-Type", JSON)
        if not stream:
            d = self._stats_once(container, one_shot)
            d.addCallback(lambda body: json.dumps(body).encode() + b"\n")
            return d
        return _StatsStream(self._engine, request, container.id).start()

    @inlineCallbacks
    def _stats_once(self, container: Any, one_shot: bool):
        engine = self._engine
        if not container.running:
            return empty_stats_body(container)
        sample = yield engine.stats.sample(container)
        if sample is None:
            return empty_stats_body(container)
        previous = engine.stats.previous(container.id, sample)
        if previous is None and not one_shot:
            # As dockerd does, wait for a second sample so that the first
            # request already has a CPU delta.
            yield deferLater(engine.reactor, STREAM_INTERVAL, lambda: None)
            second = yield engine.stats.sample(container)
            if second is not None:
                previous = engine.stats.previous(container.id, second)
                sample = second
        return stats_body(container, sample, previous, engine.host["ncpu"])

    @app.route("/containers/<name>/top", methods=["GET"])
    @inlineCallbacks
    def container_top(self, request: Any, name: str):
        engine = self._engine
        container = engine.containers.get(name)
        if query_arg(request, "ps_args"):
            raise InvalidParameter(
                "ps_args is not supported: an SO3 container is one ME, not a "
                "process tree; call top without ps options"
            )
        if not container.running:
            raise Conflict(f"Container {container.id} is not running")
        slots = (yield engine.agency.list_slots())["slots"]
        entry = find_slot(slots, container.id)
        if entry is None:
            raise Conflict(f"Container {container.id} is not running")
        return json_response(request, top_body(container, entry))


class _StatsStream:
    """
    Write one stats object per second until the client goes away or the
    container is removed. A container that is not running gets zeroed
    objects, as dockerd sends them.
    """

    def __init__(self, engine: Any, request: Any, container_id: str) -> None:
        self._engine = engine
        self._request = request
        self._container_id = container_id
        self._previous = None
        self._call = None
        self._closed = False
        self.done: Deferred = Deferred()

    def start(self) -> Deferred:
        # Headers go out at once, before the first sample is read.
        self._request.write(b"")
        self._request.notifyFinish().addBoth(self._close)
        self._tick()
        return self.done

    def _tick(self) -> None:
        self._call = None
        d = self._next_body()
        d.addCallback(self._write)
        d.addErrback(self._failed)

    @inlineCallbacks
    def _next_body(self):
        engine = self._engine
        container = engine.containers.get(self._container_id)
        if not container.running:
            self._previous = None
            return empty_stats_body(container)
        sample = yield engine.stats.sample(container)
        if sample is None:
            self._previous = None
            return empty_stats_body(container)
        previous = self._previous
        if previous is not None and previous.pid != sample.pid:
            previous = None
        self._previous = sample
        return stats_body(container, sample, previous, engine.host["ncpu"])

    def _write(self, body: dict) -> None:
        if self._closed:
            return
        self._request.write(json.dumps(body).encode() + b"\n")
        self._call = self._engine.reactor.callLater(STREAM_INTERVAL, self._tick)

    def _failed(self, failure: Any) -> None:
        if failure.check(NoSuchContainer):
            self._close()
            return
        if failure.check(EngineError):
            log.warn(
                "Stats of container {id} failed: {error}",
                id=self._container_id[:12],
                error=failure.value,
            )
        else:
            log.failure(
                "Stats of container {id} failed", failure, id=self._container_id[:12]
            )
        self._close()

    def _close(self, _: object = None) -> None:
        if self._closed:
            return
        self._closed = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self.done.callback(b"")

"""System routes: ping, version and info."""

from typing import Any

from emiso.api import render
from emiso.api.base import app, json_response


class SystemRoutes:
    """
    C{/_ping}, C{/version} and C{/info}.
    """

    app = app

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
        return json_response(request, body)

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
        body["NEventsListener"] = engine.events.listener_count
        return json_response(request, body)

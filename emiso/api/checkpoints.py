"""Checkpoint routes: Docker's experimental checkpoint API over ME snapshots."""

import json
from typing import Any

from emiso.api.base import app, json_body, json_response, no_content, query_arg
from emiso.errors import EngineError, InvalidParameter


class ExperimentalDisabled(EngineError):
    """An experimental route was called while experimental features are off."""

    status = 501


def require_experimental(engine: Any) -> None:
    """
    @raise ExperimentalDisabled: the engine runs with C{--no-experimental}.
    """
    if not engine.config.experimental:
        raise ExperimentalDisabled(
            "checkpoints are an experimental feature, which this engine has "
            "turned off: start it without --no-experimental (or set "
            "experimental = true in its configuration file)"
        )


class CheckpointRoutes:
    """
    C{/containers/{id}/checkpoints} and C{/containers/{id}/checkpoints/{name}}.
    """

    app = app

    @app.route("/containers/<name>/checkpoints", methods=["POST"])
    def create_checkpoint(self, request: Any, name: str):
        require_experimental(self._engine)
        body = json_body(request)
        checkpoint_id = body.get("CheckpointID")
        if checkpoint_id is not None and not isinstance(checkpoint_id, str):
            raise InvalidParameter(
                f"invalid CheckpointID {json.dumps(checkpoint_id)}: must be a string"
            )
        if not checkpoint_id:
            raise InvalidParameter("CheckpointID is missing: name the checkpoint")
        checkpoint_dir = body.get("CheckpointDir") or ""
        if not isinstance(checkpoint_dir, str):
            raise InvalidParameter(
                f"CheckpointDir must be a string, not {checkpoint_dir!r}"
            )
        exit = body.get("Exit", False)
        if not isinstance(exit, bool):
            raise InvalidParameter(f"Exit must be true or false, not {exit!r}")
        d = self._engine.checkpoints.create(name, checkpoint_id, checkpoint_dir, exit)
        d.addCallback(lambda _: request.setResponseCode(201))
        d.addCallback(lambda _: b"")
        return d

    @app.route("/containers/<name>/checkpoints", methods=["GET"])
    def list_checkpoints(self, request: Any, name: str):
        require_experimental(self._engine)
        d = self._engine.checkpoints.list(name, query_arg(request, "dir"))
        d.addCallback(
            lambda names: json_response(request, [{"Name": item} for item in names])
        )
        return d

    @app.route("/containers/<name>/checkpoints/<checkpoint>", methods=["DELETE"])
    def delete_checkpoint(self, request: Any, name: str, checkpoint: str):
        require_experimental(self._engine)
        return no_content(
            request,
            self._engine.checkpoints.delete(name, checkpoint, query_arg(request, "dir")),
        )

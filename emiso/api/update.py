"""The engine's own route that moves a running container to a new image.

Docker has no route that changes a container's image, so this one lives
under C{/containers/{id}/so3/}: C{POST /containers/{id}/so3/update} with
the body C{{"Image": "name:tag", "MinReadySeconds": 5}}.
"""

from typing import Any

from twisted.internet.defer import inlineCallbacks

from emiso.api.base import app, json_body, json_response
from emiso.engine.update import DEFAULT_MIN_READY_SECONDS
from emiso.errors import InvalidParameter


class UpdateRoutes:
    """
    C{POST /containers/{id}/so3/update}.
    """

    app = app

    @app.route("/containers/<name>/so3/update", methods=["POST"])
    @inlineCallbacks
    def update_container_image(self, request: Any, name: str):
        body = json_body(request)
        image = body.get("Image")
        if not isinstance(image, str) or not image:
            raise InvalidParameter("Image is missing: give the new image as name:tag")
        min_ready = body.get("MinReadySeconds", DEFAULT_MIN_READY_SECONDS)
        result = yield self._engine.updates.update(name, image, min_ready)
        return json_response(
            request,
            {
                "Id": result.container_id,
                "Image": result.image_id,
                "PreviousImage": result.previous_image_id,
                "Warnings": [],
            },
        )

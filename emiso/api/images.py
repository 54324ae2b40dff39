"""Image routes: list, inspect, history, import, load, tag and remove."""

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks

from emiso.api import render
from emiso.api.base import (
    JSON,
    app,
    json_response,
    query_arg,
    query_bool,
    remove_quietly,
    spool_body,
)
from emiso.errors import InvalidParameter


class ImageRoutes:
    """
    The C{/images} routes. SO3 images are FIT files: they are imported or
    loaded, never pulled.
    """

    app = app

    def _image_user(self, image_id: str) -> str | None:
        """
        Return the id of a container created from the image, or C{None}.
        """
        container = self._engine.containers.uses_image(image_id)
        return container.id if container is not None else None

    @app.route("/images/json", methods=["GET"])
    def list_images(self, request: Any) -> bytes:
        engine = self._engine
        usage: dict[str, int] = {}
        for container in engine.containers.list():
            usage[container.image_id] = usage.get(container.image_id, 0) + 1
        images = sorted(engine.images.list(), key=lambda i: i.created, reverse=True)
        body = [render.image_summary(i, usage.get(i.id, 0)) for i in images]
        return json_response(request, body)

    @app.route("/images/<path:name>/json", methods=["GET"])
    def inspect_image(self, request: Any, name: str) -> bytes:
        image = self._engine.images.get(name)
        return json_response(request, render.image_inspect(image))

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
        return json_response(request, body)

    @app.route("/images/<path:name>", methods=["DELETE"])
    @inlineCallbacks
    def remove_image(self, request: Any, name: str):
        engine = self._engine
        force = query_bool(request, "force")
        image = engine.images.get(name)
        items = yield engine.images.remove(name, force, self._image_user)
        publish_removal(engine.events, image.id, name, items)
        return json_response(request, items)

    @app.route("/images/<path:name>/tag", methods=["POST"])
    @inlineCallbacks
    def tag_image(self, request: Any, name: str):
        repo = query_arg(request, "repo")
        tag = query_arg(request, "tag") or None
        if not repo:
            raise InvalidParameter("repository name must not be empty")
        repo, tag = split_reference(repo, tag)
        image = yield self._engine.images.tag(name, repo, tag, in_use=self._image_user)
        self._engine.events.publish(
            "image", "tag", image.id, {"name": f"{repo}:{tag or 'latest'}"}
        )
        request.setResponseCode(201)
        return b""

    @app.route("/images/create", methods=["POST"])
    @inlineCallbacks
    def create_image(self, request: Any):
        from_src = query_arg(request, "fromSrc")
        from_image = query_arg(request, "fromImage")
        if from_image:
            return self._pull_rejected(request, from_image)
        if from_src != "-":
            # NOTE: dockerd also downloads fromSrc URLs; the engine does not
            # fetch anything from the network.
            raise InvalidParameter(
                f"fromSrc={from_src!r} is not supported: the engine does not "
                "download images, send the .itb file as the request body with "
                "fromSrc=-"
            )
        repo, tag = split_reference(query_arg(request, "repo"), query_arg(request, "tag") or None)
        upload = yield spool_body(self._engine, request, self._max_body_size)
        try:
            image = yield self._engine.images.import_image(
                upload, repo, tag, in_use=self._image_user
            )
        finally:
            remove_quietly(upload)
        self._engine.events.publish(
            "image", "import", image.id, {"name": f"{repo}:{tag or 'latest'}" if repo else ""}
        )
        request.setHeader(b"Content-Type", JSON)
        return json.dumps({"status": image.id}).encode() + b"\r\n"

    def _pull_rejected(self, request: Any, from_image: str) -> bytes:
        reference = from_image
        tag = query_arg(request, "tag")
        if tag and ":" not in from_image.rsplit("/", 1)[-1]:
            reference = f"{from_image}:{tag}"
        request.setHeader(b"Content-Type", JSON)
        return pull_error_stream(reference) + b"\r\n"

    @app.route("/images/load", methods=["POST"])
    @inlineCallbacks
    def load_images(self, request: Any):
        upload = yield spool_body(self._engine, request, self._max_body_size)
        try:
            images = yield self._engine.images.load_tar(upload, in_use=self._image_user)
        finally:
            remove_quietly(upload)
        request.setHeader(b"Content-Type", JSON)
        # One JSON object per image: Portainer parses the body of a
        # single-image upload as one JSON value.
        lines = []
        for reference, image in images:
            self._engine.events.publish("image", "load", image.id, {"name": reference or image.id})
            if reference:
                line = f"Loaded image: {reference}\n"
            else:
                line = f"Loaded image ID: {image.id}\n"
            lines.append(json.dumps({"stream": line}).encode() + b"\n")
        return b"".join(lines)


def publish_removal(events: Any, image_id: str, name: str, items: list[dict]) -> None:
    """
    Publish the C{untag} and C{delete} events of an image removal.
    """
    for item in items:
        if "Untagged" in item:
            events.publish("image", "untag", image_id, {"name": item["Untagged"]})
        if "Deleted" in item:
            events.publish("image", "delete", image_id, {"name": name})


def pull_error_stream(reference: str) -> bytes:
    """
    Build the JSON stream of a rejected pull: one in-band error object, as
    dockerd sends a pull that fails after the response started, which the
    docker CLI and Portainer print.
    """
    message = (
        f"{reference}: SO3 images cannot be pulled from a registry; import the "
        ".itb file with docker import or docker load"
    )
    return json.dumps({"errorDetail": {"message": message}, "error": message}).encode()


#: Prefixes of Docker Hub references that name the same image as the bare
#: name: docker CLI 28 sends C{docker.io/library/NAME} in C{docker tag}.
_DEFAULT_REGISTRY_PREFIXES = ("docker.io/library/", "index.docker.io/library/")


def split_reference(repo: str, tag: str | None) -> tuple[str, str | None]:
    """
    Split C{NAME:TAG} as docker 28 sends it in C{repo}, without the default
    registry prefix; a separate C{tag} wins when both are given.
    """
    for prefix in _DEFAULT_REGISTRY_PREFIXES:
        if repo and repo.startswith(prefix):
            repo = repo[len(prefix):]
            break
    if repo and ":" in repo.rsplit("/", 1)[-1]:
        name, _, embedded = repo.rpartition(":")
        return name, tag or embedded
    return repo, tag

"""Image routes: list, inspect, history, import, load, tag and remove."""

import json
import re
import time
from typing import Any

import attrs
from twisted.internet.defer import inlineCallbacks

from emiso.api import render
from emiso.api.base import (
    JSON,
    app,
    invalid_filter,
    json_response,
    label_matches,
    parse_filters,
    query_arg,
    query_bool,
    remove_quietly,
    spool_body,
)
from emiso.engine.timeutil import parse_docker_time
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
        filters = image_filters(request, engine.images)
        usage: dict[str, int] = {}
        for container in engine.containers.list():
            usage[container.image_id] = usage.get(container.image_id, 0) + 1
        images = sorted(engine.images.list(), key=lambda i: i.created, reverse=True)
        body = []
        for image in images:
            shown = filters.select(image)
            if shown is not None:
                body.append(render.image_summary(shown, usage.get(image.id, 0)))
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


#: The image list's filter keys, as dockerd accepts them.
IMAGE_FILTER_KEYS = {"before", "dangling", "label", "reference", "since", "until"}

_GO_DURATION = re.compile(r"(?:\d+(?:\.\d*)?(?:ns|us|µs|ms|s|m|h))+")
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}  # fmt: skip


@attrs.frozen
class ImageFilters:
    """
    The parsed C{filters} of C{GET /images/json}.

    @ivar dangling: C{True} for untagged images only, C{False} for tagged
        images only, C{None} for both.
    @ivar references: C{reference} patterns; an image shows the tags that
        match one of them, and an image with none is left out.
    @ivar labels: C{label} filters, all of which an image must match.
    @ivar before: show only images created before this one.
    @ivar since: show only images created after this one.
    @ivar until: show only images created before this Unix time.
    """

    dangling: bool | None = None
    references: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    before: Any = None
    since: Any = None
    until: float | None = None

    def select(self, image: Any) -> Any:
        """
        Return the image as listed (its tags narrowed to the references
        that match), or C{None} when the filters leave it out.
        """
        if self.dangling is not None and self.dangling != (not image.repo_tags):
            return None
        if not all(label_matches(image.labels, wanted) for wanted in self.labels):
            return None
        if self.before is not None and not image.created < self.before.created:
            return None
        if self.since is not None and not image.created > self.since.created:
            return None
        if self.until is not None and not image.created < self.until:
            return None
        if not self.references:
            return image
        tags = tuple(t for t in image.repo_tags if self._reference_matches(t))
        if not tags:
            return None
        return attrs.evolve(image, repo_tags=tags)

    def _reference_matches(self, reference: str) -> bool:
        # dockerd matches the pattern against NAME:TAG, then against NAME.
        name = reference.rsplit(":", 1)[0] if ":" in reference.rsplit("/", 1)[-1] else reference
        return any(
            path_match(pattern, reference) or path_match(pattern, name)
            for pattern in self.references
        )


def image_filters(request: Any, images: Any) -> ImageFilters:
    """
    Parse and check the C{filters} parameter of the image list.

    @param images: the image store, which resolves C{before} and C{since}.
    @raise NoSuchImage: C{before} or C{since} names no image.
    @raise InvalidParameter: a key or value dockerd rejects.
    """
    filters = parse_filters(request, IMAGE_FILTER_KEYS)
    dangling = None
    if "dangling" in filters:
        values = set(filters["dangling"])
        false = bool(values & {"0", "false"})
        true = bool(values & {"1", "true"})
        if false == true:
            raise invalid_filter("dangling", "[" + " ".join(filters["dangling"]) + "]")
        dangling = true
    references = tuple(filters.get("reference", []))
    for pattern in references:
        try:
            path_match(pattern, "")
        except ValueError:
            raise invalid_filter("reference", pattern)
    # As in dockerd, the last value of before, since and until counts.
    before = since = until = None
    for value in filters.get("before", []):
        before = images.get(value)
    for value in filters.get("since", []):
        since = images.get(value)
    for value in filters.get("until", []):
        until = parse_until(value)
    return ImageFilters(
        dangling, references, tuple(filters.get("label", [])), before, since, until
    )


def parse_until(value: str) -> float:
    """
    Parse an C{until} filter value: a time as the events route accepts it,
    or a Go duration before now such as C{24h} or C{1h30m}.
    """
    if _GO_DURATION.fullmatch(value):
        seconds = sum(
            float(number) * _GO_UNITS[unit]
            for number, unit in _GO_DURATION_PART.findall(value)
        )
        return time.time() - seconds
    return parse_docker_time(value, "until")


def path_match(pattern: str, name: str) -> bool:
    """
    Match C{name} against a shell pattern as Go's C{path.Match} does: C{*}
    and C{?} do not match C{/}, C{[^...]} negates a class and C{\\}
    escapes the next character.

    @raise ValueError: the pattern is malformed.
    """
    return _pattern_regex(pattern).fullmatch(name) is not None


def _pattern_regex(pattern: str) -> re.Pattern:
    parts = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        i += 1
        if char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        elif char == "\\":
            if i == len(pattern):
                raise ValueError("syntax error in pattern")
            parts.append(re.escape(pattern[i]))
            i += 1
        elif char == "[":
            klass, i = _pattern_class(pattern, i)
            parts.append(klass)
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def _pattern_class(pattern: str, i: int) -> tuple[str, int]:
    """
    Translate the character class that starts at C{pattern[i]}, just after
    its C{[}; return the regex and the index after its C{]}.
    """
    negated = i < len(pattern) and pattern[i] == "^"
    if negated:
        i += 1
    ranges = []
    while True:
        if i >= len(pattern):
            raise ValueError("syntax error in pattern")
        if pattern[i] == "]" and ranges:
            return ("[^" if negated else "[") + "".join(ranges) + "]", i + 1
        low, i = _class_char(pattern, i)
        if i < len(pattern) and pattern[i] == "-":
            high, i = _class_char(pattern, i + 1)
            if high < low:
                raise ValueError("syntax error in pattern")
            ranges.append(re.escape(low) + "-" + re.escape(high))
        else:
            ranges.append(re.escape(low))


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    if i >= len(pattern) or pattern[i] in "-]":
        raise ValueError("syntax error in pattern")
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise ValueError("syntax error in pattern")
    return pattern[i], i + 1


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

"""The API version prefix (C{/v1.NN}) and the headers every response carries."""

import json
import re
from typing import Any

from twisted.web.resource import IResource, Resource

from emiso.api.render import API_VERSION, MIN_API_VERSION

_VERSION_SEGMENT = re.compile(rb"^v(\d+)\.(\d+)$")


def parse_version(text: str) -> tuple[int, int]:
    """
    Split an API version such as C{1.44} into a comparable tuple.
    """
    major, minor = text.split(".")
    return int(major), int(minor)


def version_error(requested: str) -> str | None:
    """
    Return Docker's message for a version outside the served range, or
    C{None} when the engine serves it.
    """
    wanted = parse_version(requested)
    if wanted < parse_version(MIN_API_VERSION):
        return (
            f"client version {requested} is too old. Minimum supported API "
            f"version is {MIN_API_VERSION}, please upgrade your client to a "
            "newer version"
        )
    if wanted > parse_version(API_VERSION):
        return (
            f"client version {requested} is too new. Maximum supported API "
            f"version is {API_VERSION}"
        )
    return None


class _VersionErrorResource(Resource):
    isLeaf = True

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__()
        self._message = message
        self._status = status

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self._status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"message": self._message}).encode() + b"\n"


class VersionedRoot(Resource):
    """
    Serve the same API with and without a C{/v1.NN} prefix.

    A request whose first segment is a version consumes it; any other
    request is passed on unchanged. The version in use is stored on the
    request as C{api_version}. Every response carries C{Api-Version},
    C{Ostype}, C{Server} and C{Docker-Experimental}, as dockerd sends them.
    """

    def __init__(self, api: IResource, experimental: bool) -> None:
        super().__init__()
        self._api = api
        self._experimental = b"true" if experimental else b"false"

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        self._set_headers(request)
        if getattr(request, "body_too_large", None) is not None:
            # emiso.api.limits dropped the body: no route runs.
            return _VersionErrorResource(request.too_large_message(), 413)
        match = _VERSION_SEGMENT.match(path)
        if match is None:
            # Not a version: give the segment back so the API routes see it.
            request.postpath.insert(0, request.prepath.pop())
            request.api_version = API_VERSION
            return self._api
        requested = path[1:].decode("ascii")
        message = version_error(requested)
        if message is not None:
            return _VersionErrorResource(message)
        request.api_version = requested
        return self._api

    def render(self, request: Any) -> Any:
        self._set_headers(request)
        if getattr(request, "body_too_large", None) is not None:
            return _VersionErrorResource(request.too_large_message(), 413).render(request)
        request.api_version = API_VERSION
        return self._api.render(request)

    def _set_headers(self, request: Any) -> None:
        # Twisted would label a body without Content-Type as text/html; the
        # routes set the type of every body they send.
        request.defaultContentType = None
        request.setHeader(b"Api-Version", API_VERSION.encode())
        request.setHeader(b"Ostype", b"linux")
        request.setHeader(b"Server", b"Docker/EMISO (linux)")
        request.setHeader(b"Docker-Experimental", self._experimental)

"""Shared parts of the API route modules: the Klein app, errors and request parsing."""

import json
import os
import shutil
import tempfile
from typing import Any, Iterable

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from emiso.errors import EngineError, InvalidParameter, NoSuchImage, PayloadTooLarge

log = Logger()

#: The one Klein application; every route module registers on it.
app = Klein()
# A name such as C{/etc/passwd} in C{/images/<name>} must reach the route,
# not be redirected (308) to a path with the slashes merged.
app.url_map.merge_slashes = False

JSON = b"application/json"

#: Docker's booleans in query strings: these values are false, anything else true.
_FALSE_WORDS = {"", "0", "no", "false", "none"}


class ErrorRoutes:
    """
    Render engine errors and unknown routes as Docker error bodies.
    """

    app = app

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
        return error_response(request, error.status, error.message)

    @app.handle_errors(RouteNotFound)
    def route_not_found(self, request: Any, failure: Any) -> bytes:
        return error_response(request, 404, "page not found")

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: Any, failure: Any) -> bytes:
        return error_response(request, 404, "page not found")

    @app.handle_errors(Exception)
    def unexpected_error(self, request: Any, failure: Any) -> bytes:
        # A bug must still reach the client as a Docker error body.
        log.failure(
            "{method} {path} failed unexpectedly",
            failure,
            method=request.method.decode(),
            path=request.path.decode(errors="replace"),
        )
        return error_response(
            request, 500, f"internal engine error: {failure.getErrorMessage()}"
        )


@inlineCallbacks
def no_content(request: Any, operation: Deferred):
    """
    Wait for an operation, then answer 204 with no body.
    """
    yield operation
    request.setResponseCode(204)
    return b""


def spool_body(engine: Any, request: Any, max_body_size: int) -> Deferred:
    """
    Copy the request body into a temporary file in the image folder, in a
    worker thread, and fire with its path.

    @raise PayloadTooLarge: the body is larger than C{max_body_size}.
    """
    length = request.getHeader(b"content-length")
    if length is not None and length.isdigit() and int(length) > max_body_size:
        raise PayloadTooLarge(
            f"request body of {int(length)} bytes is larger than the limit of "
            f"{max_body_size} bytes"
        )
    spool_dir = os.path.join(engine.config.image_dir, ".tmp")

    def copy() -> str:
        os.makedirs(spool_dir, exist_ok=True)
        request.content.seek(0)
        handle, path = tempfile.mkstemp(prefix="upload-", dir=spool_dir)
        with os.fdopen(handle, "wb") as upload:
            shutil.copyfileobj(request.content, upload, 1024 * 1024)
            size = upload.tell()
        if size > max_body_size:
            os.unlink(path)
            raise PayloadTooLarge(
                f"request body of {size} bytes is larger than the limit of "
                f"{max_body_size} bytes"
            )
        return path

    return deferToThreadPool(engine.reactor, engine.threadpool, copy)


def json_response(request: Any, body: Any) -> bytes:
    request.setHeader(b"Content-Type", JSON)
    return json.dumps(body).encode() + b"\n"


def error_response(request: Any, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    if status == 304:
        return b""
    return json_response(request, {"message": message})


def query_arg(request: Any, name: str) -> str:
    values = request.args.get(name.encode())
    if not values:
        return ""
    try:
        return values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidParameter(f"query parameter {name} is not valid UTF-8")


def query_bool(request: Any, name: str) -> bool:
    return query_arg(request, name).strip().lower() not in _FALSE_WORDS


def query_int(request: Any, name: str, default: int) -> int:
    text = query_arg(request, name)
    if text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidParameter(f"invalid value for {name}: {text!r} is not an integer")


def parse_filters(request: Any, known_keys: Iterable[str]) -> dict[str, list[str]]:
    """
    Parse Docker's C{filters} query parameter in both of its shapes:
    C{{"label": ["a=b"]}} and C{{"label": {"a=b": true}}}.

    @raise InvalidParameter: the parameter is not one of these shapes, or
        names a key outside C{known_keys}.
    """
    return parse_filters_text(query_arg(request, "filters"), known_keys)


def parse_filters_text(text: str, known_keys: Iterable[str]) -> dict[str, list[str]]:
    """
    Parse the JSON text of a C{filters} parameter; see L{parse_filters}.
    """
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
    for key in filters:
        if key not in known_keys:
            raise InvalidParameter(f"invalid filter '{key}'")
    return filters


def invalid_filter(key: str, value: str) -> InvalidParameter:
    """
    Build dockerd's error for a filter value it rejects, such as
    C{invalid filter 'exited=abc'}.
    """
    return InvalidParameter(f"invalid filter '{key}={value}'")


def label_matches(labels: dict[str, str], wanted: str) -> bool:
    """
    Match a C{label} filter value, C{key} or C{key=value}, against labels.
    """
    if "=" in wanted:
        key, value = wanted.split("=", 1)
        return labels.get(key) == value
    return wanted in labels


def json_body(request: Any, max_size: int | None = None) -> dict:
    """
    Decode a JSON object request body; an empty body is C{{}}.

    @raise PayloadTooLarge: the body is larger than C{max_size} bytes.
    @raise InvalidParameter: the body is not a JSON object.
    """
    request.content.seek(0, os.SEEK_END)
    size = request.content.tell()
    if max_size is not None and size > max_size:
        raise PayloadTooLarge(
            f"request body of {size} bytes is larger than the limit of "
            f"{max_size} bytes"
        )
    request.content.seek(0)
    raw = request.content.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidParameter(f"invalid JSON body: {error}")
    except RecursionError:
        raise InvalidParameter("invalid JSON body: nested too deeply")
    if not isinstance(body, dict):
        raise InvalidParameter("invalid JSON body: expected an object")
    return body


def image_or_none(engine: Any, image_id: str) -> Any:
    try:
        return engine.images.get(image_id)
    except NoSuchImage:
        return None


def version_at_least(request: Any, wanted: tuple[int, int]) -> bool:
    major, minor = (int(part) for part in request.api_version.split("."))
    return (major, minor) >= wanted


def ignore_cancel(failure: Any) -> None:
    failure.trap(CancelledError)
    return None


def remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

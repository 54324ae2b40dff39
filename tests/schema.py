"""
Validation of engine responses against the Docker Engine API 1.44 specification.

The Swagger 2.0 definitions are converted once per process to JSON Schema
(draft 2020-12) with Docker's relaxations: C{null} is accepted wherever the
specification has an array or an object, C{x-nullable} properties may be
C{null}, and C{State.Status} may be C{error} (the engine reports it for a
container whose ME is migrating).
"""

import functools
import json
import os
import re
from pathlib import Path

import jsonschema
import referencing
import yaml

SPEC_ENV_VAR = "EMISO_DOCKER_API_SPEC"
"""Environment variable that overrides the location of the specification file."""

_DEFS_URI = "urn:emiso:docker-api:v1.44"

_VERSION_PREFIX = re.compile(r"^/v\d+\.\d+(?=/)")

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string"}},
    "additionalProperties": False,
}

# Statuses Docker returns although the 1.44 specification does not list them
# for every operation: 400 (logs without a stream), 409 (pause of a paused
# container), 413 (body too large) and 501 (operation not possible for SO3
# containers) carry an error body, 304 (start/stop with nothing to do) has no
# body, 101 upgrades attach and exec connections to a raw stream.
_EXTRA_ERROR_STATUSES = frozenset({400, 409, 413, 501})
_EXTRA_EMPTY_STATUSES = frozenset({304})
_UPGRADE_STATUS = 101

# Experimental checkpoint routes, which 1.44 does not describe; the shapes
# follow moby's checkpoint types (api/types/checkpoint).
_CHECKPOINT_OPERATIONS = {
    "/containers/{id}/checkpoints": {
        "get": {
            200: {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["Name"],
                    "properties": {"Name": {"type": "string"}},
                },
            },
            404: _ERROR_SCHEMA,
            500: _ERROR_SCHEMA,
        },
        "post": {201: None, 404: _ERROR_SCHEMA, 500: _ERROR_SCHEMA},
    },
    "/containers/{id}/checkpoints/{checkpoint}": {
        "delete": {204: None, 404: _ERROR_SCHEMA, 500: _ERROR_SCHEMA},
    },
}

# The engine's own routes, which Docker does not have; the engine's README
# documents their bodies.
_ENGINE_OPERATIONS = {
    "/containers/{id}/so3/update": {
        "post": {
            200: {
                "type": "object",
                "required": ["Id", "Image", "PreviousImage", "Warnings"],
                "properties": {
                    "Id": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "Image": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
                    "PreviousImage": {
                        "type": "string",
                        "pattern": "^sha256:[0-9a-f]{64}$",
                    },
                    "Warnings": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
            404: _ERROR_SCHEMA,
            500: _ERROR_SCHEMA,
        },
    },
}

# Schema keywords that do not constrain a value (or that this validator does
# not check, such as Swagger formats like "dateTime" and "uint64").
_IGNORED_KEYWORDS = frozenset(
    {
        "description",
        "example",
        "examples",
        "title",
        "default",
        "format",
        "readOnly",
        "discriminator",
        "xml",
        "externalDocs",
    }
)


class ResponseValidationError(AssertionError):
    """
    A response does not match the Docker Engine API 1.44 specification.
    """


def spec_path() -> Path:
    """
    Locate the specification file.

    @return: the value of C{EMISO_DOCKER_API_SPEC} when set, else
        C{<project root>/../shared/docker-api/v1.44.yaml}, where the project
        root is the parent of the C{tests} folder.
    """
    override = os.environ.get(SPEC_ENV_VAR)
    if override:
        return Path(override)
    project_root = Path(__file__).resolve().parent.parent
    return project_root.parent / "shared" / "docker-api" / "v1.44.yaml"


@functools.lru_cache(maxsize=None)
def load_spec() -> dict:
    """
    Load and parse the Swagger document (once per process).

    @raise FileNotFoundError: the specification file is missing.
    """
    path = spec_path()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        spec_file = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the Docker Engine API 1.44 specification is not at {path}: put the "
            f"shared folder beside the checkout, or set {SPEC_ENV_VAR} to the "
            "path of moby's api/docs/v1.44.yaml"
        ) from None
    with spec_file:
        return yaml.load(spec_file, Loader=loader)


def convert_schema(node):
    """
    Convert one Swagger 2.0 schema to JSON Schema (draft 2020-12).

    C{$ref} values C{#/definitions/Name} point into the converted definitions
    document; arrays, objects and C{x-nullable} values also accept C{null}.
    """
    if isinstance(node, list):
        return [convert_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/definitions/")
        reference = {"$ref": _DEFS_URI + "#/$defs/" + name}
        if node.get("x-nullable"):
            return {"anyOf": [{"type": "null"}, reference]}
        return reference
    converted = {}
    for key, value in node.items():
        if key in _IGNORED_KEYWORDS or str(key).startswith("x-"):
            continue
        if key == "properties":
            converted[key] = {
                name: convert_schema(schema) for name, schema in value.items()
            }
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            converted[key] = convert_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            converted[key] = convert_schema(value)
        else:
            converted[key] = value
    if _is_nullable(node):
        converted = _accept_null(converted)
    return converted


def validate_response(method: str, path: str, status: int, body) -> None:
    """
    Check a response body against the specification of its operation.

    @param method: the HTTP method, any case.
    @param path: the concrete request path, with or without a C{/v1.NN}
        prefix and query string, for example C{/v1.44/containers/abc/json}.
    @param status: the HTTP status code of the response.
    @param body: the decoded JSON body, or C{None} for an empty body.
    @raise ResponseValidationError: the status is not documented for the
        operation or the body does not match its schema.
    """
    route = _strip_path(path)
    method = method.lower()
    where = f"{method.upper()} {path} -> {status}"
    if status >= 400:
        _check_error_body(where, body)
        return
    template, responses = _find_operation(method, route)
    if template is None:
        raise ResponseValidationError(
            f"{where}: the route is not in the Docker API 1.44 specification"
        )
    where = f"{method.upper()} {template} ({path}) -> {status}"
    if status in _EXTRA_EMPTY_STATUSES and status not in responses:
        if body is not None:
            raise ResponseValidationError(f"{where}: expected an empty body")
        return
    if status == _UPGRADE_STATUS:
        return
    if status not in responses:
        raise ResponseValidationError(
            f"{where}: status not documented, expected one of {sorted(responses)}"
        )
    schema = responses[status]
    if schema is None or schema.get("type") == "string":
        # No schema, or a raw stream (logs, export, /_ping's "OK").
        return
    if body is None:
        raise ResponseValidationError(f"{where}: empty body, expected JSON")
    _check_with_schema(where, template, method, status, body)


def validate_json_body(
    method: str, path: str, status: int, content_type: str, data: bytes
) -> list:
    """
    Decode a raw response body and check every JSON value in it.

    JSON streams (C{/events}, C{/images/load}, C{stats?stream=1}) hold one
    value per line; each line is checked on its own.

    @param content_type: the C{Content-Type} header, or C{""} when absent.
    @return: the decoded JSON values (empty for an empty or non-JSON body).
    @raise ResponseValidationError: an error response is not
        C{application/json}, JSON does not parse, or a value does not match.
    """
    where = f"{method.upper()} {path} -> {status}"
    if status >= 400 and content_type != "application/json":
        raise ResponseValidationError(
            f"{where}: error response has Content-Type {content_type!r}, "
            f"expected 'application/json'; body {data[:200]!r}"
        )
    if not data.strip():
        validate_response(method, path, status, None)
        return []
    if content_type != "application/json":
        validate_response(method, path, status, _RAW)
        return []
    values = _decode_json_values(where, data)
    for value in values:
        validate_response(method, path, status, value)
    return values


class _RawBody:
    """
    Marker for a non-empty body that is not JSON (a raw stream).
    """


_RAW = _RawBody()


def _is_nullable(node: dict) -> bool:
    if node.get("x-nullable"):
        return True
    kind = node.get("type")
    if kind in ("array", "object"):
        return True
    return kind is None and ("properties" in node or "allOf" in node)


def _accept_null(schema: dict) -> dict:
    kind = schema.get("type")
    if kind is None:
        return {"anyOf": [{"type": "null"}, schema]}
    kinds = kind if isinstance(kind, list) else [kind]
    if "null" not in kinds:
        schema["type"] = [*kinds, "null"]
    if "enum" in schema and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]
    return schema


@functools.lru_cache(maxsize=None)
def _definitions_registry() -> referencing.Registry:
    spec = load_spec()
    definitions = {
        name: convert_schema(schema) for name, schema in spec["definitions"].items()
    }
    # The engine reports "error" for a container whose ME is migrating.
    status_schema = definitions["ContainerState"]["properties"]["Status"]
    status_schema["enum"] = [*status_schema["enum"], "error"]
    document = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    document["$defs"] = definitions
    resource = referencing.Resource.from_contents(
        document, default_specification=referencing.jsonschema.DRAFT202012
    )
    return referencing.Registry().with_resource(_DEFS_URI, resource)


@functools.lru_cache(maxsize=None)
def _operations() -> dict:
    """
    Map each path template to C{{method: {status: schema or None}}}.
    """
    operations = {}
    for template, methods in load_spec()["paths"].items():
        for method, operation in methods.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = {}
            for status, response in operation["responses"].items():
                schema = response.get("schema")
                responses[int(status)] = (
                    None if schema is None else convert_schema(schema)
                )
            operations.setdefault(template, {})[method] = responses
    for extra in (_CHECKPOINT_OPERATIONS, _ENGINE_OPERATIONS):
        for template, methods in extra.items():
            operations.setdefault(template, {}).update(methods)
    # dockerd reports ExitCode null while an exec runs (moby's ExecInspect
    # has ExitCode *int), although the specification types it integer.
    exec_inspect = operations["/exec/{id}/json"]["get"][200]
    exec_inspect["properties"]["ExitCode"]["type"] = ["integer", "null"]
    return operations


@functools.lru_cache(maxsize=None)
def _template_patterns() -> list:
    """
    Compile the path templates, most specific first.

    A parameter matches one or more characters including C{/} because image,
    volume and plugin names may contain slashes; templates with fewer
    parameters and more literal characters win over looser ones, so
    C{/images/json} is preferred to C{/images/{name}}.
    """
    patterns = []
    for template in _operations():
        parameters = re.findall(r"\{[^}]+\}", template)
        literal = re.sub(r"\{[^}]+\}", "", template)
        regex = "".join(
            ".+" if part.startswith("{") else re.escape(part)
            for part in re.split(r"(\{[^}]+\})", template)
        )
        rank = (len(parameters), -len(literal))
        patterns.append((rank, re.compile("^" + regex + "$"), template))
    patterns.sort(key=lambda item: item[0])
    return patterns


def _strip_path(path: str) -> str:
    route = path.split("?", 1)[0]
    return _VERSION_PREFIX.sub("", route)


def _find_operation(method: str, route: str):
    operations = _operations()
    for _rank, pattern, template in _template_patterns():
        if method in operations[template] and pattern.match(route):
            return template, operations[template][method]
    return None, {}


def _check_error_body(where: str, body) -> None:
    if body is None or isinstance(body, _RawBody):
        raise ResponseValidationError(
            f"{where}: error response without a JSON body, "
            'expected {"message": "..."}'
        )
    errors = list(jsonschema.Draft202012Validator(_ERROR_SCHEMA).iter_errors(body))
    if errors:
        raise ResponseValidationError(
            f"{where}: invalid error body {body!r}: {errors[0].message}; "
            'expected exactly {"message": "<text>"}'
        )


@functools.lru_cache(maxsize=None)
def _validator(template: str, method: str, status: int):
    schema = _operations()[template][method][status]
    return jsonschema.Draft202012Validator(schema, registry=_definitions_registry())


def _check_with_schema(where, template, method, status, body) -> None:
    if isinstance(body, _RawBody):
        raise ResponseValidationError(
            f"{where}: body is not application/json, expected JSON"
        )
    validator = _validator(template, method, status)
    errors = []
    for error in validator.iter_errors(body):
        errors.extend(_leaf_errors(error))
    errors.sort(key=lambda error: [str(part) for part in error.absolute_path])
    if not errors:
        return
    lines = [f"{where}: body does not match the Docker API 1.44 schema:"]
    for error in errors[:10]:
        location = "/".join(str(part) for part in error.absolute_path) or "<root>"
        lines.append(f"  at {location}: {error.message}")
    if len(errors) > 10:
        lines.append(f"  ... and {len(errors) - 10} more errors")
    raise ResponseValidationError("\n".join(lines))


def _leaf_errors(error) -> list:
    """
    Replace an C{anyOf} failure by the failures of its branches.

    The C{null} branch added by L{convert_schema} is left out, so the report
    names the field that is wrong instead of the whole object.
    """
    if not error.context:
        return [error]
    leaves = []
    for suberror in error.context:
        if suberror.validator == "type" and suberror.validator_value == "null":
            continue
        leaves.extend(_leaf_errors(suberror))
    return leaves or [error]


def _decode_json_values(where: str, data: bytes) -> list:
    text = data.decode("utf-8")
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        pass
    values = []
    decoder = json.JSONDecoder()
    position = 0
    while position < len(text):
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise ResponseValidationError(
                f"{where}: body is not valid JSON ({error}): {data[:200]!r}"
            ) from None
        values.append(value)
    return values

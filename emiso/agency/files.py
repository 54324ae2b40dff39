"""File and argument helpers shared by the agency backends in the driver process."""

import json
import os

from emiso.agency.protocol import OperationError


def write_json_atomically(path: str, value: dict, durable: bool = True) -> None:
    """
    Write C{value} as JSON to a temporary file, then rename it over C{path},
    so a reader never sees a half-written file.

    @param durable: flush the file to the disk before the rename, so the
        new content survives a power loss; slot files need it, a status file
        rewritten every second does not.
    """
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(value, stream)
        if durable:
            stream.flush()
            os.fsync(stream.fileno())
    os.replace(temporary, path)


def require_absolute_path(value: object, name: str) -> str:
    """
    Check a path argument of a driver request.

    @raise OperationError: (C{invalid}) the value is not an absolute path.
    """
    if not isinstance(value, str) or not os.path.isabs(value):
        raise OperationError("invalid", f"{name} must be an absolute path, got {value!r}")
    return value


def require_string(value: object, name: str) -> str:
    """
    Check a string argument of a driver request.

    @raise OperationError: (C{invalid}) the value is not a string.
    """
    if not isinstance(value, str):
        raise OperationError("invalid", f"{name} must be a string, got {value!r}")
    return value

"""Wire format shared by the agency driver and the ME controller.

Every message is one JSON object on one line, terminated by a newline.
"""

import json

# Error kinds a driver reply can carry; the controller maps each one to an
# engine exception (see emiso.errors).
ERROR_KINDS = (
    "no_slot",
    "no_memory",
    "refused",
    "bad_state",
    "not_found",
    "invalid",
    "internal",
)


class ProtocolError(ValueError):
    """A line on the driver pipe is not a JSON object."""


class OperationError(Exception):
    """
    An agency operation failed; the driver replies with C{kind} and the message.

    @ivar kind: one of L{ERROR_KINDS}.
    """

    def __init__(self, kind: str, message: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(
                f"unknown error kind {kind!r}, expected one of {ERROR_KINDS}"
            )
        super().__init__(message)
        self.kind = kind

    @property
    def message(self) -> str:
        return str(self)


def encode_message(message: dict) -> bytes:
    """
    Encode one message as a UTF-8 JSON line ending in C{b"\\n"}.

    The JSON encoder escapes newlines inside strings, so the line never
    contains a raw newline before its end.
    """
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def decode_message(line: bytes) -> dict:
    """
    Decode one line (with or without its trailing newline) into a message.

    @raise ProtocolError: the line is not UTF-8, not JSON, or not a JSON object.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ProtocolError(f"line is not valid UTF-8: {error}") from None
    try:
        message = json.loads(text)
    except json.JSONDecodeError as error:
        raise ProtocolError(
            f"line is not valid JSON: {error}: {_preview(text)}"
        ) from None
    if not isinstance(message, dict):
        raise ProtocolError(
            f"message must be a JSON object, got {type(message).__name__}: "
            f"{_preview(text)}"
        )
    return message


def _preview(text: str, limit: int = 80) -> str:
    text = text.rstrip("\n")
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)

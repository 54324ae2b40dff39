"""Engine exceptions, one per failure mode, each mapped to one HTTP status.

The API layer renders any L{EngineError} as Docker's error body
C{{"message": str(error)}} with the class's C{status}.
"""


class EngineError(Exception):
    """
    Base class of the errors the engine reports to API clients.

    @cvar status: the HTTP status code Docker uses for this failure.
    """

    status = 500

    @property
    def message(self) -> str:
        return str(self)


class InvalidParameter(EngineError):
    """A request parameter or body field is invalid."""

    status = 400


class InvalidImage(InvalidParameter):
    """An uploaded or stored file is not a valid FIT image for an ME."""


class NotFound(EngineError):
    """A container, image or other object does not exist."""

    status = 404


class NoSuchContainer(NotFound):
    """No container matches the given id, id prefix or name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"No such container: {name}")


class NoSuchImage(NotFound):
    """No image matches the given reference or id."""

    def __init__(self, name: str) -> None:
        super().__init__(f"No such image: {name}")


class Conflict(EngineError):
    """The request conflicts with the current state of an object."""

    status = 409


class NotModified(EngineError):
    """The object is already in the requested state (Docker returns 304)."""

    status = 304


class NotImplementedForSO3(EngineError):
    """The Docker feature does not exist for SO3 containers."""

    status = 501


class PayloadTooLarge(EngineError):
    """A request body is larger than the configured limit."""

    status = 413


class AgencyError(EngineError):
    """The agency failed an operation."""

    status = 500


class NoFreeSlot(AgencyError):
    """All ME slots (2 to 6) are occupied."""


class NoMemory(AgencyError):
    """The agency's ME memory pool cannot hold the ME."""


class MigrationRefused(AgencyError):
    """The ME refused to be suspended (initialize-migration returned -1)."""


class BadAgencyState(AgencyError):
    """The driver refused a call because the slot is in the wrong ME state."""


class AgencyTimeout(AgencyError):
    """An agency operation did not finish within its timeout."""


class DriverDied(AgencyError):
    """The agency driver process exited while a request was in flight."""


class NoSuchExec(NotFound):
    """No exec instance has this id."""

    def __init__(self, exec_id: str) -> None:
        super().__init__(f"No such exec instance: {exec_id}")


class ConsoleUnavailable(AgencyError):
    """The console of a running ME cannot be reached."""

"""Mapping of ME states to Docker container states, and Docker's C{Status} text.

An ME in a slot is in one of the agency's ME states, and Docker clients see
the container state that L{docker_state} maps it to.  L{status_text} builds the
human-readable C{Status} of C{GET /containers/json}, which Portainer parses
to colour its container list.
"""

from __future__ import annotations

from emiso.errors import InvalidParameter
from emiso.engine.timeutil import human_duration

#: ME states of the agency, in life-cycle order.
ME_STATES = (
    "booting",
    "preparing",
    "living",
    "suspended",
    "migrating",
    "dormant",
    "killed",
    "terminated",
    "dead",
)

_DOCKER_STATE_OF_ME_STATE = {
    "booting": "created",
    "preparing": "created",
    "living": "running",
    "suspended": "paused",
    "migrating": "error",
    "dormant": "paused",
    "killed": "dead",
    "terminated": "exited",
    "dead": "dead",
}

#: ME states in which a container whose start began still shows "Created".
STARTING_ME_STATES = ("booting", "preparing")

#: Values a C{status=} filter accepts: Docker's states plus C{error}, the
#: state of a container whose ME is migrating.
STATE_FILTER_VALUES = (
    "created",
    "restarting",
    "running",
    "removing",
    "paused",
    "exited",
    "dead",
    "error",
)

# States in which Docker's State.Running is true: moby keeps Running set
# while a container is paused or restarting.
_RUNNING_STATES = ("running", "paused", "restarting")


def docker_state(me_state: str) -> str:
    """
    Return the Docker container state of an ME state.

    @raise ValueError: if C{me_state} is not one of L{ME_STATES}.
    """
    try:
        return _DOCKER_STATE_OF_ME_STATE[me_state]
    except KeyError:
        raise ValueError(f"unknown ME state: {me_state!r}") from None


def _elapsed(now: float, since: float | None) -> str:
    # A missing start or finish time reads as "just now", never as 56 years.
    if not since:
        return human_duration(0)
    return human_duration(now - since)


def status_text(
    state: str,
    me_state: str | None,
    started_at: float | None,
    finished_at: float | None,
    exit_code: int,
    now: float,
    restarting: bool = False,
    removing: bool = False,
) -> str:
    """
    Build Docker's human-readable C{Status} of a container.

    The checks run in the order of C{State.String} in moby's
    daemon/container/state.go: running (paused, restarting, up), removal in
    progress, dead, never started, exited.  Two SO3 cases differ from
    Docker and name the ME state: a container in state C{created} whose start
    began (C{started_at} set) while its ME is booting or preparing reads
    C{Created (booting)} or C{Created (preparing)}, and a container in state
    C{error} reads C{Error (migrating)}.

    @param state: the Docker state, one of L{STATE_FILTER_VALUES}.
    @param me_state: the ME state when the ME is in a slot, else C{None}.
    @param started_at: epoch seconds of the last start, C{None} if never.
    @param finished_at: epoch seconds of the last exit, C{None} if never.
    @param now: the current epoch seconds.
    """
    if state in _RUNNING_STATES or restarting:
        if state == "paused":
            return f"Up {_elapsed(now, started_at)} (Paused)"
        if restarting or state == "restarting":
            return f"Restarting ({exit_code}) {_elapsed(now, finished_at)} ago"
        return f"Up {_elapsed(now, started_at)}"
    if removing or state == "removing":
        return "Removal In Progress"
    if state == "dead":
        return "Dead"
    if state == "error":
        return f"Error ({me_state or 'migrating'})"
    if state == "created":
        if started_at and me_state in STARTING_ME_STATES:
            return f"Created ({me_state})"
        return "Created"
    if not started_at:
        return "Created"
    if not finished_at:
        # moby returns an empty Status for a stopped container without a
        # finish time.
        return ""
    return f"Exited ({exit_code}) {_elapsed(now, finished_at)} ago"


def state_flags(state: str) -> dict[str, bool]:
    """
    Return the booleans of Docker's inspect C{State} object for a state.

    C{Running} is true for paused and restarting containers too, as in
    Docker.  A container in state C{error} (ME migrating) is not running.
    """
    return {
        "Running": state in _RUNNING_STATES,
        "Paused": state == "paused",
        "Restarting": state == "restarting",
        "OOMKilled": False,
        "Dead": state == "dead",
    }


def validate_status_filter(value: str) -> str:
    """
    Check a C{status=} filter value of C{GET /containers/json}.

    @return: C{value} unchanged.
    @raise InvalidParameter: with Docker's message
        C{invalid filter 'status=<value>'} when the value is not one of
        L{STATE_FILTER_VALUES}.
    """
    if value not in STATE_FILTER_VALUES:
        raise InvalidParameter(f"invalid filter 'status={value}'")
    return value

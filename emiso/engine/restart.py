"""Docker restart policies for SO3 containers: no, always, unless-stopped, on-failure.

The container manager reports every exit to L{RestartManager}; when the ME
left its slot without a request and the container's policy allows it, the
manager starts the container again after a back-off delay. At engine start
it starts the stopped containers whose policy requires it, as dockerd does
when it restores its containers.
"""

from typing import Any

from twisted.logger import Logger

from emiso.errors import EngineError, InvalidParameter

log = Logger()

#: The policy names Docker accepts; an empty name means C{no}.
POLICY_NAMES = ("no", "always", "unless-stopped", "on-failure")

#: First back-off delay in seconds, doubled after each quick restart (moby's
#: restartmanager uses 100 ms, doubled, at most one minute).
FIRST_DELAY = 0.1
MAX_DELAY = 60.0

#: A container that ran this many seconds before it died restarts after
#: L{FIRST_DELAY} again.
STABLE_RUN = 10.0


def validate_restart_policy(policy: Any) -> dict:
    """
    Check a C{RestartPolicy} object of a create or update body.

    @return: the policy with C{Name} and an integer C{MaximumRetryCount}.
    @raise InvalidParameter: with Docker's message for an unknown name, a
        negative count or a count given with a policy other than on-failure.
    """
    if policy is None:
        policy = {}
    if not isinstance(policy, dict):
        raise InvalidParameter(
            "invalid restart policy: RestartPolicy must be an object"
        )
    name = policy.get("Name") or "no"
    count = policy.get("MaximumRetryCount") or 0
    if name not in POLICY_NAMES:
        raise InvalidParameter(
            f"invalid restart policy: unknown policy '{name}'; use one of 'no', "
            "'always', 'on-failure', or 'unless-stopped'"
        )
    if not isinstance(count, int) or isinstance(count, bool):
        raise InvalidParameter(
            f"invalid restart policy: MaximumRetryCount {count!r} is not an integer"
        )
    if count < 0:
        raise InvalidParameter(
            "invalid restart policy: maximum retry count cannot be negative"
        )
    if count and name != "on-failure":
        raise InvalidParameter(
            "invalid restart policy: maximum retry count can only be used with "
            "'on-failure'"
        )
    return {"Name": name, "MaximumRetryCount": count}


def should_restart(container: Any) -> bool:
    """
    Decide, as moby's restart manager does, whether a stopped container
    starts again.

    C{always} restarts even after C{docker stop} (the stop only cancels the
    pending restart, so the next engine start brings it back),
    C{unless-stopped} and C{on-failure} do not. C{on-failure} needs a
    non-zero exit code and stops after C{MaximumRetryCount} restarts when
    that count is not 0.
    """
    policy = container.host_config.get("RestartPolicy") or {}
    name = policy.get("Name") or "no"
    if name == "always":
        return True
    if container.manually_stopped:
        return False
    if name == "unless-stopped":
        return True
    if name == "on-failure" and container.exit_code != 0:
        maximum = int(policy.get("MaximumRetryCount") or 0)
        return maximum == 0 or container.restart_count < maximum
    return False


class RestartManager:
    """
    Start containers again according to their restart policy.

    @param reactor: provides C{callLater}.
    @param containers: the L{emiso.engine.containers.ContainerManager}.
    @param clock: returns the current time in seconds since the epoch.
    """

    def __init__(self, reactor: Any, containers: Any, clock: Any) -> None:
        self._reactor = reactor
        self._containers = containers
        self._clock = clock
        self._pending: dict[str, Any] = {}
        self._delays: dict[str, float] = {}
        self._exit_states: dict[str, str] = {}

    def container_exited(self, container: Any, requested: bool) -> bool:
        """
        Schedule a restart of a container whose ME left its slot.

        The caller shows the container as C{restarting} until the restart
        starts; L{cancel} returns the state of its exit.

        @param requested: the exit came from a stop, kill or removal, which
            never restarts the container.
        @return: whether a restart is scheduled.
        """
        self.cancel(container.id)
        if requested or not should_restart(container):
            return False
        delay = self._next_delay(container)
        log.info(
            "Restarting container {id} in {delay:.1f} s (restart policy {policy})",
            id=container.short_id,
            delay=delay,
            policy=container.host_config["RestartPolicy"].get("Name"),
        )
        self._exit_states[container.id] = container.state
        self._pending[container.id] = self._reactor.callLater(
            delay, self._restart, container.id
        )
        return True

    def cancel(self, container_id: str) -> str | None:
        """
        Drop the pending restart of a container, if any.

        @return: the state of the exit that scheduled the restart (C{exited}
            or C{dead}), or C{None} when none was kept.
        """
        call = self._pending.pop(container_id, None)
        if call is not None and call.active():
            call.cancel()
        return self._exit_states.pop(container_id, None)

    def forget(self, container_id: str) -> None:
        """
        Drop everything kept for a removed container.
        """
        self.cancel(container_id)
        self._delays.pop(container_id, None)

    def engine_started(self) -> None:
        """
        Start the stopped containers whose policy requires it, once the
        records are reconciled with the agency.
        """
        for container in self._containers.list():
            if container.running or container.started_at is None:
                continue
            if container.id in self._pending:
                continue
            if should_restart(container):
                self._pending[container.id] = self._reactor.callLater(
                    0, self._restart, container.id
                )

    def stop(self) -> None:
        """
        Cancel every pending restart, at engine shutdown. The containers
        keep the C{restarting} state in the store, and the next engine
        start restarts them.
        """
        for container_id in list(self._pending):
            self.cancel(container_id)

    def _next_delay(self, container: Any) -> float:
        ran = 0.0
        if container.started_at is not None and container.finished_at is not None:
            ran = container.finished_at - container.started_at
        previous = self._delays.get(container.id)
        if previous is None or ran >= STABLE_RUN:
            delay = FIRST_DELAY
        else:
            delay = min(previous * 2, MAX_DELAY)
        self._delays[container.id] = delay
        return delay

    def _restart(self, container_id: str) -> None:
        self._pending.pop(container_id, None)
        # _start cancels, which returns the kept exit state for its failure path.
        d = self._containers.start(container_id, policy_restart=True)

        def failed(failure: Any) -> None:
            failure.trap(EngineError)
            # NOTE: as in dockerd, a failed policy restart leaves the
            # container stopped; it is not retried.
            log.warn(
                "Restart of container {id} by its restart policy failed: {error}",
                id=container_id[:12],
                error=failure.value,
            )

        d.addErrback(failed)
        d.addErrback(
            lambda failure: log.failure(
                "Restart of container {id} failed", failure, id=container_id[:12]
            )
        )

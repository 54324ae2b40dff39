"""Update of a running container to a new image, with rollback to the old ME.

The old ME is suspended, the new image is injected and booted in a second
slot, and only when the new ME has stayed living for C{min_ready_seconds}
is the old ME terminated. If the new ME does not boot, dies, or the agency
times out, the new ME is terminated and the old one resumed, so the
container is as it was before. The container keeps its id, name, labels
and console log; both MEs take slots and pool memory during the update.
"""

import time
from typing import Any, Callable

import attrs
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger

from emiso.engine.states import docker_state
from emiso.errors import AgencyError, Conflict, EngineError, InvalidParameter

log = Logger()

#: Seconds the new ME must stay living before the old one is terminated.
DEFAULT_MIN_READY_SECONDS = 5.0

#: The largest C{min_ready_seconds} accepted.
MAX_MIN_READY_SECONDS = 600.0

#: Seconds between two checks of the new ME while it proves itself.
POLL_INTERVAL = 0.25

#: Labels of the image, which change with it; all other labels are kept.
IMAGE_LABEL_PREFIX = "org.soo."


class UpdateFailed(AgencyError):
    """The new ME failed and the container was rolled back to its old ME."""


@attrs.frozen
class UpdateResult:
    """
    The outcome of a successful update.
    """

    container_id: str
    image_id: str
    image_ref: str
    previous_image_id: str
    previous_image_ref: str


class UpdateManager:
    """
    Replace the image of containers while keeping their identity.

    @param containers: the L{emiso.engine.containers.ContainerManager}.
    @param images: the L{emiso.engine.images.ImageStore}.
    @param agency: an L{emiso.agency.interfaces.IAgency} provider.
    @param reactor: provides C{IReactorTime}, for the readiness checks.
    """

    def __init__(
        self,
        containers: Any,
        images: Any,
        agency: Any,
        reactor: Any,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._containers = containers
        self._images = images
        self._agency = agency
        self._reactor = reactor
        self._clock = clock
        # Slot of a new ME under watch -> why it failed, or None while it lives.
        self._watched: dict[int, str | None] = {}
        agency.subscribe(self._agency_event)

    def update(self, name_or_id: str, image_name: str,
               min_ready_seconds: float = DEFAULT_MIN_READY_SECONDS):
        """
        Move the container to another image.

        A container without an ME only has its image replaced; the next
        start boots the new one.

        @param min_ready_seconds: how long the new ME must stay living.
        @return: a Deferred firing with an L{UpdateResult}.
        @raise NoSuchImage: the image does not exist.
        @raise Conflict: the container is paused or in an unstable state.
        @raise UpdateFailed: the new ME failed; the old one runs again.
        """
        if isinstance(min_ready_seconds, bool) or not isinstance(
            min_ready_seconds, (int, float)
        ) or not 0 <= min_ready_seconds <= MAX_MIN_READY_SECONDS:
            raise InvalidParameter(
                f"invalid MinReadySeconds {min_ready_seconds!r}: give a number of "
                f"seconds from 0 to {MAX_MIN_READY_SECONDS:g}"
            )
        image = self._images.get(image_name)
        return self._containers.locked(
            name_or_id, self._update, image, image_name, float(min_ready_seconds)
        )

    @inlineCallbacks
    def _update(self, container: Any, image: Any, image_ref: str, min_ready: float):
        previous = attrs.evolve(container)
        if not container.running:
            yield self._switch_image(container, image, image_ref)
            self._publish(container, "done", previous)
            return _result(container, previous)
        if container.state != "running":
            raise Conflict(
                f"cannot update container {container.name}: it is {container.state}; "
                "update a running or stopped container"
            )
        container.operation = "update"
        yield self._containers.save(container)
        old_slot = container.slot
        try:
            result = yield self._agency.initialize(old_slot)
        except EngineError as error:
            yield self._containers.record_failure(container, "update", error)
            raise UpdateFailed(
                f"cannot update container {container.name}: the old ME could not "
                f"be suspended: {error}; it keeps running"
            )
        container.me_state = result.get("state", "suspended")
        self._publish(container, "suspend-old", previous, slot=old_slot)
        new_slot = None
        try:
            # TODO: both MEs carry the container id as their token, so an
            # engine restart in the middle of an update reconciles the
            # container with one of them and leaves the other in its slot.
            injected = yield self._agency.inject(image.path, container.log_path,
                                                 container.id)
            new_slot = injected["slot"]
            self._watched[new_slot] = None
            self._publish(container, "inject-new", previous, slot=new_slot)
            yield self._agency.finalize(new_slot)
            self._publish(container, "start-new", previous, slot=new_slot)
            failure = yield self._watch(container, new_slot, min_ready)
        except EngineError as error:
            failure = str(error)
        finally:
            if new_slot is not None:
                self._watched.pop(new_slot, None)
        if failure is not None:
            yield self._roll_back(container, previous, image_ref, new_slot, failure)
        yield self._commit(container, previous, image, image_ref, injected, old_slot)
        return _result(container, previous)

    @inlineCallbacks
    def _watch(self, container: Any, slot: int, seconds: float):
        """
        Check the new ME until C{seconds} have passed; fire with the reason
        it failed, or C{None} when it stayed living.
        """
        deadline = self._reactor.seconds() + seconds
        while True:
            reason = self._watched.get(slot)
            if reason is not None:
                return reason
            slots = (yield self._agency.list_slots())["slots"]
            entry = next((e for e in slots if e["slot"] == slot), {"state": "dead"})
            if entry["state"] != "living" or entry.get("token") != container.id:
                # The agency's me_state event, which carries the reason (a
                # kernel panic line, an exit status), may follow the list.
                yield deferLater(self._reactor, POLL_INTERVAL, lambda: None)
                return self._watched.get(slot) or (
                    f"the new ME in slot {slot} is {entry['state']}"
                )
            remaining = deadline - self._reactor.seconds()
            if remaining <= 0:
                return None
            yield deferLater(self._reactor, min(POLL_INTERVAL, remaining), lambda: None)

    @inlineCallbacks
    def _commit(self, container: Any, previous: Any, image: Any, image_ref: str,
                injected: dict, old_slot: int):
        try:
            yield self._agency.terminate(old_slot)
        except EngineError as error:
            # NOTE: the old ME may stay suspended in its slot, taking pool
            # memory, until the agency is restarted or it is terminated by hand.
            log.error(
                "Container {id} runs its new ME, but its old ME in slot {slot} "
                "could not be terminated: {error}",
                id=container.short_id,
                slot=old_slot,
                error=error,
            )
        self._publish(container, "terminate-old", previous, slot=old_slot)
        container.slot = injected["slot"]
        container.console = injected.get("console")
        container.serial = injected.get("serial")
        container.me_state = "living"
        container.state = docker_state("living")
        container.me_size = injected.get("size", container.me_size)
        container.started_at = self._clock()
        container.error = ""
        yield self._switch_image(container, image, image_ref)
        self._publish(container, "done", previous)
        log.info(
            "Updated container {id} ({name}) from {old} to {new}, now in slot {slot}",
            id=container.short_id,
            name=container.name,
            old=previous.image_ref,
            new=image_ref,
            slot=container.slot,
        )

    @inlineCallbacks
    def _roll_back(self, container: Any, previous: Any, image_ref: str,
                   new_slot: int | None, reason: str):
        """
        Terminate the new ME, resume the old one and restore the record;
        always raises L{UpdateFailed}.
        """
        log.warn(
            "Update of container {id} to {image} failed: {reason}; rolling back",
            id=container.short_id,
            image=image_ref,
            reason=reason,
        )
        self._publish(container, "rollback", previous, error=reason)
        if new_slot is not None:
            yield self._discard(new_slot)
        try:
            yield self._agency.finalize(previous.slot)
        except EngineError as error:
            yield self._containers.record_failure(container, "update", error)
            raise UpdateFailed(
                f"cannot update container {container.name} to {image_ref}: "
                f"{reason}; resuming the old ME failed too: {error}"
            )
        for field in attrs.fields(type(container)):
            setattr(container, field.name, getattr(previous, field.name))
        yield self._containers.save(container)
        self._publish(container, "rolled-back", previous, error=reason)
        raise UpdateFailed(
            f"cannot update container {container.name} to {image_ref}: {reason}; "
            f"the container was rolled back to its old ME ({previous.image_ref}), "
            "which runs again"
        )

    @inlineCallbacks
    def _discard(self, slot: int):
        slots = (yield self._agency.list_slots())["slots"]
        entry = next((e for e in slots if e["slot"] == slot), {"state": "dead"})
        if entry["state"] == "dead":
            return
        try:
            yield self._agency.terminate(slot)
        except EngineError as error:
            log.error(
                "Cannot terminate the failed new ME in slot {slot}: {error}",
                slot=slot,
                error=error,
            )

    def _switch_image(self, container: Any, image: Any, image_ref: str):
        me = image.fit.me
        container.image_id = image.id
        container.image_ref = image_ref
        container.labels = {
            **{key: value for key, value in container.labels.items()
               if not key.startswith(IMAGE_LABEL_PREFIX)},
            **{key: value for key, value in image.labels.items()
               if key.startswith(IMAGE_LABEL_PREFIX)},
        }
        if me is not None:
            container.me_name = me.me_name
            container.spid = me.spid
            if not container.running:
                container.me_size = me.domain_size
        container.operation = None
        return self._containers.save(container)

    def _publish(self, container: Any, step: str, previous: Any, **extra: object):
        self._containers.publish(
            container, "update", step=step, previousImage=previous.image_ref, **extra
        )

    def _agency_event(self, event: dict) -> None:
        slot = event.get("slot")
        if event.get("event") != "me_state" or slot not in self._watched:
            return
        if event.get("state") in ("dead", "terminated", None):
            self._watched[slot] = event.get("reason") or (
                f"the new ME in slot {slot} is {event.get('state')}"
            )


def _result(container: Any, previous: Any) -> UpdateResult:
    return UpdateResult(
        container_id=container.id,
        image_id=container.image_id,
        image_ref=container.image_ref,
        previous_image_id=previous.image_id,
        previous_image_ref=previous.image_ref,
    )

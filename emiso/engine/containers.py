"""The daemon: SO3 containers as injected MEs, their records and their lifecycle.

A container is a record in the store. Starting it injects its image into a
free slot of the agency and finalizes the migration. The ME's state, as the
agency reports it, gives the Docker state. Operations on one container are
serialised with a per-container lock, and every change is committed to the
store before the operation's Deferred fires.
"""

import os
import re
import secrets
import shutil
import signal
import time
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks, succeed
from twisted.logger import Logger

from emiso.engine.events import Event, EventBus
from emiso.engine.reconcile import Reconciler, claims
from emiso.engine.restart import RestartManager
from emiso.engine.states import docker_state
from emiso.errors import (
    AgencyError,
    Conflict,
    EngineError,
    InvalidParameter,
    NoSuchContainer,
    NotModified,
)

log = Logger()

#: Docker's container name rule (moby daemon/names: RestrictedNamePattern).
NAME_PATTERN = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")

#: Exit code of a container stopped by C{docker stop}.
EXIT_STOPPED = 0

#: Exit code of a container whose ME vanished without being asked.
EXIT_ME_LOST = 255

#: Labels the engine sets on every container; a user cannot override them.
LABEL_PREFIX = "org.soo."

_ADJECTIVES = (
    "agile", "bold", "brave", "calm", "clever", "eager", "gentle", "happy",
    "keen", "lucid", "merry", "nimble", "quiet", "sharp", "steady", "swift",
)
_NOUNS = (
    "agency", "beacon", "capsule", "domain", "entity", "gateway", "kernel",
    "migrant", "object", "packet", "sensor", "signal", "slot", "vessel",
)

#: Random adjective_noun pairs tried before a generated name gets a number.
_NAME_ATTEMPTS = 10


@attrs.define
class Container:
    """
    One SO3 container record.

    Times are seconds since the epoch (float); C{None} means never.
    """

    id: str
    name: str
    image_id: str
    image_ref: str
    created: float
    labels: dict[str, str]
    config: dict[str, Any]
    host_config: dict[str, Any]
    log_path: str
    state: str = "created"
    me_state: str | None = None
    slot: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int = 0
    error: str = ""
    restart_count: int = 0
    operation: str | None = None
    me_size: int = 0
    me_name: str = ""
    spid: int = 0
    removing: bool = False
    manually_stopped: bool = False
    #: Unix socket of the ME's console, when the agency gives one.
    console: str | None = None
    #: Unix socket of the ME's raw serial console (no JSON protocol).
    serial: str | None = None
    #: The token of an adopted ME when it is not the container id.
    agency_token: str | None = None

    def to_record(self) -> dict:
        """
        Return the JSON-serialisable record stored in the database.
        """
        return attrs.asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> "Container":
        """
        Rebuild a container from its stored record, ignoring unknown keys.
        """
        names = {field.name for field in attrs.fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in names})

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def running(self) -> bool:
        """
        Whether the container has an ME in a slot (Docker's C{Running} is true
        for a paused container too).
        """
        return self.state in ("running", "paused", "error") or (
            self.state == "created" and self.slot is not None
        )


class ContainerManager:
    """
    Create, run and remove SO3 containers on one agency.

    @param reactor: provides C{IReactorTime}.
    @param store: the L{emiso.engine.store.Store}.
    @param images: the L{emiso.engine.images.ImageStore}.
    @param agency: an L{emiso.agency.interfaces.IAgency} provider.
    @param containers_dir: the folder that contains one folder per container
        (its console log).
    @param events: the engine's L{EventBus}.
    """

    def __init__(
        self,
        reactor: Any,
        store: Any,
        images: Any,
        agency: Any,
        containers_dir: str,
        events: EventBus,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._reactor = reactor
        self._store = store
        self._images = images
        self._agency = agency
        self._containers_dir = containers_dir
        self._events = events
        self._clock = clock
        self._containers: dict[str, Container] = {}
        self._locks: dict[str, DeferredLock] = {}
        self._exit_waiters: dict[str, list[Deferred]] = {}
        self._remove_waiters: dict[str, list[Deferred]] = {}
        self._reserved_names: set[str] = set()
        self.restarts = RestartManager(reactor, self, clock)
        self._reconciler = Reconciler(self, reactor)

    # Loading and reconciliation

    @inlineCallbacks
    def load(self):
        """
        Read the stored records and reconcile them with the agency's slots.
        """
        for record in (yield self._store.load_containers()):
            container = Container.from_record(record)
            self._containers[container.id] = container
        log.info("Loaded {count} container records", count=len(self._containers))
        yield self.reconcile()
        self._agency.subscribe(self._agency_event)
        self.restarts.engine_started()

    def reconcile(self) -> Deferred[None]:
        """
        Bring every record in line with the agency's slot list (see
        L{emiso.engine.reconcile}).
        """
        return self._reconciler.at_load()

    @inlineCallbacks
    def _observe_slot(self, container: Container, entry: dict):
        changed = container.slot != entry["slot"] or container.me_state != entry["state"]
        container.slot = entry["slot"]
        container.me_state = entry["state"]
        if "console" in entry:
            container.console = entry["console"]
        if "serial" in entry:
            container.serial = entry["serial"]
        state = docker_state(entry["state"])
        if state != container.state:
            changed = True
            container.state = state
        if container.operation is not None:
            container.operation = None
            changed = True
        if changed:
            yield self._save(container)

    # Lookup

    def list(self) -> list[Container]:
        """
        Return every container, newest first.
        """
        return sorted(self._containers.values(), key=lambda c: c.created, reverse=True)

    def get(self, name_or_id: str) -> Container:
        """
        Find a container by full id, name (with or without C{/}) or unique
        id prefix.

        @raise NoSuchContainer: nothing matches.
        @raise InvalidParameter: the prefix matches several containers.
        """
        if not name_or_id:
            raise NoSuchContainer(name_or_id)
        container = self._containers.get(name_or_id)
        if container is not None:
            return container
        name = name_or_id.lstrip("/")
        for container in self._containers.values():
            if container.name == name:
                return container
        matches = [c for c in self._containers.values() if c.id.startswith(name_or_id)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidParameter(
                f"multiple IDs found with provided prefix: {name_or_id}"
            )
        raise NoSuchContainer(name_or_id)

    def uses_image(self, image_id: str) -> Container | None:
        """
        Return a container created from the image, or C{None}.
        """
        for container in self._containers.values():
            if container.image_id == image_id:
                return container
        return None

    def counts(self) -> dict[str, int]:
        """
        Count containers per Docker state.
        """
        counts: dict[str, int] = {}
        for container in self._containers.values():
            counts[container.state] = counts.get(container.state, 0) + 1
        return counts

    # Create

    @inlineCallbacks
    def create(self, name: str | None, image_name: str, labels: dict, config: dict,
               host_config: dict):
        """
        Create a container record from an image; nothing is injected yet.

        @return: a Deferred firing with the new L{Container}.
        """
        image = self._images.get(image_name)
        if name:
            if not NAME_PATTERN.match(name):
                raise InvalidParameter(
                    f"Invalid container name ({name}), only "
                    "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                )
            name = name.lstrip("/")
            self._check_name_free(name)
        else:
            name = self._generate_name()
        self._reserved_names.add(name)
        try:
            container_id = secrets.token_hex(32)
            me = image.fit.me
            container = Container(
                id=container_id,
                name=name,
                image_id=image.id,
                image_ref=image_name,
                created=self._clock(),
                labels={**labels, **_image_labels(image)},
                config=config,
                host_config=host_config,
                log_path=os.path.join(self._containers_dir, container_id, "console.log"),
                me_size=me.domain_size if me else 0,
                me_name=me.me_name if me else "",
                spid=me.spid if me else 0,
            )
            os.makedirs(os.path.dirname(container.log_path), exist_ok=True)
            yield self._store.save_container(container.to_record())
            self._containers[container.id] = container
        finally:
            self._reserved_names.discard(name)
        self._publish(container, "create")
        log.info(
            "Created container {id} ({name}) from {image}",
            id=container.short_id,
            name=name,
            image=image_name,
        )
        return container

    def _check_name_free(self, name: str) -> None:
        taken = name in self._reserved_names or any(
            c.name == name for c in self._containers.values()
        )
        if taken:
            owner = next((c for c in self._containers.values() if c.name == name), None)
            owner_id = owner.id if owner else "being created"
            raise Conflict(
                f'Conflict. The container name "/{name}" is already in use by '
                f'container "{owner_id}". You have to remove (or rename) that '
                "container to be able to reuse that name."
            )

    def _generate_name(self) -> str:
        attempt = 0
        while True:
            name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
            attempt += 1
            if attempt > _NAME_ATTEMPTS:
                # Past a few hundred containers most pairs are taken, so a
                # number is added, as Docker does, to keep the loop finite.
                name += str(secrets.randbelow(10 ** (2 + attempt // _NAME_ATTEMPTS)))
            taken = name in self._reserved_names or any(
                c.name == name for c in self._containers.values()
            )
            if not taken:
                return name

    # Lifecycle operations, each under the container's lock

    def start(self, name_or_id: str, policy_restart: bool = False) -> Deferred[None]:
        """
        Inject the container's image into a free slot and boot the ME.

        @param policy_restart: the restart policy starts the container, which
            counts in C{RestartCount}; a start by a user resets the count.
        @raise NotModified: the container is already running.
        @raise Conflict: the container is paused.
        """
        return self._locked(name_or_id, self._start, policy_restart)

    def stop(self, name_or_id: str) -> Deferred[None]:
        """
        Force-terminate the container's ME and free its slot.

        @raise NotModified: the container is not running.
        """
        return self._locked(name_or_id, self._stop)

    def restart(self, name_or_id: str) -> Deferred[None]:
        """
        Stop the container if it runs, then start it.
        """
        return self._locked(name_or_id, self._restart)

    def kill(self, name_or_id: str, signal_name: str = "SIGKILL") -> Deferred[None]:
        """
        Terminate the ME at once; the exit code is 128 plus the signal number.

        @raise Conflict: the container is not running.
        """
        number = parse_signal(signal_name)
        return self._locked(name_or_id, self._kill, number)

    def pause(self, name_or_id: str) -> Deferred[None]:
        """
        Suspend the ME in its slot (initialize-migration).
        """
        return self._locked(name_or_id, self._pause)

    def unpause(self, name_or_id: str) -> Deferred[None]:
        """
        Resume a suspended ME (finalize-migration).
        """
        return self._locked(name_or_id, self._unpause)

    def remove(self, name_or_id: str, force: bool = False) -> Deferred[None]:
        """
        Delete the container; with C{force}, stop its ME first.

        @raise Conflict: the container runs and C{force} is false.
        """
        return self._locked(name_or_id, self._remove, force)

    def rename(self, name_or_id: str, new_name: str) -> Deferred[None]:
        """
        Give the container a new name.

        @raise InvalidParameter: the name is empty, invalid or unchanged.
        @raise Conflict: another container has that name.
        """
        return self._locked(name_or_id, self._rename, new_name)

    def update_restart_policy(self, name_or_id: str, policy: dict) -> Deferred[None]:
        """
        Replace the container's restart policy (checked by the caller).
        """
        return self._locked(name_or_id, self._update_restart_policy, policy)

    def wait(self, name_or_id: str, condition: str = "not-running") -> Deferred[dict]:
        """
        Wait for the container to stop (or be removed) and fire with Docker's
        wait response.

        @param condition: C{not-running} fires at once for a container that
            does not run; C{next-exit} waits for the next exit; C{removed}
            waits for the removal.
        """
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidParameter(f"invalid condition: {condition!r}")
        container = self.get(name_or_id)
        if condition == "not-running" and not container.running:
            return succeed(_wait_response(container))
        waiters = self._remove_waiters if condition == "removed" else self._exit_waiters
        pending = waiters.setdefault(container.id, [])

        def cancel(d: Deferred) -> None:
            if d in pending:
                pending.remove(d)

        d: Deferred[dict] = Deferred(cancel)
        pending.append(d)
        return d

    @inlineCallbacks
    def _locked(self, name_or_id: str, operation: Callable[..., Any], *args: Any):
        container = self.get(name_or_id)
        lock = self._locks.setdefault(container.id, DeferredLock())
        yield lock.acquire()
        try:
            if self._containers.get(container.id) is not container:
                raise NoSuchContainer(name_or_id)
            result = yield operation(container, *args)
        finally:
            lock.release()
        return result

    @inlineCallbacks
    def _start(self, container: Container, policy_restart: bool = False):
        if container.state in ("running", "error") or container.slot is not None:
            if container.state == "paused":
                raise Conflict(
                    "cannot start a paused container, try unpause instead"
                )
            raise NotModified(f"container {container.id} is already started")
        image = self._images.get(container.image_id)
        exit_state = self.restarts.cancel(container.id)
        previous = attrs.evolve(container)
        if previous.state == "restarting":
            # A failed start leaves the container in the state of its exit.
            previous.state = exit_state or "exited"
        container.operation = "start"
        container.manually_stopped = False
        container.restart_count = container.restart_count + 1 if policy_restart else 0
        yield self._save(container)
        try:
            injected = yield self._agency.inject(
                image.path, container.log_path, container.id
            )
        except EngineError as error:
            self._restore(container, previous)
            yield self._save(container)
            raise _operation_failed(container, "start", error)
        container.slot = injected["slot"]
        container.me_state = injected.get("state", "booting")
        container.me_size = injected.get("size", container.me_size)
        container.console = injected.get("console")
        container.serial = injected.get("serial")
        container.started_at = self._clock()
        container.finished_at = None
        container.exit_code = 0
        container.error = ""
        container.state = docker_state(container.me_state)
        yield self._save(container)
        log.info(
            "Injected container {id} into slot {slot}",
            id=container.short_id,
            slot=container.slot,
        )
        try:
            finalized = yield self._agency.finalize(container.slot)
        except EngineError as error:
            yield self._after_failure(container, "start", error)
            raise _operation_failed(container, "start", error)
        container.me_state = finalized.get("state", "living")
        container.state = docker_state(container.me_state)
        container.operation = None
        yield self._save(container)
        self._publish(container, "start")
        log.info("Started container {id} in slot {slot}", id=container.short_id,
                 slot=container.slot)

    @inlineCallbacks
    def _stop(self, container: Container, exit_code: int = EXIT_STOPPED,
              action: str = "stop"):
        if container.state == "restarting" and action == "stop":
            # As in dockerd, stopping a restarting container cancels the restart.
            container.state = self.restarts.cancel(container.id) or "exited"
            container.manually_stopped = True
            yield self._save(container)
            return
        if not container.running:
            raise NotModified(f"container {container.id} is already stopped")
        container.operation = action
        container.manually_stopped = True
        yield self._save(container)
        try:
            if container.slot is not None:
                yield self._agency.terminate(container.slot)
        except EngineError as error:
            yield self._after_failure(container, action, error)
            raise _operation_failed(container, action, error)
        if action == "kill":
            self._publish(container, "kill", signal=exit_code - 128)
        yield self._exited(container, exit_code, "exited", "")
        if action == "stop":
            self._publish(container, "stop")

    @inlineCallbacks
    def _restart(self, container: Container):
        if container.running:
            yield self._stop(container)
        yield self._start(container)
        self._publish(container, "restart")

    def _kill(self, container: Container, number: int):
        if not container.running:
            raise Conflict(f"Cannot kill container: {container.id}: "
                           f"container {container.id} is not running")
        return self._stop(container, 128 + number, "kill")

    @inlineCallbacks
    def _pause(self, container: Container):
        if container.state == "paused":
            raise Conflict(f"Container {container.id} is already paused")
        if container.state != "running":
            raise Conflict(f"Container {container.id} is not running")
        try:
            result = yield self._agency.initialize(container.slot)
        except EngineError as error:
            yield self._after_failure(container, "pause", error)
            raise _operation_failed(container, "pause", error)
        container.me_state = result.get("state", "suspended")
        container.state = docker_state(container.me_state)
        yield self._save(container)
        self._publish(container, "pause")

    @inlineCallbacks
    def _unpause(self, container: Container):
        if container.state != "paused":
            raise Conflict(f"Container {container.id} is not paused")
        try:
            result = yield self._agency.finalize(container.slot)
        except EngineError as error:
            yield self._after_failure(container, "unpause", error)
            raise _operation_failed(container, "unpause", error)
        # A capsule kernel restores a paused capsule from its snapshot, which
        # may land in another slot.
        container.slot = result.get("slot", container.slot)
        container.me_state = result.get("state", "living")
        container.state = docker_state(container.me_state)
        yield self._save(container)
        self._publish(container, "unpause")

    @inlineCallbacks
    def _remove(self, container: Container, force: bool):
        if container.running:
            if not force:
                raise Conflict(
                    f'cannot remove container "/{container.name}": container is '
                    f"{container.state}: stop the container before removing or "
                    "force remove"
                )
            yield self._stop(container, 128 + signal.SIGKILL, "kill")
        elif container.state == "restarting" and not force:
            raise Conflict(
                f'cannot remove container "/{container.name}": container is '
                "restarting: stop the container before removing or force remove"
            )
        container.removing = True
        yield self._store.delete_container(container.id)
        del self._containers[container.id]
        self._locks.pop(container.id, None)
        self.restarts.forget(container.id)
        folder = os.path.join(self._containers_dir, container.id)
        if os.path.dirname(container.log_path) == folder:
            # An adopted ME may log elsewhere: only the engine's folder goes.
            shutil.rmtree(folder, ignore_errors=True)
        self._publish(container, "destroy")
        for waiter in self._remove_waiters.pop(container.id, []):
            waiter.callback(_wait_response(container))
        log.info("Removed container {id} ({name})", id=container.short_id,
                 name=container.name)

    @inlineCallbacks
    def _rename(self, container: Container, new_name: str):
        if not new_name:
            raise InvalidParameter("Neither old nor new names may be empty")
        if not NAME_PATTERN.match(new_name):
            raise InvalidParameter(
                f"Invalid container name ({new_name}), only "
                "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )
        new_name = new_name.lstrip("/")
        if new_name == container.name:
            raise InvalidParameter(
                "Renaming a container with the same name as its current name"
            )
        self._check_name_free(new_name)
        old_name = container.name
        container.name = new_name
        try:
            yield self._save(container)
        except Exception:
            container.name = old_name
            raise
        self._publish(container, "rename", oldName="/" + old_name)
        log.info("Renamed container {id} from {old} to {new}",
                 id=container.short_id, old=old_name, new=new_name)

    @inlineCallbacks
    def _update_restart_policy(self, container: Container, policy: dict):
        previous = container.host_config
        container.host_config = {**previous, "RestartPolicy": policy}
        try:
            yield self._save(container)
        except Exception:
            container.host_config = previous
            raise
        self._publish(container, "update")

    # Agency state changes

    @inlineCallbacks
    def _after_failure(self, container: Container, operation: str, error: Exception):
        """
        Re-read the agency after a failed operation so the container shows
        the state the agency reports, not a guess.
        """
        log.warn(
            "Operation {operation} on container {id} failed: {error}",
            operation=operation,
            id=container.short_id,
            error=error,
        )
        try:
            slots = (yield self._agency.list_slots())["slots"]
        except EngineError as list_error:
            log.warn("Cannot list the agency slots: {error}", error=list_error)
            container.operation = None
            container.error = f"{operation} failed: {error}"
            yield self._save(container)
            return
        entry = next((e for e in slots if claims(container, e)
                      and e["state"] != "dead"), None)
        if entry is None:
            yield self._me_lost(container, container.me_state,
                                f"{operation} failed: {error}")
        else:
            container.error = f"{operation} failed: {error}"
            yield self._observe_slot(container, entry)

    def _agency_event(self, event: dict) -> None:
        if event.get("event") != "me_state":
            return
        try:
            self._record_event(event)
        finally:
            # The event's own facts first, then the other slots.
            self._reconciler.schedule()

    def _record_event(self, event: dict) -> None:
        slot = event.get("slot")
        token = event.get("token")
        if token:
            # A capsule backend moves a paused capsule's slot reservation and
            # reports the slot it had in previous_slot.
            container = self._containers.get(token)
            if container is not None and container.slot not in (
                slot, event.get("previous_slot")
            ):
                container = None
        else:
            container = next(
                (c for c in self._containers.values() if c.slot == slot), None
            )
        if container is None or container.operation is not None:
            return
        state = event.get("state")
        if state in ("dead", "terminated") or state is None:
            reason = event.get("reason") or f"the ME in slot {slot} is {state}"
            previous = "terminated" if state == "terminated" else event.get("previous")
            d = self._me_lost(container, previous, reason)
        else:
            d = self._observe_slot(container, {"slot": slot, "state": state})
        d.addErrback(lambda failure: log.failure(
            "Cannot record the agency event for container {id}", failure,
            id=container.short_id))

    def _me_lost(self, container: Container, last_state: str | None, reason: str):
        """
        Record that a container's ME left its slot without the engine asking.
        """
        log.warn(
            "The ME of container {id} (slot {slot}) is gone: {reason}",
            id=container.short_id,
            slot=container.slot,
            reason=reason,
        )
        state = "exited" if last_state == "terminated" else "dead"
        return self._exited(container, EXIT_ME_LOST, state, reason, requested=False)

    @inlineCallbacks
    def _exited(self, container: Container, exit_code: int, state: str, error: str,
                requested: bool = True):
        container.slot = None
        container.me_state = None
        container.console = None
        container.serial = None
        container.state = state
        container.exit_code = exit_code
        container.error = error
        container.finished_at = self._clock()
        container.operation = None
        if self.restarts.container_exited(container, requested):
            container.state = "restarting"
        yield self._save(container)
        self._publish(container, "die", exitCode=exit_code)
        for waiter in self._exit_waiters.pop(container.id, []):
            waiter.callback(_wait_response(container))
        if container.host_config.get("AutoRemove") and container.state != "restarting":
            # docker run --rm: remove once the operation holding the lock ends.
            self._reactor.callLater(0, self._auto_remove, container.id)

    def _auto_remove(self, container_id: str) -> None:
        container = self._containers.get(container_id)
        if container is None or container.removing or container.running:
            return
        d = self.remove(container_id, force=True)
        d.addErrback(
            lambda failure: log.failure(
                "Cannot remove container {id} after it exited (AutoRemove)",
                failure,
                id=container_id[:12],
            )
        )

    # Hooks for the modules that extend the lifecycle (checkpoints, update)

    def locked(self, name_or_id: str, operation: Callable[..., Any], *args: Any):
        """
        Run C{operation(container, *args)} under the container's lock, as
        the lifecycle operations do.
        """
        return self._locked(name_or_id, operation, *args)

    def save(self, container: Container) -> Deferred[None]:
        """
        Store the container's record.
        """
        return self._save(container)

    def publish(self, container: Container, action: str, **extra: object) -> Event:
        """
        Publish a container event with the container's name, image and labels.
        """
        return self._publish(container, action, **extra)

    def record_failure(self, container: Container, operation: str, error: Exception):
        """
        Record a failed operation: the container takes the state the agency
        reports for its ME.
        """
        return self._after_failure(container, operation, error)

    def record_exit(self, container: Container, exit_code: int, error: str = ""):
        """
        Record that the engine terminated the container's ME.
        """
        return self._exited(container, exit_code, "exited", error)

    # Helpers

    def _busy(self, container: Container) -> bool:
        """
        Tell whether an operation holds the container's lock.
        """
        lock = self._locks.get(container.id)
        return lock is not None and lock.locked

    def _save(self, container: Container) -> Deferred[None]:
        return self._store.save_container(container.to_record())

    @staticmethod
    def _restore(container: Container, previous: Container) -> None:
        for field in attrs.fields(Container):
            setattr(container, field.name, getattr(previous, field.name))

    def _publish(self, container: Container, action: str, **extra: object) -> Event:
        attributes: dict[str, object] = {
            "name": container.name,
            "image": container.image_ref,
            **container.labels,
            **extra,
        }
        return self._events.publish("container", action, container.id, attributes)


def parse_signal(value: str) -> int:
    """
    Turn a Docker signal parameter (C{SIGKILL}, C{KILL} or C{9}) into its number.

    @raise InvalidParameter: the signal is unknown.
    """
    text = (value or "SIGKILL").strip()
    if text.isdigit():
        number = int(text)
        if 0 < number < signal.NSIG:
            return number
    else:
        name = text.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        number = getattr(signal.Signals, name, None)
        if isinstance(number, signal.Signals):
            return int(number)
    raise InvalidParameter(f"Invalid signal: {value}")


def _wait_response(container: Container) -> dict:
    body: dict = {"StatusCode": container.exit_code}
    # The docker CLI turns any wait Error into its own exit status 125, so
    # an ME that shut itself down (exited, not dead) reports none, and an
    # attached "docker run" exits with the container's exit code.
    if container.error and container.state == "dead":
        body["Error"] = {"Message": container.error}
    return body


def _operation_failed(container: Container, operation: str, error: EngineError):
    if not isinstance(error, AgencyError):
        return error
    return type(error)(
        f"cannot {operation} container {container.short_id} ({container.name}): {error}"
    )


def _image_labels(image: Any) -> dict[str, str]:
    return {key: value for key, value in image.labels.items()
            if key.startswith(LABEL_PREFIX)}

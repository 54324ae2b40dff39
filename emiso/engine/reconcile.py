"""Bring container records in line with the MEs the agency reports.

At start-up every record is compared with the agency's slot list: an
operation that the previous engine left half done is finished or rolled
back, a container whose ME is gone becomes exited or dead, and an ME that no
record claims is adopted as a new container. After each driver event the
same comparison runs for the containers no operation holds.
"""

import hashlib
import os
import re
import secrets
from typing import Any

from twisted.internet.defer import (
    DeferredList,
    inlineCallbacks,
    succeed,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from emiso.engine.states import docker_state
from emiso.errors import EngineError, NoSuchImage

log = Logger()

#: Label of a container made for an ME that no record claimed.
ADOPTED_LABEL = "org.soo.adopted"

#: Exit code recorded for a stop or kill that the engine finished at start-up.
_EXIT_CODES = {"stop": 0, "kill": 128 + 9}

_HEX_ID = re.compile(r"^[0-9a-f]{64}$")
_NAME_CHARACTERS = re.compile(r"[^a-zA-Z0-9_.-]")


def claims(container: Any, entry: dict) -> bool:
    """
    Tell whether the slot C{entry} holds the ME of C{container}.

    An ME carries the token given at inject: the container id, or, for an
    adopted ME, the token it had before (C{agency_token}).
    """
    token = entry.get("token") or ""
    if token:
        return token in (container.id, container.agency_token)
    return container.agency_token == "" and container.slot == entry.get("slot")


class Reconciler:
    """
    The reconciliation of one L{emiso.engine.containers.ContainerManager}.

    It works on the manager's records and helpers; the manager calls
    L{at_load} once and L{schedule} after every driver event.
    """

    def __init__(self, manager: Any, reactor: Any) -> None:
        self._manager = manager
        self._reactor = reactor
        self._running = False
        self._again = False

    # Start-up

    @inlineCallbacks
    def at_load(self):
        """
        Reconcile every record, including those left mid-operation.
        """
        manager = self._manager
        slots = (yield manager._agency.list_slots())["slots"]
        live = [entry for entry in slots if entry.get("state") != "dead"]
        claimed: set[int] = set()
        for container in list(manager._containers.values()):
            entry = next((e for e in live if claims(container, e)), None)
            if entry is not None:
                claimed.add(entry["slot"])
            try:
                yield self._settle(container, entry)
            except EngineError as error:
                log.warn(
                    "Cannot finish operation {operation} of container {id}: "
                    "{error}",
                    operation=container.operation,
                    id=container.short_id,
                    error=error,
                )
                yield manager._after_failure(container, container.operation, error)
        for entry in live:
            if entry["slot"] not in claimed:
                yield self._adopt(entry)

    @inlineCallbacks
    def _settle(self, container: Any, entry: dict | None):
        manager = self._manager
        operation = container.operation
        if operation in _EXIT_CODES:
            # The stop was asked for: finish it.
            if entry is not None:
                yield manager._agency.terminate(entry["slot"])
            log.info(
                "Finished the interrupted {operation} of container {id}",
                operation=operation,
                id=container.short_id,
            )
            yield manager._exited(container, _EXIT_CODES[operation], "exited", "")
        elif operation == "start" and entry is None and container.slot is None:
            # Nothing was injected: the start never happened.
            log.info(
                "Rolled back the interrupted start of container {id}",
                id=container.short_id,
            )
            container.operation = None
            yield manager._save(container)
        elif operation == "start" and entry is not None:
            yield self._finish_start(container, entry)
        elif entry is not None:
            yield manager._observe_slot(container, entry)
        elif container.slot is not None or operation is not None:
            yield manager._me_lost(
                container, container.me_state, "the ME was not found in any slot"
            )

    @inlineCallbacks
    def _finish_start(self, container: Any, entry: dict):
        """
        Finish a start whose ME is in a slot: boot it if it still waits.
        """
        manager = self._manager
        container.slot = entry["slot"]
        container.me_state = entry["state"]
        if container.started_at is None:
            container.started_at = manager._clock()
        container.finished_at = None
        container.exit_code = 0
        container.error = ""
        if entry["state"] in ("booting", "preparing", "migrating"):
            result = yield manager._agency.finalize(entry["slot"])
            container.me_state = result.get("state", "living")
        container.state = docker_state(container.me_state)
        container.operation = None
        yield manager._save(container)
        manager._publish(container, "start")
        log.info(
            "Finished the interrupted start of container {id} in slot {slot}",
            id=container.short_id,
            slot=container.slot,
        )

    # Adoption

    @inlineCallbacks
    def _adopt(self, entry: dict):
        """
        Make a container record for an ME that no record claims, so that it
        can be seen, stopped and removed rather than left running unseen.
        """
        from emiso.engine.containers import Container

        manager = self._manager
        token = entry.get("token") or ""
        if _HEX_ID.match(token) and token not in manager._containers:
            container_id, agency_token = token, None
        else:
            container_id, agency_token = secrets.token_hex(32), token
        image = yield self._find_image(entry.get("image") or "")
        name = self._adoptive_name(entry.get("name") or "")
        labels = dict(manager_image_labels(image))
        labels[ADOPTED_LABEL] = "true"
        default_log = os.path.join(manager._containers_dir, container_id, "console.log")
        now = manager._clock()
        container = Container(
            id=container_id,
            name=name,
            image_id=image.id if image is not None else "",
            image_ref=_image_ref(image, entry.get("image") or ""),
            created=now,
            labels=labels,
            config={},
            host_config={},
            log_path=entry.get("log") or default_log,
            state=docker_state(entry["state"]),
            me_state=entry["state"],
            slot=entry["slot"],
            started_at=now,
            me_size=int(entry.get("size") or 0),
            me_name=entry.get("name") or "",
            spid=int(entry.get("spid") or 0),
            agency_token=agency_token,
        )
        yield manager._save(container)
        manager._containers[container.id] = container
        manager._publish(container, "create")
        log.warn(
            "Adopted ME {me} in slot {slot}, which no container claimed, as "
            "container {id} ({name})",
            me=container.me_name,
            slot=container.slot,
            id=container.short_id,
            name=name,
        )
        return container

    def _find_image(self, path: str):
        """
        Find the image of an ME from its file: by path, else by digest.
        """
        images = self._manager._images
        if not path:
            return succeed(None)
        for image in images.list():
            if image.path == path:
                return succeed(image)

        def digest() -> str | None:
            try:
                with open(path, "rb") as stream:
                    return "sha256:" + hashlib.file_digest(stream, "sha256").hexdigest()
            except OSError:
                return None

        def lookup(image_id: str | None):
            if image_id is None:
                return None
            try:
                return images.get(image_id)
            except NoSuchImage:
                return None

        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), digest)
        d.addCallback(lookup)
        return d

    def _adoptive_name(self, me_name: str) -> str:
        """
        Turn an ME name into a free Docker container name.
        """
        base = _NAME_CHARACTERS.sub("_", me_name)
        if not base or not base[0].isalnum():
            base = "me" + base
        if len(base) < 2:
            base += "0"
        taken = {c.name for c in self._manager._containers.values()}
        taken |= self._manager._reserved_names
        name, number = base, 1
        while name in taken:
            number += 1
            name = f"{base}-{number}"
        return name

    # Driver events

    def schedule(self) -> None:
        """
        Reconcile soon after a driver event; calls made while one runs are
        coalesced into one more pass.
        """
        if self._running:
            self._again = True
            return
        self._running = True
        d = self._after_event()
        d.addErrback(
            lambda failure: log.failure("Reconciliation after an event failed", failure)
        )
        d.addBoth(self._done)

    def _done(self, _: object) -> None:
        self._running = False
        if self._again:
            self._again = False
            self.schedule()

    @inlineCallbacks
    def _after_event(self):
        manager = self._manager
        try:
            slots = (yield manager._agency.list_slots())["slots"]
        except EngineError as error:
            log.warn("Cannot list the agency slots: {error}", error=error)
            return
        # The agency runs one call at a time, so the list reflects every call
        # that finished before it. A container whose lock is free has recorded
        # the results of its calls, so it can be compared with the list now.
        live = [entry for entry in slots if entry.get("state") != "dead"]
        claimed: set[int] = set()
        pending = []
        for container in list(manager._containers.values()):
            entry = next((e for e in live if claims(container, e)), None)
            if entry is not None:
                claimed.add(entry["slot"])
            if manager._busy(container):
                continue
            if entry is not None:
                pending.append(manager._observe_slot(container, entry))
            elif container.slot is not None:
                pending.append(
                    manager._me_lost(
                        container,
                        container.me_state,
                        f"the ME left slot {container.slot}",
                    )
                )
        yield DeferredList(pending, consumeErrors=True)
        for entry in live:
            if entry["slot"] not in claimed:
                yield self._adopt(entry)


def manager_image_labels(image: Any) -> dict[str, str]:
    """
    Return the C{org.soo.} labels of an image, or none without an image.
    """
    if image is None:
        return {}
    return {k: v for k, v in image.labels.items() if k.startswith("org.soo.")}


def _image_ref(image: Any, path: str) -> str:
    if image is not None and image.repo_tags:
        return image.repo_tags[0]
    if image is not None:
        return image.id
    name = os.path.basename(path)
    return name[: -len(".itb")] if name.endswith(".itb") else name or "unknown"

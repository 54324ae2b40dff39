"""An in-memory agency for unit tests of the engine and the API.

It keeps the generation-A slot rules of the simulated agency (slots 2 to 6,
first free slot, the state checks of each operation) and answers at once,
so engine tests run without a driver process.
"""

import json
import zipfile
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from emiso.agency.interfaces import IAgency
from emiso.errors import AgencyError, BadAgencyState, MigrationRefused, NoFreeSlot

SLOTS = range(2, 7)


@implementer(IAgency)
class FakeAgency:
    """
    Slots in memory; every operation fires synchronously.

    @ivar slots: slot number to slot dict (C{state}, C{token}, C{image}...).
    @ivar calls: the operations called, in order, as C{(op, args)}.
    @ivar refuse_migration: make C{initialize} fail as a refusing ME does.
    @ivar failures: operation name to the exception its next call fails
        with; each entry is used once.
    """

    degraded = False
    driver_pid = None

    def __init__(self) -> None:
        self.slots: dict[int, dict] = {}
        self.calls: list[tuple[str, dict]] = []
        self.refuse_migration = False
        self.failures: dict[str, AgencyError] = {}
        self._subscribers: list[Callable[[dict], None]] = []
        self.started = False

    def start(self) -> Deferred:
        self.started = True
        return succeed({"backend": "fake", "version": 1, "pid": 0})

    def stop(self) -> Deferred:
        self.started = False
        return succeed(None)

    def call(self, op: str, **args: Any) -> Deferred:
        self.calls.append((op, args))
        if op in self.failures:
            return fail(self.failures.pop(op))
        method = getattr(self, "_" + op, None)
        if method is None:
            return fail(AgencyError(f"unknown agency operation {op!r}"))
        try:
            return succeed(method(**args))
        except AgencyError as error:
            return fail(error)

    def subscribe(self, callback: Callable[[dict], None]) -> None:
        self._subscribers.append(callback)

    def emit(self, event: dict) -> None:
        """
        Deliver an unsolicited driver event to the subscribers.
        """
        for callback in self._subscribers:
            callback(event)

    def crash(self, slot: int) -> None:
        """
        Make the ME in C{slot} die on its own, as a crashing ME does.
        """
        previous = self.slots.pop(slot)["state"]
        self.emit({"event": "me_state", "slot": slot, "state": "dead",
                   "previous": previous, "reason": "kernel panic", "exit_status": 1})

    def list_slots(self) -> Deferred:
        return self.call("list")

    def inject(self, image: str, log: str, token: str) -> Deferred:
        return self.call("inject", image=image, log=log, token=token)

    def finalize(self, slot: int) -> Deferred:
        return self.call("finalize", slot=slot)

    def initialize(self, slot: int) -> Deferred:
        return self.call("initialize", slot=slot)

    def terminate(self, slot: int) -> Deferred:
        return self.call("terminate", slot=slot)

    def read_snapshot(self, slot: int, path: str) -> Deferred:
        return self.call("read_snapshot", slot=slot, path=path)

    def write_snapshot(
        self, path: str, log: str, token: str, image: str | None = None
    ) -> Deferred:
        return self.call("write_snapshot", path=path, log=log, token=token, image=image)

    def _list(self) -> dict:
        entries = []
        for slot in SLOTS:
            entry = self.slots.get(slot)
            entries.append({"slot": slot, **entry} if entry else {"slot": slot, "state": "dead"})
        return {"slots": entries}

    def _inject(self, image: str, log: str, token: str) -> dict:
        free = [slot for slot in SLOTS if slot not in self.slots]
        if not free:
            raise NoFreeSlot("no free ME slot: all 5 slots (2 to 6) are in use")
        slot = free[0]
        self.slots[slot] = {"state": "booting", "token": token, "image": image, "log": log}
        return {"slot": slot, "state": "booting", "size": 16 * 1024 * 1024}

    def _finalize(self, slot: int) -> dict:
        entry = self._occupied(slot, "finalize", ("booting", "suspended", "migrating"))
        entry["state"] = "living"
        return {"state": "living"}

    def _initialize(self, slot: int) -> dict:
        entry = self._occupied(slot, "initialize", ("living",))
        if self.refuse_migration:
            raise MigrationRefused(f"the ME in slot {slot} refused the migration")
        entry["state"] = "suspended"
        return {"state": "suspended"}

    def _terminate(self, slot: int) -> dict:
        self._occupied(
            slot, "terminate", ("booting", "preparing", "living", "suspended", "migrating")
        )
        del self.slots[slot]
        return {"state": "dead", "exit_status": 0}

    def _read_snapshot(self, slot: int, path: str) -> dict:
        entry = self._occupied(slot, "read_snapshot", ("suspended",))
        context = {"image": entry["image"], "token": entry["token"]}
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("me", json.dumps(context))
        return {"size": len(json.dumps(context))}

    def _write_snapshot(
        self, path: str, log: str, token: str, image: str | None = None
    ) -> dict:
        try:
            with zipfile.ZipFile(path) as archive:
                context = json.loads(archive.read("me"))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
            raise AgencyError(f"invalid snapshot {path}: {error}")
        free = [slot for slot in SLOTS if slot not in self.slots]
        if not free:
            raise NoFreeSlot("no free ME slot: all 5 slots (2 to 6) are in use")
        slot = free[0]
        self.slots[slot] = {"state": "migrating", "token": token,
                            "image": image or context["image"], "log": log}
        return {"slot": slot, "state": "migrating"}

    def _occupied(self, slot: int, op: str, allowed: tuple[str, ...]) -> dict:
        entry = self.slots.get(slot)
        state = entry["state"] if entry else "dead"
        if state not in allowed:
            raise BadAgencyState(f"cannot {op} slot {slot}: the ME is {state}")
        return entry

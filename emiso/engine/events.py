"""Docker events: what the engine did, kept in a small ring buffer and pushed to listeners."""

import collections
import time
from typing import Callable

import attrs
from twisted.logger import Logger

log = Logger()

#: How many past events the engine keeps for C{GET /events?since=}.
HISTORY_SIZE = 1024


@attrs.frozen
class Event:
    """
    One Docker event.

    @ivar type: the object type: C{container}, C{image} or C{daemon}.
    @ivar action: the Docker action name, for example C{start} or C{die}.
    @ivar actor_id: the container id or image id the event is about.
    @ivar attributes: string attributes (C{name}, C{image}, C{exitCode}...).
    @ivar time_ns: when it happened, in nanoseconds since the epoch.
    """

    type: str
    action: str
    actor_id: str
    attributes: dict[str, str]
    time_ns: int

    def to_json(self) -> dict:
        """
        Render the event as Docker's C{EventMessage}, with the legacy fields
        that API versions below 1.52 still carry.
        """
        body = {
            "Type": self.type,
            "Action": self.action,
            "Actor": {"ID": self.actor_id, "Attributes": dict(self.attributes)},
            "scope": "local",
            "time": self.time_ns // 1_000_000_000,
            "timeNano": self.time_ns,
        }
        if self.type == "container":
            body["status"] = self.action
            body["id"] = self.actor_id
            body["from"] = self.attributes.get("image", "")
        return body


class EventBus:
    """
    Publish engine events to listeners and keep the recent ones.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._history: collections.deque[Event] = collections.deque(maxlen=HISTORY_SIZE)
        self._listeners: list[Callable[[Event], None]] = []

    def publish(
        self, type: str, action: str, actor_id: str, attributes: dict[str, object]
    ) -> Event:
        """
        Record an event and deliver it to every listener.

        Attribute values are turned into strings, as Docker sends them.
        """
        event = Event(
            type=type,
            action=action,
            actor_id=actor_id,
            attributes={key: str(value) for key, value in attributes.items()},
            time_ns=int(self._clock() * 1_000_000_000),
        )
        self._history.append(event)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.failure("Event listener failed on {action}", action=action)
        return event

    def history(self) -> list[Event]:
        """
        Return the buffered events, oldest first.
        """
        return list(self._history)

    def listen(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """
        Add a listener; return a function that removes it.
        """
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

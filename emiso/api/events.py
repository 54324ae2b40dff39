"""The C{GET /events} stream: buffered events since a time, then live ones until
a time."""

import json
from typing import Any

from twisted.internet.defer import Deferred

from emiso.api.base import JSON, app, label_matches, parse_filters_text, query_arg
from emiso.engine.events import Event
from emiso.engine.timeutil import parse_docker_time_ns

#: Filter keys dockerd accepts on C{/events}. The engine has only container
#: and image events, so filters on the other object types match nothing.
EVENT_FILTER_KEYS = frozenset(
    {
        "config",
        "container",
        "daemon",
        "event",
        "image",
        "label",
        "network",
        "node",
        "plugin",
        "scope",
        "secret",
        "service",
        "type",
        "volume",
    }
)


class EventRoutes:
    """
    C{GET /events}.
    """

    app = app

    @app.route("/events", methods=["GET"])
    def events(self, request: Any):
        engine = self._engine
        filters = parse_filters_text(query_arg(request, "filters"), EVENT_FILTER_KEYS)
        since_ns = _time_arg(request, "since")
        until_ns = _time_arg(request, "until")
        now_ns = int(engine.reactor.seconds() * 1_000_000_000)
        # Docker sends the headers before the first event, so a client sees
        # the stream open even when nothing happens.
        request.setHeader(b"Content-Type", JSON)
        request.write(b"")
        stream = _EventStream(request, filters, until_ns)
        if since_ns is not None or until_ns is not None:
            # As in dockerd, either bound replays the buffered events in it.
            for event in engine.events.history():
                if since_ns is None or event.time_ns >= since_ns:
                    stream.send(event)
        if until_ns is not None and until_ns <= now_ns:
            return b""
        remove = engine.events.listen(stream.send)
        done: Deferred = Deferred()
        calls = []

        def finish(_: object = None) -> None:
            stream.closed = True
            remove()
            for call in calls:
                if call.active():
                    call.cancel()
            if not done.called:
                done.callback(b"")

        if until_ns is not None:
            delay = (until_ns - now_ns) / 1_000_000_000
            calls.append(engine.reactor.callLater(delay, finish))
        request.notifyFinish().addBoth(finish)
        return done


class _EventStream:
    """
    Write the events that pass the filters and the time window as JSON lines.
    """

    def __init__(self, request: Any, filters: dict, until_ns: int | None) -> None:
        self._request = request
        self._filters = filters
        self._until_ns = until_ns
        self.closed = False

    def send(self, event: Event) -> None:
        if self._until_ns is not None and event.time_ns > self._until_ns:
            return
        if not event_matches(event, self._filters):
            return
        if self.closed:
            return
        self._request.write(json.dumps(event.to_json()).encode() + b"\n")


def event_matches(event: Event, filters: dict[str, list[str]]) -> bool:
    """
    Apply dockerd's event filters: values of one key are alternatives,
    different keys must all match, and every C{label} value must match.
    """
    checks = {
        "type": lambda value: event.type == value,
        "event": lambda value: _action_matches(event.action, value),
        "container": lambda value: event.type == "container"
        and _id_or_name_matches(event, value),
        "image": lambda value: _image_matches(event, value),
        "scope": lambda value: value == "local",
    }
    for key, values in filters.items():
        if not values:
            continue
        if key == "label":
            if not all(label_matches(event.attributes, value) for value in values):
                return False
            continue
        check = checks.get(key)
        if check is None:
            # Networks, volumes, plugins, the daemon and swarm objects emit
            # no events here.
            return False
        if not any(check(value) for value in values):
            return False
    return True


def _time_arg(request: Any, name: str) -> int | None:
    text = query_arg(request, name)
    if not text:
        return None
    return parse_docker_time_ns(text, name)


def _action_matches(action: str, expected: str) -> bool:
    # Actions such as "exec_start: sh" match the filter "exec_start".
    return action == expected or action.split(":", 1)[0] == expected


def _id_or_name_matches(event: Event, expected: str) -> bool:
    name = event.attributes.get("name", "")
    return event.actor_id.startswith(expected) or name == expected.lstrip("/")


def _image_matches(event: Event, expected: str) -> bool:
    if event.type == "image":
        candidates = {event.actor_id, event.attributes.get("name", "")}
    else:
        candidates = {event.attributes.get("image", "")}
    for candidate in candidates:
        if not candidate:
            continue
        if candidate == expected or candidate == expected + ":latest":
            return True
        if candidate.startswith("sha256:") and candidate[7:].startswith(
            expected.removeprefix("sha256:")
        ):
            return True
    return False


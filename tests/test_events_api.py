"""
Tests for the event filters of C{GET /events} (L{emiso.api.events}).
"""

from twisted.trial.unittest import SynchronousTestCase

from emiso.api.base import parse_filters_text as parse_filters
from emiso.api.events import EVENT_FILTER_KEYS, event_matches
from emiso.engine.events import Event
from emiso.errors import InvalidParameter

CONTAINER_ID = "ab" * 32
IMAGE_ID = "sha256:" + "cd" * 32


def container_event(action: str = "start", **attributes) -> Event:
    base = {"name": "demo", "image": "refso3-sim", "org.soo.me.name": "SOO.refso3"}
    return Event("container", action, CONTAINER_ID, {**base, **attributes}, 0)


def image_event(action: str = "tag") -> Event:
    return Event("image", action, IMAGE_ID, {"name": "refso3-sim:latest"}, 0)


class ParseFiltersTests(SynchronousTestCase):
    def test_list_shape(self):
        filters = parse_filters('{"type": ["container"]}', EVENT_FILTER_KEYS)

        self.assertEqual(filters, {"type": ["container"]})

    def test_map_shape(self):
        filters = parse_filters(
            '{"event": {"start": true, "stop": false}}', EVENT_FILTER_KEYS
        )

        self.assertEqual(filters, {"event": ["start"]})

    def test_unknown_key(self):
        error = self.assertRaises(
            InvalidParameter, parse_filters, '{"colour": ["red"]}', EVENT_FILTER_KEYS
        )

        self.assertEqual(str(error), "invalid filter 'colour'")

    def test_invalid_json(self):
        self.assertRaises(InvalidParameter, parse_filters, "{", EVENT_FILTER_KEYS)


class EventMatchesTests(SynchronousTestCase):
    def test_type(self):
        self.assertTrue(event_matches(container_event(), {"type": ["container"]}))
        self.assertFalse(event_matches(image_event(), {"type": ["container"]}))

    def test_container_by_name_or_prefix(self):
        self.assertTrue(event_matches(container_event(), {"container": ["demo"]}))
        self.assertTrue(event_matches(container_event(), {"container": ["abab"]}))
        self.assertFalse(event_matches(container_event(), {"container": ["other"]}))

    def test_event_with_detail(self):
        event = container_event("exec_start: sh")

        self.assertTrue(event_matches(event, {"event": ["exec_start"]}))

    def test_image_of_container(self):
        self.assertTrue(event_matches(container_event(), {"image": ["refso3-sim"]}))
        self.assertTrue(event_matches(image_event(), {"image": ["refso3-sim"]}))
        self.assertTrue(event_matches(image_event(), {"image": ["cdcd"]}))

    def test_labels_all_match(self):
        filters = {"label": ["org.soo.me.name=SOO.refso3", "missing"]}

        self.assertFalse(event_matches(container_event(), filters))
        self.assertTrue(
            event_matches(container_event(), {"label": ["org.soo.me.name"]})
        )

    def test_network_matches_nothing(self):
        self.assertFalse(event_matches(container_event(), {"network": ["bridge"]}))

    def test_keys_combine(self):
        filters = {"type": ["container"], "event": ["stop", "die"]}

        self.assertFalse(event_matches(container_event("start"), filters))
        self.assertTrue(event_matches(container_event("die"), filters))

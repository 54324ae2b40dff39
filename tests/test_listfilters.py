"""Tests for the C{filters} of C{GET /images/json} and C{GET /containers/json}."""

import json
from urllib.parse import quote

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from emiso.api.images import path_match
from tests.fitbuilder import build_fit
from tests.test_api import APITestCase


def listing(route, filters):
    return f"/{route}/json?all=1&filters=" + quote(json.dumps(filters))


class PathMatchTests(SynchronousTestCase):
    def test_star_stops_at_slash(self):
        self.assertTrue(path_match("f*", "foo:1"))
        self.assertFalse(path_match("f*", "f/oo"))

    def test_class_and_negation(self):
        self.assertTrue(path_match("[a-c]x", "bx"))
        self.assertFalse(path_match("[^a-c]x", "bx"))

    def test_question_mark(self):
        self.assertTrue(path_match("f?o", "foo"))
        self.assertFalse(path_match("f?o", "f/o"))

    def test_escape(self):
        self.assertTrue(path_match("a\\*", "a*"))
        self.assertFalse(path_match("a\\*", "ab"))

    def test_bad_pattern(self):
        for pattern in ("a[", "a\\", "[]", "[z-a]"):
            self.assertRaises(ValueError, path_match, pattern, "a")


class ImageFilterTests(APITestCase):
    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.ids = {}
        for name, repo, timestamp in [
            ("old", "fast", 1700000000),
            ("middle", "", 1750000000),
            ("new", "other", 1760000000),
        ]:
            query = f"fromSrc=-&repo={repo}&tag=v1" if repo else "fromSrc=-"
            fit = build_fit(description=f"{name} image", timestamp=timestamp)
            response, raw = yield self.request(
                "POST", "/images/create?" + query, data=fit
            )
            self.assertEqual(response.code, 200, raw)
            self.ids[name] = raw["status"]

    @inlineCallbacks
    def ids_for(self, filters):
        response, body = yield self.request("GET", listing("images", filters))
        self.assertEqual(response.code, 200, body)
        return [image["Id"] for image in body]

    @inlineCallbacks
    def test_dangling(self):
        dangling = yield self.ids_for({"dangling": ["true"]})
        tagged = yield self.ids_for({"dangling": {"false": True}})

        self.assertEqual(dangling, [self.ids["middle"]])
        self.assertNotIn(self.ids["middle"], tagged)
        self.assertIn(self.ids["old"], tagged)

    @inlineCallbacks
    def test_reference(self):
        by_glob = yield self.ids_for({"reference": ["f*"]})
        by_tag = yield self.ids_for({"reference": ["other:v1"]})
        by_none = yield self.ids_for({"reference": ["other:v2"]})

        self.assertEqual(by_glob, [self.ids["old"]])
        self.assertEqual(by_tag, [self.ids["new"]])
        self.assertEqual(by_none, [])

    @inlineCallbacks
    def test_reference_narrows_tags(self):
        yield self.request("POST", "/images/fast:v1/tag?repo=fast&tag=v2")

        _, body = yield self.request("GET", listing("images", {"reference": ["*:v2"]}))

        self.assertEqual([image["RepoTags"] for image in body], [["fast:v2"]])

    @inlineCallbacks
    def test_label(self):
        key_only = yield self.ids_for({"label": ["org.soo.fit.description"]})
        key_value = yield self.ids_for({"label": ["org.soo.fit.description=new image"]})

        self.assertIn(self.ids["old"], key_only)
        self.assertEqual(key_value, [self.ids["new"]])

    @inlineCallbacks
    def test_before_since(self):
        before = yield self.ids_for({"before": ["other:v1"]})
        since = yield self.ids_for({"since": [self.ids["old"]]})

        self.assertNotIn(self.ids["new"], before)
        self.assertIn(self.ids["old"], before)
        self.assertIn(self.ids["middle"], before)
        self.assertNotIn(self.ids["old"], since)
        self.assertIn(self.ids["middle"], since)
        self.assertIn(self.ids["new"], since)

    @inlineCallbacks
    def test_unknown_before(self):
        response, body = yield self.request(
            "GET", listing("images", {"before": ["nosuch:v9"]})
        )

        self.assertEqual(response.code, 404)
        self.assertEqual(body["message"], "No such image: nosuch:v9")

    @inlineCallbacks
    def test_unknown_key(self):
        response, body = yield self.request("GET", listing("images", {"bogus": ["1"]}))

        self.assertEqual(response.code, 400)
        self.assertEqual(body["message"], "invalid filter 'bogus'")

    @inlineCallbacks
    def test_bad_values(self):
        for filters, named in [
            ({"dangling": ["yes"]}, "dangling=[yes]"),
            ({"reference": ["a["]}, "reference=a["),
            ({"until": ["yesterday"]}, "yesterday"),
        ]:
            response, body = yield self.request("GET", listing("images", filters))

            self.assertEqual(response.code, 400, filters)
            self.assertIn(named, body["message"])

    @inlineCallbacks
    def test_until(self):
        until = yield self.ids_for({"until": ["1755000000"]})

        self.assertIn(self.ids["old"], until)
        self.assertIn(self.ids["middle"], until)
        self.assertNotIn(self.ids["new"], until)


class ContainerFilterTests(APITestCase):
    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.ids = {}
        for name in ("first", "second", "third"):
            self.ids[name] = yield self.create(name)

    @inlineCallbacks
    def names_for(self, filters):
        response, body = yield self.request("GET", listing("containers", filters))
        self.assertEqual(response.code, 200, body)
        return sorted(c["Names"][0].lstrip("/") for c in body)

    @inlineCallbacks
    def test_before_since(self):
        before = yield self.names_for({"before": ["second"]})
        since = yield self.names_for({"since": [self.ids["first"][:12]]})

        self.assertEqual(before, ["first"])
        self.assertEqual(since, ["second", "third"])

    @inlineCallbacks
    def test_unknown_since(self):
        response, body = yield self.request(
            "GET", listing("containers", {"since": ["nosuch"]})
        )

        self.assertEqual(response.code, 404)
        self.assertEqual(body["message"], "No such container: nosuch")

    @inlineCallbacks
    def test_exited(self):
        yield self.request("POST", "/containers/second/start")
        yield self.request("POST", "/containers/second/kill")

        killed = yield self.names_for({"exited": ["137"]})
        clean = yield self.names_for({"exited": ["0"]})

        self.assertEqual(killed, ["second"])
        self.assertEqual(clean, [])

    @inlineCallbacks
    def test_constant_filters(self):
        every = ["first", "second", "third"]
        for filters, expected in [
            ({"health": ["none"]}, every),
            ({"health": ["healthy"]}, []),
            ({"network": ["bridge"]}, []),
            ({"volume": ["data"]}, []),
            ({"isolation": ["default"]}, every),
            ({"is-task": ["false"]}, every),
            ({"is-task": ["true"]}, []),
        ]:
            names = yield self.names_for(filters)

            self.assertEqual(names, expected, filters)

    @inlineCallbacks
    def test_bad_values(self):
        for filters, message in [
            ({"exited": ["x"]}, "invalid filter 'exited=x'"),
            ({"health": ["sick"]}, "invalid filter 'health=sick'"),
            ({"is-task": ["maybe"]}, "invalid filter 'is-task=maybe'"),
            ({"bogus": ["1"]}, "invalid filter 'bogus'"),
        ]:
            response, body = yield self.request("GET", listing("containers", filters))

            self.assertEqual(response.code, 400, filters)
            self.assertEqual(body["message"], message)

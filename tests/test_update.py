"""Tests for the update of a container to a new image, on the fake agency."""

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from emiso.errors import AgencyTimeout, NoMemory
from tests.test_api import APITestCase


class UpdateRouteTests(APITestCase):
    """
    C{POST /containers/{id}/so3/update}.
    """

    @inlineCallbacks
    def running(self, name="demo"):
        response, body = yield self.request(
            "POST", f"/containers/create?name={name}",
            body={"Image": "refso3-sim", "Labels": {"team": "blue"}},
        )
        self.assertEqual(response.code, 201, body)
        response, _ = yield self.request("POST", f"/containers/{name}/start")
        self.assertEqual(response.code, 204)
        return body["Id"]

    @inlineCallbacks
    def inspect(self, name="demo"):
        _, body = yield self.request("GET", f"/containers/{name}/json")
        return body

    def update(self, name="demo", image="blinky-sim", min_ready=0):
        return self.request(
            "POST", f"/containers/{name}/so3/update",
            body={"Image": image, "MinReadySeconds": min_ready},
        )

    def steps(self):
        return [
            event.attributes["step"]
            for event in self.engine.events.history()
            if event.action == "update"
        ]

    @inlineCallbacks
    def test_update_keeps_identity(self):
        container_id = yield self.running()
        before = yield self.inspect()

        response, body = yield self.update()

        self.assertEqual(response.code, 200, body)
        after = yield self.inspect()
        self.assertEqual(after["Id"], container_id)
        self.assertEqual(after["Name"], "/demo")
        self.assertEqual(after["Config"]["Labels"]["team"], "blue")
        self.assertEqual(after["Config"]["Image"], "blinky-sim")
        self.assertEqual(after["State"]["Status"], "running")
        self.assertNotEqual(after["Image"], before["Image"])
        self.assertEqual(body["Image"], after["Image"])
        self.assertEqual(body["PreviousImage"], before["Image"])
        self.assertEqual(list(self.agency.slots), [3])
        self.assertEqual(self.agency.slots[3]["token"], container_id)

    @inlineCallbacks
    def test_update_events_per_step(self):
        yield self.running()

        yield self.update()

        self.assertEqual(
            self.steps(),
            ["suspend-old", "inject-new", "start-new", "terminate-old", "done"],
        )

    @inlineCallbacks
    def test_boot_failure_rolls_back(self):
        yield self.running()
        before = yield self.inspect()
        self.agency.failures["finalize"] = AgencyTimeout("finalize timed out")

        response, body = yield self.update()

        self.assertEqual(response.code, 500)
        self.assertIn("finalize timed out", body["message"])
        self.assertIn("rolled back", body["message"])
        self.assertEqual((yield self.inspect()), before)
        self.assertEqual(self.agency.slots[2]["state"], "living")
        self.assertEqual(list(self.agency.slots), [2])
        self.assertEqual(
            self.steps(), ["suspend-old", "inject-new", "rollback", "rolled-back"]
        )

    @inlineCallbacks
    def test_crash_after_boot_rolls_back(self):
        yield self.running()
        before = yield self.inspect()
        crash = reactor.callLater(0.2, self.agency.crash, 3)
        self.addCleanup(lambda: crash.active() and crash.cancel())

        response, body = yield self.update(min_ready=2)

        self.assertEqual(response.code, 500)
        self.assertIn("kernel panic", body["message"])
        self.assertEqual((yield self.inspect()), before)
        self.assertEqual(self.agency.slots[2]["state"], "living")
        self.assertEqual(list(self.agency.slots), [2])

    @inlineCallbacks
    def test_no_memory_rolls_back(self):
        yield self.running()
        self.agency.failures["inject"] = NoMemory("the ME memory pool is full")

        response, body = yield self.update()

        self.assertEqual(response.code, 500)
        self.assertIn("memory pool is full", body["message"])
        self.assertEqual((yield self.inspect())["State"]["Status"], "running")
        self.assertEqual(self.agency.slots[2]["state"], "living")

    @inlineCallbacks
    def test_refused_suspend_keeps_running(self):
        yield self.running()
        self.agency.refuse_migration = True

        response, body = yield self.update()

        self.assertEqual(response.code, 500)
        self.assertIn("could not be suspended", body["message"])
        self.assertEqual((yield self.inspect())["State"]["Status"], "running")
        self.assertEqual(list(self.agency.slots), [2])

    @inlineCallbacks
    def test_stopped_container_switches_image(self):
        yield self.create("demo")

        response, body = yield self.update()

        self.assertEqual(response.code, 200, body)
        after = yield self.inspect()
        self.assertEqual(after["Config"]["Image"], "blinky-sim")
        self.assertEqual(after["State"]["Status"], "created")
        self.assertEqual(self.agency.slots, {})

    @inlineCallbacks
    def test_paused_container_rejected(self):
        yield self.running()
        yield self.request("POST", "/containers/demo/pause")

        response, body = yield self.update()

        self.assertEqual(response.code, 409)
        self.assertIn("paused", body["message"])

    @inlineCallbacks
    def test_bad_requests(self):
        yield self.running()
        cases = [
            ({"MinReadySeconds": 1}, 400),
            ({"Image": "blinky-sim", "MinReadySeconds": -1}, 400),
            ({"Image": "blinky-sim", "MinReadySeconds": "soon"}, 400),
            ({"Image": "no-such-image"}, 404),
        ]
        for body, status in cases:
            response, result = yield self.request(
                "POST", "/containers/demo/so3/update", body=body
            )

            self.assertEqual(response.code, status, (body, result))
        self.assertEqual((yield self.inspect())["Config"]["Image"], "refso3-sim")

    @inlineCallbacks
    def test_missing_container(self):
        response, body = yield self.update(name="absent")

        self.assertEqual(response.code, 404)
        self.assertEqual(body["message"], "No such container: absent")

"""Tests for the reconciliation of container records with the agency's slots.

The engine is real (store, images, containers) on L{FakeAgency}; a test
changes the fake's slots or a record behind the engine's back, as a crash
or a restart would, then reconciles.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from emiso.config import resolve
from emiso.engine.engine import Engine
from emiso.engine.reconcile import ADOPTED_LABEL
from tests.fakeagency import FakeAgency

TOKEN = "ab" * 32


class ReconcileTestCase(TestCase):
    @inlineCallbacks
    def setUp(self):
        data_dir = os.path.abspath(self.mktemp())
        config = resolve({"data_dir": data_dir, "config": None})
        self.agency = FakeAgency()
        self.engine = Engine(reactor, config, self.agency)
        yield self.engine.start()
        self.addCleanup(self.engine.stop)
        self.containers = self.engine.containers
        self.image = self.engine.images.get("refso3-sim")

    @inlineCallbacks
    def started(self, name):
        container = yield self.containers.create(name, "refso3-sim", {}, {}, {})
        yield self.containers.start(container.id)
        return container

    def unclaimed_me(self, slot=3, token=TOKEN, name="SOO.refso3", log=None):
        self.agency.slots[slot] = {
            "state": "living",
            "token": token,
            "name": name,
            "image": self.image.path,
            "log": log or os.path.join(self.mktemp(), "console.log"),
            "size": 16 * 1024 * 1024,
            "spid": 7,
        }

    def calls(self, op):
        return [args for name, args in self.agency.calls if name == op]

    @inlineCallbacks
    def reload(self):
        """
        Drop the engine's view and load it again from the store, as a new
        engine process does.
        """
        self.containers._containers.clear()
        yield self.containers.load()


class LostMETests(ReconcileTestCase):
    @inlineCallbacks
    def test_running_me_gone_is_dead(self):
        container = yield self.started("lost")
        self.agency.slots.clear()

        yield self.reload()

        found = self.containers.get("lost")
        self.assertEqual(found.state, "dead")
        self.assertEqual(found.exit_code, 255)
        self.assertIn("not found in any slot", found.error)
        self.assertIsNotNone(found.finished_at)
        self.assertIsNone(found.slot)
        self.assertEqual(found.id, container.id)

    @inlineCallbacks
    def test_paused_me_state_taken(self):
        container = yield self.started("frozen")
        self.agency.slots[container.slot]["state"] = "suspended"

        yield self.reload()

        self.assertEqual(self.containers.get("frozen").state, "paused")

    @inlineCallbacks
    def test_event_reconciles_others(self):
        first = yield self.started("first")
        second = yield self.started("second")
        # The second ME vanishes silently; only the first one's death is told.
        del self.agency.slots[second.slot]

        self.agency.crash(first.slot)
        yield deferLater(reactor, 0.2, lambda: None)

        self.assertEqual(self.containers.get("first").state, "dead")
        self.assertEqual(self.containers.get("second").state, "dead")
        self.assertIn("left slot", self.containers.get("second").error)


class AdoptionTests(ReconcileTestCase):
    @inlineCallbacks
    def test_unclaimed_me_adopted(self):
        self.unclaimed_me()

        yield self.reload()

        adopted = self.containers.get("SOO.refso3")
        self.assertEqual(adopted.labels[ADOPTED_LABEL], "true")
        self.assertEqual(adopted.state, "running")
        self.assertEqual(adopted.slot, 3)
        self.assertEqual(adopted.image_id, self.image.id)

    @inlineCallbacks
    def test_hex_token_becomes_id(self):
        self.unclaimed_me()

        yield self.reload()

        self.assertEqual(self.containers.get("SOO.refso3").id, TOKEN)

    @inlineCallbacks
    def test_adopted_once(self):
        self.unclaimed_me(token="made-by-hand")
        yield self.reload()

        yield self.reload()

        adopted = [c for c in self.containers.list() if ADOPTED_LABEL in c.labels]
        self.assertEqual(len(adopted), 1)
        self.assertEqual(adopted[0].agency_token, "made-by-hand")

    @inlineCallbacks
    def test_name_made_unique(self):
        yield self.containers.create("SOO.refso3", "refso3-sim", {}, {}, {})
        self.unclaimed_me()

        yield self.reload()

        self.assertEqual(self.containers.get("SOO.refso3-2").slot, 3)

    @inlineCallbacks
    def test_invalid_me_name_fixed(self):
        self.unclaimed_me(name="/bad name!")

        yield self.reload()

        self.assertEqual(self.containers.get("me_bad_name_").slot, 3)

    @inlineCallbacks
    def test_unknown_image_kept(self):
        self.unclaimed_me()
        self.agency.slots[3]["image"] = "/nonexistent/gone.itb"

        yield self.reload()

        adopted = self.containers.get("SOO.refso3")
        self.assertEqual(adopted.image_id, "")
        self.assertEqual(adopted.image_ref, "gone")

    @inlineCallbacks
    def test_adopted_after_event(self):
        container = yield self.started("crashing")
        self.unclaimed_me(slot=5)

        self.agency.crash(container.slot)
        yield deferLater(reactor, 0.2, lambda: None)

        self.assertEqual(self.containers.get("SOO.refso3").slot, 5)

    @inlineCallbacks
    def test_remove_keeps_foreign_log(self):
        log_dir = os.path.abspath(self.mktemp())
        os.makedirs(log_dir)
        log_path = os.path.join(log_dir, "console.log")
        with open(log_path, "w") as stream:
            stream.write("kept\n")
        self.unclaimed_me(log=log_path)
        yield self.reload()

        yield self.containers.remove("SOO.refso3", force=True)

        self.assertTrue(os.path.exists(log_path))
        self.assertEqual(self.agency.slots, {})


class InterruptedOperationTests(ReconcileTestCase):
    @inlineCallbacks
    def test_start_without_me_rolled_back(self):
        container = yield self.containers.create("never", "refso3-sim", {}, {}, {})
        container.operation = "start"
        yield self.containers._save(container)

        yield self.reload()

        found = self.containers.get("never")
        self.assertIsNone(found.operation)
        self.assertEqual(found.state, "created")
        self.assertEqual(self.agency.slots, {})

    @inlineCallbacks
    def test_start_of_booting_me_finished(self):
        container = yield self.containers.create("half", "refso3-sim", {}, {}, {})
        container.operation = "start"
        yield self.containers._save(container)
        yield self.agency.inject(self.image.path, container.log_path, container.id)

        yield self.reload()

        found = self.containers.get("half")
        self.assertEqual(found.state, "running")
        self.assertIsNone(found.operation)
        self.assertEqual(self.calls("finalize"), [{"slot": 2}])

    @inlineCallbacks
    def test_stop_finished(self):
        container = yield self.started("stopping")
        container.operation = "stop"
        yield self.containers._save(container)

        yield self.reload()

        found = self.containers.get("stopping")
        self.assertEqual(found.state, "exited")
        self.assertEqual(found.exit_code, 0)
        self.assertEqual(self.agency.slots, {})

    @inlineCallbacks
    def test_kill_after_me_gone(self):
        container = yield self.started("killing")
        container.operation = "kill"
        yield self.containers._save(container)
        self.agency.slots.clear()

        yield self.reload()

        found = self.containers.get("killing")
        self.assertEqual(found.state, "exited")
        self.assertEqual(found.exit_code, 137)

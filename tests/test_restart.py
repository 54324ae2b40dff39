"""
Tests for L{emiso.engine.restart}: policy validation, the restart decision
and the back-off of L{RestartManager}.
"""

import attrs
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase

from emiso.engine.restart import (
    FIRST_DELAY,
    RestartManager,
    should_restart,
    validate_restart_policy,
)
from emiso.errors import InvalidParameter
from tests.test_api import APITestCase


@attrs.define
class FakeContainer:
    """
    The container fields the restart manager reads.
    """

    id: str = "c" * 64
    host_config: dict = attrs.Factory(dict)
    state: str = "dead"
    exit_code: int = 255
    restart_count: int = 0
    manually_stopped: bool = False
    started_at: float | None = 100.0
    finished_at: float | None = 101.0
    running: bool = False

    @property
    def short_id(self) -> str:
        return self.id[:12]


def with_policy(name: str, count: int = 0, **fields) -> FakeContainer:
    policy = {"Name": name, "MaximumRetryCount": count}
    return FakeContainer(host_config={"RestartPolicy": policy}, **fields)


class FakeContainers:
    """
    Records the starts the restart manager requests.
    """

    def __init__(self, containers=()) -> None:
        self.containers = list(containers)
        self.starts = []

    def list(self):
        return self.containers

    def start(self, container_id, policy_restart=False):
        self.starts.append((container_id, policy_restart))
        return succeed(None)


class ValidatePolicyTests(SynchronousTestCase):
    def test_missing_policy_is_no(self):
        self.assertEqual(
            validate_restart_policy(None), {"Name": "no", "MaximumRetryCount": 0}
        )

    def test_on_failure_count(self):
        policy = validate_restart_policy({"Name": "on-failure", "MaximumRetryCount": 3})

        self.assertEqual(policy, {"Name": "on-failure", "MaximumRetryCount": 3})

    def test_unknown_name(self):
        error = self.assertRaises(
            InvalidParameter, validate_restart_policy, {"Name": "sometimes"}
        )

        self.assertIn("unknown policy 'sometimes'", str(error))

    def test_count_needs_on_failure(self):
        error = self.assertRaises(
            InvalidParameter,
            validate_restart_policy,
            {"Name": "always", "MaximumRetryCount": 2},
        )

        self.assertIn("only be used with 'on-failure'", str(error))

    def test_negative_count(self):
        self.assertRaises(
            InvalidParameter,
            validate_restart_policy,
            {"Name": "on-failure", "MaximumRetryCount": -1},
        )


class ShouldRestartTests(SynchronousTestCase):
    def test_no_policy(self):
        self.assertFalse(should_restart(FakeContainer()))

    def test_always_after_manual_stop(self):
        self.assertTrue(should_restart(with_policy("always", manually_stopped=True)))

    def test_unless_stopped_after_manual_stop(self):
        container = with_policy("unless-stopped", manually_stopped=True)

        self.assertFalse(should_restart(container))

    def test_on_failure_zero_exit(self):
        self.assertFalse(should_restart(with_policy("on-failure", exit_code=0)))

    def test_on_failure_retry_limit(self):
        below = with_policy("on-failure", 2, restart_count=1)
        reached = with_policy("on-failure", 2, restart_count=2)

        self.assertTrue(should_restart(below))
        self.assertFalse(should_restart(reached))


class RestartManagerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.containers = FakeContainers()
        self.manager = RestartManager(self.clock, self.containers, self.clock.seconds)

    def test_restart_after_delay(self):
        container = with_policy("always")

        scheduled = self.manager.container_exited(container, requested=False)
        self.clock.advance(FIRST_DELAY / 2)
        early = list(self.containers.starts)
        self.clock.advance(FIRST_DELAY)

        self.assertTrue(scheduled)
        self.assertEqual(early, [])
        self.assertEqual(self.containers.starts, [(container.id, True)])

    def test_requested_exit_not_restarted(self):
        scheduled = self.manager.container_exited(with_policy("always"), requested=True)
        self.clock.advance(60)

        self.assertFalse(scheduled)
        self.assertEqual(self.containers.starts, [])

    def test_backoff_doubles(self):
        container = with_policy("always")

        self.manager.container_exited(container, requested=False)
        self.clock.advance(FIRST_DELAY)
        self.manager.container_exited(container, requested=False)
        self.clock.advance(FIRST_DELAY)
        before_second_delay = len(self.containers.starts)
        self.clock.advance(FIRST_DELAY)

        self.assertEqual(before_second_delay, 1)
        self.assertEqual(len(self.containers.starts), 2)

    def test_cancel_returns_exit_state(self):
        container = with_policy("always", state="exited")
        self.manager.container_exited(container, requested=False)

        state = self.manager.cancel(container.id)
        self.clock.advance(60)

        self.assertEqual(state, "exited")
        self.assertEqual(self.containers.starts, [])

    def test_engine_start_policies(self):
        always = with_policy("always", id="a" * 64, manually_stopped=True)
        unless = with_policy("unless-stopped", id="b" * 64, manually_stopped=True)
        never_started = with_policy("always", id="d" * 64, started_at=None)
        self.containers.containers = [always, unless, never_started]

        self.manager.engine_started()
        self.clock.advance(0)

        self.assertEqual(self.containers.starts, [(always.id, True)])


class RestartFlowTests(APITestCase):
    """
    Restart policies through the API on an engine with a fake agency.
    """

    @inlineCallbacks
    def start_with_policy(self, name: str, policy: dict):
        response, body = yield self.request(
            "POST",
            f"/containers/create?name={name}",
            body={"Image": "refso3-sim", "HostConfig": {"RestartPolicy": policy}},
        )
        self.assertEqual(response.code, 201, body)
        yield self.request("POST", f"/containers/{name}/start")
        return self.engine.containers.get(name)

    @inlineCallbacks
    def test_crash_shows_restarting(self):
        container = yield self.start_with_policy("crashy", {"Name": "always"})

        self.agency.crash(container.slot)
        response, listed = yield self.request(
            "GET", '/containers/json?filters={"status":["restarting"]}'
        )
        removal, _ = yield self.request("DELETE", "/containers/crashy")
        yield deferLater(reactor, 4 * FIRST_DELAY, lambda: None)
        _, inspected = yield self.request("GET", "/containers/crashy/json")

        self.assertEqual([item["Names"] for item in listed], [["/crashy"]])
        self.assertRegex(listed[0]["Status"], r"^Restarting \(255\) ")
        self.assertEqual(removal.code, 409)
        self.assertEqual(inspected["State"]["Status"], "running")
        self.assertEqual(inspected["RestartCount"], 1)

    @inlineCallbacks
    def test_stop_cancels_restart(self):
        container = yield self.start_with_policy("stopped", {"Name": "unless-stopped"})

        self.agency.crash(container.slot)
        response, _ = yield self.request("POST", "/containers/stopped/stop")
        yield deferLater(reactor, 4 * FIRST_DELAY, lambda: None)
        _, inspected = yield self.request("GET", "/containers/stopped/json")

        self.assertEqual(response.code, 204)
        self.assertEqual(inspected["State"]["Status"], "dead")
        self.assertEqual(inspected["RestartCount"], 0)

    @inlineCallbacks
    def test_user_start_resets_count(self):
        container = yield self.start_with_policy("counted", {"Name": "always"})
        self.agency.crash(container.slot)
        yield deferLater(reactor, 4 * FIRST_DELAY, lambda: None)
        restarted = self.engine.containers.get("counted").restart_count

        yield self.request("POST", "/containers/counted/restart")
        _, inspected = yield self.request("GET", "/containers/counted/json")

        self.assertEqual(restarted, 1)
        self.assertEqual(inspected["RestartCount"], 0)

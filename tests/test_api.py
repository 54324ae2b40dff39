"""Tests for the Docker API routes, through StubTreq against the real Klein resource.

The engine under test is real (store, image store, container manager) but
runs on L{FakeAgency}, so no driver process is spawned.
"""

import io
import json
import os
import tarfile

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from emiso.agency.interfaces import IAgency
from emiso.api import containers as containers_api
from emiso.api.app import DockerAPI
from emiso.config import resolve
from emiso.engine.engine import Engine
from tests.fakeagency import FakeAgency
from tests.schema import validate_response

SAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "emiso", "samples")


class FakeAgencyTests(TestCase):
    def test_provides_iagency(self):
        agency = FakeAgency()

        self.assertTrue(verifyObject(IAgency, agency))


class APITestCase(TestCase):
    """
    Start an engine on a fake agency in a temporary data folder.
    """

    @inlineCallbacks
    def setUp(self):
        data_dir = os.path.abspath(self.mktemp())
        config = resolve({"data_dir": data_dir, "config": None})
        self.agency = FakeAgency()
        self.engine = Engine(reactor, config, self.agency)
        yield self.engine.start()
        self.addCleanup(lambda: self.engine.stop())
        self.client = StubTreq(DockerAPI(self.engine).resource())

    @inlineCallbacks
    def request(self, method, path, body=None, data=None, headers=None):
        """
        Send one request; validate a JSON body against the 1.44 schema.

        @return: C{(response, parsed JSON or raw bytes)}.
        """
        kwargs = {"headers": headers or {}}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs["headers"] = {b"Content-Type": [b"application/json"], **kwargs["headers"]}
        elif data is not None:
            kwargs["data"] = data
        # StubTreq moves bytes only when flushed; the engine answers from
        # worker threads, so keep flushing until the exchange is over.
        pump = LoopingCall(self.client.flush)
        pump.start(0.005)
        try:
            response = yield self.client.request(method, "http://engine" + path, **kwargs)
            raw = yield response.content()
        finally:
            pump.stop()
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        if content_type == b"application/json" and raw.strip():
            parsed = json.loads(raw.splitlines()[0] if path.startswith("/images/create") else raw)
            if not path.startswith(("/images/create", "/images/load")):
                validate_response(method, path, response.code, parsed)
            return response, parsed
        return response, raw

    @inlineCallbacks
    def create(self, name, image="refso3-sim"):
        response, body = yield self.request(
            "POST", f"/containers/create?name={name}", body={"Image": image}
        )
        self.assertEqual(response.code, 201, body)
        return body["Id"]


class SystemRouteTests(APITestCase):
    @inlineCallbacks
    def test_ping_headers(self):
        response, body = yield self.request("GET", "/_ping")

        self.assertEqual(body, b"OK")
        self.assertEqual(response.headers.getRawHeaders(b"api-version"), [b"1.44"])
        self.assertEqual(response.headers.getRawHeaders(b"ostype"), [b"linux"])
        self.assertEqual(response.headers.getRawHeaders(b"swarm"), [b"inactive"])

    @inlineCallbacks
    def test_version_prefix_accepted(self):
        response, body = yield self.request("GET", "/v1.24/version")

        self.assertEqual(response.code, 200)
        self.assertEqual(body["ApiVersion"], "1.44")

    @inlineCallbacks
    def test_version_too_new(self):
        response, body = yield self.request("GET", "/v1.45/info")

        self.assertEqual(response.code, 400)
        self.assertEqual(
            body["message"],
            "client version 1.45 is too new. Maximum supported API version is 1.44",
        )

    @inlineCallbacks
    def test_version_too_old(self):
        response, body = yield self.request("GET", "/v1.23/_ping")

        self.assertEqual(response.code, 400)
        self.assertIn("client version 1.23 is too old", body["message"])

    @inlineCallbacks
    def test_info_counts(self):
        yield self.create("one")
        started = yield self.create("two")
        yield self.request("POST", f"/containers/{started}/start")

        response, body = yield self.request("GET", "/info")

        self.assertEqual(body["Containers"], 2)
        self.assertEqual(body["ContainersRunning"], 1)
        self.assertEqual(body["ContainersStopped"], 1)
        self.assertEqual(body["Swarm"]["LocalNodeState"], "inactive")

    @inlineCallbacks
    def test_info_id_stable(self):
        _, first = yield self.request("GET", "/info")

        self.assertEqual(first["ID"], self.engine.engine_id)
        self.assertTrue(first["ID"])

    @inlineCallbacks
    def test_unknown_route(self):
        response, body = yield self.request("GET", "/nosuch/route")

        self.assertEqual(response.code, 404)
        self.assertEqual(body, {"message": "page not found"})


class ImageRouteTests(APITestCase):
    @inlineCallbacks
    def test_samples_copied_once(self):
        yield self.request("DELETE", "/images/refso3-sim")
        yield self.request("DELETE", "/images/blinky-sim")
        yield self.engine.stop()
        self.engine = Engine(reactor, self.engine.config, FakeAgency())

        yield self.engine.start()

        self.assertEqual(self.engine.images.list(), [])

    @inlineCallbacks
    def test_samples_listed(self):
        response, body = yield self.request("GET", "/images/json")

        tags = sorted(tag for image in body for tag in image["RepoTags"])
        self.assertIn("refso3-sim:latest", tags)
        self.assertIn("blinky-sim:latest", tags)

    @inlineCallbacks
    def test_inspect_unknown_image(self):
        response, body = yield self.request("GET", "/images/nosuch/json")

        self.assertEqual(response.code, 404)
        self.assertEqual(body["message"], "No such image: nosuch")

    @inlineCallbacks
    def test_import_with_tag_in_repo(self):
        with open(os.path.join(SAMPLES, "blinky-sim.itb"), "rb") as sample:
            data = sample.read()

        response, body = yield self.request(
            "POST", "/images/create?fromSrc=-&repo=mine%3Av2", data=data
        )

        self.assertEqual(response.code, 200)
        self.assertTrue(body["status"].startswith("sha256:"))
        _, image = yield self.request("GET", "/images/mine:v2/json")
        self.assertIn("mine:v2", image["RepoTags"])

    @inlineCallbacks
    def test_tag_with_default_registry(self):
        response, _ = yield self.request(
            "POST", "/images/blinky-sim/tag?repo=docker.io/library/renamed&tag=x"
        )

        self.assertEqual(response.code, 201)
        _, image = yield self.request("GET", "/images/renamed:x/json")
        self.assertIn("renamed:x", image["RepoTags"])

    @inlineCallbacks
    def test_import_rejects_garbage(self):
        before = sorted(os.listdir(self.engine.config.image_dir))

        response, body = yield self.request(
            "POST", "/images/create?fromSrc=-&repo=junk", data=b"not a FIT image"
        )

        self.assertEqual(response.code, 400)
        self.assertIn("message", body)
        after = sorted(os.listdir(self.engine.config.image_dir))
        self.assertEqual([name for name in after if name.endswith(".itb")],
                         [name for name in before if name.endswith(".itb")])

    @inlineCallbacks
    def test_load_tar(self):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            archive.add(os.path.join(SAMPLES, "blinky-sim.itb"), arcname="loaded.itb")

        response, body = yield self.request("POST", "/images/load", data=buffer.getvalue())

        self.assertEqual(response.code, 200)
        self.assertEqual(body, {"stream": "Loaded image: loaded:latest\n"})

    @inlineCallbacks
    def test_remove_used_image_conflicts(self):
        yield self.create("user", image="blinky-sim")

        response, body = yield self.request("DELETE", "/images/blinky-sim")

        self.assertEqual(response.code, 409)
        self.assertIn("message", body)

    @inlineCallbacks
    def test_pull_rejected(self):
        response, body = yield self.request("POST", "/images/create?fromImage=busybox&tag=latest")

        self.assertEqual(response.code, 200)
        self.assertIn("cannot be pulled", body["error"])
        self.assertEqual(body["errorDetail"]["message"], body["error"])


class ContainerRouteTests(APITestCase):
    @inlineCallbacks
    def test_create_and_inspect(self):
        container_id = yield self.create("first")

        response, body = yield self.request("GET", "/containers/first/json")

        self.assertEqual(body["Id"], container_id)
        self.assertEqual(len(container_id), 64)
        self.assertEqual(body["State"]["Status"], "created")
        self.assertEqual(body["State"]["StartedAt"], "0001-01-01T00:00:00Z")
        self.assertFalse(body["Config"]["Tty"])
        self.assertEqual(body["HostConfig"]["LogConfig"]["Type"], "json-file")

    @inlineCallbacks
    def test_create_keeps_stdin_flags(self):
        yield self.request(
            "POST",
            "/containers/create?name=interactive",
            body={"Image": "refso3-sim", "OpenStdin": True, "AttachStdin": True,
                  "Cmd": "status"},
        )

        _, body = yield self.request("GET", "/containers/interactive/json")

        self.assertTrue(body["Config"]["OpenStdin"])
        self.assertTrue(body["Config"]["AttachStdin"])
        self.assertEqual(body["Config"]["Cmd"], ["status"])

    @inlineCallbacks
    def test_create_warns_ignored_settings(self):
        response, body = yield self.request(
            "POST",
            "/containers/create?name=limited",
            body={"Image": "refso3-sim", "HostConfig": {"Memory": 1 << 30,
                                                        "PortBindings": {}}},
        )

        self.assertEqual(response.code, 201)
        self.assertEqual(len(body["Warnings"]), 1)
        self.assertIn("HostConfig.Memory is ignored", body["Warnings"][0])

    @inlineCallbacks
    def test_create_nested_json(self):
        data = b'{"a":' * 100000 + b"1" + b"}" * 100000

        response, body = yield self.request(
            "POST", "/containers/create", data=data,
            headers={b"Content-Type": [b"application/json"]},
        )

        self.assertEqual(response.code, 400)
        self.assertIn("nested too deeply", body["message"])

    @inlineCallbacks
    def test_auto_remove_after_stop(self):
        yield self.request(
            "POST", "/containers/create?name=ephemeral",
            body={"Image": "refso3-sim", "HostConfig": {"AutoRemove": True}},
        )
        _, inspected = yield self.request("GET", "/containers/ephemeral/json")
        yield self.request("POST", "/containers/ephemeral/start")
        removed = self.request("POST", "/containers/ephemeral/wait?condition=removed")

        yield self.request("POST", "/containers/ephemeral/stop")

        response, body = yield removed
        self.assertTrue(inspected["HostConfig"]["AutoRemove"])
        self.assertEqual(response.code, 200)
        response, _ = yield self.request("GET", "/containers/ephemeral/json")
        self.assertEqual(response.code, 404)

    @inlineCallbacks
    def test_auto_remove_with_restart_policy(self):
        response, body = yield self.request(
            "POST", "/containers/create",
            body={"Image": "refso3-sim",
                  "HostConfig": {"AutoRemove": True,
                                 "RestartPolicy": {"Name": "always"}}},
        )

        self.assertEqual(response.code, 400)
        self.assertIn("AutoRemove", body["message"])

    @inlineCallbacks
    def test_create_duplicate_name(self):
        yield self.create("twin")

        response, body = yield self.request(
            "POST", "/containers/create?name=twin", body={"Image": "refso3-sim"}
        )

        self.assertEqual(response.code, 409)
        self.assertIn('"/twin" is already in use', body["message"])

    @inlineCallbacks
    def test_create_invalid_name(self):
        response, body = yield self.request(
            "POST", "/containers/create?name=bad%2Fname", body={"Image": "refso3-sim"}
        )

        self.assertEqual(response.code, 400)
        self.assertIn("bad/name", body["message"])

    @inlineCallbacks
    def test_create_unknown_image(self):
        response, body = yield self.request(
            "POST", "/containers/create", body={"Image": "nosuch"}
        )

        self.assertEqual(response.code, 404)
        self.assertEqual(body["message"], "No such image: nosuch")

    @inlineCallbacks
    def test_create_malformed_json(self):
        response, body = yield self.request(
            "POST", "/containers/create", data=b"{not json",
            headers={b"Content-Type": [b"application/json"]},
        )

        self.assertEqual(response.code, 400)
        self.assertIn("invalid JSON body", body["message"])

    @inlineCallbacks
    def test_lifecycle_states(self):
        container_id = yield self.create("life")

        yield self.request("POST", "/containers/life/start")
        _, running = yield self.request("GET", "/containers/life/json")
        yield self.request("POST", "/containers/life/pause")
        _, paused = yield self.request("GET", "/containers/life/json")
        yield self.request("POST", "/containers/life/unpause")
        yield self.request("POST", "/containers/life/stop")
        _, stopped = yield self.request("GET", f"/containers/{container_id[:10]}/json")

        self.assertEqual(running["State"]["Status"], "running")
        self.assertEqual(paused["State"]["Status"], "paused")
        self.assertTrue(paused["State"]["Running"])
        self.assertEqual(stopped["State"]["Status"], "exited")
        self.assertEqual(stopped["State"]["ExitCode"], 0)
        self.assertEqual(self.agency.slots, {})

    @inlineCallbacks
    def test_start_twice_not_modified(self):
        yield self.create("again")
        yield self.request("POST", "/containers/again/start")

        response, _ = yield self.request("POST", "/containers/again/start")

        self.assertEqual(response.code, 304)

    @inlineCallbacks
    def test_stop_stopped_not_modified(self):
        yield self.create("idle")

        response, _ = yield self.request("POST", "/containers/idle/stop")

        self.assertEqual(response.code, 304)

    @inlineCallbacks
    def test_kill_exit_code(self):
        yield self.create("victim")
        yield self.request("POST", "/containers/victim/start")

        response, _ = yield self.request("POST", "/containers/victim/kill")

        self.assertEqual(response.code, 204)
        _, body = yield self.request("GET", "/containers/victim/json")
        self.assertEqual(body["State"]["ExitCode"], 137)

    @inlineCallbacks
    def test_kill_not_running(self):
        yield self.create("sleeper")

        response, body = yield self.request("POST", "/containers/sleeper/kill")

        self.assertEqual(response.code, 409)
        self.assertIn("is not running", body["message"])

    @inlineCallbacks
    def test_remove_running_conflicts(self):
        yield self.create("busy")
        yield self.request("POST", "/containers/busy/start")

        response, body = yield self.request("DELETE", "/containers/busy")

        self.assertEqual(response.code, 409)
        self.assertIn("stop the container before removing", body["message"])

    @inlineCallbacks
    def test_force_remove_running(self):
        yield self.create("doomed")
        yield self.request("POST", "/containers/doomed/start")

        response, _ = yield self.request("DELETE", "/containers/doomed?force=1")

        self.assertEqual(response.code, 204)
        self.assertEqual(self.agency.slots, {})
        response, _ = yield self.request("GET", "/containers/doomed/json")
        self.assertEqual(response.code, 404)

    @inlineCallbacks
    def test_unknown_container(self):
        for method, path in [
            ("GET", "/containers/nosuch/json"),
            ("POST", "/containers/nosuch/start"),
            ("POST", "/containers/nosuch/stop"),
            ("DELETE", "/containers/nosuch"),
            ("GET", "/containers/nosuch/logs?stdout=1"),
        ]:
            response, body = yield self.request(method, path)

            self.assertEqual(response.code, 404, path)
            self.assertEqual(body["message"], "No such container: nosuch", path)

    @inlineCallbacks
    def test_list_filters(self):
        yield self.create("alpha")
        yield self.create("beta")
        yield self.request("POST", "/containers/beta/start")

        _, running = yield self.request("GET", "/containers/json")
        _, everything = yield self.request("GET", "/containers/json?all=1")
        _, exited = yield self.request(
            "GET", '/containers/json?all=1&filters={"status":["created"]}'
        )
        _, named = yield self.request(
            "GET", '/containers/json?all=1&filters={"name":{"alpha":true}}'
        )

        self.assertEqual([c["Names"] for c in running], [["/beta"]])
        self.assertEqual(len(everything), 2)
        self.assertEqual([c["Names"] for c in exited], [["/alpha"]])
        self.assertEqual([c["Names"] for c in named], [["/alpha"]])

    @inlineCallbacks
    def test_list_bad_filter(self):
        response, body = yield self.request(
            "GET", '/containers/json?filters={"status":["sleeping"]}'
        )

        self.assertEqual(response.code, 400)
        self.assertIn("sleeping", body["message"])

    @inlineCallbacks
    def test_crash_reported(self):
        yield self.create("fragile")
        yield self.request("POST", "/containers/fragile/start")
        slot = next(iter(self.agency.slots))

        self.agency.crash(slot)

        _, body = yield self.request("GET", "/containers/fragile/json")
        self.assertEqual(body["State"]["Status"], "dead")
        self.assertEqual(body["State"]["ExitCode"], 255)
        self.assertIn("kernel panic", body["State"]["Error"])

    @inlineCallbacks
    def test_wait_not_running(self):
        yield self.create("waiter")

        response, body = yield self.request("POST", "/containers/waiter/wait")

        self.assertEqual(response.code, 200)
        self.assertEqual(body, {"StatusCode": 0})

    @inlineCallbacks
    def test_logs_need_a_stream(self):
        yield self.create("quiet")

        response, body = yield self.request("GET", "/containers/quiet/logs")

        self.assertEqual(response.code, 400)
        self.assertIn("at least one stream", body["message"])

    @inlineCallbacks
    def test_logs_follow_stopped_whole(self):
        yield self.create("finished")
        container = self.engine.containers.get("finished")
        with open(container.log_path, "wb") as log:
            for number in range(2000):
                log.write(b"2026-01-01T00:00:00.000000000Z stdout line %d\n" % number)
        # Without a grace period, the stream must still wait for the
        # initial read of the log in the thread pool.
        self.patch(containers_api, "FOLLOW_GRACE", 0)

        response, body = yield self.request(
            "GET", "/containers/finished/logs?stdout=1&follow=1"
        )

        self.assertEqual(response.code, 200)
        self.assertEqual(body.count(b"line "), 2000)
        self.assertTrue(body.endswith(b"line 1999\n"))

    def test_generated_name_when_pairs_taken(self):
        from emiso.engine import containers as manager_module

        taken = {
            f"{adjective}_{noun}"
            for adjective in manager_module._ADJECTIVES
            for noun in manager_module._NOUNS
        }
        self.engine.containers._reserved_names.update(taken)

        name = self.engine.containers._generate_name()

        self.assertNotIn(name, taken)

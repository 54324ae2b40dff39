"""
Agency faults and conflicting requests against a real engine process.

The simulated agency reads per-image fault properties (C{emiso,sim-*}) from
the images in C{tests/images}: a slow boot, a crash or a shutdown after a
delay, a refused migration, a call that hangs and an ME that takes the
whole memory pool.
"""

import atexit
import shutil
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.engineprocess import shared_engine
from tests.imagefolder import make_image_folder, wait_until

_folders = {}

#: The finalize timeout of the engine that runs the hanging image, in seconds.
HANG_TIMEOUT = 2


def engine_with_images(key: str, *extra_args):
    """
    Return the engine shared by one test class, with the test images.
    """
    folder = _folders.get(key)
    if folder is None:
        folder = _folders[key] = make_image_folder()
        atexit.register(shutil.rmtree, folder, True)
    return shared_engine(key, ["--image-dir", str(folder), *extra_args])


class EngineTestCase(SynchronousTestCase):
    extra_args: tuple = ()

    def setUp(self):
        self.engine = engine_with_images(type(self).__name__, *self.extra_args)
        self.names = []
        self.addCleanup(self.remove_all)

    def remove_all(self):
        for name in self.names:
            self.engine.request("DELETE", f"/containers/{name}?force=1")

    def create(self, name, image):
        status, body = self.engine.request_json(
            "POST", f"/containers/create?name={name}", {"Image": image}
        )
        self.assertEqual(status, 201, body)
        self.names.append(name)
        return body["Id"]

    def post(self, path):
        status, body = self.engine.request_json("POST", path)
        return status, body

    def state(self, name):
        status, body = self.engine.request_json("GET", f"/containers/{name}/json")
        self.assertEqual(status, 200, body)
        return body["State"]


class AgencyFaultTests(EngineTestCase):
    def test_slow_boot_started(self):
        self.create("slow", "slowboot")
        began = time.monotonic()

        status, body = self.post("/containers/slow/start")

        self.assertEqual(status, 204, body)
        self.assertGreaterEqual(time.monotonic() - began, 4.5)
        self.assertEqual(self.state("slow")["Status"], "running")

    def test_others_served_during_boot(self):
        self.create("slow2", "slowboot")
        self.create("idle", "fast")
        starting = threading.Thread(
            target=self.post, args=("/containers/slow2/start",)
        )
        starting.start()
        self.addCleanup(starting.join)
        wait_until(lambda: self.state("slow2")["StartedAt"][:4] != "0001")
        began = time.monotonic()

        inspected = self.state("idle")
        removed, _ = self.engine.request_json("DELETE", "/containers/idle")
        listed, _ = self.engine.request_json("GET", "/containers/json?all=1")

        self.assertLess(time.monotonic() - began, 1.0)
        self.assertEqual(inspected["Status"], "created")
        self.assertEqual(removed, 204)
        self.assertEqual(listed, 200)
        self.assertEqual(self.state("slow2")["Status"], "created")

    def test_crash_is_dead(self):
        self.create("crashing", "crasher")
        self.assertEqual(self.post("/containers/crashing/start")[0], 204)

        state = wait_until(
            lambda: (s := self.state("crashing"))["Status"] == "dead" and s
        )

        self.assertTrue(state, self.state("crashing"))
        self.assertEqual(state["ExitCode"], 255)
        self.assertTrue(state["Error"])
        self.assertFalse(state["FinishedAt"].startswith("0001"))

    def test_exit_is_exited(self):
        self.create("leaving", "exiter")
        self.assertEqual(self.post("/containers/leaving/start")[0], 204)

        state = wait_until(
            lambda: (s := self.state("leaving"))["Status"] == "exited" and s
        )

        self.assertTrue(state, self.state("leaving"))
        self.assertIn("shut itself down", state["Error"])

    def test_refused_pause(self):
        self.create("stubborn", "stubborn")
        self.assertEqual(self.post("/containers/stubborn/start")[0], 204)

        status, body = self.post("/containers/stubborn/pause")

        self.assertEqual(status, 500)
        self.assertIn("cannot pause container", body["message"])
        self.assertIn("refused", body["message"])
        self.assertEqual(self.state("stubborn")["Status"], "running")

    def test_memory_pool_full(self):
        self.create("big", "bigmem")
        self.create("small", "fast")
        self.assertEqual(self.post("/containers/big/start")[0], 204)

        status, body = self.post("/containers/small/start")

        self.assertEqual(status, 500)
        self.assertIn("MiB", body["message"])
        self.assertEqual(self.state("small")["Status"], "created")
        self.assertEqual(self.state("big")["Status"], "running")


class HangTests(EngineTestCase):
    extra_args = ("--agency-timeout", f"finalize={HANG_TIMEOUT}")

    def test_hang_times_out(self):
        container_id = self.create("hanging", "hang-finalize")
        began = time.monotonic()

        status, body = self.post("/containers/hanging/start")

        self.assertEqual(status, 500)
        self.assertLess(time.monotonic() - began, HANG_TIMEOUT + 5)
        self.assertIn(f"cannot start container {container_id[:12]}", body["message"])
        self.assertIn("'finalize'", body["message"])
        self.assertIn("timed out", body["message"])

    def test_state_from_agency(self):
        self.create("hanging2", "hang-finalize")
        self.post("/containers/hanging2/start")

        state = self.state("hanging2")
        _, inspected = self.engine.request_json("GET", "/containers/hanging2/json")

        # The ME stays loaded but never boots: the agency reports it booting.
        self.assertEqual(state["Status"], "created")
        self.assertIn("timed out", state["Error"])
        self.assertEqual(inspected["Config"]["Labels"]["org.soo.me.state"], "booting")

    def test_engine_serves_after_hang(self):
        self.create("hanging3", "hang-finalize")
        self.create("after", "fast")
        self.post("/containers/hanging3/start")

        status, _ = self.post("/containers/after/start")
        removed, _ = self.engine.request_json("DELETE", "/containers/hanging3?force=1")

        self.assertEqual(status, 204)
        self.assertEqual(self.state("after")["Status"], "running")
        self.assertEqual(removed, 204)
        self.names.remove("hanging3")


class ConflictTests(EngineTestCase):
    def test_start_and_remove(self):
        self.create("contested", "refso3-sim")
        results = {}
        starting = threading.Thread(
            target=lambda: results.update(start=self.post("/containers/contested/start"))
        )
        starting.start()
        time.sleep(0.1)

        removed, body = self.engine.request_json("DELETE", "/containers/contested")
        starting.join()

        self.assertEqual(results["start"][0], 204)
        self.assertEqual(removed, 409, body)
        self.assertIn("stop the container before removing", body["message"])
        self.assertEqual(self.state("contested")["Status"], "running")

    def test_two_creates_one_name(self):
        statuses = []
        barrier = threading.Barrier(2)

        def create():
            barrier.wait()
            statuses.append(
                self.engine.request(
                    "POST", "/containers/create?name=twin", {"Image": "fast"}
                )[0]
            )

        threads = [threading.Thread(target=create) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.names.append("twin")

        self.assertEqual(sorted(statuses), [201, 409])
        _, listed = self.engine.request_json(
            "GET", '/containers/json?all=1&filters={"name":["twin"]}'
        )
        self.assertEqual(len(listed), 1)

    def test_same_container_serialised(self):
        self.create("serial", "fast")
        results = []

        def call(path):
            results.append((path, self.post(path)[0]))

        threads = [
            threading.Thread(target=call, args=(f"/containers/serial/{verb}",))
            for verb in ("start", "pause", "unpause", "stop")
        ]
        for thread in threads:
            thread.start()
            time.sleep(0.02)
        for thread in threads:
            thread.join()

        self.assertEqual(
            results,
            [
                ("/containers/serial/start", 204),
                ("/containers/serial/pause", 204),
                ("/containers/serial/unpause", 204),
                ("/containers/serial/stop", 204),
            ],
        )
        self.assertEqual(self.state("serial")["Status"], "exited")

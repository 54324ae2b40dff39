"""
Load test: 100 concurrent clients poll list, inspect and logs while other
clients create, start and remove containers, for a bounded time, against a
real engine process. No request may fail, and the engine may leak no file
descriptor, no process and no unbounded memory. The latency of C{/_ping}
during the load shows that store writes do not block the reactor.
"""

import http.client
import json
import os
import random
import shutil
import sys
import threading
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.engineprocess import EngineProcess
from tests.imagefolder import make_image_folder, wait_until
from tests.schema import validate_json_body

POLLERS = 100
WORKERS = 4
DURATION = float(os.environ.get("EMISO_LOAD_SECONDS") or 20)

#: Largest RSS growth of the engine accepted over the run, in bytes.
RSS_GROWTH_LIMIT = 64 * 1024 * 1024

#: Largest /_ping latency accepted during the load, in seconds.
PING_LIMIT = 3.0


def count_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found |= {int(child) for child in text}
    return found


class Client:
    """
    One keep-alive HTTP connection that validates every JSON body.
    """

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data else {}
        self.connection.request(method, path, body=data, headers=headers)
        response = self.connection.getresponse()
        raw = response.read()
        validate_json_body(
            method, path, response.status, response.headers.get("Content-Type", ""), raw
        )
        return response.status, raw

    def close(self) -> None:
        self.connection.close()


class LoadTests(SynchronousTestCase):
    def setUp(self):
        self.images = make_image_folder()
        self.addCleanup(shutil.rmtree, self.images, True)
        self.engine = EngineProcess(["--image-dir", str(self.images)])
        self.addCleanup(self.engine.close)
        self.engine.start()

    def test_many_clients(self):
        pid = self.engine.process.pid
        status, _ = self.engine.request_json(
            "POST", "/containers/create?name=polled", {"Image": "fast"}
        )
        self.assertEqual(status, 201)
        self.assertEqual(self.engine.request("POST", "/containers/polled/start")[0], 204)
        time.sleep(1)
        fds_before, rss_before = count_fds(pid), rss(pid)
        children_before = children(pid)
        stop = threading.Event()
        served, failures, pings = [0], [], []
        lock = threading.Lock()

        def poller(number):
            client, rng = Client(self.engine.port), random.Random(number)
            paths = [
                "/containers/json?all=1",
                "/containers/polled/json",
                "/containers/polled/logs?stdout=1&tail=5",
                "/images/json",
            ]
            try:
                while not stop.is_set():
                    path = rng.choice(paths)
                    status, raw = client.request("GET", path)
                    with lock:
                        served[0] += 1
                        if status != 200:
                            failures.append(f"GET {path}: {status} {raw[:200]!r}")
            except Exception as error:
                with lock:
                    failures.append(f"poller {number}: {error!r}")
            finally:
                client.close()

        def worker(number):
            client = Client(self.engine.port)
            try:
                while not stop.is_set():
                    name = f"load{number}-{served[0]}"
                    steps = [
                        ("POST", f"/containers/create?name={name}", {"Image": "fast"}, 201),
                        ("POST", f"/containers/{name}/start", None, 204),
                        ("DELETE", f"/containers/{name}?force=1", None, 204),
                    ]
                    for method, path, body, expected in steps:
                        status, raw = client.request(method, path, body)
                        with lock:
                            served[0] += 1
                            if status != expected:
                                failures.append(f"{method} {path}: {status} {raw!r}")
            except Exception as error:
                with lock:
                    failures.append(f"worker {number}: {error!r}")
            finally:
                client.close()

        def pinger():
            client = Client(self.engine.port)
            try:
                while not stop.is_set():
                    began = time.monotonic()
                    status, _ = client.request("GET", "/_ping")
                    pings.append(time.monotonic() - began)
                    time.sleep(0.05)
            finally:
                client.close()

        threads = [threading.Thread(target=poller, args=(n,)) for n in range(POLLERS)]
        threads += [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
        threads.append(threading.Thread(target=pinger))
        for thread in threads:
            thread.start()
        time.sleep(DURATION)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

        self.assertEqual(failures, [])
        settled = wait_until(lambda: count_fds(pid) <= fds_before, timeout=10)
        self.assertTrue(settled, f"fds {fds_before} -> {count_fds(pid)}")
        self.assertEqual(children(pid), children_before)
        self.assertLess(rss(pid) - rss_before, RSS_GROWTH_LIMIT)
        pings.sort()
        self.assertLess(pings[int(len(pings) * 0.99)], PING_LIMIT)
        _, listed = self.engine.request_json("GET", "/containers/json?all=1")
        self.assertEqual([c["Names"] for c in listed], [["/polled"]])
        print(
            f"\nload: {served[0]} requests served by {POLLERS + WORKERS + 1} clients "
            f"in {DURATION:g} s; /_ping median {pings[len(pings) // 2] * 1000:.1f} ms, "
            f"p99 {pings[int(len(pings) * 0.99)] * 1000:.1f} ms, max "
            f"{pings[-1] * 1000:.1f} ms; fds {fds_before} -> {count_fds(pid)}, "
            f"RSS {rss_before >> 20} -> {rss(pid) >> 20} MiB",
            file=sys.stderr,
        )


class StoreLatencyTests(SynchronousTestCase):
    """
    The reactor keeps answering while the store commits a burst of creates
    (each an fsync'd SQLite transaction on the store's worker thread).
    """

    def setUp(self):
        self.engine = EngineProcess()
        self.addCleanup(self.engine.close)
        self.engine.start()

    def pings(self, stop):
        client, latencies = Client(self.engine.port), []
        try:
            while not stop.is_set():
                began = time.monotonic()
                client.request("GET", "/_ping")
                latencies.append(time.monotonic() - began)
                time.sleep(0.005)
        finally:
            client.close()
        return sorted(latencies)

    def measure(self, load):
        stop, result = threading.Event(), []
        thread = threading.Thread(target=lambda: result.extend(self.pings(stop)))
        thread.start()
        load()
        stop.set()
        thread.join()
        return result

    def test_ping_during_creates(self):
        creates = []

        def burst():
            client = Client(self.engine.port)
            began = time.monotonic()
            for number in range(200):
                creates.append(
                    client.request(
                        "POST", f"/containers/create?name=b{number}", {"Image": "refso3-sim"}
                    )[0]
                )
            creates.append(time.monotonic() - began)
            client.close()

        idle = self.measure(lambda: time.sleep(1))
        busy = self.measure(burst)

        self.assertEqual(creates[:-1], [201] * 200)
        self.assertLess(busy[int(len(busy) * 0.99)], 0.25)
        print(
            f"\nstore: 200 creates in {creates[-1]:.2f} s; /_ping idle median "
            f"{idle[len(idle) // 2] * 1000:.2f} ms; during the creates median "
            f"{busy[len(busy) // 2] * 1000:.2f} ms, p99 "
            f"{busy[int(len(busy) * 0.99)] * 1000:.2f} ms, max {busy[-1] * 1000:.2f} ms",
            file=sys.stderr,
        )

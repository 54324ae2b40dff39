"""
Crash test: a stream of container operations against the real engine, which
is killed with SIGKILL at random points and restarted, many times.

After each restart every container the API acknowledged must be there, no
removed container may come back, each container's state must match the ME
the simulated agency reports for it, every live ME process must belong to
exactly one container, and the SQLite store must pass its integrity check.

C{EMISO_STRESS=1} runs the longer variant; C{EMISO_CRASH_ROUNDS} and
C{EMISO_CRASH_SEED} set the number of kills and the random seed.
"""

import http.client
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from emiso.engine.states import docker_state
from tests.engineprocess import EngineProcess
from tests.imagefolder import make_image_folder, wait_until
from tests.schema import validate_json_body

STRESS = os.environ.get("EMISO_STRESS") == "1"
ROUNDS = int(os.environ.get("EMISO_CRASH_ROUNDS") or (300 if STRESS else 50))
SEED = int(os.environ.get("EMISO_CRASH_SEED") or time.time())

#: At most this many containers exist at once (the agency has five slots).
MAX_CONTAINERS = 4

#: Seconds the operation stream runs before the kill, at most.
MAX_RUN_TIME = 0.8

#: Every this many rounds, the slot view is compared with the driver's list.
DRIVER_LIST_EVERY = 10


class Model:
    """
    What the API acknowledged: containers created and not removed, and the
    requests whose outcome the kill made unknown.
    """

    def __init__(self) -> None:
        self.present: dict[str, str] = {}
        self.removed: set[str] = set()
        self.maybe_removed: set[str] = set()
        self.acknowledged = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()


def send(port: int, method: str, path: str, body=None):
    """
    Send one request; return C{(status, decoded body)}, or C{None} when the
    connection failed (the engine was killed).
    """
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data else {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    validate_json_body(
        method, path, response.status, response.headers.get("Content-Type", ""), raw
    )
    return response.status, json.loads(raw) if raw.strip() else None


def operation_stream(port: int, rng: random.Random, model: Model, stop) -> None:
    """
    Send random operations until C{stop} is set or a request fails.
    """
    number = 0
    while not stop.is_set():
        with model.lock:
            ids = list(model.present)
        verb = rng.choice(
            ["create", "start", "start", "pause", "unpause", "stop", "kill", "remove"]
        )
        if verb == "create" or not ids:
            if len(ids) >= MAX_CONTAINERS:
                continue
            number += 1
            name = f"c{rng.randrange(10**9)}"
            reply = send(port, "POST", f"/containers/create?name={name}", {"Image": "fast"})
            if reply is None:
                return
            if reply[0] == 201:
                with model.lock:
                    model.present[reply[1]["Id"]] = name
            outcome = reply[0]
        else:
            target = rng.choice(ids)
            if verb == "remove":
                with model.lock:
                    model.maybe_removed.add(target)
                reply = send(port, "DELETE", f"/containers/{target}?force=1")
                if reply is None:
                    return
                with model.lock:
                    model.maybe_removed.discard(target)
                    if reply[0] == 204:
                        model.removed.add(target)
                        model.present.pop(target, None)
            else:
                reply = send(port, "POST", f"/containers/{target}/{verb}")
                if reply is None:
                    return
            outcome = reply[0]
        with model.lock:
            model.acknowledged += 1
            if outcome >= 500:
                model.failures.append(f"{verb}: {reply}")


def agency_view(data_dir: Path) -> dict[int, dict]:
    """
    Read the simulated agency's slots from its slot files, keeping only the
    MEs whose process is alive.
    """
    view = {}
    for path in (data_dir / "agency" / "slots").glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if process_alive(record.get("pid")):
            view[record["slot"]] = record
    return view


def process_alive(pid) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, TypeError):
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def me_processes(data_dir: Path) -> set[int]:
    """
    Return the live simulated ME processes of this engine's data folder.
    """
    marker = str(data_dir).encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"emiso.agency.sim.me" in cmdline and marker in cmdline:
            if process_alive(int(entry.name)):
                pids.add(int(entry.name))
    return pids


def driver_list(data_dir: Path) -> dict[int, dict]:
    """
    Run the driver's one-shot C{list} and return its occupied slots.
    """
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "emiso.agency.driver",
            "--backend",
            "sim",
            "--state-dir",
            str(data_dir / "agency"),
            "list",
        ],
        capture_output=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    slots = json.loads(completed.stdout)["result"]["slots"]
    return {entry["slot"]: entry for entry in slots if entry["state"] != "dead"}


def store_integrity(data_dir: Path) -> str:
    connection = sqlite3.connect(f"file:{data_dir / 'emiso.db'}?mode=ro", uri=True)
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


def inconsistencies(engine: EngineProcess, model: Model) -> list[str]:
    """
    Compare the API's containers with the model and the agency; return the
    problems found (none when all is well).
    """
    reply = send(engine.port, "GET", "/containers/json?all=1")
    if reply is None or reply[0] != 200:
        return [f"cannot list containers: {reply}"]
    listed = {item["Id"]: item for item in reply[1]}
    problems = []
    with model.lock:
        expected = set(model.present) - model.maybe_removed
        removed = set(model.removed)
    problems += [f"acknowledged container {i} is missing" for i in expected - set(listed)]
    problems += [f"removed container {i} came back" for i in removed & set(listed)]
    view = agency_view(engine.data_dir)
    tokens = {entry["token"]: slot for slot, entry in view.items()}
    for container_id, item in listed.items():
        slot = tokens.get(container_id)
        label = item["Labels"].get("org.soo.me.slot")
        if slot is None:
            if item["State"] in ("running", "paused") or label is not None:
                problems.append(
                    f"container {container_id} is {item['State']} in slot {label} "
                    "but holds no ME"
                )
            continue
        wanted = docker_state(view[slot]["state"])
        if item["State"] != wanted or label != str(slot):
            problems.append(
                f"container {container_id} is {item['State']} (slot {label}) but "
                f"its ME in slot {slot} is {view[slot]['state']}"
            )
    for token, slot in tokens.items():
        if token not in listed:
            problems.append(f"the ME in slot {slot} (token {token}) is orphaned")
    unclaimed = me_processes(engine.data_dir) - {e["pid"] for e in view.values()}
    problems += [f"ME process {pid} is in no slot" for pid in sorted(unclaimed)]
    return problems


class CrashTests(SynchronousTestCase):
    def setUp(self):
        self.images = make_image_folder()
        self.addCleanup(shutil.rmtree, self.images, True)
        self.engine = EngineProcess(["--image-dir", str(self.images)])
        self.addCleanup(self.engine.close)
        self.engine.start()

    def test_kill9_loses_nothing(self):
        rng = random.Random(SEED)
        model = Model()
        checked = 0
        listed = 0

        for round_number in range(ROUNDS):
            stop = threading.Event()
            stream = threading.Thread(
                target=operation_stream,
                args=(self.engine.port, random.Random(rng.random()), model, stop),
            )
            stream.start()
            time.sleep(rng.uniform(0.02, MAX_RUN_TIME))
            self.engine.kill9()
            stop.set()
            stream.join(timeout=60)
            self.assertEqual(store_integrity(self.engine.data_dir), "ok")
            if round_number % DRIVER_LIST_EVERY == 0:
                self.assertEqual(
                    {s: (e["token"], e["state"]) for s, e in driver_list(
                        self.engine.data_dir).items()},
                    {s: (e["token"], e["state"]) for s, e in agency_view(
                        self.engine.data_dir).items()},
                )
                listed += 1
            self.engine.start()

            problems = wait_until(
                lambda: (p := inconsistencies(self.engine, model)) == [] or p,
                timeout=5,
            )

            self.assertIs(
                problems, True, f"seed {SEED}, round {round_number}: {problems}"
            )
            checked += len(model.present)
            _, items = send(self.engine.port, "GET", "/containers/json?all=1")
            with model.lock:
                model.present = {item["Id"]: item["Names"][0] for item in items}
                model.maybe_removed.clear()
                model.removed.clear()

        self.assertEqual(model.failures, [], f"seed {SEED}")
        print(
            f"\ncrash test: seed {SEED}, {ROUNDS} kill -9 restarts survived, "
            f"{model.acknowledged} operations acknowledged, {checked} container "
            f"checks, {listed} driver list cross-checks",
            file=sys.stderr,
        )

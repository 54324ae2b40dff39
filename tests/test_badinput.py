"""
Bad input against a real engine process: every request gets a 4xx Docker
error body that names the bad value, and changes nothing, neither the
containers and images nor any file inside or outside the data folder.
"""

import io
import json
import os
import sys
import tarfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.engineprocess import SAMPLES_DIR, shared_engine

#: The engine's --max-body-size in these tests.
MAX_BODY = 256 * 1024

SAMPLE = (SAMPLES_DIR / "refso3-sim.itb").read_bytes()


def tar_of(*members) -> bytes:
    """
    Build a tar from C{(TarInfo, data or None)} pairs.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name, data=SAMPLE, kind=tarfile.REGTYPE, target=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def create(image=None, **fields):
    body = dict(fields)
    if image is not None:
        body["Image"] = image
    return json.dumps(body).encode()


#: (method, path, body bytes or None, expected status, text the message names)
CASES = [
    # Malformed and mistyped JSON.
    ("POST", "/containers/create", b"{bad json", 400, "invalid JSON"),
    ("POST", "/containers/create", b"[1, 2]", 400, "object"),
    ("POST", "/containers/create", b"\xff\xfe", 400, "invalid JSON"),
    ("POST", "/containers/create", create(5), 400, "5"),
    ("POST", "/containers/create", create(["refso3-sim"]), 400, "refso3-sim"),
    ("POST", "/containers/create", create(), 400, "Image"),
    ("POST", "/containers/create", create("refso3-sim", Labels=["a=b"]), 400, "Labels"),
    ("POST", "/containers/create", create("refso3-sim", Labels={"a": 1}), 400, "Labels"),
    ("POST", "/containers/create", create("refso3-sim", HostConfig="x"), 400, "HostConfig"),
    (
        "POST",
        "/containers/create",
        create("refso3-sim", HostConfig={"RestartPolicy": "always"}),
        400,
        "RestartPolicy",
    ),
    (
        "POST",
        "/containers/create",
        create("refso3-sim", HostConfig={"RestartPolicy": {"Name": "sometimes"}}),
        400,
        "sometimes",
    ),
    ("POST", "/containers/create", create("refso3-sim", Env="A=1"), 400, "Env"),
    ("POST", "/containers/create", create("refso3-sim", Env=[1]), 400, "Env"),
    ("POST", "/containers/create", create("refso3-sim", Cmd={"a": 1}), 400, "Cmd"),
    # Container names.
    ("POST", "/containers/create?name=a", create("refso3-sim"), 400, "(a)"),
    ("POST", "/containers/create?name=..%2Fx", create("refso3-sim"), 400, "../x"),
    ("POST", "/containers/create?name=%2Fetc%2Fpasswd", create("refso3-sim"), 400,
     "/etc/passwd"),
    ("POST", "/containers/create?name=a%00b", create("refso3-sim"), 400, "a\x00b"),
    ("POST", "/containers/create?name=ab%0Acd", create("refso3-sim"), 400, "ab\ncd"),
    ("POST", "/containers/create?name=%FF%FE", create("refso3-sim"), 400, "name"),
    # Image names that are paths.
    ("POST", "/containers/create", create("../images/refso3-sim"), 404,
     "../images/refso3-sim"),
    ("POST", "/containers/create", create("/etc/passwd"), 404, "/etc/passwd"),
    ("POST", "/containers/create", create("refso3-sim\x00"), 404, "refso3-sim"),
    ("POST", "/containers/create", create("a/../../b"), 404, "a/../../b"),
    ("GET", "/images/..%2F..%2Fetc%2Fpasswd/json", None, 404, "../../etc/passwd"),
    # A name that starts with "/" matches no route.
    ("GET", "/images/%2Fetc%2Fpasswd/json", None, 404, "page not found"),
    ("GET", "/images/a%00b/json", None, 404, "a\x00b"),
    ("GET", "/images/..%2Fsentinel/history", None, 404, "../sentinel"),
    ("DELETE", "/images/..%2Fsentinel", None, 404, "../sentinel"),
    ("DELETE", "/images/%2Ftmp%2Fx.itb?force=1", None, 404, "page not found"),
    ("POST", "/images/refso3-sim/tag?repo=..%2Fevil", None, 400, "../evil"),
    ("POST", "/images/refso3-sim/tag?repo=%2Ftmp%2Fevil", None, 400, "/tmp/evil"),
    ("POST", "/images/refso3-sim/tag?repo=ev%00il", None, 400, "'ev\\x00il'"),
    ("POST", "/images/refso3-sim/tag?repo=good&tag=..", None, 400, ".."),
    ("POST", "/images/refso3-sim/tag?repo=", None, 400, "repository"),
    ("POST", "/images/..%2Fx/tag?repo=good", None, 404, "../x"),
    # Uploads.
    ("POST", "/images/create?fromSrc=-&repo=..%2Fevil", SAMPLE, 400, "../evil"),
    ("POST", "/images/create?fromSrc=-&repo=%2Ftmp%2Fevil", SAMPLE, 400, "/tmp/evil"),
    ("POST", "/images/create?fromSrc=-&repo=junk", b"not a FIT image", 400, "FIT"),
    ("POST", "/images/create?fromSrc=-&repo=junk", SAMPLE[:100], 400, "FIT"),
    ("POST", "/images/create?fromSrc=-&repo=junk", b"", 400, "FIT"),
    ("POST", "/images/create?fromSrc=http%3A%2F%2F127.0.0.1%2Fx", None, 400, "fromSrc"),
    ("POST", "/images/create?fromSrc=-&repo=big", b"\0" * (MAX_BODY + 1), 413,
     str(MAX_BODY)),
    ("POST", "/images/load", b"\0" * (MAX_BODY + 1), 413, str(MAX_BODY)),
    ("POST", "/containers/create", create("refso3-sim", Env=["A=" + "x" * MAX_BODY]),
     413, str(MAX_BODY)),
    ("POST", "/images/load", b"not a tar", 400, "tar"),
    ("POST", "/images/load", tar_of(member("x.itb"))[:700], 400, "tar"),
    ("POST", "/images/load", tar_of(member("../escape.itb")), 400, "../escape.itb"),
    ("POST", "/images/load", tar_of(member("/tmp/abs.itb")), 400, "/tmp/abs.itb"),
    ("POST", "/images/load", tar_of(member("a/../../up.itb")), 400, "a/../../up.itb"),
    (
        "POST",
        "/images/load",
        tar_of(member("link.itb", kind=tarfile.SYMTYPE, target="/etc/passwd")),
        400,
        "link.itb",
    ),
    (
        "POST",
        "/images/load",
        tar_of(member("hard.itb", kind=tarfile.LNKTYPE, target="../x.itb")),
        400,
        "hard.itb",
    ),
    ("POST", "/images/load", tar_of(member("junk.itb", b"not a FIT")), 400, "junk.itb"),
    # Query parameters of the wrong type.
    ("GET", "/containers/json?limit=x", None, 400, "x"),
    ("GET", '/containers/json?filters={"status":["sleeping"]}', None, 400, "sleeping"),
    ("GET", "/containers/json?filters={bad", None, 400, "{bad"),
    ("GET", '/containers/json?filters={"nosuch":["a"]}', None, 400, "nosuch"),
    ("POST", "/containers/target/stop?t=abc", None, 400, "abc"),
    ("POST", "/containers/target/restart?t=1.5", None, 400, "1.5"),
    ("POST", "/containers/target/kill?signal=SIGNOPE", None, 400, "SIGNOPE"),
    ("POST", "/containers/target/kill?signal=999", None, 400, "999"),
    ("POST", "/containers/target/wait?condition=bogus", None, 400, "bogus"),
    ("GET", "/containers/target/logs?stdout=1&tail=-x", None, 400, "-x"),
    ("GET", "/containers/target/logs?stdout=1&tail=abc", None, 400, "abc"),
    ("GET", "/containers/target/logs?stdout=1&since=yesterday", None, 400, "yesterday"),
    ("GET", "/containers/target/logs", None, 400, "stream"),
    # API versions.
    ("GET", "/v9.99/containers/json", None, 400, "9.99"),
    ("GET", "/v1.12/containers/json", None, 400, "1.12"),
    ("GET", "/v1.45/_ping", None, 400, "1.45"),
    # Things that do not exist.
    ("GET", "/containers/nosuch/json", None, 404, "nosuch"),
    ("POST", "/containers/nosuch/start", None, 404, "nosuch"),
    ("POST", "/containers/nosuch/stop", None, 404, "nosuch"),
    ("POST", "/containers/nosuch/kill", None, 404, "nosuch"),
    ("POST", "/containers/nosuch/pause", None, 404, "nosuch"),
    ("POST", "/containers/nosuch/unpause", None, 404, "nosuch"),
    ("POST", "/containers/nosuch/restart", None, 404, "nosuch"),
    ("POST", "/containers/nosuch/wait", None, 404, "nosuch"),
    ("GET", "/containers/nosuch/logs?stdout=1", None, 404, "nosuch"),
    ("DELETE", "/containers/nosuch", None, 404, "nosuch"),
    ("GET", "/containers/a%01b/json", None, 404, "a\x01b"),
    ("GET", "/images/nosuch/json", None, 404, "nosuch"),
    ("DELETE", "/images/nosuch", None, 404, "nosuch"),
    ("POST", "/containers/create", create("nosuch"), 404, "nosuch"),
    ("GET", "/nosuch/route", None, 404, "page not found"),
    # Operations in the wrong state.
    ("POST", "/containers/target/pause", None, 409, "not running"),
    ("POST", "/containers/target/unpause", None, 409, "not paused"),
    ("POST", "/containers/target/kill", None, 409, "not running"),
]


def snapshot(engine, outside: Path):
    """
    Return what bad input must not change: the containers and images as the
    API lists them, and every file name under the engine's folder (outside
    the console logs and the database) and under C{outside}.
    """
    _, containers = engine.request_json("GET", "/containers/json?all=1")
    _, images = engine.request_json("GET", "/images/json")
    files = []
    for root in (engine.temp_dir, outside):
        for folder, _dirs, names in os.walk(root):
            for name in names:
                path = Path(folder, name)
                if name.startswith(("emiso.db", "engine.", "console.log")):
                    continue
                files.append((str(path), path.stat().st_size))
    return (
        sorted((c["Id"], c["State"], c["Names"][0]) for c in containers),
        sorted((i["Id"], tuple(i["RepoTags"] or ())) for i in images),
        sorted(files),
    )


class BadInputTests(SynchronousTestCase):
    def setUp(self):
        self.engine = shared_engine(
            type(self).__name__, ["--max-body-size", str(MAX_BODY)]
        )
        self.outside = self.engine.temp_dir.parent / (
            self.engine.temp_dir.name + "-outside"
        )
        self.outside.mkdir(exist_ok=True)
        (self.outside / "sentinel").write_text("must stay\n")
        (self.outside / "x.itb").write_bytes(SAMPLE)
        status, _ = self.engine.request_json("GET", "/containers/target/json")
        if status == 404:
            self.engine.request_json(
                "POST", "/containers/create?name=target", {"Image": "refso3-sim"}
            )

    def test_every_case_rejected(self):
        before = snapshot(self.engine, self.outside)
        wrong = []

        for method, path, body, status, named in CASES:
            try:
                got, _headers, raw = self.engine.request(
                    method,
                    path,
                    body,
                    {"Content-Type": "application/json"} if body is not None else None,
                )
            except AssertionError as error:
                wrong.append(f"{method} {path}: {str(error).splitlines()[0]}")
                continue
            try:
                message = json.loads(raw)["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", "replace")
            if got != status or named not in message:
                wrong.append(f"{method} {path}: {got} {message!r}")

        self.assertEqual(wrong, [], f"{len(wrong)} of {len(CASES)} cases: " + "\n".join(wrong))
        self.assertEqual(snapshot(self.engine, self.outside), before)
        print(f"\nbad input: {len(CASES)} requests rejected", file=sys.stderr)

    def test_ambiguous_prefix(self):
        created = []
        while True:
            _, body = self.engine.request_json(
                "POST", "/containers/create", {"Image": "refso3-sim"}
            )
            created.append(body["Id"])
            firsts = [i[0] for i in created]
            shared = next((c for c in firsts if firsts.count(c) > 1), None)
            if shared is not None:
                break
        self.addCleanup(
            lambda: [self.engine.request("DELETE", f"/containers/{i}") for i in created]
        )
        before = snapshot(self.engine, self.outside)

        status, body = self.engine.request_json("DELETE", f"/containers/{shared}")

        self.assertEqual(status, 400)
        self.assertIn(shared, body["message"])
        self.assertIn("multiple", body["message"])
        self.assertEqual(snapshot(self.engine, self.outside), before)

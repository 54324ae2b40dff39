"""
Property-based fuzzing of the API routes with hypothesis: whatever the
path parameters, query strings and JSON bodies, the engine answers below
500 with a body that matches the Docker API 1.44 specification.

Routes that start an ME are fuzzed only with names of no container, so the
five slots stay free; streaming routes (wait, follow, events) are left out.
"""

import json
import sys
from urllib.parse import quote, urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.engineprocess import shared_engine

EXAMPLES = 200

_texts = st.text(max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _texts,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(_texts, children, max_size=4),
    max_leaves=10,
)
_names = st.sampled_from(["target", "refso3-sim", "nosuch", "", ".."]) | _texts
_query = st.dictionaries(
    st.sampled_from(
        ["all", "limit", "size", "filters", "t", "signal", "force", "v", "tail",
         "stdout", "stderr", "timestamps", "since", "until", "repo", "tag",
         "fromSrc", "name", "condition"]
    ),
    _texts | st.integers().map(str),
    max_size=4,
)
_create_bodies = st.fixed_dictionaries(
    {},
    optional={
        "Image": st.sampled_from(["refso3-sim", "blinky-sim"]) | _json,
        "Labels": _json,
        "Env": _json,
        "Cmd": _json,
        "HostConfig": _json | st.fixed_dictionaries({"RestartPolicy": _json}),
    },
)

ROUTES = [
    ("GET", "/containers/json", False),
    ("GET", "/containers/{name}/json", False),
    ("GET", "/containers/{name}/logs", False),
    ("POST", "/containers/create", True),
    ("POST", "/containers/{name}/stop", False),
    ("POST", "/containers/{name}/kill", False),
    ("POST", "/containers/{name}/pause", False),
    ("DELETE", "/containers/{name}", False),
    ("GET", "/images/json", False),
    ("GET", "/images/{name}/json", False),
    ("GET", "/images/{name}/history", False),
    ("POST", "/images/{name}/tag", False),
    ("DELETE", "/images/{name}", False),
    ("POST", "/images/create", True),
    ("GET", "/_ping", False),
    ("GET", "/version", False),
    ("GET", "/info", False),
]

_requests = st.tuples(
    st.sampled_from(ROUTES),
    _names,
    _query,
    _create_bodies | _json.map(lambda value: {"raw": value}),
    st.sampled_from(["", "/v1.44", "/v1.24", "/v1.41"]),
)


class FuzzTests(SynchronousTestCase):
    def setUp(self):
        self.engine = shared_engine(type(self).__name__)
        self.served = 0

    def test_no_server_error(self):
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(_requests)
        def check(request):
            (method, template, has_body), name, query, body, prefix = request
            path = prefix + template.format(name=quote(name, safe=""))
            if query:
                path += "?" + urlencode(query)
            data = None
            if has_body:
                data = json.dumps(body.get("raw", body)).encode()
            # EngineProcess.request fails on a body the specification rejects.
            status, _headers, raw = self.engine.request(method, path, data)
            self.served += 1
            self.assertLess(status, 500, f"{method} {path} {data!r}: {raw!r}")

        check()

        print(f"\nfuzz: {self.served} requests served", file=sys.stderr)

"""Tests for L{emiso.api.limits}: bodies over C{--max-body-size} are dropped."""

import json
import socket
import time

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site

from emiso.api.limits import body_limited_request
from emiso.api.versioning import VersionedRoot
from tests.engineprocess import EngineProcess
from tests.schema import validate_response

LIMIT = 1000


class Echo(Resource):
    """
    Answer with the size of the stored body; count the renders.
    """

    isLeaf = True
    renders = 0

    def render(self, request):
        self.renders += 1
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"stored": len(request.content.getvalue())}).encode()


class LimitedRequestTests(SynchronousTestCase):
    def setUp(self):
        self.echo = Echo()
        site = Site(VersionedRoot(self.echo, False), timeout=None)
        factory = body_limited_request(LIMIT)
        self.requests = []

        def record(*args):
            self.requests.append(factory(*args))
            return self.requests[-1]

        site.requestFactory = record
        self.channel = site.buildProtocol(None)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def answer(self):
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        return head.split(b" ")[1], json.loads(body.split(b"\r\n")[-1] or body)

    def test_declared_length(self):
        self.channel.dataReceived(
            b"POST /containers/create HTTP/1.1\r\nHost: e\r\n"
            b"Content-Length: 5000000000\r\n\r\n"
        )

        status, body = self.answer()
        self.assertEqual(status, b"413")
        self.assertEqual(
            body["message"],
            "request body of 5000000000 bytes is larger than the limit of 1000 bytes",
        )
        self.assertEqual(self.echo.renders, 0)
        self.assertTrue(self.transport.disconnecting)

    def test_no_continue(self):
        self.channel.dataReceived(
            b"POST /images/load HTTP/1.1\r\nHost: e\r\nExpect: 100-continue\r\n"
            b"Content-Length: 2000\r\n\r\n"
        )

        self.assertNotIn(b"100 Continue", self.transport.value())
        self.assertIn(b" 413 ", self.transport.value())

    def test_chunked(self):
        chunk = b"%x\r\n%s\r\n" % (600, b"x" * 600)
        self.channel.dataReceived(
            b"POST /images/load HTTP/1.1\r\nHost: e\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk
        )
        request = self.requests[-1]
        self.channel.dataReceived(chunk)

        self.assertEqual(request.content.seek(0, 2), 0)
        self.channel.dataReceived(chunk + b"0\r\n\r\n")
        status, body = self.answer()
        self.assertEqual(status, b"413")
        self.assertIn("1800 bytes", body["message"])
        self.assertEqual(self.echo.renders, 0)

    def test_within_limit(self):
        self.channel.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: e\r\nContent-Length: 1000\r\n\r\n" + b"y" * 1000
        )

        status, body = self.answer()
        self.assertEqual(status, b"200")
        self.assertEqual(body, {"stored": 1000})


class LimitedEngineTests(SynchronousTestCase):
    def setUp(self):
        self.engine = EngineProcess(["--max-body-size", str(LIMIT)])
        self.engine.start()
        self.addCleanup(self.engine.close)

    def exchange(self, head, body=b""):
        with socket.create_connection(("127.0.0.1", self.engine.port), 10) as sock:
            sock.sendall(head + body)
            started = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        head, _, raw = answer.partition(b"\r\n\r\n")
        return time.monotonic() - started, head.split(b" ")[1], raw

    def test_huge_declared_length(self):
        elapsed, status, raw = self.exchange(
            b"POST /v1.44/containers/create HTTP/1.1\r\nHost: engine\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: 1000000000000\r\n\r\n"
        )

        body = json.loads(raw)
        validate_response("POST", "/containers/create", 413, body)
        self.assertEqual(status, b"413")
        self.assertIn("1000000000000 bytes", body["message"])
        self.assertLess(elapsed, 5)

    def test_chunked_body(self):
        chunks = b"".join(b"%x\r\n%s\r\n" % (500, b"z" * 500) for _ in range(5))

        _, status, raw = self.exchange(
            b"POST /images/load HTTP/1.1\r\nHost: engine\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            chunks + b"0\r\n\r\n",
        )

        self.assertEqual(status, b"413")
        self.assertIn("limit of 1000 bytes", json.loads(raw)["message"])
        self.assertEqual(list((self.engine.data_dir).rglob("upload-*")), [])

"""
Errors of C{GET /containers/{id}/logs} after the first frame went out.
"""

import struct

from twisted.internet.defer import inlineCallbacks

from emiso.engine import logs
from emiso.engine.timeutil import format_fixed_timestamp
from tests.test_api import APITestCase


class LogErrorInBandTests(APITestCase):
    @inlineCallbacks
    def test_read_error_after_first_chunk(self):
        container_id = yield self.create("chatty")
        container = self.engine.containers.get(container_id)
        stamp = format_fixed_timestamp(1767225600.0)
        line = f"{stamp} stdout {'x' * 90}\n".encode()
        with open(container.log_path, "wb") as log_file:
            log_file.write(line * (2 * logs.FOLLOW_READ_LIMIT // len(line)))
        original = logs._read_frames
        calls = []

        def fail_second_read(*args):
            calls.append(args)
            if len(calls) > 1:
                raise OSError("disk went away")
            return original(*args)

        self.patch(logs, "_read_frames", fail_second_read)

        response, body = yield self.request(
            "GET", "/containers/chatty/logs?stdout=1&stderr=1"
        )

        message = b"error reading the log: disk went away\n"
        error_frame = struct.pack(">BxxxI", 3, len(message)) + message
        self.assertEqual(response.code, 200)
        self.assertTrue(body.startswith(struct.pack(">BxxxI", 1, 91) + b"x" * 90))
        self.assertTrue(body.endswith(error_frame), body[-80:])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

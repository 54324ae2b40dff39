"""
Tests for the Docker API 1.44 response validator in L{tests.schema}.
"""

from twisted.trial.unittest import SynchronousTestCase

from tests.schema import ResponseValidationError, validate_json_body, validate_response

CONTAINER_ID = "4f0c" * 16
IMAGE_ID = "sha256:" + "9a1e" * 16


def container_summary(**changes) -> dict:
    """
    Build a list item for C{GET /containers/json} as Docker 25 sends it.
    """
    item = {
        "Id": CONTAINER_ID,
        "Names": ["/demo"],
        "Image": "refso3-sim:latest",
        "ImageID": IMAGE_ID,
        "Command": "",
        "Created": 1764863000,
        "Ports": [],
        "Labels": {},
        "State": "running",
        "Status": "Up 5 seconds",
        "HostConfig": {"NetworkMode": "none"},
        "NetworkSettings": {"Networks": {}},
        "Mounts": [],
    }
    item.update(changes)
    return item


def container_inspect(**state_changes) -> dict:
    """
    Build a C{GET /containers/{id}/json} body with a changed C{State}.
    """
    state = {
        "Status": "running",
        "Running": True,
        "Paused": False,
        "Restarting": False,
        "OOMKilled": False,
        "Dead": False,
        "Pid": 0,
        "ExitCode": 0,
        "Error": "",
        "StartedAt": "2026-12-04T15:43:11.123456789Z",
        "FinishedAt": "0001-01-01T00:00:00Z",
    }
    state.update(state_changes)
    return {
        "Id": CONTAINER_ID,
        "Created": "2026-12-04T15:43:10.5Z",
        "Path": "",
        "Args": [],
        "State": state,
        "Image": IMAGE_ID,
        "Name": "/demo",
        "RestartCount": 0,
        "Config": {"Tty": False, "Env": [], "Cmd": None, "Labels": {}},
        "HostConfig": {"NetworkMode": "none", "Binds": None},
    }


class ValidateResponseTests(SynchronousTestCase):
    """
    Tests for L{validate_response}.
    """

    def test_accepts_container_list_item(self):
        body = [container_summary()]

        validate_response("GET", "/v1.44/containers/json?all=1", 200, body)

    def test_rejects_string_created(self):
        body = [container_summary(Created="2026-12-04T15:43:10Z")]

        error = self.assertRaises(
            ResponseValidationError,
            validate_response,
            "GET",
            "/containers/json",
            200,
            body,
        )

        self.assertIn("0/Created", str(error))

    def test_accepts_null_arrays(self):
        body = [container_summary(Names=None, Ports=None, Mounts=None, Labels=None)]

        validate_response("GET", "/containers/json", 200, body)

    def test_rejects_null_scalar(self):
        body = [container_summary(Created=None)]

        self.assertRaises(
            ResponseValidationError,
            validate_response,
            "GET",
            "/containers/json",
            200,
            body,
        )

    def test_accepts_error_state_status(self):
        body = container_inspect(Status="error")

        validate_response("GET", f"/containers/{CONTAINER_ID}/json", 200, body)

    def test_rejects_unknown_state_status(self):
        body = container_inspect(Status="migrating")

        error = self.assertRaises(
            ResponseValidationError,
            validate_response,
            "GET",
            "/containers/demo/json",
            200,
            body,
        )

        self.assertIn("State/Status", str(error))

    def test_rejects_error_health_status(self):
        body = container_inspect(
            Health={"Status": "error", "FailingStreak": 0, "Log": []}
        )

        error = self.assertRaises(
            ResponseValidationError,
            validate_response,
            "GET",
            "/containers/demo/json",
            200,
            body,
        )

        self.assertIn("State/Health/Status", str(error))

    def test_accepts_unknown_fields(self):
        body = container_inspect()
        body["EmisoSlot"] = 3

        validate_response("GET", "/containers/demo/json", 200, body)

    def test_rejects_error_without_message(self):
        body = {"error": "No such container: nosuch"}

        error = self.assertRaises(
            ResponseValidationError,
            validate_response,
            "GET",
            "/containers/nosuch/json",
            404,
            body,
        )

        self.assertIn("message", str(error))

    def test_rejects_error_message_number(self):
        self.assertRaises(
            ResponseValidationError,
            validate_response,
            "DELETE",
            "/containers/demo",
            409,
            {"message": 409},
        )

    def test_accepts_error_body(self):
        body = {"message": "No such image: nosuch:latest"}

        validate_response("GET", "/images/nosuch/json", 404, body)

    def test_accepts_not_modified_empty(self):
        validate_response("POST", "/v1.44/containers/demo/stop", 304, None)

    def test_accepts_undocumented_pause_conflict(self):
        body = {"message": "container demo is already paused"}

        validate_response("POST", "/containers/demo/pause", 409, body)

    def test_rejects_undocumented_success_status(self):
        self.assertRaises(
            ResponseValidationError,
            validate_response,
            "POST",
            "/containers/demo/pause",
            200,
            None,
        )

    def test_rejects_unknown_route(self):
        self.assertRaises(
            ResponseValidationError,
            validate_response,
            "GET",
            "/containers/demo/teleport",
            200,
            {},
        )

    def test_rejects_empty_object_body(self):
        self.assertRaises(
            ResponseValidationError,
            validate_response,
            "GET",
            "/info",
            200,
            None,
        )

    def test_matches_image_name_slashes(self):
        body = {"Id": IMAGE_ID, "RepoTags": ["soo/refso3-sim:latest"], "Size": "big"}

        error = self.assertRaises(
            ResponseValidationError,
            validate_response,
            "GET",
            "/images/soo/refso3-sim:latest/json",
            200,
            body,
        )

        self.assertIn("/images/{name}/json", str(error))

    def test_accepts_checkpoint_list(self):
        validate_response(
            "GET", "/containers/demo/checkpoints", 200, [{"Name": "cp1"}]
        )

    def test_rejects_checkpoint_without_name(self):
        self.assertRaises(
            ResponseValidationError,
            validate_response,
            "GET",
            "/containers/demo/checkpoints",
            200,
            [{"Id": "cp1"}],
        )


class ValidateJsonBodyTests(SynchronousTestCase):
    """
    Tests for L{validate_json_body}.
    """

    def test_decodes_event_stream(self):
        data = b'{"Type":"container","time":1}\n{"Type":"image","time":2}\n'

        values = validate_json_body("GET", "/events", 200, "application/json", data)

        self.assertEqual([value["time"] for value in values], [1, 2])

    def test_rejects_bad_event(self):
        data = b'{"Type":"container","time":1}\n{"Type":"image","time":"now"}\n'

        self.assertRaises(
            ResponseValidationError,
            validate_json_body,
            "GET",
            "/events",
            200,
            "application/json",
            data,
        )

    def test_rejects_text_error(self):
        self.assertRaises(
            ResponseValidationError,
            validate_json_body,
            "GET",
            "/containers/nosuch/json",
            404,
            "text/html",
            b"<h1>not found</h1>",
        )

    def test_accepts_ping_text(self):
        values = validate_json_body(
            "GET", "/_ping", 200, "text/plain; charset=utf-8", b"OK"
        )

        self.assertEqual(values, [])

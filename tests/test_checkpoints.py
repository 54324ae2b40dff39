"""Tests for checkpoint storage, validation and the checkpoint routes on a fake agency."""

import json
import os

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from emiso.engine.checkpoints import (
    METADATA_FILE,
    SNAPSHOT_FILE,
    CheckpointMetadata,
    CorruptCheckpoint,
    NoSuchCheckpoint,
    check_folder,
    hash_file,
    list_names,
    read_checkpoint,
    remove_checkpoint,
    validate_name,
    write_metadata,
)
from emiso.errors import AgencyError, InvalidParameter
from tests.test_api import APITestCase


def make_checkpoint(folder: str, name: str, snapshot: bytes = b"PK snapshot",
                    image_id: str = "sha256:" + "a" * 64) -> str:
    """
    Write a checkpoint folder with a snapshot and matching metadata.
    """
    directory = os.path.join(folder, name)
    os.makedirs(directory)
    with open(os.path.join(directory, SNAPSHOT_FILE), "wb") as stream:
        stream.write(snapshot)
    size, digest = hash_file(os.path.join(directory, SNAPSHOT_FILE))
    write_metadata(
        directory,
        CheckpointMetadata(
            name=name,
            container_id="c" * 64,
            container_name="demo",
            image_id=image_id,
            image_ref="refso3-sim:latest",
            me_name="SOO.refso3-sim",
            me_size=16 * 1024 * 1024,
            created=1767225600.5,
            snapshot_size=size,
            snapshot_sha256=digest,
        ),
    )
    return directory


class NameTests(SynchronousTestCase):
    def test_valid_names(self):
        for name in ("cp1", "a.b-c_d", "2026-12-04"):
            self.assertEqual(validate_name(name), name)

    def test_invalid_names(self):
        for name in ("", "a", "..", "../x", "a/b", ".hidden", "-x", "a\nb", "a\x00b",
                     "a b", 5, None):
            self.assertRaises(InvalidParameter, validate_name, name)


class FolderTests(SynchronousTestCase):
    def setUp(self):
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)

    def test_existing_folder(self):
        self.assertEqual(check_folder(self.folder, writable=True), self.folder)

    def test_relative_folder(self):
        error = self.assertRaises(InvalidParameter, check_folder, "cps", True)

        self.assertIn("absolute path", str(error))

    def test_missing_folder(self):
        missing = os.path.join(self.folder, "missing")

        error = self.assertRaises(InvalidParameter, check_folder, missing, True)

        self.assertIn("does not exist", str(error))

    def test_file_is_no_folder(self):
        path = os.path.join(self.folder, "file")
        open(path, "w").close()

        self.assertRaises(InvalidParameter, check_folder, path, False)

    def test_list_skips_other_entries(self):
        make_checkpoint(self.folder, "cp2")
        make_checkpoint(self.folder, "cp1")
        os.makedirs(os.path.join(self.folder, "no-metadata"))
        open(os.path.join(self.folder, "notes.txt"), "w").close()

        names = list_names(self.folder)

        self.assertEqual(names, ["cp1", "cp2"])

    def test_list_missing_folder(self):
        self.assertEqual(list_names(os.path.join(self.folder, "none")), [])


class ReadCheckpointTests(SynchronousTestCase):
    def setUp(self):
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.directory = make_checkpoint(self.folder, "cp1", b"0123456789" * 10)
        self.snapshot = os.path.join(self.directory, SNAPSHOT_FILE)

    def test_reads_metadata(self):
        metadata = read_checkpoint(self.folder, "cp1")

        self.assertEqual(metadata.name, "cp1")
        self.assertEqual(metadata.snapshot_size, 100)
        self.assertEqual(metadata.me_size, 16 * 1024 * 1024)

    def test_missing_checkpoint(self):
        self.assertRaises(NoSuchCheckpoint, read_checkpoint, self.folder, "cp9")

    def test_truncated_snapshot(self):
        with open(self.snapshot, "r+b") as stream:
            stream.truncate(40)

        error = self.assertRaises(CorruptCheckpoint, read_checkpoint, self.folder, "cp1")

        self.assertIn("truncated", str(error))

    def test_damaged_snapshot(self):
        with open(self.snapshot, "r+b") as stream:
            stream.write(b"X")

        error = self.assertRaises(CorruptCheckpoint, read_checkpoint, self.folder, "cp1")

        self.assertIn("damaged", str(error))

    def test_missing_snapshot(self):
        os.unlink(self.snapshot)

        self.assertRaises(CorruptCheckpoint, read_checkpoint, self.folder, "cp1")

    def test_invalid_metadata(self):
        path = os.path.join(self.directory, METADATA_FILE)
        cases = {
            "not json": b"{broken",
            "other format": json.dumps({"format": "other"}).encode(),
            "missing field": json.dumps(
                {"format": "emiso-checkpoint", "version": 1, "name": "cp1"}
            ).encode(),
        }
        for case, content in cases.items():
            with open(path, "wb") as stream:
                stream.write(content)

            self.assertRaises(CorruptCheckpoint, read_checkpoint, self.folder, "cp1")

    def test_remove_keeps_foreign_files(self):
        open(os.path.join(self.directory, "notes.txt"), "w").close()

        remove_checkpoint(self.folder, "cp1")

        self.assertEqual(os.listdir(self.directory), ["notes.txt"])

    def test_remove_deletes_folder(self):
        remove_checkpoint(self.folder, "cp1")

        self.assertFalse(os.path.exists(self.directory))


class CheckpointRouteTests(APITestCase):
    """
    The checkpoint routes and C{start?checkpoint=} on the fake agency.
    """

    @inlineCallbacks
    def running(self, name="demo"):
        container_id = yield self.create(name)
        response, _ = yield self.request("POST", f"/containers/{name}/start")
        self.assertEqual(response.code, 204)
        return container_id

    @inlineCallbacks
    def inspect(self, name="demo"):
        _, body = yield self.request("GET", f"/containers/{name}/json")
        return body

    @inlineCallbacks
    def checkpoint(self, name="demo", body=None):
        response, result = yield self.request(
            "POST", f"/containers/{name}/checkpoints",
            body={"CheckpointID": "cp1"} if body is None else body,
        )
        return response, result

    @inlineCallbacks
    def test_create_leaves_running(self):
        yield self.running()

        response, body = yield self.checkpoint()

        self.assertEqual(response.code, 201, body)
        state = (yield self.inspect())["State"]
        self.assertEqual(state["Status"], "running")
        ops = [op for op, _ in self.agency.calls]
        self.assertEqual(ops[-3:], ["initialize", "read_snapshot", "finalize"])

    @inlineCallbacks
    def test_create_with_exit(self):
        yield self.running()

        response, _ = yield self.checkpoint(body={"CheckpointID": "cp1", "Exit": True})

        self.assertEqual(response.code, 201)
        state = (yield self.inspect())["State"]
        self.assertEqual(state["Status"], "exited")
        self.assertEqual(self.agency.slots, {})

    @inlineCallbacks
    def test_create_paused_stays_paused(self):
        yield self.running()
        yield self.request("POST", "/containers/demo/pause")

        response, _ = yield self.checkpoint()

        self.assertEqual(response.code, 201)
        self.assertEqual((yield self.inspect())["State"]["Status"], "paused")
        ops = [op for op, _ in self.agency.calls]
        self.assertEqual(ops[-2:], ["initialize", "read_snapshot"])

    @inlineCallbacks
    def test_list_and_delete(self):
        yield self.running()
        yield self.checkpoint()
        yield self.checkpoint(body={"CheckpointID": "cp2"})

        _, listed = yield self.request("GET", "/containers/demo/checkpoints")
        response, _ = yield self.request("DELETE", "/containers/demo/checkpoints/cp1")
        _, after = yield self.request("GET", "/containers/demo/checkpoints")

        self.assertEqual(listed, [{"Name": "cp1"}, {"Name": "cp2"}])
        self.assertEqual(response.code, 204)
        self.assertEqual(after, [{"Name": "cp2"}])

    @inlineCallbacks
    def test_delete_missing(self):
        yield self.create("demo")

        response, body = yield self.request(
            "DELETE", "/containers/demo/checkpoints/cp1"
        )

        self.assertEqual(response.code, 404)
        self.assertIn("cp1", body["message"])

    @inlineCallbacks
    def test_create_duplicate(self):
        yield self.running()
        yield self.checkpoint()

        response, body = yield self.checkpoint()

        self.assertEqual(response.code, 409)
        self.assertIn("already exists", body["message"])

    @inlineCallbacks
    def test_create_not_running(self):
        yield self.create("demo")

        response, body = yield self.checkpoint()

        self.assertEqual(response.code, 409)
        self.assertIn("not running", body["message"])

    @inlineCallbacks
    def test_create_bad_bodies(self):
        yield self.running()
        bodies = [
            {},
            {"CheckpointID": "../escape"},
            {"CheckpointID": "cp1", "Exit": "yes"},
            {"CheckpointID": "cp1", "CheckpointDir": 5},
            {"CheckpointID": "cp1", "CheckpointDir": "relative/dir"},
            {"CheckpointID": "cp1", "CheckpointDir": "/nonexistent/emiso-cps"},
        ]
        for body in bodies:
            response, result = yield self.checkpoint(body=body)

            self.assertEqual(response.code, 400, (body, result))
        _, listed = yield self.request("GET", "/containers/demo/checkpoints")
        self.assertEqual(listed, [])

    @inlineCallbacks
    def test_refused_snapshot_keeps_running(self):
        yield self.running()
        self.agency.failures["read_snapshot"] = AgencyError("disk full")

        response, body = yield self.checkpoint()

        self.assertEqual(response.code, 500)
        self.assertIn("disk full", body["message"])
        state = (yield self.inspect())["State"]
        self.assertEqual(state["Status"], "running")
        _, listed = yield self.request("GET", "/containers/demo/checkpoints")
        self.assertEqual(listed, [])

    @inlineCallbacks
    def test_start_from_checkpoint(self):
        yield self.running()
        yield self.checkpoint(body={"CheckpointID": "cp1", "Exit": True})

        response, _ = yield self.request(
            "POST", "/containers/demo/start?checkpoint=cp1"
        )

        self.assertEqual(response.code, 204)
        self.assertEqual((yield self.inspect())["State"]["Status"], "running")
        self.assertEqual(self.agency.calls[-2][0], "write_snapshot")
        self.assertEqual(self.agency.calls[-1][0], "finalize")

    @inlineCallbacks
    def test_start_other_image_rejected(self):
        yield self.running()
        yield self.checkpoint(body={"CheckpointID": "cp1", "Exit": True})
        yield self.create("other", image="blinky-sim")
        before = yield self.inspect("other")
        folder = os.path.join(
            os.path.dirname(self.engine.containers.get("demo").log_path), "checkpoints"
        )

        response, body = yield self.request(
            "POST", f"/containers/other/start?checkpoint=cp1&checkpoint-dir={folder}"
        )

        self.assertEqual(response.code, 400)
        self.assertIn("was taken from image refso3-sim", body["message"])
        self.assertEqual((yield self.inspect("other")), before)

    @inlineCallbacks
    def test_start_truncated_rejected(self):
        yield self.running()
        yield self.checkpoint(body={"CheckpointID": "cp1", "Exit": True})
        before = yield self.inspect()
        snapshot = os.path.join(
            os.path.dirname(self.engine.containers.get("demo").log_path),
            "checkpoints", "cp1", SNAPSHOT_FILE,
        )
        with open(snapshot, "r+b") as stream:
            stream.truncate(10)

        response, body = yield self.request(
            "POST", "/containers/demo/start?checkpoint=cp1"
        )

        self.assertEqual(response.code, 400)
        self.assertIn("truncated", body["message"])
        self.assertEqual((yield self.inspect()), before)

    @inlineCallbacks
    def test_start_failed_restore_unchanged(self):
        yield self.running()
        yield self.checkpoint(body={"CheckpointID": "cp1", "Exit": True})
        before = yield self.inspect()
        self.agency.failures["finalize"] = AgencyError("the ME did not resume")

        response, body = yield self.request(
            "POST", "/containers/demo/start?checkpoint=cp1"
        )

        self.assertEqual(response.code, 500)
        self.assertIn("the container is unchanged", body["message"])
        self.assertEqual((yield self.inspect()), before)
        self.assertEqual(self.agency.slots, {})

    @inlineCallbacks
    def test_start_missing_checkpoint(self):
        yield self.create("demo")

        response, body = yield self.request(
            "POST", "/containers/demo/start?checkpoint=cp9"
        )

        self.assertEqual(response.code, 404)
        self.assertIn("cp9", body["message"])

    @inlineCallbacks
    def test_default_checkpoints_removed_with_container(self):
        yield self.running()
        yield self.checkpoint(body={"CheckpointID": "cp1", "Exit": True})
        folder = os.path.join(
            os.path.dirname(self.engine.containers.get("demo").log_path), "checkpoints"
        )

        yield self.request("DELETE", "/containers/demo")

        self.assertFalse(os.path.exists(folder))

    @inlineCallbacks
    def test_custom_folder_kept_after_remove(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        yield self.running()
        yield self.checkpoint(
            body={"CheckpointID": "cp1", "CheckpointDir": folder, "Exit": True}
        )

        _, listed = yield self.request(
            "GET", f"/containers/demo/checkpoints?dir={folder}"
        )
        yield self.request("DELETE", "/containers/demo")

        self.assertEqual(listed, [{"Name": "cp1"}])
        self.assertEqual(list_names(folder), ["cp1"])

    @inlineCallbacks
    def test_experimental_off(self):
        self.engine.config.experimental = False
        yield self.running()

        created, body = yield self.checkpoint()
        listed, _ = yield self.request("GET", "/containers/demo/checkpoints")
        started, _ = yield self.request(
            "POST", "/containers/demo/start?checkpoint=cp1"
        )

        self.assertEqual(created.code, 501)
        self.assertIn("--no-experimental", body["message"])
        self.assertEqual(listed.code, 501)
        self.assertEqual(started.code, 501)

"""Tests for emiso.engine.images.ImageStore on a real temporary image folder."""

import hashlib
import io
import os
import shutil
import tarfile

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from emiso.engine import images as images_module
from emiso.engine.images import ImageStore
from emiso.errors import Conflict, InvalidImage, InvalidParameter, NoSuchImage
from tests.fitbuilder import OMIT, build_fit

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(os.path.dirname(HERE), "emiso", "samples")
TEST_IMAGES = os.path.join(HERE, "images")

REFSO3 = os.path.join(SAMPLES, "refso3-sim.itb")
BLINKY = os.path.join(SAMPLES, "blinky-sim.itb")
CONTAINER_ID = "c0ffee" * 10 + "abcd"


def digest_of(path: str) -> str:
    with open(path, "rb") as stream:
        return "sha256:" + hashlib.sha256(stream.read()).hexdigest()


class SynchronousThreadPool:
    """Run the "thread" work at once, in the calling thread."""

    def callInThreadWithCallback(self, onResult, function, *args, **kwargs):
        try:
            result = function(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class SynchronousReactor:
    """Deliver thread results at once, for deferToThreadPool."""

    def callFromThread(self, function, *args, **kwargs):
        function(*args, **kwargs)


class MemoryTags:
    """In-memory stand-in for the tag methods of emiso.engine.store.Store."""

    def __init__(self, tags=None):
        self.tags = dict(tags or {})
        self.loads = 0

    def load_tags(self):
        self.loads += 1
        return succeed(dict(self.tags))

    def set_tag(self, ref, digest):
        self.tags[ref] = digest
        return succeed(None)

    def delete_tag(self, ref):
        self.tags.pop(ref, None)
        return succeed(None)


class StoreTestMixin:
    """Build an ImageStore on a temporary folder with synchronous threads."""

    def make_store(self, files=(), tags=None):
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        for source in files:
            shutil.copy(source, self.folder)
        self.tags = MemoryTags(tags)
        self.store = ImageStore(
            self.folder,
            self.tags,
            SynchronousReactor(),
            SynchronousThreadPool(),
            samples_dir=SAMPLES,
        )
        return self.store

    def refreshed_store(self, files=(REFSO3, BLINKY), tags=None):
        store = self.make_store(files, tags)
        self.successResultOf(store.refresh())
        return store

    def write_upload(self, data: bytes) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as stream:
            stream.write(data)
        return path

    def folder_files(self) -> set:
        found = set()
        for root, _, names in os.walk(self.folder):
            for name in names:
                found.add(os.path.relpath(os.path.join(root, name), self.folder))
        return found

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.folder, ".blobs", digest[len("sha256:") :] + ".itb")


class RefreshTests(StoreTestMixin, SynchronousTestCase):
    def setUp(self):
        self.warnings = []

        def observe(event):
            if event.get("log_level") is not None and event["log_level"].name == "warn":
                self.warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def test_refresh_lists_files(self):
        store = self.refreshed_store()

        tags = sorted(image.repo_tags for image in store.list())

        self.assertEqual(tags, [("blinky-sim:latest",), ("refso3-sim:latest",)])

    def test_image_id_is_file_digest(self):
        store = self.refreshed_store()

        image = store.get("refso3-sim")

        self.assertEqual(image.id, digest_of(REFSO3))
        self.assertEqual(image.path, os.path.join(self.folder, "refso3-sim.itb"))
        self.assertEqual(image.size, os.path.getsize(REFSO3))

    def test_image_created_from_fit(self):
        store = self.refreshed_store()

        image = store.get("refso3-sim")

        self.assertEqual(image.created, image.fit.timestamp)

    def test_image_created_from_mtime(self):
        store = self.make_store()
        path = os.path.join(self.folder, "plain.itb")
        with open(path, "wb") as stream:
            stream.write(build_fit(timestamp=OMIT))
        os.utime(path, (1_700_000_000, 1_700_000_000))
        self.successResultOf(store.refresh())

        image = store.get("plain")

        self.assertEqual(image.created, 1_700_000_000)

    def test_image_labels(self):
        store = self.refreshed_store()

        labels = store.get("refso3-sim").labels

        self.assertEqual(labels["org.soo.me.name"], "SOO.refso3-sim")
        self.assertEqual(labels["org.soo.me.spid"], "0x0100000000000001")
        self.assertEqual(labels["org.soo.me.domain-size"], "16777216")
        self.assertIn("heartbeat", labels["org.soo.me.shortdesc"])
        self.assertIn("EMISO simulated agency", labels["org.soo.fit.description"])
        self.assertEqual(labels["org.soo.fit.arch"], "arm64")
        for value in labels.values():
            self.assertIsInstance(value, str)

    def test_invalid_name_skipped(self):
        store = self.make_store()
        for name in ["Upper.itb", "two words.itb", "-dash.itb"]:
            shutil.copy(REFSO3, os.path.join(self.folder, name))

        self.successResultOf(store.refresh())

        self.assertEqual(store.list(), [])
        self.assertEqual(len(self.warnings), 3)

    def test_invalid_content_skipped(self):
        store = self.make_store([REFSO3])
        with open(os.path.join(self.folder, "junk.itb"), "w") as stream:
            stream.write("not a FIT image\n")

        self.successResultOf(store.refresh())

        self.assertEqual([i.repo_tags for i in store.list()], [("refso3-sim:latest",)])
        self.assertEqual(len(self.warnings), 1)
        self.assertIn("junk.itb", self.warnings[0]["path"])

    def test_invalid_file_warned_once(self):
        store = self.make_store()
        with open(os.path.join(self.folder, "junk.itb"), "w") as stream:
            stream.write("not a FIT image\n")
        self.successResultOf(store.refresh())

        self.successResultOf(store.refresh())

        self.assertEqual(len(self.warnings), 1)

    def test_symbolic_link_skipped(self):
        store = self.make_store()
        os.symlink(REFSO3, os.path.join(self.folder, "linked.itb"))

        self.successResultOf(store.refresh())

        self.assertEqual(store.list(), [])

    def test_other_files_ignored(self):
        store = self.make_store([REFSO3])
        shutil.copy(REFSO3, os.path.join(self.folder, "copy.bin"))
        shutil.copy(REFSO3, os.path.join(self.folder, ".hidden.itb"))

        self.successResultOf(store.refresh())

        self.assertEqual(len(store.list()), 1)
        self.assertEqual(self.warnings, [])

    def test_unchanged_files_not_parsed(self):
        store = self.refreshed_store()
        calls = []
        original = images_module.parse_fit

        def counting_parse(data):
            calls.append(len(data))
            return original(data)

        self.patch(images_module, "parse_fit", counting_parse)

        self.successResultOf(store.refresh())

        self.assertEqual(calls, [])

    def test_changed_file_parsed_again(self):
        store = self.refreshed_store()
        path = os.path.join(self.folder, "refso3-sim.itb")
        shutil.copy(BLINKY, path)

        self.successResultOf(store.refresh())

        self.assertEqual(store.get("refso3-sim").id, digest_of(BLINKY))

    def test_tags_loaded_once(self):
        store = self.refreshed_store()

        self.successResultOf(store.refresh())

        self.assertEqual(self.tags.loads, 1)

    def test_database_tags_listed(self):
        tags = {"refso3-sim:v1": digest_of(REFSO3), "gone:v1": "sha256:" + "0" * 64}

        store = self.refreshed_store(tags=tags)

        image = store.get("refso3-sim:v1")
        self.assertEqual(image.repo_tags, ("refso3-sim:latest", "refso3-sim:v1"))
        self.assertRaises(NoSuchImage, store.get, "gone:v1")

    def test_blob_with_wrong_name_skipped(self):
        store = self.make_store()
        os.makedirs(os.path.join(self.folder, ".blobs"))
        shutil.copy(REFSO3, self.blob_path("sha256:" + "a" * 64))

        self.successResultOf(store.refresh())

        self.assertEqual(store.list(), [])
        self.assertEqual(len(self.warnings), 1)


class GetTests(StoreTestMixin, SynchronousTestCase):
    def test_get_by_full_id(self):
        store = self.refreshed_store()

        image = store.get(digest_of(REFSO3))

        self.assertEqual(image.repo_tags, ("refso3-sim:latest",))

    def test_get_by_bare_hex(self):
        store = self.refreshed_store()
        hex_digest = digest_of(REFSO3)[len("sha256:") :]

        image = store.get(hex_digest)

        self.assertEqual(image.id, digest_of(REFSO3))

    def test_get_by_prefix(self):
        store = self.refreshed_store()
        digest = digest_of(BLINKY)

        by_prefix = store.get(digest[len("sha256:") : len("sha256:") + 12])
        by_id_prefix = store.get(digest[:19])

        self.assertEqual(by_prefix.id, digest)
        self.assertEqual(by_id_prefix.id, digest)

    def test_get_by_name_and_tag(self):
        store = self.refreshed_store()

        by_name = store.get("blinky-sim")
        by_reference = store.get("blinky-sim:latest")

        self.assertEqual(by_name.id, digest_of(BLINKY))
        self.assertEqual(by_reference.id, digest_of(BLINKY))

    def test_get_unknown_names(self):
        store = self.refreshed_store()

        unknown = ["nothing", "blinky-sim:v9", "sha256:" + "f" * 64, "zz", "", "../x"]

        for name in unknown:
            self.assertRaises(NoSuchImage, store.get, name)

    def test_get_ambiguous_prefix(self):
        store = self.make_store()
        first_characters = {}
        for number in range(17):
            data = build_fit(description=f"variant {number}")
            character = hashlib.sha256(data).hexdigest()[0]
            if character in first_characters:
                break
            first_characters[character] = number
            with open(os.path.join(self.folder, f"v{number}.itb"), "wb") as stream:
                stream.write(data)
        with open(os.path.join(self.folder, f"v{number}.itb"), "wb") as stream:
            stream.write(data)
        self.successResultOf(store.refresh())

        error = self.assertRaises(InvalidParameter, store.get, character)

        self.assertIn("ambiguous", str(error))


class ImportTests(StoreTestMixin, SynchronousTestCase):
    def test_import_latest_writes_file(self):
        store = self.refreshed_store(files=())
        upload = self.write_upload(build_fit())

        image = self.successResultOf(store.import_image(upload, "fresh", None))

        self.assertEqual(image.repo_tags, ("fresh:latest",))
        self.assertEqual(image.path, os.path.join(self.folder, "fresh.itb"))
        self.assertEqual(digest_of(image.path), image.id)
        self.assertEqual(self.folder_files(), {"fresh.itb"})

    def test_import_tag_stores_blob(self):
        store = self.refreshed_store(files=())
        upload = self.write_upload(build_fit())

        image = self.successResultOf(store.import_image(upload, "fresh", "v2"))

        self.assertEqual(image.repo_tags, ("fresh:v2",))
        self.assertEqual(image.path, self.blob_path(image.id))
        self.assertEqual(self.tags.tags, {"fresh:v2": image.id})
        self.assertRaises(NoSuchImage, store.get, "fresh")

    def test_import_known_content_no_blob(self):
        store = self.refreshed_store()

        image = self.successResultOf(store.import_image(REFSO3, "refso3-sim", "v2"))

        self.assertEqual(image.repo_tags, ("refso3-sim:latest", "refso3-sim:v2"))
        self.assertNotIn(".blobs", {path.split("/")[0] for path in self.folder_files()})

    def test_import_untagged(self):
        store = self.refreshed_store(files=())
        upload = self.write_upload(build_fit())

        image = self.successResultOf(store.import_image(upload, None, None))

        self.assertEqual(image.repo_tags, ())
        self.assertTrue(os.path.exists(self.blob_path(image.id)))
        self.assertEqual(store.get(image.id[:20]), image)

    def test_import_invalid_stores_nothing(self):
        store = self.refreshed_store()
        before = self.folder_files()
        upload = self.write_upload(b"#!/bin/sh\necho this is not a FIT image\n")

        failure = self.failureResultOf(store.import_image(upload, "bad", None))

        failure.trap(InvalidImage)
        self.assertEqual(self.folder_files(), before)
        self.assertEqual(len(store.list()), 2)

    def test_import_invalid_repository(self):
        store = self.refreshed_store(files=())
        upload = self.write_upload(build_fit())
        names = ["Upper", "a/b", "..", "../evil", "a:b", ".x", "x..y", "x\0y",
                 "x\ny", "/abs", "a" * 129, "-x", "x-"]

        for name in names:
            failure = self.failureResultOf(store.import_image(upload, name, None))

            failure.trap(InvalidParameter)
            self.assertIn(repr(name), failure.getErrorMessage())
        self.assertEqual(self.folder_files(), set())

    def test_import_invalid_tag(self):
        store = self.refreshed_store(files=())
        upload = self.write_upload(build_fit())

        for tag in ["-x", ".x", "a/b", "a:b", "t" * 129, "../x"]:
            failure = self.failureResultOf(store.import_image(upload, "ok", tag))

            failure.trap(InvalidParameter)
            self.assertIn(repr(tag), failure.getErrorMessage())
        self.assertEqual(self.folder_files(), set())

    def test_import_valid_edge_names(self):
        store = self.refreshed_store(files=())
        upload = self.write_upload(build_fit())

        for name in ["a", "a.b_c__d---e", "x" * 128]:
            image = self.successResultOf(store.import_image(upload, name, "V_1.0-rc"))

            self.assertIn(f"{name}:V_1.0-rc", image.repo_tags)

    def test_import_replaces_tagged_content(self):
        store = self.refreshed_store(files=[REFSO3])
        old = digest_of(REFSO3)
        self.successResultOf(store.tag("refso3-sim", "refso3-sim", "v1"))
        upload = self.write_upload(build_fit())

        image = self.successResultOf(store.import_image(upload, "refso3-sim", None))

        self.assertEqual(store.get("refso3-sim").id, image.id)
        self.assertEqual(store.get("refso3-sim:v1").id, old)
        self.assertEqual(digest_of(self.blob_path(old)), old)

    def test_import_deletes_unused_content(self):
        store = self.refreshed_store(files=[REFSO3])
        upload = self.write_upload(build_fit())

        self.successResultOf(
            store.import_image(upload, "refso3-sim", None, in_use=lambda _: False)
        )

        self.assertEqual(len(store.list()), 1)
        self.assertFalse(os.path.exists(self.blob_path(digest_of(REFSO3))))

    def test_import_keeps_used_content(self):
        store = self.refreshed_store(files=[REFSO3])
        old = digest_of(REFSO3)
        upload = self.write_upload(build_fit())

        self.successResultOf(
            store.import_image(upload, "refso3-sim", None, in_use=lambda i: i == old)
        )

        self.assertEqual(store.get(old).repo_tags, ())

    def test_import_without_in_use_keeps_content(self):
        store = self.refreshed_store(files=[REFSO3])
        upload = self.write_upload(build_fit())

        self.successResultOf(store.import_image(upload, "refso3-sim", None))

        self.assertEqual(store.get(digest_of(REFSO3)).repo_tags, ())

    def test_import_leaves_no_temporary_file(self):
        store = self.refreshed_store(files=())
        upload = self.write_upload(build_fit())

        self.successResultOf(store.import_image(upload, "fresh", "v1"))

        self.assertEqual(os.listdir(os.path.join(self.folder, ".tmp")), [])


def make_tar(members) -> bytes:
    """
    Build a tar archive from (name, data) pairs, where data None is a
    folder, and a (type, target) tuple is a link.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif isinstance(data, tuple):
                info.type, info.linkname = data
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class LoadTarTests(StoreTestMixin, SynchronousTestCase):
    def load(self, data: bytes):
        store = self.refreshed_store(files=())
        return store, store.load_tar(self.write_upload(data))

    def assert_rejected(self, data: bytes, reason: str):
        _, result = self.load(data)

        failure = self.failureResultOf(result)

        failure.trap(InvalidParameter)
        self.assertIn(reason, failure.getErrorMessage())
        self.assertEqual(self.folder_files(), set())

    def test_load_good_tar(self):
        with open(REFSO3, "rb") as stream:
            refso3 = stream.read()
        data = make_tar([
            ("images", None),
            ("images/refso3-sim.itb", refso3),
            ("blinky:v3.itb", build_fit()),
            ("README.txt", b"ignored\n"),
        ])

        store, result = self.load(data)

        loaded = self.successResultOf(result)
        self.assertEqual(
            [reference for reference, _ in loaded],
            ["refso3-sim:latest", "blinky:v3"],
        )
        self.assertEqual(
            [image.repo_tags for _, image in loaded],
            [("refso3-sim:latest",), ("blinky:v3",)],
        )
        self.assertEqual(store.get("refso3-sim").id, digest_of(REFSO3))
        self.assertIn("blinky:v3", self.tags.tags)

    def test_load_gzip_tar(self):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            archive.add(REFSO3, arcname="refso3-sim.itb")

        _, result = self.load(buffer.getvalue())

        self.assertEqual(len(self.successResultOf(result)), 1)

    def test_load_truncated_tar(self):
        data = make_tar([("a.itb", build_fit()), ("b.itb", build_fit(description="b"))])

        self.assert_rejected(data[:1000], "truncated")

    def test_load_cut_at_member_boundary(self):
        first = build_fit()
        boundary = tarfile.BLOCKSIZE + -(-len(first) // tarfile.BLOCKSIZE) * 512
        data = make_tar([("a.itb", first), ("b.itb", build_fit(description="b"))])

        self.assert_rejected(data[:boundary], "no end-of-archive block")

    def test_load_truncated_header(self):
        data = make_tar([("a.itb", build_fit())])

        self.assert_rejected(data[:300], "tar archive")

    def test_load_garbage(self):
        self.assert_rejected(os.urandom(4096), "tar archive")

    def test_load_empty_file(self):
        self.assert_rejected(b"", "tar archive")

    def test_load_symbolic_link(self):
        link = (tarfile.SYMTYPE, "/etc/passwd")
        data = make_tar([("a.itb", build_fit()), ("b.itb", link)])

        self.assert_rejected(data, "'b.itb' is a link or special file")

    def test_load_hard_link(self):
        data = make_tar([("a.itb", build_fit()), ("b.itb", (tarfile.LNKTYPE, "a.itb"))])

        self.assert_rejected(data, "'b.itb' is a link or special file")

    def test_load_absolute_path(self):
        data = make_tar([("/tmp/a.itb", build_fit())])

        self.assert_rejected(data, "unsafe member name")

    def test_load_parent_path(self):
        data = make_tar([("x/../../a.itb", build_fit())])

        self.assert_rejected(data, "unsafe member name")

    def test_load_control_character(self):
        data = make_tar([("a\nb.itb", build_fit())])

        self.assert_rejected(data, "unsafe member name")

    def test_load_no_image(self):
        self.assert_rejected(make_tar([("notes.txt", b"text\n")]), "no .itb file")

    def test_load_invalid_member_stores_nothing(self):
        data = make_tar([("good.itb", build_fit()), ("bad.itb", b"not a FIT\n" * 10)])

        self.assert_rejected(data, "bad.itb: invalid FIT image")

    def test_load_invalid_member_name(self):
        self.assert_rejected(make_tar([("Bad Name.itb", build_fit())]), "Bad Name.itb")

    def test_load_duplicate_reference(self):
        data = make_tar([("a.itb", build_fit()), ("x/a:latest.itb", build_fit())])

        self.assert_rejected(data, "two members are named a:latest")


class TagTests(StoreTestMixin, SynchronousTestCase):
    def test_tag_latest_writes_file(self):
        store = self.refreshed_store()

        image = self.successResultOf(store.tag("refso3-sim", "copy", None))

        self.assertEqual(image.repo_tags, ("copy:latest", "refso3-sim:latest"))
        self.assertEqual(digest_of(os.path.join(self.folder, "copy.itb")), image.id)

    def test_tag_other_stores_reference(self):
        store = self.refreshed_store()

        image = self.successResultOf(store.tag(digest_of(BLINKY), "blinky", "stable"))

        self.assertEqual(image.repo_tags, ("blinky-sim:latest", "blinky:stable"))
        self.assertEqual(self.tags.tags, {"blinky:stable": digest_of(BLINKY)})

    def test_tag_moves_reference(self):
        store = self.refreshed_store()
        self.successResultOf(store.tag("refso3-sim", "app", "stable"))

        self.successResultOf(store.tag("blinky-sim", "app", "stable"))

        self.assertEqual(store.get("app:stable").id, digest_of(BLINKY))

    def test_tag_unknown_image(self):
        store = self.refreshed_store()

        failure = self.failureResultOf(store.tag("missing", "x", None))

        failure.trap(NoSuchImage)

    def test_tag_invalid_names(self):
        store = self.refreshed_store()
        before = self.folder_files()

        for repo, tag in [("../evil", None), ("x/y", None), ("ok", "../x"), ("", None)]:
            failure = self.failureResultOf(store.tag("refso3-sim", repo, tag))

            failure.trap(InvalidParameter)
        self.assertEqual(self.folder_files(), before)
        self.assertFalse(os.path.exists(os.path.join(self.folder, "..", "evil.itb")))


class RemoveTests(StoreTestMixin, SynchronousTestCase):
    def not_used(self, image_id):
        return False

    def used(self, image_id):
        return CONTAINER_ID

    def test_remove_only_reference(self):
        store = self.refreshed_store()

        records = self.successResultOf(store.remove("refso3-sim", False, self.not_used))

        self.assertEqual(
            records,
            [{"Untagged": "refso3-sim:latest"}, {"Deleted": digest_of(REFSO3)}],
        )
        self.assertEqual(self.folder_files(), {"blinky-sim.itb"})
        self.assertEqual(len(store.list()), 1)

    def test_remove_used_image_conflict(self):
        store = self.refreshed_store()

        failure = self.failureResultOf(store.remove("refso3-sim", False, self.used))

        failure.trap(Conflict)
        self.assertEqual(
            failure.getErrorMessage(),
            'conflict: unable to remove repository reference "refso3-sim" (must '
            f"force) - container {CONTAINER_ID[:12]} is using its referenced image "
            f"{digest_of(REFSO3)[7:19]}",
        )
        self.assertIn("refso3-sim.itb", self.folder_files())

    def test_remove_used_image_forced(self):
        store = self.refreshed_store()

        records = self.successResultOf(store.remove("refso3-sim", True, self.used))

        self.assertEqual(records, [{"Untagged": "refso3-sim:latest"}])
        self.assertEqual(store.get(digest_of(REFSO3)).repo_tags, ())
        self.assertTrue(os.path.exists(self.blob_path(digest_of(REFSO3))))

    def test_remove_latest_keeps_tagged(self):
        store = self.refreshed_store()
        self.successResultOf(store.tag("refso3-sim", "refso3-sim", "v1"))

        records = self.successResultOf(store.remove("refso3-sim", False, self.not_used))

        self.assertEqual(records, [{"Untagged": "refso3-sim:latest"}])
        blob = self.blob_path(digest_of(REFSO3))
        self.assertEqual(store.get("refso3-sim:v1").path, blob)
        self.assertNotIn("refso3-sim.itb", self.folder_files())

    def test_remove_database_tag(self):
        store = self.refreshed_store()
        self.successResultOf(store.tag("refso3-sim", "refso3-sim", "v1"))

        records = self.successResultOf(store.remove("refso3-sim:v1", False, self.used))

        self.assertEqual(records, [{"Untagged": "refso3-sim:v1"}])
        self.assertEqual(self.tags.tags, {})
        self.assertEqual(store.get("refso3-sim").repo_tags, ("refso3-sim:latest",))

    def test_remove_last_database_tag(self):
        store = self.refreshed_store(files=())
        upload = self.write_upload(build_fit())
        image = self.successResultOf(store.import_image(upload, "only", "v1"))

        records = self.successResultOf(store.remove("only:v1", False, self.not_used))

        self.assertEqual(records, [{"Untagged": "only:v1"}, {"Deleted": image.id}])
        self.assertEqual(self.folder_files(), set())

    def test_remove_id_several_references(self):
        store = self.refreshed_store()
        self.successResultOf(store.tag("refso3-sim", "other", "v1"))

        failure = self.failureResultOf(
            store.remove(digest_of(REFSO3), False, self.not_used)
        )

        failure.trap(Conflict)
        self.assertEqual(
            failure.getErrorMessage(),
            f"conflict: unable to delete {digest_of(REFSO3)[7:19]} (must be forced) "
            "- image is referenced in multiple repositories",
        )

    def test_remove_id_forced(self):
        store = self.refreshed_store()
        self.successResultOf(store.tag("refso3-sim", "other", "v1"))
        self.successResultOf(store.tag("refso3-sim", "copy", None))

        records = self.successResultOf(
            store.remove(digest_of(REFSO3)[7:19], True, self.not_used)
        )

        self.assertEqual(
            records,
            [
                {"Untagged": "copy:latest"},
                {"Untagged": "other:v1"},
                {"Untagged": "refso3-sim:latest"},
                {"Deleted": digest_of(REFSO3)},
            ],
        )
        self.assertEqual(self.folder_files(), {"blinky-sim.itb"})
        self.assertEqual(self.tags.tags, {})

    def test_remove_id_used_forced_keeps_content(self):
        store = self.refreshed_store(files=[REFSO3])
        shutil.copy(REFSO3, os.path.join(self.folder, "twin.itb"))
        self.successResultOf(store.refresh())

        records = self.successResultOf(store.remove(digest_of(REFSO3), True, self.used))

        self.assertEqual(
            records,
            [{"Untagged": "refso3-sim:latest"}, {"Untagged": "twin:latest"}],
        )
        self.assertEqual(store.get(digest_of(REFSO3)).repo_tags, ())
        blob = os.path.relpath(self.blob_path(digest_of(REFSO3)), self.folder)
        self.assertEqual(self.folder_files(), {blob})

    def test_remove_id_used_conflict(self):
        store = self.refreshed_store()

        result = store.remove(digest_of(REFSO3), False, self.used)
        failure = self.failureResultOf(result)

        failure.trap(Conflict)
        self.assertIn("image is being used by container", failure.getErrorMessage())

    def test_remove_untagged_blob(self):
        store = self.refreshed_store(files=())
        upload = self.write_upload(build_fit())
        image = self.successResultOf(store.import_image(upload, None, None))

        records = self.successResultOf(store.remove(image.id, False, self.not_used))

        self.assertEqual(records, [{"Deleted": image.id}])
        self.assertEqual(self.folder_files(), set())

    def test_remove_unknown(self):
        store = self.refreshed_store()

        for name in ["missing", "../refso3-sim", "/etc/passwd"]:
            failure = self.failureResultOf(store.remove(name, True, self.not_used))

            failure.trap(NoSuchImage)
        self.assertEqual(len(store.list()), 2)


class InstallSamplesTests(StoreTestMixin, SynchronousTestCase):
    def test_samples_copied_into_empty_folder(self):
        store = self.make_store()

        copied = self.successResultOf(store.install_samples())

        self.assertEqual(copied, ["blinky-sim.itb", "refso3-sim.itb"])
        self.assertEqual(digest_of(os.path.join(self.folder, "refso3-sim.itb")),
                         digest_of(REFSO3))

    def test_samples_listed_after_refresh(self):
        store = self.make_store()
        self.successResultOf(store.install_samples())

        self.successResultOf(store.refresh())

        self.assertEqual(len(store.list()), 2)

    def test_samples_not_copied_into_used_folder(self):
        store = self.make_store([os.path.join(TEST_IMAGES, "crasher.itb")])

        copied = self.successResultOf(store.install_samples())

        self.assertEqual(copied, [])
        self.assertEqual(self.folder_files(), {"crasher.itb"})

    def test_default_samples_folder(self):
        folder = os.path.abspath(self.mktemp())
        fake_reactor, pool = SynchronousReactor(), SynchronousThreadPool()
        store = ImageStore(folder, MemoryTags(), fake_reactor, pool)

        copied = self.successResultOf(store.install_samples())

        self.assertEqual(copied, ["blinky-sim.itb", "refso3-sim.itb"])


class ThreadPoolTests(TestCase):
    """The store with a real thread pool and the reactor."""

    def setUp(self):
        self.pool = ThreadPool(minthreads=1, maxthreads=2, name="test-images")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        shutil.copy(REFSO3, self.folder)
        self.store = ImageStore(self.folder, MemoryTags(), reactor, self.pool)

    @inlineCallbacks
    def test_refresh_import_remove(self):
        upload = os.path.abspath(self.mktemp())
        shutil.copy(BLINKY, upload)

        yield self.store.refresh()
        imported = yield self.store.import_image(upload, "blinky", "v1")
        records = yield self.store.remove("refso3-sim", False, lambda _: False)

        self.assertEqual(imported.repo_tags, ("blinky:v1",))
        self.assertEqual(records[-1], {"Deleted": digest_of(REFSO3)})
        self.assertEqual([image.id for image in self.store.list()], [imported.id])

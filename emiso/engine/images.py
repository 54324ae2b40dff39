"""Image store: the FIT images (.itb) of the image folder, their tags and blobs.

A file C{NAME.itb} in the image folder is the image C{NAME:latest}, the form
the SOO agency reads from C{/mnt/ME}. Other tags live in the engine's
database (reference to digest). Content that no C{NAME.itb} file contains is
kept in the hidden folder C{.blobs/<hex>.itb}, so a board's agency never
injects it.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
import stat
import tarfile
import tempfile
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from emiso.engine.fit import MAX_FIT_SIZE, FitImage, parse_fit
from emiso.errors import Conflict, InvalidImage, InvalidParameter, NoSuchImage

__all__ = [
    "Image",
    "ImageStore",
    "parse_reference",
    "validate_repository",
    "validate_tag",
]

log = Logger()

# Docker's reference grammar for one path component, without "/": lower-case
# alphanumerics separated by ".", "_", "__" or runs of "-".
REPOSITORY_PATTERN = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
MAX_REPOSITORY_LENGTH = 128
TAG_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
HEX_PATTERN = re.compile(r"[0-9a-f]+")
DIGEST_PREFIX = "sha256:"

BLOB_FOLDER = ".blobs"
TEMP_FOLDER = ".tmp"
# Prefix of the store's own temporary files in .tmp/, removed at the first
# refresh. Other files in .tmp/ (the API's upload spools) are left alone.
TEMP_PREFIX = "store-"
FIT_SUFFIX = ".itb"

MAX_TAR_MEMBERS = 1000
# Sum of the member sizes a tar header may declare. Skipping a member of a
# compressed archive decompresses it, so this bounds the work on a bomb.
MAX_TAR_TOTAL_SIZE = 16 * MAX_FIT_SIZE


@attrs.frozen
class Image:
    """
    An image: one FIT content, identified by its SHA-256 digest.

    @ivar path: absolute path of a file with this content. It can change
        when the store changes, so resolve the image by id before use.
    @ivar created: the FIT root timestamp, or else the file's modification
        time, in seconds since the epoch.
    @ivar labels: the ME and FIT facts as Docker labels (string values).
    """

    id: str
    path: str
    repo_tags: tuple[str, ...]
    size: int
    created: int
    fit: FitImage
    labels: dict


def validate_repository(repo: str) -> str:
    """
    Check a repository name against Docker's rules for one name component.

    @raise InvalidParameter: the name is not valid. The message names it.
    """
    if (
        not isinstance(repo, str)
        or len(repo) > MAX_REPOSITORY_LENGTH
        or not REPOSITORY_PATTERN.fullmatch(repo)
    ):
        raise InvalidParameter(
            f"invalid repository name {repo!r}: use lower-case letters and digits "
            "separated by '.', '_' or '-', at most "
            f"{MAX_REPOSITORY_LENGTH} characters, without '/' or ':'"
        )
    return repo


def validate_tag(tag: str) -> str:
    """
    Check a tag against Docker's rules.

    @raise InvalidParameter: the tag is not valid. The message names it.
    """
    if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag):
        raise InvalidParameter(
            f"invalid tag {tag!r}: use letters, digits, '_', '.' and '-', "
            "not starting with '.' or '-', at most 128 characters"
        )
    return tag


def parse_reference(reference: str) -> tuple[str, str]:
    """
    Split C{name} or C{name:tag} into a validated (repository, tag) pair,
    with C{latest} as the default tag.

    @raise InvalidParameter: the repository or tag is not valid.
    """
    repo, separator, tag = reference.partition(":")
    if not separator:
        tag = "latest"
    return validate_repository(repo), validate_tag(tag)


@attrs.frozen
class _ScannedFile:
    """The result of examining one file, kept until its size or mtime changes."""

    size: int
    mtime_ns: int
    digest: str | None
    fit: FitImage | None
    error: str | None


@attrs.frozen
class _Content:
    """A validated FIT content in a temporary file of the store."""

    temp_path: str
    digest: str
    fit: FitImage


class ImageStore:
    """
    The images of one image folder, with their tags.

    All hashing, parsing and file writes run on C{threadpool}. Changes are
    serialised with a lock, and L{list} and L{get} read the cache built by
    the last scan without touching the disk.
    """

    def __init__(
        self,
        image_dir: str,
        tags: Any,
        reactor: Any,
        threadpool: Any,
        samples_dir: str | None = None,
    ) -> None:
        """
        @param tags: the tag database, with C{load_tags()}, C{set_tag(ref,
            digest)} and C{delete_tag(ref)} returning Deferreds.
        @param threadpool: a started L{twisted.python.threadpool.ThreadPool}.
        @param samples_dir: folder of the sample images; default
            C{emiso/samples}.
        """
        self._image_dir = os.path.abspath(image_dir)
        self._blob_dir = os.path.join(self._image_dir, BLOB_FOLDER)
        self._temp_dir = os.path.join(self._image_dir, TEMP_FOLDER)
        self._tags_db = tags
        self._reactor = reactor
        self._threadpool = threadpool
        if samples_dir is None:
            samples_dir = str(importlib.resources.files("emiso") / "samples")
        self._samples_dir = samples_dir
        self._lock = DeferredLock()
        self._loaded = False
        self._tags: dict[str, str] = {}
        self._scanned: dict[str, _ScannedFile] = {}
        self._images: dict[str, Image] = {}
        self._references: dict[str, str] = {}

    # Reading

    def list(self) -> list[Image]:
        """Return the images of the last scan."""
        return list(self._images.values())

    def get(self, name: str) -> Image:
        """
        Find an image by C{sha256:<hex>}, hex id or unique id prefix,
        C{name} (meaning C{name:latest}) or C{name:tag}.

        @raise NoSuchImage: nothing matches.
        @raise InvalidParameter: an id prefix matches several images.
        """
        image = self._images.get(name)
        if image is not None:
            return image
        digest = self._reference_digest(name)
        if digest is not None:
            return self._images[digest]
        return self._get_by_prefix(name)

    def _reference_digest(self, name: str) -> str | None:
        try:
            repo, tag = parse_reference(name)
        except InvalidParameter:
            return None
        return self._references.get(f"{repo}:{tag}")

    def _get_by_prefix(self, name: str) -> Image:
        prefix = name[len(DIGEST_PREFIX) :] if name.startswith(DIGEST_PREFIX) else name
        if not prefix or not HEX_PATTERN.fullmatch(prefix):
            raise NoSuchImage(name)
        matches = [
            image
            for digest, image in self._images.items()
            if digest[len(DIGEST_PREFIX) :].startswith(prefix)
        ]
        if not matches:
            raise NoSuchImage(name)
        if len(matches) > 1:
            raise InvalidParameter(
                f"image id prefix {name!r} is ambiguous: it matches "
                f"{len(matches)} images, give more characters"
            )
        return matches[0]

    # Scanning

    def refresh(self) -> Deferred[None]:
        """
        Scan the image folder. Only files whose size or modification time
        changed since the last scan are hashed and parsed again. Files with
        an invalid name or content are logged and left out.
        """
        return self._lock.run(self._refresh)

    @inlineCallbacks
    def _refresh(self):
        if not self._loaded:
            yield self._in_thread(self._prepare_folders)
            tags = yield self._tags_db.load_tags()
            self._tags = dict(tags)
            self._loaded = True
        yield self._rescan()

    def _prepare_folders(self) -> None:
        os.makedirs(self._image_dir, exist_ok=True)
        for folder in (self._blob_dir, self._temp_dir):
            # A link could point the store's writes outside the image folder.
            if os.path.islink(folder):
                raise OSError(f"{folder} is a symbolic link, expected a folder")
            os.makedirs(folder, exist_ok=True)
        with os.scandir(self._temp_dir) as entries:
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX) and entry.is_file(
                    follow_symlinks=False
                ):
                    os.unlink(entry.path)

    def _scan(self, previous: dict) -> tuple[dict, list[str]]:
        """
        Examine the image files in a thread. Return the new cache and the
        paths examined anew.
        """
        scanned = {}
        examined = []
        for folder in (self._image_dir, self._blob_dir):
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.endswith(FIT_SUFFIX):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                cached = previous.get(entry.path)
                if cached is not None and (cached.size, cached.mtime_ns) == (
                    info.st_size,
                    info.st_mtime_ns,
                ):
                    scanned[entry.path] = cached
                    continue
                scanned[entry.path] = self._examine(folder, entry.name, info)
                examined.append(entry.path)
        return scanned, examined

    def _examine(self, folder: str, file_name: str, info: os.stat_result):
        def rejected(error: str) -> _ScannedFile:
            return _ScannedFile(info.st_size, info.st_mtime_ns, None, None, error)

        stem = file_name[: -len(FIT_SUFFIX)]
        if not stat.S_ISREG(info.st_mode):
            return rejected("not a regular file (symbolic links are not followed)")
        if folder == self._image_dir and not _is_repository(stem):
            return rejected(
                f"file name {file_name!r} is not a valid image name (lower-case "
                "letters and digits separated by '.', '_' or '-')"
            )
        try:
            data = _read_limited(os.path.join(folder, file_name))
            fit = parse_fit(data)
        except (OSError, InvalidImage) as error:
            return rejected(str(error))
        digest = DIGEST_PREFIX + hashlib.sha256(data).hexdigest()
        if folder == self._blob_dir and digest != DIGEST_PREFIX + stem:
            return rejected(f"blob content does not match its name (it is {digest})")
        return _ScannedFile(info.st_size, info.st_mtime_ns, digest, fit, None)

    def _build_index(self) -> None:
        files: dict[str, list[str]] = {}
        blobs: dict[str, str] = {}
        references: dict[str, str] = {}
        for path, scanned in sorted(self._scanned.items()):
            if scanned.digest is None:
                continue
            folder, file_name = os.path.split(path)
            if folder == self._blob_dir:
                blobs[scanned.digest] = path
            else:
                files.setdefault(scanned.digest, []).append(path)
                references[f"{file_name[: -len(FIT_SUFFIX)]}:latest"] = scanned.digest
        for reference, digest in self._tags.items():
            if reference in references:
                continue
            if digest in files or digest in blobs:
                references[reference] = digest
        tags_by_digest: dict[str, list[str]] = {}
        for reference, digest in references.items():
            tags_by_digest.setdefault(digest, []).append(reference)
        images = {}
        for digest in set(files) | set(blobs):
            path = files[digest][0] if digest in files else blobs[digest]
            images[digest] = self._make_image(
                digest, path, tuple(sorted(tags_by_digest.get(digest, ())))
            )
        self._images = images
        self._references = references

    def _make_image(self, digest: str, path: str, repo_tags: tuple) -> Image:
        scanned = self._scanned[path]
        created = scanned.fit.timestamp
        if created is None:
            created = scanned.mtime_ns // 1_000_000_000
        return Image(
            id=digest,
            path=path,
            repo_tags=repo_tags,
            size=scanned.size,
            created=created,
            fit=scanned.fit,
            labels=_labels(scanned.fit),
        )

    # Changing

    def import_image(
        self,
        source_path: str,
        repo: str | None,
        tag: str | None,
        in_use: Callable[[str], Any] | None = None,
    ) -> Deferred[Image]:
        """
        Store the FIT image in C{source_path} as C{repo:tag} (C{latest} when
        C{tag} is None), or untagged when C{repo} is empty.

        @param in_use: returns whether a container uses an image id. When a
            new C{NAME.itb} replaces content that no tag or container
            references, that content is deleted. Without C{in_use} it is
            kept as an untagged image, as Docker keeps a dangling image.
        @raise InvalidImage: the file is not a valid FIT image; nothing is
            stored.
        @raise InvalidParameter: the repository or tag is invalid.
        """
        return self._lock.run(self._import_image, source_path, repo, tag, in_use)

    @inlineCallbacks
    def _import_image(self, source_path, repo, tag, in_use):
        if repo:
            validate_repository(repo)
            validate_tag(tag or "latest")
        yield self._ensure_loaded()
        content = yield self._in_thread(self._copy_to_temp, source_path)
        image = yield self._store(content, repo or None, tag or "latest", in_use)
        log.info(
            "Imported image {id} as {reference}",
            id=image.id,
            reference=f"{repo}:{tag or 'latest'}" if repo else "<none>",
        )
        return image

    def load_tar(
        self, tar_path: str, in_use: Callable[[str], Any] | None = None
    ) -> Deferred[list[tuple[str | None, Image]]]:
        """
        Store the FIT images of a tar archive, as C{docker load} sends it, and
        fire with C{(reference, image)} for each, in archive order.

        Each member C{.../NAME.itb} becomes C{NAME:latest} and
        C{.../NAME:TAG.itb} becomes C{NAME:TAG}. Other regular files are
        ignored.

        @raise InvalidParameter: the archive is corrupt or truncated, has a
            link, device, absolute path or C{..}, has no C{.itb} member,
            or a member is not a valid FIT image. Nothing is stored then.
        """
        return self._lock.run(self._load_tar, tar_path, in_use)

    @inlineCallbacks
    def _load_tar(self, tar_path, in_use):
        yield self._ensure_loaded()
        members = yield self._in_thread(self._unpack_tar, tar_path)
        images = []
        try:
            while members:
                repo, tag, content = members.pop(0)
                image = yield self._store(content, repo, tag, in_use)
                images.append((f"{repo}:{tag}" if repo else None, image))
        finally:
            for _, _, content in members:
                _unlink_quietly(content.temp_path)
        log.info(
            "Loaded {count} images from {path}", count=len(images), path=tar_path
        )
        return images

    def tag(
        self,
        name: str,
        repo: str,
        tag: str | None,
        in_use: Callable[[str], Any] | None = None,
    ) -> Deferred[Image]:
        """
        Add the reference C{repo:tag} (C{latest} when C{tag} is None) to the
        image C{name}.

        @raise NoSuchImage: no image matches C{name}.
        @raise InvalidParameter: the repository or tag is invalid.
        """
        return self._lock.run(self._tag, name, repo, tag, in_use)

    @inlineCallbacks
    def _tag(self, name, repo, tag, in_use):
        tag = tag or "latest"
        validate_repository(repo)
        validate_tag(tag)
        yield self._ensure_loaded()
        source = self.get(name)
        reference = f"{repo}:{tag}"
        if self._references.get(reference) == source.id:
            return source
        if tag == "latest":
            content = yield self._in_thread(self._copy_to_temp, source.path)
            image = yield self._store(content, repo, tag, in_use)
        else:
            yield self._set_tag(reference, source.id)
            yield self._rescan()
            image = self._images[source.id]
        log.info("Tagged image {id} as {reference}", id=image.id, reference=reference)
        return image

    def remove(
        self, name: str, force: bool, in_use: Callable[[str], Any]
    ) -> Deferred[list[dict]]:
        """
        Remove a reference or an image, with Docker's rules.

        By reference, the reference is removed, and the content too when no
        other reference and no container uses it. By id, the image and all
        its references are removed, which needs C{force} when it has several
        references.

        @param in_use: returns a container id (or True) when a container
            uses the image id, else a false value.
        @return: Docker's delete response items, C{{"Untagged": ref}} and
            C{{"Deleted": id}}.
        @raise Conflict: a container uses the image, or the id has several
            references, and C{force} is false.
        """
        return self._lock.run(self._remove, name, force, in_use)

    @inlineCallbacks
    def _remove(self, name, force, in_use):
        yield self._ensure_loaded()
        image = self.get(name)
        user = in_use(image.id)
        if self._reference_digest(name) == image.id and image.id != name:
            records = yield self._remove_reference(image, name, force, user)
        else:
            records = yield self._remove_by_id(image, force, user)
        yield self._rescan()
        log.info("Removed {name}: {records}", name=name, records=records)
        return records

    @inlineCallbacks
    def _remove_reference(self, image, name, force, user):
        repo, tag = parse_reference(name)
        reference = f"{repo}:{tag}"
        if user and not force and len(image.repo_tags) == 1:
            raise Conflict(
                f'conflict: unable to remove repository reference "{name}" '
                f"(must force) - container {_short_id(user)} is using its "
                f"referenced image {_short_id(image.id)}"
            )
        keep = bool(user) or len(image.repo_tags) > 1
        yield self._drop_reference(image, reference, keep)
        records = [{"Untagged": reference}]
        if not keep:
            yield self._in_thread(self._delete_content, image.id)
            records.append({"Deleted": image.id})
        return records

    @inlineCallbacks
    def _remove_by_id(self, image, force, user):
        if not force and len(image.repo_tags) > 1:
            raise Conflict(
                f"conflict: unable to delete {_short_id(image.id)} (must be forced) "
                "- image is referenced in multiple repositories"
            )
        if user and not force:
            raise Conflict(
                f"conflict: unable to delete {_short_id(image.id)} (must be forced) "
                f"- image is being used by container {_short_id(user)}"
            )
        if user:
            # NOTE: Docker deletes the image of a stopped container with
            # force. The store keeps the content as an untagged image, so
            # the container can still start.
            yield self._in_thread(self._save_blob, image.path, image.id)
        records = []
        for reference in image.repo_tags:
            yield self._drop_reference(image, reference, keep=False)
            records.append({"Untagged": reference})
        if user:
            return records
        yield self._in_thread(self._delete_content, image.id)
        records.append({"Deleted": image.id})
        return records

    @inlineCallbacks
    def _drop_reference(self, image: Image, reference: str, keep: bool):
        """
        Remove one reference. C{keep} saves the content of a removed
        C{NAME.itb} as a blob when no other file contains it.
        """
        repo, tag = reference.split(":", 1)
        if tag == "latest":
            path = os.path.join(self._image_dir, repo + FIT_SUFFIX)
            save = keep and self._only_file(image.id, path)
            yield self._in_thread(self._remove_file, path, image.id if save else None)
        if reference in self._tags:
            yield self._delete_tag(reference)

    def install_samples(self) -> Deferred[list[str]]:
        """
        Copy the sample images into the image folder when it contains no
        C{.itb} file yet.

        @return: the file names copied (empty when the folder had images).
        """
        return self._lock.run(self._install_samples)

    @inlineCallbacks
    def _install_samples(self):
        yield self._in_thread(self._prepare_folders)
        copied = yield self._in_thread(self._copy_samples)
        if copied:
            yield self._rescan()
        return copied

    def _copy_samples(self) -> list[str]:
        with os.scandir(self._image_dir) as entries:
            if any(entry.name.endswith(FIT_SUFFIX) for entry in entries):
                return []
        copied = []
        for sample in sorted(os.listdir(self._samples_dir)):
            stem = sample[: -len(FIT_SUFFIX)]
            if not sample.endswith(FIT_SUFFIX) or not _is_repository(stem):
                continue
            data = _read_limited(os.path.join(self._samples_dir, sample))
            temp_path = self._write_temp(data)
            self._install(temp_path, os.path.join(self._image_dir, sample))
            copied.append(sample)
        return copied

    # Storing content (reactor thread)

    @inlineCallbacks
    def _store(self, content: _Content, repo: str | None, tag: str, in_use):
        """Put validated content under C{repo:tag}, or untagged without repo."""
        try:
            yield self._rescan()
            if repo is None:
                yield self._in_thread(self._keep_content, content)
            elif tag == "latest":
                yield self._replace_latest(content, repo, in_use)
            else:
                yield self._in_thread(self._keep_content, content)
                yield self._set_tag(f"{repo}:{tag}", content.digest)
        finally:
            _unlink_quietly(content.temp_path)
        yield self._rescan()
        return self._images[content.digest]

    @inlineCallbacks
    def _replace_latest(self, content: _Content, repo: str, in_use):
        path = os.path.join(self._image_dir, repo + FIT_SUFFIX)
        old = self._scanned.get(path)
        old_digest = old.digest if old is not None else None
        if old_digest == content.digest:
            return
        save_old = None
        if old_digest is not None and self._only_file(old_digest, path):
            referenced = old_digest in self._tags.values()
            if in_use is None or referenced or in_use(old_digest):
                save_old = old_digest
        yield self._in_thread(self._install_latest, content, path, save_old)

    def _only_file(self, digest: str, path: str) -> bool:
        """Tell whether no top-level file other than C{path} contains C{digest}."""
        for other, scanned in self._scanned.items():
            if other == path or scanned.digest != digest:
                continue
            if os.path.dirname(other) == self._image_dir:
                return False
        return True

    @inlineCallbacks
    def _set_tag(self, reference: str, digest: str):
        yield self._tags_db.set_tag(reference, digest)
        self._tags[reference] = digest

    @inlineCallbacks
    def _delete_tag(self, reference: str):
        yield self._tags_db.delete_tag(reference)
        self._tags.pop(reference, None)

    @inlineCallbacks
    def _rescan(self):
        scanned, examined = yield self._in_thread(self._scan, self._scanned)
        for path in examined:
            if scanned[path].error is not None:
                log.warn(
                    "Skipped {path}: {error}", path=path, error=scanned[path].error
                )
        self._scanned = scanned
        self._build_index()

    @inlineCallbacks
    def _ensure_loaded(self):
        if not self._loaded:
            yield self._refresh()

    def _in_thread(self, function: Callable, *args) -> Deferred:
        return deferToThreadPool(self._reactor, self._threadpool, function, *args)

    # File operations (thread pool). Every path is built from a validated
    # repository name or a hex digest, inside the image folder.

    def _copy_to_temp(self, source_path: str) -> _Content:
        data = _read_limited(source_path)
        fit = parse_fit(data)
        digest = DIGEST_PREFIX + hashlib.sha256(data).hexdigest()
        return _Content(self._write_temp(data), digest, fit)

    def _write_temp(self, data: bytes) -> str:
        descriptor, temp_path = tempfile.mkstemp(
            prefix=TEMP_PREFIX, suffix=FIT_SUFFIX, dir=self._temp_dir
        )
        try:
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        except BaseException:
            _unlink_quietly(temp_path)
            raise
        return temp_path

    def _install(self, temp_path: str, path: str) -> None:
        """Move a temporary file to its final name atomically."""
        os.replace(temp_path, path)
        _fsync_folder(os.path.dirname(path))

    def _blob_path(self, digest: str) -> str:
        hex_digest = digest[len(DIGEST_PREFIX) :]
        if len(hex_digest) != 64 or not HEX_PATTERN.fullmatch(hex_digest):
            raise ValueError(f"invalid image digest {digest!r}")
        return os.path.join(self._blob_dir, hex_digest + FIT_SUFFIX)

    def _keep_content(self, content: _Content) -> None:
        """Store content as a blob unless a file already contains it."""
        for path, scanned in self._scanned.items():
            if scanned.digest == content.digest and os.path.exists(path):
                return
        self._install(content.temp_path, self._blob_path(content.digest))

    def _install_latest(self, content: _Content, path: str, save_old: str | None):
        if save_old is not None:
            self._save_blob(path, save_old)
        self._install(content.temp_path, path)

    def _save_blob(self, path: str, digest: str) -> None:
        """Keep the content of C{path} as the blob of C{digest}."""
        blob_path = self._blob_path(digest)
        if os.path.exists(blob_path):
            return
        try:
            # A hard link keeps the content under both names with no copy.
            os.link(path, blob_path)
        except OSError:
            temp_path = self._write_temp(_read_limited(path))
            self._install(temp_path, blob_path)
            return
        _fsync_folder(self._blob_dir)

    def _remove_file(self, path: str, save_as: str | None) -> None:
        if save_as is not None:
            self._save_blob(path, save_as)
        _unlink_quietly(path)
        _fsync_folder(self._image_dir)

    def _delete_content(self, digest: str) -> None:
        for path, scanned in self._scanned.items():
            if scanned.digest == digest:
                _unlink_quietly(path)
        _unlink_quietly(self._blob_path(digest))
        _fsync_folder(self._image_dir)
        _fsync_folder(self._blob_dir)

    def _unpack_tar(self, tar_path: str) -> list[tuple[str, str, _Content]]:
        """Validate every member and copy each FIT to a temporary file."""
        members = []
        try:
            for repo, tag, data, member_name in _read_tar_members(tar_path):
                try:
                    fit = parse_fit(data)
                except InvalidImage as error:
                    raise InvalidImage(f"{member_name}: {error}")
                digest = DIGEST_PREFIX + hashlib.sha256(data).hexdigest()
                temp_path = self._write_temp(data)
                members.append((repo, tag, _Content(temp_path, digest, fit)))
        except BaseException:
            for _, _, content in members:
                _unlink_quietly(content.temp_path)
            raise
        return members


def _read_tar_members(tar_path: str):
    """
    Return (repository, tag, data, member name) for each C{.itb} member,
    after checking every member of the archive.

    @raise InvalidParameter: the archive is corrupt or has an unsafe or
        invalid member.
    """
    found = []
    references = set()
    try:
        with tarfile.open(tar_path, mode="r:*") as archive:
            members = _checked_members(archive)
            _check_end_of_archive(archive)
            for member in members:
                base_name = member.name.rstrip("/").rsplit("/", 1)[-1]
                if not member.isfile() or not base_name.endswith(FIT_SUFFIX):
                    continue
                repo, tag = _member_reference(member.name, base_name)
                if (repo, tag) in references:
                    raise InvalidParameter(
                        f"invalid archive: two members are named {repo}:{tag}"
                    )
                references.add((repo, tag))
                if member.size > MAX_FIT_SIZE:
                    raise InvalidImage(
                        f"{member.name}: {member.size} bytes is larger than the "
                        f"maximum FIT size of {MAX_FIT_SIZE} bytes"
                    )
                stream = archive.extractfile(member)
                data = stream.read(member.size)
                if len(data) != member.size:
                    raise InvalidParameter(
                        f"invalid archive: member {member.name} is truncated"
                    )
                found.append((repo, tag, data, member.name))
    except (tarfile.TarError, EOFError, OSError) as error:
        # tarfile lists one line per compression it tried; keep one line.
        reason = "; ".join(line.strip("- ") for line in str(error).splitlines())
        raise InvalidParameter(f"invalid or truncated tar archive: {reason}")
    if not found:
        raise InvalidParameter("invalid archive: it contains no .itb file")
    return found


def _checked_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = []
    total_size = 0
    for member in archive:
        if len(members) >= MAX_TAR_MEMBERS:
            raise InvalidParameter(
                f"invalid archive: more than {MAX_TAR_MEMBERS} members"
            )
        total_size += member.size
        if total_size > MAX_TAR_TOTAL_SIZE:
            raise InvalidParameter(
                f"invalid archive: members larger than {MAX_TAR_TOTAL_SIZE} bytes"
            )
        name = member.name
        if not (member.isfile() or member.isdir()):
            raise InvalidParameter(
                f"invalid archive: member {name!r} is a link or special file. "
                "Only regular files and folders are accepted"
            )
        unsafe = (
            name.startswith("/")
            or ".." in name.split("/")
            or _has_control_character(name)
        )
        if unsafe:
            raise InvalidParameter(
                f"invalid archive: unsafe member name {name!r} (absolute path, "
                "'..' or control character)"
            )
        members.append(member)
    return members


def _check_end_of_archive(archive: tarfile.TarFile) -> None:
    """
    Check that the member list ends with a zero block.

    The tarfile module of Python 3.11 takes a partial header block for the end of the
    archive, so a cut archive would otherwise load without its last members.
    """
    archive.fileobj.seek(archive.offset)
    trailer = archive.fileobj.read(tarfile.BLOCKSIZE)
    if len(trailer) < tarfile.BLOCKSIZE or trailer.count(0) != tarfile.BLOCKSIZE:
        raise InvalidParameter(
            "invalid archive: truncated tar archive (no end-of-archive block)"
        )


def _member_reference(member_name: str, base_name: str) -> tuple[str, str]:
    stem = base_name[: -len(FIT_SUFFIX)]
    try:
        return parse_reference(stem)
    except InvalidParameter as error:
        raise InvalidParameter(f"invalid archive member {member_name!r}: {error}")


def _labels(fit: FitImage) -> dict:
    labels = {}
    if fit.me is not None:
        labels["org.soo.me.name"] = fit.me.me_name
        labels["org.soo.me.spid"] = f"0x{fit.me.spid:016x}"
        labels["org.soo.me.domain-size"] = str(fit.me.domain_size)
        labels["org.soo.me.shortdesc"] = fit.me.me_shortdesc
    labels["org.soo.fit.description"] = fit.description
    kernel = fit.kernel()
    if kernel is not None and kernel.arch:
        labels["org.soo.fit.arch"] = kernel.arch
    return labels


def _is_repository(name: str) -> bool:
    return len(name) <= MAX_REPOSITORY_LENGTH and bool(
        REPOSITORY_PATTERN.fullmatch(name)
    )


def _has_control_character(text: str) -> bool:
    return any(ord(character) < 32 or ord(character) == 127 for character in text)


def _short_id(value: Any) -> str:
    if value is True:
        return "(unknown)"
    text = str(value)
    if text.startswith(DIGEST_PREFIX):
        text = text[len(DIGEST_PREFIX) :]
    return text[:12]


def _read_limited(path: str) -> bytes:
    """Read a whole file without following a symbolic link.

    @raise InvalidImage: the file is larger than L{MAX_FIT_SIZE}.
    """
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(descriptor, "rb") as stream:
        data = stream.read(MAX_FIT_SIZE + 1)
    if len(data) > MAX_FIT_SIZE:
        raise InvalidImage(
            f"invalid image {os.path.basename(path)!r}: larger than the maximum "
            f"FIT size of {MAX_FIT_SIZE} bytes"
        )
    return data


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_folder(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

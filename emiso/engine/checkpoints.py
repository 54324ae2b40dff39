"""Checkpoints: Docker's experimental checkpoint API over ME snapshots.

A checkpoint is a folder named after it that contains the snapshot zip the
agency writes (C{snapshot.zip}, one entry C{me}) and the engine's metadata
(C{checkpoint.json}: the image, the ME size, the creation time and the
snapshot's size and SHA-256). Checkpoints live in
C{DATA-DIR/containers/<id>/checkpoints/} by default, so they are deleted
with their container, or in a folder the client names (C{CheckpointDir},
the CLI's C{--checkpoint-dir}), which the engine never deletes.
"""

import hashlib
import json
import os
import re
import time
from typing import Any, Callable

import attrs
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from emiso.engine.states import docker_state
from emiso.errors import (
    AgencyError,
    Conflict,
    EngineError,
    InvalidParameter,
    NotFound,
    NotModified,
)

log = Logger()

#: Valid checkpoint names: Docker's rule for container and checkpoint
#: names, which excludes C{/}, C{..} and control characters.
CHECKPOINT_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")

SNAPSHOT_FILE = "snapshot.zip"
METADATA_FILE = "checkpoint.json"
METADATA_FORMAT = "emiso-checkpoint"
METADATA_VERSION = 1

#: Folder of a container's default checkpoints, inside its container folder.
DEFAULT_FOLDER = "checkpoints"


class CorruptCheckpoint(InvalidParameter):
    """A checkpoint's metadata or snapshot file is missing, damaged or truncated."""


class NoSuchCheckpoint(NotFound):
    """No checkpoint of that name exists in the checkpoint folder."""


@attrs.frozen
class CheckpointMetadata:
    """
    Metadata the engine stores next to a checkpoint's snapshot.

    @ivar created: seconds since the epoch.
    @ivar me_size: the ME's memory size in bytes.
    @ivar snapshot_size: the size of C{snapshot.zip} in bytes.
    @ivar snapshot_sha256: the SHA-256 of C{snapshot.zip}, hex.
    """

    name: str
    container_id: str
    container_name: str
    image_id: str
    image_ref: str
    me_name: str
    me_size: int
    created: float
    snapshot_size: int
    snapshot_sha256: str

    def to_json(self) -> dict:
        return {"format": METADATA_FORMAT, "version": METADATA_VERSION,
                **attrs.asdict(self)}

    @classmethod
    def from_json(cls, value: Any, where: str) -> "CheckpointMetadata":
        """
        Check and convert the decoded C{checkpoint.json}.

        @raise CorruptCheckpoint: a field is missing or has the wrong type.
        """
        if not isinstance(value, dict) or value.get("format") != METADATA_FORMAT:
            raise CorruptCheckpoint(f"{where} is not an EMISO checkpoint metadata file")
        if value.get("version") != METADATA_VERSION:
            raise CorruptCheckpoint(
                f"{where} has version {value.get('version')!r}; this engine "
                f"reads version {METADATA_VERSION}"
            )
        fields = {}
        for field in attrs.fields(cls):
            expected = {str: str, int: int, float: (int, float)}[field.type]
            item = value.get(field.name)
            if isinstance(item, bool) or not isinstance(item, expected):
                raise CorruptCheckpoint(
                    f"{where}: field {field.name!r} is missing or invalid: {item!r}"
                )
            fields[field.name] = item
        return cls(**fields)


def validate_name(name: Any) -> str:
    """
    Check a checkpoint name.

    @raise InvalidParameter: the name is empty, not a string, or has
        characters outside C{[a-zA-Z0-9_.-]}.
    """
    if not isinstance(name, str) or not CHECKPOINT_NAME_PATTERN.match(name):
        raise InvalidParameter(
            f"invalid checkpoint name {name!r}: use 2 or more characters from "
            "[a-zA-Z0-9_.-], starting with a letter or digit"
        )
    return name


def check_folder(path: str, writable: bool) -> str:
    """
    Check a client-given checkpoint folder (blocking).

    @param writable: the engine must be able to create checkpoints in it.
    @raise InvalidParameter: the path is not absolute, not an existing
        folder, or the engine lacks the permissions it needs.
    """
    if not isinstance(path, str) or "\0" in path or not os.path.isabs(path):
        raise InvalidParameter(
            f"invalid checkpoint folder {path!r}: give an absolute path on the "
            "engine's machine"
        )
    if not os.path.isdir(path):
        raise InvalidParameter(
            f"checkpoint folder {path} does not exist or is not a folder: create it "
            "on the engine's machine first"
        )
    mode = os.R_OK | os.X_OK | (os.W_OK if writable else 0)
    if not os.access(path, mode):
        needed = "write to" if writable else "read"
        raise InvalidParameter(f"the engine cannot {needed} checkpoint folder {path}")
    return os.path.normpath(path)


def list_names(folder: str) -> list[str]:
    """
    List the checkpoints in a folder, sorted by name (blocking).

    Only subfolders with a valid name and a metadata file count, so other
    files in a client's folder are not reported.
    """
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(
        entry
        for entry in entries
        if CHECKPOINT_NAME_PATTERN.match(entry)
        and os.path.isfile(os.path.join(folder, entry, METADATA_FILE))
    )


def read_checkpoint(folder: str, name: str) -> CheckpointMetadata:
    """
    Read a checkpoint's metadata and check its snapshot file (blocking).

    @raise NoSuchCheckpoint: the checkpoint folder does not exist.
    @raise CorruptCheckpoint: the metadata is unreadable, or the snapshot is
        missing or differs in size or SHA-256 from the metadata (truncated
        or damaged).
    """
    directory = os.path.join(folder, name)
    if not os.path.isdir(directory):
        raise NoSuchCheckpoint(f"checkpoint {name} does not exist in {folder}")
    metadata_path = os.path.join(directory, METADATA_FILE)
    try:
        with open(metadata_path, "rb") as stream:
            value = json.load(stream)
    except FileNotFoundError:
        raise CorruptCheckpoint(
            f"checkpoint {name} in {folder} has no {METADATA_FILE}"
        ) from None
    except (OSError, ValueError) as error:
        raise CorruptCheckpoint(f"cannot read {metadata_path}: {error}") from None
    metadata = CheckpointMetadata.from_json(value, metadata_path)
    snapshot = os.path.join(directory, SNAPSHOT_FILE)
    try:
        size, digest = hash_file(snapshot)
    except OSError as error:
        raise CorruptCheckpoint(
            f"cannot read the snapshot of checkpoint {name}: {error}"
        ) from None
    if size != metadata.snapshot_size:
        raise CorruptCheckpoint(
            f"the snapshot of checkpoint {name} has {size} bytes, expected "
            f"{metadata.snapshot_size}: it is truncated or was replaced"
        )
    if digest != metadata.snapshot_sha256:
        raise CorruptCheckpoint(
            f"the snapshot of checkpoint {name} has SHA-256 {digest}, expected "
            f"{metadata.snapshot_sha256}: it is damaged"
        )
    return metadata


def write_metadata(directory: str, metadata: CheckpointMetadata) -> None:
    """
    Write C{checkpoint.json} atomically (blocking).
    """
    path = os.path.join(directory, METADATA_FILE)
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(metadata.to_json(), stream, indent=1, sort_keys=True)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


def remove_checkpoint(folder: str, name: str) -> None:
    """
    Delete a checkpoint's files and its folder (blocking).

    Only the files the engine writes are deleted; a folder that also holds
    other files is kept.

    @raise NoSuchCheckpoint: the checkpoint does not exist.
    """
    directory = os.path.join(folder, name)
    if not os.path.isdir(directory):
        raise NoSuchCheckpoint(f"checkpoint {name} does not exist in {folder}")
    for file_name in (SNAPSHOT_FILE, METADATA_FILE, METADATA_FILE + ".tmp"):
        try:
            os.unlink(os.path.join(directory, file_name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(directory)
    except OSError as error:
        log.warn("Kept checkpoint folder {path}: {error}", path=directory, error=error)


def hash_file(path: str) -> tuple[int, str]:
    """
    Return the size and SHA-256 (hex) of a file (blocking).
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class CheckpointManager:
    """
    Create, list, delete and restore the checkpoints of containers.

    @param containers: the L{emiso.engine.containers.ContainerManager}.
    @param images: the L{emiso.engine.images.ImageStore}.
    @param agency: an L{emiso.agency.interfaces.IAgency} provider.
    @param reactor: the reactor that runs the thread pool's results.
    @param threadpool: the pool for file work (hashing, listing, deleting).
    """

    def __init__(
        self,
        containers: Any,
        images: Any,
        agency: Any,
        reactor: Any,
        threadpool: Any,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._containers = containers
        self._images = images
        self._agency = agency
        self._reactor = reactor
        self._threadpool = threadpool
        self._clock = clock

    def _in_thread(self, function: Callable[..., Any], *args: Any):
        return deferToThreadPool(self._reactor, self._threadpool, function, *args)

    def _folder(self, container: Any, checkpoint_dir: str, writable: bool):
        """
        Fire with the checkpoint folder to use: the client's, checked, or
        the container's default one.
        """
        if checkpoint_dir:
            return self._in_thread(check_folder, checkpoint_dir, writable)
        default = os.path.join(os.path.dirname(container.log_path), DEFAULT_FOLDER)
        return self._in_thread(_make_folder, default)

    # Create

    def create(self, name_or_id: str, checkpoint_id: str, checkpoint_dir: str = "",
               exit: bool = False):
        """
        Save the container's ME as a checkpoint.

        A running ME is suspended for the snapshot and resumed afterwards;
        a paused one stays paused. With C{exit}, the ME is terminated after
        the snapshot and the container exits.

        @raise Conflict: the container is not running, or the checkpoint
            exists already.
        """
        validate_name(checkpoint_id)
        return self._containers.locked(
            name_or_id, self._create, checkpoint_id, checkpoint_dir, exit
        )

    @inlineCallbacks
    def _create(self, container: Any, name: str, checkpoint_dir: str, exit: bool):
        if container.state not in ("running", "paused"):
            raise Conflict(
                f"cannot checkpoint container {container.name}: it is "
                f"{container.state}, not running"
            )
        folder = yield self._folder(container, checkpoint_dir, writable=True)
        directory = os.path.join(folder, name)
        try:
            yield self._in_thread(os.mkdir, directory)
        except FileExistsError:
            raise Conflict(
                f"checkpoint {name} already exists in {folder}: remove it or "
                "choose another name"
            )
        was_running = container.state == "running"
        container.operation = "checkpoint"
        yield self._containers.save(container)
        try:
            yield self._snapshot(container, directory, was_running)
            metadata = yield self._write_metadata(container, name, directory)
        except BaseException:
            yield self._in_thread(_remove_quietly, folder, name)
            container.operation = None
            yield self._containers.save(container)
            raise
        self._containers.publish(container, "checkpoint", checkpoint=name)
        if exit:
            yield self._terminate_after_checkpoint(container)
        else:
            container.operation = None
            yield self._containers.save(container)
        log.info(
            "Created checkpoint {name} of container {id} in {folder} "
            "({size} bytes)",
            name=name,
            id=container.short_id,
            folder=folder,
            size=metadata.snapshot_size,
        )

    @inlineCallbacks
    def _snapshot(self, container: Any, directory: str, was_running: bool):
        """
        Suspend a running ME, read its snapshot, then resume it.
        """
        if was_running:
            try:
                result = yield self._agency.initialize(container.slot)
            except EngineError as error:
                yield self._containers.record_failure(container, "checkpoint", error)
                raise _checkpoint_failed(container, error)
            container.me_state = result.get("state", "suspended")
        try:
            yield self._agency.read_snapshot(
                container.slot, os.path.join(directory, SNAPSHOT_FILE)
            )
        except EngineError as error:
            if was_running:
                yield self._resume(container)
            raise _checkpoint_failed(container, error)
        if was_running:
            yield self._resume(container)

    @inlineCallbacks
    def _resume(self, container: Any):
        try:
            result = yield self._agency.finalize(container.slot)
        except EngineError as error:
            yield self._containers.record_failure(container, "checkpoint", error)
            raise _checkpoint_failed(container, error)
        container.me_state = result.get("state", "living")
        container.state = docker_state(container.me_state)

    @inlineCallbacks
    def _write_metadata(self, container: Any, name: str, directory: str):
        size, digest = yield self._in_thread(
            hash_file, os.path.join(directory, SNAPSHOT_FILE)
        )
        metadata = CheckpointMetadata(
            name=name,
            container_id=container.id,
            container_name=container.name,
            image_id=container.image_id,
            image_ref=container.image_ref,
            me_name=container.me_name,
            me_size=container.me_size,
            created=self._clock(),
            snapshot_size=size,
            snapshot_sha256=digest,
        )
        yield self._in_thread(write_metadata, directory, metadata)
        return metadata

    @inlineCallbacks
    def _terminate_after_checkpoint(self, container: Any):
        try:
            yield self._agency.terminate(container.slot)
        except EngineError as error:
            yield self._containers.record_failure(container, "checkpoint", error)
            raise _checkpoint_failed(container, error)
        yield self._containers.record_exit(container, 0)

    # List and delete

    @inlineCallbacks
    def list(self, name_or_id: str, checkpoint_dir: str = ""):
        """
        Fire with the names of the checkpoints in the container's folder, or
        in C{checkpoint_dir} (all checkpoints there, whichever container
        they were taken from).
        """
        container = self._containers.get(name_or_id)
        folder = yield self._folder(container, checkpoint_dir, writable=False)
        names = yield self._in_thread(list_names, folder)
        return names

    def delete(self, name_or_id: str, name: str, checkpoint_dir: str = ""):
        """
        Delete a checkpoint.

        @raise NoSuchCheckpoint: it does not exist.
        """
        validate_name(name)
        return self._containers.locked(name_or_id, self._delete, name, checkpoint_dir)

    @inlineCallbacks
    def _delete(self, container: Any, name: str, checkpoint_dir: str):
        folder = yield self._folder(container, checkpoint_dir, writable=True)
        yield self._in_thread(remove_checkpoint, folder, name)
        log.info("Deleted checkpoint {name} in {folder}", name=name, folder=folder)

    # Restore

    def start(self, name_or_id: str, name: str, checkpoint_dir: str = ""):
        """
        Start the container from a checkpoint: its ME continues where the
        snapshot left it instead of booting.

        @raise NotModified: the container is already running.
        @raise InvalidParameter: the checkpoint was taken from another
            image, or its files are damaged; the container is unchanged.
        """
        validate_name(name)
        return self._containers.locked(name_or_id, self._start, name, checkpoint_dir)

    @inlineCallbacks
    def _start(self, container: Any, name: str, checkpoint_dir: str):
        if container.running:
            if container.state == "paused":
                raise Conflict("cannot start a paused container, try unpause instead")
            raise NotModified(f"container {container.id} is already started")
        folder = yield self._folder(container, checkpoint_dir, writable=False)
        metadata = yield self._in_thread(read_checkpoint, folder, name)
        if metadata.image_id != container.image_id:
            raise InvalidParameter(
                f"checkpoint {name} was taken from image {metadata.image_ref} "
                f"({metadata.image_id}), but container {container.name} uses image "
                f"{container.image_ref} ({container.image_id})"
            )
        image = self._images.get(container.image_id)
        previous = attrs.evolve(container)
        container.operation = "start"
        yield self._containers.save(container)
        snapshot = os.path.join(folder, name, SNAPSHOT_FILE)
        try:
            written = yield self._agency.write_snapshot(
                snapshot, container.log_path, container.id, image=image.path
            )
        except EngineError as error:
            yield self._put_back(container, previous)
            raise _restore_failed(container, name, error)
        slot = written["slot"]
        try:
            finalized = yield self._agency.finalize(slot)
        except EngineError as error:
            yield self._discard(slot)
            yield self._put_back(container, previous)
            raise _restore_failed(container, name, error)
        container.slot = slot
        container.console = written.get("console")
        container.serial = written.get("serial")
        container.me_state = finalized.get("state", "living")
        container.state = docker_state(container.me_state)
        container.started_at = self._clock()
        container.finished_at = None
        container.exit_code = 0
        container.error = ""
        container.operation = None
        yield self._containers.save(container)
        self._containers.publish(container, "start", checkpoint=name)
        log.info(
            "Started container {id} from checkpoint {name} in slot {slot}",
            id=container.short_id,
            name=name,
            slot=slot,
        )

    @inlineCallbacks
    def _discard(self, slot: int):
        """
        Terminate a restored ME that did not reach the living state.
        """
        try:
            yield self._agency.terminate(slot)
        except EngineError as error:
            log.warn(
                "Cannot terminate the restored ME in slot {slot}: {error}",
                slot=slot,
                error=error,
            )

    def _put_back(self, container: Any, previous: Any):
        for field in attrs.fields(type(container)):
            setattr(container, field.name, getattr(previous, field.name))
        return self._containers.save(container)


def _make_folder(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def _remove_quietly(folder: str, name: str) -> None:
    try:
        remove_checkpoint(folder, name)
    except (OSError, NoSuchCheckpoint) as error:
        log.warn("Cannot remove the failed checkpoint {name}: {error}", name=name,
                 error=error)


def _checkpoint_failed(container: Any, error: EngineError) -> EngineError:
    return _reworded(error, f"cannot checkpoint container {container.name}: {error}")


def _restore_failed(container: Any, name: str, error: EngineError) -> EngineError:
    return _reworded(
        error,
        f"cannot start container {container.name} from checkpoint {name}: {error}; "
        "the container is unchanged",
    )


def _reworded(error: EngineError, message: str) -> EngineError:
    """
    Return an error of the same class (so the same HTTP status) with a
    message that names the container.
    """
    if not isinstance(error, AgencyError):
        return error
    return type(error)(message)

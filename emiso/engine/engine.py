"""The engine: the store, images, containers, events and agency of one smart object."""

import os
import platform
import secrets
import socket
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from emiso.engine.checkpoints import CheckpointManager
from emiso.engine.containers import ContainerManager
from emiso.engine.events import EventBus
from emiso.engine.execs import ExecManager
from emiso.engine.logs import thread_pool_reader
from emiso.engine.images import ImageStore
from emiso.engine.stats import StatsSampler
from emiso.engine.store import Store
from emiso.engine.update import UpdateManager

log = Logger()


class Engine:
    """
    Everything the API and the interactive CLI call.

    @param config: the resolved L{emiso.config.Config}.
    @param agency: an L{emiso.agency.interfaces.IAgency} provider.
    """

    def __init__(self, reactor: Any, config: Any, agency: Any) -> None:
        self.reactor = reactor
        self.config = config
        self.agency = agency
        self.events = EventBus()
        self.threadpool = ThreadPool(minthreads=1, maxthreads=4, name="emiso-io")
        self.store = Store(os.path.join(config.data_dir, "emiso.db"), reactor)
        self.images = ImageStore(
            config.image_dir,
            self.store,
            reactor,
            self.threadpool,
            samples_dir=config.samples_dir,
        )
        self.containers = ContainerManager(
            reactor,
            self.store,
            self.images,
            agency,
            os.path.join(config.data_dir, "containers"),
            self.events,
        )
        self.checkpoints = CheckpointManager(
            self.containers, self.images, agency, reactor, self.threadpool
        )
        self.stats = StatsSampler(agency, time.time)
        self.events.listen(self._forget_removed)
        self.execs = ExecManager(
            reactor,
            self.containers,
            reader=thread_pool_reader(reactor, self.threadpool),
        )
        self.updates = UpdateManager(self.containers, self.images, agency, reactor)
        self.engine_id = ""
        self.host = read_host_facts()

    @inlineCallbacks
    def start(self):
        """
        Open the store, start the agency, load images and containers.
        """
        os.makedirs(self.config.data_dir, exist_ok=True)
        os.makedirs(self.config.image_dir, exist_ok=True)
        self.threadpool.start()
        yield self.store.open()
        self.engine_id = yield self._engine_id()
        hello = yield self.agency.start()
        log.info(
            "Agency driver ready: backend {backend}, pid {pid}",
            backend=hello.get("backend"),
            pid=hello.get("pid"),
        )
        if self.config.install_samples:
            yield self._install_samples()
        yield self.images.refresh()
        yield self.containers.load()
        log.info(
            "Engine {id} ready with {images} images and {containers} containers",
            id=self.engine_id,
            images=len(self.images.list()),
            containers=len(self.containers.list()),
        )

    @inlineCallbacks
    def stop(self):
        """
        Stop the agency driver (MEs keep running) and close the store.
        """
        self.containers.restarts.stop()
        try:
            yield self.agency.stop()
        finally:
            yield self.store.close()
            self.threadpool.stop()

    def _forget_removed(self, event: Any) -> None:
        if event.type == "container" and event.action == "destroy":
            self.stats.forget(event.actor_id)

    @inlineCallbacks
    def _install_samples(self):
        """
        Copy the sample images into an empty image folder, once per folder:
        a user who removed every image does not get them back at the next
        start.
        """
        key = "samples-installed:" + self.config.image_dir
        if (yield self.store.get_meta(key)) is not None:
            return
        copied = yield self.images.install_samples()
        if copied:
            log.info(
                "The image folder {folder} was empty: copied the sample images "
                "{names}",
                folder=self.config.image_dir,
                names=", ".join(copied),
            )
        yield self.store.set_meta(key, "1")

    @inlineCallbacks
    def _engine_id(self):
        engine_id = yield self.store.get_meta("engine-id")
        if engine_id is None:
            # Docker's daemon ID format: a UUID-like random string.
            raw = secrets.token_hex(16)
            engine_id = "-".join(
                (raw[:8], raw[8:12], raw[12:16], raw[16:20], raw[20:])
            ).upper()
            yield self.store.set_meta("engine-id", engine_id)
        return engine_id


def read_host_facts() -> dict:
    """
    Read the host's CPU count, memory, kernel and operating system once.
    """
    return {
        "ncpu": os.cpu_count() or 1,
        "mem_total": _mem_total(),
        "kernel": platform.release(),
        "os": _os_name(),
        "os_version": platform.freedesktop_os_release().get("VERSION_ID", "")
        if hasattr(platform, "freedesktop_os_release") and _has_os_release()
        else "",
        "name": socket.gethostname(),
    }


def _has_os_release() -> bool:
    try:
        platform.freedesktop_os_release()
    except OSError:
        return False
    return True


def _os_name() -> str:
    if _has_os_release():
        return platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    return "Linux"


def _mem_total() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0

"""The twistd plugin's options and service: C{twistd -n emiso [options]}."""

import os
import sys
from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from emiso import __version__
from emiso.config import DEFAULT_CONFIG_FILE, DEFAULT_LISTEN, ConfigError, resolve

log = Logger()


class Options(usage.Options):
    """
    Command-line options of the EMISO engine.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve the Docker Engine API for the SO3 containers (MEs) of this smart "
        "object. Docker clients and Portainer connect to the --listen endpoints."
    )

    optFlags = [
        ["secure", "s", "Serve the API over TLS with client certificates (secure mode)."],
        ["interactive", "i", "Run the command-line interface instead of the web server."],
        ["experimental", None,
         "Advertise Docker's experimental features, such as checkpoints (the default)."],
        ["no-experimental", None,
         "Hide Docker's experimental features: clients then offer no checkpoint "
         "commands."],
    ]

    optParameters = [
        ["data-dir", None, None,
         "Folder of the engine's database, logs and agency state "
         "[default: /var/lib/emiso as root, else ~/.local/share/emiso]."],
        ["image-dir", None, None,
         "Folder of the ME images (.itb files) [default: DATA-DIR/images]."],
        ["agency", None, None, "Agency backend: sim (simulated smart object) [default: sim]."],
        ["config", None, None,
         f"TOML configuration file [default: {DEFAULT_CONFIG_FILE} when it exists]."],
        ["max-body-size", None, None,
         "Largest request body accepted, in bytes [default: 268435456]."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["agency-timeout"] = {}

    def opt_listen(self, description: str) -> None:
        """
        Listen on a Twisted server endpoint description, for example
        tcp:2375:interface=127.0.0.1 (repeatable) [default: tcp:2375:interface=127.0.0.1].
        """
        self["listen"].append(description)

    def opt_agency_timeout(self, value: str) -> None:
        """
        Time limit of one agency operation, OP=SECONDS, for example
        finalize=120 (repeatable) [default: see conf/emiso.toml].
        """
        name, _, seconds = value.partition("=")
        try:
            self["agency-timeout"][name] = float(seconds)
        except ValueError:
            raise usage.UsageError(
                f"--agency-timeout wants OP=SECONDS, not {value!r}"
            ) from None

    def opt_version(self) -> None:
        """
        Print the engine version and exit.
        """
        print(f"EMISO engine {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if self["secure"]:
            raise usage.UsageError(
                "secure mode (-s/--secure) is not available yet in this version; "
                "run without -s and keep the API on loopback"
            )
        if self["interactive"]:
            raise usage.UsageError(
                "interactive mode (-i/--interactive) is not available yet in this "
                "version; use the docker CLI against the engine instead"
            )
        if self["experimental"] and self["no-experimental"]:
            raise usage.UsageError(
                "--experimental and --no-experimental exclude each other; give one"
            )
        max_body = self["max-body-size"]
        if max_body is not None and (not max_body.isdigit() or int(max_body) <= 0):
            raise usage.UsageError(f"--max-body-size must be a positive integer, not {max_body!r}")
        try:
            self.config = resolve(
                {
                    "config": self["config"],
                    "data_dir": self["data-dir"],
                    "image_dir": self["image-dir"],
                    "agency": self["agency"],
                    "listen": self["listen"],
                    "secure": self["secure"],
                    "interactive": self["interactive"],
                    "experimental": _experimental_option(
                        self["experimental"], self["no-experimental"]
                    ),
                    "max_body_size": int(max_body) if max_body else None,
                    "timeouts": self["agency-timeout"],
                }
            )
        except ConfigError as error:
            raise usage.UsageError(str(error))
        for description in self.config.listen:
            _check_endpoint(description)


class EngineService(service.Service):
    """
    Start the engine, then listen on the configured endpoints; stop in the
    reverse order.

    A failure to start the engine or to bind an endpoint stops the process
    with status 1 and a message naming what failed.
    """

    def __init__(self, config: Any, reactor: Any) -> None:
        from emiso.agency.controller import MEController
        from emiso.engine.engine import Engine

        self.config = config
        self._reactor = reactor
        agency = MEController(
            reactor, config.driver_argv(), env=dict(os.environ), timeouts=config.timeouts
        )
        self.engine = Engine(reactor, config, agency)
        self._ports: list[Any] = []
        self.ready: Deferred = Deferred()

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._start)

    def _start(self) -> Deferred:
        d = self.engine.start()
        d.addCallback(lambda _: self._listen())
        d.addCallbacks(self._started, self._failed)
        return d

    def _listen(self) -> Deferred:
        from twisted.internet.defer import gatherResults

        from emiso.api.app import DockerAPI

        api = DockerAPI(self.engine, max_body_size=self.config.max_body_size)
        site = Site(api.resource())
        site.displayTracebacks = False
        listening = []
        for description in self.config.listen:
            endpoint = endpoints.serverFromString(self._reactor, description)
            d = endpoint.listen(site)
            d.addCallback(self._ports.append)
            d.addErrback(_bind_failed, description)
            listening.append(d)
        return gatherResults(listening, consumeErrors=True)

    def _started(self, _: object) -> None:
        for description in self.config.listen:
            log.info("Docker API listening on {endpoint}", endpoint=description)
            if not _is_loopback_only(description):
                log.warn(
                    "The API on {endpoint} is unauthenticated: anyone who can "
                    "reach it controls the containers",
                    endpoint=description,
                )
        self.ready.callback(None)

    def _failed(self, failure: Any) -> None:
        from twisted.internet.defer import FirstError

        error = failure.value
        if isinstance(error, FirstError):
            error = error.subFailure.value
        log.critical("The engine cannot start: {error}", error=error)
        sys.stderr.write(f"emiso: the engine cannot start: {error}\n")
        sys.stderr.flush()
        self._reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self._reactor.stop()

    def stopService(self) -> Deferred:
        super().stopService()
        from twisted.internet.defer import DeferredList

        stopping = [port.stopListening() for port in self._ports]
        d = DeferredList([d for d in stopping if d is not None])
        d.addCallback(lambda _: self.engine.stop())
        d.addErrback(lambda failure: log.failure("Error while stopping", failure))
        return d


class StartupError(Exception):
    """An endpoint could not be bound."""


def _bind_failed(failure: Any, description: str) -> None:
    raise StartupError(
        f"cannot listen on {description}: {failure.getErrorMessage()}"
    )


def _experimental_option(enabled: bool, disabled: bool) -> bool | None:
    if enabled:
        return True
    if disabled:
        return False
    return None


def _is_loopback_only(description: str) -> bool:
    if description.startswith("unix:"):
        return True
    for part in description.split(":"):
        if part.startswith("interface="):
            address = part.split("=", 1)[1]
            return address.startswith("127.") or address in ("localhost", "\\:\\:1")
    return False


def _check_endpoint(description: str) -> None:
    try:
        endpoints._parseServer(description, None)
    except (ValueError, KeyError, TypeError) as error:
        raise usage.UsageError(f"invalid --listen endpoint {description!r}: {error}")


def makeService(options: Options) -> service.IService:
    """
    Build the engine service for twistd.
    """
    from twisted.internet import reactor

    return EngineService(options.config, reactor)

"""The twistd plugin's options and service: C{twistd -n emiso [options]}."""

import os
import sys
from typing import Any

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from emiso import __version__
from emiso.drain import DRAIN_TIMEOUT, EngineSite, InFlightRequests
from emiso.config import (
    DEFAULT_CONFIG_FILE,
    DEFAULT_SECURE_LISTEN,
    ConfigError,
    resolve,
)

log = Logger()


class Options(usage.Options):
    """
    Command-line options of the EMISO engine.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve the Docker Engine API for the SO3 containers (MEs) of this smart "
        "object. Docker clients and Portainer connect to the --listen endpoints. "
        "'emiso-engine certs --help' describes the certificates of secure mode."
    )

    optFlags = [
        ["secure", "s",
         "Serve the API over TLS and accept only clients with a certificate "
         "signed by --tlscacert (secure mode); the default --listen becomes "
         f"{DEFAULT_SECURE_LISTEN}."],
        ["interactive", "i",
         "Run the command-line interface on standard input and output instead "
         "of the web server; logs go to DATA-DIR/interactive.log."],
        ["tls-skip-client-verify", None,
         "In secure mode, accept clients without a certificate (server-only TLS)."],
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
         "Folder of the ME images (.itb files) [default: DATA-DIR/images; "
         "/mnt/ME for soo, /mnt/capsules/image for capsule]."],
        ["agency", None, None,
         "Agency backend: sim (simulated smart object), qemu (QEMU virtual "
         "machines), soo (generation-A agency kernel, /dev/soo/core) or capsule "
         "(capsule agency kernel) [default: sim]."],
        ["config", None, None,
         f"TOML configuration file [default: {DEFAULT_CONFIG_FILE} when it exists]."],
        ["max-body-size", None, None,
         "Largest request body accepted, in bytes [default: 268435456]."],
        ["tlscacert", None, None,
         "CA certificate that signs the client certificates, in secure mode "
         "[default: DATA-DIR/certs/ca.pem]."],
        ["tlscert", None, None,
         "The engine's TLS certificate [default: DATA-DIR/certs/cert.pem]."],
        ["tlskey", None, None,
         "The engine's TLS private key [default: DATA-DIR/certs/key.pem]."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["agency-timeout"] = {}

    def opt_listen(self, description: str) -> None:
        # usage.Options prints the docstring as it is, so it stays on one line.
        """Listen on a Twisted server endpoint description, for example tcp:2375:interface=127.0.0.1 (repeatable) [default: tcp:2375:interface=127.0.0.1]."""  # noqa: E501
        self["listen"].append(description)

    def opt_agency_timeout(self, value: str) -> None:
        """Time limit of one agency operation, OP=SECONDS, for example finalize=120 (repeatable) [default: see conf/emiso.toml]."""  # noqa: E501
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
        if self["secure"] and self["interactive"]:
            raise usage.UsageError(
                "-s/--secure and -i/--interactive exclude each other: the "
                "interactive mode runs no web server"
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
                    "secure": True if self["secure"] else None,
                    "interactive": self["interactive"],
                    "experimental": _experimental_option(
                        self["experimental"], self["no-experimental"]
                    ),
                    "max_body_size": int(max_body) if max_body else None,
                    "timeouts": self["agency-timeout"],
                    "tlscacert": self["tlscacert"],
                    "tlscert": self["tlscert"],
                    "tlskey": self["tlskey"],
                    "tls_skip_client_verify": (
                        True if self["tls-skip-client-verify"] else None
                    ),
                }
            )
        except ConfigError as error:
            raise usage.UsageError(str(error))
        for description in self.config.listen:
            _check_endpoint(description)
        self.tls_options = None
        if self.config.secure and not self.config.interactive:
            self.tls_options = _load_tls(self.config)


class EngineService(service.Service):
    """
    Start the engine, then listen on the configured endpoints (or run the
    interactive CLI); stop in the reverse order.

    A failure to start the engine or to bind an endpoint stops the process
    with status 1 and a message naming what failed.

    @param tls_options: the TLS context factory of secure mode, or C{None}
        for plain HTTP.
    @param lock: the held L{emiso.lock.DataFolderLock}, released at stop.
    @param stdio_factory: called with a protocol to connect it to standard
        input and output in interactive mode; default
        L{twisted.internet.stdio.StandardIO}.
    @param log_observer: a log observer that twistd should use instead of
        its default (see L{setServiceParent}).
    """

    def __init__(
        self,
        config: Any,
        reactor: Any,
        tls_options: Any = None,
        lock: Any = None,
        stdio_factory: Any = None,
        log_observer: Any = None,
    ) -> None:
        from emiso.agency.controller import MEController
        from emiso.engine.engine import Engine

        self.config = config
        self._reactor = reactor
        self._tls_options = tls_options
        self._lock = lock
        self._stdio_factory = stdio_factory
        self._log_observer = log_observer
        agency = MEController(
            reactor, config.driver_argv(), env=dict(os.environ), timeouts=config.timeouts
        )
        self.engine = Engine(reactor, config, agency)
        self._ports: list[Any] = []
        self._requests = InFlightRequests()
        self.ready: Deferred = Deferred()

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        # twistd reads a log observer component of the application before
        # its --logfile default, which would write to standard output.
        if self._log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self._log_observer)

    def startService(self) -> None:
        super().startService()
        if self._lock is not None:
            # twistd without -n forks after makeService: record the new pid.
            self._lock.record_owner()
        self._reactor.callWhenRunning(self._start)

    def _start(self) -> Deferred:
        d = self.engine.start()
        if self.config.interactive:
            d.addCallback(lambda _: self._run_cli())
            d.addErrback(self._failed)
            return d
        d.addCallback(lambda _: self._listen())
        d.addCallbacks(self._started, self._failed)
        return d

    def _run_cli(self) -> None:
        from emiso.cli import CommandLineProtocol, Commands

        stdio_factory = self._stdio_factory
        if stdio_factory is None:
            from twisted.internet.stdio import StandardIO

            def stdio_factory(protocol: Any) -> Any:
                return StandardIO(protocol, reactor=self._reactor)

        protocol = CommandLineProtocol(
            Commands(self.engine), self._reactor.stop, interactive=os.isatty(0)
        )
        stdio_factory(protocol)
        log.info("Interactive command-line interface ready")
        self.ready.callback(None)

    def _listen(self) -> Deferred:
        from twisted.internet.defer import gatherResults

        from emiso.api.app import DockerAPI
        from emiso.api.limits import body_limited_request

        api = DockerAPI(self.engine, max_body_size=self.config.max_body_size)
        site = EngineSite(api.resource(), self._requests)
        site.requestFactory = body_limited_request(self.config.max_body_size)
        site.displayTracebacks = False
        listening = []
        for description in self.config.listen:
            endpoint = endpoints.serverFromString(self._reactor, description)
            if self._tls_options is not None:
                endpoint = endpoints.wrapServerTLS(self._tls_options, endpoint)
            d = endpoint.listen(site)
            d.addCallback(self._ports.append)
            d.addErrback(_bind_failed, description)
            listening.append(d)
        return gatherResults(listening, consumeErrors=True)

    def _started(self, _: object) -> None:
        scheme = "HTTPS" if self._tls_options is not None else "HTTP"
        for description in self.config.listen:
            log.info(
                "Docker API listening on {endpoint} ({scheme})",
                endpoint=description,
                scheme=scheme,
            )
            if self._tls_options is None and not _is_loopback_only(description):
                log.warn(
                    "The API on {endpoint} is unauthenticated: anyone who can "
                    "reach it controls the containers",
                    endpoint=description,
                )
        if self._tls_options is not None and self.config.tls_skip_client_verify:
            log.warn(
                "Client certificates are not verified (--tls-skip-client-verify): "
                "anyone who can reach {endpoints} controls the containers",
                endpoints=", ".join(self.config.listen),
            )
        self.ready.callback(None)

    def _failed(self, failure: Any) -> None:
        from twisted.internet.defer import FirstError

        error = failure.value
        if isinstance(error, FirstError):
            error = error.subFailure.value
        log.critical("The engine cannot start: {error}", error=error)
        # twistd redirects sys.stderr into the log; the message must reach
        # the terminal (or the journal) too.
        sys.__stderr__.write(f"emiso: the engine cannot start: {error}\n")
        sys.__stderr__.flush()
        self._reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self._reactor.stop()

    def stopService(self) -> Deferred:
        super().stopService()
        from twisted.internet.defer import DeferredList

        stopping = [port.stopListening() for port in self._ports]
        d = DeferredList([d for d in stopping if d is not None])
        d.addCallback(lambda _: self._requests.wait(self._reactor, DRAIN_TIMEOUT))
        d.addCallback(lambda _: self.engine.stop())
        d.addErrback(lambda failure: log.failure("Error while stopping", failure))
        d.addBoth(self._release_lock)
        return d

    def _release_lock(self, result: Any) -> Any:
        if self._lock is not None:
            self._lock.release()
        return result


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


def _load_tls(config: Any) -> Any:
    from emiso.tls import TLSConfigError, TLSFiles, server_options

    files = TLSFiles(config.tlscacert, config.tlscert, config.tlskey)
    try:
        return server_options(files, verify_clients=not config.tls_skip_client_verify)
    except TLSConfigError as error:
        raise usage.UsageError(f"secure mode cannot start: {error}")


def _check_endpoint(description: str) -> None:
    try:
        endpoints._parseServer(description, None)
    except (ValueError, KeyError, TypeError) as error:
        raise usage.UsageError(f"invalid --listen endpoint {description!r}: {error}")


def makeService(options: Options) -> service.IService:
    """
    Build the engine service for twistd, after taking the data-folder lock.

    A second engine or CLI on the same data folder exits here with status 1
    and a message naming the running process.
    """
    from twisted.internet import reactor

    from emiso.lock import DataFolderBusy, DataFolderLock

    config = options.config
    lock = DataFolderLock.for_data_dir(config.data_dir)
    if config.interactive:
        recorded = ["interactive"]
    elif options.tls_options is not None:
        recorded = [f"tls+{description}" for description in config.listen]
    else:
        recorded = list(config.listen)
    try:
        lock.acquire(recorded)
    except DataFolderBusy as error:
        sys.exit(f"emiso: {error}")
    except OSError as error:
        sys.exit(f"emiso: cannot create the lock file {lock.path}: {error.strerror}")
    return EngineService(
        config,
        reactor,
        tls_options=options.tls_options,
        lock=lock,
        log_observer=_interactive_observer(options),
    )


def _interactive_observer(options: Options) -> Any:
    """
    Return the log observer of interactive mode when twistd would log to
    standard output (no --logfile, or --logfile=-); else C{None}.
    """
    if not options.config.interactive:
        return None
    twistd_options = getattr(options, "parent", None) or {}
    if twistd_options.get("logger") or twistd_options.get("syslog"):
        return None
    if twistd_options.get("logfile") not in (None, "", "-"):
        return None
    from emiso.logoutput import interactive_observer

    return interactive_observer(options.config.data_dir)

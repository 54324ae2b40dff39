"""Engine configuration: defaults per user, an optional TOML file, command-line options."""

import os
import sys
import tomllib
from typing import Any

import attrs

#: The configuration file read when C{--config} is not given and it exists.
DEFAULT_CONFIG_FILE = "/etc/emiso/emiso.toml"

#: Endpoint used without C{--listen}: plain HTTP on loopback, on Docker's
#: unencrypted port.
DEFAULT_LISTEN = "tcp:2375:interface=127.0.0.1"

#: Endpoint used in secure mode without C{--listen}: TLS on all interfaces,
#: on Docker's TLS port.
DEFAULT_SECURE_LISTEN = "tcp:2376"

#: File names of the TLS files in C{DATA-DIR/certs}, as dockerd names them.
TLS_FILE_NAMES = {"tlscacert": "ca.pem", "tlscert": "cert.pem", "tlskey": "key.pem"}

#: The agency backends the driver knows: the simulated smart object, QEMU
#: virtual machines, the generation-A agency kernel and the capsule kernel.
AGENCY_BACKENDS = ("sim", "qemu", "soo", "capsule")

#: The sample images copied into an empty image folder, per backend, as a
#: folder inside the C{emiso} package (C{""} is C{emiso/samples} itself).
#: Backends without an entry (a board) get no samples.
SAMPLE_FOLDERS = {"sim": "", "qemu": "qemu"}

#: The image folder of each board backend when C{--image-dir} is not given
#: (the sim backend uses DATA-DIR/images).
BOARD_IMAGE_DIRS = {"soo": "/mnt/ME", "capsule": "/mnt/capsules/image"}

#: The agency device of the board backends.
DEFAULT_AGENCY_DEVICE = "/dev/soo/core"

#: ABIs of the agency kernel's ioctl structures.
AGENCY_ABIS = ("arm64", "arm")

#: Prefix of an agency device that selects the test suite's fake kernel.
FAKE_DEVICE_PREFIX = "fake:"

#: Default time limits of agency operations, in seconds. Booting an ME
#: (finalize) and snapshots take longest.
DEFAULT_TIMEOUTS = {
    "hello": 10.0,
    "list": 10.0,
    "inject": 30.0,
    "finalize": 60.0,
    "initialize": 30.0,
    "terminate": 30.0,
    "read_snapshot": 60.0,
    "write_snapshot": 60.0,
}


class ConfigError(Exception):
    """The configuration file or an option is invalid."""


@attrs.define
class Config:
    """
    The resolved engine configuration.
    """

    data_dir: str
    image_dir: str
    listen: list[str]
    agency: str = "sim"
    secure: bool = False
    interactive: bool = False
    experimental: bool = True
    max_body_size: int = 256 * 1024 * 1024
    driver_command: list[str] | None = None
    timeouts: dict[str, float] = attrs.Factory(lambda: dict(DEFAULT_TIMEOUTS))
    install_samples: bool = True
    #: Folder of the sample images; None means C{emiso/samples}.
    samples_dir: str | None = None
    tlscacert: str = ""
    tlscert: str = ""
    tlskey: str = ""
    tls_skip_client_verify: bool = False
    agency_device: str = DEFAULT_AGENCY_DEVICE
    agency_abi: str = "arm64"
    me_log: str | None = None
    me_log_id: str = "slot"

    @property
    def tls_dir(self) -> str:
        """
        The default folder of the TLS files: C{DATA-DIR/certs}.
        """
        return os.path.join(self.data_dir, "certs")

    def driver_argv(self) -> list[str]:
        """
        Return the command line of the agency driver process.
        """
        if self.driver_command:
            return list(self.driver_command)
        argv = [
            sys.executable,
            "-m",
            "emiso.agency.driver",
            "--backend",
            self.agency,
            "--state-dir",
            os.path.join(self.data_dir, "agency"),
        ]
        if self.agency in BOARD_IMAGE_DIRS:
            argv += ["--device", self.agency_device, "--abi", self.agency_abi,
                     "--me-log-id", self.me_log_id]
            if self.me_log:
                argv += ["--me-log", self.me_log]
        return argv


def default_data_dir() -> str:
    """
    Return the default data folder: C{/var/lib/emiso} as root, else
    C{$XDG_DATA_HOME/emiso} (C{~/.local/share/emiso}).
    """
    if os.geteuid() == 0:
        return "/var/lib/emiso"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "emiso")


def read_config_file(path: str) -> dict[str, Any]:
    """
    Read a TOML configuration file.

    @raise ConfigError: the file cannot be read or is not valid TOML.
    """
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read the configuration file {path}: {error.strerror}")
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"invalid configuration file {path}: {error}")


def resolve(options: dict[str, Any]) -> Config:
    """
    Build the configuration from the command-line options, the
    configuration file and the defaults, in that order of precedence.

    @param options: option name to value; C{None} means not given.
    """
    path = options.get("config")
    file_values: dict[str, Any] = {}
    if path:
        file_values = read_config_file(path)
    elif os.path.exists(DEFAULT_CONFIG_FILE):
        file_values = read_config_file(DEFAULT_CONFIG_FILE)
    engine_values = dict(file_values.get("engine", {}))
    agency_values = dict(file_values.get("agency", {}))
    unknown = set(file_values) - {"engine", "timeouts", "agency"}
    if unknown:
        raise ConfigError(f"unknown section(s) in the configuration file: {sorted(unknown)}")

    def pick(name: str, default: Any) -> Any:
        from_file = engine_values.pop(name.replace("_", "-"), default)
        value = options.get(name)
        if value is not None and value != []:
            return value
        return from_file

    data_dir = os.path.abspath(os.path.expanduser(pick("data_dir", default_data_dir())))
    agency = pick("agency", "sim")
    if agency not in AGENCY_BACKENDS:
        raise ConfigError(
            f"unknown agency backend {agency!r}; available: {', '.join(AGENCY_BACKENDS)}"
        )
    image_dir = pick("image_dir", None) or BOARD_IMAGE_DIRS.get(agency)
    image_dir = os.path.abspath(os.path.expanduser(image_dir or os.path.join(data_dir, "images")))
    secure = bool(pick("secure", False))
    listen = pick("listen", None) or [DEFAULT_SECURE_LISTEN if secure else DEFAULT_LISTEN]
    if isinstance(listen, str):
        listen = [listen]
    board = _resolve_agency_section(agency_values)
    if agency in BOARD_IMAGE_DIRS:
        check_agency_device(board["agency_device"])
    experimental = pick("experimental", True)
    if not isinstance(experimental, bool):
        raise ConfigError(f"experimental must be true or false, not {experimental!r}")
    max_body_size = int(pick("max_body_size", 256 * 1024 * 1024))
    driver_command = pick("driver_command", None)
    if isinstance(driver_command, str):
        driver_command = driver_command.split()
    timeouts = dict(DEFAULT_TIMEOUTS)
    for name, value in file_values.get("timeouts", {}).items():
        if name not in DEFAULT_TIMEOUTS or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"invalid timeout {name} = {value!r}")
        timeouts[name] = float(value)
    for name, value in (options.get("timeouts") or {}).items():
        if name not in DEFAULT_TIMEOUTS or not 0 < value < float("inf"):
            raise ConfigError(
                f"invalid agency timeout {name}={value!r}: the operations are "
                f"{', '.join(DEFAULT_TIMEOUTS)} and the time a positive number "
                "of seconds"
            )
        timeouts[name] = float(value)
    tls_files = {}
    for name in ("tlscacert", "tlscert", "tlskey"):
        default = os.path.join(data_dir, "certs", TLS_FILE_NAMES[name])
        tls_files[name] = os.path.abspath(os.path.expanduser(pick(name, default)))
    tls_skip_client_verify = bool(pick("tls_skip_client_verify", False))
    if engine_values:
        raise ConfigError(
            f"unknown option(s) in the [engine] section: {sorted(engine_values)}"
        )
    return Config(
        data_dir=data_dir,
        image_dir=image_dir,
        listen=list(listen),
        agency=agency,
        secure=secure,
        interactive=bool(options.get("interactive")),
        experimental=experimental,
        max_body_size=max_body_size,
        driver_command=driver_command,
        timeouts=timeouts,
        install_samples=agency in SAMPLE_FOLDERS,
        samples_dir=_samples_dir(agency),
        tls_skip_client_verify=tls_skip_client_verify,
        **tls_files,
        **board,
    )


def _samples_dir(agency: str) -> str | None:
    """Return the sample folder of a backend, or None for the default one."""
    folder = SAMPLE_FOLDERS.get(agency)
    if not folder:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples", folder)


def _resolve_agency_section(values: dict[str, Any]) -> dict[str, Any]:
    """Check the C{[agency]} section, used by the soo and capsule backends."""
    device = values.pop("device", DEFAULT_AGENCY_DEVICE)
    abi = values.pop("abi", "arm64")
    me_log = values.pop("me-log", None)
    me_log_id = values.pop("me-log-id", "slot")
    if values:
        raise ConfigError(f"unknown option(s) in the [agency] section: {sorted(values)}")
    if not isinstance(device, str) or not device:
        raise ConfigError(f"invalid [agency] device {device!r}: expected a path")
    if abi not in AGENCY_ABIS:
        raise ConfigError(
            f"invalid [agency] abi {abi!r}; expected one of {', '.join(AGENCY_ABIS)}"
        )
    if me_log is not None and (not isinstance(me_log, str) or not me_log):
        raise ConfigError(f"invalid [agency] me-log {me_log!r}: expected a path")
    if me_log_id not in ("slot", "capsule"):
        raise ConfigError(
            f"invalid [agency] me-log-id {me_log_id!r}; expected slot or capsule"
        )
    return {
        "agency_device": device,
        "agency_abi": abi,
        "me_log": me_log,
        "me_log_id": me_log_id,
    }


def check_agency_device(device: str) -> None:
    """
    Check that the agency device exists, so that an engine started on a
    machine without the SOO kernel stops at once with a clear message.

    @raise ConfigError: the device node is missing.
    """
    if device.startswith(FAKE_DEVICE_PREFIX):
        return
    if not os.path.exists(device):
        raise ConfigError(
            f"the agency device {device} does not exist: the soo and capsule "
            "backends run only on a SOO smart object whose agency kernel "
            f"provides it (mknod {device} c 126 0); use --agency sim elsewhere"
        )

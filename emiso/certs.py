"""
Certificates for secure mode: C{emiso-engine certs}.

The command creates, with the C{cryptography} package, what Docker's
documentation ("Protect the Docker daemon socket") creates with openssl: a
certificate authority, a server certificate for the engine and a client
certificate for the docker CLI or Portainer, all signed by that CA. Keys
are ECDSA P-256, in PKCS#8 PEM files of mode 0600.
"""

import datetime
import ipaddress
import os
import sys
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.python import usage

#: Validity of the certificates in days when C{--days} is not given; the
#: value Docker's documentation uses.
DEFAULT_DAYS = 365

#: Names every server certificate holds, so that the engine is reachable
#: on the board itself.
LOCAL_HOSTS = ("localhost",)
LOCAL_IPS = ("127.0.0.1",)

#: Backdating of C{notBefore}, so that a client whose clock is a little
#: behind accepts a certificate created a moment ago.
CLOCK_SKEW = datetime.timedelta(minutes=5)


class CertificateError(Exception):
    """The certificates cannot be written."""


@attrs.frozen
class Issued:
    """A private key and its certificate."""

    key: Any
    certificate: x509.Certificate


def new_key() -> ec.EllipticCurvePrivateKey:
    """
    Generate an ECDSA P-256 private key.
    """
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EMISO"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: Any,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        # random_serial_number() returns a positive 159-bit integer, as
        # RFC 5280 requires.
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    )


def _validity(
    days: int, now: datetime.datetime | None
) -> tuple[datetime.datetime, datetime.datetime]:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now - CLOCK_SKEW, now + datetime.timedelta(days=days)


def make_ca(
    common_name: str = "EMISO engine CA",
    days: int = DEFAULT_DAYS,
    now: datetime.datetime | None = None,
) -> Issued:
    """
    Create a self-signed certificate authority that may sign end-entity
    certificates only (path length 0).

    @param now: the start of the validity period; default: the current time.
    """
    key = new_key()
    not_before, not_after = _validity(days, now)
    name = _name(common_name)
    builder = (
        _builder(name, name, key.public_key(), not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return Issued(key, builder.sign(key, hashes.SHA256()))


def _end_entity(
    ca: Issued,
    common_name: str,
    usage_oid: x509.ObjectIdentifier,
    days: int,
    now: datetime.datetime | None,
    alt_names: list[x509.GeneralName] | None = None,
) -> Issued:
    key = new_key()
    not_before, not_after = _validity(days, now)
    builder = (
        _builder(
            _name(common_name), ca.certificate.subject, key.public_key(), not_before,
            not_after,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage_oid]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.certificate.public_key()
            ),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alt_names), critical=False
        )
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def make_server(
    ca: Issued,
    hosts: list[str] = (),
    ips: list[str] = (),
    days: int = DEFAULT_DAYS,
    now: datetime.datetime | None = None,
) -> Issued:
    """
    Create the engine's certificate, for server authentication, with the
    subject alternative names C{hosts} and C{ips} plus C{localhost} and
    C{127.0.0.1}.

    @raise ValueError: an entry of C{ips} is not an IP address.
    """
    dns_names = list(dict.fromkeys([*hosts, *LOCAL_HOSTS]))
    addresses = list(
        dict.fromkeys(ipaddress.ip_address(ip) for ip in [*ips, *LOCAL_IPS])
    )
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    alt_names += [x509.IPAddress(address) for address in addresses]
    return _end_entity(
        ca, dns_names[0], ExtendedKeyUsageOID.SERVER_AUTH, days, now, alt_names
    )


def make_client(
    ca: Issued,
    common_name: str = "client",
    days: int = DEFAULT_DAYS,
    now: datetime.datetime | None = None,
) -> Issued:
    """
    Create a certificate for client authentication.
    """
    return _end_entity(ca, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, days, now)


def certificate_pem(certificate: x509.Certificate) -> bytes:
    """
    Encode a certificate as PEM.
    """
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Any) -> bytes:
    """
    Encode a private key as unencrypted PKCS#8 PEM.
    """
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@attrs.frozen
class CertificateSet:
    """
    The files of one C{emiso-engine certs} run: path to content and mode.
    """

    files: dict[str, tuple[bytes, int]]


def build_set(
    directory: str,
    hosts: list[str],
    ips: list[str],
    days: int,
    now: datetime.datetime | None = None,
) -> CertificateSet:
    """
    Create a CA, a server and a client certificate and lay them out as
    the engine and C{DOCKER_CERT_PATH} expect them.
    """
    ca = make_ca(days=days, now=now)
    server = make_server(ca, hosts, ips, days=days, now=now)
    client = make_client(ca, days=days, now=now)
    client_dir = os.path.join(directory, "client")
    ca_pem = certificate_pem(ca.certificate)
    return CertificateSet(
        {
            os.path.join(directory, "ca.pem"): (ca_pem, 0o644),
            os.path.join(directory, "ca-key.pem"): (key_pem(ca.key), 0o600),
            os.path.join(directory, "cert.pem"): (
                certificate_pem(server.certificate), 0o644
            ),
            os.path.join(directory, "key.pem"): (key_pem(server.key), 0o600),
            os.path.join(client_dir, "ca.pem"): (ca_pem, 0o644),
            os.path.join(client_dir, "cert.pem"): (
                certificate_pem(client.certificate), 0o644
            ),
            os.path.join(client_dir, "key.pem"): (key_pem(client.key), 0o600),
        }
    )


def write_set(certificates: CertificateSet, force: bool) -> None:
    """
    Write the files; each one is written to a temporary file first and
    renamed, so a reader never sees half a key.

    @raise CertificateError: a file exists and C{force} is false (nothing
        is written then), or a file cannot be written.
    """
    existing = [path for path in certificates.files if os.path.lexists(path)]
    if existing and not force:
        raise CertificateError(
            f"these files already exist: {', '.join(existing)}; nothing was written. "
            "Use --force to replace them, or --dir to write elsewhere"
        )
    for path, (content, mode) in certificates.files.items():
        folder = os.path.dirname(path)
        try:
            # The folders hold private keys: only the owner may list them.
            os.makedirs(folder, mode=0o700, exist_ok=True)
            _write_file(path, content, mode)
        except OSError as error:
            raise CertificateError(f"cannot write {path}: {error.strerror}")


def _write_file(path: str, content: bytes, mode: int) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        # O_CREAT applies the umask; set the mode the file needs.
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


class CertsOptions(usage.Options):
    """
    Options of C{emiso-engine certs}.
    """

    synopsis = "[--dir DIR] [--host NAME]... [--ip ADDRESS]... [--days N] [--force]"
    longdesc = (
        "Create a certificate authority, a server certificate for the engine's "
        "secure mode (-s) and a client certificate for the docker CLI and "
        "Portainer, signed by that CA."
    )

    optFlags = [
        ["force", None, "Replace existing files."],
    ]

    optParameters = [
        ["dir", None, None,
         "Folder of the files [default: the certs folder of the data folder]."],
        ["days", None, str(DEFAULT_DAYS), "Validity of the certificates in days."],
        ["data-dir", None, None,
         "The engine's data folder, for the default --dir."],
        ["config", None, None,
         "The engine's configuration file, for the default --dir."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["host"] = []
        self["ip"] = []

    def opt_host(self, name: str) -> None:
        """
        A DNS name of the engine, added to the server certificate (repeatable).
        """
        self["host"].append(name)

    def opt_ip(self, address: str) -> None:
        """
        An IP address of the engine, added to the server certificate (repeatable).
        """
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise usage.UsageError(f"--ip {address!r} is not an IP address")
        self["ip"].append(address)

    def postOptions(self) -> None:
        days = self["days"]
        if not days.isdigit() or int(days) <= 0:
            raise usage.UsageError(f"--days must be a positive integer, not {days!r}")
        self["days"] = int(days)
        if self["dir"] is None:
            from emiso.config import ConfigError, resolve

            try:
                config = resolve(
                    {"config": self["config"], "data_dir": self["data-dir"]}
                )
            except ConfigError as error:
                raise usage.UsageError(str(error))
            self["dir"] = config.tls_dir
        self["dir"] = os.path.abspath(os.path.expanduser(self["dir"]))


def instructions(directory: str, hosts: list[str], ips: list[str]) -> str:
    """
    Explain where the files are and how the engine, the docker CLI and
    Portainer use them.
    """
    client_dir = os.path.join(directory, "client")
    address = (list(hosts) + list(ips) + ["127.0.0.1"])[0]
    lines = [
        f"Created the certificate authority, server and client certificates in "
        f"{directory}.",
        "",
        "Start the engine in secure mode (mutual TLS on port 2376):",
        f"    emiso-engine -s --tlscacert {directory}/ca.pem "
        f"--tlscert {directory}/cert.pem --tlskey {directory}/key.pem",
        "",
        "Use the docker CLI with the client certificate:",
        f"    export DOCKER_HOST=tcp://{address}:2376 DOCKER_TLS_VERIFY=1 "
        f"DOCKER_CERT_PATH={client_dir}",
        "    docker ps -a",
        "or:",
        f"    docker --tlsverify --tlscacert {client_dir}/ca.pem "
        f"--tlscert {client_dir}/cert.pem --tlskey {client_dir}/key.pem "
        f"-H tcp://{address}:2376 ps -a",
        "",
        "In Portainer, add a Docker Standalone environment with the API "
        f"connection, URL {address}:2376, TLS on, mode 'TLS with client "
        "certificate', and upload these three files:",
        f"    TLS CA certificate:  {client_dir}/ca.pem",
        f"    TLS certificate:     {client_dir}/cert.pem",
        f"    TLS key:             {client_dir}/key.pem",
        "",
        f"Keep {directory}/ca-key.pem secret: whoever has it can create client "
        "certificates the engine accepts.",
    ]
    if not hosts and not ips:
        lines += [
            "",
            "The server certificate is valid for localhost and 127.0.0.1 only. "
            "Run again with --host NAME and --ip ADDRESS (and --force) for "
            "clients on other machines.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """
    Run C{emiso-engine certs}; return the exit status.
    """
    options = CertsOptions()
    try:
        options.parseOptions(argv)
    except usage.UsageError as error:
        sys.stderr.write(f"{options}\nemiso-engine certs: {error}\n")
        return 2
    directory = options["dir"]
    certificates = build_set(directory, options["host"], options["ip"], options["days"])
    try:
        write_set(certificates, options["force"])
    except CertificateError as error:
        sys.stderr.write(f"emiso-engine certs: {error}\n")
        return 1
    sys.stdout.write(instructions(directory, options["host"], options["ip"]))
    return 0

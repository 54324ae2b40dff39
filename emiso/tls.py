"""
Secure mode: the TLS context of the API endpoints, checked at start-up.

Mutual TLS is the default, as with C{dockerd --tlsverify}: the engine
presents its certificate and accepts only clients whose certificate the
configured CA signed. TLS 1.2 is the oldest version accepted, and no
protocol is offered in ALPN, so clients speak HTTP/1.1, which attach and
exec need because they take over the connection.
"""

import datetime
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import ssl

#: What each TLS file is, for messages.
DESCRIPTIONS = {
    "tlscacert": "TLS CA certificate (--tlscacert)",
    "tlscert": "TLS server certificate (--tlscert)",
    "tlskey": "TLS server key (--tlskey)",
}


class TLSConfigError(Exception):
    """A TLS file is missing, unreadable, invalid or expired."""


@attrs.frozen
class TLSFiles:
    """The paths of the CA certificate, server certificate and server key."""

    cacert: str
    cert: str
    key: str


def _read(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise TLSConfigError(
            f"cannot read the {DESCRIPTIONS[option]} {path}: {error.strerror}"
        )


def _certificates(path: str, option: str) -> list[x509.Certificate]:
    data = _read(path, option)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError(
            f"the {DESCRIPTIONS[option]} {path} contains no valid PEM certificate"
        )
    return certificates


def _private_key(path: str) -> Any:
    data = _read(path, "tlskey")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(
            f"the {DESCRIPTIONS['tlskey']} {path} is encrypted; the engine needs "
            "an unencrypted key"
        )
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(
            f"the {DESCRIPTIONS['tlskey']} {path} contains no valid PEM private key"
        )


def _check_dates(
    certificate: x509.Certificate, path: str, option: str, now: datetime.datetime
) -> None:
    if certificate.not_valid_after_utc < now:
        raise TLSConfigError(
            f"the {DESCRIPTIONS[option]} {path} expired on "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC; create new "
            "certificates (emiso-engine certs --force)"
        )
    if certificate.not_valid_before_utc > now:
        raise TLSConfigError(
            f"the {DESCRIPTIONS[option]} {path} is not valid before "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC; check the "
            "system clock"
        )


def _public_der(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def server_options(
    files: TLSFiles,
    verify_clients: bool = True,
    now: datetime.datetime | None = None,
) -> ssl.CertificateOptions:
    """
    Check the TLS files and build the server's TLS options.

    @param verify_clients: require a client certificate signed by the CA
        in C{files.cacert}. When false, the CA file is not read.
    @param now: the time the certificates must be valid at; default: now.
    @raise TLSConfigError: a file is missing, unreadable or invalid, the key
        does not match the server certificate, or a certificate has expired
        or is not valid yet. The message names the file.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    chain = _certificates(files.cert, "tlscert")
    key = _private_key(files.key)
    if _public_der(chain[0].public_key()) != _public_der(key.public_key()):
        raise TLSConfigError(
            f"the {DESCRIPTIONS['tlskey']} {files.key} does not match the "
            f"{DESCRIPTIONS['tlscert']} {files.cert}"
        )
    for certificate in chain:
        _check_dates(certificate, files.cert, "tlscert", now)
    trust_root = None
    if verify_clients:
        authorities = _certificates(files.cacert, "tlscacert")
        for certificate in authorities:
            _check_dates(certificate, files.cacert, "tlscacert", now)
        trust_root = ssl.trustRootFromCertificates(
            [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in authorities]
        )
    # No acceptableProtocols: the engine offers no ALPN protocol, so a client
    # never negotiates HTTP/2.
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        trustRoot=trust_root,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )

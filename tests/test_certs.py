"""
C{emiso-engine certs}: the CA, server and client files.
"""

import contextlib
import io
import ipaddress
import os
import shutil
import stat
import tempfile

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial.unittest import SynchronousTestCase

from emiso import certs, script

FILES = [
    "ca.pem",
    "ca-key.pem",
    "cert.pem",
    "key.pem",
    "client/ca.pem",
    "client/cert.pem",
    "client/key.pem",
]


def load(folder: str, name: str) -> x509.Certificate:
    with open(os.path.join(folder, name), "rb") as handle:
        return x509.load_pem_x509_certificate(handle.read())


class CertsCommandTests(SynchronousTestCase):
    def setUp(self):
        self.parent = tempfile.mkdtemp(prefix="emiso-certs-")
        self.addCleanup(shutil.rmtree, self.parent, True)
        self.folder = os.path.join(self.parent, "certs")

    def run_certs(self, *arguments):
        output = io.StringIO()
        errors = io.StringIO()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
            status = certs.main(["--dir", self.folder, *arguments])
        return status, output.getvalue(), errors.getvalue()

    def test_files(self):
        status, _, _ = self.run_certs()

        self.assertEqual(status, 0)
        for name in FILES:
            self.assertTrue(os.path.isfile(os.path.join(self.folder, name)), name)

    def test_keyModes(self):
        self.run_certs()

        for name in ("ca-key.pem", "key.pem", "client/key.pem"):
            mode = stat.S_IMODE(os.stat(os.path.join(self.folder, name)).st_mode)
            self.assertEqual(mode, 0o600, name)

    def test_serverNames(self):
        self.run_certs("--host", "board.local", "--ip", "192.0.2.7")

        server = load(self.folder, "cert.pem")
        names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(
            names.value.get_values_for_type(x509.DNSName), ["board.local", "localhost"]
        )
        self.assertEqual(
            names.value.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("127.0.0.1")],
        )

    def test_usages(self):
        self.run_certs()

        server = load(self.folder, "cert.pem")
        client = load(self.folder, "client/cert.pem")
        server_usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        client_usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        self.assertEqual(list(server_usage.value), [ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertEqual(list(client_usage.value), [ExtendedKeyUsageOID.CLIENT_AUTH])

    def test_signedByCA(self):
        self.run_certs("--days", "30")

        ca = load(self.folder, "ca.pem")
        for name in ("cert.pem", "client/cert.pem"):
            certificate = load(self.folder, name)
            certificate.verify_directly_issued_by(ca)
            self.assertGreater(certificate.serial_number, 0)
            lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
            self.assertLess(lifetime.days, 31)
        self.assertEqual(load(self.folder, "client/ca.pem"), ca)

    def test_noOverwrite(self):
        self.run_certs()
        with open(os.path.join(self.folder, "cert.pem"), "rb") as handle:
            before = handle.read()

        status, _, errors = self.run_certs()

        with open(os.path.join(self.folder, "cert.pem"), "rb") as handle:
            self.assertEqual(handle.read(), before)
        self.assertEqual(status, 1)
        self.assertIn("--force", errors)
        self.assertIn(os.path.join(self.folder, "key.pem"), errors)

    def test_force(self):
        self.run_certs()
        with open(os.path.join(self.folder, "cert.pem"), "rb") as handle:
            before = handle.read()

        status, _, _ = self.run_certs("--force")

        with open(os.path.join(self.folder, "cert.pem"), "rb") as handle:
            self.assertNotEqual(handle.read(), before)
        self.assertEqual(status, 0)

    def test_instructions(self):
        _, output, _ = self.run_certs()

        client = os.path.join(self.folder, "client")
        self.assertIn(f"DOCKER_CERT_PATH={client}", output)
        self.assertIn("--tlsverify", output)
        self.assertIn("TLS with client certificate", output)
        for name in ("ca.pem", "cert.pem", "key.pem"):
            self.assertIn(os.path.join(client, name), output)

    def test_badIp(self):
        status, _, errors = self.run_certs("--ip", "board")

        self.assertEqual(status, 2)
        self.assertIn("'board' is not an IP address", errors)

    def test_badDays(self):
        status, _, errors = self.run_certs("--days", "0")

        self.assertEqual(status, 2)
        self.assertIn("--days must be a positive integer, not '0'", errors)

    def test_defaultFolder(self):
        data_dir = os.path.join(self.parent, "data")
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            status = certs.main(["--data-dir", data_dir])

        self.assertEqual(status, 0)
        self.assertTrue(os.path.isfile(os.path.join(data_dir, "certs", "key.pem")))

    def test_scriptDispatch(self):
        with contextlib.redirect_stdout(io.StringIO()):
            error = self.assertRaises(
                SystemExit, script.main, ["certs", "--dir", self.folder]
            )

        self.assertEqual(error.code, 0)
        self.assertTrue(os.path.isfile(os.path.join(self.folder, "ca.pem")))

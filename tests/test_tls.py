"""
Secure mode: start-up checks of the TLS files and the mutual TLS policy,
with an in-memory TLS handshake.
"""

import datetime
import http.client
import os
import socket
import subprocess
import tempfile

from OpenSSL import SSL
from twisted.internet import protocol, ssl, task
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from emiso import certs
from emiso.tls import TLSConfigError, TLSFiles, server_options
from tests.engineprocess import (
    DOCKER_CLI,
    PROJECT_ROOT,
    EngineProcess,
    docker_cli_available,
)

NOW = datetime.datetime(2026, 12, 4, 15, 0, tzinfo=datetime.timezone.utc)
GREETING = b"engine says hello\n"


def write(folder: str, name: str, data: bytes) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def write_server_files(folder: str, ca, server) -> TLSFiles:
    return TLSFiles(
        cacert=write(folder, "ca.pem", certs.certificate_pem(ca.certificate)),
        cert=write(folder, "cert.pem", certs.certificate_pem(server.certificate)),
        key=write(folder, "key.pem", certs.key_pem(server.key)),
    )


class Greeter(protocol.Protocol):
    """Sends a greeting once connected and records how the connection ended."""

    lost = None

    def connectionMade(self):
        self.transport.write(GREETING)

    def connectionLost(self, reason):
        self.lost = reason


class Collector(protocol.Protocol):
    """Records what the server sends."""

    def __init__(self):
        self.received = b""
        self.lost = None

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


class _Fixture:
    def __init__(self, test):
        folder = tempfile.mkdtemp(prefix="emiso-tls-")
        test.addCleanup(_remove_tree, folder)
        self.folder = folder
        self.ca = certs.make_ca()
        self.server = certs.make_server(self.ca)
        self.files = write_server_files(folder, self.ca, self.server)


def _remove_tree(folder):
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def handshake(server_opts, ca, client=None):
    """
    Connect an in-memory TLS client (with C{client}'s certificate, if any)
    to a server using C{server_opts}, and return the client's and the
    server's application protocols after the exchange.
    """
    # The TLS transports gather small writes until the next clock tick, and
    # the pump advances this clock.
    clock = task.Clock()
    server_app = Greeter()
    client_app = Collector()
    server_factory = TLSMemoryBIOFactory(
        server_opts, False, protocol.Factory.forProtocol(lambda: server_app), clock
    )
    client_certificate = None
    if client is not None:
        client_certificate = ssl.PrivateCertificate.loadPEM(
            certs.certificate_pem(client.certificate) + certs.key_pem(client.key)
        )
    client_opts = ssl.optionsForClientTLS(
        "localhost",
        trustRoot=ssl.Certificate.loadPEM(certs.certificate_pem(ca.certificate)),
        clientCertificate=client_certificate,
    )
    client_factory = TLSMemoryBIOFactory(
        client_opts, True, protocol.Factory.forProtocol(lambda: client_app), clock
    )
    _client_tls, _server_tls, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    pump.flush()
    return client_app, server_app


class HandshakeTests(SynchronousTestCase):
    """
    The mutual TLS policy of the server options.
    """

    def setUp(self):
        self.fixture = _Fixture(self)
        self.options = server_options(self.fixture.files)

    def test_clientAccepted(self):
        client = certs.make_client(self.fixture.ca)

        client_app, server_app = handshake(self.options, self.fixture.ca, client)

        self.assertEqual(client_app.received, GREETING)
        self.assertIsNone(server_app.lost)

    def test_noClientCertificate(self):
        client_app, server_app = handshake(self.options, self.fixture.ca)

        self.assertEqual(client_app.received, b"")
        self.assertTrue(server_app.lost.check(SSL.Error))

    def test_otherCA(self):
        other_ca = certs.make_ca("another CA")
        client = certs.make_client(other_ca)

        client_app, server_app = handshake(self.options, self.fixture.ca, client)

        self.assertEqual(client_app.received, b"")
        self.assertTrue(server_app.lost.check(SSL.Error))

    def test_expiredClient(self):
        long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
            days=30
        )
        client = certs.make_client(self.fixture.ca, days=2, now=long_ago)

        client_app, server_app = handshake(self.options, self.fixture.ca, client)

        self.assertEqual(client_app.received, b"")
        self.assertTrue(server_app.lost.check(SSL.Error))

    def test_skipClientVerify(self):
        options = server_options(self.fixture.files, verify_clients=False)

        client_app, server_app = handshake(options, self.fixture.ca)

        self.assertEqual(client_app.received, GREETING)

    def test_oldTLSRejected(self):
        context = self.options.getContext()

        flags = context.set_options(0)

        self.assertTrue(flags & SSL.OP_NO_TLSv1)
        self.assertTrue(flags & SSL.OP_NO_TLSv1_1)
        self.assertFalse(flags & SSL.OP_NO_TLSv1_2)


class StartupCheckTests(SynchronousTestCase):
    """
    L{server_options} stops start-up with a message naming the bad file.
    """

    def setUp(self):
        self.fixture = _Fixture(self)

    def assertRejected(self, files, *fragments, **kwargs):
        error = self.assertRaises(TLSConfigError, server_options, files, **kwargs)
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_missingCA(self):
        missing = os.path.join(self.fixture.folder, "nothing.pem")
        files = TLSFiles(missing, self.fixture.files.cert, self.fixture.files.key)

        self.assertRejected(files, missing, "--tlscacert", "No such file")

    def test_missingCAWithoutVerify(self):
        missing = os.path.join(self.fixture.folder, "nothing.pem")
        files = TLSFiles(missing, self.fixture.files.cert, self.fixture.files.key)

        options = server_options(files, verify_clients=False)

        self.assertIsNotNone(options)

    def test_unreadableKey(self):
        os.chmod(self.fixture.files.key, 0)
        if os.access(self.fixture.files.key, os.R_OK):
            self.skipTest("running as root: mode 000 files stay readable")

        self.assertRejected(self.fixture.files, self.fixture.files.key, "--tlskey")

    def test_notACertificate(self):
        write(self.fixture.folder, "cert.pem", b"hello\n")

        self.assertRejected(
            self.fixture.files, self.fixture.files.cert, "no valid PEM certificate"
        )

    def test_notAKey(self):
        write(self.fixture.folder, "key.pem", b"hello\n")

        self.assertRejected(
            self.fixture.files, self.fixture.files.key, "no valid PEM private key"
        )

    def test_keyMismatch(self):
        other = certs.make_server(self.fixture.ca)
        write(self.fixture.folder, "key.pem", certs.key_pem(other.key))

        self.assertRejected(
            self.fixture.files,
            self.fixture.files.key,
            self.fixture.files.cert,
            "does not match",
        )

    def test_expiredServer(self):
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
            days=400
        )

        self.assertRejected(
            self.fixture.files, self.fixture.files.cert, "expired on", now=later
        )

    def test_expiredCA(self):
        old_ca = certs.make_ca(days=1, now=NOW - datetime.timedelta(days=10))
        write(self.fixture.folder, "ca.pem", certs.certificate_pem(old_ca.certificate))

        self.assertRejected(
            self.fixture.files, self.fixture.files.cacert, "--tlscacert", "expired on"
        )

    def test_notYetValid(self):
        earlier = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
            days=1
        )

        self.assertRejected(
            self.fixture.files, self.fixture.files.cert, "not valid before", now=earlier
        )


def make_cert_folder() -> str:
    """
    Create certificates with C{emiso-engine certs} in a new folder.
    """
    import contextlib
    import io

    folder = tempfile.mkdtemp(prefix="emiso-certs-")
    with contextlib.redirect_stdout(io.StringIO()):
        status = certs.main(["--dir", folder])
    assert status == 0, status
    return folder


def secure_args(folder: str, *more: str) -> list:
    return [
        "-s",
        "--tlscacert", os.path.join(folder, "ca.pem"),
        "--tlscert", os.path.join(folder, "cert.pem"),
        "--tlskey", os.path.join(folder, "key.pem"),
        *more,
    ]


class SecureEngineTests(SynchronousTestCase):
    """
    The real engine in secure mode on a loopback TLS endpoint, with the
    docker CLI, docker-py and a plain HTTPS client.
    """

    @classmethod
    def setUpClass(cls):
        cls.folder = make_cert_folder()
        cls.engine = EngineProcess(
            secure_args(cls.folder), tls_client_dir=os.path.join(cls.folder, "client")
        )
        try:
            cls.engine.start()
        except BaseException:
            cls.engine.close()
            _remove_tree(cls.folder)
            raise

    @classmethod
    def tearDownClass(cls):
        cls.engine.close()
        _remove_tree(cls.folder)

    def requireDockerCLI(self):
        if not docker_cli_available():
            self.skipTest(f"the docker CLI {DOCKER_CLI} is not installed")

    def test_cliWithCertificate(self):
        self.requireDockerCLI()

        result = self.engine.docker("ps", "-a")

        self.assertEqual(result.returncode, 0)
        self.assertIn("CONTAINER ID", result.stdout)

    def test_cliWithoutCertificate(self):
        self.requireDockerCLI()
        environment = self.engine.env()
        del environment["DOCKER_TLS_VERIFY"]
        del environment["DOCKER_CERT_PATH"]
        ca = os.path.join(self.folder, "client", "ca.pem")

        result = subprocess.run(
            [DOCKER_CLI, "--tlsverify", "--tlscacert", ca, "ps", "-a"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )

        self.assertNotEqual(result.returncode, 0)
        self.assertIn("certificate required", result.stderr)

    def test_dockerPy(self):
        import docker

        # requests lets these variables replace the session's CA file (the
        # one TLSConfig sets), so the engine's CA would not be trusted.
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            if name in os.environ:
                self.addCleanup(os.environ.__setitem__, name, os.environ.pop(name))
        client_dir = os.path.join(self.folder, "client")
        tls = docker.tls.TLSConfig(
            client_cert=(
                os.path.join(client_dir, "cert.pem"),
                os.path.join(client_dir, "key.pem"),
            ),
            ca_cert=os.path.join(client_dir, "ca.pem"),
            verify=True,
        )
        client = docker.DockerClient(
            base_url=f"https://127.0.0.1:{self.engine.port}", tls=tls, version="1.44"
        )
        self.addCleanup(client.close)

        tags = sorted(tag for image in client.images.list() for tag in image.tags)

        self.assertIn("refso3-sim:latest", tags)

    def test_httpsRequest(self):
        status, _headers, body = self.engine.request("GET", "/version")

        self.assertEqual(status, 200)
        self.assertIn(b'"ApiVersion"', body)

    def test_plainHTTPRejected(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.engine.port, timeout=5)
        self.addCleanup(connection.close)

        try:
            connection.request("GET", "/_ping")
            response = connection.getresponse()
        except (OSError, http.client.HTTPException):
            response = None

        self.assertIsNone(response)

    def test_noHTTP2(self):
        context = self.engine.tls_context()
        context.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", self.engine.port), 5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket:
                selected = tls_socket.selected_alpn_protocol()
                version = tls_socket.version()

        self.assertIn(selected, (None, "http/1.1"))
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))


class SecureStartupTests(SynchronousTestCase):
    """
    The engine exits before it starts anything when a TLS file is bad, and
    warns when client verification is off.
    """

    def setUp(self):
        self.folder = make_cert_folder()
        self.addCleanup(_remove_tree, self.folder)

    def test_missingFileStopsStart(self):
        os.unlink(os.path.join(self.folder, "key.pem"))
        engine = EngineProcess(secure_args(self.folder))
        self.addCleanup(engine.close)

        engine.process = subprocess.Popen(
            engine.command(),
            cwd=engine.temp_dir,
            env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output, _ = engine.process.communicate(timeout=60)

        self.assertNotEqual(engine.process.returncode, 0)
        self.assertIn(os.path.join(self.folder, "key.pem"), output)
        self.assertIn("No such file or directory", output)
        self.assertFalse((engine.data_dir / "emiso.db").exists())

    def test_skipVerifyWarns(self):
        engine = EngineProcess(
            secure_args(self.folder, "--tls-skip-client-verify"),
            tls_client_dir=os.path.join(self.folder, "client"),
        )
        self.addCleanup(engine.close)

        engine.start()

        self.assertIn("Client certificates are not verified", engine.log_tail())

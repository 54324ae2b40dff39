"""
Configuration of the soo and capsule backends: image folders, the
C{[agency]} section and the check of the agency device.
"""

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from emiso.config import ConfigError, resolve


class AgencyConfigTests(SynchronousTestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="emiso-config-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)

    def resolve_file(self, text: str):
        path = os.path.join(self.directory, "emiso.toml")
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(text)
        return resolve({"config": path, "data_dir": self.directory})

    def test_soo_image_folder(self):
        config = self.resolve_file('[engine]\nagency = "soo"\n'
                                   '[agency]\ndevice = "fake:/k"\n')

        self.assertEqual(config.image_dir, "/mnt/ME")
        self.assertFalse(config.install_samples)

    def test_capsule_image_folder(self):
        config = self.resolve_file('[engine]\nagency = "capsule"\n'
                                   '[agency]\ndevice = "fake:/k"\n')

        self.assertEqual(config.image_dir, "/mnt/capsules/image")

    def test_driver_gets_agency_options(self):
        config = self.resolve_file(
            '[engine]\nagency = "soo"\n[agency]\ndevice = "fake:/k"\nabi = "arm"\n'
            'me-log = "/l/me_{id}.log"\nme-log-id = "capsule"\n'
        )

        argv = config.driver_argv()

        self.assertEqual(
            argv[argv.index("--device"):],
            ["--device", "fake:/k", "--abi", "arm", "--me-log-id", "capsule",
             "--me-log", "/l/me_{id}.log"],
        )

    def test_missing_device_named(self):
        device = os.path.join(self.directory, "core")

        with self.assertRaises(ConfigError) as caught:
            self.resolve_file(f'[engine]\nagency = "soo"\n[agency]\ndevice = "{device}"\n')

        self.assertIn(f"the agency device {device} does not exist",
                      str(caught.exception))

    def test_bad_abi_rejected(self):
        with self.assertRaises(ConfigError):
            self.resolve_file('[agency]\nabi = "x86"\n')

    def test_unknown_agency_key(self):
        with self.assertRaises(ConfigError):
            self.resolve_file('[agency]\nport = 3\n')

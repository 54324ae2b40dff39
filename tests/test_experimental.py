"""Tests for the experimental switch: on by default, off with an option."""

import os
import tempfile

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from emiso.config import ConfigError, resolve
from emiso.tap import Options


def _write_config(test: SynchronousTestCase, text: str) -> str:
    handle, path = tempfile.mkstemp(suffix=".toml")
    with os.fdopen(handle, "w") as config_file:
        config_file.write(text)
    test.addCleanup(os.unlink, path)
    return path


class ExperimentalConfigTests(SynchronousTestCase):
    """
    The C{experimental} setting of L{resolve}.
    """

    def test_on_by_default(self):
        path = _write_config(self, "")

        config = resolve({"config": path})

        self.assertTrue(config.experimental)

    def test_off_in_file(self):
        path = _write_config(self, "[engine]\nexperimental = false\n")

        config = resolve({"config": path})

        self.assertFalse(config.experimental)

    def test_option_wins_over_file(self):
        path = _write_config(self, "[engine]\nexperimental = true\n")

        config = resolve({"config": path, "experimental": False})

        self.assertFalse(config.experimental)

    def test_rejects_non_boolean(self):
        path = _write_config(self, '[engine]\nexperimental = "yes"\n')

        self.assertRaises(ConfigError, resolve, {"config": path})


class ExperimentalOptionTests(SynchronousTestCase):
    """
    The C{--experimental} and C{--no-experimental} flags.
    """

    def _parse(self, *args: str):
        path = _write_config(self, "")
        options = Options()
        options.parseOptions(["--config", path, "--data-dir", tempfile.gettempdir(),
                              *args])
        return options.config

    def test_default_is_on(self):
        config = self._parse()

        self.assertTrue(config.experimental)

    def test_no_experimental(self):
        config = self._parse("--no-experimental")

        self.assertFalse(config.experimental)

    def test_both_flags_rejected(self):
        self.assertRaises(
            usage.UsageError, self._parse, "--experimental", "--no-experimental"
        )

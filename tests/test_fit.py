"""Tests for emiso.engine.fit: the sample images, the fault test images and
malformed FIT images built with tests.fitbuilder.
"""

import os
import random

from twisted.trial.unittest import SynchronousTestCase

from emiso.engine import fit
from emiso.engine.fit import parse_fit, read_fit_file
from emiso.errors import InvalidImage
from tests.fitbuilder import OMIT, build_fit, build_me_dtb

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(os.path.dirname(HERE), "emiso", "samples")
TEST_IMAGES = os.path.join(HERE, "images")

MIB = 1024 * 1024


def sample_path(name: str) -> str:
    return os.path.join(SAMPLES, name)


def fault_image_path(name: str) -> str:
    return os.path.join(TEST_IMAGES, name)


class SampleImageTests(SynchronousTestCase):
    """The committed sample images parse to the values of their sources."""

    def test_refso3_me_descriptor(self):
        image = read_fit_file(sample_path("refso3-sim.itb"))

        self.assertEqual(image.me.me_name, "SOO.refso3-sim")
        self.assertEqual(image.me.spid, 0x0100000000000001)
        self.assertEqual(image.me.domain_size, 16 * MIB)
        self.assertIn("heartbeat", image.me.me_shortdesc)
        self.assertIsNone(image.me.spadcaps)

    def test_refso3_root_properties(self):
        image = read_fit_file(sample_path("refso3-sim.itb"))

        self.assertIn("EMISO simulated agency", image.description)
        self.assertIsInstance(image.timestamp, int)
        self.assertEqual(image.vendor, {})

    def test_refso3_image_nodes(self):
        image = read_fit_file(sample_path("refso3-sim.itb"))

        names = [node.name for node in image.images]
        fdt_node = image.images[1]
        self.assertEqual(names, ["so3", "fdt"])
        self.assertEqual(fdt_node.type, "flat_dt")
        self.assertGreater(fdt_node.data_size, 0)

    def test_refso3_kernel_node(self):
        image = read_fit_file(sample_path("refso3-sim.itb"))

        kernel = image.kernel()

        self.assertEqual(kernel.name, "so3")
        self.assertEqual(kernel.type, "ME")
        self.assertEqual(kernel.arch, "arm64")
        self.assertEqual(kernel.os, "linux")
        self.assertEqual(kernel.compression, "none")
        self.assertGreater(kernel.data_size, 0)
        self.assertIsNone(kernel.load)

    def test_blinky_descriptor_and_heartbeat(self):
        image = read_fit_file(sample_path("blinky-sim.itb"))

        self.assertEqual(image.me.me_name, "SOO.blinky-sim")
        self.assertEqual(image.me.spid, 0x0100000000000002)
        self.assertEqual(image.me.domain_size, 8 * MIB)
        self.assertEqual(image.vendor, {"sim-heartbeat-ms": 500})
        self.assertIn("EMISO simulated agency", image.description)


class FaultImageTests(SynchronousTestCase):
    """Each fault test image carries its emiso,sim-* property."""

    expected = {
        "slowboot.itb": {"sim-boot-delay-ms": 5000},
        "crasher.itb": {"sim-crash-after-ms": 2000},
        "exiter.itb": {"sim-exit-after-ms": 2000},
        "stubborn.itb": {"sim-refuse-migration": True},
        "hang-finalize.itb": {"sim-hang": "finalize"},
        "bigmem.itb": {},
    }

    def test_fault_vendor_properties(self):
        for name, vendor in self.expected.items():
            image = read_fit_file(fault_image_path(name))

            self.assertEqual(image.vendor, vendor, name)

    def test_bigmem_domain_size(self):
        image = read_fit_file(fault_image_path("bigmem.itb"))

        self.assertEqual(image.me.domain_size, 300 * MIB)


class ParseFitTests(SynchronousTestCase):
    """parse_fit on FIT images built in memory."""

    def test_built_image_parses(self):
        image = parse_fit(build_fit())

        self.assertEqual(image.me.me_name, "SOO.fitbuilder")
        self.assertEqual(image.me.spid, 0x0100000000000009)
        self.assertEqual(image.timestamp, 1767225600)

    def test_spid_two_cells_big_endian(self):
        dtb = build_me_dtb(spid=[0x12345678, 0x9ABCDEF0])

        image = parse_fit(build_fit(me_dtb=dtb))

        self.assertEqual(image.me.spid, 0x123456789ABCDEF0)

    def test_spadcaps_read(self):
        dtb = build_me_dtb(spadcaps=0x0000000100000002)

        image = parse_fit(build_fit(me_dtb=dtb))

        self.assertEqual(image.me.spadcaps, 0x0000000100000002)

    def test_missing_shortdesc_empty(self):
        dtb = build_me_dtb(me_shortdesc=OMIT)

        image = parse_fit(build_fit(me_dtb=dtb))

        self.assertEqual(image.me.me_shortdesc, "")

    def test_missing_description_empty(self):
        image = parse_fit(build_fit(description=OMIT, timestamp=OMIT))

        self.assertEqual(image.description, "")
        self.assertIsNone(image.timestamp)

    def test_load_and_entry(self):
        data = build_fit(kernel_props={"load": 0x41080000, "entry": 0x41080000})

        kernel = parse_fit(data).kernel()

        self.assertEqual(kernel.load, 0x41080000)
        self.assertEqual(kernel.entry, 0x41080000)

    def test_kernel_type_guest(self):
        data = build_fit(kernel_props={"type": "guest"})

        kernel = parse_fit(data).kernel()

        self.assertEqual(kernel.name, "so3")

    def test_no_kernel_node(self):
        image = parse_fit(build_fit(kernel_node=False))

        self.assertIsNone(image.kernel())

    def test_kernel_data_size_exact(self):
        # Printable text, 4-byte words and odd lengths take different
        # property classes in the fdt library, and each must keep its size.
        for payload in [b"text\0", b"abcd" * 3, b"\x01\x02\x03", b"a\nb\0\0c"]:
            data = build_fit(kernel_data=payload)

            kernel = parse_fit(data).kernel()

            self.assertEqual(kernel.data_size, len(payload), payload)

    def test_external_fdt_data(self):
        image = parse_fit(build_fit(external_fdt=True))

        self.assertEqual(image.me.me_name, "SOO.fitbuilder")

    def test_vendor_root_properties(self):
        props = {
            "emiso,sim-boot-delay-ms": 1200,
            "emiso,sim-refuse-migration": True,
            "emiso,sim-hang": "terminate",
            "emiso,other": "value",
        }

        image = parse_fit(build_fit(root_props=props))

        self.assertEqual(image.vendor["sim-boot-delay-ms"], 1200)
        self.assertIs(image.vendor["sim-refuse-migration"], True)
        self.assertEqual(image.vendor["sim-hang"], "terminate")
        self.assertEqual(image.vendor["other"], "value")

    def test_vendor_int_looking_like_text(self):
        # 0x41424300 is "ABC\0", which the fdt library decodes as a string.
        props = {"emiso,sim-heartbeat-ms": 0x41424300}

        image = parse_fit(build_fit(root_props=props))

        self.assertEqual(image.vendor["sim-heartbeat-ms"], 0x41424300)

    def test_vendor_me_node_properties(self):
        dtb = build_me_dtb(extra={"emiso,sim-crash-after-ms": 300})
        props = {"emiso,sim-heartbeat-ms": 250}

        image = parse_fit(build_fit(me_dtb=dtb, root_props=props))

        self.assertEqual(
            image.vendor, {"sim-crash-after-ms": 300, "sim-heartbeat-ms": 250}
        )

    def test_vendor_root_overrides_me_node(self):
        dtb = build_me_dtb(extra={"emiso,sim-heartbeat-ms": 300})
        props = {"emiso,sim-heartbeat-ms": 250}

        image = parse_fit(build_fit(me_dtb=dtb, root_props=props))

        self.assertEqual(image.vendor["sim-heartbeat-ms"], 250)


class InvalidFitTests(SynchronousTestCase):
    """Every malformed input raises InvalidImage with the reason."""

    def assert_invalid(self, data: bytes, reason: str) -> None:
        error = self.assertRaises(InvalidImage, parse_fit, data)
        self.assertIn(reason, str(error))

    def test_empty_data(self):
        self.assert_invalid(b"", "too short for a device tree")

    def test_text_data(self):
        self.assert_invalid(b"#!/bin/sh\n" * 10, "not a device tree")

    def test_truncated_image(self):
        with open(sample_path("refso3-sim.itb"), "rb") as stream:
            data = stream.read()

        self.assert_invalid(data[: len(data) // 2], "truncated device tree")

    def test_missing_images_node(self):
        self.assert_invalid(build_fit(images_node=False), "missing /images node")

    def test_empty_images_node(self):
        data = build_fit(kernel_node=False, fdt_node=False)

        self.assert_invalid(data, "/images has no image node")

    def test_missing_fdt_node(self):
        self.assert_invalid(build_fit(fdt_node=False), "missing image node /images/fdt")

    def test_fdt_data_not_device_tree(self):
        text = b"This text is not a device tree but is longer than its header.\n"
        data = build_fit(me_dtb=text)

        self.assert_invalid(data, "ME device tree in /images/fdt: not a device tree")

    def test_fdt_without_data(self):
        data = build_fit(fdt_props={"data": OMIT})

        self.assert_invalid(data, "/images/fdt has no data")

    def test_compressed_fdt(self):
        data = build_fit(fdt_props={"compression": "gzip"})

        self.assert_invalid(data, "/images/fdt is compressed (gzip)")

    def test_missing_me_node(self):
        data = build_fit(me_dtb=build_me_dtb(me_node=False))

        self.assert_invalid(data, "has no /ME node")

    def test_missing_me_properties(self):
        for name, argument in [
            ("me_name", "me_name"),
            ("spid", "spid"),
            ("domain-size", "domain_size"),
        ]:
            data = build_fit(me_dtb=build_me_dtb(**{argument: OMIT}))

            self.assert_invalid(data, f"/ME node of the ME device tree has no {name}")

    def test_zero_domain_size(self):
        data = build_fit(me_dtb=build_me_dtb(domain_size=0))

        self.assert_invalid(data, "domain-size is 0")

    def test_string_domain_size(self):
        data = build_fit(me_dtb=build_me_dtb(domain_size="16 MiB"))

        self.assert_invalid(data, "domain-size of /ME is not a 32-bit or 64-bit")

    def test_integer_me_name(self):
        data = build_fit(me_dtb=build_me_dtb(me_name=[1, 2]))

        self.assert_invalid(data, "me_name of /ME is not a string")

    def test_vendor_flag_with_value(self):
        data = build_fit(root_props={"emiso,sim-refuse-migration": 1})

        self.assert_invalid(data, "emiso,sim-refuse-migration of / must be empty")

    def test_vendor_hang_not_string(self):
        data = build_fit(root_props={"emiso,sim-hang": 5})

        self.assert_invalid(data, "emiso,sim-hang of / is not a string")

    def test_data_larger_than_limit(self):
        self.patch(fit, "MAX_FIT_SIZE", 100)

        self.assert_invalid(build_fit(), "larger than the maximum FIT size")

    def test_file_larger_than_limit(self):
        path = self.mktemp()
        with open(path, "wb") as stream:
            stream.truncate(fit.MAX_FIT_SIZE + 1)

        error = self.assertRaises(InvalidImage, read_fit_file, path)

        self.assertIn("larger than the maximum FIT size", str(error))

    def test_corrupted_bytes_raise_invalid_image(self):
        # Overwrite single bytes at random places of a valid image: the
        # result either still parses or raises InvalidImage, never another
        # exception from the fdt library.
        original = build_fit()
        generator = random.Random(4)
        for _ in range(1500):
            data = bytearray(original)
            data[generator.randrange(len(data))] = generator.randrange(256)

            try:
                parse_fit(bytes(data))
            except InvalidImage:
                pass

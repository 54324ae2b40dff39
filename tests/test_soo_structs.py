"""
Packing of the SOO agency ioctl structures, checked against gcc.

The C declarations of C{agency_ioctl_args_t} and C{ME_id_t} are compiled
with gcc into assembly (C{-S}, no linking, so no target C library is
needed) as a table of C{sizeof} and C{offsetof} values, which the test
reads back from the C{.long} directives:

- C{-m64} (x86_64 LP64) has the same sizes and alignments as aarch64
  LP64 for these types (pointers and longs of 8 bytes, 8-byte aligned
  64-bit integers);
- C{-m32 -malign-double} (i386 with 64-bit integers aligned to 8 bytes)
  has the same sizes and alignments as the ARM EABI for these types.

A cross compiler for aarch64 or arm would give the same numbers; the
tests use the host compiler because it is the one installed. When gcc (or
its 32-bit mode) is missing the tests are skipped.
"""

import os
import re
import shutil
import subprocess
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from emiso.agency.soo.structs import (
    ABIS,
    interface,
    ioctl_args_layout,
    me_id_layout,
)

GCC = shutil.which("gcc")

C_DECLARATIONS = """
/* No headers, so that -m32 works without 32-bit C library headers. */
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
#define offsetof(type, member) __builtin_offsetof(type, member)

typedef enum { ME_state_booting, ME_state_dead = 8 } ME_state_t;

typedef struct { void *buffer; int slotID; long value; } args_a_t;
typedef struct { void *buffer; int slotID; unsigned int capsuleID; long value; }
    args_c_t;

typedef struct {
    uint32_t slotID; ME_state_t state; uint64_t spid; uint64_t spadcaps;
    char name[40]; char shortdesc[1024];
} me_id_a_t;

typedef struct {
    uint32_t slotID; ME_state_t state; uint64_t spid;
    char name[40]; char shortdesc[1024];
} me_id_c_t;

const unsigned int layout_table[] = {
    sizeof(args_a_t), offsetof(args_a_t, buffer), offsetof(args_a_t, slotID),
    offsetof(args_a_t, value),
    sizeof(args_c_t), offsetof(args_c_t, buffer), offsetof(args_c_t, slotID),
    offsetof(args_c_t, capsuleID), offsetof(args_c_t, value),
    sizeof(me_id_a_t), offsetof(me_id_a_t, slotID), offsetof(me_id_a_t, state),
    offsetof(me_id_a_t, spid), offsetof(me_id_a_t, spadcaps),
    offsetof(me_id_a_t, name), offsetof(me_id_a_t, shortdesc),
    sizeof(me_id_c_t), offsetof(me_id_c_t, slotID), offsetof(me_id_c_t, state),
    offsetof(me_id_c_t, spid), offsetof(me_id_c_t, name),
    offsetof(me_id_c_t, shortdesc),
};
"""

GCC_FLAGS = {"arm64": ["-m64"], "arm": ["-m32", "-malign-double"]}


def python_table(abi: str) -> list[int]:
    """The same table as C{layout_table}, from the Python layouts."""
    args_a = ioctl_args_layout("A", abi)
    args_c = ioctl_args_layout("C", abi)
    me_a = me_id_layout("A", abi)
    me_c = me_id_layout("C", abi)
    return [
        args_a.size, *(args_a.offset(n) for n in ("buffer", "slotID", "value")),
        args_c.size,
        *(args_c.offset(n) for n in ("buffer", "slotID", "capsuleID", "value")),
        me_a.size,
        *(me_a.offset(n) for n in ("slotID", "state", "spid", "spadcaps", "name",
                                   "shortdesc")),
        me_c.size,
        *(me_c.offset(n) for n in ("slotID", "state", "spid", "name", "shortdesc")),
    ]


def gcc_table(abi: str) -> list[int]:
    """Compile C{C_DECLARATIONS} for C{abi} and read C{layout_table}."""
    with tempfile.TemporaryDirectory() as directory:
        source = os.path.join(directory, "layout.c")
        with open(source, "w", encoding="ascii") as stream:
            stream.write(C_DECLARATIONS)
        result = subprocess.run(
            [GCC, *GCC_FLAGS[abi], "-S", "-O0", "-o", "-", source],
            capture_output=True, text=True, timeout=60,
        )
    if result.returncode != 0:
        raise OSError(result.stderr)
    body = result.stdout.split("layout_table:", 1)[1]
    return [int(value) for value in re.findall(r"^\s*\.long\s+(\d+)", body, re.M)][:22]


class GccLayoutTests(SynchronousTestCase):
    """The Python layouts match gcc's for both ABIs."""

    def check_abi(self, abi: str) -> None:
        if GCC is None:
            self.skipTest("gcc is not installed")
        try:
            expected = gcc_table(abi)
        except OSError as error:
            self.skipTest(f"gcc {' '.join(GCC_FLAGS[abi])} cannot compile: {error}")

        actual = python_table(abi)

        self.assertEqual(actual, expected)

    def test_arm64_matches_gcc(self):
        self.check_abi("arm64")

    def test_arm_matches_gcc(self):
        self.check_abi("arm")


class LayoutTests(SynchronousTestCase):
    """Sizes, ioctl numbers and packing, independent of gcc."""

    def test_args_sizes(self):
        sizes = {(g, abi): ioctl_args_layout(g, abi).size for g in "AC" for abi in ABIS}

        self.assertEqual(sizes[("A", "arm64")], 24)
        self.assertEqual(sizes[("C", "arm64")], 24)
        self.assertEqual(sizes[("A", "arm")], 12)
        self.assertEqual(sizes[("C", "arm")], 16)

    def test_me_id_sizes(self):
        self.assertEqual(me_id_layout("A", "arm64").size, 1088)
        self.assertEqual(me_id_layout("C", "arm64").size, 1080)
        self.assertEqual(me_id_layout("A", "arm").size, 1088)
        self.assertEqual(me_id_layout("C", "arm").size, 1080)

    def test_generation_a_numbers(self):
        numbers = interface("A", "arm64").numbers

        self.assertEqual(numbers["INIT_MIGRATION"], 0xC0185300)
        self.assertEqual(numbers["WRITE_SNAPSHOT"], 0x40185303)
        self.assertEqual(numbers["FINAL_MIGRATION"], 0x40185304)
        self.assertEqual(numbers["INJECT_ME"], 0xC0185306)
        self.assertEqual(numbers["GET_ME_SNAPSHOT"], 0xC018530A)
        self.assertEqual(numbers["GET_ME_ID_ARRAY"], 0x8018530B)

    def test_capsule_numbers(self):
        numbers = interface("C", "arm64").numbers

        self.assertEqual(numbers["READ_SNAPSHOT"], 0xC0185301)
        self.assertEqual(numbers["WRITE_SNAPSHOT"], 0x40185302)
        self.assertEqual(numbers["SHUTDOWN"], 0x40185303)
        self.assertEqual(numbers["INJECT_CAPSULE"], 0xC0185304)
        self.assertEqual(numbers["START_CAPSULE"], 0xC0185305)
        self.assertEqual(numbers["GET_ME_ID_ARRAY"], 0x80185307)

    def test_arm_numbers_embed_size(self):
        numbers = interface("A", "arm").numbers

        self.assertEqual(numbers["INJECT_ME"], 0xC00C5306)

    def test_args_round_trip(self):
        layout = ioctl_args_layout("C", "arm64")

        packed = layout.pack(buffer=0x7FFF12345678, slotID=-1, capsuleID=7, value=-1)

        self.assertEqual(len(packed), 24)
        self.assertEqual(
            layout.unpack(packed),
            {"buffer": 0x7FFF12345678, "slotID": -1, "capsuleID": 7, "value": -1},
        )

    def test_me_id_name_truncated(self):
        layout = me_id_layout("A", "arm64")

        packed = layout.pack(name="x" * 60)

        self.assertEqual(layout.unpack(packed)["name"], "x" * 39)

    def test_unknown_abi_rejected(self):
        with self.assertRaises(ValueError):
            ioctl_args_layout("A", "x86")

"""An image folder for engine processes under test: the samples, the fault
images of C{tests/images} and a fast-booting image built with
L{tests.fitbuilder}.
"""

import shutil
import tempfile
import time
from pathlib import Path

from tests.engineprocess import SAMPLES_DIR
from tests.fitbuilder import build_fit, build_me_dtb

FAULT_IMAGES_DIR = Path(__file__).resolve().parent / "images"

#: Milliseconds the fast image takes to boot.
FAST_BOOT_MS = 100


def make_image_folder(prefix: str = "emiso-images-") -> Path:
    """
    Create a temporary image folder; the caller removes it.

    It holds C{refso3-sim} and C{blinky-sim}, every C{tests/images/*.itb}
    (C{slowboot}, C{crasher}, C{exiter}, C{stubborn}, C{hang-finalize},
    C{bigmem}) and C{fast}, an 8 MiB ME that boots in L{FAST_BOOT_MS} ms.
    """
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    for source in [*SAMPLES_DIR.glob("*.itb"), *FAULT_IMAGES_DIR.glob("*.itb")]:
        shutil.copyfile(source, folder / source.name)
    fast = build_fit(
        description="Fast test image: boots in 100 ms",
        me_dtb=build_me_dtb(me_name="SOO.fast", domain_size=8 * 1024 * 1024),
        root_props={"emiso,sim-boot-delay-ms": FAST_BOOT_MS},
    )
    (folder / "fast.itb").write_bytes(fast)
    return folder


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.1):
    """
    Call C{predicate} until it returns a true value or C{timeout} seconds
    pass, and return its last value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)

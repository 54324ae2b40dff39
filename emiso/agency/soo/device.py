"""The agency's character device C{/dev/soo/core}, behind a small interface.

L{IDevice} is all the SOO backends need: open the device, send one ioctl
with a mutable argument buffer, close it. L{SooDevice} is the real device;
the tests substitute a fake that models the kernel.
"""

import ctypes
import fcntl
import os

from zope.interface import Attribute, Interface, implementer

#: The agency's device node (char major 126, created with mknod by the
#: board's start-up scripts, not by udev).
DEFAULT_DEVICE = "/dev/soo/core"


class DeviceError(Exception):
    """The device cannot be opened or an ioctl failed at the system call."""


class IDevice(Interface):
    """The agency device of a smart object."""

    path = Attribute("The device path, for messages.")

    def open():
        """
        Open the device.

        @raise DeviceError: the device is missing or cannot be opened.
        """

    def ioctl(request, argument):
        """
        Send one ioctl whose argument is the structure in C{argument}.

        @param request: the ioctl request number.
        @param argument: a C{bytearray} holding the packed
            C{agency_ioctl_args_t}; the kernel's copy-back lands in it.
            Pointers inside it must stay valid until the call returns.
        @return: the system call's return value.
        @raise DeviceError: the system call failed.
        """

    def close():
        """Close the device; calling it twice is harmless."""


@implementer(IDevice)
class SooDevice:
    """
    The real C{/dev/soo/core}, driven with C{fcntl.ioctl}.

    @param path: the device node.
    """

    def __init__(self, path: str = DEFAULT_DEVICE) -> None:
        self.path = path
        self._fd: int | None = None

    def open(self) -> None:
        if self._fd is not None:
            return
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DeviceError(
                f"the agency device {self.path} does not exist: is this a SOO "
                "smart object with the agency kernel, and was the node created "
                f"(mknod {self.path} c 126 0)?"
            ) from None
        except OSError as error:
            raise DeviceError(
                f"cannot open the agency device {self.path}: {error.strerror}"
            ) from None

    def ioctl(self, request: int, argument: bytearray) -> int:
        if self._fd is None:
            raise DeviceError(f"the agency device {self.path} is not open")
        try:
            # mutate_flag=True: the kernel writes into the same buffer, which
            # fcntl passes by address without copying.
            return fcntl.ioctl(self._fd, request, argument, True)
        except OSError as error:
            raise DeviceError(
                f"ioctl {request:#010x} on {self.path} failed: {error.strerror}"
            ) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class UserBuffers:
    """
    User memory that ioctl arguments point to, kept alive for one call.

    The kernel reads and writes these buffers through the addresses packed
    into C{agency_ioctl_args_t}, so they must not be freed or moved while
    the ioctl runs. Use one instance per call, as a context manager.
    """

    def __init__(self) -> None:
        self._buffers: list = []

    def __enter__(self) -> "UserBuffers":
        return self

    def __exit__(self, *exc_info) -> None:
        self._buffers.clear()

    def allocate(self, size: int) -> tuple[int, ctypes.Array]:
        """Return the address of a new zeroed buffer of C{size} bytes, and the buffer."""
        buffer = ctypes.create_string_buffer(max(size, 1))
        self._buffers.append(buffer)
        return ctypes.addressof(buffer), buffer

    def copy(self, data: bytes) -> int:
        """Return the address of a new buffer holding C{data}."""
        address, buffer = self.allocate(len(data))
        ctypes.memmove(buffer, data, len(data))
        return address

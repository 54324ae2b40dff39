"""Parse U-Boot FIT images (.itb) that carry an SO3 Mobile Entity (ME).

The FIT and the ME device tree embedded in its C{fdt} image node are both
flattened device trees, read with the C{fdt} library.
"""

from __future__ import annotations

import os
import struct

import attrs
import fdt
from fdt.items import Node, PropBytes, Property, PropStrings, PropWords

from emiso.errors import InvalidImage

__all__ = [
    "FitImage",
    "FitNode",
    "MAX_FIT_SIZE",
    "MeDescriptor",
    "parse_fit",
    "read_fit_file",
]

# The SOO hypervisor (AVZ) copies an ITB into an 8 MB heap and expects ITBs
# below 2 MB. The 64 MiB limit leaves room for QEMU images with a root file
# system and bounds the memory that parsing a rejected upload takes.
MAX_FIT_SIZE = 64 * 1024 * 1024

# Image node types that carry the ME's kernel: "kernel" is the U-Boot type,
# SOO generation A writes "ME" and generation C writes "guest".
KERNEL_TYPES = frozenset({"kernel", "me", "guest"})

VENDOR_PREFIX = "emiso,"

# Types of the simulated-agency fault properties. Other "emiso,*"
# properties are decoded from their length (see _guess_value).
_VENDOR_TYPES = {
    "sim-boot-delay-ms": int,
    "sim-crash-after-ms": int,
    "sim-exit-after-ms": int,
    "sim-heartbeat-ms": int,
    "sim-refuse-migration": bool,
    "sim-hang": str,
}

_DTB_MAGIC = 0xD00DFEED
_DTB_HEADER_SIZE = 40


@attrs.frozen
class FitNode:
    """One node under C{/images} of a FIT."""

    name: str
    description: str
    type: str
    arch: str
    os: str
    compression: str
    data_size: int
    load: int | None
    entry: int | None


@attrs.frozen
class MeDescriptor:
    """The C{/ME} node of an ME device tree."""

    me_name: str
    spid: int
    domain_size: int  # bytes
    me_shortdesc: str
    spadcaps: int | None


@attrs.frozen
class FitImage:
    """The parts of a FIT image the engine uses."""

    description: str
    timestamp: int | None  # seconds since the epoch
    images: tuple[FitNode, ...]
    me: MeDescriptor | None
    vendor: dict = attrs.field(factory=dict)

    def kernel(self) -> FitNode | None:
        """
        Return the first image node that contains a kernel (type kernel, ME or
        guest), or None.
        """
        for node in self.images:
            if node.type.lower() in KERNEL_TYPES:
                return node
        return None


def read_fit_file(path: str) -> FitImage:
    """
    Read and parse a FIT file. This blocks, so call it off the reactor thread.

    @raise InvalidImage: the file is larger than L{MAX_FIT_SIZE} or is not a
        valid ME image.
    @raise OSError: the file cannot be read.
    """
    with open(path, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        if size > MAX_FIT_SIZE:
            raise InvalidImage(
                f"invalid image {os.path.basename(path)!r}: {size} bytes is larger "
                f"than the maximum FIT size of {MAX_FIT_SIZE} bytes"
            )
        data = stream.read(MAX_FIT_SIZE + 1)
    return parse_fit(data)


def parse_fit(data: bytes) -> FitImage:
    """
    Parse a FIT image and the ME device tree in its C{fdt} image node.

    @raise InvalidImage: the data is not a device tree, or lacks C{/images},
        the C{fdt} image node, or the C{/ME} node and its C{me_name},
        C{spid} and C{domain-size} properties.
    """
    data = bytes(data)
    if len(data) > MAX_FIT_SIZE:
        raise InvalidImage(
            f"invalid FIT image: {len(data)} bytes is larger than the maximum "
            f"FIT size of {MAX_FIT_SIZE} bytes"
        )
    tree = _parse_device_tree(data, "FIT image")
    root = tree.root

    images_node = root.get_subnode("images")
    if images_node is None:
        raise InvalidImage("invalid FIT image: missing /images node")
    if not images_node.nodes:
        raise InvalidImage("invalid FIT image: /images has no image node")

    images = tuple(_read_image_node(node) for node in images_node.nodes)
    me_node = _read_me_node(data, tree, images_node)
    vendor = _read_vendor_properties(me_node)
    vendor.update(_read_vendor_properties(root))
    return FitImage(
        description=_optional_string(root, "description"),
        timestamp=_optional_int(root, "timestamp"),
        images=images,
        me=_read_me_descriptor(me_node),
        vendor=vendor,
    )


def image_data(data: bytes, name: str) -> bytes:
    """
    Return the data of the image node C{/images/NAME} of a FIT image, inline
    or stored after the tree (C{mkimage -E}).

    @raise InvalidImage: the data is not a FIT image or has no such node.
    """
    data = bytes(data)
    tree = _parse_device_tree(data, "FIT image")
    images_node = tree.root.get_subnode("images")
    node = images_node.get_subnode(name) if images_node is not None else None
    if node is None:
        raise InvalidImage(f"invalid FIT image: missing /images/{name} node")
    return _image_data(data, tree, node)


def _parse_device_tree(data: bytes, subject: str) -> fdt.FDT:
    if len(data) < _DTB_HEADER_SIZE:
        raise InvalidImage(
            f"invalid {subject}: {len(data)} bytes is too short for a device tree"
        )
    magic, total_size = struct.unpack_from(">II", data)
    if magic != _DTB_MAGIC:
        raise InvalidImage(
            f"invalid {subject}: not a device tree (magic 0x{magic:08x}, "
            f"expected 0x{_DTB_MAGIC:08x})"
        )
    if total_size > len(data):
        raise InvalidImage(
            f"invalid {subject}: truncated device tree ({len(data)} bytes, "
            f"header says {total_size})"
        )
    # NOTE: fdt 0.3.3 checks every new node and property against its
    # siblings, so a crafted tree with many thousands of siblings parses in
    # quadratic time. MAX_FIT_SIZE bounds that cost but does not remove it.
    try:
        tree = fdt.parse_dtb(data[:total_size])
    except Exception as error:  # the library raises bare Exception
        raise InvalidImage(f"invalid {subject}: malformed device tree: {error}")
    if tree.root is None:
        raise InvalidImage(f"invalid {subject}: device tree has no root node")
    return tree


def _read_image_node(node: Node) -> FitNode:
    where = f"/images/{node.name}"
    return FitNode(
        name=node.name,
        description=_optional_string(node, "description", where),
        type=_optional_string(node, "type", where),
        arch=_optional_string(node, "arch", where),
        os=_optional_string(node, "os", where),
        compression=_optional_string(node, "compression", where) or "none",
        data_size=_image_data_size(node),
        load=_optional_int(node, "load", where),
        entry=_optional_int(node, "entry", where),
    )


def _image_data_size(node: Node) -> int:
    prop = node.get_property("data")
    if prop is not None:
        return len(_raw_value(prop))
    # "mkimage -E" stores the data after the tree and writes its size.
    return _optional_int(node, "data-size", f"/images/{node.name}") or 0


def _image_data(data: bytes, tree: fdt.FDT, node: Node) -> bytes:
    where = f"/images/{node.name}"
    prop = node.get_property("data")
    if prop is not None:
        return _raw_value(prop)
    size = _optional_int(node, "data-size", where)
    position = _optional_int(node, "data-position", where)
    offset = _optional_int(node, "data-offset", where)
    if size is None or (position is None and offset is None):
        raise InvalidImage(f"invalid FIT image: {where} has no data")
    if position is None:
        # External data starts at the end of the tree, aligned to 4 bytes.
        position = ((tree.header.total_size + 3) & ~3) + offset
    if position + size > len(data):
        raise InvalidImage(
            f"invalid FIT image: data of {where} ends past the end of the file"
        )
    return data[position : position + size]


def _read_me_node(data: bytes, tree: fdt.FDT, images_node: Node) -> Node:
    fdt_node = images_node.get_subnode("fdt")
    if fdt_node is None:
        raise InvalidImage(
            "invalid FIT image: missing image node /images/fdt (the ME device tree)"
        )
    compression = _optional_string(fdt_node, "compression", "/images/fdt")
    if compression not in ("", "none"):
        raise InvalidImage(
            f"invalid FIT image: /images/fdt is compressed ({compression}); "
            "the ME device tree must be uncompressed"
        )
    me_tree = _parse_device_tree(
        _image_data(data, tree, fdt_node), "ME device tree in /images/fdt"
    )
    me_node = me_tree.root.get_subnode("ME")
    if me_node is None:
        raise InvalidImage(
            "invalid FIT image: the device tree in /images/fdt has no /ME node"
        )
    return me_node


def _read_me_descriptor(me_node: Node) -> MeDescriptor:
    for name in ("me_name", "spid", "domain-size"):
        if me_node.get_property(name) is None:
            raise InvalidImage(
                f"invalid FIT image: /ME node of the ME device tree has no {name}"
            )
    domain_size = _optional_int(me_node, "domain-size", "/ME")
    if domain_size == 0:
        raise InvalidImage("invalid FIT image: /ME domain-size is 0")
    return MeDescriptor(
        me_name=_optional_string(me_node, "me_name", "/ME"),
        spid=_optional_int(me_node, "spid", "/ME"),
        domain_size=domain_size,
        me_shortdesc=_optional_string(me_node, "me_shortdesc", "/ME"),
        spadcaps=_optional_int(me_node, "spadcaps", "/ME"),
    )


def _read_vendor_properties(node: Node) -> dict:
    """
    Decode the C{emiso,*} properties of a node, keyed by name without the
    prefix.
    """
    where = "/" if node.name == "/" else f"/{node.name}"
    vendor = {}
    for prop in node.props:
        if not prop.name.startswith(VENDOR_PREFIX):
            continue
        key = prop.name[len(VENDOR_PREFIX) :]
        expected = _VENDOR_TYPES.get(key)
        if expected is bool:
            vendor[key] = _flag_value(prop, where)
        elif expected is int:
            vendor[key] = _int_value(prop, where)
        elif expected is str:
            vendor[key] = _string_value(prop, where)
        else:
            vendor[key] = _guess_value(prop)
    return vendor


def _raw_value(prop: Property) -> bytes:
    """
    Return the bytes of a property as stored in the tree.

    The library picks the class from the bytes: PropStrings only for
    non-empty NUL-terminated printable strings, so joining them back is exact.
    """
    if isinstance(prop, PropStrings):
        return b"".join(text.encode("ascii") + b"\0" for text in prop.data)
    if isinstance(prop, PropWords):
        return struct.pack(f">{len(prop.data)}I", *prop.data)
    if isinstance(prop, PropBytes):
        return bytes(prop.data)
    return b""


def _optional_string(node: Node, name: str, where: str = "/") -> str:
    prop = node.get_property(name)
    if prop is None:
        return ""
    return _string_value(prop, where)


def _optional_int(node: Node, name: str, where: str = "/") -> int | None:
    prop = node.get_property(name)
    if prop is None:
        return None
    return _int_value(prop, where)


def _string_value(prop: Property, where: str) -> str:
    raw = _raw_value(prop)
    if not raw.endswith(b"\0"):
        raise InvalidImage(
            f"invalid FIT image: property {prop.name} of {where} is not a string"
        )
    return raw[: raw.index(b"\0")].decode("utf-8", errors="replace")


def _int_value(prop: Property, where: str) -> int:
    """Decode one u32 cell, or a u64 written as two big-endian cells."""
    raw = _raw_value(prop)
    if len(raw) not in (4, 8):
        raise InvalidImage(
            f"invalid FIT image: property {prop.name} of {where} is not "
            f"a 32-bit or 64-bit integer ({len(raw)} bytes)"
        )
    return int.from_bytes(raw, "big")


def _flag_value(prop: Property, where: str) -> bool:
    raw = _raw_value(prop)
    if raw:
        raise InvalidImage(
            f"invalid FIT image: property {prop.name} of {where} must be empty"
        )
    return True


def _guess_value(prop: Property) -> str | int | bool:
    raw = _raw_value(prop)
    if not raw:
        return True
    if isinstance(prop, PropStrings):
        return prop.data[0]
    if len(raw) in (4, 8):
        return int.from_bytes(raw, "big")
    return raw.hex()

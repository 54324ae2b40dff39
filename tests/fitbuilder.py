"""Build FIT images in memory with the C{fdt} library, so tests can make
valid images and variants with a part missing without running mkimage.
"""

from __future__ import annotations

import fdt
from fdt.items import Node

# Marks a property that the built tree must not contain.
OMIT = object()

DEFAULT_SPID = 0x0100000000000009

PAYLOAD = b"Payload of a test image for the EMISO simulated agency.\n"


def u64_cells(value: int) -> list[int]:
    """Split a 64-bit value into the two big-endian u32 cells of a DTB."""
    return [value >> 32, value & 0xFFFFFFFF]


def build_me_dtb(
    me_name="SOO.fitbuilder",
    spid=DEFAULT_SPID,
    domain_size=0x1000000,
    me_shortdesc="ME built by tests.fitbuilder",
    spadcaps=OMIT,
    me_node=True,
    extra: dict | None = None,
) -> bytes:
    """
    Build an ME device tree with a C{/ME} node.

    Each property argument is a Python value for L{fdt.items.Node.set_property}
    (C{spid} and C{spadcaps} ints become two cells), or L{OMIT} to leave the
    property out. C{me_node=False} builds a tree without C{/ME}.
    """
    tree = _new_tree()
    tree.root.set_property("model", "ME device tree built by tests")
    if not me_node:
        return tree.to_dtb(version=17)
    node = Node("ME")
    tree.root.append(node)
    values = {
        "me_name": me_name,
        "me_shortdesc": me_shortdesc,
        "spid": u64_cells(spid) if isinstance(spid, int) else spid,
        "domain-size": domain_size,
        "spadcaps": u64_cells(spadcaps) if isinstance(spadcaps, int) else spadcaps,
    }
    values.update(extra or {})
    _set_properties(node, values)
    return tree.to_dtb(version=17)


def build_fit(
    description="FIT built by tests.fitbuilder for the EMISO simulated agency",
    timestamp=1767225600,
    me_dtb: bytes | None = None,
    kernel_data=PAYLOAD,
    kernel_props: dict | None = None,
    fdt_props: dict | None = None,
    root_props: dict | None = None,
    images_node=True,
    fdt_node=True,
    kernel_node=True,
    external_fdt=False,
) -> bytes:
    """
    Build a FIT image shaped like the SOO ones: image nodes C{so3} (type ME)
    and C{fdt} (the ME device tree).

    @param root_props: extra root properties, e.g. C{{"emiso,sim-hang": "finalize"}}.
    @param kernel_props: properties that replace or, with L{OMIT}, remove
        those of the C{so3} node. C{fdt_props} does the same for C{fdt}.
    @param external_fdt: store the ME device tree after the tree with
        C{data-offset} and C{data-size}, as C{mkimage -E} does.
    """
    if me_dtb is None:
        me_dtb = build_me_dtb()
    tree = _new_tree()
    _set_properties(
        tree.root,
        {"description": description, "timestamp": timestamp, "#address-cells": 1},
    )
    _set_properties(tree.root, root_props or {})
    if not images_node:
        return tree.to_dtb(version=17)

    images = Node("images")
    tree.root.append(images)
    if kernel_node:
        kernel = Node("so3")
        images.append(kernel)
        kernel_values = {
            "description": "Test kernel (text payload)",
            "data": kernel_data,
            "type": "ME",
            "arch": "arm64",
            "os": "linux",
            "compression": "none",
        }
        kernel_values.update(kernel_props or {})
        _set_properties(kernel, kernel_values)
    if fdt_node:
        device_tree = Node("fdt")
        images.append(device_tree)
        fdt_values = {
            "description": "ME device tree",
            "type": "flat_dt",
            "arch": "arm64",
            "compression": "none",
        }
        if external_fdt:
            fdt_values.update({"data-offset": 0, "data-size": len(me_dtb)})
        else:
            fdt_values["data"] = me_dtb
        fdt_values.update(fdt_props or {})
        _set_properties(device_tree, fdt_values)

    blob = tree.to_dtb(version=17)
    if external_fdt:
        blob += b"\0" * (-len(blob) % 4) + me_dtb
    return blob


def _new_tree() -> fdt.FDT:
    # fdt.FDT's default "entries" list is shared between instances.
    return fdt.FDT(entries=[])


def _set_properties(node: Node, values: dict) -> None:
    for name, value in values.items():
        if value is OMIT:
            node.remove_property(name)
        elif value is True:
            node.set_property(name, None)
        else:
            node.set_property(name, value)

"""Binary layouts of the SOO agency ioctl interface, for 64-bit and 32-bit ARM.

The C declarations come from the agency's user-space header C{soo/uapi/soo.h}
and C{me_access.h}:

    typedef struct {            /* generation A */
        void *buffer;
        int slotID;
        long value;
    } agency_ioctl_args_t;

    typedef struct {            /* capsule generation */
        void *buffer;
        int slotID;
        unsigned int capsuleID;
        long value;
    } agency_ioctl_args_t;

    typedef struct {
        uint32_t slotID;
        ME_state_t state;       /* an enum, 4 bytes */
        uint64_t spid;
        uint64_t spadcaps;      /* generation A only */
        char name[40];
        char shortdesc[1024];
    } ME_id_t;

L{Layout} computes the offsets with the C alignment rules of the ABI
(aarch64 LP64 or ARM EABI ILP32, both little endian). The tests compare
them with what gcc computes for the same declarations.
"""

import struct

import attrs

#: ABI names accepted by C{--abi}.
ABIS = ("arm64", "arm")

#: ME slots 2 to 6; arrays from the kernel have one entry per slot, index 0
#: for slot 2.
FIRST_SLOT = 2
MAX_ME_DOMAINS = 5
SLOTS = tuple(range(FIRST_SLOT, FIRST_SLOT + MAX_ME_DOMAINS))

ME_NAME_SIZE = 40
ME_SHORTDESC_SIZE = 1024

#: Kernel generations: "A" is the ME/migration interface, "C" the capsule one.
GENERATIONS = ("A", "C")

#: C{ME_state_t} values by generation, in enum order.
ME_STATES = {
    "A": (
        "booting",
        "preparing",
        "living",
        "suspended",
        "migrating",
        "dormant",
        "killed",
        "terminated",
        "dead",
    ),
    "C": (
        "stopped",
        "living",
        "suspended",
        "hibernate",
        "resuming",
        "awakened",
        "killed",
        "terminated",
        "dead",
    ),
}

# (size, alignment) of the C types used here, per ABI.
_TYPES = {
    "arm64": {"ptr": (8, 8), "long": (8, 8), "int": (4, 4), "u32": (4, 4),
              "u64": (8, 8)},
    "arm": {"ptr": (4, 4), "long": (4, 4), "int": (4, 4), "u32": (4, 4),
            "u64": (8, 8)},
}

# struct format characters (little endian, standard sizes) per C type and size.
_FORMATS = {
    ("ptr", 8): "Q", ("ptr", 4): "I",
    ("long", 8): "q", ("long", 4): "i",
    ("int", 4): "i", ("u32", 4): "I", ("u64", 8): "Q",
}

# Linux generic ioctl encoding (asm-generic/ioctl.h, also used by arm and
# arm64): bits 0-7 number, 8-15 type, 16-29 argument size, 30-31 direction.
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2
_IOC_MAGIC = ord("S")


@attrs.frozen
class Field:
    """One member of a C structure: its name, C type, element count and offset."""

    name: str
    ctype: str
    count: int
    offset: int
    size: int


@attrs.frozen
class Layout:
    """
    A C structure laid out for one ABI, with a C{struct} format that packs it.
    """

    name: str
    fields: tuple[Field, ...]
    size: int
    format: str

    def offset(self, name: str) -> int:
        """Return the byte offset of the member C{name}."""
        return self.field(name).offset

    def field(self, name: str) -> Field:
        """Return the member C{name}."""
        for field in self.fields:
            if field.name == name:
                return field
        raise KeyError(f"{self.name} has no member {name!r}")

    def pack(self, **values) -> bytes:
        """Pack the members (missing ones are zero) into C{size} bytes."""
        ordered = []
        for field in self.fields:
            value = values.pop(field.name, None)
            if field.ctype == "char":
                ordered.append(_encode_chars(value or b"", field.count, field.name))
            else:
                ordered.append(0 if value is None else value)
        if values:
            raise TypeError(f"{self.name} has no member(s) {sorted(values)}")
        return struct.pack(self.format, *ordered)

    def unpack(self, data: bytes, offset: int = 0) -> dict:
        """Unpack one structure at C{offset}; char arrays become C{str}."""
        raw = struct.unpack_from(self.format, data, offset)
        values = {}
        for field, value in zip(self.fields, raw):
            if field.ctype == "char":
                value = value.split(b"\0", 1)[0].decode("utf-8", "replace")
            values[field.name] = value
        return values


def build_layout(name: str, members: list[tuple[str, str, int]], abi: str) -> Layout:
    """
    Lay out C{members} (name, C type, count) with the C rules of C{abi}:
    each member at the next multiple of its alignment, the size rounded up
    to the largest alignment.
    """
    types = _types(abi)
    offset = 0
    largest = 1
    fields = []
    parts = ["<"]
    for member, ctype, count in members:
        size, alignment = (1, 1) if ctype == "char" else types[ctype]
        padding = -offset % alignment
        if padding:
            parts.append(f"{padding}x")
        offset += padding
        fields.append(Field(member, ctype, count, offset, size * count))
        parts.append(f"{count}s" if ctype == "char" else _FORMATS[(ctype, size)])
        offset += size * count
        largest = max(largest, alignment)
    tail = -offset % largest
    if tail:
        parts.append(f"{tail}x")
    total = offset + tail
    layout = Layout(name, tuple(fields), total, "".join(parts))
    if struct.calcsize(layout.format) != total:
        raise AssertionError(f"{name}: format {layout.format} is not {total} bytes")
    return layout


def ioctl_args_layout(generation: str, abi: str) -> Layout:
    """Return the layout of C{agency_ioctl_args_t} for a kernel generation."""
    members = [("buffer", "ptr", 1), ("slotID", "int", 1)]
    if _generation(generation) == "C":
        members.append(("capsuleID", "u32", 1))
    members.append(("value", "long", 1))
    return build_layout("agency_ioctl_args_t", members, abi)


def me_id_layout(generation: str, abi: str) -> Layout:
    """Return the layout of C{ME_id_t} for a kernel generation."""
    members = [("slotID", "u32", 1), ("state", "u32", 1), ("spid", "u64", 1)]
    if _generation(generation) == "A":
        members.append(("spadcaps", "u64", 1))
    members += [("name", "char", ME_NAME_SIZE), ("shortdesc", "char", ME_SHORTDESC_SIZE)]
    return build_layout("ME_id_t", members, abi)


def ioc(direction: int, number: int, size: int) -> int:
    """Encode an ioctl request number like the Linux C{_IOC} macro, type 'S'."""
    if not 0 <= size < (1 << 14):
        raise ValueError(f"ioctl argument size {size} does not fit in 14 bits")
    return (direction << 30) | (size << 16) | (_IOC_MAGIC << 8) | number


# Command numbers and directions of each generation's ioctls
# (_IOW = write, _IOR = read, _IOWR = both, seen from user space).
_COMMANDS = {
    "A": {
        "INIT_MIGRATION": (0, _IOC_READ | _IOC_WRITE),
        "GET_ME_FREE_SLOT": (1, _IOC_READ | _IOC_WRITE),
        "READ_SNAPSHOT": (2, _IOC_READ | _IOC_WRITE),
        "WRITE_SNAPSHOT": (3, _IOC_WRITE),
        "FINAL_MIGRATION": (4, _IOC_WRITE),
        "FORCE_TERMINATE": (5, _IOC_WRITE),
        "INJECT_ME": (6, _IOC_READ | _IOC_WRITE),
        "GET_ME_ID": (7, _IOC_READ | _IOC_WRITE),
        "GET_UPGRADE_IMG": (8, _IOC_READ),
        "STORE_VERSIONS": (9, _IOC_WRITE),
        "GET_ME_SNAPSHOT": (10, _IOC_READ | _IOC_WRITE),
        "GET_ME_ID_ARRAY": (11, _IOC_READ),
        "BLACKLIST_SOO": (12, _IOC_WRITE),
    },
    "C": {
        "READ_SNAPSHOT": (1, _IOC_READ | _IOC_WRITE),
        "WRITE_SNAPSHOT": (2, _IOC_WRITE),
        "SHUTDOWN": (3, _IOC_WRITE),
        "INJECT_CAPSULE": (4, _IOC_READ | _IOC_WRITE),
        "START_CAPSULE": (5, _IOC_READ | _IOC_WRITE),
        "GET_ME_ID": (6, _IOC_READ | _IOC_WRITE),
        "GET_ME_ID_ARRAY": (7, _IOC_READ),
    },
}


def ioctl_numbers(generation: str, abi: str) -> dict[str, int]:
    """
    Return the ioctl request numbers of a kernel generation, by command name.

    The numbers embed the size of C{agency_ioctl_args_t}, so they differ
    between 64-bit and 32-bit ARM.
    """
    size = ioctl_args_layout(generation, abi).size
    return {
        name: ioc(direction, number, size)
        for name, (number, direction) in _COMMANDS[_generation(generation)].items()
    }


@attrs.frozen
class Interface:
    """Everything the driver packs and unpacks for one generation and ABI."""

    generation: str
    abi: str
    args: Layout
    me_id: Layout
    numbers: dict[str, int]
    states: tuple[str, ...]

    def state_name(self, value: int) -> str:
        """Return the name of an C{ME_state_t} value."""
        if 0 <= value < len(self.states):
            return self.states[value]
        return f"unknown({value})"

    def state_value(self, name: str) -> int:
        """Return the C{ME_state_t} value of a state name."""
        return self.states.index(name)


def interface(generation: str, abi: str) -> Interface:
    """Build the L{Interface} of a kernel generation for an ABI."""
    generation = _generation(generation)
    return Interface(
        generation=generation,
        abi=abi,
        args=ioctl_args_layout(generation, abi),
        me_id=me_id_layout(generation, abi),
        numbers=ioctl_numbers(generation, abi),
        states=ME_STATES[generation],
    )


def _types(abi: str) -> dict:
    try:
        return _TYPES[abi]
    except KeyError:
        raise ValueError(f"unknown ABI {abi!r}; expected one of {', '.join(ABIS)}")


def _generation(generation: str) -> str:
    if generation not in GENERATIONS:
        raise ValueError(
            f"unknown kernel generation {generation!r}; expected one of "
            f"{', '.join(GENERATIONS)}"
        )
    return generation


def _encode_chars(value, count: int, name: str) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    # Keep room for the terminating NUL, as the kernel copies C strings.
    return data[: count - 1]

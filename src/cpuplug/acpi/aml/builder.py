"""Writing AML: the node classes plus the ASL macros that are not AML themselves.

Build a table the way its ASL reads::

    from cpuplug.acpi.aml.builder import *
    dev = Device("\\_SB.AGNT", (
        Name("_HID", String("CPAG0001")),
        Name("_CRS", ResourceTemplate(Memory32Fixed(0x0A00_0000, 0x1000))),
    ))
    block = DefinitionBlock("DSDT", (dev,), revision=2, ids=TableIds(oem_id="CPUPLG"))
    table_bytes = block.encode()

Every node class of :mod:`cpuplug.acpi.aml.nodes` is re-exported here (that module
explains the model: frozen dataclasses that encode themselves and that the decoder
and interpreter share). This module adds what ASL has and AML has not:
``EisaId``, ``ResourceTemplate``, ``LNotEqual``/``LLessEqual``/``LGreaterEqual``,
``Offset`` in field lists (:func:`field_layout`), ``Zero``/``One``/``Ones``, and
:class:`DefinitionBlock` (the table header around a term list).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from cpuplug.acpi.aml import nodes as _nodes
from cpuplug.acpi.aml.nodes import *  # noqa: F403 - this module is the public face of the nodes
from cpuplug.acpi.aml.nodes import (
    ONES,
    FieldElement,
    Integer,
    LEqual,
    LGreater,
    LLess,
    LNot,
    NamedField,
    Node,
    ReservedField,
)
from cpuplug.acpi.aml.resources import (
    IO,
    Descriptor,
    EndTag,
    Interrupt,
    Memory32Fixed,
    RawDescriptor,
    encode_resources,
)
from cpuplug.acpi.errors import AmlError
from cpuplug.acpi.tables import Sdt, TableIds

__all__ = [
    *_nodes.__all__,
    "IO",
    "DefinitionBlock",
    "EisaId",
    "EndTag",
    "Interrupt",
    "LGreaterEqual",
    "LLessEqual",
    "LNotEqual",
    "Memory32Fixed",
    "Offset",
    "One",
    "Ones",
    "RawDescriptor",
    "ResourceTemplate",
    "Zero",
    "TableIds",
    "field_layout",
]

Zero = Integer(0)
One = Integer(1)
Ones = Integer(ONES)


def EisaId(text: str) -> Integer:
    """The 32-bit compressed EISA id of ``"PNP0A06"``-style text, as iasl writes it.

    Three upper-case letters (5 bits each, 'A' = 1) and four hex digits, stored
    so that the bytes read in order spell the id (big-endian halves).
    """
    if (
        len(text) != 7
        or not all("A" <= c <= "Z" for c in text[:3])
        or not all(c in "0123456789ABCDEF" for c in text[3:])
    ):
        raise AmlError(f"EisaId needs 3 upper-case letters and 4 hex digits: {text!r}")
    letters = [ord(c) - 0x40 for c in text[:3]]
    mfg = (letters[0] << 10) | (letters[1] << 5) | letters[2]
    product = int(text[3:], 16)
    raw = struct.pack(">HH", mfg, product)
    return Integer(int.from_bytes(raw, "little"))


def eisa_id_text(value: int) -> str:
    """Inverse of :func:`EisaId`: ``0x060AD041`` -> ``"PNP0A06"``."""
    raw = (value & 0xFFFF_FFFF).to_bytes(4, "little")
    mfg, product = struct.unpack(">HH", raw)
    letters = "".join(chr(((mfg >> s) & 0x1F) + 0x40) for s in (10, 5, 0))
    return f"{letters}{product:04X}"


def ResourceTemplate(*descriptors: Descriptor, checksum: bool = False) -> Buffer:  # noqa: F405
    """``ResourceTemplate(){...}``: a Buffer of descriptors closed by an end tag."""
    return Buffer(encode_resources(tuple(descriptors), checksum=checksum))  # noqa: F405


def LNotEqual(left: Node, right: Node) -> LNot:
    """``left != right`` - AML has no opcode for it: LNot(LEqual)."""
    return LNot(LEqual(left, right))


def LLessEqual(left: Node, right: Node) -> LNot:
    """``left <= right`` = LNot(LGreater)."""
    return LNot(LGreater(left, right))


def LGreaterEqual(left: Node, right: Node) -> LNot:
    """``left >= right`` = LNot(LLess)."""
    return LNot(LLess(left, right))


@dataclass(frozen=True, slots=True)
class Offset:
    """ASL ``Offset(byte)`` in a field list; :func:`field_layout` turns it into the
    reserved run that reaches that byte, which is all AML records."""

    byte: int


def field_layout(
    items: Iterable[FieldElement | Offset | tuple[str, int]],
) -> tuple[FieldElement, ...]:
    """Field elements from ASL-like items: ``("CPEN", 1)``, ``Offset(5)``,
    ``ReservedField(3)``, ``AccessField(...)``.

    Offsets become :class:`ReservedField` runs (merged with an adjacent explicit
    reserved run, as iasl does); an Offset behind the current bit position is an
    error, as in iasl.
    """
    out: list[FieldElement] = []
    bit = 0
    for item in items:
        if isinstance(item, tuple):
            item = NamedField(*item)
        if isinstance(item, Offset):
            target = item.byte * 8
            if target < bit:
                raise AmlError(f"Offset({item.byte}) is behind bit {bit} of the field list")
            if target > bit:
                if out and isinstance(out[-1], ReservedField):
                    out[-1] = ReservedField(out[-1].bits + target - bit)
                else:
                    out.append(ReservedField(target - bit))
            bit = target
            continue
        if isinstance(item, NamedField | ReservedField):
            bit += item.bits
        out.append(item)
    return tuple(out)


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True, slots=True)
class DefinitionBlock:
    """A DSDT/SSDT: an AML term list inside the ACPI table header.

    The header itself is :class:`cpuplug.acpi.tables.Sdt`'s (one writer of
    headers and checksums in the project); ``revision`` 1 means 32-bit integers
    for the interpreter, 2 and up 64-bit (ACPI 6.5 §5.2.11.1).
    """

    signature: str
    body: tuple[Node, ...]
    revision: int = 2
    ids: TableIds = field(default_factory=TableIds)

    def __post_init__(self) -> None:
        if not isinstance(self.body, tuple):
            object.__setattr__(self, "body", tuple(self.body))

    def aml(self) -> bytes:
        """The AML after the header."""
        return b"".join(n.encode() for n in self.body)

    def encode(self) -> bytes:
        """The whole table, length and checksum filled in."""
        return Sdt(self.signature, self.aml(), revision=self.revision, ids=self.ids).build()

"""Resource descriptors (ACPI 6.5 §6.4): the bytes inside ``_CRS``/``_PRS`` buffers.

ASL's ``ResourceTemplate(){...}`` is not an AML construct: it compiles to an
ordinary :class:`~cpuplug.acpi.aml.nodes.Buffer` holding a list of descriptors and
an end tag. This module writes those descriptors (VMM side, through
:func:`cpuplug.acpi.aml.builder.ResourceTemplate`) and reads them back
(:func:`parse_resources`, guest side: a guest finds the UART and the agent channel
by evaluating ``_CRS`` and reading the descriptors out of the buffer).

Descriptors we do not model are kept as :class:`RawDescriptor`, so any well-formed
template parses and re-encodes byte for byte; malformed data raises
:class:`~cpuplug.acpi.errors.AmlError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cpuplug.acpi.errors import AmlError

__all__ = [
    "IO",
    "Descriptor",
    "EndTag",
    "Interrupt",
    "Memory32Fixed",
    "RawDescriptor",
    "encode_resources",
    "parse_resources",
]

_END_TAG = 0x79  # small item 0x0F, length 1
_IO = 0x47  # small item 0x08, length 7
_MEMORY32_FIXED = 0x86
_EXTENDED_IRQ = 0x89


@dataclass(frozen=True, slots=True)
class IO:
    """``IO(Decode16|Decode10, min, max, alignment, length)``."""

    minimum: int
    maximum: int
    alignment: int
    length: int
    decode16: bool = True

    def encode(self) -> bytes:
        return struct.pack(
            "<BBHHBB",
            _IO,
            1 if self.decode16 else 0,
            self.minimum,
            self.maximum,
            self.alignment,
            self.length,
        )


@dataclass(frozen=True, slots=True)
class Memory32Fixed:
    """``Memory32Fixed(ReadWrite|ReadOnly, base, length)``."""

    base: int
    length: int
    writeable: bool = True

    def encode(self) -> bytes:
        return struct.pack(
            "<BHBII", _MEMORY32_FIXED, 9, 1 if self.writeable else 0, self.base, self.length
        )


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Extended interrupt descriptor: ``Interrupt(consumer?, Edge|Level,
    ActiveHigh|ActiveLow, Exclusive|Shared){gsi, ...}``. On arm64 the numbers are
    GIC INTIDs (GSIs)."""

    interrupts: tuple[int, ...]
    consumer: bool = True
    edge: bool = False
    active_low: bool = False
    shared: bool = False
    wake: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.interrupts, tuple):
            object.__setattr__(self, "interrupts", tuple(self.interrupts))
        if not 1 <= len(self.interrupts) <= 255:
            raise AmlError("an Interrupt descriptor lists 1 to 255 interrupts")

    @property
    def flags(self) -> int:
        return (
            (1 if self.consumer else 0)
            | (2 if self.edge else 0)
            | (4 if self.active_low else 0)
            | (8 if self.shared else 0)
            | (16 if self.wake else 0)
        )

    def encode(self) -> bytes:
        n = len(self.interrupts)
        return struct.pack(f"<BHBB{n}I", _EXTENDED_IRQ, 2 + 4 * n, self.flags, n, *self.interrupts)


@dataclass(frozen=True, slots=True)
class RawDescriptor:
    """Any other descriptor, kept verbatim (tag byte and all)."""

    data: bytes

    def encode(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class EndTag:
    """The end tag. ``checksum`` 0 means "not checked" and is what iasl and QEMU
    write; any other value must make the whole template sum to zero."""

    checksum: int = 0

    def encode(self) -> bytes:
        return bytes((_END_TAG, self.checksum))


Descriptor = IO | Memory32Fixed | Interrupt | RawDescriptor | EndTag


def encode_resources(descriptors: tuple[Descriptor, ...], *, checksum: bool = False) -> bytes:
    """A template's bytes: the descriptors, then an end tag.

    With ``checksum`` the end tag carries a real checksum (bytes sum to 0 mod 256);
    without it, 0 as iasl writes. A trailing :class:`EndTag` in ``descriptors`` is
    not duplicated.
    """
    body = b"".join(d.encode() for d in descriptors if not isinstance(d, EndTag))
    total = (-(sum(body) + _END_TAG)) & 0xFF if checksum else 0
    return body + EndTag(total).encode()


def parse_resources(data: bytes) -> list[Descriptor]:
    """Parse a resource template (a ``_CRS`` buffer) into descriptors, end tag last.

    Raises :class:`AmlError` naming the byte offset when a descriptor runs past the
    end, the end tag is missing or its non-zero checksum is wrong.
    """
    out: list[Descriptor] = []
    pos = 0
    while pos < len(data):
        tag = data[pos]
        if tag & 0x80:
            if pos + 3 > len(data):
                raise AmlError("truncated large resource descriptor header", offset=pos)
            (length,) = struct.unpack_from("<H", data, pos + 1)
            end = pos + 3 + length
        else:
            end = pos + 1 + (tag & 0x07)
        if end > len(data):
            raise AmlError(f"resource descriptor {tag:#x} runs past the buffer", offset=pos)
        chunk = bytes(data[pos:end])
        if tag == _END_TAG:
            if chunk[1] and sum(data[:end]) & 0xFF:
                raise AmlError("resource template checksum mismatch", offset=pos)
            out.append(EndTag(chunk[1]))
            return out
        out.append(_decode_one(chunk))
        pos = end
    raise AmlError("resource template has no end tag", offset=pos)


def _decode_one(chunk: bytes) -> Descriptor:
    tag = chunk[0]
    if tag == _IO and chunk[1] <= 1:
        _, info, lo, hi, align, length = struct.unpack("<BBHHBB", chunk)
        return IO(lo, hi, align, length, decode16=bool(info & 1))
    if tag == _MEMORY32_FIXED and len(chunk) == 12 and chunk[3] <= 1:
        _, _, info, base, length = struct.unpack("<BHBII", chunk)
        return Memory32Fixed(base, length, writeable=bool(info & 1))
    if tag == _EXTENDED_IRQ and len(chunk) >= 5:
        flags, n = chunk[3], chunk[4]
        if n and len(chunk) == 5 + 4 * n and flags < 0x20:
            return Interrupt(
                struct.unpack_from(f"<{n}I", chunk, 5),
                consumer=bool(flags & 1),
                edge=bool(flags & 2),
                active_low=bool(flags & 4),
                shared=bool(flags & 8),
                wake=bool(flags & 16),
            )
    return RawDescriptor(chunk)

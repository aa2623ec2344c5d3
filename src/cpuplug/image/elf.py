"""Just enough of ELF to build an image: sections, the program interpreter, DT_NEEDED.

The builder has to answer three questions about binaries of the *guest's* architecture,
which the host may not be able to run: which dynamic loader a program asks for
(``PT_INTERP``), which shared libraries it needs (``DT_NEEDED``) and what a kernel
module's ``.modinfo`` section says.  ``readelf`` would answer them, but it is binutils,
which a host need not have; the format is small enough to read here.  Both classes
(32/64-bit) and both byte orders are read, so an aarch64 image builds on an x86_64 host.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cpuplug.image.errors import ImageError

_MAGIC = b"\x7fELF"
_PT_INTERP = 3
_SHT_DYNAMIC = 6
_SHT_NOBITS = 8
_DT_NULL = 0
_DT_NEEDED = 1


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int
    link: int


@dataclass(frozen=True)
class Segment:
    type: int
    offset: int
    filesz: int


class Elf:
    """One ELF file held in memory; raises :class:`ImageError` on anything malformed."""

    def __init__(self, data: bytes, name: str = "ELF file") -> None:
        self.data = data
        self.name = name
        if len(data) < 52 or data[:4] != _MAGIC:
            raise ImageError(f"{name} is not an ELF file")
        cls, order = data[4], data[5]
        if cls not in (1, 2) or order not in (1, 2):
            raise ImageError(f"{name}: unknown ELF class {cls} or byte order {order}")
        self.is64 = cls == 2
        self._end = "<" if order == 1 else ">"
        if self.is64:
            (self.type, self.machine, _, _, phoff, shoff, _, _, phentsize, phnum,
             shentsize, shnum, shstrndx) = self._unpack("HHIQQQIHHHHHH", 16)
        else:
            (self.type, self.machine, _, _, phoff, shoff, _, _, phentsize, phnum,
             shentsize, shnum, shstrndx) = self._unpack("HHIIIIIHHHHHH", 16)
        self.segments = tuple(
            self._segment(phoff + i * phentsize) for i in range(phnum if phoff else 0)
        )
        raw = [self._section(shoff + i * shentsize) for i in range(shnum if shoff else 0)]
        strtab = raw[shstrndx][1] if shstrndx < len(raw) else None
        self.sections = tuple(
            Section(
                self._string_at(strtab.offset, strtab.size, index) if strtab else "",
                s.type, s.offset, s.size, s.link,
            )
            for index, s in raw
        )

    # ------------------------------------------------------------------ what we ask

    def section(self, name: str) -> bytes | None:
        """The bytes of the first section called ``name``; None if there is none."""
        for s in self.sections:
            if s.name == name:
                return b"" if s.type == _SHT_NOBITS else self._slice(s.offset, s.size)
        return None

    @property
    def interpreter(self) -> str | None:
        """The dynamic loader the kernel starts for this program (``PT_INTERP``)."""
        for seg in self.segments:
            if seg.type == _PT_INTERP:
                return self._slice(seg.offset, seg.filesz).split(b"\0", 1)[0].decode()
        return None

    @property
    def needed(self) -> tuple[str, ...]:
        """The sonames in ``DT_NEEDED``, in the file's order (read through the section
        headers, which Debian's stripped binaries keep)."""
        out: list[str] = []
        for s in self.sections:
            if s.type != _SHT_DYNAMIC:
                continue
            if s.link >= len(self.sections):
                raise ImageError(f"{self.name}: .dynamic links to a missing string table")
            strtab = self.sections[s.link]
            fmt, size = ("qQ", 16) if self.is64 else ("iI", 8)
            for off in range(s.offset, s.offset + s.size - size + 1, size):
                tag, val = self._unpack(fmt, off)
                if tag == _DT_NULL:
                    break
                if tag == _DT_NEEDED:
                    out.append(self._string_at(strtab.offset, strtab.size, val))
        return tuple(out)

    # ------------------------------------------------------------------ decoding

    def _unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        full = self._end + fmt
        try:
            return struct.unpack_from(full, self.data, offset)
        except struct.error:
            raise ImageError(f"{self.name}: truncated ELF header at byte {offset:#x}") from None

    def _slice(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(self.data):
            raise ImageError(f"{self.name}: ELF data at byte {offset:#x} runs past the file")
        return self.data[offset : offset + size]

    def _string_at(self, table_offset: int, table_size: int, index: int) -> str:
        table = self._slice(table_offset, table_size)
        if index >= len(table):
            raise ImageError(f"{self.name}: ELF string index {index} outside its table")
        return table[index:].split(b"\0", 1)[0].decode("utf-8", "replace")

    def _segment(self, off: int) -> Segment:
        if self.is64:
            ptype, _, poffset, _, _, filesz, _, _ = self._unpack("IIQQQQQQ", off)
        else:
            ptype, poffset, _, _, filesz, _, _, _ = self._unpack("IIIIIIII", off)
        return Segment(ptype, poffset, filesz)

    def _section(self, off: int) -> tuple[int, Section]:
        """(index of the name in the section-name table, the section without its name)."""
        if self.is64:
            name, stype, _, _, soffset, size, link, _, _, _ = self._unpack("IIQQQQIIQQ", off)
        else:
            name, stype, _, _, soffset, size, link, _, _, _ = self._unpack("IIIIIIIIII", off)
        return name, Section("", stype, soffset, size, link)

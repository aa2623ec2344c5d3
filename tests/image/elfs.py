"""Tiny ELF files built in the tests: a kernel module's ``.modinfo``, a program's
``PT_INTERP`` and ``DT_NEEDED``, in either class and byte order."""

from __future__ import annotations

import struct
from collections.abc import Sequence

PROGBITS, STRTAB, DYNAMIC = 1, 3, 6
PT_INTERP = 3
DT_NEEDED = 1


def make_elf(
    sections: Sequence[tuple[str, int, bytes]] = (),
    *,
    needed: Sequence[str] = (),
    interp: str | None = None,
    is64: bool = True,
    little: bool = True,
    etype: int = 1,
) -> bytes:
    """An ELF file with ``sections`` (name, type, data), plus ``.dynstr``/``.dynamic``
    when ``needed`` is given and ``.interp`` with its ``PT_INTERP`` when ``interp`` is."""
    end = "<" if little else ">"
    secs: list[tuple[str, int, bytes, int]] = [(n, t, d, 0) for n, t, d in sections]
    if interp is not None:
        secs.append((".interp", PROGBITS, interp.encode() + b"\0", 0))
    if needed:
        dynstr = b"\0"
        offsets = []
        for name in needed:
            offsets.append(len(dynstr))
            dynstr += name.encode() + b"\0"
        dynstr_index = len(secs) + 1  # +1: the null section comes first
        secs.append((".dynstr", STRTAB, dynstr, 0))
        fmt = end + ("qQ" if is64 else "iI")
        dynamic = b"".join(struct.pack(fmt, DT_NEEDED, o) for o in offsets)
        dynamic += struct.pack(fmt, 0, 0)
        secs.append((".dynamic", DYNAMIC, dynamic, dynstr_index))
    shstr = b"\0"
    name_offsets = []
    for name, *_ in secs:
        name_offsets.append(len(shstr))
        shstr += name.encode() + b"\0"
    name_offsets.append(len(shstr))
    shstr += b".shstrtab\0"
    secs.append((".shstrtab", STRTAB, shstr, 0))

    ehsize, phentsize, shentsize = (64, 56, 64) if is64 else (52, 32, 40)
    phnum = 1 if interp is not None else 0
    offset = ehsize + phnum * phentsize
    body = b""
    placed = []
    for _, _, data, _ in secs:
        placed.append(offset + len(body))
        body += data + b"\0" * (-len(data) % 8)
    shoff = offset + len(body)
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if little else 2, 1]) + b"\0" * 9
    if is64:
        header = ident + struct.pack(end + "HHIQQQIHHHHHH", etype, 62, 1, 0,
                                     ehsize if phnum else 0, shoff, 0, ehsize, phentsize,
                                     phnum, shentsize, len(secs) + 1, len(secs))
    else:
        header = ident + struct.pack(end + "HHIIIIIHHHHHH", etype, 3, 1, 0,
                                     ehsize if phnum else 0, shoff, 0, ehsize, phentsize,
                                     phnum, shentsize, len(secs) + 1, len(secs))
    phdrs = b""
    if interp is not None:
        i = [n for n, *_ in secs].index(".interp")
        size = len(secs[i][2])
        if is64:
            phdrs = struct.pack(end + "IIQQQQQQ", PT_INTERP, 4, placed[i], 0, 0, size, size, 1)
        else:
            phdrs = struct.pack(end + "IIIIIIII", PT_INTERP, placed[i], 0, 0, size, size, 4, 1)
    shdrs = b"\0" * shentsize
    for (_, stype, data, link), off, name_off in zip(secs, placed, name_offsets, strict=True):
        if is64:
            shdrs += struct.pack(end + "IIQQQQIIQQ", name_off, stype, 0, 0, off, len(data),
                                 link, 0, 1, 0)
        else:
            shdrs += struct.pack(end + "IIIIIIIIII", name_off, stype, 0, 0, off, len(data),
                                 link, 0, 1, 0)
    return header + phdrs + body + shdrs


def make_module(name: str, depends: Sequence[str] = (), *, extra: bytes = b"") -> bytes:
    """A kernel module as far as the builder reads one: a relocatable ELF whose
    ``.modinfo`` names it and its dependencies (NUL padding between strings, as real
    modules have)."""
    info = (
        b"license=GPL\0\0\0" + extra
        + b"depends=" + ",".join(depends).encode() + b"\0"
        + b"name=" + name.encode() + b"\0\0"
    )
    return make_elf([(".text", PROGBITS, b"\x90" * 16), (".modinfo", PROGBITS, info)])

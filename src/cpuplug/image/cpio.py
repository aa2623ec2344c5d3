"""The "newc" cpio format the Linux kernel unpacks an initramfs from: write and read.

Written here rather than by the ``cpio`` program because the format is a 110-byte ASCII
header per entry and the host need not have ``cpio``; and because writing it ourselves
lets a non-root build put device nodes (``/dev/console``) and root-owned files in the
archive, which ``cpio -o`` can only copy from a real file system.

The rules that matter to the kernel's unpacker (``init/initramfs.c``):

- every header and every name/data block starts on a 4-byte boundary;
- a parent directory has to come before its entries (the kernel does not ``mkdir -p``);
- a regular file with ``nlink >= 2`` is taken for a hard link and matched by inode, so
  regular files here always have ``nlink`` 1;
- the archive ends with an entry named ``TRAILER!!!``.

:func:`read_newc` reads the format back; the tests check the writer with it.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cpuplug.image.errors import ImageError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER = 110
_FIELDS = (
    "ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
    "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check",
)


@dataclass(frozen=True)
class Entry:
    """One archive member. ``path`` is relative (no leading ``/``); ``mode`` carries the
    file type bits; ``data`` is a regular file's content (bytes, or a host file read when
    written) or a symlink's target."""

    path: str
    mode: int
    data: bytes | Path = b""
    mtime: int = 0
    uid: int = 0
    gid: int = 0
    rdev: tuple[int, int] = (0, 0)


def _pad(n: int) -> int:
    return -n % 4


class NewcWriter:
    """Streams entries into ``out`` in the order given; :meth:`close` writes the trailer.

    Inode numbers count up from 1; the ``check`` field is 0, as newc (not crc) has it.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 0
        self.written = 0
        """Bytes written so far (the uncompressed archive's size once closed)."""

    def add(self, entry: Entry) -> None:
        self._ino += 1
        self._add(entry, self._ino)

    def close(self) -> None:
        """Write the trailer; the stream itself stays open (it is the caller's)."""
        self._add(Entry(TRAILER, 0), 0)  # inode 0, as GNU cpio writes it

    def _add(self, entry: Entry, ino: int) -> None:
        name = entry.path.encode() + b"\0"
        kind = stat.S_IFMT(entry.mode)
        if kind == stat.S_IFREG:
            size = entry.data.stat().st_size if isinstance(entry.data, Path) else len(entry.data)
        elif kind == stat.S_IFLNK:
            if isinstance(entry.data, Path):
                raise ImageError(f"cpio: symlink {entry.path} needs its target as bytes")
            size = len(entry.data)
        else:
            size = 0
        fields = (
            ino, entry.mode, entry.uid, entry.gid, 2 if kind == stat.S_IFDIR else 1,
            entry.mtime, size, 0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
        )
        self._write(MAGIC + b"".join(b"%08X" % f for f in fields))
        self._write(name + b"\0" * _pad(_HEADER + len(name)))
        if size:
            self._write_data(entry.data, size, entry.path)
            self._write(b"\0" * _pad(size))

    def _write_data(self, data: bytes | Path, size: int, path: str) -> None:
        if isinstance(data, bytes):
            self._write(data)
            return
        copied = 0
        with data.open("rb") as f:
            while chunk := f.read(1 << 20):
                self._write(chunk)
                copied += len(chunk)
        if copied != size:
            raise ImageError(f"cpio: {data} changed size while it was archived as {path}")

    def _write(self, b: bytes) -> None:
        self._out.write(b)
        self.written += len(b)


def read_newc(data: bytes) -> Iterator[Entry]:
    """The entries of a newc archive up to its trailer (file and symlink data as bytes)."""
    pos = 0
    while True:
        header = data[pos : pos + _HEADER]
        if len(header) < _HEADER or header[:6] != MAGIC:
            raise ImageError(f"cpio: no newc header at byte {pos}")
        try:
            f = dict(zip(_FIELDS, (int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)),
                         strict=True))
        except ValueError:
            raise ImageError(f"cpio: header at byte {pos} is not hexadecimal") from None
        name_end = pos + _HEADER + f["namesize"]
        name = data[pos + _HEADER : name_end - 1].decode()
        pos = name_end + _pad(_HEADER + f["namesize"])
        if name == TRAILER:
            return
        body = data[pos : pos + f["filesize"]]
        if len(body) != f["filesize"]:
            raise ImageError(f"cpio: {name} is truncated")
        pos += f["filesize"] + _pad(f["filesize"])
        yield Entry(name, f["mode"], body, f["mtime"], f["uid"], f["gid"],
                    (f["rdevmajor"], f["rdevminor"]))

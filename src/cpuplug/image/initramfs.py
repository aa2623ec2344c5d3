"""The guest's initial file system, built up in memory and written as a gzip'd newc cpio.

Entries are collected first and written at the end, sorted so that every directory
precedes what is in it (the kernel's unpacker needs that) and so that the same content
always gives the same bytes: every entry is owned by root, has the same mtime, and the
gzip header carries no name or time.  A build can then be checked by its hash.
"""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

from cpuplug.image.cpio import Entry, NewcWriter
from cpuplug.image.errors import ImageError

MTIME = 0
"""Every entry's mtime.  The kernel keeps it (``CONFIG_INITRAMFS_PRESERVE_MTIME``); no
guest program depends on it: python's bytecode here is hash-based, not mtime-based."""


class Initramfs:
    """A file tree: guest path -> entry.  Parent directories are implied by their files."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def __contains__(self, guest_path: str) -> bool:
        return _rel(guest_path) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def paths(self) -> list[str]:
        return sorted("/" + p for p in self._entries)

    # ------------------------------------------------------------------ adding

    def directory(self, guest_path: str, mode: int = 0o755) -> None:
        self._put(Entry(_rel(guest_path), stat.S_IFDIR | mode, mtime=MTIME))

    def file(self, guest_path: str, data: bytes | Path, mode: int = 0o644) -> None:
        self._put(Entry(_rel(guest_path), stat.S_IFREG | mode, data, mtime=MTIME))

    def symlink(self, guest_path: str, target: str) -> None:
        self._put(Entry(_rel(guest_path), stat.S_IFLNK | 0o777, target.encode(), mtime=MTIME))

    def char_device(self, guest_path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._put(Entry(_rel(guest_path), stat.S_IFCHR | mode, mtime=MTIME, rdev=(major, minor)))

    def copy(self, guest_path: str, host: Path) -> None:
        """A host file or symlink as it is (a symlink stays a symlink), permissions kept."""
        st = host.lstat()
        if stat.S_ISLNK(st.st_mode):
            self.symlink(guest_path, os.readlink(host))
        elif stat.S_ISREG(st.st_mode):
            self.file(guest_path, host, stat.S_IMODE(st.st_mode) & 0o755)
        elif stat.S_ISDIR(st.st_mode):
            self.directory(guest_path)
        else:
            raise ImageError(f"{host} is neither a file, a symlink nor a directory")

    def _put(self, entry: Entry) -> None:
        old = self._entries.get(entry.path)
        if old is not None and old != entry and not (
            stat.S_ISDIR(old.mode) and stat.S_ISDIR(entry.mode)
        ):
            raise ImageError(f"two different files for /{entry.path} in the initramfs")
        parts = entry.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            there = self._entries.get(parent)
            if there is None:
                self._entries[parent] = Entry(parent, stat.S_IFDIR | 0o755, mtime=MTIME)
            elif not stat.S_ISDIR(there.mode):
                raise ImageError(f"/{parent} is not a directory in the initramfs, so "
                                 f"/{entry.path} cannot go under it")
        if old is None or not stat.S_ISDIR(entry.mode):
            self._entries[entry.path] = entry

    # ------------------------------------------------------------------ writing

    def write(self, path: Path, level: int = 6) -> int:
        """Write the archive, gzip-compressed, to ``path``; the uncompressed size."""
        with path.open("wb") as raw, gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0
        ) as gz:
            writer = NewcWriter(gz)  # type: ignore[arg-type]
            for key in sorted(self._entries, key=lambda p: p.split("/")):
                writer.add(self._entries[key])
            writer.close()
        return writer.written


def _rel(guest_path: str) -> str:
    rel = os.path.normpath("/" + guest_path).lstrip("/")
    if not rel or rel == ".":
        raise ImageError("the initramfs root itself is not an entry")
    return rel

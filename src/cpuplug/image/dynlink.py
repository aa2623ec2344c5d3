"""The dynamic linker's view of a staging root: which files a program needs to start.

An initramfs has no ``/etc/ld.so.cache``, so the guest's ``ld.so`` looks for each
``DT_NEEDED`` soname in its built-in system directories only.  This module searches the
unpacked packages the same way, so every library a program (or a Python extension
module) names is found here or the program is known not to start.  Only what is found
goes into the image: the libc6 package alone is 13 MB, the few libraries python needs
from it under 3 MB.

Paths are always resolved inside the staging root: the packages' absolute symlinks
(``/lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/...``) point into the guest's
file system, never the host's.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from cpuplug.image.elf import Elf
from cpuplug.image.errors import ImageError

_MAX_LINKS = 40


def resolve(root: Path, guest_path: str) -> tuple[list[str], str]:
    """Follow ``guest_path``'s symlinks inside ``root``, as the guest kernel would.

    Returns (every symlink met on the way, the final guest path), all absolute guest
    paths; the final one need not exist.
    """
    links: list[str] = []
    parts = [p for p in guest_path.split("/") if p]
    done = ""
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            done = posixpath.dirname(done)
            continue
        candidate = f"{done}/{part}"
        host = root / candidate.lstrip("/")
        if host.is_symlink():
            hops += 1
            if hops > _MAX_LINKS:
                raise ImageError(f"too many levels of symbolic links resolving {guest_path}")
            links.append(candidate)
            target = str(host.readlink())
            if target.startswith("/"):
                done = ""
            parts = [p for p in target.split("/") if p] + parts
            continue
        done = candidate
    return links, done or "/"


@dataclass
class Linker:
    """Finds sonames as ``ld.so`` does in the guest: its system directories, in order."""

    root: Path
    search: tuple[str, ...]
    """Guest directories, e.g. ``/lib/x86_64-linux-gnu``, ``/usr/lib/x86_64-linux-gnu``."""
    files: dict[str, Path] = field(default_factory=dict)
    """Every guest path chosen so far (libraries, the links leading to them) -> host path."""
    _elves: dict[str, Elf] = field(default_factory=dict)

    def find(self, soname: str) -> str | None:
        """The guest path of ``soname`` (unresolved: the name ld.so opens), or None."""
        for d in self.search:
            _, final = resolve(self.root, f"{d}/{soname}")
            if (self.root / final.lstrip("/")).is_file():
                return f"{d}/{soname}"
        return None

    def elf(self, guest_path: str) -> Elf:
        _, final = resolve(self.root, guest_path)
        if final not in self._elves:
            host = self.root / final.lstrip("/")
            if not host.is_file():
                raise ImageError(f"{guest_path} is not in the unpacked packages")
            self._elves[final] = Elf(host.read_bytes(), guest_path)
        return self._elves[final]

    def add(self, guest_path: str) -> None:
        """Choose ``guest_path`` with the symlinks that lead to it."""
        links, final = resolve(self.root, guest_path)
        for link in links:
            self.files[link] = self.root / link.lstrip("/")
        self.files[final] = self.root / final.lstrip("/")

    def missing(self, guest_path: str) -> list[str]:
        """The sonames ``guest_path`` needs, directly or not, that are nowhere to be found."""
        return [s for s, p in self._closure(guest_path).items() if p is None]

    def require(self, guest_path: str, *, program: bool = False) -> None:
        """Choose ``guest_path`` and everything it needs to load (for a program also its
        ``PT_INTERP`` loader); a soname that cannot be found is an error."""
        closure = self._closure(guest_path)
        absent = [s for s, p in closure.items() if p is None]
        if absent:
            raise ImageError(
                f"{guest_path} needs {', '.join(absent)}, which none of the image's "
                "packages provides"
            )
        self.add(guest_path)
        for path in closure.values():
            assert path is not None
            self.add(path)
        if program:
            interp = self.elf(guest_path).interpreter
            if interp is None:
                raise ImageError(f"{guest_path} names no program interpreter (PT_INTERP)")
            if not (self.root / resolve(self.root, interp)[1].lstrip("/")).is_file():
                raise ImageError(f"{guest_path}'s loader {interp} is not in the packages")
            self.add(interp)

    def _closure(self, guest_path: str) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        todo = list(self.elf(guest_path).needed)
        while todo:
            soname = todo.pop(0)
            if soname in found:
                continue
            path = self.find(soname)
            found[soname] = path
            if path is not None:
                todo += self.elf(path).needed
        return found

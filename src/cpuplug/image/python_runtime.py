"""Debian's python in the guest: interpreter, a lean stdlib, bytecode compiled ahead.

The packages ship only ``.py`` files (Debian compiles them in the postinst, which is
not run).  A guest booted from an initramfs starts with an empty bytecode cache every
time, so without compiled files every boot would compile each module the agent imports
(docs/real-backends.md: the first ``python3 -c`` took 1.6 s under TCG, later ones 0.25 s).
So the stdlib is compiled here and shipped as bytecode only, which is also half the
size of source plus bytecode; the cpuplug package keeps its sources beside its bytecode,
so the agent's tracebacks show their lines.

Bytecode is only valid for the interpreter's own magic number.  The host compiles it,
so it does so only when its magic number is the guest's (read from the guest stdlib's
``importlib/_bootstrap_external.py``), as between any two CPython 3.11.x; otherwise the
image carries sources and the guest compiles at boot, slower but correct.  The files
are hash-based and unchecked (PEP 552), so nothing depends on file times.
"""

from __future__ import annotations

import importlib.util
import marshal
import re
from dataclasses import dataclass
from pathlib import Path

from cpuplug.image.dynlink import Linker, resolve
from cpuplug.image.errors import ImageError
from cpuplug.image.initramfs import Initramfs

_MAGIC_SOURCE = re.compile(rb"MAGIC_NUMBER\s*=\s*\((\d+)\)\.to_bytes\(2,\s*'little'\)")


def host_magic() -> bytes:
    """The magic number the host compiles with (part of the image key)."""
    return importlib.util.MAGIC_NUMBER


def guest_magic(stdlib: Path) -> bytes | None:
    """The guest interpreter's bytecode magic number, from its own stdlib source."""
    try:
        text = (stdlib / "importlib" / "_bootstrap_external.py").read_bytes()
    except OSError:
        return None
    m = _MAGIC_SOURCE.search(text)
    return int(m.group(1)).to_bytes(2, "little") + b"\r\n" if m else None


def pyc(source: bytes, guest_path: str) -> bytes:
    """An unchecked hash-based ``.pyc`` (PEP 552) of ``source``; tracebacks name
    ``guest_path``."""
    code = compile(source, guest_path, "exec", dont_inherit=True, optimize=0)
    flags = (0b01).to_bytes(4, "little")  # hash-based, source not checked
    return host_magic() + flags + importlib.util.source_hash(source) + marshal.dumps(code)


@dataclass(frozen=True)
class PythonSummary:
    version: str
    precompiled: bool
    modules: int
    extensions: tuple[str, ...]
    """The lib-dynload modules copied (the others need libraries the image leaves out)."""


class PythonRuntime:
    """Copies python ``version`` out of the staging root into an initramfs."""

    def __init__(self, root: Path, linker: Linker, version: str) -> None:
        self.root = root
        self.linker = linker
        self.version = version
        self.stdlib_guest = f"/usr/lib/python{version}"
        self.stdlib = root / self.stdlib_guest.lstrip("/")
        if not self.stdlib.is_dir():
            raise ImageError(f"the python{version} packages unpacked no {self.stdlib_guest}")
        self.precompiled = guest_magic(self.stdlib) == host_magic()
        self.cache_tag = "cpython-" + version.replace(".", "")

    def add_interpreter(self, tree: Initramfs) -> str:
        """The interpreter, its loader and libraries; ``/usr/bin/python3`` links to it.
        Returns the guest path of ``python3``."""
        exe = f"/usr/bin/python{self.version}"
        self.linker.require(exe, program=True)
        tree.symlink("/usr/bin/python3", f"python{self.version}")
        return "/usr/bin/python3"

    def add_stdlib(
        self, tree: Initramfs, left_out: frozenset[str], extensions_left_out: tuple[str, ...]
    ) -> PythonSummary:
        modules = 0
        extensions: list[str] = []
        for host in sorted(self.stdlib.rglob("*")):
            rel = host.relative_to(self.stdlib)
            if rel.parts[0] in left_out or "__pycache__" in rel.parts:
                continue
            guest = f"{self.stdlib_guest}/{rel.as_posix()}"
            if rel.parts[0] == "lib-dynload":
                wanted = host.name.endswith(".so") and not host.name.startswith(
                    extensions_left_out
                )
                if wanted and not self.linker.missing(guest):
                    self.linker.require(guest)
                    extensions.append(host.name.split(".", 1)[0])
                continue
            if host.suffix != ".py":
                continue  # LICENSE.txt, EXTERNALLY-MANAGED, an .rst in email/
            real = self._real(guest)
            if real is None:
                continue  # a symlink out of the stdlib (sitecustomize.py -> /etc/...)
            self.add_module(tree, guest, real, keep_source=False)
            modules += 1
        return PythonSummary(self.version, self.precompiled, modules, tuple(extensions))

    def add_module(self, tree: Initramfs, guest: str, host: Path, *, keep_source: bool) -> None:
        """One ``.py``: bytecode only (``x.pyc`` beside where ``x.py`` would be, which
        python imports as a sourceless module), or source with bytecode in
        ``__pycache__``; source alone when the host cannot compile for the guest."""
        source = host.read_bytes()
        if not self.precompiled:
            tree.file(guest, source)
            return
        try:
            code = pyc(source, guest)
        except (SyntaxError, ValueError):
            tree.file(guest, source)  # let the guest report it, as python would
            return
        if keep_source:
            tree.file(guest, source)
            parent, _, name = guest.rpartition("/")
            tree.file(f"{parent}/__pycache__/{name[:-3]}.{self.cache_tag}.pyc", code)
        else:
            tree.file(guest[:-3] + ".pyc", code)

    def _real(self, guest: str) -> Path | None:
        _, final = resolve(self.root, guest)
        host = self.root / final.lstrip("/")
        return host if host.is_file() else None

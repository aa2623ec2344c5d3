"""Kernel modules of an unpacked linux-image package, and the order to load them in.

Debian's kernel package ships no ``modules.dep`` (its postinst runs ``depmod``), and a
host need not have ``depmod``.  Every ``.ko`` carries what depmod would read anyway: a
``.modinfo`` ELF section of NUL-separated ``key=value`` strings whose ``depends=`` names
the modules it needs.  That is enough to load the few modules a guest needs with plain
``insmod``, dependencies first.

Modules may be compressed (``.ko.xz``, ``.ko.zst``, ``.ko.gz``, by the kernel's
``CONFIG_MODULE_COMPRESS_*``).  They are decompressed here, at build time, because
busybox's ``insmod`` hands the file to ``init_module`` as it is and a kernel only
decompresses in ``finit_module`` with ``CONFIG_MODULE_DECOMPRESS``; a signed module
stays signed (the signature is appended to the uncompressed ELF).
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cpuplug.image.elf import Elf
from cpuplug.image.errors import ImageError

SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: Path | str) -> str:
    """A module's name from its file name, as kbuild derives it (``virtio-rng.ko.xz`` ->
    ``virtio_rng``)."""
    base = Path(path).name
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modinfo(section: bytes) -> dict[str, list[str]]:
    """``.modinfo`` -> {key: [values]} (``alias`` and ``parm`` repeat; the section is
    padded with extra NULs between strings)."""
    info: dict[str, list[str]] = {}
    for raw in section.split(b"\0"):
        if b"=" not in raw:
            continue
        key, _, value = raw.decode("utf-8", "replace").partition("=")
        info.setdefault(key, []).append(value)
    return info


def parse_depends(info: dict[str, list[str]]) -> tuple[str, ...]:
    """The module names in ``depends=`` (empty when the module needs none)."""
    names: list[str] = []
    for value in info.get("depends", []):
        names += [n.strip().replace("-", "_") for n in value.split(",") if n.strip()]
    return tuple(dict.fromkeys(names))


def decompressed(path: Path) -> bytes:
    """The module's ELF bytes, whichever compression its file name says it has."""
    name = path.name
    try:
        if name.endswith(".ko"):
            return path.read_bytes()
        if name.endswith(".ko.xz"):
            return lzma.decompress(path.read_bytes())
        if name.endswith(".ko.gz"):
            return gzip.decompress(path.read_bytes())
        if name.endswith(".ko.zst"):
            return _unzstd(path)
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise ImageError(f"cannot decompress kernel module {path}: {exc}") from None
    raise ImageError(f"{path} is not a kernel module (expected one of {', '.join(SUFFIXES)})")


def _unzstd(path: Path) -> bytes:
    # Python 3.11 has no zstd codec; the zstd program is small and in Debian.
    exe = shutil.which("zstd")
    if exe is None:
        raise ImageError(f"{path.name} is zstd-compressed: install zstd (apt-get install zstd)")
    proc = subprocess.run(
        [exe, "-d", "-c", "-q", str(path)], capture_output=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ImageError(f"zstd could not decompress {path}: {err[-1] if err else 'failed'}")
    return proc.stdout


@dataclass(frozen=True)
class KernelModule:
    name: str
    path: Path
    """The file as packaged (possibly compressed)."""
    relpath: str
    """Its path below ``/lib/modules/<release>/``, with the ``.ko`` suffix the image uses."""
    depends: tuple[str, ...]
    elf: bytes
    """The uncompressed module, as it goes into the image."""


class ModuleTree:
    """``/lib/modules/<release>`` of an unpacked kernel package.

    Modules are found by file name (kbuild names a module after its file) and read on
    demand, so a build reads the handful of ``.modinfo`` sections it needs, not 3000.
    ``modules.builtin`` (which the package does ship) tells a built-in driver from a
    missing one: asking for ``virtio`` on a kernel with ``CONFIG_VIRTIO=y`` is fine.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.release = directory.name
        self._files: dict[str, Path] = {}
        for suffix in SUFFIXES:
            for path in sorted(directory.rglob(f"*{suffix}")):
                self._files.setdefault(module_name(path), path)
        builtin = directory / "modules.builtin"
        self.builtin = frozenset(
            module_name(line.strip())
            for line in (builtin.read_text().splitlines() if builtin.exists() else [])
            if line.strip()
        )
        self._read: dict[str, KernelModule] = {}

    @classmethod
    def in_root(cls, root: Path) -> ModuleTree:
        """The one module tree of an unpacked kernel package (``lib/modules/*``)."""
        found = sorted(p for p in (root / "lib" / "modules").glob("*") if p.is_dir())
        if len(found) != 1:
            what = ", ".join(p.name for p in found) or "none"
            raise ImageError(f"expected one kernel module tree in {root}/lib/modules, found {what}")
        return cls(found[0])

    def module(self, name: str) -> KernelModule:
        if name not in self._read:
            path = self._files.get(name)
            if path is None:
                raise ImageError(f"kernel {self.release} has no module {name}")
            elf = decompressed(path)
            section = Elf(elf, path.name).section(".modinfo")
            if section is None:
                raise ImageError(f"kernel module {path} has no .modinfo section")
            info = parse_modinfo(section)
            real = info.get("name", [name])[0].replace("-", "_")
            rel = path.relative_to(self.directory).as_posix()
            rel = rel[: rel.rindex(".ko")] + ".ko"
            self._read[name] = KernelModule(real, path, rel, parse_depends(info), elf)
        return self._read[name]

    def load_order(self, wanted: Iterable[str]) -> list[KernelModule]:
        """``wanted`` and everything they depend on, each after its dependencies.

        Built-in modules are left out (they are already there); the order is otherwise
        the order of ``wanted`` and of each ``depends=`` list, so a build is repeatable.
        A dependency cycle cannot be loaded by insmod and is refused.
        """
        return [self.module(n) for n in dependency_order(wanted, self._depends_or_builtin)]

    def _depends_or_builtin(self, name: str) -> tuple[str, ...] | None:
        if name not in self._files and name in self.builtin:
            return None
        return self.module(name).depends


def dependency_order(
    wanted: Iterable[str], depends: Callable[[str], tuple[str, ...] | None]
) -> list[str]:
    """Post-order walk: ``depends(name)`` is a module's dependencies, or None for a module
    to leave out (built in); the walk itself is generic so it can be tested on names."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: Sequence[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join([*path[path.index(name):], name])
            raise ImageError(f"kernel modules depend on each other in a cycle: {cycle}")
        deps = depends(name)
        if deps is None:
            state[name] = "done"
            return
        state[name] = "visiting"
        for dep in deps:
            visit(dep, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in wanted:
        visit(name.replace("-", "_"), [])
    return order

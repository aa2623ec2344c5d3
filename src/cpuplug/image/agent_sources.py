"""The cpuplug source files that go into the guest for its agent, and their digest.

The recipe names roots (the shared seams and the ``guest`` package); every cpuplug
module those import, at any depth, is added, found by reading their ``import``
statements.  A root importing a module nobody listed (``guest/boot.py`` imports
``cpuplug.acpi``) would otherwise be an ``ImportError`` discovered in a booted VM.
The files are read as data and never imported here, so the image builder stays
independent of the parties whose code it ships.

The digest covers every file's path and bytes; it is part of the image key, so editing
the agent rebuilds the image.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import cpuplug
from cpuplug.image.errors import ImageError

PACKAGE = Path(cpuplug.__file__).resolve().parent
"""The cpuplug package on this host (``src/cpuplug`` in a checkout)."""


def agent_sources(roots: tuple[str, ...], package: Path = PACKAGE) -> dict[str, Path]:
    """{path relative to the package's parent (``cpuplug/hw.py``): host file}."""
    files: dict[str, Path] = {}
    todo: list[Path] = []
    for root in roots:
        path = package / root
        if root.endswith("/"):
            if not path.is_dir():
                raise ImageError(f"cpuplug package {root} is missing from {package}")
            todo += sorted(path.rglob("*.py"))
        elif path.is_file():
            todo.append(path)
        else:
            raise ImageError(f"cpuplug file {root} is missing from {package}")
    while todo:
        path = todo.pop()
        rel = path.relative_to(package.parent).as_posix()
        if rel in files:
            continue
        files[rel] = path
        for parent in path.relative_to(package).parents:
            init = package / parent / "__init__.py"
            if init.is_file():
                todo.append(init)
        todo += _imported_files(path, package)
    return dict(sorted(files.items()))


def digest(files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for rel, path in sorted(files.items()):
        data = path.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


_FROM = re.compile(
    r"^[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*(?:\\\n[^\n]*)*)", re.M
)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([^\n]*(?:\\\n[^\n]*)*)", re.M)
_COMMENT = re.compile(r"#[^\n]*")


def _imported_files(path: Path, package: Path) -> list[Path]:
    """The package files behind every ``cpuplug...`` import in ``path``.

    Import statements are found with two regular expressions rather than ``ast``: this
    runs on every image lookup (the digest needs the file set), and parsing 30 modules
    took half a second.  A line in a docstring that looks like an import can only add
    a file, never lose one.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    here = path.relative_to(package.parent).with_suffix("").parts
    if path.name == "__init__.py":
        here = (*here[:-1], "__init__")
    names: list[tuple[str, ...]] = []
    for m in _IMPORT.finditer(text):
        for item in _names(m.group(1)):
            names.append(tuple(item.split(".")))
    for m in _FROM.finditer(text):
        module = m.group(1)
        level = len(module) - len(module.lstrip("."))
        base = tuple(p for p in module.lstrip(".").split(".") if p)
        if level:
            base = here[: len(here) - level] + base
        names.append(base)
        names += [(*base, item) for item in _names(m.group(2))]  # maybe a submodule
    out: list[Path] = []
    for parts in names:
        if not parts or parts[0] != package.name:
            continue
        target = package.parent.joinpath(*parts)
        for candidate in (target.with_suffix(".py"), target / "__init__.py"):
            if candidate.is_file():
                out.append(candidate)
    return out


def _names(clause: str) -> list[str]:
    """``a as b, c.d`` / ``(a,\n b)`` -> [``a``, ``c.d``]."""
    clause = _COMMENT.sub("", clause).replace("\\\n", " ").strip("() \t\n")
    return [item.split()[0] for item in clause.split(",") if item.split()]

"""The ACPI namespace: a tree of 4-character names (ACPI 6.5 §5.3).

Paths are handled in their text form, ``\\_SB_.CPUS.CSCN``, ``^^PCI0.PRES`` or
``CSCN``; each segment is padded with ``_`` to four characters on the way in, and
trailing ``_`` are trimmed on the way out (``\\_SB.CPUS.C002``) as ACPICA prints
them, which is the form Notify callbacks receive.

Lookup follows §5.3.1: a single bare NameSeg is searched in the current scope and
then in each parent up to the root; a multi-segment or prefixed path is not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from cpuplug.acpi.aml.nodes import split_name
from cpuplug.acpi.errors import AmlError


class Node:
    """One name in the namespace, the object attached to it, and its children.

    A node created by a running method (``Name(CNEW, ...)`` inside CSCN) belongs to
    that invocation's private scope node, whose ``parent`` is the method's parent but
    which is not linked into it: other threads never see it and it disappears with
    the invocation (ACPI 6.5 §5.5.2.5).
    """

    __slots__ = ("children", "name", "obj", "parent")

    def __init__(self, name: str, parent: Node | None, obj: Any = None) -> None:
        self.name = name
        self.parent = parent
        self.obj: Any = obj
        self.children: dict[str, Node] = {}

    def segments(self) -> list[str]:
        segs: list[str] = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            segs.append(node.name)
            node = node.parent
        segs.reverse()
        return segs

    @property
    def path(self) -> str:
        """Absolute path with trailing underscores trimmed: ``\\_SB.CPUS.C002``."""
        return "\\" + ".".join(_trim(s) for s in self.segments())

    @property
    def full_path(self) -> str:
        """Absolute path with 4-character segments: ``\\_SB_.CPUS.C002``."""
        return "\\" + ".".join(self.segments())

    def __repr__(self) -> str:
        return f"Node({self.path})"


def _trim(seg: str) -> str:
    trimmed = seg.rstrip("_")
    return trimmed if trimmed else "_"


def parse_path(path: str) -> tuple[bool, int, tuple[str, ...]]:
    """Split a text path into (absolute, number of ``^``, padded segments)."""
    prefix, segs = split_name(path)
    return prefix == "\\", prefix.count("^"), segs


Finder = Callable[["Namespace", Node], "Node | None"]
"""Finds one path from a scope; made once per path by :func:`resolver`."""


def resolver(path: str) -> Finder:
    """A function finding ``path`` from a scope (ACPI 6.5 §5.3 search rules).

    The path is parsed once, here, so compiled AML pays only for the walk on each
    run; :meth:`Namespace.lookup` uses the same walk for a path given at run time.
    """
    return _finder(*parse_path(path))


def _finder(absolute: bool, ups: int, segs: tuple[str, ...]) -> Finder:
    if absolute:

        def from_root(ns: Namespace, scope: Node) -> Node | None:
            cur: Node | None = ns.root
            for seg in segs:
                assert cur is not None
                cur = cur.children.get(seg)
                if cur is None:
                    return None
            return cur

        return from_root
    if ups == 0 and len(segs) == 1:
        seg = segs[0]

        def search(ns: Namespace, scope: Node) -> Node | None:
            cur: Node | None = scope
            while cur is not None:
                found = cur.children.get(seg)
                if found is not None:
                    return found
                cur = cur.parent
            return None

        return search

    def relative(ns: Namespace, scope: Node) -> Node | None:
        cur: Node | None = scope
        for _ in range(ups):
            cur = cur.parent if cur is not None else None
        for seg in segs:
            if cur is None:
                return None
            cur = cur.children.get(seg)
        return cur

    return relative


class Namespace:
    """The tree, rooted at ``\\``, with the scopes ACPI predefines."""

    PREDEFINED_SCOPES = {
        "_GPE": "Scope",
        "_PR_": "Scope",
        "_SB_": "Device",
        "_SI_": "Scope",
        "_TZ_": "Device",
    }
    """The root's predefined children and their types, as ACPICA creates them
    (``\\_SB`` and ``\\_TZ`` are Devices: ``ObjectType(\\_SB)`` is 6)."""

    def __init__(self) -> None:
        from cpuplug.acpi.aml.objects import Container

        self.root = Node("\\", None, Container("Scope"))
        for name, kind in self.PREDEFINED_SCOPES.items():
            self.root.children[name] = Node(name, self.root, Container(kind))

    def lookup(self, path: str, scope: Node | None = None) -> Node | None:
        """The node ``path`` names, searched from ``scope`` (default root); None if absent.

        With no scope the path is read from the root, where a ``^`` has nowhere to go
        and is ignored.
        """
        absolute, ups, segs = parse_path(path)
        if scope is None:
            absolute, scope = True, self.root
        return _finder(absolute, ups, segs)(self, scope)

    def resolve(self, path: str, scope: Node | None = None) -> Node:
        node = self.lookup(path, scope)
        if node is None:
            where = f" from {scope.path}" if scope is not None else ""
            raise AmlError(f"undefined name {path}{where}")
        return node

    def parent_and_name(self, path: str, scope: Node) -> tuple[Node, str]:
        """Where a new object named ``path`` goes: its parent node and its segment."""
        absolute, ups, segs = parse_path(path)
        if not segs:
            raise AmlError(f"cannot create an object named {path!r}")
        parent: Node | None = self.root if absolute else scope
        for _ in range(ups):
            parent = parent.parent if parent is not None else None
            if parent is None:
                raise AmlError(f"name {path} goes above the root from {scope.path}")
        for seg in segs[:-1]:
            assert parent is not None
            parent = parent.children.get(seg)
            if parent is None:
                raise AmlError(f"scope of {path} does not exist (from {scope.path})")
        assert parent is not None
        return parent, segs[-1]

    def walk(self, start: Node | None = None) -> Iterator[Node]:
        """Every node below ``start`` (default root), depth first, in creation order."""
        stack = [start or self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(list(node.children.values())))

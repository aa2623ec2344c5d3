"""The AML interpreter's public face: load definition blocks, map regions, evaluate.

::

    from cpuplug.acpi.interp import Interpreter
    it = Interpreter()
    it.load(dsdt_bytes)                       # header + AML; again for each SSDT
    it.map_region("SystemMemory", handler)    # handler.read(addr, width_bits) / .write(...)
    it.on_notify(lambda path, value: ...)     # path like "\\_SB.CPUS.C002"
    it.evaluate("\\_SB.CPUS.CSTA", 2)         # -> int | str | bytes | list | None

This is the guest's ACPI interpreter (Linux's ACPICA in the real stack). It is safe to
call from several threads at once, as a guest's vCPUs do: mutexes and Serialized
methods block across threads, and everything else a method touches is either its own
frame or a namespace object whose updates are single Python operations.

Errors: only :class:`~cpuplug.acpi.errors.AcpiError` subclasses leave this class -
:class:`~cpuplug.acpi.errors.TableError` for a bad table header,
:class:`~cpuplug.acpi.errors.AmlError` for undecodable AML or a failed evaluation,
:class:`~cpuplug.acpi.errors.AmlLimitError` when hostile AML hits a limit - plus
:class:`~cpuplug.errors.UsageError` for a malformed call (bad address space name).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from cpuplug.acpi.aml.builder import DefinitionBlock
from cpuplug.acpi.aml.decoder import decode_table
from cpuplug.acpi.aml.eval import Compiler, compile_method
from cpuplug.acpi.aml.interp import Frame, Limits, Runtime, from_python, to_python
from cpuplug.acpi.aml.namespace import Node
from cpuplug.acpi.aml.objects import (
    AmlEvent,
    AmlMutex,
    Container,
    Method,
    OperationRegion,
    RegionHandler,
    type_name,
)
from cpuplug.acpi.aml.opcodes import REGION_SPACES
from cpuplug.acpi.errors import AcpiError, AmlError, AmlLimitError, TableError
from cpuplug.errors import UsageError

__all__ = ["Interpreter", "Limits", "RegionHandler"]

_log = logging.getLogger("cpuplug.acpi.aml")

DEFINITION_BLOCKS = ("DSDT", "SSDT", "PSDT")
MAX_TABLE_SIZE = 1 << 20
"""Largest definition block :meth:`Interpreter.load` decodes: 22x the 46 KB DSDT of a
512-vCPU machine. Decoding is linear but costs ~5 µs and ~70 bytes per term, so a
multi-MiB table of filler is refused up front instead of taking seconds."""


class Interpreter:
    """One ACPI namespace and the machinery to run the AML loaded into it."""

    def __init__(
        self,
        *,
        max_loop_iterations: int = 0x10000,
        max_call_depth: int = 64,
        max_eval_seconds: float = 30.0,
        mutex_forever_seconds: float = 30.0,
        max_object_size: int = 1 << 20,
        max_sleep_seconds: float = 1.0,
    ) -> None:
        """Limits: iterations of one While, nested calls, seconds per outermost
        evaluation, how long ``Acquire(m, 0xFFFF)`` waits before AmlLimitError,
        largest Buffer/Package AML may create, longest single Sleep."""
        limits = Limits(
            max_loop_iterations=max_loop_iterations,
            max_call_depth=max_call_depth,
            max_eval_seconds=max_eval_seconds,
            mutex_forever_seconds=mutex_forever_seconds,
            max_object_size=max_object_size,
            max_sleep_seconds=max_sleep_seconds,
        )
        self._rt = Runtime(limits, compile_method)
        self._int_bits = 64
        self._dsdt_loaded = False
        self._methods: dict[str, int] = {}
        self._load_lock = threading.Lock()
        self.tables: list[tuple[str, int]] = []
        """(signature, revision) of each table loaded, in order."""

    # ------------------------------------------------------------------ setup

    @property
    def limits(self) -> Limits:
        return self._rt.limits

    @property
    def int_bits(self) -> int:
        """Integer width: 32 when the DSDT's revision is below 2, else 64."""
        return self._int_bits

    @property
    def debug_log(self) -> list[Any]:
        """Values AML stored to the Debug object, oldest first (the last 1024)."""
        return list(self._rt.debug_log)

    def map_region(self, space: str | int, handler: RegionHandler) -> None:
        """Route operation regions of address space ``space`` to ``handler``."""
        if isinstance(space, str):
            if space not in REGION_SPACES:
                raise UsageError(
                    f"unknown address space {space!r} (one of {', '.join(REGION_SPACES)})"
                )
            code = REGION_SPACES[space]
        elif isinstance(space, int) and not isinstance(space, bool) and 0 <= space <= 0xFF:
            code = space
        else:
            raise UsageError(f"address space must be a name or 0..255, not {space!r}")
        if not callable(getattr(handler, "read", None)) or not callable(
            getattr(handler, "write", None)
        ):
            raise UsageError("a region handler needs read(addr, width) and write(addr, width, v)")
        self._rt.handlers[code] = handler

    def on_notify(self, callback: Callable[[str, int], None]) -> None:
        """Call ``callback(path, value)`` for each Notify, after the method that
        issued it returns (in order, with the AML's mutexes released)."""
        if not callable(callback):
            raise UsageError("on_notify needs a callable")
        self._rt.notify_callbacks.append(callback)

    # ------------------------------------------------------------------ loading

    def load(self, table: bytes) -> None:
        """Load a DSDT/SSDT (36-byte header + AML) into the namespace.

        All or nothing: if decoding or the table's own code fails, every object it
        created is removed again before the error is raised.
        """
        if not isinstance(table, bytes | bytearray | memoryview):
            raise UsageError(f"load() needs the table's bytes, not {type(table).__name__}")
        data = bytes(table)
        if len(data) > MAX_TABLE_SIZE:
            raise AmlLimitError(
                f"table of {len(data)} bytes is larger than the {MAX_TABLE_SIZE} bytes accepted"
            )
        try:
            block = decode_table(data, known_methods=self._methods)
        except AcpiError:
            raise
        except RecursionError as exc:
            raise AmlLimitError("table nests too deeply to decode") from exc
        except Exception as exc:  # the decoder promises AcpiError only; keep that promise here
            raise AmlError(f"internal decoder error: {type(exc).__name__}: {exc}") from exc
        self._load_block(block)

    def load_block(self, block: DefinitionBlock) -> None:
        """Load a definition block already in node form (no encode/decode round trip),
        e.g. one the caller built with :mod:`cpuplug.acpi.aml.builder`."""
        if not isinstance(block, DefinitionBlock):
            raise UsageError(f"load_block() needs a DefinitionBlock, not {type(block).__name__}")
        self._load_block(block)

    def _load_block(self, block: DefinitionBlock) -> None:
        with self._load_lock:
            self._load_locked(block)

    def _load_locked(self, block: DefinitionBlock) -> None:
        if block.signature not in DEFINITION_BLOCKS:
            raise TableError(block.signature, 0, "not a definition block (DSDT/SSDT)")
        bits = self._int_bits
        if block.signature == "DSDT" or not self._dsdt_loaded:
            bits = 32 if block.revision < 2 else 64
        rt = self._rt
        ctx, outer = rt.enter()
        saved = ctx.load_created
        created: list[Node] = []
        ctx.load_created = created
        try:
            code = Compiler(bits).block(block.body)
            frame = Frame(rt, ctx, rt.ns.root, [None] * 7, (1 << bits) - 1)
            code(frame)
        except BaseException as exc:
            for node in reversed(created):
                if node.parent is not None and node.parent.children.get(node.name) is node:
                    del node.parent.children[node.name]
            if isinstance(exc, AcpiError):
                raise
            if isinstance(exc, RecursionError):
                raise AmlLimitError("table code nests too deeply") from exc
            if isinstance(exc, Exception):
                raise AmlError(
                    f"internal error loading table: {type(exc).__name__}: {exc}"
                ) from exc
            raise
        finally:
            ctx.load_created = saved
            if outer:
                rt.leave(ctx)
        if block.signature == "DSDT":
            self._int_bits = bits
            self._dsdt_loaded = True
        elif not self._dsdt_loaded:
            self._int_bits = bits
        for node in created:
            if isinstance(node.obj, Method):
                self._methods[node.full_path] = node.obj.argc
        self.tables.append((block.signature, block.revision))

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, path: str, *args: Any) -> Any:
        """Run the method at ``path`` with ``args``, or read the named object there.

        Returns int, str, bytes, list (packages, recursively) or None (a method that
        returns nothing). A Device, Mutex or other object without a value raises
        :class:`AmlError`, as does a wrong argument count.
        """
        node = self._node(path)
        rt = self._rt
        ctx, outer = rt.enter()
        stopping = False
        try:
            obj = node.obj
            if isinstance(obj, Method):
                if len(args) != obj.argc:
                    raise AmlError(f"{node.path} takes {obj.argc} arguments, got {len(args)}")
                mask = (1 << obj.int_bits) - 1
                values = [from_python(a, mask) for a in args]
                result = rt.invoke(ctx, node, obj, values)
            else:
                if args:
                    raise AmlError(f"{node.path} is not a method; it takes no arguments")
                if isinstance(obj, Container | AmlMutex | AmlEvent | OperationRegion):
                    raise AmlError(f"{node.path} is a {type_name(obj)}; it has no value")
                mask = (1 << self._int_bits) - 1
                frame = Frame(rt, ctx, node.parent or rt.ns.root, [None] * 7, mask)
                result = rt.node_value(frame, node)
            return to_python(result)
        except AcpiError:
            raise
        except RecursionError as exc:
            raise AmlLimitError(f"evaluating {path} recursed too deeply") from exc
        except Exception as exc:
            _log.exception("internal error evaluating %s", path)
            raise AmlError(
                f"internal error evaluating {path}: {type(exc).__name__}: {exc}"
            ) from exc
        except BaseException:
            # Not an error of the AML: the thread itself is being stopped (the VMM's
            # VcpuStop out of an MMIO access, KeyboardInterrupt). Free the mutexes so
            # other vCPUs go on, but run no guest callbacks on this thread.
            stopping = True
            raise
        finally:
            if outer:
                rt.leave(ctx, deliver=not stopping)

    # ------------------------------------------------------------------ inspection

    def exists(self, path: str) -> bool:
        """Whether ``path`` names an object."""
        try:
            return self._rt.ns.lookup(path) is not None
        except AmlError:
            return False

    def object_type(self, path: str) -> str:
        """The ACPI type name of the object at ``path`` ("Device", "Method", "Integer"...)."""
        return type_name(self._node(path).obj)

    def children(self, path: str = "\\") -> list[str]:
        """Absolute paths of the objects directly inside ``path``, in creation order."""
        return [child.path for child in self._node(path).children.values()]

    def walk(self) -> Iterator[tuple[str, str]]:
        """(path, type name) of every object in the namespace, depth first."""
        for node in self._rt.ns.walk():
            if node.parent is not None:
                yield node.path, type_name(node.obj)

    def _node(self, path: str) -> Node:
        if not isinstance(path, str):
            raise UsageError(f"a path must be a string, not {type(path).__name__}")
        node = self._rt.ns.lookup(path)
        if node is None:
            raise AmlError(f"undefined name {path}")
        return node

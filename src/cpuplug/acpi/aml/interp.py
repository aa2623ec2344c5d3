"""The AML machine: namespace, frames, mutexes, stores, fields, calls and Notify.

:mod:`cpuplug.acpi.aml.eval` compiles node trees into closures; this module is what
those closures run against. Execution model (ACPI 6.5 §19, with ACPICA's choices
where the spec is silent):

* a :class:`Frame` per method invocation holds Local0-7, Arg0-6 and the
  invocation's private scope node (method-local named objects live there and vanish
  with it);
* a statement returns ``None`` or a control signal (Break / Continue / Return);
* a per-thread :class:`Context` spans one outermost evaluation: call depth, held
  mutexes (sync levels; ACPICA releases what a thread still holds when its outermost
  method ends), the deadline, and the Notify queue. Notifies are delivered after the
  outermost evaluation returns, in order, with every AML lock released - like
  ACPICA's deferred notify queue, so a handler that evaluates ``_STA`` from another
  thread cannot deadlock on ``CPLK``;
* integers are masked to the width of the table the code came from (32 bits for a
  revision-1 DSDT, ACPI 6.5 §5.2.11.1).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cpuplug.acpi.aml.namespace import Namespace, Node
from cpuplug.acpi.aml.objects import (
    Alias,
    AmlMutex,
    BankFieldUnit,
    BufferField,
    Container,
    ElementRef,
    FieldUnit,
    IndexFieldUnit,
    LocalRef,
    Method,
    NodeRef,
    OperationRegion,
    RegionHandler,
    type_name,
)
from cpuplug.acpi.errors import AcpiError, AmlError, AmlLimitError

_log = logging.getLogger("cpuplug.acpi.aml")

BREAK = 1
CONTINUE = 2
RETURN = 3

Stmt = Callable[["Frame"], "int | None"]

INTERPRETER_REVISION = 0x2020_0925
"""What the ``Revision`` opcode returns (an ACPICA-style date stamp)."""


@dataclass(frozen=True, slots=True)
class LazyName:
    """A name written as a package element: resolved when the element is read."""

    path: str
    scope: Node


@dataclass
class Limits:
    """Bounds that make hostile AML end with :class:`AmlLimitError` instead of hanging."""

    max_loop_iterations: int = 0x10000
    """Iterations of one While statement (ACPICA's historical ACPI_MAX_LOOP_ITERATIONS)."""
    max_call_depth: int = 64
    """Nested method calls in one evaluation."""
    max_eval_seconds: float = 30.0
    """Wall-clock budget of one outermost evaluation (ACPICA's loop timeout is 30 s)."""
    mutex_forever_seconds: float = 30.0
    """How long ``Acquire(m, 0xFFFF)`` ("forever") really waits before giving up."""
    max_object_size: int = 1 << 20
    """Largest Buffer/String/Package (elements) AML may create."""
    max_sleep_seconds: float = 1.0
    """Longest single Sleep/Wait honoured; longer ones are cut short."""


class Context:
    """Per-thread state of one outermost evaluation (or table load)."""

    __slots__ = ("deadline", "depth", "held", "load_created", "notifies")

    def __init__(self, deadline: float) -> None:
        self.depth = 0
        self.held: list[AmlMutex] = []
        self.deadline = deadline
        self.notifies: list[tuple[str, int]] = []
        self.load_created: list[Node] | None = None

    def sync_level(self) -> int:
        return max((m.sync_level for m in self.held), default=0)


class Frame:
    """One method invocation (or a table's top-level code)."""

    __slots__ = ("args", "ctx", "escaped", "invocation", "locals", "mask", "retval", "rt", "scope")

    def __init__(
        self,
        rt: Runtime,
        ctx: Context,
        scope: Node,
        args: list[Any],
        mask: int,
        invocation: Node | None = None,
    ) -> None:
        self.rt = rt
        self.ctx = ctx
        self.scope = scope
        self.mask = mask
        self.locals: list[Any] = [None] * 8
        self.args = args
        self.retval: Any = None
        self.invocation = invocation
        """The method invocation's private scope node (None for table code)."""
        self.escaped: list[Node] | None = None
        """Objects this invocation created outside its scope (``Name(\\X, 1)`` in a
        method): removed when it returns, as ACPICA deletes a method's objects."""


# --------------------------------------------------------------------------- conversions


def to_int(value: Any, mask: int) -> int:
    """Implicit conversion to Integer (ACPI 6.5 §19.3.5.7)."""
    if isinstance(value, int):
        return value & mask
    if isinstance(value, ElementRef):
        return to_int(deref_element(value), mask)
    if isinstance(value, bytearray | bytes):
        width = 4 if mask == 0xFFFF_FFFF else 8
        return int.from_bytes(value[:width], "little")
    if isinstance(value, str):
        digits = 8 if mask == 0xFFFF_FFFF else 16
        result = 0
        for ch in value[:digits]:
            d = "0123456789abcdef".find(ch.lower())
            if d < 0:
                break
            result = result * 16 + d
        return result & mask
    raise AmlError(f"{type_name(value)} cannot be used as an Integer")


def to_str(value: Any, mask: int) -> str:
    """Implicit conversion to String (hex digits for integers, as ACPICA)."""
    if isinstance(value, str):
        return value
    if isinstance(value, ElementRef):
        return to_str(deref_element(value), mask)
    if isinstance(value, int):
        return f"{value & mask:0{8 if mask == 0xFFFF_FFFF else 16}X}"
    if isinstance(value, bytearray | bytes):
        return " ".join(f"{b:02X}" for b in value)
    raise AmlError(f"{type_name(value)} cannot be used as a String")


def to_buffer(value: Any, mask: int) -> bytearray:
    """Implicit conversion to Buffer (a new bytearray)."""
    if isinstance(value, bytearray | bytes):
        return bytearray(value)
    if isinstance(value, ElementRef):
        return to_buffer(deref_element(value), mask)
    if isinstance(value, int):
        return bytearray((value & mask).to_bytes(4 if mask == 0xFFFF_FFFF else 8, "little"))
    if isinstance(value, str):
        return bytearray(value.encode("latin-1") + b"\x00") if value else bytearray()
    raise AmlError(f"{type_name(value)} cannot be used as a Buffer")


def copy_value(value: Any) -> Any:
    """Store semantics: buffers and packages are copied, never shared."""
    if isinstance(value, bytearray):
        return bytearray(value)
    if isinstance(value, list):
        return [
            v if v is None or type(v) is int or type(v) is str else copy_value(v) for v in value
        ]
    return value


def deref_element(ref: ElementRef) -> Any:
    """The value an ``Index`` reference points at."""
    container, i = ref.container, ref.index
    if isinstance(container, bytearray):
        return container[i]
    if isinstance(container, str):
        return ord(container[i])
    elem = container[i]
    if elem is None:
        raise AmlError(f"package element {i} is uninitialized")
    return elem


# --------------------------------------------------------------------------- runtime


_OSI_FEATURES = frozenset(
    ("Module Device", "Processor Device", "3.0 Thermal Model", "Extended Address Space Descriptor")
)


_NONES = (None,) * 7
_INVOCATION = Container("Scope")
"""The object of every per-invocation scope node (it has no value of its own)."""


class Runtime:
    """The interpreter's shared state: namespace, region handlers, limits, hooks."""

    def __init__(self, limits: Limits, compile_method: Callable[[Method], Stmt]) -> None:
        self.limits = limits
        self.compile_method = compile_method
        self.ns = Namespace()
        self.handlers: dict[int, RegionHandler] = {}
        self.notify_callbacks: list[Callable[[str, int], None]] = []
        self.debug_log: collections.deque[Any] = collections.deque(maxlen=1024)
        self._tls = threading.local()
        self.global_lock = AmlMutex("\\_GL", 0)
        self._add_predefined()

    # -- predefined objects (ACPI 6.5 §5.7)

    def _add_predefined(self) -> None:
        root = self.ns.root

        def osi(args: list[Any]) -> Any:
            name = args[0] if args else ""
            supported = isinstance(name, str) and (
                name.startswith("Windows") or name in _OSI_FEATURES
            )
            return 0xFFFF_FFFF_FFFF_FFFF if supported else 0

        root.children["_OSI"] = Node("_OSI", root, Method("_OSI", 1, False, 0, (), 64, native=osi))
        root.children["_OS_"] = Node("_OS_", root, "Microsoft Windows NT")
        root.children["_REV"] = Node("_REV", root, 2)
        root.children["_GL_"] = Node("_GL_", root, self.global_lock)

    # -- region handlers

    def handler_for(self, region: OperationRegion) -> RegionHandler:
        handler = self.handlers.get(region.space)
        if handler is None:
            raise AmlError(
                f"no handler for address space {region.space_name} (region {region.name} "
                f"at {region.offset:#x})"
            )
        return handler

    # -- per-thread context

    def current(self) -> Context | None:
        ctx: Context | None = getattr(self._tls, "ctx", None)
        return ctx

    def enter(self) -> tuple[Context, bool]:
        """The thread's context, creating it for an outermost evaluation."""
        ctx = self.current()
        if ctx is not None:
            return ctx, False
        ctx = Context(time.monotonic() + self.limits.max_eval_seconds)
        self._tls.ctx = ctx
        return ctx, True

    def leave(self, ctx: Context, *, deliver: bool = True) -> None:
        """End an outermost evaluation: free leftover mutexes, then deliver Notifies
        (unless ``deliver`` is false: the thread is being stopped)."""
        self._tls.ctx = None
        while ctx.held:
            mutex = ctx.held.pop()
            _log.warning("AML left mutex %s acquired; released at end of evaluation", mutex.name)
            with contextlib.suppress(AmlError):
                mutex.release()
        if not deliver:
            if ctx.notifies:
                _log.warning("dropping %d Notify(s): evaluation was stopped", len(ctx.notifies))
            return
        errors: list[BaseException] = []
        for path, value in ctx.notifies:
            for callback in list(self.notify_callbacks):
                try:
                    callback(path, value)
                except Exception as exc:  # a guest handler's bug must not lose later notifies
                    _log.exception("notify callback failed for %s, %#x", path, value)
                    errors.append(exc)
        if errors:
            first = errors[0]
            if isinstance(first, AcpiError):
                raise first
            raise AmlError(f"notify callback failed: {type(first).__name__}: {first}") from first

    # -- mutexes

    def acquire(self, ctx: Context, mutex: AmlMutex, timeout_ms: int) -> bool:
        if (
            ctx.held
            and mutex is not self.global_lock  # ACPICA exempts the Global Lock
            and not mutex.owned_by_me()
            and mutex.sync_level < ctx.sync_level()
        ):
            raise AmlError(
                f"Acquire of {mutex.name} (SyncLevel {mutex.sync_level}) while holding a "
                f"mutex of SyncLevel {ctx.sync_level()}"
            )
        forever = timeout_ms >= 0xFFFF
        seconds = self.limits.mutex_forever_seconds if forever else timeout_ms / 1000.0
        if not mutex.acquire(seconds):
            if forever:
                raise AmlLimitError(
                    f"Acquire({mutex.name}, 0xFFFF) still waiting after "
                    f"{self.limits.mutex_forever_seconds} s (owner thread {mutex.owner})"
                )
            return False
        ctx.held.append(mutex)
        return True

    def release(self, ctx: Context, mutex: AmlMutex) -> None:
        mutex.release()
        for i in range(len(ctx.held) - 1, -1, -1):
            if ctx.held[i] is mutex:
                del ctx.held[i]
                break

    # -- method calls

    def invoke(self, ctx: Context, node: Node, method: Method, args: list[Any]) -> Any:
        if method.native is not None:
            return method.native(args)
        code = method.compiled
        if code is None:
            with method.lock:
                if method.compiled is None:
                    method.compiled = self.compile_method(method)
                code = method.compiled
        ctx.depth += 1
        try:
            if ctx.depth > self.limits.max_call_depth:
                raise AmlLimitError(
                    f"call depth {ctx.depth} exceeds {self.limits.max_call_depth} at {node.path}"
                )
            if method.mutex is not None:
                self.acquire(ctx, method.mutex, 0xFFFF)
            try:
                if len(args) < 7:
                    args.extend(_NONES[: 7 - len(args)])
                scope = Node(node.name, node.parent, _INVOCATION)
                frame = Frame(self, ctx, scope, args, (1 << method.int_bits) - 1, scope)
                try:
                    code(frame)
                finally:
                    if frame.escaped:
                        for made in reversed(frame.escaped):
                            parent = made.parent
                            if parent is not None and parent.children.get(made.name) is made:
                                del parent.children[made.name]
                return frame.retval
            finally:
                if method.mutex is not None:
                    self.release(ctx, method.mutex)
        finally:
            ctx.depth -= 1

    def debug(self, value: Any) -> None:
        """A store to the Debug object: kept (bounded) and logged."""
        self.debug_log.append(value)
        _log.debug("AML Debug: %r", value)

    def sleep(self, ctx: Context, seconds: float) -> None:
        """AML Sleep/Stall, cut to the limit and to the evaluation's deadline."""
        seconds = min(seconds, self.limits.max_sleep_seconds)
        remaining = ctx.deadline - time.monotonic()
        if seconds > remaining:
            raise AmlLimitError(
                f"Sleep of {seconds:.3f} s would exceed the evaluation budget of "
                f"{self.limits.max_eval_seconds} s"
            )
        if seconds > 0:
            time.sleep(seconds)

    def check_time(self, ctx: Context) -> None:
        if time.monotonic() > ctx.deadline:
            raise AmlLimitError(
                f"evaluation exceeded its budget of {self.limits.max_eval_seconds} s"
            )

    # -- node values

    def node_value(self, frame: Frame, node: Node) -> Any:
        """What evaluating a name yields (ACPI 6.5 §19.3.5.1)."""
        obj = node.obj
        if isinstance(obj, int | str | bytearray | list):
            return obj
        if isinstance(obj, FieldUnit | IndexFieldUnit | BankFieldUnit):
            return self.read_field(obj, frame)
        if isinstance(obj, BufferField):
            value = obj.read()
            if obj.bit_length > (32 if frame.mask == 0xFFFF_FFFF else 64):
                return bytearray(value.to_bytes((obj.bit_length + 7) // 8, "little"))
            return value
        if isinstance(obj, Method):
            return self.invoke(frame.ctx, node, obj, [])
        if isinstance(obj, Alias):
            return self.node_value(frame, obj.target)
        return NodeRef(node)

    def read_field(self, unit: FieldUnit | IndexFieldUnit | BankFieldUnit, frame: Frame) -> Any:
        lock = isinstance(unit, FieldUnit) and unit.lock_rule
        if lock:
            self.acquire(frame.ctx, self.global_lock, 0xFFFF)
        try:
            value = unit.read(self)
        finally:
            if lock:
                self.release(frame.ctx, self.global_lock)
        if unit.bit_length > (32 if frame.mask == 0xFFFF_FFFF else 64):
            return bytearray(value.to_bytes((unit.bit_length + 7) // 8, "little"))
        return value

    def write_field(
        self, unit: FieldUnit | IndexFieldUnit | BankFieldUnit, frame: Frame, value: Any
    ) -> None:
        raw = field_int(value)
        lock = isinstance(unit, FieldUnit) and unit.lock_rule
        if lock:
            self.acquire(frame.ctx, self.global_lock, 0xFFFF)
        try:
            unit.write(self, raw)
        finally:
            if lock:
                self.release(frame.ctx, self.global_lock)

    def store_node(self, frame: Frame, node: Node, value: Any) -> None:
        """Store to a named object, converting to its type (ACPI 6.5 §19.3.5.8)."""
        if isinstance(value, ElementRef):
            value = deref_element(value)
        obj = node.obj
        mask = frame.mask
        if isinstance(obj, FieldUnit | IndexFieldUnit | BankFieldUnit):
            self.write_field(obj, frame, value)
        elif isinstance(obj, BufferField):
            obj.write(field_int(value))
        elif isinstance(obj, int):
            node.obj = to_int(value, mask)
        elif isinstance(obj, str):
            node.obj = to_str(value, mask)
        elif isinstance(obj, bytearray):
            data = to_buffer(value, mask)
            size = len(obj)
            obj[:] = data[:size] + bytes(max(0, size - len(data)))
        elif isinstance(obj, list) or obj is None:
            node.obj = copy_value(value)
        elif isinstance(obj, Alias):
            self.store_node(frame, obj.target, value)
        else:
            raise AmlError(f"cannot store into {type_name(obj)} {node.path}")

    def store_ref(self, frame: Frame, ref: Any, value: Any) -> None:
        """Store through a reference (``Index(...) = v``, an Arg holding ``RefOf``)."""
        if isinstance(ref, NodeRef):
            self.store_node(frame, ref.node, value)
        elif isinstance(ref, LocalRef):
            ref.slots[ref.index] = copy_value(deref_if_element(value))
        elif isinstance(ref, ElementRef):
            container = ref.container
            if isinstance(container, bytearray):
                container[ref.index] = to_int(value, frame.mask) & 0xFF
            elif isinstance(container, list):
                container[ref.index] = copy_value(deref_if_element(value))
            else:
                raise AmlError("cannot store into a character of a String")
        else:
            raise AmlError(f"cannot store through {type_name(ref)}")

    def notify(self, frame: Frame, node: Node, value: int) -> None:
        while isinstance(node.obj, Alias):
            node = node.obj.target
        obj = node.obj
        if not isinstance(obj, Container) or obj.kind not in (
            "Device",
            "Processor",
            "ThermalZone",
            "PowerResource",
        ):
            raise AmlError(f"Notify on {type_name(obj)} {node.path}; needs a Device/Processor")
        frame.ctx.notifies.append((node.path, value))


def field_int(value: Any) -> int:
    """A value as the bits a field write stores (buffers/strings little-endian)."""
    if isinstance(value, int):
        return value
    if isinstance(value, ElementRef):
        return field_int(deref_element(value))
    if isinstance(value, bytearray | bytes):
        return int.from_bytes(value, "little")
    if isinstance(value, str):
        return int.from_bytes(value.encode("latin-1"), "little")
    raise AmlError(f"cannot write {type_name(value)} to a field")


def deref_if_element(value: Any) -> Any:
    return deref_element(value) if isinstance(value, ElementRef) else value


# --------------------------------------------------------------------------- helpers


def to_python(value: Any) -> Any:
    """An AML value as the public API returns it."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | str):
        return value
    if isinstance(value, bytearray | bytes):
        return bytes(value)
    if isinstance(value, list):
        return [to_python(v) for v in value]
    if isinstance(value, LazyName):
        return value.path
    if isinstance(value, NodeRef):
        return value.node.path
    if isinstance(value, ElementRef):
        return to_python(deref_element(value))
    if isinstance(value, LocalRef):
        return to_python(value.slots[value.index])
    return None


def from_python(value: Any, mask: int) -> Any:
    """A Python argument as an AML value (public API ``evaluate`` args); integers are
    truncated to the method's integer width, as ACPICA does for 32-bit tables."""
    if isinstance(value, bool):
        return mask if value else 0
    if isinstance(value, int):
        if value < 0:
            raise AmlError(f"AML integers are unsigned; got {value}")
        return value & mask
    if isinstance(value, str):
        if not value.isascii() or "\0" in value:
            raise AmlError(f"AML strings are ASCII without NUL: {value!r}")
        return value
    if isinstance(value, bytes | bytearray):
        return bytearray(value)
    if isinstance(value, list | tuple):
        return [from_python(v, mask) for v in value]
    raise AmlError(f"cannot pass {type(value).__name__} to AML")

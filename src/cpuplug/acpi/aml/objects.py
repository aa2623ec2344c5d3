"""The objects an AML interpreter manipulates (ACPI 6.5 §19.3.5, §19.6).

Data values use plain Python types so that arithmetic stays cheap:

* Integer → ``int`` (always already masked to the table's integer width),
* String → ``str``,
* Buffer → ``bytearray`` (mutable: ``Index`` and ``CreateDWordField`` write into it),
* Package → ``list`` whose elements are values, :class:`NameRef` (a name written in
  the package, resolved when read) or ``None`` (an uninitialized element).

Everything else that can sit in a namespace node is a class here: methods, mutexes,
events, operation regions and the field units cut out of them, buffer fields, and
the namespace-only objects (Device, Processor, ThermalZone, PowerResource, Scope).
References (``RefOf``, ``Index``) are :class:`NodeRef`, :class:`ElementRef` and
:class:`LocalRef`.

Field units do their own region access, because that is where ACPI's rules about
access widths and update rules live (§19.6.48 Field): one access per access unit,
read-modify-write only when the update rule says Preserve and the field covers part
of a unit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from cpuplug.acpi.aml.opcodes import REGION_SPACE_NAMES
from cpuplug.acpi.errors import AcpiError, AmlError, AmlLimitError

if TYPE_CHECKING:
    from cpuplug.acpi.aml.namespace import Node


class RegionHandler(Protocol):
    """What ``Interpreter.map_region`` accepts: the hardware behind an address space.

    ``width_bits`` is 8, 16, 32 or 64; values are unsigned and little-endian as the
    hardware sees them.
    """

    def read(self, addr: int, width_bits: int) -> int: ...

    def write(self, addr: int, width_bits: int, value: int) -> None: ...


@dataclass(frozen=True, slots=True)
class NameRef:
    """A name written as a package element; ACPI resolves it when it is read."""

    path: str
    scope: Node


@dataclass(slots=True)
class NodeRef:
    """A reference to a namespace node (``RefOf(NAME)``, or a name passed as an object)."""

    node: Node


@dataclass(slots=True)
class ElementRef:
    """``Index(container, i)``: one element of a package, or one byte of a buffer/string."""

    container: list[Any] | bytearray | str
    index: int


@dataclass(slots=True)
class LocalRef:
    """``RefOf(LocalN)`` / ``RefOf(ArgN)``: one slot of a method frame."""

    slots: list[Any]
    index: int
    label: str


Reference: TypeAlias = NodeRef | ElementRef | LocalRef
# A value an AML expression can produce. ``Any`` appears only inside packages, whose
# elements are themselves such values (or NameRef / None).
Value: TypeAlias = int | str | bytearray | list[Any] | NodeRef | ElementRef | LocalRef


def type_name(value: object) -> str:
    """The ACPI type name of a value or namespace object, for messages and ObjectType."""
    if isinstance(value, bool):
        return "Integer"
    if isinstance(value, int):
        return "Integer"
    if isinstance(value, str):
        return "String"
    if isinstance(value, bytearray | bytes):
        return "Buffer"
    if isinstance(value, list):
        return "Package"
    if value is None:
        return "Uninitialized"
    if isinstance(value, NodeRef | ElementRef | LocalRef):
        return "Reference"
    kind = getattr(value, "kind", None)
    if isinstance(kind, str):
        return kind
    return type(value).__name__


# ObjectType() numbers, ACPI 6.5 Table 19.31.
OBJECT_TYPE_CODES: dict[str, int] = {
    "Uninitialized": 0,
    "Integer": 1,
    "String": 2,
    "Buffer": 3,
    "Package": 4,
    "FieldUnit": 5,
    "Device": 6,
    "Event": 7,
    "Method": 8,
    "Mutex": 9,
    "OperationRegion": 10,
    "PowerResource": 11,
    "Processor": 12,
    "ThermalZone": 13,
    "BufferField": 14,
    "DDBHandle": 15,
    "DebugObject": 16,
}


class Container:
    """A namespace-only object that opens a scope: Device, Processor, ThermalZone,
    PowerResource, or a plain Scope. It has no value of its own."""

    __slots__ = ("info", "kind")

    def __init__(self, kind: str, info: dict[str, int] | None = None) -> None:
        self.kind = kind
        self.info = info or {}


class Method:
    """A control method: its argument count, serialization and body.

    ``body`` is whatever the evaluator compiles (the decoded term list); ``native``
    is set instead for methods the interpreter itself provides (``\\_OSI``).
    ``compiled`` caches the evaluator's compiled form, filled once under ``lock``.
    ``int_bits`` is the integer width of the table the method came from.
    """

    kind = "Method"

    def __init__(
        self,
        name: str,
        argc: int,
        serialized: bool,
        sync_level: int,
        body: Any,
        int_bits: int,
        native: Callable[[list[Any]], Value] | None = None,
    ) -> None:
        self.name = name
        self.argc = argc
        self.serialized = serialized
        self.sync_level = sync_level
        self.body = body
        self.int_bits = int_bits
        self.native = native
        self.compiled: Any = None
        self.lock = threading.Lock()
        # The per-method mutex of a Serialized method (ACPI 6.5 §19.6.85).
        self.mutex: AmlMutex | None = (
            AmlMutex(f"{name}<method>", sync_level) if serialized else None
        )


class AmlMutex:
    """An ACPI Mutex: owned by one thread, re-acquirable by its owner (depth counted).

    ACPI (§19.6.1 Acquire) says Acquire returns True (non-zero) when the timeout
    expires and False when the mutex was obtained; 0xFFFF means wait forever. The
    interpreter caps "forever" with its own limit and raises
    :class:`AmlLimitError` there, so a deadlocked guest never hangs silently.
    """

    kind = "Mutex"
    __slots__ = ("_cond", "depth", "name", "owner", "sync_level")

    def __init__(self, name: str, sync_level: int) -> None:
        self.name = name
        self.sync_level = sync_level
        self._cond = threading.Condition(threading.Lock())
        self.owner: int | None = None
        self.depth = 0

    def owned_by_me(self) -> bool:
        return self.owner == threading.get_ident()

    def acquire(self, timeout: float | None) -> bool:
        """Take the mutex; ``timeout`` in seconds (None = no limit). True when taken."""
        me = threading.get_ident()
        with self._cond:
            if self.owner == me:
                self.depth += 1
                return True
            if self.owner is not None:
                deadline = None if timeout is None else time.monotonic() + timeout
                while self.owner is not None:
                    if deadline is None:
                        self._cond.wait()
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            self.owner = me
            self.depth = 1
            return True

    def release(self) -> bool:
        """Give one level back; True when the mutex became free. Only the owner may."""
        with self._cond:
            if self.owner != threading.get_ident():
                raise AmlError(f"Release of mutex {self.name} by a thread that does not own it")
            self.depth -= 1
            if self.depth:
                return False
            self.owner = None
            self._cond.notify()
            return True


class AmlEvent:
    """An ACPI Event: a counting semaphore signalled by Signal, consumed by Wait."""

    kind = "Event"
    __slots__ = ("_cond", "count", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self._cond = threading.Condition(threading.Lock())

    def signal(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify()

    def reset(self) -> None:
        with self._cond:
            self.count = 0

    def wait(self, timeout: float | None) -> bool:
        """Consume one signal; True if one arrived within ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.count > 0, timeout):
                return False
            self.count -= 1
            return True


class OperationRegion:
    """``OperationRegion(name, space, offset, length)``: a window of an address space.

    ``lock`` makes one field access that takes several unit accesses (a
    read-modify-write, or a field spanning units) atomic against other threads
    touching the same region. A single plain load or store takes no lock, so a
    handler that blocks does not stall other vCPUs' accesses (ACPICA likewise
    leaves its interpreter lock around region handlers).
    """

    kind = "OperationRegion"
    __slots__ = ("length", "lock", "name", "offset", "space")

    def __init__(self, name: str, space: int, offset: int, length: int) -> None:
        self.name = name
        self.space = space
        self.offset = offset
        self.length = length
        self.lock = threading.RLock()

    @property
    def space_name(self) -> str:
        return REGION_SPACE_NAMES.get(self.space, f"space {self.space:#x}")


ACCESS_BITS: dict[int, int] = {1: 8, 2: 16, 3: 32, 4: 64, 5: 8}
UPDATE_PRESERVE = 0
UPDATE_ONES = 1
UPDATE_ZEROS = 2


def _choose_any_width(bit_offset: int, bit_length: int, region_bytes: int) -> int:
    """AnyAcc: the narrowest naturally aligned access that holds the whole field,
    no wider than the region; falls back to the widest that fits the region."""
    best = 8
    for width in (8, 16, 32, 64):
        if width // 8 > max(region_bytes, 1):
            break
        best = width
        if bit_offset // width == (bit_offset + bit_length - 1) // width:
            return width
    return best


class Handlers(Protocol):
    """The interpreter's table of region handlers, looked up per access."""

    def handler_for(self, region: OperationRegion) -> RegionHandler: ...


def _call_read(handler: RegionHandler, region: OperationRegion, addr: int, width: int) -> int:
    try:
        value = handler.read(addr, width)
    except AcpiError:
        raise
    except Exception as exc:
        raise AmlError(
            f"{region.space_name} handler failed reading {width} bits at {addr:#x} "
            f"(region {region.name}): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(value, int) or isinstance(value, bool):
        raise AmlError(
            f"{region.space_name} handler returned {type(value).__name__}, not int, "
            f"for {addr:#x} (region {region.name})"
        )
    return value & ((1 << width) - 1)


def _call_write(
    handler: RegionHandler, region: OperationRegion, addr: int, width: int, value: int
) -> None:
    try:
        handler.write(addr, width, value)
    except AcpiError:
        raise
    except Exception as exc:
        raise AmlError(
            f"{region.space_name} handler failed writing {width} bits at {addr:#x} "
            f"(region {region.name}): {type(exc).__name__}: {exc}"
        ) from exc


class FieldUnit:
    """A field cut out of an operation region, with its access width and update rule.

    ``bit_offset`` counts from the start of the region. Reads and writes go to the
    region handler one access unit at a time (ACPI 6.5 §19.6.48): a unit the field
    covers completely is written as is; a partly covered unit is completed by the
    update rule: Preserve reads the unit first, WriteAsOnes / WriteAsZeros fill the
    other bits with ones / zeros and never read.
    """

    kind = "FieldUnit"
    __slots__ = (
        "_layout",
        "access_bits",
        "bit_length",
        "bit_offset",
        "lock_rule",
        "name",
        "region",
        "update_rule",
    )

    def __init__(
        self,
        name: str,
        region: OperationRegion,
        bit_offset: int,
        bit_length: int,
        access_type: int,
        update_rule: int,
        lock_rule: bool,
    ) -> None:
        if bit_length <= 0:
            raise AmlError(f"field {name} has length 0")
        self.name = name
        self.region = region
        self.bit_offset = bit_offset
        self.bit_length = bit_length
        if access_type == 0:
            self.access_bits = _choose_any_width(bit_offset, bit_length, region.length)
        elif access_type in ACCESS_BITS:
            self.access_bits = ACCESS_BITS[access_type]
        else:
            raise AmlError(f"field {name}: unknown access type {access_type}")
        self.update_rule = update_rule
        self.lock_rule = lock_rule
        self._layout: tuple[int, int, int] | None = None

    def _units(self) -> tuple[int, int, int]:
        """(first unit index, number of units, access width in bits).

        The region limit is checked here, at access time, as ACPICA does: a table
        may declare a field past a region whose size only matters if it is used.
        Computed once: a region's length never changes after it is created.
        """
        layout = self._layout
        if layout is None:
            layout = self._layout = self._compute_units()
        return layout

    def _compute_units(self) -> tuple[int, int, int]:
        if (self.bit_offset + self.bit_length + 7) // 8 > self.region.length:
            last = self.bit_offset + self.bit_length - 1
            raise AmlError(
                f"field {self.name} (bits {self.bit_offset}..{last}) lies beyond "
                f"region {self.region.name} of {self.region.length} bytes"
            )
        width = self.access_bits
        first = self.bit_offset // width
        last = (self.bit_offset + self.bit_length - 1) // width
        if (last + 1) * width // 8 > self.region.length:
            # A unit would run past the region's end: fall back to byte access,
            # which always stays inside it (ACPICA narrows the access the same way).
            width = 8
            first = self.bit_offset // 8
            last = (self.bit_offset + self.bit_length - 1) // 8
        return first, last - first + 1, width

    def read(self, handlers: Handlers) -> int:
        """The field's value as an unsigned integer of ``bit_length`` bits."""
        region = self.region
        handler = handlers.handler_for(region)
        first, count, width = self._units()
        step = width // 8
        base = region.offset + first * step
        if count == 1:
            raw = _call_read(handler, region, base, width)
        else:
            with region.lock:
                raw = 0
                for i in range(count):
                    raw |= _call_read(handler, region, base + i * step, width) << (i * width)
        return (raw >> (self.bit_offset - first * width)) & ((1 << self.bit_length) - 1)

    def write(self, handlers: Handlers, value: int) -> None:
        """Write ``value`` (truncated to the field) unit by unit per the update rule."""
        region = self.region
        handler = handlers.handler_for(region)
        first, count, width = self._units()
        step = width // 8
        unit_mask = (1 << width) - 1
        shift = self.bit_offset - first * width
        field_mask = ((1 << self.bit_length) - 1) << shift
        bits = (value << shift) & field_mask
        if count == 1 and (field_mask == unit_mask or self.update_rule != UPDATE_PRESERVE):
            # One store and no read: nothing to make atomic, so no lock is held while
            # the handler runs (it may block, e.g. a vCPU's MMIO exit).
            new = bits
            if field_mask != unit_mask and self.update_rule == UPDATE_ONES:
                new |= ~field_mask & unit_mask
            _call_write(handler, region, region.offset + first * step, width, new)
            return
        with region.lock:
            for i in range(count):
                addr = region.offset + (first + i) * step
                mask = (field_mask >> (i * width)) & unit_mask
                new = (bits >> (i * width)) & unit_mask
                if mask != unit_mask:
                    if self.update_rule == UPDATE_PRESERVE:
                        new |= _call_read(handler, region, addr, width) & ~mask & unit_mask
                    elif self.update_rule == UPDATE_ONES:
                        new |= ~mask & unit_mask
                _call_write(handler, region, addr, width, new)


class IndexFieldUnit:
    """A field of an ``IndexField``: reached by writing the index register, then
    accessing the data register (ACPI 6.5 §19.6.64)."""

    kind = "FieldUnit"
    __slots__ = ("access_bits", "bit_length", "bit_offset", "data", "index", "name", "update_rule")

    def __init__(
        self,
        name: str,
        index: FieldUnit,
        data: FieldUnit,
        bit_offset: int,
        bit_length: int,
        access_type: int,
        update_rule: int,
    ) -> None:
        self.name = name
        self.index = index
        self.data = data
        self.bit_offset = bit_offset
        self.bit_length = bit_length
        self.access_bits = ACCESS_BITS.get(access_type, 8)
        self.update_rule = update_rule

    def _span(self) -> tuple[int, int, int]:
        width = self.access_bits
        first = self.bit_offset // width
        last = (self.bit_offset + self.bit_length - 1) // width
        return first, last - first + 1, width

    def read(self, handlers: Handlers) -> int:
        first, count, width = self._span()
        step = width // 8
        raw = 0
        with self.index.region.lock:
            for i in range(count):
                self.index.write(handlers, (first + i) * step)
                raw |= (self.data.read(handlers) & ((1 << width) - 1)) << (i * width)
        return (raw >> (self.bit_offset - first * width)) & ((1 << self.bit_length) - 1)

    def write(self, handlers: Handlers, value: int) -> None:
        first, count, width = self._span()
        step = width // 8
        unit_mask = (1 << width) - 1
        shift = self.bit_offset - first * width
        field_mask = ((1 << self.bit_length) - 1) << shift
        bits = (value << shift) & field_mask
        with self.index.region.lock:
            for i in range(count):
                mask = (field_mask >> (i * width)) & unit_mask
                new = (bits >> (i * width)) & unit_mask
                self.index.write(handlers, (first + i) * step)
                if mask != unit_mask:
                    if self.update_rule == UPDATE_PRESERVE:
                        new |= self.data.read(handlers) & ~mask & unit_mask
                        self.index.write(handlers, (first + i) * step)
                    elif self.update_rule == UPDATE_ONES:
                        new |= ~mask & unit_mask
                self.data.write(handlers, new)


class BankFieldUnit:
    """A field of a ``BankField``: selects its bank by writing the bank register first."""

    kind = "FieldUnit"
    __slots__ = ("bank", "bank_value", "name", "unit")

    def __init__(self, name: str, unit: FieldUnit, bank: FieldUnit, bank_value: int) -> None:
        self.name = name
        self.unit = unit
        self.bank = bank
        self.bank_value = bank_value

    @property
    def bit_length(self) -> int:
        return self.unit.bit_length

    def read(self, handlers: Handlers) -> int:
        with self.unit.region.lock:
            self.bank.write(handlers, self.bank_value)
            return self.unit.read(handlers)

    def write(self, handlers: Handlers, value: int) -> None:
        with self.unit.region.lock:
            self.bank.write(handlers, self.bank_value)
            self.unit.write(handlers, value)


class BufferField:
    """``CreateXxxField(buffer, index, name)``: a bit range of a buffer, read and
    written in place (the buffer object is shared, not copied)."""

    kind = "BufferField"
    __slots__ = ("bit_length", "bit_offset", "buffer", "name")

    def __init__(self, name: str, buffer: bytearray, bit_offset: int, bit_length: int) -> None:
        if bit_length <= 0:
            raise AmlError(f"buffer field {name} has length 0")
        if bit_offset + bit_length > len(buffer) * 8:
            raise AmlError(
                f"buffer field {name} (bits {bit_offset}+{bit_length}) is beyond the "
                f"end of its {len(buffer)}-byte buffer"
            )
        self.name = name
        self.buffer = buffer
        self.bit_offset = bit_offset
        self.bit_length = bit_length

    def read(self) -> int:
        start = self.bit_offset // 8
        end = (self.bit_offset + self.bit_length + 7) // 8
        raw = int.from_bytes(self.buffer[start:end], "little")
        return (raw >> (self.bit_offset % 8)) & ((1 << self.bit_length) - 1)

    def write(self, value: int) -> None:
        start = self.bit_offset // 8
        end = (self.bit_offset + self.bit_length + 7) // 8
        shift = self.bit_offset % 8
        mask = ((1 << self.bit_length) - 1) << shift
        raw = int.from_bytes(self.buffer[start:end], "little")
        raw = (raw & ~mask) | ((value << shift) & mask)
        self.buffer[start:end] = raw.to_bytes(end - start, "little")


@dataclass
class Alias:
    """``Alias(source, name)``: a second name for an existing node."""

    target: Node
    kind: str = field(default="Alias")


def check_size(n: int, limit: int, what: str) -> int:
    """Refuse objects larger than the interpreter's size limit (hostile AML)."""
    if n < 0:
        raise AmlError(f"{what} of negative size {n}")
    if n > limit:
        raise AmlLimitError(f"{what} of {n} elements exceeds the limit of {limit}")
    return n

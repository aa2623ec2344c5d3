"""The AML object model: one set of immutable nodes for building, decoding and running AML.

Why one representation
----------------------
The VMM writes AML (the DSDT of docs/contract.md §2), the guest reads it back out of memory
and runs it, and the tests compare both against QEMU's real tables. If the
builder, the decoder and the interpreter each had their own idea of "a Store" or
"a Device" they would drift apart. So there is exactly one model:

* every AML construct is a frozen dataclass here (a *node*), with value equality
  and a hash, so trees can be compared, used as keys and shared freely;
* every node writes its own bytes with :meth:`Node.encode` — a table composes like
  the ASL it mirrors (``Device("C000", (Name("_HID", String("ACPI0007")), ...))``);
* :mod:`cpuplug.acpi.aml.decoder` parses AML bytes into these *same* classes, so
  ``decode(encode(x)) == x`` and ``encode(decode(b)) == b`` for canonical input;
* the interpreter walks these nodes directly (``match`` on the class).

Conventions every consumer relies on
------------------------------------
Names
    A name field is a plain ``str`` holding the ASL spelling, normalised on
    construction: segments upper-cased and padded with ``_`` to four characters,
    joined by ``.``, after an optional prefix of one ``\\`` (root) or any number
    of ``^`` (parent).  ``"\\_SB.CPUS"``, ``"^^C000"``, ``"CSEL"``; ``""`` is the
    NullName and ``"\\"`` the root itself.  :func:`split_name` turns one into
    ``(prefix, segments)`` (cached; cheap to call while interpreting).

Integers
    :class:`Integer` keeps the form it was written in (``encoding``: ``"zero"``,
    ``"one"``, ``"ones"``, ``"byte"``, ``"word"``, ``"dword"``, ``"qword"``) so
    that non-canonical input re-encodes byte for byte.  Leave ``encoding`` out
    and the smallest form is chosen (and stored, so ``Integer(5) ==
    Integer(5, "byte")``).  ``Ones`` is stored as ``2**64 - 1``; a revision-1
    table truncates it to 32 bits when evaluated, not here.

Targets
    Expression operators that may store their result (``Add(a, b, target)``,
    ``Store``'s cousins, ``Index``...) have ``target: Node | None``; ``None`` is
    written as the NullName (no store).  A target is a :class:`Local`,
    :class:`Arg`, :class:`Debug`, :class:`NameRef`, or a reference operator
    (:class:`Index`, :class:`RefOf`, :class:`DerefOf`).

References to named objects
    In an expression, a bare name is a :class:`NameRef` and a call is a
    :class:`MethodCall`.  AML writes both the same way (the name, then as many
    arguments as the method declares), so the decoder makes a ``MethodCall``
    whenever the name resolves to a method - even with zero arguments.  Build
    zero-argument calls as ``MethodCall(name, ())`` for a round trip to hold.
    Evaluating a ``NameRef`` that resolves to a method invokes it (ACPI rule).

Bodies
    Term lists (``Scope``, ``Device``, ``Method``, ``If``, ``While``...) are
    ``tuple[Node, ...]``.  ``If`` carries its ``Else`` (``else_body``: ``None``
    when there is no Else opcode at all, ``()`` for an empty one); an
    ``ElseIf`` is ``else_body=(If(...),)``.

Fields
    ``Field``/``IndexField``/``BankField`` hold a tuple of field elements:
    :class:`NamedField` (name, bits), :class:`ReservedField` (bits; ASL's
    ``Offset(n)`` is written as the reserved run that reaches it, see
    :func:`cpuplug.acpi.aml.builder.field_layout`), :class:`AccessField` and
    :class:`ExtendedAccessField`.

What is *not* a node
    ``EisaId(...)`` and ``ResourceTemplate(...)`` are ASL macros, not AML: they
    produce an :class:`Integer` and a :class:`Buffer`
    (:mod:`cpuplug.acpi.aml.builder`, :mod:`cpuplug.acpi.aml.resources`).
    ``LNotEqual`` & co. are ``LNot(LEqual(...))`` in AML and so in this model.

Invalid values (a 5-character name segment, an integer too large for its
encoding, argc > 7, ...) raise :class:`~cpuplug.acpi.errors.AmlError` on
construction, so a tree that exists can always be encoded.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal

from cpuplug.acpi.aml import opcodes as op
from cpuplug.acpi.errors import AmlError

__all__ = [
    "ONES",
    "AccessField",
    "Acquire",
    "Add",
    "Alias",
    "And",
    "Arg",
    "BankField",
    "Break",
    "BreakPoint",
    "Buffer",
    "Concatenate",
    "ConcatenateResTemplate",
    "CondRefOf",
    "Continue",
    "CopyObject",
    "CreateBitField",
    "CreateByteField",
    "CreateDWordField",
    "CreateField",
    "CreateQWordField",
    "CreateWordField",
    "DataRegion",
    "Debug",
    "Decrement",
    "DerefOf",
    "Device",
    "Divide",
    "Event",
    "ExtendedAccessField",
    "External",
    "Fatal",
    "Field",
    "FieldElement",
    "FindSetLeftBit",
    "FindSetRightBit",
    "FromBCD",
    "If",
    "Increment",
    "Index",
    "IndexField",
    "Integer",
    "IntegerEncoding",
    "LAnd",
    "LEqual",
    "LGreater",
    "LLess",
    "LNot",
    "LOr",
    "Load",
    "LoadTable",
    "Local",
    "Match",
    "Method",
    "MethodCall",
    "Mid",
    "Mod",
    "Multiply",
    "Mutex",
    "Name",
    "NameRef",
    "NamedField",
    "Nand",
    "Node",
    "Noop",
    "Nor",
    "Not",
    "Notify",
    "ObjectType",
    "Op",
    "OperationRegion",
    "Or",
    "Package",
    "PowerResource",
    "Processor",
    "RefOf",
    "Release",
    "ReservedField",
    "Reset",
    "Return",
    "Revision",
    "Scope",
    "ShiftLeft",
    "ShiftRight",
    "Signal",
    "SizeOf",
    "Sleep",
    "Stall",
    "Store",
    "String",
    "Subtract",
    "ThermalZone",
    "Timer",
    "ToBCD",
    "ToBuffer",
    "ToDecimalString",
    "ToHexString",
    "ToInteger",
    "ToString",
    "Unload",
    "VarPackage",
    "Wait",
    "While",
    "Xor",
    "encode_name",
    "encode_pkglen",
    "normalize_name",
    "split_name",
    "walk",
]

ONES = (1 << 64) - 1
MAX_PKGLEN = (1 << 28) - 1

# --------------------------------------------------------------------------- names

_LEAD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _LEAD | frozenset("0123456789")


def _check_seg(seg: str, text: str) -> str:
    seg = seg.upper()
    if not 1 <= len(seg) <= 4 or seg[0] not in _LEAD or not set(seg) <= _NAME_CHARS:
        raise AmlError(f"invalid name segment {seg!r} in name {text!r}")
    return seg.ljust(4, "_")


@functools.lru_cache(maxsize=8192)
def split_name(text: str) -> tuple[str, tuple[str, ...]]:
    """``"\\_SB.CPUS"`` -> ``("\\", ("_SB_", "CPUS"))``; ``"^^X"`` -> ``("^^", ("X___",))``.

    Validates and normalises; raises :class:`AmlError` on a malformed name.
    """
    if not isinstance(text, str):
        raise AmlError(f"a name must be a str, not {type(text).__name__}")
    if text.startswith("\\"):
        prefix, rest = "\\", text[1:]
    else:
        stripped = text.lstrip("^")
        prefix, rest = "^" * (len(text) - len(stripped)), stripped
    if rest == "":
        return prefix, ()
    segs = tuple(_check_seg(s, text) for s in rest.split("."))
    if len(segs) > 255:
        raise AmlError(f"name {text[:40]!r}... has more than 255 segments")
    return prefix, segs


@functools.lru_cache(maxsize=8192)
def normalize_name(text: str) -> str:
    """The canonical spelling of a name (what every node stores)."""
    prefix, segs = split_name(text)
    return prefix + ".".join(segs)


@functools.lru_cache(maxsize=8192)
def encode_name(text: str) -> bytes:
    """A NameString's bytes, in the one form iasl and QEMU write.

    One segment is written bare, two with DualNamePrefix, three or more with
    MultiNamePrefix and a count, none as NullName (after any prefix).
    """
    prefix, segs = split_name(text)
    head = prefix.encode("ascii")
    body = "".join(segs).encode("ascii")
    if not segs:
        return head + b"\x00"
    if len(segs) == 1:
        return head + body
    if len(segs) == 2:
        return head + bytes((op.DUAL_NAME_PREFIX,)) + body
    return head + bytes((op.MULTI_NAME_PREFIX, len(segs))) + body


# --------------------------------------------------------------------------- PkgLength


def encode_pkglen_value(value: int) -> bytes:
    """A PkgLength field holding ``value`` verbatim (field element bit lengths use this)."""
    if value < 0 or value > MAX_PKGLEN:
        raise AmlError(f"PkgLength {value} out of range (0..{MAX_PKGLEN})")
    if value < 0x40:
        return bytes((value,))
    extra = 1 if value < 1 << 12 else 2 if value < 1 << 20 else 3
    out = [(extra << 6) | (value & 0x0F)]
    rest = value >> 4
    for _ in range(extra):
        out.append(rest & 0xFF)
        rest >>= 8
    return bytes(out)


def encode_pkglen(body_len: int) -> bytes:
    """The smallest PkgLength for a package whose contents are ``body_len`` bytes.

    AML counts the PkgLength's own bytes in the length it encodes.
    """
    for size in (1, 2, 3, 4):
        total = body_len + size
        limit = 0x40 if size == 1 else 1 << (4 + 8 * (size - 1))
        if total < limit:
            return encode_pkglen_value(total)
    raise AmlError(f"package of {body_len} bytes is too long for a PkgLength")


def _pkg(opcode: int, body: bytes) -> bytes:
    return _op_bytes(opcode) + encode_pkglen(len(body)) + body


def _op_bytes(opcode: int) -> bytes:
    return bytes((opcode,)) if opcode <= 0xFF else bytes((opcode >> 8, opcode & 0xFF))


def _terms(body: tuple[Node, ...]) -> bytes:
    return b"".join(n.encode() for n in body)


def _check_range(what: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise AmlError(f"{what} {value!r} does not fit in {bits} bits")


def _normalize(obj: object, attr: str) -> None:
    object.__setattr__(obj, attr, normalize_name(getattr(obj, attr)))


def _tuple(obj: object, attr: str) -> None:
    value = getattr(obj, attr)
    if not isinstance(value, tuple):
        object.__setattr__(obj, attr, tuple(value))


# --------------------------------------------------------------------------- base


class Node:
    """Base of every AML node: something that writes its own AML bytes."""

    __slots__ = ()

    def encode(self) -> bytes:
        """This node's AML bytes."""
        raise NotImplementedError


def walk(tree: object) -> Iterator[Node]:
    """Every node in ``tree`` (a node or a tuple of them), depth first, parents first.

    Follows every dataclass field that holds a node or a tuple, so it needs no
    per-class knowledge of where the children are.
    """
    if isinstance(tree, Node):
        yield tree
    if isinstance(tree, tuple):
        for item in tree:
            yield from walk(item)
        return
    for name in getattr(tree, "__dataclass_fields__", {}):
        value = getattr(tree, name)
        if isinstance(value, Node | tuple):
            yield from walk(value)


class Op(Node):
    """A fixed-shape operator: an opcode followed by its operands in field order.

    ``KINDS`` spells each field's AML role, one letter per dataclass field:
    ``T`` TermArg (a Node), ``S`` SuperName (a Node), ``t`` Target (Node or
    ``None`` = NullName), ``N`` NameString (str), ``B``/``W``/``D`` a raw
    byte/word/dword.  The encoder and the decoder are both driven by it, which is
    what keeps the two in step.
    """

    __slots__ = ()
    OPCODE: ClassVar[int]
    KINDS: ClassVar[str] = ""

    @classmethod
    def operands(cls) -> tuple[tuple[str, str], ...]:
        """``(field name, kind)`` pairs in encoding order (cached per class)."""
        cached = _OPERANDS.get(cls)
        if cached is None:
            names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
            if len(names) != len(cls.KINDS):
                raise TypeError(f"{cls.__name__}: KINDS does not match its fields")
            cached = _OPERANDS[cls] = tuple(zip(names, cls.KINDS, strict=True))
        return cached

    def __post_init__(self) -> None:
        for name, kind in self.operands():
            value = getattr(self, name)
            if kind == "N":
                _normalize(self, name)
            elif kind in "BWD":
                _check_range(f"{type(self).__name__}.{name}", value, _RAW_BITS[kind])
            elif kind in "TS" and not isinstance(value, Node):
                raise AmlError(f"{type(self).__name__}.{name} must be a Node, not {value!r}")
            elif kind == "t" and value is not None and not isinstance(value, Node):
                raise AmlError(f"{type(self).__name__}.{name} must be a Node or None")

    def encode(self) -> bytes:
        parts = [_op_bytes(self.OPCODE)]
        for name, kind in self.operands():
            value = getattr(self, name)
            if kind in "TS":
                parts.append(value.encode())
            elif kind == "t":
                parts.append(b"\x00" if value is None else value.encode())
            elif kind == "N":
                parts.append(encode_name(value))
            else:
                parts.append(value.to_bytes(_RAW_BITS[kind] // 8, "little"))
        return b"".join(parts)


_RAW_BITS = {"B": 8, "W": 16, "D": 32}
_OPERANDS: dict[type[Op], tuple[tuple[str, str], ...]] = {}

# --------------------------------------------------------------------------- data objects

IntegerEncoding = Literal["zero", "one", "ones", "byte", "word", "dword", "qword"]

_INT_PREFIX: dict[str, tuple[int, int]] = {
    "byte": (op.BYTE_PREFIX, 1),
    "word": (op.WORD_PREFIX, 2),
    "dword": (op.DWORD_PREFIX, 4),
    "qword": (op.QWORD_PREFIX, 8),
}


def smallest_encoding(value: int) -> IntegerEncoding:
    """The form iasl and QEMU choose for a constant: ZeroOp, OneOp, OnesOp, or the
    narrowest of Byte/Word/DWord/QWordPrefix."""
    if value == 0:
        return "zero"
    if value == 1:
        return "one"
    if value == ONES:
        return "ones"
    if value <= 0xFF:
        return "byte"
    if value <= 0xFFFF:
        return "word"
    if value <= 0xFFFF_FFFF:
        return "dword"
    return "qword"


@dataclass(frozen=True, slots=True)
class Integer(Node):
    """An integer constant, remembering its written form (see module docstring)."""

    value: int
    encoding: IntegerEncoding | None = None

    def __post_init__(self) -> None:
        _check_range("integer", self.value, 64)
        if self.encoding is None:
            object.__setattr__(self, "encoding", smallest_encoding(self.value))
            return
        fixed = {"zero": 0, "one": 1, "ones": ONES}
        if self.encoding in fixed:
            if self.value != fixed[self.encoding]:
                raise AmlError(f"{self.encoding} cannot hold {self.value:#x}")
        elif self.encoding in _INT_PREFIX:
            _check_range(f"{self.encoding} integer", self.value, 8 * _INT_PREFIX[self.encoding][1])
        else:
            raise AmlError(f"unknown integer encoding {self.encoding!r}")

    def encode(self) -> bytes:
        if self.encoding == "zero":
            return b"\x00"
        if self.encoding == "one":
            return b"\x01"
        if self.encoding == "ones":
            return b"\xff"
        assert self.encoding is not None
        prefix, size = _INT_PREFIX[self.encoding]
        return bytes((prefix,)) + self.value.to_bytes(size, "little")


@dataclass(frozen=True, slots=True)
class String(Node):
    """A string constant: ASCII 0x01-0x7F, written NUL-terminated."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or any(not 0 < ord(c) < 0x80 for c in self.value):
            raise AmlError(f"AML strings are ASCII 0x01-0x7F: {self.value!r}")

    def encode(self) -> bytes:
        return bytes((op.STRING_PREFIX,)) + self.value.encode("ascii") + b"\x00"


@dataclass(frozen=True, slots=True)
class Buffer(Node):
    """``Buffer(size){data}``. ``size`` defaults to ``Integer(len(data))``; it may be
    larger than the initializer (the rest is zero) and may be any TermArg."""

    data: bytes
    size: Node | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            object.__setattr__(self, "data", bytes(self.data))
        if self.size is None:
            object.__setattr__(self, "size", Integer(len(self.data)))

    def encode(self) -> bytes:
        assert self.size is not None
        return _pkg(op.BUFFER_OP, self.size.encode() + self.data)


@dataclass(frozen=True, slots=True)
class Package(Node):
    """``Package(count){elements}`` (PackageOp, count < 256). ``count`` defaults to
    ``len(elements)`` and may exceed it (QEMU's ``CNEW`` is ``Package(255){}``).
    Elements are data objects or :class:`NameRef` (a reference, never a call)."""

    elements: tuple[Node, ...] = ()
    count: int | None = None

    def __post_init__(self) -> None:
        _tuple(self, "elements")
        if self.count is None:
            object.__setattr__(self, "count", len(self.elements))
        assert self.count is not None
        _check_range("Package count", self.count, 8)
        if len(self.elements) > self.count:
            raise AmlError(f"Package({self.count}) has {len(self.elements)} elements")

    def encode(self) -> bytes:
        assert self.count is not None
        return _pkg(op.PACKAGE_OP, bytes((self.count,)) + _terms(self.elements))


@dataclass(frozen=True, slots=True)
class VarPackage(Node):
    """``VarPackage(count){elements}``: the count is a TermArg, evaluated at run time."""

    count: Node
    elements: tuple[Node, ...] = ()

    def __post_init__(self) -> None:
        _tuple(self, "elements")

    def encode(self) -> bytes:
        return _pkg(op.VAR_PACKAGE_OP, self.count.encode() + _terms(self.elements))


@dataclass(frozen=True, slots=True)
class Local(Node):
    """``Local0``..``Local7``."""

    index: int

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or not 0 <= self.index <= 7:
            raise AmlError(f"Local{self.index} does not exist (Local0-Local7)")

    def encode(self) -> bytes:
        return bytes((op.LOCAL0_OP + self.index,))


@dataclass(frozen=True, slots=True)
class Arg(Node):
    """``Arg0``..``Arg6``."""

    index: int

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or not 0 <= self.index <= 6:
            raise AmlError(f"Arg{self.index} does not exist (Arg0-Arg6)")

    def encode(self) -> bytes:
        return bytes((op.ARG0_OP + self.index,))


@dataclass(frozen=True, slots=True)
class NameRef(Node):
    """A reference to a named object, by the name as written (not resolved)."""

    path: str

    def __post_init__(self) -> None:
        _normalize(self, "path")

    def encode(self) -> bytes:
        return encode_name(self.path)


@dataclass(frozen=True, slots=True)
class MethodCall(Node):
    """``PATH(args...)``: a method invocation; ``path`` as written, resolved at run time."""

    path: str
    args: tuple[Node, ...] = ()

    def __post_init__(self) -> None:
        _normalize(self, "path")
        _tuple(self, "args")
        if len(self.args) > 7:
            raise AmlError(f"call of {self.path} with {len(self.args)} arguments (max 7)")

    def encode(self) -> bytes:
        return encode_name(self.path) + _terms(self.args)


# --------------------------------------------------------------------------- fixed operators


@dataclass(frozen=True, slots=True)
class Debug(Op):
    """The Debug object (a target that prints)."""

    OPCODE = op.DEBUG_OP


@dataclass(frozen=True, slots=True)
class Revision(Op):
    """The ``Revision`` constant (the interpreter's revision)."""

    OPCODE = op.REVISION_OP


@dataclass(frozen=True, slots=True)
class Timer(Op):
    """``Timer``: a 100 ns monotonic tick count."""

    OPCODE = op.TIMER_OP


@dataclass(frozen=True, slots=True)
class Noop(Op):
    OPCODE = op.NOOP_OP


@dataclass(frozen=True, slots=True)
class Break(Op):
    """Leave the innermost While."""

    OPCODE = op.BREAK_OP


@dataclass(frozen=True, slots=True)
class Continue(Op):
    """Next iteration of the innermost While."""

    OPCODE = op.CONTINUE_OP


@dataclass(frozen=True, slots=True)
class BreakPoint(Op):
    OPCODE = op.BREAKPOINT_OP


@dataclass(frozen=True, slots=True)
class Return(Op):
    """``Return(value)``; ASL's bare ``Return`` is ``Return(Integer(0))``."""

    value: Node
    OPCODE = op.RETURN_OP
    KINDS = "T"


@dataclass(frozen=True, slots=True)
class Store(Op):
    """``Store(source, target)`` / ``target = source``."""

    source: Node
    target: Node
    OPCODE = op.STORE_OP
    KINDS = "TS"


@dataclass(frozen=True, slots=True)
class CopyObject(Op):
    source: Node
    target: Node
    OPCODE = op.COPY_OBJECT_OP
    KINDS = "TS"


@dataclass(frozen=True, slots=True)
class Notify(Op):
    """``Notify(object, value)``: deliver a notification to OSPM."""

    object: Node
    value: Node
    OPCODE = op.NOTIFY_OP
    KINDS = "ST"


@dataclass(frozen=True, slots=True)
class Sleep(Op):
    """``Sleep(milliseconds)`` (may yield)."""

    msec: Node
    OPCODE = op.SLEEP_OP
    KINDS = "T"


@dataclass(frozen=True, slots=True)
class Stall(Op):
    """``Stall(microseconds)`` (busy wait)."""

    usec: Node
    OPCODE = op.STALL_OP
    KINDS = "T"


@dataclass(frozen=True, slots=True)
class Acquire(Op):
    """``Acquire(mutex, timeout_ms)``; 0xFFFF waits forever. Yields Ones on timeout."""

    mutex: Node
    timeout: int = 0xFFFF
    OPCODE = op.ACQUIRE_OP
    KINDS = "SW"


@dataclass(frozen=True, slots=True)
class Release(Op):
    mutex: Node
    OPCODE = op.RELEASE_OP
    KINDS = "S"


@dataclass(frozen=True, slots=True)
class Signal(Op):
    event: Node
    OPCODE = op.SIGNAL_OP
    KINDS = "S"


@dataclass(frozen=True, slots=True)
class Wait(Op):
    event: Node
    timeout: Node
    OPCODE = op.WAIT_OP
    KINDS = "ST"


@dataclass(frozen=True, slots=True)
class Reset(Op):
    event: Node
    OPCODE = op.RESET_OP
    KINDS = "S"


@dataclass(frozen=True, slots=True)
class Fatal(Op):
    type: int
    code: int
    arg: Node
    OPCODE = op.FATAL_OP
    KINDS = "BDT"


@dataclass(frozen=True, slots=True)
class Load(Op):
    name: str
    target: Node | None = None
    OPCODE = op.LOAD_OP
    KINDS = "Nt"


@dataclass(frozen=True, slots=True)
class Unload(Op):
    handle: Node
    OPCODE = op.UNLOAD_OP
    KINDS = "S"


@dataclass(frozen=True, slots=True)
class LoadTable(Op):
    signature: Node
    oem_id: Node
    oem_table_id: Node
    root_path: Node
    parameter_path: Node
    parameter_data: Node
    OPCODE = op.LOAD_TABLE_OP
    KINDS = "TTTTTT"


# -- integer arithmetic and bit operations (result also stored to target when given)


@dataclass(frozen=True, slots=True)
class _Binary(Op):
    left: Node
    right: Node
    target: Node | None = None
    KINDS = "TTt"


@dataclass(frozen=True, slots=True)
class Add(_Binary):
    OPCODE = op.ADD_OP


@dataclass(frozen=True, slots=True)
class Subtract(_Binary):
    OPCODE = op.SUBTRACT_OP


@dataclass(frozen=True, slots=True)
class Multiply(_Binary):
    OPCODE = op.MULTIPLY_OP


@dataclass(frozen=True, slots=True)
class Mod(_Binary):
    OPCODE = op.MOD_OP


@dataclass(frozen=True, slots=True)
class ShiftLeft(_Binary):
    OPCODE = op.SHIFT_LEFT_OP


@dataclass(frozen=True, slots=True)
class ShiftRight(_Binary):
    OPCODE = op.SHIFT_RIGHT_OP


@dataclass(frozen=True, slots=True)
class And(_Binary):
    OPCODE = op.AND_OP


@dataclass(frozen=True, slots=True)
class Nand(_Binary):
    OPCODE = op.NAND_OP


@dataclass(frozen=True, slots=True)
class Or(_Binary):
    OPCODE = op.OR_OP


@dataclass(frozen=True, slots=True)
class Nor(_Binary):
    OPCODE = op.NOR_OP


@dataclass(frozen=True, slots=True)
class Xor(_Binary):
    OPCODE = op.XOR_OP


@dataclass(frozen=True, slots=True)
class Concatenate(_Binary):
    """Concatenate two integers/strings/buffers (result type of ``left``)."""

    OPCODE = op.CONCAT_OP


@dataclass(frozen=True, slots=True)
class ConcatenateResTemplate(_Binary):
    OPCODE = op.CONCAT_RES_OP


@dataclass(frozen=True, slots=True)
class Index(Op):
    """``Index(source, index, target)``: a reference to an element of a
    Package/Buffer/String; usable as a target itself (``Index(P, 2) = 5``)."""

    source: Node
    index: Node
    target: Node | None = None
    OPCODE = op.INDEX_OP
    KINDS = "TTt"


@dataclass(frozen=True, slots=True)
class Divide(Op):
    """``Divide(dividend, divisor, remainder, quotient)``; yields the quotient."""

    dividend: Node
    divisor: Node
    remainder: Node | None = None
    quotient: Node | None = None
    OPCODE = op.DIVIDE_OP
    KINDS = "TTtt"


@dataclass(frozen=True, slots=True)
class _Unary(Op):
    operand: Node
    target: Node | None = None
    KINDS = "Tt"


@dataclass(frozen=True, slots=True)
class Not(_Unary):
    OPCODE = op.NOT_OP


@dataclass(frozen=True, slots=True)
class FindSetLeftBit(_Unary):
    OPCODE = op.FIND_SET_LEFT_BIT_OP


@dataclass(frozen=True, slots=True)
class FindSetRightBit(_Unary):
    OPCODE = op.FIND_SET_RIGHT_BIT_OP


@dataclass(frozen=True, slots=True)
class ToBuffer(_Unary):
    OPCODE = op.TO_BUFFER_OP


@dataclass(frozen=True, slots=True)
class ToInteger(_Unary):
    OPCODE = op.TO_INTEGER_OP


@dataclass(frozen=True, slots=True)
class ToDecimalString(_Unary):
    OPCODE = op.TO_DECIMAL_STRING_OP


@dataclass(frozen=True, slots=True)
class ToHexString(_Unary):
    OPCODE = op.TO_HEX_STRING_OP


@dataclass(frozen=True, slots=True)
class FromBCD(_Unary):
    OPCODE = op.FROM_BCD_OP


@dataclass(frozen=True, slots=True)
class ToBCD(_Unary):
    OPCODE = op.TO_BCD_OP


@dataclass(frozen=True, slots=True)
class ToString(Op):
    """``ToString(buffer, length, target)``; length Ones = up to the first NUL."""

    source: Node
    length: Node
    target: Node | None = None
    OPCODE = op.TO_STRING_OP
    KINDS = "TTt"


@dataclass(frozen=True, slots=True)
class Mid(Op):
    source: Node
    index: Node
    length: Node
    target: Node | None = None
    OPCODE = op.MID_OP
    KINDS = "TTTt"


@dataclass(frozen=True, slots=True)
class Match(Op):
    """``Match(package, op1, obj1, op2, obj2, start)``; ops are MTR/MEQ/... codes 0-5."""

    package: Node
    op1: int
    obj1: Node
    op2: int
    obj2: Node
    start: Node
    OPCODE = op.MATCH_OP
    KINDS = "TBTBTT"


@dataclass(frozen=True, slots=True)
class Increment(Op):
    """``Increment(target)`` / ``target++``."""

    target: Node
    OPCODE = op.INCREMENT_OP
    KINDS = "S"


@dataclass(frozen=True, slots=True)
class Decrement(Op):
    target: Node
    OPCODE = op.DECREMENT_OP
    KINDS = "S"


# -- logic (results are Ones/Zero; LNotEqual is LNot(LEqual(...)) etc.)


@dataclass(frozen=True, slots=True)
class _Logic(Op):
    left: Node
    right: Node
    KINDS = "TT"


@dataclass(frozen=True, slots=True)
class LAnd(_Logic):
    OPCODE = op.LAND_OP


@dataclass(frozen=True, slots=True)
class LOr(_Logic):
    OPCODE = op.LOR_OP


@dataclass(frozen=True, slots=True)
class LEqual(_Logic):
    OPCODE = op.LEQUAL_OP


@dataclass(frozen=True, slots=True)
class LGreater(_Logic):
    OPCODE = op.LGREATER_OP


@dataclass(frozen=True, slots=True)
class LLess(_Logic):
    OPCODE = op.LLESS_OP


@dataclass(frozen=True, slots=True)
class LNot(Op):
    operand: Node
    OPCODE = op.LNOT_OP
    KINDS = "T"


# -- references and object information


@dataclass(frozen=True, slots=True)
class RefOf(Op):
    object: Node
    OPCODE = op.REF_OF_OP
    KINDS = "S"


@dataclass(frozen=True, slots=True)
class CondRefOf(Op):
    """``CondRefOf(object, target)``: True if the object exists (stores a reference)."""

    object: Node
    target: Node | None = None
    OPCODE = op.COND_REF_OF_OP
    KINDS = "St"


@dataclass(frozen=True, slots=True)
class DerefOf(Op):
    source: Node
    OPCODE = op.DEREF_OF_OP
    KINDS = "T"


@dataclass(frozen=True, slots=True)
class SizeOf(Op):
    object: Node
    OPCODE = op.SIZE_OF_OP
    KINDS = "S"


@dataclass(frozen=True, slots=True)
class ObjectType(Op):
    object: Node
    OPCODE = op.OBJECT_TYPE_OP
    KINDS = "S"


# -- buffer fields


@dataclass(frozen=True, slots=True)
class _CreateSized(Op):
    buffer: Node
    index: Node
    name: str
    KINDS = "TTN"


@dataclass(frozen=True, slots=True)
class CreateBitField(_CreateSized):
    """``CreateBitField(buffer, bit_index, name)``."""

    OPCODE = op.CREATE_BIT_FIELD_OP


@dataclass(frozen=True, slots=True)
class CreateByteField(_CreateSized):
    """``CreateByteField(buffer, byte_index, name)``."""

    OPCODE = op.CREATE_BYTE_FIELD_OP


@dataclass(frozen=True, slots=True)
class CreateWordField(_CreateSized):
    OPCODE = op.CREATE_WORD_FIELD_OP


@dataclass(frozen=True, slots=True)
class CreateDWordField(_CreateSized):
    OPCODE = op.CREATE_DWORD_FIELD_OP


@dataclass(frozen=True, slots=True)
class CreateQWordField(_CreateSized):
    OPCODE = op.CREATE_QWORD_FIELD_OP


@dataclass(frozen=True, slots=True)
class CreateField(Op):
    """``CreateField(buffer, bit_index, num_bits, name)``."""

    buffer: Node
    bit_index: Node
    num_bits: Node
    name: str
    OPCODE = op.CREATE_FIELD_OP
    KINDS = "TTTN"


# -- simple named objects


@dataclass(frozen=True, slots=True)
class Name(Op):
    """``Name(name, value)``: a named data object (Integer/String/Buffer/Package...)."""

    name: str
    value: Node
    OPCODE = op.NAME_OP
    KINDS = "NT"


@dataclass(frozen=True, slots=True)
class Alias(Op):
    source: str
    alias: str
    OPCODE = op.ALIAS_OP
    KINDS = "NN"


@dataclass(frozen=True, slots=True)
class Mutex(Op):
    """``Mutex(name, sync_level)``."""

    name: str
    sync_level: int = 0
    OPCODE = op.MUTEX_OP
    KINDS = "NB"

    def __post_init__(self) -> None:
        Op.__post_init__(self)
        _check_range("Mutex sync level", self.sync_level, 4)


@dataclass(frozen=True, slots=True)
class Event(Op):
    name: str
    OPCODE = op.EVENT_OP
    KINDS = "N"


@dataclass(frozen=True, slots=True)
class OperationRegion(Op):
    """``OperationRegion(name, space, offset, length)``; ``space`` is the RegionSpace
    byte (``opcodes.REGION_SPACES["SystemMemory"]`` = 0)."""

    name: str
    space: int
    offset: Node
    length: Node
    OPCODE = op.OP_REGION_OP
    KINDS = "NBTT"


@dataclass(frozen=True, slots=True)
class DataRegion(Op):
    name: str
    signature: Node
    oem_id: Node
    oem_table_id: Node
    OPCODE = op.DATA_REGION_OP
    KINDS = "NTTT"


@dataclass(frozen=True, slots=True)
class External(Op):
    """``External(name, object_type, argc)`` as iasl emits it (ExternalOp 0x15);
    object type 8 is a method, whose ``argc`` the decoder learns from here."""

    name: str
    object_type: int
    argc: int = 0
    OPCODE = op.EXTERNAL_OP
    KINDS = "NBB"


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True, slots=True)
class _NamedBlock(Node):
    """``Keyword(name){body}`` for the blocks that differ only in their opcode."""

    OPCODE: ClassVar[int]

    name: str
    body: tuple[Node, ...] = ()

    def __post_init__(self) -> None:
        _normalize(self, "name")
        _tuple(self, "body")

    def encode(self) -> bytes:
        return _pkg(self.OPCODE, encode_name(self.name) + _terms(self.body))


@dataclass(frozen=True, slots=True)
class Scope(_NamedBlock):
    """``Scope(name){body}``: open an existing namespace node."""

    OPCODE = op.SCOPE_OP


@dataclass(frozen=True, slots=True)
class Device(_NamedBlock):
    """``Device(name){body}``."""

    OPCODE = op.DEVICE_OP


@dataclass(frozen=True, slots=True)
class ThermalZone(_NamedBlock):
    """``ThermalZone(name){body}``."""

    OPCODE = op.THERMAL_ZONE_OP


@dataclass(frozen=True, slots=True)
class Processor(Node):
    """Legacy ``Processor(name, proc_id, pblk_address, pblk_length){body}``."""

    name: str
    proc_id: int
    pblk_address: int = 0
    pblk_length: int = 0
    body: tuple[Node, ...] = ()

    def __post_init__(self) -> None:
        _normalize(self, "name")
        _tuple(self, "body")
        _check_range("Processor id", self.proc_id, 8)
        _check_range("Processor PBLK address", self.pblk_address, 32)
        _check_range("Processor PBLK length", self.pblk_length, 8)

    def encode(self) -> bytes:
        head = encode_name(self.name) + struct.pack(
            "<BIB", self.proc_id, self.pblk_address, self.pblk_length
        )
        return _pkg(op.PROCESSOR_OP, head + _terms(self.body))


@dataclass(frozen=True, slots=True)
class PowerResource(Node):
    name: str
    system_level: int
    resource_order: int
    body: tuple[Node, ...] = ()

    def __post_init__(self) -> None:
        _normalize(self, "name")
        _tuple(self, "body")
        _check_range("PowerResource system level", self.system_level, 8)
        _check_range("PowerResource order", self.resource_order, 16)

    def encode(self) -> bytes:
        head = encode_name(self.name) + struct.pack("<BH", self.system_level, self.resource_order)
        return _pkg(op.POWER_RES_OP, head + _terms(self.body))


@dataclass(frozen=True, slots=True)
class Method(Node):
    """``Method(name, argc, serialized, sync_level){body}``."""

    name: str
    argc: int = 0
    serialized: bool = False
    sync_level: int = 0
    body: tuple[Node, ...] = ()

    def __post_init__(self) -> None:
        _normalize(self, "name")
        _tuple(self, "body")
        _check_range("Method argc", self.argc, 3)
        _check_range("Method sync level", self.sync_level, 4)
        object.__setattr__(self, "serialized", bool(self.serialized))

    @property
    def flags(self) -> int:
        """The MethodFlags byte."""
        return self.argc | (0x08 if self.serialized else 0) | (self.sync_level << 4)

    def encode(self) -> bytes:
        return _pkg(op.METHOD_OP, encode_name(self.name) + bytes((self.flags,)) + _terms(self.body))


@dataclass(frozen=True, slots=True)
class If(Node):
    """``If(predicate){body} Else {else_body}``; ``else_body`` None = no Else at all."""

    predicate: Node
    body: tuple[Node, ...] = ()
    else_body: tuple[Node, ...] | None = None

    def __post_init__(self) -> None:
        _tuple(self, "body")
        if self.else_body is not None:
            _tuple(self, "else_body")

    def encode(self) -> bytes:
        out = _pkg(op.IF_OP, self.predicate.encode() + _terms(self.body))
        if self.else_body is not None:
            out += _pkg(op.ELSE_OP, _terms(self.else_body))
        return out


@dataclass(frozen=True, slots=True)
class While(Node):
    """``While(predicate){body}``."""

    predicate: Node
    body: tuple[Node, ...] = ()

    def __post_init__(self) -> None:
        _tuple(self, "body")

    def encode(self) -> bytes:
        return _pkg(op.WHILE_OP, self.predicate.encode() + _terms(self.body))


# --------------------------------------------------------------------------- fields


@dataclass(frozen=True, slots=True)
class NamedField(Node):
    """A named field unit of ``bits`` bits (NameSeg + bit-length PkgLength)."""

    name: str
    bits: int

    def __post_init__(self) -> None:
        _normalize(self, "name")
        prefix, segs = split_name(self.name)
        if prefix or len(segs) != 1:
            raise AmlError(f"a field name is one NameSeg, not {self.name!r}")
        _check_range("field bit length", self.bits, 28)

    def encode(self) -> bytes:
        return self.name.encode("ascii") + encode_pkglen_value(self.bits)


@dataclass(frozen=True, slots=True)
class ReservedField(Node):
    """``bits`` unnamed bits (ASL ``, n`` or the gap an ``Offset(n)`` skips)."""

    bits: int

    def __post_init__(self) -> None:
        _check_range("reserved field bit length", self.bits, 28)

    def encode(self) -> bytes:
        return b"\x00" + encode_pkglen_value(self.bits)


@dataclass(frozen=True, slots=True)
class AccessField(Node):
    """``AccessAs(access_type, attrib)`` inside a field list."""

    access_type: int
    attrib: int = 0

    def __post_init__(self) -> None:
        _check_range("AccessAs type", self.access_type, 8)
        _check_range("AccessAs attribute", self.attrib, 8)

    def encode(self) -> bytes:
        return bytes((0x01, self.access_type, self.attrib))


@dataclass(frozen=True, slots=True)
class ExtendedAccessField(Node):
    access_type: int
    attrib: int
    length: int

    def __post_init__(self) -> None:
        _check_range("AccessAs type", self.access_type, 8)
        _check_range("AccessAs attribute", self.attrib, 8)
        _check_range("AccessAs length", self.length, 8)

    def encode(self) -> bytes:
        return bytes((0x03, self.access_type, self.attrib, self.length))


FieldElement = NamedField | ReservedField | AccessField | ExtendedAccessField


def _field_flags(access_type: int, lock: bool, update_rule: int) -> int:
    _check_range("field access type", access_type, 4)
    _check_range("field update rule", update_rule, 2)
    if access_type > 5:
        raise AmlError(f"field access type {access_type} is reserved")
    if update_rule > 2:
        raise AmlError(f"field update rule {update_rule} is reserved")
    return access_type | (0x10 if lock else 0) | (update_rule << 5)


class _FieldList:
    """What Field, IndexField and BankField share: the element list and the flags
    byte (access type, lock, update rule), checked on construction."""

    __slots__ = ()
    elements: tuple[FieldElement, ...]
    access_type: int
    lock: bool
    update_rule: int

    def _check_field_list(self) -> None:
        _tuple(self, "elements")
        object.__setattr__(self, "lock", bool(self.lock))
        _field_flags(self.access_type, self.lock, self.update_rule)

    @property
    def flags(self) -> int:
        return _field_flags(self.access_type, self.lock, self.update_rule)


@dataclass(frozen=True, slots=True)
class Field(_FieldList, Node):
    """``Field(region, access_type, lock, update_rule){elements}``.

    ``access_type``: ``opcodes.ACCESS_TYPES`` (AnyAcc 0 .. BufferAcc 5);
    ``lock``: Lock (True) / NoLock; ``update_rule``: ``opcodes.UPDATE_RULES``
    (Preserve 0, WriteAsOnes 1, WriteAsZeros 2).
    """

    region: str
    elements: tuple[FieldElement, ...]
    access_type: int = 0
    lock: bool = False
    update_rule: int = 0

    def __post_init__(self) -> None:
        _normalize(self, "region")
        self._check_field_list()

    def encode(self) -> bytes:
        body = encode_name(self.region) + bytes((self.flags,)) + _terms(self.elements)
        return _pkg(op.FIELD_OP, body)


@dataclass(frozen=True, slots=True)
class IndexField(_FieldList, Node):
    """``IndexField(index, data, access_type, lock, update_rule){elements}``."""

    index: str
    data: str
    elements: tuple[FieldElement, ...]
    access_type: int = 0
    lock: bool = False
    update_rule: int = 0

    def __post_init__(self) -> None:
        _normalize(self, "index")
        _normalize(self, "data")
        self._check_field_list()

    def encode(self) -> bytes:
        body = (
            encode_name(self.index)
            + encode_name(self.data)
            + bytes((self.flags,))
            + _terms(self.elements)
        )
        return _pkg(op.INDEX_FIELD_OP, body)


@dataclass(frozen=True, slots=True)
class BankField(_FieldList, Node):
    """``BankField(region, bank, bank_value, access_type, lock, update_rule){elements}``."""

    region: str
    bank: str
    bank_value: Node
    elements: tuple[FieldElement, ...]
    access_type: int = 0
    lock: bool = False
    update_rule: int = 0

    def __post_init__(self) -> None:
        _normalize(self, "region")
        _normalize(self, "bank")
        self._check_field_list()

    def encode(self) -> bytes:
        body = (
            encode_name(self.region)
            + encode_name(self.bank)
            + self.bank_value.encode()
            + bytes((self.flags,))
            + _terms(self.elements)
        )
        return _pkg(op.BANK_FIELD_OP, body)

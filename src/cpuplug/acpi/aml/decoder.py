"""Reading AML: bytes into the node classes of :mod:`cpuplug.acpi.aml.nodes`.

The decoder produces the very nodes the builder writes, so ``decode(encode(x)) ==
x`` and ``encode(decode(b)) == b`` for canonical AML (what iasl and QEMU emit).

The one hard part of AML's grammar is a method call: ``FOO 1 2`` is a name followed
by as many arguments as ``FOO`` declares, and nothing in the call says how many. So
decoding is two passes over the block:

1. *declarations*: walk the object hierarchy (Scope, Device, Processor, If at table
   level...) skipping every method body by its PkgLength, and record each Method's
   absolute path and argument count (and ``External(..., MethodObj, n)``). This pass
   is tolerant: a container it cannot read is skipped, not fatal.
2. *terms*: parse everything; a name in an expression is a :class:`MethodCall` when
   it resolves - by ACPI's search rules (§5.3: a single relative NameSeg is looked
   up in the current scope and then each parent up to the root; prefixed or
   multi-segment names are not searched) - to a known method, and a
   :class:`NameRef` otherwise. ``known_methods`` adds methods declared in other
   tables (an SSDT calling DSDT methods).

The limit of this (shared with ACPICA's disassembler): a call to a method that is
declared *later*, made from outside any method body (object level, where ASL only
allows data anyway), or made before a method declared inside another method's
body, cannot be told from a name followed by unrelated terms. Such AML either
fails with an :class:`AmlError` or decodes as a :class:`NameRef` followed by the
arguments as separate terms; either way ``encode`` still gives back the input bytes.

Anything unknown or truncated raises :class:`~cpuplug.acpi.errors.AmlError` naming
the opcode and its byte offset (relative to ``base``, so a whole table reports
table offsets); no other exception escapes, and decoding is linear in the input
with a bounded nesting depth.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping

from cpuplug.acpi.aml import nodes as n
from cpuplug.acpi.aml import opcodes as op
from cpuplug.acpi.aml.builder import DefinitionBlock
from cpuplug.acpi.errors import AmlError, AmlLimitError
from cpuplug.acpi.tables import HEADER_SIZE, Sdt

__all__ = [
    "MAX_DEPTH",
    "MAX_TERMS",
    "decode_definition_block",
    "decode_table",
    "find_methods",
]

MAX_DEPTH = 128
"""Deepest nesting of terms accepted; real tables stay far below it."""

MAX_TERMS = 256 * 1024
"""Most terms one pass over one definition block may decode. A 512-vCPU cpuplug
DSDT (46 KB) has about 10,000; without a cap a table of zero bytes (each a ZeroOp)
costs one node per byte, and 8 MiB of them took 41 s and 560 MB to decode."""

Path = tuple[str, ...]

# Methods every ACPI implementation provides (ACPI 6.5 §5.7).
_BUILTIN_METHODS: dict[Path, int] = {("_OSI",): 1}

_LEAD = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME = _LEAD | frozenset(b"0123456789")
_NAME_START = _LEAD | {op.ROOT_CHAR, op.PARENT_PREFIX, op.DUAL_NAME_PREFIX, op.MULTI_NAME_PREFIX}
_METHOD_OBJECT_TYPE = 8


def _op_classes() -> dict[int, type[n.Op]]:
    table: dict[int, type[n.Op]] = {}
    stack: list[type[n.Op]] = list(n.Op.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        code = getattr(cls, "OPCODE", None)
        # dataclass(slots=True) replaces each class by a new one; the discarded
        # original can still be listed as a subclass, so take the module's class.
        if code is not None and getattr(n, cls.__name__, None) is cls:
            table[code] = cls
    return table


_OPS = _op_classes()


class _Parser:
    """One pass over one definition block's AML."""

    def __init__(
        self,
        data: bytes,
        base: int,
        methods: dict[Path, int],
        *,
        declarations_only: bool,
    ) -> None:
        self.data = data
        self.base = base
        self.methods = methods
        self.declarations_only = declarations_only
        self.pos = 0
        self.depth = 0
        self.terms = 0

    # ------------------------------------------------------------------ errors and bytes

    def error(self, message: str, at: int | None = None, opcode: int | None = None) -> AmlError:
        return AmlError(message, offset=self.base + (self.pos if at is None else at), opcode=opcode)

    def need(self, count: int, end: int, what: str) -> None:
        if self.pos + count > end:
            raise self.error(f"truncated {what}")

    def byte(self, end: int, what: str) -> int:
        self.need(1, end, what)
        value = self.data[self.pos]
        self.pos += 1
        return value

    def raw(self, size: int, end: int, what: str) -> int:
        self.need(size, end, what)
        value = int.from_bytes(self.data[self.pos : self.pos + size], "little")
        self.pos += size
        return value

    # ------------------------------------------------------------------ lengths and names

    def pkglen_value(self, end: int) -> int:
        start = self.pos
        lead = self.byte(end, "PkgLength")
        count = lead >> 6
        if count == 0:
            return lead & 0x3F
        if lead & 0x30:
            raise self.error("PkgLength with reserved bits set", at=start)
        value = lead & 0x0F
        for i in range(count):
            value |= self.byte(end, "PkgLength") << (4 + 8 * i)
        return value

    def pkg_end(self, end: int, opcode: int, op_start: int) -> int:
        """Read a PkgLength and return the absolute end of the package."""
        start = self.pos
        length = self.pkglen_value(end)
        pkg_end = start + length
        if pkg_end > end or pkg_end < self.pos:
            raise self.error(
                f"package length {length} runs outside its container", at=op_start, opcode=opcode
            )
        return pkg_end

    def nameseg(self, end: int) -> str:
        self.need(4, end, "NameSeg")
        seg = self.data[self.pos : self.pos + 4]
        if seg[0] not in _LEAD or not all(c in _NAME for c in seg[1:]):
            raise self.error(f"invalid NameSeg {bytes(seg)!r}")
        self.pos += 4
        return seg.decode("ascii")

    def name(self, end: int) -> str:
        """A NameString, as normalised text."""
        prefix = ""
        first = self.byte(end, "NameString")
        if first == op.ROOT_CHAR:
            prefix = "\\"
            first = self.byte(end, "NameString")
        else:
            while first == op.PARENT_PREFIX:
                prefix += "^"
                first = self.byte(end, "NameString")
        if first == 0:
            segs: list[str] = []
        elif first == op.DUAL_NAME_PREFIX:
            segs = [self.nameseg(end), self.nameseg(end)]
        elif first == op.MULTI_NAME_PREFIX:
            count = self.byte(end, "MultiNamePath")
            if count == 0:
                raise self.error("MultiNamePath with zero segments", at=self.pos - 1)
            segs = [self.nameseg(end) for _ in range(count)]
        else:
            self.pos -= 1
            segs = [self.nameseg(end)]
        return prefix + ".".join(segs)

    # ------------------------------------------------------------------ scopes

    @staticmethod
    def absolute(text: str, scope: Path) -> Path | None:
        """Where a declaration of ``text`` in ``scope`` lands (no search)."""
        prefix, segs = n.split_name(text)
        if prefix == "\\":
            return segs
        up = len(prefix)
        if up > len(scope):
            return None
        return scope[: len(scope) - up] + segs

    def method_argc(self, text: str, scope: Path) -> int | None:
        prefix, segs = n.split_name(text)
        if not segs:
            return None
        if prefix or len(segs) > 1:
            path = self.absolute(text, scope)
            return None if path is None else self.methods.get(path)
        for depth in range(len(scope), -1, -1):
            argc = self.methods.get(scope[:depth] + segs)
            if argc is not None:
                return argc
        return None

    # ------------------------------------------------------------------ term lists

    def term_list(self, end: int, scope: Path) -> tuple[n.Node, ...]:
        out: list[n.Node] = []
        while self.pos < end:
            if self.declarations_only:
                try:
                    out.append(self.term(end, scope))
                except AmlLimitError:
                    raise  # a resource limit is not an unreadable container to skip
                except AmlError:
                    self.pos = end  # tolerant first pass: skip what it cannot read
                    break
            else:
                out.append(self.term(end, scope))
        return tuple(out)

    def term(self, end: int, scope: Path) -> n.Node:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise AmlLimitError(
                f"more than {MAX_TERMS} terms in one definition block", offset=self.base + self.pos
            )
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"terms nested deeper than {MAX_DEPTH}")
        try:
            return self._term(end, scope)
        finally:
            self.depth -= 1

    def _term(self, end: int, scope: Path) -> n.Node:
        start = self.pos
        first = self.byte(end, "opcode")
        if first in _NAME_START:
            self.pos = start
            text = self.name(end)
            argc = self.method_argc(text, scope)
            if argc is None:
                return n.NameRef(text)
            args = tuple(self.term(end, scope) for _ in range(argc))
            return n.MethodCall(text, args)
        ext = first == op.EXT_PREFIX
        opcode = (0x5B00 | self.byte(end, "extended opcode")) if ext else first
        handler = _HANDLERS.get(opcode)
        cls = _OPS.get(opcode)
        if handler is None and cls is None:
            raise self.error("unknown opcode", at=start, opcode=opcode)
        try:
            if handler is not None:
                return handler(self, opcode, start, end, scope)
            assert cls is not None
            return self.fixed_op(cls, opcode, start, end, scope)
        except AmlError as exc:
            if exc.opcode is not None or isinstance(exc, AmlLimitError):
                raise
            # A truncated or malformed operand: name the operator it belongs to.
            where = f" at byte {exc.offset:#x}" if exc.offset is not None else ""
            raise self.error(f"{exc.reason}{where}", at=start, opcode=opcode) from None

    def fixed_op(self, cls: type[n.Op], opcode: int, start: int, end: int, scope: Path) -> n.Node:
        kwargs: dict[str, object] = {}
        for field_name, kind in cls.operands():
            if kind == "T":
                kwargs[field_name] = self.term(end, scope)
            elif kind == "S":
                kwargs[field_name] = self.supername(end, scope, required=True)
            elif kind == "t":
                kwargs[field_name] = self.supername(end, scope, required=False)
            elif kind == "N":
                kwargs[field_name] = self.name(end)
            else:
                size = {"B": 1, "W": 2, "D": 4}[kind]
                kwargs[field_name] = self.raw(size, end, cls.__name__)
        try:
            node = cls(**kwargs)
        except AmlError as exc:
            raise self.error(exc.reason, at=start, opcode=opcode) from None
        if isinstance(node, n.External) and node.object_type == _METHOD_OBJECT_TYPE:
            path = self.absolute(node.name, scope)
            if path is not None and node.argc <= 7:
                self.methods.setdefault(path, node.argc)
        return node

    def supername(self, end: int, scope: Path, *, required: bool) -> n.Node | None:
        """A SuperName (Local/Arg/Debug/name/reference op) or, for a Target, NullName."""
        start = self.pos
        first = self.byte(end, "target")
        if first == 0 and not required:
            return None
        if op.LOCAL0_OP <= first <= op.LOCAL0_OP + 7:
            return n.Local(first - op.LOCAL0_OP)
        if op.ARG0_OP <= first <= op.ARG0_OP + 6:
            return n.Arg(first - op.ARG0_OP)
        self.pos = start
        if first in _NAME_START:
            return n.NameRef(self.name(end))
        if first == op.EXT_PREFIX and self.pos + 1 < end and self.data[self.pos + 1] == 0x31:
            self.pos += 2
            return n.Debug()
        if first in (op.REF_OF_OP, op.DEREF_OF_OP, op.INDEX_OP):
            return self.term(end, scope)
        raise self.error("not a valid target", at=start, opcode=first)

    # ------------------------------------------------------------------ data objects

    def integer(self, opcode: int, start: int, end: int, scope: Path) -> n.Node:
        if opcode == op.ZERO_OP:
            return n.Integer(0, "zero")
        if opcode == op.ONE_OP:
            return n.Integer(1, "one")
        if opcode == op.ONES_OP:
            return n.Integer(n.ONES, "ones")
        enc, size = {
            op.BYTE_PREFIX: ("byte", 1),
            op.WORD_PREFIX: ("word", 2),
            op.DWORD_PREFIX: ("dword", 4),
            op.QWORD_PREFIX: ("qword", 8),
        }[opcode]
        value = self.raw(size, end, "integer")
        return n.Integer(value, enc)  # type: ignore[arg-type]

    def string(self, opcode: int, start: int, end: int, scope: Path) -> n.Node:
        stop = self.data.find(b"\x00", self.pos, end)
        if stop < 0:
            raise self.error("unterminated string", at=start, opcode=opcode)
        raw = self.data[self.pos : stop]
        if any(c >= 0x80 for c in raw):
            raise self.error("string with a non-ASCII byte", at=start, opcode=opcode)
        self.pos = stop + 1
        return n.String(raw.decode("ascii"))

    def local_arg(self, opcode: int, start: int, end: int, scope: Path) -> n.Node:
        if opcode >= op.ARG0_OP:
            return n.Arg(opcode - op.ARG0_OP)
        return n.Local(opcode - op.LOCAL0_OP)

    def buffer(self, opcode: int, start: int, end: int, scope: Path) -> n.Node:
        pkg_end = self.pkg_end(end, opcode, start)
        size = self.term(pkg_end, scope)
        data = bytes(self.data[self.pos : pkg_end])
        self.pos = pkg_end
        return n.Buffer(data, size)

    def package(self, opcode: int, start: int, end: int, scope: Path) -> n.Node:
        pkg_end = self.pkg_end(end, opcode, start)
        if opcode == op.PACKAGE_OP:
            count: int | n.Node = self.byte(pkg_end, "Package count")
        else:
            count = self.term(pkg_end, scope)
        elements: list[n.Node] = []
        while self.pos < pkg_end:
            if self.data[self.pos] in _NAME_START:
                elements.append(n.NameRef(self.name(pkg_end)))
            else:
                elements.append(self.term(pkg_end, scope))
        try:
            if isinstance(count, int):
                return n.Package(tuple(elements), count)
            return n.VarPackage(count, tuple(elements))
        except AmlError as exc:
            raise self.error(exc.reason, at=start, opcode=opcode) from None

    # ------------------------------------------------------------------ named blocks

    def scope_like(self, opcode: int, start: int, end: int, scope: Path) -> n.Node:
        pkg_end = self.pkg_end(end, opcode, start)
        text = self.name(pkg_end)
        inner = self.absolute(text, scope) or scope
        if opcode == op.PROCESSOR_OP:
            self.need(6, pkg_end, "Processor")
            proc_id, pblk, plen = struct.unpack_from("<BIB", self.data, self.pos)
            self.pos += 6
            return n.Processor(text, proc_id, pblk, plen, self.term_list(pkg_end, inner))
        if opcode == op.POWER_RES_OP:
            self.need(3, pkg_end, "PowerResource")
            level, order = struct.unpack_from("<BH", self.data, self.pos)
            self.pos += 3
            return n.PowerResource(text, level, order, self.term_list(pkg_end, inner))
        body = self.term_list(pkg_end, inner)
        if opcode == op.SCOPE_OP:
            return n.Scope(text, body)
        if opcode == op.DEVICE_OP:
            return n.Device(text, body)
        return n.ThermalZone(text, body)

    def method(self, opcode: int, start: int, end: int, scope: Path) -> n.Node:
        pkg_end = self.pkg_end(end, opcode, start)
        text = self.name(pkg_end)
        flags = self.byte(pkg_end, "Method flags")
        path = self.absolute(text, scope)
        inner = path if path is not None else scope
        if path is not None:
            self.methods[path] = flags & 7
        if self.declarations_only:
            self.pos = pkg_end
            body: tuple[n.Node, ...] = ()
        else:
            body = self.term_list(pkg_end, inner)
        return n.Method(text, flags & 7, bool(flags & 8), flags >> 4, body)

    def if_else(self, opcode: int, start: int, end: int, scope: Path) -> n.Node:
        pkg_end = self.pkg_end(end, opcode, start)
        predicate = self.term(pkg_end, scope)
        body = self.term_list(pkg_end, scope)
        if opcode == op.WHILE_OP:
            return n.While(predicate, body)
        else_body: tuple[n.Node, ...] | None = None
        if self.pos < end and self.data[self.pos] == op.ELSE_OP:
            else_start = self.pos
            self.pos += 1
            else_end = self.pkg_end(end, op.ELSE_OP, else_start)
            else_body = self.term_list(else_end, scope)
        return n.If(predicate, body, else_body)

    def orphan_else(self, opcode: int, start: int, end: int, scope: Path) -> n.Node:
        raise self.error("Else without If", at=start, opcode=opcode)

    # ------------------------------------------------------------------ fields

    def field_list(self, end: int) -> tuple[n.FieldElement, ...]:
        out: list[n.FieldElement] = []
        while self.pos < end:
            start = self.pos
            kind = self.data[self.pos]
            if kind == 0x00:
                self.pos += 1
                out.append(n.ReservedField(self.pkglen_value(end)))
            elif kind == 0x01:
                self.pos += 1
                out.append(n.AccessField(self.byte(end, "AccessAs"), self.byte(end, "AccessAs")))
            elif kind == 0x03:
                self.pos += 1
                out.append(
                    n.ExtendedAccessField(
                        self.byte(end, "AccessAs"),
                        self.byte(end, "AccessAs"),
                        self.byte(end, "AccessAs"),
                    )
                )
            elif kind in _LEAD:
                seg = self.nameseg(end)
                out.append(n.NamedField(seg, self.pkglen_value(end)))
            else:
                raise self.error(f"unsupported field element {kind:#x}", at=start)
        return tuple(out)

    def field(self, opcode: int, start: int, end: int, scope: Path) -> n.Node:
        pkg_end = self.pkg_end(end, opcode, start)
        first = self.name(pkg_end)
        second = self.name(pkg_end) if opcode != op.FIELD_OP else ""
        bank_value = self.term(pkg_end, scope) if opcode == op.BANK_FIELD_OP else None
        flags_at = self.pos
        flags = self.byte(pkg_end, "field flags")
        elements = self.field_list(pkg_end)
        access, lock, update = flags & 0x0F, bool(flags & 0x10), (flags >> 5) & 3
        if flags & 0x80 or access > 5 or update > 2:
            raise self.error(f"invalid field flags {flags:#x}", at=flags_at, opcode=opcode)
        if opcode == op.FIELD_OP:
            return n.Field(first, elements, access, lock, update)
        if opcode == op.INDEX_FIELD_OP:
            return n.IndexField(first, second, elements, access, lock, update)
        assert bank_value is not None
        return n.BankField(first, second, bank_value, elements, access, lock, update)


_Handler = Callable[[_Parser, int, int, int, Path], n.Node]

_HANDLERS: dict[int, _Handler] = {
    op.ZERO_OP: _Parser.integer,
    op.ONE_OP: _Parser.integer,
    op.ONES_OP: _Parser.integer,
    op.BYTE_PREFIX: _Parser.integer,
    op.WORD_PREFIX: _Parser.integer,
    op.DWORD_PREFIX: _Parser.integer,
    op.QWORD_PREFIX: _Parser.integer,
    op.STRING_PREFIX: _Parser.string,
    op.BUFFER_OP: _Parser.buffer,
    op.PACKAGE_OP: _Parser.package,
    op.VAR_PACKAGE_OP: _Parser.package,
    op.SCOPE_OP: _Parser.scope_like,
    op.DEVICE_OP: _Parser.scope_like,
    op.PROCESSOR_OP: _Parser.scope_like,
    op.POWER_RES_OP: _Parser.scope_like,
    op.THERMAL_ZONE_OP: _Parser.scope_like,
    op.METHOD_OP: _Parser.method,
    op.IF_OP: _Parser.if_else,
    op.WHILE_OP: _Parser.if_else,
    op.ELSE_OP: _Parser.orphan_else,
    op.FIELD_OP: _Parser.field,
    op.INDEX_FIELD_OP: _Parser.field,
    op.BANK_FIELD_OP: _Parser.field,
}
for _code in range(op.LOCAL0_OP, op.ARG0_OP + 7):
    _HANDLERS[_code] = _Parser.local_arg


def _known(known_methods: Mapping[str, int] | None) -> dict[Path, int]:
    methods = dict(_BUILTIN_METHODS)
    for text, argc in (known_methods or {}).items():
        prefix, segs = n.split_name(text)
        if prefix != "\\" or not segs:
            raise AmlError(f"known method {text!r} must be an absolute path")
        if not isinstance(argc, int) or not 0 <= argc <= 7:
            raise AmlError(f"known method {text!r}: argc {argc!r} not in 0..7")
        methods[segs] = argc
    return methods


def _declarations(aml: bytes, base: int, methods: dict[Path, int]) -> None:
    parser = _Parser(aml, base, methods, declarations_only=True)
    parser.term_list(len(aml), ())


def find_methods(
    aml: bytes, known_methods: Mapping[str, int] | None = None, *, base: int = 0
) -> dict[str, int]:
    """Every method a definition block declares (absolute path -> argc), plus
    ``known_methods`` and ``External`` method declarations; for decoding an SSDT
    that calls into this block."""
    methods = _known(known_methods)
    _declarations(bytes(aml), base, methods)
    return {"\\" + ".".join(path): argc for path, argc in methods.items() if path != ("_OSI",)}


def decode_definition_block(
    aml: bytes, *, known_methods: Mapping[str, int] | None = None, base: int = 0
) -> list[n.Node]:
    """Decode the AML term list of a definition block (no table header).

    ``known_methods`` maps absolute paths of methods declared elsewhere to their
    argument counts. Error offsets are ``base`` + the offset in ``aml``.
    """
    data = bytes(aml)
    methods = _known(known_methods)
    _declarations(data, base, methods)
    parser = _Parser(data, base, methods, declarations_only=False)
    return list(parser.term_list(len(data), ()))


def decode_table(data: bytes, *, known_methods: Mapping[str, int] | None = None) -> DefinitionBlock:
    """Decode a whole DSDT/SSDT (header + AML).

    A bad header (short, wrong length, bad checksum) raises
    :class:`~cpuplug.acpi.errors.TableError` (from :class:`cpuplug.acpi.tables.Sdt`);
    bad AML raises :class:`~cpuplug.acpi.errors.AmlError` with offsets from the
    table start. ``decode_table(t).encode() == t`` for canonical tables.
    """
    sdt = Sdt.parse(bytes(data))
    body = decode_definition_block(sdt.body, known_methods=known_methods, base=HEADER_SIZE)
    return DefinitionBlock(sdt.signature, tuple(body), sdt.revision, sdt.ids)

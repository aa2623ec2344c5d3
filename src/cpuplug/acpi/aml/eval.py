"""Compiling AML node trees (:mod:`cpuplug.acpi.aml.nodes`) into Python closures.

Why closures rather than walking the tree on every call: each node is looked at once,
when its method is first called or its table loads, and becomes a small function that
does only that node's work. Name splitting, integer masks and operator dispatch are
settled at compile time, so a method body costs a few Python calls per AML operation
(which is what keeps CSCN over 512 vCPUs cheap). The closures run against
:mod:`cpuplug.acpi.aml.interp` (frames, stores, fields, mutexes, calls).

A statement closure returns ``None`` or a control signal (``BREAK``, ``CONTINUE``,
``RETURN``); an expression closure returns an AML value.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from cpuplug.acpi.aml import nodes as n
from cpuplug.acpi.aml.interp import (
    BREAK,
    CONTINUE,
    INTERPRETER_REVISION,
    RETURN,
    Frame,
    LazyName,
    Stmt,
    copy_value,
    deref_element,
    deref_if_element,
    to_buffer,
    to_int,
    to_python,
    to_str,
)
from cpuplug.acpi.aml.namespace import Node, resolver
from cpuplug.acpi.aml.objects import (
    OBJECT_TYPE_CODES,
    Alias,
    AmlEvent,
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
    check_size,
    type_name,
)
from cpuplug.acpi.errors import AmlError, AmlLimitError

Expr = Callable[[Frame], Any]
IntExpr = Callable[[Frame], int]
Storer = Callable[[Frame, Any], None]


def compile_method(method: Method) -> Stmt:
    """The runtime's hook: a method's body as one statement closure."""
    return Compiler(method.int_bits).block(method.body)


def _follow(node: Node) -> Node:
    while isinstance(node.obj, Alias):
        node = node.obj.target
    return node


def define(frame: Frame, name: str, obj: Any) -> Node:
    """Create a named object in the current scope (or where its path says)."""
    parent, seg = frame.rt.ns.parent_and_name(name, frame.scope)
    if seg in parent.children:
        raise AmlError(f"{name} already exists in {parent.path}")
    node = Node(seg, parent, obj)
    parent.children[seg] = node
    invocation = frame.invocation
    if invocation is not None:
        up: Node | None = parent
        while up is not None and up is not invocation:
            up = up.parent
        if up is None:  # outside the invocation's private scope: undo at return
            if frame.escaped is None:
                frame.escaped = []
            frame.escaped.append(node)
        return node
    created = frame.ctx.load_created
    if created is not None:
        created.append(node)
    return node


def _name_of(frame: Frame, name: str) -> str:
    """A readable full path for an object about to be created (for messages)."""
    parent, seg = frame.rt.ns.parent_and_name(name, frame.scope)
    base = parent.path
    return (base if base.endswith("\\") else base + ".") + seg.rstrip("_")


class Compiler:
    """Turns node trees into closures for one integer width (32 or 64 bits)."""

    def __init__(self, int_bits: int) -> None:
        self.bits = int_bits
        self.mask = (1 << int_bits) - 1

    # ------------------------------------------------------------------ blocks

    def block(self, body: Sequence[n.Node]) -> Stmt:
        stmts: list[Stmt] = []
        i = 0
        while i < len(body):
            run_end = _if_chain_end(body, i)
            if run_end - i >= _MIN_CHAIN:
                stmts.append(self.if_chain(body[i:run_end]))
                i = run_end
            else:
                stmts.append(self.stmt(body[i]))
                i += 1
        if not stmts:
            return _nothing
        if len(stmts) == 1:
            return stmts[0]

        def run(frame: Frame) -> int | None:
            for s in stmts:
                r = s(frame)
                if r is not None:
                    return r
            return None

        return run

    def if_chain(self, chain: Sequence[n.Node]) -> Stmt:
        """``If (ArgN == k0) {...} If (ArgN == k1) {...} ...`` as one table lookup.

        QEMU's CTFY is such a chain over every possible vCPU, so a Notify costs O(M)
        comparisons per call; with 512 vCPUs a scan does that 511 times. The lookup
        is exact: the predicates have no side effects, no body mentions ArgN (so none
        can change it), and bodies for the same constant still run in order. A
        non-integer ArgN falls back to the sequential chain.
        """
        sequential = [self.stmt(x) for x in chain]
        first = chain[0]
        assert isinstance(first, n.If) and isinstance(first.predicate, n.LEqual)
        arg = first.predicate.left
        assert isinstance(arg, n.Arg)
        index = arg.index
        mask = self.mask
        table: dict[int, list[Stmt]] = {}
        for node in chain:
            assert isinstance(node, n.If) and isinstance(node.predicate, n.LEqual)
            assert isinstance(node.predicate.right, n.Integer)
            key = node.predicate.right.value & mask
            table.setdefault(key, []).append(self.block(node.body))

        def run(frame: Frame) -> int | None:
            a = frame.args[index]
            if type(a) is not int:
                for stmt in sequential:
                    r = stmt(frame)
                    if r is not None:
                        return r
                return None
            for body in table.get(a, ()):
                r = body(frame)
                if r is not None:
                    return r
            return None

        return run

    def stmt(self, node: n.Node) -> Stmt:
        handler = _STMT.get(type(node).__name__)
        if handler is not None:
            return handler(self, node)
        expr = self.expr(node)

        def discard(frame: Frame) -> None:
            expr(frame)

        return discard

    def expr(self, node: n.Node) -> Expr:
        handler = _EXPR.get(type(node).__name__)
        if handler is None:
            raise AmlError(f"{type(node).__name__} is not an expression")
        return handler(self, node)

    def int_expr(self, node: n.Node) -> IntExpr:
        mask = self.mask
        if isinstance(node, n.Integer):
            const = node.value & mask
            return lambda frame: const
        if isinstance(node, n.Local):
            i = node.index

            def local_int(frame: Frame) -> int:
                v = frame.locals[i]
                if type(v) is int:
                    return v
                if v is None:
                    raise AmlError(f"Local{i} is used before it is set")
                return to_int(v, mask)

            return local_int
        inner = self.expr(node)

        def as_int(frame: Frame) -> int:
            v = inner(frame)
            if type(v) is int:
                return v
            return to_int(v, mask)

        return as_int

    # ------------------------------------------------------------------ targets

    def storer(self, target: n.Node | None) -> Storer | None:
        """How to store into ``target``; None for the NullName (no store)."""
        if target is None:
            return None
        if isinstance(target, n.Local):
            i = target.index

            def to_local(frame: Frame, value: Any) -> None:
                if type(value) is int or isinstance(value, str | NodeRef | ElementRef | LocalRef):
                    frame.locals[i] = value
                else:
                    frame.locals[i] = copy_value(value)

            return to_local
        if isinstance(target, n.Arg):
            i = target.index

            def to_arg(frame: Frame, value: Any) -> None:
                cur = frame.args[i]
                if isinstance(cur, NodeRef | LocalRef | ElementRef):
                    frame.rt.store_ref(frame, cur, value)
                else:
                    frame.args[i] = copy_value(value)

            return to_arg
        if isinstance(target, n.NameRef) or (isinstance(target, n.MethodCall) and not target.args):
            find = resolver(target.path)
            path = target.path

            def to_name(frame: Frame, value: Any) -> None:
                node = find(frame.rt.ns, frame.scope)
                if node is None:
                    raise AmlError(f"store to undefined name {path} (from {frame.scope.path})")
                frame.rt.store_node(frame, node, value)

            return to_name
        if type(target).__name__ == "Debug":

            def to_debug(frame: Frame, value: Any) -> None:
                frame.rt.debug(to_python(deref_if_element(value)))

            return to_debug
        if type(target).__name__ in ("Index", "DerefOf", "RefOf", "MethodCall"):
            ref_expr = self.expr(target)

            def to_ref(frame: Frame, value: Any) -> None:
                ref = ref_expr(frame)
                if isinstance(ref, str):
                    frame.rt.store_node(frame, frame.rt.ns.resolve(ref, frame.scope), value)
                else:
                    frame.rt.store_ref(frame, ref, value)

            return to_ref
        raise AmlError(f"{type(target).__name__} is not a valid store target")

    def node_of(self, target: n.Node) -> Callable[[Frame], Node]:
        """For operators that act on a named object itself (Notify, Acquire...)."""
        if isinstance(target, n.NameRef | n.MethodCall):
            find = resolver(target.path)
            path = target.path

            def named(frame: Frame) -> Node:
                node = find(frame.rt.ns, frame.scope)
                if node is None:
                    raise AmlError(f"undefined name {path} (from {frame.scope.path})")
                return _follow(node)

            return named
        inner = self.expr(target)

        def via_ref(frame: Frame) -> Node:
            ref = inner(frame)
            if isinstance(ref, NodeRef):
                return _follow(ref.node)
            raise AmlError(f"expected a reference to a named object, got {type_name(ref)}")

        return via_ref

    def object_of(self, target: n.Node) -> Expr:
        """The object a SuperName designates without invoking or reading it
        (SizeOf, ObjectType): a named object's own value, or a Local's content."""
        if isinstance(target, n.NameRef | n.MethodCall):
            node_of = self.node_of(target)

            def named(frame: Frame) -> Any:
                node = node_of(frame)
                obj = node.obj
                if isinstance(obj, FieldUnit | IndexFieldUnit | BankFieldUnit | BufferField):
                    return frame.rt.node_value(frame, node)
                return obj

            return named
        inner = self.expr(target)

        def value(frame: Frame) -> Any:
            return _container_of(inner(frame))

        return value


def _nothing(frame: Frame) -> None:
    return None


_MIN_CHAIN = 8
"""Shortest run of ``If (ArgN == constant)`` statements worth a lookup table."""


def _chain_arg(node: n.Node) -> int | None:
    """N when ``node`` is ``If (ArgN == constant) {body}`` with no Else, whose body
    never mentions ArgN; else None."""
    if type(node).__name__ != "If":
        return None
    assert isinstance(node, n.If)
    pred = node.predicate
    if node.else_body is not None or type(pred).__name__ != "LEqual":
        return None
    assert isinstance(pred, n.LEqual)
    if not isinstance(pred.left, n.Arg) or not isinstance(pred.right, n.Integer):
        return None
    index = pred.left.index
    if any(_mentions_arg(x, index) for x in node.body):
        return None
    return index


def _mentions_arg(node: object, index: int) -> bool:
    return any(isinstance(x, n.Arg) and x.index == index for x in n.walk(node))


def _if_chain_end(body: Sequence[n.Node], start: int) -> int:
    """End (exclusive) of the run of chainable Ifs on one Arg starting at ``start``."""
    index = _chain_arg(body[start])
    if index is None:
        return start
    end = start + 1
    while end < len(body) and _chain_arg(body[end]) == index:
        end += 1
    return end


# ====================================================================== statements

# Keyed by class *name*: dataclass(slots=True) replaces each class object, and code
# that collects node classes through ``__subclasses__`` can meet the replaced ones.
_STMT: dict[str, Callable[[Compiler, Any], Stmt]] = {}
_EXPR: dict[str, Callable[[Compiler, Any], Expr]] = {}


StmtMaker = Callable[[Compiler, Any], Stmt]
ExprMaker = Callable[[Compiler, Any], Expr]


def _stmt(*types: type) -> Callable[[StmtMaker], StmtMaker]:
    def register(fn: StmtMaker) -> StmtMaker:
        for t in types:
            _STMT[t.__name__] = fn
        return fn

    return register


def _expr(*types: type) -> Callable[[ExprMaker], ExprMaker]:
    def register(fn: ExprMaker) -> ExprMaker:
        for t in types:
            _EXPR[t.__name__] = fn
        return fn

    return register


# -- namespace-building statements


@_stmt(n.Scope)
def _scope(c: Compiler, node: n.Scope) -> Stmt:
    find = resolver(node.name) if node.name != "\\" else None
    body = c.block(node.body)
    name = node.name

    def run(frame: Frame) -> int | None:
        if find is None:
            target: Node | None = frame.rt.ns.root
        else:
            target = find(frame.rt.ns, frame.scope)
        if target is None:
            raise AmlError(f"Scope({name}): no such object (from {frame.scope.path})")
        return _in_scope(frame, _follow(target), body)

    return run


def _in_scope(frame: Frame, scope: Node, body: Stmt) -> int | None:
    saved = frame.scope
    frame.scope = scope
    try:
        return body(frame)
    finally:
        frame.scope = saved


def _container(kind: str, info: Callable[[Any], dict[str, int]]) -> Callable[[Compiler, Any], Stmt]:
    def compile_container(c: Compiler, node: Any) -> Stmt:
        body = c.block(node.body)
        name: str = node.name
        extra = info(node)

        def run(frame: Frame) -> int | None:
            created = define(frame, name, Container(kind, dict(extra)))
            return _in_scope(frame, created, body)

        return run

    return compile_container


_STMT["Device"] = _container("Device", lambda node: {})
_STMT["ThermalZone"] = _container("ThermalZone", lambda node: {})
_STMT["Processor"] = _container(
    "Processor",
    lambda node: {
        "proc_id": node.proc_id,
        "pblk_address": node.pblk_address,
        "pblk_length": node.pblk_length,
    },
)
_STMT["PowerResource"] = _container(
    "PowerResource",
    lambda node: {"system_level": node.system_level, "resource_order": node.resource_order},
)


@_stmt(n.Method)
def _method(c: Compiler, node: n.Method) -> Stmt:
    bits = c.bits

    def run(frame: Frame) -> None:
        path = _name_of(frame, node.name)
        define(
            frame,
            node.name,
            Method(path, node.argc, node.serialized, node.sync_level, node.body, bits),
        )

    return run


@_stmt(n.Name)
def _name(c: Compiler, node: n.Name) -> Stmt:
    value = c.expr(node.value)
    if type(node.value).__name__ in _FRESH:
        # A literal builds a new object on every evaluation: nothing to copy.
        def run_literal(frame: Frame) -> None:
            define(frame, node.name, value(frame))

        return run_literal

    def run(frame: Frame) -> None:
        v = value(frame)
        define(frame, node.name, copy_value(deref_if_element(v)))

    return run


@_stmt(n.Alias)
def _alias(c: Compiler, node: n.Alias) -> Stmt:
    find = resolver(node.source)

    def run(frame: Frame) -> None:
        target = find(frame.rt.ns, frame.scope)
        if target is None:
            raise AmlError(f"Alias of undefined name {node.source}")
        define(frame, node.alias, Alias(_follow(target)))

    return run


@_stmt(n.Mutex)
def _mutex(c: Compiler, node: n.Mutex) -> Stmt:
    def run(frame: Frame) -> None:
        define(frame, node.name, AmlMutex(_name_of(frame, node.name), node.sync_level))

    return run


@_stmt(n.Event)
def _event(c: Compiler, node: n.Event) -> Stmt:
    def run(frame: Frame) -> None:
        define(frame, node.name, AmlEvent(_name_of(frame, node.name)))

    return run


@_stmt(n.OperationRegion)
def _op_region(c: Compiler, node: n.OperationRegion) -> Stmt:
    offset = c.int_expr(node.offset)
    length = c.int_expr(node.length)

    def run(frame: Frame) -> None:
        region = OperationRegion(
            _name_of(frame, node.name), node.space, offset(frame), length(frame)
        )
        define(frame, node.name, region)

    return run


@_stmt(n.External, n.Noop, n.BreakPoint)
def _no_op(c: Compiler, node: n.Node) -> Stmt:
    return _nothing


@_stmt(n.DataRegion, n.Load, n.Unload, n.LoadTable)
def _unsupported(c: Compiler, node: n.Node) -> Stmt:
    what = type(node).__name__

    def run(frame: Frame) -> None:
        raise AmlError(f"{what} is not supported by this interpreter")

    return run


def _field_layout(elements: Sequence[n.Node], access_type: int) -> list[tuple[str, int, int, int]]:
    """(name, bit offset, bit length, access type) of each named field element."""
    out: list[tuple[str, int, int, int]] = []
    pos = 0
    access = access_type
    for el in elements:
        if isinstance(el, n.NamedField):
            out.append((el.name, pos, el.bits, access))
            pos += el.bits
        elif isinstance(el, n.ReservedField):
            pos += el.bits
        elif isinstance(el, n.AccessField | n.ExtendedAccessField):
            access = el.access_type & 0x0F
    return out


@_stmt(n.Field)
def _field(c: Compiler, node: n.Field) -> Stmt:
    find = resolver(node.region)
    layout = _field_layout(node.elements, node.access_type)

    def run(frame: Frame) -> None:
        region_node = find(frame.rt.ns, frame.scope)
        if region_node is None or not isinstance(_follow(region_node).obj, OperationRegion):
            raise AmlError(f"Field on {node.region}, which is not an OperationRegion")
        region = _follow(region_node).obj
        for name, pos, bits, access in layout:
            unit = FieldUnit(
                _name_of(frame, name), region, pos, bits, access, node.update_rule, node.lock
            )
            define(frame, name, unit)

    return run


@_stmt(n.IndexField)
def _index_field(c: Compiler, node: n.IndexField) -> Stmt:
    find_index = resolver(node.index)
    find_data = resolver(node.data)
    layout = _field_layout(node.elements, node.access_type)

    def run(frame: Frame) -> None:
        units = []
        for finder, what in ((find_index, node.index), (find_data, node.data)):
            found = finder(frame.rt.ns, frame.scope)
            if found is None or not isinstance(_follow(found).obj, FieldUnit):
                raise AmlError(f"IndexField register {what} is not a field unit")
            units.append(_follow(found).obj)
        for name, pos, bits, access in layout:
            unit = IndexFieldUnit(
                _name_of(frame, name), units[0], units[1], pos, bits, access, node.update_rule
            )
            define(frame, name, unit)

    return run


@_stmt(n.BankField)
def _bank_field(c: Compiler, node: n.BankField) -> Stmt:
    find_region = resolver(node.region)
    find_bank = resolver(node.bank)
    bank_value = c.int_expr(node.bank_value)
    layout = _field_layout(node.elements, node.access_type)

    def run(frame: Frame) -> None:
        region_node = find_region(frame.rt.ns, frame.scope)
        bank_node = find_bank(frame.rt.ns, frame.scope)
        if region_node is None or not isinstance(_follow(region_node).obj, OperationRegion):
            raise AmlError(f"BankField on {node.region}, which is not an OperationRegion")
        if bank_node is None or not isinstance(_follow(bank_node).obj, FieldUnit):
            raise AmlError(f"BankField bank register {node.bank} is not a field unit")
        region = _follow(region_node).obj
        bank = _follow(bank_node).obj
        value = bank_value(frame)
        for name, pos, bits, access in layout:
            full = _name_of(frame, name)
            unit = FieldUnit(full, region, pos, bits, access, node.update_rule, node.lock)
            define(frame, name, BankFieldUnit(full, unit, bank, value))

    return run


def _create_field(bits: int | None, bit_index: bool) -> Callable[[Compiler, Any], Stmt]:
    def compile_create(c: Compiler, node: Any) -> Stmt:
        buffer = c.expr(node.buffer)
        index = c.int_expr(node.bit_index if bits is None else node.index)
        num_bits = c.int_expr(node.num_bits) if bits is None else None

        def run(frame: Frame) -> None:
            buf = deref_if_element(buffer(frame))
            if isinstance(buf, NodeRef):
                buf = _follow(buf.node).obj
            if not isinstance(buf, bytearray):
                raise AmlError(f"Create*Field needs a Buffer, not {type_name(buf)}")
            start = index(frame) * (1 if bit_index else 8)
            length = num_bits(frame) if num_bits is not None else bits
            assert length is not None
            define(frame, node.name, BufferField(_name_of(frame, node.name), buf, start, length))

        return run

    return compile_create


_STMT["CreateBitField"] = _create_field(1, True)
_STMT["CreateByteField"] = _create_field(8, False)
_STMT["CreateWordField"] = _create_field(16, False)
_STMT["CreateDWordField"] = _create_field(32, False)
_STMT["CreateQWordField"] = _create_field(64, False)
_STMT["CreateField"] = _create_field(None, True)


# -- control flow


@_stmt(n.If)
def _if(c: Compiler, node: n.If) -> Stmt:
    pred = c.int_expr(node.predicate)
    body = c.block(node.body)
    if node.else_body is None:

        def run_if(frame: Frame) -> int | None:
            if pred(frame):
                return body(frame)
            return None

        return run_if
    other = c.block(node.else_body)

    def run_if_else(frame: Frame) -> int | None:
        if pred(frame):
            return body(frame)
        return other(frame)

    return run_if_else


@_stmt(n.While)
def _while(c: Compiler, node: n.While) -> Stmt:
    pred = c.int_expr(node.predicate)
    body = c.block(node.body)

    def run(frame: Frame) -> int | None:
        limit = frame.rt.limits.max_loop_iterations
        count = 0
        while pred(frame):
            count += 1
            if count > limit:
                raise AmlLimitError(f"While loop in {frame.scope.path} exceeded {limit} iterations")
            if not count & 0xFF:
                frame.rt.check_time(frame.ctx)
            r = body(frame)
            if r is not None:
                if r == BREAK:
                    break
                if r == RETURN:
                    return r
        return None

    return run


@_stmt(n.Break)
def _break(c: Compiler, node: n.Break) -> Stmt:
    return lambda frame: BREAK


@_stmt(n.Continue)
def _continue(c: Compiler, node: n.Continue) -> Stmt:
    return lambda frame: CONTINUE


@_stmt(n.Return)
def _return(c: Compiler, node: n.Return) -> Stmt:
    value = c.expr(node.value)

    def run(frame: Frame) -> int:
        frame.retval = value(frame)
        return RETURN

    return run


# -- operators with no value


@_stmt(n.Notify)
def _notify(c: Compiler, node: n.Notify) -> Stmt:
    target = c.node_of(node.object)
    value = c.int_expr(node.value)

    def run(frame: Frame) -> None:
        frame.rt.notify(frame, target(frame), value(frame))

    return run


def _mutex_of(frame: Frame, node: Node) -> AmlMutex:
    if not isinstance(node.obj, AmlMutex):
        raise AmlError(f"{node.path} is a {type_name(node.obj)}, not a Mutex")
    return node.obj


def _event_of(frame: Frame, node: Node) -> AmlEvent:
    if not isinstance(node.obj, AmlEvent):
        raise AmlError(f"{node.path} is a {type_name(node.obj)}, not an Event")
    return node.obj


@_stmt(n.Release)
def _release(c: Compiler, node: n.Release) -> Stmt:
    target = c.node_of(node.mutex)

    def run(frame: Frame) -> None:
        frame.rt.release(frame.ctx, _mutex_of(frame, target(frame)))

    return run


@_stmt(n.Signal)
def _signal(c: Compiler, node: n.Signal) -> Stmt:
    target = c.node_of(node.event)
    return lambda frame: _event_of(frame, target(frame)).signal()


@_stmt(n.Reset)
def _reset(c: Compiler, node: n.Reset) -> Stmt:
    target = c.node_of(node.event)
    return lambda frame: _event_of(frame, target(frame)).reset()


@_stmt(n.Sleep)
def _sleep(c: Compiler, node: n.Sleep) -> Stmt:
    msec = c.int_expr(node.msec)

    def run(frame: Frame) -> None:
        frame.rt.sleep(frame.ctx, msec(frame) / 1000.0)

    return run


@_stmt(n.Stall)
def _stall(c: Compiler, node: n.Stall) -> Stmt:
    usec = c.int_expr(node.usec)

    def run(frame: Frame) -> None:
        frame.rt.sleep(frame.ctx, min(usec(frame), 100) / 1e6)

    return run


@_stmt(n.Fatal)
def _fatal(c: Compiler, node: n.Fatal) -> Stmt:
    arg = c.int_expr(node.arg)

    def run(frame: Frame) -> None:
        raise AmlError(
            f"AML Fatal(type {node.type:#x}, code {node.code:#x}, arg {arg(frame):#x}) "
            f"in {frame.scope.path}"
        )

    return run


# ====================================================================== expressions

# -- data


@_expr(n.Integer)
def _integer(c: Compiler, node: n.Integer) -> Expr:
    const = node.value & c.mask
    return lambda frame: const


@_expr(n.String)
def _string(c: Compiler, node: n.String) -> Expr:
    const = node.value
    return lambda frame: const


@_expr(n.Buffer)
def _buffer(c: Compiler, node: n.Buffer) -> Expr:
    assert node.size is not None
    size = c.int_expr(node.size)
    data = node.data

    def run(frame: Frame) -> bytearray:
        want = check_size(size(frame), frame.rt.limits.max_object_size, "Buffer")
        buf = bytearray(data[:want]) if want < len(data) else bytearray(data)
        if want > len(buf):
            buf.extend(bytes(want - len(buf)))
        return buf

    return run


_FRESH = frozenset(("Integer", "String", "Buffer", "Package", "VarPackage"))
"""Node kinds whose evaluation always yields a new (unshared) value."""


def _package_elements(c: Compiler, elements: Sequence[n.Node]) -> list[Expr]:
    out: list[Expr] = []
    for el in elements:
        if isinstance(el, n.NameRef) or (isinstance(el, n.MethodCall) and not el.args):
            path = el.path
            out.append(lambda frame, path=path: LazyName(path, frame.scope))  # type: ignore[misc]
        elif type(el).__name__ in _FRESH:
            out.append(c.expr(el))
        else:
            inner = c.expr(el)
            out.append(lambda frame, inner=inner: copy_value(inner(frame)))  # type: ignore[misc]
    return out


@_expr(n.Package)
def _package(c: Compiler, node: n.Package) -> Expr:
    elems = _package_elements(c, node.elements)
    count = node.count or 0
    pad = max(0, count - len(elems))

    def run(frame: Frame) -> list[Any]:
        values = [e(frame) for e in elems]
        if pad:
            values.extend([None] * pad)
        return values

    return run


@_expr(n.VarPackage)
def _var_package(c: Compiler, node: n.VarPackage) -> Expr:
    elems = _package_elements(c, node.elements)
    count = c.int_expr(node.count)

    def run(frame: Frame) -> list[Any]:
        want = check_size(count(frame), frame.rt.limits.max_object_size, "Package")
        values = [e(frame) for e in (elems[:want] if want < len(elems) else elems)]
        if want > len(values):
            values.extend([None] * (want - len(values)))
        return values

    return run


@_expr(n.Local)
def _local(c: Compiler, node: n.Local) -> Expr:
    i = node.index

    def run(frame: Frame) -> Any:
        v = frame.locals[i]
        if v is None:
            raise AmlError(f"Local{i} is used before it is set (in {frame.scope.path})")
        return v

    return run


@_expr(n.Arg)
def _arg(c: Compiler, node: n.Arg) -> Expr:
    i = node.index

    def run(frame: Frame) -> Any:
        v = frame.args[i]
        if v is None:
            raise AmlError(f"Arg{i} was not passed (in {frame.scope.path})")
        return v

    return run


@_expr(n.NameRef)
def _name_ref(c: Compiler, node: n.NameRef) -> Expr:
    find = resolver(node.path)
    path = node.path

    def run(frame: Frame) -> Any:
        found = find(frame.rt.ns, frame.scope)
        if found is None:
            raise AmlError(f"undefined name {path} (from {frame.scope.path})")
        return frame.rt.node_value(frame, found)

    return run


@_expr(n.MethodCall)
def _call(c: Compiler, node: n.MethodCall) -> Expr:
    find = resolver(node.path)
    path = node.path
    args = [c.expr(a) for a in node.args]

    def run(frame: Frame) -> Any:
        found = find(frame.rt.ns, frame.scope)
        if found is None:
            raise AmlError(f"call of undefined method {path} (from {frame.scope.path})")
        found = _follow(found)
        method = found.obj
        if not isinstance(method, Method):
            if not args:
                return frame.rt.node_value(frame, found)
            raise AmlError(f"{found.path} is a {type_name(method)}, not a method")
        values = [a(frame) for a in args]
        if len(values) != method.argc:
            raise AmlError(f"{found.path} takes {method.argc} arguments, called with {len(values)}")
        result = frame.rt.invoke(frame.ctx, found, method, values)
        return result

    return run


@_expr(n.Revision)
def _revision(c: Compiler, node: n.Revision) -> Expr:
    return lambda frame: INTERPRETER_REVISION


@_expr(n.Timer)
def _timer(c: Compiler, node: n.Timer) -> Expr:
    mask = c.mask
    return lambda frame: (time.monotonic_ns() // 100) & mask


@_expr(n.Debug)
def _debug(c: Compiler, node: n.Debug) -> Expr:
    def run(frame: Frame) -> Any:
        raise AmlError("the Debug object can only be stored to")

    return run


# -- stores


@_expr(n.Store)
def _store(c: Compiler, node: n.Store) -> Expr:
    source = c.expr(node.source)
    store = c.storer(node.target)
    assert store is not None

    def run(frame: Frame) -> Any:
        v = source(frame)
        store(frame, v)
        return v

    return run


@_expr(n.CopyObject)
def _copy_object(c: Compiler, node: n.CopyObject) -> Expr:
    source = c.expr(node.source)
    target = node.target
    if isinstance(target, n.NameRef | n.MethodCall):
        node_of = c.node_of(target)

        def to_name(frame: Frame) -> Any:
            v = deref_if_element(source(frame))
            dest = node_of(frame)
            if isinstance(dest.obj, FieldUnit | IndexFieldUnit | BankFieldUnit | BufferField):
                frame.rt.store_node(frame, dest, v)
            else:
                dest.obj = copy_value(v)
            return v

        return to_name
    store = c.storer(target)
    assert store is not None

    def run(frame: Frame) -> Any:
        v = source(frame)
        store(frame, v)
        return v

    return run


def _with_target(value: Expr, store: Storer | None) -> Expr:
    if store is None:
        return value

    def run(frame: Frame) -> Any:
        v = value(frame)
        store(frame, v)
        return v

    return run


# -- integer arithmetic


def _binary(fn: Callable[[int, int, int, int], int]) -> Callable[[Compiler, Any], Expr]:
    def compile_binary(c: Compiler, node: Any) -> Expr:
        left = c.int_expr(node.left)
        right = c.int_expr(node.right)
        mask = c.mask
        bits = c.bits

        def value(frame: Frame) -> int:
            return fn(left(frame), right(frame), mask, bits)

        return _with_target(value, c.storer(node.target))

    return compile_binary


def _div_check(b: int) -> int:
    if b == 0:
        raise AmlError("divide by zero")
    return b


def _shl(a: int, b: int, m: int, bits: int) -> int:
    return (a << b) & m if b < bits else 0


def _shr(a: int, b: int, m: int, bits: int) -> int:
    return a >> b if b < bits else 0


_EXPR["Add"] = _binary(lambda a, b, m, bits: (a + b) & m)
_EXPR["Subtract"] = _binary(lambda a, b, m, bits: (a - b) & m)
_EXPR["Multiply"] = _binary(lambda a, b, m, bits: (a * b) & m)
_EXPR["Mod"] = _binary(lambda a, b, m, bits: a % _div_check(b))
_EXPR["ShiftLeft"] = _binary(_shl)
_EXPR["ShiftRight"] = _binary(_shr)
_EXPR["And"] = _binary(lambda a, b, m, bits: a & b)
_EXPR["Or"] = _binary(lambda a, b, m, bits: a | b)
_EXPR["Xor"] = _binary(lambda a, b, m, bits: a ^ b)
_EXPR["Nand"] = _binary(lambda a, b, m, bits: ~(a & b) & m)
_EXPR["Nor"] = _binary(lambda a, b, m, bits: ~(a | b) & m)


@_expr(n.Divide)
def _divide(c: Compiler, node: n.Divide) -> Expr:
    left = c.int_expr(node.dividend)
    right = c.int_expr(node.divisor)
    rem_store = c.storer(node.remainder)
    quo_store = c.storer(node.quotient)

    def run(frame: Frame) -> int:
        a = left(frame)
        b = _div_check(right(frame))
        quotient, remainder = divmod(a, b)
        if rem_store is not None:
            rem_store(frame, remainder)
        if quo_store is not None:
            quo_store(frame, quotient)
        return quotient

    return run


def _unary(fn: Callable[[int, int], int]) -> Callable[[Compiler, Any], Expr]:
    def compile_unary(c: Compiler, node: Any) -> Expr:
        operand = c.int_expr(node.operand)
        mask = c.mask

        def value(frame: Frame) -> int:
            return fn(operand(frame), mask)

        return _with_target(value, c.storer(node.target))

    return compile_unary


def _to_bcd(a: int, m: int) -> int:
    out = 0
    shift = 0
    while a:
        a, digit = divmod(a, 10)
        out |= digit << shift
        shift += 4
    if out > m:
        raise AmlError("ToBCD result does not fit in an Integer")
    return out


def _from_bcd(a: int, m: int) -> int:
    out = 0
    mul = 1
    while a:
        digit = a & 0xF
        if digit > 9:
            raise AmlError(f"FromBCD: {digit:#x} is not a BCD digit")
        out += digit * mul
        mul *= 10
        a >>= 4
    return out & m


_EXPR["Not"] = _unary(lambda a, m: ~a & m)
_EXPR["FindSetLeftBit"] = _unary(lambda a, m: a.bit_length())
_EXPR["FindSetRightBit"] = _unary(lambda a, m: (a & -a).bit_length())
_EXPR["ToBCD"] = _unary(_to_bcd)
_EXPR["FromBCD"] = _unary(_from_bcd)


def _step(delta: int) -> Callable[[Compiler, Any], Expr]:
    def compile_step(c: Compiler, node: Any) -> Expr:
        current = c.int_expr(node.target)
        store = c.storer(node.target)
        assert store is not None
        mask = c.mask

        def run(frame: Frame) -> int:
            v = (current(frame) + delta) & mask
            store(frame, v)
            return v

        return run

    return compile_step


_EXPR["Increment"] = _step(1)
_EXPR["Decrement"] = _step(-1)


# -- logic


def _compare(c: Compiler, node: Any, test: Callable[[int], bool]) -> Expr:
    """LEqual/LGreater/LLess: compare as the left operand's type (ACPI 6.5 §19.6.69)."""
    left = c.expr(node.left)
    right = c.expr(node.right)
    mask = c.mask
    general = _compare_any(left, right, mask, test)
    if isinstance(node.right, n.Integer) and isinstance(node.left, n.Arg | n.Local):
        # QEMU's CTFY is a chain of ``If (Arg0 == i)`` over every vCPU: give the
        # integer-slot-against-constant case a path without conversions.
        const = node.right.value & mask
        index = node.left.index
        results: tuple[int, ...] = tuple(mask if test(r) else 0 for r in (-1, 0, 1))

        if isinstance(node.left, n.Arg):

            def fast_arg(frame: Frame) -> int:
                a = frame.args[index]
                if type(a) is int:
                    return results[(a > const) - (a < const) + 1]
                return general(frame)

            return fast_arg

        def fast_local(frame: Frame) -> int:
            a = frame.locals[index]
            if type(a) is int:
                return results[(a > const) - (a < const) + 1]
            return general(frame)

        return fast_local
    return general


def _compare_any(left: Expr, right: Expr, mask: int, test: Callable[[int], bool]) -> IntExpr:
    def run(frame: Frame) -> int:
        a = deref_if_element(left(frame))
        b = right(frame)
        if type(a) is int:
            b = to_int(b, mask)
            return mask if test((a > b) - (a < b)) else 0
        if isinstance(a, str):
            sa, sb = a.encode("latin-1"), to_str(b, mask).encode("latin-1")
            return mask if test((sa > sb) - (sa < sb)) else 0
        if isinstance(a, bytearray):
            ba, bb = bytes(a), bytes(to_buffer(b, mask))
            return mask if test((ba > bb) - (ba < bb)) else 0
        raise AmlError(f"cannot compare a {type_name(a)}")

    return run


_EXPR["LEqual"] = lambda c, node: _compare(c, node, lambda r: r == 0)
_EXPR["LGreater"] = lambda c, node: _compare(c, node, lambda r: r > 0)
_EXPR["LLess"] = lambda c, node: _compare(c, node, lambda r: r < 0)


@_expr(n.LAnd)
def _land(c: Compiler, node: n.LAnd) -> Expr:
    left = c.int_expr(node.left)
    right = c.int_expr(node.right)
    mask = c.mask

    def run(frame: Frame) -> int:
        # AML evaluates both operands before the operator (no short circuit).
        a = left(frame)
        b = right(frame)
        return mask if a and b else 0

    return run


@_expr(n.LOr)
def _lor(c: Compiler, node: n.LOr) -> Expr:
    left = c.int_expr(node.left)
    right = c.int_expr(node.right)
    mask = c.mask

    def run(frame: Frame) -> int:
        a = left(frame)
        b = right(frame)
        return mask if a or b else 0

    return run


@_expr(n.LNot)
def _lnot(c: Compiler, node: n.LNot) -> Expr:
    operand = c.int_expr(node.operand)
    mask = c.mask
    return lambda frame: 0 if operand(frame) else mask


# -- references


def _container_of(v: Any) -> Any:
    """What a reference (element, named object, Local/Arg slot), or a chain of them,
    finally designates; any other value is itself."""
    while True:
        if isinstance(v, ElementRef):
            v = deref_element(v)
        elif isinstance(v, NodeRef):
            v = _follow(v.node).obj
        elif isinstance(v, LocalRef):
            v = v.slots[v.index]
        else:
            return v


@_expr(n.Index)
def _index(c: Compiler, node: n.Index) -> Expr:
    source = c.expr(node.source)
    index = c.int_expr(node.index)

    def value(frame: Frame) -> ElementRef:
        container = _container_of(source(frame))
        i = index(frame)
        if not isinstance(container, list | bytearray | str):
            raise AmlError(f"Index into a {type_name(container)}")
        if i >= len(container):
            raise AmlError(
                f"Index {i} out of range for a {type_name(container)} of {len(container)}"
            )
        return ElementRef(container, i)

    return _with_target(value, c.storer(node.target))


@_expr(n.DerefOf)
def _deref_of(c: Compiler, node: n.DerefOf) -> Expr:
    source = c.expr(node.source)

    def run(frame: Frame) -> Any:
        ref = source(frame)
        if isinstance(ref, ElementRef):
            v = deref_element(ref)
            if isinstance(v, LazyName):
                found = frame.rt.ns.lookup(v.path, v.scope)
                if found is None:
                    raise AmlError(f"package element names undefined {v.path}")
                return frame.rt.node_value(frame, _follow(found))
            return v
        if isinstance(ref, NodeRef):
            return frame.rt.node_value(frame, _follow(ref.node))
        if isinstance(ref, LocalRef):
            return ref.slots[ref.index]
        if isinstance(ref, str):
            return frame.rt.node_value(frame, _follow(frame.rt.ns.resolve(ref, frame.scope)))
        raise AmlError(f"DerefOf a {type_name(ref)}, which is not a reference")

    return run


@_expr(n.RefOf)
def _ref_of(c: Compiler, node: n.RefOf) -> Expr:
    obj = node.object
    if isinstance(obj, n.Local):
        i = obj.index
        return lambda frame: LocalRef(frame.locals, i, f"Local{i}")
    if isinstance(obj, n.Arg):
        j = obj.index

        def arg_ref(frame: Frame) -> Any:
            cur = frame.args[j]
            if isinstance(cur, NodeRef | LocalRef | ElementRef):
                return cur
            return LocalRef(frame.args, j, f"Arg{j}")

        return arg_ref
    if isinstance(obj, n.NameRef | n.MethodCall):
        node_of = c.node_of(obj)
        return lambda frame: NodeRef(node_of(frame))
    return c.expr(obj)


@_expr(n.CondRefOf)
def _cond_ref_of(c: Compiler, node: n.CondRefOf) -> Expr:
    obj = node.object
    store = c.storer(node.target)
    mask = c.mask
    if isinstance(obj, n.NameRef | n.MethodCall):
        find = resolver(obj.path)

        def named(frame: Frame) -> int:
            found = find(frame.rt.ns, frame.scope)
            if found is None:
                return 0
            if store is not None:
                store(frame, NodeRef(_follow(found)))
            return mask

        return named
    ref = _ref_of(c, n.RefOf(obj))

    def other(frame: Frame) -> int:
        r = ref(frame)
        if isinstance(r, LocalRef) and r.slots[r.index] is None:
            return 0
        if store is not None:
            store(frame, r)
        return mask

    return other


@_expr(n.SizeOf)
def _size_of(c: Compiler, node: n.SizeOf) -> Expr:
    obj = c.object_of(node.object)

    def run(frame: Frame) -> int:
        v = obj(frame)
        if isinstance(v, str | bytearray | list):
            return len(v)
        raise AmlError(f"SizeOf a {type_name(v)}")

    return run


@_expr(n.ObjectType)
def _object_type(c: Compiler, node: n.ObjectType) -> Expr:
    target = node.object
    if isinstance(target, n.NameRef | n.MethodCall):
        node_of = c.node_of(target)

        def named(frame: Frame) -> int:
            return OBJECT_TYPE_CODES.get(type_name(node_of(frame).obj), 0)

        return named
    obj = c.object_of(target)
    return lambda frame: OBJECT_TYPE_CODES.get(type_name(obj(frame)), 0)


# -- synchronisation with a value


@_expr(n.Acquire)
def _acquire(c: Compiler, node: n.Acquire) -> Expr:
    target = c.node_of(node.mutex)
    timeout = node.timeout
    mask = c.mask

    def run(frame: Frame) -> int:
        mutex = _mutex_of(frame, target(frame))
        # ACPI: Acquire returns True (Ones) when the timeout expired.
        return 0 if frame.rt.acquire(frame.ctx, mutex, timeout) else mask

    return run


@_expr(n.Wait)
def _wait(c: Compiler, node: n.Wait) -> Expr:
    target = c.node_of(node.event)
    timeout = c.int_expr(node.timeout)
    mask = c.mask

    def run(frame: Frame) -> int:
        event = _event_of(frame, target(frame))
        ms = timeout(frame)
        limits = frame.rt.limits
        if ms >= 0xFFFF:
            if not event.wait(limits.mutex_forever_seconds):
                raise AmlLimitError(
                    f"Wait({event.name}, 0xFFFF) still waiting after "
                    f"{limits.mutex_forever_seconds} s"
                )
            return 0
        return 0 if event.wait(ms / 1000.0) else mask

    return run


# -- conversions and strings


def _conversion(fn: Callable[[Any, int, Frame], Any]) -> Callable[[Compiler, Any], Expr]:
    def compile_conversion(c: Compiler, node: Any) -> Expr:
        operand = c.expr(node.operand)
        mask = c.mask

        def value(frame: Frame) -> Any:
            return fn(deref_if_element(operand(frame)), mask, frame)

        return _with_target(value, c.storer(node.target))

    return compile_conversion


def _explicit_int(v: Any, mask: int, frame: Frame) -> int:
    if isinstance(v, str):
        text = v.strip()
        try:
            if text[:2].lower() == "0x":
                return int(text[2:] or "0", 16) & mask
            digits = ""
            for ch in text:
                if not ch.isdigit():
                    break
                digits += ch
            return int(digits or "0") & mask
        except ValueError as exc:
            raise AmlError(f"ToInteger: {v!r} is not a number") from exc
    return to_int(v, mask)


def _hex_string(v: Any, mask: int, frame: Frame) -> str:
    if isinstance(v, int):
        return f"0x{v:X}"
    if isinstance(v, bytearray):
        return ",".join(f"0x{b:02X}" for b in v)
    return to_str(v, mask)


def _decimal_string(v: Any, mask: int, frame: Frame) -> str:
    if isinstance(v, int):
        return str(v)
    if isinstance(v, bytearray):
        return ",".join(str(b) for b in v)
    return to_str(v, mask)


def _explicit_buffer(v: Any, mask: int, frame: Frame) -> bytearray:
    return to_buffer(v, mask)


_EXPR["ToInteger"] = _conversion(_explicit_int)
_EXPR["ToHexString"] = _conversion(_hex_string)
_EXPR["ToDecimalString"] = _conversion(_decimal_string)
_EXPR["ToBuffer"] = _conversion(_explicit_buffer)


@_expr(n.ToString)
def _to_string(c: Compiler, node: n.ToString) -> Expr:
    source = c.expr(node.source)
    length = c.int_expr(node.length)
    mask = c.mask

    def value(frame: Frame) -> str:
        data = to_buffer(deref_if_element(source(frame)), mask)
        want = length(frame)
        end = data.find(0)
        if end < 0:
            end = len(data)
        return data[: min(end, want)].decode("latin-1")

    return _with_target(value, c.storer(node.target))


@_expr(n.Mid)
def _mid(c: Compiler, node: n.Mid) -> Expr:
    source = c.expr(node.source)
    index = c.int_expr(node.index)
    length = c.int_expr(node.length)

    def value(frame: Frame) -> Any:
        v = deref_if_element(source(frame))
        i, k = index(frame), length(frame)
        if isinstance(v, str):
            return v[i : i + k]
        if isinstance(v, bytearray):
            return bytearray(v[i : i + k])
        raise AmlError(f"Mid of a {type_name(v)}")

    return _with_target(value, c.storer(node.target))


@_expr(n.Concatenate)
def _concatenate(c: Compiler, node: n.Concatenate) -> Expr:
    left = c.expr(node.left)
    right = c.expr(node.right)
    mask = c.mask

    def value(frame: Frame) -> Any:
        a = deref_if_element(left(frame))
        b = deref_if_element(right(frame))
        limit = frame.rt.limits.max_object_size
        if isinstance(a, int):
            out: Any = to_buffer(a, mask) + to_buffer(to_int(b, mask), mask)
        elif isinstance(a, str):
            out = a + (to_str(b, mask) if not isinstance(b, list) else "[Package]")
        elif isinstance(a, bytearray):
            out = a + to_buffer(b, mask)
        else:
            raise AmlError(f"Concatenate of a {type_name(a)}")
        check_size(len(out), limit, "Concatenate result")
        return out

    return _with_target(value, c.storer(node.target))


@_expr(n.ConcatenateResTemplate)
def _concat_res(c: Compiler, node: n.ConcatenateResTemplate) -> Expr:
    left = c.expr(node.left)
    right = c.expr(node.right)
    mask = c.mask

    def strip(buf: bytearray) -> bytearray:
        return buf[:-2] if len(buf) >= 2 and buf[-2] == 0x79 else buf

    def value(frame: Frame) -> bytearray:
        a = to_buffer(deref_if_element(left(frame)), mask)
        b = to_buffer(deref_if_element(right(frame)), mask)
        return strip(a) + strip(b) + bytearray((0x79, 0))

    return _with_target(value, c.storer(node.target))


_MATCH_OPS: dict[int, Callable[[int], bool]] = {
    0: lambda r: True,
    1: lambda r: r == 0,
    2: lambda r: r <= 0,
    3: lambda r: r < 0,
    4: lambda r: r >= 0,
    5: lambda r: r > 0,
}


@_expr(n.Match)
def _match(c: Compiler, node: n.Match) -> Expr:
    package = c.expr(node.package)
    obj1 = c.expr(node.obj1)
    obj2 = c.expr(node.obj2)
    start = c.int_expr(node.start)
    mask = c.mask
    if node.op1 not in _MATCH_OPS or node.op2 not in _MATCH_OPS:
        raise AmlError(f"Match with unknown operator {node.op1}/{node.op2}")
    test1, test2 = _MATCH_OPS[node.op1], _MATCH_OPS[node.op2]

    def cmp(elem: Any, other: Any) -> int:
        if isinstance(elem, int):
            b = to_int(other, mask)
            return (elem > b) - (elem < b)
        if isinstance(elem, str):
            sb = to_str(other, mask)
            return (elem > sb) - (elem < sb)
        bb = bytes(to_buffer(other, mask))
        eb = bytes(elem)
        return (eb > bb) - (eb < bb)

    def run(frame: Frame) -> int:
        pkg = _container_of(package(frame))
        if not isinstance(pkg, list):
            raise AmlError(f"Match on a {type_name(pkg)}, not a Package")
        a, b = obj1(frame), obj2(frame)
        first = start(frame)
        if first >= len(pkg):
            raise AmlError(f"Match start index {first} beyond the package of {len(pkg)}")
        for i in range(first, len(pkg)):
            elem = pkg[i]
            if not isinstance(elem, int | str | bytearray):
                continue
            if test1(cmp(elem, a)) and test2(cmp(elem, b)):
                return i
        return mask

    return run

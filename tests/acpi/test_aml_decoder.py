"""The AML decoder: QEMU's real DSDT, name resolution for calls, errors, properties."""

from __future__ import annotations

import contextlib
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpuplug.acpi.aml import nodes as n
from cpuplug.acpi.aml.builder import (
    Add,
    And,
    Arg,
    Buffer,
    DefinitionBlock,
    Device,
    External,
    Field,
    If,
    Increment,
    Index,
    Integer,
    LEqual,
    Local,
    Method,
    MethodCall,
    Name,
    NamedField,
    NameRef,
    Notify,
    OperationRegion,
    Package,
    Return,
    Scope,
    Store,
    String,
    While,
    Zero,
)
from cpuplug.acpi.aml.decoder import (
    MAX_DEPTH,
    decode_definition_block,
    decode_table,
    find_methods,
)
from cpuplug.acpi.aml.nodes import walk
from cpuplug.acpi.errors import AmlError, TableError

QEMU_DSDT = Path(__file__).resolve().parents[1] / "data/x86-q35-cphp/DSDT.dat"


@pytest.fixture
def qemu_dsdt(vectors: Path) -> bytes:
    return (vectors / "x86-q35-cphp/DSDT.dat").read_bytes()


def find(nodes: object, cls: type[n.Node], name: str) -> n.Node:
    for node in walk(nodes):
        if isinstance(node, cls) and getattr(node, "name", "").endswith(name):
            return node
    raise LookupError(name)


# ---------------------------------------------------------------- QEMU's real DSDT


def test_qemu_dsdt_decodes_whole_and_reencodes_byte_identically(qemu_dsdt: bytes) -> None:
    block = decode_table(qemu_dsdt)
    assert block.signature == "DSDT" and block.revision == 1
    assert block.ids.oem_id == "BOCHS "
    assert block.encode() == qemu_dsdt


def test_qemu_dsdt_calls_are_resolved_with_their_arguments(qemu_dsdt: bytes) -> None:
    body = decode_table(qemu_dsdt).body
    cscn = find(body, Method, "CSCN")
    calls = [x for x in walk(cscn) if isinstance(x, MethodCall)]
    assert [(c.path, len(c.args)) for c in calls] == [("CTFY", 2), ("CTFY", 2)]
    assert calls[0].args == (Local(3), Integer(3))
    e02 = find(body, Method, "_E02")
    assert isinstance(e02, Method)
    assert e02.body == (MethodCall("\\_SB.CPUS.CSCN", ()),)
    c001 = find(body, n.Processor, "C001")
    assert isinstance(c001, n.Processor) and c001.proc_id == 1
    # CSTA is declared after nothing calls it, but _STA (declared later) calls it
    sta = find(c001, Method, "_STA")
    assert sta == Method("_STA", 0, True, 0, (Return(MethodCall("CSTA", (Integer(1),))),))


def test_find_methods_lists_absolute_paths(qemu_dsdt: bytes) -> None:
    methods = find_methods(qemu_dsdt[36:])
    assert methods["\\_SB_.CPUS.COST"] == 4
    assert methods["\\_SB_.CPUS.C003._EJ0"] == 1
    assert methods["\\_GPE._E02"] == 0
    assert len(methods) == 81


@pytest.mark.parametrize("cut", [37, 100, 1000, 4000, 6500, 8599])
def test_truncated_qemu_dsdt_raises_aml_error_with_offset(qemu_dsdt: bytes, cut: int) -> None:
    with pytest.raises(AmlError) as info:
        decode_definition_block(qemu_dsdt[36:cut], base=36)
    assert info.value.offset is not None and 36 <= info.value.offset <= cut


# ---------------------------------------------------------------- name resolution for calls


def test_forward_call_to_a_method_declared_later() -> None:
    body = (
        Method("AAAA", 0, False, 0, (Return(MethodCall("BBBB", (Integer(7), Arg(0)))),)),
        Method("BBBB", 2, False, 0, (Return(Add(Arg(0), Arg(1))),)),
    )
    aml = b"".join(x.encode() for x in body)
    assert tuple(decode_definition_block(aml)) == body


def test_single_segment_calls_search_up_the_scopes() -> None:
    tree = (
        Method("\\ROOT", 1, False, 0, ()),
        Scope(
            "\\_SB",
            (
                Method("HELP", 2, False, 0, ()),
                Device(
                    "DEV0",
                    (
                        Method(
                            "MTH0",
                            0,
                            False,
                            0,
                            (
                                MethodCall("ROOT", (Integer(1),)),  # found at the root
                                MethodCall("HELP", (Zero, Zero)),  # found in \_SB
                                # ^ from a method is its device (no HELP there), ^^ is \_SB
                                MethodCall("^^HELP", (Zero, Zero)),
                                MethodCall("\\_SB.HELP", (Zero, Zero)),
                            ),
                        ),
                    ),
                ),
            ),
        ),
    )
    aml = b"".join(x.encode() for x in tree)
    assert tuple(decode_definition_block(aml)) == tree


def test_multi_segment_relative_names_are_not_searched() -> None:
    # A relative multi-segment name starts at the method's own scope and is never
    # searched upwards: DEV0.MTH1 from inside \_SB.CALL is \_SB.CALL.DEV0.MTH1,
    # which does not exist, so the byte after it is a separate term. ^DEV0.MTH1
    # (one level up from the method, i.e. \_SB) is the call.
    inner = Device("DEV0", (Method("MTH1", 1, False, 0, ()),))
    caller = Method(
        "CALL",
        0,
        False,
        0,
        (NameRef("DEV0.MTH1"), Integer(5), MethodCall("^DEV0.MTH1", (Integer(6),))),
    )
    tree = (Scope("\\_SB", (inner, caller)),)
    aml = b"".join(x.encode() for x in tree)
    assert tuple(decode_definition_block(aml)) == tree


def test_ssdt_calls_into_the_dsdt_need_known_methods() -> None:
    call = Method("_STA", 0, False, 0, (Return(MethodCall("\\_SB.CPUS.CSTA", (Integer(2),))),))
    aml = call.encode()
    assert decode_definition_block(aml, known_methods={"\\_SB.CPUS.CSTA": 1}) == [call]
    # Without the declaration the argument is just another term of the method.
    bare = decode_definition_block(aml)[0]
    assert isinstance(bare, Method)
    assert bare.body == (Return(NameRef("\\_SB.CPUS.CSTA")), Integer(2))
    with pytest.raises(AmlError):
        decode_definition_block(aml, known_methods={"CSTA": 1})


def test_external_method_declares_its_argc() -> None:
    tree = (
        External("\\_SB.CPUS.CSCN", 8, 0),
        External("\\_SB.CPUS.COST", 8, 4),
        Method("X", 0, False, 0, (MethodCall("\\_SB.CPUS.COST", (Zero, Zero, Zero, Zero)),)),
    )
    aml = b"".join(x.encode() for x in tree)
    assert tuple(decode_definition_block(aml)) == tree


def test_osi_is_a_known_method() -> None:
    tree = (If(MethodCall("\\_OSI", (String("Linux"),)), (Name("LNUX", Integer(1)),)),)
    aml = b"".join(x.encode() for x in tree)
    assert tuple(decode_definition_block(aml)) == tree


def test_package_names_are_references_not_calls() -> None:
    tree = (
        Method("MTHD", 1, False, 0, ()),
        Name("PKG0", Package((NameRef("MTHD"), Integer(1)))),
    )
    aml = b"".join(x.encode() for x in tree)
    assert tuple(decode_definition_block(aml)) == tree


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("aml", "opcode", "offset"),
    [
        (b"\x02", 0x02, 0),
        (b"\x70\x00\x60\xcd", 0xCD, 3),
        (b"\x5b\xff", 0x5BFF, 0),
        (b"\xa1\x01", 0xA1, 0),  # Else without If
    ],
)
def test_unknown_opcode_is_named_with_its_offset(aml: bytes, opcode: int, offset: int) -> None:
    with pytest.raises(AmlError) as info:
        decode_definition_block(aml, base=0)
    assert info.value.opcode == opcode and info.value.offset == offset
    assert f"{opcode:#x}" in str(info.value)


@pytest.mark.parametrize(
    "aml",
    [
        b"\x10",  # Scope without a PkgLength
        b"\x10\x3f\x5c\x00",  # PkgLength past the end
        b"\x0c\x01\x02",  # truncated DWord
        b"\x0dabc",  # unterminated string
        b"\x0d\xff\x00",  # non-ASCII string
        b"\x08ab",  # truncated NameSeg
        b"\x08a__\x00\x00",  # lower-case NameSeg
        b"\x70\x00",  # Store without a target
        b"\x70\x00\x0a\x01",  # Store into a constant
        b"\x5b\x81\x07PRST\x01\x02",  # Connection field element
        b"\x5b\x81\x06PRST\x81",  # reserved field flag bit 7
        b"\x2f\x00",  # MultiNamePath with zero segments
    ],
)
def test_malformed_aml_raises_aml_error(aml: bytes) -> None:
    with pytest.raises(AmlError):
        decode_definition_block(aml)


def test_deep_nesting_is_an_aml_error_not_a_recursion_error() -> None:
    aml = b"\x75" * 5000 + b"\x60"  # Increment(Increment(...)) is not valid, but deep
    with pytest.raises(AmlError):
        decode_definition_block(aml)
    deep = b"\x92" * (MAX_DEPTH + 5) + b"\x00"  # LNot(LNot(...(Zero)))
    with pytest.raises(AmlError, match="nested"):
        decode_definition_block(deep)
    fine = b"\x92" * (MAX_DEPTH - 2) + b"\x00"
    assert len(decode_definition_block(fine)) == 1


def test_bad_table_header_raises_table_error(qemu_dsdt: bytes) -> None:
    with pytest.raises(TableError):
        decode_table(qemu_dsdt[:20])
    broken = bytearray(qemu_dsdt)
    broken[100] ^= 0xFF
    with pytest.raises(TableError):
        decode_table(bytes(broken))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_only_ever_raise_aml_error(data: bytes) -> None:
    try:
        nodes = decode_definition_block(data)
    except AmlError:
        return
    # Whatever decodes re-encodes canonically, and the canonical form is a fixed point.
    canonical = b"".join(x.encode() for x in nodes)
    assert decode_definition_block(canonical) == nodes


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_qemu_dsdt_only_raises_aml_error(data: st.DataObject) -> None:
    raw = bytearray(QEMU_DSDT.read_bytes()[36:])
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(AmlError):
        decode_definition_block(bytes(raw))


# ---------------------------------------------------------------- round trips of random trees

SEG = st.text(string.ascii_uppercase + "_", min_size=1, max_size=1).flatmap(
    lambda first: st.text(string.ascii_uppercase + string.digits + "_", max_size=3).map(
        lambda rest: first + rest
    )
)
# Plain names never collide with the method names below (those start with "M").
PLAIN = SEG.filter(lambda s: not s.startswith("M"))
METHODS = {"MAAA": 0, "MBBB": 1, "MCCC": 2, "MDDD": 3}


def integers() -> st.SearchStrategy[n.Node]:
    return st.one_of(
        st.integers(0, (1 << 64) - 1).map(Integer),
        st.sampled_from(["byte", "word", "dword", "qword"]).flatmap(
            lambda enc: st.integers(
                0, (1 << {"byte": 8, "word": 16, "dword": 32, "qword": 64}[enc]) - 1
            ).map(
                lambda v: Integer(v, enc)  # type: ignore[arg-type]
            )
        ),
    )


def targets() -> st.SearchStrategy[n.Node]:
    return st.one_of(
        st.integers(0, 7).map(Local),
        st.integers(0, 6).map(Arg),
        PLAIN.map(NameRef),
        st.just(n.Debug()),
    )


def _leaf_terms() -> st.SearchStrategy[n.Node]:
    return st.one_of(
        integers(),
        st.text(string.ascii_letters + " ", max_size=8).map(String),
        targets(),
        st.binary(max_size=8).map(Buffer),
        st.builds(n.Timer),
    )


def _compound_terms(sub: st.SearchStrategy[n.Node]) -> st.SearchStrategy[n.Node]:
    opt_target = st.one_of(st.none(), targets())
    return st.one_of(
        st.builds(Add, sub, sub, opt_target),
        st.builds(And, sub, sub, opt_target),
        st.builds(n.Divide, sub, sub, opt_target, opt_target),
        st.builds(LEqual, sub, sub),
        st.builds(n.LNot, sub),
        st.builds(n.DerefOf, sub),
        st.builds(n.SizeOf, targets()),
        st.builds(Index, sub, sub, opt_target),
        st.builds(n.ToBuffer, sub, opt_target),
        st.builds(n.Mid, sub, sub, sub, opt_target),
        st.builds(
            Package, st.lists(st.one_of(integers(), PLAIN.map(NameRef)), max_size=3).map(tuple)
        ),
        st.builds(n.VarPackage, sub, st.lists(integers(), max_size=2).map(tuple)),
        st.sampled_from(sorted(METHODS)).flatmap(
            lambda m: st.lists(sub, min_size=METHODS[m], max_size=METHODS[m]).map(
                lambda args: MethodCall(m, tuple(args))
            )
        ),
    )


TERMS = st.recursive(_leaf_terms(), _compound_terms, max_leaves=6)


def _simple_statements() -> st.SearchStrategy[n.Node]:
    return st.one_of(
        st.builds(Store, TERMS, targets()),
        st.builds(Increment, targets()),
        st.builds(Notify, targets(), TERMS),
        st.builds(Return, TERMS),
        st.builds(n.Break),
        st.builds(n.Acquire, PLAIN.map(NameRef), st.integers(0, 0xFFFF)),
        st.builds(n.Sleep, TERMS),
        st.builds(n.CreateDWordField, TERMS, TERMS, PLAIN),
    )


def _blocks(sub: st.SearchStrategy[n.Node]) -> st.SearchStrategy[n.Node]:
    body = st.lists(sub, max_size=3).map(tuple)
    return st.one_of(
        st.builds(If, TERMS, body, st.one_of(st.none(), body)),
        st.builds(While, TERMS, body),
    )


STATEMENTS = st.recursive(_simple_statements(), _blocks, max_leaves=6)


# What ASL allows as the value of a Name at object level: data, never a call.
DATA = st.recursive(
    st.one_of(
        integers(),
        st.text(string.ascii_letters, max_size=8).map(String),
        st.binary(max_size=8).map(Buffer),
    ),
    lambda sub: st.lists(st.one_of(sub, PLAIN.map(NameRef)), max_size=3).map(
        lambda e: Package(tuple(e))
    ),
    max_leaves=6,
)


def objects() -> st.SearchStrategy[n.Node]:
    field = st.builds(
        Field,
        PLAIN,
        st.lists(
            st.one_of(
                st.builds(NamedField, PLAIN, st.integers(1, 1 << 12)),
                st.builds(n.ReservedField, st.integers(1, 64)),
                st.builds(n.AccessField, st.integers(0, 5), st.integers(0, 255)),
            ),
            max_size=4,
        ).map(tuple),
        st.integers(0, 5),
        st.booleans(),
        st.integers(0, 2),
    )
    return st.one_of(
        st.builds(Name, PLAIN, DATA),
        st.builds(OperationRegion, PLAIN, st.integers(0, 10), integers(), integers()),
        field,
        st.builds(n.Mutex, PLAIN, st.integers(0, 15)),
        st.builds(
            Device, PLAIN, st.lists(st.builds(Name, PLAIN, integers()), max_size=2).map(tuple)
        ),
    )


@st.composite
def definition_blocks(draw: st.DrawFn) -> tuple[n.Node, ...]:
    methods = tuple(
        Method(
            name,
            argc,
            draw(st.booleans()),
            draw(st.integers(0, 15)),
            tuple(draw(st.lists(STATEMENTS, max_size=4))),
        )
        for name, argc in METHODS.items()
    )
    extra = tuple(draw(st.lists(objects(), max_size=4)))
    order = draw(st.permutations(methods + extra))
    return (Scope("\\", tuple(order)),)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definition_blocks())
def test_random_valid_trees_round_trip(tree: tuple[n.Node, ...]) -> None:
    aml = b"".join(x.encode() for x in tree)
    decoded = tuple(decode_definition_block(aml))
    assert decoded == tree
    assert b"".join(x.encode() for x in decoded) == aml


def test_whole_table_round_trip() -> None:
    block = DefinitionBlock("SSDT", (Scope("\\_SB", (Method("MAAA", 0, False, 0, ()),)),), 2)
    assert decode_table(block.encode()) == block


def _example_op(cls: type[n.Op]) -> n.Op:
    """An instance of any fixed-shape operator, operands filled by their kind."""
    values: dict[str, object] = {}
    for i, (name, kind) in enumerate(cls.operands()):
        values[name] = {
            "T": Integer(i + 2),
            "S": Local(i % 8),
            "t": Arg(i % 7),
            "N": f"N{i:03d}",
            "B": 5,
            "W": 0x1234,
            "D": 0x12345678,
        }[kind]
    return cls(**values)


def test_every_node_class_round_trips() -> None:
    ops = sorted(
        (cls for cls in vars(n).values() if isinstance(cls, type) and issubclass(cls, n.Op)),
        key=lambda c: c.__name__,
    )
    ops = [c for c in ops if hasattr(c, "OPCODE")]
    assert len(ops) > 70
    fields = (
        NamedField("FLD0", 8),
        n.ReservedField(4),
        n.AccessField(1, 0),
        n.ExtendedAccessField(0x0B, 0x02, 0x10),
        NamedField("FLD1", 4),
    )
    tree = (
        External("\\EXTM", 8, 2),
        n.Processor("\\CPU0", 1, 0x410, 6, (Name("_UID", Zero),)),
        n.PowerResource("\\PWR0", 0, 1, (Method("_ON", 0, False, 0, ()),)),
        n.ThermalZone("\\TZ00", (Name("_TMP", Integer(3000)),)),
        n.IndexField("IDX0", "DAT0", fields, 1, True, 1),
        n.BankField("REG0", "BNK0", Integer(2), fields, 3, False, 0),
        n.DataRegion("DREG", String("SSDT"), String(""), String("")),
        Device(
            "\\DEV0",
            (
                Method(
                    "MTH0",
                    7,
                    True,
                    3,
                    (
                        *(_example_op(cls) for cls in ops),
                        MethodCall("\\EXTM", (Zero, n.Revision())),
                        n.If(Zero, (n.Continue(),), (n.If(Integer(1), (n.Noop(),)),)),
                        Store(n.VarPackage(Arg(0), (Integer(1), String("x"))), Local(7)),
                    ),
                ),
            ),
        ),
    )
    aml = b"".join(x.encode() for x in tree)
    decoded = tuple(decode_definition_block(aml))
    assert decoded == tree
    assert all(type(a) is type(b) for a, b in zip(walk(decoded), walk(tree), strict=True))


def test_truncation_names_the_operator_and_where_it_starts() -> None:
    aml = Store(Integer(0x12345678), Local(0)).encode()[:-2]  # DWord cut short
    with pytest.raises(AmlError) as info:
        decode_definition_block(b"\xa3" + aml, base=0x24)  # after a Noop
    # the innermost operator whose operand ran out: the DWord constant
    assert info.value.opcode == 0x0C and info.value.offset == 0x24 + 2
    with pytest.raises(AmlError) as info:
        decode_definition_block(b"\x70\x0a", base=0)  # Store(ByteConst <cut>
    assert info.value.opcode == 0x0A and info.value.offset == 1
    with pytest.raises(AmlError) as info:
        decode_definition_block(b"\x70", base=0)  # Store with nothing after it
    assert info.value.opcode == 0x70 and info.value.offset == 0


# ---------------------------------------------------------------- QA: bounded decoding


def test_qa_term_cap_refuses_filler_in_both_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: 8 MiB of zero bytes (one ZeroOp each) took 41 s and 560 MB to decode."""
    from cpuplug.acpi.aml import decoder
    from cpuplug.acpi.errors import AmlLimitError

    monkeypatch.setattr(decoder, "MAX_TERMS", 500)
    with pytest.raises(AmlLimitError, match="more than 500 terms"):
        decoder.decode_definition_block(bytes(501))  # the tolerant first pass must not skip it
    with pytest.raises(AmlLimitError):
        decoder.find_methods(bytes(501))
    assert len(decoder.decode_definition_block(bytes(250))) == 250


@pytest.mark.timeout(60)
def test_qa_large_zero_filled_table_is_refused() -> None:
    """Refused quickly with the project's error, under the real limits (no monkeypatch)."""
    from cpuplug.acpi.aml.decoder import MAX_TERMS, decode_table
    from cpuplug.acpi.errors import AmlLimitError
    from cpuplug.acpi.interp import MAX_TABLE_SIZE, Interpreter
    from cpuplug.acpi.tables import aml_table
    from cpuplug.acpi.virt import MachineConfig, build_machine_tables

    with pytest.raises(AmlLimitError, match="larger than"):
        Interpreter().load(aml_table("DSDT", bytes(8 << 20)).build())
    with pytest.raises(AmlLimitError, match="terms"):
        decode_table(aml_table("DSDT", bytes(MAX_TERMS + 1)).build())
    # ... while the biggest table cpuplug itself makes is far inside both limits.
    dsdt = build_machine_tables(MachineConfig.from_smp("cpus=1,maxcpus=512")).blobs["DSDT"]
    assert len(dsdt) * 10 < MAX_TABLE_SIZE
    Interpreter().load(dsdt)

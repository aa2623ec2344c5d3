"""The AML interpreter (``cpuplug.acpi.interp``): fields, evaluation, limits, threads.

The first part pins region field access (ACPI 6.5 §19.6.48) on :class:`FieldUnit`
as exact (op, addr, width, value) sequences; the rest builds small tables with the
builder, loads them whole through the decoder and evaluates through the public
:class:`Interpreter`. Real tables (QEMU's DSDT, ours) are in ``test_interp_vector.py``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpuplug.acpi.aml import builder as b
from cpuplug.acpi.aml.objects import (
    UPDATE_ONES,
    UPDATE_PRESERVE,
    UPDATE_ZEROS,
    BufferField,
    FieldUnit,
    OperationRegion,
    RegionHandler,
)
from cpuplug.acpi.aml.opcodes import REGION_SPACES
from cpuplug.acpi.errors import AcpiError, AmlError, AmlLimitError, TableError
from cpuplug.acpi.interp import Interpreter
from cpuplug.acpi.tables import Sdt
from cpuplug.errors import UsageError

BASE = 0x1000


class Recorder:
    """A region handler over a little-endian byte array that logs every access."""

    def __init__(self, size: int = 32, fill: int = 0) -> None:
        self.mem = bytearray([fill] * size)
        self.log: list[tuple[str, int, int, int]] = []

    def read(self, addr: int, width_bits: int) -> int:
        off = addr - BASE
        value = int.from_bytes(self.mem[off : off + width_bits // 8], "little")
        self.log.append(("r", addr, width_bits, value))
        return value

    def write(self, addr: int, width_bits: int, value: int) -> None:
        off = addr - BASE
        self.mem[off : off + width_bits // 8] = value.to_bytes(width_bits // 8, "little")
        self.log.append(("w", addr, width_bits, value))


class Table:
    def __init__(self, handler: RegionHandler) -> None:
        self.handler = handler

    def handler_for(self, region: OperationRegion) -> RegionHandler:
        return self.handler


def unit(bit_offset: int, bits: int, access: int, rule: int, length: int = 32) -> FieldUnit:
    region = OperationRegion("TEST", 0, BASE, length)
    return FieldUnit("FLD", region, bit_offset, bits, access, rule, False)


def test_write_as_zeros_byte_field_writes_one_byte_without_reading() -> None:
    rec = Recorder(fill=0xFF)
    unit(33, 1, 1, UPDATE_ZEROS).write(Table(rec), 1)  # QEMU's CINS
    assert rec.log == [("w", BASE + 4, 8, 0x02)]


def test_write_as_ones_fills_the_other_bits_with_ones() -> None:
    rec = Recorder()
    unit(33, 1, 1, UPDATE_ONES).write(Table(rec), 0)
    assert rec.log == [("w", BASE + 4, 8, 0xFD)]


def test_preserve_narrow_field_does_read_modify_write() -> None:
    rec = Recorder()
    rec.mem[4] = 0xA5
    unit(36, 3, 1, UPDATE_PRESERVE).write(Table(rec), 0b010)
    assert rec.log == [("r", BASE + 4, 8, 0xA5), ("w", BASE + 4, 8, 0xA5 & ~0x70 | 0x20)]


def test_full_unit_preserve_field_writes_without_reading() -> None:
    rec = Recorder()
    unit(64, 32, 3, UPDATE_PRESERVE).write(Table(rec), 0x12345678)  # QEMU's CDAT
    assert rec.log == [("w", BASE + 8, 32, 0x12345678)]


def test_field_spanning_units_does_one_access_per_unit() -> None:
    rec = Recorder()
    rec.mem[0:4] = bytes([0x11, 0x22, 0x33, 0x44])
    # 16 bits starting at bit 12, WordAcc: units 0 (bits 12..15) and 1 (bits 16..27).
    unit(12, 16, 2, UPDATE_PRESERVE).write(Table(rec), 0xABCD)
    assert rec.log == [
        ("r", BASE + 0, 16, 0x2211),
        ("w", BASE + 0, 16, 0xD211),
        ("r", BASE + 2, 16, 0x4433),
        ("w", BASE + 2, 16, 0x4ABC),
    ]
    rec.log.clear()
    assert unit(12, 16, 2, UPDATE_PRESERVE).read(Table(rec)) == 0xABCD
    assert rec.log == [("r", BASE, 16, 0xD211), ("r", BASE + 2, 16, 0x4ABC)]


def test_read_extracts_the_bits_of_one_byte() -> None:
    rec = Recorder()
    rec.mem[4] = 0b0010_0110
    assert unit(33, 1, 1, UPDATE_ZEROS).read(Table(rec)) == 1
    assert unit(32, 1, 1, UPDATE_ZEROS).read(Table(rec)) == 0
    assert unit(37, 1, 1, UPDATE_ZEROS).read(Table(rec)) == 1
    assert rec.log == [("r", BASE + 4, 8, 0x26)] * 3


def test_any_acc_uses_narrowest_aligned_unit() -> None:
    rec = Recorder()
    unit(8, 8, 0, UPDATE_PRESERVE).write(Table(rec), 0x7F)
    unit(16, 16, 0, UPDATE_PRESERVE).write(Table(rec), 0x1234)
    unit(32, 32, 0, UPDATE_PRESERVE).write(Table(rec), 0xCAFEBABE)
    assert rec.log == [
        ("w", BASE + 1, 8, 0x7F),
        ("w", BASE + 2, 16, 0x1234),
        ("w", BASE + 4, 32, 0xCAFEBABE),
    ]


def test_qword_field() -> None:
    rec = Recorder()
    unit(64, 64, 4, UPDATE_PRESERVE).write(Table(rec), 0x0102030405060708)
    assert rec.log == [("w", BASE + 8, 64, 0x0102030405060708)]


def test_value_wider_than_field_is_truncated() -> None:
    rec = Recorder()
    unit(0, 4, 1, UPDATE_ZEROS).write(Table(rec), 0xFF)
    assert rec.log == [("w", BASE, 8, 0x0F)]


def test_field_beyond_region_is_refused() -> None:
    field = unit(0, 40, 1, UPDATE_ZEROS, length=4)
    rec = Recorder()
    with pytest.raises(AmlError, match="beyond region"):
        field.read(Table(rec))
    with pytest.raises(AmlError, match="beyond region"):
        field.write(Table(rec), 1)
    assert rec.log == []


def test_handler_errors_become_aml_errors() -> None:
    class Broken:
        def read(self, addr: int, width_bits: int) -> int:
            raise OSError("bus fault")

        def write(self, addr: int, width_bits: int, value: int) -> None:
            raise OSError("bus fault")

    with pytest.raises(AmlError, match="bus fault"):
        unit(0, 8, 1, UPDATE_ZEROS).read(Table(Broken()))


def test_buffer_field_reads_and_writes_in_place() -> None:
    buf = bytearray(8)
    bf = BufferField("CDW2", buf, 32, 32)
    bf.write(0x11223344)
    assert bytes(buf) == bytes([0, 0, 0, 0, 0x44, 0x33, 0x22, 0x11])
    bit = BufferField("BIT3", buf, 3, 1)
    bit.write(1)
    assert buf[0] == 0x08 and bit.read() == 1 and bf.read() == 0x11223344
    with pytest.raises(AmlError, match="beyond the end"):
        BufferField("OVER", buf, 40, 32)


# =========================================================================== AML level
#
# Everything below builds small tables with the builder, loads them whole (header +
# AML, through the decoder) and evaluates through the public Interpreter.


L0, L1, L2, L3 = (b.Local(i) for i in range(4))
A0, A1, A2 = (b.Arg(i) for i in range(3))
I = b.Integer  # noqa: E741


def table(*body: b.Node, revision: int = 2, signature: str = "DSDT") -> bytes:
    return b.DefinitionBlock(signature, tuple(body), revision=revision).encode()


def interp(*body: b.Node, revision: int = 2, **limits: float) -> Interpreter:
    it = Interpreter(**limits)  # type: ignore[arg-type]
    it.load(table(*body, revision=revision))
    return it


def method(name: str, argc: int, *body: b.Node, serialized: bool = False) -> b.Method:
    return b.Method(name, argc, serialized, 0, tuple(body))


def test_args_locals_arithmetic_and_return() -> None:
    it = interp(
        method(
            "CALC",
            3,
            b.Store(b.Add(A0, A1), L0),
            b.Multiply(L0, A2, L1),
            b.Subtract(L1, I(1), L2),
            b.ShiftLeft(L2, I(4), L3),
            b.Return(b.Or(L3, b.And(A0, I(0xF)))),
        )
    )
    assert it.evaluate("\\CALC", 2, 3, 4) == ((((2 + 3) * 4) - 1) << 4) | 2


def test_integer_width_follows_the_dsdt_revision() -> None:
    body = (
        method("OVFL", 0, b.Return(b.Add(I(0xFFFF_FFFF), I(1)))),
        method("ONES", 0, b.Return(b.Ones)),
        method("NOTZ", 0, b.Return(b.Not(I(0)))),
    )
    old, new = interp(*body, revision=1), interp(*body, revision=2)
    assert old.int_bits == 32 and new.int_bits == 64
    assert old.evaluate("\\OVFL") == 0
    assert new.evaluate("\\OVFL") == 0x1_0000_0000
    assert old.evaluate("\\ONES") == 0xFFFF_FFFF
    assert new.evaluate("\\ONES") == 0xFFFF_FFFF_FFFF_FFFF
    assert old.evaluate("\\NOTZ") == 0xFFFF_FFFF


def test_if_else_chain() -> None:
    it = interp(
        method(
            "SIGN",
            1,
            b.If(
                b.LLess(A0, I(10)),
                (b.Return(I(1)),),
                (b.If(b.LEqual(A0, I(10)), (b.Return(I(2)),), (b.Return(I(3)),)),),
            ),
        )
    )
    assert [it.evaluate("\\SIGN", v) for v in (3, 10, 11)] == [1, 2, 3]


def test_while_break_continue() -> None:
    # Sum of odd numbers below Arg0, stopping at 15.
    it = interp(
        method(
            "ODDS",
            1,
            b.Store(I(0), L0),
            b.Store(I(0), L1),
            b.While(
                b.LLess(L0, A0),
                (
                    b.Increment(L0),
                    b.If(b.LEqual(L0, I(15)), (b.Break(),)),
                    b.If(b.LEqual(b.Mod(L0, I(2)), I(0)), (b.Continue(),)),
                    b.Add(L1, L0, L1),
                ),
            ),
            b.Return(L1),
        )
    )
    assert it.evaluate("\\ODDS", 10) == 1 + 3 + 5 + 7 + 9
    assert it.evaluate("\\ODDS", 100) == 1 + 3 + 5 + 7 + 9 + 11 + 13


def test_nested_and_recursive_calls() -> None:
    it = interp(
        method(
            "FACT",
            1,
            b.If(b.LLess(A0, I(2)), (b.Return(I(1)),)),
            b.Return(b.Multiply(A0, b.MethodCall("FACT", (b.Subtract(A0, I(1)),)))),
        ),
        b.Scope("\\_SB", (method("TWIC", 1, b.Return(b.MethodCall("\\FACT", (A0,)))),)),
    )
    assert it.evaluate("\\FACT", 10) == 3628800
    assert it.evaluate("\\_SB.TWIC", 5) == 120


def test_packages_buffers_strings_index_derefof_sizeof() -> None:
    it = interp(
        b.Name("PKG", b.Package((I(10), b.String("abc"), b.Buffer(b"\x01\x02\x03")), count=5)),
        method(
            "TEST",
            0,
            b.Store(I(7), b.Index(b.NameRef("PKG"), I(3))),
            b.Store(
                b.Add(b.DerefOf(b.Index(b.NameRef("PKG"), I(0))), I(1)),
                b.Index(b.NameRef("PKG"), I(4)),
            ),
            b.Store(b.DerefOf(b.Index(b.NameRef("PKG"), I(2))), L0),
            b.Store(I(0x1FF), b.Index(L0, I(1))),  # only the low byte lands
            b.Return(
                b.Package(
                    (
                        b.SizeOf(b.NameRef("PKG")),
                        b.SizeOf(L0),
                        L0,
                        b.DerefOf(b.Index(b.String("xyz"), I(1))),
                    )
                )
            ),
        ),
    )
    assert it.evaluate("\\TEST") == [5, 3, b"\x01\xff\x03", ord("y")]
    # The named package was changed in place; the buffer copy in Local0 was not shared.
    assert it.evaluate("\\PKG") == [10, "abc", b"\x01\x02\x03", 7, 11]


def test_package_elements_are_literals_not_the_method_locals() -> None:
    it = interp(method("MKPK", 1, b.Return(b.Package((A0, b.Add(A0, I(1)))))))
    assert it.evaluate("\\MKPK", 4) == [4, 5]


def test_index_out_of_range_and_uninitialized_element_are_aml_errors() -> None:
    it = interp(
        b.Name("PKG", b.Package((I(1),), count=2)),
        method("OOR", 0, b.Return(b.DerefOf(b.Index(b.NameRef("PKG"), I(2))))),
        method("UNI", 0, b.Return(b.DerefOf(b.Index(b.NameRef("PKG"), I(1))))),
    )
    with pytest.raises(AmlError, match="Index 2 out of range"):
        it.evaluate("\\OOR")
    with pytest.raises(AmlError, match="uninitialized"):
        it.evaluate("\\UNI")


def test_string_compare_and_concatenate() -> None:
    it = interp(
        method(
            "CMP",
            2,
            b.Return(
                b.Package(
                    (
                        b.LEqual(A0, A1),
                        b.LLess(A0, A1),
                        b.Concatenate(A0, A1),
                        b.Concatenate(I(1), I(2)),
                    )
                )
            ),
        )
    )
    ones = 0xFFFF_FFFF_FFFF_FFFF
    assert it.evaluate("\\CMP", "abc", "abd") == [
        0,
        ones,
        "abcabd",
        (1).to_bytes(8, "little") + (2).to_bytes(8, "little"),
    ]
    assert it.evaluate("\\CMP", "abc", "abc")[0] == ones


def test_store_to_named_objects_converts_to_their_type() -> None:
    it = interp(
        b.Name("INT", I(0)),
        b.Name("STR", b.String("")),
        b.Name("BUF", b.Buffer(b"\x00\x00\x00\x00")),
        method(
            "SET",
            0,
            b.Store(b.String("1F"), b.NameRef("INT")),
            b.Store(I(0xAB), b.NameRef("STR")),
            b.Store(b.Buffer(b"\x11\x22"), b.NameRef("BUF")),
        ),
    )
    it.evaluate("\\SET")
    assert it.evaluate("\\INT") == 0x1F
    assert it.evaluate("\\STR") == "00000000000000AB"
    assert it.evaluate("\\BUF") == b"\x11\x22\x00\x00"  # keeps its size, zero-filled


def test_create_dword_field_writes_into_the_callers_buffer() -> None:
    # The _OSC pattern: fields over Arg3 modify the buffer the method returns.
    it = interp(
        method(
            "_OSC",
            4,
            b.CreateDWordField(A2, I(0), "CDW1"),
            b.CreateDWordField(A2, I(4), "CDW2"),
            b.Or(b.NameRef("CDW1"), I(0x10), b.NameRef("CDW1")),
            b.Store(b.Add(b.NameRef("CDW2"), A1), b.NameRef("CDW2")),
            b.Return(A2),
        )
    )
    out = it.evaluate("\\_OSC", "uuid", 5, bytes(8), 0)
    assert out == (0x10).to_bytes(4, "little") + (5).to_bytes(4, "little")


def test_method_local_named_objects_are_per_invocation() -> None:
    it = interp(
        method(
            "CNT",
            0,
            b.Name("CNEW", b.Package((), count=3)),
            b.Name("HITS", I(0)),
            b.Increment(b.NameRef("HITS")),
            b.Store(b.NameRef("HITS"), b.Index(b.NameRef("CNEW"), I(0))),
            b.Return(b.NameRef("CNEW")),
        )
    )
    assert it.evaluate("\\CNT") == [1, None, None]
    assert it.evaluate("\\CNT") == [1, None, None]  # fresh objects each time
    assert not it.exists("\\CNT.CNEW") and not it.exists("\\CNT.HITS")
    assert it.children("\\CNT") == []


def test_recursive_invocations_have_their_own_local_names() -> None:
    it = interp(
        method(
            "DEEP",
            1,
            b.Name("MINE", I(0)),
            b.Store(A0, b.NameRef("MINE")),
            b.If(b.LGreater(A0, I(0)), (b.MethodCall("DEEP", (b.Subtract(A0, I(1)),)),)),
            b.Return(b.NameRef("MINE")),
        )
    )
    assert it.evaluate("\\DEEP", 5) == 5


def test_debug_stores_are_collected() -> None:
    it = interp(method("DBG", 0, b.Store(I(42), b.Debug()), b.Store(b.String("hi"), b.Debug())))
    it.evaluate("\\DBG")
    assert it.debug_log[-2:] == [42, "hi"]


def test_evaluate_names_devices_and_bad_calls() -> None:
    it = interp(
        b.Name("VAL", I(0x1234)),
        b.Name("TXT", b.String("hello")),
        b.Device("\\_SB.DEV0", (b.Name("_HID", b.EisaId("PNP0A06")),)),
        method("ONE", 1, b.Return(A0)),
    )
    assert it.evaluate("\\VAL") == 0x1234
    assert it.evaluate("\\TXT") == "hello"
    assert it.evaluate("\\_SB.DEV0._HID") == 0x060AD041
    assert it.object_type("\\_SB.DEV0") == "Device"
    with pytest.raises(AmlError, match="Device; it has no value"):
        it.evaluate("\\_SB.DEV0")
    with pytest.raises(AmlError, match="undefined name"):
        it.evaluate("\\_SB.NOPE")
    with pytest.raises(AmlError, match="takes 1 arguments, got 0"):
        it.evaluate("\\ONE")
    with pytest.raises(AmlError, match="takes 1 arguments, got 2"):
        it.evaluate("\\ONE", 1, 2)
    with pytest.raises(AmlError, match="not a method"):
        it.evaluate("\\VAL", 1)
    with pytest.raises(AmlError):
        it.evaluate("\\ONE", object())
    with pytest.raises(AmlError):
        it.evaluate("\\ONE", -1)


def test_evaluation_errors_are_aml_errors() -> None:
    it = interp(
        method("DIV0", 1, b.Return(b.Divide(I(1), A0))),
        method("UNDF", 0, b.Return(b.NameRef("\\NOPE"))),
        method("UNSE", 0, b.Return(L0)),
        method("BADT", 0, b.Return(b.Add(b.Package((I(1),)), I(1)))),
        method("NTFY", 0, b.Notify(b.NameRef("\\UNSE"), I(1))),
    )
    for path, args, text in (
        ("\\DIV0", (0,), "divide by zero"),
        ("\\UNDF", (), "undefined name"),
        ("\\UNSE", (), "Local0 is used before"),
        ("\\BADT", (), "Package cannot be used as an Integer"),
        ("\\NTFY", (), "Notify on Method"),
    ):
        with pytest.raises(AmlError, match=text):
            it.evaluate(path, *args)
    assert it.evaluate("\\DIV0", 1) == 1


# ------------------------------------------------------------------ limits


def test_infinite_loop_hits_the_iteration_limit() -> None:
    it = interp(method("HANG", 0, b.While(b.One, ())), max_loop_iterations=1000)
    with pytest.raises(AmlLimitError, match="exceeded 1000 iterations"):
        it.evaluate("\\HANG")


def test_infinite_recursion_hits_the_call_depth_limit() -> None:
    it = interp(method("RECU", 0, b.Return(b.MethodCall("RECU"))), max_call_depth=40)
    with pytest.raises(AmlLimitError, match="call depth 41 exceeds 40"):
        it.evaluate("\\RECU")
    # The interpreter is still usable afterwards (depth unwound, no mutex left behind).
    with pytest.raises(AmlLimitError):
        it.evaluate("\\RECU")


def test_nested_loops_hit_the_time_budget() -> None:
    inner = b.While(b.LLess(L1, I(60000)), (b.Increment(L1),))
    it = interp(
        method("SLOW", 0, b.Store(I(0), L0), b.While(b.One, (b.Store(I(0), L1), inner))),
        max_eval_seconds=0.2,
    )
    with pytest.raises(AmlLimitError, match="budget"):
        it.evaluate("\\SLOW")


def test_huge_buffer_is_refused() -> None:
    it = interp(method("BIG", 0, b.Return(b.Buffer(b"", size=I(0xFFFF_FFFF)))))
    with pytest.raises(AmlLimitError, match="exceeds the limit"):
        it.evaluate("\\BIG")


# ------------------------------------------------------------------ loading


def test_load_rejects_bad_tables_with_acpi_errors() -> None:
    good = table(b.Name("VAL", I(1)))
    bad_sum = bytearray(good)
    bad_sum[9] ^= 0xFF
    with pytest.raises(TableError):
        Interpreter().load(bytes(bad_sum))
    with pytest.raises(TableError):
        Interpreter().load(good[:20])
    facp = b.DefinitionBlock("FACP", (b.Name("VAL", I(1)),)).encode()
    with pytest.raises(TableError, match="not a definition block"):
        Interpreter().load(facp)
    with pytest.raises(UsageError):
        Interpreter().load("DSDT")  # type: ignore[arg-type]


def test_unknown_opcode_names_opcode_and_offset() -> None:
    raw = table(method("M000", 0, b.Return(I(1))))
    # Replace the ReturnOp (0xA4) with an unassigned opcode 0x02.
    pos = raw.index(b"\xa4", 36)
    broken = Sdt("DSDT", raw[36:pos] + b"\x02" + raw[pos + 1 :]).build()
    with pytest.raises(AmlError) as info:
        Interpreter().load(broken)
    assert info.value.opcode == 0x02 and info.value.offset == pos


def test_failed_load_leaves_the_namespace_unchanged() -> None:
    it = interp(b.Name("\\_SB.AAAA", I(1)))
    with pytest.raises(AmlError, match="already exists"):
        it.load(table(b.Name("\\_SB.BBBB", I(2)), b.Name("\\_SB.AAAA", I(3)), signature="SSDT"))
    assert not it.exists("\\_SB.BBBB")
    assert it.evaluate("\\_SB.AAAA") == 1
    it.load(table(b.Name("\\_SB.BBBB", I(2)), signature="SSDT"))
    assert it.evaluate("\\_SB.BBBB") == 2


def test_ssdt_calls_methods_of_the_dsdt() -> None:
    it = interp(b.Scope("\\_SB", (method("DBL", 1, b.Return(b.Multiply(A0, I(2)))),)))
    it.load(
        table(
            b.Scope(
                "\\_SB",
                (method("QUAD", 1, b.Return(b.MethodCall("DBL", (b.MethodCall("DBL", (A0,)),)))),),
            ),
            signature="SSDT",
        )
    )
    assert it.evaluate("\\_SB.QUAD", 3) == 12
    assert it.tables == [("DSDT", 2), ("SSDT", 2)]


def test_ssdt_uses_the_dsdt_integer_width() -> None:
    it = interp(revision=1)
    it.load(table(method("OVFL", 0, b.Return(b.Add(I(0xFFFF_FFFF), I(1)))), signature="SSDT"))
    assert it.evaluate("\\OVFL") == 0


def test_map_region_rejects_unknown_spaces_and_handlers() -> None:
    it = Interpreter()
    with pytest.raises(UsageError):
        it.map_region("SystemRAM", Recorder())
    with pytest.raises(UsageError):
        it.map_region("SystemIO", object())  # type: ignore[arg-type]


# ------------------------------------------------------------------ regions and fields


def prst(space: str = "SystemIO", base: int = BASE) -> tuple[b.Node, ...]:
    """QEMU's CPU hotplug resource fields, as build_cpus_aml writes them."""
    return (
        b.OperationRegion("PRST", REGION_SPACES[space], I(base), I(12)),
        b.Field(
            "PRST",
            b.field_layout(
                [
                    b.Offset(4),
                    ("CPEN", 1),
                    ("CINS", 1),
                    ("CRMV", 1),
                    ("CEJ0", 1),
                    ("CEJF", 1),
                    b.Offset(5),
                    ("CCMD", 8),
                ]
            ),
            access_type=1,
            update_rule=2,
        ),
        b.Field("PRST", b.field_layout([("CSEL", 32), b.Offset(8), ("CDAT", 32)]), access_type=3),
    )


def test_aml_field_writes_produce_exact_accesses() -> None:
    rec = Recorder(fill=0)
    rec.mem[4] = 0x25
    it = interp(
        *prst(),
        method("WINS", 0, b.Store(b.One, b.NameRef("CINS"))),
        method("WSEL", 1, b.Store(A0, b.NameRef("CSEL"))),
        method("WCMD", 1, b.Store(A0, b.NameRef("CCMD"))),
        method("RDEN", 0, b.Return(b.NameRef("CPEN"))),
        method("RDAT", 0, b.Return(b.NameRef("CDAT"))),
    )
    it.map_region("SystemIO", rec)
    it.evaluate("\\WINS")
    assert rec.log == [("w", BASE + 4, 8, 0x02)]
    rec.log.clear()
    it.evaluate("\\WSEL", 0x1_0000_0003)  # truncated to the 32-bit field
    it.evaluate("\\WCMD", 3)
    assert rec.log == [("w", BASE, 32, 3), ("w", BASE + 5, 8, 3)]
    rec.log.clear()
    rec.mem[4] = 0x25
    rec.mem[8:12] = (0xDEADBEEF).to_bytes(4, "little")
    assert it.evaluate("\\RDEN") == 1
    assert it.evaluate("\\RDAT") == 0xDEADBEEF
    assert rec.log == [("r", BASE + 4, 8, 0x25), ("r", BASE + 8, 32, 0xDEADBEEF)]


def test_region_without_handler_is_an_aml_error() -> None:
    it = interp(*prst("SystemMemory"), method("RDEN", 0, b.Return(b.NameRef("CPEN"))))
    with pytest.raises(AmlError, match="no handler for address space SystemMemory"):
        it.evaluate("\\RDEN")
    it.map_region("SystemIO", Recorder())  # the wrong space does not help
    with pytest.raises(AmlError, match="no handler"):
        it.evaluate("\\RDEN")
    rec = Recorder()
    it.map_region("SystemMemory", rec)
    assert it.evaluate("\\RDEN") == 0


# ------------------------------------------------------------------ threads, mutexes, Notify


class Gate:
    """A SystemMemory handler whose write of 1 blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []
        self.entered = threading.Event()
        self.opened = threading.Event()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def read(self, addr: int, width_bits: int) -> int:
        return 0

    def write(self, addr: int, width_bits: int, value: int) -> None:
        with self._lock:
            self.log.append((threading.current_thread().name, value))
            self._changed.notify_all()
        if value == 1:
            self.entered.set()
            assert self.opened.wait(10), "gate never opened"

    def wait_entries(self, count: int, timeout: float) -> bool:
        with self._lock:
            return self._changed.wait_for(lambda: len(self.log) >= count, timeout)


GATE_REGION = (
    b.OperationRegion("GREG", 0, I(0x5000), I(4)),
    b.Field("GREG", (b.NamedField("GATE", 32),), access_type=3),
    b.Mutex("MTX", 0),
)


def run_threads(
    *targets: tuple[str, Callable[[], object]],
) -> tuple[list[threading.Thread], dict[str, object]]:
    results: dict[str, object] = {}

    def wrap(name: str, fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                results[name] = fn()
            except BaseException as exc:  # surfaced by the test through results
                results[name] = exc

        return run

    threads = [
        threading.Thread(target=wrap(name, fn), name=name, daemon=True) for name, fn in targets
    ]
    for t in threads:
        t.start()
    return threads, results


def join_all(threads: Sequence[threading.Thread]) -> None:
    for t in threads:
        t.join(10)
        assert not t.is_alive(), f"{t.name} did not finish"


@pytest.mark.parametrize("serialized", [True, False])
def test_serialized_methods_exclude_other_threads(serialized: bool) -> None:
    gate = Gate()
    it = interp(
        *GATE_REGION,
        method(
            "WORK",
            0,
            b.Store(I(1), b.NameRef("GATE")),
            b.Store(I(2), b.NameRef("GATE")),
            serialized=serialized,
        ),
    )
    it.map_region("SystemMemory", gate)
    first, r1 = run_threads(("T1", lambda: it.evaluate("\\WORK")))
    assert gate.entered.wait(5)
    second, r2 = run_threads(("T2", lambda: it.evaluate("\\WORK")))
    if serialized:
        # T2 must not get in while T1 is inside: nothing more arrives in this window.
        assert not gate.wait_entries(2, 0.3)
    else:
        assert gate.wait_entries(2, 5)
    gate.opened.set()
    join_all(first + second)
    assert r1 == {"T1": None} and r2 == {"T2": None}
    if serialized:
        assert gate.log == [("T1", 1), ("T1", 2), ("T2", 1), ("T2", 2)]
    else:
        assert gate.log[:2] == [("T1", 1), ("T2", 1)]


def test_serialized_method_is_reentrant_on_the_same_thread() -> None:
    it = interp(
        method(
            "RENT",
            1,
            b.If(b.LEqual(A0, I(0)), (b.Return(I(0)),)),
            b.Return(b.Add(A0, b.MethodCall("RENT", (b.Subtract(A0, I(1)),)))),
            serialized=True,
        ),
        b.Mutex("MTX", 0),
        method(
            "TWCE",
            0,
            b.Acquire(b.NameRef("MTX"), 0xFFFF),
            b.Store(b.Acquire(b.NameRef("MTX"), 0xFFFF), L0),
            b.Release(b.NameRef("MTX")),
            b.Release(b.NameRef("MTX")),
            b.Return(L0),
        ),
    )
    assert it.evaluate("\\RENT", 10) == 55
    assert it.evaluate("\\TWCE") == 0


def try_acquire(timeout: int) -> b.Method:
    return method(
        "TRY",
        0,
        b.Store(b.Acquire(b.NameRef("MTX"), timeout), L0),
        b.If(b.LNot(L0), (b.Release(b.NameRef("MTX")),)),
        b.Return(L0),
    )


def test_acquire_timeout_returns_true_and_forever_is_capped() -> None:
    gate = Gate()
    it = interp(
        *GATE_REGION,
        method(
            "HOLD",
            0,
            b.Acquire(b.NameRef("MTX"), 0xFFFF),
            b.Store(I(1), b.NameRef("GATE")),
            b.Release(b.NameRef("MTX")),
        ),
        try_acquire(50),
        method("TRYF", 0, b.Return(b.Acquire(b.NameRef("MTX"), 0xFFFF))),
        mutex_forever_seconds=0.2,
    )
    it.map_region("SystemMemory", gate)
    holder, results = run_threads(("HOLDER", lambda: it.evaluate("\\HOLD")))
    assert gate.entered.wait(5)
    assert it.evaluate("\\TRY") == 0xFFFF_FFFF_FFFF_FFFF  # True: timed out
    with pytest.raises(AmlLimitError, match="still waiting"):
        it.evaluate("\\TRYF")
    gate.opened.set()
    join_all(holder)
    assert results == {"HOLDER": None}
    assert it.evaluate("\\TRY") == 0  # False: acquired


def test_mutex_left_acquired_is_released_at_the_end_of_the_evaluation() -> None:
    it = interp(
        b.Mutex("MTX", 0),
        method("LEAK", 0, b.Acquire(b.NameRef("MTX"), 0xFFFF)),
        try_acquire(50),
    )
    threads, results = run_threads(("LEAKER", lambda: it.evaluate("\\LEAK")))
    join_all(threads)
    assert results == {"LEAKER": None}
    assert it.evaluate("\\TRY") == 0


def test_release_by_non_owner_and_sync_level_order_are_errors() -> None:
    it = interp(
        b.Mutex("MTX", 0),
        b.Mutex("HIGH", 5),
        b.Mutex("LOW", 2),
        method("REL", 0, b.Release(b.NameRef("MTX"))),
        method("ORD", 0, b.Acquire(b.NameRef("HIGH"), 0xFFFF), b.Acquire(b.NameRef("LOW"), 0xFFFF)),
        method(
            "ORDK", 0, b.Acquire(b.NameRef("LOW"), 0xFFFF), b.Acquire(b.NameRef("HIGH"), 0xFFFF)
        ),
    )
    with pytest.raises(AmlError, match="does not own"):
        it.evaluate("\\REL")
    with pytest.raises(AmlError, match="SyncLevel"):
        it.evaluate("\\ORD")
    assert it.evaluate("\\ORDK") is None  # ascending order is fine; both freed at the end


def notify_table() -> tuple[b.Node, ...]:
    return (
        b.Mutex("MTX", 0),
        b.Scope(
            "\\_SB",
            (
                b.Device("PCI0", (b.Device("S08_", ()),)),
                b.Device("CPUS", (b.Device("C00A", ()),)),
            ),
        ),
        method(
            "NTFY",
            0,
            b.Acquire(b.NameRef("MTX"), 0xFFFF),
            b.Notify(b.NameRef("\\_SB.CPUS.C00A"), I(1)),
            b.Notify(b.NameRef("\\_SB.PCI0.S08_"), I(3)),
            b.Release(b.NameRef("MTX")),
        ),
        try_acquire(50),
    )


def test_notify_reaches_the_callback_with_absolute_paths_in_order() -> None:
    it = interp(*notify_table())
    seen: list[tuple[str, int]] = []
    it.on_notify(lambda path, value: seen.append((path, value)))
    it.evaluate("\\NTFY")
    assert seen == [("\\_SB.CPUS.C00A", 1), ("\\_SB.PCI0.S08", 3)]


def test_notify_is_delivered_after_the_method_released_its_mutexes() -> None:
    # A handler that evaluates AML on another thread (as Linux's hotplug worker does)
    # must not find the notifying method's mutex still held.
    it = interp(*notify_table())
    results: list[object] = []

    def handler(path: str, value: int) -> None:
        threads, out = run_threads(("WORKER", lambda: it.evaluate("\\TRY")))
        join_all(threads)
        results.append(out["WORKER"])

    it.on_notify(handler)
    it.evaluate("\\NTFY")
    assert results == [0, 0]


def test_failing_notify_callback_does_not_lose_later_notifies() -> None:
    it = interp(*notify_table())
    seen: list[str] = []

    def flaky(path: str, value: int) -> None:
        seen.append(path)
        if value == 1:
            raise RuntimeError("guest bug")

    it.on_notify(flaky)
    with pytest.raises(AmlError, match="guest bug"):
        it.evaluate("\\NTFY")
    assert seen == ["\\_SB.CPUS.C00A", "\\_SB.PCI0.S08"]
    assert it.evaluate("\\TRY") == 0  # nothing left locked


def test_random_bytes_never_raise_anything_but_acpi_errors() -> None:
    import random

    rng = random.Random(1234)
    for _ in range(300):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        with contextlib.suppress(AcpiError):
            Interpreter().load(Sdt("DSDT", body).build())


# ------------------------------------------------------------------ property tests


class Model:
    """A direct Python reading of the AML subset the program strategy generates."""

    def __init__(self, bits: int, args: Sequence[int]) -> None:
        self.mask = (1 << bits) - 1
        self.bits = bits
        self.args = [a & self.mask for a in args]
        self.locals = [0] * 8

    def expr(self, e: b.Node) -> int:
        m = self.mask
        if isinstance(e, b.Integer):
            return e.value & m
        if isinstance(e, b.Local):
            return self.locals[e.index]
        if isinstance(e, b.Arg):
            return self.args[e.index]
        name = type(e).__name__
        if name == "LNot":
            return 0 if self.expr(e.operand) else m  # type: ignore[attr-defined]
        if name == "Not":
            return ~self.expr(e.operand) & m  # type: ignore[attr-defined]
        x, y = self.expr(e.left), self.expr(e.right)  # type: ignore[attr-defined]
        ops: dict[str, Callable[[], int]] = {
            "Add": lambda: (x + y) & m,
            "Subtract": lambda: (x - y) & m,
            "Multiply": lambda: (x * y) & m,
            "And": lambda: x & y,
            "Or": lambda: x | y,
            "Xor": lambda: x ^ y,
            "Nand": lambda: ~(x & y) & m,
            "Nor": lambda: ~(x | y) & m,
            "ShiftLeft": lambda: (x << y) & m if y < self.bits else 0,
            "ShiftRight": lambda: x >> y if y < self.bits else 0,
            "Mod": lambda: x % y,
            "LEqual": lambda: m if x == y else 0,
            "LLess": lambda: m if x < y else 0,
            "LGreater": lambda: m if x > y else 0,
            "LAnd": lambda: m if x and y else 0,
            "LOr": lambda: m if x or y else 0,
        }
        return ops[name]()

    def run(self, body: Sequence[b.Node]) -> int | None:
        for s in body:
            if isinstance(s, b.Return):
                return self.expr(s.value)
            if isinstance(s, b.If):
                taken = s.body if self.expr(s.predicate) else (s.else_body or ())
                r = self.run(taken)
                if r is not None:
                    return r
            elif isinstance(s, b.While):
                while self.expr(s.predicate):
                    r = self.run(s.body)
                    if r is not None:
                        return r
            elif type(s).__name__ == "Store":
                self.locals[s.target.index] = self.expr(s.source)  # type: ignore[attr-defined]
            elif type(s).__name__ in ("Increment", "Decrement"):
                k = s.target.index  # type: ignore[attr-defined]
                step = 1 if type(s).__name__ == "Increment" else -1
                self.locals[k] = (self.locals[k] + step) & self.mask
        return None


_BINARY = [b.Add, b.Subtract, b.Multiply, b.And, b.Or, b.Xor, b.Nand, b.Nor]
_LOGIC = [b.LEqual, b.LLess, b.LGreater, b.LAnd, b.LOr]


def _exprs() -> st.SearchStrategy[b.Node]:
    leaves = st.one_of(
        st.integers(0, 2**64 - 1).map(b.Integer),
        st.integers(0, 300).map(b.Integer),
        st.integers(0, 3).map(b.Local),
        st.integers(0, 2).map(b.Arg),
    )

    def extend(inner: st.SearchStrategy[b.Node]) -> st.SearchStrategy[b.Node]:
        return st.one_of(
            st.builds(lambda op, x, y: op(x, y), st.sampled_from(_BINARY + _LOGIC), inner, inner),
            st.builds(lambda x, k: b.ShiftLeft(x, b.Integer(k)), inner, st.integers(0, 70)),
            st.builds(lambda x, k: b.ShiftRight(x, b.Integer(k)), inner, st.integers(0, 70)),
            st.builds(lambda x, y: b.Mod(x, b.Or(y, b.One)), inner, inner),
            st.builds(b.Not, inner),
            st.builds(b.LNot, inner),
        )

    return st.recursive(leaves, extend, max_leaves=10)


EXPRS = _exprs()


@st.composite
def _statements(draw: st.DrawFn, depth: int) -> list[b.Node]:
    out: list[b.Node] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(
            st.sampled_from(
                ["store", "store", "step", "if", "while"] if depth < 2 else ["store", "step"]
            )
        )
        target = b.Local(draw(st.integers(0, 3)))
        if kind == "store":
            out.append(b.Store(draw(EXPRS), target))
        elif kind == "step":
            out.append(draw(st.sampled_from([b.Increment, b.Decrement]))(target))
        elif kind == "if":
            else_body = draw(st.none() | _statements(depth + 1).map(tuple))
            out.append(b.If(draw(EXPRS), tuple(draw(_statements(depth + 1))), else_body))
        else:
            counter = b.Local(6 + depth)  # the generated bodies never write Local6/7
            out.append(b.Store(b.Zero, counter))
            body = (b.Increment(counter), *draw(_statements(depth + 1)))
            out.append(b.While(b.LLess(counter, b.Integer(draw(st.integers(0, 5)))), body))
    return out


@st.composite
def programs(draw: st.DrawFn) -> tuple[b.DefinitionBlock, list[int]]:
    inits = [b.Store(b.Arg(i % 3), b.Local(i)) for i in range(4)]
    body = (*inits, *draw(_statements(0)), b.Return(draw(EXPRS)))
    revision = draw(st.sampled_from([1, 2]))
    block = b.DefinitionBlock("DSDT", (b.Method("PROG", 3, False, 0, body),), revision=revision)
    args = draw(st.lists(st.integers(0, 2**64 - 1), min_size=3, max_size=3))
    return block, args


@settings(max_examples=150, deadline=None)
@given(programs())
def test_random_programs_agree_with_the_model_before_and_after_a_round_trip(
    prog: tuple[b.DefinitionBlock, list[int]],
) -> None:
    block, args = prog
    built, decoded = Interpreter(), Interpreter()
    built.load_block(block)
    decoded.load(block.encode())
    method_node = block.body[0]
    assert isinstance(method_node, b.Method)
    expected = Model(32 if block.revision < 2 else 64, args).run(method_node.body)
    assert built.evaluate("\\PROG", *args) == expected
    assert decoded.evaluate("\\PROG", *args) == expected


@settings(max_examples=300, deadline=2000)
@given(st.binary(max_size=200))
def test_random_aml_bytes_only_raise_acpi_errors(body: bytes) -> None:
    with contextlib.suppress(AcpiError):
        Interpreter().load(Sdt("DSDT", body).build())


_SMALL = b.DefinitionBlock(
    "DSDT",
    (
        *prst("SystemMemory"),
        b.Name("PKG", b.Package((b.Integer(1), b.String("x")), count=3)),
        b.Mutex("MTX", 0),
        method(
            "WORK",
            1,
            b.Acquire(b.NameRef("MTX"), 0xFFFF),
            b.Store(A0, b.NameRef("CSEL")),
            b.Store(b.NameRef("CDAT"), L0),
            b.While(
                b.LLess(L1, I(4)), (b.Increment(L1), b.Store(L1, b.Index(b.NameRef("PKG"), I(2))))
            ),
            b.Release(b.NameRef("MTX")),
            b.Return(b.Add(L0, b.DerefOf(b.Index(b.NameRef("PKG"), I(0))))),
            serialized=True,
        ),
    ),
).encode()


@settings(max_examples=300, deadline=5000)
@given(
    st.lists(
        st.tuples(st.integers(36, len(_SMALL) - 1), st.integers(0, 255)), min_size=1, max_size=4
    )
)
def test_corrupted_tables_load_and_run_with_acpi_errors_only(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_SMALL)
    for pos, value in flips:
        data[pos] = value
    it = Interpreter(max_eval_seconds=2.0, mutex_forever_seconds=0.5)
    it.map_region("SystemMemory", Recorder(size=1 << 16))
    with contextlib.suppress(AcpiError):
        it.load(Sdt("DSDT", bytes(data[36:])).build())
        for path, kind in list(it.walk()):
            if kind == "Method":
                for args in ((), (1,)):
                    with contextlib.suppress(AcpiError):
                        it.evaluate(path, *args)


def test_objects_a_method_creates_outside_its_scope_are_removed_when_it_returns() -> None:
    it = interp(
        method(
            "MKNM",
            0,
            b.Name("\\_SB.TEMP", I(5)),
            b.Device("\\_SB.TDEV", (b.Name("_UID", I(1)),)),
            b.Return(b.Add(b.NameRef("\\_SB.TEMP"), b.NameRef("\\_SB.TDEV._UID"))),
        )
    )
    assert it.evaluate("\\MKNM") == 6
    assert not it.exists("\\_SB.TEMP") and not it.exists("\\_SB.TDEV")
    assert it.evaluate("\\MKNM") == 6  # and can be created again next time


def test_events_signal_wait_reset() -> None:
    it = interp(
        b.Event("EVT"),
        method(
            "SW",
            0,
            b.Signal(b.NameRef("EVT")),
            b.Signal(b.NameRef("EVT")),
            b.Store(b.Wait(b.NameRef("EVT"), I(0)), L0),  # consumes one: False (got it)
            b.Reset(b.NameRef("EVT")),
            b.Store(b.Wait(b.NameRef("EVT"), I(10)), L1),  # none left: True (timeout)
            b.Return(b.Package((L0, L1))),
        ),
        method("WF", 0, b.Return(b.Wait(b.NameRef("EVT"), I(0xFFFF)))),
        mutex_forever_seconds=0.1,
    )
    assert it.evaluate("\\SW") == [0, 0xFFFF_FFFF_FFFF_FFFF]
    with pytest.raises(AmlLimitError, match="still waiting"):
        it.evaluate("\\WF")


def test_a_stopped_thread_frees_its_mutexes_and_runs_no_callbacks() -> None:
    # The VMM stops a vCPU by raising a BaseException (hw.VcpuStop) out of an MMIO
    # access; the AML's mutexes must not stay owned by the dead evaluation.
    from cpuplug.hw import VcpuStop

    class Stopper:
        def read(self, addr: int, width_bits: int) -> int:
            raise VcpuStop()

        def write(self, addr: int, width_bits: int, value: int) -> None:
            raise VcpuStop()

    it = interp(*notify_table(), *prst("SystemMemory"))
    it.load(
        table(
            method(
                "STOP",
                0,
                b.Acquire(b.NameRef("MTX"), 0xFFFF),
                b.Notify(b.NameRef("\\_SB.CPUS.C00A"), I(1)),
                b.Return(b.NameRef("CPEN")),
            ),
            signature="SSDT",
        )
    )
    it.map_region("SystemMemory", Stopper())
    seen: list[str] = []
    it.on_notify(lambda path, value: seen.append(path))
    with pytest.raises(VcpuStop):
        it.evaluate("\\STOP")
    assert seen == []
    threads, results = run_threads(("OTHER", lambda: it.evaluate("\\TRY")))
    join_all(threads)
    assert results == {"OTHER": 0}


def test_if_chains_on_an_argument_keep_sequential_semantics() -> None:
    # Long runs of ``If (Arg0 == k)`` (QEMU's CTFY) are dispatched by table; these
    # cases pin that the result is exactly what running them in order gives.
    def chain(*, touch_arg: bool = False) -> tuple[b.Node, ...]:
        out: list[b.Node] = []
        for k in [*range(10), 3]:  # 3 twice: both bodies run, in order
            body: list[b.Node] = [b.Store(b.Add(b.Multiply(L0, I(16)), I(k & 0xF)), L0)]
            if touch_arg:
                body.append(b.Store(b.Add(A0, I(1)), A0))  # each If then sees a new Arg0
            if k == 7:
                body.append(b.Return(I(0x77)))
            out.append(b.If(b.LEqual(A0, I(k)), tuple(body)))
        return tuple(out)

    it = interp(
        method("CHN", 1, b.Store(I(0), L0), *chain(), b.Return(L0)),
        method("CHT", 1, b.Store(I(0), L0), *chain(touch_arg=True), b.Return(L0)),
    )
    assert it.evaluate("\\CHN", 3) == 0x33
    assert it.evaluate("\\CHN", 5) == 0x5
    assert it.evaluate("\\CHN", 7) == 0x77
    assert it.evaluate("\\CHN", 42) == 0
    # A String Arg0 is compared as a string (the left operand's type): "4" is not
    # "0000000000000004", so no If matches - on the sequential fallback path too.
    assert it.evaluate("\\CHN", "4") == 0
    # With the body changing Arg0, If k+1 matches next: 2 -> 2,3,4,5,6,7 (Return).
    assert it.evaluate("\\CHT", 2) == 0x77
    assert it.evaluate("\\CHT", 8) == 0x89


def test_lock_rule_field_takes_the_global_lock_even_under_a_high_sync_level() -> None:
    rec = Recorder()
    it = interp(
        b.OperationRegion("LREG", 0, I(BASE), I(4)),
        b.Field("LREG", (b.NamedField("LFLD", 32),), access_type=3, lock=True),
        b.Mutex("HIGH", 9),
        method(
            "LCK",
            0,
            b.Acquire(b.NameRef("HIGH"), 0xFFFF),
            b.Store(I(0x1234), b.NameRef("LFLD")),
            b.Release(b.NameRef("HIGH")),
            b.Return(b.NameRef("LFLD")),
        ),
        method("GL", 0, b.Return(b.Acquire(b.NameRef("\\_GL"), 0))),
    )
    it.map_region("SystemMemory", rec)
    assert it.evaluate("\\LCK") == 0x1234
    assert rec.log == [("w", BASE, 32, 0x1234), ("r", BASE, 32, 0x1234)]
    assert it.evaluate("\\GL") == 0  # the Global Lock was released after each access


@settings(max_examples=60, deadline=None)
@given(
    bound=st.integers(0, 2**64 - 1),
    step=st.booleans(),
    limit=st.integers(1, 3000),
)
def test_loops_end_with_a_result_or_the_limit(bound: int, step: bool, limit: int) -> None:
    body: tuple[b.Node, ...] = (b.Increment(L0),) if step else ()
    it = interp(
        method("LOOP", 0, b.Store(I(0), L0), b.While(b.LLess(L0, I(bound)), body), b.Return(L0)),
        max_loop_iterations=limit,
    )
    if bound == 0 or (step and bound <= limit):
        assert it.evaluate("\\LOOP") == bound
    else:
        with pytest.raises(AmlLimitError):
            it.evaluate("\\LOOP")


@settings(max_examples=40, deadline=None)
@given(depth=st.integers(0, 80), limit=st.integers(1, 60))
def test_recursion_ends_with_a_result_or_the_limit(depth: int, limit: int) -> None:
    it = interp(
        method(
            "RECU",
            1,
            b.If(b.LEqual(A0, I(0)), (b.Return(I(0)),)),
            b.Return(b.Add(I(1), b.MethodCall("RECU", (b.Subtract(A0, I(1)),)))),
        ),
        max_call_depth=limit,
    )
    if depth + 1 <= limit:
        assert it.evaluate("\\RECU", depth) == depth
    else:
        with pytest.raises(AmlLimitError, match="call depth"):
            it.evaluate("\\RECU", depth)

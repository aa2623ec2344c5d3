"""Region field access at the object level: exact (addr, width, value) sequences.

These pin ACPI 6.5 §19.6.48's rules on :class:`FieldUnit` directly; the same rules
are exercised end to end through AML in ``test_interp.py``.
"""

from __future__ import annotations

import pytest

from cpuplug.acpi.aml.objects import (
    UPDATE_ONES,
    UPDATE_PRESERVE,
    UPDATE_ZEROS,
    BufferField,
    FieldUnit,
    OperationRegion,
    RegionHandler,
)
from cpuplug.acpi.errors import AmlError

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

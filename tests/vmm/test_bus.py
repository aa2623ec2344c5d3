"""Guest RAM, the MMIO bus, the address space that joins them, and the console UART."""

from __future__ import annotations

import logging
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpuplug.acpi.virt import CPUHP_BASE, RAM_BASE, UART_BASE
from cpuplug.errors import CpuplugError
from cpuplug.hw import PhysicalAddressSpace, VcpuStop
from cpuplug.vmm.bus import AddressSpace, BusError, GuestRam, MmioBus, Pl011Uart
from cpuplug.vmm.cpuhp import CpuHotplugBlock


class Recording:
    """A device that remembers its accesses and answers reads with the offset."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return 0x1122_3344_5566_7788 + offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


class Broken:
    def read(self, offset: int, size: int) -> int:
        raise RuntimeError("device bug")

    def write(self, offset: int, size: int, value: int) -> None:
        raise ZeroDivisionError


class Stopping:
    def read(self, offset: int, size: int) -> int:
        raise VcpuStop

    def write(self, offset: int, size: int, value: int) -> None:
        raise VcpuStop


def test_ram_little_endian_and_truncation() -> None:
    ram = GuestRam(RAM_BASE, 0x1000)
    ram.store(RAM_BASE + 8, 4, 0x1_AABB_CCDD)
    assert ram.read_bytes(RAM_BASE + 8, 4) == bytes([0xDD, 0xCC, 0xBB, 0xAA])
    assert ram.load(RAM_BASE + 8, 2) == 0xCCDD
    ram.store(RAM_BASE, 8, -1)
    assert ram.load(RAM_BASE, 8) == 0xFFFF_FFFF_FFFF_FFFF
    ram.write_bytes(RAM_BASE + 0xFFE, b"\x01\x02")
    assert ram.load(RAM_BASE + 0xFFE, 2) == 0x0201
    assert ram.contains(RAM_BASE, 0x1000) and not ram.contains(RAM_BASE + 1, 0x1000)


def test_ram_bounds_and_sizes_are_errors() -> None:
    ram = GuestRam(RAM_BASE, 0x1000)
    assert issubclass(BusError, CpuplugError)
    for call in (
        lambda: ram.load(RAM_BASE + 0xFFF, 2),
        lambda: ram.load(RAM_BASE - 1, 1),
        lambda: ram.store(RAM_BASE, 9, 0),
        lambda: ram.load(RAM_BASE, 0),
        lambda: ram.read_bytes(RAM_BASE + 0x800, 0x801),
        lambda: ram.write_bytes(RAM_BASE + 0x1000, b"x"),
        lambda: GuestRam(0, 0),
    ):
        with pytest.raises(BusError):
            call()


def test_bus_dispatches_by_address_with_offsets() -> None:
    bus = MmioBus()
    a, b = Recording(), Recording()
    bus.register(0x1000, 0x100, a, "a")
    bus.register(0x2000, 12, b)
    assert bus.read(0x1010, 4) == 0x5566_7798
    assert bus.read(0x2000, 8) == 0x1122_3344_5566_7788
    bus.write(0x200B, 1, 0x1FF)
    assert b.writes == [(11, 1, 0xFF)]  # value truncated to the access width
    assert bus.find(0x200C) is None and bus.find(0x0FFF) is None
    assert [r.name for r in bus.regions()] == ["a", "Recording"]
    assert bus.unmapped_reads == 0 and bus.unmapped_writes == 0


def test_overlapping_windows_are_refused() -> None:
    bus = MmioBus()
    bus.register(0x1000, 0x100, Recording(), "a")
    with pytest.raises(BusError, match="overlaps"):
        bus.register(0x10FF, 0x10, Recording(), "b")
    with pytest.raises(BusError, match="overlaps"):
        bus.register(0x0F00, 0x101, Recording(), "c")
    bus.register(0x1100, 0x10, Recording(), "adjacent")
    with pytest.raises(BusError):
        bus.register(0x3000, 0, Recording())


def test_unmapped_accesses_read_zero_and_are_counted() -> None:
    bus = MmioBus()
    bus.register(0x1000, 0x100, Recording())
    assert bus.read(0x5000, 4) == 0
    assert bus.read(-8, 4) == 0
    bus.write(0x5000, 4, 1)
    assert (bus.unmapped_reads, bus.unmapped_writes) == (2, 1)
    with pytest.raises(BusError):
        bus.read(0x1000, 16)


def test_device_exceptions_are_contained_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = MmioBus()
    bus.register(0x1000, 0x10, Broken(), "broken")
    with caplog.at_level(logging.ERROR, logger="cpuplug.vmm.bus"):
        assert bus.read(0x1004, 4) == 0
        bus.write(0x1004, 4, 7)
    assert bus.device_errors == 2
    assert "broken" in caplog.text
    bus.register(0x2000, 0x10, Stopping(), "stopping")
    with pytest.raises(VcpuStop):  # control flow, not a device error
        bus.read(0x2000, 4)
    assert bus.device_errors == 2


def test_address_space_routes_ram_then_mmio() -> None:
    ram = GuestRam(RAM_BASE, 0x1000)
    bus = MmioBus()
    uart = Pl011Uart()
    bus.register(UART_BASE, Pl011Uart.SIZE, uart, "uart")
    block = CpuHotplugBlock([0, 1])
    bus.register(CPUHP_BASE, CpuHotplugBlock.SIZE, block, "cpuhp")
    space: PhysicalAddressSpace = AddressSpace(ram, bus)
    space.store(RAM_BASE + 4, 4, 0xCAFE)
    assert space.load(RAM_BASE + 4, 4) == 0xCAFE
    space.store(CPUHP_BASE, 4, 1)  # the selector, through the bus
    assert block.selector == 1
    assert space.load(CPUHP_BASE + 4, 1) == 0x20  # present, not enabled
    for ch in b"hi\n":
        space.store(UART_BASE, 1, ch)
    assert uart.output() == b"hi\n"
    rec = Recording()
    bus.register(0x1000, 0x10, rec)
    space.write_bytes(0x1000, b"\x05\x06")  # byte ranges off RAM go byte by byte
    assert rec.writes == [(0, 1, 5), (1, 1, 6)]
    assert space.read_bytes(0x1000, 2) == bytes([0x88, 0x89])
    assert bus.unmapped_writes == 0


def test_address_space_byte_ranges_straddling_ram_end() -> None:
    ram = GuestRam(RAM_BASE, 0x10)
    bus = MmioBus()
    space = AddressSpace(ram, bus)
    ram.write_bytes(RAM_BASE + 0xE, b"\xaa\xbb")
    assert space.read_bytes(RAM_BASE + 0xE, 4) == b"\xaa\xbb\x00\x00"
    assert bus.unmapped_reads == 2
    space.write_bytes(RAM_BASE + 0xF, b"\x01\x02")
    assert ram.load(RAM_BASE + 0xF, 1) == 1
    assert bus.unmapped_writes == 1
    assert space.load(RAM_BASE + 0xF, 2) == 0  # a load crossing the end: not RAM
    with pytest.raises(BusError):
        space.read_bytes(RAM_BASE, -1)


def test_uart_console_registers() -> None:
    got: list[bytes] = []
    uart = Pl011Uart(got.append, keep=8)
    fr = uart.read(0x18, 4)
    assert fr & 0x20 == 0  # TXFF clear: never blocks the writer
    assert fr & 0x80  # TXFE
    assert [uart.read(off, 4) for off in range(0xFE0, 0x1000, 4)] == [
        0x11,
        0x10,
        0x14,
        0x00,
        0x0D,
        0xF0,
        0x05,
        0xB1,
    ]
    uart.write(0x30, 4, 0x301)  # CR reads back
    assert uart.read(0x30, 4) == 0x301
    assert uart.read(0x0, 4) == 0  # no input
    for ch in b"0123456789":
        uart.write(0x0, 4, 0x100 | ch)
    assert b"".join(got) == b"0123456789"
    assert uart.output() == b"23456789"  # bounded transcript
    uart.write(0, 1, 0xFF)
    assert uart.text() == "3456789\ufffd"


def test_uart_sink_failure_is_contained() -> None:
    def sink(data: bytes) -> None:
        raise OSError("console closed")

    uart = Pl011Uart(sink)
    uart.write(0, 1, ord("x"))
    assert uart.output() == b"x"


def test_concurrent_writers_keep_exact_counts() -> None:
    bus = MmioBus()
    uart = Pl011Uart(keep=1 << 20)
    bus.register(UART_BASE, Pl011Uart.SIZE, uart)
    per, threads_n = 2000, 4

    def worker(ch: int) -> None:
        for _ in range(per):
            bus.write(UART_BASE, 1, ch)
            bus.read(0x10, 4)

    threads = [threading.Thread(target=worker, args=(ord("a") + k,)) for k in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    out = uart.output()
    assert len(out) == per * threads_n
    assert all(out.count(ord("a") + k) == per for k in range(threads_n))
    assert bus.unmapped_reads == per * threads_n


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.integers(RAM_BASE - 16, RAM_BASE + 0x110),
                st.integers(CPUHP_BASE - 4, CPUHP_BASE + 16),
                st.integers(-(2**64), 2**64),
            ),
            st.integers(0, 9),
            st.integers(-(2**70), 2**70),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_random_accesses_only_fail_on_bad_sizes(ops: list[tuple[int, int, int, bool]]) -> None:
    ram = GuestRam(RAM_BASE, 0x100)
    bus = MmioBus()
    bus.register(CPUHP_BASE, CpuHotplugBlock.SIZE, CpuHotplugBlock([0, 1, 2]))
    space = AddressSpace(ram, bus)
    for addr, size, value, is_write in ops:
        try:
            if is_write:
                space.store(addr, size, value)
            else:
                assert 0 <= space.load(addr, size) < 1 << (8 * size)
        except BusError:
            assert not 1 <= size <= 8
    space.store(RAM_BASE, 8, 0x0102_0304_0506_0708)
    assert space.read_bytes(RAM_BASE, 2) == b"\x08\x07"
    assert bus.device_errors == 0


def test_qa_failing_uart_sink_is_logged_once_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """QA: a sink that fails for every byte logged a traceback per console byte."""
    calls: list[bytes] = []

    def sink(data: bytes) -> None:
        calls.append(data)
        raise ValueError("sink is broken")

    uart = Pl011Uart(sink)
    caplog.set_level(logging.DEBUG, logger="cpuplug.vmm.bus")
    for byte in b"hello":
        uart.write(0, 1, byte)
    assert uart.output() == b"hello"  # the in-memory console goes on
    assert calls == [b"h"]  # the sink is dropped after its first failure
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 1 and records[0].exc_info is None
    assert "sink is broken" in records[0].getMessage()

"""Guest-physical memory: RAM, the MMIO bus, and the console UART (docs/contract.md §1).

:class:`AddressSpace` is the VMM's implementation of
:class:`cpuplug.hw.PhysicalAddressSpace`: a load or store goes to
:class:`GuestRam` when it falls inside RAM and to :class:`MmioBus` otherwise.

The bus follows the machine's robustness rule: an address no device claims
reads as 0 and ignores writes, and is *counted* (``unmapped_reads`` /
``unmapped_writes``) so tests and operators can see a guest poking at nothing.
A device that raises is a VMM bug, but it must not take down the vCPU that
happened to touch it: the exception is logged, counted in ``device_errors``,
and the access completes as an unmapped one would. (``BaseException``s such
as :class:`cpuplug.hw.VcpuStop` pass through untouched: they are control flow.)

Locking
-------
* RAM has no lock, like real memory: each load/store is one slice operation on
  a ``bytearray``, atomic under the GIL, and guest code orders its own accesses.
* The bus's device map is copy-on-write: ``register`` swaps in a new tuple under
  a lock; dispatch reads the current tuple without locking. Devices do their own
  locking. The counters are updated under a small lock.
* The UART serialises its transcript with a lock and calls the sink outside it.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cpuplug.acpi.virt import UART_SIZE
from cpuplug.errors import CpuplugError

__all__ = [
    "AddressSpace",
    "BusError",
    "GuestRam",
    "MmioBus",
    "MmioDevice",
    "MmioRegion",
    "Pl011Uart",
]

_log = logging.getLogger(__name__)

_MAX_LOGGED_DEVICE_ERRORS = 20


class BusError(CpuplugError):
    """A malformed access (bad size, RAM out of bounds) or a bad device registration."""


class MmioDevice(Protocol):
    """An MMIO device: offsets are relative to its base; values are little-endian ints."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 8:
        raise BusError(f"access size must be 1..8 bytes, got {size!r}")


class GuestRam:
    """Guest RAM: ``size`` bytes at guest-physical ``base``, bounds-checked."""

    def __init__(self, base: int, size: int) -> None:
        if base < 0 or size <= 0:
            raise BusError(f"bad RAM range base={base:#x} size={size:#x}")
        self.base = base
        self.size = size
        # Anonymous mmap, not bytearray: the kernel hands out zero pages lazily,
        # so a VMM's RSS follows the guest memory actually touched (as QEMU's
        # does) and per-sandbox RSS can be compared between hotplug modes.
        self._mem = mmap.mmap(-1, size)

    @property
    def end(self) -> int:
        """One past the last RAM address."""
        return self.base + self.size

    def contains(self, addr: int, length: int = 1) -> bool:
        """Whether ``[addr, addr + length)`` lies wholly inside RAM."""
        return self.base <= addr and addr + length <= self.end and length >= 0

    def _offset(self, addr: int, length: int) -> int:
        if not self.contains(addr, length):
            raise BusError(
                f"RAM access {addr:#x}+{length:#x} outside {self.base:#x}..{self.end:#x}"
            )
        return addr - self.base

    def load(self, addr: int, size: int) -> int:
        _check_size(size)
        off = self._offset(addr, size)
        return int.from_bytes(self._mem[off : off + size], "little")

    def store(self, addr: int, size: int, value: int) -> None:
        _check_size(size)
        off = self._offset(addr, size)
        self._mem[off : off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def read_bytes(self, addr: int, length: int) -> bytes:
        off = self._offset(addr, length)
        return bytes(self._mem[off : off + length])

    def write_bytes(self, addr: int, data: bytes) -> None:
        off = self._offset(addr, len(data))
        self._mem[off : off + len(data)] = data


@dataclass(frozen=True)
class MmioRegion:
    """One registered device window."""

    base: int
    size: int
    device: MmioDevice
    name: str

    @property
    def end(self) -> int:
        return self.base + self.size


class MmioBus:
    """Dispatches loads/stores by address to registered devices.

    An access is routed to the device whose window contains its first byte; the
    device decides what a wide access at its last bytes means.
    """

    def __init__(self) -> None:
        self._regions: tuple[MmioRegion, ...] = ()
        self._bases: tuple[int, ...] = ()
        self._map_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._unmapped_reads = 0
        self._unmapped_writes = 0
        self._device_errors = 0

    def register(self, base: int, size: int, device: MmioDevice, name: str = "") -> None:
        """Map ``device`` at ``[base, base + size)``; overlapping another window is an error."""
        if base < 0 or size <= 0:
            raise BusError(f"bad MMIO window base={base:#x} size={size:#x}")
        region = MmioRegion(base, size, device, name or type(device).__name__)
        with self._map_lock:
            for other in self._regions:
                if base < other.end and other.base < region.end:
                    raise BusError(
                        f"MMIO window {region.name} {base:#x}..{region.end:#x} overlaps"
                        f" {other.name} {other.base:#x}..{other.end:#x}"
                    )
            regions = tuple(sorted((*self._regions, region), key=lambda r: r.base))
            self._regions = regions
            self._bases = tuple(r.base for r in regions)

    def regions(self) -> tuple[MmioRegion, ...]:
        """The registered windows, by base address."""
        return self._regions

    def find(self, addr: int) -> MmioRegion | None:
        """The window containing ``addr``, or ``None``."""
        regions, bases = self._regions, self._bases
        i = bisect.bisect_right(bases, addr) - 1
        if i >= 0 and addr < regions[i].end:
            return regions[i]
        return None

    def read(self, addr: int, size: int) -> int:
        _check_size(size)
        region = self.find(addr)
        if region is None:
            with self._count_lock:
                self._unmapped_reads += 1
            return 0
        try:
            value = region.device.read(addr - region.base, size)
        except Exception:
            self._device_failed(region, "read", addr, size)
            return 0
        return int(value) & ((1 << (8 * size)) - 1)

    def write(self, addr: int, size: int, value: int) -> None:
        _check_size(size)
        region = self.find(addr)
        if region is None:
            with self._count_lock:
                self._unmapped_writes += 1
            return
        try:
            region.device.write(addr - region.base, size, value & ((1 << (8 * size)) - 1))
        except Exception:
            self._device_failed(region, "write", addr, size)

    def _device_failed(self, region: MmioRegion, kind: str, addr: int, size: int) -> None:
        with self._count_lock:
            self._device_errors += 1
            count = self._device_errors
        if count <= _MAX_LOGGED_DEVICE_ERRORS:
            _log.exception(
                "MMIO %s of %d bytes at %#x: device %s failed", kind, size, addr, region.name
            )

    @property
    def unmapped_reads(self) -> int:
        with self._count_lock:
            return self._unmapped_reads

    @property
    def unmapped_writes(self) -> int:
        with self._count_lock:
            return self._unmapped_writes

    @property
    def device_errors(self) -> int:
        with self._count_lock:
            return self._device_errors


class AddressSpace:
    """The guest-physical address space: RAM first, then the MMIO bus.

    Implements :class:`cpuplug.hw.PhysicalAddressSpace`. A byte range that is not
    wholly in RAM is carried out one byte at a time, so each byte goes where its
    address says (RAM, a device, or nowhere).
    """

    def __init__(self, ram: GuestRam, bus: MmioBus) -> None:
        self.ram = ram
        self.bus = bus

    def load(self, addr: int, size: int) -> int:
        if self.ram.contains(addr, size):
            return self.ram.load(addr, size)
        return self.bus.read(addr, size)

    def store(self, addr: int, size: int, value: int) -> None:
        if self.ram.contains(addr, size):
            self.ram.store(addr, size, value)
        else:
            self.bus.write(addr, size, value)

    def read_bytes(self, addr: int, length: int) -> bytes:
        if length < 0:
            raise BusError(f"negative length {length}")
        if self.ram.contains(addr, length):
            return self.ram.read_bytes(addr, length)
        return bytes(self.load(addr + i, 1) for i in range(length))

    def write_bytes(self, addr: int, data: bytes) -> None:
        if self.ram.contains(addr, len(data)):
            self.ram.write_bytes(addr, data)
            return
        for i, byte in enumerate(data):
            self.store(addr + i, 1, byte)


# PL011 registers.
UART_DR = 0x000
UART_FR = 0x018
UART_IBRD = 0x024
UART_FBRD = 0x028
UART_LCR_H = 0x02C
UART_CR = 0x030
UART_IFLS = 0x034
UART_IMSC = 0x038
UART_FR_RXFE = 1 << 4
UART_FR_TXFE = 1 << 7
UART_FR_TXFF = 1 << 5
_UART_ID = {  # PeriphID0..3, CellID0..3: what an AMBA probe checks
    0xFE0: 0x11,
    0xFE4: 0x10,
    0xFE8: 0x14,
    0xFEC: 0x00,
    0xFF0: 0x0D,
    0xFF4: 0xF0,
    0xFF8: 0x05,
    0xFFC: 0xB1,
}
_UART_STORED = (UART_IBRD, UART_FBRD, UART_LCR_H, UART_CR, UART_IFLS, UART_IMSC)


class Pl011Uart:
    """A transmit-only PL011: the guest kernel's console, readable from the host.

    Bytes written to the data register go to ``sink`` (one call per byte, in
    order) and into a bounded transcript (:meth:`output`, the last ``keep``
    bytes). The flag register always reads "transmit FIFO empty, receive FIFO
    empty", so a driver polling TXFF never waits. Control registers read back
    what was written; everything else reads 0.
    """

    SIZE = UART_SIZE

    def __init__(self, sink: Callable[[bytes], None] | None = None, keep: int = 64 * 1024) -> None:
        self._sink = sink
        self._keep = keep
        self._lock = threading.Lock()
        self._transcript = bytearray()
        self._regs: dict[int, int] = {}

    def read(self, offset: int, size: int) -> int:
        if offset == UART_FR:
            return UART_FR_TXFE | UART_FR_RXFE
        if offset in _UART_ID:
            return _UART_ID[offset]
        with self._lock:
            return self._regs.get(offset, 0)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == UART_DR:
            byte = bytes([value & 0xFF])
            with self._lock:
                self._transcript += byte
                if len(self._transcript) > self._keep:
                    del self._transcript[: len(self._transcript) - self._keep]
            sink = self._sink
            if sink is not None:
                try:
                    sink(byte)
                except Exception as exc:
                    # Once, in one line: a sink that fails tends to fail for every
                    # byte, and a traceback per console byte drowns the log.
                    with self._lock:
                        first, self._sink = self._sink is sink, None
                    if first:
                        _log.warning(
                            "UART sink failed (%s: %s); console output continues in memory only",
                            type(exc).__name__,
                            exc,
                        )
        elif offset in _UART_STORED:
            with self._lock:
                self._regs[offset] = value & 0xFFFF

    def output(self) -> bytes:
        """The console transcript so far (its last ``keep`` bytes)."""
        with self._lock:
            return bytes(self._transcript)

    def text(self) -> str:
        """:meth:`output` decoded as UTF-8 (undecodable bytes replaced), for logs and tests."""
        return self.output().decode("utf-8", errors="replace")

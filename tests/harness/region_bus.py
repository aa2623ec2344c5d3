"""A bus for the AML interpreter's operation regions: devices at address windows.

Routes each access of an ``OperationRegion`` (SystemMemory on arm64, SystemIO on x86) in
``[base, base + size)`` to a device's ``read``/``write(offset, size)`` -- the VMM's CPU
hotplug block and GED models -- so a real QEMU's AML runs against cpuplug's devices.
Accesses outside every window read 0 and are dropped, as on an empty bus; every access
is logged as ``(op, addr, bits, value)``.
"""

from __future__ import annotations

from typing import Protocol


class Device(Protocol):
    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class RegionBus:
    """Devices at address windows, for ``Interpreter.map_region``; every access logged."""

    def __init__(self) -> None:
        self.windows: list[tuple[int, int, Device]] = []
        self.log: list[tuple[str, int, int, int]] = []

    def add(self, base: int, size: int, device: Device) -> None:
        self.windows.append((base, size, device))

    def _find(self, addr: int) -> tuple[int, Device] | None:
        for base, size, device in self.windows:
            if base <= addr < base + size:
                return addr - base, device
        return None

    def read(self, addr: int, width_bits: int) -> int:
        hit = self._find(addr)
        value = hit[1].read(hit[0], width_bits // 8) if hit else 0
        self.log.append(("r", addr, width_bits, value))
        return value

    def write(self, addr: int, width_bits: int, value: int) -> None:
        self.log.append(("w", addr, width_bits, value))
        hit = self._find(addr)
        if hit:
            hit[1].write(hit[0], width_bits // 8, value)

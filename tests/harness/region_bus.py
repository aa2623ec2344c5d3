"""A DSDT run in cpuplug's interpreter against the VMM's CPU hotplug block and GED.

:class:`RegionBus` is a bus for the interpreter's operation regions: devices at address windows.

Routes each access of an ``OperationRegion`` (SystemMemory on arm64, SystemIO on x86) in
``[base, base + size)`` to a device's ``read``/``write(offset, size)`` -- the VMM's CPU
hotplug block and GED models -- so a real QEMU's AML runs against cpuplug's devices.
Accesses outside every window read 0 and are dropped, as on an empty bus; every access
is logged as ``(op, addr, bits, value)``.
"""

from __future__ import annotations

from typing import Protocol

from cpuplug.acpi import virt
from cpuplug.acpi.interp import Interpreter
from cpuplug.vmm.cpuhp import CpuHotplugBlock, OstInfo
from cpuplug.vmm.ged import GenericEventDevice


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


class WiredDsdt:
    """An interpreter holding one DSDT, its ``space`` regions routed to the VMM's CPU
    hotplug block at ``cpuhp_base`` and GED at ``ged_base``: a real QEMU's AML (x86's
    SystemIO block, the arm64 RFC's) or cpuplug's own, run as a guest runs it.  CPU 0 is
    plugged at boot; ejects, ``_OST`` reports and ``Notify`` calls are recorded."""

    def __init__(
        self, dsdt: bytes, space: str, cpuhp_base: int, ged_base: int, maxcpus: int
    ) -> None:
        self.ejected: list[int] = []
        self.ost: list[OstInfo] = []
        self.block = CpuHotplugBlock(
            [virt.mpidr(i) for i in range(maxcpus)],
            on_eject=self.ejected.append,
            on_ost=self.ost.append,
        )
        self.block.plug(0, None, hotplugged=False)
        self.ged = GenericEventDevice(irq_pulse=lambda: None)
        self.bus = RegionBus()
        self.bus.add(cpuhp_base, CpuHotplugBlock.SIZE, self.block)
        self.bus.add(ged_base, GenericEventDevice.SIZE, self.ged)
        self.it = Interpreter()
        self.it.load(dsdt)
        self.it.map_region(space, self.bus)
        self.notes: list[tuple[str, int]] = []
        self.it.on_notify(lambda path, value: self.notes.append((path, value)))

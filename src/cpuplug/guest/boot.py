"""Early boot: find the ACPI tables in guest memory and enumerate the CPUs from the MADT.

Everything here reads guest-physical memory through the machine's address
space, exactly as firmware handed it over: the RSDP at the address the VMM
passed (x0 / the EFI config table), then XSDT → FADT (→ DSDT), MADT and, when
present, SPCR for the console. Nothing about the machine is assumed that the
tables do not say.

CPU enumeration follows arm64 Linux's ``acpi_map_gic_cpu_interface()``
(arch/arm64/kernel/smp.c; docs/contract.md §6): a GICC with neither Enabled nor Online Capable is
skipped, so are invalid and duplicate MPIDRs; the boot CPU is logical 0, the
others get logical ids in MADT order. On arm64 *present* = *possible*.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cpuplug.acpi.errors import TableError
from cpuplug.acpi.tables import (
    ARM_PSCI_COMPLIANT,
    ARM_PSCI_USE_HVC,
    SPACE_SYSTEM_MEMORY,
    Fadt,
    Gicc,
    Madt,
    Rsdp,
    Sdt,
    Spcr,
    Xsdt,
)
from cpuplug.acpi.tables import read_tables as walk_tables
from cpuplug.errors import CpuplugError
from cpuplug.hw import PhysicalAddressSpace

MPIDR_HWID_BITMASK = 0xFF_00FF_FFFF
"""Affinity bits of MPIDR_EL1 (Aff3..Aff0) as Linux's ``MPIDR_HWID_BITMASK``."""

NR_CPUS = 512
"""This kernel's configured ``NR_CPUS`` (arm64 defconfig uses 512 too)."""


class BootError(CpuplugError):
    """The firmware tables cannot be used; the kernel cannot boot (Linux would panic)."""


@dataclass(frozen=True)
class FirmwareTables:
    """The ACPI tables this kernel uses, parsed."""

    rsdp: Rsdp
    xsdt: Xsdt
    fadt: Fadt
    madt: Madt
    dsdt: Sdt
    ssdts: tuple[Sdt, ...] = ()
    spcr: Spcr | None = None


@dataclass(frozen=True)
class CpuSlot:
    """One possible CPU: its logical id, and what the MADT said about it."""

    logical: int
    mpidr: int
    uid: int
    flags: int

    @property
    def madt_enabled(self) -> bool:
        return bool(self.flags & 0x1)


@dataclass
class CpuEnumeration:
    """Result of the MADT walk: the possible CPUs and the messages Linux would print."""

    slots: list[CpuSlot] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def by_mpidr(self, mpidr: int) -> CpuSlot | None:
        for slot in self.slots:
            if slot.mpidr == mpidr:
                return slot
        return None


def read_tables(memory: PhysicalAddressSpace, rsdp_address: int) -> FirmwareTables:
    """RSDP → XSDT → FADT/MADT/DSDT/SSDT/SPCR, every checksum verified.

    The walk is :func:`cpuplug.acpi.tables.read_tables` (the one table reader);
    this picks what the kernel uses from it -- the first FADT, MADT and SPCR,
    every SSDT, the DSDT the FADT names -- and refuses a set it cannot boot from.
    """
    try:
        found = walk_tables(memory.read_bytes, rsdp_address)
    except TableError as exc:
        raise BootError(f"ACPI: {exc}") from exc
    rsdp, xsdt = found[0][1], found[1][1]
    assert isinstance(rsdp, Rsdp) and isinstance(xsdt, Xsdt)
    fadt: Fadt | None = None
    madt: Madt | None = None
    spcr: Spcr | None = None
    ssdts: list[Sdt] = []
    for _, table in found[2 : 2 + len(xsdt.entries)]:
        if isinstance(table, Fadt) and fadt is None:
            fadt = table
        elif isinstance(table, Madt) and madt is None:
            madt = table
        elif isinstance(table, Spcr) and spcr is None:
            spcr = table
        elif isinstance(table, Sdt) and table.signature == "SSDT":
            ssdts.append(table)
    if fadt is None:
        raise BootError("no FADT in the XSDT")
    if madt is None:
        raise BootError("no MADT in the XSDT")
    if fadt.dsdt_address == 0:
        raise BootError("DSDT: table address is 0")
    dsdt = found[-1][1]
    if not isinstance(dsdt, Sdt) or dsdt.signature != "DSDT":
        raise BootError(f"FADT's DSDT pointer leads to a {dsdt.signature}")
    return FirmwareTables(rsdp, xsdt, fadt, madt, dsdt, tuple(ssdts), spcr)


def check_psci_conduit(fadt: Fadt) -> None:
    """This kernel speaks PSCI over HVC only; refuse firmware that says otherwise."""
    flags = fadt.arm_boot_arch
    if not flags & ARM_PSCI_COMPLIANT:
        raise BootError("FADT: not PSCI compliant (parking protocol is not supported)")
    if not flags & ARM_PSCI_USE_HVC:
        raise BootError("FADT: PSCI conduit is SMC; this kernel only issues HVC")


def uart_base(spcr: Spcr | None) -> int | None:
    """MMIO base of the console UART named by SPCR, or None (no console then)."""
    if spcr is None:
        return None
    gas = spcr.base_address
    if gas.space_id != SPACE_SYSTEM_MEMORY or gas.address == 0:
        return None
    return gas.address


def enumerate_cpus(madt: Madt, boot_mpidr: int, nr_cpus: int = NR_CPUS) -> CpuEnumeration:
    """The possible CPUs, as arm64 ``acpi_parse_and_init_cpus()`` finds them.

    Logical id 0 is the GICC whose MPIDR is the boot CPU's, wherever it sits in
    the table; the other accepted entries follow in MADT order.
    """
    out = CpuEnumeration()
    boot_mpidr &= MPIDR_HWID_BITMASK
    others: list[Gicc] = []
    boot: Gicc | None = None
    seen: set[int] = set()
    for gicc in madt.gicc:
        hwid = gicc.mpidr
        if not (gicc.enabled or gicc.online_capable):
            out.messages.append(f"skipping disabled CPU entry with 0x{hwid:x} MPIDR")
            continue
        if hwid & ~MPIDR_HWID_BITMASK or hwid == MPIDR_HWID_BITMASK:
            out.messages.append(f"skipping CPU entry with invalid MPIDR 0x{hwid:x}")
            continue
        if hwid in seen:
            out.messages.append(f"duplicate CPU MPIDR 0x{hwid:x} in MADT")
            continue
        seen.add(hwid)
        if hwid == boot_mpidr:
            boot = gicc
            continue
        if len(others) + 1 >= nr_cpus:
            continue
        others.append(gicc)
    if boot is None:
        out.messages.append("missing boot CPU MPIDR, not enabling secondaries")
        out.slots.append(CpuSlot(0, boot_mpidr, 0, 0x1))
        return out
    out.slots.append(CpuSlot(0, boot.mpidr, boot.uid, boot.flags))
    for i, gicc in enumerate(others, start=1):
        out.slots.append(CpuSlot(i, gicc.mpidr, gicc.uid, gicc.flags))
    return out


def gicd_base(madt: Madt) -> int | None:
    """The GIC distributor's MMIO base, for routing SPIs (GICD_IROUTER)."""
    gicd = madt.gicd
    return gicd.base_address if gicd is not None else None

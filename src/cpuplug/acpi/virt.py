"""This machine: the arm64 ``virt``-like memory map, its topology, and its ACPI table set.

Everything here is the shared description of the machine that both sides rely on
(docs/contract.md §1, §2): the VMM maps its devices at these addresses and writes
:func:`build_machine_tables` into guest RAM; the guest finds the same addresses by
reading those tables. Keeping the numbers in one module is what stops the two
sides from drifting apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cpuplug import cpuhp_abi
from cpuplug.acpi import limits, tables
from cpuplug.cpuhp_abi import HotplugMode
from cpuplug.errors import UsageError

# --------------------------------------------------------------------------
# Memory map (docs/contract.md §1)

GICD_BASE = 0x0800_0000
"""GICv3 distributor."""
GICD_SIZE = 0x1_0000

GICR_FRAME_SIZE = 0x2_0000
"""One redistributor = RD_base + SGI_base frames, 64 KiB each."""
GICR_REGION1_BASE = 0x080A_0000
GICR_REGION1_SIZE = 0xF6_0000
GICR_REGION1_FRAMES = GICR_REGION1_SIZE // GICR_FRAME_SIZE  # 123
GICR_REGION2_BASE = 0x40_0000_0000
GICR_REGION2_SIZE = 0x400_0000  # 64 MiB = 512 frames
GICR_REGION2_FRAMES = GICR_REGION2_SIZE // GICR_FRAME_SIZE

UART_BASE = 0x0900_0000
"""PL011 console."""
UART_SIZE = 0x1000
UART_SPI = 1
UART_GSI = 32 + UART_SPI
"""The UART interrupt as virt wires it (SPI 1 = INTID 33); named by SPCR."""

GED_BASE = 0x0908_0000
"""Generic Event Device event selector (docs/contract.md §4)."""
GED_SIZE = 4
GED_SPI = 9
GED_GSI = 32 + GED_SPI  # 41, edge-triggered

CPUHP_BASE = 0x090C_0000
"""CPU hotplug register block (docs/contract.md §3)."""
CPUHP_SIZE = cpuhp_abi.BLOCK_SIZE

AGENT_CHANNEL_BASE = 0x0A00_0000
"""The agent channel device (virtio-vsock's role); described in the DSDT."""
AGENT_CHANNEL_SIZE = 0x1000

RAM_BASE = 0x4000_0000
DEFAULT_RAM_SIZE = 256 * 1024 * 1024

ACPI_REGION_SIZE = 2 * 1024 * 1024
"""The slice at the top of RAM where the VMM places the ACPI tables by default."""

# Generic timer PPIs as virt wires them (PPI n = INTID 16 + n).
TIMER_SECURE_EL1_GSI = 29
TIMER_NONSECURE_EL1_GSI = 30
TIMER_VIRTUAL_GSI = 27
TIMER_NONSECURE_EL2_GSI = 26

MAX_CPUS = limits.MAX_CPUS
"""The architectural ceiling this machine supports; declared in :mod:`cpuplug.acpi.limits`
so the runtime can read it without importing the table code."""

MODES: tuple[str, ...] = tuple(m.value for m in HotplugMode)


class MachineConfigError(UsageError):
    """A topology or machine option that this machine cannot have."""


def mpidr(index: int) -> int:
    """The MPIDR affinity of vCPU ``index``: Aff1 = index // 16, Aff0 = index % 16.

    GICv3 on virt groups 16 CPUs per Aff1 cluster because a GICv3 target list
    addresses at most 16 CPUs per cluster in an SGI.
    """
    if not 0 <= index < MAX_CPUS:
        raise MachineConfigError(f"vCPU index {index} out of range 0..{MAX_CPUS - 1}")
    return ((index // 16) << 8) | (index % 16)


def cpu_index_of_mpidr(value: int) -> int | None:
    """The vCPU index with this MPIDR, or ``None`` when no vCPU of this machine has it."""
    aff0 = value & 0xFF
    aff1 = (value >> 8) & 0xFF
    if value & ~0xFFFF or aff0 >= 16:
        return None
    index = aff1 * 16 + aff0
    return index if index < MAX_CPUS else None


def gicr_frame_address(index: int) -> int:
    """Guest-physical base of vCPU ``index``'s redistributor frame pair."""
    if not 0 <= index < MAX_CPUS:
        raise MachineConfigError(f"vCPU index {index} out of range 0..{MAX_CPUS - 1}")
    if index < GICR_REGION1_FRAMES:
        return GICR_REGION1_BASE + index * GICR_FRAME_SIZE
    return GICR_REGION2_BASE + (index - GICR_REGION1_FRAMES) * GICR_FRAME_SIZE


def gicr_regions(maxcpus: int) -> list[tuple[int, int]]:
    """``(base, length)`` of each redistributor region holding ``maxcpus`` frames.

    The lengths cover exactly the frames that exist (one per possible vCPU), so
    a guest scanning a region never walks past the last real frame.
    """
    if not 1 <= maxcpus <= MAX_CPUS:
        raise MachineConfigError(f"maxcpus must be in 1..{MAX_CPUS}, got {maxcpus}")
    first = min(maxcpus, GICR_REGION1_FRAMES)
    regions = [(GICR_REGION1_BASE, first * GICR_FRAME_SIZE)]
    if maxcpus > GICR_REGION1_FRAMES:
        regions.append((GICR_REGION2_BASE, (maxcpus - first) * GICR_FRAME_SIZE))
    return regions


@dataclass(frozen=True)
class MachineConfig:
    """The machine's shape: how many vCPUs are plugged at boot, how many may ever be.

    ``cpus`` vCPUs (indices 0..cpus-1) are plugged at boot; ``maxcpus`` is the
    number of *possible* vCPUs, fixed for the machine's life (docs/contract.md §1).
    """

    cpus: int = 1
    maxcpus: int = 1
    mode: HotplugMode = HotplugMode.ACPI
    ram_size: int = DEFAULT_RAM_SIZE

    def __post_init__(self) -> None:
        for name in ("cpus", "maxcpus", "ram_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise MachineConfigError(f"{name} must be an integer, got {value!r}")
        if not 1 <= self.maxcpus <= MAX_CPUS:
            raise MachineConfigError(f"maxcpus must be in 1..{MAX_CPUS}, got {self.maxcpus}")
        if not 1 <= self.cpus <= self.maxcpus:
            raise MachineConfigError(
                f"cpus must be in 1..maxcpus ({self.maxcpus}), got {self.cpus}"
            )
        if self.mode not in MODES:
            raise MachineConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.ram_size < ACPI_REGION_SIZE or self.ram_size % 0x1000:
            raise MachineConfigError(
                f"ram_size must be a multiple of 4 KiB and at least {ACPI_REGION_SIZE:#x},"
                f" got {self.ram_size:#x}"
            )

    @classmethod
    def from_smp(
        cls, smp: str, mode: str = "acpi", ram_size: int = DEFAULT_RAM_SIZE
    ) -> MachineConfig:
        """Parse a QEMU-style ``-smp`` value: ``"2"``, ``"cpus=2,maxcpus=8"``, ``"cores=8"``.

        As in QEMU: a bare leading number is ``cpus``; a missing ``maxcpus`` is
        sockets*clusters*cores*threads when any of those is given, else ``cpus``;
        a missing ``cpus`` is ``maxcpus``. This machine's vCPU index is its
        core-id, so only sockets = clusters = threads = 1 is accepted.
        """
        values = parse_smp(smp)
        if mode not in MODES:
            raise MachineConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        return cls(
            cpus=values.cpus, maxcpus=values.maxcpus, mode=HotplugMode(mode), ram_size=ram_size
        )

    @property
    def possible(self) -> range:
        """Indices of every possible vCPU."""
        return range(self.maxcpus)

    @property
    def boot_cpus(self) -> range:
        """Indices of the vCPUs plugged at boot."""
        return range(self.cpus)

    def default_tables_base(self) -> int:
        """Where the VMM puts the ACPI tables unless told otherwise: the top 2 MiB of RAM."""
        return RAM_BASE + self.ram_size - ACPI_REGION_SIZE


@dataclass(frozen=True)
class SmpValues:
    """The result of :func:`parse_smp`, before it becomes a :class:`MachineConfig`."""

    cpus: int
    maxcpus: int
    sockets: int = 1
    clusters: int = 1
    cores: int = 1
    threads: int = 1


_SMP_KEYS = ("cpus", "maxcpus", "sockets", "clusters", "cores", "threads")
_NUMBER = re.compile(r"[0-9]+")


def parse_smp(text: str) -> SmpValues:
    """Parse and check a QEMU-style ``-smp`` string; any fault is one clear message."""
    given: dict[str, int] = {}
    parts = text.strip().split(",")
    if not text.strip():
        raise MachineConfigError("--smp: empty value")
    for position, part in enumerate(parts):
        part = part.strip()
        if position == 0 and _NUMBER.fullmatch(part):
            key, raw = "cpus", part
        elif "=" in part:
            key, raw = (s.strip() for s in part.split("=", 1))
        else:
            raise MachineConfigError(f"--smp: cannot parse {part!r} (expected KEY=NUMBER)")
        if key not in _SMP_KEYS:
            raise MachineConfigError(f"--smp: unknown key {key!r} (known: {', '.join(_SMP_KEYS)})")
        if key in given:
            raise MachineConfigError(f"--smp: {key} given twice")
        if not _NUMBER.fullmatch(raw):
            raise MachineConfigError(f"--smp: {key}={raw!r} is not a non-negative integer")
        given[key] = int(raw)
    for key in ("sockets", "clusters", "threads"):
        if given.get(key, 1) != 1:
            raise MachineConfigError(
                f"--smp: {key}={given[key]} unsupported (vCPU index = core-id; use cores)"
            )
    topology_given = any(k in given for k in ("sockets", "clusters", "cores", "threads"))
    if "maxcpus" in given:
        maxcpus = given["maxcpus"]
    elif "cores" in given:
        maxcpus = given["cores"]
    elif "cpus" in given:
        maxcpus = given["cpus"]
    elif topology_given:
        maxcpus = 1
    else:  # pragma: no cover - parts always yields at least one key
        raise MachineConfigError("--smp: give cpus or maxcpus")
    cpus = given.get("cpus", maxcpus)
    if "cores" in given and given["cores"] != maxcpus:
        raise MachineConfigError(
            f"--smp: cores={given['cores']} must equal maxcpus={maxcpus} "
            "(sockets=clusters=threads=1)"
        )
    if cpus == 0 or maxcpus == 0:
        raise MachineConfigError("--smp: cpus and maxcpus must be at least 1")
    if maxcpus > MAX_CPUS:
        raise MachineConfigError(f"--smp: maxcpus={maxcpus} exceeds this machine's {MAX_CPUS}")
    if cpus > maxcpus:
        raise MachineConfigError(f"--smp: cpus={cpus} exceeds maxcpus={maxcpus}")
    return SmpValues(cpus=cpus, maxcpus=maxcpus, cores=maxcpus)


# --------------------------------------------------------------------------
# The table set (docs/contract.md §2)

TABLE_ALIGN = 16
"""Every table starts on a 16-byte boundary (the RSDP must; the rest follow suit)."""

TABLE_ORDER = ("RSDP", "XSDT", "FACP", "APIC", "GTDT", "SPCR", "DSDT")
"""Layout order in guest memory; also the file names ``cpuplug acpi tables`` writes."""


@dataclass(frozen=True)
class MachineTables:
    """This machine's ACPI tables, laid out for one guest-physical base address.

    ``image`` is what the VMM copies to ``base_address``; ``blobs`` holds each
    table's bytes by signature (``"RSDP"`` for the RSDP) and ``addresses`` where
    each one sits. The addresses inside RSDP/XSDT/FADT point into ``image``.
    """

    config: MachineConfig
    base_address: int
    blobs: dict[str, bytes]
    addresses: dict[str, int]
    image: bytes

    @property
    def rsdp_address(self) -> int:
        return self.addresses["RSDP"]

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(blob) for name, blob in self.blobs.items()}


def gicc_flags(config: MachineConfig, index: int) -> int:
    """MADT GICC flags of vCPU ``index`` (docs/contract.md §2).

    ACPI mode: only the boot vCPU is Enabled; every other possible vCPU is
    Online Capable with Enabled clear - cold-plugged ones too, since a vCPU
    marked Enabled in the MADT can never be removed. online/offline mode: all
    Enabled, none Online Capable (the two bits are exclusive in ACPI 6.5).
    """
    if config.mode == "online-offline" or index == 0:
        return tables.GICC_ENABLED
    return tables.GICC_ONLINE_CAPABLE


def build_madt(config: MachineConfig) -> tables.Madt:
    """GICD, one GICC per possible vCPU in index order, one GICR per redistributor region."""
    entries: list[tables.AnyMadtEntry] = [tables.Gicd(base_address=GICD_BASE, version=3)]
    for i in config.possible:
        entries.append(
            tables.Gicc(
                uid=i,
                mpidr=mpidr(i),
                flags=gicc_flags(config, i),
                cpu_interface_number=i,
            )
        )
    for base, length in gicr_regions(config.maxcpus):
        entries.append(tables.Gicr(base_address=base, region_length=length))
    return tables.Madt(entries=tuple(entries))


def build_gtdt() -> tables.Gtdt:
    """The architected timer's PPIs as virt wires them; level-triggered, active high."""
    return tables.Gtdt(
        secure_el1_gsiv=TIMER_SECURE_EL1_GSI,
        nonsecure_el1_gsiv=TIMER_NONSECURE_EL1_GSI,
        nonsecure_el1_flags=tables.GTDT_TIMER_ALWAYS_ON,
        virtual_timer_gsiv=TIMER_VIRTUAL_GSI,
        nonsecure_el2_gsiv=TIMER_NONSECURE_EL2_GSI,
    )


def build_spcr() -> tables.Spcr:
    """The PL011 console, so the guest finds it from tables instead of a command line."""
    return tables.Spcr(
        base_address=tables.GenericAddress(
            space_id=tables.SPACE_SYSTEM_MEMORY,
            bit_width=32,
            bit_offset=0,
            access_size=tables.ACCESS_DWORD,
            address=UART_BASE,
        ),
        interface_type=tables.SPCR_INTERFACE_PL011,
        interrupt_type=tables.SPCR_INTERRUPT_GIC,
        interrupt=UART_GSI,
    )


def _align(value: int) -> int:
    return (value + TABLE_ALIGN - 1) // TABLE_ALIGN * TABLE_ALIGN


def build_machine_tables(
    config: MachineConfig, base_address: int | None = None, *, dsdt: bytes | None = None
) -> MachineTables:
    """Build and lay out RSDP, XSDT, FADT, MADT, GTDT, SPCR and DSDT at ``base_address``.

    ``base_address`` defaults to :meth:`MachineConfig.default_tables_base`; it must
    be 16-byte aligned and the whole image must fit in RAM. ``dsdt`` replaces the
    machine's DSDT (a whole table), for tests that exercise layout alone.
    """
    base = config.default_tables_base() if base_address is None else base_address
    if base % TABLE_ALIGN:
        raise MachineConfigError(f"ACPI tables base {base:#x} is not {TABLE_ALIGN}-byte aligned")
    if dsdt is None:
        # Imported here, not at module top: the DSDT builder itself needs this
        # module's MachineConfig and addresses.
        from cpuplug.acpi.dsdt import build_dsdt

        dsdt = build_dsdt(config)
    tables.Sdt.parse(dsdt)  # a bad DSDT fails here, not in the guest
    fixed: dict[str, bytes] = {
        "APIC": build_madt(config).build(),
        "GTDT": build_gtdt().build(),
        "SPCR": build_spcr().build(),
        "DSDT": dsdt,
    }
    xsdt_entries = ("FACP", "APIC", "GTDT", "SPCR")
    sizes = {
        "RSDP": tables.Rsdp.LAYOUT.size,
        "XSDT": tables.HEADER_SIZE + 8 * len(xsdt_entries),
        "FACP": tables.Fadt.SIZE,
        **{name: len(blob) for name, blob in fixed.items()},
    }
    addresses: dict[str, int] = {}
    cursor = base
    for name in TABLE_ORDER:
        addresses[name] = cursor
        cursor = _align(cursor + sizes[name])
    end = addresses[TABLE_ORDER[-1]] + sizes[TABLE_ORDER[-1]]
    ram_end = RAM_BASE + config.ram_size
    if base < RAM_BASE or end > ram_end:
        raise MachineConfigError(
            f"ACPI tables [{base:#x}, {end:#x}) do not fit in RAM [{RAM_BASE:#x}, {ram_end:#x})"
        )
    blobs = dict(fixed)
    blobs["FACP"] = tables.Fadt(x_dsdt=addresses["DSDT"]).build()
    blobs["XSDT"] = tables.Xsdt(entries=tuple(addresses[n] for n in xsdt_entries)).build()
    blobs["RSDP"] = tables.Rsdp(xsdt_address=addresses["XSDT"]).build()
    image = bytearray(end - base)
    for name in TABLE_ORDER:
        blob = blobs[name]
        assert len(blob) == sizes[name], name
        offset = addresses[name] - base
        image[offset : offset + len(blob)] = blob
    return MachineTables(
        config=config,
        base_address=base,
        blobs={name: blobs[name] for name in TABLE_ORDER},
        addresses=addresses,
        image=bytes(image),
    )

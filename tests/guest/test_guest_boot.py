"""Guest kernel boot: tables from guest memory, MADT enumeration, PSCI bring-up, ACPI scan."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from cpuplug import psci_abi
from cpuplug.acpi import tables as T
from cpuplug.acpi.aml.resources import Interrupt, encode_resources
from cpuplug.acpi.virt import GED_GSI, GICD_BASE, MachineConfig, build_machine_tables, mpidr
from cpuplug.guest.acpi_bus import parse_interrupts
from cpuplug.guest.boot import BootError, check_psci_conduit, enumerate_cpus, read_tables
from cpuplug.guest.kernel import GICD_IROUTER, GuestKernel, kstrtobool
from cpuplug.guest.vfs import GuestOSError
from cpuplug.hw import VcpuStop
from tests.harness.machine import GuestMachine

SYS = "/sys/devices/system/cpu"


# --------------------------------------------------------------------------- fakes


class RamOnly:
    """Guest memory that is just RAM holding a table image (no devices)."""

    def __init__(self, base: int, image: bytes) -> None:
        self.base = base
        self.mem = bytearray(image)
        self.stores: list[tuple[int, int, int]] = []

    def _off(self, addr: int, length: int) -> int | None:
        off = addr - self.base
        return off if off >= 0 and off + length <= len(self.mem) else None

    def load(self, addr: int, size: int) -> int:
        off = self._off(addr, size)
        return 0 if off is None else int.from_bytes(self.mem[off : off + size], "little")

    def store(self, addr: int, size: int, value: int) -> None:
        self.stores.append((addr, size, value))

    def read_bytes(self, addr: int, length: int) -> bytes:
        off = self._off(addr, length)
        return bytes(length) if off is None else bytes(self.mem[off : off + length])

    def write_bytes(self, addr: int, data: bytes) -> None:
        off = self._off(addr, len(data))
        if off is not None:
            self.mem[off : off + len(data)] = data


class FakeMachine:
    def __init__(self, memory: RamOnly, rsdp: int) -> None:
        self.memory = memory
        self.rsdp_address = rsdp
        self.agent_channel: Any = None


class HaltingCpu:
    """A boot CPU whose WFI ends the run (as the VMM's stop would)."""

    mpidr = 0

    def hvc(self, x0: int, x1: int = 0, x2: int = 0, x3: int = 0) -> int:
        return 0x10001 if x0 == psci_abi.PSCI_VERSION else psci_abi.DENIED

    def wait_for_interrupt(self, timeout: float | None) -> int | None:
        raise VcpuStop

    def send_sgi(self, target_mpidr: int, intid: int) -> None:
        pass


def machine_image(config: MachineConfig) -> tuple[RamOnly, int]:
    mt = build_machine_tables(config)
    return RamOnly(mt.base_address, mt.image), mt.rsdp_address


def madt(*giccs: tuple[int, int, int]) -> T.Madt:
    """A MADT from (uid, mpidr, flags) triples."""
    return T.Madt(entries=tuple(T.Gicc(uid=u, mpidr=m, flags=f) for u, m, f in giccs))


E, OC = T.GICC_ENABLED, T.GICC_ONLINE_CAPABLE


# --------------------------------------------------------------------------- enumeration


def test_enumeration_follows_madt_order_and_flags() -> None:
    found = enumerate_cpus(madt((0, 0x0, E), (1, 0x1, OC), (2, 0x2, 0), (3, 0x3, OC)), 0)
    assert [(s.logical, s.mpidr) for s in found.slots] == [(0, 0), (1, 1), (2, 3)]
    assert any("skipping disabled CPU entry with 0x2 MPIDR" in m for m in found.messages)


def test_boot_cpu_is_logical_zero_wherever_it_sits() -> None:
    found = enumerate_cpus(madt((7, 0x7, OC), (1, 0x101, E), (2, 0x2, OC)), boot_mpidr=0x101)
    assert [(s.logical, s.uid, s.mpidr) for s in found.slots] == [
        (0, 1, 0x101),
        (1, 7, 0x7),
        (2, 2, 0x2),
    ]


def test_duplicate_and_invalid_mpidrs_are_skipped() -> None:
    found = enumerate_cpus(
        madt((0, 0x0, E), (1, 0x1, OC), (2, 0x1, OC), (3, 0xFF_00FF_FFFF, OC), (4, 1 << 50, OC)),
        0,
    )
    assert [s.uid for s in found.slots] == [0, 1]
    assert any("duplicate CPU MPIDR 0x1" in m for m in found.messages)
    assert sum("invalid MPIDR" in m for m in found.messages) == 2


def test_missing_boot_cpu_means_no_secondaries() -> None:
    found = enumerate_cpus(madt((1, 0x1, OC), (2, 0x2, OC)), boot_mpidr=0x5)
    assert [s.logical for s in found.slots] == [0]
    assert "missing boot CPU MPIDR, not enabling secondaries" in found.messages


def test_nr_cpus_clips() -> None:
    found = enumerate_cpus(madt(*[(i, i, E if i == 0 else OC) for i in range(10)]), 0, nr_cpus=4)
    assert len(found.slots) == 4


# --------------------------------------------------------------------------- tables


def test_read_tables_walks_rsdp_xsdt_fadt_madt_dsdt_spcr() -> None:
    mem, rsdp = machine_image(MachineConfig(cpus=1, maxcpus=4))
    t = read_tables(mem, rsdp)
    assert t.fadt.hw_reduced
    assert [g.uid for g in t.madt.gicc] == [0, 1, 2, 3]
    assert t.dsdt.signature == "DSDT" and len(t.dsdt.body) > 100
    assert t.spcr is not None and t.spcr.base_address.address == 0x0900_0000
    check_psci_conduit(t.fadt)


def test_corrupt_table_is_a_boot_error() -> None:
    mem, rsdp = machine_image(MachineConfig(cpus=1, maxcpus=2))
    xsdt = int.from_bytes(mem.read_bytes(rsdp + 24, 8), "little")
    madt_addr = int.from_bytes(mem.read_bytes(xsdt + 36 + 8, 8), "little")
    assert mem.read_bytes(madt_addr, 4) == b"APIC"
    mem.write_bytes(madt_addr + 9, bytes([mem.read_bytes(madt_addr + 9, 1)[0] ^ 0xFF]))
    with pytest.raises(BootError, match="APIC"):
        read_tables(mem, rsdp)


def test_rsdp_in_the_wrong_place_is_a_boot_error() -> None:
    mem, rsdp = machine_image(MachineConfig(cpus=1, maxcpus=2))
    with pytest.raises(BootError):
        read_tables(mem, rsdp + 16)


def test_smc_conduit_is_refused() -> None:
    with pytest.raises(BootError, match="SMC"):
        check_psci_conduit(T.Fadt(arm_boot_arch=T.ARM_PSCI_COMPLIANT))


def test_kernel_panics_cleanly_on_bad_tables() -> None:
    mem, rsdp = machine_image(MachineConfig(cpus=1, maxcpus=2))
    mem.write_bytes(rsdp, b"XXXXXXXX")
    kernel = GuestKernel(FakeMachine(mem, rsdp), start_agent=False)
    with pytest.raises(VcpuStop):
        kernel.boot_cpu_main(HaltingCpu())
    assert kernel.panicked is not None
    assert kernel.log.contains("Kernel panic - not syncing")
    assert kernel.booted.is_set()


# --------------------------------------------------------------------------- on the machine


@pytest.fixture
def machine_booted(guest_machine: Callable[..., GuestMachine]) -> GuestMachine:
    """The real guest booted on 2 of 4 vCPUs, every HVC it made recorded (``hvc_calls``)."""
    return guest_machine(cpus=2, maxcpus=4, record_hvc=True)


def test_boot_masks_in_acpi_mode(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    assert vm.cpus("possible") == "0-3"
    assert vm.cpus("present") == "0-3"
    assert vm.cpus("online") == "0-1"
    assert vm.cpus("offline") == "2-3"
    assert vm.cpus("enabled") == "0-1"
    assert vm.kernel.vfs.exists(f"{SYS}/cpu0/online")
    assert vm.kernel.vfs.exists(f"{SYS}/cpu1/online")
    assert not vm.kernel.vfs.exists(f"{SYS}/cpu2")
    for n in (0, 1):  # under ACPI every CPU registers late, through the scan
        assert vm.kernel.log.contains(f"ACPI: CPU{n} has been hot-added")


def test_cpu_on_tried_for_every_possible_cpu_denied_is_silent(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    calls = vm.hvc_calls
    cpu_on = {x1: ret for (x0, x1, _x2, _x3, ret) in calls if x0 == psci_abi.CPU_ON_64}
    assert cpu_on == {
        mpidr(1): psci_abi.SUCCESS,
        mpidr(2): psci_abi.DENIED,
        mpidr(3): psci_abi.DENIED,
    }
    assert not vm.kernel.log.contains("failed to boot")
    assert vm.kernel.debug.secondary_entries() == [mpidr(1)]


def test_log_goes_to_the_uart_named_by_spcr(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    console = vm.machine.console_text()
    assert "Booting Linux on physical CPU 0x0000000000 [0x000f0510]" in console
    assert "CPU1: Booted secondary processor 0x0000000001 [0x000f0510]" in console
    assert re.match(r"\[ *\d+\.\d{6}\] Booting Linux", vm.kernel.log.dmesg())


def test_ged_bound_to_its_crs_interrupt_edge_and_routed(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    lines = vm.kernel.acpi.ged_lines
    assert [(g.gsi, g.edge, g.method) for g in lines] == [(GED_GSI, True, "\\_SB.GED._EVT")]
    route = vm.machine.memory.load(GICD_BASE + GICD_IROUTER + 8 * GED_GSI, 8)
    assert route == 0
    vm.kernel.cpu_offline(0)  # the GED line must follow to an online CPU
    route = vm.machine.memory.load(GICD_BASE + GICD_IROUTER + 8 * GED_GSI, 8)
    assert route == mpidr(1)
    vm.machine.device_add("max-arm-cpu", "cpu-3", {"core-id": 3})
    assert vm.ost() == (1, 0)
    assert vm.cpus("enabled") == "0-1,3"


def test_parse_interrupts_reads_extended_irq_descriptors() -> None:
    crs = encode_resources((Interrupt((41, 42), edge=True), Interrupt((50,))))
    assert parse_interrupts(crs) == [(41, True), (42, True), (50, False)]


def test_online_offline_mode_boots_everything_online_and_registered(
    guest_machine: Callable[..., GuestMachine],
) -> None:
    b = guest_machine(cpus=3, maxcpus=3, mode="online-offline")
    assert b.cpus("online") == "0-2"
    assert b.cpus("enabled") == "0-2"
    assert b.cpus("offline") == ""


def test_cpu_files_read_like_linux(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    assert vm.read(f"{SYS}/online") == "0-1\n"
    assert vm.read(f"{SYS}/cpu1/online") == "1\n"
    with pytest.raises(GuestOSError):
        vm.kernel.vfs.write(f"{SYS}/online", "0-3")


@pytest.mark.parametrize(
    ("text", "value"), [("1", True), ("y\n", True), ("on", True), ("0", False), ("off\n", False)]
)
def test_kstrtobool(text: str, value: bool) -> None:
    assert kstrtobool(text) is value


def test_kstrtobool_rejects_garbage() -> None:
    with pytest.raises(GuestOSError):
        kstrtobool("2")

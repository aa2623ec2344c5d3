"""The interpreter against real AML and the real register block.

Two tables: QEMU 7.2's x86 DSDT (``tests/data/x86-q35-cphp``, the block in SystemIO at
0x0CD8, 4 possible CPUs, 32-bit integers) and this machine's DSDT from
:func:`cpuplug.acpi.dsdt.build_dsdt` (the block in SystemMemory at 0x090C0000, plus
the GED). Both drive the VMM's :class:`CpuHotplugBlock` (docs/contract.md §3) through a tiny
adapter, so what is checked is the whole path AML -> fields -> registers.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from cpuplug.acpi import virt
from cpuplug.acpi.dsdt import build_dsdt
from cpuplug.vmm.cpuhp import OstInfo
from tests.harness.region_bus import WiredDsdt

X86_CPUHP_BASE = 0x0CD8


class Machine(WiredDsdt):
    """A DSDT wired to a hotplug block at ``base`` in ``space`` and the GED."""

    def __init__(self, dsdt: bytes, space: str, base: int, maxcpus: int) -> None:
        super().__init__(dsdt, space, base, virt.GED_BASE, maxcpus)

    def hotplug(self, *cpus: int) -> None:
        for i in cpus:
            self.block.plug(i, f"cpu-{i}", hotplugged=True)


@pytest.fixture
def qemu(vectors: Path) -> Machine:
    dsdt = (vectors / "x86-q35-cphp" / "DSDT.dat").read_bytes()
    return Machine(dsdt, "SystemIO", X86_CPUHP_BASE, 4)


def ours(maxcpus: int, cpus: int = 1) -> Machine:
    config = virt.MachineConfig(cpus=cpus, maxcpus=maxcpus)
    return Machine(build_dsdt(config), "SystemMemory", virt.CPUHP_BASE, maxcpus)


# ====================================================================== QEMU's DSDT


def test_qemu_dsdt_loads_whole(qemu: Machine) -> None:
    it = qemu.it
    assert it.int_bits == 32  # revision 1
    for path in (
        "\\_SB.PCI0.PRES.CPLK",
        "\\_SB.PCI0.PRES.CSEL",
        "\\_SB.CPUS.CSCN",
        "\\_SB.CPUS.C003._EJ0",
        "\\_GPE._E02",
        "\\_SB.HPET._CRS",
        "\\DBUG",
    ):
        assert it.exists(path), path
    assert it.object_type("\\_SB.CPUS.C002") == "Processor"
    assert it.object_type("\\_SB.PCI0.PRES.CPLK") == "Mutex"
    assert it.object_type("\\_SB.PCI0.PRES.CINS") == "FieldUnit"
    assert it.evaluate("\\_S5") == [0, 0, 0, 0]
    assert it.evaluate("\\_SB.CPUS.C003._MAT") == bytes([0, 8, 3, 3, 1, 0, 0, 0])
    assert not it.exists("\\_SB.CPUS.C000._EJ0")  # the boot CPU has none


def test_qemu_cscn_notifies_pending_inserts_and_clears_them(qemu: Machine) -> None:
    qemu.hotplug(2, 3)
    assert qemu.it.evaluate("\\_SB.CPUS.CSCN") is None
    assert qemu.notes == [("\\_SB.CPUS.C002", 1), ("\\_SB.CPUS.C003", 1)]
    for i in (2, 3):
        state = qemu.block.slot_state(i)
        assert state.enabled and not state.inserting
    assert qemu.it.debug_log[-2:] == [2, 3]  # CSCN's "Debug = Local3"
    qemu.notes.clear()
    qemu.it.evaluate("\\_SB.CPUS.CSCN")
    assert qemu.notes == []


def test_qemu_cscn_pending_remove_gives_eject_request(qemu: Machine) -> None:
    qemu.hotplug(2)
    qemu.it.evaluate("\\_SB.CPUS.CSCN")
    qemu.notes.clear()
    qemu.block.request_unplug(2)
    qemu.it.evaluate("\\_GPE._E02")  # the x86 event entry point runs the scan
    assert qemu.notes == [("\\_SB.CPUS.C002", 3)]
    state = qemu.block.slot_state(2)
    assert not state.removing and state.enabled  # a request only; nothing ejected yet
    assert qemu.ejected == []


def test_qemu_cscn_with_nothing_pending_does_exactly_these_accesses(qemu: Machine) -> None:
    qemu.it.evaluate("\\_SB.CPUS.CSCN")
    base = X86_CPUHP_BASE
    assert qemu.bus.log == [
        ("w", base + 0, 32, 0),  # CSEL = Local3 (0)
        ("w", base + 5, 8, 0),  # CCMD = 0: search from the selector
        ("r", base + 8, 32, 0),  # If (CDAT < Local3)
        ("r", base + 8, 32, 0),  # Local3 = CDAT
        ("r", base + 4, 8, 0x21),  # If (CINS == 1): flags of CPU 0 (enabled | present)
        ("r", base + 4, 8, 0x21),  # ElseIf (CRMV == 1)
    ]


def test_qemu_csta_plugged_and_unplugged(qemu: Machine) -> None:
    qemu.hotplug(3)
    assert [qemu.it.evaluate("\\_SB.CPUS.CSTA", i) for i in range(4)] == [0x0F, 0, 0, 0x0F]
    assert [qemu.it.evaluate(f"\\_SB.CPUS.C00{i}._STA") for i in range(4)] == [0x0F, 0, 0, 0x0F]


def test_qemu_ej0_and_ost_drive_the_block(qemu: Machine) -> None:
    qemu.hotplug(1)
    qemu.it.evaluate("\\_SB.CPUS.C001._OST", 0x103, 0x84, b"")
    assert qemu.ost == [OstInfo(slot=1, device="cpu-1", source=0x103, status=0x84)]
    qemu.it.evaluate("\\_SB.CPUS.C001._EJ0", 1)
    assert qemu.ejected == [1]
    assert qemu.it.evaluate("\\_SB.CPUS.C001._STA") == 0


def test_qemu_csta_is_consistent_under_concurrent_callers(qemu: Machine) -> None:
    # CSTA writes the selector and then reads the flags; CPLK must keep another
    # thread's selector write out of that window.
    qemu.hotplug(1, 3)
    expected = {0: 0x0F, 1: 0x0F, 2: 0, 3: 0x0F}
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(200):
            cpu = rng.randrange(4)
            got = qemu.it.evaluate("\\_SB.CPUS.CSTA", cpu)
            if got != expected[cpu]:
                errors.append(f"CSTA({cpu}) = {got:#x}")

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert errors == []


# ====================================================================== our DSDT


def test_our_dsdt_loads_and_csta_reports_present_disabled() -> None:
    m = ours(8, cpus=2)
    m.hotplug(1)  # cold-plugged at boot in a real machine; plugged either way here
    assert m.it.int_bits == 64
    assert m.it.object_type("\\_SB.CPUS.C007") == "Device"
    assert m.it.evaluate("\\_SB.CPUS.C007._HID") == "ACPI0007"
    assert m.it.evaluate("\\_SB.CPUS.C007._UID") == 7
    assert [m.it.evaluate("\\_SB.CPUS.CSTA", i) for i in range(4)] == [0x0F, 0x0F, 0x0D, 0x0D]
    assert m.it.evaluate("\\_SB.CPUS.C002._STA") == 0x0D


def test_our_cscn_batches_more_than_255_inserts() -> None:
    m = ours(512)
    plugged = [*range(1, 301), 511]
    m.hotplug(*plugged)
    m.it.evaluate("\\_SB.CPUS.CSCN")
    assert m.notes == [(f"\\_SB.CPUS.C{i:03X}", 1) for i in plugged]
    assert not any(m.block.slot_state(i).inserting for i in range(512))
    assert all(m.block.slot_state(i).enabled for i in plugged)
    m.notes.clear()
    m.it.evaluate("\\_SB.CPUS.CSCN")
    assert m.notes == []


def test_our_cscn_mixes_inserts_and_removes() -> None:
    m = ours(16)
    m.hotplug(3, 4)
    m.it.evaluate("\\_SB.CPUS.CSCN")
    m.notes.clear()
    m.hotplug(9)
    m.block.request_unplug(4)
    m.it.evaluate("\\_SB.CPUS.CSCN")
    # Removes are notified during the search, inserts after it (QEMU's order).
    assert m.notes == [("\\_SB.CPUS.C004", 3), ("\\_SB.CPUS.C009", 1)]
    assert not m.block.slot_state(4).removing and not m.block.slot_state(9).inserting


def test_our_ej0_and_ost() -> None:
    m = ours(8)
    m.hotplug(5)
    m.it.evaluate("\\_SB.CPUS.C005._OST", 3, 0x84, b"")
    m.it.evaluate("\\_SB.CPUS.C005._EJ0", 1)
    assert m.ost == [OstInfo(slot=5, device="cpu-5", source=3, status=0x84)]
    assert m.ejected == [5]
    assert m.it.evaluate("\\_SB.CPUS.C005._STA") == 0x0D
    assert not m.it.exists("\\_SB.CPUS.C000._EJ0")
    # The selector write of CEJ0 reached the block: it points at vCPU 5 now.
    assert m.block.selector == 5


def test_our_ged_evt_runs_the_scan_only_for_the_cpu_event() -> None:
    m = ours(8)
    m.hotplug(2, 6)
    m.ged.raise_event(0x2)  # power-down only
    m.it.evaluate("\\_SB.GED._EVT", 41)
    assert m.notes == [("\\_SB.PWRB", 0x80)]
    assert m.block.slot_state(2).inserting  # the CPU scan did not run
    m.notes.clear()
    m.ged.raise_event(0x8)
    m.it.evaluate("\\_SB.GED._EVT", 41)
    assert m.notes == [("\\_SB.CPUS.C002", 1), ("\\_SB.CPUS.C006", 1)]
    assert m.ged.pending == 0  # ESEL was read (and so cleared) once


def test_concurrent_scans_notify_each_hotplugged_cpu_exactly_once() -> None:
    # Two vCPUs taking GED interrupts run CSCN at once while the host keeps plugging:
    # CSCN is Serialized and clears each insert after notifying it, so every vCPU
    # must be announced once - never lost, never twice.
    m = ours(64)
    lock = threading.Lock()
    plugged = threading.Event()
    counts: dict[str, int] = {}

    def count(path: str, value: int) -> None:
        with lock:
            counts[path] = counts.get(path, 0) + 1

    m.it.on_notify(count)

    def host() -> None:
        for i in range(1, 64):
            m.hotplug(i)
        plugged.set()

    def guest() -> None:
        while not plugged.is_set():
            m.it.evaluate("\\_SB.CPUS.CSCN")

    threads = [threading.Thread(target=fn, daemon=True) for fn in (host, guest, guest)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    m.it.evaluate("\\_SB.CPUS.CSCN")  # the scan the last GED event would run
    assert counts == {f"\\_SB.CPUS.C{i:03X}": 1 for i in range(1, 64)}

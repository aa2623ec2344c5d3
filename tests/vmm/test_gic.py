"""GICv3 model: sizing for all possible vCPUs, routing, edge/level, SGIs, WFI wake-up."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpuplug.acpi.virt import GED_GSI, GICR_FRAME_SIZE, GICR_REGION1_BASE, GICR_REGION2_BASE, mpidr
from cpuplug.errors import CpuplugError
from cpuplug.hw import VcpuStop
from cpuplug.vmm.gic import (
    GICD_SIZE,
    Gic,
    GicError,
    RedistributorRegion,
)

SGI = 0x1_0000  # SGI_base frame inside a redistributor


def make(m: int = 4, firmware_init: bool = True) -> Gic:
    return Gic([mpidr(i) for i in range(m)], firmware_init=firmware_init)


def rd(gic: Gic, cpu: int) -> tuple[RedistributorRegion, int]:
    """The region device and the offset of ``cpu``'s frame inside it."""
    for _base, region in gic.redistributor_regions():
        if region.first_index <= cpu < region.first_index + region.count:
            return region, (cpu - region.first_index) * GICR_FRAME_SIZE
    raise AssertionError(cpu)


class Waiter:
    """A vCPU thread sitting in WFI; records what it got."""

    def __init__(
        self,
        gic: Gic,
        cpu: int,
        timeout: float = 5.0,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.result: list[object] = []
        self.thread = threading.Thread(target=self._run, args=(gic, cpu, timeout, should_stop))
        self.thread.start()

    def _run(
        self, gic: Gic, cpu: int, timeout: float, should_stop: Callable[[], bool] | None
    ) -> None:
        try:
            self.result.append(gic.wait_for_interrupt(cpu, timeout, should_stop))
        except VcpuStop:
            self.result.append("stopped")

    def join(self) -> list[object]:
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        return self.result


def test_error_root_and_constructor_checks() -> None:
    assert issubclass(GicError, CpuplugError)
    with pytest.raises(GicError):
        Gic([])
    with pytest.raises(GicError):
        Gic([0], num_spis=33)


def test_one_redistributor_per_possible_vcpu_in_two_regions() -> None:
    gic = make(m=200)
    regions = gic.redistributor_regions()
    assert [(base, r.first_index, r.count) for base, r in regions] == [
        (GICR_REGION1_BASE, 0, 123),
        (GICR_REGION2_BASE, 123, 77),
    ]
    assert regions[0][1].SIZE == 123 * GICR_FRAME_SIZE
    lasts = []
    for cpu in range(200):
        region, frame = rd(gic, cpu)
        typer = region.read(frame + 0x8, 8)
        assert typer >> 32 == mpidr(cpu)
        assert (typer >> 8) & 0xFFFF == cpu
        assert region.read(frame + 0x8, 4) == typer & 0xFFFF_FFFF
        assert region.read(frame + 0xC, 4) == typer >> 32
        if typer & 0x10:
            lasts.append(cpu)
    assert lasts == [122, 199]
    assert len(make(m=4).redistributor_regions()) == 1


def test_distributor_id_registers() -> None:
    gic = make()
    d = gic.distributor
    assert d.SIZE == GICD_SIZE
    typer = d.read(0x4, 4)
    assert typer & 0x1F == 8  # (32 + 256) / 32 - 1
    assert (typer >> 19) & 0x1F == 9
    assert (d.read(0xFFE8, 4) >> 4) & 0xF == 3  # GICv3
    assert d.read(0x0, 4) & 0x50 == 0x50  # ARE and DS read as one
    d.write(0x0, 4, 0)
    assert d.read(0x0, 4) == 0x50


def test_spi_defaults_to_vcpu0_and_wait_returns_it() -> None:
    gic = make()
    assert gic.target_of(GED_GSI) == 0
    gic.pulse_spi(GED_GSI)
    assert gic.pending(1) == []
    assert gic.wait_for_interrupt(0, 1.0) == GED_GSI
    assert gic.wait_for_interrupt(0, 0.01) is None  # an edge is consumed once


def test_every_pulse_is_delivered_without_eoi() -> None:
    """The guest never EOIs (hw.Cpu has no EOI) and may never set ICFGR: each GED
    pulse must still arrive, on a waiting vCPU, one after another."""
    gic = make(m=8)
    gic.distributor.write(0x6000 + 8 * GED_GSI, 8, mpidr(5))
    got: list[int | None] = []
    taken = threading.Semaphore(0)

    def vcpu() -> None:
        for _ in range(50):
            got.append(gic.wait_for_interrupt(5, 5.0))
            taken.release()

    t = threading.Thread(target=vcpu)
    t.start()
    for _ in range(50):
        gic.pulse_spi(GED_GSI)
        assert taken.acquire(timeout=5)
    t.join(timeout=5)
    assert not t.is_alive()
    assert got == [GED_GSI] * 50


def test_wait_blocks_until_delivery_wakes_it() -> None:
    gic = make()
    w = Waiter(gic, 3)
    gic.send_sgi(0, 3, 1)
    assert w.join() == [1]


def test_irouter_routes_spi_and_unknown_affinity_holds_it() -> None:
    gic = make(m=20)
    d = gic.distributor
    d.write(0x6000 + 8 * GED_GSI, 8, mpidr(17))
    assert d.read(0x6000 + 8 * GED_GSI, 8) == mpidr(17) == 0x101
    assert gic.target_of(GED_GSI) == 17
    w = Waiter(gic, 17)
    gic.pulse_spi(GED_GSI)
    assert w.join() == [GED_GSI]
    # An affinity no vCPU has: the SPI stays pending until re-routed.
    d.write(0x6000 + 8 * 40, 4, 0x0F00)
    assert gic.target_of(40) is None
    gic.pulse_spi(40)
    assert all(gic.pending(c) == [] for c in range(20))
    d.write(0x6000 + 8 * 40 + 4, 4, 0)  # upper half
    d.write(0x6000 + 8 * 40, 4, mpidr(2))
    assert gic.pending(2) == [40]
    # The 1-of-N bit is RAZ/WI (GICD_TYPER.No1N).
    d.write(0x6000 + 8 * 40, 8, 1 << 31)
    assert d.read(0x6000 + 8 * 40, 8) == 0


def test_reset_state_needs_guest_programming_and_latches_meanwhile() -> None:
    gic = make(firmware_init=False)
    d = gic.distributor
    region, frame = rd(gic, 0)
    assert region.read(frame + 0x14, 4) == 0x6  # ProcessorSleep | ChildrenAsleep
    region.write(frame + 0x14, 4, 0)
    assert region.read(frame + 0x14, 4) == 0
    gic.pulse_spi(GED_GSI)
    gic.send_sgi(1, 0, 2)
    assert gic.pending(0) == []
    w = Waiter(gic, 0)
    d.write(0x0, 4, 0x2)  # EnableGrp1: still nothing enabled
    d.write(0x100 + 4, 4, 1 << (GED_GSI - 32))  # GICD_ISENABLER1
    assert w.join() == [GED_GSI]
    assert d.read(0x100 + 4, 4) == 1 << (GED_GSI - 32)
    region.write(frame + SGI + 0x100, 4, 1 << 2)  # GICR_ISENABLER0
    assert gic.acknowledge(0) == 2
    region.write(frame + SGI + 0x180, 4, 1 << 2)  # GICR_ICENABLER0
    gic.send_sgi(1, 0, 2)
    assert gic.acknowledge(0) is None
    assert region.read(frame + SGI + 0x200, 4) == 1 << 2  # pending, masked


def test_level_spi_is_active_until_eoi() -> None:
    gic = make()
    gic.set_spi_level(40, True)  # ICFGR default: level
    assert gic.acknowledge(0) == 40
    assert gic.acknowledge(0) is None  # active: not re-entered
    gic.end_of_interrupt(0, 40)
    assert gic.acknowledge(0) == 40  # line still high: pending again
    gic.set_spi_level(40, False)
    gic.end_of_interrupt(0, 40)
    assert gic.acknowledge(0) is None


def test_edge_configured_spi_latches_rising_edges_only() -> None:
    gic = make()
    d = gic.distributor
    d.write(0xC00 + 4 * (40 // 16), 4, 2 << (2 * (40 % 16)))  # GICD_ICFGR2: INTID 40 edge
    assert d.read(0xC00 + 4 * (40 // 16), 4) == 2 << (2 * (40 % 16))
    gic.set_spi_level(40, True)
    gic.set_spi_level(40, True)
    assert gic.acknowledge(0) == 40
    assert gic.acknowledge(0) is None  # held high: no new edge
    gic.set_spi_level(40, False)
    gic.set_spi_level(40, True)
    assert gic.acknowledge(0) == 40


def test_priority_then_intid_order() -> None:
    gic = make()
    gic.send_sgi(1, 0, 5)
    gic.send_sgi(1, 0, 3)
    gic.pulse_spi(50)
    assert gic.pending(0) == [3, 5, 50]
    gic.distributor.write(0x400 + 50, 1, 0x00)
    region, frame = rd(gic, 0)
    region.write(frame + SGI + 0x400, 8, 0x80 << 24 | 0x80 << 40)  # SGIs 3 and 5 → 0x80
    assert region.read(frame + SGI + 0x403, 1) == 0x80
    assert gic.pending(0) == [50, 3, 5]
    assert [gic.acknowledge(0) for _ in range(4)] == [50, 3, 5, None]


def test_mmio_pending_and_active_registers() -> None:
    gic = make()
    d = gic.distributor
    d.write(0x200 + 4, 4, 1 << 1)  # ISPENDR1: INTID 33
    assert d.read(0x200 + 4, 4) == 1 << 1
    d.write(0x280 + 4, 4, 1 << 1)  # ICPENDR1
    assert gic.pending(0) == []
    d.write(0x300 + 4, 4, 1 << 2)  # ISACTIVER1: INTID 34 active
    gic.pulse_spi(34)
    assert gic.pending(0) == []
    d.write(0x380 + 4, 4, 1 << 2)
    assert gic.pending(0) == [34]
    d.write(0x180 + 4, 4, 1 << 2)  # ICENABLER1
    assert gic.pending(0) == []
    assert d.read(0x100, 4) == 0  # GICD_ISENABLER0 is RAZ with affinity routing


def test_kick_stops_a_vcpu_sleeping_in_wfi() -> None:
    gic = make()
    stop = threading.Event()
    w = Waiter(gic, 2, timeout=30.0, should_stop=stop.is_set)
    stop.set()
    gic.kick(2)
    assert w.join() == ["stopped"]
    with pytest.raises(VcpuStop):
        gic.wait_for_interrupt(2, 5.0, should_stop=lambda: True)


def test_kick_without_stop_keeps_waiting() -> None:
    gic = make()
    w = Waiter(gic, 1, timeout=0.2, should_stop=lambda: False)
    gic.kick(1)
    assert w.join() == [None]


def test_bad_arguments_raise_gic_error() -> None:
    gic = make()
    calls: list[Callable[[], object]] = [
        lambda: gic.pulse_spi(31),
        lambda: gic.pulse_spi(gic.num_irqs),
        lambda: gic.set_spi_level(True, True),
        lambda: gic.send_sgi(0, 1, 16),
        lambda: gic.send_sgi(0, 4, 1),
        lambda: gic.wait_for_interrupt(-1, 0.0),
        lambda: gic.kick(9),
    ]
    for call in calls:
        with pytest.raises(GicError):
            call()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.one_of(
                st.sampled_from([0x0, 0x80, 0x104, 0x184, 0x204, 0x284, 0x304, 0x384, 0x429]),
                st.sampled_from([0xC08, 0x6148, 0x614C, 0x14, 0x10100, 0x10300, 0x10C04]),
                st.integers(-16, 0x30000),
            ),
            st.integers(0, 9),
            st.integers(-(2**70), 2**70),
            st.booleans(),
        ),
        max_size=50,
    )
)
def test_random_mmio_never_crashes_and_valid_use_still_works(
    ops: list[tuple[bool, int, int, int, bool]],
) -> None:
    gic = make(m=2)
    region, _ = rd(gic, 0)
    d = gic.distributor
    for to_dist, offset, size, value, is_write in ops:
        device = d if to_dist else region
        if is_write:
            device.write(offset, size, value)
        else:
            assert device.read(offset, size) >= 0
    # Put INTID 41 back in a known state through MMIO, as a driver would.
    d.write(0x0, 4, 0x2)
    d.write(0x6000 + 8 * GED_GSI, 8, mpidr(1))
    d.write(0x100 + 4, 4, 1 << (GED_GSI - 32))
    d.write(0x380 + 4, 4, 1 << (GED_GSI - 32))
    d.write(0x280 + 4, 4, 0xFFFF_FFFF)
    gic.set_spi_level(GED_GSI, False)
    gic.pulse_spi(GED_GSI)
    assert gic.acknowledge(1) == GED_GSI

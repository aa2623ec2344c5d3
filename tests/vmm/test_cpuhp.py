"""The CPU hotplug register block, driven the way the guest's AML drives it.

Each helper below is a register-level transcription of one ``\\_SB.CPUS`` method
(QEMU's ``build_cpus_aml``), so these tests exercise exactly the accesses the AML
interpreter will make: 4-byte CSEL/CDAT, 1-byte flags and command.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpuplug.cpuhp_abi import (
    CMD_GET_CPU_ID,
    CMD_GET_NEXT_EVENT,
    CMD_OST_EVENT,
    CMD_OST_STATUS,
    FLAG_EJECT,
    FLAG_ENABLED,
    FLAG_FW_REMOVE,
    FLAG_INSERT,
    FLAG_PRESENT,
    FLAG_REMOVE,
    OFFSET_COMMAND,
    OFFSET_DATA,
    OFFSET_DATA2,
    OFFSET_FLAGS,
    OFFSET_SELECTOR,
)
from cpuplug.errors import CpuplugError
from cpuplug.vmm.cpuhp import CpuHotplugBlock, CpuHotplugError, OstInfo
from tests.harness.vmm import VmmProcess


def mpidr(i: int) -> int:
    return ((i // 16) << 8) | (i % 16)


class Recorder:
    """Hooks that remember what the block reported."""

    def __init__(self) -> None:
        self.ejected: list[int] = []
        self.osts: list[OstInfo] = []
        self.enabled_during_eject: list[bool] = []
        self.block: CpuHotplugBlock | None = None

    def on_eject(self, index: int) -> None:
        assert self.block is not None
        # The hook may call back into the block: it must not be holding its lock.
        self.enabled_during_eject.append(self.block.is_enabled(index))
        self.ejected.append(index)

    def on_ost(self, info: OstInfo) -> None:
        self.osts.append(info)


def make(m: int = 8, cold: int = 1) -> tuple[CpuHotplugBlock, Recorder]:
    rec = Recorder()
    block = CpuHotplugBlock([mpidr(i) for i in range(m)], on_eject=rec.on_eject, on_ost=rec.on_ost)
    rec.block = block
    for i in range(cold):
        block.plug(i, None, hotplugged=False)
    return block, rec


# --- register-level transcriptions of the AML methods --------------------------


def select(b: CpuHotplugBlock, uid: int) -> None:
    b.write(OFFSET_SELECTOR, 4, uid)


def flags(b: CpuHotplugBlock) -> int:
    return b.read(OFFSET_FLAGS, 1)


def csta(b: CpuHotplugBlock, uid: int) -> int:
    """docs/contract.md §2 CSTA: 0xF enabled, 0xD present-but-disabled, else 0."""
    select(b, uid)
    f = flags(b)
    if f & FLAG_ENABLED:
        return 0x0F
    if f & FLAG_PRESENT:
        return 0x0D
    return 0


def cej0(b: CpuHotplugBlock, uid: int) -> None:
    select(b, uid)
    b.write(OFFSET_FLAGS, 1, FLAG_EJECT)


def cost(b: CpuHotplugBlock, uid: int, ev: int, status: int) -> None:
    select(b, uid)
    b.write(OFFSET_COMMAND, 1, CMD_OST_EVENT)
    b.write(OFFSET_DATA, 4, ev)
    b.write(OFFSET_COMMAND, 1, CMD_OST_STATUS)
    b.write(OFFSET_DATA, 4, status)


def cscn(b: CpuHotplugBlock, m: int, notify: list[tuple[int, int]]) -> int:
    """QEMU's current CSCN (batched with a 255-entry CNEW). Returns the pass count."""
    uid = 0
    has_job = True
    passes = 0
    while has_job:
        passes += 1
        assert passes < 10 * m + 10, "CSCN does not terminate"
        has_job = False
        has_event = True
        cnew: list[int] = []
        while has_event and uid < m:
            has_event = False
            select(b, uid)
            b.write(OFFSET_COMMAND, 1, CMD_GET_NEXT_EVENT)
            cdat = b.read(OFFSET_DATA, 4)
            if cdat < uid:
                break
            if len(cnew) == 255:
                has_job = True
                break
            uid = cdat
            f = flags(b)
            if f & FLAG_INSERT:
                cnew.append(uid)
                has_event = True
            elif f & FLAG_REMOVE:
                notify.append((uid, 3))
                b.write(OFFSET_FLAGS, 1, FLAG_REMOVE)
                has_event = True
            uid += 1
        for queued in cnew:
            notify.append((queued, 1))
            select(b, queued)
            b.write(OFFSET_FLAGS, 1, FLAG_INSERT)
    return passes


# --- tests ----------------------------------------------------------------------


def test_size_and_error_root() -> None:
    assert CpuHotplugBlock.SIZE == 12
    assert issubclass(CpuHotplugError, CpuplugError)
    with pytest.raises(CpuHotplugError):
        CpuHotplugBlock([])


def test_every_possible_vcpu_is_present_and_only_plugged_ones_enabled() -> None:
    b, _ = make(m=4, cold=2)
    assert [csta(b, i) for i in range(4)] == [0x0F, 0x0F, 0x0D, 0x0D]
    select(b, 3)
    assert flags(b) == FLAG_PRESENT


def test_hotplug_sets_insert_and_cold_plug_does_not() -> None:
    b, _ = make(m=4, cold=1)
    b.plug(2, "cpu-2", hotplugged=True)
    b.plug(3, None, hotplugged=False)
    select(b, 2)
    assert flags(b) == FLAG_PRESENT | FLAG_ENABLED | FLAG_INSERT
    select(b, 3)
    assert flags(b) == FLAG_PRESENT | FLAG_ENABLED


def test_control_write_is_one_action_per_write() -> None:
    b, rec = make(m=4, cold=1)
    b.plug(1, "cpu-1", hotplugged=True)
    b.request_unplug(1)
    select(b, 1)
    b.write(OFFSET_FLAGS, 1, FLAG_INSERT | FLAG_REMOVE)  # 0x06 clears insert only
    assert flags(b) == FLAG_PRESENT | FLAG_ENABLED | FLAG_REMOVE
    b.write(OFFSET_FLAGS, 1, FLAG_REMOVE | FLAG_EJECT)  # clears remove, no eject
    assert flags(b) == FLAG_PRESENT | FLAG_ENABLED
    assert rec.ejected == []
    b.write(OFFSET_FLAGS, 1, FLAG_EJECT | FLAG_FW_REMOVE)  # ejects, fw-remove not set
    assert rec.ejected == [1]
    assert flags(b) == FLAG_PRESENT


def test_eject_calls_hook_before_enabled_clears_and_keeps_present() -> None:
    b, rec = make(m=4, cold=3)
    cej0(b, 2)
    assert rec.ejected == [2]
    assert rec.enabled_during_eject == [True]
    assert csta(b, 2) == 0x0D
    assert not b.is_enabled(2)


def test_eject_ignored_for_boot_cpu_and_unplugged_vcpu() -> None:
    b, rec = make(m=4, cold=1)
    cej0(b, 0)
    cej0(b, 3)
    assert rec.ejected == []
    assert csta(b, 0) == 0x0F


def test_fw_remove_set_only_for_plugged_non_boot_and_cleared_by_eject() -> None:
    b, _ = make(m=4, cold=2)
    for uid in (0, 2, 1):
        select(b, uid)
        b.write(OFFSET_FLAGS, 1, FLAG_FW_REMOVE)
    select(b, 0)
    assert flags(b) & FLAG_FW_REMOVE == 0
    select(b, 2)
    assert flags(b) & FLAG_FW_REMOVE == 0
    select(b, 1)
    assert flags(b) & FLAG_FW_REMOVE
    select(b, 0)
    b.write(OFFSET_COMMAND, 1, CMD_GET_NEXT_EVENT)
    assert b.read(OFFSET_DATA, 4) == 1  # fw_remove counts as an event
    cej0(b, 1)
    select(b, 1)
    assert flags(b) == FLAG_PRESENT


def test_command0_search_wraps_and_never_clears_flags() -> None:
    b, _ = make(m=8, cold=1)
    b.plug(2, "a", hotplugged=True)
    b.plug(6, "b", hotplugged=True)
    select(b, 3)
    b.write(OFFSET_COMMAND, 1, CMD_GET_NEXT_EVENT)
    assert b.read(OFFSET_DATA, 4) == 6
    assert b.read(OFFSET_DATA2, 4) == 0
    select(b, 7)
    b.write(OFFSET_COMMAND, 1, CMD_GET_NEXT_EVENT)
    assert b.read(OFFSET_DATA, 4) == 2  # wrapped
    b.write(OFFSET_COMMAND, 1, CMD_GET_NEXT_EVENT)
    assert b.read(OFFSET_DATA, 4) == 2  # search starts at the selector itself
    for uid in (2, 6):
        select(b, uid)
        assert flags(b) & FLAG_INSERT


def test_command0_leaves_selector_when_nothing_pending() -> None:
    b, _ = make(m=8, cold=4)
    select(b, 5)
    b.write(OFFSET_COMMAND, 1, CMD_GET_NEXT_EVENT)
    assert b.read(OFFSET_DATA, 4) == 5
    assert b.selector == 5


def test_command3_returns_arch_id_halves() -> None:
    arch = [0x0, 0x1_2345_6789, 0xFF]
    b = CpuHotplugBlock(arch)
    select(b, 1)
    b.write(OFFSET_COMMAND, 1, CMD_GET_CPU_ID)
    assert b.read(OFFSET_DATA, 4) == 0x2345_6789
    assert b.read(OFFSET_DATA2, 4) == 0x1
    select(b, 2)
    assert b.read(OFFSET_DATA, 4) == 0xFF
    assert b.read(OFFSET_DATA2, 4) == 0


def test_command_stored_only_below_four_and_data_writes_need_ost_command() -> None:
    b, rec = make(m=4, cold=2)
    select(b, 1)
    b.write(OFFSET_COMMAND, 1, CMD_GET_CPU_ID)
    b.write(OFFSET_COMMAND, 1, 4)
    b.write(OFFSET_COMMAND, 1, 0xFF)
    assert b.read(OFFSET_DATA, 4) == mpidr(1)  # still command 3
    b.write(OFFSET_DATA, 4, 0x55)  # ignored under command 3
    assert rec.osts == []
    assert b.slot_state(1).ost_event == 0


def test_invalid_selector_reads_zero_and_drops_writes_except_selector() -> None:
    b, rec = make(m=4, cold=2)
    b.plug(3, "x", hotplugged=True)
    select(b, 1)
    b.write(OFFSET_COMMAND, 1, CMD_GET_CPU_ID)
    select(b, 4)
    for off in range(16):
        for size in (1, 2, 4, 8):
            assert b.read(off, size) == 0
    b.write(OFFSET_COMMAND, 1, CMD_GET_NEXT_EVENT)  # dropped
    b.write(OFFSET_FLAGS, 1, FLAG_EJECT)  # dropped
    select(b, 1)
    assert b.read(OFFSET_DATA, 4) == mpidr(1)  # command is still 3
    assert rec.ejected == []
    # Enumeration idiom: CDAT reads 0 once the selector reaches M.
    b.write(OFFSET_COMMAND, 1, CMD_GET_NEXT_EVENT)
    select(b, 4)
    assert b.read(OFFSET_DATA, 4) == 0


def test_ost_latching_emits_with_device_id() -> None:
    b, rec = make(m=4, cold=1)
    b.plug(2, "cpu-2", hotplugged=True)
    cost(b, 2, 0x1, 0x0)
    cost(b, 3, 0x3, 0x84)
    assert rec.osts == [OstInfo(2, "cpu-2", 1, 0), OstInfo(3, None, 3, 0x84)]
    assert rec.osts[0].to_qmp() == {
        "device": "cpu-2",
        "slot": "2",
        "slot-type": "CPU",
        "source": 1,
        "status": 0,
    }
    assert "device" not in rec.osts[1].to_qmp()
    snapshot = b.ospm_status()
    assert [o.slot for o in snapshot] == [0, 1, 2, 3]
    assert snapshot[2] == OstInfo(2, "cpu-2", 1, 0)
    assert snapshot[3] == OstInfo(3, None, 3, 0x84)


def test_ost_after_eject_has_no_device() -> None:
    b, rec = make(m=4, cold=1)
    b.plug(1, "cpu-1", hotplugged=False)
    b.request_unplug(1)
    cost(b, 1, 0x3, 0x84)
    cej0(b, 1)
    cost(b, 1, 0x103, 0)
    assert [o.device for o in rec.osts] == ["cpu-1", None]


def test_access_width_truncates_value_and_dispatches_on_exact_offset() -> None:
    b, _ = make(m=300, cold=1)
    b.write(OFFSET_SELECTOR, 1, 0x1FF)
    assert b.selector == 0xFF
    b.write(OFFSET_SELECTOR, 8, 0x1_0000_0001)
    assert b.selector == 1  # the selector is a u32
    b.plug(1, None, hotplugged=True)
    b.write(OFFSET_FLAGS, 1, 0x100 | FLAG_INSERT)  # 1-byte store keeps 0x02
    assert flags(b) == FLAG_PRESENT | FLAG_ENABLED
    b.write(OFFSET_SELECTOR, 4, 0x12C)  # 300, one past the end
    assert b.read(OFFSET_FLAGS, 1) == 0
    b.write(OFFSET_SELECTOR, 2, 0x1_0001)
    assert b.selector == 1
    assert b.read(OFFSET_FLAGS, 4) == FLAG_PRESENT | FLAG_ENABLED
    for off in (1, 2, 3, 6, 7, 9, 10, 11, 12, 0x1000, -4):
        assert b.read(off, 4) == 0
    b.write(OFFSET_COMMAND, 1, CMD_GET_CPU_ID)
    assert b.read(OFFSET_DATA, 1) == mpidr(1) & 0xFF
    assert b.read(OFFSET_DATA, 0) == 0  # no such width
    assert b.read(OFFSET_DATA, 9) == 0


def test_plug_and_unplug_request_errors() -> None:
    b, _ = make(m=4, cold=2)
    with pytest.raises(CpuHotplugError, match="already plugged"):
        b.plug(1, None, hotplugged=True)
    with pytest.raises(CpuHotplugError, match="out of range"):
        b.plug(4, None, hotplugged=True)
    with pytest.raises(CpuHotplugError, match="out of range"):
        b.is_enabled(-1)
    with pytest.raises(CpuHotplugError, match="integer"):
        b.plug(True, None, hotplugged=True)
    with pytest.raises(CpuHotplugError, match="Boot CPU is unpluggable"):
        b.request_unplug(0)
    with pytest.raises(CpuHotplugError, match="not plugged"):
        b.request_unplug(3)


def test_replug_after_eject() -> None:
    b, rec = make(m=4, cold=1)
    b.plug(1, "cpu-1", hotplugged=True)
    b.request_unplug(1)
    b.request_unplug(1)  # twice: QEMU would leave a stale remove flag behind
    cej0(b, 1)
    state = b.slot_state(1)
    assert (state.enabled, state.inserting, state.removing, state.device) == (
        False,
        False,
        False,
        None,
    )
    b.plug(1, "cpu-1b", hotplugged=True)
    notes: list[tuple[int, int]] = []
    cscn(b, 4, notes)
    assert notes == [(1, 1)]
    assert rec.ejected == [1]


def test_cscn_batches_more_than_255_inserts_and_handles_removes() -> None:
    m = 300
    b, _ = make(m=m, cold=10)
    for i in range(10, 280):
        b.plug(i, f"cpu-{i}", hotplugged=True)
    for i in (3, 5):
        b.request_unplug(i)
    notes: list[tuple[int, int]] = []
    passes = cscn(b, m, notes)
    assert passes == 2  # one full batch of 255, then the rest
    inserted = sorted(uid for uid, ev in notes if ev == 1)
    assert inserted == list(range(10, 280))
    assert sorted(uid for uid, ev in notes if ev == 3) == [3, 5]
    # Everything acknowledged: a second scan finds nothing.
    again: list[tuple[int, int]] = []
    cscn(b, m, again)
    assert again == []


def test_hooks_may_reenter_and_failing_hooks_are_contained() -> None:
    calls: list[str] = []
    block: CpuHotplugBlock

    def bad_eject(index: int) -> None:
        calls.append(f"eject {index}")
        # Re-entering from another thread while the hook runs must not deadlock.
        t = threading.Thread(target=lambda: block.read(OFFSET_FLAGS, 1))
        t.start()
        t.join(timeout=5)
        assert not t.is_alive()
        raise RuntimeError("machine could not stop the thread")

    def bad_ost(info: OstInfo) -> None:
        raise RuntimeError("event queue closed")

    block = CpuHotplugBlock([0, 1, 2], on_eject=bad_eject, on_ost=bad_ost)
    block.plug(0, None, hotplugged=False)
    block.plug(1, "cpu-1", hotplugged=False)
    cej0(block, 1)  # hook raises: the store still completes, vCPU stays plugged
    assert calls == ["eject 1"]
    assert csta(block, 1) == 0x0F
    cost(block, 1, 3, 0x82)  # on_ost raises: contained, state latched
    assert block.slot_state(1).ost_status == 0x82


def test_concurrent_eject_writes_call_hook_once() -> None:
    started = threading.Event()
    release = threading.Event()
    ejected: list[int] = []

    def slow_eject(index: int) -> None:
        ejected.append(index)
        started.set()
        assert release.wait(timeout=5)

    b = CpuHotplugBlock([0, 1], on_eject=slow_eject)
    b.plug(0, None, hotplugged=False)
    b.plug(1, "cpu-1", hotplugged=False)
    t = threading.Thread(target=cej0, args=(b, 1))
    t.start()
    assert started.wait(timeout=5)
    # While the first eject is in flight: reads still see enabled, a second eject
    # is ignored, and the host cannot re-plug the slot.
    assert csta(b, 1) == 0x0F
    cej0(b, 1)
    with pytest.raises(CpuHotplugError, match="already plugged"):
        b.plug(1, None, hotplugged=True)
    release.set()
    t.join(timeout=5)
    assert not t.is_alive()
    assert ejected == [1]
    assert csta(b, 1) == 0x0D


M_FUZZ = 6
accesses = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 15), st.integers(-(2**64), 2**64)),
        st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 9]),
        st.one_of(st.integers(0, 0xFF), st.integers(-(2**70), 2**70)),
        st.booleans(),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(accesses)
def test_random_accesses_never_crash_and_keep_invariants(
    ops: list[tuple[int, int, int, bool]],
) -> None:
    b, rec = make(m=M_FUZZ, cold=2)
    b.plug(3, "cpu-3", hotplugged=True)
    for offset, size, value, is_write in ops:
        if is_write:
            b.write(offset, size, value)
        else:
            result = b.read(offset, size)
            assert 0 <= result < (1 << (8 * max(size, 1)))
    assert 0 <= b.selector <= 0xFFFF_FFFF
    assert 0 not in rec.ejected
    assert set(rec.ejected) <= {1, 3}
    assert len(rec.ejected) == len(set(rec.ejected))
    for i in range(M_FUZZ):
        select(b, i)
        f = flags(b)
        assert f & FLAG_PRESENT
        assert f & ~(FLAG_ENABLED | FLAG_INSERT | FLAG_REMOVE | FLAG_FW_REMOVE | FLAG_PRESENT) == 0
    assert csta(b, 0) == 0x0F
    # Valid use still works after the abuse: plug, scan, eject.
    for i in range(M_FUZZ):
        b.write(OFFSET_SELECTOR, 4, i)
        b.write(OFFSET_FLAGS, 1, FLAG_INSERT)
        b.write(OFFSET_FLAGS, 1, FLAG_REMOVE)
    if not b.is_enabled(5):
        b.plug(5, "cpu-5", hotplugged=True)
    select(b, 5)
    b.write(OFFSET_COMMAND, 1, CMD_GET_NEXT_EVENT)
    assert b.read(OFFSET_DATA, 4) == 5
    assert flags(b) == FLAG_PRESENT | FLAG_ENABLED | FLAG_INSERT
    b.write(OFFSET_FLAGS, 1, FLAG_INSERT)
    before = len(rec.ejected)
    cej0(b, 5)
    assert rec.ejected[before:] == [5]
    assert csta(b, 5) == 0x0D


# ---------------------------------------------------- docs/contract.md §3, §7 literally
# Written from the contract's text (spec-coverage audit, formerly
# tests/e2e/test_spec_coverage.py): offsets and commands are the table's numbers, not
# this module's names for them.

SPEC_CPUHP = 0x090C_0000  # §1: the CPU hotplug block's guest-physical base


@pytest.mark.slow
def test_cpu_hotplug_block_offsets_and_commands_by_number(
    vmm: Callable[..., VmmProcess],
) -> None:
    # The unit tests use cpuhp's own names for offsets and commands; here every number
    # is the table's in docs/contract.md §3, written by the guest over MMIO.
    process = vmm("cpus=1,maxcpus=20")
    probe = process.probe()
    probe.store(SPEC_CPUHP + 0x0, 4, 17)
    probe.store(SPEC_CPUHP + 0x5, 1, 3)  # command 3: arch id
    assert probe.load(SPEC_CPUHP + 0x8, 4) == 0x0101  # lower 32 bits: MPIDR Aff1=1, Aff0=1
    assert probe.load(SPEC_CPUHP + 0x0, 4) == 0  # upper 32 bits
    assert probe.load(SPEC_CPUHP + 0x5, 1) == 0  # offset 5 reads 0
    probe.store(SPEC_CPUHP + 0x5, 1, 4)  # not a command: not stored
    assert probe.load(SPEC_CPUHP + 0x8, 4) == 0x0101
    probe.store(SPEC_CPUHP + 0x5, 1, 0)  # command 0: nothing pending, selector stays
    assert probe.load(SPEC_CPUHP + 0x8, 4) == 17
    assert probe.load(SPEC_CPUHP + 0x0, 4) == 0  # command data 2 under command 0
    assert probe.load(SPEC_CPUHP + 0x4, 1) == 0x20  # bit5 present, not enabled
    probe.store(SPEC_CPUHP + 0x0, 4, 20)  # selector = M
    for offset, size in ((0x0, 4), (0x4, 1), (0x5, 1), (0x8, 4)):
        assert probe.load(SPEC_CPUHP + offset, size) == 0, offset
    probe.store(SPEC_CPUHP + 0x0, 4, 0)
    probe.store(SPEC_CPUHP + 0x5, 1, 3)
    probe.store(SPEC_CPUHP + 0x0, 4, 20)
    probe.store(SPEC_CPUHP + 0x5, 1, 0)  # dropped: the command stays 3
    probe.store(SPEC_CPUHP + 0x4, 1, 0x08)  # dropped: nothing is ejected
    probe.store(SPEC_CPUHP + 0x0, 4, 17)
    assert probe.load(SPEC_CPUHP + 0x8, 4) == 0x0101
    probe.store(SPEC_CPUHP + 0x0, 4, 0)
    assert probe.load(SPEC_CPUHP + 0x4, 1) == 0x21  # vCPU 0: enabled | present


def test_ost_slot_is_the_decimal_index_also_past_nine() -> None:
    """``"slot": "<i>"`` is the decimal index: a hex or padded form shows only at i ≥ 10."""
    reports: list[OstInfo] = []
    block = CpuHotplugBlock(
        [((i // 16) << 8) | (i % 16) for i in range(300)], on_ost=reports.append
    )
    for index in (10, 15, 16, 255, 299):
        block.write(0x0, 4, index)
        block.write(0x5, 1, 1)
        block.write(0x8, 4, 3)
        block.write(0x5, 1, 2)
        block.write(0x8, 4, 0x84)
    assert [r.to_qmp()["slot"] for r in reports] == ["10", "15", "16", "255", "299"]
    assert all(r.to_qmp()["slot-type"] == "CPU" for r in reports)
    assert [o["slot"] for o in (i.to_qmp() for i in block.ospm_status())][9:12] == [
        "9", "10", "11",
    ]  # fmt: skip

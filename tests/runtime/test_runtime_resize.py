"""The resize planner (pure) and the hotplug waits, against a scripted fake VMM."""

from __future__ import annotations

import time
from typing import Any

import pytest

from cpuplug.runtime import resize as rz
from cpuplug.runtime.hypervisors import qmp as qh
from cpuplug.runtime.qmp_client import VmmGone
from tests.harness.runtime_fakes import FakeMachine, FakeVmm


def slots(maxcpus: int, plugged: set[int]) -> list[rz.Slot]:
    entries: list[dict[str, Any]] = []
    for i in reversed(range(maxcpus)):  # QEMU order: highest first
        e: dict[str, Any] = {
            "type": "max-arm-cpu",
            "vcpus-count": 1,
            "props": {"socket-id": 0, "cluster-id": 0, "core-id": i, "thread-id": 0},
        }
        if i in plugged:
            e["qom-path"] = f"/machine/peripheral/cpu-{i}"
        entries.append(e)
    return rz.parse_slots(entries)


def test_parse_slots_sorts_ascending_and_keeps_integer_props() -> None:
    s = slots(4, {0})
    assert [x.core_id for x in s] == [0, 1, 2, 3]
    assert s[2].props == {"socket-id": 0, "cluster-id": 0, "core-id": 2, "thread-id": 0}
    assert s[0].plugged and not s[1].plugged
    with pytest.raises(rz.ResizeError, match="core-id"):
        rz.parse_slots([{"type": "x", "props": {"core-id": "1"}}])


def test_grow_takes_free_slots_ascending() -> None:
    p = rz.plan_resize(slots(8, {0}), [0], 3, boot=[0])
    assert p.add == (1, 2) and p.remove == () and p.result == 3
    # a hole left by an earlier removal is filled first
    p = rz.plan_resize(slots(8, {0, 1, 3}), [0, 1, 3], 5, boot=[0])
    assert p.add == (2, 4)


def test_shrink_removes_newest_first_never_boot_or_zero() -> None:
    p = rz.plan_resize(slots(8, {0, 1, 2, 3, 4}), [0, 2, 1, 4, 3], 3, boot=[0])
    assert p.remove == (3, 4)
    p = rz.plan_resize(slots(8, {0, 1, 2}), [0, 1, 2], 1, boot=[0, 1])
    assert p.remove == (2,) and p.warning is not None and "boot" in p.warning
    p = rz.plan_resize(slots(8, {0, 1}), [0, 1], 0, boot=[0])  # never below 1
    assert p.remove == (1,) and p.result == 1


def test_plan_no_change_and_clamp_warning() -> None:
    p = rz.plan_resize(slots(4, {0, 1}), [0, 1], 2, boot=[0])
    assert p.add == () and p.remove == ()
    p = rz.plan_resize(slots(4, {0}), [0], 9, boot=[0])
    assert p.add == (1, 2, 3) and p.warning is not None


def test_reconcile_order_trusts_the_vmm() -> None:
    # state says 0,3,1 (1 newest); the VMM says 0,1,2 are plugged (3 vanished, 2 unknown)
    assert rz.reconcile_order([0, 3, 1], [0, 1, 2]) == [0, 1, 2]
    assert rz.reconcile_order([0, 5, 2], [2, 0, 5, 7, 6]) == [0, 5, 2, 6, 7]


# ---------------------------------------------------------------- hotplug waits


def plugged_vmm(maxcpus: int = 4, extra: tuple[int, ...] = (1,)) -> tuple[FakeMachine, FakeVmm]:
    m = FakeMachine(maxcpus)
    vmm = FakeVmm(m)
    s = qh.query_slots(vmm)
    log = rz.StepLog()
    for core in extra:
        qh.hot_add(vmm, s[core], log)
    assert qh.wait_inserted(vmm, extra, 1.0, log) == []
    return m, vmm


def test_hot_add_sends_integer_props_and_id_by_core() -> None:
    m, _ = plugged_vmm(extra=(2,))
    cmd, args = m.qmp_log[-1]
    assert cmd == "device_add"
    assert args == {
        "driver": "max-arm-cpu",
        "id": "cpu-2",
        "socket-id": 0,
        "cluster-id": 0,
        "core-id": 2,
        "thread-id": 0,
    }


def test_remove_completes_on_device_deleted() -> None:
    m, vmm = plugged_vmm()
    log = rz.StepLog()
    qh.hot_remove(vmm, 1, "/machine/peripheral/cpu-1", 5.0, log)
    assert 1 not in m.plugged and log.steps[-1]["step"] == "device_del"


def test_remove_accepts_a_child_path_event() -> None:
    """QEMU 7.2 on x86 only named .../hcpuN/lapic; waiting for the id alone would hang."""
    m, vmm = plugged_vmm()
    m.child_path_only = True
    qh.hot_remove(vmm, 1, "/machine/peripheral/cpu-1", 5.0, rz.StepLog())
    assert 1 not in m.plugged


def test_remove_sees_completion_in_the_slot_table() -> None:
    m, vmm = plugged_vmm()
    m.no_deleted_event = True
    t0 = time.monotonic()
    qh.hot_remove(vmm, 1, "/machine/peripheral/cpu-1", 5.0, rz.StepLog())
    assert time.monotonic() - t0 < 2.0, "must not wait for the timeout"


def test_refused_eject_fails_fast_naming_vcpu_and_status() -> None:
    m, vmm = plugged_vmm()
    m.refuse_eject[1] = 0x82
    t0 = time.monotonic()
    with pytest.raises(rz.EjectRefused, match=r"vCPU 1.*0x82 \(device busy\)"):
        qh.hot_remove(vmm, 1, "/machine/peripheral/cpu-1", 10.0, rz.StepLog())
    assert time.monotonic() - t0 < 2.0
    assert 1 in m.plugged


def test_silent_guest_times_out_instead_of_hanging() -> None:
    """Go Kata waits for DEVICE_DELETED with no timeout; a silent guest hangs it forever."""
    m, vmm = plugged_vmm()
    m.silent_eject.add(1)
    t0 = time.monotonic()
    with pytest.raises(rz.RemoveTimeout, match=r"vCPU 1 was not removed within 0\.3s"):
        qh.hot_remove(vmm, 1, "/machine/peripheral/cpu-1", 0.3, rz.StepLog())
    assert time.monotonic() - t0 < 3.0


def test_dead_vmm_ends_the_wait() -> None:
    m, vmm = plugged_vmm()
    m.silent_eject.add(1)
    m.die_after_del = True
    t0 = time.monotonic()
    with pytest.raises(VmmGone):
        qh.hot_remove(vmm, 1, None, 10.0, rz.StepLog())
    assert time.monotonic() - t0 < 2.0
    assert m.qmp_log[-1][0] == "device_del"


def test_insert_ost_failure_names_the_vcpu() -> None:
    m = FakeMachine(4)
    vmm = FakeVmm(m)
    vmm.events.append(
        {
            "event": "ACPI_DEVICE_OST",
            "data": {"info": {"slot": "2", "slot-type": "CPU", "source": 1, "status": 1}},
        }
    )
    with pytest.raises(rz.ResizeError, match=r"vCPU 2.*0x01"):
        qh.wait_inserted(vmm, [2], 1.0, rz.StepLog())
    # silence is not an error here: the agent's OnlineCPUMem decides
    assert qh.wait_inserted(vmm, [3], 0.05, rz.StepLog()) == [3]

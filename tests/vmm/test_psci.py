"""PSCI dispatch against a fake vCPU table (the machine's VcpuSet plays it for real)."""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpuplug.acpi.virt import cpu_index_of_mpidr, mpidr
from cpuplug.hw import VcpuStop
from cpuplug.psci_abi import (
    AFFINITY_INFO_32,
    AFFINITY_INFO_64,
    ALREADY_ON,
    CPU_OFF,
    CPU_ON_32,
    CPU_ON_64,
    CPU_SUSPEND_64,
    DENIED,
    INVALID_PARAMS,
    MIGRATE_INFO_TYPE,
    NOT_SUPPORTED,
    ON_PENDING,
    PSCI_FEATURES,
    PSCI_VERSION,
    SUCCESS,
    SYSTEM_OFF,
    SYSTEM_RESET,
)
from cpuplug.vmm.psci import CpuOnResult, Psci
from tests.harness.vmm import VmmProcess


class Power(enum.Enum):
    ON = 0
    OFF = 1
    ON_PENDING = 2


class FakeTable:
    """A vCPU table: plugged flags and power states under one lock, as VcpuSet has."""

    def __init__(self, m: int, plugged: set[int]) -> None:
        self.m = m
        self.plugged = set(plugged)
        self.power = {i: Power.OFF for i in range(m)}
        self.power[0] = Power.ON
        self.started: list[tuple[int, int, int]] = []
        self.offed: list[int] = []
        self._lock = threading.Lock()

    def index_of_mpidr(self, value: int) -> int | None:
        index = cpu_index_of_mpidr(value)
        return index if index is not None and index < self.m else None

    def power_state(self, index: int) -> Power:
        with self._lock:
            return self.power[index]

    def cpu_on(self, index: int, entry: int, context: int) -> CpuOnResult:
        with self._lock:
            if index not in self.plugged:
                return "denied"
            if self.power[index] is Power.ON:
                return "already_on"
            if self.power[index] is Power.ON_PENDING:
                return "on_pending"
            self.power[index] = Power.ON_PENDING
            self.started.append((index, entry, context))
            return "started"

    def cpu_off(self, index: int) -> None:
        with self._lock:
            self.power[index] = Power.OFF
            self.offed.append(index)

    def thread_runs(self, index: int) -> None:
        """What the vCPU thread does when it takes the start: ON_PENDING → ON."""
        with self._lock:
            self.power[index] = Power.ON


def make(m: int = 8, plugged: set[int] | None = None) -> tuple[Psci, FakeTable, list[str]]:
    table = FakeTable(m, {0, 1, 2} if plugged is None else plugged)
    calls: list[str] = []
    psci = Psci(
        table, system_off=lambda: calls.append("off"), system_reset=lambda: calls.append("reset")
    )
    return psci, table, calls


def test_version_is_1_1() -> None:
    psci, _, _ = make()
    assert psci.call(0, PSCI_VERSION) == 0x10001


def test_cpu_on_policy() -> None:
    psci, table, _ = make(m=8, plugged={0, 1, 2})
    assert psci.call(0, CPU_ON_64, mpidr(5), 0x1000, 7) == DENIED  # not plugged
    assert psci.call(0, CPU_ON_64, 0x10, 0, 0) == INVALID_PARAMS  # Aff0 = 16: no such vCPU
    assert psci.call(0, CPU_ON_64, mpidr(8), 0, 0) == INVALID_PARAMS  # index ≥ M
    assert psci.call(0, CPU_ON_64, mpidr(0), 0, 0) == ALREADY_ON
    assert psci.call(0, CPU_ON_64, mpidr(2), 0xFFFF_0000_1234_5678, 9) == SUCCESS
    assert table.started == [(2, 0xFFFF_0000_1234_5678, 9)]  # entry passed uninterpreted
    assert psci.call(0, CPU_ON_64, mpidr(2), 0, 0) == ON_PENDING
    table.thread_runs(2)
    assert psci.call(1, CPU_ON_64, mpidr(2), 0, 0) == ALREADY_ON
    assert len(table.started) == 1


def test_cpu_on_smc32_truncates_arguments() -> None:
    psci, table, _ = make(m=20, plugged={0, 17})
    garbage = 0xDEAD_0000_0000_0000
    assert psci.call(0, CPU_ON_64, garbage | mpidr(17), 0, 0) == INVALID_PARAMS
    assert psci.call(0, CPU_ON_32, garbage | mpidr(17), garbage | 0x4000, 3) == SUCCESS
    assert table.started == [(17, 0x4000, 3)]


def test_cpu_off_stops_the_caller() -> None:
    psci, table, _ = make()
    table.thread_runs(1)
    with pytest.raises(VcpuStop):
        psci.call(1, CPU_OFF)
    assert table.offed == [1]
    assert psci.call(0, AFFINITY_INFO_64, mpidr(1), 0) == 1


def test_affinity_info_reports_on_off_pending() -> None:
    psci, _table, _ = make()
    assert psci.call(1, AFFINITY_INFO_64, mpidr(0), 0) == 0
    assert psci.call(0, AFFINITY_INFO_32, mpidr(1), 0) == 1
    assert psci.call(0, AFFINITY_INFO_64, mpidr(6), 0) == 1  # unplugged: OFF
    psci.call(0, CPU_ON_64, mpidr(1), 0, 0)
    assert psci.call(0, AFFINITY_INFO_64, mpidr(1), 0) == 2
    assert psci.call(0, AFFINITY_INFO_64, mpidr(1), 1) == INVALID_PARAMS
    assert psci.call(0, AFFINITY_INFO_64, 0xFFFF, 0) == INVALID_PARAMS


def test_system_off_and_reset_call_the_machine_and_do_not_return() -> None:
    psci, _, calls = make()
    with pytest.raises(VcpuStop):
        psci.call(2, SYSTEM_OFF)
    with pytest.raises(VcpuStop):
        psci.call(0, SYSTEM_RESET)
    assert calls == ["off", "reset"]


def test_features() -> None:
    psci, _, _ = make()
    for fid in (
        PSCI_VERSION,
        CPU_OFF,
        CPU_ON_32,
        CPU_ON_64,
        AFFINITY_INFO_32,
        AFFINITY_INFO_64,
        SYSTEM_OFF,
        SYSTEM_RESET,
        PSCI_FEATURES,
    ):
        assert psci.call(0, PSCI_FEATURES, fid) == SUCCESS, hex(fid)
    for fid in (CPU_SUSPEND_64, MIGRATE_INFO_TYPE, 0x8000_0000, 0):
        assert psci.call(0, PSCI_FEATURES, fid) == NOT_SUPPORTED, hex(fid)
    bare = Psci(FakeTable(2, {0}))
    assert bare.call(0, PSCI_FEATURES, SYSTEM_OFF) == NOT_SUPPORTED
    assert bare.call(0, SYSTEM_OFF) == NOT_SUPPORTED
    assert bare.call(0, SYSTEM_RESET) == NOT_SUPPORTED


def test_unknown_functions_and_w0_only() -> None:
    psci, _, _ = make()
    assert psci.call(0, CPU_SUSPEND_64, 0, 0, 0) == NOT_SUPPORTED
    assert psci.call(0, MIGRATE_INFO_TYPE) == NOT_SUPPORTED
    assert psci.call(0, 0xFFFF_FFFF_0000_0000 | PSCI_VERSION) == 0x10001


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.sampled_from(
            [PSCI_VERSION, CPU_ON_32, CPU_ON_64, AFFINITY_INFO_32, AFFINITY_INFO_64, PSCI_FEATURES]
        ),
        st.integers(-(2**65), 2**65),
    ),
    st.integers(-(2**65), 2**65),
    st.integers(-(2**65), 2**65),
    st.integers(-(2**65), 2**65),
)
def test_random_calls_return_psci_codes(x0: int, x1: int, x2: int, x3: int) -> None:
    psci, table, _ = make()
    try:
        result = psci.call(1, x0, x1, x2, x3)
    except VcpuStop:
        assert x0 & 0xFFFF_FFFF in (CPU_OFF, SYSTEM_OFF, SYSTEM_RESET)
        return
    assert result == 0x10001 or -6 <= result <= 2
    assert all(index in table.plugged for index, _e, _c in table.started)


# ---------------------------------------------------------- docs/contract.md §5 literally
# Written from the contract's text (spec-coverage audit, formerly
# tests/e2e/test_spec_coverage.py): every number below is a literal, never a name
# from cpuplug.psci_abi, which guest and VMM share.


def test_psci_abi_numbers_are_the_spec_literals() -> None:
    # Guest and VMM share cpuplug.psci_abi, so a wrong number there would go unnoticed
    # by every test that compares against the module's own names.
    from cpuplug import psci_abi as p

    assert (p.PSCI_VERSION, p.CPU_ON_64, p.CPU_OFF, p.AFFINITY_INFO_64) == (
        0x8400_0000, 0xC400_0003, 0x8400_0002, 0xC400_0004,
    )  # fmt: skip
    assert (p.SYSTEM_OFF, p.SYSTEM_RESET, p.PSCI_FEATURES) == (
        0x8400_0008,
        0x8400_0009,
        0x8400_000A,
    )
    assert p.PSCI_VERSION_1_1 == 0x0001_0001
    codes = [
        p.SUCCESS, p.NOT_SUPPORTED, p.INVALID_PARAMS, p.DENIED, p.ALREADY_ON, p.ON_PENDING,
        p.INTERNAL_FAILURE, p.NOT_PRESENT, p.DISABLED, p.INVALID_ADDRESS,
    ]  # fmt: skip
    assert codes == [0, -1, -2, -3, -4, -5, -6, -7, -8, -9]
    assert (p.AFFINITY_ON, p.AFFINITY_OFF, p.AFFINITY_ON_PENDING) == (0, 1, 2)


@pytest.mark.slow
def test_psci_codes_over_hvc(vmm: Callable[..., VmmProcess]) -> None:
    """The real ``cpuplug vmm`` process; the probe kernel makes the HVCs on vCPU 0."""
    probe = vmm("cpus=1,maxcpus=4").probe()
    assert probe.hvc(0x8400_000A, 0x8400_0001) == -1  # PSCI_FEATURES(CPU_SUSPEND): unknown
    assert probe.hvc(0x8400_000A, 0x1234_5678) == -1
    assert probe.hvc(0x8400_000A, 0xC400_0003) == 0  # CPU_ON is implemented
    assert probe.hvc(0xC400_0003, 0x10, 0x4000, 0) == -2  # MPIDR Aff0 = 16: no such vCPU
    assert probe.hvc(0xC400_0003, 0x4, 0x4000, 0) == -2  # vCPU 4 with maxcpus=4
    assert probe.hvc(0xC400_0003, 0x3, 0x4000, 0) == -3  # possible but unplugged: DENIED
    assert probe.hvc(0xC400_0003, 0x0, 0x4000, 0) == -4  # the caller itself
    assert probe.hvc(0xC400_0004, 0x0, 0) == 0  # AFFINITY_INFO: ON
    assert probe.hvc(0xC400_0004, 0x3, 0) == 1  # OFF

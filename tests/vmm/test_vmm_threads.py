"""The real ``cpuplug vmm`` process: OSPM by register writes, PSCI, and thread accounting.

Each test starts the VMM process with the probe kernel (``tests/harness/vmm_test_kernel.py``),
drives QMP with the official ``qemu.qmp`` client, and plays the guest's AML through
the probe: MMIO loads/stores and HVCs executed on the boot vCPU. Thread counts are
read from ``/proc/<vmm pid>/task`` (docs/contract.md §1: a host thread per plugged vCPU only).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest

from cpuplug.acpi.virt import CPUHP_BASE, GED_BASE, GED_GSI, mpidr
from cpuplug.psci_abi import AFFINITY_INFO_64, CPU_ON_64, PSCI_VERSION
from tests.harness.qmp_helpers import next_event, qmp_connect
from tests.harness.vmm import ProbeClient, VmmProcess, walk_tables
from tests.harness.vmm_test_kernel import CONTEXT_CPU_OFF

pytestmark = pytest.mark.slow

SELECTOR, FLAGS, COMMAND, DATA = 0x0, 0x4, 0x5, 0x8
TIMEOUT = 15.0

FIXED_OVERHEAD = 2
"""Threads of the VMM process that are not vCPUs: the main (asyncio/QMP) thread and
the agent channel's single relay thread."""


class Ospm:
    """The guest's AML, register write by register write, through the probe."""

    def __init__(self, probe: ProbeClient) -> None:
        self.p = probe

    def select(self, index: int) -> None:
        self.p.store(CPUHP_BASE + SELECTOR, 4, index)

    def flags(self, index: int) -> int:
        self.select(index)
        return self.p.load(CPUHP_BASE + FLAGS, 1)

    def control(self, index: int, value: int) -> None:
        self.select(index)
        self.p.store(CPUHP_BASE + FLAGS, 1, value)

    def search_from(self, index: int) -> int:
        self.select(index)
        self.p.store(CPUHP_BASE + COMMAND, 1, 0)
        return self.p.load(CPUHP_BASE + DATA, 4)

    def ost(self, index: int, event: int, status: int) -> None:
        self.select(index)
        self.p.store(CPUHP_BASE + COMMAND, 1, 1)
        self.p.store(CPUHP_BASE + DATA, 4, event)
        self.p.store(CPUHP_BASE + COMMAND, 1, 2)
        self.p.store(CPUHP_BASE + DATA, 4, status)

    def esel(self) -> int:
        return self.p.load(GED_BASE, 4)

    def wait_irq(self, intid: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while intid not in self.p.irqs():
            assert time.monotonic() < deadline, f"INTID {intid} never taken"


def wait_threads(process: VmmProcess, expected: int) -> int:
    """Poll /proc until the VMM has ``expected`` threads (an ended thread leaves
    /proc asynchronously; there is no notification to wait on)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        count = len(process.task_ids())
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.005)


def test_hot_add_as_ospm_sees_it(vmm: Callable[..., VmmProcess]) -> None:
    """device_add: insert + enabled + present, ESEL 0x8, GSI 41 taken by vCPU 0;
    the command-0 search finds it; clearing is one action per write; _OST → event."""
    process = vmm("cpus=1,maxcpus=8")
    os_ = Ospm(process.probe())

    async def run() -> None:
        client = await qmp_connect(process.qmp_path)
        assert os_.flags(3) == 0x20  # present, not enabled: _STA 0x0D
        await client.execute("device_add", {"driver": "max-arm-cpu", "id": "cpu-3", "core-id": 3})
        os_.wait_irq(GED_GSI)
        assert os_.esel() == 0x8
        assert os_.esel() == 0  # read-to-clear
        assert os_.search_from(0) == 3
        assert os_.search_from(6) == 3  # wraps
        assert os_.flags(3) == 0x23  # the search cleared nothing
        os_.control(3, 0x02 | 0x04)  # clear insert (and only that)
        assert os_.flags(3) == 0x21
        assert os_.search_from(0) == 0  # nothing pending: selector stays
        os_.ost(3, 1, 0)
        event = await next_event(client, "ACPI_DEVICE_OST")
        assert event["data"] == {
            "info": {"device": "cpu-3", "slot": "3", "slot-type": "CPU", "source": 1, "status": 0}
        }
        assert set(event["timestamp"]) == {"seconds", "microseconds"}
        status = await client.execute("query-acpi-ospm-status")
        assert status[3] == event["data"]["info"]  # type: ignore[index]
        await client.disconnect()

    asyncio.run(run())


def test_hot_remove_eject_ends_thread_and_names_the_device(
    vmm: Callable[..., VmmProcess],
) -> None:
    process = vmm("cpus=1,maxcpus=4")
    os_ = Ospm(process.probe())

    async def run() -> None:
        client = await qmp_connect(process.qmp_path)
        await client.execute("device_add", {"driver": "max-arm-cpu", "id": "hcpu2", "core-id": 2})
        cpus = await client.execute("query-cpus-fast")
        thread_id = cpus[1]["thread-id"]  # type: ignore[index]
        assert thread_id in process.task_ids()
        await client.execute("device_del", {"id": "hcpu2"})
        assert os_.flags(2) & 0x04  # remove pending
        os_.control(2, 0x04)
        os_.ost(2, 3, 0x84)
        os_.control(2, 0x08)  # _EJ0
        deleted = await next_event(client, "DEVICE_DELETED")
        # QEMU 7.2 named only ".../hcpu2/lapic"; we name the device itself.
        assert deleted["data"] == {"device": "hcpu2", "path": "/machine/peripheral/hcpu2"}
        assert thread_id not in process.task_ids()
        assert os_.flags(2) == 0x20  # present stays, enabled cleared
        hot = await client.execute("query-hotpluggable-cpus")
        assert "qom-path" not in hot[1]  # type: ignore[index]
        await client.disconnect()

    asyncio.run(run())


def test_cpu_on_denied_started_already_on(vmm: Callable[..., VmmProcess]) -> None:
    process = vmm("cpus=1,maxcpus=4")
    probe = process.probe()

    async def run() -> None:
        client = await qmp_connect(process.qmp_path)
        assert probe.hvc(PSCI_VERSION) == 0x0001_0001
        assert probe.hvc(CPU_ON_64, mpidr(2), 0x4000, 7) == -3  # unplugged: DENIED
        await client.execute("device_add", {"driver": "max-arm-cpu", "id": "c2", "core-id": 2})
        assert probe.hvc(CPU_ON_64, mpidr(2), 0x4000, 7) == 0
        deadline = time.monotonic() + TIMEOUT
        while probe.hvc(AFFINITY_INFO_64, mpidr(2), 0) != 0:
            assert time.monotonic() < deadline
        assert probe.started() == [[mpidr(2), 0x4000, 7]]
        assert probe.hvc(CPU_ON_64, mpidr(2), 0x4000, 7) == -4  # ALREADY_ON
        # A secondary that powers itself off: the thread waits, AFFINITY_INFO says OFF.
        await client.execute("device_add", {"driver": "max-arm-cpu", "id": "c3", "core-id": 3})
        assert probe.hvc(CPU_ON_64, mpidr(3), 0, CONTEXT_CPU_OFF) == 0
        deadline = time.monotonic() + TIMEOUT
        while probe.hvc(AFFINITY_INFO_64, mpidr(3), 0) != 1 or len(probe.started()) < 2:
            assert time.monotonic() < deadline
        assert len(process.task_ids()) == 3 + FIXED_OVERHEAD  # vCPU 3 still has its thread
        await client.disconnect()

    asyncio.run(run())


def test_thread_accounting_acpi_mode(vmm: Callable[..., VmmProcess]) -> None:
    """Threads = plugged vCPUs + a fixed overhead, whatever maxcpus is."""
    process = vmm("cpus=1,maxcpus=64")
    os_ = Ospm(process.probe())  # an open agent connection costs no thread
    assert wait_threads(process, 1 + FIXED_OVERHEAD) == 1 + FIXED_OVERHEAD

    async def run() -> None:
        client = await qmp_connect(process.qmp_path)
        for core in (5, 6, 7):
            await client.execute(
                "device_add", {"driver": "max-arm-cpu", "id": f"c{core}", "core-id": core}
            )
        assert len(process.task_ids()) == 4 + FIXED_OVERHEAD
        ids = {c["thread-id"] for c in await client.execute("query-cpus-fast")}  # type: ignore[attr-defined]
        assert len(ids) == 4 and ids <= process.task_ids()
        for core in (5, 6):
            await client.execute("device_del", {"id": f"c{core}"})
            os_.control(core, 0x08)
            await next_event(client, "DEVICE_DELETED")
        assert wait_threads(process, 2 + FIXED_OVERHEAD) == 2 + FIXED_OVERHEAD
        await client.disconnect()

    asyncio.run(run())


def test_thread_accounting_online_offline_mode(vmm: Callable[..., VmmProcess]) -> None:
    """The baseline's density cost (docs/contract.md §9): all M vCPUs have threads from boot."""
    process = vmm("cpus=1,maxcpus=16", mode="online-offline", kernel="none")
    assert wait_threads(process, 16 + FIXED_OVERHEAD) == 16 + FIXED_OVERHEAD

    async def run() -> None:
        client = await qmp_connect(process.qmp_path)
        assert len(await client.execute("query-cpus-fast")) == 16  # type: ignore[arg-type]
        await client.disconnect()

    asyncio.run(run())


def test_unplugged_vcpus_cost_no_thread_at_512(vmm: Callable[..., VmmProcess]) -> None:
    process = vmm("cpus=2,maxcpus=512", kernel="none")
    assert wait_threads(process, 2 + FIXED_OVERHEAD) == 2 + FIXED_OVERHEAD

    async def run() -> None:
        client = await qmp_connect(process.qmp_path)
        hot = await client.execute("query-hotpluggable-cpus")
        assert len(hot) == 512  # type: ignore[arg-type]
        await client.execute("device_add", {"driver": "max-arm-cpu", "id": "top", "core-id": 511})
        assert len(process.task_ids()) == 3 + FIXED_OVERHEAD
        await client.disconnect()

    asyncio.run(run())


def test_tables_in_guest_ram_equal_cpuplug_acpi_tables(
    vmm: Callable[..., VmmProcess], tmp_path: Any
) -> None:
    """The process's guest RAM, walked from the RSDP, holds ``cpuplug acpi tables``' bytes."""
    import subprocess
    import sys

    process = vmm("cpus=2,maxcpus=8")
    probe = process.probe()
    rsdp = probe.op("rsdp")["value"]
    assert isinstance(rsdp, int)
    found = walk_tables(probe.read, rsdp)
    subprocess.run(
        [sys.executable, "-m", "cpuplug", "acpi", "tables", "--smp", "cpus=2,maxcpus=8",
         "--out", str(tmp_path)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    files = {p.stem: p.read_bytes() for p in tmp_path.glob("*.dat")}
    assert found == files


# ---------------------------------------------------- docs/contract.md §1, §4, §7 literally
# Written from the contract's text (spec-coverage audit, formerly
# tests/e2e/test_spec_coverage.py): addresses and bits are literals, never
# cpuplug.acpi.virt's names for them.

SPEC_CPUHP = 0x090C_0000  # §1: CPU hotplug block
SPEC_GED = 0x0908_0000  # §1: GED event selector


def _check_timestamp(event: dict[str, Any], since: float) -> None:
    stamp = event["timestamp"]
    assert set(stamp) == {"seconds", "microseconds"}
    assert isinstance(stamp["seconds"], int) and isinstance(stamp["microseconds"], int)
    assert 0 <= stamp["microseconds"] < 1_000_000
    when = stamp["seconds"] + stamp["microseconds"] / 1e6
    assert since - 1 <= when <= time.time() + 1  # wall-clock time of the event


@pytest.mark.slow
def test_device_del_raises_the_ged_event_and_every_event_carries_a_timestamp(
    vmm: Callable[..., VmmProcess],
) -> None:
    process = vmm("cpus=1,maxcpus=4")
    probe = process.probe()
    since = time.time()

    async def go() -> None:
        client = await qmp_connect(process.qmp_path, "spec-coverage")
        await client.execute("device_add", {"driver": "max-arm-cpu", "id": "c2", "core-id": 2})
        assert probe.load(SPEC_GED, 4) == 0x8 and probe.load(SPEC_GED, 4) == 0  # read clears
        probe.irqs()
        probe.store(SPEC_CPUHP, 4, 2)
        probe.store(SPEC_CPUHP + 4, 1, 0x02)  # OSPM clears the insert
        # device_del returns at once (nobody has ejected yet), marks remove pending and
        # raises the CPU-hotplug GED event with an edge on GSI 41.
        assert await client.execute("device_del", {"id": "c2"}) == {}
        assert probe.load(SPEC_CPUHP + 4, 1) & 0x04
        assert probe.load(SPEC_GED, 4) == 0x8 and probe.load(SPEC_GED, 4) == 0
        deadline = time.monotonic() + TIMEOUT
        irqs: list[int] = []
        while 41 not in irqs and time.monotonic() < deadline:
            irqs += probe.irqs()
        assert 41 in irqs
        probe.store(SPEC_CPUHP + 5, 1, 1)  # cmd 1: OST event
        probe.store(SPEC_CPUHP + 8, 4, 3)
        probe.store(SPEC_CPUHP + 5, 1, 2)  # cmd 2: OST status, emits ACPI_DEVICE_OST
        probe.store(SPEC_CPUHP + 8, 4, 0x84)
        ost = await next_event(client, "ACPI_DEVICE_OST")
        assert ost["data"] == {
            "info": {"device": "c2", "slot": "2", "slot-type": "CPU", "source": 3, "status": 0x84}
        }
        _check_timestamp(ost, since)
        probe.store(SPEC_CPUHP + 4, 1, 0x08)  # eject
        deleted = await next_event(client, "DEVICE_DELETED")
        assert deleted["data"] == {"device": "c2", "path": "/machine/peripheral/c2"}
        _check_timestamp(deleted, since)
        await client.execute("quit")
        shutdown = await next_event(client, "SHUTDOWN")
        _check_timestamp(shutdown, since)
        with contextlib.suppress(EOFError):  # the VMM hung up after quit, as QEMU does
            await client.disconnect()

    asyncio.run(go())
    assert process.wait() == 0


@pytest.mark.slow
def test_memory_map_of_spec_1_as_the_guest_sees_it(vmm: Callable[..., VmmProcess]) -> None:
    # 130 possible vCPUs so that vCPU 123 lives in the second redistributor region.
    probe = vmm("cpus=1,maxcpus=130").probe()
    ram_end = 0x4000_0000 + 256 * 1024 * 1024  # RAM at 0x4000_0000, 256 MiB by default
    probe.store(ram_end - 8, 8, 0x1122_3344_5566_7788)
    assert probe.load(ram_end - 8, 8) == 0x1122_3344_5566_7788
    probe.store(ram_end, 4, 0x55)  # past RAM: nothing there, reads as zero
    assert probe.load(ram_end, 4) == 0
    assert probe.load(0x0800_0000 + 0xFFE8, 4) >> 4 & 0xF == 3  # GICD: GICv3 PIDR2.ArchRev
    for index, frame in ((0, 0x080A_0000), (122, 0x080A_0000 + 122 * 0x2_0000), (123, 1 << 38)):
        affinity = probe.load(frame + 0x8 + 4, 4)  # GICR_TYPER[63:32] = the vCPU's affinity
        assert affinity == ((index // 16) << 8) | (index % 16), index
    assert probe.load(0x0908_0000, 4) == 0  # GED selector: nothing pending
    probe.store(0x090C_0000, 4, 0)  # CPU hotplug block: vCPU 0 is enabled and present
    assert probe.load(0x090C_0004, 1) == 0x21
    probe.store(0x090C_0000, 4, 129)
    assert probe.load(0x090C_0004, 1) == 0x20  # possible, not plugged: present only

"""Contract clauses that no other test pinned down (see docs/spec-coverage.md).

Each test checks a behaviour of docs/contract.md against literal numbers written from
its text, never against the project's own helpers for the same numbers: the MADT
is read byte by byte with the offsets of the ACPI GICC/GICR structures, MPIDRs
are computed here from "Aff1 = i // 16, Aff0 = i % 16", and the QMP checks run
over the wire against a real ``cpuplug vmm`` process with the probe kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from cpuplug.acpi import virt
from cpuplug.runtime.config import RuntimeConfig
from cpuplug.runtime.sandbox import Resources, RunRequest, Runtime
from cpuplug.runtime.sizing import cpus_to_quota, parse_cpus
from cpuplug.runtime.state import process_alive
from tests.harness.guest_fakes import Booted
from tests.harness.qmp_helpers import next_event, qmp_connect
from tests.harness.runtime_fakes import FakeWorld
from tests.harness.vmm_test_kernel import VmmProcess

TIMEOUT = 15.0
CPUHP = 0x090C_0000
GED = 0x0908_0000


# ------------------------------------------------------------------ §2 tables, raw bytes


def _sdt(image: bytes, base: int, address: int) -> bytes:
    """One whole SDT at guest-physical ``address``, its checksum verified (§2)."""
    at = address - base
    (length,) = struct.unpack_from("<I", image, at + 4)
    table = image[at : at + length]
    assert sum(table) & 0xFF == 0, f"{table[:4]!r} checksum"
    return table


def _tables_by_signature(config: virt.MachineConfig) -> dict[str, bytes]:
    """Walk RSDP → XSDT → tables (and FADT → DSDT) by raw offsets."""
    built = virt.build_machine_tables(config)
    image, base = built.image, built.base_address
    rsdp = image[built.rsdp_address - base :][:36]
    assert rsdp[:8] == b"RSD PTR " and rsdp[15] == 2  # §2: RSDP revision 2
    assert sum(rsdp[:20]) & 0xFF == 0 and sum(rsdp) & 0xFF == 0
    (xsdt_address,) = struct.unpack_from("<Q", rsdp, 24)
    xsdt = _sdt(image, base, xsdt_address)
    found = {"XSDT": xsdt}
    for (address,) in struct.iter_unpack("<Q", xsdt[36:]):
        table = _sdt(image, base, address)
        found[table[:4].decode()] = table
    (x_dsdt,) = struct.unpack_from("<Q", found["FACP"], 140)
    found["DSDT"] = _sdt(image, base, x_dsdt)
    return found


def test_xsdt_lists_fadt_madt_gtdt_and_fadt_flags_are_hw_reduced_psci_hvc() -> None:
    found = _tables_by_signature(virt.MachineConfig(cpus=1, maxcpus=4))
    assert {"FACP", "APIC", "GTDT", "DSDT"} <= set(found)
    assert set(found) <= {"XSDT", "FACP", "APIC", "GTDT", "DSDT", "SPCR"}
    fadt = found["FACP"]
    (flags,) = struct.unpack_from("<I", fadt, 112)
    assert flags & (1 << 20)  # HW_REDUCED_ACPI
    (arm_boot,) = struct.unpack_from("<H", fadt, 129)
    assert arm_boot == 0b11  # PSCI_COMPLIANT | PSCI_USE_HVC


def _madt_entries(madt: bytes) -> list[bytes]:
    entries, at = [], 44
    while at < len(madt):
        length = madt[at + 1]
        assert length >= 2
        entries.append(madt[at : at + length])
        at += length
    assert at == len(madt)
    return entries


@pytest.mark.parametrize("mode", ["acpi", "online-offline"])
def test_madt_has_a_gicc_per_possible_vcpu_and_gicr_regions_for_every_frame(
    mode: virt.HotplugMode,
) -> None:
    # 130 possible vCPUs: past Aff1 = 0 (i >= 16) and past the first GICR region (i >= 123).
    maxcpus = 130
    madt = _tables_by_signature(virt.MachineConfig(cpus=3, maxcpus=maxcpus, mode=mode))["APIC"]
    entries = _madt_entries(madt)
    gicd = [e for e in entries if e[0] == 0x0C]
    assert len(gicd) == 1 and struct.unpack_from("<Q", gicd[0], 8)[0] == 0x0800_0000
    giccs = [e for e in entries if e[0] == 0x0B]
    assert len(giccs) == maxcpus
    for i, gicc in enumerate(giccs):
        assert len(gicc) == 80  # docs/contract.md §2 (ACPI 6.5 says 82 at MADT revision 6; see docs)
        uid, flags = struct.unpack_from("<II", gicc, 8)
        (gicr_base,) = struct.unpack_from("<Q", gicc, 60)
        (mpidr,) = struct.unpack_from("<Q", gicc, 68)
        assert uid == i
        assert mpidr == ((i // 16) << 8) | (i % 16), i
        assert gicr_base == 0
        if mode == "acpi":
            # vCPU 0 Enabled; every other one (cold-plugged 1 and 2 too) Online Capable only
            assert flags == (0b0001 if i == 0 else 0b1000), i
        else:
            assert flags == 0b0001, i
    assert giccs[16][68:70] == b"\x00\x01" and giccs[123][68:70] == b"\x0b\x07"
    gicrs = [struct.unpack_from("<QI", e, 4) for e in entries if e[0] == 0x0E and len(e) == 16]
    assert len(gicrs) == len([e for e in entries if e[0] == 0x0E])
    # 123 frames of 128 KiB at 0x080A_0000, the other 7 in the second region.
    assert gicrs == [(0x080A_0000, 0xF6_0000), (0x40_0000_0000, 7 * 0x2_0000)]


# ------------------------------------------------------------------ §7 QMP over the wire


def _check_timestamp(event: dict[str, Any], since: float) -> None:
    stamp = event["timestamp"]
    assert set(stamp) == {"seconds", "microseconds"}
    assert isinstance(stamp["seconds"], int) and isinstance(stamp["microseconds"], int)
    assert 0 <= stamp["microseconds"] < 1_000_000
    when = stamp["seconds"] + stamp["microseconds"] / 1e6
    assert since - 1 <= when <= time.time() + 1  # wall-clock time of the event


@pytest.mark.slow
def test_query_cpus_fast_lists_plugged_vcpus_each_with_its_own_host_thread(
    vmm: Callable[..., VmmProcess],
) -> None:
    process = vmm("cpus=2,maxcpus=4")

    async def go() -> None:
        client = await qmp_connect(process.qmp_path, "spec-coverage")
        await client.execute("device_add", {"driver": "max-arm-cpu", "id": "c3", "core-id": 3})
        cpus: list[dict[str, Any]] = await client.execute("query-cpus-fast")  # type: ignore[assignment]
        hot: list[dict[str, Any]] = await client.execute("query-hotpluggable-cpus")  # type: ignore[assignment]
        await client.disconnect()
        assert [c["cpu-index"] for c in cpus] == [0, 1, 3]  # plugged only, unplugged 2 absent
        by_core = {h["props"]["core-id"]: h for h in hot}
        for cpu in cpus:
            assert set(cpu) >= {"cpu-index", "qom-path", "thread-id", "props", "target"}
            assert cpu["target"] == "aarch64"
            assert cpu["props"] == by_core[cpu["cpu-index"]]["props"]
            assert cpu["qom-path"] == by_core[cpu["cpu-index"]]["qom-path"]
        assert by_core[3]["qom-path"] == "/machine/peripheral/c3"
        threads = [c["thread-id"] for c in cpus]
        assert len(set(threads)) == 3  # one host thread per plugged vCPU
        assert set(threads) <= process.task_ids() - {process.pid}

    asyncio.run(go())


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
        assert probe.load(GED, 4) == 0x8 and probe.load(GED, 4) == 0  # read clears
        probe.irqs()
        probe.store(CPUHP, 4, 2)
        probe.store(CPUHP + 4, 1, 0x02)  # OSPM clears the insert
        # device_del returns at once (nobody has ejected yet), marks remove pending and
        # raises the CPU-hotplug GED event with an edge on GSI 41.
        assert await client.execute("device_del", {"id": "c2"}) == {}
        assert probe.load(CPUHP + 4, 1) & 0x04
        assert probe.load(GED, 4) == 0x8 and probe.load(GED, 4) == 0
        deadline = time.monotonic() + TIMEOUT
        irqs: list[int] = []
        while 41 not in irqs and time.monotonic() < deadline:
            irqs += probe.irqs()
        assert 41 in irqs
        probe.store(CPUHP + 5, 1, 1)  # cmd 1: OST event
        probe.store(CPUHP + 8, 4, 3)
        probe.store(CPUHP + 5, 1, 2)  # cmd 2: OST status, emits ACPI_DEVICE_OST
        probe.store(CPUHP + 8, 4, 0x84)
        ost = await next_event(client, "ACPI_DEVICE_OST")
        assert ost["data"] == {
            "info": {"device": "c2", "slot": "2", "slot-type": "CPU", "source": 3, "status": 0x84}
        }
        _check_timestamp(ost, since)
        probe.store(CPUHP + 4, 1, 0x08)  # eject
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


# ------------------------------------------------------------------ §1 memory map, §5 PSCI


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


# ------------------------------------------------------------------ §3 register block, literally


@pytest.mark.slow
def test_cpu_hotplug_block_offsets_and_commands_by_number(
    vmm: Callable[..., VmmProcess],
) -> None:
    # The unit tests use cpuhp's own names for offsets and commands; here every number
    # is the table's in docs/contract.md §3, written by the guest over MMIO.
    process = vmm("cpus=1,maxcpus=20")
    probe = process.probe()
    probe.store(CPUHP + 0x0, 4, 17)
    probe.store(CPUHP + 0x5, 1, 3)  # command 3: arch id
    assert probe.load(CPUHP + 0x8, 4) == 0x0101  # lower 32 bits: MPIDR Aff1=1, Aff0=1
    assert probe.load(CPUHP + 0x0, 4) == 0  # upper 32 bits
    assert probe.load(CPUHP + 0x5, 1) == 0  # offset 5 reads 0
    probe.store(CPUHP + 0x5, 1, 4)  # not a command: not stored
    assert probe.load(CPUHP + 0x8, 4) == 0x0101
    probe.store(CPUHP + 0x5, 1, 0)  # command 0: nothing pending, selector stays
    assert probe.load(CPUHP + 0x8, 4) == 17
    assert probe.load(CPUHP + 0x0, 4) == 0  # command data 2 under command 0
    assert probe.load(CPUHP + 0x4, 1) == 0x20  # bit5 present, not enabled
    probe.store(CPUHP + 0x0, 4, 20)  # selector = M
    for offset, size in ((0x0, 4), (0x4, 1), (0x5, 1), (0x8, 4)):
        assert probe.load(CPUHP + offset, size) == 0, offset
    probe.store(CPUHP + 0x0, 4, 0)
    probe.store(CPUHP + 0x5, 1, 3)
    probe.store(CPUHP + 0x0, 4, 20)
    probe.store(CPUHP + 0x5, 1, 0)  # dropped: the command stays 3
    probe.store(CPUHP + 0x4, 1, 0x08)  # dropped: nothing is ejected
    probe.store(CPUHP + 0x0, 4, 17)
    assert probe.load(CPUHP + 0x8, 4) == 0x0101
    probe.store(CPUHP + 0x0, 4, 0)
    assert probe.load(CPUHP + 0x4, 1) == 0x21  # vCPU 0: enabled | present


# ------------------------------------------------------------------ §7 QMP wire details


class _RawQmp:
    """A bare QMP socket: what a client other than qemu.qmp may send (any JSON ``id``)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.greeting = json.loads(self.file.readline())

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply: dict[str, Any] = json.loads(self.file.readline())
            if "event" not in reply:
                return reply

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.mark.slow
def test_any_json_id_is_echoed_and_props_must_be_json_integers(
    vmm: Callable[..., VmmProcess],
) -> None:
    process = vmm("cpus=1,maxcpus=4")
    qmp = _RawQmp(process.qmp_path)
    try:
        assert set(qmp.greeting) == {"QMP"}
        assert set(qmp.greeting["QMP"]) == {"version", "capabilities"}
        assert qmp.greeting["QMP"]["capabilities"] == []
        assert qmp.call({"execute": "qmp_capabilities", "id": 7}) == {"return": {}, "id": 7}
        for id_ in ({"a": [1, None]}, [3], 2.5, "x"):
            ok = qmp.call({"execute": "query-status", "id": id_})
            assert ok["id"] == id_ and "return" in ok
            bad = qmp.call({"execute": "no-such-command", "id": id_})
            assert bad["id"] == id_ and bad["error"]["class"] == "CommandNotFound"
        for value in (True, 1.0, "1", None, [1]):
            reply = qmp.call(
                {
                    "execute": "device_add",
                    "arguments": {"driver": "max-arm-cpu", "id": "c", "core-id": value},
                }
            )
            assert reply["error"]["class"] == "GenericError", value
            assert "core-id" in reply["error"]["desc"], value
        hot = qmp.call({"execute": "query-hotpluggable-cpus"})["return"]
        assert [("qom-path" in h) for h in hot] == [False, False, False, True]  # nothing plugged
        added = {"driver": "max-arm-cpu", "id": "c", "core-id": 1}
        assert qmp.call({"execute": "device_add", "arguments": added}) == {"return": {}}
    finally:
        qmp.close()


# ------------------------------------------------------------------ §8/§9 runtime, online/offline


def test_runtime_online_offline_mode_offlines_in_the_guest_but_keeps_every_vcpu(
    tmp_path: Path,
) -> None:
    """``hotplug_mode = "online-offline"``: all M vCPUs from boot, no device_add/del ever;
    a shrink offlines guest CPUs (``OfflineCPUs``), a grow onlines them (``OnlineCPUMem``),
    and the container's cpuset follows (docs/contract.md §8 config key, §9). The vCPUs stay plugged:
    the density cost of the mode."""
    world = FakeWorld()
    try:
        rt = Runtime(
            tmp_path,
            RuntimeConfig(default_maxvcpus=8, hotplug_mode="online-offline"),
            launcher=world.launcher,
            connect_qmp=world.connect_qmp,
            connect_agent=world.connect_agent,
        )
        st = rt.run(RunRequest(["true"], _cpus("2"), name="b1"))
        assert (st.boot_vcpus, st.maxcpus, st.plugged) == (8, 8, list(range(8)))
        assert sorted(world.m.online) == [0, 1, 2]  # booted 8 online, shrunk to target 3
        assert world.agent.cgroups["b1"]["cpuset_cpus"] == "0-2"
        world.m.agent_log.clear()
        rt.update("b1", _cpus("4"))
        assert sorted(world.m.online) == [0, 1, 2, 3, 4]
        assert world.agent.cgroups["b1"]["cpuset_cpus"] == "0-4"
        assert ("OnlineCPUMem", {"nb_cpus": 5}) in world.m.agent_log
        assert not [c for c, _ in world.m.agent_log if c == "OfflineCPUs"]
        world.m.agent_log.clear()
        rt.update("b1", _cpus("1"))
        assert sorted(world.m.online) == [0, 1]  # highest first; CPU 0 stays
        assert world.agent.cgroups["b1"]["cpuset_cpus"] == "0-1"
        assert world.agent.cgroups["b1"]["quota"] == 100000
        assert ("OfflineCPUs", {"nb_cpus": 2}) in world.m.agent_log
        assert not [c for c, _ in world.m.agent_log if c == "OnlineCPUMem"]
        assert not [c for c, _ in world.m.qmp_log if c.startswith("device_")]
        assert sorted(world.m.plugged) == list(range(8))
        assert rt.store.load("b1").plugged == list(range(8))
        # growing to all M: the plugged count already equals the target, yet the
        # guest has only 2 online, so the runtime must still ask it to online more
        rt.update("b1", _cpus("7"))
        assert sorted(world.m.online) == list(range(8))
        assert world.agent.cgroups["b1"]["cpuset_cpus"] == "0-7"
    finally:
        world.cleanup()


@pytest.mark.slow
def test_e2e_online_offline_mode_shrink_offlines_guest_cpus_but_not_vcpu_threads() -> None:
    """The same through ``cpuplug`` with a real VMM and guest (docs/contract.md §9): the guest's
    online list follows the target both ways, every vCPU thread stays in the VMM
    process (density cost), and guest root onlines an offlined vCPU again (security)."""
    root = Path(tempfile.mkdtemp(prefix="cpo", dir="/tmp"))  # short: unix socket paths

    def cli(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "cpuplug", args[0], "--root", str(root), *args[1:]],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
        return proc.stdout

    def guest_online() -> str:
        return cli("exec", "b1", "--", "cat", "/sys/devices/system/cpu/online").strip()

    pid = 0
    try:
        cli("run", "--name", "b1", "--mode", "online-offline", "--max-cpus", "4", "--cpus", "1",
            "--", "sleep", "600")  # fmt: skip
        info = json.loads(cli("inspect", "b1", "--json"))
        pid = info["vmm_pid"]
        tids = {v["thread_id"] for v in info["vcpus"] if v["plugged"]}
        assert len(tids) == 4 and tids <= {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        assert guest_online() == "0-1"  # booted 0-3, target 2
        cli("update", "--cpus", "2.5", "b1")
        assert guest_online() == "0-3"
        cli("update", "--cpus", "1", "b1")
        assert guest_online() == "0-1"
        assert cli("exec", "b1", "--", "cat", "/sys/fs/cgroup/b1/cpuset.cpus").strip() == "0-1"
        assert tids <= {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        line = "echo 1 > /sys/devices/system/cpu/cpu3/online; cat /sys/devices/system/cpu/online"
        assert cli("exec", "b1", "--", "sh", "-c", line).strip() == "0-1,3"
    finally:
        subprocess.run(
            [sys.executable, "-m", "cpuplug", "rm", "--root", str(root), "-f", "b1"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        if pid and process_alive(pid, None):
            os.kill(pid, 9)
        shutil.rmtree(root, ignore_errors=True)
    assert not pid or not process_alive(pid, None)


def _cpus(text: str) -> Resources:
    """Docker's ``--cpus X``: period 100000, quota X·100000 (docs/contract.md §8)."""
    quota, period = cpus_to_quota(parse_cpus(text))
    assert period == 100000 and quota == int(Fraction(text) * 100000)
    return Resources(quota=quota, period=period)


# ------------------------------------------------------------------ §6 guest _OST on failure


def test_hot_add_whose_registration_fails_reports_ost_1_1_and_cpu_stays_unregistered() -> None:
    """docs/contract.md §6: Device Check → ``_OST(1, 0)``, "or 1 on failure". The real guest kernel
    on the in-process machine; registration of cpu2 fails because its sysfs path is taken."""
    vm = Booted(virt.MachineConfig(cpus=2, maxcpus=4))
    try:
        vm.kernel.vfs.register("/sys/devices/system/cpu/cpu2/online", lambda: "x\n")
        vm.machine.device_add("max-arm-cpu", "cpu-2", {"core-id": 2})
        assert vm.ost() == (1, 1)
        assert vm.cpus("enabled") == "0-1"
        vm.kernel.vfs.unregister("/sys/devices/system/cpu/cpu2")
        vm.machine.device_add("max-arm-cpu", "cpu-3", {"core-id": 3})
        assert vm.ost() == (1, 0)  # the next hot-add still works, and its rescan of
        assert vm.cpus("enabled") == "0-3"  # the parent picks up the enabled cpu2 too
    finally:
        vm.close()


# ------------------------------------------------------------------ §7 ACPI_DEVICE_OST slot


def test_ost_slot_is_the_decimal_index_also_past_nine() -> None:
    """``"slot": "<i>"`` is the decimal index: a hex or padded form shows only at i ≥ 10."""
    from cpuplug.vmm.cpuhp import CpuHotplugBlock, OstInfo

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


# ------------------------------------------------------------------ §1/§6 high indices end to end


def test_hot_add_online_and_remove_of_vcpus_10_16_and_123_with_the_real_guest() -> None:
    """The whole chain at indices where the encodings differ: C00A/C010/C07B names, Aff1 ≠ 0
    in the MPIDR that CPU_ON targets, and a redistributor in the second GICR region."""
    vm = Booted(virt.MachineConfig(cpus=1, maxcpus=130))
    try:
        assert vm.cpus("possible") == "0-129" and vm.cpus("enabled") == "0"
        for index in (10, 16, 123):
            vm.machine.device_add("max-arm-cpu", f"cpu-{index}", {"core-id": index})
            info = vm.wait_event("ACPI_DEVICE_OST")["info"]
            assert info == {
                "device": f"cpu-{index}", "slot": str(index), "slot-type": "CPU",
                "source": 1, "status": 0,
            }  # fmt: skip
        assert vm.cpus("enabled") == "0,10,16,123"
        for index in (10, 16, 123):
            vm.kernel.vfs.write(f"/sys/devices/system/cpu/cpu{index}/online", "1\n")
        assert vm.cpus("online") == "0,10,16,123"
        assert vm.machine.power_state(123).value == 0  # PSCI ON: CPU_ON found MPIDR 0x70B
        vm.machine.device_del("cpu-123")
        assert vm.ost() == (3, 0x84)
        assert vm.wait_event("DEVICE_DELETED") == {
            "device": "cpu-123", "path": "/machine/peripheral/cpu-123",
        }  # fmt: skip
        assert vm.ost() == (3, 0)
        assert vm.cpus("online") == "0,10,16" and vm.cpus("enabled") == "0,10,16"
    finally:
        vm.close()

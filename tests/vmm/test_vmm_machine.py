"""The VMM's machine in-process (docs/contract.md §1-§5): hotplug order, eject, PSCI, agent channel.

These tests drive :class:`cpuplug.vmm.machine.VirtMachine` directly and play the
guest's part through the same guest-physical accesses the AML makes. The QMP and
process-level behaviour is in ``test_vmm_qmp.py`` and ``test_vmm_threads.py``.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpuplug.acpi import virt
from cpuplug.acpi.virt import CPUHP_BASE, GED_BASE, MachineConfig, mpidr
from cpuplug.hw import Cpu, Machine
from cpuplug.psci_abi import AFFINITY_INFO_64, CPU_OFF, CPU_ON_64, SYSTEM_OFF
from cpuplug.vmm.machine import (
    KernelLoadError,
    MachineError,
    MachineEvent,
    VirtMachine,
    resolve_kernel,
)
from cpuplug.vmm.vcpu import PowerState
from tests.harness.machine import COMMAND, DATA, FLAGS, SELECTOR, TIMEOUT, RecordingMachine
from tests.harness.vmm import walk_tables

MachineFactory = Callable[..., RecordingMachine]
"""The ``machine`` fixture (tests/conftest.py): a started machine, recording kernel."""


def test_rsdp_walk_finds_the_acpi_tables_command_output(machine: MachineFactory) -> None:
    """The tables in guest RAM are byte-identical to ``cpuplug acpi tables`` (same builder)."""
    import subprocess
    import sys
    import tempfile

    for mode in ("acpi", "online-offline"):
        b = machine(cpus=2, maxcpus=8, mode=mode)
        with tempfile.TemporaryDirectory() as out:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cpuplug",
                    "acpi",
                    "tables",
                    "--smp",
                    "cpus=2,maxcpus=8",
                    "--mode",
                    mode,
                    "--out",
                    out,
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            files = {p.stem: p.read_bytes() for p in Path(out).glob("*.dat")}
        found = walk_tables(b.m.memory.read_bytes, b.m.rsdp_address)
        assert set(found) == set(files) == set(virt.TABLE_ORDER)
        for name, blob in files.items():
            assert found[name] == blob, name


# ----------------------------------------------------------------------------- hot-add


def test_device_add_thread_exists_and_cpu_on_allowed_before_ged_event(
    machine: MachineFactory,
) -> None:
    """docs/contract.md §5: CPU_ON must be possible no later than the GED event is raised."""
    b = machine()
    seen: dict[str, object] = {}
    original = b.m.ged.raise_event

    def spy(bits: int) -> None:
        state = b.m.vcpus.states[3]
        seen["thread_alive"] = state.thread is not None and state.thread.alive
        seen["insert"] = b.m.cpuhp.slot_state(3).inserting
        seen["cpu_on"] = b.cpu_on(3)
        original(bits)

    b.m.ged.raise_event = spy  # type: ignore[method-assign]
    b.m.device_add("max-arm-cpu", "cpu-3", {"core-id": 3})
    assert seen == {"thread_alive": True, "insert": True, "cpu_on": 0}
    assert isinstance(b.m.vcpus.states[3].thread, Cpu)  # what the guest is handed
    assert b.kernel.started.get(timeout=TIMEOUT) == (mpidr(3), 0x8000, 0)


def test_device_add_sets_insert_esel_and_pulses_gsi41(machine: MachineFactory) -> None:
    b = machine()
    assert b.flags(3) == 0x20  # present, not enabled
    b.m.device_add("max-arm-cpu", "cpu-3", {"core-id": 3})
    assert b.kernel.irqs.get(timeout=TIMEOUT) == virt.GED_GSI
    assert b.esel() == 0x8
    assert b.esel() == 0  # read-to-clear
    assert b.flags(3) == 0x23  # present | insert | enabled
    # The command-0 search from slot 0 finds it and leaves the flag set.
    b.select(0)
    b.m.memory.store(CPUHP_BASE + COMMAND, 1, 0)
    assert b.m.memory.load(CPUHP_BASE + DATA, 4) == 3
    assert b.m.memory.load(CPUHP_BASE + FLAGS, 1) == 0x23
    # Searching again from 5 wraps around to it.
    b.select(5)
    b.m.memory.store(CPUHP_BASE + COMMAND, 1, 0)
    assert b.m.memory.load(CPUHP_BASE + DATA, 4) == 3


def test_control_write_is_one_action_per_write(machine: MachineFactory) -> None:
    b = machine()
    b.m.device_add("max-arm-cpu", "cpu-2", {"core-id": 2})
    b.m.device_del("cpu-2")
    assert b.flags(2) == 0x27  # present | remove | insert | enabled
    b.control(2, 0x06 | 0x08)  # insert wins; remove and eject untouched
    assert b.flags(2) == 0x25
    b.control(2, 0x04 | 0x08)  # remove wins over eject
    assert b.flags(2) == 0x21
    assert b.m.vcpus.is_plugged(2)
    b.control(2, 0x08)
    assert b.event("DEVICE_DELETED").data == {
        "device": "cpu-2",
        "path": "/machine/peripheral/cpu-2",
    }


def test_eject_ends_thread_emits_device_deleted_keeps_present(
    machine: MachineFactory,
) -> None:
    b = machine(cpus=2)
    b.m.device_add("max-arm-cpu", "cpu-5", {"core-id": 5})
    thread = b.m.vcpus.states[5].thread
    assert thread is not None and thread.alive
    b.m.device_del("cpu-5")
    b.control(5, 0x04)  # the scan's acknowledgement
    b.control(5, 0x08)  # _EJ0
    event = b.event("DEVICE_DELETED")
    assert event.data == {"device": "cpu-5", "path": "/machine/peripheral/cpu-5"}
    assert not thread.alive
    assert b.flags(5) == 0x20  # present stays; _STA reads 0x0D
    assert [c["cpu-index"] for c in b.m.query_cpus_fast()] == [0, 1]
    entry = next(e for e in b.m.query_hotpluggable_cpus() if e["props"]["core-id"] == 5)
    assert "qom-path" not in entry


def test_replugging_a_removed_slot_works_repeatedly(machine: MachineFactory) -> None:
    """QEMU 7.2 aborted ("corrupted double-linked list") on the first re-plug."""
    b = machine(maxcpus=4)
    thread_ids = set()
    for _ in range(6):
        b.m.device_add("max-arm-cpu", "hcpu1", {"core-id": 1})
        assert b.cpu_on(1) == 0
        b.kernel.started.get(timeout=TIMEOUT)
        thread_ids.add(b.m.vcpus.states[1].thread_id)
        b.m.device_del("hcpu1")
        b.control(1, 0x08)  # the guest ejects even a running vCPU: it must still end
        assert b.event("DEVICE_DELETED").data["device"] == "hcpu1"
        assert not b.m.vcpus.is_plugged(1)
    assert len(thread_ids) == 6  # a fresh host thread per plug
    assert b.m.vcpus.live_threads() == 1


def test_boot_cpu_and_unplugged_slot_ignore_eject(machine: MachineFactory) -> None:
    b = machine()
    b.control(0, 0x08)
    b.control(4, 0x08)
    assert b.m.vcpus.is_plugged(0) and b.m.vcpus.live_threads() == 1
    assert b.events.empty()


# ----------------------------------------------------------------------------- PSCI


def test_cpu_on_denied_unplugged_starts_plugged_already_on(machine: MachineFactory) -> None:
    b = machine()
    assert b.cpu_on(2) == -3  # DENIED: the host has not given the guest vCPU 2
    assert b.m.psci.call(0, CPU_ON_64, 0x7777, 0, 0) == -2  # no such MPIDR
    b.m.device_add("max-arm-cpu", "cpu-2", {"core-id": 2})
    assert b.cpu_on(2, entry=0x1234, context=99) == 0
    assert b.kernel.started.get(timeout=TIMEOUT) == (mpidr(2), 0x1234, 99)
    assert b.m.psci.call(0, AFFINITY_INFO_64, mpidr(2), 0) == 0
    assert b.cpu_on(2) == -4  # ALREADY_ON


def test_cpu_off_returns_thread_to_waiting_and_cpu_on_restarts_it(
    machine: MachineFactory,
) -> None:
    b = machine()
    b.kernel.behaviour = lambda cpu, entry, context: cpu.hvc(CPU_OFF) if context == 1 else None
    b.m.device_add("max-arm-cpu", "cpu-1", {"core-id": 1})
    native = b.m.vcpus.states[1].thread_id
    assert b.cpu_on(1, context=1) == 0
    b.kernel.started.get(timeout=TIMEOUT)
    wait_for(lambda: b.m.power_state(1) is PowerState.OFF)
    assert b.m.psci.call(0, AFFINITY_INFO_64, mpidr(1), 0) == 1
    thread = b.m.vcpus.states[1].thread
    assert thread is not None and thread.alive  # powered off, not ended
    assert b.cpu_on(1, context=2) == 0
    assert b.kernel.started.get(timeout=TIMEOUT)[2] == 2
    assert b.m.vcpus.states[1].thread_id == native  # the same host thread


def test_vmm_stop_powers_off_and_cpu_on_restarts(machine: MachineFactory) -> None:
    b = machine()
    b.m.device_add("max-arm-cpu", "cpu-1", {"core-id": 1})
    assert b.cpu_on(1) == 0
    b.kernel.started.get(timeout=TIMEOUT)
    b.m.vcpus.stop(1)  # VcpuStop out of the guest's WFI
    wait_for(lambda: b.m.power_state(1) is PowerState.OFF)
    assert b.m.vcpus.live_threads() == 2
    assert b.cpu_on(1) == 0
    b.kernel.started.get(timeout=TIMEOUT)


def test_eject_stops_a_vcpu_that_only_touches_memory(machine: MachineFactory) -> None:
    """VcpuStop also comes out of loads/stores, so a guest spinning on memory still ends."""
    b = machine()
    spinning = threading.Event()

    def spin(cpu: Cpu, entry: int, context: int) -> None:
        spinning.set()
        while True:
            b.m.memory.load(virt.RAM_BASE, 8)

    b.kernel.behaviour = spin
    b.m.device_add("max-arm-cpu", "cpu-1", {"core-id": 1})
    thread = b.m.vcpus.states[1].thread
    assert b.cpu_on(1) == 0
    assert spinning.wait(TIMEOUT)
    b.m.device_del("cpu-1")
    b.control(1, 0x08)
    assert b.event("DEVICE_DELETED").data["device"] == "cpu-1"
    assert thread is not None and not thread.alive
    assert not os.path.exists(f"/proc/self/task/{thread.native_id}")


def test_guest_exception_stops_the_vcpu_not_the_machine(
    machine: MachineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    b = machine()

    def crash(cpu: Cpu, entry: int, context: int) -> None:
        raise RuntimeError("guest bug")

    b.kernel.behaviour = crash
    b.m.device_add("max-arm-cpu", "cpu-1", {"core-id": 1})
    with caplog.at_level(logging.ERROR, logger="cpuplug.vmm.vcpu"):
        assert b.cpu_on(1) == 0
        b.kernel.started.get(timeout=TIMEOUT)
        wait_for(lambda: b.m.power_state(1) is PowerState.OFF)
    assert any("guest code raised" in r.message for r in caplog.records)
    b.m.device_add("max-arm-cpu", "cpu-2", {"core-id": 2})  # still serving
    assert b.m.vcpus.live_threads() == 3


def test_guest_system_off_requests_shutdown(machine: MachineFactory) -> None:
    b = machine()
    b.kernel.behaviour = lambda cpu, entry, context: cpu.hvc(SYSTEM_OFF) and None
    b.m.device_add("max-arm-cpu", "cpu-1", {"core-id": 1})
    b.cpu_on(1)
    assert b.event("SHUTDOWN").data == {"guest": True, "reason": "guest-shutdown"}
    assert b.m.shutdown_requested.wait(TIMEOUT)
    assert b.m.run_state == "shutdown"


def test_online_offline_mode_plugs_every_vcpu_and_lets_the_guest_on(
    machine: MachineFactory,
) -> None:
    b = machine(cpus=2, maxcpus=6, mode="online-offline")
    assert b.m.vcpus.live_threads() == 6
    assert len(b.m.query_cpus_fast()) == 6
    assert b.cpu_on(5) == 0  # the security cost of docs/contract.md §9: any vCPU can be brought up
    with pytest.raises(MachineError, match="online-offline"):
        b.m.device_del("/machine/unattached/device[5]")
    with pytest.raises(MachineError, match="already plugged"):
        b.m.device_add("max-arm-cpu", "x", {"core-id": 3})


def test_racing_management_and_guest_keep_vmm_state_consistent(
    machine: MachineFactory,
) -> None:
    """device_add/device_del from one thread, eject writes and CPU_ON from two "guest"
    threads, all at once: afterwards threads, vCPU table and hotplug block agree."""
    import random

    b = machine(maxcpus=6)
    stop = threading.Event()
    errors: list[BaseException] = []

    deleted: list[MachineEvent] = []  # list.append is atomic: listeners run on vCPU threads
    b.m.add_event_listener(lambda e: deleted.append(e) if e.name == "DEVICE_DELETED" else None)

    def management(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(20000):  # until enough adds met ejects, with a bound
            if len(deleted) >= 25:
                break
            slot = rng.randrange(1, 6)
            try:
                if rng.random() < 0.6:
                    b.m.device_add("max-arm-cpu", f"c{slot}", {"core-id": slot})
                else:
                    b.m.device_del(f"c{slot}")
            except MachineError:
                pass  # plugged / not plugged / being ejected: the machine says no
        stop.set()

    def guest(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                slot = rng.randrange(1, 6)
                if rng.random() < 0.5:
                    assert b.cpu_on(slot) in (0, -3, -4, -5)
                else:
                    # Not the AML's locking on purpose: two guest threads race here.
                    b.m.memory.store(CPUHP_BASE + SELECTOR, 4, slot)
                    b.m.memory.store(CPUHP_BASE + FLAGS, 1, 0x08)
        except BaseException as exc:  # reported below, not swallowed
            errors.append(exc)

    workers = [threading.Thread(target=management, args=(1,))] + [
        threading.Thread(target=guest, args=(seed,)) for seed in (2, 3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(TIMEOUT)
    assert not errors
    plugged = {s.index for s in b.m.vcpus.states if s.plugged}
    assert plugged == {i for i in range(6) if b.m.cpuhp.is_enabled(i)}
    wait_for(lambda: b.m.vcpus.live_threads() == len(plugged))
    assert len(deleted) >= 25


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("driver", "device_id", "props", "message"),
    [
        ("foo", "c", {"core-id": 1}, "'foo' is not a valid device model name"),
        ("host-arm-cpu", "c", {"core-id": 1}, "expected cpu type: 'max-arm-cpu'"),
        (
            "max-arm-cpu",
            "c",
            {"core-id": "1"},
            "Invalid parameter type for 'core-id', expected: integer",
        ),
        ("max-arm-cpu", "c", {"core-id": True}, "expected: integer"),
        ("max-arm-cpu", "c", {"core-id": 1.0}, "expected: integer"),
        ("max-arm-cpu", "c", {}, "core-id property is not set"),
        ("max-arm-cpu", "c", {"core-id": 8}, "must be in range 0..7"),
        ("max-arm-cpu", "c", {"core-id": -1}, "must be in range 0..7"),
        ("max-arm-cpu", "c", {"core-id": 1, "socket-id": 1}, "socket-id"),
        ("max-arm-cpu", "c", {"core-id": 1, "node-id": 0}, "'max-arm-cpu.node-id' not found"),
        ("max-arm-cpu", "1bad", {"core-id": 1}, "expects an identifier"),
        ("max-arm-cpu", "c", {"core-id": 0}, "already plugged"),
        ("max-arm-cpu", "taken", {"core-id": 2}, "Duplicate device ID 'taken'"),
    ],
)
def test_device_add_refuses_bad_requests_and_changes_nothing(
    machine: MachineFactory,
    driver: str,
    device_id: str,
    props: dict[str, object],
    message: str,
) -> None:
    b = machine()
    b.m.device_add("max-arm-cpu", "taken", {"core-id": 5})
    b.kernel.irqs.get(timeout=TIMEOUT)
    esel = b.esel()
    with pytest.raises(MachineError, match=message.replace("(", r"\(").replace(".", r"\.")):
        b.m.device_add(driver, device_id, props)
    assert b.m.vcpus.plugged_count() == 2 and b.m.vcpus.live_threads() == 2
    assert esel == 0x8 and b.esel() == 0  # no event raised by the refused request
    b.m.device_add("max-arm-cpu", "ok", {"core-id": 6})  # still works


def test_device_del_refuses_boot_cpu_and_unknown_ids(machine: MachineFactory) -> None:
    b = machine(cpus=2)
    with pytest.raises(MachineError, match="Boot CPU is unpluggable"):
        b.m.device_del("/machine/unattached/device[0]")
    with pytest.raises(MachineError, match="Device 'nope' not found"):
        b.m.device_del("nope")
    b.m.device_del("/machine/unattached/device[1]")  # a cold-plugged one can go
    assert b.m.cpuhp.slot_state(1).removing


def test_random_register_writes_never_break_the_machine(machine: MachineFactory) -> None:
    """Any value, any width, any offset of the GED and hotplug block (docs/contract.md §3, §4)."""
    b = machine(cpus=2, maxcpus=4)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(
            st.tuples(
                st.sampled_from([GED_BASE, CPUHP_BASE]),
                st.integers(0, 15),
                st.sampled_from([1, 2, 4, 8]),
                st.integers(0, 2**64 - 1),
                st.booleans(),
            ),
            max_size=20,
        )
    )
    def poke(accesses: list[tuple[int, int, int, int, bool]]) -> None:
        for base, offset, size, value, is_read in accesses:
            if is_read:
                assert 0 <= b.m.memory.load(base + offset, size) < 1 << (8 * size)
            else:
                b.m.memory.store(base + offset, size, value & ((1 << (8 * size)) - 1))

    poke()
    assert b.m.vcpus.is_plugged(0)
    free = [s.index for s in b.m.vcpus.states if not s.plugged]
    if free:
        b.m.device_add("max-arm-cpu", "after", {"core-id": free[0]})
    assert b.m.run_state == "running"
    assert len(b.m.query_hotpluggable_cpus()) == 4


# ----------------------------------------------------------------------------- kernels, console


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nocolon", "MODULE:FUNCTION"),
        ("no_such_module_xyz:start", "cannot import"),
        ("json:no_such_function", "has no function"),
    ],
)
def test_bad_kernel_spec_is_a_usage_error(spec: str, message: str) -> None:
    with pytest.raises(KernelLoadError, match=message):
        resolve_kernel(spec)


def printing_kernel(text: bytes) -> Callable[[Machine], object]:
    """A kernel whose boot CPU writes ``text`` to the UART, byte by byte, then idles."""

    def entry(machine: Machine) -> object:
        class Printer:
            def boot_cpu_main(self, cpu: Cpu) -> None:
                for byte in text:
                    machine.memory.store(virt.UART_BASE, 1, byte)
                while True:
                    cpu.wait_for_interrupt(None)

            def secondary_entry(self, cpu: Cpu, entry: int, context: int) -> None:
                pass

        return Printer()

    return entry


def test_console_output_reaches_file_and_host(tmp_path: Path) -> None:
    entry = printing_kernel(b"hello from the guest\n")
    console = tmp_path / "console.log"
    before = threading.active_count()
    with VirtMachine(MachineConfig(), kernel=entry, console_path=console) as m:  # type: ignore[arg-type]
        wait_for(lambda: "hello from the guest\n" in m.console_text())
    assert console.read_text() == "hello from the guest\n"
    assert threading.active_count() == before


def test_system_powerdown_raises_ged_power_button(machine: MachineFactory) -> None:
    b = machine()
    b.m.system_powerdown()
    assert b.kernel.irqs.get(timeout=TIMEOUT) == virt.GED_GSI
    assert b.esel() == 0x2
    assert b.event("POWERDOWN").data == {}


# ----------------------------------------------------------------------------- agent channel


def test_agent_channel_relays_both_ways_and_closes_both_ways(
    machine: MachineFactory,
) -> None:
    b = machine()
    path = b.m.agent.path
    assert path is not None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    threads = threading.active_count()
    host = socket.socket(socket.AF_UNIX)
    host.settimeout(TIMEOUT)
    host.connect(path)
    guest = b.m.agent_channel.accept(TIMEOUT)
    assert guest is not None
    host.sendall(b"ping")
    assert recv_exactly(guest, 4) == b"ping"
    guest.send(b"pong")
    assert host.recv(16) == b"pong"
    assert threading.active_count() == threads  # no thread per connection
    host.close()
    assert guest.recv(16, TIMEOUT) == b""
    with pytest.raises(BrokenPipeError):
        wait_for_raise(lambda: guest.send(b"late"))

    host2 = socket.socket(socket.AF_UNIX)
    host2.settimeout(TIMEOUT)
    host2.connect(path)
    guest2 = b.m.agent_channel.accept(TIMEOUT)
    assert guest2 is not None
    guest2.send(b"bye")
    guest2.close()
    assert recv_all(host2) == b"bye"  # flushed, then EOF
    host2.close()
    assert b.m.agent_channel.accept(0.01) is None


def test_agent_channel_answers_a_half_closed_host(machine: MachineFactory) -> None:
    """``echo request | socat - UNIX:agent.sock``: the host shuts its write side, then reads."""
    b = machine()
    assert b.m.agent.path is not None
    host = socket.socket(socket.AF_UNIX)
    host.settimeout(TIMEOUT)
    host.connect(b.m.agent.path)
    host.sendall(b"request")
    host.shutdown(socket.SHUT_WR)
    guest = b.m.agent_channel.accept(TIMEOUT)
    assert guest is not None
    assert recv_exactly(guest, 7) == b"request"
    assert guest.recv(16, TIMEOUT) == b""
    guest.send(b"reply")
    guest.close()
    assert recv_all(host) == b"reply"
    host.close()


def test_agent_channel_moves_large_data_with_backpressure(machine: MachineFactory) -> None:
    b = machine()
    assert b.m.agent.path is not None
    payload = os.urandom(9 * 1024 * 1024)  # more than both buffer limits
    host = socket.socket(socket.AF_UNIX)
    host.settimeout(TIMEOUT)
    host.connect(b.m.agent.path)
    guest = b.m.agent_channel.accept(TIMEOUT)
    assert guest is not None
    sender = threading.Thread(target=host.sendall, args=(payload,))
    sender.start()
    assert recv_exactly(guest, len(payload)) == payload
    sender.join(TIMEOUT)
    echo = threading.Thread(target=guest.send, args=(payload,))
    echo.start()
    received = bytearray()
    while len(received) < len(payload):
        received += host.recv(1 << 20)
    echo.join(TIMEOUT)
    assert bytes(received) == payload
    host.close()


# ----------------------------------------------------------------------------- helpers


def recv_exactly(stream: object, count: int) -> bytes:
    out = bytearray()
    while len(out) < count:
        chunk = stream.recv(count - len(out), TIMEOUT)  # type: ignore[attr-defined]
        assert chunk, "stream ended early"
        out += chunk
    return bytes(out)


def recv_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(4096):
        out += chunk
    return bytes(out)


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll a condition that has no notification (a thread's power state)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def wait_for_raise(action: Callable[[], None], timeout: float = TIMEOUT) -> None:
    """Repeat ``action`` until it raises (the relay closes the host side asynchronously)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        action()
        time.sleep(0.001)


def test_failing_kernel_entry_is_a_clean_boot_failure(tmp_path: Path) -> None:
    def entry(machine: Machine) -> object:
        raise RuntimeError("bad image")

    before = threading.active_count()
    m = VirtMachine(MachineConfig(), kernel=entry, agent_path=tmp_path / "a.sock")  # type: ignore[arg-type]
    with pytest.raises(MachineError, match="kernel entry point failed: RuntimeError: bad image"):
        m.start()
    assert threading.active_count() == before
    assert not (tmp_path / "a.sock").exists()


def test_qa_agent_channel_never_steals_a_live_socket(tmp_path: Path) -> None:
    """QA: in-process users of the agent channel unlinked a live agent socket (QEMU's
    behaviour); it now shares the QMP server's rule: stale replaced, live refused."""
    from cpuplug.vmm.vsock import AgentChannelDevice, AgentChannelError

    live, stale = tmp_path / "live.sock", tmp_path / "stale.sock"
    owner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        owner.bind(str(live))
        owner.listen(1)
        dead.bind(str(stale))  # bound, never listening: what a crashed VMM leaves
        dev = AgentChannelDevice(live)
        with pytest.raises(AgentChannelError, match="in use by another process"):
            dev.start()
        dev.close()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(live))  # the owner still has its address
        ok = AgentChannelDevice(stale)
        ok.start()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(str(stale))  # ours now
        finally:
            ok.close()
        assert not stale.exists()
    finally:
        owner.close()
        dead.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_qa_console_file_that_fails_is_logged_once_and_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """QA: ``--console /dev/full`` logged a full traceback for every console byte."""
    text = b"line one\nline two\n"
    entry = printing_kernel(text)
    caplog.set_level(logging.DEBUG)
    with VirtMachine(MachineConfig(), kernel=entry, console_path="/dev/full") as m:  # type: ignore[arg-type]
        wait_for(lambda: m.console_text() == text.decode())
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert failures[0].exc_info is None
    assert "/dev/full" in failures[0].getMessage()
    assert len(failures[0].getMessage().splitlines()) == 1

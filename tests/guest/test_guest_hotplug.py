"""CPU hotplug in the guest kernel, booted in-process on the real VirtMachine.

Each test drives the host side through VirtMachine (the methods QMP calls) and
checks the guest through its sysfs tree, its log and the machine's events.
"""

from __future__ import annotations

import contextlib
import errno
import random
import threading
import time
from collections.abc import Callable

import pytest
from qemu.qmp import ExecuteError

from cpuplug import agent_protocol as ap
from cpuplug import psci_abi
from cpuplug.acpi.virt import mpidr
from cpuplug.agent_protocol import parse_cpu_list
from cpuplug.guest import cpu as guest_cpu
from cpuplug.guest.sched import Task, TaskBody
from cpuplug.guest.vfs import GuestOSError
from cpuplug.vmm.vcpu import PowerState
from tests.harness.machine import GuestMachine, wait_until
from tests.harness.vmm import GuestVmm

SYS = "/sys/devices/system/cpu"

GuestMachineFactory = Callable[..., GuestMachine]
"""The ``guest_machine`` fixture (tests/conftest.py): the real guest booted in-process."""


def spinner(stop: threading.Event) -> TaskBody:
    while not stop.is_set():
        x = 0
        for i in range(2000):
            x += i
        yield None
    return 0


def plug(b: GuestMachine, index: int) -> None:
    b.machine.device_add("max-arm-cpu", f"cpu-{index}", {"core-id": index})
    assert b.ost() == (1, 0)


def test_hot_add_registers_but_leaves_cpu_offline(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    assert not vm.kernel.vfs.exists(f"{SYS}/cpu2/online")
    plug(vm, 2)
    assert vm.cpus("enabled") == "0-2"
    assert vm.cpus("online") == "0-1"
    assert vm.cpus("offline") == "2-3"
    assert vm.cpus("present") == "0-3"  # arm64: present never changes
    assert vm.read(f"{SYS}/cpu2/online") == "0\n"
    assert vm.kernel.log.contains("ACPI: CPU2 has been hot-added")
    names = [e.name for e in vm.kernel.events.history()]
    assert "CpuRegistered" in names


def test_online_through_sysfs_runs_tasks_on_new_cpu(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    plug(vm, 2)
    vm.kernel.vfs.write(f"{SYS}/cpu2/online", "1\n")
    assert vm.cpus("online") == "0-2"
    assert vm.read(f"{SYS}/cpu2/online") == "1\n"
    assert vm.kernel.log.contains("CPU2: Booted secondary processor 0x0000000002 [0x000f0510]")
    group = vm.kernel.cgroups.create("only2")
    group.set_cpus(frozenset({2}))
    stop = threading.Event()
    task = vm.kernel.sched.spawn(spinner(stop), group, "spin")
    try:
        wait_until(lambda: task.cpu_time_by_cpu.get(2, 0.0) > 0, what="task on CPU2")
        assert set(task.cpu_time_by_cpu) == {2}
    finally:
        stop.set()
        assert task.wait(10)


def test_online_of_unregistered_cpu_is_absent_and_refused(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    with pytest.raises(GuestOSError) as exc:
        vm.kernel.vfs.write(f"{SYS}/cpu3/online", "1")
    assert exc.value.errno == errno.ENOENT
    with pytest.raises(GuestOSError) as exc:
        vm.kernel.cpu_online(3)
    assert exc.value.errno == errno.ENODEV


def test_denied_cpu_on_is_eperm_and_silent(machine_booted: GuestMachine) -> None:
    """Firmware that says Enabled while PSCI still denies: the write fails with EPERM."""
    vm = machine_booted
    with vm.kernel.cpus.hotplug_locked():
        vm.kernel.cpus.register(3)  # as if _STA had said Enabled
    with pytest.raises(GuestOSError) as exc:
        vm.kernel.vfs.write(f"{SYS}/cpu3/online", "1")
    assert exc.value.errno == errno.EPERM
    assert "Operation not permitted" in str(exc.value)
    assert not vm.kernel.log.contains("failed to boot")
    assert vm.cpus("online") == "0-1"


def test_cpu_that_never_comes_up_is_eio(
    machine_booted: GuestMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = machine_booted
    monkeypatch.setattr(guest_cpu, "CPU_UP_TIMEOUT", 0.3)
    parked = threading.Event()
    real_entry = vm.kernel.secondary_entry

    def stuck(cpu: object, entry: int, context: int) -> None:
        parked.set()
        while True:
            cpu.wait_for_interrupt(None)  # type: ignore[attr-defined]

    monkeypatch.setattr(vm.kernel, "secondary_entry", stuck)
    plug(vm, 2)
    with pytest.raises(GuestOSError) as exc:
        vm.kernel.cpu_online(2)
    assert exc.value.errno == errno.EIO
    assert parked.is_set()
    assert vm.kernel.log.contains("CPU2: failed to come online")
    del real_entry


def test_offline_migrates_tasks_powers_off_and_polls(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    group = vm.kernel.cgroups.create("pinned1")
    group.set_cpus(frozenset({1}))
    stop = threading.Event()
    task = vm.kernel.sched.spawn(spinner(stop), group, "spin")
    try:
        wait_until(lambda: task.cpu_time_by_cpu.get(1, 0.0) > 0, what="task on CPU1")
        vm.kernel.vfs.write(f"{SYS}/cpu1/online", "0")
        assert vm.cpus("online") == "0"
        assert vm.machine.power_state(1) is PowerState.OFF
        assert vm.kernel.log.contains("CPU1: shutdown")
        assert vm.kernel.log.contains("psci: CPU1 killed (polled")
        before = task.cpu_time_by_cpu.get(0, 0.0)
        wait_until(lambda: task.cpu_time_by_cpu.get(0, 0.0) > before, what="migration")
        assert group.effective_cpus() == frozenset({0})
        # and back
        vm.kernel.vfs.write(f"{SYS}/cpu1/online", "1")
        assert vm.cpus("online") == "0-1"
    finally:
        stop.set()
        assert task.wait(10)


def test_last_online_cpu_refuses(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    vm.kernel.cpu_offline(0)
    assert vm.cpus("online") == "1"
    with pytest.raises(GuestOSError) as exc:
        vm.kernel.vfs.write(f"{SYS}/cpu1/online", "0")
    assert exc.value.errno == errno.EBUSY
    vm.kernel.cpu_online(0)  # the boot CPU comes back through secondary_entry
    assert vm.cpus("online") == "0-1"


def test_bad_online_value_is_einval(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    with pytest.raises(GuestOSError) as exc:
        vm.kernel.vfs.write(f"{SYS}/cpu1/online", "maybe")
    assert exc.value.errno == errno.EINVAL


def test_eject_sequence_and_thread_goes_away(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    plug(vm, 2)
    vm.kernel.cpu_online(2)
    stop = threading.Event()
    tasks = [vm.kernel.sched.spawn(spinner(stop), None, f"s{i}") for i in range(3)]
    try:
        wait_until(lambda: vm.kernel.sched.busy_time.get(2, 0.0) > 0, what="CPU2 busy")
        threads_before = vm.machine.vcpus.live_threads()
        vm.machine.device_del("cpu-2")
        assert vm.ost() == (3, 0x84)
        deleted = vm.wait_event("DEVICE_DELETED")
        assert deleted["device"] == "cpu-2"
        assert vm.ost() == (3, 0)
        assert vm.cpus("enabled") == "0-1"
        assert vm.cpus("online") == "0-1"
        assert not vm.kernel.vfs.exists(f"{SYS}/cpu2")
        assert vm.machine.vcpus.live_threads() == threads_before - 1
        progress = [t.cpu_time for t in tasks]
        wait_until(
            lambda: all(t.cpu_time > p for t, p in zip(tasks, progress, strict=True)),
            what="tasks still running",
        )
        names = [e.name for e in vm.kernel.events.history()]
        assert names.index("CpuOffline") < names.index("CpuUnregistered")
        # and the slot can be plugged again
        plug(vm, 2)
        assert vm.cpus("enabled") == "0-2"
    finally:
        stop.set()
        for t in tasks:
            assert t.wait(10)


def test_removing_the_only_online_cpu_is_busy(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    vm.kernel.cpu_offline(0)
    vm.machine.device_del("/machine/unattached/device[1]")
    assert vm.ost() == (3, 0x84)
    assert vm.ost() == (3, 0x82)
    assert vm.cpus("online") == "1"
    assert vm.cpus("enabled") == "0-1"
    assert vm.machine.vcpus.is_plugged(1)
    assert vm.kernel.log.contains("Offline failed.")
    task = vm.kernel.sched.spawn(spinner(threading.Event()), None, "alive")
    wait_until(lambda: task.cpu_time > 0, what="guest still runs tasks")
    task.kill()
    assert task.wait(10)


def test_eject_incomplete_keeps_cpu_registered(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    plug(vm, 2)

    def refuse(index: int) -> None:
        raise RuntimeError("firmware ignores the eject")

    vm.machine.cpuhp._on_eject = refuse
    vm.machine.device_del("cpu-2")
    assert vm.ost() == (3, 0x84)
    assert vm.ost() == (3, 0)  # Linux reports success although nothing was removed
    assert vm.kernel.log.contains("ACPI: \\_SB.CPUS.C002: Eject incomplete - status 0xf")
    assert vm.cpus("enabled") == "0-2"
    assert vm.kernel.vfs.exists(f"{SYS}/cpu2/online")
    assert "EjectIncomplete" in [e.name for e in vm.kernel.events.history()]


def test_present_cleared_after_eject_still_unregisters(
    machine_booted: GuestMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux 6.11 leaks cpuN here ("Changing CPU present bit..."); we warn and unregister."""
    vm = machine_booted
    plug(vm, 2)
    real = vm.kernel.acpi.sta

    def sta(path: str) -> int:
        value = real(path)
        return 0 if path.endswith("C002") and not value & 0x2 else value

    monkeypatch.setattr(vm.kernel.acpi, "sta", sta)
    vm.machine.device_del("cpu-2")
    assert vm.ost() == (3, 0x84)
    assert vm.ost() == (3, 0)
    assert vm.kernel.log.contains("Changing CPU present bit is not supported")
    assert vm.cpus("enabled") == "0-1"


def test_notify_for_unknown_object_gets_ost_failure_at_once(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    del vm.kernel.acpi.devices["\\_SB.CPUS.C003"]  # as if never enumerated
    vm.kernel.acpi.interp.evaluate("\\_SB.CPUS.CTFY", 3, 1)
    assert vm.ost() == (1, 1)


def test_device_check_rescans_parent_for_every_new_cpu(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    vm.machine.device_add("max-arm-cpu", "cpu-2", {"core-id": 2})
    vm.machine.device_add("max-arm-cpu", "cpu-3", {"core-id": 3})
    assert sorted([vm.ost(), vm.ost()]) == [(1, 0), (1, 0)]
    assert vm.cpus("enabled") == "0-3"
    assert vm.cpus("online") == "0-1"


def test_guest_threads_do_not_grow_with_vcpus(guest_machine: GuestMachineFactory) -> None:
    def guest_threads() -> set[str]:
        return {
            t.name
            for t in threading.enumerate()
            if t.name == "kacpi_hotplug" or t.name.startswith("irq/")
        }

    for maxcpus in (2, 16):
        b = guest_machine(cpus=2, maxcpus=maxcpus)
        try:
            assert guest_threads() == {"kacpi_hotplug", "irq/41-ACPI:Ged"}
        finally:
            b.close()  # now, not at teardown: the next machine's threads are counted alone


def test_security_acpi_mode_raw_cpu_on_is_denied(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    assert not vm.kernel.vfs.exists(f"{SYS}/cpu3")
    threads = vm.machine.vcpus.live_threads()
    assert vm.kernel.debug.raw_psci_cpu_on(mpidr(3)) == psci_abi.DENIED
    assert mpidr(3) not in vm.kernel.debug.secondary_entries()
    assert vm.machine.power_state(3) is PowerState.OFF
    assert vm.machine.vcpus.live_threads() == threads
    assert 3 not in vm.kernel.online()


def test_security_online_offline_mode_guest_can_online_any_cpu(
    guest_machine: GuestMachineFactory,
) -> None:
    b = guest_machine(cpus=4, maxcpus=4, mode="online-offline")
    assert b.cpus("online") == "0-3"  # every GICC Enabled: all up at boot
    assert b.cpus("enabled") == "0-3"
    b.kernel.vfs.write(f"{SYS}/cpu3/online", "0")
    assert b.cpus("online") == "0-2"
    b.kernel.vfs.write(f"{SYS}/cpu3/online", "1")  # a guest root just takes it back
    group = b.kernel.cgroups.create("on3")
    group.set_cpus(frozenset({3}))
    stop = threading.Event()
    task: Task = b.kernel.sched.spawn(spinner(stop), group, "on3")
    wait_until(lambda: task.cpu_time_by_cpu.get(3, 0.0) > 0, what="task on CPU3")
    stop.set()
    assert task.wait(10)
    # and raw PSCI works too once it is offline again: the vCPU is plugged
    b.kernel.cpu_offline(3)
    assert b.kernel.debug.raw_psci_cpu_on(mpidr(3)) == psci_abi.SUCCESS
    wait_until(lambda: 3 in b.kernel.online(), what="raw CPU_ON brings CPU3 up")


def test_power_button_powers_off(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    vm.machine.system_powerdown()
    vm.wait_event("SHUTDOWN")
    assert vm.kernel.log.contains("reboot: Power down")


# =========================================================================== end to end
# The real VMM process (``cpuplug vmm``, whose default kernel is this guest), driven
# by the official qemu.qmp client and by the agent over its socket.


@pytest.mark.slow
def test_e2e_add_online_and_use_then_remove(guest_booted: GuestVmm) -> None:
    vmm = guest_booted
    vmm.agent(ap.Method.CREATE_CONTAINER,
              {"container_id": "load", "cmd": ["stress", "--cpu", "2", "--timeout", "60"]})
    vmm.agent(ap.Method.START_CONTAINER, {"container_id": "load"})
    vmm.cmd("device_add", {"driver": "max-arm-cpu", "id": "cpu-1", "core-id": 1})
    assert vmm.ost() == (1, 0)
    assert vmm.details()["enabled"] == "0-1"
    assert vmm.details()["online"] == "0"
    assert vmm.agent(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 2, "cpu_only": True})["online"] == [0, 1]
    assert vmm.details()["online"] == "0-1"
    first = vmm.cpu_ticks()[1]
    deadline = time.monotonic() + 10
    while vmm.cpu_ticks()[1] <= first + 5 and time.monotonic() < deadline:
        vmm.event_wait(0.05)
    assert vmm.cpu_ticks()[1] > first + 5, "stress did not run on the new CPU"
    threads = vmm.threads()
    vmm.cmd("device_del", {"id": "cpu-1"})
    assert vmm.ost() == (3, 0x84)
    assert vmm.event("DEVICE_DELETED")["device"] == "cpu-1"
    assert vmm.ost() == (3, 0)
    assert vmm.details()["enabled"] == "0"
    assert vmm.threads() == threads - 1
    assert vmm.plugged() == {0}
    usage = vmm.agent(ap.Method.STATS_CONTAINER, {"container_id": "load"})["cpu"]["usage_usec"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = vmm.agent(ap.Method.STATS_CONTAINER, {"container_id": "load"})["cpu"]["usage_usec"]
        if now > usage:
            break
        vmm.event_wait(0.05)
    assert now > usage, "the tasks of the removed CPU stopped running"


@pytest.mark.slow
def test_e2e_security_acpi_mode(guest_booted: GuestVmm) -> None:
    vmm = guest_booted
    r = vmm.sh("echo 1 > /sys/devices/system/cpu/cpu3/online")
    assert r["exit_code"] != 0
    assert "cannot create /sys/devices/system/cpu/cpu3/online" in r["stderr"]
    assert vmm.sh("ls /sys/devices/system/cpu")["stdout"].split().count("cpu3") == 0
    assert vmm.details()["online"] == "0"
    assert vmm.plugged() == {0}


@pytest.mark.slow
def test_e2e_security_online_offline_mode(guest_vmm: Callable[..., GuestVmm]) -> None:
    v = guest_vmm("cpus=4,maxcpus=4", mode="online-offline")
    v.agent(ap.Method.CREATE_CONTAINER, {"container_id": "probe", "cmd": ["true"]})
    assert v.details()["online"] == "0-3"
    assert v.sh("echo 0 > /sys/devices/system/cpu/cpu3/online")["exit_code"] == 0
    assert v.details()["online"] == "0-2"
    # a guest root takes a vCPU back without the host's say
    assert v.sh("echo 1 > /sys/devices/system/cpu/cpu3/online")["exit_code"] == 0
    assert v.details()["online"] == "0-3"


@pytest.mark.slow
def test_e2e_removing_the_only_online_cpu_is_busy(guest_vmm: Callable[..., GuestVmm]) -> None:
    v = guest_vmm("cpus=2,maxcpus=4")
    v.agent(ap.Method.CREATE_CONTAINER, {"container_id": "probe", "cmd": ["true"]})
    r = v.sh("echo 0 > /sys/devices/system/cpu/cpu0/online")
    assert r["exit_code"] == 0, r
    v.cmd("device_del", {"id": "/machine/unattached/device[1]"})
    assert v.ost() == (3, 0x84)
    assert v.ost() == (3, 0x82)
    d = v.details()
    assert (d["online"], d["enabled"]) == ("1", "0-1")
    assert v.plugged() == {0, 1}
    assert v.sh("echo still running")["stdout"] == "still running\n"


@pytest.mark.slow
def test_e2e_storm_of_adds_and_removes_stays_consistent(guest_booted: GuestVmm) -> None:
    """Random adds/removes (and onlining) through QMP; afterwards the guest's
    ``enabled``, the VMM's plugged set and its live vCPU threads agree."""
    vmm = guest_booted
    rng = random.Random(4)
    tasks0, vcpus0 = vmm.thread_ids(), vmm.vcpu_threads()
    others0 = tasks0 - set(vcpus0)
    for _ in range(60):
        slot = rng.randrange(1, 4)
        try:
            if rng.random() < 0.55:
                vmm.cmd("device_add", {"driver": "max-arm-cpu", "id": f"cpu-{slot}",
                                       "core-id": slot})
            else:
                vmm.cmd("device_del", {"id": f"cpu-{slot}"})
        except ExecuteError:
            pass  # already plugged / not plugged / still ejecting: the VMM says no
        if rng.random() < 0.15:
            # online what is registered now; a CPU ejected meanwhile may make it fail
            want = len(parse_cpu_list(vmm.details()["enabled"]))
            with contextlib.suppress(ap.ProtocolError):
                vmm.agent(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": want, "cpu_only": True})
    # Ejects finish asynchronously: poll until the three views agree (bounded).
    deadline = time.monotonic() + 20
    while True:
        vcpus = vmm.vcpu_threads()
        enabled = parse_cpu_list(vmm.details()["enabled"])
        tasks = vmm.thread_ids()
        settled = (
            enabled == set(vcpus.values())
            and set(vcpus) <= tasks
            and tasks - set(vcpus) == others0
        )
        if settled or time.monotonic() > deadline:
            break
        vmm.event_wait(0.05)
    why = (enabled, vcpus, tasks0, vcpus0, tasks, vmm.kmsg()[-3000:])
    assert enabled == set(vcpus.values()), why
    assert set(vcpus) <= tasks, why
    assert tasks - set(vcpus) == others0, why


def test_task_offlining_its_own_cpu_completes_after_its_slice(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    group = vm.kernel.cgroups.create("self1")
    group.set_cpus(frozenset({1}))
    result: list[object] = []

    def body() -> TaskBody:
        yield None
        try:
            vm.kernel.vfs.write(f"{SYS}/cpu1/online", "0")
            result.append("ok")
        except GuestOSError as exc:
            result.append(exc)
        yield None
        return 0

    task = vm.kernel.sched.spawn(body, group, "self-offline")
    assert task.wait(10) and task.exit_code == 0
    assert result == ["ok"]
    wait_until(lambda: vm.cpus("online") == "0", what="CPU1 offline")
    assert vm.machine.power_state(1) is PowerState.OFF


def test_task_blocked_on_hotplug_lock_does_not_deadlock_offline_of_its_cpu(
    machine_booted: GuestMachine,
) -> None:
    """Linux's lock_device_hotplug_sysfs restart: the task gives up (EAGAIN), its CPU goes."""
    vm = machine_booted
    plug(vm, 2)
    group = vm.kernel.cgroups.create("on1")
    group.set_cpus(frozenset({1}))
    started = threading.Event()
    result: list[int] = []

    def body() -> TaskBody:
        yield None
        started.set()
        try:
            vm.kernel.vfs.write(f"{SYS}/cpu2/online", "1")
        except GuestOSError as exc:
            result.append(exc.errno)
        return 0

    with vm.kernel.cpus.hotplug_locked():
        task = vm.kernel.sched.spawn(body, group, "writer")
        assert started.wait(10)
        vm.kernel.cpus.cpu_down_locked(1)  # would wait 5 s and fail if the task held CPU1
    assert task.wait(10)
    assert result == [errno.EAGAIN]
    assert vm.cpus("online") == "0"


def test_acpi_bus_sysfs_status_and_eject_from_the_guest(machine_booted: GuestMachine) -> None:
    """``ACPI0007:NN/status`` is the raw _STA; writing 1 to ``eject`` is the 0x103 path."""
    vm = machine_booted
    dev = "/sys/bus/acpi/devices/ACPI0007:02"
    assert vm.read(f"{dev}/path") == "\\_SB.CPUS.C002\n"
    assert vm.read(f"{dev}/status") == "13\n"  # 0x0D: present, not enabled
    assert not vm.kernel.vfs.exists("/sys/bus/acpi/devices/ACPI0007:00/eject")  # no _EJ0
    plug(vm, 2)
    assert vm.read(f"{dev}/status") == "15\n"
    with pytest.raises(GuestOSError) as exc:
        vm.kernel.vfs.write(f"{dev}/eject", "0")
    assert exc.value.errno == errno.EINVAL
    vm.kernel.vfs.write(f"{dev}/eject", "1\n")
    assert vm.ost() == (3, 0x84)  # in progress: literal 0x03 even here, as Linux
    assert vm.wait_event("DEVICE_DELETED")["device"] == "cpu-2"
    assert vm.ost() == (0x103, 0)
    assert vm.cpus("enabled") == "0-1"


def test_disabled_processor_hotplug_profile_refuses_ejects(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    plug(vm, 2)
    vm.kernel.vfs.write("/sys/firmware/acpi/hotplug/processor/enabled", "0")
    vm.machine.device_del("cpu-2")
    assert vm.ost() == (3, 0x80)  # no "in progress" first
    assert vm.cpus("enabled") == "0-2"
    assert vm.machine.vcpus.is_plugged(2)
    assert vm.kernel.log.contains("Eject disabled")


def test_a_bug_in_hotplug_work_does_not_kill_the_worker(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    def boom() -> None:
        raise RuntimeError("kernel bug")

    vm.kernel.acpi.queue_work(boom)
    plug(vm, 2)  # the next event is still served
    assert vm.kernel.log.contains("BUG: kacpi_hotplug: RuntimeError('kernel bug')")


def test_registration_rolls_back_when_its_sysfs_files_fail(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    vm.kernel.vfs.register(f"{SYS}/cpu3/online", lambda: "x\n")  # squat the path
    with vm.kernel.cpus.hotplug_locked(), pytest.raises(guest_cpu.CpuHotplugError) as exc:
        vm.kernel.cpus.register(3)
    assert exc.value.errno == errno.EEXIST
    assert vm.cpus("enabled") == "0-1"


def test_other_notify_values_are_only_logged(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    vm.kernel.acpi.interp.evaluate("\\_SB.CPUS.CTFY", 2, 2)  # Device Wake
    assert vm.kernel.acpi.wait_idle(10)
    assert vm.kernel.log.contains("ACPI: \\_SB.CPUS.C002: Unsupported event type 0x2")
    assert vm.events.empty()  # no _OST, hence no ACPI_DEVICE_OST


def test_bus_check_rescans_below_the_notified_node(machine_booted: GuestMachine) -> None:
    vm = machine_booted
    vm.kernel.acpi.ged_lines.clear()  # the guest ignores the GED: no scan by itself
    vm.machine.device_add("max-arm-cpu", "cpu-2", {"core-id": 2})
    assert vm.kernel.acpi.wait_idle(10)
    assert vm.cpus("enabled") == "0-1"
    vm.kernel.acpi.interp.evaluate("\\_SB.CPUS.CTFY", 0, 0)  # Notify(C000, Bus Check)
    assert vm.ost() == (0, 0)
    assert vm.cpus("enabled") == "0-1"  # a bus check on C000 rescans C000 only
    vm.kernel.acpi.queue_work(
        lambda: vm.kernel.acpi._hotplug_event(vm.kernel.acpi.devices["\\_SB.CPUS"], 0)
    )
    assert vm.kernel.acpi.wait_idle(10)
    assert vm.cpus("enabled") == "0-2"


def test_offline_request_racing_the_end_of_boot_is_not_lost(
    monkeypatch: pytest.MonkeyPatch, guest_machine: GuestMachineFactory
) -> None:
    """The agent starts before the boot CPU enters its run loop; an offline of CPU0 in
    that window must still take effect (it once hung 5 s and failed with EIO)."""
    from cpuplug.guest.kernel import GuestKernel

    results: list[object] = []

    def racing_agent(self: GuestKernel) -> None:
        def offline0() -> None:
            try:
                self.cpu_offline(0)
                results.append("ok")
            except GuestOSError as exc:
                results.append(exc)

        t = threading.Thread(target=offline0)
        t.start()
        per = self.cpus._cpus[0]
        wait_until(lambda: per.going_down, what="offline request pending")
        results.append(t)

    monkeypatch.setattr(GuestKernel, "_launch_agent", racing_agent)
    b = guest_machine(cpus=2, maxcpus=2, start_agent=True)
    thread = results.pop(0)
    assert isinstance(thread, threading.Thread)
    thread.join(10)
    assert results == ["ok"]
    assert b.cpus("online") == "1"


# ======================================================================= docs/contract.md §1, §6
# Written for the spec-coverage audit (formerly tests/e2e/test_spec_coverage.py).


def test_hot_add_whose_registration_fails_reports_ost_1_1_and_cpu_stays_unregistered(
    machine_booted: GuestMachine,
) -> None:
    """docs/contract.md §6: Device Check → ``_OST(1, 0)``, "or 1 on failure". The real guest kernel
    on the in-process machine; registration of cpu2 fails because its sysfs path is taken."""
    vm = machine_booted
    vm.kernel.vfs.register("/sys/devices/system/cpu/cpu2/online", lambda: "x\n")
    vm.machine.device_add("max-arm-cpu", "cpu-2", {"core-id": 2})
    assert vm.ost() == (1, 1)
    assert vm.cpus("enabled") == "0-1"
    vm.kernel.vfs.unregister("/sys/devices/system/cpu/cpu2")
    vm.machine.device_add("max-arm-cpu", "cpu-3", {"core-id": 3})
    assert vm.ost() == (1, 0)  # the next hot-add still works, and its rescan of
    assert vm.cpus("enabled") == "0-3"  # the parent picks up the enabled cpu2 too


def test_hot_add_online_and_remove_of_vcpus_10_16_and_123_with_the_real_guest(
    guest_machine: GuestMachineFactory,
) -> None:
    """The whole chain at indices where the encodings differ: C00A/C010/C07B names, Aff1 ≠ 0
    in the MPIDR that CPU_ON targets, and a redistributor in the second GICR region."""
    vm = guest_machine(cpus=1, maxcpus=130)
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

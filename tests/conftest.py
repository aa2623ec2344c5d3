"""Shared test fixtures.

Every VMM a test needs comes from here, through the one harness (``tests/harness/vmm.py``
for processes, ``tests/harness/machine.py`` in-process). Fixtures are named for the stage
of what they return; a factory takes the machine's shape and returns a started one:

=================  =========================================================================
``vmm``            factory: a started ``cpuplug vmm`` process, probe kernel by default
                   (:class:`~tests.harness.vmm.VmmProcess`)
``guest_vmm``      factory: a ``cpuplug vmm`` process with the real guest booted, QMP and
                   agent connected (:class:`~tests.harness.vmm.GuestVmm`)
``guest_booted``   one ``guest_vmm("cpus=1,maxcpus=4")`` with a container ``probe``
``machine``        factory: an in-process VirtMachine, started, with the recording test
                   kernel (:class:`~tests.harness.machine.RecordingMachine`)
``guest_machine``  factory: an in-process VirtMachine with the real guest booted
                   (:class:`~tests.harness.machine.GuestMachine`)
``machine_booted`` one ``guest_machine(cpus=2, maxcpus=4)``
``machine_agent``  one ``guest_machine(cpus=1, maxcpus=4, agent=True)``: its agent on a
                   socket and one connection to it
=================  =========================================================================

Each fixture stops what it started and checks it is gone: a VMM process exited and
reaped, an in-process machine's threads ended.

ACPICA (iasl, acpiexec) is the outside judge of our tables and AML. Locally a
missing ACPICA skips those tests; in CI (CI=true) it fails them, so the judge
can never silently go away.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cpuplug import agent_protocol as ap
from cpuplug.acpi.virt import MachineConfig
from cpuplug.cpuhp_abi import HotplugMode
from tests.harness.machine import GuestMachine, RecordingMachine, no_new_threads
from tests.harness.vmm import GuestVmm, VmmProcess, running_guest_vmm, running_vmm

DATA = Path(__file__).resolve().parent / "data"


def require_tool(name: str) -> str:
    """The path of an external tool; skip without it, or fail when CI=true."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is required in CI (apt-get install acpica-tools)")
        pytest.skip(f"{name} not installed")
    return path


@pytest.fixture
def iasl() -> str:
    return require_tool("iasl")


@pytest.fixture
def acpiexec() -> str:
    return require_tool("acpiexec")


@pytest.fixture
def vectors() -> Path:
    """Tables and a QMP transcript from real QEMU + Linux (``tests/data/README.md``)."""
    return DATA


# ----------------------------------------------------------------------------- processes


@pytest.fixture
def vmm() -> Iterator[Callable[..., VmmProcess]]:
    """Factory for VMM processes (``vmm(smp, mode=..., kernel=...)``, probe kernel by
    default); every one is stopped, reaped and its directory removed."""
    made: list[VmmProcess] = []
    with contextlib.ExitStack() as started:

        def make(smp: str = "cpus=1,maxcpus=4", **kw: Any) -> VmmProcess:
            process: VmmProcess = started.enter_context(running_vmm(smp, **kw))
            made.append(process)
            return process

        yield make
    assert all(p.gone() for p in made), "a VMM process was left running"


@pytest.fixture
def guest_vmm() -> Iterator[Callable[..., GuestVmm]]:
    """Factory for VMM processes running the real guest (``guest_vmm(smp, mode=...)``),
    booted, with QMP and agent connected; every one is quit, reaped and removed."""
    made: list[GuestVmm] = []
    with contextlib.ExitStack() as started:

        def make(smp: str = "cpus=1,maxcpus=4", *, mode: str = "acpi") -> GuestVmm:
            vm: GuestVmm = started.enter_context(running_guest_vmm(smp, mode=mode))
            made.append(vm)
            return vm

        yield make
    assert all(vm.process.gone() for vm in made), "a VMM process was left running"


@pytest.fixture
def guest_booted(guest_vmm: Callable[..., GuestVmm]) -> GuestVmm:
    """A VMM process with the real guest booted (1 of 4 vCPUs) and a container ``probe``."""
    vm = guest_vmm("cpus=1,maxcpus=4")
    vm.agent(ap.Method.CREATE_CONTAINER, {"container_id": "probe", "cmd": ["true"]})
    return vm


# ----------------------------------------------------------------------------- in-process


@pytest.fixture
def machine() -> Iterator[Callable[..., RecordingMachine]]:
    """Factory for started in-process machines with the recording kernel
    (``machine(cpus, maxcpus, mode, **VirtMachine_kwargs)``); every one is shut down
    and its threads checked: none may be left, not even for a moment."""
    made: list[RecordingMachine] = []
    before = threading.active_count()
    sockets = tempfile.mkdtemp(prefix="rm", dir="/tmp")  # short: unix socket paths

    def make(
        cpus: int = 1, maxcpus: int = 8, mode: HotplugMode = HotplugMode.ACPI, **kw: Any
    ) -> RecordingMachine:
        config = MachineConfig(cpus=cpus, maxcpus=maxcpus, mode=mode)
        kw.setdefault("agent_path", f"{sockets}/agent{len(made)}.sock")
        made.append(RecordingMachine(config, **kw))
        return made[-1]

    try:
        yield make
        for m in made:
            m.close()
        assert threading.active_count() == before
    finally:
        for m in made:
            m.m.shutdown()
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture
def guest_machine() -> Iterator[Callable[..., GuestMachine]]:
    """Factory for in-process machines with the real guest booted
    (``guest_machine(cpus, maxcpus, mode, agent=, start_agent=, record_hvc=)``); every
    one is closed and no thread of it may be left."""
    made: list[GuestMachine] = []
    with no_new_threads():

        def make(
            cpus: int = 2, maxcpus: int = 4, mode: HotplugMode = HotplugMode.ACPI, **kw: Any
        ) -> GuestMachine:
            made.append(GuestMachine(MachineConfig(cpus=cpus, maxcpus=maxcpus, mode=mode), **kw))
            return made[-1]

        try:
            yield make
        finally:
            for vm in made:
                vm.close()


@pytest.fixture
def machine_booted(guest_machine: Callable[..., GuestMachine]) -> GuestMachine:
    """The real guest booted in-process on 2 of 4 vCPUs (no agent)."""
    return guest_machine(cpus=2, maxcpus=4)


@pytest.fixture
def machine_agent(guest_machine: Callable[..., GuestMachine]) -> Iterator[GuestMachine]:
    """The real guest booted in-process on 1 of 4 vCPUs, its agent on a socket and one
    connection to it; the agent's threads are gone as soon as it is closed."""
    vm = guest_machine(cpus=1, maxcpus=4, agent=True)
    yield vm
    vm.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("agent-")]

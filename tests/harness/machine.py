"""The VMM in-process: a started :class:`~cpuplug.vmm.machine.VirtMachine` in the test's
own interpreter, with one of two kernels.

* :class:`RecordingMachine` -- a small test kernel that records the interrupts it takes
  and the CPU_ON starts; the test plays the guest's AML through guest-physical accesses.
  Fixture ``machine`` (factory).
* :class:`GuestMachine` -- the real guest kernel (``cpuplug.guest``) booted, optionally
  with its agent on a unix socket and a connection to it. Fixtures ``guest_machine``
  (factory), ``machine_booted`` and ``machine_agent``.

The VMM as a process is in :mod:`tests.harness.vmm`. Fixtures live in
``tests/conftest.py``; each one closes what it started and checks that no thread of it is
left (:func:`no_new_threads`).
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from cpuplug import agent_protocol as ap
from cpuplug.acpi.virt import CPUHP_BASE, GED_BASE, MachineConfig, mpidr
from cpuplug.guest.kernel import GuestKernel
from cpuplug.hw import Cpu, Machine
from cpuplug.psci_abi import CPU_ON_64
from cpuplug.vmm.machine import MachineEvent, VirtMachine

SELECTOR, FLAGS, COMMAND, DATA = 0x0, 0x4, 0x5, 0x8
TIMEOUT = 10.0


@contextlib.contextmanager
def no_new_threads(timeout: float = 5.0) -> Iterator[None]:
    """Fail if threads started inside the block are still alive ``timeout`` s after it."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + timeout
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"threads left running: {sorted(t.name for t in left)}")
        time.sleep(0.01)


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a predicate that has no event to wait on (guest state read from outside)."""
    ev = threading.Event()
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        ev.wait(0.005)


# =======================================================================================
# The recording test kernel


class RecordingKernel:
    """A guest kernel for in-process tests: records interrupts and CPU_ON starts.

    ``secondary_entry`` runs ``behaviour(cpu, entry, context)`` if one is set, so a
    test can make a secondary call CPU_OFF or raise.
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.irqs: queue.Queue[int] = queue.Queue()
        self.started: queue.Queue[tuple[int, int, int]] = queue.Queue()
        self.behaviour: Callable[[Cpu, int, int], object] | None = None

    def boot_cpu_main(self, cpu: Cpu) -> None:
        while True:
            intid = cpu.wait_for_interrupt(None)
            if intid is not None:
                self.irqs.put(intid)

    def secondary_entry(self, cpu: Cpu, entry: int, context: int) -> None:
        self.started.put((cpu.mpidr, entry, context))
        if self.behaviour is not None:
            self.behaviour(cpu, entry, context)
        while True:
            cpu.wait_for_interrupt(None)


class RecordingMachine:
    """A started machine plus its recording kernel and an event queue."""

    def __init__(self, config: MachineConfig, **machine_kw: Any) -> None:
        kernels: list[RecordingKernel] = []

        def entry(machine: Machine) -> RecordingKernel:
            kernels.append(RecordingKernel(machine))
            return kernels[-1]

        self.m = VirtMachine(config, kernel=entry, **machine_kw)
        self.m.start()
        self.kernel = kernels[0]
        self.events: queue.Queue[MachineEvent] = self.m.event_queue()

    # The guest's side of the CPU hotplug block, as the AML accesses it.
    def select(self, index: int) -> None:
        self.m.memory.store(CPUHP_BASE + SELECTOR, 4, index)

    def flags(self, index: int) -> int:
        self.select(index)
        return self.m.memory.load(CPUHP_BASE + FLAGS, 1)

    def control(self, index: int, value: int) -> None:
        self.select(index)
        self.m.memory.store(CPUHP_BASE + FLAGS, 1, value)

    def esel(self) -> int:
        return self.m.memory.load(GED_BASE, 4)

    def event(self, name: str) -> MachineEvent:
        while True:
            event = self.events.get(timeout=TIMEOUT)
            if event.name == name:
                return event

    def cpu_on(self, index: int, entry: int = 0x8000, context: int = 0) -> int:
        return self.m.psci.call(0, CPU_ON_64, mpidr(index), entry, context)

    def close(self) -> None:
        """Shut the machine down; every vCPU thread has ended when this returns."""
        self.m.shutdown()
        assert self.m.vcpus.live_threads() == 0


# =======================================================================================
# The real guest kernel, booted

HvcCall = tuple[int, int, int, int, int]
"""One HVC the guest made: ``(x0, x1, x2, x3, result)``."""


class GuestMachine:
    """An in-process VirtMachine running the real guest kernel, with its event queue.

    ``agent=True`` gives the machine an agent socket, starts the guest's agent on it and
    opens one connection (``sock``; more with :meth:`connect`). ``start_agent`` alone
    starts the guest's agent without a host socket. ``record_hvc=True`` records every
    HVC the guest makes, from the first instruction of boot, in ``hvc_calls``.
    """

    def __init__(
        self,
        config: MachineConfig,
        *,
        agent: bool = False,
        start_agent: bool | None = None,
        record_hvc: bool = False,
    ) -> None:
        self.dir = tempfile.mkdtemp(prefix="gm", dir="/tmp") if agent else None
        self.path = None if self.dir is None else f"{self.dir}/agent.sock"
        launch_agent = agent if start_agent is None else start_agent
        holder: list[GuestKernel] = []

        def entry(machine: Machine) -> GuestKernel:
            holder.append(GuestKernel(machine, start_agent=launch_agent))
            return holder[-1]

        self.socks: list[socket.socket] = []
        self.sock: socket.socket | None = None
        self._ids = 0
        self._closed = False
        self.hvc_calls: list[HvcCall] = []
        self.machine = VirtMachine(config, kernel=entry, agent_path=self.path)
        self.events: queue.Queue[MachineEvent] = self.machine.event_queue()
        if record_hvc:
            self._record_hvc()
        try:
            self.machine.start()
            self.kernel = holder[0]
            assert self.kernel.booted.wait(10), "guest did not boot"
            assert self.kernel.panicked is None, self.kernel.panicked
            if self.path is not None:
                self.sock = self.connect()
        except BaseException:
            self.close()
            raise

    def _record_hvc(self) -> None:
        real = self.machine.vcpus.hvc_handler

        def handler(caller: int, x0: int, x1: int, x2: int, x3: int) -> int:
            ret = real(caller, x0, x1, x2, x3)
            self.hvc_calls.append((x0, x1, x2, x3, ret))
            return ret

        self.machine.vcpus.hvc_handler = handler

    # -- the host's view: machine events -------------------------------------------------

    def wait_event(
        self,
        name: str,
        timeout: float = 10.0,
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The next machine event called ``name`` (others before it are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {name} event within {timeout} s")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if ev.name == name and (match is None or match(ev.data)):
                data: dict[str, Any] = ev.data
                return data

    def ost(self, timeout: float = 10.0) -> tuple[int, int]:
        info = self.wait_event("ACPI_DEVICE_OST", timeout)["info"]
        return info["source"], info["status"]

    # -- the guest's files -----------------------------------------------------------------

    def read(self, path: str) -> str:
        return self.kernel.vfs.read(path)

    def cpus(self, name: str) -> str:
        return self.read(f"/sys/devices/system/cpu/{name}").strip()

    # -- the agent (agent=True) ------------------------------------------------------------

    def connect(self) -> socket.socket:
        assert self.path is not None, "GuestMachine(agent=True) has the agent socket"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.socks.append(s)
        return s

    def call(
        self,
        method: ap.Method,
        params: dict[str, Any] | None = None,
        sock: socket.socket | None = None,
    ) -> dict[str, Any]:
        target = sock or self.sock
        assert target is not None, "GuestMachine(agent=True) has an agent connection"
        self._ids += 1
        return ap.call(target, method, params or {}, timeout=30, req_id=self._ids)

    def close(self) -> None:
        """Stop the guest's threads and the machine; idempotent."""
        if self._closed:
            return
        self._closed = True
        for s in self.socks:
            s.close()
        kernel: GuestKernel | None = getattr(self, "kernel", None)
        if kernel is not None:
            kernel.shutdown()
        self.machine.shutdown()
        for t in threading.enumerate():
            if t.name in ("kacpi_hotplug",) or t.name.startswith("irq/"):
                t.join(5)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

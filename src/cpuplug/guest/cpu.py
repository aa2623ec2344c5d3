"""Logical CPUs: the masks, registration, and online/offline through PSCI (docs/contract.md §6).

Model of arm64 Linux ≥ 6.11 (docs/contract.md §6; Linux kernel/cpu.c, drivers/base/cpu.c):

* ``possible`` = ``present``: fixed at boot from the MADT, never changes.
* ``enabled``: CPUs with a registered ``cpuN`` device. Only the ACPI processor
  scan registers (``acpi_bus.py``), only an eject unregisters.
* ``online``: CPUs running the scheduler. Onlining is PSCI ``CPU_ON`` issued by
  a requester CPU; the new vCPU's thread enters ``secondary_entry``, marks itself
  online and serves the run queue. DENIED → EPERM (silent); no sign of life in
  5 s → EIO.
* Offlining: the dying CPU leaves the scheduler at its next slice boundary (its
  task is back in the global queue, i.e. migrated), clears its online bit,
  re-routes the interrupts it was the target of, reports itself dead, and issues
  CPU_OFF on itself — the VMM raises ``VcpuStop`` out of that HVC, which unwinds
  to the VMM. The requester then polls AFFINITY_INFO until OFF (≤ 100 ms).
  The last online CPU refuses (EBUSY).

Locking (the order is always hotplug → state):

* ``_hotplug`` serializes whole operations (Linux's ``device_hotplug_lock`` +
  ``cpu_maps_update``). Held across a CPU_ON wait or an eject. A *task* running
  on a vCPU never blocks on it: it try-locks and, if its own CPU is being taken
  down meanwhile, fails with EAGAIN — Linux's ``lock_device_hotplug_sysfs()``
  restart, without which "offline CPU n" would wait forever for CPU n, whose
  thread sits in the task waiting for the lock.
* ``_cond`` (on ``_lock``) guards the masks and per-CPU state; never held while
  calling out (HVC, the scheduler, the VFS, the event hub).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cpuplug import psci_abi
from cpuplug.agent_protocol import EventName, format_cpu_list
from cpuplug.errors import CpuplugError
from cpuplug.guest import psci
from cpuplug.guest.boot import CpuEnumeration, CpuSlot
from cpuplug.guest.klog import KernelLog, Uevents
from cpuplug.guest.sched import Scheduler
from cpuplug.hw import Cpu, VcpuStop

CPU_UP_TIMEOUT = 5.0
"""``__cpu_up``: how long the requester waits for the new CPU to mark itself online."""
CPU_DEATH_TIMEOUT = 5.0
"""``cpu_wait_death``: how long the requester waits for the dying CPU to report."""
KILL_POLL_LIMIT = 0.100
"""``cpu_psci_cpu_kill``: AFFINITY_INFO polling budget."""

SGI_RESCHEDULE = 0
"""IPI_RESCHEDULE: wakes an idle CPU to look at the run queue."""

MIDR = 0x000F_0510
"""MIDR_EL1 printed in boot messages. The hardware interface gives no access to
system registers, so this is the value QEMU's ``-cpu max`` reports."""


class CpuHotplugError(CpuplugError):
    """A CPU online/offline/registration request failed; ``errno`` is what Linux returns."""

    def __init__(self, err: int, message: str) -> None:
        self.errno = err
        super().__init__(f"{message}: {os.strerror(err)}")


@dataclass
class PerCpu:
    """Kernel state of one possible CPU."""

    slot: CpuSlot
    registered: bool = False
    online: bool = False
    going_down: bool = False
    dead: bool = True
    hw: Cpu | None = None
    acpi_path: str | None = None

    @property
    def logical(self) -> int:
        return self.slot.logical

    @property
    def mpidr(self) -> int:
        return self.slot.mpidr


class _ThisCpu(threading.local):
    logical: int | None = None
    hw: Cpu | None = None


_this = _ThisCpu()


class _Port:
    """The scheduler's view of one CPU (sched.CpuPort)."""

    def __init__(self, mgr: CpuManager, per: PerCpu, hw: Cpu) -> None:
        self._mgr = mgr
        self._per = per
        self._hw = hw

    def stop_requested(self) -> bool:
        return self._per.going_down

    def idle(self, timeout: float) -> None:
        intid = self._hw.wait_for_interrupt(timeout)
        if intid is not None:
            self._mgr.handle_irq(intid)
            self.poll_interrupts()

    def poll_interrupts(self) -> None:
        while (intid := self._hw.wait_for_interrupt(0)) is not None:
            self._mgr.handle_irq(intid)


class CpuManager:
    """The CPU masks and the hotplug state machine of every possible CPU."""

    def __init__(self, log: KernelLog, events: Uevents) -> None:
        self.log = log
        self.events = events
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._hotplug = threading.Lock()
        self._cpus: dict[int, PerCpu] = {}
        self._by_mpidr: dict[int, int] = {}
        self._present_warned = False
        self.sched = Scheduler(self.online_mask, self.kick, log.warn)
        self.irq_handlers: dict[int, Callable[[int], None]] = {}
        self.level_irqs: dict[int, Callable[[int], None]] = {}  # INTID → its EOI
        self.on_register: Callable[[int], None] = lambda _n: None
        self.on_unregister: Callable[[int], None] = lambda _n: None
        self.on_dying: Callable[[int], None] = lambda _n: None
        self.defer: Callable[[Callable[[], None]], None] = lambda fn: fn()
        self.secondary_entries: list[int] = []  # MPIDRs that entered secondary_entry

    # ------------------------------------------------------------------ setup

    def setup(self, enumeration: CpuEnumeration) -> None:
        """Make the enumerated CPUs possible (and, on arm64, present)."""
        with self._lock:
            for slot in enumeration.slots:
                self._cpus[slot.logical] = PerCpu(slot)
                self._by_mpidr[slot.mpidr] = slot.logical

    # ------------------------------------------------------------------ masks

    def possible(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._cpus)

    def present(self) -> frozenset[int]:
        """arm64 mainline: present = possible, never changes (docs/contract.md §6)."""
        return self.possible()

    def online_mask(self) -> frozenset[int]:
        with self._lock:
            return frozenset(n for n, p in self._cpus.items() if p.online)

    def offline(self) -> frozenset[int]:
        with self._lock:
            return frozenset(n for n, p in self._cpus.items() if not p.online)

    def enabled(self) -> frozenset[int]:
        with self._lock:
            return frozenset(n for n, p in self._cpus.items() if p.registered)

    def is_online(self, n: int) -> bool:
        with self._lock:
            per = self._cpus.get(n)
            return per is not None and per.online

    def is_registered(self, n: int) -> bool:
        with self._lock:
            per = self._cpus.get(n)
            return per is not None and per.registered

    def slot(self, n: int) -> CpuSlot | None:
        with self._lock:
            per = self._cpus.get(n)
            return per.slot if per is not None else None

    def slots(self) -> list[CpuSlot]:
        with self._lock:
            return [p.slot for p in self._cpus.values()]

    def logical_of_mpidr(self, mpidr: int) -> int | None:
        with self._lock:
            return self._by_mpidr.get(mpidr)

    @staticmethod
    def cpulist(cpus: frozenset[int] | set[int]) -> str:
        """Linux's ``%*pbl`` formatting: ``0-3,5``."""
        return format_cpu_list(cpus)

    @staticmethod
    def this_cpu() -> int | None:
        """Logical id of the CPU whose vCPU thread is calling, or None (kernel thread)."""
        return _this.logical

    # ----------------------------------------------------------- the hotplug lock

    @contextmanager
    def hotplug_locked(self) -> Iterator[None]:
        """Hold the hotplug lock (see module doc for the task-context rule)."""
        me = _this.logical
        if me is None:
            self._hotplug.acquire()
        else:
            while not self._hotplug.acquire(timeout=0.005):
                with self._lock:
                    mine = self._cpus.get(me)
                    dying = mine is not None and mine.going_down
                if dying:
                    raise CpuHotplugError(errno.EAGAIN, f"CPU{me} is going offline")
        try:
            yield
        finally:
            self._hotplug.release()

    # ------------------------------------------------------------ registration

    def register(self, n: int, acpi_path: str | None = None) -> None:
        """``arch_register_cpu`` + ``register_cpu``: cpuN appears, bit set in ``enabled``.

        Call with the hotplug lock held.
        """
        with self._lock:
            per = self._cpus.get(n)
            if per is None:
                warn = not self._present_warned
                self._present_warned = True
            elif per.registered:
                return
            else:
                per.registered = True
                per.acpi_path = acpi_path
        if per is None:
            if warn:
                self.log.err("Changing CPU present bit is not supported")
            raise CpuHotplugError(errno.ENODEV, f"CPU{n} is not present")
        try:
            self.on_register(n)  # the sysfs files; undo the registration if they fail
        except CpuplugError as exc:
            with self._lock:
                per.registered = False
                per.acpi_path = None
            raise CpuHotplugError(getattr(exc, "errno", errno.EIO), f"cpu{n}: {exc}") from exc
        self.log.info(f"ACPI: CPU{n} has been hot-added")
        self.events.emit(EventName.CPU_REGISTERED, cpu=n)

    def unregister(self, n: int) -> None:
        """``unregister_cpu``: cpuN disappears, bit cleared in ``enabled``. Hotplug lock held."""
        with self._lock:
            per = self._cpus.get(n)
            if per is None or not per.registered:
                return
            if per.online:
                raise CpuHotplugError(errno.EBUSY, f"CPU{n} is online")
            per.registered = False
            per.acpi_path = None
        self.on_unregister(n)
        self.events.emit(EventName.CPU_UNREGISTERED, cpu=n)

    # ------------------------------------------------------------ PSCI requester

    def _requester(self, avoid: int | None = None) -> list[Cpu]:
        """CPUs through which this context may issue HVCs, best first.

        On a vCPU thread that is the CPU itself. A kernel thread (the hotplug
        worker, the agent) stands for "a kernel thread running on some online
        CPU" and borrows an online CPU's interface; it never borrows the CPU that
        is going down.
        """
        if _this.hw is not None:
            return [_this.hw]
        with self._lock:
            return [
                p.hw
                for n, p in sorted(self._cpus.items())
                if p.online and p.hw is not None and not p.going_down and n != avoid
            ]

    def _hvc(self, call: Callable[[Cpu], int], avoid: int | None = None) -> int:
        if _this.hw is not None:
            return call(_this.hw)  # our own vCPU: a VcpuStop must unwind us
        for hw in self._requester(avoid):
            try:
                return call(hw)
            except VcpuStop:
                continue  # that vCPU is being powered off under us; borrow another
        raise CpuHotplugError(errno.EIO, "no online CPU to issue the PSCI call from")

    def kick(self, n: int) -> None:
        """IPI_RESCHEDULE to CPU ``n`` (the scheduler's wake-up)."""
        with self._lock:
            per = self._cpus.get(n)
            target = per.hw if per is not None else None
        if target is None:
            return
        if _this.hw is not None:
            _this.hw.send_sgi(target.mpidr, SGI_RESCHEDULE)
            return
        with contextlib.suppress(VcpuStop):  # the target is powering off: nothing to wake
            target.send_sgi(target.mpidr, SGI_RESCHEDULE)

    # ------------------------------------------------------------------ online

    def cpu_up(self, n: int) -> None:
        """Online a registered CPU (``echo 1 > cpuN/online``). Raises CpuHotplugError."""
        with self.hotplug_locked():
            self.cpu_up_locked(n)

    def cpu_up_locked(self, n: int, *, require_registered: bool = True) -> None:
        with self._lock:
            per = self._cpus.get(n)
            if per is None or (require_registered and not per.registered):
                raise CpuHotplugError(errno.ENODEV, f"CPU{n} is not registered")
            if per.online:
                return
            mpidr = per.mpidr
        ret = self._hvc(lambda hw: psci.cpu_on(hw, mpidr, psci.SECONDARY_ENTRY, n))
        if ret != psci_abi.SUCCESS:
            err = psci.to_errno(ret)
            if err != errno.EPERM:  # "arm64: psci: Ignore DENIED CPUs" (6.11)
                self.log.err(f"psci: failed to boot CPU{n} ({-err})")
                self.log.err(f"CPU{n}: failed to boot: {-err}")
            raise CpuHotplugError(err, f"CPU{n}: CPU_ON returned {ret}")
        with self._cond:
            came_up = self._cond.wait_for(lambda: per.online, CPU_UP_TIMEOUT)
        if not came_up:
            self.log.err(f"CPU{n}: failed to come online")
            raise CpuHotplugError(errno.EIO, f"CPU{n} did not come online")

    # ----------------------------------------------------------------- offline

    def cpu_down(self, n: int) -> None:
        """Offline a CPU (``echo 0 > cpuN/online``). Raises CpuHotplugError."""
        if _this.logical == n:
            self._cpu_down_self(n)
            return
        with self.hotplug_locked():
            self.cpu_down_locked(n)

    def _cpu_down_self(self, n: int) -> None:
        """A task on CPU n offlines CPU n: it cannot wait for itself, so a kernel thread does.

        The request is validated now (EBUSY for the last CPU) and completed on
        the hotplug worker once this slice has ended and the CPU can go down.
        """
        with self._lock:
            per = self._cpus.get(n)
            if per is None or not per.online:
                return
            if sum(1 for p in self._cpus.values() if p.online) <= 1:
                raise CpuHotplugError(errno.EBUSY, f"CPU{n} is the last online CPU")

        def finish() -> None:
            try:
                self.cpu_down(n)
            except CpuHotplugError as exc:
                self.log.warn(f"CPU{n}: deferred offline failed: {exc}")

        self.defer(finish)

    def cpu_down_locked(self, n: int) -> None:
        with self._lock:
            per = self._cpus.get(n)
            if per is None:
                raise CpuHotplugError(errno.ENODEV, f"CPU{n} does not exist")
            if not per.online:
                return
            if sum(1 for p in self._cpus.values() if p.online) <= 1:
                raise CpuHotplugError(errno.EBUSY, f"CPU{n} is the last online CPU")
            per.going_down = True
            mpidr = per.mpidr
        self.kick(n)
        with self._cond:
            died = self._cond.wait_for(lambda: per.dead, CPU_DEATH_TIMEOUT)
        if not died:
            self.log.err(f"CPU{n}: cpu didn't die")
            raise CpuHotplugError(errno.EIO, f"CPU{n} did not stop")
        self.log.info(f"CPU{n}: shutdown")
        self._wait_powered_off(n, mpidr)
        self.events.emit(EventName.CPU_OFFLINE, cpu=n)

    def _wait_powered_off(self, n: int, mpidr: int) -> None:
        """``cpu_psci_cpu_kill``: poll AFFINITY_INFO every 100 µs to 1 ms for up to 100 ms.

        A hardware register poll: there is nothing to wait on but the register.
        """
        start = time.monotonic()
        step = 0.0001
        state = psci_abi.AFFINITY_ON
        while True:
            state = self._hvc(lambda hw: psci.affinity_info(hw, mpidr), avoid=n)
            elapsed = time.monotonic() - start
            if state == psci_abi.AFFINITY_OFF:
                self.log.info(f"psci: CPU{n} killed (polled {int(elapsed * 1000)} ms)")
                return
            if elapsed >= KILL_POLL_LIMIT:
                break
            time.sleep(step)
            step = min(step * 2, 0.001)
        self.log.warn(
            f"CPU{n} may not have shut down cleanly (AFFINITY_INFO reports {state})"
        )

    # ------------------------------------------------------- the CPU's own side

    def mark_boot_cpu_online(self, n: int, hw: Cpu) -> None:
        """The boot CPU is online from the start (it brings the others up)."""
        with self._cond:
            per = self._cpus[n]
            per.hw = hw
            per.going_down = False
            per.dead = False
            per.online = True
            self._cond.notify_all()
        _this.logical, _this.hw = n, hw

    def run_cpu(self, n: int, hw: Cpu, *, announce: bool) -> None:
        """Body of an online CPU: mark online, serve the run queue, then power off.

        Runs on CPU ``n``'s vCPU thread and returns only by ``VcpuStop`` (CPU_OFF,
        or the VMM stopping the vCPU).
        """
        with self._cond:
            per = self._cpus[n]
            per.hw = hw
            per.dead = False
            per.online = True
            # going_down is left alone: an offline request may already have come in
            # (the boot CPU is online before it gets here) and must not be lost.
            self._cond.notify_all()
        _this.logical, _this.hw = n, hw
        if announce:
            self.log.info(
                f"CPU{n}: Booted secondary processor 0x{hw.mpidr:010x} [0x{MIDR:08x}]"
            )
        self.events.emit(EventName.CPU_ONLINE, cpu=n)
        try:
            self.sched.run_cpu(n, _Port(self, per, hw))
            # __cpu_disable: leave the online mask, move our interrupts elsewhere.
            with self._lock:
                per.online = False
            self.on_dying(n)
        finally:
            with self._cond:
                per.online = False
                per.hw = None
                per.dead = True
                per.going_down = False  # served; the next CPU_ON starts afresh
                self._cond.notify_all()
            _this.logical, _this.hw = None, None
        ret = psci.cpu_off(hw)  # raises VcpuStop: CPU_OFF does not return
        self.log.err(f"CPU{n}: unable to power off CPU{n} ({ret})")
        while True:  # cpu_park_loop
            hw.wait_for_interrupt(None)

    def handle_irq(self, intid: int) -> None:
        if intid == SGI_RESCHEDULE:
            return
        handler = self.irq_handlers.get(intid)
        if handler is None:
            self.log.warn(f"unexpected IRQ trap at vector {intid}")
            return
        handler(intid)
        eoi = self.level_irqs.get(intid)
        if eoi is not None:
            eoi(intid)

    def note_secondary_entry(self, mpidr: int) -> None:
        with self._lock:
            self.secondary_entries.append(mpidr)

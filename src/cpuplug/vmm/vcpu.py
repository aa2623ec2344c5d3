"""vCPUs: a state object per *possible* vCPU, a host thread per *plugged* one.

KVM's rule (docs/contract.md §1): everything sized by the number of possible vCPUs — the
MPIDR, the redistributor, this module's :class:`VcpuState` — exists from boot.
What hotplug adds and removes is the host **thread** (:class:`VcpuThread`): one
is started, powered off, when a vCPU is plugged (cold at boot or by
``device_add``) and ends when the vCPU is ejected. An unplugged vCPU costs no
thread; that is the density argument of the talk, and ``/proc/<pid>/task``
proves it.

A vCPU thread's life::

    plug ─▶ [waiting, powered off] ──CPU_ON / boot──▶ [running guest code]
                 ▲                                          │
                 └──── CPU_OFF, VMM stop, guest crash ◀─────┘
    eject ─▶ thread ends (from either state)

Guest code runs *on* the thread through the :class:`cpuplug.hw.Cpu` interface
that :class:`VcpuThread` implements. Powering off is :class:`cpuplug.hw.VcpuStop`
raised out of whatever guest call is in progress (``hvc``, ``wait_for_interrupt``
or — through :func:`check_stop` — a load/store), which unwinds the guest's stack
back to the thread loop: the Python shape of "CPU_OFF does not return".
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from cpuplug.acpi.virt import cpu_index_of_mpidr, mpidr
from cpuplug.errors import CpuplugError
from cpuplug.hw import Cpu, Kernel, VcpuStop
from cpuplug.psci_abi import AFFINITY_OFF, AFFINITY_ON, AFFINITY_ON_PENDING, NOT_SUPPORTED

log = logging.getLogger(__name__)

#: How long ``plug`` waits for a new host thread to report its thread id.
THREAD_START_TIMEOUT = 10.0
#: How long an eject waits for the ejected vCPU's thread to end before deferring.
EJECT_JOIN_TIMEOUT = 2.0


class VcpuError(CpuplugError):
    """A host-side vCPU operation that the vCPU's state does not allow."""


class PowerState(enum.Enum):
    """PSCI's view of a vCPU (AFFINITY_INFO: 0 ON, 1 OFF, 2 ON_PENDING)."""

    ON = AFFINITY_ON
    OFF = AFFINITY_OFF
    ON_PENDING = AFFINITY_ON_PENDING


class InterruptController(Protocol):
    """What a vCPU needs from the GIC, as the machine adapts it."""

    def wait(self, cpu_index: int, timeout: float | None, stop: Callable[[], bool]) -> int | None:
        """Block until an interrupt is taken (its INTID), ``timeout`` or ``stop()`` holds."""
        ...

    def kick(self, cpu_index: int) -> None:
        """Wake vCPU ``cpu_index`` out of :meth:`wait` so it re-checks ``stop``."""
        ...

    def send_sgi(self, source_index: int, target_mpidr: int, intid: int) -> None: ...


HvcHandler = Callable[[int, int, int, int, int], int]
"""``handler(caller_index, x0, x1, x2, x3) -> x0``: the machine's PSCI dispatch."""

CpuOnResult = Literal["started", "denied", "already_on", "on_pending"]


@dataclass
class VcpuState:
    """One possible vCPU, for the machine's whole life (plugged or not)."""

    index: int
    mpidr: int
    plugged: bool = False
    power: PowerState = PowerState.OFF
    device_id: str | None = None
    qom_path: str | None = None
    thread_id: int | None = None
    """Host (native) thread id of the current vCPU thread; ``None`` when unplugged."""
    thread: VcpuThread | None = None

    def snapshot(self) -> VcpuState:
        """A copy to hand out of the lock: the fields as they are now, no thread handle."""
        return replace(self, thread=None)

    @property
    def hotpluggable_props(self) -> dict[str, int]:
        """QMP ``CpuInstanceProperties`` of this vCPU's slot (vCPU index = core-id)."""
        return {"socket-id": 0, "cluster-id": 0, "core-id": self.index, "thread-id": 0}


class _IdleKernel:
    """``--kernel none``: every vCPU that runs sits in WFI until it is stopped."""

    def boot_cpu_main(self, cpu: Cpu) -> None:
        while True:
            cpu.wait_for_interrupt(None)

    def secondary_entry(self, cpu: Cpu, entry: int, context: int) -> None:
        while True:
            cpu.wait_for_interrupt(None)


IDLE_KERNEL: Kernel = _IdleKernel()

_current = threading.local()


def current_vcpu() -> VcpuThread | None:
    """The vCPU whose thread is calling, or ``None`` on a non-vCPU thread."""
    vcpu: VcpuThread | None = getattr(_current, "vcpu", None)
    return vcpu


def check_stop() -> None:
    """Raise :class:`VcpuStop` if the calling vCPU thread has been told to stop.

    The machine's guest-memory view calls this on every load/store, so a vCPU
    that only touches memory still powers off promptly.
    """
    vcpu: VcpuThread | None = getattr(_current, "vcpu", None)
    if vcpu is not None and vcpu.stop_requested:
        raise VcpuStop


@dataclass
class _Start:
    boot: bool
    entry: int = 0
    context: int = 0


class VcpuThread:
    """One plugged incarnation of a vCPU: its host thread and its ``cpuplug.hw.Cpu``.

    A new object per plug, so an old incarnation that is still unwinding after
    an eject can never disturb the slot's next one.
    """

    def __init__(self, vcpus: VcpuSet, state: VcpuState) -> None:
        self._vcpus = vcpus
        self._state = state
        self.index = state.index
        self._mpidr = state.mpidr
        self._cond = threading.Condition()
        self._start: _Start | None = None
        self._stop = False
        self._ending = False
        self._on_exit: Callable[[], None] | None = None
        self._waiter = False  # someone in end_and_wait will run _on_exit
        self._exited = False
        self.native_id: int | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"vcpu{state.index}", daemon=True)

    # -- cpuplug.hw.Cpu -----------------------------------------------------------------

    @property
    def mpidr(self) -> int:
        return self._mpidr

    def hvc(self, x0: int, x1: int = 0, x2: int = 0, x3: int = 0) -> int:
        self._check_stop()
        result = self._vcpus.hvc_handler(self.index, x0, x1, x2, x3)
        self._check_stop()  # CPU_OFF / SYSTEM_OFF: the call does not return
        return result

    def wait_for_interrupt(self, timeout: float | None) -> int | None:
        self._check_stop()
        intid = self._vcpus.interrupts.wait(self.index, timeout, self._stop_flag)
        self._check_stop()
        return intid

    def send_sgi(self, target_mpidr: int, intid: int) -> None:
        self._check_stop()
        self._vcpus.interrupts.send_sgi(self.index, target_mpidr, intid)

    # -- state ---------------------------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        return self._stop

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _stop_flag(self) -> bool:
        return self._stop

    def _check_stop(self) -> None:
        if self._stop:
            raise VcpuStop

    # -- control from the VMM -----------------------------------------------------------

    def launch(self) -> None:
        """Start the host thread (powered off) and wait until it reports its id."""
        self._thread.start()
        if not self._started.wait(THREAD_START_TIMEOUT):
            raise VcpuError(f"vCPU {self.index} thread did not start")

    def power_on(self, start: _Start) -> bool:
        """Hand the thread a start request; False if it is not powered off."""
        with self._cond:
            if self._ending or self._start is not None or self._state.power is not PowerState.OFF:
                return False
            self._start = start
            self._state.power = PowerState.ON_PENDING
            self._cond.notify_all()
        return True

    def stop(self) -> None:
        """Power this vCPU off: VcpuStop out of its next guest call (or cancel a pending on)."""
        with self._cond:
            if self._start is not None:  # CPU_ON not yet taken by the thread: cancel it
                self._start = None
                if self._owns_slot():
                    self._state.power = PowerState.OFF
                return
            if self._state.power is PowerState.OFF and self._owns_slot():
                return
            self._stop = True
            self._cond.notify_all()
        self._vcpus.interrupts.kick(self.index)

    def end(self) -> None:
        """Ask the thread to end (it leaves guest code at its next call into the machine)."""
        with self._cond:
            self._ending = True
            self._stop = True
            self._start = None
            self._cond.notify_all()
        self._vcpus.interrupts.kick(self.index)

    def end_and_wait(self, on_ended: Callable[[], None], timeout: float) -> bool:
        """End the thread and run ``on_ended`` exactly once after it has ended.

        From another thread this waits (up to ``timeout``) until the host thread
        has exited — joined *and* gone from ``/proc/self/task`` — and runs
        ``on_ended`` here, so whoever reacts to it (a ``DEVICE_DELETED`` reader
        counting threads) sees the thread gone. If the caller is the thread itself,
        or it does not stop in time, the thread runs ``on_ended`` as its last act.
        Returns True when the thread ended within ``timeout``.
        """
        own = threading.current_thread() is self._thread
        with self._cond:
            self._ending = True
            self._stop = True
            self._start = None
            self._on_exit = on_ended
            self._waiter = not own
            self._cond.notify_all()
        self._vcpus.interrupts.kick(self.index)
        if own:
            return False
        if self._thread.ident is not None:
            self._thread.join(timeout)
        with self._cond:
            if self._thread.ident is not None and not self._exited:
                self._waiter = False  # hand the callback to the thread
                return False
        _wait_os_exit(self.native_id)
        self._take_and_run_on_exit()
        return True

    def join(self, timeout: float | None) -> bool:
        """Wait for the thread to end; never from the thread itself. True if it ended."""
        if threading.current_thread() is self._thread:
            return False
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _take_and_run_on_exit(self) -> None:
        with self._cond:
            callback, self._on_exit = self._on_exit, None
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("vCPU %d: end-of-thread callback failed", self.index)

    # -- the thread ---------------------------------------------------------------------

    def _main(self) -> None:
        self.native_id = threading.get_native_id()
        _current.vcpu = self
        self._started.set()
        try:
            while True:
                with self._cond:
                    while self._start is None and not self._ending:
                        self._cond.wait()
                    if self._ending:
                        return
                    start = self._start
                    assert start is not None
                    self._start = None
                    self._stop = False
                    if self._owns_slot():
                        self._state.power = PowerState.ON
                self._run_guest(start)
                with self._cond:
                    self._stop = self._ending
                    if self._owns_slot():
                        self._state.power = PowerState.OFF
        finally:
            with self._cond:
                if self._owns_slot():
                    self._state.power = PowerState.OFF
            _current.vcpu = None
            with self._cond:
                self._exited = True
                mine = not self._waiter
            if mine:
                self._take_and_run_on_exit()

    def _owns_slot(self) -> bool:
        return self._state.thread is self

    def _run_guest(self, start: _Start) -> None:
        kernel = self._vcpus.kernel
        try:
            if start.boot:
                kernel.boot_cpu_main(self)
            else:
                kernel.secondary_entry(self, start.entry, start.context)
        except VcpuStop:
            pass
        except Exception:
            # A guest bug stops this vCPU, never the VMM (a real CPU would take an
            # exception the guest did not handle; the machine keeps running).
            log.exception("vCPU %d: guest code raised; the vCPU is powered off", self.index)


def _wait_os_exit(native_id: int | None, timeout: float = 1.0) -> None:
    """Wait until host thread ``native_id`` has left ``/proc/self/task`` (Linux).

    ``Thread.join`` returns when Python is done with the thread, a moment before
    the kernel reaps it; there is no notification for that last step, so poll it.
    """
    if native_id is None:
        return
    path = f"/proc/self/task/{native_id}"
    deadline = time.monotonic() + timeout
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.0001)


class VcpuSet:
    """All possible vCPUs of one machine: the table PSCI and QMP work on.

    Thread-safe: QMP (device_add/del), guest AML (eject) and guest PSCI calls on
    different vCPU threads meet here under one lock.
    """

    def __init__(self, maxcpus: int, interrupts: InterruptController) -> None:
        self.states = [VcpuState(index=i, mpidr=mpidr(i)) for i in range(maxcpus)]
        self.interrupts = interrupts
        self.kernel: Kernel = IDLE_KERNEL
        self.hvc_handler: HvcHandler = _no_psci
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[VcpuState]:
        return iter(self.states)

    def __getitem__(self, index: int) -> VcpuState:
        return self.states[index]

    # -- plug / unplug ------------------------------------------------------------------

    def plug(self, index: int, device_id: str | None, qom_path: str) -> VcpuThread:
        """Create vCPU ``index``'s thread (powered off, waiting) and mark it plugged."""
        with self._lock:
            state = self.states[index]
            if state.plugged:
                raise VcpuError(f"vCPU {index} is already plugged")
            thread = VcpuThread(self, state)
            state.thread = thread
            state.power = PowerState.OFF
            state.device_id = device_id
            state.qom_path = qom_path
            state.plugged = True
        try:
            thread.launch()
        except BaseException:
            with self._lock:
                self._clear(state)
            thread.end()
            raise
        with self._lock:
            if state.thread is thread:
                state.thread_id = thread.native_id
        return thread

    def unplug(self, index: int, on_ended: Callable[[VcpuState], None] | None = None) -> None:
        """End vCPU ``index``'s thread and free the slot for a later plug.

        ``on_ended(snapshot)`` runs once the thread has ended, with a snapshot of
        the slot as it was plugged (id, qom-path). The thread is waited for here (up
        to :data:`EJECT_JOIN_TIMEOUT`, see :meth:`VcpuThread.end_and_wait`) unless
        the caller *is* that thread or it does not stop in time; then the thread
        runs ``on_ended`` itself as it exits.
        """
        with self._lock:
            state = self.states[index]
            thread = state.thread
            if not state.plugged or thread is None:
                raise VcpuError(f"vCPU {index} is not plugged")
            snapshot = state.snapshot()
            self._clear(state)

        def ended() -> None:
            if on_ended is not None:
                on_ended(snapshot)

        if not thread.end_and_wait(ended, EJECT_JOIN_TIMEOUT) and current_vcpu() is not thread:
            log.warning(
                "vCPU %d was ejected while running guest code that does not stop;"
                " its thread ends when the guest next calls into the machine",
                index,
            )

    @staticmethod
    def _clear(state: VcpuState) -> None:
        state.plugged = False
        state.thread = None
        state.thread_id = None
        state.power = PowerState.OFF
        state.device_id = None
        state.qom_path = None

    # -- power (PSCI's vCPU table) ------------------------------------------------------

    def index_of_mpidr(self, value: int) -> int | None:
        """The vCPU index with MPIDR ``value``, or ``None`` if no possible vCPU has it."""
        index = cpu_index_of_mpidr(value)
        if index is None or index >= len(self.states):
            return None
        return index

    def power_state(self, index: int) -> PowerState:
        with self._lock:
            return self.states[index].power

    def is_plugged(self, index: int) -> bool:
        with self._lock:
            return self.states[index].plugged

    def boot(self, index: int = 0) -> None:
        """Power on the boot vCPU at the kernel's boot entry."""
        with self._lock:
            thread = self.states[index].thread
            if thread is None:
                raise VcpuError(f"boot vCPU {index} is not plugged")
            if not thread.power_on(_Start(boot=True)):
                raise VcpuError(f"boot vCPU {index} is already running")

    def cpu_on(self, index: int, entry: int, context: int) -> CpuOnResult:
        """PSCI CPU_ON's decision and action, atomically: start it or say why not."""
        with self._lock:
            state = self.states[index]
            if not state.plugged or state.thread is None:
                return "denied"
            if state.power is PowerState.ON:
                return "already_on"
            if state.power is PowerState.ON_PENDING:
                return "on_pending"
            if not state.thread.power_on(_Start(boot=False, entry=entry, context=context)):
                return "on_pending"
            return "started"

    def cpu_off(self, index: int) -> None:
        """PSCI CPU_OFF from vCPU ``index`` itself: its guest call will not return."""
        with self._lock:
            thread = self.states[index].thread
        if thread is not None:
            thread.stop()

    def stop(self, index: int) -> None:
        """A VMM-initiated power-off of vCPU ``index`` (the thread stays, powered off)."""
        self.cpu_off(index)

    def stop_all(self) -> None:
        """Power off every vCPU (SYSTEM_OFF, shutdown)."""
        with self._lock:
            threads = [s.thread for s in self.states if s.thread is not None]
        for thread in threads:
            thread.stop()

    def shutdown(self, timeout: float = 5.0) -> list[int]:
        """End every vCPU thread; returns the indices whose thread did not end in time."""
        with self._lock:
            threads = [s.thread for s in self.states if s.thread is not None]
        for thread in threads:
            thread.end()
        stuck: list[int] = []
        deadline = time.monotonic() + timeout
        for thread in threads:
            if not thread.join(max(0.0, deadline - time.monotonic())):
                stuck.append(thread.index)
        if stuck:
            log.warning("vCPU threads still running guest code after %.1fs: %s", timeout, stuck)
        return stuck

    # -- queries ------------------------------------------------------------------------

    def plugged(self) -> list[VcpuState]:
        """Snapshots of the plugged vCPUs, in index order."""
        with self._lock:
            return [s.snapshot() for s in self.states if s.plugged]

    def plugged_count(self) -> int:
        with self._lock:
            return sum(1 for s in self.states if s.plugged)

    def find_device(self, device_id: str) -> VcpuState | None:
        """The plugged vCPU whose QMP device id is ``device_id``."""
        with self._lock:
            for state in self.states:
                if state.plugged and state.device_id == device_id:
                    return state
        return None

    def live_threads(self) -> int:
        """Host threads of this machine's vCPUs still alive (ended ones excluded)."""
        with self._lock:
            return sum(1 for s in self.states if s.thread is not None and s.thread.alive)


def _no_psci(caller: int, x0: int, x1: int, x2: int, x3: int) -> int:
    return NOT_SUPPORTED  # until the machine wires PSCI in

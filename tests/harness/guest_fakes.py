"""A fake guest kernel for userland and agent tests: vfs + cgroups + a scheduler on threads.

It stands in for ``cpuplug.guest.kernel`` (no VMM, no ACPI): N "CPUs" are plain
threads serving the real :class:`~cpuplug.guest.sched.Scheduler`, and the CPU
files under ``/sys/devices/system/cpu`` behave like the real ones (``cpuN/online``
present only while registered, EPERM for a CPU the host has not enabled).
"""

from __future__ import annotations

import contextlib
import errno
import queue
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cpuplug.agent_protocol import format_cpu_list
from cpuplug.guest.cgroup import CgroupTree
from cpuplug.guest.klog import KernelEvent
from cpuplug.guest.sched import Scheduler
from cpuplug.guest.vfs import GuestOSError, Vfs

CPU_DIR = "/sys/devices/system/cpu"


class _Port:
    def __init__(self, kernel: FakeKernel, cpu: int) -> None:
        self._kernel = kernel
        self._cpu = cpu
        self.kicked = threading.Event()

    def stop_requested(self) -> bool:
        return self._kernel.stopping or self._cpu not in self._kernel.online_set

    def idle(self, timeout: float) -> None:
        self.kicked.wait(timeout)
        self.kicked.clear()

    def poll_interrupts(self) -> None:
        pass


@dataclass
class Emitted:
    name: str
    data: dict[str, int]


def _cpu_list_file(mask: Callable[[], frozenset[int]]) -> Callable[[], str]:
    """The read handler of a CPU list file (``online``, ``possible``, ...)."""
    return lambda: format_cpu_list(mask()) + "\n"


class FakeKernel:
    """``vfs``, ``cgroups``, ``sched``, ``events`` like the real kernel object."""

    def __init__(self, possible: int = 4, online: int = 1, enabled: int | None = None) -> None:
        self.possible_set = frozenset(range(possible))
        self.online_set = frozenset(range(online))
        self.enabled_set = frozenset(range(enabled if enabled is not None else online))
        self.allowed = set(self.enabled_set)  # CPUs the "host" lets CPU_ON start
        self.stopping = False
        self.vfs = Vfs()
        self._lock = threading.Lock()
        self._ports: dict[int, _Port] = {}
        self._threads: dict[int, threading.Thread] = {}
        self.sched = Scheduler(online=lambda: self.online_set, kick=self._kick)
        self.cgroups = CgroupTree(
            self.vfs,
            online=lambda: self.online_set,
            possible=lambda: self.possible_set,
            scheduler=self.sched,
        )
        self._subs: list[Callable[[KernelEvent], None]] = []
        self.online_writes: list[int] = []
        self.machine = None
        masks: dict[str, Callable[[], frozenset[int]]] = {
            "possible": lambda: self.possible_set,
            "present": lambda: self.possible_set,
            "online": lambda: self.online_set,
            "offline": lambda: self.possible_set - self.online_set,
            "enabled": lambda: self.enabled_set,
        }
        for name, fn in masks.items():
            self.vfs.register(f"{CPU_DIR}/{name}", _cpu_list_file(fn))
        self.vfs.register("/proc/sys/kernel/osrelease", lambda: "6.11.0-fake\n")
        for cpu in sorted(self.enabled_set):
            self._register_cpu(cpu)
        for cpu in sorted(self.online_set):
            self._start_cpu(cpu)

    # ---------------------------------------------------------------- events

    class _Events:
        def __init__(self, kernel: FakeKernel) -> None:
            self._k = kernel

        def subscribe(self, cb: Callable[[KernelEvent], None]) -> Callable[[], None]:
            with self._k._lock:
                self._k._subs.append(cb)

            def unsub() -> None:
                with self._k._lock:
                    if cb in self._k._subs:
                        self._k._subs.remove(cb)

            return unsub

    @property
    def events(self) -> FakeKernel._Events:
        return FakeKernel._Events(self)

    def emit(self, name: str, **data: int) -> None:
        with self._lock:
            subs = list(self._subs)
        for cb in subs:
            cb(KernelEvent(name, dict(data), 0.0))

    # ---------------------------------------------------------------- CPUs

    def _register_cpu(self, cpu: int) -> None:
        self.vfs.register(
            f"{CPU_DIR}/cpu{cpu}/online",
            lambda: ("1" if cpu in self.online_set else "0") + "\n",
            lambda data: self._write_online(cpu, data),
        )

    def hot_add(self, cpu: int) -> None:
        """The host plugged ``cpu`` and the ACPI scan registered it (still offline)."""
        self.allowed.add(cpu)
        self.enabled_set = self.enabled_set | {cpu}
        self._register_cpu(cpu)
        self.emit("CpuRegistered", cpu=cpu)

    def _write_online(self, cpu: int, data: str) -> None:
        value = data.strip()
        if value not in ("0", "1"):
            raise GuestOSError(errno.EINVAL)
        self.online_writes.append(cpu)
        if value == "1":
            if cpu in self.online_set:
                return
            if cpu not in self.allowed:
                raise GuestOSError(errno.EPERM)  # PSCI DENIED
            self.online_set = self.online_set | {cpu}
            self._start_cpu(cpu)
            self.emit("CpuOnline", cpu=cpu)
        else:
            if cpu not in self.online_set:
                return
            if len(self.online_set) == 1:
                raise GuestOSError(errno.EBUSY)
            self.online_set = self.online_set - {cpu}
            self._ports[cpu].kicked.set()
            self._threads[cpu].join(5)
            self.emit("CpuOffline", cpu=cpu)

    def _start_cpu(self, cpu: int) -> None:
        port = _Port(self, cpu)
        self._ports[cpu] = port
        t = threading.Thread(
            target=self.sched.run_cpu, args=(cpu, port), name=f"fake-cpu{cpu}", daemon=True
        )
        self._threads[cpu] = t
        t.start()

    def _kick(self, cpu: int) -> None:
        port = self._ports.get(cpu)
        if port is not None:
            port.kicked.set()

    def shutdown(self) -> None:
        for task in self.sched.tasks():
            task.kill()
        for task in self.sched.tasks():
            task.wait(5)
        self.stopping = True
        for port in self._ports.values():
            port.kicked.set()
        for t in self._threads.values():
            t.join(5)
            assert not t.is_alive(), f"{t.name} did not stop"


class SocketStream:
    """``hw.Stream`` over one end of a socketpair (the guest side of a fake agent channel)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, max_bytes: int, timeout: float | None) -> bytes | None:
        try:
            ready, _, _ = select.select([self.sock], [], [], timeout)
        except (OSError, ValueError):
            return b""
        if not ready:
            return None
        try:
            return self.sock.recv(max_bytes)
        except OSError:
            return b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class FakeChannel:
    """``hw.AgentChannel``: ``connect()`` gives the host end of a new connection."""

    def __init__(self) -> None:
        self._pending: queue.Queue[SocketStream] = queue.Queue()
        self.host_socks: list[socket.socket] = []

    def connect(self) -> socket.socket:
        host, guest = socket.socketpair()
        self.host_socks.append(host)
        self._pending.put(SocketStream(guest))
        return host

    def accept(self, timeout: float | None) -> SocketStream | None:
        try:
            return self._pending.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        for s in self.host_socks:
            s.close()
        while not self._pending.empty():
            self._pending.get().close()

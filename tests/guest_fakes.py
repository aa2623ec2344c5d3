"""Test doubles for the guest: CPUs driven by plain threads, and a stand-in cgroup.

``FakeCpus`` runs :meth:`Scheduler.run_cpu` on ordinary threads with a port whose
``idle`` waits on a condition that ``kick`` notifies, so scheduler tests need no
VMM. ``StubGroup``/``StubBandwidth`` are a minimal cgroup for the scheduler
contract (the real one is ``cpuplug.guest.cgroup``).
"""

from __future__ import annotations

import threading
import time

from cpuplug.guest.sched import Bandwidth, Scheduler


class _Port:
    def __init__(self, owner: FakeCpus, cpu: int) -> None:
        self.owner = owner
        self.cpu = cpu
        self.stop = False
        self.kicked = False
        self.cond = threading.Condition()

    def stop_requested(self) -> bool:
        return self.stop

    def idle(self, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.kicked or self.stop, timeout)
            self.kicked = False

    def poll_interrupts(self) -> None:
        pass

    def kick(self) -> None:
        with self.cond:
            self.kicked = True
            self.cond.notify_all()


class FakeCpus:
    """N CPUs as threads; ``offline(n)``/``online(n)`` stop or start one."""

    def __init__(self, n: int) -> None:
        self.online_set: set[int] = set()
        self.lock = threading.Lock()
        self.sched = Scheduler(self.online_mask, self.kick)
        self.ports: dict[int, _Port] = {}
        self.threads: dict[int, threading.Thread] = {}
        for cpu in range(n):
            self.online(cpu)

    def online_mask(self) -> frozenset[int]:
        with self.lock:
            return frozenset(self.online_set)

    def kick(self, cpu: int) -> None:
        port = self.ports.get(cpu)
        if port is not None:
            port.kick()

    def online(self, cpu: int) -> None:
        port = _Port(self, cpu)
        self.ports[cpu] = port
        with self.lock:
            self.online_set.add(cpu)
        t = threading.Thread(target=self.sched.run_cpu, args=(cpu, port), name=f"fakecpu{cpu}")
        self.threads[cpu] = t
        t.start()

    def offline(self, cpu: int) -> None:
        with self.lock:
            self.online_set.discard(cpu)
        port = self.ports[cpu]
        with port.cond:
            port.stop = True
            port.cond.notify_all()
        self.threads[cpu].join(10)
        assert not self.threads[cpu].is_alive()
        del self.threads[cpu]

    def close(self) -> None:
        for cpu in list(self.threads):
            self.offline(cpu)


class StubBandwidth:
    """CFS-like quota per period, enough to exercise the Bandwidth contract."""

    def __init__(self, quota: float, period: float) -> None:
        self.quota = quota
        self.period = period
        self.start = time.monotonic()
        self.used_in_period = 0.0
        self.period_index = 0
        self.throttled_periods = 0
        self.usage = 0.0
        self.lock = threading.Lock()

    def _roll(self, now: float) -> None:
        idx = int((now - self.start) / self.period)
        while self.period_index < idx:
            self.period_index += 1
            self.used_in_period = max(0.0, self.used_in_period - self.quota)

    def runnable_at(self, now: float) -> float:
        with self.lock:
            self._roll(now)
            if self.used_in_period < self.quota:
                return now
            self.throttled_periods += 1
            debt_periods = int(self.used_in_period / self.quota)
            return self.start + (self.period_index + debt_periods) * self.period

    def charge(self, cpu_seconds: float, now: float) -> None:
        with self.lock:
            self._roll(now)
            self.used_in_period += cpu_seconds
            self.usage += cpu_seconds


class StubGroup:
    def __init__(self, name: str, cpus: frozenset[int] | None = None,
                 bandwidth: StubBandwidth | None = None) -> None:
        self._name = name
        self.cpus = cpus
        self._bw = bandwidth

    @property
    def name(self) -> str:
        return self._name

    def cpus_allowed(self) -> frozenset[int] | None:
        return self.cpus

    @property
    def bandwidth(self) -> Bandwidth | None:
        return self._bw

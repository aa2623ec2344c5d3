"""The guest scheduler on CPUs played by plain threads (no VMM needed)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import pytest

from cpuplug.guest.sched import (
    Bandwidth,
    Completion,
    Request,
    SchedError,
    Scheduler,
    Sleep,
    TaskBody,
    WaitFor,
)

# --------------------------------------------------------------------------- fakes
# CPUs played by plain threads whose idle() waits on a condition that kick()
# notifies, and a stand-in cgroup for the SchedGroup/Bandwidth contract.


class _CpuPort:
    def __init__(self, owner: FakeCpus, cpu: int) -> None:
        self.owner = owner
        self.cpu = cpu
        self.stop = False
        self.kicked = False
        self.idling = False  # inside idle(): the scheduler has it in its idle set
        self.cond = threading.Condition()

    def stop_requested(self) -> bool:
        return self.stop

    def idle(self, timeout: float) -> None:
        with self.cond:
            self.idling = True
            self.cond.wait_for(lambda: self.kicked or self.stop, timeout)
            self.kicked = False
            self.idling = False

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
        self.ports: dict[int, _CpuPort] = {}
        self.kicks: list[int] = []  # every kick(cpu) the scheduler sent, in order
        self.threads: dict[int, threading.Thread] = {}
        for cpu in range(n):
            self.online(cpu)

    def online_mask(self) -> frozenset[int]:
        with self.lock:
            return frozenset(self.online_set)

    def kick(self, cpu: int) -> None:
        with self.lock:
            self.kicks.append(cpu)
        port = self.ports.get(cpu)
        if port is not None:
            port.kick()

    def online(self, cpu: int) -> None:
        port = _CpuPort(self, cpu)
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
    def __init__(
        self, name: str, cpus: frozenset[int] | None = None, bandwidth: StubBandwidth | None = None
    ) -> None:
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


# --------------------------------------------------------------------------- tests


@pytest.fixture
def cpus() -> Iterator[FakeCpus]:
    fc = FakeCpus(2)
    yield fc
    for t in fc.sched.tasks():
        t.kill()
    fc.close()


def spin(slices: int, seen: list[int] | None = None) -> TaskBody:
    from cpuplug.guest.sched import current_task

    for _ in range(slices):
        task = current_task()
        if seen is not None and task is not None and task.cpu is not None:
            seen.append(task.cpu)
        yield None
    return 7


def forever(stop: threading.Event) -> TaskBody:
    while not stop.is_set():
        hashlib.sha256(b"x" * 65536).digest()
        yield None
    return 0


def test_task_runs_and_returns_exit_code(cpus: FakeCpus) -> None:
    task = cpus.sched.spawn(spin(5), name="spin")
    assert task.wait(10)
    assert task.exit_code == 7
    assert task.cpu in (0, 1)


def test_spawn_rejects_non_generator(cpus: FakeCpus) -> None:
    with pytest.raises(SchedError):
        cpus.sched.spawn(lambda: 3, name="bad")  # type: ignore[arg-type,return-value]


def test_crashing_task_exits_1_and_cpu_survives(cpus: FakeCpus) -> None:
    def boom() -> TaskBody:
        yield None
        raise ValueError("boom")

    t = cpus.sched.spawn(boom, name="boom")
    assert t.wait(10)
    assert t.exit_code == 1
    assert isinstance(t.error, ValueError)
    ok = cpus.sched.spawn(spin(2), name="after")
    assert ok.wait(10) and ok.exit_code == 7


def test_sleep_blocks_without_cpu(cpus: FakeCpus) -> None:
    def sleeper() -> TaskBody:
        yield Sleep(0.2)
        return 0

    before = time.monotonic()
    t = cpus.sched.spawn(sleeper, name="sleeper")
    assert t.wait(10)
    assert time.monotonic() - before >= 0.2
    assert t.cpu_time < 0.1  # it did not spin while sleeping


def test_waitfor_completion_set_from_another_thread(cpus: FakeCpus) -> None:
    c = Completion()

    def waiter() -> TaskBody:
        yield WaitFor(c, timeout=30)
        return 0 if c.is_set() else 1

    t = cpus.sched.spawn(waiter, name="waiter")
    assert not t.wait(0.1)
    assert t.state == "blocked"
    threading.Timer(0.01, c.set).start()
    assert t.wait(10)
    assert t.exit_code == 0


def test_waitfor_timeout(cpus: FakeCpus) -> None:
    c = Completion()

    def waiter() -> TaskBody:
        yield WaitFor(c, timeout=0.05)
        return 0 if c.is_set() else 3

    t = cpus.sched.spawn(waiter, name="waiter")
    assert t.wait(10) and t.exit_code == 3


def test_kill_blocked_and_running(cpus: FakeCpus) -> None:
    c = Completion()

    def blocked() -> Iterator[Request]:
        yield WaitFor(c)

    t1 = cpus.sched.spawn(blocked(), name="b")  # type: ignore[arg-type]
    stop = threading.Event()
    t2 = cpus.sched.spawn(forever(stop), name="f")
    t1.kill()
    t2.kill(9)
    assert t1.wait(10) and t2.wait(10)
    assert (t1.exit_code, t2.exit_code) == (137, 9)
    assert cpus.sched.tasks() == []


def test_cpuset_pins_tasks(cpus: FakeCpus) -> None:
    group = StubGroup("pinned", cpus=frozenset({1}))
    seen: list[int] = []
    t = cpus.sched.spawn(spin(50, seen), group, name="pinned")
    assert t.wait(10)
    assert seen and set(seen) == {1}
    assert cpus.sched.effective_cpus(group) == frozenset({1})


def test_cpuset_of_offline_cpus_falls_back_to_online(cpus: FakeCpus) -> None:
    group = StubGroup("gone", cpus=frozenset({5}))
    assert cpus.sched.effective_cpus(group) == frozenset({0, 1})
    t = cpus.sched.spawn(spin(3), group, name="fallback")
    assert t.wait(10) and t.exit_code == 7


def test_offline_migrates_running_tasks() -> None:
    fc = FakeCpus(2)
    try:
        stop = threading.Event()
        group = StubGroup("g", cpus=frozenset({1}))
        t = fc.sched.spawn(forever(stop), group, name="busy")
        deadline = time.monotonic() + 10
        while t.cpu_time_by_cpu.get(1, 0) == 0 and time.monotonic() < deadline:
            t.wait(0.01)
        assert t.cpu_time_by_cpu.get(1, 0) > 0
        fc.offline(1)
        before = t.cpu_time_by_cpu.get(0, 0.0)
        while t.cpu_time_by_cpu.get(0, 0.0) == before and time.monotonic() < deadline:
            t.wait(0.01)
        assert t.cpu_time_by_cpu.get(0, 0.0) > before  # it moved to CPU 0 and kept running
        assert t.state in ("runnable", "running")
        stop.set()
        assert t.wait(10)
    finally:
        fc.close()


def _wait_idle(fc: FakeCpus, cpus: set[int]) -> None:
    deadline = time.monotonic() + 10
    while not all(fc.ports[c].idling for c in cpus):
        assert time.monotonic() < deadline, "CPUs never went idle"
        time.sleep(0.001)


def test_idle_cpu_going_offline_wakes_no_one() -> None:
    """Nothing to migrate, so no IPI: waking every idle CPU per CPU taken down
    made removing k online vCPUs cost O(k²) (bench/bench_batch.py)."""
    fc = FakeCpus(8)
    try:
        _wait_idle(fc, set(range(8)))
        with fc.lock:
            fc.kicks.clear()
        fc.offline(7)
        assert fc.kicks == []
    finally:
        fc.close()


def test_offline_wakes_one_idle_cpu_for_the_migrated_task() -> None:
    """The task the dying CPU ran (pinned to it, so it falls back) gets exactly one
    idle CPU woken for it, and runs on one of the CPUs left."""
    fc = FakeCpus(6)
    try:
        stop = threading.Event()
        t = fc.sched.spawn(forever(stop), StubGroup("g", cpus=frozenset({5})), name="busy")
        deadline = time.monotonic() + 10
        while t.cpu_time_by_cpu.get(5, 0) == 0 and time.monotonic() < deadline:
            t.wait(0.01)
        assert t.cpu_time_by_cpu.get(5, 0) > 0
        _wait_idle(fc, set(range(5)))
        with fc.lock:
            fc.kicks.clear()
        fc.offline(5)
        assert len(fc.kicks) == 1 and fc.kicks[0] in range(5), fc.kicks
        while sum(t.cpu_time_by_cpu.get(c, 0.0) for c in range(5)) == 0:
            assert time.monotonic() < deadline
            t.wait(0.01)
        stop.set()
        assert t.wait(10)
    finally:
        fc.close()


def test_new_cpu_adds_capacity_at_once() -> None:
    fc = FakeCpus(1)
    try:
        stop = threading.Event()
        tasks = [fc.sched.spawn(forever(stop), name=f"w{i}") for i in range(3)]
        fc.online(1)
        deadline = time.monotonic() + 10
        while fc.sched.busy_time.get(1, 0.0) == 0.0 and time.monotonic() < deadline:
            tasks[0].wait(0.01)
        assert fc.sched.busy_time.get(1, 0.0) > 0
        stop.set()
        for t in tasks:
            assert t.wait(10)
    finally:
        fc.close()


def test_gil_releasing_work_runs_in_parallel(cpus: FakeCpus) -> None:
    """Two slices overlap in time on the two CPUs (hashlib releases the GIL)."""
    spans: list[tuple[int, float, float]] = []
    lock = threading.Lock()
    buf = b"y" * (1 << 22)

    def hasher() -> TaskBody:
        from cpuplug.guest.sched import current_task

        for _ in range(10):
            a = time.monotonic()
            hashlib.sha256(buf).digest()
            b = time.monotonic()
            task = current_task()
            assert task is not None and task.cpu is not None
            with lock:
                spans.append((task.cpu, a, b))
            yield None
        return 0

    ts = [cpus.sched.spawn(hasher, name=f"h{i}") for i in range(2)]
    for t in ts:
        assert t.wait(30)
    overlap = any(
        c1 != c2 and a1 < b2 and a2 < b1 for (c1, a1, b1) in spans for (c2, a2, b2) in spans
    )
    assert overlap


def test_bandwidth_throttles_group(cpus: FakeCpus) -> None:
    """quota 10 ms per 50 ms period: a spinning task gets about a fifth of one CPU."""
    bw = StubBandwidth(quota=0.01, period=0.05)
    group = StubGroup("limited", bandwidth=bw)
    free = StubGroup("free")
    stop = threading.Event()

    def busy() -> TaskBody:
        while not stop.is_set():
            t_end = time.monotonic() + 0.002
            while time.monotonic() < t_end:
                pass
            yield None
        return 0

    limited = cpus.sched.spawn(busy, group, name="limited")
    unlimited = cpus.sched.spawn(busy, free, name="unlimited")
    stop.wait(0.6)
    stop.set()
    assert limited.wait(10) and unlimited.wait(10)
    assert bw.throttled_periods > 0
    assert limited.cpu_time < unlimited.cpu_time / 2
    assert bw.usage == pytest.approx(limited.cpu_time)


def test_base_exception_in_a_slice_ends_the_task_and_propagates() -> None:
    """A VcpuStop raised inside a task's slice unwinds the CPU; the task is not left 'running'."""
    from cpuplug.hw import VcpuStop

    sched = Scheduler(lambda: frozenset({0}), lambda _cpu: None)

    def body() -> TaskBody:
        yield None
        raise VcpuStop

    task = sched.spawn(body, name="stopped")

    class Port:
        def stop_requested(self) -> bool:
            return False

        def idle(self, timeout: float) -> None:
            raise AssertionError("not reached")

        def poll_interrupts(self) -> None:
            pass

    with pytest.raises(VcpuStop):
        sched.run_cpu(0, Port())
    assert task.wait(1) and task.exit_code == 137
    assert sched.running_cpus() == frozenset()

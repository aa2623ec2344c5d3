"""The guest scheduler: tasks run in slices on the vCPU threads (docs/contract.md §6 "Scheduler").

Contract for the rest of the guest (userland, agent, cgroup)
------------------------------------------------------------
**A task is a Python generator.** Each ``next()`` runs one *slice*: a few
milliseconds of work, then a ``yield``. Slices run on vCPU threads only — the
threads the VMM created for the online vCPUs — so a task gets CPU time exactly
when, and only where, an online CPU allowed by its cgroup picks it. Work that
releases the GIL inside a slice (``hashlib`` over a buffer of more than 2 KiB,
``zlib``) really runs in parallel on several vCPU threads; that is how adding a
vCPU adds measurable throughput.

What a task may ``yield`` (a :data:`Request`):

* ``None`` — end of slice, still runnable; it goes to the back of the run queue.
* :class:`Sleep` ``(seconds)`` — blocked, holding no CPU, until the time passed.
* :class:`WaitFor` ``(completion, timeout)`` — blocked until the
  :class:`Completion` is set or the timeout (seconds, ``None`` = forever)
  expired; the task checks ``completion.is_set()`` itself afterwards.

The generator's return value is the exit code (``None`` means 0). An uncaught
``Exception`` ends the task with exit code 1 and is kept in ``Task.error``. A
body may ``yield from`` other generators (that is how ``sh`` runs a command).

**Where a task may run.** ``Scheduler.effective_cpus(group)`` is the one rule:
``group.cpus_allowed() ∩ online``; if that is empty, or the group has no
cpuset (``None``), all online CPUs — cgroup v2's fallback to the parent's
effective set, which keeps a task running when its only CPU is unplugged. The
cgroup module shows this same set as ``cpuset.cpus.effective``.

**Bandwidth (CFS ``cpu.max``).** A group may carry a :class:`Bandwidth`. Before
picking a task the scheduler asks ``bandwidth.runnable_at(now)``: a time
``<= now`` means the group still has quota in this period; a later time means
the group is throttled until then, and its tasks are skipped (they stay
queued; no CPU spins on them). After each slice the scheduler calls
``bandwidth.charge(seconds, now)`` with the slice's wall time on its vCPU (the
time the CPU was occupied, which is what CFS charges). A slice may overrun the
remaining quota; the group then carries the debt into the next periods, like
CFS's runtime going negative. Hierarchies are the cgroup module's business:
``cpus_allowed`` and ``bandwidth`` of a child must already fold in its
ancestors.

**Cgroup namespace.** A task also carries ``cgroup_ns``: the root of its cgroup
namespace (a group, or ``None`` for the init namespace, which sees the whole
tree). The scheduler never looks at it; it is there so the cgroup and file code
can answer "what does *this* task see" the way Linux reads ``current``'s
nsproxy. A task spawned from inside another task inherits its namespace unless
one is given, as ``fork`` does; from a thread that runs no task (the agent, a
test) the default is the init namespace.

**Threads.** ``spawn``, ``Task.kill``, ``Task.wait``, ``Completion.set`` and
``Completion.wait`` may be called from any thread (vCPU threads, the agent's
threads, tests). ``Task.wait`` and ``Completion.wait`` block the *calling
thread* and must not be called from inside a task body (yield a
:class:`WaitFor` instead).

The kernel's side (``cpu.py``) enters :meth:`Scheduler.run_cpu` on each vCPU
thread once that CPU is online, and the call returns when the CPU must go
offline; whatever task was on it is already back in the queue (migration).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Protocol

from cpuplug.errors import CpuplugError

__all__ = [
    "Bandwidth",
    "Completion",
    "CpuPort",
    "Request",
    "SchedError",
    "SchedGroup",
    "Scheduler",
    "Sleep",
    "Task",
    "TaskBody",
    "WaitFor",
    "current_task",
]

# Fallback idle period: an idle vCPU re-checks the run queue at least this often
# even if no wake-up interrupt reaches it (Linux's tick; it bounds the damage of
# a lost IPI, it is not how tasks normally get started).
IDLE_TICK = 0.05


class SchedError(CpuplugError):
    """A scheduler call was used wrongly (e.g. spawning something that is not a task body)."""


@dataclass(frozen=True)
class Sleep:
    """Request: block for ``seconds`` without holding a CPU."""

    seconds: float


@dataclass(frozen=True)
class WaitFor:
    """Request: block until ``completion`` is set or ``timeout`` s passed (None = no limit)."""

    completion: Completion
    timeout: float | None = None


Request = Sleep | WaitFor | None
TaskBody = Generator[Request, None, int | None]


class Bandwidth(Protocol):
    """CFS bandwidth control of one cgroup, as the scheduler consults it (see module doc)."""

    def runnable_at(self, now: float) -> float:
        """Earliest ``time.monotonic()`` instant at which the group may run; ``<= now`` = now."""
        ...

    def charge(self, cpu_seconds: float, now: float) -> None:
        """Account ``cpu_seconds`` of CPU time used by one of the group's tasks, up to ``now``."""
        ...


class SchedGroup(Protocol):
    """What the scheduler needs from a cgroup."""

    @property
    def name(self) -> str: ...

    def cpus_allowed(self) -> frozenset[int] | None:
        """The cpuset (``cpuset.cpus``, ancestors folded in), or ``None`` for no restriction."""
        ...

    @property
    def bandwidth(self) -> Bandwidth | None:
        """The group's ``cpu.max`` accounting, or ``None`` when it has none (``max``)."""
        ...


class CpuPort(Protocol):
    """What :meth:`Scheduler.run_cpu` needs from the kernel for the CPU it runs on."""

    def stop_requested(self) -> bool:
        """True once this CPU has been asked to go offline."""
        ...

    def idle(self, timeout: float) -> None:
        """Wait for an interrupt (at most ``timeout`` s) and handle it (WFI + IRQ entry)."""
        ...

    def poll_interrupts(self) -> None:
        """Handle interrupts that are already pending, without waiting."""
        ...


class Completion:
    """A one-shot event that tasks can block on (``yield WaitFor(c)``) and threads can wait for.

    Unlike ``threading.Event`` it wakes blocked *tasks* through the scheduler
    instead of parking a thread, so a waiting task holds no vCPU.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._set = False
        self._callbacks: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._cond:
            if self._set:
                return
            self._set = True
            callbacks, self._callbacks = self._callbacks, []
            self._cond.notify_all()
        for cb in callbacks:
            cb()

    def wait(self, timeout: float | None) -> bool:
        """Block the calling *thread* until set; False if ``timeout`` expired first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._set, timeout)

    def _subscribe(self, cb: Callable[[], None]) -> bool:
        """Call ``cb`` once when set; returns False (and does not subscribe) if already set."""
        with self._cond:
            if self._set:
                return False
            self._callbacks.append(cb)
            return True


_current = threading.local()


def current_task() -> Task | None:
    """The task whose slice runs on the calling thread, if any."""
    task: Task | None = getattr(_current, "task", None)
    return task


class Task:
    """One schedulable generator. Created by :meth:`Scheduler.spawn`, never directly."""

    def __init__(
        self,
        sched: Scheduler,
        pid: int,
        name: str,
        body: TaskBody,
        group: SchedGroup | None,
        cgroup_ns: SchedGroup | None = None,
    ) -> None:
        self.pid = pid
        self.name = name
        self.group = group
        self.cgroup_ns = cgroup_ns  # root of its cgroup namespace; None = the init one
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self.cpu: int | None = None  # CPU of the current or last slice
        self.cpu_time = 0.0  # seconds of slices, all CPUs
        self.cpu_time_by_cpu: dict[int, float] = {}
        self.done = Completion()
        self.ignored_signals: set[int] = set()
        """Signals this task ignores (``trap '' TERM``): :func:`cpuplug.guest.userland.deliver`
        drops them; SIGKILL and SIGSTOP cannot be ignored."""
        self._sched = sched
        self._body = body
        self._state = "runnable"  # runnable | running | blocked | exited
        self._kill_code: int | None = None
        self._wake_token = 0  # bumps on every block, so stale timer/event wake-ups are ignored

    @property
    def state(self) -> str:
        return self._state

    def wait(self, timeout: float | None) -> bool:
        """Block the calling thread until the task exited; False on timeout."""
        return self.done.wait(timeout)

    def kill(self, exit_code: int = 137) -> None:
        """End the task at its next slice boundary (at once if it is not running)."""
        self._sched._kill(self, exit_code)

    def __repr__(self) -> str:
        return f"<Task {self.pid} {self.name!r} {self._state}>"


class Scheduler:
    """A global run queue served by every online CPU (see module doc for the contract)."""

    def __init__(
        self,
        online: Callable[[], frozenset[int]],
        kick: Callable[[int], None],
        log: Callable[[str], None] | None = None,
    ) -> None:
        """``online``: the kernel's online mask; ``kick(cpu)``: wake an idle CPU (an IPI)."""
        self._online = online
        self._kick_cpu = kick
        self._log = log or (lambda _msg: None)
        self._lock = threading.Lock()
        self._runq: deque[Task] = deque()
        self._timers: list[tuple[float, int, int, Task]] = []
        self._seq = itertools.count()
        self._pids = itertools.count(1)
        self._tasks: dict[int, Task] = {}
        self._idle: set[int] = set()
        self._running_cpus: set[int] = set()
        self.busy_time: dict[int, float] = {}  # seconds of task slices per CPU

    # ------------------------------------------------------------------ tasks

    def spawn(
        self,
        body: TaskBody | Callable[[], TaskBody],
        group: SchedGroup | None = None,
        name: str = "task",
        *,
        cgroup_ns: SchedGroup | None = None,
    ) -> Task:
        """Start a task: ``body`` is a generator, or a function returning one.

        ``cgroup_ns`` is the root of the task's cgroup namespace; ``None`` inherits
        the spawning task's (``fork``), or the init namespace when no task is
        spawning — so a task cannot hand a child a wider view than its own by
        leaving the argument out.
        """
        gen = body() if callable(body) and not isinstance(body, Generator) else body
        if not isinstance(gen, Generator):
            raise SchedError(f"task body for {name!r} is not a generator")
        if cgroup_ns is None:
            parent = current_task()
            cgroup_ns = parent.cgroup_ns if parent is not None else None
        with self._lock:
            task = Task(self, next(self._pids), name, gen, group, cgroup_ns)
            self._tasks[task.pid] = task
            self._runq.append(task)
            target = self._idle_target_locked(task)
        if target is not None:
            self._kick_cpu(target)
        return task

    def tasks(self, group: SchedGroup | None = None) -> list[Task]:
        """Live tasks (not exited), all or those of ``group``."""
        with self._lock:
            return [t for t in self._tasks.values() if group is None or t.group is group]

    def effective_cpus(self, group: SchedGroup | None) -> frozenset[int]:
        """Where ``group``'s tasks may run now: cpuset ∩ online, else all online (cgroup v2)."""
        online = self._online()
        allowed = group.cpus_allowed() if group is not None else None
        if allowed is None:
            return online
        eff = allowed & online
        return eff if eff else online

    def reschedule(self, cpus: Iterable[int] | None = None) -> None:
        """Kick idle CPUs so they re-check the queue (after a cpuset or cpu.max change)."""
        with self._lock:
            targets = [c for c in self._idle if cpus is None or c in set(cpus)]
            self._idle.difference_update(targets)
        for cpu in targets:
            self._kick_cpu(cpu)

    # ---------------------------------------------------------- CPU main loop

    def run_cpu(self, cpu: int, port: CpuPort) -> None:
        """Serve the run queue on ``cpu`` until ``port.stop_requested()``; then return.

        Runs on that CPU's vCPU thread. Interrupts are handled between slices
        (``port.poll_interrupts``) and while idle (``port.idle``).
        """
        with self._lock:
            self._running_cpus.add(cpu)
            self.busy_time.setdefault(cpu, 0.0)
        try:
            while not port.stop_requested():
                task, wait = self._pick(cpu)
                if task is None:
                    port.idle(wait)
                    with self._lock:
                        self._idle.discard(cpu)
                    continue
                self._run_slice(cpu, task)
                port.poll_interrupts()
        finally:
            with self._lock:
                self._running_cpus.discard(cpu)
                self._idle.discard(cpu)
                targets = self._targets_after_leaving_locked(cpu)
            for target in targets:
                self._kick_cpu(target)

    def _pick(self, cpu: int) -> tuple[Task | None, float]:
        now = time.monotonic()
        online = self._online()
        with self._lock:
            self._fire_timers_locked(now)
            next_event = now + IDLE_TICK
            if self._timers:
                next_event = min(next_event, self._timers[0][0])
            for _ in range(len(self._runq)):
                task = self._runq.popleft()
                if task._state == "exited":
                    continue
                if task._kill_code is None:
                    if cpu not in self._effective_locked(task.group, online):
                        self._runq.append(task)
                        continue
                    bw = task.group.bandwidth if task.group is not None else None
                    if bw is not None:
                        at = bw.runnable_at(now)
                        if at > now:
                            next_event = min(next_event, at)
                            self._runq.append(task)
                            continue
                task._state = "running"
                task.cpu = cpu
                return task, 0.0
            self._idle.add(cpu)
            return None, max(0.0, next_event - now)

    def _effective_locked(self, group: SchedGroup | None, online: frozenset[int]) -> frozenset[int]:
        allowed = group.cpus_allowed() if group is not None else None
        if allowed is None:
            return online
        eff = allowed & online
        return eff if eff else online

    def _run_slice(self, cpu: int, task: Task) -> None:
        if task._kill_code is not None:
            task._body.close()
            self._exit(task, task._kill_code, None)
            return
        _current.task = task
        start = time.monotonic()
        request: Request = None
        code: int | None = None
        error: BaseException | None = None
        finished = False
        try:
            request = next(task._body)
        except StopIteration as stop:
            finished = True
            code = 0 if stop.value is None else int(stop.value)
        except Exception as exc:  # a crashing task ends itself, never the CPU
            finished = True
            code, error = 1, exc
            self._log(f"task {task.pid} ({task.name}) died: {exc!r}")
        except BaseException as exc:
            # VcpuStop (the machine is powering this vCPU off) unwound through the
            # task's frame, which cannot resume: the task ends, the stop goes on.
            _current.task = None
            self._exit(task, 137, exc)
            raise
        finally:
            _current.task = None
        end = time.monotonic()
        used = end - start
        task.cpu_time += used
        task.cpu_time_by_cpu[cpu] = task.cpu_time_by_cpu.get(cpu, 0.0) + used
        self.busy_time[cpu] = self.busy_time.get(cpu, 0.0) + used
        if task.group is not None and task.group.bandwidth is not None:
            task.group.bandwidth.charge(used, end)
        if finished:
            self._exit(task, code if code is not None else 0, error)
            return
        self._after_slice(task, request, end)

    def _after_slice(self, task: Task, request: Request, now: float) -> None:
        with self._lock:
            if task._kill_code is not None:
                pass  # killed during its slice: ended below, outside the lock
            elif request is None:
                task._state = "runnable"
                self._runq.append(task)
                return
            elif isinstance(request, Sleep):
                self._block_locked(task, now + max(0.0, request.seconds))
                return
            elif isinstance(request, WaitFor):
                deadline = None if request.timeout is None else now + max(0.0, request.timeout)
                token = self._block_locked(task, deadline)
                if not request.completion._subscribe(lambda: self._wake(task, token)):
                    task._state = "runnable"  # already set: do not block at all
                    self._runq.append(task)
                return
            else:
                task._state = "runnable"
                self._runq.append(task)
                self._log(f"task {task.pid} ({task.name}) yielded {request!r}; ignored")
                return
        task._body.close()
        self._exit(task, task._kill_code, None)

    def _block_locked(self, task: Task, deadline: float | None) -> int:
        task._state = "blocked"
        task._wake_token += 1
        token = task._wake_token
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, next(self._seq), token, task))
        return token

    def _fire_timers_locked(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, token, task = heapq.heappop(self._timers)
            if task._state == "blocked" and task._wake_token == token:
                task._state = "runnable"
                self._runq.append(task)

    def _wake(self, task: Task, token: int) -> None:
        with self._lock:
            if task._state != "blocked" or task._wake_token != token:
                return
            task._state = "runnable"
            self._runq.append(task)
            target = self._idle_target_locked(task)
        if target is not None:
            self._kick_cpu(target)

    def _idle_target_locked(self, task: Task) -> int | None:
        if not self._idle:
            return None
        eff = self._effective_locked(task.group, self._online())
        for cpu in sorted(self._idle):
            if cpu in eff:
                self._idle.discard(cpu)
                return cpu
        return None

    def _targets_after_leaving_locked(self, gone: int) -> list[int]:
        """Idle CPUs to wake once ``gone`` stops serving: one per queued task, no more.

        The task ``gone`` was running is back in the queue, and tasks pinned to
        ``gone`` alone now fall back to the other online CPUs; each needs one idle
        CPU allowed to run it, as Linux's migration wakes only the CPU a task
        moves to. Waking *every* idle CPU instead cost O(online) thread wake-ups
        and online-mask reads per CPU taken down, so removing k online vCPUs
        back to back grew as k² (bench/bench_batch.py). ``gone`` may still be
        in the online mask here (the kernel clears it after ``run_cpu``
        returns), so it is left out explicitly.
        """
        if not self._idle or not self._runq:
            return []
        online = self._online() - {gone}
        idle = sorted(self._idle)
        targets: list[int] = []
        for task in self._runq:
            if not idle:
                break
            if task._state == "exited":
                continue
            eff = self._effective_locked(task.group, online)
            for target in idle:
                if target in eff:
                    idle.remove(target)
                    targets.append(target)
                    break
        self._idle.difference_update(targets)
        return targets

    def _kill(self, task: Task, exit_code: int) -> None:
        with self._lock:
            if task._state == "exited" or task._kill_code is not None:
                return
            task._kill_code = exit_code
            if task._state == "blocked":
                task._state = "runnable"
                task._wake_token += 1
                self._runq.append(task)
            target = self._idle_target_locked(task) if task._state == "runnable" else None
        if target is not None:
            self._kick_cpu(target)

    def _exit(self, task: Task, code: int, error: BaseException | None) -> None:
        with self._lock:
            task._state = "exited"
            task.exit_code = code
            task.error = error
            self._tasks.pop(task.pid, None)
        task.done.set()

    def running_cpus(self) -> frozenset[int]:
        """CPUs currently inside :meth:`run_cpu`."""
        with self._lock:
            return frozenset(self._running_cpus)

"""cgroup v2 (cpuset + cpu controllers) on the guest's file tree, with CFS bandwidth control.

What Linux gives a container, modelled on ``/sys/fs/cgroup``:

* ``cpuset.cpus`` — the CPUs asked for (a CPU list; ``""`` = no restriction).
  A write is parsed with :func:`cpuplug.agent_protocol.parse_cpu_list` (the one
  CPU-list implementation of the project) and must be a subset of the
  *possible* CPUs, else ``EINVAL`` — as ``update_cpumask`` checks it against
  the top cpuset.
* ``cpuset.cpus.effective`` — ``cpuset.cpus ∩ parent's effective``; if that is
  empty (nothing asked, or every asked CPU went offline) the parent's effective
  set. The root's effective set is the online CPUs. Always computed from the
  live online mask, so hot-add and hot-remove show up without a hook.
* ``cpu.max`` — ``"max 100000"`` or ``"QUOTA PERIOD"`` (µs). Writes accept
  ``"max"``, ``"QUOTA"`` (period kept) and ``"QUOTA PERIOD"`` and are checked
  like ``tg_set_cfs_bandwidth``: period 1000..1000000, quota >= 1000 or max.
* ``cpu.stat`` — ``usage_usec user_usec system_usec nr_periods nr_throttled
  throttled_usec``. Task slices are user time; the guest kernel's own work is
  not run in tasks, so ``system_usec`` stays 0.
* ``cgroup.procs`` — pids of the group's live tasks; writing a pid moves it.

The cgroup root has no ``cpu.max`` and no ``cpuset.cpus`` (as in v2).

Cgroup namespaces
-----------------
A task's ``cgroup_ns`` (:mod:`cpuplug.guest.sched`) is the root of its cgroup
namespace: the container's cgroup for a container's init and every exec in it,
``None`` (the init namespace) for the agent and the kernel. As in a container whose
init unshared a cgroup namespace and mounted cgroup2 again (docs/guest.md), such a
task sees, through :meth:`CgroupTree.view_for`:

* ``/sys/fs/cgroup`` rooted at its namespace root: its own ``cpu.max``,
  ``cpuset.cpus``, ``cpuset.cpus.effective``, ``cgroup.procs``, ``cpu.stat`` at the
  top, its children below; the root and its siblings have no path (``ENOENT``);
  ``rmdir /sys/fs/cgroup`` is ``EBUSY`` (a mount point).
* ``/proc/self/cgroup`` as ``0::/`` (its cgroup relative to its namespace root;
  ``0::/<id>`` for the same task read from the init namespace's view of it).

Writes follow cgroup v2 mounted with ``nsdelegate`` (what systemd mounts, so what a
container on a systemd host lives under): from inside a namespace the namespace
root's own control files are the delegator's, so writing its ``cpu.max`` or
``cpuset.cpus`` is ``EPERM`` (``cgroup_file_write``) — a container cannot lift the
limit the runtime gave it — while its children's stay writable (delegation);
``cgroup.procs`` is writable but moving a task from or to a cgroup outside the
namespace is ``ENOENT`` (``cgroup_procs_write_permission``). The writer is the task
whose slice runs the write (:func:`cpuplug.guest.sched.current_task`, Linux's
``current``); a thread that runs no task is the init namespace and unrestricted.

Knowingly different from Linux: the cpu and cpuset controllers are always on
in every group (there is no ``cgroup.subtree_control`` to enable them), tasks
may live in inner groups (no "no internal processes" rule), and ``cpu.stat``
has no ``nr_bursts``/``burst_usec`` (no ``cpu.max.burst``).

How the scheduler uses it (the :class:`cpuplug.guest.sched.SchedGroup` contract)
------------------------------------------------------------------------------
A :class:`Cgroup` *is* a ``SchedGroup``. ``cpus_allowed()`` returns the
effective set (ancestors folded in) or ``None`` when no ancestor restricts.
``bandwidth`` always returns an accountant — also for ``max`` groups — because
``cpu.stat``'s ``usage_usec`` must count every group's time; for an unlimited
chain ``runnable_at(now)`` is simply ``now``. Charging a child charges every
ancestor's pool too, and the group may run only when every limited ancestor
still has runtime: CFS's hierarchical throttling.

CFS bandwidth control (:class:`CfsBandwidth`), as kernel/sched/fair.c does it:
a pool of ``quota`` µs of runtime per ``period``; running tasks draw from it;
at ``<= 0`` the group is throttled until the refill at the next period
boundary; a slice that overruns leaves the pool negative and the debt is paid
from the next refills (runtime never exceeds ``quota``). Time comes in as the
``now`` argument (``time.monotonic()`` seconds), so tests drive it with a fake
clock. Periods are accounted lazily when the group is touched, not by a timer.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cpuplug.agent_protocol import CpuListError, format_cpu_list, parse_cpu_list
from cpuplug.guest.sched import Scheduler, Task, current_task
from cpuplug.guest.vfs import BindMount, GuestOSError, Vfs, VfsView, normpath

__all__ = [
    "CGROUP_ROOT",
    "PROC_SELF_CGROUP",
    "CfsBandwidth",
    "Cgroup",
    "CgroupTree",
    "CpuStat",
    "GroupBandwidth",
    "parse_cpu_max",
]

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_SELF_CGROUP = "/proc/self/cgroup"

MIN_PERIOD_US = 1000  # min_cfs_quota_period: 1 ms
MAX_PERIOD_US = 1_000_000  # max_cfs_quota_period: 1 s
MIN_QUOTA_US = 1000  # min_cfs_quota_period again: quota below 1 ms is refused
MAX_QUOTA_US = (1 << 44) - 1  # max_cfs_runtime, in µs
DEFAULT_PERIOD_US = 100_000


@dataclass(frozen=True)
class CpuStat:
    """The numbers of ``cpu.stat`` (µs and counts)."""

    usage_usec: int
    user_usec: int
    system_usec: int
    nr_periods: int
    nr_throttled: int
    throttled_usec: int

    def render(self) -> str:
        return "".join(f"{k} {v}\n" for k, v in self.__dict__.items())


def is_decimal(text: str) -> bool:
    """ASCII digits only, as the kernel's kstrto* parsers take them.

    ``str.isdigit`` alone would let Arabic-Indic or fullwidth digits through, which
    no Linux interface accepts.
    """
    return text.isascii() and text.isdigit()


def parse_cpu_max(text: str, current_period_us: int) -> tuple[int | None, int]:
    """Parse a ``cpu.max`` write into ``(quota_us or None for max, period_us)``.

    Accepts ``"max"``, ``"max P"``, ``"Q"``, ``"Q P"`` (surrounding whitespace
    ignored); raises :class:`GuestOSError` ``EINVAL`` otherwise or when out of the
    kernel's ranges.
    """
    fields = text.split()
    if not 1 <= len(fields) <= 2:
        raise GuestOSError(errno.EINVAL)
    quota: int | None
    if fields[0] == "max":
        quota = None
    elif is_decimal(fields[0]):
        quota = int(fields[0])
    else:
        raise GuestOSError(errno.EINVAL)
    if len(fields) == 2:
        if not is_decimal(fields[1]):
            raise GuestOSError(errno.EINVAL)
        period = int(fields[1])
    else:
        period = current_period_us
    if not MIN_PERIOD_US <= period <= MAX_PERIOD_US:
        raise GuestOSError(errno.EINVAL)
    if quota is not None and not MIN_QUOTA_US <= quota <= MAX_QUOTA_US:
        raise GuestOSError(errno.EINVAL)
    return quota, period


class CfsBandwidth:
    """One group's own CFS runtime pool and its ``cpu.stat`` counters. Thread-safe.

    ``quota_us=None`` means unlimited: only usage is counted. Internally every
    time and amount is an integer of nanoseconds, so period boundaries and a pool
    drawn to exactly zero are exact (``0.05 - 0.03 - 0.02`` is not 0 in floats).
    """

    def __init__(self, quota_us: int | None = None, period_us: int = DEFAULT_PERIOD_US) -> None:
        self._lock = threading.Lock()
        self._quota: int | None = quota_us
        self._period: int = period_us
        self._runtime = 0  # ns left in the current period
        self._period_start: int | None = None  # ns; set on first use
        self._active = False  # the current period saw activity
        self._throttled_since: int | None = None  # ns
        self._usage = 0  # ns
        self._nr_periods = 0
        self._nr_throttled = 0
        self._throttled_time = 0  # ns

    # -------------------------------------------------------------- settings

    @property
    def quota_us(self) -> int | None:
        return self._quota

    @property
    def period_us(self) -> int:
        return self._period

    def set_limit(self, quota_us: int | None, period_us: int, now: float) -> None:
        """Apply a new ``cpu.max``; like the kernel, a new period starts with a full pool."""
        t = _ns(now)
        with self._lock:
            self._unthrottle_locked(t)
            self._quota, self._period = quota_us, period_us
            self._period_start = t
            self._runtime = self._quota_ns()
            self._active = False

    # -------------------------------------------------------------- scheduler side

    def runnable_at(self, now: float) -> float:
        """``now`` if the pool has runtime, else the refill instant that gives it some."""
        t = _ns(now)
        with self._lock:
            self._advance_locked(t)
            if self._quota is None or self._runtime > 0:
                return now
            self._active = True  # a throttled group waiting is an active period
            assert self._period_start is not None
            refills = -self._runtime // self._quota_ns() + 1
            return (self._period_start + refills * self._period * 1000) / 1e9

    def charge(self, cpu_seconds: float, now: float) -> None:
        """Draw ``cpu_seconds`` of runtime used up to ``now``; throttle at ``<= 0``."""
        t = _ns(now)
        with self._lock:
            self._advance_locked(t)
            used = _ns(cpu_seconds)
            self._usage += used
            self._active = True
            if self._quota is None:
                return
            self._runtime -= used
            if self._runtime <= 0 and self._throttled_since is None:
                self._throttled_since = t

    def stat(self, now: float) -> CpuStat:
        t = _ns(now)
        with self._lock:
            self._advance_locked(t)
            throttled = self._throttled_time
            if self._throttled_since is not None:
                throttled += max(0, t - self._throttled_since)
            usage = self._usage // 1000
            return CpuStat(
                usage_usec=usage,
                user_usec=usage,
                system_usec=0,
                nr_periods=self._nr_periods,
                nr_throttled=self._nr_throttled,
                throttled_usec=throttled // 1000,
            )

    def throttled(self, now: float) -> bool:
        with self._lock:
            self._advance_locked(_ns(now))
            return self._quota is not None and self._runtime <= 0

    # -------------------------------------------------------------- internals

    def _quota_ns(self) -> int:
        return 0 if self._quota is None else self._quota * 1000

    def _advance_locked(self, t: int) -> None:
        """Account every period boundary passed since the last call (lazy period timer)."""
        if self._period_start is None:
            self._period_start = t
            self._runtime = self._quota_ns()
            return
        period = self._period * 1000
        elapsed = t - self._period_start
        if elapsed < period:
            return
        boundaries = elapsed // period
        if self._quota is None:
            # Unlimited: CFS does not arm the period timer; nothing to count.
            self._period_start += boundaries * period
            self._active = False
            return
        quota = self._quota_ns()
        for i in range(boundaries):
            throttled = self._runtime <= 0
            if self._active or throttled:
                self._nr_periods += 1
                if throttled:
                    self._nr_throttled += 1
            self._runtime = min(quota, self._runtime + quota)
            self._active = False
            if self._runtime > 0:
                self._unthrottle_locked(self._period_start + (i + 1) * period)
                # The remaining boundaries are idle periods: nothing changes at them.
                self._runtime = quota
                break
        self._period_start += boundaries * period

    def _unthrottle_locked(self, at: int) -> None:
        if self._throttled_since is not None:
            self._throttled_time += max(0, at - self._throttled_since)
            self._throttled_since = None


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


class GroupBandwidth:
    """What the scheduler sees as a group's ``bandwidth``: the group's pool and its ancestors'.

    Charging charges every level (a parent's ``cpu.stat`` includes its children);
    the group may run only when every level has runtime.
    """

    def __init__(self, chain: list[CfsBandwidth]) -> None:
        self._chain = chain

    def runnable_at(self, now: float) -> float:
        return max(bw.runnable_at(now) for bw in self._chain)

    def charge(self, cpu_seconds: float, now: float) -> None:
        for bw in self._chain:
            bw.charge(cpu_seconds, now)


class Cgroup:
    """One cgroup directory. A :class:`cpuplug.guest.sched.SchedGroup`."""

    def __init__(self, tree: CgroupTree, path: str, parent: Cgroup | None) -> None:
        self.tree = tree
        self.path = path  # absolute, e.g. /sys/fs/cgroup/c1
        self.parent = parent
        self.children: dict[str, Cgroup] = {}
        self._cpus: frozenset[int] = frozenset()  # cpuset.cpus; empty = inherit
        self.cfs = CfsBandwidth()
        chain: list[CfsBandwidth] = []
        node: Cgroup | None = self
        while node is not None:
            chain.append(node.cfs)
            node = node.parent
        self._bandwidth = GroupBandwidth(chain)

    # ---------------------------------------------------------- SchedGroup

    @property
    def name(self) -> str:
        rel = self.path[len(CGROUP_ROOT) :]
        return rel or "/"

    def is_within(self, ancestor: Cgroup) -> bool:
        """``ancestor`` is this group or one of its ancestors (``cgroup_is_descendant``)."""
        node: Cgroup | None = self
        while node is not None:
            if node is ancestor:
                return True
            node = node.parent
        return False

    def path_from(self, ns: Cgroup | None) -> str:
        """This group's path as a task in namespace ``ns`` names it (``cgroup_path_ns``).

        ``/`` for the namespace root itself; a group outside the namespace is reached
        with ``..`` from its root, as Linux prints it in ``/proc/<pid>/cgroup``.
        """
        if ns is None:
            return self.name
        mine = [p for p in self.path[len(CGROUP_ROOT) :].split("/") if p]
        theirs = [p for p in ns.path[len(CGROUP_ROOT) :].split("/") if p]
        common = 0
        while common < min(len(mine), len(theirs)) and mine[common] == theirs[common]:
            common += 1
        return "/" + "/".join([".."] * (len(theirs) - common) + mine[common:])

    def cpus_allowed(self) -> frozenset[int] | None:
        """The effective cpuset, or ``None`` if no group up to the root restricts CPUs."""
        node: Cgroup | None = self
        while node is not None:
            if node._cpus:
                return self.effective_cpus()
            node = node.parent
        return None

    @property
    def bandwidth(self) -> GroupBandwidth:
        return self._bandwidth

    # ---------------------------------------------------------- cpuset

    @property
    def cpus(self) -> frozenset[int]:
        """``cpuset.cpus`` as written (empty = not restricted)."""
        return self._cpus

    def set_cpus(self, cpus: frozenset[int]) -> None:
        """Set ``cpuset.cpus``; ``EINVAL`` unless a subset of the possible CPUs."""
        if self.parent is None:
            raise GuestOSError(errno.EACCES)  # the root has no cpuset.cpus file
        if not cpus <= self.tree.possible():
            raise GuestOSError(errno.EINVAL)
        self._cpus = cpus
        self.tree.reschedule()

    def effective_cpus(self) -> frozenset[int]:
        """``cpuset.cpus.effective``: asked ∩ parent's effective, else the parent's."""
        if self.parent is None:
            return self.tree.online()
        parent_eff = self.parent.effective_cpus()
        mine = self._cpus & parent_eff
        return mine if mine else parent_eff

    # ---------------------------------------------------------- cpu.max

    def set_cpu_max(self, quota_us: int | None, period_us: int) -> None:
        if self.parent is None:
            raise GuestOSError(errno.EACCES)
        self.cfs.set_limit(quota_us, period_us, self.tree.clock())
        self.tree.reschedule()

    def cpu_stat(self) -> CpuStat:
        return self.cfs.stat(self.tree.clock())

    # ---------------------------------------------------------- tasks

    def tasks(self) -> list[Task]:
        """Live tasks of this group (not of its children)."""
        sched = self.tree.scheduler
        if sched is None:
            return []
        return [t for t in sched.tasks() if t.group is self]

    def __repr__(self) -> str:
        return f"<Cgroup {self.name}>"


class CgroupTree:
    """The cgroup hierarchy, mounted at ``/sys/fs/cgroup`` in ``vfs``.

    ``online``/``possible`` are the kernel's CPU masks (callables, read live);
    ``clock`` is ``time.monotonic`` except in tests. The scheduler may be attached
    after construction (:meth:`attach_scheduler`), since the kernel builds both.
    """

    def __init__(
        self,
        vfs: Vfs,
        *,
        online: Callable[[], frozenset[int]],
        possible: Callable[[], frozenset[int]],
        scheduler: Scheduler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.vfs = vfs
        self.online = online
        self.possible = possible
        self.clock = clock
        self.scheduler = scheduler
        self._lock = threading.RLock()
        self.root = Cgroup(self, CGROUP_ROOT, None)
        self._groups: dict[str, Cgroup] = {CGROUP_ROOT: self.root}
        vfs.register_dir(CGROUP_ROOT)
        self._register_files(self.root)
        vfs.set_dir_ops(CGROUP_ROOT, self._mkdir_hook, self._rmdir_hook)
        vfs.register(PROC_SELF_CGROUP, self._read_self_cgroup)

    def attach_scheduler(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def reschedule(self) -> None:
        """Tell the scheduler a cpuset or limit changed, so idle CPUs re-check."""
        if self.scheduler is not None:
            self.scheduler.reschedule()

    # ---------------------------------------------------------- namespaces

    def namespace_of(self, task: Task | None) -> Cgroup | None:
        """The root of ``task``'s cgroup namespace; ``None`` for the init namespace
        (also for no task: the agent's and the kernel's threads)."""
        ns = task.cgroup_ns if task is not None else None
        if ns is None:
            return None
        if not isinstance(ns, Cgroup) or ns.tree is not self:
            # Reading as the init namespace instead would widen the task's view.
            raise TypeError(f"{task!r}: cgroup namespace {ns!r} is not a group of this tree")
        return ns

    def view_for(self, task: Task | None) -> VfsView:
        """The file tree as ``task`` sees it: ``/sys/fs/cgroup`` is its namespace root.

        A namespace root removed since (only the guest root can move a task out of it
        and remove it) leaves nothing under ``/sys/fs/cgroup``, so a new group that
        reuses the name does not show through.
        """
        ns = self.namespace_of(task)
        if ns is None:
            return VfsView(self.vfs)
        with self._lock:
            live = self._groups.get(ns.path) is ns
        return VfsView(self.vfs, BindMount(CGROUP_ROOT, ns.path if live else None))

    def _group_of(self, task: Task) -> Cgroup:
        """The task's cgroup; a task spawned without one lives in the root, as on Linux."""
        group = task.group
        return group if isinstance(group, Cgroup) and group.tree is self else self.root

    def _read_self_cgroup(self) -> str:
        task = current_task()
        group = self.root if task is None else self._group_of(task)
        return f"0::{group.path_from(self.namespace_of(task))}\n"

    def _check_root_file_write(self, group: Cgroup) -> None:
        """nsdelegate: a namespace root's control files belong to whoever delegated it."""
        ns = self.namespace_of(current_task())
        if ns is not None and ns is group:
            raise GuestOSError(errno.EPERM)

    # ---------------------------------------------------------- API

    def get(self, path: str) -> Cgroup:
        """The cgroup at ``path`` (absolute, or relative to the root); ``ENOENT``."""
        full = self._abs(path)
        with self._lock:
            group = self._groups.get(full)
        if group is None:
            raise GuestOSError(errno.ENOENT, full)
        return group

    def create(self, path: str) -> Cgroup:
        """``mkdir``: a new child cgroup. ``EEXIST``/``ENOENT`` like the syscall."""
        full = self._abs(path)
        parent_path, _, leaf = full.rpartition("/")
        with self._lock:
            if full in self._groups or self.vfs.exists(full):
                raise GuestOSError(errno.EEXIST, full)
            parent = self._groups.get(parent_path)
            if parent is None or not leaf:
                raise GuestOSError(errno.ENOENT, full)
            group = Cgroup(self, full, parent)
            self.vfs.register_dir(full)
            self._register_files(group)
            parent.children[leaf] = group
            self._groups[full] = group
            return group

    def remove(self, path: str) -> None:
        """``rmdir``: ``EBUSY`` with live tasks or child groups (as cgroup v2)."""
        full = self._abs(path)
        with self._lock:
            group = self._groups.get(full)
            if group is None:
                raise GuestOSError(errno.ENOENT, full)
            if group.parent is None or group.children or group.tasks():
                raise GuestOSError(errno.EBUSY, full)
            del group.parent.children[full.rpartition("/")[2]]
            del self._groups[full]
            self.vfs.unregister(full)

    def groups(self) -> list[Cgroup]:
        with self._lock:
            return list(self._groups.values())

    def move(self, task: Task, group: Cgroup) -> None:
        """Move ``task`` into ``group`` (what writing its pid to ``cgroup.procs`` does)."""
        task.group = group
        self.reschedule()

    # ---------------------------------------------------------- files

    def _abs(self, path: str) -> str:
        full = normpath(path if path.startswith("/") else f"{CGROUP_ROOT}/{path}")
        if full != CGROUP_ROOT and not full.startswith(CGROUP_ROOT + "/"):
            raise GuestOSError(errno.ENOENT, full)
        return full

    def _mkdir_hook(self, path: str) -> None:
        self.create(path)

    def _rmdir_hook(self, path: str) -> None:
        self.remove(path)

    def _register_files(self, group: Cgroup) -> None:
        base = group.path
        vfs = self.vfs
        vfs.register(
            f"{base}/cgroup.procs",
            lambda: self._read_procs(group),
            lambda data: self._write_procs(group, data),
        )
        vfs.register(f"{base}/cpu.stat", lambda: group.cpu_stat().render())
        vfs.register(
            f"{base}/cpuset.cpus.effective",
            lambda: format_cpu_list(group.effective_cpus()) + "\n",
        )
        if group.parent is None:
            return
        vfs.register(
            f"{base}/cpuset.cpus",
            lambda: format_cpu_list(group.cpus) + "\n",
            lambda data: self._write_cpus(group, data),
        )
        vfs.register(
            f"{base}/cpu.max",
            lambda: self._read_cpu_max(group),
            lambda data: self._write_cpu_max(group, data),
        )

    def _write_cpus(self, group: Cgroup, data: str) -> None:
        self._check_root_file_write(group)
        group.set_cpus(self._parse_cpus(data))

    def _parse_cpus(self, data: str) -> frozenset[int]:
        try:
            return parse_cpu_list(data)
        except CpuListError:
            raise GuestOSError(errno.EINVAL) from None

    @staticmethod
    def _read_cpu_max(group: Cgroup) -> str:
        quota = group.cfs.quota_us
        return f"{'max' if quota is None else quota} {group.cfs.period_us}\n"

    def _write_cpu_max(self, group: Cgroup, data: str) -> None:
        self._check_root_file_write(group)
        quota, period = parse_cpu_max(data, group.cfs.period_us)
        group.set_cpu_max(quota, period)

    def _read_procs(self, group: Cgroup) -> str:
        return "".join(f"{t.pid}\n" for t in sorted(group.tasks(), key=lambda t: t.pid))

    def _write_procs(self, group: Cgroup, data: str) -> None:
        text = data.strip()
        if not is_decimal(text):
            raise GuestOSError(errno.EINVAL)
        pid = int(text)
        sched = self.scheduler
        task = None if sched is None else next((t for t in sched.tasks() if t.pid == pid), None)
        if task is None:
            raise GuestOSError(errno.ESRCH)
        ns = self.namespace_of(current_task())
        if ns is not None and not (self._group_of(task).is_within(ns) and group.is_within(ns)):
            raise GuestOSError(errno.ENOENT)  # nsdelegate: both ends must be in the namespace
        self.move(task, group)

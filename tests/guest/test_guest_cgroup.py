"""cgroup v2 files and CFS bandwidth control, driven by an injected clock (no sleeps)."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from cpuplug.guest.cgroup import CfsBandwidth, CgroupTree, parse_cpu_max
from cpuplug.guest.sched import Scheduler, TaskBody
from cpuplug.guest.vfs import GuestOSError, Vfs

CG = "/sys/fs/cgroup"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Masks:
    def __init__(self) -> None:
        self.online = frozenset({0, 1})
        self.possible = frozenset(range(8))


@pytest.fixture
def masks() -> Masks:
    return Masks()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tree(masks: Masks, clock: Clock) -> CgroupTree:
    return CgroupTree(
        Vfs(), online=lambda: masks.online, possible=lambda: masks.possible, clock=clock
    )


def _errno_of(fn: object, *args: object) -> int:
    with pytest.raises(GuestOSError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.errno


# ------------------------------------------------------------------ files and cpuset


def test_root_files(tree: CgroupTree, masks: Masks) -> None:
    vfs = tree.vfs
    assert vfs.listdir(CG) == ["cgroup.procs", "cpu.stat", "cpuset.cpus.effective"]
    assert vfs.read(f"{CG}/cpuset.cpus.effective") == "0-1\n"
    masks.online = frozenset({0, 1, 2, 5})
    assert vfs.read(f"{CG}/cpuset.cpus.effective") == "0-2,5\n"


def test_mkdir_creates_cgroup_with_files(tree: CgroupTree) -> None:
    vfs = tree.vfs
    vfs.mkdir(f"{CG}/c1")
    assert vfs.listdir(f"{CG}/c1") == [
        "cgroup.procs",
        "cpu.max",
        "cpu.stat",
        "cpuset.cpus",
        "cpuset.cpus.effective",
    ]
    assert vfs.read(f"{CG}/c1/cpu.max") == "max 100000\n"
    assert vfs.read(f"{CG}/c1/cpuset.cpus") == "\n"
    assert vfs.read(f"{CG}/c1/cpuset.cpus.effective") == "0-1\n"
    assert tree.get("c1").name == "/c1"
    assert _errno_of(vfs.mkdir, f"{CG}/c1") == errno.EEXIST
    assert _errno_of(vfs.mkdir, f"{CG}/nope/c2") == errno.ENOENT


def test_cpuset_effective_follows_online_and_parent(tree: CgroupTree, masks: Masks) -> None:
    vfs = tree.vfs
    vfs.mkdir(f"{CG}/pod")
    vfs.mkdir(f"{CG}/pod/c")
    vfs.write(f"{CG}/pod/cpuset.cpus", "0-3\n")
    vfs.write(f"{CG}/pod/c/cpuset.cpus", "1,3")
    assert vfs.read(f"{CG}/pod/cpuset.cpus") == "0-3\n"
    assert vfs.read(f"{CG}/pod/cpuset.cpus.effective") == "0-1\n"
    assert vfs.read(f"{CG}/pod/c/cpuset.cpus.effective") == "1\n"
    masks.online = frozenset({0, 1, 3})  # CPU 3 hot-added and onlined
    assert vfs.read(f"{CG}/pod/c/cpuset.cpus.effective") == "1,3\n"
    masks.online = frozenset({0, 2})  # both of c's CPUs gone: falls back to the parent's
    assert vfs.read(f"{CG}/pod/c/cpuset.cpus.effective") == "0,2\n"
    assert tree.get("pod/c").cpus_allowed() == frozenset({0, 2})
    assert tree.root.cpus_allowed() is None  # nothing restricts the root
    vfs.mkdir(f"{CG}/free")
    assert tree.get("free").cpus_allowed() is None


@pytest.mark.parametrize("bad", ["x", "0-", "3-1", "8", "0-8", "99999999"])
def test_cpuset_write_rejects(tree: CgroupTree, bad: str) -> None:
    tree.vfs.mkdir(f"{CG}/c")
    tree.vfs.write(f"{CG}/c/cpuset.cpus", "1")
    with pytest.raises(GuestOSError) as info:
        tree.vfs.write(f"{CG}/c/cpuset.cpus", bad)
    assert str(info.value) == f"{CG}/c/cpuset.cpus: Invalid argument"
    assert tree.vfs.read(f"{CG}/c/cpuset.cpus") == "1\n"  # unchanged


def test_cpuset_empty_write_clears(tree: CgroupTree) -> None:
    tree.vfs.mkdir(f"{CG}/c")
    tree.vfs.write(f"{CG}/c/cpuset.cpus", "1")
    tree.vfs.write(f"{CG}/c/cpuset.cpus", "\n")
    assert tree.get("c").cpus_allowed() is None


def test_root_has_no_cpuset_or_cpu_max(tree: CgroupTree) -> None:
    assert not tree.vfs.exists(f"{CG}/cpu.max")
    assert _errno_of(tree.vfs.write, f"{CG}/cpuset.cpus.effective", "0") == errno.EACCES


# ------------------------------------------------------------------ cpu.max


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("max", (None, 100000)),
        ("max 50000\n", (None, 50000)),
        ("200000", (200000, 100000)),
        ("150000 100000", (150000, 100000)),
        ("1000 1000", (1000, 1000)),
        ("5000 1000000", (5000, 1000000)),
    ],
)
def test_parse_cpu_max(text: str, expect: tuple[int | None, int]) -> None:
    assert parse_cpu_max(text, 100000) == expect


@pytest.mark.parametrize(
    "text", ["", "a", "-1 100000", "999 100000", "max 999", "max 1000001", "1 2 3", "1e5", "max x"]
)
def test_parse_cpu_max_rejects(text: str) -> None:
    assert _errno_of(parse_cpu_max, text, 100000) == errno.EINVAL


def test_cpu_max_file_round_trip(tree: CgroupTree) -> None:
    vfs = tree.vfs
    vfs.mkdir(f"{CG}/c")
    vfs.write(f"{CG}/c/cpu.max", "150000 100000\n")
    assert vfs.read(f"{CG}/c/cpu.max") == "150000 100000\n"
    vfs.write(f"{CG}/c/cpu.max", "50000")  # period kept
    assert vfs.read(f"{CG}/c/cpu.max") == "50000 100000\n"
    assert _errno_of(vfs.write, f"{CG}/c/cpu.max", "10 100000") == errno.EINVAL
    assert vfs.read(f"{CG}/c/cpu.max") == "50000 100000\n"
    vfs.write(f"{CG}/c/cpu.max", "max")
    assert vfs.read(f"{CG}/c/cpu.max") == "max 100000\n"


# ------------------------------------------------------------------ CFS bandwidth


def test_bandwidth_throttles_until_next_period() -> None:
    bw = CfsBandwidth(50_000, 100_000)  # 0.5 CPU
    t = 10.0
    assert bw.runnable_at(t) == t
    bw.charge(0.03, t + 0.03)
    assert bw.runnable_at(t + 0.03) == t + 0.03  # 20 ms left
    bw.charge(0.02, t + 0.05)
    assert bw.throttled(t + 0.05)
    assert bw.runnable_at(t + 0.06) == pytest.approx(t + 0.1)  # next refill
    assert not bw.throttled(t + 0.1)
    assert bw.runnable_at(t + 0.1) == pytest.approx(t + 0.1)
    st = bw.stat(t + 0.1)
    assert st.usage_usec == 50_000 and st.user_usec == 50_000 and st.system_usec == 0
    assert st.nr_periods == 1 and st.nr_throttled == 1
    assert st.throttled_usec == 50_000  # from 0.05 to the refill at 0.1


def test_bandwidth_debt_carries_over() -> None:
    """A slice overrunning the pool leaves it negative; the debt is paid from later refills."""
    bw = CfsBandwidth(10_000, 100_000)  # 10 ms per 100 ms
    t = 0.0
    bw.runnable_at(t)
    bw.charge(0.025, t + 0.025)  # 15 ms over
    # refill at 0.1 → -5 ms, still throttled; refill at 0.2 → +5 ms
    assert bw.runnable_at(t + 0.03) == pytest.approx(0.2)
    assert bw.throttled(t + 0.15)
    assert not bw.throttled(t + 0.2)
    st = bw.stat(t + 0.2)
    assert st.nr_periods == 2 and st.nr_throttled == 2
    assert st.throttled_usec == 175_000  # 0.025 → 0.2


def test_bandwidth_idle_periods_not_counted() -> None:
    bw = CfsBandwidth(50_000, 100_000)
    bw.runnable_at(0.0)
    bw.charge(0.01, 0.01)
    st = bw.stat(10.0)  # 100 periods passed, only the first was active
    assert st.nr_periods == 1 and st.nr_throttled == 0 and st.throttled_usec == 0
    assert bw.runnable_at(10.0) == 10.0


def test_bandwidth_unlimited_counts_usage_only() -> None:
    bw = CfsBandwidth()
    for i in range(10):
        assert bw.runnable_at(float(i)) == float(i)
        bw.charge(0.5, float(i) + 0.5)
    st = bw.stat(20.0)
    assert st.usage_usec == 5_000_000 and st.nr_periods == 0 and st.nr_throttled == 0


def test_bandwidth_limit_change_resets_pool() -> None:
    bw = CfsBandwidth(10_000, 100_000)
    bw.runnable_at(0.0)
    bw.charge(0.02, 0.02)
    assert bw.throttled(0.03)
    bw.set_limit(None, 100_000, 0.04)
    assert not bw.throttled(0.04) and bw.runnable_at(0.04) == 0.04
    assert bw.stat(0.04).throttled_usec == 20_000
    bw.set_limit(30_000, 100_000, 0.05)
    assert bw.runnable_at(0.05) == 0.05


def test_hierarchical_throttling(tree: CgroupTree, clock: Clock) -> None:
    vfs = tree.vfs
    vfs.mkdir(f"{CG}/pod")
    vfs.mkdir(f"{CG}/pod/c")
    vfs.write(f"{CG}/pod/cpu.max", "10000 100000")  # the parent is the tight one
    child = tree.get("pod/c")
    now = clock.t
    assert child.bandwidth.runnable_at(now) == now
    child.bandwidth.charge(0.012, now + 0.012)
    assert child.bandwidth.runnable_at(now + 0.012) == pytest.approx(now + 0.1)
    # both levels counted the usage
    assert "usage_usec 12000\n" in vfs.read(f"{CG}/pod/c/cpu.stat")
    clock.t = now + 0.05
    pod_stat = vfs.read(f"{CG}/pod/cpu.stat")
    assert "usage_usec 12000\n" in pod_stat
    assert "throttled_usec 38000\n" in pod_stat
    assert vfs.read(f"{CG}/cpu.stat").startswith("usage_usec 12000\n")


def test_cpu_stat_format(tree: CgroupTree) -> None:
    tree.vfs.mkdir(f"{CG}/c")
    assert tree.vfs.read(f"{CG}/c/cpu.stat") == (
        "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"
    )


# ------------------------------------------------------------------ tasks


def _idle_body() -> TaskBody:
    yield None
    return 0


@pytest.fixture
def sched_tree(tree: CgroupTree, masks: Masks) -> Iterator[tuple[CgroupTree, Scheduler]]:
    sched = Scheduler(online=lambda: masks.online, kick=lambda _cpu: None)
    tree.attach_scheduler(sched)
    yield tree, sched
    for t in sched.tasks():
        t.kill()


def test_procs_and_rmdir_busy(sched_tree: tuple[CgroupTree, Scheduler]) -> None:
    tree, sched = sched_tree
    vfs = tree.vfs
    vfs.mkdir(f"{CG}/c")
    group = tree.get("c")
    t1 = sched.spawn(_idle_body(), group=group)
    t2 = sched.spawn(_idle_body(), group=tree.root)
    assert vfs.read(f"{CG}/c/cgroup.procs") == f"{t1.pid}\n"
    assert vfs.read(f"{CG}/cgroup.procs") == f"{t2.pid}\n"
    assert _errno_of(vfs.rmdir, f"{CG}/c") == errno.EBUSY
    vfs.write(f"{CG}/cgroup.procs", f"{t1.pid}\n")  # move it out
    assert t1.group is tree.root
    assert vfs.read(f"{CG}/c/cgroup.procs") == ""
    assert _errno_of(vfs.write, f"{CG}/c/cgroup.procs", "99999") == errno.ESRCH
    assert _errno_of(vfs.write, f"{CG}/c/cgroup.procs", "abc") == errno.EINVAL
    vfs.rmdir(f"{CG}/c")
    assert not vfs.exists(f"{CG}/c")
    assert _errno_of(tree.get, "c") == errno.ENOENT


def test_rmdir_with_children_busy_and_root_refused(tree: CgroupTree) -> None:
    vfs = tree.vfs
    vfs.mkdir(f"{CG}/a")
    vfs.mkdir(f"{CG}/a/b")
    assert _errno_of(vfs.rmdir, f"{CG}/a") == errno.EBUSY
    assert _errno_of(tree.remove, CG) == errno.EBUSY
    vfs.rmdir(f"{CG}/a/b")
    vfs.rmdir(f"{CG}/a")
    assert [g.name for g in tree.groups()] == ["/"]


def test_path_escape_refused(tree: CgroupTree) -> None:
    assert _errno_of(tree.create, "../../etc") == errno.ENOENT


@pytest.mark.parametrize(
    "text",
    ["\u0661\u0660\u0660\u0660 100000", "max \u0661" + "\u0660" * 5, "\uff11\uff10\uff10\uff10"],
)
def test_cpu_max_takes_ascii_digits_only(text: str) -> None:
    with pytest.raises(GuestOSError) as exc:
        parse_cpu_max(text, 100000)
    assert exc.value.errno == errno.EINVAL

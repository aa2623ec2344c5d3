"""Cgroup namespaces in the guest model: a container sees its own cgroup at ``/sys/fs/cgroup``.

What Linux gives a container whose init unshared a cgroup namespace and mounted cgroup2
again (docs/guest.md), checked on the fake kernel (real vfs, cgroups, scheduler, userland
and agent) and once end to end through the ``cpuplug`` command.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cpuplug import agent_protocol as ap
from cpuplug.guest import userland
from cpuplug.guest.agent import Agent
from cpuplug.guest.cgroup import Cgroup
from cpuplug.guest.model_os import ModelOS
from cpuplug.guest.sched import Sleep, Task, TaskBody
from cpuplug.guest.vfs import BindMount, GuestOSError, Vfs, VfsView
from tests.harness.cli import private_cli
from tests.harness.guest_fakes import FakeChannel, FakeKernel

CG = "/sys/fs/cgroup"
OWN_FILES = ["cgroup.procs", "cpu.max", "cpu.stat", "cpuset.cpus", "cpuset.cpus.effective"]


@pytest.fixture
def kernel() -> Iterator[FakeKernel]:
    k = FakeKernel(possible=8, online=2, enabled=4)
    yield k
    k.shutdown()


@pytest.fixture
def two(kernel: FakeKernel) -> FakeKernel:
    """Containers ``a`` (cpu.max 50000, cpuset 1) and ``b`` (cpu.max 20000), set by the root."""
    os = ModelOS(kernel, FakeChannel())
    for cid in ("a", "b"):
        os.create_cgroup(cid)
    os.write_cgroup("a", "cpu.max", "50000 100000")
    os.write_cgroup("a", "cpuset.cpus", "1")
    os.write_cgroup("b", "cpu.max", "20000 100000")
    return kernel


def in_container(kernel: FakeKernel, cid: str, line: str) -> tuple[int, str, str]:
    """``sh -c LINE`` as an exec in container ``cid`` (the agent's way in)."""
    task = ModelOS(kernel, FakeChannel()).spawn(cid, ["sh", "-c", line], init=False)
    assert task.wait(20), f"{line!r} did not finish"
    assert task.exit_code is not None
    return (task.exit_code, *task.output())


def as_root(kernel: FakeKernel, line: str, group: Cgroup | None = None) -> tuple[int, str, str]:
    """``sh -c LINE`` in the init namespace (in ``group``, the root's cgroup by default)."""
    proc = userland.spawn(kernel, ["sh", "-c", line], group)
    assert proc.wait(20) and proc.exit_code is not None
    return proc.exit_code, proc.stdout.getvalue(), proc.stderr.getvalue()


def sleeper() -> TaskBody:
    while True:
        yield Sleep(30)


# ------------------------------------------------------------------ the view


def test_container_sees_its_own_cgroup_files_at_the_top(two: FakeKernel) -> None:
    line = f"cat {CG}/cpu.max {CG}/cpuset.cpus {CG}/cpuset.cpus.effective; ls {CG}"
    assert in_container(two, "a", line) == (
        0, "50000 100000\n1\n1\n" + "".join(f"{n}\n" for n in OWN_FILES), ""
    )  # fmt: skip
    assert in_container(two, "b", f"cat {CG}/cpu.max")[1] == "20000 100000\n"
    code, out, _ = in_container(two, "a", f"cat {CG}/cpu.stat")
    assert code == 0 and out.startswith("usage_usec ")


def test_cgroup_procs_inside_lists_the_container_tasks(two: FakeKernel) -> None:
    init = ModelOS(two, FakeChannel()).spawn("a", ["sleep", "30"], init=True)
    code, out, _ = in_container(two, "a", f"cat {CG}/cgroup.procs")
    pids = [int(p) for p in out.split()]
    assert code == 0 and len(pids) == 2 and pids[0] == init.pid  # the init and this exec
    init.kill(9)


def test_proc_self_cgroup(two: FakeKernel) -> None:
    assert in_container(two, "a", "cat /proc/self/cgroup") == (0, "0::/\n", "")
    # the same group seen from the init namespace: a task in a, not namespaced
    assert as_root(two, "cat /proc/self/cgroup", two.cgroups.get("a")) == (0, "0::/a\n", "")
    assert as_root(two, "cat /proc/self/cgroup") == (0, "0::/\n", "")
    assert two.vfs.read("/proc/self/cgroup") == "0::/\n"  # no task: the agent's threads


def test_a_child_group_shows_below_the_namespace_root(two: FakeKernel) -> None:
    code, out, err = in_container(
        two, "a", f"mkdir {CG}/sub && echo 20000 > {CG}/sub/cpu.max && cat {CG}/sub/cpu.max"
    )
    assert (code, out, err) == (0, "20000 100000\n", "")
    assert two.vfs.read(f"{CG}/a/sub/cpu.max") == "20000 100000\n"  # the same group
    assert in_container(two, "a", f"rmdir {CG}/sub") == (0, "", "")
    assert not two.vfs.exists(f"{CG}/a/sub")


def test_root_keeps_the_whole_tree(two: FakeKernel) -> None:
    assert as_root(two, f"cat {CG}/a/cpu.max {CG}/b/cpu.max") == (
        0, "50000 100000\n20000 100000\n", ""
    )  # fmt: skip
    assert as_root(two, f"echo 30000 > {CG}/b/cpu.max")[0] == 0
    assert two.vfs.read(f"{CG}/b/cpu.max") == "30000 100000\n"


# ------------------------------------------------------------------ what it cannot reach


def test_siblings_and_the_root_have_no_path_inside(two: FakeKernel) -> None:
    code, out, err = in_container(
        two, "a", f"cat {CG}/b/cpu.max {CG}/../cgroup/b/cpu.max {CG}/a/cpu.max; ls /sys/fs"
    )
    assert (code, out) == (0, "cgroup\n")  # ls's status: the line's last command
    assert err == (
        f"cat: {CG}/b/cpu.max: No such file or directory\n"
        f"cat: {CG}/../cgroup/b/cpu.max: No such file or directory\n"
        f"cat: {CG}/a/cpu.max: No such file or directory\n"  # its own name is not there either
    )
    assert "b" not in in_container(two, "a", f"ls {CG}/..; ls {CG}")[1].split()


def test_writes_to_a_sibling_are_refused(two: FakeKernel) -> None:
    assert in_container(two, "a", f"echo max > {CG}/b/cpu.max") == (
        2, "", f"sh: 1: cannot create {CG}/b/cpu.max: Directory nonexistent\n"
    )  # fmt: skip
    assert in_container(two, "a", f"mkdir {CG}/b/x") == (
        1, "", f"mkdir: cannot create directory '{CG}/b/x': No such file or directory\n"
    )  # fmt: skip
    assert two.vfs.read(f"{CG}/b/cpu.max") == "20000 100000\n"
    assert not two.vfs.exists(f"{CG}/b/x")


def test_the_namespace_root_files_are_the_delegators(two: FakeKernel) -> None:
    """nsdelegate: ``cpu.max`` and ``cpuset.cpus`` at the top are EPERM from inside, so
    a container cannot lift the limit the runtime set; the root still writes them."""
    for name, value in (("cpu.max", "max"), ("cpuset.cpus", "0-1")):
        assert in_container(two, "a", f"echo {value} > {CG}/{name}") == (
            1, "", "sh: 1: echo: write error: Operation not permitted\n"
        )  # fmt: skip
    assert two.vfs.read(f"{CG}/a/cpu.max") == "50000 100000\n"
    assert two.vfs.read(f"{CG}/a/cpuset.cpus") == "1\n"
    assert in_container(two, "a", f"rmdir {CG}") == (
        1, "", f"rmdir: failed to remove '{CG}': Device or resource busy\n"
    )  # fmt: skip
    assert two.vfs.exists(f"{CG}/a")


def test_moving_tasks_across_the_namespace_boundary_is_refused(two: FakeKernel) -> None:
    a, b = two.cgroups.get("a"), two.cgroups.get("b")
    other = two.sched.spawn(sleeper(), b, "other")  # a task in the sibling
    outside = two.sched.spawn(sleeper(), None, "rootless")  # a task in the root
    mine = two.sched.spawn(sleeper(), a, "mine", cgroup_ns=a)
    try:
        for task in (other, outside):
            assert in_container(two, "a", f"echo {task.pid} > {CG}/cgroup.procs") == (
                1, "", "sh: 1: echo: write error: No such file or directory\n"
            )  # fmt: skip
        assert other.group is b and outside.group is None
        assert in_container(two, "a", f"echo 99999 > {CG}/cgroup.procs")[2].endswith(
            "No such process\n"
        )
        # within the namespace a task may move: into a child group and back
        line = f"mkdir {CG}/sub && echo {mine.pid} > {CG}/sub/cgroup.procs"
        assert in_container(two, "a", line) == (0, "", "")
        assert mine.group is two.cgroups.get("a/sub")
        assert in_container(two, "a", f"echo {mine.pid} > {CG}/cgroup.procs")[0] == 0
        assert mine.group is a
        # the root may still move anyone anywhere
        two.vfs.write(f"{CG}/b/cgroup.procs", str(outside.pid))
        assert outside.group is b
    finally:
        for task in (other, outside, mine):
            task.kill()


def test_a_removed_namespace_root_is_not_replaced_by_its_namesake(kernel: FakeKernel) -> None:
    c = kernel.cgroups.create("c")
    task = kernel.sched.spawn(sleeper(), c, "moved", cgroup_ns=c)
    try:
        kernel.cgroups.move(task, kernel.cgroups.root)  # the root moves it out ...
        kernel.cgroups.remove("c")  # ... and removes its namespace root
        kernel.cgroups.create("c")  # a new group of the same name
        view = kernel.cgroups.view_for(task)
        assert not view.exists(f"{CG}/cpu.max")
        with pytest.raises(GuestOSError) as info:
            view.read(f"{CG}/cpu.max")
        assert (info.value.errno, info.value.path) == (errno.ENOENT, f"{CG}/cpu.max")
    finally:
        task.kill()


# ------------------------------------------------------------------ who is in which namespace


def test_tasks_inherit_the_namespace_of_the_task_that_spawns_them(kernel: FakeKernel) -> None:
    c = kernel.cgroups.create("c")
    children: list[Task] = []

    def child() -> TaskBody:
        return 0
        yield

    def parent() -> TaskBody:
        children.append(kernel.sched.spawn(child(), c, "child"))
        return 0
        yield

    spawned = kernel.sched.spawn(parent(), c, "parent", cgroup_ns=c)
    assert spawned.wait(10) and spawned.exit_code == 0
    assert children[0].cgroup_ns is c
    assert kernel.sched.spawn(sleeper(), c, "from-a-thread").cgroup_ns is None
    for t in kernel.sched.tasks():
        t.kill()


def test_stress_workers_stay_in_the_namespace(two: FakeKernel) -> None:
    a = two.cgroups.get("a")
    seen: list[Task] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.extend(t for t in two.sched.tasks() if t.name == "stress")
            done.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert in_container(two, "a", "stress --cpu 2 --timeout 0.2")[0] == 0
    finally:
        done.set()
        watcher.join()
    assert seen and all(t.cgroup_ns is a and t.group is a for t in seen)


class AgentEnv:
    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.channel = FakeChannel()
        self.agent = Agent(kernel, self.channel, retry_interval=0.01).start()
        self.sock = self.channel.connect()
        self._ids = 0

    def call(self, method: ap.Method, params: dict[str, Any]) -> dict[str, Any]:
        self._ids += 1
        return ap.call(self.sock, method, params, timeout=20, req_id=self._ids)

    def close(self) -> None:
        self.agent.stop()
        self.channel.close()


def test_init_and_every_exec_share_the_container_namespace(kernel: FakeKernel) -> None:
    env = AgentEnv(kernel)
    try:
        env.call(
            ap.Method.CREATE_CONTAINER,
            {"container_id": "c1", "cmd": ["sleep", "30"], "quota": 50000, "period": 100000},
        )
        pid = env.call(ap.Method.START_CONTAINER, {"container_id": "c1"})["pid"]
        c1 = kernel.cgroups.get("c1")
        init = next(t for t in kernel.sched.tasks() if t.pid == pid)
        assert init.cgroup_ns is c1 and init.group is c1

        def exec_(*cmd: str) -> dict[str, Any]:
            return env.call(ap.Method.EXEC_PROCESS, {"container_id": "c1", "cmd": list(cmd)})

        assert exec_("cat", f"{CG}/cpu.max", "/proc/self/cgroup")["stdout"] == (
            "50000 100000\n0::/\n"
        )
        procs = exec_("cat", f"{CG}/cgroup.procs")["stdout"].split()
        assert procs[0] == str(pid) and len(procs) == 2
        env.call(ap.Method.UPDATE_CONTAINER, {"container_id": "c1", "resources": {"quota": 70000}})
        assert exec_("sh", "-c", f"cat {CG}/cpu.max")["stdout"] == "70000 100000\n"
        # the agent itself is the guest root: the whole tree, by the tree's names
        assert env.call(ap.Method.READ_FILE, {"path": f"{CG}/c1/cpu.max"}) == {
            "data": "70000 100000\n"
        }
        assert env.call(ap.Method.READ_FILE, {"path": "/proc/self/cgroup"}) == {"data": "0::/\n"}
    finally:
        env.close()


# ------------------------------------------------------------------ VfsView on its own


def test_view_translates_paths_and_names_the_callers_path_in_errors() -> None:
    vfs = Vfs()
    vfs.register("/sys/fs/cgroup/c/cpu.max", lambda: "max 100000\n", _refuse)
    vfs.register("/sys/fs/cgroup/cpu.stat", lambda: "root\n")
    view = VfsView(vfs, BindMount(CG, f"{CG}/c"))
    assert view.resolve(f"{CG}/cpu.max") == f"{CG}/c/cpu.max"
    assert view.resolve(f"{CG}/../cgroup/./cpu.max") == f"{CG}/c/cpu.max"
    assert view.resolve("/proc/stat") == "/proc/stat"  # outside the mount: unchanged
    assert view.read(f"{CG}/cpu.max") == "max 100000\n"
    assert view.listdir(CG) == ["cpu.max"] and view.listdir("/sys/fs") == ["cgroup"]
    for call, path, err in (
        (lambda: view.read(f"{CG}/cpu.stat"), f"{CG}/cpu.stat", errno.ENOENT),
        (lambda: view.write(f"{CG}/cpu.max", "1"), f"{CG}/cpu.max", errno.EPERM),
        (lambda: view.mkdir(f"{CG}/x"), f"{CG}/x", errno.EPERM),  # no hook here
        (lambda: view.rmdir(CG), CG, errno.EBUSY),
        (lambda: view.read(CG), CG, errno.EISDIR),
    ):
        with pytest.raises(GuestOSError) as info:
            call()
        assert (info.value.errno, info.value.path) == (err, path)
    assert view.is_writable(f"{CG}/cpu.max") and view.is_dir(CG)
    assert not view.exists(f"{CG}/c")
    assert VfsView(vfs).read(f"{CG}/cpu.stat") == "root\n"  # no mount: the tree itself
    with pytest.raises(ValueError):
        BindMount("/", CG)


def _refuse(_data: str) -> None:
    raise GuestOSError(errno.EPERM)


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_cli_exec_sees_the_container_cgroup_at_sys_fs_cgroup() -> None:
    """``cpuplug exec x -- cat /sys/fs/cgroup/cpu.max`` shows x's limit, as in docker."""
    with private_cli() as cli:
        cli.ok("run", "--name", "x", "--hypervisor", "builtin", "--max-cpus", "4",
               "--cpus", "0.5", "--", "sleep", "100")  # fmt: skip
        assert cli.cat("x", f"{CG}/cpu.max") == "50000 100000"
        assert cli.cat("x", "/proc/self/cgroup") == "0::/"
        assert cli.ok("exec", "x", "--", "ls", CG).stdout.split() == OWN_FILES
        refused = cli("exec", "x", "--", "sh", "-c", f"echo max > {CG}/cpu.max")
        assert refused.returncode != 0 and "Operation not permitted" in refused.stderr
        cli.ok("update", "--cpus", "1.5", "x")
        assert cli.cat("x", f"{CG}/cpu.max") == "150000 100000"
        assert cli.cat("x", f"{CG}/cpuset.cpus.effective") == cli.cat("x", f"{CG}/cpuset.cpus")
        assert len(cli.cat("x", f"{CG}/cgroup.procs").split()) == 2  # the init and the cat

"""The guest userland, run as real scheduler tasks on a fake kernel's CPU threads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cpuplug.guest import userland
from cpuplug.guest.vfs import GuestOSError
from tests.harness.guest_fakes import FakeKernel


@pytest.fixture
def kernel() -> Iterator[FakeKernel]:
    k = FakeKernel(possible=8, online=2, enabled=4)
    yield k
    k.shutdown()


def run(kernel: FakeKernel, *argv: str, group_path: str | None = None) -> tuple[int, str, str]:
    group = kernel.cgroups.get(group_path) if group_path else None
    proc = userland.spawn(kernel, list(argv), group)
    assert proc.wait(20), f"{argv} did not finish"
    assert proc.exit_code is not None
    return proc.exit_code, proc.stdout.getvalue(), proc.stderr.getvalue()


def sh(kernel: FakeKernel, line: str) -> tuple[int, str, str]:
    return run(kernel, "sh", "-c", line)


def test_cat_and_echo(kernel: FakeKernel) -> None:
    assert run(kernel, "cat", "/sys/devices/system/cpu/online") == (0, "0-1\n", "")
    assert run(kernel, "echo", "a", "b") == (0, "a b\n", "")
    assert run(kernel, "echo", "-n", "x") == (0, "x", "")


def test_cat_errors_like_coreutils(kernel: FakeKernel) -> None:
    code, out, err = run(kernel, "cat", "/nope", "/sys/devices/system/cpu/enabled", "/sys")
    assert code == 1
    assert out == "0-3\n"
    assert err == "cat: /nope: No such file or directory\ncat: /sys: Is a directory\n"


def test_ls(kernel: FakeKernel) -> None:
    code, out, _ = run(kernel, "ls", "/sys/devices/system/cpu")
    assert code == 0
    assert out.split() == [
        "cpu0", "cpu1", "cpu2", "cpu3", "enabled", "offline", "online", "possible", "present"
    ]  # fmt: skip
    code, out, err = run(kernel, "ls", "/sys/devices/system/cpu/cpu5")
    assert (code, out) == (2, "")
    assert err == "ls: cannot access '/sys/devices/system/cpu/cpu5': No such file or directory\n"
    assert run(kernel, "ls", "/sys/devices/system/cpu/online") == (
        0,
        "/sys/devices/system/cpu/online\n",
        "",
    )


def test_sh_redirect_onlines_a_cpu(kernel: FakeKernel) -> None:
    code, out, err = sh(
        kernel, "echo 1 > /sys/devices/system/cpu/cpu2/online; cat /sys/devices/system/cpu/online"
    )
    assert (code, out, err) == (0, "0-2\n", "")
    assert kernel.online_writes == [2]  # one store, with the whole "1\n"


def test_sh_redirect_errors(kernel: FakeKernel) -> None:
    # cpu5 is not registered: its directory does not exist (the ACPI-mode security property)
    code, _, err = sh(kernel, "echo 1 > /sys/devices/system/cpu/cpu5/online")
    assert code == 2
    assert (
        err == "sh: 1: cannot create /sys/devices/system/cpu/cpu5/online: Directory nonexistent\n"
    )
    code, _, err = sh(kernel, "echo 1 > /sys/devices/system/cpu/newfile")
    assert (code, err) == (
        2,
        "sh: 1: cannot create /sys/devices/system/cpu/newfile: Permission denied\n",
    )
    code, _, err = sh(kernel, "echo 1 > /sys/devices/system/cpu/online")
    assert (code, err) == (1, "sh: 1: echo: write error: Permission denied\n")
    kernel.enabled_set = kernel.enabled_set | {4}
    kernel._register_cpu(4)  # registered but the host never allowed it: PSCI DENIED
    code, _, err = sh(kernel, "echo 1 > /sys/devices/system/cpu/cpu4/online")
    assert (code, err) == (1, "sh: 1: echo: write error: Operation not permitted\n")
    code, _, err = sh(
        kernel,
        "echo 0 > /sys/devices/system/cpu/cpu1/online;"
        " echo 0 > /sys/devices/system/cpu/cpu0/online",
    )
    assert (code, err) == (1, "sh: 1: echo: write error: Device or resource busy\n")


def test_sh_sequencing_and_status(kernel: FakeKernel) -> None:
    assert sh(kernel, "false; echo a") == (0, "a\n", "")
    assert sh(kernel, "false && echo a") == (1, "", "")
    assert sh(kernel, "false || echo b") == (0, "b\n", "")
    assert sh(kernel, "true && echo 'x; y'") == (0, "x; y\n", "")
    assert sh(kernel, "foo; echo after") == (0, "after\n", "sh: 1: foo: not found\n")
    assert sh(kernel, "foo") == (127, "", "sh: 1: foo: not found\n")


@pytest.mark.parametrize(
    ("line", "err"),
    [
        ("; echo", 'sh: 1: Syntax error: ";" unexpected\n'),
        ("echo a |  cat", 'sh: 1: Syntax error: "|" unexpected\n'),
        ("echo >", "sh: 1: Syntax error: newline unexpected\n"),
        ("echo a &&", "sh: 1: Syntax error: end of file unexpected\n"),
        ("echo 'a", "sh: 1: Syntax error: No closing quotation\n"),
    ],
)
def test_sh_syntax_errors(kernel: FakeKernel, line: str, err: str) -> None:
    assert sh(kernel, line) == (2, "", err)


def test_sh_usage(kernel: FakeKernel) -> None:
    assert run(kernel, "sh", "-c")[0] == 2
    assert run(kernel, "sh")[0] == 2


def test_nproc_follows_cpuset_and_online(kernel: FakeKernel) -> None:
    assert run(kernel, "nproc") == (0, "2\n", "")
    assert run(kernel, "nproc", "--all") == (0, "8\n", "")
    kernel.vfs.mkdir("/sys/fs/cgroup/c")
    kernel.vfs.write("/sys/fs/cgroup/c/cpuset.cpus", "1-3")
    assert run(kernel, "nproc", group_path="c") == (0, "1\n", "")
    sh(kernel, "echo 1 > /sys/devices/system/cpu/cpu2/online")
    assert run(kernel, "nproc", group_path="c") == (0, "2\n", "")
    assert run(kernel, "nproc", "-x")[0] == 1


def test_sleep(kernel: FakeKernel) -> None:
    assert run(kernel, "sleep", "0.05") == (0, "", "")
    code, _, err = run(kernel, "sleep", "x")
    assert code == 1 and err.startswith("sleep: invalid time interval 'x'\n")
    assert run(kernel, "sleep")[0] == 1


def test_sleep_holds_no_cpu(kernel: FakeKernel) -> None:
    sleeper = userland.spawn(kernel, ["sleep", "0.3"])
    assert run(kernel, "echo", "while sleeping")[0] == 0  # CPUs are free meanwhile
    assert sleeper.wait(5)
    assert sleeper.task.cpu_time < 0.1


def test_mkdir_rmdir_cgroups(kernel: FakeKernel) -> None:
    assert sh(kernel, "mkdir /sys/fs/cgroup/x; ls /sys/fs/cgroup/x")[1].split()[0] == "cgroup.procs"
    assert sh(kernel, "mkdir /sys/x") == (
        1,
        "",
        "mkdir: cannot create directory '/sys/x': Operation not permitted\n",
    )
    assert sh(kernel, "rmdir /sys/fs/cgroup/x")[0] == 0
    assert sh(kernel, "rmdir /sys/fs/cgroup/x") == (
        1,
        "",
        "rmdir: failed to remove '/sys/fs/cgroup/x': No such file or directory\n",
    )


def test_spawn_unknown_program(kernel: FakeKernel) -> None:
    with pytest.raises(userland.ProgramNotFound) as info:
        userland.spawn(kernel, ["nope"])
    assert str(info.value) == "nope: No such file or directory"
    with pytest.raises(GuestOSError):
        userland.spawn(kernel, [])


def test_stress_reports_work_and_cpus(kernel: FakeKernel) -> None:
    code, out, err = run(kernel, "stress", "--cpu", "2", "--timeout", "0.3")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].endswith("dispatching hogs: 2 cpu, 0 io, 0 vm, 0 hdd")
    assert "hashed" in lines[1] and lines[1].endswith("on CPUs 0-1")
    assert int(lines[1].split("hashed ")[1].split()[0]) > 0
    assert "successful run completed" in lines[2]


def test_stress_stays_in_cpuset(kernel: FakeKernel) -> None:
    kernel.vfs.mkdir("/sys/fs/cgroup/c")
    kernel.vfs.write("/sys/fs/cgroup/c/cpuset.cpus", "1")
    _, out, _ = run(kernel, "stress", "-c", "2", "-t", "0.2", group_path="c")
    assert out.splitlines()[1].endswith("on CPUs 1")


def test_stress_killed_takes_workers_down(kernel: FakeKernel) -> None:
    proc = userland.spawn(kernel, ["sh", "-c", "stress --cpu 3"])
    # wait until the workers exist (condition, not a fixed sleep)
    for _ in range(200):
        if len(kernel.sched.tasks()) == 4:
            break
        proc.wait(0.01)
    assert len(kernel.sched.tasks()) == 4
    proc.kill(15)
    assert proc.wait(5)
    assert proc.exit_code == 143
    for t in kernel.sched.tasks():
        assert t.wait(5)
    assert kernel.sched.tasks() == []
    assert "hashed" in proc.stdout.getvalue()


def test_stress_usage(kernel: FakeKernel) -> None:
    assert run(kernel, "stress")[0] == 1
    code, _, err = run(kernel, "stress", "--cpu", "x")
    assert code == 1 and "stress: FAIL" in err


def test_output_is_bounded() -> None:
    out = userland.Output(limit=10)
    out.write("a" * 8)
    out.write("b" * 8)
    assert out.getvalue() == "a" * 8 + "bb" and out.dropped == 6


def test_cpu_max_throttles_stress(kernel: FakeKernel) -> None:
    """CFS bandwidth on the real scheduler: 10% quota gets a fraction of an unlimited run."""
    vfs = kernel.vfs
    for name in ("free", "capped"):
        vfs.mkdir(f"/sys/fs/cgroup/{name}")
    vfs.write("/sys/fs/cgroup/capped/cpu.max", "10000 100000")
    for name in ("free", "capped"):
        assert run(kernel, "stress", "-c", "2", "-t", "0.6", group_path=name)[0] == 0

    def stat(name: str) -> dict[str, int]:
        lines = vfs.read(f"/sys/fs/cgroup/{name}/cpu.stat").split("\n")
        return {k: int(v) for k, v in (ln.split() for ln in lines if ln)}

    free, capped = stat("free"), stat("capped")
    assert free["nr_throttled"] == 0 and free["throttled_usec"] == 0
    assert capped["nr_throttled"] >= 3 and capped["throttled_usec"] > 0
    assert capped["nr_periods"] >= capped["nr_throttled"]
    # 0.1 CPU of quota vs ~2 CPUs: far less, even with slices overrunning the pool
    assert capped["usage_usec"] < 0.35 * free["usage_usec"], (capped, free)

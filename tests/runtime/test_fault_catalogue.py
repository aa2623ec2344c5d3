"""The fault catalogue: the defects of issue 8, found by adversarial use, one section each.

Every test here failed on the code the defect was reported against and names the
defect id and what happened then in its docstring.  The point of each is what a user
sees, so they go through ``cpuplug.cli.main`` (or a subprocess where the process
boundary matters): the exit code and a single ``cpuplug: error:`` line, never a
traceback or argparse's usage dump.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cpuplug.agent_protocol import AgentError
from cpuplug.cli import build_parser, main
from cpuplug.errors import UsageError
from cpuplug.runtime.agent_client import AgentClient
from cpuplug.runtime.config import RuntimeConfig
from cpuplug.runtime.process import ProcessIdentity, process_alive
from cpuplug.runtime.sandbox import Resources, RunRequest, Runtime, SandboxError
from cpuplug.runtime.state import (
    LockTimeout,
    SandboxState,
    StateStore,
)
from tests.harness.cli import Cli
from tests.harness.runtime_fakes import FakeWorld

SRC = Path(__file__).parents[2] / "src"


def cpuplug(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``cpuplug ARGV`` in process, as its user sees it: exit code, stdout, stderr.

    argparse ends with ``SystemExit``; that is an exit code like any other here.
    """
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(err: str) -> str:
    """The whole of stderr is one ``cpuplug: error: ...`` line; returns it."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cpuplug: error: "), err
    return lines[0]


@pytest.fixture(autouse=True)
def no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No host config file leaks into these tests (the default path need not exist)."""
    monkeypatch.setenv("CPUPLUG_CONFIG", str(tmp_path / "no-such-config.toml"))


def fake_runtime(world: FakeWorld, root: Path, maxcpus: int = 2) -> Runtime:
    """A Runtime whose VMM is the fakes' ``sleep`` stand-in (a real process to stop)."""
    return Runtime(
        root,
        RuntimeConfig(default_maxvcpus=maxcpus),
        backends=world.backend,
        connect_agent=world.connect_agent,
    )


@pytest.fixture
def world() -> Iterator[FakeWorld]:
    w = FakeWorld()
    yield w
    w.cleanup()


def stopped_sandbox(root: Path, name: str) -> None:
    """A sandbox as ``stop`` leaves it: a state file and nothing running."""
    store = StateStore(root)
    store.create(name)
    store.save(
        SandboxState(
            name=name,
            created=time.time(),
            mode="acpi",
            static=False,
            default_vcpus="1",
            maxcpus=2,
            boot_vcpus=1,
            remove_timeout=10.0,
            status="stopped",
        )
    )


# ======================================================================== D1: full disk


def test_d1_full_disk_at_run_leaves_no_directory_and_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """D1: ``cpuplug run`` with ENOSPC while writing the first state file.

    Before: the empty ``<root>/<name>`` directory stayed behind, so the name was
    blocked for good (``run`` said it exists, ``rm``/``rm -f`` said it does not), and
    the message was a bare "No space left on device" naming no file.
    """
    root = tmp_path / "root"

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full_disk)
        rc, _, err = cpuplug(["run", "--root", str(root), "--name", "x", "--", "true"], capsys)
    assert rc == 1
    line = assert_one_error_line(err)
    assert str(root / "x" / "state.json") in line and "No space left on device" in line
    assert list(root.iterdir()) == [], "nothing may be left behind, not even a temp dir"

    world = FakeWorld()
    try:
        rt = Runtime(
            root,
            RuntimeConfig(default_maxvcpus=2),
            backends=world.backend,
            connect_agent=world.connect_agent,
        )
        assert rt.run(RunRequest(["true"], Resources(), name="x")).status == "running"
    finally:
        world.cleanup()


@pytest.mark.parametrize("force", [False, True], ids=["rm", "rm-f"])
def test_d1_rm_removes_a_leftover_directory_without_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], force: bool
) -> None:
    """D1: a sandbox directory with no state file and no VMM socket (what a failed
    ``run`` left before the fix, plus the ``lock`` file an ``rm`` attempt creates).

    Before: ``ps`` did not show it, ``run`` said it exists, ``rm`` and ``rm -f`` said
    "no such sandbox": nothing could ever free the name.
    """
    leftover = StateStore(tmp_path).create("x")  # what a run failing at its first save left
    (leftover / "lock").touch()
    rc, out, _ = cpuplug(["ps", "--root", str(tmp_path), "--json"], capsys)
    assert rc == 0
    assert [(r["name"], r["status"]) for r in json.loads(out)] == [("x", "broken")]
    rc, _, err = cpuplug(["run", "--root", str(tmp_path), "--name", "x", "--", "true"], capsys)
    assert rc == 2 and "cpuplug rm x" in assert_one_error_line(err)

    rc, out, err = cpuplug(["rm", "--root", str(tmp_path), *(["-f"] if force else []), "x"], capsys)
    assert (rc, out, err) == (0, "x\n", "")
    assert not leftover.exists()


# ======================================================================== D4: deep TOML


def test_d4_deeply_nested_config_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """D4: a config nested 5000 levels deep (``a=`` + ``[`` * 5000).

    Before: tomllib's recursive descent hit the recursion limit and ``cpuplug run``
    died with a RecursionError and ~3000 lines of traceback.
    """
    config = tmp_path / "deep.toml"
    config.write_text("a=" + "[" * 5000 + "\n")
    rc, _, err = cpuplug(
        ["run", "--root", str(tmp_path / "root"), "--config", str(config), "--", "true"], capsys
    )
    assert rc == 2
    line = assert_one_error_line(err)
    assert str(config) in line and "nested too deeply" in line
    assert not (tmp_path / "root").exists()


# ======================================================================== D7: argparse errors


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["update", "--cpus", "--1", "x"], "invalid --cpus value '--1'"),
        (["update", "--cpus", "-1", "x"], "invalid --cpus value '-1'"),
        (["update", "--cpu-quota", "-1e3", "x"], "invalid --cpu-quota value '-1e3'"),
        (["inspect", "-x"], "inspect: "),
        (["update", "--cpus"], "argument --cpus: expected one argument"),
        (["ps", "--json", "extra"], "unrecognized arguments: extra"),
        (["ps", "--root", "--json"], "argument --root: expected one argument"),
        (["vmm", "--smp"], "vmm: argument --smp: expected one argument"),
        (["acpi", "bogus"], "acpi: argument ACTION: invalid choice: 'bogus'"),
        (["no-such-command"], "invalid choice: 'no-such-command'"),
    ],
)
def test_d7_every_argument_error_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> None:
    """D7: option values starting with ``-`` and other argparse errors.

    Before: ``cpuplug update --cpus --1 x`` and ``cpuplug inspect -x`` printed
    argparse's multi-line usage block; only the vmm parser had a one-line error.
    """
    rc, _, err = cpuplug(argv, capsys)
    assert rc == 2
    assert match in assert_one_error_line(err)


def test_d7_negative_values_still_reach_the_options_that_take_them() -> None:
    """D7: ``--cpu-quota -1`` (no limit) must keep parsing as a value, not an option."""
    args = build_parser("update").parse_args(
        ["update", "--cpu-quota", "-1", "--cpu-period", "100000", "x"]
    )
    assert (args.cpu_quota, args.cpu_period, args.name) == ("-1", "100000", "x")
    args = build_parser("run").parse_args(["run", "--name", "n", "--", "sh", "--cpus", "-x"])
    assert args.name == "n" and args.cmd == ["--", "sh", "--cpus", "-x"]


# ======================================================================== D9: unreadable config


@pytest.mark.parametrize("kind", ["not-utf8", "directory"])
def test_d9_unreadable_config_is_a_usage_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """D9: ``--config`` naming a non-UTF-8 file or a directory.

    Before: exit code 1 (an environment failure) with Python's codec/errno wording,
    though the user simply named the wrong file.
    """
    config = tmp_path / "config.toml"
    if kind == "directory":
        config.mkdir()
    else:
        config.write_bytes(b"default_vcpus = 1 # \xff\xfe\n")
    rc, _, err = cpuplug(
        ["run", "--root", str(tmp_path / "root"), "--config", str(config), "--", "true"], capsys
    )
    assert rc == 2
    line = assert_one_error_line(err)
    assert str(config) in line
    assert ("is a directory" if kind == "directory" else "not UTF-8") in line


# ======================================================================== D10: read-only state


def _can_mount_read_only(tmp: Path) -> bool:
    """A private mount namespace with a read-only bind mount works here (root with
    CAP_SYS_ADMIN); the mount is gone with the namespace's last process."""
    if shutil.which("unshare") is None:
        return False
    script = (
        f'mount --bind "{tmp}" "{tmp}" && mount -o remount,ro,bind "{tmp}" && ! touch "{tmp}/w"'
    )
    probe = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["stop"], "its VMM is stopped, but cannot write"),
        (["rm", "-f"], "its VMM is stopped, but cannot remove"),
    ],
    ids=["stop", "rm-f"],
)
def test_d10_stop_and_rm_f_work_on_a_read_only_state_directory(
    tmp_path: Path, world: FakeWorld, argv: list[str], match: str
) -> None:
    """D10: ``stop`` / ``rm -f`` with the state directory on a read-only mount.

    Before: ``StateStore.lock`` opened the lock file ``O_RDWR|O_CREAT``, which fails
    with EROFS, so neither command got as far as the VMM: it kept running and
    nothing could stop it.  Now the lock is taken on a read-only descriptor, the VMM
    is stopped, and the one line says what could not be done to the directory.
    A real read-only bind mount, in a private mount namespace (``unshare -m``).
    """
    if not _can_mount_read_only(tmp_path):
        pytest.skip("needs unshare -m and mount (CAP_SYS_ADMIN) for a read-only bind mount")
    root = tmp_path / "root"
    fake_runtime(world, root).run(RunRequest(["true"], Resources(), name="x"))
    script = (
        f'mount --bind "{root}" "{root}" && mount -o remount,ro,bind "{root}" && '
        f'exec "{sys.executable}" -m cpuplug "$@"'
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *argv, "--root", str(root), "x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(SRC)),
    )
    assert proc.returncode == 1, proc.stderr
    line = assert_one_error_line(proc.stderr)
    assert match in line and "Read-only file system" in line
    assert world.vmm_gone(), "the VMM must be stopped"
    assert (root / "x").is_dir()
    assert main(["rm", "--root", str(root), "x"]) == 0  # writable again: a dead one goes
    assert not (root / "x").exists()


def test_d10_lock_falls_back_to_read_only_descriptors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    world: FakeWorld,
) -> None:
    """D10 without a mount namespace: every open for writing or creating fails with
    EROFS and no lock file exists yet, so the lock falls back to the sandbox directory
    itself, which must still exclude a second locker.

    Before: ``os.open(lock, O_RDWR|O_CREAT)`` raised and ``stop`` never reached the VMM.
    """
    fake_runtime(world, tmp_path).run(RunRequest(["true"], Resources(), name="x"))
    (tmp_path / "x" / "lock").unlink()
    real_open = os.open

    def read_only_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    store = StateStore(tmp_path)
    with store.lock("x"), pytest.raises(LockTimeout), store.lock("x", timeout=0.05):
        pass
    rc, _, err = cpuplug(["stop", "--root", str(tmp_path), "x"], capsys)
    assert rc == 1
    line = assert_one_error_line(err)
    assert "its VMM is stopped, but cannot write" in line
    assert str(tmp_path / "x" / "state.json") in line
    assert world.vmm_gone()


# ======================================================================== --root placement


def test_root_may_come_before_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cpuplug --root DIR ps`` (runc's and docker's order for global flags).

    Before: ``--root`` was only an option of each subcommand, so argparse took DIR
    for the command name ("invalid choice").  After the command it still works and,
    if both are given, wins.  A command without a state directory refuses it.
    """
    stopped_sandbox(tmp_path, "x")
    for argv in (
        ["--root", str(tmp_path), "ps", "--json"],
        [f"--root={tmp_path}", "ps", "--json"],
        ["ps", "--root", str(tmp_path), "--json"],
        ["--root", str(tmp_path / "elsewhere"), "ps", "--root", str(tmp_path), "--json"],
    ):
        rc, out, err = cpuplug(argv, capsys)
        assert (rc, err) == (0, ""), argv
        assert [r["name"] for r in json.loads(out)] == ["x"], argv
    argv = ["--root", str(tmp_path), "ps", "--root", str(tmp_path / "elsewhere"), "--json"]
    rc, out, _ = cpuplug(argv, capsys)
    assert (rc, json.loads(out)) == (0, [])

    out_dir = tmp_path / "tables"
    rc, _, err = cpuplug(["--root", str(tmp_path), "acpi", "tables", "--out", str(out_dir)], capsys)
    assert rc == 2 and "--root is an option of the runtime commands" in assert_one_error_line(err)
    assert not out_dir.exists()


def test_root_before_the_command_keeps_the_other_parties_unimported(tmp_path: Path) -> None:
    """``cpuplug --root DIR ps`` builds only the runtime's parsers: the VMM and the
    ACPI tools are not imported just to find out which command was asked for."""
    code = (
        "import sys\n"
        "from cpuplug.cli import main\n"
        f"assert main(['--root', {str(tmp_path)!r}, 'ps', '--json']) == 0\n"
        "loaded = [m for m in sys.modules if m.startswith(('cpuplug.vmm', 'cpuplug.acpi.cli'))]\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(SRC)),
    )
    assert proc.returncode == 0, proc.stderr


# ======================================================================== D2: interrupted update


def test_d2_update_killed_after_device_add_is_finished_by_the_next_command(cli: Cli) -> None:
    """D2: ``update`` SIGKILLed between ``device_add`` and onlining.

    Before: the next ``inspect`` "reconciled" by onlining what was plugged and cleared
    ``pending``, keeping the old target and quota: 3 vCPUs plugged for a target of 2
    and ``cpu.max`` still the old limit.  Now the requested limits are the desired
    state: the next command plugs the rest, onlines, and sets cpuset and quota.
    """
    cli.ok("run", "--name", "k", "--max-cpus", "6", "--cpus", "1", "--", "sleep", "600")
    assert cli.nproc("k") == 2
    killed = cli("update", "--cpus", "3", "k", env={"CPUPLUG_FAULT": "after-device-add"})
    assert killed.returncode == -signal.SIGKILL
    state = json.loads((cli.root / "k" / "state.json").read_text())
    assert state["pending"] is not None and len(state["plugged"]) == 3, "killed half-way"
    info = cli.inspect("k")
    assert info["reconciled"] is True and info["pending"] is None
    assert [v["vcpu"] for v in info["vcpus"] if v["online"]] == [0, 1, 2, 3]
    assert info["containers"][0]["quota"] == 300000
    assert cli.cat("k", "/sys/fs/cgroup/cpu.max") == "300000 100000"
    assert cli.cat("k", "/sys/fs/cgroup/cpuset.cpus") == "0-3"
    assert cli.nproc("k") == 4


def test_d2_a_failing_update_says_what_it_changed_and_the_next_one_finishes(
    world: FakeWorld, tmp_path: Path
) -> None:
    """D2: an update failing after ``device_add`` (the agent refused ``OnlineCPUMem``)
    used to report only the agent's error; the vCPUs it had plugged went unmentioned."""
    rt = fake_runtime(world, tmp_path, maxcpus=8)
    rt.run(RunRequest(["true"], Resources(quota=100000, period=100000), name="b"))
    world.agent.fail_online_once = True
    with pytest.raises(Exception, match=r"already done: plugged vCPU 2,3;.*next cpuplug update or"):
        rt.update("b", Resources(quota=300000, period=100000))
    r = rt.update("b", Resources(cpuset="0-3"))  # a different update finishes the first
    assert (r.after, world.m.online) == (4, {0, 1, 2, 3})
    assert world.agent.cgroups["b"] == {"quota": 300000, "period": 100000, "cpuset_cpus": "0-3"}
    assert rt.store.load("b").pending is None


def test_d2_an_update_whose_vmm_dies_does_not_also_promise_the_next_command_finishes(
    world: FakeWorld, tmp_path: Path
) -> None:
    """D2 (arm64 RFC, found by kill -9 of qemu-system-aarch64 mid-update): the agent's
    connection drops first and the VMM is gone a moment later, so the error said both
    "the next cpuplug update or inspect of a finishes it" and "the VMM exited ...;
    cpuplug rm a cleans it up".  Only the second is true: the sandbox is dead."""
    rt = fake_runtime(world, tmp_path, maxcpus=8)
    rt.run(RunRequest(["true"], Resources(quota=100000, period=100000), name="a"))
    online = world.agent.online_cpu_mem

    def agent_drops_then_vmm_dies(nb_cpus: int) -> list[int]:
        # as with QEMU killed: the agent's socket closes while the process still exits
        threading.Timer(0.2, world.kill_vmm).start()
        world.agent.online_cpu_mem = online  # type: ignore[method-assign]
        raise AgentError("EIO", "connection closed by the agent before a message", None)

    world.agent.online_cpu_mem = agent_drops_then_vmm_dies  # type: ignore[method-assign]
    with pytest.raises(SandboxError) as caught:
        rt.update("a", Resources(quota=300000, period=100000))
    message = str(caught.value)
    assert "the VMM exited during the update" in message and "cpuplug rm a" in message
    assert "finishes it" not in message and "already done" not in message, message


def test_d2_update_succeeds_while_execs_hold_the_agents_connections(cli: Cli) -> None:
    """D2: with 16 ``exec``s running, an update got ``EBUSY: too many agent
    connections`` after its vCPUs were plugged.  Long-running requests now leave
    connections reserved for control calls; the excess exec gets EBUSY instead."""
    cli.ok("run", "--name", "e", "--max-cpus", "4", "--cpus", "1", "--", "sleep", "600")
    agent_path = cli.root / "e" / "agent.sock"
    results: list[str] = []
    clients = [AgentClient(agent_path, timeout=60).connect() for _ in range(16)]

    def long_exec(c: AgentClient) -> None:
        try:
            c.exec_process("e", ["sleep", "3"])
            results.append("ok")
        except Exception as exc:
            c.close()  # as `cpuplug exec` does when its call fails
            results.append(str(exc))

    threads = [threading.Thread(target=long_exec, args=(c,)) for c in clients]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while sum("EBUSY" in r for r in results) < 4:  # the 4 over the limit are refused
            assert time.monotonic() < deadline, results
            time.sleep(0.01)
        update = cli.ok("update", "--cpus", "2", "e")
        assert "vCPUs 2 -> 3" in update.stdout
    finally:
        for t in threads:
            t.join(30)
        for c in clients:
            c.close()
    assert sorted(results).count("ok") == 12
    assert cli.nproc("e") == 3


# ======================================================================== D3: cpuset


def test_d3_cpuset_reaches_the_guest_cgroup(world: FakeWorld, tmp_path: Path) -> None:
    """D3: ``run --cpus 3 --cpuset-cpus 1`` stored the cpuset but sent the container
    every online CPU (``cpuset.cpus`` 0-3, nproc 4)."""
    rt = fake_runtime(world, tmp_path, maxcpus=8)
    rt.run(RunRequest(["true"], Resources(quota=300000, period=100000, cpuset="1"), name="c"))
    assert world.agent.cgroups["c"]["cpuset_cpus"] == "1"
    rt.update("c", Resources(cpuset="0,2"))
    assert world.agent.cgroups["c"]["cpuset_cpus"] == "0,2"


# ======================================================================== D5: unproven pid


def test_d5_rm_f_never_signals_a_pid_it_cannot_prove_is_the_vmm(
    world: FakeWorld, tmp_path: Path
) -> None:
    """D5: a state file with ``vmm_start_ticks`` null made ``rm -f`` SIGTERM whatever
    process had that pid.  A pid without its start time proves nothing now."""
    rt = fake_runtime(world, tmp_path, maxcpus=8)
    rt.run(RunRequest(["true"], Resources(), name="p"))
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        st = rt.store.load("p")
        world.kill_vmm()
        st.vmm_pid, st.vmm_start_ticks = bystander.pid, None
        rt.store.save(st)
        rt.rm("p", force=True)
        assert bystander.poll() is None, "an unrelated process was signalled"
        assert not (tmp_path / "p").exists()
    finally:
        bystander.kill()
        bystander.wait(10)


# ======================================================================== D6: orphaned creation


def test_d6_a_run_killed_after_the_vmm_started_is_failed_and_rm_cleans_it(cli: Cli) -> None:
    """D6: ``run`` SIGKILLed after starting the VMM left the sandbox ``creating``
    forever with a live VMM, and plain ``rm`` called it running."""
    killed = cli("run", "--name", "o", "--", "true", env={"CPUPLUG_FAULT": "after-vmm-start"})
    assert killed.returncode == -signal.SIGKILL
    state = json.loads((cli.root / "o" / "state.json").read_text())
    vmm = ProcessIdentity(state["vmm_pid"], state["vmm_start_ticks"], state["vmm_exe"])
    assert state["status"] == "creating" and vmm.matches()
    rows = json.loads(cli.ok("ps", "--json").stdout)
    assert [(r["name"], r["status"]) for r in rows] == [("o", "failed")]
    assert cli("update", "--cpus", "1", "o").returncode == 1
    cli.ok("rm", "o")
    assert not (cli.root / "o").exists()
    assert not process_alive(vmm.pid, vmm.start_ticks)


def test_d6_a_sandbox_being_created_is_not_failed(world: FakeWorld, tmp_path: Path) -> None:
    """The other side of D6: while ``run`` holds the lock, ``ps`` says ``creating``."""
    rt = fake_runtime(world, tmp_path, maxcpus=8)
    rt.run(RunRequest(["true"], Resources(), name="n"))
    st = rt.store.load("n")
    st.status = "creating"
    rt.store.save(st)
    with rt.store.lock("n", 1):
        assert [r.status.value for r in rt.ps()] == ["creating"]
    assert [r.status.value for r in rt.ps()] == ["failed"]


# ======================================================================== self-offlined CPU


def test_a_cpu_the_container_offlined_is_onlined_by_the_next_update(
    world: FakeWorld, tmp_path: Path
) -> None:
    """A container that offlined a plugged vCPU itself (``echo 0 > cpu3/online``) went
    unnoticed: ``update`` to the same size said "unchanged at 4" and left it offline."""
    rt = fake_runtime(world, tmp_path, maxcpus=8)
    rt.run(RunRequest(["true"], Resources(quota=300000, period=100000), name="s"))
    world.m.online.discard(3)
    r = rt.update("s", Resources(quota=300000, period=100000))
    assert (r.before, r.after) == (3, 4)
    assert world.m.online == {0, 1, 2, 3}
    assert world.agent.cgroups["s"]["cpuset_cpus"] == "0-3"


def test_a_cpu_offlined_in_the_real_guest_is_onlined_by_the_next_update(cli: Cli) -> None:
    """The same through the real guest: its root offlines cpu2 through sysfs."""
    cli.ok("run", "--name", "r", "--max-cpus", "4", "--cpus", "2", "--", "sleep", "600")
    assert cli.nproc("r") == 3
    cli.ok("exec", "r", "--", "sh", "-c", "echo 0 > /sys/devices/system/cpu/cpu2/online")
    assert cli.cat("r", "/sys/devices/system/cpu/online") == "0-1"
    out = cli.ok("update", "--cpus", "2", "r").stdout
    assert "vCPUs 2 -> 3" in out
    assert cli.cat("r", "/sys/devices/system/cpu/online") == "0-2"
    assert cli.nproc("r") == 3


# =================================================================== found by adversarial use (2)


def test_only_directories_cpuplug_made_are_sandboxes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``rm --root ~ Documents`` deleted a user's directory (and ``ps`` wrote a ``lock``
    file into every folder under the root): any directory was a "broken" sandbox."""
    docs = tmp_path / "Documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("precious")
    rc, out, _ = cpuplug(["ps", "--root", str(tmp_path), "--json"], capsys)
    assert (rc, json.loads(out)) == (0, [])
    for argv in (["rm"], ["rm", "-f"], ["stop"], ["inspect"]):
        rc, _, err = cpuplug([*argv, "--root", str(tmp_path), "Documents"], capsys)
        assert rc == 2 and "no such sandbox: Documents" in assert_one_error_line(err)
    rc, _, err = cpuplug(["run", "--root", str(tmp_path), "--name", "Documents", "--", "true"],
                         capsys)  # fmt: skip
    assert rc == 2 and "is not a cpuplug sandbox" in assert_one_error_line(err)
    assert sorted(p.name for p in docs.iterdir()) == ["thesis.txt"]
    rc, _, err = cpuplug(["ps", "--root", "", "--json"], capsys)
    assert rc == 2 and "--root must not be empty" in assert_one_error_line(err)


def test_a_lock_waiter_never_acts_on_a_new_sandbox_of_the_same_name(tmp_path: Path) -> None:
    """An ``rm`` waiting for the lock got the *deleted* lock file's flock after another
    ``rm`` removed the directory, then acted on a new sandbox of the same name being
    created — without excluding its creator (it removed it mid-creation)."""
    store = StateStore(tmp_path)
    store.create("a")
    entered = threading.Event()
    order: list[str] = []

    def waiter() -> None:
        with store.lock("a", 10):
            order.append("waiter")
            entered.set()

    old = store.lock("a", 1)
    old.__enter__()
    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)  # let the waiter block on the old lock (nothing to wait on instead)
    shutil.rmtree(tmp_path / "a")
    store.create("a")
    with store.lock("a", 1):  # the new sandbox's creator
        old.__exit__(None, None, None)  # the old holder lets go: the waiter wakes...
        assert not entered.wait(0.5), "...and must wait for the new sandbox's lock"
        order.append("creator")
    t.join(10)
    assert order == ["creator", "waiter"]


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("hypervisor", "nonsense", "hypervisor must be one of builtin, qemu"),
        ("mode", "nonsense", "mode must be one of acpi, online-offline"),
        ("status", "weird", "status must be one of creating, running, stopped, failed"),
        ("containers", [], "the state lists none"),
        ("maxcpus", 1 << 40, "maxcpus must be 1..512"),
    ],
)
def test_a_corrupt_state_value_is_one_line_and_rm_f_still_stops_the_vmm(
    cli: Cli, field: str, value: object, why: str
) -> None:
    """Enum and structural values of state.json were not checked: a traceback from
    ``inspect``/``update``/``ps``, ``rm -f`` leaving the VMM running, and ``maxcpus``
    2**40 hanging ``inspect`` while it built a row per vCPU."""
    cli.ok("run", "--name", "z", "--max-cpus", "2", "--", "sleep", "100")
    path = cli.root / "z" / "state.json"
    state = json.loads(path.read_text())
    vmm = ProcessIdentity(state["vmm_pid"], state["vmm_start_ticks"], state["vmm_exe"])
    state[field] = value
    path.write_text(json.dumps(state))
    for argv in (["inspect", "z"], ["update", "--cpus", "1", "z"], ["exec", "z", "--", "true"]):
        r = cli(*argv)
        assert r.returncode == 1, r.stderr
        assert why in assert_one_error_line(r.stderr)
    rows = json.loads(cli.ok("ps", "--json").stdout)
    assert [(r["name"], r["status"]) for r in rows] == [("z", "broken")]
    cli.ok("rm", "-f", "z")
    assert not vmm.matches() and not (cli.root / "z").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_a_run_terminated_by_a_signal_cleans_up_like_ctrl_c(
    cli: Cli, sig: signal.Signals
) -> None:
    """SIGTERM (``timeout``, systemd) to ``run`` after its VMM started left the VMM
    running and a ``failed`` sandbox; Ctrl-C cleaned up. Now both do."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpuplug", "run", "--root", str(cli.root), "--name", "t",
         "--", "sleep", "100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    state = cli.root / "t" / "state.json"
    deadline = time.monotonic() + 30
    while not (state.exists() and json.loads(state.read_text()).get("vmm_start_ticks")):
        assert proc.poll() is None and time.monotonic() < deadline, "run never started a VMM"
        time.sleep(0.01)  # the state file is the only sign; nothing to wait on
    st = json.loads(state.read_text())
    vmm = ProcessIdentity(st["vmm_pid"], st["vmm_start_ticks"], st["vmm_exe"])
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "Exception" not in err, err
    assert not vmm.matches(), "the VMM outlived the terminated run"
    assert not (cli.root / "t").exists()


def test_output_that_is_not_a_terminal_is_not_wrapped(cli: Cli) -> None:
    """rich wrapped one-line messages at 80 columns (and cut ``ps`` names) when the
    output was a pipe, so a script saw half a line."""
    name = "n" * 64
    out = cli.ok("run", "--name", name, "--", "sleep", "100").stdout
    assert out.count("\n") == 1 and out.startswith(f"sandbox {name} running: "), out
    ps = cli.ok("ps").stdout
    assert name in ps, ps


def test_a_cpuset_the_vm_can_never_have_is_refused_before_anything_starts(
    world: FakeWorld, tmp_path: Path
) -> None:
    """``--cpuset-cpus 7`` on a 4-vCPU sandbox (or 9 at ``run``) was refused only after
    vCPUs were plugged, and was kept as the desired state: every later update and
    ``inspect`` failed with the same error, the sandbox stuck between two sizes."""
    rt = fake_runtime(world, tmp_path, maxcpus=4)
    with pytest.raises(UsageError, match=r"vCPUs 0-3 at most"):
        rt.run(RunRequest(["true"], Resources(cpuset="9"), name="r"))
    assert not (tmp_path / "r").exists() and world.pids == {}
    rt.run(RunRequest(["true"], Resources(quota=100000, period=100000), name="c"))
    world.m.qmp_log.clear()
    with pytest.raises(UsageError, match=r"vCPUs 0-3 at most"):
        rt.update("c", Resources(cpuset="7"))
    assert world.m.qmp_log == [] and rt.store.load("c").pending is None


def test_a_cpuset_naming_a_high_cpu_keeps_that_cpu_plugged(
    world: FakeWorld, tmp_path: Path
) -> None:
    """``run --cpus 3 --cpuset-cpus 3`` then ``update --cpus 1``: the shrink to 2 vCPUs
    unplugged CPU 3, the container's only CPU, and the update failed half-way."""
    rt = fake_runtime(world, tmp_path, maxcpus=4)
    rt.run(RunRequest(["true"], Resources(quota=300000, period=100000, cpuset="3"), name="p"))
    r = rt.update("p", Resources(quota=100000, period=100000))
    assert r.after == 4 and world.agent.cgroups["p"]["cpuset_cpus"] == "3"
    assert world.agent.cgroups["p"]["quota"] == 100000
    assert rt.store.load("p").pending is None


def test_a_shrink_after_the_guest_offlined_cpus_itself(cli: Cli) -> None:
    """The container offlined CPUs 0-2 itself; ``update --cpus 0.5`` then had vCPU 2's
    eject refused (0x82) on every retry, leaving the VM part-shrunk."""
    cli.ok("run", "--name", "c", "--max-cpus", "4", "--cpus", "1", "--", "sleep", "100")
    cli.ok("update", "--cpus", "3", "c")
    for cpu in (2, 1, 0):  # one exec each: a CPU the writer runs on refuses (EAGAIN)
        deadline = time.monotonic() + 20
        while cli("exec", "c", "--", "sh", "-c",
                  f"echo 0 > /sys/devices/system/cpu/cpu{cpu}/online").returncode:  # fmt: skip
            assert time.monotonic() < deadline, f"cpu{cpu} never went offline"
    assert cli.cat("c", "/sys/devices/system/cpu/online") == "3"
    out = cli.ok("update", "--cpus", "0.5", "c").stdout
    assert "-> 2" in out, out
    assert cli.cat("c", "/sys/devices/system/cpu/online") == "0-1"
    assert cli.nproc("c") == 2


def test_a_run_refused_for_a_long_socket_path_leaves_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A ``run`` refused because its socket path was too long had made its directory
    first: ``ps`` showed it ``failed`` and neither ``rm`` nor ``rm -f`` could remove it."""
    root = Path(tempfile.mkdtemp(prefix="L" * 40, dir="/tmp"))
    try:
        rc, _, err = cpuplug(["run", "--root", str(root), "--name", "n" * 60, "--", "true"],
                             capsys)  # fmt: skip
        assert rc == 2 and "use a shorter --root" in assert_one_error_line(err)
        assert list(root.iterdir()) == []
    finally:
        shutil.rmtree(root)


def test_vcpus_unplugged_by_hand_over_qmp_are_brought_back(cli: Cli) -> None:
    """A ``device_del`` sent by hand over the sandbox's QMP socket (the README invites
    QMP use): ``update`` to the same size trusted the stale plugged list and failed
    after 6 s onlining a CPU that was gone; ``inspect`` said "reconciled" and left the
    sandbox below its target."""
    from cpuplug.runtime.qmp_client import QmpConnection

    cli.ok("run", "--name", "x", "--max-cpus", "4", "--cpus", "2", "--", "sleep", "100")
    for command in (("update", "--cpus", "2", "x"), ("inspect", "x")):
        with QmpConnection(cli.root / "x" / "qmp.sock") as qmp:
            qmp.execute("device_del", {"id": "cpu-2"})
            deadline = time.monotonic() + 10
            while any(s.get("qom-path") and s["props"]["core-id"] == 2
                      for s in qmp.execute("query-hotpluggable-cpus")):  # fmt: skip
                assert time.monotonic() < deadline
                time.sleep(0.02)  # the eject's end is visible only in the slot table here
        cli.ok(*command)
        assert cli.nproc("x") == 3, command


def test_a_vcpu_plugged_by_hand_under_another_id_is_unplugged_by_its_qom_path(cli: Cli) -> None:
    """A ``device_add`` by hand whose id is not ``cpu-<core>`` (found on the arm64 RFC's
    QEMU: ``"id": "other", "core-id": 2``): every shrink sent ``device_del cpu-2``, got
    DeviceNotFound, and failed, and so did ``inspect`` (its reconcile shrinks too), so the
    sandbox stayed above its target with no way back but rm -f.  Now such a vCPU is
    removed by its QOM path, which device_del takes as QEMU does."""
    from cpuplug.runtime.qmp_client import QmpConnection

    cli.ok("run", "--name", "h", "--max-cpus", "4", "--cpus", "1", "--", "sleep", "100")
    for command in (("inspect", "h"), ("update", "--cpus", "1", "h")):
        with QmpConnection(cli.root / "h" / "qmp.sock") as qmp:
            slot = next(s for s in qmp.execute("query-hotpluggable-cpus")
                        if s["props"]["core-id"] == 2)  # fmt: skip
            qmp.execute("device_add", {"driver": slot["type"], "id": "other", **slot["props"]})
        cli.ok(*command)
        info = cli.inspect("h")
        assert [v["vcpu"] for v in info["vcpus"] if v["plugged"]] == [0, 1], command
        assert info["pending"] is None and cli.nproc("h") == 2, command
    history = [e for e in cli.inspect("h")["history"] if e.get("qmp")]
    assert "device_del" in history[-1]["qmp"]


def test_max_cpus_beyond_the_machine_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run --max-cpus 513`` said "default_maxvcpus must be in 0..512": the config key
    the flag overrides, not the flag the user typed."""
    rc, _, err = cpuplug(["run", "--root", str(tmp_path), "--max-cpus", "513", "--", "true"],
                         capsys)  # fmt: skip
    assert rc == 2 and "invalid --max-cpus value '513': must be <= 512" in (
        assert_one_error_line(err)
    )

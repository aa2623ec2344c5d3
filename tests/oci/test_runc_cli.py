"""``cpuplug-runc``'s command line, driven as containerd-shim-runc-v2 drives runc, on the
built-in hypervisor (the model guest's userland runs the containers' programs).

The test process is the subreaper a shim is re-parented to, and takes each container's
exit status from it with ``waitpid``, as containerd does (tests/harness/runc.py).
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import select
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from cpuplug.oci.container import Containers, Stdio
from cpuplug.oci.log import LogFormat, RuncLog
from cpuplug.oci.spec import Process
from cpuplug.runtime.config import load_config
from tests.harness.runc import Runc, alive, runc_env

pytestmark = pytest.mark.slow

QUOTA_1CPU = {"shares": 0, "quota": 100000, "period": 100000}


@pytest.fixture(scope="module")
def runc() -> Iterator[Runc]:
    with runc_env("builtin") as r:
        yield r


def started(runc: Runc, cid: str, args: list[str], **kw: object) -> tuple[int, Path]:
    """A created and started container; (shim pid, the file its output goes to)."""
    bundle = runc.bundle(cid, args, **kw)  # type: ignore[arg-type]
    out = runc.base / f"{cid}.out"
    with out.open("w") as f:
        pid = runc.create(cid, bundle, out=f)
    runc.ok("start", cid)
    return pid, out


def exec_out(runc: Runc, cid: str, *cmd: str) -> str:
    proc = runc.ok("exec", cid, *cmd)
    return proc.stdout


# ------------------------------------------------------------------ lifecycle


def test_create_start_state_and_the_exit_status(runc: Runc) -> None:
    bundle = runc.bundle("life", ["sh", "-c", "echo hi; nproc; cat /nope; exit 3"],
                         cpu=QUOTA_1CPU)  # fmt: skip
    out = runc.base / "life.out"
    with out.open("w") as f:
        pid = runc.create("life", bundle, out=f)
    st = runc.state("life")
    assert st == {
        "ociVersion": "1.0.2",
        "id": "life",
        "pid": pid,
        "status": "created",
        "bundle": str(bundle),
        "rootfs": str(bundle / "rootfs"),
        "created": st["created"],
        "owner": "",
        "annotations": {"org.example": "life"},
    }
    datetime.fromisoformat(st["created"].replace("Z", "+00:00"))
    assert out.read_text() == ""  # created: the process waits for start
    assert alive(pid) and runc.vmm_pid("life") is not None
    runc.ok("start", "life")
    assert runc.wait_exit(pid) == 3
    # 2 vCPUs: default_vcpus 1 + 1 CPU of quota (the Kata formula)
    assert out.read_text() == "hi\n2\ncat: /nope: No such file or directory\n"
    assert runc.status("life") == "stopped"
    vmm = runc.vmm_pid("life")
    assert vmm is not None and not alive(vmm)  # the shim stopped the VM on its way out
    assert runc.fails("start", "life") == "cannot start a container that has stopped"
    runc.ok("delete", "life")
    assert not (runc.root / "life").exists()
    assert list(runc.sandboxes.iterdir()) == []


def test_list_features_version_and_ps(runc: Runc) -> None:
    pid, _ = started(runc, "lst", ["sleep", "60"])
    table = runc.ok("list").stdout.splitlines()
    assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    assert table[1].split()[:3] == ["lst", str(pid), "running"]
    assert [s["id"] for s in json.loads(runc.ok("list", "--format", "json").stdout)] == ["lst"]
    assert runc.ok("list", "-q").stdout == "lst\n"
    features = json.loads(runc.ok("features").stdout)
    assert features["ociVersionMax"] == "1.0.2" and "prestart" in features["hooks"]
    assert runc.ok("--version").stdout.startswith("cpuplug-runc version")
    assert json.loads(runc.ok("ps", "--format", "json", "lst").stdout) == [pid]
    table = runc.ok("ps", "lst").stdout.splitlines()
    assert "PID" in table[0] and str(pid) in table[1] and len(table) == 2
    runc.ok("kill", "lst", "KILL")
    assert runc.wait_exit(pid) == 137
    runc.ok("delete", "lst")


@pytest.mark.parametrize(("sig", "status"), [("15", 143), ("SIGTERM", 143), ("kill", 137),
                                             ("USR1", 138)])  # fmt: skip
def test_kill_takes_numbers_and_names(runc: Runc, sig: str, status: int) -> None:
    cid = f"kill-{sig.lower()}"
    pid, _ = started(runc, cid, ["sleep", "60"])
    runc.ok("kill", cid, sig)
    assert runc.wait_exit(pid) == status
    assert runc.fails("kill", cid, "9") == "container not running"
    runc.ok("delete", cid)


def test_a_process_that_ignores_sigterm_needs_sigkill(runc: Runc) -> None:
    """``docker stop``: kill 15, the timeout, kill 9, delete."""
    pid, out = started(runc, "stubborn", ["sh", "-c", "trap '' TERM; echo ready; sleep 60"])
    runc.ok("kill", "stubborn", "15")
    time.sleep(0.5)
    assert runc.status("stubborn") == "running" and alive(pid)
    runc.ok("kill", "--all", "stubborn", "9")
    assert runc.wait_exit(pid) == 137
    assert out.read_text() == "ready\n"
    runc.ok("delete", "stubborn")


def test_signals_sent_to_the_shim_reach_the_process(runc: Runc) -> None:
    pid, _ = started(runc, "fwd", ["sleep", "60"])
    os.kill(pid, signal.SIGINT)  # the shim stands for the process: containerd may signal it
    assert runc.wait_exit(pid) == 130
    runc.ok("delete", "fwd")


def test_kill_of_a_created_container_ends_its_shim(runc: Runc) -> None:
    pid = runc.create("made", runc.bundle("made", ["sleep", "60"]))
    vmm = runc.vmm_pid("made")
    runc.ok("kill", "made", "TERM")
    assert runc.wait_exit(pid) == 143
    assert vmm is not None and not alive(vmm)
    assert runc.status("made") == "stopped"
    runc.ok("delete", "made")


def test_delete_refuses_a_running_container_and_force_removes_everything(runc: Runc) -> None:
    pid, _ = started(runc, "busy", ["sleep", "60"])
    vmm = runc.vmm_pid("busy")
    why = runc.fails("delete", "busy")
    assert why == "cannot delete container busy that is not stopped: running"
    runc.ok("delete", "--force", "busy")
    assert runc.wait_exit(pid) == 137
    assert vmm is not None and not alive(vmm)
    assert not (runc.root / "busy").exists() and list(runc.sandboxes.iterdir()) == []
    assert runc.fails("state", "busy") == "container does not exist"


def test_delete_of_a_created_container_needs_no_force(runc: Runc) -> None:
    pid = runc.create("cr", runc.bundle("cr", ["true"]))
    runc.ok("delete", "cr")
    assert runc.wait_exit(pid) == 137
    assert list(runc.sandboxes.iterdir()) == []


def test_a_container_whose_vmm_died_is_stopped_and_can_be_deleted(runc: Runc) -> None:
    pid, _ = started(runc, "dead", ["sleep", "60"])
    vmm = runc.vmm_pid("dead")
    assert vmm is not None
    os.kill(vmm, signal.SIGKILL)
    assert runc.wait_exit(pid) == 137
    assert runc.status("dead") == "stopped"
    assert runc.fails("kill", "dead", "9") == "container not running"
    runc.ok("delete", "dead")
    assert list(runc.sandboxes.iterdir()) == []


# ------------------------------------------------------------------ update


def test_update_from_stdin_hot_plugs_and_zero_means_unchanged(runc: Runc) -> None:
    pid, _ = started(runc, "upd", ["sleep", "60"], cpu=QUOTA_1CPU)
    assert exec_out(runc, "upd", "nproc") == "2\n"
    docker = {  # what docker update --cpu-quota 300000 --cpu-period 100000 sends
        "memory": {"limit": 0, "reservation": 0, "kernel": 0},
        "cpu": {"shares": 0, "quota": 300000, "period": 100000},
        "blockIO": {"weight": 0},
    }
    runc.ok("update", "--resources", "-", "upd", input=json.dumps(docker))
    assert exec_out(runc, "upd", "nproc") == "4\n"
    assert exec_out(runc, "upd", "cat", "/sys/fs/cgroup/cpu.max") == "300000 100000\n"
    # a quota-only update (docker: "period": 0) keeps the period
    runc.ok("update", "--resources", "-", "upd",
            input=json.dumps({"cpu": {"quota": 150000, "period": 0}}))  # fmt: skip
    assert exec_out(runc, "upd", "cat", "/sys/fs/cgroup/cpu.max") == "150000 100000\n"
    assert exec_out(runc, "upd", "nproc") == "3\n"
    runc.ok("update", "--resources", "-", "upd", input="{}")  # all unset: nothing changes
    runc.ok("update", "--cpu-quota", "100000", "--cpu-period", "100000", "upd")
    assert exec_out(runc, "upd", "nproc") == "2\n"
    file = runc.base / "res.json"
    file.write_text(json.dumps({"cpu": {"quota": -1}}))
    runc.ok("update", "-r", str(file), "upd")
    assert exec_out(runc, "upd", "cat", "/sys/fs/cgroup/cpu.max") == "max 100000\n"
    runc.ok("kill", "upd", "9")
    assert runc.wait_exit(pid) == 137
    assert runc.fails("update", "--cpu-quota", "200000", "upd") == "container not running"
    runc.ok("delete", "upd")


BAD_UPDATES = [
    ('{"cpu": {"quota": 3', "unable to parse the resources: "),
    ("[1]", "unable to parse the resources: not a JSON object"),
    ('{"cpu": {"quota": "x"}}', "resources: cpu.quota must be an integer"),
    ('{"cpu": {"quota": 500}}', "cpu quota must be >= 1000"),
    ('{"cpu": {"period": 5}}', "cpu period must be 1000..1000000"),
    ('{"cpu": {"cpus": "3-1"}}', "invalid cpu list '3-1'"),
]


def test_bad_update_input_is_refused_and_changes_nothing(runc: Runc) -> None:
    started(runc, "bad-upd", ["sleep", "60"], cpu=QUOTA_1CPU)
    for payload, why in BAD_UPDATES:
        assert why in runc.fails("update", "--resources", "-", "bad-upd", input=payload)
    assert exec_out(runc, "bad-upd", "cat", "/sys/fs/cgroup/cpu.max") == "100000 100000\n"
    assert exec_out(runc, "bad-upd", "nproc") == "2\n"
    runc.ok("delete", "--force", "bad-upd")


def test_concurrent_updates_are_serialised(runc: Runc) -> None:
    started(runc, "conc", ["sleep", "60"], cpu=QUOTA_1CPU)
    results: list[int] = []

    def update(quota: int) -> None:
        proc = runc("update", "--cpu-quota", str(quota), "--cpu-period", "100000", "conc")
        results.append(proc.returncode)

    threads = [threading.Thread(target=update, args=(q,)) for q in (300000, 200000, 300000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [0, 0, 0]
    quota = exec_out(runc, "conc", "cat", "/sys/fs/cgroup/cpu.max").split()[0]
    assert exec_out(runc, "conc", "nproc") == {"300000": "4\n", "200000": "3\n"}[quota]
    runc.ok("delete", "--force", "conc")


# ------------------------------------------------------------------ exec


def test_exec_detached_foreground_and_their_statuses(runc: Runc) -> None:
    started(runc, "ex", ["sleep", "60"], cpu=QUOTA_1CPU)
    out = runc.base / "ex-exec.out"
    pid_file = runc.base / "ex-exec.pid"
    process = runc.process_file("e1", ["sh", "-c", "echo from-exec; nproc; exit 5"])
    with out.open("w") as f:
        runc.ok("exec", "--process", str(process), "--detach", "--pid-file", str(pid_file),
                "ex", stdin=subprocess.DEVNULL, stdout=f, stderr=f)  # fmt: skip
    exec_pid = runc.pid_of(pid_file)
    assert runc.wait_exit(exec_pid) == 5
    assert out.read_text() == "from-exec\n2\n"
    fg = runc("exec", "ex", "sh", "-c", "echo fg; exit 7")
    assert (fg.returncode, fg.stdout) == (7, "fg\n")
    missing = runc.fails("exec", "ex", "no-such-program")
    assert "executable file not found" in missing
    sleeper = runc.process_file("e2", ["sleep", "60"])
    runc.detached("exec", "--process", str(sleeper), "--detach", "--pid-file", str(pid_file), "ex")
    exec_pid = runc.pid_of(pid_file)
    pids = json.loads(runc.ok("ps", "--format", "json", "ex").stdout)
    assert exec_pid in pids and len(pids) == 2
    os.kill(exec_pid, signal.SIGTERM)  # containerd signals an exec's process directly
    assert runc.wait_exit(exec_pid) == 143
    runc.ok("kill", "ex", "9")
    assert runc.fails("exec", "ex", "true") == "cannot exec in a stopped container"
    runc.ok("delete", "ex")


def test_an_exec_that_ends_before_the_command_leaves_its_status_to_the_subreaper(
    runc: Runc,
) -> None:
    """An exec's shim can end before ``exec --detach`` itself does (a fast program on a
    loaded host): its status must still be the subreaper's to take. Popen's finalizer
    reaped such a shim when the command ended, so containerd-shim-runc-v2 never saw the
    exec exit and ``docker exec`` hung after printing all of its output.

    The interleaving is forced: ``exec`` runs in this process, the shim has exited (a
    zombie of ours) before the command's objects go away, and only then do we, standing
    for the subreaper it would be re-parented to, ask for its status."""
    started(runc, "quick", ["sleep", "60"], cpu=QUOTA_1CPU)
    config = load_config(runc.config).with_overrides(hypervisor="builtin")
    containers = Containers(runc.root, config, RuncLog(runc.log, LogFormat.JSON))
    pid_file = runc.base / "quick-exec.pid"
    with (runc.base / "quick-exec.out").open("w") as out:
        stdio = Stdio(stdin=subprocess.DEVNULL, stdout=out.fileno(), stderr=out.fileno())
        process = Process(args=["sh", "-c", "echo done; exit 4"], env=["PATH=/bin"])
        assert containers.exec("quick", process, detach=True, pid_file=pid_file,
                               console_socket=None, stdio=stdio) == 0  # fmt: skip
    shim = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while alive(shim) and time.monotonic() < deadline:  # until it is a zombie
        time.sleep(0.01)
    assert not alive(shim), "the exec's shim did not end"
    del containers  # what the command's exit does to its objects
    gc.collect()
    try:
        _, status = os.waitpid(shim, os.WNOHANG)
    except ChildProcessError:
        pytest.fail("cpuplug-runc reaped the exec's shim: its status is lost to the subreaper")
    assert os.waitstatus_to_exitcode(status) == 4
    assert (runc.base / "quick-exec.out").read_text() == "done\n"
    runc.ok("kill", "quick", "9")
    runc.ok("delete", "--force", "quick")


# ------------------------------------------------------------------ pause


def test_pause_freezes_the_vm_and_resume_thaws_it(runc: Runc) -> None:
    pid, _ = started(runc, "pz", ["sleep", "60"])
    runc.ok("pause", "pz")
    assert runc.status("pz") == "paused"
    vmm = runc.vmm_pid("pz")
    assert Path(f"/proc/{vmm}/stat").read_text().split(") ")[1][0] == "T"
    assert runc.fails("exec", "pz", "true") == "cannot exec in a paused container"
    assert runc.fails("pause", "pz") == "container not running"
    runc.ok("resume", "pz")
    assert runc.status("pz") == "running"
    assert runc.fails("resume", "pz") == "container not paused"
    assert exec_out(runc, "pz", "echo", "thawed") == "thawed\n"
    runc.ok("pause", "pz")
    runc.ok("kill", "pz", "TERM")  # delivered through a thawed VM, frozen again at once:
    time.sleep(0.5)  # as in runc, a paused container sees it only once it is resumed
    assert runc.status("pz") == "paused" and alive(pid)
    runc.ok("resume", "pz")
    assert runc.wait_exit(pid) == 143
    runc.ok("delete", "pz")
    pid, _ = started(runc, "pz2", ["sleep", "60"])
    runc.ok("pause", "pz2")
    runc.ok("kill", "pz2", "KILL")  # SIGKILL needs no thaw (the VM is left running)
    assert runc.wait_exit(pid) == 137
    runc.ok("delete", "pz2")


# ------------------------------------------------------------------ hooks, run


def test_prestart_hook_runs_on_the_host_with_the_state(runc: Runc) -> None:
    record = runc.base / "hook.json"
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"cat > {record}"], "env": ["A=1"]}
    pid = runc.create("hooked", runc.bundle("hooked", ["true"], hooks={"prestart": [hook]}))
    state = json.loads(record.read_text())
    assert state["id"] == "hooked" and state["pid"] == pid and state["status"] == "created"
    assert state["bundle"].endswith("bundles/hooked")
    runc.ok("delete", "hooked")
    failing = {"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 4"]}
    bundle = runc.bundle("badhook", ["true"], hooks={"prestart": [failing]})
    why = runc.fails("create", "--bundle", str(bundle), "badhook")
    assert why == "error running prestart hook /bin/sh: exit status 4, output: nope"
    assert list(runc.root.iterdir()) == [] and list(runc.sandboxes.iterdir()) == []


def test_run_in_the_foreground_and_detached(runc: Runc) -> None:
    bundle = runc.bundle("fg", ["sh", "-c", "echo ran; exit 9"])
    proc = runc("run", "--bundle", str(bundle), "fg", stdin=subprocess.DEVNULL)
    assert (proc.returncode, proc.stdout) == (9, "ran\n")
    assert not (runc.root / "fg").exists() and list(runc.sandboxes.iterdir()) == []
    bundle = runc.bundle("bg", ["sleep", "60"])
    runc.detached("run", "-d", "--bundle", str(bundle), "--pid-file", str(bundle / "p"), "bg")
    assert runc.status("bg") == "running"
    pid = runc.pid_of(bundle / "p")
    runc.ok("delete", "-f", "bg")
    assert runc.wait_exit(pid) == 137


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("drop", "cpu", "why"),
    [
        (("resources",), None, "linux.resources is missing"),
        ((), {"quota": 500, "period": 100000}, "cpu quota must be >= 1000"),
        ((), {"quota": "x"}, "linux.resources.cpu.quota must be an integer"),
        ((), {"quota": 100000, "period": 10}, "cpu period must be 1000..1000000"),
    ],
)
def test_bad_bundles_are_refused_and_nothing_is_left(
    runc: Runc, drop: tuple[str, ...], cpu: dict[str, object] | None, why: str
) -> None:
    bundle = runc.bundle("bad", ["true"], cpu=cpu, drop=drop)
    assert why in runc.fails("create", "--bundle", str(bundle), "bad")
    assert list(runc.root.iterdir()) == [] and list(runc.sandboxes.iterdir()) == []


def test_a_missing_program_fails_create_as_in_runc(runc: Runc) -> None:
    bundle = runc.bundle("nx", ["no-such-program"])
    why = runc.fails("create", "--bundle", str(bundle), "nx")
    assert why.endswith("exec 'no-such-program': executable file not found in $PATH")
    assert list(runc.root.iterdir()) == [] and list(runc.sandboxes.iterdir()) == []


def test_more_bad_input(runc: Runc, tmp_path: Path) -> None:
    assert runc.fails("create", "--bundle", str(tmp_path), "nocfg").endswith(
        "config.json does not exist"
    )
    (tmp_path / "config.json").write_text("{nope")
    assert "invalid JSON" in runc.fails("create", "--bundle", str(tmp_path), "badjson")
    tty = runc.bundle("tty", ["true"], terminal=True)
    assert runc.fails("create", "--bundle", str(tty), "tty") == (
        "cannot allocate tty if runc will detach without setting console socket"
    )
    assert runc.fails("create", "--bundle", str(tty), "a/b") == "invalid id format: a/b"
    for args in (("state", "ghost"), ("kill", "ghost"), ("delete", "ghost"), ("start", "ghost"),
                 ("update", "--cpu-quota", "100000", "ghost"), ("exec", "ghost", "true"),
                 ("ps", "ghost"), ("pause", "ghost"), ("resume", "ghost")):  # fmt: skip
        assert runc.fails(*args) == "container does not exist", args
    assert runc.fails("kill", "ghost", "NOPE") == "unknown signal 'NOPE'"
    bad_format = runc("--log-format", "xml", "list")  # the later one wins, as in runc
    assert (bad_format.returncode, bad_format.stderr) == (1, "invalid log-format: xml\n")
    assert runc.fails("frobnicate").startswith("argument COMMAND: invalid choice")
    assert list(runc.root.iterdir()) == [] and list(runc.sandboxes.iterdir()) == []


def test_create_of_an_existing_id_is_refused(runc: Runc) -> None:
    bundle = runc.bundle("twice", ["true"])
    runc.create("twice", bundle)
    why = runc.fails("create", "--bundle", str(bundle), "twice")
    assert why == "container with given ID already exists"
    runc.ok("delete", "twice")
    assert list(runc.sandboxes.iterdir()) == []


# ------------------------------------------------------------------ terminal


def read_terminal(master: int, timeout: float = 30) -> bytes:
    """What comes out of a pty master until no process holds its slave (EIO)."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the shim (the slave's last holder) is gone
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the terminal did not close within {timeout}s: {data!r}")


def receive_console(listener: socket.socket) -> tuple[str, int]:
    """What containerd's console socket gets: the pty's name and its master."""
    listener.settimeout(30)
    conn, _ = listener.accept()
    with conn:
        name, fds, _, _ = socket.recv_fds(conn, 4096, 1)
    assert len(fds) == 1
    return name.decode(), fds[0]


def test_console_socket_gets_the_terminal_of_create_and_exec(runc: Runc) -> None:
    path = runc.base / "console.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        bundle = runc.bundle("tty", ["sh", "-c", "echo hi; cat /nope"], terminal=True)
        pid = runc.create("tty", bundle, "--console-socket", str(path))
        name, master = receive_console(listener)
        try:
            assert name.startswith("/dev/pts/")
            runc.ok("start", "tty")
            # one stream, as a terminal is: stderr comes with stdout, lines end in \r\n
            assert read_terminal(master) == b"hi\r\ncat: /nope: No such file or directory\r\n"
            assert runc.wait_exit(pid) == 1
        finally:
            os.close(master)
        runc.ok("delete", "tty")
        path.unlink()
        listener.close()
    started(runc, "ttyx", ["sleep", "60"])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        process = runc.process_file("tx", ["sh", "-c", "echo in-exec; exit 4"], terminal=True)
        pid_file = runc.base / "tx.pid"
        runc.detached("exec", "--process", str(process), "--detach", "--pid-file",
                      str(pid_file), "--console-socket", str(path), "ttyx")  # fmt: skip
        _, master = receive_console(listener)
        try:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
            assert read_terminal(master) == b"in-exec\r\n"
            assert runc.wait_exit(runc.pid_of(pid_file)) == 4
        finally:
            os.close(master)
    process = runc.process_file("tn", ["true"], terminal=True)
    assert runc.fails("exec", "--process", str(process), "--detach", "ttyx") == (
        "cannot allocate tty if runc will detach without setting console socket"
    )
    runc.ok("delete", "--force", "ttyx")

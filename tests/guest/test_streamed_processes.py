"""Streamed processes (``CreateContainer{streams}``, ``StartProcess``, ``ReadProcess``,
``WriteStdin``, ``SignalProcess``, ``ResizeTerminal``) on both agent OSes.

The model: the fake kernel's real userland, over a fake channel (``Env`` of
test_guest_agent). Real Linux: ``KernelTree`` with real processes, over one stream
(``Stack`` of test_linux_agent), driven through the runtime's ``AgentClient``.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cpuplug import agent_protocol as ap
from cpuplug.guest.agent_os import ProcessIO
from cpuplug.runtime.agent_client import AgentClient
from tests.guest.test_guest_agent import Env
from tests.guest.test_linux_agent import Stack, make_tree
from tests.harness.guest_fakes import FakeKernel

Reader = Callable[[str | None], tuple[bytes, bytes, int]]


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env(FakeKernel(possible=4, online=2, enabled=2), retry_interval=0.01)
    yield e
    e.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("agent-")]


def read_all(env: Env, cid: str, eid: str | None = None, limit: float = 20) -> tuple[str, str, int]:
    """Read until the exit status comes; (stdout, stderr, exit status)."""
    out, err = b"", b""
    deadline = time.monotonic() + limit
    params: dict[str, Any] = {"container_id": cid, "timeout": 2}
    if eid is not None:
        params["exec_id"] = eid
    while time.monotonic() < deadline:
        r = env.call(ap.Method.READ_PROCESS, params)
        out += base64.b64decode(r["stdout"])
        err += base64.b64decode(r["stderr"])
        if r["exit_code"] is not None:
            return out.decode(), err.decode(), int(r["exit_code"])
    raise AssertionError(f"no exit status within {limit}s: {out!r} {err!r}")


# ------------------------------------------------------------------ the model


def test_model_streamed_init_output_status_and_reread(env: Env) -> None:
    env.call(
        ap.Method.CREATE_CONTAINER,
        {"container_id": "c", "cmd": ["sh", "-c", "echo hi; cat /nope; exit 3"], "streams": True},
    )
    err = env.error(ap.Method.READ_PROCESS, {"container_id": "c"})
    assert err.code is ap.ErrorCode.ENOENT and "has not started" in err.message
    env.call(ap.Method.START_CONTAINER, {"container_id": "c"})
    out, stderr, code = read_all(env, "c")
    assert (out, stderr, code) == ("hi\n", "cat: /nope: No such file or directory\n", 3)
    again = env.call(ap.Method.READ_PROCESS, {"container_id": "c", "timeout": 1})
    assert again == {"stdout": "", "stderr": "", "exit_code": 3}  # a lost reply can be read again


def test_model_exec_terminal_signals_and_trap(env: Env) -> None:
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": ["sleep", "60"]})
    env.call(ap.Method.START_CONTAINER, {"container_id": "c"})
    err = env.error(ap.Method.READ_PROCESS, {"container_id": "c"})
    assert err.code is ap.ErrorCode.EINVAL and "without streams" in err.message
    start = {"container_id": "c", "cmd": ["nproc"]}
    env.call(ap.Method.START_PROCESS, {**start, "exec_id": "e1"})
    assert read_all(env, "c", "e1") == ("2\n", "", 0)
    assert env.error(ap.Method.START_PROCESS, {**start, "exec_id": "e1"}).code is (
        ap.ErrorCode.EEXIST
    )
    err = env.error(ap.Method.START_PROCESS, {**start, "exec_id": "e2", "cmd": ["vim"]})
    assert err.code is ap.ErrorCode.ENOENT and "vim" in err.message
    env.call(ap.Method.START_PROCESS, {**start, "exec_id": "e2", "terminal": True,
                                       "cmd": ["sh", "-c", "echo a; cat /x"]})  # fmt: skip
    assert read_all(env, "c", "e2") == ("a\r\ncat: /x: No such file or directory\r\n", "", 1)
    sleeper = {"container_id": "c", "exec_id": "s1", "cmd": ["sleep", "60"]}
    env.call(ap.Method.START_PROCESS, sleeper)
    env.call(ap.Method.SIGNAL_PROCESS, {"container_id": "c", "exec_id": "s1", "signal": 15})
    assert read_all(env, "c", "s1")[2] == 143
    trap = {"container_id": "c", "exec_id": "t", "cmd": ["sh", "-c", "trap '' TERM; sleep 60"]}
    env.call(ap.Method.START_PROCESS, trap)
    time.sleep(0.2)
    env.call(ap.Method.SIGNAL_PROCESS, {"container_id": "c", "exec_id": "t", "signal": 15})
    r = env.call(ap.Method.READ_PROCESS, {"container_id": "c", "exec_id": "t", "timeout": 0.3})
    assert r["exit_code"] is None  # ignored
    env.call(ap.Method.KILL_CONTAINER, {"container_id": "c", "signal": 15})  # ignored too
    r = env.call(ap.Method.READ_PROCESS, {"container_id": "c", "exec_id": "t", "timeout": 0.3})
    assert r["exit_code"] is None
    env.call(ap.Method.SIGNAL_PROCESS, {"container_id": "c", "exec_id": "t", "signal": 9})
    assert read_all(env, "c", "t")[2] == 137
    written = env.call(
        ap.Method.WRITE_STDIN,
        {"container_id": "c", "exec_id": "t", "data": base64.b64encode(b"x").decode()},
    )
    assert written == {"written": 1}  # the model's programs read no stdin: accepted, dropped
    env.call(ap.Method.REMOVE_CONTAINER, {"container_id": "c"})
    assert env.kernel.sched.tasks() == []


def test_model_exit_builtin(env: Env) -> None:
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": []})
    for line, code in (("exit 3", 3), ("false; exit", 1), ("exit 300", 44), ("exit x", 2)):
        out = env.call(ap.Method.EXEC_PROCESS, {"container_id": "c", "cmd": ["sh", "-c", line]})
        assert out["exit_code"] == code, line


@pytest.mark.parametrize(
    ("method", "params", "why"),
    [
        (ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": ["true"], "cwd": "/"},
         "need 'streams'"),
        (ap.Method.READ_PROCESS, {"container_id": "c", "timeout": 61}, "'timeout' must be"),
        (ap.Method.READ_PROCESS, {"container_id": "c", "max_bytes": 0}, "'max_bytes' must be"),
        (ap.Method.WRITE_STDIN, {"container_id": "c", "data": "%%%"}, "must be base64"),
        (ap.Method.START_PROCESS, {"container_id": "c", "exec_id": "../x", "cmd": ["true"]},
         "'exec_id' must match"),
        (ap.Method.START_PROCESS, {"container_id": "c", "exec_id": "e", "cmd": ["true"],
                                   "cwd": "tmp"}, "'cwd' must be an absolute path"),
        (ap.Method.RESIZE_TERMINAL, {"container_id": "c", "rows": 0, "cols": 80}, "'rows' must"),
    ],
)  # fmt: skip
def test_bad_streamed_requests_are_einval(
    env: Env, method: ap.Method, params: dict[str, Any], why: str
) -> None:
    # sent raw: the client helper would refuse them before they left (the same checks)
    ap.send_message(env.sock, ap.make_request(99, method, params))
    reply = ap.parse_incoming(ap.recv_message(env.sock, timeout=10))
    assert isinstance(reply, ap.ErrorReply) and reply.id == 99
    assert reply.code == "EINVAL" and why in reply.message
    assert env.agent.containers() == []


def test_model_exec_of_an_unknown_exec_or_container(env: Env) -> None:
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": []})
    err = env.error(ap.Method.SIGNAL_PROCESS, {"container_id": "c", "exec_id": "x", "signal": 9})
    assert err.code is ap.ErrorCode.ENOENT and err.message == "no exec 'x' in container 'c'"
    err = env.error(ap.Method.READ_PROCESS, {"container_id": "zz"})
    assert err.code is ap.ErrorCode.ENOENT


# ------------------------------------------------------------------ real Linux processes


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(make_tree(tmp_path / "guest"))
    s.client.create_container("c", ["true"])
    yield s
    s.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("agent-")]


def drain(c: AgentClient, eid: str | None, limit: float = 20) -> tuple[bytes, bytes, int]:
    out, err = b"", b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        r = c.read_process("c", eid, 2)
        out, err = out + r.stdout, err + r.stderr
        if r.exit_code is not None:
            return out, err, r.exit_code
    raise AssertionError(f"no exit status within {limit}s: {out!r} {err!r}")


def test_linux_pipes_env_cwd_and_stdin(stack: Stack, tmp_path: Path) -> None:
    c = stack.client
    script = "echo out; echo err >&2; echo $FOO; pwd; exit 3"
    c.start_process("c", "e1", ["sh", "-c", script], env=["FOO=bar", "PATH=/usr/bin:/bin"],
                    cwd=str(tmp_path))  # fmt: skip
    assert drain(c, "e1") == (f"out\nbar\n{tmp_path}\n".encode(), b"err\n", 3)
    c.start_process("c", "cat", ["cat"])
    assert c.write_stdin("c", "cat", b"hello\n") == 6
    assert c.write_stdin("c", "cat", b"", close=True) == 0
    assert drain(c, "cat") == (b"hello\n", b"", 0)
    with pytest.raises(ap.AgentError) as info:
        c.start_process("c", "nx", ["no-such-program"])
    assert info.value.code is ap.ErrorCode.ENOENT


def test_linux_output_waits_for_the_reader_and_big_output_comes_whole(stack: Stack) -> None:
    c = stack.client
    c.start_process("c", "big", ["head", "-c", "300000", "/dev/zero"])
    time.sleep(0.3)  # the pipe fills up and the writer waits: nothing is lost
    out, err, code = drain(c, "big")
    assert (len(out), err, code) == (300000, b"", 0)


def test_linux_background_child_does_not_hold_the_status_back(stack: Stack) -> None:
    c = stack.client
    t0 = time.monotonic()
    c.start_process("c", "bg", ["sh", "-c", "sleep 30 & echo done"])
    assert drain(c, "bg") == (b"done\n", b"", 0)
    assert time.monotonic() - t0 < 5


def test_linux_terminal_resize_and_signals(stack: Stack) -> None:
    c = stack.client
    c.start_process("c", "t", ["sh", "-c", "sleep 0.5; stty size; tty"], terminal=True)
    c.resize_terminal("c", "t", 40, 100)
    out, err, code = drain(c, "t")
    assert code == 0 and err == b""
    assert out.startswith(b"40 100\r\n/dev/pts/"), out
    c.start_process("c", "s", ["sleep", "30"])
    c.signal_process("c", "s", 15)
    assert drain(c, "s")[2] == 143
    c.start_process("c", "trap", ["sh", "-c", "trap '' TERM; echo ready; sleep 30"])
    assert c.read_process("c", "trap", 5).stdout == b"ready\n"
    c.signal_process("c", "trap", 15)
    assert c.read_process("c", "trap", 0.5).exit_code is None  # ignored
    c.signal_process("c", "trap", 9)
    assert drain(c, "trap")[2] == 137


def test_linux_streamed_init(tmp_path: Path) -> None:
    s = Stack(make_tree(tmp_path / "guest"))
    try:
        c = s.client
        c.create_container("i", ["sh", "-c", "echo init; read x; echo got $x"], streams=True,
                           env=["PATH=/usr/bin:/bin"])  # fmt: skip
        pid = c.start_container("i")
        assert os.path.exists(f"/proc/{pid}")
        assert c.read_process("i", None, 5).stdout == b"init\n"
        c.write_stdin("i", None, b"y\n", close=True)
        out = b""
        for _ in range(20):
            r = c.read_process("i", None, 2)
            out += r.stdout
            if r.exit_code is not None:
                break
        assert (out, r.exit_code) == (b"got y\n", 0)
    finally:
        s.close()


def test_rootfs_disk_needs_streams_and_a_disk(env: Env, tmp_path: Path) -> None:
    create = {"container_id": "r", "cmd": ["true"], "rootfs_disk": "cpuplug-rootfs"}
    err = env.error(ap.Method.CREATE_CONTAINER, create)
    assert err.code is ap.ErrorCode.EINVAL and "need 'streams'" in err.message
    err = env.error(ap.Method.CREATE_CONTAINER, {**create, "streams": True})
    assert err.code is ap.ErrorCode.ENOENT  # the model has no block device (ENODEV)
    assert err.message == "rootfs: block device cpuplug-rootfs: No such device"
    assert env.agent.containers() == [] and not env.kernel.vfs.exists("/sys/fs/cgroup/r")
    s = Stack(make_tree(tmp_path / "guest"))
    try:
        (s.os.root / "sys" / "block" / "vda").mkdir(parents=True)
        (s.os.root / "sys" / "block" / "vda" / "serial").write_text("other\n")
        with pytest.raises(ap.AgentError) as info:
            s.client.create_container("r", ["true"], streams=True, rootfs_disk="cpuplug-rootfs")
        assert info.value.message == (
            "rootfs: block device with serial cpuplug-rootfs: No such device"
        )
        assert not (s.os.root / "sys" / "fs" / "cgroup" / "r").exists()
    finally:
        s.close()


def test_a_streamed_containers_program_must_exist_at_create(env: Env) -> None:
    err = env.error(ap.Method.CREATE_CONTAINER, {"container_id": "m", "cmd": ["vim"],
                                                 "streams": True})  # fmt: skip
    assert err.code is ap.ErrorCode.ENOENT
    assert err.message == "exec 'vim': executable file not found in $PATH"
    assert env.agent.containers() == [] and not env.kernel.vfs.exists("/sys/fs/cgroup/m")
    env.call(ap.Method.CREATE_CONTAINER, {"container_id": "m", "cmd": ["/bin/sleep", "1"],
                                          "streams": True})  # fmt: skip


def test_linux_finds_programs_inside_the_containers_root(stack: Stack, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(b"#!/bin/true\n")
    (root / "bin" / "busybox").chmod(0o755)
    (root / "bin" / "sh").symlink_to("/bin/busybox")  # absolute: the container's busybox
    (root / "usr" / "bin" / "env").symlink_to("../../bin/busybox")
    (root / "bin" / "gone").symlink_to("/bin/nothing")
    (root / "bin" / "loop").symlink_to("/bin/loop")
    (root / "bin" / "data").write_text("not executable\n")
    io = ProcessIO(root=str(root), env=("PATH=/usr/bin:/bin",))
    names = ("sh", "env", "/bin/sh", "busybox", "gone", "loop", "data", "vim")
    found = {name: stack.os.find_program(name, io) for name in names}
    assert found == {"sh": True, "env": True, "/bin/sh": True, "busybox": True,
                     "gone": False, "loop": False, "data": False, "vim": False}  # fmt: skip
    assert not stack.os.find_program("sh", ProcessIO(root=str(root), env=("PATH=/usr/bin",)))
    with pytest.raises(ap.AgentError) as info:
        stack.client.create_container("m", ["no-such-program"], streams=True)
    assert info.value.code is ap.ErrorCode.ENOENT and "executable file not found" in str(info.value)

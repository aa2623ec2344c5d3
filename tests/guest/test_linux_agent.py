"""The real-Linux agent (``cpuplug.guest.linux_*``) against a file tree in tmp_path.

What runs for real here: the files (a sysfs/cgroupfs-shaped tree of plain files), the
processes (forked, moved into the container's ``cgroup.procs`` file, exec'd, waited for
with a pidfd, killed), the channel (a unix socket or a pty standing in for the
virtio-serial port) and ``python3 -m cpuplug.guest.linux_agent`` as a process. What a
kernel would do on its own (update ``online`` when ``cpuN/online`` is written, fill a new
cgroup directory with its files, refuse a bad ``cpuset.cpus``) is played by
:class:`KernelTree`, a thin subclass of ``LinuxOS``. Namespaces need root on a cgroup v2
host: that test skips elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from cpuplug import agent_protocol as ap
from cpuplug.guest import linux_process
from cpuplug.guest.agent import Agent
from cpuplug.guest.agent_os import ProgramNotFound
from cpuplug.guest.frame_resync import ResyncDecoder
from cpuplug.guest.linux_agent import enable_controllers, wait_for_port
from cpuplug.guest.linux_os import READ_LIMIT, LinuxError, LinuxOS
from cpuplug.guest.linux_uevents import UeventMonitor, cpu_event, parse_uevent
from cpuplug.guest.vfs import GuestOSError
from cpuplug.guest.virtio_serial import SerialChannel, find_port
from cpuplug.runtime.agent_client import AgentClient

CPU = "sys/devices/system/cpu"
CG = "sys/fs/cgroup"


# ------------------------------------------------------------------ the fake tree


def make_tree(root: Path, *, possible: int = 4, online: int = 2) -> Path:
    """A guest's /sys, /proc shaped tree: cpu0 (no online file, as x86's) .. cpu<online-1>
    registered and online, the rest possible but not yet hot-added; no ``enabled`` file
    (Linux before 6.11)."""
    cpu = root / CPU
    cpu.mkdir(parents=True)
    (cpu / "possible").write_text(ap.format_cpu_list(range(possible)) + "\n")
    (cpu / "present").write_text(ap.format_cpu_list(range(possible)) + "\n")
    (cpu / "online").write_text(ap.format_cpu_list(range(online)) + "\n")
    (cpu / "offline").write_text(ap.format_cpu_list(range(online, possible)) + "\n")
    (cpu / "cpu0").mkdir()
    for n in range(1, online):
        (cpu / f"cpu{n}").mkdir()
        (cpu / f"cpu{n}" / "online").write_text("1\n")
    (cpu / "cpufreq").mkdir()  # not a CPU
    cg = root / CG
    cg.mkdir(parents=True)
    (cg / "cgroup.subtree_control").write_text("")
    (cg / "cgroup.procs").write_text("")
    (root / "proc").mkdir()
    (root / "proc" / "version").write_text(
        "Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\n"
    )
    return root


class KernelTree(LinuxOS):
    """LinuxOS on the tree, plus what the kernel would do behind the files."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.allowed: set[int] = set()  # hot-added CPUs the "host" lets come online
        self.online_writes: list[int] = []

    def _set(self, name: str, cpus: set[int] | frozenset[int]) -> None:
        (self.root / CPU / name).write_text(ap.format_cpu_list(cpus) + "\n")

    def hot_add(self, cpu: int, *, allowed: bool = True) -> None:
        d = self.root / CPU / f"cpu{cpu}"
        d.mkdir()
        (d / "online").write_text("0\n")
        if allowed:
            self.allowed.add(cpu)

    def set_cpu_online(self, cpu: int, online: bool) -> None:
        self.online_writes.append(cpu)
        if online and cpu not in self.allowed and cpu not in self.cpus("online"):
            raise LinuxError(errno.EPERM, f"/{CPU}/cpu{cpu}/online")
        super().set_cpu_online(cpu, online)  # writes the real file
        now = set(self.cpus("online"))
        now = now | {cpu} if online else now - {cpu}
        self._set("online", now)
        self._set("offline", set(self.cpus("possible")) - now)

    def create_cgroup(self, cid: str) -> None:
        super().create_cgroup(cid)
        d = self.root / CG / cid
        for name, text in {
            "cpu.max": "max 100000\n",
            "cpuset.cpus": "\n",
            "cpuset.cpus.effective": ap.format_cpu_list(self.cpus("online")) + "\n",
            "cpu.stat": "usage_usec 10\nuser_usec 7\nsystem_usec 3\ncore_sched.force_idle_usec 0\n",
            "cgroup.procs": "",
        }.items():
            (d / name).write_text(text)

    def write_cgroup(self, cid: str, name: str, data: str) -> None:
        if name == "cpuset.cpus":
            try:
                cpus = ap.parse_cpu_list(data)
            except ap.CpuListError:
                raise LinuxError(errno.EINVAL, f"{self.cgroup_path(cid)}/{name}") from None
            if not cpus <= self.cpus("possible"):
                raise LinuxError(errno.EINVAL, f"{self.cgroup_path(cid)}/{name}")
        super().write_cgroup(cid, name, data)

    def remove_cgroup(self, cid: str) -> None:
        d = self.root / CG / cid
        if d.is_dir():  # cgroupfs removes its files with the directory
            for f in d.iterdir():
                f.unlink()
        super().remove_cgroup(cid)


class NoChannel:
    one_stream = True

    def accept(self, timeout: float | None) -> None:
        time.sleep(timeout or 0)
        return None


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "guest")


@pytest.fixture
def los(tree: Path) -> Iterator[KernelTree]:
    system = KernelTree(NoChannel(), root=tree, namespaces=False)
    yield system
    for proc in system._children.of_container("c"):
        proc.kill(signal.SIGKILL)
        proc.wait(5)
    system.close()


# ------------------------------------------------------------------ files and CPUs


def test_cpu_masks_enabled_fallback_and_hotpluggable_cpus(los: KernelTree) -> None:
    assert los.cpus("possible") == frozenset(range(4))
    assert los.cpus("online") == {0, 1}
    assert los.cpus("enabled") == {0, 1}  # no enabled file: the registered cpuN directories
    assert los.hotpluggable_cpus() == {1: True}  # cpu0 has no online file
    los.hot_add(10)
    los.hot_add(2)
    assert los.hotpluggable_cpus() == {1: True, 2: False, 10: False}
    assert list(los.hotpluggable_cpus()) == [1, 2, 10]  # numeric order, not 1, 10, 2
    (los.root / CPU / "enabled").write_text("0-2,10\n")
    assert los.cpus("enabled") == {0, 1, 2, 10}


def test_cpu_online_writes_the_file_and_errors_name_the_guest_path(los: KernelTree) -> None:
    los.hot_add(2)
    LinuxOS.set_cpu_online(los, 2, True)
    assert (los.root / CPU / "cpu2" / "online").read_text() == "1"
    with pytest.raises(GuestOSError) as info:
        LinuxOS.set_cpu_online(los, 7, True)
    assert info.value.errno == errno.ENOENT
    assert str(info.value) == "/sys/devices/system/cpu/cpu7/online: No such file or directory"


def test_read_file_bounds_and_errors(los: KernelTree) -> None:
    assert los.read_file("/proc/version").startswith("Linux version 6.1.0-57")
    (los.root / "big").write_bytes(b"x" * (READ_LIMIT + 1))
    with pytest.raises(GuestOSError) as info:
        los.read_file("/big")
    assert info.value.errno == errno.EFBIG and str(info.value) == "/big: File too large"
    with pytest.raises(GuestOSError) as info:
        los.read_file("/sys")
    assert info.value.errno == errno.EISDIR
    (los.root / "bin.dat").write_bytes(b"\xff\x00ok")
    assert los.read_file("/bin.dat") == "\ufffd\x00ok"


def test_cgroup_files_and_errors(los: KernelTree) -> None:
    los.create_cgroup("c")
    with pytest.raises(GuestOSError) as info:
        LinuxOS.create_cgroup(los, "c")
    assert info.value.errno == errno.EEXIST and info.value.path == "/sys/fs/cgroup/c"
    los.write_cgroup("c", "cpu.max", "50000 100000\n")
    assert los.read_cgroup("c", "cpu.max") == "50000 100000\n"
    los.write_cgroup("c", "cpu.max", "max\n")  # one write, truncating as echo > does
    assert los.read_cgroup("c", "cpu.max") == "max\n"
    with pytest.raises(GuestOSError) as info:
        los.read_cgroup("nope", "cpu.max")
    assert str(info.value) == "/sys/fs/cgroup/nope/cpu.max: No such file or directory"


# ------------------------------------------------------------------ processes


def test_exec_joins_the_cgroup_and_returns_exit_code_and_output(los: KernelTree) -> None:
    los.create_cgroup("c")
    proc = los.spawn("c", ["sh", "-c", "echo out; echo err >&2; exit 3"], init=False)
    assert proc.wait(10)
    assert proc.exit_code == 3
    assert proc.output() == ("out\n", "err\n")
    assert los.cgroup_pids("c") == [proc.pid]  # the child wrote its own pid to cgroup.procs


def test_exec_of_no_program_and_of_a_missing_container(los: KernelTree) -> None:
    los.create_cgroup("c")
    with pytest.raises(ProgramNotFound) as info:
        los.spawn("c", ["no-such-program-cpuplug"], init=False)
    assert info.value.path == "no-such-program-cpuplug"
    with pytest.raises(GuestOSError) as err:
        los.spawn("gone", ["true"], init=False)
    assert err.value.errno == errno.ENOENT and err.value.path == "/sys/fs/cgroup/gone"
    assert los._children.of_container("c") == []  # the failed child was reaped


def test_a_failing_step_before_exec_is_reported_with_its_errno(los: KernelTree) -> None:
    los.create_cgroup("c")
    (los.root / CG / "c" / "cgroup.procs").unlink()  # as if the cgroup were being removed
    with pytest.raises(GuestOSError) as info:
        los.spawn("c", ["true"], init=False)
    assert info.value.errno == errno.ENOENT
    assert info.value.path == "/sys/fs/cgroup/c/cgroup.procs"


def test_timeout_kill_and_signal_exit_code(los: KernelTree) -> None:
    los.create_cgroup("c")
    proc = los.spawn("c", ["sleep", "30"], init=False)
    assert not proc.wait(0.2)
    proc.kill(signal.SIGKILL)
    assert proc.wait(5)
    assert proc.exit_code == 128 + 9


def test_a_background_child_holding_the_pipes_does_not_hold_the_reply(los: KernelTree) -> None:
    los.create_cgroup("c")
    proc = los.spawn("c", ["sh", "-c", "sleep 30 & echo started"], init=False)
    t0 = time.monotonic()
    assert proc.wait(10)
    assert time.monotonic() - t0 < linux_process.DRAIN_GRACE + 2
    assert proc.output()[0] == "started\n"
    los.kill_cgroup("c", signal.SIGKILL)  # the sleep is in the exec's process group


def test_output_is_bounded_and_fits_a_frame(los: KernelTree) -> None:
    los.create_cgroup("c")
    script = "head -c 600000 /dev/zero; head -c 300000 /dev/urandom >&2"
    proc = los.spawn("c", ["sh", "-c", script], init=False)
    assert proc.wait(20) and proc.exit_code == 0
    out, err = proc.output()
    assert len(out) <= linux_process.OUTPUT_LIMIT
    reply = ap.make_reply(1, {"exit_code": 0, "stdout": out, "stderr": err})
    assert len(ap.encode_frame(reply)) <= ap.MAX_FRAME + 4


def test_init_output_goes_to_the_console_and_kill_cgroup_reaches_it(los: KernelTree) -> None:
    los.create_cgroup("c")
    init = los.spawn("c", ["sleep", "30"], init=True)
    assert init.output() == ("", "")
    assert init.pid in los.cgroup_pids("c")
    los.kill_cgroup("c", signal.SIGTERM)
    assert los.wait_cgroup_empty("c", 5)
    assert init.exit_code == 128 + 15


# ------------------------------------------------------------------ framing over one stream


def frame(req_id: ap.RequestId, method: str, params: dict[str, Any]) -> bytes:
    return ap.encode_frame(ap.make_request(req_id, method, params))


def test_resync_skips_a_torn_frame_and_finds_the_next() -> None:
    dec = ResyncDecoder()
    good = frame(1, "GuestDetails", {})
    torn = frame(9, "ReadFile", {"path": "/proc/version"})[:14]  # a client died mid-frame
    assert dec.feed(torn) == []
    assert dec.feed(good) == [good[4:]]  # the next header's 0x00 shows the tear at once
    assert dec.take_skipped() == len(torn)


@pytest.mark.parametrize(
    "junk",
    [
        b"hello\n",  # text: no 0x00
        struct.pack(">I", ap.MAX_FRAME + 1),  # impossible length
        struct.pack(">I", 0),  # empty frame
        b"\x00\x00",  # half a header
        struct.pack(">I", 5) + b"[1,2]",  # not an object
    ],
)
def test_resync_after_junk_fed_byte_by_byte(junk: bytes) -> None:
    dec = ResyncDecoder()
    good = frame("a", "GuestDetails", {})
    bodies: list[bytes] = []
    for byte in junk + good + good:
        bodies += dec.feed(bytes([byte]))
    assert bodies == [good[4:], good[4:]]
    assert dec.take_skipped() == len(junk) and dec.pending == 0


# ------------------------------------------------------------------ the agent over one stream


class Host:
    """The host end of the port, speaking raw frames (out-of-order replies are kept)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.early: dict[ap.RequestId, dict[str, Any]] = {}

    def send(self, req_id: ap.RequestId, method: str, params: dict[str, Any]) -> None:
        self.sock.sendall(frame(req_id, method, params))

    def next(self, timeout: float = 10) -> dict[str, Any]:
        return ap.recv_message(self.sock, timeout)

    def reply(self, req_id: ap.RequestId, timeout: float = 10) -> dict[str, Any]:
        while req_id not in self.early:
            msg = self.next(timeout)
            if "id" in msg:
                self.early[msg["id"]] = msg
        return self.early.pop(req_id)


class Stack:
    """The agent on KernelTree, its port a unix socket pair; the host end for the test."""

    def __init__(self, tree: Path, **agent_kw: Any) -> None:
        self.path = tree.parent / "agent.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(1)
        self.client = AgentClient(self.path, timeout=20).connect()  # QEMU's chardev's role
        guest, _ = listener.accept()
        listener.close()
        self.uevents_in, uevents_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.channel = SerialChannel.from_fd(guest.detach(), "socket")
        events = UeventMonitor(uevents_out)
        self.os = KernelTree(self.channel, root=tree, namespaces=False, events=events)
        self.agent = Agent(self.os, retry_interval=0.01, **agent_kw).start()
        assert self.client._sock is not None
        self.host = Host(self.client._sock)

    def uevent(self, action: str, cpu: int) -> None:
        devpath = f"/devices/system/cpu/cpu{cpu}"
        self.uevents_in.send(
            f"{action}@{devpath}\0ACTION={action}\0DEVPATH={devpath}\0SUBSYSTEM=cpu\0".encode()
        )

    def close(self) -> None:
        self.client.close()
        self.agent.stop()
        for cid in self.agent.containers():
            self.os.kill_cgroup(cid, signal.SIGKILL)
            self.os.wait_cgroup_empty(cid, 5)
        self.os.close()
        self.channel.close()
        self.uevents_in.close()


@pytest.fixture
def stack(tree: Path) -> Iterator[Stack]:
    s = Stack(tree)
    yield s
    s.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("agent-")]


def test_agent_client_drives_a_container_over_the_stream(stack: Stack) -> None:
    c = stack.client
    assert c.guest_details() == {
        "possible": "0-3",
        "present": "0-3",
        "online": "0-1",
        "offline": "2-3",
        "enabled": "0-1",
        "kernel": "6.1.0-57-cloud-amd64",
    }
    c.create_container("c1", ["sleep", "30"], cpuset_cpus="1", quota=50000, period=100000)
    cg = stack.os.root / CG / "c1"
    assert (cg / "cpu.max").read_text() == "50000 100000\n"
    assert (cg / "cpuset.cpus").read_text() == "1\n"
    pid = c.start_container("c1")
    assert c.read_file("/sys/fs/cgroup/c1/cgroup.procs") == f"{pid}\n"
    out = c.exec_process("c1", ["sh", "-c", "echo hi; exit 4"])
    assert out == {"exit_code": 4, "stdout": "hi\n", "stderr": ""}
    stats = c.stats_container("c1")
    assert stats["cpu"] == {"usage_usec": 10, "user_usec": 7, "system_usec": 3,
                            "nr_periods": 0, "nr_throttled": 0, "throttled_usec": 0}  # fmt: skip
    assert stats["cpuset_effective"] == "0-1"
    c.update_container("c1", quota=-1)
    assert (cg / "cpu.max").read_text() == "max 100000\n"
    with pytest.raises(ap.AgentError) as info:
        c.update_container("c1", cpuset_cpus="0-63")
    assert info.value.message == "write /sys/fs/cgroup/c1/cpuset.cpus: Invalid argument"
    stack.os.hot_add(3)
    stack.os.hot_add(2)
    assert c.online_cpu_mem(4) == [0, 1, 2, 3]
    assert stack.os.online_writes == [2, 3]  # numeric order
    assert (cg / "cpuset.cpus").read_text() == "0-3\n"
    assert c.offline_cpus(2) == [0, 1]
    assert stack.os.online_writes == [2, 3, 3, 2]  # highest first
    with pytest.raises(ap.AgentError) as info:
        c.exec_process("c1", ["no-such-program-cpuplug"])
    assert info.value.code is ap.ErrorCode.ENOENT
    c.remove_container("c1")  # kills the sleep
    assert not cg.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_refused_cpu_is_reported_with_linux_errno(stack: Stack) -> None:
    stack.agent.online_retries = 3
    stack.os.hot_add(2, allowed=False)
    with pytest.raises(ap.AgentError) as info:
        stack.client.online_cpu_mem(3)
    assert info.value.code is ap.ErrorCode.EPERM
    assert info.value.message == (
        "failed to online 1 CPU(s) after 3 retries; last error: cpu2: Operation not permitted"
    )


def test_a_long_exec_does_not_hold_up_an_update(stack: Stack) -> None:
    h = stack.host
    h.send(1, "CreateContainer", {"container_id": "c", "cmd": []})
    assert "result" in h.reply(1)
    h.send("exec", "ExecProcess", {"container_id": "c", "cmd": ["sleep", "1"]})
    h.send("upd", "UpdateContainer", {"container_id": "c", "resources": {"quota": 20000}})
    stack.os.hot_add(2)
    h.send("cpu", "OnlineCPUMem", {"nb_cpus": 3})
    first = [h.next()["id"] for _ in range(2)]
    assert sorted(first) == ["cpu", "upd"]  # answered while the exec still runs
    assert h.reply("exec", timeout=10)["result"]["exit_code"] == 0


def test_requests_beyond_the_in_flight_bound_get_ebusy_and_control_calls_still_run(
    tree: Path,
) -> None:
    s = Stack(tree, max_in_flight=6)  # at most 6 - CONTROL_RESERVE = 2 execs at once
    try:
        h = s.host
        h.send(1, "CreateContainer", {"container_id": "c", "cmd": []})
        assert "result" in h.reply(1)
        for i in range(3):
            h.send(f"x{i}", "ExecProcess", {"container_id": "c", "cmd": ["sleep", "0.5"]})
        h.send("gd", "GuestDetails", {})
        busy = h.reply("x2")
        assert busy["error"]["code"] == "EBUSY" and "reserved" in busy["error"]["message"]
        assert "result" in h.reply("gd")
        assert h.reply("x0")["result"]["exit_code"] == 0
        assert h.reply("x1")["result"]["exit_code"] == 0
    finally:
        s.close()


def test_broken_framing_is_skipped_and_frames_without_id_are_not_answered(stack: Stack) -> None:
    h = stack.host
    body = b'{"method": "GuestDetails"}'  # no id: whose error would it be?
    stack.host.sock.sendall(b"garbage" + struct.pack(">I", len(body)) + body)
    stack.host.sock.sendall(frame(7, "Reboot", {}) + frame(8, "GuestDetails", {}))
    assert h.next() == {"id": 7, "error": {"code": "ENOSYS", "message": "unknown method 'Reboot'"}}
    assert h.next()["id"] == 8


def test_events_from_uevents_once_per_session_however_often_subscribed(stack: Stack) -> None:
    h = stack.host
    for i in range(2):  # e.g. two proxy clients subscribed
        h.send(f"s{i}", "SubscribeEvents", {})
        assert h.next() == {"id": f"s{i}", "result": {}}
    stack.uevent("add", 2)
    stack.uevent("online", 2)
    got = [h.next() for _ in range(2)]
    assert [(m["event"], m["data"]) for m in got] == [
        ("CpuRegistered", {"cpu": 2}),
        ("CpuOnline", {"cpu": 2}),
    ]
    h.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        h.sock.recv(1)  # not twice


def test_uevent_parsing() -> None:
    fields = parse_uevent(
        b"offline@/devices/system/cpu/cpu12\0ACTION=offline\0DEVPATH=/devices/system/cpu/cpu12"
        b"\0SUBSYSTEM=cpu\0SEQNUM=2211\0"
    )
    assert fields is not None
    event = cpu_event(fields, 1.5)
    assert event is not None and (event.name, event.data) == ("CpuOffline", {"cpu": 12})
    assert parse_uevent(b"libudev\0\xfe\xed") is None
    other = parse_uevent(b"add@/devices/system/cpu/cpufreq\0ACTION=add\0SUBSYSTEM=cpu\0")
    assert other is not None and cpu_event(other, 0) is None
    block = parse_uevent(b"add@/devices/virtual/block/loop0\0ACTION=add\0SUBSYSTEM=block\0")
    assert block is not None and cpu_event(block, 0) is None


# ------------------------------------------------------------------ sessions on a pty


class _FdSock:
    """Just enough of a socket over a tty for ``ap.recv_message``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._timeout: float | None = None

    def gettimeout(self) -> float | None:
        return self._timeout

    def settimeout(self, t: float | None) -> None:
        self._timeout = t

    def recv(self, n: int) -> bytes:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.fd], [], [], remaining)[0]:
                raise TimeoutError
            try:
                return os.read(self.fd, n)
            except OSError as exc:  # a master whose slave is not open (yet): EIO
                if exc.errno != errno.EIO:
                    raise
                time.sleep(0.02)

    def sendall(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        os.close(self.fd)


def tty_socket(fd: int) -> socket.socket:
    return cast(socket.socket, _FdSock(fd))


@pytest.fixture
def pty_port(tree: Path) -> Iterator[str]:
    """The agent on a pty master, a port's stand-in that a host can leave and rejoin (EIO
    and POLLHUP while no slave is open, as EOF and POLLHUP on a port with no host); the
    slave's path is the host side."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    tty.setraw(slave)
    os.close(slave)
    channel = SerialChannel.from_fd(master, "pty")
    system = KernelTree(channel, root=tree, namespaces=False)
    agent = Agent(system).start()
    yield name
    agent.stop()
    system.close()
    channel.close()


def open_host(name: str) -> socket.socket:
    fd = os.open(name, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    return tty_socket(fd)


def leave_mid_request(name: str) -> None:
    """A host client that starts an exec, sends half a frame and leaves."""
    first = open_host(name)
    first.sendall(frame(1, "CreateContainer", {"container_id": "c", "cmd": []}))
    assert ap.recv_message(first, 10) == {"id": 1, "result": {}}
    first.sendall(frame(2, "ExecProcess", {"container_id": "c", "cmd": ["sleep", "0.5"]}))
    first.sendall(frame(3, "ReadFile", {"path": "/proc/version"})[:9])
    time.sleep(0.1)
    first.close()


def test_a_late_reply_of_a_session_that_ended_is_dropped(pty_port: str) -> None:
    leave_mid_request(pty_port)
    time.sleep(0.5)  # the agent sees the hang-up (POLLHUP wakes its reader at once)
    second = open_host(pty_port)
    try:
        second.sendall(frame(4, "GuestDetails", {}))
        assert ap.recv_message(second, 10)["id"] == 4
        time.sleep(1.0)  # the exec of the first session ends meanwhile
        second.sendall(frame(5, "GuestDetails", {}))
        assert ap.recv_message(second, 10)["id"] == 5  # not 2
    finally:
        second.close()


def test_a_client_that_reconnects_at_once_may_see_the_last_ones_replies(pty_port: str) -> None:
    """Nothing on the port tells two host clients apart: if the next one connects before
    the agent read the hang-up, the session goes on. Its torn frame is skipped, its
    late replies may reach the newcomer: a host must ignore ids it did not send."""
    leave_mid_request(pty_port)
    second = open_host(pty_port)
    try:
        second.sendall(frame(4, "GuestDetails", {}))
        time.sleep(1.0)
        second.sendall(frame(5, "GuestDetails", {}))
        ids = []
        while 5 not in ids:
            ids.append(ap.recv_message(second, 10)["id"])
        assert sorted(ids) in ([4, 5], [2, 4, 5])
    finally:
        second.close()


# ------------------------------------------------------------------ the entry point


def test_find_and_wait_for_the_port(tree: Path) -> None:
    assert find_port("cpuplug.agent", tree) is None
    ports = tree / "sys/class/virtio-ports"
    for port, pname in (("vport1p1", "org.qemu.guest_agent.0"), ("vport2p1", "cpuplug.agent")):
        (ports / port).mkdir(parents=True)
        (ports / port / "name").write_text(pname + "\n")
    (tree / "dev").mkdir()
    assert find_port("cpuplug.agent", tree) == tree / "dev/vport2p1"
    assert wait_for_port("cpuplug.agent", tree, 0.1) is None  # no device node yet
    threading.Timer(0.1, (tree / "dev/vport2p1").touch).start()
    assert wait_for_port("cpuplug.agent", tree, 5) == tree / "dev/vport2p1"


def test_enable_controllers_writes_each_and_reports_what_failed(tree: Path) -> None:
    assert enable_controllers(tree) == []
    assert (tree / CG / "cgroup.subtree_control").read_text() == "+cpuset"  # the last write
    (tree / CG / "cgroup.subtree_control").unlink()
    problems = enable_controllers(tree)
    assert [p.split(":")[0] for p in problems] == [
        "cannot enable the cpu controller",
        "cannot enable the cpuset controller",
    ]


def test_linux_agent_main_serves_on_a_port_and_stops_on_sigterm(tree: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    port = os.ttyname(slave)
    os.close(slave)
    os.set_blocking(master, True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpuplug.guest.linux_agent", "--root", str(tree),
         "--port", port, "--no-namespaces", "--no-events"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    host = tty_socket(master)
    try:
        host.sendall(frame("hello", "GuestDetails", {}))
        reply = ap.recv_message(host, 30)
        assert reply["id"] == "hello" and reply["result"]["online"] == "0-1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
        assert f"cpuplug-agent: serving the agent protocol on {port} (cpuplug.agent)" in log
        assert "SIGTERM: stopping" in log
        assert str(tree) not in Path("/proc/self/mountinfo").read_text()  # nothing mounted
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        host.close()


# ------------------------------------------------------------------ namespaces (root, cgroup v2)


def _cgroup_v2_with_cpu() -> str | None:
    """Why the namespace test cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root"
    controllers = Path("/sys/fs/cgroup/cgroup.controllers")
    if not controllers.exists():
        return "needs a cgroup v2 host (/sys/fs/cgroup is cgroup v1 or hybrid here)"
    if not {"cpu", "cpuset"} <= set(controllers.read_text().split()):
        return "needs the cpu and cpuset controllers in cgroup v2"
    return None


@pytest.mark.skipif(_cgroup_v2_with_cpu() is not None, reason=str(_cgroup_v2_with_cpu()))
def test_container_sees_its_own_cgroup_as_the_root() -> None:
    """The init unshares cgroup + mount namespaces and mounts cgroup2 again, so inside
    the container /sys/fs/cgroup is its own cgroup; an exec joins those namespaces."""
    system = LinuxOS(NoChannel(), namespaces=True)
    cid = f"cpuplug-test-{os.getpid()}"
    system.create_cgroup(cid)
    try:
        system.write_cgroup(cid, "cpu.max", "50000 100000\n")
        init = system.spawn(cid, ["sleep", "30"], init=True)
        script = "cat /sys/fs/cgroup/cpu.max /proc/self/cgroup /sys/fs/cgroup/cgroup.procs"
        proc = system.spawn(cid, ["sh", "-c", script], init=False)
        assert proc.wait(10) and proc.exit_code == 0, proc.output()
        lines = proc.output()[0].splitlines()
        assert lines[0] == "50000 100000"
        assert "0::/" in lines  # its cgroup is the root of its cgroup namespace
        assert {str(init.pid), str(proc.pid)} <= set(lines)  # the namespace root's procs
        for kind in ("cgroup", "mnt"):
            assert os.readlink(f"/proc/{init.pid}/ns/{kind}") != os.readlink(
                f"/proc/self/ns/{kind}"
            )
    finally:
        system.kill_cgroup(cid, signal.SIGKILL)
        system.wait_cgroup_empty(cid, 5)
        system.remove_cgroup(cid)
        system.close()


REAPER_SCRIPT = """
import ctypes, os, sys, threading, time
from cpuplug.guest import linux_process
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us, as to PID 1
procs = sys.argv[1]
children = linux_process.Children()
stop = threading.Event()
threading.Thread(target=children.reap_orphans, args=(stop,), daemon=True).start()
exits = []
for _ in range(20):
    proc = linux_process.spawn(
        ["sh", "-c", "sleep 0.05 & exit 7"], cid="c", cgroup_procs=procs,
        cgroup_guest_path="/sys/fs/cgroup/c", namespaces=None, capture=True, children=children,
    )
    proc.wait(10)
    exits.append(proc.exit_code)
time.sleep(0.5)
zombies = [p for p in os.listdir("/proc") if p.isdigit() and
           open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[:2] == ["Z", str(os.getpid())]]
print(exits.count(7), len(zombies))
"""


def test_a_pid_1_reaps_orphans_without_taking_its_own_childrens_status(tmp_path: Path) -> None:
    """Run as a subreaper in a process of its own (so no test's orphans come to pytest)."""
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    out = subprocess.run(
        [sys.executable, "-c", REAPER_SCRIPT, str(procs)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert out.split() == ["20", "0"]  # every exit status kept, every orphan reaped

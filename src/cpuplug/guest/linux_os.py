"""A real Linux guest as the agent's operating system (an ``AgentOS``).

What the agent asks for, done the way Linux offers it (Debian's 6.1 kernel in the
runtime's image; nothing here needs more than 5.3):

* CPUs: the masks under ``/sys/devices/system/cpu`` and ``cpuN/online``. Kernels
  before 6.11 have no ``enabled`` mask; there it is the CPUs that have a ``cpuN``
  directory (registered), which is what ``enabled`` means for a hot-added CPU.
* Container cgroups: ``/sys/fs/cgroup/<id>`` of a cgroup2 mount whose root has
  ``+cpu +cpuset`` in ``cgroup.subtree_control`` (:mod:`cpuplug.guest.linux_agent`
  sets that up at boot), with its ``cpu.max``, ``cpuset.cpus``, ``cpu.stat``,
  ``cpuset.cpus.effective``, ``cgroup.procs`` and ``cgroup.kill`` files. Each file is
  written in one ``write()``, as ``echo VALUE > FILE`` does.
* Processes: forked into the container's cgroup and, with ``namespaces`` on (the
  default), a cgroup and a mount namespace of their own (:mod:`cpuplug.guest.linux_process`);
  a streamed one with pipes or a terminal the agent relays (:mod:`cpuplug.guest.linux_stdio`).
* ``ReadFile``: any file of the guest, up to :data:`READ_LIMIT` bytes.
* Events: the kernel's CPU uevents (:mod:`cpuplug.guest.linux_uevents`).
* The channel: given by the caller, normally the virtio-serial port
  (:mod:`cpuplug.guest.virtio_serial`).

Every path is taken under ``root`` (default ``/``), so tests run it against a tree of
real files in a temporary directory. Such a tree is not a cgroup2 mount: ``cgroup.procs``
there is a plain file that lists what was written to it, so on it the members of a
container that get signalled and waited for are only the processes the agent itself
started, never pids read from the file (checked once, from ``/proc/self/mountinfo``).

Errors carry the guest path (``/sys/fs/cgroup/c1/cpu.max``, not ``ROOT/sys/...``) and
Linux's errno, like the model's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from cpuplug.agent_protocol import parse_cpu_list
from cpuplug.guest import linux_process
from cpuplug.guest.agent_os import AgentChannel, CpuMask, OSEvent, ProcessIO
from cpuplug.guest.linux_process import (
    CONTAINER_ENV,
    Children,
    JoinNamespaces,
    LinuxProcess,
    NewNamespaces,
)
from cpuplug.guest.linux_stdio import LinuxStreams, Pipes, Terminal, close_all, close_child_ends
from cpuplug.guest.linux_uevents import UeventMonitor
from cpuplug.guest.vfs import GuestOSError

__all__ = ["READ_LIMIT", "LinuxError", "LinuxOS"]

SYS_CPU = "/sys/devices/system/cpu"
SYS_BLOCK = "/sys/block"
CGROUP_ROOT = "/sys/fs/cgroup"
ROOTFS_DIR = "/run/cpuplug/rootfs"
"""Where containers' own root filesystems are mounted (``<dir>/<container id>``)."""
READ_LIMIT = 256 * 1024
"""Largest file ``ReadFile`` returns, in bytes (sysfs, cgroupfs and /proc files are small;
``/dev/zero`` is endless)."""
EMPTY_POLL = 0.01
_CPU_DIR = re.compile(r"cpu([0-9]+)")


class LinuxError(GuestOSError):
    """A failed system call, as ``GuestOSError``: the C library's wording for errnos
    the model's table does not know."""

    def __init__(self, err: int, path: str = "") -> None:
        super().__init__(err, path)
        if self.strerror.startswith("Unknown error"):
            self.strerror = os.strerror(err)
            Exception.__init__(self, f"{path}: {self.strerror}" if path else self.strerror)


def _failed(exc: OSError, guest_path: str) -> LinuxError:
    return LinuxError(exc.errno or errno.EIO, guest_path)


def _executable_in(root: str, path: str, depth: int = 40) -> bool:
    """Whether ``path``, seen from a process whose root is ``root``, is an executable
    file: symbolic links are followed inside ``root`` (busybox's applet links point to
    ``/bin/busybox``, which means the container's, not the agent's)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    while parts and depth > 0:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        here = os.path.join(root, *resolved, part)
        try:
            target = os.readlink(here)
        except OSError:
            resolved.append(part)
            continue
        depth -= 1
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    if parts:
        return False  # a loop of links
    final = os.path.join(root, *resolved)
    return os.path.isfile(final) and os.access(final, os.X_OK)


def is_cgroup2_mount(path: Path, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether ``path`` is where a cgroup2 file system is mounted."""
    target = os.path.realpath(path)
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype = line.split(" - ", 1)[1].split()[0]
        mount_point = fields[4].encode().decode("unicode_escape")  # \040 for a space ...
        if fstype == "cgroup2" and mount_point == target:
            return True
    return False


class LinuxOS:
    """:class:`~cpuplug.guest.agent_os.AgentOS` on a real Linux (see the module doc).

    ``namespaces=False`` leaves processes in the agent's namespaces (tests, which run
    unprivileged steps only); ``reap_orphans`` is for an agent that is the guest's
    PID 1; ``events`` is where CPU events come from (None: none are sent).
    """

    def __init__(
        self,
        channel: AgentChannel,
        *,
        root: str | Path = "/",
        namespaces: bool = True,
        reap_orphans: bool = False,
        events: UeventMonitor | None = None,
        log: TextIO | None = None,
    ) -> None:
        self._channel = channel
        self.root = Path(root)
        self.namespaces = namespaces
        self._events = events
        self._log = log
        self._children = Children()
        self._inits: dict[str, LinuxProcess] = {}
        self._cgroup_root = self._host(CGROUP_ROOT)
        self.real_cgroupfs = is_cgroup2_mount(self._cgroup_root)
        self._stop = threading.Event()
        if reap_orphans:
            threading.Thread(
                target=self._children.reap_orphans,
                args=(self._stop,),
                name="agent-reaper",
                daemon=True,
            ).start()

    @property
    def channel(self) -> AgentChannel:
        return self._channel

    def log(self, text: str) -> None:
        stream = self._log if self._log is not None else sys.stderr
        with contextlib.suppress(OSError, ValueError):
            print(f"cpuplug-agent: {text}", file=stream, flush=True)

    def close(self) -> None:
        """Stop the helper threads (the reaper ends at its next wake-up)."""
        self._stop.set()
        if self._events is not None:
            self._events.close()

    # ------------------------------------------------------------------ files

    def _host(self, guest_path: str) -> Path:
        return self.root / guest_path.lstrip("/")

    def _read(self, guest_path: str, limit: int = READ_LIMIT) -> str:
        try:
            with open(self._host(guest_path), "rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise _failed(exc, guest_path) from None
        if len(data) > limit:
            raise LinuxError(errno.EFBIG, guest_path)
        return data.decode("utf-8", "replace")

    def _write(self, guest_path: str, data: str) -> None:
        """One ``write()`` of ``data``, as ``echo DATA > FILE`` (O_TRUNC is ignored by sysfs)."""
        try:
            fd = os.open(self._host(guest_path), os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        except OSError as exc:
            raise _failed(exc, guest_path) from None
        try:
            os.write(fd, data.encode())
        except OSError as exc:
            raise _failed(exc, guest_path) from None
        finally:
            os.close(fd)

    def read_file(self, path: str) -> str:
        return self._read(path)

    # ------------------------------------------------------------------ CPUs

    def _cpu_dirs(self) -> dict[int, Path]:
        try:
            entries = list(self._host(SYS_CPU).iterdir())
        except OSError as exc:
            raise _failed(exc, SYS_CPU) from None
        found = {}
        for entry in entries:
            m = _CPU_DIR.fullmatch(entry.name)
            if m is not None:
                found[int(m.group(1))] = entry
        return dict(sorted(found.items()))

    def cpus(self, mask: CpuMask) -> frozenset[int]:
        try:
            return parse_cpu_list(self._read(f"{SYS_CPU}/{mask}"))
        except GuestOSError as exc:
            if mask != "enabled" or exc.errno != errno.ENOENT:
                raise
            return frozenset(self._cpu_dirs())  # before 6.11: registered = enabled

    def hotpluggable_cpus(self) -> dict[int, bool]:
        found: dict[int, bool] = {}
        for cpu in self._cpu_dirs():
            try:
                found[cpu] = self._read(f"{SYS_CPU}/cpu{cpu}/online").strip() == "1"
            except GuestOSError:
                continue  # unregistered meanwhile, or no online file (x86's CPU 0)
        return found

    def set_cpu_online(self, cpu: int, online: bool) -> None:
        self._write(f"{SYS_CPU}/cpu{cpu}/online", "1" if online else "0")

    # ------------------------------------------------------------------ cgroups

    def cgroup_path(self, cid: str) -> str:
        return f"{CGROUP_ROOT}/{cid}"

    def create_cgroup(self, cid: str) -> None:
        try:
            self._host(self.cgroup_path(cid)).mkdir()
        except OSError as exc:
            raise _failed(exc, self.cgroup_path(cid)) from None

    def remove_cgroup(self, cid: str) -> None:
        try:
            self._host(self.cgroup_path(cid)).rmdir()
        except OSError as exc:
            raise _failed(exc, self.cgroup_path(cid)) from None
        self._inits.pop(cid, None)

    def read_cgroup(self, cid: str, name: str) -> str:
        return self._read(f"{self.cgroup_path(cid)}/{name}")

    def write_cgroup(self, cid: str, name: str, data: str) -> None:
        self._write(f"{self.cgroup_path(cid)}/{name}", data)

    def cgroup_pids(self, cid: str) -> list[int]:
        text = self.read_cgroup(cid, "cgroup.procs")
        return [int(line) for line in text.split() if line.isascii() and line.isdigit()]

    def _members(self, cid: str) -> set[int]:
        """Live processes of the container that may be signalled (see the module doc)."""
        own = {p.pid for p in self._children.of_container(cid) if not p.poll()}
        if not self.real_cgroupfs:
            return own
        try:
            return own | {pid for pid in self.cgroup_pids(cid) if pid > 1}
        except GuestOSError:
            return own

    def kill_cgroup(self, cid: str, signal_number: int) -> None:
        if self.real_cgroupfs and signal_number == signal.SIGKILL:
            with contextlib.suppress(GuestOSError):  # 5.14+: also catches forks in flight
                self.write_cgroup(cid, "cgroup.kill", "1")
        for proc in self._children.of_container(cid):
            proc.kill(signal_number)
        for pid in self._members(cid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal_number)

    def wait_cgroup_empty(self, cid: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._members(cid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(EMPTY_POLL)
        return True

    # ------------------------------------------------------------------ processes

    def spawn(self, cid: str, argv: Sequence[str], *, init: bool) -> LinuxProcess:
        return self._start(cid, argv, init=init, capture=not init)

    def spawn_streamed(
        self, cid: str, argv: Sequence[str], *, init: bool, io: ProcessIO
    ) -> LinuxStreams:
        ends = Terminal() if io.terminal else Pipes()
        try:
            proc = self._start(cid, argv, init=init, capture=False, stdio=ends.child, io=io)
        except BaseException:
            close_all(ends)
            raise
        close_child_ends(ends)
        return LinuxStreams(proc, ends)

    def _start(
        self,
        cid: str,
        argv: Sequence[str],
        *,
        init: bool,
        capture: bool,
        stdio: tuple[int, int, int] | None = None,
        io: ProcessIO | None = None,
    ) -> LinuxProcess:
        """Start ``argv`` in the container: an init in namespaces of its own, anything
        else in the init's while it lives (see the module doc)."""
        group = self.cgroup_path(cid)
        if not self._host(group).is_dir():
            raise LinuxError(errno.ENOENT, group)
        init_proc = None if init else self._inits.get(cid)
        if init_proc is not None and init_proc.poll():
            init_proc = None
        fresh = NewNamespaces(str(self._cgroup_root))
        namespaces: linux_process.Namespaces = None
        if self.namespaces:
            namespaces = fresh if init_proc is None else JoinNamespaces(init_proc.pid)
        try:
            proc = self._spawn(cid, argv, namespaces, capture=capture, stdio=stdio, io=io)
        except GuestOSError as exc:
            if not isinstance(namespaces, JoinNamespaces) or not exc.path.startswith("/proc/"):
                raise
            # the init ended meanwhile
            proc = self._spawn(cid, argv, fresh, capture=capture, stdio=stdio, io=io)
        if init:
            self._inits[cid] = proc
        return proc

    def _spawn(
        self,
        cid: str,
        argv: Sequence[str],
        namespaces: linux_process.Namespaces,
        *,
        capture: bool,
        stdio: tuple[int, int, int] | None = None,
        io: ProcessIO | None = None,
    ) -> LinuxProcess:
        group = self.cgroup_path(cid)
        env = CONTAINER_ENV
        if io is not None and io.env is not None:
            env = dict(e.split("=", 1) for e in io.env if "=" in e)
        return linux_process.spawn(
            argv,
            cid=cid,
            cgroup_procs=str(self._host(f"{group}/cgroup.procs")),
            cgroup_guest_path=group,
            namespaces=namespaces,
            capture=capture,
            children=self._children,
            env=env,
            stdio=stdio,
            cwd=(io.cwd if io is not None and io.cwd else "/"),
            controlling_terminal=io is not None and io.terminal,
            root=io.root if io is not None else None,
        )

    def find_program(self, argv0: str, io: ProcessIO) -> bool:
        root = io.root or "/"  # (``self.root`` only prefixes sysfs and cgroupfs paths)
        env = dict(e.split("=", 1) for e in io.env or () if "=" in e) or CONTAINER_ENV
        if "/" in argv0:
            candidates = [argv0 if argv0.startswith("/") else f"{io.cwd or '/'}/{argv0}"]
        else:
            candidates = [f"{d or '.'}/{argv0}" for d in env.get("PATH", "").split(":")]
        return any(_executable_in(root, path) for path in candidates)

    # ------------------------------------------------------------------ root filesystems

    def _disk(self, serial: str) -> str:
        """``/dev/NAME`` of the block device whose ``serial`` is ``serial``."""
        try:
            disks = sorted(self._host(SYS_BLOCK).iterdir())
        except OSError as exc:
            raise _failed(exc, SYS_BLOCK) from None
        for disk in disks:
            with contextlib.suppress(OSError):
                if (disk / "serial").read_text().strip() == serial:
                    return f"/dev/{disk.name}"
        raise LinuxError(errno.ENODEV, f"block device with serial {serial}")

    def mount_rootfs(self, cid: str, disk_serial: str) -> str:
        """Mount the container's ext4 root filesystem; the path its processes are
        chrooted to (the guest path, under ``root``)."""
        device = self._disk(disk_serial)
        target = self._host(f"{ROOTFS_DIR}/{cid}")
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _failed(exc, f"{ROOTFS_DIR}/{cid}") from None
        try:
            linux_process.mount(str(self._host(device)), str(target), "ext4")
        except OSError as exc:
            with contextlib.suppress(OSError):
                target.rmdir()
            raise _failed(exc, device) from None
        return str(target)

    def unmount_rootfs(self, cid: str) -> None:
        target = self._host(f"{ROOTFS_DIR}/{cid}")
        with contextlib.suppress(OSError):
            linux_process.unmount(str(target))
        with contextlib.suppress(OSError):
            target.rmdir()

    # ------------------------------------------------------------------ events

    def subscribe_events(self, callback: Callable[[OSEvent], None]) -> Callable[[], None]:
        if self._events is None:
            return lambda: None
        return self._events.subscribe(callback)

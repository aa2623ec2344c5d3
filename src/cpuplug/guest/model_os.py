"""The guest kernel model as the agent's operating system (an ``AgentOS``).

The model kernel (``kernel.py``, or the tests' fake kernel) offers what a guest process
sees: the file tree (``kernel.vfs``), the cgroup tree, the scheduler that runs
userland programs as tasks, the kernel's event stream, and the machine's agent
channel. :class:`ModelOS` states the agent's needs in those terms and nothing more:
CPUs are switched by writing ``cpuN/online``, resources go through the cgroup files,
programs are :func:`cpuplug.guest.userland.spawn`\\ ed as tasks in the container's
cgroup. So the agent still reaches the model only the way a guest process would.

A container's init and every exec in it run in the container's cgroup with the
container's cgroup as their cgroup-namespace root, so inside ``/sys/fs/cgroup`` is the
container's own cgroup, as the real-Linux agent arranges with ``unshare``/``setns``
(:mod:`cpuplug.guest.cgroup`). Otherwise ``init`` and exec'd programs run alike, and
a task's output is always captured (nobody reads the init's).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from cpuplug.agent_protocol import parse_cpu_list
from cpuplug.guest import agent_os
from cpuplug.guest.agent_os import CpuMask, OSEvent, OutputChunk, ProcessIO
from cpuplug.guest.cgroup import CGROUP_ROOT
from cpuplug.guest.klog import KernelEvent
from cpuplug.guest.userland import (
    PROGRAMS,
    Os,
    Pipe,
    Process,
    ProgramNotFound,
    deliver,
    spawn,
)
from cpuplug.hw import AgentChannel, Stream

__all__ = ["BootedKernel", "ModelKernel", "ModelOS"]

SYS_CPU = "/sys/devices/system/cpu"
STREAM_POLL = 0.02
"""How often a streamed read looks whether its task ended (seconds)."""


class EventSource(Protocol):
    def subscribe(self, cb: Callable[[KernelEvent], None]) -> Callable[[], None]: ...


class ModelKernel(Os, Protocol):
    """What the model kernel object gives (``GuestKernel``, the tests' ``FakeKernel``):
    what programs need (``vfs``, ``sched``, ``cgroups``) and the event stream."""

    @property
    def events(self) -> EventSource: ...


class _HasChannel(Protocol):
    @property
    def agent_channel(self) -> AgentChannel: ...


class BootedKernel(ModelKernel, Protocol):
    """A model kernel booted on a machine: the agent serves that machine's channel."""

    @property
    def machine(self) -> _HasChannel: ...


class _Connections:
    """The machine's channel: a connection per host client (``one_stream`` False)."""

    one_stream = False

    def __init__(self, channel: AgentChannel) -> None:
        self._channel = channel

    def accept(self, timeout: float | None) -> Stream | None:
        return self._channel.accept(timeout)


class _Task:
    """A userland :class:`~cpuplug.guest.userland.Process` as an ``AgentProcess``."""

    def __init__(self, process: Process) -> None:
        self._p = process

    @property
    def pid(self) -> int:
        return self._p.pid

    @property
    def exit_code(self) -> int | None:
        return self._p.exit_code

    def wait(self, timeout: float | None) -> bool:
        return self._p.wait(timeout)

    def kill(self, signal: int) -> None:
        self._p.kill(signal)

    def output(self) -> tuple[str, str]:
        return self._p.stdout.getvalue(), self._p.stderr.getvalue()


class _StreamedTask(_Task):
    """A task whose output the agent reads piecewise (an ``agent_os.StreamedProcess``).

    The model's programs read no input while they run (``cat`` takes its stdin whole
    at the start), so what the host writes to stdin is accepted and dropped; there is
    no window size to set either.
    """

    def __init__(self, process: Process, out: Pipe, err: Pipe) -> None:
        super().__init__(process)
        self._out = out
        self._err = err

    def read_output(self, limit: int, timeout: float) -> OutputChunk:
        deadline = time.monotonic() + timeout
        while True:
            ended = self._p.exit_code  # before taking: a task that ended writes no more
            out = self._out.take(limit)
            err = self._err.take(limit) if self._err is not self._out else b""
            drained = not self._out.wait(0) and not self._err.wait(0)
            if out or err or ended is not None or time.monotonic() >= deadline:
                return OutputChunk(out, err, ended if drained else None)
            # a task's end wakes no condition of the pipe: look again every 20 ms
            self._out.wait(min(STREAM_POLL, max(0.0, deadline - time.monotonic())))

    def write_input(self, data: bytes, timeout: float) -> int:
        del timeout
        return len(data)

    def close_input(self) -> None:
        pass

    def signal(self, signal: int) -> None:
        deliver(self._p.task, signal)

    def resize(self, rows: int, cols: int) -> None:
        pass

    def close(self) -> None:
        pass


class ModelOS:
    """:class:`AgentOS` over a model kernel and the machine's agent channel."""

    def __init__(self, kernel: ModelKernel, channel: AgentChannel) -> None:
        self.kernel = kernel
        self._channel = _Connections(channel)

    @property
    def channel(self) -> _Connections:
        return self._channel

    def log(self, text: str) -> None:
        log = getattr(self.kernel, "log", None)  # the fake kernel has none
        if log is not None:
            log.info(text)

    # ------------------------------------------------------------------ CPUs

    def cpus(self, mask: CpuMask) -> frozenset[int]:
        return parse_cpu_list(self.kernel.vfs.read(f"{SYS_CPU}/{mask}"))

    def hotpluggable_cpus(self) -> dict[int, bool]:
        vfs = self.kernel.vfs
        found: dict[int, bool] = {}
        for name in vfs.listdir(SYS_CPU):
            if not (name.startswith("cpu") and name[3:].isascii() and name[3:].isdigit()):
                continue
            try:
                found[int(name[3:])] = vfs.read(f"{SYS_CPU}/{name}/online").strip() == "1"
            except agent_os.GuestOSError:
                continue  # unregistered meanwhile, or no online file (not hotpluggable)
        return dict(sorted(found.items()))

    def set_cpu_online(self, cpu: int, online: bool) -> None:
        self.kernel.vfs.write(f"{SYS_CPU}/cpu{cpu}/online", "1" if online else "0")

    # ------------------------------------------------------------------ cgroups

    def cgroup_path(self, cid: str) -> str:
        return f"{CGROUP_ROOT}/{cid}"

    def create_cgroup(self, cid: str) -> None:
        self.kernel.cgroups.create(cid)

    def remove_cgroup(self, cid: str) -> None:
        self.kernel.cgroups.remove(self.cgroup_path(cid))

    def read_cgroup(self, cid: str, name: str) -> str:
        return self.kernel.vfs.read(f"{self.cgroup_path(cid)}/{name}")

    def write_cgroup(self, cid: str, name: str, data: str) -> None:
        self.kernel.vfs.write(f"{self.cgroup_path(cid)}/{name}", data)

    def cgroup_pids(self, cid: str) -> list[int]:
        return sorted(t.pid for t in self.kernel.cgroups.get(cid).tasks())

    def kill_cgroup(self, cid: str, signal: int) -> None:
        for task in self.kernel.cgroups.get(cid).tasks():
            deliver(task, signal)  # ends at its next slice boundary, unless ignored

    def wait_cgroup_empty(self, cid: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for task in self.kernel.cgroups.get(cid).tasks():
            task.wait(max(0.0, deadline - time.monotonic()))
        return not self.kernel.cgroups.get(cid).tasks()

    # ------------------------------------------------------------------ processes

    def spawn(self, cid: str, argv: Sequence[str], *, init: bool) -> _Task:
        # The init and every exec share the container's namespace root, the container's
        # cgroup (Linux: the init unshares there, an exec joins it or unshares there too).
        del init
        group = self.kernel.cgroups.get(cid)
        try:
            return _Task(spawn(self.kernel, argv, group, cgroup_ns=group))
        except ProgramNotFound as exc:
            raise agent_os.ProgramNotFound(exc.path) from None

    def spawn_streamed(
        self, cid: str, argv: Sequence[str], *, init: bool, io: ProcessIO
    ) -> _StreamedTask:
        del init
        group = self.kernel.cgroups.get(cid)
        if io.terminal:
            out = err = Pipe(terminal=True)
        else:
            out, err = Pipe(), Pipe()
        try:
            process = spawn(
                self.kernel,
                argv,
                group,
                cgroup_ns=group,
                stdout=out,
                stderr=err,
                cwd=io.cwd or "/",
            )
        except ProgramNotFound as exc:
            raise agent_os.ProgramNotFound(exc.path) from None
        return _StreamedTask(process, out, err)

    def find_program(self, argv0: str, io: ProcessIO) -> bool:
        del io
        return argv0.rpartition("/")[2] in PROGRAMS

    def mount_rootfs(self, cid: str, disk_serial: str) -> str:
        del cid
        raise agent_os.GuestOSError(errno.ENODEV, f"block device {disk_serial}")

    def unmount_rootfs(self, cid: str) -> None:
        pass

    # ------------------------------------------------------------------ files, events

    def read_file(self, path: str) -> str:
        return self.kernel.vfs.read(path)

    def subscribe_events(self, callback: Callable[[OSEvent], None]) -> Callable[[], None]:
        return self.kernel.events.subscribe(callback)

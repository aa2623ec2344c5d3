"""The agent's operating system: everything the guest agent asks of the OS it runs on.

The agent (:mod:`cpuplug.guest.agent`) speaks the agent protocol and keeps Kata's
rules (``OnlineCPUMem``'s bounded retries in numeric order, resources checked before
they are written, a container's cgroup removed when its creation fails ...). What it
needs from the operating system underneath is this one port, :class:`AgentOS`, so
that the same agent runs on two systems:

* :class:`cpuplug.guest.model_os.ModelOS` — this project's guest kernel model
  (``vfs``, ``cgroups``, ``sched``, the machine's agent channel);
* :class:`cpuplug.guest.linux_os.LinuxOS` — a real Linux guest: ``/sys/devices/system/cpu``,
  cgroup v2 under ``/sys/fs/cgroup``, real processes, a virtio-serial port.

The port is written in the agent's terms (a container id, a CPU number, a CPU mask's
name), not in paths, so each system keeps its own layout; the only paths that cross
it are the guest paths that go into error messages and ``ReadFile``.

Errors
------
Every method fails with :class:`~cpuplug.guest.vfs.GuestOSError` carrying Linux's
errno and the guest path concerned (``str()`` is ``"PATH: MESSAGE"``), which the
agent turns into the protocol's error code and message. Both systems word their
failures the same way, so a client cannot tell them apart by their errors.
``spawn`` raises :class:`ProgramNotFound` when ``argv[0]`` names no program.

This module imports nothing but the errno carrier and the hardware interface's
``Stream``: the real-Linux guest image ships it with the agent and no model.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cpuplug.guest.vfs import GuestOSError
from cpuplug.hw import Stream

__all__ = [
    "AgentChannel",
    "AgentOS",
    "AgentProcess",
    "CpuMask",
    "GuestOSError",
    "OSEvent",
    "OutputChunk",
    "ProcessIO",
    "ProgramNotFound",
    "StreamedProcess",
]

CpuMask = Literal["possible", "present", "online", "offline", "enabled"]
"""The CPU masks Linux lists under ``/sys/devices/system/cpu``."""


class ProgramNotFound(GuestOSError):
    """``argv[0]`` names no program (exec's ENOENT); ``path`` is ``argv[0]``."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.ENOENT, name)


class OSEvent(Protocol):
    """A CPU hotplug event, named as the agent protocol's events (``CpuOnline`` ...)."""

    @property
    def name(self) -> str: ...

    @property
    def data(self) -> Mapping[str, Any]: ...

    @property
    def timestamp(self) -> float: ...


class AgentChannel(Protocol):
    """Where the host's requests come from: host connections as ``hw.Stream`` objects.

    ``one_stream`` tells the agent which kind of transport it is serving, because the
    two need different rules:

    * ``False`` — connection-oriented (virtio-vsock, the built-in machine's channel):
      any number of host connections at once, each closed on its own; a connection
      whose framing breaks is closed, requests of one connection are answered in order.
    * ``True`` — one byte stream shared by every host client (virtio-serial): at most
      one stream at a time (``accept`` returns the next host *session* once the
      previous one ended), requests are answered out of order by id, and broken
      framing is skipped over instead of closing anything (docs/agent-protocol.md,
      "One stream").
    """

    @property
    def one_stream(self) -> bool: ...

    def accept(self, timeout: float | None) -> Stream | None:
        """The next host connection (or session), ``None`` if ``timeout`` expired."""
        ...


class AgentProcess(Protocol):
    """A process the agent started: a container's init or an exec'd program."""

    @property
    def pid(self) -> int: ...

    @property
    def exit_code(self) -> int | None:
        """``None`` while it runs; ``128 + N`` when signal ``N`` ended it (the shell's way)."""
        ...

    def wait(self, timeout: float | None) -> bool:
        """Block until it ended (True) or ``timeout`` passed (False)."""
        ...

    def kill(self, signal: int) -> None:
        """Send ``signal`` (to its process group where the OS has one); never waits."""
        ...

    def output(self) -> tuple[str, str]:
        """What it wrote to stdout and stderr so far, each bounded (exec'd programs only;
        a container's init writes to the guest console and returns ``("", "")``)."""
        ...


@dataclass(frozen=True)
class ProcessIO:
    """How a process whose stdio the host streams is started (``StartProcess``,
    ``CreateContainer`` with ``streams``)."""

    env: tuple[str, ...] | None = None
    """``KEY=VALUE`` strings; None: the system's default container environment."""
    cwd: str | None = None
    """Working directory (absolute); None: ``/``."""
    terminal: bool = False
    """One terminal for stdin, stdout and stderr instead of three pipes."""
    root: str | None = None
    """The container's root filesystem (:meth:`AgentOS.mount_rootfs`'s path): the
    process sees it as ``/``, with ``/proc``, ``/sys``, ``/dev`` and its own cgroup on
    ``/sys/fs/cgroup`` in it. None: the guest's own root."""


@dataclass(frozen=True)
class OutputChunk:
    """What one :meth:`StreamedProcess.read_output` got."""

    stdout: bytes
    stderr: bytes
    """Empty with a terminal: the terminal is one stream, reported as stdout."""
    exit_code: int | None
    """Set once the process ended *and* everything it wrote has been returned (this
    chunk included): the host has the whole output and may stop reading."""


class StreamedProcess(AgentProcess, Protocol):
    """A process whose stdin, stdout and stderr (or terminal) the agent relays to the
    host piecewise: the container init of a ``streams`` container, or an exec.

    Output waits in the OS (a pipe, a terminal, the model's bounded buffer) until the
    host reads it, so nothing is lost between the start and the host's first read.
    """

    def read_output(self, limit: int, timeout: float) -> OutputChunk:
        """Up to ``limit`` bytes of each stream, as soon as there are any, the process
        ended, or ``timeout`` passed (then both are empty)."""
        ...

    def write_input(self, data: bytes, timeout: float) -> int:
        """Write to its stdin (or terminal); how many bytes went in within ``timeout``."""
        ...

    def close_input(self) -> None:
        """End of its input: close the stdin pipe (a terminal gets its EOF character)."""
        ...

    def signal(self, signal: int) -> None:
        """Send ``signal`` to this process alone (runc's ``kill`` without ``--all``)."""
        ...

    def resize(self, rows: int, cols: int) -> None:
        """Set its terminal's window size (nothing without a terminal)."""
        ...

    def close(self) -> None:
        """Release what the relay holds (descriptors); the process is not signalled."""
        ...


class AgentOS(Protocol):
    """What the guest agent needs from the operating system (see the module doc)."""

    @property
    def channel(self) -> AgentChannel: ...

    def log(self, text: str) -> None:
        """One line for the guest's log (the kernel log, or the console)."""
        ...

    # ------------------------------------------------------------------ CPUs

    def cpus(self, mask: CpuMask) -> frozenset[int]:
        """A CPU mask, as ``/sys/devices/system/cpu/<mask>`` lists it."""
        ...

    def hotpluggable_cpus(self) -> dict[int, bool]:
        """Registered CPUs that have a ``cpuN/online`` file, and whether it reads 1."""
        ...

    def set_cpu_online(self, cpu: int, online: bool) -> None:
        """Write ``1``/``0`` to ``cpuN/online``; the kernel's errno on refusal."""
        ...

    # ------------------------------------------------------------------ container cgroups

    def cgroup_path(self, cid: str) -> str:
        """The guest path of container ``cid``'s cgroup (for messages)."""
        ...

    def create_cgroup(self, cid: str) -> None:
        """``mkdir`` the container's cgroup, with the cpu and cpuset controllers (EEXIST)."""
        ...

    def remove_cgroup(self, cid: str) -> None:
        """``rmdir`` it: EBUSY while a process lives in it."""
        ...

    def read_cgroup(self, cid: str, name: str) -> str:
        """Read one of its files: ``cpu.max``, ``cpuset.cpus``, ``cpu.stat``, ..."""
        ...

    def write_cgroup(self, cid: str, name: str, data: str) -> None:
        """Write one of its files in one ``write()``, as ``echo DATA > FILE`` does."""
        ...

    def cgroup_pids(self, cid: str) -> list[int]:
        """The processes in it (``cgroup.procs``)."""
        ...

    def kill_cgroup(self, cid: str, signal: int) -> None:
        """Send ``signal`` to every process in it; does not wait."""
        ...

    def wait_cgroup_empty(self, cid: str, timeout: float) -> bool:
        """Block until no process is left in it (True) or ``timeout`` passed (False)."""
        ...

    # ------------------------------------------------------------------ processes

    def spawn(self, cid: str, argv: Sequence[str], *, init: bool) -> AgentProcess:
        """Start ``argv`` in container ``cid``.

        ``init=True`` is the container's first process: where the OS has namespaces it
        gets its own (cgroup, mount) so that it sees its cgroup as the root, and its
        output goes to the guest console. ``init=False`` is an exec: it joins the
        container (its init's namespaces while the init lives) and its output is
        captured for :meth:`AgentProcess.output`.
        """
        ...

    def spawn_streamed(
        self, cid: str, argv: Sequence[str], *, init: bool, io: ProcessIO
    ) -> StreamedProcess:
        """Start ``argv`` in container ``cid`` as :meth:`spawn` does (namespaces the same
        way), its stdio relayed to the host piecewise (:class:`StreamedProcess`)
        instead of going to the console or being captured whole."""
        ...

    def find_program(self, argv0: str, io: ProcessIO) -> bool:
        """Whether ``argv0`` names a program a process started with ``io`` could run (a
        path, or a name on its ``PATH``, inside its root): checked at ``create``, as
        runc does, so a missing program fails before anything is started."""
        ...

    def mount_rootfs(self, cid: str, disk_serial: str) -> str:
        """Mount the block device whose serial is ``disk_serial`` (an ext4 file system the
        host made from the bundle's rootfs) for container ``cid``; the guest path."""
        ...

    def unmount_rootfs(self, cid: str) -> None:
        """Undo :meth:`mount_rootfs` (lazily: a process still in it keeps it alive)."""
        ...

    # ------------------------------------------------------------------ files, events

    def read_file(self, path: str) -> str:
        """A guest file's text, read now (``path`` is absolute)."""
        ...

    def subscribe_events(self, callback: Callable[[OSEvent], None]) -> Callable[[], None]:
        """Call ``callback`` for every CPU hotplug event until the returned function is
        called. ``callback`` must not block (it may run on a kernel thread)."""
        ...

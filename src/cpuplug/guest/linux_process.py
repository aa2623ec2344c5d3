"""Processes of a real Linux guest's containers: started in their cgroup and namespaces.

:func:`spawn` forks; the child, before it execs the program,

1. starts a session (``setsid``), so an exec's timeout can kill its whole group;
2. joins the container's cgroup by writing its pid to ``cgroup.procs`` (the path as
   the agent sees it, so before any mount namespace changes);
3. then, when asked (:class:`NewNamespaces`, for a container's init): unshares a cgroup
   namespace and a mount namespace and mounts cgroup2 again on ``/sys/fs/cgroup``.
   Only a cgroup2 mount made *inside* a cgroup namespace is rooted at that namespace's
   cgroup, so this is what makes ``cat /sys/fs/cgroup/cpu.max`` in the container show
   the container's own limit; the private mount namespace keeps that mount from
   replacing the agent's view. Or (:class:`JoinNamespaces`, for an exec while the init
   lives) it enters the init's cgroup and mount namespaces with ``setns``.

Why a hand-written fork and not ``subprocess``: those steps can fail, and the agent
must say which one and with which errno; ``preexec_fn`` reports every failure as the
same ``SubprocessError``. The child reports ``STEP errno`` on a close-on-exec pipe; an
empty pipe at its end of file means the exec happened. Between fork and exec the child
only makes system calls (``os`` functions and libc functions resolved before the fork),
so no lock another agent thread held at fork time can block it. Python 3.11 has no
``os.unshare``/``os.setns``: they are libc's, through ctypes.

Waiting uses a pidfd (Linux 5.3), so a wait has a timeout and no thread per process;
reaping goes through :class:`Children`, the one table of the agent's children, which
also reaps the orphans a PID 1 inherits (the agent is the guest's init).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import select
import signal
import termios
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cpuplug.guest.agent_os import ProgramNotFound
from cpuplug.guest.vfs import GuestOSError

__all__ = [
    "CONTAINER_ENV",
    "Children",
    "JoinNamespaces",
    "LinuxProcess",
    "NewNamespaces",
    "spawn",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

CONTAINER_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
}
"""The environment of container processes (the protocol carries none)."""
OUTPUT_LIMIT = 256 * 1024
"""Bytes kept per output stream; the rest is read and dropped (the reply must fit a frame)."""
OUTPUT_JSON_BUDGET = 400 * 1024
"""Most bytes one stream may take in the reply once JSON-escaped (two fit in 1 MiB)."""
DRAIN_GRACE = 0.5
"""After an exec'd program ended, how long its pipes are still read: a background child
that inherited them would otherwise hold the reply back until it ends."""


@dataclass(frozen=True)
class NewNamespaces:
    """Unshare cgroup + mount namespaces and mount cgroup2 on ``cgroup_mount``."""

    cgroup_mount: str


@dataclass(frozen=True)
class JoinNamespaces:
    """Enter the cgroup and mount namespaces of process ``pid`` (a container's init)."""

    pid: int


Namespaces = NewNamespaces | JoinNamespaces | None


class _Libc:
    """The libc functions the child calls, resolved once in the parent."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.unshare = libc.unshare
        self.unshare.argtypes = [ctypes.c_int]
        self.setns = libc.setns
        self.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        self.mount = libc.mount
        self.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_void_p,
        ]
        self.umount2 = libc.umount2
        self.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


_libc: _Libc | None = None


def _get_libc() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


class _Step(Exception):
    def __init__(self, step: str, err: int) -> None:
        self.step = step
        self.err = err


def _check(result: int, step: str) -> None:
    if result != 0:
        raise _Step(step, ctypes.get_errno())


def mount(source: str, target: str, fstype: str, flags: int = 0) -> None:
    """``mount -t FSTYPE SOURCE TARGET``; OSError with the errno on failure."""
    libc = _get_libc()
    if libc.mount(os.fsencode(source), os.fsencode(target), fstype.encode(), flags, None):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def unmount(target: str) -> None:
    """``umount -l TARGET``: detached now, gone once nothing uses it."""
    if _get_libc().umount2(os.fsencode(target), MNT_DETACH):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


# ---------------------------------------------------------------------------- children


class Children:
    """Every child of the agent, so that each is reaped exactly once.

    Forks happen under :attr:`lock` and register the child before releasing it, and
    every ``waitpid`` happens under it too: so the orphan reaper (:meth:`reap_orphans`,
    for an agent that is PID 1) can tell the agent's children from orphans without a
    race, and a pid is never reaped by one and then waited for by the other.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._procs: dict[int, LinuxProcess] = {}

    def add(self, proc: LinuxProcess) -> None:
        self._procs[proc.pid] = proc  # caller holds the lock

    def of_container(self, cid: str) -> list[LinuxProcess]:
        with self.lock:
            return [p for p in self._procs.values() if p.cid == cid]

    def reap(self, proc: LinuxProcess) -> None:
        """``waitpid(WNOHANG)`` for ``proc``: records its status once it ended."""
        with self.lock:
            if proc.exit_code is not None:
                return
            try:
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = proc.pid, 0  # reaped elsewhere: nothing more to learn
            if pid == 0:
                return
            proc._set_status(os.waitstatus_to_exitcode(status))
            self._procs.pop(proc.pid, None)

    def reap_orphans(self, stop: threading.Event) -> None:
        """PID 1's duty, on a thread: reap every child that is not the agent's own.

        ``waitid(WNOWAIT)`` shows a zombie without reaping it; the agent's own go
        through :meth:`reap` (their status is kept), the rest are reaped and forgotten.
        """
        while not stop.is_set():
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                stop.wait(0.1)  # no children at all yet
                continue
            except InterruptedError:
                continue
            if info is None:
                continue
            with self.lock:
                proc = self._procs.get(info.si_pid)
                if proc is None:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(info.si_pid, os.WNOHANG)
            if proc is not None:
                self.reap(proc)


class LinuxProcess:
    """A started program: an ``AgentProcess`` (``cpuplug.guest.agent_os``)."""

    def __init__(
        self,
        pid: int,
        cid: str,
        argv: Sequence[str],
        children: Children,
        pipes: tuple[int, int] | None,
    ) -> None:
        self.pid = pid
        self.cid = cid
        self.argv = list(argv)
        self._children = children
        self._exit_code: int | None = None
        self._pidfd = os.pidfd_open(pid)
        self._pipes = {fd: bytearray() for fd in pipes} if pipes else {}
        self._names = dict(zip(pipes, ("stdout", "stderr"), strict=True)) if pipes else {}
        self._kept: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._wait_lock = threading.Lock()

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    def _set_status(self, code: int) -> None:
        self._exit_code = 128 - code if code < 0 else code  # -N: killed by signal N
        if self._wait_lock.acquire(blocking=False):  # else the waiter closes it when done:
            try:  # closing a descriptor another thread is selecting on is not safe
                self._close_pidfd()
            finally:
                self._wait_lock.release()

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = -1

    def poll(self) -> bool:
        """Reap it if it ended; True once it has."""
        if self._exit_code is None:
            self._children.reap(self)
        return self._exit_code is not None

    def wait(self, timeout: float | None) -> bool:
        """Wait for the end (reading its output meanwhile); False when ``timeout`` passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wait_lock:
            while not self.poll():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._pump([self._pidfd], remaining)
            drain_end = time.monotonic() + DRAIN_GRACE
            while self._pipes:
                remaining = drain_end - time.monotonic()
                if remaining <= 0:
                    break
                self._pump([], remaining)
            for fd in list(self._pipes):
                self._close_pipe(fd)
            self._close_pidfd()
            return True

    def select(self, fds: Sequence[int], timeout: float) -> list[int]:
        """Wait up to ``timeout`` until one of ``fds`` is readable or the process ended;
        the readable ones. (Under the wait lock, so the pidfd stays open meanwhile.)"""
        with self._wait_lock:
            watch = list(fds)
            if self._exit_code is None and self._pidfd >= 0:
                watch.append(self._pidfd)
            ready: list[int] = []
            if watch:
                with contextlib.suppress(InterruptedError):
                    ready, _, _ = select.select(watch, [], [], max(0.0, timeout))
            if self.poll():
                self._close_pidfd()
            return [fd for fd in ready if fd in fds]

    def _pump(self, extra: list[int], timeout: float | None) -> None:
        """Read what the pipes have (or wait for them / the pidfd) for up to ``timeout``."""
        fds = [*self._pipes, *(fd for fd in extra if fd >= 0)]
        if not fds:
            return
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return
        for fd in ready:
            if fd not in self._pipes:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                self._close_pipe(fd)
                continue
            kept = self._kept[self._names[fd]]
            kept += chunk[: max(0, OUTPUT_LIMIT - len(kept))]

    def _close_pipe(self, fd: int) -> None:
        self._pipes.pop(fd, None)
        with contextlib.suppress(OSError):
            os.close(fd)

    def kill(self, signal_number: int) -> None:
        """Signal its process group (it leads one: ``setsid``), or it alone if that is gone."""
        if self.poll():
            return
        try:
            os.killpg(self.pid, signal_number)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal_number)

    def output(self) -> tuple[str, str]:
        return _fit(self._kept["stdout"]), _fit(self._kept["stderr"])


def _fit(data: bytes | bytearray) -> str:
    """``data`` as text, cut until its JSON form fits :data:`OUTPUT_JSON_BUDGET`.

    Bytes that are not UTF-8 become U+FFFD (3 bytes) and control bytes ``\\u00XX``
    (6 bytes), so 256 KiB of binary output could otherwise not be sent back.
    """
    text = data.decode("utf-8", "replace")
    while len(json.dumps(text, ensure_ascii=False).encode()) > OUTPUT_JSON_BUDGET:
        text = text[: len(text) * 3 // 4]
    return text


# ---------------------------------------------------------------------------- spawning


def spawn(
    argv: Sequence[str],
    *,
    cid: str,
    cgroup_procs: str,
    cgroup_guest_path: str,
    namespaces: Namespaces,
    capture: bool,
    children: Children,
    env: Mapping[str, str] = CONTAINER_ENV,
    stdio: tuple[int, int, int] | None = None,
    cwd: str = "/",
    controlling_terminal: bool = False,
    root: str | None = None,
) -> LinuxProcess:
    """Fork, move the child into the container and exec ``argv`` (see the module doc).

    ``cgroup_procs`` is the host path of the container's ``cgroup.procs``;
    ``cgroup_guest_path`` names the cgroup in errors. ``stdio`` gives the child's
    descriptors 0, 1 and 2 (a streamed process's pipe ends, or a terminal's slave
    three times, which ``controlling_terminal`` makes the session's terminal); they
    stay the caller's to close. ``root``: the process is chrooted there, into a root
    filesystem whose ``/proc``, ``/sys``, ``/dev`` and ``/sys/fs/cgroup`` (the container's
    own cgroup) a new namespace mounts (:data:`ROOT_MOUNTS`; an exec joining the init's
    namespaces finds them mounted). Without it stdin is ``/dev/null`` and stdout/stderr are
    captured (``capture``) or inherited. Raises
    :class:`~cpuplug.guest.agent_os.ProgramNotFound` when ``argv[0]`` names no program
    and :class:`~cpuplug.guest.vfs.GuestOSError` for a step that failed.
    """
    if not argv:
        raise GuestOSError(errno.EINVAL, "argv")
    libc = _get_libc() if namespaces is not None else None
    ns_fds: list[tuple[int, int]] = []
    if isinstance(namespaces, JoinNamespaces):
        for kind, flag in (("cgroup", CLONE_NEWCGROUP), ("mnt", CLONE_NEWNS)):
            path = f"/proc/{namespaces.pid}/ns/{kind}"
            try:
                ns_fds.append((os.open(path, os.O_RDONLY | os.O_CLOEXEC), flag))
            except OSError as exc:
                _close_all(fd for fd, _ in ns_fds)
                raise GuestOSError(exc.errno or errno.EIO, path) from None
    out = os.pipe() if capture else None
    err = os.pipe() if capture else None
    report_r, report_w = os.pipe()
    args = [os.fsencode(a) for a in argv]
    envb = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    procs = os.fsencode(cgroup_procs)
    pipes = (out[0], err[0]) if out is not None and err is not None else None
    try:
        with children.lock:
            pid = os.fork()
            if pid == 0:  # the child: only system calls from here to exec
                _child(
                    args,
                    envb,
                    procs,
                    namespaces,
                    ns_fds,
                    libc,
                    out,
                    err,
                    report_w,
                    _ChildIO(
                        stdio,
                        os.fsencode(cwd),
                        controlling_terminal,
                        os.fsencode(root) if root is not None else None,
                    ),
                )
            proc = LinuxProcess(pid, cid, argv, children, pipes)
            children.add(proc)
    except OSError as exc:  # fork failed (EAGAIN, ENOMEM): nothing was started
        _close_all([report_r, *(pipes or ())])
        raise GuestOSError(exc.errno or errno.EAGAIN, "fork") from None
    finally:
        _close_all([report_w, *(fd for fd, _ in ns_fds)])
        _close_all(p[1] for p in (out, err) if p is not None)
    try:
        report = _read_all(report_r)
    finally:
        os.close(report_r)
    if not report:
        return proc
    proc.wait(5.0)  # it exits with 127 right after reporting
    step, _, number = report.decode().partition(" ")
    code = int(number) if number.isdigit() else errno.EIO
    if step == "exec":
        if code in (errno.ENOENT, errno.ENOTDIR):
            raise ProgramNotFound(argv[0])
        raise GuestOSError(code, argv[0])
    if step == "cgroup":
        raise GuestOSError(code, f"{cgroup_guest_path}/cgroup.procs")
    if step == "chdir":
        raise GuestOSError(code, cwd)
    raise GuestOSError(code, step)


@dataclass(frozen=True)
class _ChildIO:
    stdio: tuple[int, int, int] | None
    cwd: bytes
    controlling_terminal: bool
    root: bytes | None = None


ROOT_MOUNTS: tuple[tuple[bytes, bytes, bytes, int], ...] = (
    (b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    (b"sysfs", b"/sys", b"sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    (b"/dev", b"/dev", b"", MS_BIND | MS_REC),
    (b"cgroup2", b"/sys/fs/cgroup", b"cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC),
)
"""What a container's own root filesystem gets mounted in it (source, where, type,
flags), in order (cgroup2 on sysfs), each where the directory exists."""


def _child(
    argv: list[bytes],
    env: dict[bytes, bytes],
    cgroup_procs: bytes,
    namespaces: Namespaces,
    ns_fds: list[tuple[int, int]],
    libc: _Libc | None,
    out: tuple[int, int] | None,
    err: tuple[int, int] | None,
    report: int,
    io: _ChildIO,
) -> None:
    """Runs in the forked child; never returns."""
    step = "setsid"
    try:
        os.setsid()
        for signo in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; a program must not
            signal.signal(signo, signal.SIG_DFL)
        step = "stdio"
        if io.stdio is not None:
            for number, given in enumerate(io.stdio):
                os.dup2(given, number)
            if io.controlling_terminal:
                step = "ioctl TIOCSCTTY"
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        else:
            null = os.open(b"/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
        if out is not None and err is not None:
            os.dup2(out[1], 1)
            os.dup2(err[1], 2)
        step = "cgroup"
        fd = os.open(cgroup_procs, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"%d\n" % os.getpid())
        os.close(fd)
        if libc is not None and isinstance(namespaces, NewNamespaces):
            target = os.fsencode(namespaces.cgroup_mount)
            _check(libc.unshare(CLONE_NEWCGROUP | CLONE_NEWNS), "unshare")
            private = MS_REC | MS_PRIVATE  # so the mount below stays in the container
            _check(libc.mount(None, b"/", None, private, None), "mount --make-rprivate /")
            libc.umount2(target, MNT_DETACH)  # not mounted there is fine: mount below
            flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
            _check(libc.mount(b"cgroup2", target, b"cgroup2", flags, None), "mount cgroup2")
            if io.root is not None:
                for source, where, fstype, flags in ROOT_MOUNTS:
                    step = f"mount {where.decode()}"
                    if os.path.isdir(io.root + where):
                        _check(libc.mount(source, io.root + where, fstype or None, flags,
                                          None), step)  # fmt: skip
        elif libc is not None:
            for fd, flag in ns_fds:
                _check(libc.setns(fd, flag), "setns")
        if io.root is not None:
            step = "chroot"
            os.chroot(io.root)
        step = "chdir"
        os.chdir(io.cwd)
        step = "exec"
        os.execvpe(argv[0], argv, env)
    except _Step as exc:
        os.write(report, b"%s %d" % (exc.step.encode(), exc.err))
    except OSError as exc:
        os.write(report, b"%s %d" % (step.encode(), exc.errno or errno.EIO))
    except BaseException:
        os.write(report, b"%s %d" % (step.encode(), errno.EIO))
    finally:
        os._exit(127)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

"""A small userland: programs that run as scheduler tasks and talk to the kernel via files.

Enough to inspect and drive the guest by hand, and what the agent's
``ExecProcess``/``StartContainer`` run: ``sh -c 'LINE'``, ``cat``, ``ls``,
``echo``, ``nproc``, ``sleep``, ``stress``, ``true``, ``false``, ``mkdir``,
``rmdir``. Errors are worded as dash and coreutils word them, with their exit
codes (0 ok, 1 failure, 2 usage/syntax, 127 not found).

Every program is a generator (the task model of :mod:`cpuplug.guest.sched`):
it does its work in slices and ``yield``\\ s in between, so it runs on the vCPU
threads of online CPUs inside its cgroup's cpuset, and a blocked program
(``sleep``) holds no CPU. Programs see the kernel only through the file tree,
the scheduler and the cgroup tree (:class:`Os`), like a process sees syscalls.
Paths resolve for the calling task (:attr:`Proc.fs`): inside a container's cgroup
namespace ``/sys/fs/cgroup`` is the container's own cgroup and ``/proc/self/cgroup``
says ``0::/``, as in a container on Linux (:mod:`cpuplug.guest.cgroup`).

``sh`` understands ``;``, ``&&``, ``||``, ``>`` and ``>>`` (no pipes, no
variables), and the builtins ``exit [N]`` and ``trap '' SIG...`` / ``trap - SIG...``
(ignore a signal, or take the default back: the only dispositions a task has). As
on sysfs, a redirection cannot create a file, and the command's
output is stored with one ``write()`` when the command ends, which is what
``echo 1 > .../online`` does on Linux.

``stress --cpu N [--timeout S]`` starts N worker tasks in the caller's cgroup;
each slice hashes a 1 MiB buffer with SHA-256, which releases the GIL, so the
workers really run in parallel on as many vCPU threads as they are given.
It reports the work done and the CPUs that did it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shlex
import signal
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Protocol

from cpuplug.agent_protocol import format_cpu_list
from cpuplug.guest.cgroup import Cgroup, CgroupTree, is_decimal
from cpuplug.guest.sched import Request, Scheduler, Sleep, Task, WaitFor, current_task
from cpuplug.guest.vfs import GuestOSError, Vfs, VfsView, normpath

__all__ = [
    "PROGRAMS",
    "Os",
    "Output",
    "Pipe",
    "Proc",
    "Process",
    "ProgramNotFound",
    "deliver",
    "signal_number",
    "spawn",
]

OUTPUT_LIMIT = 256 * 1024
"""Characters kept per output stream; the rest is counted, not stored (the agent's
replies must stay under the protocol's 1 MiB frame)."""

STRESS_CHUNK = 1 << 20
_STRESS_BUFFER = os.urandom(STRESS_CHUNK)

Body = Generator[Request, None, int]


class Os(Protocol):
    """What programs need from the kernel (the guest kernel object provides these)."""

    @property
    def vfs(self) -> Vfs: ...

    @property
    def sched(self) -> Scheduler: ...

    @property
    def cgroups(self) -> CgroupTree: ...


class ProgramNotFound(GuestOSError):
    """``argv[0]`` names no program (exec's ENOENT)."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.ENOENT, name)


class Output:
    """A bounded, thread-safe text sink standing in for a pipe to the caller."""

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._size = 0
        self._limit = limit
        self.dropped = 0

    def write(self, text: str) -> None:
        with self._lock:
            room = self._limit - self._size
            if len(text) > room:
                self.dropped += len(text) - max(room, 0)
                text = text[: max(room, 0)]
            self._parts.append(text)
            self._size += len(text)

    def getvalue(self) -> str:
        with self._lock:
            return "".join(self._parts)


class Pipe(Output):
    """An output the agent reads piecewise while the program runs (a streamed process's
    stdout or stderr, or both as one terminal).

    Unlike a Linux pipe a full one never blocks the writer (a task cannot be parked on
    it): beyond ``limit`` unread bytes the rest is dropped and counted in ``dropped``.
    ``terminal`` turns ``\n`` into ``\r\n`` as a terminal's ``onlcr`` does.
    """

    def __init__(self, limit: int = OUTPUT_LIMIT, *, terminal: bool = False) -> None:
        super().__init__(limit)
        self._buf = bytearray()
        self._cond = threading.Condition(self._lock)
        self._terminal = terminal

    def write(self, text: str) -> None:
        data = (text.replace("\n", "\r\n") if self._terminal else text).encode()
        with self._cond:
            room = self._limit - len(self._buf)
            if len(data) > room:
                self.dropped += len(data) - max(room, 0)
                data = data[: max(room, 0)]
            self._buf += data
            self._cond.notify_all()

    def getvalue(self) -> str:
        with self._cond:
            return self._buf.decode("utf-8", "replace")

    def take(self, limit: int) -> bytes:
        """Up to ``limit`` unread bytes (removed from the pipe); never waits."""
        with self._cond:
            data = bytes(self._buf[:limit])
            del self._buf[:limit]
            return data

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for unread bytes; whether there are some."""
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._buf), timeout)


@dataclass
class Proc:
    """The context a program runs in: its kernel, cgroup, streams and working directory."""

    os: Os
    group: Cgroup | None
    stdout: Output
    stderr: Output
    stdin: str = ""
    cwd: str = "/"
    name: str = "sh"

    @property
    def pid(self) -> int:
        task = current_task()
        return task.pid if task is not None else 0

    @property
    def fs(self) -> VfsView:
        """The file tree as the running task sees it (its cgroup namespace's mount).

        Asked on every use, from the task whose slice runs it, because that is whose
        namespace a path lookup happens in on Linux (``current``), and a namespace
        root that went away must stop resolving at once.
        """
        return self.os.cgroups.view_for(current_task())

    def path(self, arg: str) -> str:
        """``arg`` made absolute against the working directory (a path in :attr:`fs`)."""
        return normpath(arg if arg.startswith("/") else f"{self.cwd.rstrip('/')}/{arg}")

    def err(self, line: str) -> None:
        self.stderr.write(line + "\n")

    def out(self, line: str) -> None:
        self.stdout.write(line + "\n")

    def with_stdout(self, stdout: Output) -> Proc:
        return Proc(self.os, self.group, stdout, self.stderr, self.stdin, self.cwd, self.name)


Program = Callable[[Proc, list[str]], Body]


# ---------------------------------------------------------------------- programs


def _echo(p: Proc, args: list[str]) -> Body:
    newline = True
    if args and args[0] == "-n":
        newline, args = False, args[1:]
    p.stdout.write(" ".join(args) + ("\n" if newline else ""))
    return 0
    yield  # a generator, like every program


def _true(_p: Proc, _args: list[str]) -> Body:
    return 0
    yield


def _false(_p: Proc, _args: list[str]) -> Body:
    return 1
    yield


def _cat(p: Proc, args: list[str]) -> Body:
    status = 0
    if not args:
        p.stdout.write(p.stdin)
    for arg in args:
        try:
            p.stdout.write(p.fs.read(p.path(arg)))
        except GuestOSError as exc:
            p.err(f"cat: {arg}: {exc.strerror}")
            status = 1
        yield None  # one file per slice
    return status


def _ls(p: Proc, args: list[str]) -> Body:
    paths = [a for a in args if not a.startswith("-")] or ["."]
    status = 0
    vfs = p.fs
    dirs: list[str] = []
    for arg in paths:
        full = p.path(arg)
        if not vfs.exists(full):
            p.err(f"ls: cannot access '{arg}': No such file or directory")
            status = 2
        elif vfs.is_dir(full):
            dirs.append(arg)
        else:
            p.out(arg)
    for i, arg in enumerate(dirs):
        if len(paths) > 1:
            p.out(("\n" if i or len(dirs) < len(paths) else "") + f"{arg}:")
        try:
            for name in vfs.listdir(p.path(arg)):
                p.out(name)
        except GuestOSError as exc:
            p.err(f"ls: cannot open directory '{arg}': {exc.strerror}")
            status = 2
        yield None
    return status


def _nproc(p: Proc, args: list[str]) -> Body:
    if args and args != ["--all"]:
        p.err(f"nproc: unrecognized option '{args[0]}'")
        p.err("Try 'nproc --help' for more information.")
        return 1
    if args == ["--all"]:
        count = len(p.os.cgroups.possible())
    else:
        count = len(p.os.sched.effective_cpus(p.group))
    p.out(str(count))
    return 0
    yield


_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(text: str) -> float | None:
    m = _DURATION_RE.fullmatch(text)
    return None if m is None else float(m.group(1)) * _UNIT[m.group(2)]


def _sleep(p: Proc, args: list[str]) -> Body:
    if not args:
        p.err("sleep: missing operand")
        p.err("Try 'sleep --help' for more information.")
        return 1
    total = 0.0
    for arg in args:
        seconds = _duration(arg)
        if seconds is None:
            p.err(f"sleep: invalid time interval '{arg}'")
            p.err("Try 'sleep --help' for more information.")
            return 1
        total += seconds
    deadline = time.monotonic() + total
    while (left := deadline - time.monotonic()) > 0:
        yield Sleep(left)
    return 0


def _mkdir(p: Proc, args: list[str]) -> Body:
    return _each_dir(p, args, "mkdir", p.fs.mkdir, "cannot create directory")
    yield


def _rmdir(p: Proc, args: list[str]) -> Body:
    return _each_dir(p, args, "rmdir", p.fs.rmdir, "failed to remove")
    yield


def _each_dir(
    p: Proc, args: list[str], cmd: str, op: Callable[[str], None], failed: str
) -> int:
    """mkdir/rmdir's loop: every operand is tried, a failure is reported and sets
    the exit status, a missing operand stops at once (coreutils' behaviour)."""
    status = 0
    for arg in args or [""]:
        if not arg:
            p.err(f"{cmd}: missing operand")
            return 1
        try:
            op(p.path(arg))
        except GuestOSError as exc:
            p.err(f"{cmd}: {failed} '{arg}': {exc.strerror}")
            status = 1
    return status


class _Work:
    """Chunks hashed by a stress run, and by which CPU (shared by its workers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.chunks = 0
        self.cpus: set[int] = set()

    def add(self, cpu: int | None) -> None:
        with self._lock:
            self.chunks += 1
            if cpu is not None:
                self.cpus.add(cpu)


def _hog(work: _Work, deadline: float | None) -> Body:
    while deadline is None or time.monotonic() < deadline:
        hashlib.sha256(_STRESS_BUFFER).digest()  # > 2 KiB: hashlib drops the GIL
        task = current_task()
        work.add(task.cpu if task is not None else None)
        yield None
    return 0


def _stress_usage(p: Proc, why: str) -> int:
    p.err(f"stress: FAIL: [{p.pid}] {why}")
    p.err("usage: stress --cpu N [--timeout S]")
    return 1


def _stress(p: Proc, args: list[str]) -> Body:
    workers_n: int | None = None
    timeout: float | None = None
    it = iter(args)
    for arg in it:
        value = next(it, None)
        if arg in ("-c", "--cpu") and value is not None and is_decimal(value):
            workers_n = int(value)
        elif arg in ("-t", "--timeout") and value is not None and _duration(value) is not None:
            timeout = _duration(value)
        else:
            return _stress_usage(p, f"bad option or value: {arg} {value or ''}".rstrip())
    if not workers_n:
        return _stress_usage(p, "no hogs given (--cpu N, N >= 1)")
    pid = p.pid
    p.out(f"stress: info: [{pid}] dispatching hogs: {workers_n} cpu, 0 io, 0 vm, 0 hdd")
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    work = _Work()
    sched = p.os.sched
    workers: list[Task] = []
    completed = False
    try:
        for _ in range(workers_n):
            workers.append(sched.spawn(_hog(work, deadline), group=p.group, name="stress"))
        for w in workers:
            yield WaitFor(w.done)
        completed = True
    finally:
        for w in workers:
            w.kill()  # the parent was killed: its hogs go with it
        elapsed = time.monotonic() - start
        mib = work.chunks * STRESS_CHUNK / (1 << 20)
        rate = mib / elapsed if elapsed > 0 else 0.0
        p.out(
            f"stress: info: [{pid}] hashed {mib:.0f} MiB in {elapsed:.2f}s"
            f" ({rate:.1f} MiB/s) on CPUs {format_cpu_list(work.cpus) or '-'}"
        )
        if completed:
            p.out(f"stress: info: [{pid}] successful run completed in {elapsed:.0f}s")
    return 0


# ---------------------------------------------------------------------- sh


class _ShSyntaxError(Exception):
    pass


@dataclass
class _Command:
    argv: list[str]
    redirect: tuple[str, str] | None  # (">" or ">>", path)


_OPERATORS = {";", "&&", "||"}
_REDIRECTS = {">", ">>"}


def _parse_line(line: str) -> list[tuple[str, _Command]]:
    """``[(connector, command)]``; the first connector is ``";"``."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as exc:  # unterminated quote
        raise _ShSyntaxError(f"Syntax error: {exc}") from None
    out: list[tuple[str, _Command]] = []
    connector = ";"
    argv: list[str] = []
    redirect: tuple[str, str] | None = None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in _OPERATORS:
            if not argv:
                raise _ShSyntaxError(f'Syntax error: "{tok}" unexpected')
            out.append((connector, _Command(argv, redirect)))
            connector, argv, redirect = tok, [], None
        elif tok in _REDIRECTS:
            if i + 1 >= len(tokens) or tokens[i + 1] in _OPERATORS | _REDIRECTS:
                raise _ShSyntaxError("Syntax error: newline unexpected")
            redirect = (tok, tokens[i + 1])
            i += 1
        elif tok and set(tok) <= set(";&|<>"):
            raise _ShSyntaxError(f'Syntax error: "{tok}" unexpected')
        else:
            argv.append(tok)
        i += 1
    if argv:
        out.append((connector, _Command(argv, redirect)))
    elif redirect is not None or connector in ("&&", "||"):
        raise _ShSyntaxError("Syntax error: end of file unexpected")
    return out


def _run_command(p: Proc, cmd: _Command) -> Body:
    name = cmd.argv[0]
    program = PROGRAMS.get(name)
    target: str | None = None
    if cmd.redirect is not None:
        target = p.path(cmd.redirect[1])
        vfs = p.fs
        if vfs.is_dir(target):
            reason = "Is a directory"
        elif vfs.exists(target):
            reason = ""
        elif vfs.is_dir(target.rpartition("/")[0] or "/"):
            reason = "Permission denied"  # sysfs and cgroupfs cannot create files
        else:
            reason = "Directory nonexistent"
        if reason:
            p.err(f"sh: 1: cannot create {cmd.redirect[1]}: {reason}")
            return 2
    if program is None:
        p.err(f"sh: 1: {name}: not found")
        return 127
    if target is None:
        return (yield from program(p, cmd.argv[1:]))
    captured = Output()
    status = yield from program(p.with_stdout(captured), cmd.argv[1:])
    data = captured.getvalue()
    if data:
        try:
            p.fs.write(target, data)
        except GuestOSError as exc:
            p.err(f"sh: 1: {name}: write error: {exc.strerror}")
            return 1
    return status


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _builtin(p: Proc, argv: list[str], status: int) -> int | None:
    """Run ``exit`` or ``trap`` (their status), or None if ``argv`` is neither."""
    if argv[0] == "exit":
        if len(argv) > 2 or (len(argv) == 2 and not is_decimal(argv[1])):
            p.err(f"sh: 1: exit: Illegal number: {' '.join(argv[1:])}")
            raise _Exit(2)
        raise _Exit(int(argv[1]) % 256 if len(argv) == 2 else status)
    if argv[0] != "trap":
        return None
    task = current_task()
    if len(argv) < 3 or argv[1] not in ("", "-"):
        p.err("sh: 1: trap: only trap '' SIG... and trap - SIG... are supported")
        return 2
    for name in argv[2:]:
        number = signal_number(name)
        if number is None:
            p.err(f"sh: 1: trap: {name}: bad trap")
            return 1
        if task is not None and number not in (9, 19):
            if argv[1]:
                task.ignored_signals.discard(number)
            else:
                task.ignored_signals.add(number)
    return 0


def signal_number(name: str) -> int | None:
    """``15``, ``TERM`` or ``SIGTERM`` as a signal number (1..64), else None."""
    if is_decimal(name):
        return int(name) if 1 <= int(name) <= 64 else None
    try:
        return int(signal.Signals["SIG" + name.upper().removeprefix("SIG")])
    except KeyError:
        return None


def _sh(p: Proc, args: list[str]) -> Body:
    if len(args) < 2 or args[0] != "-c":
        if args and args[0] == "-c":
            p.err("sh: 0: -c requires an argument")
        else:
            p.err("sh: only 'sh -c LINE' is supported")
        return 2
    try:
        commands = _parse_line(args[1])
    except _ShSyntaxError as exc:
        p.err(f"sh: 1: {exc}")
        return 2
    status = 0
    for connector, cmd in commands:
        if (connector == "&&" and status != 0) or (connector == "||" and status == 0):
            continue
        try:
            done = _builtin(p, cmd.argv, status)
        except _Exit as exc:
            return exc.status
        status = done if done is not None else (yield from _run_command(p, cmd))
        yield None  # one command per slice at least
    return status


PROGRAMS: dict[str, Program] = {
    "cat": _cat,
    "echo": _echo,
    "false": _false,
    "ls": _ls,
    "mkdir": _mkdir,
    "nproc": _nproc,
    "rmdir": _rmdir,
    "sh": _sh,
    "sleep": _sleep,
    "stress": _stress,
    "true": _true,
}


# ---------------------------------------------------------------------- processes


class Process:
    """A running program: its task and the output it produced so far."""

    def __init__(self, argv: Sequence[str], task: Task, proc: Proc) -> None:
        self.argv = list(argv)
        self.task = task
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def pid(self) -> int:
        return self.task.pid

    def wait(self, timeout: float | None) -> bool:
        """Block the calling thread until the program ended; False on timeout."""
        return self.task.wait(timeout)

    @property
    def exit_code(self) -> int | None:
        return self.task.exit_code

    def kill(self, signal: int = 15) -> None:
        """End it at its next slice boundary with the shell's ``128 + signal`` status,
        unless it ignores ``signal``."""
        deliver(self.task, signal)


NOT_FATAL = frozenset({17, 18, 19, 20, 21, 22, 23, 28})
"""Signals whose default action does not end a process: SIGCHLD, SIGURG and SIGWINCH
are ignored, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN and SIGTTOU stop or continue it (a task
has no stopped state, so they change nothing)."""


def deliver(task: Task, signal: int) -> None:
    """Send ``signal`` to ``task``: it ends at its next slice boundary with the status
    ``128 + signal``, unless it ignores that signal (SIGKILL it cannot) or the signal's
    default action is not to end a process (:data:`NOT_FATAL`)."""
    if signal in NOT_FATAL or (signal in task.ignored_signals and signal != 9):
        return
    task.kill(128 + signal)


def _main(program: Program, proc: Proc, args: list[str]) -> Body:
    try:
        return (yield from program(proc, args))
    except GuestOSError as exc:  # a kernel error nobody handled: the program dies with it
        proc.err(f"{proc.name}: {exc}")
        return 1


def spawn(
    kernel: Os,
    argv: Sequence[str],
    group: Cgroup | None = None,
    *,
    stdin: str = "",
    cgroup_ns: Cgroup | None = None,
    stdout: Output | None = None,
    stderr: Output | None = None,
    cwd: str = "/",
) -> Process:
    """Start ``argv`` as a task in ``group``; :class:`ProgramNotFound` if no such program.

    ``cgroup_ns`` roots the task's cgroup namespace (a container's cgroup: what it sees
    at ``/sys/fs/cgroup``); ``None`` inherits the caller's, the init namespace from a
    thread that runs no task (:meth:`cpuplug.guest.sched.Scheduler.spawn`).
    ``stdout``/``stderr`` (default: a fresh :class:`Output` each) may be one
    :class:`Pipe`, a terminal's single stream.
    """
    if not argv:
        raise GuestOSError(errno.EINVAL, "argv")
    name = argv[0].rpartition("/")[2]
    program = PROGRAMS.get(name)
    if program is None:
        raise ProgramNotFound(argv[0])
    out = stdout if stdout is not None else Output()
    err = stderr if stderr is not None else Output()
    proc = Proc(kernel, group, out, err, stdin=stdin, cwd=cwd, name=name)
    task = kernel.sched.spawn(
        _main(program, proc, list(argv[1:])), group=group, name=name, cgroup_ns=cgroup_ns
    )
    return Process(argv, task, proc)

"""Supervising the host processes a sandbox owns: launch, identify, signal, reap.

A sandbox's VMM outlives the command that started it, and every later command is
a new process that finds it again from the state file.  A pid alone proves
nothing there: pids are recycled, and a state file can be stale, edited or
half-written.  So a process is only ever signalled through a
:class:`ProcessIdentity` that :meth:`ProcessIdentity.matches` proves is still the
process we started — same pid, same start time (``/proc/<pid>/stat`` field 22)
and, when recorded, the same executable.  An identity without a start time can
prove nothing and is never signalled (issue 8, D5: ``rm -f`` used to SIGTERM
whatever process held a recycled pid when the start time was null).

There is one escalation path, :func:`terminate`: an optional polite request
(QMP ``quit``) with a bounded wait, then SIGTERM, then SIGKILL, each with its own
bounded wait; children of this process are reaped so tests leave no zombies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Processes this process started, so they can be reaped (no zombies in tests)."""

POLITE_WAIT = 2.0
SIGNAL_WAIT = 5.0


@dataclass(frozen=True)
class ProcessIdentity:
    """What makes a pid *this* process: pid, start time and executable."""

    pid: int
    start_ticks: int | None
    exe: str | None = None

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The identity of the running process ``pid`` now, or None if there is none."""
        ticks = start_ticks(pid)
        if ticks is None:
            return None
        return cls(pid, ticks, executable(pid))

    def matches(self) -> bool:
        """True only if ``pid`` runs and is provably the process this identity names."""
        if self.start_ticks is None:
            return False  # nothing to prove it by: never treat it as ours
        if not process_alive(self.pid, self.start_ticks):
            return False
        return self.exe is None or executable(self.pid) in (self.exe, None)


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parens: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def executable(pid: int) -> str | None:
    """``/proc/<pid>/exe``'s target, or None if unreadable (exited, or not ours to see)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def process_alive(pid: int | None, ticks: int | None) -> bool:
    """True if ``pid`` still runs *and* has the start time ``ticks`` (if given).

    A zombie is dead (only not yet reaped — VMMs are re-parented to init when the
    ``run`` command exits), but a zombie *thread-group leader* whose other threads
    still run is alive: Linux shows the leader as ``Z`` once the main thread has
    exited, while the process goes on.
    """
    if pid is None:
        return False
    now = start_ticks(pid)
    if now is None or (ticks is not None and now != ticks):
        return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    state = fields.get("State", "").strip()[:1]
    threads = int(fields.get("Threads", "1").strip() or 1)
    return not (state in ("Z", "X") and threads <= 1)


def launch(
    argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> ProcessIdentity:
    """Start ``argv`` in its own session (a CLI's Ctrl-C must not reach the VMM),
    stdout and stderr appended to ``log_path``; returns its identity."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    _CHILDREN[proc.pid] = proc
    ident = ProcessIdentity.of(proc.pid)
    if ident is None:  # exited (and was reaped by nobody yet) before we looked
        proc.wait()
        _CHILDREN.pop(proc.pid, None)
        return ProcessIdentity(proc.pid, None, None)
    return ident


def adopt(proc: subprocess.Popen[bytes]) -> None:
    """Register a child started elsewhere, so :func:`terminate` reaps it."""
    _CHILDREN[proc.pid] = proc


def socket_peer(path: Path) -> ProcessIdentity | None:
    """The process serving the unix socket at ``path`` (``SO_PEERCRED``), if any.

    Peer credentials come from the kernel, not from a file anyone could edit, so
    they identify a VMM whose state file is lost or unreadable.
    """
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        s.connect(str(path))
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = int(struct.unpack("3i", creds)[0])
        if pid > 0 and pid != os.getpid():
            return ProcessIdentity.of(pid)
    return None


def wait_exit(ident: ProcessIdentity, timeout: float) -> bool:
    """True once the process has exited (reaping it if it is our child)."""
    proc = _CHILDREN.get(ident.pid)
    if proc is not None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        _CHILDREN.pop(ident.pid, None)
        return True
    deadline = time.monotonic() + timeout
    delay = 0.005
    while ident.matches():
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)  # not our child: there is no wait() to block on
        delay = min(delay * 2, 0.1)
    return True


def terminate(
    ident: ProcessIdentity,
    polite: Callable[[], None] | None = None,
    *,
    polite_wait: float = POLITE_WAIT,
    signal_wait: float = SIGNAL_WAIT,
) -> bool:
    """Make the process exit: ``polite()`` (e.g. QMP ``quit``), then SIGTERM, then SIGKILL.

    Each step waits (bounded) for the exit.  Nothing is signalled unless
    :meth:`ProcessIdentity.matches` proves it is still the process we mean.
    Returns True if it is gone (or was never provably ours), False if even SIGKILL
    did not end it in time.
    """
    if not ident.matches():
        _reap(ident.pid)
        return True
    if polite is not None:
        with contextlib.suppress(Exception):
            polite()
        if wait_exit(ident, polite_wait):
            return True
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not ident.matches():
            _reap(ident.pid)
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(ident.pid, sig)
        if wait_exit(ident, signal_wait):
            return True
    return not ident.matches()


def _reap(pid: int) -> None:
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)

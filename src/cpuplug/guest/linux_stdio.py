"""A real Linux process's stdio as the agent relays it to the host (``StreamedProcess``).

The process gets three pipes, or one terminal (``openpty``: the slave is its stdin,
stdout, stderr and controlling terminal), and the agent keeps the other ends. Nothing
is copied in the background: output waits in the pipe or the terminal until the host
asks (``ReadProcess``), so a host that reads slowly slows the process down, as a full
pipe does, and nothing is lost between the start and the first read.

The end of the output: once the process has exited, its pipes are read until every
writer closed them, or for :data:`DRAIN_GRACE` seconds at most (a background child that
inherited them would otherwise hold the exit status back for as long as it lives); the
exit status is reported with the last bytes. A terminal's master reads ``EIO`` once no
process has the slave open any more, which counts as its end of file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import struct
import termios
import threading
import time

from cpuplug.guest.agent_os import OutputChunk
from cpuplug.guest.linux_process import DRAIN_GRACE, LinuxProcess
from cpuplug.guest.vfs import GuestOSError

__all__ = ["LinuxStreams", "Pipes", "Terminal", "close_all", "close_child_ends"]

EOT = b"\x04"
"""What ends a terminal's input (its ``VEOF`` character, ^D by default)."""


class Pipes:
    """The agent's ends of a process's three pipes."""

    def __init__(self) -> None:
        in_r, self.stdin = os.pipe()
        self.stdout, out_w = os.pipe()
        self.stderr, err_w = os.pipe()
        self.child = (in_r, out_w, err_w)
        """The process's ends: its 0, 1 and 2 (closed here once it has them)."""

    @property
    def terminal(self) -> bool:
        return False


class Terminal:
    """The agent's end (the master) of a process's terminal."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.child = (slave, slave, slave)

    @property
    def terminal(self) -> bool:
        return True


class LinuxStreams:
    """A started process and the agent's ends of its stdio (see the module doc)."""

    def __init__(self, proc: LinuxProcess, io: Pipes | Terminal) -> None:
        self.proc = proc
        self._lock = threading.Lock()  # one reader at a time; also guards the fds
        self._out: dict[int, bytearray] = {}
        self._in: int | None
        if isinstance(io, Terminal):
            self._names = {io.master: "stdout"}
            self._in = os.dup(io.master)  # closed on its own by close_input
            self._master: int | None = io.master
        else:
            self._names = {io.stdout: "stdout", io.stderr: "stderr"}
            self._in = io.stdin
            self._master = None
        for fd in [*self._names, self._in]:
            os.set_blocking(fd, False)
        self._ended_at: float | None = None

    # ------------------------------------------------------------------ AgentProcess

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def exit_code(self) -> int | None:
        return self.proc.exit_code

    def wait(self, timeout: float | None) -> bool:
        return self.proc.wait(timeout)

    def kill(self, signal: int) -> None:
        self.proc.kill(signal)

    def output(self) -> tuple[str, str]:
        return "", ""  # streamed: the host has read it

    # ------------------------------------------------------------------ StreamedProcess

    def read_output(self, limit: int, timeout: float) -> OutputChunk:
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=timeout):
            return OutputChunk(b"", b"", None)  # another read holds the streams
        try:
            got = {"stdout": b"", "stderr": b""}
            while True:
                ended = self.proc.poll()
                if ended and self._ended_at is None:
                    self._ended_at = time.monotonic()
                for fd in self._readable(deadline, ended):
                    got[self._names[fd]] += self._read(fd, limit - len(got[self._names[fd]]))
                drained = not self._names or (
                    self._ended_at is not None
                    and time.monotonic() - self._ended_at >= DRAIN_GRACE
                )
                if ended and drained:
                    self._close_output()
                    return OutputChunk(got["stdout"], got["stderr"], self.proc.exit_code)
                if got["stdout"] or got["stderr"] or time.monotonic() >= deadline:
                    return OutputChunk(got["stdout"], got["stderr"], None)
        finally:
            self._lock.release()

    def _readable(self, deadline: float, ended: bool) -> list[int]:
        """The output fds with something to read (an end of file counts), waiting for
        one until ``deadline`` (or, once the process ended, the drain's end)."""
        wait = deadline - time.monotonic()
        if ended and self._ended_at is not None:
            wait = min(wait, self._ended_at + DRAIN_GRACE - time.monotonic())
        fds = list(self._names)
        if ended:
            if not fds:
                return []
            with contextlib.suppress(InterruptedError):
                return list(select.select(fds, [], [], max(0.0, wait))[0])
            return []
        return self.proc.select(fds, wait)

    def _read(self, fd: int, room: int) -> bytes:
        if room <= 0:
            return b""
        try:
            data = os.read(fd, room)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: a terminal nobody holds any more
                raise GuestOSError(exc.errno or errno.EIO, "stdout") from None
            data = b""
        if not data:
            self._close(fd)
        return data

    def _close(self, fd: int) -> None:
        self._names.pop(fd, None)
        if fd == self._master:
            return  # closed with everything else in close(): resize still needs it
        with contextlib.suppress(OSError):
            os.close(fd)

    def _close_output(self) -> None:
        for fd in list(self._names):
            self._close(fd)

    def write_input(self, data: bytes, timeout: float) -> int:
        fd = self._in
        if fd is None:
            raise GuestOSError(errno.EPIPE, "stdin")
        deadline = time.monotonic() + timeout
        written = 0
        while written < len(data):
            try:
                _, ready, _ = select.select([], [fd], [], max(0.0, deadline - time.monotonic()))
            except InterruptedError:
                continue
            if not ready:
                break
            try:
                written += os.write(fd, data[written : written + 65536])
            except BlockingIOError:
                continue
            except OSError as exc:
                raise GuestOSError(exc.errno or errno.EIO, "stdin") from None
        return written

    def close_input(self) -> None:
        fd, self._in = self._in, None
        if fd is None:
            return
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.write(fd, EOT)
        with contextlib.suppress(OSError):
            os.close(fd)

    def signal(self, signal: int) -> None:
        if self.proc.poll():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal)

    def resize(self, rows: int, cols: int) -> None:
        if self._master is None:
            return
        try:
            fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except OSError as exc:
            raise GuestOSError(exc.errno or errno.EIO, "terminal") from None

    def close(self) -> None:
        with self._lock:
            self._close_output()
            self.close_input()
            master, self._master = self._master, None
            if master is not None:
                with contextlib.suppress(OSError):
                    os.close(master)


def close_child_ends(io: Pipes | Terminal) -> None:
    """Close the process's ends in the agent once the process has them (or failed)."""
    for fd in set(io.child):
        with contextlib.suppress(OSError):
            os.close(fd)


def close_all(io: Pipes | Terminal) -> None:
    """Close every descriptor of ``io`` (a process that could not be started)."""
    close_child_ends(io)
    ours = [io.master] if isinstance(io, Terminal) else [io.stdin, io.stdout, io.stderr]
    for fd in ours:
        with contextlib.suppress(OSError):
            os.close(fd)

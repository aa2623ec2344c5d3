"""``--console-socket``: the terminal runc hands to its caller, and the shim's side of it.

For ``docker run -t`` containerd passes a unix socket; runc opens a pty and sends its
master over that socket with ``SCM_RIGHTS`` (the data of the message is the pty's
name), and the container gets the slave. cpuplug-runc does the same on the host, and
the shim takes the slave: it becomes the shim's stdin, stdout, stderr and controlling
terminal, in raw mode, since the terminal that interprets input and output is the
one in the guest (the host pty only carries bytes). containerd resizes the master;
the kernel tells the shim with SIGWINCH and the shim passes the size on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import termios
import tty
from pathlib import Path

from cpuplug.oci.state import OciError

SEND_TIMEOUT = 10.0


def open_pty() -> tuple[int, int]:
    """A new pty: (master, slave), both close-on-exec."""
    return os.openpty()


def send_master(console_socket: Path, master: int, name: str) -> None:
    """Send the pty master over the console socket as runc does (``utils.SendFd``): the
    message's data is the terminal's name (``/dev/pts/N``)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(str(console_socket))
            socket.send_fds(sock, [name.encode()], [master])
    except OSError as exc:
        why = exc.strerror or exc
        raise OciError(f"cannot send the console to {console_socket}: {why}") from None


def take_terminal(fd: int = 0) -> None:
    """Make ``fd`` (the slave) this session's controlling terminal, in raw mode."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
    with contextlib.suppress(termios.error):
        tty.setraw(fd)


def window_size(fd: int = 0) -> tuple[int, int] | None:
    """(rows, cols) of the terminal ``fd``, None when it is not one or has no size."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None

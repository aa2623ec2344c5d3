"""The agent channel of a real Linux guest: a virtio-serial port, one byte stream.

QEMU gives the agent a ``virtserialport`` whose host end is a chardev socket
(docs/real-backends.md: there is no vhost-vsock on the machines measured). The guest
side, as Linux's ``drivers/char/virtio_console.c`` implements it:

* The port is ``/dev/vportNpM``, named by ``/sys/class/virtio-ports/vportNpM/name``;
  devtmpfs does not create ``/dev/virtio-ports/NAME`` (udev does), so the name is
  looked up in sysfs (:func:`find_port`).
* One opener at a time (a second ``open`` gets EBUSY), and the open file is the whole
  channel: there are no connections, only bytes, whoever the host client is.
* While no host client is connected a ``read`` returns 0 (end of file) and ``poll``
  reports POLLHUP; a write would block until a client connects. The host may connect
  before the guest opens the port; what it wrote meanwhile waits in the port.
* When the host client leaves, QEMU tells the guest, and reads return what is
  buffered and then 0 again.

:class:`SerialChannel` turns that into the agent's ``one_stream`` channel: ``accept``
returns a :class:`SerialSession` (an ``hw.Stream``) while a host client is connected,
one session at a time; a session ends at the port's end of file, or when the agent
closes it. Nothing about the port tells a connect from a poll loop (POLLHUP is
reported for as long as no client is there), so while nobody is connected the
channel looks again every :data:`HOST_POLL` seconds. The file descriptor stays open
across sessions, so the port never bounces between sessions.

A pty master behaves the same way (EOF/EIO and POLLHUP while no slave is open, data
again once one is), and a socket does until its peer closes: tests stand either in for
the port with :meth:`SerialChannel.from_fd`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import threading
import time
from pathlib import Path

__all__ = ["HOST_POLL", "PORT_NAME", "SerialChannel", "SerialSession", "find_port"]

PORT_NAME = "cpuplug.agent"
"""The ``virtserialport`` name the runtime gives the agent's port (``name=`` in QEMU's
``-device virtserialport``)."""
HOST_POLL = 0.05
"""How often to look for a host client while none is connected, in seconds."""
SEND_POLL = 0.25
"""How long one wait for room in the port lasts before the session is checked again."""
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


def find_port(name: str = PORT_NAME, root: str | Path = "/") -> Path | None:
    """The device node of the virtio-serial port called ``name``, or None if none is.

    ``/sys/class/virtio-ports/vportNpM/name`` holds the name; the node is
    ``/dev/vportNpM`` (both under ``root``).
    """
    ports = Path(root, "sys/class/virtio-ports")
    try:
        entries = sorted(ports.iterdir())
    except OSError:
        return None
    for entry in entries:
        with contextlib.suppress(OSError):
            if (entry / "name").read_text().strip() == name:
                return Path(root, "dev", entry.name)
    return None


class SerialSession:
    """One host client's time on the port: an ``hw.Stream`` over the channel's descriptor."""

    def __init__(self, channel: SerialChannel, first: bytes = b"") -> None:
        self._channel = channel
        self._fd = channel.fd
        self._first = first
        self._ended = threading.Event()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def wait_ended(self, timeout: float | None) -> bool:
        return self._ended.wait(timeout)

    def recv(self, max_bytes: int, timeout: float | None) -> bytes | None:
        """Bytes from the host; ``b""`` once the session ended; ``None`` on timeout."""
        if self._first:
            data, self._first = self._first[:max_bytes], self._first[max_bytes:]
            return data
        if self.ended:
            return b""
        if not _poll(self._fd, select.POLLIN, timeout):
            return None
        try:
            data = os.read(self._fd, max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno != errno.EIO:  # a pty master with no slave says EIO
                raise
            data = b""
        if not data:
            self._ended.set()
        return data

    def send(self, data: bytes) -> None:
        """Write all of ``data``; BrokenPipeError once the session ended or the host left.

        The port is non-blocking: while it has no room the writer polls for it, and a
        POLLHUP meanwhile (the host client left) ends the session instead of leaving
        the writer blocked until the next client arrives, which would hand that client
        the rest of a reply meant for the one that left.
        """
        view = memoryview(data)
        while view:
            if self.ended:
                raise BrokenPipeError(errno.EPIPE, "agent session ended")
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                if _poll(self._fd, select.POLLOUT, SEND_POLL) & _GONE:
                    self._ended.set()
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.EPIPE):
                    raise
                self._ended.set()

    def close(self) -> None:
        """End the session (the port stays open for the next one)."""
        self._ended.set()


class SerialChannel:
    """The agent's ``one_stream`` channel over one virtio-serial port (see the module doc)."""

    one_stream = True

    def __init__(self, fd: int, label: str) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.label = label
        self._lock = threading.Lock()
        self._session: SerialSession | None = None
        self._closed = False

    @classmethod
    def open(cls, device: str | Path) -> SerialChannel:
        """Open the port's device node (read-write, non-blocking, no controlling tty)."""
        fd = os.open(device, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        return cls(fd, str(device))

    @classmethod
    def from_fd(cls, fd: int, label: str = "fd") -> SerialChannel:
        """A channel over an already open stream descriptor (a pty master, a socket)."""
        return cls(fd, label)

    def accept(self, timeout: float | None) -> SerialSession | None:
        """The next host session once the current one ended; None if ``timeout`` passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            with self._lock:
                current = self._session
            if current is not None and not current.ended:
                current.wait_ended(remaining)
                continue
            session = self._probe()
            if session is not None:
                with self._lock:
                    self._session = session
                return session
            wait = HOST_POLL if remaining is None else min(HOST_POLL, remaining)
            time.sleep(wait)
        return None

    def _probe(self) -> SerialSession | None:
        """A new session if a host client is there (or left requests behind), else None."""
        if not _poll(self.fd, select.POLLIN, 0) & _GONE:
            return SerialSession(self)  # connected: readable or quiet, but no hang-up
        try:
            left_behind = os.read(self.fd, 65536)  # a client that wrote and already left
        except OSError:
            return None
        return SerialSession(self, left_behind) if left_behind else None

    def close(self) -> None:
        """End the current session and close the port."""
        self._closed = True
        with self._lock:
            session = self._session
        if session is not None:
            session.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _poll(fd: int, events: int, timeout: float | None) -> int:
    """The events ``poll`` reports on ``fd`` within ``timeout`` seconds (0 if none)."""
    poller = select.poll()
    poller.register(fd, events)
    ms = None if timeout is None else max(0, int(timeout * 1000))
    try:
        ready = poller.poll(ms)
    except InterruptedError:
        return 0
    return ready[0][1] if ready else 0

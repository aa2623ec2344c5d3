"""The agent channel device: virtio-vsock's role between the host and the guest agent.

The VMM listens on a unix socket (``--agent unix:PATH``). Each host connection
becomes one :class:`ChannelStream` that guest code takes with
:meth:`AgentChannelDevice.accept` — the guest never sees the socket, only the
``cpuplug.hw.Stream`` device interface, the way a guest sees a vsock device and
not the host's AF_VSOCK plumbing. The bytes are relayed verbatim; the agent
protocol is none of the VMM's business.

All relaying happens on ONE selector thread for the whole device, however many
connections are open, so the VMM's thread count stays "plugged vCPUs + a fixed
overhead" (docs/contract.md §1, §10 measure it). Closing either end closes the other:

* host closes → the guest's ``recv`` returns ``b""`` once buffered bytes are
  read; the guest may still answer a host that only half-closed, and ``send``
  raises :class:`BrokenPipeError` once the host end is really gone;
* guest ``close()`` → pending guest bytes are flushed, then the host socket is
  closed, so the host reads EOF.

Buffers are bounded in both directions (:data:`BUFFER_LIMIT`): a host that
writes faster than the guest reads stops being read (the socket applies
backpressure); a guest that sends faster than the host reads blocks in
``send``. Nothing a client does can grow the VMM's memory without bound.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from collections import deque

from cpuplug.errors import CpuplugError, UsageError
from cpuplug.vmm.sockpath import claim_socket_path

log = logging.getLogger(__name__)

#: Most bytes buffered per direction per connection before backpressure applies.
BUFFER_LIMIT = 4 * 1024 * 1024
_READ_CHUNK = 256 * 1024


class AgentChannelError(CpuplugError):
    """The agent channel cannot listen where it was asked to."""


class ChannelStream:
    """One relayed connection, as the guest sees it (``cpuplug.hw.Stream``).

    Methods are called from guest (vCPU) threads; the relay thread moves bytes
    between the buffers here and the host socket.
    """

    def __init__(self, device: AgentChannelDevice, sock: socket.socket) -> None:
        self._device = device
        self.sock = sock
        self._cond = threading.Condition()
        self._inbound = bytearray()  # host → guest
        self._outbound = bytearray()  # guest → host
        self._host_eof = False  # the host end will send nothing more
        self._host_gone = False  # the host socket is closed (error, EOF or shutdown)
        self._guest_closed = False

    # -- guest side (cpuplug.hw.Stream) -------------------------------------------------

    def recv(self, max_bytes: int, timeout: float | None) -> bytes | None:
        """Up to ``max_bytes`` bytes; ``b""`` at end of stream; ``None`` on timeout."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._inbound:
                if self._host_eof or self._host_gone or self._guest_closed:
                    return b""
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            was_full = len(self._inbound) >= BUFFER_LIMIT
            data = bytes(self._inbound[:max_bytes])
            del self._inbound[:max_bytes]
        if was_full:
            self._device.wake()  # reading from the host was paused; resume it
        return data

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the host; blocks while the host is not reading.

        Raises :class:`BrokenPipeError` once either end has closed, as a
        socket would: the guest must learn that its peer went away.
        """
        view = memoryview(bytes(data))
        while view:
            with self._cond:
                while (
                    len(self._outbound) >= BUFFER_LIMIT
                    and not self._host_gone
                    and not self._guest_closed
                ):
                    self._cond.wait()
                if self._host_gone or self._guest_closed:
                    raise BrokenPipeError("agent channel connection closed")
                room = BUFFER_LIMIT - len(self._outbound)
                self._outbound += view[:room]
                view = view[room:]
            self._device.wake()

    def close(self) -> None:
        """Close from the guest side: flush what was sent, then close the host end."""
        with self._cond:
            self._guest_closed = True
            self._cond.notify_all()
        self._device.wake()

    # -- relay side ---------------------------------------------------------------------

    def _wants_read(self) -> bool:
        with self._cond:
            return (
                not self._host_eof and not self._guest_closed and len(self._inbound) < BUFFER_LIMIT
            )

    def _wants_write(self) -> bool:
        with self._cond:
            return bool(self._outbound)

    def _finished(self) -> bool:
        """True when the host socket should be closed now (everything sent is flushed)."""
        with self._cond:
            if self._host_gone:
                return True
            # After a host EOF the guest may still answer (a half-closed host
            # reads on), so the host end is closed once the guest closes too.
            return self._guest_closed and not self._outbound

    def _on_readable(self) -> None:
        try:
            chunk = self.sock.recv(_READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
            self._mark_gone()
        with self._cond:
            if chunk:
                self._inbound += chunk
            else:
                self._host_eof = True
            self._cond.notify_all()

    def _on_writable(self) -> None:
        with self._cond:
            pending = bytes(self._outbound[:_READ_CHUNK])
        try:
            sent = self.sock.send(pending)
        except BlockingIOError:
            return
        except OSError:
            self._mark_gone()
            return
        with self._cond:
            del self._outbound[:sent]
            self._cond.notify_all()

    def _mark_gone(self) -> None:
        with self._cond:
            self._host_gone = True
            self._outbound.clear()
            self._cond.notify_all()


class AgentChannelDevice:
    """The device plus its host listener (``cpuplug.hw.AgentChannel``)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        """``path=None`` makes a device with no host listener (nothing ever connects)."""
        self.path = None if path is None else os.fspath(path)
        self._lock = threading.Condition()
        self._pending: deque[ChannelStream] = deque()
        self._streams: set[ChannelStream] = set()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._registered: dict[ChannelStream, int] = {}  # relay thread only
        self.accepted_total = 0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Listen on the socket path (mode 0600) and start the relay thread."""
        if self.path is not None:
            self._listener = self._listen(self.path)
            self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(
            target=self._relay_loop, name="agent-channel-relay", daemon=True
        )
        self._thread.start()

    @staticmethod
    def _listen(path: str) -> socket.socket:
        try:
            claim_socket_path(path, "agent")  # stale: replaced; live or not a socket: refused
        except UsageError as exc:
            raise AgentChannelError(str(exc)) from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600: only the owner may talk to the agent
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise AgentChannelError(f"cannot listen on agent socket {path}: {exc}") from exc
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        return sock

    def close(self, timeout: float = 5.0) -> None:
        """Close every connection and the listener, remove the socket, end the thread."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("agent channel relay did not stop within %.1fs", timeout)
        if self._thread is None or not self._thread.is_alive():
            self._teardown()

    def _teardown(self) -> None:
        for stream in list(self._streams):
            stream._mark_gone()
            with contextlib.suppress(OSError):
                stream.sock.close()
        self._streams.clear()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
            if self.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        with contextlib.suppress(OSError):
            self._wake_r.close()
        with contextlib.suppress(OSError):
            self._wake_w.close()
        with contextlib.suppress(OSError, ValueError):
            self._selector.close()

    def wake(self) -> None:
        """Make the relay thread re-evaluate its buffers (called from guest threads)."""
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # -- guest side (cpuplug.hw.AgentChannel) -------------------------------------------

    def accept(self, timeout: float | None) -> ChannelStream | None:
        """The next connection the host opened, or ``None`` on timeout or shutdown."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._pending:
                if self._closing:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._lock.wait(remaining)
            return self._pending.popleft()

    @property
    def open_connections(self) -> int:
        """Host connections currently relayed (accepted by the guest or not)."""
        with self._lock:
            return len(self._streams)

    # -- relay thread -------------------------------------------------------------------

    def _relay_loop(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closing:
                        break
                self._update_interest()
                for key, events in self._selector.select():
                    obj = key.fileobj
                    if obj is self._wake_r:
                        with contextlib.suppress(BlockingIOError, OSError):
                            while self._wake_r.recv(4096):
                                pass
                    elif obj is self._listener:
                        self._accept_host()
                    else:
                        stream: ChannelStream = key.data
                        if events & selectors.EVENT_READ:
                            stream._on_readable()
                        if events & selectors.EVENT_WRITE:
                            stream._on_writable()
                self._reap_finished()
        except Exception:  # a relay bug must not kill the VMM silently
            log.exception("agent channel relay failed")
        finally:
            self._teardown()

    def _accept_host(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("agent channel accept failed: %s", exc)
            return
        conn.setblocking(False)
        stream = ChannelStream(self, conn)
        with self._lock:
            self._streams.add(stream)
            self._pending.append(stream)
            self.accepted_total += 1
            self._lock.notify_all()

    def _update_interest(self) -> None:
        """Register each connection for exactly the directions that can make progress.

        A connection with nothing to do is unregistered, so a guest that does not
        drain its inbound buffer never makes the relay spin.
        """
        for stream in list(self._streams):
            mask = 0
            if stream._wants_read():
                mask |= selectors.EVENT_READ
            if stream._wants_write():
                mask |= selectors.EVENT_WRITE
            current = self._registered.get(stream, 0)
            if mask == current:
                continue
            if current == 0:
                self._selector.register(stream.sock, mask, stream)
            elif mask == 0:
                self._selector.unregister(stream.sock)
            else:
                self._selector.modify(stream.sock, mask, stream)
            if mask:
                self._registered[stream] = mask
            else:
                self._registered.pop(stream, None)

    def _reap_finished(self) -> None:
        for stream in list(self._streams):
            if stream._finished():
                if self._registered.pop(stream, 0):
                    with contextlib.suppress(KeyError, ValueError):
                        self._selector.unregister(stream.sock)
                with contextlib.suppress(OSError):
                    stream.sock.close()
                stream._mark_gone()
                with self._lock:
                    self._streams.discard(stream)
                    with contextlib.suppress(ValueError):
                        self._pending.remove(stream)

"""The host process of a QEMU sandbox: QEMU's parent and the agent channel's multiplexer.

QEMU gives the guest agent one byte stream (a virtio-serial port whose host end is a
chardev unix socket that takes one client at a time), while every ``cpuplug`` command
opens its own connection to the agent — an ``exec`` may run for hours while an
``update`` needs the agent now.  This process is Kata 1.x's ``kata-proxy`` for that
stream: it holds the one connection to QEMU's chardev and serves any number of
clients on the sandbox's ``agent.sock``, rewriting request ids on the way in (each
client's ids are its own) and back on the way out, and copying guest events to the
clients that subscribed.  The guest agent answers requests out of order by id, so
a long ``ExecProcess`` does not hold up an ``OnlineCPUMem``.

It is also QEMU's parent, so the sandbox is one process tree: it starts QEMU with a
parent-death signal (a SIGKILLed proxy takes QEMU with it), stops QEMU on SIGTERM,
and exits with QEMU.  Run as ``python -m cpuplug.runtime.hypervisors.vmm_proxy
--agent-guest SOCK --agent-listen SOCK -- QEMU ARGV...``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpuplug import agent_protocol as ap

CONNECT_TIMEOUT = 30.0
"""How long to wait for QEMU's chardev socket to appear."""
PR_SET_PDEATHSIG = 1


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    subscribed: bool = False
    closed: bool = False

    def send(self, message: dict[str, Any]) -> None:
        try:
            frame = ap.encode_frame(message)
            with self.send_lock:
                self.sock.sendall(frame)
        except (OSError, ap.ProtocolError):
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


class AgentMux:
    """Many host clients over one guest stream, by rewriting request ids."""

    def __init__(self, guest: socket.socket) -> None:
        self.guest = guest
        self._guest_lock = threading.Lock()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[_Client, ap.RequestId, bool]] = {}
        self._clients: set[_Client] = set()
        self.closed = threading.Event()

    # ------------------------------------------------------------------ clients

    def serve_client(self, sock: socket.socket) -> None:
        """Relay one client's requests until it disconnects (on its own thread)."""
        client = _Client(sock)
        with self._lock:
            self._clients.add(client)
        decoder = ap.FrameDecoder()
        try:
            while not client.closed and not self.closed.is_set():
                data = sock.recv(65536)
                if not data:
                    break
                for body in decoder.feed(data):
                    self._forward(client, body)
        except (OSError, ap.FrameError):
            pass
        finally:
            client.close()
            with self._lock:
                self._clients.discard(client)
                for wire in [w for w, (c, _, _) in self._pending.items() if c is client]:
                    del self._pending[wire]  # a late reply to a gone client is dropped

    def _forward(self, client: _Client, body: bytes) -> None:
        try:
            message = ap.parse_body(body)
        except ap.ProtocolError as exc:
            client.send(ap.error_from_exception(exc))
            return
        req_id = message.get("id")
        if not isinstance(req_id, int | str) or isinstance(req_id, bool):
            # Let the agent refuse it in its own words; the reply has no id to route,
            # so it is answered here instead.
            client.send(ap.make_error(None, ap.ErrorCode.EPROTO, "request without a valid id"))
            return
        wire = next(self._ids)
        subscribe = message.get("method") == ap.Method.SUBSCRIBE_EVENTS.value
        with self._lock:
            self._pending[wire] = (client, req_id, subscribe)
        try:
            frame = ap.encode_frame({**message, "id": wire})
            with self._guest_lock:
                self.guest.sendall(frame)
        except (OSError, ap.ProtocolError) as exc:
            with self._lock:
                self._pending.pop(wire, None)
            client.send(ap.make_error(req_id, ap.ErrorCode.EIO, f"agent channel: {exc}"))

    # ------------------------------------------------------------------ guest

    def pump_guest(self) -> None:
        """Route the guest's replies and events until the stream ends."""
        decoder = ap.FrameDecoder()
        try:
            while True:
                data = self.guest.recv(65536)
                if not data:
                    break
                for body in decoder.feed(data):
                    self._route(body)
        except (OSError, ap.FrameError):
            pass
        finally:
            self.closed.set()
            with self._lock:
                clients = list(self._clients)
            for c in clients:
                c.close()

    def _route(self, body: bytes) -> None:
        try:
            message = ap.parse_body(body)
        except ap.ProtocolError:
            return
        if "event" in message:
            with self._lock:
                subscribers = [c for c in self._clients if c.subscribed]
            for c in subscribers:
                c.send(message)
            return
        wire = message.get("id")
        with self._lock:
            entry = self._pending.pop(wire, None) if isinstance(wire, int) else None
            if entry is not None and entry[2] and "result" in message:
                entry[0].subscribed = True
        if entry is not None:
            client, req_id, _ = entry
            client.send({**message, "id": req_id})


def _pdeathsig() -> None:
    """In QEMU's child: die with the proxy (Linux's PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _connect_guest(path: Path, qemu: subprocess.Popen[bytes], timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        if qemu.poll() is not None:
            raise SystemExit(f"vmm_proxy: QEMU exited (status {qemu.returncode}) before serving")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            return s
        except OSError:
            s.close()
            if time.monotonic() >= deadline:
                why = f"vmm_proxy: no agent chardev at {path} after {timeout:g}s"
                raise SystemExit(why) from None
            time.sleep(delay)  # QEMU creates the socket when it gets there; no event to wait on
            delay = min(delay * 2, 0.1)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vmm_proxy")
    p.add_argument("--agent-guest", required=True, type=Path, help="QEMU's chardev socket")
    p.add_argument("--agent-listen", required=True, type=Path, help="agent.sock to serve")
    p.add_argument("qemu", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    qemu_argv = args.qemu[1:] if args.qemu[:1] == ["--"] else args.qemu
    if not qemu_argv:
        p.error("no QEMU command line after --")
    qemu = subprocess.Popen(qemu_argv, stdin=subprocess.DEVNULL, preexec_fn=_pdeathsig)

    def stop(_signo: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            qemu.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        guest = _connect_guest(args.agent_guest, qemu, CONNECT_TIMEOUT)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        stop(0, None)
        qemu.wait()
        return 1
    mux = AgentMux(guest)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        args.agent_listen.unlink()
    listener.bind(str(args.agent_listen))
    os.chmod(args.agent_listen, 0o600)
    listener.listen(64)
    threading.Thread(target=mux.pump_guest, name="agent-guest", daemon=True).start()

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(
                target=mux.serve_client, args=(sock,), name="agent-client", daemon=True
            ).start()

    threading.Thread(target=accept, name="agent-accept", daemon=True).start()
    status = qemu.wait()
    listener.close()
    with contextlib.suppress(OSError):
        args.agent_listen.unlink()
    print(f"vmm_proxy: QEMU exited with status {status}", file=sys.stderr)
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""The QEMU sandbox's host process: agent multiplexing and QEMU's lifetime.

The guest end here is a scripted agent on a socketpair (what QEMU's virtio-serial
chardev hands the proxy is one byte stream); QEMU itself is stood in for by a small
Python program that serves the chardev socket, so the proxy's process handling (the
parent-death signal, SIGTERM, exit with QEMU) is exercised for real.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cpuplug import agent_protocol as ap
from cpuplug.runtime.agent_client import AgentClient
from cpuplug.runtime.hypervisors.vmm_proxy import AgentMux
from cpuplug.runtime.process import ProcessIdentity, process_alive, wait_exit


class ScriptedGuest:
    """The guest agent's end of the stream: answers ``GuestDetails`` at once and
    ``ExecProcess`` after ``release`` is set (out of order), emits events on demand."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.release = threading.Event()
        self.seen_ids: list[Any] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def send(self, message: dict[str, Any]) -> None:
        with self._lock, contextlib.suppress(OSError):  # the test may be over
            self.sock.sendall(ap.encode_frame(message))

    def _run(self) -> None:
        decoder = ap.FrameDecoder()
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            for body in decoder.feed(data):
                msg = ap.parse_body(body)
                self.seen_ids.append(msg["id"])
                if msg["method"] == "ExecProcess":
                    threading.Thread(target=self._slow, args=(msg["id"],), daemon=True).start()
                else:
                    self.send(ap.make_reply(msg["id"], {"method": msg["method"]}))

    def _slow(self, wire_id: int) -> None:
        self.release.wait(10)
        self.send(ap.make_reply(wire_id, {"exit_code": 0, "stdout": "done\n", "stderr": ""}))


@pytest.fixture
def mux() -> Iterator[tuple[AgentMux, ScriptedGuest, Path]]:
    d = Path(tempfile.mkdtemp(prefix="mx", dir="/tmp"))
    host, guest_end = socket.socketpair()
    m = AgentMux(host)
    guest = ScriptedGuest(guest_end)
    threading.Thread(target=m.pump_guest, daemon=True).start()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(d / "agent.sock"))
    listener.listen(8)

    def accept() -> None:
        while True:
            try:
                s, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=m.serve_client, args=(s,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield m, guest, d / "agent.sock"
    guest.release.set()
    listener.shutdown(socket.SHUT_RDWR)  # shutdown, not close: it wakes a blocked accept
    listener.close()
    guest_end.shutdown(socket.SHUT_RDWR)  # the stream ends: the proxy sees EOF
    assert m.closed.wait(5)
    guest_end.close()
    host.close()
    (d / "agent.sock").unlink()
    d.rmdir()


def test_clients_share_the_stream_and_replies_come_back_by_id(
    mux: tuple[AgentMux, ScriptedGuest, Path],
) -> None:
    """A long exec on one client does not hold up another client's call, and both
    clients' own request ids (both start at 1) come back to the right one."""
    _, guest, path = mux
    slow = AgentClient(path, timeout=10).connect()
    fast = AgentClient(path, timeout=10).connect()
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(slow.exec_process("c", ["sleep", "9"])))
    t.start()
    try:
        deadline = time.monotonic() + 5
        while len(guest.seen_ids) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert fast.call(ap.Method.GUEST_DETAILS, {}) == {"method": "GuestDetails"}
        assert not out, "the exec must still be running"
    finally:
        guest.release.set()
        t.join(10)
        slow.close()
        fast.close()
    assert out["stdout"] == "done\n"
    assert len(set(guest.seen_ids)) == len(guest.seen_ids), "wire ids are unique"


def test_events_go_to_subscribers_only_and_a_gone_client_loses_nothing_else(
    mux: tuple[AgentMux, ScriptedGuest, Path],
) -> None:
    _, guest, path = mux
    sub = socket.socket(socket.AF_UNIX)
    sub.connect(str(path))
    other = AgentClient(path, timeout=10).connect()
    try:
        ap.send_message(sub, ap.make_request(7, ap.Method.SUBSCRIBE_EVENTS, {}))
        assert ap.recv_message(sub, 5) == {"id": 7, "result": {"method": "SubscribeEvents"}}
        guest.send(ap.make_event("CpuOnline", {"cpu": 3}, 1.5))
        assert ap.recv_message(sub, 5)["event"] == "CpuOnline"
        # a client that leaves with a request in flight: its late reply is dropped
        gone = socket.socket(socket.AF_UNIX)
        gone.connect(str(path))
        ap.send_message(gone, ap.make_request(1, ap.Method.EXEC_PROCESS, {}))
        gone.close()
        guest.release.set()
        assert other.call(ap.Method.GUEST_DETAILS, {}) == {"method": "GuestDetails"}
    finally:
        sub.close()
        other.close()


def test_a_request_without_an_id_is_answered_by_the_proxy(
    mux: tuple[AgentMux, ScriptedGuest, Path],
) -> None:
    _, guest, path = mux
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    try:
        ap.send_message(s, {"method": "GuestDetails", "params": {}})
        reply = ap.recv_message(s, 5)
        assert reply["id"] is None and reply["error"]["code"] == "EPROTO"
        assert guest.seen_ids == []
    finally:
        s.close()


FAKE_QEMU = """
import signal, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen(1)
conn, _ = s.accept()
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while conn.recv(4096):
    pass
"""


def _proxy(d: Path) -> tuple[subprocess.Popen[bytes], Path]:
    script = d / "fake_qemu.py"
    script.write_text(FAKE_QEMU)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpuplug.runtime.hypervisors.vmm_proxy",
         "--agent-guest", str(d / "g.sock"), "--agent-listen", str(d / "a.sock"),
         "--", sys.executable, str(script), str(d / "g.sock")],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not (d / "a.sock").exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the proxy never listened"
        time.sleep(0.01)
    return proc, script


def _qemu_child(proxy_pid: int) -> ProcessIdentity:
    children = Path(f"/proc/{proxy_pid}/task/{proxy_pid}/children").read_text().split()
    assert len(children) == 1, children
    ident = ProcessIdentity.of(int(children[0]))
    assert ident is not None
    return ident


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_the_proxy_and_qemu_live_and_die_together(how: str) -> None:
    """SIGTERM stops QEMU and the proxy exits; a SIGKILLed proxy takes QEMU with it
    (parent-death signal), so a sandbox never leaves a QEMU behind."""
    d = Path(tempfile.mkdtemp(prefix="px", dir="/tmp"))
    proc, _ = _proxy(d)
    try:
        qemu = _qemu_child(proc.pid)
        os.kill(proc.pid, getattr(signal, how))
        proc.wait(20)
        assert wait_exit(qemu, 10), "QEMU outlived its proxy"
        assert not process_alive(qemu.pid, qemu.start_ticks)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
        for f in d.iterdir():
            f.unlink()
        d.rmdir()

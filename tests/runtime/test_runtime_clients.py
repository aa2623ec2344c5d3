"""The runtime's QMP layer against the real ``cpuplug vmm`` process, and the agent client.

The VMM runs with ``--kernel none``: no guest answers the ACPI eject, which is
exactly the case where Go Kata's ``device_del`` waits forever.
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

import pytest

from cpuplug import agent_protocol as ap
from cpuplug.runtime import resize as rz
from cpuplug.runtime.agent_client import AgentClient, AgentUnreachable, wait_for_agent
from cpuplug.runtime.hypervisors import qmp as qh
from cpuplug.runtime.qmp_client import (
    QmpCommandError,
    QmpConnection,
    VmmGone,
    VmmUnreachable,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def vmm() -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    d = Path(tempfile.mkdtemp(prefix="cpq", dir="/tmp"))
    qmp = d / "q.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cpuplug",
            "vmm",
            "--smp",
            "cpus=1,maxcpus=4",
            "--kernel",
            "none",
            "--qmp",
            f"unix:{qmp}",
            "--agent",
            f"unix:{d / 'a.sock'}",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not qmp.exists():
            assert proc.poll() is None, "vmm exited"
            assert time.monotonic() < deadline, "vmm did not create its QMP socket"
            time.sleep(0.02)
        yield proc, qmp
    finally:
        proc.kill()
        proc.wait(10)
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def test_unreachable_vmm(tmp_path: Path) -> None:
    with pytest.raises(VmmUnreachable, match="cannot connect"):
        QmpConnection(tmp_path / "nope.sock").connect()


def test_commands_errors_and_integer_props(vmm: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, qmp = vmm
    with QmpConnection(qmp) as q:
        slots = qh.query_slots(q)
        assert [s.core_id for s in slots] == [0, 1, 2, 3] and slots[0].plugged
        qh.hot_add(q, slots[2], rz.StepLog())
        cpus = q.execute("query-cpus-fast")
        assert sorted(c["props"]["core-id"] for c in cpus) == [0, 2]
        assert all(c["thread-id"] > 0 for c in cpus)
        with pytest.raises(QmpCommandError, match="Duplicate") as err:
            q.execute("device_add", {"driver": slots[2].type, "id": "cpu-2", "core-id": 3})
        assert err.value.error_class == "GenericError"
        with pytest.raises(QmpCommandError):  # a string prop is refused, as QEMU >= 9.2
            q.execute("device_add", {"driver": slots[3].type, "id": "cpu-3", "core-id": "3"})
        with pytest.raises(QmpCommandError, match=r"CommandNotFound|not.*found"):
            q.execute("no-such-command")
        assert q.sent[-1] == "no-such-command"


def test_remove_without_a_guest_times_out_instead_of_hanging(
    vmm: tuple[subprocess.Popen[bytes], Path],
) -> None:
    _, qmp = vmm
    with QmpConnection(qmp) as q:
        slots = qh.query_slots(q)
        qh.hot_add(q, slots[1], rz.StepLog())
        t0 = time.monotonic()
        with pytest.raises(rz.RemoveTimeout, match="vCPU 1"):
            qh.hot_remove(q, 1, None, 0.5, rz.StepLog())
        assert time.monotonic() - t0 < 5.0


def test_killed_vmm_ends_a_wait_at_once(vmm: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, qmp = vmm
    with QmpConnection(qmp) as q:
        q.execute("query-status")
        proc.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(VmmGone):
            while True:
                q.next_event(10.0)  # SHUTDOWN never comes: the socket just closes
        assert time.monotonic() - t0 < 5.0
        with pytest.raises(VmmGone):
            q.execute("query-status")


# ---------------------------------------------------------------- agent client


@pytest.fixture
def slow_agent() -> Iterator[Path]:
    """A one-connection agent that answers every request after 0.3 s."""
    d = Path(tempfile.mkdtemp(prefix="cpa", dir="/tmp"))
    path = d / "a.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    while not stop.is_set():
                        req = ap.parse_request(ap.recv_message(conn, 5.0))
                        stop.wait(0.3)
                        result = {"exit_code": 0, "stdout": "ok\n", "stderr": ""}
                        ap.send_message(conn, ap.make_reply(req.id, result))
                except (ap.ProtocolError, OSError):
                    continue

    t = threading.Thread(target=serve)
    t.start()
    try:
        yield path
    finally:
        stop.set()
        t.join(10)
        srv.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        d.rmdir()


def test_exec_without_timeout_waits_past_the_client_timeout(slow_agent: Path) -> None:
    with AgentClient(slow_agent, timeout=0.1) as agent:
        assert agent.exec_process("c1", ["sleep", "1"])["stdout"] == "ok\n"
    with AgentClient(slow_agent, timeout=0.1) as agent, pytest.raises(ap.AgentTimeout):
        agent.guest_details()


def test_wait_for_agent_gives_up_when_the_vmm_is_dead(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(AgentUnreachable, match="VMM exited"):
        wait_for_agent(tmp_path / "none.sock", 10.0, alive=lambda: False)
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(AgentUnreachable, match="did not answer within"):
        wait_for_agent(tmp_path / "none.sock", 0.2)

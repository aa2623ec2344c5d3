"""The VMM as a process: every test (and bench) that starts ``cpuplug vmm`` does it here.

Two kinds of process really differ, by the kernel they boot:

* :class:`VmmProcess` -- ``cpuplug vmm`` with the *probe kernel*
  (``tests/harness/vmm_test_kernel.py``, the default here): the test plays the guest's
  part itself, MMIO load by MMIO load, through :meth:`VmmProcess.probe`. Fixture ``vmm``.
* :class:`GuestVmm` -- ``cpuplug vmm`` with its own default kernel, the real guest model,
  booted; a synchronous ``qemu.qmp`` client and one agent connection come with it.
  Fixtures ``guest_vmm`` (factory) and ``guest_booted``.

The in-process machines (no process, the VMM's :class:`VirtMachine` in the test's own
interpreter) are in :mod:`tests.harness.machine`. Fixtures live in ``tests/conftest.py``;
each one stops what it started and checks that it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from cpuplug import agent_protocol as ap
from cpuplug.runtime.process import process_alive

ROOT = Path(__file__).resolve().parents[2]

PROBE_KERNEL = "tests.harness.vmm_test_kernel:start"
"""The probe kernel (``--kernel``): a guest that executes the test's register accesses."""

START_TIMEOUT = 60.0


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs: a zombie whose other threads are gone is dead."""
    return process_alive(pid, None)


# =======================================================================================
# A VMM process (probe kernel by default)


class VmmProcess:
    """One ``python -m cpuplug vmm`` process, its sockets, and a probe connection.

    ``kernel`` is passed as ``--kernel``; ``None`` leaves the flag out, so the VMM boots
    its default kernel (the real guest). ``stop()`` always leaves no process behind
    (terminate, then kill) and can be called again.
    """

    def __init__(
        self,
        workdir: str,
        smp: str = "cpus=1,maxcpus=4",
        *,
        mode: str = "acpi",
        kernel: str | None = PROBE_KERNEL,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.qmp_path = os.path.join(workdir, "qmp.sock")
        self.agent_path = os.path.join(workdir, "agent.sock")
        self.console_path = os.path.join(workdir, "console.log")
        self.stderr_path = os.path.join(workdir, "vmm.stderr")
        kernel_args = [] if kernel is None else ["--kernel", kernel]
        self.argv = [
            sys.executable, "-m", "cpuplug", "vmm",
            "--smp", smp, "--mode", mode, *kernel_args,
            "--qmp", f"unix:{self.qmp_path}", "--agent", f"unix:{self.agent_path}",
            "--console", self.console_path, *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self._probe: ProbeClient | None = None

    def start(self, timeout: float = START_TIMEOUT) -> VmmProcess:
        """Spawn the VMM and wait until its QMP socket accepts connections."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")]
        )
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"VMM exited early: {self.stderr()}")
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(self.qmp_path)
                return self  # listening (this connection just sees a greeting)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("VMM did not start listening") from None
                time.sleep(0.005)  # no notification exists for "socket file appeared"
            finally:
                probe.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def task_ids(self) -> set[int]:
        """Host thread ids of the VMM process (``/proc/<pid>/task``)."""
        return {int(t) for t in os.listdir(f"/proc/{self.pid}/task")}

    def stderr(self) -> str:
        with open(self.stderr_path, "rb") as err:
            return err.read().decode(errors="replace")

    def probe(self) -> ProbeClient:
        """The (lazily opened) probe connection through the agent channel."""
        if self._probe is None:
            self._probe = ProbeClient(self.agent_path)
        return self._probe

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def gone(self) -> bool:
        """Never started, or exited and reaped: nothing of it is left on the host."""
        return self.proc is None or (self.proc.returncode is not None and not pid_alive(self.pid))


@contextlib.contextmanager
def running_vmm(
    smp: str = "cpus=1,maxcpus=4", *, prefix: str = "vmm", **kw: Any
) -> Iterator[VmmProcess]:
    """A started :class:`VmmProcess` in a fresh directory under /tmp (short: unix
    socket paths are limited to ~100 bytes); on leaving, the process is stopped --
    also when it failed to start -- and the directory removed."""
    workdir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    process = VmmProcess(workdir, smp, **kw)
    try:
        yield process.start()
    finally:
        process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


class ProbeClient:
    """The host end of the probe protocol (JSON lines over the agent socket)."""

    def __init__(self, path: str, timeout: float = 15.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")

    def op(self, op: str, **args: int) -> dict[str, object]:
        self.file.write(json.dumps({"op": op, **args}).encode() + b"\n")
        self.file.flush()
        line = self.file.readline()
        if not line:
            raise EOFError("probe connection closed")
        reply: dict[str, object] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(str(reply["error"]))
        return reply

    def load(self, addr: int, size: int) -> int:
        value = self.op("load", addr=addr, size=size)["value"]
        assert isinstance(value, int)
        return value

    def store(self, addr: int, size: int, value: int) -> None:
        self.op("store", addr=addr, size=size, value=value)

    def hvc(self, x0: int, x1: int = 0, x2: int = 0, x3: int = 0) -> int:
        value = self.op("hvc", x0=x0, x1=x1, x2=x2, x3=x3)["value"]
        assert isinstance(value, int)
        return value

    def irqs(self) -> list[int]:
        taken = self.op("irqs")["irqs"]
        assert isinstance(taken, list)
        return taken

    def started(self) -> list[list[int]]:
        started = self.op("started")["started"]
        assert isinstance(started, list)
        return started

    def read(self, addr: int, length: int) -> bytes:
        return bytes.fromhex(str(self.op("read", addr=addr, length=length)["hex"]))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def walk_tables(read: Callable[[int, int], bytes], rsdp: int) -> dict[str, bytes]:
    """Follow RSDP → XSDT → tables, FADT → DSDT, the way a guest finds them."""
    out = {"RSDP": read(rsdp, 36)}
    xsdt_at = int.from_bytes(out["RSDP"][24:32], "little")
    xsdt_len = int.from_bytes(read(xsdt_at + 4, 4), "little")
    out["XSDT"] = read(xsdt_at, xsdt_len)
    for i in range(36, xsdt_len, 8):
        at = int.from_bytes(out["XSDT"][i : i + 8], "little")
        length = int.from_bytes(read(at + 4, 4), "little")
        blob = read(at, length)
        out[blob[:4].decode()] = blob
    dsdt_at = int.from_bytes(out["FACP"][140:148], "little")
    out["DSDT"] = read(dsdt_at, int.from_bytes(read(dsdt_at + 4, 4), "little"))
    return out


# =======================================================================================
# A VMM process with the real guest booted


class GuestVmm:
    """A :class:`VmmProcess` running its default kernel (the real guest), driven by the
    official ``qemu.qmp`` client (synchronously, on a private event loop) and by the agent
    over one connection. The guest has booted once the constructor returns."""

    def __init__(self, process: VmmProcess) -> None:
        self.process = process
        self.loop = asyncio.new_event_loop()
        self.qmp = QMPClient("guest-e2e")
        self.sock: socket.socket | None = None
        self.req = 0
        try:
            self.loop.run_until_complete(asyncio.wait_for(self.qmp.connect(process.qmp_path), 10))
            self.sock = self._agent_socket()
            self.agent(ap.Method.GUEST_DETAILS, {})  # the guest has booted
        except BaseException:
            self.close()
            raise

    def _agent_socket(self) -> socket.socket:
        deadline = time.monotonic() + 10
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.process.agent_path)
                return sock
            except (ConnectionRefusedError, FileNotFoundError):
                sock.close()
                if time.monotonic() > deadline:
                    raise
                threading.Event().wait(0.01)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> Any:
        return self.loop.run_until_complete(self.qmp.execute(name, args))

    def event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            async with asyncio.timeout(timeout):
                while True:
                    ev = await self.qmp.events.get()
                    if ev["event"] == name:
                        data: Any = ev["data"]
                        return dict(data)

        return self.loop.run_until_complete(get())

    def ost(self, timeout: float = 10.0) -> tuple[int, int]:
        info = self.event("ACPI_DEVICE_OST", timeout)["info"]
        return info["source"], info["status"]

    def agent(self, method: ap.Method, params: dict[str, Any], timeout: float = 30.0) -> Any:
        assert self.sock is not None
        self.req += 1
        return ap.call(self.sock, method, params, timeout=timeout, req_id=self.req)

    def details(self) -> dict[str, str]:
        result: dict[str, str] = self.agent(ap.Method.GUEST_DETAILS, {})
        return result

    def sh(self, line: str) -> dict[str, Any]:
        result: dict[str, Any] = self.agent(
            ap.Method.EXEC_PROCESS, {"container_id": "probe", "cmd": ["sh", "-c", line]}
        )
        return result

    def cpu_ticks(self) -> dict[int, int]:
        text = self.agent(ap.Method.READ_FILE, {"path": "/proc/stat"})["data"]
        out: dict[int, int] = {}
        for row in text.splitlines():
            name, *cols = row.split()
            if name.startswith("cpu") and name != "cpu":
                out[int(name[3:])] = int(cols[0])
        return out

    def event_wait(self, seconds: float) -> None:
        """Let time pass while polling guest state that has no event to wait on."""
        threading.Event().wait(seconds)

    def kmsg(self) -> str:
        text: str = self.agent(ap.Method.READ_FILE, {"path": "/dev/kmsg"})["data"]
        return text

    def thread_ids(self) -> set[int]:
        return self.process.task_ids()

    def vcpu_threads(self) -> dict[int, int]:
        """Host thread id → vCPU index of every plugged vCPU (query-cpus-fast)."""
        return {c["thread-id"]: c["cpu-index"] for c in self.cmd("query-cpus-fast")}

    def threads(self) -> int:
        return len(self.process.task_ids())

    def plugged(self) -> set[int]:
        return {c["cpu-index"] for c in self.cmd("query-cpus-fast")}

    def close(self) -> None:
        """Quit through QMP (as a management stack would) and wait for the exit; the
        process is killed by :meth:`VmmProcess.stop` if it does not go."""
        if self.loop.is_closed():
            return
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        proc = self.process.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(asyncio.wait_for(self.qmp.execute("quit"), 5))
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.qmp.disconnect())
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.loop.close()


@contextlib.contextmanager
def running_guest_vmm(smp: str = "cpus=1,maxcpus=4", *, mode: str = "acpi") -> Iterator[GuestVmm]:
    """A :class:`GuestVmm` whose process is stopped and directory removed on leaving."""
    with running_vmm(smp, prefix="gvmm", mode=mode, kernel=None) as process:
        vm = GuestVmm(process)
        try:
            yield vm
        finally:
            vm.close()

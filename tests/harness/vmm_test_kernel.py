"""A tiny guest kernel for the VMM's tests: it plays OSPM by register writes.

Booted with ``cpuplug vmm --kernel tests.harness.vmm_test_kernel:start``, it turns the
agent channel into a remote "probe": the test connects to the agent socket and
sends one JSON object per line; the boot vCPU executes it *as guest code* and
answers with one JSON line. So a test can do, step by step and from the guest's
side of the hardware interface, exactly what Linux's AML would do: MMIO loads
and stores on the CPU hotplug block and the GED, HVC (PSCI) calls, and look at
the interrupts the boot vCPU took.

Requests (all numbers are JSON integers)::

    {"op": "load",  "addr": A, "size": S}            -> {"value": V}
    {"op": "store", "addr": A, "size": S, "value": V} -> {}
    {"op": "hvc", "x0": F, "x1": .., "x2": .., "x3": ..} -> {"value": R}
    {"op": "irqs"}      -> {"irqs": [INTID, ...]}   (taken since the last "irqs")
    {"op": "started"}   -> {"started": [[mpidr, entry, context], ...]}
    {"op": "rsdp"}      -> {"value": rsdp_address}
    {"op": "read", "addr": A, "length": L} -> {"hex": "..."}

A secondary vCPU started by CPU_ON records ``[mpidr, entry, context]`` and then
sits in WFI; if ``context`` is :data:`CONTEXT_CPU_OFF` it calls PSCI CPU_OFF
right away instead (so a test can watch a vCPU power itself off).

It imports only the hardware interface and the PSCI numbers (``cpuplug.psci_abi``),
never the VMM: it is guest code.
"""

from __future__ import annotations

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

from cpuplug.hw import Cpu, Machine, Stream
from cpuplug.psci_abi import CPU_OFF

CONTEXT_CPU_OFF = 0xDEAD
POLL = 0.002


class ProbeKernel:
    """The kernel object the VMM drives (``cpuplug.hw.Kernel``)."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._lock = threading.Lock()  # guest-side data shared by vCPUs
        self.irqs: list[int] = []
        self.started: list[list[int]] = []

    # -- cpuplug.hw.Kernel --------------------------------------------------------------

    def boot_cpu_main(self, cpu: Cpu) -> None:
        stream: Stream | None = None
        pending = b""
        while True:
            # WFI with a short timeout is both the interrupt sink and the point where
            # the VMM can stop this vCPU (VcpuStop comes out of it).
            intid = cpu.wait_for_interrupt(POLL)
            if intid is not None:
                with self._lock:
                    self.irqs.append(intid)
                continue
            if stream is None:
                stream = self.machine.agent_channel.accept(0)
                pending = b""
                continue
            data = stream.recv(65536, 0)
            if data is None:
                continue
            if data == b"":
                stream.close()
                stream = None
                continue
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                reply = self._serve(cpu, line)
                try:
                    stream.send(json.dumps(reply).encode() + b"\n")
                except BrokenPipeError:
                    stream = None
                    break

    def secondary_entry(self, cpu: Cpu, entry: int, context: int) -> None:
        with self._lock:
            self.started.append([cpu.mpidr, entry, context])
        if context == CONTEXT_CPU_OFF:
            cpu.hvc(CPU_OFF)
        while True:
            cpu.wait_for_interrupt(None)

    # -- the probe ----------------------------------------------------------------------

    def _serve(self, cpu: Cpu, line: bytes) -> dict[str, object]:
        try:
            request = json.loads(line)
            op = request["op"]
            memory = self.machine.memory
            if op == "load":
                return {"value": memory.load(request["addr"], request["size"])}
            if op == "store":
                memory.store(request["addr"], request["size"], request["value"])
                return {}
            if op == "read":
                return {"hex": memory.read_bytes(request["addr"], request["length"]).hex()}
            if op == "hvc":
                args = [request.get(k, 0) for k in ("x0", "x1", "x2", "x3")]
                return {"value": cpu.hvc(*args)}
            if op == "irqs":
                with self._lock:
                    taken, self.irqs = self.irqs, []
                return {"irqs": taken}
            if op == "started":
                with self._lock:
                    return {"started": list(self.started)}
            if op == "rsdp":
                return {"value": self.machine.rsdp_address}
            return {"error": f"unknown op {op!r}"}
        except (ValueError, KeyError, TypeError) as exc:
            return {"error": f"{exc.__class__.__name__}: {exc}"}


def start(machine: Machine) -> ProbeKernel:
    """The kernel entry point (``--kernel tests.harness.vmm_test_kernel:start``)."""
    return ProbeKernel(machine)


# =======================================================================================
# Host side: start a real ``cpuplug vmm`` process with this kernel and talk to it.
# (Used by the VMM's tests and bench; the guest half above never touches this.)

ROOT = Path(__file__).resolve().parents[2]


class VmmProcess:
    """One ``python -m cpuplug vmm`` process, its sockets, and a probe connection.

    ``stop()`` always leaves no process behind (terminate, then kill).
    """

    def __init__(
        self,
        workdir: str,
        smp: str = "cpus=1,maxcpus=4",
        *,
        mode: str = "acpi",
        kernel: str = "tests.harness.vmm_test_kernel:start",
        extra: tuple[str, ...] = (),
    ) -> None:
        self.qmp_path = os.path.join(workdir, "qmp.sock")
        self.agent_path = os.path.join(workdir, "agent.sock")
        self.console_path = os.path.join(workdir, "console.log")
        self.stderr_path = os.path.join(workdir, "vmm.stderr")
        self.argv = [
            sys.executable, "-m", "cpuplug", "vmm",
            "--smp", smp, "--mode", mode, "--kernel", kernel,
            "--qmp", f"unix:{self.qmp_path}", "--agent", f"unix:{self.agent_path}",
            "--console", self.console_path, *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self._probe: ProbeClient | None = None

    def start(self, timeout: float = 30.0) -> VmmProcess:
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

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

import json
import threading
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
# The host side (VmmProcess, running_vmm, ProbeClient, walk_tables) is in
# tests/harness/vmm.py. The names stay importable from here for bench/*.py, lazily, so
# the VMM process that loads this kernel never imports the host harness.

_HOST_SIDE = frozenset({"ROOT", "ProbeClient", "VmmProcess", "running_vmm", "walk_tables"})


def __getattr__(name: str) -> Any:
    if name in _HOST_SIDE:
        from tests.harness import vmm

        return getattr(vmm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

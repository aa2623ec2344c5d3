"""The hardware interface: the only seam between the VMM and the guest (docs/contract.md §0).

A real arm64 guest sees physical memory, loads/stores that land on MMIO devices,
interrupts from the GIC, the HVC instruction (PSCI) and a virtio-vsock-like stream
device. This module states exactly that as typing protocols, and nothing more, so
that a test can hand the guest a fake machine or hand the VMM a test kernel.

It imports nothing from the parties (an import-linter contract guards that).

How a kernel is booted
----------------------
The VMM loads a kernel by entry point ``MODULE:FUNCTION``. It calls
``FUNCTION(machine)`` once, before any vCPU runs, with a :class:`Machine`; the
function returns a :class:`Kernel`. Then:

* the boot vCPU's thread calls ``kernel.boot_cpu_main(cpu)`` (the RSDP address is
  ``machine.rsdp_address``, as handed over in x0/the EFI config table);
* a vCPU started by PSCI ``CPU_ON(mpidr, entry, context)`` has its thread call
  ``kernel.secondary_entry(cpu, entry, context)`` — ``entry`` is whatever number
  the guest passed to CPU_ON; the VMM never interprets it.

Guest code runs *on* the vCPU threads. A vCPU stops running guest code when it
calls PSCI ``CPU_OFF`` (or when the VMM stops it): the VMM then raises
:class:`VcpuStop` out of the call the guest made (``hvc``, ``wait_for_interrupt``
or a load/store), which unwinds the guest's stack back to the VMM — the Python
shape of "CPU_OFF does not return". Guest code must let it propagate.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class VcpuStop(BaseException):
    """Raised by the VMM out of a guest call on a vCPU that must stop running guest code.

    A ``BaseException`` (not ``Exception``) so that guest code's ordinary
    ``except Exception`` handlers do not swallow a CPU power-off.
    """


class PhysicalAddressSpace(Protocol):
    """Guest-physical loads and stores: RAM or MMIO, decided by the address.

    Sizes are in bytes (1, 2, 4 or 8); values are little-endian integers.
    Unmapped addresses read as 0 and ignore writes, as the VMM's bus does.
    """

    def load(self, addr: int, size: int) -> int: ...

    def store(self, addr: int, size: int, value: int) -> None: ...

    def read_bytes(self, addr: int, length: int) -> bytes: ...

    def write_bytes(self, addr: int, data: bytes) -> None: ...


class Stream(Protocol):
    """One connection of the agent channel (virtio-vsock's role)."""

    def recv(self, max_bytes: int, timeout: float | None) -> bytes | None:
        """Bytes received; ``b""`` at end of stream; ``None`` if ``timeout`` expired."""
        ...

    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class AgentChannel(Protocol):
    """The agent channel device: host-initiated stream connections into the guest."""

    def accept(self, timeout: float | None) -> Stream | None:
        """The next connection the host opened, or ``None`` when ``timeout`` expired."""
        ...


@runtime_checkable
class Cpu(Protocol):
    """What guest code running on one vCPU can do that only that vCPU can do."""

    @property
    def mpidr(self) -> int: ...

    def hvc(self, x0: int, x1: int = 0, x2: int = 0, x3: int = 0) -> int:
        """Issue HVC #0 (SMCCC): function id in x0, result returned as a signed int."""
        ...

    def wait_for_interrupt(self, timeout: float | None) -> int | None:
        """WFI: sleep until an interrupt is pending for this vCPU, then acknowledge it.

        Returns the INTID taken, or ``None`` when ``timeout`` expired first.
        """
        ...

    def send_sgi(self, target_mpidr: int, intid: int) -> None:
        """Send a software-generated interrupt (ICC_SGI1R_EL1) to another vCPU."""
        ...


class Machine(Protocol):
    """What the VMM hands the kernel at boot."""

    @property
    def rsdp_address(self) -> int: ...

    @property
    def memory(self) -> PhysicalAddressSpace: ...

    @property
    def agent_channel(self) -> AgentChannel: ...


class Kernel(Protocol):
    """What a kernel entry point returns."""

    def boot_cpu_main(self, cpu: Cpu) -> None: ...

    def secondary_entry(self, cpu: Cpu, entry: int, context: int) -> None: ...

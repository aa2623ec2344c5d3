"""PSCI 1.1 over HVC (docs/contract.md §5): the guest's only way to power vCPUs on and off.

The security property of the whole design lives here: ``CPU_ON`` for a vCPU the
host has not plugged returns ``DENIED``, so a guest -- even as root -- cannot
run on a vCPU it was not given. (The online/offline baseline of docs/contract.md §9 plugs
every vCPU, which is exactly why it lacks that property.)

:class:`Psci` decides; the vCPU table acts. The table is the machine's (a
``VcpuSet``), reached through :class:`VcpuTable`, and it must make ``cpu_on``'s
check-and-start atomic (two racing CPU_ONs for one vCPU: one ``started``, the
other ``on_pending``/``already_on``; a CPU_ON racing an eject: ``denied``).

Calls that do not return on real hardware (``CPU_OFF``, ``SYSTEM_OFF``,
``SYSTEM_RESET``) raise :class:`cpuplug.hw.VcpuStop` out of :meth:`Psci.call`
after telling the table/machine, so the guest's ``hvc`` unwinds to the vCPU
thread's loop whatever the caller does with the return path.

Arguments follow SMCCC: the function id is ``w0``; SMC32 functions (bit 30
clear) take 32-bit arguments, so ``x1..x3`` are truncated for them. The numbers
are the shared ABI of :mod:`cpuplug.psci_abi`; only the behaviour lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from cpuplug.hw import VcpuStop
from cpuplug.psci_abi import (
    AFFINITY_INFO_32,
    AFFINITY_INFO_64,
    ALREADY_ON,
    CPU_OFF,
    CPU_ON_32,
    CPU_ON_64,
    DENIED,
    INTERNAL_FAILURE,
    INVALID_PARAMS,
    NOT_SUPPORTED,
    ON_PENDING,
    PSCI_FEATURES,
    PSCI_VERSION,
    PSCI_VERSION_1_1,
    SMC64,
    SUCCESS,
    SYSTEM_OFF,
    SYSTEM_RESET,
)

__all__ = [
    "CpuOnResult",
    "PowerStateLike",
    "Psci",
    "VcpuTable",
]

_U32 = 0xFFFF_FFFF
_U64 = (1 << 64) - 1

CpuOnResult = Literal["started", "denied", "already_on", "on_pending"]
"""What the table did with a CPU_ON: the PSCI code follows from it."""

_CPU_ON_CODES: dict[str, int] = {
    "started": SUCCESS,
    "denied": DENIED,
    "already_on": ALREADY_ON,
    "on_pending": ON_PENDING,
}


class PowerStateLike(Protocol):
    """A vCPU power state whose ``value`` is AFFINITY_INFO's: 0 ON, 1 OFF, 2 ON_PENDING."""

    @property
    def value(self) -> int: ...


class VcpuTable(Protocol):
    """The machine's table of possible vCPUs, as PSCI needs it."""

    def index_of_mpidr(self, value: int) -> int | None:
        """The vCPU with this MPIDR, or ``None`` if no possible vCPU has it."""
        ...

    def power_state(self, index: int) -> PowerStateLike:
        """ON / OFF / ON_PENDING; an unplugged vCPU is OFF."""
        ...

    def cpu_on(self, index: int, entry: int, context: int) -> CpuOnResult:
        """Atomically: ``denied`` if not plugged, ``already_on``/``on_pending`` if so,
        else hand the vCPU's thread (entry, context) and return ``started``."""
        ...

    def cpu_off(self, index: int) -> None:
        """Power off the calling vCPU ``index`` (its guest code must stop)."""
        ...


class Psci:
    """The PSCI dispatcher: ``call(caller_index, x0, x1, x2, x3) -> x0``.

    ``system_off`` / ``system_reset`` are the machine's power-off and reset; when
    one is ``None`` the function is NOT_SUPPORTED (and PSCI_FEATURES says so).
    """

    def __init__(
        self,
        table: VcpuTable,
        *,
        system_off: Callable[[], None] | None = None,
        system_reset: Callable[[], None] | None = None,
    ) -> None:
        self._table = table
        self._system_off = system_off
        self._system_reset = system_reset

    def supported(self, function_id: int) -> bool:
        """Whether ``function_id`` is implemented (PSCI_FEATURES' answer)."""
        fid = function_id & _U32
        if fid == SYSTEM_OFF:
            return self._system_off is not None
        if fid == SYSTEM_RESET:
            return self._system_reset is not None
        return fid in (
            PSCI_VERSION,
            CPU_OFF,
            CPU_ON_32,
            CPU_ON_64,
            AFFINITY_INFO_32,
            AFFINITY_INFO_64,
            PSCI_FEATURES,
        )

    def call(self, caller_index: int, x0: int, x1: int = 0, x2: int = 0, x3: int = 0) -> int:
        """Handle one HVC; returns the signed result for x0 (or raises VcpuStop)."""
        fid = x0 & _U32
        width = _U64 if fid & SMC64 else _U32
        x1, x2, x3 = x1 & width, x2 & width, x3 & width
        if fid == PSCI_VERSION:
            return PSCI_VERSION_1_1
        if fid in (CPU_ON_32, CPU_ON_64):
            return self._cpu_on(x1, x2, x3)
        if fid == CPU_OFF:
            self._table.cpu_off(caller_index)
            raise VcpuStop()
        if fid in (AFFINITY_INFO_32, AFFINITY_INFO_64):
            return self._affinity_info(x1, x2)
        if fid == PSCI_FEATURES:
            return SUCCESS if self.supported(x1) else NOT_SUPPORTED
        if fid == SYSTEM_OFF and self._system_off is not None:
            self._system_off()
            raise VcpuStop()
        if fid == SYSTEM_RESET and self._system_reset is not None:
            self._system_reset()
            raise VcpuStop()
        return NOT_SUPPORTED

    def _cpu_on(self, target_mpidr: int, entry: int, context: int) -> int:
        index = self._table.index_of_mpidr(target_mpidr)
        if index is None:
            return INVALID_PARAMS
        result = self._table.cpu_on(index, entry, context)
        return _CPU_ON_CODES.get(result, INTERNAL_FAILURE)

    def _affinity_info(self, target_affinity: int, lowest_level: int) -> int:
        if lowest_level != 0:
            return INVALID_PARAMS  # only level 0 (one vCPU) is meaningful here
        index = self._table.index_of_mpidr(target_affinity)
        if index is None:
            return INVALID_PARAMS
        return int(self._table.power_state(index).value)

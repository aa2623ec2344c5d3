"""Guest-side PSCI: the calls arm64 Linux makes and its errno mapping (docs/contract.md §5).

The calls go through ``Cpu.hvc`` (the FADT says PSCI over HVC) using the SMC64
ids, as Linux does; the numbers are the shared ABI of :mod:`cpuplug.psci_abi`,
and :func:`to_errno` is Linux's ``psci_to_linux_errno``: only DENIED,
NOT_SUPPORTED, INVALID_PARAMS and INVALID_ADDRESS map to something specific,
every other failure is EINVAL.
"""

from __future__ import annotations

import errno

from cpuplug.hw import Cpu
from cpuplug.psci_abi import (
    AFFINITY_INFO_64,
    CPU_OFF,
    CPU_ON_64,
    DENIED,
    INVALID_ADDRESS,
    INVALID_PARAMS,
    NOT_SUPPORTED,
    PSCI_VERSION,
    SUCCESS,
)

CPU_OFF_POWER_STATE = 0x10000
"""What arm64 Linux passes to CPU_OFF (a power-down state)."""

SECONDARY_ENTRY = 0x4008_0000
"""The "physical address of secondary_entry" this kernel hands to CPU_ON.

The VMM does not interpret it; the kernel checks it in ``secondary_entry`` so a
vCPU started with some other entry (e.g. a raw CPU_ON by a hostile guest root)
is recognisable in the log.
"""


def to_errno(ret: int) -> int:
    """Linux's ``psci_to_linux_errno``: 0 for SUCCESS, else a positive errno."""
    if ret == SUCCESS:
        return 0
    return {
        NOT_SUPPORTED: errno.EOPNOTSUPP,
        INVALID_PARAMS: errno.EINVAL,
        DENIED: errno.EPERM,
        INVALID_ADDRESS: errno.EINVAL,
    }.get(ret, errno.EINVAL)


def version(cpu: Cpu) -> tuple[int, int]:
    """PSCI version as (major, minor)."""
    v = cpu.hvc(PSCI_VERSION) & 0xFFFF_FFFF
    return v >> 16, v & 0xFFFF


def cpu_on(cpu: Cpu, target_mpidr: int, entry: int, context: int = 0) -> int:
    """Raw PSCI return code of CPU_ON for ``target_mpidr``."""
    return cpu.hvc(CPU_ON_64, target_mpidr, entry, context)


def cpu_off(cpu: Cpu) -> int:
    """Power off the calling vCPU. On success the VMM raises ``VcpuStop`` out of the HVC."""
    return cpu.hvc(CPU_OFF, CPU_OFF_POWER_STATE)


def affinity_info(cpu: Cpu, target_mpidr: int) -> int:
    """0 ON, 1 OFF, 2 ON_PENDING, or a negative PSCI error."""
    return cpu.hvc(AFFINITY_INFO_64, target_mpidr, 0)

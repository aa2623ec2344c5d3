"""The PSCI 1.1 ABI over SMCCC (docs/contract.md §5): function ids, return codes, affinity states.

These numbers are the wire format between the guest (which issues ``HVC``) and
the VMM (which answers it), so they are stated once, here, where both parties can
import them: like :mod:`cpuplug.hw` this module imports no party (an
import-linter contract guards that). What each side *does* with them stays on
its side (``cpuplug.guest.psci``, ``cpuplug.vmm.psci``).

SMCCC function ids: bit 31 marks a fast call, bit 30 the SMC64 calling
convention (64-bit arguments); a function with both conventions has a ``_32``
and a ``_64`` id. The values are those of Linux's ``include/uapi/linux/psci.h``.
"""

from __future__ import annotations

SMC64 = 1 << 30
"""Function-id bit 30: the SMC64 convention (arguments are 64-bit, else 32-bit)."""

# Function ids.
PSCI_VERSION = 0x8400_0000
CPU_SUSPEND_32 = 0x8400_0001
CPU_SUSPEND_64 = 0xC400_0001
CPU_OFF = 0x8400_0002
CPU_ON_32 = 0x8400_0003
CPU_ON_64 = 0xC400_0003
AFFINITY_INFO_32 = 0x8400_0004
AFFINITY_INFO_64 = 0xC400_0004
MIGRATE_INFO_TYPE = 0x8400_0006
SYSTEM_OFF = 0x8400_0008
SYSTEM_RESET = 0x8400_0009
PSCI_FEATURES = 0x8400_000A

PSCI_VERSION_1_1 = 0x0001_0001
"""PSCI_VERSION's answer: major in bits 31:16, minor in bits 15:0."""

# Return codes (x0, signed).
SUCCESS = 0
NOT_SUPPORTED = -1
INVALID_PARAMS = -2
DENIED = -3
ALREADY_ON = -4
ON_PENDING = -5
INTERNAL_FAILURE = -6
NOT_PRESENT = -7
DISABLED = -8
INVALID_ADDRESS = -9

# AFFINITY_INFO's answer for one vCPU (lowest affinity level 0).
AFFINITY_ON = 0
AFFINITY_OFF = 1
AFFINITY_ON_PENDING = 2

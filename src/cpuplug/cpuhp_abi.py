"""The ACPI CPU hotplug ABI: register block, GED event bits, ``_STA`` and ``_OST`` codes.

These numbers are what the VMM, the DSDT it ships, the guest's ACPI code and the
runtime (which reads ``ACPI_DEVICE_OST``) must agree on, so each is stated once,
here, where every party can import it: like :mod:`cpuplug.psci_abi` this module
imports no party (an import-linter contract guards that). Before it existed the
register block was written down twice (the VMM's offsets, the DSDT's field list),
the ``_OST`` codes twice (guest, runtime), and ``STA_ENABLED`` meant 0x0F in one
module and the single bit 0x02 in another.

* The register block (docs/contract.md §3; QEMU's "modern" CPU hotplug
  interface, hw/acpi/cpu.c): offsets, widths, the flag bits, the commands, and
  :data:`PRES_FIELDS`, the AML names the DSDT gives them. The DSDT builds its
  field list from :data:`PRES_FIELDS`, so the two cannot drift.
* The GED event bits (docs/contract.md §4; QEMU's ``ACPI_GED_*_EVT``).
* ``_STA`` (ACPI 6.5 §6.3.7): the single bits are ``STA_BIT_*``; the composed
  values a vCPU's ``_STA`` answers are :class:`CpuSta`. The names differ on
  purpose: "enabled" the bit (0x02) is not "enabled" the answer (0x0F).
* ``_OST`` (ACPI 6.5 §6.3.5): source event codes (:class:`OstSource`, which for
  0x00-0xFF are the Notify value being answered), status codes by the source they
  belong to, each with the specification's text, and :func:`ost_text`.

Register-level facts are plain ``int`` constants, as in :mod:`cpuplug.psci_abi`:
they are masked, OR-ed and compared on the MMIO path, where an ``IntFlag``
would be slower and its ``~`` keeps only the declared bits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Final

__all__ = [
    "BLOCK_SIZE",
    "CMD_GET_CPU_ID",
    "CMD_GET_NEXT_EVENT",
    "CMD_OST_EVENT",
    "CMD_OST_STATUS",
    "COMMANDS",
    "FLAG_EJECT",
    "FLAG_ENABLED",
    "FLAG_FW_REMOVE",
    "FLAG_INSERT",
    "FLAG_PRESENT",
    "FLAG_REMOVE",
    "GED_EVT_CPU_HOTPLUG",
    "GED_EVT_PWR_DOWN",
    "NOTIFY_POWER_BUTTON",
    "OFFSET_COMMAND",
    "OFFSET_DATA",
    "OFFSET_DATA2",
    "OFFSET_FLAGS",
    "OFFSET_SELECTOR",
    "PRES_FIELDS",
    "REGISTER_WIDTHS",
    "STA_BIT_ENABLED",
    "STA_BIT_FUNCTIONING",
    "STA_BIT_PRESENT",
    "STA_BIT_SHOWN_IN_UI",
    "STA_DEFAULT",
    "CpuSta",
    "OstEjectStatus",
    "OstInsertStatus",
    "OstShutdownStatus",
    "OstSource",
    "OstStatus",
    "PresField",
    "ost_status_text",
    "ost_text",
]

# --------------------------------------------------------------------------
# The register block (docs/contract.md §3)

OFFSET_SELECTOR: Final = 0x0
"""Write: select the vCPU slot every other register refers to (AML ``CSEL``)."""
OFFSET_DATA2: Final = 0x0
"""Read: command data 2 -- the upper 32 bits of the MPIDR after command 3."""
OFFSET_FLAGS: Final = 0x4
"""Read: the selected slot's status flags; write: one control action (``FLAG_*``)."""
OFFSET_COMMAND: Final = 0x5
"""Write: a command (``CMD_*``); it decides what :data:`OFFSET_DATA` means (AML ``CCMD``)."""
OFFSET_DATA: Final = 0x8
"""Read/write: command data (AML ``CDAT``)."""

REGISTER_WIDTHS: Final[Mapping[int, int]] = MappingProxyType(
    {OFFSET_SELECTOR: 4, OFFSET_FLAGS: 1, OFFSET_COMMAND: 1, OFFSET_DATA: 4}
)
"""Register offset -> width in bytes, which is also the width the AML accesses it with."""

BLOCK_SIZE: Final = max(offset + width for offset, width in REGISTER_WIDTHS.items())
"""12: the block ends with the data register (QEMU's ``ACPI_CPU_HOTPLUG_REG_LEN``)."""

# Flag bits at OFFSET_FLAGS. A write acts on the lowest set bit of
# INSERT/REMOVE/EJECT/FW_REMOVE only, one action per write.
FLAG_ENABLED: Final = 0x01
"""Read: the vCPU is plugged."""
FLAG_INSERT: Final = 0x02
"""Read: an insert event is pending; write 1: clear it."""
FLAG_REMOVE: Final = 0x04
"""Read: a remove event is pending; write 1: clear it."""
FLAG_EJECT: Final = 0x08
"""Write 1 only: eject the vCPU (``_EJ0``)."""
FLAG_FW_REMOVE: Final = 0x10
"""Read: firmware-initiated removal pending; write 1: request it."""
FLAG_PRESENT: Final = 0x20
"""Read only: the slot is present (always, on arm64: only *enabled* toggles)."""

# Commands written at OFFSET_COMMAND.
CMD_GET_NEXT_EVENT: Final = 0
"""Move the selector to the next slot with an event (wrapping); data reads the selector."""
CMD_OST_EVENT: Final = 1
"""A data write latches the ``_OST`` source event code."""
CMD_OST_STATUS: Final = 2
"""A data write latches the ``_OST`` status and reports both to the host."""
CMD_GET_CPU_ID: Final = 3
"""Data reads the MPIDR's low 32 bits, data 2 its high 32 bits."""
COMMANDS: Final = frozenset({CMD_GET_NEXT_EVENT, CMD_OST_EVENT, CMD_OST_STATUS, CMD_GET_CPU_ID})
"""The commands the block knows; a write of any other value is ignored (as QEMU)."""


@dataclass(frozen=True)
class PresField:
    """One named field of ``\\_SB.PRES``: a whole register, or one bit of the flags.

    ``flag`` is the bit's mask for a flag field and 0 for a whole register.
    """

    name: str
    offset: int
    flag: int = 0

    @property
    def width(self) -> int:
        """The register's width in bytes (the field's access width)."""
        return REGISTER_WIDTHS[self.offset]

    @property
    def first_bit(self) -> int:
        """Bit position of the field from the start of the block."""
        return 8 * self.offset + (self.flag.bit_length() - 1 if self.flag else 0)

    @property
    def bits(self) -> int:
        """Length of the field in bits."""
        return 1 if self.flag else 8 * self.width


PRES_FIELDS: Final = (
    PresField("CSEL", OFFSET_SELECTOR),
    PresField("CPEN", OFFSET_FLAGS, FLAG_ENABLED),
    PresField("CINS", OFFSET_FLAGS, FLAG_INSERT),
    PresField("CRMV", OFFSET_FLAGS, FLAG_REMOVE),
    PresField("CEJ0", OFFSET_FLAGS, FLAG_EJECT),
    PresField("CEJF", OFFSET_FLAGS, FLAG_FW_REMOVE),
    PresField("CPRS", OFFSET_FLAGS, FLAG_PRESENT),
    PresField("CCMD", OFFSET_COMMAND),
    PresField("CDAT", OFFSET_DATA),
)
"""The block as the DSDT names it (QEMU's names; ``CPRS`` is the arm64 addition).

Command data 2 has no field: QEMU's AML never reads it.
"""

# --------------------------------------------------------------------------
# The Generic Event Device (docs/contract.md §4)

GED_EVT_PWR_DOWN: Final = 0x2
"""Power button: ``_EVT`` does ``Notify(PWRB, NOTIFY_POWER_BUTTON)``."""
GED_EVT_CPU_HOTPLUG: Final = 0x8
"""CPU hotplug: ``_EVT`` runs the CPU scan (``CSCN``)."""

NOTIFY_POWER_BUTTON: Final = 0x80
"""Notify value for a power button device (PNP0C0C): the button was pressed."""

# --------------------------------------------------------------------------
# _STA (ACPI 6.5 §6.3.7)

STA_BIT_PRESENT: Final = 0x01
STA_BIT_ENABLED: Final = 0x02
STA_BIT_SHOWN_IN_UI: Final = 0x04
STA_BIT_FUNCTIONING: Final = 0x08

STA_DEFAULT: Final = STA_BIT_PRESENT | STA_BIT_ENABLED | STA_BIT_SHOWN_IN_UI | STA_BIT_FUNCTIONING
"""0x0F, what OSPM assumes for a device that has no ``_STA``."""


class CpuSta(IntEnum):
    """What a vCPU's ``_STA`` (the DSDT's ``CSTA``) answers (docs/contract.md §2).

    ``PRESENT_DISABLED`` is the arm64 answer for a possible but unplugged vCPU:
    its Present bit must never change, only Enabled.
    """

    NOT_PRESENT = 0x00
    PRESENT_DISABLED = STA_DEFAULT & ~STA_BIT_ENABLED  # 0x0D
    PRESENT_ENABLED = STA_DEFAULT  # 0x0F


# --------------------------------------------------------------------------
# _OST (ACPI 6.5 §6.3.5)


class _OstCode(IntEnum):
    """An ``_OST`` code that carries the specification's text for it."""

    text: str

    def __new__(cls, value: int, text: str) -> _OstCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.text = text
        return member


class OstSource(_OstCode):
    """``_OST`` Arg0, the source event: 0x00-0xFF is the Notify value being answered."""

    BUS_CHECK = 0x00, "bus check"
    DEVICE_CHECK = 0x01, "device check"
    EJECT_REQUEST = 0x03, "eject request"
    OSPM_SHUTDOWN = 0x100, "operating system shutdown processing"
    OSPM_EJECT = 0x103, "ejection processing"
    OSPM_INSERTION = 0x200, "insertion processing"


class OstStatus(_OstCode):
    """``_OST`` Arg1 codes valid for every source (general processing status)."""

    SUCCESS = 0x00, "success"
    NON_SPECIFIC_FAILURE = 0x01, "non-specific failure"
    UNRECOGNIZED_NOTIFY = 0x02, "unrecognized notify code"


class OstEjectStatus(_OstCode):
    """Status codes for an eject request (0x03) and ejection processing (0x103)."""

    NOT_SUPPORTED = 0x80, "device ejection not supported by OSPM"
    DEVICE_IN_USE = 0x81, "device in use by application"
    DEVICE_BUSY = 0x82, "device busy"
    DEPENDENCY_BUSY = 0x83, "ejection dependency is busy or not supported for ejection by OSPM"
    IN_PROGRESS = 0x84, "ejection is in progress"


class OstInsertStatus(_OstCode):
    """Status codes for insertion processing (0x200); 0x90-0x9F: see :func:`ost_status_text`."""

    IN_PROGRESS = 0x80, "device insertion in progress"
    DRIVER_LOAD_FAILURE = 0x81, "device driver load failure"
    NOT_SUPPORTED = 0x82, "device insertion not supported by OSPM"


class OstShutdownStatus(_OstCode):
    """Status codes for operating system shutdown processing (0x100)."""

    DENIED = 0x80, "OS shutdown request denied"
    IN_PROGRESS = 0x81, "OS shutdown in progress"
    COMPLETED = 0x82, "OS shutdown completed"
    NOT_SUPPORTED = 0x83, "OS graceful shutdown not supported"


_SOURCE_STATUSES: Final[Mapping[int, type[_OstCode]]] = MappingProxyType(
    {
        OstSource.EJECT_REQUEST: OstEjectStatus,
        OstSource.OSPM_EJECT: OstEjectStatus,
        OstSource.OSPM_INSERTION: OstInsertStatus,
        OstSource.OSPM_SHUTDOWN: OstShutdownStatus,
    }
)
"""Which codes 0x80-0xFF mean for each source; elsewhere they are undefined."""

_INSERT_RESOURCES: Final = ((0x1, "memory"), (0x2, "I/O"), (0x4, "interrupts"),
                            (0x8, "bus or segment numbers"))  # fmt: skip
"""Insertion status 0x90-0x9F: bits 3..0 name the resources that were unavailable."""


def ost_status_text(source: int, status: int) -> str:
    """The specification's text for ``status`` answering ``source``.

    The same number means different things for different sources (0x80 refuses
    an eject but reports an insertion as pending), so the source is required.
    """
    codes: type[_OstCode] = OstStatus if status < 0x80 else _SOURCE_STATUSES.get(source, OstStatus)
    for code in codes:
        if code == status:
            return code.text
    if status < 0x80:
        return "reserved status"
    if source == OstSource.OSPM_INSERTION and status & ~0xF == 0x90:
        names = [name for bit, name in _INSERT_RESOURCES if status & bit]
        return "insertion failure, resources unavailable: " + (", ".join(names) or "none named")
    return "unknown status"


def ost_text(source: int, status: int) -> str:
    """``status`` for messages, e.g. ``0x82 (device busy)``."""
    return f"0x{status:02x} ({ost_status_text(source, status)})"


class HotplugMode(StrEnum):
    """How a machine's vCPU count changes (docs/contract.md §2, §9): the MADT flags the
    VMM writes, the threads it keeps, and what the runtime does to resize."""

    ACPI = "acpi"
    """vCPUs are hot-added and hot-removed through ACPI; only boot vCPUs exist at boot."""
    ONLINE_OFFLINE = "online-offline"
    """Every vCPU is plugged at boot; the guest onlines and offlines them."""

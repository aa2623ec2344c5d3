"""The ACPI CPU hotplug register block (docs/contract.md §3; QEMU's "modern" interface).

Twelve little-endian bytes of MMIO through which the guest's AML (``\\_SB.PRES``
fields CSEL/CPEN/CINS/CRMV/CEJ0/CEJF/CPRS/CCMD/CDAT, driven by ``\\_SB.CPUS``
methods) learns which vCPU slots have pending insert/remove events, acknowledges
them, ejects vCPUs and reports ``_OST`` results back to the host.
The offsets, flag bits and commands are :mod:`cpuplug.cpuhp_abi`'s, the module
the DSDT builds those fields from; this one is only their behaviour.

The register semantics follow QEMU's ``cpu_hotplug_rd``/``cpu_hotplug_wr``
(hw/acpi/cpu.c) exactly, because the AML that QEMU generates -- and that our
DSDT reproduces -- depends on them (the wrapping command-0 search that never
clears a flag is what terminates ``CSCN``). The arm additions are the *present*
flag (bit 5, ``CPRS``): on this machine every possible vCPU is present from boot
and only *enabled* toggles.

Deliberate differences from QEMU, each for a reason:

* A completed eject also clears the slot's pending insert/remove flags and its
  device id. QEMU leaves a stale ``is_removing`` behind when ``device_del`` was
  issued twice, so the next scan would send an Eject Request for a vCPU that is
  already gone.
* Two eject writes racing for the same slot (two guest vCPUs, no ``CPLK``) cause
  exactly one ``on_eject`` call; QEMU relies on the BQL for that.
* A hook that raises is logged and contained: the guest's store never fails. A
  failed ``on_eject`` leaves the vCPU plugged (enabled stays set), which the
  guest's re-read of ``_STA`` reports as "eject incomplete".

Locking
-------
One ``threading.Lock`` guards all state; vCPU threads (guest AML doing MMIO) and
the QMP thread (``plug``/``request_unplug``/queries) meet here. The hooks
``on_eject`` and ``on_ost`` are always called **without** the lock held: the
machine's ``on_eject`` joins the ejected vCPU's thread and hands an event to the
QMP loop, and either of those may wait for a thread that is itself about to touch
this block (a vCPU doing MMIO, the QMP thread calling ``plug``). Holding the lock
across the call would deadlock them. While ``on_eject`` runs the slot is marked
*ejecting*: it still reads as enabled (the hook runs "before enabled clears"),
``plug`` refuses it, and a second eject write is ignored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cpuplug.acpi.virt import CPUHP_SIZE
from cpuplug.cpuhp_abi import (
    CMD_GET_CPU_ID,
    CMD_GET_NEXT_EVENT,
    CMD_OST_EVENT,
    CMD_OST_STATUS,
    COMMANDS,
    FLAG_EJECT,
    FLAG_ENABLED,
    FLAG_FW_REMOVE,
    FLAG_INSERT,
    FLAG_PRESENT,
    FLAG_REMOVE,
    OFFSET_COMMAND,
    OFFSET_DATA,
    OFFSET_DATA2,
    OFFSET_FLAGS,
    OFFSET_SELECTOR,
)
from cpuplug.errors import CpuplugError

__all__ = [
    "BOOT_CPU_INDEX",
    "CpuHotplugBlock",
    "CpuHotplugError",
    "OstInfo",
    "SlotState",
]

_log = logging.getLogger(__name__)

_U32 = 0xFFFF_FFFF
BOOT_CPU_INDEX = 0


class CpuHotplugError(CpuplugError):
    """The host asked the block for something impossible (bad slot, wrong state)."""


@dataclass(frozen=True)
class OstInfo:
    """One ``_OST`` report (QAPI ``ACPIOSTInfo``) for a CPU slot."""

    slot: int
    device: str | None
    source: int
    status: int

    def to_qmp(self) -> dict[str, object]:
        """The QAPI ``ACPIOSTInfo`` object: ``device`` only when known, slot as a string."""
        info: dict[str, object] = {}
        if self.device is not None:
            info["device"] = self.device
        info["slot"] = str(self.slot)
        info["slot-type"] = "CPU"
        info["source"] = self.source
        info["status"] = self.status
        return info


@dataclass(frozen=True)
class SlotState:
    """A read-only snapshot of one slot, for host-side queries and tests."""

    index: int
    arch_id: int
    device: str | None
    enabled: bool
    inserting: bool
    removing: bool
    fw_remove: bool
    ost_event: int
    ost_status: int


@dataclass
class _Slot:
    arch_id: int
    device: str | None = None
    enabled: bool = False
    ejecting: bool = False
    inserting: bool = False
    removing: bool = False
    fw_remove: bool = False
    ost_event: int = 0
    ost_status: int = 0

    @property
    def has_event(self) -> bool:
        return self.inserting or self.removing or self.fw_remove


class CpuHotplugBlock:
    """The 12-byte CPU hotplug MMIO device, one slot per possible vCPU.

    ``arch_ids[i]`` is the MPIDR of vCPU ``i`` (returned by command 3). Slot 0 is
    the boot vCPU: it can be neither ejected nor unplug-requested.
    """

    SIZE = CPUHP_SIZE

    def __init__(
        self,
        arch_ids: Sequence[int],
        *,
        on_eject: Callable[[int], None] | None = None,
        on_ost: Callable[[OstInfo], None] | None = None,
    ) -> None:
        if not arch_ids:
            raise CpuHotplugError("a CPU hotplug block needs at least one possible vCPU")
        self._slots = [_Slot(arch_id=int(a)) for a in arch_ids]
        self._on_eject = on_eject
        self._on_ost = on_ost
        self._lock = threading.Lock()
        self._selector = 0
        self._command = CMD_GET_NEXT_EVENT

    @property
    def slot_count(self) -> int:
        """M, the number of possible vCPUs."""
        return len(self._slots)

    # ------------------------------------------------------------------ guest side

    def read(self, offset: int, size: int) -> int:
        """An MMIO load of ``size`` bytes at ``offset``; never raises."""
        if not 1 <= size <= 8:
            return 0
        with self._lock:
            value = self._read_locked(offset)
        return value & ((1 << (8 * size)) - 1)

    def _read_locked(self, offset: int) -> int:
        if self._selector >= len(self._slots):
            return 0
        slot = self._slots[self._selector]
        if offset == OFFSET_FLAGS:
            return (
                (FLAG_ENABLED if slot.enabled else 0)
                | (FLAG_INSERT if slot.inserting else 0)
                | (FLAG_REMOVE if slot.removing else 0)
                | (FLAG_FW_REMOVE if slot.fw_remove else 0)
                | FLAG_PRESENT
            )
        if offset == OFFSET_DATA:
            if self._command == CMD_GET_NEXT_EVENT:
                return self._selector
            if self._command == CMD_GET_CPU_ID:
                return slot.arch_id & _U32
            return 0
        if offset == OFFSET_DATA2:
            if self._command == CMD_GET_CPU_ID:
                return (slot.arch_id >> 32) & _U32
            return 0
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        """An MMIO store of ``size`` bytes at ``offset``; never raises."""
        if not 1 <= size <= 8:
            return
        value &= (1 << (8 * size)) - 1
        eject: int | None = None
        ost: OstInfo | None = None
        with self._lock:
            if offset == OFFSET_SELECTOR:
                self._selector = value & _U32
                return
            if self._selector >= len(self._slots):
                return  # invalid selector: only the selector write goes through
            index = self._selector
            slot = self._slots[index]
            if offset == OFFSET_FLAGS:
                eject = self._control_locked(index, slot, value)
            elif offset == OFFSET_COMMAND:
                self._command_locked(value)
            elif offset == OFFSET_DATA:
                if self._command == CMD_OST_EVENT:
                    slot.ost_event = value & _U32
                elif self._command == CMD_OST_STATUS:
                    slot.ost_status = value & _U32
                    ost = OstInfo(index, slot.device, slot.ost_event, slot.ost_status)
        if eject is not None:
            self._finish_eject(eject)
        if ost is not None and self._on_ost is not None:
            try:
                self._on_ost(ost)
            except Exception:
                _log.exception("cpuhp: on_ost hook failed for slot %d", ost.slot)

    def _control_locked(self, index: int, slot: _Slot, value: int) -> int | None:
        """The if / else-if chain: one action per write. Returns a slot to eject."""
        if value & FLAG_INSERT:
            slot.inserting = False
        elif value & FLAG_REMOVE:
            slot.removing = False
        elif value & FLAG_EJECT:
            if index == BOOT_CPU_INDEX or not slot.enabled or slot.ejecting:
                return None
            slot.ejecting = True
            return index
        elif value & FLAG_FW_REMOVE and index != BOOT_CPU_INDEX and slot.enabled:
            slot.fw_remove = True
        return None

    def _command_locked(self, value: int) -> None:
        if value not in COMMANDS:
            return
        self._command = value
        if value != CMD_GET_NEXT_EVENT:
            return
        count = len(self._slots)
        start = self._selector
        for step in range(count):
            candidate = (start + step) % count
            if self._slots[candidate].has_event:
                self._selector = candidate
                return

    def _finish_eject(self, index: int) -> None:
        """Run ``on_eject`` without the lock, then unplug the slot (or roll back)."""
        ok = True
        if self._on_eject is not None:
            try:
                self._on_eject(index)
            except Exception:
                ok = False
                _log.exception("cpuhp: on_eject hook failed for vCPU %d; it stays plugged", index)
        with self._lock:
            slot = self._slots[index]
            slot.ejecting = False
            if ok:
                slot.enabled = False
                slot.device = None
                slot.inserting = False
                slot.removing = False
                slot.fw_remove = False

    # ------------------------------------------------------------------- host side

    def plug(self, index: int, device_id: str | None, hotplugged: bool) -> None:
        """Mark vCPU ``index`` plugged; a hot plug also sets its insert event.

        The caller raises the GED CPU-hotplug event afterwards (QEMU's
        ``acpi_send_event``); cold plugs at boot raise nothing.
        """
        with self._lock:
            slot = self._slot(index)
            if slot.enabled:
                raise CpuHotplugError(f"vCPU {index} is already plugged")
            slot.enabled = True
            slot.device = device_id
            if hotplugged:
                slot.inserting = True

    def request_unplug(self, index: int) -> None:
        """Set vCPU ``index``'s remove event (``device_del``); the guest ejects it later."""
        with self._lock:
            slot = self._slot(index)
            if index == BOOT_CPU_INDEX:
                raise CpuHotplugError("Boot CPU is unpluggable")
            if not slot.enabled:
                raise CpuHotplugError(f"vCPU {index} is not plugged")
            slot.removing = True

    def is_enabled(self, index: int) -> bool:
        """Whether vCPU ``index`` is plugged (flag bit 0)."""
        with self._lock:
            return self._slot(index).enabled

    def slot_state(self, index: int) -> SlotState:
        """A consistent snapshot of one slot."""
        with self._lock:
            s = self._slot(index)
            return SlotState(
                index=index,
                arch_id=s.arch_id,
                device=s.device,
                enabled=s.enabled,
                inserting=s.inserting,
                removing=s.removing,
                fw_remove=s.fw_remove,
                ost_event=s.ost_event,
                ost_status=s.ost_status,
            )

    def ospm_status(self) -> list[OstInfo]:
        """The last ``_OST`` values of every slot (``query-acpi-ospm-status``), in index order."""
        with self._lock:
            return [
                OstInfo(i, s.device if s.enabled else None, s.ost_event, s.ost_status)
                for i, s in enumerate(self._slots)
            ]

    @property
    def selector(self) -> int:
        """The current selector (for tests and debugging)."""
        with self._lock:
            return self._selector

    def _slot(self, index: int) -> _Slot:
        if isinstance(index, bool) or not isinstance(index, int):
            raise CpuHotplugError(f"vCPU index must be an integer, not {index!r}")
        if not 0 <= index < len(self._slots):
            raise CpuHotplugError(f"vCPU index {index} out of range 0..{len(self._slots) - 1}")
        return self._slots[index]

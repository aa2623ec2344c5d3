"""A GICv3 interrupt controller sized once for every possible vCPU (docs/contract.md §1).

KVM's rule, kept here although no KVM is used: the distributor and one
redistributor per *possible* vCPU exist from boot, whether or not the vCPU is
plugged. Hotplug never resizes the GIC; only vCPU threads come and go.

What is modelled, and why that much:

* Distributor: ``GICD_CTLR`` (group enables; ARE and DS read as one: affinity
  routing, single security state), ``GICD_TYPER``/``IIDR``/``PIDR2`` for a
  driver's probe, and per-SPI group, enable, pending, active, priority,
  trigger configuration and ``GICD_IROUTER`` (default affinity 0 = vCPU 0).
  ``GICD_TYPER.No1N`` is set, so the 1-of-N routing bit is RAZ/WI.
* Redistributors: ``GICR_TYPER`` (processor number, affinity, and the *Last* bit
  on the final frame of each region, which is how a driver knows where a region
  ends), ``GICR_WAKER`` (ChildrenAsleep follows ProcessorSleep at once), and the
  SGI/PPI enable/pending/active/priority/config registers in the SGI frame.
* Delivery: an interrupt is *deliverable* to vCPU ``c`` when it is pending, not
  active, enabled, a group is enabled in ``GICD_CTLR``, and (for an SPI) its
  route names ``c``. Among deliverable interrupts the lowest (priority, INTID)
  wins; there is no priority mask or preemption, because guest code runs one
  handler at a time per vCPU.
* Edge interrupts (SGIs, pulses, rising edges of edge-configured SPIs, and
  ``ISPENDR`` writes) are latched and consumed by :meth:`Gic.acknowledge`
  (acknowledge + EOI in one, since the hardware interface's
  ``wait_for_interrupt`` has no EOI) -- also on an SPI whose ``ICFGR`` still says
  level, so the GED's pulses keep arriving on a guest that never programs the
  GIC. A level-configured SPI whose line is high is pending while it stays high;
  acknowledging that makes it *active*, so a handler that has not yet quieted
  the device is not re-entered, until :meth:`Gic.end_of_interrupt`.
* An SPI routed to an affinity that names no vCPU stays pending in the
  distributor and is delivered once it is re-routed.

``firmware_init=True`` (the default) hands the guest the GIC the way firmware
leaves it for an OS that does not reprogram it: groups enabled, every SGI, PPI
and SPI enabled, redistributors awake. ``firmware_init=False`` is the reset
state (everything disabled, redistributors asleep) for a guest that programs the
GIC like Linux's irq-gic-v3 driver; guest writes work the same in both.

MMIO accesses the GIC architecture defines (32-bit for bitmaps and ID registers,
any width for ``IPRIORITYR`` bytes, 64-bit or 32-bit halves for ``IROUTER`` and
``GICR_TYPER``) are honoured; every other access reads as zero and is ignored,
and no access raises.

Locking
-------
One lock guards all GIC state; each vCPU has a ``threading.Condition`` on that
lock. vCPU threads block in :meth:`Gic.wait_for_interrupt`; device models and
the QMP thread raise lines; MMIO from any vCPU reconfigures. Every state change
that could make an interrupt deliverable notifies the affected vCPU(s).
To stop a vCPU that sleeps in WFI, the machine sets its own stop flag, then
calls :meth:`Gic.kick`; the waiter re-evaluates ``should_stop`` under the GIC
lock and raises :class:`cpuplug.hw.VcpuStop`. Because the flag is set before the
kick takes the lock, the wake-up cannot be lost. ``should_stop`` runs with the
GIC lock held, so it must only read a flag (no blocking, no other locks).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cpuplug.acpi.virt import GICD_SIZE, GICR_FRAME_SIZE, gicr_regions
from cpuplug.errors import CpuplugError
from cpuplug.hw import VcpuStop

__all__ = [
    "GICD_SIZE",
    "Gic",
    "GicDistributor",
    "GicError",
    "RedistributorRegion",
]

_SGI_FRAME = 0x1_0000  # offset of SGI_base inside a redistributor frame pair

# Distributor registers.
GICD_CTLR = 0x0000
GICD_TYPER = 0x0004
GICD_IIDR = 0x0008
GICD_IGROUPR = 0x0080
GICD_ISENABLER = 0x0100
GICD_ICENABLER = 0x0180
GICD_ISPENDR = 0x0200
GICD_ICPENDR = 0x0280
GICD_ISACTIVER = 0x0300
GICD_ICACTIVER = 0x0380
GICD_IPRIORITYR = 0x0400
GICD_ICFGR = 0x0C00
GICD_IROUTER = 0x6000
GICD_PIDR2 = 0xFFE8

CTLR_ENABLE_GRP0 = 1 << 0
CTLR_ENABLE_GRP1 = 1 << 1
CTLR_ARE = 1 << 4
CTLR_DS = 1 << 6

# Redistributor registers (RD_base frame).
GICR_CTLR = 0x0000
GICR_IIDR = 0x0004
GICR_TYPER = 0x0008
GICR_WAKER = 0x0014
GICR_PIDR2 = 0xFFE8
WAKER_PROCESSOR_SLEEP = 1 << 1
WAKER_CHILDREN_ASLEEP = 1 << 2
TYPER_LAST = 1 << 4

# Redistributor SGI_base frame registers (offsets inside that frame).
GICR_IGROUPR0 = 0x0080
GICR_ISENABLER0 = 0x0100
GICR_ICENABLER0 = 0x0180
GICR_ISPENDR0 = 0x0200
GICR_ICPENDR0 = 0x0280
GICR_ISACTIVER0 = 0x0300
GICR_ICACTIVER0 = 0x0380
GICR_IPRIORITYR = 0x0400
GICR_ICFGR0 = 0x0C00
GICR_ICFGR1 = 0x0C04

_IIDR = 0x0000_043B  # implementer: Arm
_PIDR2 = 0x3B  # ArchRev 3 (GICv3)
_AFFINITY_MASK = 0xFF_00FF_FFFF  # Aff3 (39:32), Aff2, Aff1, Aff0
_SGI_COUNT = 16
_PRIVATE = 32
_U32 = 0xFFFF_FFFF


class GicError(CpuplugError):
    """The host asked the GIC for an interrupt or vCPU that does not exist."""


@dataclass
class _Redistributor:
    """Per-vCPU state: the SGIs and PPIs (INTIDs 0..31) and the wake state."""

    typer: int
    enabled: int = 0
    pending: int = 0
    active: int = 0
    group: int = 0
    ppi_cfg: int = 0  # ICFGR1
    asleep: bool = True
    priority: bytearray = field(default_factory=lambda: bytearray(_PRIVATE))


def _affinity_of_mpidr(mpidr: int) -> int:
    """MPIDR affinity fields packed as IROUTER lays them out (Aff3 at 39:32)."""
    return ((mpidr >> 32) & 0xFF) << 32 | (mpidr & 0xFF_FFFF)


class Gic:
    """GICv3 distributor + one redistributor per possible vCPU.

    ``mpidrs[i]`` is vCPU ``i``'s MPIDR. ``num_spis`` is a multiple of 32
    (QEMU virt has 256 SPIs, INTIDs 32..287).
    """

    def __init__(
        self, mpidrs: Sequence[int], *, num_spis: int = 256, firmware_init: bool = True
    ) -> None:
        if not mpidrs:
            raise GicError("a GIC needs at least one vCPU")
        if num_spis <= 0 or num_spis % 32 or num_spis > 988:
            raise GicError(f"num_spis must be a positive multiple of 32 up to 988, got {num_spis}")
        self._lock = threading.Lock()
        self._conds = [threading.Condition(self._lock) for _ in mpidrs]
        self.num_irqs = _PRIVATE + num_spis
        self._mpidrs = [int(m) for m in mpidrs]
        self._index_of_affinity = {_affinity_of_mpidr(m): i for i, m in enumerate(self._mpidrs)}
        last_frames = self._last_frames(len(mpidrs))
        self._redist = [
            _Redistributor(
                typer=(_affinity_of_mpidr(m) >> 32 & 0xFF) << 56
                | (m & 0xFF_FFFF) << 32
                | (i & 0xFFFF) << 8
                | (TYPER_LAST if i in last_frames else 0)
            )
            for i, m in enumerate(self._mpidrs)
        ]
        n = self.num_irqs
        self._ctlr = 0
        self._spi_enabled = bytearray(n)
        self._spi_latch = bytearray(n)
        self._spi_line = bytearray(n)
        self._spi_active = bytearray(n)
        self._spi_edge = bytearray(n)
        self._spi_group = bytearray(n)
        self._spi_priority = bytearray(n)
        self._router = [0] * n
        self._spi_hot: set[int] = set()  # SPIs with a latch or a high line
        self._target: list[int | None] = [0] * n
        if firmware_init:
            self._ctlr = CTLR_ENABLE_GRP1
            for intid in range(_PRIVATE, n):
                self._spi_enabled[intid] = 1
                self._spi_group[intid] = 1
            for r in self._redist:
                r.enabled = _U32
                r.group = _U32
                r.asleep = False
        self.distributor = GicDistributor(self)

    @staticmethod
    def _last_frames(count: int) -> set[int]:
        """Indices whose redistributor is the last frame of its region."""
        last: set[int] = set()
        first = 0
        for _base, length in gicr_regions(count):
            first += length // GICR_FRAME_SIZE
            last.add(first - 1)
        return last

    @property
    def cpu_count(self) -> int:
        """M: the number of redistributors, one per possible vCPU."""
        return len(self._mpidrs)

    # --------------------------------------------------------------- MMIO devices

    def redistributor_regions(self) -> list[tuple[int, RedistributorRegion]]:
        """``(guest-physical base, device)`` per redistributor region (docs/contract.md §1).

        The first region holds vCPUs 0..122, the second the rest; each device's
        ``SIZE`` covers exactly the frames that exist.
        """
        result: list[tuple[int, RedistributorRegion]] = []
        first = 0
        for base, length in gicr_regions(self.cpu_count):
            count = length // GICR_FRAME_SIZE
            result.append((base, RedistributorRegion(self, first, count)))
            first += count
        return result

    # ------------------------------------------------------------- interrupt lines

    def pulse_spi(self, intid: int) -> None:
        """An edge on SPI ``intid`` (QEMU ``qemu_irq_pulse``): latch it pending."""
        self._check_spi(intid)
        with self._lock:
            self._spi_latch[intid] = 1
            self._spi_hot.add(intid)
            self._notify_spi_locked(intid)

    def set_spi_level(self, intid: int, level: bool) -> None:
        """Drive SPI ``intid``'s line. A rising edge latches an edge-configured SPI;
        a level-configured SPI is pending exactly while the line is high."""
        self._check_spi(intid)
        with self._lock:
            rising = level and not self._spi_line[intid]
            self._spi_line[intid] = 1 if level else 0
            if rising and self._spi_edge[intid]:
                self._spi_latch[intid] = 1
            self._refresh_hot_locked(intid)
            if level:
                self._notify_spi_locked(intid)

    def send_sgi(self, source_index: int, target_index: int, intid: int) -> None:
        """SGI ``intid`` (0..15) from one vCPU to another (ICC_SGI1R_EL1)."""
        self._check_cpu(source_index)
        self._check_cpu(target_index)
        if isinstance(intid, bool) or not isinstance(intid, int) or not 0 <= intid < _SGI_COUNT:
            raise GicError(f"SGI INTID must be 0..15, got {intid!r}")
        with self._lock:
            self._redist[target_index].pending |= 1 << intid
            self._conds[target_index].notify_all()

    # ------------------------------------------------------------ CPU interface

    def acknowledge(self, cpu_index: int) -> int | None:
        """Take the best deliverable interrupt for ``cpu_index`` (ICC_IAR1), or ``None``."""
        self._check_cpu(cpu_index)
        with self._lock:
            return self._take_locked(cpu_index)

    def wait_for_interrupt(
        self,
        cpu_index: int,
        timeout: float | None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int | None:
        """WFI: block until an interrupt is deliverable to ``cpu_index``, then take it.

        Returns the INTID, or ``None`` when ``timeout`` (seconds; ``None`` = no
        limit) expires first. Raises :class:`VcpuStop` as soon as ``should_stop()``
        is true when checked -- on entry and after every :meth:`kick`.
        """
        self._check_cpu(cpu_index)
        deadline = None if timeout is None else time.monotonic() + timeout
        cond = self._conds[cpu_index]
        with self._lock:
            while True:
                if should_stop is not None and should_stop():
                    raise VcpuStop()
                intid = self._take_locked(cpu_index)
                if intid is not None:
                    return intid
                if deadline is None:
                    cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    cond.wait(remaining)

    def end_of_interrupt(self, cpu_index: int, intid: int) -> None:
        """Deactivate ``intid`` (ICC_EOIR1); a level SPI still asserted pends again."""
        self._check_cpu(cpu_index)
        with self._lock:
            if 0 <= intid < _PRIVATE:
                self._redist[cpu_index].active &= ~(1 << intid)
                self._conds[cpu_index].notify_all()
            elif _PRIVATE <= intid < self.num_irqs:
                self._spi_active[intid] = 0
                self._notify_spi_locked(intid)

    def kick(self, cpu_index: int) -> None:
        """Wake ``cpu_index`` if it waits, so it re-checks its ``should_stop``."""
        self._check_cpu(cpu_index)
        with self._lock:
            self._conds[cpu_index].notify_all()

    def pending(self, cpu_index: int) -> list[int]:
        """INTIDs deliverable to ``cpu_index`` now, best first (non-destructive)."""
        self._check_cpu(cpu_index)
        with self._lock:
            return [intid for _prio, intid in sorted(self._candidates_locked(cpu_index))]

    def target_of(self, intid: int) -> int | None:
        """The vCPU index SPI ``intid`` is routed to, or ``None`` if no vCPU matches."""
        self._check_spi(intid)
        with self._lock:
            return self._target[intid]

    # -------------------------------------------------------------- internals

    def _check_cpu(self, index: int) -> None:
        if isinstance(index, bool) or not isinstance(index, int):
            raise GicError(f"vCPU index must be an integer, got {index!r}")
        if not 0 <= index < len(self._mpidrs):
            raise GicError(f"vCPU index {index} out of range 0..{len(self._mpidrs) - 1}")

    def _check_spi(self, intid: int) -> None:
        if isinstance(intid, bool) or not isinstance(intid, int):
            raise GicError(f"SPI INTID must be an integer, got {intid!r}")
        if not _PRIVATE <= intid < self.num_irqs:
            raise GicError(f"SPI INTID must be {_PRIVATE}..{self.num_irqs - 1}, got {intid}")

    def _spi_is_pending(self, intid: int) -> bool:
        return bool(self._spi_latch[intid]) or (
            not self._spi_edge[intid] and bool(self._spi_line[intid])
        )

    def _candidates_locked(self, cpu: int) -> list[tuple[int, int]]:
        if not self._ctlr & (CTLR_ENABLE_GRP0 | CTLR_ENABLE_GRP1):
            return []
        found: list[tuple[int, int]] = []
        r = self._redist[cpu]
        ready = r.pending & r.enabled & ~r.active
        while ready:
            low = ready & -ready
            intid = low.bit_length() - 1
            found.append((r.priority[intid], intid))
            ready ^= low
        for intid in self._spi_hot:
            if (
                self._target[intid] == cpu
                and self._spi_enabled[intid]
                and not self._spi_active[intid]
                and self._spi_is_pending(intid)
            ):
                found.append((self._spi_priority[intid], intid))
        return found

    def _take_locked(self, cpu: int) -> int | None:
        candidates = self._candidates_locked(cpu)
        if not candidates:
            return None
        _prio, intid = min(candidates)
        if intid < _PRIVATE:
            self._redist[cpu].pending &= ~(1 << intid)
        else:
            if self._spi_latch[intid]:
                # A latched edge (pulse, rising edge, ISPENDR) is consumed by the
                # acknowledge, whatever ICFGR says: the GED pulses an SPI the guest
                # may never reconfigure, and no EOI ever comes through hw.Cpu.
                self._spi_latch[intid] = 0
            else:
                self._spi_active[intid] = 1  # level-held: masked until EOI
            self._refresh_hot_locked(intid)
        return intid

    def _refresh_hot_locked(self, intid: int) -> None:
        if self._spi_latch[intid] or self._spi_line[intid]:
            self._spi_hot.add(intid)
        else:
            self._spi_hot.discard(intid)

    def _notify_spi_locked(self, intid: int) -> None:
        target = self._target[intid]
        if target is not None:
            self._conds[target].notify_all()

    def _notify_all_locked(self) -> None:
        for cond in self._conds:
            cond.notify_all()

    # -------------------------------------------------------- distributor MMIO

    def _dist_read(self, offset: int, size: int) -> int:
        with self._lock:
            if GICD_IPRIORITYR <= offset < GICD_IPRIORITYR + self.num_irqs and size <= 8:
                return self._read_bytes(self._spi_priority, offset - GICD_IPRIORITYR, size)
            if GICD_IROUTER <= offset < GICD_IROUTER + 8 * self.num_irqs:
                return self._irouter_read(offset - GICD_IROUTER, size)
            if size != 4 or offset % 4:
                return 0
            if offset == GICD_CTLR:
                return self._ctlr | CTLR_ARE | CTLR_DS
            if offset == GICD_TYPER:
                # ITLinesNumber, IDbits = 9 (10-bit INTIDs), No1N.
                return (self.num_irqs // 32 - 1) | (9 << 19) | (1 << 25)
            if offset == GICD_IIDR:
                return _IIDR
            if offset == GICD_PIDR2:
                return _PIDR2
            bitmap = self._dist_bitmap(offset)
            if bitmap is not None:
                array, first = bitmap
                return self._pack_bits(array, first)
            if GICD_ICFGR <= offset < GICD_ICFGR + self.num_irqs // 4:
                first = (offset - GICD_ICFGR) * 4
                value = 0
                for k in range(16):
                    intid = first + k
                    if intid >= _PRIVATE and self._spi_edge[intid]:
                        value |= 2 << (2 * k)
                return value
            return 0

    def _dist_bitmap(self, offset: int) -> tuple[bytearray, int] | None:
        """The SPI state array and first INTID a 32-bit bitmap register covers."""
        for base, array in (
            (GICD_IGROUPR, self._spi_group),
            (GICD_ISENABLER, self._spi_enabled),
            (GICD_ICENABLER, self._spi_enabled),
            (GICD_ISPENDR, self._spi_latch),
            (GICD_ICPENDR, self._spi_latch),
            (GICD_ISACTIVER, self._spi_active),
            (GICD_ICACTIVER, self._spi_active),
        ):
            if base <= offset < base + self.num_irqs // 8:
                first = (offset - base) * 8
                if first < _PRIVATE:
                    return None  # GICD_*R0 is RAZ/WI with affinity routing
                return array, first
        return None

    def _pack_bits(self, array: bytearray, first: int) -> int:
        value = 0
        for k in range(32):
            if array[first + k] or (array is self._spi_latch and self._spi_is_pending(first + k)):
                value |= 1 << k
        return value

    def _dist_write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            if GICD_IPRIORITYR <= offset < GICD_IPRIORITYR + self.num_irqs and size <= 8:
                start = offset - GICD_IPRIORITYR
                self._write_bytes(self._spi_priority, start, size, value, low=_PRIVATE)
                self._notify_all_locked()
                return
            if GICD_IROUTER <= offset < GICD_IROUTER + 8 * self.num_irqs:
                self._irouter_write(offset - GICD_IROUTER, size, value)
                return
            if size != 4 or offset % 4:
                return
            if offset == GICD_CTLR:
                self._ctlr = value & (CTLR_ENABLE_GRP0 | CTLR_ENABLE_GRP1)
                self._notify_all_locked()
                return
            if GICD_ICFGR <= offset < GICD_ICFGR + self.num_irqs // 4:
                first = (offset - GICD_ICFGR) * 4
                if first >= _PRIVATE:
                    for k in range(16):
                        self._spi_edge[first + k] = (value >> (2 * k + 1)) & 1
                    self._notify_all_locked()
                return
            bitmap = self._dist_bitmap(offset)
            if bitmap is None:
                return
            array, first = bitmap
            if offset < GICD_ISENABLER:  # IGROUPR: plain read/write
                for k in range(32):
                    array[first + k] = value >> k & 1
            else:
                # IS* registers (set) and IC* registers (clear) alternate every 0x80.
                bit = 1 if (offset - GICD_ISENABLER) // 0x80 % 2 == 0 else 0
                for k in range(32):
                    if value >> k & 1:
                        array[first + k] = bit
                        self._refresh_hot_locked(first + k)
            self._notify_all_locked()

    def _irouter_read(self, rel: int, size: int) -> int:
        intid, part = divmod(rel, 8)
        if intid < _PRIVATE:
            return 0
        router = self._router[intid]
        if size == 8 and part == 0:
            return router
        if size == 4 and part in (0, 4):
            return router >> (8 * part) & _U32
        return 0

    def _irouter_write(self, rel: int, size: int, value: int) -> None:
        intid, part = divmod(rel, 8)
        if intid < _PRIVATE:
            return
        if size == 8 and part == 0:
            router = value
        elif size == 4 and part == 0:
            router = (self._router[intid] & ~_U32) | (value & _U32)
        elif size == 4 and part == 4:
            router = (self._router[intid] & _U32) | (value & _U32) << 32
        else:
            return
        router &= _AFFINITY_MASK  # IRM is RAZ/WI (GICD_TYPER.No1N)
        self._router[intid] = router
        self._target[intid] = self._index_of_affinity.get(router)
        self._notify_spi_locked(intid)

    @staticmethod
    def _read_bytes(array: bytearray, start: int, size: int) -> int:
        chunk = array[start : start + size]
        return int.from_bytes(chunk, "little")

    @staticmethod
    def _write_bytes(array: bytearray, start: int, size: int, value: int, low: int) -> None:
        for k in range(size):
            index = start + k
            if low <= index < len(array):
                array[index] = value >> (8 * k) & 0xFF

    # ---------------------------------------------------- redistributor MMIO

    def _redist_read(self, cpu: int, offset: int, size: int) -> int:
        with self._lock:
            r = self._redist[cpu]
            if offset >= _SGI_FRAME:
                rel = offset - _SGI_FRAME
                if GICR_IPRIORITYR <= rel < GICR_IPRIORITYR + _PRIVATE and size <= 8:
                    return self._read_bytes(r.priority, rel - GICR_IPRIORITYR, size)
                if size != 4 or rel % 4:
                    return 0
                if rel == GICR_IGROUPR0:
                    return r.group
                if rel in (GICR_ISENABLER0, GICR_ICENABLER0):
                    return r.enabled
                if rel in (GICR_ISPENDR0, GICR_ICPENDR0):
                    return r.pending
                if rel in (GICR_ISACTIVER0, GICR_ICACTIVER0):
                    return r.active
                if rel == GICR_ICFGR0:
                    return 0xAAAA_AAAA  # SGIs are always edge-triggered
                if rel == GICR_ICFGR1:
                    return r.ppi_cfg
                return 0
            if offset == GICR_TYPER and size == 8:
                return r.typer
            if size != 4 or offset % 4:
                return 0
            if offset == GICR_IIDR:
                return _IIDR
            if offset in (GICR_TYPER, GICR_TYPER + 4):
                return r.typer >> (8 * (offset - GICR_TYPER)) & _U32
            if offset == GICR_WAKER:
                return (WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP) if r.asleep else 0
            if offset == GICR_PIDR2:
                return _PIDR2
            return 0

    def _redist_write(self, cpu: int, offset: int, size: int, value: int) -> None:
        with self._lock:
            r = self._redist[cpu]
            if offset < _SGI_FRAME:
                if offset == GICR_WAKER and size == 4:
                    r.asleep = bool(value & WAKER_PROCESSOR_SLEEP)
                return
            rel = offset - _SGI_FRAME
            if GICR_IPRIORITYR <= rel < GICR_IPRIORITYR + _PRIVATE and size <= 8:
                self._write_bytes(r.priority, rel - GICR_IPRIORITYR, size, value, low=0)
            elif size != 4 or rel % 4:
                return
            elif rel == GICR_IGROUPR0:
                r.group = value & _U32
            elif rel == GICR_ISENABLER0:
                r.enabled |= value & _U32
            elif rel == GICR_ICENABLER0:
                r.enabled &= ~value & _U32
            elif rel == GICR_ISPENDR0:
                r.pending |= value & _U32
            elif rel == GICR_ICPENDR0:
                r.pending &= ~value & _U32
            elif rel == GICR_ISACTIVER0:
                r.active |= value & _U32
            elif rel == GICR_ICACTIVER0:
                r.active &= ~value & _U32
            elif rel == GICR_ICFGR1:
                r.ppi_cfg = value & 0xAAAA_AAAA
            else:
                return
            self._conds[cpu].notify_all()


class GicDistributor:
    """The distributor's 64 KiB MMIO frame (bus device)."""

    SIZE = GICD_SIZE

    def __init__(self, gic: Gic) -> None:
        self._gic = gic

    def read(self, offset: int, size: int) -> int:
        if not 1 <= size <= 8 or not 0 <= offset < self.SIZE:
            return 0
        return self._gic._dist_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if not 1 <= size <= 8 or not 0 <= offset < self.SIZE:
            return
        self._gic._dist_write(offset, size, value & ((1 << (8 * size)) - 1))


class RedistributorRegion:
    """A run of redistributor frame pairs (128 KiB each) as one MMIO device."""

    def __init__(self, gic: Gic, first_index: int, count: int) -> None:
        self._gic = gic
        self.first_index = first_index
        self.count = count
        self.SIZE = count * GICR_FRAME_SIZE

    def read(self, offset: int, size: int) -> int:
        if not 1 <= size <= 8 or not 0 <= offset < self.SIZE:
            return 0
        frame, rel = divmod(offset, GICR_FRAME_SIZE)
        return self._gic._redist_read(self.first_index + frame, rel, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if not 1 <= size <= 8 or not 0 <= offset < self.SIZE:
            return
        frame, rel = divmod(offset, GICR_FRAME_SIZE)
        self._gic._redist_write(
            self.first_index + frame, rel, size, value & ((1 << (8 * size)) - 1)
        )

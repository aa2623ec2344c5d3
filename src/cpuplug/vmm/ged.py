"""The ACPI Generic Event Device's event selector (docs/contract.md §4; QEMU ``acpi-ged``).

A hardware-reduced ACPI machine has no GPE block, so the host tells the guest
"something happened" by OR-ing a bit into a 32-bit selector and pulsing an edge
interrupt (GSI 41). The guest's ``\\_SB.GED._EVT`` reads the selector (``ESEL``),
which returns the pending bits and clears them, and runs one handler per bit. The
bits are :mod:`cpuplug.cpuhp_abi`'s ``GED_EVT_*``, shared with the DSDT's ``_EVT``.

Why read-to-clear plus a pulse per event is race-free: a bit raised after the
guest's read and before its handler ends is simply pending again and comes with a
fresh pulse, so the next interrupt sees it. A bit raised before the read is folded
into that read. Either way no event is lost; at worst an interrupt reads 0.

Access widths: QEMU's region accepts exactly 4-byte accesses. Here a 4-byte read
at offset 0 is the only access with an effect; any other width or offset reads 0
and does **not** clear the selector (so a stray byte load cannot eat an event),
and every write is ignored.

Locking: one lock guards the selector; ``irq_pulse`` is called after the lock is
released, so the interrupt controller's lock is never taken inside this one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from cpuplug.acpi.virt import GED_SIZE
from cpuplug.cpuhp_abi import GED_EVT_CPU_HOTPLUG, GED_EVT_PWR_DOWN
from cpuplug.errors import CpuplugError

__all__ = [
    "GedError",
    "GenericEventDevice",
]


class GedError(CpuplugError):
    """The host asked the GED to raise an event it was not built to signal."""


class GenericEventDevice:
    """The 4-byte GED event selector plus its edge interrupt.

    ``events`` is the set of bits this machine signals (QEMU's ``ged-event``
    property); raising any other bit is a host bug and is refused, because the
    guest's ``_EVT`` has no handler for it.
    """

    SIZE = GED_SIZE

    def __init__(
        self,
        irq_pulse: Callable[[], None],
        events: int = GED_EVT_PWR_DOWN | GED_EVT_CPU_HOTPLUG,
    ) -> None:
        self._irq_pulse = irq_pulse
        self._events = events & 0xFFFF_FFFF
        self._lock = threading.Lock()
        self._selector = 0

    def read(self, offset: int, size: int) -> int:
        """ESEL: a 4-byte read at offset 0 returns and clears the pending bits."""
        if offset != 0 or size != 4:
            return 0
        with self._lock:
            value, self._selector = self._selector, 0
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        """Writes are ignored (the selector is read-only to the guest)."""

    def raise_event(self, bits: int) -> None:
        """OR ``bits`` into the selector and pulse the interrupt (QEMU ``acpi_ged_send_event``)."""
        if isinstance(bits, bool) or not isinstance(bits, int) or bits <= 0:
            raise GedError(f"GED event bits must be a positive integer, got {bits!r}")
        unknown = bits & ~self._events
        if unknown:
            raise GedError(f"GED: unsupported event bits {unknown:#x}; no interrupt injected")
        with self._lock:
            self._selector |= bits
        self._irq_pulse()

    @property
    def pending(self) -> int:
        """The pending bits, without clearing them (host-side inspection)."""
        with self._lock:
            return self._selector

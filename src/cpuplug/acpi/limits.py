"""This machine's size limits, importable without the ACPI table code.

:data:`MAX_CPUS` bounds the VMM's ``--smp``, the tables :mod:`cpuplug.acpi.virt`
builds, and the runtime's ``default_maxvcpus``.  It lives here rather than in
``virt`` because importing ``virt`` builds the whole table layer
(:mod:`cpuplug.acpi.tables`, ~50 ms), and the runtime's commands need only this
number: a ``cpuplug ps`` must not pay for ACPI tables it never writes (issue 8 §4).
``virt`` re-exports it, so ``virt.MAX_CPUS`` is still the machine's ceiling.
"""

from __future__ import annotations

from typing import Final

MAX_CPUS: Final = 512
"""The architectural ceiling this machine supports (two GICR regions' worth)."""

"""The resize plan: which vCPU slots to plug or unplug (pure), and its step log.

The plan follows docs/contract.md §8 — grow into free slots in **ascending** core-id order
(QEMU lists slots highest first; Kata's Go runtime walks that list as is and
hot-adds the *highest* socket first, issue #9392), device id ``cpu-<core-id>``
(runtime-rs's choice, stable across restarts, unlike Go's counter), JSON integer
props (QEMU ≥ 9.2 refuses strings); shrink the newest hot-added vCPU first,
never vCPU 0, never a boot vCPU, never below one.

Carrying a plan out is a hypervisor's job (:mod:`cpuplug.runtime.hypervisor`;
over QMP: :mod:`cpuplug.runtime.hypervisors.qmp`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cpuplug.cpuhp_abi import OstSource, ost_text
from cpuplug.errors import CpuplugError

DEVICE_PREFIX = "cpu-"
class ResizeError(CpuplugError):
    """A hotplug step failed; the message names the vCPU and the reason."""


class EjectRefused(ResizeError):
    def __init__(self, core: int, status: int) -> None:
        text = ost_text(OstSource.EJECT_REQUEST, status)
        super().__init__(f"guest refused to eject vCPU {core}: _OST status {text}")
        self.core = core
        self.status = status


class RemoveTimeout(ResizeError):
    def __init__(self, core: int, timeout: float, last_status: int | None) -> None:
        seen = (
            f"; last _OST status {ost_text(OstSource.EJECT_REQUEST, last_status)}"
            if last_status is not None
            else ""
        )
        super().__init__(
            f"vCPU {core} was not removed within {timeout:g}s (no DEVICE_DELETED{seen})"
        )
        self.core = core
        self.last_status = last_status


def device_id(core: int) -> str:
    return f"{DEVICE_PREFIX}{core}"


@dataclass(frozen=True)
class Slot:
    """One possible vCPU as ``query-hotpluggable-cpus`` reports it."""

    core_id: int
    type: str
    props: dict[str, int]
    qom_path: str | None

    @property
    def plugged(self) -> bool:
        return bool(self.qom_path)


def parse_slots(entries: Iterable[Mapping[str, Any]]) -> list[Slot]:
    """``query-hotpluggable-cpus`` entries as slots in ascending core-id order.

    Raises :class:`ResizeError` on an entry without an integer core-id, since a
    slot we cannot address must not be silently guessed (Go Kata defaults missing
    keys to 0).
    """
    slots = []
    for e in entries:
        props = e.get("props")
        if not isinstance(props, dict) or not isinstance(props.get("core-id"), int):
            raise ResizeError(f"query-hotpluggable-cpus entry without integer core-id: {e!r}")
        ints = {k: v for k, v in props.items() if isinstance(v, int) and not isinstance(v, bool)}
        qom = e.get("qom-path")
        slots.append(Slot(props["core-id"], str(e.get("type", "")), ints, qom or None))
    return sorted(slots, key=lambda s: s.core_id)


def reconcile_order(plug_order: Sequence[int], plugged_now: Iterable[int]) -> list[int]:
    """The plug order to trust, given what the VMM says is plugged *now*.

    Keep the recorded order for vCPUs still plugged, drop vanished ones, and
    append unknown plugged ones ascending (a killed command may have plugged them
    without recording it; ascending is the order we would have used).
    """
    now = set(plugged_now)
    kept = [c for c in dict.fromkeys(plug_order) if c in now]
    return kept + sorted(now - set(kept))


@dataclass(frozen=True)
class Plan:
    """What to plug and unplug to go from the current set to ``target`` vCPUs."""

    current: tuple[int, ...]
    add: tuple[int, ...] = ()
    remove: tuple[int, ...] = ()
    target: int = 0
    warning: str | None = None

    @property
    def result(self) -> int:
        return len(self.current) + len(self.add) - len(self.remove)


def plan_resize(
    slots: Sequence[Slot], plug_order: Sequence[int], target: int, boot: Iterable[int]
) -> Plan:
    """Choose slots: grow ascending into free ones, shrink newest hot-added first.

    ``plug_order`` lists plugged core ids oldest first; ``boot`` are the
    cold-plugged ones, which (like vCPU 0) are never removed.  Running out of
    slots or removable vCPUs is a warning with a partial plan, not an error.
    """
    plugged = [s.core_id for s in slots if s.plugged]
    order = reconcile_order(plug_order, plugged)
    current = tuple(order)
    target = max(target, 1)
    if target > len(current):
        free = [s.core_id for s in slots if not s.plugged]
        need = target - len(current)
        add = tuple(free[:need])
        warning = None
        if len(add) < need:
            warning = f"only {len(add)} free vCPU slots for {need} more vCPUs"
        return Plan(current, add=add, target=target, warning=warning)
    if target < len(current):
        fixed = set(boot) | {0}
        removable = [c for c in reversed(order) if c not in fixed]
        need = len(current) - target
        remove = tuple(removable[:need])
        warning = None
        if len(remove) < need:
            warning = (
                f"only {len(remove)} hot-added vCPUs can be removed "
                f"(boot vCPUs stay), {len(current) - len(remove)} remain"
            )
        return Plan(current, remove=remove, target=target, warning=warning)
    return Plan(current, target=target)


@dataclass
class StepLog:
    """Timings of one resize, kept in sandbox history (``inspect``, ``events``)."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic

    def add(self, what: str, started: float, **detail: Any) -> None:
        ms = round((self.clock() - started) * 1000, 2)
        self.steps.append({"step": what, "ms": ms, "at": time.time(), **detail})

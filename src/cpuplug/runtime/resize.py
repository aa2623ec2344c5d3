"""Resizing a running VM's vCPU set over QMP: the plan (pure) and its execution.

The plan follows docs/contract.md §8 — grow into free slots in **ascending** core-id order
(QEMU lists slots highest first; Kata's Go runtime walks that list as is and
hot-adds the *highest* socket first, issue #9392), device id ``cpu-<core-id>``
(runtime-rs's choice, stable across restarts, unlike Go's counter), JSON integer
props (QEMU ≥ 9.2 refuses strings); shrink the newest hot-added vCPU first,
never vCPU 0, never a boot vCPU, never below one.

Execution does better than Kata where the references show it hanging:

* ``device_del`` is followed by a wait **with a timeout** (Go Kata waits forever
  on a refused eject).
* Completion is ``DEVICE_DELETED`` naming the device *or its QOM path or a child of
  it* (QEMU 7.2 on x86 only ever named ``…/hcpuN/lapic``, tests/data/README.md), or
  the slot no longer being plugged in ``query-hotpluggable-cpus`` — so a VMM that
  emits the event differently cannot make us wait forever.
* An ``ACPI_DEVICE_OST`` failure status for the slot (e.g. 0x82 "device busy")
  fails the removal at once, naming the vCPU and the status, instead of waiting
  for the timeout.
* A dropped QMP connection (VMM killed) ends every wait immediately.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cpuplug.errors import CpuplugError
from cpuplug.runtime.qmp_client import QmpCommandError, VmmGone

DEVICE_PREFIX = "cpu-"
POLL_SLICE = 0.25
"""Longest a removal wait goes without re-checking ``query-hotpluggable-cpus``."""

OST_SOURCE_INSERT = 0x01
OST_SOURCE_EJECT = 0x03
OST_SUCCESS = 0x00
OST_EJECT_IN_PROGRESS = 0x84
OST_STATUS_TEXT = {
    0x00: "success",
    0x01: "non-specific failure",
    0x02: "unrecognized notify code",
    0x80: "eject not supported by OSPM",
    0x81: "device in use by an application",
    0x82: "device busy",
    0x83: "ejection dependency is busy or not supported",
    0x84: "ejection in progress",
}
"""ACPI 6.5 §6.3.5 _OST status codes for the eject request (source 3)."""


def ost_text(status: int) -> str:
    return f"0x{status:02x} ({OST_STATUS_TEXT.get(status, 'unknown status')})"


class ResizeError(CpuplugError):
    """A hotplug step failed; the message names the vCPU and the reason."""


class EjectRefused(ResizeError):
    def __init__(self, core: int, status: int) -> None:
        super().__init__(f"guest refused to eject vCPU {core}: _OST status {ost_text(status)}")
        self.core = core
        self.status = status


class RemoveTimeout(ResizeError):
    def __init__(self, core: int, timeout: float, last_status: int | None) -> None:
        seen = f"; last _OST status {ost_text(last_status)}" if last_status is not None else ""
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


# --------------------------------------------------------------------------- execution


class Vmm(Protocol):
    """What resizing needs from a QMP connection (``QmpConnection`` satisfies it)."""

    def execute(
        self, command: str, arguments: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any: ...

    def next_event(self, timeout: float) -> dict[str, Any] | None: ...


def query_slots(vmm: Vmm) -> list[Slot]:
    return parse_slots(vmm.execute("query-hotpluggable-cpus"))


@dataclass
class StepLog:
    """Timings of one resize, kept in sandbox history (``inspect``, ``events``)."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic

    def add(self, what: str, started: float, **detail: Any) -> None:
        ms = round((self.clock() - started) * 1000, 2)
        self.steps.append({"step": what, "ms": ms, "at": time.time(), **detail})


def hot_add(
    vmm: Vmm,
    slot: Slot,
    log: StepLog,
) -> None:
    """``device_add`` one slot with its integer props and id ``cpu-<core-id>``."""
    args: dict[str, Any] = {"driver": slot.type, "id": device_id(slot.core_id)}
    args.update(slot.props)
    t0 = log.clock()
    vmm.execute("device_add", args)
    log.add("device_add", t0, vcpu=slot.core_id)


def _ost_info(event: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """(slot, source, status) of an ``ACPI_DEVICE_OST`` for a CPU, else None."""
    if event.get("event") != "ACPI_DEVICE_OST":
        return None
    info = (event.get("data") or {}).get("info") or {}
    if info.get("slot-type") not in (None, "CPU"):
        return None
    try:
        return int(info["slot"]), int(info["source"]), int(info["status"])
    except (KeyError, TypeError, ValueError):
        return None


def wait_inserted(vmm: Vmm, cores: Iterable[int], timeout: float, log: StepLog) -> list[int]:
    """Wait for the guest's insert ``_OST`` on each core; return those not confirmed.

    A failure status raises :class:`ResizeError` naming the vCPU.  Cores that stay
    silent until the timeout are returned, not raised: the agent's
    ``OnlineCPUMem`` has its own bounded retries and gives the final word.
    """
    waiting = set(cores)
    t0 = log.clock()
    deadline = t0 + timeout
    while waiting:
        remaining = deadline - log.clock()
        if remaining <= 0:
            break
        ev = vmm.next_event(remaining)
        if ev is None:
            break
        if ev.get("event") == "SHUTDOWN":
            raise VmmGone("the VMM shut down during hot-add")
        info = _ost_info(ev)
        if info is None:
            continue
        core, source, status = info
        if core in waiting and source == OST_SOURCE_INSERT:
            if status != OST_SUCCESS:
                raise ResizeError(
                    f"guest failed to add vCPU {core}: _OST status {ost_text(status)}"
                )
            waiting.discard(core)
            log.add("insert_ost", t0, vcpu=core)
    return sorted(waiting)


def hot_remove(
    vmm: Vmm,
    core: int,
    qom_path: str | None,
    timeout: float,
    log: StepLog,
) -> None:
    """``device_del cpu-<core>`` and wait for completion, a refusal, or the timeout."""
    dev = device_id(core)
    t0 = log.clock()
    vmm.execute("device_del", {"id": dev})
    deadline = t0 + timeout
    last_status: int | None = None
    while True:
        remaining = deadline - log.clock()
        if remaining <= 0:
            if not _still_plugged(vmm, core):
                break
            raise RemoveTimeout(core, timeout, last_status)
        ev = vmm.next_event(min(remaining, POLL_SLICE))
        if ev is None:
            if not _still_plugged(vmm, core):
                break  # completion seen in the slot table (no event named it)
            continue
        name = ev.get("event")
        if name == "SHUTDOWN":
            raise VmmGone(f"the VMM shut down while removing vCPU {core}")
        if name == "DEVICE_DELETED":
            data = ev.get("data") or {}
            path = str(data.get("path") or "")
            if data.get("device") == dev or (qom_path and path == qom_path):
                break
            if qom_path and path.startswith(qom_path + "/") and not _still_plugged(vmm, core):
                break  # QEMU-on-x86 style: only the child (…/lapic) was named
            continue
        info = _ost_info(ev)
        if info is None or info[0] != core or info[1] != OST_SOURCE_EJECT:
            continue
        last_status = info[2]
        if last_status not in (OST_SUCCESS, OST_EJECT_IN_PROGRESS):
            log.add("eject_refused", t0, vcpu=core, status=last_status)
            raise EjectRefused(core, last_status)
    log.add("device_del", t0, vcpu=core)


def _still_plugged(vmm: Vmm, core: int) -> bool:
    try:
        slots = query_slots(vmm)
    except QmpCommandError:
        return True
    return any(s.core_id == core and s.plugged for s in slots)

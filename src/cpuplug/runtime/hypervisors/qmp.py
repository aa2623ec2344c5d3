"""Hotplug over QMP: the part of a hypervisor backend every QMP-speaking VMM shares.

``device_add`` with the props ``query-hotpluggable-cpus`` gave (as given: integer
JSON values), ``device_del`` by id, and completion from whichever signal the VMM
sends (:class:`cpuplug.runtime.hypervisor.Completion`).  Done better than Kata
where it hangs (docs/real-backends.md):

* ``device_del`` is followed by a wait **with a timeout** (Go Kata waits forever
  on a refused eject).
* Completion is ``DEVICE_DELETED`` naming the device *or its QOM path or a child of
  it* (QEMU 7.2 on x86 only ever names ``.../cpuN/lapic``), the final eject
  ``_OST`` for the slot, or the slot no longer being plugged in
  ``query-hotpluggable-cpus`` — never ``DEVICE_DELETED`` with the id alone.
* An ``ACPI_DEVICE_OST`` failure status for the slot (e.g. 0x82 "device busy")
  fails the removal at once, naming the vCPU and the status.
* A dropped QMP connection (VMM killed) ends every wait immediately, and a guest
  the VMM reports stopped (``internal-error``) is reported, not waited on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from cpuplug.cpuhp_abi import OstEjectStatus, OstSource, OstStatus, ost_text
from cpuplug.runtime.hypervisor import Capabilities, HypervisorKind, VmmRunState
from cpuplug.runtime.qmp_errors import QmpCommandError, QmpError, VmmGone
from cpuplug.runtime.resize import (
    EjectRefused,
    RemoveTimeout,
    ResizeError,
    Slot,
    StepLog,
    device_id,
    parse_slots,
)

POLL_SLICE = 0.25
"""Longest a removal wait goes without re-checking ``query-hotpluggable-cpus``."""

PERIPHERAL = "/machine/peripheral/"
"""Where QEMU (and the built-in VMM) put a device added with an id: ``PERIPHERAL + id``."""

_FAILED_STATES = frozenset({"internal-error", "guest-panicked", "shutdown", "io-error"})
"""``query-status`` states in which the guest will not finish anything by itself."""


class QmpLike(Protocol):
    """What hotplug needs from a QMP connection (``QmpConnection`` satisfies it)."""

    sent: list[str]

    def execute(
        self, command: str, arguments: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any: ...

    def next_event(self, timeout: float) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


def query_slots(vmm: QmpLike) -> list[Slot]:
    return parse_slots(vmm.execute("query-hotpluggable-cpus"))


def hot_add(
    vmm: QmpLike,
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


def wait_inserted(vmm: QmpLike, cores: Iterable[int], timeout: float, log: StepLog) -> list[int]:
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
        _raise_if_stopped(vmm, ev, "hot-add")
        info = _ost_info(ev)
        if info is None:
            continue
        core, source, status = info
        if core in waiting and source == OstSource.DEVICE_CHECK:
            if status != OstStatus.SUCCESS:
                text = ost_text(OstSource.DEVICE_CHECK, status)
                raise ResizeError(f"guest failed to add vCPU {core}: _OST status {text}")
            waiting.discard(core)
            log.add("insert_ost", t0, vcpu=core)
    return sorted(waiting)


def hot_remove(
    vmm: QmpLike,
    core: int,
    qom_path: str | None,
    timeout: float,
    log: StepLog,
) -> None:
    """``device_del cpu-<core>`` and wait for completion, a refusal, or the timeout.

    A vCPU plugged under another id (``device_add`` by another tool, or with no id)
    is named by its QOM path, which ``device_del`` takes as well: ``cpu-<core>``
    would be refused with DeviceNotFound, and the sandbox could never shrink again.
    """
    dev = device_id(core)
    t0 = log.clock()
    own = qom_path is None or qom_path == PERIPHERAL + dev
    vmm.execute("device_del", {"id": dev if own else qom_path})
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
        _raise_if_stopped(vmm, ev, f"removing vCPU {core}")
        if name == "DEVICE_DELETED":
            data = ev.get("data") or {}
            path = str(data.get("path") or "")
            if data.get("device") == dev or (qom_path and path == qom_path):
                break
            if qom_path and path.startswith(qom_path + "/") and not _still_plugged(vmm, core):
                break  # QEMU-on-x86 style: only the child (…/lapic) was named
            continue
        info = _ost_info(ev)
        if info is None or info[0] != core or info[1] != OstSource.EJECT_REQUEST:
            continue
        last_status = info[2]
        if last_status == OstStatus.SUCCESS and not _still_plugged(vmm, core):
            break  # the final eject _OST (QEMU's carries no device id: matched by slot)
        if last_status not in (OstStatus.SUCCESS, OstEjectStatus.IN_PROGRESS):
            log.add("eject_refused", t0, vcpu=core, status=last_status)
            raise EjectRefused(core, last_status)
    log.add("device_del", t0, vcpu=core)


def _raise_if_stopped(vmm: QmpLike, ev: Mapping[str, Any], during: str) -> None:
    """End a wait at once when the VMM shuts down or stops its guest on an error.

    QEMU stops a guest that hit ``internal-error`` (e.g. KVM emulation failure) and
    sends ``STOP``; nothing will complete after that, so waiting for the timeout
    would only hide the cause.
    """
    name = ev.get("event")
    if name == "SHUTDOWN":
        raise VmmGone(f"the VMM shut down during {during}")
    if name == "STOP":
        try:
            state = str(vmm.execute("query-status").get("status", ""))
        except QmpError:
            state = "unknown"
        if state in _FAILED_STATES:
            raise ResizeError(f"the VMM stopped the guest ({state}) during {during}")


def _still_plugged(vmm: QmpLike, core: int) -> bool:
    try:
        slots = query_slots(vmm)
    except QmpCommandError:
        return True
    return any(s.core_id == core and s.plugged for s in slots)


class QmpHypervisor:
    """A running VM driven over one QMP connection (see :class:`Hypervisor`)."""

    def __init__(self, kind: HypervisorKind, qmp: QmpLike, caps: Capabilities) -> None:
        self.kind = kind
        self.qmp = qmp
        self._caps = caps

    def capabilities(self) -> Capabilities:
        return self._caps

    def run_state(self) -> VmmRunState:
        try:
            status = self.qmp.execute("query-status")
        except VmmGone:
            return VmmRunState.GONE
        state = str((status or {}).get("status", ""))
        if state in _FAILED_STATES:
            return VmmRunState.FAILED
        return VmmRunState.RUNNING if status.get("running", True) else VmmRunState.PAUSED

    def slots(self) -> list[Slot]:
        return query_slots(self.qmp)

    def plug(self, slot: Slot, log: StepLog) -> None:
        hot_add(self.qmp, slot, log)

    def wait_plugged(self, cores: Sequence[int], timeout: float, log: StepLog) -> list[int]:
        return wait_inserted(self.qmp, cores, timeout, log)

    def unplug(self, slot: Slot, timeout: float, log: StepLog) -> None:
        hot_remove(self.qmp, slot.core_id, slot.qom_path, timeout, log)

    def vcpu_threads(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for e in self.qmp.execute("query-cpus-fast"):
            props = e.get("props") or {}
            if isinstance(props.get("core-id"), int) and isinstance(e.get("thread-id"), int):
                out[props["core-id"]] = e["thread-id"]
        return out

    def commands_sent(self) -> list[str]:
        return list(self.qmp.sent)

    def close(self) -> None:
        self.qmp.close()

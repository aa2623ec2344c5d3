"""The hypervisor interface: what the orchestration needs from any VMM.

Kata's ``Hypervisor`` interface in miniature.  The orchestration
(:mod:`cpuplug.runtime.sandbox`) is written once against :class:`Hypervisor`;
each VMM is a backend under :mod:`cpuplug.runtime.hypervisors` that is loaded by
name (:func:`backend`) and never imported by the orchestration (an import-linter
contract in ``pyproject.toml`` says so).

What differs between VMMs is declared, not special-cased: :class:`Capabilities`
says whether the VMM can hot-add, hot-remove, plug a slot again after removing
one, how many plugs a VM's life allows, and which completion signals it sends.
The orchestration reads them to choose between unplugging a vCPU and only
offlining it, so a VMM that crashes on re-plug (QEMU 7.2 under TCG) or runs out
of vCPU contexts (QEMU 10.0 under TCG) is driven safely without an ``if qemu``:
:meth:`Capabilities.unpluggable` is the one budget rule.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cpuplug.cpuhp_abi import HotplugMode
from cpuplug.errors import CpuplugError, UsageError
from cpuplug.runtime.process import ProcessIdentity
from cpuplug.runtime.resize import Slot, StepLog


class HypervisorKind(enum.StrEnum):
    """The backends, by the name users give (``--hypervisor``) and state files keep."""

    BUILTIN = "builtin"
    QEMU = "qemu"


class VmmRunState(enum.StrEnum):
    """What the VMM says of its guest (QMP ``query-status``), or that it is gone."""

    RUNNING = "running"
    PAUSED = "paused"
    FAILED = "failed"
    """Stopped by an error (QEMU's ``internal-error``, ``guest-panicked``...): waiting
    for it to finish anything is pointless."""
    GONE = "gone"


class Completion(enum.Flag):
    """Signals a VMM sends when a hotplug step is done (any of them suffices)."""

    INSERT_OST = enum.auto()
    """``ACPI_DEVICE_OST`` source 1 status 0 for the slot, after a plug."""
    EJECT_OST = enum.auto()
    """The final ``ACPI_DEVICE_OST`` source 3 status 0 for the slot, after an unplug."""
    DELETED_BY_ID = enum.auto()
    """``DEVICE_DELETED`` naming the device id (cpuplug's VMM, QEMU on arm64)."""
    DELETED_CHILD_PATH = enum.auto()
    """``DEVICE_DELETED`` naming only a child path (QEMU on x86: ``.../lapic``)."""
    SLOT_STATE = enum.auto()
    """The slot's state in ``query-hotpluggable-cpus`` (always available: polled)."""


@dataclass(frozen=True)
class Capabilities:
    """What a running VMM can do with vCPUs."""

    hot_add: bool
    hot_remove: bool
    replug: bool
    """A removed slot (or any slot after an unplug) can be plugged again."""
    max_plugs: int | None
    """Hot-adds a VM's whole life allows (None: unbounded)."""
    completion: Completion
    remove_note: str = ""
    """Why ``hot_remove`` is off when the VMM could remove but should not (said by
    ``inspect``; e.g. a QEMU build whose vCPU unplug is known to crash)."""

    def plugs_left(self, plugs_used: int) -> int | None:
        """Hot-adds still possible in this VM's life (None: unbounded)."""
        return None if self.max_plugs is None else max(self.max_plugs - plugs_used, 0)

    def unpluggable(self, wanted: int, plugged: int, plugs_used: int, maxcpus: int) -> int:
        """How many of ``wanted`` vCPUs a shrink may unplug now (the rest are offlined).

        The budget rule: after the unplugs the VM must still be able to grow back to
        ``maxcpus`` vCPUs, the plugged ones (online or offline) counting as free and
        every missing one costing a plug: ``plugged - n + plugs_left >= maxcpus``.  A
        VMM that cannot hot-remove or cannot plug again after an unplug unplugs none.
        """
        if not (self.hot_remove and self.replug) or wanted <= 0:
            return 0
        left = self.plugs_left(plugs_used)
        if left is None:
            return wanted
        return max(0, min(wanted, plugged + left - maxcpus))


@dataclass(frozen=True)
class VmSpec:
    """What to start: sizes and where the control sockets go."""

    name: str
    boot_vcpus: int
    maxcpus: int
    mode: HotplugMode
    qmp_path: Path
    agent_path: Path
    sandbox_dir: Path
    extra: dict[str, str] = field(default_factory=dict)
    """Backend options (QEMU: arch, qemu, accel, memory, kernel, initrd), persisted
    in the sandbox's state so every later command attaches to the same VM."""


class HypervisorError(CpuplugError):
    """The VMM failed to start or to carry out a step."""


class Hypervisor(Protocol):
    """One running VM, as the orchestration drives it.

    Every call is bounded in time; a VMM that dies makes the call fail at once
    (``VmmGone``) instead of at its timeout.
    """

    kind: HypervisorKind

    def capabilities(self) -> Capabilities: ...

    def run_state(self) -> VmmRunState: ...

    def slots(self) -> list[Slot]:
        """Every possible vCPU, ascending core id; plugged ones carry their QOM path."""
        ...

    def plug(self, slot: Slot, log: StepLog) -> None:
        """Start plugging one vCPU (returns once the VMM accepted it)."""
        ...

    def wait_plugged(self, cores: Sequence[int], timeout: float, log: StepLog) -> list[int]:
        """Wait for the guest to take each plugged core; return those not confirmed."""
        ...

    def unplug(self, slot: Slot, timeout: float, log: StepLog) -> None:
        """Unplug one vCPU and wait (bounded) until it is gone, refused, or timed out."""
        ...

    def vcpu_threads(self) -> dict[int, int]:
        """Host thread id of each plugged vCPU, by core id."""
        ...

    def commands_sent(self) -> list[str]:
        """The management commands this handle sent (shown in ``update`` history)."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    """A hypervisor kind: how to start its VMM and how to reach a running one."""

    kind: HypervisorKind

    def prepare(self, spec: VmSpec, progress: Callable[[str], None]) -> VmSpec:
        """Resolve everything ``start`` needs (binary, image, accelerator) and the mode
        this VMM really supports; returns the spec to start and to persist."""
        ...

    def start(self, spec: VmSpec) -> ProcessIdentity:
        """Launch the VMM process (do not wait for it); returns its identity."""
        ...

    def attach(self, spec: VmSpec) -> Hypervisor:
        """A handle on the running VMM started from ``spec`` (raises if unreachable)."""
        ...

    def request_quit(self, qmp_path: Path) -> None:
        """Ask the VMM serving ``qmp_path`` to exit (the polite first step of stopping
        it; takes a path, not a spec, so a sandbox whose state is lost can be stopped)."""
        ...

    def describe(self, spec: VmSpec) -> dict[str, Any]:
        """What ``inspect`` shows of the VMM (version, accelerator, its process)."""
        ...


_BACKEND_MODULES = {
    HypervisorKind.BUILTIN: "cpuplug.runtime.hypervisors.builtin",
    HypervisorKind.QEMU: "cpuplug.runtime.hypervisors.qemu",
}


def parse_kind(text: str) -> HypervisorKind:
    try:
        return HypervisorKind(text)
    except ValueError:
        names = ", ".join(k.value for k in HypervisorKind)
        raise UsageError(f"unknown hypervisor {text!r}: use one of {names}") from None


def backend(kind: HypervisorKind) -> Backend:
    """The backend for ``kind``, imported only now (the orchestration imports none)."""
    module = importlib.import_module(_BACKEND_MODULES[kind])
    made: Backend = module.BACKEND
    return made

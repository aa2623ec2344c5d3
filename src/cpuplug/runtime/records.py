"""What ``ps`` and ``inspect`` return: typed records the CLI renders or dumps as JSON.

The runtime API returns these, never dicts indexed by string, so a renamed field
is a type error in the CLI instead of a ``KeyError`` at a user's terminal.  The
JSON form (:func:`to_jsonable`) keeps the field names as they are, with enums as
their values: it is what ``--json`` prints and scripts rely on.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any


class SandboxStatus(enum.StrEnum):
    """A sandbox as the user sees it; the first four are also stored in its state file."""

    CREATING = "creating"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"
    DEAD = "dead"
    """Its state says running or creating but its VMM is gone: ``rm`` cleans it up."""
    BROKEN = "broken"
    """Its state file is unreadable; ``rm -f`` stops a VMM still serving its socket."""


class ContainerStatus(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class SandboxSummary:
    """One ``ps`` row."""

    name: str
    status: SandboxStatus
    vcpus: int
    """vCPUs the guest is to have online (plugged ones may be more: kept plugged, offline)."""
    maxcpus: int
    cpus: str
    pid: int | None
    created: float
    mode: str
    hypervisor: str


@dataclass(frozen=True)
class VcpuRow:
    """One possible vCPU: plugged in the VMM, and what the guest says of it."""

    vcpu: int
    plugged: bool
    present: bool | None
    enabled: bool | None
    online: bool | None
    thread_id: int | None


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    cmd: list[str]
    quota: int | None
    period: int | None
    cpuset: str
    status: str


@dataclass(frozen=True)
class SandboxConfigInfo:
    hotplug_mode: str
    static_sandbox_resource_mgmt: bool
    default_vcpus: str
    maxcpus: int
    boot_vcpus: int
    remove_timeout: float
    hypervisor: str


@dataclass
class SandboxInfo:
    """What ``inspect`` shows: config, vCPU map, cgroup limits and recent history."""

    name: str
    status: SandboxStatus
    created: float
    vmm_pid: int | None
    config: SandboxConfigInfo
    containers: list[ContainerInfo]
    target: int
    warning: str | None
    pending: dict[str, Any] | None
    history: list[dict[str, Any]]
    vcpus: list[VcpuRow] = field(default_factory=list)
    reconciled: bool = False
    vmm: dict[str, Any] = field(default_factory=dict)
    """What the backend says of the VMM (QEMU: version, accelerator, qemu_pid)."""
    guest: dict[str, Any] | None = None
    cgroups: dict[str, dict[str, Any]] = field(default_factory=dict)


def to_jsonable(record: Any) -> Any:
    """A record (or list of them) as plain JSON values; enums become their values."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_jsonable(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, enum.Enum):
        return record.value
    if isinstance(record, list | tuple):
        return [to_jsonable(x) for x in record]
    if isinstance(record, dict):
        return {str(k): to_jsonable(v) for k, v in record.items()}
    return record

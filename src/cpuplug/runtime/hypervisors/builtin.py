"""The built-in machine as a hypervisor backend: ``python -m cpuplug vmm``.

The runtime reaches it like any VMM: a process started with a command line, a
QMP socket and an agent socket — never by importing :mod:`cpuplug.vmm`.  Its
capabilities are the reference ones: hot-add and hot-remove in ACPI mode, a
removed slot can be plugged again, no bound on plugs, ``DEVICE_DELETED`` naming
the device itself (docs/architecture.md, "Where cpuplug knowingly does better").
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cpuplug.cpuhp_abi import HotplugMode
from cpuplug.runtime.hypervisor import (
    Capabilities,
    Completion,
    Hypervisor,
    HypervisorKind,
    VmSpec,
)
from cpuplug.runtime.hypervisors.qmp import QmpHypervisor
from cpuplug.runtime.process import ProcessIdentity, launch
from cpuplug.runtime.qmp_client import QmpConnection

QUIT_TIMEOUT = 2.0

_ACPI = Capabilities(
    hot_add=True,
    hot_remove=True,
    replug=True,
    max_plugs=None,
    completion=Completion.INSERT_OST
    | Completion.EJECT_OST
    | Completion.DELETED_BY_ID
    | Completion.SLOT_STATE,
)
_ONLINE_OFFLINE = Capabilities(
    hot_add=False,
    hot_remove=False,
    replug=False,
    max_plugs=0,
    completion=Completion.SLOT_STATE,
)


class BuiltinBackend:
    """Starts and attaches to ``cpuplug vmm`` processes."""

    kind = HypervisorKind.BUILTIN

    def command(self, spec: VmSpec) -> list[str]:
        return [
            sys.executable, "-m", "cpuplug", "vmm",
            "--smp", f"cpus={spec.boot_vcpus},maxcpus={spec.maxcpus}",
            "--qmp", f"unix:{spec.qmp_path}",
            "--agent", f"unix:{spec.agent_path}",
            "--mode", spec.mode.value,
            "--console", str(spec.sandbox_dir / "console.log"),
        ]  # fmt: skip

    def prepare(self, spec: VmSpec, progress: Callable[[str], None]) -> VmSpec:
        return spec  # nothing to fetch: the machine and its guest are this package

    def start(self, spec: VmSpec) -> ProcessIdentity:
        return launch(self.command(spec), spec.sandbox_dir / "vmm.log")

    def attach(self, spec: VmSpec) -> Hypervisor:
        qmp = QmpConnection(spec.qmp_path).connect()
        caps = _ACPI if spec.mode is HotplugMode.ACPI else _ONLINE_OFFLINE
        return QmpHypervisor(self.kind, qmp, caps)

    def request_quit(self, qmp_path: Path) -> None:
        with QmpConnection(qmp_path, timeout=QUIT_TIMEOUT) as qmp:
            qmp.execute("quit")

    def describe(self, spec: VmSpec) -> dict[str, Any]:
        return {"machine": "cpuplug vmm (arm64 virt-like, built in)", "arch": "aarch64"}


BACKEND = BuiltinBackend()

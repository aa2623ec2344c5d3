"""In-memory stand-ins for the VMM (QMP) and the guest agent, for runtime tests.

They model what the runtime relies on, per docs/contract.md §7/§8 and the agent protocol:
``query-hotpluggable-cpus`` highest first, ``device_add`` with integer props
emitting the guest's insert ``_OST``, ``device_del`` emitting eject-in-progress
then ``DEVICE_DELETED`` (or a refusal status), and an agent whose
``OnlineCPUMem`` onlines the plugged CPUs.  Every call is recorded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from cpuplug.agent_protocol import AgentError, format_cpu_list
from cpuplug.cpuhp_abi import HotplugMode
from cpuplug.runtime import process
from cpuplug.runtime.hypervisor import (
    Capabilities,
    Completion,
    HypervisorKind,
    VmSpec,
)
from cpuplug.runtime.hypervisors.qmp import QmpHypervisor
from cpuplug.runtime.process import ProcessIdentity
from cpuplug.runtime.qmp_client import QmpCommandError, VmmGone, VmmUnreachable


class FakeMachine:
    """Shared truth between the fake VMM and the fake agent (the 'hardware')."""

    def __init__(self, maxcpus: int = 8, boot: int = 1) -> None:
        self.maxcpus = maxcpus
        self.plugged: dict[int, str] = {i: f"/machine/unattached/device[{i}]" for i in range(boot)}
        self.ids: dict[str, int] = {}
        self.online: set[int] = set(range(boot))
        self.refuse_eject: dict[int, int] = {}  # core -> _OST status
        self.silent_eject: set[int] = set()  # never answers
        self.child_path_only = False  # DEVICE_DELETED names only .../lapic
        self.no_deleted_event = False  # completion visible only in the slot table
        self.dead = False
        self.die_after_del = False  # the VMM is killed right after accepting device_del
        self.lock = threading.Lock()
        self.qmp_log: list[tuple[str, dict[str, Any]]] = []
        self.agent_log: list[tuple[str, dict[str, Any]]] = []


class FakeVmm:
    def __init__(self, m: FakeMachine) -> None:
        self.m = m
        self.sent: list[str] = []
        self.events: deque[dict[str, Any]] = deque()
        self.closed = False

    def _emit(self, name: str, data: dict[str, Any]) -> None:
        self.events.append({"event": name, "data": data, "timestamp": {"seconds": 0}})

    def execute(
        self, command: str, arguments: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        if self.m.dead:
            raise VmmGone("fake VMM is dead")
        args = dict(arguments or {})
        self.sent.append(command)
        self.m.qmp_log.append((command, args))
        m = self.m
        if command == "query-hotpluggable-cpus":
            out = []
            for i in reversed(range(m.maxcpus)):
                e: dict[str, Any] = {
                    "type": "max-arm-cpu",
                    "vcpus-count": 1,
                    "props": {"socket-id": 0, "cluster-id": 0, "core-id": i, "thread-id": 0},
                }
                if i in m.plugged:
                    e["qom-path"] = m.plugged[i]
                out.append(e)
            return out
        if command == "query-cpus-fast":
            return [
                {
                    "cpu-index": i,
                    "qom-path": p,
                    "thread-id": 1000 + i,
                    "props": {"core-id": i},
                    "target": "aarch64",
                }
                for i, p in sorted(m.plugged.items())
            ]
        if command == "device_add":
            core = args["core-id"]
            if not isinstance(core, int):
                raise QmpCommandError(command, "GenericError", "Invalid parameter type")
            if core in m.plugged:
                raise QmpCommandError(command, "GenericError", "slot already plugged")
            m.plugged[core] = f"/machine/peripheral/{args['id']}"
            m.ids[args["id"]] = core
            self._emit(
                "ACPI_DEVICE_OST",
                {
                    "info": {
                        "device": args["id"],
                        "slot": str(core),
                        "slot-type": "CPU",
                        "source": 1,
                        "status": 0,
                    }
                },
            )
            return {}
        if command == "device_del":
            core = m.ids.get(args["id"])
            if core is None:
                raise QmpCommandError(command, "DeviceNotFound", f"Device '{args['id']}' not found")
            if core in m.silent_eject:
                m.dead = m.die_after_del
                return {}
            if core in m.refuse_eject:
                self._emit(
                    "ACPI_DEVICE_OST",
                    {
                        "info": {
                            "slot": str(core),
                            "slot-type": "CPU",
                            "source": 3,
                            "status": m.refuse_eject[core],
                        }
                    },
                )
                return {}
            self._emit(
                "ACPI_DEVICE_OST",
                {"info": {"slot": str(core), "slot-type": "CPU", "source": 3, "status": 0x84}},
            )
            path = m.plugged.pop(core)
            del m.ids[args["id"]]
            m.online.discard(core)
            if not m.no_deleted_event:
                if m.child_path_only:
                    self._emit("DEVICE_DELETED", {"path": path + "/lapic"})
                else:
                    self._emit("DEVICE_DELETED", {"device": args["id"], "path": path})
            return {}
        if command in ("query-status", "quit"):
            return {"status": "running"} if command == "query-status" else {}
        raise QmpCommandError(
            command, "CommandNotFound", f"The command {command} has not been found"
        )

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        if self.events:
            return self.events.popleft()
        if self.m.dead:
            raise VmmGone("fake VMM died")
        time.sleep(min(timeout, 0.01))
        return None

    def close(self) -> None:
        self.closed = True


class FakeAgent:
    def __init__(self, m: FakeMachine) -> None:
        self.m = m
        self.fail_online_once = False
        self.cgroups: dict[str, dict[str, Any]] = {}

    def _log(self, name: str, **kw: Any) -> None:
        if self.m.dead:
            raise AgentError("EIO", "agent connection closed", None)
        self.m.agent_log.append((name, kw))

    def guest_details(self, timeout: float | None = None) -> dict[str, Any]:
        self._log("GuestDetails")
        m = self.m
        return {
            "possible": f"0-{m.maxcpus - 1}",
            "present": format_cpu_list(m.plugged),
            "enabled": format_cpu_list(m.plugged),
            "online": format_cpu_list(m.online),
            "offline": "",
            "kernel": "fake",
        }

    def create_container(self, container_id: str, cmd: list[str], **resources: Any) -> None:
        self._log("CreateContainer", container_id=container_id, cmd=cmd, **resources)
        self.cgroups[container_id] = {k: v for k, v in resources.items() if v is not None}

    def start_container(self, container_id: str) -> int:
        self._log("StartContainer", container_id=container_id)
        return 42

    def exec_process(
        self, container_id: str, cmd: list[str], timeout: float | None = None
    ) -> dict[str, Any]:
        self._log("ExecProcess", container_id=container_id, cmd=cmd)
        if cmd == ["nproc"]:
            return {"exit_code": 0, "stdout": f"{len(self.m.online)}\n", "stderr": ""}
        return {"exit_code": 127, "stdout": "", "stderr": f"{cmd[0]}: not found\n"}

    def kill_container(self, container_id: str, signal: int | None = None) -> None:
        self._log("KillContainer", container_id=container_id)

    def remove_container(self, container_id: str) -> None:
        self._log("RemoveContainer", container_id=container_id)

    def online_cpu_mem(self, nb_cpus: int) -> list[int]:
        self._log("OnlineCPUMem", nb_cpus=nb_cpus)
        if self.fail_online_once:
            self.fail_online_once = False
            raise AgentError("EIO", "simulated crash before onlining", None)
        for core in sorted(self.m.plugged):
            if len(self.m.online) >= nb_cpus:
                break
            self.m.online.add(core)
        return sorted(self.m.online)

    def offline_cpus(self, nb_cpus: int) -> list[int]:
        """Like the agent: highest-numbered online CPU first, never CPU 0."""
        self._log("OfflineCPUs", nb_cpus=nb_cpus)
        if nb_cpus < 1:
            raise AgentError("EINVAL", "OfflineCPUs: 'nb_cpus' must be > 0", None)
        for core in sorted(self.m.online - {0}, reverse=True):
            if len(self.m.online) <= nb_cpus:
                break
            self.m.online.discard(core)
        return sorted(self.m.online)

    def update_container(self, container_id: str, **resources: Any) -> None:
        self._log("UpdateContainer", container_id=container_id, **resources)
        self.cgroups.setdefault(container_id, {}).update(
            {k: v for k, v in resources.items() if v is not None}
        )

    def stats_container(self, container_id: str) -> dict[str, Any]:
        self._log("StatsContainer", container_id=container_id)
        return {
            "cpu": {"usage_usec": 0, "nr_throttled": 0},
            "cpuset_effective": self.cgroups.get(container_id, {}).get("cpuset_cpus", ""),
            "tasks": 1,
        }

    def close(self) -> None:
        pass


class FakeBackend:
    """A :class:`cpuplug.runtime.hypervisor.Backend` whose VMM is a ``sleep`` process
    (so liveness, stop and rm act on a real process) driven over :class:`FakeVmm`
    through the real QMP hypervisor code."""

    kind = HypervisorKind.BUILTIN

    def __init__(self, world: FakeWorld) -> None:
        self.world = world

    def prepare(self, spec: VmSpec, progress: Callable[[str], None]) -> VmSpec:
        return spec

    def describe(self, spec: VmSpec) -> dict[str, Any]:
        return {"machine": "fake"}

    def start(self, spec: VmSpec) -> ProcessIdentity:
        m = self.world.m
        m.maxcpus = spec.maxcpus + self.world.extra_slots
        m.plugged = {i: f"/machine/unattached/device[{i}]" for i in range(spec.boot_vcpus)}
        m.online = set(range(spec.boot_vcpus))
        ident = process.launch(["sleep", "300"], spec.sandbox_dir / "vmm.log")
        self.world.pids[str(spec.qmp_path)] = ident.pid
        return ident

    def attach(self, spec: VmSpec) -> QmpHypervisor:
        if self.world.m.dead:
            raise VmmUnreachable("fake VMM is dead")
        vmm = FakeVmm(self.world.m)
        self.world.vmms.append(vmm)
        caps = self.world.caps
        if spec.mode is HotplugMode.ONLINE_OFFLINE:
            caps = replace(caps, hot_add=False, hot_remove=False, replug=False)
        return QmpHypervisor(self.kind, vmm, caps)

    def request_quit(self, qmp_path: Path) -> None:
        """QMP ``quit``: the stand-in process exits, as a VMM does."""
        self.world.m.qmp_log.append(("quit", {}))
        pid = self.world.pids.get(str(qmp_path))
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


BUILTIN_CAPS = Capabilities(
    hot_add=True,
    hot_remove=True,
    replug=True,
    max_plugs=None,
    completion=Completion.INSERT_OST | Completion.DELETED_BY_ID | Completion.SLOT_STATE,
)


class FakeWorld:
    """A :class:`cpuplug.runtime.sandbox.Runtime` backend and agent over one FakeMachine."""

    def __init__(self, maxcpus: int = 8) -> None:
        self.m = FakeMachine(maxcpus)
        self.agent = FakeAgent(self.m)
        self.vmms: list[FakeVmm] = []
        self.pids: dict[str, int] = {}
        self.caps = BUILTIN_CAPS
        self.extra_slots = 0
        """Slots the fake VMM has beyond the sandbox's maxcpus (QEMU's extra_vcpu_slots)."""
        self.fake_backend = FakeBackend(self)

    def backend(self, kind: HypervisorKind) -> FakeBackend:
        return self.fake_backend

    def kill_vmm(self) -> None:
        """SIGKILL the first sandbox's stand-in VMM and wait until it is gone."""
        ident = process.ProcessIdentity.of(next(iter(self.pids.values())))
        assert ident is not None
        os.kill(ident.pid, signal.SIGKILL)
        assert process.wait_exit(ident, 10)

    def vmm_gone(self, timeout: float = 5.0) -> bool:
        """The first sandbox's stand-in VMM has exited (waited for, bounded, and reaped:
        it is our child, so another process that killed it leaves it a zombie)."""
        ident = process.ProcessIdentity.of(next(iter(self.pids.values())))
        return ident is None or process.wait_exit(ident, timeout)

    def cleanup(self) -> None:
        for pid in self.pids.values():
            ident = process.ProcessIdentity.of(pid)
            if ident is not None:
                process.terminate(ident)

    def connect_agent(self, path: Path) -> FakeAgent:
        return self.agent

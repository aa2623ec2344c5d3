"""Sandbox lifecycle and resize: Kata's ``Sandbox``/``updateResources`` for cpuplug.

:class:`Runtime` is the in-process API behind every CLI command.  A sandbox is a
VMM process (``python -m cpuplug vmm``) plus one container created through the
guest agent; everything about it is in the state store, so each method can run
in a fresh process.  The VMM is reached only over QMP and the guest only over the
agent protocol (docs/contract.md §0) — the connection factories are injectable so tests can
drive the orchestration against fakes.

Order of a resize (docs/contract.md §8, Kata's ``Container.update`` order): VM resize and
online first, the guest cgroup last.  Unlike Kata, every wait is bounded, the
state is written after each hotplug step, and an interrupted resize is
reconciled with ``query-hotpluggable-cpus`` by the next command.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

from cpuplug import agent_protocol as ap
from cpuplug.errors import CpuplugError, UsageError
from cpuplug.runtime import resize as rz
from cpuplug.runtime.agent_client import AgentClient, wait_for_agent
from cpuplug.runtime.config import RuntimeConfig
from cpuplug.runtime.qmp_client import QmpConnection, QmpError, VmmUnreachable
from cpuplug.runtime.sizing import (
    ContainerCpu,
    boot_topology,
    format_cpu_list,
    parse_cpu_list,
    vcpu_target,
)
from cpuplug.runtime.state import (
    ContainerState,
    SandboxState,
    StateError,
    StateStore,
    process_alive,
    process_start_ticks,
    validate_name,
)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
LOCK_TIMEOUT = 60.0
MIN_CFS_US = 1000
MAX_CFS_PERIOD_US = 1_000_000
FAULT_ENV = "CPUPLUG_FAULT"
"""Test hook for crash tests.  ``CPUPLUG_FAULT=<step>`` SIGKILLs this process at that
named step, to prove a killed command leaves a state the next one reconciles
(``after-device-add`` is between ``device_add`` and ``OnlineCPUMem``);
``CPUPLUG_FAULT=kill-vmm:<step>`` SIGKILLs the sandbox's VMM there instead and
carries on, to prove the command then fails cleanly."""

# Children started by this process, so stop() can reap them (no zombies in tests).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class SandboxError(CpuplugError):
    """A sandbox operation failed (not a usage error)."""


class SandboxNotRunning(SandboxError):
    pass


def fault_point(step: str, vmm_pid: int | None = None) -> None:
    """Die here (or kill the VMM here), uncleanly, if the test hook names this step."""
    fault = os.environ.get(FAULT_ENV)
    if fault == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == f"kill-vmm:{step}" and vmm_pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(vmm_pid, signal.SIGKILL)


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Resources:
    """Container CPU limits as the user gave them (None = leave unchanged)."""

    quota: int | None = None
    period: int | None = None
    cpuset: str | None = None

    def __post_init__(self) -> None:
        # Linux's cpu.max ranges (kernel/sched/core.c): period 1 ms..1 s, quota >= 1 ms.
        if self.period is not None and not MIN_CFS_US <= self.period <= MAX_CFS_PERIOD_US:
            raise UsageError(
                f"cpu period must be {MIN_CFS_US}..{MAX_CFS_PERIOD_US} µs, got {self.period}"
            )
        if self.quota is not None and self.quota != -1 and self.quota < MIN_CFS_US:
            raise UsageError(
                f"cpu quota must be >= {MIN_CFS_US} µs or -1 (unlimited), got {self.quota}"
            )
        if self.cpuset is not None:
            parse_cpu_list(self.cpuset)

    def merged_into(self, c: ContainerState) -> ContainerState:
        """Kata's merge: only the fields given replace the stored ones."""
        out = replace(c)
        if self.quota is not None:
            out.quota = self.quota
            if out.period is None and self.period is None:
                out.period = 100_000
        if self.period is not None:
            out.period = self.period
        if self.cpuset is not None:
            out.cpuset = self.cpuset
        return out


@dataclass(frozen=True)
class RunRequest:
    cmd: list[str]
    resources: Resources = Resources()
    name: str | None = None


@dataclass
class UpdateResult:
    name: str
    before: int
    after: int
    target: int
    quota: int | None
    period: int | None
    added: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    warning: str | None = None
    qmp_commands: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------- seams


class AgentLike(Protocol):
    def guest_details(self, timeout: float | None = None) -> dict[str, Any]: ...
    def create_container(self, container_id: str, cmd: list[str], **resources: Any) -> None: ...
    def start_container(self, container_id: str) -> int: ...
    def exec_process(
        self, container_id: str, cmd: list[str], timeout: float | None = None
    ) -> dict[str, Any]: ...
    def kill_container(self, container_id: str, signal: int | None = None) -> None: ...
    def remove_container(self, container_id: str) -> None: ...
    def online_cpu_mem(self, nb_cpus: int) -> list[int]: ...
    def offline_cpus(self, nb_cpus: int) -> list[int]: ...
    def update_container(self, container_id: str, **resources: Any) -> None: ...
    def stats_container(self, container_id: str) -> dict[str, Any]: ...
    def close(self) -> None: ...


class VmmLike(rz.Vmm, Protocol):
    sent: list[str]

    def close(self) -> None: ...


class Launcher(Protocol):
    """Starts a sandbox's VMM; returns its pid."""

    def __call__(self, st: SandboxState, qmp: Path, agent: Path, sandbox_dir: Path) -> int: ...


def launch_vmm(st: SandboxState, qmp: Path, agent: Path, sandbox_dir: Path) -> int:
    """Start ``python -m cpuplug vmm`` in its own session, output into ``vmm.log``."""
    cmd = [
        sys.executable,
        "-m",
        "cpuplug",
        "vmm",
        "--smp",
        f"cpus={st.boot_vcpus},maxcpus={st.maxcpus}",
        "--qmp",
        f"unix:{qmp}",
        "--agent",
        f"unix:{agent}",
        "--mode",
        st.mode,
        "--console",
        str(sandbox_dir / "console.log"),
    ]
    with open(sandbox_dir / "vmm.log", "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _connect_qmp(path: Path) -> VmmLike:
    return QmpConnection(path).connect()


def _connect_agent(path: Path) -> AgentLike:
    return AgentClient(path).connect()


class _Session:
    """Lazily opened connections for one command; ``qmp`` is only opened if used."""

    def __init__(self, rt: Runtime, st: SandboxState) -> None:
        self._rt = rt
        self.st = st
        self._qmp: VmmLike | None = None
        self._agent: AgentLike | None = None

    @property
    def qmp(self) -> VmmLike:
        if self._qmp is None:
            self._qmp = self._rt.connect_qmp(self._rt.store.socket_path(self.st.name, "qmp"))
        return self._qmp

    @property
    def qmp_commands(self) -> list[str]:
        return list(self._qmp.sent) if self._qmp is not None else []

    @property
    def agent(self) -> AgentLike:
        if self._agent is None:
            self._agent = self._rt.connect_agent(self._rt.store.socket_path(self.st.name, "agent"))
        return self._agent

    def adopt_agent(self, agent: AgentLike) -> None:
        """Use an already connected agent client (the one that answered at start-up)."""
        self._agent = agent

    def close(self) -> None:
        for conn in (self._qmp, self._agent):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self._qmp = self._agent = None


# --------------------------------------------------------------------------- runtime


class Runtime:
    """The in-process API: one method per CLI command."""

    def __init__(
        self,
        root: str | Path | None = None,
        config: RuntimeConfig | None = None,
        *,
        launcher: Launcher = launch_vmm,
        connect_qmp: Callable[[Path], VmmLike] = _connect_qmp,
        connect_agent: Callable[[Path], AgentLike] = _connect_agent,
        start_timeout: float = START_TIMEOUT,
        host_cpus: int | None = None,
    ) -> None:
        self.store = StateStore(root)
        self.config = config if config is not None else RuntimeConfig()
        self.launcher = launcher
        self.connect_qmp = connect_qmp
        self.connect_agent = connect_agent
        self.start_timeout = start_timeout
        self.host_cpus = host_cpus

    # ------------------------------------------------------------------ helpers

    def alive(self, st: SandboxState) -> bool:
        return process_alive(st.vmm_pid, st.vmm_start_ticks)

    def status(self, st: SandboxState) -> str:
        """``running``/``creating`` only while the VMM lives; else ``dead``."""
        if st.status == "creating" and st.vmm_pid is None:
            return "creating"  # a run is starting it
        if st.status in ("running", "creating") and not self.alive(st):
            return "dead"
        return st.status

    @contextlib.contextmanager
    def _locked(self, name: str, timeout: float = LOCK_TIMEOUT) -> Iterator[SandboxState]:
        with self.store.lock(name, timeout):
            yield self.store.load(name)

    def _require_running(self, st: SandboxState) -> None:
        status = self.status(st)
        if status != "running":
            raise SandboxNotRunning(
                f"sandbox {st.name} is {status}"
                + (" (its VMM exited; cpuplug rm it)" if status == "dead" else "")
            )

    @staticmethod
    def _sizing_input(containers: list[ContainerState]) -> list[ContainerCpu]:
        return [
            ContainerCpu(c.quota, c.period, c.cpuset, stopped=c.status == "stopped")
            for c in containers
        ]

    # ------------------------------------------------------------------ run

    def run(self, req: RunRequest, on_step: Callable[[str], None] | None = None) -> SandboxState:
        """Start a sandbox: VMM, agent, container, hot-add to the target, start."""
        if not req.cmd:
            raise UsageError("run needs a command (cpuplug run [OPTIONS] -- CMD ARGS...)")
        name = validate_name(req.name) if req.name else f"sb-{secrets.token_hex(3)}"
        cfg = self.config
        maxcpus = cfg.max_vcpus(self.host_cpus)
        default = cfg.effective_default_vcpus(maxcpus)
        container = req.resources.merged_into(ContainerState(id=name, cmd=list(req.cmd)))
        topo, sizing = boot_topology(
            self._sizing_input([container]), default, maxcpus, cfg.static_sandbox_resource_mgmt
        )
        boot = topo.boot
        if cfg.hotplug_mode == "online-offline":
            boot = topo.maxcpus  # every vCPU is present from boot (docs/contract.md §9)
        sandbox_dir = self.store.create(name)
        qmp_path = self.store.socket_path(name, "qmp")
        agent_path = self.store.socket_path(name, "agent")
        st = SandboxState(
            name=name,
            created=time.time(),
            mode=cfg.hotplug_mode,
            static=cfg.static_sandbox_resource_mgmt,
            default_vcpus=str(default),
            maxcpus=topo.maxcpus,
            boot_vcpus=boot,
            remove_timeout=cfg.remove_timeout,
            containers=[container],
            plugged=list(range(boot)),
            target=sizing.target,
            warning=sizing.warning,
        )
        self.store.save(st)
        note = on_step or (lambda _s: None)
        t_start = time.monotonic()
        session = _Session(self, st)
        try:
            with self.store.lock(name, LOCK_TIMEOUT):
                st.vmm_pid = self.launcher(st, qmp_path, agent_path, sandbox_dir)
                st.vmm_start_ticks = process_start_ticks(st.vmm_pid)
                self.store.save(st)
                note(f"VMM started (pid {st.vmm_pid}, {boot} of {topo.maxcpus} vCPUs)")
                self._wait_vmm(session, qmp_path, agent_path)
                st.record(
                    {
                        "op": "boot",
                        "at": time.time(),
                        "vcpus": boot,
                        "ms": round((time.monotonic() - t_start) * 1000, 1),
                    }
                )
                note("guest agent ready")
                session.agent.create_container(
                    container.id, container.cmd, quota=container.quota, period=container.period
                )
                result = self._apply(session, st, [container], sizing.target, sizing.warning)
                if result.after != boot:
                    note(f"vCPUs {boot} -> {result.after}")
                session.agent.start_container(container.id)
                container.status = "running"
                st.status = "running"
                st.record(
                    {
                        "op": "run",
                        "at": time.time(),
                        "vcpus": result.after,
                        "ms": round((time.monotonic() - t_start) * 1000, 1),
                    }
                )
                self.store.save(st)
        except BaseException as exc:
            session.close()
            log_tail = self._log_tail(sandbox_dir)
            self._kill_vmm(st)
            self.store.remove(name)
            if isinstance(exc, CpuplugError) and log_tail:
                raise SandboxError(f"{exc} [vmm: {log_tail}]") from None
            raise
        session.close()
        return st

    def _wait_vmm(self, session: _Session, qmp_path: Path, agent_path: Path) -> None:
        """Wait until QMP answers and the guest agent is up, or the VMM dies."""
        st = session.st
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        while True:
            if not self.alive(st):
                raise SandboxError("the VMM exited during start-up")
            try:
                session.qmp.execute("query-status")
                break
            except (VmmUnreachable, QmpError) as exc:
                session.close()
                if time.monotonic() >= deadline:
                    raise SandboxError(f"the VMM did not serve QMP in time: {exc}") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        for path in (qmp_path, agent_path):
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)
        remaining = max(deadline - time.monotonic(), 0.1)
        session.adopt_agent(
            wait_for_agent(
                agent_path, remaining, alive=lambda: self.alive(st), connect=self.connect_agent
            )
        )

    @staticmethod
    def _log_tail(sandbox_dir: Path) -> str:
        try:
            lines = (sandbox_dir / "vmm.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])

    # ------------------------------------------------------------------ resize core

    def _apply(
        self,
        session: _Session,
        st: SandboxState,
        containers: list[ContainerState],
        target: int,
        warning: str | None,
    ) -> UpdateResult:
        """Resize to ``target`` (unless static) and push limits to the guest cgroups."""
        t0 = time.monotonic()
        log = rz.StepLog()
        before = len(st.plugged)
        result = UpdateResult(st.name, before, before, target, None, None, warning=warning)
        online: list[int] | None = None
        if st.static:
            if target != before and result.warning is None:
                result.warning = (
                    f"static sandbox: vCPUs stay at {before} (wanted {target}); quota only"
                )
            target = before
        # online-offline: every vCPU is always plugged, so `before` says nothing about
        # how many the guest has online; ask it on every update
        if st.pending is not None or target != before or st.mode == "online-offline":
            online = self._resize(session, st, target, log, result)
        main = containers[0]
        period = main.period if main.quota is not None else None
        cpuset = format_cpu_list(online) if online is not None else None
        if st.mode == "online-offline" and online is not None:
            # every vCPU stays plugged; confine the container to the first `target`
            # online (the guest already offlined the rest on a shrink)
            cpuset = format_cpu_list(sorted(online)[:target])
        for c in containers:
            if c.status == "stopped":
                continue
            t = log.clock()
            session.agent.update_container(c.id, cpuset_cpus=cpuset, quota=c.quota, period=c.period)
            log.add("update_container", t, container=c.id, quota=c.quota, cpuset=cpuset)
        st.containers = containers
        st.pending = None
        st.target = target
        st.warning = result.warning
        result.after = len(st.plugged)
        result.quota, result.period = main.quota, period
        result.qmp_commands = session.qmp_commands
        result.steps = log.steps
        result.seconds = time.monotonic() - t0
        st.record(
            {
                "op": "update",
                "at": time.time(),
                "before": before,
                "after": result.after,
                "quota": main.quota,
                "period": period,
                "ms": round(result.seconds * 1000, 2),
                "steps": log.steps,
                "qmp": result.qmp_commands,
            }
        )
        self.store.save(st)
        return result

    def _resize(
        self,
        session: _Session,
        st: SandboxState,
        target: int,
        log: rz.StepLog,
        result: UpdateResult,
    ) -> list[int]:
        """Hotplug to ``target``; returns the guest's online CPUs afterwards."""
        if st.mode == "online-offline":
            return self._resize_online_offline(session, st, target, log, result)
        interrupted = st.pending is not None  # a killed command left its guest side undone
        qmp = session.qmp
        slots = rz.query_slots(qmp)
        plan = rz.plan_resize(slots, st.plugged, target, range(st.boot_vcpus))
        if plan.warning:
            result.warning = plan.warning if result.warning is None else result.warning
        st.plugged = list(plan.current)
        result.before = len(st.plugged)
        st.pending = {"op": "resize", "target": target, "at": time.time()}
        self.store.save(st)
        by_core = {s.core_id: s for s in slots}
        for core in plan.add:
            rz.hot_add(qmp, by_core[core], log)
            st.plugged.append(core)
            result.added.append(core)
            self.store.save(st)
            fault_point("after-device-add", st.vmm_pid)
        online: list[int] | None = None
        if plan.add or interrupted:
            rz.wait_inserted(qmp, plan.add, st.remove_timeout, log)
            t = log.clock()
            online = session.agent.online_cpu_mem(len(st.plugged))
            log.add("online_cpu_mem", t, online=format_cpu_list(online))
            missing = [c for c in st.plugged if c not in online]
            if missing:
                raise rz.ResizeError(
                    f"vCPU(s) {format_cpu_list(missing)} are plugged but not online in the guest"
                )
        for core in plan.remove:
            try:
                rz.hot_remove(qmp, core, by_core[core].qom_path, st.remove_timeout, log)
            except rz.ResizeError as exc:
                st.pending = None  # the VMM's state is known: the vCPU is still there
                st.record(
                    {
                        "op": "remove-failed",
                        "at": time.time(),
                        "vcpu": core,
                        "error": str(exc),
                        "steps": log.steps,
                    }
                )
                self.store.save(st)
                raise
            st.plugged.remove(core)
            result.removed.append(core)
            self.store.save(st)
        if plan.remove:
            details = session.agent.guest_details()
            online = sorted(ap.parse_cpu_list(str(details.get("online", ""))))
        return online if online is not None else list(st.plugged)

    def _resize_online_offline(
        self,
        session: _Session,
        st: SandboxState,
        target: int,
        log: rz.StepLog,
        result: UpdateResult,
    ) -> list[int]:
        """docs/contract.md §9's baseline: every vCPU stays plugged; the guest onlines or offlines.

        The guest's online count (side-effect free ``GuestDetails``) decides the
        direction: grow is ``OnlineCPUMem``, shrink is ``OfflineCPUs``, so a shrink
        really takes CPUs away from the guest instead of only narrowing the cpuset.
        Their vCPU threads stay in the VMM, and a guest root can online them again:
        the density and security costs this mode exists to measure.
        """
        t = log.clock()
        details = session.agent.guest_details()
        online = sorted(ap.parse_cpu_list(str(details.get("online", ""))))
        log.add("guest_details", t, online=format_cpu_list(online))
        t = log.clock()
        if target < len(online):
            online = session.agent.offline_cpus(target)
            log.add("offline_cpus", t, online=format_cpu_list(online))
        else:
            online = session.agent.online_cpu_mem(target)
            log.add("online_cpu_mem", t, online=format_cpu_list(online))
        return online

    # ------------------------------------------------------------------ commands

    def update(self, name: str, resources: Resources) -> UpdateResult:
        """Recompute the target from the merged limits, resize, update the cgroup."""
        with self._locked(name) as st:
            self._require_running(st)
            session = _Session(self, st)
            try:
                containers = [resources.merged_into(st.containers[0]), *st.containers[1:]]
                sizing = vcpu_target(
                    self._sizing_input(containers), Fraction(st.default_vcpus), st.maxcpus
                )
                warning = sizing.warning
                if st.static and sizing.wanted != len(st.plugged):
                    warning = (
                        f"static sandbox: vCPUs stay at {len(st.plugged)} (the limits want "
                        f"{sizing.wanted}); only the quota changes"
                    )
                return self._apply(session, st, containers, sizing.target, warning)
            except CpuplugError as exc:
                # A killed VMM closes its sockets while its threads still exit:
                # give it a moment to be gone before deciding what to report.
                if not isinstance(exc, UsageError) and _wait_exit(
                    st.vmm_pid or 0, st.vmm_start_ticks, None, 1.0
                ):
                    raise SandboxError(
                        f"sandbox {name}: the VMM exited during the update ({exc}); "
                        f"cpuplug rm {name} cleans it up"
                    ) from None
                raise
            finally:
                session.close()

    def exec(self, name: str, cmd: list[str], timeout: float | None = None) -> dict[str, Any]:
        if not cmd:
            raise UsageError("exec needs a command (cpuplug exec NAME -- CMD ARGS...)")
        st = self.store.load(name)
        self._require_running(st)
        agent = self.connect_agent(self.store.socket_path(name, "agent"))
        try:
            return agent.exec_process(st.containers[0].id, cmd, timeout)
        finally:
            agent.close()

    def ps(self) -> list[dict[str, Any]]:
        out = []
        for name in self.store.names():
            try:
                st = self.store.load(name)
            except CpuplugError:
                # Listed, not hidden: its VMM may still run, and rm -f cleans it up.
                out.append(
                    {
                        "name": name,
                        "status": "broken",
                        "vcpus": 0,
                        "maxcpus": 0,
                        "cpus": "-",
                        "pid": None,
                        "created": _mtime(self.store.dir(name)),
                        "mode": "-",
                    }
                )
                continue
            c = st.containers[0] if st.containers else None
            status = self.status(st)
            out.append(
                {
                    "name": st.name,
                    "status": status,
                    "vcpus": len(st.plugged) if status == "running" else 0,
                    "maxcpus": st.maxcpus,
                    "cpus": _cpus_text(c.quota, c.period) if c else "",
                    "pid": st.vmm_pid,
                    "created": st.created,
                    "mode": st.mode,
                }
            )
        return out

    def inspect(self, name: str) -> dict[str, Any]:
        """Config, vCPU map, cgroup limits and history; reconciles first if running."""
        with self._locked(name) as st:
            info: dict[str, Any] = {
                "name": st.name,
                "status": self.status(st),
                "created": st.created,
                "vmm_pid": st.vmm_pid,
                "config": {
                    "hotplug_mode": st.mode,
                    "static_sandbox_resource_mgmt": st.static,
                    "default_vcpus": st.default_vcpus,
                    "maxcpus": st.maxcpus,
                    "boot_vcpus": st.boot_vcpus,
                    "remove_timeout": st.remove_timeout,
                },
                "containers": [
                    {
                        "id": c.id,
                        "cmd": c.cmd,
                        "quota": c.quota,
                        "period": c.period,
                        "cpuset": c.cpuset,
                        "status": c.status,
                    }
                    for c in st.containers
                ],
                "target": st.target,
                "warning": st.warning,
                "pending": st.pending,
                "history": st.history[-20:],
            }
            if info["status"] != "running":
                info["vcpus"] = _vcpu_map(st.maxcpus, st.plugged, {}, None)
                return info
            session = _Session(self, st)
            try:
                reconciled = self._reconcile(session, st)
                info["reconciled"] = reconciled
                threads = {
                    int(e["props"]["core-id"]): int(e["thread-id"])
                    for e in session.qmp.execute("query-cpus-fast")
                }
                details = session.agent.guest_details()
                info["guest"] = details
                info["vcpus"] = _vcpu_map(st.maxcpus, st.plugged, threads, details)
                cgroups = {}
                for c in st.containers:
                    with contextlib.suppress(ap.AgentError):
                        cgroups[c.id] = session.agent.stats_container(c.id)
                info["cgroups"] = cgroups
                info["pending"] = st.pending
                info["history"] = st.history[-20:]
            finally:
                session.close()
            return info

    def _reconcile(self, session: _Session, st: SandboxState) -> bool:
        """Make the state match the VMM; finish an interrupted resize's guest side."""
        if st.mode == "online-offline":
            return False
        slots = rz.query_slots(session.qmp)
        order = rz.reconcile_order(st.plugged, [s.core_id for s in slots if s.plugged])
        changed = order != st.plugged or st.pending is not None
        st.plugged = order
        if st.pending is not None:
            online = session.agent.online_cpu_mem(len(order))
            for c in st.containers:
                if c.status != "stopped":
                    session.agent.update_container(
                        c.id, cpuset_cpus=format_cpu_list(online), quota=c.quota, period=c.period
                    )
            st.record(
                {"op": "reconcile", "at": time.time(), "vcpus": len(order), "pending": st.pending}
            )
            st.pending = None
        if changed:
            self.store.save(st)
        return changed

    def events(self, name: str) -> list[dict[str, Any]]:
        return list(self.store.load(name).history)

    def follow(self, name: str, idle_timeout: float | None = None) -> Iterator[ap.Event]:
        """Live guest events (CpuRegistered, CpuOnline, OstSent...) until the VM stops."""
        st = self.store.load(name)
        self._require_running(st)
        client = AgentClient(self.store.socket_path(name, "agent"))
        try:
            yield from client.subscribe(timeout=idle_timeout)
        finally:
            client.close()

    def stop(self, name: str) -> SandboxState:
        with self._locked(name) as st:
            self._stop_locked(st)
            return st

    def _stop_locked(self, st: SandboxState) -> None:
        """Kill the containers, ``quit`` the VMM, make sure it is gone; caller holds the lock."""
        name = st.name
        if self.alive(st):
            with contextlib.suppress(Exception):
                agent = self.connect_agent(self.store.socket_path(name, "agent"))
                try:
                    for c in st.containers:
                        agent.kill_container(c.id)
                finally:
                    agent.close()
            with contextlib.suppress(Exception):
                qmp = self.connect_qmp(self.store.socket_path(name, "qmp"))
                try:
                    qmp.execute("quit", timeout=2.0)
                finally:
                    qmp.close()
        self._kill_vmm(st)
        for c in st.containers:
            c.status = "stopped"
        st.status = "stopped"
        st.record({"op": "stop", "at": time.time()})
        self.store.save(st)

    def rm(self, name: str, force: bool = False) -> None:
        """Remove a stopped or dead sandbox (``force``: stop a running one first).

        Holds the lock, so an ``rm`` cannot pull the directory from under a ``run``
        or ``update`` in progress.
        """
        with self.store.lock(name, LOCK_TIMEOUT):
            try:
                st = self.store.load(name)
            except StateError as exc:
                if not force:
                    hint = f"cpuplug rm -f {name} stops its VMM and removes it"
                    raise StateError(f"{exc} ({hint})") from None
                self._rm_broken(name)
                return
            if self.status(st) in ("running", "creating"):
                if not force:
                    raise UsageError(f"sandbox {name} is running: stop it first or use rm -f")
                self._stop_locked(st)
            self._kill_vmm(st)
            self.store.remove(name)

    def _rm_broken(self, name: str) -> None:
        """Stop the VMM of a sandbox whose state file is unreadable, then remove it.

        Without the state there is no recorded pid, so the VMM is found through what
        is left in its directory: its QMP socket (``quit``; the socket's peer
        credentials name the process, so it can be escalated to SIGTERM/SIGKILL if it
        does not exit) and, if present, a ``vmm.pid`` file.  The directory is kept if
        the VMM cannot be stopped, so it is never orphaned without a trace.
        """
        d = self.store.dir(name)
        pids = {p for p in (_socket_peer_pid(d / "qmp.sock"), _pid_file(d / "vmm.pid")) if p}
        pids.discard(os.getpid())  # never ourselves (an in-process QMP server in tests)
        procs = [(pid, process_start_ticks(pid)) for pid in pids]
        if (d / "qmp.sock").exists():
            with contextlib.suppress(Exception):
                qmp = self.connect_qmp(d / "qmp.sock")
                try:
                    qmp.execute("quit", timeout=2.0)
                finally:
                    qmp.close()
        for pid, ticks in procs:
            proc = _CHILDREN.get(pid)
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None and process_alive(pid, ticks):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                if _wait_exit(pid, ticks, proc, STOP_TIMEOUT if sig else 2.0):
                    break
            else:
                raise SandboxError(f"sandbox {name}: its VMM (pid {pid}) did not exit; kept {d}")
            _CHILDREN.pop(pid, None)
        self.store.remove(name)

    def _kill_vmm(self, st: SandboxState) -> None:
        """Wait for the VMM to exit (bounded), then TERM, then KILL; reap our children."""
        pid = st.vmm_pid
        if pid is None:
            return
        proc = _CHILDREN.get(pid)
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.alive(st):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if _wait_exit(pid, st.vmm_start_ticks, proc, STOP_TIMEOUT if sig else 2.0):
                break
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
            _CHILDREN.pop(pid, None)


def _wait_exit(
    pid: int, ticks: int | None, proc: subprocess.Popen[bytes] | None, timeout: float
) -> bool:
    """True once ``pid`` has exited (reaping it if it is our child)."""
    if proc is not None:
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    delay = 0.005
    while process_alive(pid, ticks):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)  # not our child: no wait() to block on
        delay = min(delay * 2, 0.1)
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _socket_peer_pid(path: Path) -> int | None:
    """Pid of the process serving the unix socket at ``path`` (``SO_PEERCRED``), if any."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        s.connect(str(path))
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = int(struct.unpack("3i", creds)[0])
        return pid if pid > 0 else None
    return None


def _pid_file(path: Path) -> int | None:
    """The pid in ``path`` if it holds one positive decimal number."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isascii() and text.isdigit() and int(text) > 0 else None


def _cpus_text(quota: int | None, period: int | None) -> str:
    if quota is None or quota < 0 or not period:
        return "-"
    return f"{quota / period:.3f}".rstrip("0").rstrip(".")


def _vcpu_map(
    maxcpus: int,
    plugged: list[int],
    threads: dict[int, int],
    details: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """One row per possible vCPU: plugged / enabled / online and its host thread."""
    sets: dict[str, frozenset[int]] = {}
    for key in ("present", "enabled", "online"):
        raw = (details or {}).get(key)
        sets[key] = ap.parse_cpu_list(str(raw)) if isinstance(raw, str) else frozenset()
    rows = []
    for i in range(maxcpus):
        rows.append(
            {
                "vcpu": i,
                "plugged": i in plugged,
                "present": i in sets["present"] if details else None,
                "enabled": i in sets["enabled"] if details else None,
                "online": i in sets["online"] if details else None,
                "thread_id": threads.get(i),
            }
        )
    return rows

"""Sandbox lifecycle and resize: Kata's ``Sandbox``/``updateResources`` for cpuplug.

:class:`Runtime` is the in-process API behind every CLI command.  A sandbox is a
VM started by a hypervisor backend (:mod:`cpuplug.runtime.hypervisor`; the
orchestration here imports none of them) plus one container created through the
guest agent; everything about it is in the state store, so each method can run
in a fresh process.

Order of a resize (docs/contract.md §8, Kata's ``Container.update`` order): VM
resize and online first, the guest cgroup last.  Unlike Kata, every wait is
bounded, and the requested resources are the *desired state*: they are written
(with a ``pending`` mark) before the VM is touched, so a command killed or failing
half-way leaves a sandbox whose next command finishes the interrupted intent —
vCPUs, online set, cpuset and quota all brought to what was last asked for.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

from cpuplug import agent_protocol as ap
from cpuplug.cpuhp_abi import HotplugMode
from cpuplug.errors import CpuplugError, UsageError
from cpuplug.runtime import process
from cpuplug.runtime import resize as rz
from cpuplug.runtime.agent_client import AgentClient, wait_for_agent
from cpuplug.runtime.config import RuntimeConfig
from cpuplug.runtime.hypervisor import (
    Backend,
    Capabilities,
    Completion,
    Hypervisor,
    HypervisorKind,
    VmmRunState,
    VmSpec,
    backend,
    parse_kind,
)
from cpuplug.runtime.process import ProcessIdentity
from cpuplug.runtime.qmp_errors import QmpError, VmmUnreachable
from cpuplug.runtime.records import (
    ContainerInfo,
    ContainerStatus,
    SandboxConfigInfo,
    SandboxInfo,
    SandboxStatus,
    SandboxSummary,
    VcpuRow,
)
from cpuplug.runtime.sizing import (
    ContainerCpu,
    boot_topology,
    format_cpu_list,
    parse_cpu_list,
    vcpu_target,
)
from cpuplug.runtime.state import (
    ContainerState,
    LockTimeout,
    SandboxState,
    StateError,
    StatelessSandbox,
    StateStore,
    validate_name,
)

LOCK_TIMEOUT = 60.0
MIN_CFS_US = 1000
MAX_CFS_PERIOD_US = 1_000_000
FAULT_ENV = "CPUPLUG_FAULT"
"""Test hook for crash tests.  ``CPUPLUG_FAULT=<step>`` SIGKILLs this process at that
named step, to prove a killed command leaves a state the next one finishes
(``after-device-add`` is between ``device_add`` and ``OnlineCPUMem``,
``after-vmm-start`` between the VMM's start and the container's);
``CPUPLUG_FAULT=kill-vmm:<step>`` SIGKILLs the sandbox's VMM there instead and
carries on, to prove the command then fails cleanly."""


class SandboxError(CpuplugError):
    """A sandbox operation failed (not a usage error)."""


class SandboxNotRunning(SandboxError):
    pass


class UpdateUnfinished(SandboxError):
    """An update failed part-way on a running sandbox; the message says what was done
    and that the next command finishes it.  ``cause`` is the failure alone, for when
    the VMM turns out to have exited (then nothing will finish it)."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


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
    container_options: dict[str, Any] = field(default_factory=dict)
    """More ``CreateContainer`` parameters (cpuplug-runc: ``streams``, ``env``, ``cwd``,
    ``terminal``; docs/agent-protocol.md)."""
    vm_options: dict[str, str] = field(default_factory=dict)
    """More backend options for this sandbox's VM, over the config's
    (:attr:`VmSpec.extra`; cpuplug-runc: ``rootfs_disk``, the container's root
    filesystem image for QEMU)."""


@dataclass
class UpdateResult:
    """What an update did; ``before``/``after`` count the vCPUs the guest has online."""

    name: str
    before: int
    after: int
    target: int
    quota: int | None
    period: int | None
    added: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    offlined: list[int] = field(default_factory=list)
    onlined: list[int] = field(default_factory=list)
    """Plugged vCPUs brought online without a plug (offlined before, or by the guest)."""
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


def _connect_agent(path: Path) -> AgentLike:
    return AgentClient(path).connect()


class _Session:
    """Lazily opened connections for one command: the hypervisor and the agent."""

    def __init__(self, rt: Runtime, st: SandboxState) -> None:
        self._rt = rt
        self.st = st
        self._hv: Hypervisor | None = None
        self._agent: AgentLike | None = None

    @property
    def hv(self) -> Hypervisor:
        if self._hv is None:
            self._hv = self._rt.backend_of(self.st).attach(self._rt.spec(self.st))
        return self._hv

    @property
    def commands_sent(self) -> list[str]:
        return self._hv.commands_sent() if self._hv is not None else []

    @property
    def agent(self) -> AgentLike:
        if self._agent is None:
            self._agent = self._rt.connect_agent(self._rt.store.socket_path(self.st.name, "agent"))
        return self._agent

    def adopt_agent(self, agent: AgentLike) -> None:
        """Use an already connected agent client (the one that answered at start-up)."""
        self._agent = agent

    def close(self) -> None:
        for conn in (self._hv, self._agent):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self._hv = self._agent = None


class _Progress:
    """What a resize already changed, so a failure can say so (and the state keep it)."""

    def __init__(self, result: UpdateResult) -> None:
        self.result = result

    def describe(self) -> str:
        r = self.result
        done = []
        if r.added:
            done.append("plugged vCPU " + ",".join(map(str, r.added)))
        if r.removed:
            done.append("unplugged vCPU " + ",".join(map(str, r.removed)))
        if r.offlined:
            done.append("offlined CPU " + ",".join(map(str, r.offlined)))
        return "; ".join(done)


# --------------------------------------------------------------------------- runtime


class Runtime:
    """The in-process API: one method per CLI command."""

    def __init__(
        self,
        root: str | Path | None = None,
        config: RuntimeConfig | None = None,
        *,
        backends: Callable[[HypervisorKind], Backend] = backend,
        connect_agent: Callable[[Path], AgentLike] = _connect_agent,
        start_timeout: float | None = None,
        host_cpus: int | None = None,
    ) -> None:
        self.store = StateStore(root)
        self.config = config if config is not None else RuntimeConfig()
        self.backends = backends
        self.connect_agent = connect_agent
        self.start_timeout = (
            start_timeout if start_timeout is not None else self.config.start_timeout
        )
        self.host_cpus = host_cpus

    # ------------------------------------------------------------------ helpers

    def backend_of(self, st: SandboxState) -> Backend:
        return self.backends(HypervisorKind(st.hypervisor))

    def spec(self, st: SandboxState) -> VmSpec:
        return VmSpec(
            name=st.name,
            boot_vcpus=st.boot_vcpus,
            maxcpus=st.maxcpus,
            mode=HotplugMode(st.mode),
            qmp_path=self.store.socket_path(st.name, "qmp"),
            agent_path=self.store.socket_path(st.name, "agent"),
            sandbox_dir=self.store.dir(st.name),
            extra={str(k): str(v) for k, v in (st.vm or {}).items()},
        )

    @staticmethod
    def _identity(st: SandboxState) -> ProcessIdentity | None:
        if st.vmm_pid is None:
            return None
        return ProcessIdentity(st.vmm_pid, st.vmm_start_ticks, st.vmm_exe)

    def alive(self, st: SandboxState) -> bool:
        ident = self._identity(st)
        return ident is not None and ident.matches()

    def status(self, st: SandboxState, *, locked: bool = False) -> SandboxStatus:
        """What the sandbox is now, from its state, its VMM and its lock.

        A ``creating`` sandbox whose lock is free has lost the ``run`` that was
        creating it (killed): it is ``failed``, and ``rm`` cleans it up (D6).
        ``locked`` says the caller holds the lock (then no creator can be running).
        """
        stored = SandboxStatus(st.status)
        if stored is SandboxStatus.CREATING and (locked or not self._lock_held(st.name)):
            return SandboxStatus.FAILED
        if stored in (SandboxStatus.RUNNING, SandboxStatus.CREATING) and not self.alive(st):
            return SandboxStatus.DEAD if stored is SandboxStatus.RUNNING else stored
        return stored

    def _lock_held(self, name: str) -> bool:
        try:
            with self.store.lock(name, 0):
                return False
        except LockTimeout:
            return True
        except CpuplugError:
            return False

    @contextlib.contextmanager
    def _locked(self, name: str, timeout: float = LOCK_TIMEOUT) -> Iterator[SandboxState]:
        with self.store.lock(name, timeout):
            yield self.store.load(name)

    def _require_running(self, st: SandboxState, *, locked: bool = False) -> None:
        status = self.status(st, locked=locked)
        if status is not SandboxStatus.RUNNING:
            hint = ""
            if status is SandboxStatus.DEAD:
                hint = " (its VMM exited; cpuplug rm it)"
            elif status is SandboxStatus.FAILED:
                hint = " (its creation was interrupted; cpuplug rm it)"
            raise SandboxNotRunning(f"sandbox {st.name} is {status}{hint}")

    @staticmethod
    def _sizing_input(containers: list[ContainerState]) -> list[ContainerCpu]:
        return [
            ContainerCpu(c.quota, c.period, c.cpuset, stopped=c.status == ContainerStatus.STOPPED)
            for c in containers
        ]

    # ------------------------------------------------------------------ run

    def run(
        self,
        req: RunRequest,
        on_step: Callable[[str], None] | None = None,
        *,
        start: bool = True,
    ) -> SandboxState:
        """Start a sandbox: VMM, agent, container, hot-add to the target, start.

        ``start=False`` stops before the container's process starts (OCI ``create``):
        the sandbox is running, its container ``created``, :meth:`start` starts it.
        """
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
        mode = HotplugMode(cfg.hotplug_mode)
        boot = topo.maxcpus if mode is HotplugMode.ONLINE_OFFLINE else topo.boot
        st = SandboxState(
            name=name,
            created=time.time(),
            mode=mode.value,
            static=cfg.static_sandbox_resource_mgmt,
            default_vcpus=str(default),
            maxcpus=topo.maxcpus,
            boot_vcpus=boot,
            remove_timeout=cfg.remove_timeout,
            containers=[container],
            plugged=list(range(boot)),
            target=sizing.target,
            warning=sizing.warning,
            hypervisor=parse_kind(cfg.hypervisor).value,
            vm={**cfg.vm_options(), **req.vm_options},
        )
        note = on_step or (lambda _s: None)
        for which in ("qmp", "agent"):
            self.store.socket_path(name, which)  # too long for sun_path: refused before mkdir
        _check_cpusets([container], topo.maxcpus)
        self.store.create(name)
        session = _Session(self, st)
        try:
            # The lock is held from the first save to the last: a `creating` sandbox
            # whose lock is free is one whose run was killed (see status()).
            with self.store.lock(name, LOCK_TIMEOUT):
                self.store.save(st)
                self._create(
                    session, st, container, sizing.warning, note, start, req.container_options
                )
        except BaseException as exc:
            session.close()
            log_tail = self._log_tail(self.store.dir(name))
            self._terminate_vmm(st)
            with contextlib.suppress(CpuplugError, OSError):
                self.store.remove(name)
            if isinstance(exc, CpuplugError) and not isinstance(exc, UsageError) and log_tail:
                raise SandboxError(f"{exc} [vmm: {log_tail}]") from None
            raise
        session.close()
        return st

    def _create(
        self,
        session: _Session,
        st: SandboxState,
        container: ContainerState,
        warning: str | None,
        note: Callable[[str], None],
        start: bool = True,
        options: dict[str, Any] | None = None,
    ) -> None:
        t_start = time.monotonic()
        be = self.backend_of(st)
        spec = be.prepare(self.spec(st), note)
        if spec.mode.value != st.mode:
            st.mode, st.boot_vcpus = spec.mode.value, spec.boot_vcpus
            st.plugged = list(range(spec.boot_vcpus))
            reason = spec.extra.get("mode_reason", f"{spec.mode} mode")
            st.warning = reason if st.warning is None else f"{st.warning}; {reason}"
        st.vm = dict(spec.extra)
        self.store.save(st)
        ident = be.start(spec)
        st.vmm_pid, st.vmm_start_ticks, st.vmm_exe = ident.pid, ident.start_ticks, ident.exe
        self.store.save(st)
        note(f"VMM started (pid {st.vmm_pid}, {st.boot_vcpus} of {st.maxcpus} vCPUs)")
        fault_point("after-vmm-start", st.vmm_pid)
        self._wait_vmm(session)
        st.record(
            {
                "op": "boot",
                "at": time.time(),
                "vcpus": st.boot_vcpus,
                "ms": round((time.monotonic() - t_start) * 1000, 1),
            }
        )
        note("guest agent ready")
        session.agent.create_container(
            container.id,
            container.cmd,
            quota=container.quota,
            period=container.period,
            **(options or {}),
        )
        result = self._apply(session, st, [container], st.target, warning)
        if result.after != result.before:
            note(f"vCPUs {result.before} -> {result.after}")
        if start:
            session.agent.start_container(container.id)
            container.status = ContainerStatus.RUNNING.value
        st.status = SandboxStatus.RUNNING.value
        st.record(
            {
                "op": "run" if start else "create",
                "at": time.time(),
                "vcpus": result.after,
                "ms": round((time.monotonic() - t_start) * 1000, 1),
            }
        )
        self.store.save(st)

    def _wait_vmm(self, session: _Session) -> None:
        """Wait until the VMM answers and the guest agent is up, or the VMM dies."""
        st = session.st
        spec = self.spec(st)
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        while True:
            if not self.alive(st):
                raise SandboxError("the VMM exited during start-up")
            try:
                state = session.hv.run_state()
            except (VmmUnreachable, QmpError) as exc:
                session.close()
                if time.monotonic() >= deadline:
                    raise SandboxError(f"the VMM did not serve QMP in time: {exc}") from None
                time.sleep(delay)  # the socket appears when the VMM gets there; no event
                delay = min(delay * 2, 0.1)
                continue
            if state is VmmRunState.FAILED:
                raise SandboxError("the VMM stopped its guest during start-up")
            break
        for path in (spec.qmp_path, spec.agent_path):
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)
        remaining = max(deadline - time.monotonic(), 0.1)
        session.adopt_agent(
            wait_for_agent(
                spec.agent_path, remaining, alive=lambda: self.alive(st), connect=self.connect_agent
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
        op: str = "update",
    ) -> UpdateResult:
        """Bring the VM and the guest cgroups to ``containers``' limits and ``target`` vCPUs.

        The desired state is saved with a ``pending`` mark first; it is cleared only
        once vCPUs, online set, cpusets and quotas all match it.  A failure part-way
        keeps the mark (so the next command finishes the job) and says what was done.
        A guest that *refuses* an eject has answered rather than been interrupted:
        the update is abandoned and the previous limits stay (``remove-failed``).
        """
        t0 = time.monotonic()
        log = rz.StepLog()
        result = UpdateResult(st.name, 0, 0, target, None, None, warning=warning)
        progress = _Progress(result)
        if st.static:
            target = st.target
            result.target = target
        interrupted = st.pending is not None
        previous = (st.containers, st.target)
        floor = _cpuset_floor(containers)
        if floor > target and not st.static:
            # a cpuset naming CPU n needs vCPUs 0..n: otherwise the guest has no CPU to
            # give the container (Kata runtime#1093), and the update could not finish
            target = result.target = floor
        st.containers = containers
        st.target = target
        st.pending = {"op": "resize", "target": target, "at": time.time()}
        self.store.save(st)
        try:
            online = self._converge(session, st, target, log, result, interrupted)
            main = containers[0]
            for c in containers:
                if c.status == ContainerStatus.STOPPED:
                    continue
                cpuset = _container_cpuset(c, online)
                t = log.clock()
                session.agent.update_container(
                    c.id, cpuset_cpus=cpuset, quota=c.quota, period=c.period
                )
                log.add("update_container", t, container=c.id, quota=c.quota, cpuset=cpuset)
        except rz.EjectRefused as exc:
            st.containers, st.target = previous
            st.pending = None
            st.record(
                {
                    "op": "remove-failed",
                    "at": time.time(),
                    "vcpu": exc.core,
                    "error": str(exc),
                    "steps": log.steps,
                }
            )
            self.store.save(st)
            raise
        except CpuplugError as exc:
            st.record(
                {
                    "op": f"{op}-failed",
                    "at": time.time(),
                    "error": str(exc),
                    "steps": log.steps,
                    "qmp": session.commands_sent,
                }
            )
            with contextlib.suppress(CpuplugError, OSError):
                self.store.save(st)
            done = progress.describe()
            finishable = st.status == SandboxStatus.RUNNING.value and self.alive(st)
            if done and finishable and not isinstance(exc, UsageError):
                raise UpdateUnfinished(
                    f"{exc} (already done: {done}; the next cpuplug update or inspect of "
                    f"{st.name} finishes it)",
                    cause=str(exc),
                ) from None
            raise
        st.pending = None
        # the backend's reason for the sandbox's mode (prepare) lasts; a sizing warning
        # is the last update's
        reasons = [(st.vm or {}).get("mode_reason"), result.warning]
        st.warning = "; ".join(r for r in reasons if r) or None
        result.after = len(online)
        period = main.period if main.quota is not None else None
        result.quota, result.period = main.quota, period
        result.qmp_commands = session.commands_sent
        result.steps = log.steps
        result.seconds = time.monotonic() - t0
        st.record(
            {
                "op": op,
                "at": time.time(),
                "before": result.before,
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

    def _converge(
        self,
        session: _Session,
        st: SandboxState,
        target: int,
        log: rz.StepLog,
        result: UpdateResult,
        interrupted: bool,
    ) -> list[int]:
        """Plug, unplug, online and offline until ``target`` vCPUs are online.

        Written once for every hypervisor; the backend's capabilities decide whether
        a shrink unplugs vCPUs or only offlines them (a VMM that cannot plug a slot
        again, or whose plug budget would run out, keeps its vCPUs plugged).  The
        guest is asked for its online set first, before the VM is touched, so an
        unreachable agent changes nothing, and a CPU the container offlined itself
        is brought back.  The VMM is not even asked when the plugged set already has
        the right size and no earlier command was interrupted (a quota-only update
        sends no QMP traffic).
        """
        t = log.clock()
        online = _online(session.agent.guest_details())
        log.add("guest_details", t, online=format_cpu_list(online))
        result.before = len(online)
        target = max(1, min(target, st.maxcpus))
        settled = len(online) == target and (
            st.mode == HotplugMode.ONLINE_OFFLINE.value or len(st.plugged) == target
        )
        if settled and not interrupted:
            # nothing to plug or unplug (online/offline mode never does): no QMP at all
            return self._set_online(session, st, target, online, log, result)
        hv = session.hv
        caps = hv.capabilities()
        every = hv.slots()
        st.plugged = rz.reconcile_order(st.plugged, [s.core_id for s in every if s.plugged])
        # A VMM may have more slots than the sandbox's maximum (QEMU under TCG is given
        # some for their vCPU contexts, docs/runtime.md): only the first maxcpus are used,
        # so no more than maxcpus vCPUs are ever plugged at once.
        slots = every[: st.maxcpus]

        if target > len(st.plugged) and caps.hot_add:
            plan = rz.plan_resize(slots, st.plugged, target, range(st.boot_vcpus))
            add = list(plan.add)
            left = caps.plugs_left(st.plugs_used)
            if left is not None and len(add) > left:
                add = add[:left]
                result.warning = (
                    f"the VMM allows {caps.max_plugs} vCPU plugs in a VM's life; "
                    f"{len(st.plugged) + len(add)} vCPUs"
                )
            elif plan.warning:
                result.warning = result.warning or plan.warning
            by_core = {s.core_id: s for s in slots}
            for core in add:
                hv.plug(by_core[core], log)
                st.plugged.append(core)
                st.plugs_used += 1
                result.added.append(core)
                self.store.save(st)
                fault_point("after-device-add", st.vmm_pid)
            if add:
                hv.wait_plugged(add, st.remove_timeout, log)
        elif target < len(st.plugged):
            plan = rz.plan_resize(slots, st.plugged, target, range(st.boot_vcpus))
            # the budget rule (Capabilities.unpluggable): unplug only as many as still
            # leave the VM able to grow back to maxcpus; the rest are offlined below
            n = caps.unpluggable(len(plan.remove), len(st.plugged), st.plugs_used, st.maxcpus)
            if n:
                if plan.warning:
                    result.warning = result.warning or plan.warning
                if len(online) < len(st.plugged):
                    # the guest offlined CPUs itself: an eject of one of them, or of the
                    # last online one, is refused (0x82); online them first
                    online = sorted(session.agent.online_cpu_mem(len(st.plugged)))
                by_core = {s.core_id: s for s in slots}
                for core in plan.remove[:n]:
                    hv.unplug(by_core[core], st.remove_timeout, log)
                    st.plugged.remove(core)
                    result.removed.append(core)
                    self.store.save(st)
                t = log.clock()
                online = _online(session.agent.guest_details())
                log.add("guest_details", t, online=format_cpu_list(online))
        return self._set_online(session, st, target, online, log, result)

    @staticmethod
    def _set_online(
        session: _Session,
        st: SandboxState,
        target: int,
        online: list[int],
        log: rz.StepLog,
        result: UpdateResult,
    ) -> list[int]:
        """Online or offline guest CPUs until ``target`` of the plugged ones are online."""
        want = min(target, len(st.plugged))
        if len(online) != want:
            t = log.clock()
            if len(online) > want:
                before = set(online)
                online = sorted(session.agent.offline_cpus(want))
                result.offlined.extend(sorted(before - set(online)))
                log.add("offline_cpus", t, online=format_cpu_list(online))
            else:
                before = set(online)
                online = sorted(session.agent.online_cpu_mem(want))
                result.onlined.extend(sorted(set(online) - before - set(result.added)))
                log.add("online_cpu_mem", t, online=format_cpu_list(online))
        if len(online) < want:
            missing = sorted(set(st.plugged) - set(online))
            raise rz.ResizeError(
                f"vCPU(s) {format_cpu_list(missing)} are plugged but not online in the guest"
            )
        return online

    # ------------------------------------------------------------------ commands

    def update(self, name: str, resources: Resources) -> UpdateResult:
        """Recompute the target from the merged limits, resize, update the cgroup."""
        with self._locked(name) as st:
            self._require_running(st, locked=True)
            session = _Session(self, st)
            try:
                # st.containers holds the last *requested* limits, even if a killed
                # or failed command left them unapplied (pending): merge into those.
                containers = [resources.merged_into(st.containers[0]), *st.containers[1:]]
                _check_cpusets(containers, st.maxcpus)
                sizing = vcpu_target(
                    self._sizing_input(containers), Fraction(st.default_vcpus), st.maxcpus
                )
                warning = sizing.warning
                if st.static and sizing.wanted != st.target:
                    warning = (
                        f"static sandbox: vCPUs stay at {st.target} (the limits want "
                        f"{sizing.wanted}); only the quota changes"
                    )
                return self._apply(session, st, containers, sizing.target, warning)
            except CpuplugError as exc:
                # A killed VMM closes its sockets while its threads still exit:
                # give it a moment to be gone before deciding what to report.
                ident = self._identity(st)
                if (
                    not isinstance(exc, UsageError)
                    and ident is not None
                    and process.wait_exit(ident, 1.0)
                ):
                    # a VMM that died just after the failure was still alive when
                    # _apply offered "the next command finishes it": it will not
                    cause = exc.cause if isinstance(exc, UpdateUnfinished) else str(exc)
                    raise SandboxError(
                        f"sandbox {name}: the VMM exited during the update ({cause}); "
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

    def ps(self) -> list[SandboxSummary]:
        out = []
        for name in self.store.names():
            try:
                st = self.store.load(name)
            except CpuplugError as exc:
                # Listed, not hidden: its VMM may still run, and rm -f cleans it up.
                # A directory without a state file whose lock is held is a run that
                # has not written its first state yet.
                starting = isinstance(exc, StatelessSandbox) and self._lock_held(name)
                out.append(
                    SandboxSummary(
                        name=name,
                        status=SandboxStatus.CREATING if starting else SandboxStatus.BROKEN,
                        vcpus=0,
                        maxcpus=0,
                        cpus="-",
                        pid=None,
                        created=_mtime(self.store.dir(name)),
                        mode="-",
                        hypervisor="-",
                    )
                )
                continue
            c = st.containers[0] if st.containers else None
            status = self.status(st)
            out.append(
                SandboxSummary(
                    name=st.name,
                    status=status,
                    vcpus=st.target if status is SandboxStatus.RUNNING else 0,
                    maxcpus=st.maxcpus,
                    cpus=_cpus_text(c.quota, c.period) if c else "",
                    pid=st.vmm_pid,
                    created=st.created,
                    mode=st.mode,
                    hypervisor=st.hypervisor,
                )
            )
        return out

    def inspect(self, name: str) -> SandboxInfo:
        """Config, vCPU map, cgroup limits and history; finishes an interrupted update."""
        with self._locked(name) as st:
            status = self.status(st, locked=True)
            info = SandboxInfo(
                name=st.name,
                status=status,
                created=st.created,
                vmm_pid=st.vmm_pid,
                config=SandboxConfigInfo(
                    hotplug_mode=st.mode,
                    static_sandbox_resource_mgmt=st.static,
                    default_vcpus=st.default_vcpus,
                    maxcpus=st.maxcpus,
                    boot_vcpus=st.boot_vcpus,
                    remove_timeout=st.remove_timeout,
                    hypervisor=st.hypervisor,
                ),
                containers=[
                    ContainerInfo(c.id, list(c.cmd), c.quota, c.period, c.cpuset, c.status)
                    for c in st.containers
                ],
                target=st.target,
                warning=st.warning,
                pending=st.pending,
                history=st.history[-20:],
            )
            if status is not SandboxStatus.RUNNING:
                info.vcpus = _vcpu_rows(st.maxcpus, st.plugged, {}, None)
                return info
            session = _Session(self, st)
            try:
                with contextlib.suppress(CpuplugError):
                    info.vmm = self.backend_of(st).describe(self.spec(st))
                info.reconciled = self._reconcile(session, st)
                caps = session.hv.capabilities()
                how, why = _shrink_policy(caps, st)
                info.vmm["capabilities"] = {
                    "hot_add": caps.hot_add,
                    "hot_remove": caps.hot_remove,
                    "replug": caps.replug,
                    "max_plugs": caps.max_plugs,
                    "plugs_used": st.plugs_used,
                    "completion": [c.name for c in Completion if c in caps.completion],
                    "plugs_left": caps.plugs_left(st.plugs_used),
                    "shrink_by": how,
                    "shrink": why,
                }
                threads = session.hv.vcpu_threads()
                details = session.agent.guest_details()
                info.guest = details
                info.vcpus = _vcpu_rows(st.maxcpus, st.plugged, threads, details)
                for c in st.containers:
                    with contextlib.suppress(ap.AgentError):
                        info.cgroups[c.id] = session.agent.stats_container(c.id)
                info.warning = st.warning
                info.pending = st.pending
                info.history = st.history[-20:]
            finally:
                session.close()
            return info

    def _reconcile(self, session: _Session, st: SandboxState) -> bool:
        """Make the state match the VMM, and finish an interrupted update's intent."""
        if st.pending is not None:
            self._apply(session, st, st.containers, st.target, st.warning, op="reconcile")
            return True
        plugged = [s.core_id for s in session.hv.slots() if s.plugged]
        order = rz.reconcile_order(st.plugged, plugged)
        if order == st.plugged:
            return False
        st.plugged = order
        self.store.save(st)
        if len(order) != st.target and st.mode == HotplugMode.ACPI.value:
            # vCPUs were plugged or unplugged behind our back (QMP by hand): the
            # sandbox is not at its target any more; bring it back
            self._apply(session, st, st.containers, st.target, st.warning, op="reconcile")
        return True

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
        """Kill the containers, stop the VMM (polite, then signals); caller holds the lock."""
        if self.alive(st):
            with contextlib.suppress(Exception):
                agent = self.connect_agent(self.store.socket_path(st.name, "agent"))
                try:
                    for c in st.containers:
                        agent.kill_container(c.id)
                finally:
                    agent.close()
        self._terminate_vmm(st)
        for c in st.containers:
            c.status = ContainerStatus.STOPPED.value
        st.status = SandboxStatus.STOPPED.value
        st.record({"op": "stop", "at": time.time()})
        try:
            self.store.save(st)
        except StateError as exc:
            # D10: a read-only state directory must not keep a VMM running; it is
            # stopped, and the state (which now reads `dead`) says so at the next look.
            raise StateError(f"sandbox {st.name}: its VMM is stopped, but {exc}") from None

    def rm(self, name: str, force: bool = False) -> None:
        """Remove a stopped, dead or failed sandbox (``force``: stop a running one first).

        Holds the lock, so an ``rm`` cannot pull the directory from under a ``run``
        or ``update`` in progress.
        """
        with self.store.lock(name, LOCK_TIMEOUT):
            try:
                st = self.store.load(name)
            except StatelessSandbox:
                self.store.remove(name)  # what a failed run left: no VMM can be in it (D1)
                return
            except StateError as exc:
                if not force:
                    hint = f"cpuplug rm -f {name} stops its VMM and removes it"
                    raise StateError(f"{exc} ({hint})") from None
                self._rm_broken(name)
                return
            if self.status(st, locked=True) is SandboxStatus.RUNNING:
                if not force:
                    raise UsageError(f"sandbox {name} is running: stop it first or use rm -f")
                with contextlib.suppress(StateError):  # D10: removal below says why
                    self._stop_locked(st)
            self._terminate_vmm(st)
            try:
                self.store.remove(name)
            except StateError as exc:
                raise StateError(f"sandbox {name}: its VMM is stopped, but {exc}") from None

    def _rm_broken(self, name: str) -> None:
        """Stop the VMM of a sandbox whose state file is unreadable, then remove it.

        Without the state there is no recorded pid; the VMM is found through its
        QMP socket, whose peer credentials (from the kernel, not from a file) name
        the process.  The directory is kept if the VMM cannot be stopped, so it is
        never orphaned without a trace.
        """
        d = self.store.dir(name)
        qmp_path = d / "qmp.sock"
        peer = process.socket_peer(qmp_path)
        if peer is not None and not process.terminate(
            peer, lambda: self._quit_any(qmp_path)
        ):
            raise SandboxError(f"sandbox {name}: its VMM (pid {peer.pid}) did not exit; kept {d}")
        self.store.remove(name)

    def _quit_any(self, qmp_path: Path) -> None:
        """Ask whatever VMM serves ``qmp_path`` to quit (every backend speaks QMP quit)."""
        self.backends(HypervisorKind.BUILTIN).request_quit(qmp_path)

    def _terminate_vmm(self, st: SandboxState) -> None:
        """Stop the sandbox's VMM: QMP ``quit``, then SIGTERM, then SIGKILL.

        Only a process proven to be this sandbox's VMM is signalled: the recorded
        identity (pid + start time + executable), or else the process serving its
        QMP socket (D5: a pid with no start time proves nothing).
        """
        # no sun_path check here: a sandbox must be removable whatever its path length
        qmp_path = self.store.dir(st.name) / "qmp.sock"
        ident = self._identity(st)
        if ident is None or not ident.matches():
            ident = process.socket_peer(qmp_path)
        if ident is None:
            return
        be = self.backend_of(st)
        if not process.terminate(ident, lambda: be.request_quit(qmp_path)):
            raise SandboxError(f"sandbox {st.name}: its VMM (pid {ident.pid}) did not exit")

    # ------------------------------------------------------------------ OCI (cpuplug-runc)

    def start(self, name: str) -> int:
        """Start the process of a container :meth:`run` created with ``start=False``
        (OCI ``start``); its pid in the guest."""
        with self._locked(name) as st:
            self._require_running(st, locked=True)
            c = st.containers[0]
            if c.status != ContainerStatus.CREATED:
                raise UsageError(f"container {c.id} is {c.status}, not created")
            agent = self.connect_agent(self.store.socket_path(name, "agent"))
            try:
                pid = agent.start_container(c.id)
            finally:
                agent.close()
            c.status = ContainerStatus.RUNNING.value
            st.record({"op": "start", "at": time.time()})
            self.store.save(st)
            return pid


def _shrink_policy(caps: Capabilities, st: SandboxState) -> tuple[str, str]:
    """How a shrink of this sandbox is done now, and why (``inspect``): ``unplug``,
    ``offline`` (vCPUs kept plugged) or ``unplug+offline``, and the reason in words."""
    if not caps.hot_remove:
        why = caps.remove_note or "this VMM cannot hot-remove vCPUs"
        return "offline", f"offline in the guest, vCPUs kept plugged ({why})"
    if not caps.replug:
        return "offline", (
            "offline in the guest, vCPUs kept plugged "
            "(this VMM cannot plug again after an unplug)"
        )
    left = caps.plugs_left(st.plugs_used)
    if left is None:
        return "unplug", "unplug (device_del)"
    fixed = set(range(st.boot_vcpus)) | {0}
    removable = len([c for c in st.plugged if c not in fixed])
    n = caps.unpluggable(removable, len(st.plugged), st.plugs_used, st.maxcpus)
    budget = (
        f"{left} of {caps.max_plugs} vCPU plugs left in this VM's life; an unplug must "
        f"leave enough to grow back to {st.maxcpus} vCPUs"
    )
    if removable == 0:
        how = "unplug" if left >= st.maxcpus - len(st.plugged) + 1 else "offline"
    elif n == removable:
        how = "unplug"
    else:
        how = "unplug+offline" if n else "offline"
    words = {
        "unplug": "unplug (device_del)",
        "unplug+offline": f"unplug {n} vCPU(s), offline the rest in the guest (kept plugged)",
        "offline": "offline in the guest, vCPUs kept plugged",
    }[how]
    return how, f"{words}: {budget}"


def _online(details: dict[str, Any]) -> list[int]:
    return sorted(ap.parse_cpu_list(str(details.get("online", ""))))


def _check_cpusets(containers: list[ContainerState], maxcpus: int) -> None:
    """Refuse, before anything is touched, a cpuset naming a CPU the VM can never have
    (docker: "Requested CPUs are not available")."""
    for c in containers:
        if c.cpuset and max(parse_cpu_list(c.cpuset), default=0) >= maxcpus:
            raise UsageError(
                f"--cpuset-cpus {c.cpuset}: the sandbox has vCPUs 0-{maxcpus - 1} at most"
            )


def _cpuset_floor(containers: list[ContainerState]) -> int:
    """The fewest vCPUs that give every running container a CPU of its cpuset."""
    return max(
        (
            max(parse_cpu_list(c.cpuset)) + 1
            for c in containers
            if c.cpuset and c.status != ContainerStatus.STOPPED
        ),
        default=0,
    )


def _container_cpuset(c: ContainerState, online: list[int]) -> str:
    """The cpuset a container gets: its own ``--cpuset-cpus`` within the online CPUs.

    D3: the requested cpuset used to be stored and shown but never sent; the
    container got every online CPU.  A cpuset naming no online CPU is refused by
    the guest's cgroup (``cpuset.cpus`` must intersect the parent's), so it is
    reported rather than silently widened.
    """
    if not c.cpuset:
        return format_cpu_list(online)
    wanted = parse_cpu_list(c.cpuset)
    usable = sorted(wanted & set(online))
    if not usable:
        raise SandboxError(
            f"container {c.id}: --cpuset-cpus {c.cpuset} names no online vCPU "
            f"(online: {format_cpu_list(online)})"
        )
    return format_cpu_list(usable)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _cpus_text(quota: int | None, period: int | None) -> str:
    if quota is None or quota < 0 or not period:
        return "-"
    return f"{quota / period:.3f}".rstrip("0").rstrip(".")


def _vcpu_rows(
    maxcpus: int,
    plugged: list[int],
    threads: dict[int, int],
    details: dict[str, Any] | None,
) -> list[VcpuRow]:
    """One row per possible vCPU: plugged / enabled / online and its host thread."""
    sets: dict[str, frozenset[int]] = {}
    for key in ("present", "enabled", "online"):
        raw = (details or {}).get(key)
        sets[key] = ap.parse_cpu_list(str(raw)) if isinstance(raw, str) else frozenset()
    return [
        VcpuRow(
            vcpu=i,
            plugged=i in plugged,
            present=i in sets["present"] if details else None,
            enabled=i in sets["enabled"] if details else None,
            online=i in sets["online"] if details else None,
            thread_id=threads.get(i),
        )
        for i in range(maxcpus)
    ]

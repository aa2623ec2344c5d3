"""Real QEMU: cpuplug's ``update`` and ``run`` against a hand-driven floor and Kata's sequence.

Everything runs on the host's ``qemu-system-x86_64`` (TCG where KVM cannot work) with
the guest image of :mod:`cpuplug.image`, built once and then pinned (every VM of the
run boots the same kernel and initramfs with the same command line, and a concurrent
edit of the guest sources cannot trigger a rebuild half-way).  Medians and ratios are
printed, never asserted: the ratios are what to compare across machines.

**+1 vCPU.**  Five ways of plugging one vCPU and having it online in the guest:

* *floor* -- by hand on a QEMU started with the backend's own command line
  (``QemuBackend.command``), one QMP connection and one direct connection to the agent's
  chardev kept for the VM's life: ``query-hotpluggable-cpus``, ``device_add`` with the
  props as listed, wait for the guest's insert ``ACPI_DEVICE_OST`` (a QMP event, no
  polling), then ``OnlineCPUMem`` -- the agent writes 1 to ``cpuN/online`` at once, the
  CPU being registered already, and answers once the write returned (the CPU is online).
  This is the cheapest honest floor: an ``ExecProcess`` of ``sh -c 'echo 1 > ...'``
  would add a fork/exec in the container's namespaces, and the _OST is the first sign
  the host gets that the guest registered the CPU;
* *kata* -- Kata's sequence on the same kind of VM: ``query-hotpluggable-cpus``,
  ``device_add`` of the first free slot as QEMU lists it (the highest core id, as Go
  Kata's ``hotplugAddCPUs`` does), then at once ``OnlineCPUMem`` (the total wanted, as
  Kata's runtime sends it, ``wait: false``) without waiting for any event: the agent
  tries to online, finds no registered CPU yet, and retries in 50 ms steps, at most 100
  (Kata's agent loop, which cpuplug's agent keeps) until the CPU appears.  A plug that
  fails or is not online after :data:`KATA_CAP` s is listed and counted as that long;
* *kata-asc* -- the same sequence on the lowest free slot (cpuplug's order), which
  separates what the sequence costs (no event wait, 50 ms polling) from what Kata's
  slot order costs (a guest CPU number that is not its APIC id: see :data:`KATA_CAP`);
* *api* -- ``Runtime.update`` (lock, state, ``GuestDetails``, its own QMP and agent
  connections, the plug, the _OST wait, ``OnlineCPUMem``, ``UpdateContainer``);
* *cli* -- ``python -m cpuplug update``, a fresh process.

QEMU 7.2 cannot plug a vCPU after an unplug under TCG, so cpuplug shrinks by offlining
and keeps the vCPU plugged; a "+1" after a shrink is then an online, not a plug.  Plugs
are therefore measured on fresh slots in a **fresh VM per iteration and method**: every
VM boots 1 of :data:`PLUG_MAXCPUS` vCPUs with one idle container, and each measurement
starts from the same state -- the first plug of the VM's life (1 -> 2 online) and the
second (2 -> 3), both after :data:`SETTLE` s idle.  Then the VM is shrunk back by
offlining and grown again (an online, no plug: the floor is a bare ``OnlineCPUMem``),
twice.  The methods take turns within an iteration (the order rotates), one VM at a
time.

**run to ready.**  ``Runtime.run`` and ``python -m cpuplug run -d`` until they return
(agent up, container created, sized and started), against the plain boot of the
floor's and Kata's VMs: from QEMU's exec to the first ``GuestDetails`` answer on the
chardev, with the same command line.  The boots of every iteration are these.  Fixed
costs are probed on each API sandbox too (``prepare``'s QEMU probe, the VMM proxy's
start, QMP connect, one query, ``GuestDetails`` through the proxy and direct, a state
save), to say where the difference goes.

**Density.**  An idle sandbox with 1 of :data:`DENSITY_MAXCPUS` vCPUs online, in ACPI
mode (1 plugged) and in online/offline mode (all plugged, the others offline): threads
of the ``qemu-system`` process (``/proc/PID/task``), its RSS, and the CPU time it burns
idle.

Python processes the runtime starts (the CLI, the VMM proxy) run with compiled modules
cached, as an installed cpuplug would (this host sets ``PYTHONDONTWRITEBYTECODE``; see
bench_runtime.py); an untimed warm-up iteration fills that cache and the page cache.
Every VM is removed at the end, and no ``qemu-system`` of this run is left (checked).

**arm64** (``--arm64 QEMU``, QEMU being the arm64 vCPU-hotplug RFC's
``qemu-system-aarch64`` from scripts/build-qemu-arm64-hotplug).  The seed's system on
real parts against the built-in machine, through the same ``Runtime.update``: N cycles
of +1 vCPU (2 -> 3 online) and -1 on one sandbox of each, each update's own steps saying
where the time went (``device_add`` answered, the guest's insert ``_OST``, ``device_add``
to the vCPU online in the guest, ``device_del`` to ``DEVICE_DELETED``); then the
density of an idle arm64 sandbox on the RFC's QEMU in ACPI mode and in online/offline
mode (the talk's density argument, measured on the real thing).

Run: ``.venv/bin/python bench/bench_real.py [--iterations N] [--quick] [--arm64 QEMU]``
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import dataclasses
import itertools
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpuplug import agent_protocol as ap
from cpuplug.cpuhp_abi import HotplugMode
from cpuplug.runtime import process
from cpuplug.runtime.agent_client import AgentClient
from cpuplug.runtime.config import RuntimeConfig
from cpuplug.runtime.hypervisor import VmSpec
from cpuplug.runtime.hypervisors.qemu import QemuBackend
from cpuplug.runtime.qmp_client import QmpConnection, QmpError
from cpuplug.runtime.sandbox import Resources, RunRequest, Runtime

PLUG_MAXCPUS = 4
"""Slots of a plug VM: 1 boot vCPU, 2 measured plugs, one spare."""
DENSITY_MAXCPUS = 8
SETTLE = 0.5
"""Idle seconds before every measured operation (the guest finishes what a boot or an
online left to do: kworkers, sched domains)."""
REONLINES = 2
"""Shrink-and-grow-again rounds per VM (online only, no plug)."""
GOAL_UPDATE_OVER_FLOOR = 1.1
GOAL_RUN_OVER_BOOT = 1.2
CMD = ["sleep", "100000"]
BOOT_TIMEOUT = 120.0
AGENT_TIMEOUT = 30.0
ONLINE_TIMEOUT = 120.0
KATA_CAP = 20.0
"""Longest wait for Kata's sequence to bring a vCPU online.  Plugged into a gap of APIC
ids (Kata's order: highest core first), the guest's ``cpuN/online`` write blocks for
12-17 s here, sometimes more than 2 minutes, or the CPU is not even registered when
the agent's 100 retries run out; such a sample counts as this many seconds (a lower
bound), the failure is listed, and its VM is abandoned."""
PR_SET_PDEATHSIG = 1
API_OTHER = "connects, queries, state, lock"
CLI_OTHER = "process start + imports, connects, queries, state, lock"
METHODS = ("floor", "kata", "kata-asc", "api", "cli")
WARM_UP = ("floor", "api", "cli")
PROBES = 3
"""Samples of each fixed cost probed per VM (connects, round trips, a state save)."""


def cpus(n: int) -> Resources:
    """docker ``--cpus n``: target ``ceil(n + default_vcpus 1)`` = n + 1 vCPUs."""
    return Resources(quota=n * 100_000, period=100_000)


def ms(seconds: float) -> float:
    return seconds * 1000


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------- a VM by hand


def _pdeathsig() -> None:
    """In QEMU's child: die with the bench (a killed bench leaves no QEMU behind)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Plug:
    """One hand-driven +1 vCPU: total and its parts (seconds)."""

    total: float
    device_add: float
    """``query-hotpluggable-cpus`` + ``device_add`` answered."""
    ost: float
    """``device_add`` answered -> insert _OST seen (floor only)."""
    online: float
    """``OnlineCPUMem`` sent -> answered."""


class HandVm:
    """QEMU started by hand with :meth:`QemuBackend.command`, no proxy, no runtime.

    One QMP connection and one connection to the agent's chardev, each kept for the
    VM's life (as Kata's shim keeps its QMP and agent connections).
    """

    def __init__(self, backend: QemuBackend, spec: VmSpec) -> None:
        self.spec = spec
        self.argv = backend.command(spec)
        self.proc: subprocess.Popen[bytes] | None = None
        self.agent: socket.socket | None = None
        self.qmp: QmpConnection | None = None
        self._ids = itertools.count(1)
        self.online = 0
        self.kernel = ""

    def boot(self) -> float:
        """Start QEMU; seconds from exec to the first ``GuestDetails`` answer."""
        chardev = self.spec.sandbox_dir / "agent-guest.sock"
        with open(self.spec.sandbox_dir / "qemu.log", "ab") as log:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_pdeathsig,
            )  # fmt: skip
        self.agent = self._connect(chardev, t0)
        details = self.call(ap.Method.GUEST_DETAILS, {}, BOOT_TIMEOUT)
        booted = time.perf_counter() - t0
        self.online = len(ap.parse_cpu_list(details["online"]))
        self.kernel = str(details.get("kernel", ""))
        self.qmp = QmpConnection(self.spec.qmp_path).connect()
        return booted

    def _connect(self, path: Path, t0: float) -> socket.socket:
        """QEMU creates the chardev socket when it gets there; there is no event."""
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited with {self.proc.returncode}; see {path.parent}")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                return s
            except OSError:
                s.close()
                if time.perf_counter() - t0 > BOOT_TIMEOUT:
                    raise
                time.sleep(0.005)

    def call(self, method: ap.Method, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.agent is not None
        return ap.call(self.agent, method, params, timeout=timeout, req_id=next(self._ids))

    def start_container(self, cid: str) -> None:
        """The same guest state as a sandbox's: one container running ``sleep``."""
        self.call(ap.Method.CREATE_CONTAINER, {"container_id": cid, "cmd": CMD}, AGENT_TIMEOUT)
        self.call(ap.Method.START_CONTAINER, {"container_id": cid}, AGENT_TIMEOUT)

    def _free_slots(self) -> list[dict[str, Any]]:
        assert self.qmp is not None
        return [e for e in self.qmp.execute("query-hotpluggable-cpus") if not e.get("qom-path")]

    def _device_add(self, slot: dict[str, Any]) -> int:
        assert self.qmp is not None
        core = int(slot["props"]["core-id"])
        self.qmp.execute("device_add", {"driver": slot["type"], "id": f"cpu-{core}",
                                        **slot["props"]})  # fmt: skip
        return core

    def _wait_insert_ost(self, core: int) -> None:
        assert self.qmp is not None
        deadline = time.monotonic() + AGENT_TIMEOUT
        while True:
            ev = self.qmp.next_event(max(deadline - time.monotonic(), 0.0))
            if ev is None:
                raise RuntimeError(f"no insert _OST for vCPU {core}")
            info = (ev.get("data") or {}).get("info") or {}
            if (
                ev.get("event") == "ACPI_DEVICE_OST"
                and str(info.get("slot")) == str(core)
                and info.get("source") == 1
            ):
                if info.get("status") != 0:
                    raise RuntimeError(f"guest refused vCPU {core}: _OST {info}")
                return

    def _online_cpu_mem(self, nb: int, timeout: float = ONLINE_TIMEOUT, **extra: Any) -> None:
        res = self.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": nb, "cpu_only": True, **extra},
                        timeout)  # fmt: skip
        if len(res["online"]) != nb:
            raise RuntimeError(f"OnlineCPUMem({nb}) left {res['online']} online")
        self.online = nb

    def floor_plug(self) -> Plug:
        """device_add, the guest's insert _OST, OnlineCPUMem: the least a plug needs."""
        assert self.qmp is not None
        self.qmp.drain_events()
        t0 = time.perf_counter()
        core = self._device_add(min(self._free_slots(), key=lambda e: e["props"]["core-id"]))
        t1 = time.perf_counter()
        self._wait_insert_ost(core)
        t2 = time.perf_counter()
        self._online_cpu_mem(self.online + 1)
        t3 = time.perf_counter()
        return Plug(t3 - t0, t1 - t0, t2 - t1, t3 - t2)

    def kata_plug(self, ascending: bool = False) -> Plug:
        """Kata's ``hotplugAddCPUs`` + ``onlineCPUMem``: no wait between them.

        Kata takes the first free slot as QEMU lists it (the highest core id);
        ``ascending`` takes the lowest, as cpuplug does, to separate the sequence's
        cost from the slot order's.
        """
        t0 = time.perf_counter()
        free = self._free_slots()
        self._device_add(min(free, key=lambda e: e["props"]["core-id"]) if ascending else free[0])
        t1 = time.perf_counter()
        self._online_cpu_mem(self.online + 1, ONLINE_TIMEOUT if ascending else KATA_CAP,
                             wait=False)  # fmt: skip
        t2 = time.perf_counter()
        return Plug(t2 - t0, t1 - t0, 0.0, t2 - t1)

    def offline_to(self, nb: int) -> None:
        res = self.call(ap.Method.OFFLINE_CPUS, {"nb_cpus": nb}, AGENT_TIMEOUT)
        assert len(res["online"]) == nb, res
        self.online = nb

    def reonline(self) -> float:
        """+1 on a plugged, offline vCPU: a bare ``OnlineCPUMem``."""
        t0 = time.perf_counter()
        self._online_cpu_mem(self.online + 1)
        return time.perf_counter() - t0

    def qemu_version(self) -> str:
        assert self.qmp is not None
        q = self.qmp.execute("query-version")["qemu"]
        return f"{q['major']}.{q['minor']}.{q['micro']}"

    def close(self) -> None:
        if self.qmp is not None:
            with contextlib.suppress(QmpError, OSError):
                self.qmp.execute("quit", timeout=2.0)
            self.qmp.close()
        if self.agent is not None:
            self.agent.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------- the bench


@dataclass
class Results:
    rows: dict[str, list[float]] = field(default_factory=dict)
    parts: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    outside: dict[str, list[float]] = field(default_factory=dict)
    """Each plug's time outside its ``OnlineCPUMem`` (the guest's onlining + one agent
    round trip): the part a runtime adds, free of the guest's variance."""
    failed: collections.defaultdict[str, list[str]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    """Kata-sequence plugs not online when the agent gave up or after :data:`KATA_CAP`
    (counted as :data:`KATA_CAP`, a lower bound), with the reason."""

    def add(self, key: str, seconds: float) -> None:
        self.rows.setdefault(key, []).append(seconds)

    def part(self, key: str, name: str, seconds: float) -> None:
        self.parts.setdefault(key, {}).setdefault(name, []).append(seconds)

    def med(self, key: str) -> float:
        return ms(median(self.rows.get(key, [])))


class Bench:
    def __init__(self, root: Path, kernel: str, initrd: str, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.cfg = RuntimeConfig(default_maxvcpus=PLUG_MAXCPUS, hypervisor="qemu",
                                 kernel=kernel, initrd=initrd)  # fmt: skip
        self.rt = Runtime(root / "sandboxes", self.cfg)
        self.config_file = root / "config.toml"
        self.config_file.write_text(
            f'[hypervisor.qemu]\nkernel = "{kernel}"\ninitrd = "{initrd}"\n'
        )
        self.backend = QemuBackend()
        template = VmSpec(
            name="hand", boot_vcpus=1, maxcpus=PLUG_MAXCPUS, mode=HotplugMode.ACPI,
            qmp_path=root / "hand" / "qmp.sock", agent_path=root / "hand" / "agent.sock",
            sandbox_dir=root / "hand", extra=self.cfg.vm_options(),
        )  # fmt: skip
        self.template = template
        self.spec = self.backend.prepare(template, lambda _msg: None)
        self.hand: list[HandVm] = []
        self.res = Results()
        self.qemu_version = ""
        self.guest_kernel = ""
        self._names = itertools.count()

    # ------------------------------------------------------------------ helpers

    def cli(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "cpuplug", args[0], "--root", str(self.rt.store.root),
             *args[1:]],
            check=True, capture_output=True, timeout=BOOT_TIMEOUT, env=self.env,
        )  # fmt: skip

    def hand_vm(self) -> HandVm:
        d = self.root / f"h{next(self._names)}"
        d.mkdir()
        spec = dataclasses.replace(
            self.spec, name=d.name, qmp_path=d / "qmp.sock", agent_path=d / "agent.sock",
            sandbox_dir=d,
        )  # fmt: skip
        vm = HandVm(self.backend, spec)
        self.hand.append(vm)
        return vm

    def _steps(self, key: str, steps: list[dict[str, Any]], total: float, other: str) -> None:
        """An update's own step timings (its history), the rest as ``other``."""
        acc = 0.0
        for step in steps:
            self.res.part(key, step["step"], step["ms"] / 1000)
            acc += step["ms"] / 1000
            if step["step"] == "online_cpu_mem":
                self.res.outside.setdefault(key, []).append(total - step["ms"] / 1000)
        self.res.part(key, f"(other: {other})", total - acc)

    # ------------------------------------------------------------------ one VM per method

    def hand_round(self, kind: str, record: bool) -> None:
        """One VM by hand: its boot, two plugs the ``kind`` way, re-onlines (floor only)."""
        vm = self.hand_vm()
        try:
            booted = vm.boot()
            vm.start_container("c")
            self.qemu_version = self.qemu_version or vm.qemu_version()
            self.guest_kernel = vm.kernel
            for n in (1, 2):
                time.sleep(SETTLE)
                try:
                    p = vm.floor_plug() if kind == "floor" else vm.kata_plug(kind == "kata-asc")
                except (ap.AgentError, ap.AgentTimeout) as exc:
                    if kind == "floor":
                        raise
                    # Kata's update fails here (or is still waiting): counted, VM abandoned
                    if record:
                        self.res.add(f"plug{n} {kind}", KATA_CAP)
                        self.res.failed[f"plug{n} {kind}"].append(str(exc)[:90])
                    break
                if record:
                    key = f"plug{n} {kind}"
                    self.res.add(key, p.total)
                    self.res.part(key, "query + device_add", p.device_add)
                    if kind == "floor":
                        self.res.part(key, "-> insert _OST", p.ost)
                    self.res.part(key, "OnlineCPUMem", p.online)
                    self.res.outside.setdefault(key, []).append(p.total - p.online)
            if kind == "floor":
                for _ in range(REONLINES):
                    vm.offline_to(2)
                    time.sleep(SETTLE)
                    t = vm.reonline()
                    if record:
                        self.res.add("reonline floor", t)
                for _ in range(PROBES if record else 0):
                    t0 = time.perf_counter()
                    vm.call(ap.Method.GUEST_DETAILS, {}, AGENT_TIMEOUT)
                    self.res.part("fixed costs", "GuestDetails, direct", time.perf_counter() - t0)
            if record:
                self.res.add("boot", booted)
        finally:
            vm.close()
            self.hand.remove(vm)

    def probe(self, name: str) -> None:
        """cpuplug's fixed costs on a live sandbox: what an update pays besides the plug."""
        qmp_path = self.rt.store.socket_path(name, "qmp")
        for _ in range(PROBES):
            t0 = time.perf_counter()
            qmp = QmpConnection(qmp_path).connect()
            t1 = time.perf_counter()
            qmp.execute("query-hotpluggable-cpus")
            t2 = time.perf_counter()
            qmp.close()
            agent = AgentClient(self.rt.store.socket_path(name, "agent")).connect()
            t3 = time.perf_counter()
            agent.guest_details()
            t4 = time.perf_counter()
            agent.guest_details()
            t5 = time.perf_counter()
            agent.close()
            with self.rt.store.lock(name, 5.0):
                t6 = time.perf_counter()
                self.rt.store.save(self.rt.store.load(name))
                t7 = time.perf_counter()
            t8 = time.perf_counter()
            self.backend.prepare(self.template, lambda _msg: None)
            t9 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "cpuplug.runtime.hypervisors.vmm_proxy",
                            "--help"], check=True, capture_output=True, env=self.env)  # fmt: skip
            t10 = time.perf_counter()
            for what, seconds in (
                ("run: prepare (QEMU probe)", t9 - t8),
                ("run: VMM proxy start (its --help)", t10 - t9),
                ("QMP connect + negotiate", t1 - t0),
                ("one QMP query", t2 - t1),
                ("GuestDetails via proxy, first on a connection", t4 - t3),
                ("GuestDetails via proxy, next", t5 - t4),
                ("state load + save (fsync)", t7 - t6),
            ):
                self.res.part("fixed costs", what, seconds)

    def api_round(self, record: bool) -> None:
        name = f"a{next(self._names)}"
        t0 = time.perf_counter()
        st = self.rt.run(RunRequest(CMD, Resources(), name=name))  # 1 vCPU, no limits
        t_run = time.perf_counter() - t0
        try:
            assert st.target == 1 and st.boot_vcpus == 1, st
            boot = next(h["ms"] for h in st.history if h["op"] == "boot") / 1000
            for n in (1, 2):
                time.sleep(SETTLE)
                t0 = time.perf_counter()
                r = self.rt.update(name, cpus(n))
                t = time.perf_counter() - t0
                assert len(r.added) == 1 and r.after == r.before + 1 == n + 1, r
                if record:
                    self.res.add(f"plug{n} api", t)
                    self._steps(f"plug{n} api", r.steps, t, API_OTHER)
            for _ in range(REONLINES):
                self.rt.update(name, cpus(1))
                time.sleep(SETTLE)
                t0 = time.perf_counter()
                r = self.rt.update(name, cpus(2))
                t = time.perf_counter() - t0
                assert not r.added and r.onlined and r.after == 3, r
                if record:
                    self.res.add("reonline api", t)
                    self._steps("reonline api", r.steps, t, API_OTHER)
            if record:
                self.probe(name)
                self.res.add("run api", t_run)
                self.res.part("run api", "start -> agent up (incl. prepare)", boot)
                self.res.part("run api", "container + size + start", t_run - boot)
        finally:
            self.rt.rm(name, force=True)

    def cli_round(self, record: bool) -> None:
        name = f"c{next(self._names)}"
        t0 = time.perf_counter()
        self.cli("run", "-d", "--name", name, "--hypervisor", "qemu", "--config",
                 str(self.config_file), "--max-cpus", str(PLUG_MAXCPUS), "--", *CMD)  # fmt: skip
        t_run = time.perf_counter() - t0
        try:
            for n in (1, 2):
                time.sleep(SETTLE)
                t0 = time.perf_counter()
                self.cli("update", "--cpus", str(n), name)
                t = time.perf_counter() - t0
                st = self.rt.store.load(name)
                assert len(st.plugged) == n + 1 and st.history[-1]["after"] == n + 1, st
                if record:
                    self.res.add(f"plug{n} cli", t)
                    self._steps(f"plug{n} cli", st.history[-1]["steps"], t, CLI_OTHER)
            for _ in range(REONLINES):
                self.cli("update", "--cpus", "1", name)
                time.sleep(SETTLE)
                t0 = time.perf_counter()
                self.cli("update", "--cpus", "2", name)
                t = time.perf_counter() - t0
                if record:
                    self.res.add("reonline cli", t)
                    steps = self.rt.store.load(name).history[-1]["steps"]
                    self._steps("reonline cli", steps, t, CLI_OTHER)
            if record:
                self.res.add("run cli", t_run)
        finally:
            self.rt.rm(name, force=True)

    def iteration(self, i: int, methods: tuple[str, ...], record: bool) -> None:
        """One fresh VM per method, the methods in turn (the order rotates)."""
        for method in methods[i % len(methods) :] + methods[: i % len(methods)]:
            t0 = time.monotonic()
            if method == "api":
                self.api_round(record)
            elif method == "cli":
                self.cli_round(record)
            else:
                self.hand_round(method, record)
            print(f"    {method}: {time.monotonic() - t0:.0f} s", flush=True)

    # ------------------------------------------------------------------ density

    def density(self, window: float) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for mode in (HotplugMode.ACPI, HotplugMode.ONLINE_OFFLINE):
            cfg = dataclasses.replace(self.cfg, default_maxvcpus=DENSITY_MAXCPUS,
                                      hotplug_mode=mode)  # fmt: skip
            rt = Runtime(self.rt.store.root, cfg)
            out[mode.value] = idle_footprint(rt, f"d{next(self._names)}", window)
        return out

    def close(self) -> None:
        for vm in list(self.hand):
            with contextlib.suppress(Exception):
                vm.close()
        for name in self.rt.store.names():
            with contextlib.suppress(Exception):
                self.rt.rm(name, force=True)


def idle_footprint(rt: Runtime, name: str, window: float) -> dict[str, float]:
    """Run an idle sandbox (1 vCPU online, no limits) and measure what it costs the host:
    its ``qemu-system`` process's threads, RSS and idle CPU, and the VMM proxy's."""
    t0 = time.perf_counter()
    st = rt.run(RunRequest(CMD, Resources(), name=name))
    t_run = time.perf_counter() - t0
    try:
        time.sleep(2 * SETTLE)
        info = rt.inspect(name)
        online = sum(1 for v in info.vcpus if v.online)
        plugged = sum(1 for v in info.vcpus if v.plugged)
        qemu = process.socket_peer(rt.store.socket_path(name, "qmp"))
        assert qemu is not None and st.vmm_pid is not None
        before = {p: cpu_ticks(p) for p in (qemu.pid, st.vmm_pid)}
        time.sleep(window)
        after = {p: cpu_ticks(p) for p in (qemu.pid, st.vmm_pid)}
        hz = os.sysconf("SC_CLK_TCK")
        return {
            "run s": t_run,
            "vCPUs online": online,
            "vCPUs plugged": plugged,
            "qemu threads": len(os.listdir(f"/proc/{qemu.pid}/task")),
            "qemu RSS MiB": rss_kib(qemu.pid) / 1024,
            "qemu idle CPU %": 100 * (after[qemu.pid] - before[qemu.pid]) / hz / window,
            "proxy RSS MiB": rss_kib(st.vmm_pid) / 1024,
            "proxy idle CPU %": 100 * (after[st.vmm_pid] - before[st.vmm_pid]) / hz / window,
        }
    finally:
        rt.rm(name, force=True)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def our_qemus(root: Path) -> Iterator[int]:
    """Every ``qemu-system-*`` process whose command line names this run's directory."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        exe = Path(argv[0].decode(errors="replace")).name
        if exe.startswith("qemu-system") and any(str(root).encode() in a for a in argv):
            yield int(entry.name)


def clean_up(root: Path) -> None:
    """Kill any ``qemu-system`` of this run still there (saying which), remove ``root``."""
    left = list(our_qemus(root))
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    print(f"qemu-system processes of this run left: {left or 'none'}")
    shutil.rmtree(root, ignore_errors=True)


def installed_like_env(cache: Path) -> dict[str, str]:
    """Compiled modules cached (outside the source tree), as an installed cpuplug has."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(cache)}


# --------------------------------------------------------------------------- report


def print_report(b: Bench, density: dict[str, dict[str, float]], versions: dict[str, str]) -> None:
    res = b.res
    print()
    for k, v in versions.items():
        print(f"{k:<14}{v}")
    print()
    print(f"{'operation':<18}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'samples':>9}")
    for key in sorted(res.rows):
        values = res.rows[key]
        failed = f"  ({len(res.failed[key])} failed)" if res.failed.get(key) else ""
        print(f"{key:<18}{res.med(key):>11.1f}{ms(min(values)):>9.1f}{ms(max(values)):>9.1f}"
              f"{len(values):>9}{failed}")  # fmt: skip
    for key, reasons in sorted(res.failed.items()):
        for reason in reasons:
            print(f"  {key} failed, counted as {KATA_CAP:g} s: {reason}")

    def x(a: float, b: float) -> str:
        return "n/a" if math.isnan(a) or math.isnan(b) else f"{a / b:.2f}x"

    def verdict(a: float, b: float, goal: float) -> str:
        if math.isnan(a) or math.isnan(b):
            return "n/a"
        return "met" if a / b <= goal else "NOT met"

    for n, label in ((1, "the VM's first plug, 1 -> 2 online"), (2, "its second, 2 -> 3")):
        floor = res.med(f"plug{n} floor")
        kata, kata_asc = res.med(f"plug{n} kata"), res.med(f"plug{n} kata-asc")
        n_failed = len(res.failed.get(f"plug{n} kata", []))
        of = len(res.rows.get(f"plug{n} kata", []))
        note = f" ({n_failed} of {of} failed: a lower bound)" if n_failed else ""
        print(f"\n+1 vCPU, {label}:")
        print(f"  kata / floor {x(kata, floor)}{note}   kata-asc / floor {x(kata_asc, floor)}")
        for who in ("api", "cli"):
            mine = res.med(f"plug{n} {who}")
            print(
                f"  {who} / floor {x(mine, floor)} (goal <= {GOAL_UPDATE_OVER_FLOOR:g}x: "
                f"{verdict(mine, floor, GOAL_UPDATE_OVER_FLOOR)})   "
                f"{who} / kata {x(mine, kata)} (goal < 1: {verdict(mine, kata, 1.0)})   "
                f"{who} / kata-asc {x(mine, kata_asc)}"
            )
    print(
        "\n+1 vCPU, time outside OnlineCPUMem (what a runtime adds, free of the guest's"
        "\nonlining, which varies 2-4x between VMs), and the ratio to the floor with the"
        "\nguest's part held at the floor's median:"
    )
    for key in ("plug1", "plug2", "reonline"):
        out = {who: median(res.outside.get(f"{key} {who}", [0.0])) for who in METHODS}
        guest = median(res.rows[f"{key} floor"]) - out["floor"]
        print(
            f"  {key:<9}"
            + "   ".join(f"{who} {ms(out[who]):.1f} ms" for who in ("floor", "api", "cli"))
            + "   ->  "
            + "   ".join(
                f"{who} / floor {(guest + out[who]) / (guest + out['floor']):.2f}x"
                for who in ("api", "cli")
            )
        )
    floor = res.med("reonline floor")
    print("\n+1 vCPU after a shrink (plugged, offline -> online; QEMU 7.2 cannot re-plug):")
    for who in ("api", "cli"):
        print(f"  {who} / floor (a bare OnlineCPUMem) {x(res.med(f'reonline {who}'), floor)}")
    boot = res.med("boot")
    print("\nrun to ready vs plain boot (QEMU's exec -> first GuestDetails answer):")
    for who in ("api", "cli"):
        mine = res.med(f"run {who}")
        print(f"  run {who} / boot {x(mine, boot)} (goal <= {GOAL_RUN_OVER_BOOT:g}x: "
              f"{verdict(mine, boot, GOAL_RUN_OVER_BOOT)})")  # fmt: skip
    print("\nwhere the time goes (medians, ms):")
    for key in sorted(res.parts):
        parts = res.parts[key]
        text = ", ".join(f"{name} {ms(median(v)):.1f}" for name, v in parts.items())
        total = f"{res.med(key):>8.1f} =" if key in res.rows else " " * 8 + ":"
        print(f"  {key:<14}{total} {text}")
    if not density:
        return
    print_density(f"an idle sandbox with 1 of {DENSITY_MAXCPUS} vCPUs online", density)


def print_density(title: str, density: dict[str, dict[str, float]]) -> None:
    """One column per hotplug mode, and online/offline over ACPI."""
    print(f"\ndensity: {title}")
    modes = list(density)
    print(f"  {'':<18}" + "".join(f"{m:>16}" for m in modes) + f"{'o-o / acpi':>12}")
    for metric in density[modes[0]]:
        a, o = density[modes[0]][metric], density[modes[-1]][metric]
        ratio = f"{o / a:.2f}x" if a else "-"
        print(f"  {metric:<18}" + "".join(f"{density[m][metric]:>16.1f}" for m in modes)
              + f"{ratio:>12}")  # fmt: skip


def versions(b: Bench, image: Any) -> dict[str, str]:
    qemu_bin = b.spec.extra["qemu"]
    first = subprocess.run([qemu_bin, "--version"], capture_output=True, text=True).stdout
    kernel_pkg = next((p for p in image.packages if p.startswith("linux-image")), "?")
    argv = " ".join(b.backend.command(b.spec)[1:])
    argv = argv.replace(str(b.spec.sandbox_dir), "$DIR").replace(str(image.kernel.parent), "$IMG")
    return {
        "QEMU": f"{first.splitlines()[0]} (QMP {b.qemu_version}), -accel {b.spec.extra['accel']}",
        "guest kernel": f"{b.guest_kernel} ({kernel_pkg}, image {image.key})",
        "host": f"Linux {platform.release()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "VM": argv,
    }


# --------------------------------------------------------------------------- arm64

ARM_MAXCPUS = 4
ADD_STEPS = ("device_add", "insert_ost", "online_cpu_mem")
"""An update's steps from ``device_add`` sent to the vCPU online in the guest."""


def arm64_hotplug(root: Path, hypervisor: str, qemu: str | None, cycles: int,
                  env_root: Path) -> dict[str, list[float]]:  # fmt: skip
    """``cycles`` of +1 vCPU (2 -> 3) and -1 (3 -> 2) through ``Runtime.update`` on one
    arm64 sandbox; each update's own step timings say where the time went."""
    extra: dict[str, Any] = {"arch": "aarch64", "qemu_path": qemu} if qemu else {}
    cfg = RuntimeConfig(default_maxvcpus=ARM_MAXCPUS, hypervisor=hypervisor, **extra)
    rt = Runtime(env_root / hypervisor, cfg)
    name = f"p{hypervisor[0]}"
    out: dict[str, list[float]] = collections.defaultdict(list)
    rt.run(RunRequest(CMD, cpus(1), name=name))
    try:
        for _ in range(cycles):
            for n, sign in ((2, "+1"), (1, "-1")):
                time.sleep(SETTLE)
                t0 = time.perf_counter()
                r = rt.update(name, cpus(n))
                t = time.perf_counter() - t0
                steps = {st["step"]: st["ms"] / 1000 for st in r.steps}
                if sign == "+1":
                    assert len(r.added) == 1, r
                    out["+1: update (API)"].append(t)
                    out["+1: device_add answered"].append(steps["device_add"])
                    out["+1: -> insert _OST"].append(steps["insert_ost"])
                    out["+1: device_add -> online"].append(sum(steps[k] for k in ADD_STEPS))
                else:
                    assert len(r.removed) == 1, r
                    out["-1: update (API)"].append(t)
                    out["-1: device_del -> deleted"].append(steps["device_del"])
    finally:
        rt.rm(name, force=True)
    return out


def arm64_main(qemu: str, cycles: int, window: float) -> int:
    """The arm64 RFC's QEMU against the built-in machine, and its density in both modes."""
    from cpuplug.image import ensure_image

    image = ensure_image("aarch64", progress=lambda p: print(f"image: {p.message}", flush=True))
    root = Path(tempfile.mkdtemp(prefix="cpba", dir="/tmp"))
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(root / "pyc")
    rows: dict[str, dict[str, list[float]]] = {}
    density: dict[str, dict[str, float]] = {}
    try:
        for hypervisor, binary in (("qemu", qemu), ("builtin", None)):
            print(f"{hypervisor}: {cycles} cycles of +1/-1 vCPU ...", flush=True)
            rows[hypervisor] = arm64_hotplug(root, hypervisor, binary, cycles, root)
        for mode in (HotplugMode.ACPI, HotplugMode.ONLINE_OFFLINE):
            print(f"density, {mode.value} ...", flush=True)
            cfg = RuntimeConfig(default_maxvcpus=DENSITY_MAXCPUS, hypervisor="qemu",
                                arch="aarch64", qemu_path=qemu, hotplug_mode=mode)  # fmt: skip
            density[mode.value] = idle_footprint(Runtime(root / "d", cfg), "d", window)
    finally:
        clean_up(root)
    version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout
    print(f"\nQEMU          {version.splitlines()[0]}")
    print(f"guest kernel  {image.kernel_version} (image {image.key}), UEFI {image.firmware}")
    print(f"host          Linux {platform.release()}, {os.cpu_count()} CPUs\n")
    print(f"{'arm64 vCPU hotplug, medians':<32}{'RFC QEMU ms':>13}{'built-in ms':>13}"
          f"{'RFC / built-in':>16}")  # fmt: skip
    for key in rows["qemu"]:
        q, b = median(rows["qemu"][key]), median(rows["builtin"].get(key, [math.nan]))
        print(f"  {key:<30}{ms(q):>13.1f}{ms(b):>13.1f}{q / b:>15.2f}x")
    print_density(
        f"an idle arm64 sandbox with 1 of {DENSITY_MAXCPUS} vCPUs online, RFC QEMU", density
    )
    return 0


def main() -> int:
    ap_ = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap_.add_argument("--iterations", type=int, help="VMs per method (default 6, --quick 2)")
    ap_.add_argument("--quick", action="store_true", help="2 iterations, a short idle window")
    ap_.add_argument(
        "--arm64",
        metavar="QEMU",
        help="instead: arm64 vCPU hotplug on this qemu-system-aarch64 (the RFC's, "
        "scripts/build-qemu-arm64-hotplug) vs the built-in machine, and density",
    )
    opts = ap_.parse_args()
    n = opts.iterations or (2 if opts.quick else 6)
    window = 3.0 if opts.quick else 8.0
    if opts.arm64:
        return arm64_main(opts.arm64, n, window)

    from cpuplug.image import ensure_image  # heavy, and only the bench's own set-up uses it

    image = ensure_image("x86_64", progress=lambda p: print(f"image: {p.message}", flush=True))
    root = Path(tempfile.mkdtemp(prefix="cpbq", dir="/tmp"))
    pyc = root / "pyc"
    env = installed_like_env(pyc)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # the VMM proxy the API starts
    os.environ["PYTHONPYCACHEPREFIX"] = str(pyc)  # inherits os.environ
    b = Bench(root, str(image.kernel), str(image.initrd), env)
    density: dict[str, dict[str, float]] = {}
    try:
        print(f"warm-up (untimed), then {n} iterations of {len(METHODS)} VMs ...", flush=True)
        b.iteration(0, WARM_UP, record=False)
        for i in range(n):
            t0 = time.monotonic()
            b.iteration(i, METHODS, record=True)
            print(f"  iteration {i + 1}/{n}: {time.monotonic() - t0:.0f} s", flush=True)
        print("density ...", flush=True)
        density = b.density(window)
    finally:
        b.close()
        clean_up(root)
    print_report(b, density, versions(b, image))
    return 0


if __name__ == "__main__":
    sys.exit(main())

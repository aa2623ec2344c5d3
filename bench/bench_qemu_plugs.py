"""QEMU >= 10 under TCG: vCPU plugs until the abort, the cost of extra vCPU slots, and
what a shrink by unplug saves over a shrink by offline (issue 9).

Every VM is a real sandbox started by cpuplug itself (``Runtime`` with the QEMU
backend and the guest image of :mod:`cpuplug.image`), with ``--max-cpus 4 --cpus 1``:
1 boot vCPU, 2 online after ``run``; a grow is ``update --cpus 3`` (4 vCPUs) and a
shrink ``update --cpus 1`` (2 vCPUs).

* ``cycles``: grow/shrink until QEMU dies or ``--cycles`` are done, with QEMU's
  ``maxcpus`` = the sandbox's (``extra_vcpu_slots = 0``) and = twice it (``= 4``),
  once with the budget rule switched off (every shrink unplugs: how many plugs does
  QEMU survive, and how does it end?) and once with it on (what cpuplug does).
* ``slots``: an idle sandbox (2 vCPUs plugged) with 4, 8, 16 and 32 possible vCPUs:
  QEMU's threads and RSS, the boot (``run`` until the agent answers, and the guest's
  uptime when /init starts the agent), and the guest's ``MemTotal`` (the kernel sizes
  per-CPU areas by possible CPUs).
* ``shrink``: after a grow to 4 vCPUs, a shrink to 2 by unplug (``extra_vcpu_slots =
  4``: budget left) against one by offline (``= 0``: budget spent, vCPUs kept plugged):
  QEMU's threads and RSS after it, the CPU time QEMU burns idle, the shrink's and the
  next grow's latency.

Numbers are printed (and written as JSON with ``--json FILE``), never asserted.  Every
VM is removed at the end.

Run: ``.venv/bin/python bench/bench_qemu_plugs.py --qemu PATH [cycles|slots|shrink]...``
(PATH: ``cpuplug image qemu --version 10``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from cpuplug.runtime.config import RuntimeConfig
from cpuplug.runtime.hypervisor import Backend, Hypervisor, HypervisorKind, VmSpec, backend
from cpuplug.runtime.hypervisors.qmp import QmpHypervisor
from cpuplug.runtime.process import socket_peer
from cpuplug.runtime.sandbox import Resources, RunRequest, Runtime

MAX_CPUS = 4
SETTLE = 3.0
"""Seconds a VM is left alone before its threads and RSS are read."""
IDLE = 10.0
"""Seconds over which QEMU's idle CPU time is measured."""
TICK = os.sysconf("SC_CLK_TCK")


def cpus(n: int) -> Resources:
    return Resources(quota=n * 100_000, period=100_000)


class NoBudget:
    """The QEMU backend with the plug budget switched off: every shrink unplugs."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.kind = inner.kind

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def attach(self, spec: VmSpec) -> Hypervisor:
        hv = self.inner.attach(spec)
        assert isinstance(hv, QmpHypervisor)
        hv._caps = replace(hv.capabilities(), max_plugs=None)
        return hv


def make_runtime(root: Path, qemu: str, extra: int, budget: bool = True) -> Runtime:
    cfg = RuntimeConfig(
        hypervisor="qemu", qemu_path=qemu, default_maxvcpus=MAX_CPUS, extra_vcpu_slots=extra,
        start_timeout=180.0,
    )  # fmt: skip

    def backends(kind: HypervisorKind) -> Backend:
        real = backend(kind)
        return real if budget else NoBudget(real)

    return Runtime(root, cfg, backends=backends)


@contextlib.contextmanager
def sandbox(rt: Runtime, name: str) -> Iterator[int]:
    """A running sandbox (2 of 4 vCPUs); yields the qemu-system pid; always removed."""
    try:
        rt.run(RunRequest(["sleep", "100000"], cpus(1), name=name))
        peer = socket_peer(rt.store.socket_path(name, "qmp"))
        assert peer is not None
        yield peer.pid
    finally:
        with contextlib.suppress(Exception):
            rt.rm(name, force=True)


def proc_stats(pid: int) -> dict[str, float]:
    """Threads, RSS (MiB) and CPU time (s) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "rss_mib": rss / 1024,
        "cpu_s": (int(fields[11]) + int(fields[12])) / TICK,
    }


def vmm_log_tail(rt: Runtime, name: str) -> str:
    try:
        lines = (rt.store.dir(name) / "vmm.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(line for line in lines[-4:] if not line.startswith("image "))


def agent_start(rt: Runtime, name: str) -> float:
    """The guest's uptime when /init started the agent (its console says)."""
    text = (rt.store.dir(name) / "console.log").read_text(errors="replace")
    m = re.search(r"starting the agent .* at ([0-9.]+)s", text)
    return float(m.group(1)) if m else float("nan")


def boot_ms(rt: Runtime, name: str) -> float:
    st = rt.store.load(name)
    return float(next(h["ms"] for h in st.history if h.get("op") == "boot"))


# --------------------------------------------------------------------------- cycles


def cycles(root: Path, qemu: str, extra: int, budget: bool, n: int) -> dict[str, Any]:
    rt = make_runtime(root, qemu, extra, budget)
    name = f"c{extra}{'b' if budget else 'n'}"
    steps: list[str] = []
    out: dict[str, Any] = {"extra_vcpu_slots": extra, "budget_rule": budget}
    with sandbox(rt, name) as pid:
        done = 0
        try:
            for _ in range(n):
                for want in (3, 1):
                    r = rt.update(name, cpus(want))
                    how = (
                        f"+{','.join(map(str, r.added))}" if r.added else
                        f"-{','.join(map(str, r.removed))}" if r.removed else ""
                    )  # fmt: skip
                    if r.offlined:
                        how += f" off {','.join(map(str, r.offlined))}"
                    if r.onlined:
                        how += f" on {','.join(map(str, r.onlined))}"
                    steps.append(f"{r.before}->{r.after} {how.strip()}")
                done += 1
            out["end"] = "all cycles done"
        except Exception as exc:  # the measurement is how it fails
            time.sleep(0.5)
            out["end"] = f"{type(exc).__name__}: {exc}"[:200]
            out["vmm_log"] = vmm_log_tail(rt, name)
        out["qemu_alive"] = os.path.exists(f"/proc/{pid}")
        st = rt.store.load(name)
        out.update(cycles_done=done, plugs_used=st.plugs_used, steps=steps)
    return out


# --------------------------------------------------------------------------- slots


def slots(root: Path, qemu: str, reps: int) -> dict[str, Any]:
    results: dict[int, list[dict[str, float]]] = {}
    for rep in range(reps):
        for extra in (0, 4, 12, 28):
            rt = make_runtime(root, qemu, extra)
            name = f"s{extra}-{rep}"
            with sandbox(rt, name) as pid:
                time.sleep(SETTLE)
                row = proc_stats(pid)
                row["boot_ms"] = boot_ms(rt, name)
                row["guest_agent_start_s"] = agent_start(rt, name)
                meminfo = rt.exec(name, ["cat", "/proc/meminfo"])["stdout"]
                mem = {
                    line.split(":")[0]: int(line.split()[1]) for line in meminfo.splitlines()
                }
                row["guest_memtotal_kib"] = mem["MemTotal"]
                row["guest_memavailable_kib"] = mem["MemAvailable"]
                possible = rt.exec(name, ["cat", "/sys/devices/system/cpu/possible"])
                row["guest_possible"] = float(possible["stdout"].strip().split("-")[-1]) + 1
                t0 = proc_stats(pid)["cpu_s"]
                time.sleep(IDLE)
                row["idle_cpu_pct"] = (proc_stats(pid)["cpu_s"] - t0) / IDLE * 100
                results.setdefault(MAX_CPUS + extra, []).append(row)
    return {str(k): _medians(v) for k, v in results.items()}


# --------------------------------------------------------------------------- shrink


def shrink(root: Path, qemu: str, reps: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {}
    for rep in range(reps):
        # extra 0: run + grow spend the 3 plugs, the shrink offlines; extra 4: it unplugs
        for extra, label in ((0, "offline"), (4, "unplug")):
            rt = make_runtime(root, qemu, extra)
            name = f"k{label}-{rep}"
            with sandbox(rt, name) as pid:
                rt.update(name, cpus(3))
                time.sleep(SETTLE)
                grown = proc_stats(pid)
                t = time.perf_counter()
                r = rt.update(name, cpus(1))
                row: dict[str, float] = {"shrink_ms": (time.perf_counter() - t) * 1000}
                assert (r.removed if label == "unplug" else r.offlined), (label, r)
                time.sleep(SETTLE)
                after = proc_stats(pid)
                time.sleep(IDLE)
                row["idle_cpu_pct"] = (proc_stats(pid)["cpu_s"] - after["cpu_s"]) / IDLE * 100
                row["threads_grown"] = grown["threads"]
                row["threads_after"] = after["threads"]
                row["rss_grown_mib"] = grown["rss_mib"]
                row["rss_after_mib"] = after["rss_mib"]
                t = time.perf_counter()
                rt.update(name, cpus(3))
                row["regrow_ms"] = (time.perf_counter() - t) * 1000
                results.setdefault(label, []).append(row)
    return {k: _medians(v) for k, v in results.items()}


def _medians(rows: list[dict[str, float]]) -> dict[str, Any]:
    keys = rows[0].keys()
    out: dict[str, Any] = {k: round(statistics.median(r[k] for r in rows), 1) for k in keys}
    out["n"] = len(rows)
    out["all"] = rows
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--qemu", required=True, help="qemu-system-x86_64 >= 10 (cpuplug image qemu)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cycles", type=int, default=6)
    p.add_argument("--json", type=Path)
    p.add_argument("what", nargs="*", default=["cycles", "slots", "shrink"])
    args = p.parse_args()
    report: dict[str, Any] = {}
    runs: dict[str, Callable[[Path], Any]] = {
        "cycles": lambda root: [
            cycles(root, args.qemu, extra, budget, args.cycles)
            for budget in (False, True)
            for extra in (0, MAX_CPUS)
        ],
        "slots": lambda root: slots(root, args.qemu, args.reps),
        "shrink": lambda root: shrink(root, args.qemu, args.reps),
    }
    with tempfile.TemporaryDirectory(prefix="cpb-") as tmp:
        for what in args.what:
            report[what] = runs[what](Path(tmp))
            print(what, json.dumps(report[what], indent=1, default=str), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()

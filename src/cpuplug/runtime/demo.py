"""``cpuplug demo``: the talk's point in about a minute, on the built-in machine and real QEMU.

A sandbox starts with ``--cpus 1`` (1 + default_vcpus = 2 vCPUs), is grown
with ``update --cpus 3`` (4 vCPUs, three CPUs of quota) and shrunk back with
``update --cpus 1``.  After each step a CPU-bound workload (one hog per host core,
SHA-256 over 1 MiB buffers) runs in the container for a fixed window, and the demo
reports the real work it did (MiB/s) next to the CPU time the guest cgroup charged
(``usage_usec`` through the agent).  The two differ on purpose: vCPUs beyond the
host's cores add guest CPU time but no work, and the demo shows both rather than
claiming the first as throughput.  It shows the vCPU map with each plugged vCPU's
host thread, and ends with a table of what happened and how long each step took.

The same scenario runs twice when it can: on the built-in arm64 machine (the
reference of the ACPI design; its guest's ``stress`` does the hashing) and, where
``qemu-system-x86_64`` is installed, on a real QEMU with a real Linux guest (the
hashing is a real program: python3 in the guest, one forked process per hog).
Each uses a private state directory and removes its sandbox even when a step fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cpuplug.errors import CpuplugError
from cpuplug.runtime.config import RuntimeConfig
from cpuplug.runtime.sandbox import Resources, RunRequest, Runtime
from cpuplug.runtime.sizing import cpus_to_quota, parse_cpus

DEMO_MAX_CPUS = 4
CONTAINER_CMD = ["sleep", "3600"]
MEASURE_SECONDS = 2.0
# One hog per host core (at most one per vCPU of the grown sandbox): more hogs than
# cores only add GIL hand-offs between vCPU threads, which costs work.
HOGS = max(1, min(DEMO_MAX_CPUS, os.cpu_count() or 1))
WORKLOAD = ["stress", "--cpu", str(HOGS), "--timeout", f"{MEASURE_SECONDS:g}"]
HOG_PY = """\
import hashlib, os, sys, time
n, secs = int(sys.argv[1]), float(sys.argv[2])
buf = bytes(1 << 20)
r, w = os.pipe()
t0 = time.monotonic()
for _ in range(n):
    if os.fork() == 0:
        done = 0
        while time.monotonic() - t0 < secs:
            hashlib.sha256(buf).digest()
            done += 1
        os.write(w, b"%d\\n" % done)
        os._exit(0)
for _ in range(n):
    os.wait()
os.close(w)
total = sum(int(x) for x in os.read(r, 4096).split())
print(f"hashed {total} MiB ({total / (time.monotonic() - t0):.1f} MiB/s)")
"""
"""The real guest's workload: the same SHA-256 hogs as the built-in ``stress``."""
REAL_WORKLOAD = ["python3", "-c", HOG_PY, str(HOGS), f"{MEASURE_SECONDS:g}"]
_RATE = re.compile(r"\(([\d.]+) MiB/s\)")


@dataclass(frozen=True)
class Machine:
    """One side of the demo: which hypervisor, and the workload its guest runs."""

    title: str
    config: RuntimeConfig
    workload: list[str]


@dataclass
class Throughput:
    mib_per_s: float
    """Real work: what stress hashed per wall second."""
    cpu_per_s: float
    """Guest CPU-seconds charged to the container per wall second."""


@dataclass
class Step:
    what: str
    vcpus: int
    quota: str
    seconds: float
    throughput: Throughput | None = None


def throughput(rt: Runtime, name: str, workload: list[str]) -> Throughput:
    """Run the workload in the container once and measure what it achieved."""
    before = _usage(rt, name)
    t0 = time.monotonic()
    res = rt.exec(name, workload, timeout=MEASURE_SECONDS + 60)
    elapsed = time.monotonic() - t0
    after = _usage(rt, name)
    m = _RATE.search(str(res.get("stdout", "")))
    if res.get("exit_code") != 0 or m is None:
        raise CpuplugError(f"workload failed: {res.get('stderr') or res.get('stdout')}")
    return Throughput(float(m.group(1)), (after - before) / 1e6 / elapsed)


def _describe(t: Throughput) -> str:
    return f"  work {t.mib_per_s:.0f} MiB/s   (guest CPU time {t.cpu_per_s:.2f} CPU-s/s)"


def _usage(rt: Runtime, name: str) -> int:
    agent = rt.connect_agent(rt.store.socket_path(name, "agent"))
    try:
        st = rt.store.load(name)
        stats = agent.stats_container(st.containers[0].id)
        return int(stats["cpu"]["usage_usec"])
    finally:
        agent.close()


def _vcpu_line(rt: Runtime, name: str) -> str:
    info = rt.inspect(name)
    cells = []
    for row in info.vcpus:
        if row.online:
            cells.append(f"[green]{row.vcpu}:on(tid {row.thread_id})[/green]")
        elif row.plugged:
            cells.append(f"[yellow]{row.vcpu}:plugged[/yellow]")
        else:
            cells.append(f"[dim]{row.vcpu}:-[/dim]")
    return " ".join(cells)


def machines() -> list[Machine]:
    """The built-in machine, and real QEMU where it is installed."""
    out = [Machine("built-in arm64 machine", RuntimeConfig(default_maxvcpus=DEMO_MAX_CPUS),
                   WORKLOAD)]  # fmt: skip
    if shutil.which("qemu-system-x86_64"):
        cfg = RuntimeConfig(default_maxvcpus=DEMO_MAX_CPUS, hypervisor="qemu", arch="x86_64")
        out.append(Machine("real QEMU x86_64 + Linux guest", cfg, REAL_WORKLOAD))
    return out


def scenario(rt: Runtime, m: Machine, out: Console) -> list[Step]:
    """run --cpus 1, update --cpus 3, update --cpus 1, with the workload after each."""
    name = "demo"
    steps: list[Step] = []
    try:
        t0 = time.monotonic()
        quota, period = cpus_to_quota(parse_cpus("1"))
        st = rt.run(
            RunRequest(CONTAINER_CMD, Resources(quota, period), name=name),
            on_step=lambda s: out.print(f"[dim]  {s}[/dim]"),
        )
        steps.append(Step("run --cpus 1", st.target, "1.0", time.monotonic() - t0))
        out.print(f"run --cpus 1: {st.target} vCPUs   {_vcpu_line(rt, name)}")
        steps[-1].throughput = throughput(rt, name, m.workload)
        out.print(_describe(steps[-1].throughput))
        for cpus, label in (("3", "grow"), ("1", "shrink")):
            q, p = cpus_to_quota(parse_cpus(cpus))
            res = rt.update(name, Resources(q, p))
            steps.append(
                Step(f"update --cpus {cpus} ({label})", res.after, f"{q / p:.1f}", res.seconds)
            )
            out.print(
                f"update --cpus {cpus}: vCPUs {res.before} -> {res.after} in "
                f"{res.seconds * 1000:.0f} ms   {_vcpu_line(rt, name)}"
            )
            steps[-1].throughput = throughput(rt, name, m.workload)
            out.print(_describe(steps[-1].throughput))
        return steps
    finally:
        with contextlib.suppress(CpuplugError):
            rt.rm(name, force=True)


def run_demo(root: str | Path | None = None, console: Console | None = None) -> int:
    out = console or Console(highlight=False)
    results: list[tuple[Machine, list[Step]]] = []
    for m in machines():
        out.print(
            f"\n[bold]cpuplug demo on the {m.title}[/bold]: maxcpus {DEMO_MAX_CPUS}; after "
            f"each step {HOGS} SHA-256 hog(s) run in the container for {MEASURE_SECONDS:g} s"
        )
        with contextlib.ExitStack() as stack:
            where = Path(root) / m.config.hypervisor if root is not None else None
            if where is None:
                where = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cpd")))
            try:
                results.append((m, scenario(Runtime(where, m.config), m, out)))
            except CpuplugError as exc:
                out.print(f"[red]demo failed on the {m.title}:[/red] {exc}")
                return 1
            if root is not None:
                with contextlib.suppress(OSError):
                    where.rmdir()
    table = Table(title="what happened", header_style="bold")
    for col in ("machine", "step", "vCPUs", "took", "work MiB/s", "guest CPU-s/s"):
        table.add_column(col)
    for m, steps in results:
        for s in steps:
            t = s.throughput
            table.add_row(
                m.config.hypervisor,
                s.what,
                str(s.vcpus),
                f"{s.seconds * 1000:.0f} ms",
                f"{t.mib_per_s:.1f}" if t else "-",
                f"{t.cpu_per_s:.2f}" if t else "-",
            )
    out.print(table)
    for m, steps in results:
        base, grown = steps[0].throughput, steps[1].throughput
        if base and grown and base.mib_per_s > 0:
            out.print(
                f"grow gain on the {m.title}: x{grown.mib_per_s / base.mib_per_s:.2f} work with "
                f"{steps[1].vcpus} vCPUs vs {steps[0].vcpus} (the host has "
                f"{os.cpu_count()} cores: vCPUs beyond them add no work)"
            )
    return 0

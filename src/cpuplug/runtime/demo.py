"""``cpuplug demo``: the talk's point in under a minute, on the built-in machine.

A sandbox starts with ``--cpus 1`` (1 + default_vcpus = 2 vCPUs), is grown
with ``update --cpus 3`` (4 vCPUs, three CPUs of quota) and shrunk back with
``update --cpus 1``.  After each step a CPU-bound workload (``stress``, one hog per host core,
SHA-256 over 1 MiB buffers, which releases the GIL) runs in the container for a
fixed window, and the demo reports the real work it did (MiB/s, from stress's
own report) next to the CPU time the guest cgroup charged (``usage_usec``
through the agent).  The two differ on purpose: vCPUs beyond the host's cores
add guest CPU time but no work, and the demo shows both rather than claiming
the first as throughput.  It shows the vCPU map with each plugged vCPU's host
thread, and ends with a table of what happened and how long each step took.
It uses a private state directory and removes the sandbox even when
a step fails.
"""

from __future__ import annotations

import contextlib
import os
import re
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
_RATE = re.compile(r"\(([\d.]+) MiB/s\)")


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


def throughput(rt: Runtime, name: str) -> Throughput:
    """Run the workload in the container once and measure what it achieved."""
    before = _usage(rt, name)
    t0 = time.monotonic()
    res = rt.exec(name, WORKLOAD, timeout=MEASURE_SECONDS + 30)
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


def run_demo(root: str | Path | None = None, console: Console | None = None) -> int:
    out = console or Console(highlight=False)
    tmp = None
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="cpd")
        root = tmp.name
    cfg = RuntimeConfig(default_maxvcpus=DEMO_MAX_CPUS)
    rt = Runtime(root, cfg)
    name = "demo"
    steps: list[Step] = []
    try:
        out.print(
            f"[bold]cpuplug demo[/bold]: ACPI vCPU hotplug, maxcpus {DEMO_MAX_CPUS}; "
            f"after each step `{' '.join(WORKLOAD)}` runs in the container"
        )
        t0 = time.monotonic()
        quota, period = cpus_to_quota(parse_cpus("1"))
        st = rt.run(RunRequest(CONTAINER_CMD, Resources(quota, period), name=name))
        steps.append(Step("run --cpus 1", len(st.plugged), "1.0", time.monotonic() - t0))
        out.print(f"run --cpus 1: {len(st.plugged)} vCPUs   {_vcpu_line(rt, name)}")
        steps[-1].throughput = throughput(rt, name)
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
            steps[-1].throughput = throughput(rt, name)
            out.print(_describe(steps[-1].throughput))
        table = Table(title="what happened", header_style="bold")
        for col in ("step", "vCPUs", "cpu quota", "took", "work MiB/s", "guest CPU-s/s"):
            table.add_column(col)
        for s in steps:
            t = s.throughput
            table.add_row(
                s.what,
                str(s.vcpus),
                s.quota,
                f"{s.seconds * 1000:.0f} ms",
                f"{t.mib_per_s:.0f}" if t else "-",
                f"{t.cpu_per_s:.2f}" if t else "-",
            )
        out.print(table)
        base, grown = steps[0].throughput, steps[1].throughput
        if base and grown and base.mib_per_s > 0:
            out.print(
                f"grow gain: x{grown.mib_per_s / base.mib_per_s:.2f} work with "
                f"{steps[1].vcpus} vCPUs vs {steps[0].vcpus} (the host has "
                f"{os.cpu_count()} cores: vCPUs beyond them add no work)"
            )
        return 0
    except CpuplugError as exc:
        out.print(f"[red]demo failed:[/red] {exc}")
        return 1
    finally:
        with contextlib.suppress(CpuplugError):
            rt.rm(name, force=True)
        if tmp is not None:
            tmp.cleanup()

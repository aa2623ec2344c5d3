"""``cpuplug demo``: the talk's point in under a minute, on the built-in machine.

A sandbox runs ``stress`` with ``--cpus 1`` (1 + default_vcpus = 2 vCPUs), is
grown with ``update --cpus 3`` (4 vCPUs, three more CPUs of quota) and shrunk
back with ``update --cpus 1``.  After each step it measures the container's
throughput as CPU-seconds consumed per wall second (the guest cgroup's
``usage_usec``, read through the agent), shows the vCPU map with each plugged
vCPU's host thread, and ends with a table of what happened and how long each
step took.  It uses a private state directory and removes the sandbox even when
a step fails.
"""

from __future__ import annotations

import contextlib
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
WORKLOAD = ["stress", "--cpu", "4"]
MEASURE_SECONDS = 2.0


@dataclass
class Step:
    what: str
    vcpus: int
    quota: str
    seconds: float
    throughput: float | None = None


def throughput(rt: Runtime, name: str, window: float = MEASURE_SECONDS) -> float:
    """CPU-seconds per second the container used over ``window`` seconds."""
    info_a = _usage(rt, name)
    t0 = time.monotonic()
    time.sleep(window)  # a measurement window, not a wait for a condition
    info_b = _usage(rt, name)
    return (info_b - info_a) / 1e6 / (time.monotonic() - t0)


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
    for row in info["vcpus"]:
        if row["online"]:
            cells.append(f"[green]{row['vcpu']}:on(tid {row['thread_id']})[/green]")
        elif row["plugged"]:
            cells.append(f"[yellow]{row['vcpu']}:plugged[/yellow]")
        else:
            cells.append(f"[dim]{row['vcpu']}:-[/dim]")
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
            f"[bold]cpuplug demo[/bold]: {' '.join(WORKLOAD)} in a sandbox, maxcpus "
            f"{DEMO_MAX_CPUS}, ACPI vCPU hotplug"
        )
        t0 = time.monotonic()
        quota, period = cpus_to_quota(parse_cpus("1"))
        st = rt.run(RunRequest(WORKLOAD, Resources(quota, period), name=name))
        steps.append(Step("run --cpus 1", len(st.plugged), "1.0", time.monotonic() - t0))
        out.print(f"run --cpus 1: {len(st.plugged)} vCPUs   {_vcpu_line(rt, name)}")
        steps[-1].throughput = throughput(rt, name)
        out.print(f"  throughput {steps[-1].throughput:.2f} guest CPU-s/s")
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
            out.print(f"  throughput {steps[-1].throughput:.2f} guest CPU-s/s")
        table = Table(title="what happened", header_style="bold")
        for col in ("step", "vCPUs", "cpu quota", "took", "guest CPU-s/s"):
            table.add_column(col)
        for s in steps:
            table.add_row(
                s.what,
                str(s.vcpus),
                s.quota,
                f"{s.seconds * 1000:.0f} ms",
                f"{s.throughput:.2f}" if s.throughput is not None else "-",
            )
        out.print(table)
        base = steps[0].throughput or 0.0
        grown = steps[1].throughput or 0.0
        if base > 0:
            out.print(
                f"grow gain: x{grown / base:.2f} guest CPU time with {steps[1].vcpus} vCPUs "
                f"vs {steps[0].vcpus}"
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

"""Runtime latencies end to end: ``run`` to ready, ``update`` +1 vCPU and -1 vCPU.

Each operation is timed from command start to command exit, which for an update
includes the vCPU being online in the guest and the container's cgroup updated
(``update`` returns only after ``OnlineCPUMem`` and ``UpdateContainer``).  The
in-process API (:class:`cpuplug.runtime.sandbox.Runtime`) and the CLI (a fresh
``python -m cpuplug`` process per command) are measured separately in the same
run, and reported as medians plus ratios: the ratios (CLI/API, remove/add) are
what to compare across machines, not the absolute times.

Run: ``.venv/bin/python bench/bench_runtime.py [--iterations N]``
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cpuplug.runtime.config import RuntimeConfig
from cpuplug.runtime.sandbox import Resources, RunRequest, Runtime

MAX_CPUS = 4


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cli(root: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "cpuplug", args[0], "--root", str(root), *args[1:]],
        check=True,
        capture_output=True,
        timeout=120,
    )


def cpus(n: int) -> Resources:
    return Resources(quota=n * 100_000, period=100_000)


def stress_rate(rt: Runtime, name: str) -> float:
    """MiB/s hashed by ``stress --cpu 2 --timeout 2`` run in the container (real work)."""
    out = rt.exec(name, ["stress", "--cpu", "2", "--timeout", "2"])["stdout"]
    match = re.search(r"\(([0-9.]+) MiB/s\)", out)
    if match is None:
        raise RuntimeError(f"unexpected stress output: {out!r}")
    return float(match.group(1))


def throughput_series(rt: Runtime) -> dict[str, float]:
    """Work/s at 1 vCPU, at 2 vCPUs, and at 2 vCPUs with cpu.max = 0.5 CPU."""
    rt.run(RunRequest(["sleep", "600"], Resources(), name="w"))  # no limits: 1 vCPU
    out = {"1 vCPU, no limit": stress_rate(rt, "w")}
    rt.update("w", Resources(cpuset="0"))  # cpuset size 1 + default_vcpus 1 = 2 vCPUs
    out["2 vCPUs, no limit"] = stress_rate(rt, "w")
    rt.update("w", Resources(quota=50_000, period=100_000))
    out["2 vCPUs, cpu.max 50000/100000"] = stress_rate(rt, "w")
    rt.rm("w", force=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=8)
    n = ap.parse_args().iterations
    root = Path(tempfile.mkdtemp(prefix="cpb", dir="/tmp"))
    rt = Runtime(root, RuntimeConfig(default_maxvcpus=MAX_CPUS))
    res: dict[str, list[float]] = {
        k: [] for k in ("run api", "run cli", "add api", "remove api", "add cli", "remove cli")
    }
    try:
        for i in range(max(2, n // 3)):
            res["run api"].append(
                timed(lambda i=i: rt.run(RunRequest(["sleep", "600"], cpus(1), name=f"a{i}")))
            )
            rt.rm(f"a{i}", force=True)
            res["run cli"].append(
                timed(
                    lambda i=i: cli(
                        root,
                        "run",
                        "-d",
                        "--name",
                        f"c{i}",
                        "--max-cpus",
                        str(MAX_CPUS),
                        "--cpus",
                        "1",
                        "--",
                        "sleep",
                        "600",
                    )
                )
            )
            rt.rm(f"c{i}", force=True)
        rt.run(RunRequest(["sleep", "600"], cpus(1), name="b"))  # 2 vCPUs
        for _ in range(n):
            res["add api"].append(timed(lambda: rt.update("b", cpus(2))))  # 2 -> 3
            res["remove api"].append(timed(lambda: rt.update("b", cpus(1))))  # 3 -> 2
            res["add cli"].append(timed(lambda: cli(root, "update", "--cpus", "2", "b")))
            res["remove cli"].append(timed(lambda: cli(root, "update", "--cpus", "1", "b")))
        assert len(rt.store.load("b").plugged) == 2
        work = throughput_series(rt)
    finally:
        for name in rt.store.names():
            with contextlib.suppress(Exception):
                rt.rm(name, force=True)
        with contextlib.suppress(OSError):
            root.rmdir()
    med = {k: statistics.median(v) * 1000 for k, v in res.items()}
    print(f"{'operation':<14}{'median ms':>11}{'min ms':>9}{'samples':>9}")
    for k, v in res.items():
        print(f"{k:<14}{med[k]:>11.1f}{min(v) * 1000:>9.1f}{len(v):>9}")
    print()
    print(
        f"CLI / API   run {med['run cli'] / med['run api']:.2f}x   "
        f"+1 vCPU {med['add cli'] / med['add api']:.2f}x   "
        f"-1 vCPU {med['remove cli'] / med['remove api']:.2f}x"
    )
    print(
        f"remove / add   API {med['remove api'] / med['add api']:.2f}x   "
        f"CLI {med['remove cli'] / med['add cli']:.2f}x"
    )
    print(f"run / +1 vCPU (API) {med['run api'] / med['add api']:.1f}x")
    print()
    print("real work (stress --cpu 2, SHA-256 MiB/s inside the guest):")
    for label, rate in work.items():
        print(f"  {label:<34}{rate:>8.1f} MiB/s  ({rate / work['1 vCPU, no limit']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

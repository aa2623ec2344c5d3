"""docker with cpuplug-runc vs runc on the same daemon, and vs ``cpuplug update`` directly.

One containerd + dockerd of the bench's own (tests/harness/docker.py), with runc,
cpuplug-runc on the built-in hypervisor and, where QEMU and the guest image are
there, cpuplug-runc on QEMU registered side by side. Measured, each as medians of
one run (ratios are what to compare across machines):

* ``docker run --rm --network none IMG true``, end to end (create, boot, start, the
  process, its exit, delete);
* ``docker update`` +2 vCPUs (``--cpu-quota 100000`` -> ``300000`` per 100000 µs: 2 ->
  4 vCPUs), from the command's start until ``docker exec C nproc`` in the container
  says 4, then back to 2 (not timed); runc's ``nproc`` never changes (the host's
  CPUs), so for it only the ``docker update`` itself is timed;
* the same resize through ``cpuplug update`` on a sandbox ``cpuplug run`` made, until
  ``cpuplug exec nproc`` says 4: the cost of docker's path (client, dockerd,
  containerd, the shim, a fresh ``cpuplug-runc``) over cpuplug's own CLI.

The first grow of a VM hot-adds vCPUs; on QEMU 7.2 under TCG a shrink keeps them
plugged (offline), so later grows there only online them: each iteration is shown.

Run: ``.venv/bin/python bench/bench_docker.py [--iterations N] [--no-qemu]`` (root).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.harness.docker import (  # noqa: E402
    DEFAULT_CPUPLUG_RUNC,
    IMAGE,
    Docker,
    Runtime,
    docker_available,
    running_docker,
)

CONFIG = "default_maxvcpus = 8\n"
QUOTA_2 = ("--cpu-quota", "100000", "--cpu-period", "100000")  # 1 CPU: 1 + 1 = 2 vCPUs
QUOTA_4 = ("--cpu-quota", "300000", "--cpu-period", "100000")  # 3 CPUs: 4 vCPUs
NPROC_WAIT = 120.0


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + NPROC_WAIT
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not happen within {NPROC_WAIT:.0f} s")
        time.sleep(0.01)


def docker_nproc(docker: Docker, cid: str) -> int:
    return int(docker.ok("exec", cid, "nproc", timeout=120).stdout)


def run_rm(docker: Docker, runtime: str, n: int) -> list[float]:
    args = ("run", "--rm", "--network", "none", "--runtime", runtime, IMAGE, "true")
    return [timed(lambda: docker.ok(*args, timeout=300)) for _ in range(n)]


def docker_grow(docker: Docker, runtime: str, n: int, wait_nproc: bool) -> list[float]:
    cid = docker.ok("run", "-d", "--network", "none", "--runtime", runtime, *QUOTA_2,
                    IMAGE, "sleep", "1d", timeout=300).stdout.strip()  # fmt: skip
    times = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            docker.ok("update", *QUOTA_4, cid, timeout=120)
            if wait_nproc:
                until(lambda: docker_nproc(docker, cid) == 4, "nproc 4")
            times.append(time.perf_counter() - t0)
            docker.ok("update", *QUOTA_2, cid, timeout=120)
            if wait_nproc:
                until(lambda: docker_nproc(docker, cid) == 2, "nproc 2")
    finally:
        docker.run("rm", "-f", cid, timeout=120)
    return times


def cpuplug_grow(hypervisor: str, config: Path, n: int) -> list[float]:
    root = Path(tempfile.mkdtemp(prefix="cpb", dir="/tmp"))

    def cli(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "cpuplug", "--root", str(root), *args],
            capture_output=True, text=True, timeout=300, check=True,
        ).stdout  # fmt: skip

    try:
        cli("run", "--name", "b", "--hypervisor", hypervisor, "--config", str(config), *QUOTA_2,
            "-d", "--", "sleep", "100000")  # fmt: skip
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            cli("update", *QUOTA_4, "b")
            until(lambda: int(cli("exec", "b", "--", "nproc")) == 4, "nproc 4")
            times.append(time.perf_counter() - t0)
            cli("update", *QUOTA_2, "b")
        return times
    finally:
        subprocess.run([sys.executable, "-m", "cpuplug", "rm", "-f", "--root", str(root), "b"],
                       capture_output=True, timeout=120, check=False)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def fmt(times: list[float]) -> str:
    each = " ".join(f"{t:.2f}" for t in times)
    return f"median {statistics.median(times):6.2f} s   ({each})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--no-qemu", action="store_true")
    args = ap.parse_args()
    why = docker_available()
    if why is not None:
        raise SystemExit(f"bench: {why}")
    n = args.iterations
    qemu = not args.no_qemu and shutil.which("qemu-system-x86_64") is not None
    base = Path(tempfile.mkdtemp(prefix="cpb", dir="/tmp"))
    config = base / "config.toml"
    config.write_text(CONFIG)
    runc = shutil.which("runc")
    assert runc is not None
    runtimes = {"bench-runc": Runtime(runc)}  # "runc" is reserved in daemon.json
    hypervisors = ["builtin", *(["qemu"] if qemu else [])]
    for hv in hypervisors:
        runtimes[f"cpuplug-{hv}"] = Runtime(
            str(DEFAULT_CPUPLUG_RUNC),
            ("--hypervisor", hv, "--config", str(config), "--sandbox-root", str(base / "sb")),
        )
    results: dict[str, list[float]] = {}
    try:
        with running_docker(runtimes, record=False) as docker:
            for name in runtimes:
                count = n if name != "cpuplug-qemu" else max(1, min(n, 3))
                results[f"run --rm true  {name}"] = run_rm(docker, name, count)
                print(f"docker run --rm true   {name:16} {fmt(results[f'run --rm true  {name}'])}",
                      flush=True)  # fmt: skip
            for name in runtimes:
                count = n if name != "cpuplug-qemu" else max(1, min(n, 3))
                grow = docker_grow(docker, name, count, wait_nproc=name != "bench-runc")
                results[f"update +2  {name}"] = grow
                what = "docker update" if name == "bench-runc" else "docker update +2 to nproc"
                print(f"{what:26} {name:16} {fmt(grow)}", flush=True)
        for hv in hypervisors:
            count = n if hv != "qemu" else max(1, min(n, 3))
            results[f"cpuplug update +2  {hv}"] = cpuplug_grow(hv, config, count)
            print(f"{'cpuplug update +2 to nproc':26} {hv:16} "
                  f"{fmt(results[f'cpuplug update +2  {hv}'])}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def med(key: str) -> float:
        return statistics.median(results[key])

    print("\nratios (medians):")
    for hv in hypervisors:
        run_ratio = med(f"run --rm true  cpuplug-{hv}") / med("run --rm true  bench-runc")
        grow_ratio = med(f"update +2  cpuplug-{hv}") / med(f"cpuplug update +2  {hv}")
        print(f"  docker run --rm true, cpuplug-{hv} / runc: {run_ratio:.1f}x")
        print(f"  +2 vCPUs to nproc, docker / cpuplug update ({hv}): {grow_ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

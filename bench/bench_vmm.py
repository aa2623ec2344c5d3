"""VMM benchmark: start-up, QMP round trips, plug → running, threads and RSS per mode.

Run: ``.venv/bin/python bench/bench_vmm.py [--reps N]``

Every number is printed as a ratio to a baseline measured in the same run on the
same machine, so results compare across hosts:

* VMM start → QMP ready, over a bare ``python -c pass`` start;
* ``device_add`` round trip, over a ``query-status`` round trip on the same client;
* plug → vCPU running guest code (device_add, then CPU_ON from the guest until
  AFFINITY_INFO says ON), over a probe round trip (one guest-side no-op);
* threads and RSS of an idle VMM, online/offline mode over ACPI mode.

Each is measured for maxcpus 8 and 512 (medians; absolute milliseconds follow in
brackets for context only).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from qemu.qmp import QMPClient  # noqa: E402
from tests.harness.vmm_test_kernel import VmmProcess, running_vmm  # noqa: E402

from cpuplug.acpi.virt import mpidr  # noqa: E402
from cpuplug.psci_abi import AFFINITY_INFO_64, CPU_ON_64  # noqa: E402

CPUHP_FLAGS = 0x090C_0004
CPUHP_SELECTOR = 0x090C_0000


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def bare_python_start(reps: int) -> float:
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        samples.append(time.perf_counter() - t0)
    return median_ms(samples)


async def ready(process: VmmProcess) -> QMPClient:
    client = QMPClient("bench")
    await client.connect(process.qmp_path)
    return client


async def negotiate(process: VmmProcess) -> None:
    client = await ready(process)
    await client.disconnect()


def start_to_ready(maxcpus: int, reps: int, kernel: str) -> float:
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        with running_vmm(f"cpus=1,maxcpus={maxcpus}", prefix="bvmm", kernel=kernel) as process:
            asyncio.run(negotiate(process))
            samples.append(time.perf_counter() - t0)
    return median_ms(samples)


def round_trips(maxcpus: int, reps: int) -> dict[str, float]:
    """query-status RTT, device_add RTT, probe RTT, plug → running."""
    results: dict[str, list[float]] = {"status": [], "add": [], "probe": [], "running": []}

    async def run(process: VmmProcess) -> None:
        probe = process.probe()
        client = await ready(process)
        for i in range(reps):
            core = 1 + i % (maxcpus - 1)
            t0 = time.perf_counter()
            await client.execute("query-status")
            results["status"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            probe.op("irqs")
            results["probe"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            await client.execute(
                "device_add", {"driver": "max-arm-cpu", "id": f"b{core}", "core-id": core}
            )
            t1 = time.perf_counter()
            assert probe.hvc(CPU_ON_64, mpidr(core), 0, 0) == 0
            while probe.hvc(AFFINITY_INFO_64, mpidr(core), 0) != 0:
                pass
            t2 = time.perf_counter()
            results["add"].append(t1 - t0)
            results["running"].append(t2 - t0)

            # Remove it again the way the guest's AML would, so the slot is reusable.
            await client.execute("device_del", {"id": f"b{core}"})
            probe.store(CPUHP_SELECTOR, 4, core)
            probe.store(CPUHP_FLAGS, 1, 0x06)
            probe.store(CPUHP_FLAGS, 1, 0x04)
            probe.store(CPUHP_FLAGS, 1, 0x08)
            while True:
                event = await asyncio.wait_for(client.events.get(), 10)
                if event["event"] == "DEVICE_DELETED":
                    break
        await client.disconnect()

    with running_vmm(f"cpus=1,maxcpus={maxcpus}", prefix="bvmm") as process:
        asyncio.run(run(process))
    return {name: median_ms(samples) for name, samples in results.items()}


def idle_footprint(maxcpus: int, mode: str) -> tuple[int, int]:
    """Threads and RSS (KiB) of an idle VMM with one plugged vCPU (``--kernel none``)."""
    smp = f"cpus=1,maxcpus={maxcpus}"
    with running_vmm(smp, prefix="bvmm", mode=mode, kernel="none") as process:
        threads = len(process.task_ids())
        status = Path(f"/proc/{process.pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        return threads, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    reps = max(3, args.reps)

    python_ms = bare_python_start(reps)
    print(f"baseline: bare python start [{python_ms:.1f} ms]")
    for maxcpus in (8, 512):
        print(f"\nmaxcpus={maxcpus}")
        start_ms = start_to_ready(maxcpus, max(3, reps // 3), "none")
        print(f"  VMM start -> QMP ready        {start_ms / python_ms:7.2f} x bare python start"
              f"  [{start_ms:.1f} ms]")  # fmt: skip
        rt = round_trips(maxcpus, reps)
        print(f"  device_add round trip        {rt['add'] / rt['status']:7.2f} x query-status"
              f"  [{rt['add']:.2f} ms vs {rt['status']:.2f} ms]")  # fmt: skip
        print(f"  plug -> vCPU running guest   {rt['running'] / rt['probe']:7.2f} x probe RTT"
              f"  [{rt['running']:.2f} ms vs {rt['probe']:.2f} ms]")  # fmt: skip
        acpi_threads, acpi_rss = idle_footprint(maxcpus, "acpi")
        oo_threads, oo_rss = idle_footprint(maxcpus, "online-offline")
        print(f"  idle threads online-offline  {oo_threads / acpi_threads:7.2f} x acpi"
              f"  [{oo_threads} vs {acpi_threads}]")  # fmt: skip
        print(f"  idle RSS online-offline      {oo_rss / acpi_rss:7.2f} x acpi"
              f"  [{oo_rss} KiB vs {acpi_rss} KiB]")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

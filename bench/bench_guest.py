"""Guest benchmark: hot-add → CPU online through the agent, hot-remove, stress scaling.

Run: ``.venv/bin/python bench/bench_guest.py [--reps N] [--maxcpus 8 64]``

The real VMM process boots the real guest kernel (``cpuplug.guest.kernel:start``);
the host side is ``qemu.qmp`` plus the agent protocol, exactly as the runtime
drives them. For each ``--maxcpus`` (8 and 64 by default) it measures, as medians
over ``--reps`` runs:

* ``device_add`` → ``ACPI_DEVICE_OST{1, 0}`` (the guest registered the CPU);
* ``device_add`` → agent ``OnlineCPUMem`` returned with the CPU online — Kata's
  order: ``OnlineCPUMem`` is sent as soon as ``device_add`` returns, and the
  agent's retries cover the time until the ACPI scan registered the CPU;
* ``device_del`` → ``DEVICE_DELETED`` (the guest offlined and ejected it);
* ``device_del`` → the final ``ACPI_DEVICE_OST{3, 0}`` (the guest reported the
  removal done, after the eject).

Each is printed as a ratio to an agent ``GuestDetails`` round trip measured in the
same run (absolute milliseconds follow for context), next to the real QEMU 7.2 +
Linux 6.1 figures of ``tests/data/README.md`` (reference numbers from
another stack and host, not a same-run ratio). Batches of k vCPUs are
``bench/bench_batch.py``'s.

Then ``stress --cpu 2`` throughput inside the guest with 1 online vCPU and with 2:
the ratio shows that hashing work (which releases the GIL) really runs in parallel
on the vCPU threads, up to the host's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.harness.hostload import host_hash_rate  # noqa: E402
from tests.harness.qmp_helpers import next_event, qmp_connect  # noqa: E402
from tests.harness.vmm_test_kernel import VmmProcess, running_vmm  # noqa: E402

from cpuplug import agent_protocol as ap  # noqa: E402
from cpuplug.runtime.agent_client import AgentClient  # noqa: E402

KERNEL = "cpuplug.guest.kernel:start"
REAL_STACK_MS = {"ost": 21.5, "online": 196.6, "deleted": 61.3}  # tests/data/README.md


class Agent(AgentClient):
    """The runtime's agent client, connected at once, 60 s per call."""

    def __init__(self, path: str) -> None:
        super().__init__(path, timeout=60)
        self.connect()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def stamp(event: Any) -> float:
    """The VMM's wall-clock timestamp of a QMP event, in seconds."""
    ts = event["timestamp"]
    return float(ts["seconds"]) + float(ts["microseconds"]) / 1e6


def hotplug(maxcpus: int, reps: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {
        name: [] for name in ("rtt", "ost", "online", "deleted", "final_ost")
    }

    async def run(process: VmmProcess) -> None:
        client = await qmp_connect(process.qmp_path, "bench-guest")
        agent = Agent(process.agent_path)
        try:
            agent.call(ap.Method.GUEST_DETAILS, {})  # the guest has booted and serves
            for i in range(reps):
                core = 1 + i % (maxcpus - 1)
                t0 = time.perf_counter()
                agent.call(ap.Method.GUEST_DETAILS, {})
                samples["rtt"].append(time.perf_counter() - t0)

                wall0, t0 = time.time(), time.perf_counter()
                await client.execute(
                    "device_add", {"driver": "max-arm-cpu", "id": f"cpu-{core}", "core-id": core}
                )
                online = agent.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 2, "cpu_only": True})
                samples["online"].append(time.perf_counter() - t0)
                assert core in online["online"], online
                # timed by the event's own timestamp: the blocking agent call above
                # kept the event loop from reading it on arrival
                ost = await next_event(
                    client, "ACPI_DEVICE_OST", pred=lambda d: d["info"]["source"] == 1
                )
                samples["ost"].append(stamp(ost) - wall0)

                # both removal times by the VMM's event stamps, so they compare:
                # the eject (and so DEVICE_DELETED) comes before the guest's _OST(3, 0)
                wall0 = time.time()
                await client.execute("device_del", {"id": f"cpu-{core}"})
                deleted = await next_event(client, "DEVICE_DELETED", timeout=20)
                samples["deleted"].append(stamp(deleted) - wall0)
                final = await next_event(
                    client,
                    "ACPI_DEVICE_OST",
                    pred=lambda d: d["info"]["source"] == 3 and d["info"]["status"] == 0,
                )
                samples["final_ost"].append(stamp(final) - wall0)
        finally:
            agent.close()
            await client.disconnect()

    with running_vmm(f"cpus=1,maxcpus={maxcpus}", prefix="bguest", kernel=KERNEL) as process:
        asyncio.run(run(process))
    return {name: median_ms(values) for name, values in samples.items()}


def stress_rate(agent: Agent, seconds: float) -> float:
    out = agent.call(
        ap.Method.EXEC_PROCESS,
        {"container_id": "bench", "cmd": ["stress", "--cpu", "2", "--timeout", str(seconds)]},
    )
    m = re.search(r"\(([\d.]+) MiB/s\)", out["stdout"])
    assert m is not None, out
    return float(m.group(1))


def scaling(seconds: float) -> tuple[float, float]:
    async def run(process: VmmProcess) -> tuple[float, float]:
        client = await qmp_connect(process.qmp_path, "bench-guest")
        agent = Agent(process.agent_path)
        try:
            agent.call(ap.Method.CREATE_CONTAINER, {"container_id": "bench", "cmd": []})
            one = stress_rate(agent, seconds)
            await client.execute("device_add", {"driver": "max-arm-cpu", "id": "c1", "core-id": 1})
            agent.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 2, "cpu_only": True})
            two = stress_rate(agent, seconds)
            return one, two
        finally:
            agent.close()
            await client.disconnect()

    with running_vmm("cpus=1,maxcpus=2", prefix="bguest", kernel=KERNEL) as process:
        return asyncio.run(run(process))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--maxcpus", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--stress-seconds", type=float, default=2.0)
    args = parser.parse_args()

    print(f"host CPUs: {os.cpu_count()}; reps: {args.reps}")
    print("ratios to an agent GuestDetails round trip in the same run [absolute ms];")
    print("real stack = QEMU 7.2 TCG + Linux 6.1 x86 (tests/data/README.md), reference only\n")
    print(f"{'maxcpus':>7} {'metric':<34} {'ratio':>8} {'[ms]':>9} {'real stack ms':>14}")
    for maxcpus in args.maxcpus:
        r = hotplug(maxcpus, args.reps)
        rtt = r["rtt"]
        print(f"{maxcpus:>7} {'agent GuestDetails RTT':<34} {1.0:>8.1f} {rtt:>9.2f} {'':>14}")
        for key, label in (
            ("ost", "device_add -> ACPI_DEVICE_OST{1,0}"),
            ("online", "device_add -> OnlineCPUMem online"),
            ("deleted", "device_del -> DEVICE_DELETED"),
            ("final_ost", "device_del -> ACPI_DEVICE_OST{3,0}"),
        ):
            real = f"{REAL_STACK_MS[key]:>14.1f}" if key in REAL_STACK_MS else f"{'-':>14}"
            print(f"{maxcpus:>7} {label:<34} {r[key] / rtt:>8.1f} {r[key]:>9.2f} {real}")
    one, two = scaling(args.stress_seconds)
    h1, h2 = host_hash_rate(1, args.stress_seconds), host_hash_rate(2, args.stress_seconds)
    print(
        f"\nstress --cpu 2 in the guest: {one:.0f} MiB/s on 1 vCPU, {two:.0f} MiB/s on 2;"
        f" 2 vCPUs / 1 vCPU = {two / one:.2f}"
    )
    print(
        f"same hashing on 1 vs 2 plain host threads: {h1:.0f} vs {h2:.0f} MiB/s = {h2 / h1:.2f}"
        f" (host has {os.cpu_count()} CPUs; guest scaling / host scaling ="
        f" {(two / one) / (h2 / h1):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hot-add and hot-remove latency through the whole stack, next to the real stack's figures.

Starts a real ``cpuplug vmm`` process (whose default kernel is the guest model),
drives it with the official ``qemu.qmp`` client and the guest agent, and measures
per run (medians over ``--runs``):

* ``device_add`` → ``ACPI_DEVICE_OST {1, 0}`` (the guest registered the CPU);
* ``device_add`` → CPU online in the guest (agent ``OnlineCPUMem`` returned);
* ``device_del`` → ``DEVICE_DELETED`` (the guest offlined and ejected it);
* ``device_del`` → the final ``ACPI_DEVICE_OST {3, 0}``.

The reference numbers are QEMU 7.2 (TCG) + Debian 6.1 on x86, from
``../shared/vectors/README.md``; they are printed as a reference, not as a
same-run ratio (different machines, different emulator).

    .venv/bin/python bench/bench_guest_hotplug.py [--runs 30] [--maxcpus 8 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from qemu.qmp import ConnectError, QMPClient

from cpuplug import agent_protocol as ap

REFERENCE_MS = {
    "add_to_ost": 21.5,
    "add_to_online": 196.6,
    "del_to_deleted": 61.3,
}
"""QEMU 7.2 TCG + Linux 6.1 guest, medians of 15 (vectors/README.md)."""


class Stack:
    def __init__(self, workdir: str, maxcpus: int) -> None:
        self.qmp_path = os.path.join(workdir, "qmp.sock")
        self.agent_path = os.path.join(workdir, "agent.sock")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cpuplug", "vmm", "--smp", f"cpus=1,maxcpus={maxcpus}",
             "--qmp", f"unix:{self.qmp_path}", "--agent", f"unix:{self.agent_path}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.qmp = QMPClient("bench")
        self.sock: socket.socket | None = None
        self.req = 0

    async def connect(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise SystemExit("cpuplug vmm exited during start-up")
            try:
                if os.path.exists(self.agent_path):
                    await self.qmp.connect(self.qmp_path)
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.connect(self.agent_path)
                    self.sock = sock
                    self.agent(ap.Method.GUEST_DETAILS, {})
                    return
            except (ConnectError, ConnectionRefusedError, FileNotFoundError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit("cpuplug vmm did not come up")
            await asyncio.sleep(0.01)

    def agent(self, method: ap.Method, params: dict[str, Any]) -> Any:
        assert self.sock is not None
        self.req += 1
        return ap.call(self.sock, method, params, timeout=30, req_id=self.req)

    async def event(self, name: str, pred: Any = None) -> dict[str, Any]:
        async with asyncio.timeout(30):
            while True:
                ev = await self.qmp.events.get()
                if ev["event"] == name and (pred is None or pred(ev["data"])):
                    data: dict[str, Any] = ev["data"]
                    return data

    async def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        try:
            await asyncio.wait_for(self.qmp.execute("quit"), 5)
            await self.qmp.disconnect()
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ost_is(source: int, status: int) -> Any:
    return lambda d: d["info"]["source"] == source and d["info"]["status"] == status


async def measure(maxcpus: int, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {
        "add_to_ost": [], "add_to_online": [], "del_to_deleted": [], "del_to_final_ost": []
    }
    with tempfile.TemporaryDirectory() as workdir:
        stack = Stack(workdir, maxcpus)
        try:
            await stack.connect()
            for run in range(runs):
                slot = 1 + run % (maxcpus - 1)
                dev = f"cpu-{slot}"
                t0 = time.perf_counter()
                await stack.qmp.execute(
                    "device_add", {"driver": "max-arm-cpu", "id": dev, "core-id": slot}
                )
                await stack.event("ACPI_DEVICE_OST", ost_is(1, 0))
                out["add_to_ost"].append(time.perf_counter() - t0)
                online = stack.agent(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 2, "cpu_only": True})
                out["add_to_online"].append(time.perf_counter() - t0)
                assert slot in online["online"], online
                t1 = time.perf_counter()
                await stack.qmp.execute("device_del", {"id": dev})
                await stack.event("DEVICE_DELETED")
                out["del_to_deleted"].append(time.perf_counter() - t1)
                await stack.event("ACPI_DEVICE_OST", ost_is(3, 0))
                out["del_to_final_ost"].append(time.perf_counter() - t1)
        finally:
            await stack.close()
    return out


async def measure_batch(maxcpus: int, batch: int, runs: int) -> dict[str, list[float]]:
    """``batch`` device_adds back to back → all registered → all online → all removed."""
    out: dict[str, list[float]] = {"batch_add_to_osts": [], "batch_add_to_online": [],
                                   "batch_del_to_deleted": []}
    with tempfile.TemporaryDirectory() as workdir:
        stack = Stack(workdir, maxcpus)
        try:
            await stack.connect()
            for _ in range(runs):
                slots = range(1, batch + 1)
                t0 = time.perf_counter()
                for slot in slots:
                    await stack.qmp.execute(
                        "device_add", {"driver": "max-arm-cpu", "id": f"cpu-{slot}",
                                       "core-id": slot}
                    )
                for _slot in slots:
                    await stack.event("ACPI_DEVICE_OST", ost_is(1, 0))
                out["batch_add_to_osts"].append(time.perf_counter() - t0)
                stack.agent(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": batch + 1, "cpu_only": True})
                out["batch_add_to_online"].append(time.perf_counter() - t0)
                t1 = time.perf_counter()
                for slot in reversed(slots):
                    await stack.qmp.execute("device_del", {"id": f"cpu-{slot}"})
                deleted = finals = 0
                async with asyncio.timeout(60):
                    while deleted < batch or finals < batch:
                        ev = await stack.qmp.events.get()
                        if ev["event"] == "DEVICE_DELETED":
                            deleted += 1
                            if deleted == batch:
                                out["batch_del_to_deleted"].append(time.perf_counter() - t1)
                        elif ev["event"] == "ACPI_DEVICE_OST" and ost_is(3, 0)(ev["data"]):
                            finals += 1
        finally:
            await stack.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--maxcpus", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 4, 16, 63],
                        help="batch sizes measured at maxcpus 64 (none: skip)")
    args = parser.parse_args()
    print(f"guest hotplug latency, medians of {args.runs} runs (ms); reference = QEMU 7.2 TCG")
    print(f"{'maxcpus':>7}  {'metric':<18} {'cpuplug':>9} {'reference':>10} {'ref/ours':>9}")
    for maxcpus in args.maxcpus:
        results = asyncio.run(measure(maxcpus, args.runs))
        for metric, samples in results.items():
            ms = statistics.median(samples) * 1000
            ref = REFERENCE_MS.get(metric)
            ref_s = f"{ref:10.1f}" if ref is not None else f"{'-':>10}"
            ratio = f"{ref / ms:8.1f}x" if ref is not None else f"{'-':>9}"
            print(f"{maxcpus:>7}  {metric:<18} {ms:9.2f} {ref_s} {ratio}")
    if args.batch:
        print(f"\nbatches at maxcpus 64, medians of {max(3, args.runs // 5)} runs (ms)")
        print(f"{'k':>4}  {'all OST(1,0)':>12} {'all online':>11} {'all deleted':>12}"
              f" {'per vCPU (add→online)':>22}")
        base: float | None = None
        for k in args.batch:
            r = asyncio.run(measure_batch(64, k, max(3, args.runs // 5)))
            osts, onl, dele = (statistics.median(r[m]) * 1000 for m in (
                "batch_add_to_osts", "batch_add_to_online", "batch_del_to_deleted"))
            base = onl if base is None else base
            print(f"{k:>4}  {osts:12.2f} {onl:11.2f} {dele:12.2f} {onl / k:16.2f}"
                  f" ({onl / base:4.1f}x k=1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

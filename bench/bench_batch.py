"""Batch hotplug: k vCPUs added back to back, then removed, and how the cost grows with k.

Run: ``.venv/bin/python bench/bench_batch.py [--k 1 2 4 ... 255] [--reps N]``

docs/contract.md §10 asks for the cost of a batch of k vCPUs (k = 1..255) and how it grows
with k. One real ``cpuplug vmm`` process (``--smp cpus=1,maxcpus=256``) boots the
real guest kernel; the host side is ``qemu.qmp`` plus the agent protocol, as the
runtime drives them. For each k, ``--reps`` times (medians printed):

* ``device_add`` for cores 1..k back to back (each waits for its QMP reply, as a
  runtime does; **issue** = the k-th reply received), then
  - **ost**: the k-th ``ACPI_DEVICE_OST{source 1, status 0}`` (VMM's event stamp);
  - **enabled**: the guest's ``enabled`` mask holds all k — the guest-stamped k-th
    ``CpuRegistered`` event (emitted right after the mask bit is set), confirmed
    by an agent ``GuestDetails`` whose ``enabled`` lists them all;
  - **online**: one ``OnlineCPUMem{nb_cpus: k + 1}`` sent once all k are
    registered has returned with all k online (host clock);
* ``device_del`` for all k back to back, then
  - **deleted**: the k-th ``DEVICE_DELETED`` (VMM's event stamp). The next batch
    starts only after the guest's final ``_OST(3, 0)`` for every one of them.

All times are from the first ``device_add`` (resp. ``device_del``) being sent, on
the host's wall clock (the VMM, the guest and this script share it). Per-vCPU
cost is time / k; "x k=1" is the ratio to k = 1 in the same run, so a linear
cost shows as x k.

**One scan or several?** The guest exposes no per-interrupt counter, so the
script reads what it does expose: each CPU's Device Check either rescans the
processor container (registering *every* processor whose ``_STA`` became
Enabled, logged "ACPI: CPUn has been hot-added") or finds its CPU already
registered ("Already enumerated" in the kernel log, read from the console
file). "rescans" = Device Checks that registered something = groups of
``CpuRegistered`` events between two ``OstSent``; they are cross-checked
against the console. A CSCN pass queues every vCPU with an insert pending and
notifies only after its loop, so all CPUs notified by one pass are Enabled
before the first of its Device Checks runs: one pass gives exactly one rescan
group. Hence rescans is a lower bound on the CSCN passes (GED events handled)
for the batch, and rescans = 1 means the batch was registered in one go.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from qemu.qmp import QMPClient  # noqa: E402
from tests.harness.vmm_test_kernel import VmmProcess  # noqa: E402

from bench_guest import KERNEL, Agent, stamp  # noqa: E402
from cpuplug import agent_protocol as ap  # noqa: E402

MAXCPUS = 256
DEFAULT_K = (1, 2, 4, 8, 16, 32, 64, 128, 255)
METRICS = ("ost", "enabled", "online", "deleted")


@dataclass
class Batch:
    """One batch's times (seconds from the first request) and its scan shape."""

    k: int
    times: dict[str, float] = field(default_factory=dict)
    issue: float = 0.0  # all k device_add replies received
    rescans: int = 0  # Device Checks that registered CPUs (from the agent's events)
    group_sizes: list[int] = field(default_factory=list)
    already_enumerated: int = 0  # from the console
    hot_added: int = 0  # from the console


class AgentEvents:
    """A ``SubscribeEvents`` connection read by one thread into a queue.

    A separate connection from the request one, so events are stamped by the
    guest and never wait behind a blocking request.
    """

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        ap.call(self.sock, ap.Method.SUBSCRIBE_EVENTS, {}, timeout=30, req_id=1)
        self.queue: queue.Queue[ap.Event | None] = queue.Queue()
        self.thread = threading.Thread(target=self._read, name="agent-events", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                msg = ap.parse_incoming(ap.recv_message(self.sock, None))
                if isinstance(msg, ap.Event):
                    self.queue.put(msg)
        except (ap.ProtocolError, OSError):
            pass  # closed by close() or by the VMM going away
        finally:
            self.queue.put(None)

    def get(self, deadline: float) -> ap.Event:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for agent events")
        try:
            event = self.queue.get(timeout=remaining)
        except queue.Empty:
            raise TimeoutError("timed out waiting for agent events") from None
        if event is None:
            raise ConnectionError("agent event stream ended")
        return event

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already closed by the VMM
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        self.sock.close()


def is_ost(data: dict[str, Any], source: int, status: int) -> bool:
    info = data["info"]
    return bool(info["source"] == source and info["status"] == status)


async def qmp_events(
    client: QMPClient, want: int, match: Any, timeout: float
) -> list[dict[str, Any]]:
    """The next ``want`` QMP events for which ``match(event)`` holds (others are dropped)."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(got) < want:
            event = await client.events.get()
            if match(event):
                got.append(dict(event))
    return got


class Bench:
    def __init__(self, workdir: str) -> None:
        self.process = VmmProcess(workdir, f"cpus=1,maxcpus={MAXCPUS}", kernel=KERNEL)
        self.client = QMPClient("bench-batch")
        self.agent: Agent | None = None
        self.events: AgentEvents | None = None
        self.console_at = 0

    async def start(self) -> float:
        t0 = time.perf_counter()
        self.process.start()
        await self.client.connect(self.process.qmp_path)
        self.agent = Agent(self.process.agent_path)
        self.agent.call(ap.Method.GUEST_DETAILS, {})  # booted and serving
        self.events = AgentEvents(self.process.agent_path)
        return time.perf_counter() - t0

    async def stop(self) -> None:
        if self.events is not None:
            self.events.close()
        if self.agent is not None:
            self.agent.close()
        await self.client.disconnect()
        self.process.stop()

    def console_since_last(self) -> str:
        with open(self.process.console_path, "rb") as f:
            f.seek(self.console_at)
            data = f.read()
        self.console_at += len(data)
        return data.decode(errors="replace")

    async def batch(self, k: int) -> Batch:
        assert self.agent is not None and self.events is not None
        agent, events = self.agent, self.events
        slots = set(range(1, k + 1))
        out = Batch(k)
        limit = 30 + 0.5 * k  # generous: a stuck batch fails instead of hanging
        self.console_since_last()

        wall0, t0 = time.time(), time.perf_counter()
        for slot in sorted(slots):
            await self.client.execute(
                "device_add", {"driver": "max-arm-cpu", "id": f"cpu-{slot}", "core-id": slot}
            )
        out.issue = time.perf_counter() - t0

        osts = await qmp_events(
            self.client,
            k,
            lambda e: e["event"] == "ACPI_DEVICE_OST" and is_ost(e["data"], 1, 0),
            limit,
        )
        out.times["ost"] = max(stamp(e) for e in osts) - wall0
        assert {int(e["data"]["info"]["slot"]) for e in osts} == slots, osts

        # Registration order as the guest produced it: groups of CpuRegistered
        # between the _OST(1, ...) notes of the Device Checks.
        deadline = time.monotonic() + limit
        registered: dict[int, float] = {}
        checks = 0
        group = 0
        while len(registered) < k or checks < k:
            ev = events.get(deadline)
            if ev.name == ap.EventName.CPU_REGISTERED and ev.data["cpu"] in slots:
                registered[ev.data["cpu"]] = ev.timestamp
                group += 1
            elif ev.name == ap.EventName.OST_SENT and ev.data["source"] == 1:
                checks += 1
                if group:
                    out.group_sizes.append(group)
                    group = 0
        out.rescans = len(out.group_sizes)
        out.times["enabled"] = max(registered.values()) - wall0
        details = agent.call(ap.Method.GUEST_DETAILS, {})
        assert slots <= ap.parse_cpu_list(details["enabled"]), details

        online = agent.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": k + 1, "cpu_only": True})
        out.times["online"] = time.perf_counter() - t0
        assert slots <= set(online["online"]), online

        log = self.console_since_last()
        out.hot_added = len(re.findall(r"has been hot-added", log))
        out.already_enumerated = log.count("Already enumerated")

        wall1 = time.time()
        for slot in sorted(slots):
            await self.client.execute("device_del", {"id": f"cpu-{slot}"})
        gone = await qmp_events(self.client, 2 * k, lambda e: _removal(e, slots), limit)
        deleted = [e for e in gone if e["event"] == "DEVICE_DELETED"]
        out.times["deleted"] = max(stamp(e) for e in deleted) - wall1
        assert {e["data"]["device"] for e in deleted} == {f"cpu-{s}" for s in slots}, gone
        # the agent stream has every removal too before the next batch reads it
        seen = 0
        while seen < k:
            ev = events.get(deadline + limit)
            if ev.name == ap.EventName.OST_SENT and ev.data["source"] == 3:
                seen += ev.data["status"] == 0
        return out


def _removal(event: dict[str, Any], slots: set[int]) -> bool:
    if event["event"] == "DEVICE_DELETED":
        return True
    return event["event"] == "ACPI_DEVICE_OST" and is_ost(event["data"], 3, 0)


def fmt(ms: float) -> str:
    return f"{ms:9.1f}" if ms >= 100 else f"{ms:9.2f}"


async def run(ks: list[int], reps: int) -> tuple[float, dict[int, list[Batch]]]:
    workdir = tempfile.mkdtemp(prefix="bbatch", dir="/tmp")
    bench = Bench(workdir)
    results: dict[int, list[Batch]] = {}
    try:
        boot = await bench.start()
        for k in ks:
            results[k] = [await bench.batch(k) for _ in range(reps)]
            sys.stderr.write(f"k={k} done\n")
    finally:
        await bench.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return boot, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--k",
        type=int,
        nargs="+",
        default=list(DEFAULT_K),
        help=f"batch sizes, 1..{MAXCPUS - 1} (default: %(default)s)",
    )
    parser.add_argument("--reps", type=int, default=5, help="runs per k (median printed)")
    args = parser.parse_args()
    if any(not 1 <= k < MAXCPUS for k in args.k) or args.reps < 1:
        parser.error(f"k must be in 1..{MAXCPUS - 1} and reps >= 1")

    t_all = time.perf_counter()
    boot, results = asyncio.run(run(args.k, args.reps))
    med = {
        k: {m: statistics.median(b.times[m] for b in runs) * 1000 for m in METRICS}
        for k, runs in results.items()
    }
    issue = {k: statistics.median(b.issue for b in runs) * 1000 for k, runs in results.items()}
    base_k = 1 if 1 in med else min(med)

    print(
        f"host CPUs: {os.cpu_count()}; maxcpus {MAXCPUS}; reps {args.reps} (medians);"
        f" VMM start + guest boot {boot:.2f} s"
    )
    print(
        "ms from the first device_add (issue, ost, enabled, online)"
        " / from the first device_del (deleted)\n"
    )
    print(f"{'k':>4} {'issue':>9} {'ost':>9} {'enabled':>9} {'online':>9} {'deleted':>9}")
    for k in med:
        print(f"{k:>4} {fmt(issue[k])}" + "".join(f" {fmt(med[k][m])}" for m in METRICS))

    print(f"\nper vCPU (ms) and ratio to k={base_k} (a linear cost grows x k)")
    print(f"{'k':>4}" + "".join(f" {m + '/vCPU':>13} {'x k=' + str(base_k):>7}" for m in METRICS))
    for k in med:
        row = f"{k:>4}"
        for m in METRICS:
            row += f" {med[k][m] / k:13.2f} {med[k][m] / med[base_k][m]:7.1f}"
        print(row)

    print(
        "\nscan shape: rescans = Device Checks that registered CPUs (groups of CpuRegistered"
        " events), median [min..max] over the reps;\n'Already enumerated' Device Checks from"
        " the console; the two sources agree when rescans + AE = k and hot-added = k"
    )
    print(f"{'k':>4} {'rescans':>8} {'[min..max]':>11} {'AE':>6} {'largest group':>14}  agree")
    for k, runs in results.items():
        rescans = [b.rescans for b in runs]
        agree = all(b.rescans + b.already_enumerated == k and b.hot_added == k for b in runs)
        print(
            f"{k:>4} {statistics.median(rescans):8.0f} {f'[{min(rescans)}..{max(rescans)}]':>11}"
            f" {statistics.median(b.already_enumerated for b in runs):6.0f}"
            f" {statistics.median(max(b.group_sizes) for b in runs):14.0f}"
            f"  {'yes' if agree else 'NO'}"
        )
    print(f"\nwhole run {time.perf_counter() - t_all:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CSCN with no event pending: our AML interpreter against ACPICA's acpiexec.

For maxcpus 8, 64 and 512 this builds our DSDT (``cpuplug.acpi.dsdt.build_dsdt``),
then, in one run:

* ours: ``\\_SB.CPUS.CSCN`` evaluated N times by :class:`cpuplug.acpi.interp.Interpreter`
  with regions behind (a) RAM filled with zeros, exactly what acpiexec simulates, and
  (b) the VMM's real :class:`CpuHotplugBlock` behind an MMIO adapter;
* acpiexec: the same table, ``evaluate \\_SB.CPUS.CSCN`` N times through its prompt,
  minus a baseline run that only loads the table and quits (startup subtracted).
  ``-dt`` turns off acpiexec's allocation tracking, its fastest setting.

Both sides are timed in CPU seconds (acpiexec's prompt sleeps between input lines,
which wall time would count), best of R runs. acpiexec's per-call time includes
printing the result and its debugger's command parsing; ours includes the public
``evaluate`` path (name lookup, argument conversion, Notify delivery).
It prints per-call times and the ratio ours / acpiexec (below 1 = we are faster).

Usage: ``.venv/bin/python bench/bench_cscn.py [--calls N] [--repeat R]``
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpuplug.acpi import virt
from cpuplug.acpi.dsdt import build_dsdt
from cpuplug.acpi.interp import Interpreter, RegionHandler
from cpuplug.vmm.cpuhp import CpuHotplugBlock

METHOD = "\\_SB.CPUS.CSCN"


class ZeroRam:
    """acpiexec's region simulation with fill 0: bytes read 0 until written."""

    def __init__(self) -> None:
        self.mem: dict[int, int] = {}

    def read(self, addr: int, width_bits: int) -> int:
        return int.from_bytes(
            bytes(self.mem.get(addr + i, 0) for i in range(width_bits // 8)), "little"
        )

    def write(self, addr: int, width_bits: int, value: int) -> None:
        for i, byte in enumerate(value.to_bytes(width_bits // 8, "little")):
            self.mem[addr + i] = byte


class BlockMmio:
    """The guest's view of the hotplug block: physical address -> register offset."""

    def __init__(self, block: CpuHotplugBlock) -> None:
        self.block = block

    def read(self, addr: int, width_bits: int) -> int:
        off = addr - virt.CPUHP_BASE
        return self.block.read(off, width_bits // 8) if 0 <= off < CpuHotplugBlock.SIZE else 0

    def write(self, addr: int, width_bits: int, value: int) -> None:
        off = addr - virt.CPUHP_BASE
        if 0 <= off < CpuHotplugBlock.SIZE:
            self.block.write(off, width_bits // 8, value)


def time_ours(table: bytes, handler: RegionHandler, calls: int, repeat: int) -> float:
    """Best-of-``repeat`` CPU seconds per call (process time, like acpiexec's)."""
    it = Interpreter()
    it.load(table)
    it.map_region("SystemMemory", handler)
    it.evaluate(METHOD)  # compile once, as any first call does
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(calls):
            it.evaluate(METHOD)
        best = min(best, (time.process_time() - start) / calls)
    return best


def _run_acpiexec(acpiexec: str, path: Path, calls: int) -> float:
    """CPU seconds (user + system) acpiexec spent: its prompt idles between input
    lines, so wall time would charge it for sleeping."""
    script = f"evaluate {METHOD}\n" * calls + "quit\n"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [acpiexec, "-dt", str(path)],
        input=script,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    elapsed = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    done = proc.stdout.count(f"Evaluating {METHOD}")
    if done != calls or "failed with status" in proc.stdout:
        raise SystemExit(
            f"acpiexec did not evaluate {METHOD} {calls} times:\n{proc.stdout[-2000:]}"
        )
    return elapsed


def time_acpiexec(acpiexec: str, table: bytes, calls: int, repeat: int) -> float:
    """Seconds per call: (N calls - load-and-quit baseline) / N, best of ``repeat``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "DSDT.dat"
        path.write_bytes(table)
        base = min(_run_acpiexec(acpiexec, path, 0) for _ in range(repeat))
        full = min(_run_acpiexec(acpiexec, path, calls) for _ in range(repeat))
    return max(full - base, 0.0) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="CSCN evaluations per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    args = parser.parse_args(argv)
    acpiexec = shutil.which("acpiexec")
    if acpiexec is None:
        print("acpiexec not installed (apt-get install acpica-tools)", file=sys.stderr)
        return 1
    print(f"CSCN, no event pending; {args.calls} calls, best of {args.repeat}")
    header = (
        f"{'maxcpus':>7} {'DSDT':>7} {'ours/RAM':>10} {'ours/block':>11} "
        f"{'acpiexec':>10} {'ratio RAM':>10} {'ratio block':>12}"
    )
    print(header)
    ratios = []
    for maxcpus in (8, 64, 512):
        table = build_dsdt(virt.MachineConfig(cpus=1, maxcpus=maxcpus))
        block = CpuHotplugBlock([virt.mpidr(i) for i in range(maxcpus)])
        block.plug(0, None, hotplugged=False)
        ours_ram = time_ours(table, ZeroRam(), args.calls, args.repeat)
        ours_block = time_ours(table, BlockMmio(block), args.calls, args.repeat)
        theirs = time_acpiexec(acpiexec, table, args.calls, args.repeat)
        ratio_ram = ours_ram / theirs if theirs else float("inf")
        ratio_block = ours_block / theirs if theirs else float("inf")
        ratios.append(ratio_ram)
        print(
            f"{maxcpus:>7} {len(table):>7} {ours_ram * 1e6:>8.1f}us {ours_block * 1e6:>9.1f}us "
            f"{theirs * 1e6:>8.1f}us {ratio_ram:>10.2f} {ratio_block:>12.2f}"
        )
    mean = statistics.geometric_mean(ratios)
    print(f"geometric-mean ratio ours/acpiexec (same RAM regions): {mean:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

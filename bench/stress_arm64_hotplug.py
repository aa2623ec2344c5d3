"""Stress vCPU hot-unplug of QEMU's arm64 hotplug RFC under TCG: how often does QEMU crash?

Each run boots one VM with cpuplug's own aarch64 guest image (Debian's Linux booted
through UEFI with ACPI, cpuplug's agent as /init) under the given QEMU, with
``-accel tcg,thread=multi -smp cpus=1,maxcpus=N`` (N = ``--maxcpus``, default 4), and
makes the guest busy: a container of ``--busy`` shell loops that never sleep, spread by
the guest's scheduler over every online CPU.  Then ``--cycles`` cycles, each:

1. plug 1..all free slots, picked at random (QMP ``device_add max-arm-cpu``);
2. have the agent online them (``OnlineCPUMem``), and let the guest run 0.5-3 s;
3. unplug a random, non-empty subset of the plugged vCPUs, one at a time, in random
   order (``device_del``, then wait for its ``DEVICE_DELETED``), with 0-0.5 s between;
4. ask QMP ``x-query-jit`` (what HMP ``info jit`` prints): it walks every vCPU thread's
   TCG context (``tcg_code_size()``), as a TB flush does, so a context left behind by
   an unplug is touched at once instead of at the next flush (``--no-query-jit``: not).

Everything random comes from ``random.Random(seed * 1000 + run)``: the same seed gives
every binary the same sequence of plugs and unplugs (the guest's timing still varies).

A run *crashes* when QEMU exits by a signal, or when QMP goes away (or stops answering)
before the run is over.  The counts are printed at the end, with each run's outcome and
the first lines of an AddressSanitizer report if QEMU printed one; ``--json FILE`` writes
the same, ``--logs DIR`` keeps every run's QEMU output, console and operation log.  Every
wait is bounded, and every QEMU started is killed and reaped before the next run.

The QEMU is the RFC built by ``scripts/build-qemu-arm64-hotplug`` (docs/qemu-arm64-hotplug.md):

    .venv/bin/python bench/stress_arm64_hotplug.py --qemu PATH --runs 8 --cycles 10 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cpuplug.image import ensure_image
from cpuplug.runtime.agent_client import AgentClient, wait_for_agent
from cpuplug.runtime.hypervisors.qemu import AGENT_PORT_NAME
from cpuplug.runtime.qmp_client import QmpCommandError, QmpConnection, QmpError

BUSY_LOOP = "while :; do :; done"


@dataclass
class Options:
    qemu: str
    kernel: str
    initrd: str
    firmware: str
    cmdline: str
    maxcpus: int
    cycles: int
    busy: int
    boot_timeout: float
    event_timeout: float
    query_jit: bool


@dataclass
class RunResult:
    run: int
    seed: int
    crashed: bool
    outcome: str
    """``ok``, ``signal N (NAME)``, ``exit N``, ``QMP gone`` or ``QMP timeout``."""
    cycles_done: int
    plugs: int
    unplugs: int
    tb_flushes: int | None
    """TB flushes QEMU had done at the last ``x-query-jit`` (each walks every TCG context);
    None without ``x-query-jit``."""
    seconds: float
    where: str = ""
    """The operation in flight when the run ended early."""
    asan: list[str] = field(default_factory=list)
    """The first lines of an AddressSanitizer report, if QEMU printed one."""


class RunEnded(Exception):
    """QEMU died or stopped answering: the run is over."""


def qemu_argv(opt: Options, rundir: Path) -> list[str]:
    return [
        opt.qemu,
        "-M", "virt,gic-version=3", "-cpu", "max,pauth-impdef=on",
        "-accel", "tcg,thread=multi",
        "-smp", f"cpus=1,maxcpus={opt.maxcpus}", "-m", "1G",
        "-bios", opt.firmware,
        "-kernel", opt.kernel, "-initrd", opt.initrd, "-append", opt.cmdline,
        "-display", "none", "-nodefaults", "-no-reboot",
        "-serial", f"file:{rundir / 'console.log'}",
        "-qmp", f"unix:{rundir / 'qmp.sock'},server=on,wait=off",
        "-chardev", f"socket,id=agent,path={rundir / 'agent-guest.sock'},server=on,wait=off",
        "-device", "virtio-rng-pci",
        "-device", "virtio-serial-pci,id=vser0",
        "-device", f"virtserialport,bus=vser0.0,chardev=agent,name={AGENT_PORT_NAME}",
    ]  # fmt: skip


def start_vm(opt: Options, rundir: Path) -> subprocess.Popen[bytes]:
    """QEMU under cpuplug's vmm_proxy (which multiplexes the one agent stream, and
    takes QEMU down with it); its output, QEMU's included, goes to vmm.log."""
    argv = [
        sys.executable, "-m", "cpuplug.runtime.hypervisors.vmm_proxy",
        "--agent-guest", str(rundir / "agent-guest.sock"),
        "--agent-listen", str(rundir / "agent.sock"),
        "--", *qemu_argv(opt, rundir),
    ]  # fmt: skip
    with open(rundir / "vmm.log", "wb") as log:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )


def stop_vm(proxy: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the proxy stops QEMU), then SIGKILL to the whole process group."""
    if proxy.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proxy.terminate()
        try:
            proxy.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proxy.pid, signal.SIGKILL)
            proxy.wait(15)
    # QEMU dies with the proxy (parent-death signal); make sure of the group anyway.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proxy.pid, signal.SIGKILL)


def qemu_status(rundir: Path, proxy: subprocess.Popen[bytes], wait: float) -> int | None:
    """QEMU's exit status as the proxy logged it (negative: killed by that signal)."""
    deadline = time.monotonic() + wait
    while True:
        text = (rundir / "vmm.log").read_text(errors="replace")
        m = re.search(r"vmm_proxy: QEMU exited (?:with status|\(status) (-?\d+)", text)
        if m:
            return int(m.group(1))
        if proxy.poll() is not None or time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def asan_report(rundir: Path) -> list[str]:
    lines = (rundir / "vmm.log").read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if "ERROR: AddressSanitizer" in line:
            return [x for x in lines[i : i + 40] if x.strip()][:24]
    return []


class Cycler:
    """The plugs and unplugs of one run, against one VM."""

    def __init__(self, opt: Options, rng: random.Random, qmp: QmpConnection) -> None:
        self.opt = opt
        self.rng = rng
        self.qmp = qmp
        self.plugged: dict[str, int] = {}
        self.next_id = 0
        self.plugs = 0
        self.unplugs = 0
        self.where = ""
        self.ops: list[str] = []
        self.tb_flushes: int | None = None

    def qmp_call(self, command: str, args: dict[str, Any]) -> Any:
        self.where = f"{command} {json.dumps(args)}"
        self.ops.append(f"{time.monotonic():.3f} {self.where}")
        try:
            return self.qmp.execute(command, args, timeout=30)
        except QmpCommandError as exc:
            self.ops.append(f"  refused: {exc}")
            raise
        except QmpError as exc:  # VmmGone, QmpTimeout
            raise RunEnded(type(exc).__name__) from None

    def plug(self, agent: AgentClient) -> None:
        taken = set(self.plugged.values())
        free = [k for k in range(1, self.opt.maxcpus) if k not in taken]
        if not free:
            return
        for core in self.rng.sample(free, self.rng.randint(1, len(free))):
            self.next_id += 1
            dev = f"cpu{self.next_id}"
            props = {"core-id": core, "socket-id": 0, "cluster-id": 0, "thread-id": 0}
            try:
                self.qmp_call("device_add", {"driver": "max-arm-cpu", "id": dev, **props})
            except QmpCommandError:
                continue
            self.plugged[dev] = core
            self.plugs += 1
        self.where = f"OnlineCPUMem({1 + len(self.plugged)})"
        try:
            online = agent.online_cpu_mem(1 + len(self.plugged))
            self.ops.append(f"  online {online}")
        except Exception as exc:  # the guest may lag (TCG); QEMU's health is what counts
            self.ops.append(f"  OnlineCPUMem: {exc}")
            if not self.qmp.alive:
                raise RunEnded("QMP gone") from None

    def query_jit(self) -> None:
        text = str(self.qmp_call("x-query-jit", {}).get("human-readable-text", ""))
        m = re.search(r"TB flush count\s+(\d+)", text)
        if m:
            self.tb_flushes = int(m.group(1))
            self.ops.append(f"  TB flush count {self.tb_flushes}")

    def unplug(self) -> None:
        devs = list(self.plugged)
        self.rng.shuffle(devs)
        for dev in devs[: self.rng.randint(1, len(devs))]:
            try:
                self.qmp_call("device_del", {"id": dev})
            except QmpCommandError:
                continue
            if self.wait_deleted(dev):
                del self.plugged[dev]
                self.unplugs += 1
            time.sleep(self.rng.uniform(0.0, 0.5))

    def wait_deleted(self, dev: str) -> bool:
        self.where = f"waiting for DEVICE_DELETED {dev}"
        deadline = time.monotonic() + self.opt.event_timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.qmp.next_event(left)
            except QmpError:
                raise RunEnded("QMP gone") from None
            if event is None:
                break
            if (
                event.get("event") == "DEVICE_DELETED"
                and event.get("data", {}).get("device") == dev
            ):
                self.ops.append(f"{time.monotonic():.3f}   DEVICE_DELETED {dev}")
                return True
        self.ops.append(f"  no DEVICE_DELETED for {dev} in {self.opt.event_timeout:g}s")
        # still plugged for QEMU, or stuck: check QMP still answers
        self.qmp_call("query-status", {})
        return False


def one_run(opt: Options, run: int, seed: int, rundir: Path) -> RunResult:
    rng = random.Random(seed * 1000 + run)
    started = time.monotonic()
    proxy = start_vm(opt, rundir)
    qmp: QmpConnection | None = None
    agent: AgentClient | None = None
    cycler: Cycler | None = None
    outcome, cycles_done = "ok", 0
    try:
        qmp = connect_qmp(rundir / "qmp.sock", proxy, 30.0)
        agent = wait_for_agent(
            rundir / "agent.sock", opt.boot_timeout, alive=lambda: proxy.poll() is None
        )
        spinners = " & ".join([f"({BUSY_LOOP})"] * opt.busy)
        agent.create_container("busy", ["sh", "-c", f"{spinners} & wait"])
        agent.start_container("busy")
        cycler = Cycler(opt, rng, qmp)
        for _ in range(opt.cycles):
            cycler.plug(agent)
            time.sleep(rng.uniform(0.5, 3.0))
            cycler.where = "guest running"
            if not qmp.alive:
                raise RunEnded("QMP gone")
            cycler.unplug()
            if opt.query_jit:
                cycler.query_jit()
            cycles_done += 1
        cycler.where = "end of run"
        cycler.qmp_call("query-status", {})
    except RunEnded as exc:
        outcome = "QMP timeout" if "Timeout" in str(exc) else "QMP gone"
    except Exception as exc:  # the boot (agent never answered, ...): not a crash by itself
        outcome = f"error: {type(exc).__name__}: {exc}"
    finally:
        if agent is not None:
            agent.close()
        if qmp is not None:
            qmp.close()
    status = qemu_status(rundir, proxy, wait=0.0 if outcome == "ok" else 10.0)
    stop_vm(proxy)
    if status is not None and status < 0:
        outcome = f"signal {-status} ({signal.Signals(-status).name})"
    elif status is not None and status != 0 and outcome != "ok":
        outcome = f"exit {status}"
    crashed = outcome.startswith(("signal", "exit", "QMP"))
    if cycler is not None:
        (rundir / "ops.log").write_text("\n".join(cycler.ops) + "\n")
    return RunResult(
        run, seed, crashed, outcome, cycles_done,
        cycler.plugs if cycler else 0, cycler.unplugs if cycler else 0,
        cycler.tb_flushes if cycler else None,
        round(time.monotonic() - started, 1),
        cycler.where if cycler and outcome != "ok" else "", asan_report(rundir),
    )  # fmt: skip


def connect_qmp(path: Path, proxy: subprocess.Popen[bytes], timeout: float) -> QmpConnection:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return QmpConnection(path, timeout=10.0).connect()
        except QmpError:
            if proxy.poll() is not None or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def image_options(args: argparse.Namespace) -> Options:
    image = ensure_image("aarch64")
    firmware = image.firmware
    if firmware is None:
        raise SystemExit(
            "stress_arm64_hotplug: cpuplug's aarch64 image has no UEFI firmware "
            "(ACPI vCPU hotplug needs the UEFI boot; update cpuplug)"
        )
    cmdline = str(image.cmdline)
    if "acpi=force" not in cmdline.split():
        cmdline += " acpi=force"
    return Options(
        qemu=args.qemu, kernel=str(image.kernel), initrd=str(image.initrd),
        firmware=str(firmware), cmdline=cmdline, maxcpus=args.maxcpus, cycles=args.cycles,
        busy=args.busy, boot_timeout=args.boot_timeout, event_timeout=args.event_timeout,
        query_jit=args.query_jit,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--qemu", required=True, help="qemu-system-aarch64 of the hotplug RFC")
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--cycles", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--maxcpus", type=int, default=4, help="vCPU slots (1 boot + N-1 pluggable)")
    p.add_argument("--busy", type=int, default=4, help="busy loops in the guest")
    p.add_argument("--boot-timeout", type=float, default=180.0, help="seconds to the agent")
    p.add_argument("--event-timeout", type=float, default=30.0, help="seconds to DEVICE_DELETED")
    p.add_argument(
        "--no-query-jit", dest="query_jit", action="store_false",
        help="no x-query-jit after each cycle's unplugs",
    )  # fmt: skip
    p.add_argument("--logs", type=Path, help="keep each run's logs under this folder")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    args = p.parse_args(argv)
    if args.maxcpus < 2 or args.runs < 1 or args.cycles < 1:
        p.error("need --maxcpus >= 2, --runs >= 1, --cycles >= 1")
    opt = image_options(args)
    qemu_version = subprocess.run(
        [opt.qemu, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.splitlines()[0]
    print(f"{qemu_version}; {args.runs} runs x {args.cycles} cycles, seed {args.seed}", flush=True)
    results: list[RunResult] = []
    work = Path(tempfile.mkdtemp(prefix="cpuplug-stress-"))
    try:
        for run in range(args.runs):
            rundir = work / f"run{run}"
            rundir.mkdir()
            r = one_run(opt, run, args.seed, rundir)
            results.append(r)
            where = f" during {r.where}" if r.where else ""
            flushes = "?" if r.tb_flushes is None else r.tb_flushes
            print(
                f"run {run}: {r.outcome}{where}; {r.cycles_done}/{args.cycles} cycles, "
                f"{r.plugs} plugs, {r.unplugs} unplugs, {flushes} TB flushes, "
                f"{r.seconds:.0f} s",
                flush=True,
            )
            for line in r.asan[:8]:
                print(f"    {line}")
            if args.logs:
                shutil.copytree(
                    rundir,
                    args.logs / f"seed{args.seed}-run{run}",
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.sock"),
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    crashes = sum(r.crashed for r in results)
    unplugs = sum(r.unplugs for r in results)
    print(f"crashes: {crashes}/{len(results)} runs ({unplugs} completed unplugs in all)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"qemu": opt.qemu, "version": qemu_version, "seed": args.seed,
                 "cycles": args.cycles, "runs": [asdict(r) for r in results],
                 "crashes": crashes},
                indent=2,
            ) + "\n"
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

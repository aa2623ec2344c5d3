"""The runtime's commands behind ``cpuplug run|update|exec|ps|inspect|events|stop|rm|demo``.

Every value a user types is parsed here, with one-line :class:`UsageError`
messages (exit code 2 through ``cpuplug.cli``) rather than argparse's usage dump,
so ``--cpus abc`` and ``--cpus -1`` read the same way as an unknown sandbox.
Human output uses ``rich``; ``--json`` output is stable for scripts.  The
parsers are in :mod:`cpuplug.runtime.cli`, which imports this module only when
one of these commands runs.

What a command imports is part of its latency: ``cpuplug update`` is a fresh
process, and importing ``rich`` alone costs more than the hotplug it reports
(issue 8 §4).  So ``rich`` is imported only where it renders something (tables,
markup) and a plain line goes out through :func:`_say`, which hands ``rich`` only
the lines ``rich`` would change; the OCI bundle reader is imported by ``run
--bundle`` alone.  ``tests/test_cli.py`` checks what each command imports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any

from cpuplug.acpi.limits import MAX_CPUS
from cpuplug.errors import UsageError
from cpuplug.runtime.config import HOTPLUG_MODES, load_config
from cpuplug.runtime.records import VcpuRow, to_jsonable
from cpuplug.runtime.sandbox import (
    MAX_CFS_PERIOD_US,
    MIN_CFS_US,
    Resources,
    RunRequest,
    Runtime,
    UpdateResult,
)
from cpuplug.runtime.sizing import DOCKER_PERIOD, cpus_to_quota, parse_cpu_list, parse_cpus

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

MAX_CFS_QUOTA_US = (1 << 44) - 1
"""Linux's ``max_cfs_runtime`` in µs: a bigger ``cpu.max`` quota is EINVAL in the guest,
so it is refused here, before a sandbox is started for nothing."""

_CPUS_TEXT = re.compile(r"\s*[+-]?[0-9]{0,20}(\.[0-9]{0,20})?([eE][+-]?[0-9]{1,3})?\s*")
"""What ``--cpus`` may look like before it is parsed exactly: ``Fraction("1e99999999")``
computes ``10**99999999`` and hangs the command, so exponents and digit runs are bounded."""


def _out() -> Console:
    return _console(sys.stdout, stderr=False)


def _err() -> Console:
    return _console(sys.stderr, stderr=True)


_PIPE_WIDTH = 1000
"""Width for output that is not a terminal: a script reading ``ps`` or a warning gets
whole lines, not rich's 80-column wrapping and truncated names."""


def _console(stream: Any, *, stderr: bool) -> Console:
    """A rich console that never wraps a message line (soft wrap) and, off a terminal,
    lays tables out as wide as they need."""
    from rich.console import Console

    tty = hasattr(stream, "isatty") and stream.isatty()
    return Console(
        stderr=stderr, highlight=False, soft_wrap=True, width=None if tty else _PIPE_WIDTH
    )


def _say(text: str, *, stderr: bool = False) -> None:
    """Print one line exactly as ``Console(highlight=False).print`` would, without
    importing ``rich`` (~40 ms) when it would print the text unchanged.

    ``rich`` changes a line for markup (``[...]``), emoji codes (``:name:``) and a
    line wider than the console, which it wraps (and control or wide characters
    make "wider" more than ``len``).  A line that might be any of those goes to
    ``rich`` itself, so the output is the same either way; only the import is saved,
    for the plain lines ``update`` prints (``tests/test_cli.py`` compares the two).
    """
    plain = text.isascii() and text.isprintable() and "[" not in text and text.count(":") < 2
    if plain and len(text) <= _narrowest_width():
        print(text, file=sys.stderr if stderr else sys.stdout, flush=True)
    else:
        (_err() if stderr else _out()).print(text)


def _narrowest_width() -> int:
    """A width no wider than the one ``rich`` would wrap at: it uses ``$COLUMNS`` if
    numeric, else the first terminal among stdin, stdout and stderr, else 80."""
    widths = [80]
    columns = os.environ.get("COLUMNS")
    if columns is not None and columns.isdigit():
        widths.append(int(columns))
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError, ValueError):  # not a terminal
            widths.append(os.get_terminal_size(fd).columns)
    return min(widths)


_ASCII_INT = re.compile(r"[+-]?[0-9]+")


def _int(option: str, text: str | None, minimum: int | None = None) -> int | None:
    if text is None:
        return None
    # ASCII only: int() would also take fullwidth or Arabic-Indic digits and '1_000'.
    if not _ASCII_INT.fullmatch(text.strip(" \t\n")):
        raise UsageError(f"invalid {option} value {text!r}: expected an integer")
    value = int(text)
    if minimum is not None and value < minimum:
        raise UsageError(f"invalid {option} value {text!r}: must be >= {minimum}")
    return value


def resources_from_args(args: argparse.Namespace) -> Resources:
    """``--cpus`` | ``--cpu-quota``/``--cpu-period``, ``--cpuset-cpus`` → Resources."""
    quota = _int("--cpu-quota", args.cpu_quota)
    period = _int("--cpu-period", args.cpu_period)
    if period is not None and not MIN_CFS_US <= period <= MAX_CFS_PERIOD_US:
        raise UsageError(
            f"invalid --cpu-period value {args.cpu_period!r}: "
            f"must be {MIN_CFS_US}..{MAX_CFS_PERIOD_US} (µs)"
        )
    if quota is not None and quota != -1 and quota < MIN_CFS_US:
        raise UsageError(
            f"invalid --cpu-quota value {args.cpu_quota!r}: must be >= {MIN_CFS_US} (µs) or -1"
        )
    if args.cpus is not None:
        if quota is not None or period is not None:
            raise UsageError("conflicting options: --cpus and --cpu-quota/--cpu-period")
        if not _CPUS_TEXT.fullmatch(args.cpus):
            raise UsageError(f"invalid --cpus value {args.cpus!r}: expected a number like 1.5")
        cpus = parse_cpus(args.cpus)
        if cpus == 0:
            quota, period = -1, DOCKER_PERIOD  # docker: --cpus 0 means no limit
        else:
            quota, period = cpus_to_quota(cpus)
            if quota < MIN_CFS_US:
                raise UsageError(
                    f"invalid --cpus value {args.cpus!r}: the smallest limit is "
                    f"{MIN_CFS_US / DOCKER_PERIOD:g} CPUs"
                )
    cpuset = args.cpuset_cpus
    if cpuset is not None:
        parse_cpu_list(cpuset)
    resources = Resources(quota=quota, period=period, cpuset=cpuset)
    if args.cpus is not None:
        check_quota_bound(resources, f"--cpus value {args.cpus!r}")
    else:
        check_quota_bound(resources, f"--cpu-quota value {args.cpu_quota!r}")
    return resources


def check_quota_bound(resources: Resources, source: str) -> None:
    """Refuse a quota the guest kernel would refuse (``> max_cfs_runtime``), up front."""
    if resources.quota is not None and resources.quota > MAX_CFS_QUOTA_US:
        raise UsageError(
            f"invalid {source}: the CPU quota would exceed the kernel's maximum of "
            f"{MAX_CFS_QUOTA_US} µs per period"
        )


def _runtime(args: argparse.Namespace, config: Any = None) -> Runtime:
    return Runtime(getattr(args, "root", None), config)


def _cmd(rest: list[str]) -> list[str]:
    return rest[1:] if rest and rest[0] == "--" else rest


# --------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    max_cpus = _int("--max-cpus", args.max_cpus, minimum=1)
    if max_cpus is not None and max_cpus > MAX_CPUS:
        # said here, in the flag's name, not as the config key it overrides
        raise UsageError(f"invalid --max-cpus value {args.max_cpus!r}: must be <= {MAX_CPUS}")
    if args.mode is not None and args.mode not in HOTPLUG_MODES:
        raise UsageError(f"invalid --mode {args.mode!r}: use one of {', '.join(HOTPLUG_MODES)}")
    cfg = cfg.with_overrides(
        default_maxvcpus=max_cpus,
        hotplug_mode=args.mode,
        hypervisor=args.hypervisor,
        arch=args.arch,
        qemu_path=args.qemu,
    )
    cmd = _cmd(args.cmd)
    resources = resources_from_args(args)
    if args.bundle is not None:
        if cmd:
            raise UsageError("give either --bundle or a command, not both")
        from cpuplug.runtime.bundle import read_bundle

        b = read_bundle(args.bundle)
        cmd = b.args
        resources = Resources(
            quota=resources.quota if resources.quota is not None else b.quota,
            period=resources.period if resources.period is not None else b.period,
            cpuset=resources.cpuset if resources.cpuset is not None else b.cpuset,
        )
        check_quota_bound(resources, f"quota in {args.bundle}/config.json")
    if not cmd:
        raise UsageError("run needs a command: cpuplug run [OPTIONS] -- CMD ARGS...")
    rt = _runtime(args, cfg)
    err = None if args.detach else _err()  # -d prints no steps: no rich for them
    t0 = time.monotonic()
    st = rt.run(
        RunRequest(cmd=cmd, resources=resources, name=args.name),
        on_step=None if err is None else (lambda s: err.print(f"[dim]{s}[/dim]")),
    )
    if st.warning:
        _say(f"[yellow]warning:[/yellow] {st.warning}", stderr=True)
    if args.detach:
        print(st.name)
    else:
        plugged = f", {len(st.plugged)} plugged" if len(st.plugged) != st.target else ""
        _out().print(
            f"sandbox [bold]{st.name}[/bold] running: {st.target} vCPUs "
            f"(max {st.maxcpus}{plugged}), ready in {time.monotonic() - t0:.2f}s"
        )
    return 0


def print_update(result: UpdateResult) -> None:
    if result.warning:
        _say(f"[yellow]warning:[/yellow] {result.warning}", stderr=True)
    change = (
        f"vCPUs {result.before} -> {result.after}"
        if result.before != result.after
        else f"vCPUs unchanged at {result.after}"
    )
    quota = (
        f"quota {result.quota}/{result.period}"
        if result.quota is not None and result.quota >= 0
        else "quota unlimited"
    )
    detail = []
    if result.added:
        detail.append("added " + ",".join(map(str, result.added)))
    if result.removed:
        detail.append("removed " + ",".join(map(str, result.removed)))
    if result.onlined:
        detail.append("onlined " + ",".join(map(str, result.onlined)))
    if result.offlined:
        detail.append("offlined " + ",".join(map(str, result.offlined)) + ", kept plugged")
    extra = f" ({'; '.join(detail)})" if detail else ""
    _say(f"{result.name}: {change}{extra}, {quota}, {result.seconds * 1000:.1f} ms")


def cmd_update(args: argparse.Namespace) -> int:
    resources = resources_from_args(args)
    if resources == Resources():
        raise UsageError("update needs --cpus, --cpu-quota/--cpu-period or --cpuset-cpus")
    result = _runtime(args).update(args.name, resources)
    print_update(result)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    cmd = _cmd(args.cmd)
    if not cmd:
        raise UsageError("exec needs a command: cpuplug exec NAME -- CMD ARGS...")
    res = _runtime(args).exec(args.name, cmd)
    sys.stdout.write(str(res.get("stdout", "")))
    sys.stderr.write(str(res.get("stderr", "")))
    return int(res.get("exit_code", 1))


def cmd_ps(args: argparse.Namespace) -> int:
    rows = _runtime(args).ps()
    if args.json:
        print(json.dumps(to_jsonable(rows), indent=2, sort_keys=True))
        return 0
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("NAME", "STATUS", "VCPUS", "CPUS", "MODE", "HYPERVISOR", "PID", "CREATED"):
        table.add_column(col)
    for r in rows:
        age = time.time() - r.created
        table.add_row(
            r.name,
            r.status.value,
            f"{r.vcpus}/{r.maxcpus}",
            r.cpus,
            r.mode,
            r.hypervisor,
            str(r.pid or "-"),
            f"{age:.0f}s ago",
        )
    _out().print(table)
    return 0


def vcpu_table(rows: list[VcpuRow], title: str = "vCPUs") -> Table:
    from rich.table import Table

    def mark(v: bool | None) -> str:
        return "-" if v is None else ("[green]yes[/green]" if v else "no")

    table = Table(title=title, header_style="bold")
    for col in ("vCPU", "plugged", "enabled", "online", "host thread"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r.vcpu), mark(r.plugged), mark(r.enabled), mark(r.online), str(r.thread_id or "-")
        )
    return table


def cmd_inspect(args: argparse.Namespace) -> int:
    info = _runtime(args).inspect(args.name)
    if args.json:
        print(json.dumps(to_jsonable(info), indent=2, sort_keys=True, default=str))
        return 0
    out = _out()
    cfg = info.config
    out.print(
        f"[bold]{info.name}[/bold]  status={info.status.value}  vmm pid={info.vmm_pid}  "
        f"hypervisor={cfg.hypervisor}  mode={cfg.hotplug_mode}  "
        f"static={cfg.static_sandbox_resource_mgmt}  "
        f"maxcpus={cfg.maxcpus}  default_vcpus={cfg.default_vcpus}"
    )
    if info.warning:
        out.print(f"[yellow]warning:[/yellow] {info.warning}")
    if info.reconciled:
        out.print("[yellow]state reconciled with the VMM[/yellow]")
    out.print(vcpu_table(info.vcpus))
    from rich.table import Table

    limits = Table(title="cgroup limits", header_style="bold")
    for col in ("container", "quota", "period", "cpuset", "usage (s)", "throttled"):
        limits.add_column(col)
    for c in info.containers:
        stats = info.cgroups.get(c.id, {})
        cpu = stats.get("cpu", {})
        limits.add_row(
            c.id,
            str(c.quota),
            str(c.period),
            str(stats.get("cpuset_effective", "-")),
            f"{cpu.get('usage_usec', 0) / 1e6:.2f}",
            str(cpu.get("nr_throttled", "-")),
        )
    out.print(limits)
    out.print(history_table(info.history))
    return 0


def history_table(history: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(title="recent events", header_style="bold")
    for col in ("time", "op", "detail", "ms"):
        table.add_column(col)
    for h in history:
        detail = {k: v for k, v in h.items() if k not in ("op", "at", "ms", "steps")}
        steps = h.get("steps") or []
        if steps:
            detail["steps"] = ", ".join(f"{s['step']}:{s['ms']}" for s in steps)
        table.add_row(
            time.strftime("%H:%M:%S", time.localtime(h.get("at", 0))),
            str(h.get("op")),
            " ".join(f"{k}={v}" for k, v in detail.items()),
            str(h.get("ms", "")),
        )
    return table


def cmd_events(args: argparse.Namespace) -> int:
    rt = _runtime(args)
    for h in rt.events(args.name):
        print(json.dumps(h, sort_keys=True, default=str), flush=True)
    if args.follow:
        for ev in rt.follow(args.name):
            print(
                json.dumps(
                    {"event": ev.name, "data": ev.data, "timestamp": ev.timestamp}, sort_keys=True
                ),
                flush=True,
            )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    _runtime(args).stop(args.name)
    print(args.name)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    _runtime(args).rm(args.name, force=args.force)
    print(args.name)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cpuplug.runtime.demo import run_demo

    return run_demo(root=args.root, console=_out())

"""Docker-like commands for the runtime: run, update, exec, ps, inspect, events, stop, rm, demo.

Only the argument parsers live here, importing nothing heavy: every ``cpuplug``
invocation (``cpuplug vmm`` included) builds all parties' parsers, so the
command bodies (:mod:`cpuplug.runtime.commands`, with ``rich`` and ``qemu.qmp``)
are imported only when one of them runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        func = getattr(importlib.import_module("cpuplug.runtime.commands"), name)
        return int(func(args))

    run.__name__ = name
    return run


# --------------------------------------------------------------------------- parsers


def _root(p: argparse.ArgumentParser) -> None:
    # ``cpuplug --root DIR CMD`` works too (cpuplug.cli's global option, runc's and
    # docker's place for it); this one, after the command, wins when both are given.
    p.add_argument(
        "--root",
        metavar="DIR",
        help="state directory (default $CPUPLUG_ROOT, /run/cpuplug for root, else "
        "$XDG_RUNTIME_DIR/cpuplug); may also come before the command",
    )


def _limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpus", help="number of CPUs (docker: quota = X * 100000)")
    p.add_argument("--cpu-quota", help="CFS quota in microseconds per period (-1 = none)")
    p.add_argument("--cpu-period", help="CFS period in microseconds")
    p.add_argument("--cpuset-cpus", help="CPUs the container may use (e.g. 0-2)")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="start a sandbox running a container")
    _root(p)
    p.add_argument("--name")
    _limits(p)
    p.add_argument("--max-cpus", help="maxcpus of the VM (default: config default_maxvcpus)")
    p.add_argument("--mode", help="hotplug mode: acpi | online-offline")
    p.add_argument("--hypervisor", help="builtin (default) | qemu (a real QEMU + Linux guest)")
    p.add_argument("--arch", help="guest architecture with --hypervisor qemu: x86_64 | aarch64")
    p.add_argument("--qemu", metavar="PATH", help="the qemu-system-* binary to run")
    p.add_argument("--config", help="TOML config (Kata key names)")
    p.add_argument("--bundle", help="OCI bundle directory (config.json)")
    p.add_argument("-d", "--detach", action="store_true", help="print only the sandbox name")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=_command("cmd_run"))

    p = subparsers.add_parser("update", help="change a sandbox's CPU limits (hotplugs vCPUs)")
    _root(p)
    _limits(p)
    p.add_argument("name")
    p.set_defaults(func=_command("cmd_update"))

    p = subparsers.add_parser("exec", help="run a command in a sandbox's container")
    _root(p)
    p.add_argument("name")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=_command("cmd_exec"))

    p = subparsers.add_parser("ps", help="list sandboxes")
    _root(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command("cmd_ps"))

    p = subparsers.add_parser("inspect", help="show a sandbox: config, vCPU map, cgroups, events")
    _root(p)
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command("cmd_inspect"))

    p = subparsers.add_parser("events", help="a sandbox's hotplug history; --follow for live")
    _root(p)
    p.add_argument("name")
    p.add_argument("--follow", "-f", action="store_true")
    p.set_defaults(func=_command("cmd_events"))

    p = subparsers.add_parser("stop", help="stop a sandbox (container and VMM)")
    _root(p)
    p.add_argument("name")
    p.set_defaults(func=_command("cmd_stop"))

    p = subparsers.add_parser("rm", help="remove a sandbox")
    _root(p)
    p.add_argument("-f", "--force", action="store_true", help="stop it first if running")
    p.add_argument("name")
    p.set_defaults(func=_command("cmd_rm"))

    p = subparsers.add_parser("demo", help="grow and shrink a busy sandbox, with timings")
    _root(p)
    p.set_defaults(func=_command("cmd_demo"))

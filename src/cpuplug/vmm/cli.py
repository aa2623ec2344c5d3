"""``cpuplug vmm``: run one machine in this process, as a QEMU process does.

The process serves QMP on ``--qmp unix:PATH`` and the agent channel on
``--agent unix:PATH`` until a ``quit`` command, SIGTERM/SIGINT, or a guest
SYSTEM_OFF; then it stops every vCPU thread (bounded wait), removes both
sockets and exits 0. Bad arguments are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
from typing import Any

from cpuplug.acpi.virt import GICR_REGION2_BASE, MODES, RAM_BASE, MachineConfig
from cpuplug.errors import UsageError
from cpuplug.vmm.machine import CPU_MODELS, DEFAULT_KERNEL, MachineEvent, VirtMachine
from cpuplug.vmm.sockpath import claim_socket_path

log = logging.getLogger("cpuplug.vmm")

_SIZE = re.compile(r"([0-9]+)([KMGT]?)(i?B)?", re.IGNORECASE)
_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory_size(text: str) -> int:
    """QEMU ``-m`` syntax: a number with an optional K/M/G/T suffix; no suffix = MiB."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"--memory: cannot parse {text!r} (expected e.g. 256M or 1G)")
    size = int(match.group(1)) * _UNITS[match.group(2).upper()]
    limit = GICR_REGION2_BASE - RAM_BASE  # RAM must end below the second GICR region
    if size > limit:
        raise UsageError(f"--memory: {text} does not fit the memory map (at most {limit >> 30}G)")
    return size


def parse_unix_address(option: str, text: str) -> str:
    """``unix:PATH`` (QEMU's socket address syntax, ``,server,nowait`` tolerated)."""
    kind, sep, rest = text.partition(":")
    path = rest.split(",", 1)[0]
    if kind != "unix" or not sep or not path:
        raise UsageError(f"{option}: expected unix:PATH, got {text!r}")
    return path


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "vmm",
        help="run an arm64 virt machine with ACPI vCPU hotplug (QEMU's role)",
        description="Run one machine: QMP on --qmp, the agent channel on --agent.",
    )
    parser.add_argument("--smp", required=True, help="cpus=N,maxcpus=M (QEMU syntax)")
    parser.add_argument("--qmp", required=True, metavar="unix:PATH", help="QMP socket")
    parser.add_argument("--agent", required=True, metavar="unix:PATH", help="agent socket")
    parser.add_argument("--mode", choices=MODES, default="acpi", help="hotplug mode (default acpi)")
    parser.add_argument("--memory", default="256M", help="guest RAM (default 256M)")
    parser.add_argument(
        "--kernel",
        default=DEFAULT_KERNEL,
        metavar="MODULE:FUNCTION|none",
        help=f"guest kernel entry point (default {DEFAULT_KERNEL}); none boots nothing",
    )
    parser.add_argument("--cpu-model", default="max", help=f"CPU model: {' | '.join(CPU_MODELS)}")
    parser.add_argument("--console", metavar="FILE", help="also write the guest console here")
    parser.set_defaults(func=run)
    # An argument error is one line, exit 2, like every cpuplug error: the parser is
    # a cpuplug.cli.CpuplugArgumentParser (subparsers inherit their parent's class).


def build_machine(args: argparse.Namespace) -> tuple[VirtMachine, str]:
    """The machine and QMP path the arguments describe; UsageError on any fault."""
    if args.mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {args.mode!r}")
    config = MachineConfig.from_smp(
        args.smp, mode=args.mode, ram_size=parse_memory_size(args.memory)
    )
    qmp_path = parse_unix_address("--qmp", args.qmp)
    agent_path = parse_unix_address("--agent", args.agent)
    if qmp_path == agent_path:
        raise UsageError("--qmp and --agent must be different sockets")
    # Before anything is created: a path that is the user's file, or another
    # VMM's live socket, is refused rather than replaced (see claim_socket_path).
    claim_socket_path(qmp_path, "--qmp")
    claim_socket_path(agent_path, "--agent")
    machine = VirtMachine(
        config,
        kernel=args.kernel,
        agent_path=agent_path,
        console_path=args.console,
        cpu_model=args.cpu_model,
    )
    return machine, qmp_path


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="cpuplug vmm: %(levelname)s: %(message)s")
    machine, qmp_path = build_machine(args)
    asyncio.run(serve(machine, qmp_path))
    return 0


async def serve(machine: VirtMachine, qmp_path: str) -> None:
    """Boot ``machine``, serve QMP until quit / signal / guest power-off, then tear down."""
    from cpuplug.vmm.qmp import QmpServer

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    server = QmpServer(machine, qmp_path, on_quit=done.set)

    def forward(event: MachineEvent) -> None:
        server.emit(event.name, event.data)
        if event.name == "SHUTDOWN":
            loop.call_soon_threadsafe(done.set)

    def on_signal(signum: int) -> None:
        if not done.is_set():
            server.emit("SHUTDOWN", {"guest": False, "reason": "host-signal"})
            done.set()

    machine.add_event_listener(forward)
    # Handlers first: a signal that arrives while booting still ends us cleanly.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        machine.start()
        await server.start()
        await done.wait()
    finally:
        await server.close()
        machine.shutdown()

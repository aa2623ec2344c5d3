"""``python3 -m cpuplug.guest.linux_agent``: the agent of a real Linux guest.

The runtime's guest image boots Debian's kernel with an initramfs whose ``/init`` ends
in ``exec python3 -m cpuplug.guest.linux_agent``, so this is usually the guest's PID 1.
It needs only Python's standard library and, from cpuplug, ``agent_protocol``,
``strict_json``, ``errors``, ``hw`` and the ``cpuplug.guest`` package.

What ``/init`` must have done first: mount ``proc`` on ``/proc``, ``sysfs`` on ``/sys``
and ``devtmpfs`` on ``/dev``, and load ``virtio_console`` (with ``virtio_pci``). Then
this module:

1. makes sure ``/sys/fs/cgroup`` is a cgroup2 mount (mounts it if ``/init`` did not) and
   enables the ``cpu`` and ``cpuset`` controllers for its children (``+cpu +cpuset``
   in the root's ``cgroup.subtree_control``; the root cgroup may hold processes and
   enable controllers at once, so the agent itself stays there);
2. finds the virtio-serial port named ``cpuplug.agent`` (waiting up to ``--port-wait``
   seconds for the driver to bind it) and opens ``/dev/vportNpM``;
3. serves the agent protocol on it (:class:`~cpuplug.guest.agent.Agent` over
   :class:`~cpuplug.guest.linux_os.LinuxOS`) until SIGTERM or SIGINT.

As PID 1 it also reaps the orphans every init inherits, and a SIGTERM powers the guest
off (PID 1 must not exit: the kernel would panic). Everything it logs goes to its
stderr, the guest console.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from cpuplug.guest.agent import Agent
from cpuplug.guest.linux_os import CGROUP_ROOT, LinuxOS, is_cgroup2_mount
from cpuplug.guest.linux_uevents import UeventMonitor
from cpuplug.guest.virtio_serial import PORT_NAME, SerialChannel, find_port

__all__ = ["enable_controllers", "main", "mount_cgroup2", "wait_for_port"]

NSDELEGATE = b"nsdelegate"
"""Mount option making a cgroup namespace a delegation boundary, as systemd mounts it:
a container cannot lift its own ``cpu.max`` or move tasks across its root (the
built-in guest models the same refusals; docs/guest.md)."""

CONTROLLERS = ("cpu", "cpuset")
PORT_WAIT = 30.0
"""How long to wait for the port to appear at boot, in seconds."""
PORT_POLL = 0.05
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8


def _say(text: str) -> None:
    print(f"cpuplug-agent: {text}", file=sys.stderr, flush=True)


def mount_cgroup2(root: Path) -> str | None:
    """Mount cgroup2 on ``/sys/fs/cgroup`` unless it is one already; a problem or None.

    Only on the real root: another ``--root`` is a test's tree of files, and a mount
    left on it would outlive the test (and its temporary directory).
    """
    target = root / CGROUP_ROOT.lstrip("/")
    if os.path.realpath(root) != "/" or is_cgroup2_mount(target):
        return None
    with contextlib.suppress(OSError):
        target.mkdir(parents=True, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if libc.mount(b"cgroup2", os.fsencode(target), b"cgroup2", flags, NSDELEGATE) != 0:
        err = ctypes.get_errno()
        return f"cannot mount cgroup2 on {CGROUP_ROOT}: {os.strerror(err)}"
    return None


def enable_controllers(root: Path) -> list[str]:
    """Write ``+cpu`` and ``+cpuset`` to the root's ``cgroup.subtree_control``, one by one
    (so one that is missing does not keep the other off); the problems met."""
    control = root / CGROUP_ROOT.lstrip("/") / "cgroup.subtree_control"
    problems = []
    for name in CONTROLLERS:
        try:
            fd = os.open(control, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, f"+{name}".encode())
            finally:
                os.close(fd)
        except OSError as exc:
            problems.append(f"cannot enable the {name} controller: {exc.strerror}")
    return problems


def wait_for_port(name: str, root: Path, timeout: float) -> Path | None:
    """The port's device node once sysfs names it and the node exists; None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        device = find_port(name, root)
        if device is not None and device.exists():
            return device
        if time.monotonic() >= deadline:
            return None
        time.sleep(PORT_POLL)  # the driver binds the port asynchronously; no event to wait on


def _power_off() -> None:
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(LINUX_REBOOT_CMD_POWER_OFF)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m cpuplug.guest.linux_agent")
    p.add_argument(
        "--root", type=Path, default=Path("/"), help="file system root (tests; mounts nothing)"
    )
    p.add_argument("--port-name", default=PORT_NAME, help="virtserialport name to serve on")
    p.add_argument("--port", type=Path, help="device node to serve on (skips the lookup)")
    p.add_argument("--port-wait", type=float, default=PORT_WAIT, help="seconds to wait for it")
    p.add_argument("--no-namespaces", action="store_true", help="keep containers in ours")
    p.add_argument("--no-events", action="store_true", help="do not read kernel uevents")
    args = p.parse_args(argv)
    pid1 = os.getpid() == 1

    problem = mount_cgroup2(args.root)
    for line in ([problem] if problem else []) + enable_controllers(args.root):
        _say(f"warning: {line}; container limits will fail")
    device = args.port or wait_for_port(args.port_name, args.root, args.port_wait)
    if device is None:
        _say(f"no virtio-serial port named {args.port_name!r} after {args.port_wait:g}s")
        return 1
    try:
        channel = SerialChannel.open(device)
    except OSError as exc:
        _say(f"cannot open {device}: {exc.strerror}")
        return 1
    events = None if args.no_events else UeventMonitor(log=_say)
    system = LinuxOS(
        channel,
        root=args.root,
        namespaces=not args.no_namespaces,
        reap_orphans=pid1,
        events=events,
    )
    stop = threading.Event()

    def on_signal(signo: int, _frame: object) -> None:
        _say(f"{signal.Signals(signo).name}: stopping")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent = Agent(system).start()
    _say(f"serving the agent protocol on {device} ({args.port_name})")
    while not stop.wait(1.0):
        pass
    agent.stop()
    system.close()
    channel.close()
    if pid1:
        _power_off()
    return 0


if __name__ == "__main__":
    sys.exit(main())

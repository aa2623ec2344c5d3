"""The shim: the host process that stands for a container's process (Kata 1.x's kata-shim).

``create`` (or ``exec --detach``) starts it and writes its pid to ``--pid-file``;
containerd-shim-runc-v2 adopts it as the container's init (or exec) and takes the exit
status from it. It inherits the caller's stdin, stdout and stderr (or a terminal's
slave, ``--tty``), relays them to the guest process (:class:`~cpuplug.oci.relay.Relay`),
passes the signals it gets on, and exits with the guest process's status.

A container's shim waits for ``start`` first: ``start`` writes one byte into the
container's ``start.fifo`` after the agent started the process (``1``; ``0`` when that
failed). Until then it is what runc's ``init`` is before ``start``: a signal whose
default action ends a process ends it (with ``128 + signal``). It runs in a network
namespace of its own (when root), the one docker's prestart hook configures. When its
container's process has ended it stops the sandbox VM before it exits: the VMM never
outlives the container. An exec's shim only relays.

Run as ``python -m cpuplug.oci.shim --root R --id ID --sandbox-root S --sandbox NAME
[--exec EID] [--tty] [--ready-fd N] [--netns]``; it says ``ready`` on ``--ready-fd``
once its signal handlers are in place.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import select
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from cpuplug.oci import console
from cpuplug.oci.relay import VM_GONE_STATUS, Relay
from cpuplug.oci.signals import FORWARDED

if TYPE_CHECKING:
    from cpuplug.runtime.sandbox import Runtime

CLONE_NEWNET = 0x40000000
START_FAILED_STATUS = 127
"""The status of a container whose process could not be started (the shell's)."""
VM_CHECK = 1.0
"""How often a shim waiting for ``start`` looks whether its VM is still there."""


class Shim:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.container_dir = Path(args.root) / args.id
        self.log_path = self.container_dir / "shim.log"

    def log(self, text: str) -> None:
        who = f"exec {self.args.exec}" if self.args.exec else "init"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with contextlib.suppress(OSError):
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            fd = os.open(self.log_path, flags, 0o600)
            try:
                os.write(fd, f"{stamp} shim[{os.getpid()}] {who}: {text}\n".encode())
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ the sandbox

    def _runtime(self) -> Runtime:
        from cpuplug.runtime.sandbox import Runtime  # only when needed: a shim starts fast

        return Runtime(self.args.sandbox_root)

    def vm_alive(self) -> bool:
        from cpuplug.errors import CpuplugError

        try:
            rt = self._runtime()
            return bool(rt.alive(rt.store.load(self.args.sandbox)))
        except CpuplugError:
            return False

    def stop_sandbox(self) -> None:
        from cpuplug.errors import CpuplugError

        try:
            self._runtime().stop(self.args.sandbox)
            self.log("sandbox stopped")
        except CpuplugError as exc:
            self.log(f"could not stop the sandbox: {exc}")

    # ------------------------------------------------------------------ phases

    def wait_for_start(self, fifo: int, wakeup: int, pending: list[int]) -> int | None:
        """None once started; an exit status when a signal or the VM's end came first."""
        while True:
            ready, _, _ = select.select([fifo, wakeup], [], [], VM_CHECK)
            if wakeup in ready:
                with contextlib.suppress(OSError):
                    os.read(wakeup, 512)
            for signo in pending:  # every forwarded signal's default action ends a process
                self.log(f"signal {signo} before start")
                return 128 + signo
            if fifo in ready:
                word = os.read(fifo, 1)
                if word == b"1":
                    return None
                if word == b"0":
                    self.log("start failed")
                    return START_FAILED_STATUS
            elif not ready and not self.vm_alive():
                self.log("the VM is gone before start")
                return VM_GONE_STATUS

    def main(self) -> int:
        args = self.args
        if args.tty:
            console.take_terminal(0)
        if args.netns and os.geteuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                self.log(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
        pending: list[int] = []

        def early(signo: int, _frame: FrameType | None) -> None:
            pending.append(signo)

        for signo in FORWARDED:
            signal.signal(signo, early)
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        fifo = -1
        if args.exec is None:
            flags = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC  # our own writer: no EOF, no HUP
            fifo = os.open(self.container_dir / "start.fifo", flags)
        if args.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(args.ready_fd, b"ready\n")
                os.close(args.ready_fd)
        if args.exec is None:
            early_status = self.wait_for_start(fifo, wake_r, pending)
            os.close(fifo)
            if early_status is not None:
                self.stop_sandbox()
                return early_status
        status = self.relay(pending)
        self.log(f"exit status {status}")
        if args.exec is None:
            self.stop_sandbox()
        return status

    def relay(self, pending: list[int]) -> int:
        args = self.args
        from cpuplug.runtime.state import StateStore

        agent = StateStore(args.sandbox_root).socket_path(args.sandbox, "agent")
        relay = Relay(
            agent,
            args.sandbox,
            args.exec,
            stdin=0,
            stdout=1,
            stderr=2,
            terminal=args.tty,
            vm_alive=self.vm_alive,
            log=self.log,
        )

        def forward(signo: int, _frame: FrameType | None) -> None:
            relay.forward(signo)

        def winch(_signo: int, _frame: FrameType | None) -> None:
            relay.resize()

        for signo in FORWARDED:
            signal.signal(signo, forward)
        signal.signal(signal.SIGWINCH, winch)
        for signo in pending:  # came between start and now
            relay.forward(signo)
        pending.clear()
        return relay.run()


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cpuplug-runc-shim")
    p.add_argument("--root", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--sandbox-root", required=True)
    p.add_argument("--sandbox", required=True)
    p.add_argument("--exec")
    p.add_argument("--tty", action="store_true")
    p.add_argument("--netns", action="store_true")
    p.add_argument("--ready-fd", type=int)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    shim = Shim(parse(sys.argv[1:] if argv is None else argv))
    try:
        return shim.main()
    except Exception as exc:  # a shim must end with a status, never a traceback
        shim.log(f"failed: {exc!r}")
        return VM_GONE_STATUS


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # the relay's daemon threads may sit in blocking reads

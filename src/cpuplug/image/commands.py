"""The bodies of ``cpuplug image build``, ``cpuplug image qemu`` and ``cpuplug image ls``.

Human output uses ``rich``: a progress bar on stderr while an image builds, drawn only
when stderr is a terminal, so a log or a pipe gets the result and one-line errors and
nothing else.  ``--json`` output is stable for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cpuplug.image.arch import arch_named
from cpuplug.image.build import STEPS, BuildProgress, ensure_image
from cpuplug.image.qemu import ensure_qemu
from cpuplug.image.store import Image, ImageStore, cache_dir


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """``cpuplug image ls | head``: let cpuplug.cli treat it as every command does
        (exit 141, nothing on stderr); rich's own reaction is exit code 1."""
        raise BrokenPipeError


def _out() -> Console:
    """stdout; piped, wide enough that a path is never cut short with an ellipsis."""
    wide = None if sys.stdout.isatty() else 512
    return _Console(highlight=False, soft_wrap=True, width=wide)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cmd_build(args: argparse.Namespace) -> int:
    arch_named(args.arch)  # a usage error before anything is drawn
    err = Console(stderr=True, highlight=False)
    started, start = time.time(), time.monotonic()
    if not err.is_terminal:
        image = ensure_image(args.arch, cache=args.cache, rebuild=args.rebuild)
    else:
        with Progress(
            TextColumn("[bold]image[/bold]"),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task("", total=len(STEPS))

            def progress(p: BuildProgress) -> None:
                bar.update(task, completed=p.step - 1, description=p.message)

            image = ensure_image(
                args.arch, cache=args.cache, progress=progress, rebuild=args.rebuild
            )
    seconds = time.monotonic() - start
    if args.json:
        print(json.dumps(image.to_json(), indent=2, sort_keys=True))
        return 0
    how = f"built in {image.build_seconds:.1f} s" if image.built >= started else (
        f"cached, found in {seconds:.2f} s"
    )
    print(
        f"{image.arch} image {image.key}: kernel {image.kernel_version}, "
        f"{_mb(image.kernel.stat().st_size)} kernel + {_mb(image.initrd.stat().st_size)} "
        f"initramfs, {how}\n"
        f"  kernel   {image.kernel}\n"
        f"  initrd   {image.initrd}\n"
        f"  cmdline  {image.cmdline}\n"
        f"  firmware {image.firmware or '-'}\n"
        f"  modules  {' '.join(image.modules)}"
    )
    return 0


def cmd_qemu(args: argparse.Namespace) -> int:
    """Print the path of a runnable QEMU (steps on stderr when it is a terminal)."""
    arch_named(args.arch)
    err = Console(stderr=True, highlight=False)

    def progress(message: str) -> None:
        if err.is_terminal:
            err.print(f"[dim]qemu: {message}[/dim]")

    qemu = ensure_qemu(
        args.arch, version=args.version, cache=args.cache, progress=progress,
        refresh=args.refresh,
    )  # fmt: skip
    if args.json:
        print(json.dumps(qemu.record(), indent=2, sort_keys=True))
    else:
        print(qemu.binary)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    store = ImageStore(cache_dir(args.cache))
    images = store.list()
    if args.json:
        print(json.dumps([i.to_json() for i in images], indent=2, sort_keys=True))
        return 0
    if not images:
        _out().print(f"no images in {store.root} (cpuplug image build makes one)")
        return 0
    table = Table(box=None, header_style="bold")
    for col in ("KEY", "ARCH", "KERNEL", "FIRMWARE", "SIZE", "BUILT", "PATH"):
        table.add_column(col)
    for i in images:
        table.add_row(
            i.key, i.arch, i.kernel_version, i.firmware.name if i.firmware else "-",
            _mb(i.size), _age(i), str(i.directory),
        )
    _out().print(table)
    return 0


def _age(image: Image) -> str:
    age = time.time() - image.built
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{age / size:.0f}{unit} ago"
    return f"{age:.0f}s ago"

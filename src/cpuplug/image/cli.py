"""``cpuplug image build|ls``: the guest image from the command line.

Only the parsers live here, importing nothing heavy (every ``cpuplug`` invocation that
cannot tell its command builds all parties' parsers); the command bodies, with ``rich``,
are in :mod:`cpuplug.image.commands`, imported when one of them runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        func = getattr(importlib.import_module("cpuplug.image.commands"), name)
        return int(func(args))

    run.__name__ = name
    return run


def _cache(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="image cache directory (default $CPUPLUG_CACHE, /var/cache/cpuplug for root, "
        "else $XDG_CACHE_HOME/cpuplug or ~/.cache/cpuplug)",
    )


def add_parser(subparsers: Any) -> None:
    image = subparsers.add_parser(
        "image",
        help="build and list guest images (a Debian kernel + an initramfs running the agent)",
        description="Guest images for a real QEMU: a Debian kernel and an initramfs with "
        "busybox, python3 and cpuplug's guest agent (docs/image.md).",
    )
    sub = image.add_subparsers(dest="image_command", required=True, metavar="COMMAND")

    p = sub.add_parser("build", help="build the image for an architecture (cached)")
    p.add_argument(
        "--arch",
        metavar="ARCH",
        help="x86_64 or aarch64 (default: this host's architecture)",
    )
    _cache(p)
    p.add_argument("--rebuild", action="store_true", help="build even if the image is cached")
    p.add_argument("--json", action="store_true", help="print the image as JSON")
    p.set_defaults(func=_command("cmd_build"))

    p = sub.add_parser("ls", help="list the images in the cache")
    _cache(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command("cmd_ls"))

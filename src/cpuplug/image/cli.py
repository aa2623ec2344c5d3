"""``cpuplug image build|qemu|ls``: the guest image (and a QEMU) from the command line.

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
        help="build and list guest images (a Debian kernel + an initramfs running the agent) "
        "and fetch a QEMU",
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

    p = sub.add_parser(
        "qemu",
        help="unpack a QEMU other than the host's (e.g. 10.0 from backports) and print its path",
        description="Fetch qemu-system-<arch> of the version asked for from the host's apt "
        "sources plus <codename>-backports with a private apt, unpack it with the packages "
        "the host lacks into the cache (nothing is installed) and print the path to run: "
        "cpuplug run --hypervisor qemu --qemu PATH (docs/image.md).",
    )
    p.add_argument(
        "--arch",
        metavar="ARCH",
        help="guest architecture: x86_64 or aarch64 (default: this host's architecture)",
    )
    p.add_argument(
        "--version",
        metavar="V",
        help="QEMU version prefix, e.g. 10 or 10.0 (default: the newest offered)",
    )
    _cache(p)
    p.add_argument(
        "--refresh", action="store_true", help="update the private apt's package lists first"
    )
    p.add_argument("--json", action="store_true", help="print the QEMU's record as JSON")
    p.set_defaults(func=_command("cmd_qemu"))

    p = sub.add_parser("ls", help="list the images in the cache")
    _cache(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_command("cmd_ls"))

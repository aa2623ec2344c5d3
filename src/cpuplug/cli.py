"""The ``cpuplug`` command: one argparse tree, each party adds its own subcommands.

Errors that cpuplug raises on purpose become a one-line message on stderr and an
exit code (2 for usage errors, 1 otherwise); no traceback reaches a user.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cpuplug.errors import CpuplugError, UsageError

# Each module has ``add_parser(subparsers)`` which registers commands whose
# parsers carry ``func(args) -> int`` as a default.
_PARTS = ("cpuplug.acpi.cli", "cpuplug.vmm.cli", "cpuplug.runtime.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpuplug", description="ACPI-based vCPU hotplug for arm64 container sandboxes"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _PARTS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except UsageError as exc:
        print(f"cpuplug: error: {exc}", file=sys.stderr)
        return 2
    except CpuplugError as exc:
        print(f"cpuplug: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""The ``cpuplug`` command: one argparse tree, each party adds its own subcommands.

Errors that cpuplug raises on purpose become a one-line message on stderr and an
exit code (2 for usage errors, 1 otherwise); no traceback reaches a user.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from cpuplug.errors import CpuplugError, UsageError

# Each module has ``add_parser(subparsers)`` which registers the commands named
# here, whose parsers carry ``func(args) -> int`` as a default. The names let
# ``main`` import only the party a command belongs to: the acpi and vmm parsers
# pull in table builders, and every runtime command would otherwise pay for them.
_PARTS: dict[str, tuple[str, ...]] = {
    "cpuplug.acpi.cli": ("acpi",),
    "cpuplug.vmm.cli": ("vmm",),
    "cpuplug.runtime.cli": (
        "run", "update", "exec", "ps", "inspect", "events", "stop", "rm", "demo",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for ``command``'s party, or for every party when it is unknown."""
    parser = argparse.ArgumentParser(
        prog="cpuplug", description="ACPI-based vCPU hotplug for arm64 container sandboxes"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    owners = [name for name, commands in _PARTS.items() if command in commands]
    for name in owners or _PARTS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
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
    except BrokenPipeError:
        # ``cpuplug acpi dump DSDT.dat | head``: the reader left; that is not an
        # error to report. stdout is pointed at /dev/null so the interpreter's
        # final flush does not raise again, and the exit code is a SIGPIPE death's.
        _silence_stdout()
        return 128 + 13
    except OSError as exc:
        # An environment failure no command wrapped (full disk, EIO on a state
        # file): still one line, never a traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"cpuplug: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    return rc


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout already closed or not a real file
        pass


if __name__ == "__main__":
    sys.exit(main())

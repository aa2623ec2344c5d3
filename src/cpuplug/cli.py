"""The ``cpuplug`` command: one argparse tree, each party adds its own subcommands.

Errors that cpuplug raises on purpose become a one-line message on stderr and an
exit code (2 for usage errors, 1 otherwise); no traceback reaches a user.  argparse's
own errors follow the same rule (:class:`CpuplugArgumentParser`): one line, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from cpuplug.errors import CpuplugError, UsageError

# Each module has ``add_parser(subparsers)`` which registers the commands named
# here, whose parsers carry ``func(args) -> int`` as a default. The names let
# ``main`` import only the party a command belongs to: the acpi and vmm parsers
# pull in table builders, and every runtime command would otherwise pay for them.
_PARTS: dict[str, tuple[str, ...]] = {
    "cpuplug.acpi.cli": ("acpi",),
    "cpuplug.vmm.cli": ("vmm",),
    "cpuplug.image.cli": ("image",),
    "cpuplug.runtime.cli": (
        "run", "update", "exec", "ps", "inspect", "events", "stop", "rm", "demo",
    ),
}

_GLOBAL_ROOT = "--root"
"""The one option accepted before the command (``cpuplug --root DIR ps``), because runc
and docker put their global flags there; it belongs to the runtime's commands."""


class CpuplugArgumentParser(argparse.ArgumentParser):
    """argparse with cpuplug's error rule, and docker's reading of option values.

    Every parser of the tree is of this class (``add_subparsers`` gives subparsers
    their parent's class), so the parties' own ``add_parser`` code needs nothing.
    """

    def error(self, message: str) -> NoReturn:
        """One ``cpuplug: error: ...`` line and exit code 2, like every other usage error
        (argparse prints its whole usage block first, which buries the one line that
        matters; ``cpuplug CMD --help`` is there for the usage)."""
        command = self.prog.removeprefix("cpuplug").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"cpuplug: error: {where}{' '.join(message.split())}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        """Parse with every ``--option VALUE`` whose VALUE starts with ``-`` fused into
        ``--option=VALUE`` first.

        argparse takes ``--cpus --1`` or ``--cpu-quota -1e3`` for two options and fails
        with "expected one argument"; docker (pflag) gives an option that takes a value
        the next word, whatever it looks like, so the command's own validation says
        what is wrong with the value.  A next word that is itself one of this parser's
        options (``ps --root --json``) is left alone: that is a forgotten value.
        """
        argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._fuse_dash_values(argv), namespace)

    def _fuse_dash_values(self, argv: list[str]) -> list[str]:
        takes_value = {
            opt
            for a in self._actions
            if a.option_strings and a.nargs is None
            for opt in a.option_strings
        }
        known = set(self._option_string_actions)
        # After the first positional of a command whose positional swallows the rest
        # (run's and exec's CMD, a subcommand) every word belongs to someone else.
        swallows = any(
            not a.option_strings and a.nargs in (argparse.REMAINDER, argparse.PARSER)
            for a in self._actions
        )
        out: list[str] = []
        i = 0
        while i < len(argv):
            word = argv[i]
            if word == "--" or (swallows and not word.startswith("-")):
                return out + argv[i:]
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if (
                word in takes_value
                and nxt is not None
                and nxt != "--"
                and nxt.split("=", 1)[0] not in known
            ):
                if not nxt.startswith("-"):
                    out += [word, nxt]
                elif word.startswith("--"):
                    out.append(f"{word}={nxt}")
                else:
                    out.append(word + nxt)  # -oVALUE, argparse's attached short form
                i += 2
                continue
            out.append(word)
            i += 1
        return out


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for ``command``'s party, or for every party when it is unknown."""
    parser = CpuplugArgumentParser(
        prog="cpuplug", description="ACPI-based vCPU hotplug for arm64 container sandboxes"
    )
    parser.add_argument(
        _GLOBAL_ROOT,
        dest="global_root",
        metavar="DIR",
        help="state directory of the runtime commands (also accepted after the command, "
        "where it wins)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    owners = [name for name, commands in _PARTS.items() if command in commands]
    for name in owners or _PARTS:
        importlib.import_module(name).add_parser(sub)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word of ``argv``, past a global ``--root DIR``; None if unclear."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == _GLOBAL_ROOT:
            i += 2
        elif word.startswith(_GLOBAL_ROOT + "="):
            i += 1
        else:
            return None if word.startswith("-") else word
    return None


def _apply_global_root(args: argparse.Namespace) -> None:
    """``cpuplug --root A CMD [--root B]``: B if given, else A; refused for a command
    that has no state directory (``vmm``, ``acpi``) rather than silently ignored."""
    root = vars(args).pop("global_root", None)
    if root is None:
        return
    if "root" not in vars(args):
        raise UsageError(f"--root is an option of the runtime commands, not of {args.command}")
    if args.root is None:
        args.root = root


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the command is, so it cleans up as for Ctrl-C
    (``timeout``, systemd and a closed terminal send these, not SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _raise_terminated)
    try:
        _apply_global_root(args)
        rc: int = args.func(args)
    except UsageError as exc:
        print(f"cpuplug: error: {exc}", file=sys.stderr)
        return 2
    except CpuplugError as exc:
        print(f"cpuplug: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _quiet_interrupted_shutdown()
        return 130
    except Terminated as exc:
        _quiet_interrupted_shutdown()
        return 128 + exc.signum
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


def _quiet_interrupted_shutdown() -> None:
    """After an interrupt, nothing more reaches the user: an event loop (``qemu.qmp``)
    cut off mid-``await`` would otherwise print "Task exception was never retrieved"
    or "Exception ignored in: <coroutine ...>" blocks as the interpreter exits."""
    sys.unraisablehook = lambda _unraisable: None
    if "asyncio" in sys.modules:  # only then is there an event loop to quiet
        import logging

        logging.getLogger("asyncio").disabled = True


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout already closed or not a real file
        pass


if __name__ == "__main__":
    sys.exit(main())

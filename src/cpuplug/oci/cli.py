"""``cpuplug-runc``: runc's command line (1.1), each container a cpuplug sandbox VM.

Global options come before the command, as runc (urfave/cli) takes them, and a long
option may have one dash or two (``-root`` is ``--root``): ``--root``, ``--log``,
``--log-format text|json``, ``--systemd-cgroup``, ``--debug`` and runc's other globals
(accepted; cgroups on the host are not a sandbox's business), plus cpuplug's own
``--hypervisor builtin|qemu``, ``--config FILE`` and ``--sandbox-root DIR`` (docker
passes them through a runtime's ``runtimeArgs``). Every failure is one line on stderr
and, as a logrus ``error`` line, in ``--log`` (where containerd reads it back), with
runc's exit code 1; ``exec`` and ``run`` in the foreground exit with the process's
status.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from cpuplug.errors import CpuplugError
from cpuplug.oci.log import LogFormat, RuncLog
from cpuplug.oci.state import OciError, default_root

if TYPE_CHECKING:
    from cpuplug.oci.container import Containers

VERSION = "cpuplug-runc version 0.1.0\nspec: 1.0.2"
GLOBALS_WITH_VALUE = frozenset(
    {
        "--root",
        "--log",
        "--log-format",
        "--criu",
        "--rootless",
        "--hypervisor",
        "--config",
        "--sandbox-root",
    }
)

Command = Callable[[argparse.Namespace, "Containers"], int]


class Parser(argparse.ArgumentParser):
    """argparse whose errors are runc's: one line, exit code 1 (through :func:`main`)."""

    def error(self, message: str) -> NoReturn:
        raise OciError(" ".join(message.split()))


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None


def build_parser() -> Parser:
    p = Parser(prog="cpuplug-runc", add_help=True)
    p.add_argument("--root", help="state directory (default /run/cpuplug-runc)")
    p.add_argument("--log", help="log file (default: stderr)")
    p.add_argument("--log-format", default="text", help="text | json")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--systemd-cgroup", action="store_true", help="accepted")
    p.add_argument("--criu", help="accepted")
    p.add_argument("--rootless", help="accepted")
    p.add_argument("--hypervisor", help="builtin | qemu (cpuplug's; config's by default)")
    p.add_argument("--config", help="cpuplug's TOML config (Kata key names)")
    p.add_argument(
        "--sandbox-root",
        help="where the sandbox VMs' state goes (default $CPUPLUG_ROOT, /run/cpuplug)",
    )
    p.add_argument("-v", "--version", action="store_true")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, func: Command, help_text: str) -> Parser:
        c: Parser = sub.add_parser(name, help=help_text)
        c.set_defaults(func=func)
        return c

    for name, func, what in (
        ("create", cmd_create, "create a container (its sandbox VM; the process waits)"),
        ("run", cmd_run, "create and start a container"),
    ):
        c = command(name, func, what)
        c.add_argument("--bundle", "-b", default=".")
        c.add_argument("--console-socket")
        c.add_argument("--pid-file")
        c.add_argument("--no-pivot", action="store_true")
        c.add_argument("--no-new-keyring", action="store_true")
        c.add_argument("--preserve-fds", type=_int, default=0)
        if name == "run":
            c.add_argument("--detach", "-d", action="store_true")
            c.add_argument("--no-subreaper", action="store_true")
        c.add_argument("id")
    command("start", cmd_start, "start a created container's process").add_argument("id")
    command("state", cmd_state, "print a container's state (JSON)").add_argument("id")
    c = command("kill", cmd_kill, "send a signal to a container's init (--all: every process)")
    c.add_argument("--all", "-a", action="store_true")
    c.add_argument("id")
    c.add_argument("signal", nargs="?", default="SIGTERM")
    c = command("delete", cmd_delete, "remove a container (its VM and state)")
    c.add_argument("--force", "-f", action="store_true")
    c.add_argument("id")
    c = command("update", cmd_update, "change a container's CPU limits (hot-plugs vCPUs)")
    c.add_argument("--resources", "-r", help="LinuxResources JSON file, - for stdin")
    c.add_argument("--cpu-quota", type=_int)
    c.add_argument("--cpu-period", type=_int)
    c.add_argument("--cpuset-cpus")
    for ignored in ("--blkio-weight", "--cpu-share", "--cpu-rt-period", "--cpu-rt-runtime",
                    "--cpuset-mems", "--kernel-memory", "--kernel-memory-tcp", "--memory",
                    "--memory-reservation", "--memory-swap", "--pids-limit",
                    "--l3-cache-schema", "--mem-bw-schema"):  # fmt: skip
        c.add_argument(ignored, help="accepted, not a sandbox's business")
    c.add_argument("id")
    c = command("exec", cmd_exec, "run a process in a container")
    c.add_argument("--process", "-p")
    c.add_argument("--detach", "-d", action="store_true")
    c.add_argument("--pid-file")
    c.add_argument("--console-socket")
    c.add_argument("--tty", "-t", action="store_true")
    c.add_argument("--cwd")
    c.add_argument("--env", "-e", action="append", default=[])
    for ignored in ("--user", "-u", "--additional-gids", "-g", "--process-label",
                    "--apparmor", "--cap", "-c", "--cgroup"):  # fmt: skip
        if ignored.startswith("--"):
            c.add_argument(ignored, action="append", help="accepted")
        else:
            c.add_argument(ignored, dest=f"short_{ignored[1:]}", action="append", help="accepted")
    c.add_argument("--no-new-privs", action="store_true")
    c.add_argument("--ignore-paused", action="store_true")
    c.add_argument("--preserve-fds", type=_int, default=0)
    c.add_argument("id")
    c.add_argument("cmd", nargs=argparse.REMAINDER)
    c = command("ps", cmd_ps, "the host processes that stand for a container's")
    c.add_argument("--format", "-f", default="table")
    c.add_argument("id")
    c.add_argument("ps_args", nargs=argparse.REMAINDER)
    command("pause", cmd_pause, "freeze a container (its VM)").add_argument("id")
    command("resume", cmd_resume, "thaw a paused container").add_argument("id")
    c = command("list", cmd_list, "list containers")
    c.add_argument("--format", "-f", default="table")
    c.add_argument("--quiet", "-q", action="store_true")
    command("features", cmd_features, "what this runtime supports (JSON)")
    return p


def _long_names(parser: argparse.ArgumentParser) -> set[str]:
    """Every ``--name`` of ``parser`` and its commands, without the dashes."""
    names: set[str] = set()
    for action in parser._actions:
        names.update(o[2:] for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names |= _long_names(sub)
    return names


def _long_flags(argv: list[str], names: set[str]) -> list[str]:
    """runc (Go's flag package) takes ``-root`` for ``--root``: give such words two dashes
    (only known option names: ``sh -xc`` after an exec's id stays as it is)."""
    out: list[str] = []
    for i, word in enumerate(argv):
        if word == "--":
            return out + argv[i:]
        name = word.split("=", 1)[0]
        if name.startswith("-") and not name.startswith("--") and name[1:] in names:
            word = "-" + word
        out.append(word)
    return out


# ---------------------------------------------------------------------------- commands


def _path(text: str | None) -> Path | None:
    return Path(text).absolute() if text else None


def cmd_create(args: argparse.Namespace, c: Containers) -> int:
    c.create(args.id, Path(args.bundle), _path(args.pid_file), _path(args.console_socket))
    return 0


def cmd_run(args: argparse.Namespace, c: Containers) -> int:
    return c.run(
        args.id, Path(args.bundle), _path(args.pid_file), _path(args.console_socket), args.detach
    )


def cmd_start(args: argparse.Namespace, c: Containers) -> int:
    c.start(args.id)
    return 0


def cmd_state(args: argparse.Namespace, c: Containers) -> int:
    print(json.dumps(c.state(args.id), indent=2))
    return 0


def cmd_kill(args: argparse.Namespace, c: Containers) -> int:
    from cpuplug.oci.signals import parse_signal

    c.kill(args.id, parse_signal(args.signal), args.all)
    return 0


def cmd_delete(args: argparse.Namespace, c: Containers) -> int:
    c.delete(args.id, args.force)
    return 0


def cmd_update(args: argparse.Namespace, c: Containers) -> int:
    from cpuplug.oci.spec import cpu_resources, read_update

    if args.resources is not None:  # runc: then every other option is ignored
        if args.resources == "-":
            text = sys.stdin.read()
        else:
            try:
                text = Path(args.resources).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise OciError(f"cannot read {args.resources}: {exc}") from None
        resources = read_update(text)
    else:
        cpu = {"quota": args.cpu_quota, "period": args.cpu_period, "cpus": args.cpuset_cpus}
        resources = cpu_resources(cpu, "update")
    c.update(args.id, resources)
    return 0


def cmd_exec(args: argparse.Namespace, c: Containers) -> int:
    from cpuplug.oci.spec import Process, read_process_file

    if args.process is not None:
        process = read_process_file(Path(args.process))
    else:
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            raise OciError("exec needs --process or a command")
        env = args.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        process = Process(list(cmd), env, args.cwd or "/", args.tty)
    return c.exec(
        args.id,
        process,
        detach=args.detach,
        pid_file=_path(args.pid_file),
        console_socket=_path(args.console_socket),
    )


def cmd_ps(args: argparse.Namespace, c: Containers) -> int:
    pids = c.ps(args.id)
    if args.format == "json":
        print(json.dumps(pids))
        return 0
    if args.format != "table":
        raise OciError(f"invalid format option: {args.format}")
    ps_args = args.ps_args[1:] if args.ps_args[:1] == ["--"] else args.ps_args
    try:
        out = subprocess.run(
            ["ps", *(ps_args or ["-ef"])], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise OciError(f"ps: {exc}") from None
    lines = out.splitlines()
    if not lines:
        return 0
    header = lines[0].split()
    col = header.index("PID") if "PID" in header else 1
    print(lines[0])
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > col and fields[col].isdecimal() and int(fields[col]) in pids:
            print(line)
    return 0


def cmd_pause(args: argparse.Namespace, c: Containers) -> int:
    c.pause(args.id)
    return 0


def cmd_resume(args: argparse.Namespace, c: Containers) -> int:
    c.resume(args.id)
    return 0


def cmd_list(args: argparse.Namespace, c: Containers) -> int:
    states = c.list_states()
    if args.quiet:
        for s in states:
            print(s["id"])
        return 0
    if args.format == "json":
        print(json.dumps(states))
        return 0
    if args.format != "table":
        raise OciError(f"invalid format option: {args.format}")
    rows = [["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]]
    for s in states:
        rows.append([s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_features(_args: argparse.Namespace, c: Containers) -> int:
    print(json.dumps(c.features(), indent=4))
    return 0


# ---------------------------------------------------------------------------- main


def _containers(args: argparse.Namespace, log: RuncLog) -> Containers:
    from cpuplug.oci.container import Containers
    from cpuplug.runtime.config import load_config

    config = load_config(args.config).with_overrides(hypervisor=args.hypervisor)
    root = Path(args.root).absolute() if args.root else default_root()
    sandboxes = Path(args.sandbox_root).absolute() if args.sandbox_root else None
    return Containers(root, config, log, sandboxes)


def _early_log(words: list[str]) -> RuncLog:
    """The log as the global options before the command name it, read leniently, so a
    command line argparse refuses is still reported there."""
    given: dict[str, str] = {}
    i = 0
    while i < len(words) and words[i].startswith("-"):
        name, eq, value = words[i].partition("=")
        if name in GLOBALS_WITH_VALUE and not eq and i + 1 < len(words):
            i += 1
            value = words[i]
        given[name] = value
        i += 1
    path = given.get("--log")
    try:
        fmt = LogFormat(given.get("--log-format", "text"))
    except ValueError:
        return RuncLog()  # no format to write the file in: stderr only
    return RuncLog(Path(path) if path else None, fmt)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    log = RuncLog()
    try:
        parser = build_parser()
        words = _long_flags(words, _long_names(parser))
        log = _early_log(words)
        args: Any = parser.parse_args(words)
        try:
            fmt = LogFormat(args.log_format)
        except ValueError:
            raise OciError(f"invalid log-format: {args.log_format}") from None
        log = RuncLog(Path(args.log) if args.log else None, fmt, args.debug)
        if args.version:
            print(VERSION)
            return 0
        if args.command is None:
            raise OciError("no command given (create, start, state, kill, delete, ...)")
        log.debug(f"cpuplug-runc {' '.join(words)}")
        return int(args.func(args, _containers(args, log)))
    except CpuplugError as exc:
        message = " ".join(str(exc).split())
        log.error(message)
        print(message, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # an environment failure no command wrapped: still one line
        where = f"{exc.filename}: " if exc.filename else ""
        message = f"{where}{exc.strerror or exc}"
        log.error(message)
        print(message, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The top-level command: each party registers exactly the commands ``cli._PARTS`` names,
and a runtime command imports only what it uses (issue 8 §4)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cpuplug import cli
from cpuplug.runtime import commands as runtime_commands


@pytest.mark.parametrize("module", sorted(cli._PARTS))
def test_parts_name_the_commands_their_module_registers(module: str) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(module).add_parser(sub)
    assert tuple(sub.choices) == cli._PARTS[module]


def test_unknown_command_lists_every_party(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for commands in cli._PARTS.values():
        for name in commands:
            assert repr(name) in err


# --------------------------------------------------------------------------- imports

_PROBE = """
import json, sys
from cpuplug.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
"""
"""Runs one ``cpuplug`` command in a fresh interpreter, then lists what it imported."""

_HEAVY = (
    "rich",
    "qemu",
    "asyncio",
    "cpuplug.acpi.tables",
    "cpuplug.acpi.virt",
    "tomllib",
    "cpuplug.runtime.bundle",
    "cpuplug.runtime.qmp_client",
    "cpuplug.runtime.hypervisors",
)
"""What a runtime command must not import before it uses it: ``rich`` renders tables
and markup, ``qemu.qmp`` (with ``asyncio``) opens QMP connections, the ACPI table code
is the VMM's and the guest's, ``tomllib`` reads a config file (``run``), the bundle
reader serves ``run --bundle``.  Together they were over half of the CLI's start-up."""


def _imported_by(argv: list[str], root: Path) -> tuple[int, set[str]]:
    proc = subprocess.run(
        # --root right after the command: at the end it would join exec's CMD.
        [sys.executable, "-c", _PROBE, argv[0], "--root", str(root), *argv[1:]],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert proc.stdout, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    return int(report["rc"]), set(report["modules"])


def _loaded(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


@pytest.mark.parametrize(
    "argv",
    [
        ["ps", "--json"],
        ["update", "--cpus", "2", "nosuch"],
        ["exec", "nosuch", "--", "nproc"],
        ["inspect", "nosuch", "--json"],
        ["events", "nosuch"],
        ["stop", "nosuch"],
        ["rm", "nosuch"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_runtime_commands_import_nothing_heavy_before_they_use_it(
    argv: list[str], tmp_path: Path
) -> None:
    # The state of a sandbox is read only after every module-level import is done,
    # so an unknown sandbox (or an empty root for ps) shows a command's whole import
    # chain up to the point where it would open a connection.
    rc, modules = _imported_by(argv, tmp_path)
    assert rc == (0 if argv[0] == "ps" else 2)
    assert "cpuplug.runtime.sandbox" in modules  # the command really ran
    heavy = {h: _loaded(modules, h) for h in _HEAVY}
    assert {h: loaded for h, loaded in heavy.items() if loaded} == {}


def test_ps_table_still_renders_with_rich(tmp_path: Path) -> None:
    """The other side of the probe above: rich arrives when a table is printed."""
    rc, modules = _imported_by(["ps"], tmp_path)
    assert rc == 0
    assert "rich.table" in modules
    assert not _loaded(modules, "qemu")


def test_a_plain_line_is_printed_without_rich() -> None:
    line = "b: vCPUs 2 -> 3 (added 2), quota 200000/100000, 14.2 ms"
    probe = (
        "import sys\n"
        "from cpuplug.runtime.commands import _say\n"
        f"_say({line!r})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "80"},
        timeout=60,
        check=True,
    )
    assert proc.stdout == f"{line}\n[]\n"


_LINES = [
    "b: vCPUs 2 -> 3 (added 2), quota 200000/100000, 14.2 ms",
    "b: vCPUs unchanged at 2, quota unlimited, 0.9 ms  ",
    "n" * 64 + ": vCPUs 2 -> 4 (added 2,3), quota 300000/100000, 15.1 ms",
    "[yellow]warning:[/yellow] target 9 clamped to maxcpus 4",
    "w: a :smile: here",
    "w: vCPUs 2 → 3",
    "x" * 80,
    "x" * 81,
]


@pytest.mark.parametrize("columns", [None, "80", "60", "0", "200"])
@pytest.mark.parametrize("stderr", [False, True], ids=["stdout", "stderr"])
def test_say_prints_what_rich_prints(
    columns: str | None,
    stderr: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``_say`` skips rich only where rich would print the text unchanged."""
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    console = runtime_commands._err() if stderr else runtime_commands._out()
    for line in _LINES:
        console.print(line)
        by_rich = capsys.readouterr()
        runtime_commands._say(line, stderr=stderr)
        assert capsys.readouterr() == by_rich, line

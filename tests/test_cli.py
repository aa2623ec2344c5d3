"""The top-level command: each party registers exactly the commands ``cli._PARTS`` names."""

from __future__ import annotations

import argparse
import importlib

import pytest

from cpuplug import cli


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

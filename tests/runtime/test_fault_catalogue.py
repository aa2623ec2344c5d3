"""The fault catalogue: the defects of issue 8, found by adversarial use, one section each.

Every test here failed on the code the defect was reported against and names the
defect id and what happened then in its docstring.  The point of each is what a user
sees, so they go through ``cpuplug.cli.main`` (or a subprocess where the process
boundary matters): the exit code and a single ``cpuplug: error:`` line, never a
traceback or argparse's usage dump.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cpuplug.cli import main

SRC = Path(__file__).parents[2] / "src"


def cpuplug(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``cpuplug ARGV`` in process, as its user sees it: exit code, stdout, stderr.

    argparse ends with ``SystemExit``; that is an exit code like any other here.
    """
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(err: str) -> str:
    """The whole of stderr is one ``cpuplug: error: ...`` line; returns it."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cpuplug: error: "), err
    return lines[0]


@pytest.fixture(autouse=True)
def no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No host config file leaks into these tests (the default path need not exist)."""
    monkeypatch.setenv("CPUPLUG_CONFIG", str(tmp_path / "no-such-config.toml"))


# ======================================================================== D4: deep TOML


def test_d4_deeply_nested_config_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """D4: a config nested 5000 levels deep (``a=`` + ``[`` * 5000).

    Before: tomllib's recursive descent hit the recursion limit and ``cpuplug run``
    died with a RecursionError and ~3000 lines of traceback.
    """
    config = tmp_path / "deep.toml"
    config.write_text("a=" + "[" * 5000 + "\n")
    rc, _, err = cpuplug(
        ["run", "--root", str(tmp_path / "root"), "--config", str(config), "--", "true"], capsys
    )
    assert rc == 2
    line = assert_one_error_line(err)
    assert str(config) in line and "nested too deeply" in line
    assert not (tmp_path / "root").exists()


# ======================================================================== D9: unreadable config


@pytest.mark.parametrize("kind", ["not-utf8", "directory"])
def test_d9_unreadable_config_is_a_usage_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """D9: ``--config`` naming a non-UTF-8 file or a directory.

    Before: exit code 1 (an environment failure) with Python's codec/errno wording,
    though the user simply named the wrong file.
    """
    config = tmp_path / "config.toml"
    if kind == "directory":
        config.mkdir()
    else:
        config.write_bytes(b"default_vcpus = 1 # \xff\xfe\n")
    rc, _, err = cpuplug(
        ["run", "--root", str(tmp_path / "root"), "--config", str(config), "--", "true"], capsys
    )
    assert rc == 2
    line = assert_one_error_line(err)
    assert str(config) in line
    assert ("is a directory" if kind == "directory" else "not UTF-8") in line

"""scripts/build-qemu-arm64-hotplug on bad input: one line, exit 1, nothing left behind.

The build itself (minutes) is exercised by tests/e2e/test_qemu_arm64_hotplug.py; these
run in a second each and need neither the RFC's source nor the build dependencies.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.harness.cli import ROOT

BUILD = ROOT / "scripts" / "build-qemu-arm64-hotplug"


def build(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUILD), *args], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "CPUPLUG_CACHE": str(cache)},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "usage: scripts/build-qemu-arm64-hotplug SOURCE"),
        (("--bogus",), "unknown option --bogus"),
        (("/nonexistent/rfc",), "/nonexistent/rfc is neither a folder with qemu-rfc-*.tar.xz"),
        (("https://example.invalid/qemu.git",), "a git URL needs a REF"),
        (("a", "b", "c"), "too many arguments: c"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    r = build(*args, cache=tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and says in r.stderr, r.stderr


def test_a_folder_without_the_subproject_tarball_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "qemu-rfc-v5-x.tar.xz").write_bytes(b"")
    r = build(str(src), cache=tmp_path / "cache")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "has no keycodemapdb-*.tar.xz" in r.stderr


def test_a_corrupt_tarball_fails_in_one_line_and_leaves_no_build(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "qemu-rfc-v5-x.tar.xz").write_bytes(b"not xz")
    (src / "keycodemapdb-x.tar.xz").write_bytes(b"not xz")
    cache = tmp_path / "cache"
    r = build(str(src), cache=cache)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and lines, r.stderr
    # (as root on a fresh machine the build dependencies are installed first, and said)
    assert all(line.startswith("build-qemu-arm64-hotplug: ") for line in lines), r.stderr
    assert "cannot unpack" in lines[-1] or "missing build dependencies" in lines[-1]
    left = sorted(p.name for p in (cache / "qemu-arm64-hotplug").iterdir())
    assert left == [".lock"], left

"""The ``cpuplug`` command as a user runs it: a subprocess against a private state root.

The ``cli`` fixture (registered in tests/conftest.py) yields a :class:`Cli` whose
root is removed afterwards; every sandbox left in it is ``rm -f``-ed and any VMM
that survives that is killed and reported, so a failing test still leaves nothing
running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cpuplug.runtime.process import process_alive

ROOT = Path(__file__).resolve().parents[2]


class Cli:
    """Runs ``cpuplug`` subcommands with ``--root`` pointing at a private directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(
        self, cmd: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "cpuplug", cmd, "--root", str(self.root), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            check=False,
            cwd=ROOT,
        )

    def ok(self, cmd: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        proc = self(cmd, *args, **kw)
        assert proc.returncode == 0, f"{cmd} {args}: rc={proc.returncode}\n{proc.stderr}"
        return proc

    def nproc(self, name: str) -> int:
        return int(self.ok("exec", name, "--", "nproc").stdout)

    def cat(self, name: str, path: str) -> str:
        return self.ok("exec", name, "--", "cat", path).stdout.strip()

    def inspect(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self.ok("inspect", name, "--json").stdout))


@contextlib.contextmanager
def private_cli() -> Iterator[Cli]:
    """A :class:`Cli` on a fresh root; everything started in it is gone afterwards."""
    # short path: unix socket paths must fit in 108 bytes
    root = Path(tempfile.mkdtemp(prefix="cpe", dir="/tmp"))
    c = Cli(root)
    try:
        yield c
    finally:
        pids = []
        for state in root.glob("*/state.json"):
            pids.append(json.loads(state.read_text()).get("vmm_pid"))
            c("rm", "-f", state.parent.name, timeout=60)
        leftovers = [p.name for p in root.iterdir()]
        shutil.rmtree(root, ignore_errors=True)
        assert not leftovers, f"sandboxes left behind: {leftovers}"
        alive = [pid for pid in pids if pid and process_alive(pid, None)]
        for pid in alive:  # never leave a VMM running, even when the test fails
            os.kill(pid, 9)
        assert not alive, f"VMM processes survived rm -f: {alive}"


@pytest.fixture
def cli() -> Iterator[Cli]:
    """A :class:`Cli` on a fresh root (:func:`private_cli`)."""
    with private_cli() as c:
        yield c

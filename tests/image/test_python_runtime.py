"""Bytecode compiled on the host for the guest: only when the magic numbers agree, and
loadable as a sourceless module."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import sysconfig
from pathlib import Path

from cpuplug.image.python_runtime import guest_magic, host_magic, pyc


def test_guest_magic_is_read_from_its_stdlib(tmp_path: Path) -> None:
    here = Path(sysconfig.get_paths()["stdlib"]) / "importlib" / "_bootstrap_external.py"
    stdlib = tmp_path / "stdlib"
    (stdlib / "importlib").mkdir(parents=True)
    (stdlib / "importlib" / "_bootstrap_external.py").write_bytes(here.read_bytes())
    assert guest_magic(stdlib) == host_magic()
    (stdlib / "importlib" / "_bootstrap_external.py").write_text(
        "MAGIC_NUMBER = (3413).to_bytes(2, 'little') + b'\\r\\n'\n")
    assert guest_magic(stdlib) == (3413).to_bytes(2, "little") + b"\r\n"
    assert guest_magic(tmp_path / "none") is None


def test_pyc_imports_without_its_source_and_names_the_guest_path(tmp_path: Path) -> None:
    source = b"import sys\nVALUE = 42\ndef where():\n    return where.__code__.co_filename\n"
    (tmp_path / "probe_mod.pyc").write_bytes(pyc(source, "/usr/lib/python3.11/probe_mod.py"))
    proc = subprocess.run(
        [sys.executable, "-c", "import probe_mod; print(probe_mod.VALUE, probe_mod.where())"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        env={"PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["42", "/usr/lib/python3.11/probe_mod.py"]


def test_pyc_is_hash_based_and_unchecked() -> None:
    data = pyc(b"x = 1\n", "/x.py")
    assert data[:4] == host_magic()
    assert int.from_bytes(data[4:8], "little") == 0b01
    assert data[8:16] == importlib.util.source_hash(b"x = 1\n")

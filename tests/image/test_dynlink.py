"""Shared libraries as the guest's ld.so finds them, inside the staging root only."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpuplug.image.dynlink import Linker, resolve
from cpuplug.image.errors import ImageError
from tests.image.elfs import make_elf

SEARCH = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib")


def _root(tmp_path: Path) -> Path:
    lib = tmp_path / "lib" / "x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (tmp_path / "lib64").mkdir()
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "x86_64-linux-gnu").mkdir(parents=True)
    (lib / "ld-linux-x86-64.so.2").write_bytes(make_elf(etype=3))
    # The package's absolute symlink points into the guest, not at the host's loader.
    (tmp_path / "lib64" / "ld-linux-x86-64.so.2").symlink_to(
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    (lib / "libc.so.6").write_bytes(make_elf(etype=3))
    (lib / "libz.so.1.2.13").write_bytes(make_elf(needed=["libc.so.6"], etype=3))
    (lib / "libz.so.1").symlink_to("libz.so.1.2.13")
    (tmp_path / "usr" / "lib" / "x86_64-linux-gnu" / "libffi.so.8").write_bytes(
        make_elf(needed=["libc.so.6"], etype=3))
    (tmp_path / "usr" / "bin" / "prog").write_bytes(
        make_elf(needed=["libz.so.1", "libc.so.6"], interp="/lib64/ld-linux-x86-64.so.2",
                 etype=3))
    (tmp_path / "usr" / "lib" / "ext.so").write_bytes(
        make_elf(needed=["libffi.so.8", "libnope.so.1"], etype=3))
    return tmp_path


def test_resolve_follows_absolute_links_inside_the_root(tmp_path: Path) -> None:
    root = _root(tmp_path)
    assert resolve(root, "/lib64/ld-linux-x86-64.so.2") == (
        ["/lib64/ld-linux-x86-64.so.2"], "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    assert resolve(root, "/lib/x86_64-linux-gnu/../x86_64-linux-gnu/libz.so.1") == (
        ["/lib/x86_64-linux-gnu/libz.so.1"], "/lib/x86_64-linux-gnu/libz.so.1.2.13")
    assert resolve(root, "/no/such") == ([], "/no/such")


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("/a")
    with pytest.raises(ImageError, match="too many levels"):
        resolve(tmp_path, "/a")


def test_a_program_brings_its_loader_libraries_and_links(tmp_path: Path) -> None:
    linker = Linker(_root(tmp_path), SEARCH)
    linker.require("/usr/bin/prog", program=True)
    assert sorted(linker.files) == [
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libz.so.1.2.13",
        "/lib64/ld-linux-x86-64.so.2",
        "/usr/bin/prog",
    ]
    assert linker.files["/lib64/ld-linux-x86-64.so.2"] == tmp_path / "lib64/ld-linux-x86-64.so.2"


def test_an_extension_with_a_missing_library_is_known_missing(tmp_path: Path) -> None:
    linker = Linker(_root(tmp_path), SEARCH)
    assert linker.missing("/usr/lib/ext.so") == ["libnope.so.1"]
    with pytest.raises(ImageError, match=r"needs libnope\.so\.1, which none of"):
        linker.require("/usr/lib/ext.so")
    assert linker.files == {}

"""Pieces of the build that need no apt: busybox's applet links, the builder's digest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cpuplug.image import build
from cpuplug.image.initramfs import Initramfs


def test_busybox_of_another_architecture_gets_no_links(tmp_path: Path) -> None:
    exe = tmp_path / "bin" / "busybox"
    exe.parent.mkdir()
    exe.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 200)  # not runnable here
    exe.chmod(0o755)
    tree = Initramfs()
    build._busybox(tree, tmp_path)
    assert tree.paths() == ["/bin", "/bin/busybox"]  # /init runs busybox --install -s


def test_busybox_that_runs_here_gets_a_link_per_applet(tmp_path: Path) -> None:
    host = shutil.which("busybox")
    if host is None:
        pytest.skip("no busybox on this host")
    (tmp_path / "bin").mkdir()
    shutil.copy(host, tmp_path / "bin" / "busybox")
    tree = Initramfs()
    tree.file("/usr/bin/python3", b"ours")  # a file we ship wins over an applet link
    build._busybox(tree, tmp_path)
    paths = tree.paths()
    assert "/bin/sh" in paths and "/sbin/insmod" in paths
    assert "/linuxrc" not in paths


def test_builder_digest_covers_the_builder_not_its_command_line() -> None:
    digest = build.builder_digest()
    assert len(digest) == 64 and digest == build.builder_digest()
    # the command line, and the QEMU fetched for the host (qemu.py), shape no image
    assert {"cli.py", "commands.py", "qemu.py"} == build._NOT_BUILDER

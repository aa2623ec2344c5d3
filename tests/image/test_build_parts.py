"""Pieces of the build that need no apt: busybox's applet links, the builder's digest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cpuplug.image import build
from cpuplug.image.arch import ARCHES, KERNEL_CMDLINE, Firmware
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


def test_each_arch_declares_its_kernels_suite_firmware_and_command_line() -> None:
    x86, arm = ARCHES["x86_64"], ARCHES["aarch64"]
    # x86_64 is as it was: bookworm's cloud kernel, SeaBIOS, the same command line.
    assert (x86.kernel_package, x86.kernel_suite, x86.firmware) == (
        "linux-image-cloud-amd64", "", None)
    assert x86.cmdline == KERNEL_CMDLINE == "console=ttyS0 quiet panic=-1"
    # aarch64: backports' kernel (ACPI vCPU hotplug), through UEFI, ACPI forced.
    assert (arm.kernel_package, arm.kernel_suite) == ("linux-image-arm64", "backports")
    assert arm.firmware == Firmware(
        "qemu-efi-aarch64", "usr/share/qemu-efi-aarch64/QEMU_EFI.fd", "QEMU_EFI.fd")
    assert arm.cmdline == "console=ttyAMA0 quiet panic=-1 acpi=force"


class _Resolved(Exception):
    pass


@pytest.mark.parametrize(("arch", "suite", "arch_all"), [
    ("x86_64", "", ()), ("aarch64", "backports", ("qemu-efi-aarch64",)),
])
def test_ensure_image_asks_apt_for_the_arch_s_kernel_suite_and_firmware(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, suite: str,
    arch_all: tuple[str, ...],
) -> None:
    asked: dict[str, object] = {}

    class FakeApt:
        def __init__(self, deb_arch: str, private_dir: Path | None = None,
                     kernel_suite: str = "") -> None:
            asked.update(deb_arch=deb_arch, kernel_suite=kernel_suite)

        def resolve_memo(self, kernel: str, names: object, memo: Path,
                         arch_all: tuple[str, ...] = ()) -> list[object]:
            asked.update(kernel=kernel, arch_all=tuple(arch_all))
            raise _Resolved

    monkeypatch.setattr(build, "Apt", FakeApt)
    with pytest.raises(_Resolved):
        build.ensure_image(arch, cache=tmp_path)
    assert asked["kernel_suite"] == suite and asked["arch_all"] == arch_all
    assert asked["kernel"] == ARCHES[arch].kernel_package

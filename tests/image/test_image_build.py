"""The real x86_64 image: built from Debian's archive with apt-get, checked file by file,
found again in the cache, and booted under QEMU (TCG) when QEMU is installed.

Needs apt-get and a reachable Debian archive; skipped without apt, and failed instead
when CI=true, so the image can never silently stop being built.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cpuplug.image import STEPS, BuildProgress, Image, build, ensure_image
from cpuplug.image.agent_sources import PACKAGE, agent_sources
from cpuplug.image.apt import TOOLS
from cpuplug.image.cpio import Entry, read_newc
from cpuplug.image.elf import Elf
from cpuplug.image.errors import ImageError
from cpuplug.image.guest_init import MARKER, SELFTEST

pytestmark = pytest.mark.slow

MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
           "virtio_pci", "virtio_console", "virtio_blk", "virtio_rng")
"""The load order on bookworm's 6.1 cloud kernel (docs/image.md)."""

BOOT_TIMEOUT = 240.0
"""Seconds a TCG boot may take to reach the agent on a loaded 2-CPU machine (about 3 s
when idle)."""


def _require_amd64_apt() -> None:
    reason = None
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (the image is built with apt)"
    else:
        arches = subprocess.run(
            ["sh", "-c", "dpkg --print-architecture; dpkg --print-foreign-architectures"],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout.split()
        if "amd64" not in arches:
            reason = "dpkg is not configured for amd64 packages"
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the x86_64 image must be built in CI: {reason}")
    pytest.skip(reason)


class Built:
    def __init__(self, image: Image, steps: list[BuildProgress], seconds: float) -> None:
        self.image = image
        self.steps = steps
        self.seconds = seconds
        self.entries = {e.path: e for e in read_newc(gzip.decompress(image.initrd.read_bytes()))}


@pytest.fixture(scope="module", autouse=True)
def frozen_sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The images of this module are built from a snapshot of the cpuplug package: other
    work in the same tree edits the guest's files, and each edit rightly makes a new
    image, which would make "found again in the cache" depend on timing."""
    snapshot = tmp_path_factory.mktemp("sources") / "cpuplug"
    shutil.copytree(PACKAGE, snapshot, ignore=shutil.ignore_patterns("__pycache__"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "agent_sources", lambda roots: agent_sources(roots, snapshot))
        yield snapshot


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    _require_amd64_apt()
    cache = tmp_path_factory.mktemp("image-cache")
    steps: list[BuildProgress] = []
    start = time.monotonic()
    try:
        image = ensure_image("x86_64", cache=cache, progress=steps.append)
    except ImageError as exc:
        if os.environ.get("CI", "").lower() == "true":
            raise
        pytest.skip(f"cannot build here: {exc}")
    return Built(image, steps, time.monotonic() - start)


def test_build_reports_every_step_and_records_the_image(built: Built) -> None:
    image = built.image
    assert built.steps[0].step == 1
    assert sorted({p.step for p in built.steps}) == list(range(1, len(STEPS) + 1))
    assert all(p.steps == len(STEPS) for p in built.steps)
    assert image.arch == "x86_64"
    assert re.fullmatch(r"6\.1\.0-\d+-cloud-amd64", image.kernel_version), image.kernel_version
    assert image.cmdline == "console=ttyS0 quiet panic=-1"
    assert image.modules == MODULES
    names = [p.split("=", 1)[0] for p in image.packages]
    assert names[0] == f"linux-image-{image.kernel_version}"
    assert {"busybox-static", "python3.11-minimal", "libc6"} <= set(names)
    # A bzImage carries "HdrS" at 0x202; the initramfs is gzip.
    assert image.kernel.read_bytes()[0x202:0x206] == b"HdrS"
    assert image.initrd.read_bytes()[:2] == b"\x1f\x8b"
    assert image.initrd.stat().st_size < 16_000_000, "the initramfs grew: keep it lean"


def _entry(built: Built, path: str) -> Entry:
    assert path in built.entries, path
    return built.entries[path]


def test_initramfs_holds_init_busybox_python_modules_and_cpuplug(built: Built) -> None:
    init = _entry(built, "init")
    assert init.mode == stat.S_IFREG | 0o755 and bytes(init.data).startswith(b"#!/bin/busybox sh")
    assert _entry(built, "dev/console").rdev == (5, 1)
    assert _entry(built, "bin/sh").data == b"/bin/busybox"
    assert _entry(built, "sbin/insmod").data == b"/bin/busybox"
    assert _entry(built, "usr/bin/python3").data == b"python3.11"
    assert _entry(built, "lib64/ld-linux-x86-64.so.2").mode & stat.S_IFLNK
    release = built.image.kernel_version
    kos = sorted(p for p in built.entries if p.endswith(".ko"))
    assert sorted(Path(p).stem.replace("-", "_") for p in kos) == sorted(MODULES)
    assert all(p.startswith(f"lib/modules/{release}/kernel/") for p in kos)
    stdlib = "usr/lib/python3.11"
    for module in ("os", "encodings/__init__", "json/__init__", "subprocess", "threading"):
        assert f"{stdlib}/{module}.pyc" in built.entries or f"{stdlib}/{module}.py" in built.entries
    assert not [p for p in built.entries if p.startswith((f"{stdlib}/test/", f"{stdlib}/idlelib"))]
    dynload = {Path(p).name.split(".")[0] for p in built.entries if "/lib-dynload/" in p}
    assert {"_json", "_ctypes", "_lzma", "_bz2", "_asyncio"} <= dynload
    assert not dynload & {"_ssl", "_sqlite3", "_curses", "readline", "_testcapi"}
    for rel in ("__init__.py", "errors.py", "agent_protocol.py", "strict_json.py",
                "cpuhp_abi.py", "psci_abi.py", "hw.py", "guest/__init__.py", "guest/agent.py"):
        assert f"usr/lib/cpuplug/cpuplug/{rel}" in built.entries, rel
    assert "usr/lib/cpuplug/cpuplug/guest/__pycache__/agent.cpython-311.pyc" in built.entries or (
        f"{stdlib}/os.py" in built.entries  # a host that cannot compile for the guest
    )


def test_every_program_and_library_finds_what_it_needs_in_the_image(built: Built) -> None:
    files = {p: e for p, e in built.entries.items() if stat.S_ISREG(e.mode)}
    names = {Path(p).name for p in built.entries if p.startswith(("lib/", "usr/lib/", "lib64/"))}
    checked = 0
    for path, entry in files.items():
        data = bytes(entry.data)
        if not data.startswith(b"\x7fELF") or path.endswith(".ko"):
            continue
        elf = Elf(data, path)
        missing = [soname for soname in elf.needed if soname not in names]
        assert not missing, f"/{path} needs {missing}"
        if elf.interpreter:
            assert elf.interpreter.lstrip("/") in built.entries
        checked += 1
    assert checked > 20


def test_the_second_call_finds_it_in_the_cache(built: Built) -> None:
    start = time.monotonic()
    again = ensure_image("x86_64", cache=built.image.directory.parent.parent)
    assert time.monotonic() - start < 2.0
    assert again == built.image


# ------------------------------------------------------------------------------- boot


@contextlib.contextmanager
def _qemu(argv: list[str], log: Path) -> Iterator[Path]:
    """QEMU running ``argv`` with its console in ``log``; stopped and reaped afterwards,
    whatever happened."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        yield log
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        assert proc.poll() is not None


def _devices(tmp_path: Path) -> list[str]:
    """The devices the runtime will give the guest: its agent port, a disk, entropy."""
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    return [
        "-chardev", "null,id=agent", "-device", "virtio-serial-pci",
        "-device", "virtserialport,chardev=agent,name=cpuplug.agent",
        "-drive", f"if=none,id=d0,file={disk},format=raw", "-device", "virtio-blk-pci,drive=d0",
        "-device", "virtio-rng-pci",
    ]


def _console_until(log: Path, line: str, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_bytes().decode(errors="replace").splitlines()
        if any(line in ln for ln in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def _check_console(lines: list[str], modules: tuple[str, ...]) -> None:
    ours = [ln[ln.index(MARKER):].strip() for ln in lines if MARKER in ln]
    tail = "\n".join(lines[-40:])
    assert any("starting the agent (cpuplug.guest.linux_agent" in ln for ln in ours), tail
    assert f"{MARKER} modules: {' '.join(modules)}" in ours, tail
    assert f"{MARKER} python (3, 11)" in ours, tail
    assert any(re.fullmatch(rf"{MARKER} virtio port vport\d+p\d+ cpuplug\.agent", ln)
               for ln in ours), tail
    assert f"{MARKER} disk vda" in ours, tail
    controllers = next(ln for ln in ours if "cgroup controllers:" in ln).split(":", 2)[2].split()
    assert {"cpu", "cpuset"} <= set(controllers), tail
    assert not [ln for ln in ours if "failed" in ln or "cannot" in ln], tail


def test_boots_to_the_agent_in_qemu(built: Built, tmp_path: Path) -> None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 not installed")
    argv = [
        qemu, "-accel", "tcg", "-M", "q35", "-m", "512", "-nographic", "-no-reboot",
        "-kernel", str(built.image.kernel), "-initrd", str(built.image.initrd),
        "-append", f"console=ttyS0 panic=-1 {SELFTEST}", *_devices(tmp_path),
    ]
    with _qemu(argv, tmp_path / "console.log") as log:
        lines = _console_until(log, f"{MARKER} starting the agent", BOOT_TIMEOUT)
    _check_console(lines, MODULES)


# ---------------------------------------------------------------------------- aarch64


@pytest.fixture(scope="module")
def built_arm64() -> Built:
    """The aarch64 image, from the default cache (the one the aarch64 end-to-end tests
    boot, so CI builds it once). The builder keeps its own arm64 apt state when the
    host's apt has no arm64 (docs/image.md), so with CI=true this never skips."""
    _require_amd64_apt()
    try:
        image = ensure_image("aarch64")
    except ImageError as exc:
        if os.environ.get("CI", "").lower() == "true":
            raise
        pytest.skip(f"no aarch64 image here: {exc}")
    return Built(image, [], 0.0)


def test_aarch64_image(built_arm64: Built) -> None:
    """bookworm-backports' 6.12 (arm64 ACPI vCPU hotplug), booted through UEFI."""
    image = built_arm64.image
    assert image.cmdline == "console=ttyAMA0 quiet panic=-1 acpi=force"
    assert re.fullmatch(r"6\.12\.\d+\+deb12-arm64", image.kernel_version), image.kernel_version
    kernel_package = image.packages[0]
    assert kernel_package.startswith(f"linux-image-{image.kernel_version}=6.12.")
    assert "~bpo12+" in kernel_package, kernel_package
    # the userland stays bookworm's
    assert "python3.11-minimal=3.11.2-6+deb12u" in " ".join(image.packages)
    assert not [p for p in image.packages[1:] if "~bpo" in p], image.packages
    # an uncompressed arm64 Image: "ARM\x64" magic at 0x38, a PE header for the EFI stub
    head = image.kernel.read_bytes()[:0x40]
    assert head[0x38:0x3C] == b"ARM\x64" and head[:2] == b"MZ"
    # UEFI: QEMU's EDK2 build from qemu-efi-aarch64, in the image directory
    assert image.firmware == image.directory / "QEMU_EFI.fd"
    assert image.firmware.stat().st_size >= 1_000_000
    assert any(p.startswith("qemu-efi-aarch64=") for p in image.packages)
    assert b"EFI" in image.firmware.read_bytes()
    # On 6.12 virtio, virtio_ring, virtio_pci and virtio_console are built in; the
    # modules it ships are xz-compressed and go into the initramfs decompressed.
    assert image.modules == ("virtio_blk", "virtio_rng")
    kos = sorted(p for p in built_arm64.entries if ".ko" in p)
    assert [Path(p).name for p in kos] == ["virtio_blk.ko", "virtio-rng.ko"]
    assert all(bytes(built_arm64.entries[p].data).startswith(b"\x7fELF") for p in kos)
    assert "bin/busybox" in built_arm64.entries
    assert "bin/sh" not in built_arm64.entries or "aarch64" in os.uname().machine
    elf = Elf(bytes(_entry(built_arm64, "usr/bin/python3.11").data))
    assert elf.machine == 183  # EM_AARCH64


def test_aarch64_boots_to_the_agent_in_qemu_through_uefi(
    built_arm64: Built, tmp_path: Path
) -> None:
    qemu = shutil.which("qemu-system-aarch64")
    if qemu is None:
        pytest.skip("qemu-system-aarch64 not installed")
    image = built_arm64.image
    assert image.firmware is not None
    argv = [
        qemu, "-M", "virt,gic-version=3", "-cpu", "max,pauth-impdef=on", "-m", "512",
        "-nographic", "-no-reboot", "-bios", str(image.firmware),
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", f"console=ttyAMA0 panic=-1 acpi=force {SELFTEST}", *_devices(tmp_path),
    ]
    with _qemu(argv, tmp_path / "console.log") as log:
        lines = _console_until(log, f"{MARKER} starting the agent", BOOT_TIMEOUT)
    _check_console(lines, image.modules)
    tail = "\n".join(lines[-40:])
    assert any("EFI stub: Booting Linux Kernel" in ln for ln in lines), tail
    assert any("ACPI: Interpreter enabled" in ln for ln in lines), tail

"""The guest architectures an image is built for, in the names each tool uses.

One architecture has three names (``uname -m`` says ``x86_64``, Debian ``amd64``, the
multiarch library directories ``x86_64-linux-gnu``), its own serial console, kernel
(package and suite), firmware and command line; keeping them together means the builder,
the kernel command line and the QEMU backend cannot disagree about them.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from cpuplug.errors import UsageError


@dataclass(frozen=True)
class Firmware:
    """The firmware QEMU boots an image of this architecture with (``-bios``)."""

    package: str
    """Debian's package holding it (``Architecture: all``)."""
    path: str
    """The file in that package, relative to ``/``."""
    name: str
    """Its file name in the image directory."""


@dataclass(frozen=True)
class Arch:
    name: str
    """As ``uname -m`` and QEMU (``qemu-system-<name>``) call it."""
    deb_arch: str
    """As Debian calls it (``apt-get download pkg:<deb_arch>``)."""
    triplet: str
    """The multiarch directory of its libraries (``/lib/<triplet>``)."""
    kernel_package: str
    """Debian's metapackage of the kernel to use; it depends on the versioned package."""
    console: str
    """The serial console QEMU's default machine gives a guest of this architecture."""
    kernel_suite: str = ""
    """Where the kernel comes from: ``""`` the host's Debian release (apt's candidate),
    ``"backports"`` its ``<codename>-backports`` suite (the newest version there; the
    userland packages stay the release's)."""
    firmware: Firmware | None = None
    """The firmware to boot through (``-bios``); None: QEMU's default (SeaBIOS on x86)."""
    kernel_args: tuple[str, ...] = ()
    """Kernel parameters of this architecture, after the common ones."""

    @property
    def cmdline(self) -> str:
        """The kernel command line to boot the image with: console on the serial port, no
        boot chatter, and on a panic reboot at once (``panic=-1``), which a QEMU started
        with ``-no-reboot`` turns into an exit instead of a guest hanging forever; then
        :attr:`kernel_args`."""
        return " ".join((f"console={self.console}", "quiet", "panic=-1", *self.kernel_args))


ARCHES: dict[str, Arch] = {
    "x86_64": Arch("x86_64", "amd64", "x86_64-linux-gnu", "linux-image-cloud-amd64", "ttyS0"),
    # Debian has no cloud flavour for arm64; the generic kernel is the one there is.
    # bookworm's (6.1) has no arm64 ACPI vCPU hotplug (CONFIG_ACPI_HOTPLUG_CPU needs
    # 6.11+ on arm64): backports' 6.12 has.  arm64 Linux takes ACPI (and so vCPU
    # hotplug) only from UEFI, hence QEMU's EDK2 build, and acpi=force so that it never
    # falls back to the device tree QEMU also passes.
    "aarch64": Arch(
        "aarch64", "arm64", "aarch64-linux-gnu", "linux-image-arm64", "ttyAMA0",
        kernel_suite="backports",
        firmware=Firmware(
            "qemu-efi-aarch64", "usr/share/qemu-efi-aarch64/QEMU_EFI.fd", "QEMU_EFI.fd"
        ),
        kernel_args=("acpi=force",),
    ),
}

_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}

KERNEL_CMDLINE = ARCHES["x86_64"].cmdline
"""``console=ttyS0 quiet panic=-1``: the command line for the x86_64 image
(:attr:`Arch.cmdline`, also in every :class:`~cpuplug.image.store.Image`)."""


def arch_named(name: str | None) -> Arch:
    """The architecture called ``name`` (Debian's names too); None means the host's."""
    if name is None:
        name = platform.machine()
    key = _ALIASES.get(name, name)
    if key not in ARCHES:
        raise UsageError(
            f"no image for architecture {name!r}: choose one of {', '.join(ARCHES)}"
        )
    return ARCHES[key]

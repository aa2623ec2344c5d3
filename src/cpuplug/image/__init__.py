"""The guest image: a Debian kernel and an initramfs whose /init starts cpuplug's agent.

A party of its own beside the runtime: it imports nothing of the VMM, the guest or the
runtime (the guest's files are copied as data), and the runtime imports it to boot a
real QEMU::

    from cpuplug.image import ensure_image
    image = ensure_image("x86_64", progress=print)   # built on first use, then cached
    qemu -kernel image.kernel -initrd image.initrd -append image.cmdline

``cpuplug image build`` and ``cpuplug image ls`` are the same from the command line;
docs/image.md describes what is in an image and why.
"""

from __future__ import annotations

from cpuplug.image.arch import ARCHES, KERNEL_CMDLINE, Arch, arch_named
from cpuplug.image.build import STEPS, BuildProgress, ProgressCallback, ensure_image
from cpuplug.image.errors import ImageError
from cpuplug.image.recipe import AGENT_MODULE, AGENT_PORT
from cpuplug.image.store import Image, ImageStore, cache_dir


def list_images(cache: str | None = None) -> list[Image]:
    """Every image in the cache directory, newest first."""
    return ImageStore(cache_dir(cache)).list()


__all__ = [
    "AGENT_MODULE",
    "AGENT_PORT",
    "ARCHES",
    "KERNEL_CMDLINE",
    "STEPS",
    "Arch",
    "BuildProgress",
    "Image",
    "ImageError",
    "ProgressCallback",
    "arch_named",
    "cache_dir",
    "ensure_image",
    "list_images",
]

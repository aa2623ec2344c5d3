"""Where built images live: the cache directory, image keys, and the image records.

Layout of the cache directory (``--cache``, else ``$CPUPLUG_CACHE``, else
``/var/cache/cpuplug`` for root and ``$XDG_CACHE_HOME/cpuplug`` or ``~/.cache/cpuplug``
for anyone else)::

    debs/<deb-arch>/*.deb     packages as apt-get download fetched them (kept, so a
                              rebuild after a cpuplug edit needs no network)
    images/<key>/vmlinuz      the kernel
    images/<key>/initrd.img   the initramfs (gzip'd newc cpio)
    images/<key>/QEMU_EFI.fd  the firmware to boot through, if the architecture has one
    images/<key>/image.json   the record (written last: a directory without one is
                              not an image)
    resolved/<deb-arch>.json  the package versions apt resolved, and apt's state then
    build/                    staging of a build in progress
    lock                      held while a build runs

An image directory appears by one ``rename`` of a complete staging directory, so a
reader never sees half an image and needs no lock; builders take ``lock`` so that two
sandboxes starting at once build once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpuplug.image.errors import ImageError

MANIFEST = "image.json"
KERNEL = "vmlinuz"
INITRD = "initrd.img"


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``explicit``, ``$CPUPLUG_CACHE``, or the per-user default."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("CPUPLUG_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/cpuplug")
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "cpuplug" if xdg else Path.home() / ".cache" / "cpuplug"


def image_key(inputs: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the build inputs (exact package versions, the
    digest of the cpuplug files copied, the builder's own digest, the host's bytecode
    magic); equal inputs give the same image."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Image:
    """A built image: what a VMM needs to boot it, and what it was made of."""

    kernel: Path
    initrd: Path
    kernel_version: str
    """The kernel's release (``uname -r``), e.g. ``6.1.0-57-cloud-amd64``."""
    arch: str
    key: str
    cmdline: str
    """The kernel command line to boot it with."""
    packages: tuple[str, ...] = ()
    """``name=version`` of every Debian package it was built from."""
    modules: tuple[str, ...] = ()
    """The kernel modules /init loads, in load order."""
    recipe: str = ""
    """Digest of everything but the package versions (builder, cpuplug files, bytecode)."""
    built: float = 0.0
    """When it was built (Unix time)."""
    build_seconds: float = 0.0
    firmware: Path | None = None
    """The firmware to boot it through (QEMU's ``-bios``): ``QEMU_EFI.fd`` in the image
    directory on aarch64 (arm64 ACPI, and so vCPU hotplug, needs UEFI); None on x86_64
    (QEMU's own SeaBIOS and a direct kernel boot)."""

    @property
    def directory(self) -> Path:
        return self.kernel.parent

    @property
    def size(self) -> int:
        """Bytes on disk: kernel, initramfs and firmware."""
        files = (self.kernel, self.initrd, *([self.firmware] if self.firmware else []))
        return sum(f.stat().st_size for f in files)

    def record(self) -> dict[str, Any]:
        """What ``image.json`` holds (paths relative to nothing: the directory is the key)."""
        return {
            "key": self.key,
            "arch": self.arch,
            "kernel_version": self.kernel_version,
            "cmdline": self.cmdline,
            "firmware": self.firmware.name if self.firmware else None,
            "packages": list(self.packages),
            "modules": list(self.modules),
            "recipe": self.recipe,
            "built": self.built,
            "build_seconds": self.build_seconds,
        }

    def to_json(self) -> dict[str, Any]:
        """The record with the paths and sizes on this host (``image ls --json``)."""
        return {
            **self.record(),
            "kernel": str(self.kernel),
            "initrd": str(self.initrd),
            "firmware": str(self.firmware) if self.firmware else None,
            "kernel_size": self.kernel.stat().st_size,
            "initrd_size": self.initrd.stat().st_size,
            "firmware_size": self.firmware.stat().st_size if self.firmware else None,
            "path": str(self.directory),
        }


class ImageStore:
    """The images in one cache directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "images"

    def debs(self, deb_arch: str) -> Path:
        return self.root / "debs" / deb_arch

    def resolved(self, deb_arch: str) -> Path:
        """The memo of the package versions apt last resolved (see ``Apt.resolve_memo``)."""
        return self.root / "resolved" / f"{deb_arch}.json"

    def get(self, key: str) -> Image | None:
        return self._load(self.images / key)

    def list(self) -> list[Image]:
        """Every complete image, newest first."""
        if not self.images.is_dir():
            return []
        found = [self._load(d) for d in self.images.iterdir() if not d.name.startswith(".")]
        return sorted((i for i in found if i is not None), key=lambda i: -i.built)

    def latest(self, arch: str, recipe: str) -> Image | None:
        """The newest image of ``arch`` made by this very recipe (any package versions)."""
        return next((i for i in self.list() if i.arch == arch and i.recipe == recipe), None)

    @contextlib.contextmanager
    def building(self) -> Iterator[Path]:
        """Hold the build lock and yield a fresh staging directory; leftovers of a build
        that was killed are removed first (the lock proves nobody else is building)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = (self.root / "lock").open("a")
        except OSError as exc:
            raise ImageError(
                f"cannot use image cache {self.root}: {exc.strerror or exc} "
                "(choose another with --cache or CPUPLUG_CACHE)"
            ) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            staging = self.root / "build"
            _remove(staging)
            staging.mkdir()
            try:
                yield staging
            finally:
                _remove(staging)

    def install(self, staged: Path, image: Image) -> Image:
        """Move a staged image directory into place under its key and write its record."""
        final = self.images / image.key
        moved = dataclasses.replace(
            image, kernel=final / KERNEL, initrd=final / INITRD,
            firmware=final / image.firmware.name if image.firmware else None,
        )  # fmt: skip
        (staged / MANIFEST).write_text(json.dumps(moved.record(), indent=2) + "\n")
        self.images.mkdir(parents=True, exist_ok=True)
        _remove(final)  # a rebuild of the same key
        os.rename(staged, final)
        return moved

    def _load(self, directory: Path) -> Image | None:
        try:
            raw = json.loads((directory / MANIFEST).read_text())
            firmware = raw.get("firmware")
            image = Image(
                directory / KERNEL, directory / INITRD, str(raw["kernel_version"]),
                str(raw["arch"]), str(raw["key"]), str(raw["cmdline"]),
                tuple(raw.get("packages", ())), tuple(raw.get("modules", ())),
                str(raw.get("recipe", "")), float(raw.get("built", 0.0)),
                float(raw.get("build_seconds", 0.0)),
                directory / Path(str(firmware)).name if firmware else None,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        files = (image.kernel, image.initrd, *([image.firmware] if image.firmware else []))
        if not all(f.is_file() for f in files):
            return None
        return image


def _remove(path: Path) -> None:
    """Remove a directory tree we made (the staging or a replaced image)."""
    if path.exists() or path.is_symlink():
        shutil.rmtree(path)

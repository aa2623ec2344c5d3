"""The image cache: where it is, how images are keyed, found, listed and installed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cpuplug.image.store import Image, ImageStore, cache_dir, image_key


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPUPLUG_CACHE", str(tmp_path / "env"))
    assert cache_dir(tmp_path / "flag") == tmp_path / "flag"
    assert cache_dir() == tmp_path / "env"
    monkeypatch.delenv("CPUPLUG_CACHE")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert cache_dir() == Path("/var/cache/cpuplug")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "cpuplug"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "cpuplug"


def test_key_is_stable_and_changes_with_any_input() -> None:
    base = {"recipe": "r1", "packages": ["busybox-static:amd64=1:1.35", "libc6:amd64=2.36"]}
    key = image_key(base)
    assert key == image_key(dict(reversed(list(base.items()))))
    assert len(key) == 16 and int(key, 16) >= 0
    assert image_key({**base, "recipe": "r2"}) != key
    newer = ["busybox-static:amd64=1:1.36", "libc6:amd64=2.36"]
    assert image_key({**base, "packages": newer}) != key


def _stage(store: ImageStore, key: str, arch: str = "x86_64", built: float = 1.0,
           recipe: str = "r") -> Image:
    staged = store.root / f"stage-{key}"
    staged.mkdir(parents=True)
    (staged / "vmlinuz").write_bytes(b"k" * 10)
    (staged / "initrd.img").write_bytes(b"i" * 5)
    image = Image(staged / "vmlinuz", staged / "initrd.img", "6.1.0-57-cloud-amd64", arch, key,
                  "console=ttyS0 quiet panic=-1", ("libc6=2.36",), ("virtio_ring", "virtio"),
                  recipe, built, 2.5)
    return store.install(staged, image)


def test_install_get_list_latest(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    assert store.list() == [] and store.get("nothing") is None
    old = _stage(store, "a" * 16, built=1.0)
    new = _stage(store, "b" * 16, built=2.0)
    arm = _stage(store, "c" * 16, arch="aarch64", built=3.0)
    assert old.kernel == tmp_path / "images" / ("a" * 16) / "vmlinuz"
    assert store.get("a" * 16) == old
    assert store.list() == [arm, new, old]
    assert store.latest("x86_64", "r") == new
    assert store.latest("x86_64", "other recipe") is None
    assert new.size == 15
    record = new.to_json()
    assert record["kernel_size"] == 10 and record["path"] == str(new.directory)
    assert record["modules"] == ["virtio_ring", "virtio"]


def test_incomplete_directories_are_not_images(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    image = _stage(store, "d" * 16)
    image.initrd.unlink()
    (tmp_path / "images" / "e").mkdir()  # no record at all
    (tmp_path / "images" / "f").mkdir()
    (tmp_path / "images" / "f" / "image.json").write_text("{not json")
    assert store.list() == []


def test_building_holds_the_lock_and_cleans_a_killed_builds_leftovers(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    (tmp_path / "build" / "root").mkdir(parents=True)
    (tmp_path / "build" / "root" / "junk").write_text("from a killed build")
    with store.building() as staging:
        assert staging == tmp_path / "build" and list(staging.iterdir()) == []
        (staging / "x").write_text("1")
    assert not (tmp_path / "build").exists()


def test_an_unusable_cache_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    from cpuplug.image.errors import ImageError

    with pytest.raises(ImageError) as exc, ImageStore(tmp_path / "file" / "cache").building():
        pass
    assert "cannot use image cache" in str(exc.value) and "--cache" in str(exc.value)


def test_the_firmware_is_part_of_the_image_and_its_record(tmp_path: Path) -> None:
    """aarch64 boots through UEFI: QEMU_EFI.fd moves with the image, is named in
    image.json and ls --json, counts in its size; an image without its firmware file is
    incomplete.  x86_64 has none (null)."""
    store = ImageStore(tmp_path)
    staged = tmp_path / "stage"
    staged.mkdir()
    for name, size in (("vmlinuz", 10), ("initrd.img", 5), ("QEMU_EFI.fd", 100)):
        (staged / name).write_bytes(b"x" * size)
    image = store.install(staged, Image(
        staged / "vmlinuz", staged / "initrd.img", "6.12.95+deb12-arm64", "aarch64", "f" * 16,
        "console=ttyAMA0 quiet panic=-1 acpi=force", firmware=staged / "QEMU_EFI.fd",
    ))  # fmt: skip
    final = tmp_path / "images" / ("f" * 16)
    assert image.firmware == final / "QEMU_EFI.fd" and image.firmware.is_file()
    assert store.get("f" * 16) == image
    record = json.loads((final / "image.json").read_text())
    assert record["firmware"] == "QEMU_EFI.fd"
    assert image.size == 115
    assert image.to_json()["firmware"] == str(final / "QEMU_EFI.fd")
    assert image.to_json()["firmware_size"] == 100
    x86 = _stage(store, "a" * 16)
    assert x86.firmware is None and store.get("a" * 16) == x86
    assert x86.record()["firmware"] is None and x86.to_json()["firmware_size"] is None
    (final / "QEMU_EFI.fd").unlink()
    assert store.get("f" * 16) is None

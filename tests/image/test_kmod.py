"""Kernel modules without depmod: ``.modinfo`` parsing, compressed modules, load order."""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from cpuplug.image.errors import ImageError
from cpuplug.image.kmod import (
    ModuleTree,
    decompressed,
    dependency_order,
    module_name,
    parse_depends,
    parse_modinfo,
)
from tests.image.elfs import make_module

RELEASE = "6.1.0-99-test"


def test_modinfo_repeats_keys_and_skips_padding() -> None:
    info = parse_modinfo(b"alias=a\0\0\0alias=b\0depends=virtio,virtio_ring\0name=x\0\0")
    assert info == {"alias": ["a", "b"], "depends": ["virtio,virtio_ring"], "name": ["x"]}
    assert parse_depends(info) == ("virtio", "virtio_ring")
    assert parse_depends(parse_modinfo(b"depends=\0")) == ()
    assert parse_depends({}) == ()
    assert parse_depends({"depends": ["a-b, c,a_b"]}) == ("a_b", "c")


@pytest.mark.parametrize(
    ("file", "name"),
    [("virtio_pci.ko", "virtio_pci"), ("virtio-rng.ko.xz", "virtio_rng"),
     ("x.ko.zst", "x"), ("y-z.ko.gz", "y_z")],
)
def test_module_name_is_kbuilds(file: str, name: str) -> None:
    assert module_name(f"/lib/modules/r/kernel/{file}") == name


def _graph(edges: Mapping[str, tuple[str, ...]]) -> Callable[[str], tuple[str, ...] | None]:
    def depends(name: str) -> tuple[str, ...] | None:
        if name == "builtin":
            return None
        if name not in edges:
            raise ImageError(f"no module {name}")
        return edges[name]

    return depends


def test_order_puts_dependencies_first_and_keeps_the_asked_order() -> None:
    # The real 6.1 cloud kernel's graph (docs/real-backends.md).
    edges = {
        "virtio_ring": (),
        "virtio": ("virtio_ring",),
        "virtio_pci_modern_dev": (),
        "virtio_pci_legacy_dev": (),
        "virtio_pci": ("virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                       "virtio"),
        "virtio_console": ("virtio", "virtio_ring"),
        "virtio_blk": ("virtio", "virtio_ring"),
    }
    wanted = ["virtio", "virtio_ring", "virtio_pci", "virtio_console", "virtio_blk"]
    assert dependency_order(wanted, _graph(edges)) == [
        "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
        "virtio_pci", "virtio_console", "virtio_blk",
    ]


def test_builtin_modules_are_left_out_and_dashes_normalised() -> None:
    edges = {"a": ("builtin",), "b_c": ("a",)}
    assert dependency_order(["b-c", "builtin"], _graph(edges)) == ["a", "b_c"]


def test_a_cycle_is_refused_naming_it() -> None:
    edges = {"a": ("b",), "b": ("c",), "c": ("a",)}
    with pytest.raises(ImageError, match="a -> b -> c -> a"):
        dependency_order(["a"], _graph(edges))


def _tree(tmp_path: Path) -> Path:
    d = tmp_path / "lib" / "modules" / RELEASE
    (d / "kernel" / "drivers" / "virtio").mkdir(parents=True)
    (d / "kernel" / "drivers" / "char").mkdir(parents=True)
    (d / "kernel" / "drivers" / "virtio" / "virtio_ring.ko").write_bytes(
        make_module("virtio_ring"))
    (d / "kernel" / "drivers" / "virtio" / "virtio.ko.xz").write_bytes(
        lzma.compress(make_module("virtio", ["virtio_ring"])))
    (d / "kernel" / "drivers" / "char" / "virtio_console.ko.gz").write_bytes(
        gzip.compress(make_module("virtio_console", ["virtio", "virtio_ring"])))
    (d / "kernel" / "drivers" / "char" / "virtio-rng.ko").write_bytes(
        make_module("virtio_rng", ["virtio"]))
    (d / "modules.builtin").write_text("kernel/drivers/block/virtio_blk.ko\n")
    return tmp_path


def test_module_tree_reads_only_what_it_needs_and_decompresses(tmp_path: Path) -> None:
    tree = ModuleTree.in_root(_tree(tmp_path))
    assert tree.release == RELEASE
    order = tree.load_order(["virtio_console", "virtio_blk", "virtio_rng"])
    assert [m.name for m in order] == ["virtio_ring", "virtio", "virtio_console", "virtio_rng"]
    assert [m.relpath for m in order] == [
        "kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/char/virtio_console.ko", "kernel/drivers/char/virtio-rng.ko",
    ]
    assert all(m.elf.startswith(b"\x7fELF") for m in order)
    assert order[2].depends == ("virtio", "virtio_ring")


def test_a_missing_module_is_one_line(tmp_path: Path) -> None:
    tree = ModuleTree.in_root(_tree(tmp_path))
    with pytest.raises(ImageError, match=f"kernel {RELEASE} has no module virtio_net"):
        tree.load_order(["virtio_net"])


def test_the_package_must_have_one_module_tree(tmp_path: Path) -> None:
    (tmp_path / "lib" / "modules").mkdir(parents=True)
    with pytest.raises(ImageError, match="found none"):
        ModuleTree.in_root(tmp_path)


def test_zstd_module(tmp_path: Path) -> None:
    zstd = shutil.which("zstd")
    if zstd is None:
        pytest.skip("zstd not installed")
    plain = tmp_path / "m.ko"
    plain.write_bytes(make_module("m"))
    subprocess.run([zstd, "-q", str(plain), "-o", str(tmp_path / "m.ko.zst")], check=True,
                   timeout=30)
    assert decompressed(tmp_path / "m.ko.zst") == plain.read_bytes()


def test_corrupt_compressed_module_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ko.xz"
    bad.write_bytes(b"not xz")
    with pytest.raises(ImageError, match="cannot decompress"):
        decompressed(bad)


def test_a_612_tree_xz_modules_and_built_in_drivers(tmp_path: Path) -> None:
    """Debian's arm64 6.12: every module is ``.ko.xz`` (CONFIG_MODULE_COMPRESS_XZ), and
    virtio, virtio_ring, virtio_pci and virtio_console are built in (in modules.builtin,
    no file): of recipe.KERNEL_MODULES only virtio_blk and virtio_rng are loaded, each
    decompressed to the ELF busybox's insmod hands the kernel."""
    from cpuplug.image import recipe

    d = tmp_path / "lib" / "modules" / "6.12.95+deb12-arm64"
    for rel, module in {
        "kernel/drivers/block/virtio_blk.ko.xz": make_module("virtio_blk", ["virtio"]),
        "kernel/drivers/char/hw_random/virtio-rng.ko.xz": make_module("virtio_rng"),
    }.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(lzma.compress(module))
    (d / "modules.builtin").write_text(
        "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/char/virtio_console.ko\n"
        "kernel/drivers/char/hw_random/rng-core.ko\n")
    order = ModuleTree.in_root(tmp_path).load_order(recipe.KERNEL_MODULES)
    assert [m.name for m in order] == ["virtio_blk", "virtio_rng"]
    assert [m.relpath for m in order] == [
        "kernel/drivers/block/virtio_blk.ko", "kernel/drivers/char/hw_random/virtio-rng.ko"]
    assert order[0].elf == make_module("virtio_blk", ["virtio"])
    assert order[1].path.name == "virtio-rng.ko.xz"
    # Without modules.builtin a built-in driver cannot be told from a missing one.
    (d / "modules.builtin").unlink()
    with pytest.raises(ImageError, match=r"has no module virtio$"):
        ModuleTree.in_root(tmp_path).load_order(recipe.KERNEL_MODULES)

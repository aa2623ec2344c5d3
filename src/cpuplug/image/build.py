"""Build a guest image, or find it already built: :func:`ensure_image`.

An image is keyed by everything that decides its bytes: the exact Debian package
versions apt resolves, the digest of the cpuplug files copied into it, the builder's own
digest (its source, so a changed builder never reuses an old image) and the host's
bytecode magic.  Asking for an image whose key is in the cache costs a few
``apt-cache`` calls; anything else builds it, once, under the cache's lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cpuplug.image import recipe
from cpuplug.image.agent_sources import agent_sources, digest
from cpuplug.image.apt import Apt, AptUnavailable, Package
from cpuplug.image.arch import Arch, arch_named
from cpuplug.image.dynlink import Linker
from cpuplug.image.errors import ImageError
from cpuplug.image.guest_init import render_init
from cpuplug.image.initramfs import Initramfs
from cpuplug.image.kmod import ModuleTree
from cpuplug.image.python_runtime import PythonRuntime, host_magic
from cpuplug.image.store import INITRD, KERNEL, Image, ImageStore, cache_dir, image_key

STEPS = (
    "resolving packages",
    "downloading packages",
    "unpacking packages",
    "kernel modules",
    "python",
    "busybox, cpuplug and /init",
    "writing the initramfs",
)


@dataclass(frozen=True)
class BuildProgress:
    step: int
    """1-based index into :data:`STEPS`."""
    steps: int
    message: str


ProgressCallback = Callable[[BuildProgress], None]

_NOT_BUILDER = {"cli.py", "commands.py", "qemu.py"}
"""Modules of this package that do not shape an image (the command line around it, and
the QEMU fetched for the host)."""


def builder_digest() -> str:
    """SHA-256 of the builder's own source: its version, for the image key."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name not in _NOT_BUILDER:
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def ensure_image(
    arch: str | None = None,
    *,
    cache: str | Path | None = None,
    progress: ProgressCallback | None = None,
    rebuild: bool = False,
) -> Image:
    """The image for ``arch`` (None: the host's), built on first use.

    ``cache`` overrides the cache directory (:func:`~cpuplug.image.store.cache_dir`);
    ``progress`` is told each step of a build; ``rebuild`` builds even when the image
    is cached.  On a host without apt, the newest cached image of the same recipe is
    used if there is one.  Raises :class:`~cpuplug.image.errors.ImageError` (one line).
    """
    target = arch_named(arch)
    store = ImageStore(cache_dir(cache))
    report = progress or (lambda _p: None)
    sources = agent_sources(recipe.CPUPLUG_ROOTS)
    recipe_id = image_key({
        "arch": target.name,
        "builder": builder_digest(),
        "cpuplug": digest(sources),
        "bytecode": host_magic().hex(),
    })
    report(BuildProgress(1, len(STEPS), f"resolving {target.deb_arch} packages with apt-cache"))
    try:
        apt = Apt(
            target.deb_arch, private_dir=store.root / "apt" / target.deb_arch,
            kernel_suite=target.kernel_suite,
        )  # fmt: skip
    except AptUnavailable:
        cached = store.latest(target.name, recipe_id)
        if cached is not None and not rebuild:
            return cached
        raise
    packages = apt.resolve_memo(
        target.kernel_package, recipe.USERLAND_PACKAGES, store.resolved(target.deb_arch),
        arch_all=(target.firmware.package,) if target.firmware else (),
    )
    key = image_key({"recipe": recipe_id, "packages": sorted(p.spec for p in packages)})
    if not rebuild and (image := store.get(key)) is not None:
        return image
    with store.building() as staging:
        if not rebuild and (image := store.get(key)) is not None:
            return image  # built by another process while we waited for the lock
        start = time.monotonic()
        image = _build(target, apt, packages, sources, store, staging, report)
        image = dataclasses.replace(
            image, key=key, recipe=recipe_id, built=time.time(),
            build_seconds=time.monotonic() - start,
        )
        installed = store.install(staging / "image", image)
        _prune_debs(store.debs(target.deb_arch), packages)
        return installed


def _build(
    target: Arch,
    apt: Apt,
    packages: list[Package],
    sources: dict[str, Path],
    store: ImageStore,
    staging: Path,
    report: ProgressCallback,
) -> Image:
    steps = len(STEPS)
    debs_dir = store.debs(target.deb_arch)
    todo = [p for p in packages if not (debs_dir / p.filename).is_file()]
    report(BuildProgress(2, steps, f"downloading {len(todo)} of {len(packages)} packages"))
    debs = apt.download(packages, debs_dir)

    root = staging / "root"
    out = staging / "image"
    root.mkdir()
    out.mkdir()
    for i, p in enumerate(packages, 1):
        report(BuildProgress(3, steps, f"unpacking {p.name} ({i}/{len(packages)})"))
        apt.unpack(debs[p], root)

    report(BuildProgress(4, steps, "kernel modules"))
    tree = Initramfs()
    _skeleton(tree)
    modules = ModuleTree.in_root(root)
    kernel = root / "boot" / f"vmlinuz-{modules.release}"
    if not kernel.is_file():
        raise ImageError(f"{packages[0].name} has no /boot/vmlinuz-{modules.release}")
    shutil.copyfile(kernel, out / KERNEL)
    firmware = None
    if target.firmware is not None:
        found = root / target.firmware.path
        if not found.is_file():
            raise ImageError(f"{target.firmware.package} has no /{target.firmware.path}")
        firmware = out / target.firmware.name
        shutil.copyfile(found, firmware)
    order = modules.load_order(recipe.KERNEL_MODULES)
    module_paths = [f"/lib/modules/{modules.release}/{m.relpath}" for m in order]
    for m, guest in zip(order, module_paths, strict=True):
        tree.file(guest, m.elf)

    report(BuildProgress(5, steps, f"python{recipe.PYTHON}"))
    linker = Linker(root, (
        f"/lib/{target.triplet}", f"/usr/lib/{target.triplet}", "/lib", "/usr/lib",
    ))
    python = PythonRuntime(root, linker, recipe.PYTHON)
    python3 = python.add_interpreter(tree)
    python.add_stdlib(tree, recipe.STDLIB_LEFT_OUT, recipe.EXTENSIONS_LEFT_OUT)
    for guest, host in sorted(linker.files.items()):
        tree.copy(guest, host)

    report(BuildProgress(6, steps, "busybox, cpuplug and /init"))
    _busybox(tree, root)
    for rel, host in sources.items():
        python.add_module(tree, f"{recipe.GUEST_CPUPLUG_DIR}/{rel}", host, keep_source=True)
    init = render_init(
        modules=[(m.name, path) for m, path in zip(order, module_paths, strict=True)],
        python=python3,
        pythonpath=recipe.GUEST_CPUPLUG_DIR,
        agent_module=recipe.AGENT_MODULE,
        agent_port=recipe.AGENT_PORT,
    )
    tree.file("/init", init.encode(), 0o755)

    report(BuildProgress(7, steps, f"writing the initramfs ({len(tree)} files)"))
    tree.write(out / INITRD)
    return Image(
        out / KERNEL, out / INITRD, modules.release, target.name, "", target.cmdline,
        tuple(f"{p.name}={p.version}" for p in packages), tuple(m.name for m in order),
        firmware=firmware,
    )


def _skeleton(tree: Initramfs) -> None:
    """Mount points, the console /init's output goes to before devtmpfs is mounted, and
    the two files that make ``root`` a user name."""
    for d in ("/proc", "/sys", "/dev", "/run", "/etc", "/bin", "/sbin", "/usr/bin",
              "/usr/sbin"):
        tree.directory(d)
    tree.directory("/tmp", 0o1777)
    tree.directory("/root", 0o700)
    tree.char_device("/dev/console", 5, 1)
    tree.char_device("/dev/null", 1, 3, 0o666)
    tree.file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                             b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    tree.file("/etc/group", b"root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")


def _busybox(tree: Initramfs, root: Path) -> None:
    """busybox and, when this host can run it, a link for each of its applets (else
    /init has busybox make them at boot)."""
    exe = root / "bin" / "busybox"
    if not exe.is_file():
        raise ImageError("busybox-static unpacked no /bin/busybox")
    tree.file("/bin/busybox", exe, 0o755)
    try:
        listed = subprocess.run(
            [str(exe), "--list-full"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        listed = []  # another architecture: no applet links in the archive
    for applet in listed:
        guest = "/" + applet
        if "/" in applet and guest not in tree:  # not "linuxrc", not a file we ship
            tree.symlink(guest, "/bin/busybox")


def _prune_debs(directory: Path, keep: list[Package]) -> None:
    """Drop packages of older versions from the download cache (after a build used the
    new ones, under the lock)."""
    wanted = {p.filename for p in keep}
    for deb in directory.glob("*.deb"):
        if deb.name not in wanted:
            deb.unlink(missing_ok=True)

"""What goes into a guest image, declared in one place.

The image is a kernel and an initramfs holding busybox, Debian's python3.11 and the
parts of cpuplug the guest agent runs.  Each list below says what is taken and, where
something is left out, why: every megabyte of initramfs is decompressed by the guest
kernel on every boot, which under TCG is the slowest part of starting a VM
(docs/real-backends.md measured 2.2 s to the agent with busybox alone, 2.9 s with all
of python).
"""

from __future__ import annotations

PYTHON = "3.11"
"""The guest's python (bookworm's); the builder copies its stdlib from the package."""

USERLAND_PACKAGES: tuple[str, ...] = (
    "busybox-static",
    f"python{PYTHON}-minimal",
    f"libpython{PYTHON}-minimal",
    f"libpython{PYTHON}-stdlib",
    # The shared libraries of the interpreter and of the extension modules worth having.
    # Only the libraries that something in the image links against are copied out.
    "libc6",  # libc, libm, the loader (nss_files is part of libc since glibc 2.34)
    "zlib1g",  # the interpreter itself; zlib, gzip, zipfile
    "libexpat1",  # the interpreter itself (pyexpat is built in)
    "libffi8",  # ctypes
    "libbz2-1.0",  # bz2, tarfile
    "liblzma5",  # lzma, tarfile
)
"""Left out on purpose: libssl3 (5.7 MB; ``hashlib`` falls back to python's built-in
md5/sha1/sha2/sha3/blake2, only ``ssl`` is lost), libsqlite3-0, libncursesw6/libtinfo6
and libreadline8 (interactive use), libdb5.3, libnsl2/libtirpc3, libcrypt1, libuuid1
(``uuid`` falls back to python).  The extension modules that need them are dropped by
the builder, which keeps only extensions whose libraries it can resolve."""

KERNEL_MODULES: tuple[str, ...] = (
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_console",  # the agent channel is a virtio-serial port
    "virtio_blk",  # a root file system disk, later
    "virtio_rng",  # entropy from the host (QEMU -device virtio-rng-pci), see below
)
"""Loaded by /init in dependency order, with everything they depend on.

virtio_rng matters more than it looks: until the kernel's random pool is initialised,
every python start blocks (its hash seed reads /dev/urandom, which on Linux 6.1 waits
for jitter entropy); under TCG with QEMU's default CPU, which has no RDRAND, that took
until 3.9 s after boot and made the first ``python3`` take 2 s instead of 0.45 s.  A
virtio-rng device, or a CPU with RDRAND (``-cpu max``), initialises it at once."""

STDLIB_LEFT_OUT: frozenset[str] = frozenset({
    # Tests, demos, teaching material and development tools.
    "test", "unittest", "doctest.py", "idlelib", "tkinter", "turtle.py", "turtledemo",
    "lib2to3", "pydoc.py", "pydoc_data", "ensurepip", "venv", "distutils",
    "__phello__", "__hello__.py", "antigravity.py", "this.py",
    # Need a library left out above.
    "sqlite3", "curses",
    # The pure-python decimal is a fallback for the _decimal extension, which is kept.
    "_pydecimal.py",
    # Debian's hook installs apport's excepthook; its target lives in /etc, not here.
    "sitecustomize.py",
})
"""Top-level names under ``/usr/lib/python3.11`` that are not copied."""

EXTENSIONS_LEFT_OUT: tuple[str, ...] = (
    "_test", "_xxtestfuzz", "xxlimited", "_ctypes_test", "_xxsubinterpreters",
    # CJK codecs: 1 MB for encodings the agent never meets.
    "_codecs_", "_multibytecodec",
    "audioop", "ossaudiodev",
)
"""Prefixes of ``lib-dynload`` extension modules that are not copied."""

CPUPLUG_ROOTS: tuple[str, ...] = (
    "__init__.py",
    "errors.py",
    "agent_protocol.py",
    "strict_json.py",
    "cpuhp_abi.py",
    "psci_abi.py",
    "hw.py",
    "guest/",
)
"""The cpuplug files the guest agent runs, relative to the package; the builder adds
every cpuplug module these import, so the copy can never be missing one."""

GUEST_CPUPLUG_DIR = "/usr/lib/cpuplug"
"""Where the copy goes in the guest (it is the agent's ``PYTHONPATH``)."""

AGENT_MODULE = "cpuplug.guest.linux_agent"
"""What /init runs: ``python3 -m`` this."""

AGENT_PORT = "cpuplug.agent"
"""The name of the virtio-serial port the agent listens on (QEMU's
``-device virtserialport,name=cpuplug.agent``); the agent finds it in
``/sys/class/virtio-ports/*/name``."""

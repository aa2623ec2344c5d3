"""A private apt for an architecture the host's dpkg is not configured for.

Building the aarch64 image on an x86_64 host needs arm64 packages, and the host's apt
only knows them after ``dpkg --add-architecture arm64 && apt-get update`` — a change to
the host's dpkg and apt state that building an image has no business making.  Instead
the builder keeps an apt state of its own in the image cache::

    apt/<deb-arch>/apt.conf            passed to every apt call as ``-c``
    apt/<deb-arch>/state/lists/        the package lists of <deb-arch> alone
    apt/<deb-arch>/state/status        empty: nothing is "installed" for this apt
    apt/<deb-arch>/cache/              apt's cache directory
    apt/<deb-arch>/updated             touched after each successful ``apt-get update``

Everything else is the host's, read and never written: the sources (so the same mirror,
suites and keys), the proxies and other ``Acquire`` settings.  The hooks the host's
configuration runs after an update or around dpkg (PackageKit, AppStream, docker's
cache cleaning) are cleared with ``#clear``: they act on the host's state, not ours.
A ``-c`` file is read after the host's ``apt.conf.d``, which is what lets it clear them
(``APT_CONFIG`` is read before).

The lists are fetched on first use, again when the host's own lists are newer than
ours (the host ran ``apt-get update``: the archive may have moved on), and when a
download finds a package gone from the archive.  Concurrent builders update once
(``lock`` in the directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

CLEARED_HOOKS = (
    "APT::Update::Pre-Invoke",
    "APT::Update::Post-Invoke",
    "APT::Update::Post-Invoke-Success",
    "DPkg::Pre-Invoke",
    "DPkg::Post-Invoke",
    "DPkg::Pre-Install-Pkgs",
)
"""Commands the host's configuration runs around apt-get update or dpkg."""

CONF = "apt.conf"
STAMP = "updated"


def render_config(directory: Path, deb_arch: str) -> str:
    """The ``-c`` file: our state and cache, ``deb_arch`` as apt's only architecture."""
    state, cache = directory / "state", directory / "cache"
    lines = [
        "// written by cpuplug.image (apt_private.py): an apt state for "
        f"{deb_arch} packages, apart from the host's",
        f'Dir::State "{state}";',
        f'Dir::State::lists "{state}/lists/";',
        f'Dir::State::status "{state}/status";',
        f'Dir::Cache "{cache}";',
        f'Dir::Cache::archives "{cache}/archives/";',
        f'APT::Architecture "{deb_arch}";',
        "#clear APT::Architectures;",
        f'APT::Architectures {{ "{deb_arch}"; }};',
        *(f"#clear {hook};" for hook in CLEARED_HOOKS),
    ]
    return "\n".join(lines) + "\n"


def write_config(directory: Path, deb_arch: str) -> Path:
    """Create the private state's directories and its ``-c`` file (rewritten only when its
    text changes, so its mtime says when apt's configuration did)."""
    for sub in ("state/lists/partial", "cache/archives/partial"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    status = directory / "state" / "status"
    if not status.exists():
        status.write_bytes(b"")
    conf = directory / CONF
    text = render_config(directory, deb_arch)
    try:
        current = conf.read_text()
    except OSError:
        current = None
    if current != text:
        tmp = conf.with_name(f".{CONF}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, conf)
    return conf


def needs_update(directory: Path, host_lists: str | None) -> bool:
    """True before the first successful update, and when the host's lists changed since
    (a host ``apt-get update`` rewrites files in its lists directory)."""
    try:
        ours = (directory / STAMP).stat().st_mtime_ns
    except OSError:
        return True
    if host_lists is None:
        return False
    try:
        return os.stat(host_lists).st_mtime_ns > ours
    except OSError:
        return False


def mark_updated(directory: Path) -> None:
    (directory / STAMP).write_bytes(b"")


def has_lists(directory: Path) -> bool:
    return any((directory / "state" / "lists").glob("*_Packages*"))


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Held while this private state is updated."""
    with open(directory / "lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

"""Private apts: apt states of cpuplug's own, beside the host's, and the sources they see.

Building the aarch64 image on an x86_64 host needs arm64 packages, and the host's apt
only knows them after ``dpkg --add-architecture arm64 && apt-get update`` — a change to
the host's dpkg and apt state that building an image has no business making.  The
aarch64 kernel also comes from ``<codename>-backports`` (docs/image.md), a suite the
host's sources need not have.  Instead the builder keeps an apt state of its own in the
image cache::

    apt/<deb-arch>/apt.conf            passed to every apt call as ``-c``
    apt/<deb-arch>/sources.list.d/     the host's source files (symlinks) and ours
    apt/<deb-arch>/state/lists/        the package lists of <deb-arch> alone
    apt/<deb-arch>/state/status        empty: nothing is "installed" for this apt
    apt/<deb-arch>/cache/              apt's cache directory
    apt/<deb-arch>/updated             touched after each successful ``apt-get update``

Everything else is the host's, read and never written: the sources (so the same mirror,
suites and keys) plus one file of ours per extra suite (:func:`write_sources`), the
proxies and other ``Acquire`` settings.  The hooks the host's configuration runs after
an update or around dpkg (PackageKit, AppStream, docker's cache cleaning) are cleared
with ``#clear``: they act on the host's state, not ours.  A ``-c`` file is read after
the host's ``apt.conf.d``, which is what lets it clear them (``APT_CONFIG`` is read
before).

The lists are fetched on first use, again when the host's own lists are newer than
ours (the host ran ``apt-get update``: the archive may have moved on), when an extra
suite has no index yet, and when a download finds a package gone from the archive.
Concurrent builders update once (``lock`` in the directory).

The sources part (:func:`write_sources`: the host's files plus ``<codename>-backports``
on the host's Debian mirror) is also what the private apt of ``cpuplug image qemu``
(:mod:`cpuplug.image.qemu`) sees.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from cpuplug.image.deb822 import parse_stanzas
from cpuplug.image.errors import ImageError

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
SOURCES = "sources.list.d"
OS_RELEASE = Path("/etc/os-release")
DEFAULT_MIRROR = "http://deb.debian.org/debian"

Config = dict[str, list[str]]
"""``apt-config dump`` parsed (:func:`cpuplug.image.apt.parse_config`)."""


# --------------------------------------------------------------------------- the host's


def host_codename(host: Config) -> str:
    """The host's Debian release codename (``bookworm``), from /etc/os-release (else
    ``APT::Default-Release``)."""
    try:
        for line in OS_RELEASE.read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                name = line.split("=", 1)[1].strip().strip('"')
                if name:
                    return name
    except OSError:
        pass
    release = (host.get("APT::Default-Release") or [""])[-1]
    if release:
        return release
    raise ImageError("cannot tell this host's Debian release (no VERSION_CODENAME in "
                     f"{OS_RELEASE})")


def backports(codename: str) -> str:
    """The backports suite of a release: ``bookworm`` -> ``bookworm-backports``."""
    return f"{codename}-backports"


def conf_path(host: Config, key: str, default: str, under: str) -> Path:
    """An apt ``Dir::...`` setting as an absolute path, the way apt composes it
    (``under``: ``state`` or ``etc``, the directory a relative value is in)."""

    def conf(k: str, d: str) -> str:
        return (host.get(k) or [d])[-1]

    value = conf(key, default)
    if value.startswith("/"):
        return Path(value)
    root = conf("Dir", "/")
    base = conf("Dir::State", "var/lib/apt") if under == "state" else conf("Dir::Etc", "etc/apt")
    return Path(root) / base / value


def debian_source(sources: Iterable[Path], codename: str) -> tuple[str, str | None]:
    """The host's Debian mirror (the URI serving ``codename`` itself) and its keyring.

    Reads deb822 ``.sources`` and one-line ``.list`` files; falls back to
    ``http://deb.debian.org/debian``.
    """
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in parse_stanzas(text):
                if stanza.get("Enabled", "yes").lower() == "no":
                    continue
                if "deb" not in stanza.get("Types", "").split():
                    continue
                if codename in stanza.get("Suites", "").split():
                    uris = stanza.get("URIs", "").split()
                    if uris:
                        return uris[0].rstrip("/"), stanza.get("Signed-By")
        else:
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
                if m and m.group(3) == codename:
                    options = dict(
                        o.split("=", 1) for o in (m.group(1) or "").split() if "=" in o
                    )
                    return m.group(2).rstrip("/"), options.get("signed-by")
    return DEFAULT_MIRROR, None


# --------------------------------------------------------------------------- ours


def write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` (atomically) unless the file already holds it: its mtime then says
    when apt's configuration really changed."""
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_sources(parts: Path, host: Config, codename: str, suites: Sequence[str]) -> Path:
    """Make ``parts`` a ``sources.list.d`` of the host's sources plus ``suites``.

    The host's ``.list`` and ``.sources`` files are symlinked (so they are read, never
    copied stale); each suite gets a ``cpuplug-<suite>.sources`` on the host's Debian
    mirror, with the ``Signed-By`` of the host's entry for ``codename``.  Files of ours
    no longer wanted are removed.  Returns the host's ``sources.list``, for
    ``Dir::Etc::sourcelist``.
    """
    parts.mkdir(parents=True, exist_ok=True)
    host_parts = conf_path(host, "Dir::Etc::sourceparts", "sources.list.d", "etc")
    host_list = conf_path(host, "Dir::Etc::sourcelist", "sources.list", "etc")
    host_files = sorted(p for p in host_parts.glob("*") if p.suffix in (".list", ".sources"))
    wanted: dict[str, Path | str] = {f"host-{p.name}": p for p in host_files}
    uri, signed_by = debian_source([host_list, *host_files], codename)
    for suite in suites:
        stanza = [
            f"# written by cpuplug.image (apt_private.py): {suite} on the host's Debian mirror",
            "Types: deb",
            f"URIs: {uri}",
            f"Suites: {suite}",
            "Components: main",
        ]
        if signed_by:
            stanza.append(f"Signed-By: {signed_by}")
        wanted[f"cpuplug-{suite}.sources"] = "\n".join(stanza) + "\n"
    for old in parts.iterdir():
        if old.name not in wanted:
            old.unlink()
    for name, what in wanted.items():
        target = parts / name
        if isinstance(what, Path):
            if not (target.is_symlink() and os.readlink(target) == str(what)):
                target.unlink(missing_ok=True)
                target.symlink_to(what)
        else:
            write_if_changed(target, what)
    return host_list


def has_suite(lists: Path, suite: str, deb_arch: str | None = None) -> bool:
    """Whether the lists directory holds a package index of ``suite`` (of ``deb_arch``,
    if given): ``<mirror>_dists_<suite>_<component>_binary-<arch>_Packages[.xz|.lz4]``."""
    arch = f"binary-{deb_arch}_" if deb_arch else ""
    return any(lists.glob(f"*_dists_{suite}_*{arch}Packages*"))


def render_config(directory: Path, deb_arch: str, sourcelist: Path) -> str:
    """The ``-c`` file: our state, cache and sources, ``deb_arch`` as apt's only
    architecture."""
    state, cache = directory / "state", directory / "cache"
    lines = [
        "// written by cpuplug.image (apt_private.py): an apt state for "
        f"{deb_arch} packages, apart from the host's",
        f'Dir::State "{state}";',
        f'Dir::State::lists "{state}/lists/";',
        f'Dir::State::status "{state}/status";',
        f'Dir::Cache "{cache}";',
        f'Dir::Cache::archives "{cache}/archives/";',
        f'Dir::Etc::sourcelist "{sourcelist}";',
        f'Dir::Etc::sourceparts "{directory / SOURCES}";',
        f'APT::Architecture "{deb_arch}";',
        "#clear APT::Architectures;",
        f'APT::Architectures {{ "{deb_arch}"; }};',
        *(f"#clear {hook};" for hook in CLEARED_HOOKS),
    ]
    return "\n".join(lines) + "\n"


def write_config(
    directory: Path, deb_arch: str, host: Config, suites: Sequence[str] = ()
) -> Path:
    """Create the private state's directories, its sources (the host's plus ``suites``)
    and its ``-c`` file (each rewritten only when its text changes)."""
    for sub in ("state/lists/partial", "cache/archives/partial"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    status = directory / "state" / "status"
    if not status.exists():
        status.write_bytes(b"")
    sourcelist = write_sources(directory / SOURCES, host, host_codename(host), suites)
    conf = directory / CONF
    write_if_changed(conf, render_config(directory, deb_arch, sourcelist))
    return conf


def needs_update(directory: Path, host_lists: str | None, suites: Sequence[str] = ()) -> bool:
    """True before the first successful update, when the host's lists changed since (a
    host ``apt-get update`` rewrites files in its lists directory), and while one of
    ``suites`` has no index (a suite added to the sources since)."""
    try:
        ours = (directory / STAMP).stat().st_mtime_ns
    except OSError:
        return True
    lists = directory / "state" / "lists"
    if any(not has_suite(lists, s) for s in suites):
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

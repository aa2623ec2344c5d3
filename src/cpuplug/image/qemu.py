"""A QEMU other than the host's, unpacked from Debian's packages: :func:`ensure_qemu`.

Debian 12's QEMU is 7.2, which crashes on any vCPU plug after an unplug under TCG;
bookworm-backports carries QEMU 10.0, which does not (docs/real-backends.md).  It is
fetched the way the guest image is made -- ``apt-get download`` and ``dpkg -x``, nothing
installed, no maintainer script run -- into the cache, and runs from there beside the
system QEMU.

**apt.**  The host's apt does not know the backports suite, and its configuration is
the host's business.  A private apt, given to every call as ``-c FILE``, keeps its own
package lists and cache under ``qemu/apt/`` and sees the host's sources plus one more
file, ``<codename>-backports`` on the host's Debian mirror.  Its lists start as a copy
of the host's (apt then fetches only the backports index, ~0.6 MB) and are updated when
they have no backports index, on ``--refresh``, and when a download finds a package gone
from the archive.  The host's ``/etc/apt`` and its state are read, never written.

**What is fetched.**  ``qemu-system-<x>`` of the version asked for (the newest when none
is); the packages of QEMU's own it depends on -- ``qemu-system-common``,
``qemu-system-data``, ``seabios``, ``ipxe-qemu`` -- always (the relocated QEMU below reads
data and firmware from its own tree only); and every library it depends on
(recursively) that the host has not installed at a version that satisfies the
dependency.  For QEMU 10.0.2 on a bookworm host with the system QEMU installed that is
no library at all: each of the 27 shared libraries it needs is in bookworm at a version
that will do.  The one dependency bookworm itself cannot satisfy is firmware:
``seabios (>> 1.16.3)`` (bookworm has 1.16.2), from backports.  Libraries a host lacks
are fetched too, and then the QEMU to run is a two-line wrapper setting
``LD_LIBRARY_PATH``.

**Running beside the system QEMU.**  QEMU looks for its firmware, data files and modules
at the paths it was built with (``/usr/share/qemu``, ``/usr/share/seabios``,
``/usr/lib/<triplet>/qemu``) -- the system QEMU's.  A module of another build makes
QEMU abort ("Only modules from the same build can be loaded"; ``QEMU_MODULE_DIR`` only
adds a directory in front, so a module missing there is still taken from 7.2's), and
the firmware would be 7.2's.  But QEMU relocates every one of those paths when a
``qemu-bundle`` directory is beside its executable (``get_relocated_path``:
``<exec dir>/qemu-bundle/<configured path>``); a symlink ``usr/bin/qemu-bundle -> ../..``
in the unpacked tree makes the tree QEMU's prefix, so the binary runs as is, with no
``-L`` and no environment, from any caller.

Cache layout (beside the images)::

    qemu/apt/                    the private apt: apt.conf, sources.list.d/, lists/, cache/
    qemu/debs/<deb-arch>/        downloaded packages
    qemu/<key>/root/             dpkg -x of every package, with usr/bin/qemu-bundle
    qemu/<key>/qemu.json         the record (written last)
    qemu/resolved-<arch>-<v>.json  the packages last resolved, with a digest of apt's state
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cpuplug.image import apt_private
from cpuplug.image.apt import (
    Package,
    _hint,
    _parse_filename,
    _reason,
    apt_state,
    parse_config,
    parse_relations,
    run_tool,
)
from cpuplug.image.arch import arch_named
from cpuplug.image.deb822 import parse_stanzas
from cpuplug.image.errors import ImageError
from cpuplug.image.store import cache_dir

SYSTEM_PACKAGES = {"x86_64": "qemu-system-x86", "aarch64": "qemu-system-arm"}
"""The Debian package of ``qemu-system-<arch>`` for each guest architecture."""
RECORD = "qemu.json"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Qemu:
    """An unpacked QEMU: the path to run and what it was made of."""

    binary: Path
    """What to run (``--qemu PATH``): the unpacked ``qemu-system-<arch>``, or a wrapper
    when libraries the host lacks were unpacked beside it."""
    version: str
    """QEMU's own version, e.g. ``10.0.2`` (what ``--version`` prints)."""
    package_version: str
    """The Debian version of ``qemu-system-<x>``, e.g. ``1:10.0.2+ds-2+deb13u1~bpo12+1``."""
    arch: str
    key: str
    directory: Path
    """``qemu/<key>`` in the cache: ``root/`` (the unpacked packages) and the record."""
    packages: tuple[str, ...] = ()
    """``name=version`` of every package unpacked."""

    def record(self) -> dict[str, Any]:
        return {
            "binary": str(self.binary),
            "directory": str(self.directory),
            "version": self.version,
            "package_version": self.package_version,
            "arch": self.arch,
            "key": self.key,
            "packages": list(self.packages),
        }


# --------------------------------------------------------------------------- versions


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's comparison of an upstream version or a revision (non-digits, then digits)."""
    while a or b:
        na = re.match(r"[^0-9]*", a)
        nb = re.match(r"[^0-9]*", b)
        sa, sb = (na.group() if na else ""), (nb.group() if nb else "")
        a, b = a[len(sa):], b[len(sb):]
        for i in range(max(len(sa), len(sb))):
            ca = _order(sa[i]) if i < len(sa) else 0
            cb = _order(sb[i]) if i < len(sb) else 0
            if ca != cb:
                return -1 if ca < cb else 1
        da = re.match(r"[0-9]*", a)
        db = re.match(r"[0-9]*", b)
        ta, tb = (da.group() if da else ""), (db.group() if db else "")
        a, b = a[len(ta):], b[len(tb):]
        ia, ib = int(ta or 0), int(tb or 0)
        if ia != ib:
            return -1 if ia < ib else 1
    return 0


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian orders versions (``dpkg --compare-versions``)."""

    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
        return int(epoch or 0), upstream, revision

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def satisfies(version: str, op: str, wanted: str) -> bool:
    """Whether ``version`` meets a relation ``(op wanted)``; no op: any version."""
    if not op:
        return True
    c = compare_versions(version, wanted)
    return {
        ">=": c >= 0, "<=": c <= 0, ">>": c > 0, "<<": c < 0, "=": c == 0,
        ">": c >= 0, "<": c <= 0,  # obsolete forms, as dpkg reads them
    }[op]  # fmt: skip


def upstream_of(version: str) -> str:
    """``1:10.0.2+ds-2+deb13u1~bpo12+1`` -> ``10.0.2``: QEMU's own version."""
    rest = version.split(":", 1)[-1]
    return re.split(r"[+~-]", rest, maxsplit=1)[0]


def version_matches(version: str, prefix: str | None) -> bool:
    """``--version 10`` matches 10.0.2, ``10.0`` matches 10.0.x, ``7.2`` matches 7.2."""
    if prefix is None:
        return True
    ours = upstream_of(version).split(".")
    want = prefix.split(".")
    return ours[: len(want)] == want


# --------------------------------------------------------------------------- the private apt


class AptLike(Protocol):
    """What resolving and unpacking need of an apt (:class:`PrivateApt`)."""

    deb_arch: str
    backports: str

    def versions(
        self, names: Sequence[str], candidate: bool = False
    ) -> dict[str, list[dict[str, str]]]: ...

    def installed(self, names: Sequence[str]) -> dict[str, str]: ...

    def unpack(self, deb: Path, root: Path) -> None: ...


class PrivateApt:
    """apt with the host's sources plus ``<codename>-backports``, its own lists and cache."""

    def __init__(self, directory: Path, progress: Progress) -> None:
        missing = [t for t in ("apt-get", "apt-cache", "apt-config", "dpkg", "dpkg-query")
                   if shutil.which(t) is None]  # fmt: skip
        if missing:
            raise ImageError(
                f"fetching QEMU needs Debian's apt and dpkg ({', '.join(missing)} not "
                "found): run it on Debian 12 (bookworm) or a derivative"
            )
        self.dir = directory
        self.progress = progress
        self.deb_arch = self._run(["dpkg", "--print-architecture"]).strip()
        host = parse_config(self._run(["apt-config", "dump"], private=False))
        self.codename = apt_private.host_codename(host)
        self.backports = apt_private.backports(self.codename)
        self.host_lists = apt_private.conf_path(host, "Dir::State::lists", "lists/", "state")
        self.host_status = apt_private.conf_path(
            host, "Dir::State::status", "/var/lib/dpkg/status", "state"
        )
        self.conf = self._write_config(host)

    # ------------------------------------------------------------------ setup

    def _write_config(self, host: dict[str, list[str]]) -> Path:
        d = self.dir
        try:
            for sub in ("lists/partial", "cache/archives/partial"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            parts = d / apt_private.SOURCES
            host_list = apt_private.write_sources(parts, host, self.codename, [self.backports])
            lines = [
                "// written by cpuplug image qemu: the host's sources plus "
                f"{self.backports}; lists and cache of its own",
                f'Dir::Etc::sourcelist "{host_list}";',
                f'Dir::Etc::sourceparts "{parts}";',
                f'Dir::State::lists "{d}/lists/";',
                f'Dir::Cache "{d}/cache/";',
                f'Dir::Cache::archives "{d}/cache/archives/";',
                'Dir::Cache::pkgcache "";',
                'Dir::Cache::srcpkgcache "";',
                *(f"#clear {hook};" for hook in apt_private.CLEARED_HOOKS),
            ]
            conf = d / "apt.conf"
            apt_private.write_if_changed(conf, "\n".join(lines) + "\n")
            return conf
        except OSError as exc:
            raise ImageError(
                f"cannot keep a private apt in {d}: {exc.strerror or exc} "
                "(choose another cache with --cache or CPUPLUG_CACHE)"
            ) from None

    def has_backports(self) -> bool:
        return apt_private.has_suite(self.dir / "lists", self.backports)

    def update(self) -> None:
        """``apt-get update`` of the private lists (seeded from the host's the first time,
        so only what the host lacks is fetched)."""
        lists = self.dir / "lists"
        if not any(lists.glob("*_Packages*")) and self.host_lists.is_dir():
            for f in self.host_lists.iterdir():
                if f.is_file() and ("_Packages" in f.name or f.name.endswith("Release")):
                    with contextlib.suppress(OSError):
                        shutil.copy2(f, lists / f.name)
        self.progress(f"apt-get update (the host's sources and {self.backports})")
        proc = self._call(["apt-get", "update"])
        if not self.has_backports():
            raise ImageError(
                f"apt-get update of {self.backports} failed: {_reason(proc.stderr)}"
                f"{_hint(proc.stderr)}"
            )

    def state(self) -> str | None:
        """A digest of what decides the packages this apt resolves."""
        return apt_state([
            str(self.dir / "lists"), str(self.dir / "sources.list.d"), str(self.conf),
            str(self.host_status),
        ])  # fmt: skip

    # ------------------------------------------------------------------ queries

    def versions(
        self, names: Sequence[str], candidate: bool = False
    ) -> dict[str, list[dict[str, str]]]:
        """Every downloadable version of each name (all suites), by name; ``candidate``:
        only the one apt would install (the host's release before backports)."""
        out: dict[str, list[dict[str, str]]] = {n: [] for n in names}
        if not names:
            return out
        argv = ["apt-cache", "show", *(f"{n}:{self.deb_arch}" for n in names)]
        if candidate:
            argv.insert(2, "--no-all-versions")
        proc = self._call(argv, check=False)
        for s in parse_stanzas(proc.stdout):
            name = s.get("Package", "")
            downloadable = "Filename" in s and s.get("Architecture") in (self.deb_arch, "all")
            if (
                name in out
                and downloadable
                and all(v["Version"] != s["Version"] for v in out[name])
            ):
                out[name].append(s)
        return out

    def installed(self, names: Sequence[str]) -> dict[str, str]:
        """Version of each name dpkg has installed (absent if none)."""
        if not names:
            return {}
        proc = self._call(
            ["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n", *names],
            check=False,
        )
        out: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[2].startswith("ii"):
                out[parts[0].split(":")[0]] = parts[1]
        return out

    def download(self, packages: Iterable[Package], into: Path) -> dict[Package, Path]:
        into.mkdir(parents=True, exist_ok=True)
        wanted = {p: into / p.filename for p in packages}
        todo = [p for p, path in wanted.items() if not path.is_file()]
        if todo:
            tmp = into / f".download-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                self._call(["apt-get", "download", *(p.spec for p in todo)], cwd=tmp,
                           what="apt-get download")  # fmt: skip
                got = {_parse_filename(f.name): f for f in tmp.glob("*.deb")}
                for p in todo:
                    src = got.get((p.name, p.version))
                    if src is None:
                        raise ImageError(f"apt-get download did not fetch {p.filename}")
                    os.replace(src, wanted[p])
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return wanted

    def unpack(self, deb: Path, root: Path) -> None:
        self._call(["dpkg", "-x", str(deb), str(root)], what=f"dpkg -x {deb.name}")

    # ------------------------------------------------------------------ plumbing

    def _run(self, argv: list[str], private: bool = False) -> str:
        return self._call(argv, private=private, what=" ".join(argv[:2])).stdout

    def _call(
        self, argv: list[str], cwd: Path | None = None, what: str | None = None,
        check: bool = True, private: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        if private and argv[0] in ("apt-get", "apt-cache"):
            argv = [argv[0], "-c", str(self.conf), *argv[1:]]
        return run_tool(argv, cwd=cwd, what=what, check=check)


# --------------------------------------------------------------------------- resolving


def resolve(apt: AptLike, arch: str, version: str | None) -> list[Package]:
    """The packages to unpack: QEMU of ``version`` (the newest matching), the packages of
    QEMU's own it depends on, and every library the host has not installed at a version
    that satisfies the dependency, recursively: each at apt's candidate version (the
    host's release) when that satisfies the dependency, else the newest that does.

    QEMU's own are its ``qemu-*`` companions and its data and firmware packages
    (``Architecture: all``: ``qemu-system-data``, ``seabios``, ``ipxe-qemu``): they are
    unpacked even when the host has them, because the relocated QEMU reads files only
    from its own tree (module docstring).
    """
    system = SYSTEM_PACKAGES[arch]
    shown = apt.versions([system])[system]
    matching = [s for s in shown if version_matches(s["Version"], version)]
    if not matching:
        have = ", ".join(sorted({upstream_of(s["Version"]) for s in shown})) or "none"
        raise ImageError(
            f"no {system} {version} in the host's sources or {apt.backports} "
            f"(versions there: {have})"
        )
    chosen: dict[str, dict[str, str]] = {system: _newest(matching)}
    todo: list[dict[str, str]] = [chosen[system]]
    while todo:
        wanted: list[tuple[bool, list[tuple[str, str, str]]]] = []
        for stanza in todo:
            for field in ("Pre-Depends", "Depends"):
                wanted.extend(
                    (stanza is chosen[system], group)
                    for group in parse_relations(stanza.get(field, ""))
                )
        names = sorted({name for _, group in wanted for name, _, _ in group})
        installed = apt.installed(names)
        versions = apt.versions([n for n in names if n not in chosen])
        candidates = apt.versions([n for n in names if n not in chosen], candidate=True)
        todo = []
        for direct, group in wanted:
            if any(
                name in chosen and satisfies(chosen[name]["Version"], op, v)
                for name, op, v in group
            ):
                continue
            own = direct and any(
                name.startswith("qemu-")
                or any(s.get("Architecture") == "all" for s in versions.get(name, []))
                for name, _, _ in group
            )
            if not own and any(
                name in installed and satisfies(installed[name], op, v)
                for name, op, v in group
            ):
                continue
            for name, op, v in group:
                # apt's candidate (the host's release) if it will do, else the newest
                # that will (backports)
                fits = [s for s in candidates.get(name, []) if satisfies(s["Version"], op, v)]
                fits = fits or [
                    s for s in versions.get(name, []) if satisfies(s["Version"], op, v)
                ]
                if fits:
                    chosen[name] = _newest(fits)
                    todo.append(chosen[name])
                    break
            else:
                relation = " | ".join(f"{n} ({o} {v})" if o else n for n, o, v in group)
                raise ImageError(
                    f"{system} {upstream_of(chosen[system]['Version'])} needs {relation}, "
                    "which neither this host has installed nor its apt sources offer"
                )
    return [
        Package(s["Package"], s["Version"], s.get("Architecture", apt.deb_arch))
        for s in chosen.values()
    ]


def _newest(stanzas: list[dict[str, str]]) -> dict[str, str]:
    def by_version(x: dict[str, str], y: dict[str, str]) -> int:
        return compare_versions(x["Version"], y["Version"])

    return max(stanzas, key=functools.cmp_to_key(by_version))


# --------------------------------------------------------------------------- building


def ensure_qemu(
    arch: str | None = None,
    *,
    version: str | None = None,
    cache: str | Path | None = None,
    progress: Progress | None = None,
    refresh: bool = False,
) -> Qemu:
    """A runnable QEMU for guests of ``arch`` (None: the host's), unpacked in the cache.

    ``version`` is a prefix of QEMU's own version (``"10"``, ``"10.0"``); None takes the
    newest the host's sources and backports offer.  ``refresh`` updates the private
    apt's lists first.  Raises :class:`ImageError` (one line).
    """
    target = arch_named(arch).name
    if target not in SYSTEM_PACKAGES:
        raise ImageError(f"no QEMU package for {target}")
    report = progress or (lambda _m: None)
    root = cache_dir(cache) / "qemu"
    with _locked(root):
        apt = PrivateApt(root / "apt", report)
        if refresh or not apt.has_backports():
            apt.update()
        memo = root / f"resolved-{target}-{version or 'newest'}.json"
        packages = _resolve_memo(apt, target, version, memo)
        key = hashlib.sha256(
            json.dumps(sorted(p.spec for p in packages)).encode()
        ).hexdigest()[:16]
        found = _load(root / key)
        if found is not None:
            return found
        report(f"downloading {len(packages)} packages")
        debs_dir = root / "debs" / apt.deb_arch
        try:
            debs = apt.download(packages, debs_dir)
        except ImageError as exc:
            if "out of date" not in str(exc):
                raise
            apt.update()  # the archive moved on (backports keeps one version)
            packages = resolve(apt, target, version)
            debs = apt.download(packages, debs_dir)
        return _install(apt, target, packages, debs, root, key, report)


def _resolve_memo(apt: PrivateApt, arch: str, version: str | None, memo: Path) -> list[Package]:
    state = apt.state()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(memo.read_text())
        if saved["state"] == state and state is not None:
            return [Package(*p) for p in saved["packages"]]
    apt.progress(f"resolving {SYSTEM_PACKAGES[arch]} {version or ''} and its dependencies")
    packages = resolve(apt, arch, version)
    if state is not None:
        with contextlib.suppress(OSError):
            apt_private.write_if_changed(memo, json.dumps({
                "state": state, "packages": [[p.name, p.version, p.arch] for p in packages],
            }))  # fmt: skip
    return packages


def _install(
    apt: AptLike,
    arch: str,
    packages: list[Package],
    debs: dict[Package, Path],
    root: Path,
    key: str,
    report: Progress,
) -> Qemu:
    final = root / key
    staging = root / f".build-{key}"
    shutil.rmtree(staging, ignore_errors=True)
    tree = staging / "root"
    tree.mkdir(parents=True)
    try:
        for p in packages:
            report(f"unpacking {p.name} {p.version}")
            apt.unpack(debs[p], tree)
        name = f"qemu-system-{arch}"
        binary = tree / "usr" / "bin" / name
        if not binary.is_file():
            raise ImageError(f"{SYSTEM_PACKAGES[arch]} unpacked no /usr/bin/{name}")
        # QEMU's firmware, data and modules relative to the binary (module docstring)
        (binary.parent / "qemu-bundle").symlink_to("../..")
        libs = _library_dirs(tree)
        run = binary
        if libs:
            run = staging / name
            rel = [f'"$here/root/{d.relative_to(tree)}"' for d in libs]
            run.write_text(
                "#!/bin/sh\n"
                "# written by cpuplug image qemu: libraries this host lacks are unpacked "
                "beside QEMU\n"
                'here=$(dirname "$(readlink -f "$0")")\n'
                f"LD_LIBRARY_PATH={':'.join(rel)}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}} "
                f'exec "$here/root/usr/bin/{name}" "$@"\n'
            )
            run.chmod(0o755)
        upstream = _run_version(run)
        system = next(p for p in packages if p.name == SYSTEM_PACKAGES[arch])
        made = Qemu(
            binary=final / run.relative_to(staging),
            version=upstream,
            package_version=system.version,
            arch=arch,
            key=key,
            directory=final,
            packages=tuple(f"{p.name}={p.version}" for p in packages),
        )
        (staging / RECORD).write_text(json.dumps(made.record(), indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(staging, final)
        return made
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _library_dirs(tree: Path) -> list[Path]:
    """Library directories holding shared libraries of a fetched package (none when the
    host had every library: QEMU's own modules directory does not count)."""
    found = []
    for rel in ("lib", "usr/lib"):
        for d in [*sorted((tree / rel).glob("*-linux-gnu*")), tree / rel]:
            if d.is_dir() and any(f.is_file() and ".so" in f.name for f in d.glob("*.so*")):
                found.append(d)
    return found


def _run_version(binary: Path) -> str:
    try:
        proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageError(f"the unpacked {binary.name} does not run: {exc}") from None
    m = re.search(r"version (\d+\.\d+\.\d+)", proc.stdout)
    if proc.returncode != 0 or m is None:
        why = (proc.stderr.strip().splitlines() or ["no version printed"])[-1]
        raise ImageError(f"the unpacked {binary.name} does not run: {why}")
    return m.group(1)


def _load(directory: Path) -> Qemu | None:
    try:
        raw = json.loads((directory / RECORD).read_text())
        made = Qemu(
            Path(raw["binary"]), str(raw["version"]), str(raw["package_version"]),
            str(raw["arch"]), str(raw["key"]), directory, tuple(raw.get("packages", ())),
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return made if made.binary.is_file() else None


def list_qemus(cache: str | Path | None = None) -> list[Qemu]:
    """Every QEMU unpacked in the cache."""
    root = cache_dir(cache) / "qemu"
    if not root.is_dir():
        return []
    found = [_load(d) for d in sorted(root.iterdir()) if not d.name.startswith(".")]
    return [q for q in found if q is not None]


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = (root / "lock").open("a")
    except OSError as exc:
        raise ImageError(
            f"cannot use cache {root}: {exc.strerror or exc} "
            "(choose another with --cache or CPUPLUG_CACHE)"
        ) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


__all__ = [
    "Qemu",
    "compare_versions",
    "ensure_qemu",
    "list_qemus",
    "satisfies",
    "upstream_of",
    "version_matches",
]

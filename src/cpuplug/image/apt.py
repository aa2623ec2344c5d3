"""Debian packages through apt, without installing them: resolve, download, unpack.

An image is made of Debian's own binaries (kernel, busybox, python), so its content is
whatever the host's apt would install, at versions apt can name exactly; the versions are
the cache key.  Nothing is installed: ``apt-get download`` fetches the ``.deb`` into the
builder's cache and ``dpkg -x`` unpacks it into a staging directory without running a
maintainer script, which also works without root and for a foreign architecture.

Every failure is one line naming what to install or run (no apt on the host, a package
apt does not know, an architecture dpkg is not configured for, an unreachable archive).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from cpuplug.image import apt_private
from cpuplug.image.deb822 import parse_stanzas
from cpuplug.image.errors import ImageError

TOOLS = ("apt-get", "apt-cache", "apt-config", "dpkg", "dpkg-deb")
_TIMEOUT = 600.0
"""Seconds one apt or dpkg call may take (a cold download of ~40 MB included)."""


@dataclass(frozen=True, order=True)
class Package:
    """One binary package at one exact version."""

    name: str
    version: str
    arch: str
    """The Debian architecture of the file: ``amd64``, ``arm64`` or ``all``."""

    @property
    def spec(self) -> str:
        """How apt-get is asked for exactly this package (``name:arch=version``)."""
        return f"{self.name}:{self.arch}={self.version}" if self.arch != "all" else (
            f"{self.name}={self.version}"
        )

    @property
    def filename(self) -> str:
        """The file name apt-get download gives it (the epoch's ':' quoted as ``%3a``)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


_RELATION = re.compile(
    r"^\s*([a-z0-9][a-z0-9.+-]*)(?::[a-z0-9-]+)?\s*(?:\(\s*([<>=]+)\s*([^)\s]+)\s*\))?"
)


def parse_relations(field: str) -> list[list[tuple[str, str, str]]]:
    """A Depends field -> [[(name, op, version), ...alternatives], ...]; op and version
    are empty when the relation has none."""
    out: list[list[tuple[str, str, str]]] = []
    for group in field.split(","):
        alternatives = []
        for alt in group.split("|"):
            m = _RELATION.match(alt)
            if m:
                alternatives.append((m.group(1), m.group(2) or "", m.group(3) or ""))
        if alternatives:
            out.append(alternatives)
    return out


class AptUnavailable(ImageError):
    """The host has no apt or dpkg at all (not Debian): nothing can be built here."""


class Apt:
    """The host's apt, asked about packages of one Debian architecture."""

    def __init__(
        self, deb_arch: str, private_dir: Path | None = None, kernel_suite: str = ""
    ) -> None:
        """``private_dir``: where to keep an apt state of our own for ``deb_arch`` when
        the host's apt is not configured for it, or has no lists of the kernel's suite
        (:mod:`cpuplug.image.apt_private`); without one that is an error naming what to
        run.  ``kernel_suite``: ``""`` takes the kernel at apt's candidate (the host's
        release), ``"backports"`` from ``<codename>-backports``
        (:attr:`cpuplug.image.arch.Arch.kernel_suite`)."""
        missing = [t for t in TOOLS if shutil.which(t) is None]
        if missing:
            raise AptUnavailable(
                f"building an image needs Debian's apt and dpkg ({', '.join(missing)} not "
                "found): build it on Debian 12 (bookworm) or a derivative"
            )
        self.deb_arch = deb_arch
        self.options: list[str] = []
        """Given to every apt-get, apt-cache and apt-config call (``-c`` private.conf)."""
        self.private_dir: Path | None = None
        self.config = parse_config(self._run(["apt-config", "dump"]))
        self.kernel_suite: str | None = None
        """The suite the kernel is taken from (``bookworm-backports``); None: apt's
        candidate."""
        if kernel_suite == "backports":
            self.kernel_suite = apt_private.backports(apt_private.host_codename(self.config))
        elif kernel_suite:
            raise ImageError(f"unknown kernel suite {kernel_suite!r} (expected '' or 'backports')")
        suites = [self.kernel_suite] if self.kernel_suite else []
        if deb_arch not in self.architectures():
            if private_dir is None:
                raise ImageError(
                    f"apt is not configured for {deb_arch} packages: run "
                    f"'dpkg --add-architecture {deb_arch} && apt-get update' as root"
                )
            self._use_private(private_dir, suites)
        elif any(
            not apt_private.has_suite(Path(self.state_paths()[0]), s, deb_arch) for s in suites
        ):
            if private_dir is None:
                raise ImageError(
                    f"apt has no {deb_arch} package lists of {', '.join(suites)}: add it to "
                    "apt's sources and run 'apt-get update' as root"
                )
            self._use_private(private_dir, suites)

    def _use_private(self, directory: Path, suites: Sequence[str]) -> None:
        host_lists = self.state_paths()[0]
        try:
            conf = apt_private.write_config(directory, self.deb_arch, self.config, suites)
        except OSError as exc:
            raise ImageError(
                f"cannot keep apt's {self.deb_arch} package lists in {directory}: "
                f"{exc.strerror or exc}: choose another cache with --cache or CPUPLUG_CACHE"
            ) from None
        self.options, self.private_dir = ["-c", str(conf)], directory
        self.config = parse_config(self._run(["apt-config", "dump"]))
        if apt_private.needs_update(directory, host_lists, suites):
            self.update_private()

    def update_private(self) -> None:
        """``apt-get update`` of the private state (under its lock; once per change)."""
        directory = self.private_dir
        assert directory is not None
        with apt_private.locked(directory):
            # apt-get update exits 0 when an index could not be fetched ("W: Some index
            # files failed to download"): whether there are lists decides
            proc = self._call(["apt-get", "update"], check=False)
            fetched = proc.returncode == 0 and not re.search(
                r"Failed to fetch|failed to download", proc.stderr
            )
            if apt_private.has_lists(directory):
                if fetched:
                    apt_private.mark_updated(directory)
                return  # else the lists fetched before stay in use (an offline host)
            raise ImageError(
                f"apt-get update of the {self.deb_arch} package lists (kept apart from "
                f"the host's in {directory}) failed: {_reason(proc.stderr)}"
                f"{_hint(proc.stderr)}"
            )

    def architectures(self) -> list[str]:
        """The architectures apt fetches packages for: the native one first, then those
        added with ``dpkg --add-architecture`` (or in ``APT::Architectures``)."""
        native = self.config.get("APT::Architecture", [])
        return list(dict.fromkeys(native + self.config.get("APT::Architectures::", [])))

    def state_paths(self) -> list[str]:
        """What decides the versions apt resolves, where this apt keeps it: its package
        lists, dpkg's status and architectures, its configuration directory (sources,
        pins) and the ``APT_CONFIG`` file, if any."""

        def conf(key: str, default: str) -> str:
            return (self.config.get(key) or [default])[-1]

        root = conf("Dir", "/")
        state = os.path.join(root, conf("Dir::State", "var/lib/apt"))
        status = os.path.join(state, conf("Dir::State::status", "/var/lib/dpkg/status"))
        paths = [
            os.path.join(state, conf("Dir::State::lists", "lists/")),
            status,
            os.path.join(os.path.dirname(status), "arch"),
            os.path.join(root, conf("Dir::Etc", "etc/apt")),
        ]
        if os.environ.get("APT_CONFIG"):
            paths.append(os.environ["APT_CONFIG"])
        if self.options:
            paths.append(self.options[-1])
        return paths

    # ------------------------------------------------------------------ resolve

    def candidates(
        self, names: Sequence[str], arch_all: Sequence[str] = (), kernel: str | None = None
    ) -> dict[str, dict[str, str]]:
        """``apt-cache show`` of the version apt would install of each name, by name.

        ``arch_all`` names ``Architecture: all`` packages, asked for unqualified (on a host
        whose native architecture is another, ``name:<deb_arch>`` does not name them);
        ``kernel``, if given, is one more query as it is (``name:arch=version``).
        """
        queries = [self._qualified(n) for n in names] + list(arch_all)
        wanted = [*names, *arch_all]
        if kernel is not None:
            queries.insert(0, kernel)
            wanted.insert(0, kernel.split(":", 1)[0].split("=", 1)[0])
        proc = self._call(["apt-cache", "show", "--no-all-versions", *queries])
        found: dict[str, dict[str, str]] = {}
        for stanza in parse_stanzas(proc.stdout):
            if stanza.get("Architecture") in (self.deb_arch, "all"):
                found.setdefault(stanza.get("Package", ""), stanza)
        missing = [n for n in wanted if n not in found]
        if missing:
            raise AptUnavailable(
                f"apt knows no {self.deb_arch} package {', '.join(missing)}: run "
                "'apt-get update' (images are built from Debian 12 bookworm's packages)"
            )
        return found

    def suite_version(self, name: str, suite: str) -> str:
        """The newest version of ``name`` that apt has from ``suite`` (``apt-cache
        policy``, which lists each version with the suites offering it, newest first).
        Raises :class:`AptUnavailable` when there is none."""
        proc = self._call(["apt-cache", "policy", self._qualified(name)])
        for version, suites in parse_policy(proc.stdout).get(name, []):
            if suite in suites:
                return version
        where = f" (kept apart from the host's in {self.private_dir})" if self.private_dir else ""
        raise AptUnavailable(
            f"apt's {self.deb_arch} package lists{where} have no {name} from {suite}: "
            f"is {suite} reachable on the host's Debian mirror? run 'apt-get update'"
        )

    def resolve(
        self, kernel_metapackage: str, names: Sequence[str], arch_all: Sequence[str] = ()
    ) -> list[Package]:
        """Exact versions: the real kernel package behind ``kernel_metapackage`` (first;
        from :attr:`kernel_suite` when there is one, else apt's candidate), then
        ``names`` and ``arch_all`` (:meth:`candidates`) at apt's candidates, from one
        ``apt-cache show`` (and an ``apt-cache policy`` for a kernel suite)."""
        if self.kernel_suite is None:
            shown = self.candidates([kernel_metapackage, *names], arch_all)
        else:
            version = self.suite_version(kernel_metapackage, self.kernel_suite)
            query = f"{self._qualified(kernel_metapackage)}={version}"
            shown = self.candidates(names, arch_all, kernel=query)
            got = shown[kernel_metapackage].get("Version")
            if got != version:
                raise ImageError(f"apt-cache show {query} showed version {got}")
        kernel = self._kernel(shown[kernel_metapackage], kernel_metapackage)
        return [kernel, *(self._package(shown[n]) for n in [*names, *arch_all])]

    def resolve_memo(
        self, kernel_metapackage: str, names: Sequence[str], memo: Path,
        arch_all: Sequence[str] = (),
    ) -> list[Package]:
        """:meth:`resolve`, remembered in the file ``memo`` for as long as apt's state
        (:func:`apt_state`) is unchanged.

        ``apt-cache`` loads every package list on each call (0.65 s here, where apt keeps
        no binary cache), and an image lookup that costs more than a second is paid by
        every sandbox start; the memo makes a cached image's lookup a few ``stat`` calls.
        """
        query = {"arch": self.deb_arch, "kernel": kernel_metapackage, "names": list(names),
                 "kernel_suite": self.kernel_suite, "arch_all": list(arch_all)}
        state = apt_state(self.state_paths())
        if state is not None:
            try:
                saved = json.loads(memo.read_text())
                if saved["query"] == query and saved["state"] == state:
                    return [Package(*p) for p in saved["packages"]]
            except (OSError, ValueError, KeyError, TypeError):
                pass
        packages = self.resolve(kernel_metapackage, names, arch_all)
        if state is not None:
            record = {"query": query, "state": state,
                      "packages": [[p.name, p.version, p.arch] for p in packages]}
            with contextlib.suppress(OSError):
                memo.parent.mkdir(parents=True, exist_ok=True)
                tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
                tmp.write_text(json.dumps(record))
                os.replace(tmp, memo)
        return packages

    def _kernel(self, meta: dict[str, str], metapackage: str) -> Package:
        """The ``linux-image-<release>`` package a metapackage such as
        ``linux-image-cloud-amd64`` depends on, at the version it pins."""
        for alternatives in parse_relations(meta.get("Depends", "")):
            name, op, version = alternatives[0]
            if name.startswith("linux-image-") and name != metapackage:
                if op == "=":
                    return Package(name, version, meta.get("Architecture", self.deb_arch))
                return self._package(self.candidates([name])[name])
        raise ImageError(
            f"{metapackage} {meta.get('Version', '')} depends on no linux-image package"
        )

    # ------------------------------------------------------------------ fetch

    def download(self, packages: Iterable[Package], into: Path) -> dict[Package, Path]:
        """The ``.deb`` of each package in ``into``, downloading the ones not there yet.

        Downloads land in a temporary directory first and are renamed into place, so a
        killed download never leaves a truncated ``.deb`` behind to be trusted later.
        """
        into.mkdir(parents=True, exist_ok=True)
        wanted = {p: into / p.filename for p in packages}
        todo = [p for p, path in wanted.items() if not path.is_file()]
        if todo:
            with tempfile.TemporaryDirectory(prefix=".download-", dir=into) as tmp:
                argv = ["apt-get", "download", *(p.spec for p in todo)]
                try:
                    self._call(argv, cwd=Path(tmp), what="apt-get download")
                except ImageError as exc:
                    if self.private_dir is None or "out of date" not in str(exc):
                        raise
                    self.update_private()  # our lists are older than the archive
                    self._call(argv, cwd=Path(tmp), what="apt-get download")
                got = {_parse_filename(f.name): f for f in Path(tmp).glob("*.deb")}
                for p in todo:
                    src = got.get((p.name, p.version))
                    if src is None:
                        raise ImageError(f"apt-get download did not fetch {p.filename}")
                    os.replace(src, wanted[p])
        return wanted

    def unpack(self, deb: Path, root: Path) -> None:
        """``dpkg -x``: the package's files under ``root``, no maintainer script run."""
        self._call(["dpkg", "-x", str(deb), str(root)], what=f"dpkg -x {deb.name}")

    # ------------------------------------------------------------------ plumbing

    def _qualified(self, name: str) -> str:
        return f"{name}:{self.deb_arch}"

    def _package(self, stanza: dict[str, str]) -> Package:
        return Package(stanza["Package"], stanza["Version"], stanza.get("Architecture", ""))

    def _run(self, argv: list[str]) -> str:
        return self._call(argv).stdout

    def _call(
        self, argv: list[str], cwd: Path | None = None, what: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        if argv[0] in ("apt-get", "apt-cache", "apt-config"):
            argv = [argv[0], *self.options, *argv[1:]]
        # an unnamed apt-cache query may fail: its caller reads the answer (or its absence)
        check = check and (what is not None or argv[0] != "apt-cache")
        return run_tool(argv, cwd=cwd, what=what or " ".join(argv[:2]), check=check)


def run_tool(
    argv: list[str], *, cwd: Path | None = None, what: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run an apt or dpkg command in the C locale, non-interactive, for at most
    ``_TIMEOUT`` s: a timeout, a missing program or (with ``check``) a failure is one
    :class:`ImageError` line naming ``what`` (the program by default) and apt's reason."""
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True,
            timeout=_TIMEOUT, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ImageError(
            f"{what or argv[0]} took longer than {_TIMEOUT:.0f} s: is the Debian "
            "archive reachable?"
        ) from None
    except OSError as exc:
        raise ImageError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    if proc.returncode != 0 and check:
        raise ImageError(f"{what or argv[0]} failed: {_reason(proc.stderr)}{_hint(proc.stderr)}")
    return proc


def parse_config(dump: str) -> dict[str, list[str]]:
    """``apt-config dump`` -> {key: [values]} (list items repeat ``KEY::``)."""
    config: dict[str, list[str]] = {}
    for line in dump.splitlines():
        key, _, value = line.partition(" ")
        value = value.strip().removesuffix(";").strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            config.setdefault(key, []).append(value[1:-1])
    return config


_POLICY_VERSION = re.compile(r"^\s+(?:\*\*\*\s+)?(\S+)\s+(-?\d+)$")
_POLICY_SOURCE = re.compile(r"^\s+-?\d+\s+\S+\s+(\S+)\s+\S+\s+Packages$")


def parse_policy(text: str) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """``apt-cache policy`` -> {package: [(version, (suite, ...)), ...]} in apt's order
    (newest first); a suite is the ``bookworm-backports`` of a source line
    ``100 http://deb.debian.org/debian bookworm-backports/main arm64 Packages``.  The
    package name loses any ``:arch`` apt prints after it."""
    out: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    name, in_table = "", False
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            name, in_table = line[:-1].split(":", 1)[0], False
            out.setdefault(name, [])
        elif line.strip() == "Version table:":
            in_table = True
        elif in_table and name and (m := _POLICY_SOURCE.match(line)):
            version, suites = out[name][-1]
            out[name][-1] = (version, (*suites, m.group(1).split("/", 1)[0]))
        elif in_table and name and (m := _POLICY_VERSION.match(line)):
            out[name].append((m.group(1), ()))
    return out


def apt_state(paths: Sequence[str]) -> str | None:
    """A digest of the files and directories in ``paths`` (names, sizes and mtimes, no
    contents; apt's ``partial`` download directories left out); None if there are none."""
    h = hashlib.sha256()
    found = False
    for top in paths:
        for dirpath, dirnames, filenames in os.walk(top) if os.path.isdir(top) else [
            (os.path.dirname(top), [], [os.path.basename(top)])
        ]:
            dirnames[:] = sorted(d for d in dirnames if d != "partial")
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                found = True
                h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest() if found else None


def _parse_filename(name: str) -> tuple[str, str]:
    """``name_version_arch.deb`` -> (name, version), undoing apt's quoting of the epoch."""
    parts = name.removesuffix(".deb").split("_")
    return (parts[0], unquote(parts[1])) if len(parts) == 3 else (name, "")


def _reason(stderr: str) -> str:
    """The line of apt's stderr that says what went wrong (its first ``E:``)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln.removeprefix("E:").strip() for ln in lines if ln.startswith("E:")]
    warnings = [ln.removeprefix("W:").strip() for ln in lines if ln.startswith("W:")]
    return (errors or warnings or lines or ["no reason given"])[0]


def _hint(stderr: str) -> str:
    if re.search(r"Temporary failure resolving|Could not (connect|resolve)|timed out|"
                 r"Network is unreachable", stderr):
        return " (the Debian archive is unreachable: check the network or apt's proxy)"
    if re.search(r"404|Unable to locate|Can't find a source|No packages found", stderr):
        return " (apt's package lists are out of date: run 'apt-get update')"
    return ""

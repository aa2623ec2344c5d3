"""``cpuplug image qemu``: Debian version order, what is fetched, and the unpacked tree.

The resolver and the installer run against a stand-in apt; the real fetch of QEMU 10
from bookworm-backports is exercised by tests/e2e/test_qemu.py (mandatory with CI=true).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from cpuplug import cli
from cpuplug.image.apt import Package
from cpuplug.image.apt_private import debian_source
from cpuplug.image.errors import ImageError
from cpuplug.image.qemu import (
    _install,
    compare_versions,
    resolve,
    satisfies,
    upstream_of,
    version_matches,
)

Q10 = "1:10.0.2+ds-2+deb13u1~bpo12+1"
Q72 = "1:7.2+dfsg-7+deb12u18+b3"

PAIRS = [
    ("1.0", "1.0"), ("1.0", "1.1"), ("1.0~rc1", "1.0"), ("1:0.9", "2.0"), ("1.0-1", "1.0-2"),
    ("1.0-1~bpo12+1", "1.0-1"), ("1.16.3-2~bpo12+1", "1.16.2-1"), ("1.0a", "1.0"),
    ("1.0+b1", "1.0"), (Q10, Q72), ("1:7.2+dfsg-7+deb12u18", Q72), ("10.0.2+ds~", "10.0.2+ds-2"),
    ("2.36-9+deb12u14", "2.34"), ("1.0.0+git-20190125.36a4c85-5.1", "1.0.0"), ("1.2", "1.10"),
]  # fmt: skip


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_version_order_is_dpkgs(a: str, b: str) -> None:
    if shutil.which("dpkg") is None:
        pytest.skip("no dpkg to compare with")
    for x, y in ((a, b), (b, a)):
        want = next(
            c for c, op in ((-1, "lt"), (0, "eq"), (1, "gt"))
            if subprocess.run(["dpkg", "--compare-versions", x, op, y], check=False).returncode
            == 0
        )  # fmt: skip
        assert compare_versions(x, y) == want, (x, y)


def test_relations_and_versions() -> None:
    assert satisfies("1.16.3-2~bpo12+1", ">>", "1.16.3-1~")
    assert not satisfies("1.16.2-1", ">>", "1.16.3-1~")
    assert satisfies(Q10, ">>", "1:10.0.2+ds~") and satisfies("anything", "", "")
    assert upstream_of(Q10) == "10.0.2" and upstream_of(Q72) == "7.2"
    assert version_matches(Q10, "10") and version_matches(Q10, "10.0")
    assert not version_matches(Q10, "1") and not version_matches(Q72, "10")
    assert version_matches(Q72, None)


def test_the_backports_entry_takes_the_hosts_debian_mirror(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    assert debian_source([tmp_path / "none.list", deb822], "bookworm") == (
        "http://mirror.example/debian", "/usr/share/keyrings/debian-archive-keyring.gpg")
    classic = tmp_path / "sources.list"
    classic.write_text("# deb http://old/ bookworm main\n"
                       "deb [arch=amd64 signed-by=/k.gpg] https://m.example/debian bookworm main\n")
    assert debian_source([classic], "bookworm") == ("https://m.example/debian", "/k.gpg")
    assert debian_source([], "bookworm") == ("http://deb.debian.org/debian", None)


# ------------------------------------------------------------------ a stand-in apt


def stanza(name: str, version: str, arch: str = "amd64", depends: str = "") -> dict[str, str]:
    s = {"Package": name, "Version": version, "Architecture": arch, "Filename": f"pool/{name}"}
    if depends:
        s["Depends"] = depends
    return s


ARCHIVE = [
    # bookworm (apt's candidates), then backports
    stanza("qemu-system-x86", Q72, depends=f"libglib2.0-0 (>= 2.56), qemu-system-common (= {Q72}),"
           " qemu-system-data (>> 1:7.2+dfsg~), seabios, ipxe-qemu"),
    stanza("qemu-system-common", Q72, depends="libglib2.0-0"),
    stanza("qemu-system-data", "1:7.2+dfsg-7+deb12u18", "all"),
    stanza("seabios", "1.16.2-1", "all"),
    stanza("ipxe-qemu", "1.0.0+git-20190125.36a4c85-5.1", "all"),
    stanza("libglib2.0-0", "2.74.6-2", depends="libffi8 (>= 3.4), libc6 (>= 2.34)"),
    stanza("libffi8", "3.4.4-1"),
    stanza("qemu-system-x86", Q10, depends=f"libc6 (>= 2.34), libglib2.0-0 (>= 2.67.3), "
           f"qemu-system-common (= {Q10}), qemu-system-data (>> 1:10.0.2+ds~), "
           "seabios (>> 1.16.3-1~), ipxe-qemu"),
    stanza("qemu-system-common", Q10, depends="libglib2.0-0 (>= 2.67.3), libpixman-1-0"),
    stanza("qemu-system-data", Q10, "all"),
    stanza("seabios", "1.16.3-2~bpo12+1", "all"),
]  # fmt: skip
CANDIDATES = {s["Package"]: s for s in ARCHIVE[:7]}


class FakeApt:
    deb_arch = "amd64"
    backports = "bookworm-backports"

    def __init__(self, installed: dict[str, str], tree: dict[str, dict[str, str]] | None = None):
        self._installed = installed
        self.tree = tree or {}
        """Files each package unpacks: name -> {relative path: content}."""

    def versions(
        self, names: Sequence[str], candidate: bool = False
    ) -> dict[str, list[dict[str, str]]]:
        if candidate:
            return {n: [CANDIDATES[n]] if n in CANDIDATES else [] for n in names}
        return {n: [s for s in ARCHIVE if s["Package"] == n] for n in names}

    def installed(self, names: Sequence[str]) -> dict[str, str]:
        return {n: v for n, v in self._installed.items() if n in names}

    def unpack(self, deb: Path, root: Path) -> None:
        for rel, content in self.tree.get(deb.name, {}).items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            path.chmod(0o755)


HOST_WITH_QEMU_72 = {
    "libc6": "2.36-9+deb12u14", "libglib2.0-0": "2.74.6-2", "libpixman-1-0": "0.42.2-1",
    "libffi8": "3.4.4-1", "seabios": "1.16.2-1", "ipxe-qemu": "1.0.0+git-20190125.36a4c85-5.1",
    "qemu-system-common": Q72, "qemu-system-data": "1:7.2+dfsg-7+deb12u18",
}  # fmt: skip


def specs(packages: list[Package]) -> list[str]:
    return [f"{p.name}={p.version}" for p in packages]


def test_qemu_10_on_a_host_with_qemu_72_needs_only_backports_firmware() -> None:
    got = resolve(FakeApt(HOST_WITH_QEMU_72), "x86_64", "10")
    assert specs(got) == [
        f"qemu-system-x86={Q10}",
        f"qemu-system-common={Q10}",  # ours, though the host has 7.2's
        f"qemu-system-data={Q10}",
        "seabios=1.16.3-2~bpo12+1",  # bookworm's 1.16.2 will not do
        "ipxe-qemu=1.0.0+git-20190125.36a4c85-5.1",  # ours: relocated QEMU reads only its tree
    ]  # no library: the host's all satisfy


def test_a_host_without_the_libraries_gets_them_from_its_own_release() -> None:
    got = resolve(FakeApt({"libc6": "2.36-9+deb12u14"}), "x86_64", "7.2")
    assert specs(got) == [
        f"qemu-system-x86={Q72}",
        "libglib2.0-0=2.74.6-2",
        f"qemu-system-common={Q72}",
        "qemu-system-data=1:7.2+dfsg-7+deb12u18",  # the candidate, not backports' 10.0
        "seabios=1.16.2-1",
        "ipxe-qemu=1.0.0+git-20190125.36a4c85-5.1",
        "libffi8=3.4.4-1",  # a dependency of a library fetched
    ]


def test_what_cannot_be_had_is_one_line() -> None:
    with pytest.raises(ImageError) as exc:
        resolve(FakeApt(HOST_WITH_QEMU_72), "x86_64", "9")
    assert str(exc.value) == (
        "no qemu-system-x86 9 in the host's sources or bookworm-backports "
        "(versions there: 10.0.2, 7.2)"
    )
    with pytest.raises(ImageError) as exc:
        resolve(FakeApt({"libc6": "2.36"}), "x86_64", "10")  # libpixman-1-0 is nowhere
    assert str(exc.value) == (
        "qemu-system-x86 10.0.2 needs libpixman-1-0, which neither this host has installed "
        "nor its apt sources offer"
    )


FAKE_QEMU = '#!/bin/sh\necho "QEMU emulator version 10.0.2 LD=$LD_LIBRARY_PATH"\n'


def test_the_tree_relocates_qemu_and_runs_as_is(tmp_path: Path) -> None:
    packages = [Package("qemu-system-x86", Q10, "amd64"), Package("seabios", "1.16.3", "all")]
    apt = FakeApt({}, {
        "q.deb": {"usr/bin/qemu-system-x86_64": FAKE_QEMU,
                  "usr/lib/x86_64-linux-gnu/qemu/ui-curses.so": "module"},
        "s.deb": {"usr/share/seabios/bios-256k.bin": "bios"},
    })  # fmt: skip
    debs = {packages[0]: Path("q.deb"), packages[1]: Path("s.deb")}
    made = _install(apt, "x86_64", packages, debs, tmp_path, "k1", lambda _m: None)
    tree = tmp_path / "k1" / "root"
    assert made.binary == tree / "usr/bin/qemu-system-x86_64", "no wrapper: no library fetched"
    assert made.version == "10.0.2" and made.package_version == Q10
    bundle = tree / "usr/bin/qemu-bundle"
    assert os.readlink(bundle) == "../.."
    assert (bundle / "usr/share/seabios/bios-256k.bin").read_text() == "bios"
    assert (tmp_path / "k1" / "qemu.json").is_file()
    assert not list(tmp_path.glob(".build-*"))


def test_libraries_the_host_lacks_get_a_wrapper(tmp_path: Path) -> None:
    packages = [Package("qemu-system-x86", Q10, "amd64"), Package("libfoo1", "1", "amd64")]
    apt = FakeApt({}, {
        "q.deb": {"usr/bin/qemu-system-x86_64": FAKE_QEMU},
        "l.deb": {"usr/lib/x86_64-linux-gnu/libfoo.so.1": "elf"},
    })  # fmt: skip
    debs = {packages[0]: Path("q.deb"), packages[1]: Path("l.deb")}
    made = _install(apt, "x86_64", packages, debs, tmp_path, "k2", lambda _m: None)
    assert made.binary == tmp_path / "k2" / "qemu-system-x86_64"
    out = subprocess.run([str(made.binary), "--version"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert f"LD={tmp_path}/k2/root/usr/lib/x86_64-linux-gnu" in out


def test_an_unpacked_qemu_that_does_not_run_is_one_line(tmp_path: Path) -> None:
    packages = [Package("qemu-system-x86", Q10, "amd64")]
    apt = FakeApt({}, {"q.deb": {"usr/bin/qemu-system-x86_64": "#!/bin/sh\n"
                                 "echo 'error while loading shared libraries: libx.so' >&2\n"
                                 "exit 127\n"}})  # fmt: skip
    with pytest.raises(ImageError) as exc:
        _install(apt, "x86_64", packages, {packages[0]: Path("q.deb")}, tmp_path, "k3",
                 lambda _m: None)  # fmt: skip
    assert str(exc.value) == (
        "the unpacked qemu-system-x86_64 does not run: "
        "error while loading shared libraries: libx.so"
    )
    assert not list(tmp_path.iterdir()), "nothing left of a QEMU that does not run"


# ------------------------------------------------------------------ the command


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = cli.main(argv)
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_command_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = _cli(["image", "qemu", "--arch", "sparc"], capsys)
    assert (rc, out) == (2, "")
    assert err == (
        "cpuplug: error: no image for architecture 'sparc': choose one of x86_64, aarch64\n"
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    rc, out, err = _cli(["image", "qemu", "--version", "10", "--cache", str(tmp_path)], capsys)
    assert (rc, out) == (1, "")
    assert err.startswith("cpuplug: error: fetching QEMU needs Debian's apt and dpkg (apt-get,")
    assert err.count("\n") == 1

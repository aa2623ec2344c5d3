"""apt without installing: deb822 parsing, exact versions, and every failure as one line
naming what to run.  apt and dpkg are replaced by small scripts on PATH here; the real
ones are used by tests/image/test_image_build.py."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from cpuplug.image import apt_private
from cpuplug.image.apt import (
    Apt,
    AptUnavailable,
    Package,
    apt_state,
    parse_config,
    parse_policy,
    parse_relations,
)
from cpuplug.image.deb822 import parse_stanzas
from cpuplug.image.errors import ImageError

SHOW = """\
Package: linux-image-cloud-amd64
Version: 6.1.192-3
Architecture: amd64
Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)
Description: Linux for x86-64 cloud (meta-package)
 This package depends on the latest Linux kernel
 for cloud platforms.

Package: busybox-static
Version: 1:1.35.0-4+deb12u1+b1
Architecture: amd64

Package: zlib1g
Version: 1:1.2.13.dfsg-1+deb12u1
Architecture: amd64
"""


def test_stanzas_join_continuation_lines() -> None:
    stanzas = parse_stanzas(SHOW)
    assert [s["Package"] for s in stanzas] == [
        "linux-image-cloud-amd64", "busybox-static", "zlib1g"]
    assert stanzas[0]["Description"].endswith("for cloud platforms.")


def test_relations() -> None:
    field = "libc6 (>= 2.35), libpython3.11-minimal (= 3.11.2-6), media-types | mime-support, x:any"
    assert parse_relations(field) == [
        [("libc6", ">=", "2.35")],
        [("libpython3.11-minimal", "=", "3.11.2-6")],
        [("media-types", "", ""), ("mime-support", "", "")],
        [("x", "", "")],
    ]


def test_package_names() -> None:
    p = Package("zlib1g", "1:1.2.13.dfsg-1+deb12u1", "amd64")
    assert p.spec == "zlib1g:amd64=1:1.2.13.dfsg-1+deb12u1"
    assert p.filename == "zlib1g_1%3a1.2.13.dfsg-1+deb12u1_amd64.deb"
    assert Package("tzdata", "2024a", "all").spec == "tzdata=2024a"


# ------------------------------------------------------------------ fake apt and dpkg


def _fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, foreign: str = "",
          show: str = SHOW, download: str = "ok") -> Path:
    """apt-get, apt-cache, apt-config, dpkg and dpkg-deb as shell scripts; PATH holds only them and
    the system's sh and coreutils."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "show.txt").write_text(show)
    scripts = {
        "apt-config": f"""
            echo 'APT "";'
            echo 'APT::Architecture "amd64";'
            echo 'APT::Architectures "";'
            for a in amd64 {foreign}; do echo "APT::Architectures:: \\"$a\\";"; done""",
        "dpkg": """
            if [ "$1" = -x ]; then mkdir -p "$3"; echo unpacked > "$3/$(basename "$2")"; fi
            """,
        "dpkg-deb": "exit 0",
        "apt-cache": f"cat {tmp_path}/show.txt",
        "apt-get": {
            "ok": """
                shift
                for spec in "$@"; do
                  name=${spec%%:*}; rest=${spec#*=}
                  ver=$(printf %s "$rest" | sed 's/:/%3a/g')
                  echo deb > "${name}_${ver}_amd64.deb"
                done""",
            "offline": """
                url=http://deb.debian.org/x.deb
                echo "E: Failed to fetch $url  Temporary failure resolving 'deb.debian.org'" >&2
                exit 100""",
            "stale": """
                echo "W: something" >&2
                echo "E: Failed to fetch http://deb.debian.org/x.deb  404  Not Found" >&2
                exit 100""",
        }[download],
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + textwrap.dedent(body).strip() + "\n")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


def test_resolve_takes_the_kernel_the_metapackage_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(tmp_path, monkeypatch)
    packages = Apt("amd64").resolve("linux-image-cloud-amd64", ["busybox-static", "zlib1g"])
    assert packages == [
        Package("linux-image-6.1.0-57-cloud-amd64", "6.1.192-3", "amd64"),
        Package("busybox-static", "1:1.35.0-4+deb12u1+b1", "amd64"),
        Package("zlib1g", "1:1.2.13.dfsg-1+deb12u1", "amd64"),
    ]


def test_an_unknown_package_says_to_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(tmp_path, monkeypatch)
    with pytest.raises(ImageError) as exc:
        Apt("amd64").resolve("linux-image-cloud-amd64", ["busybox-static", "nonesuch"])
    assert str(exc.value) == (
        "apt knows no amd64 package nonesuch: run 'apt-get update' (images are built from "
        "Debian 12 bookworm's packages)"
    )


def test_no_apt_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AptUnavailable) as exc:
        Apt("amd64")
    assert "apt-get, apt-cache, apt-config, dpkg, dpkg-deb not found" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_foreign_architecture_not_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(tmp_path, monkeypatch)
    with pytest.raises(ImageError) as exc:
        Apt("arm64")
    assert str(exc.value) == (
        "apt is not configured for arm64 packages: run "
        "'dpkg --add-architecture arm64 && apt-get update' as root"
    )


def test_foreign_architecture_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(tmp_path, monkeypatch, foreign="arm64")
    assert Apt("arm64").deb_arch == "arm64"


def test_download_renames_into_place_and_reuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(tmp_path, monkeypatch)
    apt = Apt("amd64")
    pkgs = [Package("zlib1g", "1:1.2.13.dfsg-1+deb12u1", "amd64"),
            Package("busybox-static", "1:1.35", "amd64")]
    debs = apt.download(pkgs, tmp_path / "debs")
    assert sorted(p.name for p in debs.values()) == sorted(p.filename for p in pkgs)
    assert sorted(os.listdir(tmp_path / "debs")) == sorted(p.filename for p in pkgs)
    # Already there: apt-get is not asked again (a failing one proves it).
    (tmp_path / "bin" / "apt-get").write_text("#!/bin/sh\nexit 1\n")
    assert apt.download(pkgs, tmp_path / "debs") == debs
    apt.unpack(debs[pkgs[0]], tmp_path / "root")
    assert (tmp_path / "root" / pkgs[0].filename).read_text() == "unpacked\n"


@pytest.mark.parametrize(("mode", "hint"), [
    ("offline", "the Debian archive is unreachable"),
    ("stale", "apt's package lists are out of date: run 'apt-get update'"),
])
def test_download_failures_are_one_line_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, hint: str
) -> None:
    _fake(tmp_path, monkeypatch, download=mode)
    with pytest.raises(ImageError) as exc:
        Apt("amd64").download([Package("zlib1g", "1", "amd64")], tmp_path / "debs")
    message = str(exc.value)
    assert message.startswith("apt-get download failed: Failed to fetch")
    assert hint in message and "\n" not in message
    assert not list((tmp_path / "debs").glob("*.deb"))


def test_resolution_is_remembered_until_apts_state_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(tmp_path, monkeypatch)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "Packages").write_text("a")
    monkeypatch.setattr(Apt, "state_paths", lambda self: [str(lists)])
    memo = tmp_path / "memo" / "amd64.json"
    apt = Apt("amd64")
    first = apt.resolve_memo("linux-image-cloud-amd64", ["zlib1g"], memo)
    assert memo.is_file()
    (tmp_path / "show.txt").write_text(SHOW.replace("1:1.2.13.dfsg-1+deb12u1", "9:9"))
    assert apt.resolve_memo("linux-image-cloud-amd64", ["zlib1g"], memo) == first
    # A different question is not answered from the memo.
    assert apt.resolve_memo("linux-image-cloud-amd64", ["busybox-static"], memo)[1].name == (
        "busybox-static")
    # apt update changed the lists: asked again.
    (lists / "Packages").write_text("b, longer")
    assert apt.resolve_memo("linux-image-cloud-amd64", ["zlib1g"], memo)[1].version == "9:9"


def test_state_paths_follow_apts_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(tmp_path, monkeypatch)
    monkeypatch.delenv("APT_CONFIG", raising=False)
    assert Apt("amd64").state_paths() == [
        "/var/lib/apt/lists/", "/var/lib/dpkg/status", "/var/lib/dpkg/arch", "/etc/apt"]
    config = parse_config(
        'Dir "/";\nDir::State "/tmp/x/state";\nDir::State::lists "lists/";\n'
        'Dir::State::status "/var/lib/dpkg/status";\nAPT::Architectures:: "amd64";\n'
        'APT::Architectures:: "arm64";\nAPT::Architectures "";\n'
    )
    assert config["APT::Architectures::"] == ["amd64", "arm64"]
    monkeypatch.setenv("APT_CONFIG", "/tmp/x/apt.conf")
    apt = Apt("amd64")
    apt.config = config
    assert apt.state_paths() == ["/tmp/x/state/lists/", "/var/lib/dpkg/status",
                                 "/var/lib/dpkg/arch", "/etc/apt", "/tmp/x/apt.conf"]


def test_apt_state_sees_new_and_changed_files(tmp_path: Path) -> None:
    (tmp_path / "partial").mkdir()
    (tmp_path / "a").write_text("1")
    before = apt_state((str(tmp_path),))
    (tmp_path / "partial" / "x").write_text("downloading")  # ignored, as apt's own temp
    assert apt_state((str(tmp_path),)) == before
    os.utime(tmp_path / "a", (time.time() + 10, time.time() + 10))
    assert apt_state((str(tmp_path),)) != before
    assert apt_state((str(tmp_path / "nothing"),)) is None


# ------------------------------------------------------------------ a private apt state


def _fake_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, update: str = "ok",
                  stale: bool = False, host_arm64: bool = False) -> tuple[Path, Path, Path]:
    """apt and dpkg for a host configured for amd64 only (``host_arm64``: and arm64),
    whose apt honours ``-c FILE`` the way the real one does for what the builder reads:
    ``Dir::*`` and the architecture; a bookworm host whose sources (in ``etc/``) name
    ``http://mirror.example/debian``.  ``apt-cache policy`` offers bookworm's 6.1 and
    backports' 6.12 kernel, ``apt-cache show`` the version asked for.  An update fetches
    the index of each suite in the private sources.  Every call is logged; returns
    (calls log, host lists, private dir)."""
    log, host_lists, private = tmp_path / "calls.log", tmp_path / "host" / "lists", tmp_path / "p"
    host_lists.mkdir(parents=True)
    foreign = """echo 'APT::Architectures:: "arm64";'""" if host_arm64 else ""
    etc = tmp_path / "etc"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /k.gpg\n")
    (etc / "sources.list.d" / "old.list.disabled").write_text("deb http://x/ bookworm main\n")
    os_release = tmp_path / "os-release"
    os_release.write_text('PRETTY_NAME="Debian GNU/Linux 12"\nVERSION_CODENAME=bookworm\n')
    monkeypatch.setattr(apt_private, "OS_RELEASE", os_release)
    kernel_61 = ("Package: linux-image-arm64\nVersion: 6.1.176-1\nArchitecture: arm64\n"
                 "Depends: linux-image-6.1.0-99-arm64 (= 6.1.176-1)\n\n")
    (tmp_path / "show.txt").write_text(kernel_61 + SHOW.replace("amd64", "arm64"))
    (tmp_path / "show-612.txt").write_text(SHOW_612)
    (tmp_path / "policy.txt").write_text(POLICY)
    if stale:
        (tmp_path / "stale").write_text("")
    conf = 'conf=""; [ "$1" = -c ] && conf=$2'
    lists = f'{conf}; lists=$(sed -n \'s/^Dir::State::lists "\\(.*\\)";/\\1/p\' "$conf")'
    scripts = {
        "apt-config": f"""
            {conf}
            echo 'APT "";'
            if [ -n "$conf" ]; then
              grep -E '^(Dir::|APT::Architecture )' "$conf"
              echo 'APT::Architectures:: "arm64";'
            else
              echo 'APT::Architecture "amd64";'
              echo 'APT::Architectures:: "amd64";'
              {foreign}
              echo 'Dir::State "{tmp_path}/host";'
              echo 'Dir::State::lists "lists/";'
              echo 'Dir::Etc "{etc}";'
            fi""",
        "apt-cache": f"""
            case "$*" in
              *policy*) cat {tmp_path}/policy.txt;;
              *linux-image-arm64:arm64=6.12*) cat {tmp_path}/show-612.txt;;
              *) cat {tmp_path}/show.txt;;
            esac""",
        "apt-get": f"""
            {lists}
            case "$*" in
              *update*)
                if [ {update} = ok ]; then
                  touch "$lists/deb.debian.org_bookworm_main_binary-arm64_Packages"
                  parts=$(sed -n 's/^Dir::Etc::sourceparts "\\(.*\\)";/\\1/p' "$conf")
                  for f in "$parts"/cpuplug-*.sources; do [ -e "$f" ] || continue
                    suite=$(sed -n 's/^Suites: //p' "$f")
                    touch "$lists/m_debian_dists_${{suite}}_main_binary-arm64_Packages"
                  done
                  rm -f {tmp_path}/stale
                else
                  echo "W: Failed to fetch http://deb.debian.org/x  Temporary failure \\
resolving 'deb.debian.org'" >&2
                  echo "W: Some index files failed to download." >&2
                fi;;
              *download*)
                if [ -e {tmp_path}/stale ]; then
                  echo "E: Failed to fetch http://deb.debian.org/x.deb  404  Not Found" >&2
                  exit 100
                fi
                for spec in "$@"; do case "$spec" in *=*)
                  name=${{spec%%:*}}; ver=$(printf %s "${{spec#*=}}" | sed 's/:/%3a/g')
                  echo deb > "${{name}}_${{ver}}_arm64.deb";; esac
                done;;
            esac""",
        "dpkg": "exit 0",
        "dpkg-deb": "exit 0",
    }
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n'
                        + textwrap.dedent(body).strip() + "\n")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.delenv("APT_CONFIG", raising=False)
    return log, host_lists, private


def test_a_foreign_architecture_gets_an_apt_state_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not configured on the host: the builder's own apt state in the cache, updated
    once; the host's dpkg and apt are never asked to change."""
    log, host_lists, private = _fake_private(tmp_path, monkeypatch)
    apt = Apt("arm64", private_dir=private)
    conf = private / "apt.conf"
    text = conf.read_text()
    assert 'APT::Architectures { "arm64"; };' in text
    assert f'Dir::State::lists "{private}/state/lists/";' in text
    assert "#clear APT::Update::Post-Invoke-Success;" in text
    assert (private / "state" / "status").read_bytes() == b""
    assert apt.state_paths()[0] == f"{private}/state/lists/"
    packages = apt.resolve("linux-image-cloud-arm64", ["zlib1g"])
    assert packages[1] == Package("zlib1g", "1:1.2.13.dfsg-1+deb12u1", "arm64")
    apt.download(packages, tmp_path / "debs")
    calls = log.read_text().splitlines()
    assert calls[0] == "apt-config dump", "the host's configuration is read first"
    assert all(f"-c {conf}" in c for c in calls[1:] if c.startswith("apt")), calls
    assert [c.split()[3] for c in calls if c.startswith("apt-get")] == ["update", "download"]
    assert not [c for c in calls if c.startswith("dpkg")], calls
    assert not list(host_lists.iterdir()), "the host's lists are untouched"


def test_the_private_lists_are_fetched_again_only_after_the_hosts_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, host_lists, private = _fake_private(tmp_path, monkeypatch)

    def updates() -> int:
        return sum(" update" in c for c in log.read_text().splitlines())

    Apt("arm64", private_dir=private)
    Apt("arm64", private_dir=private)
    assert updates() == 1
    later = time.time() + 60
    os.utime(host_lists, (later, later))  # the host ran apt-get update
    Apt("arm64", private_dir=private)
    assert updates() == 2


def test_private_lists_that_cannot_be_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apt-get update exits 0 when no index could be fetched: no lists at all is one
    line saying so; lists fetched before stay in use (an offline host still builds)."""
    _, _, private = _fake_private(tmp_path, monkeypatch, update="offline")
    with pytest.raises(ImageError) as exc:
        Apt("arm64", private_dir=private)
    message = str(exc.value)
    assert message.startswith("apt-get update of the arm64 package lists (kept apart from "
                              f"the host's in {private}) failed: Failed to fetch")
    assert "the Debian archive is unreachable" in message and "\n" not in message
    lists = private / "state" / "lists"
    (lists / "old_Packages").write_text("")
    assert Apt("arm64", private_dir=private).deb_arch == "arm64"
    assert not (private / "updated").exists(), "still due for an update"


def test_a_package_gone_from_the_archive_refreshes_the_private_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _, private = _fake_private(tmp_path, monkeypatch)
    apt = Apt("arm64", private_dir=private)
    (tmp_path / "stale").write_text("")  # the archive moved on since our update
    debs = apt.download([Package("zlib1g", "1:1", "arm64")], tmp_path / "debs")
    assert [p.name for p in debs.values()] == ["zlib1g_1%3a1_arm64.deb"]
    assert sum(" update" in c for c in log.read_text().splitlines()) == 2


# ------------------------------------------------------------------ the kernel's suite

POLICY = """\
linux-image-arm64:
  Installed: (none)
  Candidate: 6.1.176-1
  Version table:
     6.12.95-1~bpo12+1 100
        100 http://deb.debian.org/debian bookworm-backports/main arm64 Packages
 *** 6.1.176-1 500
        500 http://deb.debian.org/debian bookworm/main arm64 Packages
        100 /var/lib/dpkg/status
"""

SHOW_612 = """\
Package: linux-image-arm64
Version: 6.12.95-1~bpo12+1
Architecture: arm64
Depends: linux-image-6.12.95+deb12-arm64 (= 6.12.95-1~bpo12+1)

Package: busybox-static
Version: 1:1.35.0-4+deb12u1+b1
Architecture: arm64

Package: qemu-efi-aarch64
Version: 2022.11-6+deb12u2
Architecture: all
"""


def test_policy_gives_each_version_with_its_suites() -> None:
    assert parse_policy(POLICY) == {"linux-image-arm64": [
        ("6.12.95-1~bpo12+1", ("bookworm-backports",)), ("6.1.176-1", ("bookworm",))]}
    assert parse_policy("linux-image-arm64:arm64:\n  Installed: (none)\n  Candidate: (none)\n"
                        "  Version table:\n") == {"linux-image-arm64": []}


def test_the_kernel_comes_from_its_suite_and_the_rest_at_apts_candidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aarch64's kernel is backports' (apt's candidate would be bookworm's 6.1); busybox
    and the firmware (Architecture: all, asked for unqualified) stay bookworm's."""
    log, _, private = _fake_private(tmp_path, monkeypatch)
    apt = Apt("arm64", private_dir=private, kernel_suite="backports")
    assert apt.kernel_suite == "bookworm-backports"
    packages = apt.resolve("linux-image-arm64", ["busybox-static"], ["qemu-efi-aarch64"])
    assert packages == [
        Package("linux-image-6.12.95+deb12-arm64", "6.12.95-1~bpo12+1", "arm64"),
        Package("busybox-static", "1:1.35.0-4+deb12u1+b1", "arm64"),
        Package("qemu-efi-aarch64", "2022.11-6+deb12u2", "all"),
    ]
    calls = [c for c in log.read_text().splitlines() if c.startswith("apt-cache")]
    assert calls[0].endswith(" policy linux-image-arm64:arm64")
    assert calls[1].endswith(" show --no-all-versions linux-image-arm64:arm64=6.12.95-1~bpo12+1 "
                             "busybox-static:arm64 qemu-efi-aarch64")
    # Without a suite: apt's candidate, bookworm's 6.1 (the image of before).
    plain = Apt("arm64", private_dir=private).resolve("linux-image-arm64", ["busybox-static"])
    assert plain[0] == Package("linux-image-6.1.0-99-arm64", "6.1.176-1", "arm64")


def test_no_kernel_in_the_suite_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, private = _fake_private(tmp_path, monkeypatch)
    (tmp_path / "policy.txt").write_text(POLICY.replace("bookworm-backports/", "bookworm/"))
    with pytest.raises(AptUnavailable) as exc:
        Apt("arm64", private_dir=private, kernel_suite="backports").resolve(
            "linux-image-arm64", [])
    assert str(exc.value) == (
        f"apt's arm64 package lists (kept apart from the host's in {private}) have no "
        "linux-image-arm64 from bookworm-backports: is bookworm-backports reachable on the "
        "host's Debian mirror? run 'apt-get update'")


def test_the_private_apt_sees_the_hosts_sources_plus_backports_on_its_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private state made before (bookworm's lists only) is updated once more, for the
    backports index; the sources are the host's files (symlinks) and one of ours."""
    log, _, private = _fake_private(tmp_path, monkeypatch)
    Apt("arm64", private_dir=private)  # the state of before: no backports
    assert not any("backports" in f.name for f in (private / "state" / "lists").iterdir())
    Apt("arm64", private_dir=private, kernel_suite="backports")
    Apt("arm64", private_dir=private, kernel_suite="backports")
    assert sum(" update" in c for c in log.read_text().splitlines()) == 2
    parts = private / "sources.list.d"
    assert sorted(p.name for p in parts.iterdir()) == [
        "cpuplug-bookworm-backports.sources", "host-debian.sources"]
    assert os.readlink(parts / "host-debian.sources") == str(tmp_path / "etc" / "sources.list.d"
                                                              / "debian.sources")
    assert (parts / "cpuplug-bookworm-backports.sources").read_text().splitlines()[1:] == [
        "Types: deb", "URIs: http://mirror.example/debian", "Suites: bookworm-backports",
        "Components: main", "Signed-By: /k.gpg"]
    conf = (private / "apt.conf").read_text()
    assert f'Dir::Etc::sourceparts "{parts}";' in conf
    assert f'Dir::Etc::sourcelist "{tmp_path}/etc/sources.list";' in conf


def test_a_host_apt_with_arm64_but_no_backports_is_not_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, host_lists, private = _fake_private(tmp_path, monkeypatch, host_arm64=True)
    assert Apt("arm64").private_dir is None, "the host's apt as it is"
    with pytest.raises(ImageError, match="apt has no arm64 package lists of bookworm-backports"):
        Apt("arm64", kernel_suite="backports")
    assert Apt("arm64", private_dir=private, kernel_suite="backports").private_dir == private
    (host_lists / "m_debian_dists_bookworm-backports_main_binary-arm64_Packages").write_text("")
    assert Apt("arm64", private_dir=private, kernel_suite="backports").private_dir is None

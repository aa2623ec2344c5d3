"""``cpuplug image build|ls``: registered like every party, one-line errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cpuplug import cli
from cpuplug.image.store import Image, ImageStore


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_ls_of_an_empty_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(["image", "ls", "--cache", str(tmp_path)], capsys)
    assert rc == 0 and out == f"no images in {tmp_path} (cpuplug image build makes one)\n"
    rc, out, _ = _run(["image", "ls", "--cache", str(tmp_path), "--json"], capsys)
    assert rc == 0 and json.loads(out) == []


def test_cache_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CPUPLUG_CACHE", str(tmp_path / "env"))
    rc, out, _ = _run(["image", "ls"], capsys)
    assert rc == 0 and str(tmp_path / "env") in out


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["image", "build", "--arch", "sparc"], 2,
     "cpuplug: error: no image for architecture 'sparc': choose one of x86_64, aarch64\n"),
    (["image"], 2, "cpuplug: error: image: the following arguments are required: COMMAND\n"),
    (["image", "ls", "--root", "x"], 2,
     "cpuplug: error: unrecognized arguments: --root x\n"),
])
def test_usage_errors_are_one_line(
    argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = _run(argv, capsys)
    assert (rc, out, err) == (code, "", message)


def test_build_without_apt_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    rc, out, err = _run(["image", "build", "--arch", "x86_64", "--cache", str(tmp_path)], capsys)
    assert rc == 1 and out == ""
    assert err.startswith("cpuplug: error: building an image needs Debian's apt and dpkg")
    assert err.count("\n") == 1


def test_ls_names_each_images_firmware(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ImageStore(tmp_path)
    for key, arch, fw in (("a" * 16, "x86_64", None), ("b" * 16, "aarch64", "QEMU_EFI.fd")):
        staged = tmp_path / f"stage-{key}"
        staged.mkdir()
        for name in ("vmlinuz", "initrd.img", *([fw] if fw else [])):
            (staged / name).write_bytes(b"x")
        store.install(staged, Image(staged / "vmlinuz", staged / "initrd.img", "6", arch, key,
                                    "c", built=time.time(),
                                    firmware=staged / fw if fw else None))  # fmt: skip
    rc, out, _ = _run(["image", "ls", "--cache", str(tmp_path)], capsys)
    lines = out.splitlines()
    assert rc == 0 and lines[0].split()[:4] == ["KEY", "ARCH", "KERNEL", "FIRMWARE"]
    assert {tuple(ln.split()[:4]) for ln in lines[1:]} == {
        ("a" * 16, "x86_64", "6", "-"), ("b" * 16, "aarch64", "6", "QEMU_EFI.fd")}
    rc, out, _ = _run(["image", "ls", "--cache", str(tmp_path), "--json"], capsys)
    assert {i["key"]: i["firmware"] for i in json.loads(out)} == {
        "a" * 16: None, "b" * 16: str(tmp_path / "images" / ("b" * 16) / "QEMU_EFI.fd")}

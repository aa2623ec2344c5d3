"""The newc writer, read back by our reader and, when the host has one, by ``cpio``
itself (GNU cpio or busybox's applet); the initramfs tree's ordering rules."""

from __future__ import annotations

import gzip
import io
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from cpuplug.image.cpio import MAGIC, Entry, NewcWriter, read_newc
from cpuplug.image.errors import ImageError
from cpuplug.image.initramfs import Initramfs


def _archive(entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    w = NewcWriter(out)
    for e in entries:
        w.add(e)
    w.close()
    assert w.written == len(out.getvalue())
    return out.getvalue()


ENTRIES = [
    Entry("bin", stat.S_IFDIR | 0o755),
    Entry("bin/hello", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n", mtime=1234567),
    Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
    Entry("dev", stat.S_IFDIR | 0o755),
    Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
    Entry("empty", stat.S_IFREG | 0o644, b""),
    Entry("odd", stat.S_IFREG | 0o600, b"abc", uid=1000, gid=100),
]


def test_round_trip_keeps_every_field() -> None:
    data = _archive(ENTRIES)
    assert list(read_newc(data)) == ENTRIES


def test_layout_is_the_kernels() -> None:
    data = _archive(ENTRIES)
    assert data.startswith(MAGIC)
    assert len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data[-128:]
    # Every header starts on a 4-byte boundary and regular files have nlink 1 (the
    # kernel's unpacker takes nlink >= 2 for a hard link).
    pos = 0
    while True:
        assert pos % 4 == 0 and data[pos : pos + 6] == MAGIC
        mode = int(data[pos + 14 : pos + 22], 16)
        nlink = int(data[pos + 38 : pos + 46], 16)
        size = int(data[pos + 54 : pos + 62], 16)
        namesize = int(data[pos + 94 : pos + 102], 16)
        if stat.S_ISREG(mode):
            assert nlink == 1
        name = data[pos + 110 : pos + 110 + namesize - 1]
        if name == b"TRAILER!!!":
            break
        pos += 110 + namesize
        pos += -pos % 4 + size
        pos += -pos % 4


def test_file_content_can_come_from_a_host_file(tmp_path: Path) -> None:
    host = tmp_path / "big"
    host.write_bytes(bytes(range(256)) * 5000)
    [entry] = read_newc(_archive([Entry("big", stat.S_IFREG | 0o644, host)]))
    assert entry.data == host.read_bytes()


def test_reader_refuses_garbage() -> None:
    with pytest.raises(ImageError):
        list(read_newc(b"not a cpio archive at all" * 10))
    with pytest.raises(ImageError):
        list(read_newc(_archive(ENTRIES)[:300]))


def _cpio_lister() -> list[str] | None:
    if shutil.which("cpio"):
        return ["cpio", "-t", "--quiet"]
    busybox = shutil.which("busybox")
    if busybox and "cpio" in subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.split():
        return [busybox, "cpio", "-t"]
    return None


def test_an_independent_cpio_reads_it() -> None:
    lister = _cpio_lister()
    if lister is None:
        pytest.skip("neither cpio nor busybox cpio on this host")
    proc = subprocess.run(lister, input=_archive(ENTRIES), capture_output=True, timeout=30,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == [e.path for e in ENTRIES]


# ------------------------------------------------------------------------ initramfs tree


def test_tree_writes_parents_first_sorted_and_gzip_deterministic(tmp_path: Path) -> None:
    tree = Initramfs()
    tree.file("/usr/lib/python3.11/os.pyc", b"x")
    tree.symlink("/usr/bin/python3", "python3.11")
    tree.file("/init", b"#!/bin/sh\n", 0o755)
    tree.char_device("/dev/console", 5, 1)
    tree.directory("/tmp", 0o1777)
    a, b = tmp_path / "a.gz", tmp_path / "b.gz"
    size = tree.write(a)
    tree.write(b)
    assert a.read_bytes() == b.read_bytes()
    raw = gzip.decompress(a.read_bytes())
    assert size == len(raw)
    paths = [e.path for e in read_newc(raw)]
    for i, p in enumerate(paths):
        parent = p.rpartition("/")[0]
        assert not parent or parent in paths[:i], p
    assert paths == sorted(paths, key=lambda p: p.split("/"))
    modes = {e.path: e.mode for e in read_newc(raw)}
    assert modes["tmp"] == stat.S_IFDIR | 0o1777
    assert modes["init"] == stat.S_IFREG | 0o755
    assert stat.S_ISDIR(modes["usr/lib"])


def test_tree_refuses_conflicts() -> None:
    tree = Initramfs()
    tree.file("/a/b", b"1")
    tree.file("/a/b", b"1")  # the same twice is fine
    with pytest.raises(ImageError):
        tree.file("/a/b", b"2")
    with pytest.raises(ImageError):
        tree.file("/a/b/c", b"under a file")
    tree.directory("/a")  # an implied directory may be declared too


def test_copy_keeps_symlinks_and_exec_bits(tmp_path: Path) -> None:
    (tmp_path / "prog").write_bytes(b"\x7fELF")
    (tmp_path / "prog").chmod(0o4755)
    (tmp_path / "link").symlink_to("/lib/x/prog")
    tree = Initramfs()
    tree.copy("/bin/prog", tmp_path / "prog")
    tree.copy("/bin/link", tmp_path / "link")
    assert tree.paths() == ["/bin", "/bin/link", "/bin/prog"]
    got = {e.path: e for e in read_newc(_write(tree, tmp_path))}
    assert got["bin/prog"].mode == stat.S_IFREG | 0o755  # no setuid from a host file
    assert got["bin/link"].data == b"/lib/x/prog"


def _write(tree: Initramfs, tmp_path: Path) -> bytes:
    path = tmp_path / "t.gz"
    tree.write(path)
    return gzip.decompress(path.read_bytes())

"""The guest file tree: sysfs-like registration, Linux errno semantics, cgroupfs hooks."""

from __future__ import annotations

import errno
import threading

import pytest

from cpuplug.errors import CpuplugError
from cpuplug.guest.vfs import GuestOSError, Vfs, normpath


def test_register_read_write_listdir() -> None:
    vfs = Vfs()
    state = {"v": "0"}
    vfs.register("/sys/devices/system/cpu/cpu1/online", lambda: state["v"] + "\n",
                 lambda d: state.__setitem__("v", d.strip()))  # fmt: skip
    vfs.register("/sys/devices/system/cpu/online", lambda: "0\n")
    assert vfs.read("/sys/devices/system/cpu/cpu1/online") == "0\n"
    vfs.write("/sys//devices/./system/cpu/cpu1/online", "1\n")
    assert state["v"] == "1"
    assert vfs.listdir("/sys/devices/system/cpu") == ["cpu1", "online"]
    assert vfs.listdir("/") == ["sys"]
    assert vfs.exists("/sys/devices") and vfs.is_dir("/sys/devices")
    assert not vfs.exists("/sys/nope")
    assert vfs.is_writable("/sys/devices/system/cpu/cpu1/online")
    assert not vfs.is_writable("/sys/devices/system/cpu/online")


def test_content_is_produced_on_every_read() -> None:
    vfs = Vfs()
    counter = iter(range(100))
    vfs.register("/proc/x", lambda: str(next(counter)))
    assert [vfs.read("/proc/x") for _ in range(3)] == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("op", "path", "err", "text"),
    [
        ("read", "/sys/x", errno.ENOENT, "/sys/x: No such file or directory"),
        ("read", "/sys", errno.EISDIR, "/sys: Is a directory"),
        ("read", "/sys/ro/x", errno.ENOTDIR, "/sys/ro/x: Not a directory"),
        ("write", "/sys/ro", errno.EACCES, "/sys/ro: Permission denied"),
        ("write", "/sys", errno.EISDIR, "/sys: Is a directory"),
        ("listdir", "/sys/ro", errno.ENOTDIR, "/sys/ro: Not a directory"),
        ("listdir", "/nope", errno.ENOENT, "/nope: No such file or directory"),
        ("mkdir", "/sys/new", errno.EPERM, "/sys/new: Operation not permitted"),
        ("mkdir", "/sys/ro", errno.EEXIST, "/sys/ro: File exists"),
        ("rmdir", "/sys", errno.EPERM, "/sys: Operation not permitted"),
        ("read", "relative", errno.EINVAL, "relative: Invalid argument"),
    ],
)
def test_errors_read_like_linux(op: str, path: str, err: int, text: str) -> None:
    vfs = Vfs()
    vfs.register("/sys/ro", lambda: "x")
    with pytest.raises(GuestOSError) as info:
        if op == "write":
            vfs.write(path, "1")
        else:
            getattr(vfs, op)(path)
    assert info.value.errno == err
    assert str(info.value) == text
    assert isinstance(info.value, CpuplugError)


def test_render_and_errname() -> None:
    exc = GuestOSError(errno.ENOENT, "/x")
    assert exc.render("cat") == "cat: /x: No such file or directory"
    assert exc.errname == "ENOENT"
    assert str(GuestOSError(errno.EBUSY)) == "Device or resource busy"


def test_callback_errors_get_the_callers_path() -> None:
    vfs = Vfs()

    def deny(_data: str) -> None:
        raise GuestOSError(errno.EPERM)

    vfs.register("/sys/devices/system/cpu/cpu5/online", lambda: "0\n", deny)
    with pytest.raises(GuestOSError) as info:
        vfs.write("/sys/devices/system/cpu/../cpu/cpu5/online", "1")
    assert str(info.value) == "/sys/devices/system/cpu/cpu5/online: Operation not permitted"


def test_register_conflicts_and_unregister_subtree() -> None:
    vfs = Vfs()
    vfs.register("/sys/cpu/cpu3/online", lambda: "1")
    vfs.register("/sys/cpu/cpu3/topology/core_id", lambda: "3")
    with pytest.raises(GuestOSError) as info:
        vfs.register("/sys/cpu/cpu3/online", lambda: "1")
    assert info.value.errno == errno.EEXIST
    with pytest.raises(GuestOSError) as info:
        vfs.register("/sys/cpu/cpu3/online/x", lambda: "1")
    assert info.value.errno == errno.ENOTDIR
    vfs.unregister("/sys/cpu/cpu3")
    assert not vfs.exists("/sys/cpu/cpu3/topology/core_id")
    assert vfs.listdir("/sys/cpu") == []
    with pytest.raises(GuestOSError) as info:
        vfs.unregister("/sys/cpu/cpu3")
    assert info.value.errno == errno.ENOENT


def test_normpath() -> None:
    assert normpath("/a//b/./c/../d/") == "/a/b/d"
    assert normpath("/../..") == "/"


def test_dir_hooks_apply_below_their_directory() -> None:
    vfs = Vfs()
    made: list[str] = []
    removed: list[str] = []

    def mk(path: str) -> None:
        made.append(path)
        vfs.register_dir(path)

    def rm(path: str) -> None:
        removed.append(path)
        vfs.unregister(path)

    vfs.set_dir_ops("/sys/fs/cgroup", mk, rm)
    vfs.mkdir("/sys/fs/cgroup/a")
    vfs.mkdir("/sys/fs/cgroup/a/b")
    assert made == ["/sys/fs/cgroup/a", "/sys/fs/cgroup/a/b"]
    with pytest.raises(GuestOSError) as info:
        vfs.mkdir("/sys/fs/cgroup/x/y")
    assert info.value.errno == errno.ENOENT
    vfs.rmdir("/sys/fs/cgroup/a/b")
    assert removed == ["/sys/fs/cgroup/a/b"] and not vfs.exists("/sys/fs/cgroup/a/b")
    with pytest.raises(GuestOSError) as info:
        vfs.mkdir("/sys/fs/new")  # outside the hooked tree
    assert info.value.errno == errno.EPERM


def test_callbacks_run_outside_the_lock() -> None:
    """A blocking store (CPU_ON waits) must not stall readers or deadlock registration."""
    vfs = Vfs()
    entered = threading.Event()
    release = threading.Event()

    def slow_store(_data: str) -> None:
        entered.set()
        release.wait(5)

    def registering_store(_data: str) -> None:
        vfs.register("/sys/new", lambda: "n")  # re-enters the tree from a callback

    vfs.register("/sys/slow", lambda: "s", slow_store)
    vfs.register("/sys/reg", lambda: "r", registering_store)
    t = threading.Thread(target=vfs.write, args=("/sys/slow", "1"))
    t.start()
    try:
        assert entered.wait(5)
        assert vfs.read("/sys/reg") == "r"  # not blocked by the slow writer
        vfs.write("/sys/reg", "1")
        assert vfs.read("/sys/new") == "n"
    finally:
        release.set()
        t.join(5)
    assert not t.is_alive()


def test_concurrent_register_unregister_and_read() -> None:
    vfs = Vfs()
    vfs.register("/sys/stable", lambda: "ok")
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for i in range(300):
                vfs.register(f"/sys/cpu/cpu{i}/online", lambda: "1")
                vfs.unregister(f"/sys/cpu/cpu{i}")
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    t = threading.Thread(target=churn)
    t.start()
    reads = 0
    while True:  # at least one round, even if the churn already finished
        assert vfs.read("/sys/stable") == "ok"
        for name in vfs.listdir("/sys"):
            assert name in ("stable", "cpu")
        reads += 1
        if stop.is_set():
            break
    t.join(5)
    assert not errors and reads > 0

"""The guest's in-memory file tree: what sysfs and cgroupfs are to Linux.

Kernel code *registers* files with a ``read`` callback (and a ``write`` one when
the file is writable), exactly as a sysfs attribute has ``show``/``store``: the
content is produced on every read, so it is never stale. Userland (``cat``,
``sh``'s ``>``) and the agent only see paths and strings.

Contract for the rest of the guest
----------------------------------
* ``Vfs.register(path, read, write=None)`` — parent directories appear as
  needed (like kobjects); registering an existing path is ``EEXIST``.
* ``Vfs.unregister(path)`` — removes a file or a whole directory subtree
  (``cpuN`` disappears at once with everything in it); ``ENOENT`` if absent.
* ``read``/``write`` callbacks run **outside** the tree lock, so a callback may
  block (``cpuN/online`` waits up to 5 s for CPU_ON) or register/unregister
  other files without deadlocking. A callback signals failure by raising
  :class:`GuestOSError` with an errno; the path may be left empty — the tree
  fills in the path the caller used.
* ``Vfs.set_dir_ops(path, mkdir, rmdir)`` — directories at or below ``path``
  accept ``mkdir``/``rmdir`` (cgroupfs); elsewhere ``mkdir`` is ``EPERM`` as on
  sysfs. The hooks get the normalised path and do the registering themselves.
* ``VfsView(vfs, BindMount(point, source))`` — the tree as a process in a mount
  namespace of its own sees it: directory ``point`` shows the tree's ``source``.
  Same user-side methods as ``Vfs``; paths in errors are the caller's.
* Written data is passed verbatim (``echo 1 >`` writes ``"1\\n"``); callbacks
  strip it, as sysfs ``store`` functions do.

Every method is thread-safe: vCPU threads, the hotplug worker and the agent use
the tree concurrently.
"""

from __future__ import annotations

import errno as _errno
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from cpuplug.errors import CpuplugError

__all__ = [
    "BindMount",
    "GuestOSError",
    "ReadFn",
    "Vfs",
    "VfsView",
    "WriteFn",
    "normpath",
    "strerror",
]

_T = TypeVar("_T")

ReadFn = Callable[[], str]
WriteFn = Callable[[str], None]
DirHook = Callable[[str], None]

_STRERROR: dict[int, str] = {
    _errno.EPERM: "Operation not permitted",
    _errno.ENOENT: "No such file or directory",
    _errno.ESRCH: "No such process",
    _errno.EINTR: "Interrupted system call",
    _errno.EIO: "Input/output error",
    _errno.EAGAIN: "Resource temporarily unavailable",
    _errno.ENOMEM: "Cannot allocate memory",
    _errno.EACCES: "Permission denied",
    _errno.EBUSY: "Device or resource busy",
    _errno.EEXIST: "File exists",
    _errno.ENODEV: "No such device",
    _errno.ENOTDIR: "Not a directory",
    _errno.EISDIR: "Is a directory",
    _errno.EINVAL: "Invalid argument",
    _errno.ENOSPC: "No space left on device",
    _errno.ERANGE: "Numerical result out of range",
    _errno.ENOTEMPTY: "Directory not empty",
    _errno.ETIMEDOUT: "Connection timed out",
    _errno.ENOSYS: "Function not implemented",
}


def strerror(err: int) -> str:
    """glibc's message for ``err`` (fixed table, so output does not depend on the host)."""
    return _STRERROR.get(err, f"Unknown error {err}")


class GuestOSError(CpuplugError):
    """A failed file operation in the guest, carrying a Linux errno.

    ``str()`` renders ``"PATH: MESSAGE"`` like coreutils; :meth:`render` prefixes
    the program name (``"cat: /x: No such file or directory"``).
    """

    def __init__(self, err: int, path: str = "") -> None:
        self.errno = err
        self.path = path
        self.strerror = strerror(err)
        super().__init__(f"{path}: {self.strerror}" if path else self.strerror)

    @property
    def errname(self) -> str:
        """Symbolic name, e.g. ``"ENOENT"``."""
        return _errno.errorcode.get(self.errno, f"E{self.errno}")

    def with_path(self, path: str) -> GuestOSError:
        """This error with ``path`` filled in when the raiser did not know it."""
        return self if self.path else GuestOSError(self.errno, path)

    def render(self, prog: str) -> str:
        return f"{prog}: {self}"


def normpath(path: str) -> str:
    """Normalise an absolute path (``//``, ``.``, ``..``); ``EINVAL`` if relative.

    ``..`` at the root stays at the root, as on Linux.
    """
    if not path.startswith("/"):
        raise GuestOSError(_errno.EINVAL, path)
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def _split(path: str) -> list[str]:
    norm = normpath(path)
    return [] if norm == "/" else norm[1:].split("/")


@dataclass
class _File:
    read: ReadFn
    write: WriteFn | None


@dataclass
class _Dir:
    children: dict[str, _Dir | _File] = field(default_factory=dict)
    mkdir: DirHook | None = None
    rmdir: DirHook | None = None


class Vfs:
    """The tree. Directories are implicit containers; files are callback pairs."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._root = _Dir()

    # ------------------------------------------------------------ kernel side

    def register(self, path: str, read: ReadFn, write: WriteFn | None = None) -> None:
        """Add a file; missing parent directories are created. ``EEXIST`` if taken."""
        parts = _split(path)
        if not parts:
            raise GuestOSError(_errno.EEXIST, path)
        with self._lock:
            parent = self._ensure_dir(parts[:-1], path)
            if parts[-1] in parent.children:
                raise GuestOSError(_errno.EEXIST, normpath(path))
            parent.children[parts[-1]] = _File(read, write)

    def register_dir(self, path: str) -> None:
        """Make sure a (possibly empty) directory exists, e.g. ``/sys/fs/cgroup``."""
        with self._lock:
            self._ensure_dir(_split(path), path)

    def unregister(self, path: str) -> None:
        """Remove a file or a whole directory subtree. ``ENOENT`` if it is not there."""
        parts = _split(path)
        if not parts:
            raise GuestOSError(_errno.EBUSY, "/")
        with self._lock:
            parent = self._lookup_dir(parts[:-1], path)
            if parent.children.pop(parts[-1], None) is None:
                raise GuestOSError(_errno.ENOENT, normpath(path))

    def set_dir_ops(self, path: str, mkdir: DirHook, rmdir: DirHook) -> None:
        """Let ``mkdir``/``rmdir`` work at and below directory ``path`` via these hooks."""
        with self._lock:
            node = self._ensure_dir(_split(path), path)
            node.mkdir, node.rmdir = mkdir, rmdir

    # ------------------------------------------------------------ user side

    def read(self, path: str) -> str:
        """The file's content (produced now). ``ENOENT``, ``EISDIR`` or the callback's errno."""
        node = self._lookup(path)
        if isinstance(node, _Dir):
            raise GuestOSError(_errno.EISDIR, normpath(path))
        try:
            return node.read()
        except GuestOSError as exc:
            raise exc.with_path(normpath(path)) from None

    def write(self, path: str, data: str) -> None:
        """Store ``data``. ``EACCES`` for a read-only file, as sysfs's 0444 mode gives root."""
        node = self._lookup(path)
        if isinstance(node, _Dir):
            raise GuestOSError(_errno.EISDIR, normpath(path))
        if node.write is None:
            raise GuestOSError(_errno.EACCES, normpath(path))
        try:
            node.write(data)
        except GuestOSError as exc:
            raise exc.with_path(normpath(path)) from None

    def listdir(self, path: str) -> list[str]:
        """Sorted names in a directory. ``ENOTDIR`` for a file."""
        node = self._lookup(path)
        if not isinstance(node, _Dir):
            raise GuestOSError(_errno.ENOTDIR, normpath(path))
        with self._lock:
            return sorted(node.children)

    def exists(self, path: str) -> bool:
        try:
            self._lookup(path)
        except GuestOSError:
            return False
        return True

    def is_dir(self, path: str) -> bool:
        try:
            return isinstance(self._lookup(path), _Dir)
        except GuestOSError:
            return False

    def is_writable(self, path: str) -> bool:
        """True for a file with a ``write`` callback."""
        try:
            node = self._lookup(path)
        except GuestOSError:
            return False
        return isinstance(node, _File) and node.write is not None

    def mkdir(self, path: str) -> None:
        """Create a directory through the nearest ancestor's hook (cgroupfs); else EPERM."""
        norm = normpath(path)
        parts = _split(norm)
        if not parts:
            raise GuestOSError(_errno.EEXIST, norm)
        with self._lock:
            parent = self._lookup_dir(parts[:-1], norm)
            if parts[-1] in parent.children:
                raise GuestOSError(_errno.EEXIST, norm)
            hook = self._nearest_hook(parts[:-1], "mkdir")
        _run_hook(hook, norm)

    def rmdir(self, path: str) -> None:
        """Remove a directory through the hook of an ancestor (cgroupfs); else EPERM."""
        norm = normpath(path)
        parts = _split(norm)
        if not parts:
            raise GuestOSError(_errno.EBUSY, norm)
        node = self._lookup(norm)
        if not isinstance(node, _Dir):
            raise GuestOSError(_errno.ENOTDIR, norm)
        with self._lock:
            hook = self._nearest_hook(parts[:-1], "rmdir")
        _run_hook(hook, norm)

    # ------------------------------------------------------------ internals

    def _lookup(self, path: str) -> _Dir | _File:
        with self._lock:
            return self._walk(_split(path), path)

    def _lookup_dir(self, parts: list[str], path: str) -> _Dir:
        """The directory ``parts`` names; the caller holds the lock."""
        node = self._walk(parts, path)
        if not isinstance(node, _Dir):
            raise GuestOSError(_errno.ENOTDIR, normpath(path))
        return node

    def _walk(self, parts: list[str], path: str) -> _Dir | _File:
        """The node at ``parts`` (errors name ``path``); the caller holds the lock."""
        node: _Dir | _File = self._root
        for part in parts:
            if not isinstance(node, _Dir):
                raise GuestOSError(_errno.ENOTDIR, normpath(path))
            child = node.children.get(part)
            if child is None:
                raise GuestOSError(_errno.ENOENT, normpath(path))
            node = child
        return node

    def _ensure_dir(self, parts: list[str], path: str) -> _Dir:
        node = self._root
        for part in parts:
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = _Dir()
            if not isinstance(child, _Dir):
                raise GuestOSError(_errno.ENOTDIR, normpath(path))
            node = child
        return node

    def _nearest_hook(self, parts: list[str], which: str) -> DirHook | None:
        node: _Dir | _File = self._root
        found: DirHook | None = getattr(node, which)
        for part in parts:
            assert isinstance(node, _Dir)
            node = node.children[part]
            if isinstance(node, _Dir) and getattr(node, which) is not None:
                found = getattr(node, which)
        return found


def _under(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or inside it (both normalised, ``directory`` not ``/``)."""
    return path == directory or path.startswith(directory + "/")


@dataclass(frozen=True)
class BindMount:
    """At ``point`` the tree's directory ``source`` shows (``mount --bind source point``).

    ``source=None`` is a mount whose directory has been removed since: every path at
    or below ``point`` is ``ENOENT`` (Linux shows an empty, deleted directory; nothing
    in the model lists it, and what matters is that a new directory created under the
    old name does not show through).
    """

    point: str
    source: str | None

    def __post_init__(self) -> None:
        for what, path in (("point", self.point), ("source", self.source)):
            if path is not None and (normpath(path) != path or path == "/"):
                raise ValueError(f"mount {what} must be a normalised path below /: {path!r}")


class VfsView:
    """The tree as one process sees it, through at most one :class:`BindMount`.

    Why a view and not a second tree: the files are the kernel's (one ``cpu.max``
    per cgroup, whoever reads it); what differs between processes is only which
    path names which file. A container's cgroup namespace comes with its own cgroup2
    mount on ``/sys/fs/cgroup`` rooted at the container's cgroup, so inside it
    ``/sys/fs/cgroup/cpu.max`` is the tree's ``/sys/fs/cgroup/<id>/cpu.max`` and the
    rest of the cgroup tree has no name at all. The view translates the caller's
    paths, reports the caller's path in every error (the tree path would name a
    directory the caller cannot see), and refuses ``rmdir`` of the mount point with
    ``EBUSY``, as Linux refuses removing any mount point. ``..`` is resolved in the
    caller's path first, so it leaves the mount at ``point``'s parent, as on Linux.

    Without a mount the view is the tree itself (the guest root's view).
    """

    def __init__(self, vfs: Vfs, mount: BindMount | None = None) -> None:
        self.vfs = vfs
        self.mount = mount

    def resolve(self, path: str) -> str:
        """The tree path the caller's ``path`` names (``ENOENT`` under a removed mount)."""
        view = normpath(path)
        m = self.mount
        if m is None or not _under(view, m.point):
            return view
        if m.source is None:
            raise GuestOSError(_errno.ENOENT, view)
        return m.source + view[len(m.point) :]

    def read(self, path: str) -> str:
        return self._do(path, self.vfs.read)

    def write(self, path: str, data: str) -> None:
        self._do(path, lambda tree: self.vfs.write(tree, data))

    def listdir(self, path: str) -> list[str]:
        return self._do(path, self.vfs.listdir)

    def exists(self, path: str) -> bool:
        return self._test(path, self.vfs.exists)

    def is_dir(self, path: str) -> bool:
        return self._test(path, self.vfs.is_dir)

    def is_writable(self, path: str) -> bool:
        return self._test(path, self.vfs.is_writable)

    def mkdir(self, path: str) -> None:
        self._do(path, self.vfs.mkdir)

    def rmdir(self, path: str) -> None:
        if self.mount is not None and normpath(path) == self.mount.point:
            raise GuestOSError(_errno.EBUSY, self.mount.point)
        self._do(path, self.vfs.rmdir)

    def _do(self, path: str, op: Callable[[str], _T]) -> _T:
        tree = self.resolve(path)
        try:
            return op(tree)
        except GuestOSError as exc:
            raise self._repath(exc) from None

    def _test(self, path: str, op: Callable[[str], bool]) -> bool:
        try:
            tree = self.resolve(path)
        except GuestOSError:
            return False
        return op(tree)

    def _repath(self, exc: GuestOSError) -> GuestOSError:
        """``exc`` naming the caller's path for a tree path inside the mount's source."""
        m = self.mount
        if m is None or m.source is None or not exc.path.startswith("/"):
            return exc
        tree = normpath(exc.path)
        if not _under(tree, m.source):
            return exc
        return GuestOSError(exc.errno, m.point + tree[len(m.source) :])


def _run_hook(hook: DirHook | None, path: str) -> None:
    """mkdir/rmdir through a directory hook: EPERM where no filesystem takes it."""
    if hook is None:
        raise GuestOSError(_errno.EPERM, path)
    try:
        hook(path)
    except GuestOSError as exc:
        raise exc.with_path(path) from None

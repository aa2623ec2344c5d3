"""Sandbox state that survives the command that wrote it.

Every ``cpuplug`` invocation is a short-lived process; what a sandbox *is* lives in
``<root>/<name>/state.json``.  Three rules make that safe:

* **Atomic writes** — :meth:`StateStore.save` writes a temporary file, fsyncs it,
  renames it over ``state.json`` and fsyncs the directory, so a command killed at
  any instant leaves either the old or the new state, never half of one.
* **A per-sandbox lock** — commands that change a sandbox hold an exclusive
  ``flock`` on ``<root>/<name>/lock`` (:meth:`StateStore.lock`), with a timeout so a
  stuck peer produces an error instead of a hang.  Two ``update`` commands are
  serialised; the one that takes the lock last applies its resources last, so the
  last one wins.
* **Private directories** — the root and each sandbox directory are mode 0700 (the
  QMP and agent sockets inside grant control of the VM); sockets are chmod 0600.

A ``pending`` record is written *before* a resize touches the VMM and cleared after
the guest side is done, so the next command knows whether the file can be trusted
or must be reconciled with the VMM (``query-hotpluggable-cpus``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

from cpuplug.acpi.limits import MAX_CPUS
from cpuplug.cpuhp_abi import HotplugMode
from cpuplug.errors import CpuplugError, UsageError
from cpuplug.runtime.hypervisor import HypervisorKind
from cpuplug.runtime.records import ContainerStatus, SandboxStatus

STATE_VERSION = 1
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""Sandbox names are directory names and container ids (agent protocol's rule)."""

HISTORY_LIMIT = 64
MARKER = ".cpuplug-sandbox"
"""Made first in every sandbox directory: only such directories are cpuplug's."""
SOCKET_PATH_MAX = 107
"""``sun_path`` holds 108 bytes including the terminating NUL."""


class StateError(CpuplugError):
    """The state directory or a state file is unusable."""


class SandboxNotFound(UsageError):
    """No sandbox of that name exists (a usage error: exit code 2)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no such sandbox: {name}")
        self.name = name


class SandboxExists(UsageError):
    def __init__(self, name: str) -> None:
        super().__init__(f"sandbox {name} already exists (cpuplug rm {name} first)")


class StatelessSandbox(StateError):
    """A sandbox directory with neither a state file nor a QMP socket.

    It is what a ``run`` that failed before its first save left behind (D1: a full
    disk).  No VMM can be running in it, so ``rm`` may remove it without ``-f``; it is
    an error rather than :class:`SandboxNotFound` because the name is still taken.
    """

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(
            f"sandbox {name} has no state file: {path} is what a failed run left "
            f"(cpuplug rm {name} removes it)"
        )
        self.name = name


class LockTimeout(CpuplugError):
    """Another command held the sandbox lock for longer than we were willing to wait."""


def default_root() -> Path:
    """``$CPUPLUG_ROOT``, ``/run/cpuplug`` for root, else ``$XDG_RUNTIME_DIR/cpuplug``.

    Without ``XDG_RUNTIME_DIR`` (no login session) fall back to a per-user directory
    under the temp dir; it is created 0700 and must be owned by us.
    """
    env = os.environ.get("CPUPLUG_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/cpuplug")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "cpuplug"
    return Path(tempfile.gettempdir()) / f"cpuplug-{os.getuid()}"


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid sandbox name {name!r}: use 1-64 of [A-Za-z0-9_.-], starting alphanumeric"
        )
    return name


def _private_dir(path: Path) -> None:
    """Create ``path`` 0700 if missing; refuse one that is not ours or not private."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as exc:
        raise StateError(f"cannot create state directory {path}: {exc.strerror}") from None
    if st.st_uid != os.geteuid():
        raise StateError(f"state directory {path} is owned by uid {st.st_uid}, not us")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


@dataclass
class ContainerState:
    """One container in the sandbox, with the limits the user last asked for."""

    id: str
    cmd: list[str]
    quota: int | None = None
    period: int | None = None
    cpuset: str = ""
    status: str = "created"  # created | running | stopped


@dataclass
class SandboxState:
    """Everything a later command needs to find and drive the sandbox."""

    name: str
    created: float
    mode: str
    static: bool
    default_vcpus: str
    """A decimal/fraction string (exact), e.g. ``"1"`` or ``"1/2"``."""
    maxcpus: int
    boot_vcpus: int
    remove_timeout: float
    status: str = "creating"  # creating | running | stopped | failed
    vmm_pid: int | None = None
    vmm_start_ticks: int | None = None
    """``/proc/<pid>/stat`` start time, so a recycled pid is not mistaken for our VMM."""
    vmm_exe: str | None = None
    """The VMM's executable when started: part of its identity (runtime.process)."""
    hypervisor: str = "builtin"
    """The backend that started the VM (runtime.hypervisor.HypervisorKind value)."""
    plugs_used: int = 0
    """vCPU hot-adds over the VM's life (some VMMs bound them: Capabilities.max_plugs)."""
    vm: dict[str, Any] | None = None
    """The backend's options as prepared at ``run`` (runtime.hypervisor.VmSpec.extra)."""
    containers: list[ContainerState] = field(default_factory=list)
    plugged: list[int] = field(default_factory=list)
    """Core ids of plugged vCPUs in plug order (boot vCPUs first): newest is last."""
    target: int = 0
    warning: str | None = None
    pending: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    version: int = STATE_VERSION

    def record(self, step: dict[str, Any]) -> None:
        """Append a step to the bounded history (shown by ``inspect`` and ``events``)."""
        self.history.append(step)
        del self.history[:-HISTORY_LIMIT]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> SandboxState:
        """Parse and type-check a state file; anything off is a one-line :class:`StateError`.

        The file is ours, but it sits on disk where an editor, a full disk or a bug
        can change it; a wrong type must not surface later as a ``TypeError``
        traceback in whichever command first does arithmetic on it.
        """
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            if raw.get("version") != STATE_VERSION:
                raise ValueError(f"unsupported state version {raw.get('version')!r}")
            _check_fields(ContainerState, raw.get("containers", []), "containers", many=True)
            _check_fields(cls, raw, "")
            Fraction(raw["default_vcpus"])
            if not 1 <= raw["maxcpus"] <= MAX_CPUS:
                raise ValueError(f"maxcpus must be 1..{MAX_CPUS}, got {raw['maxcpus']}")
            if not raw.get("containers"):
                raise ValueError("a sandbox has one container, the state lists none")
            _check_choice("status", raw.get("status", "creating"), _STORED_STATUSES)
            _check_choice("mode", raw["mode"], [m.value for m in HotplugMode])
            _check_choice("hypervisor", raw.get("hypervisor", "builtin"),
                          [k.value for k in HypervisorKind])  # fmt: skip
            for c in raw["containers"]:
                _check_choice("containers[].status", c.get("status", "created"),
                              [s.value for s in ContainerStatus])  # fmt: skip
            raw["containers"] = [ContainerState(**c) for c in raw.get("containers", [])]
            return cls(**raw)
        except (ValueError, TypeError, AttributeError, KeyError, ZeroDivisionError) as exc:
            raise StateError(f"corrupt state file {where}: {exc}") from None


_STORED_STATUSES = [
    s.value
    for s in (SandboxStatus.CREATING, SandboxStatus.RUNNING, SandboxStatus.STOPPED,
              SandboxStatus.FAILED)
]  # fmt: skip
"""The statuses a state file may hold (``dead`` and ``broken`` are only ever derived)."""


def _check_choice(field_name: str, value: object, allowed: list[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{field_name} must be one of {', '.join(allowed)}, got {value!r}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_TYPE_CHECKS: dict[str, Callable[[object], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": _is_int,
    "bool": lambda v: isinstance(v, bool),
    "float": lambda v: _is_int(v) or isinstance(v, float),
    "str | None": lambda v: v is None or isinstance(v, str),
    "int | None": lambda v: v is None or _is_int(v),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "list[int]": lambda v: isinstance(v, list) and all(_is_int(x) for x in v),
    "dict[str, Any] | None": lambda v: v is None or isinstance(v, dict),
    "list[dict[str, Any]]": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
    "list[ContainerState]": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
}
"""How each annotation used in the state dataclasses is checked against parsed JSON
(annotations are strings here: ``from __future__ import annotations``)."""


def _check_fields(cls: type, raw: object, where: str, many: bool = False) -> None:
    """Raise ``TypeError`` naming the first field of ``raw`` whose JSON type is wrong."""
    items = raw if many else [raw]
    if not isinstance(items, list):
        raise TypeError(f"{where or 'state'} must be a list")
    for i, item in enumerate(items):
        prefix = f"{where}[{i}]." if many else ""
        if not isinstance(item, dict):
            raise TypeError(f"{where}[{i}] must be an object")
        for f in fields(cls):
            if f.name in item and not _TYPE_CHECKS[str(f.type)](item[f.name]):
                raise TypeError(
                    f"{prefix}{f.name} must be {f.type}, got {type(item[f.name]).__name__} "
                    f"{json.dumps(item[f.name])[:40]}"
                )


class StateStore:
    """The state directory: one private subdirectory per sandbox."""

    def __init__(self, root: str | Path | None = None) -> None:
        if root is not None and not str(root):
            # Path("") is the current directory: every folder in it would be listed
            raise UsageError("--root must not be empty")
        self.root = Path(root) if root is not None else default_root()

    @staticmethod
    def is_sandbox(d: Path) -> bool:
        """Whether ``d`` is a directory cpuplug made: its marker, a state file or a
        QMP socket (the last two for directories made before the marker existed).
        Nothing else under ``--root`` is listed, locked, or removed."""
        return any((d / f).exists() for f in (MARKER, "state.json", "qmp.sock"))

    def ensure_root(self) -> None:
        _private_dir(self.root)

    def dir(self, name: str) -> Path:
        return self.root / validate_name(name)

    def socket_path(self, name: str, which: str) -> Path:
        """Path of a sandbox socket; refused early if too long for ``sun_path``."""
        path = self.dir(name) / f"{which}.sock"
        if len(os.fsencode(path)) > SOCKET_PATH_MAX:
            raise UsageError(
                f"socket path {path} is longer than {SOCKET_PATH_MAX} bytes; use a shorter --root"
            )
        return path

    def create(self, name: str) -> Path:
        """Make the sandbox directory; the name must be free (mkdir is the arbiter)."""
        self.ensure_root()
        d = self.dir(name)
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            if not self.is_sandbox(d):
                raise UsageError(
                    f"{d} exists and is not a cpuplug sandbox: use another name or --root"
                ) from None
            raise SandboxExists(name) from None
        except OSError as exc:
            raise StateError(f"cannot create {d}: {exc.strerror}") from None
        try:
            (d / MARKER).touch(mode=0o600)
        except OSError as exc:
            with contextlib.suppress(OSError):
                d.rmdir()
            raise StateError(f"cannot create {d / MARKER}: {exc.strerror}") from None
        return d

    def exists(self, name: str) -> bool:
        return (self.dir(name) / "state.json").is_file()

    def names(self) -> list[str]:
        """Every sandbox directory, with a (readable) state file or not: a broken
        sandbox whose VMM may still run, or the empty directory of a failed ``run``,
        must stay visible, or nothing would ever clean it up and its name would stay
        taken without a trace (D1)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if NAME_RE.fullmatch(p.name) and p.is_dir() and self.is_sandbox(p)
        )

    def load(self, name: str) -> SandboxState:
        path = self.dir(name) / "state.json"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if not path.parent.is_dir() or not self.is_sandbox(path.parent):
                raise SandboxNotFound(name) from None
            if (path.parent / "qmp.sock").exists():
                raise StateError(f"sandbox {name} has lost its state file {path}") from None
            raise StatelessSandbox(name, path.parent) from None
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from None
        return SandboxState.from_json(text, str(path))

    def save(self, state: SandboxState) -> None:
        """Write + fsync + rename + fsync(dir): all or nothing, even on power loss.

        A failure (a full disk, a read-only mount) is a :class:`StateError` naming the
        state file: the bare ``OSError`` of a write or fsync names no file (D1).
        """
        d = self.dir(state.name)
        path = d / "state.json"
        data = state.to_json().encode("utf-8")
        try:
            fd, tmp = tempfile.mkstemp(prefix=".state.", dir=d)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise StateError(f"cannot write {path}: {exc.strerror or exc}") from None

    def remove(self, name: str) -> None:
        """Delete the sandbox directory, or say why it stays (:class:`StateError` naming
        it: a read-only mount, D10); errors used to be ignored and ``rm`` said it was done."""
        d = self.dir(name)
        if not d.is_dir():
            raise SandboxNotFound(name)
        try:
            shutil.rmtree(d)
        except OSError as exc:
            if d.exists():
                raise StateError(f"cannot remove {d}: {exc.strerror or exc}") from None

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 30.0) -> Iterator[None]:
        """Hold the sandbox's exclusive lock; :class:`LockTimeout` after ``timeout`` s.

        ``flock`` has no timed wait, so we retry a non-blocking attempt with a short,
        growing back-off.  The lock dies with the process, so a killed command never
        leaves a sandbox locked.
        """
        d = self.dir(name)
        if not d.is_dir() or not self.is_sandbox(d):
            raise SandboxNotFound(name)
        fd = _lock_fd(d)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if not flock_until(fd, deadline):
                    raise LockTimeout(
                        f"sandbox {name} is busy: another cpuplug command held its lock "
                        f"for more than {timeout:g}s"
                    )
                if _same_file(fd, d):
                    break
                # The directory was removed (and perhaps made again for a new sandbox
                # of the same name) while we waited: the lock we hold is the old
                # sandbox's. Start over on the current one.
                os.close(fd)
                fd = -1
                if not d.is_dir() or not self.is_sandbox(d):
                    raise SandboxNotFound(name)
                fd = _lock_fd(d)
            yield
        finally:
            if fd >= 0:
                os.close(fd)


def flock_until(fd: int, deadline: float) -> bool:
    """Take an exclusive ``flock`` on ``fd`` before ``time.monotonic()`` reaches
    ``deadline``; False if it could not. ``flock`` has no timed wait, so a
    non-blocking attempt is retried with a short, growing back-off."""
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _same_file(fd: int, d: Path) -> bool:
    """Whether the locked descriptor is still ``d``'s lock (``d/lock``, or ``d`` itself
    when it has none): a removed and re-made directory has new inodes."""
    held = os.fstat(fd)
    for path in (d / "lock", d):
        try:
            now = os.stat(path)
        except OSError:
            continue
        if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return True
    return False


_CANNOT_CREATE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT})
"""Why ``<dir>/lock`` may be impossible to open for writing or to create."""


def _lock_fd(d: Path) -> int:
    """A descriptor to ``flock`` for the sandbox directory ``d``.

    Normally ``d/lock``, created if missing.  ``flock`` needs no write access, so
    where that fails (a read-only mount, a directory we may not write into, a full
    disk) the existing lock file is opened read-only, and without one the directory
    itself is locked: ``stop`` and ``rm -f`` must still reach the VMM of a sandbox
    whose directory cannot be written (D10).  Every command falls back the same way
    on the same directory, so they still exclude each other.
    """
    lock = d / "lock"
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno not in _CANNOT_CREATE:
            raise StateError(f"cannot open {lock}: {exc.strerror or exc}") from None
    try:
        return os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StateError(f"cannot open {lock}: {exc.strerror or exc}") from None
    try:
        return os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(f"cannot lock {d}: {exc.strerror or exc}") from None

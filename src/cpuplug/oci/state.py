"""A container's state under runc's ``--root``: one private directory per container.

``<root>/<id>/`` holds ``state.json`` (what :class:`OciState` says), ``lock`` (the
``flock`` every changing command holds, so concurrent calls for one container are
serialised), ``start.fifo`` (how ``start`` wakes the shim) and ``shim.log``. The
sandbox VM itself lives in the cpuplug runtime's own state root (``$CPUPLUG_ROOT``,
``/run/cpuplug`` for root), under a short name derived from ``--root`` and the id:
runc's root plus docker's 64-character ids would not leave room for the VM's unix
sockets in ``sun_path``'s 108 bytes.

A container's status is derived, never trusted from the file alone (runc does the
same): ``stopped`` as soon as its shim or its VMM is gone.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cpuplug.errors import CpuplugError
from cpuplug.runtime.process import ProcessIdentity
from cpuplug.runtime.state import flock_until

STATE_VERSION = 1
LOCK_TIMEOUT = 60.0
ID_RE = re.compile(r"[\w+.-]+", re.ASCII)
"""runc's container id rule (``^[\\w+-\\.]+$``); ``.`` and ``..`` are refused too."""
SANDBOX_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class OciError(CpuplugError):
    """A runc-style failure: one line, exit code 1 (runc's for every error)."""


class ContainerNotFound(OciError):
    def __init__(self, cid: str) -> None:
        super().__init__("container does not exist")  # runc's words; containerd matches them
        self.id = cid


class Status(enum.StrEnum):
    """The OCI runtime spec's container states (runc's ``state``)."""

    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


def default_root() -> Path:
    """runc's default ``--root``, ours: ``/run/cpuplug-runc`` for root, else per user."""
    if os.geteuid() == 0:
        return Path("/run/cpuplug-runc")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "cpuplug-runc"
    return Path(tempfile.gettempdir()) / f"cpuplug-runc-{os.getuid()}"


def validate_id(cid: str) -> str:
    if not ID_RE.fullmatch(cid) or cid in (".", ".."):
        raise OciError(f"invalid id format: {cid}")
    return cid


def sandbox_name(root: Path, cid: str) -> str:
    """The sandbox's name in the runtime's root: readable, unique per (``--root``, id)."""
    digest = hashlib.sha256(f"{root.resolve()}\0{cid}".encode()).hexdigest()[:10]
    readable = SANDBOX_NAME_CHARS.sub("_", cid)[:12].lstrip("_.-") or "c"
    return f"{readable}-{digest}"


def rfc3339_now() -> str:
    """Now as runc writes ``created`` (RFC 3339, nanoseconds, UTC)."""
    now = time.time_ns()
    stamp = datetime.fromtimestamp(now // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{now % 1_000_000_000:09d}Z"


@dataclass
class Identity:
    """A host process of the container (the shim of its init or of an exec)."""

    pid: int
    start_ticks: int | None
    exe: str | None
    exec_id: str | None = None

    @classmethod
    def of(cls, pid: int, exec_id: str | None = None) -> Identity | None:
        ident = ProcessIdentity.of(pid)
        if ident is None:
            return None
        return cls(pid, ident.start_ticks, ident.exe, exec_id)

    def process(self) -> ProcessIdentity:
        return ProcessIdentity(self.pid, self.start_ticks, self.exe)

    def alive(self) -> bool:
        return self.process().matches()


@dataclass
class OciState:
    """What one container is, as ``create`` and later commands recorded it."""

    id: str
    bundle: str
    rootfs: str
    created: str
    sandbox: str
    """The sandbox's name in the runtime's root (``cpuplug ps`` lists it)."""
    sandbox_root: str
    status: str = Status.CREATING.value
    """creating | created | running | paused; ``stopped`` is only ever derived."""
    hypervisor: str = "builtin"
    terminal: bool = False
    shim: Identity | None = None
    execs: list[Identity] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    owner: str = ""
    version: int = STATE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> OciState:
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
                raise ValueError("not a cpuplug-runc state (or another version)")
            shim = raw.get("shim")
            raw["shim"] = Identity(**shim) if shim is not None else None
            raw["execs"] = [Identity(**e) for e in raw.get("execs", [])]
            st = cls(**raw)
            Status(st.status)
            return st
        except (ValueError, TypeError, KeyError) as exc:
            raise OciError(f"corrupt state file {where}: {exc}") from None


class Store:
    """runc's ``--root``: one directory per container."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def dir(self, cid: str) -> Path:
        return self.root / validate_id(cid)

    def fifo(self, cid: str) -> Path:
        return self.dir(cid) / "start.fifo"

    def create(self, cid: str) -> Path:
        """Make the container's directory: the id must be free (mkdir decides)."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise OciError(f"cannot create {self.root}: {exc.strerror}") from None
        d = self.dir(cid)
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            raise OciError("container with given ID already exists") from None  # runc's
        except OSError as exc:
            raise OciError(f"cannot create {d}: {exc.strerror}") from None
        return d

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "state.json").is_file())

    def load(self, cid: str) -> OciState:
        path = self.dir(cid) / "state.json"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ContainerNotFound(cid) from None
        except OSError as exc:
            raise OciError(f"cannot read {path}: {exc.strerror}") from None
        return OciState.from_json(text, str(path))

    def save(self, st: OciState) -> None:
        """Write + fsync + rename: a reader sees the old state or the new one."""
        d = self.dir(st.id)
        path = d / "state.json"
        try:
            fd, tmp = tempfile.mkstemp(prefix=".state.", dir=d)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(st.to_json())
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise OciError(f"cannot write {path}: {exc.strerror or exc}") from None

    def remove(self, cid: str) -> None:
        d = self.dir(cid)
        try:
            shutil.rmtree(d)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OciError(f"cannot remove {d}: {exc.strerror or exc}") from None

    @contextlib.contextmanager
    def lock(self, cid: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the container's lock (bounded wait, back-off polling: flock has no timeout)."""
        d = self.dir(cid)
        try:
            fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise ContainerNotFound(cid) from None
        except OSError as exc:
            raise OciError(f"cannot open {d / 'lock'}: {exc.strerror}") from None
        try:
            if not flock_until(fd, time.monotonic() + timeout):
                raise OciError(
                    f"container {cid} is busy: another command held it for more than "
                    f"{timeout:g}s"
                )
            yield
        finally:
            os.close(fd)

    def locked_by_other(self, cid: str) -> bool:
        """Whether another command holds the container's lock now."""
        try:
            with self.lock(cid, 0):
                return False
        except ContainerNotFound:
            return False
        except OciError:
            return True

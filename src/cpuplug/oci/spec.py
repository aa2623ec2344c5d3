"""What cpuplug-runc reads of the OCI runtime spec: a bundle's ``config.json``, an exec's
``process.json``, and the ``LinuxResources`` JSON ``update --resources`` gets.

Only what a sandbox uses is read, with the types the spec gives: ``process`` (args,
env, cwd, terminal), ``root.path``, ``hooks``, ``annotations`` and
``linux.resources.cpu`` (quota, period, cpus; zero or empty means unset, as docker
sends them). Anything malformed is an :class:`~cpuplug.oci.state.OciError` naming the
field. A bundle without ``linux.resources`` is refused: the sandbox is sized from it
(docs/oci.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpuplug.errors import CpuplugError
from cpuplug.oci.state import OciError
from cpuplug.runtime.sandbox import Resources
from cpuplug.runtime.sizing import parse_cpu_list

DEFAULT_HOOK_TIMEOUT = 60
"""Seconds a hook may run when config.json sets no ``timeout`` (every wait is bounded)."""
MAX_CFS_QUOTA_US = (1 << 44) - 1
"""Linux's ``max_cfs_runtime`` in µs (as ``cpuplug run`` checks it)."""


@dataclass(frozen=True)
class Process:
    """``process`` of config.json, or an exec's process.json."""

    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    terminal: bool = False

    def options(self) -> dict[str, Any]:
        """The agent's process options (``StartProcess``, ``CreateContainer``)."""
        return {"env": list(self.env), "cwd": self.cwd, "terminal": self.terminal}


@dataclass(frozen=True)
class Hook:
    path: str
    args: list[str]
    env: list[str]
    timeout: int


@dataclass(frozen=True)
class Spec:
    """A bundle's config.json, as far as cpuplug-runc uses it."""

    process: Process
    resources: Resources
    root: str
    hooks: dict[str, list[Hook]]
    annotations: dict[str, str]


def _load(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OciError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OciError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise OciError(f"{path}: invalid JSON: {exc}") from None
    except RecursionError:
        raise OciError(f"{path}: JSON nested too deeply") from None


def _obj(
    parent: dict[str, Any], key: str, where: str, path: str = "", *, required: bool = False
) -> dict[str, Any]:
    """``parent[key]``, an object (``{}`` when absent and not ``required``); ``path`` is
    the dotted name of ``parent`` in ``where`` (for messages)."""
    value = parent.get(key)
    if value is None:
        if required:
            raise OciError(f"{where}: {path}{key} is missing")
        return {}
    if not isinstance(value, dict):
        raise OciError(f"{where}: {path}{key} must be an object")
    return value


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise OciError(f"{what} must be a list of strings")
    return list(value)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OciError(f"{what} must be an integer, got {json.dumps(value)[:40]}")
    return value


def read_process(doc: Any, where: str) -> Process:
    if not isinstance(doc, dict):
        raise OciError(f"{where}: process must be an object")
    args = _strings(doc.get("args"), f"{where}: process.args")
    if not args:
        raise OciError(f"{where}: process.args must not be empty")
    cwd = doc.get("cwd", "/")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise OciError(f"{where}: process.cwd must be an absolute path")
    terminal = doc.get("terminal", False)
    if not isinstance(terminal, bool):
        raise OciError(f"{where}: process.terminal must be a boolean")
    return Process(args, _strings(doc.get("env"), f"{where}: process.env"), cwd, terminal)


def read_process_file(path: Path) -> Process:
    """``exec --process FILE``."""
    return read_process(_load(path, "process file"), str(path))


def read_bundle(bundle: Path) -> Spec:
    """``BUNDLE/config.json``."""
    where = str(bundle / "config.json")
    doc = _load(bundle / "config.json", "bundle config")
    if not isinstance(doc, dict):
        raise OciError(f"{where}: the document must be a JSON object")
    process = read_process(doc.get("process"), where)
    root = _obj(doc, "root", where)
    root_path = root.get("path", "rootfs")
    if not isinstance(root_path, str):
        raise OciError(f"{where}: root.path must be a string")
    linux = _obj(doc, "linux", where, required=True)
    resources = _obj(linux, "resources", where, "linux.", required=True)
    cpu = _obj(resources, "cpu", where, "linux.resources.")
    annotations = _obj(doc, "annotations", where)
    if not all(isinstance(v, str) for v in annotations.values()):
        raise OciError(f"{where}: annotations must map strings to strings")
    return Spec(
        process=process,
        resources=cpu_resources(cpu, f"{where}: linux.resources.cpu"),
        root=str((bundle / root_path).resolve()),
        hooks=_hooks(_obj(doc, "hooks", where), where),
        annotations=dict(annotations),
    )


def _hooks(doc: dict[str, Any], where: str) -> dict[str, list[Hook]]:
    out: dict[str, list[Hook]] = {}
    for kind, hooks in doc.items():
        if not isinstance(hooks, list):
            raise OciError(f"{where}: hooks.{kind} must be a list")
        out[kind] = []
        for i, h in enumerate(hooks):
            what = f"{where}: hooks.{kind}[{i}]"
            if not isinstance(h, dict) or not isinstance(h.get("path"), str):
                raise OciError(f"{what} needs a path")
            timeout = h.get("timeout", DEFAULT_HOOK_TIMEOUT)
            if _int(timeout, f"{what}.timeout") <= 0:
                raise OciError(f"{what}.timeout must be > 0")
            out[kind].append(
                Hook(
                    h["path"],
                    _strings(h.get("args"), f"{what}.args") or [h["path"]],
                    _strings(h.get("env"), f"{what}.env"),
                    timeout,
                )
            )
    return out


def cpu_resources(cpu: dict[str, Any], where: str) -> Resources:
    """``linux.resources.cpu`` as the runtime's :class:`Resources`: zero (or an empty
    cpuset) means unset, a negative quota means no limit, ``shares``, ``mems`` and the
    realtime fields are not a sandbox's business."""
    quota = _int(cpu["quota"], f"{where}.quota") if cpu.get("quota") is not None else 0
    period = _int(cpu["period"], f"{where}.period") if cpu.get("period") is not None else 0
    cpus = cpu.get("cpus") or ""
    if not isinstance(cpus, str):
        raise OciError(f"{where}.cpus must be a string")
    if period < 0:
        raise OciError(f"{where}.period must be >= 0, got {period}")
    if quota > MAX_CFS_QUOTA_US:
        raise OciError(f"{where}.quota {quota} exceeds the kernel's {MAX_CFS_QUOTA_US} µs")
    try:
        if cpus:
            parse_cpu_list(cpus)
        return Resources(
            quota=-1 if quota < 0 else (quota or None),
            period=period or None,
            cpuset=cpus or None,
        )
    except CpuplugError as exc:
        raise OciError(f"{where}: {exc}") from None


def read_update(text: str) -> Resources:
    """``update --resources``'s ``LinuxResources`` JSON (zero = leave unchanged)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OciError(f"unable to parse the resources: {exc}") from None
    except RecursionError:
        raise OciError("unable to parse the resources: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise OciError("unable to parse the resources: not a JSON object")
    return cpu_resources(_obj(doc, "cpu", "resources"), "resources: cpu")

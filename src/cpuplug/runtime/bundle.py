"""OCI bundles: ``cpuplug run --bundle DIR`` reads ``DIR/config.json``.

Only what sizing and starting need is read — ``process.args`` and
``linux.resources.cpu`` (``quota``, ``period``, ``cpus``) — with the types the OCI
runtime spec gives them; anything malformed is a :class:`UsageError` naming the
field, because a bundle is user input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpuplug.errors import UsageError
from cpuplug.runtime.sizing import parse_cpu_list


@dataclass(frozen=True)
class Bundle:
    args: list[str]
    quota: int | None = None
    period: int | None = None
    cpuset: str | None = None


def _int_field(cpu: dict[str, Any], key: str, where: str) -> int | None:
    value = cpu.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{where}: linux.resources.cpu.{key} must be an integer, got {value!r}")
    return value


def _object_field(
    parent: dict[str, Any] | None, key: str, name: str, where: str
) -> dict[str, Any] | None:
    """``parent[key]`` if it is an object, None if absent or null; anything else is
    refused (``"linux": []`` must not pass as "no limits")."""
    value = parent.get(key) if parent is not None else None
    if value is not None and not isinstance(value, dict):
        raise UsageError(f"{where}: {name} must be an object, got {json.dumps(value)[:40]}")
    return value


def read_bundle(directory: str | Path) -> Bundle:
    path = Path(directory) / "config.json"
    where = str(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"bundle {directory} has no config.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {where}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: invalid JSON: {exc}") from None
    except RecursionError:
        # The json module recurses per nesting level: a deep document exhausts the stack.
        raise UsageError(f"{where}: malformed bundle: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: the document must be a JSON object")
    process = doc.get("process")
    args = process.get("args") if isinstance(process, dict) else None
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise UsageError(f"{where}: process.args must be a non-empty list of strings")
    linux = _object_field(doc, "linux", "linux", where)
    resources = _object_field(linux, "resources", "linux.resources", where)
    cpu = _object_field(resources, "cpu", "linux.resources.cpu", where)
    if cpu is None:
        return Bundle(list(args))
    quota = _int_field(cpu, "quota", where)
    period = _int_field(cpu, "period", where)
    if period is not None and period <= 0:
        raise UsageError(f"{where}: linux.resources.cpu.period must be > 0, got {period}")
    cpus = cpu.get("cpus")
    if cpus is not None:
        if not isinstance(cpus, str):
            raise UsageError(f"{where}: linux.resources.cpu.cpus must be a string")
        parse_cpu_list(cpus)
    return Bundle(list(args), quota, period, cpus or None)

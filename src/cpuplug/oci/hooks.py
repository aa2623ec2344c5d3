"""OCI hooks, run on the host as the runtime spec says for a runtime's namespace.

Each hook is the program ``path`` with ``args`` (``args[0]`` is its ``argv[0]``) and
``env``, the container's state as JSON on its stdin, bounded by its ``timeout``.
A sandbox's container has no namespace on the host, so the hooks the spec runs in the
container's namespace (``createContainer``, ``startContainer``) run on the host too;
the state's ``pid`` is the shim's, whose network namespace is the container's on the
host (docker's ``libnetwork-setkey`` prestart hook configures that one).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from cpuplug.oci.spec import Hook
from cpuplug.oci.state import OciError

OUTPUT_KEPT = 2000


def run_hook(hook: Hook, state: dict[str, Any], kind: str) -> None:
    """Run one hook; :class:`OciError` (runc's wording) if it fails or times out."""
    env = dict(e.split("=", 1) for e in hook.env if "=" in e)
    try:
        proc = subprocess.run(
            hook.args,
            executable=hook.path,
            input=json.dumps(state).encode(),
            capture_output=True,
            env=env,
            timeout=hook.timeout,
            check=False,
            close_fds=True,
        )
    except subprocess.TimeoutExpired:
        raise OciError(
            f"error running {kind} hook {hook.path}: timed out after {hook.timeout}s"
        ) from None
    except OSError as exc:
        raise OciError(f"error running {kind} hook {hook.path}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).decode(errors="replace").strip()[-OUTPUT_KEPT:]
        code = proc.returncode
        status = f"signal {-code}" if code < 0 else f"exit status {code}"
        raise OciError(f"error running {kind} hook {hook.path}: {status}, output: {out}")


def run_hooks(hooks: dict[str, list[Hook]], kinds: tuple[str, ...], state: dict[str, Any]) -> None:
    for kind in kinds:
        for hook in hooks.get(kind, []):
            run_hook(hook, state, kind)


def hook_state(
    cid: str, status: str, pid: int, bundle: str, annotations: dict[str, str]
) -> dict[str, Any]:
    """The state a hook reads on stdin (the runtime spec's ``state``)."""
    return {
        "ociVersion": "1.0.2",
        "id": cid,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": annotations,
    }


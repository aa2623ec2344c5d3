"""The guest's /init script: valid shell, the modules in the order given, the agent run
as a child whose exit is reported before the VM powers off."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cpuplug.image.guest_init import MARKER, SELFTEST, render_init

MODULES = [("virtio_ring", "/lib/modules/r/kernel/virtio_ring.ko"),
           ("virtio", "/lib/modules/r/kernel/virtio.ko")]


def _script() -> str:
    return render_init(modules=MODULES, python="/usr/bin/python3",
                       pythonpath="/usr/lib/cpuplug", agent_module="cpuplug.guest.linux_agent",
                       agent_port="cpuplug.agent")


def test_shell_syntax(tmp_path: Path) -> None:
    sh = shutil.which("busybox") or shutil.which("sh")
    if sh is None:
        pytest.skip("no shell")
    path = tmp_path / "init"
    path.write_text(_script())
    argv = [sh, "sh", "-n", str(path)] if sh.endswith("busybox") else [sh, "-n", str(path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


def test_content() -> None:
    script = _script()
    lines = script.splitlines()
    assert lines[0] == "#!/bin/busybox sh"
    assert lines.index("load virtio_ring /lib/modules/r/kernel/virtio_ring.ko") < lines.index(
        "load virtio /lib/modules/r/kernel/virtio.ko")
    for needed in ("mount -t devtmpfs devtmpfs /dev",
                   "mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup",
                   'echo "+cpu +cpuset" > /sys/fs/cgroup/cgroup.subtree_control',
                   "ip link set lo up", "export PYTHONPATH=/usr/lib/cpuplug",
                   "/usr/bin/python3 -m cpuplug.guest.linux_agent", "poweroff -f"):
        assert needed in script, needed
    assert "exec /usr/bin/python3" not in script  # init outlives the agent to report it
    assert f"grep -qw {SELFTEST} /proc/cmdline" in script
    assert f'say() {{ echo "{MARKER} $*"; }}' in script

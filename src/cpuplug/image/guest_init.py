"""The guest's ``/init``: a busybox shell script that readies the VM for the agent.

Kept as a shell script because the kernel starts it before anything else exists: it
mounts what a kernel with ``DEVTMPFS_MOUNT`` off and no udev leaves unmounted, turns on
the cgroup v2 controllers the agent resizes (``cpu`` for ``cpu.max``, ``cpuset``),
loads the virtio modules in the order the builder worked out, and starts the agent.

The agent runs as init's child rather than replacing it with ``exec``: when the agent
exits, PID 1 would exit with it and the kernel panic with "Attempted to kill init",
which says nothing about why.  Init outlives it, prints its exit status on the console
and powers the VM off, which a QEMU started with ``-no-reboot`` ends on.

Everything init prints starts with ``cpuplug-init:``.  ``cpuplug.selftest=1`` on the
kernel command line adds a check that python starts and a list of the virtio ports,
cgroup controllers and disks the VM ended up with, for the image's own tests (not on a
normal boot: it would start python twice).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

MARKER = "cpuplug-init:"
"""Prefix of every line /init prints."""

SELFTEST = "cpuplug.selftest=1"
"""The kernel command line word that makes /init check itself before the agent starts."""


def render_init(
    *,
    modules: Sequence[tuple[str, str]],
    python: str,
    pythonpath: str,
    agent_module: str,
    agent_port: str,
) -> str:
    """The script.  ``modules`` are (name, guest path of the ``.ko``) in load order."""
    q = shlex.quote
    loads = "".join(f"load {q(name)} {q(path)}\n" for name, path in modules)
    return f"""#!/bin/busybox sh
# /init of a cpuplug guest image, written by cpuplug.image (docs/image.md).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
say() {{ echo "{MARKER} $*"; }}
/bin/busybox mount -t proc proc /proc
# The builder writes busybox's applet links when it can run busybox; if it could not
# (an image built for another architecture), busybox makes them now (it needs /proc).
[ -x /bin/sh ] || /bin/busybox --install -s

mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || say "cannot mount cgroup2"
echo "+cpu +cpuset" > /sys/fs/cgroup/cgroup.subtree_control ||
    say "cannot enable the cpu and cpuset cgroup controllers"

loaded=""
load() {{ if insmod "$2"; then loaded="$loaded $1"; else say "insmod $1 failed"; fi; }}
{loads}say "modules:$loaded"
ip link set lo up || say "cannot bring up lo"

export PYTHONPATH={q(pythonpath)} PYTHONUTF8=1 PYTHONNOUSERSITE=1
if grep -qw {q(SELFTEST)} /proc/cmdline; then
    {q(python)} -c 'import sys; print("{MARKER} python", sys.version_info[:2])' ||
        say "python does not start"
    for p in /sys/class/virtio-ports/*; do
        [ -e "$p/name" ] && say "virtio port ${{p##*/}} $(cat "$p/name")"
    done
    say "cgroup controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
    for b in /sys/block/vd*; do
        [ -e "$b" ] && say "disk ${{b##*/}}"
    done
fi

read -r up _ < /proc/uptime
say "starting the agent ({agent_module}, port {agent_port}) at ${{up}}s"
{q(python)} -m {q(agent_module)}
rc=$?
if [ "$rc" -gt 128 ]; then
    say "the agent was killed by signal $((rc - 128)); powering off"
else
    say "the agent exited with status $rc; powering off"
fi
poweroff -f
"""

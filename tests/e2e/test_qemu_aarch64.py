"""End to end on a real aarch64 QEMU: Debian's qemu-system-aarch64, Debian's arm64 kernel.

Debian's QEMU 7.2 has no vCPU hotplug on ``virt`` (``query-hotpluggable-cpus`` "is not
enabled"), so ``cpuplug run --arch aarch64`` asks QEMU, finds that out, boots every
vCPU and offlines the guest down to the target, and says why in ``run`` and ``inspect``;
``update`` then grows by onlining and shrinks by offlining.  One booted sandbox (TCG,
several seconds) is shared by the checks that only need a running guest.

The arm64 image is built from Debian's arm64 packages with apt state of the image
cache's own (``cpuplug.image.apt_private``): the host's dpkg and apt are not touched.
With CI=true a missing QEMU or apt fails these tests instead of skipping them.

The decision itself (a QEMU that *does* answer ``query-hotpluggable-cpus`` on ``virt``
gets ACPI mode) is tested with a stand-in QEMU in tests/runtime/test_qemu_hotplug_decision.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.harness.cli import Cli, private_cli

RUN = ("run", "--hypervisor", "qemu", "--arch", "aarch64")
NOT_ENABLED = "query-hotpluggable-cpus is not enabled"


def one_line(text: str) -> str:
    """Output as one line: rich wraps long lines at the terminal width (80 in a pipe)."""
    return " ".join(text.split())


@dataclass
class Booted:
    cli: Cli
    run_stdout: str
    run_stderr: str


@pytest.fixture(scope="module")
def real_qemu() -> str:
    require_tool("apt-get")  # the guest image is built from Debian's arm64 packages
    return require_tool("qemu-system-aarch64")


@pytest.fixture(scope="module")
def web(real_qemu: str) -> Iterator[Booted]:
    """A running aarch64 sandbox ``web``: 4 vCPUs plugged, 2 online (1 + --cpus 1)."""
    with private_cli() as c:
        r = c.ok(*RUN, "--name", "web", "--max-cpus", "4", "--cpus", "1", "--",
                 "sleep", "100000", timeout=900)  # fmt: skip
        yield Booted(c, r.stdout, r.stderr)


def online(c: Cli) -> str:
    return c.cat("web", "/sys/devices/system/cpu/online")


def last_update(c: Cli) -> dict[str, object]:
    ops = [e for e in c.inspect("web")["history"] if e["op"] == "update"]
    return dict(ops[-1])


# ------------------------------------------------------------------ one shared VM


@pytest.mark.slow
def test_run_says_online_offline_mode_and_why(web: Booted) -> None:
    err = one_line(web.run_stderr)
    assert "qemu-system-aarch64 has no vCPU hotplug on this machine" in err, err
    assert NOT_ENABLED in err and "online/offline mode, all vCPUs plugged at boot" in err
    assert err.count(NOT_ENABLED) == 1, "said once"
    assert "running: 2 vCPUs (max 4, 4 plugged)" in one_line(web.run_stdout)


@pytest.mark.slow
def test_inspect_shows_the_mode_its_reason_and_a_real_aarch64_qemu(web: Booted) -> None:
    c = web.cli
    info = c.inspect("web")
    assert info["config"]["hotplug_mode"] == "online-offline"
    assert info["warning"] and NOT_ENABLED in info["warning"]
    vmm = info["vmm"]
    assert vmm["arch"] == "aarch64" and vmm["qemu_version"]
    if os.uname().machine != "aarch64":
        assert vmm["accelerator"] == "tcg"
    exe = os.readlink(f"/proc/{vmm['qemu_pid']}/exe")
    assert Path(exe).name == "qemu-system-aarch64", exe
    caps = vmm["capabilities"]
    assert not caps["hot_add"] and not caps["hot_remove"]
    assert caps["shrink"].startswith("offline")
    assert NOT_ENABLED in one_line(c.ok("inspect", "web").stdout)
    assert c.ok("exec", "web", "--", "uname", "-m").stdout.strip() == "aarch64"
    assert c.ok("exec", "web", "--", "uname", "-r").stdout.strip() == vmm["kernel_version"]


@pytest.mark.slow
def test_boots_maxcpus_and_offlines_the_guest_down_to_the_target(web: Booted) -> None:
    c = web.cli
    info = c.inspect("web")
    boot = next(e for e in info["history"] if e["op"] == "boot")
    assert boot["vcpus"] == 4
    rows = {v["vcpu"]: v for v in info["vcpus"]}
    assert all(rows[i]["plugged"] and rows[i]["thread_id"] for i in range(4))
    assert [rows[i]["online"] for i in range(4)] == [True, True, False, False]
    assert c.cat("web", "/sys/devices/system/cpu/present") == "0-3"
    first = next(e for e in info["history"] if e["op"] == "update")
    assert [s["step"] for s in first["steps"]] == [
        "guest_details", "offline_cpus", "update_container"]


@pytest.mark.slow
def test_real_programs_run_with_their_exit_codes_and_output(web: Booted) -> None:
    c = web.cli
    r = c("exec", "web", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")
    r = c.ok("exec", "web", "--", "python3", "-c",
             "import os, platform; print(platform.machine(), len(os.sched_getaffinity(0)))")
    assert r.stdout.split() == ["aarch64", "2"]
    missing = c("exec", "web", "--", "no-such-program")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "no-such-program': executable file not found" in missing.stderr


@pytest.mark.slow
def test_the_container_sees_its_own_cgroup_limit(web: Booted) -> None:
    assert web.cli.cat("web", "/sys/fs/cgroup/cpu.max") == "100000 100000"
    assert web.cli.nproc("web") == 2


@pytest.mark.slow
def test_update_grows_by_onlining_and_shrinks_by_offlining(web: Booted) -> None:
    """No QMP hotplug at all: the same four vCPU threads throughout, the guest's
    online set and the container's cpuset and cpu.max follow each update."""
    c = web.cli
    threads = {v["vcpu"]: v["thread_id"] for v in c.inspect("web")["vcpus"]}
    for _ in range(2):
        out = c.ok("update", "--cpus", "3", "web").stdout
        assert "vCPUs 2 -> 4 (onlined 2,3)" in out, out
        assert (c.nproc("web"), online(c)) == (4, "0-3")
        assert c.cat("web", "/sys/fs/cgroup/cpu.max") == "300000 100000"
        out = c.ok("update", "--cpus", "1", "web").stdout
        assert "vCPUs 4 -> 2 (offlined 2,3, kept plugged)" in out, out
        assert (c.nproc("web"), online(c)) == (2, "0-1")
        assert c.cat("web", "/sys/fs/cgroup/cpu.max") == "100000 100000"
    update = last_update(c)
    qmp = update["qmp"]
    assert isinstance(qmp, list) and not {"device_add", "device_del"} & set(qmp), qmp
    info = c.inspect("web")
    assert {v["vcpu"]: v["thread_id"] for v in info["vcpus"]} == threads
    assert all(v["plugged"] for v in info["vcpus"])


@pytest.mark.slow
def test_cpus_offlined_inside_the_guest_come_back_cpu0_too(web: Booted) -> None:
    """arm64 Linux lets CPU 0 go offline (x86 does not): a container root that offlines
    it, or another CPU, gets them back at the next update; the last online CPU cannot
    be offlined (EBUSY)."""
    c = web.cli
    c.ok("update", "--cpus", "2", "web")
    assert online(c) == "0-2"
    c.ok("exec", "web", "--", "sh", "-c",
         "echo 0 > /sys/devices/system/cpu/cpu2/online; "
         "echo 0 > /sys/devices/system/cpu/cpu0/online")  # fmt: skip
    assert online(c) == "1"
    last = c("exec", "web", "--", "sh", "-c", "echo 0 > /sys/devices/system/cpu/cpu1/online")
    assert last.returncode != 0 and "busy" in last.stderr.lower(), last.stderr
    out = c.ok("update", "--cpus", "2", "web").stdout
    assert "onlined 0,2" in out, out
    assert online(c) == "0-2" and c.nproc("web") == 3
    c.ok("update", "--cpus", "1", "web")
    assert online(c) == "0-1"

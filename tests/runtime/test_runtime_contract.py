"""The runtime against docs/contract.md §8/§9 and against bad input from its users.

Two groups, gathered here from the modules that were organised by when they were
written (tests/e2e/test_qa_bad_input.py, tests/e2e/test_spec_coverage.py):

* bad input to ``cpuplug run|update``: a clear usage error, up front, and no sandbox
  (regression tests for faults QA found);
* the ``online-offline`` hotplug mode through the runtime: against the fake world
  (``tests/harness/runtime_fakes.py``) and end to end through ``cpuplug`` with a real
  VMM and guest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from cpuplug.cli import main
from cpuplug.cpuhp_abi import HotplugMode
from cpuplug.runtime.config import RuntimeConfig
from cpuplug.runtime.sandbox import Resources, RunRequest, Runtime
from cpuplug.runtime.sizing import cpus_to_quota, parse_cpus
from tests.harness.runtime_fakes import FakeWorld
from tests.harness.vmm import pid_alive

# ----------------------------------------------------------------------------- runtime CLI


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A state directory; any sandbox a regression did start is removed (VMM included)."""
    path = tmp_path / "root"
    yield path
    if path.is_dir():
        for sandbox in path.iterdir():
            main(["rm", "-f", "--root", str(path), sandbox.name])


def test_cpus_with_a_giant_exponent_is_a_usage_error_not_a_hang(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``Fraction("1e99999999")`` computes a 100-million-digit integer: the CLI hung
    (without the fix this test ends at the pytest timeout)."""
    for value in ("1e99999999", "1e-9999999", "1" * 100):
        assert main(["update", "--root", str(tmp_path), "sb", "--cpus", value]) == 2
        assert "invalid --cpus value" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [["--cpus", "1e308"], ["--cpu-quota", "99999999999999999999"], ["--cpus", "175921861"]],
)
def test_quota_beyond_the_kernels_maximum_is_refused_before_a_sandbox_starts(
    root: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    """It used to boot a VMM and fail in the guest with a 300-digit EINVAL."""
    assert main(["run", "--root", str(root), *flags, "--", "sleep", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "exceed the kernel's maximum of 17592186044415" in err[0]
    assert not root.exists() or list(root.iterdir()) == []


def test_bundle_quota_beyond_the_kernels_maximum_is_refused_up_front(
    tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    config = {
        "process": {"args": ["sleep", "1"]},
        "linux": {"resources": {"cpu": {"quota": 10**30, "period": 100000}}},
    }
    (bundle / "config.json").write_text(json.dumps(config))
    assert main(["run", "--root", str(root), "--bundle", str(bundle)]) == 2
    assert "exceed the kernel's maximum" in capsys.readouterr().err
    assert not root.exists() or list(root.iterdir()) == []


# ------------------------------------------------------------------ §8/§9 runtime, online/offline


def _cpus(text: str) -> Resources:
    """Docker's ``--cpus X``: period 100000, quota X·100000 (docs/contract.md §8)."""
    quota, period = cpus_to_quota(parse_cpus(text))
    assert period == 100000 and quota == int(Fraction(text) * 100000)
    return Resources(quota=quota, period=period)


def test_runtime_online_offline_mode_offlines_in_the_guest_but_keeps_every_vcpu(
    tmp_path: Path,
) -> None:
    """``hotplug_mode = "online-offline"``: all M vCPUs from boot, no device_add/del ever;
    a shrink offlines guest CPUs (``OfflineCPUs``), a grow onlines them (``OnlineCPUMem``),
    and the container's cpuset follows (docs/contract.md §8 config key, §9). The vCPUs stay
    plugged: the density cost of the mode."""
    world = FakeWorld()
    try:
        rt = Runtime(
            tmp_path,
            RuntimeConfig(default_maxvcpus=8, hotplug_mode=HotplugMode.ONLINE_OFFLINE),
            backends=world.backend,
            connect_agent=world.connect_agent,
        )
        st = rt.run(RunRequest(["true"], _cpus("2"), name="b1"))
        assert (st.boot_vcpus, st.maxcpus, st.plugged) == (8, 8, list(range(8)))
        assert sorted(world.m.online) == [0, 1, 2]  # booted 8 online, shrunk to target 3
        assert world.agent.cgroups["b1"]["cpuset_cpus"] == "0-2"
        world.m.agent_log.clear()
        rt.update("b1", _cpus("4"))
        assert sorted(world.m.online) == [0, 1, 2, 3, 4]
        assert world.agent.cgroups["b1"]["cpuset_cpus"] == "0-4"
        assert ("OnlineCPUMem", {"nb_cpus": 5}) in world.m.agent_log
        assert not [c for c, _ in world.m.agent_log if c == "OfflineCPUs"]
        world.m.agent_log.clear()
        rt.update("b1", _cpus("1"))
        assert sorted(world.m.online) == [0, 1]  # highest first; CPU 0 stays
        assert world.agent.cgroups["b1"]["cpuset_cpus"] == "0-1"
        assert world.agent.cgroups["b1"]["quota"] == 100000
        assert ("OfflineCPUs", {"nb_cpus": 2}) in world.m.agent_log
        assert not [c for c, _ in world.m.agent_log if c == "OnlineCPUMem"]
        assert not [c for c, _ in world.m.qmp_log if c.startswith("device_")]
        assert sorted(world.m.plugged) == list(range(8))
        assert rt.store.load("b1").plugged == list(range(8))
        # growing to all M: the plugged count already equals the target, yet the
        # guest has only 2 online, so the runtime must still ask it to online more
        rt.update("b1", _cpus("7"))
        assert sorted(world.m.online) == list(range(8))
        assert world.agent.cgroups["b1"]["cpuset_cpus"] == "0-7"
    finally:
        world.cleanup()


@pytest.mark.slow
def test_e2e_online_offline_mode_shrink_offlines_guest_cpus_but_not_vcpu_threads() -> None:
    """The same through ``cpuplug`` with a real VMM and guest (docs/contract.md §9): the guest's
    online list follows the target both ways, every vCPU thread stays in the VMM
    process (density cost), and guest root onlines an offlined vCPU again (security)."""
    root = Path(tempfile.mkdtemp(prefix="cpo", dir="/tmp"))  # short: unix socket paths

    def cli(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "cpuplug", args[0], "--root", str(root), *args[1:]],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
        return proc.stdout

    def guest_online() -> str:
        return cli("exec", "b1", "--", "cat", "/sys/devices/system/cpu/online").strip()

    pid = 0
    try:
        cli("run", "--name", "b1", "--mode", "online-offline", "--max-cpus", "4", "--cpus", "1",
            "--", "sleep", "600")  # fmt: skip
        info = json.loads(cli("inspect", "b1", "--json"))
        pid = info["vmm_pid"]
        tids = {v["thread_id"] for v in info["vcpus"] if v["plugged"]}
        assert len(tids) == 4 and tids <= {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        assert guest_online() == "0-1"  # booted 0-3, target 2
        cli("update", "--cpus", "2.5", "b1")
        assert guest_online() == "0-3"
        cli("update", "--cpus", "1", "b1")
        assert guest_online() == "0-1"
        assert cli("exec", "b1", "--", "cat", "/sys/fs/cgroup/cpuset.cpus").strip() == "0-1"
        assert tids <= {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        line = "echo 1 > /sys/devices/system/cpu/cpu3/online; cat /sys/devices/system/cpu/online"
        assert cli("exec", "b1", "--", "sh", "-c", line).strip() == "0-1,3"
    finally:
        subprocess.run(
            [sys.executable, "-m", "cpuplug", "rm", "--root", str(root), "-f", "b1"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        if pid and pid_alive(pid):
            os.kill(pid, 9)
        shutil.rmtree(root, ignore_errors=True)
    assert not pid or not pid_alive(pid)

"""Sandbox orchestration (run/update/inspect/stop/rm) against the fake VMM and agent.

The real VMM + guest end to end is tests/test_runtime_e2e.py; these pin the
order and content of every QMP and agent call, which a real run cannot show.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from cpuplug.errors import UsageError
from cpuplug.runtime import resize as rz
from cpuplug.runtime.config import RuntimeConfig
from cpuplug.runtime.sandbox import Resources, RunRequest, Runtime, SandboxNotRunning
from cpuplug.runtime.sizing import cpus_to_quota
from tests.harness.runtime_fakes import FakeWorld


def cpus(x: str) -> Resources:
    q, p = cpus_to_quota(Fraction(x))
    return Resources(quota=q, period=p)


@pytest.fixture
def world() -> Iterator[FakeWorld]:
    w = FakeWorld()
    yield w
    w.cleanup()


def make_rt(world: FakeWorld, tmp_path: Path, **cfg: Any) -> Runtime:
    config = RuntimeConfig(default_maxvcpus=cfg.pop("maxcpus", 8), **cfg)
    return Runtime(
        tmp_path,
        config,
        backends=world.backend,
        connect_agent=world.connect_agent,
    )


def agent_calls(world: FakeWorld) -> list[str]:
    return [c for c, _ in world.m.agent_log if c != "GuestDetails"]


def test_run_hot_adds_to_target_in_kata_order(world: FakeWorld, tmp_path: Path) -> None:
    rt = make_rt(world, tmp_path)
    st = rt.run(RunRequest(["stress", "--cpu", "2"], cpus("2"), name="b1"))
    assert st.plugged == [0, 1, 2] and st.maxcpus == 8 and st.boot_vcpus == 1
    adds = [a for c, a in world.m.qmp_log if c == "device_add"]
    assert [a["core-id"] for a in adds] == [1, 2]  # ascending, not QEMU's list order
    assert [a["id"] for a in adds] == ["cpu-1", "cpu-2"]
    assert agent_calls(world) == [
        "CreateContainer",
        "OnlineCPUMem",
        "UpdateContainer",
        "StartContainer",
    ]
    online = dict(world.m.agent_log)["OnlineCPUMem"]
    assert online == {"nb_cpus": 3}
    assert world.agent.cgroups["b1"] == {"quota": 200000, "period": 100000, "cpuset_cpus": "0-2"}
    assert rt.exec("b1", ["nproc"])["stdout"] == "3\n"
    assert rt.store.load("b1").status == "running"


def test_update_sequence_of_spec_8(world: FakeWorld, tmp_path: Path) -> None:
    rt = make_rt(world, tmp_path)
    rt.run(RunRequest(["true"], cpus("2"), name="b1"))

    r = rt.update("b1", cpus("4"))
    assert (r.before, r.after, r.added) == (3, 5, [3, 4])
    assert world.agent.cgroups["b1"]["cpuset_cpus"] == "0-4"

    world.m.qmp_log.clear()
    r = rt.update("b1", cpus("1.5"))
    assert (r.after, r.removed) == (3, [4, 3])  # newest first
    assert [a["id"] for c, a in world.m.qmp_log if c == "device_del"] == ["cpu-4", "cpu-3"]
    assert world.agent.cgroups["b1"]["quota"] == 150000
    assert world.agent.cgroups["b1"]["cpuset_cpus"] == "0-2"

    conns_before = len(world.vmms)
    r = rt.update("b1", cpus("1.2"))
    assert (r.before, r.after, r.qmp_commands) == (3, 3, [])
    assert len(world.vmms) == conns_before, "a quota-only update must not even open QMP"
    assert world.agent.cgroups["b1"]["quota"] == 120000


def test_update_clamps_with_a_warning(world: FakeWorld, tmp_path: Path) -> None:
    rt = make_rt(world, tmp_path)
    rt.run(RunRequest(["true"], cpus("1"), name="b1"))
    r = rt.update("b1", cpus("100"))
    assert r.after == 8 and r.warning is not None and "maximum is 8" in r.warning
    assert world.agent.cgroups["b1"]["quota"] == 10_000_000


def test_cpuset_only_and_quota_unlimited(world: FakeWorld, tmp_path: Path) -> None:
    rt = make_rt(world, tmp_path)
    rt.run(RunRequest(["true"], Resources(cpuset="0-2"), name="b1"))
    assert len(rt.store.load("b1").plugged) == 4
    r = rt.update("b1", Resources(quota=-1))
    assert r.after == 4  # quota -1 contributes nothing; the cpuset still counts
    assert world.agent.cgroups["b1"]["quota"] == -1


def test_static_mode_never_hotplugs(world: FakeWorld, tmp_path: Path) -> None:
    rt = make_rt(world, tmp_path, static_sandbox_resource_mgmt=True)
    st = rt.run(RunRequest(["true"], cpus("2"), name="b1"))
    assert (st.boot_vcpus, st.maxcpus, st.plugged) == (3, 3, [0, 1, 2])
    assert not [c for c, _ in world.m.qmp_log if c.startswith("device_")]
    n = len(world.vmms)
    r = rt.update("b1", cpus("6"))
    assert r.after == 3 and r.warning is not None and "static" in r.warning
    assert len(world.vmms) == n
    assert world.agent.cgroups["b1"]["quota"] == 600000


def test_refused_eject_fails_names_vcpu_and_sandbox_still_works(
    world: FakeWorld, tmp_path: Path
) -> None:
    rt = make_rt(world, tmp_path)
    rt.run(RunRequest(["true"], cpus("2"), name="b1"))
    world.m.refuse_eject[2] = 0x82
    with pytest.raises(rz.EjectRefused, match=r"vCPU 2.*0x82"):
        rt.update("b1", cpus("1"))
    st = rt.store.load("b1")
    assert st.plugged == [0, 1, 2] and st.pending is None
    assert st.history[-1]["op"] == "remove-failed"
    assert world.agent.cgroups["b1"]["quota"] == 200000  # limits unchanged on failure
    del world.m.refuse_eject[2]
    assert rt.update("b1", cpus("4")).after == 5
    assert rt.exec("b1", ["nproc"])["stdout"] == "5\n"


def test_interrupted_update_is_reconciled_by_inspect(world: FakeWorld, tmp_path: Path) -> None:
    """device_add done, OnlineCPUMem never happened: inspect finishes the guest side."""
    rt = make_rt(world, tmp_path)
    rt.run(RunRequest(["true"], cpus("1"), name="b1"))
    world.agent.fail_online_once = True
    with pytest.raises(Exception, match="simulated crash"):
        rt.update("b1", cpus("3"))
    st = rt.store.load("b1")
    assert st.pending is not None and st.plugged == [0, 1, 2, 3]
    assert world.m.online == {0, 1}
    info = rt.inspect("b1")
    assert info.reconciled is True and info.pending is None
    assert world.m.online == {0, 1, 2, 3}
    assert [r.vcpu for r in info.vcpus if r.online] == [0, 1, 2, 3]
    assert [r.thread_id for r in info.vcpus if r.plugged] == [1000, 1001, 1002, 1003]
    assert rt.store.load("b1").history[-1]["op"] == "reconcile"


def test_stale_state_is_corrected_from_the_vmm(world: FakeWorld, tmp_path: Path) -> None:
    """The state file says 3 vCPUs but the VMM has 4: the next update trusts the VMM."""
    rt = make_rt(world, tmp_path)
    rt.run(RunRequest(["true"], cpus("2"), name="b1"))
    st = rt.store.load("b1")
    st.plugged = [0, 1, 2]
    st.pending = {"op": "resize", "target": 4}
    world.m.plugged[3] = "/machine/peripheral/cpu-3"
    world.m.ids["cpu-3"] = 3
    rt.store.save(st)
    r = rt.update("b1", cpus("2"))
    assert r.after == 3 and r.removed == [3]


def test_dead_vmm_fails_cleanly_then_ps_and_rm(world: FakeWorld, tmp_path: Path) -> None:
    rt = make_rt(world, tmp_path)
    rt.run(RunRequest(["true"], cpus("1"), name="b1"))
    world.m.dead = True
    world.kill_vmm()
    assert [r.status for r in rt.ps()] == ["dead"]
    with pytest.raises(SandboxNotRunning, match="dead"):
        rt.update("b1", cpus("2"))
    rt.rm("b1")
    assert rt.ps() == []


def test_stop_and_rm(world: FakeWorld, tmp_path: Path) -> None:
    rt = make_rt(world, tmp_path)
    rt.run(RunRequest(["true"], cpus("1"), name="b1"))
    with pytest.raises(UsageError, match="rm -f"):
        rt.rm("b1")
    rt.stop("b1")
    assert world.vmm_gone(), "the VMM process is gone (and reaped)"
    assert rt.ps()[0].status == "stopped"
    assert "KillContainer" in agent_calls(world)
    assert ("quit", {}) in world.m.qmp_log
    rt.rm("b1")
    assert not (tmp_path / "b1").exists()


def test_rm_force_stops_a_running_sandbox(world: FakeWorld, tmp_path: Path) -> None:
    rt = make_rt(world, tmp_path)
    rt.run(RunRequest(["true"], cpus("1"), name="b1"))
    rt.rm("b1", force=True)
    assert world.vmm_gone() and rt.ps() == []


def test_failed_run_cleans_up(world: FakeWorld, tmp_path: Path) -> None:
    rt = make_rt(world, tmp_path)
    world.m.refuse_eject.clear()

    def broken_create(*a: Any, **k: Any) -> None:
        raise UsageError("EINVAL: bad command")

    world.agent.create_container = broken_create  # type: ignore[method-assign]
    with pytest.raises(UsageError):
        rt.run(RunRequest(["true"], cpus("1"), name="b1"))
    assert rt.ps() == []
    assert world.vmm_gone()


def test_two_updates_serialise_and_the_last_wins(world: FakeWorld, tmp_path: Path) -> None:
    rt = make_rt(world, tmp_path)
    rt.run(RunRequest(["true"], cpus("1"), name="b1"))
    entered = threading.Event()
    release = threading.Event()
    real = world.agent.online_cpu_mem

    def slow_online(nb: int) -> list[int]:
        entered.set()
        release.wait(10)
        return real(nb)

    world.agent.online_cpu_mem = slow_online  # type: ignore[method-assign,assignment]
    errors: list[BaseException] = []

    def first() -> None:
        try:
            rt.update("b1", cpus("4"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert entered.wait(10)
        second_done = threading.Event()

        def second() -> None:
            rt2 = make_rt(world, tmp_path)
            rt2.update("b1", cpus("2"))
            second_done.set()

        t2 = threading.Thread(target=second)
        t2.start()
        time.sleep(0.2)  # give the second update the chance to (wrongly) overtake
        assert not second_done.is_set(), "the second update must wait for the lock"
        release.set()
        t.join(10)
        t2.join(10)
    finally:
        release.set()
        t.join(10)
    assert not errors
    st = rt.store.load("b1")
    assert len(st.plugged) == 3 and world.agent.cgroups["b1"]["quota"] == 200000


def test_vmm_dying_at_start_up_is_reported_and_cleaned(
    world: FakeWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cpuplug.runtime import process, sandbox
    from cpuplug.runtime.hypervisor import VmSpec

    def crashing_start(spec: VmSpec) -> process.ProcessIdentity:
        (spec.sandbox_dir / "vmm.log").write_text("cpuplug vmm: error: cannot map GIC\n")
        ident = process.launch(["true"], spec.sandbox_dir / "out.log")
        assert process.wait_exit(ident, 10)
        return ident

    rt = make_rt(world, tmp_path)
    monkeypatch.setattr(world.fake_backend, "start", crashing_start)
    with pytest.raises(sandbox.SandboxError, match=r"exited during start-up.*cannot map GIC"):
        rt.run(RunRequest(["true"], cpus("1"), name="b1"))
    assert rt.ps() == [] and not (tmp_path / "b1").exists()

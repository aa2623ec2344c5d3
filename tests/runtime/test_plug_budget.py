"""The plug budget (issue 9): a VMM that allows only so many vCPU plugs in a VM's life.

QEMU >= 10 under TCG gives every vCPU thread ever created a TCG context and has only
its ``maxcpus`` of them, so plugs over the VM's life are bounded (``max_plugs`` =
slots - boot vCPUs; the next one aborts QEMU, docs/real-backends.md).  The rule,
:meth:`Capabilities.unpluggable`: a shrink unplugs only as many vCPUs as still leave
the VM able to grow back to its maximum (plugged + plugs left >= maxcpus) and offlines
the rest, keeping them plugged.  Here against the fake VMM with such capabilities, and
extra slots beyond the sandbox's maximum that must never be plugged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cpuplug.runtime.config import ConfigError, RuntimeConfig, parse_config
from cpuplug.runtime.hypervisor import Capabilities, Completion
from cpuplug.runtime.hypervisors.qemu import vcpu_slots
from cpuplug.runtime.sandbox import Resources, RunRequest, Runtime
from tests.harness.runtime_fakes import BUILTIN_CAPS, FakeWorld

MAX = 4


def cpus(n: int) -> Resources:
    return Resources(quota=n * 100_000, period=100_000)


def caps(max_plugs: int | None, *, replug: bool = True, hot_remove: bool = True) -> Capabilities:
    return Capabilities(True, hot_remove, replug, max_plugs, Completion.SLOT_STATE)


@pytest.mark.parametrize(
    ("c", "wanted", "plugged", "used", "expected"),
    [
        (caps(None), 2, 4, 100, 2),  # unbounded (KVM, the built-in machine): always
        (caps(3), 2, 4, 3, 0),  # maxcpus = user max (QEMU 10, TCG): spent by the first grow
        (caps(7), 2, 4, 3, 2),  # twice the slots: 4 left, 2 enough to grow back
        (caps(7), 2, 4, 5, 2),  # 2 left: exactly enough
        (caps(7), 2, 4, 7, 0),  # spent: offline
        (caps(4), 2, 4, 3, 1),  # 1 left: unplug one, offline the other
        (caps(7), 0, 2, 3, 0),  # nothing to remove
        (caps(None, replug=False), 2, 4, 0, 0),  # QEMU 7.2 under TCG: never
        (caps(None, hot_remove=False), 2, 4, 0, 0),
    ],
)
def test_the_budget_rule(c: Capabilities, wanted: int, plugged: int, used: int,
                         expected: int) -> None:  # fmt: skip
    n = c.unpluggable(wanted, plugged, used, MAX)
    assert n == expected
    left = c.plugs_left(used)
    if left is not None and n:
        assert plugged - n + left >= MAX, "the VM can still grow back to its maximum"


@pytest.fixture
def world() -> Iterator[FakeWorld]:
    w = FakeWorld()
    yield w
    w.cleanup()


def qemu10_tcg(world: FakeWorld, tmp_path: Path, extra: int) -> Runtime:
    """The fake VMM as QEMU 10 under TCG with ``extra`` slots beyond the maximum:
    1 boot vCPU, so ``max_plugs`` = MAX + extra - 1."""
    world.extra_slots = extra
    world.caps = replace(BUILTIN_CAPS, max_plugs=MAX + extra - 1)
    cfg = RuntimeConfig(default_maxvcpus=MAX)
    return Runtime(tmp_path, cfg, backends=world.backend, connect_agent=world.connect_agent)


def test_twice_the_slots_unplug_twice_then_offline_and_never_over_budget(
    world: FakeWorld, tmp_path: Path
) -> None:
    rt = qemu10_tcg(world, tmp_path, extra=MAX)
    rt.run(RunRequest(["sleep", "1"], cpus(1), name="w"))  # 2 vCPUs: 1 plug
    assert world.m.maxcpus == 2 * MAX, "the VMM has the extra slots"
    assert rt.inspect("w").vmm["capabilities"]["shrink_by"] == "unplug"
    ways = []
    for _ in range(3):
        grow = rt.update("w", cpus(3))
        assert grow.after == 4 and len(world.m.online) == 4
        assert max(world.m.plugged) < MAX, "an extra slot was plugged"
        shrink = rt.update("w", cpus(1))
        assert shrink.after == 2 and len(world.m.online) == 2
        way = ("removed", shrink.removed) if shrink.removed else ("offlined", shrink.offlined)
        ways.append(way)
        st = rt.store.load("w")
        assert st.plugs_used <= MAX + MAX - 1
        assert len(st.plugged) + (MAX + MAX - 1 - st.plugs_used) >= MAX, "can grow back"
    assert ways == [("removed", [3, 2]), ("removed", [3, 2]), ("offlined", [2, 3])]
    adds = [a["core-id"] for c, a in world.m.qmp_log if c == "device_add"]
    assert adds == [1, 2, 3, 2, 3, 2, 3] and len(adds) == MAX + MAX - 1
    vcpu_caps = rt.inspect("w").vmm["capabilities"]
    assert (vcpu_caps["plugs_used"], vcpu_caps["plugs_left"]) == (7, 0)
    assert vcpu_caps["shrink_by"] == "offline"
    assert "0 of 7 vCPU plugs left" in vcpu_caps["shrink"]
    # spent: later cycles only online and offline, no hotplug command at all
    world.m.qmp_log.clear()
    for _ in range(2):
        assert rt.update("w", cpus(3)).onlined == [2, 3]
        assert rt.update("w", cpus(1)).offlined == [2, 3]
    assert not [c for c, _ in world.m.qmp_log if c in ("device_add", "device_del")]


def test_without_extra_slots_the_first_grow_spends_the_budget(
    world: FakeWorld, tmp_path: Path
) -> None:
    rt = qemu10_tcg(world, tmp_path, extra=0)
    rt.run(RunRequest(["sleep", "1"], cpus(1), name="w"))
    rt.update("w", cpus(3))
    assert rt.update("w", cpus(1)).offlined == [2, 3]
    assert not [c for c, _ in world.m.qmp_log if c == "device_del"]
    assert rt.inspect("w").vmm["capabilities"]["shrink_by"] == "offline"


def test_a_budget_for_one_more_plug_unplugs_one_and_offlines_the_other(
    world: FakeWorld, tmp_path: Path
) -> None:
    rt = qemu10_tcg(world, tmp_path, extra=1)  # 4 plugs
    rt.run(RunRequest(["sleep", "1"], cpus(1), name="w"))
    rt.update("w", cpus(3))  # 3 plugs used
    assert rt.inspect("w").vmm["capabilities"]["shrink_by"] == "unplug+offline"
    r = rt.update("w", cpus(1))
    assert (r.removed, r.offlined) == ([3], [2])
    r = rt.update("w", cpus(3))  # 2 is onlined, 3 plugged again: the last plug
    assert (r.onlined, r.added) == ([2], [3])
    assert rt.store.load("w").plugs_used == 4
    r = rt.update("w", cpus(1))
    assert (r.removed, r.offlined) == ([], [2, 3])


# --------------------------------------------------------------------------- QEMU's slots


@pytest.mark.parametrize(
    ("opts", "maxcpus", "slots"),
    [
        ({"accel": "tcg", "qemu_version": "10.0"}, 4, 8),  # the default: twice
        ({"accel": "tcg", "qemu_version": "10.1"}, 200, 255),  # capped (x2APIC above)
        ({"accel": "kvm", "qemu_version": "10.0"}, 4, 4),  # no plug bound under KVM
        ({"accel": "tcg", "qemu_version": "7.2"}, 4, 4),  # never unplugs: nothing to buy
        ({"accel": "tcg", "qemu_version": "10.0", "extra_vcpu_slots": "0"}, 4, 4),
        ({"accel": "tcg", "qemu_version": "10.0", "extra_vcpu_slots": "12"}, 4, 16),
        ({"accel": "kvm", "qemu_version": "7.2", "extra_vcpu_slots": "2"}, 4, 6),  # as told
    ],
)
def test_qemu_gets_extra_vcpu_slots_where_they_buy_plugs(
    opts: dict[str, str], maxcpus: int, slots: int
) -> None:
    assert vcpu_slots(maxcpus, opts) == slots


def test_extra_vcpu_slots_in_the_config() -> None:
    cfg = parse_config("[hypervisor.qemu]\nextra_vcpu_slots = 12\n")
    assert cfg.extra_vcpu_slots == 12 and cfg.vm_options()["extra_vcpu_slots"] == "12"
    assert "extra_vcpu_slots" not in RuntimeConfig().vm_options()  # the backend's default
    for bad, why in (("-1", "must be in 0..512"), ('"4"', "must be an integer"),
                     ("true", "must be an integer")):  # fmt: skip
        with pytest.raises(ConfigError) as exc:
            parse_config(f"[hypervisor.qemu]\nextra_vcpu_slots = {bad}\n", "c.toml")
        assert why in str(exc.value) and str(exc.value).startswith("c.toml: ")

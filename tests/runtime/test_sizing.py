"""The vCPU formula and its worked examples (docs/contract.md §8), and the runtime config."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from cpuplug.cpuhp_abi import HotplugMode
from cpuplug.errors import UsageError
from cpuplug.runtime.config import ConfigError, RuntimeConfig, load_config, parse_config
from cpuplug.runtime.sizing import (
    BootTopology,
    ContainerCpu,
    boot_topology,
    cpus_to_quota,
    format_cpu_list,
    parse_cpu_list,
    parse_cpus,
    vcpu_target,
)


def cpus(x: str, cpuset: str = "") -> ContainerCpu:
    quota, period = cpus_to_quota(parse_cpus(x))
    return ContainerCpu(quota=quota, period=period, cpuset=cpuset)


# (name, containers, default_vcpus, max, expected target, expect warning)
TABLE: list[tuple[str, list[ContainerCpu], Fraction, int, int, bool]] = [
    ("run --cpus 2", [cpus("2")], Fraction(1), 8, 3, False),
    ("update --cpus 4", [cpus("4")], Fraction(1), 8, 5, False),
    ("update --cpus 1.5", [cpus("1.5")], Fraction(1), 8, 3, False),
    ("update --cpus 1.2", [cpus("1.2")], Fraction(1), 8, 3, False),
    ("run --cpus 0.5", [cpus("0.5")], Fraction(1), 8, 2, False),
    ("cpuset-only 0-2", [ContainerCpu(cpuset="0-2")], Fraction(1), 8, 4, False),
    ("quota wins over cpuset", [cpus("1", cpuset="0-2")], Fraction(1), 8, 2, False),
    ("pod 0.5 + 2.5 (ceil once)", [cpus("0.5"), cpus("2.5")], Fraction(1), 8, 4, False),
    ("default_vcpus 0.5, --cpus 1.2", [cpus("1.2")], Fraction(1, 2), 8, 2, False),
    ("--cpus 8 clamps to max 8", [cpus("8")], Fraction(1), 8, 8, True),
    ("--cpus 100 clamps to max 8", [cpus("100")], Fraction(1), 8, 8, True),
    ("no limits", [ContainerCpu()], Fraction(1), 8, 1, False),
    ("no containers", [], Fraction(1), 8, 1, False),
    (
        "quota -1 is unlimited: no share",
        [ContainerCpu(quota=-1, period=100000)],
        Fraction(1),
        8,
        1,
        False,
    ),
    (
        "quota -1 falls back to cpuset",
        [ContainerCpu(quota=-1, period=100000, cpuset="0,1")],
        Fraction(1),
        8,
        3,
        False,
    ),
    ("zero period contributes 0", [ContainerCpu(quota=200000, period=0)], Fraction(1), 8, 1, False),
    ("quota without period", [ContainerCpu(quota=200000)], Fraction(1), 8, 1, False),
    (
        "cpusets summed, not unioned",
        [ContainerCpu(cpuset="0-1"), ContainerCpu(cpuset="0-1")],
        Fraction(1),
        8,
        5,
        False,
    ),
    (
        "stopped container skipped",
        [cpus("2"), ContainerCpu(quota=400000, period=100000, stopped=True)],
        Fraction(1),
        8,
        3,
        False,
    ),
    ("odd period", [ContainerCpu(quota=75000, period=50000)], Fraction(1), 8, 3, False),
    (
        "fractions across three containers",
        [cpus("0.3"), cpus("0.3"), cpus("0.4")],
        Fraction(1),
        8,
        2,
        False,
    ),
    # Kata sums float32: 10 x 0.1 = 1.0000001 -> +1 -> ceil 3. Exact arithmetic says 2.
    (
        "ten x 0.1 is exactly 1 (Kata's float32 says 3)",
        [cpus("0.1")] * 10,
        Fraction(1),
        8,
        2,
        False,
    ),
    ("max 1 clamps everything", [cpus("2")], Fraction(1), 1, 1, True),
    ("default_vcpus 0 with nothing -> at least 1", [], Fraction(0), 8, 1, False),
]


@pytest.mark.parametrize(
    ("name", "containers", "default", "max_vcpus", "want", "warns"),
    TABLE,
    ids=[row[0] for row in TABLE],
)
def test_formula_table(
    name: str,
    containers: list[ContainerCpu],
    default: Fraction,
    max_vcpus: int,
    want: int,
    warns: bool,
) -> None:
    sizing = vcpu_target(containers, default, max_vcpus)
    assert sizing.target == want
    assert (sizing.warning is not None) == warns
    if warns:
        assert str(max_vcpus) in (sizing.warning or "")


def test_clamp_reports_what_was_wanted() -> None:
    s = vcpu_target([cpus("8")], Fraction(1), 8)
    assert (s.wanted, s.target, s.workload) == (9, 8, Fraction(8))


def test_float_default_is_read_as_its_decimal() -> None:
    # 0.1 as a binary float is a hair above 1/10; ten of them + 0.1 default must not overshoot.
    assert vcpu_target([ContainerCpu(quota=90000, period=100000)], 0.1, 8).target == 1


def test_dynamic_boot_topology_boots_default_and_hot_adds() -> None:
    topo, s = boot_topology([cpus("2")], Fraction(1), 8, static=False)
    assert topo == BootTopology(boot=1, maxcpus=8)
    assert s.target == 3
    topo, _ = boot_topology([cpus("1.2")], Fraction(1, 2), 8, static=False)
    assert topo.boot == 1


def test_static_boot_topology_has_no_headroom() -> None:
    topo, s = boot_topology([cpus("2")], Fraction(1), 8, static=True)
    assert topo == BootTopology(boot=3, maxcpus=3)
    assert s.target == 3
    topo, _ = boot_topology([cpus("100")], Fraction(1), 8, static=True)
    assert topo == BootTopology(boot=8, maxcpus=8)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("", set()),
        ("0", {0}),
        ("0-2", {0, 1, 2}),
        ("0-2,4", {0, 1, 2, 4}),
        (" 1 , 3-4 ", {1, 3, 4}),
        ("2,2", {2}),
    ],
)
def test_parse_cpu_list(text: str, want: set[int]) -> None:
    assert parse_cpu_list(text) == want


@pytest.mark.parametrize("bad", ["x", "1-", "-1", "3-1", "1,,2", "0-99999", "1.5", "0x1"])
def test_bad_cpu_list_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match="invalid cpu list"):
        parse_cpu_list(bad)


def test_bad_cpuset_in_sizing_raises_instead_of_zeroing() -> None:
    # Kata's cpuset.Parse error returns 0 for the whole sandbox; we refuse the input.
    with pytest.raises(UsageError):
        vcpu_target([ContainerCpu(cpuset="0-")], Fraction(1), 8)


def test_format_cpu_list_round_trips() -> None:
    assert format_cpu_list([4, 0, 1, 2]) == "0-2,4"
    assert format_cpu_list([]) == ""
    assert format_cpu_list([1, 3, 5]) == "1,3,5"
    assert parse_cpu_list(format_cpu_list({0, 1, 7, 8, 9})) == {0, 1, 7, 8, 9}


@pytest.mark.parametrize(
    ("text", "quota"),
    [("2", 200000), ("1.2", 120000), ("0.5", 50000), ("0", 0), ("1.33333", 133333)],
)
def test_docker_cpus_to_quota(text: str, quota: int) -> None:
    assert cpus_to_quota(parse_cpus(text)) == (quota, 100000)


@pytest.mark.parametrize("bad", ["-1", "abc", "", "1/0", "1/3", "nan", "inf", "\uff11", "1_0"])
def test_bad_cpus_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match="--cpus"):
        parse_cpus(bad)


def test_zero_period_conversion_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="period"):
        cpus_to_quota(Fraction(1), 0)


# ---------------------------------------------------------------- config


def test_config_defaults() -> None:
    cfg = parse_config("")
    assert cfg == RuntimeConfig()
    assert cfg.default_vcpus == 1 and cfg.hotplug_mode == "acpi" and cfg.remove_timeout == 10.0
    assert cfg.max_vcpus(host_cpus=6) == 6  # 0 = host CPUs
    assert cfg.max_vcpus(host_cpus=4096) == 512  # capped at the machine


def test_config_reads_kata_sections() -> None:
    cfg = parse_config(
        """
        [hypervisor.qemu]
        path = "/usr/bin/qemu-system-aarch64"
        default_vcpus = 0.5
        default_maxvcpus = 8
        [runtime]
        static_sandbox_resource_mgmt = true
        enable_debug = true
        """
    )
    assert cfg.default_vcpus == Fraction(1, 2)
    assert cfg.max_vcpus(host_cpus=2) == 8
    assert cfg.static_sandbox_resource_mgmt is True


def test_config_top_level_keys_and_overrides() -> None:
    cfg = parse_config('default_vcpus = 2\nhotplug_mode = "online-offline"\nremove_timeout = 3')
    assert (cfg.default_vcpus, cfg.remove_timeout) == (Fraction(2), 3.0)
    assert cfg.hotplug_mode is HotplugMode.ONLINE_OFFLINE
    cfg2 = cfg.with_overrides(hotplug_mode="acpi", default_maxvcpus=4, remove_timeout=None)
    assert (cfg2.default_maxvcpus, cfg2.remove_timeout) == (4, 3.0)
    assert cfg2.hotplug_mode is HotplugMode.ACPI  # a flag's str becomes the enum


def test_config_default_vcpus_rules() -> None:
    assert RuntimeConfig(default_vcpus=Fraction(0)).effective_default_vcpus(8) == 1
    assert RuntimeConfig(default_vcpus=Fraction(-1)).effective_default_vcpus(8) == 8
    assert RuntimeConfig(default_vcpus=Fraction(20)).effective_default_vcpus(8) == 8


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("default_vcpu = 1", "unknown key"),
        ("default_vcpus = 'x'", "must be a number"),
        ("default_maxvcpus = 1.5", "integer"),
        ("default_maxvcpus = 513", "0..512"),
        ("hotplug_mode = 'magic'", "hotplug_mode"),
        ("remove_timeout = 0", "remove_timeout"),
        ("static_sandbox_resource_mgmt = 'yes'", "true or false"),
        ("[[[", "invalid TOML"),
    ],
)
def test_config_errors(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(text)


def test_load_config_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    monkeypatch.setenv("CPUPLUG_CONFIG", str(tmp_path / "absent.toml"))
    assert load_config() == RuntimeConfig()  # a missing default file is fine
    f = tmp_path / "c.toml"
    f.write_text("default_maxvcpus = 3\n")
    monkeypatch.setenv("CPUPLUG_CONFIG", str(f))
    assert load_config().default_maxvcpus == 3
    with pytest.raises(ConfigError, match="unknown setting"):
        RuntimeConfig().with_overrides(bogus=1)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("default_vcpus = inf", "default_vcpus must be a finite number"),
        ("default_vcpus = -inf", "default_vcpus must be a finite number"),
        ("default_vcpus = nan", "default_vcpus must be a finite number"),
        ("[hypervisor.qemu]\ndefault_vcpus = nan", "default_vcpus must be a finite number"),
        ("remove_timeout = 1e308", r"remove_timeout must be > 0 and <= 3600"),
        ("remove_timeout = inf", r"remove_timeout must be > 0 and <= 3600"),
        ("remove_timeout = nan", r"remove_timeout must be > 0 and <= 3600"),
        ("[hypervisor]\nqemu = [1, 2]", r"\[hypervisor.qemu\] must be a table"),
        ("[hypervisor]\ncpuplug = 3", r"\[hypervisor.cpuplug\] must be a table"),
        ("hypervisor = [1]", r"\[hypervisor\] must be a table"),
    ],
)
def test_qa_config_non_finite_huge_and_wrong_sections_are_refused(text: str, match: str) -> None:
    """QA: inf/nan gave a ValueError traceback, 1e308 was accepted, a list section ignored."""
    with pytest.raises(ConfigError, match=match):
        parse_config(text, "c.toml")


def test_qa_remove_timeout_cap_is_inclusive() -> None:
    assert parse_config("remove_timeout = 3600").remove_timeout == 3600.0


def test_config_selects_and_configures_the_qemu_hypervisor() -> None:
    """``hypervisor`` at the top level or under [runtime]; Kata's [hypervisor.qemu] keys."""
    assert parse_config('hypervisor = "qemu"\n').hypervisor == "qemu"
    cfg = parse_config(
        '[runtime]\nhypervisor = "qemu"\n[hypervisor.qemu]\npath = "/opt/q"\n'
        'kernel = "/k"\ninitrd = "/i"\ndefault_memory = 1024\narch = "aarch64"\n'
    )
    assert (cfg.hypervisor, cfg.qemu_path, cfg.default_memory, cfg.arch) == (
        "qemu", "/opt/q", 1024, "aarch64"
    )
    assert cfg.vm_options() == {
        "memory": "1024", "qemu": "/opt/q", "kernel": "/k", "initrd": "/i", "arch": "aarch64"
    }
    assert parse_config("").hypervisor == "builtin"
    for bad, why in [
        ('hypervisor = "xen"\n', "hypervisor must be one of builtin, qemu"),
        ("[hypervisor.qemu]\ndefault_memory = 8\n", "default_memory must be 64..1048576"),
        ('[hypervisor.qemu]\narch = "mips"\n', "arch must be one of x86_64, aarch64"),
        ('[hypervisor.qemu]\npath = ""\n', "qemu_path must be a non-empty string"),
        ("start_timeout = 0\n", "start_timeout must be > 0"),
    ]:
        with pytest.raises(UsageError, match=why):
            parse_config(bad)

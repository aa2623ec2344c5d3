"""Which QEMUs get ACPI vCPU hotplug, and which shrink by unplugging (no real QEMU).

The QEMU backend asks QEMU rather than assuming: a paused, kernel-less QEMU of the same
machine answers ``query-hotpluggable-cpus``.  On aarch64 ``virt`` that answer decides
between Debian's QEMU (no hotplug: online/offline mode) and the arm64 hotplug RFC
(ACPI mode), and the rest of the chain is checked too: the RFC silently clamps
``maxcpus`` without MTTCG and GICv3 (the probe then sees no free slot and its warning),
arm64 ACPI reaches the guest only through UEFI firmware, and Linux < 6.11 has no arm64
ACPI hotplug.  An RFC build without this repository's unplug fixes crashes on
``device_del`` under TCG (docs/qemu-arm64-hotplug.md): it shrinks by offlining, and
``inspect`` says why.

The stand-in for ``qemu-system-aarch64`` is a small Python program answering QMP on
stdio, so these run everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

import pytest

from cpuplug.cpuhp_abi import HotplugMode
from cpuplug.runtime.hypervisor import VmSpec
from cpuplug.runtime.hypervisors.qemu import UNPLUG_FIXED_MARK, QemuBackend
from cpuplug.runtime.qmp_client import QmpConnection
from cpuplug.runtime.sandbox import _shrink_policy
from cpuplug.runtime.state import SandboxState

NOT_ENABLED = "query-hotpluggable-cpus is not enabled"
RFC_KERNEL = "6.12.95+deb12-arm64"

FAKE_QEMU = """\
import json, sys
answer, warning = {answer!r}, {warning!r}
with open({log!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if warning:
    print(warning, file=sys.stderr, flush=True)
print(json.dumps({{"QMP": {{"version": {{"qemu": {{"major": 9, "minor": 1, "micro": 50}}}},
                          "capabilities": []}}}}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    name, reply = cmd["execute"], {{"return": {{}}}}
    if name == "query-version":
        reply = {{"return": {{"qemu": {{"major": 9, "minor": 1, "micro": 50}}, "package": ""}}}}
    if name == "query-hotpluggable-cpus":
        if answer == "none":
            reply = {{"error": {{"class": "GenericError",
                      "desc": "The feature 'query-hotpluggable-cpus' is not enabled"}}}}
        else:
            n = 2 if answer == "free" else 1
            reply = {{"return": [
                {{"props": {{"core-id": i, "thread-id": 0, "socket-id": 0, "cluster-id": 0}},
                 "vcpus-count": 1, "type": "max-arm-cpu",
                 **({{"qom-path": f"/machine/unattached/device[{{i}}]"}} if i == 0 else {{}})}}
                for i in range(n)]}}
    if "id" in cmd:
        reply["id"] = cmd["id"]
    print(json.dumps(reply), flush=True)
    if name == "quit":
        break
"""


def fake_qemu(tmp_path: Path, answer: str, warning: str = "") -> tuple[Path, Path]:
    """A stand-in ``qemu-system-aarch64`` logging its argv; ``answer``: ``free`` (the
    RFC: a free slot), ``clamped`` (the RFC without MTTCG/GICv3: only the boot vCPU)
    or ``none`` (Debian's 7.2: "not enabled")."""
    log = tmp_path / "argv.jsonl"
    exe = tmp_path / "qemu-system-aarch64"
    body = FAKE_QEMU.format(answer=answer, warning=warning, log=str(log))
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    exe.chmod(0o755)
    return exe, log


def prepared(
    tmp_path: Path,
    qemu: Path,
    *,
    firmware: bool = True,
    kernel_version: str = RFC_KERNEL,
    extra: dict[str, str] | None = None,
) -> VmSpec:
    files = {}
    for key in ("kernel", "initrd", "firmware"):
        if key == "firmware" and not firmware:
            continue
        files[key] = tmp_path / key
        files[key].write_bytes(key.encode())

    class Img:
        kernel, initrd = files["kernel"], files["initrd"]
        cmdline = "console=ttyAMA0 acpi=force"
        firmware = files.get("firmware")

    Img.kernel_version = kernel_version  # type: ignore[attr-defined]
    spec = VmSpec(
        name="a", boot_vcpus=2, maxcpus=4, mode=HotplugMode.ACPI,
        qmp_path=tmp_path / "qmp.sock", agent_path=tmp_path / "agent.sock",
        sandbox_dir=tmp_path,
        extra={"arch": "aarch64", "qemu": str(qemu), "accel": "tcg", **(extra or {})},
    )  # fmt: skip
    return QemuBackend(ensure_image=lambda *_a, **_k: Img).prepare(spec, lambda _m: None)


def test_the_rfc_gets_acpi_mode_with_mttcg_gicv3_and_uefi(tmp_path: Path) -> None:
    qemu, log = fake_qemu(tmp_path, "free")
    spec = prepared(tmp_path, qemu)
    assert spec.mode is HotplugMode.ACPI and "mode_reason" not in spec.extra
    assert (spec.boot_vcpus, spec.maxcpus) == (2, 4)
    probe = json.loads(log.read_text().splitlines()[-1])
    assert probe[:6] == ["-M", "virt,gic-version=3", "-accel", "tcg,thread=multi",
                         "-cpu", "max,pauth-impdef=on"]  # fmt: skip
    assert "-S" in probe and probe[probe.index("-qmp") + 1] == "stdio"
    cmd = QemuBackend().command(spec)
    assert cmd[cmd.index("-accel") + 1] == "tcg,thread=multi"
    assert cmd[cmd.index("-M") + 1] == "virt,gic-version=3"
    assert cmd[cmd.index("-bios") + 1] == str(tmp_path / "firmware")
    assert cmd[cmd.index("-smp") + 1] == "2,maxcpus=4", "no extra slots: the RFC has no plug bound"
    assert "acpi=force" in cmd[cmd.index("-append") + 1]
    assert cmd[cmd.index("-name") + 1] == "cpuplug-a,debug-threads=on", "threads 'CPU n/TCG'"
    assert "probe_stderr" not in spec.extra, "the probe's output is not kept in the state"


@pytest.mark.parametrize(
    ("answer", "warning", "firmware", "kernel", "why"),
    [
        ("none", "", True, RFC_KERNEL, NOT_ENABLED),
        ("clamped", "qemu-system-aarch64: warning: cpu hotplug feature has been disabled",
         True, RFC_KERNEL, "disabled vCPU hotplug on this machine (it needs MTTCG and GICv3)"),
        ("clamped", "", True, RFC_KERNEL, "offers no free slot"),
        ("free", "", False, RFC_KERNEL, "needs the guest booted through UEFI"),
        ("free", "", True, "6.1.0-57-arm64", "6.1.0-57-arm64 predates arm64 ACPI vCPU hotplug"),
    ],
    ids=["debian-7.2", "rfc-clamped-says-why", "rfc-clamped", "no-firmware", "old-kernel"],
)  # fmt: skip
def test_anything_missing_in_the_chain_means_online_offline_mode_and_why(
    tmp_path: Path, answer: str, warning: str, firmware: bool, kernel: str, why: str
) -> None:
    qemu, _ = fake_qemu(tmp_path, answer, warning)
    spec = prepared(tmp_path, qemu, firmware=firmware, kernel_version=kernel)
    assert spec.mode is HotplugMode.ONLINE_OFFLINE
    assert (spec.boot_vcpus, spec.maxcpus) == (4, 4), "every vCPU plugged at boot"
    reason = spec.extra["mode_reason"]
    assert why in reason and reason.endswith("online/offline mode, all vCPUs plugged at boot")
    cmd = QemuBackend().command(spec)
    assert cmd[cmd.index("-smp") + 1] == "4,maxcpus=4"


def test_a_missing_firmware_file_is_a_clear_error(tmp_path: Path) -> None:
    from cpuplug.runtime.hypervisor import HypervisorError

    qemu, _ = fake_qemu(tmp_path, "free")
    spec = VmSpec(
        name="a", boot_vcpus=1, maxcpus=2, mode=HotplugMode.ACPI,
        qmp_path=tmp_path / "q", agent_path=tmp_path / "a", sandbox_dir=tmp_path,
        extra={"arch": "aarch64", "qemu": str(qemu), "kernel": str(qemu),
               "initrd": str(qemu), "firmware": str(tmp_path / "QEMU_EFI.fd")},
    )  # fmt: skip
    with pytest.raises(HypervisorError, match=r"guest firmware .*QEMU_EFI.fd does not exist"):
        QemuBackend().prepare(spec, lambda _m: None)


class _Qmp:
    """The two answers capabilities are read from."""

    def __init__(self, package: str) -> None:
        self.package = package

    def execute(self, command: str, arguments: Any = None, timeout: Any = None) -> Any:
        if command == "query-version":
            return {"qemu": {"major": 9, "minor": 1, "micro": 50}, "package": self.package}
        return []


def _state(plugged: list[int]) -> SandboxState:
    return SandboxState(
        name="a", created=0.0, mode="acpi", static=False, default_vcpus="1", maxcpus=4,
        boot_vcpus=1, remove_timeout=10.0, plugs_used=3, plugged=plugged,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("package", "removes"),
    [(f"{UNPLUG_FIXED_MARK}-0123abcd", True), ("rfc-as-published-0123abcd", False), ("", False)],
    ids=["fixed", "as-published", "unmarked"],
)
def test_only_an_rfc_build_with_the_unplug_fixes_unplugs_under_tcg(
    tmp_path: Path, package: str, removes: bool
) -> None:
    spec = VmSpec(
        name="a", boot_vcpus=1, maxcpus=4, mode=HotplugMode.ACPI,
        qmp_path=tmp_path / "q", agent_path=tmp_path / "a", sandbox_dir=tmp_path,
        extra={"arch": "aarch64", "accel": "tcg", "vcpu_slots": "4"},
    )  # fmt: skip
    caps = QemuBackend._capabilities(cast(QmpConnection, _Qmp(package)), spec)
    assert caps.hot_add and caps.replug and caps.max_plugs is None
    assert caps.hot_remove is removes
    how, why = _shrink_policy(caps, _state([0, 1, 2]))
    if removes:
        assert (how, why) == ("unplug", "unplug (device_del)")
    else:
        assert how == "offline"
        assert "vCPU unplug crashes under TCG" in why and "build-qemu-arm64-hotplug" in why
    kvm = dataclasses.replace(spec, extra={**spec.extra, "accel": "kvm"})
    assert QemuBackend._capabilities(cast(QmpConnection, _Qmp(package)), kvm).hot_remove


def test_firmware_in_the_config_is_katas_key() -> None:
    from cpuplug.runtime.config import ConfigError, RuntimeConfig, parse_config

    cfg = parse_config('[hypervisor.qemu]\nfirmware = "/usr/share/AAVMF/AAVMF_CODE.fd"\n')
    assert cfg.vm_options()["firmware"] == "/usr/share/AAVMF/AAVMF_CODE.fd"
    assert "firmware" not in RuntimeConfig().vm_options(), "the image's, by default"
    with pytest.raises(ConfigError, match=r"^c.toml: firmware must be a non-empty string"):
        parse_config("[hypervisor.qemu]\nfirmware = 1\n", "c.toml")


def test_a_configured_firmware_wins_over_the_images(tmp_path: Path) -> None:
    from cpuplug.runtime.hypervisor import HypervisorError

    qemu, _ = fake_qemu(tmp_path, "free")
    mine = tmp_path / "AAVMF_CODE.fd"
    mine.write_bytes(b"fw")
    spec = prepared(tmp_path, qemu, extra={"firmware": str(mine)})
    cmd = QemuBackend().command(spec)
    assert cmd[cmd.index("-bios") + 1] == str(mine)
    with pytest.raises(HypervisorError, match=r"guest firmware /nope.fd does not exist"):
        prepared(tmp_path, qemu, extra={"firmware": "/nope.fd"})


def test_a_binary_that_is_not_qemu_is_one_line(tmp_path: Path) -> None:
    from cpuplug.runtime.hypervisor import HypervisorError

    with pytest.raises(HypervisorError, match=r"/bin/true did not answer QMP: it exited with 0$"):
        prepared(tmp_path, Path("/bin/true"))

"""Real QEMU as a hypervisor backend: ``qemu-system-x86_64`` (q35) or ``-aarch64`` (virt).

The VM runs a real Linux guest from cpuplug's image (:mod:`cpuplug.image`) whose init
runs the guest agent on a virtio-serial port.  QEMU runs under
:mod:`~cpuplug.runtime.hypervisors.vmm_proxy` (its parent and the agent channel's
multiplexer), so the sandbox is one process tree and every ``cpuplug`` command can
open its own agent connection on ``agent.sock`` as with the built-in machine.

What QEMU can do is asked of QEMU, not assumed (docs/real-backends.md):

* x86_64 ``q35`` does ACPI CPU hotplug; props come from ``query-hotpluggable-cpus``
  as given (``socket-id``/``core-id``/``thread-id``); removal completes with the
  final eject ``_OST`` matched by slot or with ``DEVICE_DELETED`` naming only the
  child ``.../lapic`` (7.2 never names the device).
* QEMU 7.2 crashes on any vCPU plug after any unplug under TCG: ``replug`` is off,
  so the orchestration shrinks by offlining and keeps the vCPUs plugged.  QEMU 10
  re-plugs, but under TCG every vCPU thread ever created keeps a TCG context and
  there are only QEMU's ``maxcpus`` of them: ``max_plugs`` is what is left after boot.
  Such a QEMU is given ``extra_vcpu_slots`` possible vCPUs beyond the sandbox's
  maximum (never plugged: they only buy contexts), and the orchestration unplugs only
  while the plugs left let the VM grow back to its maximum (docs/runtime.md).
* aarch64 ``virt`` on Debian's QEMU has no vCPU hotplug (``query-hotpluggable-cpus``
  is "not enabled"): the sandbox runs in online/offline mode, all vCPUs plugged at
  boot, with a warning naming why.  A QEMU that answers the query on ``virt`` with a
  free slot (the arm64 hotplug RFC, built by scripts/build-qemu-arm64-hotplug) gets
  ACPI mode when the rest of the chain can do it too: MTTCG (``-accel
  tcg,thread=multi``) and GICv3, without which the RFC silently clamps ``maxcpus`` to
  the boot vCPUs (seen by the probe as no free slot); UEFI firmware (arm64 ACPI tables
  reach the guest only through it); a guest kernel of at least 6.11.  Its ``device_del``
  crashes QEMU under TCG unless this repository's fixes are in
  (docs/qemu-arm64-hotplug.md); the build script marks a fixed build in QMP's
  ``query-version`` package, and an unmarked one shrinks by offlining.
* KVM where it works, TCG otherwise: ``/dev/kvm`` here is PVM (nested, no ``vmx``),
  under which a stock kernel crawls and then stops with ``internal-error``; KVM is
  chosen only when the host CPU advertises ``vmx``/``svm`` (or is arm64 with KVM)
  and the guest architecture is the host's.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cpuplug.cpuhp_abi import HotplugMode
from cpuplug.runtime.hypervisor import (
    Capabilities,
    Completion,
    Hypervisor,
    HypervisorError,
    HypervisorKind,
    VmSpec,
)
from cpuplug.runtime.hypervisors.qmp import QmpHypervisor
from cpuplug.runtime.process import ProcessIdentity, launch, socket_peer
from cpuplug.runtime.qmp_client import QmpCommandError, QmpConnection
from cpuplug.runtime.resize import Slot, parse_slots

QUIT_TIMEOUT = 2.0
PROBE_TIMEOUT = 20.0
AGENT_PORT_NAME = "cpuplug.agent"
"""The virtserialport name the guest agent looks for under /sys/class/virtio-ports."""
DEFAULT_MEMORY_MB = 512
ARCHES = ("x86_64", "aarch64")
REPLUG_SINCE = (10, 0)
"""First QEMU version measured to plug a vCPU after an unplug under TCG (7.2 crashes;
8.x and 9.x were not measured, so they are treated as 7.2 was)."""
ARM64_HOTPLUG_KERNEL = (6, 11)
"""First Linux with arm64 ACPI vCPU hotplug (the guest side of the RFC)."""
UNPLUG_FIXED_MARK = "cpuplug-unplug-fixes"
"""In ``query-version``'s package string of an arm64 hotplug QEMU built with this
repository's unplug fixes (scripts/build-qemu-arm64-hotplug)."""
MAX_VCPU_SLOTS = 255
"""Most possible vCPUs given for headroom: APIC ids above 254 need x2APIC and interrupt
remapping on q35."""


def vcpu_slots(maxcpus: int, opts: dict[str, str]) -> int:
    """QEMU's ``maxcpus`` for a sandbox of ``maxcpus`` vCPUs (ACPI mode).

    ``extra_vcpu_slots`` more, as configured; by default as many again (2x) where they
    buy vCPU plugs -- TCG on a QEMU that can plug after an unplug -- and none elsewhere
    (KVM has no plug bound; QEMU 7.2 never unplugs).  Chosen by measurement
    (docs/real-backends.md): a slot never plugged costs QEMU no thread and no measurable
    RSS or boot time, and the guest about 0.25 MiB of RAM; each buys one plug.
    """
    extra = opts.get("extra_vcpu_slots")
    if extra is None:
        major_minor = tuple(int(x) for x in opts.get("qemu_version", "0.0").split(".")[:2])
        helps = opts.get("accel") == "tcg" and major_minor >= REPLUG_SINCE
        extra = str(maxcpus if helps else 0)
    return max(maxcpus, min(maxcpus + int(extra), MAX_VCPU_SLOTS))


def host_arch() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def qemu_binary(arch: str, configured: str | None) -> Path:
    """The QEMU to run: the configured path, else ``qemu-system-<arch>`` on PATH."""
    if arch not in ARCHES:
        raise HypervisorError(f"unsupported --arch {arch!r}: use one of {', '.join(ARCHES)}")
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise HypervisorError(f"QEMU binary {path} does not exist or is not executable")
        return path
    found = shutil.which(f"qemu-system-{arch}")
    if found is None:
        pkg = "qemu-system-x86" if arch == "x86_64" else "qemu-system-arm"
        raise HypervisorError(
            f"qemu-system-{arch} not found: install it (apt-get install {pkg}) "
            "or give its path (--qemu PATH, or path under [hypervisor.qemu])"
        )
    return Path(found)


def choose_accel(arch: str) -> str:
    """``kvm`` when it can work for this guest here, else ``tcg``."""
    if arch != host_arch() or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    if arch == "aarch64":
        return "kvm"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "tcg"
    flags = next((line for line in lines if line.startswith("flags")), "").split()
    return "kvm" if {"vmx", "svm"} & set(flags) else "tcg"


def _opt(value: str | Path) -> str:
    """A value inside a QEMU ``-opt a=b,c=d`` list: commas are escaped by doubling."""
    return str(value).replace(",", ",,")


ROOTFS_SERIAL = "cpuplug-rootfs"
"""The serial of the disk ``rootfs_disk`` names unless ``rootfs_serial`` says (what the
guest agent's ``CreateContainer`` ``rootfs_disk`` looks for)."""


class QemuBackend:
    """Starts QEMU sandboxes (under the proxy) and attaches to them over QMP."""

    kind = HypervisorKind.QEMU

    def __init__(self, ensure_image: Callable[..., Any] | None = None) -> None:
        self._ensure_image = ensure_image

    # ------------------------------------------------------------------ preparing

    def prepare(self, spec: VmSpec, progress: Callable[[str], None]) -> VmSpec:
        """Resolve the QEMU binary, the accelerator, the guest image and the hotplug mode."""
        opts = dict(spec.extra)
        arch = opts.get("arch") or host_arch()
        qemu = qemu_binary(arch, opts.get("qemu"))
        opts.update(arch=arch, qemu=str(qemu), accel=opts.get("accel") or choose_accel(arch))
        opts.setdefault("memory", str(DEFAULT_MEMORY_MB))
        if not opts.get("kernel") or not opts.get("initrd"):
            image = self._image(arch, progress)
            opts["kernel"], opts["initrd"] = str(image.kernel), str(image.initrd)
            opts["kernel_version"] = image.kernel_version
            opts["cmdline"] = image.cmdline
            if image.firmware is not None and not opts.get("firmware"):
                opts["firmware"] = str(image.firmware)  # the configured one wins
        for key in ("kernel", "initrd", "firmware"):
            if key in opts and not Path(opts[key]).is_file():
                raise HypervisorError(f"guest {key} {opts[key]} does not exist")
        mode = spec.mode
        if mode is HotplugMode.ACPI:
            why_not = self._why_no_hotplug(opts)
            if why_not is not None:
                mode = HotplugMode.ONLINE_OFFLINE
                opts["mode_reason"] = (
                    f"{why_not}: online/offline mode, all vCPUs plugged at boot"
                )
        if mode is HotplugMode.ACPI:
            opts["vcpu_slots"] = str(vcpu_slots(spec.maxcpus, opts))
        return VmSpec(
            name=spec.name,
            boot_vcpus=spec.maxcpus if mode is HotplugMode.ONLINE_OFFLINE else spec.boot_vcpus,
            maxcpus=spec.maxcpus,
            mode=mode,
            qmp_path=spec.qmp_path,
            agent_path=spec.agent_path,
            sandbox_dir=spec.sandbox_dir,
            extra=opts,
        )

    def _image(self, arch: str, progress: Callable[[str], None]) -> Any:
        ensure = self._ensure_image
        if ensure is None:
            # built on first use, and heavy: imported only when a sandbox needs it
            ensure = importlib.import_module("cpuplug.image").ensure_image
        return ensure(
            arch, progress=lambda p: progress(f"image [{p.step}/{p.steps}] {p.message}")
        )

    def _why_no_hotplug(self, opts: dict[str, str]) -> str | None:
        """Why this VM cannot hot-plug vCPUs over ACPI, or None when it can."""
        can, warnings = self._probe_hotplug(opts)
        if not can:
            if "hotplug feature has been disabled" in warnings:
                return (
                    f"{opts['qemu']} disabled vCPU hotplug on this machine (it needs "
                    "MTTCG and GICv3)"
                )
            return (
                f"{opts['qemu']} has no vCPU hotplug on this machine "
                "(query-hotpluggable-cpus is not enabled or offers no free slot)"
            )
        if opts["arch"] != "aarch64":
            return None
        if not opts.get("firmware"):
            return (
                "arm64 ACPI vCPU hotplug needs the guest booted through UEFI, and no "
                "firmware is set (firmware under [hypervisor.qemu], or the image's)"
            )
        kernel = _release(opts.get("kernel_version", ""))
        if kernel is not None and kernel < ARM64_HOTPLUG_KERNEL:
            return (
                f"the guest kernel {opts['kernel_version']} predates arm64 ACPI vCPU "
                "hotplug (Linux 6.11)"
            )
        return None

    def _probe_hotplug(self, opts: dict[str, str]) -> tuple[bool, str]:
        """Ask a paused, kernel-less QEMU of the same machine (about 50 ms) for its
        hotpluggable CPUs: whether it can hot-plug (it answers with a free slot), and
        what it printed on stderr (its warnings).  Its version goes to
        ``opts["qemu_version"]``."""
        argv = [opts["qemu"], *self._machine_args(opts), "-smp", "1,maxcpus=2", "-S",
                "-display", "none", "-nodefaults", "-qmp", "stdio"]  # fmt: skip
        script = "\n".join(
            json.dumps(c)
            for c in (
                {"execute": "qmp_capabilities"},
                {"execute": "query-version", "id": "version"},
                {"execute": "query-hotpluggable-cpus", "id": "probe"},
                {"execute": "quit"},
            )
        )
        try:
            proc = subprocess.run(
                argv, input=script + "\n", capture_output=True, text=True,
                timeout=PROBE_TIMEOUT, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HypervisorError(f"cannot run {opts['qemu']}: {exc}") from None
        out = proc.stdout
        for line in out.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("id") == "version":
                q = msg.get("return", {}).get("qemu", {})
                opts["qemu_version"] = f"{q.get('major', 0)}.{q.get('minor', 0)}"
            if isinstance(msg, dict) and msg.get("id") == "probe":
                entries = msg.get("return")
                can = isinstance(entries, list) and any(
                    isinstance(e, dict) and "qom-path" not in e for e in entries
                )
                return can, proc.stderr
        said = (out.strip() or proc.stderr.strip())[-200:] or f"it exited with {proc.returncode}"
        raise HypervisorError(f"{opts['qemu']} did not answer QMP: {said}")

    # ------------------------------------------------------------------ starting

    @staticmethod
    def _machine_args(opts: dict[str, str]) -> list[str]:
        accel = opts.get("accel", "tcg")
        if opts["arch"] == "x86_64":
            return ["-M", "q35", "-accel", accel]
        if accel == "kvm":
            return ["-M", "virt,gic-version=3", "-accel", "kvm", "-cpu", "host"]
        # MTTCG said explicitly: the arm64 hotplug RFC needs it (it is the default on
        # x86_64 hosts, but a QEMU that falls back to one thread would silently lose
        # hotplug); pauth-impdef: the architected pointer-auth hash is ~2x slower.
        return ["-M", "virt,gic-version=3", "-accel", "tcg,thread=multi",
                "-cpu", "max,pauth-impdef=on"]  # fmt: skip

    def command(self, spec: VmSpec) -> list[str]:
        """QEMU's command line for ``spec`` (after :meth:`prepare`)."""
        o = spec.extra
        console = "ttyS0" if o["arch"] == "x86_64" else "ttyAMA0"
        cmdline = o.get("cmdline") or f"console={console} panic=-1 quiet"
        guest_chardev = spec.sandbox_dir / "agent-guest.sock"
        return [
            o["qemu"], *self._machine_args(o),
            "-smp", f"{spec.boot_vcpus},maxcpus={o.get('vcpu_slots', spec.maxcpus)}",
            "-m", o["memory"],
            *(["-bios", o["firmware"]] if o.get("firmware") else []),
            "-kernel", o["kernel"], "-initrd", o["initrd"],
            "-append", cmdline,
            # threads named "CPU n/TCG" (or /KVM): a vCPU's thread is found by name
            "-name", f"{_opt('cpuplug-' + spec.name)},debug-threads=on",
            "-display", "none", "-nodefaults", "-no-reboot",
            "-serial", f"file:{_opt(spec.sandbox_dir / 'console.log')}",
            "-qmp", f"unix:{_opt(spec.qmp_path)},server=on,wait=off",
            "-chardev", f"socket,id=agent,path={_opt(guest_chardev)},server=on,wait=off",
            # entropy: without it every python3 start in the guest waits for the
            # kernel's random pool (2 s under TCG; docs/image.md)
            "-device", "virtio-rng-pci",
            "-device", "virtio-serial-pci,id=vser0",
            "-device", f"virtserialport,bus=vser0.0,chardev=agent,name={AGENT_PORT_NAME}",
            *self._rootfs_args(o),
        ]  # fmt: skip

    @staticmethod
    def _rootfs_args(opts: dict[str, str]) -> list[str]:
        """A container's root filesystem image (cpuplug-runc) as a virtio disk whose
        serial the guest agent finds it by (``CreateContainer`` ``rootfs_disk``)."""
        image = opts.get("rootfs_disk")
        if not image:
            return []
        return [
            "-drive", f"file={_opt(image)},if=none,id=rootfs,format=raw,cache=unsafe",
            "-device",
            f"virtio-blk-pci,drive=rootfs,serial={opts.get('rootfs_serial') or ROOTFS_SERIAL}",
        ]  # fmt: skip

    def start(self, spec: VmSpec) -> ProcessIdentity:
        argv = [
            sys.executable, "-m", "cpuplug.runtime.hypervisors.vmm_proxy",
            "--agent-guest", str(spec.sandbox_dir / "agent-guest.sock"),
            "--agent-listen", str(spec.agent_path),
            "--", *self.command(spec),
        ]  # fmt: skip
        return launch(argv, spec.sandbox_dir / "vmm.log")

    # ------------------------------------------------------------------ running

    def attach(self, spec: VmSpec) -> Hypervisor:
        qmp = QmpConnection(spec.qmp_path).connect()
        try:
            caps = self._capabilities(qmp, spec)
        except BaseException:
            qmp.close()
            raise
        if spec.mode is HotplugMode.ONLINE_OFFLINE:
            return _BootVcpusOnly(self.kind, qmp, caps)
        return QmpHypervisor(self.kind, qmp, caps)

    @staticmethod
    def _capabilities(qmp: QmpConnection, spec: VmSpec) -> Capabilities:
        if spec.mode is HotplugMode.ONLINE_OFFLINE:
            return Capabilities(False, False, False, 0, Completion.SLOT_STATE)
        try:
            qmp.execute("query-hotpluggable-cpus")
        except QmpCommandError:
            return Capabilities(False, False, False, 0, Completion.SLOT_STATE)
        answer = qmp.execute("query-version")
        ver = answer.get("qemu", {})
        version = (int(ver.get("major", 0)), int(ver.get("minor", 0)))
        tcg = spec.extra.get("accel", "tcg") == "tcg"
        completion = (
            Completion.INSERT_OST
            | Completion.EJECT_OST
            | Completion.DELETED_CHILD_PATH
            | Completion.SLOT_STATE
        )
        if spec.extra.get("arch") == "aarch64":
            # The arm64 hotplug RFC: it plugs again after an unplug and, with the
            # repository's fix to tcg_unregister_thread, gives a leaving vCPU's TCG
            # context back (no plug bound).  As published, its unplug crashes QEMU
            # under TCG within a few device_dels: such a build shrinks by offlining.
            fixed = UNPLUG_FIXED_MARK in str(answer.get("package", ""))
            return Capabilities(
                hot_add=True,
                hot_remove=fixed or not tcg,
                replug=True,
                max_plugs=None,
                completion=completion | Completion.DELETED_BY_ID,
                remove_note="" if fixed or not tcg else (
                    "this QEMU's vCPU unplug crashes under TCG: build it with "
                    "scripts/build-qemu-arm64-hotplug, whose patches fix it"
                ),
            )
        return Capabilities(
            hot_add=True,
            hot_remove=True,
            replug=version >= REPLUG_SINCE,
            max_plugs=int(spec.extra.get("vcpu_slots", spec.maxcpus)) - spec.boot_vcpus
            if tcg
            else None,
            completion=completion,
        )

    def describe(self, spec: VmSpec) -> dict[str, Any]:
        """QEMU's version, the accelerator and the ``qemu-system-*`` process, for inspect."""
        out: dict[str, Any] = {
            "accelerator": spec.extra.get("accel"),
            "arch": spec.extra.get("arch"),
            "kernel_version": spec.extra.get("kernel_version"),
            "vcpu_slots": int(spec.extra.get("vcpu_slots", spec.maxcpus)),
        }
        peer = socket_peer(spec.qmp_path)
        out["qemu_pid"] = peer.pid if peer is not None else None
        with QmpConnection(spec.qmp_path, timeout=QUIT_TIMEOUT) as qmp:
            ver = qmp.execute("query-version")
            q = ver.get("qemu", {})
            out["qemu_version"] = f"{q.get('major')}.{q.get('minor')}.{q.get('micro')}"
            out["status"] = qmp.execute("query-status").get("status")
        return out

    def request_quit(self, qmp_path: Path) -> None:
        with QmpConnection(qmp_path, timeout=QUIT_TIMEOUT) as qmp:
            qmp.execute("quit")


def _release(version: str) -> tuple[int, int] | None:
    """(major, minor) of a kernel release such as ``6.12.95+deb12-arm64``."""
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1].split("-")[0].split("+")[0])
    except (IndexError, ValueError):
        return None


class _BootVcpusOnly(QmpHypervisor):
    """A VM in online/offline mode: every vCPU was plugged at boot and stays plugged.

    Its slots are the vCPUs QEMU runs (``query-cpus-fast``, which has the same props
    and QOM paths), so a machine without vCPU hotplug, where ``query-hotpluggable-cpus``
    "is not enabled" (aarch64 ``virt`` on QEMU 7.2), is resized like any other.
    """

    def slots(self) -> list[Slot]:
        return parse_slots(self.qmp.execute("query-cpus-fast"))


BACKEND = QemuBackend()

"""The guest kernel: the entry point the VMM boots, and the object the agent talks to.

``start(machine)`` is the kernel image's entry (``--kernel
cpuplug.guest.kernel:start``). It only builds the kernel object; all the work
happens on the vCPU threads the VMM runs, as on hardware:

* ``boot_cpu_main(cpu)``: tables from the RSDP (``boot.py``), the CPU masks,
  PSCI CPU_ON for every possible CPU (DENIED is silent), sysfs, the ACPI
  namespace and its scan (``acpi_bus.py``), the GED driver, the agent; then
  the boot CPU serves the run queue like every other online CPU.
* ``secondary_entry(cpu, entry, context)``: a CPU started by CPU_ON marks itself
  online and serves the run queue until it is taken offline.

What the rest of the guest (agent, userland, cgroups) uses
----------------------------------------------------------
``kernel.vfs`` (the file tree, with ``/sys/devices/system/cpu/{possible,present,
online,offline,enabled}`` and ``cpuN/online`` while registered), ``kernel.sched``
(the scheduler, ``sched.py`` contract), ``kernel.cgroups`` (cgroup v2 tree),
``kernel.log`` (printk/dmesg), ``kernel.events`` (the uevent stream, named as the
agent protocol's events), the masks ``possible()/present()/online()/offline()/
enabled()`` (frozensets), :meth:`GuestKernel.cpulist`, and
:meth:`GuestKernel.cpu_online` / :meth:`GuestKernel.cpu_offline`, which raise
``GuestOSError`` with Linux's errno (EPERM, EIO, EBUSY, ENODEV, EINVAL).
``kernel.booted`` is set once the boot CPU finished booting.

Both hotplug modes boot the same way, following the MADT: in ACPI mode only the
boot CPU is Enabled, so only it comes up and only it is registered until the
host plugs more; in online/offline mode every GICC is Enabled, so, as Linux
does without ``maxcpus=``, every vCPU is brought online at boot and registered
by the scan (the agent may then offline and online them through sysfs).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import threading
from collections.abc import Callable
from typing import Any

from cpuplug import psci_abi
from cpuplug.acpi.errors import AcpiError
from cpuplug.guest import psci
from cpuplug.guest.acpi_bus import AcpiBus, AcpiDevice
from cpuplug.guest.boot import (
    BootError,
    check_psci_conduit,
    enumerate_cpus,
    gicd_base,
    read_tables,
    uart_base,
)
from cpuplug.guest.cgroup import CgroupTree
from cpuplug.guest.cpu import MIDR, CpuHotplugError, CpuManager
from cpuplug.guest.klog import KernelLog, Uevents
from cpuplug.guest.vfs import GuestOSError, Vfs
from cpuplug.hw import Cpu, Machine

SYS_CPU = "/sys/devices/system/cpu"
KERNEL_RELEASE = "6.11.0-cpuplug"

GICD_IROUTER = 0x6000
"""Offset of GICD_IROUTER<n> (64-bit each) in the distributor."""
GICD_ICFGR = 0x0C00
"""Offset of GICD_ICFGR<n>: 2 bits per INTID, bit 1 set = edge-triggered."""
GICD_ICACTIVER = 0x0380
"""Offset of GICD_ICACTIVER<n>: write 1 to deactivate (EOI of a level interrupt)."""

AGENT_MODULE = "cpuplug.guest.agent"


def kstrtobool(text: str) -> bool:
    """Linux's ``kstrtobool``: 1/y/Y/on → True, 0/n/N/off → False, else EINVAL."""
    s = text.strip().lower()
    if s in ("1", "y", "yes", "on"):
        return True
    if s in ("0", "n", "no", "off"):
        return False
    raise GuestOSError(errno.EINVAL)


class KernelDebug:
    """Hooks a test uses to act as a hostile guest root (bypassing sysfs)."""

    def __init__(self, kernel: GuestKernel) -> None:
        self._kernel = kernel

    def raw_psci_cpu_on(self, mpidr: int, entry: int = psci.SECONDARY_ENTRY) -> int:
        """Issue PSCI CPU_ON for ``mpidr`` directly; returns the raw PSCI code."""
        cpus = self._kernel.cpus
        return cpus._hvc(lambda hw: psci.cpu_on(hw, mpidr, entry, 0))

    def secondary_entries(self) -> list[int]:
        """MPIDRs of every vCPU that ever entered ``secondary_entry``."""
        with self._kernel.cpus._lock:
            return list(self._kernel.cpus.secondary_entries)


class GuestKernel:
    """The kernel object (``cpuplug.hw.Kernel``)."""

    def __init__(self, machine: Machine, *, start_agent: bool = True) -> None:
        self.machine = machine
        self.log = KernelLog(machine.memory)
        self.events = Uevents(self.log)
        self.cpus = CpuManager(self.log, self.events)
        self.sched = self.cpus.sched
        self.vfs = Vfs()
        self.cgroups = CgroupTree(
            self.vfs, online=self.cpus.online_mask, possible=self.cpus.possible,
            scheduler=self.sched,
        )
        self.acpi = AcpiBus(machine.memory, self.log, self.events, self.cpus, self._power_off)
        self.debug = KernelDebug(self)
        self.booted = threading.Event()
        self.panicked: str | None = None
        self.agent: Any = None
        self._start_agent = start_agent
        self._gicd: int | None = None
        self._irq_routes: dict[int, int] = {}  # SPI → logical CPU it is routed to
        self.cpus.on_register = self._sysfs_add_cpu
        self.cpus.on_unregister = self._sysfs_remove_cpu
        self.cpus.on_dying = self._migrate_irqs
        self.cpus.defer = self.acpi.queue_work
        self.acpi.on_device = self._sysfs_add_acpi_device

    # ------------------------------------------------------------ the masks

    def possible(self) -> frozenset[int]:
        return self.cpus.possible()

    def present(self) -> frozenset[int]:
        return self.cpus.present()

    def online(self) -> frozenset[int]:
        return self.cpus.online_mask()

    def offline(self) -> frozenset[int]:
        return self.cpus.offline()

    def enabled(self) -> frozenset[int]:
        return self.cpus.enabled()

    cpulist = staticmethod(CpuManager.cpulist)

    def cpu_online(self, n: int) -> None:
        """Bring CPU ``n`` online (``echo 1 > cpuN/online``); GuestOSError on failure."""
        try:
            self.cpus.cpu_up(n)
        except CpuHotplugError as exc:
            raise GuestOSError(exc.errno, f"{SYS_CPU}/cpu{n}/online") from exc

    def cpu_offline(self, n: int) -> None:
        """Take CPU ``n`` offline (``echo 0 > cpuN/online``); GuestOSError on failure."""
        try:
            self.cpus.cpu_down(n)
        except CpuHotplugError as exc:
            raise GuestOSError(exc.errno, f"{SYS_CPU}/cpu{n}/online") from exc

    # ------------------------------------------------------------ hw.Kernel

    def boot_cpu_main(self, cpu: Cpu) -> None:
        try:
            boot_id = self._boot(cpu)
        except (BootError, AcpiError) as exc:
            self._panic(cpu, str(exc))
            return
        self.booted.set()
        self.cpus.run_cpu(boot_id, cpu, announce=False)

    def secondary_entry(self, cpu: Cpu, entry: int, context: int) -> None:
        self.cpus.note_secondary_entry(cpu.mpidr)
        n = self.cpus.logical_of_mpidr(cpu.mpidr)
        if n is None:
            self.log.err(f"CPU with MPIDR 0x{cpu.mpidr:x} is not possible; parking it")
            while True:
                cpu.wait_for_interrupt(None)
        if entry != psci.SECONDARY_ENTRY:
            self.log.warn(f"CPU{n}: started at unexpected entry 0x{entry:x}")
        self.cpus.run_cpu(n, cpu, announce=True)

    # ------------------------------------------------------------ boot

    def _boot(self, cpu: Cpu) -> int:
        memory = self.machine.memory
        tables = read_tables(memory, self.machine.rsdp_address)
        base = uart_base(tables.spcr)
        if base is not None:
            self.log.attach_uart(base)
        self.log.info(f"Booting Linux on physical CPU 0x{cpu.mpidr:010x} [0x{MIDR:08x}]")
        self.log.info(f"Linux version {KERNEL_RELEASE} (cpuplug guest model)")
        self.log.info(
            f"ACPI: RSDP 0x{self.machine.rsdp_address:016X} 000024 (v02 {tables.rsdp.oem_id})"
        )
        check_psci_conduit(tables.fadt)
        major, minor = psci.version(cpu)
        self.log.info(f"psci: PSCIv{major}.{minor} detected in firmware.")
        self._gicd = gicd_base(tables.madt)
        found = enumerate_cpus(tables.madt, cpu.mpidr)
        for message in found.messages:
            self.log.info(message)
        self.cpus.setup(found)
        boot_id = found.slots[0].logical
        self._register_sysfs()
        # The boot CPU counts as online while it brings up the others (smp_init).
        self.cpus.mark_boot_cpu_online(boot_id, cpu)
        self.log.info("smp: Bringing up secondary CPUs ...")
        for slot in found.slots[1:]:
            # DENIED is silent; other failures were printed by cpu_up.
            with contextlib.suppress(CpuHotplugError):
                self.cpus.cpu_up_locked(slot.logical, require_registered=False)
        self.log.info(f"smp: Brought up 1 node, {len(self.online())} CPUs")
        self.acpi.load(tables)
        with self.cpus.hotplug_locked():
            self.acpi.scan()
        for line in self.acpi.probe_ged():
            self._configure_irq(line.gsi, edge=line.edge)
            self._route_irq(line.gsi, boot_id)
        self.acpi.start_threads()
        if self._start_agent:
            self._launch_agent()
        return boot_id

    def _panic(self, cpu: Cpu, reason: str) -> None:
        """Linux with panic=0: print, then halt this CPU for good."""
        self.panicked = reason
        self.log.printk(f"Kernel panic - not syncing: {reason}", 0)
        self.booted.set()
        while True:
            cpu.wait_for_interrupt(None)

    def _launch_agent(self) -> None:
        """Start the agent if ``cpuplug.guest.agent`` provides ``start(kernel)``."""
        try:
            module = importlib.import_module(AGENT_MODULE)
        except ModuleNotFoundError as exc:
            if exc.name != AGENT_MODULE:
                raise
            self.log.warn("agent: not installed")
            return
        start = getattr(module, "start", None)
        if start is None:
            self.log.warn("agent: module has no start(kernel)")
            return
        self.agent = start(self)

    def _power_off(self) -> None:
        """Orderly power-off (power button): PSCI SYSTEM_OFF from some online CPU."""
        self.log.info("reboot: Power down")
        self.cpus._hvc(lambda hw: hw.hvc(psci_abi.SYSTEM_OFF))

    # ------------------------------------------------------------ interrupts

    def _configure_irq(self, spi: int, *, edge: bool) -> None:
        """``irq_set_type``: program the SPI's trigger in GICD_ICFGR (the _CRS says which).

        A level SPI stays *active* after it is taken until the handler
        deactivates it (GICD_ICACTIVER); an edge one is done once taken. Left at
        the reset default (level), the GED's pulses would be seen only once.
        """
        if self._gicd is None:
            return
        reg = self._gicd + GICD_ICFGR + 4 * (spi // 16)
        bit = 1 << (2 * (spi % 16) + 1)
        value = self.machine.memory.load(reg, 4)
        self.machine.memory.store(reg, 4, (value | bit) if edge else (value & ~bit))
        if not edge:
            self.cpus.level_irqs[spi] = self._deactivate_irq

    def _deactivate_irq(self, spi: int) -> None:
        if self._gicd is not None:
            reg = self._gicd + GICD_ICACTIVER + 4 * (spi // 32)
            self.machine.memory.store(reg, 4, 1 << (spi % 32))

    def _route_irq(self, spi: int, cpu: int) -> None:
        """Program GICD_IROUTER<spi> to target logical CPU ``cpu``."""
        slot = self.cpus.slot(cpu)
        if self._gicd is None or slot is None:
            return
        aff = slot.mpidr & 0xFF_00FF_FFFF
        self.machine.memory.store(self._gicd + GICD_IROUTER + 8 * spi, 8, aff)
        self._irq_routes[spi] = cpu

    def _migrate_irqs(self, dying: int) -> None:
        """``irq_migrate_all_off_this_cpu``: move SPIs routed to ``dying`` elsewhere."""
        others = sorted(self.online() - {dying})
        if not others:
            return
        for spi, target in list(self._irq_routes.items()):
            if target == dying:
                self._route_irq(spi, others[0])

    # ------------------------------------------------------------ sysfs

    def _register_sysfs(self) -> None:
        masks: dict[str, Callable[[], frozenset[int]]] = {
            "possible": self.possible,
            "present": self.present,
            "online": self.online,
            "offline": self.offline,
            "enabled": self.enabled,
        }
        for name, mask in masks.items():
            self.vfs.register(f"{SYS_CPU}/{name}", self._mask_reader(mask))
        self.vfs.register("/proc/version", lambda: f"Linux version {KERNEL_RELEASE}\n")
        self.vfs.register("/proc/stat", self._proc_stat)
        self.vfs.register("/dev/kmsg", self.log.dmesg)  # read: the ring buffer, as dmesg
        self.vfs.register(
            "/sys/firmware/acpi/hotplug/processor/enabled",
            lambda: "1\n" if self.acpi.processor_hotplug_enabled else "0\n",
            self._write_processor_hotplug,
        )

    def _write_processor_hotplug(self, data: str) -> None:
        self.acpi.processor_hotplug_enabled = kstrtobool(data)

    def _sysfs_add_acpi_device(self, dev: AcpiDevice) -> None:
        """``/sys/bus/acpi/devices/<HID>:<NN>/{path,status[,eject]}``."""
        base = f"/sys/bus/acpi/devices/{dev.name}"

        def status() -> str:
            try:
                return f"{self.acpi.sta(dev.path)}\n"
            except AcpiError as exc:
                raise GuestOSError(errno.EIO, f"{base}/status") from exc

        def eject(data: str) -> None:
            if not data or data[0] != "1":
                raise GuestOSError(errno.EINVAL, f"{base}/eject")
            self.acpi.request_eject(dev)

        self.vfs.register(f"{base}/path", lambda: dev.path + "\n")
        self.vfs.register(f"{base}/status", status)
        if self.acpi.interp.exists(dev.path + "._EJ0"):
            self.vfs.register(f"{base}/eject", lambda: "", eject)

    def _proc_stat(self) -> str:
        """``/proc/stat``'s CPU lines: user time per CPU in USER_HZ (1/100 s) ticks.

        Task slices are the only time accounted (as user); the other columns are 0.
        """
        busy = dict(self.sched.busy_time)
        rows = [(f"cpu{n}", int(busy.get(n, 0.0) * 100)) for n in sorted(self.possible())]
        total = sum(ticks for _, ticks in rows)
        lines = [f"cpu  {total} 0 0 0 0 0 0 0 0 0"]
        lines += [f"{name} {ticks} 0 0 0 0 0 0 0 0 0" for name, ticks in rows]
        return "\n".join(lines) + "\n"

    def _mask_reader(self, mask: Callable[[], frozenset[int]]) -> Callable[[], str]:
        return lambda: self.cpulist(mask()) + "\n"

    def _sysfs_add_cpu(self, n: int) -> None:
        path = f"{SYS_CPU}/cpu{n}/online"

        def read() -> str:
            return "1\n" if self.cpus.is_online(n) else "0\n"

        def write(data: str) -> None:
            want = kstrtobool(data)
            try:
                if want:
                    self.cpus.cpu_up(n)
                else:
                    self.cpus.cpu_down(n)
            except CpuHotplugError as exc:
                raise GuestOSError(exc.errno, path) from exc

        self.vfs.register(path, read, write)

    def _sysfs_remove_cpu(self, n: int) -> None:
        with contextlib.suppress(GuestOSError):
            self.vfs.unregister(f"{SYS_CPU}/cpu{n}")

    # ------------------------------------------------------------ teardown

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the kernel threads (the VMM stops the vCPUs). For tests and power-off."""
        self.acpi.stop_threads(timeout)
        stop = getattr(self.agent, "stop", None)
        if callable(stop):
            stop()


def start(machine: Machine) -> GuestKernel:
    """Kernel entry point: called once by the VMM before any vCPU runs."""
    return GuestKernel(machine)

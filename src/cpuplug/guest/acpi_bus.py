"""The ACPI bus: namespace scan, processor devices, the GED driver, Notify → hotplug.

What Linux does across ``drivers/acpi/{scan,bus,osl,evged,acpi_processor}.c``
(docs/contract.md §6), as three execution contexts:

* **The GED interrupt.** The vCPU that takes INTID 41 only wakes the GED's IRQ
  thread (``irq/41-ACPI:Ged``; Linux's ``request_threaded_irq`` with no primary
  handler) and goes back to its tasks. No AML runs on a vCPU: the eject path's
  ``_EJ0`` makes the VMM end a vCPU thread, and a vCPU busy in AML when that
  happens could hold what the worker needs.
* **The IRQ thread** evaluates ``_EVT(GSI)`` (or ``_Exx``). The AML's Notify
  calls land in :meth:`AcpiBus._notify`, which only queues: hotplug types (0, 1,
  3) for a known device go to the worker; for an unknown object
  ``_OST(type, 1)`` is sent at once, right after the method returns.
* **The hotplug worker** (``kacpi_hotplug``): one thread, FIFO, one event at a
  time, holding the CPU hotplug lock for the whole event, as Linux's ordered
  workqueue + ``lock_device_hotplug``. Device Check rescans the parent and
  registers every processor whose ``_STA`` turned Enabled, then ``_OST(1, 0|1)``.
  Eject: ``_OST(3, 0x84)``, offline, ``_EJ0``, re-read ``_STA``, unregister,
  ``_OST(3, 0|0x82|…)``.

The thread count is fixed (two), whatever the number of vCPUs.

Where this model knowingly does better than Linux 6.11-7.0 (each has a test):

* ``_STA`` after ``_EJ0`` with Present clear: Linux's ``arch_unregister_cpu``
  returns early and leaks ``cpuN`` ("Changing CPU present bit is not
  supported"); here the warning is printed and the CPU is unregistered anyway
  (the proposed 2026 fix).
* Eject of a processor without ``_EJ0``: Linux offlines the CPU first and only
  then fails with -ENODEV; here ``_OST(3, 0x80)`` (not supported) is sent and
  nothing is offlined.
"""

from __future__ import annotations

import errno
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cpuplug.acpi.aml.resources import Interrupt, parse_resources
from cpuplug.acpi.errors import AcpiError
from cpuplug.acpi.interp import Interpreter
from cpuplug.agent_protocol import EventName
from cpuplug.cpuhp_abi import (
    NOTIFY_POWER_BUTTON,
    STA_BIT_ENABLED,
    STA_BIT_FUNCTIONING,
    STA_BIT_PRESENT,
    STA_DEFAULT,
    OstEjectStatus,
    OstSource,
    OstStatus,
)
from cpuplug.guest.boot import FirmwareTables
from cpuplug.guest.cpu import CpuHotplugError, CpuManager
from cpuplug.guest.klog import KernelLog, Uevents
from cpuplug.hw import PhysicalAddressSpace

HID_PROCESSOR = "ACPI0007"
HID_GED = "ACPI0013"
HID_POWER_BUTTON = "PNP0C0C"


class MmioRegion:
    """SystemMemory operation regions → real guest-physical loads and stores."""

    def __init__(self, memory: PhysicalAddressSpace) -> None:
        self._memory = memory

    def read(self, addr: int, width_bits: int) -> int:
        return self._memory.load(addr, width_bits // 8)

    def write(self, addr: int, width_bits: int, value: int) -> None:
        self._memory.store(addr, width_bits // 8, value)


@dataclass
class AcpiDevice:
    """A namespace Device the scan found present (Linux's ``struct acpi_device``)."""

    path: str
    hid: str | None
    uid: int | str | None
    cpu: int | None = None  # logical CPU, for processors that map to one
    attached: bool = False  # a scan handler claimed it (processor: cpuN registered)
    instance: int = 0  # Linux's pnp.instance_no: the NN of "ACPI0007:NN"

    @property
    def name(self) -> str:
        """The device's name on the ACPI bus, as ``/sys/bus/acpi/devices`` shows it."""
        return f"{self.hid or 'device'}:{self.instance:02x}"

    @property
    def parent(self) -> str:
        return self.path.rsplit(".", 1)[0] if "." in self.path else "\\"


@dataclass(frozen=True)
class GedLine:
    gsi: int
    edge: bool
    method: str


def parse_interrupts(crs: bytes) -> list[tuple[int, bool]]:
    """(GSI, edge-triggered) of every Extended Interrupt descriptor in a ``_CRS``.

    Raises AmlError for a malformed template (``parse_resources``).
    """
    return [
        (gsi, d.edge)
        for d in parse_resources(crs)
        if isinstance(d, Interrupt)
        for gsi in d.interrupts
    ]


class AcpiBus:
    """The ACPI namespace of this guest and the drivers bound to it."""

    def __init__(
        self,
        memory: PhysicalAddressSpace,
        log: KernelLog,
        events: Uevents,
        cpus: CpuManager,
        power_off: Callable[[], None],
    ) -> None:
        self._memory = memory
        self.log = log
        self.events = events
        self.cpus = cpus
        self._power_off = power_off
        self.interp = Interpreter()
        self.interp.map_region("SystemMemory", MmioRegion(memory))
        self.interp.on_notify(self._notify)
        self.devices: dict[str, AcpiDevice] = {}
        self.on_device: Callable[[AcpiDevice], None] = lambda _dev: None
        self.processor_hotplug_enabled = True  # /sys/firmware/acpi/hotplug/processor/enabled
        self._instances: dict[str | None, int] = {}
        self._namespace_devices: list[tuple[str, str]] = []  # (path, kind), after load()
        self.ged_lines: list[GedLine] = []
        self._uids: dict[tuple[str, object], str] = {}
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._irq_lock = threading.Condition()
        self._irq_pending: set[int] = set()
        self._immediate_ost: list[tuple[str, int]] = []
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._irq_failed_once = False
        self.worker_busy = threading.Event()

    # ---------------------------------------------------------------- loading

    def load(self, tables: FirmwareTables) -> None:
        """Load the DSDT and SSDTs into the interpreter (ACPICA's table load)."""
        self.interp.load(tables.dsdt.build())
        for ssdt in tables.ssdts:
            self.interp.load(ssdt.build())
        self._namespace_devices = [
            (path, kind) for path, kind in self.interp.walk() if kind in ("Device", "Processor")
        ]

    # ---------------------------------------------------------------- helpers

    def _value(self, path: str) -> Any:
        return self.interp.evaluate(path)

    def _try_value(self, path: str) -> Any:
        if not self.interp.exists(path):
            return None
        try:
            return self.interp.evaluate(path)
        except AcpiError as exc:
            self.log.warn(f"ACPI: {path}: evaluation failed: {exc}")
            return None

    def sta(self, path: str) -> int:
        """``_STA`` of a device; 0x0F when it has none. Raises AcpiError when it fails.

        Enabled without Present is a firmware bug: Enabled and Functioning are
        dropped, as ``acpi_bus_get_status`` does.
        """
        if not self.interp.exists(path + "._STA"):
            return STA_DEFAULT
        value = self.interp.evaluate(path + "._STA")
        if not isinstance(value, int):
            raise AcpiError(f"{path}._STA returned {type(value).__name__}")
        if value & STA_BIT_ENABLED and not value & STA_BIT_PRESENT:
            value &= ~(STA_BIT_ENABLED | STA_BIT_FUNCTIONING)
        return value

    @staticmethod
    def _hid_text(value: Any) -> str | None:
        if isinstance(value, str):
            return value
        if isinstance(value, int):  # EisaId: compressed 3 letters + 4 hex digits
            v = int.from_bytes(value.to_bytes(4, "little"), "big")
            letters = "".join(chr(((v >> s) & 0x1F) + 0x40) for s in (26, 21, 16))
            return f"{letters}{v & 0xFFFF:04X}"
        return None

    def ost(self, path: str, source: int, status: int) -> None:
        """Evaluate ``_OST(source, status, <empty buffer>)`` if the device has one."""
        if not self.interp.exists(path + "._OST"):
            return
        try:
            self.interp.evaluate(path + "._OST", int(source), int(status), b"")
        except AcpiError as exc:
            self.log.warn(f"ACPI: {path}: _OST failed: {exc}")
            return
        dev = self.devices.get(path)
        cpu = dev.cpu if dev is not None and dev.cpu is not None else -1
        self.events.emit(EventName.OST_SENT, cpu=cpu, source=int(source), status=int(status))

    # ------------------------------------------------------------------- scan

    def scan(self, root: str = "\\") -> None:
        """``acpi_bus_scan``: enumerate present devices below ``root``; attach processors.

        Call with the CPU hotplug lock held.
        """
        prefix = "" if root == "\\" else root + "."
        for path, kind in self._namespace_devices:
            if not (root == "\\" or path.startswith(prefix)):
                continue
            known = self.devices.get(path)
            if known is not None and known.attached:
                continue  # acpi_bus_attach: a device with a bound handler is left alone
            try:
                sta = self.sta(path)
            except AcpiError as exc:
                self.log.warn(f"ACPI: {path}: _STA failed: {exc}")
                continue
            if not sta & (STA_BIT_PRESENT | STA_BIT_FUNCTIONING):
                continue
            dev = self.devices.get(path)
            if dev is None:
                dev = self._new_device(path, kind)
                if dev is None:
                    continue
            if dev.hid == HID_PROCESSOR and not dev.attached:
                self._processor_add(dev, sta)

    def _new_device(self, path: str, kind: str) -> AcpiDevice | None:
        if kind == "Processor":
            hid: str | None = HID_PROCESSOR
        else:
            hid = self._hid_text(self._try_value(path + "._HID"))
        uid_raw = self._try_value(path + "._UID")
        uid: int | str | None = uid_raw if isinstance(uid_raw, int | str) else None
        instance = self._instances.get(hid, 0)
        self._instances[hid] = instance + 1
        dev = AcpiDevice(path, hid, uid, instance=instance)
        if hid == HID_PROCESSOR:
            key = (HID_PROCESSOR, uid)
            if key in self._uids and self._uids[key] != path:
                self.log.err(f"ACPI: {path}: Failed to get unique processor _UID ({uid})")
                return None
            self._uids[key] = path
            dev.cpu = self._map_cpu(uid)
        self.devices[path] = dev
        self.on_device(dev)
        return dev

    def _map_cpu(self, uid: int | str | None) -> int | None:
        """``_UID`` → the GICC with that uid → its MPIDR → the logical CPU with that MPIDR."""
        if isinstance(uid, str):
            try:
                uid = int(uid, 0)
            except ValueError:
                return None
        if uid is None:
            return None
        for slot in self.cpus.slots():
            if slot.uid == uid:
                return self.cpus.logical_of_mpidr(slot.mpidr)
        return None

    def _processor_add(self, dev: AcpiDevice, sta: int) -> None:
        """``acpi_processor_add``: -ENODEV unless Enabled; else register the CPU (once)."""
        if not sta & STA_BIT_ENABLED:
            return
        if dev.cpu is None:
            self.log.err(f"ACPI: {dev.path}: Unable to map CPU to valid ID")
            raise CpuHotplugError(errno.ENODEV, f"{dev.path} maps to no possible CPU")
        self.cpus.register(dev.cpu, dev.path)
        dev.attached = True

    # ------------------------------------------------------------- GED driver

    def probe_ged(self) -> list[GedLine]:
        """Bind ``acpi-ged`` to every ACPI0013 device; returns the lines it handles."""
        lines: list[GedLine] = []
        for path, dev in list(self.devices.items()):
            if dev.hid != HID_GED:
                continue
            crs = self._try_value(path + "._CRS")
            try:
                interrupts = parse_interrupts(crs) if isinstance(crs, bytes) else None
            except AcpiError as exc:
                self.log.err(f"ACPI: {path}: bad _CRS: {exc}")
                interrupts = None
            if interrupts is None:
                self.log.err(f"ACPI: {path}: no usable _CRS; GED not bound")
                continue
            for gsi, edge in interrupts:
                method = None
                if gsi <= 255:
                    candidate = f"{path}._{'E' if edge else 'L'}{gsi:02X}"
                    if self.interp.exists(candidate):
                        method = candidate
                if method is None and self.interp.exists(path + "._EVT"):
                    method = path + "._EVT"
                if method is None:
                    self.log.err(f"acpi-ged {path}: cannot locate _EVT method")
                    continue
                line = GedLine(gsi, edge, method)
                self.ged_lines.append(line)
                self.cpus.irq_handlers[gsi] = self._ged_interrupt
                lines.append(line)
        return lines

    def _ged_interrupt(self, intid: int) -> None:
        """Hard-IRQ part, on the vCPU that took the interrupt: wake the IRQ thread."""
        with self._irq_lock:
            self._irq_pending.add(intid)
            self._irq_lock.notify_all()

    def _irq_thread(self) -> None:
        while True:
            with self._irq_lock:
                self._irq_lock.wait_for(lambda: self._irq_pending or self._stopping)
                if self._stopping:
                    return
                pending = sorted(self._irq_pending)
                self._irq_pending.clear()
            for gsi in pending:
                for line in self.ged_lines:
                    if line.gsi == gsi:
                        try:
                            self._run_ged_method(line)
                        except Exception as exc:  # as in the worker: log, keep serving
                            self.log.err(f"BUG: irq/{gsi}-ACPI:Ged: {exc!r}")

    def _run_ged_method(self, line: GedLine) -> None:
        try:
            if line.method.endswith("._EVT"):
                self.interp.evaluate(line.method, line.gsi)
            else:
                self.interp.evaluate(line.method)
        except AcpiError as exc:
            if not self._irq_failed_once:
                self._irq_failed_once = True
                self.log.err(f"ACPI: {line.method}: IRQ method execution failed: {exc}")
        with self._irq_lock:
            immediate, self._immediate_ost = self._immediate_ost, []
        for path, value in immediate:
            self.ost(path, value, OstStatus.NON_SPECIFIC_FAILURE)

    # ---------------------------------------------------------------- Notify

    def _notify(self, path: str, value: int) -> None:
        """``acpi_bus_notify``: runs right after the AML method that issued the Notify."""
        dev = self.devices.get(path)
        if value in (OstSource.BUS_CHECK, OstSource.DEVICE_CHECK, OstSource.EJECT_REQUEST):
            if dev is None:
                with self._irq_lock:
                    self._immediate_ost.append((path, value))
                if threading.current_thread() not in self._threads:
                    self._flush_immediate()
                return
            self.queue_work(lambda: self._hotplug_event(dev, value))
        elif value == NOTIFY_POWER_BUTTON and dev is not None and dev.hid == HID_POWER_BUTTON:
            self.queue_work(self._power_button)
        else:
            self.log.printk(f"ACPI: {path}: Unsupported event type 0x{value:x}", 7)

    def _flush_immediate(self) -> None:
        with self._irq_lock:
            immediate, self._immediate_ost = self._immediate_ost, []
        for path, value in immediate:
            self.ost(path, value, OstStatus.NON_SPECIFIC_FAILURE)

    def queue_work(self, fn: Callable[[], None]) -> None:
        """Append to ``kacpi_hotplug`` (ordered: one item at a time, FIFO)."""
        self._work.put(fn)

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            self.worker_busy.set()
            try:
                item()
            except CpuHotplugError as exc:
                self.log.warn(f"ACPI: hotplug work failed: {exc}")
            except Exception as exc:
                # A bug here must not take hotplug down for good (Linux would oops
                # this kworker); log it like an oops and serve the next event.
                self.log.err(f"BUG: kacpi_hotplug: {exc!r}")
            finally:
                if self._work.empty():
                    self.worker_busy.clear()

    def _hotplug_event(self, dev: AcpiDevice, value: int) -> None:
        if value in (OstSource.EJECT_REQUEST, OstSource.OSPM_EJECT):
            self._eject(dev, value)
            return
        try:
            with self.cpus.hotplug_locked():
                self._device_check(dev, bus_check=value == OstSource.BUS_CHECK)
            status = OstStatus.SUCCESS
        except (AcpiError, CpuHotplugError) as exc:
            self.log.warn(f"ACPI: {dev.path}: device check failed: {exc}")
            status = OstStatus.NON_SPECIFIC_FAILURE
        self.ost(dev.path, value, status)

    def _device_check(self, dev: AcpiDevice, *, bus_check: bool) -> None:
        """``acpi_scan_device_check`` / ``acpi_scan_bus_check``."""
        sta = self.sta(dev.path)
        if dev.attached and not sta & STA_BIT_ENABLED:
            # acpi_scan_check_subtree: a surprise "removal" by Device Check only drops
            # the binding; the processor driver has no .detach, so cpuN stays.
            dev.attached = False
            self.log.warn(f"ACPI: {dev.path}: no longer enabled; use an eject request to remove")
            return
        if not sta & (STA_BIT_PRESENT | STA_BIT_FUNCTIONING):
            return
        if dev.attached and not bus_check:
            self.log.printk(f"ACPI: {dev.path}: Already enumerated", 7)
            return
        self.scan(dev.path if bus_check else dev.parent)

    def _eject(self, dev: AcpiDevice, source: int = OstSource.EJECT_REQUEST) -> None:
        """``acpi_scan_hot_remove`` for a processor, final ``_OST`` included.

        ``source`` is 0x03 for a Notify, 0x103 for an eject written to sysfs;
        the in-progress ``_OST`` says 0x03 in both cases, as Linux does.
        """
        path = dev.path
        if dev.hid == HID_PROCESSOR and not self.processor_hotplug_enabled:
            self.log.info(f"ACPI: {path}: Eject disabled")
            self.ost(path, source, OstEjectStatus.NOT_SUPPORTED)
            return
        if not self.interp.exists(path + "._EJ0"):
            self.ost(path, source, OstEjectStatus.NOT_SUPPORTED)
            return
        self.ost(path, OstSource.EJECT_REQUEST, OstEjectStatus.IN_PROGRESS)
        status: int = OstStatus.SUCCESS
        try:
            with self.cpus.hotplug_locked():
                status = self._eject_locked(dev)
        except CpuHotplugError as exc:
            self.log.warn(f"ACPI: {path}: eject failed: {exc}")
            status = OstStatus.NON_SPECIFIC_FAILURE
        self.ost(path, source, status)

    def request_eject(self, dev: AcpiDevice) -> None:
        """``eject_store``: writing 1 to ``/sys/bus/acpi/devices/<dev>/eject`` (source 0x103)."""
        self.queue_work(lambda: self._hotplug_event(dev, OstSource.OSPM_EJECT))

    def _eject_locked(self, dev: AcpiDevice) -> int:
        path = dev.path
        if dev.cpu is not None and self.cpus.is_online(dev.cpu):
            try:
                self.cpus.cpu_down_locked(dev.cpu)
            except CpuHotplugError as exc:
                self.log.warn(f"ACPI: {path}: Offline failed.")
                if exc.errno == errno.EBUSY:
                    return OstEjectStatus.DEVICE_BUSY
                return OstStatus.NON_SPECIFIC_FAILURE
        try:
            self.interp.evaluate(path + "._EJ0", 1)
        except AcpiError as exc:
            self.log.warn(f"ACPI: {path}: _EJ0 failed: {exc}")
            return OstStatus.NON_SPECIFIC_FAILURE
        try:
            sta = self.sta(path)
        except AcpiError as exc:
            self.log.warn(f"ACPI: {path}: Status check after eject failed ({exc})")
            return OstStatus.SUCCESS
        if sta & STA_BIT_ENABLED:
            self.log.warn(f"ACPI: {path}: Eject incomplete - status 0x{sta:x}")
            if dev.cpu is not None:
                self.events.emit(EventName.EJECT_INCOMPLETE, cpu=dev.cpu)
            return OstStatus.SUCCESS
        # acpi_processor_post_eject → arch_unregister_cpu
        if not sta & STA_BIT_PRESENT:
            self.log.warn("Changing CPU present bit is not supported")
        dev.attached = False
        if dev.cpu is not None:
            self.cpus.unregister(dev.cpu)
        return OstStatus.SUCCESS

    def _power_button(self) -> None:
        self.log.info("ACPI: button: power button pressed; powering off")
        self._power_off()

    # ------------------------------------------------------------ lifecycle

    def start_threads(self) -> None:
        """Start ``irq/N-ACPI:Ged`` and ``kacpi_hotplug`` (two threads, whatever the CPUs)."""
        gsis = ",".join(str(line.gsi) for line in self.ged_lines) or "none"
        irq = threading.Thread(target=self._irq_thread, name=f"irq/{gsis}-ACPI:Ged", daemon=True)
        worker = threading.Thread(target=self._worker, name="kacpi_hotplug", daemon=True)
        self._threads = [irq, worker]
        irq.start()
        worker.start()

    def stop_threads(self, timeout: float = 5.0) -> None:
        with self._irq_lock:
            self._stopping = True
            self._irq_lock.notify_all()
        self._work.put(None)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the worker queue is drained (for tests and benchmarks)."""
        done = threading.Event()
        self.queue_work(done.set)
        return done.wait(timeout)

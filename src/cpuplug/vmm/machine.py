"""The arm64 ``virt``-like machine (docs/contract.md §1): devices wired together, boot, hotplug.

:class:`VirtMachine` is one whole machine in the current process — what a QEMU
process is, minus the process. ``cpuplug vmm`` wraps it with a QMP server and an
agent socket; tests of other parts (the guest kernel, the runtime) may boot it
in-process directly.

What it wires (docs/contract.md §1 memory map, constants from :mod:`cpuplug.acpi.virt`):
guest RAM with this machine's ACPI tables (byte-identical to
``cpuplug acpi tables``), an MMIO bus with the GICv3 distributor and one
redistributor per *possible* vCPU, the PL011 console, the GED selector, the CPU
hotplug block, PSCI over HVC, and the agent channel. The guest gets exactly the
:class:`cpuplug.hw.Machine` view (RSDP address, memory, agent channel) and the
per-vCPU :class:`cpuplug.hw.Cpu`; it never sees a VMM object.

Hotplug, in the order that keeps PSCI honest (docs/contract.md §5: "allow CPU_ON no later
than the moment the GED event is raised"):

* ``device_add``: create the vCPU thread (powered off, waiting) → mark the
  cpuhp slot enabled + insert pending → raise GED bit 0x8 (pulse GSI 41).
* ``device_del``: mark remove pending → raise GED 0x8 → return at once.
* the guest's eject write (cpuhp ``on_eject``): end the thread, emit
  ``DEVICE_DELETED {device, path}`` naming the device itself (QEMU 7.2 named
  only a child object), and free the slot for a later plug (QEMU 7.2 aborted
  on re-plugging a removed slot).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from cpuplug.acpi import virt
from cpuplug.acpi.virt import MachineConfig, MachineTables, build_machine_tables
from cpuplug.cpuhp_abi import GED_EVT_CPU_HOTPLUG, GED_EVT_PWR_DOWN
from cpuplug.errors import CpuplugError, UsageError
from cpuplug.hw import AgentChannel, Kernel, Machine, PhysicalAddressSpace
from cpuplug.vmm.bus import AddressSpace, GuestRam, MmioBus, Pl011Uart
from cpuplug.vmm.cpuhp import CpuHotplugBlock, CpuHotplugError, OstInfo
from cpuplug.vmm.ged import GenericEventDevice
from cpuplug.vmm.gic import Gic
from cpuplug.vmm.psci import Psci
from cpuplug.vmm.vcpu import (
    IDLE_KERNEL,
    PowerState,
    VcpuSet,
    VcpuState,
    check_stop,
)
from cpuplug.vmm.vsock import AgentChannelDevice

log = logging.getLogger(__name__)

CPU_MODELS = ("max", "host", "cortex-a57", "cortex-a72", "cortex-a76", "neoverse-n1")
"""CPU models accepted by ``--cpu-model``; the QMP driver is ``<model>-arm-cpu``."""

DEFAULT_KERNEL = "cpuplug.guest.kernel:start"
"""The guest kernel ``cpuplug vmm`` boots when ``--kernel`` is absent."""

_PROPS = ("socket-id", "cluster-id", "core-id", "thread-id")
_DEVICE_ID = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
#: How long device_add waits for a slot whose eject is finishing in the cpuhp block.
EJECT_SETTLE_TIMEOUT = 2.0

KernelEntry = Callable[[Machine], Kernel]
EventListener = Callable[["MachineEvent"], None]


class MachineError(CpuplugError):
    """A management request (device_add, device_del, ...) the machine refuses."""


class KernelLoadError(UsageError):
    """``--kernel MODULE:FUNCTION`` does not name a loadable kernel entry point."""


@dataclass(frozen=True)
class MachineEvent:
    """An event for the management side (QMP): name, QMP ``data``, wall-clock time."""

    name: str
    data: dict[str, object]
    timestamp: float = field(default_factory=time.time)


def resolve_kernel(spec: str | KernelEntry | None) -> KernelEntry | None:
    """Turn ``MODULE:FUNCTION`` / ``"none"`` / a callable into a kernel entry point.

    ``None`` and ``"none"`` mean no kernel: vCPUs that run sit in WFI. The
    import is dynamic on purpose — the VMM must not import the guest (docs/contract.md §0),
    the same way QEMU loads a kernel image it knows nothing about.
    """
    if spec is None or spec == "none":
        return None
    if callable(spec):
        return spec
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise KernelLoadError(f"--kernel must be MODULE:FUNCTION or none, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise KernelLoadError(f"cannot import kernel module {module_name!r}: {exc}") from exc
    entry = getattr(module, function_name, None)
    if not callable(entry):
        raise KernelLoadError(f"kernel module {module_name!r} has no function {function_name!r}")
    checked: KernelEntry = entry
    return checked


class _GuestMemory:
    """The guest's view of physical memory: the bus, plus the vCPU stop check.

    A vCPU told to stop must stop even if its guest code only touches memory, so
    every access from a vCPU thread first checks the stop flag (one attribute
    read on a thread-local; non-vCPU threads pass straight through).
    """

    def __init__(self, bus: PhysicalAddressSpace) -> None:
        self._bus = bus

    def load(self, addr: int, size: int) -> int:
        check_stop()
        return self._bus.load(addr, size)

    def store(self, addr: int, size: int, value: int) -> None:
        check_stop()
        self._bus.store(addr, size, value)

    def read_bytes(self, addr: int, length: int) -> bytes:
        check_stop()
        return self._bus.read_bytes(addr, length)

    def write_bytes(self, addr: int, data: bytes) -> None:
        check_stop()
        self._bus.write_bytes(addr, data)


class _GicForVcpus:
    """Adapts the GIC to what a vCPU needs (SGI targets come as MPIDRs from the guest)."""

    def __init__(self, gic: Gic, vcpus: Callable[[], VcpuSet]) -> None:
        self._gic = gic
        self._vcpus = vcpus

    def wait(self, cpu_index: int, timeout: float | None, stop: Callable[[], bool]) -> int | None:
        return self._gic.wait_for_interrupt(cpu_index, timeout, stop)

    def kick(self, cpu_index: int) -> None:
        self._gic.kick(cpu_index)

    def send_sgi(self, source_index: int, target_mpidr: int, intid: int) -> None:
        target = self._vcpus().index_of_mpidr(target_mpidr)
        if target is None or not 0 <= intid < 16:
            return  # an SGI to no one is dropped, as the hardware does
        self._gic.send_sgi(source_index, target, intid)


class VirtMachine:
    """One arm64 virt machine: construct, :meth:`start`, manage, :meth:`shutdown`.

    Implements :class:`cpuplug.hw.Machine` for the kernel it boots.
    """

    def __init__(
        self,
        config: MachineConfig,
        *,
        kernel: str | KernelEntry | None = None,
        agent_path: str | os.PathLike[str] | None = None,
        console_path: str | os.PathLike[str] | None = None,
        cpu_model: str = "max",
        tables: MachineTables | None = None,
    ) -> None:
        if cpu_model not in CPU_MODELS:
            raise UsageError(f"unknown CPU model {cpu_model!r} (known: {', '.join(CPU_MODELS)})")
        self.config = config
        self.cpu_type = f"{cpu_model}-arm-cpu"
        self._kernel_entry = resolve_kernel(kernel)
        self.tables = tables if tables is not None else build_machine_tables(config)
        self.run_state = "prelaunch"
        self.shutdown_requested = threading.Event()
        self.shutdown_reason: str | None = None
        self._listeners: list[EventListener] = []
        self._listeners_lock = threading.Lock()
        self._plug_lock = threading.RLock()
        self._anon_devices = 0
        self._started = False
        self._stopped = False

        possible = config.maxcpus
        self.gic = Gic([virt.mpidr(i) for i in range(possible)])
        self.vcpus = VcpuSet(possible, _GicForVcpus(self.gic, lambda: self.vcpus))
        self.psci = Psci(
            self.vcpus,
            system_off=self._guest_system_off,
            system_reset=self._guest_system_reset,
        )
        self.vcpus.hvc_handler = self.psci.call
        self.ged = GenericEventDevice(lambda: self.gic.pulse_spi(virt.GED_GSI))
        self.cpuhp = CpuHotplugBlock(
            [virt.mpidr(i) for i in range(possible)],
            on_eject=self._on_eject,
            on_ost=self._on_ost,
        )
        self._console_file: BinaryIO | None = None
        self._console_lock = threading.Lock()
        if console_path is not None:
            try:
                self._console_file = open(console_path, "ab", buffering=0)  # noqa: SIM115
            except OSError as exc:
                raise UsageError(f"cannot open console file {console_path}: {exc}") from exc
        self.uart = Pl011Uart(self._console_sink if self._console_file is not None else None)
        try:
            self.ram = GuestRam(virt.RAM_BASE, config.ram_size)
        except MemoryError:
            if self._console_file is not None:
                self._console_file.close()
            raise UsageError(f"cannot allocate {config.ram_size >> 20} MiB of guest RAM") from None
        self.bus = MmioBus()
        self.bus.register(virt.GICD_BASE, virt.GICD_SIZE, self.gic.distributor, "gicd")
        for base, region in self.gic.redistributor_regions():
            self.bus.register(base, region.SIZE, region, "gicr")
        self.bus.register(virt.UART_BASE, virt.UART_SIZE, self.uart, "uart")
        self.bus.register(virt.GED_BASE, virt.GED_SIZE, self.ged, "ged")
        self.bus.register(virt.CPUHP_BASE, virt.CPUHP_SIZE, self.cpuhp, "cpuhp")
        self.address_space = AddressSpace(self.ram, self.bus)
        self._memory = _GuestMemory(self.address_space)
        self.agent = AgentChannelDevice(agent_path)

    # -- cpuplug.hw.Machine -------------------------------------------------------------

    @property
    def rsdp_address(self) -> int:
        return self.tables.rsdp_address

    @property
    def memory(self) -> PhysicalAddressSpace:
        return self._memory

    @property
    def agent_channel(self) -> AgentChannel:
        return self.agent

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Load tables into RAM, listen for the agent, load the kernel, boot vCPU 0."""
        if self._started:
            raise MachineError("machine already started")
        self._started = True
        self.ram.write_bytes(self.tables.base_address, self.tables.image)
        self.agent.start()
        try:
            kernel = IDLE_KERNEL if self._kernel_entry is None else self._load_kernel()
            if kernel is None or not hasattr(kernel, "boot_cpu_main"):
                raise KernelLoadError("the kernel entry point did not return a Kernel")
            self.vcpus.kernel = kernel
            cold = (
                self.config.possible
                if self.config.mode == "online-offline"
                else self.config.boot_cpus
            )
            for index in cold:
                self.vcpus.plug(index, None, f"/machine/unattached/device[{index}]")
                self.cpuhp.plug(index, None, hotplugged=False)
            self.vcpus.boot(0)
        except BaseException:
            self.shutdown()
            raise
        self.run_state = "running"

    def __enter__(self) -> VirtMachine:
        """``with VirtMachine(config, kernel=...) as machine:`` starts it ..."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """... and always shuts it down (threads ended, sockets removed)."""
        self.shutdown()

    def _load_kernel(self) -> Kernel:
        """Call the kernel entry point once, before any vCPU runs (``cpuplug.hw``)."""
        assert self._kernel_entry is not None
        try:
            return self._kernel_entry(self)
        except CpuplugError:
            raise
        except Exception as exc:  # guest code failing at load is a boot failure, not a crash
            log.debug("kernel entry point failed", exc_info=True)
            raise MachineError(
                f"kernel entry point failed: {exc.__class__.__name__}: {exc}"
            ) from exc

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every vCPU thread (bounded wait), close the agent channel and console."""
        if self._stopped:
            return
        self._stopped = True
        if self.run_state == "running":
            self.run_state = "shutdown"
        self.vcpus.shutdown(timeout)
        self.agent.close()
        if self._console_file is not None:
            self._console_file.close()

    def _console_sink(self, data: bytes) -> None:
        """Copy a console byte to the ``--console`` file.

        A file that stops taking writes (``/dev/full``, a full disk, a revoked
        mount) is logged once, in one line, and dropped: the guest console goes on
        in memory (:meth:`console_text`) rather than logging a traceback per byte.
        """
        console = self._console_file
        if console is None or console.closed:
            return
        try:
            console.write(data)
        except OSError as exc:
            with self._console_lock:
                if self._console_file is not console:
                    return  # another vCPU thread already gave up on it
                self._console_file = None
            log.warning(
                "console file %s: write failed (%s); the console is kept in memory only",
                console.name,
                exc.strerror or exc,
            )
            with contextlib.suppress(OSError):
                console.close()

    def console_text(self) -> str:
        """What the guest wrote to the console (the UART keeps the last 64 KiB)."""
        return self.uart.output().decode("utf-8", errors="replace")

    # -- events -------------------------------------------------------------------------

    def add_event_listener(self, listener: EventListener) -> None:
        """Call ``listener(event)`` for every event, from whatever thread raised it.

        Listeners must not block: they run on vCPU threads (eject, _OST) too.
        """
        with self._listeners_lock:
            self._listeners.append(listener)

    def remove_event_listener(self, listener: EventListener) -> None:
        with self._listeners_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def event_queue(self) -> queue.Queue[MachineEvent]:
        """A new queue that receives every event from now on (for in-process users)."""
        events: queue.Queue[MachineEvent] = queue.Queue()
        self.add_event_listener(events.put)
        return events

    def _emit(self, name: str, data: dict[str, object]) -> None:
        event = MachineEvent(name, data)
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed for %s", name)

    # -- device hooks (called from guest vCPU threads) ----------------------------------

    def _on_ost(self, info: OstInfo) -> None:
        self._emit("ACPI_DEVICE_OST", {"info": info.to_qmp()})

    def _on_eject(self, index: int) -> None:
        """The guest wrote the eject bit for a plugged, non-boot vCPU: remove it."""

        def ended(snapshot: VcpuState) -> None:
            data: dict[str, object] = {}
            if snapshot.device_id is not None:
                data["device"] = snapshot.device_id
            data["path"] = snapshot.qom_path
            self._emit("DEVICE_DELETED", data)

        with self._plug_lock:
            self.vcpus.unplug(index, ended)

    def _guest_system_off(self) -> None:
        self._request_shutdown("guest-shutdown")

    def _guest_system_reset(self) -> None:
        # A reboot would need the guest kernel re-entered from scratch; like QEMU
        # with -no-reboot, a guest reset ends the machine.
        self._request_shutdown("guest-reset")

    def _request_shutdown(self, reason: str) -> None:
        if self.shutdown_requested.is_set():
            return
        self.shutdown_reason = reason
        self.run_state = "shutdown"
        self.shutdown_requested.set()
        self.vcpus.stop_all()
        self._emit("SHUTDOWN", {"guest": True, "reason": reason})

    # -- management (QMP) ---------------------------------------------------------------

    def device_add(self, driver: str, device_id: str | None, props: Mapping[str, object]) -> None:
        """Hot-plug the vCPU named by ``props`` (QMP ``device_add``)."""
        index = self._check_device_add(driver, device_id, props)
        with self._plug_lock:
            if device_id is not None and self._device_id_taken(device_id):
                raise MachineError(f"Duplicate device ID '{device_id}'")
            if self.vcpus.is_plugged(index):
                raise MachineError(f"CPU core-id {index} is already plugged")
            self._wait_eject_settled(index)
            if device_id is not None:
                qom_path = f"/machine/peripheral/{device_id}"
            else:
                qom_path = f"/machine/peripheral-anon/device[{self._anon_devices}]"
                self._anon_devices += 1
            self.vcpus.plug(index, device_id, qom_path)  # thread exists, powered off
            try:
                self.cpuhp.plug(index, device_id, hotplugged=True)
            except CpuHotplugError as exc:
                self.vcpus.unplug(index)
                raise MachineError(f"CPU core-id {index}: {exc}") from exc
        self.ged.raise_event(GED_EVT_CPU_HOTPLUG)

    def _check_device_add(
        self, driver: str, device_id: str | None, props: Mapping[str, object]
    ) -> int:
        if driver != self.cpu_type:
            if driver.endswith("-arm-cpu"):
                raise MachineError(f"Invalid CPU type, expected cpu type: '{self.cpu_type}'")
            raise MachineError(f"'{driver}' is not a valid device model name")
        if device_id is not None and not _DEVICE_ID.fullmatch(device_id):
            raise MachineError("Parameter 'id' expects an identifier")
        for name, value in props.items():
            if name not in _PROPS:
                raise MachineError(f"Property '{driver}.{name}' not found")
            if isinstance(value, bool) or not isinstance(value, int):
                raise MachineError(f"Invalid parameter type for '{name}', expected: integer")
        if "core-id" not in props:
            raise MachineError("core-id property is not set")
        for name in ("socket-id", "cluster-id", "thread-id"):
            value = props.get(name, 0)
            if value != 0:
                raise MachineError(f"Invalid CPU {name}: {value} (must be 0)")
        core = props["core-id"]
        assert isinstance(core, int)
        if not 0 <= core < self.config.maxcpus:
            raise MachineError(
                f"Invalid CPU core-id: {core} (must be in range 0..{self.config.maxcpus - 1})"
            )
        return core

    def _device_id_taken(self, device_id: str) -> bool:
        return self.vcpus.find_device(device_id) is not None

    def _wait_eject_settled(self, index: int) -> None:
        """The slot's thread is gone; wait the few microseconds until cpuhp clears enabled.

        The cpuhp block clears *enabled* after our ``on_eject`` returned (and the
        DEVICE_DELETED event went out), so a management client that re-plugs on
        that event can arrive in between. The block offers no notification for
        this instant, so poll it briefly.
        """
        deadline = time.monotonic() + EJECT_SETTLE_TIMEOUT
        while self.cpuhp.is_enabled(index):
            if time.monotonic() >= deadline:
                raise MachineError(f"CPU core-id {index} is still being ejected")
            time.sleep(0.0005)

    def device_del(self, device_id: str) -> None:
        """Ask the guest to release a vCPU (QMP ``device_del``); returns at once.

        ``device_id`` is the QMP id or the QOM path. Completion is the
        ``DEVICE_DELETED`` event, once the guest has offlined and ejected it.
        """
        with self._plug_lock:
            state = self._find(device_id)
            if state is None:
                raise MachineError(f"Device '{device_id}' not found")
            if state.index == 0:
                raise MachineError("Boot CPU is unpluggable")
            if self.config.mode == "online-offline":
                raise MachineError(
                    "vCPU hot-unplug is not available in online-offline mode"
                    " (the guest offlines vCPUs itself)"
                )
            try:
                self.cpuhp.request_unplug(state.index)
            except CpuHotplugError as exc:
                raise MachineError(str(exc)) from exc
        self.ged.raise_event(GED_EVT_CPU_HOTPLUG)

    def _find(self, device_id: str) -> VcpuState | None:
        state = self.vcpus.find_device(device_id)
        if state is not None:
            return state
        for plugged in self.vcpus.plugged():
            if plugged.qom_path == device_id:
                return plugged
        return None

    def system_powerdown(self) -> None:
        """Press the power button: GED bit 0x2 (the guest may ignore it)."""
        self.ged.raise_event(GED_EVT_PWR_DOWN)
        self._emit("POWERDOWN", {})

    def query_hotpluggable_cpus(self) -> list[dict[str, object]]:
        """One entry per possible vCPU, highest index first (as QEMU lists them)."""
        result: list[dict[str, object]] = []
        for state in reversed(self.vcpus.states):
            entry: dict[str, object] = {
                "type": self.cpu_type,
                "vcpus-count": 1,
                "props": state.hotpluggable_props,
            }
            path = state.qom_path
            if state.plugged and path is not None:
                entry["qom-path"] = path
            result.append(entry)
        return result

    def query_cpus_fast(self) -> list[dict[str, object]]:
        """Plugged vCPUs with their real host thread ids, in index order."""
        return [
            {
                "cpu-index": state.index,
                "qom-path": state.qom_path,
                "thread-id": state.thread_id,
                "props": state.hotpluggable_props,
                "target": "aarch64",
            }
            for state in self.vcpus.plugged()
        ]

    def query_acpi_ospm_status(self) -> list[dict[str, object]]:
        """The last ``_OST`` report of every possible vCPU slot."""
        return [info.to_qmp() for info in self.cpuhp.ospm_status()]

    def power_state(self, index: int) -> PowerState:
        """PSCI power state of vCPU ``index`` (host-side inspection)."""
        return self.vcpus.power_state(index)

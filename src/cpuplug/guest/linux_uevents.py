"""CPU hotplug events of a real Linux guest, from the kernel's uevents.

The model kernel emits the agent protocol's events itself; Linux announces the same
moments as kobject uevents on a netlink socket (``NETLINK_KOBJECT_UEVENT``, multicast
group 1, what ``udevadm monitor --kernel`` shows):

=====================================  ===================
uevent                                  agent event
=====================================  ===================
``add@/devices/system/cpu/cpuN``        ``CpuRegistered``
``online@/devices/system/cpu/cpuN``     ``CpuOnline``
``offline@/devices/system/cpu/cpuN``    ``CpuOffline``
``remove@/devices/system/cpu/cpuN``     ``CpuUnregistered``
=====================================  ===================

``OstSent`` and ``EjectIncomplete`` have no uevent (Linux does not announce its
``_OST`` calls to user space); the host sees ``_OST`` itself as QMP's
``ACPI_DEVICE_OST``. Only datagrams from the kernel (netlink port id 0) are believed:
any root process may send to the group.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CpuEvent", "UeventMonitor", "cpu_event", "parse_uevent"]

NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1
RCVBUF = 1 << 20
_CPU_DEVPATH = re.compile(r"/devices/system/cpu/cpu([0-9]+)")
_ACTIONS = {
    "add": "CpuRegistered",
    "online": "CpuOnline",
    "offline": "CpuOffline",
    "remove": "CpuUnregistered",
}


@dataclass(frozen=True)
class CpuEvent:
    """An agent event (``cpuplug.guest.agent_os.OSEvent``); ``timestamp`` is the guest's
    ``CLOCK_MONOTONIC`` seconds at receipt."""

    name: str
    data: dict[str, int]
    timestamp: float


def parse_uevent(datagram: bytes) -> dict[str, str] | None:
    """A kernel uevent's fields (``ACTION``, ``DEVPATH``, ``SUBSYSTEM`` ...), or None.

    The datagram is ``ACTION@DEVPATH`` then ``KEY=VALUE`` strings, NUL-separated.
    """
    parts = datagram.split(b"\0")
    if not parts or b"@" not in parts[0]:
        return None  # libudev's re-broadcasts start with "libudev"; not the kernel's
    fields: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition(b"=")
        if sep:
            fields[key.decode("ascii", "replace")] = value.decode("utf-8", "replace")
    return fields


def cpu_event(fields: dict[str, str], timestamp: float) -> CpuEvent | None:
    """The agent event a uevent stands for, or None if it is not about a CPU."""
    if fields.get("SUBSYSTEM") != "cpu":
        return None
    m = _CPU_DEVPATH.fullmatch(fields.get("DEVPATH", ""))
    name = _ACTIONS.get(fields.get("ACTION", ""))
    if m is None or name is None:
        return None
    return CpuEvent(name, {"cpu": int(m.group(1))}, timestamp)


def kernel_socket() -> socket.socket:
    """A socket bound to the kernel's uevent group (root, or CAP_NET_ADMIN for the buffer)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE: a burst must fit
    sock.bind((0, KERNEL_GROUP))
    return sock


class UeventMonitor:
    """Calls subscribers with :class:`CpuEvent` s, from one thread reading ``sock``.

    ``sock`` defaults to :func:`kernel_socket`, whose datagrams must come from the
    kernel (netlink port 0); a test passes a datagram socket of its own to write to.
    """

    def __init__(
        self,
        sock: socket.socket | None = None,
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._sock = sock
        self._check_sender = sock is None
        self._log = log
        self._lock = threading.Lock()
        self._subs: list[Callable[[CpuEvent], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, callback: Callable[[CpuEvent], None]) -> Callable[[], None]:
        """Add ``callback``. Without a uevent socket (netlink refused) the agent still
        serves: the failure is logged and no event ever comes."""
        with self._lock:
            self._subs.append(callback)
            if self._thread is None:
                if self._sock is None:
                    try:
                        self._sock = kernel_socket()
                    except OSError as exc:
                        if self._log is not None:
                            self._log(f"agent: no CPU events: uevent socket: {exc}")
                        return lambda: None
                self._sock.settimeout(0.25)  # to see the stop flag
                self._thread = threading.Thread(target=self._run, name="agent-uevents", daemon=True)
                self._thread.start()

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subs:
                    self._subs.remove(callback)

        return unsubscribe

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                datagram, sender = self._sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError as exc:  # ENOBUFS: a burst overflowed the buffer; go on
                if self._stop.is_set():
                    return
                if self._log is not None:
                    self._log(f"agent: uevents: {exc}")
                continue
            if self._check_sender and not (isinstance(sender, tuple) and sender[0] == 0):
                continue
            fields = parse_uevent(datagram)
            event = None if fields is None else cpu_event(fields, time.monotonic())
            if event is None:
                continue
            with self._lock:
                subs = list(self._subs)
            for cb in subs:
                cb(event)

"""The kernel log: printk into a ring buffer (dmesg) and out of the console UART.

The console is found the way arm64 Linux finds it without a command line: the
SPCR table names the UART's MMIO base, and every byte of a message is a store
to the PL011 data register (UARTDR, offset 0), which is how the host sees the
guest's log. Lines carry Linux's ``[    s.uuuuuu]`` timestamps since boot.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cpuplug.hw import PhysicalAddressSpace

_T = TypeVar("_T")

UARTDR = 0x0
"""PL011 data register offset."""

RING_LINES = 4096
"""How many lines dmesg keeps (Linux's ring is sized in bytes; lines are simpler)."""

# printk levels, as Linux's KERN_* (only used for filtering in dmesg).
EMERG, ALERT, CRIT, ERR, WARNING, NOTICE, INFO, DEBUG = range(8)


@dataclass(frozen=True)
class LogLine:
    seconds: float
    level: int
    text: str

    def render(self) -> str:
        return f"[{self.seconds:12.6f}] {self.text}"


class KernelLog:
    """printk. Thread-safe: lines from concurrent CPUs never interleave."""

    def __init__(self, memory: PhysicalAddressSpace | None = None) -> None:
        self._memory = memory
        self._uart: int | None = None
        self._lock = threading.Lock()
        self._ring: deque[LogLine] = deque(maxlen=RING_LINES)
        self._t0 = time.monotonic()
        self._listeners: list[Callable[[LogLine], None]] = []

    def attach_uart(self, base: int) -> None:
        """Start mirroring the log to the PL011 at ``base`` (from SPCR), replaying the ring."""
        with self._lock:
            self._uart = base
            for line in self._ring:
                self._emit(line)

    @property
    def uart_base(self) -> int | None:
        return self._uart

    def printk(self, text: str, level: int = INFO) -> None:
        line = LogLine(time.monotonic() - self._t0, level, text)
        with self._lock:
            self._ring.append(line)
            listeners = list(self._listeners)
            self._emit(line)
        for cb in listeners:
            cb(line)

    def info(self, text: str) -> None:
        self.printk(text, INFO)

    def warn(self, text: str) -> None:
        self.printk(text, WARNING)

    def err(self, text: str) -> None:
        self.printk(text, ERR)

    def lines(self) -> list[LogLine]:
        with self._lock:
            return list(self._ring)

    def dmesg(self) -> str:
        """The ring buffer as ``dmesg`` prints it."""
        return "".join(line.render() + "\n" for line in self.lines())

    def contains(self, fragment: str) -> bool:
        return any(fragment in line.text for line in self.lines())

    def subscribe(self, cb: Callable[[LogLine], None]) -> Callable[[], None]:
        """Call ``cb`` for every new line (outside the log lock); returns an unsubscriber."""
        return _subscribe(self._lock, self._listeners, cb)

    def _emit(self, line: LogLine) -> None:
        if self._uart is None or self._memory is None:
            return
        for byte in (line.render() + "\n").encode("utf-8", "replace"):
            self._memory.store(self._uart + UARTDR, 1, byte)


@dataclass(frozen=True)
class KernelEvent:
    """A CPU hotplug uevent, named as the agent protocol's events are (``CpuOnline`` ...)."""

    name: str
    data: dict[str, int]
    timestamp: float


class Uevents:
    """The kernel's event stream (uevents + ``_OST`` notes) for the agent.

    Subscribers are called synchronously on the kernel thread or vCPU that caused
    the event, in order, and must not block (queue and return). A subscriber
    that raises is logged and dropped from that one delivery, never the kernel.
    """

    def __init__(self, log: KernelLog) -> None:
        self._log = log
        self._lock = threading.Lock()
        self._subs: list[Callable[[KernelEvent], None]] = []
        self._history: deque[KernelEvent] = deque(maxlen=RING_LINES)

    def subscribe(self, cb: Callable[[KernelEvent], None]) -> Callable[[], None]:
        return _subscribe(self._lock, self._subs, cb)

    def emit(self, name: str, **data: int) -> None:
        event = KernelEvent(name, dict(data), time.time())
        with self._lock:
            self._history.append(event)
            subs = list(self._subs)
        for cb in subs:
            try:
                cb(event)
            except Exception as exc:
                self._log.warn(f"uevent subscriber failed on {name}: {exc!r}")

    def history(self) -> list[KernelEvent]:
        with self._lock:
            return list(self._history)


def _subscribe(lock: threading.Lock, subscribers: list[_T], cb: _T) -> Callable[[], None]:
    """Add ``cb`` under ``lock``; the returned function removes it (once, idempotently)."""
    with lock:
        subscribers.append(cb)

    def unsubscribe() -> None:
        with lock:
            if cb in subscribers:
                subscribers.remove(cb)

    return unsubscribe

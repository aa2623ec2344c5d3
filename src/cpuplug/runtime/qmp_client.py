"""A thin, synchronous layer over the official ``qemu.qmp`` client (docs/contract.md §0, §7).

The runtime speaks to the VMM only through QMP, and only through the library
QEMU's own tooling uses, so our server is checked against a client we did not
write.  ``qemu.qmp`` is asyncio; the runtime's commands are short synchronous
programs, so :class:`QmpConnection` owns a private event loop and drives it only
while one of its methods runs (the same technique as ``qemu.qmp.legacy``), with
every wait bounded.

Events are collected from the moment of connection by the client's built-in
listener, so an event the VMM sends between two of our commands — or before we
start waiting for it — is never lost.  That is what lets ``device_del`` be
followed by a wait for ``DEVICE_DELETED`` without Kata's ordering race.

Importing this module costs ``asyncio`` and ``qemu.qmp``, so only a hypervisor
backend imports it, and backends are loaded when a VMM is to be reached; code that
only catches QMP failures imports them from :mod:`cpuplug.runtime.qmp_errors`
(re-exported here, one class each).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError
from qemu.qmp.protocol import Runstate

from cpuplug.runtime.qmp_errors import QmpCommandError as QmpCommandError
from cpuplug.runtime.qmp_errors import QmpError as QmpError
from cpuplug.runtime.qmp_errors import QmpTimeout as QmpTimeout
from cpuplug.runtime.qmp_errors import VmmGone as VmmGone
from cpuplug.runtime.qmp_errors import VmmUnreachable as VmmUnreachable

_T = TypeVar("_T")

DEFAULT_COMMAND_TIMEOUT = 10.0


Event = dict[str, Any]
"""``{"event": name, "data": {...}, "timestamp": {"seconds", "microseconds"}}``."""


class QmpConnection:
    """One negotiated QMP session to a VMM; use as a context manager.

    ``log`` (optional) receives every command sent, so a caller can prove what
    traffic an operation generated (``update --cpus 1.2`` must generate none).
    """

    def __init__(self, path: str | Path, *, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        self.path = str(path)
        self.timeout = timeout
        self.sent: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient("cpuplug-runtime")
        self._client.logger.setLevel(logging.CRITICAL)  # errors are raised, not logged
        self._connected = False

    # ------------------------------------------------------------------ lifecycle

    def connect(self) -> QmpConnection:
        try:
            self._run(self._client.connect(self.path), self.timeout)
        except (ConnectError, OSError) as exc:
            self._shutdown_loop()
            raise VmmUnreachable(f"cannot connect to QMP at {self.path}: {exc}") from None
        except QmpTimeout:
            self._shutdown_loop()
            raise VmmUnreachable(
                f"QMP at {self.path} did not greet within {self.timeout:g}s"
            ) from None
        self._connected = True
        return self

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._connected:
            with contextlib.suppress(Exception):
                self._run(self._client.disconnect(), self.timeout)
            self._connected = False
        self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        if self._loop.is_closed():
            return
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        if pending:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def __enter__(self) -> QmpConnection:
        return self.connect() if not self._connected else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._connected and self._client.runstate == Runstate.RUNNING

    # ------------------------------------------------------------------ commands

    def _run(self, aw: Awaitable[_T], timeout: float | None) -> _T:
        try:
            return self._loop.run_until_complete(asyncio.wait_for(aw, timeout))
        except TimeoutError:
            raise QmpTimeout(f"QMP at {self.path}: no answer within {timeout:g}s") from None

    def execute(
        self, command: str, arguments: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Run one command; return its ``return`` value or raise a :class:`QmpError`."""
        if not self.alive:
            raise VmmGone(f"QMP connection to {self.path} is closed (VMM gone?)")
        self.sent.append(command)
        try:
            return self._run(
                self._client.execute(command, dict(arguments) if arguments else None),
                timeout if timeout is not None else self.timeout,
            )
        except ExecuteError as exc:
            raise QmpCommandError(command, exc.error_class, exc.error.error.desc) from None
        except QmpTimeout:
            raise
        except (QMPError, OSError, EOFError) as exc:
            raise VmmGone(f"QMP {command}: connection to the VMM lost ({exc})") from None

    # ------------------------------------------------------------------ events

    def next_event(self, timeout: float) -> Event | None:
        """The next event (oldest first), waiting at most ``timeout`` s; None on timeout.

        Raises :class:`VmmGone` if the connection drops while waiting (and no
        event is left in the queue), so a killed VMM ends a wait at once instead
        of at its timeout.
        """
        if not self._client.events.empty():
            return self._pop()
        if not self.alive:
            raise VmmGone(f"QMP connection to {self.path} is closed (VMM gone?)")
        return self._run(self._wait_event(timeout), None)

    def _pop(self) -> Event:
        return dict(self._loop.run_until_complete(self._client.events.get()))

    async def _wait_event(self, timeout: float) -> Event | None:
        get = asyncio.ensure_future(self._client.events.get())
        dead = asyncio.ensure_future(self._until_disconnected())
        try:
            done, _ = await asyncio.wait(
                {get, dead}, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for t in (get, dead):
                if not t.done():
                    t.cancel()
            await asyncio.gather(get, dead, return_exceptions=True)
        if get in done and not get.cancelled() and get.exception() is None:
            return dict(get.result())
        if dead in done:
            raise VmmGone(f"QMP connection to {self.path} dropped (VMM exited?)")
        return None

    async def _until_disconnected(self) -> None:
        while self._client.runstate == Runstate.RUNNING:
            await self._client.runstate_changed()

    def drain_events(self) -> list[Event]:
        """Every event received so far (without waiting)."""
        self._run(asyncio.sleep(0), None)
        return [dict(m) for m in self._client.events.clear()]

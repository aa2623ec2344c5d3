"""QMP conveniences over the official ``qemu.qmp`` client, for tests and benchmarks.

One place for "connect to this VMM" and "wait for that event", so every caller waits
with a timeout and none of them hand-rolls the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from qemu.qmp import QMPClient

EVENT_TIMEOUT = 15.0


async def qmp_connect(path: str, name: str = "test") -> QMPClient:
    """A negotiated ``QMPClient`` on the VMM's QMP socket at ``path``."""
    client = QMPClient(name)
    await client.connect(path)
    return client


async def next_event(
    client: QMPClient,
    name: str,
    *,
    pred: Callable[[dict[str, Any]], bool] | None = None,
    timeout: float = EVENT_TIMEOUT,
) -> dict[str, Any]:
    """The next event called ``name`` (whose ``data`` satisfies ``pred``); others are dropped."""

    async def find() -> dict[str, Any]:
        while True:
            event = await client.events.get()
            data: Any = event.get("data", {})
            if event["event"] == name and (pred is None or pred(data)):
                return dict(event)

    return await asyncio.wait_for(find(), timeout)

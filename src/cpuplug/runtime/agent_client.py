"""The runtime's side of the agent protocol: typed calls over the host agent socket.

Framing, validation and the request/reply loop are :mod:`cpuplug.agent_protocol`'s
(one implementation for both ends); this module only adds connecting to the
VMM's ``--agent`` socket, waiting for the guest agent to come up, and one method
per call the runtime makes, so the sandbox code reads like Kata's agent calls.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpuplug import agent_protocol as ap
from cpuplug.errors import CpuplugError

DEFAULT_TIMEOUT = 30.0
_DEFAULT = object()


class AgentUnreachable(CpuplugError):
    """The guest agent did not answer at the socket in time."""


class AgentClient:
    """One connection to the guest agent; requests are sent one at a time."""

    def __init__(self, path: str | Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._next_id = 0

    def connect(self) -> AgentClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise AgentUnreachable(f"cannot connect to the agent at {self.path}: {exc}") from None
        self._sock = sock
        return self

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> AgentClient:
        return self if self._sock is not None else self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(
        self, method: ap.Method, params: dict[str, Any], timeout: float | object | None = _DEFAULT
    ) -> Any:
        """One request/reply; :class:`agent_protocol.AgentError` on an error reply.

        ``timeout`` defaults to the client's; ``None`` waits as long as it takes
        (an ``exec`` of a long job).  A timeout or a broken stream closes the
        connection (it is out of sync).
        """
        wait = self.timeout if timeout is _DEFAULT else timeout
        assert wait is None or isinstance(wait, int | float)
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        self._next_id += 1
        try:
            return ap.call(
                self._sock,
                method,
                params,
                timeout=wait,
                req_id=self._next_id,
            )
        except (ap.AgentTimeout, ap.ConnectionClosed, ap.FrameError, OSError) as exc:
            self.close()
            if isinstance(exc, OSError):
                raise ap.ConnectionClosed(f"agent connection failed: {exc}") from None
            raise

    # ------------------------------------------------------------------ methods

    def guest_details(self, timeout: float | None = None) -> dict[str, Any]:
        return dict(
            self.call(ap.Method.GUEST_DETAILS, {}, _DEFAULT if timeout is None else timeout)
        )

    def create_container(self, container_id: str, cmd: list[str], **resources: Any) -> None:
        params: dict[str, Any] = {"container_id": container_id, "cmd": cmd}
        params.update({k: v for k, v in resources.items() if v is not None})
        self.call(ap.Method.CREATE_CONTAINER, params)

    def start_container(self, container_id: str) -> int:
        return int(self.call(ap.Method.START_CONTAINER, {"container_id": container_id})["pid"])

    def exec_process(
        self, container_id: str, cmd: list[str], timeout: float | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"container_id": container_id, "cmd": cmd}
        if timeout is not None:
            params["timeout"] = timeout
        # the agent enforces ``timeout``; we allow it the client timeout on top
        wait = None if timeout is None else timeout + self.timeout
        return dict(self.call(ap.Method.EXEC_PROCESS, params, wait))

    def kill_container(self, container_id: str, signal: int | None = None) -> None:
        params: dict[str, Any] = {"container_id": container_id}
        if signal is not None:
            params["signal"] = signal
        self.call(ap.Method.KILL_CONTAINER, params)

    def remove_container(self, container_id: str) -> None:
        self.call(ap.Method.REMOVE_CONTAINER, {"container_id": container_id})

    def online_cpu_mem(self, nb_cpus: int) -> list[int]:
        result = self.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": nb_cpus, "cpu_only": True})
        return [int(c) for c in result.get("online", [])]

    def offline_cpus(self, nb_cpus: int) -> list[int]:
        """Online/offline mode's shrink: the guest offlines CPUs until ``nb_cpus`` remain."""
        result = self.call(ap.Method.OFFLINE_CPUS, {"nb_cpus": nb_cpus})
        return [int(c) for c in result.get("online", [])]

    def update_container(self, container_id: str, **resources: Any) -> None:
        res = {k: v for k, v in resources.items() if v is not None}
        self.call(ap.Method.UPDATE_CONTAINER, {"container_id": container_id, "resources": res})

    def stats_container(self, container_id: str) -> dict[str, Any]:
        return dict(self.call(ap.Method.STATS_CONTAINER, {"container_id": container_id}))

    def read_file(self, path: str) -> str:
        return str(self.call(ap.Method.READ_FILE, {"path": path})["data"])

    def subscribe(self, timeout: float | None = None) -> Iterator[ap.Event]:
        """Subscribe this connection to guest events and yield them until it closes.

        ``timeout`` bounds the wait for each event; on expiry the iteration ends.
        """
        self.call(ap.Method.SUBSCRIBE_EVENTS, {})
        assert self._sock is not None
        while True:
            try:
                msg = ap.parse_incoming(ap.recv_message(self._sock, timeout))
            except (ap.AgentTimeout, ap.ConnectionClosed):
                return
            if isinstance(msg, ap.Event):
                yield msg

    # ------------------------------------------------------------------ streamed processes
    # (docs/agent-protocol.md "Streamed processes": cpuplug-runc's shim relays with these)

    def start_process(
        self, container_id: str, exec_id: str, cmd: list[str], **io: Any
    ) -> int:
        """Start an exec whose stdio is relayed (``env``, ``cwd``, ``terminal``); its pid."""
        params: dict[str, Any] = {"container_id": container_id, "exec_id": exec_id, "cmd": cmd}
        params.update({k: v for k, v in io.items() if v is not None})
        return int(self.call(ap.Method.START_PROCESS, params)["pid"])

    def read_process(
        self, container_id: str, exec_id: str | None, wait: float, max_bytes: int | None = None
    ) -> ProcessOutput:
        """What the process wrote since the last read, waiting up to ``wait`` seconds for
        something; ``exit_code`` once it ended and everything was read."""
        params = _process(container_id, exec_id, timeout=wait, max_bytes=max_bytes)
        result = self.call(ap.Method.READ_PROCESS, params, wait + self.timeout)
        code = result.get("exit_code")
        return ProcessOutput(
            base64.b64decode(str(result.get("stdout", ""))),
            base64.b64decode(str(result.get("stderr", ""))),
            code if isinstance(code, int) and not isinstance(code, bool) else None,
        )

    def write_stdin(
        self, container_id: str, exec_id: str | None, data: bytes, close: bool = False
    ) -> int:
        """Write to the process's stdin (``close``: then end it); how much went in."""
        encoded = base64.b64encode(data).decode("ascii")
        params = _process(container_id, exec_id, data=encoded, close=close or None)
        return int(self.call(ap.Method.WRITE_STDIN, params)["written"])

    def signal_process(self, container_id: str, exec_id: str | None, signal: int) -> None:
        self.call(ap.Method.SIGNAL_PROCESS, _process(container_id, exec_id, signal=signal))

    def resize_terminal(
        self, container_id: str, exec_id: str | None, rows: int, cols: int
    ) -> None:
        self.call(
            ap.Method.RESIZE_TERMINAL, _process(container_id, exec_id, rows=rows, cols=cols)
        )


@dataclass(frozen=True)
class ProcessOutput:
    """One ``ReadProcess`` answer."""

    stdout: bytes
    stderr: bytes
    exit_code: int | None


def _process(container_id: str, exec_id: str | None, **params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"container_id": container_id}
    if exec_id is not None:
        out["exec_id"] = exec_id
    out.update({k: v for k, v in params.items() if v is not None})
    return out


def wait_for_agent(
    path: str | Path,
    timeout: float,
    alive: Callable[[], bool] | None = None,
    connect: Callable[[Path], Any] | None = None,
) -> Any:
    """Connect and get an answer to ``GuestDetails`` within ``timeout`` seconds.

    The socket appears when the VMM starts, but the guest agent answers only once
    the guest has booted, so retry (with a short back-off: there is no event to
    wait on across the process boundary) and stop early if ``alive()`` says the
    VMM died.  ``connect`` (default: an :class:`AgentClient`) returns a connected
    client; the one that answered is returned.
    """
    opener = connect if connect is not None else (lambda p: AgentClient(p).connect())
    deadline = time.monotonic() + timeout
    delay = 0.01
    last: Exception | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AgentUnreachable(
                f"the guest agent at {path} did not answer within {timeout:.3g}s ({last})"
            )
        if alive is not None and not alive():
            raise AgentUnreachable("the VMM exited before the guest agent came up")
        client = None
        try:
            client = opener(Path(path))
            client.guest_details(timeout=min(remaining, 5.0))
            return client
        except CpuplugError as exc:
            if client is not None:
                client.close()
            last = exc
        time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
        delay = min(delay * 2, 0.2)

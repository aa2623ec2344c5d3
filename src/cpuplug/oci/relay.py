"""One guest process's stdio and signals, relayed to host descriptors (Kata 1.x's shim loop).

:meth:`Relay.run` returns the process's exit status once the agent reported it, all its
output written out first. Three threads, each with its own job and agent connection:

* the caller's thread reads: one ``ReadProcess`` long poll after the other, the bytes
  written to the local stdout/stderr (a reader that went away makes that stream be
  dropped, not the relay);
* a stdin thread copies the local stdin to ``WriteStdin`` (its end of file closes the
  process's stdin; a terminal's ``EIO`` just ends the copy);
* a control thread passes signals (:meth:`Relay.forward`, safe to call from a signal
  handler) and window sizes on (``SignalProcess``, ``ResizeTerminal``).

The agent's connection may break (a paused VM does not answer, a busy agent says
EBUSY): the reader reconnects with a back-off for as long as the VMM lives, and
reports :data:`VM_GONE_STATUS` when it does not any more (the container was killed
with its VM, as SIGKILL would kill runc's).
"""

from __future__ import annotations

import errno
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cpuplug import agent_protocol as ap
from cpuplug.errors import CpuplugError
from cpuplug.oci import console
from cpuplug.runtime.agent_client import AgentClient

VM_GONE_STATUS = 137
"""What the container's process is said to have ended with when its VM did (SIGKILL's)."""
READ_WAIT = 5.0
"""One ``ReadProcess`` long poll (seconds)."""
CALL_TIMEOUT = 15.0
"""Longest wait for any other agent answer."""
RETRY_MAX = 1.0
RESIZE = 0
"""Queued for the control thread: pass the terminal's size on (signals are 1..64)."""

T = TypeVar("T")


class Relay:
    """Relays process ``exec_id`` (None: the init) of agent container ``cid``."""

    def __init__(
        self,
        agent_path: Path,
        cid: str,
        exec_id: str | None,
        *,
        stdin: int | None,
        stdout: int,
        stderr: int,
        terminal: bool,
        vm_alive: Callable[[], bool],
        log: Callable[[str], None],
    ) -> None:
        self.agent_path = agent_path
        self.cid = cid
        self.exec_id = exec_id
        self.stdin = stdin
        self.out = {"stdout": stdout, "stderr": stderr}
        self.terminal = terminal
        self.vm_alive = vm_alive
        self.log = log
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._done = threading.Event()
        self._control_lock = threading.Lock()
        self._control: AgentClient | None = None

    # ------------------------------------------------------------------ public

    def forward(self, signal: int) -> None:
        """Pass ``signal`` on to the process (async-signal safe: it only queues)."""
        self._queue.put(signal)

    def resize(self) -> None:
        """Pass the local terminal's size on (SIGWINCH)."""
        self._queue.put(RESIZE)

    def run(self) -> int:
        loops = [(self._control_loop, "relay-control")]
        if self.stdin is not None:
            loops.append((self._stdin_loop, "relay-stdin"))
        threads = [threading.Thread(target=f, name=n, daemon=True) for f, n in loops]
        if self.terminal:
            self.resize()
        for t in threads:
            t.start()
        try:
            return self._read_loop()
        finally:
            self._done.set()
            with self._control_lock:
                if self._control is not None:
                    self._control.close()
                    self._control = None

    # ------------------------------------------------------------------ reading

    def _read_loop(self) -> int:
        client: AgentClient | None = None
        delay = 0.05
        try:
            while True:
                try:
                    if client is None:
                        client = AgentClient(self.agent_path, timeout=CALL_TIMEOUT).connect()
                    got = client.read_process(self.cid, self.exec_id, READ_WAIT)
                except ap.AgentError as exc:
                    if exc.code is not ap.ErrorCode.EBUSY:
                        self.log(f"the process is gone: {exc.message}")
                        return VM_GONE_STATUS
                    got = None
                except (CpuplugError, OSError) as exc:
                    if client is not None:
                        client.close()
                        client = None
                    if not self.vm_alive():
                        self.log(f"the VM is gone ({exc})")
                        return VM_GONE_STATUS
                    got = None
                if got is None:
                    time.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                delay = 0.05
                self._write("stdout", got.stdout)
                self._write("stderr", got.stderr)
                if got.exit_code is not None:
                    return got.exit_code
        finally:
            if client is not None:
                client.close()

    def _write(self, name: str, data: bytes) -> None:
        fd = self.out.get(name)
        view = memoryview(data)
        while fd is not None and view:
            try:
                view = view[os.write(fd, view) :]
            except InterruptedError:
                continue
            except OSError as exc:  # the reader left: drop this stream from now on
                self.log(f"{name} dropped: {exc.strerror}")
                self.out.pop(name, None)
                return

    # ------------------------------------------------------------------ stdin, control

    def _call(self, what: Callable[[AgentClient], T]) -> T | None:
        """One control call on the shared control connection (reconnecting once); None
        when the agent refused it (the process ended) or is unreachable."""
        with self._control_lock:
            for _ in range(2):
                if self._done.is_set():
                    return None
                try:
                    if self._control is None:
                        self._control = AgentClient(self.agent_path, timeout=CALL_TIMEOUT).connect()
                    return what(self._control)
                except ap.AgentError as exc:
                    self.log(f"agent: {exc.message}")
                    return None
                except (CpuplugError, OSError) as exc:
                    self.log(f"agent unreachable: {exc}")
                    if self._control is not None:
                        self._control.close()
                        self._control = None
            return None

    def _stdin_loop(self) -> None:
        assert self.stdin is not None
        while not self._done.is_set():
            try:
                data = os.read(self.stdin, 65536)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: the terminal's other end closed
                    self.log(f"stdin: {exc.strerror}")
                return
            if not data:
                if not self.terminal:
                    self._call(lambda c: c.write_stdin(self.cid, self.exec_id, b"", close=True))
                return
            while data and not self._done.is_set():
                n = self._write_stdin(data)
                if n is None:
                    return  # the process ended (or its stdin did)
                data = data[n:]
                if data:
                    time.sleep(0.05)  # it is not reading: WriteStdin already waited

    def _write_stdin(self, data: bytes) -> int | None:
        return self._call(lambda c: c.write_stdin(self.cid, self.exec_id, data))

    def _control_loop(self) -> None:
        while not self._done.is_set():
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self._control_item(item)

    def _control_item(self, item: int) -> None:
        if item != RESIZE:
            self._call(lambda c: c.signal_process(self.cid, self.exec_id, item))
            return
        size = console.window_size(self.stdin if self.stdin is not None else 0)
        if size is not None:
            rows, cols = size
            self._call(lambda c: c.resize_terminal(self.cid, self.exec_id, rows, cols))


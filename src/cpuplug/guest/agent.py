"""The agent (Kata's role inside the guest), served on the machine's agent channel.

Entry point: ``start(kernel) -> Agent`` — the kernel calls it once at the end of
boot (``GuestKernel._launch_agent``); it returns at once with the service
running on its own threads, and ``kernel.shutdown()`` calls ``Agent.stop()``.

The wire format and every method are in ``docs/agent-protocol.md`` and
:mod:`cpuplug.agent_protocol`. The agent reaches the kernel only the way a
guest process would: the file tree (``/sys/devices/system/cpu``,
``/sys/fs/cgroup``), the scheduler to run programs, the cgroup tree, and the
kernel's event stream — never the CPU manager directly. So ``OnlineCPUMem``
onlines CPUs by writing ``1`` to ``cpuN/online``, as Kata's agent does.

Where it does better than Kata's agent
--------------------------------------
* ``OnlineCPUMem`` walks registered CPUs in ascending *numeric* order (Kata
  uses ``read_dir`` order, so ``cpu10`` may come before ``cpu2``) and reports
  the last per-CPU errno (EPERM for a vCPU the host never gave) instead of only
  "failed to online N CPU(s) after 100 retries".
* ``UpdateContainer`` validates ``cpu.max`` before touching ``cpuset.cpus``,
  so a bad request changes nothing (Kata only warns on a failed cpuset write).
* A malformed message gets an error reply and the connection keeps serving;
  only an unrecoverable framing fault closes that one connection.

Threads (a bound, not one per request)
--------------------------------------
``hw.Stream`` offers only a blocking ``recv`` with a timeout, no readiness
polling, so one thread cannot wait on several connections without polling
latency. The agent therefore runs exactly: one acceptor thread, one
event-sender thread, and one reader thread per open connection, with at most
:data:`MAX_CONNECTIONS` connections (a further one gets an ``EBUSY`` error
reply and is closed). That is at most ``2 + MAX_CONNECTIONS`` threads however
many vCPUs the guest has or how many requests arrive. Requests that hold their
connection for long (``ExecProcess``, ``SubscribeEvents``) may occupy all but
:data:`CONTROL_RESERVE` of them; one more gets ``EBUSY`` on the request, so the
runtime's control calls (an update's ``OnlineCPUMem``, ``UpdateContainer``) always
find a connection however many execs run (issue 8, D2: an update failed half-way
with "too many agent connections" while 16 execs ran). Requests of one
connection are handled in order on its reader thread; the programs they start
run as scheduler tasks on the vCPUs, like processes.

Event fan-out never blocks the kernel: the kernel's callback only appends to a
bounded per-subscriber queue; a subscriber that lets :data:`EVENT_QUEUE_LIMIT`
events pile up is disconnected.
"""

from __future__ import annotations

import contextlib
import errno
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cpuplug import agent_protocol as ap
from cpuplug.guest.cgroup import Cgroup, parse_cpu_max
from cpuplug.guest.klog import KernelEvent
from cpuplug.guest.userland import Os, Process, ProgramNotFound, spawn
from cpuplug.guest.vfs import GuestOSError
from cpuplug.hw import AgentChannel, Stream

__all__ = ["MAX_CONNECTIONS", "Agent", "AgentKernel", "start"]

MAX_CONNECTIONS = 16
CONTROL_RESERVE = 4
"""Connections long-running requests may never take: kept for control calls."""
_LONG_RUNNING = frozenset({ap.Method.EXEC_PROCESS, ap.Method.SUBSCRIBE_EVENTS})
EVENT_QUEUE_LIMIT = 1024
ONLINE_RETRIES = 100  # Kata: 100 retries ...
ONLINE_RETRY_INTERVAL = 0.05  # ... 50 ms apart (~5 s)
EXEC_DEFAULT_TIMEOUT = 60.0  # Kata's defaultRequestTimeout
KILL_WAIT = 5.0
EXEC_MAX_TIMEOUT = 365 * 24 * 3600.0
"""Longest ExecProcess timeout, in seconds: beyond it (or ``1e999`` = infinity) the
wait itself cannot be expressed (``OverflowError``), so it is refused up front."""
RECV_CHUNK = 64 * 1024
POLL = 0.25  # how often blocked threads re-check the stop flag (stop also closes streams)

SYS_CPU = "/sys/devices/system/cpu"
_CPU_DIR_RE = re.compile(r"cpu(\d+)")

_ERRNO_CODE: dict[int, ap.ErrorCode] = {
    errno.ENOENT: ap.ErrorCode.ENOENT,
    errno.ENOTDIR: ap.ErrorCode.ENOENT,
    errno.ESRCH: ap.ErrorCode.ENOENT,
    errno.ENODEV: ap.ErrorCode.ENOENT,
    errno.EPERM: ap.ErrorCode.EPERM,
    errno.EACCES: ap.ErrorCode.EPERM,
    errno.EBUSY: ap.ErrorCode.EBUSY,
    errno.EAGAIN: ap.ErrorCode.EBUSY,
    errno.ENOTEMPTY: ap.ErrorCode.EBUSY,
    errno.EINVAL: ap.ErrorCode.EINVAL,
    errno.EISDIR: ap.ErrorCode.EINVAL,
    errno.ERANGE: ap.ErrorCode.EINVAL,
    errno.EEXIST: ap.ErrorCode.EEXIST,
    errno.ETIMEDOUT: ap.ErrorCode.ETIMEDOUT,
    errno.ENOSYS: ap.ErrorCode.ENOSYS,
}


class EventSource(Protocol):
    def subscribe(self, cb: Callable[[KernelEvent], None]) -> Callable[[], None]: ...


class _HasChannel(Protocol):
    @property
    def agent_channel(self) -> AgentChannel: ...


class AgentKernel(Os, Protocol):
    """What the agent needs from the kernel object (``GuestKernel`` provides it):
    what the programs it spawns need, and the kernel's events."""

    @property
    def events(self) -> EventSource: ...


def _os_error(exc: GuestOSError, what: str = "") -> ap.ProtocolError:
    code = _ERRNO_CODE.get(exc.errno, ap.ErrorCode.EIO)
    return ap.ProtocolError(code, f"{what}{exc}")


@dataclass
class Container:
    """A container: a cgroup, its command, and the processes started in it."""

    id: str
    cmd: list[str]
    group: Cgroup
    init: Process | None = None


class _Conn:
    """One host connection: its stream, a send lock, and its event queue if subscribed."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.send_lock = threading.Lock()
        self.subscribed = False
        self.events: deque[dict[str, Any]] = deque()
        self.closed = False
        self.thread: threading.Thread | None = None
        self.long_running = False
        """Counted among the connections held by a long-running request."""

    def send(self, message: dict[str, Any]) -> bool:
        """Send one message; False (and the connection is closed) if the peer is gone."""
        try:
            frame = ap.encode_frame(message)
        except ap.ProtocolError as exc:  # e.g. a reply too large: tell the client instead
            frame = ap.encode_frame(ap.make_error(message.get("id"), exc.code, exc.message))
        try:
            with self.send_lock:
                if self.closed:
                    return False
                self.stream.send(frame)
        except OSError:
            self.close()
            return False
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.stream.close()


class Agent:
    """The agent service. Thread-safe; see the module doc for its threads."""

    def __init__(
        self,
        kernel: AgentKernel,
        channel: AgentChannel,
        *,
        online_retries: int = ONLINE_RETRIES,
        retry_interval: float = ONLINE_RETRY_INTERVAL,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.kernel = kernel
        self.channel = channel
        self.online_retries = online_retries
        self.retry_interval = retry_interval
        self.max_connections = max_connections
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the tables below
        self._sandbox = threading.Lock()  # Kata's sandbox lock: container/CPU changes
        self._conns: set[_Conn] = set()
        self._containers: dict[str, Container] = {}
        self._events_cv = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._handlers: dict[ap.Method, Callable[[_Conn, dict[str, Any]], dict[str, Any]]] = {
            ap.Method.CREATE_CONTAINER: self._create_container,
            ap.Method.START_CONTAINER: self._start_container,
            ap.Method.EXEC_PROCESS: self._exec_process,
            ap.Method.KILL_CONTAINER: self._kill_container,
            ap.Method.REMOVE_CONTAINER: self._remove_container,
            ap.Method.ONLINE_CPU_MEM: self._online_cpu_mem,
            ap.Method.OFFLINE_CPUS: self._offline_cpus,
            ap.Method.UPDATE_CONTAINER: self._update_container,
            ap.Method.STATS_CONTAINER: self._stats_container,
            ap.Method.READ_FILE: self._read_file,
            ap.Method.GUEST_DETAILS: self._guest_details,
            ap.Method.SUBSCRIBE_EVENTS: self._subscribe_events,
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Agent:
        self._unsubscribe = self.kernel.events.subscribe(self._on_kernel_event)
        for target, name in (
            (self._accept_loop, "agent-accept"),
            (self._event_loop, "agent-events"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(t)
            t.start()
        self._log("agent: serving on the agent channel")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection and end every agent thread (containers' tasks are left)."""
        self._stop.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        with self._lock:
            conns = list(self._conns)
            self._events_cv.notify_all()
        for conn in conns:
            conn.close()
        deadline = time.monotonic() + timeout
        for t in [*self._threads, *(c.thread for c in conns if c.thread is not None)]:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    def thread_count(self) -> int:
        """Live agent threads (for the bound stated in the module doc)."""
        with self._lock:
            readers = [c.thread for c in self._conns if c.thread is not None]
        return sum(1 for t in [*self._threads, *readers] if t.is_alive())

    def containers(self) -> list[str]:
        with self._lock:
            return sorted(self._containers)

    # ------------------------------------------------------------------ threads

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            stream = self.channel.accept(POLL)
            if stream is None:
                continue
            conn = _Conn(stream)
            with self._lock:
                full = len(self._conns) >= self.max_connections
                if not full:
                    self._conns.add(conn)
            if full:
                conn.send(ap.make_error(None, ap.ErrorCode.EBUSY, "too many agent connections"))
                conn.close()
                continue
            conn.thread = threading.Thread(
                target=self._serve, args=(conn,), name="agent-conn", daemon=True
            )
            conn.thread.start()

    def _serve(self, conn: _Conn) -> None:
        decoder = ap.FrameDecoder()
        try:
            while not self._stop.is_set() and not conn.closed:
                try:
                    data = conn.stream.recv(RECV_CHUNK, POLL)
                except OSError:
                    break
                if data is None:
                    continue
                if not data:
                    break
                try:
                    bodies = decoder.feed(data)
                except ap.FrameError as exc:
                    conn.send(ap.error_from_exception(exc))
                    break
                for body in bodies:
                    if not self._handle_frame(conn, body):
                        return
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)

    def _handle_frame(self, conn: _Conn, body: bytes) -> bool:
        """Answer one frame; False when the connection must be closed."""
        try:
            message = ap.parse_body(body)
            request = ap.parse_request(message)
        except ap.FrameError as exc:
            conn.send(ap.error_from_exception(exc))
            return False
        except ap.ProtocolError as exc:
            return conn.send(ap.error_from_exception(exc))
        if request.method in _LONG_RUNNING:
            with self._lock:
                held = sum(1 for c in self._conns if c.long_running)
                busy = held >= self.max_connections - CONTROL_RESERVE
                conn.long_running = conn.long_running or not busy
            if busy:
                return conn.send(
                    ap.make_error(
                        request.id,
                        ap.ErrorCode.EBUSY,
                        f"too many long-running requests ({held} execs and subscriptions); "
                        f"{CONTROL_RESERVE} connections stay reserved for control calls",
                    )
                )
        if request.method is ap.Method.SUBSCRIBE_EVENTS:
            return self._start_events(conn, request.id)
        try:
            result = self._handlers[request.method](conn, request.params)
            reply = ap.make_reply(request.id, result)
        except ap.ProtocolError as exc:
            reply = ap.error_from_exception(exc, request.id)
        except GuestOSError as exc:
            reply = ap.error_from_exception(_os_error(exc), request.id)
        except Exception as exc:  # a bug must cost one request, never the agent
            self._log(f"agent: {request.method} failed: {exc!r}")
            reply = ap.make_error(request.id, ap.ErrorCode.EIO, f"internal error: {exc!r}")
        finally:
            if request.method is ap.Method.EXEC_PROCESS:
                with self._lock:
                    conn.long_running = False
        return conn.send(reply)

    def _on_kernel_event(self, event: KernelEvent) -> None:
        """Kernel callback: queue the event for every subscriber, never blocking."""
        message = ap.make_event(event.name, event.data, event.timestamp)
        drop: list[_Conn] = []
        with self._lock:
            for conn in self._conns:
                if not conn.subscribed:
                    continue
                if len(conn.events) >= EVENT_QUEUE_LIMIT:
                    drop.append(conn)
                    continue
                conn.events.append(message)
            self._events_cv.notify_all()
        for conn in drop:
            self._log("agent: event subscriber not reading; disconnecting it")
            conn.close()

    def _event_loop(self) -> None:
        while True:
            with self._lock:
                self._events_cv.wait_for(
                    lambda: self._stop.is_set() or any(c.events for c in self._conns)
                )
                if self._stop.is_set():
                    return
                batch = [(c, list(c.events)) for c in self._conns if c.events]
                for c, _ in batch:
                    c.events.clear()
            for conn, events in batch:
                for message in events:
                    if not conn.send(message):
                        break

    def _start_events(self, conn: _Conn, req_id: ap.RequestId) -> bool:
        # Subscribed first, so no event emitted after the client sees the reply is lost;
        # the reply still goes out first: the event thread needs the send lock held here.
        with conn.send_lock:
            with self._lock:
                conn.subscribed = True
            try:
                conn.stream.send(ap.encode_frame(ap.make_reply(req_id, {})))
            except OSError:
                return False
        return True

    def _log(self, text: str) -> None:
        log = getattr(self.kernel, "log", None)
        if log is not None:
            log.info(text)

    # ------------------------------------------------------------------ containers

    def _container(self, cid: str) -> Container:
        with self._lock:
            c = self._containers.get(cid)
        if c is None:
            raise ap.ProtocolError(ap.ErrorCode.ENOENT, f"container {cid!r} not found")
        return c

    def _create_container(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        cid: str = p["container_id"]
        with self._sandbox:
            with self._lock:
                if cid in self._containers:
                    raise ap.ProtocolError(ap.ErrorCode.EEXIST, f"container {cid!r} exists")
            group = self.kernel.cgroups.create(cid)
            try:
                self._apply_resources(group, p)
            except BaseException:
                self.kernel.cgroups.remove(group.path)  # leave nothing half made
                raise
            with self._lock:
                self._containers[cid] = Container(cid, list(p["cmd"]), group)
        return {}

    def _start_container(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        with self._sandbox:
            c = self._container(p["container_id"])
            if c.init is not None:
                raise ap.ProtocolError(ap.ErrorCode.EBUSY, f"container {c.id!r} already started")
            if not c.cmd:
                raise ap.ProtocolError(ap.ErrorCode.EINVAL, f"container {c.id!r} has no command")
            c.init = self._spawn(c, c.cmd)
            return {"pid": c.init.pid}

    def _spawn(self, c: Container, cmd: list[str]) -> Process:
        try:
            return spawn(self.kernel, cmd, c.group)
        except ProgramNotFound as exc:
            raise ap.ProtocolError(
                ap.ErrorCode.ENOENT, f"exec {exc.path!r}: executable file not found"
            ) from None

    def _exec_process(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        c = self._container(p["container_id"])
        timeout = float(p.get("timeout", EXEC_DEFAULT_TIMEOUT))
        if not (math.isfinite(timeout) and timeout <= EXEC_MAX_TIMEOUT):
            # Checked before spawning: a wait that fails after the spawn would
            # leave the process running, unwaited, in the container.
            raise ap.ProtocolError(
                ap.ErrorCode.EINVAL,
                f"ExecProcess: 'timeout' must be at most {EXEC_MAX_TIMEOUT:g} seconds",
            )
        proc = self._spawn(c, list(p["cmd"]))
        if not proc.wait(timeout):
            proc.kill(9)
            proc.wait(KILL_WAIT)
            raise ap.ProtocolError(
                ap.ErrorCode.ETIMEDOUT,
                f"{' '.join(proc.argv)!r} did not finish within {timeout:g}s; killed",
            )
        return {
            "exit_code": proc.exit_code,
            "stdout": proc.stdout.getvalue(),
            "stderr": proc.stderr.getvalue(),
        }

    def _kill_container(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        c = self._container(p["container_id"])
        signal: int = p.get("signal", 15)
        for task in c.group.tasks():
            task.kill(128 + signal)
        return {}

    def _remove_container(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        with self._sandbox:
            c = self._container(p["container_id"])
            tasks = c.group.tasks()
            for task in tasks:
                task.kill(128 + 9)
            deadline = time.monotonic() + KILL_WAIT
            for task in tasks:
                task.wait(max(0.0, deadline - time.monotonic()))
            self.kernel.cgroups.remove(c.group.path)  # EBUSY if something still runs
            with self._lock:
                del self._containers[c.id]
        return {}

    # ------------------------------------------------------------------ resources

    def _apply_resources(self, group: Cgroup, r: dict[str, Any]) -> None:
        """Write ``cpuset.cpus`` and ``cpu.max`` through the file tree, checking first.

        ``cpu.max`` is parsed before anything is written, so a request that the
        kernel would refuse changes nothing.
        """
        cpu_max: str | None = None
        quota, period = r.get("quota"), r.get("period")
        if quota is not None or period is not None:
            current_quota = group.cfs.quota_us
            period_us = period if period is not None else group.cfs.period_us
            if quota is None:
                quota_text = "max" if current_quota is None else str(current_quota)
            else:
                quota_text = "max" if quota < 0 else str(quota)
            cpu_max = f"{quota_text} {period_us}"
            try:
                parse_cpu_max(cpu_max, group.cfs.period_us)
            except GuestOSError as exc:
                raise ap.ProtocolError(
                    ap.ErrorCode.EINVAL,
                    f"cpu.max {cpu_max!r}: {exc.strerror} (period 1000..1000000 us,"
                    " quota >= 1000 us or negative for max)",
                ) from None
        vfs = self.kernel.vfs
        try:
            if "cpuset_cpus" in r:
                vfs.write(f"{group.path}/cpuset.cpus", r["cpuset_cpus"] + "\n")
            if cpu_max is not None:
                vfs.write(f"{group.path}/cpu.max", cpu_max + "\n")
        except GuestOSError as exc:
            raise _os_error(exc, "write ") from None

    def _update_container(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        with self._sandbox:
            c = self._container(p["container_id"])
            self._apply_resources(c.group, p["resources"])
        return {}

    def _stats_container(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        c = self._container(p["container_id"])
        stat = c.group.cpu_stat()
        return {
            "cpu": dict(stat.__dict__),
            "cpuset_effective": ap.format_cpu_list(c.group.effective_cpus()),
            "tasks": len(c.group.tasks()),
        }

    # ------------------------------------------------------------------ CPUs

    def _read_cpus(self, name: str) -> frozenset[int]:
        return ap.parse_cpu_list(self.kernel.vfs.read(f"{SYS_CPU}/{name}"))

    def _registered_offline(self) -> list[int]:
        """Registered CPUs (a ``cpuN/online`` file exists) reading 0, ascending numerically."""
        vfs = self.kernel.vfs
        found: list[int] = []
        for name in vfs.listdir(SYS_CPU):
            m = _CPU_DIR_RE.fullmatch(name)
            if m is None:
                continue
            try:
                if vfs.read(f"{SYS_CPU}/{name}/online").strip() == "0":
                    found.append(int(m.group(1)))
            except GuestOSError:
                continue  # unregistered meanwhile, or no online file (not hotpluggable)
        return sorted(found)

    def _online_cpu_mem(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        want: int = p["nb_cpus"]
        possible = len(self._read_cpus("possible"))
        if want > possible:
            # Can never be met: answer now, not after every retry (Kata retries).
            raise ap.ProtocolError(
                ap.ErrorCode.EINVAL,
                f"OnlineCPUMem: 'nb_cpus' {want} exceeds the {possible} possible CPUs",
            )
        with self._sandbox:
            if want > 0:
                self._online_cpus(want)
                self._set_container_cpusets(self._read_cpus("online"))
            return {"online": sorted(self._read_cpus("online"))}

    def _online_cpus(self, want: int) -> None:
        """Kata's ``online_cpus``: bounded retries, ascending order, stop once enough."""
        if len(self._read_cpus("online")) >= want:
            return
        last_error: tuple[int, GuestOSError] | None = None
        for attempt in range(self.online_retries):
            if attempt and self._stop.wait(self.retry_interval):
                break
            for cpu in self._registered_offline():
                try:
                    self.kernel.vfs.write(f"{SYS_CPU}/cpu{cpu}/online", "1")
                except GuestOSError as exc:
                    last_error = (cpu, exc)
                    continue
                if len(self._read_cpus("online")) >= want:
                    return
            if len(self._read_cpus("online")) >= want:
                return
        missing = want - len(self._read_cpus("online"))
        message = f"failed to online {missing} CPU(s) after {self.online_retries} retries"
        code = ap.ErrorCode.ETIMEDOUT
        if last_error is not None:
            cpu, err = last_error
            message += f"; last error: cpu{cpu}: {err.strerror}"
            if err.errno in (errno.EPERM, errno.EIO):
                code = _ERRNO_CODE.get(err.errno, ap.ErrorCode.EIO)
        raise ap.ProtocolError(code, message)

    def _offline_cpus(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        """Shrink in online/offline mode (docs/contract.md §9): offline CPUs down to ``nb_cpus``.

        Highest number first, never CPU 0 (the boot CPU, which arm64 Linux does not
        let go either), each by writing ``0`` to ``cpuN/online`` — the kernel's
        ``cpu_offline`` path: tasks migrate off, then PSCI CPU_OFF. The vCPU thread
        stays in the VMM (the density cost of this mode), and a guest root can
        write ``1`` again (its security cost). Containers' cpusets then become the
        online CPUs, as after ``OnlineCPUMem`` — also when a CPU refuses midway,
        so no container is left naming a CPU that already went.
        """
        want: int = p["nb_cpus"]
        with self._sandbox:
            try:
                self._offline_down_to(want)
            finally:
                self._set_container_cpusets(self._read_cpus("online"))
            return {"online": sorted(self._read_cpus("online"))}

    def _offline_down_to(self, want: int) -> None:
        for cpu in sorted(self._read_cpus("online") - {0}, reverse=True):
            if len(self._read_cpus("online")) <= want:
                return
            try:
                self.kernel.vfs.write(f"{SYS_CPU}/cpu{cpu}/online", "0")
            except GuestOSError as exc:
                raise _os_error(exc, f"offline cpu{cpu}: ") from None

    def _set_container_cpusets(self, online: frozenset[int]) -> None:
        """Kata: after onlining, every container's cpuset becomes the guest's online CPUs."""
        text = ap.format_cpu_list(online) + "\n"
        with self._lock:
            containers = list(self._containers.values())
        for c in containers:
            try:
                self.kernel.vfs.write(f"{c.group.path}/cpuset.cpus", text)
            except GuestOSError as exc:  # Kata warns and goes on; so do we
                self._log(f"agent: could not update cpuset of {c.id}: {exc}")

    # ------------------------------------------------------------------ files

    def _read_file(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        path: str = p["path"]
        try:
            return {"data": self.kernel.vfs.read(path)}
        except GuestOSError as exc:
            raise _os_error(exc, "cat: ") from None

    def _guest_details(self, _conn: _Conn, _p: dict[str, Any]) -> dict[str, Any]:
        vfs = self.kernel.vfs
        details: dict[str, Any] = {
            name: vfs.read(f"{SYS_CPU}/{name}").strip()
            for name in ("possible", "present", "online", "offline", "enabled")
        }
        try:
            version = vfs.read("/proc/version").split()
            details["kernel"] = version[2] if len(version) > 2 else " ".join(version)
        except GuestOSError:
            details["kernel"] = "unknown"
        return details

    def _subscribe_events(self, _conn: _Conn, _p: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("handled by _start_events")  # pragma: no cover


class BootedKernel(AgentKernel, Protocol):
    """A kernel booted on a machine: the agent serves that machine's channel."""

    @property
    def machine(self) -> _HasChannel: ...


def start(kernel: BootedKernel) -> Agent:
    """Kernel hook: serve the agent on ``kernel.machine.agent_channel``; returns at once."""
    return Agent(kernel, kernel.machine.agent_channel).start()

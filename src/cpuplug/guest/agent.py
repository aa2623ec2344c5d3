"""The agent (Kata's role inside the guest): the agent protocol served on the agent channel.

Entry points: ``start(kernel) -> Agent`` — the model kernel calls it once at the end of
boot (``GuestKernel._launch_agent``); it returns at once with the service running on
its own threads, and ``kernel.shutdown()`` calls ``Agent.stop()``. A real Linux guest
runs ``python3 -m cpuplug.guest.linux_agent`` instead (:mod:`cpuplug.guest.linux_agent`).

The wire format and every method are in ``docs/agent-protocol.md`` and
:mod:`cpuplug.agent_protocol`. Everything the agent asks of the operating system goes
through one port, :class:`cpuplug.guest.agent_os.AgentOS`: the CPU masks and
``cpuN/online`` files, the container cgroups' files, processes, ``ReadFile``, CPU
events, and the channel. The model kernel is one such system
(:class:`~cpuplug.guest.model_os.ModelOS`, which reaches the model only the way a guest
process would: so ``OnlineCPUMem`` onlines CPUs by writing ``1`` to ``cpuN/online``, as
Kata's agent does); a real Linux guest is the other
(:class:`~cpuplug.guest.linux_os.LinuxOS`). ``Agent(kernel, channel)`` is shorthand for
``Agent(ModelOS(kernel, channel))``.

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

Two kinds of channel (``AgentOS.channel.one_stream``)
------------------------------------------------------
*Connections* (the built-in machine's channel, virtio-vsock's role): any number of
host connections. ``hw.Stream`` offers only a blocking ``recv`` with a timeout, no
readiness polling, so one thread cannot wait on several connections without polling
latency. The agent therefore runs exactly: one acceptor thread, one event-sender
thread, and one reader thread per open connection, with at most
:data:`MAX_CONNECTIONS` connections (a further one gets an ``EBUSY`` error reply and
is closed). That is at most ``2 + MAX_CONNECTIONS`` threads however many vCPUs the
guest has or how many requests arrive. Requests that hold their connection for long
(``ExecProcess``, ``SubscribeEvents``) may occupy all but :data:`CONTROL_RESERVE` of
them; one more gets ``EBUSY`` on the request, so the runtime's control calls (an
update's ``OnlineCPUMem``, ``UpdateContainer``) always find a connection however many
execs run (issue 8, D2: an update failed half-way with "too many agent connections"
while 16 execs ran). Requests of one connection are handled in order on its reader
thread.

*One stream* (virtio-serial: the port is one byte stream for every host client, see
docs/agent-protocol.md "One stream"): one host session at a time, whose requests are
each handled on a thread of their own and answered as they finish, by id, so a long
``ExecProcess`` never holds up an ``OnlineCPUMem``. At most :data:`MAX_IN_FLIGHT`
requests run at once, of which long-running ones (``ExecProcess``) all but
:data:`CONTROL_RESERVE`; a request beyond that gets ``EBUSY``. Threads: acceptor, event
sender, the session's reader and at most ``MAX_IN_FLIGHT`` request threads. Broken
framing is skipped over (:mod:`cpuplug.guest.frame_resync`), never answered with an
error that has no id (nobody could tell whose it was); replies of a session that ended
are dropped.

Event fan-out never blocks the kernel: the kernel's callback only appends to a
bounded per-subscriber queue; a subscriber that lets :data:`EVENT_QUEUE_LIMIT`
events pile up is disconnected (on one stream: unsubscribed, since the stream also
carries replies).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from cpuplug import agent_protocol as ap
from cpuplug.guest.agent_os import (
    AgentOS,
    AgentProcess,
    OSEvent,
    ProcessIO,
    ProgramNotFound,
    StreamedProcess,
)
from cpuplug.guest.cgroup import DEFAULT_PERIOD_US, parse_cpu_max
from cpuplug.guest.frame_resync import ResyncDecoder
from cpuplug.guest.vfs import GuestOSError
from cpuplug.hw import AgentChannel, Stream

if TYPE_CHECKING:
    from cpuplug.guest.model_os import BootedKernel, ModelKernel

__all__ = ["MAX_CONNECTIONS", "MAX_IN_FLIGHT", "Agent", "start"]

MAX_CONNECTIONS = 16
MAX_IN_FLIGHT = 16
"""Requests handled at once on a one-stream channel (each on its own thread)."""
CONTROL_RESERVE = 4
"""Connections (on one stream: request threads) long-running requests may never take:
kept for control calls."""
_LONG_RUNNING = frozenset(
    {
        ap.Method.EXEC_PROCESS,
        ap.Method.SUBSCRIBE_EVENTS,
        ap.Method.READ_PROCESS,
        ap.Method.WRITE_STDIN,
    }
)
EVENT_QUEUE_LIMIT = 1024
ONLINE_RETRIES = 100  # Kata: 100 retries ...
ONLINE_RETRY_INTERVAL = 0.05  # ... 50 ms apart (~5 s)
EXEC_DEFAULT_TIMEOUT = 60.0  # Kata's defaultRequestTimeout
READ_DEFAULT_TIMEOUT = 10.0
"""``ReadProcess``'s wait when the host gives none (seconds)."""
READ_DEFAULT_BYTES = 64 * 1024
WRITE_TIMEOUT = 5.0
"""Longest ``WriteStdin`` wait for a process that does not read (then a short count)."""
KEPT_EXECS = 64
"""Finished execs a container keeps for a late ``ReadProcess`` (their exit status)."""
KILL_WAIT = 5.0
EXEC_MAX_TIMEOUT = 365 * 24 * 3600.0
"""Longest ExecProcess timeout, in seconds: beyond it (or ``1e999`` = infinity) the
wait itself cannot be expressed (``OverflowError``), so it is refused up front."""
RECV_CHUNK = 64 * 1024
POLL = 0.25  # how often blocked threads re-check the stop flag (stop also closes streams)
CPU_STAT_KEYS = (
    "usage_usec",
    "user_usec",
    "system_usec",
    "nr_periods",
    "nr_throttled",
    "throttled_usec",
)
"""The ``cpu.stat`` fields ``StatsContainer`` reports (a kernel may have more, or
only the first three when the cpu controller is off: those count as 0)."""

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
    errno.EFBIG: ap.ErrorCode.EINVAL,
    errno.EEXIST: ap.ErrorCode.EEXIST,
    errno.ETIMEDOUT: ap.ErrorCode.ETIMEDOUT,
    errno.ENOSYS: ap.ErrorCode.ENOSYS,
}


def _os_error(exc: GuestOSError, what: str = "") -> ap.ProtocolError:
    code = _ERRNO_CODE.get(exc.errno, ap.ErrorCode.EIO)
    return ap.ProtocolError(code, f"{what}{exc}")


@dataclass
class Container:
    """A container: its cgroup (named by its id), its command, and its first process.

    ``io`` is set for a container created with ``streams``: its init's stdio is then
    relayed to the host (``ReadProcess``...) like an exec's.  ``execs`` are the
    processes ``StartProcess`` started, by exec id, until the container is removed
    (finished ones beyond :data:`KEPT_EXECS` are forgotten, oldest first).
    """

    id: str
    cmd: list[str]
    init: AgentProcess | None = None
    io: ProcessIO | None = None
    root: str | None = None
    """Where its root filesystem is mounted (``rootfs_disk``), or None."""
    streamed_init: StreamedProcess | None = None
    execs: dict[str, StreamedProcess | None] = field(default_factory=dict)
    """``None`` marks an exec id being started."""


class _Conn:
    """One host connection (on one stream: one host session): its stream, a send lock,
    and its event queue if subscribed."""

    def __init__(self, stream: Stream, *, one_stream: bool = False) -> None:
        self.stream = stream
        self.one_stream = one_stream
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
        system: AgentOS | ModelKernel,
        channel: AgentChannel | None = None,
        *,
        online_retries: int = ONLINE_RETRIES,
        retry_interval: float = ONLINE_RETRY_INTERVAL,
        max_connections: int = MAX_CONNECTIONS,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        if channel is not None:
            # The model's shorthand; imported here so a real-Linux agent never loads
            # the model's scheduler and userland.
            from cpuplug.guest.model_os import ModelOS

            self.os: AgentOS = ModelOS(cast("ModelKernel", system), channel)
        else:
            self.os = cast(AgentOS, system)
        self.online_retries = online_retries
        self.retry_interval = retry_interval
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the tables below
        self._sandbox = threading.Lock()  # Kata's sandbox lock: container/CPU changes
        self._conns: set[_Conn] = set()
        self._containers: dict[str, Container] = {}
        self._events_cv = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._workers: set[threading.Thread] = set()
        self._long_in_flight = 0
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
            ap.Method.START_PROCESS: self._start_process,
            ap.Method.READ_PROCESS: self._read_process,
            ap.Method.WRITE_STDIN: self._write_stdin,
            ap.Method.SIGNAL_PROCESS: self._signal_process,
            ap.Method.RESIZE_TERMINAL: self._resize_terminal,
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Agent:
        self._unsubscribe = self.os.subscribe_events(self._on_kernel_event)
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
            workers = list(self._workers)
            self._events_cv.notify_all()
        for conn in conns:
            conn.close()
        deadline = time.monotonic() + timeout
        readers = [c.thread for c in conns if c.thread is not None]
        for t in [*self._threads, *readers, *workers]:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    def thread_count(self) -> int:
        """Live agent threads (for the bound stated in the module doc)."""
        with self._lock:
            readers = [c.thread for c in self._conns if c.thread is not None]
            workers = list(self._workers)
        return sum(1 for t in [*self._threads, *readers, *workers] if t.is_alive())

    def containers(self) -> list[str]:
        with self._lock:
            return sorted(self._containers)

    # ------------------------------------------------------------------ threads

    def _accept_loop(self) -> None:
        one_stream = self.os.channel.one_stream
        while not self._stop.is_set():
            stream = self.os.channel.accept(POLL)
            if stream is None:
                continue
            conn = _Conn(stream, one_stream=one_stream)
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
        decoder = ResyncDecoder() if conn.one_stream else ap.FrameDecoder()
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
                if isinstance(decoder, ResyncDecoder):
                    for body in decoder.feed(data):
                        self._dispatch(conn, body)
                    self._note_skipped(decoder)
                    continue
                try:
                    bodies = decoder.feed(data)
                except ap.FrameError as exc:
                    conn.send(ap.error_from_exception(exc))
                    break
                for body in bodies:
                    if not self._handle_frame(conn, body):
                        return
        finally:
            if isinstance(decoder, ResyncDecoder):
                decoder.reset()
                self._note_skipped(decoder, "at the end of the session")
            conn.close()
            with self._lock:
                self._conns.discard(conn)

    def _handle_frame(self, conn: _Conn, body: bytes) -> bool:
        """Answer one frame of a connection, in order; False when it must be closed."""
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
            reply = self._answer(conn, request)
        finally:
            with self._lock:  # a subscription keeps holding its connection
                conn.long_running = conn.subscribed
        return conn.send(reply)

    def _dispatch(self, conn: _Conn, body: bytes) -> None:
        """One stream: start one frame's request on a thread of its own.

        A frame that yields no request id cannot be answered usefully (on a stream
        shared by every host client nobody could tell whose error it was): it is
        logged and dropped. Everything else is answered, by id, as it finishes.
        """
        try:
            request = ap.parse_request(ap.parse_body(body))
        except ap.ProtocolError as exc:
            if exc.req_id is None:
                self._log(f"agent: dropped a frame without a usable request id: {exc.message}")
            else:
                conn.send(ap.error_from_exception(exc))
            return
        if request.method is ap.Method.SUBSCRIBE_EVENTS:
            self._start_events(conn, request.id)  # holds no thread: events have their own
            return
        long_running = request.method in _LONG_RUNNING
        with self._lock:
            running = len(self._workers)
            busy = running >= self.max_in_flight or (
                long_running and self._long_in_flight >= self.max_in_flight - CONTROL_RESERVE
            )
            if not busy:
                worker = threading.Thread(
                    target=self._run_request,
                    args=(conn, request, long_running),
                    name="agent-request",
                    daemon=True,
                )
                self._workers.add(worker)
                self._long_in_flight += long_running
        if busy:
            why = (
                f"{self._long_in_flight} long-running requests in flight; "
                f"{CONTROL_RESERVE} request slots stay reserved for control calls"
                if long_running and running < self.max_in_flight
                else f"{running} requests in flight (at most {self.max_in_flight})"
            )
            conn.send(ap.make_error(request.id, ap.ErrorCode.EBUSY, f"too many requests: {why}"))
            return
        worker.start()

    def _run_request(self, conn: _Conn, request: ap.Request, long_running: bool) -> None:
        try:
            conn.send(self._answer(conn, request))  # dropped if its session ended meanwhile
        finally:
            with self._lock:
                self._workers.discard(threading.current_thread())
                self._long_in_flight -= long_running

    def _answer(self, conn: _Conn, request: ap.Request) -> dict[str, Any]:
        """The reply to one request: its result, or the error it ended with."""
        try:
            return ap.make_reply(request.id, self._handlers[request.method](conn, request.params))
        except ap.ProtocolError as exc:
            return ap.error_from_exception(exc, request.id)
        except GuestOSError as exc:
            return ap.error_from_exception(_os_error(exc), request.id)
        except Exception as exc:  # a bug must cost one request, never the agent
            self._log(f"agent: {request.method} failed: {exc!r}")
            return ap.make_error(request.id, ap.ErrorCode.EIO, f"internal error: {exc!r}")

    def _note_skipped(self, decoder: ResyncDecoder, when: str = "") -> None:
        skipped = decoder.take_skipped()
        if skipped:
            where = f" {when}" if when else ""
            self._log(f"agent: skipped {skipped} bytes of broken framing{where}")

    def _on_kernel_event(self, event: OSEvent) -> None:
        """Kernel callback: queue the event for every subscriber, never blocking."""
        message = ap.make_event(event.name, event.data, event.timestamp)
        drop: list[_Conn] = []
        with self._lock:
            for conn in self._conns:
                if not conn.subscribed:
                    continue
                if len(conn.events) >= EVENT_QUEUE_LIMIT:
                    drop.append(conn)
                    if conn.one_stream:  # the stream carries replies too: only stop events
                        conn.subscribed = False
                        conn.events.clear()
                    continue
                conn.events.append(message)
            self._events_cv.notify_all()
        for conn in drop:
            if conn.one_stream:
                self._log("agent: event subscriber not reading; events unsubscribed")
            else:
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
        self.os.log(text)

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
            io = _process_io(p) if p.get("streams") else None
            if io is None and any(k in p for k in [*ap.PROCESS_IO, "rootfs_disk"]):
                raise ap.ProtocolError(
                    ap.ErrorCode.EINVAL,
                    "CreateContainer: env, cwd, terminal and rootfs_disk need 'streams' "
                    "(the init's stdio relayed to the host)",
                )
            self.os.create_cgroup(cid)
            root = None
            try:
                self._apply_resources(cid, p)
                if "rootfs_disk" in p:
                    try:
                        root = self.os.mount_rootfs(cid, p["rootfs_disk"])
                    except GuestOSError as exc:
                        raise _os_error(exc, "rootfs: ") from None
            except BaseException:
                self.os.remove_cgroup(cid)  # leave nothing half made
                raise
            if io is not None and root is not None:
                io = replace(io, root=root)
            if io is not None and p["cmd"] and not self.os.find_program(p["cmd"][0], io):
                # runc's create fails here too: a start that fails leaves docker with a
                # task it never deletes
                if root is not None:
                    self.os.unmount_rootfs(cid)
                self.os.remove_cgroup(cid)
                raise ap.ProtocolError(
                    ap.ErrorCode.ENOENT,
                    f"exec {p['cmd'][0]!r}: executable file not found in $PATH",
                )
            with self._lock:
                self._containers[cid] = Container(cid, list(p["cmd"]), io=io, root=root)
        return {}

    def _start_container(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        with self._sandbox:
            c = self._container(p["container_id"])
            if c.init is not None:
                raise ap.ProtocolError(ap.ErrorCode.EBUSY, f"container {c.id!r} already started")
            if not c.cmd:
                raise ap.ProtocolError(ap.ErrorCode.EINVAL, f"container {c.id!r} has no command")
            if c.io is not None:
                c.streamed_init = self._spawn_streamed(c, c.cmd, init=True, io=c.io)
                c.init = c.streamed_init
            else:
                c.init = self._spawn(c, c.cmd, init=True)
            return {"pid": c.init.pid}

    def _spawn(self, c: Container, cmd: list[str], *, init: bool) -> AgentProcess:
        try:
            return self.os.spawn(c.id, cmd, init=init)
        except ProgramNotFound as exc:
            raise ap.ProtocolError(
                ap.ErrorCode.ENOENT, f"exec {exc.path!r}: executable file not found"
            ) from None
        except GuestOSError as exc:
            raise _os_error(exc, "exec: ") from None

    def _spawn_streamed(
        self, c: Container, cmd: list[str], *, init: bool, io: ProcessIO
    ) -> StreamedProcess:
        try:
            return self.os.spawn_streamed(c.id, cmd, init=init, io=io)
        except ProgramNotFound as exc:
            raise ap.ProtocolError(
                ap.ErrorCode.ENOENT, f"exec {exc.path!r}: executable file not found"
            ) from None
        except GuestOSError as exc:
            raise _os_error(exc, "exec: ") from None

    # ------------------------------------------------------------------ streamed processes

    def _start_process(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        c = self._container(p["container_id"])
        eid: str = p["exec_id"]
        with self._lock:
            if eid in c.execs:
                raise ap.ProtocolError(
                    ap.ErrorCode.EEXIST, f"exec {eid!r} exists in container {c.id!r}"
                )
            c.execs[eid] = None  # reserved while it starts
        try:
            io = replace(_process_io(p), root=c.root)
            proc = self._spawn_streamed(c, list(p["cmd"]), init=False, io=io)
        except BaseException:
            with self._lock:
                c.execs.pop(eid, None)
            raise
        with self._lock:
            c.execs[eid] = proc
            finished = [k for k, e in c.execs.items() if e is not None and e.exit_code is not None]
            for k in finished[: max(0, len(finished) - KEPT_EXECS)]:
                gone = c.execs.pop(k)
                if gone is not None:
                    gone.close()
        return {"pid": proc.pid}

    def _streamed(self, p: dict[str, Any]) -> StreamedProcess:
        """The process a streamed-process request names: an exec, or the init."""
        c = self._container(p["container_id"])
        eid = p.get("exec_id")
        with self._lock:
            proc = c.execs.get(eid) if eid is not None else c.streamed_init
        if proc is not None:
            return proc
        if eid is not None:
            raise ap.ProtocolError(ap.ErrorCode.ENOENT, f"no exec {eid!r} in container {c.id!r}")
        if c.io is None:
            raise ap.ProtocolError(
                ap.ErrorCode.EINVAL,
                f"container {c.id!r} was created without streams: its init writes to the "
                "console",
            )
        raise ap.ProtocolError(ap.ErrorCode.ENOENT, f"container {c.id!r} has not started")

    def _read_process(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        proc = self._streamed(p)
        chunk = proc.read_output(
            int(p.get("max_bytes", READ_DEFAULT_BYTES)),
            float(p.get("timeout", READ_DEFAULT_TIMEOUT)),
        )
        return {
            "stdout": base64.b64encode(chunk.stdout).decode("ascii"),
            "stderr": base64.b64encode(chunk.stderr).decode("ascii"),
            "exit_code": chunk.exit_code,
        }

    def _write_stdin(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        proc = self._streamed(p)
        data = base64.b64decode(p["data"])
        written = 0
        try:
            if data:
                written = proc.write_input(data, WRITE_TIMEOUT)
            if p.get("close") and written == len(data):
                proc.close_input()
        except GuestOSError as exc:
            raise _os_error(exc, "write stdin: ") from None
        return {"written": written}

    def _signal_process(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        proc = self._streamed(p)
        if proc.exit_code is None:
            proc.signal(p["signal"])
        return {}

    def _resize_terminal(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        proc = self._streamed(p)
        try:
            proc.resize(p["rows"], p["cols"])
        except GuestOSError as exc:
            raise _os_error(exc, "resize: ") from None
        return {}

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
        argv = list(p["cmd"])
        proc = self._spawn(c, argv, init=False)
        if not proc.wait(timeout):
            proc.kill(9)
            proc.wait(KILL_WAIT)
            raise ap.ProtocolError(
                ap.ErrorCode.ETIMEDOUT,
                f"{' '.join(argv)!r} did not finish within {timeout:g}s; killed",
            )
        stdout, stderr = proc.output()
        return {"exit_code": proc.exit_code, "stdout": stdout, "stderr": stderr}

    def _kill_container(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        c = self._container(p["container_id"])
        self.os.kill_cgroup(c.id, p.get("signal", 15))
        return {}

    def _remove_container(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        with self._sandbox:
            c = self._container(p["container_id"])
            self.os.kill_cgroup(c.id, 9)
            self.os.wait_cgroup_empty(c.id, KILL_WAIT)
            self.os.remove_cgroup(c.id)  # EBUSY if something still runs
            if c.root is not None:
                self.os.unmount_rootfs(c.id)
            with self._lock:
                del self._containers[c.id]
                streamed = [c.streamed_init, *c.execs.values()]
            for proc in streamed:
                if proc is not None:
                    proc.close()
        return {}

    # ------------------------------------------------------------------ resources

    def _apply_resources(self, cid: str, r: dict[str, Any]) -> None:
        """Write ``cpuset.cpus`` and ``cpu.max`` through the cgroup files, checking first.

        ``cpu.max`` is parsed before anything is written, so a request that the
        kernel would refuse changes nothing.
        """
        cpu_max: str | None = None
        quota, period = r.get("quota"), r.get("period")
        if quota is not None or period is not None:
            try:
                current = self.os.read_cgroup(cid, "cpu.max")
            except GuestOSError as exc:
                raise _os_error(exc, "read ") from None
            current_quota, current_period = parse_cpu_max(current, DEFAULT_PERIOD_US)
            period_us = period if period is not None else current_period
            if quota is None:
                quota_text = "max" if current_quota is None else str(current_quota)
            else:
                quota_text = "max" if quota < 0 else str(quota)
            cpu_max = f"{quota_text} {period_us}"
            try:
                parse_cpu_max(cpu_max, current_period)
            except GuestOSError as exc:
                raise ap.ProtocolError(
                    ap.ErrorCode.EINVAL,
                    f"cpu.max {cpu_max!r}: {exc.strerror} (period 1000..1000000 us,"
                    " quota >= 1000 us or negative for max)",
                ) from None
        try:
            if "cpuset_cpus" in r:
                self.os.write_cgroup(cid, "cpuset.cpus", r["cpuset_cpus"] + "\n")
            if cpu_max is not None:
                self.os.write_cgroup(cid, "cpu.max", cpu_max + "\n")
        except GuestOSError as exc:
            raise _os_error(exc, "write ") from None

    def _update_container(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        with self._sandbox:
            c = self._container(p["container_id"])
            self._apply_resources(c.id, p["resources"])
        return {}

    def _stats_container(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        c = self._container(p["container_id"])
        fields: dict[str, int] = {}
        for line in self.os.read_cgroup(c.id, "cpu.stat").splitlines():
            key, _, value = line.partition(" ")
            if key in CPU_STAT_KEYS and value.strip().isdigit():
                fields[key] = int(value)
        effective = ap.parse_cpu_list(self.os.read_cgroup(c.id, "cpuset.cpus.effective"))
        return {
            "cpu": {key: fields.get(key, 0) for key in CPU_STAT_KEYS},
            "cpuset_effective": ap.format_cpu_list(effective),
            "tasks": len(self.os.cgroup_pids(c.id)),
        }

    # ------------------------------------------------------------------ CPUs

    def _online_cpu_mem(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        want: int = p["nb_cpus"]
        possible = len(self.os.cpus("possible"))
        if want > possible:
            # Can never be met: answer now, not after every retry (Kata retries).
            raise ap.ProtocolError(
                ap.ErrorCode.EINVAL,
                f"OnlineCPUMem: 'nb_cpus' {want} exceeds the {possible} possible CPUs",
            )
        with self._sandbox:
            if want > 0:
                self._online_cpus(want)
                self._set_container_cpusets(self.os.cpus("online"))
            return {"online": sorted(self.os.cpus("online"))}

    def _registered_offline(self) -> list[int]:
        """Registered CPUs (a ``cpuN/online`` file exists) reading 0, ascending numerically."""
        return sorted(cpu for cpu, online in self.os.hotpluggable_cpus().items() if not online)

    def _online_cpus(self, want: int) -> None:
        """Kata's ``online_cpus``: bounded retries, ascending order, stop once enough."""
        if len(self.os.cpus("online")) >= want:
            return
        last_error: tuple[int, GuestOSError] | None = None
        for attempt in range(self.online_retries):
            if attempt and self._stop.wait(self.retry_interval):
                break
            for cpu in self._registered_offline():
                try:
                    self.os.set_cpu_online(cpu, True)
                except GuestOSError as exc:
                    last_error = (cpu, exc)
                    continue
                if len(self.os.cpus("online")) >= want:
                    return
            if len(self.os.cpus("online")) >= want:
                return
        missing = want - len(self.os.cpus("online"))
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
                self._set_container_cpusets(self.os.cpus("online"))
            return {"online": sorted(self.os.cpus("online"))}

    def _offline_down_to(self, want: int) -> None:
        for cpu in sorted(self.os.cpus("online") - {0}, reverse=True):
            if len(self.os.cpus("online")) <= want:
                return
            try:
                self.os.set_cpu_online(cpu, False)
            except GuestOSError as exc:
                raise _os_error(exc, f"offline cpu{cpu}: ") from None

    def _set_container_cpusets(self, online: frozenset[int]) -> None:
        """Kata: after onlining, every container's cpuset becomes the guest's online CPUs."""
        text = ap.format_cpu_list(online) + "\n"
        with self._lock:
            containers = list(self._containers.values())
        for c in containers:
            try:
                self.os.write_cgroup(c.id, "cpuset.cpus", text)
            except GuestOSError as exc:  # Kata warns and goes on; so do we
                self._log(f"agent: could not update cpuset of {c.id}: {exc}")

    # ------------------------------------------------------------------ files

    def _read_file(self, _conn: _Conn, p: dict[str, Any]) -> dict[str, Any]:
        path: str = p["path"]
        try:
            return {"data": self.os.read_file(path)}
        except GuestOSError as exc:
            raise _os_error(exc, "cat: ") from None

    def _guest_details(self, _conn: _Conn, _p: dict[str, Any]) -> dict[str, Any]:
        details: dict[str, Any] = {
            name: ap.format_cpu_list(self.os.cpus(name))
            for name in ("possible", "present", "online", "offline", "enabled")
        }
        try:
            version = self.os.read_file("/proc/version").split()
            details["kernel"] = version[2] if len(version) > 2 else " ".join(version)
        except GuestOSError:
            details["kernel"] = "unknown"
        return details

    def _subscribe_events(self, _conn: _Conn, _p: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("handled by _start_events")  # pragma: no cover


def _process_io(p: dict[str, Any]) -> ProcessIO:
    env = p.get("env")
    return ProcessIO(
        env=tuple(env) if env is not None else None,
        cwd=p.get("cwd"),
        terminal=bool(p.get("terminal", False)),
    )


def start(kernel: BootedKernel) -> Agent:
    """Kernel hook: serve the agent on ``kernel.machine.agent_channel``; returns at once."""
    from cpuplug.guest.model_os import ModelOS

    return Agent(ModelOS(kernel, kernel.machine.agent_channel)).start()

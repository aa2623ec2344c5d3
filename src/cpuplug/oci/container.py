"""The containers of one ``--root``: what each runc command does, over cpuplug's runtime.

A container is a sandbox (:class:`cpuplug.runtime.sandbox.Runtime`: a VM with one
container in it, its process created but not started until ``start``) plus a shim
(:mod:`cpuplug.oci.shim`) that stands for that process on the host. Everything a later
command needs is in the container's :class:`~cpuplug.oci.state.OciState`; every command
that changes a container holds its lock (bounded), so concurrent calls for one container
are serialised.

Where this departs from runc is said at each method and in docs/oci.md.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import subprocess
import sys
import termios
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from cpuplug import agent_protocol as ap
from cpuplug.errors import CpuplugError
from cpuplug.oci import console, hooks, rootfs
from cpuplug.oci.log import RuncLog
from cpuplug.oci.relay import Relay
from cpuplug.oci.spec import Process, read_bundle
from cpuplug.oci.state import (
    ContainerNotFound,
    Identity,
    OciError,
    OciState,
    Status,
    Store,
    rfc3339_now,
    sandbox_name,
    validate_id,
)
from cpuplug.runtime.agent_client import AgentClient
from cpuplug.runtime.config import RuntimeConfig
from cpuplug.runtime.process import ProcessIdentity
from cpuplug.runtime.records import SandboxStatus
from cpuplug.runtime.sandbox import Resources, RunRequest, Runtime
from cpuplug.runtime.state import SandboxNotFound

OCI_VERSION = "1.0.2"
SHIM_READY_TIMEOUT = 30.0
"""Longest wait for a new shim to say it is ready (a fresh Python on a loaded host)."""
SHIM_EXIT_WAIT = 5.0
CREATE_HOOKS = ("prestart", "createRuntime", "createContainer")
START_HOOKS = ("startContainer", "poststart")


class _Shim(subprocess.Popen[bytes]):
    """A shim this process started: waited for here only by ``run`` in the foreground and
    when it never said it was ready; otherwise it is the caller's to reap.

    containerd-shim-runc-v2 is a child subreaper: the shim that ``create`` or ``exec
    --detach`` leaves behind is re-parented to it when this command exits, and it takes
    the container's (or the exec's) exit status from that shim with ``waitpid``. Popen's
    finalizer polls its child (``waitpid(WNOHANG)``) when the object goes away, which is
    when the command returns; a shim that had already ended by then (a quick exec such as
    ``nproc``, relayed whole while the command still ran, on a loaded host) was reaped
    here, its status lost, and ``docker exec`` waited for an exit that never came. runc
    leaves its ``runc init`` to the subreaper the same way.
    """

    def __del__(self) -> None:
        pass  # never reap behind the subreaper's back (see the class doc)


@dataclass(frozen=True)
class Stdio:
    """The descriptors a shim or a foreground relay gets (None: inherit this process's)."""

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None


class Containers:
    """The containers under one runc ``--root``."""

    def __init__(
        self,
        root: Path,
        config: RuntimeConfig,
        log: RuncLog,
        sandbox_root: Path | None = None,
    ) -> None:
        self.store = Store(root)
        self.config = config
        self.log = log
        self.sandbox_root = sandbox_root
        """Where new sandboxes go (None: the runtime's default, ``$CPUPLUG_ROOT``...)."""
        self._children: dict[int, _Shim] = {}
        """Shims this process started (``run`` waits for its own; the rest are never
        reaped here, see :class:`_Shim`)."""

    # ------------------------------------------------------------------ helpers

    def runtime(self, st: OciState | None = None) -> Runtime:
        """The runtime holding ``st``'s sandbox (a new container's: ``--sandbox-root``,
        else the runtime's default root)."""
        return Runtime(st.sandbox_root if st is not None else self.sandbox_root, self.config)

    def status(self, st: OciState, *, locked: bool = False) -> Status:
        """What the container is now: ``stopped`` once its shim or its VMM is gone."""
        stored = Status(st.status)
        if stored is Status.CREATING:
            busy = not locked and self.store.locked_by_other(st.id)
            return Status.CREATING if busy else Status.STOPPED  # else: its create was killed
        if st.shim is None or not st.shim.alive() or not self._vm_running(st):
            return Status.STOPPED
        return stored

    def _vm_running(self, st: OciState) -> bool:
        rt = self.runtime(st)
        try:
            return rt.status(rt.store.load(st.sandbox)) is SandboxStatus.RUNNING
        except CpuplugError:
            return False

    def _vmm(self, st: OciState) -> ProcessIdentity | None:
        rt = self.runtime(st)
        try:
            sb = rt.store.load(st.sandbox)
        except CpuplugError:
            return None
        if sb.vmm_pid is None:
            return None
        ident = ProcessIdentity(sb.vmm_pid, sb.vmm_start_ticks, sb.vmm_exe)
        return ident if ident.matches() else None

    def _agent(self, st: OciState) -> AgentClient:
        path = self.runtime(st).store.socket_path(st.sandbox, "agent")
        try:
            return AgentClient(path).connect()
        except CpuplugError as exc:
            raise OciError(f"container {st.id}: its VM does not answer: {exc}") from None

    @contextlib.contextmanager
    def _locked(self, cid: str) -> Iterator[OciState]:
        validate_id(cid)
        with self.store.lock(cid):
            yield self.store.load(cid)

    def _shims(self, st: OciState) -> list[Identity]:
        return [i for i in [st.shim, *st.execs] if i is not None and i.alive()]

    # ------------------------------------------------------------------ create / start

    def create(
        self,
        cid: str,
        bundle: Path,
        pid_file: Path | None,
        console_socket: Path | None,
        stdio: Stdio = Stdio(),
    ) -> OciState:
        """A sandbox sized from ``linux.resources.cpu``, its process created, not started;
        the shim's pid in ``pid_file``."""
        validate_id(cid)
        bundle = bundle.resolve()
        spec = read_bundle(bundle)
        _check_terminal(spec.process, console_socket)
        rt = self.runtime()
        name = sandbox_name(self.store.root, cid)
        self.store.create(cid)
        st = OciState(
            id=cid,
            bundle=str(bundle),
            rootfs=spec.root,
            created=rfc3339_now(),
            sandbox=name,
            sandbox_root=str(rt.store.root),
            hypervisor=self.config.hypervisor,
            terminal=spec.process.terminal,
            annotations=spec.annotations,
        )
        try:
            with self.store.lock(cid):
                self.store.save(st)
                t0 = time.monotonic()
                options: dict[str, Any] = {"streams": True, **spec.process.options()}
                vm: dict[str, str] = {}
                if self.config.hypervisor == "qemu":  # the image's own programs in the guest
                    image = self.store.dir(cid) / "rootfs.ext4"
                    rootfs.make_image(Path(spec.root), image)
                    self.log.debug(f"rootfs image in {time.monotonic() - t0:.2f}s")
                    vm = {"rootfs_disk": str(image), "rootfs_serial": rootfs.SERIAL}
                    options["rootfs_disk"] = rootfs.SERIAL
                rt.run(
                    RunRequest(
                        cmd=spec.process.args,
                        resources=spec.resources,
                        name=name,
                        container_options=options,
                        vm_options=vm,
                    ),
                    start=False,
                )
                self.log.debug(f"sandbox {name} ready in {time.monotonic() - t0:.2f}s")
                os.mkfifo(self.store.fifo(cid), 0o600)
                st.shim = self._spawn_shim(st, None, console_socket, stdio)
                self.store.save(st)
                state = hooks.hook_state(cid, "created", st.shim.pid, st.bundle, st.annotations)
                hooks.run_hooks(spec.hooks, CREATE_HOOKS, state)
                if pid_file is not None:
                    write_pid_file(pid_file, st.shim.pid)
                st.status = Status.CREATED.value
                self.store.save(st)
        except BaseException:
            with contextlib.suppress(CpuplugError, OSError):
                self._destroy(st)
            raise
        return st

    def start(self, cid: str) -> None:
        """Start the container's process (the agent's ``StartContainer``), then wake its
        shim, which starts relaying."""
        with self._locked(cid) as st:
            status = self.status(st, locked=True)
            if status is Status.STOPPED:
                raise OciError("cannot start a container that has stopped")
            if status is not Status.CREATED:
                raise OciError("cannot start an already running container")
            try:
                self.runtime(st).start(st.sandbox)
            except CpuplugError as exc:
                self._wake_shim(st, b"0")
                message = exc.message if isinstance(exc, ap.ProtocolError) else str(exc)
                raise OciError(f"unable to start container process: {message}") from None
            self._wake_shim(st, b"1")
            st.status = Status.RUNNING.value
            self.store.save(st)
        self._hooks(st, START_HOOKS)

    def _wake_shim(self, st: OciState, word: bytes) -> None:
        fifo = self.store.fifo(st.id)
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:  # ENXIO: no shim is reading
            raise OciError(f"container {st.id}: its shim is gone ({exc.strerror})") from None
        try:
            os.write(fd, word)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            fifo.unlink()

    def _hooks(self, st: OciState, kinds: tuple[str, ...]) -> None:
        """Hooks whose failure is only a warning (the spec's poststart, poststop)."""
        try:
            spec = read_bundle(Path(st.bundle))
            pid = st.shim.pid if st.shim is not None else 0
            state = hooks.hook_state(st.id, self.status(st).value, pid, st.bundle, st.annotations)
            hooks.run_hooks(spec.hooks, kinds, state)
        except CpuplugError as exc:
            self.log.warning(str(exc))

    def _spawn_shim(
        self,
        st: OciState,
        exec_id: str | None,
        console_socket: Path | None,
        stdio: Stdio,
    ) -> Identity:
        """Start a shim for the init (``exec_id`` None) or an exec; returns once it is
        ready. With ``console_socket`` the shim gets a new terminal's slave and the
        caller the master, sent over that socket."""
        ready_r, ready_w = os.pipe()
        argv = [
            sys.executable, "-m", "cpuplug.oci.shim",
            "--root", str(self.store.root), "--id", st.id,
            "--sandbox-root", st.sandbox_root, "--sandbox", st.sandbox,
            "--ready-fd", str(ready_w),
        ]  # fmt: skip
        if exec_id is not None:
            argv += ["--exec", exec_id]
        else:
            argv.append("--netns")
        streams: tuple[int | None, int | None, int | None] = (
            stdio.stdin,
            stdio.stdout,
            stdio.stderr,
        )
        slave = None
        if console_socket is not None:
            master, slave = console.open_pty()
            try:
                console.send_master(console_socket, master, os.ttyname(slave))
            finally:
                os.close(master)
            argv.append("--tty")
            streams = (slave, slave, slave)
        try:
            proc = _Shim(
                argv,
                stdin=streams[0],
                stdout=streams[1],
                stderr=streams[2],
                pass_fds=(ready_w,),
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(ready_w)
            if slave is not None:
                os.close(slave)
        try:
            said = _read_line(ready_r, SHIM_READY_TIMEOUT)
        finally:
            os.close(ready_r)
        self._children[proc.pid] = proc
        ident = Identity.of(proc.pid, exec_id)
        if said != b"ready" or ident is None:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(SHIM_EXIT_WAIT)
            log = self.store.dir(st.id) / "shim.log"
            raise OciError(f"container {st.id}: the shim did not start (see {log})")
        return ident

    # ------------------------------------------------------------------ state

    def state(self, cid: str) -> dict[str, Any]:
        """runc's ``state`` JSON."""
        validate_id(cid)
        st = self.store.load(cid)
        status = self.status(st)
        out: dict[str, Any] = {
            "ociVersion": OCI_VERSION,
            "id": st.id,
            "pid": st.shim.pid if st.shim is not None and status is not Status.STOPPED else 0,
            "status": status.value,
            "bundle": st.bundle,
            "rootfs": st.rootfs,
            "created": st.created,
            "owner": st.owner,
        }
        if st.annotations:
            out["annotations"] = st.annotations
        return out

    def list_states(self) -> list[dict[str, Any]]:
        out = []
        for cid in self.store.ids():
            try:
                out.append(self.state(cid))
            except CpuplugError as exc:
                self.log.warning(f"{cid}: {exc}")
        return out

    def ps(self, cid: str) -> list[int]:
        """The host processes that stand for the container's: its shims."""
        validate_id(cid)
        st = self.store.load(cid)
        if self.status(st) is Status.STOPPED:
            return []
        return [i.pid for i in self._shims(st)]

    # ------------------------------------------------------------------ signals

    def kill(self, cid: str, signo: int, all_processes: bool = False) -> None:
        """runc's ``kill``: the init (``--all``: every process of the container). A
        created container's init is its shim; a paused one's VM is thawed for the
        delivery and frozen again (runc queues the signal in the frozen cgroup)."""
        with self._locked(cid) as st:
            status = self.status(st, locked=True)
            if status is Status.STOPPED:
                raise OciError("container not running")
            if status is Status.CREATED:
                if st.shim is not None and st.shim.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(st.shim.pid, signo)
                return
            paused = status is Status.PAUSED
            if paused:
                self._thaw(st)
            try:
                agent = self._agent(st)
                try:
                    if all_processes:
                        agent.kill_container(st.sandbox, signo)
                    else:
                        agent.signal_process(st.sandbox, None, signo)
                except ap.AgentError as exc:
                    raise OciError(f"kill: {exc.message}") from None
                finally:
                    agent.close()
            finally:
                if paused and signo != signal.SIGKILL:
                    self._freeze(st)

    # ------------------------------------------------------------------ delete

    def delete(self, cid: str, force: bool = False) -> None:
        """Remove a stopped or created container (``force``: any): its shims are killed,
        its sandbox VM stopped and removed, its state directory removed."""
        with self._locked(cid) as st:
            status = self.status(st, locked=True)
            if status in (Status.RUNNING, Status.PAUSED) and not force:
                raise OciError(f"cannot delete container {cid} that is not stopped: {status}")
            self._destroy(st)
        self._hooks(st, ("poststop",))

    def _destroy(self, st: OciState) -> None:
        if Status(st.status) is Status.PAUSED:
            self._thaw(st)
        for ident in self._shims(st):
            with contextlib.suppress(ProcessLookupError):
                os.kill(ident.pid, signal.SIGKILL)
        rt = self.runtime(st)
        with contextlib.suppress(SandboxNotFound):
            rt.rm(st.sandbox, force=True)
        for shim in [st.shim, *st.execs]:
            if shim is not None:
                _wait_gone(shim, SHIM_EXIT_WAIT)
        self.store.remove(st.id)

    # ------------------------------------------------------------------ update

    def update(self, cid: str, resources: Resources) -> None:
        """The same resize as ``cpuplug update``: vCPUs hot-added or removed, the quota
        and cpuset in the guest cgroup."""
        with self._locked(cid) as st:
            status = self.status(st, locked=True)
            if status is Status.STOPPED:
                raise OciError("container not running")
            if status is Status.PAUSED:
                raise OciError(f"cannot update container {cid}: it is paused (its VM is frozen)")
            if resources == Resources():
                return
            result = self.runtime(st).update(st.sandbox, resources)
            self.log.debug(
                f"update {cid}: vCPUs {result.before} -> {result.after} "
                f"({result.seconds * 1000:.0f} ms)"
            )

    # ------------------------------------------------------------------ exec

    def exec(
        self,
        cid: str,
        process: Process,
        *,
        detach: bool,
        pid_file: Path | None,
        console_socket: Path | None,
        stdio: Stdio = Stdio(),
    ) -> int:
        """Start ``process`` in the container. ``detach``: behind a shim whose pid goes to
        ``pid_file`` (0 returned); else relayed here, its exit status returned."""
        validate_id(cid)
        st = self.store.load(cid)
        status = self.status(st)
        if status is Status.PAUSED:
            raise OciError("cannot exec in a paused container")
        if status is not Status.RUNNING:
            raise OciError("cannot exec in a stopped container")
        if detach:
            _check_terminal(process, console_socket)
        elif console_socket is not None:
            raise OciError("cannot use console socket if runc will not detach or allocate tty")
        exec_id = f"exec-{secrets.token_hex(6)}"
        agent = self._agent(st)
        try:
            agent.start_process(st.sandbox, exec_id, process.args, **process.options())
        except ap.AgentError as exc:
            why = f"unable to start container process: {exc.message}"
            raise OciError(f"exec failed: {why}") from None
        finally:
            agent.close()
        if not detach:
            return self._relay_here(st, exec_id, process.terminal, stdio)
        ident = self._spawn_shim(st, exec_id, console_socket, stdio)
        with self._locked(cid) as now:
            now.execs = [*(i for i in now.execs if i.alive()), ident]
            self.store.save(now)
        if pid_file is not None:
            write_pid_file(pid_file, ident.pid)
        return 0

    def _relay_here(self, st: OciState, exec_id: str | None, terminal: bool, stdio: Stdio) -> int:
        """Relay a process in this process (runc's foreground ``exec`` and ``run``)."""
        rt = self.runtime(st)
        relay = Relay(
            rt.store.socket_path(st.sandbox, "agent"),
            st.sandbox,
            exec_id,
            stdin=stdio.stdin if stdio.stdin is not None else 0,
            stdout=stdio.stdout if stdio.stdout is not None else 1,
            stderr=stdio.stderr if stdio.stderr is not None else 2,
            terminal=terminal,
            vm_alive=lambda: self._vm_running(st),
            log=self.log.debug,
        )
        raw = terminal and os.isatty(relay.stdin or 0)
        saved = termios.tcgetattr(relay.stdin or 0) if raw else None
        try:
            if raw:
                tty.setraw(relay.stdin or 0)
            with _forwarding(relay):
                return relay.run()
        finally:
            if saved is not None:
                termios.tcsetattr(relay.stdin or 0, termios.TCSADRAIN, saved)

    # ------------------------------------------------------------------ pause / resume

    def pause(self, cid: str) -> None:
        """Freeze the container: its VM's processes (SIGSTOP to the VMM's process group:
        every vCPU stops) and its shims. runc freezes the container's cgroup."""
        with self._locked(cid) as st:
            status = self.status(st, locked=True)
            if status is not Status.RUNNING:
                raise OciError("container not running")
            self._freeze(st)
            st.status = Status.PAUSED.value
            self.store.save(st)

    def resume(self, cid: str) -> None:
        with self._locked(cid) as st:
            if self.status(st, locked=True) is not Status.PAUSED:
                raise OciError("container not paused")
            self._thaw(st)
            st.status = Status.RUNNING.value
            self.store.save(st)

    def _freeze(self, st: OciState) -> None:
        vmm = self._vmm(st)
        if vmm is None:
            raise OciError("container not running")
        for ident in self._shims(st):
            with contextlib.suppress(ProcessLookupError):
                os.kill(ident.pid, signal.SIGSTOP)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(vmm.pid, signal.SIGSTOP)

    def _thaw(self, st: OciState) -> None:
        vmm = self._vmm(st)
        if vmm is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(vmm.pid, signal.SIGCONT)
        for ident in self._shims(st):
            with contextlib.suppress(ProcessLookupError):
                os.kill(ident.pid, signal.SIGCONT)

    # ------------------------------------------------------------------ run

    def run(
        self,
        cid: str,
        bundle: Path,
        pid_file: Path | None,
        console_socket: Path | None,
        detach: bool,
    ) -> int:
        """``create`` + ``start``; in the foreground (no ``detach``) wait for the process
        and delete the container, returning its exit status."""
        if not detach and console_socket is not None:
            raise OciError("cannot use console socket if runc will not detach or allocate tty")
        st = self.create(cid, bundle, pid_file, console_socket)
        try:
            self.start(cid)
        except BaseException:
            with contextlib.suppress(CpuplugError):
                self.delete(cid, force=True)
            raise
        if detach:
            return 0
        assert st.shim is not None
        shim = self._children[st.shim.pid]
        try:
            with _forwarding_to_pid(shim.pid):
                code = shim.wait()
            return 128 - code if code < 0 else code
        finally:
            with contextlib.suppress(CpuplugError):
                self.delete(cid, force=True)

    # ------------------------------------------------------------------ features

    @staticmethod
    def features() -> dict[str, Any]:
        """What ``features`` prints (runc 1.1's experimental command, its keys)."""
        return {
            "ociVersionMin": "1.0.0",
            "ociVersionMax": OCI_VERSION,
            "hooks": [*CREATE_HOOKS, *START_HOOKS, "poststop"],
            "mountOptions": [],
            "linux": {
                "namespaces": [],
                "capabilities": [],
                "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
                "seccomp": {"enabled": False},
                "apparmor": {"enabled": False},
                "selinux": {"enabled": False},
            },
            "annotations": {
                "io.github.cpuplug.sandbox": "every container is a VM; CPU limits hot-plug vCPUs",
                "io.github.cpuplug.resources": "linux.resources.cpu: quota, period, cpus",
            },
        }


# ---------------------------------------------------------------------------- helpers


def _check_terminal(process: Process, console_socket: Path | None) -> None:
    """runc's rules (and words) for a terminal and a console socket when detached."""
    if process.terminal and console_socket is None:
        raise OciError("cannot allocate tty if runc will detach without setting console socket")
    if not process.terminal and console_socket is not None:
        raise OciError("cannot use console socket if runc will not detach or allocate tty")


def write_pid_file(path: Path, pid: int) -> None:
    """runc's pid file: the pid, no newline, written to a temporary name then renamed."""
    tmp = path.with_name(f".{path.name}")
    try:
        tmp.write_text(str(pid))
        os.replace(tmp, path)
    except OSError as exc:
        raise OciError(f"cannot write the pid file {path}: {exc.strerror or exc}") from None


def _read_line(fd: int, timeout: float) -> bytes:
    """The first line written on ``fd`` (without its newline), or what came before EOF."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


def _wait_gone(ident: Identity, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while ident.alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(ident.pid, os.WNOHANG)  # our own child (run): no zombie left


@contextlib.contextmanager
def _forwarding(relay: Relay) -> Iterator[None]:
    """Signals this process gets go to the relayed process while it runs (runc's too)."""
    from cpuplug.oci.signals import FORWARDED

    old = {s: signal.signal(s, lambda n, _f: relay.forward(n)) for s in FORWARDED}
    old[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, lambda _n, _f: relay.resize())
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _forwarding_to_pid(pid: int) -> Iterator[None]:
    """Signals this process gets go to ``pid`` (``run``'s shim) while it runs."""
    from cpuplug.oci.signals import FORWARDED

    def forward(signo: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signo)

    old = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


__all__ = ["ContainerNotFound", "Containers", "Stdio", "write_pid_file"]

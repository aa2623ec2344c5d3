"""Real docker and containerd, started by the tests themselves (issue 10).

:func:`running_docker` starts a containerd and a dockerd of their own -- config, root,
state, sockets, data and exec roots all in one temporary directory -- waits until each
answers, imports a busybox image (``cpuplug-busybox:test``, from Debian's
``busybox-static``) and yields a :class:`Docker`: the docker client pointed at that
daemon. The OCI runtimes to register are the caller's (:class:`Runtime`: a path and
``runtimeArgs``); each one ``NAME`` also comes as ``NAME-rec``, the same runtime behind
the call recorder (:func:`write_recorder`), whose calls :meth:`Docker.calls` reads back.

Teardown removes every container, stops dockerd, then containerd (SIGTERM, a bounded
wait, SIGKILL), unmounts whatever is still mounted under the directory (overlay2's
layers, network namespaces), removes it, and fails if anything is left: a dockerd,
containerd or ``containerd-shim`` of this daemon, a process of one of its containers, a
mount under the directory, or a directory the daemons made outside it.

Fixtures (import them into a test module or a conftest, like ``cli``)::

    from tests.harness.docker import docker_fixture, docker_pool_fixture  # noqa: F401

=================  ======================================================================
``docker_pool``    session: :class:`DockerPool`; ``docker_pool.get(runtimes)`` is one
                   daemon per distinct set of runtimes, started on first use, its
                   containers removed and recorder logs emptied at every hand-out, all
                   stopped (and checked gone) at the end of the session
``docker``         ``docker_pool.get()``: the default runtimes (:func:`default_runtimes`),
                   ``cpuplug-test`` (runc) and ``cpuplug-test-rec`` always, ``cpuplug``
                   and ``cpuplug-rec`` once ``.venv/bin/cpuplug-runc`` exists (or
                   ``$CPUPLUG_RUNC``, with ``$CPUPLUG_RUNC_ARGS``); no container before
                   the test, none after it
=================  ======================================================================

Another runtime path or other ``runtimeArgs``:
``docker_pool.get(default_runtimes("/path/to/cpuplug-runc", ["--config", "c.toml"]))``,
or ``with running_docker(default_runtimes(path, args)) as docker:`` for a daemon of the
test's own (about 1.5 s to start, image included).

Both skip when this host cannot run docker (not root, or dockerd, containerd, runc or
Debian's docker client missing); with ``CI=true`` they fail instead.

The client is Debian's ``/usr/bin/docker`` (20.10, as dockerd). Another one on ``PATH``
(this machine has Docker 28's in ``/usr/local/bin``) negotiates API 1.41 down and works
as well; it is used, with ``DOCKER_API_VERSION=1.41`` pinned, only when Debian's is
missing.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cpuplug.image.apt import Apt, Package
from cpuplug.image.arch import arch_named
from cpuplug.image.store import cache_dir

ROOT = Path(__file__).resolve().parents[2]

IMAGE = "cpuplug-busybox:test"
"""The image every daemon has: busybox-static and its applet links, nothing else."""

API_VERSION = "1.41"
"""docker 20.10's API version (pinned for a client other than Debian's)."""

START_TIMEOUT = 30.0
"""Seconds containerd, then dockerd, may take to answer (each measured at 0.1-0.3 s)."""

STOP_TIMEOUT = 20.0
"""Seconds a daemon has to exit after SIGTERM before it gets SIGKILL."""

SHIM_EXIT_TIMEOUT = 5.0
"""Seconds a shim (or anything else of ours) has to be gone once both daemons are."""

DEFAULT_CPUPLUG_RUNC = ROOT / ".venv" / "bin" / "cpuplug-runc"

HOST_PATHS = (
    "/opt/containerd",  # containerd's "opt" plugin (configured away here)
    "/run/containerd",  # containerd-shim-runc-v2's sockets: /run/containerd/s/<sha256>
    "/run/docker",  # dockerd's plugin discovery directory: /run/docker/plugins
    "/var/lib/docker",
    "/var/lib/containerd",
    "/etc/docker/key.json",
)
"""Paths outside its directory a daemon of ours may create: the ones it makes (only
empty directories are expected) are removed again at teardown."""


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


# ======================================================================================
# Runtimes and the call recorder


@dataclass(frozen=True)
class Runtime:
    """An OCI runtime as ``daemon.json`` registers it: ``{"path": ..., "runtimeArgs": ...}``."""

    path: str
    args: tuple[str, ...] = ()

    def entry(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"path": self.path}
        if self.args:
            spec["runtimeArgs"] = list(self.args)
        return spec


def default_runtimes(
    cpuplug_runc: str | os.PathLike[str] | None = None, args: Sequence[str] | None = None
) -> dict[str, Runtime]:
    """``cpuplug-test``: Debian's runc, and ``cpuplug``: ``cpuplug_runc`` with ``args``
    (its ``runtimeArgs``). Without a path: ``$CPUPLUG_RUNC`` (its arguments shell-quoted
    in ``$CPUPLUG_RUNC_ARGS``), else ``<repo>/.venv/bin/cpuplug-runc`` when that file
    exists (until the OCI runtime is installed there, ``cpuplug`` is left out)."""
    runtimes: dict[str, Runtime] = {}
    runc = shutil.which("runc")
    if runc is not None:
        runtimes["cpuplug-test"] = Runtime(runc)
    if cpuplug_runc is None:
        cpuplug_runc = os.environ.get("CPUPLUG_RUNC") or None
        if cpuplug_runc is None and os.access(DEFAULT_CPUPLUG_RUNC, os.X_OK):
            cpuplug_runc = DEFAULT_CPUPLUG_RUNC
    if args is None:
        args = shlex.split(os.environ.get("CPUPLUG_RUNC_ARGS", ""))
    if cpuplug_runc is not None:
        runtimes["cpuplug"] = Runtime(os.fspath(cpuplug_runc), tuple(args))
    return runtimes


_COMMANDS = frozenset((
    "create", "start", "run", "exec", "kill", "delete", "state", "ps", "update", "pause",
    "resume", "events", "features", "checkpoint", "restore", "list", "spec",
))
"""runc's subcommands: the first argument among these is the call's command."""

_RECORDER = '''#!{python} -IS
"""Records one OCI runtime call as JSON lines in {log}, then runs {real}.

Written by tests/harness/docker.py. Lines: {{"call": argv, "pid", "t", "cwd", and what
only the call's inputs show: "stdin" (update --resources -), "process" (exec's
--process file), "config" (create's bundle config.json)}}, then {{"exit": rc, "pid",
"t"}} when the runtime has exited (signals to this process are passed on to it).
"""
import json, os, signal, sys, time

LOG = {log!r}
REAL = {real!r}
COMMANDS = set({commands!r})


def record(entry):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\\n").encode())
    finally:
        os.close(fd)


def value(args, *names):
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        return "unreadable: %s" % exc


argv = sys.argv[1:]
entry = {{"call": argv, "pid": os.getpid(), "t": time.time(), "cwd": os.getcwd()}}
command = next((a for a in argv if a in COMMANDS), None)
stdin = None
if command is not None:
    rest = argv[argv.index(command) + 1:]
    if command == "update" and value(rest, "--resources", "-r") == "-":
        stdin = sys.stdin.buffer.read()
        entry["stdin"] = stdin.decode(errors="replace")
    if command == "exec" and value(rest, "--process", "-p"):
        entry["process"] = read_json(value(rest, "--process", "-p"))
    if command in ("create", "run"):
        bundle = value(rest, "--bundle", "-b") or "."
        entry["config"] = read_json(os.path.join(bundle, "config.json"))
record(entry)
if stdin is not None:
    r, w = os.pipe()
    os.write(w, stdin)
    os.close(w)
    os.dup2(r, 0)
    os.close(r)
pid = os.fork()
if pid == 0:
    try:
        os.execv(REAL, [REAL, *argv])
    finally:
        os._exit(127)
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(sig, lambda s, _f: os.kill(pid, s))
status = os.waitpid(pid, 0)[1]
rc = os.waitstatus_to_exitcode(status)
record({{"exit": rc, "pid": os.getpid(), "t": time.time()}})
sys.exit(rc if rc >= 0 else 128 - rc)
'''


def write_recorder(path: Path, real: str, log: Path) -> Path:
    """An executable at ``path`` that logs each call (argv, the update's stdin, the
    exec's process, the create's config.json, then the exit status) as JSON lines to
    ``log`` and otherwise behaves as ``real``: same arguments, stdio, exit status."""
    path.write_text(_RECORDER.format(
        python=sys.executable, real=real, log=str(log), commands=sorted(_COMMANDS)
    ))
    path.chmod(0o755)
    return path


@dataclass
class RuntimeCall:
    """One call of a recorded runtime (:func:`write_recorder`)."""

    argv: list[str]
    pid: int
    t: float
    cwd: str
    stdin: str | None = None
    process: Any = None
    config: Any = None
    rc: int | None = None
    """The exit status; None while the runtime still runs (or when it was killed)."""
    duration: float | None = None

    @property
    def command(self) -> str | None:
        """``create``, ``start``, ``update``, ...: the runtime subcommand."""
        return next((a for a in self.argv if a in _COMMANDS), None)

    @property
    def args(self) -> list[str]:
        """The arguments after the subcommand."""
        command = self.command
        return self.argv[self.argv.index(command) + 1 :] if command else []

    @property
    def global_args(self) -> list[str]:
        """The arguments before the subcommand (``runtimeArgs``, ``--root``, ``--log``)."""
        command = self.command
        return self.argv[: self.argv.index(command)] if command else list(self.argv)


def read_calls(log: Path) -> list[RuntimeCall]:
    """The calls in a recorder's log, in the order they started, with their exits."""
    calls: list[RuntimeCall] = []
    by_pid: dict[int, RuntimeCall] = {}
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        entry = json.loads(line)
        if "call" in entry:
            call = RuntimeCall(
                argv=list(entry["call"]), pid=int(entry["pid"]), t=float(entry["t"]),
                cwd=str(entry["cwd"]), stdin=entry.get("stdin"),
                process=entry.get("process"), config=entry.get("config"),
            )
            calls.append(call)
            by_pid[call.pid] = call
        elif "exit" in entry and int(entry["pid"]) in by_pid:
            call = by_pid.pop(int(entry["pid"]))
            call.rc = int(entry["exit"])
            call.duration = float(entry["t"]) - call.t
    return calls


# ======================================================================================
# The busybox image


def busybox_binary(workdir: Path) -> Path:
    """Debian's static busybox for this host, unpacked under ``workdir``: the ``.deb``
    from cpuplug's image cache when the version apt would install is there, else from
    ``apt-get download`` (into ``workdir``; the cache is left alone)."""
    deb_arch = arch_named(None).deb_arch
    apt = Apt(deb_arch)
    stanza = apt.candidates(["busybox-static"])["busybox-static"]
    package = Package(stanza["Package"], stanza["Version"], stanza["Architecture"])
    cached = cache_dir() / "debs" / deb_arch / package.filename
    deb = cached if cached.is_file() else apt.download([package], workdir / "debs")[package]
    unpacked = workdir / "busybox-static"
    apt.unpack(deb, unpacked)
    exe = unpacked / "bin" / "busybox"
    if not exe.is_file():
        raise RuntimeError(f"{deb.name} unpacked no bin/busybox")
    return exe


def busybox_rootfs_tar(busybox: Path) -> bytes:
    """A root filesystem as ``docker import`` takes it: ``/bin/busybox``, a symlink for
    every applet it lists, the directories a container needs, root in /etc/passwd."""
    applets = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, link
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev",
                  "run", "var", "root"):
            add(d, tarfile.DIRTYPE, 0o700 if d == "root" else 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("bin/busybox", tarfile.REGTYPE, 0o755, busybox.read_bytes())
        add("etc/passwd", tarfile.REGTYPE, 0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:"
            b"/bin/false\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        for applet in applets:
            name = applet.lstrip("/")
            if "/" in name and name != "bin/busybox":
                add(name, tarfile.SYMTYPE, 0o777, link="/bin/busybox")
    return buf.getvalue()


@functools.cache
def busybox_image_tar() -> bytes:
    """The image's root filesystem tar, made once per process."""
    with tempfile.TemporaryDirectory(prefix="cpuplug-busybox-") as work:
        try:
            return busybox_rootfs_tar(busybox_binary(Path(work)))
        except Exception as exc:
            raise DockerError(f"cannot make the busybox image: {exc}") from exc


# ======================================================================================
# The daemons


class DockerError(RuntimeError):
    """A daemon did not start, or the image could not be made."""


@dataclass
class Timings:
    """What starting this daemon cost, in seconds."""

    containerd: float = 0.0
    dockerd: float = 0.0
    image_build: float = 0.0
    """busybox-static unpacked and the rootfs tar made (once per process: then ~0)."""
    image_import: float = 0.0


@dataclass
class Docker:
    """A dockerd of our own and the client that talks to it."""

    dir: Path
    client: str
    env: dict[str, str]
    runtimes: dict[str, Runtime]
    """Every runtime registered, ``NAME-rec`` recorders included."""
    containerd_pid: int = 0
    dockerd_pid: int = 0
    image: str = IMAGE
    timings: Timings = field(default_factory=Timings)
    seen: set[str] = field(default_factory=set)
    """Ids of containers this daemon had (whose processes must be gone at the end)."""

    @property
    def host(self) -> str:
        return f"unix://{self.dir}/docker.sock"

    @property
    def containerd_address(self) -> str:
        return str(self.dir / "containerd.sock")

    @property
    def data_root(self) -> Path:
        return self.dir / "docker" / "data"

    @property
    def exec_root(self) -> Path:
        return self.dir / "docker" / "exec"

    def run(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``docker -H <ours> ARGS``; never raises on a non-zero exit."""
        return subprocess.run(
            [self.client, "-H", self.host, *args], input=input, capture_output=True,
            text=True, timeout=timeout, env=self.env, check=False,
        )

    def ok(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """:meth:`run`, asserting exit status 0."""
        proc = self.run(*args, **kw)
        assert proc.returncode == 0, (
            f"docker {shlex.join(args)}: rc={proc.returncode}\n{proc.stderr}{proc.stdout}"
        )
        return proc

    def ctr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``ctr --address <our containerd> ARGS`` (docker's namespace is ``moby``)."""
        return subprocess.run(
            ["ctr", "--address", self.containerd_address, *args], capture_output=True,
            text=True, timeout=timeout, check=False,
        )

    def recorder_log(self, runtime: str) -> Path:
        """Where the recorder registered as ``runtime`` (``NAME-rec``) writes."""
        return self.dir / "calls" / f"{runtime}.jsonl"

    def calls(self, runtime: str) -> list[RuntimeCall]:
        """The calls the recorder registered as ``runtime`` (``NAME-rec``) saw."""
        return read_calls(self.recorder_log(runtime))

    def clear_calls(self) -> None:
        for log in (self.dir / "calls").glob("*.jsonl"):
            log.unlink()

    def containers(self) -> list[str]:
        ids = self.ok("ps", "-aq", "--no-trunc").stdout.split()
        self.seen.update(ids)
        return ids

    def clean(self) -> None:
        """Removes every container (``docker rm -f``) and checks that none is left."""
        ids = self.containers()
        if ids:
            self.run("rm", "-f", *ids, timeout=120)
        left = self.containers()
        assert not left, f"docker rm -f left containers: {left}"


def docker_available() -> str | None:
    """Why this host cannot run our docker, or None when it can."""
    if os.geteuid() != 0:
        return "dockerd needs root"
    missing = [t for t in ("dockerd", "containerd", "ctr", "runc", "containerd-shim-runc-v2")
               if shutil.which(t) is None]
    if not os.access("/usr/bin/docker", os.X_OK) and shutil.which("docker") is None:
        missing.append("docker")
    if missing:
        return (f"{', '.join(missing)} not installed "
                "(scripts/setup as root: apt-get install docker.io containerd runc)")
    return None


def _client() -> tuple[str, dict[str, str]]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY",
                        "DOCKER_CERT_PATH", "DOCKER_API_VERSION")}
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker", env
    client = shutil.which("docker")
    assert client is not None
    return client, {**env, "DOCKER_API_VERSION": API_VERSION}


def _containerd_config(d: Path) -> str:
    return f"""version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = "{d}/containerd-debug.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
"""


def _dockerd_argv(d: Path) -> list[str]:
    return [
        "dockerd", "--config-file", f"{d}/daemon.json",
        f"--containerd={d}/containerd.sock",
        "--data-root", f"{d}/docker/data", "--exec-root", f"{d}/docker/exec",
        "--pidfile", f"{d}/docker/dockerd.pid", "-H", f"unix://{d}/docker.sock",
        "--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-forward=false",
        "--ip-masq=false", "--userland-proxy=false",
    ]


def _wait_answer(name: str, proc: subprocess.Popen[bytes], log: Path, answers: Any,
                 timeout: float) -> float:
    start = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise DockerError(f"{name} exited with {proc.returncode}:\n{_tail(log)}")
        if answers():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise DockerError(f"{name} did not answer within {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.02)


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _ping(sock: str) -> bool:
    """dockerd's ``GET /_ping`` answers ``OK``."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(sock)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]
    except OSError:
        return False


def _containerd_answers(sock: str) -> bool:
    if not os.path.exists(sock):
        return False
    return subprocess.run(
        ["ctr", "--address", sock, "version"], capture_output=True, timeout=10, check=False
    ).returncode == 0


@contextlib.contextmanager
def running_docker(
    runtimes: Mapping[str, Runtime] | None = None,
    *,
    record: bool = True,
    storage_driver: str = "overlay2",
    image: bool = True,
    daemon_json: Mapping[str, Any] | None = None,
) -> Iterator[Docker]:
    """containerd + dockerd in a temporary directory, the busybox image imported.

    ``runtimes``: name -> :class:`Runtime` for ``daemon.json`` (default
    :func:`default_runtimes`); with ``record`` each also as ``NAME-rec`` behind the call
    recorder. ``storage_driver``: ``overlay2`` (or ``vfs``). ``daemon_json``: more keys.
    Everything is stopped, unmounted and removed afterwards, and checked to be gone."""
    reason = docker_available()
    if reason is not None:
        raise DockerError(reason)
    runtimes = dict(default_runtimes() if runtimes is None else runtimes)
    # short: unix socket paths (the shim's too) must fit in 108 bytes
    d = Path(tempfile.mkdtemp(prefix="cpd", dir="/tmp"))
    host_before = {p for p in HOST_PATHS if os.path.lexists(p)}
    client, env = _client()
    env["DOCKER_CONFIG"] = str(d / "client")  # the client writes nothing under ~/.docker
    registered = dict(runtimes)
    if record:
        for name, rt in runtimes.items():
            registered[f"{name}-rec"] = Runtime(str(d / "recorders" / name), rt.args)
    docker = Docker(dir=d, client=client, env=env, runtimes=registered)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    problems: list[str] = []
    try:
        for sub in ("client", "calls", "recorders"):
            (d / sub).mkdir()
        if record:
            for name, rt in runtimes.items():
                write_recorder(d / "recorders" / name, rt.path, docker.recorder_log(name + "-rec"))
        (d / "containerd").mkdir()
        (d / "containerd" / "config.toml").write_text(_containerd_config(d))
        config = {
            "deprecated-key-path": f"{d}/docker/key.json",
            "storage-driver": storage_driver,
            "runtimes": {name: rt.entry() for name, rt in registered.items()},
            **(daemon_json or {}),
        }
        (d / "daemon.json").write_text(json.dumps(config, indent=2))
        (d / "docker").mkdir()

        t0 = time.monotonic()
        with open(d / "containerd.log", "wb") as log:
            ctd = subprocess.Popen(
                ["containerd", "--config", f"{d}/containerd/config.toml"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(("containerd", ctd))
        docker.containerd_pid = ctd.pid
        sock = docker.containerd_address
        _wait_answer("containerd", ctd, d / "containerd.log",
                     lambda: _containerd_answers(sock), START_TIMEOUT)
        docker.timings.containerd = time.monotonic() - t0

        t0 = time.monotonic()
        with open(d / "dockerd.log", "wb") as log:
            dockerd = subprocess.Popen(
                _dockerd_argv(d), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        procs.append(("dockerd", dockerd))
        docker.dockerd_pid = dockerd.pid
        _wait_answer("dockerd", dockerd, d / "dockerd.log",
                     lambda: _ping(f"{d}/docker.sock"), START_TIMEOUT)
        docker.timings.dockerd = time.monotonic() - t0

        if image:
            t0 = time.monotonic()
            tar = d / "rootfs.tar"
            tar.write_bytes(busybox_image_tar())
            docker.timings.image_build = time.monotonic() - t0
            t0 = time.monotonic()
            docker.ok("import", str(tar), IMAGE, timeout=120)
            docker.timings.image_import = time.monotonic() - t0
            tar.unlink()
        yield docker
    finally:
        problems = _teardown(docker, procs, host_before)
        if problems and sys.exc_info()[0] is not None:
            print("docker teardown: " + "; ".join(problems), file=sys.stderr)
    assert not problems, "docker teardown: " + "; ".join(problems)


def _teardown(
    docker: Docker, procs: list[tuple[str, subprocess.Popen[bytes]]], host_before: set[str]
) -> list[str]:
    d = docker.dir
    problems: list[str] = []
    alive = {name: p for name, p in procs if p.poll() is None}
    if "dockerd" in alive:
        try:
            docker.clean()
        except (AssertionError, OSError, subprocess.SubprocessError) as exc:
            problems.append(f"removing containers: {exc}")
    with contextlib.suppress(OSError):
        for state in (docker.data_root / "containers").iterdir():
            docker.seen.add(state.name)
    for name in ("dockerd", "containerd"):
        if name in alive:
            problems += _stop(name, alive[name])
        elif name in dict(procs):
            problems.append(f"{name} had exited with {dict(procs)[name].returncode}:\n"
                            + _tail(d / f"{name}.log"))
    # Processes: anything naming our directory (a shim: -address <d>/containerd.sock, a
    # recorder, a runtime) and anything still in one of our containers' cgroups. A shim
    # told to shut down may take a moment to exit.
    deadline = time.monotonic() + SHIM_EXIT_TIMEOUT
    while (left := _our_processes(d, docker.seen)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid, what in left:
        problems.append(f"process {pid} left running: {what}")
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    mounts = _mounts_under(d)
    if mounts:
        problems.append(f"mounts left under {d}: {mounts}")
    for mnt in sorted(_mounts_under(d), key=len, reverse=True):
        if subprocess.run(["umount", mnt], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
    problems += [f"could not unmount {m}" for m in _mounts_under(d)]
    if not _mounts_under(d):
        shutil.rmtree(d, ignore_errors=True)
        if d.exists():
            problems.append(f"{d} could not be removed")
    problems += _host_paths_made(host_before)
    return problems


def _stop(name: str, proc: subprocess.Popen[bytes]) -> list[str]:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
        return []
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return [f"{name} needed SIGKILL ({STOP_TIMEOUT:.0f} s after SIGTERM)"]


def _our_processes(d: Path, containers: set[str]) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    me = os.getpid()
    needle = str(d).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cgroups = (entry / "cgroup").read_text() if containers else ""
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state == "Z":
            continue
        what = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
        if needle in cmdline or any(f"/{c}" in cgroups for c in containers):
            found.append((int(entry.name), what[:200]))
    return found


def _mounts_under(d: Path) -> list[str]:
    prefix = str(d) + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(d) or point.startswith(prefix):
            found.append(point)
    return found


def _host_paths_made(before: set[str]) -> list[str]:
    """Removes the directories outside ours a daemon made (empty ones, and only while no
    other dockerd or containerd runs on this host: they may be using them); reports the
    others."""
    made = [p for p in HOST_PATHS if p not in before and os.path.lexists(p)]
    if not made:
        return []
    if other_engines_running():
        return []  # not ours to judge: another docker runs here
    problems = []
    for path in made:
        for sub, dirs, files in os.walk(path, topdown=False):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(sub, name))
            if files:
                problems.append(f"{path}: files made outside the fixture: {files}")
        with contextlib.suppress(OSError):
            os.rmdir(path)
    return problems


def other_engines_running() -> bool:
    """True while a dockerd, containerd or shim runs on this host (zombies aside: a shim
    that daemonised is reparented to PID 1, which here reaps slowly)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text()
                comm = stat[stat.index("(") + 1 : stat.rindex(")")]
                state = stat[stat.rindex(")") + 1 :].split()[0]
                if state != "Z" and comm.startswith(("dockerd", "containerd")):
                    return True
    return False


# ======================================================================================
# Fixtures


class DockerPool:
    """Daemons for one test session: one per distinct set of runtimes."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._daemons: dict[str, Docker] = {}

    def get(self, runtimes: Mapping[str, Runtime] | None = None, **kw: Any) -> Docker:
        """The daemon with these runtimes (default :func:`default_runtimes`), started on
        first use; handed out with no container (``kw``: see :func:`running_docker`)."""
        runtimes = dict(default_runtimes() if runtimes is None else runtimes)
        key = repr((sorted(runtimes.items()), sorted(kw.items())))
        docker = self._daemons.get(key)
        if docker is None:
            docker = self._stack.enter_context(running_docker(runtimes, **kw))
            self._daemons[key] = docker
        docker.clean()
        docker.clear_calls()
        return docker

    def close(self) -> None:
        self._daemons.clear()
        self._stack.close()


def require_docker() -> None:
    """Skip when this host cannot run docker; fail instead with CI=true."""
    reason = docker_available()
    if reason is not None:
        if _ci():
            pytest.fail(f"docker is required in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session", name="docker_pool")
def docker_pool_fixture() -> Iterator[DockerPool]:
    """Session: :class:`DockerPool` (``docker_pool.get(runtimes)``)."""
    require_docker()
    pool = DockerPool()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(name="docker")
def docker_fixture(docker_pool: DockerPool) -> Iterator[Docker]:
    """A dockerd with the default runtimes and image, no container before or after."""
    docker = docker_pool.get()
    yield docker
    docker.clean()


__all__ = [
    "IMAGE",
    "Docker",
    "DockerError",
    "DockerPool",
    "Runtime",
    "RuntimeCall",
    "busybox_binary",
    "busybox_image_tar",
    "busybox_rootfs_tar",
    "default_runtimes",
    "docker_available",
    "docker_fixture",
    "docker_pool_fixture",
    "other_engines_running",
    "read_calls",
    "require_docker",
    "running_docker",
    "write_recorder",
]

"""``cpuplug-runc`` as containerd-shim-runc-v2 drives it: subprocesses, from a subreaper.

The test process is made a child subreaper (``PR_SET_CHILD_SUBREAPER``) while a
:class:`Runc` is in use, so a shim that ``create`` leaves behind is re-parented to the
test, which takes its exit status with ``waitpid`` as containerd's shim does. Every
command gets ``--root``, ``--log <dir>/log.json --log-format json`` (containerd's
globals) and a config with ``default_maxvcpus = 4``; the sandboxes go to a private
``$CPUPLUG_ROOT``. :func:`runc_env` removes every container at the end and fails the
test if a shim, a VMM or a directory survived.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from cpuplug.runtime.process import ProcessIdentity, process_alive

ROOT = Path(__file__).resolve().parents[2]
PR_SET_CHILD_SUBREAPER = 36
CONFIG = "default_maxvcpus = 4\n"


def set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


class Runc:
    """Runs ``cpuplug-runc`` with containerd's global options against private roots."""

    def __init__(self, base: Path, *, hypervisor: str = "builtin") -> None:
        self.base = base
        self.root = base / "runc"
        self.sandboxes = base / "sb"
        self.log = base / "log.json"
        self.config = base / "config.toml"
        self.config.write_text(CONFIG)
        self.hypervisor = hypervisor
        self.env = {**os.environ, "CPUPLUG_ROOT": str(self.sandboxes)}
        self.vmm_pids: set[int] = set()
        self.shim_pids: set[int] = set()

    def argv(self, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "cpuplug.oci",
            "--hypervisor", self.hypervisor, "--config", str(self.config),
            "--root", str(self.root), "--log", str(self.log), "--log-format", "json",
            *args,
        ]  # fmt: skip

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """One command; its output captured unless ``stdout``/``stderr`` are given (what
        a created container's process inherits)."""
        proc = subprocess.run(
            self.argv(*args),
            input=input,
            stdin=stdin if input is None else None,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=stderr if stderr is not None else subprocess.PIPE,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=ROOT,
            check=False,
        )
        self._note_vmms()
        return proc

    def ok(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        proc = self(*args, **kw)
        assert proc.returncode == 0, f"{args}: rc={proc.returncode}\n{proc.stderr}"
        return proc

    def detached(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A command whose stdio a process it leaves behind inherits (``exec -d``,
        ``run -d``): /dev/null, never a pipe read to its end."""
        null = subprocess.DEVNULL
        return self.ok(*args, stdin=null, stdout=null, stderr=null)

    def fails(self, *args: str, **kw: Any) -> str:
        """Run a command that must fail as runc fails: exit code 1, one line on stderr,
        that line as the last error of the JSON log; returns it."""
        proc = self(*args, **kw)
        assert proc.returncode == 1, f"{args}: rc={proc.returncode}\n{proc.stderr}"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert self.last_error() == lines[0]
        return lines[0]

    def last_error(self) -> str | None:
        """The ``msg`` of the last ``error`` line of the log, as containerd reads it."""
        last = None
        for line in self.log.read_text().splitlines():
            record = json.loads(line)
            assert set(record) == {"level", "msg", "time"}, record
            if record["level"] == "error":
                last = record["msg"]
        return last

    def state(self, cid: str) -> dict[str, Any]:
        return dict(json.loads(self.ok("state", cid).stdout))

    def status(self, cid: str) -> str:
        return str(self.state(cid)["status"])

    # ------------------------------------------------------------------ bundles

    def bundle(
        self,
        name: str,
        args: list[str],
        *,
        cpu: dict[str, Any] | None = None,
        terminal: bool = False,
        hooks: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
    ) -> Path:
        """A bundle directory with a config.json like docker's (``drop``: keys of
        ``linux`` to leave out)."""
        d = self.base / "bundles" / name
        (d / "rootfs").mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "ociVersion": "1.0.2-dev",
            "process": {
                "terminal": terminal,
                "args": args,
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
            },
            "root": {"path": "rootfs"},
            "linux": {
                "resources": {
                    "devices": [{"allow": False, "access": "rwm"}],
                    "cpu": cpu if cpu is not None else {"shares": 0, "quota": 0, "period": 0},
                },
                "cgroupsPath": f"/docker/{name}",
            },
            "annotations": {"org.example": name},
        }
        for key in drop:
            config["linux"].pop(key)
        if hooks is not None:
            config["hooks"] = hooks
        (d / "config.json").write_text(json.dumps(config))
        return d

    def process_file(self, name: str, args: list[str], terminal: bool = False) -> Path:
        path = self.base / f"{name}.process.json"
        path.write_text(
            json.dumps({"args": args, "env": ["PATH=/bin"], "cwd": "/", "terminal": terminal})
        )
        return path

    def create(
        self, cid: str, bundle: Path, *extra: str, out: IO[Any] | None = None, **kw: Any
    ) -> int:
        """``create`` as containerd calls it; the shim's pid (from the pid file).

        The container's stdout and stderr are ``out`` (default /dev/null): descriptors
        the shim inherits, never a pipe this process reads to its end, which only comes
        when the container's process is gone (containerd gives files or pipes it does
        not wait on)."""
        pid_file = bundle / "init.pid"
        sink = out if out is not None else subprocess.DEVNULL
        self.ok("create", "--bundle", str(bundle), "--pid-file", str(pid_file), *extra, cid,
                stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, **kw)  # fmt: skip
        return self.pid_of(pid_file)

    def pid_of(self, pid_file: Path) -> int:
        """The pid in a pid file (remembered, to be reaped at the end)."""
        pid = int(pid_file.read_text())
        self.shim_pids.add(pid)
        return pid

    # ------------------------------------------------------------------ processes

    def wait_exit(self, pid: int, timeout: float = 30) -> int:
        """The exit status of a shim re-parented to us (what containerd reports)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:  # containerd's reaper: 128 + N for a death by signal N
                code = os.waitstatus_to_exitcode(status)
                return 128 - code if code < 0 else code
            time.sleep(0.02)
        raise AssertionError(f"process {pid} did not exit within {timeout}s")

    def vmm_pid(self, cid: str) -> int | None:
        st = json.loads((self.root / cid / "state.json").read_text())
        sb = json.loads((Path(st["sandbox_root"]) / st["sandbox"] / "state.json").read_text())
        pid = sb.get("vmm_pid")
        return int(pid) if pid else None

    def _note_vmms(self) -> None:
        for state in self.sandboxes.glob("*/state.json"):
            with contextlib.suppress(OSError, ValueError):
                pid = json.loads(state.read_text()).get("vmm_pid")
                if pid:
                    self.vmm_pids.add(int(pid))

    def reap(self) -> None:
        """Collect the shims and VMMs re-parented to us that exited: no zombies (only
        those: another fixture's children keep their statuses)."""
        for pid in self.shim_pids | self.vmm_pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def runc_env(hypervisor: str = "builtin") -> Iterator[Runc]:
    base = Path(tempfile.mkdtemp(prefix="cpr", dir="/tmp"))  # short: unix socket paths
    set_subreaper(True)
    r = Runc(base, hypervisor=hypervisor)
    try:
        yield r
    finally:
        try:
            leftovers = [p.name for p in r.root.iterdir()] if r.root.is_dir() else []
            for cid in leftovers:
                r("delete", "--force", cid)
            r._note_vmms()
            sandboxes = [p.name for p in r.sandboxes.iterdir()] if r.sandboxes.is_dir() else []
            alive = [pid for pid in r.vmm_pids if process_alive(pid, None)]
            for pid in alive:
                os.kill(pid, 9)
            time.sleep(0.1)
            r.reap()
        finally:
            set_subreaper(False)
            shutil.rmtree(base, ignore_errors=True)
        assert not alive, f"VMMs survived delete --force: {alive}"
        assert not sandboxes, f"sandboxes left behind: {sandboxes}"
        assert not leftovers, f"containers left behind: {leftovers}"


def alive(pid: int) -> bool:
    ident = ProcessIdentity.of(pid)
    return ident is not None and ident.matches()

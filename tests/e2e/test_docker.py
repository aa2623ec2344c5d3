"""docker 20.10 and containerd 1.6 drive cpuplug-runc unchanged (issue 10).

A dockerd and a containerd of the tests' own (tests/harness/docker.py) with
``cpuplug-runc`` registered as the runtime ``cpuplug`` (``runtimeArgs``: the hypervisor,
a config with ``default_maxvcpus = 8`` and a private sandbox root), once per hypervisor.
After every test every container is removed and no sandbox, shim or VMM may be left:
the VMM never outlives its container. Skipped without root or docker; mandatory with
CI=true (the QEMU runs also need QEMU and the guest image).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cpuplug.runtime.process import process_alive
from tests.conftest import require_tool
from tests.harness.docker import (
    DEFAULT_CPUPLUG_RUNC,
    IMAGE,
    Docker,
    DockerPool,
    default_runtimes,
    docker_pool_fixture,  # noqa: F401  (fixture "docker_pool")
)

pytestmark = pytest.mark.slow

RUNTIME = "cpuplug"
CONFIG = "default_maxvcpus = 8\n"


@dataclass
class Cpuplug:
    """The daemon with cpuplug-runc registered, and where its sandboxes go."""

    docker: Docker
    hypervisor: str
    sandboxes: Path

    def ok_run(self, *args: str) -> str:
        proc = self.docker.ok("run", "--runtime", RUNTIME, "--network", "none", *args,
                              timeout=180)  # fmt: skip
        return proc.stdout

    def sandbox_vmms(self) -> list[int]:
        pids = []
        for state in self.sandboxes.glob("*/state.json"):
            pid = json.loads(state.read_text()).get("vmm_pid")
            if pid:
                pids.append(int(pid))
        return pids

    def exec_out(self, cid: str, *cmd: str) -> str:
        return self.docker.ok("exec", cid, *cmd, timeout=120).stdout


@pytest.fixture(scope="module", params=["builtin", "qemu"])
def cpuplug(request: pytest.FixtureRequest, docker_pool: DockerPool) -> Iterator[Cpuplug]:
    hypervisor = str(request.param)
    if hypervisor == "qemu":
        require_tool("apt-get")  # the guest image is built from Debian's packages
        require_tool("qemu-system-x86_64")
    base = Path(tempfile.mkdtemp(prefix="cpo", dir="/tmp"))
    (base / "config.toml").write_text(CONFIG)
    args = ["--hypervisor", hypervisor, "--config", str(base / "config.toml"),
            "--sandbox-root", str(base / "sb")]  # fmt: skip
    try:
        docker = docker_pool.get(default_runtimes(DEFAULT_CPUPLUG_RUNC, args))
        yield Cpuplug(docker, hypervisor, base / "sb")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def dk(cpuplug: Cpuplug) -> Iterator[Cpuplug]:
    """The daemon, no container before or after; nothing of a sandbox left after."""
    cpuplug.docker.clean()
    seen: set[int] = set()
    yield cpuplug
    seen.update(cpuplug.sandbox_vmms())
    cpuplug.docker.clean()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        any(process_alive(p, None) for p in seen) or list(cpuplug.sandboxes.glob("*"))
    ):
        time.sleep(0.1)
    assert not [p for p in seen if process_alive(p, None)], "a VMM outlived its container"
    assert not list(cpuplug.sandboxes.glob("*")), "a sandbox outlived its container"


# ------------------------------------------------------------------ the session


def test_run_rm_prints_hi(dk: Cpuplug) -> None:
    assert dk.ok_run("--rm", IMAGE, "echo", "hi") == "hi\n"
    assert dk.docker.containers() == []


def test_exit_status_is_the_containers(dk: Cpuplug) -> None:
    proc = dk.docker.run("run", "--runtime", RUNTIME, "--network", "none", "--name", "three",
                         IMAGE, "sh", "-c", "exit 3", timeout=180)  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    state = dk.docker.ok("inspect", "-f", "{{.State.ExitCode}} {{.HostConfig.Runtime}}", "three")
    assert state.stdout.split() == ["3", RUNTIME]


def test_update_hot_plugs_vcpus_and_sets_the_quota(dk: Cpuplug) -> None:
    cid = dk.ok_run("-d", "--cpu-quota", "100000", "--cpu-period", "100000",
                    IMAGE, "sleep", "1d").strip()  # fmt: skip
    assert dk.exec_out(cid, "nproc") == "2\n"  # default_vcpus 1 + 1
    dk.docker.ok("update", "--cpu-quota", "300000", "--cpu-period", "100000", cid, timeout=120)
    out = dk.exec_out(cid, "sh", "-c", "nproc; cat /sys/fs/cgroup/cpu.max")
    assert out == "4\n300000 100000\n"
    dk.docker.ok("update", "--cpu-quota", "100000", "--cpu-period", "100000", cid, timeout=120)
    assert dk.exec_out(cid, "sh", "-c", "nproc; cat /sys/fs/cgroup/cpu.max") == (
        "2\n100000 100000\n"
    )
    dk.docker.ok("update", "--cpu-quota", "300000", cid, timeout=120)  # quota alone: period kept
    assert dk.exec_out(cid, "nproc") == "4\n"
    inspect = dk.docker.ok("inspect", "-f", "{{.HostConfig.CpuQuota}} {{.HostConfig.CpuPeriod}}",
                           cid).stdout.split()  # fmt: skip
    assert inspect == ["300000", "100000"]


def test_exec_exit_codes(dk: Cpuplug) -> None:
    cid = dk.ok_run("-d", IMAGE, "sleep", "1d").strip()
    assert dk.docker.run("exec", cid, "sh", "-c", "exit 7", timeout=120).returncode == 7
    assert dk.docker.run("exec", cid, "true", timeout=120).returncode == 0
    missing = dk.docker.run("exec", cid, "no-such-program", timeout=120)
    assert missing.returncode in (126, 127), missing.stderr
    assert "executable file not found" in missing.stdout + missing.stderr  # docker: stdout
    out = dk.docker.run("exec", cid, "sh", "-c", "echo out; cat /nope", timeout=120)
    assert (out.returncode, out.stdout) == (1, "out\n")
    assert "/nope" in out.stderr
    top = dk.docker.ok("top", cid).stdout
    assert "PID" in top.splitlines()[0]


def test_kill(dk: Cpuplug) -> None:
    cid = dk.ok_run("-d", IMAGE, "sleep", "1d").strip()
    dk.docker.ok("kill", cid, timeout=120)
    state = dk.docker.ok("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", cid)
    assert state.stdout.split() == ["exited", "137"]


def test_stop_of_a_container_ignoring_sigterm(dk: Cpuplug) -> None:
    cid = dk.ok_run("-d", IMAGE, "sh", "-c", "trap '' TERM; sleep 1d").strip()
    time.sleep(1)  # the trap is in place
    t0 = time.monotonic()
    dk.docker.ok("stop", "-t", "2", cid, timeout=120)
    assert time.monotonic() - t0 >= 2  # SIGTERM was ignored: SIGKILL after the timeout
    state = dk.docker.ok("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", cid)
    assert state.stdout.split() == ["exited", "137"]


def test_rm_force_of_a_running_container(dk: Cpuplug) -> None:
    cid = dk.ok_run("-d", IMAGE, "sleep", "1d").strip()
    vmms = dk.sandbox_vmms()
    assert len(vmms) == 1 and process_alive(vmms[0], None)
    dk.docker.ok("rm", "-f", cid, timeout=120)
    assert dk.docker.containers() == []
    assert not process_alive(vmms[0], None)


def test_pause_and_restart(dk: Cpuplug) -> None:
    cid = dk.ok_run("-d", IMAGE, "sleep", "1d").strip()
    dk.docker.ok("pause", cid)
    assert dk.docker.ok("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "paused"
    dk.docker.ok("unpause", cid)
    assert dk.exec_out(cid, "echo", "thawed") == "thawed\n"
    dk.docker.ok("restart", "-t", "1", cid, timeout=180)  # delete, then create + start again
    assert dk.docker.ok("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "running"
    assert dk.exec_out(cid, "echo", "again") == "again\n"


def test_run_and_exec_with_a_terminal(dk: Cpuplug) -> None:
    # (the client's text mode reads the terminal's \r\n as \n)
    out = dk.ok_run("-t", "--rm", IMAGE, "sh", "-c", "echo hi; cat /nope; true")
    assert out.startswith("hi\n") and "/nope" in out  # one stream: stderr comes along
    cid = dk.ok_run("-d", IMAGE, "sleep", "1d").strip()
    proc = dk.docker.ok("exec", "-t", cid, "sh", "-c", "echo x; cat /nope; true", timeout=120)
    assert proc.stdout.startswith("x\n") and "/nope" in proc.stdout and proc.stderr == ""
    if dk.hypervisor == "qemu":  # a real guest: a real terminal behind it
        tty = dk.docker.ok("exec", "-t", cid, "tty", timeout=120).stdout
        assert tty.startswith("/dev/pts/"), tty


def test_stdin(dk: Cpuplug) -> None:
    if dk.hypervisor == "builtin":
        pytest.skip("the built-in guest's programs read no input (docs/agent-protocol.md)")
    proc = dk.docker.ok("run", "-i", "--rm", "--runtime", RUNTIME, "--network", "none", IMAGE,
                        "cat", input="piped\n", timeout=180)  # fmt: skip
    assert proc.stdout == "piped\n"
    cid = dk.ok_run("-d", IMAGE, "sleep", "1d").strip()
    proc = dk.docker.ok("exec", "-i", cid, "sh", "-c", "read x; echo got $x", input="y\n",
                        timeout=120)  # fmt: skip
    assert proc.stdout == "got y\n"


def test_the_containers_own_files(dk: Cpuplug, tmp_path: Path) -> None:
    """With QEMU the container's / is the image's root filesystem (an ext4 image made
    from docker's overlay at create); with the built-in guest it is the model's."""
    marker = tmp_path / "marker"
    marker.write_text("from the image\n")
    cid = dk.docker.ok("create", "--runtime", RUNTIME, "--network", "none", IMAGE,
                       "sh", "-c", "cat /marker; cat /etc/group").stdout.strip()  # fmt: skip
    dk.docker.ok("cp", str(marker), f"{cid}:/marker")
    out = dk.docker.run("start", "-a", cid, timeout=180)
    if dk.hypervisor == "builtin":
        assert out.returncode == 1 and "/marker: No such file or directory" in out.stderr
        return
    assert out.returncode == 0, out.stderr
    assert out.stdout == "from the image\nroot:x:0:\nnogroup:x:65534:\n"  # the fixture's
    cid = dk.ok_run("-d", IMAGE, "sleep", "1d").strip()
    mounts = dk.exec_out(cid, "cat", "/proc/mounts")
    assert " / ext4 " in mounts and " /sys/fs/cgroup cgroup2 " in mounts
    assert dk.exec_out(cid, "sh", "-c", "echo w > /tmp/w; cat /tmp/w") == "w\n"


def test_ctr_run_with_runc_binary(dk: Cpuplug, tmp_path: Path) -> None:
    """containerd without docker: ``ctr run --runc-binary`` drives the same command line
    (the binary takes no arguments: a wrapper script passes cpuplug's)."""
    docker = dk.docker
    runtime = docker.runtimes[RUNTIME]
    wrapper = tmp_path / "cpuplug-runc"
    wrapper.write_text("#!/bin/sh\nexec " + " ".join([runtime.path, *runtime.args]) + ' "$@"\n')
    wrapper.chmod(0o755)
    ref = f"docker.io/library/{IMAGE}"
    docker.ok("save", "-o", str(tmp_path / "image.tar"), IMAGE)
    ns = ("-n", "cpuplug-test")
    assert docker.ctr(*ns, "image", "import", str(tmp_path / "image.tar")).returncode == 0
    run = (*ns, "run", "--runtime", "io.containerd.runc.v2", "--runc-binary", str(wrapper))
    try:
        out = docker.ctr(*run, "--rm", "--cpus", "1", ref, "c1", "sh", "-c", "nproc; exit 3",
                         timeout=180)  # fmt: skip
        assert (out.returncode, out.stdout) == (3, "2\n"), out.stderr
        assert docker.ctr(*run, "-d", "--null-io", ref, "c2", "sleep", "1d",
                          timeout=180).returncode == 0  # fmt: skip
        exec_ = docker.ctr(*ns, "task", "exec", "--exec-id", "e1", "c2", "sh", "-c", "exit 5",
                           timeout=120)  # fmt: skip
        assert exec_.returncode == 5, exec_.stderr
        assert docker.ctr(*ns, "task", "kill", "-s", "SIGKILL", "c2").returncode == 0
        deadline = time.monotonic() + 30
        while "STOPPED" not in docker.ctr(*ns, "task", "ls").stdout:
            assert time.monotonic() < deadline, docker.ctr(*ns, "task", "ls").stdout
            time.sleep(0.2)
    finally:
        docker.ctr(*ns, "task", "rm", "-f", "c2")
        docker.ctr(*ns, "container", "rm", "c2")
        docker.ctr(*ns, "image", "rm", ref)
    assert docker.ctr(*ns, "container", "ls", "-q").stdout == ""


def test_run_of_a_missing_program(dk: Cpuplug) -> None:
    proc = dk.docker.run("run", "--rm", "--runtime", RUNTIME, "--network", "none", IMAGE,
                         "no-such-program", timeout=180)  # fmt: skip
    assert proc.returncode == 127, proc.stderr  # docker's code for "executable file not found"
    assert "executable file not found" in proc.stderr

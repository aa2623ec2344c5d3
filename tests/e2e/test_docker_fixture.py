"""The docker fixture itself (tests/harness/docker.py), proven with plain runc.

A dockerd 20.10 and a containerd 1.6 of the test's own, the busybox image imported, runc
registered as ``cpuplug-test`` and, behind the call recorder, ``cpuplug-test-rec``: the
fixture the OCI runtime's tests will use with ``cpuplug-runc``. Skipped without root or
docker.io/containerd/runc; mandatory with CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import docker as docker_harness
from tests.harness.docker import (
    HOST_PATHS,
    IMAGE,
    Docker,
    DockerPool,
    Runtime,
    docker_fixture,  # noqa: F401  (fixture "docker")
    docker_pool_fixture,  # noqa: F401  (fixture "docker_pool")
    other_engines_running,
    read_calls,
    require_docker,
    running_docker,
    write_recorder,
)

pytestmark = pytest.mark.slow

RUN = ("run", "--network", "none", "--runtime", "cpuplug-test")


def test_run_rm_prints_hi(docker: Docker) -> None:
    proc = docker.ok(*RUN, "--rm", IMAGE, "echo", "hi")
    assert proc.stdout == "hi\n"
    assert docker.containers() == []  # --rm removed it


def test_exit_status_is_the_containers(docker: Docker) -> None:
    proc = docker.run(*RUN, "--name", "three", IMAGE, "sh", "-c", "exit 3")
    assert proc.returncode == 3, proc.stderr
    state = docker.ok("inspect", "-f", "{{.State.ExitCode}} {{.HostConfig.Runtime}}", "three")
    assert state.stdout.split() == ["3", "cpuplug-test"]


def test_stdin_and_default_runtime(docker: Docker) -> None:
    proc = docker.ok("run", "-i", "--rm", "--network", "none", IMAGE, "cat", input="piped\n")
    assert proc.stdout == "piped\n"


def test_update_cpu_quota_with_runc(docker: Docker) -> None:
    cid = docker.ok(*RUN, "-d", IMAGE, "sleep", "1000").stdout.strip()
    docker.ok("update", "--cpu-quota", "200000", "--cpu-period", "100000", cid)
    assert docker.ok("inspect", "-f", "{{.HostConfig.CpuQuota}} {{.HostConfig.CpuPeriod}}",
                     cid).stdout.split() == ["200000", "100000"]
    # cgroup v1 hybrid here: the container's own cpu controller, seen from inside
    inside = docker.ok("exec", cid, "cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                       "/sys/fs/cgroup/cpu/cpu.cfs_period_us").stdout.split()
    assert inside == ["200000", "100000"]


def test_versions_and_runtimes(docker: Docker) -> None:
    fmt = "{{.Client.Version}} {{.Server.Version}} {{.Server.APIVersion}}"
    client, server, api = docker.ok("version", "--format", fmt).stdout.split()
    assert server.startswith("20.10.") and client == server and api == "1.41"
    runtimes = json.loads(docker.ok("info", "--format", "{{json .Runtimes}}").stdout)
    assert runtimes["cpuplug-test"]["path"] == shutil.which("runc")
    assert {"cpuplug-test", "cpuplug-test-rec"} <= set(runtimes)
    assert set(docker.runtimes) <= set(runtimes)
    assert docker.ok("image", "ls", "-q", IMAGE).stdout.strip()


def test_recorded_call_sequence(docker: Docker) -> None:
    """The runtime calls docs/real-backends.md lists, as docker 20.10 makes them."""
    cid = docker.ok("run", "-d", "--network", "none", "--runtime", "cpuplug-test-rec",
                    "--cpu-quota", "100000", "--cpu-period", "100000", IMAGE,
                    "sleep", "1000").stdout.strip()
    docker.ok("exec", cid, "true")
    docker.ok("update", "--cpu-quota", "200000", "--cpu-period", "100000", cid)
    docker.ok("update", "--cpu-quota", "150000", cid)
    docker.ok("top", cid)
    docker.ok("pause", cid)
    docker.ok("unpause", cid)
    docker.ok("stop", "-t", "1", cid)  # sleep as PID 1 ignores SIGTERM: then SIGKILL

    calls = docker.calls("cpuplug-test-rec")
    assert all(c.rc == 0 for c in calls), [(c.argv, c.rc) for c in calls]
    assert [c.command for c in calls] == [
        "create", "start", "exec", "update", "update", "ps", "pause", "resume",
        "kill", "kill", "delete", "delete",
    ]
    bundle = calls[0].cwd
    root = str(docker.exec_root / "runtime-runc" / "moby")  # runc's, whatever the name
    for c in calls:
        assert c.global_args == ["--root", root, "--log", f"{bundle}/log.json",
                                 "--log-format", "json"], c.argv
        assert c.cwd == bundle and c.args[-1 if c.command != "kill" else -2] == cid
    create, _, exec_, grow, quota_only, top, *_ = calls
    assert create.args == ["--bundle", bundle, "--pid-file", f"{bundle}/init.pid", cid]
    assert create.config["linux"]["cgroupsPath"] == f"/docker/{cid}"
    assert create.config["linux"]["resources"]["cpu"] == {
        "shares": 0, "quota": 100000, "period": 100000}
    assert list(create.config["hooks"]) == ["prestart"]  # libnetwork-setkey, on the host
    assert exec_.args[0] == "--process" and exec_.args[2:4] == ["--detach", "--pid-file"]
    assert exec_.process["args"] == ["true"]
    assert grow.args == ["--resources", "-", cid]
    assert json.loads(grow.stdin or "") == {
        "memory": {"limit": 0, "reservation": 0, "kernel": 0},
        "cpu": {"shares": 0, "quota": 200000, "period": 100000},
        "blockIO": {"weight": 0},
    }
    assert json.loads(quota_only.stdin or "")["cpu"] == {
        "shares": 0, "quota": 150000, "period": 0}
    assert top.args == ["--format", "json", cid]
    assert [c.args for c in calls[-4:]] == [[cid, "15"], [cid, "9"], [cid], ["--force", cid]]


def test_runtime_args_come_first(docker_pool: DockerPool) -> None:
    """runtimeArgs reach the runtime before docker's own global options: dockerd runs it
    through a script of its own, ``<data-root>/runtimes/NAME``."""
    runc = shutil.which("runc")
    assert runc is not None
    docker = docker_pool.get({"args": Runtime(runc, ("--debug",))})
    docker.ok("run", "--rm", "--network", "none", "--runtime", "args-rec", IMAGE, "true")
    calls = docker.calls("args-rec")
    assert [c.command for c in calls] == ["create", "start", "delete", "delete"]
    assert all(c.global_args[:2] == ["--debug", "--root"] for c in calls)
    script = (docker.data_root / "runtimes" / "args").read_text()
    assert script == f"#!/bin/sh\n{runc} --debug $@\n"


def test_recorder_passes_stdin_and_status(tmp_path: Path) -> None:
    """Without docker: the recorder is transparent (status, stdout, update's stdin)."""
    real = tmp_path / "real"
    real.write_text("#!/bin/sh\necho \"$@\"; cat; exit 5\n")
    real.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    rec = write_recorder(tmp_path / "rec", str(real), log)
    proc = subprocess.run([str(rec), "--root", "R", "update", "--resources", "-", "ID"],
                          input="{}\n", capture_output=True, text=True, timeout=30, check=False)
    assert (proc.returncode, proc.stdout) == (5, "--root R update --resources - ID\n{}\n")
    (call,) = read_calls(log)
    assert (call.command, call.global_args, call.args) == (
        "update", ["--root", "R"], ["--resources", "-", "ID"])
    assert (call.stdin, call.rc) == ("{}\n", 5)


def test_teardown_leaves_nothing() -> None:
    """A daemon of its own stopped with a running and a stopped container: no process,
    no mount, no directory is left, inside or outside its directory."""
    require_docker()
    host_before = {p for p in HOST_PATHS if os.path.lexists(p)}
    with running_docker() as docker:
        running = docker.ok(*RUN, "-d", IMAGE, "sleep", "1000").stdout.strip()
        docker.run(*RUN, IMAGE, "false")
        d, pids = docker.dir, (docker.dockerd_pid, docker.containerd_pid)
        mounts = Path("/proc/self/mountinfo").read_text()
        assert f"{d}/docker/data/overlay2/" in mounts  # something to unmount
        shim = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                and f"{d}/containerd.sock".encode() in _cmdline(p)]
        assert shim, "no containerd-shim for the running container"
    assert not d.exists()
    assert str(d) not in Path("/proc/self/mountinfo").read_text()
    for pid in (*pids, *(int(p.name) for p in shim)):
        assert not _running(pid), pid
    assert not any(running in line for p in Path("/proc").iterdir() if p.name.isdigit()
                   for line in _cgroups(p))
    assert {p for p in HOST_PATHS if os.path.lexists(p)} <= host_before | _others()


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def _cgroups(proc: Path) -> list[str]:
    try:
        return (proc / "cgroup").read_text().splitlines()
    except OSError:
        return []


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _others() -> set[str]:
    """Host paths another engine on this machine may have made meanwhile."""
    return set(HOST_PATHS) if other_engines_running() else set()


def test_teardown_reports_what_it_had_to_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process left behind in the daemon's directory is killed and reported."""
    require_docker()
    monkeypatch.setattr(docker_harness, "SHIM_EXIT_TIMEOUT", 0.5)
    straggler: subprocess.Popen[bytes] | None = None
    with (
        pytest.raises(AssertionError, match=r"left running: \S+ -c .*sleep\(600\) /tmp/cpd"),
        running_docker(image=False) as docker,
    ):
        straggler = subprocess.Popen(  # no child of its own: killing it leaves nothing
            [sys.executable, "-c", "import time; time.sleep(600)", str(docker.dir / "x")]
        )
    assert straggler is not None
    assert straggler.wait(10) == -9
    assert not docker.dir.exists()

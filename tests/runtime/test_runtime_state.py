"""The runtime's state store, OCI bundle reading and command-line validation."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from cpuplug.cli import main
from cpuplug.errors import UsageError
from cpuplug.runtime.bundle import read_bundle
from cpuplug.runtime.process import process_alive
from cpuplug.runtime.process import start_ticks as process_start_ticks
from cpuplug.runtime.state import (
    ContainerState,
    LockTimeout,
    SandboxExists,
    SandboxNotFound,
    SandboxState,
    StateError,
    StateStore,
    default_root,
)


def make_state(name: str = "sb1") -> SandboxState:
    return SandboxState(
        name=name,
        created=1.0,
        mode="acpi",
        static=False,
        default_vcpus="1",
        maxcpus=8,
        boot_vcpus=1,
        remove_timeout=10.0,
        containers=[ContainerState(id=name, cmd=["true"])],
        plugged=[0],
    )


def test_default_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CPUPLUG_ROOT", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    if os.geteuid() == 0:
        assert default_root() == Path("/run/cpuplug")
    else:
        assert default_root() == Path("/run/user/1234/cpuplug")
    monkeypatch.setenv("CPUPLUG_ROOT", "/x/y")
    assert default_root() == Path("/x/y")


def test_dirs_are_private_and_state_round_trips(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "root")
    d = store.create("sb1")
    assert stat.S_IMODE((tmp_path / "root").stat().st_mode) == 0o700
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    st = make_state()
    st.plugged = [0, 1, 2]
    st.pending = {"op": "resize", "target": 3}
    store.save(st)
    back = store.load("sb1")
    assert back == st
    assert store.names() == ["sb1"]
    assert not list(d.glob(".state.*")), "temporary files must not linger"


def test_create_twice_and_unknown_names(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.create("a")
    with pytest.raises(SandboxExists):
        store.create("a")
    with pytest.raises(SandboxNotFound, match="no such sandbox: zz"):
        store.load("zz")
    with pytest.raises(SandboxNotFound):
        store.remove("zz")
    for bad in ("../x", "", "a/b", "-x", "x" * 65):
        with pytest.raises(UsageError, match="invalid sandbox name"):
            store.dir(bad)


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.create("a")
    (tmp_path / "a" / "state.json").write_text("{not json")
    with pytest.raises(StateError, match="corrupt state file"):
        store.load("a")
    (tmp_path / "a" / "state.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(StateError, match="unsupported state version"):
        store.load("a")


def test_save_is_atomic_when_the_writer_dies(tmp_path: Path) -> None:
    """A writer killed mid-save leaves the previous state intact (rename is the commit)."""
    store = StateStore(tmp_path)
    store.create("sb1")
    st = make_state()
    store.save(st)
    code = (
        "import os, sys\n"
        "from cpuplug.runtime.state import StateStore\n"
        f"store = StateStore({str(tmp_path)!r})\n"
        "st = store.load('sb1')\n"
        "st.plugged = list(range(400))\n"
        "real_replace = os.replace\n"
        "os.replace = lambda *a: os.kill(os.getpid(), 9)\n"
        "store.save(st)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=60, check=False)
    assert proc.returncode == -9
    assert store.load("sb1").plugged == [0]


def test_socket_path_length_is_checked(tmp_path: Path) -> None:
    store = StateStore(tmp_path / ("d" * 120))
    with pytest.raises(UsageError, match="shorter --root"):
        store.socket_path("sb1", "qmp")


def test_lock_serialises_and_times_out(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.create("sb1")
    order: list[str] = []
    held = threading.Event()
    release = threading.Event()

    def first() -> None:
        with store.lock("sb1"):
            order.append("first-in")
            held.set()
            release.wait(10)
            order.append("first-out")

    t = threading.Thread(target=first)
    t.start()
    try:
        assert held.wait(10)
        with pytest.raises(LockTimeout, match="busy"), store.lock("sb1", timeout=0.1):
            pass
        release.set()
        with store.lock("sb1", timeout=10):
            order.append("second")
    finally:
        release.set()
        t.join(10)
    assert order == ["first-in", "first-out", "second"]
    with pytest.raises(SandboxNotFound), store.lock("nope"):
        pass


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.create("sb1")
    code = (
        "import os, sys\n"
        "from cpuplug.runtime.state import StateStore\n"
        f"s = StateStore({str(tmp_path)!r})\n"
        "with s.lock('sb1'):\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockTimeout), store.lock("sb1", timeout=0.05):
            pass
        proc.kill()
        proc.wait(10)
        with store.lock("sb1", timeout=5):
            pass
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()


def test_process_alive_detects_dead_and_recycled(tmp_path: Path) -> None:
    me = os.getpid()
    assert process_alive(me, process_start_ticks(me))
    assert not process_alive(me, (process_start_ticks(me) or 0) + 1)  # a recycled pid
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    ticks = process_start_ticks(proc.pid)
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    # exited but not reaped (a zombie) is dead too
    assert not process_alive(proc.pid, ticks)
    proc.wait()
    assert not process_alive(proc.pid, ticks)
    assert not process_alive(None, None)


# ---------------------------------------------------------------- OCI bundle


def write_bundle(tmp_path: Path, doc: object) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(doc))
    return tmp_path


def test_bundle_reads_args_and_cpu(tmp_path: Path) -> None:
    b = read_bundle(
        write_bundle(
            tmp_path,
            {
                "ociVersion": "1.1.0",
                "process": {"args": ["stress", "--cpu", "2"], "cwd": "/"},
                "linux": {"resources": {"cpu": {"quota": 150000, "period": 100000, "cpus": "0-1"}}},
            },
        )
    )
    assert (b.args, b.quota, b.period, b.cpuset) == (
        ["stress", "--cpu", "2"],
        150000,
        100000,
        "0-1",
    )
    b = read_bundle(write_bundle(tmp_path, {"process": {"args": ["true"]}}))
    assert (b.quota, b.period, b.cpuset) == (None, None, None)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ([], "JSON object"),
        ({"process": {"args": []}}, "process.args"),
        ({"process": {"args": "true"}}, "process.args"),
        ({"process": {"args": ["x"]}, "linux": {"resources": {"cpu": {"quota": "1"}}}}, "integer"),
        ({"process": {"args": ["x"]}, "linux": {"resources": {"cpu": {"period": 0}}}}, "> 0"),
        (
            {"process": {"args": ["x"]}, "linux": {"resources": {"cpu": {"cpus": "2-1"}}}},
            "cpu list",
        ),
    ],
)
def test_bad_bundles(tmp_path: Path, doc: object, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        read_bundle(write_bundle(tmp_path, doc))


@pytest.mark.parametrize(
    ("linux", "match"),
    [
        ([], "linux must be an object"),
        ("x", "linux must be an object"),
        ({"resources": []}, "linux.resources must be an object"),
        ({"resources": {"cpu": 5}}, "linux.resources.cpu must be an object"),
    ],
)
def test_qa_wrong_typed_linux_sections_are_refused(
    tmp_path: Path, linux: object, match: str
) -> None:
    """QA: ``"linux": []`` was taken as "no limits"."""
    with pytest.raises(UsageError, match=match):
        read_bundle(write_bundle(tmp_path, {"process": {"args": ["x"]}, "linux": linux}))
    b = read_bundle(write_bundle(tmp_path, {"process": {"args": ["x"]}, "linux": None}))
    assert (b.quota, b.cpuset) == (None, None)


def test_qa_deeply_nested_bundle_is_a_malformed_bundle(tmp_path: Path) -> None:
    """QA: a deeply nested config.json gave a RecursionError traceback."""
    depth = sys.getrecursionlimit() * 10
    (tmp_path / "config.json").write_text('{"process": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(UsageError, match="malformed bundle"):
        read_bundle(tmp_path)


def test_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no config\.json"):
        read_bundle(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(UsageError, match="invalid JSON"):
        read_bundle(tmp_path)


# ---------------------------------------------------------------- CLI validation


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["run", "--cpus", "-1", "--", "true"], "must not be negative"),
        (["run", "--cpus", "abc", "--", "true"], "expected a number"),
        (["run", "--cpus", "\uff11", "--", "true"], "expected a number"),
        (["run", "--cpus", "1_0", "--", "true"], "expected a number"),
        (["run", "--cpu-quota", "\uff15\uff10\uff10\uff10\uff10", "--", "true"], "--cpu-quota"),
        (["run", "--cpu-period", "100_000", "--", "true"], "--cpu-period"),
        (["run", "--max-cpus", "\u0664", "--", "true"], "--max-cpus"),
        (["run", "--cpu-period", "0", "--", "true"], "--cpu-period"),
        (["run", "--cpu-quota", "x", "--", "true"], "--cpu-quota"),
        (["run", "--cpu-quota", "-5", "--", "true"], "--cpu-quota"),
        (["run", "--cpu-quota", "999", "--", "true"], "--cpu-quota"),
        (["run", "--cpu-period", "2000000", "--", "true"], "--cpu-period"),
        (["run", "--cpus", "0.001", "--", "true"], "smallest limit is 0.01"),
        (["run", "--cpuset-cpus", "0-", "--", "true"], "invalid cpu list"),
        (["run", "--cpuset-cpus", "a", "--", "true"], "invalid cpu list"),
        (["run", "--cpus", "1", "--cpu-period", "50000", "--", "true"], "conflicting"),
        (["run", "--cpus", "1"], "needs a command"),
        (["run", "--max-cpus", "0", "--", "true"], "--max-cpus"),
        (["run", "--mode", "magic", "--", "true"], "--mode"),
        (["run", "--name", "../etc", "--", "true"], "invalid sandbox name"),
        (["run", "--config", "/nonexistent/c.toml", "--", "true"], "does not exist"),
        (["update", "--cpus", "2", "nosuch"], "no such sandbox: nosuch"),
        (["update", "nosuch"], "update needs"),
        (["inspect", "nosuch"], "no such sandbox"),
        (["exec", "nosuch", "--", "nproc"], "no such sandbox"),
        (["stop", "nosuch"], "no such sandbox"),
        (["rm", "nosuch"], "no such sandbox"),
        (["events", "nosuch"], "no such sandbox"),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> None:
    rc = main([argv[0], "--root", str(tmp_path), *argv[1:]])
    err = capsys.readouterr().err
    assert rc == 2
    assert match in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir()), "a refused command must not leave state behind"


def test_ps_on_an_empty_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ps", "--root", str(tmp_path / "none"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_cpus_zero_means_no_limit_and_flags_merge() -> None:
    from cpuplug.cli import build_parser
    from cpuplug.runtime.commands import resources_from_args
    from cpuplug.runtime.sandbox import Resources

    def parse(*argv: str) -> Resources:
        return resources_from_args(build_parser().parse_args(["update", *argv, "x"]))

    assert parse("--cpus", "0") == Resources(quota=-1, period=100000)  # docker's meaning
    assert parse("--cpus", "1.5") == Resources(quota=150000, period=100000)
    assert parse("--cpu-quota", "50000", "--cpu-period", "50000") == Resources(50000, 50000)
    assert parse("--cpuset-cpus", "0-1") == Resources(cpuset="0-1")


# ---------------------------------------------------------------- QA: broken state


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("maxcpus", "lots", "maxcpus must be int"),
        ("maxcpus", 0, "maxcpus must be 1..512"),
        ("static", "yes", "static must be bool"),
        ("plugged", ["a"], "plugged must be list"),
        ("default_vcpus", "many", "Fraction"),
        ("containers", [{"id": 1, "cmd": []}], r"containers\[0\].id must be str"),
        ("containers", {}, "containers must be a list"),
        ("vmm_pid", 1.5, "vmm_pid must be int"),
    ],
)
def test_wrong_types_in_state_are_one_line_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    field: str,
    value: object,
    match: str,
) -> None:
    store = StateStore(tmp_path)
    store.create("a")
    doc = json.loads(make_state("a").to_json())
    doc[field] = value
    (tmp_path / "a" / "state.json").write_text(json.dumps(doc))
    with pytest.raises(StateError, match=match):
        store.load("a")
    assert main(["inspect", "--root", str(tmp_path), "a"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_broken_sandbox_is_listed_and_rm_f_stops_its_vmm(tmp_path: Path) -> None:
    """QA: a corrupt state.json hid a running sandbox from ps and rm -f orphaned its VMM."""
    from cpuplug.runtime.sandbox import Runtime

    root = Path(tempfile.mkdtemp(prefix="cpq", dir="/tmp"))  # sun_path is short
    d = root / "sb1"
    d.mkdir(mode=0o700)
    qmp = d / "qmp.sock"
    vmm = subprocess.Popen(
        [
            sys.executable, "-m", "cpuplug", "vmm", "--smp", "cpus=1,maxcpus=2",
            "--qmp", f"unix:{qmp}", "--agent", f"unix:{d / 'agent.sock'}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not qmp.exists():
            assert vmm.poll() is None, "the VMM exited during start-up"
            assert time.monotonic() < deadline, "the VMM did not create its QMP socket"
            time.sleep(0.02)
        (d / "state.json").write_text('{"version": 1, "maxcpus": "lo')
        rt = Runtime(root)
        rows = rt.ps()
        assert [(r.name, r.status) for r in rows] == [("sb1", "broken")]
        with pytest.raises(StateError, match="rm -f"):
            rt.rm("sb1")
        assert vmm.poll() is None
        rt.rm("sb1", force=True)
        assert vmm.wait(timeout=10) is not None
        assert not d.exists()
        assert rt.ps() == []
    finally:
        if vmm.poll() is None:
            vmm.kill()
        vmm.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def test_rm_f_of_a_broken_sandbox_without_a_vmm_removes_the_directory(tmp_path: Path) -> None:
    from cpuplug.runtime.sandbox import Runtime

    store = StateStore(tmp_path)
    store.create("gone")
    (tmp_path / "gone" / "state.json").write_text("")
    rt = Runtime(tmp_path)
    assert [r.status for r in rt.ps()] == ["broken"]
    rt.rm("gone", force=True)
    assert not (tmp_path / "gone").exists()

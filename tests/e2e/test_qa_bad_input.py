"""Bad and odd input from a user or client: a clear error, nothing lost, nobody dies.

Each test here is a regression test for a fault found by driving the user-facing
entries (``cpuplug acpi|vmm|run|update``, the QMP socket, the agent channel) the
way a careless or hostile user would. Everything runs in-process and quickly.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cpuplug import agent_protocol as ap
from cpuplug.acpi import virt
from cpuplug.cli import main
from cpuplug.errors import UsageError
from cpuplug.vmm.machine import VirtMachine
from cpuplug.vmm.qmp import QmpServer
from tests.harness.guest_fakes import FakeKernel
from tests.guest.test_guest_agent import Env

TIMEOUT = 10.0
MAX_TABLE_FILE = 64 << 20  # cpuplug.acpi.cli's bound on what ``acpi dump`` reads


# ----------------------------------------------------------------------------- acpi dump


def test_acpi_dump_of_an_endless_file_is_an_error_not_a_memory_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``acpi dump /dev/zero`` read until MemoryError; the read is now bounded."""
    huge = tmp_path / "huge"
    with huge.open("wb") as handle:  # sparse: costs no disk
        handle.truncate(MAX_TABLE_FILE + 1)
    xsdt = tmp_path / "XSDT.dat"
    xsdt.write_bytes(virt.build_machine_tables(virt.MachineConfig()).blobs["XSDT"])
    assert main(["acpi", "dump", str(huge), str(xsdt)]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"cpuplug: error: {huge}: larger than 64 MiB, too large to be an ACPI table"
    ]
    assert out.startswith(f"{xsdt}: XSDT")  # the good file after it is still dumped


def test_acpi_dump_does_not_send_a_files_control_bytes_to_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spcr = bytearray(virt.build_machine_tables(virt.MachineConfig()).blobs["SPCR"])
    spcr[0:4] = b"\x1b[2J"  # "clear screen" as a table signature
    table = tmp_path / "odd.dat"
    table.write_bytes(bytes(spcr))
    short = tmp_path / "short.dat"
    short.write_bytes(b"\x1b]0;owned\x07" + bytes(30))
    assert main(["acpi", "dump", str(table), str(short)]) == 1
    out, err = capsys.readouterr()
    assert "\x1b" not in out and "\x1b" not in err and "\x07" not in err
    assert "\\x1b[2J" in out and "\\x1b]0;" in err


def test_acpi_tables_with_an_empty_out_does_not_write_into_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out "$DIR"`` with DIR unset was ``Path("")`` = ``.``: tables landed in the cwd."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["acpi", "tables", "--out", ""])
    assert info.value.code == 2
    assert "empty directory name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_output_into_a_closed_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    """``cpuplug acpi dump DSDT.dat | head -1`` ended in a BrokenPipeError traceback."""
    dsdt = tmp_path / "DSDT.dat"
    config = virt.MachineConfig.from_smp("cpus=1,maxcpus=512")
    dsdt.write_bytes(virt.build_machine_tables(config).blobs["DSDT"])
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpuplug", "acpi", "dump", str(dsdt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert proc.stdout.read(5) == str(dsdt).encode()[:5]
        proc.stdout.close()  # far more output than a pipe buffer is still to come
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 128 + 13
        assert err == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


# ----------------------------------------------------------------------------- QMP wire


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (``sun_path`` holds 107 bytes; tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="qa", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def machine() -> Iterator[VirtMachine]:
    vm = VirtMachine(virt.MachineConfig.from_smp("cpus=1,maxcpus=4"))
    vm.start()
    yield vm
    vm.shutdown()


async def _open(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(path)
    await asyncio.wait_for(reader.readline(), TIMEOUT)  # greeting
    writer.write(b'{"execute": "qmp_capabilities"}\n')
    assert b"return" in await asyncio.wait_for(reader.readline(), TIMEOUT)
    return reader, writer


def _strict(line: bytes) -> dict[str, Any]:
    """Parse a reply as a strict JSON client would (no NaN/Infinity)."""

    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    value: dict[str, Any] = json.loads(line, parse_constant=refuse)
    return value


def _qmp_exchange(vm: VirtMachine, path: str, data: bytes, replies: int) -> list[dict[str, Any]]:
    """Send ``data`` raw on a negotiated connection; return the next ``replies`` replies."""
    quits: list[bool] = []

    async def go() -> list[dict[str, Any]]:
        server = QmpServer(vm, path, on_quit=lambda: quits.append(True))
        await server.start()
        try:
            reader, writer = await _open(path)
            writer.write(data)
            got = [
                _strict(await asyncio.wait_for(reader.readline(), TIMEOUT)) for _ in range(replies)
            ]
            writer.close()
            await writer.wait_closed()
            return got
        finally:
            await server.close()

    got = asyncio.run(go())
    assert not quits
    return got


def test_qmp_half_line_then_a_command_gets_an_error_and_the_command_runs(
    machine: VirtMachine, sock_dir: Path
) -> None:
    """A raw newline inside a string used to swallow every later message: the client hung."""
    got = _qmp_exchange(
        machine,
        str(sock_dir / "q"),
        b'{"execute": "query-st\n{"execute": "query-status", "id": 2}\n',
        2,
    )
    assert got[0]["error"]["desc"] == "JSON parse error, control character in string"
    assert got[1] == {"return": {"status": "running", "running": True}, "id": 2}


def test_qmp_duplicate_keys_are_refused_not_last_one_wins(
    machine: VirtMachine, sock_dir: Path
) -> None:
    """Python's json keeps the last key: this message used to run ``quit``."""
    got = _qmp_exchange(
        machine,
        str(sock_dir / "q"),
        b'{"execute": "query-status", "execute": "quit"}\n{"execute": "query-status"}\n',
        2,
    )
    assert got[0] == {
        "error": {"class": "GenericError", "desc": "JSON parse error, duplicate key 'execute'"}
    }
    assert got[1] == {"return": {"status": "running", "running": True}}


@pytest.mark.parametrize(
    ("value", "desc"),
    [
        (b"1e999", "JSON parse error, number 1e999 is out of range"),
        (b"NaN", "JSON parse error, invalid token 'NaN'"),
        (b"-Infinity", "JSON parse error, invalid token '-Infinity'"),
        (b"9" * 5000, "JSON parse error, integer of 5000 digits is too long"),
    ],
)
def test_qmp_numbers_json_cannot_carry_are_errors_and_replies_stay_json(
    machine: VirtMachine, sock_dir: Path, value: bytes, desc: str
) -> None:
    """``"id": 1e999`` used to be echoed as ``Infinity``: a reply no strict client parses."""
    got = _qmp_exchange(
        machine,
        str(sock_dir / "q"),
        b'{"execute": "query-status", "id": ' + value + b'}\n{"execute": "query-status"}\n',
        2,
    )
    assert got[0] == {"error": {"class": "GenericError", "desc": desc}}
    assert got[1] == {"return": {"status": "running", "running": True}}


# ----------------------------------------------------------------------------- socket paths


def test_qmp_socket_on_a_users_file_or_directory_is_refused_and_kept(
    machine: VirtMachine, sock_dir: Path
) -> None:
    """A failed start used to end in close() unlinking the path: the user's file was deleted."""
    precious = sock_dir / "notes.txt"
    precious.write_text("keep me")
    folder = sock_dir / "dir"
    folder.mkdir()

    async def go(path: Path) -> str:
        server = QmpServer(machine, path)
        try:
            with pytest.raises(UsageError) as info:
                await server.start()
        finally:
            await server.close()  # used to raise IsADirectoryError for a directory
        return str(info.value)

    assert "is a file that is not a socket" in asyncio.run(go(precious))
    assert precious.read_text() == "keep me"
    assert "is a directory" in asyncio.run(go(folder))
    assert folder.is_dir()


def test_a_live_socket_is_not_stolen_but_a_stale_one_is_replaced(
    machine: VirtMachine, sock_dir: Path
) -> None:
    """QEMU unlinks and rebinds a live path, cutting off the process that owns it."""
    live = sock_dir / "live"
    owner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale = sock_dir / "stale"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        owner.bind(str(live))
        owner.listen(1)
        dead.bind(str(stale))  # bound, never listening: what a crashed VMM leaves

        async def go() -> None:
            server = QmpServer(machine, live)
            with pytest.raises(UsageError, match="in use by another process"):
                await server.start()
            await server.close()
            other = QmpServer(machine, stale)
            await other.start()
            _reader, writer = await _open(str(stale))
            writer.close()
            await writer.wait_closed()
            await other.close()

        asyncio.run(go())
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with probe:
            probe.connect(str(live))  # the owner still has its address
        assert not stale.exists()  # ours was removed on close
    finally:
        owner.close()
        dead.close()


def test_vmm_refuses_paths_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "file"
    precious.write_text("keep me")
    base = ["vmm", "--smp", "cpus=1,maxcpus=2", "--kernel", "none"]
    for qmp, agent, message in [
        (precious, tmp_path / "a", "--qmp socket path"),
        (tmp_path / "q", precious, "--agent socket path"),
        (tmp_path / "q", tmp_path, "is a directory"),
    ]:
        assert main([*base, "--qmp", f"unix:{qmp}", "--agent", f"unix:{agent}"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and message in err[0], err
    assert precious.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ----------------------------------------------------------------------------- runtime CLI


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A state directory; any sandbox a regression did start is removed (VMM included)."""
    path = tmp_path / "root"
    yield path
    if path.is_dir():
        for sandbox in path.iterdir():
            main(["rm", "-f", "--root", str(path), sandbox.name])


def test_cpus_with_a_giant_exponent_is_a_usage_error_not_a_hang(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``Fraction("1e99999999")`` computes a 100-million-digit integer: the CLI hung
    (without the fix this test ends at the pytest timeout)."""
    for value in ("1e99999999", "1e-9999999", "1" * 100):
        assert main(["update", "--root", str(tmp_path), "sb", "--cpus", value]) == 2
        assert "invalid --cpus value" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [["--cpus", "1e308"], ["--cpu-quota", "99999999999999999999"], ["--cpus", "175921861"]],
)
def test_quota_beyond_the_kernels_maximum_is_refused_before_a_sandbox_starts(
    root: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    """It used to boot a VMM and fail in the guest with a 300-digit EINVAL."""
    assert main(["run", "--root", str(root), *flags, "--", "sleep", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "exceed the kernel's maximum of 17592186044415" in err[0]
    assert not root.exists() or list(root.iterdir()) == []


def test_bundle_quota_beyond_the_kernels_maximum_is_refused_up_front(
    tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    config = {
        "process": {"args": ["sleep", "1"]},
        "linux": {"resources": {"cpu": {"quota": 10**30, "period": 100000}}},
    }
    (bundle / "config.json").write_text(json.dumps(config))
    assert main(["run", "--root", str(root), "--bundle", str(bundle)]) == 2
    assert "exceed the kernel's maximum" in capsys.readouterr().err
    assert not root.exists() or list(root.iterdir()) == []


# ----------------------------------------------------------------------------- agent channel


@pytest.fixture
def agent_env() -> Iterator[Env]:
    env = Env(FakeKernel(possible=4, online=1, enabled=2), retry_interval=0.01)
    yield env
    env.close()


def test_exec_timeout_too_large_is_einval_and_spawns_nothing(agent_env: Env) -> None:
    """``timeout: 1e999`` (infinity) was an EIO "internal error" *after* the spawn,
    leaving the process running unwaited in the container."""
    agent_env.call(ap.Method.CREATE_CONTAINER, {"container_id": "c", "cmd": []})
    for timeout in (b"1e999", b"1e300"):
        body = (
            b'{"id": 7, "method": "ExecProcess", "params": {"container_id": "c", '
            b'"cmd": ["sleep", "30"], "timeout": ' + timeout + b"}}"
        )
        reply = agent_env.raw(struct.pack(">I", len(body)) + body)
        assert reply["id"] == 7 and reply["error"]["code"] == "EINVAL", reply
        assert "'timeout' must be at most" in reply["error"]["message"]
        assert agent_env.kernel.sched.tasks() == []
    out = agent_env.call(ap.Method.EXEC_PROCESS, {"container_id": "c", "cmd": ["true"]})
    assert out["exit_code"] == 0  # and the agent keeps serving


def test_online_more_cpus_than_exist_fails_at_once(agent_env: Env) -> None:
    """It used to retry 100 times (5 s with Kata's interval) for a request that can never
    succeed, onlining what it could on the way, and then answer ETIMEDOUT."""
    err = agent_env.error(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 10**30})
    assert err.code is ap.ErrorCode.EINVAL and "exceeds the 4 possible CPUs" in err.message
    assert agent_env.kernel.online_writes == []  # refused before touching any CPU
    assert agent_env.call(ap.Method.GUEST_DETAILS)["online"] == "0"
    assert agent_env.call(ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 2})["online"] == [0, 1]

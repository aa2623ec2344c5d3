"""QMP (docs/contract.md §7) against the real ``cpuplug vmm`` process, via the official client.

Every exchange goes through ``qemu.qmp.QMPClient``. Garbage that no JSON client
would send is written to the client's own stream (``_writer``) and its reply is
collected as the ID-less execution ``_raw(..., assign_id=False)`` is: that is how
QEMU answers a parse error (an error without ``id``), and the client routes it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

from cpuplug.cli import main
from cpuplug.errors import UsageError
from cpuplug.vmm.machine import VirtMachine
from cpuplug.vmm.qmp import JsonSplitter, ParseFault, QmpServer
from cpuplug.vmm.sockpath import claim_socket_path
from cpuplug.vmm.vsock import AgentChannelDevice, AgentChannelError
from tests.harness.machine import RecordingMachine
from tests.harness.qmp_helpers import qmp_connect
from tests.harness.vmm import ROOT, VmmProcess

TIMEOUT = 15.0


async def connect(process: VmmProcess, negotiate: bool = True) -> QMPClient:
    client = QMPClient("test")
    client.negotiate = negotiate
    await asyncio.wait_for(client.connect(process.qmp_path), TIMEOUT)
    return client


async def error_of(
    client: QMPClient, command: str, args: dict[str, Any] | None = None
) -> tuple[str, str]:
    with pytest.raises(ExecuteError) as info:
        await client.execute(command, args)
    return info.value.error_class, info.value.error.error.desc


async def raw_reply(client: QMPClient, data: bytes) -> dict[str, Any]:
    """Send bytes no JSON client would produce; return the server's ID-less reply."""
    assert client._writer is not None
    client._writer.write(data)
    reply = await asyncio.wait_for(
        client._raw({"execute": "query-status"}, assign_id=False), TIMEOUT
    )
    return dict(reply)


async def still_serving(client: QMPClient) -> None:
    assert await client.execute("query-status") == {"status": "running", "running": True}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def virt_machine(machine: Callable[..., RecordingMachine]) -> VirtMachine:
    """The started in-process VirtMachine (1 of 4 vCPUs) the QMP server serves."""
    return machine(cpus=1, maxcpus=4).m


# ----------------------------------------------------------------------------- protocol


def test_greeting_and_capabilities_negotiation(vmm: Callable[..., VmmProcess]) -> None:
    process = vmm()

    async def go() -> None:
        client = await connect(process, negotiate=False)
        assert client.greeting is not None
        assert dict(client.greeting._raw) == {
            "QMP": {
                "version": {"qemu": {"major": 9, "minor": 2, "micro": 0}, "package": "cpuplug"},
                "capabilities": [],
            }
        }
        assert await error_of(client, "query-status") == (
            "CommandNotFound",
            "Expecting capabilities negotiation with 'qmp_capabilities'",
        )
        assert await error_of(client, "qmp_capabilities", {"enable": ["oob"]}) == (
            "GenericError",
            "Capability 'oob' not available",
        )
        assert await client.execute("qmp_capabilities") == {}
        klass, _desc = await error_of(client, "qmp_capabilities")
        assert klass == "CommandNotFound"
        await still_serving(client)
        await client.disconnect()

    run(go())


def test_id_is_echoed_verbatim(vmm: Callable[..., VmmProcess]) -> None:
    process = vmm()

    async def go() -> None:
        client = await connect(process)
        reply = await client._raw({"execute": "query-name", "id": "my-id-7"}, assign_id=False)
        assert dict(reply) == {"return": {}, "id": "my-id-7"}
        await client.disconnect()

    run(go())


def test_queries(vmm: Callable[..., VmmProcess]) -> None:
    process = vmm("cpus=2,maxcpus=4")

    async def go() -> None:
        client = await connect(process)
        version = await client.execute("query-version")
        assert version == {"qemu": {"major": 9, "minor": 2, "micro": 0}, "package": "cpuplug"}
        commands: Any = await client.execute("query-commands")
        names = {c["name"] for c in commands}
        assert {
            "query-hotpluggable-cpus", "device_add", "device_del", "query-cpus-fast",
            "query-acpi-ospm-status", "query-status", "system_powerdown", "quit",
        } <= names  # fmt: skip
        hot: Any = await client.execute("query-hotpluggable-cpus")
        assert [h["props"]["core-id"] for h in hot] == [3, 2, 1, 0]
        assert hot[3] == {
            "type": "max-arm-cpu",
            "vcpus-count": 1,
            "props": {"socket-id": 0, "cluster-id": 0, "core-id": 0, "thread-id": 0},
            "qom-path": "/machine/unattached/device[0]",
        }
        assert [("qom-path" in h) for h in hot] == [False, False, True, True]
        cpus: Any = await client.execute("query-cpus-fast")
        assert [c["cpu-index"] for c in cpus] == [0, 1]
        assert {c["target"] for c in cpus} == {"aarch64"}
        assert {c["thread-id"] for c in cpus} <= process.task_ids()
        ospm: Any = await client.execute("query-acpi-ospm-status")
        assert [o["slot"] for o in ospm] == ["0", "1", "2", "3"]
        await client.disconnect()

    run(go())


# ----------------------------------------------------------------------------- bad input


BAD_COMMANDS: list[tuple[str, dict[str, Any] | None, str, str]] = [
    ("no-such-command", None, "CommandNotFound", "The command no-such-command has not been found"),
    ("device_del", {}, "GenericError", "Parameter 'id' is missing"),
    ("device_del", {"id": 5}, "GenericError", "Invalid parameter type for 'id', expected: string"),
    ("query-status", {"verbose": True}, "GenericError", "Parameter 'verbose' is unexpected"),
    ("device_add", {"id": "x", "core-id": 1}, "GenericError", "Parameter 'driver' is missing"),
    ("device_add", {"driver": 3, "core-id": 1}, "GenericError",
     "Invalid parameter type for 'driver', expected: string"),
    ("device_add", {"driver": "max-arm-cpu", "id": "x", "core-id": "1"}, "GenericError",
     "Invalid parameter type for 'core-id', expected: integer"),
    ("device_add", {"driver": "max-arm-cpu", "id": "x", "core-id": 4}, "GenericError",
     "Invalid CPU core-id: 4 (must be in range 0..3)"),
    ("device_add", {"driver": "max-arm-cpu", "id": "x", "core-id": 0}, "GenericError",
     "CPU core-id 0 is already plugged"),
    ("device_add", {"driver": "max-arm-cpu", "id": "taken", "core-id": 3}, "GenericError",
     "Duplicate device ID 'taken'"),
    ("device_add", {"driver": "e1000", "id": "x"}, "GenericError",
     "'e1000' is not a valid device model name"),
    ("device_add", {"driver": "max-arm-cpu", "id": "x", "core-id": 1, "color": 1},
     "GenericError", "Property 'max-arm-cpu.color' not found"),
    ("device_del", {"id": "/machine/unattached/device[0]"}, "GenericError",
     "Boot CPU is unpluggable"),
    ("device_del", {"id": "ghost"}, "GenericError", "Device 'ghost' not found"),
]  # fmt: skip


def test_bad_commands_get_errors_and_the_vmm_keeps_serving(
    vmm: Callable[..., VmmProcess],
) -> None:
    process = vmm()

    async def go() -> None:
        client = await connect(process)
        await client.execute("device_add", {"driver": "max-arm-cpu", "id": "taken", "core-id": 2})
        for command, args, klass, desc in BAD_COMMANDS:
            assert await error_of(client, command, args) == (klass, desc), command
            await still_serving(client)
        cpus: Any = await client.execute("query-cpus-fast")
        assert [c["cpu-index"] for c in cpus] == [0, 2]
        await client.disconnect()

    run(go())


GARBAGE: list[tuple[bytes, str]] = [
    (b"this is not json\n", "JSON parse error"),
    (b'{"execute": "query-status",, }\n', "JSON parse error"),
    (b"[1, 2, 3]", "QMP input must be a JSON object"),
    (b'"just a string"', "QMP input must be a JSON object"),
    (b"42\n", "QMP input must be a JSON object"),
    (b"}", "JSON parse error"),
    (b'{"execute": 1}', "QMP input member 'execute' must be a string"),
    (b'{"arguments": {}}', "QMP input lacks member 'execute'"),
    (b'{"execute": "query-status", "bogus": 1}', "QMP input member 'bogus' is unexpected"),
    (b'{"execute": "query-status", "arguments": []}',
     "QMP input member 'arguments' must be an object"),
    (b'{"execute": "x", "s": "' + b"A" * (2 * 1024 * 1024) + b'"}', "larger than"),
    (b"[" * 5000 + b"]" * 5000, "nesting deeper than"),
    (b'{"execute": "\xff\xfe"}', "JSON parse error"),
    (b"garbage words here\n", "JSON parse error"),
]  # fmt: skip


def test_garbage_gets_an_error_and_the_connection_keeps_serving(
    vmm: Callable[..., VmmProcess],
) -> None:
    process = vmm()

    async def go() -> None:
        client = await connect(process)
        for data, desc in GARBAGE:
            reply = await raw_reply(client, data)
            assert reply["error"]["class"] == "GenericError", data[:40]
            assert desc in reply["error"]["desc"], (data[:40], reply)
            assert "id" not in reply
            await still_serving(client)
        await client.disconnect()
        # And a fresh client is served too.
        again = await connect(process)
        await still_serving(again)
        await again.disconnect()

    run(go())


def test_json_splitter_finds_messages_across_chunks_and_resyncs() -> None:
    splitter = JsonSplitter(max_size=64, max_depth=4)
    message = b'{"execute": "a\\"}{", "arguments": {"x": [1, {"y": "]"}]}}'
    out: list[bytes | ParseFault] = []
    for i in range(len(message)):  # byte by byte, escapes and brackets in strings
        out += splitter.feed(message[i : i + 1])
    assert out == [message]
    assert json.loads(message)["execute"] == 'a"}{'
    out = splitter.feed(b'{"big": "' + b"z" * 100 + b'"} {"ok": 1}')
    assert isinstance(out[0], ParseFault) and out[1:] == [b'{"ok": 1}']
    out = splitter.feed(b"[[[[[[]]]]]] {}")
    assert isinstance(out[0], ParseFault) and out[1:] == [b"{}"]
    assert splitter.feed(b"nul") == []
    assert splitter.feed(b"l ") == [b"null"]
    out = splitter.feed(b"not json at all\n{}")  # one error for the line, then resync
    assert len(out) == 2 and isinstance(out[0], ParseFault) and out[1] == b"{}"


# ----------------------------------------------------------------------------- clients


def test_several_clients_one_after_another_and_at_once(vmm: Callable[..., VmmProcess]) -> None:
    process = vmm()

    async def go() -> None:
        for _ in range(3):
            client = await connect(process)
            await still_serving(client)
            await client.disconnect()
        clients = [await connect(process) for _ in range(3)]
        await clients[0].execute("system_powerdown")  # the guest may ignore it
        for client in clients:
            event = await asyncio.wait_for(client.events.get(), TIMEOUT)
            assert event["event"] == "POWERDOWN"
            stamp: Any = event["timestamp"]
            assert set(stamp) == {"seconds", "microseconds"}
        await asyncio.gather(*(still_serving(c) for c in clients))
        for client in clients:
            await client.disconnect()

    run(go())


def test_a_client_that_never_reads_is_dropped_not_buffered(
    virt_machine: VirtMachine, caplog: pytest.LogCaptureFixture
) -> None:
    """In-process server: events to a client that stopped reading cannot grow the VMM."""
    workdir = tempfile.mkdtemp(prefix="vmm", dir="/tmp")

    async def go() -> None:
        server = QmpServer(virt_machine, f"{workdir}/q")
        await server.start()
        slow = await connect_path(f"{workdir}/q")
        assert slow._writer is not None
        slow._writer.transport.pause_reading()  # type: ignore[attr-defined]
        blob = {"blob": "x" * 65536}
        for _ in range(400):  # ~26 MB of events, more than the 16 MiB allowance
            server.emit("TEST", blob)
            await asyncio.sleep(0)
        if server._tasks:  # its serving task ends once the connection is aborted
            await asyncio.wait(list(server._tasks), timeout=TIMEOUT)
        assert not server._clients
        fresh = await connect_path(f"{workdir}/q")
        await still_serving(fresh)
        await fresh.disconnect()
        with contextlib.suppress(Exception):
            await slow.disconnect()
        await server.close()

    try:
        run(go())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert any("not reading" in r.message for r in caplog.records)


async def connect_path(path: str) -> QMPClient:
    client = QMPClient("test")
    await asyncio.wait_for(client.connect(path), TIMEOUT)
    return client


def test_quit_emits_shutdown_and_removes_sockets(vmm: Callable[..., VmmProcess]) -> None:
    process = vmm()
    assert stat.S_IMODE(os.stat(process.qmp_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(process.agent_path).st_mode) == 0o600

    async def go() -> None:
        client = await connect(process)
        assert await client.execute("quit") == {}
        event = await asyncio.wait_for(client.events.get(), TIMEOUT)
        assert event["event"] == "SHUTDOWN"
        assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}
        with contextlib.suppress(EOFError):  # the VMM hung up, as QEMU does after quit
            await client.disconnect()

    run(go())
    assert process.wait() == 0
    assert not os.path.exists(process.qmp_path)
    assert not os.path.exists(process.agent_path)
    assert "Traceback" not in process.stderr()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_the_process_cleanly(vmm: Callable[..., VmmProcess], signum: int) -> None:
    process = vmm(kernel="none")
    assert process.proc is not None
    process.proc.send_signal(signum)
    assert process.wait() == 0
    assert not os.path.exists(process.qmp_path)
    assert not os.path.exists(process.agent_path)
    assert "Traceback" not in process.stderr()


# ----------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--smp", "cpus=9,maxcpus=8"], "exceeds maxcpus"),
        (["--smp", "cpus=1,maxcpus=513"], "maxcpus"),
        (["--smp", "cpus=1,maxcpus=4", "--qmp", "tcp:1234"], "expected unix:PATH"),
        (["--smp", "cpus=1,maxcpus=4", "--memory", "lots"], "--memory"),
        (["--smp", "cpus=1,maxcpus=4", "--memory", "100T"], "does not fit the memory map"),
        (["--smp", "cpus=1,maxcpus=4", "--mode", "hybrid"], "invalid choice"),
        ([], "the following arguments are required: --smp"),
        (["--smp", "cpus=1,maxcpus=4", "--kernel", "no_such_mod_q:start"], "cannot import"),
        (["--smp", "cpus=1,maxcpus=4", "--cpu-model", "pentium"], "unknown CPU model"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    workdir = tempfile.mkdtemp(prefix="vmm", dir="/tmp")
    try:
        argv = [sys.executable, "-m", "cpuplug", "vmm",
                "--qmp", f"unix:{workdir}/q", "--agent", f"unix:{workdir}/a", *args]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'src'}")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], proc.stderr
        assert os.listdir(workdir) == []  # nothing left behind
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------------- QMP wire: bad input
# Regression tests for faults found by feeding the QMP socket what a careless or
# hostile client would (QA, formerly tests/e2e/test_qa_bad_input.py). The server runs
# in-process on a started machine; bytes go over a bare asyncio connection.

WIRE_TIMEOUT = 10.0


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (``sun_path`` holds 107 bytes; tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="qa", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _open(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(path)
    await asyncio.wait_for(reader.readline(), WIRE_TIMEOUT)  # greeting
    writer.write(b'{"execute": "qmp_capabilities"}\n')
    assert b"return" in await asyncio.wait_for(reader.readline(), WIRE_TIMEOUT)
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
                _strict(await asyncio.wait_for(reader.readline(), WIRE_TIMEOUT))
                for _ in range(replies)
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
    virt_machine: VirtMachine, sock_dir: Path
) -> None:
    """A raw newline inside a string used to swallow every later message: the client hung."""
    got = _qmp_exchange(
        virt_machine,
        str(sock_dir / "q"),
        b'{"execute": "query-st\n{"execute": "query-status", "id": 2}\n',
        2,
    )
    assert got[0]["error"]["desc"] == "JSON parse error, control character in string"
    assert got[1] == {"return": {"status": "running", "running": True}, "id": 2}


def test_qmp_duplicate_keys_are_refused_not_last_one_wins(
    virt_machine: VirtMachine, sock_dir: Path
) -> None:
    """Python's json keeps the last key: this message used to run ``quit``."""
    got = _qmp_exchange(
        virt_machine,
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
    virt_machine: VirtMachine, sock_dir: Path, value: bytes, desc: str
) -> None:
    """``"id": 1e999`` used to be echoed as ``Infinity``: a reply no strict client parses."""
    got = _qmp_exchange(
        virt_machine,
        str(sock_dir / "q"),
        b'{"execute": "query-status", "id": ' + value + b'}\n{"execute": "query-status"}\n',
        2,
    )
    assert got[0] == {"error": {"class": "GenericError", "desc": desc}}
    assert got[1] == {"return": {"status": "running", "running": True}}


# ----------------------------------------------------------------------------- socket paths


def test_qmp_socket_on_a_users_file_or_directory_is_refused_and_kept(
    virt_machine: VirtMachine, sock_dir: Path
) -> None:
    """A failed start used to end in close() unlinking the path: the user's file was deleted."""
    precious = sock_dir / "notes.txt"
    precious.write_text("keep me")
    folder = sock_dir / "dir"
    folder.mkdir()

    async def go(path: Path) -> str:
        server = QmpServer(virt_machine, path)
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
    virt_machine: VirtMachine, sock_dir: Path
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
            server = QmpServer(virt_machine, live)
            with pytest.raises(UsageError, match="in use by another process"):
                await server.start()
            await server.close()
            other = QmpServer(virt_machine, stale)
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


# ----------------------------------------------------------------------------- docs/qmp.md
# ``docs/qmp.md`` promises exact error texts for the JSON the server refuses and a
# rule for socket paths; these run the live server against what the page says, so
# the page cannot drift from the code (QA follow-up, formerly tests/e2e/test_qa_followups.py).

DOC = Path(__file__).resolve().parents[2] / "docs" / "qmp.md"

# What to send for each documented refusal (keyed by the start of its desc).
STRICT_INPUTS = {
    "JSON parse error, duplicate key": b'{"execute": "query-status", "execute": "quit"}\n',
    "JSON parse error, invalid token": b'{"execute": "query-status", "id": NaN}\n',
    "JSON parse error, number": b'{"execute": "query-status", "id": 1e999}\n',
    "JSON parse error, integer of": b'{"execute": "query-status", "id": ' + b"7" * 1001 + b"}\n",
    "JSON parse error, control character": b'{"execute": "query-st\n',
}


def _doc_section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start : end if end != -1 else len(text)]


def _documented_strict_errors() -> list[str]:
    rows = [line for line in _doc_section("### Strict JSON").splitlines() if line.startswith("| ")]
    descs = [re.findall(r"`([^`]*)`", row.rsplit("|", 2)[1]) for row in rows[1:]]
    return [d[0] for d in descs if d]


def test_documented_strict_json_errors_are_what_the_server_says(
    virt_machine: VirtMachine, sock_dir: Path
) -> None:
    documented = _documented_strict_errors()
    assert len(documented) == len(STRICT_INPUTS), documented
    for desc in documented:
        key = next(k for k in STRICT_INPUTS if desc.startswith(k))
        data = STRICT_INPUTS[key]
        # Afterwards a good command must still be served on the same connection.
        got = _qmp_exchange(
            virt_machine, str(sock_dir / "q.sock"), data + b'{"execute": "query-status"}\n', 2
        )
        want = re.escape(desc).replace(r"\ N\ ", r"\ [0-9]+\ ")
        assert "id" not in got[0], got
        assert got[0]["error"]["class"] == "GenericError"
        assert re.fullmatch(want, got[0]["error"]["desc"]), (desc, got[0])
        assert got[1]["return"]["status"] == "running"


def test_documented_finite_large_number_is_accepted(
    virt_machine: VirtMachine, sock_dir: Path
) -> None:
    assert "(`1.5e308`), are accepted" in _doc_section("### Strict JSON")
    got = _qmp_exchange(
        virt_machine, str(sock_dir / "q.sock"), b'{"execute": "query-status", "id": 1.5e308}\n', 1
    )
    assert got[0]["id"] == 1.5e308 and "return" in got[0]


@pytest.fixture
def live(sock_dir: Path) -> Iterator[Path]:
    path = sock_dir / "live.sock"
    owner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    owner.bind(str(path))
    owner.listen(1)
    yield path
    owner.close()


def test_documented_socket_rule_is_shared_by_qmp_and_agent(live: Path, sock_dir: Path) -> None:
    section = _doc_section("## Socket paths")
    assert "`--qmp socket PATH is in use by another process`" in section
    with pytest.raises(UsageError, match=f"^--qmp socket {live} is in use by another process$"):
        claim_socket_path(str(live), "--qmp")
    dev = AgentChannelDevice(live)
    with pytest.raises(AgentChannelError, match=f"^agent socket {live} is in use"):
        dev.start()
    dev.close()
    assert live.exists()
    stale = sock_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))
    claim_socket_path(str(stale), "--qmp")  # stale: removed, as documented
    assert not stale.exists()
    (sock_dir / "file").write_text("mine")
    with pytest.raises(UsageError, match="a file that is not a socket; refusing to replace it"):
        claim_socket_path(str(sock_dir / "file"), "--qmp")


# ----------------------------------------------------- docs/contract.md §1, §7 literally
# Written from the contract's text (spec-coverage audit, formerly
# tests/e2e/test_spec_coverage.py), over the wire against the real process.


@pytest.mark.slow
def test_query_cpus_fast_lists_plugged_vcpus_each_with_its_own_host_thread(
    vmm: Callable[..., VmmProcess],
) -> None:
    process = vmm("cpus=2,maxcpus=4")

    async def go() -> None:
        client = await qmp_connect(process.qmp_path, "spec-coverage")
        await client.execute("device_add", {"driver": "max-arm-cpu", "id": "c3", "core-id": 3})
        cpus: list[dict[str, Any]] = await client.execute("query-cpus-fast")  # type: ignore[assignment]
        hot: list[dict[str, Any]] = await client.execute("query-hotpluggable-cpus")  # type: ignore[assignment]
        await client.disconnect()
        assert [c["cpu-index"] for c in cpus] == [0, 1, 3]  # plugged only, unplugged 2 absent
        by_core = {h["props"]["core-id"]: h for h in hot}
        for cpu in cpus:
            assert set(cpu) >= {"cpu-index", "qom-path", "thread-id", "props", "target"}
            assert cpu["target"] == "aarch64"
            assert cpu["props"] == by_core[cpu["cpu-index"]]["props"]
            assert cpu["qom-path"] == by_core[cpu["cpu-index"]]["qom-path"]
        assert by_core[3]["qom-path"] == "/machine/peripheral/c3"
        threads = [c["thread-id"] for c in cpus]
        assert len(set(threads)) == 3  # one host thread per plugged vCPU
        assert set(threads) <= process.task_ids() - {process.pid}

    asyncio.run(go())


class _RawQmp:
    """A bare QMP socket: what a client other than qemu.qmp may send (any JSON ``id``)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.greeting = json.loads(self.file.readline())

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply: dict[str, Any] = json.loads(self.file.readline())
            if "event" not in reply:
                return reply

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.mark.slow
def test_any_json_id_is_echoed_and_props_must_be_json_integers(
    vmm: Callable[..., VmmProcess],
) -> None:
    process = vmm("cpus=1,maxcpus=4")
    qmp = _RawQmp(process.qmp_path)
    try:
        assert set(qmp.greeting) == {"QMP"}
        assert set(qmp.greeting["QMP"]) == {"version", "capabilities"}
        assert qmp.greeting["QMP"]["capabilities"] == []
        assert qmp.call({"execute": "qmp_capabilities", "id": 7}) == {"return": {}, "id": 7}
        for id_ in ({"a": [1, None]}, [3], 2.5, "x"):
            ok = qmp.call({"execute": "query-status", "id": id_})
            assert ok["id"] == id_ and "return" in ok
            bad = qmp.call({"execute": "no-such-command", "id": id_})
            assert bad["id"] == id_ and bad["error"]["class"] == "CommandNotFound"
        for value in (True, 1.0, "1", None, [1]):
            reply = qmp.call(
                {
                    "execute": "device_add",
                    "arguments": {"driver": "max-arm-cpu", "id": "c", "core-id": value},
                }
            )
            assert reply["error"]["class"] == "GenericError", value
            assert "core-id" in reply["error"]["desc"], value
        hot = qmp.call({"execute": "query-hotpluggable-cpus"})["return"]
        assert [("qom-path" in h) for h in hot] == [False, False, False, True]  # nothing plugged
        added = {"driver": "max-arm-cpu", "id": "c", "core-id": 1}
        assert qmp.call({"execute": "device_add", "arguments": added}) == {"return": {}}
    finally:
        qmp.close()

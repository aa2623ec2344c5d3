"""QMP (docs/contract.md §7) against the real ``cpuplug vmm`` process, driven by the official client.

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
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

from cpuplug.acpi.virt import MachineConfig
from cpuplug.vmm.machine import VirtMachine
from cpuplug.vmm.qmp import JsonSplitter, ParseFault, QmpServer
from tests.harness.vmm_test_kernel import ROOT, VmmProcess

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
        names = {c["name"] for c in await client.execute("query-commands")}  # type: ignore[attr-defined]
        assert {
            "query-hotpluggable-cpus", "device_add", "device_del", "query-cpus-fast",
            "query-acpi-ospm-status", "query-status", "system_powerdown", "quit",
        } <= names  # fmt: skip
        hot = await client.execute("query-hotpluggable-cpus")
        assert [h["props"]["core-id"] for h in hot] == [3, 2, 1, 0]  # type: ignore[index,union-attr]
        assert hot[3] == {  # type: ignore[index]
            "type": "max-arm-cpu",
            "vcpus-count": 1,
            "props": {"socket-id": 0, "cluster-id": 0, "core-id": 0, "thread-id": 0},
            "qom-path": "/machine/unattached/device[0]",
        }
        assert [("qom-path" in h) for h in hot] == [False, False, True, True]  # type: ignore[union-attr]
        cpus = await client.execute("query-cpus-fast")
        assert [c["cpu-index"] for c in cpus] == [0, 1]  # type: ignore[index,union-attr]
        assert {c["target"] for c in cpus} == {"aarch64"}  # type: ignore[index,union-attr]
        assert {c["thread-id"] for c in cpus} <= process.task_ids()  # type: ignore[index,union-attr]
        ospm = await client.execute("query-acpi-ospm-status")
        assert [o["slot"] for o in ospm] == ["0", "1", "2", "3"]  # type: ignore[index,union-attr]
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
        cpus = await client.execute("query-cpus-fast")
        assert [c["cpu-index"] for c in cpus] == [0, 2]  # type: ignore[index,union-attr]
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
            assert set(event["timestamp"]) == {"seconds", "microseconds"}
        await asyncio.gather(*(still_serving(c) for c in clients))
        for client in clients:
            await client.disconnect()

    run(go())


def test_a_client_that_never_reads_is_dropped_not_buffered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In-process server: events to a client that stopped reading cannot grow the VMM."""
    workdir = tempfile.mkdtemp(prefix="vmm", dir="/tmp")
    machine = VirtMachine(MachineConfig())
    machine.start()

    async def go() -> None:
        server = QmpServer(machine, f"{workdir}/q")
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
        machine.shutdown()
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

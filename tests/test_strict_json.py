"""One strict JSON parser (``cpuplug.strict_json``) for QMP and the agent protocol.

The same bytes get the same refusal, with the same one-line reason, from the QMP
server (over its socket) and from the agent protocol's frame decoder; the agent
used to take duplicate keys (last one wins), ``1e999`` (as infinity) and integers
of thousands of digits.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpuplug import agent_protocol as ap
from cpuplug import strict_json
from cpuplug.acpi.virt import MachineConfig
from cpuplug.errors import CpuplugError
from cpuplug.vmm.machine import VirtMachine
from cpuplug.vmm.qmp import QmpServer

WIRE_TIMEOUT = 10.0

REFUSED = {
    b'{"id": 1, "method": "GetGuestDetails", "method": "OnlineCPUMem"}': "duplicate key 'method'",
    b'{"execute": "query-status", "execute": "quit"}': "duplicate key 'execute'",
    b'{"id": NaN}': "invalid token 'NaN'",
    b'{"id": -Infinity}': "invalid token '-Infinity'",
    b'{"id": 1e999}': "number 1e999 is out of range",
    b'{"id": ' + b"7" * 1001 + b"}": "integer of 1001 digits is too long",
    b'{"id": "a\x01b"}': "control character in string",
}
"""Input -> the reason both protocols give for refusing it."""


# ------------------------------------------------------------------------- the parser


@pytest.mark.parametrize(("data", "reason"), REFUSED.items())
def test_the_parser_refuses_with_a_one_line_reason(data: bytes, reason: str) -> None:
    for form in (data, data.decode()):
        with pytest.raises(strict_json.JsonRefused) as info:
            strict_json.loads(form)
        assert info.value.reason == reason == str(info.value)
        assert isinstance(info.value, CpuplugError)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a": \xff}', "not UTF-8: invalid start byte at byte 6"),
        ('{"\u00e9": ,}'.encode(), "Expecting value at byte 7"),  # a byte offset, not a char
        (b"[" * 100_000, "nesting too deep"),
        ('{"x\\ny": 1, "x\\ny": 2}', "duplicate key 'x\\ny'"),  # escaped onto one line
        ('{"' + "k" * 100 + '": 1, "' + "k" * 100 + '": 2}', f"duplicate key '{'k' * 64}'..."),
    ],
)
def test_other_refusals_are_one_line_too(data: str | bytes, reason: str) -> None:
    with pytest.raises(strict_json.JsonRefused) as info:
        strict_json.loads(data)
    assert info.value.reason == reason


def test_json_is_accepted_as_json_loads_reads_it() -> None:
    text = '{"a": [1, -2.5, 1.5e308, "\\u00e9\\ud83d\\ude00", true, null], "b": {"a": 1}}'
    assert strict_json.loads(text) == json.loads(text)
    assert strict_json.loads(b"-" + b"9" * 999) == -int("9" * 999)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=48) | st.text(max_size=48).map(str.encode))
def test_anything_either_parses_or_is_refused_in_one_line(data: bytes) -> None:
    try:
        strict_json.loads(data)
    except strict_json.JsonRefused as exc:
        assert exc.reason and "\n" not in exc.reason


# ---------------------------------------------------------------- the agent protocol


def _agent_reason(body: bytes) -> str:
    """What the agent's decoder says about ``body``, framed as on the wire."""
    (frame,) = ap.FrameDecoder().feed(struct.pack(">I", len(body)) + body)
    with pytest.raises(ap.ProtocolError) as info:
        ap.parse_body(frame)
    exc = info.value
    assert exc.code is ap.ErrorCode.EPROTO and not isinstance(exc, ap.FrameError)
    prefix = "frame body is not strict JSON: "
    assert exc.message.startswith(prefix), exc.message
    return exc.message.removeprefix(prefix)


@pytest.mark.parametrize(("data", "reason"), REFUSED.items())
def test_the_agent_decoder_refuses_what_qmp_refuses(data: bytes, reason: str) -> None:
    assert _agent_reason(data) == reason


def test_the_agent_no_longer_lets_the_last_duplicate_win() -> None:
    body = b'{"id": 1, "method": "GetGuestDetails", "method": "OnlineCPUMem"}'
    assert _agent_reason(body) == "duplicate key 'method'"
    # and the error reply still goes out (EPROTO, no id: the message never parsed)
    with pytest.raises(ap.ProtocolError) as info:
        ap.parse_body(body)
    reply = ap.error_from_exception(info.value)
    assert reply["id"] is None and reply["error"]["code"] == "EPROTO"


# ----------------------------------------------------------------------------- QMP


@pytest.fixture(scope="module")
def machine() -> Iterator[VirtMachine]:
    vm = VirtMachine(MachineConfig.from_smp("cpus=1,maxcpus=2"))
    vm.start()
    yield vm
    vm.shutdown()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (``sun_path`` holds 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sj", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _qmp_descs(vm: VirtMachine, path: str, messages: list[bytes]) -> list[str]:
    """Send each message on one negotiated connection; the error desc of each reply."""

    async def go() -> list[str]:
        server = QmpServer(vm, path)
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            await asyncio.wait_for(reader.readline(), WIRE_TIMEOUT)  # greeting
            writer.write(b'{"execute": "qmp_capabilities"}\n')
            assert b"return" in await asyncio.wait_for(reader.readline(), WIRE_TIMEOUT)
            descs = []
            for message in [*messages, b'{"execute": "query-status"}']:
                writer.write(message + b"\n")
                reply = json.loads(await asyncio.wait_for(reader.readline(), WIRE_TIMEOUT))
                descs.append(reply["error"]["desc"] if "error" in reply else "served")
            writer.close()
            await writer.wait_closed()
            return descs
        finally:
            await server.close()

    return asyncio.run(go())


def test_qmp_and_the_agent_give_the_same_reason(machine: VirtMachine, sock_dir: Path) -> None:
    inputs = list(REFUSED)
    descs = _qmp_descs(machine, str(sock_dir / "q"), inputs)
    assert descs[-1] == "served"  # every refusal left the connection serving
    assert descs[:-1] == [f"JSON parse error, {_agent_reason(data)}" for data in inputs]
    assert descs[:-1] == [f"JSON parse error, {REFUSED[data]}" for data in inputs]

"""The agent wire format: framing limits, message validation, CPU lists, the client helper."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpuplug import agent_protocol as ap

# ----------------------------------------------------------------------------- CPU lists


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("", set()),
        ("\n", set()),
        ("0", {0}),
        ("0-3,5\n", {0, 1, 2, 3, 5}),
        ("5,0-1", {0, 1, 5}),
        ("0-7:2/4", {0, 1, 4, 5}),
        (" 2 , 3 ", {2, 3}),
        ("511", {511}),
    ],
)
def test_parse_cpu_list(text: str, cpus: set[int]) -> None:
    assert ap.parse_cpu_list(text) == cpus


@pytest.mark.parametrize(
    "text", ["a", "1-", "-1", "3-1", "1,,2", "0x1", "4096", "0-999999999", "0-7:0/4", "0-7:5/4"]
)
def test_parse_cpu_list_rejects(text: str) -> None:
    with pytest.raises(ap.CpuListError) as info:
        ap.parse_cpu_list(text)
    assert info.value.code is ap.ErrorCode.EINVAL


def test_parse_cpu_list_limit() -> None:
    assert ap.parse_cpu_list("7", limit=8) == {7}
    with pytest.raises(ap.CpuListError, match="out of range"):
        ap.parse_cpu_list("8", limit=8)


def test_format_cpu_list() -> None:
    assert ap.format_cpu_list([]) == ""
    assert ap.format_cpu_list([5, 0, 1, 2, 3]) == "0-3,5"
    assert ap.format_cpu_list([1, 3, 5]) == "1,3,5"
    assert ap.format_cpu_list([0, 1]) == "0-1"


@given(st.sets(st.integers(0, 600)))
def test_cpu_list_round_trip(cpus: set[int]) -> None:
    assert ap.parse_cpu_list(ap.format_cpu_list(cpus)) == cpus


# ----------------------------------------------------------------------------- framing


def test_encode_frame_layout() -> None:
    frame = ap.encode_frame({"a": "é"})
    (n,) = struct.unpack(">I", frame[:4])
    assert n == len(frame) - 4
    assert json.loads(frame[4:].decode()) == {"a": "é"}


def test_encode_frame_refuses_oversize_and_unencodable() -> None:
    with pytest.raises(ap.ProtocolError, match="exceeds"):
        ap.encode_frame({"x": "a" * ap.MAX_FRAME})
    with pytest.raises(ap.ProtocolError, match="JSON"):
        ap.encode_frame({"x": object()})
    with pytest.raises(ap.ProtocolError, match="JSON"):
        ap.encode_frame({"x": float("nan")})


def test_decoder_splits_byte_by_byte() -> None:
    data = ap.encode_frame({"n": 1}) + ap.encode_frame({"n": 2})
    dec = ap.FrameDecoder()
    bodies: list[bytes] = []
    for i in range(len(data)):
        bodies += dec.feed(data[i : i + 1])
    assert [ap.parse_body(b) for b in bodies] == [{"n": 1}, {"n": 2}]
    assert dec.pending == 0


def test_decoder_max_frame_is_accepted_and_one_more_is_fatal() -> None:
    dec = ap.FrameDecoder()
    assert dec.feed(struct.pack(">I", ap.MAX_FRAME)) == []
    assert dec.pending == 4  # header accepted, waiting for the body
    dec2 = ap.FrameDecoder()
    with pytest.raises(ap.FrameError, match="exceeds"):
        dec2.feed(struct.pack(">I", ap.MAX_FRAME + 1))
    with pytest.raises(ap.FrameError):  # stays broken: the stream lost sync
        dec2.feed(ap.encode_frame({"ok": True}))


def test_zero_length_frame_keeps_sync() -> None:
    dec = ap.FrameDecoder()
    bodies = dec.feed(struct.pack(">I", 0) + ap.encode_frame({"n": 1}))
    assert bodies[0] == b""
    with pytest.raises(ap.ProtocolError) as info:
        ap.parse_body(bodies[0])
    assert not isinstance(info.value, ap.FrameError)
    assert ap.parse_body(bodies[1]) == {"n": 1}


def test_parse_body_errors() -> None:
    with pytest.raises(ap.FrameError, match="UTF-8"):
        ap.parse_body(b"\xff\xfe")
    for bad in (b"{", b"[1]", b"3", b"NaN", b'{"a": Infinity}'):
        with pytest.raises(ap.ProtocolError) as info:
            ap.parse_body(bad)
        assert info.value.code is ap.ErrorCode.EPROTO
        assert not isinstance(info.value, ap.FrameError)


# ----------------------------------------------------------------------------- requests


def test_parse_request_ok() -> None:
    req = ap.parse_request(
        ap.make_request(7, ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 3, "cpu_only": True})
    )
    assert req == ap.Request(7, ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 3, "cpu_only": True})
    # params may be omitted for methods without required ones
    assert ap.parse_request({"id": "x", "method": "GuestDetails"}).params == {}


@pytest.mark.parametrize(
    ("msg", "code", "req_id"),
    [
        ({"method": "GuestDetails"}, ap.ErrorCode.EPROTO, None),
        ({"id": True, "method": "GuestDetails"}, ap.ErrorCode.EPROTO, None),
        ({"id": 1.5, "method": "GuestDetails"}, ap.ErrorCode.EPROTO, None),
        ({"id": 1}, ap.ErrorCode.EPROTO, 1),
        ({"id": 1, "method": "Nope"}, ap.ErrorCode.ENOSYS, 1),
        ({"id": 1, "method": "GuestDetails", "params": []}, ap.ErrorCode.EPROTO, 1),
        ({"id": 1, "method": "GuestDetails", "extra": 1}, ap.ErrorCode.EPROTO, 1),
        ({"id": 2, "method": "OnlineCPUMem", "params": {}}, ap.ErrorCode.EINVAL, 2),
        ({"id": 2, "method": "OnlineCPUMem", "params": {"nb_cpus": "2"}}, ap.ErrorCode.EINVAL, 2),
        ({"id": 2, "method": "OnlineCPUMem", "params": {"nb_cpus": True}}, ap.ErrorCode.EINVAL, 2),
        ({"id": 2, "method": "OnlineCPUMem", "params": {"nb_cpus": -1}}, ap.ErrorCode.EINVAL, 2),
        (
            {"id": 3, "method": "StartContainer", "params": {"container_id": "../etc"}},
            ap.ErrorCode.EINVAL,
            3,
        ),
        (
            {"id": 3, "method": "ExecProcess", "params": {"container_id": "c", "cmd": []}},
            ap.ErrorCode.EINVAL,
            3,
        ),
        (
            {"id": 3, "method": "ExecProcess", "params": {"container_id": "c", "cmd": [1]}},
            ap.ErrorCode.EINVAL,
            3,
        ),
        (
            {
                "id": 4,
                "method": "UpdateContainer",
                "params": {"container_id": "c", "resources": {"cpuset_cpu": "0"}},
            },
            ap.ErrorCode.EINVAL,
            4,
        ),
        (
            {
                "id": 4,
                "method": "UpdateContainer",
                "params": {"container_id": "c", "resources": {"cpuset_cpus": "0-"}},
            },
            ap.ErrorCode.EINVAL,
            4,
        ),
        ({"id": 5, "method": "ReadFile", "params": {"path": "sys"}}, ap.ErrorCode.EINVAL, 5),
        (
            {"id": 6, "method": "KillContainer", "params": {"container_id": "c", "signal": 0}},
            ap.ErrorCode.EINVAL,
            6,
        ),
    ],
)
def test_parse_request_rejects(msg: dict[str, object], code: ap.ErrorCode, req_id: object) -> None:
    with pytest.raises(ap.ProtocolError) as info:
        ap.parse_request(msg)
    assert info.value.code is code
    assert info.value.req_id == req_id
    reply = ap.error_from_exception(info.value)
    assert reply["id"] == req_id and reply["error"]["code"] == code.value


def test_every_method_has_a_schema() -> None:
    assert set(ap.METHOD_PARAMS) == set(ap.Method)


# ----------------------------------------------------------------------------- incoming


def test_parse_incoming_kinds() -> None:
    assert ap.parse_incoming(ap.make_reply(1, {"a": 1})) == ap.Reply(1, {"a": 1})
    err = ap.parse_incoming(ap.make_error(None, ap.ErrorCode.EBUSY, "busy"))
    assert err == ap.ErrorReply(None, "EBUSY", "busy")
    ev = ap.parse_incoming(ap.make_event(ap.EventName.CPU_ONLINE, {"cpu": 3}, 1.5))
    assert ev == ap.Event("CpuOnline", {"cpu": 3}, 1.5)
    for bad in (
        {"id": 1},
        {"id": 1, "result": {}, "error": {}},
        {"id": 1, "result": []},
        {"id": 1, "error": {"code": 1, "message": "m"}},
        {"event": "X", "data": {}},
        {"id": [1], "result": {}},
    ):
        with pytest.raises(ap.ProtocolError):
            ap.parse_incoming(bad)


def test_agent_error_keeps_unknown_code() -> None:
    exc = ap.ErrorReply(1, "EWEIRD", "m").exception()
    assert exc.code is ap.ErrorCode.EPROTO and exc.raw_code == "EWEIRD"
    assert ap.ErrorReply(1, "EPERM", "m").exception().code is ap.ErrorCode.EPERM


# ----------------------------------------------------------------------------- client


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_recv_message_exact_and_no_read_ahead(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.sendall(ap.encode_frame({"id": 1, "result": {}}) + ap.encode_frame({"id": 2, "result": {}}))
    assert ap.recv_message(a, timeout=5)["id"] == 1
    assert ap.recv_message(a, timeout=5)["id"] == 2


def test_recv_message_timeout_and_close(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.settimeout(None)
    with pytest.raises(ap.AgentTimeout):
        ap.recv_message(a, timeout=0.05)
    assert a.gettimeout() is None  # restored
    b.sendall(struct.pack(">I", 10) + b"{")
    b.shutdown(socket.SHUT_WR)
    with pytest.raises(ap.ConnectionClosed, match="inside a frame"):
        ap.recv_message(a, timeout=5)


def test_recv_message_oversize(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.sendall(struct.pack(">I", ap.MAX_FRAME + 1))
    with pytest.raises(ap.FrameError):
        ap.recv_message(a, timeout=5)


def _serve_once(sock: socket.socket, replies: list[dict[str, object]]) -> threading.Thread:
    def run() -> None:
        ap.recv_message(sock, timeout=5)
        for r in replies:
            ap.send_message(sock, r)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_call_skips_events_and_returns_result(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    t = _serve_once(
        b,
        [
            ap.make_event("CpuOnline", {"cpu": 1}, 2.0),
            ap.make_reply(9, {"online": [0, 1]}),
        ],
    )
    seen: list[ap.Event] = []
    result = ap.call(
        a, ap.Method.ONLINE_CPU_MEM, {"nb_cpus": 2}, timeout=5, req_id=9, on_event=seen.append
    )
    t.join(5)
    assert result == {"online": [0, 1]}
    assert seen == [ap.Event("CpuOnline", {"cpu": 1}, 2.0)]


def test_call_raises_agent_error(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    t = _serve_once(b, [ap.make_error(1, ap.ErrorCode.ENOENT, "no such container")])
    with pytest.raises(ap.AgentError) as info:
        ap.call(a, ap.Method.STATS_CONTAINER, {"container_id": "c"}, timeout=5)
    t.join(5)
    assert info.value.code is ap.ErrorCode.ENOENT
    assert "no such container" in str(info.value)


def test_call_mismatched_id(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    t = _serve_once(b, [ap.make_reply(2, {})])
    with pytest.raises(ap.ProtocolError, match="does not match"):
        ap.call(a, ap.Method.GUEST_DETAILS, {}, timeout=5, req_id=1)
    t.join(5)


def test_send_request_validates_before_sending(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    with pytest.raises(ap.ProtocolError):
        ap.send_request(a, 1, ap.Method.ONLINE_CPU_MEM, {"nb_cpus": "x"})
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(1)  # nothing was sent


# ----------------------------------------------------------------------------- fuzz

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(["id", "method", "params", "x"]) | st.text(max_size=4), _json, max_size=4
    )
    | st.fixed_dictionaries(
        {"id": st.integers(), "method": st.sampled_from([m.value for m in ap.Method])},
        optional={"params": st.dictionaries(st.text(max_size=12), _json, max_size=4)},
    )
)
def test_parse_request_only_raises_protocol_errors(msg: dict[str, object]) -> None:
    try:
        req = ap.parse_request(msg)
    except ap.ProtocolError as exc:
        reply = ap.error_from_exception(exc)
        assert ap.parse_incoming(reply) is not None
    else:
        assert req.method in ap.Method


@given(st.binary(max_size=64))
def test_decoder_and_parse_body_only_raise_protocol_errors(data: bytes) -> None:
    dec = ap.FrameDecoder()
    try:
        for body in dec.feed(data):
            ap.parse_body(body)
    except ap.ProtocolError:
        pass


@pytest.mark.parametrize(
    "text",
    ["\uff10", "0-\uff13", "\u0663", "1,\uff12", "0-7:\uff12/4", "1\u2003", "\u00a00"],
)
def test_qa_cpu_lists_are_ascii_only(text: str) -> None:
    """QA: ``\\d`` took Unicode digits (U+FF10 parsed as CPU 0); Linux takes [0-9] only,
    and strips only ASCII whitespace. The runtime's cpuset flag shares the parser."""
    from cpuplug.errors import UsageError
    from cpuplug.runtime.sizing import parse_cpu_list as runtime_parse

    with pytest.raises(ap.CpuListError):
        ap.parse_cpu_list(text)
    with pytest.raises(UsageError, match="invalid cpu list"):
        runtime_parse(text)
    assert ap.parse_cpu_list(" 0-1\n") == {0, 1}

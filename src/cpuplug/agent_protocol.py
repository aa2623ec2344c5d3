"""The agent protocol: the wire format between the runtime and the guest agent.

Shared by both ends and importing neither (docs/contract.md §0); the prose version, with every
method, is ``docs/agent-protocol.md``. This module is the single implementation of:

* framing — a 4-byte big-endian length ``N`` (``1 <= N <= MAX_FRAME``) followed by
  ``N`` bytes of UTF-8 JSON that must be an object (:func:`encode_frame`,
  :class:`FrameDecoder`, :func:`parse_body`); parsed strictly, by the parser QMP
  uses too (:mod:`cpuplug.strict_json`);
* message shapes — request / reply / error / event (:func:`make_request`,
  :func:`make_reply`, :func:`make_error`, :func:`make_event`, :func:`parse_request`,
  :func:`parse_incoming`);
* parameter validation per method (:func:`validate_params`), so the agent and the
  runtime reject exactly the same things;
* Linux CPU-list strings (``"0-3,5"``) — :func:`parse_cpu_list` /
  :func:`format_cpu_list`. They are part of the wire format (``cpuset_cpus``,
  ``GuestDetails``) and the guest kernel's sysfs/cgroupfs uses the same two
  functions, so there is one implementation in the whole project;
* a small blocking client over a :class:`socket.socket` (:func:`send_request`,
  :func:`recv_message`, :func:`call`) for the runtime.

Why a length prefix and not newline-delimited JSON: the agent reads from a
``hw.Stream`` with no line discipline, and a length lets it refuse an oversized
message before buffering it (a newline protocol must buffer until it sees ``\\n``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from cpuplug import strict_json
from cpuplug.errors import CpuplugError

MAX_FRAME: Final = 1 << 20
"""Largest body accepted, in bytes (1 MiB)."""

HEADER: Final = struct.Struct(">I")

MAX_CPUS: Final = 4096
"""Upper bound (exclusive) on a CPU number in a CPU list, like ``nr_cpumask_bits``.

The machine has at most 512 vCPUs; the bound stops ``"0-999999999"`` from
allocating a billion-element set.
"""

CONTAINER_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""Container ids become cgroup directory names, so no ``/``, no ``..``-only names.

Kata's agent applies the same character class (``^[a-zA-Z0-9][a-zA-Z0-9_.-]+$``).
"""


class ErrorCode(StrEnum):
    """Error codes in replies: errno names, so Linux failures map one to one."""

    EINVAL = "EINVAL"
    ENOENT = "ENOENT"
    EBUSY = "EBUSY"
    EPERM = "EPERM"
    EIO = "EIO"
    ETIMEDOUT = "ETIMEDOUT"
    EPROTO = "EPROTO"
    ENOSYS = "ENOSYS"
    EEXIST = "EEXIST"


class Method(StrEnum):
    """Request method names (Kata agent names, trimmed)."""

    CREATE_CONTAINER = "CreateContainer"
    START_CONTAINER = "StartContainer"
    EXEC_PROCESS = "ExecProcess"
    KILL_CONTAINER = "KillContainer"
    REMOVE_CONTAINER = "RemoveContainer"
    ONLINE_CPU_MEM = "OnlineCPUMem"
    OFFLINE_CPUS = "OfflineCPUs"
    UPDATE_CONTAINER = "UpdateContainer"
    STATS_CONTAINER = "StatsContainer"
    READ_FILE = "ReadFile"
    GUEST_DETAILS = "GuestDetails"
    SUBSCRIBE_EVENTS = "SubscribeEvents"
    START_PROCESS = "StartProcess"
    READ_PROCESS = "ReadProcess"
    WRITE_STDIN = "WriteStdin"
    SIGNAL_PROCESS = "SignalProcess"
    RESIZE_TERMINAL = "ResizeTerminal"


class EventName(StrEnum):
    """Events streamed to a connection that called ``SubscribeEvents``."""

    CPU_REGISTERED = "CpuRegistered"
    CPU_ONLINE = "CpuOnline"
    CPU_OFFLINE = "CpuOffline"
    CPU_UNREGISTERED = "CpuUnregistered"
    OST_SENT = "OstSent"
    EJECT_INCOMPLETE = "EjectIncomplete"


# --------------------------------------------------------------------------- errors


class ProtocolError(CpuplugError):
    """Something about a message is wrong; ``code`` is what goes into the error reply.

    ``req_id`` is the id of the offending request when it could be recovered, so the
    error reply can still be matched by the client.
    """

    def __init__(self, code: ErrorCode, message: str, req_id: int | str | None = None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.req_id = req_id


class FrameError(ProtocolError):
    """The byte stream cannot be resynchronised (oversized length, non-UTF-8 body).

    The agent answers with an error reply and then closes that connection.
    """


class AgentError(ProtocolError):
    """The agent answered a request with an error reply (client side)."""

    def __init__(self, code: ErrorCode | str, message: str, req_id: int | str | None) -> None:
        known = code if isinstance(code, ErrorCode) else _error_code_or_eproto(code)
        super().__init__(known, message, req_id)
        self.raw_code = str(code)


class AgentTimeout(ProtocolError):
    """No complete message arrived in time; the connection should be closed."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.ETIMEDOUT, message)


class ConnectionClosed(ProtocolError):
    """The peer closed the connection (possibly in the middle of a frame)."""

    def __init__(self, message: str = "connection closed by peer") -> None:
        super().__init__(ErrorCode.EIO, message)


class CpuListError(ProtocolError):
    """A CPU list string is malformed or out of range (EINVAL, as the kernel says)."""

    def __init__(self, text: str, why: str) -> None:
        super().__init__(ErrorCode.EINVAL, f"invalid CPU list {text!r}: {why}")
        self.text = text


def _error_code_or_eproto(code: str) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.EPROTO


# --------------------------------------------------------------------------- CPU lists


def parse_cpu_list(text: str, limit: int = MAX_CPUS) -> frozenset[int]:
    """Parse a Linux CPU list (``bitmap_parselist``): ``"0-3,5"``, ``"0-7:2/4"``, ``""``.

    Surrounding whitespace (the ``\\n`` that ``echo`` appends) is ignored; an empty
    list is the empty set, as writing ``""`` to ``cpuset.cpus`` empties it. Each
    group is ``N``, ``A-B`` or ``A-B:used/group`` (``used`` CPUs out of every
    ``group``, as the kernel accepts). Numbers must be ``< limit``.

    Raises :class:`CpuListError` (code EINVAL) on anything else.
    """
    body = text.strip(_SPACE)
    if not body:
        return frozenset()
    cpus: set[int] = set()
    for group in body.split(","):
        cpus.update(_parse_group(text, group.strip(_SPACE), limit))
    return frozenset(cpus)


_GROUP_RE: Final = re.compile(r"([0-9]+)(?:-([0-9]+)(?::([0-9]+)/([0-9]+))?)?")
r"""ASCII digits only, as the kernel's parser: ``\d`` would also take Unicode digits
(fullwidth U+FF10, Arabic-Indic U+0663, ...)."""
_SPACE: Final = " \t\n\v\f\r"
"""The kernel's ``isspace`` (ASCII); ``str.strip()`` would also drop Unicode spaces."""


def _parse_group(text: str, group: str, limit: int) -> Iterable[int]:
    m = _GROUP_RE.fullmatch(group)
    if m is None:
        raise CpuListError(text, f"bad group {group!r}")
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) is not None else first
    if last < first:
        raise CpuListError(text, f"range {group!r} is reversed")
    if last >= limit:
        raise CpuListError(text, f"CPU {last} out of range (limit {limit})")
    if m.group(3) is None:
        return range(first, last + 1)
    used, size = int(m.group(3)), int(m.group(4))
    if size == 0 or used == 0 or used > size:
        raise CpuListError(text, f"bad stride {group!r}")
    return [c for c in range(first, last + 1) if (c - first) % size < used]


def format_cpu_list(cpus: Iterable[int]) -> str:
    """Format CPU numbers the way Linux prints a cpumask list: ``"0-3,5"``, ``""`` if none."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


# --------------------------------------------------------------------------- framing


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """The bytes of one frame carrying ``message``.

    Raises :class:`ProtocolError` (EINVAL) if the message cannot be JSON-encoded or
    its body would exceed :data:`MAX_FRAME` — refused at the sender, where the
    mistake is, rather than by the receiver.
    """
    try:
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.EINVAL, f"message is not JSON-encodable: {exc}") from exc
    data = body.encode("utf-8")
    if len(data) > MAX_FRAME:
        raise ProtocolError(
            ErrorCode.EINVAL, f"message body of {len(data)} bytes exceeds {MAX_FRAME}"
        )
    return HEADER.pack(len(data)) + data


class FrameDecoder:
    """Incremental frame splitter: feed it received bytes, get complete bodies back.

    A zero-length frame is passed through as ``b""`` (the stream is still in sync;
    :func:`parse_body` rejects it with EPROTO). A length above :data:`MAX_FRAME`
    raises :class:`FrameError` before any of the body is buffered, and the decoder
    stays broken (every later :meth:`feed` raises) because the stream has lost sync.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._broken: FrameError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return every body now complete, in order."""
        if self._broken is not None:
            raise self._broken
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buf)
            if length > MAX_FRAME:
                self._broken = FrameError(
                    ErrorCode.EPROTO, f"frame length {length} exceeds {MAX_FRAME}"
                )
                self._buf.clear()
                raise self._broken
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            out.append(bytes(self._buf[HEADER.size : end]))
            del self._buf[:end]
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a complete frame."""
        return len(self._buf)


def parse_body(body: bytes) -> dict[str, Any]:
    """Decode one frame body into a JSON object.

    Non-UTF-8 → :class:`FrameError` (fatal: the agent closes the connection, as
    decided in the protocol); empty, not strict JSON (:mod:`cpuplug.strict_json`:
    no duplicate keys, ``NaN``, ``1e999`` or huge integers, the same refusals and
    reasons as QMP) or a non-object → :class:`ProtocolError` EPROTO (the
    connection keeps serving).
    """
    if not body:
        raise ProtocolError(ErrorCode.EPROTO, "empty frame")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(ErrorCode.EPROTO, f"frame body is not UTF-8: {exc.reason}") from exc
    try:
        value = strict_json.loads(text)
    except strict_json.JsonRefused as exc:
        why = f"frame body is not strict JSON: {exc.reason}"
        raise ProtocolError(ErrorCode.EPROTO, why) from exc
    if not isinstance(value, dict):
        raise ProtocolError(
            ErrorCode.EPROTO, f"message must be a JSON object, not {type(value).__name__}"
        )
    return value


# --------------------------------------------------------------------------- messages

RequestId = int | str


@dataclass(frozen=True)
class Request:
    """A validated request."""

    id: RequestId
    method: Method
    params: dict[str, Any]


def make_request(
    req_id: RequestId, method: Method | str, params: Mapping[str, Any]
) -> dict[str, Any]:
    return {"id": req_id, "method": str(method), "params": dict(params)}


def make_reply(req_id: RequestId, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": req_id, "result": dict(result)}


def make_error(req_id: RequestId | None, code: ErrorCode, message: str) -> dict[str, Any]:
    return {"id": req_id, "error": {"code": code.value, "message": message}}


def error_from_exception(exc: ProtocolError, req_id: RequestId | None = None) -> dict[str, Any]:
    """The error reply for ``exc``, using its recovered request id if it has one."""
    return make_error(exc.req_id if exc.req_id is not None else req_id, exc.code, exc.message)


def make_event(name: EventName | str, data: Mapping[str, Any], timestamp: float) -> dict[str, Any]:
    return {"event": str(name), "data": dict(data), "timestamp": timestamp}


def _valid_id(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def parse_request(message: Mapping[str, Any]) -> Request:
    """Validate a request object: id, known method, params valid for that method.

    Errors carry the request id when it was usable, so the reply still matches:
    bad shape → EPROTO, unknown method → ENOSYS, bad params → EINVAL.
    """
    raw_id = message.get("id")
    req_id: RequestId | None = raw_id if _valid_id(raw_id) else None
    if req_id is None:
        raise ProtocolError(ErrorCode.EPROTO, "request needs an integer or string 'id'")
    extra = set(message) - {"id", "method", "params"}
    if extra:
        raise ProtocolError(ErrorCode.EPROTO, f"unknown request keys: {sorted(extra)}", req_id)
    name = message.get("method")
    if not isinstance(name, str):
        raise ProtocolError(ErrorCode.EPROTO, "request needs a string 'method'", req_id)
    try:
        method = Method(name)
    except ValueError:
        raise ProtocolError(ErrorCode.ENOSYS, f"unknown method {name!r}", req_id) from None
    params = message.get("params", {})
    if not isinstance(params, dict):
        raise ProtocolError(ErrorCode.EPROTO, "'params' must be an object", req_id)
    try:
        checked = validate_params(method, params)
    except ProtocolError as exc:
        raise ProtocolError(exc.code, exc.message, req_id) from None
    return Request(req_id, method, checked)


# --------------------------------------------------------------------------- params


@dataclass(frozen=True)
class Param:
    """One parameter of a method: its JSON type, whether required, an extra check."""

    kind: str  # "str" | "int" | "bool" | "number" | "str_list" | "resources"
    required: bool = True
    check: Callable[[Any], str | None] | None = None


def _container_id(value: Any) -> str | None:
    if not CONTAINER_ID_RE.fullmatch(value):
        return "must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
    return None


def _nonempty_list(value: Any) -> str | None:
    return "must not be empty" if not value else None


def _non_negative(value: Any) -> str | None:
    return "must be >= 0" if value < 0 else None


def _positive(value: Any) -> str | None:
    return "must be > 0" if not value > 0 else None


def _signal(value: Any) -> str | None:
    return "must be a signal number 1..64" if not 1 <= value <= 64 else None


def _abs_path(value: Any) -> str | None:
    return "must be an absolute path" if not value.startswith("/") else None


def _read_timeout(value: Any) -> str | None:
    return f"must be > 0 and <= {MAX_READ_TIMEOUT:g}" if not 0 < value <= MAX_READ_TIMEOUT else None


def _read_size(value: Any) -> str | None:
    return f"must be 1..{MAX_READ_BYTES}" if not 1 <= value <= MAX_READ_BYTES else None


def _base64(value: Any) -> str | None:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return "must be base64"
    return None


def _disk_serial(value: Any) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,20}", value):
        return "must be a block device serial: 1-20 of [A-Za-z0-9_.-]"
    return None


def _terminal_size(value: Any) -> str | None:
    return "must be 1..65535" if not 1 <= value <= 65535 else None


def _cpu_list(value: Any) -> str | None:
    try:
        parse_cpu_list(value)
    except CpuListError as exc:
        return exc.message
    return None


_CID = Param("str", check=_container_id)
_EXEC_ID = Param("str", required=False, check=_container_id)
"""Names an exec'd process of a container (``StartProcess``); absent: the container's init."""

MAX_READ_TIMEOUT: Final = 60.0
"""Longest ``ReadProcess`` wait, in seconds: a host polls again rather than wait longer."""
MAX_READ_BYTES: Final = 256 * 1024
"""Most bytes of each stream one ``ReadProcess`` returns (base64 keeps both in a frame)."""

PROCESS_IO: Final[dict[str, Param]] = {
    "env": Param("str_list", required=False),
    "cwd": Param("str", required=False, check=_abs_path),
    "terminal": Param("bool", required=False),
}
"""How a process whose stdio the host streams starts (``CreateContainer`` with
``streams``, ``StartProcess``): ``KEY=VALUE`` environment (absent: the agent's default
``PATH``/``HOME``), working directory, and a terminal instead of three pipes."""

RESOURCES: Final[dict[str, Param]] = {
    "cpuset_cpus": Param("str", required=False, check=_cpu_list),
    "quota": Param("int", required=False),
    "period": Param("int", required=False, check=_positive),
}
"""Keys of ``UpdateContainer.resources`` (and the matching ``CreateContainer`` params).

``quota`` is in microseconds per ``period``; a negative quota means no limit
(``cpu.max`` "max"), as ``cfs_quota_us = -1`` does. Range checks beyond the JSON
type (period 1000..1000000, quota >= 1000) are the guest kernel's, so they come
back as EINVAL with the kernel's reason.
"""

METHOD_PARAMS: Final[dict[Method, dict[str, Param]]] = {
    Method.CREATE_CONTAINER: {
        "container_id": _CID,
        "cmd": Param("str_list"),
        **RESOURCES,
        "streams": Param("bool", required=False),
        **PROCESS_IO,
        "rootfs_disk": Param("str", required=False, check=_disk_serial),
    },
    Method.START_CONTAINER: {"container_id": _CID},
    Method.EXEC_PROCESS: {
        "container_id": _CID,
        "cmd": Param("str_list", check=_nonempty_list),
        "timeout": Param("number", required=False, check=_positive),
    },
    Method.KILL_CONTAINER: {"container_id": _CID, "signal": Param("int", False, _signal)},
    Method.REMOVE_CONTAINER: {"container_id": _CID},
    Method.ONLINE_CPU_MEM: {
        "nb_cpus": Param("int", check=_non_negative),
        "cpu_only": Param("bool", required=False),
        "wait": Param("bool", required=False),  # Kata sends it; its agent ignores it too
    },
    # the online/offline baseline's shrink (docs/contract.md §9): how many CPUs stay online, >= 1
    Method.OFFLINE_CPUS: {"nb_cpus": Param("int", check=_positive)},
    Method.UPDATE_CONTAINER: {"container_id": _CID, "resources": Param("resources")},
    Method.STATS_CONTAINER: {"container_id": _CID},
    Method.READ_FILE: {"path": Param("str", check=_abs_path)},
    Method.GUEST_DETAILS: {},
    Method.SUBSCRIBE_EVENTS: {},
    # streamed processes (docs/agent-protocol.md "Streamed processes"; cpuplug-runc's shim)
    Method.START_PROCESS: {
        "container_id": _CID,
        "exec_id": Param("str", check=_container_id),
        "cmd": Param("str_list", check=_nonempty_list),
        **PROCESS_IO,
    },
    Method.READ_PROCESS: {
        "container_id": _CID,
        "exec_id": _EXEC_ID,
        "timeout": Param("number", required=False, check=_read_timeout),
        "max_bytes": Param("int", required=False, check=_read_size),
    },
    Method.WRITE_STDIN: {
        "container_id": _CID,
        "exec_id": _EXEC_ID,
        "data": Param("str", check=_base64),
        "close": Param("bool", required=False),
    },
    Method.SIGNAL_PROCESS: {
        "container_id": _CID,
        "exec_id": _EXEC_ID,
        "signal": Param("int", check=_signal),
    },
    Method.RESIZE_TERMINAL: {
        "container_id": _CID,
        "exec_id": _EXEC_ID,
        "rows": Param("int", check=_terminal_size),
        "cols": Param("int", check=_terminal_size),
    },
}


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "str_list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "resources":
        return isinstance(value, dict)
    raise AssertionError(f"unknown param kind {kind}")


_KIND_WORDS: Final = {
    "str": "a string",
    "int": "an integer",
    "bool": "a boolean",
    "number": "a number",
    "str_list": "a list of strings",
    "resources": "an object",
}


def _check_fields(schema: Mapping[str, Param], params: Mapping[str, Any], where: str) -> None:
    unknown = set(params) - set(schema)
    if unknown:
        raise ProtocolError(ErrorCode.EINVAL, f"{where}: unknown parameter(s) {sorted(unknown)}")
    for key, spec in schema.items():
        if key not in params:
            if spec.required:
                raise ProtocolError(ErrorCode.EINVAL, f"{where}: missing parameter {key!r}")
            continue
        value = params[key]
        if not _type_ok(spec.kind, value):
            raise ProtocolError(
                ErrorCode.EINVAL, f"{where}: {key!r} must be {_KIND_WORDS[spec.kind]}"
            )
        if spec.kind == "resources":
            _check_fields(RESOURCES, value, f"{where}.{key}")
        elif spec.check is not None:
            why = spec.check(value)
            if why is not None:
                raise ProtocolError(ErrorCode.EINVAL, f"{where}: {key!r} {why}")


def validate_params(method: Method, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``params`` against ``method``'s schema; return a copy. EINVAL on any fault.

    Unknown keys are refused rather than ignored, so a misspelt ``cpuset_cpu``
    fails loudly instead of silently not limiting anything.
    """
    _check_fields(METHOD_PARAMS[method], params, str(method))
    return dict(params)


# --------------------------------------------------------------------------- incoming (client)


@dataclass(frozen=True)
class Reply:
    id: RequestId | None
    result: dict[str, Any]


@dataclass(frozen=True)
class ErrorReply:
    id: RequestId | None
    code: str
    message: str

    def exception(self) -> AgentError:
        return AgentError(self.code, self.message, self.id)


@dataclass(frozen=True)
class Event:
    name: str
    data: dict[str, Any]
    timestamp: float


Incoming = Reply | ErrorReply | Event


def parse_incoming(message: Mapping[str, Any]) -> Incoming:
    """Classify a message the agent sent (reply, error reply or event); EPROTO if none."""
    if "event" in message:
        name, data, ts = message.get("event"), message.get("data"), message.get("timestamp")
        if (
            not isinstance(name, str)
            or not isinstance(data, dict)
            or not isinstance(ts, int | float)
            or isinstance(ts, bool)
        ):
            raise ProtocolError(ErrorCode.EPROTO, f"malformed event: {dict(message)!r}")
        return Event(name, data, float(ts))
    raw_id = message.get("id")
    req_id = raw_id if _valid_id(raw_id) else None
    if raw_id is not None and req_id is None:
        raise ProtocolError(ErrorCode.EPROTO, f"malformed reply id: {raw_id!r}")
    if "result" in message and "error" not in message:
        result = message["result"]
        if not isinstance(result, dict):
            raise ProtocolError(ErrorCode.EPROTO, "reply 'result' must be an object")
        return Reply(req_id, result)
    if "error" in message and "result" not in message:
        err = message["error"]
        if (
            not isinstance(err, dict)
            or not isinstance(err.get("code"), str)
            or not isinstance(err.get("message"), str)
        ):
            raise ProtocolError(ErrorCode.EPROTO, f"malformed error reply: {dict(message)!r}")
        return ErrorReply(req_id, err["code"], err["message"])
    raise ProtocolError(ErrorCode.EPROTO, f"not a reply or event: {dict(message)!r}")


# --------------------------------------------------------------------------- blocking client


def send_message(sock: socket.socket, message: Mapping[str, Any]) -> None:
    """Frame and send one message (whole, with ``sendall``)."""
    sock.sendall(encode_frame(message))


def send_request(
    sock: socket.socket, req_id: RequestId, method: Method | str, params: Mapping[str, Any]
) -> None:
    """Send one request. ``params`` are checked first when ``method`` is known."""
    if isinstance(method, Method):
        validate_params(method, params)
    send_message(sock, make_request(req_id, method, params))


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentTimeout("timed out waiting for the agent")
            sock.settimeout(remaining)
        else:
            sock.settimeout(None)
        try:
            chunk = sock.recv(min(n - got, 1 << 16))
        except TimeoutError:
            raise AgentTimeout("timed out waiting for the agent") from None
        if not chunk:
            where = "before a message" if got == 0 and n == HEADER.size else "inside a frame"
            raise ConnectionClosed(f"connection closed by the agent {where}")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_message(sock: socket.socket, timeout: float | None) -> dict[str, Any]:
    """Receive exactly one framed message (no read-ahead: the socket holds the rest).

    Raises :class:`AgentTimeout` when ``timeout`` seconds pass first — if that
    happens mid-frame the stream is out of sync and the socket must be closed —
    :class:`ConnectionClosed` at end of stream, :class:`ProtocolError` /
    :class:`FrameError` for a malformed frame. The socket's own timeout setting is
    restored afterwards.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    saved = sock.gettimeout()
    try:
        (length,) = HEADER.unpack(_recv_exact(sock, HEADER.size, deadline))
        if length > MAX_FRAME:
            raise FrameError(ErrorCode.EPROTO, f"frame length {length} exceeds {MAX_FRAME}")
        body = _recv_exact(sock, length, deadline) if length else b""
    finally:
        sock.settimeout(saved)
    return parse_body(body)


def call(
    sock: socket.socket,
    method: Method,
    params: Mapping[str, Any],
    *,
    timeout: float | None,
    req_id: RequestId = 1,
    on_event: Callable[[Event], None] | None = None,
) -> dict[str, Any]:
    """Send a request and wait for its reply; return ``result`` or raise :class:`AgentError`.

    Events that arrive first go to ``on_event`` (or are dropped without one);
    a reply with another id is a protocol error, since this helper is used one
    request at a time per connection. ``timeout`` bounds the whole exchange.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    send_request(sock, req_id, method, params)
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        msg = parse_incoming(recv_message(sock, remaining))
        if isinstance(msg, Event):
            if on_event is not None:
                on_event(msg)
            continue
        if isinstance(msg, ErrorReply) and msg.id is None:
            raise msg.exception()  # the agent could not tell which request failed
        if msg.id != req_id:
            raise ProtocolError(
                ErrorCode.EPROTO, f"reply id {msg.id!r} does not match request id {req_id!r}"
            )
        if isinstance(msg, ErrorReply):
            raise msg.exception()
        return msg.result

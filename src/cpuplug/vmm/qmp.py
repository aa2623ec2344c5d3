"""The QMP server (docs/contract.md §7): QEMU's management protocol over a unix socket, on asyncio.

The wire protocol is QEMU's, so the official ``qemu.qmp`` client works unchanged:
a greeting, ``qmp_capabilities`` before anything else, one JSON object per
message (clients need not send newlines between them — ``qemu.qmp`` does not),
``id`` echoed verbatim, and one error shape
``{"error": {"class": ..., "desc": ...}}``. Events carry QEMU's
``timestamp {seconds, microseconds}`` and go to every negotiated client.

Robustness is a requirement, not a nicety: the VMM must outlive any client.
Input is split into JSON values by :class:`JsonSplitter`, a small streaming
scanner in the spirit of QEMU's json-streamer, which bounds both the size and
the nesting depth of a message and resynchronises after garbage, so a client
sending non-JSON, a non-object or a gigantic line gets an error reply and the
connection (and the VMM) keeps serving. Each value is then parsed by
:mod:`cpuplug.strict_json`, the parser the agent protocol uses too, which refuses
what Python's json module accepts beyond RFC 8259 (duplicate keys, ``NaN``,
``1e999``, huge integers). Commands run on the event-loop thread;
machine errors (:class:`cpuplug.errors.CpuplugError`) become ``GenericError``
replies and any other exception is logged and reported, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cpuplug import strict_json
from cpuplug.errors import CpuplugError
from cpuplug.vmm.machine import VirtMachine
from cpuplug.vmm.sockpath import claim_socket_path

log = logging.getLogger(__name__)

QEMU_VERSION = {"major": 9, "minor": 2, "micro": 0}
"""The QEMU release whose QMP behaviour we follow (integer-only ``device_add`` props)."""

MAX_MESSAGE = 1024 * 1024
"""Largest accepted QMP message in bytes; a bigger one is answered with an error."""
MAX_PENDING_OUTPUT = 16 * 1024 * 1024
"""Bytes queued to one client before it is considered dead and disconnected."""
MAX_DEPTH = 1024
"""Deepest accepted JSON nesting (QEMU's json-parser limit)."""

_STRUCT = re.compile(rb'[{}\[\]"]')
_STRING_SPECIAL = re.compile(rb'["\\\x00-\x1f]')
_TOKEN_END = re.compile(rb'[\s{}\[\]"]')
_RESYNC = re.compile(rb"[\n{\[]")
_WHITESPACE = b" \t\r\n"


class QmpError(CpuplugError):
    """A command failed; ``error_class`` is the QMP error class to report."""

    def __init__(self, desc: str, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.error_class = error_class


@dataclass
class ParseFault:
    """One input value that could not become a QMP message (reported without an id)."""

    desc: str


class JsonSplitter:
    """Split a byte stream into top-level JSON values, bounded in size and depth.

    ``feed`` returns the complete values found so far as raw ``bytes`` (parse them
    with :func:`cpuplug.strict_json.loads`), and :class:`ParseFault` items for values that were
    too big or too deep. An oversized value is *skipped to its end* (its brackets
    are still tracked, so the next message is found again), and the memory held
    never exceeds about :data:`MAX_MESSAGE` however much a client sends.
    """

    def __init__(self, max_size: int = MAX_MESSAGE, max_depth: int = MAX_DEPTH) -> None:
        self._max_size = max_size
        self._max_depth = max_depth
        self._buf = bytearray()
        self._pos = 0
        self._kind: str | None = None  # None | "container" | "string" | "token"
        self._depth = 0
        self._in_string = False
        self._discard = False
        self._recovering = False  # after an invalid token: skip to a newline, { or [

    def feed(self, data: bytes) -> list[bytes | ParseFault]:
        self._buf += data
        out: list[bytes | ParseFault] = []
        while self._step(out):
            pass
        return out

    def _step(self, out: list[bytes | ParseFault]) -> bool:
        """Advance the scan; True while progress can still be made on this buffer."""
        buf = self._buf
        if self._kind is None and self._recovering:
            match = _RESYNC.search(buf, self._pos)
            if match is None:
                buf.clear()
                self._pos = 0
                return False
            self._pos = match.start()
            self._recovering = False
        if self._kind is None:
            while self._pos < len(buf) and buf[self._pos] in _WHITESPACE:
                self._pos += 1
            del buf[: self._pos]
            self._pos = 0
            if not buf:
                return False
            first = buf[0]
            if first in b"{[":
                self._kind, self._depth, self._pos = "container", 1, 1
            elif first == ord('"'):
                self._kind, self._in_string, self._pos = "string", True, 1
            elif first in b"}]":
                out.append(ParseFault(f"JSON parse error, unexpected '{chr(first)}'"))
                self._pos = 1
                return True
            else:
                self._kind = "token"
        if self._kind == "token":
            match = _TOKEN_END.search(buf, self._pos)
            if match is None:
                self._pos = len(buf)
                self._check_size(out)
                return False
            self._finish_token(match.start(), out)
            return True
        return self._scan_value(out)

    def _finish_token(self, end: int, out: list[bytes | ParseFault]) -> None:
        """A bare top-level token: a JSON scalar is passed on, anything else is garbage.

        After garbage the scanner skips to the next line or bracket (like QEMU's
        lexer recovery), so one bad line costs one error reply, not one per word.
        """
        token = bytes(self._buf[:end])
        try:
            json.loads(token)
        except (ValueError, RecursionError):
            if not self._discard:
                text = token[:32].decode("utf-8", errors="replace")
                out.append(ParseFault(f"JSON parse error, invalid token '{text}'"))
            del self._buf[:end]
            self._reset()
            self._recovering = True
            return
        self._finish(end, out)

    def _scan_value(self, out: list[bytes | ParseFault]) -> bool:
        buf = self._buf
        while self._pos < len(buf):
            if self._in_string:
                match = _STRING_SPECIAL.search(buf, self._pos)
                if match is None:
                    self._pos = len(buf)
                    break
                at = match.start()
                if buf[at] < 0x20:
                    # JSON strings never hold a raw control character (QEMU's lexer
                    # refuses them too). Without this, a half line such as
                    # ``{"execute": "query-st`` + newline would swallow every later
                    # message into one endless string and the client would hang.
                    self._abandon(at, out, "JSON parse error, control character in string")
                    return True
                if buf[at] == ord("\\"):
                    if at + 1 >= len(buf):
                        self._pos = at  # the escaped character has not arrived yet
                        break
                    self._pos = at + 2
                    continue
                self._in_string = False
                self._pos = at + 1
                if self._kind == "string":
                    self._finish(self._pos, out)
                    return True
                continue
            match = _STRUCT.search(buf, self._pos)
            if match is None:
                self._pos = len(buf)
                break
            at = match.start()
            char = buf[at]
            self._pos = at + 1
            if char == ord('"'):
                self._in_string = True
            elif char in b"{[":
                self._depth += 1
                if self._depth > self._max_depth and not self._discard:
                    self._discard = True
                    out.append(ParseFault(f"JSON nesting deeper than {self._max_depth} levels"))
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._finish(self._pos, out)
                    return True
        self._check_size(out)
        return False

    def _abandon(self, end: int, out: list[bytes | ParseFault], desc: str) -> None:
        """Drop the value being scanned (one error), then resynchronise like bad tokens."""
        if not self._discard:
            out.append(ParseFault(desc))
        del self._buf[:end]
        self._reset()
        self._recovering = True

    def _check_size(self, out: list[bytes | ParseFault]) -> None:
        if not self._discard and len(self._buf) > self._max_size:
            self._discard = True
            out.append(ParseFault(f"JSON message larger than {self._max_size} bytes"))
        if self._discard:
            # Nothing of a discarded value is kept: only the scanner state matters.
            del self._buf[: self._pos]
            self._pos = 0

    def _finish(self, end: int, out: list[bytes | ParseFault]) -> None:
        if end > self._max_size and not self._discard:
            out.append(ParseFault(f"JSON message larger than {self._max_size} bytes"))
        elif not self._discard:
            out.append(bytes(self._buf[:end]))
        del self._buf[:end]
        self._reset()

    def _reset(self) -> None:
        self._pos = 0
        self._kind = None
        self._depth = 0
        self._in_string = False
        self._discard = False


# ---------------------------------------------------------------------------------------
# Commands

ArgSpec = dict[str, tuple[type, bool]]
"""Argument name → (JSON type as a Python type, required)."""

_TYPE_NAMES = {str: "string", int: "integer", bool: "boolean", list: "array", dict: "object"}


@dataclass
class _Command:
    handler: Callable[[dict[str, Any]], object]
    args: ArgSpec | None = field(default_factory=dict)
    """``None`` = free-form arguments validated by the handler (``device_add``)."""


def check_arguments(arguments: Mapping[str, Any], spec: ArgSpec) -> None:
    """QEMU's QAPI input checks: unexpected, missing and wrongly typed parameters."""
    for name in arguments:
        if name not in spec:
            raise QmpError(f"Parameter '{name}' is unexpected")
    for name, (kind, required) in spec.items():
        if name not in arguments:
            if required:
                raise QmpError(f"Parameter '{name}' is missing")
            continue
        if not is_json_type(arguments[name], kind):
            raise QmpError(f"Invalid parameter type for '{name}', expected: {_TYPE_NAMES[kind]}")


def is_json_type(value: object, kind: type) -> bool:
    """Whether a decoded JSON value has JSON type ``kind`` (a bool is not an integer)."""
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def timestamp() -> dict[str, int]:
    """QMP's event timestamp: wall-clock seconds and microseconds."""
    now = time.time_ns() // 1000
    return {"seconds": now // 1_000_000, "microseconds": now % 1_000_000}


class _Client:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.negotiated = False

    def send(self, message: Mapping[str, object]) -> None:
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > MAX_PENDING_OUTPUT:
            # A client that never reads must not make the VMM buffer events forever.
            log.warning("QMP client is not reading its replies/events; disconnecting it")
            self.writer.transport.abort()  # close() would wait to flush what it never reads
            return
        self.writer.write(json.dumps(message, separators=(", ", ": ")).encode() + b"\r\n")


class QmpServer:
    """Serves one machine's QMP on a unix socket path (QEMU's ``-qmp unix:PATH,server``).

    ``on_quit`` is called (on the loop) after a ``quit`` reply has been flushed;
    the process then shuts the machine down. Machine events reach clients through
    :meth:`emit`, which is safe to call from any thread.
    """

    def __init__(
        self,
        machine: VirtMachine,
        path: str | os.PathLike[str],
        *,
        on_quit: Callable[[], None] | None = None,
    ) -> None:
        self.machine = machine
        self.path = os.fspath(path)
        self._on_quit = on_quit
        self._server: asyncio.AbstractServer | None = None
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: set[_Client] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.status = "running"
        self._commands: dict[str, _Command] = {
            "qmp_capabilities": _Command(self._cmd_capabilities, {"enable": (list, False)}),
            "query-version": _Command(self._cmd_query_version),
            "query-commands": _Command(self._cmd_query_commands),
            "query-name": _Command(lambda _args: {}),
            "query-status": _Command(self._cmd_query_status),
            "query-hotpluggable-cpus": _Command(
                lambda _args: self.machine.query_hotpluggable_cpus()
            ),
            "query-cpus-fast": _Command(lambda _args: self.machine.query_cpus_fast()),
            "query-acpi-ospm-status": _Command(lambda _args: self.machine.query_acpi_ospm_status()),
            "device_add": _Command(self._cmd_device_add, None),
            "device_del": _Command(self._cmd_device_del, {"id": (str, True)}),
            "system_powerdown": _Command(self._cmd_system_powerdown),
            "quit": _Command(self._cmd_quit),
        }
        self._quit_requested = False

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the socket path (mode 0600; a stale socket file is replaced).

        :class:`UsageError` if the path is someone else's (see
        :func:`claim_socket_path`), :class:`QmpError` if listening fails.
        """
        self._loop = asyncio.get_running_loop()
        claim_socket_path(self.path, "QMP")
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve_client, self.path)
        except OSError as exc:
            raise QmpError(f"cannot listen on QMP socket {self.path}: {exc}") from exc
        finally:
            os.umask(old_umask)
        st = os.lstat(self.path)
        self._bound = (st.st_dev, st.st_ino)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        """Stop listening, disconnect every client, remove the socket file."""
        if self._server is not None:
            self._server.close()
        for client in list(self._clients):
            client.writer.close()  # the client's reader sees EOF and its task ends
        if self._tasks:
            _done, stuck = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in stuck:
                task.cancel()
            if stuck:
                await asyncio.wait(stuck, timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        # Only the socket file this server created: after a failed start the path
        # may be the user's file or directory, or another process's socket.
        if self._bound is not None:
            with contextlib.suppress(OSError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._bound:
                    os.unlink(self.path)
            self._bound = None

    # -- events -------------------------------------------------------------------------

    def emit(self, name: str, data: Mapping[str, object] | None = None) -> None:
        """Send event ``name`` to every negotiated client; callable from any thread."""
        message: dict[str, object] = {"event": name}
        if data is not None:
            message["data"] = dict(data)
        message["timestamp"] = timestamp()
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._broadcast(message)
        else:
            with contextlib.suppress(RuntimeError):  # loop closing: nobody to tell
                loop.call_soon_threadsafe(self._broadcast, message)

    def _broadcast(self, message: Mapping[str, object]) -> None:
        for client in list(self._clients):
            if client.negotiated:
                client.send(message)

    # -- one client ---------------------------------------------------------------------

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        client = _Client(writer)
        self._clients.add(client)
        splitter = JsonSplitter()
        try:
            client.send(
                {
                    "QMP": {
                        "version": {"qemu": dict(QEMU_VERSION), "package": "cpuplug"},
                        "capabilities": [],
                    }
                }
            )
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for item in splitter.feed(data):
                    reply = self._handle(client, item)
                    if reply is not None:
                        client.send(reply)
                    if self._quit_requested:
                        await writer.drain()
                        self._fire_quit()
                        return
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._clients.discard(client)
            writer.close()
            # Ending as "cancelled" would make asyncio log the task; a closing
            # client is not an error.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    def _fire_quit(self) -> None:
        if self._on_quit is not None:
            callback, self._on_quit = self._on_quit, None
            callback()

    def _handle(self, client: _Client, item: bytes | ParseFault) -> dict[str, object] | None:
        if isinstance(item, ParseFault):
            return _error(item.desc)
        try:
            message = strict_json.loads(item)
        except strict_json.JsonRefused as exc:
            return _error(f"JSON parse error, {exc.reason}")
        if not isinstance(message, dict):
            return _error("QMP input must be a JSON object")
        has_id = "id" in message
        reply = self._dispatch(client, message)
        if has_id:
            reply["id"] = message["id"]
        return reply

    def _dispatch(self, client: _Client, message: dict[str, Any]) -> dict[str, object]:
        for key in message:
            if key not in ("execute", "arguments", "id", "control"):
                if key == "exec-oob":
                    return _error("Out-Of-Band execution is not supported by this server")
                return _error(f"QMP input member '{key}' is unexpected")
        if "execute" not in message:
            return _error("QMP input lacks member 'execute'")
        name = message["execute"]
        if not isinstance(name, str):
            return _error("QMP input member 'execute' must be a string")
        arguments = message.get("arguments", {})
        if not isinstance(arguments, dict):
            return _error("QMP input member 'arguments' must be an object")
        if not client.negotiated and name != "qmp_capabilities":
            return _error(
                "Expecting capabilities negotiation with 'qmp_capabilities'", "CommandNotFound"
            )
        if client.negotiated and name == "qmp_capabilities":
            return _error(
                "Capabilities negotiation is already complete, command ignored",
                "CommandNotFound",
            )
        command = self._commands.get(name)
        if command is None:
            return _error(f"The command {name} has not been found", "CommandNotFound")
        try:
            if command.args is not None:
                check_arguments(arguments, command.args)
            result = command.handler(arguments)
        except QmpError as exc:
            return _error(str(exc), exc.error_class)
        except CpuplugError as exc:
            return _error(str(exc))
        except Exception as exc:  # a bug must cost one reply, not the VMM
            log.exception("QMP command %s failed", name)
            return _error(f"internal error in {name}: {exc.__class__.__name__}")
        if name == "qmp_capabilities":
            client.negotiated = True
        return {"return": result}

    # -- command handlers ---------------------------------------------------------------

    def _cmd_capabilities(self, args: dict[str, Any]) -> object:
        for capability in args.get("enable", []):
            raise QmpError(f"Capability '{capability}' not available")
        return {}

    def _cmd_query_version(self, _args: dict[str, Any]) -> object:
        return {"qemu": dict(QEMU_VERSION), "package": "cpuplug"}

    def _cmd_query_commands(self, _args: dict[str, Any]) -> object:
        return [{"name": name} for name in sorted(self._commands)]

    def _cmd_query_status(self, _args: dict[str, Any]) -> object:
        status = self.machine.run_state
        return {"status": status, "running": status == "running"}

    def _cmd_device_add(self, args: dict[str, Any]) -> object:
        if "driver" not in args:
            raise QmpError("Parameter 'driver' is missing")
        driver = args["driver"]
        if not isinstance(driver, str):
            raise QmpError("Invalid parameter type for 'driver', expected: string")
        device_id = args.get("id")
        if device_id is not None and not isinstance(device_id, str):
            raise QmpError("Invalid parameter type for 'id', expected: string")
        props = {k: v for k, v in args.items() if k not in ("driver", "id")}
        self.machine.device_add(driver, device_id, props)
        return {}

    def _cmd_device_del(self, args: dict[str, Any]) -> object:
        self.machine.device_del(args["id"])
        return {}

    def _cmd_system_powerdown(self, _args: dict[str, Any]) -> object:
        self.machine.system_powerdown()
        return {}

    def _cmd_quit(self, _args: dict[str, Any]) -> object:
        # As QEMU: the SHUTDOWN event goes out before the reply to quit.
        self.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        self._quit_requested = True
        return {}


def _error(desc: str, error_class: str = "GenericError") -> dict[str, object]:
    return {"error": {"class": error_class, "desc": desc}}

"""Strict JSON: RFC 8259 and nothing more, for the two protocols that read JSON from a peer.

QMP (:mod:`cpuplug.vmm.qmp`, docs/qmp.md) and the agent protocol
(:mod:`cpuplug.agent_protocol`, docs/agent-protocol.md) both parse messages written
by another process, and Python's :func:`json.loads` accepts more than JSON in ways a
protocol must not:

* a key repeated in one object: the *last* one wins, so
  ``{"execute": "query-status", "execute": "quit"}`` would quietly run ``quit``
  (QEMU's parser refuses it), and ``{"method": "A", "method": "B"}`` likewise;
* ``NaN``, ``Infinity``, ``-Infinity``: not JSON, and a reply echoing one (an ``id``)
  is not JSON any strict client can read;
* a number that only decodes to infinity (``1e999``): the same, by another road;
* an integer of thousands of digits: converting it costs time quadratic in its
  length (Python refuses beyond 4300 digits, with a multi-line message).

Raw control characters in strings are refused by :func:`json.loads` already; here
they get the same one-line reason QMP's stream splitter gives them. Text given as
bytes must be UTF-8 (RFC 8259 §8.1).

Every refusal is one exception type, :class:`JsonRefused`, whose ``reason`` is a
single line, worded the same for both protocols. Like the other seams this module
imports no party.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from cpuplug.errors import CpuplugError

__all__ = ["MAX_INT_DIGITS", "JsonRefused", "loads"]

MAX_INT_DIGITS: Final = 1000
"""Longest integer literal accepted, in characters (a sign counts)."""


class JsonRefused(CpuplugError):
    """The text is not strict JSON; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def loads(data: str | bytes | bytearray) -> Any:
    """Parse one JSON text strictly; raise :class:`JsonRefused` for anything else.

    Returns what :func:`json.loads` would (dict, list, str, int, float, bool, None).
    """
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRefused(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    else:
        text = data
    try:
        return json.loads(
            text, object_pairs_hook=_object, parse_float=_float, parse_int=_int,
            parse_constant=_constant,
        )  # fmt: skip
    except JsonRefused:
        raise
    except json.JSONDecodeError as exc:
        if exc.msg.startswith("Invalid control character"):
            raise JsonRefused("control character in string") from None
        at = len(text[: exc.pos].encode("utf-8", "surrogatepass"))
        raise JsonRefused(f"{exc.msg} at byte {at}") from None
    except RecursionError:
        raise JsonRefused("nesting too deep") from None
    except ValueError as exc:  # nothing known reaches here; keep the promise of one line
        raise JsonRefused(" ".join(str(exc).split()) or "invalid JSON") from None


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JsonRefused(f"duplicate key {_quote(key)}")
        result[key] = value
    return result


def _quote(key: str) -> str:
    """A key as the reason shows it: quoted, escaped onto one line, at most 64 characters."""
    return repr(key) if len(key) <= _KEY_SHOWN else repr(key[:_KEY_SHOWN]) + "..."


_KEY_SHOWN: Final = 64


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonRefused(f"number {text[:32]} is out of range")
    return value


def _int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise JsonRefused(f"integer of {len(text)} digits is too long")
    return int(text)


def _constant(name: str) -> Any:
    raise JsonRefused(f"invalid token '{name}'")

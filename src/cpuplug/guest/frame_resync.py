"""Agent protocol frames out of a byte stream that may be entered, or broken, mid-frame.

Over a connection-oriented channel a broken frame costs that one connection: the agent
closes it and the host reconnects. A virtio-serial port is one byte stream for the
guest's whole life and the agent cannot close the host's end of it; a host client
that dies half-way through a request, or a session whose end the guest missed (a
client leaving and the next one connecting before the agent read the end of
stream), leaves the agent's decoder out of step with the frames. This decoder finds
them again instead of misreading every frame that follows.

Why the stream can be resynchronised at all: a header is the body's length, big-endian,
at most :data:`~cpuplug.agent_protocol.MAX_FRAME` (2**20), so its first byte is always
0x00; and a body is UTF-8 strict JSON, in which a 0x00 byte cannot occur (a NUL
character must be written ``\\u0000``; UTF-8 encodes nothing else with a zero byte).
So a 0x00 inside what should be a body proves the decoder is out of step, and the next
frame can only begin at a 0x00. The decoder skips to the first 0x00 whose four bytes
announce 1..MAX_FRAME bytes and are followed by ``{`` or JSON whitespace (a request is
a JSON object), and counts what it skipped so the agent can say so in its log.

A frame that survives these checks and still is not a request is the agent's to refuse,
as on any channel.
"""

from __future__ import annotations

from cpuplug.agent_protocol import HEADER, MAX_FRAME

__all__ = ["ResyncDecoder"]

_BODY_START = frozenset(b"{ \t\n\r")


class ResyncDecoder:
    """Feed it received bytes, get complete frame bodies back; never raises."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skipped = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return every body now complete, in order."""
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        while buf:
            if buf[0] != 0:
                self._skip_to_nul(0)
                continue
            if len(buf) < HEADER.size:
                break
            (length,) = HEADER.unpack_from(buf)
            if not 1 <= length <= MAX_FRAME or (
                len(buf) > HEADER.size and buf[HEADER.size] not in _BODY_START
            ):
                self._skip_to_nul(1)
                continue
            end = HEADER.size + length
            nul = buf.find(0, HEADER.size, min(end, len(buf)))
            if nul != -1:  # no body holds a 0x00: a frame starts here, not this one
                self._drop(nul)
                continue
            if len(buf) < end:
                break
            out.append(bytes(buf[HEADER.size : end]))
            del buf[:end]
        return out

    def take_skipped(self) -> int:
        """Bytes skipped to resynchronise since the last call."""
        skipped, self._skipped = self._skipped, 0
        return skipped

    def reset(self) -> None:
        """Forget a partial frame (a new session starts on a frame boundary)."""
        self._skipped += len(self._buf)
        self._buf.clear()

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a complete frame."""
        return len(self._buf)

    def _skip_to_nul(self, start: int) -> None:
        i = self._buf.find(0, start)
        self._drop(len(self._buf) if i == -1 else i)

    def _drop(self, n: int) -> None:
        del self._buf[:n]
        self._skipped += n

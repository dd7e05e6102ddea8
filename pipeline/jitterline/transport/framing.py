"""Server frames (RFC 6455 section 5.2) out of one connection's received bytes, sans I/O.

websocket-client still opens every connection (the user's choice of library); once it is
upgraded we read the frames ourselves. Its ``frame_buffer`` pulls each header field and
payload through ``recv_strict`` (a list of chunks summed, joined and re-split per field),
builds an ``ABNF`` object, validates it and ends each read with an exception: ~50 000
instructions a 570-byte frame (callgrind), most of the transport's cost at one frame per
socket readiness. ``FrameReader`` parses the header in place in the bytes one ``recv``
returned and slices the payload out: ~11 000.

The reader keeps websocket-client's semantics where they show: a frame's header is known
(``header``) before any of its payload is needed, so the shell can refuse an oversized
message before reading it; a payload masked by the server is unmasked as websocket-client
does; what ``ABNF.validate`` refuses (reserved bits, unknown opcodes, fragmented pings,
bad close frames) is still refused by ``ABNF.validate`` itself, called for every frame
that is not plain data (data frames without reserved bits pass it by construction).
"""

from __future__ import annotations

from websocket import ABNF, WebSocketProtocolException

__all__ = ["FrameReader", "check_frame"]

_MASKED = 0x80
_LENGTH = 0x7F
_LENGTH_16 = 126
_LENGTH_64 = 127
_FIN = 0x80
_RSV = 0x70
_OPCODE = 0x0F
_DATA_OPCODES = (ABNF.OPCODE_CONT, ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY)


class FrameReader:
    """The frame being read and the bytes after it; see the module docstring.

    Use: ``feed`` what the socket returned; ``header()`` until it is True (then ``first``
    and ``length`` describe the next frame); ``payload()`` until it returns the payload,
    which moves the reader on to the frame after.
    """

    __slots__ = ("_buffer", "_held", "_parts", "_pos", "_short", "_start", "first", "length")

    def __init__(self) -> None:
        self._buffer = b""
        self._pos = 0
        self._parts: list[bytes] = []
        self._start = 0
        self._held = 0
        self._short = 1
        self.first = -1
        """The next frame's first byte (FIN, RSV, opcode) once its header is in, else -1."""
        self.length = 0

    @property
    def partial(self) -> bool:
        """Bytes of a frame not yet complete are held."""
        return self._pos < len(self._buffer) or self._held > 0

    def feed(self, data: bytes) -> None:
        """Add received bytes. A payload arriving over many reads is joined once, when
        enough is in to complete it, not once per read."""
        if self._pos >= len(self._buffer):  # everything before was parsed: no copy
            self._buffer, self._pos = data, 0
            return
        self._parts.append(data)
        self._held += len(data)
        if self._held >= self._short:
            self._buffer = b"".join([self._buffer, *self._parts])
            self._parts.clear()
            self._held = 0

    def header(self) -> bool:
        """Parse the next frame's header (up to its length) if all of it is in."""
        if self.first >= 0:
            return True
        buffer, pos = self._buffer, self._pos
        if self._held or pos >= len(buffer):  # short of what the last look needed, or empty
            return False
        start = pos + 2
        if start > len(buffer):
            return self._need(start)
        second = buffer[pos + 1]
        length = second & _LENGTH
        if length >= _LENGTH_16:
            size = 2 if length == _LENGTH_16 else 8
            if start + size > len(buffer):
                return self._need(start + size)
            length = int.from_bytes(buffer[start : start + size], "big")
            start += size
        if second & _MASKED:
            start += 4  # the key is read with the payload, as websocket-client reads it
        self.first, self.length, self._start = buffer[pos], length, start
        return True

    def payload(self) -> bytes | None:
        """The frame's payload (unmasked) once all of it is in, or None; call after
        ``header()`` said True."""
        if self._held:
            return None
        start = self._start
        end = start + self.length
        buffer = self._buffer
        if end > len(buffer):
            self._need(end)
            return None
        payload = buffer[start:end]
        if buffer[self._pos + 1] & _MASKED:
            payload = ABNF.mask(buffer[start - 4 : start], payload)
        if end == len(buffer):  # let go of a consumed read at once (an idle stream would
            self._buffer, self._pos = b"", 0  # hold its last burst until the next one)
        else:
            self._pos = end
        self.first = -1
        return payload

    def _need(self, end: int) -> bool:
        """Short of bytes up to ``end``: keep only the frame begun, note how many more."""
        pos = self._pos
        if pos:
            self._buffer = self._buffer[pos:]
            self._start -= pos
            end -= pos
            self._pos = 0
        self._short = end - len(self._buffer)
        return False


def check_frame(first: int, payload: bytes) -> WebSocketProtocolException | None:
    """What ``ABNF.validate`` refuses in a frame websocket-client would have built from
    these bytes (UTF-8 is left to the shell's strict decode, as with
    ``skip_utf8_validation=True``); None for a valid frame."""
    if not first & _RSV and first & _OPCODE in _DATA_OPCODES:
        return None
    frame = ABNF(
        first >> 7,
        first >> 6 & 1,
        first >> 5 & 1,
        first >> 4 & 1,
        first & _OPCODE,
        0,
        payload,
    )
    try:
        frame.validate(skip_utf8_validation=True)
    except WebSocketProtocolException as exc:
        return exc
    return None

"""The "appfoundry" dialect: the seed tutorial's JSON stream, with jitterline's conventions.

Every message is a text envelope ``{"type", "timestamp", "payload"}`` with ``timestamp`` in
epoch seconds of the sender's wall clock (PROTOCOLS.md section 4). The server sends
``audio_chunk``, ``error`` and its answer to our ``initialize``; the client sends
``initialize`` and ``user_input``. Binary WebSocket messages are not part of the dialect.

``audio_chunk`` becomes an ``AudioFrame`` whose ``media_ms`` is the capture time
(``payload.timestamp``) times 1000: an epoch-based media clock. Its offset from our clock is
unknown, but the latency window only uses *relative* delay (arrival minus media time, minus
the window minimum), where that constant offset cancels. ``capture_wall_s`` and
``sent_wall_s`` come from the same party's clock, so their difference is server processing
time with no offset at all.

A chunk without ``seq`` gets the highest number seen so far plus one (0 for the first):
"highest" rather than "last" so that a late, reordered frame cannot make the next unnumbered
chunk a duplicate of one already received.

Parsing is strict: anything off the convention raises ``DialectError`` (counted as malformed
by the decode stage, never fatal) and leaves the dialect's state as it was. Serializers are
not strict, so the emulator can build off-convention messages on purpose; they only refuse
what JSON cannot carry (``ConfigError``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from .. import codecs
from ..errors import CodecError, ConfigError, DialectError
from ..frames import AudioFrame, Event, Message, StreamError, StreamOpened
from . import _jsontext
from ._jsontext import short

__all__ = [
    "FORMATS",
    "MAX_MESSAGE_CHARS",
    "SERVER_TYPES",
    "AppFoundryDialect",
    "audio_chunk_message",
    "error_message",
    "initialize_ack_message",
    "initialize_message",
    "user_input_message",
]

logger = logging.getLogger(__name__)

SERVER_TYPES = ("audio_chunk", "error", "initialize")
"""Envelope types a server sends; ``user_input`` is client-to-server only."""

FORMATS = ("L16", "PCMU", "PCMA")
"""Values of ``audio_chunk.payload.format``; "L16" is little-endian (WAV order)."""

MAX_MESSAGE_CHARS = 1_000_000
"""Default cap on a text message: about 45 s of 8 kHz L16 mono once base64 encoded."""

MAX_SEQ = 2**53
"""Beyond this a float-based sender has already lost integer precision: not a real count."""

MAX_WALL_S = 1e11
"""Epoch seconds up to the year ~5100; epoch *milliseconds* (1.7e12 today) land above it."""

RATE_RANGE = (8000, 192000)
CHANNEL_RANGE = (1, 8)
_WORDING = _jsontext.Wording(
    binary_note="the appfoundry dialect is JSON text only",
    size_hint="raise the limit if the sender's chunks are really this large",
    constant_hint="timestamps must be finite",
    noun="envelope",
    type_key="type",
)


class AppFoundryDialect:
    """One appfoundry stream's parser and ``initialize`` builder.

    ``wall_clock`` (epoch seconds) is required because ``opening()`` must stamp the
    ``initialize`` envelope and the core never reads the wall clock itself; pass
    ``time.time`` on a live run, the scheduler's clock on a replay. ``stream_id`` is the
    session id if known up front; ``opening()`` and a server ``initialize`` carrying
    ``sessionId`` replace it.
    """

    name = "appfoundry"

    def __init__(
        self,
        stream_id: str = "",
        *,
        wall_clock: Callable[[], float],
        max_message_chars: int = MAX_MESSAGE_CHARS,
    ) -> None:
        self.max_message_chars = _jsontext.check_max_message_chars(
            max_message_chars, MAX_MESSAGE_CHARS
        )
        self.stream_id = stream_id
        self._wall_clock = wall_clock
        self._next_seq = 0

    def opening(self, session_id: str, metadata: Mapping[str, Any]) -> list[str | bytes]:
        """The client ``initialize``; the session id becomes this stream's id."""
        self.stream_id = session_id
        return [initialize_message(session_id, metadata, now_wall_s=self._wall_clock())]

    def parse(self, message: Message) -> list[Event]:
        envelope = _jsontext.load_object(message, self.max_message_chars, _WORDING)
        kind = envelope["type"]
        if kind not in SERVER_TYPES:
            raise DialectError(
                f"unknown appfoundry message type {short(kind)}; a server sends "
                f"{', '.join(SERVER_TYPES)}"
            )
        sent_wall_s = _optional_wall_s(envelope, "timestamp", f"{kind} envelope timestamp")
        payload = envelope.get("payload")
        if not isinstance(payload, dict):
            raise DialectError(f"{kind} payload {short(payload)} is not a JSON object")
        if kind == "audio_chunk":
            return [self._audio_frame(payload, message, sent_wall_s)]
        if kind == "error":
            return [self._stream_error(payload, message)]
        return [self._stream_opened(payload, message)]

    def _audio_frame(
        self, payload: dict[str, Any], message: Message, sent_wall_s: float | None
    ) -> AudioFrame:
        codec = _format(payload)
        rate = _bounded_int(payload, "rate", RATE_RANGE, default=RATE_RANGE[0])
        channels = _bounded_int(payload, "channels", CHANNEL_RANGE, default=CHANNEL_RANGE[0])
        audio = _audio(payload)
        capture_wall_s = _optional_wall_s(payload, "timestamp", "audio_chunk payload.timestamp")
        if capture_wall_s is None:
            raise DialectError(
                "audio_chunk without payload.timestamp (capture time, epoch seconds); "
                "the frame has no place on the media clock"
            )
        seq = _bounded_int(payload, "seq", (0, MAX_SEQ), default=self._next_seq)
        frame = AudioFrame(
            stream_id=self.stream_id,
            seq=seq,
            media_ms=capture_wall_s * 1000.0,
            codec=codec,
            sample_rate=rate,
            channels=channels,
            payload=audio,
            duration_ms=_duration_ms(audio, codec, rate, channels),
            arrival_s=message.arrival_s,
            capture_wall_s=capture_wall_s,
            sent_wall_s=sent_wall_s,
            received_wall_s=message.received_wall_s,
        )
        self._next_seq = max(self._next_seq, seq + 1)
        return frame

    def _stream_error(self, payload: dict[str, Any], message: Message) -> StreamError:
        code = payload.get("code", "")
        if isinstance(code, bool) or not isinstance(code, (str, int)):
            raise DialectError(f"error payload.code {short(code)} is not a string or int")
        text = payload.get("message", "")
        if not isinstance(text, str):
            raise DialectError(f"error payload.message {short(text)} is not a string")
        return StreamError(self.stream_id, message.arrival_s, str(code), text)

    def _stream_opened(self, payload: dict[str, Any], message: Message) -> StreamOpened:
        session_id = payload.get("sessionId", self.stream_id or None)
        if not isinstance(session_id, str) or not session_id:
            raise DialectError(
                f"initialize payload.sessionId {short(session_id)} is not a non-empty string"
            )
        if session_id != self.stream_id:
            logger.debug("appfoundry session id %r learned from initialize", session_id)
        self.stream_id = session_id
        info = {key: value for key, value in payload.items() if key != "sessionId"}
        return StreamOpened(session_id, message.arrival_s, info)


def initialize_message(session_id: str, metadata: Mapping[str, Any], *, now_wall_s: float) -> str:
    """The client's first message: which session this socket carries."""
    return _envelope(
        "initialize", now_wall_s, {"sessionId": session_id, "metadata": dict(metadata)}
    )


def initialize_ack_message(session_id: str, *, now_wall_s: float) -> str:
    """The server's answer to ``initialize``; parsed as ``StreamOpened``."""
    return _envelope("initialize", now_wall_s, {"sessionId": session_id})


def user_input_message(text: str, user_id: str, *, now_wall_s: float) -> str:
    """A client's text input (the tutorial's ``user_input``)."""
    return _envelope("user_input", now_wall_s, {"text": text, "userId": user_id})


def audio_chunk_message(
    audio: bytes,
    *,
    seq: int | None,
    capture_wall_s: float,
    sent_wall_s: float,
    codec: str = "L16",
    rate: int = 8000,
    channels: int = 1,
) -> str:
    """A server ``audio_chunk``; ``seq=None`` leaves ``seq`` out (the receiver numbers it)."""
    payload: dict[str, Any] = {"audio": _jsontext.b64_text(audio)}
    if seq is not None:
        payload["seq"] = seq
    payload.update(timestamp=capture_wall_s, format=codec, rate=rate, channels=channels)
    return _envelope("audio_chunk", sent_wall_s, payload)


def error_message(code: str | int, message: str, *, now_wall_s: float) -> str:
    """A server ``error``; parsed as ``StreamError`` (the stream may go on)."""
    return _envelope("error", now_wall_s, {"code": code, "message": message})


def _envelope(kind: str, now_wall_s: float, payload: dict[str, Any]) -> str:
    document = {"type": kind, "timestamp": now_wall_s, "payload": payload}
    return _jsontext.dumps(
        document, what=f"appfoundry {kind}", advice="pass JSON values and finite numbers"
    )


def _optional_wall_s(container: dict[str, Any], key: str, label: str) -> float | None:
    if key not in container:
        return None
    value = container[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DialectError(f"{label} {short(value)} is not a number of epoch seconds")
    if not (math.isfinite(value) and 0 <= value <= MAX_WALL_S):
        raise DialectError(
            f"{label}={short(value)} is outside 0..{MAX_WALL_S:.0e} epoch seconds; "
            "check that the sender uses seconds, not milliseconds"
        )
    return float(value)


def _bounded_int(
    payload: dict[str, Any], key: str, bounds: tuple[int, int], *, default: int
) -> int:
    value = payload.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DialectError(f"audio_chunk payload.{key} {short(value)} is not an integer")
    low, high = bounds
    if not low <= value <= high:
        raise DialectError(f"audio_chunk payload.{key}={short(value)} is outside {low}..{high}")
    return value


def _format(payload: dict[str, Any]) -> str:
    codec = payload.get("format", FORMATS[0])
    if codec not in FORMATS:
        raise DialectError(
            f"audio_chunk payload.format {short(codec)} is not one of {', '.join(FORMATS)}"
        )
    return str(codec)


def _audio(payload: dict[str, Any]) -> bytes:
    return _jsontext.decode_audio(
        payload.get("audio"), "audio_chunk payload.audio", empty_hint="a chunk must carry audio"
    )


def _duration_ms(audio: bytes, codec: str, rate: int, channels: int) -> float:
    try:
        return codecs.duration_ms(len(audio), codec, rate, channels)
    except (CodecError, ConfigError) as exc:
        raise DialectError(f"audio_chunk payload.audio: {exc}") from exc

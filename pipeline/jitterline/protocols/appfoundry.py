"""The "appfoundry" dialect: the seed tutorial's JSON stream, with jitterline's conventions.

Every message is a text envelope ``{"type", "timestamp", "payload"}`` with ``timestamp`` in
epoch seconds of the sender's wall clock (docs/protocols.md, "appfoundry"). The client
sends ``initialize`` and ``user_input``; the server answers ``initialize`` with its own and
sends ``audio_chunk`` and ``error``. Binary WebSocket messages are not part of the dialect.

``audio_chunk`` becomes an ``AudioFrame`` whose ``media_ms`` is the capture time
(``payload.timestamp``) times 1000: an epoch-based media clock. Its offset from our clock is
unknown, but the latency window only uses *relative* delay (arrival minus media time, minus
the window minimum), where that constant offset cancels. ``capture_wall_s`` and
``sent_wall_s`` come from the same party's clock, so their difference is server processing
time with no offset at all.

A chunk without ``seq`` gets the highest number seen so far plus one (0 for the first):
"highest" rather than "last" so that a late, reordered frame cannot make the next unnumbered
chunk a duplicate of one already received.

Receiving is strict: anything off the convention becomes one ``Malformed`` event (never
fatal: the dialect has no error reply, and one bad chunk costs one frame) and leaves the
object's state as it was. Serializers are not strict, so the emulator can build
off-convention messages on purpose; they only refuse what JSON cannot carry
(``ConfigError``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import codecs
from ..errors import CodecError, ConfigError, DialectError
from ..frames import AudioFrame, Event, Message, StreamError, StreamOpened, StreamSignal
from . import Role, _jsontext
from ._jsontext import Refused, short

__all__ = [
    "CHANNELS",
    "FORMATS",
    "MAX_MESSAGE_CHARS",
    "TRANSITIONS",
    "AppFoundryDialect",
    "AudioChunk",
    "audio_chunk_message",
    "error_message",
    "initialize_ack_message",
    "initialize_message",
    "user_input_message",
]

logger = logging.getLogger(__name__)

FORMATS = ("L16", "PCMU", "PCMA", "OPUS")
"""Values of ``audio_chunk.payload.format``; "L16" is little-endian (WAV order), "OPUS" one
Opus packet per chunk (RFC 6716; decoded by the ``opus`` plugin at ``rate``)."""

CHANNELS = ("",)
"""``StreamOpened.channels``: one unnamed party (interleaved multichannel audio stays one
frame per chunk)."""

MAX_MESSAGE_CHARS = 1_000_000
"""Default cap on a text message: about 45 s of 8 kHz L16 mono once base64 encoded."""

MAX_SEQ = 2**53
"""Beyond this a float-based sender has already lost integer precision: not a real count."""

MAX_WALL_S = 1e11
"""Epoch seconds up to the year ~5100; epoch *milliseconds* (1.7e12 today) land above it."""

_PACKET_TIMED = ("OPUS",)
"""Formats whose play time is read from each packet, not from its length."""

_ABSENT = object()

RATE_RANGE = (8000, 192000)
CHANNEL_RANGE = (1, 8)

TRANSITIONS: dict[Role, dict[str, dict[str, str]]] = {
    "client": {
        # "idle": no connection_made yet (a replay feeds recorded messages this way).
        "idle": {"initialize": "open", "audio_chunk": "open", "error": "idle"},
        "connecting": {"initialize": "open", "audio_chunk": "open", "error": "connecting"},
        "open": {"initialize": "open", "audio_chunk": "open", "error": "open"},
    },
    "server": {
        "awaiting_initialize": {"initialize": "streaming"},
        # A repeated initialize is answered again: the tutorial's client re-sends it.
        "streaming": {"initialize": "streaming", "user_input": "streaming"},
    },
}
"""Per role: state -> {received message type -> next state}. A type the role can receive
but the state does not list is out of order; a type the role never receives is unknown."""

_INITIAL: dict[Role, str] = {"client": "idle", "server": "awaiting_initialize"}
_RECEIVED_TYPES: dict[Role, tuple[str, ...]] = {
    role: tuple(dict.fromkeys(kind for moves in table.values() for kind in moves))
    for role, table in TRANSITIONS.items()
}
_WORDING = _jsontext.Wording(
    binary_note="the appfoundry dialect is JSON text only",
    size_hint="raise the limit if the sender's chunks are really this large",
    constant_hint="timestamps must be finite",
    noun="envelope",
    type_key="type",
)


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """What one server ``audio_chunk`` carries, for whoever originates audio (the
    emulator, a local endpoint). ``seq=None`` leaves ``seq`` out (the receiver numbers
    it); ``sent_wall_s`` stamps the envelope, so that an emulated server can put its
    processing delay between capture and send."""

    audio: bytes = field(repr=False)
    capture_wall_s: float
    sent_wall_s: float
    seq: int | None = None
    codec: str = "L16"
    rate: int = 8000
    channels: int = 1

    def message(self) -> str:
        return audio_chunk_message(
            self.audio,
            seq=self.seq,
            capture_wall_s=self.capture_wall_s,
            sent_wall_s=self.sent_wall_s,
            codec=self.codec,
            rate=self.rate,
            channels=self.channels,
        )


class AppFoundryDialect:
    """One appfoundry connection's protocol object, in either role.

    ``client``: we dialled out. ``connection_made`` queues ``initialize`` (``session_id``,
    ``metadata``); server messages become events. A reconnect calls ``connection_made``
    again and the stream goes on (``connection_lost`` returns nothing).

    ``server``: the peer dialled us (the emulator, a local endpoint). Each ``initialize``
    is answered with ``initialize`` and opens the stream; ``send_audio`` / ``send_error``
    queue what the server originates. ``session_id`` is the id used when an
    ``initialize`` names none.

    ``wall_clock`` (epoch seconds) stamps the envelopes we originate, since the object
    never reads a clock itself: ``time.time`` live, the scheduler's clock on a replay.
    """

    name = "appfoundry"

    def __init__(
        self,
        *,
        role: Role,
        session_id: str = "",
        metadata: Mapping[str, Any] | None = None,
        wall_clock: Callable[[], float],
        max_message_chars: int = MAX_MESSAGE_CHARS,
    ) -> None:
        self.role: Role = _jsontext.check_role(role, self.name)
        self.max_message_chars = _jsontext.check_max_message_chars(
            max_message_chars, MAX_MESSAGE_CHARS
        )
        self.stream_id = session_id
        self.metadata = dict(metadata or {})
        self.state = _INITIAL[self.role]
        self._wall_clock = wall_clock
        self._outgoing: list[str | bytes] = []
        self._next_seq = 0
        self._ended = False
        self._timing: tuple[str, int, int, int] | None = None
        self._timing_ms = 0.0

    def __repr__(self) -> str:
        return f"AppFoundryDialect(role={self.role!r}, state={self.state!r})"

    # -- the Dialect contract -----------------------------------------------------------

    def connection_made(self, now_s: float) -> None:
        """Client: ``initialize`` goes first, ahead of anything queued but not yet sent
        (a ``user_input`` left over from a dropped connection follows it)."""
        if self.role == "client":
            self.state = "connecting"
            now_wall_s = self._wall_clock()
            self._outgoing.insert(
                0, initialize_message(self.stream_id, self.metadata, now_wall_s=now_wall_s)
            )

    def receive(self, message: Message) -> list[Event]:
        envelope = _jsontext.quick_object(message, self.max_message_chars)
        if envelope is not None:
            frame = self._quick_audio_frame(envelope, message)
            if frame is not None:
                return [frame]
        try:
            return self._receive(message)
        except Refused as exc:
            return [_jsontext.refusal(exc, message, self.stream_id)]

    def data_to_send(self) -> list[str | bytes]:
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def next_deadline_s(self) -> float | None:
        return None  # the dialect has no keep-alive or handshake timeout of its own

    def timer(self, now_s: float) -> list[Event]:
        return []

    def end(self, reason: str, now_s: float) -> None:
        """The dialect has no closing message: ending is closing the socket."""
        self._ended = True

    def connection_lost(self, now_s: float) -> list[Event]:
        """Nothing: a client reconnects and the live stream goes on, and a server cannot
        tell a client that left from one about to come back on another connection."""
        return []

    def close_expected(self) -> bool:
        return self._ended

    # -- what we originate ----------------------------------------------------------------

    def send_user_input(self, text: str, user_id: str) -> None:
        """Client: the tutorial's ``user_input``, after our ``initialize``."""
        self._require("client", "connecting", "open", doing="send user_input")
        self._queue(user_input_message(text, user_id, now_wall_s=self._wall_clock()))

    def send_audio(self, chunk: AudioChunk) -> None:
        """Server: one ``audio_chunk``, once the client's ``initialize`` opened the stream."""
        self._require("server", "streaming", doing="send audio")
        self._queue(chunk.message())

    def send_error(self, code: str | int, text: str) -> None:
        """Server: an in-band ``error`` (the stream may go on); allowed in any state, since
        it may answer a bad ``initialize``."""
        self._require("server", *TRANSITIONS["server"], doing="send an error")
        self._queue(error_message(code, text, now_wall_s=self._wall_clock()))

    def _require(self, role: Role, *states: str, doing: str) -> None:
        """Refuse to originate what the peer would not expect (h11's LocalProtocolError)."""
        if self.role != role:
            raise DialectError(f"an appfoundry {self.role} does not {doing}; only a {role} does")
        if self.state not in states:
            raise DialectError(
                f"cannot {doing} in state {self.state!r}; an appfoundry {role} does that "
                f"in state {' or '.join(states)}"
            )

    def _queue(self, text: str) -> None:
        self._outgoing.append(text)

    # -- receiving ------------------------------------------------------------------------

    def _quick_audio_frame(self, envelope: dict[str, Any], message: Message) -> AudioFrame | None:
        """The usual ``audio_chunk`` on exact-type checks only, or None for ``_receive`` to
        decide (with the stdlib's values and its wording). About a third of the checked
        path's cost: no label, no refusal wording, no registry look-up for the duration.

        Exact types also keep out orjson's floats for integers past 64 bits
        (``quick_object``): none is an int, and none lies in a wall-clock range.
        """
        next_state = TRANSITIONS[self.role][self.state].get("audio_chunk")
        payload = envelope.get("payload")
        if (
            envelope.get("type") != "audio_chunk"
            or next_state is None
            or type(payload) is not dict
        ):
            return None
        sent_wall_s = envelope.get("timestamp", _ABSENT)
        if sent_wall_s is _ABSENT:
            sent_wall_s = None
        elif not (
            (type(sent_wall_s) is float or type(sent_wall_s) is int)
            and 0 <= sent_wall_s <= MAX_WALL_S
        ):
            return None
        codec = payload.get("format", FORMATS[0])
        rate = payload.get("rate", RATE_RANGE[0])
        channels = payload.get("channels", CHANNEL_RANGE[0])
        capture_wall_s = payload.get("timestamp")
        seq = payload.get("seq", self._next_seq)
        if not (
            codec in FORMATS
            and type(rate) is int
            and RATE_RANGE[0] <= rate <= RATE_RANGE[1]
            and type(channels) is int
            and CHANNEL_RANGE[0] <= channels <= CHANNEL_RANGE[1]
            and (type(capture_wall_s) is float or type(capture_wall_s) is int)
            and 0 <= capture_wall_s <= MAX_WALL_S
            and type(seq) is int
            and 0 <= seq <= MAX_SEQ
        ):
            return None
        audio = _jsontext.quick_audio(payload.get("audio"))
        if not audio:
            return None
        duration_ms = self._quick_duration_ms(audio, codec, rate, channels)
        if duration_ms is None:
            return None
        capture_wall_s = float(capture_wall_s)
        # Positional: keywords cost 5 000 instructions of AudioFrame's 24 000.
        frame = AudioFrame(
            self.stream_id,
            seq,
            capture_wall_s * 1000.0,
            codec,
            rate,
            channels,
            audio,
            duration_ms,
            message.arrival_s,
            capture_wall_s,
            None if sent_wall_s is None else float(sent_wall_s),
            message.received_wall_s,
        )
        if seq >= self._next_seq:
            self._next_seq = seq + 1
        self.state = next_state
        return frame

    def _quick_duration_ms(
        self, audio: bytes, codec: str, rate: int, channels: int
    ) -> float | None:
        """``_duration_ms``, or None where it refuses; the play time of a codec timed by
        length is kept for the stream's usual chunk size (a codec look-up and a division
        chain per chunk otherwise: a fifth of a parse)."""
        timing = (codec, rate, channels, len(audio))
        if timing == self._timing:
            return self._timing_ms
        try:
            duration_ms = _duration_ms(audio, codec, rate, channels)
        except Refused:
            return None
        if codec not in _PACKET_TIMED:
            self._timing, self._timing_ms = timing, duration_ms
        return duration_ms

    def _receive(self, message: Message) -> list[Event]:
        envelope = _jsontext.load_object(message, self.max_message_chars, _WORDING)
        kind = envelope["type"]
        next_state = self._next_state(kind)
        sent_wall_s = _optional_wall_s(envelope, "timestamp", f"{kind} envelope timestamp")
        payload = envelope.get("payload")
        if not isinstance(payload, dict):
            raise Refused("payload", f"{kind} payload {short(payload)} is not a JSON object")
        if kind == "audio_chunk":
            events: list[Event] = [self._audio_frame(payload, message, sent_wall_s)]
        elif kind == "error":
            events = [self._stream_error(payload, message)]
        elif kind == "user_input":
            events = [self._user_input(payload, message)]
        else:
            events = [self._stream_opened(payload, message)]
        self.state = next_state
        return events

    def _next_state(self, kind: str) -> str:
        moves = TRANSITIONS[self.role][self.state]
        if kind in moves:
            return moves[kind]
        received = _RECEIVED_TYPES[self.role]
        peer = "server" if self.role == "client" else "client"
        if kind in received:
            raise Refused(
                "out_of_order",
                f"appfoundry {kind} in state {self.state!r}; a {peer} sends initialize first",
            )
        raise Refused(
            "unknown_type",
            f"unknown appfoundry message type {short(kind)}; a {peer} sends {', '.join(received)}",
        )

    def _audio_frame(
        self, payload: dict[str, Any], message: Message, sent_wall_s: float | None
    ) -> AudioFrame:
        codec = _format(payload)
        rate = _bounded_int(payload, "rate", RATE_RANGE, default=RATE_RANGE[0])
        channels = _bounded_int(payload, "channels", CHANNEL_RANGE, default=CHANNEL_RANGE[0])
        audio = _jsontext.decode_audio(
            payload.get("audio"),
            "audio_chunk payload.audio",
            empty_hint="a chunk must carry audio",
        )
        capture_wall_s = _optional_wall_s(payload, "timestamp", "audio_chunk payload.timestamp")
        if capture_wall_s is None:
            raise Refused(
                "timestamp",
                "audio_chunk without payload.timestamp (capture time, epoch seconds); "
                "the frame has no place on the media clock",
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
        if seq >= self._next_seq:
            self._next_seq = seq + 1
        return frame

    def _stream_error(self, payload: dict[str, Any], message: Message) -> StreamError:
        code = payload.get("code", "")
        if isinstance(code, bool) or not isinstance(code, (str, int)):
            raise Refused("error_code", f"error payload.code {short(code)} is not a string or int")
        text = payload.get("message", "")
        if not isinstance(text, str):
            raise Refused("error_message", f"error payload.message {short(text)} is not a string")
        return StreamError(self.stream_id, message.arrival_s, str(code), text)

    def _stream_opened(self, payload: dict[str, Any], message: Message) -> StreamOpened:
        """A server's answer (client role) or a client's ``initialize`` (server role, which
        answers it); the session id it names becomes this stream's id."""
        session_id = payload.get("sessionId", self.stream_id or None)
        if not isinstance(session_id, str) or not session_id:
            raise Refused(
                "session_id",
                f"initialize payload.sessionId {short(session_id)} is not a non-empty string",
            )
        metadata = payload.get("metadata", {})
        if not isinstance(metadata, dict):
            raise Refused(
                "metadata", f"initialize payload.metadata {short(metadata)} is not a JSON object"
            )
        if session_id != self.stream_id:
            logger.debug("appfoundry session id %r learned from initialize", session_id)
        self.stream_id = session_id
        if self.role == "server":
            self._queue(initialize_ack_message(session_id, now_wall_s=self._wall_clock()))
        info = {key: value for key, value in payload.items() if key != "sessionId"}
        return StreamOpened(session_id, message.arrival_s, info, channels=CHANNELS)

    def _user_input(self, payload: dict[str, Any], message: Message) -> StreamSignal:
        for key in ("text", "userId"):
            value = payload.get(key, "")
            if not isinstance(value, str):
                raise Refused(
                    "user_input", f"user_input payload.{key} {short(value)} is not a string"
                )
        return StreamSignal(self.stream_id, message.arrival_s, "user_input", dict(payload))


def initialize_message(session_id: str, metadata: Mapping[str, Any], *, now_wall_s: float) -> str:
    """The client's first message: which session this socket carries."""
    return _envelope(
        "initialize", now_wall_s, {"sessionId": session_id, "metadata": dict(metadata)}
    )


def initialize_ack_message(session_id: str, *, now_wall_s: float) -> str:
    """The server's answer to ``initialize``; the client's ``StreamOpened``."""
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
    """A server ``error``; the client's ``StreamError`` (the stream may go on)."""
    return _envelope("error", now_wall_s, {"code": code, "message": message})


def _envelope(kind: str, now_wall_s: float, payload: dict[str, Any]) -> str:
    document = {"type": kind, "timestamp": now_wall_s, "payload": payload}
    return _jsontext.dumps(
        document, what=f"appfoundry {kind}", advice="pass JSON values and finite numbers"
    )


def _optional_wall_s(container: dict[str, Any], key: str, label: str) -> float | None:
    """Epoch seconds in 0..MAX_WALL_S. The range is checked before any float conversion: a
    JSON integer hundreds of digits long is a legal document, and ``float()`` of it
    overflows."""
    if key not in container:
        return None
    value = container[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused("timestamp", f"{label} {short(value)} is not a number of epoch seconds")
    if (isinstance(value, float) and not math.isfinite(value)) or not 0 <= value <= MAX_WALL_S:
        raise Refused(
            "timestamp",
            f"{label}={short(value)} is outside 0..{MAX_WALL_S:.0e} epoch seconds; "
            "check that the sender uses seconds, not milliseconds",
        )
    return float(value)


def _bounded_int(
    payload: dict[str, Any], key: str, bounds: tuple[int, int], *, default: int
) -> int:
    value = payload.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused(key, f"audio_chunk payload.{key} {short(value)} is not an integer")
    low, high = bounds
    if not low <= value <= high:
        raise Refused(key, f"audio_chunk payload.{key}={short(value)} is outside {low}..{high}")
    return value


def _format(payload: dict[str, Any]) -> str:
    codec = payload.get("format", FORMATS[0])
    if codec not in FORMATS:
        raise Refused(
            "format",
            f"audio_chunk payload.format {short(codec)} is not one of {', '.join(FORMATS)}",
        )
    return str(codec)


def _duration_ms(audio: bytes, codec: str, rate: int, channels: int) -> float:
    try:
        return codecs.payload_duration_ms(audio, codec, rate, channels)
    except (CodecError, ConfigError) as exc:
        raise Refused("audio", f"audio_chunk payload.audio: {exc}") from exc

"""Twilio Media Streams: JSON text messages, µ-law 8 kHz mono audio (docs/protocols.md,
"Twilio Media Streams").

Twilio opens the WebSocket, so our usual role is ``server``; the ``client`` role plays
Twilio toward a server (the local endpoint, load tests). What Twilio sends becomes events:

- ``connected`` -> nothing (a greeting); ``start`` -> ``StreamOpened`` (``stream_id`` =
  ``streamSid``, ``call_id`` = ``callSid``, ``channels`` = the announced tracks we take);
- ``media`` -> ``AudioFrame`` (PCMU, 8000 Hz, mono) with ``stream_id`` = ``streamSid`` and
  ``channel`` = the track, for the tracks asked for; other announced tracks give nothing;
- ``dtmf``, ``mark`` -> ``StreamSignal``; ``stop`` -> ``StreamClosed`` (reason ``"stop"``),
  after which the protocol is done (``close_expected``).

``seq`` is ``chunk - 1``: Twilio numbers each track's chunks from 1, ``AudioFrame.seq``
counts a channel's frames from 0. ``media_ms`` is ``media.timestamp``, Twilio's media clock
in ms since the stream started.

``sequenceNumber``, ``chunk`` and ``timestamp`` are strings on the wire. We also take JSON
integers (a proxy or a test harness may re-encode them), but only plain decimal digits
(no sign, no fraction, at most 16 digits). ``sequenceNumber`` is not read: chunk numbers
already show audio gaps, and the socket is TCP.

Violations. Twilio has no error message a receiver could send back, so a violation is a
``Malformed`` event and, where the connection can no longer carry a usable stream, the end
of it (``fatal=True``, ``close_expected()`` true): that is only a refused ``start`` (bad
``streamSid``, a media format other than µ-law 8 kHz mono, unknown tracks), because Twilio
sends ``start`` once and nothing after it could be attributed or decoded. Everything else
costs one message and the stream goes on: ``media``, ``dtmf``, ``mark`` or ``stop`` before
``start``; a second ``start`` or ``connected`` (the first ``start`` stands); a message after
``stop``; a ``streamSid`` other than the stream's; media of a track ``start`` did not
announce.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .. import codecs
from ..errors import ConfigError, DialectError
from ..frames import AudioFrame, Event, Message, StreamClosed, StreamOpened, StreamSignal
from . import Role, _jsontext
from ._jsontext import Refused, short

__all__ = [
    "CHANNELS",
    "CODEC",
    "MAX_MESSAGE_CHARS",
    "MEDIA_FORMAT",
    "SAMPLE_RATE",
    "TRACKS",
    "TRANSITIONS",
    "TwilioDialect",
    "clear_message",
    "connected_message",
    "dtmf_message",
    "inbound_media_message",
    "mark_message",
    "media_message",
    "start_message",
    "stop_message",
]

CODEC = "PCMU"
SAMPLE_RATE = 8000
CHANNELS = 1
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": SAMPLE_RATE, "channels": CHANNELS}
"""The only format Media Streams sends; a ``start`` announcing another is refused (extra
keys are allowed: Twilio may add some)."""

TRACKS = ("inbound", "outbound")
"""``media.track`` values: the caller's audio and the audio played to the caller."""

MAX_MESSAGE_CHARS = 1_000_000
"""A media message is ~300 chars; the cap only stops a runaway peer."""

MAX_WIRE_INT = 2**53
_WIRE_INT = re.compile(r"[0-9]{1,16}")
_SAMPLES_PER_MS = SAMPLE_RATE // 1000

TRANSITIONS: dict[Role, dict[str, dict[str, str]]] = {
    "server": {
        "connecting": {"connected": "connected", "start": "started"},
        "connected": {"start": "started"},
        "started": {"media": "started", "dtmf": "started", "mark": "started", "stop": "stopped"},
        "stopped": {},
    },
    "client": {
        # connection_made: idle -> streaming; stop(): streaming -> stopped. What the server
        # sent before it saw our stop still arrives afterwards and is taken.
        "idle": {},
        "streaming": {"media": "streaming", "mark": "streaming", "clear": "streaming"},
        "stopped": {"media": "stopped", "mark": "stopped", "clear": "stopped"},
    },
}
"""Per role: state -> {received event -> next state}. An event the role can receive but
the state does not list is out of order; an event the role never receives is unknown."""

_INITIAL: dict[Role, str] = {"client": "idle", "server": "connecting"}
_RECEIVED: dict[Role, tuple[str, ...]] = {
    role: tuple(dict.fromkeys(event for moves in table.values() for event in moves))
    for role, table in TRANSITIONS.items()
}
_WORDING = _jsontext.Wording(
    binary_note="Twilio Media Streams send JSON text only",
    size_hint="raise the limit if the peer is really Twilio",
    noun="message",
    type_key="event",
)


class TwilioDialect:
    """One Media Stream connection's protocol object, in either role.

    ``server``: Twilio connected to us. ``tracks`` selects whose audio becomes frames;
    by default every track ``start`` announces (both of a ``<Start><Stream
    track="both_tracks">``), each its own channel and so its own jitter buffer;
    ``("inbound",)`` keeps only the caller. ``send_media``, ``send_mark`` and
    ``send_clear`` talk back on a bidirectional (``<Connect><Stream>``) stream.

    ``client``: we play Twilio. ``connection_made`` queues ``connected`` and ``start``
    (``stream_sid``, ``call_sid``, ``account_sid``, ``custom_parameters``, announcing
    ``tracks``); ``send_audio`` numbers each track's chunks and stamps its media clock;
    ``send_dtmf``, ``send_mark`` (the echo Twilio sends once a mark's audio has played)
    and ``stop``. The server's ``media``, ``mark`` and ``clear`` become ``StreamSignal``.
    """

    name = "twilio"

    def __init__(
        self,
        *,
        role: Role,
        tracks: Iterable[str] | None = None,
        stream_sid: str = "",
        call_sid: str = "",
        account_sid: str = "",
        custom_parameters: Mapping[str, str] | None = None,
        max_message_chars: int = MAX_MESSAGE_CHARS,
    ) -> None:
        self.role: Role = _jsontext.check_role(role, self.name)
        if tracks is None:
            tracks = TRACKS if self.role == "server" else ("inbound",)
        self.tracks = _check_tracks(tracks)
        self.max_message_chars = _jsontext.check_max_message_chars(
            max_message_chars, MAX_MESSAGE_CHARS
        )
        if self.role == "client" and not stream_sid:
            raise ConfigError(
                "a Twilio client needs stream_sid (Twilio's 'MZ...' id); pass the one "
                "the server should see in start"
            )
        self.stream_id = stream_sid
        self.call_id = call_sid
        self._account_sid = account_sid
        self._custom_parameters = dict(custom_parameters or {})
        self.state = _INITIAL[self.role]
        self._announced: tuple[str, ...] = ()
        self._outgoing: list[str | bytes] = []
        self._sequence = 0
        self._chunks = dict.fromkeys(self.tracks, 0)
        self._samples = dict.fromkeys(self.tracks, 0)
        self._ended = False

    def __repr__(self) -> str:
        return f"TwilioDialect(role={self.role!r}, state={self.state!r})"

    # -- the Dialect contract -----------------------------------------------------------

    def connection_made(self, now_s: float) -> None:
        """Client: Twilio's greeting and ``start``. A Media Stream never reconnects, so a
        second call is refused: a new connection is a new stream and a new object."""
        if self.role == "server":
            return
        if self.state != "idle":
            raise DialectError(
                "a Twilio stream never reconnects; make a new TwilioDialect for a new stream"
            )
        self.state = "streaming"
        self._queue(connected_message())
        self._queue(
            start_message(
                self.stream_id,
                self.call_id,
                account_sid=self._account_sid,
                tracks=self.tracks,
                custom_parameters=self._custom_parameters,
                sequence_number=self._next_sequence(),
            )
        )

    def receive(self, message: Message) -> list[Event]:
        try:
            document = _jsontext.load_object(message, self.max_message_chars, _WORDING)
            event = document["event"]
            next_state = self._next_state(event)
        except Refused as exc:
            return [_jsontext.refusal(exc, message, self.stream_id)]
        try:
            events = self._handle(event, document, message)
        except Refused as exc:
            # A refused start leaves the socket useless; any other refusal costs one message.
            fatal = event == "start"
            self._ended = self._ended or fatal
            return [_jsontext.refusal(exc, message, self.stream_id, fatal=fatal)]
        self.state = next_state
        return events

    def data_to_send(self) -> list[str | bytes]:
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def next_deadline_s(self) -> float | None:
        return None  # Media Streams have no keep-alive or handshake timeout of their own

    def timer(self, now_s: float) -> list[Event]:
        return []

    def end(self, reason: str, now_s: float) -> None:
        """Client: ``stop``. Server: nothing to send (Twilio has no message for it; the
        socket's close ends the stream)."""
        if self.role == "client" and self.state == "streaming":
            self.stop()
        self._ended = True

    def connection_lost(self, now_s: float) -> list[Event]:
        """Server: a started stream without ``stop`` is over, since Twilio never resumes a
        stream on another socket. Client: nothing to report."""
        if self.role == "server" and self.state == "started":
            self.state = "stopped"
            return [StreamClosed(self.stream_id, now_s, "connection lost")]
        return []

    def close_expected(self) -> bool:
        return self._ended or self.state == "stopped"

    # -- what we originate ----------------------------------------------------------------

    def send_media(self, pcmu: bytes) -> None:
        """Server: µ-law 8 kHz mono for Twilio to play to the caller (no file header)."""
        self._require("server", "started", doing="send media")
        _check_audio(pcmu)
        self._queue(media_message(self.stream_id, pcmu))

    def send_mark(self, name: str) -> None:
        """Server: ask Twilio to echo ``name`` once the audio sent before it has played.
        Client: that echo."""
        state = "started" if self.role == "server" else "streaming"
        self._require(self.role, state, doing="send a mark")
        number = self._next_sequence() if self.role == "client" else None
        self._queue(mark_message(self.stream_id, name, sequence_number=number))

    def send_clear(self) -> None:
        """Server: drop the audio Twilio has buffered but not played yet (barge-in)."""
        self._require("server", "started", doing="send clear")
        self._queue(clear_message(self.stream_id))

    def send_audio(self, pcmu: bytes, *, track: str = "inbound") -> None:
        """Client: one ``media`` chunk of ``track``. Chunks count from 1 per track and
        ``timestamp`` is that track's media clock: the ms of audio sent before this chunk."""
        self._require("client", "streaming", doing="send audio")
        if track not in self.tracks:
            raise ConfigError(f"track={track!r} was not announced; this stream has {self.tracks}")
        _check_audio(pcmu)
        self._chunks[track] += 1
        timestamp_ms = self._samples[track] // _SAMPLES_PER_MS
        self._samples[track] += len(pcmu)
        self._queue(
            inbound_media_message(
                self.stream_id,
                self._chunks[track],
                timestamp_ms,
                pcmu,
                self._next_sequence(),
                track=track,
            )
        )

    def send_dtmf(self, digit: str) -> None:
        """Client: a key the caller pressed (bidirectional streams)."""
        self._require("client", "streaming", doing="send dtmf")
        self._queue(dtmf_message(self.stream_id, digit, self._next_sequence()))

    def stop(self) -> None:
        """Client: Twilio's last message; close the socket after it."""
        self._require("client", "streaming", doing="stop")
        self._queue(
            stop_message(
                self.stream_id,
                self.call_id,
                self._next_sequence(),
                account_sid=self._account_sid,
            )
        )
        self.state = "stopped"

    def _require(self, role: Role, state: str, *, doing: str) -> None:
        """Refuse to originate what the peer would not expect (h11's LocalProtocolError)."""
        if self.role != role:
            raise DialectError(f"a Twilio {self.role} does not {doing}; only a {role} does")
        if self.state != state:
            raise DialectError(
                f"cannot {doing} in state {self.state!r}; a Twilio {role} does that in "
                f"state {state!r}"
            )

    def _queue(self, text: str) -> None:
        self._outgoing.append(text)

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    # -- receiving ------------------------------------------------------------------------

    def _next_state(self, event: str) -> str:
        moves = TRANSITIONS[self.role][self.state]
        if event in moves:
            return moves[event]
        received = _RECEIVED[self.role]
        if event in received:
            raise Refused("out_of_order", f"Twilio {event} in state {self.state!r}")
        sender = "Twilio sends" if self.role == "server" else "a server sends Twilio"
        raise Refused(
            "unknown_event", f"unknown Twilio event {short(event)}; {sender} {', '.join(received)}"
        )

    def _handle(self, event: str, document: dict[str, Any], message: Message) -> list[Event]:
        if event == "connected":
            return []
        stream_sid = self._stream_sid(document, event)
        if event == "start":
            return [self._stream_opened(stream_sid, _object(document, event), message)]
        if event == "stop":
            return [StreamClosed(stream_sid, message.arrival_s, "stop")]
        if event == "media" and self.role == "server":
            return self._media(stream_sid, _object(document, event), message)
        return [self._signal(event, document, message)]

    def _stream_sid(self, document: dict[str, Any], event: str) -> str:
        stream_sid = document.get("streamSid")
        if not isinstance(stream_sid, str) or not stream_sid:
            raise Refused(
                "stream_sid", f"{event} streamSid {short(stream_sid)} is not a non-empty string"
            )
        if event != "start" and stream_sid != self.stream_id:
            raise Refused(
                "stream_sid",
                f"{event} streamSid {short(stream_sid)} is not this socket's stream "
                f"{self.stream_id!r}; one socket carries one stream",
            )
        return stream_sid

    def _stream_opened(
        self, stream_sid: str, start: dict[str, Any], message: Message
    ) -> StreamOpened:
        media_format = start.get("mediaFormat", MEDIA_FORMAT)
        _check_media_format(media_format)
        custom = start.get("customParameters", {})
        if not isinstance(custom, dict):
            raise Refused("start", f"start.customParameters {short(custom)} is not a JSON object")
        call_sid = start.get("callSid", "")
        if not isinstance(call_sid, str):
            raise Refused("start", f"start.callSid {short(call_sid)} is not a string")
        announced = _announced_tracks(start.get("tracks", ["inbound"]))
        self.stream_id, self.call_id, self._announced = stream_sid, call_sid, announced
        info = {
            "accountSid": start.get("accountSid"),
            "tracks": list(announced),
            "mediaFormat": media_format,
            "customParameters": custom,
        }
        channels = tuple(track for track in announced if track in self.tracks)
        return StreamOpened(
            stream_sid, message.arrival_s, info, call_id=call_sid, channels=channels
        )

    def _media(self, stream_sid: str, media: dict[str, Any], message: Message) -> list[Event]:
        track = media.get("track", "inbound")
        if track not in TRACKS:
            raise Refused("track", f"media.track {short(track)} is not one of {TRACKS}")
        if track not in self._announced:
            raise Refused(
                "track",
                f"media of track {track!r}, which start did not announce "
                f"(tracks {self._announced})",
            )
        if track not in self.tracks:
            return []
        chunk = _wire_int(media.get("chunk"), "media.chunk", low=1)
        timestamp_ms = _wire_int(media.get("timestamp"), "media.timestamp", low=0)
        payload = _audio(media.get("payload"))
        frame = AudioFrame(
            stream_id=stream_sid,
            seq=chunk - 1,
            media_ms=float(timestamp_ms),
            codec=CODEC,
            sample_rate=SAMPLE_RATE,
            channels=CHANNELS,
            payload=payload,
            duration_ms=codecs.duration_ms(len(payload), CODEC, SAMPLE_RATE, CHANNELS),
            arrival_s=message.arrival_s,
            received_wall_s=message.received_wall_s,
            channel=track,
        )
        return [frame]

    def _signal(self, event: str, document: dict[str, Any], message: Message) -> StreamSignal:
        """``dtmf`` / ``mark`` from Twilio; ``media`` / ``mark`` / ``clear`` from a server."""
        if event == "clear":
            info: dict[str, Any] = {}
        elif event == "media":
            info = {"payload": _audio(_object(document, event).get("payload"))}
        else:
            key = "digit" if event == "dtmf" else "name"
            body = _object(document, event)
            if not isinstance(body.get(key), str):
                raise Refused(event, f"{event}.{key} {short(body.get(key))} is not a string")
            info = dict(body)
        return StreamSignal(self.stream_id, message.arrival_s, event, info)


def _check_tracks(tracks: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(tracks))
    if not chosen or not set(chosen) <= set(TRACKS):
        raise ConfigError(
            f"tracks={chosen!r} must be a non-empty selection of {TRACKS}; "
            "use ('inbound',) for the caller's audio"
        )
    return chosen


def _announced_tracks(tracks: object) -> tuple[str, ...]:
    if not isinstance(tracks, list) or not tracks or not all(t in TRACKS for t in tracks):
        raise Refused("start", f"start.tracks {short(tracks)} is not a list of {TRACKS}")
    return tuple(dict.fromkeys(tracks))


def _check_media_format(media_format: object) -> None:
    if not isinstance(media_format, dict):
        raise Refused("start", f"start.mediaFormat {short(media_format)} is not a JSON object")
    for key, expected in MEDIA_FORMAT.items():
        if media_format.get(key) != expected:
            raise Refused(
                "start",
                f"start.mediaFormat.{key}={short(media_format.get(key))}, expected "
                f"{expected!r}; Media Streams only carry µ-law 8 kHz mono",
            )


def _check_audio(pcmu: bytes) -> None:
    if not pcmu:
        raise ConfigError("pcmu is empty; a media message must carry at least one sample")


def media_message(stream_sid: str, payload: bytes) -> str:
    """Audio for Twilio to play to the caller (bidirectional streams): µ-law 8 kHz mono."""
    return _dumps(
        {
            "event": "media",
            "streamSid": stream_sid,
            "media": {"payload": _jsontext.b64_text(payload)},
        }
    )


def mark_message(stream_sid: str, name: str, *, sequence_number: int | None = None) -> str:
    """A mark: ours asks Twilio to echo ``name`` once the audio sent before it has played
    (or was cleared); Twilio's echo also carries ``sequenceNumber``."""
    document: dict[str, Any] = {"event": "mark", "streamSid": stream_sid}
    if sequence_number is not None:
        document["sequenceNumber"] = str(sequence_number)
    document["mark"] = {"name": name}
    return _dumps(document)


def clear_message(stream_sid: str) -> str:
    """Drop the audio Twilio has buffered but not played yet (barge-in)."""
    return _dumps({"event": "clear", "streamSid": stream_sid})


def connected_message() -> str:
    """Twilio's first message on a new socket."""
    return _dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start_message(
    stream_sid: str,
    call_sid: str,
    *,
    account_sid: str = "",
    tracks: Iterable[str] = ("inbound",),
    custom_parameters: Mapping[str, str] | None = None,
    sequence_number: int = 1,
) -> str:
    """Twilio's ``start``: stream metadata, sent once after ``connected``."""
    start = {
        "accountSid": account_sid,
        "streamSid": stream_sid,
        "callSid": call_sid,
        "tracks": list(tracks),
        "customParameters": dict(custom_parameters or {}),
        "mediaFormat": MEDIA_FORMAT,
    }
    return _dumps(
        {
            "event": "start",
            "sequenceNumber": str(sequence_number),
            "start": start,
            "streamSid": stream_sid,
        }
    )


def inbound_media_message(
    stream_sid: str,
    chunk: int,
    timestamp_ms: int,
    payload: bytes,
    sequence_number: int,
    *,
    track: str = "inbound",
) -> str:
    """Twilio's ``media``: one ~20 ms chunk of a track, numbers as strings as on the wire."""
    media = {
        "track": track,
        "chunk": str(chunk),
        "timestamp": str(timestamp_ms),
        "payload": _jsontext.b64_text(payload),
    }
    return _dumps(
        {
            "event": "media",
            "sequenceNumber": str(sequence_number),
            "media": media,
            "streamSid": stream_sid,
        }
    )


def dtmf_message(stream_sid: str, digit: str, sequence_number: int) -> str:
    """Twilio's ``dtmf`` (bidirectional streams): a key the caller pressed."""
    return _dumps(
        {
            "event": "dtmf",
            "streamSid": stream_sid,
            "sequenceNumber": str(sequence_number),
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    )


def stop_message(
    stream_sid: str, call_sid: str, sequence_number: int, *, account_sid: str = ""
) -> str:
    """Twilio's last message; the socket closes after it."""
    return _dumps(
        {
            "event": "stop",
            "sequenceNumber": str(sequence_number),
            "stop": {"accountSid": account_sid, "callSid": call_sid},
            "streamSid": stream_sid,
        }
    )


def _dumps(document: dict[str, Any]) -> str:
    return _jsontext.dumps(document, what=f"Twilio {document['event']}", advice="pass JSON values")


def _object(document: dict[str, Any], key: str) -> dict[str, Any]:
    value = document.get(key)
    if not isinstance(value, dict):
        raise Refused(key, f"{key} message has {key}={short(value)}, not a JSON object")
    return value


def _wire_int(value: object, where: str, *, low: int) -> int:
    """A Twilio number: a string of decimal digits, or a JSON integer, in low..2**53."""
    if isinstance(value, str) and _WIRE_INT.fullmatch(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise Refused(where, f"{where} {short(value)} is not a decimal integer string")
    if not low <= number <= MAX_WIRE_INT:
        raise Refused(where, f"{where}={short(number)} is outside {low}..{MAX_WIRE_INT}")
    return number


def _audio(text: object) -> bytes:
    return _jsontext.decode_audio(
        text, "media.payload", empty_hint="a media message must carry audio"
    )

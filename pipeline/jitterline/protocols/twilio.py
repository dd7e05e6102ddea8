"""Twilio Media Streams: JSON text messages, µ-law 8 kHz mono audio (PROTOCOLS.md section 2).

Twilio dials us, so ``opening()`` sends nothing. What it sends becomes events:

- ``connected``, ``dtmf`` and ``mark`` carry no audio or lifecycle change: ``[]``;
- ``start`` -> ``StreamOpened`` (``stream_id`` = ``streamSid``; ``info`` keeps ``callSid``,
  ``accountSid``, ``tracks``, ``mediaFormat``, ``customParameters``);
- ``media`` -> ``AudioFrame`` (PCMU, 8000 Hz, mono) for the tracks asked for, ``[]`` for others;
- ``stop`` -> ``StreamClosed`` (reason ``"stop"``).

``seq`` is ``chunk - 1``: Twilio numbers a track's chunks from 1, ``AudioFrame.seq`` counts
frames from 0. ``media_ms`` is ``media.timestamp``, Twilio's media clock in ms since the
stream started. Frames of the ``inbound`` track keep ``streamSid`` as ``stream_id``; other
tracks get ``"<streamSid>/<track>"``, so that two tracks with their own chunk counters never
look like duplicates of each other downstream.

``sequenceNumber``, ``chunk`` and ``timestamp`` are strings on the wire. We also take JSON
integers (a proxy or a test harness may re-encode them), but only plain decimal digits
(no sign, no fraction, at most 16 digits): anything else is a ``DialectError``.
``sequenceNumber`` is not read: chunk numbers already show audio gaps, and the socket is TCP.
A ``start`` announcing a media format other than µ-law 8 kHz mono is refused rather than
decoded as noise.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .. import codecs
from ..errors import ConfigError, DialectError
from ..frames import AudioFrame, Event, Message, StreamClosed, StreamOpened

__all__ = [
    "CHANNELS",
    "CODEC",
    "MAX_MESSAGE_CHARS",
    "MEDIA_FORMAT",
    "SAMPLE_RATE",
    "TRACKS",
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
_IGNORED = ("connected", "dtmf", "mark")
_SHORT = 40


class TwilioDialect:
    """One Media Stream's parser; stateless apart from its options.

    ``tracks`` selects whose audio becomes frames: ``("inbound",)`` (the caller, the
    default) or both tracks of a ``<Start><Stream track="both_tracks">``.
    """

    name = "twilio"

    def __init__(
        self,
        *,
        tracks: Iterable[str] = ("inbound",),
        max_message_chars: int = MAX_MESSAGE_CHARS,
    ) -> None:
        self.tracks = tuple(tracks)
        if not self.tracks or not set(self.tracks) <= set(TRACKS):
            raise ConfigError(
                f"tracks={self.tracks!r} must be a non-empty selection of {TRACKS}; "
                "use ('inbound',) for the caller's audio"
            )
        if (
            not isinstance(max_message_chars, int)
            or isinstance(max_message_chars, bool)
            or max_message_chars <= 0
        ):
            raise ConfigError(
                f"max_message_chars={max_message_chars!r} must be a positive int; "
                f"the default is {MAX_MESSAGE_CHARS}"
            )
        self.max_message_chars = max_message_chars

    def opening(self, session_id: str, metadata: Mapping[str, Any]) -> list[str | bytes]:
        """Nothing: Twilio opens the socket and speaks first (``connected``)."""
        return []

    def parse(self, message: Message) -> list[Event]:
        document = _load(message, self.max_message_chars)
        event = document["event"]
        if event in _IGNORED:
            return []
        if event not in ("start", "media", "stop"):
            raise DialectError(
                f"unknown Twilio event {_short(event)}; Twilio sends connected, start, "
                "media, dtmf, mark and stop"
            )
        stream_sid = document.get("streamSid")
        if not isinstance(stream_sid, str) or not stream_sid:
            raise DialectError(f"{event} streamSid {_short(stream_sid)} is not a non-empty string")
        if event == "start":
            return [_stream_opened(stream_sid, _object(document, event), message)]
        if event == "stop":
            return [StreamClosed(stream_sid, message.arrival_s, "stop")]
        return self._media(stream_sid, _object(document, event), message)

    def _media(self, stream_sid: str, media: dict[str, Any], message: Message) -> list[Event]:
        track = media.get("track", "inbound")
        if not isinstance(track, str):
            raise DialectError(f"media.track {_short(track)} is not a string")
        if track not in self.tracks:
            return []
        chunk = _wire_int(media.get("chunk"), "media.chunk", low=1)
        timestamp_ms = _wire_int(media.get("timestamp"), "media.timestamp", low=0)
        payload = _audio(media.get("payload"))
        frame = AudioFrame(
            stream_id=stream_sid if track == "inbound" else f"{stream_sid}/{track}",
            seq=chunk - 1,
            media_ms=float(timestamp_ms),
            codec=CODEC,
            sample_rate=SAMPLE_RATE,
            channels=CHANNELS,
            payload=payload,
            duration_ms=codecs.duration_ms(len(payload), CODEC, SAMPLE_RATE, CHANNELS),
            arrival_s=message.arrival_s,
            received_wall_s=message.received_wall_s,
        )
        return [frame]


def _stream_opened(stream_sid: str, start: dict[str, Any], message: Message) -> StreamOpened:
    media_format = start.get("mediaFormat", MEDIA_FORMAT)
    _check_media_format(media_format)
    custom = start.get("customParameters", {})
    if not isinstance(custom, dict):
        raise DialectError(f"start.customParameters {_short(custom)} is not a JSON object")
    info = {
        "callSid": start.get("callSid"),
        "accountSid": start.get("accountSid"),
        "tracks": start.get("tracks"),
        "mediaFormat": media_format,
        "customParameters": custom,
    }
    return StreamOpened(stream_sid, message.arrival_s, info)


def _check_media_format(media_format: object) -> None:
    if not isinstance(media_format, dict):
        raise DialectError(f"start.mediaFormat {_short(media_format)} is not a JSON object")
    for key, expected in MEDIA_FORMAT.items():
        if media_format.get(key) != expected:
            raise DialectError(
                f"start.mediaFormat.{key}={_short(media_format.get(key))}, expected "
                f"{expected!r}; Media Streams only carry µ-law 8 kHz mono"
            )


def media_message(stream_sid: str, payload: bytes) -> str:
    """Audio for Twilio to play to the caller (bidirectional streams): µ-law 8 kHz mono."""
    return _dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": _b64(payload)}})


def mark_message(stream_sid: str, name: str) -> str:
    """Ask Twilio to echo ``name`` once the audio sent before it has played (or was cleared)."""
    return _dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


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
        "payload": _b64(payload),
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


def _b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode("ascii")


def _dumps(document: dict[str, Any]) -> str:
    try:
        return json.dumps(document, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"cannot serialize Twilio {document['event']}: {exc}; pass JSON values"
        ) from exc


def _load(message: Message, max_chars: int) -> dict[str, Any]:
    """Decode the JSON message, turning every foreign error into ``DialectError``."""
    data = message.data
    if not isinstance(data, str):
        raise DialectError(
            f"binary message of {len(data)} bytes; Twilio Media Streams send JSON text only"
        )
    if len(data) > max_chars:
        raise DialectError(
            f"text message of {len(data)} chars exceeds max_message_chars={max_chars}; "
            "raise the limit if the peer is really Twilio"
        )
    try:
        document = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise DialectError(f"message is not valid JSON: {_short(str(exc))}") from exc
    if not isinstance(document, dict):
        raise DialectError(f"message is a JSON {type(document).__name__}, not an object")
    if not isinstance(document.get("event"), str):
        raise DialectError(f"message event {_short(document.get('event'))} is not a string")
    return document


def _reject_constant(name: str) -> None:
    raise DialectError(f"JSON constant {name} is not a number")


def _object(document: dict[str, Any], key: str) -> dict[str, Any]:
    value = document.get(key)
    if not isinstance(value, dict):
        raise DialectError(f"{key} message has {key}={_short(value)}, not a JSON object")
    return value


def _wire_int(value: object, where: str, *, low: int) -> int:
    """A Twilio number: a string of decimal digits, or a JSON integer, in low..2**53."""
    if isinstance(value, str) and _WIRE_INT.fullmatch(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise DialectError(f"{where} {_short(value)} is not a decimal integer string")
    if not low <= number <= MAX_WIRE_INT:
        raise DialectError(f"{where}={number} is outside {low}..{MAX_WIRE_INT}")
    return number


def _audio(text: object) -> bytes:
    if not isinstance(text, str) or not text.isascii():
        raise DialectError(f"media.payload {_short(text)} is not a base64 string")
    try:
        audio = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise DialectError(f"media.payload is not strict base64: {exc}") from exc
    if not audio:
        raise DialectError("media.payload is empty; a media message must carry audio")
    return audio


def _short(value: object) -> str:
    """A repr cut to a few dozen chars: error messages name the value, never echo a payload.

    Containers are only described: their repr could be huge or nested deep enough to
    exhaust the recursion limit.
    """
    if isinstance(value, (dict, list)):
        return f"<JSON {'object' if isinstance(value, dict) else 'array'} of {len(value)}>"
    text = repr(value[: _SHORT + 1] if isinstance(value, str) else value)
    return text if len(text) <= _SHORT else text[: _SHORT - 3] + "..."

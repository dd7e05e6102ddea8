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

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .. import codecs
from ..errors import ConfigError, DialectError
from ..frames import AudioFrame, Event, Message, StreamClosed, StreamOpened
from . import _jsontext
from ._jsontext import short

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
_WORDING = _jsontext.Wording(
    binary_note="Twilio Media Streams send JSON text only",
    size_hint="raise the limit if the peer is really Twilio",
    noun="message",
    type_key="event",
)


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
        self.max_message_chars = _jsontext.check_max_message_chars(
            max_message_chars, MAX_MESSAGE_CHARS
        )

    def opening(self, session_id: str, metadata: Mapping[str, Any]) -> list[str | bytes]:
        """Nothing: Twilio opens the socket and speaks first (``connected``)."""
        return []

    def parse(self, message: Message) -> list[Event]:
        document = _jsontext.load_object(message, self.max_message_chars, _WORDING)
        event = document["event"]
        if event in _IGNORED:
            return []
        if event not in ("start", "media", "stop"):
            raise DialectError(
                f"unknown Twilio event {short(event)}; Twilio sends connected, start, "
                "media, dtmf, mark and stop"
            )
        stream_sid = document.get("streamSid")
        if not isinstance(stream_sid, str) or not stream_sid:
            raise DialectError(f"{event} streamSid {short(stream_sid)} is not a non-empty string")
        if event == "start":
            return [_stream_opened(stream_sid, _object(document, event), message)]
        if event == "stop":
            return [StreamClosed(stream_sid, message.arrival_s, "stop")]
        return self._media(stream_sid, _object(document, event), message)

    def _media(self, stream_sid: str, media: dict[str, Any], message: Message) -> list[Event]:
        track = media.get("track", "inbound")
        if not isinstance(track, str):
            raise DialectError(f"media.track {short(track)} is not a string")
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
        raise DialectError(f"start.customParameters {short(custom)} is not a JSON object")
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
        raise DialectError(f"start.mediaFormat {short(media_format)} is not a JSON object")
    for key, expected in MEDIA_FORMAT.items():
        if media_format.get(key) != expected:
            raise DialectError(
                f"start.mediaFormat.{key}={short(media_format.get(key))}, expected "
                f"{expected!r}; Media Streams only carry µ-law 8 kHz mono"
            )


def media_message(stream_sid: str, payload: bytes) -> str:
    """Audio for Twilio to play to the caller (bidirectional streams): µ-law 8 kHz mono."""
    return _dumps(
        {
            "event": "media",
            "streamSid": stream_sid,
            "media": {"payload": _jsontext.b64_text(payload)},
        }
    )


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
        raise DialectError(f"{key} message has {key}={short(value)}, not a JSON object")
    return value


def _wire_int(value: object, where: str, *, low: int) -> int:
    """A Twilio number: a string of decimal digits, or a JSON integer, in low..2**53."""
    if isinstance(value, str) and _WIRE_INT.fullmatch(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise DialectError(f"{where} {short(value)} is not a decimal integer string")
    if not low <= number <= MAX_WIRE_INT:
        raise DialectError(f"{where}={number} is outside {low}..{MAX_WIRE_INT}")
    return number


def _audio(text: object) -> bytes:
    return _jsontext.decode_audio(
        text, "media.payload", empty_hint="a media message must carry audio"
    )

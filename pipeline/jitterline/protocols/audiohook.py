"""Genesys AudioHook protocol version 2 as a sans-I/O state machine, in either role.

Wire facts (docs/protocols.md, "AudioHook"): Genesys is the client; it dials the server and
sends ``open``; the server answers ``opened`` choosing at most one offered media format.
Every text message is an envelope ``{"version": "2", "id": <session id>, "type", "seq",
"parameters"}``; the client adds ``serverseq`` (last server seq seen) and ``position``
(``PT<seconds>S``, audio sent so far), the server adds ``clientseq``. Each side numbers its
own text messages from 1 and the other side requires ``seq == last + 1``: TCP neither loses
nor reorders, so a gap or a duplicate is a bug in the peer and there is no recovery. Audio
is binary messages of raw samples (PCMU: 1 byte, L16: 2 bytes little-endian), interleaved in
the order of the chosen media's ``channels``, at 8 kHz.

A violation becomes one ``Malformed(fatal=True)`` and the answer the reference peers give:
the server sends ``disconnect`` (reason ``error``) and waits for the client's ``close``;
the client sends ``error`` (a 4xx code) then ``close`` (reason ``error``) and waits for
``closed``. After that only the closing message matters: anything else is reported as a
non-fatal ``Malformed`` (kind ``after_error``), since a peer that broke the sequence once
cannot be held to it, and a session already declared broken must still end cleanly.

Legal transitions are tables (``server_table``, ``client_table``), built from the message types the
flavour knows, in h11's style; handlers only produce events and replies. Audio Connector
(``audioconnector.py``) is this class with more message types and different defaults.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from .. import checks, codecs
from ..errors import ConfigError, DialectError
from ..frames import (
    AudioFrame,
    Event,
    Malformed,
    Message,
    Pong,
    StreamClosed,
    StreamError,
    StreamOpened,
    StreamPaused,
    StreamResumed,
    StreamSignal,
)
from . import Role, _jsontext
from ._jsontext import short

__all__ = [
    "AUDIO",
    "CHANNEL_NAMES",
    "CLIENT_MESSAGES",
    "CLIENT_SESSION_TYPES",
    "CLOSE_REASONS",
    "DISCONNECT_REASONS",
    "FORMATS",
    "MAX_MESSAGE_CHARS",
    "NULL_UUID",
    "SAMPLE_RATE",
    "SERVER_MESSAGES",
    "SERVER_SESSION_TYPES",
    "VERSION",
    "AudioHookDialect",
    "Field",
    "MediaOffer",
    "Parameters",
    "State",
    "client_table",
    "format_duration",
    "parse_duration_s",
    "server_table",
]

logger = logging.getLogger(__name__)

VERSION = "2"
SAMPLE_RATE = 8000
FORMATS: Mapping[str, int] = {"PCMU": 1, "L16": 2}
"""Media formats and their bytes per sample (L16 little-endian, as the reference reads it)."""

CHANNEL_NAMES = ("external", "internal")
"""``external``: the customer; ``internal``: the agent."""

MAX_MESSAGE_CHARS = 65535
"""Both reference peers refuse longer text messages; so do we, and we never send one."""

NULL_UUID = "00000000-0000-0000-0000-000000000000"
"""Genesys' connection probe uses it as conversation and participant id."""

CLOSE_REASONS = ("end", "error", "disconnect", "reconnect")
DISCONNECT_REASONS = ("completed", "unauthorized", "error")

AUDIO = "<audio>"
"""The pseudo message type of a binary (audio) message in the transition tables."""

DEFAULT_OPEN_TIMEOUT_S = 10.0
DEFAULT_CLIENT_OPEN_TIMEOUT_S = 5.0
DEFAULT_CLOSE_TIMEOUT_S = 10.0
DEFAULT_PING_DELAY_S = 1.0
DEFAULT_PING_INTERVAL_S = 5.0

State: TypeAlias = Literal["idle", "opening", "open", "ending", "closing", "broken", "closed"]
"""``idle``: client before ``connection_made``. ``opening``: server awaiting ``open``,
client awaiting ``opened``. ``open``: the session runs (paused or not, a flag). ``ending``:
the server sent ``disconnect`` and awaits ``close``; the session still runs. ``closing``: the
client sent ``close`` and awaits ``closed``. ``broken``: a violation, a refusal or a
disconnect before ``opened`` was answered; only the closing message counts. ``closed``."""

MediaOffer: TypeAlias = tuple[str, tuple[str, ...]]
"""(format, channels), e.g. ``("PCMU", ("external", "internal"))``."""

Table: TypeAlias = Mapping[State, Mapping[str, State]]
Handler: TypeAlias = Callable[["AudioHookDialect", str, dict[str, Any], Message], list[Event]]

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DURATION = re.compile(r"PT((?:[0-9]{0,12}\.)?[0-9]{1,12})S")
_ERROR_CODES = {
    "bad_json": 400,
    "oversized": 413,
    "unexpected_binary": 415,
    "pong_timeout": 408,
    "open_timeout": 408,
    "unexpected_type": 409,
}
_WORDING = _jsontext.Wording(
    binary_note="binary messages carry audio",
    size_hint="AudioHook peers never send more",
    noun="message",
    type_key="type",
    constant_hint="AudioHook values are finite",
)


class _Violation(Exception):
    """A rule the peer broke; ``receive`` turns it into the protocol's answer."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Field:
    """One parameter's expected JSON type; ``required`` ones must be present."""

    name: str
    kind: Literal["str", "int", "bool", "object", "array", "duration"]
    required: bool = False


Parameters: TypeAlias = tuple[Field, ...]

CLIENT_MESSAGES: Mapping[str, Parameters] = {
    "open": (
        Field("organizationId", "str", True),
        Field("conversationId", "str", True),
        Field("participant", "object", True),
        Field("media", "array", True),
        Field("language", "str"),
        Field("customConfig", "object"),
    ),
    "close": (Field("reason", "str", True),),
    "ping": (Field("rtt", "duration"),),
    "paused": (),
    "resumed": (Field("start", "duration"), Field("discarded", "duration")),
    "update": (Field("language", "str"),),
    "discarded": (Field("start", "duration", True), Field("discarded", "duration", True)),
    "error": (Field("code", "int", True), Field("message", "str", True)),
}
"""What a client sends, with the parameters we rely on (others pass through)."""

SERVER_MESSAGES: Mapping[str, Parameters] = {
    "opened": (
        Field("media", "array", True),
        Field("startPaused", "bool"),
        Field("discardTo", "duration"),
    ),
    "closed": (),
    "pong": (),
    "pause": (),
    "resume": (),
    "updated": (),
    "event": (Field("entities", "array", True),),
    "disconnect": (Field("reason", "str", True), Field("info", "str")),
    "reconnect": (Field("info", "str"),),
}

CLIENT_SESSION_TYPES = ("ping", "paused", "resumed", "update", "discarded", "error")
SERVER_SESSION_TYPES = ("pong", "pause", "resume", "event", "updated", "reconnect")


def server_table(session_types: Iterable[str]) -> Table:
    """What a server accepts in each state; a type missing from a row is a violation.
    ``session_types`` keep the state; ``AUDIO`` is allowed while the session runs."""
    running = (*session_types, AUDIO)
    return {
        "opening": {"open": "open", "close": "closed"},
        "open": {**dict.fromkeys(running, "open"), "close": "closed"},
        "ending": {**dict.fromkeys(running, "ending"), "close": "closed"},
        "broken": {"close": "closed"},
        "closed": {},
    }


def client_table(session_types: Iterable[str], *, server_audio: bool) -> Table:
    """What a client accepts in each state (binary only when the server sends audio)."""
    running = (*session_types, AUDIO) if server_audio else tuple(session_types)
    return {
        "idle": {},
        "opening": {"opened": "open", "disconnect": "closing", "event": "opening"},
        "open": {**dict.fromkeys(running, "open"), "disconnect": "closing"},
        "closing": {
            **dict.fromkeys(running, "closing"),
            "disconnect": "closing",
            "closed": "closed",
        },
        "broken": {"closed": "closed"},
        "closed": {},
    }


class AudioHookDialect:
    """One AudioHook connection in ``role`` "server" (Genesys dialled us) or "client" (we
    play Genesys: the local endpoint, tests, ``jitterline load``).

    Server options: ``session_id`` (the ``Audiohook-Session-Id`` header; None: learn it
    from the first message), ``organization_id`` (the ``Audiohook-Organization-Id`` header;
    an ``open`` naming another organization is refused with ``disconnect`` reason
    ``unauthorized``), ``formats`` and ``channels`` (the media we accept; the first
    acceptable offer wins), ``open_timeout_s`` (give up when no ``open`` came),
    ``close_timeout_s`` (give up when no ``close`` answered our ``disconnect``).

    Client options: ``session_id``, ``organization_id``, ``conversation_id`` and
    ``participant_id`` (required; the all-zero UUID for both ids makes a connection probe),
    ``participant`` (``ani``, ``aniName``, ``dnis``), ``media`` (offers, in preference
    order), ``open_parameters`` (more ``open`` parameters: ``language``, ``customConfig``),
    ``open_timeout_s`` (5 s), ``ping_delay_s`` (1 s after ``opened``), ``ping_interval_s``
    (5 s; a ping still unanswered when the next is due is a violation), ``close_timeout_s``.
    """

    name: str = "audiohook"
    client_messages: ClassVar[Mapping[str, Parameters]] = CLIENT_MESSAGES
    server_messages: ClassVar[Mapping[str, Parameters]] = SERVER_MESSAGES
    client_session_types: ClassVar[tuple[str, ...]] = CLIENT_SESSION_TYPES
    server_audio: ClassVar[bool] = False
    """Whether the server sends audio to the client (Audio Connector's bot audio)."""
    default_formats: ClassVar[tuple[str, ...]] = ("PCMU", "L16")
    default_channels: ClassVar[tuple[str, ...]] = CHANNEL_NAMES
    default_offers: ClassVar[tuple[MediaOffer, ...]] = (
        ("PCMU", ("external", "internal")),
        ("PCMU", ("external",)),
        ("PCMU", ("internal",)),
    )
    open_info_keys: ClassVar[tuple[str, ...]] = ("language", "customConfig")
    server_audio_channel: ClassVar[str] = "bot"
    """``AudioFrame.channel`` of audio a server sends (client role, when ``server_audio``)."""

    def __init__(
        self,
        *,
        role: Role = "server",
        session_id: str | None = None,
        organization_id: str | None = None,
        conversation_id: str | None = None,
        participant_id: str | None = None,
        participant: Mapping[str, str] | None = None,
        media: Sequence[MediaOffer] | None = None,
        open_parameters: Mapping[str, Any] | None = None,
        formats: Sequence[str] | None = None,
        channels: Sequence[str] | None = None,
        open_timeout_s: float | None = None,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
        ping_delay_s: float = DEFAULT_PING_DELAY_S,
        ping_interval_s: float = DEFAULT_PING_INTERVAL_S,
        max_message_chars: int = MAX_MESSAGE_CHARS,
    ) -> None:
        if role not in ("client", "server"):
            raise ConfigError(f"role={role!r} must be 'client' or 'server'")
        self.role: Role = role
        self.session_id = session_id or ""
        self._learn_id = role == "server" and not session_id
        self.organization_id = organization_id
        self._formats = _check_formats(self.default_formats if formats is None else formats)
        self._channels = _check_channels(self.default_channels if channels is None else channels)
        default_open = (
            DEFAULT_OPEN_TIMEOUT_S if role == "server" else DEFAULT_CLIENT_OPEN_TIMEOUT_S
        )
        self._open_timeout_s = _seconds(
            "open_timeout_s", default_open if open_timeout_s is None else open_timeout_s
        )
        self._close_timeout_s = _seconds("close_timeout_s", close_timeout_s)
        self._ping_delay_s = _seconds("ping_delay_s", ping_delay_s)
        self._ping_interval_s = _seconds("ping_interval_s", ping_interval_s)
        self._max_chars = checks.count("max_message_chars", max_message_chars, low=1)
        self._validators = self.client_messages if role == "server" else self.server_messages
        self._table: Table = (
            server_table(self.client_session_types)
            if role == "server"
            else client_table(SERVER_SESSION_TYPES, server_audio=self.server_audio)
        )
        self._handlers = self._server_handlers() if role == "server" else self._client_handlers()
        self._state: State = "opening" if role == "server" else "idle"
        self._queue: list[str | bytes] = []
        self._seq = 0
        self._peer_seq = 0
        self._last_ack = 0
        self._opened = False
        self._paused = False
        self._start_paused = False
        self._media: tuple[str, tuple[str, ...]] | None = None
        self._audio_messages = 0
        self._received_samples = 0
        self._sent_samples = 0
        self._close_reason = ""
        self._open_deadline_s: float | None = None
        self._close_deadline_s: float | None = None
        self._ping_deadline_s: float | None = None
        self._ping_sent: tuple[int, float] | None = None
        self._rtt_s: float | None = None
        if role == "client":
            self._conversation_id = _required("conversation_id", conversation_id)
            self._participant_id = _required("participant_id", participant_id)
            _required("session_id", session_id)
            _required("organization_id", organization_id)
            self._participant = dict(participant or {})
            self._offers = _check_offers(self.default_offers if media is None else media)
            self._open_parameters = dict(open_parameters or {})

    # -- the Dialect contract -------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def media(self) -> MediaOffer | None:
        """The media ``opened`` chose, once it did."""
        return self._media

    def connection_made(self, now_s: float) -> None:
        """Server: start waiting for ``open``. Client: queue ``open``.

        AudioHook sessions never resume (Genesys opens a new session after a drop), so a
        second call is a programming error, not a reconnect."""
        if self.role == "server":
            self._open_deadline_s = now_s + self._open_timeout_s
            return
        if self._state != "idle":
            raise ConfigError(
                "connection_made called twice; AudioHook sessions do not resume: make a new "
                "dialect with a new session_id for the new connection"
            )
        self._state = "opening"
        self._send("open", self._open_message_parameters())
        self._open_deadline_s = now_s + self._open_timeout_s

    def receive(self, message: Message) -> list[Event]:
        try:
            return self._receive(message)
        except _Violation as violation:
            return [self._violate(violation.kind, violation.detail, message.arrival_s)]

    def data_to_send(self) -> list[str | bytes]:
        queued, self._queue = self._queue, []
        return queued

    def next_deadline_s(self) -> float | None:
        deadlines = [
            deadline
            for deadline in (self._open_deadline_s, self._ping_deadline_s, self._close_deadline_s)
            if deadline is not None
        ]
        return min(deadlines) if deadlines else None

    def timer(self, now_s: float) -> list[Event]:
        events: list[Event] = []
        if self._open_deadline_s is not None and now_s >= self._open_deadline_s:
            self._open_deadline_s = None
            events.extend(self._open_timed_out(now_s))
        if self._ping_deadline_s is not None and now_s >= self._ping_deadline_s:
            self._ping_deadline_s = None
            events.extend(self._ping_due(now_s))
        if self._close_deadline_s is not None and now_s >= self._close_deadline_s:
            self._close_deadline_s = None
            events.extend(self._close_timed_out(now_s))
        return events

    def end(self, reason: str, now_s: float) -> None:
        """Server: ``disconnect`` (reason ``completed`` unless ``reason`` is a disconnect
        reason; any other text goes in ``info``). Client: ``close`` likewise."""
        if self.role == "server":
            self._queue_disconnect(reason, "" if reason in DISCONNECT_REASONS else reason, now_s)
        else:
            self.close(reason if reason in CLOSE_REASONS else "end", now_s)

    def connection_lost(self, now_s: float) -> list[Event]:
        """A dropped AudioHook session never resumes, so an open stream ends here."""
        was_open = self._opened and self._state != "closed"
        self._finish()
        return [StreamClosed(self.session_id, now_s, "connection_lost")] if was_open else []

    def close_expected(self) -> bool:
        return self._state == "closed"

    # -- server role: what the shell may ask -------------------------------------------------

    def pause(self) -> None:
        """Server: ask the client to pause its audio (before ``opened``: start paused).
        Client: pause our own audio and tell the server (``paused``)."""
        if self.role == "client":
            self._set_client_paused(True)
        elif self._state == "opening":
            self._start_paused = True
        elif self._state in ("open", "ending"):
            self._send("pause", {})

    def resume(self) -> None:
        """The reverse of ``pause``."""
        if self.role == "client":
            self._set_client_paused(False)
        elif self._state == "opening":
            self._start_paused = False
        elif self._state in ("open", "ending"):
            self._send("resume", {})

    def refuse(self, now_s: float, info: str = "") -> None:
        """Server: ``disconnect`` reason ``unauthorized`` (the upgrade's signature failed).

        The shell calls it at least 500 ms after the connection was accepted, like the
        reference server, so that a refusal takes the same time whatever failed."""
        self._require("server", "refuse")
        self._queue_disconnect("unauthorized", info, now_s)

    def send_event(self, entities: Sequence[Mapping[str, Any]]) -> bool:
        """Server: an ``event`` message (transcripts, agent assist, bot turns). False when
        the session does not run (not opened yet, or over)."""
        self._require("server", "send_event")
        if self._state not in ("open", "ending"):
            return False
        self._send("event", {"entities": [dict(entity) for entity in entities]})
        return True

    # -- client role: what the shell may ask -------------------------------------------------

    def send_audio(self, audio: bytes | npt.ArrayLike) -> bool:
        """Client: one audio message, interleaved in the chosen media's channel order.

        ``audio`` is the wire bytes, or int16 samples (1-D interleaved, or one column per
        channel) that we encode. False (nothing sent) unless the session runs unpaused."""
        self._require("client", "send_audio")
        if self._media is None or self._paused or self._state != "open":
            return False
        media_format, channels = self._media
        payload = audio if isinstance(audio, bytes) else _encode(audio, media_format)
        frame_bytes = FORMATS[media_format] * len(channels)
        if not payload or len(payload) % frame_bytes:
            raise ConfigError(
                f"audio of {len(payload)} bytes is not a positive multiple of {frame_bytes} "
                f"bytes ({media_format}, {len(channels)} channel(s)); send whole samples"
            )
        self._queue.append(payload)
        self._sent_samples += len(payload) // frame_bytes
        return True

    def close(self, reason: str, now_s: float) -> None:
        """Client: ``close`` with ``reason`` (end, error, disconnect, reconnect); ``closed``
        is awaited for ``close_timeout_s`` after ``now_s``."""
        self._require("client", "close")
        if reason not in CLOSE_REASONS:
            raise ConfigError(f"close reason {reason!r} must be one of {CLOSE_REASONS}")
        if self._state in ("opening", "open"):
            self._send("close", {"reason": reason})
            self._close_reason = self._close_reason or reason
            self._enter_closing("closing", now_s)

    # -- receiving ------------------------------------------------------------------------

    def _receive(self, message: Message) -> list[Event]:
        if self._state == "closed":
            raise _Violation("after_close", f"{message.kind} message after the session closed")
        if self._state == "broken":
            return self._receive_when_broken(message)
        if isinstance(message.data, bytes):
            return self._receive_audio(message.data, message)
        document = self._load(message)
        kind = document["type"]
        self._check_sequence(document)
        if kind not in self._validators:
            raise _Violation("unknown_type", f"unknown message type {short(kind)}")
        row = self._table[self._state]
        if kind not in row:
            raise _Violation("unexpected_type", f"{kind} in state {self._state}")
        parameters = document["parameters"]
        _check_parameters(kind, parameters, self._validators[kind])
        previous = self._state
        events = self._handlers[kind](self, kind, parameters, message)
        if self._state == previous:
            self._state = row[kind]
        if self._state == "closed":
            self._finish()
        return events

    def _load(self, message: Message) -> dict[str, Any]:
        text = message.data
        if len(text) > self._max_chars:
            raise _Violation(
                "oversized", f"text message of {len(text)} chars exceeds {self._max_chars}"
            )
        try:
            document = _jsontext.load_object(message, self._max_chars, _WORDING)
        except DialectError as exc:
            raise _Violation("bad_json", str(exc)) from None
        _check_envelope(document, peer="client" if self.role == "server" else "server")
        return document

    def _check_sequence(self, document: Mapping[str, Any]) -> None:
        """seq == last + 1; the peer's view of our seq never ahead of it; the session id."""
        seq = document["seq"]
        if seq != self._peer_seq + 1:
            kind = "duplicate_seq" if seq <= self._peer_seq else "seq_gap"
            raise _Violation(
                kind, f"seq {seq} after {self._peer_seq}; expected {self._peer_seq + 1}"
            )
        self._peer_seq = seq
        ours = document["serverseq" if self.role == "server" else "clientseq"]
        self._last_ack = ours
        if ours > self._seq:
            raise _Violation("bad_ack", f"acknowledges our seq {ours}, we sent {self._seq}")
        session_id = document["id"]
        if self._learn_id:
            if not _UUID.fullmatch(session_id):
                raise _Violation("wrong_id", f"session id {short(session_id)} is not a UUID")
            self.session_id, self._learn_id = session_id, False
        elif session_id != self.session_id:
            raise _Violation("wrong_id", f"id {short(session_id)} is not this session's id")

    def _receive_when_broken(self, message: Message) -> list[Event]:
        """After a violation or a refusal only the closing message counts; it is read
        without sequence checks, since the peer may already be out of step."""
        closing = "close" if self.role == "server" else "closed"
        document = _lenient_load(message.data, self._max_chars)
        if document is None or document.get("type") != closing:
            return [
                Malformed(
                    "after_error",
                    f"{message.kind} message ignored while the session ends",
                    message.arrival_s,
                    self.session_id,
                )
            ]
        seq = document.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool) and seq > self._peer_seq:
            self._peer_seq = seq
        if self.role == "server":
            self._send("closed", {})
        was_open = self._opened
        self._finish()
        return [StreamClosed(self.session_id, message.arrival_s, "error")] if was_open else []

    def _receive_audio(self, data: bytes, message: Message) -> list[Event]:
        if AUDIO not in self._table[self._state]:
            kind = "unexpected_binary" if self.role == "client" else "audio_before_open"
            raise _Violation(kind, f"binary message of {len(data)} bytes in state {self._state}")
        if self._paused and self.role == "server":
            raise _Violation("audio_while_paused", f"{len(data)} bytes of audio while paused")
        if self._media is None or not self._media[1]:
            raise _Violation("audio_without_media", "audio although no media was chosen")
        media_format, channels = self._media
        if self.role == "client":
            channels = (self.server_audio_channel,)
        if not data:
            detail = "binary message of 0 bytes"
            return [Malformed("empty_audio", detail, message.arrival_s, self.session_id)]
        frame_bytes = FORMATS[media_format] * len(channels)
        if len(data) % frame_bytes:
            raise _Violation(
                "bad_audio_length",
                f"{len(data)} bytes is not a multiple of {frame_bytes} "
                f"({media_format}, {len(channels)} channel(s))",
            )
        frames = self._split_audio(data, media_format, channels, message)
        self._audio_messages += 1
        self._received_samples += len(data) // frame_bytes
        return frames

    def _split_audio(
        self, data: bytes, media_format: str, channels: tuple[str, ...], message: Message
    ) -> list[Event]:
        """One mono frame per channel: the wire interleaves samples in channel order."""
        width = FORMATS[media_format]
        rows = np.frombuffer(data, dtype=f"V{width}").reshape(-1, len(channels))
        samples = rows.shape[0]
        return [
            AudioFrame(
                stream_id=self.session_id,
                seq=self._audio_messages,
                media_ms=self._received_samples / (SAMPLE_RATE / 1000),
                codec=media_format,
                sample_rate=SAMPLE_RATE,
                channels=1,
                payload=rows[:, index].tobytes(),
                duration_ms=samples / (SAMPLE_RATE / 1000),
                arrival_s=message.arrival_s,
                received_wall_s=message.received_wall_s,
                channel=channel,
            )
            for index, channel in enumerate(channels)
        ]

    def _violate(self, kind: str, detail: str, arrival_s: float) -> Malformed:
        """One fatal ``Malformed`` and the prescribed answer; see the module docstring."""
        logger.warning(
            "%s %s session %s: %s: %s", self.name, self.role, self.session_id, kind, detail
        )
        if self._state == "closed":
            return Malformed(kind, detail, arrival_s, self.session_id, fatal=True)
        if self.role == "server":
            self._send("disconnect", {"reason": "error", "info": f"{kind}: {detail}"[:500]})
        else:
            self._send("error", {"code": _ERROR_CODES.get(kind, 400), "message": kind})
            self._send("close", {"reason": "error"})
        self._enter_closing("broken", arrival_s)
        return Malformed(kind, detail, arrival_s, self.session_id, fatal=True)

    # -- server handlers ----------------------------------------------------------------------

    @classmethod
    def _server_handlers(cls) -> dict[str, Handler]:
        handlers: dict[str, Handler] = dict.fromkeys(cls.client_messages, cls._on_signal)
        handlers.update(
            open=cls._on_open,
            close=cls._on_close,
            ping=cls._on_ping,
            paused=cls._on_paused,
            resumed=cls._on_resumed,
            update=cls._on_update,
            error=cls._on_error,
        )
        return handlers

    def _on_open(self, kind: str, parameters: dict[str, Any], message: Message) -> list[Event]:
        participant = parameters["participant"]
        participant_id = participant.get("id")
        if not isinstance(participant_id, str):
            raise _Violation("bad_parameters", "open participant.id is not a string")
        organization = parameters["organizationId"]
        self._open_deadline_s = None
        if self.organization_id is not None and organization != self.organization_id:
            self._queue_disconnect(
                "unauthorized",
                "organizationId differs from the upgrade request",
                message.arrival_s,
            )
            detail = f"open organizationId {short(organization)} is not the upgrade's"
            return [Malformed("unauthorized", detail, message.arrival_s, self.session_id, True)]
        self._media = self._choose(parameters["media"])
        opened: dict[str, Any] = {"media": [] if self._media is None else [_offer(self._media)]}
        if self._start_paused:
            opened["startPaused"] = True
            self._paused = True
        self._send("opened", opened)
        self._opened = True
        conversation = parameters["conversationId"]
        events: list[Event] = [
            StreamOpened(
                stream_id=self.session_id,
                arrival_s=message.arrival_s,
                info=self._open_info(parameters, participant),
                call_id=conversation,
                participant_id=participant_id,
                channels=() if self._media is None else self._media[1],
                probe=conversation == NULL_UUID and participant_id == NULL_UUID,
            )
        ]
        if self._paused:
            events.append(StreamPaused(self.session_id, message.arrival_s))
        return events

    def _open_info(
        self, parameters: Mapping[str, Any], participant: Mapping[str, Any]
    ) -> dict[str, Any]:
        info: dict[str, Any] = {"organizationId": parameters["organizationId"]}
        info.update(
            {key: participant[key] for key in ("ani", "aniName", "dnis") if key in participant}
        )
        info.update({key: parameters[key] for key in self.open_info_keys if key in parameters})
        info["media"] = None if self._media is None else _offer(self._media)
        return info

    def _choose(self, offers: list[Any]) -> MediaOffer | None:
        """The first offer we can take. Offers we cannot read are skipped, not refused, so
        that a format Genesys adds later does not break sessions."""
        for offer in offers:
            if not isinstance(offer, dict) or offer.get("type", "audio") != "audio":
                continue
            media_format, channels = offer.get("format"), offer.get("channels")
            if media_format not in self._formats or offer.get("rate") != SAMPLE_RATE:
                continue
            if (
                isinstance(channels, list)
                and 1 <= len(channels) <= 2
                and len(set(map(str, channels))) == len(channels)
                and all(channel in self._channels for channel in channels)
            ):
                return str(media_format), tuple(channels)
        return None

    def _on_close(self, kind: str, parameters: dict[str, Any], message: Message) -> list[Event]:
        self._send("closed", {})
        if not self._opened:
            return []
        return [StreamClosed(self.session_id, message.arrival_s, parameters["reason"])]

    def _on_ping(self, kind: str, parameters: dict[str, Any], message: Message) -> list[Event]:
        self._send("pong", {})
        rtt = parameters.get("rtt")
        rtt_ms = None if rtt is None else parse_duration_s(rtt) * 1000.0
        return [Pong(self.session_id, message.arrival_s, rtt_ms)]

    def _on_paused(self, kind: str, parameters: dict[str, Any], message: Message) -> list[Event]:
        """Idempotent: a second ``paused`` (answering our ``pause`` while already paused)
        changes nothing."""
        if self._paused:
            return []
        self._paused = True
        return [StreamPaused(self.session_id, message.arrival_s)]

    def _on_resumed(self, kind: str, parameters: dict[str, Any], message: Message) -> list[Event]:
        if not self._paused:
            return []
        self._paused = False
        return [StreamResumed(self.session_id, message.arrival_s)]

    def _on_update(self, kind: str, parameters: dict[str, Any], message: Message) -> list[Event]:
        self._send("updated", {})
        return self._on_signal(kind, parameters, message)

    def _on_signal(self, kind: str, parameters: dict[str, Any], message: Message) -> list[Event]:
        return [StreamSignal(self.session_id, message.arrival_s, kind, dict(parameters))]

    def _on_error(self, kind: str, parameters: dict[str, Any], message: Message) -> list[Event]:
        code, text = str(parameters["code"]), parameters["message"]
        return [StreamError(self.session_id, message.arrival_s, code, text)]

    # -- client handlers ----------------------------------------------------------------------

    @classmethod
    def _client_handlers(cls) -> dict[str, Handler]:
        handlers: dict[str, Handler] = dict.fromkeys(cls.server_messages, cls._on_signal)
        handlers.update(
            opened=cls._on_opened,
            closed=cls._on_closed,
            pong=cls._on_pong,
            pause=cls._on_pause_request,
            resume=cls._on_resume_request,
            event=cls._on_event,
            disconnect=cls._on_disconnect,
        )
        return handlers

    def _on_opened(self, kind: str, parameters: dict[str, Any], message: Message) -> list[Event]:
        chosen = parameters["media"]
        if len(chosen) > 1:
            raise _Violation("bad_parameters", f"opened chose {len(chosen)} media, at most 1")
        media = _read_offer(chosen[0]) if chosen else None
        if chosen and media not in self._offers:
            raise _Violation("media_not_offered", f"opened chose {short(chosen[0])}")
        self._media = media
        self._opened = True
        self._open_deadline_s = None
        self._ping_deadline_s = message.arrival_s + self._ping_delay_s
        events: list[Event] = [
            StreamOpened(
                stream_id=self.session_id,
                arrival_s=message.arrival_s,
                info={**parameters, "media": None if media is None else _offer(media)},
                call_id=self._conversation_id,
                participant_id=self._participant_id,
                channels=() if media is None else media[1],
                probe=self._conversation_id == NULL_UUID and self._participant_id == NULL_UUID,
            )
        ]
        if parameters.get("startPaused") is True:
            self._paused = True
            events.append(StreamPaused(self.session_id, message.arrival_s))
        return events

    def _on_closed(self, kind: str, parameters: dict[str, Any], message: Message) -> list[Event]:
        if not self._opened:
            return []
        return [StreamClosed(self.session_id, message.arrival_s, self._close_reason or "end")]

    def _on_pong(self, kind: str, parameters: dict[str, Any], message: Message) -> list[Event]:
        """A pong answers our one outstanding ping (its ``clientseq`` is the ping's seq);
        the RTT is measured on our own monotonic clock."""
        if self._ping_sent is None:
            raise _Violation("unexpected_pong", "pong without an outstanding ping")
        ping_seq, sent_s = self._ping_sent
        if self._last_ack != ping_seq:
            raise _Violation(
                "pong_mismatch", f"pong clientseq {self._last_ack}, ping seq {ping_seq}"
            )
        self._ping_sent = None
        self._rtt_s = max(0.0, message.arrival_s - sent_s)
        return [Pong(self.session_id, message.arrival_s, self._rtt_s * 1000.0)]

    def _on_pause_request(
        self, kind: str, parameters: dict[str, Any], message: Message
    ) -> list[Event]:
        """The server asks; we answer ``paused`` even when already paused (the reference
        server treats ``pause`` as idempotent and interrogating)."""
        if self._state != "open":
            return []
        return self._set_client_paused(True, message.arrival_s)

    def _on_resume_request(
        self, kind: str, parameters: dict[str, Any], message: Message
    ) -> list[Event]:
        if self._state != "open":
            return []
        return self._set_client_paused(False, message.arrival_s)

    def _on_event(self, kind: str, parameters: dict[str, Any], message: Message) -> list[Event]:
        """One ``StreamSignal`` per entity, named by the entity type (``transcript``,
        ``barge_in``, ``bot_turn_response``)."""
        entities = parameters["entities"]
        if not all(isinstance(e, dict) and isinstance(e.get("type"), str) for e in entities):
            raise _Violation("bad_parameters", "event entities must be objects with a type")
        return [
            StreamSignal(self.session_id, message.arrival_s, e["type"], {"data": e.get("data")})
            for e in entities
        ]

    def _on_disconnect(
        self, kind: str, parameters: dict[str, Any], message: Message
    ) -> list[Event]:
        """Answer with ``close`` reason ``disconnect``; the parameters (reason, info, Audio
        Connector's ``outputVariables``) reach the shell as a ``StreamSignal``."""
        if self._state in ("opening", "open"):
            self._close_reason = str(parameters["reason"])
            self._send("close", {"reason": "disconnect"})
            self._enter_closing("closing", message.arrival_s)
        return self._on_signal(kind, parameters, message)

    # -- timers -----------------------------------------------------------------------------

    def _open_timed_out(self, now_s: float) -> list[Event]:
        if self._state != "opening":
            return []
        if self.role == "client":
            return [self._violate("open_timeout", "no opened within the open timeout", now_s)]
        self._finish()
        detail = f"no open within {self._open_timeout_s:g} s"
        return [Malformed("open_timeout", detail, now_s, self.session_id, fatal=True)]

    def _ping_due(self, now_s: float) -> list[Event]:
        if self._state != "open":
            return []
        if self._ping_sent is not None:
            return [self._violate("pong_timeout", "no pong before the next ping was due", now_s)]
        parameters = {} if self._rtt_s is None else {"rtt": format_duration(self._rtt_s)}
        self._send("ping", parameters)
        self._ping_sent = (self._seq, now_s)
        self._ping_deadline_s = now_s + self._ping_interval_s
        return []

    def _close_timed_out(self, now_s: float) -> list[Event]:
        """The peer never finished the close handshake: we give up on it."""
        if self._state not in ("ending", "closing", "broken"):
            return []
        was_open = self._opened
        self._finish()
        if was_open:
            return [StreamClosed(self.session_id, now_s, "close_timeout")]
        detail = f"no close handshake within {self._close_timeout_s:g} s"
        return [Malformed("close_timeout", detail, now_s, self.session_id, fatal=True)]

    # -- helpers --------------------------------------------------------------------------

    def _send(self, kind: str, parameters: dict[str, Any]) -> None:
        self._seq += 1
        document: dict[str, Any] = {
            "version": VERSION,
            "id": self.session_id,
            "type": kind,
            "seq": self._seq,
        }
        if self.role == "server":
            document["clientseq"] = self._peer_seq
        else:
            document["serverseq"] = self._peer_seq
            document["position"] = format_duration(self._sent_samples / SAMPLE_RATE)
        document["parameters"] = parameters
        text = _jsontext.dumps(document, what=f"{self.name} {kind}", advice="pass JSON values")
        if len(text) > MAX_MESSAGE_CHARS:
            self._seq -= 1
            raise ConfigError(
                f"{kind} message of {len(text)} chars exceeds {MAX_MESSAGE_CHARS}, which "
                "AudioHook peers refuse; send less per message"
            )
        self._queue.append(text)

    def _queue_disconnect(
        self, reason: str, info: str, now_s: float, extra: Mapping[str, Any] | None = None
    ) -> None:
        """Server: ``disconnect`` and wait for ``close``. A ``completed`` disconnect of a
        running session keeps it running (audio in flight still counts); any other ends it.
        A second ``completed`` while one is pending says nothing new and is not sent."""
        wire_reason = reason if reason in DISCONNECT_REASONS else "completed"
        if self._state not in ("opening", "open", "ending") or (
            self._state == "ending" and wire_reason == "completed"
        ):
            return
        parameters: dict[str, Any] = {"reason": wire_reason}
        if info:
            parameters["info"] = info
        parameters.update(extra or {})
        self._send("disconnect", parameters)
        running = self._state in ("open", "ending") and wire_reason == "completed"
        self._enter_closing("ending" if running else "broken", now_s)

    def _enter_closing(self, state: State, now_s: float) -> None:
        self._state = state
        self._open_deadline_s = self._ping_deadline_s = None
        if self._close_deadline_s is None:
            self._close_deadline_s = now_s + self._close_timeout_s

    def _finish(self) -> None:
        self._state = "closed"
        self._open_deadline_s = self._ping_deadline_s = self._close_deadline_s = None

    def _set_client_paused(self, paused: bool, arrival_s: float | None = None) -> list[Event]:
        """Tell the server (``paused`` / ``resumed``); an event only when the state
        changes and a server asked (our own pause is the shell's decision, it knows)."""
        if self._state != "open":
            return []
        changed = paused != self._paused
        self._paused = paused
        if paused:
            self._send("paused", {})
        else:
            position = format_duration(self._sent_samples / SAMPLE_RATE)
            self._send("resumed", {"start": position, "discarded": "PT0S"})
        if not changed or arrival_s is None:
            return []
        event = StreamPaused if paused else StreamResumed
        return [event(self.session_id, arrival_s)]

    def _open_message_parameters(self) -> dict[str, Any]:
        participant = {"ani": "", "aniName": "", "dnis": "", **self._participant}
        participant["id"] = self._participant_id
        return {
            "organizationId": self.organization_id,
            "conversationId": self._conversation_id,
            "participant": participant,
            "media": [_offer(offer) for offer in self._offers],
            **self._open_parameters,
        }

    def _require(self, role: Role, method: str) -> None:
        if self.role != role:
            raise ConfigError(f"{self.name} {method}() is for the {role} role, not {self.role}")


def _check_envelope(document: Mapping[str, Any], *, peer: Literal["client", "server"]) -> None:
    """The fields every message of ``peer`` has; the reference peers check the same."""
    if document.get("version") != VERSION:
        raise _Violation("bad_envelope", f"version {short(document.get('version'))}, not '2'")
    if not isinstance(document.get("id"), str):
        raise _Violation("bad_envelope", f"id {short(document.get('id'))} is not a string")
    if not isinstance(document.get("parameters"), dict):
        raise _Violation("bad_envelope", "parameters is not a JSON object")
    ack = "serverseq" if peer == "client" else "clientseq"
    for key in ("seq", ack):
        if not _is_count(document.get(key)):
            raise _Violation("bad_envelope", f"{key} {short(document.get(key))} is not a count")
    if peer == "client" and not _is_duration(document.get("position")):
        raise _Violation(
            "bad_envelope", f"position {short(document.get('position'))} is not PT<s>S"
        )


def _check_parameters(kind: str, parameters: Mapping[str, Any], fields: Parameters) -> None:
    for field in fields:
        value = parameters.get(field.name)
        if value is None and field.name not in parameters:
            if field.required:
                raise _Violation("bad_parameters", f"{kind} lacks parameter {field.name}")
            continue
        if not _FIELD_CHECKS[field.kind](value):
            raise _Violation(
                "bad_parameters", f"{kind} {field.name} {short(value)} is not a {field.kind}"
            )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def _is_duration(value: object) -> bool:
    return isinstance(value, str) and _DURATION.fullmatch(value) is not None


_FIELD_CHECKS: Mapping[str, Callable[[object], bool]] = {
    "str": lambda value: isinstance(value, str),
    "int": _is_count,
    "bool": lambda value: isinstance(value, bool),
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "duration": _is_duration,
}


def _lenient_load(data: str | bytes, max_chars: int) -> dict[str, Any] | None:
    if not isinstance(data, str) or len(data) > max_chars:
        return None
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def format_duration(seconds: float) -> str:
    """``PT<seconds>S`` with at most 6 decimals (8 kHz positions are exact to 125 µs)."""
    micros = round(seconds * 1_000_000)
    whole, fraction = divmod(micros, 1_000_000)
    text = f"{whole}.{fraction:06d}".rstrip("0").rstrip(".")
    return f"PT{text}S"


def parse_duration_s(text: str) -> float:
    """Seconds of a ``PT<seconds>S`` duration; ``DialectError`` for anything else."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise DialectError(f"duration {short(text)} is not PT<seconds>S")
    return float(match.group(1))


def _offer(media: MediaOffer) -> dict[str, Any]:
    media_format, channels = media
    return {
        "type": "audio",
        "format": media_format,
        "channels": list(channels),
        "rate": SAMPLE_RATE,
    }


def _read_offer(entry: object) -> MediaOffer | None:
    if not isinstance(entry, dict):
        return None
    channels = entry.get("channels")
    if not isinstance(channels, list) or entry.get("rate") != SAMPLE_RATE:
        return None
    return str(entry.get("format")), tuple(str(channel) for channel in channels)


def _encode(samples: npt.ArrayLike, media_format: str) -> bytes:
    """int16 samples (interleaved, or one column per channel) in the wire format."""
    array = np.asarray(samples)
    if array.dtype != np.int16:
        raise ConfigError(f"audio samples of dtype {array.dtype} must be int16 or wire bytes")
    return codecs.encode(array.reshape(-1), media_format)


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(formats)
    if not chosen or not set(chosen) <= set(FORMATS):
        raise ConfigError(f"formats={chosen!r} must be a non-empty selection of {tuple(FORMATS)}")
    return chosen


def _check_channels(channels: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(channels)
    if not chosen or not set(chosen) <= set(CHANNEL_NAMES):
        raise ConfigError(f"channels={chosen!r} must be a non-empty selection of {CHANNEL_NAMES}")
    return chosen


def _check_offers(offers: Sequence[MediaOffer]) -> tuple[MediaOffer, ...]:
    checked: list[MediaOffer] = []
    for media_format, channels in offers:
        _check_formats((media_format,))
        names = _check_channels(channels)
        if len(set(names)) != len(names) or len(names) > 2:
            raise ConfigError(f"media offer channels {names!r} must be 1 or 2 distinct names")
        checked.append((media_format, names))
    if not checked:
        raise ConfigError("media needs at least one offer, e.g. ('PCMU', ('external',))")
    return tuple(checked)


def _seconds(name: str, value: float) -> float:
    return checks.number(name, value, low=0.0, above=True, unit="s")


def _required(name: str, value: str | None) -> str:
    if not value:
        raise ConfigError(f"{name} is required in the client role; pass the id Genesys would send")
    return value

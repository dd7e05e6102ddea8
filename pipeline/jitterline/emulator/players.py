"""Players: the other side of the inbound protocols, for demos, tests and load tests.

A player dials a server as Genesys (AudioHook, Audio Connector) or Twilio (Media Streams)
would and plays one session: the upgrade with the headers the platform sends, the opening
handshake, audio in real time, pings, an optional pause, and the protocol's own close. It
reports what it sent, per channel (frames, their numbers, the exact bytes), and what the
server answered (opened, refused with an HTTP status, disconnect reason, errors, pong RTTs,
the audio it sent back).

The split follows the rest of jitterline (docs/protocols.md):

- the protocol objects in ``client`` role write every message and check every answer;
- ``SendPlan`` (sans-I/O) decides, through the emulator's seeded ``ImpairmentModel``,
  when each captured frame leaves and whether it is lost or duplicated;
- ``Outbox`` (sans-I/O) releases queued messages in order at their due times;
- ``Playout`` (sans-I/O) plays the server's audio back as the platform would: in real
  time from its arrival, so a Twilio ``mark`` is echoed once the audio before it has
  played (at once when a ``clear`` dropped it) and Audio Connector's ``playback_started``
  / ``playback_completed`` bracket each stretch of bot audio (a ``barge_in`` ends one);
- ``play`` is the asyncio shell on a ``websockets`` client: it reads the clock and moves
  bytes, nothing else.

Impairments on a TCP connection. A WebSocket never reorders, so a frame leaves no earlier
than the one before it: jitter and reorder hold-back become head-of-line delay, as on a
congested TCP link. A lost frame is made (the protocol's media clock, Twilio's chunk number
and AudioHook's ``position`` advance) and then not sent, so the server sees the gap the
way it would see a sender that dropped audio. A duplicate is sent only where the server can
tell it from new audio (Twilio: the same ``chunk`` again); AudioHook binary audio carries no
number, so a copy would be indistinguishable extra audio and is not sent. Malformed messages
and scripted disconnects are not played (the protocol objects write only valid messages).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import itertools
import logging
import math
import secrets
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, TypeAlias
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from .. import checks, codecs
from ..errors import ConfigError
from ..frames import (
    AudioFrame,
    Event,
    Malformed,
    Message,
    Pong,
    StreamClosed,
    StreamOpened,
    StreamPaused,
    StreamResumed,
    StreamSignal,
)
from ..protocols import signatures
from ..protocols.audioconnector import AudioConnectorDialect
from ..protocols.audiohook import NULL_UUID, AudioHookDialect, MediaOffer
from ..protocols.twilio import TwilioDialect
from ..transport import redact_url
from .audio import AudioSource, ToneSource, frame_samples
from .impairments import PROFILES, ImpairmentModel, Impairments
from .stream import frames_for

__all__ = [
    "DEFAULT_FRAME_MS",
    "DEFAULT_TONES_HZ",
    "PLAYER_DIALECTS",
    "ChannelSent",
    "Departure",
    "Histogram",
    "OutKind",
    "Outbox",
    "Outgoing",
    "PlayerDialect",
    "PlayerOptions",
    "PlayerResult",
    "Playout",
    "SendPlan",
    "ServerAudio",
    "play",
    "play_demo",
]

logger = logging.getLogger(__name__)

PlayerDialect: TypeAlias = Literal["audiohook", "audioconnector", "twilio"]
PLAYER_DIALECTS: tuple[PlayerDialect, ...] = ("audiohook", "audioconnector", "twilio")

DEFAULT_FRAME_MS: Mapping[str, float] = {
    "audiohook": 200.0,
    "audioconnector": 200.0,
    "twilio": 20.0,
}
"""Genesys' reference client sends 200 ms messages (1600 bytes of mono PCMU); Twilio ~20 ms."""

DEFAULT_TONES_HZ: Mapping[str, float] = {
    "external": 440.0,
    "internal": 660.0,
    "inbound": 440.0,
    "outbound": 660.0,
}
"""One tone per channel, different, so a server that swaps stereo channels is caught."""

ORGANIZATION_ID = "6a1f0c1e-7d5b-4c3e-9a52-0d1f2b3c4d5e"
"""The ``Audiohook-Organization-Id`` players send unless told otherwise."""

SAMPLE_RATE = 8000
_MAX_CYCLE_FRAMES = 64
"""Longest tone cycle shared between sessions (a 20 ms frame of a whole-Hz tone repeats
within 50 frames, a 200 ms frame within 5)."""
FIRST_PING_S = 1.0
PING_INTERVAL_S = 5.0
"""Genesys' reference client pings 1 s after ``opened``, then every 5 s; Twilio players
ping on the WebSocket itself (RFC 6455 section 5.5.2) on the same schedule, since Media
Streams have no ping message of their own."""
CLOSE_GRACE_S = 10.0
"""How long past the last frame's departure a session may take to close (AudioHook's
reference client waits 10 s for ``closed``)."""

_SESSION_MARGIN_S = 2.0 * 2.0 + 5.0
"""Slack for the impairments' delays (each random draw is capped at 2 s, a frame can be
late by processing plus jitter plus base delay) on top of the open and the audio."""


# -- sans-I/O: when each frame leaves --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Departure:
    """Frame ``seq``: captured ``capture_s`` after the stream started, leaving at ``send_s``
    (None: lost), its copy at ``duplicate_s`` (None: no copy). Offsets in stream seconds."""

    seq: int
    capture_s: float
    send_s: float | None
    duplicate_s: float | None = None


class SendPlan:
    """The departure of frames 0, 1, 2, ... through the seeded impairment model.

    Departures never go backwards (a WebSocket is one TCP stream): a frame leaves at its
    capture time plus its fate's delay, but not before the previous frame left. Frame
    ``i``'s fate is the model's pure function of ``(seed, i)``, so one seed gives one plan
    whatever the timing of the connection.
    """

    def __init__(
        self, impairments: Impairments, *, seed: int, frame_ms: float, duplicates: bool
    ) -> None:
        self._model = ImpairmentModel(impairments, seed=seed, frame_ms=frame_ms)
        self._frame_s = frame_ms / 1000.0
        self._duplicates = duplicates
        self._next = 0
        self._last_s = 0.0

    def next(self) -> Departure:
        seq = self._next
        self._next += 1
        fate = self._model.decide(seq)
        capture_s = seq * self._frame_s
        if fate.lost:
            return Departure(seq, capture_s, None)
        send_s = max(self._last_s, capture_s + fate.send_offset_ms / 1000.0)
        self._last_s = send_s
        duplicate_s = None
        if self._duplicates and fate.duplicate_after_ms is not None:
            duplicate_s = send_s + fate.duplicate_after_ms / 1000.0
            self._last_s = duplicate_s
        return Departure(seq, capture_s, send_s, duplicate_s)


OutKind: TypeAlias = Literal["control", "audio", "duplicate"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One queued message, due at ``due_s`` (the loop's clock); audio carries its frame
    number and each channel's share of the bytes, for the sender's accounting."""

    data: str | bytes
    due_s: float
    kind: OutKind = "control"
    seq: int = -1
    shares: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)


class Outbox:
    """Messages in the order the protocol wrote them, each released once it is due and
    everything before it has gone (head-of-line, like the TCP stream underneath): a
    ``close`` queued behind delayed audio leaves after that audio, never before."""

    def __init__(self) -> None:
        self._queue: deque[Outgoing] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, item: Outgoing) -> None:
        self._queue.append(item)

    def head_due_s(self) -> float | None:
        return self._queue[0].due_s if self._queue else None

    def pop_due(self, now_s: float) -> Outgoing | None:
        if self._queue and self._queue[0].due_s <= now_s:
            return self._queue.popleft()
        return None


class Playout:
    """The platform playing the server's audio (8 kHz PCMU, one byte per sample) in real
    time: each message starts when the previous one ends, or on arrival after a silence.

    ``marks_due`` gives the marks (Twilio) whose audio has played; ``clear`` drops what has
    not played and hands back every pending mark, which Twilio echoes at once. ``playing``
    is true from the first audio after a silence until ``stretch_over`` reports its end
    (Audio Connector's ``playback_started`` / ``playback_completed``)."""

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        self.rate = rate
        self.playing = False
        self._end_s: float | None = None
        self._marks: deque[tuple[float, str]] = deque()

    def audio(self, n_bytes: int, now_s: float) -> bool:
        """Audio arrived; True when it starts a stretch (the platform was silent)."""
        started = not self.playing
        start_s = now_s if self._end_s is None else max(now_s, self._end_s)
        self._end_s = start_s + n_bytes / self.rate
        self.playing = True
        return started

    def mark(self, name: str, now_s: float) -> None:
        due_s = now_s if self._end_s is None else max(now_s, self._end_s)
        self._marks.append((due_s, name))

    def clear(self, now_s: float) -> list[str]:
        self._end_s = now_s
        names = [name for _, name in self._marks]
        self._marks.clear()
        return names

    def marks_due(self, now_s: float) -> list[str]:
        names: list[str] = []
        while self._marks and self._marks[0][0] <= now_s:
            names.append(self._marks.popleft()[1])
        return names

    def stretch_over(self, now_s: float) -> bool:
        """True once, when a stretch of audio has played out."""
        if self.playing and self._end_s is not None and self._end_s <= now_s:
            self.playing = False
            return True
        return False

    def next_due_s(self) -> float | None:
        candidates = [self._marks[0][0]] if self._marks else []
        if self.playing and self._end_s is not None:
            candidates.append(self._end_s)
        return min(candidates) if candidates else None


class Histogram:
    """Counts of non-negative values (ms) in buckets: 0.1 ms below 100 ms, 1 ms below 10 s,
    100 ms above. Quantiles are exact to a bucket's width; memory is bounded by the range of
    values, not their number, so a load run of hours keeps one per run, mergeable."""

    __slots__ = ("_counts", "count", "max_ms")

    def __init__(self) -> None:
        self._counts: dict[float, int] = {}
        self.count = 0
        self.max_ms = 0.0

    def add(self, value_ms: float) -> None:
        value = max(0.0, value_ms)
        bucket = _bucket(value)
        self._counts[bucket] = self._counts.get(bucket, 0) + 1
        self.count += 1
        self.max_ms = max(self.max_ms, value)

    def merge(self, other: Histogram) -> None:
        for bucket, count in other._counts.items():
            self._counts[bucket] = self._counts.get(bucket, 0) + count
        self.count += other.count
        self.max_ms = max(self.max_ms, other.max_ms)

    def quantile_ms(self, q: float) -> float | None:
        """The upper edge of the bucket holding the ``q`` quantile (None when empty)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for bucket in sorted(self._counts):
            seen += self._counts[bucket]
            if seen >= rank:
                return min(bucket, self.max_ms)
        return self.max_ms


def _bucket(value_ms: float) -> float:
    for width, limit in ((0.1, 100.0), (1.0, 10_000.0)):
        if value_ms < limit:
            return round(math.ceil(round(value_ms / width, 6)) * width, 1)
    return float(math.ceil(value_ms / 100.0) * 100)


# -- options and results -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlayerOptions:
    """One session to play; see ``play``.

    ``source`` gives the audio: one ``AudioSource`` for every channel, a mapping channel ->
    source, or None for a tone per channel (``DEFAULT_TONES_HZ``). ``frame_ms`` None takes
    the platform's size (``DEFAULT_FRAME_MS``). ``pause_at_s`` (AudioHook, Audio Connector)
    pauses the audio that long after the stream started, for ``pause_for_s``.

    Credentials (never in a repr): ``api_key`` and ``client_secret`` (base64, as Genesys
    holds it; signs the upgrade when given) for AudioHook and Audio Connector;
    ``auth_token`` for Twilio's ``X-Twilio-Signature``, computed over ``signed_url`` (the
    URL as the server sees it behind a proxy; default the URL dialled).

    ``probe`` plays Genesys' connection probe: all-zero conversation and participant ids,
    no audio, then the close. ``keep_audio`` keeps every sent frame's number and bytes in
    the result (for tests; a load run keeps only counts).
    """

    dialect: PlayerDialect = "audiohook"
    impairments: Impairments = PROFILES["clean"]
    seed: int = 0
    duration_s: float = 5.0
    frame_ms: float | None = None
    source: AudioSource | Mapping[str, AudioSource] | None = None
    media: Sequence[MediaOffer] | None = None
    tracks: Sequence[str] = ("inbound",)
    api_key: str | None = field(default=None, repr=False)
    client_secret: str | None = field(default=None, repr=False)
    auth_token: str | None = field(default=None, repr=False)
    signed_url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    organization_id: str = ORGANIZATION_ID
    probe: bool = False
    pause_at_s: float | None = None
    pause_for_s: float = 1.0
    ping_interval_s: float | None = None
    input_variables: Mapping[str, str] = field(default_factory=dict)
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    open_timeout_s: float = 5.0
    keep_audio: bool = True

    def __post_init__(self) -> None:
        if self.dialect not in PLAYER_DIALECTS:
            raise ConfigError(
                f"dialect={self.dialect!r} cannot be played; pick one of {PLAYER_DIALECTS}"
            )
        checks.number("duration_s", self.duration_s, low=0.0, above=True, unit="s")
        if self.frame_ms is not None:
            checks.number("frame_ms", self.frame_ms, low=0.0, above=True, unit="ms")
        checks.number("open_timeout_s", self.open_timeout_s, low=0.0, above=True, unit="s")
        checks.number("pause_for_s", self.pause_for_s, low=0.0, above=True, unit="s")
        if self.pause_at_s is not None:
            if self.dialect == "twilio":
                raise ConfigError(
                    "pause_at_s is for AudioHook and Audio Connector; Twilio Media Streams "
                    "have no pause"
                )
            checks.number("pause_at_s", self.pause_at_s, low=0.0, unit="s")
        if self.probe and self.dialect == "twilio":
            raise ConfigError("probe is Genesys' connection test; Twilio has none")
        if self.client_secret is not None:
            _decode_secret(self.client_secret)
            if not self.api_key:
                raise ConfigError(
                    "client_secret signs the upgrade with its API key as keyid; give api_key "
                    "too (JITTERLINE_LOAD_API_KEY for jitterline load)"
                )

    @property
    def effective_frame_ms(self) -> float:
        return DEFAULT_FRAME_MS[self.dialect] if self.frame_ms is None else self.frame_ms


@dataclass(frozen=True, slots=True)
class ChannelSent:
    """What one channel carried: ``made`` frames were written by the protocol object
    (captured while the session ran unpaused), of which ``sent`` left and ``lost`` were
    dropped by the impairments; ``paused`` were captured while paused and never made.
    With ``keep_audio``: ``seqs`` (capture numbers) and ``audio`` (the wire bytes of this
    channel, de-interleaved) of the frames sent, in order, without duplicates."""

    channel: str
    codec: str
    made: int = 0
    sent: int = 0
    lost: int = 0
    duplicates: int = 0
    paused: int = 0
    seqs: tuple[int, ...] = ()
    audio: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class ServerAudio:
    """The audio the server sent back (Audio Connector binary PCMU, Twilio ``media``).

    ``messages`` and ``total_bytes`` always; with ``keep_audio`` also ``audio`` (the PCMU as it
    arrived, in order), and per message its size and ``arrivals_s`` (seconds after the
    stream started), which show the server's pacing. ``marks``: Twilio marks echoed, in
    order; ``clears``: Twilio ``clear`` or Audio Connector ``barge_in`` received."""

    messages: int = 0
    total_bytes: int = 0
    audio: bytes = field(default=b"", repr=False)
    sizes: tuple[int, ...] = field(default=(), repr=False)
    arrivals_s: tuple[float, ...] = field(default=(), repr=False)
    marks: tuple[str, ...] = ()
    clears: int = 0


@dataclass(frozen=True, slots=True)
class PlayerResult:
    """What one played session saw.

    ``opened``: the server took the session (AudioHook ``opened``; Twilio: the upgrade).
    ``completed``: it ended the protocol's way (AudioHook ``closed`` after ``close``;
    Twilio: ``stop`` sent and the socket closed cleanly) with no error. ``refused``: the
    server refused it, by HTTP status at the upgrade (``"401"``) or, AudioHook, by
    ``disconnect`` before ``opened`` (``"unauthorized"``). ``error``: a kind
    (``connect``, ``handshake``, ``timeout``, ``connection_lost``, ``closed_by_server``,
    ``disconnect_error``, or the protocol violation's kind), empty when none.
    ``received``: what the server sent, by kind (``opened``, ``pong``, ``pause``,
    ``event`` entity types, ``disconnect``, ``closed``, ``audio`` for bot audio...).
    ``rtts_ms``: AudioHook ``pong`` round trips; Twilio: WebSocket ping round trips.
    ``send_lag``: how late each audio message left against its plan (ms): the generator's
    own lateness plus any time the server made it wait (TCP backpressure). ``loop_lag``:
    how late the sender woke against the time it asked for (ms), the generator's own
    lateness alone: high means the load generator, not the server, fell behind.
    ``server_audio``: what the server played to the caller.
    """

    dialect: str
    session_id: str
    opened: bool = False
    completed: bool = False
    probe: bool = False
    refused: str = ""
    error: str = ""
    error_detail: str = ""
    disconnect_reason: str = ""
    close_reason: str = ""
    close_code: int | None = None
    channels: tuple[ChannelSent, ...] = ()
    rtts_ms: tuple[float, ...] = ()
    received: Mapping[str, int] = field(default_factory=dict)
    send_lag: Histogram = field(default_factory=Histogram, compare=False, repr=False)
    loop_lag: Histogram = field(default_factory=Histogram, compare=False, repr=False)
    server_audio: ServerAudio = field(default_factory=ServerAudio)

    @property
    def frames_sent(self) -> int:
        return sum(channel.sent for channel in self.channels)

    def channel(self, name: str) -> ChannelSent:
        for channel in self.channels:
            if channel.channel == name:
                return channel
        raise ConfigError(f"channel {name!r} was not played; channels: {self.channel_names}")

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(channel.channel for channel in self.channels)


# -- the asyncio shell -------------------------------------------------------------------------


if TYPE_CHECKING:
    _LoggerAdapter = logging.LoggerAdapter[logging.Logger]
else:
    _LoggerAdapter = logging.LoggerAdapter


class _NoDebugLogger(_LoggerAdapter):
    """``websockets`` logs every request header at DEBUG, ``X-API-KEY`` and ``Signature``
    included; secrets never reach a log."""

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


async def play(
    url: str,
    options: PlayerOptions | None = None,
    *,
    stop: asyncio.Event | None = None,
    **changes: Any,
) -> PlayerResult:
    """Play one session against ``url``; ``changes`` override fields of ``options``.

    Never raises for what the server does (refusals, drops and violations are in the
    result); ``ConfigError`` for bad options. The session is bounded: it gives up (error
    ``timeout``) once ``open_timeout_s + duration_s`` plus the worst impairment delay and
    the close grace have passed. Setting ``stop`` ends it early the protocol's way: no
    more audio, then ``close`` (AudioHook) or ``stop`` (Twilio), as a Ctrl-C should.
    """
    chosen = replace(options or PlayerOptions(), **changes)
    session = _Session(url, chosen)
    if stop is None:
        return await session.run()
    watcher = asyncio.create_task(_stop_when_set(stop, session))
    try:
        return await session.run()
    finally:
        watcher.cancel()


async def _stop_when_set(stop: asyncio.Event, session: _Session) -> None:
    await stop.wait()
    session.stop_early()


async def play_demo(
    url: str,
    dialect: PlayerDialect,
    profile: str = "clean",
    seed: int = 0,
    duration_s: float = 10.0,
    **changes: Any,
) -> PlayerResult:
    """One impaired session for ``jitterline demo --dialect D`` against a local ``serve``:
    the named impairment profile, a ping every second so a short run measures an RTT."""
    if profile not in PROFILES:
        raise ConfigError(f"profile {profile!r} is not one of {tuple(PROFILES)}")
    options = PlayerOptions(
        dialect=dialect,
        impairments=PROFILES[profile],
        seed=seed,
        duration_s=duration_s,
        ping_interval_s=1.0,
        keep_audio=False,
    )
    return await play(url, options, **changes)


class _ChannelLog:
    """Accumulates one channel's ``ChannelSent``."""

    def __init__(self, channel: str, codec: str, keep: bool) -> None:
        self.channel, self.codec, self.keep = channel, codec, keep
        self.made = self.sent = self.lost = self.duplicates = self.paused = 0
        self.seqs: list[int] = []
        self.audio: list[bytes] = []

    def frozen(self) -> ChannelSent:
        return ChannelSent(
            self.channel,
            self.codec,
            self.made,
            self.sent,
            self.lost,
            self.duplicates,
            self.paused,
            tuple(self.seqs),
            b"".join(self.audio),
        )


class _AudioBackLog:
    """Accumulates ``ServerAudio``."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.messages = self.total_bytes = self.clears = 0
        self.audio: list[bytes] = []
        self.arrivals_s: list[float] = []
        self.marks: list[str] = []

    def add(self, payload: bytes, arrival_s: float) -> None:
        self.messages += 1
        self.total_bytes += len(payload)
        if self.keep:
            self.audio.append(payload)
            self.arrivals_s.append(arrival_s)

    def frozen(self) -> ServerAudio:
        return ServerAudio(
            messages=self.messages,
            total_bytes=self.total_bytes,
            audio=b"".join(self.audio),
            sizes=tuple(len(chunk) for chunk in self.audio),
            arrivals_s=tuple(self.arrivals_s),
            marks=tuple(self.marks),
            clears=self.clears,
        )


class _Session:
    """One connection: the protocol object, the outbox, the sender loop and the reader."""

    def __init__(self, url: str, options: PlayerOptions) -> None:
        self.url, self.options = url, options
        self.frame_ms = options.effective_frame_ms
        self.total_frames = 0 if options.probe else frames_for(options.duration_s, self.frame_ms)
        self.proto = _make_dialect(options)
        self.session_id = (
            self.proto.stream_id
            if isinstance(self.proto, TwilioDialect)
            else self.proto.session_id
        )
        self.plan = SendPlan(
            options.impairments,
            seed=options.seed,
            frame_ms=self.frame_ms,
            duplicates=options.dialect == "twilio",
        )
        self.outbox = Outbox()
        self.logs: dict[str, _ChannelLog] = {}
        self.sources: dict[str, Iterator[bytes]] = {}
        self.wake = asyncio.Event()
        self.ws: ClientConnection | None = None
        self.ready_s: float | None = None
        self.next_seq = 0
        self.finishing = False
        self.peer_closed = False
        self.pause_done = self.resume_done = options.pause_at_s is None
        self.opened = False
        self.closed_event: StreamClosed | None = None
        self.refused = self.error = self.error_detail = self.disconnect_reason = ""
        self.rtts_ms: list[float] = []
        self.received: dict[str, int] = {}
        self.send_lag = Histogram()
        self.loop_lag = Histogram()
        self.close_code: int | None = None
        self.ws_ping_s: float | None = None
        self.ws_pong: asyncio.Future[float] | None = None
        self.playout = Playout()
        self.back = _AudioBackLog(options.keep_audio)

    # -- the whole session ----------------------------------------------------------------

    async def run(self) -> PlayerResult:
        loop = asyncio.get_running_loop()
        bound_s = (
            self.options.open_timeout_s
            + self.options.duration_s
            + _SESSION_MARGIN_S
            + CLOSE_GRACE_S
        )
        try:
            await asyncio.wait_for(self._connect_and_play(loop), bound_s)
        except (asyncio.TimeoutError, TimeoutError):
            self._fail("timeout", f"session not over within {bound_s:g} s")
        if self.ws is not None and self.error == "timeout":
            self.ws.transport.abort()
        return self._result()

    async def _connect_and_play(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.ws = await connect(
                self.url,
                additional_headers=self._upgrade_headers(),
                open_timeout=self.options.open_timeout_s,
                ping_interval=None,
                close_timeout=2.0,
                compression=None,
                max_size=2**20,
                proxy=None,
                logger=_NoDebugLogger(logger, {}),
            )
        except InvalidStatus as exc:
            self.refused = str(exc.response.status_code)
            return
        except InvalidURI:
            raise ConfigError(
                f"{redact_url(self.url)!r} is not a WebSocket URL; give ws:// or wss://"
            ) from None
        except InvalidHandshake as exc:
            self._fail("handshake", f"upgrade failed: {type(exc).__name__}")
            return
        except (OSError, asyncio.TimeoutError, TimeoutError) as exc:
            self._fail("connect", f"cannot connect: {type(exc).__name__}: {exc}")
            return
        self.proto.connection_made(loop.time())
        self._take(loop.time())
        if isinstance(self.proto, TwilioDialect):  # Twilio streams without an answer
            self.opened = True
            self._start(loop.time())
            self.ws_ping_s = loop.time() + (self.options.ping_interval_s or FIRST_PING_S)
        reader = asyncio.create_task(self._read(loop))
        try:
            await self._send_loop(loop)
        finally:
            if not reader.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(), 2.0)
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def stop_early(self) -> None:
        """No frame after those already captured; the session then ends as usual."""
        self.total_frames = min(self.total_frames, self.next_seq)
        self.wake.set()

    # -- sending ----------------------------------------------------------------------------

    async def _send_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            now_s = loop.time()
            self._capture_due(now_s)
            deadline = self.proto.next_deadline_s()
            if deadline is not None and deadline <= now_s:
                self._record(self.proto.timer(now_s))
                self._take(now_s)
            self._finish_if_due(now_s)
            self._playout_due(now_s)
            await self._flush(loop)
            if self.ws_ping_s is not None and self.ws_ping_s <= now_s:
                await self._ws_ping(loop)
            if self.peer_closed or (self.proto.close_expected() and not len(self.outbox)):
                return
            await self._sleep(loop, self._next_wake_s())

    def _next_wake_s(self) -> float | None:
        candidates = [
            self.outbox.head_due_s(),
            self.proto.next_deadline_s(),
            self.ws_ping_s,
            self.playout.next_due_s(),
        ]
        if self.ready_s is not None and self.next_seq < self.total_frames:
            candidates.append(self.ready_s + self.next_seq * self.frame_ms / 1000.0)
        if self.ready_s is not None and not self.resume_done:
            candidates.append(self.ready_s + self._pause_edge_s())
        known = [candidate for candidate in candidates if candidate is not None]
        return min(known) if known else None

    async def _sleep(self, loop: asyncio.AbstractEventLoop, until_s: float | None) -> None:
        """Until ``until_s`` or until the reader has news, without a task per wait."""
        handle = None if until_s is None else loop.call_at(until_s, self.wake.set)
        try:
            await self.wake.wait()
        finally:
            self.wake.clear()
            if handle is not None:
                handle.cancel()
        if until_s is not None and loop.time() >= until_s:
            self.loop_lag.add((loop.time() - until_s) * 1000.0)

    async def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.ws is not None
        while (item := self.outbox.pop_due(loop.time())) is not None:
            started_s = loop.time()
            try:
                await self.ws.send(item.data)
            except ConnectionClosed:
                self.peer_closed = True
                return
            if item.kind != "control":
                self.send_lag.add((started_s - item.due_s) * 1000.0)
                self._count_sent(item)

    def _count_sent(self, item: Outgoing) -> None:
        for channel, share in item.shares:
            log = self.logs[channel]
            if item.kind == "duplicate":
                log.duplicates += 1
                continue
            log.sent += 1
            if log.keep:
                log.seqs.append(item.seq)
                log.audio.append(share)

    async def _ws_ping(self, loop: asyncio.AbstractEventLoop) -> None:
        """A WebSocket ping (Twilio players); one outstanding at a time."""
        assert self.ws is not None
        interval_s = self.options.ping_interval_s or PING_INTERVAL_S
        self.ws_ping_s = None if self.finishing else loop.time() + interval_s
        if self.ws_pong is not None and not self.ws_pong.done():
            return
        sent_s = loop.time()
        try:
            pong = await self.ws.ping()
        except ConnectionClosed:
            self.peer_closed = True
            return
        self.ws_pong = asyncio.ensure_future(pong)
        self.ws_pong.add_done_callback(lambda done: self._on_ws_pong(done, sent_s, loop))

    def _on_ws_pong(
        self, done: asyncio.Future[float], sent_s: float, loop: asyncio.AbstractEventLoop
    ) -> None:
        if not done.cancelled() and done.exception() is None:
            self.rtts_ms.append((loop.time() - sent_s) * 1000.0)
            self.received["pong"] = self.received.get("pong", 0) + 1

    def _take(self, now_s: float) -> None:
        """Queue what the protocol object wrote, right after each call that may write."""
        for data in self.proto.data_to_send():
            self.outbox.push(Outgoing(data, now_s))

    # -- the stream's clock -------------------------------------------------------------------

    def _start(self, now_s: float) -> None:
        """The stream starts: AudioHook at ``opened``, Twilio once connected."""
        self.ready_s = now_s
        codec, channels = self._media()
        for channel in channels:
            self.logs[channel] = _ChannelLog(channel, codec, self.options.keep_audio)
            source = _source(self.options.source, channel)
            self.sources[channel] = _encoded_frames(source, self.frame_ms, codec)

    def _media(self) -> tuple[str, tuple[str, ...]]:
        if isinstance(self.proto, TwilioDialect):
            return "PCMU", self.proto.tracks
        media = self.proto.media
        return ("PCMU", ()) if media is None else media

    def _capture_due(self, now_s: float) -> None:
        """Capture every frame due by ``now_s``, applying a pause or resume due before a
        frame first: a late wake-up still pauses the frames the schedule says it should."""
        if self.ready_s is None:
            return
        while not self.finishing and self.next_seq < self.total_frames:
            capture_s = self.ready_s + self.next_seq * self.frame_ms / 1000.0
            self._pause_due(min(capture_s, now_s))
            if capture_s > now_s:
                return
            self._capture(self.plan.next(), now_s)
            self.next_seq += 1
        self._pause_due(now_s)

    def _capture(self, departure: Departure, now_s: float) -> None:
        encoded = {channel: next(source) for channel, source in self.sources.items()}
        if not encoded:
            return
        self._take(now_s)
        written = self._write_audio(encoded)
        if not written:
            if getattr(self.proto, "paused", False):
                for channel in encoded:
                    self.logs[channel].paused += 1
            else:  # the session no longer takes audio (the server is ending it)
                self.finishing = True
            return
        assert self.ready_s is not None
        for data, shares in written:
            for channel, _ in shares:
                self.logs[channel].made += 1
            if departure.send_s is None:
                for channel, _ in shares:
                    self.logs[channel].lost += 1
                continue
            self._push_audio(data, self.ready_s + departure.send_s, "audio", departure.seq, shares)
            if departure.duplicate_s is not None:
                due_s = self.ready_s + departure.duplicate_s
                self._push_audio(data, due_s, "duplicate", departure.seq, shares)

    def _push_audio(
        self,
        data: str | bytes,
        due_s: float,
        kind: OutKind,
        seq: int,
        shares: tuple[tuple[str, bytes], ...],
    ) -> None:
        self.outbox.push(Outgoing(data, due_s, kind, seq, shares))

    def _write_audio(
        self, encoded: dict[str, bytes]
    ) -> list[tuple[str | bytes, tuple[tuple[str, bytes], ...]]]:
        """The protocol object writes the frame: one message (AudioHook, channels
        interleaved) or one per track (Twilio). Empty when the session does not take
        audio now (paused, closing). Each channel's share is its mono wire bytes, which is
        what a server splitting the message gets back (both codecs work sample by
        sample, so interleaving the encoded bytes equals encoding interleaved samples)."""
        if isinstance(self.proto, TwilioDialect):
            written: list[tuple[str | bytes, tuple[tuple[str, bytes], ...]]] = []
            if self.proto.state != "streaming":
                return written
            for track, pcmu in encoded.items():
                self.proto.send_audio(pcmu, track=track)
                written.extend((data, ((track, pcmu),)) for data in self.proto.data_to_send())
            return written
        codec = self._media()[0]
        if not self.proto.send_audio(_interleave(list(encoded.values()), codec)):
            return []
        shares = tuple(encoded.items())
        return [(message, shares) for message in self.proto.data_to_send()]

    def _pause_edge_s(self) -> float:
        assert self.options.pause_at_s is not None
        if not self.pause_done:
            return self.options.pause_at_s
        return self.options.pause_at_s + self.options.pause_for_s

    def _pause_due(self, now_s: float) -> None:
        if self.ready_s is None or self.resume_done or self.finishing:
            return
        if now_s < self.ready_s + self._pause_edge_s():
            return
        assert isinstance(self.proto, AudioHookDialect)
        if not self.pause_done:
            self.proto.pause()
            self.pause_done = True
        else:
            self.proto.resume()
            self.resume_done = True
        self._take(now_s)

    def _finish_if_due(self, now_s: float) -> None:
        """Once every frame is captured, end the protocol's way (behind queued audio)."""
        if self.finishing or self.ready_s is None or self.next_seq < self.total_frames:
            return
        self.finishing = True
        self.ws_ping_s = None
        self.proto.end("end", now_s)
        self._take(now_s)

    # -- receiving ---------------------------------------------------------------------------

    async def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.ws is not None
        try:
            async for data in self.ws:
                events = self.proto.receive(Message(data, loop.time(), time.time()))
                self._record(events)
                self._take(loop.time())
                self.wake.set()
        except ConnectionClosed:
            pass
        finally:
            received = self.ws.protocol.close_rcvd
            self.close_code = None if received is None else received.code
            self.peer_closed = True
            self.wake.set()

    def _record(self, events: list[Event]) -> None:
        for event in events:
            kind = _event_kind(event)
            self.received[kind] = self.received.get(kind, 0) + 1
            if isinstance(event, StreamOpened):
                self.opened = True
                self._start(event.arrival_s)
            elif isinstance(event, Pong) and event.rtt_ms is not None:
                self.rtts_ms.append(event.rtt_ms)
            elif isinstance(event, StreamClosed):
                self.closed_event = event
                if event.reason == "close_timeout":
                    self._fail("close_timeout", "the server never answered close with closed")
            elif isinstance(event, Malformed) and event.fatal:
                self._fail(event.kind, event.detail)
            elif isinstance(event, StreamSignal) and event.kind == "disconnect":
                self._on_disconnect(str(event.info.get("reason", "")))
            elif isinstance(event, AudioFrame):
                self._audio_back(event.payload, event.arrival_s)
            elif isinstance(event, StreamSignal):
                self._signal_back(event)

    # -- the server's audio, played as the platform would ---------------------------------

    def _audio_back(self, payload: bytes, arrival_s: float) -> None:
        started_s = arrival_s if self.ready_s is None else self.ready_s
        self.back.add(payload, arrival_s - started_s)
        if self.playout.audio(len(payload), arrival_s) and isinstance(
            self.proto, AudioConnectorDialect
        ):
            self.proto.playback_started()

    def _signal_back(self, event: StreamSignal) -> None:
        if event.kind == "media":
            self._audio_back(event.info["payload"], event.arrival_s)
        elif event.kind == "mark":
            self.playout.mark(str(event.info.get("name", "")), event.arrival_s)
        elif event.kind in ("clear", "barge_in"):
            self.back.clears += 1
            self._echo(self.playout.clear(event.arrival_s))

    def _playout_due(self, now_s: float) -> None:
        """Echo the marks whose audio has played; report a finished stretch of bot audio."""
        self._echo(self.playout.marks_due(now_s))
        if self.playout.stretch_over(now_s) and isinstance(self.proto, AudioConnectorDialect):
            self.proto.playback_completed()
        self._take(now_s)

    def _echo(self, names: list[str]) -> None:
        for name in names:
            if isinstance(self.proto, TwilioDialect) and self.proto.state == "streaming":
                self.proto.send_mark(name)
                self.back.marks.append(name)

    def _on_disconnect(self, reason: str) -> None:
        self.disconnect_reason = reason
        if not self.opened:
            self.refused = self.refused or reason or "disconnect"
        elif reason != "completed":
            self._fail(f"disconnect_{reason}", f"the server disconnected: {reason}")

    def _fail(self, kind: str, detail: str) -> None:
        if not self.error:
            self.error, self.error_detail = kind, detail
            logger.info(
                "%s session %s: %s: %s", self.options.dialect, self.session_id, kind, detail
            )

    # -- the verdict -------------------------------------------------------------------------

    def _completed(self) -> bool:
        if self.error or self.refused or not self.opened:
            return False
        if isinstance(self.proto, TwilioDialect):
            clean_close = self.close_code in (None, 1000)
            return self.proto.state == "stopped" and not len(self.outbox) and clean_close
        return self.closed_event is not None and self.closed_event.reason in ("end", "completed")

    def _result(self) -> PlayerResult:
        if (
            not self.error
            and not self.refused
            and self.ws is not None
            and self.opened
            and not self._completed()
        ):
            kind = "closed_by_server" if self.close_code == 1000 else "connection_lost"
            self._fail(kind, f"the connection ended before the session (close {self.close_code})")
        return PlayerResult(
            dialect=self.options.dialect,
            session_id=self.session_id,
            opened=self.opened and not self.refused,
            completed=self._completed(),
            probe=self.options.probe,
            refused=self.refused,
            error=self.error,
            error_detail=self.error_detail,
            disconnect_reason=self.disconnect_reason,
            close_reason="" if self.closed_event is None else self.closed_event.reason,
            close_code=self.close_code,
            channels=tuple(log.frozen() for log in self.logs.values()),
            rtts_ms=tuple(self.rtts_ms),
            received=dict(self.received),
            send_lag=self.send_lag,
            loop_lag=self.loop_lag,
            server_audio=self.back.frozen(),
        )

    # -- the upgrade -------------------------------------------------------------------------

    def _upgrade_headers(self) -> dict[str, str]:
        headers = dict(self.options.headers)
        if isinstance(self.proto, TwilioDialect):
            if self.options.auth_token:
                signed = self.options.signed_url or self.url
                headers["X-Twilio-Signature"] = signatures.twilio_signature(
                    signed, self.options.auth_token
                )
            return headers
        return {**headers, **self._audiohook_headers()}

    def _audiohook_headers(self) -> dict[str, str]:
        assert isinstance(self.proto, AudioHookDialect)
        organization = self.options.organization_id
        correlation = str(uuid.uuid4())
        api_key = self.options.api_key or ""
        if self.options.client_secret and api_key:
            parts = urlsplit(self.options.signed_url or self.url)
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            return signatures.sign(
                path=target,
                authority=parts.netloc.rpartition("@")[2],
                organization_id=organization,
                session_id=self.session_id,
                correlation_id=correlation,
                api_key=api_key,
                secret=_decode_secret(self.options.client_secret),
                created_wall_s=int(time.time()),
                nonce=secrets.token_urlsafe(18),
            )
        headers = {
            "Audiohook-Organization-Id": organization,
            "Audiohook-Session-Id": self.session_id,
            "Audiohook-Correlation-Id": correlation,
        }
        if api_key:
            headers["X-API-KEY"] = api_key
        return headers


def _make_dialect(options: PlayerOptions) -> AudioHookDialect | TwilioDialect:
    if options.dialect == "twilio":
        return TwilioDialect(
            role="client",
            stream_sid="MZ" + uuid.uuid4().hex,
            call_sid="CA" + uuid.uuid4().hex,
            account_sid="AC" + uuid.uuid4().hex,
            tracks=options.tracks,
            custom_parameters=options.custom_parameters,
        )
    conversation = NULL_UUID if options.probe else str(uuid.uuid4())
    participant = NULL_UUID if options.probe else str(uuid.uuid4())
    timing: dict[str, Any] = {}
    if options.ping_interval_s is not None:
        timing = {
            "ping_delay_s": options.ping_interval_s,
            "ping_interval_s": options.ping_interval_s,
        }
    common: dict[str, Any] = {
        "role": "client",
        "session_id": str(uuid.uuid4()),
        "organization_id": options.organization_id,
        "conversation_id": conversation,
        "participant_id": participant,
        "participant": {"ani": "+15550100", "aniName": "jitterline", "dnis": "+15550199"},
        "media": options.media,
        "open_timeout_s": options.open_timeout_s,
        **timing,
    }
    if options.dialect == "audioconnector":
        variables = dict(options.input_variables)
        return AudioConnectorDialect(
            open_parameters={"inputVariables": variables} if variables else None, **common
        )
    return AudioHookDialect(**common)


def _source(source: AudioSource | Mapping[str, AudioSource] | None, channel: str) -> AudioSource:
    if source is None:
        return ToneSource(DEFAULT_TONES_HZ.get(channel, 440.0))
    if isinstance(source, Mapping):
        if channel not in source:
            raise ConfigError(
                f"no source for channel {channel!r}; the mapping has {tuple(source)}"
            )
        return source[channel]
    return source


def _encoded_frames(source: AudioSource, frame_ms: float, codec: str) -> Iterator[bytes]:
    """A source's frames in ``codec``. A tone's frames repeat once its phase comes back to
    0: that cycle is computed and encoded once and shared by every session playing the
    same tone, since a load run would otherwise spend much of its CPU on sines and
    encoding. Other sources are encoded frame by frame."""
    if isinstance(source, ToneSource):
        cycle = _tone_cycle(source, frame_ms, codec)
        if cycle:
            return itertools.cycle(cycle)
    frames = source.frames(sample_rate=SAMPLE_RATE, frame_ms=frame_ms)
    return (codecs.encode(samples, codec) for samples in frames)


@functools.lru_cache(maxsize=32)
def _tone_cycle(source: ToneSource, frame_ms: float, codec: str) -> tuple[bytes, ...]:
    """The encoded frames of one cycle (empty when the tone is not a whole number of Hz,
    or the cycle is longer than ``_MAX_CYCLE_FRAMES``)."""
    size = frame_samples(SAMPLE_RATE, frame_ms)
    if not float(source.freq_hz).is_integer():
        return ()
    period = SAMPLE_RATE // math.gcd(int(source.freq_hz), SAMPLE_RATE)
    count = period // math.gcd(period, size)
    if count > _MAX_CYCLE_FRAMES:
        return ()
    frames = source.frames(sample_rate=SAMPLE_RATE, frame_ms=frame_ms)
    return tuple(codecs.encode(samples, codec) for samples in itertools.islice(frames, count))


def _interleave(channels: list[bytes], codec: str) -> bytes:
    """Mono wire frames interleaved sample by sample, in channel order."""
    if len(channels) == 1:
        return channels[0]
    width = f"V{codecs.bytes_per_sample(codec)}"
    columns = [np.frombuffer(data, dtype=width) for data in channels]
    return np.stack(columns, axis=1).tobytes()


_EVENT_KINDS: Mapping[type, str] = {
    AudioFrame: "audio",
    StreamOpened: "opened",
    StreamClosed: "closed",
    Pong: "pong",
    Malformed: "malformed",
    StreamPaused: "pause",
    StreamResumed: "resume",
}


def _event_kind(event: Event) -> str:
    """``PlayerResult.received`` keys: the server's message types as the events show them."""
    if isinstance(event, StreamSignal):
        return event.kind
    return _EVENT_KINDS.get(type(event), type(event).__name__.lower())


def _decode_secret(text: str) -> bytes:
    """A Genesys client secret is base64; its decoded bytes are the HMAC key."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            "client_secret is not base64 (Genesys shows the client secret in base64); "
            "copy it exactly as the integration shows it"
        ) from None

"""The values that flow through the pipeline.

All are frozen, slotted dataclasses: a stage never mutates what it received, so any stage
can be replayed, shared with a plugin or sent to another process. Units are in the field
names. Times called ``*_s`` without ``wall`` come from a monotonic clock (the transport's, or
the scheduler's in virtual time); ``*_wall_s`` fields are epoch seconds from some party's wall
clock and are only ever compared with each other when they come from the same party, except
``latency`` which is documented to include clock offset.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "Alert",
    "Arrival",
    "ArrivalMeasure",
    "ArrivalOutcome",
    "AudioFrame",
    "BufferStats",
    "ConnectionEvent",
    "ConnectionKind",
    "ConnectionStats",
    "Event",
    "FrameCounts",
    "LatencyStats",
    "Malformed",
    "Message",
    "Pong",
    "Samples",
    "Stats",
    "StreamClosed",
    "StreamError",
    "StreamInfo",
    "StreamOpened",
    "StreamPaused",
    "StreamResumed",
    "StreamSignal",
    "evolve",
]

Samples: TypeAlias = npt.NDArray[np.int16]
_V = TypeVar("_V")
_COPIERS: dict[type, Any] = {}
_UNCHANGED: Any = object()


def evolve(value: _V, **changes: Any) -> _V:
    """``dataclasses.replace`` for these frozen, slotted values, at a fraction of its cost
    (``replace`` walks ``fields()`` and calls ``__init__`` on every call), because the
    pipeline copies every frame at least once (the jitter buffer stamps ``playout_s``).
    Nothing here has a ``__post_init__`` to skip; a misspelt field is an unexpected
    keyword argument of ``evolve_<class>()``, a ``TypeError`` as with ``replace``."""
    cls = type(value)
    copier = _COPIERS.get(cls)
    if copier is None:
        copier = _COPIERS[cls] = _written(
            cls,
            f"evolve_{cls.__name__}(value, *, {{}})",
            "{name}=unchanged",
            "value.{name} if {name} is unchanged else {name}",
        )
    return copier(value, **changes)  # type: ignore[no-any-return]


_C = TypeVar("_C", bound=type)


def _quick_init(cls: _C) -> _C:
    """Give a frozen, slotted dataclass built on every frame a faster ``__init__``, with
    the same signature and defaults.

    A frozen dataclass's ``__init__`` stores each field through ``object.__setattr__``
    (the class's own ``__setattr__`` refuses), which looks the field up on the class each
    time; storing through each field's slot descriptor, looked up once here, is half the
    instructions (an ``AudioFrame``: 11 400 against 22 100, a third of the floor's cost of
    parsing its message)."""
    defaults = {}
    for spec in fields(cls):
        if spec.default_factory is not MISSING:
            raise TypeError(f"{cls.__name__}.{spec.name}: a default_factory needs __init__")
        if spec.default is not MISSING:
            defaults[spec.name] = spec.default
    cls.__init__ = _written(  # type: ignore[misc]
        cls,
        "__init__(self, {})",
        "{name}",
        "{name}",
        target="self",
        defaults=defaults,
    )
    return cls


def _written(
    cls: type,
    signature: str,
    parameter: str,
    value: str,
    *,
    target: str = "",
    defaults: dict[str, Any] | None = None,
) -> Any:
    """A function written for ``cls`` the way ``dataclasses`` writes ``__init__``: one
    parameter and one slot store per field, no loop. ``signature`` takes the joined
    parameters, each ``parameter`` and ``value`` a field's ``{name}``; it stores into
    ``target``, or into a new instance that it returns."""
    names = [spec.name for spec in fields(cls)]
    scope: dict[str, Any] = {"new_object": object.__new__, "cls": cls}
    scope["unchanged"] = _UNCHANGED
    params = []
    for name in names:
        scope[f"set_{name}"] = cls.__dict__[name].__set__
        text = parameter.format(name=name)
        if defaults and name in defaults:
            scope[f"default_{name}"] = defaults[name]
            text += f"=default_{name}"
        params.append(text)
    into = target or "new"
    lines = [f"def {signature.format(', '.join(params))}:"]
    if not target:
        lines.append("    new = new_object(cls)")
    lines += [f"    set_{name}({into}, {value.format(name=name)})" for name in names]
    if not target:
        lines.append("    return new")
    exec("\n".join(lines), scope)  # the source is built from the class's field names only
    return scope[signature.split("(", 1)[0]]


@_quick_init
@dataclass(frozen=True, slots=True)
class Message:
    """One WebSocket message as received, stamped on arrival.

    ``received_wall_s`` is the receiver's wall clock at arrival, if the transport read it;
    it is only used for sender-to-receiver latency, which needs both wall clocks.
    """

    data: str | bytes
    arrival_s: float
    received_wall_s: float | None = None

    @property
    def kind(self) -> Literal["text", "binary"]:
        return "text" if isinstance(self.data, str) else "binary"


@_quick_init
@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One chunk of audio of one stream.

    ``seq`` counts frames from the stream's start, with no wrap (dialects with 16-bit
    counters unwrap before building frames). ``media_ms`` is the frame's position on the
    sender's media clock. ``capture_wall_s`` and ``sent_wall_s`` are the sender's wall clock
    when the audio was captured and when the message left; their difference is server-side
    processing time, free of clock offset. ``playout_s`` is set by the jitter buffer when
    the frame leaves it; ``concealed`` marks a frame it synthesised for a missing one.
    ``samples`` is filled by the decode stage (int16, interleaved when ``channels`` > 1,
    read-only) and is left out of equality so that frames compare by their wire content.
    ``channel`` names the party or track whose audio this is (AudioHook ``external`` /
    ``internal``, Twilio ``inbound`` / ``outbound``; "" for a single-channel dialect): each
    (``stream_id``, ``channel``) has its own jitter buffer, so two parties are never mixed.
    """

    stream_id: str
    seq: int
    media_ms: float
    codec: str
    sample_rate: int
    channels: int
    payload: bytes = field(repr=False)
    duration_ms: float
    arrival_s: float
    capture_wall_s: float | None = None
    sent_wall_s: float | None = None
    received_wall_s: float | None = None
    playout_s: float | None = None
    concealed: bool = False
    samples: Samples | None = field(default=None, compare=False, repr=False)
    channel: str = ""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """Who a stream is: what every hook call and summary carries to tell streams apart.

    ``stream_id`` is the connection's id (appfoundry session, AudioHook session,
    Twilio ``streamSid``) and ``channel`` the party within it; together they name one
    jitter buffer's audio. ``call_id`` is the conversation or call (AudioHook
    ``conversationId``, Twilio ``callSid``), ``participant_id`` the AudioHook participant.
    ``key`` is what a sink keeps per-stream state under.
    """

    stream_id: str
    channel: str = ""
    dialect: str = ""
    session_id: str = ""
    call_id: str = ""
    participant_id: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.stream_id, self.channel)


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The stream is open (appfoundry ``initialize`` answer, AudioHook ``open``, Twilio
    ``start``). ``channels`` lists the parties whose audio will flow, in wire order;
    ``probe`` marks a connection test that carries no call (AudioHook's all-zero ids);
    ``info`` keeps the rest of what the peer said (custom parameters, media format)."""

    stream_id: str
    arrival_s: float
    info: dict[str, Any] = field(default_factory=dict)
    call_id: str = ""
    participant_id: str = ""
    channels: tuple[str, ...] = ()
    probe: bool = False


@dataclass(frozen=True, slots=True)
class StreamPaused:
    """The sender stopped audio on purpose (AudioHook ``paused``, a bot between turns):
    the slots until ``StreamResumed`` are idle time, not loss."""

    stream_id: str
    arrival_s: float


@dataclass(frozen=True, slots=True)
class StreamResumed:
    """Audio flows again after ``StreamPaused``."""

    stream_id: str
    arrival_s: float


@dataclass(frozen=True, slots=True)
class StreamSignal:
    """An in-band event that changes no audio: DTMF, a Twilio ``mark``, Audio Connector
    ``playback_started``, an AudioHook ``update``. ``kind`` is the wire name."""

    stream_id: str
    arrival_s: float
    kind: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamError:
    """The peer reported an error in-band; the stream may go on."""

    stream_id: str
    arrival_s: float
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """The peer ended the stream in-band."""

    stream_id: str
    arrival_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class Pong:
    """A protocol-level pong; ``rtt_ms`` is filled where the dialect can measure it."""

    stream_id: str
    arrival_s: float
    rtt_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message that could not be parsed or decoded, or that broke the protocol's rules;
    counted, logged once per kind, skipped.

    ``fatal`` marks a violation after which the protocol ends the connection (it has
    queued the reply it prescribes, such as AudioHook's ``disconnect`` reason ``error``).
    """

    kind: str
    detail: str
    arrival_s: float
    stream_id: str = ""
    fatal: bool = False


Event: TypeAlias = (
    AudioFrame
    | StreamOpened
    | StreamPaused
    | StreamResumed
    | StreamSignal
    | StreamError
    | StreamClosed
    | Pong
    | Malformed
)


ConnectionKind: TypeAlias = Literal[
    "connecting",
    "connected",
    "disconnected",
    "reconnect_scheduled",
    "token_refreshed",
    "rate_limited",
    "pong",
    "closed",
]


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A step in a session's life, for hooks and status displays.

    ``attempt`` counts connection attempts from 1; ``code``/``reason`` describe a
    disconnect or a refused handshake; ``delay_s`` is the wait before the next attempt
    (reconnect_scheduled, rate_limited); ``rtt_ms`` is set on ``pong``.
    """

    kind: ConnectionKind
    at_s: float
    attempt: int = 0
    code: int | None = None
    reason: str = ""
    delay_s: float | None = None
    rtt_ms: float | None = None


@_quick_init
@dataclass(frozen=True, slots=True)
class ArrivalMeasure:
    """What the latency window learned from one frame's arrival; the adjuster's input.

    ``transit_delta_ms`` is RFC 3550's |D(i-1, i)|; ``jitter_ms`` the running RFC 3550
    estimate after this frame; ``relative_delay_ms`` the frame's one-way delay above the
    least-delayed frame in the window (clock offset cancels).
    """

    arrival_s: float
    seq: int
    frame_ms: float
    interarrival_ms: float | None
    transit_delta_ms: float | None
    jitter_ms: float
    relative_delay_ms: float
    latency_ms: float | None = None
    processing_ms: float | None = None
    outcome: ArrivalOutcome = "buffered"


ArrivalOutcome: TypeAlias = Literal["buffered", "late", "duplicate", "overflow"]


@_quick_init
@dataclass(frozen=True, slots=True)
class Arrival:
    """What the jitter buffer did with one arriving frame, as it arrived: the input of the
    latency window (which measures the arrival) and, through it, of the adjuster (which
    sees the buffer's own late outcomes). ``reanchored``: the buffer restarted its playout
    clock on this frame (a discontinuity), so the window measures delay from it afresh.
    Played frames leave the buffer separately."""

    frame: AudioFrame
    outcome: ArrivalOutcome
    reanchored: bool = False


@dataclass(frozen=True, slots=True)
class FrameCounts:
    """Frame accounting; ``received == played + late + duplicate + overflow + malformed +
    unplayed + discarded`` always holds on a final snapshot: each frame received is counted
    exactly once.

    ``discarded`` counts frames that arrived in time but were dropped, oldest first, to bring
    the playout delay back to its target after an outage delivered a burst of held frames
    (or a restart replaced what was buffered): audio the listener does not hear, like a late
    frame, but through no fault of its own arrival. ``lost`` counts sequence numbers never
    received, nothing else: idle time (pauses, gaps in the media clock, the time after the
    last frame) is neither lost nor concealed.
    """

    received: int = 0
    played: int = 0
    late: int = 0
    duplicate: int = 0
    overflow: int = 0
    malformed: int = 0
    unplayed: int = 0
    lost: int = 0
    concealed: int = 0
    reordered: int = 0
    discarded: int = 0

    @property
    def balanced(self) -> bool:
        accounted = (self.played + self.late + self.duplicate + self.overflow + self.malformed) + (
            self.unplayed + self.discarded
        )
        return self.received == accounted

    @property
    def loss_rate(self) -> float:
        expected = self.played + self.late + self.lost + self.discarded
        return self.lost / expected if expected else 0.0

    @property
    def late_rate(self) -> float:
        expected = self.played + self.late + self.lost + self.discarded
        return self.late / expected if expected else 0.0


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """The latency window's view, in milliseconds; None where nothing was measured."""

    frames: int = 0
    jitter_rfc3550_ms: float | None = 0.0
    jitter_p50_ms: float | None = None
    jitter_p95_ms: float | None = None
    jitter_p99_ms: float | None = None
    interarrival_p50_ms: float | None = None
    interarrival_p95_ms: float | None = None
    interarrival_p99_ms: float | None = None
    delay_p50_ms: float | None = None
    delay_p95_ms: float | None = None
    delay_p99_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    processing_p50_ms: float | None = None
    processing_p95_ms: float | None = None
    rtt_ms: float | None = None


@dataclass(frozen=True, slots=True)
class BufferStats:
    """The jitter buffer's target delay now, its extremes so far, and what it holds.

    ``wait_mean_ms`` / ``wait_p95_ms``: how long played frames waited in the buffer
    (playout minus arrival), the delay the buffer itself adds; None before a frame played.
    ``idle_s``: playout time with no audio because the sender sent none (an announced
    pause, a gap in the media clock, the time after the last frame), which is neither loss
    nor concealment.
    """

    target_ms: float = 0.0
    min_ms: float = 0.0
    max_ms: float = 0.0
    level_ms: float = 0.0
    policy: str = ""
    wait_mean_ms: float | None = None
    wait_p95_ms: float | None = None
    idle_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """Filled by the transport; zeros when the pipeline runs on a replay."""

    connected: bool = False
    attempts: int = 0
    reconnects: int = 0
    token_refreshes: int = 0
    rate_limited: int = 0
    rtt_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of one stream at ``at_s`` (pipeline clock)."""

    at_s: float
    stream_id: str = ""
    channel: str = ""
    frames: FrameCounts = field(default_factory=FrameCounts)
    latency: LatencyStats = field(default_factory=LatencyStats)
    buffer: BufferStats = field(default_factory=BufferStats)
    connection: ConnectionStats = field(default_factory=ConnectionStats)

    @property
    def rtt_ms(self) -> float | None:
        """The stream's RTT: the latency window's (dialect pongs or the session's pings
        fed into it), else the transport's own reading."""
        return self.latency.rtt_ms if self.latency.rtt_ms is not None else self.connection.rtt_ms


@dataclass(frozen=True, slots=True)
class Alert:
    """Something a human should hear about: a verdict change, a plugin failing, a drop."""

    kind: str
    message: str
    at_s: float
    severity: Literal["info", "warning", "error"] = "warning"
    values: dict[str, float] = field(default_factory=dict)

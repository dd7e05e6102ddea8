"""The stages of a stream as ReactiveX operators, and ``build_pipeline`` that chains them.

The chain, one instance per stream and channel (``per_channel`` splits a connection's
events by ``AudioFrame.channel``, so two parties never share a buffer)::

    messages ─ parse ─ decode ─ per_channel( snapshots
                                             ─ jitter_buffer ─ latency_window ─ adjust ─┐
                                                    ^                                   │
                                                    └──────── targets ◄─────────────────┘
                                             ─ stats ─ sinks ) ─► played frames and Stats

Every operator creates its state when it is subscribed (nothing is shared between two
subscriptions of one chain), runs its timers on the scheduler given to ``subscribe()``
(falling back to the one it was built with, then ``TimeoutScheduler``), and composes
with ``pipe``. ``feedback_loop`` closes the loop the card draws: the adjuster's decisions
are an observable of target delays that the jitter buffer subscribes to; replace any
of the three, or put your own operator between them. A team adds a stage by composing::

    chain = lambda channel: reactivex.pipe(
        stages.snapshots(config, clock=clock),
        stages.map_frames(my_gain),                     # your stage, on decoded frames
        stages.feedback_loop(
            lambda targets: stages.jitter_buffer(config, targets=targets, clock=clock),
            stages.latency_window(config),
            stages.adjust(config, host.policies),
        ),
        stages.stats(),
        stages.sinks(host, dialect=config.dialect),
    )
    pipeline = build_pipeline(messages, scheduler=s, host=host, channel_chain=chain)

Inside a channel chain the items are the protocol's events, ``ConnectionEvent`` and
``ConnectionStats`` from the transport, and the chain's own: ``Arrival`` (what the
buffer did with a frame), ``ArrivalMeasure``, ``TargetDelay``, ``SnapshotRequest``
(filled by each stage in turn). Each stage handles its own items and passes the rest
on. The chain's output is the played frames (``playout_s`` set) and ``Stats`` snapshots,
the final one last.

Threads: a chain runs on the thread that delivers its items and runs its scheduler; live,
that is the runtime's one event loop for every stream, so no stage needs a lock.

Cost: a frame crosses about a dozen stages, so the hop is made cheap. These operators
are ordinary observables to anything else, but subscribed by one another they link
directly (``attach``): a stage's ``emit`` is the next stage's ``on_next``, one call, with
no ``AutoDetachObserver`` in between; ``Relay`` is the lock-free, single-thread subject
that feeds a pipeline, each channel and the targets. ``python -m benchmarks pipeline``
measures the chain against parsing the message alone.

Time: ``clock`` says what time it is (the transport's monotonic run clock live, the
scheduler's own time on virtual time); the scheduler says when timers fire. Playout is
a timer at the buffer's next due slot, not a poll. The buffer's output depends only on
arrival times and the order of events, never on when its timers happened to fire: a
replay of a capture gives the live run's counters bit for bit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.scheduler import TimeoutScheduler

from .adjuster import BufferAdjuster, BufferPolicy
from .codecs import Codec, is_stream_codec
from .concealment import PlayoutDecoder
from .config import PipelineConfig
from .diagnosis import Diagnosis, diagnose
from .errors import DialectError, JitterlineError
from .frames import (
    Alert,
    Arrival,
    ArrivalMeasure,
    AudioFrame,
    BufferStats,
    ConnectionEvent,
    ConnectionStats,
    Event,
    Malformed,
    Message,
    Pong,
    Stats,
    StreamClosed,
    StreamInfo,
    StreamOpened,
    StreamPaused,
    StreamResumed,
    evolve,
)
from .jitterbuffer import JitterBuffer
from .latency import LatencyWindow
from .plugins import PluginHost
from .protocols import Dialect, DialectFactory, Role
from .registry import Registry
from .schedulers import VirtualScheduler

__all__ = [
    "TARGET_STEP_MS",
    "Clock",
    "Downstream",
    "Item",
    "Operator",
    "Pipeline",
    "Relay",
    "SnapshotRequest",
    "TargetDelay",
    "adjust",
    "attach",
    "build_pipeline",
    "conceal",
    "decode",
    "default_chain",
    "feedback_loop",
    "jitter_buffer",
    "latency_window",
    "map_frames",
    "parse",
    "per_channel",
    "receive",
    "scheduler_clock",
    "sinks",
    "snapshots",
    "stats",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
_In = TypeVar("_In")
_Out = TypeVar("_Out")
Operator = Callable[[Observable[_In]], Observable[_Out]]

_MAX_LOGGED_KINDS = 64
_MIN_TIMER_S = 1e-6  # a datetime-based scheduler's resolution

TARGET_STEP_MS = 0.1
"""The least change of target the adjuster sends back to the buffer. The goal policy's
integral control moves its target by about 0.02 ms nearly every frame; sending each move
cost ~2 us a frame, and a buffer 0.1 ms off its adjuster's aim plays no differently
(its slots follow the target by glide steps, and 0.1 ms is well inside a frame's jitter)."""


@dataclass(frozen=True, slots=True)
class TargetDelay:
    """The adjuster's decision: the buffer should aim for ``target_ms``."""

    target_ms: float
    at_s: float


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """A snapshot on its way down a channel chain: each stage fills its part of ``stats``.

    ``final`` is the last one, at the end of the stream: the buffer settles its
    accounting first (drains an ended stream, counts a cut one's frames unplayed).
    """

    stats: Stats
    final: bool = False


Item: TypeAlias = (
    Event
    | ConnectionEvent
    | ConnectionStats
    | Arrival
    | ArrivalMeasure
    | TargetDelay
    | SnapshotRequest
    | Stats
)


def scheduler_clock(scheduler: abc.SchedulerBase) -> Clock:
    """The scheduler's own time in seconds: virtual time in tests and replays."""
    if isinstance(scheduler, VirtualScheduler):
        return lambda: scheduler.seconds  # no datetime round trip on every frame
    return lambda: scheduler.to_seconds(scheduler.now)


# -- building blocks ------------------------------------------------------------------------


class Downstream(Protocol):
    """What a stage emits into: an observer, or another stage (see ``attach``)."""

    def on_next(self, item: Any, /) -> None: ...

    def on_error(self, error: Exception, /) -> None: ...

    def on_completed(self) -> None: ...


class _Stage:
    """One subscription's state of a stage: gets items, emits through ``emit``.

    ``emit`` is the next stage's ``on_next`` itself when ``_operator`` linked the two
    (see ``_Linked``), so a hop between stages is one call."""

    def __init__(self, observer: Downstream, scheduler: abc.SchedulerBase) -> None:
        self.observer = observer
        self.scheduler = scheduler
        self.disposables = CompositeDisposable()
        self.emit: Callable[[Any], None] = observer.on_next

    def on_next(self, item: Any) -> None:
        self.emit(item)

    def on_completed(self) -> None:
        self.observer.on_completed()

    def on_error(self, error: Exception) -> None:
        self.observer.on_error(error)


class _Attachable(Observable[Any]):
    """An observable that can hand its items straight to a stage.

    ``subscribe()`` wraps every observer in an ``AutoDetachObserver``: two more Python
    calls per item per hop, and a frame crosses a dozen hops (about a fifth of the chain's
    cost). Between jitterline's own pieces ``attach`` links the stages directly instead;
    subscribed by anything else, each is an ordinary ``Observable``. The stages stop
    themselves (they emit nothing after completing), which is all the wrapper added."""

    def _subscribe_core(
        self, observer: Downstream, scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        return self._attach(observer, scheduler)

    def _attach(
        self, observer: Downstream, scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        raise NotImplementedError


def attach(
    source: Observable[Any],
    observer: Downstream,
    scheduler: abc.SchedulerBase | None = None,
) -> abc.DisposableBase:
    """Subscribe ``observer`` to ``source``, directly when ``source`` is one of ours."""
    if isinstance(source, _Attachable):
        return source._attach(observer, scheduler)
    return source.subscribe(
        observer.on_next, observer.on_error, observer.on_completed, scheduler=scheduler
    )


class _Listener:
    """Callables as an observer, called directly (``attach``'s counterpart of passing
    three functions to ``subscribe``)."""

    __slots__ = ("on_completed", "on_error", "on_next")

    def __init__(
        self,
        on_next: Callable[[Any], None],
        on_error: Callable[[Exception], None] | None = None,
        on_completed: Callable[[], None] | None = None,
    ) -> None:
        self.on_next = on_next
        self.on_error = on_error or _raise
        self.on_completed = on_completed or _nothing


def _raise(error: Exception) -> None:
    raise error


def _nothing() -> None:
    pass


class Relay(_Attachable):
    """A subject for one thread: what goes in goes straight to each observer, with none of
    ``Subject``'s lock and observer-list copy per item (~1.5 us an event). The runtime feeds
    each connection's pipeline through one, ``per_channel`` each channel's chain,
    ``feedback_loop`` the targets. A dispose or a completion replaces the observer tuple,
    so an item being delivered finishes as it began; like a ``Subject`` it ignores items
    after ``on_completed`` and completes late subscribers at once."""

    def __init__(self) -> None:
        super().__init__()
        self._observers: tuple[Downstream, ...] = ()
        self._stopped = False

    def _attach(
        self, observer: Downstream, scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        if self._stopped:
            observer.on_completed()
            return Disposable()
        self._observers += (observer,)
        return Disposable(lambda: self._detach(observer))

    def _detach(self, observer: Downstream) -> None:
        self._observers = tuple(o for o in self._observers if o is not observer)

    def on_next(self, item: Any) -> None:
        for observer in self._observers:
            observer.on_next(item)

    def on_error(self, error: Exception) -> None:
        observers, self._observers = self._observers, ()
        for observer in observers:
            observer.on_error(error)

    def on_completed(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        observers, self._observers = self._observers, ()
        for observer in observers:
            observer.on_completed()


class _Linked(_Attachable):
    """What ``_operator`` returns: its ``_Stage`` is created per subscription, on the
    subscribe-time scheduler (RxPY's ``scheduler or scheduler_`` rule, then
    ``TimeoutScheduler``), and attached to its source."""

    def __init__(
        self,
        source: Observable[Any],
        make: Callable[[Downstream, abc.SchedulerBase], _Stage],
        scheduler: abc.SchedulerBase | None,
    ) -> None:
        super().__init__()
        self._source = source
        self._make = make
        self._scheduler = scheduler

    def _attach(
        self, observer: Downstream, scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        stage = self._make(observer, scheduler or self._scheduler or TimeoutScheduler.singleton())
        stage.disposables.add(attach(self._source, stage, scheduler))
        return stage.disposables


def _operator(
    make: Callable[[Downstream, abc.SchedulerBase], _Stage],
    scheduler: abc.SchedulerBase | None = None,
) -> Operator[Any, Any]:
    """An operator whose ``_Stage`` is created per subscription (see ``_Linked``)."""

    def operator(source: Observable[Any]) -> Observable[Any]:
        return _Linked(source, make, scheduler)

    return operator


def map_frames(fn: Callable[[AudioFrame], AudioFrame]) -> Operator[Any, Any]:
    """Apply ``fn`` to each audio frame and pass every other item unchanged: how a team
    puts its own processing (gain, a filter, a detector) into a chain."""

    def make(observer: Downstream, scheduler: abc.SchedulerBase) -> _Stage:
        stage = _Stage(observer, scheduler)

        def on_next(item: Any) -> None:
            stage.emit(fn(item) if isinstance(item, AudioFrame) else item)

        stage.on_next = on_next  # type: ignore[method-assign]
        return stage

    return _operator(make)


# -- decode ---------------------------------------------------------------------------------


class _MalformedLog:
    """Logs the first message of each kind of bad input; the rest are only counted."""

    def __init__(self) -> None:
        self._kinds: set[str] = set()

    def note(self, event: Malformed, exc: BaseException | None = None) -> None:
        if event.kind in self._kinds or len(self._kinds) >= _MAX_LOGGED_KINDS:
            return
        self._kinds.add(event.kind)
        log.warning(
            "stream %s: skipping malformed message (%s); more of this kind are only counted",
            event.stream_id or "?",
            event.detail,
            # Our own errors describe the input; anything else is a bug worth a trace.
            exc_info=None if exc is None or isinstance(exc, JitterlineError) else exc,
        )


def _malformed(exc: BaseException, arrival_s: float, stream_id: str) -> Malformed:
    detail = str(exc)
    kind = f"{type(exc).__name__}: {detail.split(':', maxsplit=1)[0][:60]}"
    return Malformed(kind=kind, detail=detail, arrival_s=arrival_s, stream_id=stream_id)


def receive(proto: Dialect, message: Message) -> list[Event]:
    """``proto.receive`` held to its contract: a protocol object (a plugin's, say) that
    raises anyway costs that one message, as a ``Malformed``, never the stream."""
    try:
        return proto.receive(message)
    except Exception as exc:
        # The decode stage logs it once per kind; the trace is for whoever debugs the dialect.
        log.debug("dialect %r raised on a message", getattr(proto, "name", "?"), exc_info=exc)
        return [_malformed(exc, message.arrival_s, "")]


def parse(factory: DialectFactory, *, role: Role = "client") -> Operator[Any, Any]:
    """Messages to events through a protocol object made per subscription (a replay, a
    test). A live shell owns its protocol object instead, because it must also send what
    the object answers, and feeds the events to ``decode`` itself."""

    def make(observer: Downstream, scheduler: abc.SchedulerBase) -> _Stage:
        stage = _Stage(observer, scheduler)
        proto = factory(role=role)

        def on_next(item: Any) -> None:
            if not isinstance(item, Message):
                stage.emit(item)  # the transport's events pass on
                return
            for event in receive(proto, item):
                stage.emit(event)
            proto.data_to_send()  # nobody to answer on a replay

        stage.on_next = on_next  # type: ignore[method-assign]
        return stage

    return _operator(make)


def decode(codecs: Registry[Codec], *, stream_id: str = "") -> Operator[Any, Any]:
    """Decode each frame's payload to int16 samples; a frame that cannot be decoded (an
    unknown codec, a bad length, no positive duration) becomes a counted ``Malformed``.

    Anything a codec raises is caught, not only ``CodecError``: a plugin's bug must cost
    one message, never the stream. ``stream_id`` names frames whose dialect left it empty.
    """

    def make(observer: Downstream, scheduler: abc.SchedulerBase) -> _Stage:
        return _Decode(observer, scheduler, codecs, stream_id)

    return _operator(make)


class _Decode(_Stage):
    def __init__(
        self,
        observer: Downstream,
        scheduler: abc.SchedulerBase,
        codecs: Registry[Codec],
        stream_id: str,
    ) -> None:
        super().__init__(observer, scheduler)
        self._codecs = codecs
        self._stream_id = stream_id
        self._logged = _MalformedLog()
        # A stream keeps its codec: look it up (name, registry, class check) once.
        self._codec_name = ""
        self._codec: Codec | None = None

    def on_next(self, item: Any) -> None:
        if isinstance(item, AudioFrame):
            try:
                item = self._decoded(item)
            except Exception as exc:
                item = _malformed(exc, item.arrival_s, item.stream_id or self._stream_id)
                self._logged.note(item, exc)
        elif isinstance(item, Malformed):
            self._logged.note(item)
        self.emit(item)

    def _decoded(self, frame: AudioFrame) -> AudioFrame:
        if not 0.0 < frame.duration_ms < math.inf:  # False for NaN too
            # The jitter buffer's clock advances by durations: refuse what would stall it.
            raise DialectError(
                f"frame {frame.seq} lasts duration_ms={frame.duration_ms}; it must be > 0"
            )
        codec = self._codec
        if codec is None or frame.codec != self._codec_name:
            codec = self._codecs.get(frame.codec)
            self._codec, self._codec_name = codec, frame.codec
        stream_id = self._stream_id
        if is_stream_codec(codec):  # decoded at playout, in seq order: see conceal()
            codec.check(frame.payload, frame.sample_rate, frame.channels)
            return evolve(frame, stream_id=frame.stream_id or stream_id)
        samples = codec.decode(frame.payload)
        if frame.samples is not None or (stream_id and not frame.stream_id):
            return evolve(frame, samples=samples, stream_id=frame.stream_id or stream_id)
        # The frame is fresh from its protocol object and nobody holds it yet: fill in its
        # samples where it stands instead of building it twice (even ``evolve`` costs
        # ~2.7 us, paid per frame and per stream).
        object.__setattr__(frame, "samples", samples)
        return frame


# -- per channel ----------------------------------------------------------------------------


def per_channel(
    chain: Callable[[str], Operator[Any, Any]],
    *,
    on_channel: Callable[[str], object] | None = None,
) -> Operator[Any, Any]:
    """Run ``chain(channel)`` once per channel of the connection and merge the outputs.

    Frames go to their channel's chain, created on the channel's first frame or when
    ``StreamOpened`` announces it; every other event goes to all channels (a late
    channel first gets the last ``StreamOpened``). A ``Malformed`` message belongs to no
    channel: it is counted once, in the first channel (held until one exists). A stream
    that never had a channel still ends with one, so its final snapshot says "no audio".
    ``on_channel`` is told each channel's name as its chain is created (in the order
    ``StreamOpened`` lists them, else as their first frames come).
    """

    def make(observer: Downstream, scheduler: abc.SchedulerBase) -> _Stage:
        return _Channels(observer, scheduler, chain, on_channel)

    return _operator(make)


class _Channels(_Stage):
    def __init__(
        self,
        observer: Downstream,
        scheduler: abc.SchedulerBase,
        chain: Callable[[str], Operator[Any, Any]],
        on_channel: Callable[[str], object] | None,
    ) -> None:
        super().__init__(observer, scheduler)
        self._chain = chain
        self._on_channel = on_channel
        self._inputs: dict[str, Relay] = {}
        self._open = 0
        self._opened: StreamOpened | None = None
        self._pending: list[Malformed] = []
        self._done = False

    def _channel(self, name: str) -> Relay:
        subject = self._inputs.get(name)
        if subject is not None:
            return subject
        subject = Relay()
        self._inputs[name] = subject
        self._open += 1
        if self._on_channel is not None:
            self._on_channel(name)
        output = _Listener(self.emit, self.on_error, self._channel_completed)
        self.disposables.add(attach(subject.pipe(self._chain(name)), output, self.scheduler))
        if self._opened is not None:
            subject.on_next(self._opened)
        for malformed in self._pending:
            subject.on_next(malformed)
        self._pending.clear()
        return subject

    def on_next(self, item: Any) -> None:
        if isinstance(item, AudioFrame):
            self._channel(item.channel).on_next(item)
        elif isinstance(item, Malformed):
            if self._inputs:
                next(iter(self._inputs.values())).on_next(item)
            else:
                self._pending.append(item)
        else:
            if isinstance(item, StreamOpened):
                self._opened = item
                for name in item.channels:
                    self._channel(name)
            for subject in list(self._inputs.values()):
                subject.on_next(item)

    def on_completed(self) -> None:
        if not self._inputs:
            self._channel("")
        self._done = True
        for subject in list(self._inputs.values()):
            subject.on_completed()

    def _channel_completed(self) -> None:
        self._open -= 1
        if self._done and self._open == 0:
            self.observer.on_completed()


# -- snapshots ------------------------------------------------------------------------------


def snapshots(
    config: PipelineConfig, *, clock: Clock | None = None, channel: str = ""
) -> Operator[Any, Any]:
    """Start a ``SnapshotRequest`` down the chain every ``stats_every_s``, and a final one
    when the input completes. Takes in what the transport says of the connection
    (``ConnectionStats`` items), which the snapshot carries."""

    def make(observer: Downstream, scheduler: abc.SchedulerBase) -> _Stage:
        return _Snapshots(observer, scheduler, config, clock, channel)

    return _operator(make)


class _Snapshots(_Stage):
    def __init__(
        self,
        observer: Downstream,
        scheduler: abc.SchedulerBase,
        config: PipelineConfig,
        clock: Clock | None,
        channel: str,
    ) -> None:
        super().__init__(observer, scheduler)
        self._clock = clock or scheduler_clock(scheduler)
        self._channel = channel
        self._stream_id = ""
        self._connection = ConnectionStats()
        self.disposables.add(_periodic(scheduler, config.stats_every_s, self._tick))

    def _tick(self) -> None:
        self.emit(SnapshotRequest(self._stats()))

    def _stats(self) -> Stats:
        return Stats(
            at_s=self._clock(),
            stream_id=self._stream_id,
            channel=self._channel,
            connection=self._connection,
        )

    def on_next(self, item: Any) -> None:
        if isinstance(item, AudioFrame):
            if not self._stream_id:
                self._stream_id = item.stream_id
        elif isinstance(item, ConnectionStats):
            self._connection = item
            return
        elif isinstance(item, StreamOpened):
            self._stream_id = item.stream_id
        self.emit(item)

    def on_completed(self) -> None:
        self.disposables.clear()
        self.emit(SnapshotRequest(self._stats(), final=True))
        self.observer.on_completed()


def _periodic(
    scheduler: abc.SchedulerBase, period_s: float, action: Callable[[], None]
) -> abc.DisposableBase:
    if not isinstance(scheduler, abc.PeriodicSchedulerBase):
        raise TypeError(f"{type(scheduler).__name__} cannot schedule periodic work")
    return scheduler.schedule_periodic(period_s, lambda _: action())


# -- the feedback loop: jitter buffer -> latency window -> adjuster -> target -> buffer -------


def feedback_loop(
    buffer: Callable[[Observable[float]], Operator[Any, Any]], *downstream: Operator[Any, Any]
) -> Operator[Any, Any]:
    """Chain ``buffer(targets)`` and ``downstream`` and feed every ``TargetDelay`` they
    emit back into ``targets``: the loop the design card draws, made visible.

    The targets subject is made per subscription. Rx delivers synchronously, so a target
    decided on a frame's arrival reaches the buffer before the next item does.
    """

    def operator(source: Observable[Any]) -> Observable[Any]:
        return _FeedbackLoop(source, buffer, downstream)

    return operator


class _FeedbackLoop(_Attachable):
    def __init__(
        self,
        source: Observable[Any],
        buffer: Callable[[Observable[float]], Operator[Any, Any]],
        downstream: tuple[Operator[Any, Any], ...],
    ) -> None:
        super().__init__()
        self._source = source
        self._buffer = buffer
        self._downstream = downstream

    def _attach(
        self, observer: Downstream, scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        targets = Relay()
        stages = (self._buffer(targets), *self._downstream, _feed(targets))
        chain: Observable[Any] = self._source.pipe(*stages)
        return attach(chain, observer, scheduler)


def _feed(targets: Relay) -> Operator[Any, Any]:
    """The loop's return path: a ``TargetDelay`` goes into ``targets``, the rest on."""

    def make(observer: Downstream, scheduler: abc.SchedulerBase) -> _Stage:
        stage = _Stage(observer, scheduler)
        emit = stage.emit
        send = targets.on_next

        def on_next(item: Any) -> None:
            if type(item) is TargetDelay:
                send(item.target_ms)
            else:
                emit(item)

        stage.on_next = on_next  # type: ignore[method-assign]
        return stage

    return _operator(make)


def jitter_buffer(
    config: PipelineConfig, *, targets: Observable[float], clock: Clock | None = None
) -> Operator[Any, Any]:
    """The jitter buffer: each frame in becomes an ``Arrival`` (its outcome) right away,
    and leaves as a played frame at its slot, from a timer set at the buffer's next due
    time. Protocol events steer it: ``StreamClosed`` drains (the sender finished),
    ``StreamPaused``/``StreamResumed`` make idle time, a reconnect re-anchors. The input
    completing cuts the stream: what is buffered is counted unplayed."""

    def make(observer: Downstream, scheduler: abc.SchedulerBase) -> _Stage:
        return _Buffer(observer, scheduler, config, targets, clock)

    return _operator(make)


class _Buffer(_Stage):
    def __init__(
        self,
        observer: Downstream,
        scheduler: abc.SchedulerBase,
        config: PipelineConfig,
        targets: Observable[float],
        clock: Clock | None,
    ) -> None:
        super().__init__(observer, scheduler)
        self._clock = clock or scheduler_clock(scheduler)
        self.buffer = JitterBuffer(
            target_delay_ms=config.start_buffer_ms,
            capacity_frames=config.capacity_frames,
            conceal="repeat" if config.conceal == "repeat" else "silence",  # "speech": conceal()
        )
        self._malformed = 0
        self._ended = False
        # The pending playout timer; replaced, not stacked (SerialDisposable's lock and
        # swap cost more than the timer on a path run once per frame).
        self._timer: abc.DisposableBase | None = None
        self._timer_due: float | None = None
        self.disposables.add(Disposable(self._cancel_timer))
        self.disposables.add(attach(targets, _Listener(self.buffer.set_target_delay)))

    def on_next(self, item: Any) -> None:
        if isinstance(item, AudioFrame):
            buffer = self.buffer
            emit = self.emit
            for played in buffer.push(item):
                emit(played)
            emit(Arrival(item, buffer.last_outcome, buffer.last_reanchored))
            if buffer.next_due_s != self._timer_due:
                self._schedule()
            return
        if isinstance(item, SnapshotRequest):
            self.emit(self._snapshot(item))
            return
        if isinstance(item, Malformed):
            self._malformed += 1
        elif isinstance(item, StreamClosed):
            self._ended = True
            self._emit_all(self.buffer.end(item.arrival_s))
        elif isinstance(item, StreamPaused):
            self._emit_all(self.buffer.pause(item.arrival_s))
        elif isinstance(item, StreamResumed):
            self._emit_all(self.buffer.resume(item.arrival_s))
        elif isinstance(item, ConnectionEvent) and item.kind == "connected":
            # A reconnect: the sender may resume or skip. Not counted, since a channel's
            # chain starts after the first connect; before any frame it changes nothing.
            self._emit_all(self.buffer.discontinuity(item.at_s))
        self._schedule()
        self.emit(item)

    def _emit_all(self, frames: Iterable[AudioFrame]) -> None:
        for frame in frames:
            self.emit(frame)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.dispose()
            self._timer = None

    def _schedule(self) -> None:
        due = self.buffer.next_due_s
        if due == self._timer_due:
            return
        self._timer_due = due
        self._cancel_timer()
        if due is not None:
            delay_s = max(due - self._clock(), _MIN_TIMER_S)
            self._timer = self.scheduler.schedule_relative(delay_s, self._fire)

    def _fire(self, _: abc.SchedulerBase, __: Any = None) -> None:
        self._timer = self._timer_due = None
        emit = self.emit
        for frame in self.buffer.pop_due(self._clock()):
            emit(frame)
        self._schedule()

    def _snapshot(self, request: SnapshotRequest) -> SnapshotRequest:
        now = request.stats.at_s
        if request.final:
            self._settle(now)
        counts = self.buffer.counts()
        frames = evolve(
            counts, received=counts.received + self._malformed, malformed=self._malformed
        )
        buffer = self.buffer.stats(request.stats.buffer)  # level, waits, idle time
        return evolve(request, stats=evolve(request.stats, frames=frames, buffer=buffer))

    def _settle(self, now: float) -> None:
        """At the end: a stream its sender ended plays out every slot it still holds
        (their times may lie past ``now``); a cut one counts them unplayed."""
        self._cancel_timer()
        if self._ended:
            due = self.buffer.next_due_s
            while due is not None:
                self._emit_all(self.buffer.pop_due(due))
                due = self.buffer.next_due_s
        self._emit_all(self.buffer.close(now))


def conceal(config: PipelineConfig, codecs: Registry[Codec]) -> Operator[Any, Any]:
    """Right after the jitter buffer: frames of a codec with state (Opus) are decoded here,
    in playout order, with the codec's own concealment for a missing one; with
    ``config.conceal == "speech"`` a PCM stream's concealed frames become a faded
    pitch-period repeat (``jitterline.concealment``). Arrivals are watched for the payloads
    the buffer holds, whose in-band FEC can stand in for the frame before them."""

    def make(observer: Downstream, scheduler: abc.SchedulerBase) -> _Stage:
        stage = _Stage(observer, scheduler)
        playout = PlayoutDecoder(
            codecs, speech=config.conceal == "speech", capacity_frames=config.capacity_frames
        )

        emit = stage.emit

        def on_next(item: Any) -> None:
            if isinstance(item, Arrival):
                if item.outcome == "buffered":
                    playout.arrived(item.frame)
            elif isinstance(item, AudioFrame) and item.playout_s is not None:
                item = playout.play(item)
            emit(item)

        stage.on_next = on_next  # type: ignore[method-assign]
        return stage

    return _operator(make)


def latency_window(config: PipelineConfig) -> Operator[Any, Any]:
    """The latency window: measures each ``Arrival`` (RFC 3550 jitter, relative delay,
    server time) into an ``ArrivalMeasure`` for the adjuster, and takes RTT readings from
    pongs and the session's pings."""

    def make(observer: Downstream, scheduler: abc.SchedulerBase) -> _Stage:
        stage = _Stage(observer, scheduler)
        window = LatencyWindow(max_frames=config.window_frames, max_age_s=config.window_s)
        emit = stage.emit

        def on_next(item: Any) -> None:
            if isinstance(item, Arrival):
                emit(window.observe(item.frame, item.outcome, rebase=item.reanchored))
                return
            if isinstance(item, AudioFrame):  # played: the window measured it on arrival
                emit(item)
                return
            if isinstance(item, SnapshotRequest):
                now = item.stats.at_s
                item = evolve(item, stats=evolve(item.stats, latency=window.snapshot(now)))
            elif isinstance(item, Pong) and item.rtt_ms is not None:
                window.observe_rtt(item.rtt_ms, item.arrival_s)
            elif (
                isinstance(item, ConnectionEvent)
                and item.kind == "pong"
                and item.rtt_ms is not None
            ):
                window.observe_rtt(item.rtt_ms, item.at_s)
            emit(item)

        stage.on_next = on_next  # type: ignore[method-assign]
        return stage

    return _operator(make)


def adjust(
    config: PipelineConfig, policies: Registry[Callable[..., BufferPolicy]]
) -> Operator[Any, Any]:
    """The buffer-size adjuster: turns each ``ArrivalMeasure`` into the next target delay,
    emitted as a ``TargetDelay`` when it moved ``TARGET_STEP_MS`` or more from the last one
    sent (``feedback_loop`` hands it back to the buffer); played frames tell it about
    underruns."""

    def make(observer: Downstream, scheduler: abc.SchedulerBase) -> _Stage:
        stage = _Stage(observer, scheduler)
        policy = policies.get(config.buffer_policy)(target_ms=config.buffer_ms)
        adjuster = BufferAdjuster(
            policy,
            min_ms=config.min_buffer_ms,
            max_ms=config.max_buffer_ms,
            start_ms=config.start_buffer_ms,
        )
        last = [adjuster.target_ms]
        emit = stage.emit

        def decide(target_ms: float | None, at_s: float) -> None:
            if target_ms is not None and abs(target_ms - last[0]) >= TARGET_STEP_MS:
                last[0] = target_ms
                emit(TargetDelay(target_ms, at_s))

        def on_next(item: Any) -> None:
            if isinstance(item, ArrivalMeasure):
                decide(adjuster.observe(item), item.arrival_s)
                return
            if isinstance(item, AudioFrame) and item.playout_s is not None:
                emit(item)
                decide(adjuster.observe_played(item), item.playout_s)
                return
            if isinstance(item, SnapshotRequest):
                item = evolve(item, stats=evolve(item.stats, buffer=_buffer_stats(adjuster, item)))
            emit(item)

        stage.on_next = on_next  # type: ignore[method-assign]
        return stage

    return _operator(make)


def _buffer_stats(adjuster: BufferAdjuster, request: SnapshotRequest) -> BufferStats:
    """The adjuster's part (target, its extremes, the policy) over what the buffer
    filled in (level, waits, idle time)."""
    adjusted = adjuster.stats()
    return evolve(
        request.stats.buffer,
        target_ms=adjusted.target_ms,
        min_ms=adjusted.min_ms,
        max_ms=adjusted.max_ms,
        policy=adjusted.policy,
    )


# -- out of the chain -----------------------------------------------------------------------


def stats() -> Operator[Any, Any]:
    """Turn filled ``SnapshotRequest``s into ``Stats`` and drop the chain's working items
    (arrivals, measures): what leaves is played frames, snapshots and protocol events."""

    def make(observer: Downstream, scheduler: abc.SchedulerBase) -> _Stage:
        stage = _Stage(observer, scheduler)

        def on_next(item: Any) -> None:
            if isinstance(item, SnapshotRequest):
                stage.emit(item.stats)
            elif not isinstance(item, (Arrival, ArrivalMeasure, TargetDelay, ConnectionStats)):
                stage.emit(item)

        stage.on_next = on_next  # type: ignore[method-assign]
        return stage

    return _operator(make)


def sinks(host: PluginHost, *, dialect: str = "", channel: str = "") -> Operator[Any, Any]:
    """The plugin hooks, last in a channel chain; only played frames and ``Stats`` leave.

    Every hook call names its stream (``StreamInfo``: ids from ``StreamOpened``, the
    channel, the dialect); a sink keeps per-stream state under ``stream.key`` and forgets
    it in ``jitterline_stream_closed``. A verdict change raises an ``Alert``.
    """

    def make(observer: Downstream, scheduler: abc.SchedulerBase) -> _Stage:
        return _Sinks(observer, scheduler, host, dialect, channel)

    return _operator(make)


class _Sinks(_Stage):
    def __init__(
        self,
        observer: Downstream,
        scheduler: abc.SchedulerBase,
        host: PluginHost,
        dialect: str,
        channel: str,
    ) -> None:
        super().__init__(observer, scheduler)
        self.host = host
        self.info = StreamInfo(stream_id="", channel=channel, dialect=dialect)
        self.announced = False
        self.last: tuple[Stats, Diagnosis] | None = None

    def _announce(self) -> None:
        if not self.announced:
            self.announced = True
            self.host.notify("jitterline_stream_opened", stream=self.info)

    def on_next(self, item: Any) -> None:
        if isinstance(item, StreamOpened):
            self.info = evolve(
                self.info,
                stream_id=item.stream_id,
                session_id=item.stream_id,
                call_id=item.call_id,
                participant_id=item.participant_id,
            )
            self._announce()
        elif isinstance(item, AudioFrame):
            if item.stream_id and not self.info.stream_id:
                self.info = evolve(self.info, stream_id=item.stream_id)
            self._announce()
            self.host.notify("jitterline_frame_played", frame=item, stream=self.info)
            self.emit(item)
        elif isinstance(item, Stats):
            self._stats(item)
            self.emit(item)

    def _stats(self, stats: Stats) -> None:
        if not self.info.stream_id and stats.stream_id:
            self.info = evolve(self.info, stream_id=stats.stream_id)
        diagnosis = diagnose(stats)
        previous, self.last = self.last, (stats, diagnosis)
        self.host.notify("jitterline_stats", stats=stats, diagnosis=diagnosis, stream=self.info)
        if previous is not None and previous[1].verdict != diagnosis.verdict:
            alert = Alert(
                kind="verdict_changed",
                message=diagnosis.summary,
                at_s=stats.at_s,
                severity="info" if diagnosis.verdict == "healthy" else "warning",
                values=dict(diagnosis.evidence),
            )
            self.host.notify("jitterline_alert", alert=alert, stream=self.info)

    def on_completed(self) -> None:
        if self.last is not None:
            self._announce()
            stats, diagnosis = self.last
            self.host.notify(
                "jitterline_stream_closed",
                stream_id=self.info.stream_id,
                stats=stats,
                diagnosis=diagnosis,
                stream=self.info,
            )
        self.observer.on_completed()


# -- the default chain and the pipeline -----------------------------------------------------


def default_chain(
    config: PipelineConfig, host: PluginHost, *, clock: Clock | None = None
) -> Callable[[str], Operator[Any, Any]]:
    """The chain of the design card for one channel, as ``per_channel`` takes it."""

    def chain(channel: str) -> Operator[Any, Any]:
        return reactivex.compose(
            snapshots(config, clock=clock, channel=channel),
            feedback_loop(
                lambda targets: jitter_buffer(config, targets=targets, clock=clock),
                conceal(config, host.codecs),
                latency_window(config),
                adjust(config, host.policies),
            ),
            stats(),
            sinks(host, dialect=config.dialect, channel=channel),
        )

    return chain


@dataclass(slots=True)
class Pipeline:
    """A built pipeline: ``output`` is the cold observable of played frames interleaved with
    ``Stats`` snapshots, the final one of each channel last; ``finals`` collects those
    final snapshots as they come out (one per channel, in the order the channels were
    opened: as ``StreamOpened`` lists them, else as their first frames came).

    ``output`` may be subscribed more than once: each subscription is an independent run
    of the chain over its own subscription to the source.
    """

    host: PluginHost
    output: Observable[AudioFrame | Stats]
    clock: Clock
    config: PipelineConfig
    finals: list[tuple[Stats, Diagnosis]]

    def final(self) -> tuple[Stats, Diagnosis]:
        """The first channel's final snapshot and diagnosis, once ``output`` completed."""
        if not self.finals:
            raise RuntimeError("the pipeline has not completed; subscribe and run it first")
        return self.finals[0]


def build_pipeline(
    source: Observable[Any],
    *,
    scheduler: abc.SchedulerBase | None = None,
    config: PipelineConfig | None = None,
    host: PluginHost | None = None,
    clock: Clock | None = None,
    stream_id: str = "",
    parsed: bool = False,
    role: Role = "client",
    channel_chain: Callable[[str], Operator[Any, Any]] | None = None,
) -> Pipeline:
    """Chain parse -> decode -> per channel (the design card's chain) for one connection.

    ``source`` carries raw ``Message``s (a replay, a test), parsed by a new protocol
    object of ``config.dialect`` in our ``role`` (``client`` when we dialled out,
    ``server`` when the peer connected to us); a live shell that owns its protocol object
    passes its events instead with ``parsed=True``. ``channel_chain``
    replaces the default per-channel chain (see the module docstring).
    """
    config = config or PipelineConfig()
    host = host or PluginHost()
    if clock is None:
        if scheduler is None:
            raise ValueError("pass the scheduler (or a clock) the pipeline keeps time with")
        clock = scheduler_clock(scheduler)
    chain = channel_chain or default_chain(config, host, clock=clock)
    finals: list[tuple[Stats, Diagnosis]] = []
    ops: list[Operator[Any, Any]] = []
    if not parsed:
        ops.append(parse(host.dialects.get(config.dialect), role=role))
    channels: list[str] = []
    ops += [
        decode(host.codecs, stream_id=stream_id),
        per_channel(chain, on_channel=channels.append),
        _with_finals(finals, channels),
    ]
    output: Observable[Any] = source.pipe(*ops)
    return Pipeline(host=host, output=output, clock=clock, config=config, finals=finals)


def _with_finals(finals: list[tuple[Stats, Diagnosis]], channels: list[str]) -> Operator[Any, Any]:
    """Record each channel's last snapshot (the final one) as the output completes, in
    the order of ``channels`` (as ``per_channel`` created them), not in the order the
    snapshots came: the runtime does not keep channels' snapshot ticks in phase."""

    def make(observer: Downstream, scheduler: abc.SchedulerBase) -> _Stage:
        stage = _Stage(observer, scheduler)
        emit = stage.emit
        last: dict[str, Stats] = {}

        def on_next(item: AudioFrame | Stats) -> None:
            if type(item) is Stats:
                last[item.channel] = item
            emit(item)

        def on_completed() -> None:
            rank = {name: index for index, name in enumerate(channels)}
            ordered = sorted(last.values(), key=lambda stats: rank.get(stats.channel, len(rank)))
            finals.extend((stats, diagnose(stats)) for stats in ordered)
            observer.on_completed()

        stage.on_next = on_next  # type: ignore[method-assign]
        stage.on_completed = on_completed  # type: ignore[method-assign]
        return stage

    return _operator(make)

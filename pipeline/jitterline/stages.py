"""The stages as ReactiveX operators, and ``build_pipeline`` that chains them.

Each operator wraps one method of a ``StreamProcessor``; a team composing its own chain
uses them directly and puts its own operators between them::

    played = messages.pipe(
        stages.decode(proc),
        stages.audio(proc),
        ops.filter(lambda frame: frame.seq % 2 == 0),   # your operator here
        stages.measure(proc),
        stages.playout(proc, scheduler=scheduler, clock=clock),
        stages.snapshots(proc, scheduler=scheduler, clock=clock),
    )

Time: the scheduler decides *when* periodic work runs, ``clock`` says what time it is.
On virtual time both come from the scheduler (``scheduler_clock``); live, the clock is
the same monotonic clock the transport stamps arrivals with. Upstream calls and the
periodic ticks are serialised on the processor's lock, so downstream sees one sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable

from .diagnosis import Diagnosis, diagnose
from .errors import ConfigError
from .frames import Alert, AudioFrame, ConnectionEvent, Event, Message, Stats
from .plugins import PluginHost
from .stream import PipelineConfig, StreamProcessor

__all__ = [
    "Clock",
    "Pipeline",
    "audio",
    "build_pipeline",
    "decode",
    "measure",
    "playout",
    "scheduler_clock",
    "sinks",
    "snapshots",
]

Clock = Callable[[], float]
_In = TypeVar("_In")
_Out = TypeVar("_Out")
Operator = Callable[[Observable[_In]], Observable[_Out]]


def scheduler_clock(scheduler: abc.SchedulerBase) -> Clock:
    """The scheduler's own time in seconds: virtual time in tests and replays."""
    return lambda: scheduler.to_seconds(scheduler.now)


def _expand(fn: Callable[[_In], Iterable[_Out]]) -> Operator[_In, _Out]:
    """Map each item to zero or more items, synchronously and in order."""

    def operator(source: Observable[_In]) -> Observable[_Out]:
        def subscribe(
            observer: abc.ObserverBase[_Out], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            def on_next(item: _In) -> None:
                for out in fn(item):
                    observer.on_next(out)

            return source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=scheduler
            )

        return reactivex.create(subscribe)

    return operator


def decode(proc: StreamProcessor) -> Operator[Message, Event]:
    """Messages to events; malformed input becomes a counted ``Malformed`` event."""
    return _expand(proc.decode)


def audio(proc: StreamProcessor) -> Operator[Event, AudioFrame]:
    """Keep the audio frames; control events update the stream (id, RTT) here."""

    def route(event: Event) -> list[AudioFrame]:
        if isinstance(event, AudioFrame):
            return [event]
        proc.control(event)
        return []

    return _expand(route)


def measure(proc: StreamProcessor) -> Operator[AudioFrame, AudioFrame]:
    """Latency window and buffer-size adjuster; frames pass through unchanged."""
    return ops.map(proc.measure)


def _locked_periodic(
    proc: StreamProcessor,
    scheduler: abc.SchedulerBase,
    period_s: float,
    action: Callable[[], None],
) -> abc.DisposableBase:
    def run(_: Any) -> None:
        with proc.lock:
            action()

    if not isinstance(scheduler, abc.PeriodicSchedulerBase):
        raise TypeError(f"{type(scheduler).__name__} cannot schedule periodic work")
    return scheduler.schedule_periodic(period_s, run)


def playout(
    proc: StreamProcessor, *, scheduler: abc.SchedulerBase, clock: Clock
) -> Operator[AudioFrame, AudioFrame]:
    """The jitter buffer: frames leave at their playout time, on the tick cadence, and
    when the source completes the stream is closed (remaining frames count unplayed)."""

    def operator(source: Observable[AudioFrame]) -> Observable[AudioFrame]:
        def subscribe(
            observer: abc.ObserverBase[AudioFrame], _: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            def emit(frames: Iterable[AudioFrame]) -> None:
                for frame in frames:
                    observer.on_next(frame)

            def on_next(frame: AudioFrame) -> None:
                with proc.lock:
                    emit(proc.playout(frame))

            def on_completed() -> None:
                with proc.lock:
                    emit(proc.finish(clock()))
                    observer.on_completed()

            def on_error(error: Exception) -> None:
                with proc.lock:
                    emit(proc.finish(clock()))
                    observer.on_error(error)

            ticks = _locked_periodic(
                proc,
                scheduler,
                proc.config.tick_ms / 1000.0,
                lambda: emit(proc.tick(clock())),
            )
            upstream = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler)
            return CompositeDisposable(ticks, upstream)

        return reactivex.create(subscribe)

    return operator


def snapshots(
    proc: StreamProcessor, *, scheduler: abc.SchedulerBase, clock: Clock
) -> Operator[AudioFrame, AudioFrame | Stats]:
    """Interleave a ``Stats`` snapshot every ``stats_every_s`` with the played frames,
    and a final one (balanced counters) just before completion."""

    def operator(source: Observable[AudioFrame]) -> Observable[AudioFrame | Stats]:
        def subscribe(
            observer: abc.ObserverBase[AudioFrame | Stats], _: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            def on_completed() -> None:
                with proc.lock:
                    observer.on_next(proc.stats(clock()))
                    observer.on_completed()

            timer = _locked_periodic(
                proc,
                scheduler,
                proc.config.stats_every_s,
                lambda: None if proc.closed else observer.on_next(proc.stats(clock())),
            )
            upstream = source.subscribe(
                observer.on_next, observer.on_error, on_completed, scheduler=scheduler
            )
            return CompositeDisposable(timer, upstream)

        return reactivex.create(subscribe)

    return operator


class _Sinks:
    """Hands played frames and snapshots to the plugins, alerts when the verdict changes,
    and tells them the stream closed, with the final snapshot, on completion."""

    def __init__(self, proc: StreamProcessor, host: PluginHost) -> None:
        self.proc = proc
        self.host = host
        self.last: tuple[Stats, Diagnosis] | None = None

    def on_item(self, item: AudioFrame | Stats) -> None:
        if isinstance(item, AudioFrame):
            self.host.notify("jitterline_frame_played", frame=item)
            return
        diagnosis = diagnose(item)
        previous, self.last = self.last, (item, diagnosis)
        self.host.notify("jitterline_stats", stats=item, diagnosis=diagnosis)
        if previous is not None and previous[1].verdict != diagnosis.verdict:
            alert = Alert(
                kind="verdict_changed",
                message=diagnosis.summary,
                at_s=item.at_s,
                severity="info" if diagnosis.verdict == "healthy" else "warning",
                values=dict(diagnosis.evidence),
            )
            self.host.notify("jitterline_alert", alert=alert)

    def on_completed(self) -> None:
        if self.last is not None:
            stats, diagnosis = self.last
            self.host.notify(
                "jitterline_stream_closed",
                stream_id=self.proc.stream_id,
                stats=stats,
                diagnosis=diagnosis,
            )


def sinks(
    proc: StreamProcessor, host: PluginHost
) -> Operator[AudioFrame | Stats, AudioFrame | Stats]:
    """The plugin hooks as the chain's last stage; items pass through unchanged."""
    sink = _Sinks(proc, host)
    return ops.do_action(sink.on_item, on_completed=sink.on_completed)


@dataclass(slots=True)
class Pipeline:
    """A built pipeline: ``output`` is the cold observable of played frames interleaved
    with ``Stats`` snapshots (the final one last). Subscribe once."""

    processor: StreamProcessor
    host: PluginHost
    output: Observable[AudioFrame | Stats]
    clock: Clock

    def on_connection_event(self, event: ConnectionEvent) -> None:
        """Feed the session's lifecycle to the stream (RTT) and to the plugins."""
        with self.processor.lock:
            if event.kind == "pong" and event.rtt_ms is not None:
                self.processor.window.observe_rtt(event.rtt_ms, event.at_s)
        self.host.notify("jitterline_connection_event", event=event)

    def final(self) -> tuple[Stats, Diagnosis]:
        stats = self.processor.stats(self.clock())
        return stats, diagnose(stats)


def build_pipeline(
    messages: Observable[Message],
    *,
    scheduler: abc.SchedulerBase,
    config: PipelineConfig | None = None,
    host: PluginHost | None = None,
    clock: Clock | None = None,
    stream_id: str = "",
    insert: Mapping[str, Sequence[Operator[Any, Any]]] | None = None,
) -> Pipeline:
    """Chain decode -> measure/adjust -> jitter buffer -> snapshots -> plugin sinks.

    ``insert`` puts your operators after a named point: ``"decoded"`` (audio frames after
    decoding), ``"measured"`` (after the latency window) or ``"played"`` (frames and
    snapshots after the buffer, before the plugins).
    """
    config = config or PipelineConfig()
    host = host or PluginHost()
    clock = clock or scheduler_clock(scheduler)
    extra = dict(insert or {})
    unknown = set(extra) - {"decoded", "measured", "played"}
    if unknown:
        raise ConfigError(
            f"unknown insert point(s) {sorted(unknown)}; use decoded, measured or played"
        )
    proc = StreamProcessor(
        config,
        dialects=host.dialects,
        codecs=host.codecs,
        policies=host.policies,
        stream_id=stream_id,
    )

    def capture(message: Message) -> None:
        host.notify("jitterline_raw_message", message=message, stream_id=proc.stream_id)

    chain: list[Operator[Any, Any]] = [
        ops.do_action(capture),
        decode(proc),
        audio(proc),
        *extra.get("decoded", ()),
        measure(proc),
        *extra.get("measured", ()),
        playout(proc, scheduler=scheduler, clock=clock),
        snapshots(proc, scheduler=scheduler, clock=clock),
        *extra.get("played", ()),
        sinks(proc, host),
    ]
    output: Observable[AudioFrame | Stats] = messages.pipe(*chain)
    return Pipeline(processor=proc, host=host, output=output, clock=clock)

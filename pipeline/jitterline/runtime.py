"""One event loop for many streams: each connection's protocol object, pipeline, timers and
plugin hooks run on the I/O loop's single thread.

A ``Connection`` binds what one WebSocket needs: the protocol object (the shell feeds it
what arrived and sends what it answers), the pipeline (fed the object's events, with the
transport's lifecycle), the capture writer, the protocol's own timers and, for dialects
that talk back, the paced outbound audio (``outbound``). Shells differ
only in how bytes move: the dial-out ``Session`` (websocket-client sockets multiplexed on
the loop) and the inbound servers (``websockets``) both call ``receive``,
``connection_event`` and ``finish`` on the loop thread and give the connection a
``send`` and a ``close``.

Why one thread: every stage of every stream runs there, so the hot path takes no lock and
no stage can see another thread's half-done update (a snapshot iterating the latency
window while a frame is added to it was a real crash when each stream had a receive thread
and a tick thread). Threads and descriptors stay constant whatever the number of streams:
the loop, the I/O helper pool, one socket per stream. The price: anything that blocks on
the loop stalls every stream, which is why hooks must return quickly.

Time: ``RunClock`` gives seconds since the run started, quantised to the microsecond, the
resolution of a datetime-based virtual clock; a capture of a live run therefore replays
with the very same floats. At the end the clock is frozen, so the final snapshot of a live
run and of its replay are taken at the same instant.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy.typing as npt
from reactivex import abc
from reactivex.disposable import Disposable, SerialDisposable

from .capture import CaptureWriter
from .config import PipelineConfig
from .diagnosis import Diagnosis, diagnose
from .errors import ConfigError
from .frames import (
    AudioFrame,
    ConnectionEvent,
    ConnectionStats,
    Message,
    Stats,
    StreamClosed,
    StreamInfo,
    StreamOpened,
)
from .outbound import Outbound, Playback, frame_bytes_for
from .plugins import PluginHost
from .protocols import Dialect
from .schedulers import LoopScheduler
from .stages import Pipeline, Relay, build_pipeline, receive
from .transport import IOLoop, Session

__all__ = ["Connection", "RunClock", "Runtime", "tune_gc"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_CALL_TIMEOUT_S = 10.0


GC_THRESHOLDS = (20_000, 50, 100)


def tune_gc() -> None:
    """Make the garbage collector's pauses rare in a process that serves many streams.

    CPython collects the young generation every 700 net allocations of containers, and
    now and then everything, at a cost that grows with all that is alive: at 75 streams a
    full collection stopped the event loop for 28 ms, longer than a frame, which every
    stream then saw as lag (``python -m benchmarks sessions``). What start-up built (imports,
    plugins, the loop) is frozen out of collection for good, young collections come every
    20 000 allocations and full ones a hundred times rarer than the default (the cyclic
    garbage of ended streams still goes, minutes later). The CLI's stream commands call
    this; a library user running a server calls it once after start-up.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class RunClock:
    """Monotonic seconds since construction, rounded to microseconds; can be frozen."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._t0 = monotonic()
        self._frozen: float | None = None

    def __call__(self) -> float:
        if self._frozen is not None:
            return self._frozen
        # Whole microseconds over 1e6: the float a microsecond virtual clock gives for the
        # same instant, as round(x, 6) is, without its decimal conversion (~0.5 us a call,
        # and the clock is read several times a frame).
        return round((self._monotonic() - self._t0) * 1_000_000) / 1_000_000

    def freeze(self) -> float:
        """Stop the clock now; returns the instant it stopped at."""
        if self._frozen is None:
            self._frozen = self()
        return self._frozen


class Runtime:
    """The process's streams on one loop: build connections, run work on the loop thread.

    ``ioloop`` defaults to the process-wide I/O loop the dial-out sessions use. Everything
    that touches a connection must run on the loop thread: shells already do; other
    threads (the CLI's main thread) go through ``call``.
    """

    def __init__(
        self,
        host: PluginHost,
        *,
        ioloop: IOLoop | None = None,
        clock: RunClock | None = None,
    ) -> None:
        self.host = host
        self.ioloop = ioloop or IOLoop.shared()
        self.clock = clock or RunClock()
        self.scheduler: abc.SchedulerBase = LoopScheduler(self.ioloop.loop)

    def call(self, fn: Callable[[], _T], timeout_s: float = _CALL_TIMEOUT_S) -> _T:
        """Run ``fn`` on the loop thread and wait for its result."""
        future: Future[_T] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.ioloop.loop.call_soon_threadsafe(run)
        return future.result(timeout_s)

    def dial(
        self,
        url: str,
        proto: Dialect,
        config: PipelineConfig,
        *,
        record: CaptureWriter | None = None,
        on_item: Callable[[AudioFrame | Stats], None] | None = None,
        on_event: Callable[[ConnectionEvent], None] | None = None,
        **session_options: Any,
    ) -> tuple[Connection, Session]:
        """A dial-out stream: a ``Session`` on this runtime's loop feeding a new
        connection; ``session_options`` go to ``Session`` (tokens, max_attempts, ...).
        Call from any thread; start the session to connect."""
        sessions: list[Session] = []

        def send(data: str | bytes) -> bool:
            return sessions[0].send(data)

        def close() -> None:
            sessions[0].close(0.0)

        connection = self.call(
            lambda: self.connect(
                proto,
                config,
                send=send,
                close=close,
                stream_id=getattr(proto, "stream_id", ""),
                record=record,
                on_item=on_item,
            )
        )

        def events(event: ConnectionEvent) -> None:
            connection.connection_event(event, sessions[0].connection_stats())
            if on_event is not None:
                on_event(event)

        session = Session(
            url,
            dialect=proto,
            on_message=connection.receive,
            on_event=events,
            clock=self.clock,
            ioloop=self.ioloop,
            **session_options,
        )
        sessions.append(session)
        return connection, session

    def connect(
        self,
        proto: Dialect,
        config: PipelineConfig,
        *,
        send: Callable[[str | bytes], object],
        close: Callable[[], object],
        stream_id: str = "",
        record: CaptureWriter | None = None,
        on_item: Callable[[AudioFrame | Stats], None] | None = None,
    ) -> Connection:
        """A new connection's pipeline, subscribed on the loop; call on the loop thread."""
        return Connection(
            self,
            proto,
            config,
            send=send,
            close=close,
            stream_id=stream_id,
            record=record,
            on_item=on_item,
        )


@dataclass(frozen=True, slots=True)
class Finished:
    """A connection's end: the final snapshot and diagnosis of each of its channels."""

    finals: tuple[tuple[Stats, Diagnosis], ...]

    @property
    def primary(self) -> tuple[Stats, Diagnosis]:
        """The first channel's (the only one for single-channel dialects)."""
        return self.finals[0]


class Connection:
    """One WebSocket's protocol object and pipeline on the runtime's loop.

    ``info`` names the connection (ids learned from ``StreamOpened``, channel empty);
    ``opened`` is that event itself (media, custom parameters, ``probe``), None until it
    came; ``finished`` holds the final snapshots once ``finish`` ran or the pipeline
    completed on its own.
    """

    def __init__(
        self,
        runtime: Runtime,
        proto: Dialect,
        config: PipelineConfig,
        *,
        send: Callable[[str | bytes], object],
        close: Callable[[], object],
        stream_id: str,
        record: CaptureWriter | None,
        on_item: Callable[[AudioFrame | Stats], None] | None,
    ) -> None:
        self.runtime = runtime
        self.proto = proto
        self.info = StreamInfo(stream_id=stream_id, dialect=config.dialect)
        self._send = send
        self._close = close
        self._record = record
        self._on_item = on_item
        self._subject = Relay()
        self._timer = SerialDisposable()
        self._timer_due: float | None = None
        self._closing = False
        self.opened: StreamOpened | None = None
        self.finished: Finished | None = None
        self._outbound: Outbound | None = None
        self.pipeline: Pipeline = build_pipeline(
            self._subject,
            config=config,
            host=runtime.host,
            clock=runtime.clock,
            stream_id=stream_id,
            parsed=True,
        )
        self._subscription = self.pipeline.output.subscribe(
            self._item, self._failed, self._completed, scheduler=runtime.scheduler
        )

    # -- fed by the shell, on the loop thread ---------------------------------------------

    def receive(self, message: Message) -> None:
        """A message arrived: record it, let the protocol object parse it, run the events
        through the pipeline, then send what the protocol answered."""
        if self._record is not None:
            self._record.message(message)
        self.runtime.host.notify(
            "jitterline_raw_message",
            message=message,
            stream_id=self.info.stream_id,
            stream=self.info,
        )
        for event in receive(self.proto, message):
            if isinstance(event, StreamOpened):
                self.opened = event
                self.info = replace(
                    self.info,
                    stream_id=event.stream_id,
                    session_id=event.stream_id,
                    call_id=event.call_id,
                    participant_id=event.participant_id,
                )
            self._subject.on_next(event)
            if self._outbound is not None:
                self._outbound.event(event)
            if isinstance(event, StreamOpened):
                self._outbound_ready(event)
        self.flush()

    def connection_event(self, event: ConnectionEvent, stats: ConnectionStats | None) -> None:
        """The transport's lifecycle: to the capture, the plugins and the pipeline (a
        reconnect re-anchors the buffer, a pong is an RTT reading)."""
        if self._record is not None:
            self._record.event(event)
        self.runtime.host.notify("jitterline_connection_event", event=event, stream=self.info)
        self._subject.on_next(event)
        if stats is not None:
            self._subject.on_next(stats)

    def connection_lost(self) -> None:
        for event in self.proto.connection_lost(self.runtime.clock()):
            self._subject.on_next(event)

    def end(self, reason: str) -> None:
        """End the session the protocol's way (drain, shutdown)."""
        self.proto.end(reason, self.runtime.clock())
        self.flush()

    def flush(self) -> None:
        """Send what the protocol object wants sent; close once it is done."""
        for data in self.proto.data_to_send():
            self._send(data)
        if self.proto.close_expected() and not self._closing:
            self._closing = True
            self._close()
        self._schedule_timer()

    def finish(
        self, connection: ConnectionStats | None = None, *, ended: bool = False
    ) -> Finished:
        """The stream is over: complete the pipeline; the final snapshot of each channel
        comes out now, with ``connection`` as the transport's last word. ``ended``: the
        peer ended it outside the protocol's messages (appfoundry's 1000 close), so the
        buffer drains what it holds; otherwise it was cut and that counts unplayed."""
        if self.finished is None:
            self._timer.disposable = Disposable()
            if self._outbound is not None:
                self._outbound.close()
            if connection is not None:
                self._subject.on_next(connection)
            if ended:
                at_s = self.runtime.clock()
                self._subject.on_next(StreamClosed(self.info.stream_id, at_s, "ended"))
            self._subject.on_completed()
        assert self.finished is not None, "the pipeline did not complete"
        return self.finished

    # -- audio back to the peer (Audio Connector, Twilio) ------------------------------------

    @property
    def outbound(self) -> Outbound:
        """The audio this connection sends back, paced on the loop (``jitterline.outbound``).
        ``ConfigError`` for a dialect that takes none (AudioHook is monitor-only) and
        before the stream opened."""
        if self._outbound is None:
            frame_bytes_for(self.proto)
            if self.opened is None:
                raise ConfigError(
                    f"stream {self.info.stream_id!r} has not opened yet; send audio from "
                    "the jitterline_outbound_ready hook, which runs once it has"
                )
            self._outbound = Outbound(
                self.proto,
                stream=self.info,
                clock=self.runtime.clock,
                scheduler=self.runtime.scheduler,
                flush=self.flush,
            )
        return self._outbound

    def send_audio(self, pcm: bytes | npt.ArrayLike, rate: int = 8000) -> Playback:
        """Play mono int16 ``pcm`` (samples or little-endian bytes) at ``rate`` Hz to the
        peer, after what is already queued; see ``Outbound.send``."""
        return self.outbound.send(pcm, rate)

    def _outbound_ready(self, opened: StreamOpened) -> None:
        """Hand plugins the outbound audio of a call that can take it (not a probe); none
        is built while no plugin asks for it, as most sessions of a monitoring server."""
        if opened.probe or self._outbound is not None:
            return
        if not self.runtime.host.pm.hook.jitterline_outbound_ready.get_hookimpls():
            return
        try:
            outbound = self.outbound
        except ConfigError:
            return
        self.runtime.host.notify("jitterline_outbound_ready", stream=self.info, outbound=outbound)

    # -- the protocol's own timers (pings, handshake deadlines) ----------------------------

    def _schedule_timer(self) -> None:
        due = self.proto.next_deadline_s()
        if due == self._timer_due:
            return
        self._timer_due = due
        if due is None:
            self._timer.disposable = Disposable()
            return
        delay_s = max(due - self.runtime.clock(), 1e-6)
        self._timer.disposable = self.runtime.scheduler.schedule_relative(delay_s, self._fire)

    def _fire(self, _: abc.SchedulerBase, __: Any = None) -> None:
        self._timer_due = None
        for event in self.proto.timer(self.runtime.clock()):
            self._subject.on_next(event)
        self.flush()

    # -- the pipeline's output ---------------------------------------------------------------

    def _item(self, item: AudioFrame | Stats) -> None:
        if self._on_item is not None:
            self._on_item(item)

    def _failed(self, error: Exception) -> None:
        log.error("stream %s: pipeline failed: %s", self.info.stream_id, error, exc_info=error)
        self._completed()

    def _completed(self) -> None:
        finals = tuple(self.pipeline.finals)
        if not finals:
            stats = Stats(at_s=self.runtime.clock(), stream_id=self.info.stream_id)
            finals = ((stats, diagnose(stats)),)
        self.finished = Finished(finals)

"""Glue for the commands: a live ``Session`` feeding a pipeline, and the replay of a capture.

Live: the session's receive thread pushes each ``Message`` into a ``Subject`` that the
pipeline reads; the playout ticks and snapshots run on an ``EventLoopScheduler`` thread.
Both are stamped by one ``RunClock``: seconds since the run started, quantised to the
microsecond. That quantum is what a ``HistoricalScheduler`` (datetime-based) can
represent, so the replay of a capture sees the very same floats the live run saw, and
arrives at the same counters and numbers.

The end of a live run: the session is closed first (no message can arrive after), the
clock is frozen at that instant ``E`` (so every reading during the final snapshot is
``E``, exactly what the replay's virtual clock reads), the connection counters are copied
into the processor, and only then does the subject complete, which makes the pipeline
emit the final, balanced snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from reactivex import abc
from reactivex.scheduler import EventLoopScheduler, HistoricalScheduler
from reactivex.subject import Subject

from .capture import CaptureEnd, CaptureHeader, CaptureRecord, CaptureWriter, read_capture
from .diagnosis import Diagnosis, diagnose
from .errors import ConfigError, JitterlineError
from .frames import AudioFrame, ConnectionEvent, ConnectionStats, Message, Stats
from .plugins import PluginHost
from .stages import Pipeline, build_pipeline, scheduler_clock
from .status import StatusDisplay
from .stream import PipelineConfig
from .transport import BackoffPolicy, Session, SessionDiagnostics, TokenProvider

__all__ = ["EPOCH", "RunClock", "RunResult", "SessionOptions", "replay", "run_live"]

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
"""Where a replay's virtual clock starts: capture time ``t`` is scheduled at EPOCH + t."""

_WAIT_SLICE_S = 0.25
_CLOSE_TIMEOUT_S = 5.0


class RunClock:
    """Monotonic seconds since construction, rounded to microseconds; can be frozen.

    Rounding keeps every reading representable on a datetime-based virtual clock (see the
    module docstring); freezing makes the end of a run one instant.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._t0 = monotonic()
        self._frozen: float | None = None

    def __call__(self) -> float:
        if self._frozen is not None:
            return self._frozen
        return round(self._monotonic() - self._t0, 6)

    def freeze(self) -> float:
        """Stop the clock now; returns the instant it stopped at."""
        if self._frozen is None:
            self._frozen = self()
        return self._frozen


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: the final snapshot and its diagnosis, the session's fatal error
    (None: a clean end), whether Ctrl-C stopped it, and how many messages arrived."""

    stats: Stats
    diagnosis: Diagnosis
    outcome: JitterlineError | None = None
    interrupted: bool = False
    messages: int = 0
    session: SessionDiagnostics | None = None


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """The session settings the commands expose."""

    url: str
    tokens: TokenProvider | None = None
    max_attempts: int | None = 10
    allow_insecure: bool = False
    duration_s: float | None = None
    ping_interval_s: float = 5.0
    backoff: BackoffPolicy = BackoffPolicy()  # noqa: RUF009 (frozen, so shared is safe)


class _Tail:
    """Keeps the last snapshot the pipeline emitted and feeds the status display."""

    def __init__(self, status: StatusDisplay | None) -> None:
        self.last: Stats | None = None
        self.done = threading.Event()
        self._status = status

    def on_next(self, item: AudioFrame | Stats) -> None:
        if isinstance(item, Stats):
            self.last = item
            if self._status is not None:
                self._status.stats(item)

    def on_error(self, error: Exception) -> None:
        log.error("pipeline failed: %s", error)
        self.done.set()

    def on_completed(self) -> None:
        self.done.set()


def run_live(
    options: SessionOptions,
    *,
    config: PipelineConfig,
    host: PluginHost,
    status: StatusDisplay | None = None,
    record: Path | None = None,
    source: dict[str, Any] | None = None,
    clock: RunClock | None = None,
) -> RunResult:
    """Connect, stream until the peer ends, ``duration_s`` passes or Ctrl-C, then shut
    down cleanly and return the final numbers. Never raises for a session failure: it
    is in ``RunResult.outcome``; a bad option (``ConfigError``) raises before any thread
    starts."""
    clock = clock or RunClock()
    scheduler = EventLoopScheduler()
    run = _LiveRun(config, host, clock, scheduler, status)
    session = run.session(options)
    run.writer = _writer(record, config, source)
    subscription = run.pipeline.output.subscribe(
        run.tail.on_next, run.tail.on_error, run.tail.on_completed
    )
    interrupted = False
    try:
        if status is not None:
            status.start()
        session.start()
        interrupted = _wait(session, clock, options.duration_s)
    finally:
        session.close(_CLOSE_TIMEOUT_S)
        result = run.finish(session, interrupted)
        subscription.dispose()
        scheduler.dispose()
        if status is not None:
            status.stop()
        if options.tokens is not None:
            options.tokens.close()
    return result


def _writer(
    record: Path | None, config: PipelineConfig, source: dict[str, Any] | None
) -> CaptureWriter | None:
    if record is None:
        return None
    header = CaptureHeader(
        dialect=config.dialect,
        config=config,
        source=dict(source or {}),
        started_wall_s=time.time(),
    )
    return CaptureWriter(record, header)


class _LiveRun:
    """One live run's parts and the session callbacks that feed them."""

    def __init__(
        self,
        config: PipelineConfig,
        host: PluginHost,
        clock: RunClock,
        scheduler: abc.SchedulerBase,
        status: StatusDisplay | None,
    ) -> None:
        self.subject: Subject[Message] = Subject()
        self.pipeline = build_pipeline(
            self.subject, scheduler=scheduler, config=config, host=host, clock=clock
        )
        self.clock = clock
        self.status = status
        self.tail = _Tail(status)
        self.writer: CaptureWriter | None = None
        self._session: Session | None = None

    def on_message(self, message: Message) -> None:
        if self.writer is not None:
            self.writer.message(message)
        self.subject.on_next(message)

    def on_event(self, event: ConnectionEvent) -> None:
        if self.writer is not None:
            self.writer.event(event)
        self.pipeline.on_connection_event(event)
        if self._session is not None:  # live snapshots show reconnects as they happen
            self._copy_connection(self._session)
        if self.status is not None:
            self.status.event(event)

    def _copy_connection(self, session: Session) -> ConnectionStats:
        connection = session.diagnostics().connection_stats()
        with self.pipeline.processor.lock:
            self.pipeline.processor.connection = connection
        return connection

    def session(self, options: SessionOptions) -> Session:
        self._session = Session(
            options.url,
            dialect=self.pipeline.processor.dialect,
            on_message=self.on_message,
            tokens=options.tokens,
            on_event=self.on_event,
            clock=self.clock,
            max_attempts=options.max_attempts,
            allow_insecure=options.allow_insecure,
            ping_interval_s=options.ping_interval_s,
            backoff=options.backoff,
        )
        return self._session

    def finish(self, session: Session, interrupted: bool) -> RunResult:
        """See the module docstring: session closed, clock frozen, counters copied, then
        the stream completes and the final snapshot comes out."""
        end_s = self.clock.freeze()
        connection = self._copy_connection(session)
        processor = self.pipeline.processor
        if self.writer is not None:
            self.writer.end(end_s, connection)
            self.writer.close()
        self.subject.on_completed()
        self.tail.done.wait(_CLOSE_TIMEOUT_S)
        stats = self.tail.last if self.tail.last is not None else processor.stats(end_s)
        return RunResult(
            stats=stats,
            diagnosis=diagnose(stats),
            outcome=session.outcome,
            interrupted=interrupted,
            messages=session.diagnostics().messages_in,
            session=session.diagnostics(),
        )


def _wait(session: Session, clock: RunClock, duration_s: float | None) -> bool:
    """Until the session ends or the duration is over; True if Ctrl-C cut it short.

    Waits in slices so that SIGINT (a KeyboardInterrupt in this, the main thread) is
    seen promptly.
    """
    try:
        while not session.wait(_WAIT_SLICE_S):
            if duration_s is not None and clock() >= duration_s:
                return False
    except KeyboardInterrupt:
        log.info("interrupted; shutting down cleanly")
        return True
    return False


# -- replay ---------------------------------------------------------------------------------


def replay(
    path: Path,
    *,
    host: PluginHost,
    overrides: dict[str, Any] | None = None,
) -> tuple[CaptureHeader, RunResult]:
    """Run a capture through the pipeline on virtual time, as fast as the CPU allows.

    ``overrides`` replaces recorded ``PipelineConfig`` fields (a what-if: "would a fixed
    120 ms buffer have done better?"); without them the result equals the live run's.
    """
    header, records = read_capture(path)
    config = replace(header.config, **(overrides or {}))
    scheduler = HistoricalScheduler(EPOCH)
    subject: Subject[Message] = Subject()
    pipeline = build_pipeline(
        subject,
        scheduler=scheduler,
        config=config,
        host=host,
        clock=scheduler_clock(scheduler),
    )
    tail = _Tail(None)
    subscription = pipeline.output.subscribe(tail.on_next, tail.on_error, tail.on_completed)
    feeder = _Feeder(records, pipeline, subject, scheduler)
    feeder.schedule_next()
    scheduler.start()
    subscription.dispose()
    if tail.last is None:
        raise ConfigError(f"capture {str(path)!r} did not complete; it may be truncated")
    stats = tail.last
    return header, RunResult(stats=stats, diagnosis=diagnose(stats), messages=feeder.messages)


class _Feeder:
    """Schedules capture records one at a time at EPOCH + t, so a long capture streams
    through the virtual clock without being held in memory; ends the stream at the
    ``end`` record (or the last one)."""

    def __init__(
        self,
        records: Iterator[CaptureRecord],
        pipeline: Pipeline,
        subject: Subject[Message],
        scheduler: HistoricalScheduler,
    ) -> None:
        self._records = records
        self._pipeline = pipeline
        self._subject = subject
        self._scheduler = scheduler
        self._last_s = 0.0
        self.messages = 0

    def schedule_next(self) -> None:
        record: CaptureRecord | None = next(self._records, None)
        if record is None:
            self._scheduler.schedule_absolute(self._at(self._last_s), self._end_action(None))
            return
        at_s = record.arrival_s if isinstance(record, Message) else record.at_s
        self._last_s = max(self._last_s, at_s)
        if isinstance(record, CaptureEnd):
            self._scheduler.schedule_absolute(self._at(at_s), self._end_action(record))
            return
        self._scheduler.schedule_absolute(self._at(at_s), self._deliver_action(record))

    @staticmethod
    def _at(seconds: float) -> datetime:
        return EPOCH + timedelta(seconds=seconds)

    def _deliver_action(self, record: Message | ConnectionEvent) -> Any:
        def action(_: abc.SchedulerBase, __: Any = None) -> None:
            if isinstance(record, Message):
                self.messages += 1
                self._subject.on_next(record)
            else:
                self._pipeline.on_connection_event(record)
            self.schedule_next()

        return action

    def _end_action(self, end: CaptureEnd | None) -> Any:
        def action(_: abc.SchedulerBase, __: Any = None) -> None:
            connection = end.connection if end is not None else ConnectionStats()
            with self._pipeline.processor.lock:
                self._pipeline.processor.connection = connection
            self._subject.on_completed()
            self._scheduler.stop()

        return action

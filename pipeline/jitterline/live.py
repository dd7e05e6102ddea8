"""Glue for the commands: a live dial-out stream on the runtime, and the replay of a capture.

Live: a ``Session`` (websocket-client, multiplexed on the I/O loop) hands each message to a
``runtime.Connection``, whose protocol object parses it and whose pipeline runs on the
same loop thread; the main thread only waits. Both the session and the pipeline read one
``RunClock``, so a capture of the run replays with the same floats.

The end of a live run: the session is closed first (no message can arrive after), then on
the loop thread the clock is frozen at that instant ``E`` (every reading during the final
snapshot is ``E``, exactly what the replay's virtual clock reads), the capture gets its
``end`` line, and the connection finishes with the session's last counters: the final,
balanced snapshot of each channel comes out.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reactivex import abc

from .capture import CaptureEnd, CaptureHeader, CaptureRecord, CaptureWriter, read_capture
from .config import PipelineConfig
from .diagnosis import Diagnosis
from .errors import ConfigError, JitterlineError
from .frames import AudioFrame, ConnectionEvent, ConnectionStats, Message, Stats, StreamClosed
from .plugins import PluginHost
from .runtime import Connection, RunClock, Runtime
from .schedulers import EPOCH, VirtualScheduler
from .stages import Relay, build_pipeline, scheduler_clock
from .status import StatusDisplay
from .transport import BackoffPolicy, Session, SessionDiagnostics, TokenProvider

__all__ = ["EPOCH", "RunClock", "RunResult", "SessionOptions", "replay", "run_live"]

log = logging.getLogger(__name__)


_WAIT_SLICE_S = 0.25
_CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: the final snapshot and its diagnosis (of the first channel; every
    channel's are in ``channels``), the session's fatal error (None: a clean end), whether
    Ctrl-C stopped it, and how many messages arrived."""

    stats: Stats
    diagnosis: Diagnosis
    outcome: JitterlineError | None = None
    interrupted: bool = False
    messages: int = 0
    session: SessionDiagnostics | None = None
    channels: tuple[tuple[Stats, Diagnosis], ...] = ()
    plugin_failures: dict[str, int] | None = None


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


def run_live(
    options: SessionOptions,
    *,
    config: PipelineConfig,
    host: PluginHost,
    status: StatusDisplay | None = None,
    record: Path | None = None,
    source: dict[str, Any] | None = None,
    runtime: Runtime | None = None,
) -> RunResult:
    """Connect, stream until the peer ends, ``duration_s`` passes or Ctrl-C, then shut
    down cleanly and return the final numbers. Never raises for a session failure: it
    is in ``RunResult.outcome``; a bad option (``ConfigError``) raises before connecting."""
    runtime = runtime or Runtime(host)
    clock = runtime.clock
    session_id = str(uuid.uuid4())
    writer = _writer(record, config, source)
    factory = host.dialects.get(config.dialect)
    try:
        proto = factory(role="client", session_id=session_id)
    except TypeError:  # a dialect with no session id of its own to give
        proto = factory(role="client")

    def on_item(item: AudioFrame | Stats) -> None:
        if status is not None and isinstance(item, Stats):
            status.stats(item)

    connection, session = runtime.dial(
        options.url,
        proto,
        config,
        record=writer,
        on_item=on_item,
        on_event=None if status is None else status.event,
        tokens=options.tokens,
        max_attempts=options.max_attempts,
        allow_insecure=options.allow_insecure,
        ping_interval_s=options.ping_interval_s,
        backoff=options.backoff,
        session_id=session_id,
    )
    interrupted = ended = False
    try:
        if status is not None:
            status.start()
        session.start()
        interrupted, ended = _wait(session, clock, options.duration_s)
    finally:
        session.close(_CLOSE_TIMEOUT_S)
        ended = ended and session.outcome is None  # the peer's clean end, not a failure
        result = runtime.call(
            lambda: _finish(
                connection, session, writer, clock, interrupted=interrupted, ended=ended
            )
        )
        if status is not None:
            status.stop()
        if options.tokens is not None:
            options.tokens.close()
    return result


def _finish(
    connection: Connection,
    session: Session,
    writer: CaptureWriter | None,
    clock: RunClock,
    *,
    interrupted: bool,
    ended: bool,
) -> RunResult:
    """See the module docstring: clock frozen, capture ended, pipeline completed (drained
    when the peer ended the stream, cut otherwise)."""
    end_s = clock.freeze()
    diagnostics = session.diagnostics()
    stats = diagnostics.connection_stats()
    if writer is not None:
        writer.end(end_s, stats, ended=ended)
        writer.close()
    finished = connection.finish(stats, ended=ended)
    final, diagnosis = finished.primary
    return RunResult(
        stats=final,
        diagnosis=diagnosis,
        outcome=session.outcome,
        interrupted=interrupted,
        messages=diagnostics.messages_in,
        session=diagnostics,
        channels=finished.finals,
        plugin_failures=connection.runtime.host.failures_by_plugin(),
    )


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


def _wait(session: Session, clock: RunClock, duration_s: float | None) -> tuple[bool, bool]:
    """Until the session ends or the duration is over: (Ctrl-C cut it short, the session
    ended by itself).

    Waits in slices so that SIGINT (a KeyboardInterrupt in this, the main thread) is
    seen promptly.
    """
    try:
        while not session.wait(_WAIT_SLICE_S):
            if duration_s is not None and clock() >= duration_s:
                return False, False
    except KeyboardInterrupt:
        log.info("interrupted; shutting down cleanly")
        return True, False
    return False, True


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
    scheduler = VirtualScheduler()
    subject = Relay()
    pipeline = build_pipeline(
        subject,
        scheduler=scheduler,
        config=config,
        host=host,
        clock=scheduler_clock(scheduler),
        role=header.role,
    )
    completed: list[bool] = []
    subscription = pipeline.output.subscribe(
        on_completed=lambda: completed.append(True), scheduler=scheduler
    )
    feeder = _Feeder(records, subject, scheduler)
    feeder.schedule_next()
    scheduler.start()
    subscription.dispose()
    if not completed or not pipeline.finals:
        raise ConfigError(f"capture {str(path)!r} did not complete; it may be truncated")
    stats, diagnosis = pipeline.finals[0]
    return header, RunResult(
        stats=stats,
        diagnosis=diagnosis,
        messages=feeder.messages,
        channels=tuple(pipeline.finals),
        plugin_failures=host.failures_by_plugin(),
    )


class _Feeder:
    """Schedules capture records one at a time at virtual time t, so a long capture streams
    through the virtual clock without being held in memory; ends the stream at the
    ``end`` record (or the last one) with the connection counters it carries."""

    def __init__(
        self,
        records: Iterator[CaptureRecord],
        subject: Relay,
        scheduler: VirtualScheduler,
    ) -> None:
        self._records = records
        self._subject = subject
        self._scheduler = scheduler
        self._last_s = 0.0
        self.messages = 0

    def schedule_next(self) -> None:
        record: CaptureRecord | None = next(self._records, None)
        if record is None:
            self._scheduler.schedule_absolute(self._last_s, self._end_action(None))
            return
        at_s = record.arrival_s if isinstance(record, Message) else record.at_s
        self._last_s = max(self._last_s, at_s)
        if isinstance(record, CaptureEnd):
            self._scheduler.schedule_absolute(at_s, self._end_action(record))
            return
        self._scheduler.schedule_absolute(at_s, self._deliver_action(record))

    def _deliver_action(self, record: Message | ConnectionEvent) -> Any:
        def action(_: abc.SchedulerBase, __: Any = None) -> None:
            if isinstance(record, Message):
                self.messages += 1
            self._subject.on_next(record)
            self.schedule_next()

        return action

    def _end_action(self, end: CaptureEnd | None) -> Any:
        def action(_: abc.SchedulerBase, __: Any = None) -> None:
            self._subject.on_next(end.connection if end is not None else ConnectionStats())
            if end is not None and end.ended:  # the peer ended it: drain, as live
                self._subject.on_next(StreamClosed("", end.at_s, "ended"))
            self._subject.on_completed()
            self._scheduler.stop()

        return action

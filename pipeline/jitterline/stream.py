"""One stream's stages as plain objects: decode, measure, adjust, play out, account.

``StreamProcessor`` is the sans-I/O heart of a pipeline: it owns the dialect, the latency
window, the adjuster and the jitter buffer of one stream, and the malformed counter the
buffer cannot see. It knows nothing of Rx, sockets or plugins; ``stages`` wraps it in
operators. Every method takes the time it should act at, so the same calls give the same
results on virtual time and live.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from . import checks
from .adjuster import BufferAdjuster, BufferPolicy
from .codecs import Codec
from .errors import ConfigError, DialectError, JitterlineError
from .frames import (
    AudioFrame,
    BufferStats,
    ConnectionStats,
    Event,
    Malformed,
    Message,
    Pong,
    Stats,
    StreamOpened,
)
from .jitterbuffer import JitterBuffer
from .latency import LatencyWindow
from .protocols import Dialect, DialectFactory
from .registry import Registry

__all__ = ["PipelineConfig", "StreamProcessor"]

log = logging.getLogger(__name__)

_MAX_LOGGED_KINDS = 64


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Everything that shapes one stream's processing; the CLI options map onto it.

    ``guard_ms`` holds periodic playout ticks that far behind the clock, so that a
    message stamped on the receive thread just before a tick is still filed before its
    slot is judged: with it, the played/late split depends only on arrival times, which
    is what lets a recorded stream replay to the same counters.
    """

    dialect: str = "appfoundry"
    buffer_policy: str = "adaptive"
    buffer_ms: float | None = None
    min_buffer_ms: float = 20.0
    max_buffer_ms: float = 1000.0
    window_frames: int = 500
    window_s: float = 10.0
    capacity_frames: int = 512
    conceal: Literal["silence", "repeat"] = "silence"
    tick_ms: float = 10.0
    stats_every_s: float = 1.0
    guard_ms: float = 20.0

    @property
    def start_buffer_ms(self) -> float:
        """The buffer target before the first frame: ``buffer_ms``, else NetEq's 80 ms."""
        if self.buffer_ms is not None:
            return self.buffer_ms
        return min(max(80.0, self.min_buffer_ms), self.max_buffer_ms)

    def __post_init__(self) -> None:
        positive = (
            ("min_buffer_ms", self.min_buffer_ms, "ms", "try 20"),
            ("window_s", self.window_s, "s", "try 10"),
            ("tick_ms", self.tick_ms, "ms", "try 10"),
            ("stats_every_s", self.stats_every_s, "s", "try 1"),
        )
        for name, value, unit, hint in positive:
            checks.number(name, value, low=0.0, above=True, unit=unit, hint=hint)
        if self.max_buffer_ms < self.min_buffer_ms:
            raise ConfigError(
                f"max_buffer_ms={self.max_buffer_ms} is below min_buffer_ms={self.min_buffer_ms}; "
                "raise --max-buffer-ms or lower --min-buffer-ms"
            )
        if self.buffer_ms is not None:
            checks.number(
                "buffer_ms",
                self.buffer_ms,
                low=self.min_buffer_ms,
                high=self.max_buffer_ms,
                unit="ms",
                hint="adjust --buffer-ms or the min/max bounds",
            )
        checks.number("guard_ms", self.guard_ms, low=0.0, unit="ms", hint="try 20")


class StreamProcessor:
    """The stages of one stream and its accounting.

    ``lock`` serialises the receive thread and the playout ticks in live runs; the Rx
    operators take it, a caller driving the processor by hand from one thread need not.
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        dialects: Registry[DialectFactory],
        codecs: Registry[Codec],
        policies: Registry[Callable[..., BufferPolicy]],
        stream_id: str = "",
    ) -> None:
        self.config = config
        self.stream_id = stream_id
        self.dialect: Dialect = dialects.get(config.dialect)()
        self.codecs = codecs
        policy = policies.get(config.buffer_policy)(target_ms=config.buffer_ms)
        self.adjuster = BufferAdjuster(
            policy,
            min_ms=config.min_buffer_ms,
            max_ms=config.max_buffer_ms,
            start_ms=config.start_buffer_ms,
        )
        self.window = LatencyWindow(max_frames=config.window_frames, max_age_s=config.window_s)
        self.buffer = JitterBuffer(
            target_delay_ms=self.adjuster.target_ms,
            capacity_frames=config.capacity_frames,
            conceal=config.conceal,
        )
        self._target_ms = self.adjuster.target_ms
        self.connection = ConnectionStats()
        self.lock = threading.RLock()
        self.malformed = 0
        self.closed = False
        self._logged_kinds: set[str] = set()

    # -- decode -------------------------------------------------------------------------

    def decode(self, message: Message) -> list[Event]:
        """Parse and decode one message; bad input becomes a counted ``Malformed``.

        Anything a dialect or codec raises is caught here, not only the ``DialectError``
        and ``CodecError`` of its contract: a plugin's bug, or a codec name no plugin
        registered, must cost one message, never the stream: bad input never stops one.
        """
        try:
            events = self.dialect.parse(message)
            return [self._decoded(e) if isinstance(e, AudioFrame) else e for e in events]
        except Exception as exc:
            return [self._malformed(exc, message.arrival_s)]

    def _decoded(self, frame: AudioFrame) -> AudioFrame:
        if not (math.isfinite(frame.duration_ms) and frame.duration_ms > 0):
            # The jitter buffer's clock advances by durations: refuse what would stall it.
            raise DialectError(
                f"frame {frame.seq} lasts duration_ms={frame.duration_ms}; it must be > 0"
            )
        samples = self.codecs.get(frame.codec).decode(frame.payload)
        stream_id = frame.stream_id or self.stream_id
        return replace(frame, samples=samples, stream_id=stream_id)

    def _malformed(self, exc: Exception, arrival_s: float) -> Malformed:
        self.malformed += 1
        detail = str(exc)
        kind = f"{type(exc).__name__}: {detail.split(':', maxsplit=1)[0][:60]}"
        if kind not in self._logged_kinds and len(self._logged_kinds) < _MAX_LOGGED_KINDS:
            self._logged_kinds.add(kind)
            log.warning(
                "skipping malformed message (%s); more of this kind are only counted",
                detail,
                # Our own errors describe the input; anything else is a bug worth a trace.
                exc_info=None if isinstance(exc, JitterlineError) else exc,
            )
        return Malformed(kind=kind, detail=detail, arrival_s=arrival_s)

    def control(self, event: Event) -> None:
        """Apply what a control event tells the stream (its id, a measured RTT)."""
        if isinstance(event, StreamOpened) and not self.stream_id:
            self.stream_id = event.stream_id
        elif isinstance(event, Pong) and event.rtt_ms is not None:
            self.window.observe_rtt(event.rtt_ms, event.arrival_s)

    # -- measure, adjust, play out ------------------------------------------------------

    def measure(self, frame: AudioFrame) -> AudioFrame:
        """Feed the latency window and let the adjuster pick the next buffer target."""
        self._target_ms = self.adjuster.observe(self.window.observe(frame))
        return frame

    def playout(self, frame: AudioFrame) -> list[AudioFrame]:
        """File a frame; returns what played up to its arrival.

        The slots due before the arrival play out under the old target, and only then
        does the new one apply: which target a slot gets depends on arrival times alone,
        never on how the periodic ticks fell, so a replay matches the live run.
        """
        if self.closed:
            return []
        played = self.buffer.pop_due(frame.arrival_s)
        self.buffer.set_target_delay(self._target_ms)
        return played + self.buffer.push(frame)

    def tick(self, now: float) -> list[AudioFrame]:
        """Play what is due at ``now`` minus the guard (see ``PipelineConfig``)."""
        if self.closed:
            return []
        return self.buffer.pop_due(now - self.config.guard_ms / 1000.0)

    def finish(self, now: float) -> list[AudioFrame]:
        """End the stream at ``now``; what is still buffered counts as unplayed."""
        if self.closed:
            return []
        self.closed = True
        return self.buffer.close(now)

    # -- observe ------------------------------------------------------------------------

    def stats(self, now: float) -> Stats:
        counts = self.buffer.counts()
        frames = replace(
            counts, received=counts.received + self.malformed, malformed=self.malformed
        )
        adjusted = self.adjuster.stats()
        buffer = BufferStats(
            target_ms=adjusted.target_ms,
            min_ms=adjusted.min_ms,
            max_ms=adjusted.max_ms,
            level_ms=self.buffer.level_ms,
            policy=adjusted.policy,
        )
        return Stats(
            at_s=now,
            stream_id=self.stream_id,
            frames=frames,
            latency=self.window.snapshot(now),
            buffer=buffer,
            connection=self.connection,
        )

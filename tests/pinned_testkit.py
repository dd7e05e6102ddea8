"""The latency window, the delay reference, the adaptive and goal policies and the
adjuster as they were before their per-frame rewrite (commit 3c31cc4), docstrings left
out: the oracle the property tests of ``test_latency`` and ``test_adjuster`` compare the
rewrite against, bit for bit. Not to be edited: it pins behaviour."""

# ruff: noqa
# mypy: ignore-errors

from __future__ import annotations

import bisect
import logging
import math
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

from jitterline import checks
from jitterline.errors import ConfigError
from jitterline.frames import ArrivalMeasure, ArrivalOutcome, AudioFrame, BufferStats, LatencyStats
from jitterline.latency import REFERENCE_JUMP_MS, REFERENCE_RISE_PPM

log = logging.getLogger(__name__)

_JITTER_GAIN = 1 / 16  # RFC 3550 A.8
_SRTT_GAIN = 1 / 8  # RFC 6298 alpha


class DelayReference:
    __slots__ = ("_at_ms", "_ref_ms", "jumped_ms")

    def __init__(self) -> None:
        self._ref_ms: float | None = None
        self._at_ms = 0.0
        self.jumped_ms = 0.0  # sum of the jumps of explicit or automatic rebases

    @property
    def ms(self) -> float | None:
        return self._ref_ms

    def observe(self, arrival_ms: float, media_ms: float, *, rebase: bool = False) -> float:
        transit_ms = arrival_ms - media_ms
        ref_ms = self._ref_ms
        if ref_ms is None or rebase or ref_ms - transit_ms > REFERENCE_JUMP_MS:
            if ref_ms is not None:
                self.jumped_ms += transit_ms - ref_ms
            self._ref_ms, self._at_ms = transit_ms, arrival_ms
            return 0.0
        risen_ms = ref_ms + max(0.0, arrival_ms - self._at_ms) * REFERENCE_RISE_PPM * 1e-6
        self._ref_ms = min(risen_ms, transit_ms)
        self._at_ms = max(self._at_ms, arrival_ms)
        return transit_ms - self._ref_ms


class _Entry(NamedTuple):
    at_s: float
    transit_delta_ms: float | None
    interarrival_ms: float | None
    transit_ms: float | None  # net of the reference's earlier rebase jumps
    latency_ms: float | None
    processing_ms: float | None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _wall_gap_ms(later_s: float | None, earlier_s: float | None) -> float | None:
    if later_s is None or earlier_s is None:
        return None
    return _finite((later_s - earlier_s) * 1000.0)


def _nearest_rank(ordered: list[float], percent: float) -> float | None:
    if not ordered:
        return None
    rank = math.ceil(percent / 100.0 * len(ordered))
    return ordered[max(rank, 1) - 1]


def _quantiles(
    values: Iterable[float | None], percents: tuple[float, ...]
) -> tuple[float | None, ...]:
    ordered = sorted([v for v in values if v is not None])
    return tuple(_nearest_rank(ordered, p) for p in percents)


class LatencyWindow:
    def __init__(self, max_frames: int = 500, max_age_s: float = 10.0) -> None:
        checks.count("max_frames", max_frames, low=1, hint="500 keeps 10 s of 20 ms frames")
        checks.number("max_age_s", max_age_s, low=0.0, above=True, unit="s", hint="try 10.0")
        self.max_frames = max_frames
        self.max_age_s = max_age_s
        self._entries: deque[_Entry] = deque()
        self._reference = DelayReference()
        self._measured_jitter = False
        self._clock_s: float | None = None
        self._prev_times_ms: tuple[float, float] | None = None  # last finite (R, S)
        self._jitter_ms = 0.0
        self._srtt_ms: float | None = None
        self._rtt_at_s: float | None = None
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def jitter_ms(self) -> float:
        return self._jitter_ms

    @property
    def reference_ms(self) -> float | None:
        return self._reference.ms

    def observe(
        self, frame: AudioFrame, outcome: ArrivalOutcome = "buffered", *, rebase: bool = False
    ) -> ArrivalMeasure:
        arrival_ms = _finite(frame.arrival_s * 1000.0)
        media_ms = _finite(frame.media_ms)
        if arrival_ms is None or media_ms is None:
            self._warn_once(
                "non-finite",
                "frame %d has a non-finite time; its delays are not measured",
                frame.seq,
            )
        interarrival_ms = self._interarrival(arrival_ms)
        transit_delta_ms = None if rebase else self._transit_delta(arrival_ms, media_ms)
        transit_ms = None
        relative_ms = 0.0
        if arrival_ms is not None and media_ms is not None:
            self._prev_times_ms = (arrival_ms, media_ms)
            transit_ms = _finite(arrival_ms - media_ms)
        if transit_ms is not None and arrival_ms is not None and media_ms is not None:
            relative_ms = (
                _finite(self._reference.observe(arrival_ms, media_ms, rebase=rebase)) or 0.0
            )
            transit_ms = _finite(transit_ms - self._reference.jumped_ms)
        entry = _Entry(
            at_s=self._advance_clock(None if arrival_ms is None else frame.arrival_s),
            transit_delta_ms=transit_delta_ms,
            interarrival_ms=interarrival_ms,
            transit_ms=transit_ms,
            latency_ms=_wall_gap_ms(frame.received_wall_s, frame.capture_wall_s),
            processing_ms=_wall_gap_ms(frame.sent_wall_s, frame.capture_wall_s),
        )
        self._add(entry)
        return ArrivalMeasure(
            arrival_s=frame.arrival_s,
            seq=frame.seq,
            frame_ms=frame.duration_ms,
            interarrival_ms=interarrival_ms,
            transit_delta_ms=transit_delta_ms,
            jitter_ms=self._jitter_ms,
            relative_delay_ms=relative_ms,
            latency_ms=entry.latency_ms,
            processing_ms=entry.processing_ms,
            outcome=outcome,
        )

    def observe_rtt(self, rtt_ms: float, now: float) -> None:
        if not (math.isfinite(rtt_ms) and rtt_ms >= 0):
            self._warn_once("rtt", "RTT sample %r ms is not a finite duration; skipped", rtt_ms)
            return
        if self._rtt_at_s is not None and now < self._rtt_at_s:
            return
        self._rtt_at_s = now
        if self._srtt_ms is None:
            self._srtt_ms = rtt_ms
        else:
            self._srtt_ms += (rtt_ms - self._srtt_ms) * _SRTT_GAIN

    def snapshot(self, now: float) -> LatencyStats:
        self._expire(now)
        entries = self._entries
        ref_ms = self._reference.ms
        least = 0.0 if ref_ms is None else ref_ms - self._reference.jumped_ms
        columns = tuple(zip(*entries, strict=True)) or ((),) * len(_Entry._fields)
        jitter = _quantiles(columns[1], (50, 95, 99))
        gaps = _quantiles(columns[2], (50, 95, 99))
        # Delay is transit above the reference, floored at 0: a monotonic map, so the
        # quantiles of the transits map to the quantiles of the delays.
        delays = tuple(
            None if q is None else _finite(max(0.0, q - least))
            for q in _quantiles(columns[3], (50, 95, 99))
        )
        latency = _quantiles(columns[4], (50, 95, 99))
        processing = _quantiles(columns[5], (50, 95))
        return LatencyStats(
            frames=len(entries),
            jitter_rfc3550_ms=self._jitter_ms if self._measured_jitter else None,
            jitter_p50_ms=jitter[0],
            jitter_p95_ms=jitter[1],
            jitter_p99_ms=jitter[2],
            interarrival_p50_ms=gaps[0],
            interarrival_p95_ms=gaps[1],
            interarrival_p99_ms=gaps[2],
            delay_p50_ms=delays[0],
            delay_p95_ms=delays[1],
            delay_p99_ms=delays[2],
            latency_p50_ms=latency[0],
            latency_p95_ms=latency[1],
            latency_p99_ms=latency[2],
            processing_p50_ms=processing[0],
            processing_p95_ms=processing[1],
            rtt_ms=self._srtt_ms,
        )

    def _interarrival(self, arrival_ms: float | None) -> float | None:
        if arrival_ms is None or self._prev_times_ms is None:
            return None
        gap_ms = arrival_ms - self._prev_times_ms[0]
        if gap_ms < 0:
            self._warn_once("backwards", "arrival time went back by %.3f ms", -gap_ms)
            return 0.0
        return _finite(gap_ms)

    def _transit_delta(self, arrival_ms: float | None, media_ms: float | None) -> float | None:
        if arrival_ms is None or media_ms is None or self._prev_times_ms is None:
            return None
        prev_arrival_ms, prev_media_ms = self._prev_times_ms
        delta = _finite(abs((arrival_ms - prev_arrival_ms) - (media_ms - prev_media_ms)))
        if delta is not None:
            self._jitter_ms += (delta - self._jitter_ms) * _JITTER_GAIN
            self._measured_jitter = True
        return delta

    def _advance_clock(self, arrival_s: float | None) -> float:
        if arrival_s is not None and (self._clock_s is None or arrival_s > self._clock_s):
            self._clock_s = arrival_s
        return self._clock_s if self._clock_s is not None else 0.0

    def _add(self, entry: _Entry) -> None:
        self._expire(entry.at_s)
        self._entries.append(entry)
        while len(self._entries) > self.max_frames:
            self._evict()

    def _expire(self, now: float) -> None:
        oldest_kept_s = now - self.max_age_s
        while self._entries and self._entries[0].at_s < oldest_kept_s:
            self._evict()

    def _evict(self) -> None:
        self._entries.popleft()

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message, *args)


_MAX_CUT_MS = 20.0


class AdaptivePolicy:
    name = "adaptive"

    def __init__(
        self,
        *,
        quantile: float = 0.95,
        forget_factor: float = 0.983,
        bucket_ms: float = 20.0,
        buckets: int = 100,
        interval_s: float = 0.5,
        start_target_ms: float = 80.0,
        start_forget_weight: float = 2.0,
        margin_ms: float = 0.0,
    ) -> None:
        checks.number(
            "quantile", quantile, low=0, high=1, above=True, below=True, hint="NetEq uses 0.95"
        )
        checks.number(
            "forget_factor",
            forget_factor,
            low=0,
            high=1,
            above=True,
            below=True,
            hint="NetEq uses 0.983",
        )
        checks.number("bucket_ms", bucket_ms, low=0, above=True, unit="ms", hint="try 20")
        checks.count("buckets", buckets, low=1, hint="NetEq uses 100")
        checks.number("interval_s", interval_s, low=0, above=True, unit="s", hint="try 0.5")
        checks.number(
            "start_target_ms", start_target_ms, low=0, unit="ms", hint="NetEq starts at 80"
        )
        checks.number("margin_ms", margin_ms, low=0, unit="ms", hint="try 0 or one frame (20)")
        checks.number("start_forget_weight", start_forget_weight, low=0, hint="NetEq uses 2")
        self.quantile = quantile
        self.forget_factor = forget_factor
        self.bucket_ms = bucket_ms
        self.interval_s = interval_s
        self.start_forget_weight = start_forget_weight
        self.margin_ms = margin_ms
        self.target_ms = start_target_ms
        self._histogram = [0.0] * buckets
        self._adds = 0
        self._interval_start_s: float | None = None
        self._interval_peak_ms = 0.0

    def update(self, measure: ArrivalMeasure) -> float:
        now = measure.arrival_s
        if not math.isfinite(now):
            return self.target_ms
        if self._interval_start_s is None:
            self._interval_start_s = now
        elif now - self._interval_start_s >= self.interval_s:
            self._close_interval()
            self._interval_start_s = now
        delay_ms = measure.relative_delay_ms
        if math.isfinite(delay_ms):
            self._interval_peak_ms = max(self._interval_peak_ms, delay_ms)
        return self.target_ms

    def _close_interval(self) -> None:
        index = int(self._interval_peak_ms // self.bucket_ms)
        self._interval_peak_ms = 0.0
        if index >= len(self._histogram):
            return
        self._add(index)
        self.target_ms = (1 + self._quantile_index()) * self.bucket_ms + self.margin_ms

    def _forget(self) -> float:
        if self.start_forget_weight == 0:
            return self.forget_factor
        if self._adds == 0:
            return 0.0
        return max(0.0, min(self.forget_factor, 1 - self.start_forget_weight / self._adds))

    def _add(self, index: int) -> None:
        keep = self._forget()
        histogram = self._histogram
        for i, mass in enumerate(histogram):
            histogram[i] = mass * keep
        histogram[index] += 1 - keep
        self._adds += 1

    def _quantile_index(self) -> int:
        needed = self.quantile * sum(self._histogram)
        cumulative = 0.0
        for index, mass in enumerate(self._histogram):
            cumulative += mass
            if cumulative >= needed:
                return index
        return len(self._histogram) - 1


class GoalPolicy:
    name = "goal"

    def __init__(
        self,
        *,
        late_goal: float = 0.009,
        window_frames: int = 1000,
        correction_step_ms: float = 0.5,
        calm_frames: int = 150,
        calm_margin_ms: float = 10.0,
        late_half_life_frames: float = 50.0,
        warmup_frames: int = 10,
        record_gap: int = 10,
        start_ms: float = 40.0,
        outage_gap_ms: float = 300.0,
        margin_ms: float = 1.0,
    ) -> None:
        checks.number(
            "late_goal", late_goal, low=0, high=1, above=True, below=True, hint="try 0.009"
        )
        for name, frames, hint in (
            ("window_frames", window_frames, "try 1000 (20 s of 20 ms)"),
            ("calm_frames", calm_frames, "try 150 (3 s of 20 ms)"),
        ):
            checks.count(name, frames, low=1, hint=hint)
        checks.count("warmup_frames", warmup_frames, low=0, hint="try 10")
        checks.count("record_gap", record_gap, low=0, hint="try 10")
        for name, value, hint in (
            ("correction_step_ms", correction_step_ms, "try 0.5 (ms per late frame)"),
            ("calm_margin_ms", calm_margin_ms, "try 10"),
            ("start_ms", start_ms, "try 40"),
            ("margin_ms", margin_ms, "try 1"),
        ):
            checks.number(name, value, low=0, unit="ms", hint=hint)
        checks.number(
            "late_half_life_frames", late_half_life_frames, low=0, above=True, hint="try 50"
        )
        checks.number("outage_gap_ms", outage_gap_ms, low=0, above=True, unit="ms", hint="300")
        self.late_goal = late_goal
        self.correction_step_ms = correction_step_ms
        self.calm_margin_ms = calm_margin_ms
        self.warmup_frames = warmup_frames
        self.record_gap = record_gap
        self.outage_gap_ms = outage_gap_ms
        self.margin_ms = margin_ms
        self.target_ms = start_ms
        self._start_ms = start_ms
        self._late_keep = 0.5 ** (1.0 / late_half_life_frames)
        self._late_floor_ms = 0.0
        self._correction_ms = 0.0
        self._recent: deque[float] = deque(maxlen=window_frames)
        self._sorted: list[float] = []
        self._calm = _RecentMax(calm_frames)
        self._last_record = -record_gap - 1
        self._in_outage = False
        self._base_ms = start_ms

    def update(self, measure: ArrivalMeasure) -> float:
        delay_ms = measure.relative_delay_ms
        self._late_floor_ms *= self._late_keep
        if measure.outcome != "duplicate":
            self._correct(late=measure.outcome == "late")
        if measure.outcome == "late" and math.isfinite(delay_ms):
            self._late_floor_ms = max(self._late_floor_ms, delay_ms + self.margin_ms)
        counted = measure.outcome != "duplicate" and math.isfinite(delay_ms)
        if counted and not self._outage_continues(measure, delay_ms):
            self._note_record(delay_ms, measure.frame_ms)
            self._add(delay_ms)
            self._base_ms = self._base_target_ms(measure.frame_ms)
        # The late floor holds during an outage too: the burst behind a stall plays.
        self.target_ms = max(self._base_ms, self._late_floor_ms)
        return self.target_ms

    def _correct(self, *, late: bool) -> None:
        goal = self.late_goal
        if late:
            self._correction_ms += self.correction_step_ms
        else:
            step_ms = self.correction_step_ms * goal / (1.0 - goal)
            self._correction_ms = max(-_MAX_CUT_MS, self._correction_ms - step_ms)

    def _outage_continues(self, measure: ArrivalMeasure, delay_ms: float) -> bool:
        gap_ms = measure.interarrival_ms
        if gap_ms is not None and gap_ms >= self.outage_gap_ms and self._sorted:
            self._in_outage = True
        if self._in_outage and delay_ms > self._base_ms:
            return True
        self._in_outage = False
        return False

    def _note_record(self, delay_ms: float, frame_ms: float) -> None:
        if not self._sorted or delay_ms <= self._sorted[-1]:
            return
        seen = self._calm.added  # frames added so far
        if seen - self._last_record <= self.record_gap:
            self._late_floor_ms = max(self._late_floor_ms, delay_ms + frame_ms)
        self._last_record = seen

    def _add(self, delay_ms: float) -> None:
        recent, ordered = self._recent, self._sorted
        if len(recent) == recent.maxlen:
            del ordered[bisect.bisect_left(ordered, recent[0])]
        recent.append(delay_ms)
        bisect.insort(ordered, delay_ms)
        self._calm.add(delay_ms)

    def _base_target_ms(self, frame_ms: float) -> float:
        ordered = self._sorted
        count = len(ordered)
        if count < self.warmup_frames:
            return max(ordered[-1] + frame_ms, self._start_ms)
        rank = max(1, math.ceil((1 - self.late_goal) * count))
        calm_ms = self._calm.max_ms + self.calm_margin_ms
        return max(0.0, min(ordered[rank - 1], calm_ms) + self._correction_ms)


class _RecentMax:
    def __init__(self, frames: int) -> None:
        self._frames = frames
        self._queue: deque[tuple[int, float]] = deque()
        self.added = 0

    @property
    def max_ms(self) -> float:
        return self._queue[0][1]

    def add(self, value: float) -> None:
        queue = self._queue
        while queue and queue[-1][1] <= value:
            queue.pop()
        queue.append((self.added, value))
        self.added += 1
        if queue[0][0] <= self.added - 1 - self._frames:
            queue.popleft()


class BufferAdjuster:
    def __init__(
        self,
        policy: BufferPolicy,
        *,
        min_ms: float = 20.0,
        max_ms: float = 1000.0,
        start_ms: float = 80.0,
    ) -> None:
        checks.number("min_ms", min_ms, low=0, unit="ms", hint="try 20 (one frame)")
        checks.number("max_ms", max_ms, low=0, unit="ms", hint="try 1000")
        checks.number("start_ms", start_ms, low=0, unit="ms", hint="try 80")
        if min_ms > max_ms:
            raise ConfigError(f"min_ms={min_ms} exceeds max_ms={max_ms}; swap or widen them")
        self.policy = policy
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.failures = 0
        self._target_ms = self._clamp(start_ms)
        self._extremes_ms: tuple[float, float] | None = None

    @property
    def target_ms(self) -> float:
        return self._target_ms

    def observe(self, measure: ArrivalMeasure) -> float:
        try:
            wanted_ms = float(self.policy.update(measure))
        except Exception:
            self._fail("raised")
            return self._target_ms
        return self._accept(wanted_ms)

    def _accept(self, wanted_ms: float) -> float:
        if not math.isfinite(wanted_ms):
            self._fail("answered a non-finite target")
            return self._target_ms
        target_ms = self._target_ms = self._clamp(wanted_ms)
        lowest_ms, highest_ms = self._extremes_ms or (target_ms, target_ms)
        self._extremes_ms = (min(lowest_ms, target_ms), max(highest_ms, target_ms))
        return target_ms

    def observe_played(self, frame: AudioFrame) -> float | None:
        played = getattr(self.policy, "played", None)
        if played is None:
            return None
        try:
            wanted = played(frame)
        except Exception:
            self._fail("raised")
            return None
        if wanted is None:
            return None
        return self._accept(float(wanted))

    def stats(self) -> BufferStats:
        lowest_ms, highest_ms = self._extremes_ms or (self._target_ms, self._target_ms)
        return BufferStats(
            target_ms=self._target_ms,
            min_ms=lowest_ms,
            max_ms=highest_ms,
            policy=self.policy.name,
        )

    def _clamp(self, value_ms: float) -> float:
        return min(self.max_ms, max(self.min_ms, value_ms))

    def _fail(self, what: str) -> None:
        self.failures += 1
        if self.failures == 1:
            log.warning(
                "buffer policy %r %s; keeping the target at %.1f ms",
                self.policy.name,
                what,
                self._target_ms,
                exc_info=what == "raised",
            )

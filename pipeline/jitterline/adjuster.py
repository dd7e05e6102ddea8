"""Buffer-size adjuster: how much delay the jitter buffer should hold, frame by frame.

A policy turns each frame's ``ArrivalMeasure`` into a desired target delay; the
``BufferAdjuster`` clamps it to configured bounds, remembers the extremes and shields the
stream from a failing policy (a plugin point: a policy that raises or answers a non-finite
number is logged once and counted, and the previous target stays).

Built-in policies:

- ``goal`` (the default): aims at a late-loss rate directly. See ``GoalPolicy``.
- ``adaptive`` (the default before ``goal``), after WebRTC NetEq's UnderrunOptimizer: the
  largest relative delay of each 500 ms interval goes into a 100-bucket x 20 ms
  histogram with exponential forgetting (0.983 per interval; faster at the start, as
  NetEq's ``start_forget_weight`` 2), and the target is ``(1 + bucket at the 0.95
  quantile) * 20 ms``, 80 ms until the first interval closes. Counting the whole quantile
  bucket already rounds the target up by up to one bucket, so ``margin_ms`` defaults to 0
  (NetEq adds none either). Intervals whose largest delay is beyond the histogram (2 s)
  are left out, as NetEq does: a pause that long is an outage, not jitter a buffer can
  absorb. NetEq's ReorderOptimizer is not reproduced.
- ``threshold``: the tutorial's rule on RFC 3550 jitter (jitter > 50 ms -> 100 ms,
  < 20 ms -> 50 ms; between the two the current target stays, which is the hysteresis).
- ``fixed``: one target, whatever happens.

Registry factories follow the ``jitterline_register_buffer_policies`` contract:
``factory(target_ms=None)`` returns a new policy, ``target_ms`` being its initial target.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable
from math import isfinite
from typing import Any, Protocol, runtime_checkable

from . import checks
from .errors import ConfigError
from .frames import ArrivalMeasure, AudioFrame, BufferStats
from .registry import Registry

__all__ = [
    "DEFAULT_POLICY",
    "AdaptivePolicy",
    "BufferAdjuster",
    "BufferPolicy",
    "FixedPolicy",
    "GoalPolicy",
    "ThresholdPolicy",
    "builtin_policies",
    "make_policy",
]

log = logging.getLogger(__name__)

DEFAULT_POLICY = "goal"
_DEFAULT_FIXED_MS = 80.0
_MAX_CUT_MS = 20.0
"""How far below the window's quantile ``GoalPolicy``'s late-rate correction may go."""
_LEAST_CUT_MS = -_MAX_CUT_MS
"""The correction's floor, negated once rather than on every frame."""
_TOP_MARGIN = 128
"""How many delays below ``GoalPolicy``'s quantile its sorted top keeps when it is cut,
and how far past that it may grow before it is cut again: a monotonic ramp re-cuts it
every 128 frames (a 70 us sort), the trace suite about once per 1300."""


@runtime_checkable
class BufferPolicy(Protocol):
    """Decides the target delay; ``update`` is called once per received frame, in arrival
    order, and returns the desired target in ms (time is ``measure.arrival_s``)."""

    name: str

    def update(self, measure: ArrivalMeasure) -> float: ...


class FixedPolicy:
    """Always the same target: for links whose jitter is known, or to compare policies."""

    name = "fixed"

    def __init__(self, target_ms: float = _DEFAULT_FIXED_MS) -> None:
        checks.number("target_ms", target_ms, low=0, unit="ms", hint="try 80")
        self.target_ms = target_ms

    def update(self, measure: ArrivalMeasure) -> float:
        return self.target_ms


class ThresholdPolicy:
    """The tutorial's two-level rule on RFC 3550 jitter, with a dead band between the
    thresholds so a jitter that hovers near one does not flip the buffer size."""

    name = "threshold"

    def __init__(
        self,
        high_jitter_ms: float = 50.0,
        low_jitter_ms: float = 20.0,
        high_target_ms: float = 100.0,
        low_target_ms: float = 50.0,
        initial_target_ms: float = 50.0,
    ) -> None:
        for name, value in (
            ("high_jitter_ms", high_jitter_ms),
            ("low_jitter_ms", low_jitter_ms),
            ("high_target_ms", high_target_ms),
            ("low_target_ms", low_target_ms),
            ("initial_target_ms", initial_target_ms),
        ):
            checks.number(name, value, low=0, unit="ms", hint="see ThresholdPolicy defaults")
        if not low_jitter_ms < high_jitter_ms:
            raise ConfigError(
                f"low_jitter_ms={low_jitter_ms} must be below high_jitter_ms={high_jitter_ms}; "
                "the gap between them is the hysteresis band"
            )
        self.high_jitter_ms = high_jitter_ms
        self.low_jitter_ms = low_jitter_ms
        self.high_target_ms = high_target_ms
        self.low_target_ms = low_target_ms
        self.target_ms = initial_target_ms

    def update(self, measure: ArrivalMeasure) -> float:
        if measure.jitter_ms > self.high_jitter_ms:
            self.target_ms = self.high_target_ms
        elif measure.jitter_ms < self.low_jitter_ms:
            self.target_ms = self.low_target_ms
        return self.target_ms


class AdaptivePolicy:
    """NetEq-like quantile of per-interval peak delay; state is ``buckets`` floats plus a
    few scalars, whatever the stream's length."""

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
        if not isfinite(now):
            return self.target_ms
        if self._interval_start_s is None:
            self._interval_start_s = now
        elif now - self._interval_start_s >= self.interval_s:
            self._close_interval()
            self._interval_start_s = now
        delay_ms = measure.relative_delay_ms
        if isfinite(delay_ms) and delay_ms > self._interval_peak_ms:  # max(), call-free
            self._interval_peak_ms = delay_ms
        return self.target_ms

    def _close_interval(self) -> None:
        index = int(self._interval_peak_ms // self.bucket_ms)
        self._interval_peak_ms = 0.0
        if index >= len(self._histogram):
            return
        self._add(index)
        self.target_ms = (1 + self._quantile_index()) * self.bucket_ms + self.margin_ms

    def _forget(self) -> float:
        """NetEq's start-up schedule: forget everything for the first adds, then
        ``1 - weight / adds`` until that reaches the steady factor, so the first seconds
        are not stuck with the start value."""
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
        """The first bucket where the cumulative mass reaches the quantile (of the total,
        so float rounding in the sum cannot push it past the end)."""
        needed = self.quantile * sum(self._histogram)
        cumulative = 0.0
        for index, mass in enumerate(self._histogram):
            cumulative += mass
            if cumulative >= needed:
                return index
        return len(self._histogram) - 1


class GoalPolicy:
    """Holds the delay that makes ``late_goal`` of the frames late, measured on the buffer's
    own late outcomes, and runs short wherever the last seconds were calm.

    Why this shape, measured on the trace suite (``python -m benchmarks jitter``):

    - **Per-frame quantile, not per-interval peaks.** NetEq's 95 % quantile of 500 ms
      peaks is about a 99.8 % quantile of frames: safe, but above the hindsight oracle (the
      least fixed delay with 1 % late loss). The base target is the ``1 - late_goal``
      nearest-rank quantile of the relative delays of the last ``window_frames`` frames:
      exact, from the window's largest delays kept sorted (see ``_take``).
    - **The late rate itself, under integral control.** A quantile estimated from a
      window is noisy and biased on correlated jitter, so a correction is added to it: up
      ``correction_step_ms`` on each frame the buffer files as late, down by
      ``late_goal / (1 - late_goal)`` of that on each other one. It settles where the
      buffer's realised late rate is ``late_goal``, whatever the delay distribution; this
      replaced a Speex-like ``delay + late_factor x late`` trade-off, which bought half
      the late loss at 5 % more delay on stationary jitter, where it was not needed.
    - **Calm stretches.** The target never exceeds the largest delay of the last
      ``calm_frames`` (3 s) plus ``calm_margin_ms``: after a congestion peak, a Wi-Fi
      stall or a route change down, the long window would hold the old quantile for 20 s.
      On stationary jitter the recent maximum plus the margin sits above the quantile,
      so it changes nothing there.
    - **Late feedback.** A late frame also lifts the target at once to its own delay plus
      ``margin_ms``, a floor that decays with a half-life of ``late_half_life_frames``:
      a level shift (a route change, a congestion ramp) costs one late frame, not the
      dozens the window's quantile needs to move (the buffer, while it waits on an empty
      slot, applies a higher target at once).
    - **Fast start, and ramps.** Until ``warmup_frames`` are in, the target is the largest
      delay seen plus one frame, at least ``start_ms``. After that, a record (a frame
      slower than every one in the window) that follows another within ``record_gap``
      frames sets the same decaying floor at its delay plus one frame: on a ramp (the
      first fill of a congested queue) records come in runs and the target stays a frame
      ahead; an isolated record is a tail draw, which the quantile already prices.
    - **Outages kept out.** A frame after an inter-arrival gap of ``outage_gap_ms`` or
      more opens an outage, and frames are left out of the window until one arrives within
      the target again: the held burst says nothing about the jitter to absorb (the buffer
      re-anchors and catches up on its own).
    - Delays are measured against the latency window's non-drifting reference, so after a
      route change up the quantile stays up as long as the route does.

    What it cannot do: beat the oracle on stationary jitter, where one fixed delay is
    already the optimum and a causal estimate pays for its noise (about 1 % of delay).

    State: ``window_frames`` floats in arrival order, the largest of them sorted (those
    above the quantile, plus up to 2 x ``_TOP_MARGIN``), at most ``calm_frames`` pairs
    for the recent maximum, and a few scalars.
    """

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
        self._top: list[float] = []
        self._top_floor_ms = -math.inf
        self._top_cap = _TOP_MARGIN
        self._needed = 1  # delays at or above the quantile
        self._window_frames = window_frames
        self._calm: deque[tuple[int, float]] = deque()  # (expiry, delay), delays falling
        self._calm_frames = calm_frames
        self._added = 0
        self._ranked = 0  # the window's count when _needed was last worked out
        self._cut_step_ms = correction_step_ms * late_goal / (1.0 - late_goal)
        self._last_record = -record_gap - 1
        self._in_outage = False
        self._base_ms = start_ms

    def update(self, measure: ArrivalMeasure) -> float:
        """Inline where it runs per frame: the six methods this was split into cost about
        as much in calls as in work."""
        delay_ms = measure.relative_delay_ms
        outcome = measure.outcome
        late_floor_ms = self._late_floor_ms * self._late_keep
        # Integral control of the late rate: it settles where ``late_goal`` of the frames
        # are late. Never below one frame's worth of cut, so a long calm spell cannot wind
        # it down further than the next late frames can undo quickly.
        if outcome == "late":
            self._correction_ms += self.correction_step_ms
            if isfinite(delay_ms):
                floor_ms = delay_ms + self.margin_ms
                late_floor_ms = floor_ms if floor_ms > late_floor_ms else late_floor_ms
        elif outcome != "duplicate":
            cut_ms = self._correction_ms - self._cut_step_ms
            self._correction_ms = cut_ms if cut_ms > _LEAST_CUT_MS else _LEAST_CUT_MS
        if outcome != "duplicate" and isfinite(delay_ms):
            gap_ms = measure.interarrival_ms
            if gap_ms is not None and gap_ms >= self.outage_gap_ms and self._recent:
                self._in_outage = True
            # Frames are left out of the window until one arrives within the target again.
            if not (self._in_outage and delay_ms > self._base_ms):
                self._in_outage = False
                late_floor_ms = self._take(delay_ms, measure.frame_ms, late_floor_ms)
        # The late floor holds during an outage too: the burst behind a stall plays.
        self._late_floor_ms = late_floor_ms
        base_ms = self._base_ms
        self.target_ms = target_ms = late_floor_ms if late_floor_ms > base_ms else base_ms
        return target_ms

    def _take(self, delay_ms: float, frame_ms: float, late_floor_ms: float) -> float:
        """Counts one delay in the window and sets the base target from it; returns the
        late floor, which a ramp of records raises.

        The quantile and the maximum are the only order statistics used, so only the top
        of the window is kept sorted: exactly its delays at or above ``_top_floor_ms``.
        Most frames neither enter nor leave it, and those that do search and shift a
        list of about a hundred, not the whole window (a sorted window cost a quarter
        of the adjuster). When it no longer reaches down to the quantile, or has grown
        past ``_top_cap``, it is cut again from the window.
        """
        recent, top, added = self._recent, self._top, self._added
        if top and delay_ms > top[-1]:  # a record; a run of them is a ramp
            if added - self._last_record <= self.record_gap:
                floor_ms = delay_ms + frame_ms
                late_floor_ms = floor_ms if floor_ms > late_floor_ms else late_floor_ms
            self._last_record = added
        count = len(recent)
        top_floor_ms = self._top_floor_ms
        if count == self._window_frames:
            oldest_ms = recent[0]
            if oldest_ms >= top_floor_ms:
                del top[bisect_left(top, oldest_ms)]
        else:
            count += 1
        recent.append(delay_ms)
        if delay_ms >= top_floor_ms:
            insort(top, delay_ms)
        calm = self._calm  # a monotonic queue: (expiry, delay), delays falling
        while calm and calm[-1][1] <= delay_ms:
            calm.pop()
        calm.append((added + self._calm_frames, delay_ms))
        if calm[0][0] <= added:
            calm.popleft()
        self._added = added + 1
        if count != self._ranked:  # the window is still filling
            self._ranked = count
            self._needed = count + 1 - math.ceil((1 - self.late_goal) * count)
        needed = self._needed
        if not needed <= len(top) <= self._top_cap:
            top = self._rebuild_top(needed)
        if count < self.warmup_frames:
            lead_ms, start_ms = top[-1] + frame_ms, self._start_ms
            base_ms = start_ms if start_ms > lead_ms else lead_ms
        else:
            quantile_ms = top[len(top) - needed]
            calm_ms = calm[0][1] + self.calm_margin_ms
            base_ms = calm_ms if calm_ms < quantile_ms else quantile_ms
            base_ms += self._correction_ms
            base_ms = base_ms if base_ms > 0.0 else 0.0
        self._base_ms = base_ms
        return late_floor_ms

    def _rebuild_top(self, needed: int) -> list[float]:
        """Re-cuts the sorted top: ``needed`` delays (down to the quantile) plus
        ``_TOP_MARGIN``, and every delay equal to the lowest of them."""
        ordered = sorted(self._recent)
        keep = needed + _TOP_MARGIN
        if keep >= len(ordered):
            floor_ms = -math.inf
            top = ordered
        else:
            floor_ms = ordered[-keep]
            top = ordered[bisect_left(ordered, floor_ms) :]
        self._top, self._top_floor_ms, self._top_cap = top, floor_ms, keep + _TOP_MARGIN
        return top


class BufferAdjuster:
    """Runs one policy for one stream and bounds what it asks for.

    Before the first frame the target is ``start_ms`` (NetEq's 80 ms start delay by
    default; pass the policy's own initial target to avoid a jump on the first frame).
    ``stats().min_ms`` / ``max_ms`` are the extremes of the targets the policy set (both
    ``start_ms`` until the first frame), so a fixed policy reports its own value only.
    """

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
        self._target_ms = min(max_ms, max(min_ms, start_ms))
        self._lowest_ms, self._highest_ms = math.inf, -math.inf  # of the targets set

    @property
    def target_ms(self) -> float:
        """The clamped target delay now, in ms."""
        return self._target_ms

    def observe(self, measure: ArrivalMeasure) -> float:
        """Ask the policy about one frame; returns the clamped target in ms."""
        try:
            wanted_ms = float(self.policy.update(measure))
        except Exception:
            self._fail("raised")
            return self._target_ms
        return self._accept(wanted_ms)

    def _accept(self, wanted_ms: float) -> float:
        if not isfinite(wanted_ms):
            self._fail("answered a non-finite target")
            return self._target_ms
        # min(max_ms, max(min_ms, wanted_ms)) as comparisons (ties keep the bound, as
        # they do), without the builtins' argument parsing: 0.3 us each here.
        low_ms, high_ms = self.min_ms, self.max_ms
        target_ms = wanted_ms if wanted_ms > low_ms else low_ms
        target_ms = self._target_ms = target_ms if target_ms < high_ms else high_ms
        lowest_ms, highest_ms = self._lowest_ms, self._highest_ms
        self._lowest_ms = target_ms if target_ms < lowest_ms else lowest_ms
        self._highest_ms = target_ms if target_ms > highest_ms else highest_ms
        return target_ms

    def observe_played(self, frame: AudioFrame) -> float | None:
        """Tell the policy about one emitted slot (a concealed one is an underrun), if it
        has a ``played(frame)`` method; returns the clamped target it then asks for, or
        None when it has none or keeps its target."""
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
        """``level_ms`` and the wait figures are left unset: only the jitter buffer knows
        them (``JitterBuffer.stats`` fills them in)."""
        lowest_ms, highest_ms = self._lowest_ms, self._highest_ms
        if lowest_ms > highest_ms:  # no target set yet
            lowest_ms = highest_ms = self._target_ms
        return BufferStats(
            target_ms=self._target_ms,
            min_ms=lowest_ms,
            max_ms=highest_ms,
            policy=self.policy.name,
        )

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


def _fixed(target_ms: float | None = None, **options: Any) -> BufferPolicy:
    return FixedPolicy(_DEFAULT_FIXED_MS if target_ms is None else target_ms, **options)


def _threshold(target_ms: float | None = None, **options: Any) -> BufferPolicy:
    if target_ms is not None:
        options["initial_target_ms"] = target_ms
    return ThresholdPolicy(**options)


def _adaptive(target_ms: float | None = None, **options: Any) -> BufferPolicy:
    if target_ms is not None:
        options["start_target_ms"] = target_ms
    return AdaptivePolicy(**options)


def _goal(target_ms: float | None = None, **options: Any) -> BufferPolicy:
    if target_ms is not None:
        options["start_ms"] = target_ms
    return GoalPolicy(**options)


def builtin_policies() -> Registry[Callable[..., BufferPolicy]]:
    """A fresh registry of the built-in policy factories (plugins add theirs to a copy)."""
    registry: Registry[Callable[..., BufferPolicy]] = Registry("buffer policy")
    registry.register("goal", _goal)
    registry.register("adaptive", _adaptive)
    registry.register("threshold", _threshold)
    registry.register("fixed", _fixed)
    return registry


def make_policy(
    name: str = DEFAULT_POLICY,
    *,
    buffer_ms: float | None = None,
    registry: Registry[Callable[..., BufferPolicy]] | None = None,
) -> BufferPolicy:
    """The CLI's ``--policy`` / ``--buffer-ms``: ``fixed`` holds ``buffer_ms`` (80 ms when
    not given); the others start from it. ``registry`` defaults to the built-ins; pass the
    plugin host's to reach plugin policies. Raises ConfigError for an unknown name."""
    factories = builtin_policies() if registry is None else registry
    return factories.get(name)(target_ms=buffer_ms)

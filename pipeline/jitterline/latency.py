"""The latency window: per-frame arrival measures and their recent distribution.

Sans-I/O: time comes in as ``frame.arrival_s`` (monotonic seconds) and as ``now`` on
``snapshot``; nothing here reads a clock.

What is measured, per received frame, in arrival order:

- inter-arrival time: this arrival minus the previous one, in ms. A frame whose
  ``arrival_s`` goes backwards (a bad replay, a clock step) is measured with 0 ms rather than
  a negative gap, and never moves the window's clock back.
- RFC 3550 interarrival jitter (section 6.4.1 / A.8), in ms: R = arrival_s * 1000,
  S = media_ms, D(i-1, i) = (Ri - Ri-1) - (Si - Si-1), J += (|D| - J) / 16. J is a running
  estimate over the whole stream, not windowed, exactly as RTP receivers report it.
- relative one-way delay: transit = R - S minus the least transit in the window (a
  monotonic deque keeps that sliding minimum in O(1) amortised). The sender's clock offset
  is in every transit, so it cancels; what is left is how much later than the
  least-delayed recent frame this one came (WebRTC NetEq's relative arrival delay).
- latency: ``(received_wall_s - capture_wall_s) * 1000`` when both are given. It compares
  two parties' wall clocks, so it includes their offset; it is exact on one host (the
  emulator) and a trend elsewhere.
- processing: ``(sent_wall_s - capture_wall_s) * 1000`` when both are given: the sender's
  own clock on both ends, so it has no offset.

RTT from ping/pong is smoothed as RFC 6298 SRTT: the first sample is taken as is, then
``srtt += (rtt - srtt) / 8``.

Bounds and cost: the window holds at most ``max_frames`` entries, none older than
``max_age_s``. Each ``observe`` is O(1) amortised. Quantiles are computed only by
``snapshot``, by sorting the window's values (O(n log n) in n <= ``max_frames``): they are
exact, with no bucket error, and need no per-measure histogram beside the entries the window
must keep anyway to expire them. A quantile is the nearest rank: the smallest value with at
least p % of the values at or below it (the ``ceil(p/100 * n)``-th smallest), so it is
always a measured value and p50 <= p95 <= p99.

Bad input never raises: a non-finite time, or one so large that milliseconds overflow, makes
the measures that need it None (they are left out of the quantiles), J unchanged and
``relative_delay_ms`` 0; it is logged once per kind.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

from . import checks
from .frames import ArrivalMeasure, AudioFrame, LatencyStats

__all__ = ["LatencyWindow"]

log = logging.getLogger(__name__)

_JITTER_GAIN = 1 / 16  # RFC 3550 A.8
_SRTT_GAIN = 1 / 8  # RFC 6298 alpha


class _Entry(NamedTuple):
    """One frame's measures as the window keeps them; ``at_s`` is the window's clock."""

    serial: int
    at_s: float
    transit_delta_ms: float | None
    interarrival_ms: float | None
    transit_ms: float | None
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
    ordered = sorted(v for v in values if v is not None and math.isfinite(v))
    return tuple(_nearest_rank(ordered, p) for p in percents)


class LatencyWindow:
    """Sliding window, count and time bounded, of one stream's arrival measures."""

    def __init__(self, max_frames: int = 500, max_age_s: float = 10.0) -> None:
        checks.count("max_frames", max_frames, low=1, hint="500 keeps 10 s of 20 ms frames")
        checks.number("max_age_s", max_age_s, low=0.0, above=True, unit="s", hint="try 10.0")
        self.max_frames = max_frames
        self.max_age_s = max_age_s
        self._entries: deque[_Entry] = deque()
        self._minima: deque[tuple[int, float]] = deque()  # (serial, transit), rising transits
        self._next_serial = 0
        self._clock_s: float | None = None
        self._prev_times_ms: tuple[float, float] | None = None  # last finite (R, S)
        self._jitter_ms = 0.0
        self._srtt_ms: float | None = None
        self._rtt_at_s: float | None = None
        self._warned: set[str] = set()

    def __len__(self) -> int:
        """Frames currently in the window (what the quantiles of a snapshot cover)."""
        return len(self._entries)

    @property
    def jitter_ms(self) -> float:
        """The running RFC 3550 interarrival jitter, in ms."""
        return self._jitter_ms

    def observe(self, frame: AudioFrame) -> ArrivalMeasure:
        """Measure one received frame; call once per frame, in arrival order."""
        arrival_ms = _finite(frame.arrival_s * 1000.0)
        media_ms = _finite(frame.media_ms)
        if arrival_ms is None or media_ms is None:
            self._warn_once(
                "non-finite",
                "frame %d has a non-finite time; its delays are not measured",
                frame.seq,
            )
        interarrival_ms = self._interarrival(arrival_ms)
        transit_delta_ms = self._transit_delta(arrival_ms, media_ms)
        transit_ms = None
        if arrival_ms is not None and media_ms is not None:
            self._prev_times_ms = (arrival_ms, media_ms)
            transit_ms = _finite(arrival_ms - media_ms)
        entry = _Entry(
            serial=self._next_serial,
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
            relative_delay_ms=self._relative_delay(transit_ms),
            latency_ms=entry.latency_ms,
            processing_ms=entry.processing_ms,
        )

    def observe_rtt(self, rtt_ms: float, now: float) -> None:
        """Fold one ping/pong round trip into the RFC 6298 smoothed RTT.

        A sample stamped earlier than the last one accepted (a pong answered before a
        reconnect) is stale and ignored, as are negative or non-finite samples.
        """
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
        """Expire entries older than ``max_age_s`` before ``now`` and summarise the rest."""
        self._expire(now)
        entries = self._entries
        least = self._minima[0][1] if self._minima else 0.0
        jitter = _quantiles((e.transit_delta_ms for e in entries), (50, 95, 99))
        gaps = _quantiles((e.interarrival_ms for e in entries), (50, 95, 99))
        delays = _quantiles(
            (None if e.transit_ms is None else e.transit_ms - least for e in entries),
            (50, 95, 99),
        )
        latency = _quantiles((e.latency_ms for e in entries), (50, 95, 99))
        processing = _quantiles((e.processing_ms for e in entries), (50, 95))
        return LatencyStats(
            frames=len(entries),
            jitter_rfc3550_ms=self._jitter_ms,
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
        """RFC 3550 |D(i-1, i)|, taken as two differences so a large clock offset between
        R and S costs no precision; updates J."""
        if arrival_ms is None or media_ms is None or self._prev_times_ms is None:
            return None
        prev_arrival_ms, prev_media_ms = self._prev_times_ms
        delta = _finite(abs((arrival_ms - prev_arrival_ms) - (media_ms - prev_media_ms)))
        if delta is not None:
            self._jitter_ms += (delta - self._jitter_ms) * _JITTER_GAIN
        return delta

    def _advance_clock(self, arrival_s: float | None) -> float:
        """The window's clock only moves forward, so entries stay in time order."""
        if arrival_s is not None and (self._clock_s is None or arrival_s > self._clock_s):
            self._clock_s = arrival_s
        return self._clock_s if self._clock_s is not None else 0.0

    def _add(self, entry: _Entry) -> None:
        self._next_serial += 1
        self._expire(entry.at_s)
        self._entries.append(entry)
        if entry.transit_ms is not None:
            while self._minima and self._minima[-1][1] >= entry.transit_ms:
                self._minima.pop()
            self._minima.append((entry.serial, entry.transit_ms))
        while len(self._entries) > self.max_frames:
            self._evict()

    def _expire(self, now: float) -> None:
        oldest_kept_s = now - self.max_age_s
        while self._entries and self._entries[0].at_s < oldest_kept_s:
            self._evict()

    def _evict(self) -> None:
        gone = self._entries.popleft()
        if self._minima and self._minima[0][0] == gone.serial:
            self._minima.popleft()

    def _relative_delay(self, transit_ms: float | None) -> float:
        if transit_ms is None or not self._minima:
            return 0.0
        return _finite(transit_ms - self._minima[0][1]) or 0.0

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message, *args)

"""The latency window: per-frame arrival measures and their recent distribution.

Sans-I/O: time comes in as ``frame.arrival_s`` (monotonic seconds) and as ``now`` on
``snapshot``; nothing here reads a clock.

What is measured, per received frame, in arrival order:

- inter-arrival time: this arrival minus the previous one, in ms. A frame whose
  ``arrival_s`` goes backwards (a bad replay, a clock step) is measured with 0 ms rather than
  a negative gap, and never moves the window's clock back.
- RFC 3550 interarrival jitter (section 6.4.1 / A.8), in ms: R = arrival_s * 1000,
  S = media_ms, D(i-1, i) = (Ri - Ri-1) - (Si - Si-1), J += (|D| - J) / 16. J is a running
  estimate over the whole stream, not windowed, exactly as RTP receivers report it. A
  frame that arrives after a discontinuity (``rebase=True``: a reconnect, a restart, an
  outage the jitter buffer re-anchored on) is not compared with the frame before it: an
  outage is not jitter, and one such D would weigh on J for a hundred frames.
- relative one-way delay: transit = R - S above the ``DelayReference``, the least transit
  since the last discontinuity (see that class for why it must not be a sliding-window
  minimum). The sender's clock offset is in every transit, so it cancels; what is left is
  how much later than the least-delayed frame this one came: exactly the margin the
  jitter buffer, which schedules its playout against the same reference, must hold.
- latency: ``(received_wall_s - capture_wall_s) * 1000`` when both are given. It compares
  two parties' wall clocks, so it includes their offset; it is exact on one host (the
  emulator) and a trend elsewhere.
- processing: ``(sent_wall_s - capture_wall_s) * 1000`` when both are given: the sender's
  own clock on both ends, so it has no offset.

The jitter buffer's outcome for the frame (``late``, ``buffered``, ...) is passed through
into the measure, so a policy can aim at the late-loss rate directly.

RTT from ping/pong is smoothed as RFC 6298 SRTT: the first sample is taken as is, then
``srtt += (rtt - srtt) / 8``.

Bounds and cost: the window holds at most ``max_frames`` entries, none older than
``max_age_s``. Each ``observe`` is O(1) amortised. Quantiles are computed only by
``snapshot``, by sorting the window's values (O(n log n) in n <= ``max_frames``): they are
exact, with no bucket error. A quantile is the nearest rank: the smallest value with at
least p % of the values at or below it (the ``ceil(p/100 * n)``-th smallest), so it is
always a measured value and p50 <= p95 <= p99. A snapshot's delays are taken against the
reference at snapshot time (transits are kept net of the jumps of earlier rebases, so a
discontinuity does not show as a delay), floored at 0.

Bad input never raises: a non-finite time, or one so large that milliseconds overflow, makes
the measures that need it None (they are left out of the quantiles), J unchanged and
``relative_delay_ms`` 0; it is logged once per kind. ``jitter_rfc3550_ms`` is None in a
snapshot until a transit delta was measured.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from typing import Any, TypeAlias

from . import checks
from .frames import ArrivalMeasure, ArrivalOutcome, AudioFrame, LatencyStats

__all__ = ["REFERENCE_JUMP_MS", "REFERENCE_RISE_PPM", "DelayReference", "LatencyWindow"]

log = logging.getLogger(__name__)

_JITTER_GAIN = 1 / 16  # RFC 3550 A.8
_SRTT_GAIN = 1 / 8  # RFC 6298 alpha

REFERENCE_RISE_PPM = 500.0
"""How fast the delay reference may creep up, in ms per s of arrival time x 1000.

Sender and receiver clocks drift apart by up to +-100 ppm, so the least transit drifts by
up to 0.1 ms/s: a reference that could only fall would let a fixed playout schedule drift
into lateness. Five times that rate tracks any such drift, yet after a route change up of
100 ms the reference needs 200 s to catch up, so the measured delays stay honest for
the whole time the adjuster needs to learn the new level.
"""

REFERENCE_JUMP_MS = 1_000.0
"""A transit this far below the reference in one frame is a media-clock jump, not a faster
route (routes change by tens of ms; held frames after an outage come 20 ms apart in media
time): the reference re-bases on it instead of following it, since following would count
every later frame as a second early."""


class DelayReference:
    """The transit against which delays are measured and playout is scheduled.

    Why not the least transit of a sliding window (as NetEq's 2 s history, or this
    window before)? After a route change up, that minimum rises within the window's span
    while the playout schedule, anchored before the change, does not: measured delays decay
    back to ~0, the target follows them down, and frames go late. This reference is the
    least transit since the last discontinuity, allowed to rise only at
    ``REFERENCE_RISE_PPM`` (clock drift) and re-based explicitly (``rebase``) when the
    jitter buffer re-anchors its clock, or by itself on a jump of ``REFERENCE_JUMP_MS``.
    The jitter buffer and the latency window each keep one, fed the same frames in the same
    order with the same rebases, so they agree to the bit.
    """

    __slots__ = ("_at_ms", "_ref_ms", "jumped_ms")

    def __init__(self) -> None:
        self._ref_ms: float | None = None
        self._at_ms = 0.0
        self.jumped_ms = 0.0  # sum of the jumps of explicit or automatic rebases

    @property
    def ms(self) -> float | None:
        """The reference transit now, in ms (None before the first finite frame)."""
        return self._ref_ms

    def observe(self, arrival_ms: float, media_ms: float, *, rebase: bool = False) -> float:
        """Fold in one frame's transit; returns its delay above the reference (>= 0)."""
        transit_ms = arrival_ms - media_ms
        ref_ms = self._ref_ms
        if ref_ms is None or rebase or ref_ms - transit_ms > REFERENCE_JUMP_MS:
            if ref_ms is not None:
                self.jumped_ms += transit_ms - ref_ms
            self._ref_ms, self._at_ms = transit_ms, arrival_ms
            return 0.0
        # Comparisons where max() and min() were: same results (ties keep the first
        # operand), at a third of the cost; ``+ 0.0`` is the old ``+ max(0.0, ...)``'s
        # for a -0.0 reference.
        at_ms = self._at_ms
        if arrival_ms > at_ms:
            risen_ms = ref_ms + (arrival_ms - at_ms) * REFERENCE_RISE_PPM * 1e-6
            self._at_ms = arrival_ms
        else:
            risen_ms = ref_ms + 0.0
        ref_ms = self._ref_ms = transit_ms if transit_ms < risen_ms else risen_ms
        return transit_ms - ref_ms


_Entry: TypeAlias = tuple[
    float,  # at_s: the window's clock
    float,  # transit_delta_ms
    float,  # interarrival_ms
    float,  # transit_ms, net of the reference's earlier rebase jumps
    float,  # latency_ms
    float,  # processing_ms
]
"""One frame's measures as the window keeps them: a plain tuple, as a NamedTuple's
constructor alone cost about a third of a microsecond per frame; ``_UNMEASURED`` where a
measure could not be taken."""

_UNMEASURED = math.inf
"""Stands in the window for a measure that could not be taken (None in the frame's
``ArrivalMeasure``). Every measured value is finite, so it sorts after all of them: a
snapshot sorts a column as it is and cuts it there, where filtering out None first took
a third of the snapshot's time."""

_TAME = 1e18
"""Arrival seconds and media milliseconds of magnitude below this keep every measure
finite, for as many rebases as a stream could ever have: frames within it skip the
finiteness checks. The dialects refuse NaN and infinities and bound their times below
it (Twilio's timestamps at 2**53 ms, appfoundry's wall clock at 1e11 s)."""


class _MeasureDraft:
    """An ``ArrivalMeasure`` while the window fills it in: the same slots, writable. It
    becomes the frozen measure by taking its class (same layout, so Python allows it).
    The frozen ``__init__`` sets its ten fields through ``object.__setattr__``: about
    7000 instructions a measure, nearly half of ``observe``; this way about 1800."""

    __slots__ = ArrivalMeasure.__slots__


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _wall_gap_ms(later_s: float | None, earlier_s: float | None) -> float | None:
    if later_s is None or earlier_s is None:
        return None
    return _finite((later_s - earlier_s) * 1000.0)


def _kept(value: float | None) -> float:
    return _UNMEASURED if value is None else value


def _nearest_rank(ordered: list[float], measured: int, percent: float) -> float | None:
    if not measured:
        return None
    rank = math.ceil(percent / 100.0 * measured)
    return ordered[max(rank, 1) - 1]


def _quantiles(values: Iterable[float], percents: tuple[float, ...]) -> tuple[float | None, ...]:
    """Nearest-rank quantiles of the measured values: the window keeps only finite ones,
    and ``_UNMEASURED`` (sorted last) where a measure could not be taken."""
    ordered = sorted(values)
    measured = bisect_left(ordered, _UNMEASURED)
    return tuple(_nearest_rank(ordered, measured, p) for p in percents)


class LatencyWindow:
    """Sliding window, count and time bounded, of one stream's arrival measures."""

    def __init__(self, max_frames: int = 500, max_age_s: float = 10.0) -> None:
        kept = checks.count("max_frames", max_frames, low=1, hint="500 keeps 10 s of 20 ms frames")
        checks.number("max_age_s", max_age_s, low=0.0, above=True, unit="s", hint="try 10.0")
        self.max_frames = max_frames
        self.max_age_s = max_age_s
        self._entries: deque[_Entry] = deque(maxlen=kept)
        self._reference = DelayReference()
        self._measured_jitter = False
        self._clock_s: float | None = None
        self._prev_arrival_ms: float | None = None  # the last finite (R, S)
        self._prev_media_ms = 0.0
        self._jitter_ms = 0.0
        self._tame = True  # no frame outside _TAME yet: the fast path is exact
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

    @property
    def reference_ms(self) -> float | None:
        """The delay reference's transit now (see ``DelayReference``)."""
        return self._reference.ms

    def observe(  # noqa: PLR0915 (one straight pass: a helper call costs 5 % of it)
        self, frame: AudioFrame, outcome: ArrivalOutcome = "buffered", *, rebase: bool = False
    ) -> ArrivalMeasure:
        """Measure one received frame; call once per frame, in arrival order.

        ``outcome`` is what the jitter buffer did with the frame (its ``last_outcome``)
        and ``rebase`` whether it re-anchored its clock on it (``last_reanchored``), so
        that both measure delay against the same reference.

        This is the fast path, for a stream whose times have all been within ``_TAME``:
        the checked path's arithmetic in one pass, with no finiteness checks on what
        cannot be non-finite (the wall clocks, which can, are checked as ``x - x == 0``,
        ``math.isfinite`` without a call). Any other frame goes to ``_observe_checked``,
        and so do all after it, since a huge time left in the state could make a later
        difference overflow. Cost per frame: 10.8k instructions (callgrind; 1.8k of them
        the measure), where the single checked path before took 47k.
        """
        arrival_s, media_ms = frame.arrival_s, frame.media_ms
        if not (self._tame and -_TAME < arrival_s < _TAME and -_TAME < media_ms < _TAME):
            return self._observe_checked(frame, outcome, rebase)
        arrival_ms = arrival_s * 1000.0
        prev_arrival_ms = self._prev_arrival_ms
        interarrival_ms: float | None = None
        transit_delta_ms: float | None = None
        if prev_arrival_ms is not None:
            gap_ms = arrival_ms - prev_arrival_ms
            interarrival_ms = gap_ms if gap_ms >= 0 else self._backwards(gap_ms)
            if not rebase:
                transit_delta_ms = abs(gap_ms - (media_ms - self._prev_media_ms))
                self._jitter_ms += (transit_delta_ms - self._jitter_ms) * _JITTER_GAIN
                self._measured_jitter = True
        self._prev_arrival_ms, self._prev_media_ms = arrival_ms, media_ms
        reference = self._reference
        relative_ms = reference.observe(arrival_ms, media_ms, rebase=rebase)
        transit_ms = (arrival_ms - media_ms) - reference.jumped_ms
        clock_s = self._clock_s
        entries = self._entries
        if clock_s is None or arrival_s > clock_s:
            self._clock_s = clock_s = arrival_s
            oldest_kept_s = clock_s - self.max_age_s
            while entries and entries[0][0] < oldest_kept_s:
                entries.popleft()
        capture_s = frame.capture_wall_s
        latency_ms = processing_ms = None
        if capture_s is not None:
            received_s = frame.received_wall_s
            if received_s is not None:
                latency_ms = (received_s - capture_s) * 1000.0
                if latency_ms - latency_ms != 0.0:
                    latency_ms = None
            sent_s = frame.sent_wall_s
            if sent_s is not None:
                processing_ms = (sent_s - capture_s) * 1000.0
                if processing_ms - processing_ms != 0.0:
                    processing_ms = None
        entries.append(
            (
                clock_s,
                _UNMEASURED if transit_delta_ms is None else transit_delta_ms,
                _UNMEASURED if interarrival_ms is None else interarrival_ms,
                transit_ms,
                _UNMEASURED if latency_ms is None else latency_ms,
                _UNMEASURED if processing_ms is None else processing_ms,
            )
        )
        draft: Any = _MeasureDraft()
        draft.arrival_s = arrival_s
        draft.seq = frame.seq
        draft.frame_ms = frame.duration_ms
        draft.interarrival_ms = interarrival_ms
        draft.transit_delta_ms = transit_delta_ms
        draft.jitter_ms = self._jitter_ms
        draft.relative_delay_ms = relative_ms
        draft.latency_ms = latency_ms
        draft.processing_ms = processing_ms
        draft.outcome = outcome
        draft.__class__ = ArrivalMeasure
        measure: ArrivalMeasure = draft
        return measure

    def _observe_checked(
        self, frame: AudioFrame, outcome: ArrivalOutcome, rebase: bool
    ) -> ArrivalMeasure:
        """``observe`` for any times at all: every value that could be non-finite is."""
        self._tame = False
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
            self._prev_arrival_ms, self._prev_media_ms = arrival_ms, media_ms
            transit_ms = _finite(arrival_ms - media_ms)
            if transit_ms is not None:
                relative_ms = (
                    _finite(self._reference.observe(arrival_ms, media_ms, rebase=rebase)) or 0.0
                )
                transit_ms = _finite(transit_ms - self._reference.jumped_ms)
        at_s = self._advance_clock(None if arrival_ms is None else frame.arrival_s)
        latency_ms = _wall_gap_ms(frame.received_wall_s, frame.capture_wall_s)
        processing_ms = _wall_gap_ms(frame.sent_wall_s, frame.capture_wall_s)
        self._add(
            (
                at_s,
                _kept(transit_delta_ms),
                _kept(interarrival_ms),
                _kept(transit_ms),
                _kept(latency_ms),
                _kept(processing_ms),
            )
        )
        return ArrivalMeasure(
            arrival_s=frame.arrival_s,
            seq=frame.seq,
            frame_ms=frame.duration_ms,
            interarrival_ms=interarrival_ms,
            transit_delta_ms=transit_delta_ms,
            jitter_ms=self._jitter_ms,
            relative_delay_ms=relative_ms,
            latency_ms=latency_ms,
            processing_ms=processing_ms,
            outcome=outcome,
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
        ref_ms = self._reference.ms
        least = 0.0 if ref_ms is None else ref_ms - self._reference.jumped_ms
        columns = tuple(zip(*entries, strict=True)) or ((),) * 6
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
        prev_arrival_ms = self._prev_arrival_ms
        if arrival_ms is None or prev_arrival_ms is None:
            return None
        gap_ms = arrival_ms - prev_arrival_ms
        if gap_ms < 0:
            return self._backwards(gap_ms)
        return _finite(gap_ms)

    def _backwards(self, gap_ms: float) -> float:
        """An arrival before the previous one is measured as a gap of 0 ms."""
        self._warn_once("backwards", "arrival time went back by %.3f ms", -gap_ms)
        return 0.0

    def _transit_delta(self, arrival_ms: float | None, media_ms: float | None) -> float | None:
        """RFC 3550 |D(i-1, i)|, taken as two differences so a large clock offset between
        R and S costs no precision; updates J."""
        prev_arrival_ms = self._prev_arrival_ms
        if arrival_ms is None or media_ms is None or prev_arrival_ms is None:
            return None
        delta = _finite(abs((arrival_ms - prev_arrival_ms) - (media_ms - self._prev_media_ms)))
        if delta is not None:
            self._jitter_ms += (delta - self._jitter_ms) * _JITTER_GAIN
            self._measured_jitter = True
        return delta

    def _advance_clock(self, arrival_s: float | None) -> float:
        """The window's clock only moves forward, so entries stay in time order."""
        if arrival_s is not None and (self._clock_s is None or arrival_s > self._clock_s):
            self._clock_s = arrival_s
        return self._clock_s if self._clock_s is not None else 0.0

    def _add(self, entry: _Entry) -> None:
        """Appending past ``max_frames`` drops the oldest (the deque's ``maxlen``)."""
        self._expire(entry[0])
        self._entries.append(entry)

    def _expire(self, now: float) -> None:
        entries = self._entries
        oldest_kept_s = now - self.max_age_s
        while entries and entries[0][0] < oldest_kept_s:
            entries.popleft()

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message, *args)

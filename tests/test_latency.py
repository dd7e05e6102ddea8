"""The latency window, fed frames as the network would deliver them."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError, fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pinned_testkit
from jitterline.errors import ConfigError
from jitterline.frames import ArrivalMeasure, ArrivalOutcome, AudioFrame, LatencyStats
from jitterline.latency import REFERENCE_RISE_PPM, DelayReference, LatencyWindow

RISE_MS = 0.05  # the delay reference may creep up 0.5 ms/s (clock drift)


def frame(
    seq: int,
    arrival_s: float,
    media_ms: float | None = None,
    *,
    capture_wall_s: float | None = None,
    sent_wall_s: float | None = None,
    received_wall_s: float | None = None,
) -> AudioFrame:
    return AudioFrame(
        stream_id="s",
        seq=seq,
        media_ms=seq * 20.0 if media_ms is None else media_ms,
        codec="PCMU",
        sample_rate=8000,
        channels=1,
        payload=b"",
        duration_ms=20.0,
        arrival_s=arrival_s,
        capture_wall_s=capture_wall_s,
        sent_wall_s=sent_wall_s,
        received_wall_s=received_wall_s,
    )


def feed(window: LatencyWindow, arrivals_s: list[float]) -> list[ArrivalMeasure]:
    return [window.observe(frame(seq, t)) for seq, t in enumerate(arrivals_s)]


def test_steady_20ms_stream_has_zero_jitter_and_delay() -> None:
    window = LatencyWindow()
    measures = feed(window, [i * 0.020 for i in range(50)])
    assert window.jitter_ms == pytest.approx(0.0, abs=1e-9)
    assert measures[0].interarrival_ms is None
    assert measures[0].transit_delta_ms is None
    assert all(m.interarrival_ms == pytest.approx(20.0) for m in measures[1:])
    assert all(m.relative_delay_ms == pytest.approx(0.0, abs=1e-9) for m in measures)


def test_one_packet_10ms_late_follows_rfc3550_recurrence() -> None:
    window = LatencyWindow()
    # seq 3 was due at 60 ms and came at 70 ms; seq 4 is back on time.
    measures = feed(window, [0.000, 0.020, 0.040, 0.070, 0.080, 0.100])
    late, recovered, after = measures[3], measures[4], measures[5]
    assert late.transit_delta_ms == pytest.approx(10.0)
    assert late.jitter_ms == pytest.approx(10 / 16)
    assert late.relative_delay_ms == pytest.approx(10.0, abs=RISE_MS)
    assert recovered.transit_delta_ms == pytest.approx(10.0)
    assert recovered.jitter_ms == pytest.approx(10 / 16 + (10 - 10 / 16) / 16)
    assert after.jitter_ms == pytest.approx(recovered.jitter_ms * 15 / 16)
    assert after.relative_delay_ms == pytest.approx(0.0, abs=1e-9)


def test_reordered_arrival_is_measured_by_media_time() -> None:
    window = LatencyWindow()
    window.observe(frame(0, 0.000))
    window.observe(frame(1, 0.020))
    overtaker = window.observe(frame(3, 0.060))
    overtaken = window.observe(frame(2, 0.065))  # due at 40 ms, 25 ms late
    assert overtaker.transit_delta_ms == pytest.approx(0.0, abs=1e-9)
    assert overtaken.transit_delta_ms == pytest.approx(25.0)
    assert overtaken.relative_delay_ms == pytest.approx(25.0, abs=RISE_MS)


def test_sender_clock_offset_cancels_out_of_relative_delay() -> None:
    arrivals_s = [0.0, 0.021, 0.047, 0.060, 0.095, 0.100, 0.133]
    near, far = LatencyWindow(), LatencyWindow()
    for seq, arrival_s in enumerate(arrivals_s):
        a = near.observe(frame(seq, arrival_s, seq * 20.0))
        b = far.observe(frame(seq, arrival_s, seq * 20.0 + 1e9))
        assert b.relative_delay_ms == pytest.approx(a.relative_delay_ms, abs=1e-6)
        assert b.transit_delta_ms == pytest.approx(a.transit_delta_ms, abs=1e-6)
    assert far.jitter_ms == pytest.approx(near.jitter_ms, abs=1e-6)
    near_stats, far_stats = near.snapshot(1.0), far.snapshot(1.0)
    assert far_stats.delay_p95_ms == pytest.approx(near_stats.delay_p95_ms, abs=1e-6)
    assert near_stats.delay_p99_ms == pytest.approx(
        15.0, abs=RISE_MS
    )  # seq 4 at 95 ms, due at 80 ms


def test_less_delayed_frame_later_lowers_the_reference() -> None:
    window = LatencyWindow()
    first = window.observe(frame(0, 0.050))  # 50 ms in flight: the least so far
    second = window.observe(frame(1, 0.040))  # 20 ms in flight: new minimum
    assert first.relative_delay_ms == 0.0
    assert second.relative_delay_ms == 0.0
    assert second.interarrival_ms == 0.0  # arrival went backwards: measured as 0
    assert window.snapshot(0.1).delay_p99_ms == pytest.approx(30.0)


def test_reference_does_not_drift_back_up_after_a_route_change_up() -> None:
    window = LatencyWindow(max_frames=50, max_age_s=1.0)
    for seq in range(100):  # 2 s at 10 ms transit
        window.observe(frame(seq, seq * 0.020 + 0.010))
    # The route gets 80 ms longer, for 30 s: far beyond the window's size and age.
    measures = [window.observe(frame(seq, seq * 0.020 + 0.090)) for seq in range(100, 1600)]
    rise_ms = 32.1 * REFERENCE_RISE_PPM / 1000  # the most it may creep up since t=0
    assert measures[0].relative_delay_ms == pytest.approx(80.0, abs=RISE_MS)
    assert measures[-1].relative_delay_ms >= 80.0 - rise_ms
    assert window.snapshot(32.0).delay_p50_ms == pytest.approx(
        measures[-1].relative_delay_ms, abs=1e-6
    )


def test_rebase_restarts_the_reference_and_keeps_the_jump_out_of_the_jitter() -> None:
    window = LatencyWindow()
    feed(window, [i * 0.020 for i in range(50)])
    # A reconnect: the server held its audio for 3 s and resumed the sequence.
    resumed = window.observe(frame(50, 1.0 + 3.0), "buffered", rebase=True)
    after = window.observe(frame(51, 1.02 + 3.0))
    assert resumed.relative_delay_ms == 0.0
    assert resumed.transit_delta_ms is None
    assert after.relative_delay_ms == pytest.approx(0.0, abs=RISE_MS)
    assert window.jitter_ms == pytest.approx(0.0, abs=1e-6)
    assert window.snapshot(4.1).delay_p99_ms == pytest.approx(0.0, abs=RISE_MS)


def test_outcome_is_passed_through_to_the_measure() -> None:
    window = LatencyWindow()
    assert window.observe(frame(0, 0.0)).outcome == "buffered"
    assert window.observe(frame(1, 0.5), "late").outcome == "late"


def test_rfc3550_jitter_is_null_until_measured() -> None:
    window = LatencyWindow()
    assert window.snapshot(0.0).jitter_rfc3550_ms is None
    window.observe(frame(0, 0.0))
    assert window.snapshot(0.0).jitter_rfc3550_ms is None
    window.observe(frame(1, 0.02))
    assert window.snapshot(0.0).jitter_rfc3550_ms == pytest.approx(0.0, abs=1e-9)


def test_window_size_stays_bounded_over_100k_frames() -> None:
    window = LatencyWindow(max_frames=500, max_age_s=3600.0)
    for seq in range(100_000):
        window.observe(frame(seq, seq * 0.020))
        assert len(window) <= 500
    assert len(window) == 500
    assert window.snapshot(2000.0).frames == 500


def test_time_bound_drops_frames_from_before_a_30s_outage() -> None:
    window = LatencyWindow(max_frames=10_000, max_age_s=10.0)
    # 5 s of heavy jitter: every other frame 80 ms late.
    for seq in range(250):
        window.observe(frame(seq, seq * 0.020 + (0.080 if seq % 2 else 0.0)))
    assert window.snapshot(5.0).jitter_p99_ms == pytest.approx(80.0)
    start_s, start_seq = 35.0, 1750  # 30 s of silence, then a clean stream
    for i in range(100):
        window.observe(frame(start_seq + i, start_s + i * 0.020))
    stats = window.snapshot(start_s + 2.0)
    assert stats.frames == 100
    assert stats.jitter_p99_ms == pytest.approx(0.0, abs=1e-6)
    assert stats.interarrival_p99_ms == pytest.approx(20.0)
    assert window.snapshot(start_s + 60.0) == LatencyStats(
        frames=0, jitter_rfc3550_ms=window.jitter_ms
    )


def test_percentiles_are_nearest_rank_of_latency_1_to_100_ms() -> None:
    window = LatencyWindow()
    for seq in range(100):
        capture_s = 1_700_000_000.0 + seq * 0.020
        window.observe(
            frame(
                seq,
                seq * 0.020,
                capture_wall_s=capture_s,
                sent_wall_s=capture_s + 0.004,
                received_wall_s=capture_s + (100 - seq) / 1000,
            )
        )
    stats = window.snapshot(2.0)
    assert stats.latency_p50_ms == pytest.approx(50.0, abs=1e-3)
    assert stats.latency_p95_ms == pytest.approx(95.0, abs=1e-3)
    assert stats.latency_p99_ms == pytest.approx(99.0, abs=1e-3)
    assert stats.processing_p50_ms == pytest.approx(4.0, abs=1e-3)
    assert stats.processing_p95_ms == pytest.approx(4.0, abs=1e-3)


def test_latency_and_processing_need_both_wall_clocks() -> None:
    window = LatencyWindow()
    measure = window.observe(frame(0, 0.0, capture_wall_s=100.0, received_wall_s=100.25))
    assert measure.latency_ms == pytest.approx(250.0)
    assert measure.processing_ms is None
    stats = window.snapshot(0.0)
    assert stats.processing_p50_ms is None
    assert stats.latency_p50_ms == pytest.approx(250.0)


def test_rtt_is_smoothed_like_rfc6298_and_stale_pongs_are_ignored() -> None:
    window = LatencyWindow()
    assert window.snapshot(0.0).rtt_ms is None
    window.observe_rtt(80.0, now=1.0)
    window.observe_rtt(160.0, now=2.0)
    assert window.snapshot(2.0).rtt_ms == pytest.approx(90.0)
    window.observe_rtt(1000.0, now=1.5)  # answered before the last one
    window.observe_rtt(float("nan"), now=3.0)
    window.observe_rtt(-5.0, now=3.0)
    assert window.snapshot(3.0).rtt_ms == pytest.approx(90.0)


def test_non_finite_times_are_measured_as_unknown() -> None:
    window = LatencyWindow()
    window.observe(frame(0, 0.0))
    bad = window.observe(frame(1, math.nan))
    also_bad = window.observe(frame(2, 0.040, media_ms=math.inf))
    good = window.observe(frame(3, 0.060))
    assert bad.interarrival_ms is None
    assert bad.transit_delta_ms is None
    assert bad.relative_delay_ms == 0.0
    assert also_bad.transit_delta_ms is None
    assert good.transit_delta_ms == pytest.approx(0.0, abs=1e-9)  # D against seq 0
    assert window.jitter_ms == 0.0
    assert window.snapshot(0.1).frames == 4


@pytest.mark.parametrize(
    ("max_frames", "max_age_s"),
    [(0, 10.0), (-1, 10.0), (500, 0.0), (500, -1.0), (500, math.nan), (500, math.inf)],
)
def test_bad_window_bounds_are_config_errors(max_frames: int, max_age_s: float) -> None:
    with pytest.raises(ConfigError, match="must be"):
        LatencyWindow(max_frames=max_frames, max_age_s=max_age_s)


any_time = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-1e3, 1e4)
wall = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 1e10)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(any_time, any_time, wall, wall, wall, st.booleans()), max_size=60),
    st.integers(1, 20),
    any_time,
)
def test_arbitrary_times_never_raise_and_quantiles_are_monotone(
    rows: list[tuple[float, float, float | None, float | None, float | None, bool]],
    max_frames: int,
    now: float,
) -> None:
    window = LatencyWindow(max_frames=max_frames, max_age_s=5.0)
    for seq, (arrival_s, media_ms, capture_s, sent_s, received_s, rebase) in enumerate(rows):
        measure = window.observe(
            frame(
                seq,
                arrival_s,
                media_ms,
                capture_wall_s=capture_s,
                sent_wall_s=sent_s,
                received_wall_s=received_s,
            ),
            "late" if seq % 3 == 0 else "buffered",
            rebase=rebase,
        )
        assert measure.outcome == ("late" if seq % 3 == 0 else "buffered")
        assert math.isfinite(measure.jitter_ms)
        assert measure.relative_delay_ms >= 0
        assert len(window) <= max_frames
    window.observe_rtt(now, now)
    stats = window.snapshot(now)
    for p50, p95, p99 in [
        (stats.jitter_p50_ms, stats.jitter_p95_ms, stats.jitter_p99_ms),
        (stats.interarrival_p50_ms, stats.interarrival_p95_ms, stats.interarrival_p99_ms),
        (stats.delay_p50_ms, stats.delay_p95_ms, stats.delay_p99_ms),
        (stats.latency_p50_ms, stats.latency_p95_ms, stats.latency_p99_ms),
    ]:
        if p50 is not None:
            assert p95 is not None
            assert p99 is not None
            assert p50 <= p95 <= p99
    if stats.processing_p50_ms is not None:
        assert stats.processing_p95_ms is not None
        assert stats.processing_p50_ms <= stats.processing_p95_ms


# -- the rewrite against the window as it was (tests/pinned_testkit.py), bit for bit ------

outcomes: st.SearchStrategy[ArrivalOutcome] = st.sampled_from(
    ["buffered", "late", "duplicate", "overflow"]
)
wild_time = st.sampled_from(
    [math.nan, math.inf, -math.inf, 1.5e308, -1.5e308, 2e18, -2e18, -0.0, 0.0, 5e-324]
)
Step = tuple[AudioFrame, ArrivalOutcome, bool, float | None]


def offset(base_s: float | None, by_s: float | None) -> float | None:
    return None if base_s is None or by_s is None else base_s + by_s


@st.composite
def streams(draw: st.DrawFn) -> list[Step]:
    """Steps (frame, outcome, rebase, snapshot time or None) of a stream as a dialect
    delivers it (the fast path), and, in half the streams, now and then a NaN, an
    infinity, a time past the fast path's bound or a -0.0 (the checked path, and the
    switch to it)."""
    arrival_s = draw(st.sampled_from([0.0, 5.0, 1.7e9]))
    media_ms = draw(st.sampled_from([0.0, 1.7e12, -3e5]))
    wild = draw(st.booleans())
    steps = []
    for seq in range(draw(st.integers(0, 120))):
        arrival_s += draw(st.integers(-40, 400)) / 1000  # may go back
        media_ms += 20.0
        times = [arrival_s, media_ms + draw(st.integers(-5, 5)) * 10.0]
        capture_s = 1.7e9 + arrival_s if draw(st.booleans()) else None
        walls = [
            capture_s,
            offset(capture_s, draw(st.sampled_from([None, 0.0, 0.004, -0.002]))),
            offset(capture_s, draw(st.sampled_from([None, 0.05, 0.3]))),
        ]
        if wild and draw(st.integers(0, 4)) == 0:
            which = draw(st.integers(0, 4))
            if which < 2:
                times[which] = draw(wild_time)
            else:
                walls[which - 2] = draw(wild_time)
        item = frame(
            seq,
            times[0],
            times[1],
            capture_wall_s=walls[0],
            sent_wall_s=walls[1],
            received_wall_s=walls[2],
        )
        snapshot_s = offset(arrival_s, draw(st.none() | st.floats(-1.0, 12.0)))
        steps.append((item, draw(outcomes), draw(st.integers(0, 15)) == 0, snapshot_s))
    return steps


def replay_both(steps: list[Step], max_frames: int = 500, max_age_s: float = 10.0) -> None:
    window = LatencyWindow(max_frames=max_frames, max_age_s=max_age_s)
    pinned = pinned_testkit.LatencyWindow(max_frames=max_frames, max_age_s=max_age_s)
    for item, outcome, rebase, snapshot_s in steps:
        got = window.observe(item, outcome, rebase=rebase)
        assert type(got) is ArrivalMeasure
        assert repr(got) == repr(pinned.observe(item, outcome, rebase=rebase))
        assert repr((window.jitter_ms, window.reference_ms, len(window))) == repr(
            (pinned.jitter_ms, pinned.reference_ms, len(pinned))
        )
        assert window._warned == pinned._warned  # the same warnings, at the same frames
        if snapshot_s is not None:
            assert repr(window.snapshot(snapshot_s)) == repr(pinned.snapshot(snapshot_s))


@settings(max_examples=300, deadline=None)
@given(streams(), st.integers(1, 40), st.sampled_from([0.5, 2.0, 10.0]))
def test_measures_and_snapshots_match_the_window_as_it_was(
    steps: list[Step], max_frames: int, max_age_s: float
) -> None:
    replay_both(steps, max_frames, max_age_s)


@pytest.mark.parametrize("huge", [1.5e308, 2e18])
def test_huge_times_of_either_sign_overflow_as_they_did(huge: float) -> None:
    """Two media-clock jumps of opposite signs near the float limit: their rebase jumps
    sum past it, so the checked path must have taken over at the first."""
    times = [(0.0, 0.0), (0.02, huge), (0.04, 40.0), (0.06, -huge), (0.08, 80.0)]
    replay_both([(frame(seq, *t), "buffered", False, 0.1) for seq, t in enumerate(times)])


def test_a_measure_is_a_whole_arrival_measure() -> None:
    """The fast path fills the measure slot by slot: all of them, equal to the dataclass's
    own construction (a field added to ArrivalMeasure and not to the window fails here)."""
    window = LatencyWindow()
    window.observe(frame(0, 0.0))
    measure = window.observe(frame(1, 0.021, capture_wall_s=1.0, sent_wall_s=1.002))
    rebuilt = ArrivalMeasure(**{f.name: getattr(measure, f.name) for f in fields(measure)})
    assert measure == rebuilt
    assert hash(measure) == hash(rebuilt)
    with pytest.raises(FrozenInstanceError):
        measure.seq = 2  # type: ignore[misc]


ms_values = st.sampled_from([-0.0, 0.0, 5e-324, 0.5, 20.0, -20.0, 999.0, 1001.0, -2500.0, 1e17])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(ms_values, ms_values, st.booleans()), max_size=30))
def test_delay_reference_matches_the_one_it_was(steps: list[tuple[float, float, bool]]) -> None:
    """Signed zeros and ties included: comparisons stand where max() and min() were."""
    reference, pinned = DelayReference(), pinned_testkit.DelayReference()
    for arrival_ms, media_ms, rebase in steps:
        got = reference.observe(arrival_ms, media_ms, rebase=rebase)
        assert repr(got) == repr(pinned.observe(arrival_ms, media_ms, rebase=rebase))
        assert repr((reference.ms, reference.jumped_ms)) == repr((pinned.ms, pinned.jumped_ms))

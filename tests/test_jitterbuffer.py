"""The jitter buffer's contract, scenario by scenario (named after the network event), plus
properties: the accounting identity holds at every step and the output does not depend on
how often the clock is ticked (the replay guarantee)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitterline.errors import ConfigError
from jitterline.frames import AudioFrame, BufferStats, FrameCounts
from jitterline.jitterbuffer import JitterBuffer
from jitterline.latency import LatencyWindow

FRAME_MS = 20.0


def make_frame(
    seq: int,
    arrival_s: float,
    *,
    codec: str = "PCMU",
    payload: bytes | None = None,
    with_samples: bool = False,
    stream_id: str = "call-1",
    media_ms: float | None = None,
) -> AudioFrame:
    samples = None
    if with_samples:
        samples = np.full(160, seq + 1, dtype=np.int16)
        samples.flags.writeable = False
    return AudioFrame(
        stream_id=stream_id,
        seq=seq,
        media_ms=seq * FRAME_MS if media_ms is None else media_ms,
        codec=codec,
        sample_rate=8000,
        channels=1,
        payload=payload if payload is not None else bytes([seq % 256]) * 160,
        duration_ms=FRAME_MS,
        arrival_s=arrival_s,
        samples=samples,
    )


def on_time(seq: int, start_s: float = 0.0) -> AudioFrame:
    """Frame ``seq`` of a stream sending every 20 ms, arriving with no jitter."""
    return make_frame(seq, start_s + seq * FRAME_MS / 1000)


def feed(buffer: JitterBuffer, frames: list[AudioFrame]) -> list[AudioFrame]:
    emitted: list[AudioFrame] = []
    for frame in frames:
        emitted += buffer.push(frame)
    return emitted


def seqs(frames: list[AudioFrame]) -> list[int]:
    return [f.seq for f in frames]


def times(frames: list[AudioFrame]) -> list[float]:
    return [f.playout_s or 0.0 for f in frames]


# The delay reference may creep up 0.5 ms per s while frames arrive above it (clock drift
# allowance), moving the schedule by as much: playout times are exact to within that.
CREEP_S = 1e-5


def slot_s(k: int, *, anchor_s: float = 0.0, target_ms: float = 80.0) -> float:
    """Playout time of the k-th slot after the anchor, computed the way the contract states."""
    return anchor_s + (target_ms + k * FRAME_MS) / 1000


# -- scenarios ------------------------------------------------------------------------


def test_in_order_stream_plays_every_frame_at_first_arrival_plus_target_plus_k_frames() -> None:
    buffer = JitterBuffer()
    emitted = feed(buffer, [on_time(k, start_s=5.0) for k in range(10)])
    emitted += buffer.pop_due(slot_s(9, anchor_s=5.0))

    assert seqs(emitted) == list(range(10))
    assert [f.playout_s for f in emitted] == [slot_s(k, anchor_s=5.0) for k in range(10)]
    assert not any(f.concealed for f in emitted)
    assert buffer.counts() == FrameCounts(received=10, played=10)
    assert buffer.level_ms == 0.0


def test_push_returns_the_frames_that_fell_due_before_the_arrival() -> None:
    buffer = JitterBuffer()
    assert feed(buffer, [on_time(k) for k in range(4)]) == []
    assert buffer.level_ms == 80.0
    assert buffer.next_due_s == slot_s(0)

    emitted = buffer.push(on_time(4))  # arrives at 0.08 s, exactly slot 0's time

    assert seqs(emitted) == [0]
    assert buffer.counts().unplayed == 4


def test_reorder_within_the_delay_plays_in_seq_order() -> None:
    buffer = JitterBuffer()
    arrivals = [make_frame(0, 0.0), make_frame(2, 0.045), make_frame(1, 0.05), make_frame(3, 0.06)]
    emitted = feed(buffer, arrivals) + buffer.pop_due(slot_s(3))

    assert seqs(emitted) == [0, 1, 2, 3]
    assert times(emitted) == pytest.approx([slot_s(k) for k in range(4)], abs=CREEP_S)
    assert buffer.counts() == FrameCounts(received=4, played=4, reordered=1)


def test_lower_seq_before_start_moves_the_first_slot_down_without_moving_the_anchor() -> None:
    buffer = JitterBuffer()
    emitted = feed(buffer, [make_frame(5, 1.0), make_frame(4, 1.01)])
    emitted += buffer.pop_due(slot_s(1, anchor_s=1.0) + CREEP_S)

    assert seqs(emitted) == [4, 5]
    assert times(emitted) == pytest.approx(
        [slot_s(0, anchor_s=1.0), slot_s(1, anchor_s=1.0)], abs=CREEP_S
    )
    assert buffer.counts() == FrameCounts(received=2, played=2, reordered=1)


def test_frame_arriving_after_its_slot_is_late_and_its_concealment_is_no_longer_lost() -> None:
    buffer = JitterBuffer()
    emitted = feed(buffer, [on_time(0), on_time(1), on_time(3), on_time(4)])
    emitted += buffer.pop_due(slot_s(2))

    assert seqs(emitted) == [0, 1, 2]
    assert emitted[2].concealed
    assert buffer.counts().lost == 1

    assert buffer.push(make_frame(2, slot_s(2) + 0.005)) == []

    assert buffer.counts() == FrameCounts(
        received=5, played=2, late=1, unplayed=2, lost=0, concealed=1, reordered=1
    )


def test_frame_arriving_exactly_at_its_slot_time_is_late() -> None:
    buffer = JitterBuffer()
    buffer.push(make_frame(0, 0.0))

    emitted = buffer.push(make_frame(1, slot_s(1)))

    assert [(f.seq, f.concealed) for f in emitted] == [(0, False), (1, True)]
    assert buffer.counts() == FrameCounts(received=2, played=1, late=1, concealed=1)


def test_duplicate_of_a_buffered_frame_is_dropped_and_of_a_played_frame_is_late() -> None:
    buffer = JitterBuffer()
    emitted = feed(buffer, [on_time(0), on_time(1), make_frame(1, 0.03)])
    emitted += buffer.pop_due(slot_s(1))
    emitted += buffer.push(make_frame(0, slot_s(1) + 0.001))

    assert seqs(emitted) == [0, 1]
    assert buffer.counts() == FrameCounts(received=4, played=2, duplicate=1, late=1, reordered=1)


@pytest.mark.parametrize(("codec", "silence"), [("PCMU", 0xFF), ("PCMA", 0xD5), ("L16", 0x00)])
def test_burst_loss_of_five_frames_is_concealed_with_codec_silence(
    codec: str, silence: int
) -> None:
    buffer = JitterBuffer()
    sent = [k for k in range(13) if not 3 <= k <= 7]
    frames = [make_frame(k, k * FRAME_MS / 1000, codec=codec, with_samples=True) for k in sent]
    emitted = feed(buffer, frames) + buffer.pop_due(slot_s(12))

    assert seqs(emitted) == list(range(13))
    assert [f.seq for f in emitted if f.concealed] == [3, 4, 5, 6, 7]
    assert [f.playout_s for f in emitted] == [slot_s(k) for k in range(13)]
    assert buffer.counts() == FrameCounts(received=8, played=8, lost=5, concealed=5)
    gap = emitted[3:8]
    assert all(f.payload == bytes([silence]) * 160 for f in gap)
    assert [f.media_ms for f in gap] == [60.0, 80.0, 100.0, 120.0, 140.0]
    assert all(f.arrival_s == frames[2].arrival_s for f in gap)
    for f in gap:
        assert f.samples is not None
        assert f.samples.shape == (160,)
        assert not f.samples.any()
        assert not f.samples.flags.writeable


def test_repeat_concealment_repeats_the_last_played_payload() -> None:
    buffer = JitterBuffer(conceal="repeat")
    frames = [make_frame(k, k * 0.02, with_samples=True) for k in (0, 1, 4)]
    emitted = feed(buffer, frames) + buffer.pop_due(slot_s(4))

    assert [(f.seq, f.concealed) for f in emitted] == [
        (0, False),
        (1, False),
        (2, True),
        (3, True),
        (4, False),
    ]
    for repeated in emitted[2:4]:
        assert repeated.payload == frames[1].payload
        assert repeated.samples is not None
        assert repeated.samples.tolist() == [2] * 160
    assert buffer.counts().concealed == 2


def test_overflow_drops_the_newest_frame_and_keeps_the_buffered_ones() -> None:
    buffer = JitterBuffer(capacity_frames=4, target_delay_ms=200.0)
    feed(buffer, [on_time(k) for k in range(4)])

    buffer.push(on_time(4))

    assert buffer.counts() == FrameCounts(received=5, overflow=1, unplayed=4)
    assert buffer.level_ms == 80.0
    emitted = buffer.pop_due(slot_s(3, target_ms=200.0))
    assert seqs(emitted) == [0, 1, 2, 3]
    # The window has moved on: seq 4 now fits, and plays in its slot.
    emitted = buffer.push(make_frame(4, slot_s(3, target_ms=200.0) + 0.001))
    emitted += buffer.pop_due(slot_s(4, target_ms=200.0))
    assert seqs(emitted) == [4]
    assert buffer.counts() == FrameCounts(received=6, played=5, overflow=1)


def test_reorder_before_start_beyond_capacity_overflows() -> None:
    buffer = JitterBuffer(capacity_frames=4)
    feed(buffer, [on_time(k) for k in (10, 11, 12, 13)])

    buffer.push(make_frame(9, 0.261))

    assert buffer.counts() == FrameCounts(received=5, overflow=1, unplayed=4, reordered=1)
    assert seqs(buffer.pop_due(slot_s(0, anchor_s=0.2))) == [10]


def test_stream_restart_jump_counts_lost_without_synthesising_frames() -> None:
    buffer = JitterBuffer(max_gap_frames=10)
    frames = [make_frame(0, 0.0), make_frame(1, 0.02), make_frame(2, 0.04)]
    frames += [make_frame(100, 0.06, media_ms=60.0), make_frame(101, 0.08, media_ms=80.0)]
    emitted = feed(buffer, frames) + buffer.pop_due(slot_s(4))

    assert seqs(emitted) == [0, 1, 2, 100, 101]
    assert [f.playout_s for f in emitted] == [slot_s(k) for k in range(5)]
    assert buffer.counts() == FrameCounts(received=5, played=5, lost=97)

    buffer.push(make_frame(50, slot_s(4) + 0.001))  # a straggler from the skipped range
    assert buffer.counts().lost == 96
    assert buffer.counts().late == 1


def stream_with(
    seqs_and_arrivals: list[tuple[int, float]], *, media_of: dict[int, float] | None = None
) -> list[AudioFrame]:
    media = media_of or {}
    return [make_frame(k, t, media_ms=media.get(k)) for k, t in seqs_and_arrivals]


def wait_ms(frame: AudioFrame) -> float:
    assert frame.playout_s is not None
    return (frame.playout_s - frame.arrival_s) * 1000


def first_real(emitted: list[AudioFrame], seq: int) -> AudioFrame:
    return next(f for f in emitted if f.seq == seq and not f.concealed)


@pytest.mark.parametrize("tail_s", [0.0, 0.3, 1.0, 3.0, 60.0])
@pytest.mark.parametrize("ending", ["end", "close"])
def test_idle_tail_after_the_last_frame_is_neither_lost_nor_concealed(
    tail_s: float, ending: str
) -> None:
    buffer = JitterBuffer()
    jitter_ms = [0, 7, 3, 15, 1, 12, 4, 9, 0, 5]
    frames = [make_frame(k, (k * 20 + jitter_ms[k % 10]) / 1000) for k in range(100)]
    emitted = feed(buffer, frames)
    end_s = frames[-1].arrival_s + tail_s
    emitted += buffer.pop_due(end_s)
    emitted += buffer.end(end_s) if ending == "end" else buffer.close(end_s)
    emitted += buffer.pop_due(end_s + 10.0)

    counts = buffer.counts()
    assert (counts.lost, counts.concealed, counts.late) == (0, 0, 0)
    assert not any(f.concealed for f in emitted)
    if ending == "close":  # cut: nothing plays after the end
        assert all((f.playout_s or 0.0) <= end_s for f in emitted)
    if ending == "end" or tail_s >= 0.3:
        assert seqs(emitted) == list(range(100))
        assert counts.unplayed == 0
    assert buffer.closed
    assert buffer.wait_stats().idle_s == pytest.approx(
        max(0.0, end_s - (emitted[-1].playout_s or 0.0) - FRAME_MS / 1000), abs=1e-9
    )


def test_end_drains_the_buffer_at_its_slots_then_closes() -> None:
    buffer = JitterBuffer(target_delay_ms=120.0)
    frames = [make_frame(k, k * 0.02 + (0.03 if k % 3 == 0 else 0.0)) for k in range(50)]
    frames = [f for f in frames if f.seq != 47]  # one real loss near the end
    emitted = feed(buffer, frames)
    last_arrival_s = frames[-1].arrival_s

    assert buffer.end(last_arrival_s) == []  # nothing was due yet
    assert not buffer.closed
    assert buffer.next_due_s is not None
    emitted += buffer.pop_due(last_arrival_s + 5.0)

    assert seqs(emitted) == list(range(50))
    assert [f.seq for f in emitted if f.concealed] == [47]
    assert buffer.counts() == FrameCounts(received=49, played=49, lost=1, concealed=1)
    assert buffer.closed
    assert buffer.next_due_s is None
    assert buffer.push(make_frame(50, last_arrival_s + 6.0)) == []
    assert buffer.last_outcome == "late"


@pytest.mark.parametrize("announced", [True, False])
def test_two_second_pause_mid_stream_is_idle_time_and_the_audio_after_it_is_on_time(
    announced: bool,
) -> None:
    """Seq continuous, media clock jumping 2 s: an AudioHook pause, or silence suppression."""
    buffer = JitterBuffer()
    before = [on_time(k) for k in range(100)]
    pause_s = 2.0
    after = [
        make_frame(k, k * 0.02 + pause_s, media_ms=k * FRAME_MS + pause_s * 1000)
        for k in range(100, 200)
    ]
    emitted = feed(buffer, before)
    if announced:
        emitted += buffer.pause(before[-1].arrival_s + 0.01)
        emitted += buffer.resume(after[0].arrival_s - 0.01)
    emitted += feed(buffer, after) + buffer.end(after[-1].arrival_s)
    emitted += buffer.pop_due(after[-1].arrival_s + 1.0)

    assert seqs(emitted) == list(range(200))
    assert buffer.counts() == FrameCounts(received=200, played=200)
    assert wait_ms(first_real(emitted, 100)) <= 80.0 + FRAME_MS
    assert buffer.wait_stats().idle_s == pytest.approx(pause_s, abs=0.03)


def test_announced_pause_without_a_media_jump_reanchors_on_resume() -> None:
    buffer = JitterBuffer()
    emitted = feed(buffer, [on_time(k) for k in range(50)])
    emitted += buffer.pause(1.0)
    emitted += buffer.pop_due(5.0)
    emitted += buffer.resume(5.0)
    resumed = make_frame(50, 5.5)  # media time carries on from before the pause
    emitted += buffer.push(resumed)

    assert buffer.last_reanchored
    emitted += feed(buffer, [make_frame(k, 5.5 + (k - 50) * 0.02) for k in range(51, 60)])
    emitted += buffer.pop_due(7.0)
    assert seqs(emitted) == list(range(60))
    assert wait_ms(first_real(emitted, 50)) == pytest.approx(80.0)
    assert buffer.counts() == FrameCounts(received=60, played=60)
    assert buffer.wait_stats().idle_s == pytest.approx(5.58 - slot_s(50), abs=1e-9)


def outage(start: int, stop: int, held_s: float) -> list[AudioFrame]:
    """Frames ``start..stop-1`` of a 20 ms stream, every one held ``held_s`` longer."""
    return [make_frame(k, k * 0.02 + held_s) for k in range(start, stop)]


@pytest.mark.parametrize("told", [True, False])
def test_reconnect_with_the_sequence_resumed_plays_at_once(told: bool) -> None:
    """The server paused while the connection was down and resumed the sequence: every
    frame from then on comes 3 s after its media time. Without a re-anchor, all late."""
    buffer = JitterBuffer()
    emitted = feed(buffer, [on_time(k) for k in range(100)])
    if told:
        emitted += buffer.discontinuity(2.5)
    emitted += feed(buffer, outage(100, 300, held_s=3.0))
    emitted += buffer.pop_due(10.0)

    first = first_real(emitted, 100)
    assert wait_ms(first) <= 80.0 + FRAME_MS
    assert seqs(emitted) == list(range(300))
    assert buffer.counts() == FrameCounts(received=300, played=300)


def test_reconnect_with_the_sequence_skipped_counts_the_skipped_seqs_lost() -> None:
    buffer = JitterBuffer()
    emitted = feed(buffer, [on_time(k) for k in range(100)])
    emitted += buffer.discontinuity(2.5)
    emitted += feed(buffer, [on_time(k) for k in range(250, 400)])
    emitted += buffer.pop_due(10.0)

    assert wait_ms(first_real(emitted, 250)) <= 80.0 + FRAME_MS
    assert seqs(emitted) == list(range(100)) + list(range(250, 400))
    assert buffer.counts() == FrameCounts(received=250, played=250, lost=150)


def test_sequence_restart_reanchors_instead_of_counting_the_new_stream_late() -> None:
    buffer = JitterBuffer()
    emitted = feed(buffer, [on_time(k) for k in range(300)])
    restart_s = 6.5
    emitted += feed(buffer, [make_frame(k, restart_s + k * 0.02) for k in range(200)])
    emitted += buffer.pop_due(20.0)

    restarted = [f for f in emitted if (f.playout_s or 0.0) > restart_s]
    assert seqs(restarted) == list(range(200))
    assert wait_ms(restarted[0]) <= 80.0 + FRAME_MS
    assert buffer.counts() == FrameCounts(received=500, played=500)


def test_outage_burst_of_held_frames_is_cut_back_to_the_target_oldest_first() -> None:
    """A handover: frames 100..199 are held and delivered in one burst at 4 s."""
    buffer = JitterBuffer()
    burst = [make_frame(k, 4.0 + (k - 100) * 0.0005) for k in range(100, 200)]
    frames = [on_time(k) for k in range(100)] + burst + [on_time(k) for k in range(200, 300)]
    emitted = feed(buffer, frames) + buffer.pop_due(10.0)

    after = [f for f in emitted if f.seq >= 100]
    assert wait_ms(after[0]) <= 80.0 + FRAME_MS
    counts = buffer.counts()
    assert counts.discarded > 0
    assert counts.late == 0
    assert counts.balanced
    assert counts.played + counts.discarded == 300
    # Back within a frame of the target for every frame from the first slot after it.
    assert all(wait_ms(f) <= 80.0 + FRAME_MS for f in after)


def test_short_delay_spike_makes_late_frames_not_a_reanchor() -> None:
    buffer = JitterBuffer()
    spike = {k: 0.150 - (k - 50) * 0.02 for k in range(50, 58)}  # 150 ms, draining
    frames = [make_frame(k, k * 0.02 + max(0.0, spike.get(k, 0.0))) for k in range(100)]
    emitted = feed(buffer, frames) + buffer.pop_due(5.0)

    counts = buffer.counts()
    assert counts.late == 4  # seqs 50..53 came at or after their slots
    assert counts.lost == 0
    assert counts.concealed == 4
    assert [f.seq for f in emitted if f.concealed] == [50, 51, 52, 53]
    assert seqs(emitted) == list(range(100))
    # 170 ms with every frame above the reference: it may creep up 0.085 ms.
    assert times(emitted) == pytest.approx([slot_s(k) for k in range(100)], abs=1e-4)


@pytest.mark.parametrize("drift_ppm", [100.0, -100.0])
def test_clock_drift_neither_drains_nor_fills_the_buffer(drift_ppm: float) -> None:
    """Ten minutes of a sender whose clock runs 100 ppm fast or slow: 60 ms of drift."""
    buffer = JitterBuffer(target_delay_ms=40.0)
    frames = [make_frame(k, k * 0.02 * (1 + drift_ppm * 1e-6)) for k in range(30_000)]
    emitted = feed(buffer, frames) + buffer.pop_due(700.0)

    assert buffer.counts() == FrameCounts(received=30_000, played=30_000)
    waits = [wait_ms(f) for f in emitted]
    assert min(waits) >= 40.0 - 1.5  # the schedule follows a rising reference in 1 ms steps
    assert max(waits) <= 40.0 + 1.0


def test_wait_stats_report_the_delay_the_buffer_adds() -> None:
    buffer = JitterBuffer(target_delay_ms=60.0)
    assert buffer.wait_stats().mean_ms is None
    frames = [make_frame(k, k * 0.02 + (0.04 if k % 10 == 5 else 0.0)) for k in range(100)]
    feed(buffer, frames)
    buffer.end(frames[-1].arrival_s)
    buffer.pop_due(10.0)

    stats = buffer.wait_stats()
    assert stats.frames == 100
    assert stats.mean_ms == pytest.approx((90 * 60.0 + 10 * 20.0) / 100, abs=0.01)
    assert stats.p95_ms == 60.0
    filled = buffer.stats(BufferStats(target_ms=60.0, policy="fixed"))
    assert (filled.wait_mean_ms, filled.wait_p95_ms) == (stats.mean_ms, 60.0)
    assert filled.policy == "fixed"


def test_last_outcome_names_what_became_of_each_frame() -> None:
    buffer = JitterBuffer(capacity_frames=4)
    outcomes = []
    for frame in [on_time(0), on_time(0), make_frame(9, 0.01), make_frame(1, 0.03)]:
        buffer.push(frame)
        outcomes.append(buffer.last_outcome)
    buffer.pop_due(1.0)
    buffer.push(make_frame(0, 1.0))
    outcomes.append(buffer.last_outcome)
    assert outcomes == ["buffered", "duplicate", "overflow", "buffered", "late"]


@pytest.mark.parametrize(
    ("start_ms", "goal_ms", "spacing_ms"), [(80.0, 120.0, 25.0), (120.0, 40.0, 15.0)]
)
def test_target_change_glides_by_at_most_one_step_per_slot(
    start_ms: float, goal_ms: float, spacing_ms: float
) -> None:
    buffer = JitterBuffer(target_delay_ms=start_ms, max_step_ms=5.0)
    frames = [on_time(k) for k in range(60)]
    emitted = feed(buffer, frames[:10])
    played_before = len(emitted)

    buffer.set_target_delay(goal_ms)

    assert buffer.target_delay_ms == goal_ms
    assert buffer.current_delay_ms == start_ms
    emitted += feed(buffer, frames[10:]) + buffer.pop_due(frames[-1].arrival_s + 1.0)
    emitted = emitted[:60]
    steps = int(abs(goal_ms - start_ms) / 5.0)
    spacings = [
        round((b.playout_s or 0) * 1000 - (a.playout_s or 0) * 1000, 6)
        for a, b in itertools.pairwise(emitted)
    ]
    # The slot emitted last before the change was already spaced with the old delay.
    expected = [FRAME_MS] * played_before + [spacing_ms] * steps
    assert spacings == expected + [FRAME_MS] * (59 - len(expected))
    assert not any(f.concealed for f in emitted)
    assert buffer.current_delay_ms == goal_ms
    last = emitted[-1]
    assert round(((last.playout_s or 0) - last.arrival_s) * 1000, 6) == goal_ms


def test_target_set_before_the_first_frame_applies_at_once() -> None:
    buffer = JitterBuffer()
    buffer.set_target_delay(120.0)

    assert buffer.current_delay_ms == 120.0
    buffer.push(make_frame(0, 2.0))
    assert buffer.next_due_s == slot_s(0, anchor_s=2.0, target_ms=120.0)


def test_close_counts_buffered_frames_unplayed_and_missing_seqs_lost() -> None:
    buffer = JitterBuffer()
    feed(buffer, [make_frame(k, 0.0) for k in (0, 1, 2, 5, 6)])

    assert buffer.close(0.05) == []

    assert buffer.counts() == FrameCounts(received=5, unplayed=5, lost=2)
    assert buffer.level_ms == 0.0
    assert buffer.next_due_s is None
    assert buffer.push(make_frame(3, 0.06)) == []  # after close: late, and received after all
    assert buffer.pop_due(100.0) == []
    assert buffer.close(100.0) == []
    assert buffer.counts() == FrameCounts(received=6, late=1, unplayed=5, lost=1, reordered=1)


def test_close_first_plays_what_is_due() -> None:
    buffer = JitterBuffer()
    feed(buffer, [make_frame(k, 0.01) for k in (0, 1, 2, 3, 5)])

    emitted = buffer.close(slot_s(2, anchor_s=0.01))

    assert seqs(emitted) == [0, 1, 2]
    assert buffer.counts() == FrameCounts(received=5, played=3, unplayed=2, lost=1)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"target_delay_ms": -1.0}, "target_delay_ms=-1.0"),
        ({"target_delay_ms": float("nan")}, "target_delay_ms=nan"),
        ({"capacity_frames": 0}, "capacity_frames=0"),
        ({"capacity_frames": 1.5}, "capacity_frames=1.5 is not an integer"),
        ({"max_gap_frames": 0}, "max_gap_frames=0"),
        ({"max_step_ms": 0.0}, "max_step_ms=0.0"),
        ({"conceal": "noise"}, "conceal='noise'"),
        ({"late_memory": -1}, "late_memory=-1"),
        ({"outage_ms": 0.0}, "outage_ms=0.0"),
        ({"catchup_ms": -5.0}, "catchup_ms=-5.0"),
    ],
)
def test_bad_configuration_is_refused_with_the_value_and_limit(
    options: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        JitterBuffer(**options)
    message = str(info.value)
    assert fragment in message
    assert "; pass" in message or "; pick" in message  # says what to do next


def test_bad_target_change_is_refused_and_the_goal_kept() -> None:
    buffer = JitterBuffer()
    with pytest.raises(ConfigError, match=r"target_ms=20000\.0 is outside \[0, 10000\] ms"):
        buffer.set_target_delay(20_000.0)
    assert buffer.target_delay_ms == 80.0


def test_frame_without_duration_is_refused_before_it_is_counted() -> None:
    buffer = JitterBuffer()
    bad = AudioFrame(
        stream_id="call-1",
        seq=0,
        media_ms=0.0,
        codec="PCMU",
        sample_rate=8000,
        channels=1,
        payload=b"",
        duration_ms=0.0,
        arrival_s=0.0,
    )
    with pytest.raises(ConfigError, match=r"duration_ms=0\.0, which must be > 0"):
        buffer.push(bad)
    assert buffer.counts() == FrameCounts()


# -- properties -----------------------------------------------------------------------

CAPACITY = 8

ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 30), st.integers(0, 60)),
        st.tuples(st.just("dup"), st.just(0), st.integers(0, 30)),
        st.tuples(st.just("pop"), st.just(0), st.integers(0, 400)),
        st.tuples(st.just("target"), st.integers(0, 200), st.just(0)),
    ),
    max_size=60,
)


def small_buffer() -> JitterBuffer:
    return JitterBuffer(
        target_delay_ms=60.0, capacity_frames=CAPACITY, max_gap_frames=4, late_memory=16
    )


def check_step(buffer: JitterBuffer, emitted: list[AudioFrame], now_s: float) -> None:
    c = buffer.counts()
    assert c.received == c.played + c.late + c.duplicate + c.overflow + c.unplayed + c.discarded
    assert c.balanced
    assert c.malformed == 0
    assert c.lost >= 0
    assert c.played == sum(not f.concealed for f in emitted)
    assert c.concealed == sum(f.concealed for f in emitted)
    if not buffer.closed:
        assert c.unplayed <= CAPACITY
    order = seqs(emitted)
    assert order == sorted(set(order))
    times = [f.playout_s or 0.0 for f in emitted]
    assert times == sorted(set(times))
    assert all(t <= now_s for t in times)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_accounting_holds_at_every_step_under_arbitrary_traffic(
    steps: list[tuple[str, int, int]],
) -> None:
    buffer = small_buffer()
    emitted: list[AudioFrame] = []
    pushed: set[int] = set()
    now_ms, last_seq = 0, 0
    for kind, value, dt_ms in steps:
        now_ms += dt_ms
        now_s = now_ms / 1000
        if kind == "target":
            buffer.set_target_delay(float(value))
        elif kind == "pop":
            emitted += buffer.pop_due(now_s)
        else:
            last_seq = value if kind == "push" else last_seq
            pushed.add(last_seq)
            emitted += buffer.push(make_frame(last_seq, now_s))
        check_step(buffer, emitted, now_s)
    emitted += buffer.close(now_ms / 1000 + 1.0)
    check_step(buffer, emitted, now_ms / 1000 + 1.0)
    assert {f.seq for f in emitted if not f.concealed} <= pushed
    assert buffer.level_ms == 0.0


arrivals = st.lists(
    st.tuples(
        st.integers(0, 30),  # seq
        st.integers(0, 60),  # ms since the previous arrival
        st.lists(st.floats(0.0, 1.0), max_size=3),  # extra ticks, as fractions of that gap
        st.one_of(st.none(), st.integers(0, 200)),  # a target change after this push
    ),
    max_size=50,
)


def replay(
    buffer: JitterBuffer, stream: list[tuple[int, int, list[float], int | None]], *, ticks: bool
) -> list[AudioFrame]:
    emitted: list[AudioFrame] = []
    now_ms = 0.0
    for seq, dt_ms, fractions, target in stream:
        if ticks:
            for fraction in fractions:
                emitted += buffer.pop_due((now_ms + fraction * dt_ms) / 1000)
        now_ms += dt_ms
        emitted += buffer.push(make_frame(seq, now_ms / 1000))
        if target is not None:
            buffer.set_target_delay(float(target))
    return emitted + buffer.close(now_ms / 1000 + 2.0)


@settings(max_examples=300, deadline=None)
@given(arrivals)
def test_output_does_not_depend_on_how_often_the_clock_is_ticked(
    stream: list[tuple[int, int, list[float], int | None]],
) -> None:
    pushed_only = small_buffer()
    plain = replay(pushed_only, stream, ticks=False)
    ticked = small_buffer()
    with_ticks = replay(ticked, stream, ticks=True)

    assert with_ticks == plain
    assert [f.playout_s for f in with_ticks] == [f.playout_s for f in plain]
    assert ticked.counts() == pushed_only.counts()


events = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 40), st.integers(0, 80)),
        st.tuples(st.just("dup"), st.just(0), st.integers(0, 30)),
        st.tuples(st.just("pop"), st.just(0), st.integers(0, 900)),
        st.tuples(st.just("target"), st.integers(0, 300), st.just(0)),
        st.tuples(st.sampled_from(["pause", "resume", "discontinuity"]), st.just(0), st.just(5)),
        st.tuples(st.just("end"), st.just(0), st.integers(0, 50)),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(events, st.sampled_from(["close", "end"]))
def test_lost_counts_only_seqs_never_received_whatever_the_order_of_events(
    steps: list[tuple[str, int, int]], finish: str
) -> None:
    """Pushes, ticks, target changes, pauses, reconnects and an early end in any order:
    the counters add up at every step, playout times only go forward, and ``lost`` never
    counts a seq that was received (late_memory is large enough to remember them all)."""
    buffer = JitterBuffer(
        target_delay_ms=60.0, capacity_frames=CAPACITY, max_gap_frames=4, late_memory=4096
    )
    emitted: list[AudioFrame] = []
    kept: set[int] = set()
    now_ms, last_seq = 0, 0
    # After a pause or reconnect, a seq below the clock's is read as the sender restarting
    # its numbering (MAX_MISORDER's rule): seqs then no longer name one frame each.
    discontinuous = restarted = False
    for kind, value, dt_ms in steps:
        now_ms += dt_ms
        now_s = now_ms / 1000
        if kind in ("pause", "discontinuity"):
            discontinuous = True
        if kind == "push" and discontinuous and kept and value < max(kept):
            restarted = True
        if kind in ("push", "dup"):
            last_seq = value if kind == "push" else last_seq
            emitted += buffer.push(make_frame(last_seq, now_s))
            if buffer.last_outcome != "overflow":
                kept.add(last_seq)
        elif kind == "target":
            buffer.set_target_delay(float(value))
        else:
            emitted += getattr(buffer, kind if kind != "pop" else "pop_due")(now_s)
        check_counts(buffer, emitted, now_s)
    end_s = now_ms / 1000 + 5.0
    emitted += getattr(buffer, finish)(end_s) + buffer.pop_due(end_s)
    check_counts(buffer, emitted, end_s)
    counts = buffer.counts()
    if kept and not restarted:
        never = set(range(min(kept), max(kept) + 1)) - kept
        assert counts.lost <= len(never)
    assert counts.lost >= len({f.seq for f in emitted if f.concealed} - kept)
    assert buffer.closed
    assert buffer.level_ms == 0.0
    assert buffer.next_due_s is None


def check_counts(buffer: JitterBuffer, emitted: list[AudioFrame], now_s: float) -> None:
    c = buffer.counts()
    assert c.balanced
    assert c.lost >= 0
    assert c.played == sum(not f.concealed for f in emitted)
    assert c.concealed == sum(f.concealed for f in emitted)
    assert c.unplayed <= CAPACITY
    played_at = times(emitted)
    assert played_at == sorted(played_at)
    assert all(t <= now_s for t in played_at)
    assert buffer.wait_stats().idle_s >= 0.0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 3000), st.integers(-2000, 2000)),
        max_size=80,
    )
)
def test_buffer_and_latency_window_keep_the_same_delay_reference(
    steps: list[tuple[int, int, int]],
) -> None:
    """Restarts, jumps, outages and media steps in any order: fed the buffer's outcome and
    re-anchor flag, the window measures against exactly the buffer's reference."""
    buffer, window = small_buffer(), LatencyWindow()
    now_ms = 0
    for seq, dt_ms, media_shift_ms in steps:
        now_ms += dt_ms
        frame = make_frame(seq, now_ms / 1000, media_ms=seq * FRAME_MS + media_shift_ms)
        buffer.push(frame)
        measure = window.observe(frame, buffer.last_outcome, rebase=buffer.last_reanchored)
        assert window.reference_ms == buffer.reference_ms
        assert measure.outcome == buffer.last_outcome


def test_a_deep_target_cut_glides_and_never_drops_a_frame() -> None:
    buffer = JitterBuffer(target_delay_ms=400.0)
    emitted = feed(buffer, [on_time(k) for k in range(50)])
    buffer.set_target_delay(40.0)
    emitted += feed(buffer, [on_time(k) for k in range(50, 300)]) + buffer.pop_due(10.0)

    assert buffer.counts() == FrameCounts(received=300, played=300)
    assert seqs(emitted) == list(range(300))
    spacings = [
        round(((b.playout_s or 0) - (a.playout_s or 0)) * 1000, 6)
        for a, b in itertools.pairwise(emitted)
    ]
    assert min(spacings) == 15.0  # 5 ms per slot, 72 slots
    assert wait_ms(emitted[-1]) == pytest.approx(40.0)

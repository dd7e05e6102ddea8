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
from jitterline.frames import AudioFrame, FrameCounts
from jitterline.jitterbuffer import JitterBuffer

FRAME_MS = 20.0


def make_frame(
    seq: int,
    arrival_s: float,
    *,
    codec: str = "PCMU",
    payload: bytes | None = None,
    with_samples: bool = False,
    stream_id: str = "call-1",
) -> AudioFrame:
    samples = None
    if with_samples:
        samples = np.full(160, seq + 1, dtype=np.int16)
        samples.flags.writeable = False
    return AudioFrame(
        stream_id=stream_id,
        seq=seq,
        media_ms=seq * FRAME_MS,
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
    arrivals = [make_frame(0, 0.0), make_frame(2, 0.02), make_frame(1, 0.03), make_frame(3, 0.06)]
    emitted = feed(buffer, arrivals) + buffer.pop_due(slot_s(3))

    assert seqs(emitted) == [0, 1, 2, 3]
    assert [f.playout_s for f in emitted] == [slot_s(k) for k in range(4)]
    assert buffer.counts() == FrameCounts(received=4, played=4, reordered=1)


def test_lower_seq_before_start_moves_the_first_slot_down_without_moving_the_anchor() -> None:
    buffer = JitterBuffer()
    emitted = feed(buffer, [make_frame(5, 1.0), make_frame(4, 1.01)])
    emitted += buffer.pop_due(slot_s(1, anchor_s=1.0))

    assert seqs(emitted) == [4, 5]
    assert [f.playout_s for f in emitted] == [slot_s(0, anchor_s=1.0), slot_s(1, anchor_s=1.0)]
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
    buffer = JitterBuffer(capacity_frames=4)
    feed(buffer, [make_frame(k, 0.0) for k in range(4)])

    buffer.push(make_frame(4, 0.0))

    assert buffer.counts() == FrameCounts(received=5, overflow=1, unplayed=4)
    assert buffer.level_ms == 80.0
    emitted = buffer.pop_due(slot_s(3))
    assert seqs(emitted) == [0, 1, 2, 3]
    # The window has moved on: seq 4 now fits, and plays in its slot.
    emitted = buffer.push(make_frame(4, slot_s(3) + 0.001)) + buffer.pop_due(slot_s(4))
    assert seqs(emitted) == [4]
    assert buffer.counts() == FrameCounts(received=6, played=5, overflow=1)


def test_reorder_before_start_beyond_capacity_overflows() -> None:
    buffer = JitterBuffer(capacity_frames=4)
    feed(buffer, [make_frame(k, 0.0) for k in (10, 11, 12, 13)])

    buffer.push(make_frame(9, 0.001))

    assert buffer.counts() == FrameCounts(received=5, overflow=1, unplayed=4, reordered=1)
    assert seqs(buffer.pop_due(slot_s(0))) == [10]


def test_stream_restart_jump_counts_lost_without_synthesising_frames() -> None:
    buffer = JitterBuffer(max_gap_frames=10)
    frames = [make_frame(0, 0.0), make_frame(1, 0.02), make_frame(2, 0.04)]
    frames += [make_frame(100, 0.06), make_frame(101, 0.08)]
    emitted = feed(buffer, frames) + buffer.pop_due(slot_s(4))

    assert seqs(emitted) == [0, 1, 2, 100, 101]
    assert [f.playout_s for f in emitted] == [slot_s(k) for k in range(5)]
    assert buffer.counts() == FrameCounts(received=5, played=5, lost=97)

    buffer.push(make_frame(50, slot_s(4) + 0.001))  # a straggler from the skipped range
    assert buffer.counts().lost == 96
    assert buffer.counts().late == 1


def test_long_pause_caps_concealment_then_reanchors_on_the_next_arrival() -> None:
    buffer = JitterBuffer(max_gap_frames=5)
    feed(buffer, [on_time(k) for k in range(3)])

    emitted = buffer.pop_due(10.0)  # the peer went quiet for ten seconds

    assert [(f.seq, f.concealed) for f in emitted] == [(k, k >= 3) for k in range(8)]
    assert buffer.next_due_s is None
    assert buffer.counts() == FrameCounts(received=3, played=3, lost=5, concealed=5)

    assert buffer.push(make_frame(20, 10.0)) == []  # seqs 8..19 skipped while idle
    assert buffer.counts().lost == 17
    assert buffer.next_due_s == slot_s(0, anchor_s=10.0)

    buffer.push(make_frame(19, 10.01))  # reorder before the restart plays: back in the window
    assert buffer.counts().lost == 16
    emitted = buffer.pop_due(slot_s(1, anchor_s=10.0))
    assert seqs(emitted) == [19, 20]
    assert [f.playout_s for f in emitted] == [slot_s(0, anchor_s=10.0), slot_s(1, anchor_s=10.0)]

    buffer.push(make_frame(5, 10.1))  # concealed before the pause: late, no longer lost
    buffer.push(make_frame(9, 10.1))  # skipped while idle: late, no longer lost
    assert buffer.counts() == FrameCounts(
        received=7, played=5, late=2, lost=14, concealed=5, reordered=3
    )


def test_frame_older_than_the_pause_does_not_restart_the_clock() -> None:
    buffer = JitterBuffer(max_gap_frames=2)
    feed(buffer, [on_time(0)])
    buffer.pop_due(10.0)

    buffer.push(make_frame(1, 10.0))

    assert buffer.next_due_s is None
    assert buffer.counts() == FrameCounts(received=2, played=1, late=1, lost=1, concealed=2)


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
    assert c.received == c.played + c.late + c.duplicate + c.overflow + c.unplayed
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

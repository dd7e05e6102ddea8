"""The jitter buffer under arbitrary push / pop / target / end / close orders, with arrival
times that jump back and forth (a replayed or edited capture), through its public API only
(issue 12, items 8 and "Fuzzing").

Properties:

- the accounting identity ``received == played + late + duplicate + overflow + unplayed``
  holds after every call, and every frame that left is counted once, as played or
  concealed;
- ``lost`` is the number of sequence numbers of the played stretch that never arrived;
- frames leave in strictly increasing seq (between two re-anchors: after a pause or a
  discontinuity a sender may restart its numbering) and ``playout_s`` never goes backwards,
  however the arrival times are ordered (item 8).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_testkit import examples
from jitterline.frames import AudioFrame
from jitterline.jitterbuffer import JitterBuffer

FRAME_MS = 20.0
MAX_SEQ = 60


def frame(seq: int, arrival_s: float) -> AudioFrame:
    return AudioFrame(
        stream_id="fuzz",
        seq=seq,
        media_ms=seq * FRAME_MS,
        codec="PCMU",
        sample_rate=8000,
        channels=1,
        payload=bytes([seq % 256]) * 160,
        duration_ms=FRAME_MS,
        arrival_s=arrival_s,
    )


TIMES = st.floats(-5.0, 30.0, allow_nan=False).map(lambda t: round(t, 6))
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, MAX_SEQ), TIMES),
        st.tuples(st.just("pop"), TIMES),
        st.tuples(st.just("target"), st.floats(0.0, 10_000.0)),
        st.tuples(st.just("end"), TIMES),
        st.tuples(st.just("close"), TIMES),
        st.tuples(st.just("pause"), TIMES),
        st.tuples(st.just("resume"), TIMES),
        st.tuples(st.just("discontinuity"), TIMES),
    ),
    max_size=80,
)
SETUPS = st.fixed_dictionaries(
    {
        "target_delay_ms": st.floats(0.0, 400.0),
        "capacity_frames": st.integers(1, 16),
        "max_gap_frames": st.integers(1, 20),
        "max_step_ms": st.floats(0.5, 50.0),
        "conceal": st.sampled_from(["silence", "repeat"]),
    }
)


@dataclass
class Run:
    """What the test saw leave the buffer and arrive at it."""

    emitted: list[AudioFrame] = field(default_factory=list)
    pushed: set[int] = field(default_factory=set)
    """Seqs that arrived before close and were not dropped as overflow: an overflowed
    frame is dropped on arrival, so its slot is a hole like a lost frame's."""
    buffered: set[int] = field(default_factory=set)
    buffered_at_close: set[int] | None = None
    breaks: list[int] = field(default_factory=list)
    """Where in ``emitted`` the buffer re-anchored on a pushed frame: after a pause or a
    discontinuity a lower seq is a sender restarting its numbering, played as such."""

    def numberings(self) -> list[list[int]]:
        bounds = [0, *self.breaks, len(self.emitted)]
        return [[f.seq for f in self.emitted[a:b]] for a, b in itertools.pairwise(bounds)]


def drive(buffer: JitterBuffer, ops: list[tuple[object, ...]]) -> Run:
    run = Run()
    for op in ops:
        name = op[0]
        if name == "push":
            seq, at_s = cast(int, op[1]), cast(float, op[2])
            out = buffer.push(frame(seq, at_s))
            if not buffer.closed and buffer.last_outcome != "overflow":
                run.pushed.add(seq)
            run.emitted += out
            if buffer.last_reanchored:
                run.breaks.append(len(run.emitted))
            run.buffered -= {f.seq for f in out}
            if buffer.last_outcome == "buffered" and not buffer.closed:
                run.buffered.add(seq)
        elif name == "target":
            buffer.set_target_delay(cast(float, op[1]))
        else:
            at_s = cast(float, op[1])
            if name == "close" and not buffer.closed:
                out = buffer.pop_due(at_s)
                run.emitted += out
                run.buffered -= {f.seq for f in out}
                run.buffered_at_close = set(run.buffered)
                out = buffer.close(at_s)
            else:
                out = getattr(buffer, {"pop": "pop_due"}.get(str(name), str(name)))(at_s) or []
            run.emitted += out
            run.buffered -= {f.seq for f in out}
        check_counts(buffer, run)
    return run


def check_counts(buffer: JitterBuffer, run: Run) -> None:
    counts = buffer.counts()
    # FrameCounts.balanced is the identity with every category the counts know, so a
    # category the buffer grows later is in it without editing this test.
    assert counts.balanced, counts
    assert counts.played == sum(not f.concealed for f in run.emitted), counts
    assert counts.concealed == sum(f.concealed for f in run.emitted), counts
    assert counts.lost >= 0


@settings(max_examples=examples(1.0))
@given(setup=SETUPS, ops=OPS)
def test_accounting_holds_after_every_call_with_non_monotonic_arrivals(
    setup: dict[str, object], ops: list[tuple[object, ...]]
) -> None:
    buffer = JitterBuffer(**setup)  # type: ignore[arg-type]

    run = drive(buffer, ops)

    for seqs in run.numberings():
        assert seqs == sorted(set(seqs)), "one frame per slot, in strictly increasing seq"


@settings(max_examples=examples(1.0))
@given(setup=SETUPS, ops=OPS)
def test_playout_never_goes_backwards_with_non_monotonic_arrivals(
    setup: dict[str, object], ops: list[tuple[object, ...]]
) -> None:
    """Issue 12, item 8: arrivals out of time order (a replayed or edited capture) must not
    make a later slot play before an earlier one."""
    buffer = JitterBuffer(**setup)  # type: ignore[arg-type]

    run = drive(buffer, ops)

    playouts = [f.playout_s for f in run.emitted]
    assert all(p is not None for p in playouts)
    assert playouts == sorted(playouts), playouts  # type: ignore[type-var]


def test_item_8_an_arrival_from_the_past_does_not_move_playout_back() -> None:
    """The scenario behind item 8: frame 1 arrives stamped 5 s earlier than frame 0 (an
    edited capture). Slot 0 plays at 10.1 s; slot 1 must not play before it."""
    buffer = JitterBuffer(target_delay_ms=100.0, max_step_ms=5.0)
    out = buffer.push(frame(0, 10.0))
    out += buffer.push(frame(1, 5.0))
    out += buffer.push(frame(2, 10.04))
    out += buffer.close(10.15)

    playouts = [f.playout_s for f in out]
    assert [f.seq for f in out] == [0, 1, 2]
    assert playouts == sorted(playouts)  # type: ignore[type-var]


def test_item_8_a_reanchor_on_an_arrival_from_the_past_does_not_move_playout_back() -> None:
    """Found by the fuzzer (long profile): the buffer goes idle after playing seq 0 at
    0.0 s; seq 2 then arrives stamped 0.0 s (an edited capture) and re-anchored the clock
    there, so it played at 0.0 s, back in time."""
    buffer = JitterBuffer(target_delay_ms=0.0, capacity_frames=1, max_gap_frames=1)
    out = buffer.push(frame(0, 0.0))
    out += buffer.push(frame(0, 1.0))  # a duplicate, late enough to run the clock to idle
    out += buffer.push(frame(2, 0.0))
    out += buffer.pop_due(0.0)
    out += buffer.close(2.0)

    playouts = [f.playout_s for f in out]
    seqs = [f.seq for f in out]
    assert seqs[0] == 0 and 2 in seqs  # seq 1 is lost (nothing is synthesised into idle)
    assert seqs == sorted(seqs)
    assert playouts == sorted(playouts), playouts  # type: ignore[type-var]


@settings(max_examples=examples(1.0))
@given(
    setup=SETUPS,
    ops=st.lists(st.tuples(st.just("push"), st.integers(0, MAX_SEQ), TIMES), max_size=80),
    close_s=TIMES,
)
def test_lost_counts_the_seqs_of_the_played_stretch_that_never_arrived(
    setup: dict[str, object], ops: list[tuple[object, ...]], close_s: float
) -> None:
    """At the end, ``lost`` is the number of seqs from the first slot to the last (played,
    concealed, or buffered when the stream closed) that never arrived (or arrived only to be
    dropped as overflow)."""
    buffer = JitterBuffer(late_memory=4 * MAX_SEQ, **setup)  # type: ignore[arg-type]

    run = drive(buffer, [*ops, ("close", close_s)])

    counts = buffer.counts()
    assert counts.received == len(ops)
    ends = [f.seq for f in run.emitted] + sorted(run.buffered_at_close or ())
    if not ends:
        assert counts.lost == 0
        return
    stretch = range(min(ends), max(ends) + 1)
    never = [seq for seq in stretch if seq not in run.pushed]
    assert counts.lost == len(never), (counts, never)


def test_end_after_the_last_frame_played_closes_instead_of_recursing() -> None:
    """Found by the fuzzer: ``end`` with nothing buffered and a slot due closed the buffer
    from inside ``pop_due``, and ``close`` ran ``pop_due`` again (RecursionError)."""
    buffer = JitterBuffer(target_delay_ms=40.0)
    played = buffer.push(frame(0, 0.0)) + buffer.pop_due(0.05)

    out = buffer.end(1.0)

    assert [f.seq for f in played] == [0]
    assert out == []
    assert buffer.closed
    counts = buffer.counts()
    assert (counts.received, counts.played, counts.unplayed, counts.lost) == (1, 1, 0, 0)

"""A playout-clock jitter buffer: frames in, in arrival order; frames out, in seq order, on a
fixed cadence. Sans-I/O: time is always passed in, so live runs and replays behave alike.

The contract below is what the Rx stage, the adjuster and the replay tests rely on.

Playout clock
    The first accepted frame anchors the clock: its slot plays at ``arrival_s + target
    delay``. Every later slot (the next seq) plays one frame duration after the previous one
    (the duration of the frame played there; a concealed slot takes the duration of the
    frame it was built from). Exactly one frame leaves per slot, in strictly increasing seq.
    ``next_due_s`` says when the next slot plays (None while nothing is scheduled); an
    older ``now`` than one already seen is a no-op, time never runs backward.

``push(frame)``
    First advances the clock to ``frame.arrival_s`` exactly as ``pop_due(frame.arrival_s)``
    would, then files the frame, and returns what the advance emitted. The output is thus a
    pure function of the arrival sequence, however often (or seldom) ``pop_due`` is called
    in between with times up to the next arrival: a recorded stream replays bit for bit.
    A frame arriving exactly at its slot time is late (the slot is emitted first).
    The frame is filed as exactly one of:

    - ``late``: its slot has already been emitted (played, concealed or skipped). If that
      seq is still in the bounded memory of the last ``late_memory`` seqs counted lost, it
      was received after all and ``lost`` goes back down by one (``concealed`` stays).
    - ``duplicate``: the same seq is already buffered.
    - ``overflow``: buffering it would spread the buffer over ``capacity_frames`` slots or
      more (seq >= next seq + capacity). Newest-dropped policy: the arriving frame is the
      one dropped, because the buffered ones are nearer their slot and dropping them would
      open gaps that are already due.
    - buffered. Before the first slot after an anchor has played, a frame below the anchor's
      seq moves the next seq down to it (reorder before start); the anchor time stays.
      After a re-anchor that move stops at the idle point, and the seqs it brings back
      into the window are taken off ``lost`` again.

    Independently, ``reordered`` counts every non-duplicate frame whose seq is below the
    highest seq received so far.

``pop_due(now)``
    Emits every slot whose time is <= ``now``, each with ``playout_s`` set to its slot time:
    the buffered frame (``played``), or a concealment frame in its place (``concealed`` and
    ``lost`` += 1): ``concealed=True``, the missing seq, ``media_ms`` one duration after the
    previous frame, that frame's ``arrival_s``, no wall-clock stamps (nobody sent it), and
    either silence of the same size (PCMU 0xFF, PCMA 0xD5, others 0x00; read-only zero
    samples shaped like the previous frame's, if it had samples) or, with
    ``conceal="repeat"``, the previous frame's payload and samples again.

    Big gaps are not synthesised. If the lowest buffered seq is more than ``max_gap_frames``
    ahead of the next seq (a stream restart or jump), the seqs in between are counted
    ``lost`` without concealment and that frame plays in the current slot; the cadence
    goes on. If nothing is buffered, at most ``max_gap_frames`` consecutive slots are
    concealed; then the clock stops ("underrun idle") rather than producing hundreds of
    frames of silence for a peer that paused. The next frame at or above the idle point
    re-anchors the clock (its slot = its arrival + target delay, whatever its seq) and the
    seqs skipped since the idle point are counted ``lost`` then; a lower frame is late.

``set_target_delay(target_ms)``
    Changes the goal without gaps or clicks: each emitted slot moves the clock offset
    (``current_delay_ms``) toward the goal (``target_delay_ms``) by at most ``max_step_ms``,
    i.e. the next slot is scheduled that much later or earlier; frames are never cut. A
    negative step never shortens a slot below half its frame. While nothing is scheduled
    (before the first frame, idle, closed) the new delay applies at once.

``close(now)``
    Advances to ``now``, then ends the stream: frames still buffered are counted ``unplayed``
    and forgotten; seqs missing between the next seq and the highest buffered are counted
    ``lost``. A frame pushed after close is counted ``received`` and ``late`` (it arrived
    after the stream's end) and never raises, so a straggler cannot break a pipeline;
    ``pop_due`` then emits nothing. Closing twice is harmless.

Accounting (each received frame counted once) holds at every instant, not only at the end::

    received == played + late + duplicate + overflow + unplayed

where, before close, ``unplayed`` is the number of frames buffered now. ``malformed`` stays
0 here: the decode stage counts it. Memory is bounded: at most ``capacity_frames`` frames
and ``late_memory`` remembered seqs.

A frame whose ``arrival_s`` is not finite or whose ``duration_ms`` is not a positive
finite number raises ``ConfigError``: the decode stage must not build one, and letting it
in would freeze the clock.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

import numpy as np

from . import checks
from .errors import ConfigError
from .frames import ArrivalOutcome, AudioFrame, FrameCounts, Samples

__all__ = ["Concealment", "JitterBuffer"]

logger = logging.getLogger(__name__)

Concealment: TypeAlias = Literal["silence", "repeat"]

_MAX_DELAY_MS = 10_000.0
_MAX_STEP_MS = 1_000.0
_MAX_FRAMES = 1_000_000
_SILENCE_BYTE = {"PCMU": 0xFF, "PCMA": 0xD5}


def _check_frame(frame: AudioFrame) -> None:
    if not math.isfinite(frame.arrival_s):
        raise ConfigError(
            f"frame seq={frame.seq} has arrival_s={frame.arrival_s!r}, which must be finite;"
            " stamp arrivals with a monotonic clock"
        )
    if not (math.isfinite(frame.duration_ms) and frame.duration_ms > 0):
        raise ConfigError(
            f"frame seq={frame.seq} has duration_ms={frame.duration_ms!r}, which must be > 0"
            " and finite; the decode stage should count such a frame as malformed"
        )


def _read_only_zeros(samples: Samples | None) -> Samples | None:
    if samples is None:
        return None
    zeros = np.zeros_like(samples)
    zeros.flags.writeable = False
    return zeros


@dataclass(slots=True)
class _Tally:
    """The running counters; mutable on purpose, ``counts()`` hands out frozen copies."""

    received: int = 0
    played: int = 0
    late: int = 0
    duplicate: int = 0
    overflow: int = 0
    unplayed_at_close: int = 0
    lost: int = 0
    concealed: int = 0
    reordered: int = 0


class _SeqMemory:
    """The last ``limit`` seqs counted lost, so a late arrival can be taken off ``lost``.

    Bounded because a long stream with steady loss would otherwise grow it forever; the
    oldest seqs go first since a frame that late is the least likely to turn up.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seqs: OrderedDict[int, None] = OrderedDict()

    def add(self, seq: int) -> None:
        self._seqs[seq] = None
        if len(self._seqs) > self._limit:
            self._seqs.popitem(last=False)

    def add_range(self, start: int, stop: int) -> None:
        """Remember seqs start..stop-1; only the last ``limit`` of them could survive."""
        for seq in range(max(start, stop - self._limit), stop):
            self.add(seq)

    def discard(self, seq: int) -> bool:
        """Forget ``seq``; True if it was remembered (and so had been counted lost)."""
        if seq not in self._seqs:
            return False
        del self._seqs[seq]
        return True


class JitterBuffer:
    """One stream's playout-clock jitter buffer; see the module docstring for the contract."""

    def __init__(
        self,
        *,
        target_delay_ms: float = 80.0,
        capacity_frames: int = 512,
        max_gap_frames: int = 250,
        max_step_ms: float = 5.0,
        conceal: Concealment = "silence",
        late_memory: int = 1024,
    ) -> None:
        target_ms = checks.number(
            "target_delay_ms",
            target_delay_ms,
            low=0.0,
            high=_MAX_DELAY_MS,
            unit="ms",
            hint="pass a playout delay such as 80",
        )
        step_ms = checks.number(
            "max_step_ms",
            max_step_ms,
            low=1e-3,
            high=_MAX_STEP_MS,
            unit="ms",
            hint="pass a glide step such as 5 (ms per frame)",
        )
        for name, value, low, hint in (
            ("capacity_frames", capacity_frames, 1, "pass a capacity such as 512"),
            ("max_gap_frames", max_gap_frames, 1, "pass a gap limit such as 250"),
            ("late_memory", late_memory, 0, "pass a memory such as 1024"),
        ):
            checks.count(name, value, low=low, high=_MAX_FRAMES, hint=hint)
        if conceal not in ("silence", "repeat"):
            raise ConfigError(f"conceal={conceal!r} is not 'silence' or 'repeat'; pick one")
        self._target_ms = target_ms
        self._current_ms = self._target_ms
        self._capacity = capacity_frames
        self._max_gap = max_gap_frames
        self._max_step_ms = step_ms
        self._conceal_mode: Concealment = conceal
        self._lost_memory = _SeqMemory(late_memory)
        self._tally = _Tally()
        self._debug = logger.isEnabledFor(logging.DEBUG)
        # Buffer: seq -> frame, a min-heap of the same seqs, the highest of them, their ms.
        self._frames: dict[int, AudioFrame] = {}
        self._heap: list[int] = []
        self._top_seq = 0
        self._level_ms = 0.0
        # Clock: slot times are anchor_s + offset_ms / 1000; offset None = nothing scheduled.
        self._anchor_s = 0.0
        self._offset_ms: float | None = None
        self._next_seq = 0
        self._floor: int | None = None  # lowest seq that may still anchor; None before any
        self._prestart = False  # anchored, but no slot emitted since
        self._concealed_run = 0
        self._last_out: AudioFrame | None = None
        self._highest_seq: int | None = None
        self._closed = False
        self._ending = False
        self._last_outcome: ArrivalOutcome = "buffered"

    # -- public API -------------------------------------------------------------------

    @property
    def target_delay_ms(self) -> float:
        """The delay the clock is gliding toward."""
        return self._target_ms

    @property
    def current_delay_ms(self) -> float:
        """The delay the clock applies now, mid-glide."""
        return self._current_ms

    @property
    def level_ms(self) -> float:
        """Duration of the frames buffered now."""
        return self._level_ms

    @property
    def next_due_s(self) -> float | None:
        """When the next slot plays, for a stage that schedules its ``pop_due`` ticks."""
        if self._closed or self._offset_ms is None:
            return None
        return self._anchor_s + self._offset_ms / 1000.0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_outcome(self) -> ArrivalOutcome:
        """What the last ``push`` did with its frame."""
        return self._last_outcome

    def end(self, now: float) -> list[AudioFrame]:
        """The sender ended the stream: what is buffered plays at its slots, then the
        buffer closes instead of concealing past the last frame."""
        self._ending = True
        return self.pop_due(now)

    def pause(self, now: float) -> None:
        """The sender paused on purpose."""

    def resume(self, now: float) -> None:
        """Audio flows again."""

    def discontinuity(self, now: float) -> None:
        """The connection was re-established."""

    def counts(self) -> FrameCounts:
        t = self._tally
        return FrameCounts(
            received=t.received,
            played=t.played,
            late=t.late,
            duplicate=t.duplicate,
            overflow=t.overflow,
            unplayed=len(self._frames) + t.unplayed_at_close,
            lost=t.lost,
            concealed=t.concealed,
            reordered=t.reordered,
        )

    def set_target_delay(self, target_ms: float) -> None:
        self._target_ms = checks.number(
            "target_ms",
            target_ms,
            low=0.0,
            high=_MAX_DELAY_MS,
            unit="ms",
            hint="the adjuster should clamp its target",
        )
        if self.next_due_s is None:
            self._current_ms = self._target_ms

    def push(self, frame: AudioFrame) -> list[AudioFrame]:
        _check_frame(frame)
        emitted = self.pop_due(frame.arrival_s)
        self._file(frame)
        return emitted

    def pop_due(self, now: float) -> list[AudioFrame]:
        emitted: list[AudioFrame] = []
        due = self.next_due_s
        while due is not None and due <= now:
            frame = self._emit_slot(due)
            if frame is not None:
                emitted.append(frame)
            due = self.next_due_s
        return emitted

    def close(self, now: float) -> list[AudioFrame]:
        emitted = self.pop_due(now)
        if self._closed:
            return emitted
        if self._frames:
            self._count_close_losses()
        self._closed = True
        self._offset_ms = None
        return emitted

    # -- filing -----------------------------------------------------------------------

    def _file(self, frame: AudioFrame) -> None:
        self._tally.received += 1
        seq = frame.seq
        if seq in self._frames:
            self._last_outcome = "duplicate"
            self._tally.duplicate += 1
            self._trace("duplicate", frame)
            return
        self._note_order(seq)
        if self._closed:
            self._late(frame)
        elif self._offset_ms is None:
            self._file_unscheduled(frame)
        elif seq < self._next_seq:
            self._file_below(frame)
        elif seq >= self._next_seq + self._capacity:
            self._overflow(frame)
        else:
            self._store(frame)

    def _note_order(self, seq: int) -> None:
        if self._highest_seq is None or seq > self._highest_seq:
            self._highest_seq = seq
        elif seq < self._highest_seq:
            self._tally.reordered += 1

    def _file_unscheduled(self, frame: AudioFrame) -> None:
        """Before the first frame or while idle: anchor, unless the seq's slot has passed."""
        if self._floor is not None:
            if frame.seq < self._floor:
                self._late(frame)
                return
            self._tally.lost += frame.seq - self._floor
            self._lost_memory.add_range(self._floor, frame.seq)
            logger.info(
                "stream %s: audio resumed at seq %d; playout clock re-anchored",
                frame.stream_id,
                frame.seq,
            )
        self._anchor_s = frame.arrival_s
        self._current_ms = self._target_ms
        self._offset_ms = self._target_ms
        self._next_seq = frame.seq
        self._prestart = True
        self._store(frame)

    def _file_below(self, frame: AudioFrame) -> None:
        """A seq under the next slot: a reorder before start if nothing played yet, else late."""
        seq = frame.seq
        if not self._prestart or (self._floor is not None and seq < self._floor):
            self._late(frame)
        elif self._top_seq - seq >= self._capacity:
            self._overflow(frame)
        else:
            if self._floor is not None:
                # The re-anchor counted these seqs lost; they are back in the playable window.
                self._tally.lost -= self._next_seq - seq
                for skipped in range(seq, self._next_seq):
                    self._lost_memory.discard(skipped)
            self._next_seq = seq
            self._store(frame)

    def _store(self, frame: AudioFrame) -> None:
        self._last_outcome = "buffered"
        self._top_seq = max(self._top_seq, frame.seq) if self._frames else frame.seq
        self._frames[frame.seq] = frame
        heapq.heappush(self._heap, frame.seq)
        self._level_ms += frame.duration_ms

    def _late(self, frame: AudioFrame) -> None:
        self._last_outcome = "late"
        self._tally.late += 1
        if self._lost_memory.discard(frame.seq):
            self._tally.lost -= 1
        self._trace("late", frame)

    def _overflow(self, frame: AudioFrame) -> None:
        self._last_outcome = "overflow"
        self._tally.overflow += 1
        self._trace("overflow", frame)

    def _trace(self, kind: str, frame: AudioFrame) -> None:
        if self._debug:
            logger.debug(
                "stream %s: %s frame seq %d (next seq %d)",
                frame.stream_id,
                kind,
                frame.seq,
                self._next_seq,
            )

    # -- emitting ---------------------------------------------------------------------

    def _emit_slot(self, slot_s: float) -> AudioFrame | None:
        """Fill the next slot, or stop the clock when the concealment cap is reached."""
        if not self._frames and self._ending:
            self.close(slot_s)
            return None
        if not self._frames and self._concealed_run >= self._max_gap:
            self._go_idle()
            return None
        if self._frames and self._next_seq not in self._frames:
            self._skip_big_gap()
        frame = self._play() if self._next_seq in self._frames else self._conceal()
        out = replace(frame, playout_s=slot_s)
        self._last_out = out
        self._prestart = False
        self._next_seq += 1
        self._advance_clock(out.duration_ms)
        return out

    def _skip_big_gap(self) -> None:
        lowest = self._heap[0]
        gap = lowest - self._next_seq
        if gap <= self._max_gap:
            return
        logger.info(
            "stream %s: seq jumped from %d to %d; %d frames counted lost, not synthesised",
            self._frames[lowest].stream_id,
            self._next_seq,
            lowest,
            gap,
        )
        self._tally.lost += gap
        self._lost_memory.add_range(self._next_seq, lowest)
        self._next_seq = lowest

    def _play(self) -> AudioFrame:
        seq = heapq.heappop(self._heap)
        frame = self._frames.pop(seq)
        self._level_ms = self._level_ms - frame.duration_ms if self._frames else 0.0
        self._tally.played += 1
        self._concealed_run = 0
        return frame

    def _conceal(self) -> AudioFrame:
        prev = self._last_out
        # The first slot after any anchor holds the anchoring frame, so a template exists.
        assert prev is not None
        if self._conceal_mode == "repeat":
            payload, samples = prev.payload, prev.samples
        else:
            silence = _SILENCE_BYTE.get(prev.codec.upper(), 0x00)
            payload = bytes([silence]) * len(prev.payload)
            samples = _read_only_zeros(prev.samples)
        seq = self._next_seq
        self._tally.concealed += 1
        self._tally.lost += 1
        self._lost_memory.add(seq)
        self._concealed_run += 1
        return replace(
            prev,
            seq=seq,
            media_ms=prev.media_ms + prev.duration_ms,
            payload=payload,
            samples=samples,
            concealed=True,
            capture_wall_s=None,
            sent_wall_s=None,
            received_wall_s=None,
        )

    def _advance_clock(self, duration_ms: float) -> None:
        """Schedule the next slot one frame later, moved by one glide step toward the target."""
        assert self._offset_ms is not None
        wanted = self._target_ms - self._current_ms
        step = min(max(wanted, -self._max_step_ms), self._max_step_ms)
        step = max(step, -duration_ms / 2)
        self._current_ms = self._target_ms if step == wanted else self._current_ms + step
        self._offset_ms += duration_ms + step

    def _go_idle(self) -> None:
        assert self._last_out is not None
        logger.info(
            "stream %s: no audio for %d slots after seq %d; playout clock stopped",
            self._last_out.stream_id,
            self._concealed_run,
            self._next_seq - 1,
        )
        self._offset_ms = None
        self._floor = self._next_seq
        self._concealed_run = 0

    def _count_close_losses(self) -> None:
        missing = [s for s in range(self._next_seq, self._top_seq) if s not in self._frames]
        self._tally.lost += len(missing)
        for seq in missing:
            self._lost_memory.add(seq)
        self._tally.unplayed_at_close = len(self._frames)
        self._frames.clear()
        self._heap.clear()
        self._level_ms = 0.0

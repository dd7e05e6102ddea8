"""A playout-clock jitter buffer: frames in, in arrival order; frames out, in seq order, on a
fixed cadence. Sans-I/O: time is always passed in, so live runs and replays behave alike.

The contract below is what the Rx stage, the adjuster and the replay tests rely on.

Playout clock
    The first accepted frame anchors the clock: its slot plays at ``arrival_s + target
    delay``. Every later slot (the next seq) plays one frame duration after the previous one
    (the duration of the frame played there; a concealed slot takes the duration of the
    frame it was built from), plus the sender's own gap when the media clock jumps ahead
    with no seq missing (silence suppression: that gap is idle time, see below). Exactly
    one frame leaves per slot, in strictly increasing seq. ``next_due_s`` says when the
    next slot plays (None while nothing is scheduled or the buffer waits for a frame); an
    older ``now`` than one already seen is a no-op, time never runs backward.

    The delay is held against a ``DelayReference`` (latency.py): the least transit
    (arrival minus media time) since the last anchor, which may creep up with clock drift
    but does not forget a route's floor. When a faster frame lowers it, the schedule is
    that much later than the goal and glides (or catches up, below) back to it; when drift
    raises it, the schedule glides later, in steps of whole milliseconds (so a short
    stream's playout times stay exactly those of its slots). So the playout delay is
    ``reference + target`` whatever frame happened to anchor the clock, clock drift of
    +-100 ppm never drains or fills the buffer, and the latency window, which keeps the
    same reference, hands the adjuster delays measured against what the buffer schedules
    by.

``push(frame)``
    First advances the clock to ``frame.arrival_s`` exactly as ``pop_due(frame.arrival_s)``
    would, then files the frame, and returns what the advance emitted, followed by any
    concealment the frame settled (a frame arriving into an empty buffer says which slots
    were missing, below). The output is thus a pure function of the arrival sequence,
    however often (or seldom) ``pop_due`` is called in between: a recorded stream replays
    bit for bit. A frame arriving exactly at its slot time is late. ``last_outcome`` says
    what became of the frame, ``last_reanchored`` whether the clock re-anchored on it (pass
    both to ``LatencyWindow.observe``). The frame is filed as exactly one of:

    - ``late``: its slot has already been emitted (played or concealed), or the stream has
      ended. If that seq is still in the bounded memory of the last ``late_memory`` seqs
      counted lost, it was received after all and ``lost`` goes back down by one
      (``concealed`` stays).
    - ``duplicate``: the same seq is already buffered.
    - ``overflow``: buffering it would spread the buffer over ``capacity_frames`` slots or
      more (seq >= next seq + capacity). Newest-dropped policy: the arriving frame is the
      one dropped, because the buffered ones are nearer their slot.
    - ``buffered``. Before the first slot after an anchor has played, a frame below the
      anchor's seq moves the next seq down to it (reorder before start); the anchor time
      stays. After a re-anchor that move stops at the point where the clock stopped, and the
      seqs it brings back into the window are taken off ``lost`` again.

    Independently, ``reordered`` counts every non-duplicate frame whose seq is below the
    highest seq received so far.

``pop_due(now)``
    Emits every slot whose time is <= ``now``, each with ``playout_s`` set to its slot time:
    the buffered frame (``played``), or, when the next seq is missing but a later one is
    buffered, a concealment frame in its place (``concealed`` and ``lost`` += 1):
    ``concealed=True``, the missing seq, the expected ``media_ms``, the previous frame's
    ``arrival_s``, no wall-clock stamps (nobody sent it), and either silence of the same
    size (PCMU 0xFF, PCMA 0xD5, others 0x00; read-only zero samples shaped like the previous
    frame's, if it had samples) or, with ``conceal="repeat"``, the previous frame's payload
    and samples again.

    An empty buffer at a slot synthesises nothing (``STARVED``): whether the frame is late,
    lost, or was never sent (a pause, silence suppression, the end of the stream) is not
    known yet, so the clock waits and the next arrival decides. A frame that is still on
    time (its slot, counted on from the waiting slot along seq and media clock, is ahead)
    plays there; the seqs skipped before it are concealed at their slots (emitted by that
    ``push``, with their past slot times) and a media-clock gap before it is idle. A frame
    whose slot has passed is late: its slot and the skipped ones are concealed then. Only
    seqs a later frame proves missing are ever ``lost``.

    Big gaps are not synthesised. If the lowest buffered seq is more than ``max_gap_frames``
    ahead of the next seq, the seqs in between are counted ``lost`` without concealment and
    that frame plays in the current slot; the cadence goes on.

Recovery rules (each logged at INFO where it fires)
    ``MAX_MISORDER`` (100 frames, as RFC 3550 A.1 and aiortc): a seq that far or farther
    below the next slot is not a straggler but a sequence restart: what is buffered is
    ``discarded`` and the clock re-anchors on the frame (its slot = arrival + target).

    ``MAX_DROPOUT`` (``capacity_frames``): a seq that far or farther above the next slot,
    arriving into an empty buffer, is a forward jump (a reconnect that skipped): the seqs
    skipped are ``lost`` (never received) and the clock re-anchors on it.

    ``outage_ms`` (500 ms): a frame arriving into an empty buffer re-anchors the clock when
    its slot passed that long ago or nothing real has played for that long: an outage, a
    server that held its audio during a reconnect and resumed the sequence (every later
    frame would otherwise be late by the outage), a media-clock step. Below it, late frames
    are late, as they must be for the late-loss figures to mean anything.

    ``catchup_ms`` (100 ms): when the schedule is that far above its goal because the
    reference fell under it (held frames delivered in a burst after an outage, a route
    change down), the oldest buffered frames are dropped at the next slot, counted
    ``discarded``, until it is within one frame of the goal: the delay is back in one slot,
    not after a glide of seconds. A target cut never drops a frame; it glides.

    Media-clock jumps: a media gap is idle time only as far as the frame's arrival bears it
    out: its slot is never put later than its arrival plus the current delay plus
    ``catchup_ms`` (a sender whose clock jumped ahead would otherwise make it wait that
    long), and the reference re-bases on a transit ``REFERENCE_JUMP_MS`` (latency.py)
    below it.

``set_target_delay(target_ms)``
    Changes the goal without gaps or clicks: each emitted slot moves the clock offset
    (``current_delay_ms``, the delay above the reference) toward the goal
    (``target_delay_ms``) by at most ``max_step_ms``, i.e. the next slot is scheduled that
    much later or earlier; frames are never cut. A negative step never shortens a slot
    below half its frame. While nothing is scheduled the new delay applies at once, and so
    does a higher one while the buffer waits on an empty slot (``STARVED``): the slots it
    moves are silent anyway, and the frames still to come turn from late to on time.

Stream events (each first advances the clock to ``now`` and returns what fell due)
    ``pause(now)``: the protocol announced the sender stops (AudioHook ``paused``, hold).
    Buffered frames still play at their slots; then the clock stops and the time until the
    next frame is idle. The next frame re-anchors, so it plays at its arrival plus the
    target. ``resume(now)``: audio will flow again; the next frame re-anchors.
    ``discontinuity(now)``: a reconnect; the next frame re-anchors once the buffer is empty
    (if frames are still buffered and it continues them, it is filed as usual).

    ``end(now)``: the protocol ended the stream (Twilio ``stop``, AudioHook ``close``,
    appfoundry close 1000). What is buffered still plays at its slots through later
    ``pop_due`` calls; nothing is synthesised after the last frame; once drained the buffer
    is closed. ``close(now)``: the stream was cut (a dead connection, Ctrl-C, a capture's
    end): advances to ``now``, then frames still buffered are counted ``unplayed`` and
    forgotten, and seqs missing between the next seq and the highest buffered are counted
    ``lost``. After either, a frame pushed is counted ``received`` and ``late`` and never
    raises, so a straggler cannot break a pipeline; ``pop_due`` then emits nothing. Ending
    or closing twice is harmless.

Idle time
    Playout time in which the sender sent nothing is ``idle_s`` (``wait_stats``), never
    ``lost`` nor ``concealed``: the media-clock gaps of silence suppression, an announced
    pause (from the slot where the buffer ran dry to the next frame), and the tail after
    the last frame up to ``end``/``close``.

Accounting (each frame received is counted exactly once) holds at every instant, not only
at the end::

    received == played + late + duplicate + overflow + unplayed + discarded

where, before close, ``unplayed`` is the number of frames buffered now. ``malformed`` stays
0 here: the decode stage counts it. Memory is bounded: at most ``capacity_frames`` frames,
``late_memory`` remembered seqs, and one counter per millisecond of wait.

A frame whose ``arrival_s`` is not finite or whose ``duration_ms`` is not a positive
finite number raises ``ConfigError``: the decode stage must not build one, and letting it
in would freeze the clock.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

import numpy as np

from . import checks
from .errors import ConfigError
from .frames import ArrivalOutcome, AudioFrame, BufferStats, FrameCounts, Samples, evolve
from .latency import DelayReference

__all__ = ["MAX_MISORDER", "Concealment", "JitterBuffer", "WaitStats"]

logger = logging.getLogger(__name__)

Concealment: TypeAlias = Literal["silence", "repeat"]

MAX_MISORDER = 100
"""Frames below the next slot beyond which a seq is a restart, not a straggler (RFC 3550
A.1 uses the same bound for RTP; aiortc's jitter buffer too)."""

_MAX_DELAY_MS = 10_000.0
_MAX_STEP_MS = 1_000.0
_MAX_FRAMES = 1_000_000
_MEDIA_SLACK_MS = 1.0  # media-clock gaps up to this are rounding, not idle time
_REFERENCE_STEP_MS = 1.0  # the schedule follows a rising reference in steps this big
_SILENCE_BYTE = {"PCMU": 0xFF, "PCMA": 0xD5}
_INF = math.inf
_NEG_INF = -math.inf
_NOISE_CEIL_MS = 1.0 - 1e-5  # ceil(w) - w above this: w is within 10 ns above a whole ms


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


@dataclass(frozen=True, slots=True)
class WaitStats:
    """How long played frames waited in the buffer (playout minus arrival, ms; the p95 is
    the nearest rank at 1 ms resolution, rounded up), and the idle time so far."""

    frames: int = 0
    mean_ms: float | None = None
    p95_ms: float | None = None
    idle_s: float = 0.0


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
    discarded: int = 0


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


class _WaitTally:
    """Played frames' waits: an exact sum and a 1 ms histogram (bounded by the largest
    delay, not by the stream's length). ``JitterBuffer._emit`` counts each wait in: a call
    per frame would cost 0.07 us."""

    __slots__ = ("buckets", "count", "sum_ms")

    def __init__(self) -> None:
        self.count = 0
        self.sum_ms = 0.0
        self.buckets: dict[int, int] = {}

    def p95_ms(self) -> float | None:
        if not self.count:
            return None
        rank = math.ceil(0.95 * self.count)
        seen = 0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen >= rank:
                return float(key)
        raise AssertionError("the buckets hold every counted wait")


class JitterBuffer:
    """One stream's playout-clock jitter buffer; see the module docstring for the contract."""

    # Its attributes outnumber the 30 keys CPython 3.11 shares between instances' dicts:
    # without slots every self._x was a dict lookup (about a tenth of push and pop_due).
    __slots__ = (
        "_anchor_s",
        "_behind_ms",
        "_capacity",
        "_catchup_ms",
        "_closed",
        "_conceal_mode",
        "_current_ms",
        "_debug",
        "_due_s",
        "_ending",
        "_expect_media_ms",
        "_floor",
        "_frames",
        "_highest_seq",
        "_idle_s",
        "_idle_since_s",
        "_last_out",
        "_last_outcome",
        "_last_reanchored",
        "_level_ms",
        "_lost_memory",
        "_max_gap",
        "_max_step_ms",
        "_next_seq",
        "_offset_ms",
        "_outage_ms",
        "_paused",
        "_prestart",
        "_reanchor_next",
        "_reference",
        "_reference_used_ms",
        "_silent_since_s",
        "_starved",
        "_tally",
        "_target_ms",
        "_waits",
    )

    def __init__(
        self,
        *,
        target_delay_ms: float = 80.0,
        capacity_frames: int = 512,
        max_gap_frames: int = 250,
        max_step_ms: float = 5.0,
        conceal: Concealment = "silence",
        late_memory: int = 1024,
        outage_ms: float = 500.0,
        catchup_ms: float = 100.0,
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
        self._outage_ms = checks.number(
            "outage_ms", outage_ms, low=0.0, above=True, unit="ms", hint="pass 500"
        )
        self._catchup_ms = checks.number(
            "catchup_ms", catchup_ms, low=0.0, unit="ms", hint="pass 100"
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
        self._waits = _WaitTally()
        self._idle_s = 0.0
        self._debug = logger.isEnabledFor(logging.DEBUG)
        self._reference = DelayReference()
        self._reference_used_ms: float | None = None  # the reference the schedule follows
        self._behind_ms = 0.0  # delay above the goal that a fall of the reference caused
        # Buffer: seq -> frame (none below the next seq), and their ms.
        self._frames: dict[int, AudioFrame] = {}
        self._level_ms = 0.0
        # Clock: slot times are anchor_s + offset_ms / 1000; offset None = nothing scheduled.
        self._anchor_s = 0.0
        self._offset_ms: float | None = None
        self._due_s: float | None = None  # next_due_s, set wherever the clock moves
        self._next_seq = 0
        self._expect_media_ms = 0.0  # media time the next seq should carry
        self._floor: int | None = None  # lowest seq that may still anchor; None before any
        self._prestart = False  # anchored, but no slot emitted since
        self._starved = False  # the slot at the clock came with an empty buffer: waiting
        self._silent_since_s: float | None = None  # first slot since a real frame played
        self._idle_since_s: float | None = None  # the clock stopped for a pause at this time
        self._reanchor_next = False  # a pause or discontinuity: the next frame re-anchors
        self._paused = False
        self._ending = False
        self._closed = False
        self._last_out: AudioFrame | None = None
        self._highest_seq: int | None = None
        self._last_outcome: ArrivalOutcome = "buffered"
        self._last_reanchored = False

    # -- public API -------------------------------------------------------------------

    @property
    def target_delay_ms(self) -> float:
        """The delay above the reference the clock is gliding toward."""
        return self._target_ms

    @property
    def current_delay_ms(self) -> float:
        """The delay above the reference the clock applies now, mid-glide."""
        return self._current_ms

    @property
    def level_ms(self) -> float:
        """Duration of the frames buffered now."""
        return self._level_ms

    @property
    def next_due_s(self) -> float | None:
        """When the next slot plays, for a stage that schedules its ``pop_due`` ticks."""
        return self._due_s

    @property
    def closed(self) -> bool:
        """True once the stream was cut (``close``) or ended and drained (``end``)."""
        return self._closed

    @property
    def reference_ms(self) -> float | None:
        """The delay reference's transit now: the latency window fed the same frames with
        ``last_reanchored`` as ``rebase`` holds the same value."""
        return self._reference.ms

    @property
    def last_outcome(self) -> ArrivalOutcome:
        """What the last ``push`` did with its frame."""
        return self._last_outcome

    @property
    def last_reanchored(self) -> bool:
        """Whether the last ``push`` re-anchored the playout clock on its frame (the
        latency window re-bases its delay reference on the same frame)."""
        return self._last_reanchored

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
            discarded=t.discarded,
        )

    def wait_stats(self) -> WaitStats:
        waits = self._waits
        return WaitStats(
            frames=waits.count,
            mean_ms=waits.sum_ms / waits.count if waits.count else None,
            p95_ms=waits.p95_ms(),
            idle_s=self._idle_s,
        )

    def stats(self, adjusted: BufferStats) -> BufferStats:
        """The adjuster's ``BufferStats`` completed with what only the buffer knows."""
        waits = self.wait_stats()
        return replace(
            adjusted,
            level_ms=self._level_ms,
            wait_mean_ms=waits.mean_ms,
            wait_p95_ms=waits.p95_ms,
            idle_s=waits.idle_s,
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
        if self._offset_ms is None:
            self._current_ms = self._target_ms
        elif self._starved and self._target_ms > self._current_ms:
            # The slots this moves are silent anyway: the frames still to come turn from
            # late to on time at no cost, where a glide would leave them late.
            self._offset_ms += self._target_ms - self._current_ms
            self._current_ms = self._target_ms  # next_due_s stays None until a frame comes

    def push(self, frame: AudioFrame) -> list[AudioFrame]:
        """Check, advance the clock, file, follow the delay reference (see the module
        docstring). Once per frame, so the usual case of each step is inline: a call costs
        0.07 us, some 2% of a frame's ``push`` and ``pop_due``."""
        arrival_s, seq, duration_ms = frame.arrival_s, frame.seq, frame.duration_ms
        if not (math.isfinite(arrival_s) and math.isfinite(duration_ms) and duration_ms > 0.0):
            _check_frame(frame)  # the same test, then the refusal in its wording
        due = self._due_s
        emitted = self._drain(due, arrival_s) if due is not None and due <= arrival_s else []
        tally = self._tally
        tally.received += 1
        self._last_reanchored = False
        frames = self._frames
        if seq in frames:
            tally.duplicate += 1
            self._last_outcome = "duplicate"
            self._trace("duplicate", frame)
        else:
            next_seq = self._next_seq
            if (
                self._due_s is not None
                and not (self._ending or self._reanchor_next)
                and next_seq <= seq < next_seq + self._capacity
            ):
                # _file_new's last case, the usual one, tested first; _store's work inline
                frames[seq] = frame
                self._level_ms += duration_ms
                self._last_outcome = "buffered"
            else:
                emitted += self._file_new(frame)
            highest = self._highest_seq  # read after _file_new: a restart forgets it
            if highest is None or seq > highest:
                self._highest_seq = seq
            elif seq < highest:
                tally.reordered += 1
        # Follow the reference the latency window keeps. A move of the reference moves
        # the schedule's delay above it, never the schedule itself. Falls count at once;
        # rises (clock drift, at most ``REFERENCE_RISE_PPM``) in whole
        # ``_REFERENCE_STEP_MS``, so a schedule is not nudged by microseconds on every frame
        # (a playout time is then exact to the arithmetic of its slots for any stream
        # shorter than two seconds).
        arrival_ms, media_ms = arrival_s * 1000.0, frame.media_ms
        if not (_NEG_INF < arrival_ms < _INF and math.isfinite(media_ms)):
            return emitted
        reference = self._reference
        jumped_ms = reference.jumped_ms
        reference.observe(arrival_ms, media_ms, rebase=self._last_reanchored)
        now_ms = reference.ms
        assert now_ms is not None
        used_ms = self._reference_used_ms
        if used_ms is not None and jumped_ms == reference.jumped_ms:
            moved_ms = now_ms - used_ms
            if 0.0 < moved_ms < _REFERENCE_STEP_MS:
                return emitted  # a rise too small to act on: wait for more
            if self._offset_ms is not None:
                self._current_ms -= moved_ms
                self._behind_ms = max(0.0, self._behind_ms - moved_ms)
        self._reference_used_ms = now_ms
        return emitted

    def pop_due(self, now: float) -> list[AudioFrame]:
        due = self._due_s
        if due is None or due > now:
            return []
        return self._drain(due, now)

    def pause(self, now: float) -> list[AudioFrame]:
        emitted = self.pop_due(now)
        if not (self._closed or self._ending):
            self._paused = True
            self._reanchor_next = True
            if not self._frames and self._offset_ms is not None:
                self._idle_since_s = min(self._slot_s(), now)
                self._stop_clock()
        return emitted

    def resume(self, now: float) -> list[AudioFrame]:
        emitted = self.pop_due(now)
        self._paused = False
        return emitted

    def discontinuity(self, now: float) -> list[AudioFrame]:
        emitted = self.pop_due(now)
        if not (self._closed or self._ending):
            self._reanchor_next = True
            if not self._frames and self._offset_ms is not None:
                self._stop_clock()
        return emitted

    def end(self, now: float) -> list[AudioFrame]:
        emitted = self.pop_due(now)
        if not self._closed:
            self._ending = True
            if not self._frames:
                self._finish(now)
        return emitted

    def close(self, now: float) -> list[AudioFrame]:
        emitted = self.pop_due(now)
        if self._closed:
            return emitted
        if self._frames:
            self._count_close_losses()
        self._finish(now)
        return emitted

    # -- filing -----------------------------------------------------------------------

    def _file_new(self, frame: AudioFrame) -> list[AudioFrame]:
        seq = frame.seq
        if self._closed:
            self._late(frame)
        elif self._ending:
            # Draining: a frame whose slot is still ahead plays there (it was reordered
            # behind the sender's end); one whose slot went by is late.
            ahead = self._offset_ms is not None and self._next_seq <= seq
            if ahead and seq < self._next_seq + self._capacity:
                self._store(frame)
            else:
                self._late(frame)
        elif self._reanchor_next and not self._frames and self._offset_ms is not None:
            self._stop_clock()
            self._file_unscheduled(frame)
        elif self._offset_ms is None:
            self._file_unscheduled(frame)
        elif seq <= self._next_seq - MAX_MISORDER:
            self._restart(frame)
        elif seq < self._next_seq:
            self._file_below(frame)
        elif self._starved:
            return self._file_starved(frame)
        elif seq >= self._next_seq + self._capacity:
            self._overflow(frame)
        else:
            self._reanchor_next = False
            self._store(frame)
        return []

    def _file_unscheduled(self, frame: AudioFrame) -> None:
        """Before the first frame or while stopped: anchor, unless the seq's slot has passed."""
        floor = self._floor
        if floor is not None and frame.seq < floor:
            if self._reanchor_next or frame.seq <= floor - MAX_MISORDER:
                self._restart(frame)
            else:
                self._late(frame)
            return
        self._anchor(frame, lost_from=floor)

    def _file_starved(self, frame: AudioFrame) -> list[AudioFrame]:
        """The buffer ran dry at the clock's slot; this frame says what that slot was."""
        skipped = frame.seq - self._next_seq
        if skipped >= self._capacity:
            self._reanchor(frame, f"seq jumped ahead by {skipped}")
            return []
        duration_ms = self._cadence_ms()
        slot_s = self._slot_s(after_slots=skipped, duration_ms=duration_ms)
        gap_ms = self._media_gap_ms(frame, slot_s, skipped * duration_ms)
        slot_s += gap_ms / 1000
        late_ms = (frame.arrival_s - slot_s) * 1000.0
        assert self._silent_since_s is not None
        silent_ms = (frame.arrival_s - self._silent_since_s) * 1000.0
        if late_ms < 0:
            self._starved = False
            self._reanchor_next = False
            self._store(frame)
            self._reschedule()
            return self.pop_due(frame.arrival_s)
        if late_ms >= self._outage_ms or silent_ms >= self._outage_ms:
            self._reanchor(frame, f"audio resumed {late_ms:.0f} ms after its slot")
            return []
        concealed = [self._emit_concealed() for _ in range(skipped)]
        self._shift_idle(gap_ms)
        concealed.append(self._emit_concealed())
        self._starved = self._slot_s() <= frame.arrival_s
        self._reschedule()
        self._late(frame)
        return concealed

    def _file_below(self, frame: AudioFrame) -> None:
        """A seq under the next slot: a reorder before start if nothing played yet, else late."""
        seq = frame.seq
        if not self._prestart or (self._floor is not None and seq < self._floor):
            self._late(frame)
        elif max(self._frames) - seq >= self._capacity:  # only before the first slot
            self._overflow(frame)
        else:
            if self._floor is not None:
                # The re-anchor counted these seqs lost; they are back in the playable window.
                self._tally.lost -= self._next_seq - seq
                for skipped in range(seq, self._next_seq):
                    self._lost_memory.discard(skipped)
            self._next_seq = seq
            self._expect_media_ms = frame.media_ms
            self._store(frame)

    def _restart(self, frame: AudioFrame) -> None:
        """MAX_MISORDER: the sender restarted its numbering; what is buffered is dropped."""
        self._tally.discarded += len(self._frames)
        self._frames.clear()
        self._level_ms = 0.0
        self._highest_seq = None  # a new numbering: no frame of it arrived out of order yet
        self._reanchor(frame, f"seq restarted from {self._next_seq}", count_lost=False)

    def _reanchor(self, frame: AudioFrame, why: str, *, count_lost: bool = True) -> None:
        logger.info(
            "stream %s: %s; playout clock re-anchored at seq %d",
            frame.stream_id,
            why,
            frame.seq,
        )
        self._stop_clock()
        if not count_lost:
            self._floor = None  # a new numbering: nothing below it was ever expected
        self._anchor(frame, lost_from=self._floor)

    def _anchor(self, frame: AudioFrame, *, lost_from: int | None) -> None:
        if lost_from is not None and frame.seq > lost_from:
            self._tally.lost += frame.seq - lost_from
            self._lost_memory.add_range(lost_from, frame.seq)
        anchor_s = frame.arrival_s
        last = self._last_out
        if last is not None and last.playout_s is not None:
            # Playout never runs backward: a frame stamped before the last slot ended (an
            # edited or merged capture) anchors the new clock just after that slot.
            after_s = last.playout_s + (last.duration_ms - self._target_ms) / 1000.0
            anchor_s = max(anchor_s, after_s)
        if self._idle_since_s is not None:
            first_slot_s = anchor_s + self._target_ms / 1000.0
            self._idle_s += max(0.0, first_slot_s - self._idle_since_s)
            self._idle_since_s = None
        self._anchor_s = anchor_s
        self._current_ms = self._target_ms
        self._offset_ms = self._target_ms
        self._reschedule()
        self._behind_ms = 0.0
        self._next_seq = frame.seq
        self._expect_media_ms = frame.media_ms
        self._prestart = True
        self._reanchor_next = False
        self._last_reanchored = True
        self._store(frame)

    def _store(self, frame: AudioFrame) -> None:
        self._frames[frame.seq] = frame
        self._level_ms += frame.duration_ms
        self._last_outcome = "buffered"

    def _late(self, frame: AudioFrame) -> None:
        self._tally.late += 1
        self._last_outcome = "late"
        if self._lost_memory.discard(frame.seq):
            self._tally.lost -= 1
        self._trace("late", frame)

    def _overflow(self, frame: AudioFrame) -> None:
        self._tally.overflow += 1
        self._last_outcome = "overflow"
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

    def _slot_s(self, *, after_slots: int = 0, duration_ms: float = 0.0) -> float:
        """The time of the slot ``after_slots`` slots past the clock's, glide included."""
        assert self._offset_ms is not None
        offset_ms, current_ms = self._offset_ms, self._current_ms
        for _ in range(after_slots):
            step = self._glide_step(current_ms, duration_ms)
            current_ms += step
            offset_ms += duration_ms + step
        return self._anchor_s + offset_ms / 1000.0

    def _cadence_ms(self) -> float:
        template = self._last_out
        return template.duration_ms if template is not None else 20.0

    def _media_gap_ms(self, frame: AudioFrame, slot_s: float, ahead_ms: float) -> float:
        """The sender's own pause before ``frame`` (due at ``slot_s`` without it): its media
        time beyond the expected one (``ahead_ms`` of missing frames included), as far as
        its arrival bears out (see "Media-clock jumps")."""
        gap_ms = frame.media_ms - (self._expect_media_ms + ahead_ms)
        if not (math.isfinite(gap_ms) and gap_ms > _MEDIA_SLACK_MS):
            return 0.0
        latest_s = frame.arrival_s + (self._current_ms + self._catchup_ms) / 1000.0
        return max(0.0, min(gap_ms, (latest_s - slot_s) * 1000.0))

    def _shift_idle(self, gap_ms: float) -> None:
        assert self._offset_ms is not None
        self._offset_ms += gap_ms
        self._reschedule()
        self._expect_media_ms += gap_ms
        self._idle_s += gap_ms / 1000.0

    def _drain(self, due: float | None, now: float) -> list[AudioFrame]:
        """Emit every slot due by ``now``, the first at ``due``. The usual slot, whose frame
        is buffered with no catch-up or media gap before it, plays here at once: the same
        outcome as ``_emit_slot``'s checks in turn, without its four calls and two min()s."""
        emitted: list[AudioFrame] = []
        frames = self._frames
        while due is not None and due <= now:
            frame = frames.get(self._next_seq)
            if (
                frame is None
                or (
                    self._behind_ms > self._catchup_ms
                    and self._current_ms - self._target_ms > self._catchup_ms
                )
                or _MEDIA_SLACK_MS < frame.media_ms - self._expect_media_ms < _INF
            ):
                out = self._emit_slot(due)
                if out is not None:
                    emitted.append(out)
            else:
                emitted.append(self._emit(frame, due, buffered=True))
            due = self._due_s
        return emitted

    def _emit_slot(self, slot_s: float) -> AudioFrame | None:
        """Fill the slot at the clock, or wait (or stop, or finish) on an empty buffer."""
        if not self._frames:
            self._run_dry(slot_s)
            return None
        if self._catchup_due_ms() > self._catchup_ms:
            self._catch_up()
        self._skip_big_gap()
        frame = self._frames.get(self._next_seq)
        if frame is None:
            return self._emit_concealed()
        gap_ms = self._media_gap_ms(frame, slot_s, 0.0)
        if gap_ms:
            self._shift_idle(gap_ms)
            return None
        return self._emit(frame, slot_s, buffered=True)

    def _run_dry(self, slot_s: float) -> None:
        if self._ending:
            self._finish(slot_s)
        elif self._paused or self._reanchor_next:
            self._idle_since_s = slot_s if self._paused else None
            self._stop_clock()
        else:
            self._starved = True
            self._reschedule()
            if self._silent_since_s is None:
                self._silent_since_s = slot_s

    def _emit_concealed(self) -> AudioFrame:
        return self._emit(self._conceal(), self._slot_s(), buffered=False)

    def _emit(self, frame: AudioFrame, slot_s: float, *, buffered: bool) -> AudioFrame:
        """``frame`` leaves in the slot at ``slot_s``: the next seq's, taken out of the
        buffer (``buffered``), or a concealment (whose ``media_ms`` is the one expected).
        The next slot is one frame later, moved by one glide step toward the target."""
        out = evolve(frame, playout_s=slot_s)
        duration_ms, frames = frame.duration_ms, self._frames
        if buffered:
            del frames[frame.seq]  # _take's work, without its call
            self._level_ms = self._level_ms - duration_ms if frames else 0.0
            self._tally.played += 1
        if not frame.concealed:
            wait_ms = (slot_s - frame.arrival_s) * 1000.0
            waits = self._waits
            waits.count += 1
            waits.sum_ms += wait_ms
            key = math.ceil(wait_ms)
            if key <= 0 or key - wait_ms > _NOISE_CEIL_MS:
                # 60.000000001 ms is float noise: rounded to the us first, it is 60 ms. Only
                # a wait this close above a whole ms (or none) needs the round (0.3 us).
                key = max(0, math.ceil(round(wait_ms, 6)))
            buckets = waits.buckets
            buckets[key] = buckets.get(key, 0) + 1
            self._silent_since_s = None
        self._last_out = out
        self._prestart = False
        self._next_seq += 1
        self._expect_media_ms = frame.media_ms + duration_ms
        offset_ms = self._offset_ms
        assert offset_ms is not None
        if self._current_ms == self._target_ms:
            offset_ms += duration_ms  # the step is 0: the glide's arithmetic (0.3 us) is moot
        else:
            offset_ms += duration_ms + self._glide(duration_ms)
        self._offset_ms = offset_ms
        # _reschedule's work (the clock runs and is not closed here), without its call
        self._due_s = None if self._starved else self._anchor_s + offset_ms / 1000.0
        if self._ending and not frames:
            self._finish(slot_s)
        return out

    def _catch_up(self) -> None:
        """``catchup_ms``: drop the oldest buffered frames until the delay is back within a
        frame of the goal, keeping at least one frame to play now."""
        over_ms = self._catchup_due_ms()
        dropped = 0
        while len(self._frames) > 1 and self._next_seq in self._frames:
            frame = self._frames[self._next_seq]
            if self._catchup_due_ms() < frame.duration_ms:
                break
            self._take(self._next_seq)
            self._tally.discarded += 1
            self._next_seq += 1
            self._expect_media_ms = frame.media_ms + frame.duration_ms
            self._current_ms -= frame.duration_ms
            self._behind_ms -= frame.duration_ms
            dropped += 1
        if dropped:
            logger.info(
                "stream %s: delay %.0f ms over its %.0f ms target; %d oldest frames dropped",
                self._frames[min(self._frames)].stream_id,
                over_ms,
                self._target_ms,
                dropped,
            )

    def _catchup_due_ms(self) -> float:
        """How far the schedule is above its goal because the reference fell under it."""
        return min(self._behind_ms, self._current_ms - self._target_ms)

    def _skip_big_gap(self) -> None:
        lowest = min(self._frames)  # only when the next seq is missing (or catch-up ran)
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
        self._expect_media_ms = self._frames[lowest].media_ms

    def _take(self, seq: int) -> AudioFrame:
        frame = self._frames.pop(seq)
        self._level_ms = self._level_ms - frame.duration_ms if self._frames else 0.0
        return frame

    def _conceal(self) -> AudioFrame:
        # After the first slot a played frame exists; before it, the lowest buffered one
        # (the anchor, or what a catch-up left) shapes the concealment.
        prev = self._last_out or self._frames[min(self._frames)]
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
        return evolve(
            prev,
            seq=seq,
            media_ms=self._expect_media_ms,
            payload=payload,
            samples=samples,
            concealed=True,
            capture_wall_s=None,
            sent_wall_s=None,
            received_wall_s=None,
        )

    def _glide_step(self, current_ms: float, duration_ms: float) -> float:
        wanted = self._target_ms - current_ms
        step = min(max(wanted, -self._max_step_ms), self._max_step_ms)
        return max(step, -duration_ms / 2)

    def _glide(self, duration_ms: float) -> float:
        """One glide step of the delay toward the target, for a slot of ``duration_ms``."""
        step = self._glide_step(self._current_ms, duration_ms)
        wanted = self._target_ms - self._current_ms
        self._current_ms = self._target_ms if step == wanted else self._current_ms + step
        self._behind_ms = max(0.0, self._behind_ms + min(step, 0.0))
        return step

    def _reschedule(self) -> None:
        """Keep ``next_due_s`` (read a few times per frame) in step with the clock: whatever
        moves the anchor or the offset, or starves, stops or closes the clock, calls this
        (or, on the hot path, sets ``_due_s`` itself)."""
        offset_ms = self._offset_ms
        if offset_ms is None or self._starved or self._closed:
            self._due_s = None
        else:
            self._due_s = self._anchor_s + offset_ms / 1000.0

    def _stop_clock(self) -> None:
        self._offset_ms = None
        self._floor = self._next_seq
        self._starved = False
        self._silent_since_s = None
        self._due_s = None

    def _finish(self, now: float) -> None:
        """The stream is over: the time since the buffer ran dry (or paused) was idle."""
        if self._starved:
            self._idle_s += max(0.0, now - self._slot_s())
        elif self._idle_since_s is not None:
            self._idle_s += max(0.0, now - self._idle_since_s)
        self._idle_since_s = None
        self._closed = True
        self._ending = False
        self._starved = False
        self._offset_ms = None
        self._due_s = None

    def _count_close_losses(self) -> None:
        missing = [s for s in range(self._next_seq, max(self._frames)) if s not in self._frames]
        self._tally.lost += len(missing)
        for seq in missing:
            self._lost_memory.add(seq)
        self._tally.unplayed_at_close = len(self._frames)
        self._frames.clear()
        self._level_ms = 0.0

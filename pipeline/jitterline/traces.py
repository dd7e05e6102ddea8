"""A seeded suite of network traces for judging jitter-buffer policies, the hindsight oracle
each is judged against, and ``play``, which runs a policy over a trace through the real
buffer, window and adjuster.

A trace is what a receiver would see of one 20 ms stream: per frame its seq, media time,
when the sender sent it and when (if ever) it arrived, plus the events a protocol or the
session would announce (a reconnect). The models are our own, each a few lines, seeded
with ``random.Random(seed)`` so a trace is the same on every machine and in every run:

- ``steady``: a fixed route plus correlated gamma jitter (mean ~12 ms), the everyday case.
- ``wifi``: a short, calm route with spikes (power save, retransmissions): every few
  seconds the link stalls 60-350 ms and releases what it held.
- ``burst_loss``: Gilbert-Elliott loss (1 % good-to-bad, 30 % bad-to-good, 80 % loss in
  the bad state, 0.1 % in the good) over light jitter.
- ``route_change``: 30 ms, then a route 110 ms longer for 40 s, then back down.
- ``congestion``: a bottleneck queue filling from 0 to 180 ms over 8 s and draining at
  once, over and over (TCP-like sawtooth cross traffic).
- ``handover``: a mobile link with outages of 0.5-2.5 s every 15-30 s; what was sent
  during an outage is held and delivered in one burst when it ends.
- ``reconnect_resumed``: three connection drops of 1-3 s; the server pauses while down
  and resumes the sequence (and its media clock) where it was.
- ``reconnect_skipped``: three drops; the server's clock ran on, so the seqs of the
  outage are never sent.
- ``restart``: at 60 s the sender restarts its numbering and media clock at 0.
- ``drift_fast`` / ``drift_slow``: the sender's clock runs 100 ppm fast or slow.
- ``silence``: silence suppression: talk spurts (mean 1.5 s) and gaps (mean 0.8 s) in
  which nothing is sent; seq is continuous, the media clock jumps over each gap.

Every model's arrivals are then put in send order, as TCP delivers them (``_in_order``).

The hindsight oracle of a trace is the smallest fixed playout delay (send to playout)
with at most 1 % of the received frames late; computed exactly from the sorted delays: a
frame with delay d is late under a fixed delay P when d >= P (arriving at its slot is
late), so with n received frames and m = floor(n / 100) allowed late, P is the (m+1)-th
largest delay, plus the least step above it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

from .adjuster import BufferAdjuster, BufferPolicy
from .frames import AudioFrame, FrameCounts
from .jitterbuffer import JitterBuffer
from .latency import LatencyWindow

__all__ = [
    "FRAME_MS",
    "LATE_LIMIT",
    "OUTAGE_FREE",
    "TRACES",
    "Packet",
    "PlayResult",
    "Trace",
    "TraceEvent",
    "make_trace",
    "oracle_delay_ms",
    "play",
]

FRAME_MS = 20.0
LATE_LIMIT = 0.01
"""The oracle's late-loss allowance: 1 % of the received frames."""

EventKind: TypeAlias = Literal["discontinuity"]


@dataclass(frozen=True, slots=True)
class Packet:
    """One frame as sent: ``send_s`` on the receiver's clock (the truth a trace knows),
    ``arrival_s`` None when the network lost it."""

    seq: int
    media_ms: float
    send_s: float
    arrival_s: float | None

    @property
    def delay_ms(self) -> float | None:
        return None if self.arrival_s is None else (self.arrival_s - self.send_s) * 1000.0


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """Something the session announces at ``at_s`` (a reconnect)."""

    at_s: float
    kind: EventKind


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    seed: int
    packets: tuple[Packet, ...]
    events: tuple[TraceEvent, ...] = field(default=())

    @property
    def duration_s(self) -> float:
        return max(p.send_s for p in self.packets) - min(p.send_s for p in self.packets)

    def arrivals(self) -> list[Packet]:
        """The received packets in arrival order (ties in send order)."""
        received = [p for p in self.packets if p.arrival_s is not None]
        return sorted(received, key=lambda p: (p.arrival_s, p.send_s))


def oracle_delay_ms(trace: Trace, late_limit: float = LATE_LIMIT) -> float:
    """The least fixed send-to-playout delay with at most ``late_limit`` of the received
    frames late (see the module docstring)."""
    delays = sorted((p.delay_ms for p in trace.packets if p.delay_ms is not None), reverse=True)
    if not delays:
        raise ValueError(f"trace {trace.name!r} has no received frame")
    allowed = math.floor(late_limit * len(delays))
    if allowed >= len(delays):
        return 0.0
    return math.nextafter(delays[allowed], math.inf)


# -- models -------------------------------------------------------------------------------

_Delay = Callable[[float], float]


def _gamma_jitter(rng: random.Random, mean_ms: float, shape: float, keep: float) -> _Delay:
    """Correlated jitter: an AR(1) blend of gamma draws, so neighbours look alike."""
    state = [rng.gammavariate(shape, mean_ms / shape)]

    def draw(_: float) -> float:
        state[0] = keep * state[0] + (1 - keep) * rng.gammavariate(shape, mean_ms / shape)
        return state[0]

    return draw


def _packets(
    duration_s: float,
    delay_ms: _Delay,
    *,
    lost: Callable[[float], bool] = lambda _: False,
    clock: float = 1.0,
) -> Iterator[Packet]:
    """A continuous stream: frame k is sent at ``k * 20 ms * clock`` (the sender's clock
    rate against the receiver's), delayed by ``delay_ms(send_s)``."""
    for seq in range(int(duration_s * 1000 / FRAME_MS)):
        send_s = seq * FRAME_MS / 1000.0 * clock
        arrival = None if lost(send_s) else send_s + delay_ms(send_s) / 1000.0
        yield Packet(seq, seq * FRAME_MS, send_s, arrival)


def _steady(rng: random.Random, duration_s: float) -> Trace:
    jitter = _gamma_jitter(rng, 12.0, 1.5, 0.6)
    return Trace("steady", 0, tuple(_packets(duration_s, lambda t: 30.0 + jitter(t))))


def _spikes(rng: random.Random, duration_s: float) -> list[tuple[float, float]]:
    """(start_s, stall_ms) of Wi-Fi stalls, every 2-8 s."""
    spikes, at_s = [], rng.uniform(1.0, 4.0)
    while at_s < duration_s:
        spikes.append((at_s, rng.uniform(60.0, 350.0)))
        at_s += rng.uniform(2.0, 8.0)
    return spikes


def _wifi(rng: random.Random, duration_s: float) -> Trace:
    jitter = _gamma_jitter(rng, 3.0, 2.0, 0.3)
    spikes = _spikes(rng, duration_s)

    def delay(send_s: float) -> float:
        held_ms = 0.0
        for start_s, stall_ms in spikes:
            if start_s <= send_s < start_s + stall_ms / 1000.0:
                held_ms = (start_s + stall_ms / 1000.0 - send_s) * 1000.0
        return 8.0 + jitter(send_s) + held_ms

    return Trace("wifi", 0, tuple(_packets(duration_s, delay)))


def _burst_loss(rng: random.Random, duration_s: float) -> Trace:
    jitter = _gamma_jitter(rng, 5.0, 2.0, 0.5)
    bad = [False]

    def lost(_: float) -> bool:
        bad[0] = rng.random() < (0.7 if bad[0] else 0.01)
        return rng.random() < (0.8 if bad[0] else 0.001)

    return Trace("burst_loss", 0, tuple(_packets(duration_s, lambda t: 40 + jitter(t), lost=lost)))


def _route_change(rng: random.Random, duration_s: float) -> Trace:
    jitter = _gamma_jitter(rng, 6.0, 2.0, 0.5)
    up_s, down_s = duration_s / 3, 2 * duration_s / 3

    def delay(send_s: float) -> float:
        return 30.0 + (110.0 if up_s <= send_s < down_s else 0.0) + jitter(send_s)

    return Trace("route_change", 0, tuple(_packets(duration_s, delay)))


def _congestion(rng: random.Random, duration_s: float) -> Trace:
    jitter = _gamma_jitter(rng, 3.0, 2.0, 0.5)
    period_s = 8.0

    def delay(send_s: float) -> float:
        return 25.0 + 180.0 * (send_s % period_s) / period_s + jitter(send_s)

    return Trace("congestion", 0, tuple(_packets(duration_s, delay)))


def _outages(rng: random.Random, duration_s: float) -> list[tuple[float, float]]:
    """(start_s, end_s) of outages of 0.5-2.5 s every 15-30 s."""
    outages, at_s = [], rng.uniform(10.0, 20.0)
    while at_s < duration_s - 5.0:
        length_s = rng.uniform(0.5, 2.5)
        outages.append((at_s, at_s + length_s))
        at_s += length_s + rng.uniform(15.0, 30.0)
    return outages


def _handover(rng: random.Random, duration_s: float) -> Trace:
    jitter = _gamma_jitter(rng, 10.0, 1.5, 0.6)
    outages = _outages(rng, duration_s)

    def delay(send_s: float) -> float:
        base_ms = 60.0 + jitter(send_s)
        for start_s, end_s in outages:
            if start_s <= send_s < end_s:
                # Held until the link is back, then released in order 0.5 ms apart.
                release_s = end_s + (send_s - start_s) / (FRAME_MS / 1000.0) * 0.0005
                return max(base_ms, (release_s - send_s) * 1000.0 + base_ms)
        return base_ms

    return Trace("handover", 0, tuple(_packets(duration_s, delay)))


def _drops(rng: random.Random, duration_s: float) -> list[tuple[float, float]]:
    """Three connection drops of 1-3 s, spread over the trace."""
    thirds = [duration_s * k / 4 for k in (1, 2, 3)]
    return [(at_s, at_s + rng.uniform(1.0, 3.0)) for at_s in thirds]


def _reconnect(rng: random.Random, duration_s: float, *, resumed: bool) -> Trace:
    jitter = _gamma_jitter(rng, 8.0, 2.0, 0.5)
    drops = _drops(rng, duration_s)
    packets: list[Packet] = []
    shift_s, seq, media_ms = 0.0, 0, 0.0
    while media_ms / 1000.0 + shift_s < duration_s:
        send_s = media_ms / 1000.0 + shift_s
        down = next(((a, b) for a, b in drops if a <= send_s < b), None)
        if down is not None:
            if resumed:  # the server waits for the connection: same seq, later
                shift_s += down[1] - send_s
                continue
            seq, media_ms = seq + 1, media_ms + FRAME_MS  # sent into the void
            continue
        arrival_s = send_s + (35.0 + jitter(send_s)) / 1000.0
        packets.append(Packet(seq, media_ms, send_s, arrival_s))
        seq, media_ms = seq + 1, media_ms + FRAME_MS
    name = "reconnect_resumed" if resumed else "reconnect_skipped"
    events = tuple(TraceEvent(end_s + 0.05, "discontinuity") for _, end_s in drops)
    return Trace(name, 0, tuple(packets), events)


def _restart(rng: random.Random, duration_s: float) -> Trace:
    jitter = _gamma_jitter(rng, 8.0, 2.0, 0.5)
    restart_s = duration_s / 2
    first = int(restart_s * 1000 / FRAME_MS)
    packets = [
        p if p.seq < first else replace(p, seq=p.seq - first, media_ms=(p.seq - first) * FRAME_MS)
        for p in _packets(duration_s, lambda t: 35.0 + jitter(t))
    ]
    return Trace("restart", 0, tuple(packets))


def _drift(rng: random.Random, duration_s: float, *, ppm: float) -> Trace:
    jitter = _gamma_jitter(rng, 8.0, 2.0, 0.5)
    name = "drift_fast" if ppm < 0 else "drift_slow"
    packets = _packets(duration_s, lambda t: 35.0 + jitter(t), clock=1 + ppm * 1e-6)
    return Trace(name, 0, tuple(packets))


def _silence(rng: random.Random, duration_s: float) -> Trace:
    jitter = _gamma_jitter(rng, 8.0, 2.0, 0.5)
    packets: list[Packet] = []
    seq, at_s = 0, 0.0
    while at_s < duration_s:
        spurt_end_s = at_s + rng.expovariate(1 / 1.5)
        if spurt_end_s > duration_s - 5.0:  # end on speech, so the trace lasts its length
            spurt_end_s = duration_s
        while at_s < min(spurt_end_s, duration_s):
            packets.append(Packet(seq, at_s * 1000, at_s, at_s + (35 + jitter(at_s)) / 1000))
            seq, at_s = seq + 1, at_s + FRAME_MS / 1000
        at_s += round(rng.expovariate(1 / 0.8) * 1000 / FRAME_MS) * FRAME_MS / 1000
    return Trace("silence", 0, tuple(packets))


TRACES: dict[str, Callable[[random.Random, float], Trace]] = {
    "steady": _steady,
    "wifi": _wifi,
    "burst_loss": _burst_loss,
    "route_change": _route_change,
    "congestion": _congestion,
    "drift_fast": lambda rng, s: _drift(rng, s, ppm=-100.0),
    "drift_slow": lambda rng, s: _drift(rng, s, ppm=100.0),
    "silence": _silence,
    "handover": _handover,
    "reconnect_resumed": lambda rng, s: _reconnect(rng, s, resumed=True),
    "reconnect_skipped": lambda rng, s: _reconnect(rng, s, resumed=False),
    "restart": _restart,
}
"""Every trace model by name, in the order the benchmark prints them."""

OUTAGE_FREE = frozenset(
    {
        "steady",
        "wifi",
        "burst_loss",
        "route_change",
        "congestion",
        "drift_fast",
        "drift_slow",
        "silence",
    }
)
"""The traces without outages, reconnects or restarts: where a policy must reach 1 % late
loss at no more than the oracle's delay."""


def make_trace(name: str, *, seed: int = 1, duration_s: float = 120.0) -> Trace:
    """Build trace ``name`` with ``seed``; at least 120 s, as the suite promises."""
    if name not in TRACES:
        raise ValueError(f"unknown trace {name!r}; known: {', '.join(TRACES)}")
    if duration_s < 120.0:
        raise ValueError(f"duration_s={duration_s} is below 120 s; traces run 120 s or more")
    trace = TRACES[name](random.Random(f"{name}:{seed}"), duration_s)
    return Trace(trace.name, seed, _in_order(trace.packets), trace.events)


def _in_order(packets: tuple[Packet, ...]) -> tuple[Packet, ...]:
    """A WebSocket rides one TCP connection: a frame never arrives before one sent
    earlier (head-of-line blocking turns reordering into delay)."""
    ordered, latest_s = [], -math.inf
    for packet in sorted(packets, key=lambda p: p.send_s):
        if packet.arrival_s is not None:
            latest_s = max(latest_s, packet.arrival_s)
        ordered.append(packet if packet.arrival_s is None else replace(packet, arrival_s=latest_s))
    return tuple(ordered)


# -- playing a trace ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlayResult:
    """How a policy fared on a trace: ``late_pct`` counts frames that arrived but did not
    play because of their timing (late, discarded to catch up, overflow) over frames
    received; delays are send to playout of played frames, ms; ``concealed_pct`` is over
    all slots emitted; ``seconds`` is the CPU time of the loop."""

    late_pct: float
    mean_ms: float
    p95_ms: float
    concealed_pct: float
    discarded: int
    balanced: bool
    seconds: float
    counts: FrameCounts = field(default_factory=FrameCounts)


def _frame(trace: Trace, packet: Packet, arrival_s: float) -> AudioFrame:
    return AudioFrame(
        stream_id=trace.name,
        seq=packet.seq,
        media_ms=packet.media_ms,
        codec="PCMU",
        sample_rate=8000,
        channels=1,
        payload=b"\xff" * 160,
        duration_ms=FRAME_MS,
        arrival_s=arrival_s,
        capture_wall_s=packet.send_s,  # the send time rides along: send-to-playout delay
        sent_wall_s=packet.send_s,
    )


def play(trace: Trace, policy: BufferPolicy, *, max_ms: float = 1000.0) -> PlayResult:
    """Replay ``trace`` on virtual time through a ``JitterBuffer``, a ``LatencyWindow`` and
    a ``BufferAdjuster`` running ``policy`` (bounds 0..``max_ms``), in the pipeline's
    order: push -> outcome -> window -> adjuster -> ``set_target_delay``. The trace's
    reconnects call ``discontinuity``; the stream ends with ``end`` (its protocol ended
    it), drained. A policy with an ``arrived(frame)`` method sees each frame first (a
    reference that measures delay its own way, as NetEq does)."""
    start_ms = float(getattr(policy, "target_ms", 80.0))  # the policy's own start
    adjuster = BufferAdjuster(policy, min_ms=0.0, max_ms=max_ms, start_ms=start_ms)
    buffer = JitterBuffer(target_delay_ms=adjuster.target_ms)
    window = LatencyWindow()
    events = list(trace.events)
    arrived = getattr(policy, "arrived", None)
    emitted: list[AudioFrame] = []
    started = time.process_time()
    last_s = 0.0
    for packet in trace.arrivals():
        assert packet.arrival_s is not None
        while events and events[0].at_s <= packet.arrival_s:
            emitted += buffer.discontinuity(events.pop(0).at_s)
        frame = _frame(trace, packet, packet.arrival_s)
        if arrived is not None:
            arrived(frame)
        emitted += buffer.push(frame)
        measure = window.observe(frame, buffer.last_outcome, rebase=buffer.last_reanchored)
        buffer.set_target_delay(adjuster.observe(measure))
        last_s = packet.arrival_s
    emitted += buffer.end(last_s) + buffer.pop_due(last_s + 60.0)
    return _score(buffer.counts(), emitted, time.process_time() - started)


def _score(counts: FrameCounts, emitted: list[AudioFrame], seconds: float) -> PlayResult:
    delays = sorted(
        ((f.playout_s or 0.0) - (f.capture_wall_s or 0.0)) * 1000.0
        for f in emitted
        if not f.concealed
    )
    missed = counts.late + counts.discarded + counts.overflow
    return PlayResult(
        late_pct=100.0 * missed / counts.received if counts.received else 0.0,
        mean_ms=sum(delays) / len(delays) if delays else math.nan,
        p95_ms=delays[max(0, math.ceil(0.95 * len(delays)) - 1)] if delays else math.nan,
        concealed_pct=100.0 * counts.concealed / len(emitted) if emitted else 0.0,
        discarded=counts.discarded,
        balanced=counts.balanced,
        seconds=seconds,
        counts=counts,
    )

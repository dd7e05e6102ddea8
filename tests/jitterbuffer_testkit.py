"""Seeded random traffic for the jitter buffer and a fingerprint of everything it does with
it, so a rewrite for speed can be checked against the behaviour recorded before it.

A trace is a buffer configuration and a list of calls: pushes of a stream with jitter,
reordering, loss, duplicates, sender pauses, seq jumps and restarts, media-clock steps,
outages and bursts, clock drift, odd payload shapes and the occasional invalid frame,
interleaved with ``pop_due`` ticks (also backwards in time), target changes and the stream
events. ``fingerprint`` runs one through a buffer and hashes every observable after every
call: the frames out (all fields, samples included), ``last_outcome``,
``last_reanchored``, ``next_due_s``, the delays and level, ``counts``, ``wait_stats``,
refusals' wording and the log lines.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from jitterline.errors import ConfigError
from jitterline.frames import AudioFrame, BufferStats, evolve
from jitterline.jitterbuffer import JitterBuffer

__all__ = ["Trace", "fingerprint", "make_trace", "make_wild_trace"]

Call = tuple[str, Any]


@dataclass(frozen=True)
class Trace:
    setup: dict[str, Any]
    calls: list[Call]
    debug: bool
    stats_every_call: bool


def _setup(rng: random.Random) -> dict[str, Any]:
    return {
        "target_delay_ms": rng.choice([0.0, 20.0, 60.0, 80.0, 150.0, rng.uniform(0, 400)]),
        "capacity_frames": rng.choice([1, 2, 4, 8, 16, 64, 512]),
        "max_gap_frames": rng.choice([1, 3, 10, 20, 250]),
        "max_step_ms": rng.choice([0.5, 5.0, 20.0, rng.uniform(0.5, 50)]),
        "conceal": rng.choice(["silence", "repeat"]),
        "late_memory": rng.choice([0, 4, 1024]),
        "outage_ms": rng.choice([50.0, 200.0, 500.0]),
        "catchup_ms": rng.choice([0.0, 20.0, 100.0]),
    }


def _payload(rng: random.Random, codec: str, seq: int, duration_ms: float) -> tuple[bytes, Any]:
    size = rng.choice([0, 1, 160, int(duration_ms * 8)])
    payload = bytes([seq % 256]) * size
    if codec == "opus" or rng.random() < 0.3:
        return payload, None
    samples = np.full(size, seq % 300 - 150, dtype=np.int16)
    samples.flags.writeable = False
    return payload, samples


def _frames(rng: random.Random) -> list[AudioFrame]:
    """One sender's frames in sending order, stamped with their arrival."""
    codec = rng.choice(["PCMU", "PCMA", "pcmu", "L16", "opus"])
    channel = rng.choice(["", "inbound"])
    duration_ms = rng.choice([10.0, 20.0, 20.0, 30.0, 20.000000001])
    jitter_ms = rng.choice([0.0, 2.0, 15.0, 60.0, 150.0])
    drift = rng.choice([0.0, 1e-4, -1e-4, 3e-3])
    loss, dup = rng.choice([0.0, 0.02, 0.2]), rng.choice([0.0, 0.03])
    stamps = rng.random() < 0.3
    start_s, seq, media_ms, delay_ms = rng.uniform(-1, 100), rng.randint(0, 70000), 0.0, 0.0
    out: list[AudioFrame] = []
    for _ in range(rng.randint(1, 400)):
        dur = duration_ms if rng.random() < 0.95 else rng.choice([10.0, 20.0, 40.0])
        event = rng.random()
        if event < 0.01:
            seq += rng.choice([rng.randint(2, 30), rng.randint(200, 3000)])  # skip ahead
        elif event < 0.015:
            seq = rng.randint(0, max(0, seq - 100))  # restart its numbering
        elif event < 0.03:
            media_ms += rng.choice([100.0, 1500.0, -3000.0, 50_000.0])  # pause or clock step
        elif event < 0.04:
            delay_ms += rng.choice([300.0, 800.0, 3000.0])  # an outage: held, then a burst
        elif event < 0.05:
            delay_ms = max(0.0, delay_ms - rng.choice([20.0, 100.0, 1000.0]))  # route change
        delay_ms = max(0.0, delay_ms - rng.choice([0.0, 5.0, 20.0]))
        send_s = start_s + media_ms / 1000.0 * (1 + drift)
        arrival_s = (
            send_s + (delay_ms + rng.expovariate(1 / jitter_ms if jitter_ms else 1e9)) / 1000
        )
        payload, samples = _payload(rng, codec, seq, dur)
        media = media_ms if rng.random() > 0.005 else rng.choice([math.nan, math.inf])
        frame = AudioFrame(
            stream_id=rng.choice(["s1", "s1", "s1", "s2"]),
            seq=seq,
            media_ms=media,
            codec=codec,
            sample_rate=8000,
            channels=1,
            payload=payload,
            duration_ms=dur,
            arrival_s=round(arrival_s, rng.choice([3, 6, 9])),
            capture_wall_s=send_s if stamps else None,
            sent_wall_s=send_s + 0.001 if stamps else None,
            received_wall_s=arrival_s if stamps else None,
            samples=samples,
            channel=channel,
        )
        if rng.random() >= loss:
            out.append(frame)
        if rng.random() < dup:
            out.append(frame)
        seq += 1
        media_ms += dur
    return out


def _invalid(rng: random.Random, frame: AudioFrame) -> AudioFrame:
    return rng.choice(
        [
            evolve(frame, arrival_s=math.nan),
            evolve(frame, arrival_s=-math.inf),
            evolve(frame, duration_ms=0.0),
            evolve(frame, duration_ms=math.inf),
            evolve(frame, duration_ms=-20.0),
        ]
    )


def make_trace(seed: int) -> Trace:
    rng = random.Random(seed)
    frames = _frames(rng)
    order = sorted(range(len(frames)), key=lambda i: frames[i].arrival_s)
    if rng.random() < 0.2:  # an edited capture: a few arrival stamps out of time order
        for _ in range(rng.randint(1, 5)):
            i, j = rng.randrange(len(order)), rng.randrange(len(order))
            order[i], order[j] = order[j], order[i]
    tick = rng.choice([0.0, 0.2, 0.8])
    calls: list[Call] = []
    for i in order:
        frame = frames[i]
        calls.append(("push", frame if rng.random() > 0.003 else _invalid(rng, frame)))
        if rng.random() < tick:
            calls.append(("pop_due", frame.arrival_s + rng.choice([0.0, 0.001, 0.03, -0.5])))
        if rng.random() < 0.1:  # a tick just after next_due_s, as the stage's timer fires
            calls.append(("pop_due_next", rng.uniform(0, 0.002)))
        if rng.random() < 0.02:
            calls.append(("set_target_delay", rng.choice([0.0, 40.0, 80.0, 300.0, 2000.0])))
        if rng.random() < 0.01:
            name = rng.choice(["pause", "resume", "discontinuity", "end", "close"])
            calls.append((name, frame.arrival_s + rng.choice([0.0, 0.05, 2.0])))
    last_s = max((f.arrival_s for f in frames), default=0.0)
    calls.append((rng.choice(["end", "close", "pop_due"]), last_s + rng.choice([0.01, 1.0])))
    calls.append(("pop_due", last_s + 60.0))
    calls.append(("close", last_s + 61.0))
    return Trace(_setup(rng), calls, rng.random() < 0.3, rng.random() < 0.5)


_WILD_CALLS = {  # name: weight
    "push": 50,
    "pop_due": 20,
    "set_target_delay": 5,
    "pause": 5,
    "resume": 5,
    "discontinuity": 5,
    "end": 3,
    "close": 2,
}


def make_wild_trace(seed: int) -> Trace:
    """The fuzz tests' alphabet (tests/test_fuzz_jitterbuffer.py): any call in any order, a
    few seqs, times anywhere in a 35 s span, small capacities and gaps."""
    rng = random.Random(seed)
    setup = {
        "target_delay_ms": rng.uniform(0.0, 400.0),
        "capacity_frames": rng.randint(1, 16),
        "max_gap_frames": rng.randint(1, 20),
        "max_step_ms": rng.uniform(0.5, 50.0),
        "conceal": rng.choice(["silence", "repeat"]),
        "late_memory": rng.randint(0, 8),
        "outage_ms": rng.choice([50.0, 500.0]),
        "catchup_ms": rng.choice([0.0, 20.0, 100.0]),
    }
    calls: list[Call] = []
    for _ in range(rng.randint(0, 80)):
        at_s = round(rng.uniform(-5.0, 30.0), 6)
        name = rng.choices(list(_WILD_CALLS), list(_WILD_CALLS.values()))[0]
        if name == "push":
            seq = rng.randint(0, 60)
            frame = AudioFrame(
                stream_id="wild",
                seq=seq,
                media_ms=seq * 20.0,
                codec="PCMU",
                sample_rate=8000,
                channels=1,
                payload=bytes([seq]) * 160,
                duration_ms=20.0,
                arrival_s=at_s,
            )
            calls.append((name, frame))
        elif name == "set_target_delay":
            calls.append((name, rng.uniform(0.0, 10_000.0)))
        else:
            calls.append((name, at_s))
    return Trace(setup, calls, rng.random() < 0.3, rng.random() < 0.5)


def _frame_state(frame: AudioFrame) -> tuple[Any, ...]:
    state: list[Any] = []
    for f in fields(frame):
        value = getattr(frame, f.name)
        if isinstance(value, np.ndarray):
            value = (value.dtype.str, value.shape, value.flags.writeable, value.tobytes())
        elif isinstance(value, float):
            value = value.hex()
        state.append(value)
    return tuple(state)


def _float(value: float | None) -> str | None:
    return None if value is None else value.hex()


def _state(buffer: JitterBuffer, with_stats: bool) -> tuple[Any, ...]:
    state: tuple[Any, ...] = (
        buffer.last_outcome,
        buffer.last_reanchored,
        _float(buffer.next_due_s),
        _float(buffer.level_ms),
        _float(buffer.current_delay_ms),
        _float(buffer.target_delay_ms),
        _float(buffer.reference_ms),
        buffer.closed,
        buffer.counts(),
    )
    if with_stats:
        waits = buffer.wait_stats()
        state += (waits.frames, _float(waits.mean_ms), _float(waits.p95_ms), _float(waits.idle_s))
        state += (buffer.stats(BufferStats()),)
    return state


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def fingerprint(trace: Trace) -> str:
    """A hash of everything observable that ``trace`` makes a buffer do."""
    logger = logging.getLogger("jitterline.jitterbuffer")
    lines, level = _Lines(), logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.DEBUG if trace.debug else logging.INFO)
    try:
        buffer = JitterBuffer(**trace.setup)
        digest = hashlib.sha256()
        for name, arg in trace.calls:
            try:
                if name == "set_target_delay":
                    buffer.set_target_delay(arg)
                    out: list[AudioFrame] = []
                elif name == "pop_due_next":
                    due = buffer.next_due_s
                    out = buffer.pop_due(due + arg) if due is not None else []
                else:
                    out = getattr(buffer, name)(arg)
            except ConfigError as exc:
                out = []
                lines.lines.append(f"refused {exc}")
            step = (name, [_frame_state(f) for f in out], _state(buffer, trace.stats_every_call))
            digest.update(repr(step).encode())
            digest.update(repr(lines.lines).encode())
            lines.lines = []
        digest.update(repr(_state(buffer, True)).encode())
        return digest.hexdigest()[:16]
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)

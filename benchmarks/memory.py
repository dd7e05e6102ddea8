"""Memory per streaming session, and whether one stream's memory stays flat for an hour.

Run: ``python -m benchmarks memory [--quick]`` or ``python -m benchmarks.memory``.

**Per session** (``memory_kib_per_session``, target <= 256 KiB). The broadcasting endpoint
of ``benchmarks/sessions.py`` (one 20 ms L16 ``audio_chunk`` built every 20 ms and written
to every connection: cheap per connection, so it keeps time) runs in a child; ``SESSIONS``
(40) dial-out streams connect through one ``Runtime``, each with its protocol object and
full pipeline, and stream for ``STREAM_S`` (longer than the latency window's 10 s, so
every bounded structure has filled). The figure is the growth of this process's resident
set (``/proc/self/statm``), taken after ``gc.collect()`` before the streams connect and
while they stream, divided by their number, in a process of its own (memory freed by
earlier benchmarks of the run would be reused without growing RSS). 40 because one loop on
this 2-core machine keeps up with about 50 live pipelines (``benchmarks/sessions.py``):
past that, frames are read late and counted lost, which fills per-stream memory a healthy
stream never fills. RSS is what the machine pays: it includes what tracemalloc cannot see
(sockets' user-space buffers in C, allocator slack and fragmentation, numpy's and
OpenSSL's own allocations); it is noisy at the scale of an allocator arena, hence many
sessions at once and a warm-up stream first, so that one-off costs (lazy imports, caches,
the first pipeline's code objects) are paid before the baseline. A second pass under
``tracemalloc`` gives the Python-heap share per session
(``memory_traced_kib_per_session``, 10 streams, not in ``--quick``), for attribution only:
tracing slows every allocation, so it is not the keyed figure. Each pass prints the mean
frames its streams counted lost: a loop that falls behind reads frames too late, and they
fill the buffer's memory of lost seqs (up to 1024, about 115 KiB), so a loaded machine
shows a higher figure.

**Growth over an hour** (``memory_growth_pct``, target < 5 %). One stream's pipeline on a
``HistoricalScheduler`` is fed an hour of virtual time (180 000 messages of 20 ms) with
exponential jitter (mean 10 ms), bursty loss (a Gilbert-Elliott chain, about 12 %), 0.5 %
reordered by up to 3 frames and 0.2 % duplicates, generated on the fly so the input holds
O(1) memory, after an untraced 2-minute warm-up stream (first-use costs such as lazy
imports and caches are not the stream's). ``tracemalloc`` (exact, deterministic, per
allocation, which RSS is not at this scale) reads the traced heap at each checkpoint;
growth is the last checkpoint over the one at ``WARM_MIN`` (10) minutes, by when the
bounded structures have filled (the windows, the 1024-seq memory of lost frames, the 1 ms
wait histogram, their dicts' resizes). All checkpoints are printed, so the
fill-up shows too. Tracing makes the pipeline about 4x slower, so ``--quick`` runs 15
virtual minutes (growth from 10 to 15; ``memory_growth_minutes`` says which): the published
figure is the full run's.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import multiprocessing
import multiprocessing.connection
import os
import random
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from reactivex.scheduler import HistoricalScheduler
from reactivex.subject import Subject

from jitterline import Message, PipelineConfig, PluginHost, build_pipeline
from jitterline.codecs import encode
from jitterline.protocols.appfoundry import audio_chunk_message
from jitterline.runtime import Runtime
from jitterline.transport import IOLoop

from .sessions import _endpoint as broadcasting_endpoint

STREAM_S = 12.0
SESSIONS = 40
TRACED_SESSIONS = 10
FRAME_S = 0.02
WARM_MIN = 10
CHECKPOINTS_MIN = (1, 2, 3, 4, 5, WARM_MIN, 15, 20, 30, 40, 50, 60)
QUICK_MINUTES = 15
WARMUP_MIN = 2
_STREAM_TIMEOUT_S = 120.0
_PAGE = os.sysconf("SC_PAGE_SIZE")

# -- per session, live ----------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * _PAGE


class Streamed:
    """What ``_stream`` measured, and the mean frames each stream counted lost (frames a
    busy loop read too late count lost, and fill the buffer's memory of lost seqs)."""

    def __init__(self, measured: int, lost_per_stream: float) -> None:
        self.measured = measured
        self.lost_per_stream = lost_per_stream


def traced_bytes() -> int:
    return tracemalloc.get_traced_memory()[0]


def _stream(
    runtime: Runtime, url: str, n: int, seconds: float, measure: Callable[[], int]
) -> Streamed:
    """Connect ``n`` streams, wait until each received ``seconds`` of audio (a busy machine
    delays that, it does not shorten it), ``measure()`` then, close them."""
    streams = []
    for index in range(n):
        proto = runtime.host.dialects.get("appfoundry")(role="client", session_id=f"m{index}")
        streams.append(runtime.dial(url, proto, PipelineConfig(), max_attempts=1))
    for _, session in streams:
        session.start()
    deadline = time.monotonic() + _STREAM_TIMEOUT_S
    while min(s.diagnostics().messages_in for _, s in streams) < seconds / FRAME_S:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} streams did not get {seconds} s of audio within 120 s")
        time.sleep(0.1)
    gc.collect()
    measured = measure()
    lost = 0
    for connection, session in streams:
        session.close(1.0)
        lost += runtime.call(connection.finish, _STREAM_TIMEOUT_S).primary[0].frames.lost
    return Streamed(measured, lost / n)


def per_session(url: str, n: int, *, traced: bool) -> tuple[float, float]:
    """KiB per streaming session (RSS growth, or traced-heap growth when ``traced``) and
    the mean frames lost per stream."""
    measure = traced_bytes if traced else rss_bytes
    with IOLoop(name="bench-io") as ioloop:
        runtime = Runtime(PluginHost(), ioloop=ioloop)
        _stream(runtime, url, 1, 2.0, measure)  # warm-up: one-off costs paid here
        if traced:
            tracemalloc.start()
        try:
            gc.collect()
            before = measure()
            during = _stream(runtime, url, n, STREAM_S, measure)
        finally:
            tracemalloc.stop()
    return (during.measured - before) / n / 1024.0, during.lost_per_stream


def _per_session_worker(
    conn: multiprocessing.connection.Connection, url: str, n: int, traced: bool
) -> None:
    try:
        conn.send(("ok", per_session(url, n, traced=traced)))
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise


def per_session_fresh(url: str, n: int, *, traced: bool) -> tuple[float, float]:
    """``per_session`` in a new process: memory that earlier benchmarks of the same run
    freed stays with the allocator and is reused without growing RSS, which would hide
    the growth being measured."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    worker = context.Process(target=_per_session_worker, args=(child, url, n, traced))
    worker.start()
    try:
        deadline = time.monotonic() + 3 * _STREAM_TIMEOUT_S
        while not parent.poll(1.0):
            if not worker.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the measuring process ended without a result")
        status, result = parent.recv()
    finally:
        worker.join(10)
    if status != "ok":
        raise RuntimeError(f"the measuring process failed: {result}")
    kib, lost = result
    return float(kib), float(lost)


# -- growth over an hour of virtual time ----------------------------------------------------


def lossy_messages(minutes: int, seed: int = 11) -> Iterator[Message]:
    """``minutes`` of messages in arrival order with jitter, bursty loss (about 12 %: the
    1024-seq memory of lost frames fills in about 3 minutes), reordering, duplicates."""
    rng = random.Random(seed)
    tone = encode(9830 * np.sin(2 * np.pi * 440 * np.arange(160) / 8000), "L16")
    pending: list[tuple[float, int]] = []
    bad = False
    for seq in range(round(minutes * 60 / FRAME_S)):
        sent_s = seq * FRAME_S
        while pending and pending[0][0] <= sent_s:
            yield _message(tone, *heapq.heappop(pending))
        bad = rng.random() < (0.7 if bad else 0.05)
        if rng.random() < (0.8 if bad else 0.005):
            continue
        arrival_s = sent_s + min(rng.expovariate(100.0), 0.5)
        if rng.random() < 0.005:
            arrival_s += FRAME_S * rng.randint(1, 3)
        heapq.heappush(pending, (round(arrival_s, 6), seq))
        if rng.random() < 0.002:
            heapq.heappush(pending, (round(arrival_s + FRAME_S, 6), seq))
    while pending:
        yield _message(tone, *heapq.heappop(pending))


def _message(tone: bytes, arrival_s: float, seq: int) -> Message:
    sent = 1_700_000_000 + seq * FRAME_S
    text = audio_chunk_message(tone, seq=seq, capture_wall_s=sent, sent_wall_s=sent)
    return Message(text, arrival_s=arrival_s)


def _play(
    minutes: int, checkpoints_min: Sequence[int], measure: Callable[[], int]
) -> list[tuple[int, int]]:
    """Feed one pipeline ``minutes`` of ``lossy_messages``; ``measure()`` at each checkpoint."""
    scheduler = HistoricalScheduler()
    source: Subject[Message] = Subject()
    pipeline = build_pipeline(source, scheduler=scheduler, config=PipelineConfig())
    pipeline.output.subscribe(scheduler=scheduler)
    checkpoints = [minute for minute in checkpoints_min if minute <= minutes]
    readings: list[tuple[int, int]] = []
    for message in lossy_messages(minutes):
        if checkpoints and message.arrival_s >= checkpoints[0] * 60.0:
            gc.collect()
            readings.append((checkpoints.pop(0), measure()))
        scheduler.advance_to(scheduler.to_datetime(message.arrival_s))
        source.on_next(message)
    gc.collect()
    readings.extend((minute, measure()) for minute in checkpoints)
    source.on_completed()
    scheduler.start()
    if not pipeline.final()[0].frames.balanced:
        raise RuntimeError("the stream's frames do not add up; see Stats.frames")
    return readings


def growth(minutes: int) -> list[tuple[int, int]]:
    """(minute, traced bytes) at each checkpoint of one stream's ``minutes``, after an
    untraced warm-up stream (first-use costs, such as lazy imports and caches, are not the
    stream's)."""
    _play(WARMUP_MIN, (), traced_bytes)
    tracemalloc.start()
    try:
        return _play(minutes, CHECKPOINTS_MIN, traced_bytes)
    finally:
        tracemalloc.stop()


# -- the run --------------------------------------------------------------------------------


def run(quick: bool = False) -> dict[str, float]:
    n = SESSIONS
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    endpoint = context.Process(target=broadcasting_endpoint, args=(child,))
    endpoint.start()
    try:
        url = parent.recv()
        rss_kib, rss_lost = per_session_fresh(url, n, traced=False)
        traced = None if quick else per_session_fresh(url, TRACED_SESSIONS, traced=True)
    finally:
        parent.send("stop")
        endpoint.join(10)
    print(f"memory: live streams, {STREAM_S:.0f} s of 20 ms L16 each, full pipelines")
    print(
        f"  {n:3d} streams, RSS growth:      {rss_kib:7.1f} KiB/session (target <= 256), "
        f"{rss_lost:.0f} frames lost per stream"
    )
    if traced is not None:
        print(
            f"  {TRACED_SESSIONS:3d} streams, traced heap:     {traced[0]:7.1f} KiB/session, "
            f"{traced[1]:.0f} frames lost per stream"
        )
    minutes = QUICK_MINUTES if quick else 60
    started = time.perf_counter()
    readings = growth(minutes)
    print(f"one stream, {minutes} min of virtual time ({time.perf_counter() - started:.0f} s):")
    for minute, size in readings:
        print(f"  {minute:3d} min  {size / 1024:8.1f} KiB traced")
    warm = dict(readings)[WARM_MIN]
    growth_pct = (readings[-1][1] - warm) / warm * 100.0
    print(f"memory_growth_pct ({WARM_MIN} -> {minutes} min): {growth_pct:.2f} (target < 5)")
    figures = {
        "memory_kib_per_session": rss_kib,
        "memory_lost_per_stream": rss_lost,
        "memory_growth_pct": growth_pct,
        "memory_growth_minutes": float(minutes),
        "memory_stream_end_kib": readings[-1][1] / 1024.0,
    }
    if traced is not None:
        figures["memory_traced_kib_per_session"] = traced[0]
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="15 virtual minutes, not 60; no traced pass"
    )
    run(parser.parse_args(argv).quick)


if __name__ == "__main__":
    main()

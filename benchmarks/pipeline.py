"""Per-frame cost of the pipeline, as ratios against baselines measured in the same run.

Run: ``python -m benchmarks pipeline [--quick]`` or ``python benchmarks/pipeline.py``.
This machine is shared and noisy, so every figure is a ratio of two timings taken back to
back (best of several repeats), with the absolute numbers for reference:

- ``per_frame_ratio``: the whole Rx chain (parse, decode, jitter buffer, latency window,
  adjuster, snapshots, sinks) on a ``HistoricalScheduler`` against the floor any client
  pays per message, ``json.loads`` + base64 decode of the same 20 ms L16 chunk;
- ``processor_ratio``: the protocol object's ``receive`` plus the codec, the part of the
  chain before the buffer, against the same floor;
- ``window_scaling``: the latency window with a 50 000-frame window against a 500-frame
  one; per-frame cost is O(1), so it should stay near 1.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import time
from collections.abc import Callable, Sequence

import numpy as np
from reactivex.scheduler import HistoricalScheduler, VirtualTimeScheduler

from jitterline import AudioFrame, Message, PipelineConfig, PluginHost, build_pipeline
from jitterline.codecs import encode
from jitterline.latency import LatencyWindow
from jitterline.protocols.appfoundry import AppFoundryDialect, audio_chunk_message
from jitterline.schedulers import VirtualScheduler
from jitterline.stages import Relay

FRAME_S = 0.02


def messages(n: int, codec: str = "L16") -> list[Message]:
    rng = np.random.default_rng(7)
    tone = encode(9830 * np.sin(2 * np.pi * 440 * np.arange(160) / 8000), codec)
    out = []
    for seq in range(n):
        sent = 1_700_000_000 + seq * FRAME_S
        arrival = round(seq * FRAME_S + float(rng.exponential(0.01)), 6)
        text = audio_chunk_message(
            tone, seq=seq, capture_wall_s=sent, sent_wall_s=sent, codec=codec
        )
        out.append(Message(text, arrival_s=arrival))
    out.sort(key=lambda m: m.arrival_s)
    return out


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def floor(batch: list[Message]) -> None:
    for message in batch:
        document = json.loads(message.data)
        base64.b64decode(document["payload"]["audio"])


def processor(batch: list[Message], host: PluginHost) -> None:
    proto = AppFoundryDialect(role="client", wall_clock=time.time)
    for message in batch:
        for event in proto.receive(message):
            if isinstance(event, AudioFrame):
                host.codecs.get(event.codec).decode(event.payload)


def whole_chain(
    batch: list[Message],
    host: PluginHost,
    make_scheduler: Callable[[], VirtualTimeScheduler | VirtualScheduler] = VirtualScheduler,
) -> None:
    scheduler = make_scheduler()
    source = Relay()  # what replays and the runtime feed a pipeline through
    pipeline = build_pipeline(source, scheduler=scheduler, config=PipelineConfig(), host=host)
    pipeline.output.subscribe(scheduler=scheduler)
    for message in batch:
        scheduler.schedule_absolute(message.arrival_s, lambda *_, m=message: source.on_next(m))
    scheduler.schedule_absolute(batch[-1].arrival_s + 0.5, lambda *_: source.on_completed())
    scheduler.start()
    assert pipeline.final()[0].frames.balanced


def window_cost(frames: list[AudioFrame], size: int) -> Callable[[], None]:
    def run() -> None:
        window = LatencyWindow(max_frames=size, max_age_s=1e9)
        for frame in frames:
            window.observe(frame)

    return run


def run(quick: bool = False) -> dict[str, float]:
    n = 2_000 if quick else 10_000
    repeats = 3 if quick else 5
    host = PluginHost()
    results: dict[str, float] = {}
    for codec in ("L16", "PCMU"):
        batch = messages(n, codec)
        base = best_of(repeats, functools.partial(floor, batch))
        proc = best_of(repeats, functools.partial(processor, batch, host))
        full = best_of(repeats, functools.partial(whole_chain, batch, host))
        rx = best_of(repeats, functools.partial(whole_chain, batch, host, HistoricalScheduler))
        suffix = "" if codec == "L16" else "_pcmu"
        results[f"per_frame_ratio{suffix}"] = full / base
        results[f"processor_ratio{suffix}"] = proc / base
        results[f"historical_ratio{suffix}"] = rx / base
        print(
            f"{codec}: floor {1e6 * base / n:.1f} us/frame; receive+decode {1e6 * proc / n:.1f} "
            f"us ({proc / base:.2f}x); whole chain {1e6 * full / n:.1f} us ({full / base:.2f}x)"
            f"; on RxPY's HistoricalScheduler {1e6 * rx / n:.1f} us ({rx / base:.2f}x)"
        )
    proto = AppFoundryDialect(role="client", wall_clock=time.time)
    frames = [e for m in messages(n) for e in proto.receive(m) if isinstance(e, AudioFrame)]
    small = best_of(repeats, window_cost(frames, 500))
    large = best_of(repeats, window_cost(frames, 50_000))
    results["window_scaling"] = large / small
    print(f"latency window 50000 / 500 frames: {large / small:.2f}x")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args(argv).quick)


if __name__ == "__main__":
    main()

"""Per-frame cost of the pipeline, as ratios against baselines measured in the same run.

Run: ``python benchmarks/bench_pipeline.py [--frames N]``. This machine is shared and noisy,
so every figure is a ratio of two timings taken back to back (best of several repeats):

- the whole stream processor (decode, latency window, adjuster, jitter buffer) against the
  bare minimum any client pays per message: ``json.loads`` + base64 + G.711 table decode;
- the latency window with a 50 000-frame window against a 500-frame one: per-frame cost is
  O(1), so the ratio should stay near 1 however long the window.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from collections.abc import Callable

import numpy as np

from jitterline import Message, PipelineConfig, PluginHost, StreamProcessor
from jitterline.codecs import decode, encode
from jitterline.frames import AudioFrame
from jitterline.latency import LatencyWindow
from jitterline.protocols.appfoundry import audio_chunk_message

FRAME_S = 0.02


def messages(n: int) -> list[Message]:
    rng = np.random.default_rng(7)
    tone = encode(9830 * np.sin(2 * np.pi * 440 * np.arange(160) / 8000), "PCMU")
    out = []
    for seq in range(n):
        sent = 1_700_000_000 + seq * FRAME_S
        arrival = seq * FRAME_S + float(rng.exponential(0.01))
        text = audio_chunk_message(
            tone, seq=seq, capture_wall_s=sent, sent_wall_s=sent, codec="PCMU"
        )
        out.append(Message(text, arrival_s=arrival))
    return out


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def baseline(batch: list[Message]) -> None:
    for message in batch:
        document = json.loads(message.data)
        decode(base64.b64decode(document["payload"]["audio"]), "PCMU")


def processor(batch: list[Message]) -> None:
    host = PluginHost(load_entrypoints=False)
    proc = StreamProcessor(
        PipelineConfig(), dialects=host.dialects, codecs=host.codecs, policies=host.policies
    )
    for message in batch:
        for event in proc.decode(message):
            if isinstance(event, AudioFrame):
                proc.playout(proc.measure(event))
    proc.finish(batch[-1].arrival_s + 1.0)


def window_cost(frames: list[AudioFrame], size: int) -> Callable[[], None]:
    def run() -> None:
        window = LatencyWindow(max_frames=size, max_age_s=1e9)
        for frame in frames:
            window.observe(frame)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    batch = messages(args.frames)

    base = best_of(args.repeats, lambda: baseline(batch))
    full = best_of(args.repeats, lambda: processor(batch))
    print(f"frames: {args.frames}")
    print(f"baseline (json + base64 + G.711 decode): {1e6 * base / args.frames:.1f} us/frame")
    print(f"stream processor / baseline: {full / base:.2f}x")
    print(f"stream processor real-time factor: {args.frames * FRAME_S / full:.0f}x real time")

    host = PluginHost(load_entrypoints=False)
    proc = StreamProcessor(
        PipelineConfig(), dialects=host.dialects, codecs=host.codecs, policies=host.policies
    )
    frames = [e for m in batch for e in proc.decode(m) if isinstance(e, AudioFrame)]
    small = best_of(args.repeats, window_cost(frames, 500))
    large = best_of(args.repeats, window_cost(frames, 50_000))
    print(f"latency window 50000 / 500 frames: {large / small:.2f}x")


if __name__ == "__main__":
    main()

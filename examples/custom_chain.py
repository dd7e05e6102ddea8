"""A custom chain with a custom sink, on virtual time: ``python examples/custom_chain.py``.

Two seconds of a 440 Hz tone in 20 ms PCMU frames cross a network that loses every 10th
frame and holds every 7th back by 70 ms. The chain composes its own stage (a -6 dB gain)
before the jitter buffer, and a plugin sink meters what plays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import reactivex
from reactivex import operators as ops

from jitterline import (
    AudioFrame,
    Message,
    PipelineConfig,
    PluginHost,
    StreamInfo,
    VirtualScheduler,
    build_pipeline,
    hookimpl,
    stages,
)
from jitterline.codecs import encode
from jitterline.protocols.appfoundry import audio_chunk_message


class LoudnessMeter:
    """The custom sink: the RMS level of every played frame, concealment included."""

    def __init__(self) -> None:
        self.levels_db: list[float] = []

    @hookimpl
    def jitterline_frame_played(self, frame: AudioFrame, stream: StreamInfo) -> None:
        if frame.samples is None:
            return
        rms = np.sqrt(np.mean(np.square(frame.samples, dtype=np.float64)))
        self.levels_db.append(float(20 * np.log10(max(rms, 1.0) / 32768)))


def network() -> reactivex.Observable[Message]:
    """Each message arrives at its (virtual) time; this stands in for a live connection."""
    tone = encode(9830 * np.sin(2 * np.pi * 440 * np.arange(160) / 8000), "PCMU")
    arrivals = []
    for seq in (s for s in range(100) if s % 10 != 9):
        at = 0.02 * seq + (0.07 if seq % 7 == 6 else 0.0)
        sent = 1_700_000_000 + 0.02 * seq
        text = audio_chunk_message(
            tone, seq=seq, capture_wall_s=sent, sent_wall_s=sent, codec="PCMU"
        )
        arrivals.append(reactivex.timer(at).pipe(ops.map(arrive(Message(text, at)))))
    return reactivex.merge(*arrivals)


def arrive(message: Message) -> Callable[[int], Message]:
    return lambda _: message


def gain(frame: AudioFrame) -> AudioFrame:
    return replace(frame, samples=frame.samples // 2 if frame.samples is not None else None)


def main() -> None:
    scheduler = VirtualScheduler()
    meter = LoudnessMeter()
    host = PluginHost(plugins=[meter])
    config = PipelineConfig(buffer_policy="fixed", buffer_ms=100)

    def chain(channel: str) -> Callable[[reactivex.Observable[Any]], reactivex.Observable[Any]]:
        return reactivex.compose(
            stages.snapshots(config),
            stages.map_frames(gain),  # your own stage, composed before the jitter buffer
            stages.feedback_loop(  # jitter buffer -> latency window -> adjuster -> target
                lambda targets: stages.jitter_buffer(config, targets=targets),
                stages.latency_window(config),
                stages.adjust(config, host.policies),
            ),
            stages.stats(),
            stages.sinks(host, channel=channel),
        )

    pipeline = build_pipeline(
        network(), scheduler=scheduler, config=config, host=host, channel_chain=chain
    )
    pipeline.output.subscribe(scheduler=scheduler)
    scheduler.start()

    stats, diagnosis = pipeline.final()
    frames = stats.frames
    print(f"played {frames.played}, concealed {frames.concealed}, lost {frames.lost}", end="")
    print(f", late {frames.late}")
    print(f"mean level {np.mean(meter.levels_db):.1f} dBFS over {len(meter.levels_db)} frames")
    print(f"verdict: {diagnosis.verdict}: {diagnosis.summary}")


if __name__ == "__main__":
    main()

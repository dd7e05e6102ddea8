"""A third-party sink that keeps per-stream state: ``python examples/per_stream_sink.py``.

One process runs many streams, so a sink must never keep "the" stream's state in a field:
it keeps a small record per stream under ``StreamInfo.key`` (stream id and channel),
creates it in ``jitterline_stream_opened`` and hands it over and forgets it in
``jitterline_stream_closed``, so memory stays bounded however many calls come and go.

Here the sink measures talk time (frames louder than -40 dBFS) per stream. Three streams
run at once on one virtual clock: a caller who talks all the time, one who talks half the
time and a silent one, each with its own pipeline, and the report keeps them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from reactivex.scheduler import HistoricalScheduler
from reactivex.subject import Subject

from jitterline import (
    AudioFrame,
    Message,
    PipelineConfig,
    PluginHost,
    Stats,
    StreamInfo,
    build_pipeline,
    hookimpl,
)
from jitterline.codecs import encode
from jitterline.protocols.appfoundry import audio_chunk_message, initialize_ack_message

THRESHOLD = 32768 * 10 ** (-40 / 20)


@dataclass
class Talk:
    """What the sink knows of one stream."""

    frames: int = 0
    talking: int = 0


class TalkTime:
    """Per-stream talk time; ``report`` collects one line per finished stream."""

    def __init__(self) -> None:
        self.streams: dict[tuple[str, str], Talk] = {}
        self.report: dict[str, float] = {}

    @hookimpl
    def jitterline_stream_opened(self, stream: StreamInfo) -> None:
        self.streams[stream.key] = Talk()

    @hookimpl
    def jitterline_frame_played(self, frame: AudioFrame, stream: StreamInfo) -> None:
        talk = self.streams[stream.key]
        talk.frames += 1
        if frame.samples is not None and np.abs(frame.samples).max() > THRESHOLD:
            talk.talking += 1

    @hookimpl
    def jitterline_stream_closed(self, stream: StreamInfo, stats: Stats) -> None:
        talk = self.streams.pop(stream.key)  # forget it: memory stays bounded
        self.report[stream.stream_id] = talk.talking / max(talk.frames, 1)


def caller(stream_id: str, talking: int, scheduler: HistoricalScheduler) -> Subject[Message]:
    """One caller's 2 s of 20 ms PCMU frames, the first ``talking`` of them a tone, the
    rest silence, arriving on the shared virtual clock."""
    subject: Subject[Message] = Subject()
    tone = encode(8000 * np.sin(2 * np.pi * 300 * np.arange(160) / 8000), "PCMU")
    silence = encode(np.zeros(160), "PCMU")
    ack = initialize_ack_message(stream_id, now_wall_s=1e9)
    scheduler.schedule_relative(0.0, lambda *_: subject.on_next(Message(ack, 0.0)))
    for seq in range(100):
        at = 0.001 + 0.02 * seq
        text = audio_chunk_message(
            tone if seq < talking else silence,
            seq=seq,
            capture_wall_s=1e9 + at,
            sent_wall_s=1e9 + at,
            codec="PCMU",
        )
        message = Message(text, at)
        scheduler.schedule_relative(at, lambda *_, m=message: subject.on_next(m))
    scheduler.schedule_relative(2.5, lambda *_: subject.on_completed())
    return subject


def main() -> dict[str, float]:
    scheduler = HistoricalScheduler()
    sink = TalkTime()
    host = PluginHost(plugins=[sink])
    config = PipelineConfig(buffer_policy="fixed", buffer_ms=60)
    for stream_id, talking in (("talker", 100), ("half", 50), ("silent", 0)):
        pipeline = build_pipeline(
            caller(stream_id, talking, scheduler), scheduler=scheduler, config=config, host=host
        )
        pipeline.output.subscribe(scheduler=scheduler)
    scheduler.start()
    for stream_id, share in sink.report.items():
        print(f"{stream_id}: talking {share:.0%} of the time")
    return sink.report


if __name__ == "__main__":
    main()

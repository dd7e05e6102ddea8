"""Many streams in one process on one virtual clock: each its own protocol object, buffer,
window, adjuster and per-stream sink state, with nothing shared between them."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from reactivex.scheduler import HistoricalScheduler
from reactivex.subject import Subject

from jitterline import Message, PipelineConfig, PluginHost, build_pipeline
from jitterline.codecs import encode
from jitterline.protocols.appfoundry import audio_chunk_message, initialize_ack_message
from jitterline_plugins.wav_sink import WavSink

STREAMS = 500
FRAMES = 50  # 1 s at 50 frames/s
FRAME_S = 0.02


def stream(index: int, scheduler: HistoricalScheduler) -> Subject[Message]:
    """Stream ``index``: every sample is ``index + 1``, so a WAV shows whose audio it holds.
    Streams start 1 ms apart and jitter by a per-stream pattern."""
    subject: Subject[Message] = Subject()
    payload = encode(np.full(160, index + 1), "L16")
    start = index * 0.001
    ack = initialize_ack_message(f"s{index:03d}", now_wall_s=1e9)
    scheduler.schedule_relative(start, lambda *_: subject.on_next(Message(ack, start)))
    for seq in range(FRAMES):
        at = round(start + 0.001 + seq * FRAME_S + ((seq * (index + 7)) % 5) * 0.003, 6)
        text = audio_chunk_message(
            payload, seq=seq, capture_wall_s=1e9 + seq * FRAME_S, sent_wall_s=1e9 + at
        )
        message = Message(text, at)
        scheduler.schedule_relative(at, lambda *_, m=message: subject.on_next(m))
    scheduler.schedule_relative(start + 1.2, lambda *_: subject.on_completed())
    return subject


def test_500_streams_on_one_clock_each_balance_and_write_only_their_own_audio(
    tmp_path: Path,
) -> None:
    scheduler = HistoricalScheduler()
    wav = WavSink(str(tmp_path / "{stream_id}.wav"))
    host = PluginHost(plugins=[wav])
    config = PipelineConfig(buffer_policy="fixed", buffer_ms=40)
    pipelines = []
    for index in range(STREAMS):
        pipeline = build_pipeline(
            stream(index, scheduler), scheduler=scheduler, config=config, host=host
        )
        pipeline.output.subscribe(scheduler=scheduler)
        pipelines.append(pipeline)

    scheduler.start()

    assert len(wav.written) == STREAMS
    for index, pipeline in enumerate(pipelines):
        stats, _ = pipeline.final()
        frames = stats.frames
        assert stats.stream_id == f"s{index:03d}"
        assert frames.balanced
        assert frames.received == FRAMES
        assert frames.played == FRAMES
        assert frames.lost == frames.late == frames.malformed == 0
        with wave.open(str(wav.written[(f"s{index:03d}", "")]), "rb") as audio:
            samples = np.frombuffer(audio.readframes(audio.getnframes()), "<i2")
        played = samples[: FRAMES * 160]
        assert len(played) == FRAMES * 160
        assert set(np.unique(played)) == {index + 1}  # this stream's audio, nobody else's

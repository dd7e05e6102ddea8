"""Test a plugin the way jitterline's own plugins are tested: a fresh PluginHost holding
only this plugin, driven through the public API, first hook by hook, then as a real
pipeline on virtual time (no sockets, no sleeps)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from jitterline_talktime import TalkTime
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
    diagnose,
)
from jitterline.protocols.appfoundry import audio_chunk_message, initialize_ack_message


def frame(loud: bool) -> AudioFrame:
    samples = np.full(160, 8000 if loud else 0, dtype=np.int16)
    return AudioFrame(
        stream_id="a",
        seq=0,
        media_ms=0.0,
        codec="L16",
        sample_rate=8000,
        channels=1,
        payload=b"",
        duration_ms=20.0,
        arrival_s=0.0,
        samples=samples,
    )


def test_hooks_one_by_one_keep_two_streams_apart(tmp_path: Path) -> None:
    sink = TalkTime()
    host = PluginHost(plugins=[sink])  # a fresh host: only what the test gives it
    host.call("jitterline_configure", options={"talktime_csv": str(tmp_path / "t.csv")})
    a, b = StreamInfo("a", "external"), StreamInfo("a", "internal")
    for stream in (a, b):
        host.notify("jitterline_stream_opened", stream=stream)
    for loud in (True, True, False, False):
        host.notify("jitterline_frame_played", frame=frame(loud), stream=a)
        host.notify("jitterline_frame_played", frame=frame(False), stream=b)
    final = Stats(at_s=1.0)
    for stream in (a, b):
        host.notify(
            "jitterline_stream_closed",
            stream_id="a",
            stats=final,
            diagnosis=diagnose(final),
            stream=stream,
        )

    assert host.failures == {}  # a raising hook would be counted here, not raised
    assert sink.streams == {}  # per-stream state is gone once the streams closed
    with (tmp_path / "t.csv").open(encoding="utf-8") as rows:
        assert [(r["channel"], r["talking_share"]) for r in csv.DictReader(rows)] == [
            ("external", "0.5"),
            ("internal", "0.0"),
        ]


def test_in_a_real_pipeline_on_virtual_time() -> None:
    scheduler = HistoricalScheduler()
    source: Subject[Message] = Subject()
    ack = initialize_ack_message("call-1", now_wall_s=1e9)
    scheduler.schedule_relative(0.0, lambda *_: source.on_next(Message(ack, 0.0)))
    for seq in range(50):
        at_s = 0.01 + 0.02 * seq
        audio = np.full(160, 8000 if seq < 25 else 0, dtype="<i2").tobytes()
        text = audio_chunk_message(
            audio, seq=seq, capture_wall_s=1e9 + at_s, sent_wall_s=1e9 + at_s
        )
        message = Message(text, at_s)
        scheduler.schedule_relative(at_s, lambda *_, m=message: source.on_next(m))
    scheduler.schedule_relative(1.5, lambda *_: source.on_completed())
    sink = TalkTime()
    config = PipelineConfig(buffer_policy="fixed", buffer_ms=60.0)
    pipeline = build_pipeline(
        source, scheduler=scheduler, config=config, host=PluginHost(plugins=[sink])
    )

    pipeline.output.subscribe(scheduler=scheduler)
    scheduler.start()

    [row] = sink.rows
    assert row["stream_id"] == "call-1"
    assert row["frames"] >= 50
    assert row["talking_share"] == round(25 / row["frames"], 3)

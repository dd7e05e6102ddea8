"""The WAV sink: a known tone comes back sample for sample, silence exactly where frames
were lost, a file per stream, stereo by slot, arrival order, and valid files after a cut
connection and after SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from reactivex.scheduler import HistoricalScheduler
from reactivex.subject import Subject

from jitterline import (
    AudioFrame,
    ConfigError,
    Message,
    PipelineConfig,
    PluginHost,
    StreamInfo,
    build_pipeline,
)
from jitterline_plugins.wav_sink import WavSink
from sink_testkit import FRAME_SAMPLES, RATE, ROOT, run_streams, tone
from test_audiohook import L16_STEREO, Genesys


def read(path: Path) -> tuple[wave._wave_params, npt.NDArray[np.int16]]:
    with wave.open(str(path), "rb") as wav:
        params = wav.getparams()
        data = np.frombuffer(wav.readframes(params.nframes), dtype="<i2")
    return params, data


def sink_host(tmp_path: Path, **options: object) -> tuple[WavSink, PluginHost]:
    sink = WavSink()
    host = PluginHost(plugins=[sink])
    host.call(
        "jitterline_configure", options={"wav": str(tmp_path / "{stream_id}.wav"), **options}
    )
    return sink, host


def test_three_concurrent_streams_each_get_their_tone_back_with_silence_where_lost(
    tmp_path: Path,
) -> None:
    sent = {"a": tone(100, 300), "b": tone(100, 440), "c": tone(100, 700)}
    _, host = sink_host(tmp_path)

    run_streams(host, sent, lost=[30, 31, 32, 60])

    for stream_id, samples in sent.items():
        params, data = read(tmp_path / f"{stream_id}.wav")
        assert (params.framerate, params.nchannels, params.sampwidth) == (RATE, 1, 2)
        expected = samples.copy()
        for seq in (30, 31, 32, 60):
            expected[seq * FRAME_SAMPLES : (seq + 1) * FRAME_SAMPLES] = 0
        assert params.nframes == len(samples)
        assert np.array_equal(data, expected)


def test_a_lossless_stream_is_sample_exact_with_no_padding_for_the_buffer(
    tmp_path: Path,
) -> None:
    sent = tone(50)
    _, host = sink_host(tmp_path)

    run_streams(host, {"x": sent})

    _, data = read(tmp_path / "x.wav")
    assert np.array_equal(data, sent)


def test_a_cut_connection_leaves_a_valid_file_with_what_was_played(tmp_path: Path) -> None:
    _, host = sink_host(tmp_path)

    run_streams(host, {"a": tone(100), "b": tone(100)}, cut_after=40)

    for stream_id in "ab":
        params, data = read(tmp_path / f"{stream_id}.wav")
        assert 0 < params.nframes <= 41 * FRAME_SAMPLES
        assert np.array_equal(data, tone(100)[: params.nframes])


def frame(
    channel: str,
    seq: int,
    samples: npt.NDArray[np.int16],
    *,
    concealed: bool = False,
    start_s: float = 1.0,
) -> AudioFrame:
    return AudioFrame(
        stream_id="call",
        seq=seq,
        media_ms=20.0 * seq,
        codec="L16",
        sample_rate=RATE,
        channels=1,
        payload=b"",
        duration_ms=20.0,
        arrival_s=start_s + 0.02 * seq - 0.05,
        playout_s=start_s + 0.02 * seq,
        concealed=concealed,
        samples=samples,
        channel=channel,
    )


def test_stereo_interleaves_two_channels_by_slot_a_late_channel_starting_in_its_slot(
    tmp_path: Path,
) -> None:
    sink = WavSink(tmp_path / "call.wav", layout="stereo")
    left, right = tone(10, 300), tone(8, 900)
    for seq in range(10):
        block = left[seq * FRAME_SAMPLES : (seq + 1) * FRAME_SAMPLES]
        sink.jitterline_frame_played(frame("external", seq, block), StreamInfo("call", "external"))
        if seq >= 2:  # the second channel's first frame plays two slots later
            block = right[(seq - 2) * FRAME_SAMPLES : (seq - 1) * FRAME_SAMPLES]
            sink.jitterline_frame_played(
                frame("internal", seq - 2, block, start_s=1.04), StreamInfo("call", "internal")
            )
    sink.jitterline_stream_closed(StreamInfo("call", "external"))
    sink.jitterline_stream_closed(StreamInfo("call", "internal"))

    params, data = read(tmp_path / "call.wav")
    assert (params.nchannels, params.nframes) == (2, 10 * FRAME_SAMPLES)
    assert np.array_equal(data[0::2], left)
    assert np.array_equal(data[1::2], np.concatenate([np.zeros(320, np.int16), right]))


def test_stereo_never_holds_a_lone_channel_back_beyond_the_lag_bound(tmp_path: Path) -> None:
    sink = WavSink(tmp_path / "call.wav", layout="stereo")
    for seq in range(150):  # 3 s of one channel, the other never comes
        sink.jitterline_frame_played(
            frame("external", seq, tone(1)), StreamInfo("call", "external")
        )

    params, _ = read(tmp_path / "call.wav")
    assert params.nframes >= 150 * FRAME_SAMPLES - RATE  # at most STEREO_LAG_S held back
    sink.close()


def test_concealed_frames_are_written_as_concealed_and_never_trail(tmp_path: Path) -> None:
    """A concealed frame holds what the chain concealed with (silence by default, a
    repeat, speech-like concealment): that is what played, so that is what is written;
    after the last received frame nothing is (the sender stopped, no gap)."""
    sink = WavSink(tmp_path / "x.wav")
    noise = np.full(FRAME_SAMPLES, 1234, dtype=np.int16)
    sink.jitterline_frame_played(frame("", 0, noise, concealed=True), StreamInfo("x"))
    sink.jitterline_frame_played(frame("", 1, noise), StreamInfo("x"))
    sink.jitterline_frame_played(frame("", 2, noise, concealed=True), StreamInfo("x"))
    sink.close()

    _, data = read(tmp_path / "x.wav")  # the trailing concealed frame is after the end
    assert np.array_equal(data, np.concatenate([noise, noise]))


def test_arrival_file_holds_received_frames_in_arrival_order(tmp_path: Path) -> None:
    sink = WavSink(tmp_path / "x.wav", arrival=True)
    blocks = [np.full(FRAME_SAMPLES, seq + 1, dtype=np.int16) for seq in range(4)]
    arrivals_s = [1.00, 1.05, 1.03, 1.04]  # seq 1 arrived after seq 3; seq 2 never did
    for seq, block in enumerate(blocks):
        played = frame("", seq, block, concealed=seq == 2)
        played = AudioFrame(
            **{
                **{s: getattr(played, s) for s in AudioFrame.__slots__},
                "arrival_s": arrivals_s[seq],
            }
        )
        sink.jitterline_frame_played(played, StreamInfo("x"))
    sink.jitterline_stream_closed(StreamInfo("x"))

    _, data = read(tmp_path / "x-arrival.wav")
    assert list(data[::FRAME_SAMPLES]) == [1, 4, 2]  # arrival order; nothing concealed
    assert list(read(tmp_path / "x.wav")[1][::FRAME_SAMPLES]) == [1, 2, 3, 4]  # as played


def test_options_refuse_an_unknown_placeholder_and_arrival_with_stereo(tmp_path: Path) -> None:
    host = PluginHost(plugins=[WavSink()])
    with pytest.raises(ConfigError, match="unknown placeholder"):
        host.call("jitterline_configure", options={"wav": str(tmp_path / "{nope}.wav")})
    with pytest.raises(ConfigError, match="cannot go with --wav-layout stereo"):
        host.call(
            "jitterline_configure",
            options={"wav": str(tmp_path / "a.wav"), "wav_layout": "stereo", "wav_arrival": True},
        )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_demo_stopped_by_a_signal_leaves_a_valid_wav(tmp_path: Path, signum: int) -> None:
    path = tmp_path / "demo.wav"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'pipeline'}{os.pathsep}{ROOT / 'plugins'}"}
    command = [
        sys.executable,
        "-m",
        "jitterline.cli",
        "demo",
        "--duration",
        "20",
        "--quiet",
        "--wav",
        str(path),
    ]
    with subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as proc:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not path.exists() or path.stat().st_size < 8044):
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signum)
        proc.wait(timeout=20)

    params, data = read(path)
    assert params.framerate == 8000
    assert params.nframes >= 4000  # the header counts what was written before the signal
    assert len(data) == params.nframes


def test_an_audiohook_call_in_stereo_has_each_party_on_its_side(tmp_path: Path) -> None:
    scheduler = HistoricalScheduler()
    source: Subject[Message] = Subject()
    external, internal = tone(50, 300), tone(50, 900)
    genesys = Genesys()
    opening = Message(genesys.open([L16_STEREO]), 0.0)
    scheduler.schedule_relative(0.0, lambda *_: source.on_next(opening))
    for seq in range(50):
        span = slice(seq * FRAME_SAMPLES, (seq + 1) * FRAME_SAMPLES)
        audio = np.column_stack([external[span], internal[span]]).astype("<i2").tobytes()
        message = Message(audio, 0.01 + 0.02 * seq)
        scheduler.schedule_relative(message.arrival_s, lambda *_, m=message: source.on_next(m))
    scheduler.schedule_relative(1.5, lambda *_: source.on_completed())
    sink = WavSink(tmp_path / "call.wav", layout="stereo")
    config = PipelineConfig(dialect="audiohook", buffer_policy="fixed", buffer_ms=60.0)
    pipeline = build_pipeline(
        source, scheduler=scheduler, config=config, host=PluginHost(plugins=[sink]), role="server"
    )
    pipeline.output.subscribe(scheduler=scheduler)

    scheduler.start()

    params, data = read(tmp_path / "call.wav")
    assert (params.nchannels, params.nframes) == (2, len(external))
    assert np.array_equal(data[0::2], external)
    assert np.array_equal(data[1::2], internal)

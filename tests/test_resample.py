"""Resampling on soxr: rates and durations, frame-by-frame against one shot, the WAV sink's
``--wav-rate``, and the one-line error without soxr."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from audio_testkit import chunks, read_wav, run_pipeline, tone
from jitterline import AudioFrame, PluginHost
from jitterline.codecs import L16
from jitterline.errors import ConfigError
from jitterline.resample import Resampler, resample
from jitterline_plugins.wav_sink import WavSink


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize(("from_rate", "to_rate"), [(8000, 48000), (48000, 16000), (16000, 44100)])
def test_a_tone_keeps_its_pitch_and_duration(from_rate: int, to_rate: int) -> None:
    source = tone(from_rate, from_rate, freq_hz=440.0)
    out = resample(source, from_rate, to_rate)
    assert abs(out.size - to_rate) <= 1
    assert abs(peak_hz(out, to_rate) - 440.0) <= 1.0


def test_frame_by_frame_gives_the_whole_signal_as_one_call_does() -> None:
    source = tone(8000, 8000)
    stream = Resampler(8000, 16000)
    parts = [stream.process(source[i : i + 160]) for i in range(0, source.size, 160)]
    framed = np.concatenate([*parts, stream.flush()])
    whole = resample(source, 8000, 16000)
    assert framed.size == whole.size == 16000
    assert np.abs(framed.astype(np.int64) - whole).max() <= 1


def test_stereo_stays_interleaved() -> None:
    left = tone(8000, 800)
    stereo = np.stack([left, np.zeros_like(left)], axis=1).reshape(-1)
    out = resample(stereo, 8000, 16000, channels=2).reshape(-1, 2)
    assert out.shape == (1600, 2)
    assert np.abs(out[:, 1]).max() == 0 and np.abs(out[:, 0]).max() > 9000


def test_without_soxr_the_error_is_one_line_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "soxr", None)  # import soxr now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'jitterline\[resample\]'") as caught:
        Resampler(8000, 16000)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("rate", [0, 999, 200_000, True])
def test_an_impossible_rate_is_refused(rate: int) -> None:
    with pytest.raises(ConfigError, match=r"1000\.\.192000"):
        Resampler(8000, rate)


def test_wav_rate_writes_the_requested_rate_and_the_sources_duration(tmp_path: Path) -> None:
    rate, size, frames = 16000, 320, 50
    source = tone(rate, size * frames)
    payloads = [L16.encode(source[i * size : (i + 1) * size]) for i in range(frames)]
    assert {len(p) for p in payloads} == {640}  # a 16 kHz stream's 20 ms frame
    sink = WavSink()
    sink.jitterline_configure({"wav": str(tmp_path / "out.wav"), "wav_rate": 48000})
    host = PluginHost(load_entrypoints=False, plugins=[sink])

    output = run_pipeline(chunks(payloads, codec="L16", rate=rate, frame_ms=20.0), host)

    played = [f for f in output if isinstance(f, AudioFrame)]
    params, written = read_wav(tmp_path / "out.wav")
    assert params.framerate == 48000
    played_s = sum(f.duration_ms for f in played) / 1000
    assert abs(params.nframes / 48000 - played_s) <= 0.020  # within one frame
    assert abs(peak_hz(written, 48000) - 440.0) <= 1.0


def test_a_bad_wav_rate_is_refused_before_any_audio(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="to_rate=10"):
        WavSink().jitterline_configure({"wav": str(tmp_path / "x.wav"), "wav_rate": 10})

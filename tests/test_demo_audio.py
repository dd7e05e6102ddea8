"""Your own recording through the local endpoint: ``jitterline demo --audio FILE.wav``
streams the file once, at its rate and channels, and ``--wav`` gets it back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from audio_testkit import read_wav, tone, write_wav
from jitterline import AudioFrame, PipelineConfig, PluginHost, hookimpl
from jitterline.cli import EXIT_OK, EXIT_USAGE, main
from jitterline.codecs import PCMU
from jitterline.emulator import PROFILES, Emulator, WavSource
from jitterline.emulator.audio import stream_format
from jitterline.errors import ConfigError
from jitterline.live import SessionOptions, run_live
from jitterline_plugins import opus
from jitterline_plugins.opus import OPUS


def speech_like(rate: int, seconds: float, channels: int = 1) -> npt.NDArray[np.int16]:
    """A voiced-speech stand-in: a 140 Hz pulse train's harmonics, seeded noise, syllables."""
    count = int(rate * seconds)
    t = np.arange(count) / rate
    voiced = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    noise = np.random.default_rng(17).normal(0, 0.05, count)
    mono = np.rint(6000 * (voiced * envelope + noise)).astype(np.int16)
    return np.repeat(mono, channels) if channels > 1 else mono


STEADY_200 = PipelineConfig(buffer_policy="fixed", buffer_ms=200.0)
STEADY = ("--buffer-policy", "fixed", "--buffer-ms", "200")
"""A generous fixed buffer: on a loaded test machine a frame a few ms late for a 20 ms
target would be concealed, and this test is about the audio, not the buffer's sizing."""


def demo(tmp_path: Path, wav: Path, *extra: str) -> tuple[dict[str, object], Path]:
    # A template: the built-in sink outlives one main() call and names later streams apart.
    out, summary = tmp_path / "out-{stream_id}.wav", tmp_path / "s.json"
    args = ["demo", "--quiet", "--audio", str(wav), "--wav", str(out), "--json", str(summary)]
    args += STEADY
    assert main([*args, *extra]) == EXIT_OK
    frames: dict[str, object] = json.loads(summary.read_text())["frames"]
    (written,) = tmp_path.glob("out-*.wav")
    return frames, written


def check_played_whole(
    source: npt.NDArray[np.int16],
    written: npt.NDArray[np.int16],
    frames: dict[str, object],
) -> None:
    """Every frame is the source's, in order, none concealed, none missing: the endpoint
    ends the stream with a 1000 close, so the buffer drains what it holds (``unplayed`` 0)
    and the WAV is the source sample for sample."""
    assert frames["lost"] == frames["concealed"] == frames["malformed"] == 0
    assert frames["unplayed"] == 0
    assert written.size == source.size
    assert np.array_equal(written, source)


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (16000, 2)])
def test_l16_clean_gives_the_source_back_sample_for_sample(
    tmp_path: Path, rate: int, channels: int
) -> None:
    source = speech_like(rate, 0.61, channels)  # 30.5 frames: the last one is short
    wav = write_wav(tmp_path / "speech.wav", source, rate=rate, channels=channels)

    frames, out = demo(tmp_path, wav, "--profile", "clean")

    params, written = read_wav(out)
    assert (params.framerate, params.nchannels) == (rate, channels)
    assert frames["received"] == 31
    check_played_whole(source, written, frames)


def test_pcmu_clean_is_within_one_quantisation_step_per_sample(tmp_path: Path) -> None:
    source = speech_like(8000, 0.6)
    wav = write_wav(tmp_path / "speech.wav", source, rate=8000, channels=1)

    frames, out = demo(tmp_path, wav, "--profile", "clean", "--codec", "pcmu")

    _, written = read_wav(out)
    expected = PCMU.decode(PCMU.encode(source))
    check_played_whole(expected, written, frames)
    levels = np.unique(PCMU.decode_table.astype(np.int64))
    steps = np.diff(levels)
    where = np.clip(np.searchsorted(levels, written.astype(np.int64)), 0, steps.size - 1)
    error = np.abs(written.astype(np.int64) - source[: written.size])
    assert (error <= steps[where]).all()


def test_a_file_the_codec_cannot_carry_is_refused_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nine = write_wav(tmp_path / "nine.wav", np.zeros(9 * 160, np.int16), rate=8000, channels=9)
    assert main(["demo", "--quiet", "--audio", str(nine)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 to 8 channels, the audio has 9" in err[0]


@pytest.mark.parametrize(
    ("codec", "rate", "channels", "streamed"),
    [
        ("L16", 44100, 2, 44100),
        ("PCMU", 16000, 1, 16000),
        ("L16", 4000, 1, 8000),
        ("OPUS", 44100, 1, 48000),
        ("OPUS", 11025, 2, 12000),
        ("OPUS", 96000, 1, 48000),
    ],
)
def test_the_stream_keeps_the_files_rate_when_the_codec_carries_it(
    codec: str, rate: int, channels: int, streamed: int
) -> None:
    assert stream_format(codec, rate, channels) == streamed


def test_opus_refuses_more_than_two_channels() -> None:
    with pytest.raises(ConfigError, match="OPUS carries 1 to 2 channels, the audio has 3"):
        stream_format("OPUS", 48000, 3)


def test_a_wav_resampled_on_request_keeps_its_duration(tmp_path: Path) -> None:
    source = tone(44100, 44100 // 2)
    wav = WavSource(write_wav(tmp_path / "a.wav", source, rate=44100, channels=1), loop=False)
    resampling = WavSource(wav.path, loop=False, resample=True)
    frames = list(resampling.frames(sample_rate=48000, frame_ms=20.0))
    assert {f.size for f in frames[:-1]} == {960}
    assert abs(sum(f.size for f in frames) - 24000) <= 1
    with pytest.raises(ConfigError, match="44100 Hz but the stream is 48000"):
        wav.frames(sample_rate=48000, frame_ms=20.0)


class Played:
    def __init__(self) -> None:
        self.frames: list[AudioFrame] = []

    @hookimpl
    def jitterline_frame_played(self, frame: AudioFrame) -> None:
        self.frames.append(frame)


def test_a_44k1_stereo_file_streams_as_48k_opus_and_decodes(tmp_path: Path) -> None:
    source = speech_like(44100, 0.5, channels=2)
    path = write_wav(tmp_path / "s.wav", source, rate=44100, channels=2)
    rate = stream_format("OPUS", 44100, 2)
    played = Played()
    host = PluginHost(load_entrypoints=False, plugins=[opus.plugin, played])
    with Emulator(
        PROFILES["clean"],
        codec="OPUS",
        sample_rate=rate,
        channels=2,
        duration_s=0.5,
        source=WavSource(path, mono=False, loop=False, resample=True),
        encoder=OPUS.encoder(rate, 2),
        require_token=False,
    ) as emu:
        result = run_live(
            SessionOptions(url=emu.ws_url, duration_s=5.0), config=STEADY_200, host=host
        )

    assert result.outcome is None
    assert len(played.frames) >= 10  # of 25: the end of the stream cuts what is buffered
    assert {(f.sample_rate, f.channels, f.codec) for f in played.frames} == {(48000, 2, "OPUS")}
    decoded = np.concatenate([f.samples for f in played.frames if f.samples is not None])
    assert decoded.size == len(played.frames) * 960 * 2
    assert np.abs(decoded).max() > 3000  # audio, not the silence of a failed decode

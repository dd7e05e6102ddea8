"""Speech-like concealment: the pitch search, the fade, the joins at both ends of a loss,
and the WAV it gives through the whole pipeline, against silence as the counter-example."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio_testkit import chunks, read_wav, run_pipeline, tone
from jitterline import AudioFrame, PipelineConfig, PluginHost
from jitterline.codecs import L16, PCMU, builtin_codecs
from jitterline.concealment import (
    FADE_START_MS,
    PitchState,
    PlayoutDecoder,
    conceal,
    pitch_period,
    receive,
)
from jitterline.errors import ConfigError
from jitterline.frames import Samples
from jitterline_plugins.wav_sink import WavSink

EDGE_STEP_FACTOR = 1.5
"""The bound: no sample-to-sample step at a concealed frame's edges larger than 1.5 times
the largest step of the source itself (a 440 Hz tone at 0.3 of full scale: 3380 at 8 kHz,
1696 at 16 kHz). Measured: 1.0-1.3 times; silence steps by up to the tone's amplitude."""


def feed(
    state: PitchState, source: npt.NDArray[np.int16], size: int, lost: set[int]
) -> npt.NDArray[np.int16]:
    out = []
    for index in range(source.size // size):
        if index in lost:
            samples, state = conceal(state, size // state.channels)
        else:
            samples, state = receive(state, source[index * size : (index + 1) * size])
        out.append(samples)
    return np.concatenate(out)


def edge_steps(signal: npt.NDArray[np.int16], size: int, frames: list[int]) -> int:
    """The largest step across the start and the end of each frame in ``frames``."""
    steps = np.abs(np.diff(signal.astype(np.int64)))
    edges = [index * size - 1 for index in frames] + [(index + 1) * size - 1 for index in frames]
    return int(max(steps[edge] for edge in edges))


def natural_step(source: npt.NDArray[np.int16]) -> int:
    return int(np.abs(np.diff(source.astype(np.int64))).max())


# -- the pure functions ------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_pitch_period_of_a_150_hz_tone_is_its_period(rate: int) -> None:
    history = tone(rate, rate // 10, freq_hz=150.0).astype(np.float64)
    assert abs(pitch_period(history, rate) - rate / 150.0) <= 1


def test_a_history_too_short_for_the_search_is_repeated_whole() -> None:
    assert pitch_period(np.ones(30), 8000) == 30


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_a_tone_stays_continuous_across_lost_frames(rate: int) -> None:
    size = rate // 50
    source = tone(rate, size * 40)
    lost = [10, 20, 21, 30, 31, 32]
    out = feed(PitchState.empty(rate, 1), source, size, set(lost))
    assert edge_steps(out, size, lost) <= EDGE_STEP_FACTOR * natural_step(source)


def test_the_repeat_fades_out_and_is_silent_after_60_ms() -> None:
    rate, size = 8000, 80  # 10 ms frames
    source = tone(rate, size * 20, freq_hz=200.0)
    out = feed(PitchState.empty(rate, 1), source, size, set(range(10, 18))).astype(np.float64)
    levels = [np.abs(out[i * size : (i + 1) * size]).max() for i in range(10, 18)]
    full = np.abs(source).max()
    assert levels[0] >= 0.95 * full  # the first FADE_START_MS at full level
    assert all(later < earlier for earlier, later in itertools.pairwise(levels[1:6]))
    assert levels[6] == levels[7] == 0.0  # 60 ms and on: silence
    assert FADE_START_MS == 10.0


def test_a_frame_after_no_loss_is_passed_through_untouched() -> None:
    state = PitchState.empty(8000, 1)
    frame = tone(8000, 160)
    played, state = receive(state, frame)
    assert played is frame


def test_stereo_conceals_both_channels_each_with_its_own_signal() -> None:
    rate, size = 16000, 320
    left = tone(rate, size * 10)
    stereo = np.stack([left, (left // 2).astype(np.int16)], axis=1).reshape(-1)
    out = feed(PitchState.empty(rate, 2), stereo, size * 2, {5}).reshape(-1, 2)
    concealed = out[5 * size : 6 * size].astype(np.float64)
    assert np.abs(concealed[:, 0]).max() > 0.9 * np.abs(left).max()
    assert np.allclose(concealed[:, 1], concealed[:, 0] / 2, atol=2)


@settings(max_examples=60, deadline=None)
@given(
    history=st.lists(st.integers(-32768, 32767), min_size=0, max_size=600),
    rate=st.sampled_from([8000, 16000, 48000]),
    channels=st.integers(1, 2),
    count=st.integers(1, 960),
)
def test_any_history_gives_a_frame_of_the_asked_size(
    history: list[int], rate: int, channels: int, count: int
) -> None:
    samples = np.array(history[: len(history) - len(history) % channels], dtype=np.int16)
    _, state = receive(PitchState.empty(rate, channels), samples)
    out, state = conceal(state, count)
    assert out.dtype == np.int16 and out.size == count * channels and not out.flags.writeable
    after, _ = receive(state, samples)
    assert after.size == samples.size


# -- through the pipeline, into a WAV ----------------------------------------------------------


def tone_wav(
    tmp_path: Path, conceal_mode: str, *, rate: int, codec: str, lost: frozenset[int]
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16], list[AudioFrame]]:
    size = rate // 50
    source = tone(rate, size * 50)
    encoder = L16 if codec == "L16" else PCMU
    payloads = [encoder.encode(source[i * size : (i + 1) * size]) for i in range(50)]
    sink = WavSink(tmp_path / f"{conceal_mode}.wav")
    host = PluginHost(load_entrypoints=False, plugins=[sink])
    config = PipelineConfig(buffer_policy="fixed", buffer_ms=60.0, conceal=conceal_mode)  # type: ignore[arg-type]
    output = run_pipeline(
        chunks(payloads, codec=codec, rate=rate, frame_ms=20.0, drop=lost), host, config
    )
    frames = [item for item in output if isinstance(item, AudioFrame)]
    _, written = read_wav(tmp_path / f"{conceal_mode}.wav")
    return source, written, frames


@pytest.mark.parametrize(("rate", "codec"), [(8000, "L16"), (16000, "L16"), (8000, "PCMU")])
def test_speech_concealment_keeps_the_wav_continuous_across_a_lost_frame(
    tmp_path: Path, rate: int, codec: str
) -> None:
    lost = frozenset({20, 30, 31})
    size = rate // 50
    source, written, frames = tone_wav(tmp_path, "speech", rate=rate, codec=codec, lost=lost)

    assert [f.seq for f in frames if f.concealed and f.seq < 50] == sorted(lost)
    bound = EDGE_STEP_FACTOR * natural_step(source)
    assert edge_steps(written, size, sorted(lost)) <= bound
    concealed = frames[20]
    assert concealed.samples is not None
    assert concealed.payload == (L16 if codec == "L16" else PCMU).encode(concealed.samples)


def test_silence_concealment_breaks_that_bound_so_the_test_can_fail(tmp_path: Path) -> None:
    size = 160
    source, written, _ = tone_wav(
        tmp_path, "silence", rate=8000, codec="L16", lost=frozenset({20})
    )
    assert edge_steps(written, size, [20]) > EDGE_STEP_FACTOR * natural_step(source)


def test_an_unknown_concealment_is_refused_by_the_config() -> None:
    with pytest.raises(ConfigError, match="silence, repeat, speech"):
        PipelineConfig(conceal="noise")  # type: ignore[arg-type]


class _Raising:
    """A plugin's stateful codec with a bug: every decode and concealment raises."""

    name = "BROKEN"
    bytes_per_sample = 0
    silence_byte = 0

    def check(self, payload: bytes, sample_rate: int, channels: int) -> None:
        return None

    def decoder(self, sample_rate: int, channels: int) -> _Raising:
        return self

    def encoder(self, sample_rate: int, channels: int) -> _Raising:
        return self

    def decode(self, payload: bytes) -> npt.NDArray[np.int16]:
        raise RuntimeError("bug")

    def conceal(self, samples_per_channel: int, next_payload: bytes | None = None) -> Samples:
        raise RuntimeError("bug")

    def encode(self, samples: npt.ArrayLike) -> bytes:
        raise RuntimeError("bug")


def test_a_stateful_codec_that_raises_costs_the_frame_its_audio_not_the_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = builtin_codecs()
    registry.register("BROKEN", _Raising())
    playout = PlayoutDecoder(registry)
    frames = [
        AudioFrame("s", seq, seq * 20.0, "BROKEN", 8000, 2, b"x", 20.0, 0.0, playout_s=0.0)
        for seq in range(3)
    ]
    played = [playout.play(frame) for frame in frames]
    for frame in played:
        assert frame.samples is not None and frame.samples.size == 320
        assert not frame.samples.any()
    assert sum("did not decode" in r.message for r in caplog.records) == 1

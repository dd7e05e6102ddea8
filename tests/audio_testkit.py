"""Shared by the codec tests: a test tone, appfoundry chunks of it, and the whole pipeline
run over them on virtual time."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
from reactivex import Observable
from reactivex.notification import OnNext
from reactivex.testing import ReactiveTest, TestScheduler

from jitterline import AudioFrame, Message, PipelineConfig, PluginHost, Stats
from jitterline.protocols.appfoundry import audio_chunk_message
from jitterline.stages import build_pipeline

AMPLITUDE = 0.3
START_S = 1.0
FIXED_60 = PipelineConfig(buffer_policy="fixed", buffer_ms=60.0)


def tone(
    rate: int, count: int, *, freq_hz: float = 440.0, channels: int = 1
) -> npt.NDArray[np.int16]:
    """A sine at ``AMPLITUDE`` of full scale; with more channels, interleaved copies."""
    index = np.arange(count)
    mono = np.rint(AMPLITUDE * 32767 * np.sin(2 * np.pi * freq_hz * index / rate))
    return np.repeat(mono.astype(np.int16), channels)


def chunks(
    payloads: list[bytes],
    *,
    codec: str,
    rate: int,
    frame_ms: float,
    channels: int = 1,
    drop: frozenset[int] = frozenset(),
) -> list[tuple[float, str]]:
    """One ``audio_chunk`` per payload, arriving on time, except the seqs in ``drop``."""
    arrivals = []
    for seq, payload in enumerate(payloads):
        capture = 1_700_000_000.0 + seq * frame_ms / 1000
        text = audio_chunk_message(
            payload,
            seq=seq,
            capture_wall_s=capture,
            sent_wall_s=capture,
            codec=codec,
            rate=rate,
            channels=channels,
        )
        if seq not in drop:
            arrivals.append((START_S + seq * frame_ms / 1000, text))
    return arrivals


def run_pipeline(
    arrivals: list[tuple[float, str]],
    host: PluginHost,
    config: PipelineConfig = FIXED_60,
    *,
    tail_s: float = 0.1,
) -> list[AudioFrame | Stats]:
    """The default chain over ``arrivals``, ending ``tail_s`` after the last one."""
    scheduler = TestScheduler()
    records = [ReactiveTest.on_next(t, Message(text, arrival_s=t)) for t, text in arrivals]  # type: ignore[arg-type]
    end_s = arrivals[-1][0] + tail_s
    source = scheduler.create_hot_observable(*records, ReactiveTest.on_completed(end_s))  # type: ignore[arg-type]

    def create() -> Observable[AudioFrame | Stats]:
        return build_pipeline(source, scheduler=scheduler, config=config, host=host).output

    observer = scheduler.start(create, created=0.25, subscribed=0.5, disposed=end_s + 1)
    return [m.value.value for m in observer.messages if isinstance(m.value, OnNext)]


def read_wav(path: Path) -> tuple[wave._wave_params, npt.NDArray[np.int16]]:
    with wave.open(str(path), "rb") as wav:
        params = wav.getparams()
        samples = np.frombuffer(wav.readframes(params.nframes), dtype="<i2").astype(np.int16)
    return params, samples


def write_wav(path: Path, samples: npt.NDArray[np.int16], *, rate: int, channels: int) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return path

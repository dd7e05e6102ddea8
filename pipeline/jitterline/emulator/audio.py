"""What the emulator streams: a generated tone or a WAV file, cut into int16 mono frames.

A source is endless (a WAV loops at its end) because the emulator's stream is live and its
length is set by ``duration_s``, not by the audio. Frames are computed or read one at a time,
so a long file never sits in memory whole.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError
from ..frames import Samples

__all__ = ["AudioSource", "ToneSource", "WavSource", "frame_samples"]

_INT16_FULL_SCALE = 32767


@runtime_checkable
class AudioSource(Protocol):
    """An endless supply of mono int16 frames of ``frame_ms`` at ``sample_rate``.

    ``frames`` raises ``ConfigError`` when the source cannot produce that rate (no
    resampling is done: a wrong pitch would hide the mistake).
    """

    def frames(self, *, sample_rate: int, frame_ms: float) -> Iterator[Samples]: ...


def frame_samples(sample_rate: int, frame_ms: float) -> int:
    """Samples in one frame; ``ConfigError`` unless that is a positive whole number."""
    count = sample_rate * frame_ms / 1000.0
    if sample_rate <= 0 or count < 1 or not float(count).is_integer():
        raise ConfigError(
            f"frame_ms={frame_ms} at sample_rate={sample_rate} gives {count:g} samples per "
            "frame; pick values giving a whole number >= 1 (e.g. 20 ms at 8000 Hz = 160)"
        )
    return int(count)


@dataclass(frozen=True, slots=True)
class ToneSource:
    """A sine tone, phase-continuous across frames so the stream has no clicks."""

    freq_hz: float = 440.0
    amplitude: float = 0.3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.freq_hz) and self.freq_hz > 0):
            raise ConfigError(f"ToneSource freq_hz={self.freq_hz!r} must be positive, e.g. 440")
        if not (math.isfinite(self.amplitude) and 0.0 <= self.amplitude <= 1.0):
            raise ConfigError(
                f"ToneSource amplitude={self.amplitude!r} is outside 0..1 (fraction of full "
                "scale); 0.3 leaves headroom"
            )

    def frames(self, *, sample_rate: int, frame_ms: float) -> Iterator[Samples]:
        size = frame_samples(sample_rate, frame_ms)
        if self.freq_hz >= sample_rate / 2:
            raise ConfigError(
                f"ToneSource freq_hz={self.freq_hz} is at or above Nyquist ({sample_rate / 2} "
                f"Hz at sample_rate={sample_rate}); pick a lower tone"
            )
        return self._generate(size, 2.0 * math.pi * self.freq_hz / sample_rate)

    def _generate(self, size: int, step: float) -> Iterator[Samples]:
        scale = self.amplitude * _INT16_FULL_SCALE
        start = 0
        while True:
            # Phase from the absolute sample index: no drift however long the stream runs.
            index = np.arange(start, start + size, dtype=np.float64)
            yield _read_only(np.rint(scale * np.sin(step * index)).astype(np.int16))
            start += size


@dataclass(frozen=True, slots=True, init=False)
class WavSource:
    """A 16-bit PCM WAV file, mixed down to mono and looped at its end.

    The header is checked here, so a bad file fails when the emulator is configured,
    not mid-stream. ``sample_rate`` and ``channels`` describe the file.
    """

    path: Path
    sample_rate: int
    channels: int

    def __init__(self, path: str | Path) -> None:
        file_path = Path(path)
        try:
            with wave.open(str(file_path), "rb") as wav:
                params = wav.getparams()
        except (OSError, EOFError, wave.Error) as exc:
            raise ConfigError(
                f"cannot read WAV {file_path}: {exc}; give a 16-bit PCM .wav file"
            ) from exc
        if params.sampwidth != 2 or params.comptype != "NONE":
            raise ConfigError(
                f"WAV {file_path} has {params.sampwidth * 8}-bit {params.comptype} samples; "
                "only 16-bit PCM is supported, convert it (e.g. sox in.wav -b 16 out.wav)"
            )
        if params.nframes == 0:
            raise ConfigError(f"WAV {file_path} holds no audio; give a non-empty file")
        object.__setattr__(self, "path", file_path)
        object.__setattr__(self, "sample_rate", params.framerate)
        object.__setattr__(self, "channels", params.nchannels)

    def frames(self, *, sample_rate: int, frame_ms: float) -> Iterator[Samples]:
        size = frame_samples(sample_rate, frame_ms)
        if sample_rate != self.sample_rate:
            raise ConfigError(
                f"WAV {self.path} is {self.sample_rate} Hz but the stream is {sample_rate} "
                f"Hz; resample the file or pass sample_rate={self.sample_rate}"
            )
        return self._loop(size)

    def _loop(self, size: int) -> Iterator[Samples]:
        with wave.open(str(self.path), "rb") as wav:
            pending = np.empty(0, dtype=np.int16)
            while True:
                while pending.size < size:
                    chunk = self._read_mono(wav, size - pending.size)
                    if chunk.size == 0:
                        wav.rewind()
                        continue
                    pending = np.concatenate((pending, chunk))
                yield _read_only(pending[:size].copy())
                pending = pending[size:]

    def _read_mono(self, wav: wave.Wave_read, count: int) -> Samples:
        raw = np.frombuffer(wav.readframes(count), dtype="<i2")
        if self.channels == 1:
            return raw.astype(np.int16)
        usable = raw[: raw.size - raw.size % self.channels]
        mixed = usable.reshape(-1, self.channels).astype(np.int32).mean(axis=1)
        mono: Samples = np.rint(mixed).astype(np.int16)
        return mono


def _read_only(samples: Samples) -> Samples:
    samples.flags.writeable = False
    return samples

"""What the emulator streams: a generated tone or a WAV file, cut into int16 frames.

A tone is endless, and so by default is a WAV (it loops at its end), because the emulator's
stream is live and its length is set by ``duration_s``, not by the audio. A WAV played
``loop=False`` ends with the file instead, its last frame as short as the file leaves it, so
that what the receiver writes can be compared with the file sample for sample
(``jitterline demo --audio``). Frames are computed or read one at a time, so a long file
never sits in memory whole.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..codecs import OPUS_RATES
from ..errors import ConfigError
from ..frames import Samples
from ..resample import Resampler

__all__ = ["AudioSource", "ToneSource", "WavSource", "frame_samples", "stream_format"]

_INT16_FULL_SCALE = 32767
_BLOCK_FRAMES = 4096


@runtime_checkable
class AudioSource(Protocol):
    """A supply of int16 frames of ``frame_ms`` at ``sample_rate`` (mono unless the source
    says otherwise, interleaved then), endless unless the source says otherwise.

    ``frames`` raises ``ConfigError`` when the source cannot produce that rate (a
    ``WavSource`` resamples only when asked: a silent rate change would hide a mistake).
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


_PCM_RATES = (8000, 192000)  # what the appfoundry dialect carries (docs/protocols.md)
_PCM_MAX_CHANNELS = 8
_OPUS_MAX_CHANNELS = 2


def stream_format(codec: str, sample_rate: int, channels: int) -> int:
    """The rate to stream audio of ``sample_rate`` and ``channels`` with ``codec``: its own
    when the codec carries it, else the nearest one the codec does (the source is then
    resampled). ``ConfigError`` for more channels than the codec carries: mixing down
    would change what the user wanted to hear, so they choose."""
    opus = codec.strip().upper() == "OPUS"
    most = _OPUS_MAX_CHANNELS if opus else _PCM_MAX_CHANNELS
    if not 1 <= channels <= most:
        raise ConfigError(
            f"{codec} carries 1 to {most} channels, the audio has {channels}; mix it down "
            "first (e.g. sox in.wav -c 1 out.wav) or pick another codec"
        )
    if opus:
        return next((rate for rate in OPUS_RATES if rate >= sample_rate), OPUS_RATES[-1])
    low, high = _PCM_RATES
    return min(max(sample_rate, low), high)


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
    """A 16-bit PCM WAV file, mixed down to mono and looped at its end by default.

    The header is checked here, so a bad file fails when the emulator is configured,
    not mid-stream. ``sample_rate``, ``channels`` and ``nframes`` (samples per channel)
    describe the file. ``mono=False`` keeps the file's channels, interleaved
    (``output_channels`` says how many come out); ``loop=False`` ends with the file;
    ``resample=True`` converts to the rate ``frames`` asks for (soxr, the ``resample``
    extra) instead of refusing it.
    """

    path: Path
    sample_rate: int
    channels: int
    nframes: int
    mono: bool
    loop: bool
    resample: bool

    def __init__(
        self, path: str | Path, *, mono: bool = True, loop: bool = True, resample: bool = False
    ) -> None:
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
        for name, value in (
            ("path", file_path),
            ("sample_rate", params.framerate),
            ("channels", params.nchannels),
            ("nframes", params.nframes),
            ("mono", mono),
            ("loop", loop),
            ("resample", resample),
        ):
            object.__setattr__(self, name, value)

    @property
    def output_channels(self) -> int:
        return 1 if self.mono else self.channels

    @property
    def duration_s(self) -> float:
        return self.nframes / self.sample_rate

    def frames(self, *, sample_rate: int, frame_ms: float) -> Iterator[Samples]:
        size = frame_samples(sample_rate, frame_ms)
        if sample_rate == self.sample_rate:
            return self._cut(self._read(), size)
        if not self.resample:
            raise ConfigError(
                f"WAV {self.path} is {self.sample_rate} Hz but the stream is {sample_rate} "
                f"Hz; resample the file or pass sample_rate={self.sample_rate}"
            )
        resampler = Resampler(self.sample_rate, sample_rate, self.output_channels)
        return self._cut(self._resampled(resampler), size)

    def _read(self) -> Iterator[Samples]:
        """The file's audio in blocks, from the start again at its end while ``loop``."""
        with wave.open(str(self.path), "rb") as wav:
            while True:
                chunk = self._convert(wav.readframes(_BLOCK_FRAMES))
                if chunk.size:
                    yield chunk
                elif self.loop:
                    wav.rewind()
                else:
                    return

    def _resampled(self, resampler: Resampler) -> Iterator[Samples]:
        for chunk in self._read():
            yield resampler.process(chunk)
        yield resampler.flush()

    def _cut(self, blocks: Iterator[Samples], size: int) -> Iterator[Samples]:
        """Frames of ``size`` samples per channel; the last one shorter if the audio ends."""
        width = size * self.output_channels
        pending = np.empty(0, dtype=np.int16)
        for block in blocks:
            pending = np.concatenate((pending, block))
            while pending.size >= width:
                yield _read_only(pending[:width].copy())
                pending = pending[width:]
        if pending.size:
            yield _read_only(pending.copy())

    def _convert(self, raw_bytes: bytes) -> Samples:
        raw = np.frombuffer(raw_bytes, dtype="<i2").astype(np.int16)
        if self.channels == 1 or not self.mono:
            return raw
        usable = raw[: raw.size - raw.size % self.channels]
        mixed = usable.reshape(-1, self.channels).astype(np.int32).mean(axis=1)
        mono: Samples = np.rint(mixed).astype(np.int16)
        return mono


def _read_only(samples: Samples) -> Samples:
    samples.flags.writeable = False
    return samples

"""Sample-rate conversion for sinks that need another rate than the stream's (a WAV at
``--wav-rate``, a playback device), on soxr (the ``resample`` extra).

Never used inside the jitter buffer: the buffer's clock counts the sender's frames, and a
resampler's delay and rounding there would blur every timing figure. A ``Resampler`` keeps
soxr's filter state across frames, so frame edges leave no trace in the output, and
``flush`` hands out the filter's tail at the end, so the output lasts as long as the input
(to within a sample). soxr's "HQ" recipe: 20-bit precision, passband to 95 % of Nyquist.
It runs on float32 on the int16 scale and rounds half to even at the end, because soxr's
own int16 output adds dither: the same input must give the same WAV, bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ConfigError
from .frames import Samples

__all__ = ["MAX_RATE", "Resampler", "resample"]

MAX_RATE = 192_000
_MISSING = (
    "resampling needs soxr: pip install 'jitterline[resample]' (or pip install soxr), "
    "or keep the stream's rate"
)


def _soxr() -> Any:
    try:
        import soxr  # type: ignore[import-untyped]  # ships no py.typed
    except ImportError as exc:
        raise ConfigError(_MISSING) from exc
    return soxr


def _check_rate(name: str, rate: int) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int) or not 1000 <= rate <= MAX_RATE:
        raise ConfigError(f"{name}={rate!r} is outside 1000..{MAX_RATE} Hz; pick e.g. 16000")


def resample(samples: npt.ArrayLike, from_rate: int, to_rate: int, channels: int = 1) -> Samples:
    """A whole signal (interleaved int16) at another rate, in one call."""
    stream = Resampler(from_rate, to_rate, channels)
    head = stream.process(np.asarray(samples, dtype=np.int16))
    return _read_only(np.concatenate((head, stream.flush())))


class Resampler:
    """One stream's resampler: interleaved int16 frames in, interleaved int16 out."""

    def __init__(self, from_rate: int, to_rate: int, channels: int = 1) -> None:
        _check_rate("from_rate", from_rate)
        _check_rate("to_rate", to_rate)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"channels={channels!r} must be a positive integer")
        self.from_rate = from_rate
        self.to_rate = to_rate
        self.channels = channels
        self._stream = _soxr().ResampleStream(
            from_rate, to_rate, channels, dtype="float32", quality="HQ"
        )

    def process(self, samples: Samples) -> Samples:
        """The output for one frame; may be a few samples short or long of the exact ratio
        (the filter's delay), which ``flush`` evens out at the end."""
        return self._run(samples, last=False)

    def flush(self) -> Samples:
        """The filter's tail: call once, after the last frame."""
        return self._run(np.zeros(0, dtype=np.int16), last=True)

    def _run(self, samples: Samples, *, last: bool) -> Samples:
        if samples.size % self.channels:
            raise ConfigError(
                f"{samples.size} samples do not split into {self.channels} channels; "
                "pass whole interleaved sample frames"
            )
        frames = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1, self.channels)
        out = np.asarray(self._stream.resample_chunk(frames, last=last)).reshape(-1)
        return _read_only(np.clip(np.rint(out), -32768, 32767).astype(np.int16))


def _read_only(samples: Samples) -> Samples:
    samples.flags.writeable = False
    return samples

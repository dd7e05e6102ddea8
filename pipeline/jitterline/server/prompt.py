"""``serve --prompt FILE.wav``: one recorded prompt played to every caller once the stream
opens, through the same hook a bot plugin uses (``jitterline_outbound_ready``).

The WAV is read with the standard library's ``wave`` (16-bit PCM, mono or stereo mixed
down) and brought to 8 kHz once at start-up, so each call only encodes: a prompt that
cannot be played is a start-up error, not a failure per call.
"""

from __future__ import annotations

import logging
import wave
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..frames import Samples, StreamInfo
from ..hookspecs import hookimpl
from ..outbound import SAMPLE_RATE, Outbound

__all__ = ["PromptPlayer", "check_prompt_dialect", "load_prompt"]

log = logging.getLogger(__name__)

_PROMPT_DIALECTS = ("audioconnector", "twilio")
"""The dialects whose platform plays audio back (AudioHook is monitor-only)."""


def load_prompt(path: str | Path) -> Samples:
    """The WAV at ``path`` as mono int16 at 8 kHz (read-only)."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise ConfigError(
            f"--prompt {path}: cannot read it as a WAV ({exc}); give a 16-bit PCM .wav file"
        ) from None
    if width != 2:
        raise ConfigError(
            f"--prompt {path}: {8 * width}-bit samples; convert it to 16-bit PCM "
            "(sox in.wav -b 16 out.wav)"
        )
    samples = np.frombuffer(data, dtype="<i2").reshape(-1, channels)
    mono = np.rint(samples.mean(axis=1)).astype(np.int16) if channels > 1 else samples[:, 0]
    if not mono.size:
        raise ConfigError(f"--prompt {path}: the file holds no audio")
    if rate != SAMPLE_RATE:
        from ..resample import resample

        mono = resample(mono, rate, SAMPLE_RATE)
    mono = np.array(mono, dtype=np.int16)
    mono.flags.writeable = False
    return mono


def check_prompt_dialect(dialect: str) -> None:
    if dialect not in _PROMPT_DIALECTS:
        raise ConfigError(
            f"--prompt plays audio to the caller, which {dialect} does not take (AudioHook "
            f"is monitor-only); use --dialect {' or '.join(_PROMPT_DIALECTS)}"
        )


class PromptPlayer:
    """The plugin ``--prompt`` registers: ``samples`` (8 kHz mono) to every new call."""

    def __init__(self, samples: Samples) -> None:
        self.samples = samples
        self.started = 0

    @hookimpl
    def jitterline_outbound_ready(self, stream: StreamInfo, outbound: Outbound) -> None:
        self.started += 1
        playback = outbound.send(self.samples, SAMPLE_RATE)
        log.debug("stream %s: prompt %s queued", stream.stream_id, playback)

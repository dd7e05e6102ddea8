"""What plays where a frame is missing: speech-like concealment, and decoding at playout.

Silence and a plain repeat (the jitter buffer's own modes) are heard as a click or a stutter
on every lost frame. ``conceal="speech"`` follows the idea of ITU-T G.711 Appendix I:
speech is locally periodic, so the last pitch period is repeated, and the repeat fades out
the longer the loss lasts, because a steady buzz is worse than silence.

- The pitch period is the lag, between ``MIN_PITCH_MS`` and ``MAX_PITCH_MS`` (G.711 App. I:
  66-200 Hz), whose past ``CORRELATION_MS`` best match the last ones (normalised
  cross-correlation over the channels' mean).
- The synthetic signal repeats the last period from where the played audio stopped, so the
  first concealed sample continues the waveform; consecutive lost frames go on with the
  same period and phase.
- Full level for the first ``FADE_START_MS``, then down by ``FADE_STEP`` per 10 ms (per
  sample, no steps): silent after 60 ms of loss, as in Appendix I.
- The first frame received after a loss is overlap-added with the synthetic signal's
  continuation over ``overlap_samples`` (a quarter period, at least ``MIN_OVERLAP_MS``),
  so the joint back to real audio has no step either.

Simplified from Appendix I: one period is repeated for the whole loss (no growth to two and
three periods) and the history is not delayed, since the jitter buffer's delay already
hides the algorithm's look-back. The functions are pure (state in, state out) and work on
interleaved int16 audio of any channel count and rate.

``PlayoutDecoder`` applies this to one stream's frames as they leave the jitter buffer, and
decodes codecs with state across frames (``StreamCodec``: Opus) there too, in seq order,
with the codec's own concealment (or the next packet's in-band FEC) for a missing frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .codecs import Codec, FrameDecoder, StreamCodec, is_stream_codec
from .errors import CodecError
from .frames import AudioFrame, Samples, evolve
from .registry import Registry

__all__ = [
    "CORRELATION_MS",
    "FADE_START_MS",
    "FADE_STEP",
    "MAX_PITCH_MS",
    "MIN_OVERLAP_MS",
    "MIN_PITCH_MS",
    "PitchState",
    "PlayoutDecoder",
    "conceal",
    "overlap_samples",
    "pitch_period",
    "receive",
]

log = logging.getLogger(__name__)

MIN_PITCH_MS = 5.0
MAX_PITCH_MS = 15.0
CORRELATION_MS = 10.0
FADE_START_MS = 10.0
FADE_STEP = 0.2
MIN_OVERLAP_MS = 4.0
_HISTORY_MS = MAX_PITCH_MS + CORRELATION_MS + 5.0
_INT16_MIN, _INT16_MAX = -32768, 32767

_Float = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class PitchState:
    """One stream's concealment memory: the last audio played (``history``, samples x
    channels) and, during a loss, the pitch ``cycle`` being repeated (taken when the loss
    began) and how many samples per channel were synthesised so far (``position``)."""

    sample_rate: int
    channels: int
    history: _Float
    cycle: _Float
    position: int = 0

    @classmethod
    def empty(cls, sample_rate: int, channels: int) -> PitchState:
        nothing = np.zeros((0, channels))
        return cls(sample_rate, channels, nothing, nothing)

    @property
    def concealing(self) -> bool:
        return self.position > 0


def pitch_period(history: _Float, sample_rate: int) -> int:
    """The lag in samples (MIN..MAX_PITCH_MS) maximising the normalised correlation of the
    last ``CORRELATION_MS`` of ``history`` (1-D) with the same span one lag earlier.

    A history too short for the search gives its own length: repeating all there is beats
    silence, and the fade bounds what a poor guess costs.
    """
    low = max(1, round(MIN_PITCH_MS * sample_rate / 1000))
    high = round(MAX_PITCH_MS * sample_rate / 1000)
    window = round(CORRELATION_MS * sample_rate / 1000)
    if history.size < low + window:
        return int(history.size)
    high = min(high, history.size - window)
    # Index j of the correlation is the span starting at sample j, i.e. lag size - window - j.
    products = np.correlate(history, history[-window:], mode="valid")
    squares = np.concatenate(([0.0], np.cumsum(history * history)))
    energy = squares[window:] - squares[:-window]
    lags = np.arange(low, high + 1)
    starts = history.size - window - lags
    score = products[starts] / np.sqrt(np.maximum(energy[starts], 1e-9))
    return int(lags[int(np.argmax(score))])


def conceal(state: PitchState, samples_per_channel: int) -> tuple[Samples, PitchState]:
    """Samples for one missing frame (interleaved int16), and the state after it."""
    if not state.concealing:
        period = pitch_period(state.history.mean(axis=1), state.sample_rate)
        state = evolve(state, cycle=state.history[state.history.shape[0] - period :])
    synthetic = _continuation(state, samples_per_channel)
    state = evolve(state, position=state.position + samples_per_channel)
    return _to_int16(synthetic), _remember(state, synthetic)


def receive(state: PitchState, samples: Samples) -> tuple[Samples, PitchState]:
    """A frame that did arrive: after a loss, its start is overlap-added with the synthetic
    signal's continuation; its samples (changed or not) become history."""
    frame = samples.reshape(-1, state.channels).astype(np.float64)
    changed = state.concealing and frame.shape[0] > 0
    if changed:
        size = min(frame.shape[0], overlap_samples(state.cycle.shape[0], state.sample_rate))
        tail = _continuation(state, size)
        ramp = (np.arange(1, size + 1) / (size + 1))[:, None]
        frame[:size] = tail * (1.0 - ramp) + frame[:size] * ramp
    state = evolve(state, cycle=state.cycle[:0], position=0)
    return (_to_int16(frame) if changed else samples), _remember(state, frame)


def overlap_samples(period: int, sample_rate: int) -> int:
    """Length of the fade back into real audio: a quarter period, at least MIN_OVERLAP_MS."""
    return max(period // 4, round(MIN_OVERLAP_MS * sample_rate / 1000), 1)


def _continuation(state: PitchState, count: int) -> _Float:
    """``count`` samples of the repeated cycle from ``position`` on, faded."""
    period = state.cycle.shape[0]
    if period == 0:
        return np.zeros((count, state.channels))
    positions = np.arange(state.position, state.position + count)
    faded: _Float = state.cycle[positions % period] * _gain(positions, state.sample_rate)[:, None]
    return faded


def _gain(positions: npt.NDArray[np.int64], sample_rate: int) -> _Float:
    ms = positions * (1000.0 / sample_rate)
    return np.clip(1.0 - FADE_STEP * (ms - FADE_START_MS) / 10.0, 0.0, 1.0)


def _remember(state: PitchState, played: _Float) -> PitchState:
    keep = round(_HISTORY_MS * state.sample_rate / 1000)
    history = np.concatenate((state.history, played))[-keep:]
    return evolve(state, history=history)


def _to_int16(samples: _Float) -> Samples:
    out = np.clip(np.rint(samples), _INT16_MIN, _INT16_MAX).astype(np.int16).reshape(-1)
    out.flags.writeable = False
    return out


class PlayoutDecoder:
    """One stream's frames as they leave the jitter buffer, made ready to play.

    A ``StreamCodec``'s frames (Opus) are decoded here, in seq order, with one decoder per
    rate and channel count; a concealed one gets the decoder's concealment, or the FEC in
    the next frame when that one is already buffered (``arrived`` remembers the payloads
    the buffer holds, at most ``capacity_frames``). With ``speech=True`` a PCM stream's
    concealed frames get the pitch-period repeat above, re-encoded so their payload
    matches. Anything else passes unchanged.
    """

    def __init__(
        self, codecs: Registry[Codec], *, speech: bool = False, capacity_frames: int = 512
    ) -> None:
        self._codecs = codecs
        self._speech = speech
        self._capacity = capacity_frames
        self._pending: dict[int, bytes] = {}
        self._decoder: tuple[tuple[str, int, int], FrameDecoder] | None = None
        self._pitch: PitchState | None = None
        self._failed = False
        self._kinds: dict[str, tuple[Codec, StreamCodec | None]] = {}

    def _codec(self, name: str) -> tuple[Codec, StreamCodec | None]:
        """The registry's codec and, if it has state across frames, the same object as a
        ``StreamCodec``: looked up and decided once per codec name (``_kinds``, which the
        per-frame calls read first, sparing this call)."""
        codec = self._codecs.get(name)
        kind = self._kinds[name] = (codec, codec if is_stream_codec(codec) else None)
        return kind

    def arrived(self, frame: AudioFrame) -> None:
        """A frame the buffer kept: its payload may carry FEC for the one before it."""
        if (self._kinds.get(frame.codec) or self._codec(frame.codec))[1] is None:
            return
        self._pending[frame.seq] = frame.payload
        if len(self._pending) > self._capacity:
            del self._pending[min(self._pending)]

    def play(self, frame: AudioFrame) -> AudioFrame:
        codec, stateful = self._kinds.get(frame.codec) or self._codec(frame.codec)
        if stateful is not None:
            return self._play_stateful(stateful, frame)
        if self._speech and frame.samples is not None:
            return self._play_pcm(codec, frame, frame.samples)
        return frame

    def _play_stateful(self, codec: StreamCodec, frame: AudioFrame) -> AudioFrame:
        """Decode (or conceal) at playout. Whatever the codec raises costs this frame its
        audio, never the stream: a received frame that does not decode is concealed, and a
        concealment that fails plays silence; the first failure is logged."""
        self._pending.pop(frame.seq, None)
        count = round(frame.duration_ms * frame.sample_rate / 1000)
        try:
            decoder = self._decoder_for(codec, frame)
            if frame.concealed:
                samples = decoder.conceal(count, self._pending.get(frame.seq + 1))
            else:
                try:
                    samples = decoder.decode(frame.payload)
                except Exception as exc:
                    self._note_failure(frame, exc)
                    samples = decoder.conceal(count)
        except Exception as exc:
            self._note_failure(frame, exc)
            samples = np.zeros(count * frame.channels, dtype=np.int16)
            samples.flags.writeable = False
        return evolve(frame, samples=samples)

    def _decoder_for(self, codec: StreamCodec, frame: AudioFrame) -> FrameDecoder:
        key = (frame.codec.upper(), frame.sample_rate, frame.channels)
        if self._decoder is None or self._decoder[0] != key:
            self._decoder = (key, codec.decoder(frame.sample_rate, frame.channels))
        return self._decoder[1]

    def _note_failure(self, frame: AudioFrame, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            log.warning(
                "stream %s: frame %d passed the arrival check but did not decode (%s); "
                "concealed instead, and so are later ones, without another log line",
                frame.stream_id,
                frame.seq,
                exc,
                # Our own errors describe the input; anything else is a bug worth a trace.
                exc_info=None if isinstance(exc, CodecError) else exc,
            )

    def _play_pcm(self, codec: Codec, frame: AudioFrame, samples: Samples) -> AudioFrame:
        state = self._pitch
        if state is None or (state.sample_rate, state.channels) != (
            frame.sample_rate,
            frame.channels,
        ):
            state = PitchState.empty(frame.sample_rate, frame.channels)
        if frame.concealed:
            count = samples.size // frame.channels
            synthetic, self._pitch = conceal(state, count)
            return evolve(frame, samples=synthetic, payload=codec.encode(synthetic))
        played, self._pitch = receive(state, samples)
        return frame if played is samples else evolve(frame, samples=played)

"""Writes each stream's played audio to WAV files: ``--wav TEMPLATE``.

What is written is what left the jitter buffer, slot by slot: a concealed frame is the
concealment the chain made (silence by default, ``--conceal repeat|speech``, or the Opus
decoder's), and the file starts at the first played frame and ends at the last received one
(the slots the buffer conceals after the sender stopped are not a gap in the call), so
the buffer adds no padding: a lossless stream's file holds exactly the samples sent.

Layouts (``--wav-layout``): ``mono`` (the default) writes one file per stream and channel,
named by the template (see ``jitterline_plugins.paths``); ``stereo`` writes one file per
stream with its first two channels side by side, left the channel that played first
(AudioHook ``external``, Twilio ``inbound``). Channels arrive as separate streams, so the
stereo writer aligns them by playout slot: a channel starting later gets leading silence
for the slots it missed, and one channel never holds more than ``STEREO_LAG_S`` of audio
back waiting for the other (after that the other is written as silence).

``--wav-arrival`` adds a second file per stream and channel, ``NAME-arrival.wav``: the same
frames in the order they arrived, gaps closed up and nothing concealed, to hear what the
network delivered before the buffer put it in order. The hooks hand a sink only played
frames, so a frame the buffer dropped as late or duplicate is not in it.

Files stay valid whatever ends the process: the ``wave`` module patches the header after
every ``writeframes`` and its seeks flush the data to the OS, so a run cut by SIGTERM or a
dead connection leaves a readable file holding everything written so far; a normal end or
Ctrl-C closes it in ``jitterline_stream_closed``, and ``close()`` (also registered with
``atexit``) closes whatever is still open.

Frames of another rate or channel count than the file's first are skipped and counted,
since a WAV file has one format.
"""

from __future__ import annotations

import argparse
import atexit
import heapq
import logging
import wave
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from jitterline import ConfigError, hookimpl
from jitterline.frames import AudioFrame, StreamInfo
from jitterline.resample import Resampler

from .paths import StreamPaths, with_tag

__all__ = ["ARRIVAL_HORIZON_S", "STEREO_LAG_S", "WavSink", "plugin"]

log = logging.getLogger(__name__)

Layout = Literal["mono", "stereo"]
_Key = tuple[str, str]

STEREO_LAG_S = 1.0
"""How far one channel of a stereo file may run ahead of the other before the other is
written as silence: bounds the memory a stream whose second channel never comes holds."""

ARRIVAL_HORIZON_S = 2.0
"""How long the arrival-order file holds frames to sort them: a frame plays at most one
buffer target after it arrived, and the largest target allowed (``--max-buffer-ms``,
1000 ms by default) is well inside this."""


def _open(path: Path, rate: int, channels: int) -> wave.Wave_write:
    out = wave.open(str(path), "wb")  # noqa: SIM115 - closed by the owner's close()
    out.setnchannels(channels)
    out.setsampwidth(2)
    out.setframerate(rate)
    return out


def _audio(frame: AudioFrame) -> npt.NDArray[np.int16]:
    """What plays in the frame's slot: the received audio, or the concealment the chain
    put in its place (silence by default; ``--conceal repeat|speech`` or the Opus
    decoder's own)."""
    assert frame.samples is not None
    return frame.samples


@dataclass(slots=True)
class _Mono:
    """One file of one format; frames of another format are counted, not written."""

    path: Path
    wav: wave.Wave_write
    rate: int
    channels: int
    frames: int = 0
    skipped: int = 0
    held: list[npt.NDArray[np.int16]] = field(default_factory=list)
    resampler: Resampler | None = None

    @classmethod
    def create(cls, path: Path, frame: AudioFrame, rate: int | None = None) -> _Mono:
        """A file at the frame's format, or at ``rate`` through a resampler."""
        wav = _open(path, rate or frame.sample_rate, frame.channels)
        mono = cls(path, wav, *_format(frame))
        if rate is not None and rate != frame.sample_rate:
            mono.resampler = Resampler(frame.sample_rate, rate, frame.channels)
        return mono

    def _put(self, samples: npt.NDArray[np.int16]) -> None:
        if self.resampler is not None:
            samples = self.resampler.process(samples)
        self.wav.writeframes(samples.astype("<i2").tobytes())

    def write(self, frame: AudioFrame, samples: npt.NDArray[np.int16]) -> None:
        if _format(frame) != (self.rate, self.channels):
            self.skipped += 1
            return
        self.frames += 1
        if frame.concealed:  # written once a received frame follows: no padding at the end
            self.held.append(samples)
            return
        self._put(np.concatenate([*self.held, samples]))
        self.held.clear()

    def close(self) -> None:
        if self.resampler is not None:
            self.wav.writeframes(self.resampler.flush().astype("<i2").tobytes())
        self.wav.close()
        if self.skipped:
            log.warning("skipped %d frames of another format in %s", self.skipped, self.path)


def _format(frame: AudioFrame) -> tuple[int, int]:
    return frame.sample_rate, frame.channels


@dataclass(slots=True)
class _Lane:
    """One channel's samples not yet written, from absolute sample ``start``."""

    channel: str
    start: int
    pending: npt.NDArray[np.int16]
    open: bool = True
    held: list[npt.NDArray[np.int16]] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.start + len(self.pending)

    def take(self, begin: int, stop: int) -> npt.NDArray[np.int16]:
        """Samples ``[begin, stop)``, silence where this lane has none; drops them."""
        out = np.zeros(stop - begin, dtype=np.int16)
        lo, hi = max(begin, self.start), min(stop, self.end)
        if hi > lo:
            out[lo - begin : hi - begin] = self.pending[lo - self.start : hi - self.start]
        keep = max(stop, self.start) - self.start
        self.start += keep
        self.pending = self.pending[keep:]
        return out


@dataclass(slots=True)
class _Stereo:
    """Two channels of one stream interleaved by playout slot (see the module docstring)."""

    path: Path
    wav: wave.Wave_write
    rate: int
    t0_s: float
    lanes: list[_Lane] = field(default_factory=list)
    written: int = 0
    skipped: int = 0

    def write(self, frame: AudioFrame, samples: npt.NDArray[np.int16]) -> None:
        lane = next((lane for lane in self.lanes if lane.channel == frame.channel), None)
        if lane is None:
            if len(self.lanes) == 2 or _format(frame) != (self.rate, 1):
                self.skipped += 1
                return
            slot = round(((frame.playout_s or self.t0_s) - self.t0_s) * self.rate)
            start = max(slot, self.written)
            lane = _Lane(frame.channel, start, np.zeros(0, dtype=np.int16))
            self.lanes.append(lane)
        elif _format(frame) != (self.rate, 1):
            self.skipped += 1
            return
        if frame.concealed:  # written once a received frame follows: no padding at the end
            lane.held.append(samples)
            return
        lane.pending = np.concatenate([lane.pending, *lane.held, samples])
        lane.held.clear()
        self._flush(final=False)

    def close_channel(self, channel: str) -> bool:
        """Mark a channel ended; True once every channel of the file has."""
        for lane in self.lanes:
            if lane.channel == channel:
                lane.open = False
        return not any(lane.open for lane in self.lanes)

    def _flush(self, *, final: bool) -> None:
        stop = max(lane.end for lane in self.lanes)
        if not final:
            # Wait for the slower open channel (and for a second one to appear), but
            # never more than the lag bound.
            waiting = [lane.end for lane in self.lanes if lane.open]
            if len(self.lanes) < 2:
                waiting.append(self.written)
            stop = max(min(waiting, default=stop), stop - round(STEREO_LAG_S * self.rate))
        if stop <= self.written:
            return
        left, right = (lane.take(self.written, stop) for lane in (*self.lanes, _silence())[:2])
        self.wav.writeframes(np.column_stack([left, right]).astype("<i2").tobytes())
        self.written = stop

    def close(self) -> None:
        self._flush(final=True)
        self.wav.close()
        if self.skipped:
            log.warning(
                "skipped %d frames (a third channel or another format) in %s",
                self.skipped,
                self.path,
            )


def _silence() -> _Lane:
    return _Lane("", 0, np.zeros(0, dtype=np.int16), open=False)


@dataclass(slots=True)
class _Arrivals:
    """Played frames re-sorted into arrival order within ``ARRIVAL_HORIZON_S``."""

    file: _Mono
    heap: list[tuple[float, int, AudioFrame]] = field(default_factory=list)

    def add(self, frame: AudioFrame) -> None:
        if frame.concealed:
            return
        heapq.heappush(self.heap, (frame.arrival_s, frame.seq, frame))
        horizon_s = (frame.playout_s or frame.arrival_s) - ARRIVAL_HORIZON_S
        while self.heap and self.heap[0][0] <= horizon_s:
            self._write(heapq.heappop(self.heap)[2])

    def close(self) -> None:
        while self.heap:
            self._write(heapq.heappop(self.heap)[2])
        self.file.close()

    def _write(self, frame: AudioFrame) -> None:
        assert frame.samples is not None
        self.file.write(frame, frame.samples)


class WavSink:
    """Per-stream WAV files, kept under ``StreamInfo.key`` (stereo: under the stream id);
    no template means no files."""

    def __init__(
        self,
        template: str | Path | None = None,
        *,
        layout: Layout = "mono",
        arrival: bool = False,
    ) -> None:
        self.paths = None if template is None else StreamPaths(str(template), "--wav")
        self.layout: Layout = layout
        self.arrival = arrival
        self.rate: int | None = None
        self.written: dict[_Key, Path] = {}
        self._mono: dict[_Key, _Mono] = {}
        self._stereo: dict[str, _Stereo] = {}
        self._arrivals: dict[_Key, _Arrivals] = {}
        atexit.register(self.close)

    @hookimpl
    def jitterline_add_options(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("WAV export (plugin wav_sink)")
        group.add_argument(
            "--wav",
            metavar="TEMPLATE",
            help="write each stream's played audio to a WAV file; the path may use "
            "{stream_id}, {call_id}, {channel} (one file per stream and channel)",
        )
        group.add_argument(
            "--wav-layout",
            choices=["mono", "stereo"],
            default="mono",
            help="mono: a file per channel (default); stereo: a stream's two channels "
            "in one file, left the first to play",
        )
        group.add_argument(
            "--wav-arrival",
            action="store_true",
            help="also write NAME-arrival.wav: the received frames in arrival order",
        )
        group.add_argument(
            "--wav-rate",
            type=int,
            metavar="HZ",
            help="write the WAV at HZ, resampled (mono layout; needs soxr: "
            "pip install 'jitterline[resample]')",
        )

    @hookimpl
    def jitterline_configure(self, options: Mapping[str, Any]) -> None:
        if "wav" not in options:
            return
        template = options["wav"]
        self.paths = None if template is None else StreamPaths(str(template), "--wav")
        self.layout = options.get("wav_layout") or "mono"
        self.arrival = bool(options.get("wav_arrival"))
        self.rate = options.get("wav_rate")
        if self.rate is not None:
            Resampler(8000, self.rate)  # refuses a bad rate or a missing soxr before audio
            if self.layout == "stereo":
                raise ConfigError("--wav-rate works with --wav-layout mono; drop one of them")
        if self.arrival and self.layout == "stereo":
            raise ConfigError(
                "--wav-arrival writes one file per channel and cannot go with "
                "--wav-layout stereo; drop one of them"
            )

    @hookimpl
    def jitterline_frame_played(self, frame: AudioFrame, stream: StreamInfo) -> None:
        if self.paths is None or frame.samples is None:
            return
        samples = _audio(frame)
        if self.layout == "stereo":
            self._stereo_file(frame, stream).write(frame, samples)
            return
        mono = self._mono.get(stream.key)
        if mono is None:
            path = self.paths.path(stream)
            mono = self._mono[stream.key] = _Mono.create(path, frame, self.rate)
        mono.write(frame, samples)
        if self.arrival:
            arrivals = self._arrivals.get(stream.key)
            if arrivals is None:
                arrivals = _Arrivals(_Mono.create(with_tag(mono.path, "arrival"), frame))
                self._arrivals[stream.key] = arrivals
            arrivals.add(frame)

    @hookimpl
    def jitterline_stream_closed(self, stream: StreamInfo) -> None:
        mono = self._mono.pop(stream.key, None)
        if mono is not None:
            mono.close()
            self.written[stream.key] = mono.path
            log.info("wrote %d frames of %s to %s", mono.frames, stream.key, mono.path)
        arrivals = self._arrivals.pop(stream.key, None)
        if arrivals is not None:
            arrivals.close()
        stereo = self._stereo.get(stream.stream_id)
        if stereo is not None and stereo.close_channel(stream.channel):
            del self._stereo[stream.stream_id]
            stereo.close()
            self.written[(stream.stream_id, "")] = stereo.path

    def close(self) -> None:
        """Close every open file (the run is ending): each stays a valid WAV."""
        for key, mono in list(self._mono.items()):
            mono.close()
            self.written[key] = mono.path
        for arrivals in self._arrivals.values():
            arrivals.close()
        for stream_id, stereo in list(self._stereo.items()):
            stereo.close()
            self.written[(stream_id, "")] = stereo.path
        self._mono.clear()
        self._arrivals.clear()
        self._stereo.clear()

    def _stereo_file(self, frame: AudioFrame, stream: StreamInfo) -> _Stereo:
        stereo = self._stereo.get(stream.stream_id)
        if stereo is None:
            assert self.paths is not None
            path = self.paths.path(
                StreamInfo(stream.stream_id, "", stream.dialect, stream.session_id, stream.call_id)
            )
            start_s = frame.playout_s or 0.0
            stereo = _Stereo(path, _open(path, frame.sample_rate, 2), frame.sample_rate, start_s)
            self._stereo[stream.stream_id] = stereo
        return stereo


plugin = WavSink()

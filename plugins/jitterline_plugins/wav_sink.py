"""Writes the played audio (concealment included) to a WAV file: ``--wav PATH``.

The file is opened on the first played frame, whose rate and channel count it takes,
and closed when the stream closes. Frames of another rate or channel count are skipped
and counted, since a WAV file has one format.
"""

from __future__ import annotations

import argparse
import logging
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jitterline import hookimpl
from jitterline.frames import AudioFrame

__all__ = ["WavSink", "plugin"]

log = logging.getLogger(__name__)


class WavSink:
    """One WAV file per process run; no path configured means the sink does nothing."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.frames_written = 0
        self.frames_skipped = 0
        self._wav: wave.Wave_write | None = None
        self._format: tuple[int, int] | None = None

    @hookimpl
    def jitterline_add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--wav", type=Path, metavar="PATH", help="write the played audio to a WAV file"
        )

    @hookimpl
    def jitterline_configure(self, options: Mapping[str, Any]) -> None:
        if "wav" in options:  # each CLI run says; no --wav means no file this run
            self.path = None if options["wav"] is None else Path(options["wav"])

    @hookimpl
    def jitterline_frame_played(self, frame: AudioFrame) -> None:
        if self.path is None or frame.samples is None:
            return
        fmt = (frame.sample_rate, frame.channels)
        if self._wav is None:
            self._wav = wave.open(str(self.path), "wb")  # noqa: SIM115 - closed in stream_closed
            self._wav.setnchannels(frame.channels)
            self._wav.setsampwidth(2)
            self._wav.setframerate(frame.sample_rate)
            self._format = fmt
        if fmt != self._format:
            self.frames_skipped += 1
            return
        self._wav.writeframes(frame.samples.astype("<i2").tobytes())
        self.frames_written += 1

    @hookimpl
    def jitterline_stream_closed(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None
            log.info("wrote %d frames to %s", self.frames_written, self.path)


plugin = WavSink()

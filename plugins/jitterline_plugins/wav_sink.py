"""Writes each stream's played audio (concealment included) to a WAV file: ``--wav TEMPLATE``.

One file per stream and channel, named by a template with ``{stream_id}``, ``{call_id}``,
``{channel}``, ``{session_id}``, ``{participant_id}`` and ``{dialect}`` (ids are made safe
for a file name). A path without placeholders serves a single-stream command as is; when a
second stream or channel opens, it and every later one get ``-{stream_id}-{channel}``
before the suffix, so two streams never share a file.

A file is opened on its stream's first played frame, whose rate and channel count it
takes, and closed (header fixed) when that stream closes. Frames of another format are
skipped and counted, since a WAV file has one format. ``--wav-rate HZ`` writes at that rate
instead, through one ``jitterline.resample.Resampler`` per file (the ``resample`` extra).
"""

from __future__ import annotations

import argparse
import logging
import re
import wave
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jitterline import ConfigError, hookimpl
from jitterline.frames import AudioFrame, Samples, StreamInfo
from jitterline.resample import Resampler

__all__ = ["WavSink", "plugin"]

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_FIELDS = ("stream_id", "call_id", "channel", "session_id", "participant_id", "dialect")


@dataclass(slots=True)
class _File:
    path: Path
    wav: wave.Wave_write
    rate: int
    channels: int
    frames: int = 0
    skipped: int = 0
    resampler: Resampler | None = None

    def write(self, samples: Samples) -> None:
        if self.resampler is not None:
            samples = self.resampler.process(samples)
        self.wav.writeframes(samples.astype("<i2").tobytes())

    def close(self) -> None:
        if self.resampler is not None:
            self.wav.writeframes(self.resampler.flush().astype("<i2").tobytes())
        self.wav.close()


class WavSink:
    """Per-stream WAV files, kept under ``StreamInfo.key``; no template means no files."""

    def __init__(self, template: str | Path | None = None) -> None:
        self.template = None if template is None else str(template)
        self.rate: int | None = None
        self.written: dict[tuple[str, str], Path] = {}
        self._files: dict[tuple[str, str], _File] = {}
        self._streams = 0

    @hookimpl
    def jitterline_add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--wav",
            metavar="TEMPLATE",
            help="write each stream's played audio to a WAV file; the path may use "
            "{stream_id}, {call_id}, {channel} (one file per stream and channel)",
        )
        parser.add_argument(
            "--wav-rate",
            type=int,
            metavar="HZ",
            help="resample the --wav files to HZ (needs soxr: the resample extra)",
        )

    @hookimpl
    def jitterline_configure(self, options: Mapping[str, Any]) -> None:
        if "wav" not in options:
            return
        self.template = None if options["wav"] is None else str(options["wav"])
        if self.template is not None:
            _check_template(self.template)
        self.rate = options.get("wav_rate")
        if self.rate is not None:
            Resampler(8000, self.rate)  # refuses a bad rate or a missing soxr before audio flows

    @hookimpl
    def jitterline_frame_played(self, frame: AudioFrame, stream: StreamInfo) -> None:
        if self.template is None or frame.samples is None:
            return
        out = self._files.get(stream.key)
        if out is None:
            out = self._open(stream, frame)
        if (frame.sample_rate, frame.channels) != (out.rate, out.channels):
            out.skipped += 1
            return
        out.write(frame.samples)
        out.frames += 1

    @hookimpl
    def jitterline_stream_closed(self, stream: StreamInfo) -> None:
        out = self._files.pop(stream.key, None)
        if out is None:
            return
        out.close()
        self.written[stream.key] = out.path
        log.info("wrote %d frames of stream %s to %s", out.frames, stream.stream_id, out.path)
        if out.skipped:
            log.warning("skipped %d frames of another format in %s", out.skipped, out.path)

    def close(self) -> None:
        """Close every open file (the run is ending): each stays a valid WAV."""
        for key in list(self._files):
            out = self._files.pop(key)
            out.close()
            self.written[key] = out.path

    def _open(self, stream: StreamInfo, frame: AudioFrame) -> _File:
        assert self.template is not None
        self._streams += 1
        path = Path(_render(self.template, stream, first=self._streams == 1))
        wav = wave.open(str(path), "wb")  # noqa: SIM115 - closed in stream_closed or close()
        wav.setnchannels(frame.channels)
        wav.setsampwidth(2)
        rate = self.rate or frame.sample_rate
        wav.setframerate(rate)
        out = _File(path, wav, frame.sample_rate, frame.channels)
        if rate != frame.sample_rate:
            out.resampler = Resampler(frame.sample_rate, rate, frame.channels)
        self._files[stream.key] = out
        return out


def _check_template(template: str) -> None:
    """Refuse a template that cannot work before any audio flows, in the user's terms."""
    try:
        template.format(**dict.fromkeys(_FIELDS, "x"))
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"--wav {template!r} has an unknown placeholder ({exc}); use "
            + ", ".join("{" + name + "}" for name in _FIELDS)
        ) from exc
    parent = Path(template).parent
    if "{" not in str(parent) and not parent.is_dir():
        raise ConfigError(
            f"--wav {template!r}: directory {str(parent)!r} does not exist; create it first"
        )


def _render(template: str, stream: StreamInfo, *, first: bool) -> str:
    values = {name: _UNSAFE.sub("_", str(getattr(stream, name))) or "-" for name in _FIELDS}
    if "{" in template:
        return template.format(**values)
    if first:
        return template
    path = Path(template)
    tag = "-".join(part for part in (values["stream_id"], values["channel"]) if part != "-")
    return str(path.with_name(f"{path.stem}-{tag}{path.suffix}"))


plugin = WavSink()

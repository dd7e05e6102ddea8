"""Talk time per stream and channel, one CSV row each as the stream closes.

Written only against jitterline's public API (``jitterline`` and ``jitterline.frames``),
the way every plugin should be:

- state per stream under ``stream.key``, created in ``jitterline_stream_opened`` and
  dropped in ``jitterline_stream_closed``, so memory stays bounded however many calls
  one process serves;
- hooks that return at once: the per-frame work is one comparison, and the only I/O (one
  short append per stream) happens when a stream closes;
- options through ``jitterline_add_options`` / ``jitterline_configure``, prefixed with the
  plugin's name; with no option given the plugin does nothing.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jitterline import AudioFrame, ConfigError, Stats, StreamInfo, hookimpl

__all__ = ["THRESHOLD", "TalkTime", "plugin"]

THRESHOLD = 32768 * 10 ** (-40 / 20)
"""-40 dBFS: a frame louder than this at its peak counts as talking."""

FIELDS = ("stream_id", "channel", "frames", "talking_share")


@dataclass
class Talk:
    """What the sink knows of one stream."""

    frames: int = 0
    talking: int = 0


class TalkTime:
    """Counts talking frames per stream; ``rows`` keeps what it wrote, for tests."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.streams: dict[tuple[str, str], Talk] = {}
        self.rows: list[dict[str, Any]] = []

    @hookimpl
    def jitterline_add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--talktime-csv", metavar="FILE", help="append each stream's talk time to FILE"
        )

    @hookimpl
    def jitterline_configure(self, options: Mapping[str, Any]) -> None:
        if options.get("talktime_csv") is None:
            return
        path = Path(options["talktime_csv"])
        if not path.parent.is_dir():
            raise ConfigError(f"--talktime-csv {str(path)!r}: create {str(path.parent)!r} first")
        self.path = path

    @hookimpl
    def jitterline_stream_opened(self, stream: StreamInfo) -> None:
        self.streams[stream.key] = Talk()

    @hookimpl
    def jitterline_frame_played(self, frame: AudioFrame, stream: StreamInfo) -> None:
        talk = self.streams.setdefault(stream.key, Talk())
        talk.frames += 1
        if frame.samples is not None and not frame.concealed:
            talk.talking += int(np.abs(frame.samples).max(initial=0) > THRESHOLD)

    @hookimpl
    def jitterline_stream_closed(self, stats: Stats, stream: StreamInfo) -> None:
        talk = self.streams.pop(stream.key, Talk())  # forget it: memory stays bounded
        row = {
            "stream_id": stream.stream_id,
            "channel": stream.channel,
            "frames": talk.frames,
            "talking_share": round(talk.talking / max(talk.frames, 1), 3),
        }
        self.rows.append(row)
        if self.path is not None:
            new = not self.path.exists()
            with self.path.open("a", newline="", encoding="utf-8") as out:
                writer = csv.DictWriter(out, FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)


plugin = TalkTime()

"""File names for per-stream output: one path template, one file per stream and channel.

A template may use ``{stream_id}``, ``{call_id}``, ``{channel}``, ``{session_id}``,
``{participant_id}`` and ``{dialect}`` (ids are made safe for a file name). A path without
placeholders serves a single-stream command as is; when a second stream or channel asks
for a file, it and every later one get ``-{stream_id}-{channel}`` before the suffix, so two
streams never share a file. The WAV and report sinks share this rule so that ``--wav`` and
``--report`` name their files alike.
"""

from __future__ import annotations

import re
from pathlib import Path

from jitterline import ConfigError
from jitterline.frames import StreamInfo

__all__ = ["FIELDS", "StreamPaths", "with_tag"]

FIELDS = ("stream_id", "call_id", "channel", "session_id", "participant_id", "dialect")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class StreamPaths:
    """Renders ``template`` per stream; ``option`` names the flag in error messages."""

    def __init__(self, template: str, option: str) -> None:
        self.template = template
        self._check(option)
        self._issued = 0

    def path(self, stream: StreamInfo) -> Path:
        """The next file's path; call once per file, in the order files are opened."""
        self._issued += 1
        values = {name: _UNSAFE.sub("_", str(getattr(stream, name))) or "-" for name in FIELDS}
        if "{" in self.template:
            return Path(self.template.format(**values))
        path = Path(self.template)
        if self._issued == 1:
            return path
        tag = "-".join(part for part in (values["stream_id"], values["channel"]) if part != "-")
        return with_tag(path, tag)

    def _check(self, option: str) -> None:
        """Refuse a template that cannot work before any audio flows, in the user's terms."""
        try:
            self.template.format(**dict.fromkeys(FIELDS, "x"))
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"{option} {self.template!r} has an unknown placeholder ({exc}); use "
                + ", ".join("{" + name + "}" for name in FIELDS)
            ) from exc
        parent = Path(self.template).parent
        if "{" not in str(parent) and not parent.is_dir():
            raise ConfigError(
                f"{option} {self.template!r}: directory {str(parent)!r} does not exist; "
                "create it first"
            )


def with_tag(path: Path, tag: str) -> Path:
    """``calls/a.wav`` tagged ``arrival`` is ``calls/a-arrival.wav``."""
    return path.with_name(f"{path.stem}-{tag}{path.suffix}")

"""A served session's end: one summary per channel, to the log and to ``--json FILE``.

Each summary is the demo's JSON document (``summary.summarize``) plus a ``stream`` object
naming the session, the call and the channel, so that one JSON Lines file of a busy server
can be grouped by call. Lines, not an array: a server never "ends" the file, and a reader
(``jq``, a log shipper) can follow it while sessions keep ending. Each line goes to the
file in one ``write`` on a descriptor opened with ``O_APPEND``, so the workers of
``serve --workers`` (and separate ``serve`` processes) can share one file: the kernel
appends each line whole, never interleaved with another process's.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from ..diagnosis import Diagnosis
from ..emulator.players import Histogram
from ..errors import ConfigError
from ..frames import AudioFrame, Stats
from ..summary import summarize

__all__ = ["SessionIdentity", "SinkLag", "SummaryWriter", "session_summary"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionIdentity:
    """Who a served session was: ``session_id`` (AudioHook session, Twilio ``streamSid``),
    ``call_id`` (``conversationId`` / ``callSid``), ``participant_id`` (AudioHook)."""

    session_id: str
    dialect: str
    call_id: str = ""
    participant_id: str = ""
    probe: bool = False


def session_summary(
    stats: Stats,
    diagnosis: Diagnosis,
    identity: SessionIdentity,
    *,
    run: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``summarize`` of one channel's final snapshot, with the ``stream`` object added."""
    document = summarize(stats, diagnosis, run=run)
    document["stream"] = {
        "session_id": identity.session_id,
        "call_id": identity.call_id,
        "participant_id": identity.participant_id,
        "channel": stats.channel,
        "dialect": identity.dialect,
        "probe": identity.probe,
    }
    return document


_LAG_QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


class SinkLag:
    """How long a served session's played frames took to reach the sinks, per channel.

    ``arrival_to_sink_ms``: from the message's arrival (``arrival_s``, stamped when the
    shell handed it over) to the moment the sinks had the frame: the buffer's deliberate
    delay plus whatever the runtime added. ``ready_to_sink_ms``: from the moment the frame
    could play (it had arrived and its playout slot, ``playout_s``, had come) to that
    moment: the runtime's own delay alone (a late timer, a busy loop), which grows when
    one process holds more sessions than it can serve; a frame that arrived after its slot
    and was still played counts from its arrival, so a late sender does not show as a slow
    server. Concealed frames never arrived and are left out. Measured on the pipeline's
    output, right after the sink hooks ran, so no stage changes; memory is bounded
    (``Histogram`` keeps buckets, not values)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._channels: dict[str, tuple[Histogram, Histogram]] = {}

    def played(self, frame: AudioFrame) -> None:
        if frame.concealed or frame.playout_s is None:
            return
        now_s = self._clock()
        histograms = self._channels.get(frame.channel)
        if histograms is None:
            histograms = self._channels[frame.channel] = (Histogram(), Histogram())
        histograms[0].add((now_s - frame.arrival_s) * 1000.0)
        histograms[1].add((now_s - max(frame.arrival_s, frame.playout_s)) * 1000.0)

    def figures(self, channel: str) -> dict[str, dict[str, float | int | None]]:
        """The summary's ``stream.arrival_to_sink_ms`` and ``stream.ready_to_sink_ms``."""
        arrival, ready = self._channels.get(channel, (Histogram(), Histogram()))
        return {"arrival_to_sink_ms": _quantiles(arrival), "ready_to_sink_ms": _quantiles(ready)}


def _quantiles(histogram: Histogram) -> dict[str, float | int | None]:
    shown: dict[str, float | int | None] = {"count": histogram.count}
    for name, q in _LAG_QUANTILES:
        value = histogram.quantile_ms(q)
        shown[name] = None if value is None else round(value, 3)
    shown["max"] = round(histogram.max_ms, 3) if histogram.count else None
    return shown


class SummaryWriter:
    """Appends one compact JSON line per summary to a file (``-``: stdout), flushed per
    line so a follower sees each session as it ends; every line also goes to the log."""

    def __init__(self, target: str | None) -> None:
        self._lock = threading.Lock()
        self._stream: TextIO | None = None
        self._fd: int | None = None
        if target == "-":
            self._stream = sys.stdout
        elif target is not None:
            try:
                self._fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                raise ConfigError(
                    f"cannot open {target!r} for the session summaries ({exc.strerror}); "
                    "pick a writable path, or - for stdout"
                ) from None
        self.lines = 0

    def write(self, summary: Mapping[str, Any]) -> None:
        line = json.dumps(summary, allow_nan=False, separators=(",", ":"))
        log.info("session summary %s", line)
        with self._lock:
            if self._fd is not None:
                _write_whole(self._fd, (line + "\n").encode("utf-8"))
            elif self._stream is not None:
                self._stream.write(line + "\n")
                self._stream.flush()
            else:
                return
            self.lines += 1

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
            self._fd = None
            self._stream = None


def _write_whole(fd: int, data: bytes) -> None:
    """One ``write`` for a regular file (the kernel does not split it); the loop only
    guards against a short write, e.g. on a full disk, which then raises."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

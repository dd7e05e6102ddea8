"""The live status of a running stream: in place on a terminal, log lines otherwise.

On a terminal the status is a small table that rich's ``Live`` redraws in place (rich is
the optional ``live`` extra). Without rich, or when the output is not a terminal (a pipe,
a CI log), it degrades to one line every ``every_s`` seconds: redrawing escape codes in a
log file help no one. The status goes to stderr, so stdout stays clean for the JSON
summary.

Both displays are fed from two threads (snapshots from the pipeline's scheduler,
connection events from the session) and only keep the latest of each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from .frames import ConnectionEvent, Stats

__all__ = ["PlainStatus", "RichStatus", "StatusDisplay", "make_status", "status_fields"]

log = logging.getLogger(__name__)

_STATES = {
    "connecting": "connecting",
    "connected": "connected",
    "disconnected": "disconnected",
    "reconnect_scheduled": "reconnecting",
    "rate_limited": "rate limited",
    "closed": "closed",
}


class StatusDisplay(Protocol):
    """What the live runner drives; ``stop`` must be safe to call twice."""

    def start(self) -> None: ...

    def stats(self, stats: Stats) -> None: ...

    def event(self, event: ConnectionEvent) -> None: ...

    def stop(self) -> None: ...


def _ms(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f} ms"


def status_fields(state: str, stats: Stats | None) -> list[tuple[str, str]]:
    """The (label, value) pairs both displays show, in order."""
    if stats is None:
        return [("state", state), ("frames", "waiting for audio")]
    frames, latency, buffer = stats.frames, stats.latency, stats.buffer
    rtt = stats.rtt_ms
    return [
        ("state", state),
        ("frames", f"{frames.received} received, {frames.played} played"),
        ("loss", f"{frames.loss_rate:.1%}"),
        ("late", f"{frames.late_rate:.1%}"),
        ("jitter", _ms(latency.jitter_rfc3550_ms)),
        ("delay p95", _ms(latency.delay_p95_ms)),
        ("buffer", _ms(buffer.target_ms, 0)),
        ("rtt", _ms(rtt)),
        ("reconnects", str(stats.connection.reconnects)),
    ]


class _Latest:
    """The newest snapshot and connection state, shared between threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = "starting"
        self.snapshot: Stats | None = None

    def fields(self) -> list[tuple[str, str]]:
        with self.lock:
            return status_fields(self.state, self.snapshot)


class PlainStatus:
    """One ``label value | ...`` line on ``stream`` at most every ``every_s`` seconds.

    ``clock`` decides when a line is due; it is the run's clock, read only on updates.
    """

    def __init__(
        self, stream: TextIO, *, every_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stream = stream
        self._every_s = every_s
        self._clock = clock
        self._latest = _Latest()
        self._last_s: float | None = None

    def start(self) -> None:
        self._last_s = None  # the first snapshot prints at once

    def stats(self, stats: Stats) -> None:
        with self._latest.lock:
            self._latest.snapshot = stats
        now = self._clock()
        if self._last_s is not None and now - self._last_s < self._every_s:
            return
        self._last_s = now
        line = " | ".join(f"{label} {value}" for label, value in self._latest.fields())
        self._stream.write(f"jitterline: {line}\n")
        self._stream.flush()

    def event(self, event: ConnectionEvent) -> None:
        if event.kind in _STATES:
            with self._latest.lock:
                self._latest.state = _STATES[event.kind]

    def stop(self) -> None:
        self._last_s = None


class RichStatus:
    """A two-column table redrawn in place by rich's ``Live`` on the given terminal."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self._latest = _Latest()
        self._live: Any = Live(
            self._render(), console=Console(file=stream), refresh_per_second=4, transient=False
        )
        self._running = False

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(title="jitterline", show_header=False, box=None, padding=(0, 2))
        table.add_column(style="bold cyan")
        table.add_column()
        for label, value in self._latest.fields():
            table.add_row(label, value)
        return table

    def start(self) -> None:
        self._live.start()
        self._running = True

    def stats(self, stats: Stats) -> None:
        with self._latest.lock:
            self._latest.snapshot = stats
        self._refresh()

    def event(self, event: ConnectionEvent) -> None:
        if event.kind in _STATES:
            with self._latest.lock:
                self._latest.state = _STATES[event.kind]
            self._refresh()

    def _refresh(self) -> None:
        if self._running:
            self._live.update(self._render())

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._live.update(self._render())
            self._live.stop()


def make_status(stream: TextIO, *, every_s: float = 2.0) -> StatusDisplay:
    """Rich's live table when ``stream`` is a terminal and rich is installed, else lines."""
    if stream.isatty():
        try:
            return RichStatus(stream)
        except ImportError:  # the optional "live" extra is missing: plain lines do the job
            log.warning(
                "rich is not installed: status as plain lines; "
                "pip install 'jitterline[live]' for the live table"
            )
    return PlainStatus(stream, every_s=every_s)

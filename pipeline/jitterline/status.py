"""The live status of a running stream: a table redrawn in place on a terminal, one compact
line otherwise, and the log lines of the run on the same stream.

On a terminal the status is a table that rich's ``Live`` redraws in place (rich is the
optional ``live`` extra). Without rich, or when the output is not a terminal (a pipe, a CI
log), it degrades to one line of at most ``LINE_COLUMNS`` (100) characters every
``every_s`` seconds: redrawing escape codes in a log file help no one. Everything goes to
stderr, so stdout stays clean for the JSON summary.

The view shows what the final verdict will rest on, not a different measure: the verdict
the pipeline's diagnosis gives now (from the ``jitterline_stats`` hook), the server delay
and the latency it weighs, lost and concealed frames, the time elapsed and left, the
connection's attempt n of N with the countdown to the next try, and the last alerts.

Log lines (alerts, "attempt 3/10 failed") go through ``StatusLogHandler``: while rich's
table is up they are printed by its console, which puts them above the table where they
stay; written to the terminal directly, the next redraw would erase them.

The displays are fed from two threads (snapshots and hooks on the runtime's loop thread,
the main thread starting and stopping), so the shared view is guarded by a lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from .hookspecs import hookimpl

if TYPE_CHECKING:
    from .diagnosis import Diagnosis
    from .frames import Alert, ConnectionEvent, Stats, StreamInfo

__all__ = [
    "LINE_COLUMNS",
    "STABLE_AFTER_S",
    "AttemptLog",
    "LiveView",
    "PlainStatus",
    "RichStatus",
    "StatusDisplay",
    "StatusLogHandler",
    "make_status",
    "status_fields",
    "status_line",
]

log = logging.getLogger(__name__)

LINE_COLUMNS = 100
"""The plain status line never gets wider: it must not wrap in a default-sized terminal."""

STABLE_AFTER_S = 10.0
"""The session's default: a connection that stayed up this long resets its attempt count
(and so the ``n`` of "attempt n/N")."""

ALERTS_SHOWN = 3

_STATES = {
    "connecting": "connecting",
    "connected": "connected",
    "disconnected": "disconnected",
    "reconnect_scheduled": "waiting to reconnect",
    "rate_limited": "rate limited",
    "closed": "closed",
}

_VERDICT_STYLES = {
    "healthy": "bold green",
    "no_audio": "bold yellow",
    "insufficient_data": "yellow",
}
"""Any other verdict names a problem: bold red."""


class StatusDisplay(Protocol):
    """What the live runner drives; ``stop`` must be safe to call twice."""

    def start(self) -> None: ...

    def stats(self, stats: Stats) -> None: ...

    def event(self, event: ConnectionEvent) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Shown:
    """One consistent copy of the view, taken under the lock, rendered outside it."""

    state: str
    attempt: int
    max_attempts: int | None
    retry_in_s: float | None
    elapsed_s: float | None
    duration_s: float | None
    stats: Stats | None
    diagnosis: Diagnosis | None
    alerts: tuple[str, ...]


class LiveView:
    """The newest snapshot, diagnosis, connection state and alerts of a run.

    Registered as a plugin for the run (``jitterline_stats`` gives the diagnosis the final
    verdict will be computed the same way from; ``jitterline_alert`` the alerts), and fed
    the session's connection events by the runner. ``clock`` (monotonic seconds) only
    turns the scheduled reconnect into a countdown.
    """

    def __init__(
        self,
        *,
        max_attempts: int | None = None,
        duration_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.max_attempts = max_attempts
        self.duration_s = duration_s
        self._state = "starting"
        self._streak = 0
        self._up_since_s: float | None = None
        self._retry_at: float | None = None
        self._stats: Stats | None = None
        self._diagnosis: Diagnosis | None = None
        self._alerts: deque[str] = deque(maxlen=ALERTS_SHOWN)

    @hookimpl
    def jitterline_stats(self, stats: Stats, diagnosis: Diagnosis, stream: StreamInfo) -> None:
        with self._lock:
            self._stats, self._diagnosis = stats, diagnosis

    @hookimpl
    def jitterline_alert(self, alert: Alert, stream: StreamInfo | None) -> None:
        with self._lock:
            self._alerts.append(f"{alert.at_s:6.1f} s  {alert.kind}: {alert.message}")

    def stats(self, stats: Stats) -> None:
        with self._lock:
            self._stats = stats

    def event(self, event: ConnectionEvent) -> None:
        """Track the state and the attempt streak as the session counts it: attempts since
        the last connection that stayed up ``STABLE_AFTER_S``."""
        with self._lock:
            self._state = _STATES.get(event.kind, self._state)
            if event.kind == "connecting":
                self._streak += 1
                self._retry_at = None
            elif event.kind == "connected":
                self._up_since_s = event.at_s
            elif event.kind == "disconnected":
                up_since, self._up_since_s = self._up_since_s, None
                if up_since is not None and event.at_s - up_since >= STABLE_AFTER_S:
                    self._streak = 0
            elif event.kind == "reconnect_scheduled" and event.delay_s is not None:
                self._retry_at = self._clock() + event.delay_s
            elif event.kind == "closed":
                self._retry_at = None

    @property
    def streak(self) -> int:
        with self._lock:
            return self._streak

    def shown(self) -> _Shown:
        with self._lock:
            retry_in = None if self._retry_at is None else max(0.0, self._retry_at - self._clock())
            return _Shown(
                state=self._state,
                attempt=self._streak,
                max_attempts=self.max_attempts,
                retry_in_s=retry_in,
                elapsed_s=None if self._stats is None else self._stats.at_s,
                duration_s=self.duration_s,
                stats=self._stats,
                diagnosis=self._diagnosis,
                alerts=tuple(self._alerts),
            )


# -- what is shown ---------------------------------------------------------------------------


def _ms(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f} ms"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _s(seconds: float) -> str:
    """A wait as a person reads it: tenths below 10 s, whole seconds above."""
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def _of(attempt: int, max_attempts: int | None) -> str:
    return f"{attempt}/{max_attempts}" if max_attempts else str(attempt)


def _connection(view: _Shown) -> str:
    attempt = _of(view.attempt, view.max_attempts)
    if view.retry_in_s is not None:
        return f"attempt {attempt} failed; next in {_s(view.retry_in_s)}"
    if view.state in ("connecting", "connected"):
        return f"{view.state} {attempt}"
    return view.state


def _time(view: _Shown) -> str:
    if view.elapsed_s is None:
        return "-"
    if view.duration_s is None:
        return f"{view.elapsed_s:.1f} s"
    left = max(0.0, view.duration_s - view.elapsed_s)
    return f"{view.elapsed_s:.1f} s of {view.duration_s:.0f} s ({left:.0f} s left)"


def _server_ms(view: _Shown) -> float | None:
    return None if view.diagnosis is None else view.diagnosis.evidence.get("server_ms")


def _verdict(view: _Shown) -> str:
    if view.diagnosis is None:
        return "waiting for audio"
    return view.diagnosis.verdict


def status_fields(view: _Shown) -> list[tuple[str, str]]:
    """The (label, value) rows of the table, in order."""
    rows = [("verdict", _verdict(view)), ("time", _time(view)), ("connection", _connection(view))]
    stats = view.stats
    if stats is not None:
        frames, latency = stats.frames, stats.latency
        rows += [
            ("frames", f"{frames.received} received, {frames.played} played"),
            ("lost", f"{frames.lost} ({frames.loss_rate:.1%}), {frames.concealed} concealed"),
            ("late", f"{frames.late} ({frames.late_rate:.1%})"),
            ("jitter", _ms(latency.jitter_rfc3550_ms, 1) + " (RFC 3550)"),
            ("server delay", _ms(_server_ms(view))),
            ("latency", _ms(latency.latency_p50_ms) + " (p50, capture to arrival)"),
            ("buffer", _ms(stats.buffer.target_ms)),
            ("rtt", _ms(stats.rtt_ms, 1)),
        ]
    rows += [("alert", text) for text in view.alerts]
    return rows


def status_line(view: _Shown) -> str:
    """The compact form of the same measures: one line of at most ``LINE_COLUMNS``."""
    elapsed = "-" if view.elapsed_s is None else f"{view.elapsed_s:.0f}"
    duration = "" if view.duration_s is None else f"/{view.duration_s:.0f}"
    parts = [f"{elapsed}{duration} s {_verdict(view)}", _connection(view)]
    stats = view.stats
    if stats is not None:
        frames = stats.frames
        parts += [
            f"lost {frames.lost} concealed {frames.concealed}",
            f"server {_number(_server_ms(view))}, latency {_ms(stats.latency.latency_p50_ms)}",
        ]
    line = "jitterline " + ", ".join(parts)
    return line if len(line) <= LINE_COLUMNS else line[: LINE_COLUMNS - 3] + "..."


# -- log lines through the display -------------------------------------------------------------


class StatusLogHandler(logging.Handler):
    """Writes log lines to ``stream``, or through ``route``'s printer while one is set (rich's
    console while its live table is up)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._printer: Callable[[str], None] | None = None

    def route(self, printer: Callable[[str], None] | None) -> None:
        self.acquire()
        try:
            self._printer = printer
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if self._printer is not None:
                self._printer(text)
            else:
                self._stream.write(text + "\n")
                self._stream.flush()
        except Exception:
            self.handleError(record)


class AttemptLog:
    """One log line per failed attempt, "attempt 5/10 failed (...); next in 8 s", and one when
    a connection comes up after failures; then the events go on to ``display``."""

    def __init__(self, view: LiveView, display: StatusDisplay | None) -> None:
        self._view = view
        self._display = display
        self._failed = False
        self._up = False

    def start(self) -> None:
        if self._display is not None:
            self._display.start()

    def stats(self, stats: Stats) -> None:
        self._view.stats(stats)
        if self._display is not None:
            self._display.stats(stats)

    def event(self, event: ConnectionEvent) -> None:
        self._view.event(event)
        attempt = _of(self._view.streak, self._view.max_attempts)
        delay_s = event.delay_s or 0.0
        if event.kind == "reconnect_scheduled" and self._up:
            self._up = False
            log.warning("connection lost (%s); reconnecting in %s", event.reason, _s(delay_s))
        elif event.kind == "reconnect_scheduled":
            self._failed = True
            log.warning("attempt %s failed (%s); next in %s", attempt, event.reason, _s(delay_s))
        elif event.kind == "connected":
            self._up = True
            if self._failed:
                self._failed = False
                log.warning("connected on attempt %s", attempt)
        if self._display is not None:
            self._display.event(event)

    def stop(self) -> None:
        if self._display is not None:
            self._display.stop()


# -- the two displays --------------------------------------------------------------------------


class PlainStatus:
    """``status_line`` on ``stream`` at most every ``every_s`` seconds.

    ``clock`` decides when a line is due; it is the run's clock, read only on updates.
    """

    def __init__(
        self,
        stream: TextIO,
        view: LiveView,
        *,
        every_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._view = view
        self._every_s = every_s
        self._clock = clock
        self._last_s: float | None = None

    def start(self) -> None:
        self._last_s = None  # the first snapshot prints at once

    def stats(self, stats: Stats) -> None:
        now = self._clock()
        if self._last_s is not None and now - self._last_s < self._every_s:
            return
        self._last_s = now
        self._stream.write(status_line(self._view.shown()) + "\n")
        self._stream.flush()

    def event(self, event: ConnectionEvent) -> None:
        """Connection changes are logged (``AttemptLog``); the next line shows the state."""

    def stop(self) -> None:
        self._last_s = None


class RichStatus:
    """The table, redrawn in place by rich's ``Live`` on the given terminal; log lines are
    printed above it through ``handler`` while it is up."""

    def __init__(self, stream: TextIO, view: LiveView, handler: StatusLogHandler | None) -> None:
        from rich.console import Console
        from rich.live import Live

        self._view = view
        self._handler = handler
        self._console = Console(file=stream, stderr=True)
        self._live: Any = Live(
            get_renderable=self._render,
            console=self._console,
            refresh_per_second=4,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=True,
        )
        self._running = False

    def _render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table(show_header=False, box=None, padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column(no_wrap=True, overflow="ellipsis", max_width=self._value_columns())
        for label, value in status_fields(self._view.shown()):
            style = _VERDICT_STYLES.get(value, "bold red") if label == "verdict" else ""
            if label == "verdict" and value == "waiting for audio":
                style = "dim"
            table.add_row(label, Text(value, style=style))
        return table

    def _value_columns(self) -> int:
        """Rows stop short of the terminal's width: a full-width last row leaves the cursor
        at the margin, where the ``^C`` the terminal echoes wraps a line and the next
        redraw, one line off, leaves a copy of the table's first row behind."""
        return max(20, self._console.width - len("server delay") - 12)

    def _print(self, text: str) -> None:
        self._console.print(text, markup=False, highlight=False, soft_wrap=True)

    def start(self) -> None:
        self._live.start()
        self._running = True
        if self._handler is not None:
            self._handler.route(self._print)

    def stats(self, stats: Stats) -> None:
        """Redrawn by ``Live`` four times a second from the view."""

    def event(self, event: ConnectionEvent) -> None:
        if self._running:
            self._live.refresh()

    def stop(self) -> None:
        if self._running:
            self._running = False
            if self._handler is not None:
                self._handler.route(None)
            self._live.refresh()
            self._live.stop()


def make_status(
    stream: TextIO,
    view: LiveView,
    *,
    handler: StatusLogHandler | None = None,
    every_s: float = 2.0,
) -> StatusDisplay:
    """Rich's live table when ``stream`` is a terminal and rich is installed, else lines."""
    if stream.isatty():
        try:
            return RichStatus(stream, view, handler)
        except ImportError:  # the optional "live" extra is missing: plain lines do the job
            log.warning(
                "rich is not installed: status as plain lines; "
                "pip install 'jitterline[live]' for the live table"
            )
    return PlainStatus(stream, view, every_s=every_s)

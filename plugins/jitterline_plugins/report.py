"""A picture of what happened on a call: ``jitterline report CAPTURE -o report.html`` and
``--report PATH`` at the end of a run.

Needs matplotlib (``pip install 'jitterline[report]'``); without it ``report`` fails with
one line saying so and ``--report`` is skipped with one warning (the stream matters more).

One page per stream and channel (file names as ``--wav`` names them, see
``jitterline_plugins.paths``): how late frames arrived over time (relative delay p50/p95
and RFC 3550 jitter), what the jitter buffer aimed for, what went wrong each second (lost,
late, concealed frames) with reconnections marked, the spread of the gaps between the
arrivals of consecutive sequence numbers (of played frames: sinks are not handed the
frames the buffer dropped as late), and the diagnosis in words with the numbers behind
it. The format
follows the suffix: ``.png``, ``.pdf``, ``.svg``, or ``.html`` (the picture embedded with
the diagnosis as text, one file to attach to a ticket).

What it keeps per stream is bounded: one row per snapshot (thinned to every other one past
``MAX_POINTS``), a fixed-bin histogram of inter-arrival gaps, and reconnect times. Drawing
takes a second or more, so live it happens on a worker thread of its own after the stream
closed, never on the loop that carries the audio; ``close()`` waits for it.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import html
import io
import logging
import queue
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from jitterline import (
    AudioFrame,
    ConfigError,
    ConnectionEvent,
    Diagnosis,
    PluginHost,
    Stats,
    hookimpl,
)
from jitterline.capture import read_capture
from jitterline.frames import StreamInfo
from jitterline.live import replay

from .paths import StreamPaths

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["MAX_POINTS", "Collector", "ReportSink", "StreamRecord", "plugin", "render"]

log = logging.getLogger(__name__)

MAX_POINTS = 20_000
"""Snapshots kept per stream before thinning: 5.5 hours at one a second."""

_GAP_BIN_MS = 5.0
_GAP_EDGES_MS = np.arange(-100.0, 301.0, _GAP_BIN_MS)
"""Gaps below -100 ms or above 300 ms land in the first or last bin."""
_FORMATS = (".html", ".png", ".pdf", ".svg")
_MISSING = "the report needs matplotlib: pip install 'jitterline[report]'"


@dataclass(slots=True)
class StreamRecord:
    """Everything a stream's page is drawn from; bounded whatever the call's length."""

    stream: StreamInfo
    snapshots: list[Stats] = field(default_factory=list)
    gaps: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(len(_GAP_EDGES_MS) + 1, dtype=np.int64)
    )
    reconnects_s: list[float] = field(default_factory=list)
    final: tuple[Stats, Diagnosis] | None = None
    _last: tuple[int, float] | None = None

    def frame(self, frame: AudioFrame) -> None:
        """The gap to the previous sequence number's arrival, for the histogram."""
        if frame.concealed:
            return
        last, self._last = self._last, (frame.seq, frame.arrival_s)
        if last is not None and frame.seq == last[0] + 1:
            gap_ms = (frame.arrival_s - last[1]) * 1000.0
            self.gaps[np.searchsorted(_GAP_EDGES_MS, gap_ms, side="right")] += 1

    def snapshot(self, stats: Stats) -> None:
        self.snapshots.append(stats)
        if len(self.snapshots) > MAX_POINTS:
            self.snapshots = self.snapshots[::2]


class Collector:
    """The hooks that fill one ``StreamRecord`` per stream; ``done`` gets each finished
    one (the caller decides whether to draw it now or on a thread)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], StreamRecord] = {}
        self.finished: list[StreamRecord] = []
        self._reconnects: dict[str, list[float]] = {}

    def _record(self, stream: StreamInfo) -> StreamRecord:
        record = self.records.get(stream.key)
        if record is None:
            record = self.records[stream.key] = StreamRecord(stream)
        record.stream = stream
        return record

    @hookimpl
    def jitterline_stream_opened(self, stream: StreamInfo) -> None:
        self._record(stream)

    @hookimpl
    def jitterline_frame_played(self, frame: AudioFrame, stream: StreamInfo) -> None:
        self._record(stream).frame(frame)

    @hookimpl
    def jitterline_stats(self, stats: Stats, stream: StreamInfo) -> None:
        self._record(stream).snapshot(stats)

    @hookimpl
    def jitterline_connection_event(self, event: ConnectionEvent, stream: StreamInfo) -> None:
        if event.kind == "connected" and event.attempt > 1:
            self._reconnects.setdefault(stream.stream_id, []).append(event.at_s)

    @hookimpl
    def jitterline_stream_closed(
        self, stats: Stats, diagnosis: Diagnosis, stream: StreamInfo
    ) -> None:
        record = self.records.pop(stream.key, None) or StreamRecord(stream)
        record.final = (stats, diagnosis)
        record.reconnects_s = list(self._reconnects.get(stream.stream_id, []))
        self.done(record)

    def done(self, record: StreamRecord) -> None:
        self.finished.append(record)


class ReportSink(Collector):
    """``--report PATH``: draws each stream's page on a worker thread once it closed."""

    extra = "report"
    requires = ("matplotlib",)

    def __init__(self, template: str | Path | None = None) -> None:
        super().__init__()
        self.paths = None if template is None else StreamPaths(str(template), "--report")
        self.written: list[Path] = []
        self.dropped = 0
        self._queue: queue.Queue[tuple[StreamRecord, Path] | None] = queue.Queue(8)
        self._thread: threading.Thread | None = None

    @hookimpl
    def jitterline_add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument_group("report (plugin report)").add_argument(
            "--report",
            metavar="PATH",
            help="at the end, draw each stream's delay, jitter, buffer and losses to PATH "
            "(.html, .png, .pdf, .svg; may use {stream_id}, {channel})",
        )

    @hookimpl
    def jitterline_configure(self, options: Mapping[str, Any]) -> None:
        if "report" not in options:
            return
        self.paths = None
        if options["report"] is None:
            return
        _check_suffix(str(options["report"]))
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            log.warning("--report is skipped: %s", _MISSING)
            return
        self.paths = StreamPaths(str(options["report"]), "--report")

    @hookimpl
    def jitterline_register_commands(
        self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
    ) -> None:
        command = subparsers.add_parser(
            "report",
            help="draw a capture's delay, jitter, buffer and losses (HTML, PNG, PDF)",
            description="Replay a --record capture and draw, per stream and channel, how\n"
            "late frames arrived, what the jitter buffer did, what was lost or late,\n"
            "and the diagnosis in words.",
            epilog="examples:\n  jitterline demo --profile wifi --record wifi.jsonl\n"
            "  jitterline report wifi.jsonl -o wifi.html\n",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_argument("capture", help="a JSON Lines file written by --record")
        command.add_argument(
            "-o", "--output", metavar="PATH", help="report file (default: CAPTURE.html)"
        )
        command.set_defaults(handler=report_command)

    def done(self, record: StreamRecord) -> None:
        if self.paths is None:
            return
        path = self.paths.path(record.stream)
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="jitterline-report", daemon=True
            )
            self._thread.start()
            atexit.register(self.close)
        try:
            self._queue.put_nowait((record, path))
        except queue.Full:
            self.dropped += 1
            log.warning("report for %s skipped: %d pages are still being drawn", path, 8)

    def close(self, timeout_s: float = 60.0) -> None:
        """Wait for the pages being drawn, then stop the worker (also at exit: the
        worker is a daemon so that nothing else can keep the process alive)."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._thread = None
        atexit.unregister(self.close)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            record, path = item
            try:
                render(record, path)
            except Exception:
                log.exception("report %s could not be drawn", path)
                continue
            self.written.append(path)
            log.info("report written to %s", path)


def report_command(args: argparse.Namespace, host: PluginHost) -> int:
    """``jitterline report CAPTURE [-o PATH]``: replay with only the collector, then draw."""
    _need_matplotlib()
    capture = Path(args.capture)
    output = str(args.output or capture.with_suffix(".html"))
    _check_suffix(output)
    paths = StreamPaths(output, "-o")
    collector = Collector()
    replay(capture, host=PluginHost(plugins=[collector]))
    reconnects = _capture_reconnects(capture)
    for record in collector.finished:
        record.reconnects_s = reconnects
        path = paths.path(record.stream)
        render(record, path)
        print(f"report written to {path}", file=sys.stderr)
    return 0


def _capture_reconnects(path: Path) -> list[float]:
    """A replay has no live connection: its reconnections are in the capture's events."""
    _, records = read_capture(path)
    return [
        r.at_s
        for r in records
        if isinstance(r, ConnectionEvent) and r.kind == "connected" and r.attempt > 1
    ]


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(_MISSING) from None


def _check_suffix(path: str) -> None:
    if Path(path).suffix.lower() not in _FORMATS:
        raise ConfigError(
            f"report {path!r}: the suffix picks the format; use one of {', '.join(_FORMATS)}"
        )


# -- drawing --------------------------------------------------------------------------------

_COLORS = {"lost": "#d62728", "late": "#ff7f0e", "concealed": "#9467bd"}


def render(record: StreamRecord, path: Path) -> None:
    """Draw one stream's page to ``path`` (format from the suffix). Uses the
    object-oriented API on the Agg canvas only, so it is safe off the main thread."""
    figure = _figure(record)
    if path.suffix.lower() != ".html":
        figure.savefig(path, dpi=110)
        return
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110)
    path.write_text(_html(record, base64.b64encode(png.getvalue()).decode()), encoding="utf-8")


def _figure(record: StreamRecord) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(14, 9.5), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(3, 3, width_ratios=[2.2, 2.2, 1.6])
    delay = figure.add_subplot(grid[0, :2])
    buffer = figure.add_subplot(grid[1, :2], sharex=delay)
    problems = figure.add_subplot(grid[2, :2], sharex=delay)
    gaps = figure.add_subplot(grid[0, 2])
    words = figure.add_subplot(grid[1:, 2])
    series = _series(record.snapshots)
    figure.suptitle(_title(record), fontsize=14, fontweight="bold")
    _delay_panel(delay, series)
    _buffer_panel(buffer, series)
    _problem_panel(problems, series)
    for axes in (delay, buffer, problems):
        for at_s in record.reconnects_s:
            axes.axvline(at_s, color="black", linestyle="--", linewidth=1)
        axes.grid(alpha=0.3)
    if record.reconnects_s:
        problems.plot([], [], color="black", linestyle="--", label="reconnected")
        problems.legend(loc="upper left", fontsize=8, ncols=4)
    _gap_panel(gaps, record.gaps)
    _words_panel(words, record)
    return figure


def _series(snapshots: Sequence[Stats]) -> dict[str, npt.NDArray[np.float64]]:
    def column(values: Sequence[float | None]) -> npt.NDArray[np.float64]:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def per_second(values: Sequence[int]) -> npt.NDArray[np.float64]:
        return np.diff(np.array([0, *values], dtype=np.float64)).clip(min=0)

    return {
        "t": column([s.at_s for s in snapshots]),
        "p50": column([s.latency.delay_p50_ms for s in snapshots]),
        "p95": column([s.latency.delay_p95_ms for s in snapshots]),
        "jitter": column([s.latency.jitter_rfc3550_ms for s in snapshots]),
        "target": column([s.buffer.target_ms for s in snapshots]),
        "level": column([s.buffer.level_ms for s in snapshots]),
        "lost": per_second([s.frames.lost for s in snapshots]),
        "late": per_second([s.frames.late for s in snapshots]),
        "concealed": per_second([s.frames.concealed for s in snapshots]),
    }


def _headroom(axes: Axes, *columns: npt.NDArray[np.float64]) -> None:
    """Zero at the bottom, room for the legend at the top, whatever the data."""
    top = max((float(np.nanmax(c)) for c in columns if np.isfinite(c).any()), default=1.0)
    axes.set_ylim(0, max(top, 1.0) * 1.3)


def _delay_panel(axes: Axes, s: Mapping[str, npt.NDArray[np.float64]]) -> None:
    axes.set_title(
        "How late frames arrive (0 = the least-delayed frame; higher = later)",
        loc="left",
        fontsize=10,
    )
    axes.fill_between(s["t"], s["p50"], s["p95"], color="#1f77b4", alpha=0.15)
    axes.plot(s["t"], s["p50"], color="#1f77b4", marker=".", label="delay, median (p50)")
    axes.plot(s["t"], s["p95"], color="#1f77b4", linestyle=":", label="delay, 95% of frames (p95)")
    axes.plot(s["t"], s["jitter"], color="#2ca02c", marker=".", label="jitter (RFC 3550)")
    axes.set_ylabel("milliseconds")
    _headroom(axes, s["p95"], s["jitter"])
    axes.legend(loc="upper left", fontsize=8, ncols=3)


def _buffer_panel(axes: Axes, s: Mapping[str, npt.NDArray[np.float64]]) -> None:
    axes.set_title(
        "Jitter buffer: the delay it adds so that late frames still play in time",
        loc="left",
        fontsize=10,
    )
    axes.step(s["t"], s["target"], where="post", color="#8c564b", label="target delay")
    # The last snapshot is taken as the stream ends, with the buffer already emptied.
    axes.plot(
        s["t"][:-1],
        s["level"][:-1],
        color="#8c564b",
        alpha=0.4,
        marker=".",
        label="audio held at the snapshot",
    )
    axes.set_ylabel("milliseconds")
    _headroom(axes, s["target"], s["level"])
    axes.legend(loc="upper left", fontsize=8, ncols=2)


def _problem_panel(axes: Axes, s: Mapping[str, npt.NDArray[np.float64]]) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.set_title(
        "What went wrong, frames per snapshot (about one a second)", loc="left", fontsize=10
    )
    width = 0.25
    for offset, name, text in (
        (-width, "lost", "lost (never arrived)"),
        (0.0, "late", "late (arrived after its turn)"),
        (width, "concealed", "concealed (filled in)"),
    ):
        axes.bar(s["t"] + offset, s[name], width=width, color=_COLORS[name], label=text)
    axes.set_ylabel("frames")
    axes.set_xlabel("seconds since the stream started")
    axes.set_xlim(left=0)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not any(s[name].any() for name in _COLORS):
        axes.text(
            0.5,
            0.5,
            "no lost, late or concealed frames",
            transform=axes.transAxes,
            ha="center",
            va="center",
            color="gray",
        )
    _headroom(axes, s["lost"], s["late"], s["concealed"])
    axes.legend(loc="upper left", fontsize=8, ncols=4)


def _gap_panel(axes: Axes, counts: npt.NDArray[np.int64]) -> None:
    axes.set_title("Time from one frame's arrival to the next's", loc="left", fontsize=10)
    first, last = _GAP_EDGES_MS[0], _GAP_EDGES_MS[-1]
    centers = np.concatenate(
        [[first - _GAP_BIN_MS / 2], _GAP_EDGES_MS[:-1] + _GAP_BIN_MS / 2, [last + _GAP_BIN_MS / 2]]
    )
    axes.bar(centers, counts, width=_GAP_BIN_MS, color="#17becf")
    axes.axvline(20.0, color="black", linestyle=":", linewidth=1, label="steady: 20 ms")
    seen = np.flatnonzero(counts)
    if len(seen):
        lo, hi = centers[seen[0]], centers[seen[-1]]
        axes.set_xlim(min(lo - 10, -20.0), max(hi + 10, 80.0))
    axes.set_xlabel("ms (below 0: overtook the frame before)")
    axes.set_ylabel("frames")
    axes.legend(fontsize=8)


def _words_panel(axes: Axes, record: StreamRecord) -> None:
    import textwrap

    axes.axis("off")
    lines = _diagnosis_lines(record)
    text = "\n".join(textwrap.fill(line, 46) if line else "" for line in lines)
    axes.text(
        0.0,
        1.0,
        text,
        va="top",
        ha="left",
        fontsize=10,
        family="DejaVu Sans",
        transform=axes.transAxes,
        wrap=True,
    )


def _title(record: StreamRecord) -> str:
    stream = record.stream
    name = stream.stream_id + (f" / {stream.channel}" if stream.channel else "")
    verdict = record.final[1].verdict.replace("_", " ") if record.final else "no data"
    return f"jitterline report: stream {name} ({stream.dialect or 'unknown dialect'}): {verdict}"


def _diagnosis_lines(record: StreamRecord) -> list[str]:
    if record.final is None:
        return ["The stream ended before any snapshot."]
    stats, diagnosis = record.final
    f, latency = stats.frames, stats.latency
    reconnects = max(len(record.reconnects_s), stats.connection.reconnects)

    def ms(value: float | None) -> str:
        return "not measured" if value is None else f"{value:.0f} ms"

    return [
        f"VERDICT: {diagnosis.verdict.replace('_', ' ').upper()}",
        "",
        diagnosis.summary,
        "",
        f"What to do: {diagnosis.action}",
        "",
        "THE NUMBERS",
        f"Duration: {stats.at_s:.1f} s, frames received: {f.received}",
        f"Played: {f.played}, lost: {f.lost} ({f.loss_rate:.1%}), "
        f"late: {f.late} ({f.late_rate:.1%}), concealed: {f.concealed}",
        f"Jitter (RFC 3550): {latency.jitter_rfc3550_ms:.1f} ms",
        f"Delay p50 / p95: {ms(latency.delay_p50_ms)} / {ms(latency.delay_p95_ms)}",
        f"Round-trip time: {ms(stats.rtt_ms)}",
        f"Buffer target at the end: {stats.buffer.target_ms:.0f} ms "
        f"({stats.buffer.policy or 'policy unknown'})",
        f"Reconnections: {reconnects}",
        "",
        "HOW TO READ THIS PAGE",
        "Audio comes in frames of 20 ms. On a good link each arrives 20 ms after the one "
        "before, the delay lines stay low and flat, and the bottom panel is empty. The "
        "jitter buffer waits a little (its target) so that frames arriving late can still "
        "play in order; dashed lines mark reconnections.",
    ]


def _html(record: StreamRecord, png_base64: str) -> str:
    lines = _diagnosis_lines(record)
    body = "".join(f"<p>{html.escape(line)}</p>" for line in lines if line)
    title = html.escape(_title(record))
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title>"
        "<style>body{font-family:sans-serif;max-width:1600px;margin:2em auto}"
        "img{width:100%}</style></head><body>"
        f"<h1>{title}</h1>{body}"
        f'<img alt="{title}" src="data:image/png;base64,{png_base64}">'
        "</body></html>\n"
    )


plugin = ReportSink()

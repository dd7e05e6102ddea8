"""Prometheus metrics of every stream, on an HTTP exporter: ``--metrics-port PORT``.

Needs prometheus-client (``pip install 'jitterline[metrics]'``); without it the run goes
on without metrics, after one line saying so.

Series (``dialect`` on all but plugin failures, so a dashboard splits AudioHook from Twilio)::

    jitterline_frames_total{outcome}          played, late, duplicate, overflow, malformed,
                                              unplayed, discarded: each received frame once
    jitterline_frames_lost_total              sequence numbers never received
    jitterline_frames_concealed_total         frames synthesised in their place
    jitterline_reconnects_total               successful reconnections
    jitterline_plugin_failures_total          plugins that started failing (the first
                                              failure per plugin and hook raises an alert)
    jitterline_jitter_ms                      histogram: RFC 3550 jitter, per stream per snapshot
    jitterline_delay_ms                       histogram: relative delay p95, idem
    jitterline_rtt_ms                         histogram: RTT, idem, where measured
    jitterline_active_sessions                gauge: connections open now
    jitterline_active_streams                 gauge: streams (channels) open now
    jitterline_streams_by_verdict{verdict}    gauge: open streams per diagnosis verdict
    jitterline_buffer_target_ms{stream,channel}  gauge: each stream's buffer target

Why these labels: every label value multiplies the series Prometheus keeps. ``dialect``,
``outcome`` and ``verdict`` take a handful of values, so the counters and histograms stay
a fixed set whatever the traffic. A ``stream`` label would grow without bound over a day
of calls, so it is on one gauge only, for at most ``--metrics-streams`` (default 50)
streams open at once, and each stream's series is removed when it closes: the series
count is bounded by that cap, not by the number of calls. Streams beyond it are in the
aggregates only.

Work is per snapshot (once a second per stream), never per frame: counters advance by the
difference between a stream's snapshots. The exporter is prometheus-client's own HTTP
server thread, bound to 127.0.0.1 unless ``--metrics-host`` says otherwise.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from jitterline import Alert, Diagnosis, FrameCounts, Stats, hookimpl
from jitterline.frames import StreamInfo

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["DEFAULT_STREAM_SERIES", "MetricsSink", "plugin"]

log = logging.getLogger(__name__)

DEFAULT_STREAM_SERIES = 50
OUTCOMES = ("played", "late", "duplicate", "overflow", "malformed", "discarded", "unplayed")
VERDICTS = ("healthy", "network_jitter", "server_delay", "client_buffering", "loss")
_MS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000)


class _Series:
    """The metric objects, in one registry of their own (a fresh one per sink, so two
    sinks or two tests never share counts)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry: CollectorRegistry = CollectorRegistry()
        r, d = self.registry, ["dialect"]
        self.frames: Counter = Counter(
            "jitterline_frames", "Received frames by outcome", [*d, "outcome"], registry=r
        )
        self.lost: Counter = Counter(
            "jitterline_frames_lost", "Frames never received", d, registry=r
        )
        self.concealed: Counter = Counter(
            "jitterline_frames_concealed", "Frames synthesised for missing ones", d, registry=r
        )
        self.reconnects: Counter = Counter(
            "jitterline_reconnects", "Successful reconnections", d, registry=r
        )
        self.plugin_failures: Counter = Counter(
            "jitterline_plugin_failures", "Plugins that started failing", registry=r
        )
        self.jitter: Histogram = self._ms("jitter", "RFC 3550 jitter per stream snapshot")
        self.delay: Histogram = self._ms("delay", "Relative delay p95 per stream snapshot")
        self.rtt: Histogram = self._ms("rtt", "Round-trip time per stream snapshot")
        self.active: Gauge = Gauge("jitterline_active_streams", "Open streams", d, registry=r)
        self.sessions: Gauge = Gauge(
            "jitterline_active_sessions", "Open connections", d, registry=r
        )
        self.verdicts: Gauge = Gauge(
            "jitterline_streams_by_verdict", "Open streams by verdict", [*d, "verdict"], registry=r
        )
        self.target: Gauge = Gauge(
            "jitterline_buffer_target_ms",
            "Buffer target of the first streams (see --metrics-streams)",
            [*d, "stream", "channel"],
            registry=r,
        )

    def _ms(self, name: str, text: str) -> Histogram:
        from prometheus_client import Histogram

        return Histogram(
            f"jitterline_{name}_ms", text, ["dialect"], buckets=_MS_BUCKETS, registry=self.registry
        )


@dataclass(slots=True)
class _Stream:
    """What the sink remembers of one open stream: its last counters and verdict."""

    dialect: str
    frames: FrameCounts = field(default_factory=FrameCounts)
    verdict: str = ""
    labelled: bool = False


class MetricsSink:
    """Per-stream deltas into process-wide series; ``port`` is where it serves once
    started (None: not exporting, and the hooks do nothing)."""

    extra = "metrics"
    requires = ("prometheus_client",)

    def __init__(self, *, stream_series: int = DEFAULT_STREAM_SERIES) -> None:
        self.stream_series = stream_series
        self.series: _Series | None = None
        self.port: int | None = None
        self._server: Any = None
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._reconnects: dict[str, tuple[int, int]] = {}
        self._labelled = 0

    @hookimpl
    def jitterline_add_options(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Prometheus metrics (plugin metrics)")
        group.add_argument(
            "--metrics-port", type=int, metavar="PORT", help="serve /metrics on PORT (0: any)"
        )
        group.add_argument(
            "--metrics-host", default="127.0.0.1", metavar="ADDR", help="bind address (127.0.0.1)"
        )
        group.add_argument(
            "--metrics-streams",
            type=int,
            default=DEFAULT_STREAM_SERIES,
            metavar="N",
            help="per-stream buffer target series for at most N open streams (50)",
        )

    @hookimpl
    def jitterline_configure(self, options: Mapping[str, Any]) -> None:
        if options.get("metrics_port") is None:
            return
        self.stream_series = int(options.get("metrics_streams") or DEFAULT_STREAM_SERIES)
        self.start(int(options["metrics_port"]), str(options.get("metrics_host") or "127.0.0.1"))

    def start(self, port: int = 0, host: str = "127.0.0.1") -> bool:
        """Create the series and serve them; False (after one warning) without the library."""
        try:
            from prometheus_client import start_http_server
        except ImportError:
            log.warning(
                "metrics are off: prometheus-client is not installed; "
                "pip install 'jitterline[metrics]'"
            )
            return False
        self.close()
        self.series = _Series()
        self._server, _ = start_http_server(port, host, registry=self.series.registry)
        self.port = int(self._server.server_port)
        log.info("serving Prometheus metrics on http://%s:%d/metrics", host, self.port)
        return True

    def close(self) -> None:
        """Stop the exporter (the series stay readable in ``series.registry``)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @hookimpl
    def jitterline_stream_opened(self, stream: StreamInfo) -> None:
        if self.series is None or stream.key in self._streams:
            return
        self._streams[stream.key] = _Stream(stream.dialect)
        self.series.active.labels(stream.dialect).inc()
        seen, channels = self._reconnects.get(stream.stream_id, (0, 0))
        self._reconnects[stream.stream_id] = (seen, channels + 1)
        if channels == 0:
            self.series.sessions.labels(stream.dialect).inc()

    @hookimpl
    def jitterline_stats(self, stats: Stats, diagnosis: Diagnosis, stream: StreamInfo) -> None:
        if self.series is None:
            return
        if stream.key not in self._streams:
            self.jitterline_stream_opened(stream)
        state = self._streams[stream.key]
        series, dialect = self.series, stream.dialect
        self._count(state, stats, stream, final=False)
        if stats.latency.jitter_rfc3550_ms is not None:  # None until a frame was measured
            series.jitter.labels(dialect).observe(stats.latency.jitter_rfc3550_ms)
        if stats.latency.delay_p95_ms is not None:
            series.delay.labels(dialect).observe(stats.latency.delay_p95_ms)
        if stats.rtt_ms is not None:
            series.rtt.labels(dialect).observe(stats.rtt_ms)
        if state.verdict != diagnosis.verdict:
            if state.verdict:
                series.verdicts.labels(dialect, state.verdict).dec()
            series.verdicts.labels(dialect, diagnosis.verdict).inc()
            state.verdict = diagnosis.verdict
        if not state.labelled and self._labelled < self.stream_series:
            state.labelled = True
            self._labelled += 1
        if state.labelled:
            series.target.labels(dialect, stream.stream_id, stream.channel).set(
                stats.buffer.target_ms
            )

    @hookimpl
    def jitterline_alert(self, alert: Alert) -> None:
        if self.series is not None and alert.kind == "plugin_error":
            self.series.plugin_failures.inc()

    @hookimpl
    def jitterline_stream_closed(self, stats: Stats, stream: StreamInfo) -> None:
        state = self._streams.pop(stream.key, None)
        if self.series is None or state is None:
            return
        self._count(state, stats, stream, final=True)
        self.series.active.labels(stream.dialect).dec()
        if state.verdict:
            self.series.verdicts.labels(stream.dialect, state.verdict).dec()
        if state.labelled:
            self.series.target.remove(stream.dialect, stream.stream_id, stream.channel)
            self._labelled -= 1
        seen, channels = self._reconnects.pop(stream.stream_id, (0, 1))
        if channels > 1:
            self._reconnects[stream.stream_id] = (seen, channels - 1)
        else:
            self.series.sessions.labels(stream.dialect).dec()

    def _count(self, state: _Stream, stats: Stats, stream: StreamInfo, *, final: bool) -> None:
        """Advance the counters by what changed since the stream's last snapshot.

        ``unplayed`` (still buffered) is only known for good on the final snapshot: an
        earlier one's buffered frames go on to play, and a counter cannot go back.
        """
        assert self.series is not None
        now, before, dialect = stats.frames, state.frames, stream.dialect
        for outcome in OUTCOMES if final else OUTCOMES[:-1]:
            delta = getattr(now, outcome) - getattr(before, outcome)
            if delta > 0:
                self.series.frames.labels(dialect, outcome).inc(delta)
        self.series.lost.labels(dialect).inc(max(now.lost - before.lost, 0))
        self.series.concealed.labels(dialect).inc(max(now.concealed - before.concealed, 0))
        state.frames = now if final else replace(now, unplayed=0)
        # Channels of one connection share its reconnects: count them once per connection.
        seen, channels = self._reconnects.get(stream.stream_id, (0, 1))
        reconnects = stats.connection.reconnects
        if reconnects > seen:
            self.series.reconnects.labels(dialect).inc(reconnects - seen)
            self._reconnects[stream.stream_id] = (reconnects, channels)


plugin = MetricsSink()

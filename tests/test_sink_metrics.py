"""The Prometheus exporter, scraped over real HTTP on loopback after a live run against the
local endpoint, and the Grafana dashboard checked against that scrape."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from jitterline import Alert, PipelineConfig, PluginHost, Stats, StreamInfo, diagnose, hookimpl
from jitterline.emulator import Emulator, Impairments
from jitterline.live import RunResult, SessionOptions, run_live
from jitterline.transport import BackoffPolicy, TokenProvider
from jitterline_plugins.metrics import MetricsSink
from sink_testkit import ROOT

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> tuple[str, Samples]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


class MidRunScrape:
    """Scrapes the exporter once, from the second snapshot's hook, while the stream is live
    (a test-only blocking call: the exporter answers from its own thread)."""

    def __init__(self, sink: MetricsSink) -> None:
        self.sink = sink
        self.snapshots = 0
        self.samples: Samples = {}

    @hookimpl
    def jitterline_stats(self) -> None:
        self.snapshots += 1
        if self.snapshots == 2 and self.sink.port is not None:
            self.samples = scrape(self.sink.port)[1]


@pytest.fixture(scope="module")
def demo_run() -> Iterator[tuple[MetricsSink, RunResult, Samples]]:
    """A live run with one forced reconnect, scraped during the run and after it."""
    sink = MetricsSink()
    assert sink.start(0)
    spy = MidRunScrape(sink)
    host = PluginHost(plugins=[spy, sink])
    with Emulator(impairments=Impairments(disconnect_every_frames=40, max_disconnects=1)) as emu:
        options = SessionOptions(
            url=emu.ws_url,
            tokens=TokenProvider(emu.auth_url, emu.client_id, emu.client_secret),
            duration_s=2.0,
            ping_interval_s=0.5,
            backoff=BackoffPolicy(initial_s=0.05, max_s=0.2),
        )
        result = run_live(options, config=PipelineConfig(), host=host)
    yield sink, result, spy.samples
    sink.close()


def test_a_scrape_after_a_demo_run_shows_the_runs_counts(
    demo_run: tuple[MetricsSink, RunResult, Samples],
) -> None:
    sink, result, _ = demo_run
    assert sink.port is not None
    _, samples = scrape(sink.port)
    frames = result.stats.frames
    dialect = (("dialect", "appfoundry"),)

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({**dict(dialect), **labels}.items())))]

    assert value("jitterline_frames_total", outcome="played") == frames.played > 0
    assert (
        sum(
            samples.get(
                (
                    "jitterline_frames_total",
                    tuple(sorted({**dict(dialect), "outcome": o}.items())),
                ),
                0,
            )
            for o in ("played", "late", "duplicate", "overflow", "malformed", "unplayed")
        )
        == frames.received
    )
    assert value("jitterline_frames_lost_total") == frames.lost
    assert value("jitterline_frames_concealed_total") == frames.concealed
    assert value("jitterline_reconnects_total") == result.stats.connection.reconnects == 1
    assert value("jitterline_jitter_ms_count") >= 2  # one per snapshot
    assert value("jitterline_rtt_ms_count") >= 1
    assert value("jitterline_active_streams") == value("jitterline_active_sessions") == 0
    assert value("jitterline_streams_by_verdict", verdict=result.diagnosis.verdict) == 0


def test_a_stream_label_lives_only_while_the_stream_is_open_and_is_capped() -> None:
    sink = MetricsSink(stream_series=1)
    assert sink.start(0)
    try:
        host = PluginHost(plugins=[sink])
        streams = [StreamInfo(f"call-{n}", dialect="twilio") for n in range(3)]
        for stream in streams:
            stats = Stats(at_s=1.0, stream_id=stream.stream_id)
            host.notify("jitterline_stats", stats=stats, diagnosis=diagnose(stats), stream=stream)
        assert sink.port is not None
        text, samples = scrape(sink.port)
        assert text.count("jitterline_buffer_target_ms{") == 1
        assert samples[("jitterline_active_streams", (("dialect", "twilio"),))] == 3
        for stream in streams:
            stats = Stats(at_s=2.0, stream_id=stream.stream_id)
            host.notify(
                "jitterline_stream_closed",
                stream_id=stream.stream_id,
                stats=stats,
                diagnosis=diagnose(stats),
                stream=stream,
            )
        text, _ = scrape(sink.port)
        assert "jitterline_buffer_target_ms{" not in text
    finally:
        sink.close()


def test_plugin_failures_are_counted_from_the_hosts_alerts() -> None:
    sink = MetricsSink()
    assert sink.start(0)
    try:
        host = PluginHost(plugins=[sink])
        alert = Alert(kind="plugin_error", message="plugin 'x' raised", at_s=0.0, severity="error")
        host.notify("jitterline_alert", alert=alert, stream=None)
        assert sink.port is not None
        assert scrape(sink.port)[1][("jitterline_plugin_failures_total", ())] == 1
    finally:
        sink.close()


def dashboard_metrics() -> set[str]:
    board = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 8
    names = set()
    for expr in exprs:
        names |= set(re.findall(r"\b(jitterline_[a-z_]+)", expr))
    return names


def test_during_the_run_the_stream_is_active_with_its_buffer_target(
    demo_run: tuple[MetricsSink, RunResult, Samples],
) -> None:
    *_, live = demo_run
    dialect = ("dialect", "appfoundry")

    assert live[("jitterline_active_streams", (dialect,))] == 1
    assert live[("jitterline_active_sessions", (dialect,))] == 1
    targets = [v for (name, _), v in live.items() if name == "jitterline_buffer_target_ms"]
    assert len(targets) == 1 and targets[0] > 0
    assert sum(v for (name, _), v in live.items() if name == "jitterline_streams_by_verdict") == 1


def test_the_grafana_dashboard_queries_only_series_the_exporter_serves(
    demo_run: tuple[MetricsSink, RunResult, Samples],
) -> None:
    sink, _, live = demo_run
    assert sink.port is not None
    _, after = scrape(sink.port)
    served = {name for name, _ in (*live, *after)}

    missing = dashboard_metrics() - served
    assert not missing, f"the dashboard queries series nobody serves: {missing}"


def test_without_prometheus_client_the_run_goes_on_after_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    sink = MetricsSink()
    with caplog.at_level(logging.WARNING):
        PluginHost(plugins=[sink]).call("jitterline_configure", options={"metrics_port": 0})

    assert [r.getMessage() for r in caplog.records] == [
        "metrics are off: prometheus-client is not installed; pip install 'jitterline[metrics]'"
    ]
    assert sink.port is None and sink.series is None

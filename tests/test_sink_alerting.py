"""Alert rules: hold and hysteresis on scripted snapshots, the fleet rule, rule files, and
webhooks on a real loopback HTTP server, hanging or down, never delaying a hook call."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jitterline import ConfigError, PluginHost, Stats, StreamInfo, diagnose, hookimpl
from jitterline.frames import FrameCounts, LatencyStats
from jitterline_plugins.alerting import (
    AlertingSink,
    FleetRule,
    Incident,
    load_rules,
    parse_fleet,
    parse_rule,
)
from sink_testkit import checkout_entry_points, run_streams, tone  # noqa: F401 (a fixture)

WAIT_S = 10.0
PROMPT_S = 0.5
"""A generous bound for one hook call while the webhook hangs for seconds: a check that
delivery is off the caller's thread, not a speed claim."""


class Webhook:
    """A loopback HTTP endpoint that records JSON bodies; ``hang`` holds each request
    until the test ends."""

    def __init__(self, *, hang: bool = False) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.received = threading.Condition()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                if hang:
                    outer.release.wait(WAIT_S)
                with outer.received:
                    outer.bodies.append(body)
                    outer.received.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/s3cret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int) -> list[dict[str, Any]]:
        with self.received:
            self.received.wait_for(lambda: len(self.bodies) >= count, WAIT_S)
        return self.bodies

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT_S)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def snapshot(at_s: float, jitter_ms: float) -> Stats:
    latency = LatencyStats(frames=100, jitter_rfc3550_ms=jitter_ms)
    return Stats(at_s=at_s, stream_id="call-1", latency=latency)


JITTER_INCIDENT = [5, 35, 40, 15, 38, 41, 45, 42, 25, 28, 18, 33, 19, 17, 16, 12]
"""Once a second: a one-second spike, then 4 s above 30 ms, wobbling between the clear
level (20) and the threshold, then at or below 20 ms for good."""


def feed(host: PluginHost, values: Sequence[float], stream: StreamInfo) -> list[float]:
    """Each snapshot through the host; returns each hook call's duration."""
    durations = []
    for at_s, value in enumerate(values):
        stats = snapshot(float(at_s), value)
        started = time.perf_counter()
        host.notify("jitterline_stats", stats=stats, diagnosis=diagnose(stats), stream=stream)
        durations.append(time.perf_counter() - started)
    return durations


def test_one_incident_raises_one_alert_and_one_recovery() -> None:
    incident = Incident(parse_rule("jitter_ms > 30 for 2s clear 20"))

    changes = [incident.update(v, float(t)) for t, v in enumerate(JITTER_INCIDENT)]

    assert [(t, c) for t, c in enumerate(changes) if c] == [(6, "fired"), (14, "recovered")]


def test_unmeasured_values_change_nothing() -> None:
    incident = Incident(parse_rule("rtt_ms > 100"))

    assert [incident.update(v, 0.0) for v in (None, 150.0, None, 50.0)] == [
        None,
        "fired",
        None,
        "recovered",
    ]


def test_a_webhook_on_loopback_receives_the_alert_and_the_recovery(webhook: Webhook) -> None:
    sink = AlertingSink([parse_rule("jitter_ms > 30 for 2s clear 20")], webhooks=[webhook.url])
    host = PluginHost(plugins=[sink])
    try:
        feed(host, JITTER_INCIDENT, StreamInfo("call-1", "external", "audiohook"))
        bodies = webhook.wait_for(2)
    finally:
        sink.close()

    assert [b["status"] for b in bodies] == ["fired", "recovered"]
    assert bodies[0]["text"] == "ALERT call-1/external: jitter_ms > 30.0 (now 45.0)"
    assert bodies[0]["stream"]["dialect"] == "audiohook"
    assert bodies[1]["text"].startswith("RECOVERED call-1/external")
    assert (sink.sender.sent, sink.sender.dropped, sink.sender.failed) == (2, 0, 0)


def test_a_hanging_webhook_delays_no_hook_call_and_drops_are_counted() -> None:
    hanging = Webhook(hang=True)
    sink = AlertingSink(
        [parse_rule("jitter_ms > 30")], webhooks=[hanging.url], timeout_s=5.0, capacity=2
    )
    host = PluginHost(plugins=[sink])
    try:
        durations = feed(host, [40, 10] * 10, StreamInfo("call-1"))  # 20 alerts
        assert len(sink.alerts) == 20
        assert max(durations) < PROMPT_S  # while the webhook holds its first request
        assert sink.sender.dropped >= 20 - 2 - 1  # queue of 2, one in flight
    finally:
        hanging.close()
        sink.close(timeout_s=0.0)


def test_a_dead_webhook_is_retried_then_counted_and_its_secret_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = Webhook()
    url = dead.url
    dead.close()  # nothing listens on that port any more
    sink = AlertingSink([parse_rule("jitter_ms > 30")], webhooks=[url], timeout_s=0.5)
    sink.sender.backoff_s = 0.01
    host = PluginHost(plugins=[sink])
    with caplog.at_level(logging.WARNING):
        feed(host, [40], StreamInfo("call-1"))
        sink.close()

    assert sink.sender.failed == 1
    assert "webhook http://127.0.0.1: alert not delivered (ConnectionError)" in caplog.text
    assert "s3cret" not in caplog.text


def test_fleet_rule_counts_degraded_streams_in_words() -> None:
    sink = AlertingSink([parse_rule("loss_pct > 5")], fleet=FleetRule(50.0))
    host = PluginHost(plugins=[sink])
    streams = [StreamInfo(f"call-{n}") for n in range(4)]
    for stream in streams:
        host.notify("jitterline_stream_opened", stream=stream)
    for n, stream in enumerate(streams):
        stats = Stats(at_s=1.0, stream_id=stream.stream_id, frames=lossy() if n < 2 else clean())
        host.notify("jitterline_stats", stats=stats, diagnosis=diagnose(stats), stream=stream)
    host.notify(
        "jitterline_stream_closed",
        stream_id="call-0",
        stats=snapshot(2.0, 0.0),
        diagnosis=diagnose(snapshot(2.0, 0.0)),
        stream=streams[0],
    )

    messages = [a.message for a in sink.alerts]
    assert messages[:3] == [
        "ALERT call-0: loss_pct > 5.0 (now 10.0)",
        "ALERT call-1: loss_pct > 5.0 (now 10.0)",
        "ALERT fleet: 2 of 4 streams degraded",
    ]
    assert "RECOVERED call-0: loss_pct > 5.0 (now stream ended)" in messages
    assert messages[-1] == "RECOVERED fleet: 1 of 3 streams degraded"


def lossy() -> FrameCounts:
    return FrameCounts(received=90, played=90, lost=10)


def clean() -> FrameCounts:
    return FrameCounts(received=100, played=100)


def test_verdict_rule_and_rule_syntax_errors_say_what_to_write() -> None:
    rule = parse_rule("verdict != healthy for 10s")
    assert (rule.metric, rule.op, rule.threshold, rule.hold_s) == ("verdict", "!=", "healthy", 10)
    with pytest.raises(ConfigError, match="pick one of jitter_ms"):
        parse_rule("wobble > 3")
    with pytest.raises(ConfigError, match="METRIC OP VALUE"):
        parse_rule("jitter_ms is big")
    with pytest.raises(ConfigError, match="PERCENT%"):
        parse_fleet("150%")


def test_rules_webhooks_and_fleet_come_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        'webhooks = ["https://hooks.example.com/x"]\nfleet = "25% for 10s"\n'
        '[[rule]]\nname = "jittery"\nwhen = "jitter_ms > 30 for 5s clear 20"\n'
        '[[rule]]\nwhen = "delay_p95_ms >= 200"\n'
    )

    loaded = load_rules(path)

    assert [r.label for r in loaded.rules] == ["jittery", "delay_p95_ms >= 200.0"]
    assert loaded.rules[0].clear == 20.0
    assert loaded.fleet == FleetRule(25.0, 10.0)
    assert loaded.webhooks == ("https://hooks.example.com/x",)


def test_cli_options_configure_the_entry_point_plugin(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nwhen = "rtt_ms > 300"\n')
    sink = AlertingSink()
    host = PluginHost(plugins=[sink])
    options = {
        "alert": ["late_pct > 1 for 3s"],
        "alert_rules": str(path),
        "alert_fleet": "10%",
        "alert_webhook": [],
    }

    host.call("jitterline_configure", options=options)

    assert [r.metric for r in sink.rules] == ["rtt_ms", "late_pct"]
    assert sink.fleet == FleetRule(10.0, 0.0)


@pytest.mark.usefixtures("checkout_entry_points")
def test_a_lossy_demo_alerts_a_loopback_webhook_and_recovers_when_the_call_ends(
    webhook: Webhook, tmp_path: Path
) -> None:
    from jitterline.cli import main
    from jitterline_plugins import alerting

    argv = [
        "demo",
        "--profile",
        "lossy",
        "--duration",
        "3",
        "--quiet",
        "--json",
        str(tmp_path / "s"),
    ]
    code = main([*argv, "--alert", "loss_pct > 1", "--alert-webhook", webhook.url])
    alerting.plugin.close()

    assert code == 0
    statuses = [body["status"] for body in webhook.wait_for(2)]
    assert statuses == ["fired", "recovered"]
    assert webhook.bodies[1]["text"].endswith("(now stream ended)")


class FrameClock:
    """Notes the wall time of every played frame, in hook order."""

    def __init__(self) -> None:
        self.at: list[float] = []

    @hookimpl
    def jitterline_frame_played(self) -> None:
        self.at.append(time.perf_counter())


def test_frames_keep_flowing_while_every_alert_waits_on_a_hanging_webhook() -> None:
    hanging = Webhook(hang=True)
    sink = AlertingSink([parse_rule("jitter_ms >= 0")], webhooks=[hanging.url], timeout_s=5.0)
    clock = FrameClock()
    try:
        run_streams(PluginHost(plugins=[clock, sink]), {"a": tone(100), "b": tone(100)})
        assert len(sink.alerts) == 4  # each stream fired, and recovered as it ended
        assert hanging.bodies == []  # the webhook still holds the first request
        gaps = [later - earlier for earlier, later in itertools.pairwise(clock.at)]
        assert len(clock.at) >= 200  # the tones, then the slots concealed until the end
        assert max(gaps) < PROMPT_S  # no frame waited for the webhook
    finally:
        hanging.close()
        sink.close(timeout_s=0.0)

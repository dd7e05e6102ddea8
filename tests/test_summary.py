"""The JSON summary: its documented keys, rounding, nulls for the unmeasured, and the
accounting identity on what it prints."""

from __future__ import annotations

import json

from jitterline import Stats, diagnose
from jitterline.frames import BufferStats, ConnectionStats, FrameCounts, LatencyStats
from jitterline.summary import SCHEMA_VERSION, render, summarize

FRAMES = FrameCounts(
    received=100,
    played=90,
    late=3,
    duplicate=2,
    overflow=0,
    malformed=1,
    unplayed=2,
    lost=5,
    concealed=5,
    discarded=2,
)


def snapshot(**latency: float | None) -> Stats:
    return Stats(
        at_s=12.3456789,
        stream_id="s1",
        frames=FRAMES,
        latency=LatencyStats(frames=90, jitter_rfc3550_ms=25.123456, **latency),
        buffer=BufferStats(
            target_ms=120.0,
            min_ms=80.0,
            max_ms=140.0,
            policy="goal",
            wait_mean_ms=96.54321,
            wait_p95_ms=118.0,
            idle_s=2.5,
        ),
        connection=ConnectionStats(reconnects=2, token_refreshes=1, rate_limited=1, rtt_ms=40.0),
    )


def test_summary_has_every_documented_key() -> None:
    stats = snapshot(delay_p50_ms=10.0, delay_p95_ms=90.0, delay_p99_ms=120.0)
    summary = summarize(stats, diagnose(stats))

    assert summary["schema_version"] == SCHEMA_VERSION
    assert set(summary["frames"]) >= {
        "received",
        "played",
        "late",
        "duplicate",
        "overflow",
        "malformed",
        "unplayed",
        "lost",
        "concealed",
        "discarded",
    }
    assert set(summary["jitter_ms"]) == {"rfc3550", "p50", "p95", "p99"}
    assert set(summary["delay_ms"]) >= {"p50", "p95", "p99", "latency_ms"}
    assert set(summary["buffer_ms"]) >= {"target", "min", "max", "wait_mean", "wait_p95"}
    assert "idle_s" in summary
    assert set(summary["connection"]) >= {
        "reconnects",
        "token_refreshes",
        "rate_limited",
        "rtt_ms",
    }
    assert set(summary["diagnosis"]) >= {"verdict", "evidence", "action"}


def test_counters_are_copied_and_add_up() -> None:
    stats = snapshot()
    frames = summarize(stats, diagnose(stats))["frames"]

    accounted = sum(
        frames[k]
        for k in ("played", "late", "duplicate", "overflow", "malformed", "unplayed", "discarded")
    )
    assert frames["received"] == accounted == 100
    assert (frames["lost"], frames["concealed"], frames["balanced"]) == (5, 5, True)


def test_floats_are_rounded_to_three_decimals_and_unmeasured_values_are_null() -> None:
    stats = snapshot(jitter_p95_ms=7.77777)
    summary = summarize(stats, diagnose(stats))

    assert summary["duration_s"] == 12.346
    assert summary["jitter_ms"]["rfc3550"] == 25.123
    assert summary["jitter_ms"]["p95"] == 7.778
    assert summary["jitter_ms"]["p50"] is None
    assert summary["delay_ms"]["latency_ms"] is None
    assert summary["connection"]["rtt_ms"] == 40.0
    assert summary["rates"]["loss"] == round(5 / 100, 3)  # played + late + lost + discarded
    assert summary["buffer_ms"]["wait_mean"] == 96.543
    assert summary["buffer_ms"]["wait_p95"] == 118.0
    assert summary["idle_s"] == 2.5


def test_unmeasured_wait_and_jitter_are_null_not_zero() -> None:
    stats = Stats(at_s=1.0, latency=LatencyStats(jitter_rfc3550_ms=None))
    summary = summarize(stats, diagnose(stats))

    assert summary["jitter_ms"]["rfc3550"] is None
    assert summary["buffer_ms"]["wait_mean"] is None
    assert summary["buffer_ms"]["wait_p95"] is None
    assert summary["idle_s"] == 0.0
    assert summary["diagnosis"]["verdict"] == "no_audio"


def test_diagnosis_carries_verdict_evidence_and_action() -> None:
    stats = snapshot()
    summary = summarize(stats, diagnose(stats), run={"command": "demo"})

    assert summary["diagnosis"]["verdict"] == "loss"  # 5 of 100 expected frames lost
    assert summary["diagnosis"]["evidence"]["loss_rate"] == 0.05
    assert "loss" in summary["diagnosis"]["action"]
    assert summary["run"] == {"command": "demo"}


def test_rendered_summary_is_strict_json() -> None:
    stats = snapshot()
    text = render(summarize(stats, diagnose(stats)))

    assert json.loads(text)["stream_id"] == "s1"

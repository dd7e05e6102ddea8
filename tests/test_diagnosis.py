"""Diagnosis verdicts from hand-built snapshots of typical (and borderline) calls."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from jitterline.diagnosis import Diagnosis, Thresholds, diagnose
from jitterline.errors import ConfigError
from jitterline.frames import BufferStats, ConnectionStats, FrameCounts, LatencyStats, Stats


def snapshot(
    *,
    frames: int = 500,
    played: int = 1000,
    lost: int = 0,
    late: int = 0,
    discarded: int = 0,
    malformed: int = 0,
    jitter_ms: float | None = 2.0,
    delay_p50_ms: float | None = 5.0,
    delay_p95_ms: float | None = 20.0,
    latency_p50_ms: float | None = None,
    processing_p50_ms: float | None = None,
    rtt_ms: float | None = None,
    connection_rtt_ms: float | None = None,
    target_ms: float = 60.0,
) -> Stats:
    return Stats(
        at_s=10.0,
        frames=FrameCounts(
            received=played + late + discarded + malformed,
            played=played,
            late=late,
            discarded=discarded,
            malformed=malformed,
            lost=lost,
        ),
        latency=LatencyStats(
            frames=frames,
            jitter_rfc3550_ms=jitter_ms,
            delay_p50_ms=delay_p50_ms,
            delay_p95_ms=delay_p95_ms,
            latency_p50_ms=latency_p50_ms,
            processing_p50_ms=processing_p50_ms,
            rtt_ms=rtt_ms,
        ),
        buffer=BufferStats(target_ms=target_ms, policy="adaptive"),
        connection=ConnectionStats(rtt_ms=connection_rtt_ms),
    )


def test_clean_call_is_healthy() -> None:
    result = diagnose(snapshot())
    assert result.verdict == "healthy"
    assert result.action == "No action needed."
    assert result.evidence["jitter_rfc3550_ms"] == 2.0
    assert result.evidence["needed_ms"] == 40.0
    assert "jitter 2.0 ms" in result.summary


def test_burst_loss_is_loss() -> None:
    result = diagnose(snapshot(played=950, lost=50))
    assert result.verdict == "loss"
    assert result.evidence["loss_rate"] == pytest.approx(0.05)
    assert "5.0% of frames lost" in result.summary


def test_loss_beats_jitter() -> None:
    assert diagnose(snapshot(played=900, lost=100, jitter_ms=80.0)).verdict == "loss"


def test_wifi_jitter_is_network_jitter() -> None:
    result = diagnose(snapshot(jitter_ms=34.2, delay_p50_ms=10.0, delay_p95_ms=98.0))
    assert result.verdict == "network_jitter"
    assert result.evidence["delay_spread_ms"] == 88.0
    assert result.summary == (
        "Audio is late because of network jitter: RFC 3550 jitter 34.2 ms, "
        "delay p95-p50 spread 88 ms."
    )


def test_jitter_beats_server_delay() -> None:
    stats = snapshot(jitter_ms=25.0, processing_p50_ms=400.0)
    assert diagnose(stats).verdict == "network_jitter"


def test_slow_transcoder_is_server_delay() -> None:
    result = diagnose(snapshot(processing_p50_ms=200.0, latency_p50_ms=230.0, rtt_ms=40.0))
    assert result.verdict == "server_delay"
    assert result.evidence["server_ms"] == 210.0  # latency 230 - rtt/2 beats processing 200
    assert "about 210 ms is added before sending" in result.summary


def test_half_the_rtt_is_network_not_server() -> None:
    result = diagnose(snapshot(latency_p50_ms=200.0, rtt_ms=200.0))
    assert result.evidence["server_ms"] == 100.0
    assert result.verdict == "healthy"


def test_connection_rtt_is_used_when_the_window_has_none() -> None:
    result = diagnose(snapshot(latency_p50_ms=200.0, connection_rtt_ms=200.0))
    assert result.evidence["rtt_ms"] == 200.0
    assert result.verdict == "healthy"


def test_unknown_rtt_counts_as_zero() -> None:
    result = diagnose(snapshot(latency_p50_ms=160.0))
    assert "rtt_ms" not in result.evidence
    assert result.verdict == "server_delay"


def test_oversized_buffer_is_client_buffering() -> None:
    result = diagnose(snapshot(delay_p95_ms=30.0, target_ms=400.0))
    assert result.verdict == "client_buffering"
    assert result.evidence["needed_ms"] == 50.0
    assert "targets 400 ms where about 50 ms" in result.summary


def test_server_delay_beats_client_buffering() -> None:
    stats = snapshot(processing_p50_ms=300.0, target_ms=900.0)
    assert diagnose(stats).verdict == "server_delay"


BOUNDARIES: list[tuple[str, Callable[[float], Stats], float, float]] = [
    # of 10_000 expected frames: loss rate 0.0299 / 0.03
    ("loss", lambda v: snapshot(played=10_000 - int(v), lost=int(v)), 299, 300),
    ("network_jitter", lambda v: snapshot(jitter_ms=v), 19.99, 20.0),
    # delay p95 - p50 spread 59.99 / 60
    ("network_jitter", lambda v: snapshot(delay_p50_ms=5.0, delay_p95_ms=5.0 + v), 59.99, 60.0),
    ("server_delay", lambda v: snapshot(processing_p50_ms=v), 149.99, 150.0),
    # delay p95 30 -> needed 50 ms -> limit max(2 x 50, 50 + 100) = 150 ms
    ("client_buffering", lambda v: snapshot(delay_p95_ms=30.0, target_ms=v), 149.99, 150.0),
]


@pytest.mark.parametrize(("verdict", "build", "below", "above"), BOUNDARIES)
def test_each_threshold_fires_at_its_limit_not_below(
    verdict: str, build: Callable[[float], Stats], below: float, above: float
) -> None:
    assert diagnose(build(below)).verdict == "healthy"
    assert diagnose(build(above)).verdict == verdict


def test_too_few_frames_is_insufficient_data_never_healthy() -> None:
    result = diagnose(snapshot(frames=24, played=24, jitter_ms=1.0))
    assert result.verdict == "insufficient_data"
    assert result.evidence["audio_frames"] == 24.0
    assert result.summary.startswith("Too little data to judge: 24 audio frames")
    assert diagnose(snapshot(frames=25, played=25)).verdict == "healthy"
    assert diagnose(snapshot(played=25, jitter_ms=None)).verdict == "insufficient_data"


def test_stream_without_a_frame_is_no_audio() -> None:
    result = diagnose(snapshot(frames=0, played=0, jitter_ms=None))
    assert result.verdict == "no_audio"
    assert result.evidence["audio_frames"] == 0.0
    assert "jitter_rfc3550_ms" not in result.evidence  # never measured: left out, not 0
    assert "No audio" in result.summary


def test_malformed_only_stream_is_malformed_with_the_count() -> None:
    result = diagnose(snapshot(frames=0, played=0, malformed=300, jitter_ms=None))
    assert result.verdict == "malformed"
    assert result.evidence["malformed_rate"] == 1.0
    assert "300 of 300 messages were malformed" in result.summary
    assert diagnose(snapshot(played=600, malformed=400)).verdict == "healthy"
    assert diagnose(snapshot(played=500, malformed=500)).verdict == "malformed"


def test_high_late_rate_is_late_not_healthy() -> None:
    # The reconnect of issue 10: 864 received, 363 played, 500 late.
    result = diagnose(snapshot(played=363, late=500, target_ms=80.0))
    assert result.verdict == "late"
    assert result.evidence["late_rate"] == pytest.approx(500 / 863)
    assert "57.9% late" in result.summary
    assert "late" in result.action


def test_frames_dropped_to_catch_up_count_toward_late() -> None:
    assert diagnose(snapshot(played=970, late=15, discarded=15)).verdict == "late"
    assert diagnose(snapshot(played=970, late=14, discarded=15)).verdict == "healthy"


def test_loss_beats_late() -> None:
    assert diagnose(snapshot(played=900, lost=50, late=50)).verdict == "loss"


def test_unmeasured_delays_do_not_fire_rules() -> None:
    result = diagnose(snapshot(delay_p50_ms=None, delay_p95_ms=None, target_ms=119.0))
    assert result.verdict == "healthy"
    assert "delay_spread_ms" not in result.evidence
    assert result.evidence["needed_ms"] == 20.0
    assert diagnose(snapshot(delay_p50_ms=None, delay_p95_ms=None, target_ms=120.0)).verdict == (
        "client_buffering"
    )


def test_custom_thresholds_change_the_verdict() -> None:
    strict = Thresholds(jitter_ms=1.0)
    assert diagnose(snapshot(), strict).verdict == "network_jitter"
    with pytest.raises(ConfigError, match="loss_rate"):
        Thresholds(loss_rate=-0.1)


def test_json_form_has_exactly_the_summary_keys() -> None:
    result = diagnose(snapshot(played=950, lost=50))
    as_json = result.to_json()
    assert set(as_json) == {"verdict", "evidence", "action"}
    assert as_json["verdict"] == "loss"
    assert as_json["evidence"] == result.evidence
    assert as_json["evidence"] is not result.evidence
    assert isinstance(result, Diagnosis)


def test_jitter_beats_late_and_the_summary_gives_the_late_rate() -> None:
    result = diagnose(snapshot(played=950, late=50, jitter_ms=30.0))
    assert result.verdict == "network_jitter"
    assert "5.0% of frames came too late to play" in result.summary
    assert "too late" not in diagnose(snapshot(jitter_ms=30.0)).summary


def test_server_delay_beats_late_and_the_summary_gives_the_late_rate() -> None:
    result = diagnose(snapshot(played=950, late=50, processing_p50_ms=300.0))
    assert result.verdict == "server_delay"
    assert "5.0% of frames came too late to play" in result.summary

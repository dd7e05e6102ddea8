"""Arrival-to-sink lag of served sessions (docs/serve.md, "Summaries"): ``SinkLag`` on a
hand-driven clock, then the keys a real server's summaries carry."""

from __future__ import annotations

import asyncio
from pathlib import Path

from jitterline import AudioFrame
from jitterline.server import SinkLag
from serve_testkit import serving, whole_session


def frame(channel: str, arrival_s: float, playout_s: float, concealed: bool = False) -> AudioFrame:
    return AudioFrame(
        stream_id="s",
        seq=0,
        media_ms=0.0,
        codec="PCMU",
        sample_rate=8000,
        channels=1,
        payload=b"",
        duration_ms=200.0,
        arrival_s=arrival_s,
        playout_s=playout_s,
        concealed=concealed,
        channel=channel,
    )


def test_lag_is_from_arrival_and_from_ready_to_the_sink_per_channel() -> None:
    now = [0.0]
    lag = SinkLag(lambda: now[0])
    now[0] = 1.25
    lag.played(frame("external", arrival_s=1.0, playout_s=1.2))  # 250 ms; slot 50 ms ago
    now[0] = 2.0
    lag.played(frame("external", arrival_s=1.9, playout_s=2.0))  # 100 ms; on its slot
    lag.played(frame("external", arrival_s=0.0, playout_s=2.0, concealed=True))  # left out
    lag.played(frame("internal", arrival_s=1.5, playout_s=1.9))  # 500 ms; slot 100 ms ago
    now[0] = 2.03
    lag.played(frame("internal", arrival_s=2.0, playout_s=1.8))  # came after its slot: 30 ms

    external, internal = lag.figures("external"), lag.figures("internal")

    assert external["arrival_to_sink_ms"]["count"] == 2
    assert external["arrival_to_sink_ms"]["max"] == 250.0
    assert external["arrival_to_sink_ms"]["p50"] == 100.0
    assert external["ready_to_sink_ms"]["max"] == 50.0
    assert internal["arrival_to_sink_ms"]["p99"] == 500.0
    assert internal["ready_to_sink_ms"]["p99"] == 100.0
    assert internal["ready_to_sink_ms"]["p50"] == 30.0
    assert lag.figures("nobody")["arrival_to_sink_ms"] == {
        "count": 0,
        "p50": None,
        "p95": None,
        "p99": None,
        "max": None,
    }


def test_a_served_session_summary_reports_the_lag_of_every_played_frame(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        session_id = asyncio.run(whole_session(served.url, messages=6))
        summaries = served.summaries(lambda doc: doc["stream"]["session_id"] == session_id, 2)

    for doc in summaries:
        played = doc["frames"]["played"] - doc["frames"]["concealed"]
        arrival = doc["stream"]["arrival_to_sink_ms"]
        ready = doc["stream"]["ready_to_sink_ms"]
        assert played > 0
        assert arrival["count"] == ready["count"] == played
        assert 0.0 <= ready["p50"] <= arrival["p50"] <= arrival["p99"] <= arrival["max"]

"""The README's library example runs as shipped and says what its network did."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_custom_chain_example_reports_the_loss_it_injected(
    capsys: pytest.CaptureFixture[str],
) -> None:
    runpy.run_path(str(EXAMPLES / "custom_chain.py"), run_name="__main__")

    out = capsys.readouterr().out
    assert "played 87, concealed 9, lost 9, late 0" in out  # every 10th of 100 frames lost
    assert "over 96 frames" in out  # 87 played + 9 concealed reached the custom sink
    assert "verdict: loss" in out


def test_per_stream_sink_example_keeps_three_concurrent_streams_apart(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = runpy.run_path(str(EXAMPLES / "per_stream_sink.py"))["main"]()

    assert set(report) == {"talker", "half", "silent"}
    assert report["silent"] == 0.0
    assert report["talker"] > 0.8
    assert report["half"] == pytest.approx(report["talker"] / 2)  # 50 of its 100 frames
    assert "half: talking" in capsys.readouterr().out

"""``jitterline demo --dialect audiohook|audioconnector|twilio``: the local endpoint plays
the platform against a real ``serve`` on loopback, and the demo reports each channel."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

EXPECTED_CHANNELS = {
    "audiohook": ["external", "internal"],  # stereo: a buffer and a summary per party
    "audioconnector": ["external"],
    "twilio": ["inbound"],
}


@pytest.mark.parametrize("dialect", sorted(EXPECTED_CHANNELS))
def test_demo_of_an_inbound_dialect_gives_a_verdict_and_a_balanced_summary(dialect: str) -> None:
    command = ["demo", "--dialect", dialect, "--duration", "6", "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "jitterline.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    summaries = document if isinstance(document, list) else [document]
    assert [s["stream"]["channel"] for s in summaries] == EXPECTED_CHANNELS[dialect]
    for summary in summaries:
        frames = summary["frames"]
        assert frames["balanced"]
        assert frames["received"] > 0
        assert summary["stream"]["dialect"] == dialect
        assert summary["diagnosis"]["verdict"] == "healthy"  # the clean profile
    assert done.stderr.count("diagnosis") == len(summaries)

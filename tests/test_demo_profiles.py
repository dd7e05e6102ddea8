"""Each demo profile, streamed for real over loopback, gives the verdict of the fault it
injects; and the capture of that run replays to the very same summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jitterline.cli import EXIT_OK, main

SECONDS = "3"

CASES = [
    ("clean", [], "healthy"),
    ("wifi", [], "network_jitter"),
    ("congested", [], "network_jitter"),
    ("slow-server", [], "server_delay"),
    ("lossy", [], "loss"),
    ("clean", ["--buffer-policy", "fixed", "--buffer-ms", "400"], "client_buffering"),
]


def demo_and_replay(
    tmp_path: Path, profile: str, extra: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    capture, live_json, replay_json = (
        tmp_path / "capture.jsonl",
        tmp_path / "live.json",
        tmp_path / "replay.json",
    )
    options = ["--quiet", "--profile", profile, "--duration", SECONDS, *extra]
    live_args = ["demo", *options, "--record", str(capture), "--json", str(live_json)]
    assert main(live_args) == EXIT_OK
    assert main(["replay", str(capture), "--json", str(replay_json)]) == EXIT_OK
    return json.loads(live_json.read_text()), json.loads(replay_json.read_text())


def without_run(summary: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in summary.items() if key != "run"}


@pytest.mark.parametrize(
    ("profile", "extra", "verdict"),
    CASES,
    ids=[f"{p}{'-fixed400' if e and p == 'clean' else ''}" for p, e, _ in CASES],
)
def test_profile_gives_its_verdict_and_replays_to_the_same_summary(
    tmp_path: Path, profile: str, extra: list[str], verdict: str
) -> None:
    live, replayed = demo_and_replay(tmp_path, profile, extra)

    assert live["diagnosis"]["verdict"] == verdict, live["diagnosis"]
    frames = live["frames"]
    assert frames["received"] > 100
    assert frames["received"] == sum(
        frames[name]
        for name in (
            "played",
            "late",
            "duplicate",
            "overflow",
            "malformed",
            "unplayed",
            "discarded",
        )
    )
    assert without_run(replayed) == without_run(live)
    assert replayed["run"]["recorded"]["profile"] == profile


def test_demo_prints_the_diagnosis_on_stderr_and_parseable_json_on_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--quiet", "--duration", "1"]) == EXIT_OK

    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["schema_version"] == 1
    assert summary["frames"]["balanced"] is True
    assert summary["connection"]["token_refreshes"] == 1
    assert "diagnosis: healthy" in err

"""The inbound fault soak's CI profile (docs/reliability.md): ``python -m
jitterline.serve_soak`` with the whole catalogue once beside rounds of four good sessions
(two AudioHook, two Twilio), run as a user runs it. What must hold: every fault answered
the documented way, every good session completed with each frame it sent counted once by
its server, every upgrade and refusal the clients saw counted once by the servers, every
summary balanced, and no descriptor, thread or session left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jitterline.errors import ConfigError
from jitterline.serve_soak import CATALOGUE, FLOOD_EXTRA, pick_faults
from process_testkit import run_module


def test_the_ci_serve_soak_answers_every_fault_and_leaves_good_sessions_whole(
    tmp_path: Path,
) -> None:
    report_path = tmp_path / "serve-soak.json"
    done = run_module(
        "jitterline.serve_soak",
        "--faults",
        str(len(CATALOGUE)),
        "--good",
        "4",
        "--duration",
        "2",
        "--json",
        str(report_path),
        timeout_s=120,
    )

    assert done.returncode in (0, 1), done.stderr
    report = json.loads(report_path.read_text())
    assert f"{report['answered']}/{report['total']} faults answered" in done.stdout
    assert [r["fault"] for r in report["results"]] == [f.name for f in CATALOGUE]
    failed = {r["fault"]: r["detail"] for r in report["failed"]}
    assert not failed, failed
    good = report["good"]
    assert good["affected"] == []
    assert good["sessions"] >= 6  # the warm-up pair and at least one round of four
    assert good["completed"] == good["sessions"]
    assert good["frames_sent"] > 0
    assert good["frames_counted"] == good["frames_sent"]
    server = report["server"]
    assert server["identity"], server
    assert server["refused_by_reason"]["max_sessions"] >= FLOOD_EXTRA
    for reason in ("bad_signature", "stale", "created_in_future", "short_nonce", "unsigned"):
        assert server["refused_by_reason"][reason] >= 1, reason
    assert server["failed"] >= 1  # the flood's admitted sessions and the drops never opened
    accounting = report["accounting"]
    assert accounting["balanced"]
    assert accounting["frames"]["malformed"] >= 1  # the cut Twilio media was counted
    leaks = report["leaks"]
    assert leaks["descriptors_after"] <= leaks["descriptors_before"]
    assert leaks["new_threads"] == []
    assert leaks["sessions_at_end"] == 0
    assert report["ok"]
    assert done.returncode == 0


def test_faults_beyond_the_catalogue_are_seeded_picks_after_all_of_it() -> None:
    picked = pick_faults(100, seed=3)

    assert len(picked) == 100
    assert picked[: len(CATALOGUE)] == list(CATALOGUE)
    assert picked == pick_faults(100, seed=3)
    assert picked != pick_faults(100, seed=4)
    assert pick_faults(5, seed=0) == list(CATALOGUE[:5])


def test_no_faults_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        pick_faults(0, seed=0)

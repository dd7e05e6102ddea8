"""``jitterline load``: the tally and its exit codes on numbers, then the command as a
subprocess against ``inbound_testkit.ProtocolServer`` running in this process."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import jitterline
from inbound_testkit import ProtocolServer
from jitterline.emulator.players import ChannelSent, Histogram, PlayerResult
from jitterline.loadgen import (
    API_KEY_ENV,
    CLIENT_SECRET_ENV,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    TWILIO_AUTH_TOKEN_ENV,
    LoadTally,
)
from jitterline.protocols import signatures

_TIMEOUT_S = 60.0
SECRET = base64.b64encode(b"load generator secret, 32 bytes!").decode()


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """Ours without credentials, the code under test first on the path, plus ``env``."""
    source_root = str(Path(jitterline.__file__).resolve().parents[1])
    child_env = {
        key: value
        for key, value in os.environ.items()
        if key not in (API_KEY_ENV, CLIENT_SECRET_ENV, TWILIO_AUTH_TOKEN_ENV)
    }
    child_env["PYTHONPATH"] = os.pathsep.join([source_root, child_env.get("PYTHONPATH", "")])
    child_env.update(env)
    return child_env


def load(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``jitterline load`` in a child process running the code under test."""
    return subprocess.run(
        [sys.executable, "-m", "jitterline.cli", "load", *argv],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        env=child_environment(env or {}),
        check=False,
    )


def report_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def result(**fields: Any) -> PlayerResult:
    return PlayerResult(dialect="twilio", session_id="MZ1", **fields)


# -- the tally ------------------------------------------------------------------------------


def tally_of(*results: PlayerResult) -> LoadTally:
    tally = LoadTally(frame_ms=20.0)
    for one in results:
        tally.started += 1
        tally.add(one)
    return tally


def test_all_completed_is_exit_0_and_frames_add_up() -> None:
    lag = Histogram()
    lag.add(1.0)
    sent = ChannelSent("inbound", "PCMU", made=10, sent=8, lost=2, duplicates=1)
    tally = tally_of(
        result(opened=True, completed=True, channels=(sent,), rtts_ms=(4.0,), send_lag=lag),
        result(opened=True, completed=True, channels=(sent,), rtts_ms=(6.0,)),
    )
    report = tally.report(elapsed_s=1.0)
    assert report.exit_code == EXIT_OK
    shown = report.as_json()
    assert shown["sessions"]["completed"] == 2
    assert shown["frames"] == {
        "sent": 16,
        "lost_by_profile": 4,
        "duplicates_sent": 2,
        "paused": 0,
    }
    assert shown["pong_rtt_ms"]["count"] == 2
    assert shown["pong_rtt_ms"]["p99"] == 6.0
    assert shown["loop_lag_ms"]["kept_up"] is True
    assert shown["send_lag_ms"]["held_back"] is False


def test_refusals_only_are_exit_5_and_counted_by_status() -> None:
    report = tally_of(
        result(opened=True, completed=True),
        result(refused="503"),
        result(refused="503"),
        result(refused="unauthorized"),
    ).report(1.0)
    assert report.exit_code == EXIT_REFUSED
    assert report.as_json()["sessions"]["refused"] == {"503": 2, "unauthorized": 1}


def test_any_failure_is_exit_1_even_with_refusals() -> None:
    report = tally_of(
        result(refused="401"), result(opened=True, error="timeout"), result(error="connect")
    ).report(1.0)
    assert report.exit_code == EXIT_FAILED
    assert report.as_json()["sessions"]["errors"] == {"connect": 1, "timeout": 1}


def test_a_session_still_running_is_not_success() -> None:
    tally = tally_of(result(opened=True, completed=True))
    tally.started += 1  # started, never finished (an interrupted run)
    assert tally.report(1.0).exit_code == EXIT_FAILED


def test_a_late_loop_means_the_generator_fell_behind() -> None:
    lag = Histogram()
    for _ in range(100):
        lag.add(15.0)  # woke most of a 20 ms frame late
    report = tally_of(result(opened=True, completed=True, loop_lag=lag)).report(1.0)
    assert not report.kept_up and not report.held_back
    assert report.as_json()["loop_lag_ms"]["p99"] == 15.0


def test_late_sends_from_a_punctual_loop_are_the_server_holding_back() -> None:
    send_lag, loop_lag = Histogram(), Histogram()
    for _ in range(100):
        send_lag.add(250.0)
        loop_lag.add(0.5)
    report = tally_of(
        result(opened=True, completed=True, send_lag=send_lag, loop_lag=loop_lag)
    ).report(1.0)
    assert report.kept_up and report.held_back


# -- the command ----------------------------------------------------------------------------


def test_twenty_audiohook_sessions_open_complete_and_report_rtt() -> None:
    with ProtocolServer("audiohook") as server:
        done = load(
            server.url,
            *("--dialect", "audiohook", "--sessions", "20", "--rate", "40"),
            *("--duration", "1.2", "--ping-interval", "0.45", "--quiet"),
        )
        sessions = server.finished()
    assert done.returncode == EXIT_OK, done.stderr
    report = report_of(done)
    assert report["sessions"]["started"] == 20
    assert report["sessions"]["opened"] == 20
    assert report["sessions"]["completed"] == 20
    assert report["sessions"]["refused"] == {} and report["sessions"]["errors"] == {}
    # 20 sessions x 6 frames x 2 channels, and the server counted each one
    assert report["frames"]["sent"] == 240
    assert sum(len(seqs) for s in sessions for seqs in s.seqs.values()) == 240
    assert len(sessions) == 20
    rtt = report["pong_rtt_ms"]
    assert rtt["count"] == sum(s.pings for s in sessions) >= 40
    assert 0 < rtt["p50"] <= rtt["p95"] <= rtt["p99"] <= rtt["max"]
    lag = report["send_lag_ms"]
    assert lag["count"] == 120  # one message per frame
    assert lag["p99"] is not None
    assert report["loop_lag_ms"]["count"] > 0
    assert "20 opened, 20 completed" in done.stderr
    assert report["run"]["dialect"] == "audiohook"


def test_twilio_sessions_report_websocket_ping_rtt(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    with ProtocolServer("twilio") as server:
        done = load(
            server.url,
            *("--dialect", "twilio", "--sessions", "5", "--rate", "50", "--duration", "0.6"),
            *("--ping-interval", "0.2", "--quiet", "--json", str(out)),
        )
        server.finished()
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout == ""
    report = json.loads(out.read_text())
    assert report["sessions"]["completed"] == 5
    assert report["frames"]["sent"] == 5 * 30
    assert report["pong_rtt_ms"]["count"] >= 5


@pytest.mark.parametrize("status", [401, 503])
def test_refusing_server_is_reported_by_status_and_exit_5(status: int) -> None:
    with ProtocolServer("audiohook", refuse_status=status) as server:
        done = load(
            server.url,
            *("--dialect", "audiohook", "--sessions", "4", "--rate", "50", "--duration", "0.2"),
            "--quiet",
        )
    assert done.returncode == EXIT_REFUSED, done.stderr
    report = report_of(done)
    assert report["sessions"]["refused"] == {str(status): 4}
    assert report["sessions"]["opened"] == 0 and report["sessions"]["completed"] == 0
    assert f"4 refused (4 {status})" in done.stderr


def test_credentials_come_from_the_environment_and_never_show() -> None:
    keys = signatures.KeySet({"load-key-1": base64.b64decode(SECRET)})
    env = {API_KEY_ENV: "load-key-1", CLIENT_SECRET_ENV: SECRET}
    with ProtocolServer("audiohook", keys=keys) as server:
        signed = load(
            server.url,
            *("--dialect", "audiohook", "--sessions", "3", "--duration", "0.2"),
            *("--rate", "50", "--log-level", "debug"),
            env=env,
        )
        unsigned = load(
            server.url,
            *("--dialect", "audiohook", "--sessions", "3", "--duration", "0.2", "--rate", "50"),
        )
        server.finished()
    assert signed.returncode == EXIT_OK, signed.stderr
    assert report_of(signed)["sessions"]["completed"] == 3
    for shown in (signed.stdout, signed.stderr):
        assert "load-key-1" not in shown and SECRET not in shown
    assert report_of(unsigned)["sessions"]["refused"] == {"401": 3}


def test_twilio_auth_token_from_the_environment_signs_the_upgrade() -> None:
    with ProtocolServer("twilio", twilio_token="twilio-token") as server:
        done = load(
            server.url,
            *("--dialect", "twilio", "--sessions", "2", "--duration", "0.2", "--rate", "50"),
            env={TWILIO_AUTH_TOKEN_ENV: "twilio-token"},
        )
        server.finished()
    assert done.returncode == EXIT_OK, done.stderr
    assert "twilio-token" not in done.stdout + done.stderr


def test_merged_tallies_add_up() -> None:
    lag = Histogram()
    lag.add(3.0)
    one = tally_of(result(opened=True, completed=True, rtts_ms=(2.0,), send_lag=lag))
    two = tally_of(result(refused="503"), result(error="timeout", rtts_ms=(9.0,)))
    one.merge(two)
    shown = one.report(1.0).as_json()
    assert shown["sessions"]["started"] == shown["sessions"]["finished"] == 3
    assert shown["sessions"]["refused"] == {"503": 1}
    assert shown["sessions"]["errors"] == {"timeout": 1}
    assert shown["pong_rtt_ms"]["count"] == 2 and shown["pong_rtt_ms"]["max"] == 9.0
    assert shown["send_lag_ms"]["count"] == 1


def test_workers_share_the_sessions_and_their_reports_merge() -> None:
    with ProtocolServer("twilio") as server:
        done = load(
            server.url,
            *("--dialect", "twilio", "--sessions", "6", "--rate", "50", "--duration", "0.4"),
            *("--workers", "2", "--quiet"),
        )
        sessions = server.finished()
    assert done.returncode == EXIT_OK, done.stderr
    report = report_of(done)
    assert report["run"]["workers"] == 2
    assert report["sessions"]["started"] == report["sessions"]["completed"] == 6
    assert report["frames"]["sent"] == 6 * 20 == sum(len(s.seqs["inbound"]) for s in sessions)
    assert report["send_lag_ms"]["count"] == 120


def test_probes_are_counted_as_probes() -> None:
    with ProtocolServer("audiohook") as server:
        done = load(
            server.url,
            *("--dialect", "audiohook", "--sessions", "3", "--rate", "50", "--probe", "--quiet"),
        )
        sessions = server.finished()
    assert done.returncode == EXIT_OK, done.stderr
    report = report_of(done)
    assert report["sessions"]["probes"] == 3 and report["sessions"]["completed"] == 3
    assert report["frames"]["sent"] == 0
    assert all(s.opened is not None and s.opened.probe for s in sessions)


def test_ctrl_c_ends_every_session_the_protocol_way_and_exits_130() -> None:
    with ProtocolServer("audiohook") as server:
        child = subprocess.Popen(
            [
                *(sys.executable, "-m", "jitterline.cli", "load", server.url),
                *("--dialect", "audiohook", "--sessions", "3", "--rate", "50"),
                *("--duration", "30", "--quiet"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_environment({}),
        )
        deadline = time.monotonic() + _TIMEOUT_S
        while sum(s.opened is not None for s in list(server.sessions)) < 3:
            assert time.monotonic() < deadline and child.poll() is None, "sessions never opened"
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=_TIMEOUT_S)
        sessions = server.finished()
    assert child.returncode == EXIT_INTERRUPTED, err
    report = json.loads(out)
    assert report["sessions"]["started"] == report["sessions"]["completed"] == 3
    assert all(s.closed is not None and s.closed.reason == "end" for s in sessions)


def test_cleartext_to_another_host_is_a_usage_error() -> None:
    done = load("ws://192.0.2.1/stream", "--dialect", "twilio")
    assert done.returncode == 2
    assert "cleartext" in done.stderr
    assert done.stdout == ""


def test_nothing_listening_fails_every_session_with_exit_1() -> None:
    with ProtocolServer("twilio") as server:
        url = server.url  # the port is free again once the server stopped
    done = load(url, "--dialect", "twilio", "--sessions", "2", "--rate", "50", "--quiet")
    assert done.returncode == EXIT_FAILED
    assert report_of(done)["sessions"]["errors"] == {"connect": 2}

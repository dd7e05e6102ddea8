"""The command line: `run` against the local endpoint with credentials from the
environment, the exit codes (auth refused, gave up, Ctrl-C, usage), help and plugins."""

from __future__ import annotations

import _thread
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from jitterline.cli import (
    CLIENT_ID_ENV,
    CLIENT_SECRET_ENV,
    EXIT_AUTH,
    EXIT_GAVE_UP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    main,
)
from jitterline.emulator import PROFILES, Emulator

CLIENT_ID = "cli-test-client"
SECRET = "s3cret-value-that-must-never-show"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(
        PROFILES["clean"], duration_s=1.5, client_id=CLIENT_ID, client_secret=SECRET
    ) as emu:
        yield emu


def credentials(monkeypatch: pytest.MonkeyPatch, secret: str = SECRET) -> None:
    monkeypatch.setenv(CLIENT_ID_ENV, CLIENT_ID)
    monkeypatch.setenv(CLIENT_SECRET_ENV, secret)


def test_run_with_credentials_from_the_environment_streams_until_the_peer_ends(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    credentials(monkeypatch)

    code = main(["run", emulator.ws_url, "--auth-url", emulator.auth_url, "--quiet"])

    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    summary = json.loads(out)
    assert summary["frames"]["received"] >= 70  # 75 frames in 1.5 s
    assert summary["connection"]["token_refreshes"] == 1
    assert summary["run"]["command"] == "run"
    assert emulator.counters.tokens_issued == 1


def test_run_takes_the_auth_url_from_the_environment_too(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    credentials(monkeypatch)
    monkeypatch.setenv("JITTERLINE_AUTH_URL", emulator.auth_url)

    assert main(["run", emulator.ws_url, "--quiet", "--duration", "0.5"]) == EXIT_OK
    assert emulator.counters.tokens_issued == 1


def test_wrong_secret_exits_3_with_one_line_that_does_not_contain_the_secret(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    wrong = "wrong-secret-do-not-print"
    credentials(monkeypatch, secret=wrong)

    code = main(["run", emulator.ws_url, "--auth-url", emulator.auth_url, "--quiet"])

    out, err = capfd.readouterr()
    assert code == EXIT_AUTH
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("jitterline: error:")]
    assert len(lines) == 1
    assert "refused" in lines[0]
    assert "Traceback" not in err
    assert wrong not in out + err
    assert SECRET not in out + err


def test_nothing_listening_gives_up_after_max_attempts_with_exit_4(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there

    code = main(["run", f"ws://127.0.0.1:{port}/x", "--max-attempts", "1", "--quiet"])

    _, err = capfd.readouterr()
    assert code == EXIT_GAVE_UP
    assert "gave up after 1 attempts" in err


def test_ctrl_c_shuts_down_cleanly_prints_the_summary_and_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    credentials(monkeypatch)
    with Emulator(PROFILES["clean"], client_id=CLIENT_ID, client_secret=SECRET) as endless:
        timer = threading.Timer(1.0, _thread.interrupt_main)
        timer.start()
        try:
            code = main(["run", endless.ws_url, "--auth-url", endless.auth_url, "--quiet"])
        finally:
            timer.cancel()

    out, _ = capsys.readouterr()
    assert code == EXIT_INTERRUPTED
    summary = json.loads(out)
    assert summary["frames"]["received"] > 20
    assert summary["frames"]["balanced"] is True


def test_cleartext_ws_to_a_remote_host_is_a_usage_error_without_allow_insecure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(CLIENT_ID_ENV, raising=False)
    monkeypatch.delenv(CLIENT_SECRET_ENV, raising=False)

    code = main(["run", "ws://example.com/stream", "--quiet"])

    _, err = capsys.readouterr()
    assert code == EXIT_USAGE
    assert err.count("\n") == 1
    assert "cleartext ws://" in err


def test_credentials_without_an_auth_server_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    credentials(monkeypatch)
    monkeypatch.delenv("JITTERLINE_AUTH_URL", raising=False)

    assert main(["run", "ws://127.0.0.1:9/x", "--quiet"]) == EXIT_USAGE
    assert "--auth-url" in capsys.readouterr().err


def test_only_one_credential_variable_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(CLIENT_ID_ENV, CLIENT_ID)
    monkeypatch.delenv(CLIENT_SECRET_ENV, raising=False)

    assert main(["run", "ws://127.0.0.1:9/x", "--region", "eu-west-1"]) == EXIT_USAGE
    assert CLIENT_SECRET_ENV in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "run", "replay", "plugins"])
def test_every_command_has_help_with_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])

    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_unknown_profile_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--profile", "moon"])

    assert exit_info.value.code == EXIT_USAGE


def test_no_command_prints_help_on_stderr_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""  # stdout is for the JSON summary only
    assert "demo" in err


def test_plugins_lists_builtins_with_hooks_and_disable_marks_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plugins"]) == EXIT_OK
    listed = capsys.readouterr().out
    assert "wav_sink" in listed
    assert "jitterline_frame_played" in listed

    assert main(["plugins", "--disable", "wav_sink"]) == EXIT_OK
    assert "wav_sink: disabled" in capsys.readouterr().out


def test_enable_overrides_the_disable_environment_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JITTERLINE_DISABLE_PLUGINS", "wav_sink,alert_log")

    assert main(["plugins", "--enable", "wav_sink"]) == EXIT_OK

    listed = capsys.readouterr().out
    assert "alert_log: disabled" in listed
    assert "wav_sink (jitterline): enabled" in listed or "wav_sink: enabled" in listed

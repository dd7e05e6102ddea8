"""The built-in plugins, loaded the way a user gets them: through the entry points."""

from __future__ import annotations

import logging
import wave
from pathlib import Path

import pytest

from jitterline import Alert, PluginHost, StreamInfo
from jitterline.cli import main
from jitterline_plugins.wav_sink import WavSink
from test_pipeline import played, run, scripted_network


def test_builtin_plugins_load_through_the_entry_point_group() -> None:
    names = {info.name for info in PluginHost(load_entrypoints=True).info() if info.enabled}

    assert {"wav_sink", "alert_log"} <= names


def test_wav_sink_writes_every_played_frame_concealment_included(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    sink = WavSink()
    host = PluginHost(load_entrypoints=False, plugins=[sink])
    host.call("jitterline_configure", options={"wav": str(path)})

    frames = played(run(scripted_network(), end_s=2.0, host=host))

    with wave.open(str(path), "rb") as wav:
        assert wav.getframerate() == 8000
        assert wav.getnchannels() == 1
        assert wav.getnframes() == 160 * len(frames) == 160 * 48


def test_alert_log_logs_alerts_at_their_severity(caplog: pytest.LogCaptureFixture) -> None:
    host = PluginHost(load_entrypoints=True, disabled=["wav_sink"])
    alert = Alert(kind="verdict_changed", message="jitter is up", at_s=1.0, severity="error")

    with caplog.at_level(logging.INFO, logger="jitterline.alerts"):
        host.notify("jitterline_alert", alert=alert, stream=None)
        host.notify("jitterline_alert", alert=alert, stream=StreamInfo("call-7", "external"))

    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "verdict_changed: jitter is up"),
        (logging.ERROR, "call-7/external: verdict_changed: jitter is up"),
    ]


def test_plugins_command_lists_hooks_and_disabled_plugins(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plugins", "--disable", "wav_sink"]) == 0

    out = capsys.readouterr().out
    assert "alert_log (jitterline): enabled" in out
    assert "    jitterline_alert" in out
    assert "wav_sink: disabled" in out

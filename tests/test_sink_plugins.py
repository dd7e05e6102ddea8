"""The sinks as a user meets them: listed with their extras, disabled by name, and a
missing optional library named in one line, never a traceback."""

from __future__ import annotations

import sys

import pytest

from jitterline import PluginHost
from jitterline.cli import EXIT_OK, EXIT_USAGE, main
from sink_testkit import checkout_entry_points  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("checkout_entry_points")

SINKS = {"alert_log", "alerting", "metrics", "playback", "report", "wav_sink"}


def listed(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, str]:
    assert main(["plugins", *argv]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    return {line.split(" ")[0].rstrip(":"): line for line in lines if not line.startswith(" ")}


def test_every_sink_loads_through_the_entry_point_group() -> None:
    names = {info.name for info in PluginHost(load_entrypoints=True).info() if info.enabled}

    assert names >= SINKS


def test_plugins_lists_every_sink_with_its_extra(capsys: pytest.CaptureFixture[str]) -> None:
    rows = listed(capsys)

    assert set(rows) >= SINKS
    assert rows["metrics"] == "metrics (jitterline): enabled [extra metrics: installed]"
    assert rows["report"].endswith("[extra report: installed]")
    assert rows["playback"].endswith("[extra playback: installed]")
    assert rows["wav_sink"] == "wav_sink (jitterline): enabled"


@pytest.mark.parametrize(
    ("module", "name", "extra"),
    [
        ("prometheus_client", "metrics", "metrics"),
        ("matplotlib", "report", "report"),
        ("sounddevice", "playback", "playback"),
    ],
)
def test_a_missing_library_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    module: str,
    name: str,
    extra: str,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)

    rows = listed(capsys)

    assert rows[name] == (
        f"{name} (jitterline): enabled [extra {extra}: needs {module}: "
        f"pip install 'jitterline[{extra}]']"
    )


def test_disabling_a_sink_by_name_removes_its_options_and_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = listed(capsys, "--disable", "report", "--disable", "metrics")
    assert rows["report"] == "report: disabled"
    assert rows["metrics"] == "metrics: disabled"

    with pytest.raises(SystemExit) as exit_:
        main(["--disable", "report", "report", "x.jsonl"])
    assert exit_.value.code == EXIT_USAGE
    assert "invalid choice: 'report'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--disable", "metrics", "--metrics-port", "0"])
    assert "unrecognized arguments: --metrics-port 0" in capsys.readouterr().err


def test_each_sink_adds_its_options_to_the_stream_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--wav",
        "--wav-layout",
        "--play",
        "--alert",
        "--alert-webhook",
        "--metrics-port",
        "--report",
    ):
        assert f"{option} " in text

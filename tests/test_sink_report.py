"""The report: drawn from a replayed capture of every demo profile, in each format, at the
end of a run with --report, and one clear line when matplotlib is missing."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from jitterline.cli import EXIT_OK, EXIT_USAGE, main
from jitterline.emulator import PROFILES
from jitterline_plugins import report
from sink_testkit import checkout_entry_points, record_demo  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("checkout_entry_points")

PNG = b"\x89PNG"


@pytest.mark.parametrize("profile", list(PROFILES))
def test_a_report_is_drawn_from_a_replayed_capture_of_each_demo_profile(
    tmp_path: Path, profile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = record_demo(tmp_path, profile)
    out = tmp_path / f"{profile}.html"

    assert main(["report", str(capture), "-o", str(out)]) == EXIT_OK

    page = out.read_text(encoding="utf-8")
    assert "<img alt=" in page and "data:image/png;base64," in page
    assert "VERDICT: " in page and "What to do: " in page
    assert f"report written to {out}" in capsys.readouterr().err


def test_the_suffix_picks_the_format_and_the_default_is_html_beside_the_capture(
    tmp_path: Path,
) -> None:
    capture = record_demo(tmp_path, "wifi", duration_s=2.0)

    assert main(["report", str(capture), "-o", str(tmp_path / "page.pdf")]) == EXIT_OK
    assert (tmp_path / "page.pdf").read_bytes().startswith(b"%PDF")
    assert main(["report", str(capture)]) == EXIT_OK
    assert capture.with_suffix(".html").read_text(encoding="utf-8").startswith("<!doctype html>")
    assert main(["report", str(capture), "-o", str(tmp_path / "x.doc")]) == EXIT_USAGE


def test_report_at_the_end_of_a_replay_names_the_verdict(tmp_path: Path) -> None:
    capture = record_demo(tmp_path, "lossy", duration_s=2.0)
    out = tmp_path / "end.png"

    code = main(["replay", str(capture), "--report", str(out), "--json", str(tmp_path / "s")])
    report.plugin.close()

    assert code == EXIT_OK
    assert report.plugin.written == [out]
    assert out.read_bytes().startswith(PNG)


def test_without_matplotlib_report_says_so_in_one_line_and_replay_runs_on(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    capture = record_demo(tmp_path, "clean", duration_s=1.0)
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    assert main(["report", str(capture)]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        "jitterline: error: the report needs matplotlib: pip install 'jitterline[report]'\n"
    )
    with caplog.at_level(logging.WARNING, logger="jitterline_plugins.report"):
        code = main(["replay", str(capture), "--report", str(tmp_path / "r.png")])
    assert code == EXIT_OK
    assert [r.getMessage() for r in caplog.records if r.name == report.__name__] == [
        "--report is skipped: the report needs matplotlib: pip install 'jitterline[report]'"
    ]
    assert not (tmp_path / "r.png").exists()

"""The example plugin package works as a third party's would: its own tests pass, and
installed through its entry point it is listed, configured and run by the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jitterline.cli import EXIT_OK, main
from sink_testkit import ROOT, project, record_demo

PACKAGE = ROOT / "examples" / "plugin_package"


def test_the_example_packages_own_tests_pass() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "pipeline"), str(PACKAGE / "src")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PACKAGE / "tests")],
        cwd=PACKAGE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``pip install examples/plugin_package`` puts on the path: the package and its
    dist-info with the entry points its pyproject.toml declares."""
    table = project(PACKAGE / "pyproject.toml")
    info = tmp_path / "site" / f"jitterline_talktime-{table['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {table['name']}\nVersion: {table['version']}\n"
    )
    points = table["entry-points"]["jitterline"]
    lines = "".join(f"{name} = {value}\n" for name, value in points.items())
    (info / "entry_points.txt").write_text(f"[jitterline]\n{lines}")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(PACKAGE / "src"))


@pytest.mark.usefixtures("installed")
def test_installed_it_is_listed_configured_and_run_by_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plugins"]) == EXIT_OK
    assert "talktime (jitterline-talktime): enabled" in capsys.readouterr().out

    capture = record_demo(tmp_path, "clean", duration_s=1.0)
    out = tmp_path / "talk.csv"
    assert (
        main(["replay", str(capture), "--talktime-csv", str(out), "--json", str(tmp_path / "s")])
        == EXIT_OK
    )

    header, row = out.read_text(encoding="utf-8").splitlines()
    assert header == "stream_id,channel,frames,talking_share"
    stream_id, _, frames, share = row.split(",")
    assert stream_id and int(frames) >= 40  # about 50 frames in 1 s
    assert float(share) > 0.5, row  # a tone all the time (the slots concealed after the
    # sender's last frame count as silence, and how many there are depends on timing)

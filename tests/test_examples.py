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

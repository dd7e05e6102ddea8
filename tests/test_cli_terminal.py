"""The rich live display on a real terminal (tmux): log lines land above the table and stay,
the verdict is coloured unless NO_COLOR is set."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 60.0
CONSOLE_SCRIPT = "import sys; from jitterline.cli import main; sys.exit(main())"


class Terminal:
    """One tmux pane of 120 x 40 on a private tmux server."""

    def __init__(self) -> None:
        self.socket = f"jitterline-test-{uuid.uuid4().hex[:8]}"

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=True,
        )
        return done.stdout

    def start(
        self, args: list[str], *, columns: int = 120, env: dict[str, str] | None = None
    ) -> None:
        paths = [str(ROOT / "pipeline"), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]
        variables = {
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "TERM": "xterm-256color",
        }
        variables.update(env or {})
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in variables.items())
        line = shlex.join([sys.executable, "-c", CONSOLE_SCRIPT, *args])
        script = f"env -u NO_COLOR {exports} {line} > /dev/null; echo EXIT=$?; sleep {WAIT_S}"
        self.tmux("new-session", "-d", "-x", str(columns), "-y", "40", script)

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + WAIT_S
        while text not in (screen := self.screen()):
            assert time.monotonic() < deadline, screen
            time.sleep(0.2)
        return screen

    def run(self, args: list[str], **env: str) -> str:
        """Run the command in the pane until it exits; the screen (and scrollback) then."""
        self.start(args, env=env)
        return self.wait_for("EXIT=")

    def screen(self, *, escapes: bool = False) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", *(["-e"] if escapes else []))

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False
        )


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    try:
        yield term
    finally:
        term.close()


def test_an_alert_raised_mid_run_is_still_on_the_screen_when_the_run_ends(
    terminal: Terminal,
) -> None:
    # flaky drops the connection at 2 s of stream time: the verdict turns to loss mid-run
    screen = terminal.run(["demo", "--profile", "flaky", "--duration", "5"])

    lines = screen.splitlines()
    alert = next(
        i for i, line in enumerate(lines) if "warning:" in line and "verdict_changed" in line
    )
    table = next(i for i, line in enumerate(lines) if line.strip().startswith("verdict"))
    assert alert < table  # printed above the table, not erased by a redraw
    assert "connection lost" in screen
    assert lines[table].split() == ["verdict", "loss"]
    assert any(line.split()[:1] == ["alert"] and "verdict_changed" in line for line in lines)
    assert sum(line.strip().startswith("verdict ") for line in lines) == 1  # no ghost table
    assert "EXIT=0" in screen


@pytest.mark.parametrize(("no_color", "coloured"), [(None, True), ("1", False)])
def test_the_verdict_is_coloured_unless_no_color_is_set(
    terminal: Terminal, no_color: str | None, coloured: bool
) -> None:
    env = {} if no_color is None else {"NO_COLOR": no_color}
    terminal.run(["demo", "--duration", "2"], **env)

    verdict = next(
        line for line in terminal.screen(escapes=True).splitlines() if "verdict" in line
    )
    assert "healthy" in verdict
    assert ("\x1b[32m" in verdict or "\x1b[1;32m" in verdict) is coloured


def test_ctrl_c_on_the_live_table_leaves_one_table_the_summary_and_exit_130(
    terminal: Terminal,
) -> None:
    # flaky's loss alert makes the longest row: the table is as wide as the terminal allows
    terminal.start(["demo", "--profile", "flaky", "--duration", "30"], columns=110)
    terminal.wait_for("verdict_changed")
    time.sleep(0.5)  # the table redrawn with the alert row
    terminal.tmux("send-keys", "C-c")
    screen = terminal.wait_for("EXIT=")

    lines = screen.splitlines()
    assert sum(line.split()[:1] == ["verdict"] for line in lines) == 1  # no row left behind
    assert "jitterline: interrupted; the summary covers the run up to then" in screen
    assert "EXIT=130" in screen
    assert "Traceback" not in screen

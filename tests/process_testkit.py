"""Running one of jitterline's modules in a child process, as a user would, with this
checkout's packages first on the path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_module(module: str, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``python -m module args...``; the exit code is the caller's to check."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "pipeline"), str(ROOT / "plugins"), env.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )

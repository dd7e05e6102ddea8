"""How many AudioHook sessions 1, 2 and 4 ``serve`` workers hold behind HAProxy.

Run: ``python -m benchmarks fleet [--quick]`` or ``python benchmarks/fleet.py``. Needs the
``haproxy`` binary (Debian: ``apt-get install haproxy``); without it the benchmark says
so in one line and returns nothing.

For W = 1, 2, 4: ``jitterline serve --workers W --worker-port 0`` (each worker on a port
of its own), HAProxy from deploy/haproxy.cfg with one ``server`` per worker
(``leastconn``), then for N = 50, 100, 200, ... ``jitterline load`` plays N AudioHook
sessions (stereo PCMU, 200 ms messages) through HAProxy, ramping at ``RATE_PER_S`` and
lasting long enough that all N run together for ``HOLD_S`` seconds. The fleet *holds* N
when every session completed, none was refused, every frame the generator sent is in the
workers' summaries (``frames.received`` summed over every channel, each channel
``balanced``), and the lag p99 is <= 20 ms. Lag is a frame's relative delay: how much
later than the stream's best frame the worker handled it, so a worker's loop falling
behind shows here first. Summaries carry each stream's p99, not its frames, so the figure
is the median over the step's streams of their p99 (streams on one loop see the same
lateness, and the median of their p99s estimates the p99 over all frames; the worst
stream's p99 is printed beside it).
A step where the generator itself fell behind (its ``loop_lag`` verdict) counts as not
held: the fleet was not what was measured. This machine is shared, so a step that fails
is measured once more; the fleet holds N if either run does.

The generator, HAProxy and the workers share this machine's cores, so the table shows
where the machine, not jitterline, runs out: read the ratio between rows against the
number of cores (``os.sched_getaffinity``), which the benchmark prints.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jitterline.server.fleet import (
    FleetProcess,
    binary,
    environment_with,
    free_port,
    render_haproxy,
    serve_command,
    start_haproxy,
)

ROOT = Path(__file__).resolve().parent.parent
LAG_LIMIT_MS = 20.0
RATE_PER_S = 50.0
HOLD_S = 5.0
WORKERS = (1, 2, 4)
STEPS = (10, 25, 50, 75, 100, 150, 200, 300, 400)
QUICK_STEPS = (10, 25, 50, 100)
_READY = re.compile(r"^jitterline serve: worker \d+ \(pid \d+\) ready on port (\d+)")
_FLEET = re.compile(r"^jitterline serve: listening on ws://[^:]+:(\d+)/ with")
_WAIT_S = 120.0


def _start_workers(count: int, calls: Path) -> tuple[FleetProcess, list[int]]:
    argv = serve_command(
        *("--port", "0", "--workers", str(count), "--worker-port", "0", "--quiet"),
        *("--json", str(calls), "--max-sessions", "2000", "--log-level", "warning"),
    )
    parent = FleetProcess(f"serve-{count}", argv, env=_env())
    parent.wait_for(_FLEET)
    ports = [int(port) for port in parent.wait_for(_READY, count=count)]
    return parent, ports


def _env() -> dict[str, str]:
    return environment_with([ROOT / "pipeline", ROOT / "plugins"])


def _haproxy(ports: Sequence[int], directory: Path) -> tuple[FleetProcess, int]:
    front, stats = free_port(), free_port()
    config = directory / "haproxy.cfg"
    template = (ROOT / "deploy" / "haproxy.cfg").read_text(encoding="utf-8")
    text = render_haproxy(
        template,
        bind=f"127.0.0.1:{front}",
        stats_bind=f"127.0.0.1:{stats}",
        servers=[("127.0.0.1", port) for port in ports],
    )
    config.write_text(text.replace("maxconn 500", "maxconn 2000"), encoding="utf-8")
    return start_haproxy(config, stats, servers=len(ports)), front


def _load(front: int, sessions: int, report: Path) -> dict[str, Any]:
    duration_s = sessions / RATE_PER_S + HOLD_S
    argv = [
        *(sys.executable, "-m", "jitterline.cli", "load", f"ws://127.0.0.1:{front}/"),
        *("--dialect", "audiohook", "--sessions", str(sessions), "--rate", str(RATE_PER_S)),
        *("--duration", f"{duration_s:g}", "--open-timeout", "10", "--quiet"),
        *("--json", str(report)),
    ]
    subprocess.run(
        argv, env=_env(), capture_output=True, timeout=duration_s * 2 + _WAIT_S, check=False
    )
    document: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    return document


def _new_lines(calls: Path, skip: int, want: int) -> list[dict[str, Any]]:
    """The summaries after the first ``skip``, once ``want`` of them are there (bounded:
    a worker writes a session's summaries as the session ends)."""
    deadline_s = time.monotonic() + _WAIT_S / 4
    while True:
        lines = calls.read_text(encoding="utf-8").splitlines() if calls.exists() else []
        if len(lines) - skip >= want or time.monotonic() > deadline_s:
            return [json.loads(line) for line in lines[skip:]]
        time.sleep(0.1)


def measure(front: int, sessions: int, calls: Path, directory: Path) -> dict[str, Any]:
    """One step: what the load saw and what the workers wrote."""
    skip = len(calls.read_text(encoding="utf-8").splitlines()) if calls.exists() else 0
    report = _load(front, sessions, directory / f"load-{sessions}.json")
    docs = _new_lines(calls, skip, 2 * report["sessions"]["completed"])
    lags = [doc["delay_ms"]["p99"] for doc in docs if doc["delay_ms"]["p99"] is not None]
    received = sum(doc["frames"]["received"] for doc in docs)
    state = report["sessions"]
    return {
        "completed": state["completed"],
        "refused": sum(state["refused"].values()),
        "failed": state["failed"],
        "accounted": received == report["frames"]["sent"]
        and all(doc["frames"]["balanced"] for doc in docs),
        "lag_p99_ms": float(np.median(lags)) if lags else float("inf"),
        "worst_p99_ms": max(lags, default=float("inf")),
        "generator_kept_up": report["loop_lag_ms"]["kept_up"],
    }


def _held(workers: int, sessions: int, front: int, calls: Path, directory: Path) -> bool:
    step = measure(front, sessions, calls, directory)
    ok = bool(
        step["completed"] == sessions
        and step["accounted"]
        and step["lag_p99_ms"] <= LAG_LIMIT_MS
        and step["generator_kept_up"]
    )
    print(
        f"  W={workers} N={sessions:4d}  completed {step['completed']:4d}  "
        f"refused {step['refused']}  failed {step['failed']}  "
        f"accounted={step['accounted']}  lag p99 {step['lag_p99_ms']:6.1f} ms "
        f"(worst stream {step['worst_p99_ms']:6.1f})  "
        f"generator kept up={step['generator_kept_up']}  {'held' if ok else 'NOT held'}",
        flush=True,
    )
    return ok


def largest_held(workers: int, steps: Sequence[int], directory: Path) -> int:
    calls = directory / f"calls-{workers}.jsonl"
    parent, ports = _start_workers(workers, calls)
    haproxy = None
    held = 0
    try:
        haproxy, front = _haproxy(ports, directory)
        for sessions in steps:
            if not any(_held(workers, sessions, front, calls, directory) for _ in range(2)):
                break
            held = sessions
    finally:
        if haproxy is not None:
            haproxy.stop()
        parent.stop()
    return held


def run(quick: bool = False) -> dict[str, float]:
    if binary("haproxy") is None:
        print("fleet: skipped, haproxy is not installed (apt-get install haproxy)")
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"fleet: sessions held behind HAProxy (p99 lag <= {LAG_LIMIT_MS:.0f} ms), {cores} cores")
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="jitterline-fleet-") as scratch:
        for workers in WORKERS:
            held = largest_held(workers, QUICK_STEPS if quick else STEPS, Path(scratch))
            figures[f"fleet_sessions_{workers}_workers"] = float(held)
    print("  workers  sessions held")
    for workers in WORKERS:
        print(f"  {workers:7d}  {figures[f'fleet_sessions_{workers}_workers']:13.0f}")
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller steps")
    run(parser.parse_args(argv).quick)


if __name__ == "__main__":
    threading.current_thread().name = "benchmark"
    main()

"""How many inbound sessions one ``jitterline serve`` process holds, driven by ``jitterline
load`` in another process.

Run: ``python -m benchmarks serve [--quick]`` or ``python benchmarks/serve.py``.

Two plans, as the platforms stream: Twilio Media Streams (20 ms mono PCMU messages, one
``inbound`` track) and Genesys AudioHook (200 ms stereo PCMU messages: two channels, two
pipelines per session). For N in each plan's steps, the benchmark starts ``jitterline serve
--dialect D --port 0 --max-sessions N --json FILE`` as a subprocess, runs ``jitterline
load URL --dialect D --sessions N --rate N/5 --duration 10`` as another (every session
starts within 5 s, so all N stream at once for at least 5 s), then sends SIGTERM to serve
and reads the summaries it wrote. A step is *held* when:

- every session the generator started completed the protocol's way (none refused, none
  failed) and the generator kept up (its own loop lag p99 under half a frame: otherwise
  the step measured the generator, not the server);
- every frame is accounted: a summary for each channel of each session ``load`` saw open,
  every summary balanced, and the frames the summaries received add up to exactly the
  frames ``load`` sent;
- at most 1 % of them were late (arrived after their playout slot: a server that reads
  late makes frames late);
- the median session's p99 *ready-to-sink* lag is <= 20 ms: from the moment a frame could
  play (it had arrived and its playout slot had come) to the moment the sinks had it, the
  runtime's own delay (docs/serve.md, "Summaries"). One loop serves every session, so when
  it falls behind the typical session shows it.

Each summary carries its channel's p99 (``arrival_to_sink_ms``, ``ready_to_sink_ms``);
the benchmark reports the median session's and the worst session's. The worst session's
p99 bounds the p99 over all frames from above (if every session's p99 is <= X, at most 1 %
of all frames are above X), but on a 50-frame AudioHook session a p99 is its worst frame,
so one pause of the loop (a garbage collection, the machine's other tenants) sets it; that
is why the median session's judges. *Arrival-to-sink* includes the jitter buffer's
deliberate delay (the adaptive policy's target), so it is reported, not judged.

The figure is the largest N held (``twilio_sessions``, ``audiohook_sessions``); the
steps stop at the first N not held, and the plan's target (200 Twilio, 1000 AudioHook, the
issue's) is then run once more, if it was not reached, so that what happens there
(sessions completed, frames accounted, lag) is reported too. ``serve_cpu_pct`` is the
serve process's CPU time over the run's wall time: 100 means one core saturated, the most
one event loop can use. ``serve_cpu_us_per_frame`` is serve's CPU time over the frames it
counted, in the run that counted the most (fixed costs such as upgrades and idle wake-ups
weigh least there): what a frame costs whatever share of a shared machine the process got.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

LAG_LIMIT_MS = 20.0
LATE_LIMIT = 0.01
RAMP_S = 5.0
DURATION_S = 10.0
QUICK_DURATION_S = 3.0
_START_S = 30.0
_DRAIN_S = 60.0


@dataclass(frozen=True, slots=True)
class Plan:
    dialect: str
    channels: int
    target: int
    steps: tuple[int, ...]
    quick_steps: tuple[int, ...]


PLANS = (
    Plan("twilio", 1, 200, (5, 10, 25, 50, 75, 100, 150, 200), (5, 10)),
    Plan("audiohook", 2, 1000, (10, 25, 50, 100, 200, 300, 400, 600, 800, 1000), (10, 50)),
)


@dataclass(frozen=True, slots=True)
class Step:
    """One run of N sessions: what ``load`` saw and what ``serve`` wrote."""

    sessions: int
    completed: int
    refused: int
    failed: int
    errors: dict[str, int]
    kept_up: bool
    frames_sent: int
    frames_counted: int
    summaries: int
    summaries_expected: int
    balanced: bool
    late: int
    p99_arrival_ms: float | None
    p99_ready_ms: float | None
    typical_p99_arrival_ms: float | None
    typical_p99_ready_ms: float | None
    serve_cpu_pct: float
    serve_cpu_s: float

    @property
    def cpu_us_per_frame(self) -> float:
        """Serve's CPU time per frame it counted: what a frame costs, whatever share of
        the machine the process got."""
        return 1e6 * self.serve_cpu_s / max(self.frames_counted, 1)

    @property
    def accounted(self) -> bool:
        """Every channel of every session ``load`` saw open has a balanced summary, and
        the summaries count exactly the frames ``load`` sent. A server may have opened a
        session whose client gave up before ``opened`` came: that one's summary is
        extra, not missing."""
        return (
            self.balanced
            and self.summaries >= self.summaries_expected
            and self.frames_counted == self.frames_sent
        )

    @property
    def held(self) -> bool:
        return (
            self.completed == self.sessions
            and self.kept_up
            and self.accounted
            and self.late <= LATE_LIMIT * max(self.frames_counted, 1)
            and self.typical_p99_ready_ms is not None
            and self.typical_p99_ready_ms <= LAG_LIMIT_MS
        )

    def line(self) -> str:
        return (
            f"  N={self.sessions:5d}  completed {self.completed:5d}  refused {self.refused:4d}"
            f"  failed {self.failed:4d}{_kinds(self.errors)}  frames "
            f"{self.frames_counted}/{self.frames_sent} "
            f"{'accounted' if self.accounted else 'NOT accounted'}  late {self.late}  "
            f"p99 arrival->sink {_ms(self.typical_p99_arrival_ms)} (worst session "
            f"{_ms(self.p99_arrival_ms)})  ready->sink {_ms(self.typical_p99_ready_ms)} (worst "
            f"{_ms(self.p99_ready_ms)})"
            f"  serve CPU {self.serve_cpu_pct:.0f} % ({self.cpu_us_per_frame:.0f} us/frame)"
            f"{'' if self.kept_up else '  (generator fell behind)'}"
            f"  {'held' if self.held else 'NOT held'}"
        )


def _kinds(errors: dict[str, int]) -> str:
    shown = ", ".join(f"{count} {kind}" for kind, count in sorted(errors.items()))
    return f" ({shown})" if shown else ""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


# -- one step -----------------------------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "jitterline.cli", *args]


@contextmanager
def _serve(dialect: str, sessions: int, summaries: Path) -> Iterator[tuple[int, int]]:
    """``jitterline serve`` on a free port; yields its pid and port, then drains it
    (SIGTERM) and waits for it to exit."""
    process = subprocess.Popen(
        _cli(
            "serve",
            "--dialect",
            dialect,
            "--port",
            "0",
            "--quiet",
            "--max-sessions",
            str(sessions),
            "--json",
            str(summaries),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stderr = process.stderr
    assert stderr is not None
    reader = threading.Thread(target=_forward, args=(stderr, lines), daemon=True)
    reader.start()
    try:
        port = _listening(lines)
        yield process.pid, port
        process.send_signal(signal.SIGTERM)
        code = process.wait(_DRAIN_S)
        if code != 0:
            raise RuntimeError(f"serve exited {code} after SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        reader.join(10)


def _forward(stream: TextIO, lines: queue.Queue[str]) -> None:
    """Serve's stderr, line by line, so its pipe never fills."""
    for line in stream:
        lines.put(line)


def _listening(lines: queue.Queue[str]) -> int:
    deadline = time.monotonic() + _START_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if "listening on" in line:
            return int(line.rsplit(":", 1)[1].split("/", 1)[0])
    raise RuntimeError(f"serve did not listen within {_START_S:.0f} s")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_step(plan: Plan, sessions: int, duration_s: float) -> Step:
    with tempfile.TemporaryDirectory(prefix="jitterline-bench-serve-") as folder:
        summaries_path = Path(folder) / "summaries.jsonl"
        with _serve(plan.dialect, sessions, summaries_path) as (pid, port):
            started_s, cpu_before_s = time.monotonic(), _cpu_s(pid)
            load = _load(f"ws://127.0.0.1:{port}/", plan.dialect, sessions, duration_s)
            cpu_s = _cpu_s(pid) - cpu_before_s
            wall_s = time.monotonic() - started_s
        docs = [json.loads(line) for line in summaries_path.read_text().splitlines()]
    return _step(plan, sessions, load, docs, cpu_s=cpu_s, wall_s=wall_s)


def _load(url: str, dialect: str, sessions: int, duration_s: float) -> dict[str, Any]:
    done = subprocess.run(
        _cli(
            "load",
            url,
            "--dialect",
            dialect,
            "--sessions",
            str(sessions),
            "--rate",
            f"{sessions / RAMP_S:g}",
            "--duration",
            f"{duration_s:g}",
            "--quiet",
            "--json",
            "-",
        ),
        capture_output=True,
        text=True,
        timeout=RAMP_S + duration_s + 120.0,
        check=False,
    )
    if done.returncode not in (0, 1, 5):
        raise RuntimeError(f"load exited {done.returncode}: {done.stderr[-500:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _step(
    plan: Plan,
    sessions: int,
    load: dict[str, Any],
    docs: list[dict[str, Any]],
    *,
    cpu_s: float,
    wall_s: float,
) -> Step:
    counted = [doc for doc in docs if not doc["stream"]["probe"]]
    arrival = [doc["stream"]["arrival_to_sink_ms"]["p99"] for doc in counted]
    ready = [doc["stream"]["ready_to_sink_ms"]["p99"] for doc in counted]
    return Step(
        sessions=sessions,
        completed=load["sessions"]["completed"],
        refused=sum(load["sessions"]["refused"].values()),
        failed=load["sessions"]["failed"],
        errors=dict(load["sessions"]["errors"]),
        kept_up=load["loop_lag_ms"]["kept_up"],
        frames_sent=load["frames"]["sent"],
        frames_counted=sum(doc["frames"]["received"] for doc in counted),
        summaries=len(counted),
        summaries_expected=load["sessions"]["opened"] * plan.channels,
        balanced=all(doc["frames"]["balanced"] for doc in counted),
        late=sum(doc["frames"]["late"] for doc in counted),
        p99_arrival_ms=_worst(arrival),
        p99_ready_ms=_worst(ready),
        typical_p99_arrival_ms=_median(arrival),
        typical_p99_ready_ms=_median(ready),
        serve_cpu_pct=100.0 * cpu_s / wall_s,
        serve_cpu_s=cpu_s,
    )


def _worst(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return max(known) if known else None


def _median(values: Sequence[float | None]) -> float | None:
    known = sorted(value for value in values if value is not None)
    return known[(len(known) - 1) // 2] if known else None


# -- the plans -----------------------------------------------------------------------------------


def run_plan(plan: Plan, quick: bool) -> tuple[Step, Step | None, Step | None]:
    """The run that counted the most frames, the largest step held, and the run at the
    plan's target (None in quick mode)."""
    duration_s = QUICK_DURATION_S if quick else DURATION_S
    load_1m = os.getloadavg()[0]
    print(
        f"{plan.dialect}: {duration_s:g} s sessions, all started within {RAMP_S:g} s "
        f"(machine load average {load_1m:.1f} on {os.cpu_count()} CPUs)"
    )
    held: Step | None = None
    at_target: Step | None = None
    runs: list[Step] = []
    for sessions in plan.quick_steps if quick else plan.steps:
        step = run_step(plan, sessions, duration_s)
        runs.append(step)
        print(step.line(), flush=True)
        if sessions == plan.target:
            at_target = step
        if not step.held:
            break
        held = step
    if not quick and at_target is None:
        at_target = run_step(plan, plan.target, duration_s)
        runs.append(at_target)
        print(f"  at the target:\n{at_target.line()}", flush=True)
    busiest = max(runs, key=lambda run: run.frames_counted)
    return busiest, held, at_target


def _figures(
    plan: Plan, busiest: Step, held: Step | None, at_target: Step | None
) -> dict[str, float]:
    name = plan.dialect
    figures = {
        f"{name}_sessions": float(held.sessions if held else 0),
        f"serve_cpu_us_per_frame_{name}": busiest.cpu_us_per_frame,
    }
    if held is not None:
        figures.update(_lags(held, f"serve_p99_lag_ms_{name}", f"serve_p99_ready_lag_ms_{name}"))
        figures[f"serve_cpu_pct_{name}"] = held.serve_cpu_pct
    if at_target is not None:
        prefix = f"{name}_at_{plan.target}"
        figures[f"{prefix}_completed"] = float(at_target.completed)
        figures[f"{prefix}_accounted"] = float(at_target.accounted)
        figures.update(_lags(at_target, f"{prefix}_p99_lag_ms", f"{prefix}_p99_ready_lag_ms"))
    return figures


def _lags(step: Step, arrival: str, ready: str) -> dict[str, float]:
    """The median session's p99 under ``arrival`` / ``ready``, the worst's with ``_worst``."""
    values = {
        arrival: step.typical_p99_arrival_ms,
        f"{arrival}_worst": step.p99_arrival_ms,
        ready: step.typical_p99_ready_ms,
        f"{ready}_worst": step.p99_ready_ms,
    }
    return {key: value for key, value in values.items() if value is not None}


def run(quick: bool = False) -> dict[str, float]:
    figures: dict[str, float] = {}
    for plan in PLANS:
        busiest, held, at_target = run_plan(plan, quick)
        figures.update(_figures(plan, busiest, held, at_target))
        print(
            f"{plan.dialect}: {held.sessions if held else 0} sessions held (p99 ready->sink "
            f"<= {LAG_LIMIT_MS:.0f} ms, every frame accounted, late <= {LATE_LIMIT:.0%}); "
            f"{busiest.cpu_us_per_frame:.0f} us of serve CPU per frame at "
            f"N={busiest.sessions}"
        )
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small steps, 3 s sessions")
    print(json.dumps(run(parser.parse_args(argv).quick), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()

"""``jitterline analyze`` on a local Dask cluster of 2 workers against one process.

Run: ``python -m benchmarks analyze [--quick]`` or ``python benchmarks/analyze.py``.

Writes N captures (1000; ``--quick`` 100) of 10 s of appfoundry PCMU audio each, call i's
arrivals taken from trace model i mod 12 of ``jitterline.traces`` (seed i div 12 + 1, the
first 10 s), so the fleet holds healthy, jittery, lossy and buffering calls. Then, in
this run, the same command twice: ``jitterline analyze DIR --workers 0`` (every replay
in this process, the baseline) and ``--workers 2`` (a LocalCluster of 2 worker processes,
started and stopped inside the timing, as a user pays for it). The figures are both wall
times and their ratio; the check is that both give the very same per-call rows, and that
a sample of calls (every 10th; all with ``--quick``) reads as ``jitterline replay`` of
that capture alone prints it, every key but ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jitterline import Message, PipelineConfig
from jitterline.capture import CaptureHeader, CaptureWriter
from jitterline.cli import main as jitterline
from jitterline.frames import ConnectionStats
from jitterline.protocols.appfoundry import audio_chunk_message
from jitterline.traces import TRACES, make_trace

CAPTURES = 1000
QUICK_CAPTURES = 100
CALL_S = 10.0
WORKERS = 2
PCMU_20MS = b"\x7f" * 160
WALL_EPOCH_S = 1_700_000_000.0
START_S = 0.5
"""When the first frame may arrive: a live run's first audio comes after the handshake."""


def write_capture(path: Path, model: str, seed: int, *, seconds: float = CALL_S) -> None:
    """A capture as ``--record`` would write it for a call whose frames arrived as trace
    ``model`` says (sender and receiver wall clocks agree; the trace's time 0 is
    ``START_S`` on the run's clock); ends 0.2 s after the last arrival."""
    trace = make_trace(model, seed=seed)
    header = CaptureHeader("appfoundry", PipelineConfig(), {"trace": model, "seed": seed})
    writer = CaptureWriter(path, header)
    last_s = START_S
    try:
        for packet in trace.arrivals():
            if packet.send_s >= seconds or packet.arrival_s is None:
                continue
            sent_wall_s = WALL_EPOCH_S + packet.send_s
            text = audio_chunk_message(
                PCMU_20MS,
                seq=packet.seq,
                capture_wall_s=sent_wall_s,
                sent_wall_s=sent_wall_s,
                codec="PCMU",
            )
            arrival_s = round(START_S + packet.arrival_s, 6)
            received_wall_s = WALL_EPOCH_S + packet.arrival_s
            writer.message(Message(text, arrival_s=arrival_s, received_wall_s=received_wall_s))
            last_s = arrival_s
        writer.end(round(last_s + 0.2, 6), ConnectionStats(attempts=1))
    finally:
        writer.close()


def write_captures(directory: Path, count: int, *, seconds: float = CALL_S) -> list[Path]:
    """``count`` captures named ``call-00000.jsonl`` ... in ``directory``."""
    models = list(TRACES)
    paths = []
    for index in range(count):
        path = directory / f"call-{index:05d}.jsonl"
        write_capture(path, models[index % len(models)], index // len(models) + 1, seconds=seconds)
        paths.append(path)
    return paths


def analyze(directory: Path, workers: int, out: Path) -> tuple[float, dict[str, Any]]:
    """Wall time of ``jitterline analyze DIR --workers N`` and its JSON report."""
    args = ["analyze", str(directory), "--workers", str(workers), "--json", str(out), "-q"]
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        code = jitterline(args)
    wall_s = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"jitterline {' '.join(args)} exited {code}")
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return wall_s, report


def single_replay(capture: str, out: Path) -> dict[str, Any]:
    """What ``jitterline replay CAPTURE`` prints, less ``run``."""
    with contextlib.redirect_stderr(io.StringIO()):
        jitterline(["replay", capture, "--json", str(out)])
    summary: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    del summary["run"]
    return summary


def run(quick: bool = False) -> dict[str, float]:
    count = QUICK_CAPTURES if quick else CAPTURES
    with tempfile.TemporaryDirectory(prefix="jitterline-analyze-") as scratch:
        root = Path(scratch)
        calls = root / "calls"
        calls.mkdir()
        started = time.perf_counter()
        write_captures(calls, count)
        print(
            f"analyze: {count} captures of {CALL_S:g} s in {time.perf_counter() - started:.1f} s"
        )
        serial_s, serial = analyze(calls, 0, root / "serial.json")
        print(f"  one process (--workers 0):          {serial_s:7.1f} s")
        cluster_s, cluster = analyze(calls, WORKERS, root / "cluster.json")
        print(f"  LocalCluster (--workers {WORKERS}):          {cluster_s:7.1f} s")
        identical = serial["calls"] == cluster["calls"] and serial["failed"] == 0
        sample = cluster["calls"] if quick else cluster["calls"][::10]
        alone = all(
            single_replay(row["capture"], root / "alone.json")
            == {k: v for k, v in row["summary"].items() if k != "run"}
            for row in sample
        )
    ratio = serial_s / cluster_s
    load = os.getloadavg()[0]
    print(f"  load average (1 min) at the end: {load:.1f} on {os.cpu_count()} cores")
    print(f"  per-call rows identical: {identical}; {len(sample)} equal to replay alone: {alone}")
    print(f"  verdicts: {cluster['verdicts']}")
    print(f"analyze_speedup: {ratio:.2f}x")
    if not (identical and alone):
        raise RuntimeError("the cluster's per-call results differ from single replays")
    return {
        "analyze_captures": float(count),
        "analyze_serial_s": round(serial_s, 2),
        "analyze_cluster_s": round(cluster_s, 2),
        "analyze_speedup": round(ratio, 2),
        "analyze_load_avg": round(load, 2),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CAPTURES} captures")
    run(parser.parse_args(argv).quick)


if __name__ == "__main__":
    main()

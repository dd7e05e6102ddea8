"""``jitterline serve --workers N`` as real processes: one shared port, a health and a
metrics endpoint per worker, SIGTERM to one worker drains that one (and the parent starts
it again), SIGHUP replaces every worker one at a time without cutting a call, SIGTERM to
the parent drains them all; a worker whose parent died drains by itself."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jitterline.server.fleet import FleetProcess, environment_with, serve_command

ROOT = Path(__file__).resolve().parent.parent
ENV = environment_with([ROOT / "pipeline", ROOT / "plugins"])
WAIT_S = 60.0
READY = re.compile(r"^jitterline serve: worker (\d+ \(pid \d+\) ready on port \d+)")
FLEET = re.compile(r"^jitterline serve: listening on ws://127\.0\.0\.1:(\d+)/ with \d+ workers")
METRICS = re.compile(r"^(w\d+): jitterline: info: serving Prometheus metrics on \S+:(\d+)/")
T = TypeVar("T")

pytestmark = pytest.mark.skipif(os.name != "posix", reason="--workers is POSIX only")


def until(predicate: Callable[[], T | None], what: str, timeout_s: float = WAIT_S) -> T:
    deadline_s = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline_s, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def ready_workers(parent: FleetProcess, start: int = 0) -> dict[int, tuple[int, int]]:
    """Worker index -> (pid, own port), the latest announcement of each from ``start``."""
    found: dict[int, tuple[int, int]] = {}
    for line in parent.lines[start:]:
        match = READY.search(line)
        if match:
            index, pid, port = map(int, re.findall(r"\d+", match.group(1)))
            found[index] = (pid, port)
    return found


def both(workers: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]] | None:
    return workers if len(workers) == 2 else None


def health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


def summaries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def load(port: int, sessions: int, report: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "jitterline.cli", "load", f"ws://127.0.0.1:{port}/"),
            *("--dialect", "audiohook", "--sessions", str(sessions), "--rate", "10"),
            *("--duration", "3", "--quiet", "--json", str(report)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def finished(player: subprocess.Popen[str], report: Path) -> dict[str, Any]:
    _, err = player.communicate(timeout=WAIT_S)
    assert player.returncode in (0, 5), err
    document: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    sessions = document["sessions"]
    assert (sessions["errors"], sessions["failed"]) == ({}, 0), err
    assert sessions["completed"] + sum(sessions["refused"].values()) == sessions["started"]
    assert set(sessions["refused"]) <= {"503"}
    return document


@contextmanager
def parent(*args: str) -> Iterator[FleetProcess]:
    process = FleetProcess("parent", serve_command("--port", "0", "--quiet", *args), env=ENV)
    try:
        yield process
    finally:
        process.stop()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_two_workers_drain_one_by_one_and_all_together(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    args = ("--workers", "2", "--metrics-port", "0", "--json", str(calls), "--drain-grace", "30")
    with parent(*args) as fleet:
        (port,) = map(int, fleet.wait_for(FLEET))
        first = ready_workers(fleet)
        assert sorted(first) == [0, 1]
        assert [health(own) for _, own in first.values()] == [200, 200]
        metrics = {m.group(1): int(m.group(2)) for m in map(METRICS.search, fleet.lines) if m}
        assert len(set(metrics.values())) == 2  # one scrape endpoint per worker
        for metrics_port in metrics.values():
            with urllib.request.urlopen(
                f"http://127.0.0.1:{metrics_port}/metrics", timeout=10
            ) as reply:
                assert b"jitterline_active_sessions" in reply.read()

        # SIGTERM to the worker holding calls: it drains alone and is started again.
        player = load(port, 20, tmp_path / "load1.json")
        busy = until(lambda: summaries(calls), "a call to complete")[0]["run"]["worker"]
        old_pid, own_port = first[busy]
        mark = len(fleet.lines)
        os.kill(old_pid, signal.SIGTERM)
        until(
            lambda: any(f"w{busy}: jitterline serve: draining" in x for x in fleet.lines),
            "the drain",
        )
        assert health(own_port) == 503
        report = finished(player, tmp_path / "load1.json")
        restarted = until(lambda: ready_workers(fleet, mark).get(busy), "the restart")
        assert restarted[0] != old_pid and gone(old_pid)
        docs = summaries(calls)
        assert sum(d["frames"]["received"] for d in docs) == report["frames"]["sent"] > 0
        assert len(docs) == 2 * report["sessions"]["completed"]

        # SIGHUP: both replaced, one at a time, while calls run; none is cut.
        before = {**first, **ready_workers(fleet)}
        mark = len(fleet.lines)
        player = load(port, 10, tmp_path / "load2.json")
        until(lambda: len(summaries(calls)) > len(docs), "a call of the second run")
        fleet.signal(signal.SIGHUP)
        after = until(lambda: both(ready_workers(fleet, mark)), "the rolling restart")
        assert {pid for pid, _ in after.values()}.isdisjoint(pid for pid, _ in before.values())
        report = finished(player, tmp_path / "load2.json")
        assert report["sessions"]["completed"] == 10  # the shared port always had a worker

        fleet.signal(signal.SIGTERM)
        assert fleet.process.wait(WAIT_S) == 0
        assert all(gone(pid) for pid, _ in after.values())


def test_workers_drain_by_themselves_when_the_parent_is_killed() -> None:
    with parent("--workers", "1") as fleet:
        fleet.wait_for(FLEET)
        ((pid, own_port),) = ready_workers(fleet).values()
        fleet.signal(signal.SIGKILL)
        until(lambda: gone(pid), "the orphaned worker to exit", 30)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", own_port), timeout=5).close()


def test_a_worker_that_cannot_start_stops_the_fleet_with_its_exit_code() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        with parent("--workers", "2", "--worker-port", str(busy)) as fleet:
            assert fleet.process.wait(WAIT_S) == 2
            said = "\n".join(fleet.lines)
    assert f"cannot listen on 127.0.0.1:{busy}" in said
    assert "before it was ready; stopping" in said

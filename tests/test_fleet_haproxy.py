"""The fleet end to end: HAProxy (deploy/haproxy.cfg) over three ``jitterline serve``
processes, Prometheus (deploy/prometheus.yml and its rules) scraping them, 300 AudioHook
sessions from ``jitterline load`` through HAProxy, and SIGTERM to one worker mid-run.

Real binaries only (Debian's haproxy and prometheus; ``.ci/run`` installs them). Three
``serve`` processes on three ports rather than ``serve --workers 3``: HAProxy checks and
balances each worker on a port of its own, which is what ``--worker-port`` gives the
workers of one parent too (test_fleet_workers.py covers that parent).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jitterline.server.fleet import (
    FleetProcess,
    binary,
    environment_with,
    free_port,
    haproxy_server_states,
    prometheus_query,
    render_haproxy,
    start_haproxy,
    start_prometheus,
    start_serves,
    write_prometheus,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SESSIONS = 300
RATE_PER_S = 40.0
DURATION_S = 3.0
SCRAPE_S = 0.5
WAIT_S = 60.0
DRAINING = re.compile(r"draining (\d+) session")
T = TypeVar("T")
OUTCOMES = ("played", "late", "duplicate", "overflow", "malformed", "discarded", "unplayed")

pytestmark = [
    pytest.mark.fleet,
    pytest.mark.skipif(
        binary("haproxy") is None or binary("prometheus") is None,
        reason="needs the haproxy and prometheus binaries (apt-get install haproxy "
        "prometheus; .ci/run installs them)",
    ),
]


@dataclass
class Fleet:
    """The running parts: the workers (with their ports and summary files), HAProxy's
    ports and Prometheus's."""

    workers: list[FleetProcess]
    ports: list[int]
    files: list[Path]
    front: int
    stats: int
    prometheus: int
    others: list[FleetProcess] = field(default_factory=list)

    def stop(self) -> None:
        for process in [*self.workers, *self.others]:
            process.stop()


@contextmanager
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Three workers (summaries to w0..w2.jsonl, metrics on), HAProxy over them from
    deploy/haproxy.cfg, Prometheus over their metrics from deploy/prometheus.yml."""
    env = environment_with([ROOT / "pipeline", ROOT / "plugins"])
    files = [tmp_path / f"w{i}.jsonl" for i in range(3)]
    common = ("--quiet", "--metrics-port", "0", "--drain-grace", "30", "--linger", "3")
    started = start_serves(*[(*common, "--json", str(path)) for path in files], env=env)
    ports = [port for _, port, _ in started]
    running = Fleet([p for p, _, _ in started], ports, files, free_port(), free_port(), 0)
    try:
        metrics = [port for _, _, port in started if port is not None]
        assert len(metrics) == 3, "the metrics plugin did not start"
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            render_haproxy(
                (DEPLOY / "haproxy.cfg").read_text(encoding="utf-8"),
                bind=f"127.0.0.1:{running.front}",
                stats_bind=f"127.0.0.1:{running.stats}",
                servers=[("127.0.0.1", port) for port in ports],
            ),
            encoding="utf-8",
        )
        running.others.append(start_haproxy(config, running.stats, servers=3))
        running.prometheus = free_port()
        prometheus = write_prometheus(
            DEPLOY, tmp_path / "prometheus", jitterline=metrics, interval_s=SCRAPE_S
        )
        running.others.append(start_prometheus(prometheus, running.prometheus))
        yield running
    finally:
        running.stop()


def load(url: str, report: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "jitterline.cli", "load", url),
            *("--dialect", "audiohook", "--sessions", str(SESSIONS)),
            *("--rate", str(RATE_PER_S), "--duration", str(DURATION_S)),
            *("--open-timeout", "10", "--quiet", "--json", str(report)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environment_with([ROOT / "pipeline", ROOT / "plugins"]),
    )


def health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


def until(predicate: Callable[[], T | None], what: str, timeout_s: float = WAIT_S) -> T:
    deadline_s = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline_s, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def summaries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def said(process: FleetProcess, pattern: re.Pattern[str]) -> re.Match[str] | None:
    return next(filter(None, map(pattern.search, process.lines)), None)


def out_of_rotation(stats_port: int, server: str) -> dict[str, str] | None:
    """HAProxy's server states once ``server`` is DOWN."""
    states = haproxy_server_states(stats_port)
    return states if states.get(server) == "DOWN" else None


def scalar(port: int, query: str) -> float | None:
    result = prometheus_query(port, query)
    return float(result[0]["value"][1]) if result else None


def test_sigterm_to_one_worker_mid_run_cuts_no_session_and_loses_no_frame(
    tmp_path: Path,
) -> None:
    with fleet(tmp_path) as running:
        report_path = tmp_path / "load.json"
        player = load(f"ws://127.0.0.1:{running.front}/", report_path)
        # Mid-run: once the victim has completed a session it holds dozens more.
        victim = running.workers[1]
        until(lambda: summaries(running.files[1]), "a session completed on worker 1")
        victim.signal(signal.SIGTERM)
        in_flight = int(until(lambda: said(victim, DRAINING), "worker 1 to drain").group(1))
        victim_health = health(running.ports[1])
        states = until(lambda: out_of_rotation(running.stats, "w1"), "haproxy to take w1 out")
        _, load_err = player.communicate(timeout=WAIT_S + SESSIONS / RATE_PER_S)
        assert victim.process.wait(WAIT_S) == 0  # exited by itself once drained
        report = json.loads(report_path.read_text(encoding="utf-8"))

        # Every session completed, or was refused before it opened; none cut mid-call.
        sessions = report["sessions"]
        assert load_err is not None and player.returncode in (0, 5), load_err
        assert (sessions["errors"], sessions["failed"]) == ({}, 0), load_err
        assert sessions["started"] == SESSIONS
        assert sessions["completed"] + sum(sessions["refused"].values()) == SESSIONS
        assert sessions["opened"] == sessions["completed"]
        assert set(sessions["refused"]) <= {"503"}
        assert in_flight > 0  # the drain had calls to carry
        assert victim_health == 503
        assert states["w1"] == "DOWN" and set(states) == {"w0", "w1", "w2"}

        # Every frame accounted across the fleet, each session on exactly one worker.
        docs = [summaries(path) for path in running.files]
        every = [doc for worker in docs for doc in worker]
        owners = {(d["stream"]["session_id"], i) for i, worker in enumerate(docs) for d in worker}
        per_session = Counter(session for session, _ in owners)
        assert len(per_session) == sessions["completed"]
        assert set(per_session.values()) == {1}
        assert all(docs)  # each worker served sessions
        assert all(doc["frames"]["balanced"] for doc in every)
        received = sum(doc["frames"]["received"] for doc in every)
        assert received == report["frames"]["sent"] > 0

        check_prometheus(running.prometheus, every)


def check_prometheus(port: int, every: list[dict[str, Any]]) -> None:
    """Fleet totals from the workers' series (the drained worker's last scrape included)
    equal the summaries' sums; the deploy/ rules load and evaluate."""
    received = sum(doc["frames"]["received"] for doc in every)
    total = "sum(last_over_time(jitterline_frames_total[10m]))"
    deadline_s = time.monotonic() + 30.0
    while (value := scalar(port, total)) != received:
        by_instance = prometheus_query(port, f"sum by (instance) ({total[4:-1]})")
        assert time.monotonic() < deadline_s, (value, received, by_instance)
        time.sleep(0.2)
    for outcome in OUTCOMES:
        query = f'sum(last_over_time(jitterline_frames_total{{outcome="{outcome}"}}[10m]))'
        expected = sum(doc["frames"][outcome] for doc in every)
        assert (scalar(port, query) or 0.0) == expected, outcome
    lost = sum(doc["frames"]["lost"] for doc in every)
    assert (scalar(port, "sum(last_over_time(jitterline_frames_lost_total[10m]))") or 0) == lost
    assert scalar(port, 'count(last_over_time(up{job="jitterline"}[10m]))') == 3
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as reply:
        groups = json.load(reply)["data"]["groups"]
    health_of = {rule["name"]: rule["health"] for g in groups for rule in g["rules"]}
    assert "jitterline:late_loss_ratio:rate1m" in health_of
    assert set(health_of.values()) == {"ok"}
    assert scalar(port, "max_over_time(jitterline:active_sessions:sum[10m])")

"""A fleet on loopback: ``serve`` processes, HAProxy and Prometheus, from deploy/'s configs.

For the fleet tests and the fleet benchmark, and for trying deploy/ by hand. Every part is
the real program on 127.0.0.1 (HAProxy and Prometheus are the distribution's binaries),
found on ``PATH``; each start waits, bounded, for a line or an answer that says it is
ready, and each stop is SIGTERM, then SIGKILL after a bound. A process's stderr is read by
a thread of its own into ``lines``, so a chatty process never blocks on a full pipe and a
failure can show what the process said.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template
from typing import IO, Any

from ..errors import ConfigError

__all__ = [
    "FleetProcess",
    "binary",
    "environment_with",
    "free_port",
    "haproxy_server_states",
    "prometheus_query",
    "render_haproxy",
    "serve_command",
    "start_haproxy",
    "start_prometheus",
    "start_serves",
    "write_prometheus",
]

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_POLL_S = 0.05
_LISTENING = re.compile(r"jitterline serve: listening on \w+://[^:]+:(\d+)")
_METRICS = re.compile(r"serving Prometheus metrics on http://[^:]+:(\d+)/metrics")


def free_port() -> int:
    """A port free now on 127.0.0.1, for programs that cannot bind port 0 and say which
    port they got (HAProxy, Prometheus). Another process may take it before they bind;
    their start then fails loudly rather than silently serving elsewhere."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FleetProcess:
    """A child process and the stderr lines it wrote so far."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None) -> None:
        self.name = name
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=None if env is None else dict(env),
        )
        assert self.process.stderr is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stderr,), name=f"{name}-stderr"
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], *, count: int = 1, start: int = 0) -> list[str]:
        """The first group of the first ``count`` lines from index ``start`` matching
        ``pattern``; ConfigError (with the process's last lines) if it exits or
        ``START_TIMEOUT_S`` passes first."""
        deadline_s = time.monotonic() + START_TIMEOUT_S
        with self._changed:
            while True:
                found = [m.group(1) for m in map(pattern.search, self.lines[start:]) if m]
                if len(found) >= count:
                    return found[:count]
                left_s = deadline_s - time.monotonic()
                if left_s <= 0 or (
                    self.process.poll() is not None and not self._reader.is_alive()
                ):
                    raise ConfigError(
                        f"{self.name} did not print {pattern.pattern!r}; it said: "
                        + " | ".join(self.lines[-8:])
                    )
                self._changed.wait(min(left_s, 0.5))

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait ``timeout_s``, then SIGKILL; the exit code."""
        self.signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(STOP_TIMEOUT_S)
        self._reader.join(STOP_TIMEOUT_S)
        return code


# -- jitterline serve -------------------------------------------------------------------------


def serve_command(*args: str) -> list[str]:
    """``jitterline serve`` with this interpreter (so the code under test runs)."""
    return [sys.executable, "-m", "jitterline.cli", "serve", *args]


def start_serves(
    *arglists: Sequence[str], env: Mapping[str, str] | None = None
) -> list[tuple[FleetProcess, int, int | None]]:
    """One ``serve --port 0 ...`` per argument list (a later ``--port`` wins), all
    started before any is waited for: each process, its port and its metrics port (None
    when the metrics plugin is off)."""
    processes = [
        FleetProcess(f"serve-{index}", serve_command("--port", "0", *args), env=env)
        for index, args in enumerate(arglists)
    ]
    started = []
    try:
        for process in processes:
            (port,) = process.wait_for(_LISTENING)
            metrics = [m.group(1) for m in map(_METRICS.search, process.lines) if m]
            started.append((process, int(port), int(metrics[0]) if metrics else None))
    except ConfigError:
        for process in processes:
            process.stop()
        raise
    return started


def binary(name: str) -> str | None:
    """The program's path: on ``PATH``, or where Debian puts it (``/usr/sbin`` is not on
    an ordinary user's ``PATH``)."""
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in ("/usr/sbin", "/usr/bin"):
        candidate = Path(directory) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


# -- HAProxy ----------------------------------------------------------------------------------


def render_haproxy(
    template: str, *, bind: str, stats_bind: str, servers: Sequence[tuple[str, int]]
) -> str:
    """deploy/haproxy.cfg with its placeholders filled: one ``server`` line per
    ``(address, port)``, named ``w0``, ``w1``, ..."""
    lines = "\n".join(
        f"    server w{index} {host}:{port} check" for index, (host, port) in enumerate(servers)
    )
    return Template(template).substitute(bind=bind, stats_bind=stats_bind, servers=lines)


def start_haproxy(config: Path, stats_port: int, servers: int) -> FleetProcess:
    """``haproxy -db -f CONFIG`` (foreground), once its status page shows ``servers``
    servers UP."""
    program = _required("haproxy")
    check = subprocess.run(
        [program, "-c", "-q", "-f", str(config)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        said = (check.stdout + check.stderr).strip()
        raise ConfigError(f"haproxy rejects {config}: {said}")
    process = FleetProcess("haproxy", [program, "-db", "-f", str(config)], env=None)
    deadline_s = time.monotonic() + START_TIMEOUT_S
    while True:
        states = haproxy_server_states(stats_port)
        if sum(state == "UP" for state in states.values()) >= servers:
            return process
        if time.monotonic() > deadline_s or process.process.poll() is not None:
            process.stop()
            raise ConfigError(f"haproxy servers did not come UP: {states} {process.lines[-5:]}")
        time.sleep(_POLL_S * 4)


def haproxy_server_states(stats_port: int) -> dict[str, str]:
    """Each backend server's status (``UP``, ``DOWN``, ``MAINT``...) from HAProxy's CSV
    status page; {} while it does not answer."""
    try:
        url = f"http://127.0.0.1:{stats_port}/stats;csv"
        with urllib.request.urlopen(url, timeout=5.0) as reply:
            text = reply.read().decode("utf-8")
    except (OSError, urllib.error.URLError):
        return {}
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {
        row["svname"]: row["status"].split()[0]
        for row in rows
        if row["pxname"] == "serve" and row["svname"] not in ("FRONTEND", "BACKEND")
    }


# -- Prometheus -------------------------------------------------------------------------------


def write_prometheus(
    deploy: Path, directory: Path, *, jitterline: Sequence[int], interval_s: float
) -> Path:
    """deploy/prometheus.yml and its rules copied to ``directory``, with the scrape and
    evaluation interval set to ``interval_s`` and file_sd targets for the workers'
    metrics ports; returns the config's path."""
    shutil.copytree(deploy / "rules", directory / "rules", dirs_exist_ok=True)
    (directory / "targets").mkdir(exist_ok=True)
    targets = [{"targets": [f"127.0.0.1:{port}" for port in jitterline]}]
    (directory / "targets" / "jitterline.json").write_text(json.dumps(targets), "utf-8")
    (directory / "targets" / "haproxy.json").write_text("[]", "utf-8")
    text = (deploy / "prometheus.yml").read_text(encoding="utf-8")
    interval = f"{round(interval_s * 1000)}ms"  # Prometheus durations take no fractions
    text = re.sub(r"(scrape_interval|evaluation_interval): \S+", rf"\1: {interval}", text)
    config = directory / "prometheus.yml"
    config.write_text(text, encoding="utf-8")
    return config


def start_prometheus(config: Path, port: int) -> FleetProcess:
    """The ``prometheus`` server on 127.0.0.1:``port``, its data beside ``config``, once
    it answers ``/-/ready``."""
    argv = [
        _required("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={config.parent / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    process = FleetProcess("prometheus", argv, env=None)
    deadline_s = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError):
            url = f"http://127.0.0.1:{port}/-/ready"
            with urllib.request.urlopen(url, timeout=5.0) as reply:
                if reply.status == 200:
                    return process
        if time.monotonic() > deadline_s or process.process.poll() is not None:
            process.stop()
            raise ConfigError(f"prometheus did not become ready: {process.lines[-5:]}")
        time.sleep(_POLL_S * 4)


def prometheus_query(port: int, query: str) -> list[dict[str, Any]]:
    """An instant query through the HTTP API: the result vector."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10.0) as reply:
        document = json.load(reply)
    if document.get("status") != "success":
        raise ConfigError(f"prometheus query {query!r} failed: {document}")
    result: list[dict[str, Any]] = document["data"]["result"]
    return result


def _required(name: str) -> str:
    found = binary(name)
    if found is None:
        raise ConfigError(f"{name} is not installed; apt-get install {name}")
    return found


def environment_with(paths: Sequence[Path]) -> dict[str, str]:
    """This environment, ``paths`` first on PYTHONPATH, no ``JITTERLINE_`` variables
    (credentials): what a fleet's serve processes run with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITTERLINE_")}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")])
    return env

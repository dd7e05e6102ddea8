"""``jitterline serve --workers N``: N worker processes on one port, each its own runtime.

Why processes: one asyncio loop holds a few hundred sessions on a core; more cores need
more loops, and Python threads would share one GIL. Why a pre-forking parent and not
``SO_REUSEPORT``: with ``SO_REUSEPORT`` each worker has an accept queue of its own, the
kernel hashes connections over them, and a worker that closes its listener to drain
resets the connections still queued on it (Linux moves them to a sibling only with
``net.ipv4.tcp_migrate_req``). Here the parent binds the port once and every worker
accepts on that one socket (its descriptor passed to the worker), so there is one queue:
a draining worker simply stops accepting and its siblings take everything, nothing
queued is lost.

Each worker also listens on a port of its own (``--worker-port BASE``: worker ``i`` on
``BASE + i``; 0: any free port, printed), where ``/health`` and ``/health/check`` answer
for that worker alone and sessions are served too: a load balancer checks and balances
the workers one by one there. With ``--metrics-port BASE`` worker ``i`` exports its
metrics on ``BASE + i`` (0: any free port each, logged by the worker).

Signals (the parent's):

- SIGTERM, SIGINT: every worker drains (``--drain-grace``, ``--drain-timeout``), then the
  parent exits 0 once all have (1 if any failed to). A second one kills the workers.
- SIGHUP: rolling restart. One worker at a time gets SIGTERM, drains and exits; its
  replacement starts on the same ports; once it is ready the next worker goes. The fleet
  runs one worker short meanwhile and no session is cut when ``--drain-grace`` covers the
  longest call.
- A worker that exits (drained after a SIGTERM of its own, or crashed) is started again;
  one that exits before it ever became ready (a bad option, a port in use) stops the fleet
  with its exit code, since its replacement would fail the same way.

The workers run in a session of their own, so that a terminal's Ctrl-C reaches the parent
only (which drains them once), and hold the read end of a pipe whose write end only the
parent has: when the parent dies, even by SIGKILL, every worker sees end-of-file and
drains. Their stderr is relayed line by line, prefixed with ``w<index>: ``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, TextIO

from ..errors import ConfigError

__all__ = [
    "Supervisor",
    "WorkerRole",
    "is_supervisor",
    "parse_workers",
    "supervise",
    "worker_role",
]

log = logging.getLogger(__name__)

_SLICE_S = 0.2
_RESPAWN_GAP_S = 1.0
"""A worker index is started at most once a second: a worker that crashes right after
becoming ready does not make the parent spin."""
_STOP_MARGIN_S = 10.0
_LISTEN_BACKLOG = 1024
_MAX_WORKERS = 256


def parse_workers(text: str) -> int:
    """``--workers``: a count, or ``auto`` for one per core this process may run on
    (``sched_getaffinity``: a container's cpuset, not the host's core count)."""
    if text.strip().lower() == "auto":
        affinity = getattr(os, "sched_getaffinity", None)
        return len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or auto") from None
    if not 1 <= value <= _MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text} must be 1..{_MAX_WORKERS} (or auto)")
    return value


def is_supervisor(args: argparse.Namespace) -> bool:
    """``--workers`` given, and this process is not one of the workers."""
    return args.workers is not None and args.worker_index is None


# -- the worker's side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What a worker was handed by its parent (hidden options): its index, the shared
    listening socket, where to say it is ready, and the pipe that tells it the parent is
    gone."""

    index: int
    listen_fd: int
    ready_fd: int
    parent_fd: int

    def listener(self) -> socket.socket:
        return socket.socket(fileno=self.listen_fd)

    def ready(self, port: int) -> None:
        """Tell the parent our own port; the parent announces it."""
        with contextlib.suppress(OSError), os.fdopen(self.ready_fd, "w") as out:
            out.write(f"{port}\n")

    def watch_parent(self, stop: threading.Event) -> None:
        """Set ``stop`` when the parent's end of the pipe closes (the parent died)."""

        def watch() -> None:
            with contextlib.suppress(OSError):
                while os.read(self.parent_fd, 1):
                    pass
            log.warning("the supervising parent is gone; draining")
            stop.set()

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_role(args: argparse.Namespace) -> WorkerRole | None:
    if args.worker_index is None:
        return None
    return WorkerRole(args.worker_index, args.listen_fd, args.ready_fd, args.parent_fd)


# -- the parent -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Worker:
    index: int
    process: subprocess.Popen[str]
    ready_r: int | None
    relay: threading.Thread
    port: int = 0

    @property
    def ready(self) -> bool:
        return self.port > 0


@dataclass(slots=True)
class _Plan:
    """How to start worker ``i``: the command line, and the ports it gets."""

    command: tuple[str, ...]
    worker_port: int
    metrics_port: int | None

    def argv(self, index: int, listen_fd: int, ready_fd: int, parent_fd: int) -> list[str]:
        own = self.worker_port + index if self.worker_port else 0
        extra = ["--port", str(own)]
        if self.metrics_port is not None:
            metrics = self.metrics_port + index if self.metrics_port else 0
            extra += ["--metrics-port", str(metrics)]
        extra += ["--worker-index", str(index), "--listen-fd", str(listen_fd)]
        extra += ["--ready-fd", str(ready_fd), "--parent-fd", str(parent_fd)]
        return [*self.command, *extra]


@dataclass(slots=True)
class _Signals:
    stop: threading.Event = field(default_factory=threading.Event)
    stops: int = 0
    hups: int = 0


class Supervisor:
    """Starts, restarts and drains the workers; see the module docstring.

    ``command``: the worker's command line without the per-worker options (the parent's
    own, which the workers read back); ``listener``: the bound, listening shared socket;
    ``stop_limit_s``: how long a drain may take before the workers are killed.
    """

    def __init__(
        self,
        *,
        command: Sequence[str],
        count: int,
        listener: socket.socket,
        worker_port: int,
        metrics_port: int | None,
        stop_limit_s: float,
        announce: Callable[[str], None],
        out: TextIO = sys.stderr,
    ) -> None:
        self._plan = _Plan(tuple(command), worker_port, metrics_port)
        self._count = count
        self._listener = listener
        self._stop_limit_s = stop_limit_s
        self._announce = announce
        self._out = out
        self._out_lock = threading.Lock()
        self._workers: dict[int, _Worker] = {}
        self._respawn_at: dict[int, float] = {}
        self._last_spawn: dict[int, float] = {}
        self._rolling: list[int] = []
        self._replacing: tuple[int, int] | None = None
        self._signals = _Signals()
        self._all_ready_said = False
        self._alive_r, self._alive_w = os.pipe()

    def run(self, on_ready: Callable[[], None]) -> int:
        """Until SIGTERM / SIGINT: start the workers, keep them running, then drain them.
        ``on_ready`` runs once, when every worker first is ready."""
        try:
            with self._handle_signals():
                for index in range(self._count):
                    self._spawn(index)
                code = self._supervise(on_ready)
                if code is None:
                    code = self._stop_all()
                else:
                    self._kill_all(signal.SIGTERM)
                    self._reap(self._stop_limit_s)
            return code
        finally:
            self._kill_all(signal.SIGKILL)
            for worker in self._workers.values():
                worker.relay.join(_SLICE_S)
                if worker.ready_r is not None:
                    os.close(worker.ready_r)
            os.close(self._alive_r)
            os.close(self._alive_w)
            self._listener.close()

    # -- the loop ---------------------------------------------------------------------------

    def _supervise(self, on_ready: Callable[[], None]) -> int | None:
        """None on a stop signal; an exit code when a worker could not start."""
        while not self._signals.stop.is_set():
            self._read_ready(_SLICE_S)
            if not self._all_ready_said and self._ready_count() == self._count:
                self._all_ready_said = True
                on_ready()
            if self._signals.hups:
                self._signals.hups = 0
                self._queue_rolling_restart()
            for worker in list(self._workers.values()):
                code = worker.process.poll()
                if code is not None:
                    fatal = self._exited(worker, code)
                    if fatal is not None:
                        return fatal
            self._respawn_due()
            self._roll()
        return None

    def _read_ready(self, timeout_s: float) -> None:
        waiting = {w.ready_r: w for w in self._workers.values() if w.ready_r is not None}
        if not waiting:
            self._signals.stop.wait(timeout_s)
            return
        readable, _, _ = select.select(list(waiting), [], [], timeout_s)
        for fd in readable:
            worker = waiting[fd]
            data = os.read(fd, 64)
            os.close(fd)
            worker.ready_r = None
            if data.strip().isdigit():
                worker.port = int(data)
                self._announce(
                    f"worker {worker.index} (pid {worker.process.pid}) ready on port {worker.port}"
                )

    def _ready_count(self) -> int:
        return sum(w.ready for w in self._workers.values())

    def _exited(self, worker: _Worker, code: int) -> int | None:
        del self._workers[worker.index]
        if worker.ready_r is not None:
            os.close(worker.ready_r)
        worker.relay.join(_SLICE_S)
        if not worker.ready:
            self._announce(
                f"worker {worker.index} (pid {worker.process.pid}) exited with {code} before "
                "it was ready; stopping"
            )
            return code if code > 0 else 1
        how = "drained" if code == 0 else f"failed ({code})"
        self._announce(f"worker {worker.index} (pid {worker.process.pid}) {how}; restarting it")
        last_s = self._last_spawn.get(worker.index, 0.0)
        self._respawn_at[worker.index] = max(time.monotonic(), last_s + _RESPAWN_GAP_S)
        return None

    def _respawn_due(self) -> None:
        now_s = time.monotonic()
        for index, at_s in list(self._respawn_at.items()):
            if at_s <= now_s:
                del self._respawn_at[index]
                self._spawn(index)

    def _queue_rolling_restart(self) -> None:
        self._announce("rolling restart: draining one worker at a time")
        for index in range(self._count):
            if index not in self._rolling:
                self._rolling.append(index)

    def _roll(self) -> None:
        """One worker draining at a time; the next once the replacement is ready."""
        if self._replacing is not None:
            index, old_pid = self._replacing
            worker = self._workers.get(index)
            if worker is None or worker.process.pid == old_pid or not worker.ready:
                return
            self._replacing = None
        if not self._rolling:
            return
        index = self._rolling.pop(0)
        worker = self._workers.get(index)
        if worker is None:  # restarting anyway
            return
        self._replacing = (index, worker.process.pid)
        worker.process.send_signal(signal.SIGTERM)

    # -- starting and stopping workers ------------------------------------------------------

    def _spawn(self, index: int) -> None:
        ready_r, ready_w = os.pipe()
        listen_fd = self._listener.fileno()
        argv = self._plan.argv(index, listen_fd, ready_w, self._alive_r)
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                pass_fds=(listen_fd, ready_w, self._alive_r),
                start_new_session=True,
            )
        finally:
            os.close(ready_w)
        assert process.stderr is not None
        relay = threading.Thread(
            target=self._relay, args=(process.stderr, f"w{index}: "), name=f"relay-w{index}"
        )
        relay.start()
        self._last_spawn[index] = time.monotonic()
        self._workers[index] = _Worker(index, process, ready_r, relay)

    def _relay(self, stream: IO[str], prefix: str) -> None:
        with stream:
            for line in stream:
                with self._out_lock:
                    self._out.write(prefix + line)
                    self._out.flush()

    def _stop_all(self) -> int:
        self._announce(f"draining {len(self._workers)} worker(s)")
        self._kill_all(signal.SIGTERM)
        return 0 if self._reap(self._stop_limit_s) else 1

    def _reap(self, limit_s: float) -> bool:
        """Wait for every worker to exit; True when all exited 0 in time. A second stop
        signal ends the wait at once."""
        deadline_s = time.monotonic() + limit_s
        first_stops = self._signals.stops
        clean = True
        for worker in list(self._workers.values()):
            while worker.process.poll() is None:
                if time.monotonic() > deadline_s or self._signals.stops > first_stops:
                    return False
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.process.wait(_SLICE_S)
            clean &= worker.process.returncode == 0
        return clean

    def _kill_all(self, signum: int) -> None:
        for worker in self._workers.values():
            if worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)
        if signum == signal.SIGKILL:
            for worker in self._workers.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.process.wait(_SLICE_S * 10)

    @contextlib.contextmanager
    def _handle_signals(self) -> Iterator[None]:
        signals = self._signals

        def stop(signum: int, frame: FrameType | None) -> None:
            signals.stops += 1
            signals.stop.set()

        def hup(signum: int, frame: FrameType | None) -> None:
            signals.hups += 1

        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, stop),
            signal.SIGINT: signal.signal(signal.SIGINT, stop),
            signal.SIGHUP: signal.signal(signal.SIGHUP, hup),
        }
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def supervise(args: argparse.Namespace, *, stop_limit_s: float) -> int:
    """``serve --workers N`` in the parent: bind the shared port, run the workers."""
    if os.name != "posix":
        raise ConfigError("--workers needs a POSIX system (fork, pipes, signals); run one "
                          "serve per port instead")  # fmt: skip
    worker_port = args.worker_port or 0
    metrics_port = getattr(args, "metrics_port", None)
    for flag, base in (("--worker-port", worker_port), ("--metrics-port", metrics_port)):
        if base and base + args.workers - 1 > 65535:
            raise ConfigError(
                f"{flag} {base} + {args.workers} workers passes port 65535; pick a lower base"
            )
    try:
        listener = socket.create_server((args.host, args.port), backlog=_LISTEN_BACKLOG)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port} ({exc.strerror}); "
            "pick another --port or --host"
        ) from None
    port = listener.getsockname()[1]
    scheme = "wss" if args.certfile else "ws"

    def announce(text: str) -> None:
        print(f"jitterline serve: {text}", file=sys.stderr, flush=True)

    def on_ready() -> None:
        announce(
            f"listening on {scheme}://{args.host}:{port}{args.path} with {args.workers} workers"
        )

    command = [sys.executable, "-m", "jitterline.cli", *args.arguments]
    supervisor = Supervisor(
        command=command,
        count=args.workers,
        listener=listener,
        worker_port=worker_port,
        metrics_port=metrics_port,
        stop_limit_s=stop_limit_s,
        announce=announce,
    )
    return supervisor.run(on_ready)

"""What connected streams cost while no audio flows: process CPU over a quiet window.

Run: ``python -m benchmarks idle [--quick]`` or ``python benchmarks/idle.py``.

The project's local endpoint (``jitterline.emulator.Emulator``) runs in a child process
with every frame lost (``Impairments(loss_in_good=1.0)``): it accepts each connection and
answers ``initialize``, then sends nothing, the way a call on hold does; the child's own
CPU is not ours and is not counted. ``SESSIONS`` dial-out streams connect through one
``Runtime``, each with its protocol object and full pipeline and the default keep-alive
(a ping every 5 s); once all are connected and a second has passed, the CPU time of this
whole process (every thread: ``resource.getrusage(RUSAGE_SELF)``, user + system) is read
over ``window_s`` of wall time. ``idle_cpu_pct`` is that as a percentage of one core; the
target is < 5 % for 100 streams. The same is measured with bare ``Session`` objects (no
pipeline) to tell the transport's share, and with none at all (the loop alone).

There is no baseline to divide by here: an idle process costs ~0, so the figure is
absolute; what drives it is how often threads wake up (timers), counted as the voluntary
context switches of every thread in the same window (``idle_wakeups_per_s``, Linux).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import multiprocessing.connection
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from jitterline import Message, PipelineConfig, PluginHost
from jitterline.emulator import Emulator, Impairments
from jitterline.protocols.appfoundry import AppFoundryDialect
from jitterline.runtime import Runtime
from jitterline.transport import IOLoop, Session

SESSIONS = 100
_CONNECT_TIMEOUT_S = 60.0


def _endpoint(conn: multiprocessing.connection.Connection) -> None:
    silent = Impairments(loss_in_good=1.0, description="every frame lost: a call on hold")
    with Emulator(silent, require_token=False) as emulator:
        conn.send(emulator.ws_url)
        conn.recv()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _context_switches() -> int:
    """Voluntary context switches of every thread of this process: each is a thread that
    went to sleep (an epoll wait, a lock), so their rate counts the wake-ups (Linux)."""
    total = 0
    for status in Path("/proc/self/task").glob("*/status"):
        with contextlib.suppress(OSError):  # a thread that just ended
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def quiet_cost(window_s: float) -> tuple[float, float]:
    """Percent of a core and thread wake-ups per second over ``window_s`` (the sleeping
    main thread's own wake-up is left out)."""
    switches0, wall0, cpu0 = _context_switches(), time.monotonic(), _cpu_s()
    time.sleep(window_s)
    cpu1, wall1, switches1 = _cpu_s(), time.monotonic(), _context_switches()
    elapsed_s = wall1 - wall0
    return (cpu1 - cpu0) / elapsed_s * 100.0, (switches1 - switches0 - 1) / elapsed_s


def _settle(sessions: Sequence[Session]) -> None:
    deadline = time.monotonic() + _CONNECT_TIMEOUT_S
    while sum(s.diagnostics().connected for s in sessions) < len(sessions):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(sessions)} sessions did not all connect within 60 s")
        time.sleep(0.05)
    time.sleep(1.0)


def with_pipeline(url: str, n: int, window_s: float) -> tuple[float, float]:
    with IOLoop(name="bench-io") as ioloop:
        runtime = Runtime(PluginHost(), ioloop=ioloop)
        streams = []
        for index in range(n):
            proto = runtime.host.dialects.get("appfoundry")(role="client", session_id=f"i{index}")
            streams.append(runtime.dial(url, proto, PipelineConfig(), max_attempts=1))
        for _, session in streams:
            session.start()
        _settle([session for _, session in streams])
        cost = quiet_cost(window_s)
        for connection, session in streams:
            session.close(1.0)
            runtime.call(connection.finish)
    return cost


def transport_only(url: str, n: int, window_s: float) -> tuple[float, float]:
    def ignore(message: Message) -> None:
        del message

    with IOLoop(name="bench-io") as ioloop:
        sessions = [
            Session(
                url,
                dialect=AppFoundryDialect(role="client", session_id=f"t{i}", wall_clock=time.time),
                on_message=ignore,
                ioloop=ioloop,
                max_attempts=1,
            )
            for i in range(n)
        ]
        for session in sessions:
            session.start()
        _settle(sessions)
        cost = quiet_cost(window_s)
        for session in sessions:
            session.close(1.0)
    return cost


def loop_alone(url: str, n: int, window_s: float) -> tuple[float, float]:
    del url, n
    with IOLoop(name="bench-io"):
        return quiet_cost(window_s)


def run(quick: bool = False) -> dict[str, float]:
    window_s = 5.0 if quick else 10.0
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    endpoint = context.Process(target=_endpoint, args=(child,))
    endpoint.start()
    measures: dict[str, Callable[[str, int, float], tuple[float, float]]] = {
        "loop alone (no session)": loop_alone,
        f"{SESSIONS} Sessions, transport alone": transport_only,
        f"{SESSIONS} streams, Session + live pipeline": with_pipeline,
    }
    results: list[tuple[float, float]] = []
    try:
        url = parent.recv()
        for measure in measures.values():
            results.append(measure(url, SESSIONS, window_s))
    finally:
        parent.send("stop")
        endpoint.join(10)
    print(f"idle: connected streams, no audio, CPU of this process over {window_s:.0f} s")
    print(f"{'':44s} {'% core':>7s} {'wakeups/s':>10s}")
    for label, (pct, wakeups) in zip(measures, results, strict=True):
        print(f"{label:44s} {pct:7.2f} {wakeups:10.0f}")
    pct, wakeups = results[2]
    print(f"idle_cpu_pct ({SESSIONS} streams with pipelines): {pct:.2f} (target < 5)")
    return {
        "idle_cpu_pct": pct,
        "idle_transport_cpu_pct": results[1][0],
        "idle_loop_cpu_pct": results[0][0],
        "idle_wakeups_per_s": wakeups,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 5 s window instead of 10 s")
    run(parser.parse_args(argv).quick)


if __name__ == "__main__":
    main()

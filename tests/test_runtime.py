"""The runtime on loopback: many dial-out streams share one event loop, threads and
descriptors do not grow with them, and the stages never race each other."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jitterline import ConnectionEvent, PipelineConfig, PluginHost, Stats, StreamInfo, hookimpl
from jitterline.emulator import Emulator
from jitterline.live import SessionOptions, run_live
from jitterline.runtime import RunClock, Runtime
from jitterline.transport import IOLoop

WAIT_S = 30.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_many(n: int) -> tuple[int, int, list[tuple[Stats, int]]]:
    """N dial-out streams against one endless local endpoint, each with its own protocol
    object and pipeline on one runtime, closed by us a second after the last connected.
    Returns the threads and descriptors counted while all N were connected, and each
    stream's final snapshot with its session's message count."""
    # 200 ms frames (AudioHook's size): the in-process endpoint shares our two cores, and
    # at 20 ms its broadcast to the first hundred streams starves the later handshakes.
    endpoint = Emulator(duration_s=None, require_token=False, frame_ms=200.0)
    with endpoint as emu, IOLoop() as ioloop:
        runtime = Runtime(PluginHost(), ioloop=ioloop)
        config = PipelineConfig()
        streams = []
        connected: set[int] = set()

        def on_event(index: int) -> Callable[[ConnectionEvent], None]:
            def note(event: ConnectionEvent) -> None:
                if event.kind == "connected":  # a loaded machine may need a retry or two
                    connected.add(index)

            return note

        for index in range(n):
            proto = runtime.host.dialects.get("appfoundry")(role="client", session_id=f"s{index}")
            streams.append(
                runtime.dial(
                    emu.ws_url,
                    proto,
                    config,
                    on_event=on_event(index),
                    max_attempts=5,
                    ping_interval_s=0,
                )
            )
        for _, session in streams:
            session.start()
        deadline = time.monotonic() + WAIT_S
        while len(connected) < n:
            assert time.monotonic() < deadline, "not every session connected"
            time.sleep(0.01)
        threads, fds = threading.active_count(), open_fds()
        time.sleep(2.0)  # every stream receives audio for two seconds more
        for _, session in streams:
            session.close(5.0)
        results = []
        for connection, session in streams:
            stats, _ = runtime.call(lambda c=connection: c.finish()).primary  # type: ignore[misc]
            diagnostics = session.diagnostics()
            acks = diagnostics.reconnects + 1  # the endpoint answers each connection's hello
            results.append((stats, diagnostics.messages_in - acks))
            assert session.outcome is None  # closed by us, cleanly
    return threads, fds, results


def test_200_dial_out_streams_share_one_loop_with_constant_threads() -> None:
    threads_20, fds_20, results_20 = run_many(20)
    threads_200, fds_200, results_200 = run_many(200)

    assert threads_200 == threads_20  # the loop, its helper pool, the endpoint's: constant
    # One socket per stream on our side, and the in-process endpoint's socket for it.
    assert fds_200 - fds_20 == 2 * (200 - 20)
    for stats, messages in results_20 + results_200:
        frames = stats.frames
        assert frames.balanced
        assert frames.received == messages  # every audio message the session received
        assert frames.received > 0


class SnapshotCounter:
    def __init__(self) -> None:
        self.snapshots = 0

    @hookimpl
    def jitterline_stats(self, stats: Stats, stream: StreamInfo) -> None:
        self.snapshots += 1


def test_snapshots_every_millisecond_over_a_5000_frame_window_never_race_the_frames() -> None:
    """One stream's receive and snapshot paths used to run on two threads: a snapshot
    iterating the latency window while a frame was added killed playout with "deque
    mutated during iteration". On one loop they cannot interleave."""
    counter = SnapshotCounter()
    host = PluginHost(plugins=[counter])
    config = PipelineConfig(stats_every_s=0.001, window_frames=5000, window_s=100.0)
    with Emulator(duration_s=3.0, require_token=False) as emu:
        options = SessionOptions(url=emu.ws_url, duration_s=4.0, ping_interval_s=0.1)
        result = run_live(options, config=config, host=host)

    frames = result.stats.frames
    assert result.outcome is None
    assert frames.balanced
    assert frames.received == 150
    assert frames.played >= 145
    assert counter.snapshots > 500  # the snapshot load really ran alongside the frames
    assert host.failures_by_plugin() == {}


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    before = {t.name for t in threading.enumerate()}
    yield
    time.sleep(0.1)
    leftover = {t.name for t in threading.enumerate()} - before
    # The process-wide I/O loop (and its helper pool) lives on by design; nothing else.
    assert not {n for n in leftover if n.startswith("jitterline") and "-io" not in n}


def test_tune_gc_freezes_start_up_and_makes_collections_rarer() -> None:
    """In a child process: the tuning is process-wide, and a test must not impose it on
    the test runner."""
    code = (
        "import gc; from jitterline.runtime import GC_THRESHOLDS, tune_gc; "
        "before = gc.get_threshold(); tune_gc(); "
        "print(before[0] < gc.get_threshold()[0], gc.get_threshold() == GC_THRESHOLDS, "
        "gc.get_freeze_count() > 1000)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["True", "True", "True"]


@given(st.floats(0.0, 1e6), st.floats(0.0, 1e7))
def test_the_run_clock_reads_whole_microseconds_as_a_virtual_clock_would(
    start_s: float, elapsed_s: float
) -> None:
    """Each reading is a microsecond value exactly as a datetime-based virtual clock holds
    it, so a capture replays with the very same floats; it is ``round(x, 6)`` of the
    elapsed time except within a rounding error of a half microsecond."""
    readings = iter([start_s, start_s + elapsed_s])
    clock = RunClock(lambda: next(readings))
    now_s = clock()
    assert timedelta(seconds=now_s).total_seconds() == now_s == round(now_s, 6)
    exact = start_s + elapsed_s - start_s
    assert abs(now_s - exact) <= 0.5e-6 + 1e-9
    if abs(exact * 1e6 % 1 - 0.5) > 1e-3:
        assert now_s == round(exact, 6)

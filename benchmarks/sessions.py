"""How many live loopback streams one process holds: jitterline's runtime against a bare loop.

Run: ``python -m benchmarks sessions [--quick]`` or ``python benchmarks/sessions.py``.

A minimal appfoundry endpoint runs in a child process (a core of its own, no share of our
GIL): it answers ``initialize`` and every 20 ms builds one ``audio_chunk`` (L16, stamped
with the wall clock as it leaves) and broadcasts it to every connection, so that it costs
little per connection and the receivers, not the sender, are what runs out first. For
N = 10, 25, 50, ... the benchmark connects N streams, waits one second, then measures each
message's *arrival lag* for ``window_s``: the moment the receiver handles it
(``time.time()``) minus the sender's stamp. Two receivers are timed in the same run:

- **jitterline**: N dial-out sessions on one ``Runtime``, each with its own protocol
  object and full pipeline (decode, jitter buffer, latency window, adjuster, snapshots);
  lag is taken in the ``jitterline_raw_message`` hook, before the message is parsed, so
  a loop that falls behind shows as lag on the next messages;
- **bare**: N ``websockets`` asyncio clients doing ``recv`` + ``json.loads`` + base64
  decode and nothing else: the floor any Python client pays.

A receiver *holds* N when the p99 lag is <= 20 ms and every audio message the session
received was accounted for. The figure is the largest N held; ``sessions_ratio`` is
jitterline's over the bare loop's. The endpoint itself is part of both runs: if it falls
behind, both receivers see it, which is why the ratio, not the absolute N, is the claim.

jitterline's steps also print the jitter the median stream measured (``jitter_p99_ms``:
the p99 of its frames' transit deltas, RFC 3550's D): the sender sends every 20 ms and
loopback adds next to nothing, so this is mostly the receiver's own error in stamping
arrivals (``sessions_jitter_p99_ms``, at the largest N both held). Each step also prints
the receiver's CPU time per message over the window (this process, all threads; the
endpoint is another process). On a busy shared machine the largest N
held moves a lot between runs while the work per message does not, so
``sessions_cpu_ratio`` (jitterline's CPU per message over the bare loop's, at the largest
N both held) says where the cost stands when the held N cannot.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import multiprocessing.connection
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import websockets
import websockets.asyncio.client
import websockets.asyncio.server
import websockets.exceptions

from jitterline import Message, PipelineConfig, PluginHost, StreamInfo, hookimpl
from jitterline.codecs import encode
from jitterline.protocols.appfoundry import audio_chunk_message, initialize_ack_message
from jitterline.runtime import Runtime, tune_gc
from jitterline.transport import IOLoop

LAG_LIMIT_MS = 20.0
STEPS = (10, 25, 50, 75, 100, 125, 150, 175, 200, 250, 300, 400)
QUICK_STEPS = (10, 50, 100, 125, 150, 175, 200, 250)
_TIMESTAMP = '"timestamp":'


def _endpoint(conn: multiprocessing.connection.Connection) -> None:
    asyncio.run(_serve(conn))


async def _serve(conn: multiprocessing.connection.Connection) -> None:
    streaming: set[websockets.asyncio.server.ServerConnection] = set()
    audio = encode(np.zeros(160), "L16")

    async def handle(ws: websockets.asyncio.server.ServerConnection) -> None:
        try:
            async for text in ws:
                if isinstance(text, str) and '"initialize"' in text:
                    session = json.loads(text)["payload"].get("sessionId", "")
                    await ws.send(initialize_ack_message(session, now_wall_s=time.time()))
                    streaming.add(ws)
        except websockets.exceptions.ConnectionClosed:
            pass  # the receiver went away at the end of its step
        finally:
            streaming.discard(ws)

    async with websockets.asyncio.server.serve(handle, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn.send(f"ws://127.0.0.1:{port}/appfoundry/v1/applications/demo/conversations")
        loop = asyncio.get_running_loop()
        stop = loop.run_in_executor(None, conn.recv)
        start = loop.time()
        seq = 0
        while not stop.done():
            now = time.time()
            text = audio_chunk_message(audio, seq=seq, capture_wall_s=now, sent_wall_s=now)
            websockets.broadcast(streaming, text)
            seq += 1
            await asyncio.sleep(max(0.0, start + seq * 0.02 - loop.time()))


@dataclass(frozen=True, slots=True)
class Step:
    """One receiver at one N: p99 lag, whether every message was accounted for, and the
    CPU time this process spent per message received over the window."""

    p99_ms: float
    accounted: bool
    cpu_us_per_message: float
    jitter_p99_ms: float | None = None  # jitterline: what the median stream measured


def _step(
    lags_ms: list[float], accounted: bool, cpu_s: float, jitter_p99_ms: float | None = None
) -> Step:
    per_message = cpu_s / len(lags_ms) * 1e6 if lags_ms else float("inf")
    return Step(_p99(lags_ms), accounted, per_message, jitter_p99_ms)


def _sent_wall_s(text: str) -> float | None:
    """The envelope's send stamp, read without parsing the message (cheap, so the probe
    barely weighs on the receiver it measures)."""
    start = text.find(_TIMESTAMP)
    if start < 0:
        return None
    start += len(_TIMESTAMP)
    end = text.find(",", start)
    try:
        return float(text[start:end])
    except ValueError:
        return None


class LagProbe:
    """Records each raw message's arrival lag while ``recording``."""

    def __init__(self) -> None:
        self.recording = False
        self.lags_ms: list[float] = []

    @hookimpl
    def jitterline_raw_message(self, message: Message, stream: StreamInfo) -> None:
        if self.recording and isinstance(message.data, str):
            sent = _sent_wall_s(message.data)
            if sent is not None:
                self.lags_ms.append((time.time() - sent) * 1000.0)


def measure_jitterline(url: str, n: int, window_s: float) -> Step:
    """Lag, accounting and CPU over ``window_s`` with N streams (accounted: every stream
    balanced)."""
    probe = LagProbe()
    with IOLoop() as ioloop:
        runtime = Runtime(PluginHost(plugins=[probe]), ioloop=ioloop)
        streams = []
        for index in range(n):
            proto = runtime.host.dialects.get("appfoundry")(role="client", session_id=f"b{index}")
            streams.append(
                runtime.dial(url, proto, PipelineConfig(), max_attempts=1, ping_interval_s=0)
            )
        tune_gc()  # as jitterline serve / run do
        for _, session in streams:
            session.start()
        _settle(lambda: sum(s.diagnostics().connected for _, s in streams) == n)
        cpu_s = time.process_time()
        probe.recording = True
        time.sleep(window_s)
        probe.recording = False
        cpu_s = time.process_time() - cpu_s
        balanced = True
        jitters_ms = []
        for connection, session in streams:
            session.close(1.0)
            messages = session.diagnostics().messages_in
            stats, _ = runtime.call(connection.finish).primary
            balanced &= stats.frames.balanced and stats.frames.received == messages - 1
            if stats.latency.jitter_p99_ms is not None:
                jitters_ms.append(stats.latency.jitter_p99_ms)
    jitter_ms = float(np.median(jitters_ms)) if jitters_ms else None
    return _step(probe.lags_ms, balanced, cpu_s, jitter_ms)


def measure_bare(url: str, n: int, window_s: float) -> Step:
    """The same with N bare asyncio websockets clients in one loop."""
    return asyncio.run(_bare(url, n, window_s))


async def _bare(url: str, n: int, window_s: float) -> Step:
    lags_ms: list[float] = []
    state = {"recording": False, "connected": 0}

    async def client(index: int) -> None:
        async with websockets.asyncio.client.connect(url, max_size=None) as ws:
            hello = {"type": "initialize", "timestamp": time.time(), "payload": {}}
            hello["payload"] = {"sessionId": f"bare{index}", "metadata": {}}
            await ws.send(json.dumps(hello))
            state["connected"] += 1
            async for text in ws:
                document = json.loads(text)
                if document.get("type") != "audio_chunk":
                    continue
                base64.b64decode(document["payload"]["audio"])
                if state["recording"]:
                    lags_ms.append((time.time() - document["timestamp"]) * 1000.0)

    tasks = [asyncio.create_task(client(index)) for index in range(n)]
    deadline = time.monotonic() + 60.0
    while state["connected"] < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    cpu_s = time.process_time()
    state["recording"] = True
    await asyncio.sleep(window_s)
    state["recording"] = False
    cpu_s = time.process_time() - cpu_s
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return _step(lags_ms, state["connected"] == n, cpu_s)


def _settle(ready: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError("streams did not all connect within 60 s")
        time.sleep(0.05)
    time.sleep(1.0)


def _p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("inf")


Measure = Callable[[str, int, float], Step]


def largest_held(
    url: str, measure: Measure, steps: Sequence[int], window_s: float
) -> tuple[int, dict[int, Step]]:
    """The largest N held, and every step measured (up to the first not held)."""
    held = 0
    measured: dict[int, Step] = {}
    for n in steps:
        step = measured[n] = measure(url, n, window_s)
        ok = step.p99_ms <= LAG_LIMIT_MS and step.accounted
        verdict = "held" if ok else "NOT held"
        jitter = "" if step.jitter_p99_ms is None else f"  jitter p99 {step.jitter_p99_ms:.1f} ms"
        print(
            f"  N={n:4d}  p99 lag {step.p99_ms:8.1f} ms  accounted={step.accounted}  "
            f"CPU {step.cpu_us_per_message:6.1f} us/message{jitter}  {verdict}"
        )
        if not ok:
            break
        held = n
    return held, measured


def run(quick: bool = False) -> dict[str, float]:
    steps = QUICK_STEPS if quick else STEPS
    window_s = 3.0 if quick else 5.0
    parent, child = multiprocessing.get_context("spawn").Pipe()
    endpoint = multiprocessing.get_context("spawn").Process(target=_endpoint, args=(child,))
    endpoint.start()
    try:
        url = parent.recv()
        measure_bare(url, 10, 1.0)  # warm both ends up; not counted
        print("bare asyncio websockets loop (recv + json.loads + base64):")
        bare, bare_steps = largest_held(url, measure_bare, steps, window_s)
        print("jitterline runtime (full pipeline per stream):")
        ours, our_steps = largest_held(url, measure_jitterline, steps, window_s)
    finally:
        parent.send("stop")
        endpoint.join(10)
    ratio = ours / bare if bare else 0.0
    at = min(ours, bare) or steps[0]  # where both kept up (a backlog batches reads)
    our_cpu = our_steps[at].cpu_us_per_message
    bare_cpu = bare_steps[at].cpu_us_per_message
    print(f"largest N held (p99 lag <= {LAG_LIMIT_MS:.0f} ms): jitterline {ours}, bare {bare}")
    print(f"sessions_ratio: {ratio:.2f}")
    print(
        f"CPU per message at N={at}: jitterline {our_cpu:.1f} us, bare {bare_cpu:.1f} us; "
        f"sessions_cpu_ratio: {our_cpu / bare_cpu:.2f}"
    )
    jitter_ms = our_steps[at].jitter_p99_ms
    print(f"jitter p99 the median stream measured at N={at}: {jitter_ms} ms (loopback)")
    figures = {} if jitter_ms is None else {"sessions_jitter_p99_ms": jitter_ms}
    return figures | {
        "max_sessions": float(ours),
        "bare_max_sessions": float(bare),
        "sessions_ratio": ratio,
        "sessions_cpu_us_per_message": our_cpu,
        "sessions_bare_cpu_us_per_message": bare_cpu,
        "sessions_cpu_ratio": our_cpu / bare_cpu,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, shorter windows")
    run(parser.parse_args(argv).quick)


if __name__ == "__main__":
    threading.current_thread().name = "benchmark"
    main()

"""One dial-out session's loopback throughput against a bare websocket-client loop.

Run: ``python -m benchmarks throughput [--quick]`` or ``python benchmarks/throughput.py``.

An endpoint in a child process (a core of its own, no share of our GIL) answers the
client's first text message by writing, in one go, ``initialize`` plus ``MESSAGES`` 20 ms
L16 ``audio_chunk`` messages (about 570 bytes each) as WebSocket frames serialised before
the clock starts, so the sender costs next to nothing and the kernel socket buffer is
never empty: the receiver alone sets the pace. Every receiver is timed from its first
message to its last (``perf_counter`` on the thread that handles them), and each does
``json.loads`` of every text it gets, the least any client does with a message:

- **bare (fast)**: ``websocket.create_connection(url, skip_utf8_validation=True)`` and a
  ``recv`` + ``json.loads`` loop: the baseline of ``throughput_ratio``;
- **bare (validating)**: the same loop with websocket-client's default UTF-8 check, which
  it does in pure Python (reference only; full run);
- **session**: a ``Session`` on its own ``IOLoop`` whose ``on_message`` does the same
  ``json.loads`` and counts: the transport alone (socket, frame reader, UTF-8 decode,
  ``Message``, counters, callback). ``throughput_ratio`` is this over bare (fast);
- **pipeline**: a ``Runtime.dial`` session feeding the live pipeline (protocol parse,
  decode, jitter buffer, latency window, adjuster, snapshots, hooks), timed by a plugin's
  ``jitterline_raw_message``: ``pipeline_throughput_ratio``. A burst 400 times faster
  than real time overflows the jitter buffer; this measures the per-message cost, not
  playout quality.

Receivers are timed round-robin, best of ``repeats`` each, so a busy moment on this
shared 2-core machine weighs on all of them alike. Keep-alive pings are off on both ends
(``ping_interval_s=0``, the server's ``ping_interval=None``): a pong queued behind 11 MB of
burst reaches a slow receiver more than ``ping_timeout_s`` later, and the link would be
declared dead while it is delivering.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import websocket
import websockets.asyncio.server
import websockets.exceptions
from websockets.frames import Frame, Opcode

from jitterline import Message, PipelineConfig, PluginHost, StreamInfo, hookimpl
from jitterline.codecs import encode
from jitterline.protocols.appfoundry import (
    AppFoundryDialect,
    audio_chunk_message,
    initialize_ack_message,
)
from jitterline.runtime import Runtime
from jitterline.transport import IOLoop, Session

MESSAGES = 20_000
"""Audio messages per run, as in the issue's measurement."""
_WAIT_S = 120.0
_HELLO = json.dumps({"type": "initialize", "timestamp": 0.0, "payload": {"sessionId": "bare"}})


class Timing:
    """First and last arrival (``perf_counter``) and the count, set by the receiving thread."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first_s = 0.0
        self.last_s = 0.0
        self.done = threading.Event()

    def tick(self) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first_s = now
        self.count += 1
        self.last_s = now
        if self.count == self.expected:
            self.done.set()

    def rate(self) -> float:
        if self.count < self.expected:
            raise RuntimeError(f"received {self.count} of {self.expected} messages in {_WAIT_S} s")
        return (self.count - 1) / (self.last_s - self.first_s)


# -- the endpoint (child process) ---------------------------------------------------------


def _endpoint(conn: multiprocessing.connection.Connection, count: int) -> None:
    asyncio.run(_serve(conn, _burst(count)))


def _burst(count: int) -> bytes:
    """``initialize`` then ``count`` audio chunks, as unmasked server text frames."""
    audio = encode(9830 * np.sin(2 * np.pi * 440 * np.arange(160) / 8000), "L16")
    texts = [initialize_ack_message("bench", now_wall_s=time.time())]
    for seq in range(count):
        now = time.time()
        texts.append(audio_chunk_message(audio, seq=seq, capture_wall_s=now, sent_wall_s=now))
    return b"".join(Frame(Opcode.TEXT, t.encode()).serialize(mask=False) for t in texts)


async def _serve(conn: multiprocessing.connection.Connection, burst: bytes) -> None:
    async def handle(ws: websockets.asyncio.server.ServerConnection) -> None:
        try:
            async for text in ws:
                if isinstance(text, str) and '"initialize"' in text:
                    ws.transport.write(burst)  # bypasses the library: bytes already framed
        except websockets.exceptions.ConnectionClosed:
            pass  # the receiver closes once it counted everything

    async with websockets.asyncio.server.serve(
        handle, "127.0.0.1", 0, compression=None, ping_interval=None
    ) as srv:
        port = srv.sockets[0].getsockname()[1]
        conn.send(f"ws://127.0.0.1:{port}/appfoundry/v1/applications/demo/conversations")
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)


# -- the receivers ------------------------------------------------------------------------


def bare(url: str, expected: int, *, validate: bool) -> float:
    """websocket-client's blocking ``recv`` + ``json.loads``, nothing else."""
    timing = Timing(expected)
    ws = websocket.create_connection(url, skip_utf8_validation=not validate, timeout=_WAIT_S)
    try:
        ws.send(_HELLO)
        while timing.count < expected:
            json.loads(ws.recv())
            timing.tick()
    finally:
        ws.close()
    return timing.rate()


def session(url: str, expected: int, ioloop: IOLoop) -> float:
    """A dial-out ``Session`` delivering to a callback that parses and counts."""
    timing = Timing(expected)

    def on_message(message: Message) -> None:
        json.loads(message.data)
        timing.tick()

    dialect = AppFoundryDialect(role="client", session_id="bench", wall_clock=time.time)
    with Session(
        url,
        dialect=dialect,
        on_message=on_message,
        ioloop=ioloop,
        max_attempts=1,
        ping_interval_s=0,
    ) as live:
        timing.done.wait(_WAIT_S)
        live.close(1.0)
    return timing.rate()


class _Arrivals:
    def __init__(self, timing: Timing) -> None:
        self.timing = timing

    @hookimpl
    def jitterline_raw_message(self, message: Message, stream: StreamInfo) -> None:
        self.timing.tick()


def pipeline(url: str, expected: int, ioloop: IOLoop) -> float:
    """A ``Runtime.dial`` stream: the session feeding the whole live pipeline."""
    timing = Timing(expected)
    runtime = Runtime(PluginHost(plugins=[_Arrivals(timing)]), ioloop=ioloop)
    proto = runtime.host.dialects.get("appfoundry")(role="client", session_id="bench")
    connection, live = runtime.dial(
        url, proto, PipelineConfig(), max_attempts=1, ping_interval_s=0
    )
    live.start()
    timing.done.wait(_WAIT_S)
    live.close(1.0)
    runtime.call(connection.finish)
    return timing.rate()


# -- the run --------------------------------------------------------------------------------


def _best(rates: dict[str, list[float]], name: str, measure: Callable[[], float]) -> None:
    rates.setdefault(name, []).append(measure())


def measure_all(url: str, expected: int, repeats: int, validating: bool) -> dict[str, float]:
    rates: dict[str, list[float]] = {}
    with IOLoop(name="bench-io") as ioloop:
        bare(url, expected, validate=False)  # warm both ends up; not counted
        for _ in range(repeats):
            _best(rates, "bare", lambda: bare(url, expected, validate=False))
            _best(rates, "session", lambda: session(url, expected, ioloop))
            _best(rates, "pipeline", lambda: pipeline(url, expected, ioloop))
        if validating:
            _best(rates, "bare_validating", lambda: bare(url, expected, validate=True))
    return {name: max(values) for name, values in rates.items()}


def run(quick: bool = False) -> dict[str, float]:
    repeats = 2 if quick else 5
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    endpoint = context.Process(target=_endpoint, args=(child, MESSAGES))
    endpoint.start()
    try:
        url = parent.recv()
        best = measure_all(url, MESSAGES + 1, repeats, validating=not quick)
    finally:
        parent.send("stop")
        endpoint.join(10)
    base = best["bare"]
    print(f"throughput: {MESSAGES} audio_chunk messages (~570 B) in one burst, best of {repeats}")
    print(f"{'receiver':44s} {'msg/s':>9s} {'/ bare':>7s}")
    labels = {
        "bare": "bare websocket-client loop, UTF-8 check off",
        "bare_validating": "bare websocket-client loop, UTF-8 check on",
        "session": "jitterline Session (transport alone)",
        "pipeline": "jitterline Session + live pipeline",
    }
    for name, label in labels.items():
        if name in best:
            print(f"{label:44s} {best[name]:9.0f} {best[name] / base:7.2f}")
    figures = {
        "throughput_ratio": best["session"] / base,
        "throughput_pipeline_ratio": best["pipeline"] / base,
        "throughput_bare_msg_per_s": base,
        "throughput_session_msg_per_s": best["session"],
        "throughput_pipeline_msg_per_s": best["pipeline"],
    }
    if "bare_validating" in best:
        figures["throughput_bare_validating_msg_per_s"] = best["bare_validating"]
    print(f"throughput_ratio (transport alone / bare fast): {figures['throughput_ratio']:.2f}")
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two repeats, no validating loop")
    run(parser.parse_args(argv).quick)


if __name__ == "__main__":
    main()

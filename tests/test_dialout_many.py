"""Many dial-out sessions in one process against one emulator: threads stay constant,
descriptors grow by the sockets alone, and every message reaches every session.

The emulator broadcasts one live stream to every connection that sent ``initialize``. The
sessions connect first (their dialect does not greet), then all greet at once, so each
joins the stream within a few frames of its start; what each one must receive is the
stream from the frame it joined at to the last one, without a gap, then the 1000 close.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from websocket import ABNF

from jitterline.emulator import Emulator
from jitterline.frames import ConnectionEvent, Message
from jitterline.transport import IOLoop, Session
from transport_testkit import ClientDialect, RawPeer, open_fds, server_frame, settled_fds

DURATION_S = 1.0
FRAME_MS = 20.0
TOTAL_FRAMES = round(DURATION_S * 1000 / FRAME_MS)
WAIT_S = 30.0


@pytest.fixture(scope="module")
def ioloop() -> Iterator[IOLoop]:
    with IOLoop(name="test-many-io") as loop:
        yield loop


class Tally:
    """Counts connected sessions; each session's messages, kept on the loop thread."""

    def __init__(self) -> None:
        self.connected = 0
        self.cond = threading.Condition()

    def on_event(self, event: ConnectionEvent) -> None:
        if event.kind == "connected":
            with self.cond:
                self.connected += 1
                self.cond.notify_all()


@dataclass(frozen=True, slots=True)
class Run:
    threads_added: int
    io_threads: int
    fds_added: int
    received: list[list[str]]
    sessions: list[Session]


def run_sessions(count: int, ioloop: IOLoop) -> Run:
    tally = Tally()
    received: list[list[str]] = [[] for _ in range(count)]
    with Emulator(duration_s=DURATION_S, frame_ms=FRAME_MS, require_token=False) as emu:
        threads_before = set(threading.enumerate())
        fds_before = settled_fds()
        dialects = [ClientDialect(f"call-{n}", greet=False) for n in range(count)]
        sessions = [
            Session(
                emu.ws_url,
                dialect=dialects[n],
                on_message=_collector(received[n]),
                on_event=tally.on_event,
                ioloop=ioloop,
                session_id=f"call-{n}",
            )
            for n in range(count)
        ]
        try:
            for session in sessions:
                session.start()
            with tally.cond:
                assert tally.cond.wait_for(lambda: tally.connected == count, WAIT_S)
            threads_now = set(threading.enumerate())
            threads_added = len(threads_now - threads_before)
            io_threads = sum(t.name.startswith(ioloop.name) for t in threads_now)
            fds_added = open_fds() - fds_before
            for session, dialect in zip(sessions, dialects, strict=True):
                assert session.send(dialect.initialize())
            for session in sessions:
                assert session.wait(WAIT_S), f"{session!r} did not see the stream end"
        finally:
            for session in sessions:
                session.close()
        assert emu.counters.connections == count
    return Run(threads_added, io_threads, fds_added, received, sessions)


def _collector(into: list[str]) -> Callable[[Message], None]:
    def on_message(message: Message) -> None:
        assert isinstance(message.data, str)
        into.append(message.data)

    return on_message


def audio_seqs(texts: list[str]) -> list[int]:
    documents = [json.loads(text) for text in texts]
    return [doc["payload"]["seq"] for doc in documents if doc["type"] == "audio_chunk"]


def assert_whole_stream_from_join(run: Run) -> None:
    for texts, session in zip(run.received, run.sessions, strict=True):
        assert json.loads(texts[0])["type"] == "initialize"  # the emulator's answer
        seqs = audio_seqs(texts)
        assert seqs, f"{session.session_id} received no audio"
        assert seqs == list(range(seqs[0], TOTAL_FRAMES)), session.session_id
        diagnostics = session.diagnostics()
        assert diagnostics.messages_in == len(texts)
        assert diagnostics.reconnects == 0
        assert session.outcome is None  # ended by the stream's 1000 close


def test_threads_and_descriptors_do_not_grow_with_the_number_of_sessions(
    ioloop: IOLoop,
) -> None:
    small = run_sessions(20, ioloop)
    large = run_sessions(200, ioloop)
    assert small.threads_added == large.threads_added == 0
    assert small.io_threads == large.io_threads == 1 + ioloop.workers
    # Each session is one socket here and one on the emulator's side of the loopback.
    assert small.fds_added - 2 * 20 == large.fds_added - 2 * 200
    assert_whole_stream_from_join(small)
    assert_whole_stream_from_join(large)


def test_a_slow_stream_does_not_hold_back_the_arrival_stamps_of_the_others(
    ioloop: IOLoop,
) -> None:
    """Three messages on three connections wait while the loop is busy; each stream's
    processing then takes 50 ms. Their arrival stamps are taken as the sockets are read,
    all before any processing, so they lie within a few ms of each other (processed
    inline, each would come 50 ms after the one before)."""
    count, processing_s = 3, 0.05
    send = threading.Event()
    stamps: list[float] = []
    connected = threading.Semaphore(0)

    def script(connection: socket.socket, number: int) -> None:
        if send.wait(WAIT_S):
            connection.sendall(server_frame(ABNF.OPCODE_TEXT, f"frame {number}".encode()))
        peer.stop.wait(WAIT_S)

    def on_message(message: Message) -> None:
        stamps.append(message.arrival_s)
        time.sleep(processing_s)  # a stream's pipeline, very slow

    def on_event(event: ConnectionEvent) -> None:
        if event.kind == "connected":
            connected.release()

    with RawPeer(script) as peer:
        sessions = [
            Session(
                peer.url,
                dialect=ClientDialect(greet=False),
                on_message=on_message,
                on_event=on_event,
                ioloop=ioloop,
                ping_interval_s=0,
            )
            for _ in range(count)
        ]
        try:
            for session in sessions:
                session.start()
            for _ in range(count):
                assert connected.acquire(timeout=WAIT_S)
            held, holding = threading.Event(), threading.Event()

            def hold() -> None:
                holding.set()
                held.wait(2.0)

            ioloop.call_soon(hold)  # the loop is busy elsewhere ...
            assert holding.wait(WAIT_S)
            send.set()  # ... while every peer sends
            time.sleep(0.3)
            held.set()
            deadline = time.monotonic() + WAIT_S
            while len(stamps) < count and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            for session in sessions:
                session.close()
    assert len(stamps) == count
    assert max(stamps) - min(stamps) < processing_s / 2

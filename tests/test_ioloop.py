"""The shared I/O loop, and the socket facts the dial-out shell's reading is built on: a
non-blocking socket raises ``BlockingIOError`` (TCP) or ``ssl.SSLWantReadError`` (TLS)
instead of waiting, the frame reader resumes where the bytes stopped, and TLS holds
decrypted bytes where epoll cannot see them."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websocket import ABNF

from jitterline.errors import ConfigError
from jitterline.transport import IOLoop
from jitterline.transport.framing import FrameReader
from jitterline.transport.ioloop import _BACKLOG as IOLOOP_BACKLOG
from jitterline.transport.ioloop import _YIELD_EVERY as IOLOOP_YIELD_EVERY
from jitterline.transport.ioloop import EXECUTOR_WORKERS
from transport_testkit import server_frame, tls_client_context, tls_server_context

# -- the loop ------------------------------------------------------------------------------


def test_the_loop_runs_callbacks_and_coroutines_on_its_named_thread() -> None:
    seen: list[str] = []

    def note() -> None:
        seen.append(threading.current_thread().name)

    async def where() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    with IOLoop(name="test-io") as loop:
        loop.call_soon_threadsafe(note)
        assert loop.run(where()).result(5.0) == "test-io"  # runs after note: FIFO
    assert seen == ["test-io"]


def test_threads_are_the_loop_and_its_workers_started_up_front() -> None:
    before = threading.active_count()
    with IOLoop(name="test-io-count", workers=3) as loop:
        names = sorted(t.name for t in threading.enumerate() if t.name.startswith("test-io-count"))
        assert threading.active_count() == before + 1 + 3
        futures = [loop.executor.submit(threading.get_ident) for _ in range(30)]
        assert len({f.result(5.0) for f in futures}) <= 3
        assert threading.active_count() == before + 1 + 3  # the load added no thread
    assert names[0] == "test-io-count"
    assert len(names) == 4


def test_a_stopped_loop_refuses_work_and_stops_twice_quietly() -> None:
    loop = IOLoop(name="test-io-stop").start()
    loop.stop()
    loop.stop()
    loop.call_soon_threadsafe(lambda: None)  # ignored, no error

    async def nothing() -> None:
        return None

    with pytest.raises(ConfigError, match="not running"):
        loop.run(nothing())
    with pytest.raises(ConfigError, match="starts once"):
        loop.start()


def test_the_shared_loop_is_one_per_process() -> None:
    first = IOLoop.shared()
    assert IOLoop.shared() is first
    assert first.running
    assert first.workers == EXECUTOR_WORKERS


# -- websocket-client's frame reader over non-blocking sockets -----------------------------


def read_frame(sock: socket.socket, frames: FrameReader) -> bytes:
    """One payload as the shell reads it: parse what is in, else one ``recv`` (which
    raises rather than waits on a non-blocking socket) and look again."""
    while True:
        if frames.header():
            payload = frames.payload()
            if payload is not None:
                return payload
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("peer closed")
        frames.feed(data)


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair()
    client.setblocking(False)
    yield client, server
    client.close()
    server.close()


def test_reading_raises_blocking_io_error_and_resumes_mid_header_and_payload(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = tcp_pair
    frames = FrameReader()
    wire = server_frame(ABNF.OPCODE_TEXT, b"x" * 300)  # 2 + 2 header bytes, 300 payload
    for cut in (1, 3, 100):  # mid header, mid extended length, mid payload
        server.sendall(wire[:cut])
        wire = wire[cut:]
        with pytest.raises(BlockingIOError):
            read_frame(client, frames)
        assert frames.partial
    server.sendall(wire)
    assert read_frame(client, frames) == b"x" * 300
    assert not frames.partial  # ready for the next frame


def test_the_length_is_known_before_any_payload_byte_is_in(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """What the size cap relies on: the header announces the length on its own."""
    client, server = tcp_pair
    frames = FrameReader()
    wire = server_frame(ABNF.OPCODE_BINARY, b"\0" * 70_000)
    server.sendall(wire[:10])  # the header and its 64-bit length only
    frames.feed(client.recv(65536))
    assert frames.header()
    assert frames.length == 70_000
    assert frames.payload() is None


@pytest.fixture
def tls_pair(tmp_path: Path) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    """A TLS connection over a socket pair, verified against the test certificate."""
    raw_client, raw_server = socket.socketpair()
    server_side: list[ssl.SSLSocket] = []

    def accept() -> None:
        server_side.append(tls_server_context(tmp_path).wrap_socket(raw_server, server_side=True))

    thread = threading.Thread(target=accept, name="test-tls-accept")
    thread.start()
    client = tls_client_context(tmp_path).wrap_socket(raw_client, server_hostname="127.0.0.1")
    thread.join(5.0)
    client.setblocking(False)
    yield client, server_side[0]
    client.close()
    server_side[0].close()


def test_reading_raises_ssl_want_read_and_resumes_over_tls(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket],
) -> None:
    client, server = tls_pair
    frames = FrameReader()
    wire = server_frame(ABNF.OPCODE_TEXT, b"y" * 5000)
    server.sendall(wire[:2])
    with pytest.raises(ssl.SSLWantReadError):
        read_frame(client, frames)
    server.sendall(wire[2:2000])
    with pytest.raises(ssl.SSLWantReadError):
        read_frame(client, frames)
    server.sendall(wire[2000:])
    assert read_frame(client, frames) == b"y" * 5000


def test_tls_holds_decrypted_bytes_that_the_socket_does_not_show(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket],
) -> None:
    """Why the shell reads TLS until the socket would block instead of once per event:
    after a small read the rest of a TLS record waits in ``pending()``, not in the kernel."""
    client, server = tls_pair
    wire = server_frame(ABNF.OPCODE_TEXT, b"a") * 100
    server.sendall(wire)
    while True:
        try:
            first = client.recv(3)
            break
        except ssl.SSLWantReadError:
            threading.Event().wait(0.01)
    assert first == wire[:3]
    assert client.pending() > 0
    readable, _, _ = select.select([client], [], [], 0)
    assert readable == []  # epoll/select would never wake us for these bytes
    frames = FrameReader()
    frames.feed(first)
    rest = [read_frame(client, frames) for _ in range(100)]
    assert rest == [b"a"] * 100


def test_stop_from_a_callback_ends_the_loop_thread_without_joining_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = IOLoop(name="test-io-self-stop").start()
    loop.call_soon_threadsafe(loop.stop)
    for _ in range(500):
        if not any(t.name == "test-io-self-stop" for t in threading.enumerate()):
            break
        threading.Event().wait(0.01)
    assert not any(t.name == "test-io-self-stop" for t in threading.enumerate())
    assert "Exception in callback" not in caplog.text  # stop() did not try to join itself
    loop.stop()


def test_call_soon_runs_in_order_from_the_loop_and_from_other_threads() -> None:
    with IOLoop(name="test-io-soon") as loop:
        order: list[str] = []
        done = threading.Event()

        def on_loop() -> None:
            loop.call_soon(order.append, "first")
            loop.call_soon(order.append, "second")
            loop.call_soon(done.set)

        loop.call_soon(on_loop)  # from this thread: the thread-safe path
        assert done.wait(5.0)
        assert order == ["first", "second"]


# -- reading before processing: defer ---------------------------------------------------


@contextlib.contextmanager
def readable_pairs(
    loop: IOLoop, count: int
) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    pairs = [socket.socketpair() for _ in range(count)]
    try:
        yield pairs
    finally:
        for reader, writer in pairs:
            with contextlib.suppress(RuntimeError, ValueError):
                loop.loop.remove_reader(reader.fileno())
            reader.close()
            writer.close()


def test_deferred_work_runs_after_every_socket_readable_at_the_time_is_read() -> None:
    with IOLoop(name="test-io-defer") as loop, readable_pairs(loop, 3) as pairs:
        log: list[str] = []
        done = threading.Event()

        def process(name: str) -> None:
            log.append(f"process {name}")
            time.sleep(0.01)  # a stream's pipeline, slow
            if len(log) == 2 * len(pairs):
                done.set()

        def on_readable(name: str, reader: socket.socket) -> None:
            reader.recv(64)
            log.append(f"read {name}")
            loop.defer(process, name)

        def arm_and_send() -> None:  # on the loop: all three are readable at its next look
            for number, (reader, writer) in enumerate(pairs):
                loop.loop.add_reader(reader.fileno(), on_readable, str(number), reader)
                writer.send(b"frame")

        loop.call_soon(arm_and_send)
        assert done.wait(5.0)
    assert log == ["read 0", "read 1", "read 2", "process 0", "process 1", "process 2"]


def deferred_steps_with_a_frame_after_step_2(name: str, total: int) -> list[str]:
    """Defer ``total`` steps at once; step 2 writes to a watched socket. The log of the
    steps and of the socket's read, in the order they ran."""
    with IOLoop(name=name) as loop, readable_pairs(loop, 1) as pairs:
        (reader, writer), log, done = pairs[0], [], threading.Event()

        def step(number: int) -> None:
            log.append(f"step {number}")
            if number == 2:
                writer.send(b"frame")  # arrives while the other steps still wait
            if number == total - 1:
                done.set()

        def on_readable() -> None:
            reader.recv(64)
            log.append("read")

        def start() -> None:
            loop.loop.add_reader(reader.fileno(), on_readable)
            for number in range(total):
                loop.defer(step, number)

        loop.call_soon(start)
        assert done.wait(5.0)
    assert [entry for entry in log if entry != "read"] == [f"step {n}" for n in range(total)]
    return log


def test_deferred_work_gives_way_to_a_socket_that_becomes_readable() -> None:
    log = deferred_steps_with_a_frame_after_step_2("test-io-yield", 30)
    # Read within one round of deferred steps after it arrived, not after all 30.
    assert log.index("read") <= log.index("step 2") + 1 + IOLOOP_YIELD_EVERY


def test_run_deferred_runs_the_rest_now_in_order_and_a_failing_callback_costs_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with IOLoop(name="test-io-flush") as loop:
        log: list[str] = []
        done = threading.Event()

        def fail() -> None:
            raise ValueError("a bug in one stream")

        def on_loop() -> None:
            loop.defer(log.append, "a")
            loop.defer(fail)
            loop.defer(log.append, "b")
            loop.run_deferred()  # as a connection's end does before its events
            log.append("after the flush")
            done.set()

        loop.call_soon(on_loop)
        assert done.wait(5.0)
    assert log == ["a", "b", "after the flush"]
    assert "a deferred callback failed" in caplog.text


def test_a_backlog_past_its_bound_is_worked_down_before_sockets_are_read_again() -> None:
    """A loop that cannot keep up reads as fast as it processes, not faster."""
    total = IOLOOP_BACKLOG + 40
    log = deferred_steps_with_a_frame_after_step_2("test-io-backlog", total)
    waiting_when_read = total - log.index("read")
    assert IOLOOP_BACKLOG - IOLOOP_YIELD_EVERY <= waiting_when_read < IOLOOP_BACKLOG

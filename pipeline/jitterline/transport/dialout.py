"""The dial-out I/O shell: websocket-client sockets multiplexed on one asyncio loop.

``DialOut`` moves bytes and reads the clock; every decision is ``core.SessionCore``'s.

Connecting blocks (DNS, TCP, TLS, websocket-client's HTTP upgrade, a token request), so it
runs as one job on the ``IOLoop``'s bounded executor. We open the TCP and TLS layers
ourselves and hand the socket to ``WebSocket.connect(socket=...)``: a duplicate of the
descriptor lets ``close()`` shut the connection down from another thread at any step
(connect, TLS, upgrade), and ``close()`` never waits for the job: a late result is closed
and discarded.

Once upgraded, the socket is made non-blocking and registered with ``loop.add_reader``,
and we read the frames ourselves (``framing.FrameReader``, a quarter of the instructions
of websocket-client's frame reader). Each readiness reads what the socket has (TLS:
until it would block, which also drains bytes TLS decrypted ahead, ``SSLSocket.pending()``,
invisible to epoll) and hands over every complete frame; a partial frame waits in the reader
for the next readiness. A frame's header is looked at before its payload is needed, so that
``max_message_bytes`` is enforced before a byte of an oversized payload is read past the
current read, and a frame whose first byte arrived must be complete within
``frame_timeout_s``.

Text payloads are decoded strictly with ``bytes.decode("utf-8")``, which validates in C;
websocket-client's own validation is pure Python and made reads about 7x slower (0.34 s per
MB), which is why its ``WebSocket`` is created with ``skip_utf8_validation=True``.

Writes never block the loop either: frames are built with ``ABNF.create_frame(...).format()``
and written until the socket would block; the rest waits in a buffer drained by
``add_writer``. Callbacks (``on_message``, ``on_event``) run on the loop thread and must
return quickly: they delay every session on the loop. ``on_message`` runs after every
socket readable at the time has been read (``IOLoop.defer``), so that the arrival stamps
are not held back by other streams' processing; a connection's events come after the
messages read before them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import websocket
from websocket import ABNF, WebSocketBadStatusException, WebSocketException

from ..errors import JitterlineError, TransportError
from ..frames import ConnectionEvent, Message
from ..protocols import Dialect
from .backoff import parse_retry_after
from .core import (
    Action,
    Connect,
    ConnectFailed,
    Disconnect,
    Dropped,
    Ending,
    Fault,
    HandshakeRefused,
    PeerClosed,
    SendClose,
    SendPing,
    SessionCore,
    SessionDiagnostics,
    TokenFailed,
    Violation,
)
from .framing import FrameReader, check_frame
from .ioloop import IOLoop
from .tokens import TokenProvider

__all__ = ["IO_TIMEOUT_S", "READ_CHUNK_BYTES", "DialOut"]

logger = logging.getLogger(__name__)

IO_TIMEOUT_S = 10.0
"""Timeout of each blocking connect step (TCP connect, TLS handshake, HTTP upgrade)."""

READ_CHUNK_BYTES = 65536
"""Bytes asked of the socket per read: several frames at once, and the most read past a
frame header that announced an oversized message."""

_WRITE_CHUNK_BYTES = 65536
_READ_BUDGET_FRAMES = 256  # frames per readiness before other sessions get a turn
_FIN = 0x80
_CONTROL = 0x08  # the opcode bit of close, ping, pong (RFC 6455 section 5.5)
_OPCODE = 0x0F


class _PeerEOF(Exception):
    """The peer closed the TCP connection (recv returned no bytes)."""


class _Abort:
    """The socket of a connect job in flight, so ``close()`` can cut it from any thread.

    The job owns the duplicate descriptor (it closes it); other threads only call
    ``shutdown``, which ends a blocked connect, TLS handshake or read at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handle: socket.socket | None = None
        self.cancelled = False

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.cancelled:
                raise ConnectionAbortedError("the session closed while connecting")
            self._handle = sock.dup()

    def release(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._handle is not None:
                with contextlib.suppress(OSError):
                    self._handle.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """What a connect job produced: an open WebSocket, or the fault that stopped it."""

    ws: websocket.WebSocket | None
    fault: Fault | None
    token_fetched: bool


class _Link:
    """One upgraded connection: its socket, frame reader and unwritten bytes."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        # TLS decrypts ahead into the SSL object, where epoll cannot see it: read until
        # the socket would block. Over plain TCP a short read emptied the kernel's buffer
        # and epoll (level-triggered) says when more came: one recv per readiness, not a
        # second one failing with BlockingIOError (a syscall and an exception, ~1 us).
        self.drain = isinstance(sock, ssl.SSLSocket)
        self.frames = FrameReader()
        self.stalling = False
        """The core was told a frame is begun (its ``frame_timeout_s`` runs)."""
        self.message: list[bytes] = []
        self.message_opcode = 0
        self.message_bytes = 0
        self.unwritten = bytearray()


class DialOut:
    """One dial-out connection kept alive by a ``SessionCore``; see the module docstring.

    ``start``, ``send``, ``close``, ``diagnostics`` are thread-safe; everything else runs
    on the loop thread. ``ended`` is set after the final "closed" event went out.
    """

    def __init__(
        self,
        url: str,
        *,
        core: SessionCore,
        dialect: Dialect,
        on_message: Callable[[Message], None],
        on_event: Callable[[ConnectionEvent], None] | None,
        tokens: TokenProvider | None,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        ioloop: IOLoop | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._url = url
        self._core = core
        self._dialect = dialect
        self._on_message = on_message
        self._on_event = on_event
        self._tokens = tokens
        self._clock = clock
        self._wall_clock = wall_clock
        self._given_ioloop = ioloop
        self._ioloop: IOLoop | None = None
        self._lock = threading.Lock()
        self._tls = tls_context
        self._link: _Link | None = None
        self._job: asyncio.Future[_Attempt] | None = None
        self._abort: _Abort | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at_s: float | None = None
        self._kicked = False
        self._started = False
        self._warned: set[str] = set()
        self.ended = threading.Event()

    # -- any thread ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start on the given loop, or on ``IOLoop.shared()`` (started by the first
        session, so merely building sessions spawns no thread)."""
        with self._lock:
            self._core.start(self._clock())
            self._started = True
            self._ioloop = self._given_ioloop or IOLoop.shared()
        self._kick()

    def in_loop_thread(self) -> bool:
        return self._ioloop is not None and self._ioloop.in_loop_thread()

    @property
    def _io(self) -> IOLoop:
        assert self._ioloop is not None, "used before start()"
        return self._ioloop

    def send(self, data: str | bytes) -> bool:
        with self._lock:
            accepted = self._core.send(data)
        if accepted:
            self._kick()
        return accepted

    def close(self, close_wait_s: float) -> None:
        """Mark the session closed now; the loop finishes the close handshake (if a link is
        up) within ``close_wait_s``. An in-flight connect job is cut, not awaited."""
        with self._lock:
            self._core.close_wait_s = close_wait_s
            self._core.close(self._clock())
            started = self._started
            abort = self._abort
        if abort is not None:
            abort.cancel()
        if started:
            self._kick()
        else:  # never started: nothing runs on the loop, so finish here
            self._publish()

    def diagnostics(self) -> SessionDiagnostics:
        with self._lock:
            return self._core.diagnostics(self._clock())

    @property
    def outcome(self) -> JitterlineError | None:
        with self._lock:
            return self._core.outcome

    # -- the loop: driving the core ------------------------------------------------------------

    def _kick(self) -> None:
        """Have the loop drive soon (once, however many threads ask); before ``start()``
        there is nothing to drive: ``start`` kicks."""
        with self._lock:
            ioloop = self._ioloop
            if ioloop is None or self._kicked:
                return
            self._kicked = True
        ioloop.call_soon(self._guarded, self._kicked_drive)

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """Every loop entry goes through here: a bug (ours, or a dialect's) must end this
        session with an error, not leave ``wait()`` hanging or other sessions stalled."""
        try:
            step(*args)
        except Exception as exc:
            logger.exception("session %s failed unexpectedly", self._core.label)
            self._teardown()
            error = TransportError(
                f"session {self._core.label} failed unexpectedly ({type(exc).__name__}); "
                "see the log"
            )
            with self._lock:
                self._core.fail(error, self._clock())
            self._publish()

    def _kicked_drive(self) -> None:
        with self._lock:
            self._kicked = False
        self._drive()

    def _drive(self) -> None:
        """Write what may go, carry out what the core asks, publish its events, re-arm."""
        while True:
            now_s = self._clock()
            link = self._link
            if link is not None:
                with self._lock:
                    items = self._core.take_sendable(now_s, len(link.unwritten))
                for data in items:
                    self._write_message(link, data)
            with self._lock:
                actions = self._core.poll(now_s)
            if not actions:
                break
            for action in actions:
                self._carry_out(action, now_s)
        self._publish()

    def _carry_out(self, action: Action, now_s: float) -> None:
        link = self._link
        if isinstance(action, Connect):
            self._connect(action.refresh_token)
        elif isinstance(action, Disconnect):
            self._lose(action.ending)
        elif link is not None and isinstance(action, SendPing):
            self._write(link, ABNF.create_frame(action.payload, ABNF.OPCODE_PING).format())
        elif link is not None and isinstance(action, SendClose):
            payload = action.code.to_bytes(2, "big") + action.reason.encode()
            self._write(link, ABNF.create_frame(payload, ABNF.OPCODE_CLOSE).format())

    def _publish(self) -> None:
        with self._lock:
            events = self._core.events()
            ended = self._core.ended
            deadline_s = self._core.next_deadline_s()
        if events and self.in_loop_thread():
            self._io.run_deferred()  # the messages read before these events go first
        for event in events:
            self._emit(event)
        if ended:
            self._cancel_timer()
            if self._link is not None:
                self._teardown()
            self.ended.set()
        else:
            self._arm(deadline_s)

    def _arm(self, deadline_s: float | None) -> None:
        if deadline_s == self._timer_at_s:
            return
        self._cancel_timer()
        if deadline_s is not None:
            delay_s = max(0.0, deadline_s - self._clock())
            self._timer = self._io.loop.call_later(delay_s, self._guarded, self._on_timer)
            self._timer_at_s = deadline_s

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at_s = None
        self._drive()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at_s = None

    # -- connecting ---------------------------------------------------------------------------

    def _connect(self, refresh_token: bool) -> None:
        abort = _Abort()
        with self._lock:
            if self._core.state != "connecting":
                return  # closed by another thread since the core asked
            self._abort = abort
        job = self._io.loop.run_in_executor(None, self._open, refresh_token, abort)
        self._job = job
        job.add_done_callback(functools.partial(self._guarded, self._opened))

    def _opened(self, job: asyncio.Future[_Attempt]) -> None:
        with self._lock:
            self._abort = None
        if job.cancelled():
            return  # the loop is shutting down
        error = job.exception()
        if error is not None:  # a bug in the job: fail the attempt, do not hang the session
            logger.error("session %s: connect job failed", self._core.label, exc_info=error)
            attempt = _Attempt(None, ConnectFailed(_describe(error)), token_fetched=False)
        else:
            attempt = job.result()
        now_s = self._clock()
        with self._lock:
            current = job is self._job and self._core.state == "connecting"
            if current and attempt.token_fetched:
                self._core.token_fetched(now_s)
            if current and attempt.fault is not None:
                self._core.attempt_failed(attempt.fault, now_s)
        self._job = None
        if attempt.ws is not None:
            sock = attempt.ws.sock
            if current and sock is not None:
                self._link_up(sock, now_s)
            elif sock is not None:
                sock.close()  # the session closed while this job ran: discard it
        self._drive()

    def _open(self, refresh_token: bool, abort: _Abort) -> _Attempt:
        """The blocking connect job (executor thread): token, TCP, TLS, HTTP upgrade."""
        token: str | None = None
        fetched = False
        tokens = self._tokens
        if tokens is not None:
            if refresh_token:
                tokens.invalidate()
            before = tokens.refreshes
            try:
                token = tokens.token()
            except TransportError as exc:
                return _Attempt(None, TokenFailed(exc), tokens.refreshes != before)
            fetched = tokens.refreshes != before
        try:
            ws = self._handshake(token, abort)
        except WebSocketBadStatusException as exc:
            retry_after_s = parse_retry_after(_header(exc, "retry-after"), self._wall_clock())
            return _Attempt(None, HandshakeRefused(exc.status_code, retry_after_s), fetched)
        except ssl.SSLCertVerificationError as exc:
            return _Attempt(None, ConnectFailed(_describe(exc), exc.verify_message), fetched)
        except (WebSocketException, OSError) as exc:
            return _Attempt(None, ConnectFailed(_describe(exc)), fetched)
        finally:
            abort.release()
        return _Attempt(ws, None, fetched)

    def _handshake(self, token: str | None, abort: _Abort) -> websocket.WebSocket:
        parts = urlsplit(self._url)
        secure = parts.scheme.lower() == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        sock = _tcp_connect(host, port, abort)
        try:
            if secure:
                sock = self._tls_context().wrap_socket(sock, server_hostname=host)
            ws = websocket.WebSocket(skip_utf8_validation=True)
            header = [f"Authorization: Bearer {token}"] if token else []
            ws.connect(  # type: ignore[no-untyped-call]
                self._url, socket=sock, header=header, timeout=IO_TIMEOUT_S, redirect_limit=0
            )
        except BaseException:
            sock.close()
            raise
        return ws

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _link_up(self, sock: socket.socket, now_s: float) -> None:
        link = _Link(sock)
        self._link = link
        with self._lock:
            self._core.connected(now_s)
        try:
            self._dialect.connection_made(now_s)
            opening = self._dialect.data_to_send()
        except JitterlineError as exc:
            self._lose(Ending(str(exc), exc, final=True))
            return
        for data in opening:  # the handshake's messages bypass the queue and its limiter
            self._write(link, _frame(data))
        with self._lock:
            self._core.opening_sent(len(opening))
        # "connected" goes out once the opening is on its way and before the first message
        # of this connection is read.
        self._publish()
        if self._link is link:
            self._io.loop.add_reader(link.fd, self._guarded, self._on_readable, link)

    # -- reading ------------------------------------------------------------------------------

    def _on_readable(self, link: _Link) -> None:
        """Read what the socket has and hand over every complete frame.

        The core is driven afterwards only when it has something to look at (a control
        frame, a fault, a frame begun or finished for ``frame_timeout_s``): plain data
        changes none of its decisions, and driving it cost ~22 000 instructions a
        readiness (callgrind), more than reading and handing over the frame."""
        if self._link is not link:
            return
        frames = link.frames
        fault: Fault | Ending | None = None
        busy = False
        budget = _READ_BUDGET_FRAMES
        more = True  # the socket may hold more bytes
        try:
            while budget and fault is None and self._link is link:
                first = frames.first
                if first < 0 and frames.header():
                    fault = self._announced(link, frames.first, frames.length)
                    continue
                payload = None if first < 0 else frames.payload()
                if payload is None:
                    if not more:
                        break
                    more = self._receive(link)
                    continue
                budget -= 1
                refused = check_frame(first, payload)
                if refused is not None:
                    fault = Violation(_describe(refused))
                elif first & _CONTROL:
                    busy = True
                    fault = self._control(link, first & _OPCODE, payload)
                else:
                    fault = self._data(link, first, payload)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass  # resume on the next readiness; the frame reader keeps what it has
        except _PeerEOF:
            fault = Dropped("EOF")
        except OSError as exc:
            fault = Dropped(_describe(exc))
        if self._link is link:
            if budget == 0 and fault is None:
                self._io.loop.call_soon(self._guarded, self._on_readable, link)  # others first
            # A budget spent between frames leaves none begun, whatever bytes wait.
            stalling = budget > 0 and frames.partial
            if stalling != link.stalling:
                link.stalling = stalling
                with self._lock:
                    self._core.frame_progress(stalling, self._clock())
                busy = True
            if fault is not None:
                self._lose(fault)
        if busy or fault is not None:
            self._drive()

    def _receive(self, link: _Link) -> bool:
        """One read into the frame reader; whether another may find more (see ``_Link``)."""
        data = link.sock.recv(READ_CHUNK_BYTES)
        if not data:
            raise _PeerEOF
        self._core.counters.bytes_in += len(data)  # written by the loop thread alone
        link.frames.feed(data)
        return link.drain or len(data) == READ_CHUNK_BYTES

    def _announced(self, link: _Link, first: int, length: int) -> Ending | None:
        """A frame header came: its message may be refused before its payload is read.
        The core decides; it is asked only past the limit (a lock a frame saved)."""
        so_far = link.message_bytes if first & _OPCODE == ABNF.OPCODE_CONT else 0
        if so_far + length <= self._core.max_message_bytes:
            return None
        with self._lock:
            return self._core.frame_header(length, so_far)

    def _data(self, link: _Link, first: int, payload: bytes) -> Fault | None:
        opcode = first & _OPCODE
        final = first & _FIN
        if opcode == ABNF.OPCODE_CONT:
            if not link.message:
                return Violation("a continuation frame without a message to continue")
        elif link.message:
            return Violation("a new message began inside a fragmented one")
        elif final:  # a whole message in one frame, the usual case
            return self._message(opcode, payload)
        else:
            link.message_opcode = opcode
        link.message.append(payload)
        link.message_bytes += len(payload)
        if not final:
            return None
        whole = b"".join(link.message)
        link.message.clear()
        link.message_bytes = 0
        return self._message(link.message_opcode, whole)

    def _message(self, opcode: int, payload: bytes) -> Violation | None:
        if opcode == ABNF.OPCODE_TEXT:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                return Violation("a text message that is not UTF-8")
            self._deliver(text)
        else:
            self._deliver(payload)
        return None

    def _control(self, link: _Link, opcode: int, payload: bytes) -> Fault | None:
        if opcode == ABNF.OPCODE_PING:
            self._write(link, ABNF.create_frame(payload, ABNF.OPCODE_PONG).format())
            return None
        if opcode == ABNF.OPCODE_PONG:
            with self._lock:
                self._core.pong(payload, self._clock())
            return None
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
        reason = payload[2:].decode("utf-8", "replace")[:120]
        with self._lock:
            answering = self._core.state == "connected"
        if answering:  # RFC 6455 section 5.5.1: echo the close, then let the peer hang up
            self._write(link, ABNF.create_frame(payload[:2], ABNF.OPCODE_CLOSE).format())
        return PeerClosed(code, reason)

    def _deliver(self, data: str | bytes) -> None:
        """Stamp the message now, as it is read; hand it over once the other readable
        sockets have been read too (``IOLoop.defer``)."""
        message = Message(data, arrival_s=self._clock(), received_wall_s=self._wall_clock())
        self._core.counters.messages_in += 1  # written by the loop thread alone
        self._io.defer(self._dispatch, message)

    def _dispatch(self, message: Message) -> None:
        try:
            self._on_message(message)
        except Exception:
            self._callback_failed("on_message")

    # -- writing ------------------------------------------------------------------------------

    def _write_message(self, link: _Link, data: str | bytes) -> None:
        if self._link is link:
            self._write(link, _frame(data))

    def _write(self, link: _Link, data: bytes) -> None:
        """Write now what the socket takes; buffer the rest for ``_on_writable``."""
        if link.unwritten:
            link.unwritten += data
            return
        link.unwritten += data
        self._drain(link)
        if link.unwritten and self._link is link:
            self._io.loop.add_writer(link.fd, self._guarded, self._on_writable, link)

    def _drain(self, link: _Link) -> None:
        try:
            while link.unwritten:
                # The same chunk size on every retry: OpenSSL wants a retried write to be at
                # least as long as the one that could not complete.
                sent = link.sock.send(memoryview(link.unwritten)[:_WRITE_CHUNK_BYTES])
                del link.unwritten[:sent]
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        except OSError as exc:
            if self._link is link:
                self._lose(Dropped(f"write failed: {_describe(exc)}"))

    def _on_writable(self, link: _Link) -> None:
        if self._link is not link:
            return
        self._drain(link)
        if not link.unwritten and self._link is link:
            self._io.loop.remove_writer(link.fd)
            self._drive()  # room again: the queue may move

    # -- ending a link ------------------------------------------------------------------------

    def _lose(self, cause: Fault | Ending) -> None:
        self._teardown()
        with self._lock:
            self._core.connection_ended(cause, self._clock())

    def _teardown(self) -> None:
        link, self._link = self._link, None
        if link is None:
            return
        loop = self._io.loop
        loop.remove_reader(link.fd)
        loop.remove_writer(link.fd)
        with contextlib.suppress(OSError):
            link.sock.close()

    # -- callbacks ----------------------------------------------------------------------------

    def _emit(self, event: ConnectionEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            self._callback_failed("on_event")

    def _callback_failed(self, name: str) -> None:
        with self._lock:
            self._core.counters.callback_errors += 1
        if name in self._warned:
            logger.debug("session %s: %s callback raised again", self._core.label, name)
            return
        self._warned.add(name)
        logger.warning(
            "session %s: %s callback raised; counted in callback_errors, the session goes "
            "on (logged once)",
            self._core.label,
            name,
            exc_info=True,
        )


def _frame(data: str | bytes) -> bytes:
    opcode = ABNF.OPCODE_TEXT if isinstance(data, str) else ABNF.OPCODE_BINARY
    return ABNF.create_frame(data, opcode).format()


def _tcp_connect(host: str, port: int, abort: _Abort) -> socket.socket:
    """``socket.create_connection`` with the socket watched before ``connect`` blocks, so
    ``_Abort.cancel`` can end the wait (Linux aborts a pending connect on shutdown)."""
    error: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(IO_TIMEOUT_S)
            abort.watch(sock)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            abort.release()
            error = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error if error is not None else OSError(f"no address for {host}")


def _header(exc: WebSocketBadStatusException, name: str) -> str | None:
    for key, value in (exc.resp_headers or {}).items():
        if str(key).lower() == name:
            return str(value)
    return None


def _describe(exc: BaseException) -> str:
    """A foreign exception in a few words. Its text is left out on purpose: websocket-client
    puts response headers and payload bytes in its messages."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__} ({exc.strerror})"
    return type(exc).__name__

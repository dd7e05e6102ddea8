"""The dial-out session: one WebSocket stream kept alive through drops, expiry and 429s.

One named thread per session owns the socket. It connects (bearer token on the handshake,
the dialect's opening messages first), then runs a single ``select`` loop that reads
messages, sends keep-alive pings, and drains the outbound queue through the token bucket.
``send()`` and ``close()`` from other threads only touch a locked queue and wake the loop
through a socket pair, so no socket is ever used from two threads and nothing sleeps
inside a library callback. We use websocket-client's ``WebSocket`` directly rather than
``WebSocketApp``: the app's ping thread is unnamed, its timing reads the wall clock, and
its ``reconnect=`` waits a fixed delay with no backoff or jitter.

Reconnection lives in a loop, never in recursion: attempt, classify the ending (fatal,
rate limited, transient), wait the backoff on an event that ``close()`` sets, try again.
The outbound queue keeps its order across reconnects; when full it refuses the *newest*
message (``send`` returns False and ``outbound_dropped`` counts it), so what was already
accepted is never silently lost or reordered. Messages still queued at ``close()`` are
dropped and counted too. The dialect's opening messages bypass the rate limiter: a
handshake must not wait behind a queue.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import websocket
from websocket import (
    ABNF,
    WebSocketBadStatusException,
    WebSocketConnectionClosedException,
    WebSocketException,
    WebSocketTimeoutException,
)

from .. import checks
from ..errors import (
    AuthError,
    ConfigError,
    ConnectionLost,
    JitterlineError,
    RateLimited,
    TransportError,
)
from ..frames import ConnectionEvent, ConnectionKind, ConnectionStats, Message
from ..protocols import Dialect
from .backoff import BackoffPolicy, ReconnectSchedule, parse_retry_after
from .ratelimit import TokenBucket
from .tokens import TokenProvider
from .urls import is_loopback_host, redact_url, split_url

__all__ = ["FATAL_CLOSE_CODES", "IO_TIMEOUT_S", "Session", "SessionDiagnostics"]

logger = logging.getLogger(__name__)

IO_TIMEOUT_S = 10.0
"""Socket timeout for the TCP connect, the handshake, a send, and the rest of a frame once
its first byte arrived. Idle reads never hit it: the loop only reads when select says so."""

FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 1010})
"""Close codes (RFC 6455 section 7.4.1) that say *our* side is wrong (protocol, data,
policy, size, extension): reconnecting would get the same answer. 1000 ends the session
cleanly (the peer finished the stream); every other code, and a drop without a close
frame, reconnects."""

_POLL_CAP_S = 0.5
_CLOSE_WAIT_CAP_S = 1.0


@dataclass(frozen=True, slots=True)
class SessionDiagnostics:
    """A snapshot of a session for status lines and tests.

    ``attempts`` counts every connection attempt, ``reconnects`` the successful ones after
    the first. ``backoff_s`` is the last delay scheduled (0 after a stable connection);
    ``uptime_s`` the age of the current connection (0 when down). ``rate_limited`` counts
    429 answers; ``send_throttled`` messages the token bucket held back.
    """

    connected: bool
    attempts: int
    reconnects: int
    backoff_s: float
    uptime_s: float
    messages_in: int
    messages_out: int
    rtt_ms: float | None
    token_refreshes: int
    rate_limited: int
    send_throttled: int
    outbound_queued: int
    outbound_dropped: int
    callback_errors: int

    def connection_stats(self) -> ConnectionStats:
        """The subset the pipeline's ``Stats`` carries."""
        return ConnectionStats(
            connected=self.connected,
            attempts=self.attempts,
            reconnects=self.reconnects,
            token_refreshes=self.token_refreshes,
            rate_limited=self.rate_limited,
            rtt_ms=self.rtt_ms,
        )


@dataclass(slots=True)
class _Counters:
    attempts: int = 0
    connections: int = 0
    messages_in: int = 0
    messages_out: int = 0
    rtt_ms: float | None = None
    token_refreshes: int = 0
    rate_limited: int = 0
    send_throttled: int = 0
    outbound_dropped: int = 0
    callback_errors: int = 0


@dataclass(frozen=True, slots=True)
class _Ending:
    """Why an attempt or a connection ended, and what the loop should do next.

    ``final`` ends the session with ``error`` as its outcome (None: a clean end).
    """

    reason: str
    error: JitterlineError | None = None
    final: bool = False
    code: int | None = None
    retry_after_s: float | None = None


class _FailedError(Exception):
    """Carries an ``_Ending`` out of the connect and serve helpers."""

    def __init__(self, ending: _Ending) -> None:
        super().__init__(ending.reason)
        self.ending = ending


def _fail(
    error: JitterlineError,
    cause: BaseException | None = None,
    *,
    final: bool = False,
    code: int | None = None,
    retry_after_s: float | None = None,
) -> _FailedError:
    if cause is not None:
        error.__cause__ = cause  # what ``raise error from cause`` would record
    return _FailedError(_Ending(str(error), error, final, code, retry_after_s))


class _Waker:
    """A socket pair whose read end joins the session's select: other threads write one
    byte to make the loop look at the queue or the stop flag at once."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    def fileno(self) -> int:
        return self._read.fileno()

    def wake(self) -> None:
        # A full buffer (BlockingIOError) means the loop has a wake-up pending already;
        # a closed pair means the session ended: both are fine to ignore.
        with contextlib.suppress(OSError):
            self._write.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self._read.recv(4096):
                pass

    def close(self) -> None:
        self._read.close()
        self._write.close()


class Session:
    """A resilient dial-out WebSocket session; see the module docstring for the design.

    Every received message reaches ``on_message`` on the session thread, stamped with
    ``clock()`` (monotonic) and ``wall_clock()``. Lifecycle steps reach ``on_event``. A
    callback that raises is logged and counted in ``callback_errors``; the session goes
    on. ``max_attempts`` bounds attempts in a row without a connection that stayed up
    ``stable_after_s`` (None: forever); the same streak drives the backoff.
    """

    def __init__(
        self,
        url: str,
        *,
        dialect: Dialect,
        on_message: Callable[[Message], None],
        tokens: TokenProvider | None = None,
        on_event: Callable[[ConnectionEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        backoff: BackoffPolicy = BackoffPolicy(),  # noqa: B008 (frozen, so shared is safe)
        max_attempts: int | None = None,
        ping_interval_s: float = 5.0,
        ping_timeout_s: float = 3.0,
        stable_after_s: float = 10.0,
        send_rate_per_s: float = 10.0,
        send_burst: int = 10,
        outbound_capacity: int = 1000,
        session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        allow_insecure: bool = False,
    ) -> None:
        self._url = _check_session_url(url, allow_insecure)
        self.url = redact_url(url)
        checks.number(
            "ping_interval_s", ping_interval_s, low=0.0, unit="s", hint="0 disables pings"
        )
        checks.number(
            "ping_timeout_s", ping_timeout_s, low=0.0, above=True, unit="s", hint="try 3.0"
        )
        checks.count(
            "outbound_capacity",
            outbound_capacity,
            low=1,
            hint="it counts messages held while disconnected",
        )
        self._dialect = dialect
        self._on_message = on_message
        self._tokens = tokens
        self._on_event = on_event
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng if rng is not None else random.Random()
        self._schedule = ReconnectSchedule(
            backoff, self._rng, stable_after_s=stable_after_s, max_attempts=max_attempts
        )
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self._bucket = TokenBucket(send_rate_per_s, send_burst, now_s=clock())
        self._capacity = outbound_capacity
        self.session_id = session_id or str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        self._metadata = dict(metadata or {})

        self._lock = threading.Lock()
        self._outbound: deque[str | bytes] = deque()
        self._counters = _Counters()
        self._connected_at_s: float | None = None
        self._connecting: websocket.WebSocket | None = None
        self._outcome: JitterlineError | None = None
        self._done = False
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._thread: threading.Thread | None = None
        self._waker: _Waker | None = None
        self._close_wait_s = _CLOSE_WAIT_CAP_S
        self._warned: set[str] = set()
        # Per-connection state, touched by the session thread only.
        self._ping_payload = b""
        self._ping_sent_s: float | None = None
        self._last_ping_s = 0.0
        self._ping_count = 0
        self._next_send_s: float | None = None
        self._head_throttled = False

    def __repr__(self) -> str:
        state = "ended" if self._ended.is_set() else "running" if self._thread else "new"
        return f"Session({self.url!r}, session_id={self.session_id!r}, {state})"

    def __enter__(self) -> Session:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- public API ---------------------------------------------------------------------

    @property
    def outcome(self) -> JitterlineError | None:
        """Why the session ended: None while running, after ``close()`` or a clean end by
        the peer; the fatal error (``AuthError``, ``ConnectionLost`` "gave up ...") else."""
        with self._lock:
            return self._outcome

    def start(self) -> None:
        """Start the session thread; a session starts once."""
        if self._thread is not None or self._stop.is_set():
            raise ConfigError(
                f"session {self.session_id} was already started or closed; create a new one"
            )
        self._waker = _Waker()
        self._thread = threading.Thread(
            target=self._run, name=f"jitterline-session-{self.session_id[:8]}", daemon=True
        )
        self._thread.start()

    def send(self, data: str | bytes) -> bool:
        """Queue a text (``str``) or binary (``bytes``) message; thread-safe, never blocks.

        Returns False when the message was refused: the queue is full (the newest message
        is the one refused) or the session has ended.
        """
        if not isinstance(data, (str, bytes)):
            raise ConfigError(
                f"send() takes str (text) or bytes (binary), not {type(data).__name__}"
            )
        with self._lock:
            if self._stop.is_set() or self._done:
                self._counters.outbound_dropped += 1
                return False
            if len(self._outbound) >= self._capacity:
                self._counters.outbound_dropped += 1
                self._warn_once(
                    "overflow",
                    "outbound queue full (outbound_capacity=%d); refusing new messages "
                    "until it drains",
                    self._capacity,
                )
                return False
            self._outbound.append(data)
        if self._waker is not None:
            self._waker.wake()
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop for good: no reconnect follows. Returns within about ``timeout_s``.

        A live connection gets a 1000 close frame; a backoff wait ends at once. Safe to
        call from a callback (it then does not wait for its own thread).
        """
        checks.number("timeout_s", timeout_s, low=0.0, unit="s", hint="0 does not wait")
        self._close_wait_s = min(_CLOSE_WAIT_CAP_S, timeout_s / 2)
        self._stop.set()
        thread = self._thread
        if thread is None:
            if not self._ended.is_set():
                self._finish(_Ending("closed before start", final=True))
            return
        if self._waker is not None:
            self._waker.wake()
        self._interrupt_connect()
        if thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                logger.warning(
                    "session %s thread still busy after close(timeout_s=%s) (a token "
                    "request or TCP connect); it exits when that times out",
                    self.session_id,
                    timeout_s,
                )

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the session ended (closed, fatal error, gave up); False on timeout."""
        return self._ended.wait(timeout_s)

    def diagnostics(self) -> SessionDiagnostics:
        now_s = self._clock()
        with self._lock:
            c = self._counters
            connected_at_s = self._connected_at_s
            return SessionDiagnostics(
                connected=connected_at_s is not None,
                attempts=c.attempts,
                reconnects=max(0, c.connections - 1),
                backoff_s=self._schedule.last_delay_s,
                uptime_s=0.0 if connected_at_s is None else max(0.0, now_s - connected_at_s),
                messages_in=c.messages_in,
                messages_out=c.messages_out,
                rtt_ms=c.rtt_ms,
                token_refreshes=c.token_refreshes,
                rate_limited=c.rate_limited,
                send_throttled=c.send_throttled,
                outbound_queued=len(self._outbound),
                outbound_dropped=c.outbound_dropped,
                callback_errors=c.callback_errors,
            )

    def connection_stats(self) -> ConnectionStats:
        return self.diagnostics().connection_stats()

    # -- the session thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            ending = self._loop()
        except Exception as exc:  # a bug here must still end the session, not hang wait()
            logger.exception("session %s failed unexpectedly", self.session_id)
            ending = _Ending(
                "internal error",
                TransportError(f"session thread failed ({type(exc).__name__}); see the log"),
                True,
            )
        self._finish(ending)

    def _loop(self) -> _Ending:
        while not self._stop.is_set():
            self._schedule.begin_attempt()
            with self._lock:
                self._counters.attempts += 1
            self._emit("connecting")
            ending = self._attempt()
            if ending.final:
                return ending
            if self._stop.is_set():
                break
            if self._schedule.exhausted:
                return self._give_up(ending)
            self._wait_before_retry(ending)
        return _Ending("closed by client", final=True, code=1000)

    def _give_up(self, last: _Ending) -> _Ending:
        error = ConnectionLost(
            f"gave up after {self._schedule.streak} attempts without a stable connection "
            f"(max_attempts={self._schedule.max_attempts}); last: {last.reason}; check that "
            f"{self.url} is up, or raise max_attempts"
        )
        error.__cause__ = last.error
        return _Ending(str(error), error, final=True)

    def _wait_before_retry(self, ending: _Ending) -> None:
        delay_s = self._schedule.next_delay_s(ending.retry_after_s)
        if isinstance(ending.error, RateLimited):
            self._emit("rate_limited", code=429, reason=ending.reason, delay_s=delay_s)
        logger.info(
            "session %s: %s; reconnecting in %.2f s", self.session_id, ending.reason, delay_s
        )
        self._emit("reconnect_scheduled", code=ending.code, reason=ending.reason, delay_s=delay_s)
        self._stop.wait(delay_s)

    def _attempt(self) -> _Ending:
        try:
            ws = self._connect()
        except _FailedError as failed:
            return self._note_failure(failed.ending)
        now_s = self._clock()
        self._schedule.connected(now_s)
        with self._lock:
            self._counters.connections += 1
            self._connected_at_s = now_s
        try:
            ending = self._serve(ws)
        except _FailedError as failed:
            ending = failed.ending
        finally:
            with self._lock:
                self._connected_at_s = None
            ws.shutdown()  # type: ignore[no-untyped-call]
        uptime_s = self._schedule.disconnected(self._clock())
        logger.info(
            "session %s disconnected after %.1f s: %s", self.session_id, uptime_s, ending.reason
        )
        self._emit("disconnected", code=ending.code, reason=ending.reason)
        return ending

    def _note_failure(self, ending: _Ending) -> _Ending:
        if isinstance(ending.error, RateLimited):
            with self._lock:
                self._counters.rate_limited += 1
        log = logger.error if ending.final else logger.warning
        log("session %s: attempt failed: %s", self.session_id, ending.reason)
        return ending

    def _finish(self, ending: _Ending) -> None:
        with self._lock:
            self._done = True  # from here on send() refuses: nothing is queued to be lost
            self._outcome = ending.error
            self._counters.outbound_dropped += len(self._outbound)
            self._outbound.clear()
        if self._waker is not None:
            self._waker.close()
        self._emit("closed", code=ending.code, reason=ending.reason)
        self._ended.set()

    # -- connecting -----------------------------------------------------------------------

    def _connect(self) -> websocket.WebSocket:
        """Token, handshake; on a 401 one fresh token and one more handshake."""
        tokens = self._tokens
        token = self._token("")
        try:
            return self._handshake(token)
        except WebSocketBadStatusException as exc:
            if exc.status_code != 401 or tokens is None:
                raise self._refusal(exc, retried=False) from exc
            logger.warning("session %s: handshake refused the token (401)", self.session_id)
        tokens.invalidate()
        token = self._token("handshake answered 401")
        try:
            return self._handshake(token)
        except WebSocketBadStatusException as exc:
            raise self._refusal(exc, retried=True) from exc

    def _token(self, why: str) -> str | None:
        tokens = self._tokens
        if tokens is None:
            return None
        before = tokens.refreshes
        try:
            token = tokens.token()
        except AuthError as exc:
            raise _fail(exc, final=True) from exc
        except RateLimited as exc:
            raise _fail(exc, retry_after_s=exc.retry_after_s) from exc
        except TransportError as exc:
            raise _fail(exc) from exc
        if tokens.refreshes != before:
            with self._lock:
                self._counters.token_refreshes += 1
                first = self._counters.token_refreshes == 1
            self._emit("token_refreshed", reason=why or ("first" if first else "expiring"))
        return token

    def _handshake(self, token: str | None) -> websocket.WebSocket:
        """One WebSocket handshake; refusals (``WebSocketBadStatusException``) propagate,
        other failures become a retryable ``_FailedError``."""
        ws = websocket.WebSocket(enable_multithread=True)
        header = [f"Authorization: Bearer {token}"] if token else []
        with self._lock:
            self._connecting = ws
        try:
            ws.connect(self._url, header=header, timeout=IO_TIMEOUT_S)  # type: ignore[no-untyped-call]
        except WebSocketBadStatusException:
            raise
        except ssl.SSLCertVerificationError as exc:
            raise _fail(
                TransportError(
                    f"TLS verification of {self.url} failed ({exc.verify_message}); fix the "
                    "certificate or the trust store"
                ),
                exc,
                final=True,
            ) from exc
        except (WebSocketException, OSError) as exc:
            raise _fail(
                ConnectionLost(f"cannot connect to {self.url}: {_describe(exc)}"), exc
            ) from exc
        finally:
            with self._lock:
                self._connecting = None
        return ws

    def _refusal(self, exc: WebSocketBadStatusException, *, retried: bool) -> _FailedError:
        status = exc.status_code
        where = f"{self.url} refused the handshake with HTTP {status}"
        if status == 401:
            step = (
                "a freshly fetched token was refused too: check the OAuth client's roles "
                "and region"
                if retried
                else "no TokenProvider was given; pass tokens=TokenProvider(...)"
            )
            return _fail(AuthError(f"{where}; {step}"), exc, final=True, code=status)
        if status == 403:
            return _fail(
                AuthError(f"{where}; the token lacks a permission: check the client's roles"),
                exc,
                final=True,
                code=status,
            )
        if status == 429:
            retry_after_s = parse_retry_after(_header(exc, "retry-after"), self._wall_clock())
            error = RateLimited(
                f"{where} (rate limited)", retry_after_s if retry_after_s is not None else 0.0
            )
            return _fail(error, exc, code=status, retry_after_s=retry_after_s)
        if status == 408 or status >= 500:
            return _fail(ConnectionLost(f"{where}; the server failed"), exc, code=status)
        return _fail(
            TransportError(f"{where}; check the URL and the dialect"),
            exc,
            final=True,
            code=status,
        )

    def _interrupt_connect(self) -> None:
        """Abort a handshake in progress so ``close()`` need not wait for its timeout."""
        with self._lock:
            ws = self._connecting
        sock = ws.sock if ws is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- connected ------------------------------------------------------------------------

    def _serve(self, ws: websocket.WebSocket) -> _Ending:
        self._reset_link_state()
        for data in self._opening():
            self._send_frame(ws, data)
        with self._lock:
            reconnect = self._counters.connections > 1
        logger.info(
            "session %s connected to %s%s",
            self.session_id,
            self.url,
            " again" if reconnect else "",
        )
        self._emit("connected")
        while not self._stop.is_set():
            if self._wait_readable(ws, self._poll_timeout_s()):
                self._read(ws)
            self._keepalive(ws)
            self._flush(ws)
        with contextlib.suppress(WebSocketException, OSError):
            ws.close(status=1000, reason=b"client closed", timeout=self._close_wait_s)
        return _Ending("closed by client", final=True, code=1000)

    def _reset_link_state(self) -> None:
        self._ping_sent_s = None
        self._last_ping_s = self._clock()
        self._next_send_s = None
        self._head_throttled = False

    def _opening(self) -> list[str | bytes]:
        try:
            return self._dialect.opening(self.session_id, self._metadata)
        except JitterlineError as exc:
            raise _fail(exc, final=True) from exc

    def _poll_timeout_s(self) -> float:
        now_s = self._clock()
        deadlines = [now_s + _POLL_CAP_S]
        if self._ping_interval_s > 0:
            if self._ping_sent_s is not None:
                deadlines.append(self._ping_sent_s + self._ping_timeout_s)
            else:
                deadlines.append(self._last_ping_s + self._ping_interval_s)
        if self._next_send_s is not None:
            deadlines.append(self._next_send_s)
        return max(0.0, min(deadlines) - now_s)

    def _wait_readable(self, ws: websocket.WebSocket, timeout_s: float) -> bool:
        sock = ws.sock
        if sock is None:
            raise _fail(ConnectionLost("the connection closed"))
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # TLS already decrypted bytes that select cannot see
        waker = self._waker
        watched: list[Any] = [sock] if waker is None else [sock, waker]
        try:
            readable, _, _ = select.select(watched, [], [], timeout_s)
        except (OSError, ValueError) as exc:
            raise _fail(ConnectionLost(f"the connection failed: {_describe(exc)}"), exc) from exc
        if waker is not None and waker in readable:
            waker.drain()
        return sock in readable

    def _read(self, ws: websocket.WebSocket) -> None:
        try:
            opcode, frame = ws.recv_data_frame(True)
        except WebSocketTimeoutException as exc:
            raise _fail(
                ConnectionLost(f"the peer stalled mid-message for {IO_TIMEOUT_S:.0f} s"), exc
            ) from exc
        except (WebSocketConnectionClosedException, OSError) as exc:
            error = ConnectionLost(
                f"the connection dropped without a close frame ({_describe(exc)})"
            )
            raise _fail(error, exc, code=1006) from exc
        except (WebSocketException, UnicodeError) as exc:
            error = ConnectionLost(f"the peer broke the WebSocket protocol ({_describe(exc)})")
            raise _fail(error, exc, code=1002) from exc
        if opcode == ABNF.OPCODE_CLOSE:
            raise self._peer_closed(frame.data)
        if opcode == ABNF.OPCODE_PONG:
            self._pong(frame.data)
        elif opcode in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY):
            data = frame.data
            self._deliver(data.decode("utf-8") if opcode == ABNF.OPCODE_TEXT else bytes(data))

    def _peer_closed(self, payload: bytes) -> _FailedError:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
        reason = payload[2:].decode("utf-8", "replace")[:120]
        said = f"the peer closed with {code if code is not None else 'no code'}"
        said += f" ({reason})" if reason else ""
        if code == 1000:
            return _FailedError(_Ending(f"{said}: the stream ended", final=True, code=code))
        if code in FATAL_CLOSE_CODES:
            error = TransportError(f"{said}; reconnecting would be refused the same way")
            return _fail(error, final=True, code=code)
        return _fail(ConnectionLost(said), code=code)

    def _deliver(self, data: str | bytes) -> None:
        message = Message(data, arrival_s=self._clock(), received_wall_s=self._wall_clock())
        with self._lock:
            self._counters.messages_in += 1
        try:
            self._on_message(message)
        except Exception:
            self._callback_failed("on_message")

    def _pong(self, payload: bytes) -> None:
        if self._ping_sent_s is None or payload != self._ping_payload:
            return  # unsolicited, or for a ping of an earlier connection
        rtt_ms = (self._clock() - self._ping_sent_s) * 1000.0
        self._ping_sent_s = None
        with self._lock:
            self._counters.rtt_ms = rtt_ms
        self._emit("pong", rtt_ms=rtt_ms)

    def _keepalive(self, ws: websocket.WebSocket) -> None:
        if self._ping_interval_s <= 0:
            return
        now_s = self._clock()
        if self._ping_sent_s is not None:
            if now_s - self._ping_sent_s > self._ping_timeout_s:
                raise _fail(
                    ConnectionLost(
                        f"no pong within ping_timeout_s={self._ping_timeout_s}; the link is dead"
                    )
                )
            return
        if now_s - self._last_ping_s < self._ping_interval_s:
            return
        self._ping_count += 1
        self._ping_payload = f"jl-{self._ping_count}".encode()
        try:
            ws.ping(self._ping_payload)
        except (WebSocketException, OSError) as exc:
            raise _fail(ConnectionLost(f"ping failed: {_describe(exc)}"), exc) from exc
        self._ping_sent_s = self._last_ping_s = now_s

    def _flush(self, ws: websocket.WebSocket) -> None:
        """Send queued messages in order while the bucket has tokens; on a failed send the
        message goes back to the head of the queue for the next connection."""
        while True:
            with self._lock:
                if not self._outbound:
                    self._next_send_s = None
                    return
                now_s = self._clock()
                wait_s = self._bucket.try_acquire(now_s)
                if wait_s > 0:
                    if not self._head_throttled:
                        self._counters.send_throttled += 1
                        self._head_throttled = True
                    self._next_send_s = now_s + wait_s
                    return
                data = self._outbound.popleft()
                self._head_throttled = False
            try:
                self._send_frame(ws, data)
            except _FailedError:
                with self._lock:
                    self._outbound.appendleft(data)
                raise

    def _send_frame(self, ws: websocket.WebSocket, data: str | bytes) -> None:
        opcode = ABNF.OPCODE_TEXT if isinstance(data, str) else ABNF.OPCODE_BINARY
        try:
            ws.send(data, opcode)
        except (WebSocketException, OSError) as exc:
            raise _fail(ConnectionLost(f"send failed: {_describe(exc)}"), exc) from exc
        with self._lock:
            self._counters.messages_out += 1

    # -- callbacks ------------------------------------------------------------------------

    def _emit(
        self,
        kind: ConnectionKind,
        *,
        code: int | None = None,
        reason: str = "",
        delay_s: float | None = None,
        rtt_ms: float | None = None,
    ) -> None:
        if self._on_event is None:
            return
        with self._lock:
            attempt = self._counters.attempts
        event = ConnectionEvent(kind, self._clock(), attempt, code, reason, delay_s, rtt_ms)
        try:
            self._on_event(event)
        except Exception:
            self._callback_failed("on_event")

    def _callback_failed(self, name: str) -> None:
        with self._lock:
            self._counters.callback_errors += 1
            first = name not in self._warned
            self._warned.add(name)
        if first:
            logger.warning(
                "session %s: %s callback raised; counted in callback_errors, the session "
                "goes on (logged once)",
                self.session_id,
                name,
                exc_info=True,
            )
        else:
            logger.debug("session %s: %s callback raised again", self.session_id, name)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        # Called with self._lock held.
        if key in self._warned:
            return
        self._warned.add(key)
        logger.warning("session %s: " + message, self.session_id, *args)


def _check_session_url(url: str, allow_insecure: bool) -> str:
    parts = split_url(url, ("wss", "ws"), "session URL")
    host = parts.hostname or ""
    if parts.scheme.lower() == "ws" and not is_loopback_host(host):
        if not allow_insecure:
            raise ConfigError(
                f"session URL {redact_url(url)!r} is cleartext ws:// to a non-loopback host; "
                "the bearer token would cross the network in the clear: use wss://, or "
                "pass allow_insecure=True for a trusted test network"
            )
        logger.warning(
            "cleartext ws:// to %s allowed by allow_insecure=True: the bearer token is "
            "readable on the network",
            host,
        )
    return url.strip()


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

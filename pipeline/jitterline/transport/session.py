"""The dial-out session: one WebSocket stream kept alive through drops, expiry and 429s.

``Session`` is the public face of a ``DialOut`` (the I/O shell) driving a ``SessionCore``
(the decisions) on an ``IOLoop`` shared by every session of the process, so a session
costs one socket, not a thread. We use websocket-client's ``WebSocket`` for the handshake
and the frames we write rather than ``WebSocketApp``: the app's ping thread is unnamed, its
timing reads the wall clock, and its ``reconnect=`` waits a fixed delay with no backoff or
jitter. Received frames are read by our own ``framing.FrameReader`` (see ``dialout``).

What a session guarantees (details in ``core``): reconnects with capped, jittered
backoff and the peer's Retry-After; one token refresh on a 401; fatal close codes and
refused credentials end it; the outbound queue keeps its order across reconnects, refuses
the *newest* message when full, and every accepted message is written or counted in
``outbound_dropped`` (in-flight messages of a dropped link are resent); frames announcing
more than ``max_message_bytes`` and frames that stall mid-way cut the link (counted in
``oversized`` / ``stalled``) and the session reconnects.

Threads: ``on_message`` and ``on_event`` run on the I/O loop thread ("jitterline-io") and
must return quickly, since every session on the loop waits for them. ``send``, ``close``,
``diagnostics`` and ``wait`` may be called from any thread, callbacks included.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
import uuid
from collections.abc import Callable
from types import TracebackType

from .. import checks
from ..errors import ConfigError, JitterlineError
from ..frames import ConnectionEvent, ConnectionStats, Message
from ..protocols import Dialect
from .backoff import BackoffPolicy, ReconnectSchedule
from .core import FATAL_CLOSE_CODES, SessionCore, SessionDiagnostics
from .dialout import IO_TIMEOUT_S, DialOut
from .ioloop import IOLoop
from .ratelimit import TokenBucket
from .tokens import TokenProvider
from .urls import is_loopback_host, redact_url, split_url

__all__ = ["FATAL_CLOSE_CODES", "IO_TIMEOUT_S", "Session", "SessionDiagnostics"]

logger = logging.getLogger(__name__)

_CLOSE_WAIT_CAP_S = 1.0
_SHARED_RNG = random.Random()
"""Backoff jitter and session ids of sessions given no ``rng``: one generator for all, as
the ``random`` module's own functions share one (a ``Random`` holds 2.5 KiB of state, paid
per session otherwise); pass ``rng`` for reproducible delays."""


class Session:
    """A resilient dial-out WebSocket session; see the module docstring.

    After each successful handshake the ``dialect`` (this connection's protocol object) is
    told ``connection_made(now_s)`` and its ``data_to_send()`` goes out first, ahead of the
    queue and its rate limit. Received messages reach ``on_message`` stamped with
    ``clock()`` (monotonic) and ``wall_clock()``; the session does not call
    ``dialect.receive``: the pipeline does, and sends replies through ``send``. A
    callback that raises is logged and counted in ``callback_errors``; the session goes
    on. ``max_attempts`` bounds attempts in a row without a connection that stayed up
    ``stable_after_s`` (None: forever); the same streak drives the backoff.
    ``session_id`` only labels logs (the protocol object carries the protocol's ids).
    ``ping_interval_s=0`` turns off idle keep-alive pings only: a ping still follows
    written messages, since its pong is what confirms their delivery (every peer must
    answer pings, RFC 6455 section 5.5.2), and ``ping_timeout_s`` applies to it.
    ``tls_context`` replaces the default verifying context for ``wss://`` (a private CA);
    ``ioloop`` replaces ``IOLoop.shared()``.
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
        max_message_bytes: int = 1 << 20,
        frame_timeout_s: float = IO_TIMEOUT_S,
        session_id: str | None = None,
        allow_insecure: bool = False,
        ioloop: IOLoop | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._url = _check_session_url(url, allow_insecure)
        self.url = redact_url(url)
        rng = rng if rng is not None else _SHARED_RNG
        self.session_id = session_id or str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self._core = SessionCore(
            url=self.url,
            label=self.session_id,
            schedule=ReconnectSchedule(
                backoff, rng, stable_after_s=stable_after_s, max_attempts=max_attempts
            ),
            bucket=TokenBucket(send_rate_per_s, send_burst, now_s=clock()),
            has_tokens=tokens is not None,
            ping_interval_s=ping_interval_s,
            ping_timeout_s=ping_timeout_s,
            frame_timeout_s=frame_timeout_s,
            max_message_bytes=max_message_bytes,
            outbound_capacity=outbound_capacity,
            close_wait_s=_CLOSE_WAIT_CAP_S,
        )
        self._dialout = DialOut(
            self._url,
            core=self._core,
            dialect=dialect,
            on_message=on_message,
            on_event=on_event,
            tokens=tokens,
            clock=clock,
            wall_clock=wall_clock,
            ioloop=ioloop,
            tls_context=tls_context,
        )

    def __repr__(self) -> str:
        state = self._core.state
        shown = "ended" if state == "ended" else "new" if state == "new" else "running"
        return f"Session({self.url!r}, session_id={self.session_id!r}, {shown})"

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

    @property
    def outcome(self) -> JitterlineError | None:
        """Why the session ended: None while running, after ``close()`` or a clean end by
        the peer; the fatal error (``AuthError``, ``ConnectionLost`` "gave up ...") else."""
        return self._dialout.outcome

    def start(self) -> None:
        """Start connecting on the I/O loop (``IOLoop.shared()`` unless one was given; it
        starts with the first session); a session starts once."""
        self._dialout.start()

    def send(self, data: str | bytes) -> bool:
        """Queue a text (``str``) or binary (``bytes``) message; thread-safe, never blocks.

        Returns False when the message was refused: the queue is full (the newest message
        is the one refused) or the session is closing or over.
        """
        if not isinstance(data, (str, bytes)):
            raise ConfigError(
                f"send() takes str (text) or bytes (binary), not {type(data).__name__}"
            )
        return self._dialout.send(data)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop for good: no reconnect follows. Returns within about ``timeout_s``.

        The session is marked closed at once (``send`` refuses from here on). A live
        connection gets a 1000 close frame and ``min(1 s, timeout_s / 2)`` to answer; a
        backoff wait ends at once; a connect or token request in flight is cut and its late
        result discarded. From a callback (the loop thread) it does not wait. A session
        closed before ``start()`` emits its "closed" event on the caller's thread.
        """
        checks.number("timeout_s", timeout_s, low=0.0, unit="s", hint="0 does not wait")
        self._dialout.close(close_wait_s=min(_CLOSE_WAIT_CAP_S, timeout_s / 2))
        if self._dialout.in_loop_thread():
            return
        if not self._dialout.ended.wait(timeout_s):
            logger.warning(
                "session %s did not finish within close(timeout_s=%s); it ends on the loop",
                self.session_id,
                timeout_s,
            )

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the session ended (closed, fatal error, gave up); False on timeout."""
        return self._dialout.ended.wait(timeout_s)

    def diagnostics(self) -> SessionDiagnostics:
        return self._dialout.diagnostics()

    def connection_stats(self) -> ConnectionStats:
        return self.diagnostics().connection_stats()


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

"""The dial-out session's decisions as a sans-I/O state machine.

``SessionCore`` owns no socket, reads no clock and never sleeps: the I/O shell
(``dialout.DialOut``) reports what happened (an attempt failed, the link came up, a pong
arrived, a frame header was read) with the time, and asks ``poll(now_s)`` what to do now
(connect, ping, cut the link) and ``next_deadline_s()`` when to ask again. Lifecycle
``ConnectionEvent`` values come out of ``events()`` in order. The same object therefore
runs under the asyncio shell and under a test that moves virtual time by hand.

The model is websockets' ``asyncio/client.py``: *retryable or fatal* is one small
replaceable function (``classify``, passed to the core), and delays come from one schedule
(``backoff.ReconnectSchedule``: capped exponential backoff with added jitter, the
stable-connection reset, ``max_attempts``), with the peer's Retry-After on top.

States: ``new`` -> ``connecting`` (token + handshake running) -> ``connected`` ->
``backoff`` -> ``connecting`` ... ; ``close()`` goes through ``closing`` (our close frame
sent, waiting ``close_wait_s`` for the peer's) to ``ended``, as does every fatal ending.

Outbound delivery ("accepted" across a drop). ``send()`` accepting a message means it will
be written to a connection in order, or be counted in ``outbound_dropped``; never silently
lost. A message written to a socket is only *in flight*: TCP may still lose it when the
link drops. It is *confirmed* once the peer answers a ping written after it (the peer reads
frames in order, so its pong proves it read everything before the ping) or echoes our close
frame. Every write is followed by such a ping (``poll`` sends one whenever something is in
flight and no ping is outstanding), so the in-flight window stays about one round trip
long. When a connection ends without that proof, its in-flight messages go back to the head
of the queue and are written again on the next connection (``outbound_resent``: the peer
may see a message twice, never zero times); when the session ends they are counted in
``outbound_dropped``. The protocol's own opening messages are not tracked: the dialect
sends them afresh on every connection.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from .. import checks
from ..errors import (
    AuthError,
    ConfigError,
    ConnectionLost,
    JitterlineError,
    RateLimited,
    TLSError,
    TransportError,
)
from ..frames import ConnectionEvent, ConnectionKind, ConnectionStats
from .backoff import ReconnectSchedule
from .ratelimit import TokenBucket

__all__ = [
    "FATAL_CLOSE_CODES",
    "WRITE_HIGH_WATER_BYTES",
    "Action",
    "Classifier",
    "Connect",
    "ConnectFailed",
    "Counters",
    "Disconnect",
    "Dropped",
    "Ending",
    "Fault",
    "HandshakeRefused",
    "PeerClosed",
    "SendClose",
    "SendPing",
    "SessionCore",
    "SessionDiagnostics",
    "TokenFailed",
    "Violation",
    "classify",
]

logger = logging.getLogger(__name__)

FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 1010})
"""Close codes (RFC 6455 section 7.4.1) that say *our* side is wrong (protocol, data,
policy, size, extension): reconnecting would get the same answer. 1000 ends the session
cleanly (the peer finished the stream); every other code, and a drop without a close
frame, reconnects."""

CLOSE_CODE_NORMAL = 1000
CLOSE_CODE_ABNORMAL = 1006  # RFC 6455 section 7.1.5: no close frame was received
CLOSE_CODE_PROTOCOL = 1002
CLOSE_CODE_TOO_BIG = 1009

# -- what the shell observed ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeRefused:
    """The HTTP upgrade was answered ``status`` instead of 101."""

    status: int
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class TokenFailed:
    """The token provider raised (``AuthError``, ``RateLimited``, ``TLSError``, ...)."""

    error: TransportError


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """TCP or TLS failed before any HTTP answer. ``tls_verify`` holds the verifier's
    message when the peer's certificate was refused (a certificate will not fix itself)."""

    description: str
    tls_verify: str | None = None


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer sent a close frame."""

    code: int | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Dropped:
    """The link went away without a close frame (reset, EOF, a failed write)."""

    description: str


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer broke RFC 6455 (a bad frame, a text message that is not UTF-8)."""

    description: str


Fault: TypeAlias = (
    HandshakeRefused | TokenFailed | ConnectFailed | PeerClosed | Dropped | Violation
)


@dataclass(frozen=True, slots=True)
class Ending:
    """How an attempt or a connection ended and what follows.

    ``final`` ends the session with ``error`` as its outcome (None: a clean end);
    ``refresh_token`` asks for one more handshake in the same attempt with a fresh token.
    """

    reason: str
    error: JitterlineError | None = None
    final: bool = False
    code: int | None = None
    retry_after_s: float | None = None
    refresh_token: bool = False


def classify(fault: Fault, *, url: str, has_tokens: bool, token_refreshed: bool) -> Ending:
    """Retryable or fatal: the one place that decides (replace it through
    ``SessionCore(classifier=...)``). ``token_refreshed`` says whether this attempt already
    fetched a fresh token after a 401."""
    if isinstance(fault, HandshakeRefused):
        return _refused(fault, url, has_tokens, token_refreshed)
    if isinstance(fault, TokenFailed):
        error = fault.error
        if isinstance(error, RateLimited):
            return Ending(str(error), error, retry_after_s=error.retry_after_s, code=429)
        return Ending(str(error), error, final=isinstance(error, (AuthError, TLSError)))
    if isinstance(fault, ConnectFailed):
        if fault.tls_verify is not None:
            tls = TLSError(
                f"TLS verification of {url} failed ({fault.tls_verify}); fix the "
                "certificate or the trust store"
            )
            return Ending(str(tls), tls, final=True)
        lost = ConnectionLost(f"cannot connect to {url}: {fault.description}")
        return Ending(str(lost), lost)
    if isinstance(fault, PeerClosed):
        return _peer_closed(fault)
    if isinstance(fault, Dropped):
        lost = ConnectionLost(
            f"the connection dropped without a close frame ({fault.description})"
        )
        return Ending(str(lost), lost, code=CLOSE_CODE_ABNORMAL)
    lost = ConnectionLost(f"the peer broke the WebSocket protocol ({fault.description})")
    return Ending(str(lost), lost, code=CLOSE_CODE_PROTOCOL)


def _refused(fault: HandshakeRefused, url: str, has_tokens: bool, refreshed: bool) -> Ending:
    status = fault.status
    where = f"{url} refused the handshake with HTTP {status}"
    if status == 401:
        if has_tokens and not refreshed:
            return Ending(f"{where}; fetching a fresh token", code=status, refresh_token=True)
        step = (
            "a freshly fetched token was refused too: check the OAuth client's roles and region"
            if has_tokens
            else "no TokenProvider was given; pass tokens=TokenProvider(...)"
        )
        auth = AuthError(f"{where}; {step}")
        return Ending(str(auth), auth, final=True, code=status)
    if status == 403:
        auth = AuthError(f"{where}; the token lacks a permission: check the client's roles")
        return Ending(str(auth), auth, final=True, code=status)
    if status == 429:
        limited = RateLimited(f"{where} (rate limited)", fault.retry_after_s or 0.0)
        return Ending(str(limited), limited, code=status, retry_after_s=fault.retry_after_s)
    if status == 408 or status >= 500:
        lost = ConnectionLost(f"{where}; the server failed")
        return Ending(str(lost), lost, code=status)
    error = TransportError(f"{where}; check the URL and the dialect")
    return Ending(str(error), error, final=True, code=status)


def _peer_closed(fault: PeerClosed) -> Ending:
    code = fault.code
    said = f"the peer closed with {code if code is not None else 'no code'}"
    said += f" ({fault.reason})" if fault.reason else ""
    if code == CLOSE_CODE_NORMAL:
        return Ending(f"{said}: the stream ended", final=True, code=code)
    if code in FATAL_CLOSE_CODES:
        error = TransportError(f"{said}; reconnecting would be refused the same way")
        return Ending(str(error), error, final=True, code=code)
    lost = ConnectionLost(said)
    return Ending(said, lost, code=code)


Classifier: TypeAlias = Callable[..., Ending]
"""``classify``'s signature: ``(fault, *, url, has_tokens, token_refreshed) -> Ending``."""

# -- what the shell must do -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    """Run one token fetch + handshake; ``refresh_token``: invalidate the cached token
    first (the previous handshake of this attempt was answered 401)."""

    refresh_token: bool = False


@dataclass(frozen=True, slots=True)
class SendPing:
    payload: bytes


@dataclass(frozen=True, slots=True)
class SendClose:
    """Write a close frame (we are closing); the peer's answer or the deadline ends it."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Cut the link now, then report ``connection_ended(ending)``."""

    ending: Ending


Action: TypeAlias = Connect | SendPing | SendClose | Disconnect

State: TypeAlias = Literal["new", "connecting", "connected", "closing", "backoff", "ended"]


@dataclass(frozen=True, slots=True)
class SessionDiagnostics:
    """A snapshot of a session for status lines and tests.

    ``attempts`` counts every connection attempt, ``reconnects`` the successful ones after
    the first. ``backoff_s`` is the last delay scheduled (0 after a stable connection);
    ``uptime_s`` the age of the current connection (0 when down). ``rate_limited`` counts
    429 answers; ``send_throttled`` messages the token bucket held back.

    Delivery (see ``core``): ``messages_out`` counts data frames written (opening messages
    and resends included); ``outbound_inflight`` written but not yet confirmed by a pong;
    ``outbound_confirmed`` proven read by the peer; ``outbound_resent`` written again after
    a drop; ``outbound_dropped`` messages refused by ``send`` or lost with the session's
    end. Every message offered to ``send`` is, at any time, in exactly one of: confirmed,
    in flight, queued, dropped.

    Limits: ``oversized`` connections cut because a frame header announced a message over
    ``max_message_bytes`` (its payload is never read); ``stalled`` connections cut because
    the rest of a frame did not arrive within ``frame_timeout_s`` of its first byte.
    ``bytes_in`` counts WebSocket bytes read after the handshakes.
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
    outbound_inflight: int = 0
    outbound_resent: int = 0
    outbound_confirmed: int = 0
    oversized: int = 0
    stalled: int = 0
    bytes_in: int = 0

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
class Counters:
    """Running totals; the shell adds what only it sees (``messages_in``, ``bytes_in``,
    ``callback_errors``)."""

    attempts: int = 0
    connections: int = 0
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    rtt_ms: float | None = None
    token_refreshes: int = 0
    rate_limited: int = 0
    send_throttled: int = 0
    outbound_dropped: int = 0
    outbound_resent: int = 0
    outbound_confirmed: int = 0
    callback_errors: int = 0
    oversized: int = 0
    stalled: int = 0


WRITE_HIGH_WATER_BYTES = 256 * 1024
"""Above this many unwritten bytes the queue stays put: a peer that stops reading holds
messages in our bounded queue (where ``send`` can refuse) rather than in an unbounded
write buffer."""


class SessionCore:
    """One dial-out session's decisions; see the module docstring.

    Not thread-safe: the shell serialises calls (it holds a lock around each).
    """

    def __init__(
        self,
        *,
        url: str,
        label: str,
        schedule: ReconnectSchedule,
        bucket: TokenBucket,
        has_tokens: bool,
        ping_interval_s: float = 5.0,
        ping_timeout_s: float = 3.0,
        frame_timeout_s: float = 10.0,
        max_message_bytes: int = 1 << 20,
        close_wait_s: float = 1.0,
        outbound_capacity: int = 1000,
        classifier: Classifier = classify,
    ) -> None:
        checks.number(
            "ping_interval_s", ping_interval_s, low=0.0, unit="s", hint="0 disables idle pings"
        )
        checks.number(
            "ping_timeout_s", ping_timeout_s, low=0.0, above=True, unit="s", hint="try 3.0"
        )
        checks.number(
            "frame_timeout_s", frame_timeout_s, low=0.0, above=True, unit="s", hint="try 10.0"
        )
        checks.count("max_message_bytes", max_message_bytes, low=126, hint="the default is 1 MiB")
        checks.count(
            "outbound_capacity",
            outbound_capacity,
            low=1,
            hint="it counts messages held while disconnected",
        )
        self.url = url
        self.label = label
        self.schedule = schedule
        self.counters = Counters()
        self.outcome: JitterlineError | None = None
        self.state: State = "new"
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.max_message_bytes = max_message_bytes
        self.close_wait_s = close_wait_s
        self._bucket = bucket
        self._has_tokens = has_tokens
        self._capacity = outbound_capacity
        self._classify = classifier
        self._queue: deque[str | bytes] = deque()
        self._inflight: deque[str | bytes] = deque()
        self._events: list[ConnectionEvent] = []
        self._actions: list[Action] = []
        self._warned: set[str] = set()
        self._refreshing = False  # this attempt's handshake was answered 401 once
        self._retry_at_s: float | None = None
        self._connected_at_s: float | None = None
        self._close_by_s: float | None = None
        # Per-link state, reset by _reset_link on every connection.
        self._ping_payload = b""
        self._ping_sent_s: float | None = None
        self._ping_covers = 0
        self._ping_count = 0
        self._last_ping_s = 0.0
        self._frame_due_s: float | None = None
        self._next_send_s: float | None = None
        self._head_throttled = False

    # -- lifecycle inputs ---------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.state == "ended"

    def start(self, now_s: float) -> None:
        if self.state != "new":
            raise ConfigError(
                f"session {self.label} was already started or closed; create a new one"
            )
        self._begin_attempt(now_s)

    def close(self, now_s: float) -> None:
        """Stop for good. A live link gets our close frame and ``close_wait_s`` to answer;
        anything else (connecting, backoff, never started) ends at once."""
        if self.state == "connected":
            self.state = "closing"
            self._close_by_s = now_s + self.close_wait_s
            self._actions.append(SendClose(CLOSE_CODE_NORMAL, "client closed"))
        elif self.state in ("new", "connecting", "backoff"):
            why = "closed before start" if self.state == "new" else "closed by client"
            self._finish(Ending(why, final=True, code=CLOSE_CODE_NORMAL), now_s)

    def fail(self, error: JitterlineError, now_s: float) -> None:
        """End the session with ``error`` whatever the state (the shell hit a bug)."""
        if self.state != "ended":
            self._connected_at_s = None
            self._finish(Ending(str(error), error, final=True), now_s)

    def token_fetched(self, now_s: float) -> None:
        """The attempt obtained a new token from the provider (not a cached one)."""
        self.counters.token_refreshes += 1
        if self._refreshing:
            reason = "handshake answered 401"
        else:
            reason = "first" if self.counters.token_refreshes == 1 else "expiring"
        self._emit("token_refreshed", now_s, reason=reason)

    def attempt_failed(self, fault: Fault, now_s: float) -> None:
        if self.state != "connecting":
            return  # closed meanwhile: the shell discards the attempt
        ending = self._classify(
            fault, url=self.url, has_tokens=self._has_tokens, token_refreshed=self._refreshing
        )
        if ending.refresh_token:
            logger.warning("session %s: handshake refused the token (401)", self.label)
            self._refreshing = True
            self._actions.append(Connect(refresh_token=True))
            return
        if isinstance(ending.error, RateLimited):
            self.counters.rate_limited += 1
        log = logger.error if ending.final else logger.warning
        log("session %s: attempt failed: %s", self.label, ending.reason)
        self._after(ending, now_s)

    def connected(self, now_s: float) -> None:
        if self.state != "connecting":
            return
        self.state = "connected"
        self.counters.connections += 1
        self._connected_at_s = now_s
        self.schedule.connected(now_s)
        self._reset_link(now_s)
        logger.info(
            "session %s connected to %s%s",
            self.label,
            self.url,
            " again" if self.counters.connections > 1 else "",
        )
        self._emit("connected", now_s)

    def connection_ended(self, cause: Fault | Ending, now_s: float) -> None:
        """The link is gone: by a fault the shell saw, or a ``Disconnect`` it carried out."""
        if self.state not in ("connected", "closing"):
            return
        closing = self.state == "closing"
        if closing:
            ending = Ending("closed by client", final=True, code=CLOSE_CODE_NORMAL)
            if isinstance(cause, PeerClosed):  # it read our close frame: all was read
                self.counters.outbound_confirmed += len(self._inflight)
                self._inflight.clear()
        elif isinstance(cause, Ending):
            ending = cause
        else:
            ending = self._classify(
                cause, url=self.url, has_tokens=self._has_tokens, token_refreshed=False
            )
        self._settle_inflight(resend=not ending.final)
        self._connected_at_s = None
        uptime_s = self.schedule.disconnected(now_s)
        logger.info(
            "session %s disconnected after %.1f s: %s", self.label, uptime_s, ending.reason
        )
        self._emit("disconnected", now_s, code=ending.code, reason=ending.reason)
        self._after(ending, now_s)

    # -- link inputs --------------------------------------------------------------------------

    def pong(self, payload: bytes, now_s: float) -> None:
        if self._ping_sent_s is None or payload != self._ping_payload:
            return  # unsolicited, or for a ping of an earlier connection
        rtt_ms = (now_s - self._ping_sent_s) * 1000.0
        self._ping_sent_s = None
        confirmed = min(self._ping_covers, len(self._inflight))
        for _ in range(confirmed):
            self._inflight.popleft()
        self.counters.outbound_confirmed += confirmed
        self._ping_covers = 0
        self.counters.rtt_ms = rtt_ms
        self._emit("pong", now_s, rtt_ms=rtt_ms)

    def frame_header(self, length_bytes: int, message_so_far_bytes: int) -> Ending | None:
        """A frame header announced ``length_bytes``; refuse it before its payload is read
        if the message would exceed ``max_message_bytes``. The caller cuts the link."""
        total = message_so_far_bytes + length_bytes
        if total <= self.max_message_bytes:
            return None
        self.counters.oversized += 1
        self._warn_once(
            "oversized",
            "a frame announced a message of %d bytes, over max_message_bytes=%d; the "
            "connection is cut before its payload is read and the session reconnects "
            "(counted in oversized; logged once)",
            total,
            self.max_message_bytes,
        )
        lost = ConnectionLost(
            f"the peer announced a message of {total} bytes, over "
            f"max_message_bytes={self.max_message_bytes}; raise max_message_bytes if the "
            "peer's messages are really this large"
        )
        return Ending(str(lost), lost, code=CLOSE_CODE_TOO_BIG)

    def frame_progress(self, partial: bool, now_s: float) -> None:
        """After a read: ``partial`` when a frame was begun and not finished. The first
        time, the rest of it must arrive within ``frame_timeout_s``."""
        if not partial:
            self._frame_due_s = None
        elif self._frame_due_s is None:
            self._frame_due_s = now_s + self.frame_timeout_s

    def opening_sent(self, count: int) -> None:
        self.counters.messages_out += count

    # -- outbound -----------------------------------------------------------------------------

    def send(self, data: str | bytes) -> bool:
        """Accept a message for sending (see the module docstring), or refuse it: the
        session is closing or over, or the queue is full (the *newest* is refused)."""
        if self.state in ("closing", "ended"):
            self.counters.outbound_dropped += 1
            return False
        if len(self._queue) >= self._capacity:
            self.counters.outbound_dropped += 1
            self._warn_once(
                "overflow",
                "outbound queue full (outbound_capacity=%d); refusing new messages until "
                "it drains",
                self._capacity,
            )
            return False
        self._queue.append(data)
        return True

    def take_sendable(self, now_s: float, backlog_bytes: int) -> list[str | bytes]:
        """The queued messages to write now, in order: while connected, the bucket has
        tokens and the socket keeps up. They count as written and in flight."""
        taken: list[str | bytes] = []
        if self.state != "connected":
            return taken
        self._next_send_s = None  # a full write buffer waits for the writer, not a timer
        while self._queue and backlog_bytes < WRITE_HIGH_WATER_BYTES:
            wait_s = self._bucket.try_acquire(now_s)
            if wait_s > 0:
                if not self._head_throttled:
                    self.counters.send_throttled += 1
                    self._head_throttled = True
                self._next_send_s = now_s + wait_s
                break
            data = self._queue.popleft()
            self._head_throttled = False
            taken.append(data)
            self._inflight.append(data)
            backlog_bytes += len(data)
        self.counters.messages_out += len(taken)
        return taken

    # -- time ---------------------------------------------------------------------------------

    def poll(self, now_s: float) -> list[Action]:
        """What to do at ``now_s``, in order; the list is handed over (and emptied)."""
        if self.state == "backoff" and self._retry_at_s is not None and now_s >= self._retry_at_s:
            self._begin_attempt(now_s)
        elif self.state == "connected":
            self._poll_link(now_s)
        elif self.state == "closing":
            self._poll_closing(now_s)
        actions, self._actions = self._actions, []
        return actions

    def next_deadline_s(self) -> float | None:
        """When ``poll`` has something to do next (None: only an input can change that)."""
        if self.state == "backoff":
            return self._retry_at_s
        if self.state == "closing":
            return self._close_by_s
        if self.state != "connected":
            return None
        deadlines = [self._frame_due_s, self._next_send_s if self._queue else None]
        if self._ping_sent_s is not None:
            deadlines.append(self._ping_sent_s + self.ping_timeout_s)
        elif self.ping_interval_s > 0:
            deadlines.append(self._last_ping_s + self.ping_interval_s)
        known = [d for d in deadlines if d is not None]
        return min(known) if known else None

    def events(self) -> list[ConnectionEvent]:
        """Lifecycle events since the last call, in order."""
        events, self._events = self._events, []
        return events

    # -- views --------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    def diagnostics(self, now_s: float) -> SessionDiagnostics:
        c = self.counters
        connected_at_s = self._connected_at_s
        return SessionDiagnostics(
            connected=connected_at_s is not None,
            attempts=c.attempts,
            reconnects=max(0, c.connections - 1),
            backoff_s=self.schedule.last_delay_s,
            uptime_s=0.0 if connected_at_s is None else max(0.0, now_s - connected_at_s),
            messages_in=c.messages_in,
            messages_out=c.messages_out,
            rtt_ms=c.rtt_ms,
            token_refreshes=c.token_refreshes,
            rate_limited=c.rate_limited,
            send_throttled=c.send_throttled,
            outbound_queued=len(self._queue),
            outbound_dropped=c.outbound_dropped,
            callback_errors=c.callback_errors,
            outbound_inflight=len(self._inflight),
            outbound_resent=c.outbound_resent,
            outbound_confirmed=c.outbound_confirmed,
            oversized=c.oversized,
            stalled=c.stalled,
            bytes_in=c.bytes_in,
        )

    # -- internals ----------------------------------------------------------------------------

    def _begin_attempt(self, now_s: float) -> None:
        self.state = "connecting"
        self._retry_at_s = None
        self._refreshing = False
        self.schedule.begin_attempt()
        self.counters.attempts += 1
        self._emit("connecting", now_s)
        self._actions.append(Connect())

    def _after(self, ending: Ending, now_s: float) -> None:
        """Where a failed attempt or an ended connection leads: the end, or a backoff."""
        if ending.final:
            self._finish(ending, now_s)
        elif self.schedule.exhausted:
            self._finish(self._give_up(ending), now_s)
        else:
            delay_s = self.schedule.next_delay_s(ending.retry_after_s)
            if isinstance(ending.error, RateLimited):
                self._emit("rate_limited", now_s, code=429, reason=ending.reason, delay_s=delay_s)
            logger.info(
                "session %s: %s; reconnecting in %.2f s", self.label, ending.reason, delay_s
            )
            self._emit(
                "reconnect_scheduled",
                now_s,
                code=ending.code,
                reason=ending.reason,
                delay_s=delay_s,
            )
            self.state = "backoff"
            self._retry_at_s = now_s + delay_s

    def _give_up(self, last: Ending) -> Ending:
        error = ConnectionLost(
            f"gave up after {self.schedule.streak} attempts without a stable connection "
            f"(max_attempts={self.schedule.max_attempts}); last: {last.reason}; check that "
            f"{self.url} is up, or raise max_attempts"
        )
        error.__cause__ = last.error
        return Ending(str(error), error, final=True)

    def _finish(self, ending: Ending, now_s: float) -> None:
        self.state = "ended"
        self.outcome = ending.error
        self._retry_at_s = self._close_by_s = None
        self._settle_inflight(resend=False)
        self.counters.outbound_dropped += len(self._queue)
        self._queue.clear()
        self._actions.clear()
        self._emit("closed", now_s, code=ending.code, reason=ending.reason)

    def _settle_inflight(self, *, resend: bool) -> None:
        """Unconfirmed messages of a lost link: resent first on the next one, or counted."""
        if resend:
            self.counters.outbound_resent += len(self._inflight)
            self._queue.extendleft(reversed(self._inflight))
        else:
            self.counters.outbound_dropped += len(self._inflight)
        self._inflight.clear()

    def _reset_link(self, now_s: float) -> None:
        self._ping_payload = b""
        self._ping_sent_s = None
        self._ping_covers = 0
        self._ping_count = 0
        self._last_ping_s = now_s
        self._frame_due_s = None
        self._next_send_s = None
        self._head_throttled = False

    def _poll_closing(self, now_s: float) -> None:
        if self._close_by_s is not None and now_s >= self._close_by_s:
            self._close_by_s = None  # the peer never answered our close frame: cut it
            self._actions.append(Disconnect(Ending("closed by client", final=True)))

    def _poll_link(self, now_s: float) -> None:
        if self._frame_due_s is not None and now_s >= self._frame_due_s:
            self.counters.stalled += 1
            self._warn_once(
                "stalled",
                "the rest of a frame did not arrive within frame_timeout_s=%s; the "
                "connection is cut and the session reconnects (counted in stalled; logged once)",
                self.frame_timeout_s,
            )
            lost = ConnectionLost(
                f"the peer stalled mid-frame for frame_timeout_s={self.frame_timeout_s}"
            )
            self._actions.append(Disconnect(Ending(str(lost), lost, code=CLOSE_CODE_ABNORMAL)))
            return
        if self._ping_sent_s is not None:
            if now_s >= self._ping_sent_s + self.ping_timeout_s:  # as next_deadline_s adds
                lost = ConnectionLost(
                    f"no pong within ping_timeout_s={self.ping_timeout_s}; the link is dead"
                )
                self._actions.append(Disconnect(Ending(str(lost), lost)))
            return
        idle_due = self.ping_interval_s > 0 and now_s >= self._last_ping_s + self.ping_interval_s
        if idle_due or self._inflight:
            self._ping_count += 1
            self._ping_payload = f"jl-{self._ping_count}".encode()
            self._ping_sent_s = self._last_ping_s = now_s
            self._ping_covers = len(self._inflight)
            self._actions.append(SendPing(self._ping_payload))

    def _emit(
        self,
        kind: ConnectionKind,
        now_s: float,
        *,
        code: int | None = None,
        reason: str = "",
        delay_s: float | None = None,
        rtt_ms: float | None = None,
    ) -> None:
        self._events.append(
            ConnectionEvent(kind, now_s, self.counters.attempts, code, reason, delay_s, rtt_ms)
        )

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        logger.warning("session %s: " + message, self.label, *args)

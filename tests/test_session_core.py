"""The session's decisions on virtual time: no sockets, no clock, a seeded rng.

Each test plays what the I/O shell would report (an attempt failed, the link came up, a
pong arrived) at chosen times and checks what the core asks for and when.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitterline.errors import AuthError, ConnectionLost, RateLimited, TLSError, TransportError
from jitterline.transport import BackoffPolicy, ReconnectSchedule, TokenBucket
from jitterline.transport.core import (
    FATAL_CLOSE_CODES,
    WRITE_HIGH_WATER_BYTES,
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
    TokenFailed,
    Violation,
    classify,
)

URL = "wss://voice.example.com/stream"
POLICY = BackoffPolicy(initial_s=1.0, max_s=8.0, multiplier=2.0, jitter_ratio=0.25)


def make_core(
    *,
    tokens: bool = True,
    max_attempts: int | None = None,
    rate_per_s: float = 10.0,
    burst: int = 10,
    **options: object,
) -> SessionCore:
    schedule = ReconnectSchedule(
        POLICY, random.Random(3), stable_after_s=10.0, max_attempts=max_attempts
    )
    return SessionCore(
        url=URL,
        label="test",
        schedule=schedule,
        bucket=TokenBucket(rate_per_s, burst, now_s=0.0),
        has_tokens=tokens,
        **options,  # type: ignore[arg-type]
    )


def connected_core(now_s: float = 0.0, **options: Any) -> SessionCore:
    core = make_core(**options)
    core.start(now_s)
    assert core.poll(now_s) == [Connect()]
    core.connected(now_s)
    core.events()
    return core


def kinds(core: SessionCore) -> list[str]:
    return [event.kind for event in core.events()]


# -- how an attempt ends -------------------------------------------------------------------


def test_start_asks_for_one_connect_and_says_connecting() -> None:
    core = make_core()
    core.start(0.0)
    assert core.poll(0.0) == [Connect()]
    assert kinds(core) == ["connecting"]
    assert core.counters.attempts == 1


def test_401_asks_for_one_token_refresh_in_the_same_attempt_then_gives_up_for_good() -> None:
    core = make_core()
    core.start(0.0)
    core.poll(0.0)
    core.attempt_failed(HandshakeRefused(401), 0.1)
    assert core.poll(0.1) == [Connect(refresh_token=True)]
    core.token_fetched(0.2)
    core.attempt_failed(HandshakeRefused(401), 0.3)
    assert core.ended
    assert isinstance(core.outcome, AuthError)
    assert "freshly fetched token was refused too" in str(core.outcome)
    assert core.counters.attempts == 1
    assert [(e.kind, e.reason) for e in core.events()][1:] == [
        ("token_refreshed", "handshake answered 401"),
        ("closed", str(core.outcome)),
    ]


def test_401_without_a_token_provider_is_fatal_at_once() -> None:
    core = make_core(tokens=False)
    core.start(0.0)
    core.poll(0.0)
    core.attempt_failed(HandshakeRefused(401), 0.1)
    assert core.ended
    assert "no TokenProvider was given" in str(core.outcome)


def test_token_reasons_say_first_then_expiring() -> None:
    core = make_core()
    core.start(0.0)
    core.token_fetched(0.0)
    core.token_fetched(1.0)
    assert [e.reason for e in core.events() if e.kind == "token_refreshed"] == [
        "first",
        "expiring",
    ]


def test_429_waits_at_least_the_retry_after_even_when_the_backoff_is_shorter() -> None:
    core = make_core()
    core.start(0.0)
    core.poll(0.0)
    core.attempt_failed(HandshakeRefused(429, retry_after_s=5.0), 1.0)
    events = core.events()
    limited = [e for e in events if e.kind == "rate_limited"]
    assert limited[0].delay_s == 5.0
    assert core.counters.rate_limited == 1
    assert core.next_deadline_s() == 6.0
    assert core.poll(5.99) == []
    assert core.poll(6.0) == [Connect()]
    assert core.counters.attempts == 2


def test_a_token_endpoint_429_is_rate_limited_like_a_handshake_429() -> None:
    core = make_core()
    core.start(0.0)
    core.poll(0.0)
    core.attempt_failed(TokenFailed(RateLimited("token endpoint answered 429", 3.0)), 0.0)
    assert core.counters.rate_limited == 1
    assert core.next_deadline_s() == 3.0


@pytest.mark.parametrize(
    ("fault", "fatal"),
    [
        (TokenFailed(AuthError("client refused")), True),
        (TokenFailed(TLSError("token endpoint certificate refused")), True),
        (TokenFailed(TransportError("token endpoint 503")), False),
        (ConnectFailed("ssl handshake", tls_verify="self-signed certificate"), True),
        (ConnectFailed("ConnectionRefusedError (Connection refused)"), False),
        (HandshakeRefused(403), True),
        (HandshakeRefused(404), True),
        (HandshakeRefused(408), False),
        (HandshakeRefused(503), False),
    ],
)
def test_attempt_failures_are_fatal_or_retried(fault: Fault, fatal: bool) -> None:
    core = make_core()
    core.start(0.0)
    core.poll(0.0)
    core.attempt_failed(fault, 0.0)
    assert core.ended is fatal
    assert (core.state == "backoff") is not fatal


@pytest.mark.parametrize("code", sorted(FATAL_CLOSE_CODES))
def test_fatal_close_codes_end_the_session(code: int) -> None:
    core = connected_core()
    core.connection_ended(PeerClosed(code, "nope"), 1.0)
    assert core.ended
    assert isinstance(core.outcome, TransportError)
    assert kinds(core) == ["disconnected", "closed"]


def test_1000_from_the_peer_ends_the_stream_cleanly() -> None:
    core = connected_core()
    core.connection_ended(PeerClosed(1000, "stream complete"), 1.0)
    assert core.ended
    assert core.outcome is None
    closed = core.events()[-1]
    assert (closed.kind, closed.code) == ("closed", 1000)
    assert "stream complete" in closed.reason


@pytest.mark.parametrize(
    "fault", [PeerClosed(1001), PeerClosed(1011), PeerClosed(None), Dropped("EOF"), Violation("x")]
)
def test_other_endings_reconnect(fault: Fault) -> None:
    core = connected_core()
    core.connection_ended(fault, 1.0)
    assert core.state == "backoff"
    assert kinds(core) == ["disconnected", "reconnect_scheduled"]


def test_classify_is_replaceable() -> None:
    def never_give_up(fault: Fault, **_: object) -> Ending:
        return Ending("retry anyway")

    core = make_core(classifier=never_give_up)
    core.start(0.0)
    core.poll(0.0)
    core.attempt_failed(HandshakeRefused(403), 0.0)
    assert core.state == "backoff"
    assert classify(HandshakeRefused(403), url=URL, has_tokens=True, token_refreshed=False).final


# -- backoff -------------------------------------------------------------------------------


def fail_attempts(core: SessionCore, count: int, start_s: float = 0.0) -> list[float]:
    """Fail ``count`` attempts in a row, each as soon as it may start; returns the delays."""
    now_s = start_s
    delays: list[float] = []
    for _ in range(count):
        assert core.poll(now_s) == [Connect()]
        core.attempt_failed(ConnectFailed("refused"), now_s)
        deadline = core.next_deadline_s()
        if deadline is None:
            break
        delays.append(deadline - now_s)
        now_s = deadline
    return delays


def test_backoff_doubles_to_the_cap_with_jitter_added_on_top() -> None:
    core = make_core()
    core.start(0.0)
    delays = fail_attempts(core, 6)
    steps = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert all(step <= delay <= step * 1.25 for step, delay in zip(steps, delays, strict=True))


def test_max_attempts_gives_up_naming_the_last_failure() -> None:
    core = make_core(max_attempts=3)
    core.start(0.0)
    fail_attempts(core, 3)
    assert core.ended
    assert isinstance(core.outcome, ConnectionLost)
    assert "gave up after 3 attempts" in str(core.outcome)
    assert isinstance(core.outcome.__cause__, ConnectionLost)


def test_a_connection_that_stayed_up_resets_the_streak() -> None:
    core = make_core(max_attempts=2)
    core.start(0.0)
    fail_attempts(core, 1)
    now_s = core.next_deadline_s()
    assert now_s is not None
    core.poll(now_s)
    core.connected(now_s)
    core.connection_ended(Dropped("EOF"), now_s + 30.0)  # stable: up for 30 s
    assert core.state == "backoff"
    assert core.schedule.last_delay_s <= 1.25  # back to the first step


def test_close_during_backoff_ends_at_once_and_nothing_follows() -> None:
    core = make_core()
    core.start(0.0)
    core.poll(0.0)
    core.attempt_failed(HandshakeRefused(429, retry_after_s=30.0), 0.0)
    core.close(1.0)
    assert core.ended and core.outcome is None
    assert core.next_deadline_s() is None
    assert core.poll(60.0) == []


def test_a_late_attempt_result_after_close_is_ignored() -> None:
    core = make_core()
    core.start(0.0)
    core.poll(0.0)
    core.close(0.5)
    core.connected(1.0)
    core.attempt_failed(ConnectFailed("refused"), 1.0)
    assert core.ended
    assert core.counters.connections == 0
    assert kinds(core) == ["connecting", "closed"]


# -- keep-alive and the read deadline ------------------------------------------------------


def test_idle_pings_follow_the_interval_and_a_missing_pong_cuts_the_link() -> None:
    core = connected_core(ping_interval_s=5.0, ping_timeout_s=3.0)
    assert core.next_deadline_s() == 5.0
    assert core.poll(4.9) == []
    assert core.poll(5.0) == [SendPing(b"jl-1")]
    assert core.next_deadline_s() == 8.0
    (cut,) = core.poll(8.0)
    assert isinstance(cut, Disconnect)
    assert "no pong within ping_timeout_s=3.0" in cut.ending.reason


def test_the_matching_pong_measures_rtt_and_others_are_ignored() -> None:
    core = connected_core(ping_interval_s=5.0)
    core.poll(5.0)
    core.pong(b"jl-0", 5.1)  # not ours
    assert core.counters.rtt_ms is None
    core.pong(b"jl-1", 5.25)
    assert core.counters.rtt_ms == pytest.approx(250.0)
    assert core.next_deadline_s() == pytest.approx(10.0)
    assert [e.kind for e in core.events()] == ["pong"]


def test_a_frame_begun_must_finish_within_frame_timeout() -> None:
    core = connected_core(ping_interval_s=0.0, frame_timeout_s=2.0)
    core.frame_progress(True, 1.0)
    core.frame_progress(True, 2.5)  # more bytes: the deadline counts from the first
    assert core.next_deadline_s() == 3.0
    (cut,) = core.poll(3.0)
    assert isinstance(cut, Disconnect)
    assert "stalled mid-frame" in cut.ending.reason
    assert core.counters.stalled == 1


def test_a_finished_frame_clears_the_read_deadline() -> None:
    core = connected_core(ping_interval_s=0.0, frame_timeout_s=2.0)
    core.frame_progress(True, 1.0)
    core.frame_progress(False, 1.5)
    assert core.next_deadline_s() is None
    assert core.poll(10.0) == []


def test_frames_over_max_message_bytes_are_refused_from_their_header() -> None:
    core = connected_core(max_message_bytes=1000)
    assert core.frame_header(1000, 0) is None
    assert core.frame_header(600, 400) is None
    refusal = core.frame_header(601, 400)  # a fragment that takes the message over
    assert refusal is not None and refusal.code == 1009
    assert "max_message_bytes=1000" in refusal.reason
    assert core.counters.oversized == 1


# -- outbound: flushing and delivery -------------------------------------------------------


def test_the_bucket_paces_the_queue_in_order_and_says_when_to_come_back() -> None:
    core = connected_core(rate_per_s=10.0, burst=2, ping_interval_s=0.0)
    for n in range(4):
        assert core.send(f"m{n}")
    assert core.take_sendable(0.0, 0) == ["m0", "m1"]
    assert core.counters.send_throttled == 1
    assert core.next_deadline_s() == pytest.approx(0.1)
    assert core.take_sendable(0.1, 0) == ["m2"]
    assert core.take_sendable(0.2, 0) == ["m3"]
    assert core.counters.messages_out == 4


def test_a_full_write_buffer_holds_the_queue() -> None:
    core = connected_core()
    core.send("m0")
    assert core.take_sendable(0.0, WRITE_HIGH_WATER_BYTES) == []
    assert core.take_sendable(0.0, 0) == ["m0"]


def test_nothing_is_taken_while_disconnected() -> None:
    core = make_core()
    core.send("m0")
    assert core.take_sendable(0.0, 0) == []
    assert core.queued == 1


def test_full_queue_refuses_the_newest_and_counts_it() -> None:
    core = make_core(outbound_capacity=2)
    assert [core.send(f"m{n}") for n in range(3)] == [True, True, False]
    assert core.counters.outbound_dropped == 1


def test_every_write_is_followed_by_a_confirming_ping_and_its_pong_confirms() -> None:
    core = connected_core(ping_interval_s=0.0)
    core.send("a")
    core.send("b")
    assert core.take_sendable(0.0, 0) == ["a", "b"]
    assert core.poll(0.0) == [SendPing(b"jl-1")]
    core.send("c")
    assert core.take_sendable(0.01, 0) == ["c"]
    assert core.poll(0.01) == []  # one ping outstanding at a time
    core.pong(b"jl-1", 0.02)  # proves a and b were read, not c
    assert core.counters.outbound_confirmed == 2
    assert core.diagnostics(0.02).outbound_inflight == 1
    assert core.poll(0.02) == [SendPing(b"jl-2")]


def test_in_flight_messages_of_a_dropped_link_are_resent_first_in_order() -> None:
    core = connected_core(ping_interval_s=0.0)
    for n in range(3):
        core.send(f"m{n}")
    core.take_sendable(0.0, 0)
    core.send("m3")  # queued behind them
    core.connection_ended(Dropped("reset"), 1.0)
    assert core.counters.outbound_resent == 3
    assert core.counters.outbound_dropped == 0
    now_s = core.next_deadline_s()
    assert now_s is not None
    core.poll(now_s)
    core.connected(now_s)
    assert core.take_sendable(now_s, 0) == ["m0", "m1", "m2", "m3"]


def test_close_sends_a_close_frame_and_the_peers_answer_confirms_what_was_in_flight() -> None:
    core = connected_core(ping_interval_s=0.0, close_wait_s=1.0)
    core.send("m0")
    core.take_sendable(0.0, 0)
    core.close(0.5)
    assert core.poll(0.5) == [SendClose(1000, "client closed")]
    assert not core.send("late")
    core.connection_ended(PeerClosed(1000), 0.6)
    assert core.ended and core.outcome is None
    assert core.counters.outbound_confirmed == 1
    assert core.counters.outbound_dropped == 1  # "late"
    assert kinds(core)[-2:] == ["disconnected", "closed"]


def test_close_without_an_answer_is_cut_after_close_wait_and_counts_what_was_unconfirmed() -> None:
    core = connected_core(ping_interval_s=0.0, close_wait_s=1.0)
    core.send("m0")
    core.take_sendable(0.0, 0)
    core.close(0.5)
    core.poll(0.5)
    assert core.next_deadline_s() == 1.5
    (cut,) = core.poll(1.5)
    assert isinstance(cut, Disconnect)
    core.connection_ended(cut.ending, 1.5)
    assert core.ended
    assert core.counters.outbound_dropped == 1
    assert core.events()[-2].code == 1000


# -- properties ----------------------------------------------------------------------------

_inputs = st.one_of(
    st.tuples(st.just("send"), st.integers(0, 3)),
    st.tuples(st.just("pong"), st.integers(0, 5)),
    st.tuples(st.just("connected"), st.integers(0, 0)),
    st.tuples(
        st.just("failed"),
        st.sampled_from(
            [
                HandshakeRefused(401),
                HandshakeRefused(429, 1.0),
                HandshakeRefused(503),
                ConnectFailed("refused"),
            ]
        ),
    ),
    st.tuples(
        st.just("ended"),
        st.sampled_from([Dropped("EOF"), PeerClosed(1001), PeerClosed(1000), Violation("x")]),
    ),
    st.tuples(st.just("frame"), st.booleans()),
    st.tuples(st.just("close"), st.integers(0, 0)),
)


def drive(core: SessionCore, now_s: float, backlog_bytes: int) -> None:
    """What the shell does after every input: write what may go, carry out the actions
    (a ``Disconnect`` ends the link), until the core has nothing more to ask."""
    for _ in range(10):
        core.take_sendable(now_s, backlog_bytes)
        actions = core.poll(now_s)
        if not actions:
            return
        for action in actions:
            if isinstance(action, Disconnect):
                core.connection_ended(action.ending, now_s)
    raise AssertionError("the core kept asking for actions at one instant")


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(_inputs, st.floats(0.0, 3.0), st.sampled_from([0, WRITE_HIGH_WATER_BYTES])),
        max_size=60,
    )
)
def test_any_sequence_of_inputs_keeps_every_offered_message_accounted(
    steps: list[tuple[tuple[str, object], float, int]],
) -> None:
    """Offered = confirmed + in flight + queued + dropped, after every step; nothing
    raises; once the shell has done what the core asked, the next deadline is in the
    future (the loop never spins)."""
    core = make_core(outbound_capacity=5, ping_interval_s=1.0, max_attempts=50)
    core.start(0.0)
    now_s = 0.0
    offered = 0
    for (kind, arg), advance_s, backlog_bytes in steps:
        now_s += advance_s
        if kind == "send":
            offered += 1
            core.send(f"m{offered}")
        elif kind == "pong":
            core.pong(f"jl-{arg}".encode(), now_s)
        elif kind == "connected":
            core.connected(now_s)
        elif kind == "failed":
            core.attempt_failed(arg, now_s)  # type: ignore[arg-type]
        elif kind == "ended":
            core.connection_ended(arg, now_s)  # type: ignore[arg-type]
        elif kind == "frame":
            core.frame_progress(bool(arg), now_s)
        elif kind == "close":
            core.close(now_s)
        drive(core, now_s, backlog_bytes)
        d = core.diagnostics(now_s)
        assert offered == (
            d.outbound_confirmed + d.outbound_inflight + d.outbound_queued + d.outbound_dropped
        )
        deadline = core.next_deadline_s()
        assert deadline is None or deadline > now_s
    if core.ended:
        d = core.diagnostics(now_s)
        assert d.outbound_inflight == d.outbound_queued == 0

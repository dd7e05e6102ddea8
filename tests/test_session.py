"""The dial-out session against real loopback peers: the emulator, a dead port, and
hand-written peers for what the emulator will not do (go silent, trickle a frame, announce
an oversized one, never answer, drop with messages in flight).

Backoffs are short so the whole file runs in seconds; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websocket import ABNF

from jitterline.emulator import Emulator, Impairments
from jitterline.errors import AuthError, ConfigError, ConnectionLost, TLSError, TransportError
from jitterline.frames import ConnectionEvent, ConnectionKind, Message
from jitterline.transport import BackoffPolicy, IOLoop, Session, TokenProvider
from jitterline.transport.dialout import READ_CHUNK_BYTES
from transport_testkit import (
    ClientDialect,
    FakeClock,
    RawPeer,
    abort,
    frame_header,
    read_client_frame,
    server_frame,
    tls_client_context,
    tls_server_context,
    user_input,
)

CLIENT_ID = "jitterline-demo"
SECRET = "canary-secret-4b9e07d2"
FAST = BackoffPolicy(initial_s=0.05, max_s=0.2)
WAIT_S = 10.0


class Recorder:
    """Messages and events in the order the session thread delivered them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.log: list[Message | ConnectionEvent] = []

    def on_message(self, message: Message) -> None:
        with self._cond:
            self.log.append(message)
            self._cond.notify_all()

    def on_event(self, event: ConnectionEvent) -> None:
        with self._cond:
            self.log.append(event)
            self._cond.notify_all()

    def messages(self) -> list[Message]:
        with self._cond:
            return [m for m in self.log if isinstance(m, Message)]

    def events(self, kind: ConnectionKind | None = None) -> list[ConnectionEvent]:
        with self._cond:
            items = list(self.log)
        return [e for e in items if isinstance(e, ConnectionEvent) and kind in (None, e.kind)]

    def audio_per_connection(self) -> list[int]:
        """Audio chunks received on each connection, in connection order."""
        counts: list[int] = []
        with self._cond:
            items = list(self.log)
        for item in items:
            if isinstance(item, ConnectionEvent) and item.kind == "connected":
                counts.append(0)
            elif isinstance(item, Message) and counts and '"audio_chunk"' in str(item.data):
                counts[-1] += 1
        return counts

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, timeout_s), "timed out waiting"

    def wait_for_event(self, kind: ConnectionKind, count: int = 1) -> None:
        self.wait_for(lambda: len(self.events(kind)) >= count)

    def wait_for_audio(self, connection: int, count: int) -> None:
        """Until connection number ``connection`` (from 1) delivered ``count`` chunks."""

        def enough() -> bool:
            counts = self.audio_per_connection()
            return len(counts) >= connection and counts[connection - 1] >= count

        self.wait_for(enough)


def eventually(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def make_session(
    url: str,
    recorder: Recorder,
    *,
    tokens: TokenProvider | None = None,
    on_event: Callable[[ConnectionEvent], None] | None = None,
    **options: Any,
) -> Session:
    return Session(
        url,
        dialect=ClientDialect(),
        on_message=recorder.on_message,
        tokens=tokens,
        on_event=on_event or recorder.on_event,
        rng=random.Random(1),
        backoff=FAST,
        **options,
    )


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def emulator(impairments: Impairments | None = None, **options: object) -> Emulator:
    return Emulator(
        impairments or Impairments(),
        seed=0,
        client_id=CLIENT_ID,
        client_secret=SECRET,
        **options,  # type: ignore[arg-type]
    )


def provider(emu: Emulator, **options: object) -> TokenProvider:
    return TokenProvider(emu.auth_url, CLIENT_ID, SECRET, **options)  # type: ignore[arg-type]


def texts_of_type(texts: list[str], kind: str) -> list[dict[str, object]]:
    documents = [json.loads(text) for text in texts]
    return [doc for doc in documents if doc["type"] == kind]


# -- reconnecting --------------------------------------------------------------------------


def test_stream_survives_five_forced_disconnects_and_audio_resumes_after_each(
    recorder: Recorder,
) -> None:
    with emulator() as emu:
        tokens = provider(emu)
        with make_session(emu.ws_url, recorder, tokens=tokens) as session:
            for connection in range(1, 6):
                recorder.wait_for_audio(connection, 3)
                assert emu.drop_connections() == 1
            recorder.wait_for_audio(6, 3)
            diagnostics = session.diagnostics()
        counters = emu.counters
    assert diagnostics.reconnects == 5
    assert diagnostics.connected
    assert counters.forced_disconnects == 5
    assert counters.connections == 6
    assert all(count >= 3 for count in recorder.audio_per_connection())
    drops = [e for e in recorder.events("disconnected") if e.code == 1006]
    assert len(drops) == 5
    assert counters.token_requests == 1  # the token stayed fresh across every reconnect
    assert session.outcome is None


def test_token_endpoint_is_hit_once_while_fresh_and_again_near_expiry(
    recorder: Recorder,
) -> None:
    clock = FakeClock()
    with emulator() as emu:
        tokens = provider(emu, clock=clock, margin_s=60.0)
        with make_session(emu.ws_url, recorder, tokens=tokens):
            for reconnect in range(1, 3):
                recorder.wait_for_event("connected", reconnect)
                emu.drop_connections()
            recorder.wait_for_event("connected", 3)
            assert emu.counters.token_requests == 1
            clock.now_s += 3600.0 - 60.0  # the token now sits inside the renewal margin
            emu.drop_connections()
            recorder.wait_for_event("connected", 4)
            assert emu.counters.token_requests == 2
    reasons = [e.reason for e in recorder.events("token_refreshed")]
    assert reasons == ["first", "expiring"]


def test_handshake_401_triggers_exactly_one_token_refresh_then_connects(
    recorder: Recorder,
) -> None:
    with emulator(Impairments(reject_first_handshakes=1)) as emu:
        tokens = provider(emu)
        with make_session(emu.ws_url, recorder, tokens=tokens) as session:
            recorder.wait_for_event("connected")
            diagnostics = session.diagnostics()
        counters = emu.counters
    assert counters.rejected_401 == 1
    assert counters.handshakes == 2
    assert counters.token_requests == 2
    assert tokens.refreshes == 2
    assert diagnostics.attempts == 1  # the refresh is part of the attempt, not a backoff
    assert diagnostics.token_refreshes == 2
    reasons = [e.reason for e in recorder.events("token_refreshed")]
    assert reasons == ["first", "handshake answered 401"]
    assert recorder.events("reconnect_scheduled") == []


def test_tokens_expired_by_the_server_mid_stream_are_replaced_on_reconnect(
    recorder: Recorder,
) -> None:
    with emulator() as emu:
        tokens = provider(emu)
        with make_session(emu.ws_url, recorder, tokens=tokens):
            recorder.wait_for_event("connected")
            emu.expire_tokens()
            emu.drop_connections()
            recorder.wait_for_event("connected", 2)
        counters = emu.counters
    assert counters.rejected_401 == 1
    assert counters.token_requests == 2


def test_handshake_refusing_a_fresh_token_too_is_a_fatal_auth_error(recorder: Recorder) -> None:
    with emulator(Impairments(reject_first_handshakes=2)) as emu:
        tokens = provider(emu)
        session = make_session(emu.ws_url, recorder, tokens=tokens)
        session.start()
        assert session.wait(WAIT_S)
        session.close()
        counters = emu.counters
    assert isinstance(session.outcome, AuthError)
    assert "401" in str(session.outcome)
    assert counters.handshakes == 2
    assert counters.token_requests == 2
    assert recorder.events("reconnect_scheduled") == []
    assert recorder.events()[-1].kind == "closed"


def test_429_with_retry_after_2_delays_the_next_attempt_by_at_least_2_s(
    recorder: Recorder,
) -> None:
    with emulator(Impairments(rate_limit_handshakes=1, retry_after_s=2.0)) as emu:
        with make_session(emu.ws_url, recorder, tokens=provider(emu)) as session:
            recorder.wait_for_event("connected")
            diagnostics = session.diagnostics()
        assert emu.counters.rejected_429 == 1
    first, second = recorder.events("connecting")[:2]
    assert second.at_s - first.at_s >= 2.0
    (limited,) = recorder.events("rate_limited")
    assert limited.code == 429
    assert limited.delay_s is not None and limited.delay_s >= 2.0
    assert diagnostics.rate_limited == 1


def test_close_during_a_backoff_wait_returns_promptly_and_no_reconnect_follows(
    recorder: Recorder,
) -> None:
    with emulator(Impairments(rate_limit_handshakes=1, retry_after_s=30.0)) as emu:
        session = make_session(emu.ws_url, recorder, tokens=provider(emu))
        session.start()
        recorder.wait_for_event("reconnect_scheduled")
        started_s = time.monotonic()
        session.close(timeout_s=5.0)
        assert time.monotonic() - started_s < 5.0
        assert session.wait(0)  # the thread ended: the 30 s wait was cut short
        assert emu.counters.handshakes == 1
    kinds = [e.kind for e in recorder.events()]
    assert kinds[-1] == "closed"
    assert kinds.count("connecting") == 1
    assert session.outcome is None
    assert not session.send("too late")


def test_unreachable_endpoint_gives_up_after_max_attempts(recorder: Recorder) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    session = make_session(f"ws://127.0.0.1:{port}/", recorder, max_attempts=3)
    session.start()
    assert session.wait(WAIT_S)
    session.close()
    outcome = session.outcome
    assert isinstance(outcome, ConnectionLost)
    assert "gave up after 3 attempts" in str(outcome)
    assert isinstance(outcome.__cause__, ConnectionLost)
    assert session.diagnostics().attempts == 3
    assert len(recorder.events("reconnect_scheduled")) == 2


def test_normal_close_by_the_peer_ends_the_session_cleanly(recorder: Recorder) -> None:
    with emulator(duration_s=0.2) as emu:
        session = make_session(emu.ws_url, recorder, tokens=provider(emu))
        session.start()
        assert session.wait(WAIT_S)
        session.close()
    assert session.outcome is None
    closed = recorder.events("closed")[-1]
    assert closed.code == 1000
    assert "stream complete" in closed.reason
    assert recorder.events("reconnect_scheduled") == []


# -- keep-alive ----------------------------------------------------------------------------


def test_pongs_measure_the_round_trip_time(recorder: Recorder) -> None:
    with (
        emulator() as emu,
        make_session(
            emu.ws_url, recorder, tokens=provider(emu), ping_interval_s=0.1, ping_timeout_s=1.0
        ) as session,
    ):
        recorder.wait_for_event("pong", 2)
        diagnostics = session.diagnostics()
    pongs = recorder.events("pong")
    assert all(e.rtt_ms is not None and 0.0 < e.rtt_ms < 1000.0 for e in pongs)
    assert diagnostics.rtt_ms is not None
    assert diagnostics.connection_stats().rtt_ms == diagnostics.rtt_ms


def test_peer_that_stops_answering_pings_is_declared_dead(recorder: Recorder) -> None:
    with RawPeer() as peer:  # upgrades, then never reads or answers: a dead link
        session = make_session(
            peer.url, recorder, ping_interval_s=0.1, ping_timeout_s=0.1, max_attempts=2
        )
        session.start()
        assert session.wait(WAIT_S)
        session.close()
    disconnects = recorder.events("disconnected")
    assert len(disconnects) == 2
    assert all("no pong within ping_timeout_s=0.1" in e.reason for e in disconnects)
    assert isinstance(session.outcome, ConnectionLost)
    assert "gave up after 2 attempts" in str(session.outcome)


def test_wss_to_a_peer_with_an_untrusted_certificate_fails_without_retry(
    recorder: Recorder, tmp_path: Path
) -> None:
    with RawPeer(tls=tls_server_context(tmp_path)) as peer:
        session = make_session(peer.url, recorder)
        session.start()
        assert session.wait(WAIT_S)
        session.close()
    assert isinstance(session.outcome, TLSError)
    assert "TLS verification" in str(session.outcome)
    assert session.diagnostics().attempts == 1  # a bad certificate will not fix itself


# -- sending -------------------------------------------------------------------------------


def test_outbound_queue_flushes_in_order_after_reconnect(recorder: Recorder) -> None:
    queued: list[bool] = []

    def on_event(event: ConnectionEvent) -> None:
        recorder.on_event(event)
        if event.kind == "reconnect_scheduled" and not queued:  # disconnected right now
            queued.extend(session.send(user_input(n)) for n in range(5))

    with emulator() as emu:
        session = make_session(emu.ws_url, recorder, tokens=provider(emu), on_event=on_event)
        with session:
            recorder.wait_for_event("connected")
            emu.drop_connections()
            eventually(lambda: len(emu.received_texts()) >= 7)
            diagnostics = session.diagnostics()
        texts = emu.received_texts()
    assert queued == [True] * 5
    kinds = [json.loads(text)["type"] for text in texts]
    assert kinds == ["initialize", "initialize"] + ["user_input"] * 5
    said = [doc["payload"]["text"] for doc in map(json.loads, texts[2:])]
    assert said == [f"message {n}" for n in range(5)]
    assert diagnostics.outbound_queued == 0
    assert diagnostics.messages_out == 7


def test_messages_sent_before_start_follow_the_opening_message(recorder: Recorder) -> None:
    dialect = ClientDialect(session_id="call-42", metadata={"q": 1})
    with emulator() as emu:
        session = Session(
            emu.ws_url,
            dialect=dialect,
            on_message=recorder.on_message,
            tokens=provider(emu),
            send_rate_per_s=1.0,
            send_burst=1,  # the opening must not wait for the bucket the message took
        )
        assert session.send(user_input(0))
        with session:
            eventually(lambda: len(emu.received_texts()) >= 2)
        texts = emu.received_texts()
    opening = json.loads(texts[0])
    assert opening["type"] == "initialize"
    assert opening["payload"] == {"sessionId": "call-42", "metadata": {"q": 1}}
    assert json.loads(texts[1])["payload"]["text"] == "message 0"


def test_rate_limiter_holds_a_burst_back_without_losing_or_reordering(
    recorder: Recorder,
) -> None:
    with emulator() as emu:
        with make_session(
            emu.ws_url, recorder, tokens=provider(emu), send_rate_per_s=50.0, send_burst=2
        ) as session:
            recorder.wait_for_event("connected")
            assert all(session.send(user_input(n)) for n in range(10))
            eventually(lambda: len(emu.received_texts()) >= 11)
            diagnostics = session.diagnostics()
        texts = emu.received_texts()
    said = [doc["payload"]["text"] for doc in texts_of_type(texts, "user_input")]  # type: ignore[index]
    assert said == [f"message {n}" for n in range(10)]
    assert 1 <= diagnostics.send_throttled <= 8


def test_full_outbound_queue_refuses_the_newest_message_and_counts_it(
    recorder: Recorder,
) -> None:
    session = make_session("ws://127.0.0.1:9/", recorder, outbound_capacity=3)
    assert [session.send(f"m{n}") for n in range(4)] == [True, True, True, False]
    assert session.diagnostics().outbound_dropped == 1
    assert session.diagnostics().outbound_queued == 3
    session.close()
    assert session.wait(0)
    assert session.diagnostics().outbound_dropped == 4  # the queued three went unsent
    assert recorder.events()[-1].kind == "closed"


def test_send_takes_only_text_or_bytes(recorder: Recorder) -> None:
    session = make_session("ws://127.0.0.1:9/", recorder)
    with pytest.raises(ConfigError, match="str \\(text\\) or bytes"):
        session.send(123)  # type: ignore[arg-type]
    session.close()


# -- callbacks, lifecycle, configuration ---------------------------------------------------


def test_callbacks_that_raise_are_logged_once_counted_and_the_stream_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[Message] = []

    def bad_message(message: Message) -> None:
        received.append(message)
        raise RuntimeError("plugin bug")

    def bad_event(event: ConnectionEvent) -> None:
        raise RuntimeError("plugin bug")

    with emulator() as emu, caplog.at_level(logging.WARNING, logger="jitterline"):
        session = Session(
            emu.ws_url,
            dialect=ClientDialect(),
            on_message=bad_message,
            on_event=bad_event,
            tokens=provider(emu),
            backoff=FAST,
        )
        with session:
            eventually(lambda: len(received) >= 10)
            diagnostics = session.diagnostics()
    assert diagnostics.connected
    assert diagnostics.messages_in >= 10
    assert diagnostics.callback_errors >= 10 + 2  # every message, and connecting/connected
    failures = [r for r in caplog.records if "callback raised" in r.getMessage()]
    assert len(failures) == 2  # once per callback


def test_context_manager_closes_the_session_and_leaves_no_thread_behind(
    recorder: Recorder,
) -> None:
    IOLoop.shared()  # its threads exist once per process, whatever the sessions
    with emulator(require_token=False) as emu:  # no token endpoint keep-alive thread
        threads_before = set(threading.enumerate())
        with make_session(emu.ws_url, recorder) as session:
            recorder.wait_for_event("connected")
            assert set(threading.enumerate()) - threads_before == set()
        assert session.wait(0)
        assert not session.diagnostics().connected
    threads = [t.name for t in threading.enumerate() if t.name.startswith("jitterline-session")]
    assert threads == []
    kinds = [e.kind for e in recorder.events()]
    assert kinds[-2:] == ["disconnected", "closed"]
    assert recorder.events("disconnected")[-1].code == 1000


def test_session_starts_once(recorder: Recorder) -> None:
    session = make_session("ws://127.0.0.1:9/", recorder)
    session.close()
    with pytest.raises(ConfigError, match="already started or closed"):
        session.start()


def test_cleartext_ws_to_a_remote_host_is_refused_unless_allowed(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError, match="use wss://"):
        make_session("ws://voice.example.com/stream", recorder)
    with caplog.at_level(logging.WARNING, logger="jitterline"):
        make_session("ws://voice.example.com/stream", recorder, allow_insecure=True)
    assert "allow_insecure=True" in caplog.text
    make_session("wss://voice.example.com/stream", recorder)
    make_session("ws://[::1]:9/stream", recorder)
    with pytest.raises(ConfigError, match="scheme 'https'"):
        make_session("https://voice.example.com/stream", recorder)


@pytest.mark.parametrize(
    "options",
    [
        {"ping_timeout_s": 0.0},
        {"ping_interval_s": -1.0},
        {"outbound_capacity": 0},
        {"send_rate_per_s": 0.0},
        {"max_attempts": 0},
        {"stable_after_s": float("nan")},
    ],
)
def test_session_refuses_settings_that_cannot_work(
    recorder: Recorder, options: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError):
        make_session("ws://127.0.0.1:9/", recorder, **options)


# -- secrets -------------------------------------------------------------------------------


class RecordingTokens(TokenProvider):
    """Remembers every token it handed out, so the test can look for them in the logs."""

    seen: set[str]

    def token(self) -> str:
        value = super().token()
        self.seen.add(value)
        return value


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="jitterline")
    yield caplog


def test_secret_and_tokens_never_appear_in_logs_reprs_or_errors(
    recorder: Recorder, debug_logs: pytest.LogCaptureFixture
) -> None:
    url_token = "canary-url-token-13c5"
    with emulator(Impairments(reject_first_handshakes=1)) as emu:
        tokens = RecordingTokens(emu.auth_url, CLIENT_ID, SECRET)
        tokens.seen = set()
        url = f"{emu.ws_url}?access_token={url_token}"
        with make_session(url, recorder, tokens=tokens) as session:
            recorder.wait_for_event("connected")
            emu.drop_connections()
            recorder.wait_for_event("connected", 2)
            texts = [repr(session), repr(tokens), repr(session.diagnostics())]
        texts += [repr(event) for event in recorder.events()]
    with emulator(Impairments(reject_first_handshakes=2)) as emu:
        tokens_2 = RecordingTokens(emu.auth_url, CLIENT_ID, SECRET)
        tokens_2.seen = set()
        failing = make_session(emu.ws_url, Recorder(), tokens=tokens_2)
        failing.start()
        assert failing.wait(WAIT_S)
        failing.close()
    assert isinstance(failing.outcome, AuthError)
    texts.append("".join(traceback.format_exception(failing.outcome)))
    texts.append(debug_logs.text)
    texts += [str(record.args) for record in debug_logs.records]
    everything = "\n".join(texts)
    canaries = {SECRET, url_token} | tokens.seen | tokens_2.seen
    assert len(tokens.seen) == 2 and len(tokens_2.seen) == 2
    assert "session" in debug_logs.text  # the logs were captured at all
    for canary in canaries:
        assert canary not in everything


# -- limits: no peer can stall or flood a session ------------------------------------------


def _hello_then_hold(connection: socket.socket, stop: threading.Event) -> None:
    connection.sendall(server_frame(ABNF.OPCODE_TEXT, b"hello"))
    stop.wait(WAIT_S)


def test_peer_trickling_a_frame_is_cut_after_frame_timeout_and_the_session_reconnects(
    recorder: Recorder,
) -> None:
    def script(connection: socket.socket, number: int) -> None:
        if number > 1:
            _hello_then_hold(connection, peer.stop)
            return
        connection.sendall(frame_header(ABNF.OPCODE_TEXT, 1_000_000))  # 1 MB announced
        while not peer.stop.wait(0.05):  # ... and one byte at a time
            connection.sendall(b"x")

    with (
        RawPeer(script) as peer,
        make_session(peer.url, recorder, frame_timeout_s=0.5, ping_interval_s=0) as session,
    ):
        recorder.wait_for(lambda: any(m.data == "hello" for m in recorder.messages()))
        diagnostics = session.diagnostics()
    first = recorder.events("disconnected")[0]
    assert "stalled mid-frame for frame_timeout_s=0.5" in first.reason
    assert diagnostics.stalled == 1
    assert diagnostics.reconnects == 1
    assert diagnostics.bytes_in < 1000  # the header and a few trickled bytes, no more


def test_frame_announcing_more_than_max_message_bytes_is_refused_before_its_payload_is_read(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    cap = 256 * 1024
    sent: list[int] = []

    def script(connection: socket.socket, number: int) -> None:
        if number > 1:
            _hello_then_hold(connection, peer.stop)
            return
        connection.sendall(frame_header(ABNF.OPCODE_BINARY, 10_000_000))
        connection.settimeout(0.5)
        block = b"\0" * 65536
        with contextlib.suppress(OSError):  # until the client cut us off or buffers fill
            for _ in range(64):
                connection.sendall(block)
                sent.append(len(block))

    with (
        RawPeer(script) as peer,
        caplog.at_level(logging.WARNING, logger="jitterline"),
        make_session(peer.url, recorder, max_message_bytes=cap) as session,
    ):
        recorder.wait_for(lambda: any(m.data == "hello" for m in recorder.messages()))
        diagnostics = session.diagnostics()
    first = recorder.events("disconnected")[0]
    assert first.code == 1009
    assert "max_message_bytes=262144" in first.reason
    assert diagnostics.oversized == 1
    assert diagnostics.reconnects == 1
    assert sent  # the peer pushed payload (4 MB if nobody cut it off)...
    assert diagnostics.bytes_in <= READ_CHUNK_BYTES + 100  # ...of which we read one chunk
    assert caplog.text.count("over max_message_bytes") == 1


def test_text_that_is_not_utf8_breaks_the_protocol_and_the_session_reconnects(
    recorder: Recorder,
) -> None:
    def script(connection: socket.socket, number: int) -> None:
        if number > 1:
            _hello_then_hold(connection, peer.stop)
            return
        connection.sendall(server_frame(ABNF.OPCODE_TEXT, b"caf\xe9"))
        peer.stop.wait(WAIT_S)

    with RawPeer(script) as peer, make_session(peer.url, recorder) as session:
        recorder.wait_for(lambda: any(m.data == "hello" for m in recorder.messages()))
        diagnostics = session.diagnostics()
    first = recorder.events("disconnected")[0]
    assert first.code == 1002
    assert "not UTF-8" in first.reason
    assert diagnostics.messages_in == 1


@pytest.mark.parametrize(
    "fragments",
    [
        [b"\xed\xa0\x80"],  # a UTF-16 surrogate, encoded: not UTF-8 (RFC 3629 section 3)
        [b"\xc0\xaf"],  # an overlong "/"
        [b"euro \xe2\x82", b""],  # a character cut short by the end of the message
        [b"a\xff", b"b"],  # a byte no UTF-8 sequence uses, in the first fragment
    ],
    ids=["surrogate", "overlong", "truncated", "invalid-byte"],
)
def test_text_the_library_does_not_validate_is_still_refused_when_not_utf8(
    recorder: Recorder, fragments: list[bytes]
) -> None:
    """websocket-client's own UTF-8 check is off (it is pure Python and was most of the
    read cost); the session's strict decode of the whole message must refuse all of it."""

    def script(connection: socket.socket, number: int) -> None:
        if number > 1:
            _hello_then_hold(connection, peer.stop)
            return
        last = len(fragments) - 1
        connection.sendall(
            b"".join(
                server_frame(ABNF.OPCODE_CONT if i else ABNF.OPCODE_TEXT, part, fin=i == last)
                for i, part in enumerate(fragments)
            )
        )
        peer.stop.wait(WAIT_S)

    with RawPeer(script) as peer, make_session(peer.url, recorder) as session:
        recorder.wait_for(lambda: any(m.data == "hello" for m in recorder.messages()))
        diagnostics = session.diagnostics()
    assert [m.data for m in recorder.messages()] == ["hello"]
    first = recorder.events("disconnected")[0]
    assert (first.code, "not UTF-8" in first.reason) == (1002, True)
    assert diagnostics.messages_in == 1


def test_a_character_split_across_fragments_arrives_whole(recorder: Recorder) -> None:
    def script(connection: socket.socket, number: int) -> None:
        connection.sendall(
            server_frame(ABNF.OPCODE_TEXT, b"5 \xe2\x82", fin=False)
            + server_frame(ABNF.OPCODE_CONT, b"\xac")
        )
        peer.stop.wait(WAIT_S)

    with RawPeer(script) as peer, make_session(peer.url, recorder):
        recorder.wait_for(lambda: len(recorder.messages()) == 1)
        dropped = recorder.events("disconnected")
    assert recorder.messages()[0].data == "5 \u20ac"
    assert dropped == []


def test_a_ping_from_the_peer_is_answered_with_its_payload(recorder: Recorder) -> None:
    answers: list[tuple[int, bytes]] = []

    def script(connection: socket.socket, number: int) -> None:
        connection.sendall(server_frame(ABNF.OPCODE_PING, b"are-you-there"))
        while not answers or answers[-1][0] != ABNF.OPCODE_PONG:
            answers.append(read_client_frame(connection))
        peer.stop.wait(WAIT_S)

    with RawPeer(script) as peer, make_session(peer.url, recorder, ping_interval_s=0):
        eventually(lambda: bool(answers) and answers[-1][0] == ABNF.OPCODE_PONG)
    assert answers[-1] == (ABNF.OPCODE_PONG, b"are-you-there")


def test_wss_reads_everything_tls_decrypted_ahead_of_the_socket(
    recorder: Recorder, tmp_path: Path
) -> None:
    """One burst of many TLS records: the decrypted bytes wait in the SSL object, where
    epoll cannot see them; every message must still arrive without more traffic."""
    big = "b" * 200_000
    burst = server_frame(ABNF.OPCODE_TEXT, big.encode()) + b"".join(
        server_frame(ABNF.OPCODE_TEXT, f"small {n}".encode()) for n in range(50)
    )

    def script(connection: socket.socket, number: int) -> None:
        connection.sendall(burst)
        peer.stop.wait(WAIT_S)

    with (
        RawPeer(script, tls=tls_server_context(tmp_path)) as peer,
        make_session(
            peer.url, recorder, tls_context=tls_client_context(tmp_path), ping_interval_s=0
        ),
    ):
        recorder.wait_for(lambda: len(recorder.messages()) == 51)
    texts = [m.data for m in recorder.messages()]
    assert texts == [big] + [f"small {n}" for n in range(50)]


# -- close() while blocking work is in flight ----------------------------------------------


def _wait_until_connecting(recorder: Recorder) -> None:
    recorder.wait_for_event("connecting")
    time.sleep(0.3)  # let the executor job block in its connect step


@pytest.mark.parametrize("step", ["http upgrade", "tls handshake", "token request"])
def test_close_returns_promptly_while_a_connect_step_is_in_flight(
    recorder: Recorder, step: str
) -> None:
    IOLoop.shared()
    with RawPeer(upgrade=False) as peer:  # accepts TCP (backlog), never answers
        tokens = None
        url = peer.url
        if step == "tls handshake":
            url = url.replace("ws://", "wss://")
        elif step == "token request":
            tokens = TokenProvider(f"http://127.0.0.1:{peer.port}", CLIENT_ID, SECRET)
        session = make_session(url, recorder, tokens=tokens)
        threads_before = set(threading.enumerate())
        session.start()
        _wait_until_connecting(recorder)
        started_s = time.monotonic()
        session.close(timeout_s=5.0)
        closed_in_s = time.monotonic() - started_s
        assert session.wait(0)
        assert set(threading.enumerate()) - threads_before == set()  # none added
    assert closed_in_s < 3.0  # a generous bound; the close itself does not wait
    assert session.outcome is None
    assert [e.kind for e in recorder.events()][-1] == "closed"
    assert session.diagnostics().attempts == 1
    if tokens is not None:
        tokens.close()


def test_tls_failure_at_the_token_endpoint_is_fatal_like_a_wss_tls_failure(
    recorder: Recorder, tmp_path: Path
) -> None:
    with RawPeer(tls=tls_server_context(tmp_path)) as token_peer, emulator() as emu:
        tokens = TokenProvider(f"https://127.0.0.1:{token_peer.port}", CLIENT_ID, SECRET)
        session = make_session(emu.ws_url, recorder, tokens=tokens)
        session.start()
        assert session.wait(WAIT_S)
        session.close()
        tokens.close()
    assert isinstance(session.outcome, TLSError)
    assert "TLS verification" in str(session.outcome)
    assert session.diagnostics().attempts == 1
    assert recorder.events("reconnect_scheduled") == []


# -- delivery across a drop ----------------------------------------------------------------


class FrameLog:
    """What a ``RawPeer`` read from the client, per connection."""

    def __init__(self) -> None:
        self.texts: dict[int, list[str]] = {}
        self.lock = threading.Lock()

    def add(self, number: int, text: str) -> None:
        with self.lock:
            self.texts.setdefault(number, []).append(text)

    def of(self, number: int) -> list[str]:
        with self.lock:
            return list(self.texts.get(number, []))


def test_messages_in_flight_when_the_link_drops_are_resent_in_order(recorder: Recorder) -> None:
    """Connection 1 reads the messages but never answers the confirming ping, then resets:
    none was proven read, so all are written again on connection 2, which confirms them."""
    log = FrameLog()

    def script(connection: socket.socket, number: int) -> None:
        while not peer.stop.is_set():
            opcode, payload = read_client_frame(connection)
            if opcode == ABNF.OPCODE_TEXT:
                log.add(number, payload.decode())
            elif opcode == ABNF.OPCODE_PING and number > 1:
                connection.sendall(server_frame(ABNF.OPCODE_PONG, payload))
            if number == 1 and len(log.of(1)) == 6:  # initialize + 5
                abort(connection)
                return

    with RawPeer(script) as peer:
        session = make_session(peer.url, recorder, ping_interval_s=0, ping_timeout_s=5.0)
        with session:
            recorder.wait_for_event("connected")
            assert all(session.send(user_input(n)) for n in range(5))
            eventually(lambda: session.diagnostics().outbound_confirmed == 5)
            diagnostics = session.diagnostics()
    said = [json.loads(text)["payload"]["text"] for text in log.of(2)[1:]]
    assert said == [f"message {n}" for n in range(5)]
    assert log.of(1)[1:] == log.of(2)[1:]
    assert diagnostics.outbound_resent == 5
    assert diagnostics.outbound_dropped == 0
    assert diagnostics.outbound_inflight == 0


def test_messages_unconfirmed_when_the_session_closes_are_counted_as_dropped(
    recorder: Recorder,
) -> None:
    log = FrameLog()

    def script(connection: socket.socket, number: int) -> None:
        with contextlib.suppress(OSError):
            while not peer.stop.is_set():  # reads everything, answers nothing
                opcode, payload = read_client_frame(connection)
                if opcode == ABNF.OPCODE_TEXT:
                    log.add(number, payload.decode())

    with RawPeer(script) as peer:
        session = make_session(peer.url, recorder, ping_interval_s=0, ping_timeout_s=5.0)
        session.start()
        recorder.wait_for_event("connected")
        assert all(session.send(user_input(n)) for n in range(3))
        eventually(lambda: len(log.of(1)) == 4)
        session.close(timeout_s=0.4)  # no close answer comes: 0.2 s, then cut
        diagnostics = session.diagnostics()
    assert diagnostics.outbound_confirmed == 0
    assert diagnostics.outbound_dropped == 3
    assert diagnostics.outbound_inflight == 0


class BrokenDialect(ClientDialect):
    """A protocol object with a bug: it fails when the connection opens."""

    def connection_made(self, now_s: float) -> None:
        raise KeyError("bug")


def test_a_bug_in_the_dialect_ends_the_session_with_an_error_instead_of_hanging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with emulator(require_token=False) as emu:
        session = Session(emu.ws_url, dialect=BrokenDialect(), on_message=lambda m: None)
        session.start()
        assert session.wait(WAIT_S)
        session.close()
    assert isinstance(session.outcome, TransportError)
    assert "failed unexpectedly (KeyError)" in str(session.outcome)
    assert "KeyError" in caplog.text  # logged with its traceback


def test_a_fragmented_message_with_a_ping_inside_arrives_whole(recorder: Recorder) -> None:
    answers: list[tuple[int, bytes]] = []

    def script(connection: socket.socket, number: int) -> None:
        connection.sendall(
            server_frame(ABNF.OPCODE_TEXT, b"frag", fin=False)
            + server_frame(ABNF.OPCODE_PING, b"mid")
            + server_frame(ABNF.OPCODE_CONT, b"ment", fin=False)
            + server_frame(ABNF.OPCODE_CONT, "é".encode())
        )
        while not answers or answers[-1][0] != ABNF.OPCODE_PONG:
            answers.append(read_client_frame(connection))
        peer.stop.wait(WAIT_S)

    with RawPeer(script) as peer, make_session(peer.url, recorder, ping_interval_s=0):
        recorder.wait_for(lambda: len(recorder.messages()) == 1)
        eventually(lambda: bool(answers) and answers[-1][0] == ABNF.OPCODE_PONG)
    assert recorder.messages()[0].data == "fragmenté"
    assert answers[-1] == (ABNF.OPCODE_PONG, b"mid")


def test_a_peer_that_stops_reading_fills_the_queue_not_the_loop(recorder: Recorder) -> None:
    """Writes never block the shared loop: the bytes wait in a bounded buffer, then the
    bounded queue refuses the newest messages; the loop keeps serving everyone else."""

    def script(connection: socket.socket, number: int) -> None:
        peer.stop.wait(WAIT_S)  # upgraded, then never reads a byte

    async def ping_the_loop() -> str:
        return "served"

    chunk = "z" * 10_000
    with RawPeer(script) as peer:
        session = make_session(
            peer.url,
            recorder,
            ping_interval_s=0,
            ping_timeout_s=60.0,
            send_rate_per_s=1e6,
            send_burst=1000,
            outbound_capacity=100,
        )
        with session:
            recorder.wait_for_event("connected")
            accepted = [session.send(chunk) for _ in range(2000)]
            eventually(lambda: session.diagnostics().outbound_queued == 100)
            assert IOLoop.shared().run(ping_the_loop()).result(WAIT_S) == "served"
            diagnostics = session.diagnostics()
    assert accepted.count(False) > 0
    assert diagnostics.outbound_dropped >= accepted.count(False)
    assert diagnostics.connected


def test_a_burst_of_many_frames_in_few_reads_arrives_whole_and_in_order(
    recorder: Recorder,
) -> None:
    """More frames than one readiness hands over and more bytes than one read takes, cut
    at arbitrary points by TCP, one of them masked (a server must not, websocket-client
    unmasks it anyway): every message arrives once, in order."""
    texts = [f"{n:04d} " + "x" * (n % 300) for n in range(1000)]
    key = b"\x01\x02\x03\x04"
    masked = bytes([0x81, 0x80 | 6]) + key + ABNF.mask(key, b"masked")
    burst = b"".join(server_frame(ABNF.OPCODE_TEXT, text.encode()) for text in texts[:500])
    burst += masked + b"".join(server_frame(ABNF.OPCODE_TEXT, t.encode()) for t in texts[500:])

    def script(connection: socket.socket, number: int) -> None:
        connection.sendall(burst)
        peer.stop.wait(WAIT_S)

    with RawPeer(script) as peer, make_session(peer.url, recorder, ping_interval_s=0) as session:
        recorder.wait_for(lambda: len(recorder.messages()) == 1001)
        diagnostics = session.diagnostics()
        dropped = recorder.events("disconnected")
    assert [m.data for m in recorder.messages()] == [*texts[:500], "masked", *texts[500:]]
    assert diagnostics.bytes_in == len(burst)
    assert diagnostics.messages_in == 1001
    assert dropped == []

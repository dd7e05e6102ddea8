"""The dial-out session against real loopback peers: the emulator, a dead port, and a peer
that completes the handshake and then goes silent (which the emulator cannot do).

Backoffs are short so the whole file runs in seconds; every wait is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import re
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from jitterline.emulator import Emulator, Impairments
from jitterline.errors import AuthError, ConfigError, ConnectionLost, TransportError
from jitterline.frames import ConnectionEvent, ConnectionKind, Message
from jitterline.protocols.appfoundry import AppFoundryDialect, user_input_message
from jitterline.transport import BackoffPolicy, Session, TokenProvider
from transport_testkit import SELF_SIGNED_PEM, FakeClock

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
        dialect=AppFoundryDialect(wall_clock=time.time),
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


class SilentPeer:
    """Completes WebSocket handshakes, then never reads or answers: a link gone dead.

    With ``tls`` it first runs a TLS handshake with that context (and drops a client that
    refuses the certificate).
    """

    _GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.05)
        self._stop = threading.Event()
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="test-silent-peer")

    @property
    def url(self) -> str:
        scheme = "ws" if self._tls is None else "wss"
        return f"{scheme}://127.0.0.1:{self._server.getsockname()[1]}/"

    def __enter__(self) -> SilentPeer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: object, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5.0)
        for connection in self._connections:
            connection.close()
        self._server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            self._connections.append(connection)
            connection.settimeout(2.0)
            if self._tls is not None:
                try:
                    connection = self._tls.wrap_socket(connection, server_side=True)
                except (ssl.SSLError, OSError):
                    continue  # the client refused our certificate
                self._connections.append(connection)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                request += connection.recv(4096)
            match = re.search(rb"sec-websocket-key:\s*(\S+)", request, re.IGNORECASE)
            assert match is not None
            accept = base64.b64encode(hashlib.sha1(match.group(1) + self._GUID).digest())
            connection.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )


def test_peer_that_stops_answering_pings_is_declared_dead(recorder: Recorder) -> None:
    with SilentPeer() as peer:
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
    pem = tmp_path / "peer.pem"
    pem.write_text(SELF_SIGNED_PEM)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    with SilentPeer(tls=context) as peer:
        session = make_session(peer.url, recorder)
        session.start()
        assert session.wait(WAIT_S)
        session.close()
    assert isinstance(session.outcome, TransportError)
    assert "TLS verification" in str(session.outcome)
    assert session.diagnostics().attempts == 1  # a bad certificate will not fix itself


# -- sending -------------------------------------------------------------------------------


def test_outbound_queue_flushes_in_order_after_reconnect(recorder: Recorder) -> None:
    queued: list[bool] = []

    def on_event(event: ConnectionEvent) -> None:
        recorder.on_event(event)
        if event.kind == "reconnect_scheduled" and not queued:  # disconnected right now
            queued.extend(session.send(_user_input(n)) for n in range(5))

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


def _user_input(n: int) -> str:
    return user_input_message(f"message {n}", "agent-1", now_wall_s=1_700_000_000.0 + n)


def test_messages_sent_before_start_follow_the_opening_message(recorder: Recorder) -> None:
    with emulator() as emu:
        session = make_session(
            emu.ws_url, recorder, tokens=provider(emu), session_id="call-42", metadata={"q": 1}
        )
        assert session.send(_user_input(0))
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
            assert all(session.send(_user_input(n)) for n in range(10))
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
            dialect=AppFoundryDialect(wall_clock=time.time),
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


def test_context_manager_closes_and_joins_the_session_thread(recorder: Recorder) -> None:
    with emulator() as emu:
        with make_session(emu.ws_url, recorder, tokens=provider(emu)) as session:
            recorder.wait_for_event("connected")
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

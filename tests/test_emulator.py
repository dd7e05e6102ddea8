"""The emulator as a real peer: real HTTP and WebSocket clients against it on 127.0.0.1.

Timings are never asserted: a stream of N frames must arrive within a generous bound, and
waits only ever give the emulator *more* time than it needs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests
import websocket

from jitterline.emulator import PROFILES, Emulator, ImpairmentModel, Impairments, ToneSource
from jitterline.errors import ConfigError
from jitterline.frames import AudioFrame, Malformed, Message
from jitterline.protocols.appfoundry import (
    AppFoundryDialect,
    initialize_message,
    user_input_message,
)

CLOSE_OPCODE = 0x8


class Loopback:
    """The test's side of the loopback: emulators and clients, all closed at teardown."""

    def __init__(self) -> None:
        self.emulators: list[Emulator] = []
        self.clients: list[Any] = []

    def start(self, impairments: Impairments = PROFILES["clean"], **options: Any) -> Emulator:
        emulator = Emulator(impairments, **options)
        self.emulators.append(emulator)
        return emulator.start()

    def connect(self, emulator: Emulator, token: str | None) -> Any:
        headers = [] if token is None else [f"Authorization: Bearer {token}"]
        client = websocket.create_connection(emulator.ws_url, header=headers, timeout=5)
        self.clients.append(client)
        return client

    def open_stream(self, emulator: Emulator, session_id: str = "call-1") -> Any:
        """Token, handshake, initialize, and the server's answer: a client ready for audio."""
        client = self.connect(emulator, fetch_token(emulator).json()["access_token"])
        client.send(initialize_message(session_id, {"agent": "test"}, now_wall_s=time.time()))
        answer = json.loads(client.recv())
        assert answer["type"] == "initialize" and answer["payload"]["sessionId"] == session_id
        return client

    def refusal(self, emulator: Emulator, token: str | None) -> Any:
        """The HTTP answer of a handshake the emulator must refuse."""
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            self.connect(emulator, token)
        return refused.value

    def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(websocket.WebSocketException, OSError):
                client.close(timeout=0.5)
            client.shutdown()  # close() leaves the socket open when the peer is gone
        for emulator in self.emulators:
            emulator.stop()


@pytest.fixture
def net() -> Iterator[Loopback]:
    loopback = Loopback()
    yield loopback
    loopback.close()


def fetch_token(emulator: Emulator, secret: str | None = None) -> requests.Response:
    return requests.post(
        emulator.token_url,
        auth=(emulator.client_id, emulator.client_secret if secret is None else secret),
        data={"grant_type": "client_credentials"},
        timeout=5,
    )


def read_until_close(client: Any) -> tuple[list[str], int, str]:
    """Every text message, then the close code and reason."""
    texts: list[str] = []
    while True:
        opcode, frame = client.recv_data_frame()
        data: bytes = frame.data
        if opcode == CLOSE_OPCODE:
            return texts, int.from_bytes(data[:2], "big"), data[2:].decode()
        texts.append(data.decode())


def parse(texts: list[str]) -> tuple[list[AudioFrame], int]:
    """Frames the appfoundry dialect accepts, and the count it rejects as malformed."""
    dialect = AppFoundryDialect(role="client", session_id="call-1", wall_clock=time.time)
    events = [event for text in texts for event in dialect.receive(Message(text, arrival_s=0.0))]
    frames = [event for event in events if isinstance(event, AudioFrame)]
    return frames, sum(isinstance(event, Malformed) for event in events)


def frame_seqs_until_dropped(client: Any) -> list[int]:
    seqs: list[int] = []
    with contextlib.suppress(websocket.WebSocketConnectionClosedException, OSError):
        while True:
            message = json.loads(client.recv())
            seqs.append(message["payload"]["seq"])
    return seqs


# -- OAuth token endpoint ---------------------------------------------------------------


def test_client_credentials_give_a_bearer_token_with_its_lifetime(net: Loopback) -> None:
    emulator = net.start(token_lifetime_s=600.0)
    response = fetch_token(emulator)
    body = response.json()
    assert response.status_code == 200
    assert body["token_type"] == "bearer" and body["expires_in"] == 600
    assert len(body["access_token"]) >= 32
    assert response.headers["Cache-Control"] == "no-store"
    assert (emulator.counters.token_requests, emulator.counters.tokens_issued) == (1, 1)


def test_wrong_client_secret_gets_401_invalid_client(net: Loopback) -> None:
    emulator = net.start()
    response = fetch_token(emulator, secret="guess")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert (emulator.counters.token_requests, emulator.counters.tokens_issued) == (1, 0)


def test_password_grant_gets_400_unsupported_grant_type(net: Loopback) -> None:
    emulator = net.start()
    response = requests.post(
        emulator.token_url,
        auth=(emulator.client_id, emulator.client_secret),
        data={"grant_type": "password"},
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


# -- WebSocket handshake ----------------------------------------------------------------


def test_handshake_without_token_is_refused_with_401(net: Loopback) -> None:
    emulator = net.start()
    refusal = net.refusal(emulator, None)
    assert refusal.status_code == 401
    assert (emulator.counters.handshakes, emulator.counters.rejected_401) == (1, 1)
    assert emulator.counters.connections == 0


def test_token_not_issued_by_the_endpoint_is_refused(net: Loopback) -> None:
    emulator = net.start()
    assert net.refusal(emulator, "forged-token").status_code == 401


def test_handshake_without_token_passes_when_tokens_are_not_required(net: Loopback) -> None:
    emulator = net.start(require_token=False)
    client = net.connect(emulator, None)
    client.close()
    assert emulator.counters.connections == 1


def test_wrong_path_gets_404(net: Loopback) -> None:
    emulator = net.start()
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(emulator.ws_url.replace("/demo/", "/other/"), timeout=5)
    assert refused.value.status_code == 404


def test_first_handshake_rejected_then_a_fresh_token_gets_in(net: Loopback) -> None:
    emulator = net.start(Impairments(reject_first_handshakes=1))
    token = fetch_token(emulator).json()["access_token"]
    assert net.refusal(emulator, token).status_code == 401
    client = net.connect(emulator, fetch_token(emulator).json()["access_token"])
    client.close()
    counters = emulator.counters
    assert (counters.handshakes, counters.rejected_401, counters.connections) == (2, 1, 1)


def test_rate_limited_handshake_says_when_to_retry(net: Loopback) -> None:
    emulator = net.start(Impairments(rate_limit_handshakes=2, retry_after_s=3.0))
    token = fetch_token(emulator).json()["access_token"]
    for _ in range(2):
        refusal = net.refusal(emulator, token)
        assert refusal.status_code == 429
        assert refusal.resp_headers["retry-after"] == "3"
    net.connect(emulator, token).close()
    assert (emulator.counters.rejected_429, emulator.counters.connections) == (2, 1)


def test_expired_tokens_are_refused_at_the_next_handshake(net: Loopback) -> None:
    emulator = net.start()
    token = fetch_token(emulator).json()["access_token"]
    net.connect(emulator, token).close()
    emulator.expire_tokens()
    assert net.refusal(emulator, token).status_code == 401


# -- the live stream --------------------------------------------------------------------


def test_half_second_stream_arrives_in_order_then_completes_with_1000(net: Loopback) -> None:
    emulator = net.start(duration_s=0.5)
    client = net.open_stream(emulator)
    texts, code, reason = read_until_close(client)
    frames, malformed = parse(texts)
    assert [frame.seq for frame in frames] == list(range(25))
    assert (code, reason, malformed) == (1000, "stream complete", 0)
    assert all(len(frame.payload) == 320 and frame.codec == "L16" for frame in frames)
    assert emulator.wait_complete(5.0)
    counters = emulator.counters
    assert (counters.frames_generated, counters.frames_sent, counters.frames_dropped) == (
        25,
        25,
        0,
    )
    assert '"sessionId":"call-1"' in emulator.received_texts()[0]


def test_duplicates_and_malformed_messages_are_sent_and_counted(net: Loopback) -> None:
    impairments = Impairments(duplicate_rate=0.3, malformed_rate=0.3)
    emulator = net.start(impairments, duration_s=0.5, seed=4, codec="PCMU")
    texts, _, _ = read_until_close(net.open_stream(emulator))
    frames, malformed = parse(texts)
    counters = emulator.counters
    assert counters.duplicates_sent > 0 and counters.malformed_sent > 0
    assert malformed == counters.malformed_sent
    assert len(frames) == counters.frames_sent + counters.duplicates_sent
    assert len({frame.seq for frame in frames}) == counters.frames_sent == 25


def test_same_seed_streams_the_same_impairments_twice(net: Loopback) -> None:
    impairments = replace(PROFILES["lossy"], malformed_rate=0.2)
    model = ImpairmentModel(impairments, seed=21, frame_ms=20.0)
    fates = [model.decide(seq) for seq in range(20)]
    expected_seqs = [fate.seq for fate in fates if not fate.lost]
    expected_malformed = sum(1 for fate in fates if fate.malformed and not fate.lost)
    for _ in range(2):
        emulator = net.start(impairments, duration_s=0.4, seed=21)
        frames, malformed = parse(read_until_close(net.open_stream(emulator))[0])
        assert sorted(frame.seq for frame in frames) == expected_seqs
        assert malformed == expected_malformed
    assert len(expected_seqs) < 20 and expected_malformed > 0


def test_slow_server_stamps_processing_time_between_capture_and_send(net: Loopback) -> None:
    emulator = net.start(PROFILES["slow-server"], duration_s=0.2)
    frames, _ = parse(read_until_close(net.open_stream(emulator))[0])
    delays = [
        f.sent_wall_s - f.capture_wall_s for f in frames if f.sent_wall_s and f.capture_wall_s
    ]
    assert len(delays) == 10
    assert all(0.3 <= delay < 0.32 for delay in delays)


def test_drop_connections_cuts_the_client_and_the_stream_goes_on_live(net: Loopback) -> None:
    emulator = net.start()
    client = net.open_stream(emulator)
    before = [json.loads(client.recv())["payload"]["seq"] for _ in range(5)]
    assert emulator.drop_connections() == 1
    before += frame_seqs_until_dropped(client)
    time.sleep(0.2)  # ten frame times pass with nobody listening
    again = net.open_stream(emulator, "call-1")
    first_after = json.loads(again.recv())["payload"]["seq"]
    again.close()
    assert first_after >= before[-1] + 5
    counters = emulator.counters
    assert counters.forced_disconnects == 1 and counters.frames_dropped >= 5
    assert counters.connections == 2


def test_a_pausing_server_resumes_the_sequence_where_the_dropped_client_left_it(
    net: Loopback,
) -> None:
    emulator = net.start(replace(PROFILES["clean"], offline="pause"), duration_s=1.0)
    client = net.open_stream(emulator)
    before = [json.loads(client.recv())["payload"]["seq"] for _ in range(5)]
    assert emulator.drop_connections() == 1
    before += frame_seqs_until_dropped(client)
    time.sleep(0.2)  # ten frame times pass with nobody listening
    again = net.open_stream(emulator, "call-1")
    after, code, _ = read_until_close(again)

    seqs = before + [json.loads(text)["payload"]["seq"] for text in after]
    assert seqs == list(range(50))  # nothing skipped, nothing sent twice
    assert code == 1000
    counters = emulator.counters
    assert counters.pauses == 1 and counters.forced_disconnects == 1
    assert counters.frames_sent == counters.frames_generated == 50
    assert counters.frames_dropped == 0


def test_scheduled_disconnect_drops_the_connection_mid_stream(net: Loopback) -> None:
    impairments = Impairments(disconnect_every_frames=10, max_disconnects=1)
    emulator = net.start(impairments, duration_s=2.0)
    seqs = frame_seqs_until_dropped(net.open_stream(emulator))
    assert seqs == list(range(10))
    assert emulator.counters.forced_disconnects == 1


def test_initialize_naming_no_session_joins_the_emulator_session(net: Loopback) -> None:
    emulator = net.start(duration_s=0.1, require_token=False)
    client = net.connect(emulator, None)
    client.send('{"type":"initialize","timestamp":1.0,"payload":{}}')
    answer = json.loads(client.recv())
    assert (answer["type"], answer["payload"]) == ("initialize", {"sessionId": "emulator-session"})
    assert json.loads(client.recv())["type"] == "audio_chunk"


def test_only_an_initialize_is_answered_and_starts_the_audio(net: Loopback) -> None:
    emulator = net.start(duration_s=0.1, require_token=False)
    client = net.connect(emulator, None)
    client.send(user_input_message("hello", "u1", now_wall_s=time.time()))
    client.send('{"type":"initialize","payload":{"sessionId":5}}')
    client.send("not json")
    client.send(initialize_message("call-2", {}, now_wall_s=time.time()))
    texts, code, _ = read_until_close(client)
    assert json.loads(texts[0])["payload"] == {"sessionId": "call-2"}
    frames, malformed = parse(texts[1:])
    assert (len(frames), malformed, code) == (5, 0, 1000)
    assert len(emulator.received_texts()) == 4


def test_connection_after_the_stream_completed_is_closed_normally(net: Loopback) -> None:
    emulator = net.start(duration_s=0.1)
    read_until_close(net.open_stream(emulator))
    assert emulator.wait_complete(5.0)
    late = net.connect(emulator, fetch_token(emulator).json()["access_token"])
    assert read_until_close(late) == ([], 1000, "stream complete")


def test_stop_is_prompt_idempotent_and_frees_its_threads(net: Loopback) -> None:
    emulator = net.start(source=ToneSource(freq_hz=1000.0))
    net.open_stream(emulator)
    ws_url = emulator.ws_url
    emulator.stop()
    emulator.stop()
    names = [thread.name for thread in threading.enumerate()]
    assert not any(name.startswith("jitterline-emulator") for name in names)
    with pytest.raises(OSError):
        websocket.create_connection(ws_url, timeout=2)
    with pytest.raises(ConfigError, match="starts once"):
        emulator.start()


def test_tokens_and_secrets_never_reach_the_logs(
    net: Loopback, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator = net.start(client_secret="very-secret-value")
    token = fetch_token(emulator).json()["access_token"]
    client = net.connect(emulator, token)
    client.close()
    emulator.expire_tokens()
    net.refusal(emulator, token)
    assert caplog.records  # logging did run at DEBUG
    assert token not in caplog.text
    assert "very-secret-value" not in caplog.text and "very-secret-value" not in repr(emulator)


@pytest.mark.parametrize(
    "options",
    [{"codec": "OPUS"}, {"frame_ms": 7.3}, {"duration_s": 0.0}, {"sample_rate": 0}],
)
def test_bad_configuration_is_refused_before_binding(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Emulator(**options)

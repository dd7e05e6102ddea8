"""The appfoundry dialect in both roles, fed recorded-style messages: no sockets."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialect_testkit import (
    JSON_VALUES,
    exchange,
    mostly,
    only_frame,
    only_malformed,
    receive_checked,
)
from jitterline.errors import ConfigError, DialectError
from jitterline.frames import (
    AudioFrame,
    Message,
    StreamError,
    StreamOpened,
    StreamSignal,
)
from jitterline.protocols import Dialect
from jitterline.protocols.appfoundry import (
    AppFoundryDialect,
    AudioChunk,
    audio_chunk_message,
    error_message,
    initialize_ack_message,
    initialize_message,
    user_input_message,
)
from jitterline.protocols.builtin import builtin_dialects

WALL_S = 1_700_000_000.25
AUDIO_20MS_L16 = bytes(range(256)) + bytes(64)  # 320 bytes = 160 samples = 20 ms at 8 kHz
CLIENT_EVENTS = (AudioFrame, StreamOpened, StreamError)
SERVER_EVENTS = (StreamOpened, StreamSignal)


def client(session_id: str = "sess-1", **options: Any) -> AppFoundryDialect:
    return AppFoundryDialect(
        role="client", session_id=session_id, wall_clock=lambda: WALL_S, **options
    )


def server(**options: Any) -> AppFoundryDialect:
    return AppFoundryDialect(role="server", wall_clock=lambda: WALL_S + 1.0, **options)


def streaming_server(session_id: str = "sess-1") -> AppFoundryDialect:
    peer = server()
    peer.receive(message(initialize_message(session_id, {}, now_wall_s=WALL_S)))
    peer.data_to_send()
    return peer


def message(data: str | bytes, arrival_s: float = 5.0) -> Message:
    return Message(data, arrival_s=arrival_s, received_wall_s=WALL_S + 0.3)


def chunk(seq: int | None = 0, *, audio: bytes = AUDIO_20MS_L16, **overrides: Any) -> str:
    fields: dict[str, Any] = {
        "seq": seq,
        "capture_wall_s": WALL_S,
        "sent_wall_s": WALL_S + 0.05,
    }
    fields.update(overrides)
    return audio_chunk_message(audio, **fields)


def raw_chunk(drop: str = "", **payload: Any) -> str:
    """An audio_chunk written by hand, with ``payload`` overriding and ``drop`` removed."""
    base: dict[str, Any] = {
        "audio": base64.b64encode(AUDIO_20MS_L16).decode(),
        "seq": 0,
        "timestamp": WALL_S,
    }
    base.update(payload)
    base.pop(drop, None)
    return json.dumps({"type": "audio_chunk", "timestamp": WALL_S, "payload": base})


# -- the contract ----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["client", "server"])
def test_both_roles_satisfy_the_protocol(role: str) -> None:
    dialect = AppFoundryDialect(role=role, wall_clock=lambda: WALL_S)  # type: ignore[arg-type]
    assert isinstance(dialect, Dialect)
    assert (dialect.name, dialect.role) == ("appfoundry", role)
    assert (dialect.next_deadline_s(), dialect.timer(9.0)) == (None, [])


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ConfigError, match="role='peer'"):
        AppFoundryDialect(role="peer", wall_clock=lambda: WALL_S)  # type: ignore[arg-type]


def test_registry_factory_takes_the_role_and_options() -> None:
    factory = builtin_dialects().get("appfoundry")
    dialect = factory(role="client", session_id="s-7", metadata={"a": 1})
    dialect.connection_made(0.0)
    (sent,) = dialect.data_to_send()
    assert isinstance(sent, str)
    assert json.loads(sent)["payload"] == {"sessionId": "s-7", "metadata": {"a": 1}}
    assert factory(role="server").role == "server"


# -- client role: what we send ---------------------------------------------------------


def test_connection_made_queues_initialize_stamped_by_the_given_wall_clock() -> None:
    dialect = AppFoundryDialect(
        role="client", session_id="sess-42", metadata={"userId": "u1"}, wall_clock=lambda: 1234.5
    )
    assert dialect.data_to_send() == []
    dialect.connection_made(0.0)
    sent = dialect.data_to_send()
    assert len(sent) == 1
    assert isinstance(sent[0], str)
    assert json.loads(sent[0]) == {
        "type": "initialize",
        "timestamp": 1234.5,
        "payload": {"sessionId": "sess-42", "metadata": {"userId": "u1"}},
    }
    assert dialect.data_to_send() == []
    assert only_frame(dialect.receive(message(chunk()))).stream_id == "sess-42"


def test_reconnect_sends_initialize_again_and_the_stream_goes_on() -> None:
    dialect = client()
    dialect.connection_made(0.0)
    dialect.receive(message(chunk(seq=None)))
    assert dialect.connection_lost(1.0) == []
    dialect.connection_made(2.0)
    assert [json.loads(text)["type"] for text in dialect.data_to_send()] == ["initialize"] * 2
    assert only_frame(dialect.receive(message(chunk(seq=None)))).seq == 1


def test_user_input_goes_out_after_initialize() -> None:
    dialect = client()
    with pytest.raises(DialectError, match="state 'idle'"):
        dialect.send_user_input("hi", "u1")
    dialect.connection_made(0.0)
    dialect.send_user_input("hi", "u1")
    assert [json.loads(text)["type"] for text in dialect.data_to_send()] == [
        "initialize",
        "user_input",
    ]


def test_initialize_goes_ahead_of_what_a_dropped_connection_left_unsent() -> None:
    dialect = client()
    dialect.connection_made(0.0)
    dialect.data_to_send()
    dialect.send_user_input("lost?", "u1")
    dialect.connection_made(1.0)
    assert [json.loads(text)["type"] for text in dialect.data_to_send()] == [
        "initialize",
        "user_input",
    ]


def test_client_cannot_originate_server_messages() -> None:
    dialect = client()
    with pytest.raises(DialectError, match="only a server"):
        dialect.send_error(1, "no")
    with pytest.raises(DialectError, match="only a server"):
        dialect.send_audio(AudioChunk(b"\x00\x00", capture_wall_s=1.0, sent_wall_s=1.0))


def test_end_sends_nothing_and_expects_the_close() -> None:
    dialect = client()
    dialect.connection_made(0.0)
    dialect.data_to_send()
    assert not dialect.close_expected()
    dialect.end("drain", 3.0)
    assert (dialect.data_to_send(), dialect.close_expected()) == ([], True)


# -- client role: what the server sends ------------------------------------------------


def test_audio_chunk_becomes_frame_with_sender_and_receiver_times() -> None:
    frame = only_frame(client().receive(message(chunk(seq=7), arrival_s=12.5)))
    assert frame == AudioFrame(
        stream_id="sess-1",
        seq=7,
        media_ms=WALL_S * 1000.0,
        codec="L16",
        sample_rate=8000,
        channels=1,
        payload=AUDIO_20MS_L16,
        duration_ms=20.0,
        arrival_s=12.5,
        capture_wall_s=WALL_S,
        sent_wall_s=WALL_S + 0.05,
        received_wall_s=WALL_S + 0.3,
    )
    assert frame.channel == ""


def test_chunk_without_format_rate_channels_is_l16_8khz_mono() -> None:
    data = json.dumps(
        {
            "type": "audio_chunk",
            "timestamp": WALL_S,
            "payload": {"audio": base64.b64encode(bytes(160)).decode(), "timestamp": WALL_S},
        }
    )
    frame = only_frame(client().receive(message(data)))
    assert (frame.codec, frame.sample_rate, frame.channels) == ("L16", 8000, 1)
    assert frame.duration_ms == 10.0


def test_pcmu_stereo_16khz_chunk_duration_counts_both_channels() -> None:
    data = chunk(audio=bytes(640), codec="PCMU", rate=16000, channels=2)
    frame = only_frame(client().receive(message(data)))
    assert (frame.codec, frame.sample_rate, frame.channels) == ("PCMU", 16000, 2)
    assert frame.duration_ms == 20.0


def test_chunk_without_envelope_timestamp_has_no_send_time() -> None:
    envelope = json.loads(chunk())
    del envelope["timestamp"]
    frame = only_frame(client().receive(message(json.dumps(envelope))))
    assert frame.sent_wall_s is None
    assert frame.capture_wall_s == WALL_S


def test_chunks_without_seq_are_numbered_in_arrival_order_from_zero() -> None:
    stream = client()
    seqs = [only_frame(stream.receive(message(chunk(seq=None)))).seq for _ in range(3)]
    assert seqs == [0, 1, 2]


def test_unnumbered_chunk_after_reordered_ones_follows_the_highest_seq() -> None:
    stream = client()
    for seq in (5, 3):  # 3 arrives late, after 5
        stream.receive(message(chunk(seq=seq)))
    assert only_frame(stream.receive(message(chunk(seq=None)))).seq == 6


def test_malformed_chunk_does_not_use_up_a_seq_number() -> None:
    stream = client()
    first = only_frame(stream.receive(message(chunk(seq=None))))
    refused = only_malformed(stream.receive(message(chunk(seq=None, codec="G729"))))
    second = only_frame(stream.receive(message(chunk(seq=None))))
    assert (first.seq, second.seq) == (0, 1)
    assert (refused.kind, refused.stream_id, refused.fatal) == ("format", "sess-1", False)


def test_server_initialize_opens_stream_and_names_later_frames() -> None:
    stream = client(session_id="")
    stream.connection_made(0.0)
    assert stream.state == "connecting"
    events = stream.receive(message(initialize_ack_message("sess-9", now_wall_s=WALL_S)))
    assert events == [StreamOpened("sess-9", 5.0, {}, channels=("",))]
    assert (stream.stream_id, stream.state) == ("sess-9", "open")
    assert only_frame(stream.receive(message(chunk()))).stream_id == "sess-9"


def test_first_audio_also_opens_the_stream() -> None:
    stream = client()
    stream.connection_made(0.0)
    stream.receive(message(chunk()))
    assert stream.state == "open"


def test_echoed_initialize_keeps_metadata_in_info() -> None:
    echoed = initialize_message("sess-1", {"language": "en-US"}, now_wall_s=WALL_S)
    events = client().receive(message(echoed))
    assert events == [
        StreamOpened("sess-1", 5.0, {"metadata": {"language": "en-US"}}, channels=("",))
    ]


def test_server_error_becomes_stream_error_and_stream_goes_on() -> None:
    stream = client()
    events = stream.receive(message(error_message(503, "transcoder busy", now_wall_s=WALL_S)))
    assert events == [StreamError("sess-1", 5.0, "503", "transcoder busy")]
    assert only_frame(stream.receive(message(chunk(seq=1)))).seq == 1


def test_serializers_write_compact_json() -> None:
    text = user_input_message("hello", "u1", now_wall_s=10.0)
    assert text == (
        '{"type":"user_input","timestamp":10.0,"payload":{"text":"hello","userId":"u1"}}'
    )


def test_serializer_refuses_nan_timestamp() -> None:
    with pytest.raises(ConfigError, match="finite"):
        error_message("x", "y", now_wall_s=float("nan"))


def test_non_positive_message_cap_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_message_chars"):
        client(max_message_chars=0)


def test_oversized_text_is_refused_before_parsing() -> None:
    refused = only_malformed(client(max_message_chars=100).receive(message("{" * 101)))
    assert refused.kind == "too_large"
    assert "max_message_chars=100" in refused.detail


def test_error_detail_does_not_echo_a_huge_value() -> None:
    huge_type = "x" * 100_000
    refused = only_malformed(client().receive(message(json.dumps({"type": huge_type}))))
    assert len(refused.detail) < 200


def test_hundreds_of_digits_in_a_timestamp_are_refused_with_the_range() -> None:
    data = raw_chunk(timestamp="T").replace('"T"', "7" * 400)
    refused = only_malformed(client().receive(message(data)))
    assert refused.kind == "timestamp"
    assert "is outside 0..1e+11 epoch seconds" in refused.detail
    assert refused.detail.startswith("audio_chunk payload.timestamp=7777")


_B64_ODD = base64.b64encode(bytes(3)).decode()

MALFORMED = {
    "binary message": b"\x00\x01",
    "not json": "{nope",
    "json array": "[1, 2]",
    "json string": '"audio_chunk"',
    "missing type": '{"payload": {}}',
    "type not a string": '{"type": 3, "payload": {}}',
    "unknown type": '{"type": "hello", "payload": {}}',
    "client-only user_input": user_input_message("hi", "u1", now_wall_s=WALL_S),
    "deep nesting": "[" * 100_000 + "]" * 100_000,
    "huge integer literal": raw_chunk().replace('"seq": 0', '"seq": 1' + "0" * 5000),
    "payload missing": '{"type": "audio_chunk", "timestamp": 1.0}',
    "payload array": '{"type": "audio_chunk", "timestamp": 1.0, "payload": []}',
    "envelope timestamp NaN": raw_chunk().replace(f'"timestamp": {WALL_S}', '"timestamp": NaN', 1),
    "envelope timestamp string": json.dumps(
        {"type": "error", "timestamp": "now", "payload": {"code": 1}}
    ),
    "envelope timestamp negative": json.dumps(
        {"type": "error", "timestamp": -1.0, "payload": {"code": 1}}
    ),
    "envelope timestamp 400 digits": json.dumps(
        {"type": "error", "timestamp": 10**400, "payload": {"code": 1}}
    ),
    "capture timestamp missing": raw_chunk(drop="timestamp"),
    "capture timestamp null": raw_chunk(timestamp=None),
    "capture timestamp infinite": raw_chunk(timestamp=float("inf")),
    "capture timestamp overflowing": raw_chunk(timestamp="T").replace('"T"', "1e999"),
    "capture timestamp negative": raw_chunk(timestamp=-0.5),
    "capture timestamp negative 400 digits": raw_chunk(timestamp=-(10**400)),
    "capture timestamp bool": raw_chunk(timestamp=True),
    "capture timestamp in milliseconds": raw_chunk(timestamp=WALL_S * 1000),
    "audio missing": raw_chunk(drop="audio"),
    "audio not a string": raw_chunk(audio=[1, 2]),
    "audio not ascii": raw_chunk(audio="é" * 4),
    "audio with newline": raw_chunk(audio="AAAA\nAAAA"),
    "audio bad alphabet": raw_chunk(audio="AA*A"),
    "audio bad padding": raw_chunk(audio="AAA"),
    "audio empty": raw_chunk(audio=""),
    "l16 odd byte count": raw_chunk(audio=_B64_ODD),
    "l16 stereo cut mid sample frame": raw_chunk(
        audio=base64.b64encode(bytes(6)).decode(), channels=2
    ),
    "seq negative": raw_chunk(seq=-1),
    "seq float": raw_chunk(seq=1.0),
    "seq string": raw_chunk(seq="3"),
    "seq bool": raw_chunk(seq=True),
    "seq absurd": raw_chunk(seq=2**53 + 1),
    "seq 400 digits": raw_chunk(seq=10**400),
    "rate too low": raw_chunk(rate=7999),
    "rate too high": raw_chunk(rate=192_001),
    "rate bool": raw_chunk(rate=True),
    "channels zero": raw_chunk(channels=0),
    "channels nine": raw_chunk(channels=9),
    "format g729": raw_chunk(format="G729"),
    "format lower case": raw_chunk(format="l16"),
    "format big endian": raw_chunk(format="L16BE"),
    "format array": raw_chunk(format=["L16"]),
    "error code array": json.dumps({"type": "error", "payload": {"code": [1]}}),
    "error code bool": json.dumps({"type": "error", "payload": {"code": False}}),
    "error message number": json.dumps({"type": "error", "payload": {"message": 5}}),
    "initialize session id number": json.dumps(
        {"type": "initialize", "payload": {"sessionId": 5}}
    ),
    "initialize session id empty": json.dumps(
        {"type": "initialize", "payload": {"sessionId": ""}}
    ),
    "initialize metadata array": json.dumps(
        {"type": "initialize", "payload": {"sessionId": "s", "metadata": []}}
    ),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_message_is_one_event_and_stream_goes_on(data: str | bytes) -> None:
    stream = client()
    stream.connection_made(0.0)
    refused = only_malformed(stream.receive(message(data, arrival_s=6.5)))
    assert (refused.stream_id, refused.arrival_s, refused.fatal) == ("sess-1", 6.5, False)
    assert refused.kind and refused.detail
    assert (stream.state, stream.stream_id, stream.close_expected()) == (
        "connecting",
        "sess-1",
        False,
    )
    assert len(stream.data_to_send()) == 1  # our initialize: nothing was answered
    assert only_frame(stream.receive(message(chunk(seq=4)))).seq == 4


# -- server role -----------------------------------------------------------------------


def test_initialize_is_answered_and_opens_the_stream() -> None:
    peer = server()
    data = initialize_message("call-7", {"agent": "a1"}, now_wall_s=WALL_S)
    events = peer.receive(message(data))
    assert events == [StreamOpened("call-7", 5.0, {"metadata": {"agent": "a1"}}, channels=("",))]
    (answer,) = peer.data_to_send()
    assert isinstance(answer, str)
    assert json.loads(answer) == {
        "type": "initialize",
        "timestamp": WALL_S + 1.0,
        "payload": {"sessionId": "call-7"},
    }
    assert (peer.state, peer.stream_id) == ("streaming", "call-7")


def test_initialize_naming_no_session_joins_the_default_one() -> None:
    peer = server(session_id="emulator-session")
    events = peer.receive(message('{"type":"initialize","payload":{}}'))
    assert [event.stream_id for event in events] == ["emulator-session"]
    assert '"sessionId":"emulator-session"' in str(peer.data_to_send()[0])


def test_initialize_naming_no_session_without_a_default_is_refused() -> None:
    peer = server()
    refused = only_malformed(peer.receive(message('{"type":"initialize","payload":{}}')))
    assert (refused.kind, peer.state, peer.data_to_send()) == (
        "session_id",
        "awaiting_initialize",
        [],
    )


def test_repeated_initialize_is_answered_again() -> None:
    peer = streaming_server()
    events = peer.receive(message(initialize_message("sess-1", {}, now_wall_s=WALL_S)))
    assert [type(event) for event in events] == [StreamOpened]
    assert len(peer.data_to_send()) == 1


def test_user_input_becomes_a_signal() -> None:
    events = streaming_server().receive(
        message(user_input_message("hello", "u1", now_wall_s=WALL_S), 8.0)
    )
    assert events == [StreamSignal("sess-1", 8.0, "user_input", {"text": "hello", "userId": "u1"})]


def test_user_input_before_initialize_is_out_of_order() -> None:
    peer = server()
    refused = only_malformed(
        peer.receive(message(user_input_message("hi", "u1", now_wall_s=WALL_S)))
    )
    assert refused.kind == "out_of_order"
    assert "sends initialize first" in refused.detail
    assert peer.state == "awaiting_initialize"


def test_send_audio_waits_for_initialize_then_queues_the_chunk() -> None:
    peer = server()
    audio = AudioChunk(AUDIO_20MS_L16, capture_wall_s=WALL_S, sent_wall_s=WALL_S + 0.2, seq=3)
    with pytest.raises(DialectError, match="state 'awaiting_initialize'"):
        peer.send_audio(audio)
    peer.receive(message(initialize_message("s", {}, now_wall_s=WALL_S)))
    peer.data_to_send()
    peer.send_audio(audio)
    assert peer.data_to_send() == [
        audio_chunk_message(AUDIO_20MS_L16, seq=3, capture_wall_s=WALL_S, sent_wall_s=WALL_S + 0.2)
    ]


def test_send_error_is_stamped_with_the_wall_clock_in_any_state() -> None:
    peer = server()
    peer.send_error(400, "say initialize first")
    (sent,) = peer.data_to_send()
    assert sent == error_message(400, "say initialize first", now_wall_s=WALL_S + 1.0)


def test_server_cannot_send_user_input() -> None:
    with pytest.raises(DialectError, match="only a client"):
        streaming_server().send_user_input("hi", "u1")


def test_server_connection_lost_ends_nothing() -> None:
    peer = streaming_server()
    assert (peer.connection_lost(3.0), peer.close_expected()) == ([], False)


SERVER_MALFORMED = {
    "binary message": b"\x00",
    "not json": "{",
    "audio from a client": chunk(),
    "error from a client": error_message(1, "x", now_wall_s=WALL_S),
    "unknown type": '{"type":"hello","payload":{}}',
    "payload missing": '{"type":"initialize"}',
    "timestamp in milliseconds": json.dumps(
        {"type": "initialize", "timestamp": WALL_S * 1000, "payload": {"sessionId": "s"}}
    ),
    "session id number": '{"type":"initialize","payload":{"sessionId":5}}',
    "metadata string": '{"type":"initialize","payload":{"sessionId":"s","metadata":"x"}}',
}


@pytest.mark.parametrize("data", SERVER_MALFORMED.values(), ids=SERVER_MALFORMED.keys())
def test_server_refuses_what_a_client_does_not_send(data: str | bytes) -> None:
    peer = server()
    refused = only_malformed(peer.receive(message(data)))
    assert refused.fatal is False
    assert (peer.state, peer.data_to_send()) == ("awaiting_initialize", [])


@pytest.mark.parametrize(
    "payload",
    [{"text": 5, "userId": "u"}, {"text": "hi", "userId": ["u"]}],
    ids=["text number", "user id array"],
)
def test_server_refuses_user_input_of_the_wrong_shape(payload: dict[str, Any]) -> None:
    data = json.dumps({"type": "user_input", "payload": payload})
    assert only_malformed(streaming_server().receive(message(data))).kind == "user_input"


# -- client <-> server -----------------------------------------------------------------


def test_round_trip_client_and_server_objects_give_the_frames_sent() -> None:
    ours = AppFoundryDialect(
        role="client", session_id="rt-1", metadata={"lang": "fr"}, wall_clock=lambda: WALL_S
    )
    peer = server()
    ours.connection_made(0.0)
    assert exchange(ours, peer, 0.1) == [
        StreamOpened("rt-1", 0.1, {"metadata": {"lang": "fr"}}, channels=("",))
    ]
    assert exchange(peer, ours, 0.2) == [StreamOpened("rt-1", 0.2, {}, channels=("",))]
    sent = [
        AudioChunk(bytes([seq]) * 160, capture_wall_s=WALL_S + seq * 0.02, sent_wall_s=WALL_S + 1)
        for seq in range(3)
    ]
    for audio in sent:
        peer.send_audio(audio)
    peer.send_error("E1", "busy")
    events = exchange(peer, ours, 0.3)
    frames = [event for event in events if isinstance(event, AudioFrame)]
    assert [(frame.seq, frame.payload, frame.capture_wall_s) for frame in frames] == [
        (seq, audio.audio, audio.capture_wall_s) for seq, audio in enumerate(sent)
    ]
    assert events[-1] == StreamError("rt-1", 0.3, "E1", "busy")
    ours.send_user_input("bonjour", "u9")
    assert exchange(ours, peer, 0.4) == [
        StreamSignal("rt-1", 0.4, "user_input", {"text": "bonjour", "userId": "u9"})
    ]


# -- properties ------------------------------------------------------------------------


PAYLOAD_FIELDS = {
    "audio": st.binary(max_size=4).map(lambda b: base64.b64encode(b * 4).decode()),
    "seq": st.integers(-1, 10),
    "timestamp": st.floats(0, 1e11),
    "format": st.sampled_from(["L16", "PCMU", "PCMA", "L16BE", ""]),
    "rate": st.sampled_from([8000, 16000, 7999]),
    "channels": st.integers(0, 9),
    "sessionId": st.sampled_from(["s-2", ""]),
    "metadata": st.just({"k": "v"}),
    "code": st.sampled_from(["E1", 42]),
    "message": st.just("busy"),
    "text": st.just("hi"),
    "userId": st.just("u1"),
}


ENVELOPES = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["audio_chunk"] * 3 + ["error", "initialize", "user_input"]),
        "payload": st.fixed_dictionaries(
            {key: mostly(PAYLOAD_FIELDS[key]) for key in ("audio", "timestamp")},
            optional={
                key: mostly(valid)
                for key, valid in PAYLOAD_FIELDS.items()
                if key not in ("audio", "timestamp")
            },
        ),
    },
    optional={"timestamp": mostly(PAYLOAD_FIELDS["timestamp"])},
)

ROLES_AND_EVENTS = [("client", CLIENT_EVENTS), ("server", SERVER_EVENTS)]


def fresh(role: str) -> AppFoundryDialect:
    return client() if role == "client" else streaming_server()


@pytest.mark.parametrize(("role", "allowed"), ROLES_AND_EVENTS)
@settings(max_examples=150, deadline=None)
@given(data=st.text() | st.binary())
def test_arbitrary_text_or_bytes_never_raise(
    role: str, allowed: tuple[type[Any], ...], data: str | bytes
) -> None:
    receive_checked(fresh(role), message(data), allowed)


@pytest.mark.parametrize(("role", "allowed"), ROLES_AND_EVENTS)
@settings(max_examples=150, deadline=None)
@given(value=JSON_VALUES)
def test_arbitrary_json_never_raises(
    role: str, allowed: tuple[type[Any], ...], value: Any
) -> None:
    receive_checked(fresh(role), message(json.dumps(value)), allowed)


@pytest.mark.parametrize(("role", "allowed"), ROLES_AND_EVENTS)
@settings(max_examples=300, deadline=None)
@given(envelope=ENVELOPES)
def test_near_miss_envelopes_give_documented_events_and_the_stream_goes_on(
    role: str, allowed: tuple[type[Any], ...], envelope: dict[str, Any]
) -> None:
    dialect = fresh(role)
    receive_checked(dialect, message(json.dumps(envelope)), allowed)
    if role == "client":
        assert only_frame(dialect.receive(message(chunk(seq=1)))).seq == 1
    else:
        greeting = user_input_message("x", "u", now_wall_s=WALL_S)
        assert isinstance(dialect.receive(message(greeting))[0], StreamSignal)


@st.composite
def chunk_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments of ``AudioChunk`` inside the dialect's conventions."""
    codec = draw(st.sampled_from(["L16", "PCMU", "PCMA"]))
    channels = draw(st.integers(1, 8))
    width = (2 if codec == "L16" else 1) * channels
    capture_wall_s = draw(st.floats(0, 1e11))
    return {
        "audio": draw(st.binary(min_size=1, max_size=200).map(lambda b: b * width)),
        "seq": draw(st.integers(0, 2**53)),
        "capture_wall_s": capture_wall_s,
        "sent_wall_s": min(capture_wall_s + draw(st.floats(0, 10)), 1e11),
        "codec": codec,
        "rate": draw(st.integers(8000, 192_000)),
        "channels": channels,
    }


@settings(max_examples=150, deadline=None)
@given(chunk_fields())
def test_audio_chunk_round_trip_keeps_seq_codec_payload_and_times(fields: dict[str, Any]) -> None:
    peer = streaming_server()
    peer.send_audio(AudioChunk(**fields))
    frame = only_frame(exchange(peer, client(), 5.0))
    assert (frame.seq, frame.codec, frame.sample_rate, frame.channels) == (
        fields["seq"],
        fields["codec"],
        fields["rate"],
        fields["channels"],
    )
    assert frame.payload == fields["audio"]
    assert frame.capture_wall_s == fields["capture_wall_s"]
    assert frame.sent_wall_s == fields["sent_wall_s"]
    assert frame.media_ms == fields["capture_wall_s"] * 1000.0
    samples = len(fields["audio"]) // fields["channels"] // (2 if fields["codec"] == "L16" else 1)
    assert frame.duration_ms == pytest.approx(samples / fields["rate"] * 1000.0)

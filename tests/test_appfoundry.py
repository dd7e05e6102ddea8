"""The appfoundry dialect, fed recorded-style messages: no sockets."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialect_testkit import JSON_VALUES, mostly, only_frame, parse_or_dialect_error
from jitterline.errors import ConfigError, DialectError
from jitterline.frames import AudioFrame, Message, StreamError, StreamOpened
from jitterline.protocols import Dialect
from jitterline.protocols.appfoundry import (
    AppFoundryDialect,
    audio_chunk_message,
    error_message,
    initialize_ack_message,
    initialize_message,
    user_input_message,
)

WALL_S = 1_700_000_000.25
AUDIO_20MS_L16 = bytes(range(256)) + bytes(64)  # 320 bytes = 160 samples = 20 ms at 8 kHz


def dialect(stream_id: str = "sess-1", **options: Any) -> AppFoundryDialect:
    return AppFoundryDialect(stream_id, wall_clock=lambda: WALL_S, **options)


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


def test_dialect_satisfies_the_protocol() -> None:
    assert isinstance(dialect(), Dialect)
    assert dialect().name == "appfoundry"


def test_audio_chunk_becomes_frame_with_sender_and_receiver_times() -> None:
    frame = only_frame(dialect().parse(message(chunk(seq=7), arrival_s=12.5)))
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


def test_chunk_without_format_rate_channels_is_l16_8khz_mono() -> None:
    data = json.dumps(
        {
            "type": "audio_chunk",
            "timestamp": WALL_S,
            "payload": {"audio": base64.b64encode(bytes(160)).decode(), "timestamp": WALL_S},
        }
    )
    frame = only_frame(dialect().parse(message(data)))
    assert (frame.codec, frame.sample_rate, frame.channels) == ("L16", 8000, 1)
    assert frame.duration_ms == 10.0


def test_pcmu_stereo_16khz_chunk_duration_counts_both_channels() -> None:
    data = chunk(audio=bytes(640), codec="PCMU", rate=16000, channels=2)
    frame = only_frame(dialect().parse(message(data)))
    assert (frame.codec, frame.sample_rate, frame.channels) == ("PCMU", 16000, 2)
    assert frame.duration_ms == 20.0


def test_chunk_without_envelope_timestamp_has_no_send_time() -> None:
    envelope = json.loads(chunk())
    del envelope["timestamp"]
    frame = only_frame(dialect().parse(message(json.dumps(envelope))))
    assert frame.sent_wall_s is None
    assert frame.capture_wall_s == WALL_S


def test_chunks_without_seq_are_numbered_in_arrival_order_from_zero() -> None:
    stream = dialect()
    seqs = [only_frame(stream.parse(message(chunk(seq=None)))).seq for _ in range(3)]
    assert seqs == [0, 1, 2]


def test_unnumbered_chunk_after_reordered_ones_follows_the_highest_seq() -> None:
    stream = dialect()
    for seq in (5, 3):  # 3 arrives late, after 5
        stream.parse(message(chunk(seq=seq)))
    assert only_frame(stream.parse(message(chunk(seq=None)))).seq == 6


def test_malformed_chunk_does_not_use_up_a_seq_number() -> None:
    stream = dialect()
    first = only_frame(stream.parse(message(chunk(seq=None))))
    with pytest.raises(DialectError):
        stream.parse(message(chunk(seq=None, codec="OPUS")))
    second = only_frame(stream.parse(message(chunk(seq=None))))
    assert (first.seq, second.seq) == (0, 1)


def test_server_initialize_opens_stream_and_names_later_frames() -> None:
    stream = AppFoundryDialect(wall_clock=lambda: WALL_S)
    events = stream.parse(message(initialize_ack_message("sess-9", now_wall_s=WALL_S)))
    assert events == [StreamOpened("sess-9", 5.0, {})]
    assert stream.stream_id == "sess-9"
    assert only_frame(stream.parse(message(chunk()))).stream_id == "sess-9"


def test_echoed_initialize_keeps_metadata_in_info() -> None:
    echoed = initialize_message("sess-1", {"language": "en-US"}, now_wall_s=WALL_S)
    events = dialect().parse(message(echoed))
    assert events == [StreamOpened("sess-1", 5.0, {"metadata": {"language": "en-US"}})]


def test_server_error_becomes_stream_error_and_stream_goes_on() -> None:
    stream = dialect()
    events = stream.parse(message(error_message(503, "transcoder busy", now_wall_s=WALL_S)))
    assert events == [StreamError("sess-1", 5.0, "503", "transcoder busy")]
    assert only_frame(stream.parse(message(chunk(seq=1)))).seq == 1


def test_opening_sends_initialize_stamped_by_the_given_wall_clock() -> None:
    stream = AppFoundryDialect(wall_clock=lambda: 1234.5)
    sent = stream.opening("sess-42", {"userId": "u1"})
    assert len(sent) == 1
    assert isinstance(sent[0], str)
    assert json.loads(sent[0]) == {
        "type": "initialize",
        "timestamp": 1234.5,
        "payload": {"sessionId": "sess-42", "metadata": {"userId": "u1"}},
    }
    assert only_frame(stream.parse(message(chunk()))).stream_id == "sess-42"


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
        dialect(max_message_chars=0)


def test_oversized_text_is_refused_before_parsing() -> None:
    with pytest.raises(DialectError, match="max_message_chars=100"):
        dialect(max_message_chars=100).parse(message("{" * 101))


def test_error_message_does_not_echo_a_huge_value() -> None:
    huge_type = "x" * 100_000
    with pytest.raises(DialectError) as caught:
        dialect().parse(message(json.dumps({"type": huge_type, "payload": {}})))
    assert len(str(caught.value)) < 200


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
    "capture timestamp missing": raw_chunk(drop="timestamp"),
    "capture timestamp null": raw_chunk(timestamp=None),
    "capture timestamp infinite": raw_chunk(timestamp=float("inf")),
    "capture timestamp overflowing": raw_chunk(timestamp="T").replace('"T"', "1e999"),
    "capture timestamp negative": raw_chunk(timestamp=-0.5),
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
    "rate too low": raw_chunk(rate=7999),
    "rate too high": raw_chunk(rate=192_001),
    "rate bool": raw_chunk(rate=True),
    "channels zero": raw_chunk(channels=0),
    "channels nine": raw_chunk(channels=9),
    "format opus": raw_chunk(format="OPUS"),
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
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_message_raises_dialect_error_and_stream_goes_on(data: str | bytes) -> None:
    stream = dialect()
    with pytest.raises(DialectError):
        stream.parse(message(data))
    assert only_frame(stream.parse(message(chunk(seq=4)))).seq == 4


PAYLOAD_FIELDS = {
    "audio": st.binary(max_size=4).map(lambda b: base64.b64encode(b * 4).decode()),
    "seq": st.integers(-1, 10),
    "timestamp": st.floats(0, 1e11),
    "format": st.sampled_from(["L16", "PCMU", "PCMA", "L16BE", ""]),
    "rate": st.sampled_from([8000, 16000, 7999]),
    "channels": st.integers(0, 9),
    "sessionId": st.sampled_from(["s-2", ""]),
    "code": st.sampled_from(["E1", 42]),
    "message": st.just("busy"),
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


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_arbitrary_text_raises_only_dialect_error(data: str) -> None:
    parse_or_dialect_error(dialect(), message(data))


@settings(max_examples=50, deadline=None)
@given(st.binary())
def test_arbitrary_bytes_raise_only_dialect_error(data: bytes) -> None:
    with pytest.raises(DialectError):
        dialect().parse(message(data))


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES)
def test_arbitrary_json_raises_only_dialect_error(value: Any) -> None:
    parse_or_dialect_error(dialect(), message(json.dumps(value)))


@settings(max_examples=300, deadline=None)
@given(ENVELOPES)
def test_near_miss_envelopes_raise_only_dialect_error(envelope: dict[str, Any]) -> None:
    stream = dialect()
    parse_or_dialect_error(stream, message(json.dumps(envelope)))
    assert only_frame(stream.parse(message(chunk(seq=1)))).seq == 1


@st.composite
def chunk_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments of ``audio_chunk_message`` inside the dialect's conventions."""
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
    frame = only_frame(dialect().parse(message(audio_chunk_message(**fields))))
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

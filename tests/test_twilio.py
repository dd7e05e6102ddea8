"""The Twilio Media Streams dialect, fed messages shaped as Twilio sends them: no sockets."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialect_testkit import JSON_VALUES, mostly, only_frame, parse_or_dialect_error
from jitterline.errors import ConfigError, DialectError
from jitterline.frames import AudioFrame, Message, StreamClosed, StreamOpened
from jitterline.protocols import Dialect
from jitterline.protocols.twilio import (
    TwilioDialect,
    clear_message,
    connected_message,
    dtmf_message,
    inbound_media_message,
    mark_message,
    media_message,
    start_message,
    stop_message,
)

STREAM = "MZ0123456789abcdef"
CALL = "CA0123456789abcdef"
ULAW_20MS = bytes(range(160))


def message(data: str | bytes, arrival_s: float = 3.0) -> Message:
    return Message(data, arrival_s=arrival_s, received_wall_s=1_700_000_000.0)


def media(chunk: int = 2, timestamp_ms: int = 20, track: str = "inbound") -> str:
    return inbound_media_message(STREAM, chunk, timestamp_ms, ULAW_20MS, chunk + 1, track=track)


def edited(text: str, path: tuple[str, ...], value: Any) -> str:
    """``text`` (a JSON object) with the field at ``path`` set to ``value``, or removed if
    ``value`` is ``...``."""
    document = json.loads(text)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if value is ...:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return json.dumps(document)


def test_dialect_satisfies_the_protocol_and_sends_nothing_first() -> None:
    twilio = TwilioDialect()
    assert isinstance(twilio, Dialect)
    assert twilio.name == "twilio"
    assert twilio.opening("ignored", {"a": 1}) == []


def test_connected_greeting_gives_no_event() -> None:
    assert TwilioDialect().parse(message(connected_message())) == []


def test_start_opens_stream_with_call_details() -> None:
    start = start_message(STREAM, CALL, account_sid="AC1", custom_parameters={"lang": "en"})
    assert TwilioDialect().parse(message(start)) == [
        StreamOpened(
            STREAM,
            3.0,
            {
                "callSid": CALL,
                "accountSid": "AC1",
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"lang": "en"},
            },
        )
    ]


def test_inbound_media_becomes_pcmu_frame_numbered_from_zero() -> None:
    frame = only_frame(TwilioDialect().parse(message(media(chunk=1, timestamp_ms=0), 7.5)))
    assert frame == AudioFrame(
        stream_id=STREAM,
        seq=0,
        media_ms=0.0,
        codec="PCMU",
        sample_rate=8000,
        channels=1,
        payload=ULAW_20MS,
        duration_ms=20.0,
        arrival_s=7.5,
        received_wall_s=1_700_000_000.0,
    )


def test_media_timestamp_is_the_media_clock_in_ms() -> None:
    frame = only_frame(TwilioDialect().parse(message(media(chunk=51, timestamp_ms=1000))))
    assert (frame.seq, frame.media_ms) == (50, 1000.0)


def test_outbound_track_is_skipped_by_default() -> None:
    assert TwilioDialect().parse(message(media(track="outbound"))) == []


def test_both_tracks_keep_outbound_frames_on_their_own_stream_id() -> None:
    twilio = TwilioDialect(tracks=("inbound", "outbound"))
    inbound = only_frame(twilio.parse(message(media(chunk=3))))
    outbound = only_frame(twilio.parse(message(media(chunk=3, track="outbound"))))
    assert (inbound.stream_id, inbound.seq) == (STREAM, 2)
    assert (outbound.stream_id, outbound.seq) == (f"{STREAM}/outbound", 2)


def test_numbers_sent_as_json_integers_are_accepted() -> None:
    data = edited(edited(media(), ("media", "chunk"), 9), ("media", "timestamp"), 160)
    frame = only_frame(TwilioDialect().parse(message(data)))
    assert (frame.seq, frame.media_ms) == (8, 160.0)


def test_media_without_track_counts_as_inbound() -> None:
    data = edited(media(chunk=4), ("media", "track"), ...)
    assert only_frame(TwilioDialect().parse(message(data))).seq == 3


def test_dtmf_and_mark_echo_give_no_event() -> None:
    twilio = TwilioDialect()
    assert twilio.parse(message(dtmf_message(STREAM, "5", 7))) == []
    assert twilio.parse(message(mark_message(STREAM, "greeting-done"))) == []


def test_stop_closes_the_stream() -> None:
    events = TwilioDialect().parse(message(stop_message(STREAM, CALL, 99, account_sid="AC1")))
    assert events == [StreamClosed(STREAM, 3.0, "stop")]


def test_outgoing_messages_have_twilios_shape() -> None:
    assert json.loads(media_message(STREAM, b"\xff\x7f")) == {
        "event": "media",
        "streamSid": STREAM,
        "media": {"payload": "/38="},
    }
    assert json.loads(mark_message(STREAM, "m1")) == {
        "event": "mark",
        "streamSid": STREAM,
        "mark": {"name": "m1"},
    }
    assert clear_message(STREAM) == f'{{"event":"clear","streamSid":"{STREAM}"}}'


def test_twilio_numbers_are_strings_on_the_wire() -> None:
    document = json.loads(inbound_media_message(STREAM, 2, 20, b"\x00", 3))
    assert document["sequenceNumber"] == "3"
    assert (document["media"]["chunk"], document["media"]["timestamp"]) == ("2", "20")


@pytest.mark.parametrize("tracks", [(), ("both",), ("inbound", "inbound_track")])
def test_unknown_track_selection_is_refused(tracks: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="tracks"):
        TwilioDialect(tracks=tracks)


def test_non_positive_message_cap_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_message_chars"):
        TwilioDialect(max_message_chars=-1)


def test_oversized_text_is_refused_before_parsing() -> None:
    with pytest.raises(DialectError, match="max_message_chars=50"):
        TwilioDialect(max_message_chars=50).parse(message(media()))


def test_error_message_does_not_echo_a_huge_value() -> None:
    with pytest.raises(DialectError) as caught:
        TwilioDialect().parse(message(edited(media(), ("media", "chunk"), "9" * 100_000)))
    assert len(str(caught.value)) < 200


_START = start_message(STREAM, CALL)
_MEDIA = media()

MALFORMED = {
    "binary message": b"\xff" * 160,
    "not json": "{event: media}",
    "json array": "[]",
    "json number": "42",
    "deep nesting": "[" * 100_000 + "]" * 100_000,
    "huge integer literal": '{"event":"media","n":' + "9" * 5000 + "}",
    "NaN constant": '{"event":"media","n":NaN}',
    "event missing": edited(_MEDIA, ("event",), ...),
    "event not a string": edited(_MEDIA, ("event",), 1),
    "unknown event": '{"event":"hangup","streamSid":"MZ1"}',
    "our own clear echoed back": clear_message(STREAM),
    "streamSid missing": edited(_MEDIA, ("streamSid",), ...),
    "streamSid empty": edited(_MEDIA, ("streamSid",), ""),
    "streamSid number": edited(_START, ("streamSid",), 5),
    "start not an object": edited(_START, ("start",), "x"),
    "start alaw": edited(_START, ("start", "mediaFormat", "encoding"), "audio/x-alaw"),
    "start 16 kHz": edited(_START, ("start", "mediaFormat", "sampleRate"), 16000),
    "start stereo": edited(_START, ("start", "mediaFormat", "channels"), 2),
    "start mediaFormat array": edited(_START, ("start", "mediaFormat"), []),
    "start customParameters array": edited(_START, ("start", "customParameters"), []),
    "media missing": edited(_MEDIA, ("media",), ...),
    "media array": edited(_MEDIA, ("media",), [1]),
    "track not a string": edited(_MEDIA, ("media", "track"), 0),
    "chunk missing": edited(_MEDIA, ("media", "chunk"), ...),
    "chunk zero": edited(_MEDIA, ("media", "chunk"), "0"),
    "chunk negative": edited(_MEDIA, ("media", "chunk"), "-1"),
    "chunk negative int": edited(_MEDIA, ("media", "chunk"), -1),
    "chunk fraction": edited(_MEDIA, ("media", "chunk"), "1.5"),
    "chunk float": edited(_MEDIA, ("media", "chunk"), 2.0),
    "chunk bool": edited(_MEDIA, ("media", "chunk"), True),
    "chunk words": edited(_MEDIA, ("media", "chunk"), "two"),
    "chunk non-ascii digits": edited(_MEDIA, ("media", "chunk"), "\u0663"),
    "chunk with spaces": edited(_MEDIA, ("media", "chunk"), " 2"),
    "chunk absurd": edited(_MEDIA, ("media", "chunk"), str(2**53 + 1)),
    "chunk too many digits": edited(_MEDIA, ("media", "chunk"), "1" * 17),
    "timestamp missing": edited(_MEDIA, ("media", "timestamp"), ...),
    "timestamp negative": edited(_MEDIA, ("media", "timestamp"), "-20"),
    "timestamp null": edited(_MEDIA, ("media", "timestamp"), None),
    "payload missing": edited(_MEDIA, ("media", "payload"), ...),
    "payload empty": edited(_MEDIA, ("media", "payload"), ""),
    "payload bad padding": edited(_MEDIA, ("media", "payload"), "AAA"),
    "payload not base64": edited(_MEDIA, ("media", "payload"), "****"),
    "payload with newline": edited(_MEDIA, ("media", "payload"), "AAAA\nAAAA"),
    "payload non-ascii": edited(_MEDIA, ("media", "payload"), "ÿÿÿÿ"),
    "payload number": edited(_MEDIA, ("media", "payload"), 1234),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_message_raises_dialect_error_and_stream_goes_on(data: str | bytes) -> None:
    twilio = TwilioDialect()
    with pytest.raises(DialectError):
        twilio.parse(message(data))
    assert only_frame(twilio.parse(message(media(chunk=8)))).seq == 7


_WIRE_INTS = st.integers(-1, 3) | st.integers(-1, 3).map(str)
MEDIA = st.fixed_dictionaries(
    {
        "chunk": mostly(_WIRE_INTS),
        "timestamp": mostly(_WIRE_INTS),
        "payload": mostly(st.binary(max_size=3).map(lambda b: base64.b64encode(b).decode())),
    },
    optional={"track": mostly(st.sampled_from(["inbound", "outbound", "inbound_track"]))},
)
START = st.fixed_dictionaries(
    {},
    optional={
        "mediaFormat": mostly(st.just({"encoding": "audio/x-mulaw", "sampleRate": 8000})),
        "customParameters": JSON_VALUES,
        "callSid": JSON_VALUES,
    },
)
EVENTS = st.one_of(
    st.fixed_dictionaries(
        {"event": st.just("media"), "streamSid": mostly(st.just(STREAM)), "media": MEDIA}
    ),
    st.fixed_dictionaries(
        {"event": st.just("start"), "streamSid": mostly(st.just(STREAM)), "start": START}
    ),
    st.fixed_dictionaries(
        {
            "event": st.sampled_from(["connected", "stop", "dtmf", "mark", "clear"]),
            "streamSid": mostly(st.just(STREAM)),
        }
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_arbitrary_text_raises_only_dialect_error(data: str) -> None:
    parse_or_dialect_error(TwilioDialect(), message(data))


@settings(max_examples=50, deadline=None)
@given(st.binary())
def test_arbitrary_bytes_raise_only_dialect_error(data: bytes) -> None:
    with pytest.raises(DialectError):
        TwilioDialect().parse(message(data))


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES)
def test_arbitrary_json_raises_only_dialect_error(value: Any) -> None:
    parse_or_dialect_error(TwilioDialect(), message(json.dumps(value)))


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_near_miss_messages_raise_only_dialect_error(document: dict[str, Any]) -> None:
    twilio = TwilioDialect(tracks=("inbound", "outbound"))
    parse_or_dialect_error(twilio, message(json.dumps(document)))
    assert only_frame(twilio.parse(message(media(chunk=2)))).seq == 1


@settings(max_examples=150, deadline=None)
@given(
    chunk=st.integers(1, 2**53),
    timestamp_ms=st.integers(0, 2**53),
    payload=st.binary(min_size=1, max_size=400),
)
def test_inbound_media_round_trip_keeps_numbers_and_audio(
    chunk: int, timestamp_ms: int, payload: bytes
) -> None:
    text = inbound_media_message(STREAM, chunk, timestamp_ms, payload, chunk + 1)
    frame = only_frame(TwilioDialect().parse(message(text)))
    assert (frame.stream_id, frame.seq, frame.media_ms) == (STREAM, chunk - 1, timestamp_ms)
    assert frame.payload == payload
    assert frame.duration_ms == pytest.approx(len(payload) / 8.0)

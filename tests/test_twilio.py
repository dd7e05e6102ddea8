"""The Twilio Media Streams dialect in both roles, fed messages shaped as Twilio sends
them: no sockets."""

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
    StreamClosed,
    StreamOpened,
    StreamSignal,
)
from jitterline.protocols import Dialect
from jitterline.protocols.builtin import builtin_dialects
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
SERVER_EVENTS = (AudioFrame, StreamOpened, StreamSignal, StreamClosed)
CLIENT_EVENTS = (StreamSignal,)
BOTH = ("inbound", "outbound")


def message(data: str | bytes, arrival_s: float = 3.0) -> Message:
    return Message(data, arrival_s=arrival_s, received_wall_s=1_700_000_000.0)


def media(chunk: int = 2, timestamp_ms: int = 20, track: str = "inbound") -> str:
    return inbound_media_message(STREAM, chunk, timestamp_ms, ULAW_20MS, chunk + 1, track=track)


def server(
    tracks: tuple[str, ...] = ("inbound",), announced: tuple[str, ...] = BOTH
) -> TwilioDialect:
    """A server-role object after Twilio's ``connected`` and ``start``."""
    twilio = TwilioDialect(role="server", tracks=tracks)
    twilio.receive(message(connected_message()))
    twilio.receive(message(start_message(STREAM, CALL, tracks=announced)))
    return twilio


def client(**options: Any) -> TwilioDialect:
    """A client-role object (playing Twilio) after ``connection_made``, queue emptied."""
    twilio = TwilioDialect(role="client", stream_sid=STREAM, call_sid=CALL, **options)
    twilio.connection_made(0.0)
    twilio.data_to_send()
    return twilio


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


def sent_documents(twilio: TwilioDialect) -> list[dict[str, Any]]:
    return [json.loads(data) for data in twilio.data_to_send()]


# -- the contract ----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["client", "server"])
def test_both_roles_satisfy_the_protocol(role: str) -> None:
    twilio = TwilioDialect(role=role, stream_sid=STREAM)  # type: ignore[arg-type]
    assert isinstance(twilio, Dialect)
    assert (twilio.name, twilio.role) == ("twilio", role)
    assert (twilio.next_deadline_s(), twilio.timer(1.0)) == (None, [])


def test_registry_factory_takes_the_role() -> None:
    factory = builtin_dialects().get("twilio")
    assert factory(role="server", tracks=BOTH).role == "server"
    assert factory(role="client", stream_sid=STREAM).role == "client"


@pytest.mark.parametrize("tracks", [(), ("both",), ("inbound", "inbound_track")])
def test_unknown_track_selection_is_refused(tracks: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="tracks"):
        TwilioDialect(role="server", tracks=tracks)


def test_unknown_role_and_client_without_stream_sid_are_refused() -> None:
    with pytest.raises(ConfigError, match="role="):
        TwilioDialect(role="twilio")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="stream_sid"):
        TwilioDialect(role="client")


def test_non_positive_message_cap_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_message_chars"):
        TwilioDialect(role="server", max_message_chars=-1)


# -- server role -----------------------------------------------------------------------


def test_server_sends_nothing_first_and_connected_gives_no_event() -> None:
    twilio = TwilioDialect(role="server")
    twilio.connection_made(0.0)
    assert twilio.data_to_send() == []
    assert twilio.receive(message(connected_message())) == []
    assert twilio.state == "connected"


def test_start_opens_stream_with_call_details() -> None:
    twilio = TwilioDialect(role="server")
    twilio.receive(message(connected_message()))
    start = start_message(STREAM, CALL, account_sid="AC1", custom_parameters={"lang": "en"})
    assert twilio.receive(message(start)) == [
        StreamOpened(
            STREAM,
            3.0,
            {
                "accountSid": "AC1",
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"lang": "en"},
            },
            call_id=CALL,
            channels=("inbound",),
        )
    ]
    assert (twilio.state, twilio.stream_id, twilio.call_id) == ("started", STREAM, CALL)


def test_start_without_connected_is_taken() -> None:
    twilio = TwilioDialect(role="server")
    (opened,) = twilio.receive(message(start_message(STREAM, CALL)))
    assert isinstance(opened, StreamOpened)


def test_channels_are_the_announced_tracks_we_take_in_wire_order() -> None:
    twilio = TwilioDialect(role="server", tracks=("outbound", "inbound"))
    (opened,) = twilio.receive(message(start_message(STREAM, CALL, tracks=BOTH)))
    assert isinstance(opened, StreamOpened)
    assert opened.channels == BOTH


def test_inbound_media_becomes_pcmu_frame_numbered_from_zero() -> None:
    frame = only_frame(server().receive(message(media(chunk=1, timestamp_ms=0), 7.5)))
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
        channel="inbound",
    )


def test_media_timestamp_is_the_media_clock_in_ms() -> None:
    frame = only_frame(server().receive(message(media(chunk=51, timestamp_ms=1000))))
    assert (frame.seq, frame.media_ms) == (50, 1000.0)


def test_outbound_track_is_skipped_unless_asked_for() -> None:
    assert server().receive(message(media(track="outbound"))) == []


def test_both_tracks_share_the_stream_id_and_differ_by_channel() -> None:
    twilio = server(tracks=BOTH)
    inbound = only_frame(twilio.receive(message(media(chunk=3))))
    outbound = only_frame(twilio.receive(message(media(chunk=3, track="outbound"))))
    assert (inbound.stream_id, inbound.channel, inbound.seq) == (STREAM, "inbound", 2)
    assert (outbound.stream_id, outbound.channel, outbound.seq) == (STREAM, "outbound", 2)


def test_media_of_a_track_start_did_not_announce_is_malformed() -> None:
    twilio = server(tracks=BOTH, announced=("inbound",))
    refused = only_malformed(twilio.receive(message(media(track="outbound"))))
    assert (refused.kind, refused.fatal, refused.stream_id) == ("track", False, STREAM)
    assert "did not announce" in refused.detail


def test_numbers_sent_as_json_integers_are_accepted() -> None:
    data = edited(edited(media(), ("media", "chunk"), 9), ("media", "timestamp"), 160)
    frame = only_frame(server().receive(message(data)))
    assert (frame.seq, frame.media_ms) == (8, 160.0)


def test_media_without_track_counts_as_inbound() -> None:
    data = edited(media(chunk=4), ("media", "track"), ...)
    frame = only_frame(server().receive(message(data)))
    assert (frame.seq, frame.channel) == (3, "inbound")


def test_dtmf_and_mark_echo_become_signals() -> None:
    twilio = server()
    assert twilio.receive(message(dtmf_message(STREAM, "5", 7), 4.0)) == [
        StreamSignal(STREAM, 4.0, "dtmf", {"track": "inbound_track", "digit": "5"})
    ]
    echo = mark_message(STREAM, "greeting-done", sequence_number=8)
    assert twilio.receive(message(echo, 5.0)) == [
        StreamSignal(STREAM, 5.0, "mark", {"name": "greeting-done"})
    ]


def test_stop_closes_the_stream_and_the_connection() -> None:
    twilio = server()
    assert not twilio.close_expected()
    events = twilio.receive(message(stop_message(STREAM, CALL, 99, account_sid="AC1")))
    assert events == [StreamClosed(STREAM, 3.0, "stop")]
    assert twilio.close_expected()
    assert twilio.connection_lost(4.0) == []
    assert only_malformed(twilio.receive(message(media()))).kind == "out_of_order"


def test_connection_lost_without_stop_ends_the_stream_once() -> None:
    twilio = server()
    assert twilio.connection_lost(9.0) == [StreamClosed(STREAM, 9.0, "connection lost")]
    assert twilio.connection_lost(9.5) == []
    assert TwilioDialect(role="server").connection_lost(1.0) == []


def test_outbound_messages_wait_for_start_then_have_twilios_shape() -> None:
    twilio = TwilioDialect(role="server")
    with pytest.raises(DialectError, match="state 'connecting'"):
        twilio.send_media(b"\xff")
    with pytest.raises(DialectError, match="state 'connecting'"):
        twilio.send_clear()
    twilio.receive(message(start_message(STREAM, CALL)))
    twilio.send_media(b"\xff\x7f")
    twilio.send_mark("m1")
    twilio.send_clear()
    assert sent_documents(twilio) == [
        {"event": "media", "streamSid": STREAM, "media": {"payload": "/38="}},
        {"event": "mark", "streamSid": STREAM, "mark": {"name": "m1"}},
        {"event": "clear", "streamSid": STREAM},
    ]
    assert clear_message(STREAM) == f'{{"event":"clear","streamSid":"{STREAM}"}}'
    with pytest.raises(ConfigError, match="empty"):
        twilio.send_media(b"")


def test_server_cannot_originate_what_only_twilio_sends() -> None:
    twilio = server()
    for send in (twilio.stop, lambda: twilio.send_audio(b"\x00"), lambda: twilio.send_dtmf("1")):
        with pytest.raises(DialectError, match="only a client"):
            send()


def test_end_sends_nothing_and_expects_the_close() -> None:
    twilio = server()
    twilio.end("shutdown", 5.0)
    assert (twilio.data_to_send(), twilio.close_expected()) == ([], True)


def test_twilio_numbers_are_strings_on_the_wire() -> None:
    document = json.loads(inbound_media_message(STREAM, 2, 20, b"\x00", 3))
    assert document["sequenceNumber"] == "3"
    assert (document["media"]["chunk"], document["media"]["timestamp"]) == ("2", "20")


def test_oversized_text_is_refused_before_parsing() -> None:
    twilio = TwilioDialect(role="server", max_message_chars=50)
    refused = only_malformed(twilio.receive(message(media())))
    assert (refused.kind, refused.fatal) == ("too_large", False)
    assert "max_message_chars=50" in refused.detail


def test_error_detail_does_not_echo_a_huge_value() -> None:
    data = edited(media(), ("media", "chunk"), "9" * 100_000)
    assert len(only_malformed(server().receive(message(data))).detail) < 200


_START = start_message(STREAM, CALL)

BAD_STARTS = {
    "start not an object": edited(_START, ("start",), "x"),
    "streamSid missing": edited(_START, ("streamSid",), ...),
    "streamSid number": edited(_START, ("streamSid",), 5),
    "alaw": edited(_START, ("start", "mediaFormat", "encoding"), "audio/x-alaw"),
    "16 kHz": edited(_START, ("start", "mediaFormat", "sampleRate"), 16000),
    "stereo": edited(_START, ("start", "mediaFormat", "channels"), 2),
    "mediaFormat array": edited(_START, ("start", "mediaFormat"), []),
    "customParameters array": edited(_START, ("start", "customParameters"), []),
    "callSid number": edited(_START, ("start", "callSid"), 7),
    "tracks empty": edited(_START, ("start", "tracks"), []),
    "tracks unknown": edited(_START, ("start", "tracks"), ["inbound_track"]),
    "tracks string": edited(_START, ("start", "tracks"), "inbound"),
}


@pytest.mark.parametrize("data", BAD_STARTS.values(), ids=BAD_STARTS.keys())
def test_refused_start_is_fatal(data: str) -> None:
    twilio = TwilioDialect(role="server")
    twilio.receive(message(connected_message()))
    refused = only_malformed(twilio.receive(message(data)))
    assert refused.fatal
    assert (twilio.state, twilio.close_expected(), twilio.data_to_send()) == (
        "connected",
        True,
        [],
    )
    assert only_malformed(twilio.receive(message(media()))).kind == "out_of_order"


BEFORE_START = {
    "media": media(),
    "dtmf": dtmf_message(STREAM, "1", 2),
    "mark": mark_message(STREAM, "m", sequence_number=2),
    "stop": stop_message(STREAM, CALL, 2),
}


@pytest.mark.parametrize("data", BEFORE_START.values(), ids=BEFORE_START.keys())
def test_messages_before_start_are_out_of_order_not_fatal(data: str) -> None:
    twilio = TwilioDialect(role="server")
    twilio.receive(message(connected_message()))
    refused = only_malformed(twilio.receive(message(data)))
    assert (refused.kind, refused.fatal, twilio.close_expected()) == ("out_of_order", False, False)
    assert isinstance(twilio.receive(message(_START))[0], StreamOpened)


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
    "second connected": connected_message(),
    "second start": _START,
    "streamSid missing": edited(_MEDIA, ("streamSid",), ...),
    "streamSid empty": edited(_MEDIA, ("streamSid",), ""),
    "streamSid of another stream": edited(_MEDIA, ("streamSid",), "MZother"),
    "media missing": edited(_MEDIA, ("media",), ...),
    "media array": edited(_MEDIA, ("media",), [1]),
    "track not a string": edited(_MEDIA, ("media", "track"), 0),
    "track unknown": edited(_MEDIA, ("media", "track"), "inbound_track"),
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
    "chunk 400 digits": edited(_MEDIA, ("media", "chunk"), 10**400),
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
    "dtmf without digit": edited(dtmf_message(STREAM, "1", 5), ("dtmf", "digit"), ...),
    "dtmf not an object": edited(dtmf_message(STREAM, "1", 5), ("dtmf",), "1"),
    "mark name number": edited(mark_message(STREAM, "m"), ("mark", "name"), 3),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_message_is_one_event_and_stream_goes_on(data: str | bytes) -> None:
    twilio = server()
    refused = only_malformed(twilio.receive(message(data, 6.0)))
    assert (refused.stream_id, refused.arrival_s, refused.fatal) == (STREAM, 6.0, False)
    assert refused.kind and refused.detail
    assert (twilio.state, twilio.close_expected()) == ("started", False)
    assert only_frame(twilio.receive(message(media(chunk=8)))).seq == 7


# -- client role (we play Twilio) ------------------------------------------------------


def test_connection_made_queues_connected_then_start() -> None:
    twilio = TwilioDialect(
        role="client",
        stream_sid=STREAM,
        call_sid=CALL,
        account_sid="AC1",
        tracks=BOTH,
        custom_parameters={"lang": "en"},
    )
    assert twilio.data_to_send() == []
    twilio.connection_made(0.0)
    assert twilio.data_to_send() == [
        connected_message(),
        start_message(
            STREAM,
            CALL,
            account_sid="AC1",
            tracks=BOTH,
            custom_parameters={"lang": "en"},
            sequence_number=1,
        ),
    ]
    with pytest.raises(DialectError, match="never reconnects"):
        twilio.connection_made(1.0)


def test_send_audio_numbers_chunks_per_track_on_the_media_clock() -> None:
    twilio = client(tracks=BOTH)
    twilio.send_audio(bytes(160))
    twilio.send_audio(bytes(80), track="outbound")
    twilio.send_audio(bytes(160))
    twilio.send_audio(bytes(160), track="outbound")
    documents = sent_documents(twilio)
    assert [doc["sequenceNumber"] for doc in documents] == ["2", "3", "4", "5"]
    assert [
        (doc["media"]["track"], doc["media"]["chunk"], doc["media"]["timestamp"])
        for doc in documents
    ] == [
        ("inbound", "1", "0"),
        ("outbound", "1", "0"),
        ("inbound", "2", "20"),
        ("outbound", "2", "10"),
    ]


def test_send_audio_refuses_a_track_not_announced_and_empty_audio() -> None:
    twilio = client()
    with pytest.raises(ConfigError, match="not announced"):
        twilio.send_audio(bytes(160), track="outbound")
    with pytest.raises(ConfigError, match="empty"):
        twilio.send_audio(b"")
    assert twilio.data_to_send() == []


def test_client_sends_nothing_before_connection_made_or_after_stop() -> None:
    twilio = TwilioDialect(role="client", stream_sid=STREAM)
    with pytest.raises(DialectError, match="state 'idle'"):
        twilio.send_audio(bytes(160))
    twilio.connection_made(0.0)
    twilio.stop()
    with pytest.raises(DialectError, match="state 'stopped'"):
        twilio.send_dtmf("1")


def test_stop_is_the_last_message_and_the_close_follows() -> None:
    twilio = client(account_sid="AC1")
    twilio.send_dtmf("7")
    twilio.stop()
    assert twilio.data_to_send() == [
        dtmf_message(STREAM, "7", 2),
        stop_message(STREAM, CALL, 3, account_sid="AC1"),
    ]
    assert twilio.close_expected()


def test_end_stops_once() -> None:
    twilio = client()
    twilio.end("drain", 1.0)
    twilio.end("drain", 2.0)
    assert [doc["event"] for doc in sent_documents(twilio)] == ["stop"]
    assert twilio.connection_lost(3.0) == []


def test_client_receives_the_servers_media_mark_and_clear_as_signals() -> None:
    twilio = client()
    assert twilio.receive(message(media_message(STREAM, b"\x01\x02"), 1.0)) == [
        StreamSignal(STREAM, 1.0, "media", {"payload": b"\x01\x02"})
    ]
    assert twilio.receive(message(mark_message(STREAM, "m1"), 2.0)) == [
        StreamSignal(STREAM, 2.0, "mark", {"name": "m1"})
    ]
    assert twilio.receive(message(clear_message(STREAM), 3.0)) == [
        StreamSignal(STREAM, 3.0, "clear", {})
    ]


def test_mark_echo_carries_a_sequence_number() -> None:
    twilio = client()
    twilio.send_mark("m1")
    assert sent_documents(twilio) == [
        {"event": "mark", "streamSid": STREAM, "sequenceNumber": "2", "mark": {"name": "m1"}}
    ]


def test_in_flight_messages_after_our_stop_are_still_taken() -> None:
    twilio = client()
    twilio.stop()
    (signal,) = twilio.receive(message(clear_message(STREAM)))
    assert isinstance(signal, StreamSignal)


CLIENT_MALFORMED = {
    "before connection_made": None,
    "twilio's own start": _START,
    "media for another stream": media_message("MZother", b"\x00"),
    "media without payload": edited(media_message(STREAM, b"\x00"), ("media", "payload"), ...),
    "media payload empty": edited(media_message(STREAM, b"\x00"), ("media", "payload"), ""),
    "mark without name": edited(mark_message(STREAM, "m"), ("mark", "name"), ...),
    "binary": b"\x00",
    "unknown event": json.dumps({"event": "hangup", "streamSid": STREAM}),
    "dtmf, which only Twilio sends": dtmf_message(STREAM, "1", 3),
}


@pytest.mark.parametrize("data", CLIENT_MALFORMED.values(), ids=CLIENT_MALFORMED.keys())
def test_client_refuses_what_a_server_does_not_send(data: str | bytes | None) -> None:
    if data is None:
        twilio = TwilioDialect(role="client", stream_sid=STREAM)
        data = clear_message(STREAM)
    else:
        twilio = client()
    refused = only_malformed(twilio.receive(message(data)))
    assert (refused.fatal, twilio.close_expected(), twilio.data_to_send()) == (False, False, [])


# -- client <-> server -----------------------------------------------------------------


def test_round_trip_client_and_server_objects_give_the_frames_sent() -> None:
    caller = TwilioDialect(
        role="client", stream_sid=STREAM, call_sid=CALL, tracks=BOTH, custom_parameters={"a": "b"}
    )
    ours = TwilioDialect(role="server", tracks=BOTH)
    caller.connection_made(0.0)
    (opened,) = exchange(caller, ours, 0.5)
    assert opened == StreamOpened(
        STREAM,
        0.5,
        {
            "accountSid": "",
            "tracks": list(BOTH),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"a": "b"},
        },
        call_id=CALL,
        channels=BOTH,
    )
    sent = [(bytes([n]) * 160, "inbound" if n % 3 else "outbound") for n in range(6)]
    for audio, track in sent:
        caller.send_audio(audio, track=track)
    caller.send_dtmf("9")
    caller.stop()
    events = exchange(caller, ours, 1.0)
    frames = [event for event in events if isinstance(event, AudioFrame)]
    assert [(frame.payload, frame.channel) for frame in frames] == sent
    assert [(f.seq, f.media_ms) for f in frames if f.channel == "inbound"] == [
        (0, 0.0),
        (1, 20.0),
        (2, 40.0),
        (3, 60.0),
    ]
    assert [(f.seq, f.media_ms) for f in frames if f.channel == "outbound"] == [
        (0, 0.0),
        (1, 20.0),
    ]
    assert events[len(frames) :] == [
        StreamSignal(STREAM, 1.0, "dtmf", {"track": "inbound_track", "digit": "9"}),
        StreamClosed(STREAM, 1.0, "stop"),
    ]
    assert ours.close_expected() and caller.close_expected()


def test_round_trip_server_talks_back_to_the_caller() -> None:
    caller = TwilioDialect(role="client", stream_sid=STREAM)
    ours = TwilioDialect(role="server")
    caller.connection_made(0.0)
    exchange(caller, ours)
    ours.send_media(b"\x10\x20")
    ours.send_mark("played")
    ours.send_clear()
    assert [(s.kind, s.info) for s in exchange(ours, caller) if isinstance(s, StreamSignal)] == [
        ("media", {"payload": b"\x10\x20"}),
        ("mark", {"name": "played"}),
        ("clear", {}),
    ]
    caller.send_mark("played")
    assert exchange(caller, ours, 2.0) == [StreamSignal(STREAM, 2.0, "mark", {"name": "played"})]


# -- properties ------------------------------------------------------------------------


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
        "tracks": mostly(st.lists(st.sampled_from(["inbound", "outbound", "x"]), max_size=3)),
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
        },
        optional={
            "dtmf": mostly(st.just({"digit": "1"})),
            "mark": mostly(st.just({"name": "m"})),
        },
    ),
)


def fresh(role: str, state: str) -> TwilioDialect:
    if role == "client":
        return client(tracks=BOTH)
    return server(tracks=BOTH) if state == "started" else TwilioDialect(role="server")


CASES = [
    ("server", "connecting", SERVER_EVENTS),
    ("server", "started", SERVER_EVENTS),
    ("client", "streaming", CLIENT_EVENTS),
]


@pytest.mark.parametrize(("role", "state", "allowed"), CASES)
@settings(max_examples=100, deadline=None)
@given(data=st.text() | st.binary())
def test_arbitrary_text_or_bytes_never_raise(
    role: str, state: str, allowed: tuple[type[Any], ...], data: str | bytes
) -> None:
    receive_checked(fresh(role, state), message(data), allowed)


@pytest.mark.parametrize(("role", "state", "allowed"), CASES)
@settings(max_examples=100, deadline=None)
@given(value=JSON_VALUES)
def test_arbitrary_json_never_raises(
    role: str, state: str, allowed: tuple[type[Any], ...], value: Any
) -> None:
    receive_checked(fresh(role, state), message(json.dumps(value)), allowed)


@pytest.mark.parametrize(("role", "state", "allowed"), CASES)
@settings(max_examples=300, deadline=None)
@given(document=EVENTS)
def test_near_miss_messages_give_documented_events(
    role: str, state: str, allowed: tuple[type[Any], ...], document: dict[str, Any]
) -> None:
    receive_checked(fresh(role, state), message(json.dumps(document)), allowed)


@settings(max_examples=300, deadline=None)
@given(document=EVENTS)
def test_near_miss_messages_only_end_a_started_stream_by_stop(document: dict[str, Any]) -> None:
    twilio = server(tracks=BOTH)
    events = twilio.receive(message(json.dumps(document)))
    if not any(isinstance(event, StreamClosed) for event in events):
        assert only_frame(twilio.receive(message(media(chunk=2)))).seq == 1


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
    frame = only_frame(server().receive(message(text)))
    assert (frame.stream_id, frame.seq, frame.media_ms) == (STREAM, chunk - 1, timestamp_ms)
    assert frame.payload == payload
    assert frame.duration_ms == pytest.approx(len(payload) / 8.0)


@settings(max_examples=100, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=320), min_size=1, max_size=10))
def test_client_to_server_round_trip_gives_the_frames_sent(chunks: list[bytes]) -> None:
    caller = TwilioDialect(role="client", stream_sid=STREAM)
    ours = TwilioDialect(role="server")
    caller.connection_made(0.0)
    for audio in chunks:
        caller.send_audio(audio)
    frames = [event for event in exchange(caller, ours) if isinstance(event, AudioFrame)]
    assert [frame.payload for frame in frames] == chunks
    assert [frame.seq for frame in frames] == list(range(len(chunks)))
    starts = [sum(len(audio) for audio in chunks[:n]) // 8 for n in range(len(chunks))]
    assert [frame.media_ms for frame in frames] == starts

"""AudioHook v2 in both roles, fed messages shaped as Genesys and the reference server send
them: no sockets, virtual time."""

from __future__ import annotations

import json
import typing
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialect_testkit import JSON_VALUES, mostly
from jitterline.errors import ConfigError
from jitterline.frames import (
    AudioFrame,
    Event,
    Malformed,
    Message,
    Pong,
    StreamClosed,
    StreamError,
    StreamOpened,
    StreamPaused,
    StreamResumed,
    StreamSignal,
)
from jitterline.protocols import Dialect, DialectFactory
from jitterline.protocols.audiohook import (
    NULL_UUID,
    AudioHookDialect,
    format_duration,
    parse_duration_s,
)

SESSION = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
ORG = "d7934305-0972-4844-938e-9060eef73d05"
CONVERSATION = "e160e428-53e2-487c-977d-96989bf5c99d"
PARTICIPANT = "1f4b3c2a-5d6e-4f70-8a9b-0c1d2e3f4a5b"
STEREO_PCMU = {
    "type": "audio",
    "format": "PCMU",
    "channels": ["external", "internal"],
    "rate": 8000,
}
MONO_EXTERNAL = {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}
L16_STEREO = {"type": "audio", "format": "L16", "channels": ["external", "internal"], "rate": 8000}
DOCUMENTED_EVENTS = typing.get_args(Event)  # every event a protocol object may yield


class Genesys:
    """Writes client messages with correct sequencing, unless a test overrides a field."""

    def __init__(self, session_id: str = SESSION) -> None:
        self.session_id = session_id
        self.seq = 0
        self.serverseq = 0
        self.position = "PT0S"

    def text(self, kind: str, parameters: dict[str, Any] | None = None, **fields: Any) -> str:
        self.seq += 1
        document: dict[str, Any] = {
            "version": "2",
            "id": self.session_id,
            "type": kind,
            "seq": self.seq,
            "serverseq": self.serverseq,
            "position": self.position,
            "parameters": parameters or {},
        }
        document.update(fields)
        return json.dumps(document)

    def open(self, media: list[Any] | None = None, **parameters: Any) -> str:
        open_parameters: dict[str, Any] = {
            "organizationId": ORG,
            "conversationId": CONVERSATION,
            "participant": {"id": PARTICIPANT, "ani": "+13175550000", "aniName": "", "dnis": "+1"},
            "media": [STEREO_PCMU, MONO_EXTERNAL] if media is None else media,
            "language": "en-US",
        }
        open_parameters.update(parameters)
        return self.text("open", open_parameters)


def message(data: str | bytes, arrival_s: float = 1.0) -> Message:
    return Message(data, arrival_s=arrival_s, received_wall_s=1_700_000_000.0)


def sent(dialect: AudioHookDialect) -> list[dict[str, Any]]:
    """The text messages the dialect queued, decoded (binary ones are not expected here)."""
    out = dialect.data_to_send()
    assert all(isinstance(item, str) for item in out)
    return [json.loads(item) for item in out]


def server(**options: Any) -> AudioHookDialect:
    dialect = AudioHookDialect(role="server", session_id=SESSION, organization_id=ORG, **options)
    dialect.connection_made(0.0)
    return dialect


def opened_server(genesys: Genesys, **options: Any) -> AudioHookDialect:
    dialect = server(**options)
    dialect.receive(message(genesys.open(), 0.5))
    genesys.serverseq = sent(dialect)[-1]["seq"]
    return dialect


def client(**options: Any) -> AudioHookDialect:
    settings_: dict[str, Any] = {
        "role": "client",
        "session_id": SESSION,
        "organization_id": ORG,
        "conversation_id": CONVERSATION,
        "participant_id": PARTICIPANT,
    }
    settings_.update(options)
    return AudioHookDialect(**settings_)


class Server:
    """Writes server messages with correct sequencing, for the client role's tests."""

    def __init__(self) -> None:
        self.seq = 0
        self.clientseq = 0

    def text(self, kind: str, parameters: dict[str, Any] | None = None, **fields: Any) -> str:
        self.seq += 1
        document: dict[str, Any] = {
            "version": "2",
            "id": SESSION,
            "type": kind,
            "seq": self.seq,
            "clientseq": self.clientseq,
            "parameters": parameters or {},
        }
        document.update(fields)
        return json.dumps(document)


def opened_client(peer: Server, media: dict[str, Any] = STEREO_PCMU) -> AudioHookDialect:
    dialect = client()
    dialect.connection_made(0.0)
    peer.clientseq = sent(dialect)[-1]["seq"]
    dialect.receive(message(peer.text("opened", {"media": [media]}), 0.2))
    return dialect


def pump(source: AudioHookDialect, sink: AudioHookDialect, arrival_s: float) -> list[Event]:
    events: list[Event] = []
    for data in source.data_to_send():
        events.extend(sink.receive(message(data, arrival_s)))
    return events


# -- the contract ------------------------------------------------------------------------


def test_both_roles_satisfy_the_dialect_protocol() -> None:
    factory: DialectFactory = AudioHookDialect  # mypy --strict checks the structural fit
    assert isinstance(factory(role="server"), Dialect)
    assert isinstance(client(), Dialect)
    assert server().name == "audiohook"
    assert (server().role, client().role) == ("server", "client")


def test_options_are_checked_when_built() -> None:
    with pytest.raises(ConfigError, match="role"):
        AudioHookDialect(role="peer")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="conversation_id"):
        AudioHookDialect(role="client", session_id=SESSION, organization_id=ORG)
    with pytest.raises(ConfigError, match="formats"):
        AudioHookDialect(role="server", formats=("OPUS",))
    with pytest.raises(ConfigError, match="channels"):
        AudioHookDialect(role="server", channels=("left",))
    with pytest.raises(ConfigError, match="open_timeout_s"):
        AudioHookDialect(role="server", open_timeout_s=-1.0)


def test_durations_round_trip_at_sample_resolution() -> None:
    assert format_duration(0) == "PT0S"
    assert format_duration(1.5) == "PT1.5S"
    assert format_duration(1 / 8000) == "PT0.000125S"
    assert parse_duration_s("PT0.123S") == pytest.approx(0.123)
    assert parse_duration_s(format_duration(12.345678)) == pytest.approx(12.345678)


# -- server role: a whole session ----------------------------------------------------------


def test_open_is_answered_with_the_first_acceptable_offer_and_stream_opened() -> None:
    genesys = Genesys()
    dialect = server()
    events = dialect.receive(message(genesys.open(), 0.5))
    [opened] = sent(dialect)
    assert opened["type"] == "opened"
    assert (opened["seq"], opened["clientseq"], opened["id"]) == (1, 1, SESSION)
    assert opened["parameters"]["media"] == [STEREO_PCMU]
    [event] = events
    assert isinstance(event, StreamOpened)
    assert event.stream_id == SESSION
    assert event.call_id == CONVERSATION
    assert event.participant_id == PARTICIPANT
    assert event.channels == ("external", "internal")
    assert not event.probe
    assert event.info["organizationId"] == ORG
    assert event.info["ani"] == "+13175550000"
    assert event.info["language"] == "en-US"
    assert event.info["media"] == STEREO_PCMU


def test_whole_session_open_audio_ping_pause_resume_update_close() -> None:
    genesys = Genesys()
    dialect = opened_server(genesys)
    external = bytes(range(0, 200))
    internal = bytes(range(50, 250))
    stereo = bytes(b for pair in zip(external, internal, strict=True) for b in pair)

    first = dialect.receive(message(stereo, 1.0))
    second = dialect.receive(message(stereo, 1.2))
    assert [(f.channel, f.seq, f.media_ms) for f in first + second] == [  # type: ignore[union-attr]
        ("external", 0, 0.0),
        ("internal", 0, 0.0),
        ("external", 1, 25.0),
        ("internal", 1, 25.0),
    ]
    frame = first[0]
    assert isinstance(frame, AudioFrame)
    assert (frame.codec, frame.sample_rate, frame.channels) == ("PCMU", 8000, 1)
    assert frame.duration_ms == 25.0
    assert frame.payload == external
    assert first[1].payload == internal  # type: ignore[union-attr]

    genesys.position = "PT0.05S"
    [pong_event] = dialect.receive(message(genesys.text("ping", {"rtt": "PT0.123S"}), 2.0))
    [pong] = sent(dialect)
    assert pong["type"] == "pong"
    assert pong["clientseq"] == genesys.seq
    assert isinstance(pong_event, Pong)
    assert pong_event.rtt_ms == pytest.approx(123.0)

    assert dialect.receive(message(genesys.text("paused"), 3.0)) == [StreamPaused(SESSION, 3.0)]
    resumed = genesys.text("resumed", {"start": "PT0.05S", "discarded": "PT0S"})
    assert dialect.receive(message(resumed, 4.0)) == [StreamResumed(SESSION, 4.0)]
    assert dialect.receive(message(stereo, 4.1))[0].seq == 2  # type: ignore[union-attr]

    [signal] = dialect.receive(message(genesys.text("update", {"language": "fr-FR"}), 5.0))
    assert signal == StreamSignal(SESSION, 5.0, "update", {"language": "fr-FR"})
    assert [m["type"] for m in sent(dialect)] == ["updated"]

    [closed_event] = dialect.receive(message(genesys.text("close", {"reason": "end"}), 6.0))
    assert closed_event == StreamClosed(SESSION, 6.0, "end")
    [closed] = sent(dialect)
    assert (closed["type"], closed["seq"], closed["clientseq"]) == ("closed", 4, genesys.seq)
    assert dialect.close_expected()
    assert dialect.next_deadline_s() is None


def test_ping_without_rtt_gives_a_pong_without_rtt() -> None:
    genesys = Genesys()
    dialect = opened_server(genesys)
    assert dialect.receive(message(genesys.text("ping"), 2.0)) == [Pong(SESSION, 2.0, None)]


@settings(max_examples=50, deadline=None)
@given(
    external=st.lists(st.integers(-32768, 32767), min_size=1, max_size=400),
    data=st.data(),
)
def test_l16_stereo_split_equals_what_was_sent(external: list[int], data: st.DataObject) -> None:
    internal = data.draw(
        st.lists(st.integers(-32768, 32767), min_size=len(external), max_size=len(external))
    )
    genesys = Genesys()
    dialect = server(formats=("L16",))
    dialect.receive(message(genesys.open([STEREO_PCMU, L16_STEREO]), 0.5))
    assert sent(dialect)[0]["parameters"]["media"] == [L16_STEREO]
    interleaved = np.column_stack([external, internal]).astype("<i2").tobytes()
    left, right = dialect.receive(message(interleaved, 1.0))
    assert isinstance(left, AudioFrame) and isinstance(right, AudioFrame)
    assert left.payload == np.asarray(external, dtype="<i2").tobytes()
    assert right.payload == np.asarray(internal, dtype="<i2").tobytes()
    assert (left.codec, left.duration_ms) == ("L16", len(external) / 8)


def test_channel_restriction_picks_the_first_offer_within_it() -> None:
    dialect = server(channels=("external",))
    [event] = dialect.receive(message(Genesys().open([STEREO_PCMU, MONO_EXTERNAL]), 0.5))
    assert isinstance(event, StreamOpened)
    assert event.channels == ("external",)
    assert sent(dialect)[0]["parameters"]["media"] == [MONO_EXTERNAL]


def test_unusable_offers_open_without_media_and_audio_is_then_refused() -> None:
    genesys = Genesys()
    dialect = server()
    odd = {"type": "audio", "format": "opus", "channels": ["external"], "rate": 48000}
    [event] = dialect.receive(message(genesys.open([odd, "junk"]), 0.5))
    assert isinstance(event, StreamOpened) and event.channels == ()
    assert sent(dialect)[0]["parameters"]["media"] == []
    [bad] = dialect.receive(message(b"\xff" * 160, 1.0))
    assert isinstance(bad, Malformed) and bad.kind == "audio_without_media" and bad.fatal


def test_connection_probe_is_marked() -> None:
    dialect = server()
    probe_open = Genesys().open(
        conversationId=NULL_UUID,
        participant={"id": NULL_UUID, "ani": "", "aniName": "", "dnis": ""},
    )
    [event] = dialect.receive(message(probe_open, 0.5))
    assert isinstance(event, StreamOpened) and event.probe


def test_discarded_and_error_are_reported() -> None:
    genesys = Genesys()
    dialect = opened_server(genesys)
    discarded = genesys.text("discarded", {"start": "PT1S", "discarded": "PT0.2S"})
    [signal] = dialect.receive(message(discarded, 2.0))
    assert signal == StreamSignal(
        SESSION, 2.0, "discarded", {"start": "PT1S", "discarded": "PT0.2S"}
    )
    error = genesys.text("error", {"code": 429, "message": "slow down", "retryAfter": "PT3S"})
    assert dialect.receive(message(error, 3.0)) == [StreamError(SESSION, 3.0, "429", "slow down")]
    assert sent(dialect) == []
    assert not dialect.close_expected()


def test_pause_and_resume_requests_are_queued_and_answers_are_idempotent() -> None:
    genesys = Genesys()
    dialect = opened_server(genesys)
    dialect.pause()
    dialect.resume()
    assert [m["type"] for m in sent(dialect)] == ["pause", "resume"]
    genesys.serverseq = 3
    assert len(dialect.receive(message(genesys.text("paused"), 2.0))) == 1
    assert dialect.receive(message(genesys.text("paused"), 2.1)) == []
    assert dialect.paused


def test_pause_before_open_starts_the_session_paused() -> None:
    dialect = server()
    dialect.pause()
    events = dialect.receive(message(Genesys().open(), 0.5))
    assert [type(e) for e in events] == [StreamOpened, StreamPaused]
    assert sent(dialect)[0]["parameters"]["startPaused"] is True


def test_session_id_is_learned_from_the_first_message_when_not_given() -> None:
    dialect = AudioHookDialect(role="server")
    dialect.connection_made(0.0)
    genesys = Genesys()
    [event] = dialect.receive(message(genesys.open(), 0.5))
    assert event.stream_id == SESSION
    assert sent(dialect)[0]["id"] == SESSION


# -- server role: violations ---------------------------------------------------------------

STEREO_SAMPLE = b"\x01\x02"


def _violations() -> dict[str, Any]:
    """Each case: (what to send after a good open, the Malformed kind expected)."""

    def gap(g: Genesys) -> str:
        g.seq += 1
        return g.text("ping")

    def duplicate(g: Genesys) -> str:
        g.seq -= 1
        return g.text("ping")

    return {
        "seq gap": (gap, "seq_gap"),
        "duplicate seq": (duplicate, "duplicate_seq"),
        "wrong id": (lambda g: g.text("ping", id=CONVERSATION), "wrong_id"),
        "serverseq ahead": (lambda g: g.text("ping", serverseq=9), "bad_ack"),
        "unknown type": (lambda g: g.text("dance"), "unknown_type"),
        "second open": (lambda g: g.open(), "unexpected_type"),
        "bad JSON": (lambda g: '{"version": "2", "seq": ', "bad_json"),
        "oversized": (lambda g: g.text("ping", padding="x" * 70000), "oversized"),
        "bad envelope": (lambda g: g.text("ping", version="1"), "bad_envelope"),
        "bad parameters": (lambda g: g.text("close", {"reason": 5}), "bad_parameters"),
        "bad audio length": (lambda g: b"\x01\x02\x03", "bad_audio_length"),
    }


@pytest.mark.parametrize("case", sorted(_violations()))
def test_violation_is_one_fatal_malformed_then_disconnect_error_then_close(case: str) -> None:
    build, kind = _violations()[case]
    genesys = Genesys()
    dialect = opened_server(genesys)
    events = dialect.receive(message(build(genesys), 2.0))
    assert len(events) == 1
    [event] = events
    assert isinstance(event, Malformed)
    assert (event.kind, event.fatal, event.stream_id) == (kind, True, SESSION)
    [disconnect] = sent(dialect)
    assert disconnect["type"] == "disconnect"
    assert disconnect["parameters"]["reason"] == "error"
    assert disconnect["parameters"]["info"].startswith(kind)
    assert not dialect.close_expected()
    assert dialect.next_deadline_s() == pytest.approx(12.0)
    # the client answers with close, whatever its seq now is
    genesys.seq += 5
    events = dialect.receive(message(genesys.text("close", {"reason": "disconnect"}), 2.5))
    assert events == [StreamClosed(SESSION, 2.5, "error")]
    assert [m["type"] for m in sent(dialect)] == ["closed"]
    assert dialect.close_expected()


def test_binary_before_opened_is_a_violation() -> None:
    dialect = server()
    [event] = dialect.receive(message(STEREO_SAMPLE, 0.2))
    assert isinstance(event, Malformed) and (event.kind, event.fatal) == (
        "audio_before_open",
        True,
    )
    assert sent(dialect)[0]["parameters"]["reason"] == "error"
    # no stream was opened, so closing it reports nothing
    assert dialect.receive(message(Genesys().text("close", {"reason": "error"}), 0.3)) == []
    assert dialect.close_expected()


def test_binary_while_paused_is_a_violation() -> None:
    genesys = Genesys()
    dialect = opened_server(genesys)
    dialect.receive(message(genesys.text("paused"), 1.0))
    [event] = dialect.receive(message(STEREO_SAMPLE, 1.1))
    assert isinstance(event, Malformed) and (event.kind, event.fatal) == (
        "audio_while_paused",
        True,
    )
    assert sent(dialect)[0]["type"] == "disconnect"


def test_anything_after_close_is_fatal_and_answered_by_nothing() -> None:
    genesys = Genesys()
    dialect = opened_server(genesys)
    dialect.receive(message(genesys.text("close", {"reason": "end"}), 1.0))
    sent(dialect)
    [event] = dialect.receive(message(STEREO_SAMPLE, 1.1))
    assert isinstance(event, Malformed) and (event.kind, event.fatal) == ("after_close", True)
    assert dialect.data_to_send() == []


def test_messages_after_a_violation_are_counted_not_answered() -> None:
    genesys = Genesys()
    dialect = opened_server(genesys)
    dialect.receive(message(genesys.text("dance"), 1.0))
    sent(dialect)
    for data in (STEREO_SAMPLE, genesys.text("ping"), "not json"):
        [event] = dialect.receive(message(data, 1.1))
        assert isinstance(event, Malformed)
        assert (event.kind, event.fatal) == ("after_error", False)
    assert dialect.data_to_send() == []


def test_empty_audio_is_malformed_but_not_fatal() -> None:
    genesys = Genesys()
    dialect = opened_server(genesys)
    [event] = dialect.receive(message(b"", 1.0))
    assert isinstance(event, Malformed) and not event.fatal
    assert dialect.data_to_send() == []


# -- server role: authorization, ending, timers ----------------------------------------------


def test_open_from_another_organization_is_refused_unauthorized() -> None:
    dialect = AudioHookDialect(role="server", session_id=SESSION, organization_id=CONVERSATION)
    dialect.connection_made(0.0)
    [event] = dialect.receive(message(Genesys().open(), 0.5))
    assert isinstance(event, Malformed) and (event.kind, event.fatal) == ("unauthorized", True)
    [disconnect] = sent(dialect)
    assert disconnect["type"] == "disconnect"
    assert disconnect["parameters"]["reason"] == "unauthorized"


def test_refuse_queues_an_unauthorized_disconnect_and_waits_for_close() -> None:
    dialect = server()
    dialect.refuse(0.5, "signature not verified")
    [disconnect] = sent(dialect)
    assert disconnect["parameters"] == {"reason": "unauthorized", "info": "signature not verified"}
    assert dialect.next_deadline_s() == pytest.approx(10.5)
    genesys = Genesys()
    assert dialect.receive(message(genesys.open(), 0.6))[0].kind == "after_error"  # type: ignore[union-attr]
    dialect.receive(message(genesys.text("close", {"reason": "disconnect"}), 0.7))
    assert [m["type"] for m in sent(dialect)] == ["closed"]
    assert dialect.close_expected()


def test_end_disconnects_completed_keeps_audio_flowing_until_close() -> None:
    genesys = Genesys()
    dialect = opened_server(genesys)
    dialect.end("shutdown", 5.0)
    dialect.end("shutdown", 5.05)
    [disconnect] = sent(dialect)
    assert disconnect["parameters"] == {"reason": "completed", "info": "shutdown"}
    frames = dialect.receive(message(STEREO_SAMPLE, 5.1))
    assert [f.channel for f in frames] == ["external", "internal"]  # type: ignore[union-attr]
    genesys.serverseq = 2
    events = dialect.receive(message(genesys.text("close", {"reason": "disconnect"}), 5.2))
    assert events == [StreamClosed(SESSION, 5.2, "disconnect")]
    assert dialect.close_expected()


def test_no_open_in_time_gives_up() -> None:
    dialect = server(open_timeout_s=3.0)
    assert dialect.next_deadline_s() == 3.0
    assert dialect.timer(2.9) == []
    [event] = dialect.timer(3.0)
    assert isinstance(event, Malformed) and event.kind == "open_timeout"
    assert dialect.close_expected()


def test_no_close_after_disconnect_gives_up() -> None:
    genesys = Genesys()
    dialect = opened_server(genesys, close_timeout_s=4.0)
    dialect.end("completed", 10.0)
    assert dialect.next_deadline_s() == 14.0
    assert dialect.timer(13.0) == []
    assert dialect.timer(14.0) == [StreamClosed(SESSION, 14.0, "close_timeout")]
    assert dialect.close_expected()


def test_connection_lost_ends_an_open_stream_only() -> None:
    genesys = Genesys()
    assert server().connection_lost(1.0) == []
    dialect = opened_server(genesys)
    assert dialect.connection_lost(2.0) == [StreamClosed(SESSION, 2.0, "connection_lost")]
    assert dialect.close_expected()


def test_role_specific_methods_refuse_the_other_role() -> None:
    with pytest.raises(ConfigError, match="client role"):
        server().send_audio(b"\x00")
    with pytest.raises(ConfigError, match="server role"):
        client().refuse(0.0)


# -- client role -----------------------------------------------------------------------------


def test_client_opens_with_its_ids_and_offers() -> None:
    dialect = client(participant={"ani": "+1555"}, open_parameters={"customConfig": {"a": 1}})
    assert dialect.data_to_send() == []
    dialect.connection_made(0.0)
    [open_message] = sent(dialect)
    assert open_message["type"] == "open"
    assert (open_message["seq"], open_message["serverseq"], open_message["position"]) == (
        1,
        0,
        "PT0S",
    )
    parameters = open_message["parameters"]
    assert parameters["organizationId"] == ORG
    assert parameters["conversationId"] == CONVERSATION
    assert parameters["participant"]["id"] == PARTICIPANT
    assert parameters["participant"]["ani"] == "+1555"
    assert parameters["media"][0] == STEREO_PCMU
    assert parameters["customConfig"] == {"a": 1}
    assert dialect.next_deadline_s() == 5.0
    with pytest.raises(ConfigError, match="twice"):
        dialect.connection_made(1.0)


def test_client_pings_one_second_after_opened_then_every_five_and_measures_rtt() -> None:
    peer = Server()
    dialect = opened_client(peer)
    assert dialect.next_deadline_s() == pytest.approx(1.2)
    dialect.timer(1.2)
    [ping] = sent(dialect)
    assert ping["type"] == "ping" and ping["parameters"] == {}
    peer.clientseq = ping["seq"]
    [pong] = dialect.receive(message(peer.text("pong"), 1.25))
    assert isinstance(pong, Pong) and pong.rtt_ms == pytest.approx(50.0)
    assert dialect.next_deadline_s() == pytest.approx(6.2)
    dialect.timer(6.2)
    [second] = sent(dialect)
    assert second["parameters"] == {"rtt": "PT0.05S"}


def test_client_missing_pong_is_a_timeout_error_and_close() -> None:
    peer = Server()
    dialect = opened_client(peer)
    dialect.timer(1.2)
    sent(dialect)
    [event] = dialect.timer(6.2)
    assert isinstance(event, Malformed) and (event.kind, event.fatal) == ("pong_timeout", True)
    error, close = sent(dialect)
    assert error["type"] == "error" and error["parameters"]["code"] == 408
    assert close["type"] == "close" and close["parameters"] == {"reason": "error"}
    [closed] = dialect.receive(message(peer.text("closed", seq=99), 6.3))
    assert closed == StreamClosed(SESSION, 6.3, "error")
    assert dialect.close_expected()


def test_client_pong_for_another_seq_is_a_violation() -> None:
    peer = Server()
    dialect = opened_client(peer)
    dialect.timer(1.2)
    sent(dialect)
    [event] = dialect.receive(message(peer.text("pong", clientseq=1), 1.3))
    assert isinstance(event, Malformed) and event.kind == "pong_mismatch"


def test_client_answers_pause_and_resume_requests() -> None:
    peer = Server()
    dialect = opened_client(peer)
    assert dialect.receive(message(peer.text("pause"), 1.0)) == [StreamPaused(SESSION, 1.0)]
    assert not dialect.send_audio(b"\xff\xff")
    assert dialect.receive(message(peer.text("pause"), 1.1)) == []
    assert dialect.receive(message(peer.text("resume"), 1.2)) == [StreamResumed(SESSION, 1.2)]
    paused, paused_again, resumed = sent(dialect)
    assert (paused["type"], paused_again["type"]) == ("paused", "paused")
    assert resumed["type"] == "resumed"
    assert resumed["parameters"] == {"start": "PT0S", "discarded": "PT0S"}


def test_client_audio_advances_position_in_samples() -> None:
    peer = Server()
    dialect = opened_client(peer)
    assert dialect.send_audio(b"\xff" * 3200)
    samples = np.zeros((800, 2), dtype=np.int16)
    assert dialect.send_audio(samples)
    audio = dialect.data_to_send()
    assert [len(a) for a in audio] == [3200, 1600]
    assert audio[1] == b"\xff" * 1600  # µ-law silence
    dialect.pause()
    assert sent(dialect)[0]["position"] == "PT0.3S"
    dialect.resume()
    with pytest.raises(ConfigError, match="multiple"):
        dialect.send_audio(b"\xff\xff\xff")


def test_client_closes_on_disconnect_and_reports_closed() -> None:
    peer = Server()
    dialect = opened_client(peer)
    reason = {"reason": "completed", "info": "bye"}
    [signal] = dialect.receive(message(peer.text("disconnect", reason), 2.0))
    assert signal == StreamSignal(SESSION, 2.0, "disconnect", reason)
    [close] = sent(dialect)
    assert close["type"] == "close" and close["parameters"] == {"reason": "disconnect"}
    assert dialect.receive(message(peer.text("closed"), 2.1)) == [
        StreamClosed(SESSION, 2.1, "completed")
    ]
    assert dialect.close_expected()


def test_client_reports_event_entities_one_by_one() -> None:
    peer = Server()
    dialect = opened_client(peer)
    entities = [{"type": "transcript", "data": {"id": "x"}}, {"type": "agentassist", "data": 1}]
    events = dialect.receive(message(peer.text("event", {"entities": entities}), 2.0))
    assert events == [
        StreamSignal(SESSION, 2.0, "transcript", {"data": {"id": "x"}}),
        StreamSignal(SESSION, 2.0, "agentassist", {"data": 1}),
    ]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x00\x01", "unexpected_binary"),
        ("gap", "seq_gap"),
        ("ack", "bad_ack"),
        ("unoffered", "media_not_offered"),
    ],
)
def test_client_refuses_a_misbehaving_server(data: str | bytes, kind: str) -> None:
    peer = Server()
    dialect = client()
    dialect.connection_made(0.0)
    sent(dialect)
    bad_media = {"type": "audio", "format": "L16", "channels": ["internal"], "rate": 8000}
    texts = {
        "gap": lambda: peer.text("opened", {"media": [STEREO_PCMU]}, seq=2),
        "ack": lambda: peer.text("opened", {"media": [STEREO_PCMU]}, clientseq=5),
        "unoffered": lambda: peer.text("opened", {"media": [bad_media]}),
    }
    [event] = dialect.receive(message(texts[data]() if isinstance(data, str) else data))
    assert isinstance(event, Malformed) and (event.kind, event.fatal) == (kind, True)
    assert [m["type"] for m in sent(dialect)] == ["error", "close"]


def test_client_open_and_close_timeouts() -> None:
    dialect = client()
    dialect.connection_made(0.0)
    sent(dialect)
    [event] = dialect.timer(5.0)
    assert isinstance(event, Malformed) and event.kind == "open_timeout"
    assert [m["type"] for m in sent(dialect)] == ["error", "close"]
    assert dialect.next_deadline_s() == 15.0
    assert dialect.timer(15.0)[0].kind == "close_timeout"  # type: ignore[union-attr]
    assert dialect.close_expected()


# -- both roles together -----------------------------------------------------------------


def test_client_and_server_complete_a_session_between_themselves() -> None:
    genesys = client()
    ours = AudioHookDialect(role="server", session_id=SESSION, organization_id=ORG)
    ours.connection_made(0.0)
    genesys.connection_made(0.0)
    [opened] = pump(genesys, ours, 0.01)
    assert isinstance(opened, StreamOpened) and opened.channels == ("external", "internal")
    assert isinstance(pump(ours, genesys, 0.02)[0], StreamOpened)
    ext = np.arange(-800, 800, dtype=np.int16)
    internal = ext[::-1].copy()
    for index in range(3):
        genesys.send_audio(np.column_stack([ext, internal]))
        frames = pump(genesys, ours, 0.2 * (index + 1))
        assert [f.seq for f in frames] == [index, index]  # type: ignore[union-attr]
        assert frames[0].media_ms == 200.0 * index  # type: ignore[union-attr]
    genesys.timer(1.02)
    [server_pong] = pump(genesys, ours, 1.03)
    [client_pong] = pump(ours, genesys, 1.04)
    assert isinstance(server_pong, Pong) and isinstance(client_pong, Pong)
    assert client_pong.rtt_ms == pytest.approx(20.0)
    ours.pause()
    pump(ours, genesys, 1.1)
    assert pump(genesys, ours, 1.2) == [StreamPaused(SESSION, 1.2)]
    genesys.close("end", 2.0)
    assert pump(genesys, ours, 2.1) == [StreamClosed(SESSION, 2.1, "end")]
    assert pump(ours, genesys, 2.2) == [StreamClosed(SESSION, 2.2, "end")]
    assert ours.close_expected() and genesys.close_expected()


def test_server_shutdown_ends_the_client_cleanly() -> None:
    genesys = client()
    ours = AudioHookDialect(role="server", session_id=SESSION)
    ours.connection_made(0.0)
    genesys.connection_made(0.0)
    pump(genesys, ours, 0.01)
    pump(ours, genesys, 0.02)
    ours.end("drain", 1.0)
    pump(ours, genesys, 1.1)
    assert pump(genesys, ours, 1.2) == [StreamClosed(SESSION, 1.2, "disconnect")]
    assert pump(ours, genesys, 1.3) == [StreamClosed(SESSION, 1.3, "completed")]
    assert ours.close_expected() and genesys.close_expected()


# -- arbitrary input -----------------------------------------------------------------------

_TYPES = st.sampled_from(
    [
        *("open", "ping", "paused", "resumed", "update", "close", "discarded", "error"),
        *("opened", "pong", "pause", "resume", "event", "disconnect", "closed", "updated"),
    ]
)


@st.composite
def envelopes(draw: st.DrawFn) -> str:
    document = {
        "version": draw(mostly(st.just("2"))),
        "id": draw(mostly(st.just(SESSION))),
        "type": draw(mostly(_TYPES)),
        "seq": draw(mostly(st.integers(0, 4))),
        "serverseq": draw(mostly(st.integers(0, 3))),
        "clientseq": draw(mostly(st.integers(0, 3))),
        "position": draw(mostly(st.just("PT0.1S"))),
        "parameters": draw(mostly(st.dictionaries(st.text(max_size=14), JSON_VALUES, max_size=4))),
    }
    return json.dumps(document)


WIRE = st.one_of(
    envelopes(),
    st.text(max_size=60),
    st.binary(max_size=64),
    st.just(Genesys().open()),
)


@settings(max_examples=300, deadline=None)
@given(role=st.sampled_from(["client", "server"]), inputs=st.lists(WIRE, max_size=8))
def test_arbitrary_input_never_raises_and_yields_documented_events(
    role: str, inputs: list[str | bytes]
) -> None:
    dialect = server() if role == "server" else client()
    if role == "client":
        dialect.connection_made(0.0)
    for index, data in enumerate(inputs):
        events = dialect.receive(message(data, float(index)))
        assert all(isinstance(event, DOCUMENTED_EVENTS) for event in events)
        assert sum(isinstance(event, Malformed) for event in events) <= 1
        assert all(isinstance(item, (str, bytes)) for item in dialect.data_to_send())
        dialect.timer(float(index) + 0.5)

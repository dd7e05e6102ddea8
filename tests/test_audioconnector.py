"""Audio Connector (AudioHook for voice bots) in both roles: no sockets, virtual time."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitterline.errors import ConfigError
from jitterline.frames import (
    AudioFrame,
    Event,
    Malformed,
    StreamClosed,
    StreamOpened,
    StreamSignal,
)
from jitterline.protocols import Dialect, DialectFactory
from jitterline.protocols.audioconnector import FRAME_BYTES, AudioConnectorDialect
from test_audiohook import (
    CONVERSATION,
    DOCUMENTED_EVENTS,
    MONO_EXTERNAL,
    ORG,
    PARTICIPANT,
    SESSION,
    STEREO_PCMU,
    WIRE,
    Genesys,
    message,
    sent,
)


def bot_server(**options: Any) -> AudioConnectorDialect:
    dialect = AudioConnectorDialect(role="server", session_id=SESSION, **options)
    dialect.connection_made(0.0)
    return dialect


def caller(**options: Any) -> AudioConnectorDialect:
    return AudioConnectorDialect(
        role="client",
        session_id=SESSION,
        organization_id=ORG,
        conversation_id=CONVERSATION,
        participant_id=PARTICIPANT,
        **options,
    )


def pump(source: AudioConnectorDialect, sink: AudioConnectorDialect, at_s: float) -> list[Event]:
    events: list[Event] = []
    for data in source.data_to_send():
        events.extend(sink.receive(message(data, at_s)))
    return events


def connected() -> tuple[AudioConnectorDialect, AudioConnectorDialect]:
    genesys = caller(open_parameters={"inputVariables": {"lang": "en"}})
    bot = bot_server()
    genesys.connection_made(0.0)
    pump(genesys, bot, 0.01)
    pump(bot, genesys, 0.02)
    return genesys, bot


def test_both_roles_satisfy_the_dialect_protocol() -> None:
    factory: DialectFactory = AudioConnectorDialect  # mypy --strict checks the structural fit
    assert isinstance(factory(role="server"), Dialect)
    assert isinstance(bot_server(), Dialect)
    assert isinstance(caller(), Dialect)
    assert bot_server().name == "audioconnector"
    assert bot_server().frame_bytes == FRAME_BYTES == 1600


def test_open_takes_only_the_external_channel_and_keeps_input_variables() -> None:
    bot = bot_server()
    genesys = Genesys()
    text = genesys.open([STEREO_PCMU, MONO_EXTERNAL], inputVariables={"queue": "sales"})
    [opened_event] = bot.receive(message(text, 0.5))
    assert isinstance(opened_event, StreamOpened)
    assert opened_event.channels == ("external",)
    assert opened_event.info["inputVariables"] == {"queue": "sales"}
    assert sent(bot)[0]["parameters"]["media"] == [MONO_EXTERNAL]


@pytest.mark.parametrize(
    ("kind", "parameters"),
    [("dtmf", {"digit": "5"}), ("playback_started", {}), ("playback_completed", {})],
)
def test_bot_client_messages_become_signals(kind: str, parameters: dict[str, Any]) -> None:
    bot = bot_server()
    genesys = Genesys()
    bot.receive(message(genesys.open([MONO_EXTERNAL]), 0.5))
    sent(bot)
    assert bot.receive(message(genesys.text(kind, parameters), 1.0)) == [
        StreamSignal(SESSION, 1.0, kind, parameters)
    ]


def test_dtmf_without_digit_is_a_violation() -> None:
    bot = bot_server()
    genesys = Genesys()
    bot.receive(message(genesys.open([MONO_EXTERNAL]), 0.5))
    sent(bot)
    [event] = bot.receive(message(genesys.text("dtmf", {}), 1.0))
    assert isinstance(event, Malformed) and (event.kind, event.fatal) == ("bad_parameters", True)
    assert sent(bot)[0]["parameters"]["reason"] == "error"


def test_plain_audiohook_refuses_audio_connector_types() -> None:
    from jitterline.protocols.audiohook import AudioHookDialect

    dialect = AudioHookDialect(role="server", session_id=SESSION)
    genesys = Genesys()
    dialect.receive(message(genesys.open(), 0.5))
    [event] = dialect.receive(message(genesys.text("dtmf", {"digit": "1"}), 1.0))
    assert isinstance(event, Malformed) and event.kind == "unknown_type"


def test_bot_audio_is_cut_into_frames_of_at_most_1600_bytes() -> None:
    genesys, bot = connected()
    assert bot.send_audio(bytes(range(250)) * 16)  # 4000 bytes
    frames = bot.data_to_send()
    assert [len(frame) for frame in frames] == [1600, 1600, 800]
    assert b"".join(frames) == bytes(range(250)) * 16  # type: ignore[arg-type]
    received = [e for data in frames for e in genesys.receive(message(data, 1.0))]
    assert all(isinstance(e, AudioFrame) for e in received)
    assert [(f.seq, f.media_ms, f.channel) for f in received] == [  # type: ignore[union-attr]
        (0, 0.0, "bot"),
        (1, 200.0, "bot"),
        (2, 400.0, "bot"),
    ]


def test_bot_audio_before_open_is_not_sent() -> None:
    bot = bot_server()
    assert not bot.send_audio(b"\xff" * 160)
    assert bot.data_to_send() == []
    with pytest.raises(ConfigError, match="PCMU bytes"):
        bot.send_audio([1, 2, 3])


def test_barge_in_and_bot_turn_response_reach_the_client_as_signals() -> None:
    genesys, bot = connected()
    assert bot.barge_in()
    assert bot.bot_turn_response("match", text="pay my bill", confidence=0.9)
    events = pump(bot, genesys, 1.0)
    assert events == [
        StreamSignal(SESSION, 1.0, "barge_in", {"data": {}}),
        StreamSignal(
            SESSION,
            1.0,
            "bot_turn_response",
            {"data": {"disposition": "match", "text": "pay my bill", "confidence": 0.9}},
        ),
    ]
    with pytest.raises(ConfigError, match="disposition"):
        bot.bot_turn_response("maybe")


def test_disconnect_hands_output_variables_back_and_closes() -> None:
    genesys, bot = connected()
    bot.disconnect(2.0, output_variables={"intent": "billing"})
    [signal] = pump(bot, genesys, 2.1)
    assert isinstance(signal, StreamSignal) and signal.kind == "disconnect"
    assert signal.info == {"reason": "completed", "outputVariables": {"intent": "billing"}}
    assert pump(genesys, bot, 2.2) == [StreamClosed(SESSION, 2.2, "disconnect")]
    assert pump(bot, genesys, 2.3) == [StreamClosed(SESSION, 2.3, "completed")]
    assert bot.close_expected() and genesys.close_expected()


def test_caller_sends_dtmf_and_playback_messages() -> None:
    genesys, bot = connected()
    assert genesys.send_dtmf("7")
    assert genesys.playback_started()
    assert genesys.playback_completed()
    events = pump(genesys, bot, 1.0)
    assert [(e.kind, e.info) for e in events] == [  # type: ignore[union-attr]
        ("dtmf", {"digit": "7"}),
        ("playback_started", {}),
        ("playback_completed", {}),
    ]
    assert not caller().send_dtmf("1")  # not connected yet


def test_caller_audio_round_trips_as_external_frames() -> None:
    genesys, bot = connected()
    assert genesys.send_audio(b"\x7f" * 1600)
    [frame] = pump(genesys, bot, 1.0)
    assert isinstance(frame, AudioFrame)
    assert (frame.channel, frame.duration_ms, frame.payload) == ("external", 200.0, b"\x7f" * 1600)


def test_opened_info_of_the_client_names_the_chosen_media() -> None:
    genesys = caller()
    bot = bot_server()
    genesys.connection_made(0.0)
    pump(genesys, bot, 0.01)
    [opened] = pump(bot, genesys, 0.02)
    assert isinstance(opened, StreamOpened)
    assert opened.info["media"] == MONO_EXTERNAL
    assert opened.channels == ("external",)


@settings(max_examples=200, deadline=None)
@given(role=st.sampled_from(["client", "server"]), inputs=st.lists(WIRE, max_size=8))
def test_arbitrary_input_never_raises_and_yields_documented_events(
    role: str, inputs: list[str | bytes]
) -> None:
    dialect = bot_server() if role == "server" else caller()
    if role == "client":
        dialect.connection_made(0.0)
    for index, data in enumerate([Genesys().open([MONO_EXTERNAL]), *inputs]):
        events = dialect.receive(message(data, float(index)))
        assert all(isinstance(event, DOCUMENTED_EVENTS) for event in events)
        assert all(isinstance(item, (str, bytes)) for item in dialect.data_to_send())

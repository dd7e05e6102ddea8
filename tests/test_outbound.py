"""Outbound audio without sockets: encoding, chunking and pacing on virtual time, against
the real protocol objects of both sides."""

from __future__ import annotations

import base64
import itertools
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex.scheduler import HistoricalScheduler

from jitterline import codecs
from jitterline.emulator.players import Playout
from jitterline.errors import ConfigError
from jitterline.frames import AudioFrame, Event, Message, StreamClosed, StreamInfo, StreamSignal
from jitterline.outbound import (
    TWILIO_FRAME_BYTES,
    Outbound,
    Pacer,
    Playback,
    encode_pcmu,
    frame_bytes_for,
    split,
)
from jitterline.protocols.appfoundry import AppFoundryDialect
from jitterline.protocols.audioconnector import FRAME_BYTES, AudioConnectorDialect
from jitterline.protocols.audiohook import AudioHookDialect
from jitterline.protocols.twilio import TwilioDialect
from test_audiohook import CONVERSATION, ORG, PARTICIPANT, SESSION

LEAD_S = 0.1
STREAM_SID = "MZ00000000000000000000000000000042"
_T0 = datetime(2026, 1, 1)


def ramp(seconds: float) -> np.ndarray:
    """Mono int16 at 8 kHz, every sample different from its neighbours."""
    count = int(seconds * 8000)
    return ((np.arange(count) * 37) % 20000 - 10000).astype(np.int16)


# -- encoding and chunking --------------------------------------------------------------------


def test_bytes_and_samples_encode_alike() -> None:
    samples = ramp(0.05)
    assert encode_pcmu(samples.astype("<i2").tobytes()) == encode_pcmu(samples)
    assert encode_pcmu(samples) == codecs.encode(samples, "PCMU")


def test_another_rate_is_resampled_to_8_khz() -> None:
    tone = (8000 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype(np.int16)
    assert abs(len(encode_pcmu(tone, 16000)) - 8000) <= 2


@pytest.mark.parametrize(
    ("pcm", "words"),
    [
        (b"\x00\x01\x02", "whole 16-bit samples"),
        (np.zeros((2, 80), dtype=np.int16), "mono int16"),
        (np.zeros(80, dtype=np.float32), "mono int16"),
        (b"", "empty"),
    ],
)
def test_unusable_audio_is_refused_with_the_fix(pcm: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        encode_pcmu(pcm)  # type: ignore[arg-type]


def test_split_cuts_at_the_frame_size_and_keeps_every_byte() -> None:
    chunks = split(bytes(range(250)) * 10, 1600)
    assert [len(chunk) for chunk in chunks] == [1600, 900]
    assert b"".join(chunks) == bytes(range(250)) * 10


# -- the pacer --------------------------------------------------------------------------------


def test_a_prompt_leaves_at_real_time_less_the_lead() -> None:
    pacer = Pacer(lead_s=0.05)
    pacer.push([b"\xff" * 160] * 10, 1, now_s=0.0)
    first = pacer.pop_due(0.0)
    assert len(first) == 3  # due at -0.05, -0.03, -0.01
    assert pacer.next_due_s() == pytest.approx(0.01)
    assert len(pacer.pop_due(0.04)) == 2  # due at 0.01 and 0.03
    rest = pacer.pop_due(10.0)
    assert len(rest) == 5 and rest[-1].last and not any(c.last for c in first)


def test_a_second_prompt_queues_behind_the_first() -> None:
    pacer = Pacer(lead_s=LEAD_S)
    pacer.push([b"\xff" * 8000], 1, now_s=0.0)
    pacer.push([b"\xff" * 160], 2, now_s=0.5)
    assert pacer.pop_due(0.0)[0].number == 1
    assert pacer.next_due_s() == pytest.approx(1.0 - LEAD_S)
    assert pacer.playing_until_s() == pytest.approx(1.02)


def test_after_a_silence_the_playhead_restarts_at_the_push() -> None:
    pacer = Pacer(lead_s=LEAD_S)
    pacer.push([b"\xff" * 1600], 1, now_s=0.0)
    pacer.pop_due(0.0)
    pacer.push([b"\xff" * 1600], 2, now_s=5.0)
    assert pacer.next_due_s() == pytest.approx(5.0 - LEAD_S)


def test_clear_drops_the_queue_and_the_peer_is_silent_from_then() -> None:
    pacer = Pacer(lead_s=LEAD_S)
    pacer.push([b"\xff" * 160] * 100, 1, now_s=0.0)
    pacer.pop_due(0.51)
    dropped = pacer.clear(0.51)
    assert len(dropped) == 100 - 31  # chunks due at i*0.02 - 0.1 <= 0.51: i <= 30
    assert pacer.next_due_s() is None
    pacer.push([b"\xff" * 160], 2, now_s=0.6)
    assert pacer.next_due_s() == pytest.approx(0.6 - LEAD_S)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 2000), min_size=1, max_size=30),
    lead_s=st.floats(0.0, 0.5),
    now_s=st.floats(0.0, 1000.0),
)
def test_chunks_are_due_one_chunk_duration_apart(
    sizes: list[int], lead_s: float, now_s: float
) -> None:
    pacer = Pacer(lead_s=lead_s)
    pacer.push([b"\x00" * size for size in sizes], 1, now_s)
    chunks = pacer.pop_due(float("inf"))
    assert [len(chunk.payload) for chunk in chunks] == sizes
    assert chunks[0].due_s == pytest.approx(now_s - lead_s)
    for before, after in itertools.pairwise(chunks):
        assert after.due_s - before.due_s == pytest.approx(len(before.payload) / 8000)
    assert pacer.playing_until_s() == pytest.approx(now_s + sum(sizes) / 8000)
    assert [chunk.last for chunk in chunks] == [False] * (len(sizes) - 1) + [True]


# -- one connection's outbound audio on virtual time ------------------------------------------


@dataclass
class Wire:
    """An ``Outbound`` on a ``HistoricalScheduler``; what the server sent, with times."""

    server: TwilioDialect | AudioConnectorDialect
    scheduler: HistoricalScheduler = field(default_factory=lambda: HistoricalScheduler(_T0))
    sent: list[tuple[float, str | bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.outbound = Outbound(
            self.server,
            stream=StreamInfo(stream_id="s", dialect=self.server.name),
            clock=self.now,
            scheduler=self.scheduler,
            flush=self.flush,
            lead_s=LEAD_S,
        )

    def now(self) -> float:
        return (self.scheduler.now - _T0).total_seconds()

    def flush(self) -> None:
        self.sent.extend((self.now(), data) for data in self.server.data_to_send())

    def run_until(self, at_s: float) -> None:
        self.scheduler.advance_to(_T0 + timedelta(seconds=at_s))

    def texts(self) -> list[tuple[float, dict[str, object]]]:
        return [(at, json.loads(data)) for at, data in self.sent if isinstance(data, str)]

    def events(self, client: TwilioDialect | AudioConnectorDialect) -> list[Event]:
        """What the client's protocol object makes of everything sent so far."""
        events: list[Event] = []
        for at_s, data in self.sent:
            events.extend(client.receive(Message(data, arrival_s=at_s)))
        self.sent.clear()
        return events


def twilio_pair() -> tuple[TwilioDialect, TwilioDialect]:
    client = TwilioDialect(role="client", stream_sid=STREAM_SID, call_sid="CA1")
    server = TwilioDialect(role="server")
    client.connection_made(0.0)
    for data in client.data_to_send():
        server.receive(Message(data, arrival_s=0.0))
    return client, server


def connector_pair() -> tuple[AudioConnectorDialect, AudioConnectorDialect]:
    genesys = AudioConnectorDialect(
        role="client",
        session_id=SESSION,
        organization_id=ORG,
        conversation_id=CONVERSATION,
        participant_id=PARTICIPANT,
    )
    bot = AudioConnectorDialect(role="server", session_id=SESSION)
    bot.connection_made(0.0)
    genesys.connection_made(0.0)
    for data in genesys.data_to_send():
        bot.receive(Message(data, arrival_s=0.0))
    for data in bot.data_to_send():
        genesys.receive(Message(data, arrival_s=0.0))
    return genesys, bot


def test_twilio_gets_20_ms_media_in_real_time_then_a_mark() -> None:
    client, server = twilio_pair()
    wire = Wire(server)
    samples = ramp(1.0)
    playback = wire.outbound.send(samples)
    wire.run_until(2.0)

    texts = wire.texts()
    media = [(at, doc) for at, doc in texts if doc["event"] == "media"]
    assert len(media) == 50 and texts[-1][1]["event"] == "mark"
    assert texts[-1][1]["mark"] == {"name": playback.name}
    times = [at for at, _ in media]
    assert times == pytest.approx([max(0.0, i * 0.02 - LEAD_S) for i in range(50)], abs=1e-6)
    payload = b"".join(base64.b64decode(doc["media"]["payload"]) for _, doc in media)  # type: ignore[index]
    assert np.array_equal(
        codecs.decode(payload, "PCMU"), codecs.decode(encode_pcmu(samples), "PCMU")
    )
    assert playback.state == "sent"
    # The client's protocol object takes every message: the wire format is Twilio's.
    kinds = [e.kind for e in wire.events(client) if isinstance(e, StreamSignal)]
    assert kinds == ["media"] * 50 + ["mark"]


def test_the_mark_echo_tells_the_sender_it_played() -> None:
    client, server = twilio_pair()
    wire = Wire(server)
    done: list[Playback] = []
    playback = wire.outbound.send(ramp(0.1))
    playback.add_done_callback(done.append)
    wire.run_until(0.2)
    wire.events(client)
    client.send_mark(playback.name)
    for data in client.data_to_send():
        wire.outbound.event(*server.receive(Message(data, arrival_s=0.2)))
    assert playback.state == "played" and done == [playback]


def test_clear_stops_twilio_and_a_late_mark_does_not_revive_it() -> None:
    client, server = twilio_pair()
    wire = Wire(server)
    playback = wire.outbound.send(ramp(2.0))
    wire.run_until(0.51)
    dropped = wire.outbound.clear()
    wire.run_until(3.0)

    events = [e.kind for e in wire.events(client) if isinstance(e, StreamSignal)]
    assert events == ["media"] * 31 + ["clear"]  # due at i*0.02 - 0.1 <= 0.51
    assert dropped == 100 - 31 and playback.state == "cleared"
    wire.outbound.event(StreamSignal(STREAM_SID, 3.0, "mark", {"name": playback.name}))
    assert playback.state == "cleared"


def test_audio_connector_gets_paced_1600_byte_frames_and_no_mark() -> None:
    genesys, bot = connector_pair()
    wire = Wire(bot)
    samples = ramp(1.0)
    playback = wire.outbound.send(samples)
    wire.run_until(2.0)

    assert wire.outbound.frame_bytes == FRAME_BYTES
    assert [(round(at, 6), len(data)) for at, data in wire.sent] == [
        (0.0, 1600), (0.1, 1600), (0.3, 1600), (0.5, 1600), (0.7, 1600),
    ]  # fmt: skip
    frames = [e for e in wire.events(genesys) if isinstance(e, AudioFrame)]
    audio = b"".join(frame.payload for frame in frames)
    assert np.array_equal(
        codecs.decode(audio, "PCMU"), codecs.decode(encode_pcmu(samples), "PCMU")
    )
    genesys.playback_completed()
    for data in genesys.data_to_send():
        for event in bot.receive(Message(data, arrival_s=2.0)):
            wire.outbound.event(event)
    assert playback.state == "played"


def test_audio_connector_clear_is_a_barge_in() -> None:
    genesys, bot = connector_pair()
    wire = Wire(bot)
    playback = wire.outbound.send(ramp(2.0))
    wire.run_until(0.35)
    wire.outbound.clear()
    wire.run_until(3.0)
    events = wire.events(genesys)
    assert sum(isinstance(e, AudioFrame) for e in events) == 3  # at 0, 0.1, 0.3
    assert [e.kind for e in events if isinstance(e, StreamSignal)] == ["barge_in"]
    assert playback.state == "cleared"


def test_the_end_of_the_stream_stops_the_audio_and_clears_what_is_left() -> None:
    client, server = twilio_pair()
    wire = Wire(server)
    playback = wire.outbound.send(ramp(1.0))
    wire.run_until(0.2)
    client.stop()
    for data in client.data_to_send():
        for event in server.receive(Message(data, arrival_s=0.2)):
            wire.outbound.event(event)
    wire.sent.clear()
    wire.run_until(2.0)
    assert wire.sent == [] and playback.state == "cleared"
    assert wire.outbound.send(ramp(0.1)).state == "cleared"


def test_a_stream_that_stops_taking_audio_drops_the_rest() -> None:
    genesys, bot = connector_pair()
    wire = Wire(bot)
    playback = wire.outbound.send(ramp(1.0))
    wire.run_until(0.1)
    genesys.close("end", 0.1)
    for data in genesys.data_to_send():
        bot.receive(Message(data, arrival_s=0.1))  # not told to the outbound: it finds out
    wire.run_until(2.0)
    assert wire.outbound.closed and playback.state == "cleared"
    assert sum(isinstance(data, bytes) for _, data in wire.sent) == 2


def test_audiohook_is_monitor_only() -> None:
    server = AudioHookDialect(role="server", session_id=SESSION)
    with pytest.raises(ConfigError, match=r"AudioHook is monitor-only.*audioconnector"):
        frame_bytes_for(server)
    with pytest.raises(ConfigError, match="monitor-only"):
        Wire(server)  # type: ignore[arg-type]


def test_a_dialect_without_outbound_audio_is_named() -> None:
    with pytest.raises(ConfigError, match="'appfoundry' has no outbound audio"):
        frame_bytes_for(AppFoundryDialect(role="client", wall_clock=lambda: 0.0))


def test_twilio_frames_are_20_ms() -> None:
    assert frame_bytes_for(TwilioDialect(role="server")) == TWILIO_FRAME_BYTES == 160


def test_a_stream_closed_event_ends_the_outbound() -> None:
    _, server = twilio_pair()
    wire = Wire(server)
    wire.outbound.event(StreamClosed(STREAM_SID, 0.0, "stop"))
    assert wire.outbound.closed


# -- the player's side: the platform playing our audio out ---------------------------------


def test_the_platform_echoes_a_mark_once_the_audio_before_it_played() -> None:
    playout = Playout()
    assert playout.audio(1600, now_s=0.0)  # starts a stretch: playback_started
    assert not playout.audio(1600, now_s=0.1)  # 200 ms queued behind the first 200 ms
    playout.mark("m1", now_s=0.1)
    assert playout.marks_due(0.39) == [] and playout.next_due_s() == pytest.approx(0.4)
    assert playout.marks_due(0.4) == ["m1"]
    assert not playout.stretch_over(0.39) and playout.stretch_over(0.4)
    assert not playout.stretch_over(0.5)  # once


def test_a_clear_drops_the_unplayed_audio_and_echoes_its_marks_at_once() -> None:
    playout = Playout()
    playout.audio(8000, now_s=0.0)
    playout.mark("m1", now_s=0.0)
    assert playout.clear(0.3) == ["m1"]
    assert playout.stretch_over(0.3)  # silent from the clear on
    assert playout.audio(160, now_s=0.5)  # a new stretch


@settings(max_examples=200, deadline=None)
@given(
    pcm=st.binary(max_size=64)
    | st.lists(st.integers(-(2**40), 2**40), max_size=16).map(np.array)
    | st.lists(st.integers(-32768, 32767), max_size=400).map(lambda v: np.array(v, np.int16))
    | st.lists(st.floats(allow_nan=True), max_size=8).map(np.array),
    rate=st.sampled_from([8000, 16000]),
)
def test_send_takes_any_input_or_refuses_it_with_config_error(pcm: object, rate: int) -> None:
    _, server = twilio_pair()
    wire = Wire(server)
    try:
        playback = wire.outbound.send(pcm, rate)  # type: ignore[arg-type]
    except ConfigError:
        assert wire.sent == []
        return
    assert playback.state in ("queued", "sent")

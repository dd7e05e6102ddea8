"""Every dialect in both roles, fuzzed (issue 12, "Fuzzing").

Two properties per dialect:

- a random conversation between a client and a server object of the dialect (random
  audio, signals, pauses, time steps, an end by either side), delivered in order and at
  once as TCP would, keeps both objects' invariants: no ``Malformed`` on either side,
  each channel's frames numbered 0, 1, 2 ... with nothing lost, every audio message sent
  arriving as one frame per channel, the close handshake completing;
- the transcript of such a conversation, mutated (messages dropped, duplicated, swapped,
  cut, fields replaced by arbitrary JSON, bytes flipped) and fed to a fresh receiver,
  never makes ``receive`` or ``timer`` raise: only documented event types come out, at
  most one ``Malformed`` per message, and what the object queues to send is text or bytes.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dialect_testkit import JSON_VALUES
from fuzz_testkit import DOCUMENTED_EVENTS, examples
from jitterline.errors import ConfigError, DialectError
from jitterline.frames import AudioFrame, Event, Malformed, Message, StreamClosed
from jitterline.protocols import Dialect, Role
from jitterline.protocols.appfoundry import AppFoundryDialect, AudioChunk
from jitterline.protocols.audioconnector import AudioConnectorDialect
from jitterline.protocols.audiohook import AudioHookDialect
from jitterline.protocols.twilio import TwilioDialect

DIALECTS = ("appfoundry", "twilio", "audiohook", "audioconnector")
SESSION = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
ORG = "d7934305-0972-4844-938e-9060eef73d05"
WALL_S = 1_700_000_000.0


def make(name: str, role: Role) -> Dialect:
    """A protocol object of ``name`` in ``role``, with the options its role requires."""
    if name == "appfoundry":
        return AppFoundryDialect(role=role, session_id="s-1", wall_clock=lambda: WALL_S)
    if name == "twilio":
        if role == "client":
            return TwilioDialect(role=role, stream_sid="MZ00", call_sid="CA00", account_sid="AC")
        return TwilioDialect(role=role)
    cls = AudioHookDialect if name == "audiohook" else AudioConnectorDialect
    if role == "server":
        return cls(role=role, session_id=SESSION, organization_id=ORG)
    return cls(
        role=role,
        session_id=SESSION,
        organization_id=ORG,
        conversation_id="e160e428-53e2-487c-977d-96989bf5c99d",
        participant_id="1f4b3c2a-5d6e-4f70-8a9b-0c1d2e3f4a5b",
    )


# -- a conversation ------------------------------------------------------------------------


@dataclass
class Side:
    """One end of a conversation and what it received."""

    proto: Dialect
    events: list[Event] = field(default_factory=list)
    received: list[str | bytes] = field(default_factory=list)
    audio_sent: int = 0


@dataclass
class Conversation:
    """A client and a server of one dialect on a perfect, instant link."""

    name: str
    client: Side
    server: Side
    now_s: float = 0.0
    ended: bool = False
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def deliver(self) -> None:
        """Everything queued on either side reaches the other, in order, now; repeated
        until both are quiet (an answer may trigger an answer)."""
        for _ in range(50):
            moved = False
            for sender, receiver in ((self.client, self.server), (self.server, self.client)):
                for data in sender.proto.data_to_send():
                    assert isinstance(data, (str, bytes))
                    moved = True
                    receiver.received.append(data)
                    receiver.events.extend(receiver.proto.receive(Message(data, self.now_s)))
            if not moved:
                return
        raise AssertionError("the two sides kept answering each other")

    def advance(self, step_s: float) -> None:
        self.now_s = round(self.now_s + step_s, 6)
        for side in (self.client, self.server):
            for _ in range(10):
                due = side.proto.next_deadline_s()
                if due is None or due > self.now_s:
                    break
                side.events.extend(side.proto.timer(self.now_s))
                self.deliver()


def _audio(conversation: Conversation, role: Role) -> None:
    """The side that carries the dialect's audio in ``role`` sends one message of it."""
    side = conversation.client if role == "client" else conversation.server
    proto = side.proto
    sent = False
    with contextlib.suppress(DialectError):
        if isinstance(proto, AppFoundryDialect) and role == "server":
            proto.send_audio(
                AudioChunk(
                    b"\x01\x00" * 160,
                    capture_wall_s=WALL_S + side.audio_sent * 0.02,
                    sent_wall_s=WALL_S + side.audio_sent * 0.02 + 0.001,
                    seq=side.audio_sent,
                )
            )
            sent = True
        elif isinstance(proto, TwilioDialect) and role == "client":
            proto.send_audio(b"\xff" * 160)
            sent = True
        elif isinstance(proto, AudioHookDialect) and (
            role == "client" or isinstance(proto, AudioConnectorDialect)
        ):
            media = proto.media
            width = 1 if media is None else len(media[1])
            sent = proto.send_audio(b"\xff" * 160 * width)
    side.audio_sent += int(sent)


def _signal(conversation: Conversation, role: Role) -> None:
    """Something other than audio: user input, DTMF, a mark, a pause or resume, an event."""
    proto = (conversation.client if role == "client" else conversation.server).proto
    pick = conversation.rng.random()
    with contextlib.suppress(DialectError, ConfigError):
        if isinstance(proto, AppFoundryDialect):
            if role == "client":
                proto.send_user_input("hello", "u-1")
            else:
                proto.send_error(503, "busy")
        elif isinstance(proto, TwilioDialect):
            if role == "client":
                proto.send_dtmf("5") if pick < 0.5 else proto.send_mark("m1")
            else:
                (proto.send_mark if pick < 0.5 else lambda _: proto.send_clear())("m1")
        elif isinstance(proto, AudioConnectorDialect) and role == "client" and pick < 0.3:
            proto.send_dtmf("7")
        elif isinstance(proto, AudioHookDialect):
            if role == "server" and pick < 0.3:
                proto.send_event([{"type": "transcript", "data": {"text": "hi"}}])
            elif pick < 0.65:
                proto.pause()
            else:
                proto.resume()


ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("audio"), st.sampled_from(["client", "server"])),
        st.tuples(st.just("signal"), st.sampled_from(["client", "server"])),
        st.tuples(st.just("tick"), st.floats(0.0, 3.0)),
    ),
    max_size=40,
)


def converse(
    name: str, actions: list[tuple[str, Any]], end_by: Role, seed: int = 0
) -> Conversation:
    conversation = Conversation(
        name, Side(make(name, "client")), Side(make(name, "server")), rng=random.Random(seed)
    )
    conversation.server.proto.connection_made(0.0)
    conversation.client.proto.connection_made(0.0)
    conversation.deliver()
    for kind, argument in actions:
        if kind == "audio":
            _audio(conversation, argument)
        elif kind == "signal":
            _signal(conversation, argument)
        else:
            conversation.advance(argument)
        conversation.deliver()
    ender = conversation.client if end_by == "client" else conversation.server
    ender.proto.end("end", conversation.now_s)
    conversation.deliver()
    conversation.advance(0.0)
    return conversation


def _frames_by_channel(events: list[Event]) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = {}
    for event in events:
        if isinstance(event, AudioFrame):
            seqs.setdefault(event.channel, []).append(event.seq)
    return seqs


@settings(max_examples=examples(1.0))
@given(
    name=st.sampled_from(DIALECTS),
    actions=ACTIONS,
    end_by=st.sampled_from(["client", "server"]),
    seed=st.integers(0, 2**16),
)
def test_random_conversations_keep_both_sides_invariants(
    name: str, actions: list[tuple[str, Any]], end_by: Role, seed: int
) -> None:
    conversation = converse(name, actions, end_by, seed)

    for side in (conversation.client, conversation.server):
        assert not [e for e in side.events if isinstance(e, Malformed)], side.events
        assert all(isinstance(event, DOCUMENTED_EVENTS) for event in side.events)
        for channel, seqs in _frames_by_channel(side.events).items():
            assert seqs == list(range(len(seqs))), (channel, seqs)
    audio_to = conversation.client if name in ("appfoundry",) else conversation.server
    audio_from = conversation.server if audio_to is conversation.client else conversation.client
    received = _frames_by_channel(audio_to.events)
    for seqs in received.values():
        assert len(seqs) == audio_from.audio_sent
    if name == "audioconnector":  # bot audio flows back to the client on its own channel
        bot = _frames_by_channel(conversation.client.events).get("bot", [])
        assert len(bot) == conversation.server.audio_sent
    ender = conversation.client if end_by == "client" else conversation.server
    assert ender.proto.close_expected()
    if name in ("audiohook", "audioconnector"):  # close / closed, or disconnect / close
        assert conversation.client.proto.close_expected()
        assert conversation.server.proto.close_expected()
    if name == "twilio" and end_by == "client":  # stop ends the server's stream
        assert any(isinstance(e, StreamClosed) for e in conversation.server.events)


# -- mutated transcripts -------------------------------------------------------------------


def _mutate_text(text: str, draw: st.DrawFn) -> str | bytes:
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    choice = draw(st.integers(0, 5))
    if choice == 0 and isinstance(document, dict) and document:
        key = draw(st.sampled_from(sorted(document)))
        document[key] = draw(JSON_VALUES)
        return json.dumps(document)
    if choice == 1 and isinstance(document, dict):
        nested = [k for k, v in document.items() if isinstance(v, dict) and v]
        if nested:
            outer = draw(st.sampled_from(sorted(nested)))
            inner = draw(st.sampled_from(sorted(document[outer])))
            document[outer][inner] = draw(JSON_VALUES)
            return json.dumps(document)
    if choice == 2:
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if choice == 3:
        return text.encode()
    if choice == 4:
        return draw(st.text(max_size=40))
    return text


def _mutate_binary(data: bytes, draw: st.DrawFn) -> str | bytes:
    choice = draw(st.integers(0, 3))
    if choice == 0 and data:
        index = draw(st.integers(0, len(data) - 1))
        return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1 :]
    if choice == 1:
        return data[: draw(st.integers(0, len(data)))]
    if choice == 2:
        return draw(st.binary(max_size=64))
    return data.decode("latin-1")


@st.composite
def mutated(draw: st.DrawFn, transcript: list[str | bytes]) -> list[str | bytes]:
    out = list(transcript)
    for _ in range(draw(st.integers(0, 6))):
        if not out:
            break
        index = draw(st.integers(0, len(out) - 1))
        operation = draw(st.integers(0, 3))
        if operation == 0:
            del out[index]
        elif operation == 1:
            out.insert(index, out[index])
        elif operation == 2 and index + 1 < len(out):
            out[index], out[index + 1] = out[index + 1], out[index]
        else:
            item = out[index]
            out[index] = (
                _mutate_text(item, draw) if isinstance(item, str) else _mutate_binary(item, draw)
            )
    return out


# No server signals: a fresh server fed the client's side must answer exactly as the
# original did (AudioHook clients acknowledge the server's seq), so only what the server
# answers by itself may come from it.
TRANSCRIPT_ACTIONS = [
    ("tick", 0.1),
    ("audio", "client"),
    ("audio", "server"),
    ("signal", "client"),
    ("audio", "client"),
    ("audio", "server"),
    ("tick", 5.5),
    ("signal", "client"),
    ("audio", "client"),
    ("audio", "server"),
]


def _transcripts() -> dict[tuple[str, Role], list[str | bytes]]:
    """What each role of each dialect receives in a full, healthy conversation."""
    found: dict[tuple[str, Role], list[str | bytes]] = {}
    for name in DIALECTS:
        conversation = converse(name, TRANSCRIPT_ACTIONS, "client")
        found[(name, "server")] = conversation.server.received
        found[(name, "client")] = conversation.client.received
    return found


TRANSCRIPTS = _transcripts()


@st.composite
def fuzzed_inputs(draw: st.DrawFn) -> tuple[str, Role, list[str | bytes], list[float]]:
    name = draw(st.sampled_from(DIALECTS))
    role: Role = draw(st.sampled_from(["client", "server"]))
    inputs = draw(mutated(TRANSCRIPTS[(name, role)]))
    steps = draw(st.lists(st.floats(0.0, 4.0), min_size=len(inputs), max_size=len(inputs)))
    return name, role, inputs, steps


def test_transcripts_are_healthy_before_mutation() -> None:
    """The seed inputs reach deep states: audio of both kinds and the closing messages.
    (An AudioHook client's transcript acknowledges pings the client sent on its timers, so
    a fresh client fed it at once sees a bad ack: it is excluded from the clean check.)"""
    for (name, role), transcript in TRANSCRIPTS.items():
        proto = make(name, role)
        proto.connection_made(0.0)
        events = [e for data in transcript for e in proto.receive(Message(data, 1.0))]
        if role == "server" or name in ("appfoundry", "twilio"):
            assert not any(isinstance(e, Malformed) for e in events), (name, role, events)
        kinds = Counter(type(e).__name__ for e in events)
        if (name, role) in {
            ("appfoundry", "client"),
            ("twilio", "server"),
            ("audiohook", "server"),
        }:
            assert kinds["AudioFrame"] >= 2, (name, role, kinds)


@settings(max_examples=examples(2.0))
@given(case=fuzzed_inputs(), made=st.booleans())
def test_mutated_transcripts_never_make_receive_or_timer_raise(
    case: tuple[str, Role, list[str | bytes], list[float]], made: bool
) -> None:
    name, role, inputs, steps = case
    proto = make(name, role)
    if made:
        proto.connection_made(0.0)
    now_s = 0.0
    for data, step_s in zip(inputs, steps, strict=True):
        now_s += step_s
        events = proto.receive(Message(data, arrival_s=now_s, received_wall_s=WALL_S + now_s))
        assert isinstance(events, list)
        assert all(isinstance(event, DOCUMENTED_EVENTS) for event in events), events
        assert sum(isinstance(event, Malformed) for event in events) <= 1
        assert all(isinstance(item, (str, bytes)) for item in proto.data_to_send())
        due = proto.next_deadline_s()
        if due is not None and due <= now_s:
            timed = proto.timer(now_s)
            assert all(isinstance(event, DOCUMENTED_EVENTS) for event in timed)
    lost = proto.connection_lost(now_s + 1.0)
    assert all(isinstance(event, DOCUMENTED_EVENTS) for event in lost)


@settings(max_examples=examples(0.5))
@given(
    name=st.sampled_from(DIALECTS),
    role=st.sampled_from(["client", "server"]),
    inputs=st.lists(st.text(max_size=80) | st.binary(max_size=80) | JSON_VALUES.map(json.dumps)),
)
def test_arbitrary_input_never_makes_receive_raise(
    name: str, role: Role, inputs: list[str | bytes]
) -> None:
    proto = make(name, role)
    proto.connection_made(0.0)
    for index, data in enumerate(inputs):
        events = proto.receive(Message(data, arrival_s=float(index)))
        assert all(isinstance(event, DOCUMENTED_EVENTS) for event in events)
        assert sum(isinstance(event, Malformed) for event in events) <= 1

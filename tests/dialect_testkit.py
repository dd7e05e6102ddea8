"""Hypothesis strategies and checks shared by the JSON dialects' tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from jitterline.frames import AudioFrame, Event, Malformed, Message
from jitterline.protocols import Dialect

__all__ = [
    "JSON_VALUES",
    "exchange",
    "mostly",
    "only_frame",
    "only_malformed",
    "receive_checked",
]

_JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
JSON_VALUES = st.recursive(
    _JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three draws in four from ``valid``, so that some messages parse all the way."""
    return st.integers(0, 3).flatmap(lambda pick: valid if pick else JSON_VALUES)


def only_frame(events: list[Event]) -> AudioFrame:
    assert len(events) == 1
    assert isinstance(events[0], AudioFrame)
    return events[0]


def only_malformed(events: list[Event]) -> Malformed:
    assert len(events) == 1
    assert isinstance(events[0], Malformed), events
    return events[0]


def receive_checked(
    dialect: Dialect, message: Message, allowed: tuple[type[Any], ...]
) -> list[Event]:
    """Receive, asserting the contract: no exception, only ``allowed`` event types, and a
    refused message gives exactly one ``Malformed``."""
    events = dialect.receive(message)
    assert isinstance(events, list)
    assert all(isinstance(event, (*allowed, Malformed)) for event in events), events
    if any(isinstance(event, Malformed) for event in events):
        assert len(events) == 1
    return events


def exchange(sender: Dialect, receiver: Dialect, arrival_s: float = 1.0) -> list[Event]:
    """Deliver what ``sender`` queued to ``receiver``, as a socket would; its events."""
    events: list[Event] = []
    for data in sender.data_to_send():
        events.extend(receiver.receive(Message(data, arrival_s=arrival_s)))
    return events

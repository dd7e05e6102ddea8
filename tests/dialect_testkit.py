"""Hypothesis strategies and checks shared by the JSON dialects' tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from jitterline.errors import DialectError
from jitterline.frames import AudioFrame, Message
from jitterline.protocols import Dialect

__all__ = ["JSON_VALUES", "mostly", "only_frame", "parse_or_dialect_error"]

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


def only_frame(events: list[Any]) -> AudioFrame:
    assert len(events) == 1
    assert isinstance(events[0], AudioFrame)
    return events[0]


def parse_or_dialect_error(dialect: Dialect, message: Message) -> None:
    """Parse, accepting events or ``DialectError`` and nothing else."""
    try:
        events = dialect.parse(message)
    except DialectError:
        return
    assert isinstance(events, list)

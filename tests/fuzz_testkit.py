"""What the fuzz tests share: the profile's example budget and the documented events."""

from __future__ import annotations

from hypothesis import settings

from jitterline.frames import (
    AudioFrame,
    Malformed,
    Pong,
    StreamClosed,
    StreamError,
    StreamOpened,
    StreamPaused,
    StreamResumed,
    StreamSignal,
)

__all__ = ["DOCUMENTED_EVENTS", "examples"]

DOCUMENTED_EVENTS = (
    AudioFrame,
    StreamOpened,
    StreamPaused,
    StreamResumed,
    StreamSignal,
    StreamError,
    StreamClosed,
    Pong,
    Malformed,
)
"""``frames.Event``: the only types a protocol object's ``receive`` and ``timer`` return."""


def examples(share: float) -> int:
    """``share`` of the loaded profile's ``max_examples`` (tests/conftest.py), at least 10:
    how a test with costly examples stays inside the CI budget and still grows with
    ``HYPOTHESIS_PROFILE=long``."""
    profile = settings.default
    budget = profile.max_examples if profile is not None else 100
    return max(10, int(budget * share))
